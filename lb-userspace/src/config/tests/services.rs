//! The `[[service]]` tables: names, listeners, NAT addresses, backends, operator keys.

use super::*;

#[test]
fn duplicate_service_name_is_refused() {
    let text = with_service(
        "[[service]]\nname = \"web\"\nvip = \"198.18.1.11\"\nport = 80\nmode = \"dnat\"\n",
    );
    let first = first_line_of(&text, "[[service]]");
    assert_refused(
        &text,
        "name = \"web\"",
        &format!("duplicate service name \"web\" (first defined on line {first})"),
    );
}

#[test]
fn duplicate_service_address_is_refused() {
    let error = assert_refused(
        &with_service(
            "[[service]]\nname = \"web2\"\nvip = \"198.18.1.10\"\nport = 80\nmode = \"dnat\"\n",
        ),
        "[[service]]",
        "listens on 198.18.1.10:80/tcp, as does service \"web\"",
    );
    assert_eq!(error.column, 1);
    // The same address and port over another protocol is another service.
    let text = with_service(
        "[[service]]\nname = \"web-udp\"\nvip = \"198.18.1.10\"\nport = 80\n\
         protocol = \"udp\"\nmode = \"dnat\"\n[[service.backend]]\naddress = \"198.19.0.11\"\n",
    );
    assert_eq!(parse(&text).unwrap().services.len(), 2);
}

#[test]
fn service_without_backends_is_refused() {
    assert_refused(
        &with_service(
            "[[service]]\nname = \"empty\"\nvip = \"198.18.1.11\"\nport = 80\nmode = \"dnat\"\n",
        ),
        "[[service]]",
        "service \"empty\" has no backends",
    );
    assert_refused(
        &with_service(
            "[[service]]\nname = \"empty\"\nvip = \"198.18.1.11\"\nport = 80\n\
             mode = \"dnat\"\nbackend = []\n",
        ),
        "[[service]]",
        "service \"empty\" has no backends",
    );
}

#[test]
fn service_with_only_zero_weights_is_refused() {
    let text = r#"[interfaces]
attach = ["eth0"]
[[service]]
name = "drained"
vip = "198.18.1.10"
port = 80
mode = "dnat"
[[service.backend]]
address = "198.19.0.11"
weight = 0
[[service.backend]]
address = "198.19.0.12"
weight = 0
"#;
    assert_refused(
        text,
        "[[service]]",
        "every backend of service \"drained\" has weight 0",
    );
}

#[test]
fn duplicate_backend_in_a_service_is_refused() {
    // 198.19.0.11 with the default port 80, then again with an explicit 80.
    assert_refused(
        &with_service("[[service.backend]]\naddress = \"198.19.0.11\"\nport = 80\n"),
        "[[service.backend]]",
        "service \"web\" lists backend 198.19.0.11:80 twice",
    );
    // Another port of the same host is another backend.
    let text = with_service("[[service.backend]]\naddress = \"198.19.0.11\"\nport = 81\n");
    assert_eq!(parse(&text).unwrap().services[0].backends.len(), 2);
}

#[test]
fn backend_shared_by_two_services_is_allowed() {
    let text = with_service(
        "[[service]]\nname = \"web-tls\"\nvip = \"198.18.1.10\"\nport = 443\n\
         snat_ip = \"198.19.1.1\"\n[[service.backend]]\naddress = \"198.19.0.11\"\nport = 80\n",
    );
    assert_eq!(parse(&text).unwrap().services.len(), 2);
}

#[test]
fn full_nat_without_snat_ip_is_refused() {
    let text = r#"[interfaces]
attach = ["eth0"]

[[service]]
name = "web"
vip = "198.18.1.10"
port = 80
[[service.backend]]
address = "198.19.0.11"
"#;
    assert_refused(
        text,
        "[[service]]",
        "service \"web\" is full-nat and needs a snat_ip",
    );
}

#[test]
fn dnat_with_snat_ip_is_refused() {
    let text = r#"[interfaces]
attach = ["eth0"]
[[service]]
name = "web"
vip = "198.18.1.10"
port = 80
mode = "dnat"
snat_ip = "198.19.1.1"
[[service.backend]]
address = "198.19.0.11"
"#;
    let error = assert_refused(
        text,
        "snat_ip",
        "service \"web\" is dnat: snat_ip is only for full-nat",
    );
    assert_eq!(error.column, 11);
}

#[test]
fn snat_ip_equal_to_a_vip_is_refused() {
    // The clash is with a VIP defined further down the file.
    let text = r#"[interfaces]
attach = ["eth0"]
[[service]]
name = "web"
vip = "198.18.1.10"
port = 80
snat_ip = "198.18.1.20"
[[service.backend]]
address = "198.19.0.11"
[[service]]
name = "api"
vip = "198.18.1.20"
port = 443
mode = "dnat"
[[service.backend]]
address = "198.19.0.12"
"#;
    assert_refused(
        text,
        "snat_ip",
        "snat_ip 198.18.1.20 of service \"web\" is the VIP of service \"api\"",
    );
    assert_refused(
        &text.replace("198.18.1.20\"\n[[", "198.18.1.10\"\n[["),
        "snat_ip",
        "is the VIP of service \"web\"",
    );
}

