//! Typed operations on the program's maps. Callers name what they read or write
//! (a service entry, a backend, a ring, a flow); the map handles, update flags and
//! wire forms stay here and in `lb_common::wire`.

use std::net::Ipv4Addr;

use anyhow::{Result, anyhow};
use aya::maps::{MapData, MapError, PerCpuValues, lpm_trie::Key};
use lb_common::{
    Backend, BackendStats, EligibilityKey, FlowEntry, FlowKey, FragmentEntry, FragmentKey, Service,
    ServiceKey, ServiceStats, SessionEntry, SessionKey, Settings, SnatPool, TUNNEL_PEER_ACCEPT,
    VipTransition,
    addr_filter::AddrFilter,
    counters,
    wire::{self, eligibility_client_len, eligibility_prefix_len},
};

use super::Dataplane;
use crate::domain::Limits;

/// `bpf_map_update_elem` flags.
const BPF_ANY: u64 = 0;
/// Update only an entry that exists: never resurrects one deleted meanwhile.
const BPF_EXIST: u64 = 2;

fn eligibility_key(service_id: u32, client: Ipv4Addr, client_len: u8) -> Key<EligibilityKey> {
    Key::new(
        eligibility_prefix_len(client_len),
        EligibilityKey::new(service_id, client),
    )
}

impl Dataplane {
    /// Capacities the maps were loaded with.
    pub fn capacity(&self) -> Limits {
        self.capacity
    }

