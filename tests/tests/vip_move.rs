//! Moving an owned VIP between instances (docs/scale-out.md, "Moving a VIP") on the
//! scale-out testbed with BIRD really running: `lb vip move` hands the VIP and its flows
//! to the target, the routes flip, and long-lived connections on the VIP go on through
//! every move, there and back. Bad requests are refused and change nothing.
//!
//! Needs root: run with `cargo xtask test` (or `cargo test -- --ignored --test-threads=1`).

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::thread::sleep;
use std::time::{Duration, Instant};

use lb_integration::scaleout_cluster;
use lb_testbed::UDP_PORT;
use lb_testbed::scaleout::{
    CLIENT_IP, DNAT_ECHO_PORT, OWNED_VIP, OWNED_VIP_OWNER, PROXY_ECHO_PORT, PeersOptions, ScaleOut,
    Side, TCP_ECHO_PORT,
};
use lb_testbed::workload::{Chatter, NewConnections, UdpFlows};

const CONVERGE: Duration = Duration::from_secs(20);
const MESSAGE_INTERVAL: Duration = Duration::from_millis(100);
/// The 1 s, plus a message interval and the routers' convergence.
const MAX_GAP: Duration = Duration::from_millis(1500);
/// A move, offer to the target's `normal`, takes the stream, BIRD twice and the drain
/// window (2 s).
const MOVE_LIMIT: Duration = Duration::from_secs(15);

fn cluster() -> ScaleOut {
    let options = PeersOptions {
        announce: true,
        tcp_established_s: 60,
    };
    let testbed = scaleout_cluster(options, CONVERGE);
    wait_owner(&testbed, OWNED_VIP_OWNER, CONVERGE);
    testbed
}

/// The mode of the owned VIP on instance `i`, and its owner there.
fn mode(testbed: &ScaleOut, i: usize) -> (String, u64) {
    let vips = testbed.lb_json(i, "vips").expect("lb vips --json");
    (
        vips[0]["mode"].as_str().unwrap_or_default().to_string(),
        vips[0]["owner"].as_u64().unwrap_or_default(),
    )
}

/// Until `owner` has the VIP `normal`, every other instance `backup` of it, and the front
/// router sends it to `owner` alone.
fn wait_owner(testbed: &ScaleOut, owner: usize, limit: Duration) -> Duration {
    let started = Instant::now();
    testbed
        .wait_next_hops(
            Side::Front,
            &format!("{OWNED_VIP}/32"),
            &ScaleOut::front_hops(&[owner]),
            limit,
        )
        .expect("the owned VIP via its owner alone");
    loop {
        let modes: Vec<(String, u64)> = (1..=3).map(|i| mode(testbed, i)).collect();
        let settled = modes.iter().enumerate().all(|(n, (mode, at))| {
            *at == owner as u64 && mode == if n + 1 == owner { "normal" } else { "backup" }
        });
        if settled {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "the move to {owner} did not settle: {modes:?}"
        );
        sleep(Duration::from_millis(50));
    }
}

/// The SYN-proxied connections on the owned VIP as instance `i` holds them: client →
/// (SEQ, DELTA, TIMESTAMP).
fn proxied(testbed: &ScaleOut, i: usize) -> BTreeMap<String, (u64, u64, u64)> {
    let flows = testbed.lb_json(i, "flows").expect("lb flows --json");
    flows
        .as_array()
        .expect("rows")
        .iter()
        .filter(|row| row["vip"] == format!("{OWNED_VIP}:{PROXY_ECHO_PORT}"))
        .filter_map(|row| {
            let proxy = &row["proxy"];
            Some((
                row["client"].as_str()?.to_string(),
                (
                    proxy["seq"].as_u64()?,
                    proxy["delta"].as_u64()?,
                    proxy["timestamp"].as_u64()?,
                ),
            ))
        })
        .collect()
}

