//! The pure half of an apply: from what is installed, the config and the overrides, the
//! map writes that bring the data path there, in the order that keeps every packet
//! consistent, and the installed state after them. Every check (capacities, free ids,
//! room in the ring pool, allow-list room) happens here, before the first write, so a
//! refused apply changes nothing.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use anyhow::{Result, bail};
use lb_common::{
    ADDR_KIND_SNAT, ADDR_KIND_VIP, Backend, MAX_ELIGIBILITY_PREFIXES, MODE_DNAT, MODE_FULL_NAT,
    SERVICE_FLAG_AFFINITY, SERVICE_FLAG_AUTH_REQUIRED, SERVICE_FLAG_AUTH_RST,
    SERVICE_FLAG_NO_FLOW_RST, SERVICE_FLAG_SYN_PROXY, Service, ServiceKey, Settings,
};

use super::{
    ApplySummary, BackendAddr, InstalledService, Overrides, ServiceAddr, ServiceTable,
    ring_pool::RingRegion, service_addr,
};
use crate::{
    config::{Config, ServiceConfig},
    domain::{DenyAction, Limits, Mode, Prefix, UnknownSegment},
    maglev::{self, MaglevBackend},
};

/// What a plan reads of the loaded data path: its capacities and the ring pool's
/// current contents (to leave equal rings and slots alone).
#[derive(Clone, Copy)]
pub struct KernelView<'a> {
    pub capacity: Limits,
    /// MAGLEV_RINGS, one u32 slot in the low half of each u64.
    pub ring_slots: &'a [u64],
}

/// One map write of a plan. `execute` performs them in order, nothing else.
#[derive(Clone, PartialEq, Eq)]
pub enum Op {
    WriteSettings(Settings),
    /// A BACKENDS slot: a new backend, a state change, or `Backend::default()` to empty
    /// a freed id.
    WriteBackend {
        id: u32,
        backend: Backend,
    },
    RemoveService(ServiceKey),
    /// Zero a freed service id's counters.
    ClearServiceStats(u32),
    /// Zero a freed backend id's counters.
    ClearBackendStats(u32),
    /// Delete the sessions of these (freed) service ids.
    RemoveSessionsOfServices(BTreeSet<u32>),
    /// Delete the sessions pinned to these (freed) backend ids.
    RemoveSessionsOfBackends(BTreeSet<u32>),
    /// Write a ring into the pool from `first_slot` (an idle half or a new region).
    WriteRing {
        first_slot: u32,
        ring: Vec<u32>,
    },
    AddEligibility {
        service_id: u32,
        prefix: Prefix,
    },
    /// Removal of an allow-list prefix. A failure is logged and does not stop the
    /// apply: the stale prefix then stays keyed by this service id (the service itself
    /// no longer lists it; a service that later reuses the id would also admit it).
    RemoveEligibility {
        service_id: u32,
        prefix: Prefix,
    },
    /// Create or replace a service entry: for a changed ring, the flip.
    WriteService {
        key: ServiceKey,
        entry: Service,
    },
    WriteLocalAddr {
        addr: Ipv4Addr,
        kind: u32,
    },
    RemoveLocalAddr(Ipv4Addr),
    /// The SNAT addresses of a service with several.
    WriteSnatPool {
        service_id: u32,
        pool: lb_common::SnatPool,
    },
    /// The address filter, whole: an apply's first write, and it only adds bits.
    WriteAddrFilter(Box<super::addr_filter::AddrFilter>),
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // A ring has up to 65,537 slots: its place and length say enough.
            Op::WriteRing { first_slot, ring } => f
                .debug_struct("WriteRing")
                .field("first_slot", first_slot)
                .field("len", &ring.len())
                .finish(),
            Op::WriteSettings(s) => f.debug_tuple("WriteSettings").field(s).finish(),
            Op::WriteBackend { id, backend } => f
                .debug_struct("WriteBackend")
                .field("id", id)
                .field("backend", &backend.address())
                .field("state", &backend.state)
                .finish(),
            Op::RemoveService(key) => f.debug_tuple("RemoveService").field(&key.vip()).finish(),
            Op::ClearServiceStats(id) => f.debug_tuple("ClearServiceStats").field(id).finish(),
            Op::ClearBackendStats(id) => f.debug_tuple("ClearBackendStats").field(id).finish(),
            Op::RemoveSessionsOfServices(ids) => f
                .debug_tuple("RemoveSessionsOfServices")
                .field(ids)
                .finish(),
            Op::RemoveSessionsOfBackends(ids) => f
                .debug_tuple("RemoveSessionsOfBackends")
                .field(ids)
                .finish(),
            Op::AddEligibility { service_id, prefix } => {
                write!(f, "AddEligibility({service_id}, {prefix})")
            }
            Op::RemoveEligibility { service_id, prefix } => {
                write!(f, "RemoveEligibility({service_id}, {prefix})")
            }
            Op::WriteService { key, entry } => f
                .debug_struct("WriteService")
                .field("vip", &key.vip())
                .field("entry", entry)
                .finish(),
            Op::WriteLocalAddr { addr, kind } => write!(f, "WriteLocalAddr({addr}, {kind})"),
            Op::RemoveLocalAddr(addr) => write!(f, "RemoveLocalAddr({addr})"),
            Op::WriteSnatPool { service_id, pool } => {
                write!(f, "WriteSnatPool({service_id}, {:?})", pool.addrs)
            }
            Op::WriteAddrFilter(filter) => write!(f, "WriteAddrFilter({filter:?})"),
        }
    }
}

