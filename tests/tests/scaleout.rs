//! Scale-out with flow sharing (docs/scale-out.md), on the testbed of the real shape:
//! BIRD on both routers and every instance, kernel ECMP, long-lived TCP connections
//! (full-NAT, DNAT, SYN-proxied) checking every echo, a stream of new curl connections
//! and UDP request flows, while instances are added, drained, crash, are lost and come
//! back. And the same first step with announcements off, which must break connections.
//! Every wait is bounded.
//!
//! Needs root: run with `cargo xtask test` (or `cargo test -- --ignored --test-threads=1`).

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::thread::sleep;
use std::time::{Duration, Instant};

use lb_integration::scaleout_cluster;
use lb_testbed::scaleout::{
    CLIENT_IP, DNAT_ECHO_PORT, PROXY_ECHO_PORT, PeersOptions, ScaleOut, Side, TCP_ECHO_PORT,
};
use lb_testbed::workload::{Chatter, ChatterReport, NewConnections, UdpFlows};
use lb_testbed::{UDP_PORT, VIP};

const VIP_PREFIX: &str = "198.18.1.10/32";
/// BGP sessions with BFD come up within a few seconds (connect delay 1 s).
const CONVERGE: Duration = Duration::from_secs(20);
/// Each long-lived connection sends a numbered message this often.
const MESSAGE_INTERVAL: Duration = Duration::from_millis(100);
/// Traffic keeps going this long after each step before it is judged.
const SETTLE: Duration = Duration::from_secs(3);
/// Established timeout of the instances: the long-lived connections outlive it before
/// the first step, so every copy a peer holds of them is older than it.
const ESTABLISHED_S: u64 = 8;
/// Longest silence a long-lived connection may have in a step (the 1 s after
/// convergence, plus one message interval and the convergence itself, ~0.3 s).
const MAX_GAP: Duration = Duration::from_millis(1500);

/// The long-lived connections of every kind, by service port.
struct Load {
    chatters: Vec<(u16, Chatter)>,
    curl: NewConnections,
    udp: UdpFlows,
}

/// The long-lived connections of the scenario: full-NAT, DNAT, SYN-proxied.
const LONG_LIVED: [(u16, usize); 3] = [
    (TCP_ECHO_PORT, 80),
    (DNAT_ECHO_PORT, 70),
    (PROXY_ECHO_PORT, 50),
];

impl Load {
    fn start(testbed: &ScaleOut, long_lived: &[(u16, usize)]) -> Load {
        let client = testbed.client_ns();
        let chatters = long_lived
            .iter()
            .map(|&(port, count)| {
                let chatter = Chatter::start(
                    &client,
                    SocketAddrV4::new(VIP, port),
                    count,
                    MESSAGE_INTERVAL,
                )
                .unwrap_or_else(|e| {
                    panic!("opening the long-lived connections to port {port}: {e:#}")
                });
                (port, chatter)
            })
            .collect();
        let curl = NewConnections::start(
            &client,
            &format!("http://{VIP}/"),
            Duration::from_millis(50),
        )
        .expect("start the curl stream");
        let udp = UdpFlows::start(
            &client,
            CLIENT_IP,
            42000,
            16,
            SocketAddrV4::new(VIP, UDP_PORT),
            Duration::from_millis(200),
        )
        .expect("start the UDP flows");
        Load {
            chatters,
            curl,
            udp,
        }
    }

    fn reports(&self) -> Vec<(u16, ChatterReport)> {
        self.chatters
            .iter()
            .map(|(port, c)| (*port, c.report()))
            .collect()
    }

    fn new_window(&self) {
        for (_, chatter) in &self.chatters {
            chatter.new_window();
        }
        let _ = self.curl.take();
        let _ = self.udp.take();
    }
}

/// Who forwards each long-lived connection, as instance `i`'s `lb flows` says:
/// (service port, client port) → (server, SNAT, owner).
fn long_lived_flows(testbed: &ScaleOut, i: usize) -> BTreeMap<(u16, u16), (String, String, u64)> {
    let flows = testbed.lb_json(i, "flows").expect("lb flows --json");
    flows
        .as_array()
        .expect("a list of flows")
        .iter()
        .filter_map(|row| {
            let client: SocketAddrV4 = row["client"].as_str()?.parse().ok()?;
            let vip: SocketAddrV4 = row["vip"].as_str()?.parse().ok()?;
            let port = vip.port();
            if *client.ip() != CLIENT_IP
                || ![TCP_ECHO_PORT, DNAT_ECHO_PORT, PROXY_ECHO_PORT].contains(&port)
            {
                return None;
            }
            Some((
                (port, client.port()),
                (
                    row["server"].as_str()?.to_string(),
                    row["snat"].as_str()?.to_string(),
                    row["owner"].as_u64()?,
                ),
            ))
        })
        .collect()
}

