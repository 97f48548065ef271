//! Balancer peers on their own segment (docs/scale-out.md, "Peer protocol"): two
//! `lb run` instances in two namespaces find each other, sync and watch each other go
//! down; a starting instance stays in transition while a peer's sync is not done; and
//! forged, other-cluster and replayed messages from a small raw client are dropped,
//! counted by reason, and change nothing. No BIRD: only the peers' TCP.
//!
//! Needs root: run with `cargo xtask test` (or `cargo test -- --ignored --test-threads=1`).

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use lb_integration::{lb_binary, test_dir};
use lb_testbed::{
    daemon::lb_cli,
    peers::{PeerNet, XDP_IFACE, peer_ip, xdp_mac},
};
use lb_userspace::{
    cluster::frame::ClusterKey,
    config::{PeerConfig, PeersConfig},
    peers::{
        io::{self as peers_io, PeerInput, QUEUE_LIMIT},
        moves::MoveMessage,
        record::{Announcement, FlowRecord, RecordOp},
        wire::{self, Header, Message, MoveStep, NodeState, PacketType},
    },
};
use serde_json::Value;

const CLUSTER_ID: u16 = 9;
const KEY: &str = "netns-peers-key-0123456789abcdef";
const PORT: u16 = 7395;
const METRICS_PORT: u16 = 9477;
const VIP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 18, 78, 10);

fn unique_prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "lbpr{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Instances on a [`PeerNet`]: instance `i` is node `i + 1` at `peer_ip(i)`.
struct Peers {
    net: PeerNet,
    prefix: String,
    dir: PathBuf,
    key_file: PathBuf,
}

impl Peers {
    fn up(count: usize) -> Peers {
        let prefix = unique_prefix();
        let dir = test_dir(&prefix);
        let key_file = dir.join("peers.key");
        std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
        let net = PeerNet::up(&prefix, count).expect("peer namespaces");
        Peers {
            net,
            prefix,
            dir,
            key_file,
        }
    }

    fn socket(&self, i: usize) -> String {
        format!("/run/lb/{}i{i}.sock", self.prefix)
    }

