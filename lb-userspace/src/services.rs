//! Programs the policy tables (services, backends, Maglev rings, local addresses) from
//! a validated config, as a difference against what is already installed.
//!
//! Ids are stable: a service keeps its id (and so its counters and rings) and a backend
//! keeps its id across reloads for as long as it is configured. A changed ring is
//! written into the service's idle ring half, then the service entry is flipped to it
//! in one map update, so the data path never sees a half-written ring.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
};

use anyhow::{Context as _, Result, bail};
use lb_common::{
    ADDR_KIND_SNAT, ADDR_KIND_VIP, BACKEND_STATE_ACTIVE, BACKEND_STATE_DOWN,
    BACKEND_STATE_DRAINING, Backend, EligibilityKey, MODE_DNAT, MODE_FULL_NAT,
    SERVICE_FLAG_AFFINITY, SERVICE_FLAG_AUTH_REQUIRED, SERVICE_FLAG_AUTH_RST,
    SERVICE_FLAG_SYN_PROXY, Service, ServiceKey, Settings,
};
use serde::Serialize;

use crate::{
    config::{Config, DenyAction, Mode, Prefix, Protocol, ServiceConfig},
    dataplane::Dataplane,
    maglev::{self, MaglevBackend},
};

/// Identity of a service: what a client addresses.
pub type ServiceAddr = (Ipv4Addr, u16, u8);
/// Identity of a backend: where packets go.
pub type BackendAddr = (Ipv4Addr, u16);

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
}

/// A service's place in the MAGLEV_RINGS pool: two rings of `size` slots from `base`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingRegion {
    pub base: u32,
    pub size: u32,
}

impl RingRegion {
    /// First slot of ring half 0 or 1.
    pub fn offset(&self, half: u32) -> u32 {
        self.base + half * self.size
    }

    fn slots(&self, half: u32) -> std::ops::Range<usize> {
        let start = self.offset(half) as usize;
        start..start + self.size as usize
    }
}

/// Allocation of the ring pool: first fit over the gaps between used regions.
#[derive(Default)]
struct RingPool {
    /// Used regions: base → length in slots.
    used: BTreeMap<u32, u32>,
}

impl RingPool {
    fn allocate(&mut self, len: u32, capacity: u32) -> Result<u32> {
        let mut start = 0u32;
        for (&base, &used) in &self.used {
            if base - start >= len {
                break;
            }
            start = base + used;
        }
        if u64::from(start) + u64::from(len) > u64::from(capacity) {
            bail!(
                "the Maglev ring pool is full: {len} more slots needed, {} of {capacity} in use \
                 (raise limits.max_ring_slots; it changes with a clean restart)",
                self.used.values().map(|&l| u64::from(l)).sum::<u64>()
            );
        }
        self.used.insert(start, len);
        Ok(start)
    }

