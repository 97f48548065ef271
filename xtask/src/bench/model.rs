//! The numbers of one bench run, as the report writers see them.

use serde_json::{Value, json};

/// Median of the samples (mean of the middle two for an even count); 0 when empty.
pub fn median(samples: &[f64]) -> f64 {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

/// The per-packet targets: net ns through the wrapper, by the start of a path's name.
pub const PACKET_TARGETS: [(&str, f64); 6] = [
    ("non-VIP pass", 24.0),
    ("established TCP forward", 50.0),
    ("established TCP reverse", 50.0),
    ("established UDP", 50.0),
    ("first packet of a TCP flow", 450.0),
    ("first UDP datagram", 450.0),
];

/// The target of the path named `name`, if it has one.
pub fn packet_target(name: &str) -> Option<f64> {
    PACKET_TARGETS
        .iter()
        .find(|(prefix, _)| name.starts_with(prefix))
        .map(|(_, goal)| *goal)
}

/// Where and how the numbers were produced.
#[derive(Clone, Debug, Default)]
pub struct Environment {
    pub kernel: String,
    pub cpu: String,
    pub cpus: usize,
    pub profile: String,
    pub git_revision: String,
    pub mode: String,
    pub started: String,
    pub duration_s: f64,
}

/// One path through the program, measured with test_run.
#[derive(Clone, Debug)]
pub struct KernelPath {
    pub name: String,
    /// ns per repeat of each run, wrapper included.
    pub runs_ns: Vec<f64>,
    pub raw_ns: f64,
    /// `raw_ns` minus the wrapper's own cost.
    pub net_ns: f64,
    pub floor_ratio: f64,
    pub verdict: String,
    /// What the checks after the runs proved about the path the repeats took.
    pub took: String,
}

#[derive(Clone, Debug)]
pub struct ScalePoint {
    pub flows: u32,
    /// How many of the `flows` entries the repeats cycle over (`flows` but for the
    /// extra row of the largest table with the smallest row's working set).
    pub working_set: u32,
    pub capacity: u32,
    pub runs_ns: Vec<f64>,
    pub raw_ns: f64,
    pub net_ns: f64,
    pub map_bytes: u64,
    pub bytes_per_entry: f64,
    pub fill_s: f64,
}

#[derive(Clone, Debug)]
pub struct MaglevTiming {
    pub backends: usize,
    pub build_s: f64,
    pub build_and_install_s: f64,
    /// Slots of the ring chosen for that many backends.
    pub ring_size: u32,
    pub slots_written: u64,
}

/// One end-to-end metric for one configuration: samples and their median.
#[derive(Clone, Debug)]
pub struct E2eCell {
    pub samples: Vec<f64>,
    pub median: f64,
}

impl E2eCell {
    pub fn new(samples: Vec<f64>) -> E2eCell {
        let median = median(&samples);
        E2eCell { samples, median }
    }
}

/// One row of the end-to-end comparison: a metric over every configuration.
#[derive(Clone, Debug)]
pub struct E2eRow {
    pub metric: String,
    pub unit: String,
    /// In the order of `E2eResults::configs`; None where the measurement failed.
    pub cells: Vec<Option<E2eCell>>,
}

#[derive(Clone, Debug, Default)]
pub struct E2eResults {
    pub configs: Vec<String>,
    pub rows: Vec<E2eRow>,
    pub notes: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Startup {
    pub services: usize,
    pub backends: usize,
    pub seconds: Option<f64>,
    pub note: String,
}

/// The controller with a filled flow table (group 3).
#[derive(Clone, Debug)]
pub struct ControllerPoint {
    /// "this revision", or the path of the baseline `lb`.
    pub binary: String,
    pub entries: usize,
    pub capacity: usize,
    /// Writing the entries with batch updates.
    pub fill_s: f64,
    /// The idle daemon's CPU, percent of one core, over a 10 s window.
    pub daemon_cpu_pct: f64,
    /// `lb status --json`, process start to exit, median.
    pub status_ms: f64,
    /// One metrics scrape (curl's total time), median.
    pub scrape_ms: f64,
    /// The collector's last pass, from `lb_gc_pass_seconds`.
    pub gc_pass_ms: f64,
    /// Reading the whole table from the bench process: batch lookups, per-entry walk.
    pub batch_read_ms: f64,
    pub walk_read_ms: f64,
}

#[derive(Clone, Debug)]
pub struct Target {
    pub name: String,
    pub goal: String,
    pub measured: String,
    pub met: Option<bool>,
}

/// Install lag of the new flows one instance got from its peers (`lb peers`).
#[derive(Clone, Debug, Default)]
pub struct InstanceLag {
    pub instance: usize,
    pub samples: u64,
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

/// One step of the scale-out scenario, timed to the routers' convergence.
#[derive(Clone, Debug, Default)]
pub struct ConvergenceStep {
    pub step: String,
    pub seconds: f64,
    pub baseline: String,
    pub baseline_seconds: f64,
    pub note: String,
}

/// The cluster group (`bench/cluster.rs`).
#[derive(Clone, Debug, Default)]
pub struct ClusterResults {
    pub instances: usize,
    /// Short connections opened, and those that failed.
    pub connections: u64,
    pub failed_connections: u64,
    /// Flows the data paths created meanwhile (all instances).
    pub new_flows: u64,
    /// Announcements and their bytes (whole frames) sent meanwhile, all instances.
    pub announcements: u64,
    pub announcement_bytes: u64,
    /// Encoded size of one announcement record.
    pub record_bytes: usize,
    pub install_lag: Vec<InstanceLag>,
    /// Median ping round trip between two instances' peer addresses.
    pub network_rtt_ms: f64,
    pub steps: Vec<ConvergenceStep>,
    pub vip_move: Option<VipMoveResult>,
}

/// One `lb vip move` of the owned VIP with long-lived connections on it.
#[derive(Clone, Debug, Default)]
pub struct VipMoveResult {
    /// Connections on the VIP during the move, and how many broke.
    pub flows: u64,
    pub broken: u64,
    /// From the request to the front router sending the VIP to the target alone.
    pub routes_s: f64,
    /// From the request to the target's `normal` (after its drain window).
    pub normal_s: f64,
    /// The drain window, included in `normal_s`.
    pub drain_s: f64,
    /// Announcement bytes the source sent during the move (the stream, whole frames).
    pub bytes: u64,
}

impl VipMoveResult {
    pub fn bytes_per_1000_flows(&self) -> f64 {
        per(self.bytes * 1000, self.flows)
    }
}

impl ClusterResults {
    pub fn bytes_per_new_flow(&self) -> f64 {
        per(self.announcement_bytes, self.new_flows)
    }

    pub fn announcements_per_new_flow(&self) -> f64 {
        per(self.announcements, self.new_flows)
    }

    /// The least a new flow can cost: one record to each peer, no framing.
    pub fn floor_bytes_per_new_flow(&self) -> f64 {
        (self.record_bytes * self.instances.saturating_sub(1)) as f64
    }
}

fn per(total: u64, count: u64) -> f64 {
    if count == 0 {
        0.0
    } else {
        total as f64 / count as f64
    }
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub env: Environment,
    pub repeat: u32,
    pub runs: usize,
    pub floor_direct_ns: f64,
    pub wrapper_ns: f64,
    pub paths: Vec<KernelPath>,
    pub syn_proxy: String,
    pub scale: Vec<ScalePoint>,
    pub maglev: Vec<MaglevTiming>,
    pub startup: Vec<Startup>,
    pub controller: Vec<ControllerPoint>,
    pub e2e: E2eResults,
    pub cluster: Option<ClusterResults>,
    pub targets: Vec<Target>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn to_json(&self) -> Value {
        let e = &self.env;
        json!({
            "environment": {
                "kernel": e.kernel, "cpu": e.cpu, "cpus": e.cpus, "profile": e.profile,
                "git_revision": e.git_revision, "mode": e.mode, "started": e.started,
                "duration_s": e.duration_s,
            },
            "per_packet": {
                "repeat": self.repeat,
                "runs": self.runs,
                "floor_direct_ns": self.floor_direct_ns,
                "wrapper_ns": self.wrapper_ns,
                "paths": self.paths.iter().map(|p| json!({
                    "name": p.name, "runs_ns": p.runs_ns, "raw_ns": p.raw_ns,
                    "net_ns": p.net_ns, "mpps_one_core": mpps(p.net_ns),
                    "floor_ratio": p.floor_ratio, "verdict": p.verdict, "took": p.took,
                })).collect::<Vec<_>>(),
                "syn_proxy": self.syn_proxy,
            },
            "end_to_end": {
                "configs": self.e2e.configs,
                "rows": self.e2e.rows.iter().map(|r| json!({
                    "metric": r.metric, "unit": r.unit,
                    "cells": r.cells.iter().map(|c| c.as_ref().map(|c| json!({
                        "samples": c.samples, "median": c.median,
                    }))).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "notes": self.e2e.notes,
            },
            "scale": {
                "flows": self.scale.iter().map(|s| json!({
                    "flows": s.flows, "working_set": s.working_set, "capacity": s.capacity, "runs_ns": s.runs_ns,
                    "raw_ns": s.raw_ns, "net_ns": s.net_ns, "map_bytes": s.map_bytes,
                    "bytes_per_entry": s.bytes_per_entry,
                    "bytes_per_connection": 2.0 * s.bytes_per_entry, "fill_s": s.fill_s,
                })).collect::<Vec<_>>(),
                "maglev": self.maglev.iter().map(|m| json!({
                    "backends": m.backends, "build_s": m.build_s,
                    "build_and_install_s": m.build_and_install_s, "slots_written": m.slots_written, "ring_size": m.ring_size,
                })).collect::<Vec<_>>(),
                "controller": self.controller.iter().map(|c| json!({
                    "binary": c.binary, "entries": c.entries, "capacity": c.capacity, "fill_s": c.fill_s,
                    "daemon_cpu_pct": c.daemon_cpu_pct, "status_ms": c.status_ms,
                    "scrape_ms": c.scrape_ms, "gc_pass_ms": c.gc_pass_ms,
                    "batch_read_ms": c.batch_read_ms, "walk_read_ms": c.walk_read_ms,
                })).collect::<Vec<_>>(),
                "startup": self.startup.iter().map(|s| json!({
                    "services": s.services, "backends": s.backends, "seconds": s.seconds,
                    "note": s.note,
                })).collect::<Vec<_>>(),
            },
            "cluster": self.cluster.as_ref().map(|c| json!({
                "instances": c.instances, "connections": c.connections,
                "failed_connections": c.failed_connections, "new_flows": c.new_flows,
                "announcements": c.announcements, "announcement_bytes": c.announcement_bytes,
                "bytes_per_new_flow": c.bytes_per_new_flow(),
                "announcements_per_new_flow": c.announcements_per_new_flow(),
                "floor_bytes_per_new_flow": c.floor_bytes_per_new_flow(),
                "network_rtt_ms": c.network_rtt_ms,
                "install_lag": c.install_lag.iter().map(|l| json!({
                    "instance": l.instance, "samples": l.samples, "p50_ms": l.p50_ms,
                    "p99_ms": l.p99_ms, "max_ms": l.max_ms,
                })).collect::<Vec<_>>(),
                "steps": c.steps.iter().map(|s| json!({
                    "step": s.step, "seconds": s.seconds, "baseline": s.baseline,
                    "baseline_seconds": s.baseline_seconds, "note": s.note,
                })).collect::<Vec<_>>(),
                "vip_move": c.vip_move.as_ref().map(|m| json!({
                    "flows": m.flows, "broken": m.broken, "routes_s": m.routes_s,
                    "normal_s": m.normal_s, "drain_s": m.drain_s, "bytes": m.bytes,
                    "bytes_per_1000_flows": m.bytes_per_1000_flows(),
                })),
            })),
            "targets": self.targets.iter().map(|t| json!({
                "name": t.name, "goal": t.goal, "measured": t.measured, "met": t.met,
            })).collect::<Vec<_>>(),
            "notes": self.notes,
        })
    }
}

/// Packets per second on one core, in millions, at `ns` per packet.
pub fn mpps(ns: f64) -> f64 {
    if ns > 0.0 { 1000.0 / ns } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[f64::NAN, 2.0]), 2.0);
    }

    #[test]
    fn mpps_is_inverse_ns() {
        assert_eq!(mpps(20.0), 50.0);
        assert_eq!(mpps(0.0), 0.0);
    }
}