#[test]
fn port_zero_is_refused() {
    let text = with_service("").replace("port = 80", "port = 0");
    assert_refused(&text, "port = 0", "port must be between 1 and 65535, got 0");
    assert_refused(
        &with_service("port = 0\n"),
        "port = 0",
        "backend port must be between 1 and 65535, got 0",
    );
    assert_refused(
        &with_service("port = 65536\n"),
        "port = 65536",
        "backend port must be between 1 and 65535, got 65536",
    );
}

#[test]
fn weight_out_of_range_is_refused() {
    assert_refused(
        &with_service("weight = 65536\n"),
        "weight",
        "weight must be between 0 and 65535",
    );
    assert_refused(
        &with_service("weight = -1\n"),
        "weight",
        "weight must be between 0 and 65535, got -1",
    );
}

#[test]
fn invalid_service_name_is_refused() {
    let text = with_service("").replace("name = \"web\"", "name = \"my web\"");
    assert_refused(&text, "name = ", "invalid service name \"my web\"");
    let text = with_service("").replace("name = \"web\"", "name = \"\"");
    assert_refused(&text, "name = ", "invalid service name \"\"");
}

#[test]
fn non_unicast_address_is_refused() {
    let text = with_service("").replace("198.18.1.10", "0.0.0.0");
    assert_refused(
        &text,
        "vip = ",
        "vip must be a unicast address, got 0.0.0.0",
    );
    let text = with_service("").replace("198.19.1.1", "224.0.0.1");
    assert_refused(&text, "snat_ip = ", "snat_ip must be a unicast address");
    let text = with_service("").replace("198.19.0.11", "255.255.255.255");
    assert_refused(
        &text,
        "address = ",
        "backend address must be a unicast address",
    );
}

#[test]
fn operator_keys_are_checked() {
    assert_key_refused(
        "allow = [\"10.0.0.1/8\"]",
        "host bits set (did you mean 10.0.0.0/8?)",
    );
    assert_key_refused("allow = [\"10.0.0.0/33\"]", "invalid prefix length");
    assert_key_refused("allow = [\"ten\"]", "invalid IPv4 prefix");
    assert_key_refused("deny = \"reset\"", "sets deny but has no allow list");
    assert_key_refused("deny = \"reject\"", "unknown variant");
    assert_key_refused("affinity_timeout = 0", "affinity_timeout must be between 1");
    assert_key_refused("on_backend_down = \"drop\"", "unknown variant");
    assert_key_refused("unknown_segment = \"rst\"", "unknown variant");
    assert_key_refused("unknown_segment = true", "wanted string or table");
    assert_key_refused(
        "health_check = { type = \"tcp\", path = \"/\" }",
        "health_check.path is only for type = \"http\"",
    );
    assert_key_refused(
        "health_check = { type = \"http\", interval_ms = 100, timeout_ms = 200 }",
        "timeout_ms must not exceed",
    );
    assert_key_refused(
        "health_check = { type = \"http\", status_min = 500, status_max = 200 }",
        "status_min must not exceed",
    );
    assert_key_refused(
        "health_check = { type = \"http\", path = \"no-slash\" }",
        "must start with '/'",
    );
    assert_key_refused("health_check = { type = \"icmp\" }", "unknown variant");
    assert_refused(
        "[interfaces]\nattach = [\"eth0\"]\n[control]\nmetrics = \"localhost\"\n",
        "metrics",
        "control.metrics must be an address:port",
    );
}

#[test]
fn unknown_segment_takes_drop_or_reset_on_tcp_only() {
    for (value, expected) in [
        ("drop", UnknownSegment::Drop),
        ("reset", UnknownSegment::Reset),
    ] {
        let text = with_service_keys(&format!("unknown_segment = \"{value}\""));
        assert_eq!(parse(&text).unwrap().services[0].unknown_segment, expected);
    }
    assert_eq!(
        parse(&with_service_keys("")).unwrap().services[0].unknown_segment,
        UnknownSegment::Drop
    );
    // UDP has no segments to answer: the key is refused there, even set to "drop".
    assert_refused(
        &with_service_keys("protocol = \"udp\"\nunknown_segment = \"drop\""),
        "unknown_segment",
        "service \"web\" is udp: unknown_segment is only for tcp",
    );
}