    fn free(&mut self, region: RingRegion) {
        self.used.remove(&region.base);
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

#[derive(Default)]
pub struct ServiceTable {
    services: BTreeMap<ServiceAddr, InstalledService>,
    backends: HashMap<BackendAddr, u32>,
    ring_pool: RingPool,
    local_addrs: BTreeMap<u32, u32>,
    settings: Option<Settings>,
    /// State written into each backend's BACKENDS entry.
    backend_states: HashMap<u32, u8>,
    /// Allow-list prefixes in ELIGIBILITY, by service id.
    eligibility: BTreeSet<(u32, Prefix)>,
}

fn eligibility_key(service_id: u32, prefix: Prefix) -> aya::maps::lpm_trie::Key<EligibilityKey> {
    aya::maps::lpm_trie::Key::new(
        32 + u32::from(prefix.len),
        EligibilityKey {
            service_id_be: service_id.to_be(),
            addr: u32::from(prefix.addr).to_be(),
        },
    )
}

fn backend_entry(addr: BackendAddr, state: u8) -> Backend {
    Backend {
        ip: u32::from(addr.0).to_be(),
        port: addr.1.to_be(),
        state,
        _pad: 0,
    }
}

pub fn service_addr(service: &ServiceConfig) -> ServiceAddr {
    (service.vip, service.port, service.protocol.number())
}

fn wire_key(addr: ServiceAddr) -> ServiceKey {
    ServiceKey {
        vip: u32::from(addr.0).to_be(),
        port: addr.1.to_be(),
        proto: addr.2,
        _pad: 0,
    }
}

/// Hands out the lowest free ids, in increasing order, within one `apply` (one scan
/// for all of them: 100,000 new backends must not cost 100,000 scans).
struct FreeIds {
    used: BTreeSet<u32>,
    next: u32,
    limit: u32,
    what: &'static str,
    /// Ids freed in this apply: handed out only when no other id is left.
    last_resort: Vec<u32>,
}

impl FreeIds {
    fn new(used: impl Iterator<Item = u32>, limit: u32, what: &'static str) -> FreeIds {
        FreeIds {
            used: used.collect(),
            next: 0,
            limit,
            what,
            last_resort: Vec::new(),
        }
    }

    fn take(&mut self) -> Result<u32> {
        while self.used.contains(&self.next) {
            self.next += 1;
        }
        if self.next >= self.limit {
            if !self.last_resort.is_empty() {
                return Ok(self.last_resort.remove(0));
            }
            bail!("no free {} id (limit {})", self.what, self.limit);
        }
        self.used.insert(self.next);
        Ok(self.next)
    }
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

    pub fn backend_id(&self, addr: BackendAddr) -> Option<u32> {
        self.backends.get(&addr).copied()
    }

    /// Service name by id, for flow dumps.
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
        for id in 0..dp.capacity.max_backends {
            let backend = dp.backends.get(&id, 0)?;
            if backend.ip != 0 {
                let addr = (
                    Ipv4Addr::from(u32::from_be(backend.ip)),
                    u16::from_be(backend.port),
                );
                table.backends.insert(addr, id);
                table.backend_states.insert(id, backend.state);
            }
        }
        for item in dp.local_addrs.iter() {
            let (addr, kind) = item?;
            table.local_addrs.insert(addr, kind);
        }
        table.settings = Some(dp.settings.get(&0, 0)?);
        for item in dp.eligibility.iter() {
            let (key, _) = item?;
            let data = key.data();
            table.eligibility.insert((
                u32::from_be(data.service_id_be),
                Prefix {
                    addr: Ipv4Addr::from(u32::from_be(data.addr)),
                    len: (key.prefix_len() - 32) as u8,
                },
            ));
        }
        for item in dp.services.iter() {
            let (key, entry) = item?;
            let addr: ServiceAddr = (
                Ipv4Addr::from(u32::from_be(key.vip)),
                u16::from_be(key.port),
                key.proto,
            );
            // The live and idle rings are the region's two halves, in either order.
            let rings = RingRegion {
                base: entry.ring_offset.min(entry.ring_idle_offset),
                size: entry.ring_size,
            };
            let live_half = u32::from(entry.ring_offset > entry.ring_idle_offset);
            table.ring_pool.used.insert(rings.base, 2 * rings.size);
            // The config the service was installed with is unknown; the first apply
            // compares rings and entries, so it rewrites only what differs.
            if let Some(service) = config.services.iter().find(|s| service_addr(s) == addr) {
                table.services.insert(
                    addr,
                    InstalledService {
                        id: entry.id,
                        config: service.clone(),
                        rings,
                        live_half,
                        backend_ids: Vec::new(),
                        effective_weights: Vec::new(),
                    },
                );
            } else {
                // Not in the config any more: the first apply removes it.
                table.services.insert(
                    addr,
                    InstalledService {
                        id: entry.id,
                        config: placeholder_config(addr),
                        rings,
                        live_half,
                        backend_ids: Vec::new(),
                        effective_weights: Vec::new(),
                    },
                );
            }
        }
        Ok(table)
    }

    /// Brings the kernel tables to `config`. The config must be validated already.
    pub fn apply(&mut self, dp: &mut Dataplane, config: &Config) -> Result<ApplySummary> {
        self.apply_with(dp, config, &Overrides::default())
    }

    /// Brings the kernel tables to `config` with run-time `overrides` on top.
    pub fn apply_with(
        &mut self,
        dp: &mut Dataplane,
        config: &Config,
        overrides: &Overrides,
    ) -> Result<ApplySummary> {
        let capacity = dp.capacity;
        if config.services.len() as u32 > capacity.max_services {
            bail!(
                "{} services configured but the loaded maps hold {} (limits change needs a restart)",
                config.services.len(),
                capacity.max_services
            );
        }
        let mut summary = ApplySummary::default();

        let settings = Settings {
            snat_port_min: config.snat_port_min,
            snat_port_max: config.snat_port_max,
            _pad: 0,
        };
        if self.settings != Some(settings) {
            dp.set_settings(settings)?;
            self.settings = Some(settings);
        }

        // Backends: allocate ids for new ones first, free the unused ones last, so a
        // backend that stays keeps its id.
        let wanted_backends: BTreeSet<BackendAddr> = config
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| (b.address, b.port)))
            .collect();
        let mut free_backend_ids = FreeIds::new(
            self.backends.values().copied(),
            capacity.max_backends,
            "backend",
        );
        for &addr in &wanted_backends {
            if self.backends.contains_key(&addr) {
                continue;
            }
            let id = free_backend_ids.take()?;
            let state = overrides.state(addr);
            dp.backends.set(id, backend_entry(addr, state), 0)?;
            self.backends.insert(addr, id);
            self.backend_states.insert(id, state);
            summary.backends_added += 1;
        }
        // State changes (drain, health) reach the data path before the rings do, so a
        // session never pins a new flow to a backend on its way out.
        for (&addr, &id) in &self.backends {
            let state = overrides.state(addr);
            if self.backend_states.get(&id) != Some(&state) {
                dp.backends.set(id, backend_entry(addr, state), 0)?;
                self.backend_states.insert(id, state);
            }
        }

