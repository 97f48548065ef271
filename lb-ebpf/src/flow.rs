//! The flow table: per-direction entries, TCP state for timeouts, coarse last-seen.

use aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns;
use lb_common::{
    FLOW_EVENT_CHANGED, FLOW_EVENT_REMOVED, FlowEntry, FlowKey, LAST_SEEN_GRANULARITY_NS, tcp_state,
};

use crate::{events, maps::FLOWS};

/// Updates state and last-seen of a hit entry. `tcp_flags` is `None` for UDP.
/// Returns true when it wrote the entry's last-seen (the cue to refresh its next hop).
///
/// The TCP state follows `lb_common::tcp_state`; a plain segment of an established
/// connection is ruled out by one test of its flags before the machine runs. State
/// changes are mirrored into the peer entry (one extra lookup, only on the few packets
/// that change state) so the garbage collector can judge each entry alone, and reported
/// to the daemon for its peers (`events`) on those packets only.
///
/// # Safety
/// `entry` must come from a lookup in `FLOWS` during this program run.
#[inline(always)]
pub unsafe fn touch(key: &FlowKey, entry: *mut FlowEntry, tcp_flags: Option<u8>, now: u64) -> bool {
    // SAFETY: map value pointer valid for this run (caller).
    unsafe {
        if let Some(flags) = tcp_flags {
            let state = (*entry).state;
            if tcp_state::may_change(state, flags) {
                // A DNAT connection's client → server entry keeps the client's address.
                let replies_bypass = (*entry).new_src_ip == key.src_ip;
                let next =
                    tcp_state::next_with_bypass(state, (*entry).direction, flags, replies_bypass);
                if next != state {
                    (*entry).state = next;
                    (*entry).last_seen_ns = now;
                    if let Some(peer) = FLOWS.get_ptr_mut((*entry).peer_key(key.proto)) {
                        (*peer).state = next;
                        (*peer).last_seen_ns = now;
                    }
                    events::report(FLOW_EVENT_CHANGED, key, &*entry);
                    return true;
                }
            }
        }
        if now.saturating_sub((*entry).last_seen_ns) > LAST_SEEN_GRANULARITY_NS {
            (*entry).last_seen_ns = now;
            return true;
        }
        false
    }
}

/// Clock of the flow table's timestamps: CLOCK_MONOTONIC at tick resolution, which
/// the controller's garbage collector (CLOCK_MONOTONIC, seconds-scale timeouts) reads
/// consistently, and which is far cheaper per packet than `bpf_ktime_get_ns`.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without side effects.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Removes both entries of a connection (a SYN reusing a closed connection's tuple, a
/// proxied connection whose server side failed), and reports it for the peers' copies.
#[inline(always)]
pub fn remove_pair(key: &FlowKey, entry: &FlowEntry) {
    remove_unannounced(key, entry);
    events::report(FLOW_EVENT_REMOVED, key, entry);
}

/// `remove_pair` for a connection that was never announced (its creation undone on the
/// spot).
#[inline(always)]
pub fn remove_unannounced(key: &FlowKey, entry: &FlowEntry) {
    let _ = FLOWS.remove(entry.peer_key(key.proto));
    let _ = FLOWS.remove(key);
}
