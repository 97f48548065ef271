//! The router engine, driven with exact times and real encoded datagrams.

use super::*;

const KEY: &[u8] = b"cluster-seven-key-for-the-tests!";
const CLUSTER: u16 = 7;
const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
const WALL: u64 = 1_700_000_000_000;
const PORT: u16 = crate::domain::DEFAULT_CLUSTER_PORT;

fn key() -> ClusterKey {
    ClusterKey::new(KEY).unwrap()
}

fn node_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 2, 10 + n)
}

fn addr(n: u8) -> SocketAddrV4 {
    SocketAddrV4::new(node_ip(n), PORT)
}

struct Harness {
    engine: RouterEngine,
    start: Instant,
    /// Milliseconds since start.
    at_ms: u64,
}

impl Harness {
    fn new() -> Self {
        Self::with(|_| {})
    }

    fn with(tune: impl FnOnce(&mut RouterSettings)) -> Self {
        let mut settings = RouterSettings::new(
            CLUSTER,
            ROUTER,
            vec![
                KnownService {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    vip: VIP,
                    port: 80,
                },
                KnownService {
                    name: "dns".into(),
                    protocol: Protocol::Udp,
                    vip: VIP,
                    port: 53,
                },
            ],
        );
        tune(&mut settings);
        let start = Instant::now();
        let clock = Clock {
            now: start,
            wall_ms: WALL,
        };
        Self {
            engine: RouterEngine::new(settings, key(), 0xabcd, clock).unwrap(),
            start,
            at_ms: 0,
        }
    }

    fn clock(&self) -> Clock {
        Clock {
            now: self.start + Duration::from_millis(self.at_ms),
            wall_ms: WALL + self.at_ms,
        }
    }

    fn advance(&mut self, ms: u64) -> Vec<Outgoing> {
        self.at_ms += ms;
        self.engine.tick(self.clock())
    }

    fn send(&mut self, datagram: &[u8], from: SocketAddrV4) -> Vec<Outgoing> {
        let clock = self.clock();
        self.engine.handle_datagram(datagram, from, clock)
    }

    fn tokens(&self, service: &str) -> Vec<(Ipv4Addr, NodeState, u32)> {
        self.engine
            .endpoints()
            .iter()
            .filter(|e| e.service == service)
            .map(|e| (e.node, e.state, e.tokens))
            .collect()
    }
}

/// A node's process: its own instance and sequence numbers.
struct Agent {
    n: u8,
    instance: u64,
    sequence: u64,
    priority: u16,
    capacity: u32,
    load: u32,
    services: Vec<ServiceOffer>,
}

fn http() -> ServiceOffer {
    ServiceOffer {
        name: "http".into(),
        protocol: Protocol::Tcp,
        port: 80,
        health: Health::Up,
    }
}

impl Agent {
    fn new(n: u8, capacity: u32) -> Self {
        Self {
            n,
            instance: 0x1000 + u64::from(n),
            sequence: 0,
            priority: 1,
            capacity,
            load: 0,
            services: vec![http()],
        }
    }

    fn message(&mut self, packet_type: PacketType, h: &Harness) -> Message {
        self.sequence += 1;
        let reports = matches!(packet_type, PacketType::Join | PacketType::Heartbeat);
        Message {
            header: Header {
                source: node_ip(self.n),
                destination: Ipv4Addr::BROADCAST,
                priority: self.priority,
                cluster_id: CLUSTER,
                packet_type,
                function: Function::ClusterNode,
                router: Ipv4Addr::UNSPECIFIED,
                management: Ipv4Addr::UNSPECIFIED,
                source_port: 0,
                destination_port: 0,
            },
            fields: Fields {
                sequence: self.sequence,
                timestamp_ms: h.clock().wall_ms,
                instance: self.instance,
                services: if reports {
                    self.services.clone()
                } else {
                    Vec::new()
                },
                capacity: reports.then_some(self.capacity),
                load_permille: reports.then_some(self.load),
                connections: reports.then_some(0),
                ..Fields::default()
            },
        }
    }

    fn bytes(&mut self, packet_type: PacketType, h: &Harness) -> Vec<u8> {
        wire::encode(&self.message(packet_type, h), &key()).unwrap()
    }

    fn send(&mut self, packet_type: PacketType, h: &mut Harness) -> Vec<Outgoing> {
        let bytes = self.bytes(packet_type, h);
        h.send(&bytes, addr(self.n))
    }
}

