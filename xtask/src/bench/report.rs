//! Writers of `target/bench/report.md`, `report.json`, `e2e.svg` and `packet.svg`.

use std::fmt::Write as _;

use super::model::{ClusterResults, E2eResults, KernelPath, Report, mpps, packet_target};

fn ratio(a: f64, b: f64) -> String {
    if a > 0.0 && b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "–".into()
    }
}

/// The run farthest from the median, relative to the median: "± x %".
fn spread(runs: &[f64]) -> String {
    let median = super::model::median(runs);
    if runs.is_empty() || median <= 0.0 {
        return "–".into();
    }
    let farthest = runs.iter().map(|r| (r - median).abs()).fold(0.0, f64::max);
    format!("± {:.1} %", 100.0 * farthest / median)
}

fn si(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.2} G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} k", v / 1e3)
    } else {
        format!("{v:.1}")
    }
}

/// The end-to-end table: medians, then ratios to nftables and to plain routing.
pub fn e2e_table(e2e: &E2eResults) -> String {
    let mut out = String::new();
    let nft = e2e.configs.iter().position(|c| c.starts_with("nftables"));
    let routing = e2e
        .configs
        .iter()
        .position(|c| c.starts_with("kernel routing"));
    let _ = write!(out, "| metric |");
    for c in &e2e.configs {
        let _ = write!(out, " {c} |");
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "|---|{}", "---:|".repeat(e2e.configs.len()));
    for row in &e2e.rows {
        let _ = write!(out, "| {} ({}) |", row.metric, row.unit);
        let base = |i: Option<usize>| i.and_then(|i| row.cells[i].as_ref()).map(|c| c.median);
        for cell in &row.cells {
            match cell {
                Some(c) => {
                    let _ = write!(
                        out,
                        " {} (vs nft {}, vs routing {}) |",
                        si(c.median),
                        ratio(c.median, base(nft).unwrap_or(0.0)),
                        ratio(c.median, base(routing).unwrap_or(0.0))
                    );
                }
                None => out.push_str(" failed |"),
            }
        }
        let _ = writeln!(out);
    }
    out
}

/// The per-packet table (group 1).
pub fn per_packet_table(r: &Report) -> String {
    let mut out = String::from(
        "| path | ns/packet (net) | target | Mpps, 1 core | × floor | raw ns (with wrapper) | runs (raw ns) | what the repeats did |\n|---|---:|---:|---:|---:|---:|---|---|\n",
    );
    let _ = writeln!(
        out,
        "| floor program, direct | {:.1} | – | {:.1} | 1.00× | – | – | XDP_TX (MAC swap twice = identity) |",
        r.floor_direct_ns,
        mpps(r.floor_direct_ns)
    );
    let _ = writeln!(
        out,
        "| wrapper → null (overhead, subtracted below) | {:.1} | – | – | – | {:.1} | – | XDP_TX |",
        r.wrapper_ns, r.wrapper_ns
    );
    for p in &r.paths {
        let runs: Vec<String> = p.runs_ns.iter().map(|v| format!("{v:.0}")).collect();
        let _ = writeln!(
            out,
            "| {} | {:.1} | {} | {:.1} | {:.2}× | {:.1} | {} | {} |",
            p.name,
            p.net_ns,
            packet_target(&p.name).map_or("–".into(), |goal| {
                let mark = if p.net_ns <= goal { "met" } else { "missed" };
                format!("≤ {goal:.0} ({mark})")
            }),
            mpps(p.net_ns),
            p.floor_ratio,
            p.raw_ns,
            runs.join(", "),
            p.took
        );
    }
    out
}

