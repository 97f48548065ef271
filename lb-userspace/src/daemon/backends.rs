//! Run-time backend changes from the operator (drain, weight, add, remove) and the
//! backend and session views.

use super::*;
use crate::api::{BackendHealth, BackendSource, BackendState};

/// `address` or `address:port` as the operator names a backend.
pub(super) fn parse_backend(text: &str) -> Result<(Ipv4Addr, Option<u16>)> {
    if let Ok(addr) = text.parse::<Ipv4Addr>() {
        return Ok((addr, None));
    }
    match text.parse::<std::net::SocketAddrV4>() {
        Ok(addr) if addr.port() != 0 => Ok((*addr.ip(), Some(addr.port()))),
        _ => bail!("invalid backend {text:?}: expected ADDRESS or ADDRESS:PORT"),
    }
}

impl Controller {
    /// The configured backend addresses `text` names, in `service` if given.
    pub(super) fn resolve(&self, service: Option<&str>, text: &str) -> Result<Vec<BackendAddr>> {
        let (ip, port) = parse_backend(text)?;
        if let Some(name) = service
            && !self.config.services.iter().any(|s| s.name == name)
        {
            bail!("no service named {name:?}");
        }
        let mut found: Vec<BackendAddr> = self
            .config
            .services
            .iter()
            .filter(|s| service.is_none_or(|name| s.name == name))
            .flat_map(|s| s.backends.iter())
            .filter(|b| b.address == ip && port.is_none_or(|p| b.port == p))
            .map(|b| (b.address, b.port))
            .collect();
        found.sort();
        found.dedup();
        match (found.len(), service) {
            (0, Some(name)) => bail!("service {name:?} has no backend {text}"),
            (0, None) => bail!("no service has a backend {text}"),
            (1, _) => Ok(found),
            _ => bail!("{text} names several backends (different ports): give ADDRESS:PORT"),
        }
    }

    pub(super) fn set_drained(&mut self, text: &str, drained: bool) -> Result<ApplySummary> {
        let addr = self.resolve(None, text)?[0];
        let was = self.overrides.drained.contains(&addr);
        if was == drained {
            bail!(
                "backend {}:{} is {} draining",
                addr.0,
                addr.1,
                if drained { "already" } else { "not" }
            );
        }
        if drained {
            self.overrides.drained.insert(addr);
        } else {
            self.overrides.drained.remove(&addr);
        }
        let summary = self.reapply()?;
        log::info!(
            "backend {}:{} {}: {summary:?}",
            addr.0,
            addr.1,
            if drained { "draining" } else { "undrained" }
        );
        Ok(summary)
    }

    pub(super) fn set_weight(
        &mut self,
        service: &str,
        text: &str,
        weight: u32,
    ) -> Result<ApplySummary> {
        crate::domain::weight(weight.into()).map_err(anyhow::Error::msg)?;
        let addr = self.resolve(Some(service), text)?[0];
        self.overrides
            .weights
            .insert((service.to_string(), addr), weight);
        let summary = self.reapply()?;
        log::info!(
            "{service}: backend {}:{} weight {weight}: {summary:?}",
            addr.0,
            addr.1
        );
        Ok(summary)
    }

