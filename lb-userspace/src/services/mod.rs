//! Programs the policy tables (services, backends, Maglev rings, local addresses) from
//! a validated config, as a difference against what is already installed.
//!
//! Ids are stable: a service keeps its id (and so its counters and rings) and a backend
//! keeps its id across reloads for as long as it is configured. A changed ring is
//! written into the service's idle ring half, then the service entry is flipped to it
//! in one map update, so the data path never sees a half-written ring.
//!
//! An apply is `plan` (pure: every check, and the writes in a safe order) followed by
//! `execute` (only the writes); the ring pool's allocation is in `ring_pool`.

pub mod addr_filter;
mod execute;
mod plan;
mod ring_pool;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
};

use anyhow::Result;
use lb_common::{
    BACKEND_STATE_ACTIVE, BACKEND_STATE_DOWN, BACKEND_STATE_DRAINING, Service, ServiceKey, Settings,
};
use serde::Serialize;

use self::ring_pool::RingPool;
pub use self::{
    execute::execute,
    plan::{KernelView, Op, Plan, plan},
    ring_pool::RingRegion,
};
pub use crate::domain::{BackendAddr, ServiceAddr};
use crate::{
    config::{BackendConfig, Config, ServiceConfig},
    dataplane::Dataplane,
    domain::{DenyAction, Mode, Prefix, Protocol},
};

/// One installed service.
#[derive(Clone, Debug)]
pub struct InstalledService {
    pub id: u32,
    pub config: ServiceConfig,
    /// The service's two rings in the pool.
    pub rings: RingRegion,
    /// Which ring half (0 or 1) is live.
    pub live_half: u32,
    /// Backend ids in config order.
    pub backend_ids: Vec<u32>,
    /// Weights in the live ring, in config order: 0 for drained and down backends.
    pub effective_weights: Vec<u32>,
    /// Automatic SYN cookie flags in the service entry (`Overrides::syn_cookies`).
    pub syn_cookie_flags: u8,
}

impl InstalledService {
    /// Each configured backend with its id and its weight in the live ring.
    pub fn members(&self) -> impl Iterator<Item = (&BackendConfig, u32, u32)> + '_ {
        self.config
            .backends
            .iter()
            .zip(&self.backend_ids)
            .zip(&self.effective_weights)
            .map(|((backend, &id), &weight)| (backend, id, weight))
    }
}

/// Run-time changes on top of the config: operator drains and weights, health results.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// Backends (in every service) that take no new flows.
    pub drained: BTreeSet<BackendAddr>,
    /// Weight set with `lb backend weight`, per (service name, backend).
    pub weights: BTreeMap<(String, BackendAddr), u32>,
    /// Backends whose health check failed, per (service name, backend).
    pub down: BTreeSet<(String, BackendAddr)>,
    /// Automatic SYN cookie flags (`syn_cookies::CookieMode::flags`) per service name;
    /// only services with `syn_cookies = "auto"` get them.
    pub syn_cookies: BTreeMap<String, u8>,
}

impl Overrides {
    /// The weight a backend of a service has in its ring.
    pub fn effective_weight(&self, service: &str, addr: BackendAddr, configured: u32) -> u32 {
        let key = (service.to_string(), addr);
        if self.drained.contains(&addr) || self.down.contains(&key) {
            0
        } else {
            self.weights.get(&key).copied().unwrap_or(configured)
        }
    }

    /// The automatic SYN cookie flags of a service in the data path.
    pub fn syn_cookie_flags(&self, service: &ServiceConfig) -> u8 {
        if service.syn_cookies != crate::domain::SynCookies::Auto {
            return 0;
        }
        self.syn_cookies.get(&service.name).copied().unwrap_or(0)
            & (lb_common::SERVICE_FLAG_SYN_COOKIES | lb_common::SERVICE_FLAG_COOKIE_ACKS)
    }

