//! Flow events for the daemon, which announces them to the balancer's peers
//! (docs/scale-out.md, "Flow records"). Only the new-flow path and the rare packets that
//! change a flow's state reach this; the established fast path never does.

use lb_common::{FlowEntry, FlowEvent, FlowKey, Settings, counters};

use crate::{
    maps::{FLOW_EVENTS, SETTINGS},
    stats::count,
};

/// This instance's node id and whether flows are announced, from `SETTINGS`.
#[inline(always)]
pub fn settings() -> (u16, u8) {
    match SETTINGS.get(0) {
        Some(&Settings {
            node_id, announce, ..
        }) => (node_id, announce),
        None => (0, 0),
    }
}

/// Reports `entry` (under `key`) as `kind` if announcements are on.
#[inline(always)]
pub fn report(kind: u8, key: &FlowKey, entry: &FlowEntry) {
    if settings().1 != 0 {
        emit(kind, key, entry);
    }
}

/// Writes one event; a full ring loses it (counted), the packet goes on as usual. The
/// fields are stored straight into the ring's memory: the SYN-proxy stage has no stack
/// to spare for a staged copy.
#[inline(always)]
pub fn emit(kind: u8, key: &FlowKey, entry: &FlowEntry) {
    match FLOW_EVENTS.reserve::<FlowEvent>(0) {
        Some(mut slot) => {
            let event = slot.as_mut_ptr();
            // SAFETY: `event` points at a reserved, 8-byte aligned FlowEvent in the ring,
            // ours until submitted; every byte is written before the submit.
            unsafe {
                (*event).kind = kind;
                (*event)._pad = [0; 7];
                (*event).key = *key;
                (*event).entry = *entry;
            }
            slot.submit(0);
        }
        None => count(counters::FLOW_EVENTS_LOST),
    }
}
