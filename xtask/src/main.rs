//! `cargo xtask`: developer tasks for the XDP load balancer.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use lb_testbed::{self as testbed, Role, TeardownHandle, Topology, daemon};
use xtask::{lint, setup};

mod cluster_demo;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Developer tasks for the XDP load balancer"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: Debian packages, nightly + rust-src,
    /// bpf-linker (LLVM 22), bpffs mount. Idempotent.
    Setup,
    /// Manage a netns testbed by hand (for debugging).
    Testbed {
        #[command(subcommand)]
        action: TestbedCmd,
    },
    /// Build everything, run the balancer on a testbed and send it traffic.
    Demo {
        /// Number of HTTP requests, each on a new connection.
        #[arg(long, default_value_t = 300)]
        requests: usize,
        /// Skip `setup` and `cargo build` (reuse the existing target/debug/lb).
        #[arg(long)]
        no_build: bool,
        /// The scale-out testbed instead: three instances behind ECMP routers that learn
        /// the VIP from each instance's BIRD (docs/scale-out.md).
        #[arg(long)]
        cluster: bool,
    },
    /// Setup, lint, build, then unit tests and the root-only (ignored) tests.
    Test,
    /// rustfmt --check and clippy -D warnings on every crate (lb-ebpf for its own target).
    Lint,
    /// Benchmarks: per-packet cost (test_run), end to end beside kernel routing and
    /// nftables, scale. Writes target/bench/report.{md,json} and e2e.svg.
    Bench {
        /// Smoke run: fewer runs, shorter windows, smaller scale points (< 3 minutes).
        #[arg(long)]
        quick: bool,
        /// Only the test_run groups (per-packet cost, scale, Maglev install): no veth
        /// traffic, for iterating on the data path.
        #[arg(long, conflicts_with = "e2e_only")]
        kernel_only: bool,
        /// Only the end-to-end group and start-up times (veth traffic against the
        /// baselines), for iterating on the testbed and the baselines.
        #[arg(long)]
        e2e_only: bool,
        /// Only the controller-at-scale group (lb with 1 k to 4 M flow entries).
        #[arg(long, conflicts_with_all = ["kernel_only", "e2e_only"])]
        controller_only: bool,
        /// Only the cluster group: three instances sharing flows behind BIRD's ECMP
        /// (install lag, bytes announced, convergence of each scale-out step).
        #[arg(long, conflicts_with_all = ["kernel_only", "e2e_only", "controller_only"])]
        cluster_only: bool,
        /// Another `lb` binary (e.g. a previous revision's release build) to measure
        /// beside this one in the controller-at-scale group, in the same run.
        #[arg(long)]
        baseline_lb: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TestbedCmd {
    /// Create the namespaces; they stay until `testbed down`.
    Up {
        #[arg(long, default_value = "lbdev")]
        prefix: String,
        /// Also run the test servers in s1..s3, in the foreground until
        /// Ctrl-C (the namespaces stay afterwards).
        #[arg(long)]
        serve: bool,
    },
    /// Delete the namespaces of one testbed.
    Down {
        #[arg(long, default_value = "lbdev")]
        prefix: String,
    },
    /// Delete every leftover testbed namespace whose name starts with
    /// PREFIX_START (and ends in a testbed role such as `-client`).
    Clean {
        #[arg(long, default_value = "lb")]
        prefix_start: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Setup => setup::run().map(|()| ExitCode::SUCCESS),
        Cmd::Testbed { action } => testbed_cmd(action).map(|()| ExitCode::SUCCESS),
        Cmd::Demo {
            requests,
            no_build,
            cluster,
        } => demo(requests, no_build, cluster),
        Cmd::Test => test().map(|()| ExitCode::SUCCESS),
        Cmd::Lint => lint::run(&workspace_root()).map(|()| ExitCode::SUCCESS),
        Cmd::Bench {
            quick,
            kernel_only,
            e2e_only,
            controller_only,
            cluster_only,
            baseline_lb,
        } => bench(
            quick,
            [kernel_only, e2e_only, controller_only, cluster_only],
            baseline_lb,
        )
        .map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    // xtask/ sits directly in the workspace root.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// Run cargo in the workspace root with inherited stdio (output streams).
fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    println!("xtask: cargo {}", args.join(" "));
    let status = Command::new(setup::cargo())
        .args(args)
        .current_dir(root)
        .status()
        .context("starting cargo")?;
    if !status.success() {
        bail!("`cargo {}` failed: {status}", args.join(" "));
    }
    Ok(())
}

/// Tear down on Ctrl-C/SIGTERM/SIGHUP and exit 130. The handle slot is
/// filled once the topology exists; before that only leftovers with the
/// prefix are removed (they would be by the next `up` anyway).
fn install_interrupt_teardown(prefix: &str) -> Result<Arc<Mutex<Option<TeardownHandle>>>> {
    let slot: Arc<Mutex<Option<TeardownHandle>>> = Arc::default();
    let (slot2, prefix) = (slot.clone(), prefix.to_string());
    ctrlc::set_handler(move || {
        eprintln!("\nxtask: interrupted, tearing down testbed {prefix}");
        let handle = slot2.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match handle {
            Some(h) => h.teardown(),
            None => testbed::destroy(&prefix),
        }
        std::process::exit(130);
    })
    .context("installing the Ctrl-C handler")?;
    Ok(slot)
}

fn testbed_cmd(action: TestbedCmd) -> Result<()> {
    match action {
        TestbedCmd::Up { prefix, serve } => {
            setup::require_root("cargo xtask testbed up")?;
            let mut topo = Topology::up(&prefix)?;
            println!("testbed {prefix} is up:");
            for role in Role::ALL {
                println!("  {}", topo.ns(role));
            }
            println!(
                "  client {} -> lb {} | lb {} -> servers {} {} {}; VIP {} SNAT {}",
                testbed::CLIENT_IP,
                testbed::LB_EXT_IP,
                testbed::LB_INT_IP,
                testbed::SERVER_IPS[0],
                testbed::SERVER_IPS[1],
                testbed::SERVER_IPS[2],
                testbed::VIP,
                testbed::SNAT_IP
            );
            if serve {
                let (tx, rx) = std::sync::mpsc::channel();
                ctrlc::set_handler(move || {
                    let _ = tx.send(());
                })
                .context("installing the Ctrl-C handler")?;
                topo.start_servers()?;
                println!(
                    "test servers run (HTTP :{}, UDP :{}); Ctrl-C stops them",
                    testbed::HTTP_PORT,
                    testbed::UDP_PORT
                );
                let _ = rx.recv();
            }
            topo.persist();
            println!("remove it with: cargo xtask testbed down --prefix {prefix}");
            Ok(())
        }
        TestbedCmd::Down { prefix } => {
            setup::require_root("cargo xtask testbed down")?;
            testbed::destroy(&prefix);
            println!("testbed {prefix} removed");
            Ok(())
        }
        TestbedCmd::Clean { prefix_start } => {
            setup::require_root("cargo xtask testbed clean")?;
            let deleted = testbed::cleanup_stale(&prefix_start);
            if deleted.is_empty() {
                println!("no testbed namespaces starting with {prefix_start:?}");
            } else {
                println!("deleted: {}", deleted.join(" "));
            }
            Ok(())
        }
    }
}

fn test() -> Result<()> {
    setup::require_root("cargo xtask test")?;
    setup::run()?;
    let root = workspace_root();
    lint::run(&root)?;
    cargo(&root, &["build", "--workspace"])?;
    let mut tally = Tally::default();
    // --no-fail-fast: report every failing test binary, not just the first.
    let unit_ok = cargo_test(&root, &["--workspace", "--no-fail-fast"], &mut tally)?;
    // Root-only tests (BPF_PROG_TEST_RUN, netns traffic) are #[ignore]d in
    // a plain `cargo test`; one at a time because they attach XDP programs
    // and compete for two cores.
    let root_ok = cargo_test(
        &root,
        &[
            "--workspace",
            "--no-fail-fast",
            "--",
            "--ignored",
            "--test-threads=1",
        ],
        &mut tally,
    )?;
    // One summary over both runs (the last libtest line alone would be the
    // last crate's doc tests, usually "0 passed").
    println!("xtask: {} passed, {} failed", tally.passed, tally.failed);
    // Last, where a truncated log still shows them: why each failing test failed.
    for panic in &tally.panics {
        println!("xtask: {panic}");
    }
    match (unit_ok, root_ok) {
        (true, true) => Ok(()),
        (false, _) => bail!("unit tests failed"),
        (true, false) => bail!("root-only (ignored) tests failed"),
    }
}

#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    /// "thread 'T' (ID) panicked at F:L: MESSAGE" of every failing test, the message cut
    /// short.
    panics: Vec<String>,
}

/// Longest panic message kept for the summary.
const PANIC_SUMMARY_CHARS: usize = 600;

/// `cargo test ARGS`, streaming its stdout while adding up libtest's
/// "test result:" lines. Returns whether cargo succeeded.
fn cargo_test(root: &Path, args: &[&str], tally: &mut Tally) -> Result<bool> {
    println!("xtask: cargo test {}", args.join(" "));
    let mut child = Command::new(setup::cargo())
        .arg("test")
        .args(args)
        .current_dir(root)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    if let Some(out) = child.stdout.take() {
        let mut stdout = std::io::stdout().lock();
        // The panic's location line, waiting for its message on the next line.
        let mut panic_at: Option<String> = None;
        for line in BufReader::new(out).lines() {
            let line = line.context("reading cargo test output")?;
            writeln!(stdout, "{line}")?;
            stdout.flush()?;
            if let Some((passed, failed)) = parse_test_result(&line) {
                tally.passed += passed;
                tally.failed += failed;
            }
            if let Some(at) = panic_at.take() {
                let message: String = line.chars().take(PANIC_SUMMARY_CHARS).collect();
                tally.panics.push(format!("{at} {message}"));
            } else if line.starts_with("thread '") && line.contains(" panicked at ") {
                panic_at = Some(line);
            }
        }
    }
    Ok(child.wait().context("waiting for cargo test")?.success())
}

/// `test result: ok. 8 passed; 0 failed; 1 ignored; ...` -> (8, 0).
fn parse_test_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.trim().strip_prefix("test result:")?;
    let count = |word: &str| {
        rest.split(';').find_map(|part| {
            let part = part
                .trim()
                .trim_start_matches("ok.")
                .trim_start_matches("FAILED.");
            part.trim().strip_suffix(word)?.trim().parse::<u64>().ok()
        })
    };
    Some((count("passed")?, count("failed")?))
}

