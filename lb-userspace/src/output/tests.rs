//! What the operator sees for each reply (the samples are the shape tests').

use crate::api::{HandedOver, Reply, samples};

use super::{json, render};

/// `lines`, each ended by a newline.
fn text(lines: &[&str]) -> String {
    lines.iter().map(|line| format!("{line}\n")).collect()
}

/// The daemon's settings one per line, then the interfaces.
#[test]
fn status() {
    assert_eq!(
        render(&Reply::Status(samples::status())),
        text(&[
            "name           lb-demo",
            "config         /etc/lb/lb.toml",
            "pid            4242",
            "uptime_secs    75",
            "generation     3",
            "last_reload    ok (generation 3)",
            "pin_dir        /sys/fs/bpf/lb-demo",
            "services       2",
            "connections    5",
            "flows_expired  11",
            "adopted        false",
            "metrics        -",
            "bgp            -",
            "",
            "INTERFACE  IFINDEX  XDP MODE",
            "veth-lb    7        native",
        ])
    );
}

/// Counters by name, then services, then backends.
#[test]
fn stats() {
    assert_eq!(
        render(&Reply::Stats(samples::stats())),
        text(&[
            "COUNTER  PACKETS",
            "drop     2",
            "pass     10",
            "",
            "SERVICE  VIP                 MODE      SNAT                   PACKETS  BYTES  NEW FLOWS  DROPS  SYN COOKIES  COOKIES SENT  SWITCHED ON",
            "web      198.18.0.10:80/tcp  full-nat  198.19.1.1,198.19.1.2  100      6400   4          3      on           7000          1",
            "",
            "SERVICE  BACKEND           WEIGHT  PACKETS  BYTES  NEW FLOWS",
            "web      198.19.0.11:8080  5       60       3840   3",
        ])
    );
}

/// A connection that is not proxied has no SYN-proxy columns.
#[test]
fn flows() {
    assert_eq!(
        render(&Reply::Flows(samples::flows())),
        text(&[
            "PROTO  SERVICE  CLIENT            VIP             SNAT             SERVER            STATE        AGE(s)  IDLE(s)  OWNER  SEQ    DELTA  TIMESTAMP",
            "tcp    web      198.18.0.2:40000  198.18.0.10:80  198.19.0.1:1024  198.19.0.11:8080  established  9       1        1      -      -      -",
            "tcp    web      198.18.0.3:40001  198.18.0.10:80  198.19.0.1:1024  198.19.0.11:8080  syn-proxy    9       1        1      12345  0      0",
            "2 connections",
        ])
    );
}

/// One row per backend, then the count.
#[test]
fn backends() {
    assert_eq!(
        render(&Reply::Backends(samples::backends())),
        text(&[
            "SERVICE  BACKEND           STATE     HEALTH   WEIGHT  LIVE  ACTIVE  NEW  PACKETS  BYTES",
            "web      198.19.0.11:8080  draining  down     5       0     3       7    60       3840",
            "web      198.19.0.21:8080  active    unknown  1       1     0       0    0        0",
            "2 rows",
        ])
    );
}

/// A session whose service or backend is gone shows a dash.
#[test]
fn sessions() {
    assert_eq!(
        render(&Reply::Sessions(samples::sessions())),
        text(&[
            "CLIENT      SERVICE  BACKEND           AGE(s)  IDLE(s)  HANDLE",
            "198.18.0.2  web      198.19.0.11:8080  30      4        1/198.18.0.2",
            "198.18.0.3  -        -                 31      31       4/198.18.0.3",
            "2 rows",
        ])
    );
}

/// The router's settings, its table, then its counters by name.
#[test]
fn nodes() {
    assert_eq!(
        render(&Reply::Nodes(samples::nodes())),
        text(&[
            "cluster 7  router 198.19.0.1:7394  management 198.19.0.21  heartbeat 1000 ms  dead after 3",
            "",
            "APPLICATION             NODE              PRIO  HEALTH  LOAD(‰)    CAPACITY  CONNS  TARGET      CURRENT",
            "web 198.18.0.10:80/tcp  198.19.0.21:8080  5     up      250        2         17     active 600  draining 0",
            "1 endpoints",
            "",
            "ROUTER COUNTER          VALUE",
            "accepted                38",
            "drop_address_mismatch   0",
            "drop_bad_tag            2",
            "drop_duplicate_address  0",
            "drop_join_rate_limited  0",
            "drop_malformed          0",
            "drop_oversized          0",
            "drop_replay             0",
            "drop_stale              0",
            "drop_table_full         0",
            "drop_truncated          0",
            "drop_unexpected_type    0",
            "drop_unknown_node       0",
            "drop_wrong_cluster      0",
            "expired                 0",
            "forgotten               0",
            "joins                   1",
            "leaves                  0",
            "received                40",
            "rejoins                 0",
            "unknown_services        0",
        ])
    );
}

