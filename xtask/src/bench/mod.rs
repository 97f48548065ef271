//! `cargo xtask bench`: per-packet cost (test_run), end to end over veth beside kernel
//! routing and nftables, and scale. Writes target/bench/report.{md,json} and e2e.svg.
//! Nothing here fails on a number: every figure is printed next to its baselines of the
//! same run.

pub mod cluster;
pub mod controller;
pub mod e2e;
pub mod kernel;
pub mod model;
pub mod report;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};

use model::{Environment, Report, Target};

pub struct BenchOptions {
    pub quick: bool,
    /// Skip group 2 and the start-up measurements (both need veth traffic).
    pub kernel_only: bool,
    /// Skip group 1 and the scale group (test_run).
    pub e2e_only: bool,
    /// Only the controller-at-scale group.
    pub controller_only: bool,
    /// Only the cluster group (flow sharing and convergence, BIRD).
    pub cluster_only: bool,
    /// A previous revision's `lb`, measured beside this one in the controller group.
    pub baseline_lb: Option<PathBuf>,
    pub root: PathBuf,
    pub out_dir: PathBuf,
    pub lb_binary: PathBuf,
}

fn cmd_out(cmd: &str, args: &[&str], dir: &Path) -> String {
    Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn environment(opts: &BenchOptions) -> Environment {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown".into());
    let dirty = !cmd_out(
        "git",
        &["status", "--porcelain", "--untracked-files=no"],
        &opts.root,
    )
    .is_empty();
    Environment {
        kernel: cmd_out("uname", &["-r"], &opts.root),
        cpu,
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        profile: if cfg!(debug_assertions) {
            "debug".into()
        } else {
            "release".into()
        },
        git_revision: format!(
            "{}{}",
            cmd_out("git", &["rev-parse", "HEAD"], &opts.root),
            if dirty {
                " (with uncommitted changes)"
            } else {
                ""
            }
        ),
        mode: if opts.quick {
            "quick".into()
        } else {
            "full".into()
        },
        started: cmd_out("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"], &opts.root),
        duration_s: 0.0,
    }
}

pub fn run(opts: &BenchOptions) -> Result<Report> {
    let start = Instant::now();
    std::fs::create_dir_all(&opts.out_dir)?;
    let mut report = Report {
        env: environment(opts),
        ..Report::default()
    };
    let kparams = if opts.quick {
        kernel::KernelParams {
            repeat: 1_000_000,
            runs: 5,
            scale_flows: vec![1_000, 100_000],
            maglev_backends: vec![10, 100, 1000],
        }
    } else {
        kernel::KernelParams {
            repeat: 1_000_000,
            runs: 7,
            scale_flows: vec![1_000, 100_000, 1_000_000, 4_000_000],
            maglev_backends: vec![10, 100, 1000],
        }
    };
    report.repeat = kparams.repeat;
    report.runs = kparams.runs;
    if opts.e2e_only || opts.controller_only || opts.cluster_only {
        report.notes.push(
            "per-packet, scale and Maglev groups not run (--e2e-only, --controller-only or --cluster-only).".into(),
        );
    } else {
        println!("bench: group 1 + scale: BPF_PROG_TEST_RUN");
        let ns_name = format!("{}-kb", lb_testbed::unique_prefix());
        let netns = kernel::bench_netns(&ns_name)?;
        let k = netns.run(move || kernel::run(&kparams))??;
        drop(netns);
        report.floor_direct_ns = k.floor_direct_ns;
        report.wrapper_ns = k.wrapper_ns;
        report.paths = k.paths;
        report.syn_proxy = k.syn_proxy;
        report.scale = k.scale;
        report.maglev = k.maglev;
    }

    let eparams = e2e::E2eParams {
        runs: if opts.quick { 1 } else { 3 },
        seconds: if opts.quick { 2 } else { 5 },
        lb_binary: opts.lb_binary.clone(),
        out_dir: opts.out_dir.clone(),
        startup: if opts.quick {
            vec![(100, 1_000)]
        } else {
            vec![(100, 1_000), (10_000, 100_000)]
        },
    };
    if !opts.kernel_only && !opts.cluster_only {
        println!("bench: group 2: end to end over veth");
    }
    if opts.kernel_only {
        report.notes.push(
            "--kernel-only: end-to-end, controller and cluster groups and start-up times not run."
                .into(),
        );
    } else if opts.cluster_only {
        report
            .notes
            .push("--cluster-only: only the cluster group ran.".into());
    } else {
        if !opts.controller_only {
            let (e2e, startup) = e2e::run(&eparams)?;
            report.e2e = e2e;
            report.startup = startup;
        }
        report.controller = controller::run(&controller::ControllerParams {
            lb_binary: opts.lb_binary.clone(),
            baseline_lb: opts.baseline_lb.clone(),
            out_dir: opts.out_dir.clone(),
            entries: if opts.quick {
                vec![1_000, 1_000_000]
            } else {
                vec![1_000, 1_000_000, 4_000_000]
            },
        })?;
    }
    if !(opts.kernel_only || opts.e2e_only || opts.controller_only) {
        println!("bench: group 4: a cluster of three sharing flows (BIRD, ECMP)");
        report.cluster = Some(cluster::run(&cluster::ClusterParams {
            lb_binary: opts.lb_binary.clone(),
            out_dir: opts.out_dir.clone(),
            new_flows: if opts.quick { 500 } else { 2000 },
            move_flows: if opts.quick { 100 } else { 300 },
        })?);
    }
    report.targets = targets(&report);
    report.notes.extend(notes(&report));
    report.env.duration_s = start.elapsed().as_secs_f64();
    write(&report, &opts.out_dir)?;
    Ok(report)
}