fn decode_all(out: &[Outgoing]) -> Vec<(SocketAddrV4, Message)> {
    out.iter()
        .map(|o| (o.to, wire::decode(&o.datagram, &key(), CLUSTER).unwrap()))
        .collect()
}

#[test]
fn join_is_answered_with_router_and_management() {
    let mut h = Harness::new();
    let mut a = Agent::new(1, 4);
    let out = decode_all(&a.send(PacketType::Join, &mut h));
    assert_eq!(out.len(), 2, "{out:?}");
    let (to, reply) = &out[0];
    assert_eq!(*to, addr(1));
    assert_eq!(reply.header.packet_type, PacketType::RouterReply);
    assert_eq!(reply.header.source, ROUTER);
    assert_eq!(reply.header.destination, node_ip(1));
    assert_eq!(reply.header.router, ROUTER);
    assert_eq!(
        reply.header.management,
        Ipv4Addr::UNSPECIFIED,
        "N/A in a join reply"
    );
    assert_eq!(reply.fields.ack_instance, Some(a.instance));
    assert_eq!(reply.fields.heartbeat_ms, Some(1000));
    let (to, tell) = &out[1];
    assert_eq!(*to, addr(1));
    assert_eq!(tell.header.packet_type, PacketType::RouterToNodes);
    assert_eq!(tell.header.router, ROUTER);
    // The only live node is the management node.
    assert_eq!(tell.header.management, node_ip(1));
    assert!(tell.fields.sequence > reply.fields.sequence);
    assert_eq!(h.tokens("http"), [(node_ip(1), NodeState::Active, 1000)]);
    assert!(h.tokens("dns").is_empty());
    let e = &h.engine.endpoints()[0];
    assert_eq!(
        (e.vip, e.service_port, e.port, e.capacity),
        (VIP, 80, 80, 4)
    );
    assert_eq!(h.engine.counters().joins, 1);
    assert_eq!(h.engine.counters().accepted, 1);
}

#[test]
fn capacities_become_tokens_and_heartbeats_keep_nodes_alive() {
    let mut h = Harness::new();
    let mut agents = [Agent::new(1, 4), Agent::new(2, 3), Agent::new(3, 3)];
    for a in &mut agents {
        a.send(PacketType::Join, &mut h);
    }
    let gen_after_joins = h.engine.generation();
    assert_eq!(
        h.tokens("http"),
        [
            (node_ip(1), NodeState::Active, 400),
            (node_ip(2), NodeState::Active, 300),
            (node_ip(3), NodeState::Active, 300)
        ]
    );
    // Ten seconds of heartbeats with the same reports: nothing changes.
    for _ in 0..10 {
        h.advance(1000);
        for a in &mut agents {
            assert!(a.send(PacketType::Heartbeat, &mut h).is_empty());
        }
    }
    assert_eq!(h.engine.generation(), gen_after_joins);
    assert_eq!(h.engine.counters().joins, 3);
    assert_eq!(h.engine.counters().accepted, 33);
}

#[test]
fn silent_node_goes_down_after_dead_interval_and_comes_back() {
    let mut h = Harness::new();
    let mut a = Agent::new(1, 1);
    let mut b = Agent::new(2, 1);
    a.send(PacketType::Join, &mut h);
    b.send(PacketType::Join, &mut h);
    // b heartbeats, a falls silent. 3 intervals = 3000 ms: still active at 3000.
    for _ in 0..3 {
        h.advance(1000);
        b.send(PacketType::Heartbeat, &mut h);
    }
    assert_eq!(h.tokens("http")[0], (node_ip(1), NodeState::Active, 500));
    h.advance(1);
    assert_eq!(
        h.tokens("http"),
        [
            (node_ip(1), NodeState::Down, 0),
            (node_ip(2), NodeState::Active, 1000)
        ]
    );
    assert_eq!(h.engine.counters().expired, 1);
    // Its next heartbeat brings it back, answered as a first contact.
    let out = decode_all(&a.send(PacketType::Heartbeat, &mut h));
    assert_eq!(out[0].1.header.packet_type, PacketType::RouterReply);
    assert_eq!(h.tokens("http")[0], (node_ip(1), NodeState::Active, 500));
    assert_eq!(h.engine.counters().rejoins, 1);
}

