//! Human-readable rendering of the API's answers (`--json` prints them raw).

use std::fmt::Write as _;

use serde_json::Value;

use crate::api::Request;

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

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

pub fn render(request: &Request, result: &Value) -> String {
    match request {
        Request::Status => render_status(result),
        Request::Stats => render_stats(result),
        Request::Flows => render_flows(result),
        Request::Reload => format!("reloaded: {result}\n"),
        Request::Backends => rows_table(
            result,
            &[
                ("SERVICE", "service"),
                ("BACKEND", "backend"),
                ("STATE", "state"),
                ("HEALTH", "health"),
                ("WEIGHT", "weight"),
                ("LIVE", "effective_weight"),
                ("ACTIVE", "active_flows"),
                ("NEW", "new_flows"),
                ("PACKETS", "packets"),
                ("BYTES", "bytes"),
            ],
        ),
        Request::Sessions => rows_table(
            result,
            &[
                ("CLIENT", "client"),
                ("SERVICE", "service"),
                ("BACKEND", "backend"),
                ("AGE(s)", "age_secs"),
                ("IDLE(s)", "idle_secs"),
                ("HANDLE", "handle"),
            ],
        ),
        Request::BackendDrain { .. }
        | Request::BackendUndrain { .. }
        | Request::BackendWeight { .. }
        | Request::BackendAdd { .. }
        | Request::BackendRemove { .. } => format!("applied: {result}\n"),
        Request::Nodes => render_nodes(result),
        Request::Handover => format!("{result}\n"),
    }
}

/// A table of an array of objects: (header, field) per column, then a count.
fn rows_table(result: &Value, columns: &[(&str, &str)]) -> String {
    let header: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
    let rows: Vec<Vec<String>> = result
        .as_array()
        .into_iter()
        .flatten()
        .map(|row| columns.iter().map(|(_, f)| text(&row[*f])).collect())
        .collect();
    let mut out = table(&header, &rows);
    let _ = writeln!(out, "{} rows", rows.len());
    out
}

fn render_status(status: &Value) -> String {
    let mut out = String::new();
    for key in [
        "name",
        "config",
        "pid",
        "uptime_secs",
        "generation",
        "last_reload",
        "pin_dir",
        "services",
        "connections",
        "flows_expired",
        "adopted",
        "metrics",
    ] {
        let _ = writeln!(out, "{key:<14} {}", text(&status[key]));
    }
    let rows: Vec<Vec<String>> = status["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| vec![text(&i["name"]), text(&i["ifindex"]), text(&i["mode"])])
        .collect();
    out.push('\n');
    out.push_str(&table(&["INTERFACE", "IFINDEX", "XDP MODE"], &rows));
    out
}

fn render_stats(stats: &Value) -> String {
    let mut out = String::new();
    let counters: Vec<Vec<String>> = stats["counters"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, value)| vec![name.clone(), text(value)])
        .collect();
    out.push_str(&table(&["COUNTER", "PACKETS"], &counters));
    out.push('\n');
    let mut services = Vec::new();
    let mut backends = Vec::new();
    for service in stats["services"].as_array().into_iter().flatten() {
        services.push(vec![
            text(&service["name"]),
            format!("{}/{}", text(&service["vip"]), text(&service["protocol"])),
            text(&service["mode"]),
            text(&service["packets"]),
            text(&service["bytes"]),
            text(&service["new_flows"]),
            text(&service["drops"]),
        ]);
        for backend in service["backends"].as_array().into_iter().flatten() {
            backends.push(vec![
                text(&service["name"]),
                text(&backend["address"]),
                text(&backend["weight"]),
                text(&backend["packets"]),
                text(&backend["bytes"]),
                text(&backend["new_flows"]),
            ]);
        }
    }
    out.push_str(&table(
        &[
            "SERVICE",
            "VIP",
            "MODE",
            "PACKETS",
            "BYTES",
            "NEW FLOWS",
            "DROPS",
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

/// The health-and-load table (seed 004 fig 13), then the router's counters.
fn render_nodes(nodes: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cluster {}  router {}:{}  management {}{}  heartbeat {} ms  dead after {}",
        text(&nodes["cluster_id"]),
        text(&nodes["router"]),
        text(&nodes["port"]),
        text(&nodes["management"]),
        if nodes["controller_configured"] == Value::Bool(true) {
            " (configured)"
        } else {
            ""
        },
        text(&nodes["heartbeat_ms"]),
        text(&nodes["dead_after"]),
    );
    out.push('\n');
    let rows: Vec<Vec<String>> = nodes["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let applied = match &e["applied"] {
                Value::Array(pair) if pair.len() == 2 => {
                    format!("{} {}", text(&pair[0]), text(&pair[1]))
                }
                _ => "-".into(),
            };
            vec![
                format!(
                    "{} {}:{}/{}",
                    text(&e["service"]),
                    text(&e["vip"]),
                    text(&e["service_port"]),
                    text(&e["protocol"])
                ),
                format!("{}:{}", text(&e["node"]), text(&e["port"])),
                text(&e["priority"]),
                text(&e["health"]),
                text(&e["load_permille"]),
                text(&e["capacity"]),
                text(&e["connections"]),
                format!("{} {}", text(&e["state"]), text(&e["tokens"])),
                applied,
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "APPLICATION",
            "NODE",
            "PRIO",
            "HEALTH",
            "LOAD(‰)",
            "CAPACITY",
            "CONNS",
            "TARGET",
            "CURRENT",
        ],
        &rows,
    ));
    let _ = writeln!(out, "{} endpoints", rows.len());
    out.push('\n');
    let counters: Vec<Vec<String>> = nodes["counters"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, value)| vec![name.clone(), text(value)])
        .collect();
    out.push_str(&table(&["ROUTER COUNTER", "VALUE"], &counters));
    out
}

fn render_flows(flows: &Value) -> String {
    let rows: Vec<Vec<String>> = flows
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            [
                "protocol",
                "service",
                "client",
                "vip",
                "snat",
                "server",
                "state",
                "age_secs",
                "idle_secs",
            ]
            .iter()
            .map(|k| text(&f[*k]))
            .chain(
                ["seq", "delta", "timestamp"]
                    .iter()
                    .map(|k| text(&f["proxy"][*k])),
            )
            .collect()
        })
        .collect();
    let mut out = table(
        &[
            "PROTO",
            "SERVICE",
            "CLIENT",
            "VIP",
            "SNAT",
            "SERVER",
            "STATE",
            "AGE(s)",
            "IDLE(s)",
            "SEQ",
            "DELTA",
            "TIMESTAMP",
        ],
        &rows,
    );
    let _ = writeln!(out, "{} connections", rows.len());
    out
}
