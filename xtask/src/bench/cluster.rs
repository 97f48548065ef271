//! The cluster group: three instances sharing flows behind BIRD's ECMP (the scale-out
//! testbed of docs/scale-out.md). What sharing costs per new flow (install lag at the
//! peers, bytes announced) and how fast the routers follow each step of the scale-out
//! scenario, each beside a baseline of the same run: the network's own round trip, one
//! record per peer, BIRD withdrawing and announcing by itself, the BFD detection time.

use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lb_testbed::scaleout::{
    self, BFD_INTERVAL_MS, BFD_MULTIPLIER, OWNED_VIP, OWNED_VIP_OWNER, PeersOptions, ScaleOut,
    Side, TCP_ECHO_PORT, back_link,
};
use lb_testbed::workload::Chatter;
use lb_testbed::{VIP, spawn_in_netns};
use lb_userspace::bgp::routes::PROTO_VIPS;
use lb_userspace::peers::moves::MoveTimers;
use lb_userspace::peers::record::ANNOUNCEMENT_BYTES;

use super::model::{ClusterResults, ConvergenceStep, InstanceLag, VipMoveResult};

pub struct ClusterParams {
    pub lb_binary: PathBuf,
    pub out_dir: PathBuf,
    /// Short connections opened for the lag and bytes rows.
    pub new_flows: usize,
    /// Long-lived connections on the owned VIP while it moves.
    pub move_flows: usize,
}

/// Instances of the testbed (a 4th is added and removed by the steps).
const INSTANCES: usize = 3;
/// Bound on every wait for the routers.
const CONVERGE: Duration = Duration::from_secs(20);
/// Gap between two short connections of the lag workload.
const CONNECT_EVERY: Duration = Duration::from_millis(4);