#[test]
fn syn_cookies_are_automatic_on_tcp_by_default() {
    let service = &parse(&with_service_keys("")).unwrap().services[0];
    assert_eq!(service.syn_cookies, SynCookies::Auto);
    assert_eq!(
        service.syn_cookie_threshold,
        crate::domain::DEFAULT_SYN_COOKIE_THRESHOLD
    );
    let text = with_service_keys("syn_cookies = \"off\"");
    assert_eq!(
        parse(&text).unwrap().services[0].syn_cookies,
        SynCookies::Off
    );
    let text = with_service_keys("syn_cookie_threshold = 100");
    assert_eq!(parse(&text).unwrap().services[0].syn_cookie_threshold, 100);
    // A SYN proxy or a UDP service has nothing to switch.
    let text = with_service_keys("syn_proxy = true");
    assert_eq!(
        parse(&text).unwrap().services[0].syn_cookies,
        SynCookies::Off
    );
    let text = with_service_keys("protocol = \"udp\"");
    assert_eq!(
        parse(&text).unwrap().services[0].syn_cookies,
        SynCookies::Off
    );
}

#[test]
fn syn_cookie_keys_are_checked() {
    assert_refused(
        &with_service_keys("protocol = \"udp\"\nsyn_cookies = \"off\""),
        "syn_cookies",
        "service \"web\" is udp: syn_cookies is only for tcp",
    );
    assert_refused(
        &with_service_keys("syn_proxy = true\nsyn_cookies = \"auto\""),
        "syn_cookies",
        "syn_proxy = true, which answers every SYN with a cookie",
    );
    assert_refused(
        &with_service_keys("syn_cookies = \"off\"\nsyn_cookie_threshold = 10"),
        "syn_cookie_threshold",
        "syn_cookie_threshold does not apply",
    );
    assert_refused(
        &with_service_keys("syn_cookie_threshold = 0"),
        "syn_cookie_threshold",
        "syn_cookie_threshold",
    );
    assert_refused(
        &with_service_keys("syn_cookies = \"sometimes\""),
        "syn_cookies",
        "sometimes",
    );
}

/// `with_service` with `snat_ips = <list>` instead of its `snat_ip`.
fn with_snat_ips(list: &str) -> String {
    with_service("").replacen(
        "snat_ip = \"198.19.1.1\"\n",
        &format!("snat_ips = {list}\n"),
        1,
    )
}

#[test]
fn snat_ips_lists_several_source_addresses() {
    let text = with_snat_ips(r#"["198.19.1.1", "198.19.1.2", "198.19.1.3"]"#);
    let ips = &parse(&text).unwrap().services[0].snat_ips;
    assert_eq!(
        ips,
        &[
            Ipv4Addr::new(198, 19, 1, 1),
            Ipv4Addr::new(198, 19, 1, 2),
            Ipv4Addr::new(198, 19, 1, 3)
        ]
    );
    // snat_ip is the one-address form of the same list.
    let one = &parse(&with_service("")).unwrap().services[0].snat_ips;
    assert_eq!(one, &[Ipv4Addr::new(198, 19, 1, 1)]);
    let sixteen: Vec<String> = (1..=16).map(|i| format!("\"198.19.1.{i}\"")).collect();
    let text = with_snat_ips(&format!("[{}]", sixteen.join(", ")));
    assert_eq!(parse(&text).unwrap().services[0].snat_ips.len(), 16);
}

#[test]
fn snat_ips_are_checked() {
    assert_refused(
        &with_service_keys("snat_ips = [\"198.19.1.2\"]"),
        "snat_ips",
        "service \"web\" has both snat_ip and snat_ips",
    );
    assert_refused(
        &with_snat_ips("[]"),
        "snat_ips",
        "snat_ips must list at least one address",
    );
    let seventeen: Vec<String> = (1..=17).map(|i| format!("\"198.19.1.{i}\"")).collect();
    assert_refused(
        &with_snat_ips(&format!("[{}]", seventeen.join(", "))),
        "snat_ips",
        "lists 17 snat_ips, at most 16 are allowed",
    );
    assert_refused(
        &with_snat_ips(r#"["198.19.1.1", "198.19.1.1"]"#),
        "snat_ips",
        "lists snat_ips 198.19.1.1 twice",
    );
    assert_refused(
        &with_snat_ips(r#"["198.19.1.1", "255.255.255.255"]"#),
        "snat_ips",
        "snat_ips must be a unicast address, got 255.255.255.255",
    );
    assert_refused(
        &with_snat_ips(r#"["198.19.1.1", "198.18.1.10"]"#),
        "snat_ips",
        "snat_ips 198.18.1.10 of service \"web\" is the VIP of service \"web\"",
    );
    assert_refused(
        &with_snat_ips(r#"["198.19.1.1"]"#).replacen(
            "port = 80\n",
            "port = 80\nmode = \"dnat\"\n",
            1,
        ),
        "snat_ips",
        "service \"web\" is dnat: snat_ips is only for full-nat",
    );
}