    pub(super) fn add_backend(
        &mut self,
        service: &str,
        text: &str,
        weight: u32,
    ) -> Result<ApplySummary> {
        crate::domain::weight(weight.into()).map_err(anyhow::Error::msg)?;
        let (ip, port) = parse_backend(text)?;
        if !crate::domain::is_unicast(ip) {
            bail!("backend address must be unicast, got {ip}");
        }
        let mut config = self.config.clone();
        let Some(entry) = config.services.iter_mut().find(|s| s.name == service) else {
            bail!("no service named {service:?}");
        };
        let port = port.unwrap_or(entry.port);
        if entry
            .backends
            .iter()
            .any(|b| b.address == ip && b.port == port)
        {
            bail!("service {service:?} already has backend {ip}:{port}");
        }
        entry.backends.push(BackendConfig {
            address: ip,
            port,
            weight,
        });
        let distinct = config
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| (b.address, b.port)))
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        if distinct as u64 > u64::from(self.dataplane.capacity().max_backends) {
            bail!(
                "limits.max_backends ({}) reached",
                self.dataplane.capacity().max_backends
            );
        }
        let summary = self.apply_config(&config)?;
        self.config = config;
        log::info!("{service}: added backend {ip}:{port} (weight {weight}): {summary:?}");
        Ok(summary)
    }

    pub(super) fn remove_backend(&mut self, service: &str, text: &str) -> Result<ApplySummary> {
        let addr = self.resolve(Some(service), text)?[0];
        let mut config = self.config.clone();
        let Some(entry) = config.services.iter_mut().find(|s| s.name == service) else {
            bail!("no service {service:?}");
        };
        entry.backends.retain(|b| (b.address, b.port) != addr);
        if !entry.backends.iter().any(|b| b.weight > 0) && self.cluster.is_none() {
            bail!(
                "removing {}:{} would leave service {service:?} without a backend that \
                 can take flows",
                addr.0,
                addr.1
            );
        }
        let summary = self.apply_new_config(config)?;
        log::info!(
            "{service}: removed backend {}:{}: {summary:?}",
            addr.0,
            addr.1
        );
        Ok(summary)
    }

    /// Makes `config` the daemon's config: the overrides and health of backends it no
    /// longer has are forgotten first, so one apply settles everything. A failed apply
    /// changes nothing.
    pub(super) fn apply_new_config(&mut self, config: Config) -> Result<ApplySummary> {
        let kept = (self.overrides.clone(), self.health.clone());
        self.prune_overrides(&config);
        match self.apply_config(&config) {
            Ok(summary) => {
                self.config = config;
                Ok(summary)
            }
            Err(e) => {
                (self.overrides, self.health) = kept;
                Err(e)
            }
        }
    }

    /// Forgets overrides and health of backends `config` does not have.
    pub(super) fn prune_overrides(&mut self, config: &Config) {
        let present: std::collections::BTreeSet<(String, BackendAddr)> = config
            .services
            .iter()
            .flat_map(|s| {
                s.backends
                    .iter()
                    .map(move |b| (s.name.clone(), (b.address, b.port)))
            })
            .collect();
        let addrs: std::collections::BTreeSet<BackendAddr> =
            present.iter().map(|(_, a)| *a).collect();
        self.overrides.drained.retain(|a| addrs.contains(a));
        self.overrides.weights.retain(|k, _| present.contains(k));
        self.overrides.down.retain(|k| present.contains(k));
        let checked: std::collections::BTreeSet<(String, BackendAddr)> =
            health_results::health_targets_of(config)
                .into_iter()
                .map(|(s, a, _)| (s, a))
                .collect();
        self.health.retain(|k, _| checked.contains(k));
        self.overrides.down.retain(|k| checked.contains(k));
    }

    pub(super) fn backends(&self) -> Result<Vec<api::BackendRow>> {
        let active = &self.flow_summary.connections;
        let mut rows = Vec::new();
        for service in self.table.services() {
            for (backend, id, effective) in service.members() {
                let addr = (backend.address, backend.port);
                let key = (service.config.name.clone(), addr);
                let configured = self.config.services.iter().any(|s| {
                    s.name == service.config.name
                        && s.backends.iter().any(|b| (b.address, b.port) == addr)
                });
                let announced = self.cluster.as_ref().filter(|_| !configured).and_then(|c| {
                    c.announced
                        .iter()
                        .find(|e| e.service == service.config.name && (e.node, e.port) == addr)
                });
                let (state, health) = match announced {
                    // The router's view of the node and the node's own report.
                    Some(e) => (e.state.into(), e.health.into()),
                    None => (
                        match self.overrides.state(addr) {
                            lb_common::BACKEND_STATE_DRAINING => BackendState::Draining,
                            _ if self.overrides.down.contains(&key) => BackendState::Down,
                            _ => BackendState::Active,
                        },
                        match (&service.config.health_check, self.health.get(&key)) {
                            (None, _) => BackendHealth::Unchecked,
                            (Some(_), Some(h)) if !h.up => BackendHealth::Down,
                            (Some(_), _) => BackendHealth::Up,
                        },
                    ),
                };
                let stats = self.dataplane.backend_stats(id)?;
                rows.push(api::BackendRow {
                    service: service.config.name.clone(),
                    backend: SocketAddrV4::new(backend.address, backend.port),
                    id,
                    weight: self
                        .overrides
                        .weights
                        .get(&key)
                        .copied()
                        .unwrap_or(backend.weight),
                    effective_weight: effective,
                    source: if configured {
                        BackendSource::Config
                    } else {
                        BackendSource::Announced
                    },
                    state,
                    health,
                    last_error: self.health.get(&key).and_then(|h| h.last_error.clone()),
                    active_flows: active.get(&(service.id, id)).copied().unwrap_or(0),
                    new_flows: stats.new_flows,
                    packets: stats.packets,
                    bytes: stats.bytes,
                });
            }
        }
        Ok(rows)
    }

    pub(super) fn sessions(&self) -> Vec<api::SessionRow> {
        let now = sys::monotonic_ns();
        let addr_of: HashMap<u32, BackendAddr> =
            self.table.backends().map(|(a, id)| (id, a)).collect();
        let mut rows: Vec<(u64, api::SessionRow)> = Vec::new();
        for (key, entry) in self.dataplane.session_entries() {
            let client = key.client();
            rows.push((
                entry.created_ns,
                api::SessionRow {
                    client,
                    service: self.table.service_name(key.service_id).map(str::to_string),
                    backend: addr_of
                        .get(&entry.backend_id)
                        .map(|&(ip, port)| SocketAddrV4::new(ip, port)),
                    backend_id: entry.backend_id,
                    age_secs: now.saturating_sub(entry.created_ns) / 1_000_000_000,
                    idle_secs: now.saturating_sub(entry.last_seen_ns) / 1_000_000_000,
                    handle: format!("{}/{client}", key.service_id),
                },
            ));
        }
        rows.sort_by_key(|(created, _)| *created);
        rows.into_iter().map(|(_, row)| row).collect()
    }

    /// Deletes sessions idle beyond their service's timeout, of removed services, or
    /// pinned to a backend no longer in their service's ring.
    pub fn expire_sessions(&mut self) -> usize {
        let now = sys::monotonic_ns();
        let policies = self.table.session_policies();
        self.dataplane.remove_sessions(|key, entry| {
            policies
                .get(&key.service_id)
                .is_none_or(|p| !p.keeps(entry.backend_id, entry.last_seen_ns, now))
        })
    }
}
