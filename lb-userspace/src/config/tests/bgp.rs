//! The `[bgp]` table.

use super::*;

const BGP: &str = r#"[interfaces]
attach = ["front", "back"]
[bgp]
control_socket = "/run/bird/lb1.ctl"
routes_file = "/run/bird/lb1-routes.conf"
return_routes = ["198.18.0.0/24", "198.18.4.0/22"]
[[service]]
name = "web"
vip = "198.18.1.10"
port = 80
snat_ip = "198.19.1.1"
[[service.backend]]
address = "198.19.0.11"
"#;

#[test]
fn bgp_table_parses_with_defaults() {
    let config = parse(BGP).unwrap();
    assert_eq!(
        config.bgp,
        Some(BgpConfig {
            control_socket: "/run/bird/lb1.ctl".into(),
            routes_file: "/run/bird/lb1-routes.conf".into(),
            return_routes: vec![
                "198.18.0.0/24".parse().unwrap(),
                "198.18.4.0/22".parse().unwrap()
            ],
            withdraw_delay: Duration::from_millis(DEFAULT_WITHDRAW_DELAY_MS),
            owned_vips: Default::default(),
        })
    );
    let config = parse(&BGP.replace(
        "return_routes = [\"198.18.0.0/24\", \"198.18.4.0/22\"]\n",
        "withdraw_delay_ms = 0\n",
    ))
    .unwrap();
    let bgp = config.bgp.unwrap();
    assert!(bgp.return_routes.is_empty());
    assert_eq!(bgp.withdraw_delay, Duration::ZERO);
    assert_eq!(parse(&BGP.replace("[bgp]", "[other]")).ok(), None);
}

#[test]
fn bgp_errors_name_the_line() {
    let text = BGP.replace("/run/bird/lb1.ctl", "");
    assert_refused(
        &text,
        "control_socket",
        "bgp.control_socket must not be empty",
    );
    let text = BGP.replace("/run/bird/lb1-routes.conf", "routes.conf");
    assert_refused(&text, "routes_file", "must be an absolute file path");
    let text = BGP.replace("198.18.4.0/22", "198.18.4.1/22");
    assert_refused(&text, "return_routes", "host bits set");
    let text = BGP.replace("198.18.4.0/22", "198.18.0.0/24");
    assert_refused(&text, "return_routes", "lists 198.18.0.0/24 twice");
    let text = BGP.replace("[bgp]\n", "[bgp]\nwithdraw_delay_ms = 70000\n");
    assert_refused(&text, "withdraw_delay_ms", "bgp.withdraw_delay_ms");
    let text = BGP.replace("[bgp]\n", "[bgp]\nneighbor = \"x\"\n");
    assert_refused(&text, "neighbor", "unknown field");
    let text = BGP.replace("routes_file = \"/run/bird/lb1-routes.conf\"\n", "");
    assert_refused(&text, "[bgp]", "routes_file");
}

/// A service, `[bgp]` with one owned VIP (`owner`), then `[peers]` (this instance 1, peer 2)
/// unless `peers` is false.
fn owned(vip: &str, owner: &str, peers: bool) -> String {
    let mut text = format!(
        r#"[interfaces]
attach = ["front", "back"]
[[service]]
name = "web"
vip = "198.18.1.10"
port = 80
snat_ip = "198.19.1.1"
[[service.backend]]
address = "198.19.0.11"
[bgp]
control_socket = "/run/bird/lb1.ctl"
routes_file = "/run/bird/lb1-routes.conf"
[[bgp.owned_vip]]
vip = "{vip}"
owner = {owner}
"#
    );
    if peers {
        text.push_str(
            r#"[peers]
node_id = 1
cluster_id = 9
key_file = "/etc/lb/peers.key"
listen = "198.18.0.1:7395"
[[peers.peer]]
node_id = 2
address = "198.18.0.2:7395"
"#,
        );
    }
    text
}

#[test]
fn owned_vips_name_a_service_vip_and_a_cluster_node() {
    let config = parse(&owned("198.18.1.10", "2", true)).unwrap();
    assert_eq!(
        config.bgp.unwrap().owned_vips,
        std::collections::BTreeMap::from([("198.18.1.10".parse().unwrap(), 2)])
    );
    assert_refused(
        &owned("198.18.1.10", "7", true),
        "owner = 7",
        "neither this instance",
    );
    assert_refused(
        &owned("198.18.1.10", "0", true),
        "owner = 0",
        "bgp.owned_vip.owner",
    );
    assert_refused(
        &owned("198.18.1.99", "1", true),
        "198.18.1.99",
        "the VIP of no service",
    );
    assert_refused(&owned("x", "1", true), "vip = \"x\"", "not an IPv4 address");
    assert_refused(
        &owned("198.18.1.10", "1", false),
        "[[bgp.owned_vip]]",
        "needs [peers]",
    );
    let twice = owned("198.18.1.10", "1", true).replacen(
        "[[bgp.owned_vip]]",
        "[[bgp.owned_vip]]\nvip = \"198.18.1.10\"\nowner = 2\n[[bgp.owned_vip]]",
        1,
    );
    assert_refused(&twice, "vip = \"198.18.1.10\"", "lists 198.18.1.10 twice");
}

#[test]
fn start_time_errors_point_at_the_keys() {
    let config = parse(BGP).unwrap();
    let error = config.bgp_control_socket_error("BIRD does not answer");
    assert_eq!(error.path, Path::new(PATH));
    assert_eq!(error.line, first_line_of(BGP, "control_socket"));
    assert_eq!(error.column, 18);
    let error = config.bgp_routes_file_error("no such directory");
    assert_eq!(error.line, first_line_of(BGP, "routes_file"));
}
