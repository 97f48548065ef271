//! New-flow scheduling: Maglev lookup of the backend for a flow, and full-NAT source
//! port allocation.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_get_prandom_u32};
use lb_common::{
    Backend, FlowEntry, FlowKey, MAX_SNAT_IPS, SNAT_PORT_PROBES, Service, Settings, hash::flow_hash,
};

use crate::maps::{BACKENDS, FLOWS, MAGLEV_RINGS, SETTINGS, SNAT_POOLS};

/// Picks the backend for a new flow from the service's live Maglev ring.
/// Returns the backend id and its address.
#[inline(always)]
pub fn pick_backend(service: &Service, key: &FlowKey) -> Option<(u32, Backend)> {
    let hash = flow_hash(
        key.src_ip,
        key.dst_ip,
        key.src_port,
        key.dst_port,
        key.proto,
    );
    // Read once: the compiler then needs no second check of a divisor it already tested.
    let ring_size = service.ring_size;
    if ring_size == 0 {
        return None;
    }
    let slot = service.ring_offset + hash % ring_size;
    let backend_id = *MAGLEV_RINGS.get(slot)?;
    let backend = *BACKENDS.get(backend_id)?;
    if backend.ip == 0 {
        return None;
    }
    Some((backend_id, backend))
}

/// Inserts the reverse entry of a full-NAT flow under a free source port of the
/// SNAT address. `NOEXIST` makes the insert itself the collision check, so two CPUs can
/// never hand out the same port. Returns the chosen port (network byte order).
///
/// The first port tried comes from the client's flow hash, the others (a bounded number)
/// are random. So a client that reuses its source port, as a busy client soon does,
/// gets the same SNAT port again once the old connection's entries are gone, and the
/// server sees the same 4-tuple from the same client: its TIME_WAIT socket for that
/// tuple accepts the new SYN (the client's sequence numbers and timestamps grow for the
/// tuple). A random port could meet the TIME_WAIT of another client's connection, whose
/// timestamps make the server answer the SYN with a bare ACK, and the connection waits
/// for a SYN retransmission (docs/architecture.md, "Source ports").
#[inline(always)]
pub fn insert_with_snat_port(
    reverse_key: &mut FlowKey,
    reverse: &FlowEntry,
    flow_hash: u32,
) -> Option<u16> {
    // A zeroed entry means the controller has not written its settings yet.
    let settings = match SETTINGS.get(0) {
        Some(settings) if settings.snat_port_max != 0 => *settings,
        _ => Settings::default(),
    };
    let low = u32::from(settings.snat_port_min);
    let span = u32::from(settings.snat_port_max).saturating_sub(low) + 1;
    // The address choice uses the hash's low bits: the port takes it rotated.
    let mut draw = flow_hash.rotate_left(16);
    for _ in 0..SNAT_PORT_PROBES {
        let port = ((low + draw % span) as u16).to_be();
        reverse_key.dst_port = port;
        if FLOWS
            .insert(*reverse_key, reverse, u64::from(BPF_NOEXIST))
            .is_ok()
        {
            return Some(port);
        }
        // SAFETY: helper without side effects.
        draw = unsafe { bpf_get_prandom_u32() };
    }
    None
}

/// Inserts the reverse entry of a full-NAT flow under a free (SNAT address, port) of
/// the service: the address picked by the flow hash among its `snat_ips`, the next one
/// when the port probes of one all collide, so the port space is as large as the
/// operator makes it. Returns the address and port (network byte order).
#[inline(always)]
pub fn insert_with_snat(
    service: &Service,
    key: &FlowKey,
    reverse_key: &mut FlowKey,
    reverse: &FlowEntry,
) -> Option<(u32, u16)> {
    let hash = flow_hash(
        key.src_ip,
        key.dst_ip,
        key.src_port,
        key.dst_port,
        key.proto,
    );
    let count = service.snat_count;
    if count <= 1 {
        reverse_key.dst_ip = service.snat_ip;
        return insert_with_snat_port(reverse_key, reverse, hash)
            .map(|port| (service.snat_ip, port));
    }
    let pool = SNAT_POOLS.get(service.id)?;
    let start = hash % count;
    for i in 0..MAX_SNAT_IPS as u32 {
        if i >= count {
            break;
        }
        let index = ((start + i) % count) as usize;
        let addr = *pool.addrs.get(index)?;
        reverse_key.dst_ip = addr;
        if let Some(port) = insert_with_snat_port(reverse_key, reverse, hash) {
            return Some((addr, port));
        }
    }
    None
}