#[test]
fn leave_drains_and_rejoin_restores() {
    let mut h = Harness::new();
    let mut a = Agent::new(1, 1);
    let mut b = Agent::new(2, 1);
    a.send(PacketType::Join, &mut h);
    b.send(PacketType::Join, &mut h);
    a.send(PacketType::Leave, &mut h);
    assert_eq!(
        h.tokens("http"),
        [
            (node_ip(1), NodeState::Draining, 0),
            (node_ip(2), NodeState::Active, 1000)
        ]
    );
    assert_eq!(h.engine.counters().leaves, 1);
    // A draining node does not turn "down" by silence; it is forgotten after forget_after.
    for _ in 0..10 {
        h.advance(1000);
        b.send(PacketType::Heartbeat, &mut h);
    }
    assert_eq!(h.tokens("http")[0].1, NodeState::Draining);
    // The same agent restarted: new instance, new join.
    let mut a2 = Agent::new(1, 1);
    a2.instance = 0x2001;
    a2.send(PacketType::Join, &mut h);
    assert_eq!(h.tokens("http")[0], (node_ip(1), NodeState::Active, 500));
    assert_eq!(h.engine.counters().rejoins, 1);
}

#[test]
fn forgotten_after_forget_after() {
    let mut h = Harness::with(|s| {
        s.forget_after = Duration::from_secs(60);
    });
    let mut a = Agent::new(1, 1);
    a.send(PacketType::Join, &mut h);
    h.advance(60_000);
    assert_eq!(h.tokens("http")[0].1, NodeState::Down);
    h.advance(1);
    assert!(h.engine.endpoints().is_empty());
    assert_eq!(h.engine.counters().forgotten, 1);
}

#[test]
fn management_node_is_highest_priority_then_lowest_address() {
    let mut h = Harness::new();
    let mut a = Agent::new(1, 1);
    let mut b = Agent::new(2, 1);
    let mut c = Agent::new(3, 1);
    a.priority = 5;
    b.priority = 9;
    c.priority = 9;
    a.send(PacketType::Join, &mut h);
    assert_eq!(h.engine.management(), node_ip(1));
    // c outranks a: every live node is told.
    let out = decode_all(&c.send(PacketType::Join, &mut h));
    assert_eq!(h.engine.management(), node_ip(3));
    let told: Vec<_> = out
        .iter()
        .filter(|(_, m)| m.header.packet_type == PacketType::RouterToNodes)
        .map(|(to, m)| (*to, m.header.management))
        .collect();
    assert_eq!(told, [(addr(1), node_ip(3)), (addr(3), node_ip(3))]);
    // b ties with c and has the lower address.
    b.send(PacketType::Join, &mut h);
    assert_eq!(h.engine.management(), node_ip(2));
    // b leaves: c again.
    b.send(PacketType::Leave, &mut h);
    let out = decode_all(&h.advance(1));
    assert_eq!(h.engine.management(), node_ip(3));
    assert!(out.iter().all(|(_, m)| m.header.management == node_ip(3)));
    assert_eq!(out.len(), 2, "a and c are told, draining b is not");
}

#[test]
fn configured_controller_is_the_management_node() {
    let controller = Ipv4Addr::new(198, 18, 2, 200);
    let mut h = Harness::with(|s| s.controller = Some(controller));
    let mut a = Agent::new(1, 1);
    a.priority = 100;
    let out = decode_all(&a.send(PacketType::Join, &mut h));
    assert_eq!(out[1].1.header.management, controller);
}

#[test]
fn periodic_router_to_nodes_once_per_interval() {
    let mut h = Harness::new();
    let mut a = Agent::new(1, 1);
    a.send(PacketType::Join, &mut h);
    assert_eq!(h.advance(0).len(), 1);
    assert!(h.advance(999).is_empty());
    assert_eq!(h.advance(1).len(), 1);
}