        // Services that went away: stop new flows first (their live flows continue).
        let wanted: BTreeMap<ServiceAddr, &ServiceConfig> = config
            .services
            .iter()
            .map(|s| (service_addr(s), s))
            .collect();
        let gone: Vec<ServiceAddr> = self
            .services
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        // Ids freed here go to a new service of this apply only when no other id is
        // free: a packet that looked the old service up may still be on its way.
        let mut free_service_ids = FreeIds::new(
            self.services.values().map(|s| s.id),
            capacity.max_services,
            "service",
        );
        let mut freed_service_ids = BTreeSet::new();
        for addr in gone {
            dp.services.remove(&wire_key(addr))?;
            if let Some(old) = self.services.remove(&addr) {
                self.ring_pool.free(old.rings);
                // The id may serve another service later: it must not inherit this
                // one's sessions or counters.
                dp.clear_service_stats(old.id)?;
                freed_service_ids.insert(old.id);
                free_service_ids.last_resort.push(old.id);
            }
            summary.services_removed += 1;
        }
        if !freed_service_ids.is_empty() {
            dp.remove_sessions(|key, _| freed_service_ids.contains(&key.service_id));
        }
        for (&addr, &service) in &wanted {
            let backend_ids: Vec<u32> = service
                .backends
                .iter()
                .map(|b| self.backends[&(b.address, b.port)])
                .collect();
            let effective_weights: Vec<u32> = service
                .backends
                .iter()
                .map(|b| overrides.effective_weight(&service.name, (b.address, b.port), b.weight))
                .collect();
            let existing = self.services.get(&addr);
            if let Some(existing) = existing
                && existing.config == *service
                && existing.backend_ids == backend_ids
                && existing.effective_weights == effective_weights
            {
                continue;
            }
            let id = match existing {
                Some(existing) => existing.id,
                None => free_service_ids.take()?,
            };
            let keys: Vec<String> = service
                .backends
                .iter()
                .map(|b| format!("{}:{}", b.address, b.port))
                .collect();
            let ring_input: Vec<MaglevBackend<'_>> = service
                .backends
                .iter()
                .zip(&keys)
                .zip(&backend_ids)
                .zip(&effective_weights)
                .map(|(((_, key), &id), &weight)| MaglevBackend { key, weight, id })
                .collect();
            // Sized from the configured weights (what the config check budgets), never
            // from drains, health or overrides: a new size would remap every flow of the
            // service and need a region nobody budgeted. With a cluster, announced
            // backends come and go, so such a service always gets the largest ring.
            let ring_size = if config.cluster.is_some() {
                lb_common::MAGLEV_RING_SIZE
            } else {
                let configured: Vec<u32> = service.backends.iter().map(|b| b.weight).collect();
                maglev::ring_size_for(&configured)
            };
            let ring = maglev::build_ring(&ring_input, ring_size);
            let live_backends = effective_weights.iter().filter(|&&w| w > 0).count();

            // Same ring size: the idle half of the service's region takes the new ring.
            // Another size: a new region (its half 0), and the old one is freed after
            // the flip.
            let (rings, half, replaced) = match existing {
                Some(e) if e.rings.size == ring_size => {
                    let live = &dp.ring_memory.slots()[e.rings.slots(e.live_half)];
                    let same = live.len() == ring.len()
                        && live.iter().zip(&ring).all(|(&a, &b)| a == u64::from(b));
                    if ring.is_empty() || same {
                        (e.rings, e.live_half, None)
                    } else {
                        (e.rings, 1 - e.live_half, None)
                    }
                }
                _ => {
                    let base = self
                        .ring_pool
                        .allocate(2 * ring_size, capacity.max_ring_slots)?;
                    let rings = RingRegion {
                        base,
                        size: ring_size,
                    };
                    (rings, 0, existing.map(|e| e.rings))
                }
            };
            let unchanged_ring = existing.is_some_and(|e| e.rings == rings && e.live_half == half);
            if !unchanged_ring && !ring.is_empty() {
                let target = &mut dp.ring_memory.slots_mut()[rings.slots(half)];
                for (slot, &backend_id) in target.iter_mut().zip(&ring) {
                    if *slot != u64::from(backend_id) {
                        *slot = u64::from(backend_id);
                        summary.ring_slots_written += 1;
                    }
                }
                summary.rings_swapped += 1;
            }
            let entry = Service {
                id,
                ring_offset: rings.offset(half),
                ring_size,
                ring_idle_offset: rings.offset(1 - half),
                snat_ip: service.snat_ip.map_or(0, |ip| u32::from(ip).to_be()),
                backend_count: live_backends.min(u16::MAX as usize) as u16,
                mode: match service.mode {
                    Mode::FullNat => MODE_FULL_NAT,
                    Mode::Dnat => MODE_DNAT,
                },
                flags: service_flags(service),
                session_timeout_s: service
                    .affinity_timeout
                    .map_or(0, |t| t.as_secs().min(u64::from(u32::MAX)) as u32),
                _pad: 0,
            };
            // Its allow-list first, so the flip never refuses an admitted client.
            for prefix in service.allow.iter().flatten() {
                if self.eligibility.insert((id, *prefix)) {
                    dp.eligibility
                        .insert(&eligibility_key(id, *prefix), 1, 0)
                        .with_context(|| format!("add allow-list prefix {prefix}"))?;
                }
            }
            // The flip: one map update makes the new ring live.
            dp.services.insert(wire_key(addr), entry, 0)?;
            if let Some(old) = replaced {
                self.ring_pool.free(old);
            }
            if existing.is_some() {
                summary.services_changed += 1;
            } else {
                summary.services_added += 1;
            }
            self.services.insert(
                addr,
                InstalledService {
                    id,
                    config: service.clone(),
                    rings,
                    live_half: half,
                    backend_ids,
                    effective_weights,
                },
            );
        }

