//! The controller at scale (group 3): `lb run` with a flow table filled to 1 k, 1 M and
//! 4 M entries, measuring what an operator pays for it while the data path is idle: the
//! daemon's CPU (its flow collector reads the whole table every second), the latency of
//! `lb status` and of a metrics scrape, and the collector's pass. The smallest table is
//! the baseline of the same run.
//!
//! Beside them, the two ways of reading the table from userspace, timed in this process
//! on the same map: one `BPF_MAP_LOOKUP_BATCH` per 16 k entries (what the daemon does)
//! and the per-entry walk (next key, then lookup: two syscalls an entry).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use lb_common::{
    FLOW_DIR_CLIENT_TO_SERVER, FLOW_DIR_SERVER_TO_CLIENT, FLOW_STATE_ESTABLISHED, FlowEntry,
    FlowKey, IPPROTO_TCP,
};
use lb_testbed::{self as testbed, Role, Topology, daemon};
use lb_userspace::dataplane::batch;
use lb_userspace::sys;

use super::model::ControllerPoint;

/// Metrics listener inside the LB namespace (its loopback).
const METRICS_ADDR: &str = "127.0.0.1:9464";
/// Repeats of each latency measurement (median reported).
const LATENCY_SAMPLES: usize = 5;
/// Largest table a `--baseline-lb` binary is measured with.
const BASELINE_MAX_ENTRIES: usize = 1_000_000;
/// Bounds of the window over which the daemon's CPU is sampled.
const CPU_WINDOW_MIN: Duration = Duration::from_secs(10);
const CPU_WINDOW_MAX: Duration = Duration::from_secs(150);

pub struct ControllerParams {
    pub lb_binary: PathBuf,
    /// Another `lb` (a previous revision's) measured the same way right after, for a
    /// same-run comparison.
    pub baseline_lb: Option<PathBuf>,
    pub out_dir: PathBuf,
    /// Flow-table entries per point, smallest (the baseline) first.
    pub entries: Vec<usize>,
}

fn config(name: &str, capacity: usize) -> String {
    format!(
        "name = \"{name}\"\n[interfaces]\nattach = [\"{}\", \"{}\"]\n\
         [control]\nsocket = \"/run/lb/{name}.sock\"\nmetrics = \"{METRICS_ADDR}\"\n\
         [limits]\nmax_flows = {capacity}\n\
         [[service]]\nname = \"web\"\nvip = \"{}\"\nport = 80\nsnat_ip = \"{}\"\n\
         [[service.backend]]\naddress = \"{}\"\n",
        testbed::LB_EXT_IF,
        testbed::LB_INT_IF,
        testbed::VIP,
        testbed::SNAT_IP,
        testbed::SERVER_IPS[0]
    )
}

/// `count` established entries in pairs, all seen just now (nothing expires during the
/// measurement): connection i from 198.18.128.0/17 to the VIP, and its reverse entry.
fn entries(count: usize) -> Vec<(FlowKey, FlowEntry)> {
    let now = sys::monotonic_ns();
    let client_base = u32::from_be_bytes([198, 18, 128, 0]);
    let mut out = Vec::with_capacity(count);
    for i in 0..count.div_ceil(2) {
        let client = std::net::Ipv4Addr::from(client_base + (i / 50_000) as u32);
        let port = 1024 + (i % 50_000) as u16;
        let snat_port = port;
        let server = testbed::SERVER_IPS[0];
        let snat = std::net::Ipv4Addr::from(u32::from(testbed::SNAT_IP) + (i / 50_000) as u32);
        let forward_key = FlowKey::new(client, port, testbed::VIP, 80, IPPROTO_TCP);
        let mut forward = FlowEntry {
            state: FLOW_STATE_ESTABLISHED,
            direction: FLOW_DIR_CLIENT_TO_SERVER,
            created_ns: now,
            last_seen_ns: now,
            ..FlowEntry::default()
        };
        forward.set_rewrite(
            std::net::SocketAddrV4::new(snat, snat_port),
            std::net::SocketAddrV4::new(server, 80),
        );
        let reverse_key = forward.peer_key(IPPROTO_TCP);
        let mut reverse = FlowEntry {
            direction: FLOW_DIR_SERVER_TO_CLIENT,
            ..forward
        };
        reverse.set_rewrite(
            std::net::SocketAddrV4::new(testbed::VIP, 80),
            std::net::SocketAddrV4::new(client, port),
        );
        out.push((forward_key, forward));
        if out.len() < count {
            out.push((reverse_key, reverse));
        }
    }
    out
}

