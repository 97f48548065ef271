//! Prometheus text endpoint: the controller's facts and the data path's counters,
//! encoded by `prometheus-client`, served over plain HTTP/1.x.

use std::sync::atomic::AtomicU64;

use anyhow::Result;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub service: String,
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuantileLabels {
    pub quantile: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

/// One scrape's worth of values; families are filled by the controller.
#[derive(Default)]
pub struct Scrape {
    pub service_packets: Family<ServiceLabels, Counter>,
    pub service_bytes: Family<ServiceLabels, Counter>,
    pub service_new_flows: Family<ServiceLabels, Counter>,
    pub service_active_flows: Family<ServiceLabels, Gauge>,
    pub service_drops: Family<ServiceLabels, Counter>,
    pub service_denied: Family<ServiceLabels, Counter>,
    pub service_syn_cookies_sent: Family<ServiceLabels, Counter>,
    pub service_syn_cookies_switched_on: Family<ServiceLabels, Counter>,
    /// 1 while automatic SYN cookies are on (or the service is a SYN proxy), else 0.
    pub service_syn_cookies_on: Family<ServiceLabels, Gauge>,
    pub backend_packets: Family<BackendLabels, Counter>,
    pub backend_bytes: Family<BackendLabels, Counter>,
    pub backend_new_flows: Family<BackendLabels, Counter>,
    pub backend_active_flows: Family<BackendLabels, Gauge>,
    pub backend_up: Family<BackendLabels, Gauge>,
    pub backend_weight: Family<BackendLabels, Gauge>,
    pub packets_by_verdict: Family<ReasonLabels, Counter>,
    /// Cluster router counters (received, accepted, joins, drops by reason...).
    pub cluster_events: Family<EventLabels, Counter>,
    /// Announced endpoints by state.
    pub cluster_endpoints: Family<StateLabels, Gauge>,
    /// Peer protocol (docs/scale-out.md, "Peer protocol").
    pub peer_announcements_sent: Counter,
    pub peer_announcement_bytes_sent: Counter,
    /// Install lag percentiles over the latest new flows (`quantile` label).
    pub peer_install_lag_ms: Family<QuantileLabels, Gauge>,
    pub peer_announcements_received: Counter,
    pub peer_announcements_applied: Counter,
    pub peer_rejected: Family<ReasonLabels, Counter>,
    /// Delay of each peer's last announcement batch, milliseconds.
    pub peer_lag_ms: Family<PeerLabels, Gauge>,
    /// 1 while a peer is up (synced and heard within dead_after).
    pub peer_up: Family<PeerLabels, Gauge>,
    /// 1 once this instance's transition is over.
    pub peers_ready: Gauge,
    pub config_generation: Gauge,
    pub last_reload_ok: Gauge,
    pub sessions: Gauge,
    /// Flow-table entries after the collector's last pass.
    pub flow_entries: Gauge,
    /// Duration of the collector's last pass over the flow table.
    pub gc_pass_seconds: Gauge<f64, AtomicU64>,
    /// With `[bgp]`: routes BIRD last accepted, failed `configure` runs, draining.
    pub bgp: Option<BgpMetrics>,
}

/// The announcements' metrics (docs/scale-out.md, "Routes").
#[derive(Default)]
pub struct BgpMetrics {
    pub routes_announced: Gauge,
    pub routes_wanted: Gauge,
    pub configure_failures: Counter,
    pub draining: Gauge,
}

impl Scrape {
    /// The text exposition format (version 0.0.4 compatible, OpenMetrics `# EOF`).
    pub fn encode(self) -> Result<String> {
        let mut registry = Registry::with_prefix("lb");
        let s = self;
        registry.register(
            "service_packets",
            "Packets forwarded for a service",
            s.service_packets,
        );
        registry.register(
            "service_bytes",
            "Bytes (frames) forwarded for a service",
            s.service_bytes,
        );
        registry.register(
            "service_new_flows",
            "New flows of a service",
            s.service_new_flows,
        );
        registry.register(
            "service_active_flows",
            "Connections in the flow table",
            s.service_active_flows,
        );
        registry.register(
            "service_drops",
            "Packets to a service dropped",
            s.service_drops,
        );
        registry.register(
            "service_denied",
            "New flows refused by the allow-list",
            s.service_denied,
        );
        registry.register(
            "service_syn_cookies_sent",
            "SYNs answered with a SYN cookie",
            s.service_syn_cookies_sent,
        );
        registry.register(
            "service_syn_cookies_switched_on",
            "Times automatic SYN cookies switched on",
            s.service_syn_cookies_switched_on,
        );
        registry.register(
            "service_syn_cookies_on",
            "Whether SYNs are answered with SYN cookies now",
            s.service_syn_cookies_on,
        );
        registry.register(
            "backend_packets",
            "Packets forwarded for a backend",
            s.backend_packets,
        );
        registry.register(
            "backend_bytes",
            "Bytes forwarded for a backend",
            s.backend_bytes,
        );
        registry.register(
            "backend_new_flows",
            "New flows sent to a backend",
            s.backend_new_flows,
        );
        registry.register(
            "backend_active_flows",
            "Connections to a backend in the flow table",
            s.backend_active_flows,
        );
        registry.register(
            "backend_up",
            "1 if the backend passes its health check (or has none)",
            s.backend_up,
        );
        registry.register(
            "backend_weight",
            "Weight in the live ring (0: drained or down)",
            s.backend_weight,
        );
        registry.register(
            "packets",
            "Data-path verdicts (global counters) by reason",
            s.packets_by_verdict,
        );
        registry.register(
            "cluster_events",
            "Cluster router: datagrams received/accepted, joins, leaves, expiries, drops by reason",
            s.cluster_events,
        );
        registry.register(
            "cluster_endpoints",
            "Announced endpoints by state",
            s.cluster_endpoints,
        );
        registry.register(
            "peer_announcements_sent",
            "Flow announcements sent to peers",
            s.peer_announcements_sent,
        );
        registry.register(
            "peer_announcement_bytes_sent",
            "Bytes of flow announcement messages sent to peers (whole frames)",
            s.peer_announcement_bytes_sent,
        );
        registry.register(
            "peer_install_lag_ms",
            "From a flow's creation at its owner to its copy installed here, latest new flows, milliseconds",
            s.peer_install_lag_ms,
        );
        registry.register(
            "peer_announcements_received",
            "Flow announcements accepted from peers",
            s.peer_announcements_received,
        );
        registry.register(
            "peer_announcements_applied",
            "Flow announcements from peers applied to the flow table",
            s.peer_announcements_applied,
        );
        registry.register(
            "peer_rejected",
            "Peer messages dropped, by reason (over_budget: announcements)",
            s.peer_rejected,
        );
        registry.register(
            "peer_lag_ms",
            "Delay of a peer's last announcement batch, milliseconds",
            s.peer_lag_ms,
        );
        registry.register("peer_up", "1 while a peer is up", s.peer_up);
        registry.register(
            "peers_ready",
            "1 once this instance has synced with its peers (or join_timeout passed)",
            s.peers_ready,
        );
        registry.register(
            "config_generation",
            "Configuration generation (1 at start, +1 per applied reload)",
            s.config_generation,
        );
        registry.register(
            "last_reload_ok",
            "1 if the last reload was applied, 0 if refused, -1 if none yet",
            s.last_reload_ok,
        );
        registry.register("sessions", "Live affinity sessions", s.sessions);
        registry.register(
            "flow_entries",
            "Flow-table entries (two per connection) after the collector's last pass",
            s.flow_entries,
        );
        registry.register(
            "gc_pass_seconds",
            "Duration of the flow collector's last pass",
            s.gc_pass_seconds,
        );
        if let Some(bgp) = s.bgp {
            registry.register(
                "bgp_routes_announced",
                "Routes BIRD last accepted for this instance",
                bgp.routes_announced,
            );
            registry.register(
                "bgp_routes_wanted",
                "Routes this instance wants announced (0 while draining or not ready)",
                bgp.routes_wanted,
            );
            registry.register(
                "bgp_configure_failures",
                "Failed attempts to have BIRD load the routes file",
                bgp.configure_failures,
            );
            registry.register(
                "bgp_draining",
                "1 while the instance withdraws its routes (lb drain, SIGTERM)",
                bgp.draining,
            );
        }
        let mut text = String::new();
        encode(&mut text, &registry)?;
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The announcements' metrics appear only with `[bgp]`, under their documented names.
    #[test]
    fn bgp_metrics_only_with_bgp() {
        let text = Scrape::default().encode().unwrap();
        assert!(!text.contains("lb_bgp_"), "{text}");
        let bgp = BgpMetrics::default();
        bgp.routes_announced.set(3);
        bgp.routes_wanted.set(3);
        bgp.configure_failures.inc_by(2);
        let text = Scrape {
            bgp: Some(bgp),
            ..Scrape::default()
        }
        .encode()
        .unwrap();
        for line in [
            "lb_bgp_routes_announced 3",
            "lb_bgp_routes_wanted 3",
            "lb_bgp_configure_failures_total 2",
            "lb_bgp_draining 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in {text}");
        }
    }
}