    /// Whether the maps (and links, if any) were taken over from an earlier daemon.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    pub fn settings(&self) -> Result<Settings> {
        Ok(self.settings.get(&0, 0)?)
    }

    pub fn set_settings(&mut self, settings: Settings) -> Result<()> {
        self.settings.set(0, settings, BPF_ANY)?;
        Ok(())
    }

    /// The outer source address of packets forwarded to a VIP's previous owner; `None`
    /// when unset (nothing is forwarded then). docs/scale-out.md, "Forwarding to the
    /// previous owner".
    pub fn tunnel_source(&self) -> Result<Option<Ipv4Addr>> {
        let addr = self.tunnel_source.get(&0, 0)?;
        Ok((addr != 0).then(|| wire::addr_from_wire(addr)))
    }

    /// Sets (or with `None` clears) the tunnel source: this instance's address on the
    /// back network, which its peers list as a tunnel peer.
    pub fn set_tunnel_source(&mut self, addr: Option<Ipv4Addr>) -> Result<()> {
        let wire = addr.map_or(0, wire::addr_to_wire);
        self.tunnel_source.set(0, wire, BPF_ANY)?;
        Ok(())
    }

    /// The peers whose tunnelled packets this instance decapsulates.
    pub fn tunnel_peers(&self) -> Result<Vec<Ipv4Addr>> {
        let mut peers = self
            .tunnel_peers
            .keys()
            .map(|key| Ok(wire::addr_from_wire(key?)))
            .collect::<Result<Vec<_>>>()?;
        peers.sort();
        Ok(peers)
    }

    /// Makes `peers` the whole set of tunnel peers: adds the new ones first, then
    /// removes the ones no longer listed, so a peer kept in the set is never missing.
    pub fn set_tunnel_peers(&mut self, peers: &[Ipv4Addr]) -> Result<()> {
        let current = self.tunnel_peers()?;
        let (added, removed) = peer_changes(&current, peers);
        for peer in added {
            self.tunnel_peers
                .insert(wire::addr_to_wire(peer), TUNNEL_PEER_ACCEPT, BPF_ANY)?;
        }
        for peer in removed {
            self.tunnel_peers.remove(&wire::addr_to_wire(peer))?;
        }
        Ok(())
    }

    /// Every VIP in transition here, with its previous owner.
    pub fn vip_transitions(&self) -> Result<Vec<(Ipv4Addr, Ipv4Addr)>> {
        let mut transitions = self
            .vip_transitions
            .iter()
            .map(|item| {
                let (vip, transition) = item?;
                Ok((
                    wire::addr_from_wire(vip),
                    wire::addr_from_wire(transition.previous_owner),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        transitions.sort();
        Ok(transitions)
    }

    /// Marks `vip` as moving here from `previous_owner`: its packets that find no flow
    /// entry are forwarded there instead of being refused. Needs the tunnel source set
    /// and the neighbour toward `previous_owner` (or its gateway) resolved: the data
    /// path cannot hand its own encapsulated packets to the kernel to resolve it, and
    /// drops them (`drop_tunnel_no_route`) until it is.
    pub fn set_vip_transition(&mut self, vip: Ipv4Addr, previous_owner: Ipv4Addr) -> Result<()> {
        let transition = VipTransition {
            previous_owner: wire::addr_to_wire(previous_owner),
            _reserved: 0,
        };
        self.vip_transitions
            .insert(wire::addr_to_wire(vip), transition, BPF_ANY)?;
        Ok(())
    }

    /// Ends `vip`'s transition (packets without an entry are refused again); whether it
    /// was in transition.
    pub fn clear_vip_transition(&mut self, vip: Ipv4Addr) -> Result<bool> {
        match self.vip_transitions.remove(&wire::addr_to_wire(vip)) {
            Ok(()) => Ok(true),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Every SERVICES entry.
    pub fn service_entries(&self) -> Result<Vec<(ServiceKey, Service)>> {
        Ok(self.services.iter().collect::<Result<_, _>>()?)
    }

    /// Creates or replaces a service entry: one map update, so a new ring goes live
    /// with it at once.
    pub fn write_service(&mut self, key: ServiceKey, entry: Service) -> Result<()> {
        self.services.insert(key, entry, BPF_ANY)?;
        Ok(())
    }

    pub fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        self.services.remove(key)?;
        Ok(())
    }

    pub fn backend(&self, id: u32) -> Result<Backend> {
        Ok(self.backends.get(&id, 0)?)
    }

    /// Writes a backend slot; `Backend::default()` empties it.
    pub fn write_backend(&mut self, id: u32, backend: Backend) -> Result<()> {
        self.backends.set(id, backend, BPF_ANY)?;
        Ok(())
    }

    /// The whole MAGLEV_RINGS pool as the data path sees it (each u32 slot in the low
    /// half of a u64, see `RingMemory`).
    pub fn ring_slots(&self) -> &[u64] {
        self.ring_memory.slots()
    }

    /// Writes `ring` into the pool from `first_slot`, touching only the slots that
    /// change (an unchanged slot's cache line stays clean for the data path).
    ///
    /// # Panics
    ///
    /// If the ring does not fit in the pool (the caller allocated it there).
    pub fn write_ring(&mut self, first_slot: u32, ring: &[u32]) {
        let start = first_slot as usize;
        let target = &mut self.ring_memory.slots_mut()[start..start + ring.len()];
        for (slot, &backend_id) in target.iter_mut().zip(ring) {
            if *slot != u64::from(backend_id) {
                *slot = u64::from(backend_id);
            }
        }
    }

    /// Every LOCAL_ADDRS entry: address → `ADDR_KIND_*`.
    pub fn local_addrs(&self) -> Result<Vec<(Ipv4Addr, u32)>> {
        self.local_addrs
            .iter()
            .map(|item| {
                let (addr, kind) = item?;
                Ok((wire::addr_from_wire(addr), kind))
            })
            .collect()
    }

    pub fn write_local_addr(&mut self, addr: Ipv4Addr, kind: u32) -> Result<()> {
        self.local_addrs
            .insert(wire::addr_to_wire(addr), kind, BPF_ANY)?;
        Ok(())
    }

    /// The SNAT addresses of a service with several (`Service::snat_count`).
    pub fn write_snat_pool(&mut self, service_id: u32, pool: SnatPool) -> Result<()> {
        self.snat_pools.set(service_id, pool, 0)?;
        Ok(())
    }

    /// Replaces the address filter (docs/architecture.md, "Address filter") in one
    /// update. A packet during the copy sees each word old or new: the controller only
    /// writes a bitmap whose every word covers what the packets then in flight need.
    pub fn write_addr_filter(&mut self, filter: &AddrFilter) -> Result<()> {
        self.addr_filter.set(0, filter, 0)?;
        Ok(())
    }

    pub fn addr_filter(&self) -> Result<AddrFilter> {
        Ok(self.addr_filter.get(&0, 0)?)
    }

    pub fn remove_local_addr(&mut self, addr: Ipv4Addr) -> Result<()> {
        self.local_addrs.remove(&wire::addr_to_wire(addr))?;
        Ok(())
    }

    /// Every allow-list prefix in ELIGIBILITY: (service id, client address, length).
    pub fn eligibility_prefixes(&self) -> Result<Vec<(u32, Ipv4Addr, u8)>> {
        self.eligibility
            .iter()
            .map(|item| {
                let (key, _) = item?;
                let data = key.data();
                Ok((
                    data.service_id(),
                    data.client(),
                    eligibility_client_len(key.prefix_len()),
                ))
            })
            .collect()
    }

    /// Admits clients in `client`/`client_len` to the service's new flows.
    pub fn insert_eligibility(
        &mut self,
        service_id: u32,
        client: Ipv4Addr,
        client_len: u8,
    ) -> Result<()> {
        let key = eligibility_key(service_id, client, client_len);
        self.eligibility.insert(&key, 1, BPF_ANY)?;
        Ok(())
    }

    pub fn remove_eligibility(
        &mut self,
        service_id: u32,
        client: Ipv4Addr,
        client_len: u8,
    ) -> Result<()> {
        let key = eligibility_key(service_id, client, client_len);
        self.eligibility.remove(&key)?;
        Ok(())
    }

    /// Lets the program redirect packets out of `ifindex`.
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<()> {
        self.tx_ports.insert(ifindex, ifindex, None, BPF_ANY)?;
        Ok(())
    }

    pub fn remove_tx_port(&mut self, ifindex: u32) -> Result<()> {
        self.tx_ports.remove(ifindex)?;
        Ok(())
    }

    /// The redirect target registered for `ifindex`, if any.
    pub fn tx_port(&self, ifindex: u32) -> Option<u32> {
        self.tx_ports
            .get(ifindex, 0)
            .ok()
            .map(|value| value.if_index)
    }

    /// Snapshot of the flow table, read in batches.
    pub fn flow_entries(&self) -> Vec<(FlowKey, FlowEntry)> {
        match self.flow_entries_batched(super::batch::BATCH_ENTRIES) {
            Ok(entries) => entries,
            Err(e) => {
                // A kernel without batch lookups for this map type: one entry at a time.
                // Entries can vanish between key iteration and lookup (LRU, GC): skipped.
                log::debug!("batch read of FLOWS failed ({e}); walking it entry by entry");
                self.flows.iter().filter_map(Result::ok).collect()
            }
        }
    }

    /// Snapshot of the flow table with `BPF_MAP_LOOKUP_BATCH`, `chunk` entries a call.
    pub fn flow_entries_batched(&self, chunk: u32) -> Result<Vec<(FlowKey, FlowEntry)>> {
        Ok(super::batch::lookup_all(self.flow_map(), chunk)?)
    }

    pub fn flow(&self, key: &FlowKey) -> Option<FlowEntry> {
        self.flows.get(key, 0).ok()
    }

    /// Number of entries in the flow table.
    pub fn flow_count(&self) -> usize {
        self.flows.keys().filter(Result::is_ok).count()
    }

    /// Creates or replaces a flow entry.
    pub fn insert_flow(&mut self, key: FlowKey, entry: FlowEntry) -> Result<()> {
        self.flows.insert(key, entry, BPF_ANY)?;
        Ok(())
    }

    /// Replaces a flow entry only if it is still there: a connection that closed
    /// meanwhile stays closed. Fails if the entry is gone.
    pub fn update_flow_if_exists(&mut self, key: FlowKey, entry: FlowEntry) -> Result<()> {
        self.flows.insert(key, entry, BPF_EXIST)?;
        Ok(())
    }

    /// Creates or replaces many flow entries, a batch of them per syscall.
    pub fn write_flows(&mut self, entries: &[(FlowKey, FlowEntry)]) -> Result<()> {
        if !entries.is_empty() {
            super::batch::update_all(
                self.flow_map(),
                entries,
                super::batch::BATCH_ENTRIES as usize,
            )?;
        }
        Ok(())
    }

    /// Deletes a flow entry; whether it was there.
    pub fn remove_flow(&mut self, key: &FlowKey) -> bool {
        self.flows.remove(key).is_ok()
    }

    /// The FLOWS map itself, for the kernel's accounting of it (fdinfo).
    pub fn flow_map(&self) -> &MapData {
        aya::maps::IterableMap::map(&self.flows)
    }

    /// Snapshot of SESSIONS.
    pub fn session_entries(&self) -> Vec<(SessionKey, SessionEntry)> {
        self.sessions.iter().filter_map(Result::ok).collect()
    }

    /// Number of entries in SESSIONS.
    pub fn session_count(&self) -> usize {
        self.sessions.keys().filter(Result::is_ok).count()
    }

    /// Creates or replaces a session.
    pub fn insert_session(&mut self, key: SessionKey, entry: SessionEntry) -> Result<()> {
        self.sessions.insert(key, entry, BPF_ANY)?;
        Ok(())
    }

    /// Deletes the SESSIONS entries `stale` picks; returns how many went.
    pub fn remove_sessions(&mut self, stale: impl Fn(&SessionKey, &SessionEntry) -> bool) -> usize {
        let keys: Vec<SessionKey> = self
            .session_entries()
            .into_iter()
            .filter(|(key, entry)| stale(key, entry))
            .map(|(key, _)| key)
            .collect();
        keys.iter()
            .filter(|key| self.sessions.remove(key).is_ok())
            .count()
    }

    /// Snapshot of FRAGMENTS: datagrams whose later fragments follow their first's flow.
    pub fn fragment_entries(&self) -> Vec<(FragmentKey, FragmentEntry)> {
        self.fragments.iter().filter_map(Result::ok).collect()
    }

    /// Writes a FRAGMENTS record (the data path makes them; tests age them).
    pub fn insert_fragment(&mut self, key: FragmentKey, entry: FragmentEntry) -> Result<()> {
        self.fragments.insert(key, entry, BPF_ANY)?;
        Ok(())
    }

    /// Sum over CPUs of one global counter (`counters::*`).
    pub fn global_counter(&self, index: u32) -> Result<u64> {
        Ok(self.global_counters.get(&index, 0)?.iter().sum())
    }

    /// Sum over CPUs of every global counter.
    pub fn global_counters(&self) -> Result<Vec<(&'static str, u64)>> {
        (0..counters::COUNT)
            .map(|index| {
                let values = self.global_counters.get(&index, 0)?;
                Ok((counters::NAMES[index as usize], values.iter().sum()))
            })
            .collect()
    }

    pub fn service_stats(&self, id: u32) -> Result<ServiceStats> {
        let values = self.service_stats.get(&id, 0)?;
        Ok(values
            .iter()
            .fold(ServiceStats::default(), |sum, v| ServiceStats {
                packets: sum.packets + v.packets,
                bytes: sum.bytes + v.bytes,
                new_flows: sum.new_flows + v.new_flows,
                drops: sum.drops + v.drops,
                denied: sum.denied + v.denied,
                syn_cookies: sum.syn_cookies + v.syn_cookies,
            }))
    }

    pub fn backend_stats(&self, id: u32) -> Result<BackendStats> {
        let values = self.backend_stats.get(&id, 0)?;
        Ok(values
            .iter()
            .fold(BackendStats::default(), |sum, v| BackendStats {
                packets: sum.packets + v.packets,
                bytes: sum.bytes + v.bytes,
                new_flows: sum.new_flows + v.new_flows,
                _reserved: 0,
            }))
    }

    /// Sets a service id's SERVICE_STATS slot to `stats` on every CPU.
    pub fn fill_service_stats(&mut self, id: u32, stats: ServiceStats) -> Result<()> {
        let values = PerCpuValues::try_from(vec![stats; possible_cpus()?])?;
        self.service_stats.set(id, values, BPF_ANY)?;
        Ok(())
    }

    /// Sets a backend id's BACKEND_STATS slot to `stats` on every CPU.
    pub fn fill_backend_stats(&mut self, id: u32, stats: BackendStats) -> Result<()> {
        let values = PerCpuValues::try_from(vec![stats; possible_cpus()?])?;
        self.backend_stats.set(id, values, BPF_ANY)?;
        Ok(())
    }

    /// Zeroes a freed service id's counters, so a service that later gets the id
    /// starts from 0.
    pub fn clear_service_stats(&mut self, id: u32) -> Result<()> {
        self.fill_service_stats(id, ServiceStats::default())
    }

    /// Zeroes a freed backend id's counters.
    pub fn clear_backend_stats(&mut self, id: u32) -> Result<()> {
        self.fill_backend_stats(id, BackendStats::default())
    }
}

/// Number of possible CPUs (the length of a per-CPU map value).
pub fn possible_cpus() -> Result<usize> {
    aya::util::nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))
}

/// The peers to add to `current` and to remove from it to make it `wanted`.
fn peer_changes(current: &[Ipv4Addr], wanted: &[Ipv4Addr]) -> (Vec<Ipv4Addr>, Vec<Ipv4Addr>) {
    let mut added: Vec<Ipv4Addr> = wanted
        .iter()
        .filter(|peer| !current.contains(peer))
        .copied()
        .collect();
    added.sort();
    added.dedup();
    let removed = current
        .iter()
        .filter(|peer| !wanted.contains(peer))
        .copied()
        .collect();
    (added, removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_changes_add_new_remove_gone_keep_the_rest() {
        let a = Ipv4Addr::new(198, 19, 0, 1);
        let b = Ipv4Addr::new(198, 19, 0, 2);
        let c = Ipv4Addr::new(198, 19, 0, 3);
        assert_eq!(peer_changes(&[a, b], &[b, c, c]), (vec![c], vec![a]));
        assert_eq!(peer_changes(&[], &[a]), (vec![a], vec![]));
        assert_eq!(peer_changes(&[a], &[]), (vec![], vec![a]));
        assert_eq!(peer_changes(&[a, b], &[b, a]), (vec![], vec![]));
    }
}