/// After a step: nothing broken, no long silence, new connections and UDP answered,
/// and every running instance agrees on the long-lived connections' flows.
fn judge(step: &str, testbed: &ScaleOut, load: &Load, running: &[usize]) {
    sleep(SETTLE);
    for &i in running {
        let peers = testbed
            .lb_json(i, "peers")
            .map(|p| p.to_string())
            .unwrap_or_else(|e| format!("{e:#}"));
        let flows = long_lived_flows(testbed, i).len();
        println!("{step}: instance {i}: {flows} long-lived flows; peers: {peers}");
        if let Ok(stats) = testbed.lb_json(i, "stats") {
            let counters: Vec<String> = stats["counters"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            println!("{step}: instance {i}: counters {}", counters.join(" "));
        }
    }
    for (port, report) in load.reports() {
        println!(
            "{step}: port {port}: {} connections, {} broken, {} stalled, max gap {:?}, fewest echoes {}",
            report.connections,
            report.broken.len(),
            report.stalled,
            report.max_gap,
            report.fewest_echoes
        );
        assert!(
            report.broken.is_empty(),
            "{step}: broken connections to port {port}: {:?}",
            report.broken
        );
        assert!(
            report.max_gap <= MAX_GAP,
            "{step}: a connection to port {port} went {:?} without an echo ({} stalled)",
            report.max_gap,
            report.stalled
        );
    }
    let curl = load.curl.take();
    println!(
        "{step}: new connections: {} of {} succeeded; failures: {:?}",
        curl.succeeded,
        curl.attempts(),
        curl.failures
    );
    assert!(
        curl.attempts() >= 20,
        "{step}: too few new connections were tried"
    );
    assert!(
        curl.success_ratio() >= 0.999,
        "{step}: new connections failed: {:?}",
        curl.failures
    );
    let udp = load.udp.take();
    println!(
        "{step}: UDP: {} of {} requests answered, {} wrong",
        udp.answered, udp.sent, udp.wrong
    );
    assert_eq!(udp.wrong, 0, "{step}: misrouted UDP replies");
    // A lost instance's share of the datagrams sent before BFD takes it out (~0.3 s, plus
    // the routers' reaction) is lost: UDP has no retransmission. Over a window of ~3.5 s
    // with a third of the flows on it, that is about 5 %.
    let floor = if step == "lost" { 90 } else { 95 };
    assert!(
        udp.answered * 100 >= udp.sent * floor,
        "{step}: UDP answered {} of {} (at least {floor} % expected)",
        udp.answered,
        udp.sent
    );
    let expected: usize = load.reports().iter().map(|(_, r)| r.connections).sum();
    let tables: Vec<_> = running
        .iter()
        .map(|&i| (i, long_lived_flows(testbed, i)))
        .collect();
    let (first, reference) = &tables[0];
    assert_eq!(
        reference.len(),
        expected,
        "{step}: instance {first} holds {} of the {expected} long-lived connections",
        reference.len()
    );
    for (i, table) in &tables[1..] {
        let differ: Vec<_> = reference
            .iter()
            .filter(|(key, value)| table.get(key) != Some(value))
            .map(|(key, value)| (key, value, table.get(key)))
            .take(5)
            .collect();
        assert!(
            differ.is_empty(),
            "{step}: instance {i} disagrees with instance {first} on (key, theirs, its) {differ:?}"
        );
    }
    load.new_window();
}

fn wait_front(testbed: &ScaleOut, instances: &[usize]) -> Duration {
    testbed
        .wait_next_hops(
            Side::Front,
            VIP_PREFIX,
            &ScaleOut::front_hops(instances),
            CONVERGE,
        )
        .expect("the front router's next hops for the VIP")
}

/// `instances` instances with `lb` on each, synced and announcing.
fn cluster(announce: bool) -> ScaleOut {
    let options = PeersOptions {
        announce,
        tcp_established_s: ESTABLISHED_S,
    };
    scaleout_cluster(options, CONVERGE)
}

fn peers_ready(testbed: &ScaleOut, i: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let peers = testbed.lb_json(i, "peers").expect("lb peers --json");
        if peers["ready"] == true {
            return;
        }
        assert!(Instant::now() < deadline, "instance {i} not ready: {peers}");
        sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "needs root (network namespaces, XDP, BIRD)"]
fn no_connection_breaks_while_instances_come_go_crash_and_are_lost() {
    let mut testbed = cluster(true);
    let load = Load::start(&testbed, &LONG_LIVED);
    // Older than the established timeout everywhere before anything moves. The
    // windows start now: the SYN proxy's opening of 50 server sides at once can hold
    // a first message back for seconds (its early data is dropped until the server
    // side is open), which is not what the steps measure.
    sleep(Duration::from_secs(ESTABLISHED_S + 2));
    load.new_window();
    judge("start", &testbed, &load, &[1, 2, 3]);

    // 1. A 4th instance: it syncs before it announces, then takes its ECMP share.
    let started = Instant::now();
    let fourth = testbed.add_instance().expect("add a 4th instance");
    testbed
        .start_lb(fourth)
        .expect("start lb on the 4th instance");
    peers_ready(&testbed, fourth, Duration::from_secs(10));
    let converged = wait_front(&testbed, &[1, 2, 3, 4]);
    println!(
        "add: the front router spreads over 4 after {:?} ({converged:?} polling)",
        started.elapsed()
    );
    judge("add", &testbed, &load, &[1, 2, 3, 4]);
    // It held every flow it was sent before it announced: none of its share's packets
    // found no flow (a mid-connection ACK of a SYN-proxied echo would even pass as a
    // cookie there and open a second server connection).
    let joiner = testbed
        .lb_json(fourth, "stats")
        .expect("lb stats on the 4th");
    assert_eq!(
        joiner["counters"]["drop_no_flow"].as_u64(),
        Some(0),
        "add: the 4th instance took traffic before it held its peers' flows: {}",
        joiner["counters"]
    );

    // 2. Drain instance 2: routes withdrawn first, then it stops.
    let started = Instant::now();
    testbed.lb_cli(2, &["drain"]).expect("lb drain");
    wait_front(&testbed, &[1, 3, 4]);
    println!("drain: withdrawn after {:?}", started.elapsed());
    sleep(Duration::from_secs(1));
    testbed.stop_lb(2).expect("stop the drained instance");
    testbed
        .stop_bird(2)
        .expect("stop the drained instance's BIRD");
    judge("drain", &testbed, &load, &[1, 3, 4]);

    // 3. kill -9 of instance 3's controller: the data path and the routes stay.
    testbed.kill_lb(3).expect("kill -9 lb");
    sleep(Duration::from_secs(2));
    assert_eq!(
        testbed.router_next_hops(Side::Front, VIP_PREFIX).unwrap(),
        ScaleOut::front_hops(&[1, 3, 4]),
        "a controller crash changed the routes"
    );
    testbed
        .start_lb(3)
        .expect("restart lb on instance 3 (adopts its pins)");
    peers_ready(&testbed, 3, Duration::from_secs(10));
    judge("kill -9", &testbed, &load, &[1, 3, 4]);

    // 4. Instance 4 lost: BFD takes it out of both routers.
    let started = Instant::now();
    testbed.links_down(fourth).expect("links down");
    wait_front(&testbed, &[1, 3]);
    println!(
        "lost: out of the front router after {:?}",
        started.elapsed()
    );
    judge("lost", &testbed, &load, &[1, 3]);

    // 5. It comes back.
    testbed.links_up(fourth).expect("links up");
    let converged = wait_front(&testbed, &[1, 3, 4]);
    println!("back: in the front router after {converged:?}");
    judge("back", &testbed, &load, &[1, 3, 4]);
}

#[test]
#[ignore = "needs root (network namespaces, XDP, BIRD)"]
fn without_announcements_a_new_instance_breaks_connections() {
    let mut testbed = cluster(false);
    // Full-NAT only: without announcements a DNAT connection cannot even open, its
    // SYN+ACK reaching an instance that never heard of it.
    let load = Load::start(&testbed, &[(TCP_ECHO_PORT, 120)]);
    sleep(Duration::from_secs(2));
    load.new_window();
    let fourth = testbed.add_instance().expect("add a 4th instance");
    testbed
        .start_lb(fourth)
        .expect("start lb on the 4th instance");
    wait_front(&testbed, &[1, 2, 3, 4]);
    sleep(SETTLE);
    let stalled: usize = load
        .reports()
        .iter()
        .map(|(_, r)| r.stalled + r.broken.len())
        .sum();
    let total: usize = load.reports().iter().map(|(_, r)| r.connections).sum();
    println!(
        "without announcements: {stalled} of {total} long-lived connections stalled or broke after a 4th instance came"
    );
    assert!(
        stalled > 0,
        "no connection broke without announcements: the scenario cannot show what sharing does"
    );
}
