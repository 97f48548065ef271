//! Rendering of the API's replies for the operator: tables, or the JSON itself
//! (`--json`). Pure: a reply in, text out.

use std::fmt::{Display, Write as _};

use serde::Serialize;
use serde_json::Value;

use crate::api::{
    BackendRow, FlowRow, Nodes, PeersStatus, Reply, SessionRow, Stats, Status, serde_name,
};

/// Left-aligned columns sized to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(header.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// `--json`: the reply pretty-printed, keys sorted (the order `--json` has always had;
/// the daemon's socket answers in field order).
pub fn json(reply: &Reply) -> serde_json::Result<String> {
    serde_json::to_string_pretty(&serde_json::to_value(reply)?)
}

/// The operator's view of a reply.
pub fn render(reply: &Reply) -> String {
    match reply {
        Reply::Status(status) => render_status(status),
        Reply::Stats(stats) => render_stats(stats),
        Reply::Flows(flows) => render_flows(flows),
        Reply::Reloaded(summary) => format!("reloaded: {}\n", compact(summary)),
        Reply::Backends(backends) => render_backends(backends),
        Reply::Sessions(sessions) => render_sessions(sessions),
        Reply::Applied(summary) => format!("applied: {}\n", compact(summary)),
        Reply::Nodes(nodes) => render_nodes(nodes),
        Reply::Peers(peers) => render_peers(peers),
        Reply::Vips(rows) => render_vips(rows),
        Reply::HandedOver(handed_over) => format!("{}\n", compact(handed_over)),
        Reply::Drained(bgp) => format!("{}\n", bgp_summary(bgp)),
    }
}

/// One line on the announcements: state, routes, and a failure if BIRD lags behind.
fn bgp_summary(bgp: &crate::api::BgpStatus) -> String {
    let mut text = format!(
        "{}, {} routes wanted, {} announced{}",
        bgp.state,
        bgp.routes_wanted,
        or_dash(bgp.routes_announced),
        if bgp.in_sync {
            ""
        } else {
            " (BIRD not in sync)"
        }
    );
    if bgp.configure_failures > 0 {
        let _ = write!(text, ", {} configure failures", bgp.configure_failures);
    }
    if let Some(error) = &bgp.last_error {
        let _ = write!(text, ", last: {error}");
    }
    text
}

/// One-line JSON, keys sorted.
fn compact(value: &impl Serialize) -> String {
    serde_json::to_value(value).map_or_else(|e| format!("({e})"), |v| v.to_string())
}

/// A cell of something that may be absent.
fn or_dash(value: Option<impl Display>) -> String {
    value.map_or_else(|| "-".into(), |v| v.to_string())
}

/// A flat struct or map of counters as (name, value) rows, by name.
fn counter_rows(counters: &impl Serialize) -> Vec<Vec<String>> {
    match serde_json::to_value(counters) {
        Ok(Value::Object(map)) => map
            .into_iter()
            .map(|(name, value)| vec![name, value.to_string()])
            .collect(),
        _ => Vec::new(),
    }
}

/// A column of a table of `T`s: its header and how to fill its cell from one `T`.
type Column<T> = (&'static str, fn(&T) -> String);

/// A table of `items`, each column a header and how to fill its cell, then the count of
/// rows (`{count} {what}`).
fn items_table<T>(items: &[T], columns: &[Column<T>], what: &str) -> String {
    let header: Vec<&str> = columns.iter().map(|(header, _)| *header).collect();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| columns.iter().map(|(_, cell)| cell(item)).collect())
        .collect();
    let mut out = table(&header, &rows);
    let _ = writeln!(out, "{} {what}", rows.len());
    out
}

fn render_backends(backends: &[BackendRow]) -> String {
    items_table(
        backends,
        &[
            ("SERVICE", |b| b.service.clone()),
            ("BACKEND", |b| b.backend.to_string()),
            ("STATE", |b| serde_name(&b.state)),
            ("HEALTH", |b| serde_name(&b.health)),
            ("WEIGHT", |b| b.weight.to_string()),
            ("LIVE", |b| b.effective_weight.to_string()),
            ("ACTIVE", |b| b.active_flows.to_string()),
            ("NEW", |b| b.new_flows.to_string()),
            ("PACKETS", |b| b.packets.to_string()),
            ("BYTES", |b| b.bytes.to_string()),
        ],
        "rows",
    )
}

