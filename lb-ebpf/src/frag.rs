//! IPv4 fragments of balanced flows, followed without reassembly
//! (docs/architecture.md, "Fragments").
//!
//! The first fragment (offset 0) carries the ports and goes through the normal path;
//! once its flow is known, `record` notes the datagram in FRAGMENTS. Later fragments
//! carry no L4 header: `later` finds the flow through that record and rewrites only
//! the IP header.

use aya_ebpf::{
    bindings::{
        BPF_ANY,
        xdp_action::{XDP_DROP, XDP_PASS},
    },
    programs::XdpContext,
};
use lb_common::{
    FLOW_STATE_RESET, FRAGMENT_TIMEOUT_NS, FlowKey, FragmentEntry, FragmentKey, IPPROTO_TCP,
    counters,
};

use crate::{
    flow, fwd,
    maps::{FLOWS, FRAGMENTS},
    nat,
    parse::{EthHdr, Ipv4Hdr},
    stats::{account, count},
};

/// Fragment offset bits of `frag_off` (host byte order), in units of 8 bytes.
pub const IP_OFFSET_MASK: u16 = 0x1fff;

/// Notes the datagram of a first fragment that is being forwarded along `flow` (or,
/// with `local`, passed to the local stack): its later fragments follow the same way.
/// `l4_len` is the fragment's IP payload length. Called before any rewrite, with the
/// addresses the fragments arrive with.
///
/// # Safety
/// `ip` must point at a bounds-checked IPv4 header.
#[inline(always)]
pub unsafe fn record(ip: *const Ipv4Hdr, flow: &FlowKey, l4_len: usize, local: bool) {
    // SAFETY: the caller guarantees the header is inside the packet.
    let id = unsafe { (*ip).id };
    let key = FragmentKey {
        src_ip: flow.src_ip,
        dst_ip: flow.dst_ip,
        id,
        proto: flow.proto,
        _pad: 0,
    };
    let entry = FragmentEntry {
        flow: *flow,
        end: l4_len as u16,
        local: u8::from(local),
        _pad: [0; 5],
        created_ns: flow::now(),
    };
    // A full map evicts its oldest record; a failed insert only means the later
    // fragments are dropped as `drop_fragment_no_first`, and the sender retransmits.
    let _ = FRAGMENTS.insert(key, entry, u64::from(BPF_ANY));
}

/// Verdict for a TCP or UDP fragment at a non-zero offset: follows its datagram's first
/// fragment, or, when there is none, is dropped if for a balancer address and passed
/// untouched if not.
///
/// # Safety
/// `eth` and `ip` must point at bounds-checked headers of the packet in `ctx`, whose
/// IPv4 header has no options and whose total length is within the frame.
#[inline(always)]
pub unsafe fn later(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    ip: *mut Ipv4Hdr,
    frag_off: u16,
    l4_len: usize,
) -> u32 {
    // SAFETY: the caller guarantees the header is inside the packet.
    let (saddr, daddr, id, proto) = unsafe { ((*ip).saddr, (*ip).daddr, (*ip).id, (*ip).protocol) };
    let offset = usize::from(frag_off & IP_OFFSET_MASK) * 8;
    // RFC 1858: a TCP fragment at offset 8 can only be meant to rewrite the flags of a
    // header already let through.
    if proto == IPPROTO_TCP && offset == 8 {
        return crate::malformed(daddr, counters::DROP_FRAGMENT_TINY);
    }
    let new_end = offset + l4_len;
    // A datagram cannot reach past 65,535 bytes ("ping of death").
    if new_end > usize::from(u16::MAX) {
        return crate::malformed(daddr, counters::DROP_IP_BAD_LENGTH);
    }
    let key = FragmentKey {
        src_ip: saddr,
        dst_ip: daddr,
        id,
        proto,
        _pad: 0,
    };
    let now = flow::now();
    // Without reassembly there is no port to pick a backend by: a fragment whose first
    // did not come (or was dropped) is dropped, and the sender's upper layer resends.
    let Some(record) = FRAGMENTS.get_ptr_mut(key) else {
        // At a VIP moving here, the first fragment may have gone to the previous owner
        // (docs/scale-out.md, "Forwarding to the previous owner").
        // SAFETY: headers bounds-checked (caller); nothing is used after a verdict.
        if let Some(verdict) = unsafe { crate::tunnel::forward(ctx, daddr) } {
            return verdict;
        }
        return crate::malformed(daddr, counters::DROP_FRAGMENT_NO_FIRST);
    };
    // SAFETY: map value valid for this run.
    unsafe {
        if now.saturating_sub((*record).created_ns) > FRAGMENT_TIMEOUT_NS {
            return crate::malformed(daddr, counters::DROP_FRAGMENT_NO_FIRST);
        }
        // The kernel's own datagram: it reassembles and judges overlaps itself.
        if (*record).local != 0 {
            count(counters::PASS_LOCAL);
            return XDP_PASS;
        }
        let end = usize::from((*record).end);
        if offset < end {
            count(counters::DROP_FRAGMENT_OVERLAP);
            return XDP_DROP;
        }
        let flow_key = (*record).flow;
        let Some(entry) = FLOWS.get_ptr_mut(flow_key) else {
            return crate::malformed(daddr, counters::DROP_FRAGMENT_NO_FIRST);
        };
        if (*entry).state == FLOW_STATE_RESET {
            count(counters::DROP_BACKEND_DOWN);
            return XDP_DROP;
        }
        // Only the contiguous data from offset 0 is tracked: a fragment beyond a gap
        // (reordered) is forwarded without moving the mark.
        if offset == end {
            (*record).end = new_end as u16;
        }
        let refresh = flow::touch(&flow_key, entry, None, now);
        count(counters::FLOW_HITS);
        count(counters::FRAGMENTS_FOLLOWED);
        let frame_len = (ctx.data_end() - ctx.data()) as u64;
        account((*entry).service_id, (*entry).backend_id, frame_len);
        nat::rewrite_ip(ip, &*entry);
        fwd::forward_hit(ctx, eth, ip, entry, refresh)
    }
}
