//! The JSON shape of every reply (keys, value types, nesting), as `--json` prints it and
//! scripts and the integration tests read it: each sample must serialize to exactly the
//! literal, and the literal must decode back to the sample.

use serde_json::{Value, json};

use super::{samples, *};
use crate::api::Answer;

/// `reply` serializes to `expected`, and `expected` read as the answer to `request` is
/// `reply` again.
fn assert_shape(request: Request, reply: Reply, expected: Value) {
    assert_eq!(json_of(&reply), expected);
    assert_eq!(Reply::decode(&request, expected).unwrap(), reply);
}

#[test]
fn status() {
    assert_shape(
        Request::Status,
        Reply::Status(samples::status()),
        json!({
            "name": "lb-demo",
            "config": "/etc/lb/lb.toml",
            "pid": 4242,
            "uptime_secs": 75,
            "generation": 3,
            "last_reload": "ok (generation 3)",
            "interfaces": [{ "name": "veth-lb", "ifindex": 7, "mode": "native" }],
            "pin_dir": "/sys/fs/bpf/lb-demo",
            "services": 2,
            "connections": 5,
            "flows_expired": 11,
            "adopted": false,
            "metrics": null,
            "bgp": null,
        }),
    );
    let mut status = samples::status();
    status.last_reload = None;
    status.interfaces[0].mode = AttachedMode::Generic;
    status.metrics = Some("198.18.0.1:9100".parse().unwrap());
    let value = json_of(&status);
    assert_eq!(value["last_reload"], Value::Null);
    assert_eq!(value["interfaces"][0]["mode"], "generic");
    assert_eq!(value["metrics"], "198.18.0.1:9100");
}

#[test]
fn stats() {
    assert_shape(
        Request::Stats,
        Reply::Stats(samples::stats()),
        json!({
            "counters": { "drop": 2, "pass": 10 },
            "services": [{
                "name": "web",
                "vip": "198.18.0.10:80",
                "protocol": "tcp",
                "mode": "full-nat",
                "snat_ips": ["198.19.1.1", "198.19.1.2"],
                "id": 1,
                "packets": 100,
                "bytes": 6400,
                "new_flows": 4,
                "drops": 3,
                "denied": 1,
                "syn_cookies": {
                    "mode": "on",
                    "sent": 7000,
                    "switched_on": 1,
                    "switched_off": 0,
                    "pressure": 6500,
                },
                "backends": [{
                    "address": "198.19.0.11:8080",
                    "id": 2,
                    "weight": 5,
                    "packets": 60,
                    "bytes": 3840,
                    "new_flows": 3,
                }],
            }],
        }),
    );
    let mut stats = samples::stats();
    stats.services[0].protocol = Protocol::Udp;
    stats.services[0].mode = Mode::Dnat;
    let value = json_of(&stats);
    assert_eq!(value["services"][0]["protocol"], "udp");
    assert_eq!(value["services"][0]["mode"], "dnat");
}

#[test]
fn flows() {
    assert_shape(
        Request::Flows,
        Reply::Flows(samples::flows()),
        json!([
            {
                "protocol": "tcp",
                "service": "web",
                "client": "198.18.0.2:40000",
                "vip": "198.18.0.10:80",
                "snat": "198.19.0.1:1024",
                "server": "198.19.0.11:8080",
                "state": "established",
                "age_secs": 9,
                "idle_secs": 1,
                "backend_id": 2,
                "owner": 1,
                "proxy": null,
            },
            {
                "protocol": "tcp",
                "service": "web",
                "client": "198.18.0.3:40001",
                "vip": "198.18.0.10:80",
                "snat": "198.19.0.1:1024",
                "server": "198.19.0.11:8080",
                "state": "syn-proxy",
                "age_secs": 9,
                "idle_secs": 1,
                "backend_id": 2,
                "owner": 1,
                "proxy": { "seq": 12345, "delta": 0, "timestamp": 0 },
            },
        ]),
    );
}

fn summary_json() -> Value {
    json!({
        "services_added": 1,
        "services_removed": 0,
        "services_changed": 2,
        "rings_swapped": 2,
        "ring_slots_written": 130,
        "backends_added": 1,
        "backends_removed": 0,
    })
}