#[test]
fn security_drops_are_counted_and_change_nothing() {
    let mut h = Harness::new();
    let mut a = Agent::new(1, 4);
    a.send(PacketType::Join, &mut h);
    let before = h.engine.endpoints().to_vec();
    let generation = h.engine.generation();

    // Wrong key.
    let mut intruder = Agent::new(2, 100);
    let mut msg = intruder.message(PacketType::Join, &h);
    let wrong = ClusterKey::new(b"not-the-cluster-key-at-all......").unwrap();
    let bytes = wire::encode(&msg, &wrong).unwrap();
    assert!(h.send(&bytes, addr(2)).is_empty());
    // Another cluster ID (with our key, even).
    msg.header.cluster_id = CLUSTER + 1;
    let bytes = wire::encode(&msg, &key()).unwrap();
    assert!(h.send(&bytes, addr(2)).is_empty());
    // Replay of a's join, and of an older message.
    let old = a.bytes(PacketType::Heartbeat, &h);
    let newer = a.bytes(PacketType::Heartbeat, &h);
    h.send(&newer, addr(1));
    assert!(h.send(&newer, addr(1)).is_empty());
    assert!(h.send(&old, addr(1)).is_empty());
    // Truncated and oversized.
    assert!(h.send(&newer[..newer.len() - 1], addr(1)).is_empty());
    assert!(h.send(&newer[..10], addr(1)).is_empty());
    assert!(
        h.send(&vec![0u8; wire::MAX_DATAGRAM + 1], addr(1))
            .is_empty()
    );
    // Stale: captured long ago (beyond the clock skew).
    let mut late = a.message(PacketType::Heartbeat, &h);
    late.fields.timestamp_ms -= 31_000;
    assert!(
        h.send(&wire::encode(&late, &key()).unwrap(), addr(1))
            .is_empty()
    );
    // Header source differs from the datagram source.
    let spoof = a.bytes(PacketType::Leave, &h);
    assert!(h.send(&spoof, addr(2)).is_empty());
    // A router's message sent to the router.
    let mut fake = a.message(PacketType::Leave, &h);
    fake.header.packet_type = PacketType::RouterToNodes;
    fake.header.function = Function::Router;
    assert!(
        h.send(&wire::encode(&fake, &key()).unwrap(), addr(1))
            .is_empty()
    );
    // Leave from a node we do not know.
    assert!(intruder.send(PacketType::Leave, &mut h).is_empty());

    let c = h.engine.counters();
    // Wrong key, and cut by one byte (long enough, but the tag no longer matches).
    assert_eq!(c.drop_bad_tag, 2);
    assert_eq!(c.drop_wrong_cluster, 1);
    assert_eq!(c.drop_replay, 2);
    assert_eq!(c.drop_truncated, 1);
    assert_eq!(c.drop_oversized, 1);
    assert_eq!(c.drop_stale, 1);
    assert_eq!(c.drop_address_mismatch, 1);
    assert_eq!(c.drop_unexpected_type, 1);
    assert_eq!(c.drop_unknown_node, 1);
    assert_eq!(c.joins, 1);
    assert_eq!(h.engine.generation(), generation);
    assert_eq!(h.engine.endpoints(), before.as_slice());
}

#[test]
fn unknown_services_are_ignored_and_logged_once() {
    let mut h = Harness::new();
    let mut a = Agent::new(1, 1);
    a.services.push(ServiceOffer {
        name: "smtp".into(),
        protocol: Protocol::Tcp,
        port: 25,
        health: Health::Up,
    });
    // Our dns is UDP: a TCP dns is not ours either.
    a.services.push(ServiceOffer {
        name: "dns".into(),
        protocol: Protocol::Tcp,
        port: 53,
        health: Health::Up,
    });
    a.send(PacketType::Join, &mut h);
    for _ in 0..5 {
        h.advance(1000);
        a.send(PacketType::Heartbeat, &mut h);
    }
    assert_eq!(h.engine.counters().unknown_services, 2);
    let services: Vec<_> = h
        .engine
        .endpoints()
        .iter()
        .map(|e| e.service.as_str())
        .collect();
    assert_eq!(services, ["http"]);
}

#[test]
fn duplicate_address_keeps_the_live_node() {
    let mut h = Harness::new();
    let mut first = Agent::new(1, 4);
    let mut second = Agent::new(1, 9);
    second.instance = 0x9999;
    first.send(PacketType::Join, &mut h);
    for _ in 0..3 {
        assert!(second.send(PacketType::Join, &mut h).is_empty());
    }
    assert_eq!(h.engine.counters().drop_duplicate_address, 3);
    assert_eq!(h.engine.endpoints()[0].capacity, 4);
    // Once the first falls silent, the address goes to the second.
    h.advance(3001);
    assert_eq!(h.engine.endpoints()[0].state, NodeState::Down);
    assert_eq!(second.send(PacketType::Join, &mut h).len(), 2);
    assert_eq!(h.engine.endpoints()[0].capacity, 9);
    assert_eq!(h.engine.endpoints()[0].state, NodeState::Active);
    // Now the first one's messages are the duplicates.
    assert!(first.send(PacketType::Heartbeat, &mut h).is_empty());
    assert_eq!(h.engine.counters().drop_duplicate_address, 4);
}