#[test]
#[ignore = "needs root (network namespaces, XDP, BIRD)"]
fn a_vip_moves_there_and_back_five_times_with_no_connection_lost() {
    let testbed = cluster();
    let client = testbed.client_ns();
    // 90 long-lived connections of three kinds, 10 UDP flows, new connections throughout.
    let chatters: Vec<(u16, Chatter)> = [TCP_ECHO_PORT, DNAT_ECHO_PORT, PROXY_ECHO_PORT]
        .into_iter()
        .map(|port| {
            let chatter = Chatter::start(
                &client,
                SocketAddrV4::new(OWNED_VIP, port),
                30,
                MESSAGE_INTERVAL,
            )
            .unwrap_or_else(|e| panic!("connections to port {port}: {e:#}"));
            (port, chatter)
        })
        .collect();
    let udp = UdpFlows::start(
        &client,
        CLIENT_IP,
        43000,
        10,
        SocketAddrV4::new(OWNED_VIP, UDP_PORT),
        Duration::from_millis(200),
    )
    .expect("start the UDP flows");
    // The SYN proxy holds early data back while it opens 30 server sides at once.
    sleep(Duration::from_secs(5));
    let curl = NewConnections::start(
        &client,
        &format!("http://{OWNED_VIP}/"),
        Duration::from_millis(100),
    )
    .expect("start the new connections");
    for (_, chatter) in &chatters {
        chatter.new_window();
    }
    let _ = udp.take();
    let before = proxied(&testbed, OWNED_VIP_OWNER);
    assert_eq!(before.len(), 30, "the proxied connections at the owner");
    assert!(
        before.values().all(|&(_, delta, _)| delta != 0),
        "SYN-proxied connections have nonzero deltas: {before:?}"
    );
    let (a, b) = (OWNED_VIP_OWNER, 2);
    for round in 0..5 {
        for (from, to) in [(a, b), (b, a)] {
            let started = Instant::now();
            testbed
                .lb_cli(
                    from,
                    &[
                        "vip",
                        "move",
                        &OWNED_VIP.to_string(),
                        "--to",
                        &to.to_string(),
                    ],
                )
                .unwrap_or_else(|e| panic!("round {round}: lb vip move to {to}: {e:#}"));
            wait_owner(&testbed, to, MOVE_LIMIT);
            println!("round {round}: {from} → {to} in {:?}", started.elapsed());
            if round == 0 && to == b {
                assert_eq!(
                    proxied(&testbed, b),
                    before,
                    "the target holds the same SEQ, DELTA and TIMESTAMP"
                );
            }
        }
    }
    sleep(Duration::from_secs(1));
    for (port, chatter) in chatters {
        let report = chatter.stop();
        println!(
            "port {port}: {} connections, {} broken, {} stalled, max gap {:?}",
            report.connections,
            report.broken.len(),
            report.stalled,
            report.max_gap
        );
        assert!(
            report.broken.is_empty(),
            "port {port}: broken {:?}",
            report.broken
        );
        assert!(
            report.max_gap <= MAX_GAP,
            "port {port}: a connection went {:?} without an echo",
            report.max_gap
        );
    }
    let curl = curl.stop();
    println!(
        "new connections: {} of {} ({:?})",
        curl.succeeded,
        curl.attempts(),
        curl.failures
    );
    assert!(
        curl.attempts() >= 100 && curl.success_ratio() >= 0.999,
        "{:?}",
        curl.failures
    );
    let udp = udp.stop();
    println!(
        "UDP: {} of {} answered, {} wrong",
        udp.answered, udp.sent, udp.wrong
    );
    assert_eq!(udp.wrong, 0);
    assert!(
        udp.answered * 100 >= udp.sent * 95,
        "UDP {} of {}",
        udp.answered,
        udp.sent
    );
}

#[test]
#[ignore = "needs root (network namespaces, XDP, BIRD)"]
fn a_move_that_cannot_be_done_is_refused_and_changes_nothing() {
    let testbed = cluster();
    let vip = OWNED_VIP.to_string();
    for (at, args, reason) in [
        (
            1,
            vec!["vip", "move", &vip, "--to", "9"],
            "not one of this instance's peers",
        ),
        (
            1,
            vec!["vip", "move", &vip, "--to", "1"],
            "the target is this instance",
        ),
        (
            2,
            vec!["vip", "move", &vip, "--to", "3"],
            "does not own the VIP",
        ),
        (
            1,
            vec!["vip", "move", "198.18.1.10", "--to", "2"],
            "not an owned VIP",
        ),
    ] {
        let error = testbed.lb_cli(at, &args).expect_err("the move is refused");
        assert!(format!("{error:#}").contains(reason), "{error:#}");
    }
    // The same VIP twice at once: the second is refused.
    testbed
        .lb_cli(1, &["vip", "move", &vip, "--to", "2"])
        .expect("the first move starts");
    let error = testbed
        .lb_cli(1, &["vip", "move", &vip, "--to", "3"])
        .expect_err("a second move of the VIP is refused");
    assert!(
        format!("{error:#}").contains("already running"),
        "{error:#}"
    );
    wait_owner(&testbed, 2, MOVE_LIMIT);
}