    /// `lb run` as node `i + 1`, listing nodes `peers` (0-based instance numbers).
    fn start(&self, i: usize, peers: &[usize], join_timeout_ms: u64, dead_after_ms: u64) -> u32 {
        let mut config = format!(
            "name = \"{prefix}i{i}\"\n\
             [interfaces]\nattach = [\"{XDP_IFACE}\"]\nxdp_mode = \"native\"\n\
             [control]\nsocket = \"{socket}\"\nmetrics = \"{ip}:{METRICS_PORT}\"\n\
             [peers]\nnode_id = {node}\ncluster_id = {CLUSTER_ID}\nkey_file = \"{key}\"\n\
             listen = \"{ip}:{PORT}\"\njoin_timeout_ms = {join_timeout_ms}\n\
             dead_after_ms = {dead_after_ms}\n",
            prefix = self.prefix,
            socket = self.socket(i),
            node = i + 1,
            key = self.key_file.display(),
            ip = peer_ip(i),
        );
        for &p in peers {
            config.push_str(&format!(
                "[[peers.peer]]\nnode_id = {}\naddress = \"{}:{PORT}\"\n",
                p + 1,
                peer_ip(p)
            ));
        }
        config.push_str(&format!(
            "[[service]]\nname = \"web\"\nvip = \"198.18.78.10\"\nport = 80\n\
             snat_ip = \"198.19.77.{}\"\n[[service.backend]]\naddress = \"198.19.78.11\"\n",
            i + 1
        ));
        let path = self.dir.join(format!("lb{i}.toml"));
        std::fs::write(&path, config).unwrap();
        let (pid, log) = self.spawn(i, &path);
        let lb = lb_binary();
        let deadline = Instant::now() + Duration::from_secs(20);
        while lb_cli(&lb, &self.socket(i), &["status"]).is_err() {
            assert!(
                !self.net.exited(pid),
                "lb {i} exited at start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            assert!(Instant::now() < deadline, "lb {i} did not answer");
            std::thread::sleep(Duration::from_millis(50));
        }
        pid
    }

    /// `lb run --config <path>` in instance `i`'s namespace; its PID and log.
    fn spawn(&self, i: usize, path: &std::path::Path) -> (u32, PathBuf) {
        self.spawn_with(i, path, &[], "")
    }

    /// `lb run --config <path> <extra>...`, logging to `lb<i><suffix>.log`.
    fn spawn_with(
        &self,
        i: usize,
        path: &std::path::Path,
        extra: &[&str],
        suffix: &str,
    ) -> (u32, PathBuf) {
        let log = self.dir.join(format!("lb{i}{suffix}.log"));
        let lb = lb_binary();
        let mut args = vec![
            "env",
            "RUST_LOG=info,lb_userspace::peers=debug",
            lb.to_str().unwrap(),
            "run",
            "--config",
            path.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let pid = self.net.spawn(i, &args, &log).expect("spawn lb run");
        (pid, log)
    }

    /// The Prometheus text of instance `i`, fetched from inside its namespace.
    fn metrics(&self, i: usize) -> String {
        self.net.nodes[i].enter(move || {
            let mut stream =
                TcpStream::connect(SocketAddrV4::new(peer_ip(i), METRICS_PORT)).unwrap();
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: lb\r\n\r\n")
                .unwrap();
            let mut text = String::new();
            stream.read_to_string(&mut text).unwrap();
            text
        })
    }

    fn peers(&self, i: usize) -> Value {
        let text = lb_cli(&lb_binary(), &self.socket(i), &["peers", "--json"]).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// Waits up to `limit` for `check` on instance `i`'s `lb peers`; returns the time it
    /// took and the status that passed.
    #[track_caller]
    fn wait(
        &self,
        i: usize,
        limit: Duration,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Duration {
        let started = Instant::now();
        loop {
            let status = self.peers(i);
            if check(&status) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < limit,
                "instance {i}: not {what} within {limit:?}: {status:#}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// State of node `node` in an `lb peers --json`.
fn peer_state(status: &Value, node: u64) -> String {
    status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["node_id"] == node)
        .map(|p| p["state"].as_str().unwrap().to_string())
        .unwrap()
}

#[test]
#[ignore = "needs root: network namespaces"]
fn a_short_peers_key_refuses_the_start_naming_the_line() {
    let peers = Peers::up(1);
    std::fs::write(&peers.key_file, "short\n").unwrap();
    let config = format!(
        "name = \"{p}i0\"\n[interfaces]\nattach = [\"{XDP_IFACE}\"]\n\
         [control]\nsocket = \"{socket}\"\n\
         [peers]\nnode_id = 1\ncluster_id = {CLUSTER_ID}\nkey_file = \"{key}\"\n\
         listen = \"{ip}:{PORT}\"\n",
        p = peers.prefix,
        socket = peers.socket(0),
        key = peers.key_file.display(),
        ip = peer_ip(0),
    );
    let path = peers.dir.join("short.toml");
    std::fs::write(&path, &config).unwrap();
    let (pid, log) = peers.spawn(0, &path);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !peers.net.exited(pid) {
        assert!(Instant::now() < deadline, "lb run did not refuse to start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let line = config
        .lines()
        .position(|l| l.starts_with("key_file"))
        .unwrap()
        + 1;
    assert!(
        text.contains(&format!("{}:{line}:", path.display()))
            && text.contains("5 bytes, need at least 16"),
        "{text}"
    );
    // Nothing was left behind.
    assert!(!std::path::Path::new(&peers.socket(0)).exists());
    assert!(!std::path::Path::new(&format!("/sys/fs/bpf/{}i0", peers.prefix)).exists());
}

#[test]
#[ignore = "needs root: network namespaces and XDP"]
fn two_instances_sync_and_see_each_other_go_down() {
    let peers = Peers::up(2);
    const DEAD_AFTER: u64 = 500;
    // A join timeout far beyond the waits below: readiness can only come from syncs.
    let a = peers.start(0, &[1], 30_000, DEAD_AFTER);
    // Alone (node 2 unreachable), node 1 is ready at once.
    peers.wait(0, Duration::from_secs(5), "ready alone", |s| {
        s["state"] == "ready" && peer_state(s, 2) == "down"
    });
    // A connection in node 1's flow table before node 2 starts: a SYN to the VIP sent
    // out of px1 reaches the XDP program on px0 (the SYN goes unanswered; the flow stays).
    let ns = &peers.net.nodes[0];
    ns.ip(&format!("route add {VIP}/32 dev px1")).unwrap();
    ns.ip(&format!(
        "neigh add {VIP} lladdr {} dev px1 nud permanent",
        xdp_mac(0)
    ))
    .unwrap();
    ns.enter(|| {
        let _ = TcpStream::connect_timeout(
            &std::net::SocketAddr::from((VIP, 80)),
            Duration::from_millis(300),
        );
    });
    let flows = lb_cli(&lb_binary(), &peers.socket(0), &["flows", "--json"]).unwrap();
    let flows: Value = serde_json::from_str(&flows).unwrap();
    let stats = lb_cli(&lb_binary(), &peers.socket(0), &["stats", "--json"]).unwrap();
    assert_eq!(flows.as_array().unwrap().len(), 1, "{flows:#} {stats}");
    let b = peers.start(1, &[0], 30_000, DEAD_AFTER);
    let took = peers.wait(1, Duration::from_secs(10), "ready", |s| {
        s["state"] == "ready" && s["ready"] == true && peer_state(s, 1) == "up"
    });
    assert!(took < Duration::from_secs(10));
    // Node 2 says it is ready in the heartbeat after its transition ends.
    peers.wait(
        0,
        Duration::from_secs(5),
        "seeing node 2 up and ready",
        |s| {
            peer_state(s, 2) == "up"
                && s["live_nodes"] == serde_json::json!([1, 2])
                && s["peers"][0]["announced"] == "ready"
        },
    );
    // Node 1's snapshot to node 2 carried that connection (live announcements may
    // follow: the half-open connection's SYN retransmit, a collector's touch).
    let b_status = peers.peers(1);
    assert!(
        b_status["counters"]["announcements_received"].as_u64() >= Some(1),
        "{b_status:#}"
    );
    assert!(b_status["peers"][0]["announcements_received"].as_u64() >= Some(1));
    assert!(peers.peers(0)["counters"]["announcements_sent"].as_u64() >= Some(1));
    let b_flows = lb_cli(&lb_binary(), &peers.socket(1), &["flows", "--json"]).unwrap();
    let b_flows: Value = serde_json::from_str(&b_flows).unwrap();
    let held: Vec<&Value> = b_flows.as_array().unwrap().iter().collect();
    assert!(
        held.len() == 1 && held[0]["owner"] == 1,
        "node 2 holds node 1's connection: {b_flows:#}"
    );
    let a_status = peers.peers(0);
    assert_eq!(a_status["peer_snat"], serde_json::json!(["198.19.77.2"]));
    let row = &a_status["peers"][0];
    assert_eq!(row["announced"], "ready");
    assert_eq!(row["outgoing"], "connected");
    assert!(row["last_heard_ms"].as_u64().unwrap() <= DEAD_AFTER);
    // Heartbeats keep it up well beyond dead_after.
    std::thread::sleep(Duration::from_millis(3 * DEAD_AFTER));
    assert_eq!(peer_state(&peers.peers(0), 2), "up");

    // Node 2 frozen: silent, its connection open. Down within dead_after (+ one
    // expiry tick and the polling), and not long before.
    peers.net.signal(b, libc::SIGSTOP).unwrap();
    let took = peers.wait(
        0,
        Duration::from_millis(DEAD_AFTER + 1000),
        "seeing node 2 down",
        |s| peer_state(s, 2) == "down",
    );
    assert!(
        took >= Duration::from_millis(DEAD_AFTER / 2),
        "down after {took:?}, before dead_after"
    );
    assert_eq!(peers.peers(0)["live_nodes"], serde_json::json!([1]));
    // Thawed: it reconnects and syncs again.
    peers.net.signal(b, libc::SIGCONT).unwrap();
    peers.wait(0, Duration::from_secs(5), "seeing node 2 up again", |s| {
        peer_state(s, 2) == "up"
    });
    // Replaced (`lb run --replace`): the new daemon takes over peers.listen too, and is
    // back up on node 1 with a new instance.
    // (Without the metrics endpoint: `--replace` binds it before the old daemon lets go.)
    let config = std::fs::read_to_string(peers.dir.join("lb1.toml")).unwrap();
    let replacing = peers.dir.join("lb1-replacing.toml");
    std::fs::write(
        &replacing,
        config
            .lines()
            .filter(|l| !l.starts_with("metrics"))
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
    )
    .unwrap();
    let (b2, b2_log) = peers.spawn_with(1, &replacing, &["--replace"], "-replaced");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !peers.net.exited(b) {
        assert!(
            Instant::now() < deadline,
            "the old daemon did not hand over"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    peers.net.stop(b);
    peers.wait(
        0,
        Duration::from_secs(10),
        "seeing the replacing node 2 up",
        |s| peer_state(s, 2) == "up",
    );
    let log = std::fs::read_to_string(&b2_log).unwrap();
    assert!(log.contains("synced to node 1"), "{log}");
    let b = b2;
    // Stopped: its connection closes, down at once.
    peers.net.stop(b);
    peers.wait(
        0,
        Duration::from_millis(DEAD_AFTER + 1000),
        "seeing node 2 gone",
        |s| peer_state(s, 2) == "down" && s["state"] == "ready",
    );
    let counters = &peers.peers(0)["counters"]["rejected"];
    for (reason, count) in counters.as_object().unwrap() {
        assert_eq!(count, 0, "rejected {reason}");
    }
    peers.net.stop(a);
}

/// A raw peer: messages as node `from` to node `to`, signed with `key`.
struct Raw {
    key: ClusterKey,
    cluster_id: u16,
    from: u16,
    instance: u64,
}

impl Raw {
    fn node2() -> Raw {
        Raw {
            key: ClusterKey::new(KEY.as_bytes()).unwrap(),
            cluster_id: CLUSTER_ID,
            from: 2,
            instance: 0x5eed,
        }
    }

    fn message(&self, packet_type: PacketType, sequence: u64) -> Vec<u8> {
        self.message_with(packet_type, sequence, None)
    }

    /// A VIP move's offer (docs/scale-out.md, "Moving a VIP").
    fn move_offer(&self, sequence: u64) -> Vec<u8> {
        let step = MoveStep {
            vip: Ipv4Addr::new(198, 18, 78, 20),
            epoch: 1,
            message: MoveMessage::Offer,
        };
        self.message_with(PacketType::Move, sequence, Some(step))
    }

    fn message_with(
        &self,
        packet_type: PacketType,
        sequence: u64,
        move_step: Option<MoveStep>,
    ) -> Vec<u8> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let message = Message {
            header: Header {
                source: peer_ip(1),
                destination: peer_ip(0),
                cluster_id: self.cluster_id,
                packet_type,
                from_node: self.from,
                to_node: 1,
            },
            sequence,
            timestamp_ms: now_ms,
            instance: self.instance,
            state: matches!(packet_type, PacketType::Hello | PacketType::Heartbeat)
                .then_some(NodeState::Transition),
            snat: Vec::new(),
            announcements: Vec::new(),
            move_step,
            claims: Vec::new(),
        };
        wire::framed(&wire::encode(&message, &self.key).unwrap())
    }
}

/// A connection from instance 1's namespace (node 2's address) to node 1.
fn connect_as_node2(peers: &Peers) -> TcpStream {
    peers.net.nodes[1].enter(|| {
        TcpStream::connect(SocketAddrV4::new(peer_ip(0), PORT)).expect("connect to node 1")
    })
}

/// Node 1 closes a connection after a message it drops: waits for that.
#[track_caller]
fn assert_closed_by_peer(mut stream: TcpStream) {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 16];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("connection not closed by node 1: {other:?}"),
    }
}

#[test]
#[ignore = "needs root: network namespaces and XDP"]
fn a_starting_instance_stays_in_transition_until_its_peer_synced_or_join_timeout() {
    let peers = Peers::up(2);
    const JOIN_TIMEOUT: u64 = 3000;
    // Node 2 is reachable (something listens at its address) but never finishes a sync.
    let listener = peers.net.nodes[1]
        .enter(|| TcpListener::bind(SocketAddrV4::new(peer_ip(1), PORT)).unwrap());
    listener.set_nonblocking(true).unwrap();
    let spawned = Instant::now();
    let a = peers.start(0, &[1], JOIN_TIMEOUT, 500);
    let raw = Raw::node2();
    let mut stream = connect_as_node2(&peers);
    let mut sequence = 1_000;
    stream
        .write_all(&raw.message(PacketType::Hello, sequence))
        .unwrap();
    let mut accepted = Vec::new();
    // Heartbeats keep node 2 syncing (not down) past the join timeout.
    let mut saw_transition = false;
    loop {
        if let Ok((conn, _)) = listener.accept() {
            accepted.push(conn);
        }
        sequence += 1;
        stream
            .write_all(&raw.message(PacketType::Heartbeat, sequence))
            .unwrap();
        let status = peers.peers(0);
        if status["state"] == "ready" {
            assert!(
                spawned.elapsed() >= Duration::from_millis(JOIN_TIMEOUT),
                "ready after {:?}, before join_timeout: {status:#}",
                spawned.elapsed()
            );
            assert!(saw_transition, "never seen in transition");
            assert_eq!(peer_state(&status, 2), "syncing");
            break;
        }
        assert_eq!(status["state"], "transition", "{status:#}");
        assert_eq!(status["ready"], false);
        if peer_state(&status, 2) == "syncing" {
            saw_transition = true;
            assert_eq!(status["peers"][0]["announced"], "transition");
            assert_eq!(status["peers"][0]["outgoing"], "connected");
        }
        assert!(
            spawned.elapsed() < Duration::from_millis(JOIN_TIMEOUT + 15_000),
            "join_timeout did not end the transition: {status:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Node 1 connected to node 2 and sent its hello and sync-done (then heartbeats).
    assert!(!accepted.is_empty(), "node 1 never connected to node 2");
    // Sync-done now: node 2 is up.
    sequence += 1;
    stream
        .write_all(&raw.message(PacketType::SyncDone, sequence))
        .unwrap();
    peers.wait(0, Duration::from_secs(2), "seeing node 2 up", |s| {
        peer_state(s, 2) == "up"
    });
    drop(stream);
    peers.net.stop(a);
}

#[test]
#[ignore = "needs root: network namespaces and XDP"]
fn forged_other_cluster_and_replayed_messages_are_dropped_and_counted() {
    let peers = Peers::up(2);
    // Node 2 is the raw client (nothing listens for node 1's connection: unreachable,
    // so node 1 is ready alone); a long dead_after spares it the heartbeats.
    let a = peers.start(0, &[1], 5000, 60_000);
    let raw = Raw::node2();
    let mut good = connect_as_node2(&peers);
    let hello = raw.message(PacketType::Hello, 100);
    good.write_all(&hello).unwrap();
    good.write_all(&raw.message(PacketType::SyncDone, 101))
        .unwrap();
    peers.wait(0, Duration::from_secs(5), "seeing node 2 up", |s| {
        peer_state(s, 2) == "up" && s["counters"]["messages_received"] == 2
    });
    let before = peers.peers(0);

    let forged = Raw {
        key: ClusterKey::new(b"not-the-peers-key-at-all-0123456").unwrap(),
        instance: 0xbad,
        ..Raw::node2()
    };
    let other_cluster = Raw {
        cluster_id: CLUSTER_ID + 1,
        instance: 0xbad,
        ..Raw::node2()
    };
    let mut expected = std::collections::BTreeMap::new();
    for (reason, bytes) in [
        ("bad_tag", forged.message(PacketType::Hello, 200)),
        // A move step under the wrong key: dropped before anything reads it.
        ("bad_tag", forged.move_offer(201)),
        (
            "wrong_cluster",
            other_cluster.message(PacketType::Hello, 202),
        ),
        ("replay", hello.clone()),
        // A length beyond 64 KiB.
        ("oversized", (70_000u32).to_be_bytes().to_vec()),
    ] {
        let mut bad = connect_as_node2(&peers);
        bad.write_all(&bytes).unwrap();
        assert_closed_by_peer(bad);
        *expected.entry(reason).or_insert(0u64) += 1;
        let status = peers.peers(0);
        for (name, count) in status["counters"]["rejected"].as_object().unwrap() {
            assert_eq!(
                count.as_u64().unwrap(),
                expected.get(name.as_str()).copied().unwrap_or(0),
                "rejected {name} after {reason}"
            );
        }
    }
    // Nothing changed: the real node 2 is up on its connection, nothing was received
    // or applied, the flow table is empty.
    let after = peers.peers(0);
    assert_eq!(peer_state(&after, 2), "up");
    for key in [
        "messages_received",
        "announcements_received",
        "announcements_applied",
    ] {
        assert_eq!(after["counters"][key], before["counters"][key], "{key}");
    }
    assert_eq!(
        after["peers"][0]["announced"],
        before["peers"][0]["announced"]
    );
    let flows = lb_cli(&lb_binary(), &peers.socket(0), &["flows", "--json"]).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&flows).unwrap(),
        serde_json::json!([])
    );
    let metrics = peers.metrics(0);
    for (reason, count) in &expected {
        let line = format!("lb_peer_rejected_total{{reason=\"{reason}\"}} {count}");
        assert!(metrics.contains(&line), "no {line:?} in:\n{metrics}");
    }
    assert!(metrics.contains("lb_peer_rejected_total{reason=\"stale\"} 0"));
    assert!(metrics.contains("lb_peer_announcements_received_total 0"));
    assert!(metrics.contains("lb_peer_up{peer=\"2\"} 1"));
    assert!(metrics.contains("lb_peers_ready 1"));
    // The good connection still works: its next message is accepted.
    good.write_all(&raw.message(PacketType::Heartbeat, 102))
        .unwrap();
    peers.wait(
        0,
        Duration::from_secs(2),
        "accepting node 2's heartbeat",
        |s| s["counters"]["messages_received"] == 3,
    );
    // Strangers' idle connections are capped (2 per peer and 16 spare): the good one
    // and 17 more are open, the rest are closed at once and counted.
    let idle: Vec<TcpStream> = (0..20).map(|_| connect_as_node2(&peers)).collect();
    peers.wait(0, Duration::from_secs(2), "refusing 3 connections", |s| {
        s["counters"]["connections_refused"] == 3
    });
    good.write_all(&raw.message(PacketType::Heartbeat, 103))
        .unwrap();
    peers.wait(0, Duration::from_secs(2), "still accepting node 2", |s| {
        s["counters"]["messages_received"] == 4 && peer_state(s, 2) == "up"
    });
    drop(idle);
    // A replayed move step on the bound connection: dropped, counted, and the
    // connection closed (the peer reconnects and resyncs).
    good.write_all(&raw.move_offer(104)).unwrap();
    good.write_all(&raw.move_offer(104)).unwrap();
    assert_closed_by_peer(good);
    peers.wait(
        0,
        Duration::from_secs(2),
        "counting the replayed move",
        |s| s["counters"]["rejected"]["replay"] == expected["replay"] + 1,
    );
    peers.net.stop(a);
}

/// Reads one length-prefixed message from `stream` and decodes it.
fn read_message(stream: &mut TcpStream) -> Message {
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix).expect("a length prefix");
    let length = wire::check_length(u32::from_be_bytes(prefix)).unwrap();
    let mut bytes = vec![0u8; length];
    stream.read_exact(&mut bytes).expect("a message");
    wire::decode(
        &bytes,
        &ClusterKey::new(KEY.as_bytes()).unwrap(),
        CLUSTER_ID,
    )
    .unwrap()
}

/// The next message of another type than heartbeat.
fn read_skipping_heartbeats(stream: &mut TcpStream) -> Message {
    loop {
        let message = read_message(stream);
        if message.header.packet_type != PacketType::Heartbeat {
            return message;
        }
    }
}

fn announcement(port: u16) -> Announcement {
    let at = |ip: [u8; 4], port| SocketAddrV4::new(ip.into(), port);
    Announcement {
        op: RecordOp::Upsert,
        record: FlowRecord {
            owner: 1,
            proto: 6,
            state: 2,
            client: at([198, 18, 79, 1], port),
            vip: at([198, 18, 78, 10], 80),
            backend: at([198, 19, 78, 11], 80),
            snat: Some(at([198, 19, 77, 1], port)),
            synproxy: 0,
            wscales: 0,
            seq_delta: 0,
            ts_delta: 0,
            proxy_isn: 0,
            age_ms: 1,
        },
    }
}

#[test]
#[ignore = "needs root: network namespaces"]
fn the_sender_syncs_batches_heartbeats_and_resyncs_a_peer_whose_queue_overflows() {
    // The transport alone, in instance 0's namespace; a raw node 2 in instance 1's.
    let net = PeerNet::up(&unique_prefix(), 2).expect("peer namespaces");
    const DEAD_AFTER: u64 = 400;
    let config = PeersConfig {
        node_id: 1,
        cluster_id: CLUSTER_ID,
        key_file: PathBuf::from("/unused"),
        listen: SocketAddrV4::new(peer_ip(0), PORT),
        members: vec![PeerConfig {
            node_id: 2,
            address: SocketAddrV4::new(peer_ip(1), PORT),
        }],
        announce: true,
        join_timeout: Duration::from_secs(30),
        dead_after: Duration::from_millis(DEAD_AFTER),
    };
    let listener =
        net.nodes[1].enter(|| TcpListener::bind(SocketAddrV4::new(peer_ip(1), PORT)).unwrap());
    let (started, handle) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runtime = net.nodes[0].enter(move || {
        // Threads started here are in this namespace, and so are their sockets.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let own_snat = vec![Ipv4Addr::new(198, 19, 77, 1)];
                let (handle, mut inbox) =
                    peers_io::Peers::start(&config, KEY.as_bytes().to_vec(), own_snat).unwrap();
                started.send(handle).unwrap();
                let serve = async {
                    while let Some(input) = inbox.recv().await {
                        if let PeerInput::SnapshotWanted { reply } = input {
                            let _ = reply.send((1..=3).map(announcement).collect());
                        }
                    }
                };
                tokio::select! {
                    () = serve => {}
                    _ = stopped => {}
                }
            });
        })
    });
    let handle = handle.recv_timeout(Duration::from_secs(5)).unwrap();
    listener.set_nonblocking(false).unwrap();
    let (mut conn, from) = listener.accept().unwrap();
    assert_eq!(
        from.ip(),
        std::net::IpAddr::V4(peer_ip(0)),
        "from the listen address"
    );
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

    // Hello, the snapshot, sync-done.
    let hello = read_message(&mut conn);
    assert_eq!(hello.header.packet_type, PacketType::Hello);
    assert_eq!((hello.header.from_node, hello.header.to_node), (1, 2));
    assert_eq!(
        (hello.header.source, hello.header.destination),
        (peer_ip(0), peer_ip(1))
    );
    assert_eq!(hello.state, Some(NodeState::Transition));
    assert_eq!(hello.snat, vec![Ipv4Addr::new(198, 19, 77, 1)]);
    let snapshot = read_skipping_heartbeats(&mut conn);
    assert_eq!(snapshot.header.packet_type, PacketType::Announcements);
    assert_eq!(
        snapshot.announcements,
        (1..=3).map(announcement).collect::<Vec<_>>()
    );
    let done = read_skipping_heartbeats(&mut conn);
    assert_eq!(done.header.packet_type, PacketType::SyncDone);
    assert!(hello.sequence < snapshot.sequence && snapshot.sequence < done.sequence);

    // Heartbeats every dead_after / 4.
    let first = read_message(&mut conn);
    let at = Instant::now();
    let second = read_message(&mut conn);
    assert_eq!(
        (first.header.packet_type, second.header.packet_type),
        (PacketType::Heartbeat, PacketType::Heartbeat)
    );
    assert!(at.elapsed() <= Duration::from_millis(DEAD_AFTER / 4 + 100));
    assert!(second.sequence > first.sequence);

    // Live announcements, ten calls in a row: a few messages carry all of them.
    for call in 0..10u16 {
        handle.announce(
            (0..100)
                .map(|i| announcement(1000 + call * 100 + i))
                .collect(),
        );
    }
    let mut received = Vec::new();
    let mut messages = 0;
    while received.len() < 1000 {
        let message = read_skipping_heartbeats(&mut conn);
        assert_eq!(message.header.packet_type, PacketType::Announcements);
        messages += 1;
        received.extend(message.announcements);
    }
    assert_eq!(received.len(), 1000);
    // Each record aged by its wait in the queue (the receiver dates the flow's creation
    // by it), a few milliseconds here.
    let (mut last, sent) = (received[999], announcement(1999));
    assert!(
        (sent.record.age_ms..sent.record.age_ms + 1000).contains(&last.record.age_ms),
        "{last:?}"
    );
    last.record.age_ms = sent.record.age_ms;
    assert_eq!(last, sent);
    assert!(messages < 10, "{messages} messages for 10 batches");
    // Counted once written: a moment after the reader has them.
    let deadline = Instant::now() + Duration::from_secs(1);
    while handle.status().counters.announcements_sent < 1003 {
        assert!(Instant::now() < deadline, "{:?}", handle.status().counters);
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = handle.status();
    assert_eq!(status.counters.announcements_sent, 1003);
    assert_eq!(status.counters.queue_overflows, 0);

    // More than its queue holds (a peer that does not keep up): the connection is dropped and
    // a new one starts over with a fresh snapshot. Nothing waits meanwhile.
    let call = Instant::now();
    handle.announce((0..=QUEUE_LIMIT).map(|i| announcement(i as u16)).collect());
    assert!(call.elapsed() < Duration::from_millis(500));
    assert_eq!(
        handle.status().counters.queue_overflows,
        QUEUE_LIMIT as u64 + 1
    );
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => panic!("the old connection should end: {e}"),
        }
    }
    let (mut again, _) = listener.accept().unwrap();
    again
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let hello_again = read_message(&mut again);
    assert_eq!(hello_again.header.packet_type, PacketType::Hello);
    assert_eq!(hello_again.instance, hello.instance);
    assert!(hello_again.sequence > second.sequence);
    let resync = read_skipping_heartbeats(&mut again);
    assert_eq!(resync.announcements.len(), 3);

    // Draining shows in the heartbeats.
    handle.set_draining();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let message = read_message(&mut again);
        if message.state == Some(NodeState::Draining) {
            break;
        }
        assert!(Instant::now() < deadline, "no draining heartbeat");
    }
    handle.stop();
    let _ = stop.send(());
    runtime.join().unwrap();
}