#[test]
fn join_flood_is_budgeted_before_any_hmac() {
    let mut h = Harness::with(|s| s.joins_per_second = 10);
    // 200 joins from 200 addresses in one instant: 10 get through.
    let wrong = ClusterKey::new(b"flooder-without-the-right-key!!!").unwrap();
    for i in 0..200u32 {
        let mut a = Agent::new(0, 1);
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 3, 0)) + i);
        let mut m = a.message(PacketType::Join, &h);
        m.header.source = ip;
        let bytes = wire::encode(&m, &wrong).unwrap();
        h.send(&bytes, SocketAddrV4::new(ip, PORT));
    }
    let c = h.engine.counters();
    assert_eq!(c.drop_join_rate_limited, 190);
    // The 10 that were let through cost an HMAC each and failed it.
    assert_eq!(c.drop_bad_tag, 10);
    // Heartbeats of a live node are not budgeted; a real join gets through after a refill.
    h.advance(100);
    let mut a = Agent::new(1, 1);
    assert_eq!(a.send(PacketType::Join, &mut h).len(), 2);
    for _ in 0..50 {
        a.send(PacketType::Heartbeat, &mut h);
    }
    assert_eq!(h.engine.counters().drop_join_rate_limited, 190);
    assert_eq!(h.engine.counters().accepted, 51);
}

#[test]
fn table_is_bounded() {
    let mut h = Harness::with(|s| s.max_nodes = 2);
    for n in 1..=3 {
        Agent::new(n, 1).send(PacketType::Join, &mut h);
    }
    assert_eq!(h.engine.counters().drop_table_full, 1);
    assert_eq!(h.engine.endpoints().len(), 2);
}

#[test]
fn unhealthy_service_gets_no_tokens() {
    let mut h = Harness::new();
    let mut a = Agent::new(1, 1);
    let mut b = Agent::new(2, 1);
    a.send(PacketType::Join, &mut h);
    b.send(PacketType::Join, &mut h);
    b.services[0].health = Health::Down;
    b.send(PacketType::Heartbeat, &mut h);
    assert_eq!(
        h.tokens("http"),
        [
            (node_ip(1), NodeState::Active, 1000),
            (node_ip(2), NodeState::Active, 0)
        ]
    );
    assert_eq!(h.engine.endpoints()[1].health, Health::Down);
}

#[test]
fn generation_and_applied_state() {
    let mut h = Harness::new();
    let mut a = Agent::new(1, 1);
    assert_eq!(h.engine.generation(), 0);
    a.send(PacketType::Join, &mut h);
    assert_eq!(h.engine.generation(), 1);
    assert_eq!(h.engine.endpoints()[0].applied, None);
    h.engine.mark_applied();
    assert_eq!(
        h.engine.endpoints()[0].applied,
        Some((NodeState::Active, 1000))
    );
    // Load reports alone do not move the generation.
    a.load = 400;
    h.advance(1000);
    a.send(PacketType::Heartbeat, &mut h);
    assert_eq!(h.engine.generation(), 1);
    assert_eq!(h.engine.endpoints()[0].load_permille, 120, "smoothed");
    a.send(PacketType::Leave, &mut h);
    assert_eq!(h.engine.generation(), 2);
    let e = &h.engine.endpoints()[0];
    assert_eq!(
        (e.state, e.applied),
        (NodeState::Draining, Some((NodeState::Active, 1000)))
    );
}

#[test]
fn settings_are_validated() {
    let mut s = RouterSettings::new(CLUSTER, ROUTER, Vec::new());
    s.forget_after = Duration::from_secs(10);
    let clock = Clock::system();
    let err = RouterEngine::new(s.clone(), key(), 1, clock).err().unwrap();
    assert!(err.contains("forget_after"), "{err}");
    s.forget_after = Duration::from_secs(300);
    s.dead_after = 0;
    assert!(RouterEngine::new(s, key(), 1, clock).is_err());
}