/// The writes of one apply and what is installed once they are done.
#[derive(Debug)]
pub struct Plan {
    pub ops: Vec<Op>,
    pub installed: ServiceTable,
    pub summary: ApplySummary,
}

/// Hands out the lowest free ids, in increasing order, within one `apply` (one scan
/// for all of them: 100,000 new backends must not cost 100,000 scans).
pub(super) struct FreeIds {
    used: BTreeSet<u32>,
    next: u32,
    limit: u32,
    what: &'static str,
    /// Ids freed in this apply: handed out only when no other id is left.
    pub(super) last_resort: Vec<u32>,
}

impl FreeIds {
    pub(super) fn new(used: impl Iterator<Item = u32>, limit: u32, what: &'static str) -> FreeIds {
        FreeIds {
            used: used.collect(),
            next: 0,
            limit,
            what,
            last_resort: Vec::new(),
        }
    }

    pub(super) fn take(&mut self) -> Result<u32> {
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

fn backend_entry(addr: BackendAddr, state: u8) -> Backend {
    Backend::new(addr.0, addr.1, state)
}

pub(super) fn wire_key(addr: ServiceAddr) -> ServiceKey {
    ServiceKey::new(addr.0, addr.1, addr.2)
}

/// The plan that brings the data path from `installed` to `config` with `overrides` on
/// top. The config must be validated already. `installed` is not changed: the new
/// state is in the plan, to be kept once its ops are executed.
pub fn plan(
    installed: &ServiceTable,
    config: &Config,
    overrides: &Overrides,
    kernel: KernelView<'_>,
) -> Result<Plan> {
    let capacity = kernel.capacity;
    if config.services.len() as u32 > capacity.max_services {
        bail!(
            "{} services configured but the loaded maps hold {} (limits change needs a restart)",
            config.services.len(),
            capacity.max_services
        );
    }
    let mut next = installed.clone();
    let mut ops = Vec::new();
    let mut summary = ApplySummary::default();

    let settings = Settings {
        snat_port_min: config.snat_port_min,
        snat_port_max: config.snat_port_max,
        // Without [peers] flows have no owner and nothing is announced.
        node_id: config.peers.as_ref().map_or(0, |peers| peers.node_id),
        announce: config
            .peers
            .as_ref()
            .is_some_and(|peers| peers.announce)
            .into(),
        _pad: 0,
    };
    if next.settings != Some(settings) {
        ops.push(Op::WriteSettings(settings));
        next.settings = Some(settings);
    }

    // Local addresses: VIPs and SNAT addresses. New ones go in before any service is
    // written, old ones leave after the services are gone: the data path looks a
    // packet's destination up here before it looks for a service (docs/architecture.md,
    // "Packet paths"), so every installed VIP must be in this table.
    let mut wanted_addrs = BTreeMap::new();
    for service in &config.services {
        for &snat in &service.snat_ips {
            wanted_addrs.insert(snat, ADDR_KIND_SNAT);
        }
    }
    for service in &config.services {
        wanted_addrs.insert(service.vip, ADDR_KIND_VIP);
    }
    // New addresses go in before old ones leave: both must fit at once.
    let side_by_side = wanted_addrs
        .keys()
        .chain(next.local_addrs.keys())
        .collect::<BTreeSet<_>>()
        .len();
    if side_by_side > lb_common::MAX_LOCAL_ADDRS as usize {
        bail!(
            "the VIPs and SNAT addresses need {side_by_side} local addresses while this change \
             is made (the old ones go once the new ones are in) but the data path holds at \
             most {}",
            lb_common::MAX_LOCAL_ADDRS
        );
    }
    for (&addr, &kind) in &wanted_addrs {
        if next.local_addrs.get(&addr) != Some(&kind) {
            ops.push(Op::WriteLocalAddr { addr, kind });
        }
    }
    // Backends: allocate ids for new ones first, free the unused ones last, so a
    // backend that stays keeps its id.
    let wanted_backends: BTreeSet<BackendAddr> = config
        .services
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| (b.address, b.port)))
        .collect();
    let mut free_backend_ids = FreeIds::new(
        next.backends.values().copied(),
        capacity.max_backends,
        "backend",
    );
    for &addr in &wanted_backends {
        if next.backends.contains_key(&addr) {
            continue;
        }
        let id = free_backend_ids.take()?;
        let state = overrides.state(addr);
        ops.push(Op::WriteBackend {
            id,
            backend: backend_entry(addr, state),
        });
        next.backends.insert(addr, id);
        next.backend_states.insert(id, state);
        summary.backends_added += 1;
    }
    // State changes (drain, health) reach the data path before the rings do, so a
    // session never pins a new flow to a backend on its way out.
    for (&addr, &id) in &next.backends {
        let state = overrides.state(addr);
        if next.backend_states.get(&id) != Some(&state) {
            ops.push(Op::WriteBackend {
                id,
                backend: backend_entry(addr, state),
            });
            next.backend_states.insert(id, state);
        }
    }