    /// `BACKEND_STATE_*` of a backend address in the data path.
    pub fn state(&self, addr: BackendAddr) -> u8 {
        if self.drained.contains(&addr) {
            BACKEND_STATE_DRAINING
        } else if self.down.iter().any(|(_, a)| *a == addr) {
            BACKEND_STATE_DOWN
        } else {
            BACKEND_STATE_ACTIVE
        }
    }
}

/// What one `apply` changed, for logs and the reload answer.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ApplySummary {
    pub services_added: usize,
    pub services_removed: usize,
    pub services_changed: usize,
    pub rings_swapped: usize,
    pub ring_slots_written: usize,
    pub backends_added: usize,
    pub backends_removed: usize,
}

/// What the controller has installed in the maps: the state the next apply is a
/// difference against.
#[derive(Clone, Debug, Default)]
pub struct ServiceTable {
    services: BTreeMap<ServiceAddr, InstalledService>,
    backends: HashMap<BackendAddr, u32>,
    ring_pool: RingPool,
    /// LOCAL_ADDRS: address → `ADDR_KIND_*`.
    local_addrs: BTreeMap<Ipv4Addr, u32>,
    settings: Option<Settings>,
    /// State written into each backend's BACKENDS entry.
    backend_states: HashMap<u32, u8>,
    /// Allow-list prefixes in ELIGIBILITY, by service id.
    eligibility: BTreeSet<(u32, Prefix)>,
    /// What ADDR_FILTER holds and why.
    addr_filter: addr_filter::AddrFilterState,
}

pub fn service_addr(service: &ServiceConfig) -> ServiceAddr {
    (service.vip, service.port, service.protocol.number())
}

/// What keeps an affinity session of one service alive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionPolicy {
    pub timeout_ns: u64,
    /// Backend ids in the service's ring (effective weight > 0).
    pub live_backends: BTreeSet<u32>,
}

impl SessionPolicy {
    /// Whether a session last used at `last_seen_ns` and pinned to `backend_id` stays.
    pub fn keeps(&self, backend_id: u32, last_seen_ns: u64, now_ns: u64) -> bool {
        now_ns.saturating_sub(last_seen_ns) <= self.timeout_ns
            && self.live_backends.contains(&backend_id)
    }
}

impl ServiceTable {
    pub fn services(&self) -> impl Iterator<Item = &InstalledService> {
        self.services.values()
    }

    /// Session policy of every installed service with affinity, by service id. A
    /// session of any other service id, or pinned to a backend the service no longer
    /// has in its ring (removed, weight 0, drained, down), is stale: each new
    /// connection would otherwise refresh it and keep it alive.
    pub fn session_policies(&self) -> HashMap<u32, SessionPolicy> {
        self.services
            .values()
            .filter_map(|s| {
                let timeout = s.config.affinity_timeout?;
                let live_backends = s
                    .backend_ids
                    .iter()
                    .zip(&s.effective_weights)
                    .filter(|&(_, &weight)| weight > 0)
                    .map(|(&id, _)| id)
                    .collect();
                Some((
                    s.id,
                    SessionPolicy {
                        timeout_ns: timeout.as_nanos().min(u128::from(u64::MAX)) as u64,
                        live_backends,
                    },
                ))
            })
            .collect()
    }

    /// The installed service at (VIP, port, protocol).
    pub fn service_at(&self, addr: ServiceAddr) -> Option<&InstalledService> {
        self.services.get(&addr)
    }

    pub fn backend_id(&self, addr: BackendAddr) -> Option<u32> {
        self.backends.get(&addr).copied()
    }

    /// Service name by id, for flow dumps.
    /// Automatic SYN cookie flags of the service entries (after `adopt`: what the daemon
    /// before left, so that a restart does not switch a flooded service's cookies off).
    pub fn syn_cookie_flags(&self) -> BTreeMap<String, u8> {
        self.services
            .values()
            .filter(|s| s.syn_cookie_flags != 0)
            .map(|s| (s.config.name.clone(), s.syn_cookie_flags))
            .collect()
    }

    pub fn service_name(&self, id: u32) -> Option<&str> {
        self.services
            .values()
            .find(|s| s.id == id)
            .map(|s| s.config.name.as_str())
    }

