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
        .wait_announced(&all, CONVERGE)
        .expect("the routers learn every instance's routes");
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

/// `lb drain` takes the instance's next hop out of the front router's route while new
/// connections keep succeeding over the others; the drained instance still forwards.
/// SIGTERM withdraws first too, and exits only after the withdraw delay.
#[test]
#[ignore = "needs root: network namespaces, XDP, BIRD"]
fn drain_and_sigterm_withdraw_before_the_data_path_goes() {
    let mut testbed = cluster(3);
    let started = Instant::now();
    let out = testbed.lb_cli(2, &["drain"]).expect("lb drain");
    // It answers once BIRD has withdrawn.
    assert!(
        out.starts_with("draining, 0 routes wanted, 0 announced"),
        "{out}"
    );
    let took = testbed
        .wait_next_hops(
            Side::Front,
            VIP_PREFIX,
            &hops(&[1, 3]),
            Duration::from_secs(5),
        )
        .expect("the drained instance leaves the VIP's route");
    eprintln!(
        "drain: next hop gone from the front router after {took:?} ({:?} since the request)",
        started.elapsed()
    );
    // Its SNAT address and return route go too.
    testbed
        .wait_next_hops(
            Side::Back,
            scaleout::CLIENT_PREFIX,
            &ScaleOut::back_hops(&[1, 3]),
            Duration::from_secs(5),
        )
        .unwrap();
    assert!(
        testbed
            .router_next_hops(Side::Back, "198.19.1.2/32")
            .unwrap()
            .is_empty()
    );
    let status = testbed.lb_json(2, "status").unwrap();
    assert_eq!(status["bgp"]["state"], "draining");
    assert_eq!(status["bgp"]["routes_announced"], 0);
    assert!(
        testbed
            .lb_cli(2, &["status"])
            .unwrap()
            .contains("draining, 0 routes wanted"),
        "lb status says draining"
    );

    let before = web_flows(&testbed, 2);
    assert_eq!(gets(&testbed, 30), 30, "new connections keep succeeding");
    assert_eq!(
        web_flows(&testbed, 2),
        before,
        "none reaches the drained instance"
    );

    // The drained instance still forwards what reaches it: a request sent straight over
    // its front link, answered through a static route standing in for the peers' backup
    // route of its SNAT address (docs/scale-out.md: not announced while draining).
    let (_, back_local) = scaleout::back_link(2);
    testbed
        .exec(
            &testbed.router_ns(Side::Back),
            &[
                "ip",
                "route",
                "add",
                "198.19.1.2/32",
                "via",
                &back_local.to_string(),
                "metric",
                "500",
            ],
        )
        .unwrap();
    let out = testbed
        .exec(
            &testbed.router_ns(Side::Front),
            &[
                "curl",
                "-sS",
                "--max-time",
                "5",
                "--interface",
                "l2",
                &format!("http://{VIP}/"),
            ],
        )
        .expect("the drained instance forwards");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with('s'));
    assert_eq!(web_flows(&testbed, 2), before + 1);

    // SIGTERM on instance 3: withdrawn while lb still runs, exit after the delay.
    let started = Instant::now();
    testbed.signal_lb(3, libc::SIGTERM).unwrap();
    let took = testbed
        .wait_next_hops(Side::Front, VIP_PREFIX, &hops(&[1]), Duration::from_secs(5))
        .expect("SIGTERM withdraws the VIP");
    assert!(
        testbed.lb_running(3),
        "lb still forwards while the routers move away ({took:?} after SIGTERM)"
    );
    let status = testbed.wait_lb_exit(3, Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{status}: {}", testbed.lb_log(3));
    let exited = started.elapsed();
    eprintln!("SIGTERM: withdrawn after {took:?}, exited after {exited:?}");
    assert!(
        exited >= took + Duration::from_millis(500),
        "withdraw_delay_ms = 500"
    );
    assert_eq!(gets(&testbed, 10), 10);
}