pub fn run(p: &ClusterParams) -> Result<ClusterResults> {
    let prefix = scaleout::unique_prefix();
    let dir = p.out_dir.join(format!("cluster-{prefix}"));
    let options = PeersOptions {
        announce: true,
        tcp_established_s: 60,
    };
    let mut testbed = ScaleOut::up_with_peers(&prefix, &dir, &p.lb_binary, INSTANCES, options)?;
    let result = measure(&mut testbed, p);
    if result.is_err() {
        for i in 1..=INSTANCES + 1 {
            eprintln!("---- lb on instance {i} ----\n{}", testbed.lb_log(i));
        }
    }
    drop(testbed);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn measure(testbed: &mut ScaleOut, p: &ClusterParams) -> Result<ClusterResults> {
    let all: Vec<usize> = (1..=INSTANCES).collect();
    for &i in &all {
        testbed.start_lb(i)?;
    }
    testbed.wait_announced(&all, CONVERGE)?;
    for &i in &all {
        wait_ready(testbed, i)?;
    }
    let mut results = ClusterResults {
        instances: INSTANCES,
        record_bytes: ANNOUNCEMENT_BYTES,
        ..ClusterResults::default()
    };
    flows_rows(testbed, p.new_flows, &mut results)?;
    results.vip_move = Some(vip_move(testbed, p.move_flows)?);
    steps(testbed, &mut results)?;
    Ok(results)
}

/// `new_flows` short echo connections through the front router; then what the
/// instances announced for them and how soon their peers held them.
fn flows_rows(testbed: &ScaleOut, new_flows: usize, r: &mut ClusterResults) -> Result<()> {
    let instances: Vec<usize> = (1..=INSTANCES).collect();
    let before = totals(testbed, &instances)?;
    let target = SocketAddrV4::new(VIP, TCP_ECHO_PORT);
    let client = spawn_in_netns(&testbed.client_ns(), move || {
        let mut failed = 0;
        for n in 0..new_flows {
            if echo_once(target, n).is_err() {
                failed += 1;
            }
            std::thread::sleep(CONNECT_EVERY);
        }
        failed
    })?;
    let failed = client
        .join()
        .map_err(|_| anyhow::anyhow!("the client thread panicked"))??;
    // The last connections' removals are announced by the collector (every second).
    std::thread::sleep(Duration::from_secs(3));
    let after = totals(testbed, &instances)?;
    r.connections = new_flows as u64;
    r.failed_connections = failed as u64;
    r.new_flows = after.new_flows - before.new_flows;
    r.announcements = after.announcements - before.announcements;
    r.announcement_bytes = after.bytes - before.bytes;
    for &i in &instances {
        let peers = testbed.lb_json(i, "peers")?;
        let lag = &peers["install_lag"];
        if lag.is_null() {
            bail!("instance {i} installed no live flow from its peers: {peers}");
        }
        let ms = |field: &str| lag[field].as_u64().unwrap_or(0);
        r.install_lag.push(InstanceLag {
            instance: i,
            samples: ms("samples"),
            p50_ms: ms("p50_ms"),
            p99_ms: ms("p99_ms"),
            max_ms: ms("max_ms"),
        });
    }
    r.network_rtt_ms = peer_rtt_ms(testbed)?;
    Ok(())
}

/// `lb vip move` of the owned VIP from its owner to instance 2 with `flows` long-lived
/// connections on it: the time to the routes' flip and to the target's `normal`, and
/// the announcement bytes the source sent meanwhile (the VIP's stream).
fn vip_move(testbed: &ScaleOut, flows: usize) -> Result<VipMoveResult> {
    let (from, to) = (OWNED_VIP_OWNER, 2);
    let vip = format!("{OWNED_VIP}/32");
    testbed.wait_next_hops(Side::Front, &vip, &ScaleOut::front_hops(&[from]), CONVERGE)?;
    let chatter = Chatter::start(
        &testbed.client_ns(),
        SocketAddrV4::new(OWNED_VIP, TCP_ECHO_PORT),
        flows,
        Duration::from_millis(200),
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let bytes_before = totals(testbed, &[from])?.bytes;
    let started = Instant::now();
    testbed.lb_cli(
        from,
        &[
            "vip",
            "move",
            &OWNED_VIP.to_string(),
            "--to",
            &to.to_string(),
        ],
    )?;
    testbed.wait_next_hops(Side::Front, &vip, &ScaleOut::front_hops(&[to]), CONVERGE)?;
    let routes = started.elapsed();
    loop {
        let vips = testbed.lb_json(to, "vips")?;
        if vips[0]["mode"] == "normal" {
            break;
        }
        if started.elapsed() > CONVERGE {
            bail!("the move did not end: {vips}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let normal = started.elapsed();
    let bytes = totals(testbed, &[from])?.bytes - bytes_before;
    let report = chatter.stop();
    Ok(VipMoveResult {
        flows: report.connections as u64,
        broken: report.broken.len() as u64,
        routes_s: routes.as_secs_f64(),
        normal_s: normal.as_secs_f64(),
        drain_s: MoveTimers::default().drain.as_secs_f64(),
        bytes,
    })
}

/// One short connection: connect, one 64-byte message, its echo, close.
fn echo_once(target: SocketAddrV4, n: usize) -> std::io::Result<()> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&SocketAddr::V4(target), timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    let message = lb_testbed::workload::chatter_message(n, 0);
    stream.write_all(&message)?;
    let mut echo = [0u8; lb_testbed::workload::MESSAGE_BYTES];
    stream.read_exact(&mut echo)?;
    if echo != message {
        return Err(std::io::Error::other("echo differs"));
    }
    Ok(())
}

struct Totals {
    new_flows: u64,
    announcements: u64,
    bytes: u64,
}

/// New flows made and announcements sent, summed over `instances`.
fn totals(testbed: &ScaleOut, instances: &[usize]) -> Result<Totals> {
    let mut t = Totals {
        new_flows: 0,
        announcements: 0,
        bytes: 0,
    };
    for &i in instances {
        let stats = testbed.lb_json(i, "stats")?;
        t.new_flows += stats["counters"]["new_flows"].as_u64().unwrap_or(0);
        let peers = testbed.lb_json(i, "peers")?;
        let c = &peers["counters"];
        t.announcements += c["announcements_sent"].as_u64().unwrap_or(0);
        t.bytes += c["announcement_bytes_sent"].as_u64().unwrap_or(0);
    }
    Ok(t)
}

/// Median round trip between two instances' peer addresses (20 pings): the network's
/// share of the install lag.
fn peer_rtt_ms(testbed: &ScaleOut) -> Result<f64> {
    let to = back_link(2).1.to_string();
    let out = testbed.exec(
        &testbed.instance_ns(1),
        &["ping", "-q", "-c", "20", "-i", "0.01", "-W", "1", &to],
    )?;
    // "rtt min/avg/max/mdev = 0.031/0.045/0.090/0.012 ms"
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.split(" = ").nth(1))
        .and_then(|v| v.split('/').nth(1))
        .and_then(|avg| avg.parse().ok())
        .with_context(|| format!("no round trip in ping's output: {text}"))
}

/// The scenario's steps, each timed to the routers' convergence, with BIRD's own
/// withdraw and announce (no `lb` involved) and the BFD detection time as baselines.
fn steps(testbed: &mut ScaleOut, r: &mut ClusterResults) -> Result<()> {
    let front = |instances: &[usize]| ScaleOut::front_hops(instances);
    let vip = format!("{VIP}/32");
    let wait = |t: &ScaleOut, instances: &[usize]| {
        t.wait_next_hops(Side::Front, &vip, &front(instances), CONVERGE)
    };

    // Add a 4th (its namespaces and BIRD up, like a booted machine): `lb run`, synced
    // with its peers, announced, in the front router's ECMP.
    let fourth = testbed.add_instance()?;
    let started = Instant::now();
    testbed.start_lb(fourth)?;
    let answering = started.elapsed();
    wait_ready(testbed, fourth)?;
    let ready = started.elapsed();
    wait(testbed, &[1, 2, 3, fourth])?;
    let added = started.elapsed();

    // BIRD by itself on the 4th: withdraw, then announce again, the VIP's protocol.
    let started = Instant::now();
    testbed.instance_birdc(fourth, &format!("disable {PROTO_VIPS}"))?;
    wait(testbed, &[1, 2, 3])?;
    let bird_withdraw = started.elapsed();
    let started = Instant::now();
    testbed.instance_birdc(fourth, &format!("enable {PROTO_VIPS}"))?;
    wait(testbed, &[1, 2, 3, fourth])?;
    let bird_announce = started.elapsed();
    r.steps.push(ConvergenceStep {
        step: "add a 4th instance (`lb run` → in the front router's ECMP)".into(),
        seconds: added.as_secs_f64(),
        baseline: "BIRD alone announcing the VIP again".into(),
        baseline_seconds: bird_announce.as_secs_f64(),
        note: format!(
            "`lb run` answering (XDP program loaded and attached) after {:.2} s, synced with \
             its peers (transition over) after {:.2} s",
            answering.as_secs_f64(),
            ready.as_secs_f64()
        ),
    });

    // Drain it: `lb drain` answers once BIRD took the withdrawal.
    let started = Instant::now();
    testbed.lb_cli(fourth, &["drain"])?;
    wait(testbed, &[1, 2, 3])?;
    r.steps.push(ConvergenceStep {
        step: "drain (`lb drain` → out of the front router)".into(),
        seconds: started.elapsed().as_secs_f64(),
        baseline: "BIRD alone withdrawing the VIP".into(),
        baseline_seconds: bird_withdraw.as_secs_f64(),
        note: String::new(),
    });
    testbed.stop_lb(fourth)?;
    testbed.stop_bird(fourth)?;

    // kill -9 of instance 3's controller: no route changes; the restart adopts.
    testbed.kill_lb(3)?;
    let started = Instant::now();
    testbed.start_lb(3)?;
    let answering = started.elapsed();
    wait_ready(testbed, 3)?;
    let restarted = started.elapsed();
    let hops = testbed.router_next_hops(Side::Front, &vip)?;
    r.steps.push(ConvergenceStep {
        step: "kill -9 of a controller, restart (→ synced again)".into(),
        seconds: restarted.as_secs_f64(),
        baseline: "routes changed meanwhile".into(),
        baseline_seconds: 0.0,
        note: format!(
            "`lb run` answering after {:.2} s; {}",
            answering.as_secs_f64(),
            if hops == front(&[1, 2, 3]) {
                "the front router's next hops never changed".to_string()
            } else {
                format!("the front router's next hops are {hops:?}")
            }
        ),
    });

    // Instance 3 lost (links down), then back.
    let started = Instant::now();
    testbed.links_down(3)?;
    wait(testbed, &[1, 2])?;
    let lost = started.elapsed();
    let bfd = Duration::from_millis(u64::from(BFD_INTERVAL_MS * BFD_MULTIPLIER));
    r.steps.push(ConvergenceStep {
        step: "links down (→ out of the front router)".into(),
        seconds: lost.as_secs_f64(),
        baseline: "BFD detection time configured".into(),
        baseline_seconds: bfd.as_secs_f64(),
        note: String::new(),
    });
    let started = Instant::now();
    testbed.links_up(3)?;
    wait(testbed, &[1, 2, 3])?;
    r.steps.push(ConvergenceStep {
        step: "links up (→ back in the front router)".into(),
        seconds: started.elapsed().as_secs_f64(),
        baseline: "BIRD alone announcing the VIP again".into(),
        baseline_seconds: bird_announce.as_secs_f64(),
        note: "BGP reconnects (connect delay 1 s) before it announces".into(),
    });
    Ok(())
}

fn wait_ready(testbed: &ScaleOut, i: usize) -> Result<()> {
    let deadline = Instant::now() + CONVERGE;
    loop {
        if testbed.lb_json(i, "peers")?["ready"] == true {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("instance {i} did not finish its transition");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
