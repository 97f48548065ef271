//! What a health verdict does to the data plane: a backend leaves or rejoins new-flow
//! selection, and its flows are reset when the service says so.

use super::*;

impl Controller {
    /// Every (service, backend) health check the config asks for.
    pub fn health_targets(&self) -> Vec<HealthTarget> {
        health_targets_of(&self.config)
    }

    /// Takes one probe result; a backend that falls or rises changes the rings.
    pub fn health_result(&mut self, target: &HealthTarget, result: Result<(), String>) {
        if !self.health_targets().contains(target) {
            return; // reconfigured while the probe ran
        }
        let (service, addr, check) = target;
        let key = (service.clone(), *addr);
        let health = self.health.entry(key.clone()).or_default();
        if !health.record(result, check.rise, check.fall) {
            return;
        }
        let up = health.up;
        let reason = health.last_error.clone().unwrap_or_default();
        if up {
            self.overrides.down.remove(&key);
            log::info!("{service}: backend {}:{} is up again", addr.0, addr.1);
        } else {
            self.overrides.down.insert(key);
            log::warn!("{service}: backend {}:{} is down: {reason}", addr.0, addr.1);
        }
        if let Err(e) = self.reapply() {
            log::error!("applying the health change failed: {e:#}");
        }
        if !up {
            let reset = self
                .config
                .services
                .iter()
                .any(|s| &s.name == service && s.on_backend_down == BackendDown::Reset);
            if reset {
                let marked = self.reset_flows(service, *addr);
                log::warn!(
                    "{service}: {marked} connections to {}:{} will be reset",
                    addr.0,
                    addr.1
                );
            }
        }
    }

    /// Marks both entries of every connection of `service` to `addr` for reset: the
    /// data path answers the client's next packet with a RST. Returns the count.
    pub(super) fn reset_flows(&mut self, service: &str, addr: BackendAddr) -> usize {
        let (Some(service_id), Some(backend_id)) = (
            self.table
                .services()
                .find(|s| s.config.name == service)
                .map(|s| s.id),
            self.table.backend_id(addr),
        ) else {
            return 0;
        };
        let mut marked = 0;
        for (key, mut entry) in self.dataplane.flow_entries() {
            if entry.service_id != service_id
                || entry.backend_id != backend_id
                || key.proto != lb_common::IPPROTO_TCP
            {
                continue;
            }
            entry.state = lb_common::FLOW_STATE_RESET;
            // Never resurrect an entry that closed meanwhile.
            if self.dataplane.update_flow_if_exists(key, entry).is_ok()
                && entry.direction == lb_common::FLOW_DIR_CLIENT_TO_SERVER
            {
                marked += 1;
            }
        }
        marked
    }
}

/// Every (service, backend, check) `config` has health checks for.
pub(super) fn health_targets_of(config: &Config) -> Vec<HealthTarget> {
    config
        .services
        .iter()
        .filter_map(|s| s.health_check.as_ref().map(|check| (s, check)))
        .flat_map(|(s, check)| {
            s.backends
                .iter()
                .map(move |b| (s.name.clone(), (b.address, b.port), check.clone()))
        })
        .collect()
}
