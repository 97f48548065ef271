//! The `[cluster]` table.

use super::*;

const CLUSTER: &str = r#"[interfaces]
attach = ["lb-ext", "lb-int"]
[cluster]
cluster_id = 7
key_file = "/etc/lb/cluster.key"
interface = "lb-int"
[[service]]
name = "web"
vip = "198.18.1.10"
port = 80
snat_ip = "198.19.1.1"
"#;

#[test]
fn cluster_table_parses_with_defaults() {
    let config = parse(CLUSTER).unwrap();
    assert_eq!(
        config.cluster,
        Some(ClusterConfig {
            cluster_id: 7,
            key_file: "/etc/lb/cluster.key".into(),
            port: DEFAULT_CLUSTER_PORT,
            interface: Some("lb-int".into()),
            router_ip: None,
            controller: None,
            heartbeat_interval: Duration::from_millis(DEFAULT_HEARTBEAT_MS),
            dead_after: DEFAULT_DEAD_AFTER,
        })
    );
    // With a cluster, a service may wait for announced backends.
    assert!(config.services[0].backends.is_empty());
    let full = CLUSTER.replace(
        "interface = \"lb-int\"\n",
        "router_ip = \"198.19.0.1\"\ncontroller = \"198.19.0.13\"\nport = 9000\n\
         heartbeat_ms = 250\ndead_after = 4\n",
    );
    let cluster = parse(&full).unwrap().cluster.unwrap();
    assert_eq!(cluster.router_ip, Some(Ipv4Addr::new(198, 19, 0, 1)));
    assert_eq!(cluster.controller, Some(Ipv4Addr::new(198, 19, 0, 13)));
    assert_eq!(cluster.port, 9000);
    assert_eq!(cluster.heartbeat_interval, Duration::from_millis(250));
    assert_eq!(cluster.dead_after, 4);
    assert_eq!(cluster.interface, None);
}

#[test]
fn cluster_keys_are_checked() {
    let with = |from: &str, to: &str| CLUSTER.replace(from, to);
    assert_refused(
        &with("cluster_id = 7", "cluster_id = 65536"),
        "cluster_id = 65536",
        "cluster.cluster_id must be between 0 and 65535",
    );
    assert_refused(
        &with("interface = \"lb-int\"\n", ""),
        "[cluster]",
        "needs `interface` (the nodes' segment) or `router_ip`",
    );
    assert_refused(
        &with("interface = \"lb-int\"", "interface = \"a/b\""),
        "interface = ",
        "not a valid interface name",
    );
    assert_refused(
        &with("cluster_id = 7", "cluster_id = 7\nheartbeat_ms = 10"),
        "heartbeat_ms = 10",
        "cluster.heartbeat_ms must be between 50 and 10000",
    );
    assert_refused(
        &with("cluster_id = 7", "cluster_id = 7\ndead_after = 0"),
        "dead_after = 0",
        "cluster.dead_after must be between 1 and 20",
    );
    assert_refused(
        &with(
            "cluster_id = 7",
            "cluster_id = 7\ncontroller = \"255.255.255.255\"",
        ),
        "controller = ",
        "cluster.controller must be a unicast address",
    );
    assert_refused(
        &with("key_file = \"/etc/lb/cluster.key\"", "key_file = \"\""),
        "key_file = ",
        "must not be empty",
    );
    assert_refused(
        &with("cluster_id = 7", "cluster_id = 7\nsecret = 1"),
        "secret = 1",
        "unknown field `secret`",
    );
}