        // Allow-list prefixes no service has any more (added ones went in above).
        let wanted_prefixes: BTreeSet<(u32, Prefix)> = self
            .services
            .values()
            .flat_map(|s| {
                s.config
                    .allow
                    .iter()
                    .flatten()
                    .map(move |prefix| (s.id, *prefix))
            })
            .collect();
        for &(id, prefix) in self.eligibility.difference(&wanted_prefixes) {
            let _ = dp.eligibility.remove(&eligibility_key(id, prefix));
        }
        self.eligibility = wanted_prefixes;

        // Local addresses: VIPs and SNAT addresses.
        let mut wanted_addrs = BTreeMap::new();
        for service in &config.services {
            if let Some(snat) = service.snat_ip {
                wanted_addrs.insert(u32::from(snat).to_be(), ADDR_KIND_SNAT);
            }
        }
        for service in &config.services {
            wanted_addrs.insert(u32::from(service.vip).to_be(), ADDR_KIND_VIP);
        }
        for (&addr, &kind) in &wanted_addrs {
            if self.local_addrs.get(&addr) != Some(&kind) {
                dp.local_addrs.insert(addr, kind, 0)?;
            }
        }
        for addr in self.local_addrs.keys() {
            if !wanted_addrs.contains_key(addr) {
                dp.local_addrs.remove(addr)?;
            }
        }
        self.local_addrs = wanted_addrs;

