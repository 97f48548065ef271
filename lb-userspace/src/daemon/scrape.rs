//! Prometheus scrape: the counters and states of the running balancer.

use super::*;
use crate::cluster::router::NodeState;

impl Controller {
    /// The Prometheus text exposition of the current state.
    pub fn metrics(&self) -> Result<String> {
        let mut scrape = Scrape::default();
        for (name, value) in self.dataplane.global_counters()? {
            scrape
                .packets_by_verdict
                .get_or_create(&ReasonLabels {
                    reason: name.to_string(),
                })
                .inc_by(value);
        }
        // Gauges are i64; a count of flow-table entries always fits.
        let active: HashMap<(u32, u32), i64> = self
            .flow_summary
            .connections
            .iter()
            .map(|(ids, n)| (*ids, *n as i64))
            .collect();
        for service in self.table.services() {
            let labels = ServiceLabels {
                service: service.config.name.clone(),
            };
            let stats = self.dataplane.service_stats(service.id)?;
            scrape
                .service_packets
                .get_or_create(&labels)
                .inc_by(stats.packets);
            scrape
                .service_bytes
                .get_or_create(&labels)
                .inc_by(stats.bytes);
            scrape
                .service_new_flows
                .get_or_create(&labels)
                .inc_by(stats.new_flows);
            scrape
                .service_drops
                .get_or_create(&labels)
                .inc_by(stats.drops);
            scrape
                .service_denied
                .get_or_create(&labels)
                .inc_by(stats.denied);
            scrape
                .service_syn_cookies_sent
                .get_or_create(&labels)
                .inc_by(stats.syn_cookies);
            let cookies = self.syn_cookie_stats(&service.config, stats.syn_cookies);
            scrape
                .service_syn_cookies_switched_on
                .get_or_create(&labels)
                .inc_by(cookies.switched_on);
            scrape
                .service_syn_cookies_on
                .get_or_create(&labels)
                .set(i64::from(cookies.mode == "on" || cookies.mode == "always"));
            let service_active: i64 = active
                .iter()
                .filter(|((s, _), _)| *s == service.id)
                .map(|(_, n)| n)
                .sum();
            scrape
                .service_active_flows
                .get_or_create(&labels)
                .set(service_active);
            for (backend, id, effective) in service.members() {
                let labels = BackendLabels {
                    service: service.config.name.clone(),
                    backend: format!("{}:{}", backend.address, backend.port),
                };
                let stats = self.dataplane.backend_stats(id)?;
                scrape
                    .backend_packets
                    .get_or_create(&labels)
                    .inc_by(stats.packets);
                scrape
                    .backend_bytes
                    .get_or_create(&labels)
                    .inc_by(stats.bytes);
                scrape
                    .backend_new_flows
                    .get_or_create(&labels)
                    .inc_by(stats.new_flows);
                scrape
                    .backend_active_flows
                    .get_or_create(&labels)
                    .set(active.get(&(service.id, id)).copied().unwrap_or(0));
                let down = self
                    .overrides
                    .down
                    .contains(&(service.config.name.clone(), (backend.address, backend.port)));
                scrape
                    .backend_up
                    .get_or_create(&labels)
                    .set(i64::from(!down));
                scrape
                    .backend_weight
                    .get_or_create(&labels)
                    .set(i64::from(effective));
            }
        }
        if let Some(cluster) = &self.cluster {
            let engine = lock(&cluster.engine);
            let counters = serde_json::to_value(engine.counters())?;
            for (name, value) in counters.as_object().into_iter().flatten() {
                scrape
                    .cluster_events
                    .get_or_create(&EventLabels {
                        event: name.clone(),
                    })
                    .inc_by(value.as_u64().unwrap_or(0));
            }
            for state in [NodeState::Active, NodeState::Draining, NodeState::Down] {
                let count = engine
                    .endpoints()
                    .iter()
                    .filter(|e| e.state == state)
                    .count();
                scrape
                    .cluster_endpoints
                    .get_or_create(&StateLabels {
                        state: crate::api::serde_name(&state),
                    })
                    .set(count as i64);
            }
        }
        if let Some(bgp) = self.bgp_status() {
            let metrics = crate::metrics::BgpMetrics::default();
            metrics
                .routes_announced
                .set(bgp.routes_announced.unwrap_or(0) as i64);
            metrics.routes_wanted.set(bgp.routes_wanted as i64);
            metrics.configure_failures.inc_by(bgp.configure_failures);
            metrics.draining.set(i64::from(bgp.state == "draining"));
            scrape.bgp = Some(metrics);
        }
        if let Some(peers) = &self.peers {
            let status = peers.status();
            let c = &status.counters;
            scrape.peer_announcements_sent.inc_by(c.announcements_sent);
            scrape
                .peer_announcement_bytes_sent
                .inc_by(c.announcement_bytes_sent);
            if let Some(lag) = &status.install_lag {
                for (quantile, value) in [("0.5", lag.p50_ms), ("0.99", lag.p99_ms)] {
                    scrape
                        .peer_install_lag_ms
                        .get_or_create(&QuantileLabels {
                            quantile: quantile.to_string(),
                        })
                        .set(value as i64);
                }
            }
            scrape
                .peer_announcements_received
                .inc_by(c.announcements_received);
            scrape
                .peer_announcements_applied
                .inc_by(c.announcements_applied);
            for (reason, value) in &c.rejected {
                scrape
                    .peer_rejected
                    .get_or_create(&ReasonLabels {
                        reason: reason.clone(),
                    })
                    .inc_by(*value);
            }
            for peer in &status.peers {
                let labels = PeerLabels {
                    peer: peer.node_id.to_string(),
                };
                if let Some(lag) = peer.lag_ms {
                    scrape.peer_lag_ms.get_or_create(&labels).set(lag as i64);
                }
                scrape.peer_up.get_or_create(&labels).set(i64::from(
                    peer.state == crate::peers::membership::PeerState::Up,
                ));
            }
            scrape.peers_ready.set(i64::from(status.ready));
        }
        scrape.config_generation.set(self.generation as i64);
        scrape
            .last_reload_ok
            .set(self.last_reload_ok.map_or(-1, i64::from));
        scrape.sessions.set(self.dataplane.session_count() as i64);
        scrape.flow_entries.set(self.flow_summary.entries as i64);
        scrape
            .gc_pass_seconds
            .set(self.flow_summary.pass.as_secs_f64());
        scrape.encode()
    }
}