/// `kill -9` of one `lb` changes nothing in BIRD: the routes stay for seconds, the
/// pinned data path keeps forwarding, and a restarted `lb` announces the same.
#[test]
#[ignore = "needs root: network namespaces, XDP, BIRD"]
fn killed_lb_changes_no_route() {
    let mut testbed = cluster(3);
    let front = testbed.router_next_hops(Side::Front, VIP_PREFIX).unwrap();
    let snat = "198.19.1.3/32";
    let back = testbed.router_next_hops(Side::Back, snat).unwrap();
    assert_eq!(back, ScaleOut::back_hops(&[3]));
    let routes_file = testbed.dir.join("l3").join("routes.conf");
    let file = std::fs::read_to_string(&routes_file).unwrap();

    testbed.kill_lb(3).unwrap();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(
            testbed.router_next_hops(Side::Front, VIP_PREFIX).unwrap(),
            front
        );
        assert_eq!(testbed.router_next_hops(Side::Back, snat).unwrap(), back);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(std::fs::read_to_string(&routes_file).unwrap(), file);
    assert_eq!(
        gets(&testbed, 30),
        30,
        "the pinned data path keeps forwarding"
    );

    testbed.start_lb(3).expect("restart lb");
    let status = testbed.lb_json(3, "status").unwrap();
    assert_eq!(status["adopted"], true);
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert_eq!(
            testbed.router_next_hops(Side::Front, VIP_PREFIX).unwrap(),
            front
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = testbed.lb_json(3, "status").unwrap();
    assert_eq!(status["bgp"]["in_sync"], true, "{status}");
}

/// A lost instance (no carrier change: only BFD can tell) leaves both routers within a
/// second, and comes back when its links do.
#[test]
#[ignore = "needs root: network namespaces, XDP, BIRD"]
fn lost_instance_leaves_the_routers_within_a_second() {
    let testbed = cluster(3);
    let snat = "198.19.1.1/32";
    // Timed from before the first drop rule, so the measure can only be too long.
    let started = Instant::now();
    testbed.links_down(1).unwrap();
    testbed
        .wait_next_hops(
            Side::Front,
            VIP_PREFIX,
            &hops(&[2, 3]),
            Duration::from_secs(5),
        )
        .unwrap();
    let front = started.elapsed();
    testbed
        .wait_next_hops(Side::Back, snat, &BTreeSet::new(), Duration::from_secs(5))
        .unwrap();
    let back = started.elapsed();
    eprintln!("links down: front router after {front:?}, back router after {back:?}");
    // BFD: 3 x 100 ms; the margin covers BIRD's and the kernel's work on a busy machine.
    assert!(
        front <= Duration::from_secs(1),
        "front router took {front:?}"
    );
    assert!(back <= Duration::from_secs(1), "back router took {back:?}");
    assert_eq!(
        gets(&testbed, 30),
        30,
        "the others carry every new connection"
    );

    testbed.links_up(1).unwrap();
    let took = testbed
        .wait_next_hops(Side::Front, VIP_PREFIX, &hops(&[1, 2, 3]), CONVERGE)
        .unwrap();
    testbed
        .wait_next_hops(Side::Back, snat, &ScaleOut::back_hops(&[1]), CONVERGE)
        .unwrap();
    eprintln!("links up: back in the front router after {took:?}");
}

/// `lb run` refuses a `[bgp]` whose control socket has no BIRD, or a silent one, naming
/// the file and line of `control_socket`; nothing is attached.
#[test]
#[ignore = "needs root: network namespaces, XDP, BIRD"]
fn unknown_or_silent_control_socket_is_refused() {
    let mut testbed = {
        let prefix = scaleout::unique_prefix();
        ScaleOut::up(&prefix, &dir(&prefix), &lb_binary(), 1).unwrap()
    };
    let path = testbed.lb_config_path(1);
    let good = testbed.lb_config(1);
    let line = good
        .lines()
        .position(|l| l.starts_with("control_socket"))
        .unwrap()
        + 1;
    let missing = testbed.dir.join("l1").join("no-bird.ctl");
    let silent = testbed.dir.join("l1").join("silent.ctl");
    let _listener = std::os::unix::net::UnixListener::bind(&silent).unwrap();
    for (socket, why) in [
        (&missing, "cannot connect"),
        (&silent, "no answer within 2000 ms"),
    ] {
        let bird = testbed.dir.join("l1").join("bird.ctl");
        let config = good.replace(&bird.display().to_string(), &socket.display().to_string());
        std::fs::write(&path, &config).unwrap();
        testbed.spawn_lb(1).unwrap();
        let status = testbed.wait_lb_exit(1, Duration::from_secs(10)).unwrap();
        assert!(!status.success());
        let log = testbed.lb_log(1);
        let at = format!("{}:{line}:", path.display());
        assert!(
            log.contains(&at) && log.contains("BIRD does not answer on") && log.contains(why),
            "expected {at:?} and {why:?} in: {log}"
        );
        let interfaces = testbed
            .exec(
                &testbed.instance_ns(1),
                &["ip", "-d", "link", "show", "front"],
            )
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&interfaces.stdout).contains("xdp"),
            "nothing attached"
        );
    }
    // The routes file's directory must exist.
    let config = good.replace("/l1/routes.conf", "/none/routes.conf");
    std::fs::write(&path, &config).unwrap();
    testbed.spawn_lb(1).unwrap();
    assert!(
        !testbed
            .wait_lb_exit(1, Duration::from_secs(10))
            .unwrap()
            .success()
    );
    let routes_line = good
        .lines()
        .position(|l| l.starts_with("routes_file"))
        .unwrap()
        + 1;
    let log = testbed.lb_log(1);
    assert!(
        log.contains(&format!("{}:{routes_line}:", path.display()))
            && log.contains("does not exist"),
        "{log}"
    );
    // And the good one starts.
    std::fs::write(&path, &good).unwrap();
    testbed.start_lb(1).unwrap();
}

