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
    ADDR_KIND_SNAT, ADDR_KIND_VIP, Backend, MAGLEV_RING_SIZE, MODE_DNAT, MODE_FULL_NAT, Service,
    ServiceKey, Settings,
};
use serde::Serialize;

use crate::{
    config::{Config, Mode, Protocol, ServiceConfig},
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

    /// Brings the kernel tables to `config`. The config must be validated already.
    pub fn apply(&mut self, dp: &mut Dataplane, config: &Config) -> Result<ApplySummary> {
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
            let backend = Backend {
                ip: u32::from(addr.0).to_be(),
                port: addr.1.to_be(),
                _pad: 0,
            };
            dp.backends.set(id, backend, 0)?;
            self.backends.insert(addr, id);
            summary.backends_added += 1;
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
            let existing = self.services.get(&addr);
            if let Some(existing) = existing
                && existing.config == *service
                && existing.backend_ids == backend_ids
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
                .map(|((b, key), &id)| MaglevBackend {
                    key,
                    weight: b.weight,
                    id,
                })
                .collect();
            let ring = maglev::build_ring(&ring_input, MAGLEV_RING_SIZE);
            let live_backends = service.backends.iter().filter(|b| b.weight > 0).count();

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
                flags: if service.syn_proxy {
                    lb_common::SERVICE_FLAG_SYN_PROXY
                } else {
                    0
                },
            };
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
                },
            );
        }

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
                summary.backends_removed += 1;
            }
        }
        Ok(summary)
    }
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