const DEMO_PREFIX: &str = "lbdemo";
const DEMO_SOCKET: &str = "/run/lb/lbdemo.sock";
fn demo(requests: usize, no_build: bool, cluster: bool) -> Result<ExitCode> {
    let root = workspace_root();
    if no_build {
        setup::require_root("cargo xtask demo")?;
    } else {
        setup::run()?;
        // Also builds the XDP object through lb-userspace's build script.
        cargo(&root, &["build", "--workspace"])?;
    }
    let target = target_dir(&root);
    let lb = target.join("debug").join("lb");
    if cluster {
        return cluster_demo::run(&lb, &target.join("demo-cluster"), requests);
    }
    let slot = install_interrupt_teardown(DEMO_PREFIX)?;
    let config = root.join("examples").join("lb.toml");
    let log = target.join("demo").join("lb.log");

    println!("demo: building testbed {DEMO_PREFIX}");
    let mut topo = Topology::up(DEMO_PREFIX)?;
    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(topo.teardown_handle());
    topo.start_servers()?;

    let result = run_demo(&topo, &lb, &config, &log, requests);
    if result.is_err() {
        show_log(&log);
    }
    println!("demo: tearing down");
    drop(topo);
    result
}

fn run_demo(
    topo: &Topology,
    lb: &Path,
    config: &Path,
    log: &Path,
    requests: usize,
) -> Result<ExitCode> {
    let rust_log = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    println!(
        "demo: starting {} run --config {} (log: {})",
        lb.display(),
        config.display(),
        log.display()
    );
    let pid = daemon::spawn_lb_run(topo, lb, config, &rust_log, &[], log)?;
    let status = daemon::wait_until_answering(
        topo,
        pid,
        lb,
        DEMO_SOCKET,
        Duration::from_secs(15),
        Duration::from_millis(250),
    )?;
    println!("demo: lb is up\n{}", status.trim_end());

    println!(
        "demo: {requests} HTTP requests, each on a new connection, client -> http://{}/",
        testbed::VIP
    );
    let url = format!("http://{}/", testbed::VIP);
    let mut counts = [0usize; 3];
    let mut failures = Vec::new();
    let started = Instant::now();
    for _ in 0..requests {
        let out = topo.exec_unchecked(
            Role::Client,
            &[
                "curl",
                "-s",
                "--max-time",
                "5",
                "-H",
                "Connection: close",
                &url,
            ],
        )?;
        let body = String::from_utf8_lossy(&out.stdout);
        match testbed::server_of(&body) {
            Some(n) if out.status.success() => counts[n - 1] += 1,
            _ => failures.push(format!("curl {}: {:?}", out.status, body.trim())),
        }
    }
    let took = started.elapsed().as_secs_f64();

    // The weights the running balancer was configured with (examples/lb.toml).
    let weights = configured_weights(lb)?;
    let total_weight: u32 = weights.iter().sum();
    println!();
    println!("server  address        weight  answers   share  expected");
    for i in 0..3 {
        println!(
            "s{}      {:<13}  {:>6}  {:>7}  {:>5.1}%  {:>7.1}%",
            i + 1,
            testbed::SERVER_IPS[i],
            weights[i],
            counts[i],
            100.0 * counts[i] as f64 / requests.max(1) as f64,
            100.0 * f64::from(weights[i]) / f64::from(total_weight.max(1))
        );
    }
    println!("failed                         {:>7}", failures.len());
    println!("({requests} requests in {took:.1}s)");
    for f in failures.iter().take(5) {
        println!("  e.g. {f}");
    }
    println!();

    let mut ok = failures.is_empty();
    for what in ["stats", "flows"] {
        println!("$ lb --socket {DEMO_SOCKET} {what}");
        match lb_cli(lb, &[what]) {
            Ok(text) if what == "flows" => {
                // Which client is mapped to which backend; the head is enough to see it.
                let lines: Vec<&str> = text.lines().collect();
                let shown = lines.len().min(12);
                for line in &lines[..shown] {
                    println!("{line}");
                }
                if lines.len() > shown {
                    println!("... ({} more lines)", lines.len() - shown);
                }
                println!();
            }
            Ok(text) => println!("{text}"),
            Err(e) => {
                println!("failed: {e:#}");
                ok = false;
            }
        }
    }

    println!("demo: stopping lb (SIGTERM to pid {pid})");
    let status = topo.stop_child(pid)?;
    if !status.success() {
        println!("demo: warning: lb exited with {status}");
    }
    if ok {
        println!("demo: OK, all {requests} requests answered");
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "demo: FAILED ({} of {requests} requests failed)",
            failures.len()
        );
        Ok(ExitCode::FAILURE)
    }
}