fn targets(r: &Report) -> Vec<Target> {
    let mut t: Vec<Target> = r
        .paths
        .iter()
        .filter_map(|p| {
            let goal = model::packet_target(&p.name)?;
            Some(Target {
                name: p.name.clone(),
                goal: format!("≤ {goal:.0} ns"),
                measured: format!("{:.1} ns", p.net_ns),
                met: Some(p.net_ns <= goal),
            })
        })
        .collect();
    t.extend(e2e_targets(&r.e2e));
    let biggest = r
        .controller
        .iter()
        .filter(|c| c.binary == "this revision")
        .max_by_key(|c| c.entries);
    for (name, goal, value) in [
        ("idle daemon CPU", 5.0, biggest.map(|c| c.daemon_cpu_pct)),
        ("`lb status` latency", 100.0, biggest.map(|c| c.status_ms)),
        ("scrape latency", 100.0, biggest.map(|c| c.scrape_ms)),
    ] {
        let unit = if name.contains("CPU") {
            "% of a core"
        } else {
            "ms"
        };
        t.push(Target {
            name: format!(
                "{name} at {} flow entries",
                biggest.map_or(0, |c| c.entries)
            ),
            goal: format!("≤ {goal} {unit}"),
            measured: value.map_or("–".into(), |v| format!("{v:.1} {unit}")),
            met: value.map(|v| v <= goal),
        });
    }
    let small = r.scale.iter().find(|s| s.flows == 1_000);
    let big = r
        .scale
        .iter()
        .find(|s| s.flows == 4_000_000 && s.working_set == s.flows);
    t.push(Target {
        name: "established cost at 4 M flows".into(),
        goal: "≤ 1.3× the cost at 1 k".into(),
        measured: match (small, big) {
            (Some(s), Some(b)) if s.net_ns > 0.0 => format!("{:.2}×", b.net_ns / s.net_ns),
            _ => "not run (full mode only)".into(),
        },
        met: match (small, big) {
            (Some(s), Some(b)) if s.net_ns > 0.0 => Some(b.net_ns / s.net_ns <= 1.3),
            _ => None,
        },
    });
    t
}

