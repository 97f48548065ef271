//! Balancer instances behind ECMP routers with BIRD really running (docs/scale-out.md,
//! "Routes"): the routers learn the VIP from every ready instance, `lb drain` and a lost
//! instance take it out, a killed `lb` changes nothing. Every wait is bounded.
//!
//! Needs root: run with `cargo xtask test` (or `cargo test -- --ignored --test-threads=1`).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use lb_integration::lb_binary;
use lb_testbed::scaleout::{self, ScaleOut, Side};
use lb_testbed::{VIP, http_get};

const VIP_PREFIX: &str = "198.18.1.10/32";
/// BGP sessions with BFD come up within a few seconds (connect delay 1 s).
const CONVERGE: Duration = Duration::from_secs(20);

fn dir(prefix: &str) -> PathBuf {
    lb_binary()
        .parent()
        .unwrap()
        .join("netns-tests")
        .join(prefix)
}

/// `instances` instances with `lb` running on each, the VIP on the front router via all.
fn cluster(instances: usize) -> ScaleOut {
    let prefix = scaleout::unique_prefix();
    let mut testbed = ScaleOut::up(&prefix, &dir(&prefix), &lb_binary(), instances)
        .expect("build the scale-out testbed");
    for i in 1..=instances {
        testbed.start_lb(i).expect("start lb");
    }
    let all: Vec<usize> = (1..=instances).collect();
    testbed
        .wait_next_hops(
            Side::Front,
            VIP_PREFIX,
            &ScaleOut::front_hops(&all),
            CONVERGE,
        )
        .expect("the front router learns the VIP from every instance");
    testbed
}

/// New flows of the `web` service on instance `i`.
fn web_flows(testbed: &ScaleOut, i: usize) -> u64 {
    let stats = testbed.lb_json(i, "stats").expect("lb stats");
    stats["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "web")
        .unwrap()["new_flows"]
        .as_u64()
        .unwrap()
}

/// `count` GETs on new connections from the client to the VIP; how many succeeded.
fn gets(testbed: &ScaleOut, count: usize) -> usize {
    let client = testbed.client_ns();
    (0..count)
        .filter(|_| {
            http_get(
                &client,
                SocketAddrV4::new(VIP, 80),
                "/",
                Duration::from_secs(3),
            )
            .is_ok_and(|r| r.status == 200)
        })
        .count()
}

fn hops(instances: &[usize]) -> BTreeSet<Ipv4Addr> {
    ScaleOut::front_hops(instances)
}

#[test]
#[ignore = "needs root: network namespaces, XDP, BIRD"]
fn vip_is_learned_from_every_instance_and_traffic_spreads() {
    let testbed = cluster(3);
    // The back router: every instance's SNAT address via its owner only, and the
    // clients' prefix by ECMP over all three.
    for i in 1..=3 {
        testbed
            .wait_next_hops(
                Side::Back,
                &format!("{}/32", scaleout::snat_ip(i)),
                &ScaleOut::back_hops(&[i]),
                CONVERGE,
            )
            .unwrap();
    }
    testbed
        .wait_next_hops(
            Side::Back,
            scaleout::CLIENT_PREFIX,
            &ScaleOut::back_hops(&[1, 2, 3]),
            CONVERGE,
        )
        .unwrap();

    let before: Vec<u64> = (1..=3).map(|i| web_flows(&testbed, i)).collect();
    assert_eq!(
        gets(&testbed, 60),
        60,
        "every request through the VIP succeeds"
    );
    let per_instance: Vec<u64> = (1..=3)
        .map(|i| web_flows(&testbed, i) - before[i - 1])
        .collect();
    eprintln!("new flows per instance: {per_instance:?}");
    assert_eq!(per_instance.iter().sum::<u64>(), 60);
    assert!(
        per_instance.iter().all(|&n| n > 0),
        "ECMP spreads connections over every instance: {per_instance:?}"
    );
    let served: u64 = (1..=3).map(|n| testbed.server_stats(n).http_requests).sum();
    assert!(served >= 60);

    let status = testbed.lb_json(1, "status").unwrap();
    assert_eq!(status["bgp"]["state"], "announcing");
    assert_eq!(status["bgp"]["in_sync"], true);
    // VIP, SNAT address, return route.
    assert_eq!(status["bgp"]["routes_announced"], 3);
}