/// Weights of the three servers in the demo's "web" service, as the daemon reports.
fn configured_weights(lb: &Path) -> Result<[u32; 3]> {
    let stats: serde_json::Value = serde_json::from_str(&lb_cli(lb, &["stats", "--json"])?)?;
    let mut weights = [0u32; 3];
    let services = stats["services"].as_array().into_iter().flatten();
    for service in services.filter(|s| s["name"] == "web") {
        for backend in service["backends"].as_array().into_iter().flatten() {
            let address = backend["address"].as_str().unwrap_or_default();
            for (i, ip) in testbed::SERVER_IPS.iter().enumerate() {
                if address.split(':').next() == Some(&ip.to_string()) {
                    weights[i] = backend["weight"].as_u64().unwrap_or(0) as u32;
                }
            }
        }
    }
    Ok(weights)
}

/// `lb --socket DEMO_SOCKET args...`, trailing whitespace trimmed.
fn lb_cli(lb: &Path, args: &[&str]) -> Result<String> {
    Ok(daemon::lb_cli(lb, DEMO_SOCKET, args)?
        .trim_end()
        .to_string())
}

fn show_log(log: &Path) {
    match std::fs::read_to_string(log) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(60);
            eprintln!(
                "---- {} (last {} lines) ----",
                log.display(),
                lines.len() - from
            );
            for l in &lines[from..] {
                eprintln!("{l}");
            }
            eprintln!("---- end of log ----");
        }
        Err(e) => eprintln!("(no lb log at {}: {e})", log.display()),
    }
}

