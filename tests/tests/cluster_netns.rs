//! Cluster nodes on the real testbed: the three servers run `lb node` on their eth0 (the
//! bridge segment), nobody lists them in the config, and `lb run` answers their broadcast
//! joins on lb-int. Heartbeats are 250 ms so the whole file runs in well under a minute.
//!
//! Needs root: run with `cargo xtask test` (or `cargo test -- --ignored --test-threads=1`).

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket},
    path::PathBuf,
    time::{Duration, Instant},
};

use lb_integration::{Balancer, KeepAlive, lb_binary, server_of};
use lb_testbed::{self as testbed, Role, SERVER_IPS, run_in_netns, unique_prefix};
use lb_userspace::{
    cluster::wire::{
        self, ClusterKey, Fields, Function, Header, Health, Message, PacketType, ServiceOffer,
    },
    domain::Protocol,
};
use serde_json::Value;

const CLUSTER_ID: u16 = 7;
const HEARTBEAT: Duration = Duration::from_millis(250);
const DEAD_AFTER: u32 = 3;
const KEY: &str = "netns-cluster-key-0123456789abcdef";
const ROUTER_PORT: u16 = lb_userspace::domain::DEFAULT_CLUSTER_PORT;
const METRICS_PORT: u16 = 9466;

/// The testbed and daemon, plus the agents it runs (ended by PID; the testbed also
/// stops any left at teardown).
struct Cluster {
    balancer: Balancer,
    key_file: PathBuf,
    /// PID of the agent of server 1..=3.
    agents: [Option<u32>; 3],
}

impl Cluster {
    /// `lb run` with a `[cluster]` and a `web` service without configured backends, and
    /// the metrics endpoint on lb-ext.
    fn start() -> Cluster {
        let prefix = unique_prefix();
        // Balancer::start keeps its files here; the key must exist before it starts.
        let dir = lb_binary()
            .parent()
            .unwrap()
            .join("netns-tests")
            .join(&prefix);
        std::fs::create_dir_all(&dir).unwrap();
        let key_file = dir.join("cluster.key");
        std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
        let config = format!(
            "name = \"{prefix}\"\n\
             [interfaces]\nattach = [\"lb-ext\", \"lb-int\"]\nxdp_mode = \"native\"\n\
             [control]\nsocket = \"/run/lb/{prefix}.sock\"\nmetrics = \"{}:{METRICS_PORT}\"\n\
             [cluster]\ncluster_id = {CLUSTER_ID}\nkey_file = \"{}\"\ninterface = \"lb-int\"\n\
             heartbeat_ms = {}\ndead_after = {DEAD_AFTER}\n\
             [[service]]\nname = \"web\"\nvip = \"{}\"\nport = 80\nsnat_ip = \"{}\"\n",
            testbed::LB_EXT_IP,
            key_file.display(),
            HEARTBEAT.as_millis(),
            testbed::VIP,
            testbed::SNAT_IP,
        );
        let balancer = Balancer::start(&prefix, &config).expect("start testbed and lb");
        Cluster {
            balancer,
            key_file,
            agents: [None; 3],
        }
    }

    /// `lb node` on server `idx` (1..=3) with `capacity`; load is not reported (the
    /// three servers share one host, so its load average says nothing about any one).
    fn spawn_agent(&mut self, idx: usize, capacity: u32) {
        let lb = lb_binary();
        let log = self
            .balancer
            .log_path
            .with_file_name(format!("agent-s{idx}.log"));
        let (interval, capacity, priority, cluster) = (
            format!("{}ms", HEARTBEAT.as_millis()),
            capacity.to_string(),
            idx.to_string(),
            CLUSTER_ID.to_string(),
        );
        let pid = self
            .balancer
            .topo
            .spawn_logged(
                Role::Server(idx),
                &[
                    "env",
                    "RUST_LOG=info",
                    &lb.to_string_lossy(),
                    "node",
                    "--cluster-id",
                    &cluster,
                    "--priority",
                    &priority,
                    "--service",
                    "web:tcp:80",
                    "--key-file",
                    &self.key_file.to_string_lossy(),
                    "--iface",
                    testbed::SERVER_IF,
                    "--interval",
                    &interval,
                    "--capacity",
                    &capacity,
                    "--load-source",
                    "none",
                ],
                &log,
            )
            .expect("spawn lb node");
        self.agents[idx - 1] = Some(pid);
    }

