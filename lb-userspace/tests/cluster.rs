//! Node agents against the router engine over real UDP sockets on loopback (each agent has
//! its own 127.0.0.x address, as a node has its own address on the internal segment).
//! Intervals are 100 ms, so the whole run takes a few seconds.

use std::{
    net::{Ipv4Addr, SocketAddrV4, TcpListener},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use lb_userspace::{
    cluster::{
        agent::{self, AgentSettings, ServiceSpec},
        io,
        router::{Clock, KnownService, NodeState, RouterEngine, RouterSettings},
        wire::{ClusterKey, Health},
    },
    domain::Protocol,
};
use tokio::{net::UdpSocket, sync::oneshot, task::JoinHandle};

const CLUSTER: u16 = 42;
// Short enough for a quick test, long enough that a busy 2-core machine does not miss
// three heartbeats in a row.
const INTERVAL: Duration = Duration::from_millis(250);
const KEY: &[u8] = b"loopback-cluster-key-0123456789!";

struct Node {
    address: Ipv4Addr,
    /// Keeps the service's port open, so the agent's health check passes.
    _listener: TcpListener,
    port: u16,
}

fn node(last_octet: u8) -> Node {
    let address = Ipv4Addr::new(127, 0, 0, last_octet);
    let listener = TcpListener::bind((address, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    Node {
        address,
        _listener: listener,
        port,
    }
}

fn agent_settings(node: &Node, capacity: u32, router: SocketAddrV4, key: &[u8]) -> AgentSettings {
    AgentSettings {
        // All agents share this machine's load average: it says nothing about any one
        // of them and, drifting between their reports, would move the shares.
        load_source: lb_userspace::cluster::agent::LoadSource::None,
        cluster_id: CLUSTER,
        priority: u16::from(node.address.octets()[3]),
        services: vec![
            ServiceSpec {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: node.port,
            },
            // Not a service of the router: ignored there.
            "smtp:tcp:25".parse().unwrap(),
        ],
        key: ClusterKey::new(key).unwrap(),
        interval: INTERVAL,
        dead_after: 3,
        capacity,
        address: node.address,
        listen_port: 0,
        announce_to: router,
    }
}

struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

fn start_agent(settings: AgentSettings) -> Running {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(agent::run(settings, async {
        let _ = stopped.await;
    }));
    Running { stop, task }
}

async fn wait_for(
    engine: &Arc<Mutex<RouterEngine>>,
    what: &str,
    within: Duration,
    ok: impl Fn(&RouterEngine) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        if ok(&engine.lock().unwrap()) {
            return start.elapsed();
        }
        if start.elapsed() > within {
            let e = engine.lock().unwrap();
            panic!(
                "{what}: not within {within:?}; endpoints {:#?}, counters {:?}",
                e.endpoints(),
                e.counters()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn state_of(e: &RouterEngine, address: Ipv4Addr) -> Option<(NodeState, u32)> {
    e.endpoints()
        .iter()
        .find(|x| x.node == address && x.service == "http")
        .map(|x| (x.state, x.tokens))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_join_report_leave_fail_and_rejoin() {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let std::net::SocketAddr::V4(router) = socket.local_addr().unwrap() else {
        unreachable!()
    };
    let mut settings = RouterSettings::new(
        CLUSTER,
        *router.ip(),
        vec![KnownService {
            name: "http".into(),
            protocol: Protocol::Tcp,
            vip: Ipv4Addr::new(198, 18, 1, 10),
            port: 80,
        }],
    );
    settings.heartbeat_interval = INTERVAL;
    settings.forget_after = Duration::from_secs(60);
    let engine = Arc::new(Mutex::new(
        RouterEngine::new(settings, ClusterKey::new(KEY).unwrap(), 1, Clock::system()).unwrap(),
    ));
    let (stop_router, router_stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(io::serve(socket, engine.clone(), async {
        let _ = router_stopped.await;
    }));

    let nodes = [node(11), node(12), node(13)];
    let mut agents: Vec<Option<Running>> = nodes
        .iter()
        .zip([4, 3, 3])
        .map(|(n, capacity)| Some(start_agent(agent_settings(n, capacity, router, KEY))))
        .collect();
    // An agent with the wrong key never joins.
    let intruder = node(14);
    let bad = start_agent(agent_settings(
        &intruder,
        100,
        router,
        b"wrong-key-wrong-key-wrong-key!!!",
    ));

    wait_for(
        &engine,
        "three nodes active at 4:3:3",
        Duration::from_secs(5),
        |e| {
            nodes
                .iter()
                .zip([400, 300, 300])
                .all(|(n, t)| state_of(e, n.address) == Some((NodeState::Active, t)))
        },
    )
    .await;
    // The intruder's first join may still be in flight on a loaded machine.
    wait_for(
        &engine,
        "the intruder's join dropped for its tag",
        Duration::from_secs(5),
        |e| e.counters().drop_bad_tag >= 1,
    )
    .await;
    {
        let e = engine.lock().unwrap();
        let row = e
            .endpoints()
            .iter()
            .find(|x| x.node == nodes[0].address)
            .unwrap();
        assert_eq!(row.port, nodes[0].port);
        assert_eq!(row.health, Health::Up, "local TCP check of the open port");
        assert_eq!(row.capacity, 4);
        // Highest priority (the last octet) is the management node.
        assert_eq!(e.management(), nodes[2].address);
        assert!(state_of(&e, intruder.address).is_none());
        assert!(e.counters().drop_bad_tag >= 1);
        assert_eq!(e.counters().unknown_services, 3, "smtp, once per node");
    }

    // SIGTERM-like stop: the agent sends a leave and is drained at once.
    let a = agents[0].take().unwrap();
    a.stop.send(()).unwrap();
    a.task.await.unwrap().unwrap();
    wait_for(&engine, "node 1 draining", Duration::from_secs(2), |e| {
        state_of(e, nodes[0].address) == Some((NodeState::Draining, 0))
            && state_of(e, nodes[1].address) == Some((NodeState::Active, 500))
    })
    .await;

    // A crash: no leave. Down within 3 heartbeats (+ margin for this busy machine).
    let b = agents[1].take().unwrap();
    b.task.abort();
    let took = wait_for(&engine, "node 2 down", Duration::from_secs(4), |e| {
        state_of(e, nodes[1].address) == Some((NodeState::Down, 0))
    })
    .await;
    assert!(took >= INTERVAL * 2, "down too early: {took:?}");
    assert_eq!(
        state_of(&engine.lock().unwrap(), nodes[2].address),
        Some((NodeState::Active, 1000))
    );

    // Both come back.
    agents[0] = Some(start_agent(agent_settings(&nodes[0], 4, router, KEY)));
    agents[1] = Some(start_agent(agent_settings(&nodes[1], 3, router, KEY)));
    wait_for(&engine, "all back at 4:3:3", Duration::from_secs(5), |e| {
        nodes
            .iter()
            .zip([400, 300, 300])
            .all(|(n, t)| state_of(e, n.address) == Some((NodeState::Active, t)))
    })
    .await;
    {
        let c = engine.lock().unwrap().counters();
        assert_eq!(
            (c.joins, c.rejoins, c.leaves, c.expired),
            (3, 2, 1, 1),
            "{c:?}"
        );
        assert_eq!(c.drop_replay, 0);
        assert_eq!(c.drop_duplicate_address, 0);
    }

    for a in agents.into_iter().flatten() {
        a.stop.send(()).unwrap();
        a.task.await.unwrap().unwrap();
    }
    bad.stop.send(()).unwrap();
    bad.task.await.unwrap().unwrap();
    stop_router.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn agent_refuses_bad_settings() {
    let n = node(20);
    let router = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9);
    let mut s = agent_settings(&n, 0, router, KEY);
    let err = agent::run(s.clone(), async {})
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("capacity"), "{err}");
    s.capacity = 1;
    s.services.push(s.services[0].clone());
    let err = agent::run(s, async {}).await.unwrap_err().to_string();
    assert!(err.contains("given twice"), "{err}");
}