/// Runs the benchmarks from a release build: `cargo xtask` is a debug build, so it
/// builds the release binaries and re-executes the release xtask, which does the work.
fn bench(
    quick: bool,
    [kernel_only, e2e_only, controller_only, cluster_only]: [bool; 4],
    baseline_lb: Option<PathBuf>,
) -> Result<()> {
    let root = workspace_root();
    let target = target_dir(&root);
    if cfg!(debug_assertions) {
        setup::run()?;
        cargo(
            &root,
            &[
                "build",
                "--release",
                "-p",
                "lb-userspace",
                "-p",
                "xtask",
                "--bins",
            ],
        )?;
        let mut cmd = Command::new(target.join("release/xtask"));
        cmd.arg("bench");
        if quick {
            cmd.arg("--quick");
        }
        if kernel_only {
            cmd.arg("--kernel-only");
        }
        if e2e_only {
            cmd.arg("--e2e-only");
        }
        if controller_only {
            cmd.arg("--controller-only");
        }
        if cluster_only {
            cmd.arg("--cluster-only");
        }
        if let Some(path) = &baseline_lb {
            cmd.arg("--baseline-lb").arg(path);
        }
        let status = cmd.status().context("running the release xtask")?;
        if !status.success() {
            bail!("bench failed: {status}");
        }
        return Ok(());
    }
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        bail!("`cargo xtask bench` needs root (XDP, BPF_PROG_TEST_RUN, network namespaces)");
    }
    xtask::bench::run(&xtask::bench::BenchOptions {
        quick,
        kernel_only,
        e2e_only,
        controller_only,
        cluster_only,
        baseline_lb,
        root: root.clone(),
        out_dir: target.join("bench"),
        lb_binary: target.join("release/lb"),
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_test_result;

    #[test]
    fn test_result_lines() {
        let ok = "test result: ok. 8 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s";
        assert_eq!(parse_test_result(ok), Some((8, 0)));
        let bad = "test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 8 filtered out";
        assert_eq!(parse_test_result(bad), Some((0, 1)));
        assert_eq!(parse_test_result("running 3 tests"), None);
    }
}