/// The instances' `bird.conf` exports a peer's SNAT address (`lb_snat_backup`) with a
/// longer AS path: the back router prefers the owner, and falls back to the backup when
/// the owner is lost. The backup is written by hand here (the peer protocol feeds it).
#[test]
#[ignore = "needs root: network namespaces, XDP, BIRD"]
fn peer_snat_backup_is_announced_with_a_longer_path() {
    let mut testbed = {
        let prefix = scaleout::unique_prefix();
        ScaleOut::up(&prefix, &dir(&prefix), &lb_binary(), 2).unwrap()
    };
    testbed.start_lb(2).unwrap();
    // Instance 1 without lb: its BIRD announces 198.19.1.2 as a backup.
    let backup = lb_userspace::bgp::RouteSet {
        snat_backup: [scaleout::snat_ip(2)].into(),
        ..Default::default()
    };
    std::fs::write(
        testbed.dir.join("l1").join("routes.conf"),
        lb_userspace::bgp::routes::render(&backup),
    )
    .unwrap();
    testbed.instance_birdc(1, "configure").unwrap();
    let snat = "198.19.1.2/32";
    testbed
        .wait_next_hops(Side::Back, snat, &ScaleOut::back_hops(&[2]), CONVERGE)
        .expect("the owner's shorter path wins");
    let mut routes = String::new();
    let deadline = Instant::now() + CONVERGE;
    while Instant::now() < deadline {
        routes = testbed
            .router_birdc(Side::Back, &format!("show route {snat} all"))
            .unwrap();
        if routes.matches("BGP.as_path").count() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(routes.contains("BGP.as_path: 65010\n"), "{routes}");
    assert!(
        routes.contains("BGP.as_path: 65010 65010 65010"),
        "{routes}"
    );

    testbed.links_down(2).unwrap();
    testbed
        .wait_next_hops(
            Side::Back,
            snat,
            &ScaleOut::back_hops(&[1]),
            Duration::from_secs(2),
        )
        .expect("the backup takes over when the owner is lost");
}

/// The announcements follow a reload (a new VIP is announced, a changed `[bgp]` is
/// refused), and a `configure` that fails while BIRD is away is reported and retried
/// until BIRD is back.
#[test]
#[ignore = "needs root: network namespaces, XDP, BIRD"]
fn announcements_follow_reloads_and_outlast_a_bird_restart() {
    let mut testbed = cluster(1);
    let path = testbed.lb_config_path(1);
    let good = testbed.lb_config(1);
    let extra = "198.18.1.11/32";
    let with_extra = format!(
        "{good}[[service]]\nname = \"web2\"\nvip = \"198.18.1.11\"\nport = 80\n\
         snat_ip = \"{}\"\n[[service.backend]]\naddress = \"198.19.0.11\"\n",
        scaleout::snat_ip(1)
    );
    std::fs::write(&path, &with_extra).unwrap();
    testbed.lb_cli(1, &["reload"]).expect("reload");
    testbed
        .wait_next_hops(Side::Front, extra, &hops(&[1]), Duration::from_secs(5))
        .expect("a new VIP is announced after the reload");

    std::fs::write(
        &path,
        with_extra.replace("withdraw_delay_ms = 500", "withdraw_delay_ms = 600"),
    )
    .unwrap();
    let error = testbed.lb_cli(1, &["reload"]).unwrap_err();
    assert!(
        format!("{error:#}").contains("[bgp] can only change with a restart"),
        "{error:#}"
    );

    // BIRD goes away; the next change cannot be announced.
    testbed.stop_bird(1).unwrap();
    std::fs::write(&path, &good).unwrap();
    testbed.lb_cli(1, &["reload"]).expect("reload");
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        let status = testbed.lb_json(1, "status").unwrap();
        if status["bgp"]["configure_failures"].as_u64() >= Some(1) {
            break status;
        }
        assert!(Instant::now() < deadline, "no failure reported: {status}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status["bgp"]["in_sync"], false);
    assert!(
        status["bgp"]["last_error"]
            .as_str()
            .unwrap()
            .contains("cannot connect"),
        "{status}"
    );
    assert!(
        testbed
            .lb_cli(1, &["status"])
            .unwrap()
            .contains("(BIRD not in sync)"),
    );

    // BIRD is back: the retry (backoff up to 5 s) brings it in sync.
    testbed.start_bird(1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = testbed.lb_json(1, "status").unwrap();
        if status["bgp"]["in_sync"] == true {
            assert_eq!(status["bgp"]["last_error"], serde_json::Value::Null);
            break;
        }
        assert!(Instant::now() < deadline, "never in sync again: {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
    testbed
        .wait_next_hops(Side::Front, VIP_PREFIX, &hops(&[1]), CONVERGE)
        .unwrap();
    assert!(
        testbed
            .router_next_hops(Side::Front, extra)
            .unwrap()
            .is_empty()
    );
    // The replies need the back router's session up again too.
    testbed
        .wait_next_hops(
            Side::Back,
            "198.19.1.1/32",
            &ScaleOut::back_hops(&[1]),
            CONVERGE,
        )
        .unwrap();
    assert_eq!(gets(&testbed, 5), 5);
}