/// Group 4: flow sharing's cost per new flow, then the convergence of each step.
pub fn cluster_section(c: &ClusterResults) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## 4. A cluster sharing flows (scale-out testbed, BIRD, {} instances)\n",
        c.instances
    );
    let _ = writeln!(
        out,
        "{} short TCP echo connections through the front router's ECMP ({} failed), {} new flows made.\n",
        c.connections, c.failed_connections, c.new_flows
    );
    let _ = writeln!(
        out,
        "| install lag at (creation at the owner → installed here) | new flows | p50 | p99 | max |\n|---|---:|---:|---:|---:|"
    );
    for l in &c.install_lag {
        let _ = writeln!(
            out,
            "| instance {} | {} | {} ms | {} ms | {} ms |",
            l.instance, l.samples, l.p50_ms, l.p99_ms, l.max_ms
        );
    }
    let _ = writeln!(
        out,
        "\nBaseline: ping round trip between two instances {:.3} ms; the sender gathers a batch for up to 5 ms. Whole milliseconds (the wire's resolution).\n",
        c.network_rtt_ms
    );
    let _ = writeln!(
        out,
        "| announced per new flow | measured | floor (one {}-byte record to each of {} peers) | × floor |\n|---|---:|---:|---:|",
        c.record_bytes,
        c.instances.saturating_sub(1)
    );
    let _ = writeln!(
        out,
        "| bytes (whole frames, every event of the flow: created, established, closing, removed) | {:.0} | {:.0} | {} |",
        c.bytes_per_new_flow(),
        c.floor_bytes_per_new_flow(),
        ratio(c.bytes_per_new_flow(), c.floor_bytes_per_new_flow())
    );
    let _ = writeln!(
        out,
        "| announcements | {:.2} | {} | {} |",
        c.announcements_per_new_flow(),
        c.instances.saturating_sub(1),
        ratio(
            c.announcements_per_new_flow(),
            c.instances.saturating_sub(1) as f64
        )
    );
    let _ = writeln!(
        out,
        "\n| step | converged in | baseline (same run) | baseline | × baseline | note |\n|---|---:|---|---:|---:|---|"
    );
    for s in &c.steps {
        let _ = writeln!(
            out,
            "| {} | {:.3} s | {} | {:.3} s | {} | {} |",
            s.step,
            s.seconds,
            s.baseline,
            s.baseline_seconds,
            ratio(s.seconds, s.baseline_seconds),
            s.note
        );
    }
    if let Some(m) = &c.vip_move {
        let floor = (c.record_bytes * 1000) as f64;
        let _ = writeln!(
            out,
            "\n| `lb vip move` of the owned VIP, {} connections on it ({} broken) | measured | baseline (same run) | × baseline |\n|---|---:|---:|---:|",
            m.flows, m.broken
        );
        let bird = c
            .steps
            .iter()
            .find(|s| s.baseline.starts_with("BIRD alone withdrawing"))
            .map_or(0.0, |s| s.baseline_seconds)
            + c.steps
                .iter()
                .find(|s| s.baseline.starts_with("BIRD alone announcing"))
                .map_or(0.0, |s| s.baseline_seconds);
        let _ = writeln!(
            out,
            "| request → the front router sends it to the target alone | {:.3} s | {:.3} s (BIRD alone: withdraw + announce) | {} |",
            m.routes_s,
            bird,
            ratio(m.routes_s, bird)
        );
        let _ = writeln!(
            out,
            "| request → the target `normal` (drain window {:.0} s included) | {:.3} s | {:.3} s (BIRD alone + the drain window) | {} |",
            m.drain_s,
            m.normal_s,
            bird + m.drain_s,
            ratio(m.normal_s, bird + m.drain_s)
        );
        let _ = writeln!(
            out,
            "| bytes sent per 1,000 flows (the stream, whole frames) | {:.0} | {floor:.0} (one {}-byte record each) | {} |",
            m.bytes_per_1000_flows(),
            c.record_bytes,
            ratio(m.bytes_per_1000_flows(), floor)
        );
    }
    out
}