#[test]
fn reload_and_backend_changes() {
    assert_shape(
        Request::Reload,
        Reply::Reloaded(samples::summary()),
        summary_json(),
    );
    for request in [
        Request::BackendDrain {
            backend: "198.19.0.11".into(),
        },
        Request::BackendUndrain {
            backend: "198.19.0.11".into(),
        },
        Request::BackendWeight {
            service: "web".into(),
            backend: "198.19.0.11".into(),
            weight: 2,
        },
        Request::BackendAdd {
            service: "web".into(),
            backend: "198.19.0.12:8080".into(),
            weight: 1,
        },
        Request::BackendRemove {
            service: "web".into(),
            backend: "198.19.0.12:8080".into(),
        },
    ] {
        assert_shape(request, Reply::Applied(samples::summary()), summary_json());
    }
}

#[test]
fn backends() {
    assert_shape(
        Request::Backends,
        Reply::Backends(samples::backends()),
        json!([
            {
                "service": "web",
                "backend": "198.19.0.11:8080",
                "id": 2,
                "weight": 5,
                "effective_weight": 0,
                "source": "config",
                "state": "draining",
                "health": "down",
                "last_error": "connection refused",
                "active_flows": 3,
                "new_flows": 7,
                "packets": 60,
                "bytes": 3840,
            },
            {
                "service": "web",
                "backend": "198.19.0.21:8080",
                "id": 3,
                "weight": 1,
                "effective_weight": 1,
                "source": "announced",
                "state": "active",
                "health": "unknown",
                "last_error": null,
                "active_flows": 0,
                "new_flows": 0,
                "packets": 0,
                "bytes": 0,
            },
        ]),
    );
}

/// The JSON of one value.
fn json_of(value: impl serde::Serialize) -> Value {
    serde_json::to_value(value).unwrap()
}

#[test]
fn backend_states_and_health_keep_their_names() {
    assert_eq!(json_of(BackendState::Active), json!("active"));
    assert_eq!(json_of(BackendState::Draining), json!("draining"));
    assert_eq!(json_of(BackendState::Down), json!("down"));
    assert_eq!(json_of(BackendHealth::Unchecked), json!("unchecked"));
    assert_eq!(json_of(BackendHealth::Up), json!("up"));
    assert_eq!(json_of(BackendHealth::Down), json!("down"));
    assert_eq!(json_of(BackendHealth::Unknown), json!("unknown"));
    // An announced backend shows its node's state and health under the same names.
    for state in [NodeState::Active, NodeState::Draining, NodeState::Down] {
        assert_eq!(json_of(BackendState::from(state)), json_of(state));
    }
    for health in [NodeHealth::Unknown, NodeHealth::Up, NodeHealth::Down] {
        assert_eq!(json_of(BackendHealth::from(health)), json_of(health));
    }
}

#[test]
fn sessions() {
    assert_shape(
        Request::Sessions,
        Reply::Sessions(samples::sessions()),
        json!([
            {
                "client": "198.18.0.2",
                "service": "web",
                "backend": "198.19.0.11:8080",
                "backend_id": 2,
                "age_secs": 30,
                "idle_secs": 4,
                "handle": "1/198.18.0.2",
            },
            {
                "client": "198.18.0.3",
                "service": null,
                "backend": null,
                "backend_id": 9,
                "age_secs": 31,
                "idle_secs": 31,
                "handle": "4/198.18.0.3",
            },
        ]),
    );
}

#[test]
fn nodes() {
    assert_shape(
        Request::Nodes,
        Reply::Nodes(samples::nodes()),
        json!({
            "cluster_id": 7,
            "router": "198.19.0.1",
            "port": 7394,
            "management": "198.19.0.21",
            "controller_configured": false,
            "heartbeat_ms": 1000,
            "dead_after": 3,
            "table_generation": 12,
            "counters": {
                "received": 40,
                "accepted": 38,
                "drop_truncated": 0,
                "drop_oversized": 0,
                "drop_wrong_cluster": 0,
                "drop_bad_tag": 2,
                "drop_malformed": 0,
                "drop_address_mismatch": 0,
                "drop_unexpected_type": 0,
                "drop_replay": 0,
                "drop_stale": 0,
                "drop_duplicate_address": 0,
                "drop_join_rate_limited": 0,
                "drop_table_full": 0,
                "drop_unknown_node": 0,
                "joins": 1,
                "rejoins": 0,
                "leaves": 0,
                "expired": 0,
                "forgotten": 0,
                "unknown_services": 0,
            },
            "endpoints": [{
                "service": "web",
                "vip": "198.18.0.10",
                "service_port": 80,
                "protocol": "tcp",
                "node": "198.19.0.21",
                "port": 8080,
                "priority": 5,
                "state": "active",
                "health": "up",
                "capacity": 2,
                "load_permille": 250,
                "connections": 17,
                "tokens": 600,
                "applied": ["draining", 0],
            }],
        }),
    );
    let mut nodes = samples::nodes();
    nodes.management = None;
    nodes.endpoints[0].applied = None;
    let value = json_of(&nodes);
    assert_eq!(value["management"], Value::Null);
    assert_eq!(value["endpoints"][0]["applied"], Value::Null);
}