#[test]
#[ignore = "needs root (network namespaces, XDP, BIRD)"]
fn drain_instance_moves_its_vips_away_and_then_it_can_stop() {
    let mut testbed = cluster();
    let owned = Chatter::start(
        &testbed.client_ns(),
        SocketAddrV4::new(OWNED_VIP, TCP_ECHO_PORT),
        30,
        MESSAGE_INTERVAL,
    )
    .expect("open the long-lived connections to the owned VIP");
    let shared = Chatter::start(
        &testbed.client_ns(),
        SocketAddrV4::new(lb_testbed::VIP, TCP_ECHO_PORT),
        30,
        MESSAGE_INTERVAL,
    )
    .expect("open the long-lived connections to the shared VIP");
    sleep(Duration::from_secs(2));
    owned.new_window();
    shared.new_window();
    let out = testbed
        .lb_cli(OWNED_VIP_OWNER, &["drain-instance"])
        .expect("lb drain-instance");
    println!("{out}");
    // Its VIP is a peer's now, and it announces nothing: the shared VIP goes to the
    // other two.
    wait_owner(&testbed, 2, MOVE_LIMIT);
    testbed
        .wait_next_hops(
            Side::Front,
            &format!("{}/32", lb_testbed::VIP),
            &ScaleOut::front_hops(&[2, 3]),
            CONVERGE,
        )
        .expect("the shared VIP via the other two");
    sleep(Duration::from_secs(1));
    testbed
        .stop_lb(OWNED_VIP_OWNER)
        .expect("stop the drained instance");
    testbed.stop_bird(OWNED_VIP_OWNER).expect("stop its BIRD");
    sleep(Duration::from_secs(2));
    for (name, chatter) in [("owned", owned), ("shared", shared)] {
        let report = chatter.stop();
        println!(
            "{name}: {} connections, {} broken, max gap {:?}",
            report.connections,
            report.broken.len(),
            report.max_gap
        );
        assert!(
            report.broken.is_empty(),
            "{name}: broken {:?}",
            report.broken
        );
        assert!(
            report.max_gap <= MAX_GAP,
            "{name}: gap {:?}",
            report.max_gap
        );
    }
}

/// After a failure mid-move: the VIP stays announced and never has two primaries. With
/// every instance's BIRD up, the front router's best paths are the one primary, or all
/// three backups; two would be two primaries.
fn assert_one_primary_or_backups(testbed: &ScaleOut, what: &str) -> usize {
    let hops = testbed
        .router_next_hops(Side::Front, &format!("{OWNED_VIP}/32"))
        .expect("the front router's route of the owned VIP");
    assert!(
        hops.len() == 1 || hops.len() == 3,
        "{what}: the owned VIP via {hops:?}"
    );
    hops.len()
}

/// What fails mid-move.
#[derive(Clone, Copy, Debug)]
enum Failure {
    /// `kill -9` of this instance's controller (its BIRD and data path stay).
    Kill(usize),
    /// The peer protocol between the source and the target is cut.
    Partition,
}

