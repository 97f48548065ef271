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
    BACKEND_STATE_DRAINING, Backend, EligibilityKey, MAGLEV_RING_SIZE, MODE_DNAT, MODE_FULL_NAT,
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
    /// Which ring half (0 or 1) is live.
    pub live_half: u32,
    /// Backend ids in config order.
    pub backend_ids: Vec<u32>,
    /// Weights in the live ring, in config order: 0 for drained and down backends.
    pub effective_weights: Vec<u32>,
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
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
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
    /// What each ring half holds in the kernel, per service id (missing = zeros).
    ring_cache: HashMap<u32, [Vec<u32>; 2]>,
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

fn lowest_free(used: impl Iterator<Item = u32>, limit: u32, what: &str) -> Result<u32> {
    let used: BTreeSet<u32> = used.collect();
    (0..limit)
        .find(|id| !used.contains(id))
        .with_context(|| format!("no free {what} id (limit {limit})"))
}

impl ServiceTable {
    pub fn services(&self) -> impl Iterator<Item = &InstalledService> {
        self.services.values()
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
            let mut halves = [Vec::new(), Vec::new()];
            for (half, ring) in halves.iter_mut().enumerate() {
                let base = (entry.id * 2 + half as u32) * MAGLEV_RING_SIZE;
                *ring = (0..MAGLEV_RING_SIZE)
                    .map(|slot| dp.rings.get(&(base + slot), 0))
                    .collect::<Result<_, _>>()?;
            }
            table.ring_cache.insert(entry.id, halves);
            // The config the service was installed with is unknown; the first apply
            // compares rings and entries, so it rewrites only what differs.
            if let Some(service) = config.services.iter().find(|s| service_addr(s) == addr) {
                table.services.insert(
                    addr,
                    InstalledService {
                        id: entry.id,
                        config: service.clone(),
                        live_half: (entry.ring_offset / MAGLEV_RING_SIZE) % 2,
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
                        live_half: (entry.ring_offset / MAGLEV_RING_SIZE) % 2,
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
        for &addr in &wanted_backends {
            if self.backends.contains_key(&addr) {
                continue;
            }
            let id = lowest_free(
                self.backends.values().copied(),
                capacity.max_backends,
                "backend",
            )?;
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
        for addr in gone {
            dp.services.remove(&wire_key(addr))?;
            self.services.remove(&addr);
            summary.services_removed += 1;
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
                None => lowest_free(
                    self.services.values().map(|s| s.id),
                    capacity.max_services,
                    "service",
                )?,
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
            let ring = maglev::build_ring(&ring_input, MAGLEV_RING_SIZE);
            let live_backends = effective_weights.iter().filter(|&&w| w > 0).count();

            let cache = self
                .ring_cache
                .entry(id)
                .or_insert_with(|| [Vec::new(), Vec::new()]);
            let live_half = existing.map(|e| e.live_half);
            let unchanged_ring = live_half.is_some_and(|h| cache[h as usize] == ring);
            let half = match live_half {
                Some(h) if unchanged_ring => h,
                Some(h) => 1 - h,
                None => 0,
            };
            if !unchanged_ring && !ring.is_empty() {
                let base = (id * 2 + half) * MAGLEV_RING_SIZE;
                let old = &cache[half as usize];
                for (slot, &backend_id) in ring.iter().enumerate() {
                    let before = old.get(slot).copied().unwrap_or(0);
                    if before != backend_id {
                        dp.rings.set(base + slot as u32, backend_id, 0)?;
                        summary.ring_slots_written += 1;
                    }
                }
                cache[half as usize] = ring;
                summary.rings_swapped += 1;
            }
            let entry = Service {
                id,
                ring_offset: (id * 2 + half) * MAGLEV_RING_SIZE,
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
        for addr in unused {
            if let Some(id) = self.backends.remove(&addr) {
                dp.backends.set(id, Backend::default(), 0)?;
                self.backend_states.remove(&id);
                summary.backends_removed += 1;
            }
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