    // Services that went away: stop new flows first (their live flows continue).
    let wanted: BTreeMap<ServiceAddr, &ServiceConfig> = config
        .services
        .iter()
        .map(|s| (service_addr(s), s))
        .collect();
    let gone: Vec<ServiceAddr> = next
        .services
        .keys()
        .filter(|k| !wanted.contains_key(k))
        .copied()
        .collect();
    // Ids freed here go to a new service of this apply only when no other id is
    // free: a packet that looked the old service up may still be on its way.
    let mut free_service_ids = FreeIds::new(
        next.services.values().map(|s| s.id),
        capacity.max_services,
        "service",
    );
    let mut freed_service_ids = BTreeSet::new();
    for addr in gone {
        ops.push(Op::RemoveService(wire_key(addr)));
        if let Some(old) = next.services.remove(&addr) {
            next.ring_pool.free(old.rings);
            // The id may serve another service later: it must not inherit this
            // one's sessions or counters.
            ops.push(Op::ClearServiceStats(old.id));
            freed_service_ids.insert(old.id);
            free_service_ids.last_resort.push(old.id);
        }
        summary.services_removed += 1;
    }
    if !freed_service_ids.is_empty() {
        ops.push(Op::RemoveSessionsOfServices(freed_service_ids));
    }
    for (&addr, &service) in &wanted {
        let backend_ids: Vec<u32> = service
            .backends
            .iter()
            .map(|b| next.backends[&(b.address, b.port)])
            .collect();
        let effective_weights: Vec<u32> = service
            .backends
            .iter()
            .map(|b| overrides.effective_weight(&service.name, (b.address, b.port), b.weight))
            .collect();
        let syn_cookie_flags = overrides.syn_cookie_flags(service);
        let existing = next.services.get(&addr);
        if let Some(existing) = existing
            && existing.config == *service
            && existing.backend_ids == backend_ids
            && existing.effective_weights == effective_weights
            && existing.syn_cookie_flags == syn_cookie_flags
        {
            continue;
        }
        let id = match existing {
            Some(existing) => existing.id,
            None => free_service_ids.take()?,
        };
        let ring_size = ring_size(config, service);
        let ring = build_ring(service, &backend_ids, &effective_weights, ring_size);
        let live_backends = effective_weights.iter().filter(|&&w| w > 0).count();

        // Same ring size: the idle half of the service's region takes the new ring.
        // Another size: a new region (its half 0), and the old one is freed after
        // the flip.
        let (rings, half, replaced) = match existing {
            Some(e) if e.rings.size == ring_size => {
                let live = &kernel.ring_slots[e.rings.slots(e.live_half)];
                let same = live.len() == ring.len()
                    && live.iter().zip(&ring).all(|(&a, &b)| a == u64::from(b));
                if ring.is_empty() || same {
                    (e.rings, e.live_half, None)
                } else {
                    (e.rings, 1 - e.live_half, None)
                }
            }
            _ => {
                let base = next
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
            let target = &kernel.ring_slots[rings.slots(half)];
            summary.ring_slots_written += target
                .iter()
                .zip(&ring)
                .filter(|&(&slot, &backend_id)| slot != u64::from(backend_id))
                .count();
            summary.rings_swapped += 1;
            ops.push(Op::WriteRing {
                first_slot: rings.offset(half),
                ring,
            });
        }
        let entry = Service {
            id,
            ring_offset: rings.offset(half),
            ring_size,
            ring_idle_offset: rings.offset(1 - half),
            snat_ip: service
                .snat_ips
                .first()
                .map_or(0, |&ip| lb_common::wire::addr_to_wire(ip)),
            backend_count: live_backends.min(u16::MAX as usize) as u16,
            mode: match service.mode {
                Mode::FullNat => MODE_FULL_NAT,
                Mode::Dnat => MODE_DNAT,
            },
            flags: service_flags(service) | syn_cookie_flags,
            session_timeout_s: service
                .affinity_timeout
                .map_or(0, |t| t.as_secs().min(u64::from(u32::MAX)) as u32),
            snat_count: service.snat_ips.len() as u32,
        };
        // Several SNAT addresses: the pool before the entry that counts them.
        if service.snat_ips.len() > 1 {
            ops.push(Op::WriteSnatPool {
                service_id: id,
                pool: snat_pool(&service.snat_ips),
            });
        }
        // Its allow-list first, so the flip never refuses an admitted client.
        for prefix in service.allow.iter().flatten() {
            if next.eligibility.insert((id, *prefix)) {
                ops.push(Op::AddEligibility {
                    service_id: id,
                    prefix: *prefix,
                });
            }
        }
        // The flip: one map update makes the new ring live.
        ops.push(Op::WriteService {
            key: wire_key(addr),
            entry,
        });
        if let Some(old) = replaced {
            next.ring_pool.free(old);
        }
        if existing.is_some() {
            summary.services_changed += 1;
        } else {
            summary.services_added += 1;
        }
        next.services.insert(
            addr,
            InstalledService {
                id,
                config: service.clone(),
                rings,
                live_half: half,
                backend_ids,
                effective_weights,
                syn_cookie_flags,
            },
        );
    }
    // Old and new prefixes are in ELIGIBILITY side by side until the old ones go below:
    // a full map would stop the apply half-way.
    if next.eligibility.len() > MAX_ELIGIBILITY_PREFIXES as usize {
        bail!(
            "the allow lists need {} prefixes while this change is made (the old ones go \
             once the new ones are in) but the data path holds at most {}: make the change \
             in two steps",
            next.eligibility.len(),
            MAX_ELIGIBILITY_PREFIXES
        );
    }

    // Allow-list prefixes no service has any more (added ones went in above).
    let wanted_prefixes: BTreeSet<(u32, Prefix)> = next
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
    for &(service_id, prefix) in next.eligibility.difference(&wanted_prefixes) {
        ops.push(Op::RemoveEligibility { service_id, prefix });
    }
    next.eligibility = wanted_prefixes;

    for &addr in installed.local_addrs.keys() {
        if !wanted_addrs.contains_key(&addr) {
            ops.push(Op::RemoveLocalAddr(addr));
        }
    }
    next.local_addrs = wanted_addrs;

    let unused: Vec<BackendAddr> = next
        .backends
        .keys()
        .filter(|a| !wanted_backends.contains(a))
        .copied()
        .collect();
    let mut freed_backend_ids = BTreeSet::new();
    for addr in unused {
        if let Some(id) = next.backends.remove(&addr) {
            ops.push(Op::WriteBackend {
                id,
                backend: Backend::default(),
            });
            next.backend_states.remove(&id);
            // A backend that later gets the id starts without sessions or counters.
            ops.push(Op::ClearBackendStats(id));
            freed_backend_ids.insert(id);
            summary.backends_removed += 1;
        }
    }
    if !freed_backend_ids.is_empty() {
        ops.push(Op::RemoveSessionsOfBackends(freed_backend_ids));
    }
    // The address filter lets the new addresses through before any entry names them,
    // and keeps the dropped ones until no flow can use them (`addr_filter`): so its one
    // write goes first, and adds bits only.
    let filter_addrs = next
        .local_addrs
        .keys()
        .copied()
        .chain(wanted_backends.iter().map(|&(addr, _)| addr))
        .collect();
    next.addr_filter = installed.addr_filter.with_config(filter_addrs);
    if let Some(filter) = next.addr_filter.write_needed() {
        ops.insert(0, Op::WriteAddrFilter(Box::new(filter)));
        next.addr_filter.mark_written(filter);
    }
    Ok(Plan {
        ops,
        installed: next,
        summary,
    })
}

/// Sized from the configured weights (what the config check budgets), never from
/// drains, health or overrides: a new size would remap every flow of the service and
/// need a region nobody budgeted. With a cluster, announced backends come and go, so
/// such a service always gets the largest ring.
fn ring_size(config: &Config, service: &ServiceConfig) -> u32 {
    if config.cluster.is_some() {
        lb_common::MAGLEV_RING_SIZE
    } else {
        let configured: Vec<u32> = service.backends.iter().map(|b| b.weight).collect();
        maglev::ring_size_for(&configured)
    }
}

/// The service's Maglev ring: backend ids by slot (empty when no backend has weight).
fn build_ring(
    service: &ServiceConfig,
    backend_ids: &[u32],
    effective_weights: &[u32],
    ring_size: u32,
) -> Vec<u32> {
    let keys: Vec<String> = service
        .backends
        .iter()
        .map(|b| format!("{}:{}", b.address, b.port))
        .collect();
    let ring_input: Vec<MaglevBackend<'_>> = keys
        .iter()
        .zip(backend_ids)
        .zip(effective_weights)
        .map(|((key, &id), &weight)| MaglevBackend { key, weight, id })
        .collect();
    maglev::build_ring(&ring_input, ring_size)
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
    if service.unknown_segment == UnknownSegment::Reset {
        flags |= SERVICE_FLAG_NO_FLOW_RST;
    }
    flags
}

/// A service's SNAT addresses, repeated to fill every slot (see `SnatPool`).
pub(super) fn snat_pool(ips: &[Ipv4Addr]) -> lb_common::SnatPool {
    let mut pool = lb_common::SnatPool::default();
    if !ips.is_empty() {
        for (i, slot) in pool.addrs.iter_mut().enumerate() {
            *slot = lb_common::wire::addr_to_wire(ips[i % ips.len()]);
        }
    }
    pool
}