    /// Backends the data path has in the draining state (after `adopt`: the drains of
    /// the daemon that came before, which survive a restart).
    pub fn draining(&self) -> BTreeSet<BackendAddr> {
        self.backends
            .iter()
            .filter(|(_, id)| self.backend_states.get(id) == Some(&BACKEND_STATE_DRAINING))
            .map(|(addr, _)| *addr)
            .collect()
    }

    pub fn backends(&self) -> impl Iterator<Item = (BackendAddr, u32)> + '_ {
        self.backends.iter().map(|(a, id)| (*a, *id))
    }

    /// Rebuilds this table from the maps an earlier daemon left pinned, so that the
    /// next `apply` is a difference against what the data path really holds (ids,
    /// live ring halves and their contents stay; nothing is rewritten needlessly).
    pub fn adopt(dp: &Dataplane, config: &Config) -> Result<ServiceTable> {
        let mut table = ServiceTable::default();
        for id in 0..dp.capacity().max_backends {
            let backend = dp.backend(id)?;
            if let Some(addr) = backend.address() {
                table.backends.insert((*addr.ip(), addr.port()), id);
                table.backend_states.insert(id, backend.state);
            }
        }
        table.local_addrs = dp.local_addrs()?.into_iter().collect();
        // The earlier daemon's addresses and flows keep their bits until the first apply
        // and the collector show they are no longer needed.
        table.addr_filter = addr_filter::AddrFilterState::adopted(
            table
                .local_addrs
                .keys()
                .copied()
                .chain(table.backends.keys().map(|&(addr, _)| addr)),
            &dp.flow_entries(),
        );
        table.settings = Some(dp.settings()?);
        for (service_id, addr, len) in dp.eligibility_prefixes()? {
            table.eligibility.insert((service_id, Prefix { addr, len }));
        }
        for (key, entry) in dp.service_entries()? {
            let vip = key.vip();
            let addr: ServiceAddr = (*vip.ip(), vip.port(), key.proto);
            // The live and idle rings are the region's two halves, in either order.
            let rings = RingRegion {
                base: entry.ring_offset.min(entry.ring_idle_offset),
                size: entry.ring_size,
            };
            let live_half = u32::from(entry.ring_offset > entry.ring_idle_offset);
            table.ring_pool.reserve(rings);
            // The config the service was installed with is unknown; the first apply
            // compares rings and entries, so it rewrites only what differs.
            let config = match config.services.iter().find(|s| service_addr(s) == addr) {
                Some(service) => service.clone(),
                // Not in the config any more: the first apply removes it.
                None => placeholder_config(addr),
            };
            table.services.insert(
                addr,
                InstalledService {
                    id: entry.id,
                    config,
                    rings,
                    live_half,
                    backend_ids: Vec::new(),
                    effective_weights: Vec::new(),
                    syn_cookie_flags: entry.flags
                        & (lb_common::SERVICE_FLAG_SYN_COOKIES
                            | lb_common::SERVICE_FLAG_COOKIE_ACKS),
                },
            );
        }
        Ok(table)
    }

    /// A collector pass begins, before it reads the flow table (`addr_filter`).
    pub fn begin_filter_pass(&mut self) -> u64 {
        self.addr_filter.begin_pass()
    }

    /// Collector pass `pass` read `entries`: the address filter drops the bits no
    /// configured address and no flow needs any more (and is written if it changed).
    pub fn end_filter_pass(
        &mut self,
        dp: &mut Dataplane,
        pass: u64,
        entries: &[(lb_common::FlowKey, lb_common::FlowEntry)],
    ) -> Result<()> {
        self.addr_filter.end_pass(pass, entries);
        if let Some(filter) = self.addr_filter.write_needed() {
            dp.write_addr_filter(&filter)?;
            self.addr_filter.mark_written(filter);
        }
        Ok(())
    }

    /// Brings the kernel tables to `config`. The config must be validated already.
    pub fn apply(&mut self, dp: &mut Dataplane, config: &Config) -> Result<ApplySummary> {
        self.apply_with(dp, config, &Overrides::default())
    }

    /// Brings the kernel tables to `config` with run-time `overrides` on top: plans the
    /// whole change (a refused plan writes nothing), then executes it.
    pub fn apply_with(
        &mut self,
        dp: &mut Dataplane,
        config: &Config,
        overrides: &Overrides,
    ) -> Result<ApplySummary> {
        let kernel = KernelView {
            capacity: dp.capacity(),
            ring_slots: dp.ring_slots(),
        };
        let plan = plan(self, config, overrides, kernel)?;
        if let Err(e) = execute(&plan.ops, dp) {
            self.recover(dp, config, plan);
            return Err(e);
        }
        *self = plan.installed;
        Ok(plan.summary)
    }

    /// After a write failed part way: the installed state is read back from the maps,
    /// so the next apply is a difference against what they really hold.
    fn recover(&mut self, dp: &Dataplane, config: &Config, plan: Plan) {
        let adopted = ServiceTable::adopt(dp, config);
        let kernel_entries = dp.service_entries();
        match (adopted, kernel_entries) {
            (Ok(mut table), Ok(entries)) => {
                keep_planned(&mut table, &entries.into_iter().collect(), &plan);
                // The planned filter covers the old addresses and the new ones, so
                // whatever mix of them the maps hold.
                table.addr_filter = plan.installed.addr_filter.clone();
                *self = table;
            }
            (Err(e), _) | (_, Err(e)) => {
                // Neither state is exact then; the planned one at least never has a
                // ring written into the live half of a service that was flipped.
                log::error!("reading the maps back after a failed apply failed: {e:#}");
                *self = plan.installed;
            }
        }
        // Whether the filter's write went through is unknown: the next apply writes it.
        self.addr_filter.forget_written();
    }
}