/// Injects `failure` once the move from 1 to 2 is under way (the target in transition);
/// the VIP's routes and connections are judged for a few seconds after.
fn fail_mid_move(failure: Failure) {
    let mut testbed = cluster();
    let chatter = Chatter::start(
        &testbed.client_ns(),
        SocketAddrV4::new(OWNED_VIP, TCP_ECHO_PORT),
        30,
        MESSAGE_INTERVAL,
    )
    .expect("open the long-lived connections to the owned VIP");
    sleep(Duration::from_secs(2));
    chatter.new_window();
    testbed
        .lb_cli(
            OWNED_VIP_OWNER,
            &["vip", "move", &OWNED_VIP.to_string(), "--to", "2"],
        )
        .expect("the move starts");
    // Mid-move: the target has taken the offer (transition), the flows are streaming.
    let deadline = Instant::now() + Duration::from_secs(3);
    while mode(&testbed, 2).0 != "transition" {
        assert!(
            Instant::now() < deadline,
            "the target never went transition"
        );
        sleep(Duration::from_millis(5));
    }
    match failure {
        Failure::Kill(victim) => testbed.kill_lb(victim).expect("kill -9 lb"),
        Failure::Partition => testbed
            .partition_peers(2, OWNED_VIP_OWNER)
            .expect("cut the peer protocol"),
    }
    // The survivor notices within dead_after (1 s) and settles; sample meanwhile.
    let started = Instant::now();
    let mut seen = Vec::new();
    while started.elapsed() < Duration::from_secs(5) {
        seen.push(assert_one_primary_or_backups(&testbed, "after the kill"));
        sleep(Duration::from_millis(100));
    }
    let tables: Vec<String> = (1..=2)
        .map(|i| {
            testbed
                .lb_json(i, "vips")
                .map_or_else(|e| format!("{e:#}"), |v| v.to_string())
        })
        .collect();
    println!("{failure:?}: front router hop counts {seen:?}; tables {tables:?}");
    let report = chatter.stop();
    println!(
        "{} connections, {} broken, max gap {:?}",
        report.connections,
        report.broken.len(),
        report.max_gap
    );
    assert!(report.broken.is_empty(), "broken: {:?}", report.broken);
    assert!(report.max_gap <= MAX_GAP, "gap {:?}", report.max_gap);
}

#[test]
#[ignore = "needs root (network namespaces, XDP, BIRD)"]
fn a_source_killed_mid_move_leaves_one_primary_or_the_backups() {
    fail_mid_move(Failure::Kill(OWNED_VIP_OWNER));
}

#[test]
#[ignore = "needs root (network namespaces, XDP, BIRD)"]
fn a_target_killed_mid_move_leaves_one_primary_or_the_backups() {
    fail_mid_move(Failure::Kill(2));
}

#[test]
#[ignore = "needs root (network namespaces, XDP, BIRD)"]
fn a_partition_mid_move_leaves_one_primary_or_the_backups() {
    fail_mid_move(Failure::Partition);
}

#[test]
#[ignore = "needs root (network namespaces, XDP, BIRD)"]
fn an_owner_by_move_restarted_with_the_config_gives_the_vip_back_to_its_configured_owner() {
    let mut testbed = cluster();
    let chatter = Chatter::start(
        &testbed.client_ns(),
        SocketAddrV4::new(OWNED_VIP, TCP_ECHO_PORT),
        30,
        MESSAGE_INTERVAL,
    )
    .expect("open the long-lived connections to the owned VIP");
    sleep(Duration::from_secs(2));
    testbed
        .lb_cli(
            OWNED_VIP_OWNER,
            &["vip", "move", &OWNED_VIP.to_string(), "--to", "2"],
        )
        .expect("move to 2");
    wait_owner(&testbed, 2, MOVE_LIMIT);
    chatter.new_window();
    // 2's controller restarts with the config's placement (owner 1, epoch 0): it is a
    // backup, claims nothing, and 1 takes the VIP back at a new epoch.
    testbed.kill_lb(2).expect("kill -9 lb on 2");
    testbed.start_lb(2).expect("restart lb on 2");
    let took = wait_owner(&testbed, OWNED_VIP_OWNER, Duration::from_secs(20));
    println!("back at the configured owner {took:?} after the restart");
    let vips = testbed.lb_json(2, "vips").expect("lb vips on 2");
    assert_eq!(vips[0]["epoch"], 2, "{vips}");
    let report = chatter.stop();
    println!(
        "{} connections, {} broken, max gap {:?}",
        report.connections,
        report.broken.len(),
        report.max_gap
    );
    assert!(report.broken.is_empty(), "broken: {:?}", report.broken);
}