pub fn markdown(r: &Report) -> String {
    let e = &r.env;
    let mut out = String::new();
    let _ = writeln!(out, "# lb benchmark report ({})\n", e.mode);
    let _ = writeln!(
        out,
        "- kernel: {}\n- CPU: {} ({} CPUs)\n- build profile: {}\n- git revision: {}\n- started: {}, took {:.0} s\n",
        e.kernel, e.cpu, e.cpus, e.profile, e.git_revision, e.started, e.duration_s
    );
    let _ = writeln!(
        out,
        "## 1. Per-packet cost in the kernel (BPF_PROG_TEST_RUN)\n"
    );
    let _ = writeln!(
        out,
        "repeat {} per run, median of {} runs. Each repeat goes through `bench_wrapper`, which restores the packet (or writes a new source for first-packet paths) and tail-calls the program; its cost (wrapper → null) is subtracted. \"× floor\" divides by the floor program run directly.\n",
        r.repeat, r.runs
    );
    out.push_str(&per_packet_table(r));
    let _ = writeln!(out, "\nSYN proxy: {}\n", r.syn_proxy);
    let _ = writeln!(
        out,
        "## 2. End to end over veth (client → LB namespace → servers)\n"
    );
    out.push_str(&e2e_table(&r.e2e));
    for n in &r.e2e.notes {
        let _ = writeln!(out, "\n- {n}");
    }
    let _ = writeln!(
        out,
        "\nCharts: `e2e.svg` (each metric relative to kernel routing), `packet.svg` (the per-packet paths against their targets).\n"
    );
    let _ = writeln!(out, "## 3. Scale\n");
    let _ = writeln!(
        out,
        "| flow entries | repeats cycle over | table capacity | established ns/packet (net) | × at smallest | runs within (of the median) | kernel bytes/entry | bytes/connection (2 entries) | fill time (s) |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let first = r.scale.first().map(|s| s.net_ns).unwrap_or(0.0);
    for s in &r.scale {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.1} | {} | {} | {:.0} | {:.0} | {:.1} |",
            s.flows,
            if s.working_set == s.flows {
                "all".to_string()
            } else {
                format!("the first {}", s.working_set)
            },
            s.capacity,
            s.net_ns,
            ratio(s.net_ns, first),
            spread(&s.runs_ns),
            s.bytes_per_entry,
            2.0 * s.bytes_per_entry,
            s.fill_s
        );
    }
    let _ = writeln!(
        out,
        "\n| Maglev backends | ring size | build ring (ms) | build + install (ms) | slots written (through mmap) |\n|---:|---:|---:|---:|---:|"
    );
    for m in &r.maglev {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {:.1} | {} |",
            m.backends,
            m.ring_size,
            m.build_s * 1e3,
            m.build_and_install_s * 1e3,
            m.slots_written
        );
    }
    let _ = writeln!(
        out,
        "\n| services | backends | `lb run` → forwarding (s) | note |\n|---:|---:|---:|---|"
    );
    for s in &r.startup {
        let secs = s.seconds.map_or("–".into(), |v| format!("{v:.2}"));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            s.services, s.backends, secs, s.note
        );
    }
    if !r.controller.is_empty() {
        let _ = writeln!(
            out,
            "\nThe controller with a filled flow table (established entries, data path idle; the smallest table is the baseline):\n\n| lb | flow entries | daemon CPU (% of a core) | `lb status` (ms) | scrape (ms) | collector pass (ms) | read: batch (ms) | read: per-entry walk (ms) | walk / batch | fill (s) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for c in &r.controller {
            let _ = writeln!(
                out,
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} | {} | {:.1} |",
                c.binary,
                c.entries,
                c.daemon_cpu_pct,
                c.status_ms,
                c.scrape_ms,
                c.gc_pass_ms,
                c.batch_read_ms,
                c.walk_read_ms,
                ratio(c.walk_read_ms, c.batch_read_ms),
                c.fill_s
            );
        }
    }
    if let Some(c) = &r.cluster {
        out.push_str(&cluster_section(c));
    }
    let _ = writeln!(
        out,
        "\n## Targets (reported, not enforced)\n\n| target | goal | measured | met |\n|---|---|---|---|"
    );
    for t in &r.targets {
        let met = match t.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "not measured",
        };
        let _ = writeln!(out, "| {} | {} | {} | {met} |", t.name, t.goal, t.measured);
    }
    if !r.notes.is_empty() {
        let _ = writeln!(out, "\n## Notes\n");
        for n in &r.notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    out
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Horizontal bars of the per-packet paths (net ns, log scale, since the paths span
/// two orders of magnitude), each with its target marked.
pub fn packet_svg(paths: &[KernelPath]) -> String {
    let (width, left, right, top, row_h) = (900.0, 330.0, 40.0, 40.0, 28.0);
    let height = top + row_h * paths.len().max(1) as f64 + 40.0;
    let (lo, hi) = (1.0f64, 5000.0f64);
    let plot_w = width - left - right;
    let x_of = |ns: f64| left + plot_w * (ns.clamp(lo, hi).ln() - lo.ln()) / (hi.ln() - lo.ln());
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">Per packet in the kernel (BPF_PROG_TEST_RUN, net ns, median; red: target)</text>\n",
        width / 2.0
    );
    let bottom = top + row_h * paths.len() as f64;
    for tick in [
        1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
    ] {
        let x = x_of(tick);
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{top}\" y2=\"{bottom}\" stroke=\"#ddd\"/><text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{tick:.0}</text>",
            bottom + 15.0
        );
    }
    for (i, p) in paths.iter().enumerate() {
        let y = top + row_h * i as f64;
        let x_end = x_of(p.net_ns);
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text><rect x=\"{left}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#1f77b4\"/><text x=\"{:.1}\" y=\"{:.1}\">{:.0}</text>",
            left - 6.0,
            y + row_h * 0.6,
            xml_escape(&p.name),
            y + row_h * 0.15,
            (x_end - left).max(1.0),
            row_h * 0.7,
            x_end + 4.0,
            y + row_h * 0.6,
            p.net_ns
        );
        if let Some(goal) = packet_target(&p.name) {
            let x = x_of(goal);
            let _ = writeln!(
                s,
                "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#d62728\" stroke-width=\"2\"/>",
                y + row_h * 0.05,
                y + row_h * 0.95
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

/// Grouped bar chart: one group per metric, one bar per configuration, each bar the
/// median relative to the first configuration (kernel routing), labelled with its value.
pub fn svg(e2e: &E2eResults) -> String {
    const COLORS: [&str; 6] = [
        "#7f7f7f", "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e",
    ];
    let (width, height, left, top, bottom) = (900.0, 420.0, 60.0, 40.0, 90.0);
    let plot_h = height - top - bottom;
    let groups = e2e.rows.len().max(1) as f64;
    let bars = e2e.configs.len().max(1) as f64;
    let group_w = (width - left - 20.0) / groups;
    let bar_w = group_w * 0.8 / bars;
    let rel = |row: &super::model::E2eRow, i: usize| -> Option<f64> {
        let base = row.cells.first()?.as_ref()?.median;
        let v = row.cells.get(i)?.as_ref()?.median;
        (base > 0.0).then(|| v / base)
    };
    let max_rel = e2e
        .rows
        .iter()
        .flat_map(|r| (0..e2e.configs.len()).filter_map(move |i| rel(r, i)))
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">End to end over veth, relative to {} (median)</text>\n",
        width / 2.0,
        xml_escape(
            e2e.configs
                .first()
                .map(String::as_str)
                .unwrap_or("baseline")
        )
    );
    // Axis with gridlines at every 0.5×.
    let mut tick = 0.0;
    while tick <= max_rel {
        let y = top + plot_h * (1.0 - tick / max_rel);
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{tick:.1}×</text>",
            width - 20.0,
            left - 5.0,
            y + 4.0
        );
        tick += 0.5;
    }
    for (g, row) in e2e.rows.iter().enumerate() {
        let gx = left + g as f64 * group_w + group_w * 0.1;
        for i in 0..e2e.configs.len() {
            let Some(v) = rel(row, i) else { continue };
            let h = plot_h * v / max_rel;
            let x = gx + i as f64 * bar_w;
            let y = top + plot_h - h;
            let _ = writeln!(
                s,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"9\">{v:.2}</text>",
                bar_w * 0.9,
                COLORS[i % COLORS.len()],
                x + bar_w * 0.45,
                y - 3.0
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            gx + group_w * 0.4,
            top + plot_h + 15.0,
            xml_escape(&row.metric)
        );
    }
    for (i, c) in e2e.configs.iter().enumerate() {
        let x = left + i as f64 * 200.0;
        let y = height - 25.0;
        let _ = writeln!(
            s,
            "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"{y}\">{}</text>",
            y - 10.0,
            COLORS[i % COLORS.len()],
            x + 16.0,
            xml_escape(c)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::model::*;

    fn synthetic() -> Report {
        Report {
            env: Environment {
                kernel: "6.18.0".into(),
                cpu: "Test CPU".into(),
                cpus: 2,
                profile: "release".into(),
                git_revision: "abc123".into(),
                mode: "quick".into(),
                started: "t0".into(),
                duration_s: 12.0,
            },
            repeat: 1000,
            runs: 3,
            floor_direct_ns: 20.0,
            wrapper_ns: 10.0,
            paths: vec![KernelPath {
                name: "established TCP forward".into(),
                runs_ns: vec![39.0, 40.0, 41.0],
                raw_ns: 40.0,
                net_ns: 30.0,
                floor_ratio: 1.5,
                verdict: "XDP_REDIRECT".into(),
                took: "flow_hits +3000 = repeats".into(),
            }],
            syn_proxy: "not present".into(),
            scale: vec![ScalePoint {
                flows: 1000,
                working_set: 1000,
                capacity: 4096,
                runs_ns: vec![48.0, 50.0, 52.0],
                raw_ns: 60.0,
                net_ns: 50.0,
                map_bytes: 409_600,
                bytes_per_entry: 100.0,
                fill_s: 0.01,
            }],
            maglev: vec![MaglevTiming {
                backends: 10,
                build_s: 0.002,
                build_and_install_s: 0.1,
                ring_size: 1021,
                slots_written: 1021,
            }],
            controller: vec![ControllerPoint {
                binary: "this revision".into(),
                entries: 1000,
                capacity: 16384,
                fill_s: 0.1,
                daemon_cpu_pct: 0.5,
                status_ms: 3.0,
                scrape_ms: 1.0,
                gc_pass_ms: 1.0,
                batch_read_ms: 1.0,
                walk_read_ms: 2.0,
            }],
            startup: vec![Startup {
                services: 10,
                backends: 100,
                seconds: Some(1.5),
                note: "ok".into(),
            }],
            e2e: E2eResults {
                configs: vec![
                    "kernel routing".into(),
                    "nftables DNAT".into(),
                    "lb <native>".into(),
                ],
                rows: vec![E2eRow {
                    metric: "UDP 64 B".into(),
                    unit: "packets/s".into(),
                    cells: vec![
                        Some(E2eCell::new(vec![500e3, 550e3, 600e3])),
                        Some(E2eCell::new(vec![400e3])),
                        None,
                    ],
                }],
                notes: vec![],
            },
            cluster: Some(ClusterResults {
                instances: 3,
                connections: 100,
                failed_connections: 0,
                new_flows: 100,
                announcements: 800,
                announcement_bytes: 48_000,
                record_bytes: 48,
                install_lag: vec![InstanceLag {
                    instance: 1,
                    samples: 66,
                    p50_ms: 6,
                    p99_ms: 9,
                    max_ms: 11,
                }],
                network_rtt_ms: 0.05,
                steps: vec![ConvergenceStep {
                    step: "drain".into(),
                    seconds: 0.05,
                    baseline: "BIRD alone".into(),
                    baseline_seconds: 0.04,
                    note: String::new(),
                }],
                vip_move: Some(VipMoveResult {
                    flows: 200,
                    broken: 0,
                    routes_s: 0.2,
                    normal_s: 2.2,
                    drain_s: 2.0,
                    bytes: 19_200,
                }),
            }),
            targets: vec![Target {
                name: "forward".into(),
                goal: "≤ 1.5× floor".into(),
                measured: "1.50×".into(),
                met: Some(true),
            }],
            notes: vec!["a note".into()],
        }
    }

    #[test]
    fn markdown_has_every_section_and_exact_ratios() {
        let md = markdown(&synthetic());
        for needle in [
            "- kernel: 6.18.0",
            "- git revision: abc123",
            "- build profile: release",
            "| established TCP forward | 30.0 | ≤ 50 (met) | 33.3 | 1.50× | 40.0 | 39, 40, 41 | flow_hits +3000 = repeats |",
            "| UDP 64 B (packets/s) | 550.0 k (vs nft 1.38×, vs routing 1.00×) | 400.0 k (vs nft 1.00×, vs routing 0.73×) | failed |",
            "| 1000 | all | 4096 | 50.0 | 1.00× | ± 4.0 % | 100 | 200 | 0.0 |",
            "| 10 | 1021 | 2.0 | 100.0 | 1021 |",
            "| 10 | 100 | 1.50 | ok |",
            "| forward | ≤ 1.5× floor | 1.50× | yes |",
            "- a note",
            "| instance 1 | 66 | 6 ms | 9 ms | 11 ms |",
            "| 480 | 96 | 5.00× |",
            "| announcements | 8.00 | 2 | 4.00× |",
            "| drain | 0.050 s | BIRD alone | 0.040 s | 1.25× |  |",
            "| bytes sent per 1,000 flows (the stream, whole frames) | 96000 | 48000 (one 48-byte record each) | 2.00× |",
        ] {
            assert!(md.contains(needle), "missing {needle:?} in\n{md}");
        }
    }

    #[test]
    fn json_round_trips_the_numbers() {
        let v = synthetic().to_json();
        let text = serde_json::to_string(&v).unwrap();
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["per_packet"]["paths"][0]["net_ns"], 30.0);
        assert_eq!(back["per_packet"]["paths"][0]["floor_ratio"], 1.5);
        assert_eq!(back["end_to_end"]["rows"][0]["cells"][0]["median"], 550e3);
        assert!(back["end_to_end"]["rows"][0]["cells"][2].is_null());
        assert_eq!(back["scale"]["flows"][0]["bytes_per_connection"], 200.0);
        assert_eq!(back["environment"]["git_revision"], "abc123");
    }

    #[test]
    fn svg_is_well_formed_with_one_bar_per_measured_cell() {
        let svg = svg(&synthetic().e2e);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        // Two measured cells → two bars, plus the background and 3 legend swatches.
        assert_eq!(svg.matches("<rect").count(), 1 + 2 + 3);
        assert!(svg.contains(">1.00</text>") && svg.contains(">0.73</text>"));
        assert!(svg.contains("lb &lt;native&gt;"));
    }

    #[test]
    fn the_packet_chart_has_a_bar_per_path_and_a_mark_per_target() {
        let mut paths = synthetic().paths;
        paths[0].name = "established TCP forward".into();
        paths.push(KernelPath {
            name: "floor via wrapper".into(),
            ..paths[0].clone()
        });
        let svg = packet_svg(&paths);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<rect").count(), 1 + paths.len());
        // Only the established path has a target.
        assert_eq!(svg.matches("stroke=\"#d62728\"").count(), 1);
        assert!(svg.contains(">established TCP forward</text>"));
    }
}