/// Gives the services of a table read back after a failed apply (`adopted`: no backend
/// lists, so each would be rewritten by the next apply) the planned backends and
/// weights where the kernel holds exactly what the plan meant it to: the planned
/// entry, or an unchanged one, with the planned ring region and live half. Any other
/// service keeps no backend list, so the next apply writes it again.
fn keep_planned(
    adopted: &mut ServiceTable,
    kernel_entries: &HashMap<ServiceKey, Service>,
    plan: &Plan,
) {
    let planned_entries: HashMap<ServiceKey, Service> = plan
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::WriteService { key, entry } => Some((*key, *entry)),
            _ => None,
        })
        .collect();
    for (addr, service) in &mut adopted.services {
        let key = ServiceKey::new(addr.0, addr.1, addr.2);
        let entry_as_planned = match planned_entries.get(&key) {
            Some(planned_entry) => kernel_entries.get(&key) == Some(planned_entry),
            None => true,
        };
        if let Some(want) = plan.installed.services.get(addr)
            && entry_as_planned
            && (want.id, want.rings, want.live_half)
                == (service.id, service.rings, service.live_half)
        {
            service.config = want.config.clone();
            service.backend_ids = want.backend_ids.clone();
            service.effective_weights = want.effective_weights.clone();
            service.syn_cookie_flags = want.syn_cookie_flags;
        }
    }
}

/// Stands for an adopted service the config no longer has, until `apply` removes it.
fn placeholder_config(addr: ServiceAddr) -> ServiceConfig {
    ServiceConfig {
        name: String::new(),
        vip: addr.0,
        port: addr.1,
        protocol: if addr.2 == lb_common::IPPROTO_UDP {
            Protocol::Udp
        } else {
            Protocol::Tcp
        },
        mode: Mode::FullNat,
        snat_ips: Vec::new(),
        syn_proxy: false,
        syn_cookies: crate::domain::SynCookies::Off,
        syn_cookie_threshold: crate::domain::DEFAULT_SYN_COOKIE_THRESHOLD,
        backends: Vec::new(),
        allow: None,
        deny: DenyAction::Drop,
        affinity_timeout: None,
        health_check: None,
        on_backend_down: crate::domain::BackendDown::Keep,
        unknown_segment: crate::domain::UnknownSegment::Drop,
    }
}
