//! Owned VIPs (docs/scale-out.md, "Owned VIPs"), on the scale-out testbed with BIRD
//! really running: a VIP of `[[bgp.owned_vip]]` is announced as primary by its owner
//! alone and as backup by every other instance, so the front router sends it to the
//! owner only, and to the backups (which hold its flows) once the owner withdraws.
//!
//! Needs root: run with `cargo xtask test` (or `cargo test -- --ignored --test-threads=1`).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::thread::sleep;
use std::time::Duration;

use lb_integration::scaleout_cluster;
use lb_testbed::scaleout::{
    OWNED_VIP, OWNED_VIP_OWNER, PeersOptions, ScaleOut, Side, TCP_ECHO_PORT,
};
use lb_testbed::workload::Chatter;

/// BGP sessions with BFD come up within a few seconds (connect delay 1 s).
const CONVERGE: Duration = Duration::from_secs(20);
const MESSAGE_INTERVAL: Duration = Duration::from_millis(100);
/// The 1 s after convergence, plus a message interval and the convergence.
const MAX_GAP: Duration = Duration::from_millis(1500);

fn owned_prefix() -> String {
    format!("{OWNED_VIP}/32")
}

fn front_hops(testbed: &ScaleOut) -> BTreeSet<Ipv4Addr> {
    testbed
        .router_next_hops(Side::Front, &owned_prefix())
        .expect("the front router's route of the owned VIP")
}

#[test]
#[ignore = "needs root (network namespaces, XDP, BIRD)"]
fn an_owned_vip_goes_to_its_owner_alone_and_to_the_backups_when_it_drains() {
    let options = PeersOptions {
        announce: true,
        tcp_established_s: 60,
    };
    let mut testbed = scaleout_cluster(options, CONVERGE);
    // The owner's path is the shortest: the front router uses it alone, where the shared
    // VIP goes to all three.
    testbed
        .wait_next_hops(
            Side::Front,
            &owned_prefix(),
            &ScaleOut::front_hops(&[OWNED_VIP_OWNER]),
            CONVERGE,
        )
        .expect("the owned VIP via its owner only");
    for i in 1..=3 {
        let vips = testbed.lb_json(i, "vips").expect("lb vips --json");
        let row = &vips[0];
        assert_eq!(row["vip"], OWNED_VIP.to_string(), "{vips}");
        assert_eq!(row["owner"], OWNED_VIP_OWNER, "{vips}");
        let mode = if i == OWNED_VIP_OWNER {
            "normal"
        } else {
            "backup"
        };
        assert_eq!(row["mode"], mode, "instance {i}: {vips}");
    }

    let chatter = Chatter::start(
        &testbed.client_ns(),
        SocketAddrV4::new(OWNED_VIP, TCP_ECHO_PORT),
        40,
        MESSAGE_INTERVAL,
    )
    .expect("open the long-lived connections to the owned VIP");
    sleep(Duration::from_secs(2));
    chatter.new_window();
    // Every connection is the owner's, and its peers hold it.
    for i in 2..=3 {
        let flows = testbed.lb_json(i, "flows").expect("lb flows --json");
        let held = flows
            .as_array()
            .expect("rows")
            .iter()
            .filter(|row| row["vip"] == format!("{OWNED_VIP}:{TCP_ECHO_PORT}"))
            .filter(|row| row["owner"] == OWNED_VIP_OWNER)
            .count();
        assert_eq!(
            held, 40,
            "instance {i} holds the owner's connections: {flows}"
        );
    }

    // The owner drains: its primary goes, the backups' routes carry the VIP (ECMP).
    testbed
        .lb_cli(OWNED_VIP_OWNER, &["drain"])
        .expect("lb drain");
    let took = testbed
        .wait_next_hops(
            Side::Front,
            &owned_prefix(),
            &ScaleOut::front_hops(&[2, 3]),
            Duration::from_secs(10),
        )
        .expect("the owned VIP via the backups");
    println!("owned VIP on the backups {took:?} after the drain");
    sleep(Duration::from_secs(3));
    let report = chatter.report();
    println!(
        "{} connections, {} broken, {} stalled, max gap {:?}",
        report.connections,
        report.broken.len(),
        report.stalled,
        report.max_gap
    );
    assert!(report.broken.is_empty(), "broken: {:?}", report.broken);
    assert!(
        report.max_gap <= MAX_GAP,
        "a connection went {:?} without an echo",
        report.max_gap
    );
    // The owner stops: nothing changes for the backups' route.
    testbed.stop_lb(OWNED_VIP_OWNER).expect("stop the owner");
    testbed.stop_bird(OWNED_VIP_OWNER).expect("stop its BIRD");
    sleep(Duration::from_secs(1));
    assert_eq!(front_hops(&testbed), ScaleOut::front_hops(&[2, 3]));
    let report = chatter.stop();
    assert!(report.broken.is_empty(), "broken: {:?}", report.broken);
}