fn render_sessions(sessions: &[SessionRow]) -> String {
    items_table(
        sessions,
        &[
            ("CLIENT", |s| s.client.to_string()),
            ("SERVICE", |s| or_dash(s.service.as_ref())),
            ("BACKEND", |s| or_dash(s.backend)),
            ("AGE(s)", |s| s.age_secs.to_string()),
            ("IDLE(s)", |s| s.idle_secs.to_string()),
            ("HANDLE", |s| s.handle.clone()),
        ],
        "rows",
    )
}

fn render_status(status: &Status) -> String {
    let mut out = String::new();
    for (key, value) in [
        ("name", status.name.clone()),
        ("config", status.config.clone()),
        ("pid", status.pid.to_string()),
        ("uptime_secs", status.uptime_secs.to_string()),
        ("generation", status.generation.to_string()),
        ("last_reload", or_dash(status.last_reload.as_ref())),
        ("pin_dir", status.pin_dir.clone()),
        ("services", status.services.to_string()),
        ("connections", status.connections.to_string()),
        ("flows_expired", status.flows_expired.to_string()),
        ("adopted", status.adopted.to_string()),
        ("metrics", or_dash(status.metrics)),
        ("bgp", or_dash(status.bgp.as_ref().map(bgp_summary))),
    ] {
        let _ = writeln!(out, "{key:<14} {value}");
    }
    let rows: Vec<Vec<String>> = status
        .interfaces
        .iter()
        .map(|i| vec![i.name.clone(), i.ifindex.to_string(), serde_name(&i.mode)])
        .collect();
    out.push('\n');
    out.push_str(&table(&["INTERFACE", "IFINDEX", "XDP MODE"], &rows));
    out
}

fn render_stats(stats: &Stats) -> String {
    let mut out = String::new();
    out.push_str(&table(
        &["COUNTER", "PACKETS"],
        &counter_rows(&stats.counters),
    ));
    out.push('\n');
    let mut services = Vec::new();
    let mut backends = Vec::new();
    for service in &stats.services {
        services.push(vec![
            service.name.clone(),
            format!("{}/{}", service.vip, service.protocol),
            service.mode.to_string(),
            if service.snat_ips.is_empty() {
                "-".to_string()
            } else {
                service
                    .snat_ips
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            },
            service.packets.to_string(),
            service.bytes.to_string(),
            service.new_flows.to_string(),
            service.drops.to_string(),
            service.syn_cookies.mode.clone(),
            service.syn_cookies.sent.to_string(),
            service.syn_cookies.switched_on.to_string(),
        ]);
        for backend in &service.backends {
            backends.push(vec![
                service.name.clone(),
                backend.address.to_string(),
                backend.weight.to_string(),
                backend.packets.to_string(),
                backend.bytes.to_string(),
                backend.new_flows.to_string(),
            ]);
        }
    }
    out.push_str(&table(
        &[
            "SERVICE",
            "VIP",
            "MODE",
            "SNAT",
            "PACKETS",
            "BYTES",
            "NEW FLOWS",
            "DROPS",
            "SYN COOKIES",
            "COOKIES SENT",
            "SWITCHED ON",
        ],
        &services,
    ));
    out.push('\n');
    out.push_str(&table(
        &[
            "SERVICE",
            "BACKEND",
            "WEIGHT",
            "PACKETS",
            "BYTES",
            "NEW FLOWS",
        ],
        &backends,
    ));
    out
}

/// The router's health-and-load table, then its counters.
fn render_nodes(nodes: &Nodes) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cluster {}  router {}:{}  management {}{}  heartbeat {} ms  dead after {}",
        nodes.cluster_id,
        nodes.router,
        nodes.port,
        or_dash(nodes.management),
        if nodes.controller_configured {
            " (configured)"
        } else {
            ""
        },
        nodes.heartbeat_ms,
        nodes.dead_after,
    );
    out.push('\n');
    out.push_str(&items_table(
        &nodes.endpoints,
        &[
            ("APPLICATION", |e| {
                format!("{} {}:{}/{}", e.service, e.vip, e.service_port, e.protocol)
            }),
            ("NODE", |e| format!("{}:{}", e.node, e.port)),
            ("PRIO", |e| e.priority.to_string()),
            ("HEALTH", |e| serde_name(&e.health)),
            ("LOAD(‰)", |e| e.load_permille.to_string()),
            ("CAPACITY", |e| e.capacity.to_string()),
            ("CONNS", |e| e.connections.to_string()),
            ("TARGET", |e| {
                format!("{} {}", serde_name(&e.state), e.tokens)
            }),
            ("CURRENT", |e| {
                or_dash(
                    e.applied
                        .map(|(state, tokens)| format!("{} {tokens}", serde_name(&state))),
                )
            }),
        ],
        "endpoints",
    ));
    out.push('\n');
    out.push_str(&table(
        &["ROUTER COUNTER", "VALUE"],
        &counter_rows(&nodes.counters),
    ));
    out
}