/// User + system CPU time of `pid` so far.
fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) close with ')'.
    let rest = stat.rsplit_once(')').context("/proc/pid/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ')'.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

fn median_ms(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// One metrics scrape from inside the LB namespace: curl's own total time, and the body.
fn scrape(topo: &Topology) -> Result<(f64, String)> {
    let url = format!("http://{METRICS_ADDR}/metrics");
    let out = topo.exec(
        Role::Lb,
        &[
            "curl",
            "-sS",
            "--max-time",
            "30",
            "-w",
            "\n%{time_total}",
            &url,
        ],
    )?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, secs) = text.rsplit_once('\n').context("curl output")?;
    Ok((secs.trim().parse::<f64>()? * 1e3, body.to_string()))
}

fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits until the collector's summary counts `want` entries (its pass after the fill).
/// A daemon without that metric (an older revision) gets a fixed 5 s.
fn wait_for_pass(topo: &Topology, want: usize) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, body) = scrape(topo)?;
        if metric(&body, "lb_flow_entries").is_some_and(|n| n as usize >= want) {
            return Ok(body);
        }
        if !body.contains("lb_flow_entries") {
            std::thread::sleep(Duration::from_secs(5));
            return Ok(body);
        }
        ensure!(
            Instant::now() < deadline,
            "the collector never counted {want} entries: {:?}",
            metric(&body, "lb_flow_entries")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn measure(
    topo: &Topology,
    p: &ControllerParams,
    lb: &Path,
    prefix: &str,
    count: usize,
) -> Result<ControllerPoint> {
    let dir = p.out_dir.join("controller");
    std::fs::create_dir_all(&dir)?;
    // Room beyond the entries, so the LRU never evicts what was written.
    let capacity = (count + count / 4).max(16_384);
    let config_path = dir.join(format!("lb-{count}.toml"));
    std::fs::write(&config_path, config(prefix, capacity))?;
    let socket = format!("/run/lb/{prefix}.sock");
    let log = dir.join(format!("lb-{count}.log"));
    let pid = daemon::spawn_lb_run(topo, lb, &config_path, "warn", &[], &log)?;
    let result = (|| -> Result<ControllerPoint> {
        daemon::wait_until_answering(
            topo,
            pid,
            lb,
            &socket,
            Duration::from_secs(120),
            Duration::from_millis(50),
        )
        .with_context(|| std::fs::read_to_string(&log).unwrap_or_default())?;
        let pin = Path::new(sys::BPFFS)
            .join(prefix)
            .join(lb_common::map_names::FLOWS);
        let flows = MapData::from_pin(&pin).with_context(|| format!("open {}", pin.display()))?;
        let fill_start = Instant::now();
        let written = entries(count);
        batch::update_all(&flows, &written, 65_536)?;
        let fill_s = fill_start.elapsed().as_secs_f64();
        drop(written);
        let body = wait_for_pass(topo, count)?;
        let gc_pass_ms = metric(&body, "lb_gc_pass_seconds").unwrap_or(f64::NAN) * 1e3;

        // The window spans two of the collector's cycles (pass and wait), however long
        // they are at this size, so it sees the average, not a lull between passes.
        let cycle = Duration::from_secs_f64(gc_pass_ms.max(0.0) / 1e3);
        let window = (2 * (cycle + lb_userspace::flows::next_pass_delay(cycle)))
            .clamp(CPU_WINDOW_MIN, CPU_WINDOW_MAX);
        let cpu_before = cpu_time(pid)?;
        let window_start = Instant::now();
        std::thread::sleep(window);
        let cpu = cpu_time(pid)?.saturating_sub(cpu_before);
        let daemon_cpu_pct = 100.0 * cpu.as_secs_f64() / window_start.elapsed().as_secs_f64();

        let mut status = Vec::new();
        let mut scrapes = Vec::new();
        for _ in 0..LATENCY_SAMPLES {
            let t = Instant::now();
            daemon::lb_cli(lb, &socket, &["status", "--json"])?;
            status.push(t.elapsed().as_secs_f64() * 1e3);
            scrapes.push(scrape(topo)?.0);
        }

        let t = Instant::now();
        let read = batch::lookup_all::<FlowKey, FlowEntry>(&flows, batch::BATCH_ENTRIES)?;
        let batch_read_ms = t.elapsed().as_secs_f64() * 1e3;
        ensure!(
            read.len() >= count * 99 / 100,
            "batch read {} of {count}",
            read.len()
        );
        drop(read);
        let walk: BpfHashMap<MapData, FlowKey, FlowEntry> =
            BpfHashMap::try_from(Map::LruHashMap(flows))?;
        let t = Instant::now();
        let walked = walk.iter().filter(Result::is_ok).count();
        let walk_read_ms = t.elapsed().as_secs_f64() * 1e3;
        ensure!(walked >= count * 99 / 100, "walk read {walked} of {count}");
        Ok(ControllerPoint {
            binary: if lb == p.lb_binary {
                "this revision".into()
            } else {
                lb.display().to_string()
            },
            entries: count,
            capacity,
            fill_s,
            daemon_cpu_pct,
            status_ms: median_ms(status),
            scrape_ms: median_ms(scrapes),
            gc_pass_ms,
            batch_read_ms,
            walk_read_ms,
        })
    })();
    let stopped = topo.stop_child(pid);
    let mut point = result?;
    let clean = stopped.as_ref().is_ok_and(|status| status.success());
    if lb == p.lb_binary {
        ensure!(clean, "lb did not exit cleanly: {stopped:?}");
    } else if !clean {
        // A baseline's failure is a finding, not the bench's. Killed, it left its pins.
        point
            .binary
            .push_str(" (did not exit within the SIGTERM grace: killed)");
        let _ = std::fs::remove_dir_all(Path::new(sys::BPFFS).join(prefix));
    }
    Ok(point)
}

pub fn run(p: &ControllerParams) -> Result<Vec<ControllerPoint>> {
    let prefix = testbed::unique_prefix();
    let mut topo = Topology::up(&prefix)?;
    let mut points = Vec::new();
    let mut failure = None;
    let binaries: Vec<&Path> = std::iter::once(p.lb_binary.as_path())
        .chain(p.baseline_lb.as_deref())
        .collect();
    'points: for &count in &p.entries {
        for lb in &binaries {
            // The baseline is a previous revision: at the largest tables its per-entry
            // walk takes so long per request that one point would take many minutes.
            if *lb != p.lb_binary.as_path() && count > BASELINE_MAX_ENTRIES {
                continue;
            }
            println!(
                "bench: controller with {count} flow entries ({})",
                lb.display()
            );
            match measure(&topo, p, lb, &prefix, count) {
                Ok(point) => points.push(point),
                Err(e) => {
                    failure = Some(e.context(format!("controller with {count} entries")));
                    break 'points;
                }
            }
        }
    }
    topo.teardown();
    match failure {
        Some(e) => Err(e),
        None => Ok(points),
    }
}