        let unused: Vec<BackendAddr> = self
            .backends
            .keys()
            .filter(|a| !wanted_backends.contains(a))
            .copied()
            .collect();
        let mut freed_backend_ids = BTreeSet::new();
        for addr in unused {
            if let Some(id) = self.backends.remove(&addr) {
                dp.backends.set(id, Backend::default(), 0)?;
                self.backend_states.remove(&id);
                // A backend that later gets the id starts without sessions or counters.
                dp.clear_backend_stats(id)?;
                freed_backend_ids.insert(id);
                summary.backends_removed += 1;
            }
        }
        if !freed_backend_ids.is_empty() {
            dp.remove_sessions(|_, entry| freed_backend_ids.contains(&entry.backend_id));
        }
        Ok(summary)
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
        snat_ip: None,
        syn_proxy: false,
        backends: Vec::new(),
        allow: None,
        deny: DenyAction::Drop,
        affinity_timeout: None,
        health_check: None,
        on_backend_down: crate::config::BackendDown::Keep,
    }
}

fn service_flags(service: &ServiceConfig) -> u8 {
    let mut flags = 0;
    if service.allow.is_some() {
        flags |= SERVICE_FLAG_AUTH_REQUIRED;
        if service.deny == DenyAction::Reset {
            flags |= SERVICE_FLAG_AUTH_RST;
        }
    }
    if service.affinity_timeout.is_some() {
        flags |= SERVICE_FLAG_AFFINITY;
    }
    if service.syn_proxy {
        flags |= SERVICE_FLAG_SYN_PROXY;
    }
    flags
}

impl Protocol {
    pub fn name(&self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Mode::FullNat => "full-nat",
            Mode::Dnat => "dnat",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_stays_only_while_fresh_and_its_backend_is_in_the_ring() {
        let policy = SessionPolicy {
            timeout_ns: 10,
            live_backends: [1, 3].into(),
        };
        assert!(policy.keeps(1, 100, 110));
        assert!(!policy.keeps(1, 100, 111), "idle beyond the timeout");
        assert!(!policy.keeps(2, 100, 105), "backend left the ring");
    }

    #[test]
    fn ids_freed_in_this_apply_are_handed_out_last() {
        let mut ids = FreeIds::new([0, 1].into_iter(), 3, "service");
        ids.last_resort.push(1);
        assert_eq!(ids.take().unwrap(), 2);
        assert_eq!(ids.take().unwrap(), 1, "only when nothing else is free");
        assert!(ids.take().is_err());
    }
}
