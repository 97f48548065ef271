//! `cargo xtask demo --cluster`: the scale-out testbed (docs/scale-out.md) with three
//! instances behind ECMP routers running BIRD; traffic through the VIP, the share per
//! instance and per server, then one instance drained.

use std::collections::BTreeSet;
use std::net::SocketAddrV4;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use lb_testbed::scaleout::{ScaleOut, Side, front_link};
use lb_testbed::{self as testbed, http_get, server_of};

const PREFIX: &str = "bgpdemo";
const INSTANCES: usize = 3;
const VIP_PREFIX: &str = "198.18.1.10/32";

/// Removes what a demo left behind (a Ctrl-C, a crash): its namespaces (which stops
/// the BIRD and lb processes inside) and the instances' pins and sockets.
pub fn clean() {
    for ns in testbed::list_netns() {
        if ns.starts_with(&format!("{PREFIX}-")) {
            testbed::netns::delete_netns(&ns);
        }
    }
    for i in 1..=lb_testbed::scaleout::MAX_INSTANCES {
        let name = lb_testbed::scaleout::instance_name(PREFIX, i);
        let pins = Path::new("/sys/fs/bpf").join(&name);
        if let Ok(entries) = std::fs::read_dir(&pins) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
            let _ = std::fs::remove_dir(&pins);
        }
        let _ = std::fs::remove_file(format!("/run/lb/{name}.sock"));
    }
}

pub fn run(lb: &Path, dir: &Path, requests: usize) -> Result<ExitCode> {
    clean();
    ctrlc::set_handler(|| {
        eprintln!("\nxtask: interrupted, tearing down the scale-out testbed {PREFIX}");
        clean();
        std::process::exit(130);
    })
    .context("installing the Ctrl-C handler")?;
    println!("demo: building the scale-out testbed {PREFIX} ({INSTANCES} instances, BIRD)");
    let mut testbed = ScaleOut::up(PREFIX, dir, lb, INSTANCES)?;
    let result = demo(&mut testbed, requests);
    if result.is_err() {
        for i in 1..=INSTANCES {
            eprintln!("---- lb on instance {i} ----\n{}", testbed.lb_log(i));
        }
    }
    println!("demo: tearing down");
    drop(testbed);
    result
}

fn demo(testbed: &mut ScaleOut, requests: usize) -> Result<ExitCode> {
    for i in 1..=INSTANCES {
        testbed.start_lb(i)?;
    }
    let all: Vec<usize> = (1..=INSTANCES).collect();
    let took = testbed.wait_next_hops(
        Side::Front,
        VIP_PREFIX,
        &ScaleOut::front_hops(&all),
        Duration::from_secs(30),
    )?;
    println!("demo: the front router learned the VIP from every instance in {took:.1?}");
    show_route(testbed)?;

    let mut ok = traffic(testbed, requests, &all)?;

    println!("$ lb drain   (instance 3)");
    println!("{}", testbed.lb_cli(3, &["drain"])?.trim_end());
    let took = testbed.wait_next_hops(
        Side::Front,
        VIP_PREFIX,
        &ScaleOut::front_hops(&[1, 2]),
        Duration::from_secs(10),
    )?;
    println!("demo: instance 3 left the front router's route in {took:.1?}");
    show_route(testbed)?;
    ok &= traffic(testbed, requests / 3, &[1, 2])?;

    Ok(if ok {
        println!("demo: OK, every request answered");
        ExitCode::SUCCESS
    } else {
        println!("demo: FAILED");
        ExitCode::FAILURE
    })
}

fn show_route(testbed: &ScaleOut) -> Result<()> {
    let out = testbed.exec(
        &testbed.router_ns(Side::Front),
        &["ip", "route", "show", VIP_PREFIX],
    )?;
    println!("front router $ ip route show {VIP_PREFIX}");
    println!("{}", String::from_utf8_lossy(&out.stdout).trim_end());
    println!();
    Ok(())
}

/// New flows of the `web` service on each instance.
fn web_flows(testbed: &ScaleOut) -> Result<Vec<u64>> {
    (1..=INSTANCES)
        .map(|i| {
            let stats = testbed.lb_json(i, "stats")?;
            stats["services"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|s| s["name"] == "web")
                .and_then(|s| s["new_flows"].as_u64())
                .context("no web service in lb stats")
        })
        .collect()
}

/// `requests` GETs on new connections; prints the share per instance and per server.
fn traffic(testbed: &ScaleOut, requests: usize, live: &[usize]) -> Result<bool> {
    println!(
        "demo: {requests} HTTP requests, each on a new connection, client -> http://{}/",
        testbed::VIP
    );
    let before = web_flows(testbed)?;
    let mut servers = [0usize; 3];
    let mut failures = 0;
    let started = Instant::now();
    for _ in 0..requests {
        let answer = http_get(
            &testbed.client_ns(),
            SocketAddrV4::new(testbed::VIP, 80),
            "/",
            Duration::from_secs(5),
        );
        match answer.ok().and_then(|r| server_of(&r.text())) {
            Some(n) => servers[n - 1] += 1,
            None => failures += 1,
        }
    }
    let took = started.elapsed().as_secs_f64();
    let after = web_flows(testbed)?;
    let share = |n: u64| 100.0 * n as f64 / requests.max(1) as f64;
    let live: BTreeSet<usize> = live.iter().copied().collect();
    println!();
    println!("instance  front next hop  in route  new flows   share");
    for i in 1..=INSTANCES {
        let flows = after[i - 1] - before[i - 1];
        println!(
            "l{i}        {:<14}  {:<8}  {flows:>9}  {:>5.1}%",
            front_link(i).1,
            if live.contains(&i) { "yes" } else { "drained" },
            share(flows)
        );
    }
    println!("server  address        answers   share");
    for (n, count) in servers.iter().enumerate() {
        println!(
            "s{}      {:<13}  {count:>7}  {:>5.1}%",
            n + 1,
            testbed::SERVER_IPS[n],
            share(*count as u64)
        );
    }
    println!("failed                 {failures:>7}");
    println!("({requests} requests in {took:.1}s)");
    println!();
    Ok(failures == 0)
}