    /// Sends `signal` to the agent of server `idx` and waits for it to exit.
    fn end_agent(&mut self, idx: usize, signal: libc::c_int) {
        let pid = self.agents[idx - 1].take().expect("agent running");
        let topo = &self.balancer.topo;
        topo.signal_child(pid, signal).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while topo.try_wait_child(pid).unwrap().is_none() {
            assert!(Instant::now() < deadline, "agent {pid} did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn nodes(&self) -> Value {
        self.balancer.json("nodes").expect("lb nodes --json")
    }

    /// Waits until `done` holds for the router's table, up to `limit`; the time it took.
    fn wait_nodes(&self, limit: Duration, what: &str, done: impl Fn(&Value) -> bool) -> Duration {
        let start = Instant::now();
        loop {
            let nodes = self.nodes();
            if done(&nodes) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "{what}: not within {limit:?}; lb nodes: {nodes:#}\nlog:\n{}",
                self.balancer.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The endpoint row of server `idx` (1..=3).
fn endpoint(nodes: &Value, idx: usize) -> Option<&Value> {
    let ip = SERVER_IPS[idx - 1].to_string();
    nodes["endpoints"]
        .as_array()?
        .iter()
        .find(|e| e["node"] == Value::String(ip.clone()))
}

/// Server `idx`'s endpoint is in `state` with `tokens`, and that is applied.
fn applied(nodes: &Value, idx: usize, state: &str, tokens: u64) -> bool {
    endpoint(nodes, idx).is_some_and(|e| {
        e["state"] == state
            && e["tokens"] == tokens
            && e["applied"] == serde_json::json!([state, tokens])
    })
}

/// The data-plane view of the backend set: (address, state, effective weight) of the
/// web service's backends.
fn backend_set(balancer: &Balancer) -> Vec<(String, String, u64)> {
    let mut set: Vec<(String, String, u64)> = balancer
        .json("backends")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["backend"].as_str().unwrap().to_string(),
                b["state"].as_str().unwrap().to_string(),
                b["effective_weight"].as_u64().unwrap(),
            )
        })
        .collect();
    set.sort();
    set
}

/// One GET / on a new connection from the client: which server answered.
fn get_once(stream_addr: SocketAddrV4) -> Result<usize, String> {
    let mut stream = TcpStream::connect_timeout(&stream_addr.into(), Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&answer);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    server_of(body).ok_or_else(|| format!("unexpected answer {text:?}"))
}

/// `count` GETs, each on a new connection, from the client namespace: answers per
/// server (index 1..=3) and the failures.
fn requests(balancer: &Balancer, count: usize) -> (BTreeMap<usize, usize>, Vec<String>) {
    run_in_netns(&balancer.topo.ns(Role::Client), move || {
        let mut by_server = BTreeMap::new();
        let mut failures = Vec::new();
        for _ in 0..count {
            match get_once(Balancer::vip(80)) {
                Ok(server) => *by_server.entry(server).or_insert(0) += 1,
                Err(e) => failures.push(e),
            }
        }
        (by_server, failures)
    })
    .unwrap()
}

#[test]
#[ignore = "needs root: creates network namespaces and attaches XDP"]
fn announced_nodes_balance_by_capacity_fail_over_rejoin_and_drain() {
    let mut cluster = Cluster::start();
    for (idx, capacity) in [(1, 4), (2, 3), (3, 3)] {
        cluster.spawn_agent(idx, capacity);
    }
    // Broadcast joins on the bridge reach lb-int; capacities 4:3:3 give 400/300/300.
    cluster.wait_nodes(Duration::from_secs(10), "three nodes joined", |n| {
        applied(n, 1, "active", 400) && applied(n, 2, "active", 300) && applied(n, 3, "active", 300)
    });
    let nodes = cluster.nodes();
    assert_eq!(nodes["cluster_id"], CLUSTER_ID);
    assert_eq!(nodes["router"], testbed::LB_INT_IP.to_string());
    // No controller configured: the highest priority (server 3) is the management node.
    assert_eq!(nodes["management"], SERVER_IPS[2].to_string());
    assert_eq!(nodes["counters"]["joins"], 3);
    let human = cluster.balancer.cli(&["nodes"]).unwrap();
    assert!(
        human.contains("web 198.18.1.10:80/tcp") && human.contains("active 400"),
        "{human}"
    );
    let backends = backend_set(&cluster.balancer);
    assert_eq!(
        backends,
        SERVER_IPS
            .iter()
            .zip([400, 300, 300])
            .map(|(ip, w)| (format!("{ip}:80"), "active".to_string(), w))
            .collect::<Vec<_>>()
    );

    // A reload keeps the announced backends; [cluster] itself needs a restart.
    let config = std::fs::read_to_string(&cluster.balancer.config_path).unwrap();
    cluster.balancer.reload(&config).unwrap();
    assert_eq!(
        backend_set(&cluster.balancer),
        backends,
        "reload lost announced backends"
    );
    let refused = cluster
        .balancer
        .reload(&config.replace("dead_after = 3", "dead_after = 4"))
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("[cluster] can only change with a restart"),
        "{refused}"
    );
    std::fs::write(&cluster.balancer.config_path, &config).unwrap();
    assert_eq!(backend_set(&cluster.balancer), backends);

    // Shares within ±5 points of 40/30/30. With n = 1500 new flows a share's standard
    // deviation is at most sqrt(0.4 × 0.6 / 1500) = 1.26 points, so 5 points is ~4σ
    // (a false failure about once in 10^4 runs per server).
    let n = 1500;
    let (by_server, failures) = requests(&cluster.balancer, n);
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    eprintln!("new flows of {n} by server: {by_server:?}");
    for (idx, expected) in [(1, 40.0), (2, 30.0), (3, 30.0)] {
        let got = by_server.get(&idx).copied().unwrap_or(0);
        let share = 100.0 * got as f64 / n as f64;
        assert!(
            (share - expected).abs() <= 5.0,
            "server {idx}: {share:.1}% of new flows, expected {expected}% ± 5: {by_server:?}"
        );
    }

    // Server 3 dies with its agent (SIGKILL: no leave). Within 3 heartbeats + 1 s it
    // takes no new flows, and from then on no request fails.
    let window = HEARTBEAT * DEAD_AFTER + Duration::from_secs(1);
    let killed = Instant::now();
    cluster.end_agent(3, libc::SIGKILL);
    cluster.balancer.topo.stop_server(3);
    cluster.wait_nodes(window, "silent node 3 out of new-flow selection", |n| {
        applied(n, 3, "down", 0)
    });
    let removed_after = killed.elapsed();
    assert!(removed_after <= window, "removed after {removed_after:?}");
    eprintln!("silent node out of selection after {removed_after:?} (limit {window:?})");
    let nodes = cluster.nodes();
    assert!(
        applied(&nodes, 1, "active", 571) && applied(&nodes, 2, "active", 429),
        "{nodes:#}"
    );
    std::thread::sleep(window.saturating_sub(killed.elapsed()));
    let (by_server, failures) = requests(&cluster.balancer, 300);
    assert!(failures.is_empty(), "failed after the window: {failures:?}");
    assert_eq!(by_server.get(&3), None, "{by_server:?}");
    assert_eq!(cluster.nodes()["counters"]["expired"], 1);

    // It comes back: its next join makes it active again.
    cluster.balancer.topo.start_server(3).unwrap();
    cluster.spawn_agent(3, 3);
    cluster.wait_nodes(Duration::from_secs(5), "node 3 back", |n| {
        applied(n, 1, "active", 400) && applied(n, 3, "active", 300)
    });
    assert_eq!(cluster.nodes()["counters"]["rejoins"], 1);
    let (by_server, failures) = requests(&cluster.balancer, 300);
    assert!(failures.is_empty(), "{failures:?}");
    assert!(
        by_server.get(&3).copied().unwrap_or(0) >= 30,
        "{by_server:?}"
    );

    // SIGTERM on server 1's agent: it leaves, the router drains it. An established
    // connection to it keeps working; new flows go elsewhere.
    let mut established = None;
    for _ in 0..50 {
        let mut conn = KeepAlive::open(&cluster.balancer).unwrap();
        if conn.get().ok() == Some(1) {
            established = Some(conn);
            break;
        }
    }
    let mut established = established.expect("a connection to server 1 in 50 tries");
    cluster.end_agent(1, libc::SIGTERM);
    cluster.wait_nodes(Duration::from_secs(2), "node 1 draining", |n| {
        applied(n, 1, "draining", 0)
    });
    assert_eq!(cluster.nodes()["counters"]["leaves"], 1);
    let backends = backend_set(&cluster.balancer);
    assert!(
        backends.contains(&(format!("{}:80", SERVER_IPS[0]), "draining".into(), 0)),
        "{backends:?}"
    );
    let (by_server, failures) = requests(&cluster.balancer, 200);
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(
        by_server.get(&1),
        None,
        "a draining node took new flows: {by_server:?}"
    );
    for _ in 0..3 {
        assert_eq!(established.get().ok(), Some(1), "established flow moved");
    }
    drop(established);
    for idx in [2, 3] {
        cluster.end_agent(idx, libc::SIGTERM);
    }
}

/// A node message from server 3 (header source = its address, as the router checks).
fn node_join(cluster_id: u16, sequence: u64, instance: u64) -> Message {
    Message {
        header: Header {
            source: SERVER_IPS[2],
            destination: Ipv4Addr::BROADCAST,
            priority: 1,
            cluster_id,
            packet_type: PacketType::Join,
            function: Function::ClusterNode,
            router: Ipv4Addr::UNSPECIFIED,
            management: Ipv4Addr::UNSPECIFIED,
            source_port: 0,
            destination_port: 0,
        },
        fields: Fields {
            sequence,
            timestamp_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64,
            instance,
            services: vec![ServiceOffer {
                name: "web".into(),
                protocol: Protocol::Tcp,
                port: 80,
                health: Health::Up,
            }],
            capacity: Some(1),
            load_permille: Some(0),
            connections: Some(0),
            ..Fields::default()
        },
    }
}

#[test]
#[ignore = "needs root: creates network namespaces and attaches XDP"]
fn forged_replayed_foreign_and_malformed_datagrams_are_dropped_and_counted() {
    let mut cluster = Cluster::start();
    cluster.spawn_agent(1, 1);
    cluster.wait_nodes(Duration::from_secs(10), "node 1 joined", |n| {
        applied(n, 1, "active", 1000)
    });
    let before = backend_set(&cluster.balancer);
    // Server 3 plays the attacker: it sends to the router from its own address.
    let attacker = cluster.balancer.topo.ns(Role::Server(3));
    let socket = run_in_netns(&attacker, || UdpSocket::bind((SERVER_IPS[2], 0)).unwrap()).unwrap();
    let router = SocketAddrV4::new(testbed::LB_INT_IP, ROUTER_PORT);
    let key = ClusterKey::new(KEY.as_bytes()).unwrap();
    let wrong_key = ClusterKey::new(b"not-the-cluster-key-at-all-000000").unwrap();
    let join = wire::encode(&node_join(CLUSTER_ID, 1_000, 0xa11ce), &key).unwrap();
    let mut oversized = join.clone();
    oversized.resize(1450, 0);
    let cases: [(&str, Vec<u8>); 4] = [
        (
            "drop_bad_tag",
            wire::encode(&node_join(CLUSTER_ID, 1_000, 0xa11ce), &wrong_key).unwrap(),
        ),
        (
            "drop_wrong_cluster",
            wire::encode(&node_join(CLUSTER_ID + 1, 1_000, 0xa11ce), &key).unwrap(),
        ),
        ("drop_truncated", join[..40].to_vec()),
        ("drop_oversized", oversized),
    ];
    for (counter, datagram) in &cases {
        let was = cluster.nodes()["counters"][counter].as_u64().unwrap();
        socket.send_to(datagram, router).unwrap();
        cluster.wait_nodes(Duration::from_secs(5), counter, |n| {
            n["counters"][counter].as_u64() == Some(was + 1)
        });
        assert!(
            endpoint(&cluster.nodes(), 3).is_none(),
            "{counter}: server 3 got in"
        );
        assert_eq!(
            backend_set(&cluster.balancer),
            before,
            "{counter} changed the backends"
        );
    }

    // A replay: a join that was valid once (server 3 joins), sent again after server 3
    // fell silent, must not bring it back.
    socket.send_to(&join, router).unwrap();
    cluster.wait_nodes(Duration::from_secs(5), "server 3 joined", |n| {
        endpoint(n, 3).is_some()
    });
    cluster.wait_nodes(Duration::from_secs(5), "silent server 3 down", |n| {
        applied(n, 3, "down", 0)
    });
    let down = backend_set(&cluster.balancer);
    let replays = cluster.nodes()["counters"]["drop_replay"].as_u64().unwrap();
    socket.send_to(&join, router).unwrap();
    cluster.wait_nodes(Duration::from_secs(5), "replay counted", |n| {
        n["counters"]["drop_replay"].as_u64() == Some(replays + 1)
    });
    assert!(applied(&cluster.nodes(), 3, "down", 0));
    assert_eq!(
        backend_set(&cluster.balancer),
        down,
        "the replay changed the backends"
    );
    // Every drop above was counted once, in the API and in the metrics.
    let counters = &cluster.nodes()["counters"];
    let url = format!("http://{}:{METRICS_PORT}/metrics", testbed::LB_EXT_IP);
    let out = cluster
        .balancer
        .client(&["curl", "-sS", "--max-time", "5", &url])
        .unwrap();
    let metrics = String::from_utf8_lossy(&out.stdout);
    for counter in [
        "drop_bad_tag",
        "drop_wrong_cluster",
        "drop_truncated",
        "drop_oversized",
    ] {
        assert_eq!(counters[counter], 1, "{counter}: {counters}");
        let line = format!("lb_cluster_events_total{{event=\"{counter}\"}} 1");
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in:\n{metrics}"
        );
    }
    assert!(
        metrics.contains("lb_cluster_endpoints{state=\"down\"} 1"),
        "{metrics}"
    );
    cluster.end_agent(1, libc::SIGTERM);
}