#[test]
fn peers() {
    let peer_up = json!({
        "node_id": 2,
        "address": "198.18.0.2:7395",
        "state": "up",
        "announced": "ready",
        "outgoing": "connected",
        "last_heard_ms": 120,
        "flows_held": 17,
        "lag_ms": 3,
        "announcements_received": 40,
        "queued": 0,
        "snat": ["198.19.1.2"],
    });
    let peer_down = json!({
        "node_id": 3,
        "address": "198.18.0.3:7395",
        "state": "down",
        "announced": null,
        "outgoing": "failed",
        "last_heard_ms": null,
        "flows_held": 0,
        "lag_ms": null,
        "announcements_received": 0,
        "queued": 0,
        "snat": [],
    });
    assert_shape(
        Request::Peers,
        Reply::Peers(samples::peers()),
        json!({
            "node_id": 1,
            "cluster_id": 9,
            "listen": "198.18.0.1:7395",
            "state": "ready",
            "ready": true,
            "live_nodes": [1, 2],
            "peer_snat": ["198.19.1.2"],
            "join_timeout_ms": 5000,
            "dead_after_ms": 1000,
            "peers": [peer_up, peer_down],
            "install_lag": {"samples": 40, "p50_ms": 3, "p99_ms": 9, "max_ms": 12},
            "counters": {
                "messages_received": 52,
                "announcements_sent": 33,
                "announcement_bytes_sent": 2310,
                "announcements_received": 40,
                "announcements_applied": 0,
                "queue_overflows": 0,
                "connections_refused": 0,
                "rejected": {
                    "address_mismatch": 0,
                    "bad_tag": 2,
                    "malformed": 0,
                    "misdirected": 0,
                    "node_mismatch": 0,
                    "over_budget": 0,
                    "oversized": 0,
                    "owned_by_receiver": 0,
                    "owner_mismatch": 0,
                    "replay": 0,
                    "stale": 0,
                    "truncated": 0,
                    "unexpected_type": 0,
                    "unknown_backend": 0,
                    "unknown_node": 0,
                    "unknown_service": 0,
                    "wrong_cluster": 0,
                },
            },
        }),
    );
    let mut transition = samples::peers();
    transition.state = PeerNodeState::Transition;
    transition.peers[0].state = PeerState::Syncing;
    let value = json_of(&transition);
    assert_eq!(value["state"], "transition");
    assert_eq!(value["peers"][0]["state"], "syncing");
}

#[test]
fn vips() {
    assert_shape(
        Request::Vips,
        Reply::Vips(samples::vips()),
        json!([
            {"vip": "198.18.1.20", "mode": "normal", "owner": 1, "epoch": 0,
             "since_ms": 9000, "moving": null},
            {"vip": "198.18.1.21", "mode": "transition", "owner": 2, "epoch": 3,
             "since_ms": 40, "moving": {"peer": 2, "step": "streaming"}},
        ]),
    );
}

#[test]
fn handover() {
    assert_shape(
        Request::Handover,
        Reply::HandedOver(HandedOver { handed_over: true }),
        json!({ "handed_over": true }),
    );
}

#[test]
fn answers() {
    let ok = Answer::from_result(Ok(Reply::HandedOver(HandedOver { handed_over: true })));
    assert_eq!(
        serde_json::to_string(&ok).unwrap(),
        r#"{"ok":true,"result":{"handed_over":true}}"#
    );
    let refused = Answer::from_result(Err(anyhow::anyhow!("no service named \"x\"")));
    assert_eq!(
        serde_json::to_string(&refused).unwrap(),
        r#"{"ok":false,"error":"no service named \"x\""}"#
    );
}

#[test]
fn a_reply_of_the_wrong_shape_is_refused() {
    assert!(Reply::decode(&Request::Status, json!([])).is_err());
    assert!(Reply::decode(&Request::Nodes, summary_json()).is_err());
    assert!(Reply::decode(&Request::Flows, Value::Null).is_err());
}

#[test]
fn drained() {
    assert_shape(
        Request::Drain,
        Reply::Drained(samples::bgp()),
        json!({
            "state": "draining",
            "routes_wanted": 0,
            "routes_announced": 0,
            "in_sync": true,
            "configures": 2,
            "configure_failures": 1,
            "last_error": null,
        }),
    );
}
