//! Timeouts, map capacities, the SNAT port range, and what services take of them.

use super::*;

#[test]
fn zero_timeout_is_refused() {
    for key in [
        "tcp_syn",
        "tcp_established",
        "tcp_half_closed",
        "tcp_closing",
        "udp",
    ] {
        assert_refused(
            &with_service(&format!("[timeouts]\n{key} = 0\n")),
            &format!("{key} = 0"),
            &format!("timeouts.{key} must be between 1 and 4294967295, got 0"),
        );
    }
}

#[test]
fn bad_limits_are_refused() {
    assert_refused(
        &with_service("[limits]\nmax_flows = 1\n"),
        "max_flows = 1",
        "limits.max_flows must be between 2 and 4294967295, got 1",
    );
    assert_refused(
        &with_service("[limits]\nmax_services = 0\n"),
        "max_services = 0",
        "limits.max_services must be between 1",
    );
    assert_refused(
        &with_service("[limits]\nmax_backends = 4294967296\n"),
        "max_backends = ",
        "limits.max_backends must be between 1 and 4294967295",
    );
}

#[test]
fn bad_snat_port_range_is_refused() {
    assert_refused(
        &with_service("[snat]\nport_min = 3000\nport_max = 2000\n"),
        "[snat]",
        "snat.port_min (3000) must not be greater than snat.port_max (2000)",
    );
    // The default port_min (1024) is above this port_max.
    assert_refused(
        &with_service("\n[snat]\nport_max = 1000\n"),
        "[snat]",
        "snat.port_min (1024) must not be greater than snat.port_max (1000)",
    );
    assert_refused(
        &with_service("[snat]\nport_min = 0\n"),
        "port_min = 0",
        "snat.port_min must be between 1 and 65535, got 0",
    );
    let config = parse(&with_service("[snat]\nport_min = 7\nport_max = 7\n")).unwrap();
    assert_eq!((config.snat_port_min, config.snat_port_max), (7, 7));
}

#[test]
fn too_many_allow_prefixes_over_all_services_are_refused() {
    let list = |from: u32, count: u32| {
        (from..from + count)
            .map(|i| format!("\"{}\"", Ipv4Addr::from(0x0a00_0000 + i)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let half = lb_common::MAX_ELIGIBILITY_PREFIXES / 2;
    let text = with_service(&format!(
        "\n[[service]]\nname = \"b\"\nvip = \"198.18.1.11\"\nport = 80\nmode = \"dnat\"\n\
         allow = [{}]\nbackend = [{{ address = \"198.19.0.11\" }}]\n",
        list(0, half + 1)
    ))
    .replace(
        "port = 80\nsnat_ip",
        &format!("port = 80\nallow = [{}]\nsnat_ip", list(half + 1, half)),
    );
    assert_refused(
        &text,
        "allow = [\"10.0.0.0\"",
        "hold 16385 prefixes but the data path holds at most 16384",
    );
    // Exactly the capacity (a prefix listed twice counts once) is fine.
    let fits = text.replace("[\"10.0.0.0\", ", "[\"10.0.0.1\", ");
    assert!(parse(&fits).is_ok());
}

#[test]
fn too_many_services_are_refused() {
    let text = with_service(
        "[[service]]\nname = \"b\"\nvip = \"198.18.1.11\"\nport = 80\nmode = \"dnat\"\n\
         backend = [{ address = \"198.19.0.11\" }]\n\
         [[service]]\nname = \"c\"\nvip = \"198.18.1.12\"\nport = 80\nmode = \"dnat\"\n\
         backend = [{ address = \"198.19.0.11\" }]\n\
         [limits]\nmax_services = 2\n",
    );
    assert_refused(
        &text,
        "[[service]]\nname = \"c\"",
        "too many services: limits.max_services is 2",
    );
    let allowed = text.replace("max_services = 2", "max_services = 3");
    assert_eq!(parse(&allowed).unwrap().services.len(), 3);
}

#[test]
fn too_many_backends_are_refused() {
    // Five backend entries, but only three distinct address:port pairs.
    let text = r#"[interfaces]
attach = ["eth0"]
[limits]
max_backends = 2
[[service]]
name = "a"
vip = "198.18.1.10"
port = 80
mode = "dnat"
backend = [{ address = "198.19.0.11" }, { address = "198.19.0.12" }]
[[service]]
name = "b"
vip = "198.18.1.11"
port = 80
mode = "dnat"
backend = [
  { address = "198.19.0.11" },
  { address = "198.19.0.12" },
  { address = "198.19.0.13" },
]
"#;
    let error = assert_refused(
        text,
        "{ address = \"198.19.0.13\" }",
        "too many backends: limits.max_backends is 2 distinct address:port pairs",
    );
    assert_eq!(error.column, 3);
    let allowed = text.replace("max_backends = 2", "max_backends = 3");
    assert_eq!(parse(&allowed).unwrap().services.len(), 2);
}