/// The end-to-end targets (medians of the same run): native at least generic on every
/// row, and lb native against plain routing.
fn e2e_targets(e2e: &model::E2eResults) -> Vec<Target> {
    let column = |name: &str| e2e.configs.iter().position(|c| c.starts_with(name));
    let median = |row: &model::E2eRow, col: Option<usize>| {
        col.and_then(|i| row.cells.get(i)?.as_ref().map(|c| c.median))
    };
    let (routing, native, generic) = (
        column("kernel routing"),
        column("lb native"),
        column("lb generic"),
    );
    let ratio_target = |name: String, a: Option<f64>, b: Option<f64>, goal: f64| Target {
        name,
        goal: format!("≥ {goal}×"),
        measured: match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
            _ => "–".into(),
        },
        met: match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b >= goal),
            _ => None,
        },
    };
    let mut t = Vec::new();
    for row in &e2e.rows {
        t.push(ratio_target(
            format!("{}: native / generic", row.metric),
            median(row, native),
            median(row, generic),
            1.0,
        ));
    }
    for (metric, goal) in [
        ("UDP 64 B payload", 1.2),
        ("new TCP connections", 1.0),
        ("TCP 1 stream", 1.2),
    ] {
        if let Some(row) = e2e.rows.iter().find(|r| r.metric == metric) {
            t.push(ratio_target(
                format!("{metric}: native / routing"),
                median(row, native),
                median(row, routing),
                goal,
            ));
        }
    }
    t
}

/// A line per baseline and row that is far below plain routing: such a baseline is more
/// likely crippled by the testbed than slow, and a ratio against it means little.
fn baseline_checks(e2e: &model::E2eResults) -> Vec<String> {
    let Some(routing) = e2e
        .configs
        .iter()
        .position(|c| c.starts_with("kernel routing"))
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for row in &e2e.rows {
        let Some(base) = row
            .cells
            .get(routing)
            .and_then(|c| c.as_ref())
            .map(|c| c.median)
        else {
            continue;
        };
        for (i, config) in e2e.configs.iter().enumerate() {
            if i == routing || config.starts_with("lb ") {
                continue;
            }
            if let Some(cell) = row.cells.get(i).and_then(|c| c.as_ref())
                && base > 0.0
                && cell.median / base < 0.5
            {
                out.push(format!(
                    "Baseline check: {config} reaches only {:.2}× routing on \"{}\"; check it before quoting a ratio against it.",
                    cell.median / base,
                    row.metric
                ));
            }
        }
    }
    out
}

fn notes(r: &Report) -> Vec<String> {
    let mut n = vec![
        "Per-packet numbers are kernel-measured ns per repeat (whole ns, averaged by the kernel over the repeats of a run) minus the wrapper's cost; the raw figures are in the table and report.json.".to_string(),
        "lb runs its services in full-NAT mode; the nftables baseline does the same job (jhash DNAT over the three servers, SNAT to the balancer's internal address, conntrack). Web backends are nginx (one worker per server); the UDP load cycles over 1,004 source ports. No IPVS baseline: this kernel has no ip_vs.".to_string(),
    ];
    n.extend(baseline_checks(&r.e2e));
    if r.targets.iter().any(|t| t.met == Some(false)) {
        n.push("Some targets are missed: see \"Where the time goes\" in docs/bench/README.md (verifier instruction counts, xlated dump, before/after experiments; no hardware counters on this machine).".into());
    }
    n.push("Scale rows go through the wrapper's new-source rewrite (two more bpf_xdp_store_bytes and a map update per repeat, not subtracted), so compare them with each other, not with the established rows above. Their entries carry a cached next hop. Every row runs the same repeats per run, cycling over its working set; the row of the largest table over the first entries only shows what the table's size costs apart from the spread of the entries touched (see \"Where the time goes\").".into());
    n
}

pub fn write(report: &Report, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let md = report::markdown(report);
    std::fs::write(dir.join("report.md"), &md).context("writing report.md")?;
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&report.to_json())? + "\n",
    )?;
    std::fs::write(dir.join("e2e.svg"), report::svg(&report.e2e))?;
    std::fs::write(dir.join("packet.svg"), report::packet_svg(&report.paths))?;
    println!("{md}");
    println!(
        "bench: wrote {}/report.md, report.json, e2e.svg, packet.svg",
        dir.display()
    );
    Ok(())
}