/// This instance, its peers (state, flows held, lag, last heard), then the counters.
fn render_peers(peers: &PeersStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node {}  cluster {}  listen {}  state {}  join timeout {} ms  dead after {} ms",
        peers.node_id,
        peers.cluster_id,
        peers.listen,
        serde_name(&peers.state),
        peers.join_timeout_ms,
        peers.dead_after_ms,
    );
    if let Some(lag) = &peers.install_lag {
        let _ = writeln!(
            out,
            "install lag (creation at the owner to installed here, last {} new flows): \
             p50 {} ms  p99 {} ms  max {} ms",
            lag.samples, lag.p50_ms, lag.p99_ms, lag.max_ms
        );
    }
    out.push('\n');
    out.push_str(&items_table(
        &peers.peers,
        &[
            ("PEER", |p| format!("{} {}", p.node_id, p.address)),
            ("STATE", |p| serde_name(&p.state)),
            ("ANNOUNCED", |p| {
                or_dash(p.announced.map(|s| serde_name(&s)))
            }),
            ("OUTGOING", |p| serde_name(&p.outgoing)),
            ("FLOWS", |p| p.flows_held.to_string()),
            ("LAG(ms)", |p| or_dash(p.lag_ms)),
            ("LAST HEARD(ms)", |p| or_dash(p.last_heard_ms)),
            ("RECEIVED", |p| p.announcements_received.to_string()),
            ("QUEUED", |p| p.queued.to_string()),
        ],
        "peers",
    ));
    out.push('\n');
    let c = &peers.counters;
    let mut rows: Vec<Vec<String>> = [
        ("messages_received", c.messages_received),
        ("announcements_sent", c.announcements_sent),
        ("announcement_bytes_sent", c.announcement_bytes_sent),
        ("announcements_received", c.announcements_received),
        ("announcements_applied", c.announcements_applied),
        ("queue_overflows", c.queue_overflows),
        ("connections_refused", c.connections_refused),
    ]
    .iter()
    .map(|(name, value)| vec![(*name).to_string(), value.to_string()])
    .collect();
    rows.extend(
        c.rejected
            .iter()
            .map(|(reason, value)| vec![format!("rejected_{reason}"), value.to_string()]),
    );
    out.push_str(&table(&["PEER COUNTER", "VALUE"], &rows));
    out
}

/// The owned VIPs' mode table.
fn render_vips(rows: &[crate::peers::moves::VipRow]) -> String {
    items_table(
        rows,
        &[
            ("VIP", |r| r.vip.to_string()),
            ("MODE", |r| serde_name(&r.mode)),
            ("OWNER", |r| r.owner.to_string()),
            ("EPOCH", |r| r.epoch.to_string()),
            ("SINCE(ms)", |r| r.since_ms.to_string()),
            ("MOVE", |r| {
                r.moving.map_or("-".to_string(), |m| {
                    format!("{} with {}", serde_name(&m.step), m.peer)
                })
            }),
        ],
        "owned VIPs",
    )
}

fn render_flows(flows: &[FlowRow]) -> String {
    items_table(
        flows,
        &[
            ("PROTO", |f| f.protocol.clone()),
            ("SERVICE", |f| f.service.clone()),
            ("CLIENT", |f| f.client.clone()),
            ("VIP", |f| f.vip.clone()),
            ("SNAT", |f| f.snat.clone()),
            ("SERVER", |f| f.server.clone()),
            ("STATE", |f| f.state.clone()),
            ("AGE(s)", |f| f.age_secs.to_string()),
            ("IDLE(s)", |f| f.idle_secs.to_string()),
            // Node id of the instance that created the flow; `-` without peers.
            ("OWNER", |f| or_dash((f.owner != 0).then_some(f.owner))),
            // SYN proxy only.
            ("SEQ", |f| or_dash(f.proxy.map(|p| p.seq))),
            ("DELTA", |f| or_dash(f.proxy.map(|p| p.delta))),
            ("TIMESTAMP", |f| or_dash(f.proxy.map(|p| p.timestamp))),
        ],
        "connections",
    )
}

#[cfg(test)]
mod tests;