/// This instance, the peers, then the counters (rejections by reason).
#[test]
fn peers() {
    assert_eq!(
        render(&Reply::Peers(samples::peers())),
        text(&[
            "node 1  cluster 9  listen 198.18.0.1:7395  state ready  join timeout 5000 ms  dead after 1000 ms",
            "install lag (creation at the owner to installed here, last 40 new flows): p50 3 ms  p99 9 ms  max 12 ms",
            "",
            "PEER               STATE  ANNOUNCED  OUTGOING   FLOWS  LAG(ms)  LAST HEARD(ms)  RECEIVED  QUEUED",
            "2 198.18.0.2:7395  up     ready      connected  17     3        120             40        0",
            "3 198.18.0.3:7395  down   -          failed     0      -        -               0         0",
            "2 peers",
            "",
            "PEER COUNTER                VALUE",
            "messages_received           52",
            "announcements_sent          33",
            "announcement_bytes_sent     2310",
            "announcements_received      40",
            "announcements_applied       0",
            "queue_overflows             0",
            "connections_refused         0",
            "rejected_address_mismatch   0",
            "rejected_bad_tag            2",
            "rejected_malformed          0",
            "rejected_misdirected        0",
            "rejected_node_mismatch      0",
            "rejected_over_budget        0",
            "rejected_oversized          0",
            "rejected_owned_by_receiver  0",
            "rejected_owner_mismatch     0",
            "rejected_replay             0",
            "rejected_stale              0",
            "rejected_truncated          0",
            "rejected_unexpected_type    0",
            "rejected_unknown_backend    0",
            "rejected_unknown_node       0",
            "rejected_unknown_service    0",
            "rejected_wrong_cluster      0",
        ])
    );
}

#[test]
fn changes_show_what_was_applied() {
    let summary = r#"{"backends_added":1,"backends_removed":0,"ring_slots_written":130,"rings_swapped":2,"services_added":1,"services_changed":2,"services_removed":0}"#;
    assert_eq!(
        render(&Reply::Reloaded(samples::summary())),
        format!("reloaded: {summary}\n")
    );
    assert_eq!(
        render(&Reply::Applied(samples::summary())),
        format!("applied: {summary}\n")
    );
    assert_eq!(
        render(&Reply::HandedOver(HandedOver { handed_over: true })),
        "{\"handed_over\":true}\n"
    );
}

#[test]
fn empty_tables_still_have_their_header_and_count() {
    assert_eq!(
        render(&Reply::Flows(Vec::new())),
        text(&[
            "PROTO  SERVICE  CLIENT  VIP  SNAT  SERVER  STATE  AGE(s)  IDLE(s)  OWNER  SEQ  DELTA  TIMESTAMP",
            "0 connections",
        ])
    );
    assert_eq!(
        render(&Reply::Sessions(Vec::new())),
        text(&[
            "CLIENT  SERVICE  BACKEND  AGE(s)  IDLE(s)  HANDLE",
            "0 rows"
        ])
    );
}

/// `--json` is the reply itself, pretty-printed with its keys sorted.
#[test]
fn json_is_pretty_with_sorted_keys() {
    assert_eq!(
        json(&Reply::HandedOver(HandedOver { handed_over: true })).unwrap(),
        "{\n  \"handed_over\": true\n}"
    );
    assert_eq!(
        json(&Reply::Applied(samples::summary())).unwrap(),
        text(&[
            "{",
            "  \"backends_added\": 1,",
            "  \"backends_removed\": 0,",
            "  \"ring_slots_written\": 130,",
            "  \"rings_swapped\": 2,",
            "  \"services_added\": 1,",
            "  \"services_changed\": 2,",
            "  \"services_removed\": 0",
            "}",
        ])
        .trim_end()
    );
}

/// `lb drain` and the `bgp` line of `lb status`: one line, failures when there were any.
#[test]
fn drained() {
    assert_eq!(
        render(&Reply::Drained(samples::bgp())),
        "draining, 0 routes wanted, 0 announced, 1 configure failures\n"
    );
    let mut bgp = samples::bgp();
    bgp.state = "announcing".into();
    bgp.routes_wanted = 3;
    bgp.routes_announced = None;
    bgp.in_sync = false;
    bgp.last_error = Some("BIRD at /run/bird.ctl: cannot connect".into());
    assert_eq!(
        render(&Reply::Drained(bgp)),
        "announcing, 3 routes wanted, - announced (BIRD not in sync), 1 configure failures, \
         last: BIRD at /run/bird.ctl: cannot connect\n"
    );
}

/// The owned VIPs, a row each, with the move under way.
#[test]
fn vips() {
    assert_eq!(
        render(&Reply::Vips(samples::vips())),
        text(&[
            "VIP          MODE        OWNER  EPOCH  SINCE(ms)  MOVE",
            "198.18.1.20  normal      1      0      9000       -",
            "198.18.1.21  transition  2      3      40         streaming with 2",
            "2 owned VIPs",
        ])
    );
}
