//! Forwarding to a VIP's previous owner while the VIP moves here (docs/scale-out.md,
//! "Forwarding to the previous owner"; docs/architecture.md, "Packet paths").
//!
//! A packet for a VIP in `VIP_TRANSITIONS` that finds no flow entry and would be
//! refused is wrapped in an outer IPv4 header (IPIP, RFC 2003) to the previous owner,
//! which still has the flow or is about to stream it here (`forward`). The previous
//! owner decapsulates packets from its tunnel peers and processes the inner packet from
//! the start, by tail call into `lb_xdp` (`receive`). A mark in the packet's XDP
//! metadata tells the second pass that the packet was decapsulated, so that it is never
//! forwarded through the tunnel again: two instances that both list the VIP as in
//! transition cannot bounce a packet between them.
//!
//! Everything here runs after a flow-table miss or for IP protocol 4: the fast path
//! never enters it.

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams,
        xdp_action::{XDP_DROP, XDP_PASS},
    },
    helpers::generated::{bpf_fib_lookup, bpf_xdp_adjust_head, bpf_xdp_adjust_meta},
    programs::XdpContext,
};
use lb_common::{IPPROTO_IPIP, counters};

use crate::{
    csum::{fold, sum_words},
    fwd,
    maps::{LOCAL_ADDRS, REPROCESS, TUNNEL_PEERS, TUNNEL_SOURCE, VIP_TRANSITIONS},
    parse::{ETH_HDR_LEN, ETH_P_IP_WIRE, EthHdr, IPV4_HDR_LEN, Ipv4Hdr, L4_OFFSET, ptr_at},
    stats::count,
};

/// XDP metadata word of a packet this program decapsulated ("LBTU").
const DECAPSULATED_MARK: u32 = 0x4c42_5455;
/// Length of the mark in the metadata.
const MARK_LEN: usize = 4;
/// TTL of the outer header: the balancer is the outer packet's origin.
const OUTER_TTL: u8 = 64;
/// Don't fragment: the back network must carry the outer packet whole (its MTU is
/// checked before sending, `DROP_TUNNEL_TOO_BIG`).
const IP_DF: u16 = 0x4000;

/// Whether this packet was decapsulated by `receive` (its metadata holds the mark).
#[inline(always)]
fn decapsulated(ctx: &XdpContext) -> bool {
    let meta = ctx.metadata();
    if meta + MARK_LEN > ctx.data() {
        return false;
    }
    // SAFETY: the mark lies between data_meta and data, bounds-checked above.
    unsafe { (meta as *const u32).read_unaligned() == DECAPSULATED_MARK }
}

/// Whether `forward` would take a packet for `vip`: the VIP is in transition and the
/// packet did not come out of the tunnel.
#[inline(always)]
pub fn would_forward(ctx: &XdpContext, vip: u32) -> bool {
    VIP_TRANSITIONS.get_ptr(vip).is_some() && !decapsulated(ctx)
}

/// For a packet to `vip` that found no flow entry and would be refused: if the VIP is
/// in transition, encapsulates the packet to the previous owner and returns the
/// verdict. `None` (packet untouched) when the VIP is not in transition or the packet
/// was decapsulated here: the caller refuses it as usual.
///
/// # Safety
/// The packet's Ethernet and IPv4 headers must have been bounds-checked; on `Some`,
/// every packet pointer the caller holds is invalid.
#[inline(always)]
pub unsafe fn forward(ctx: &XdpContext, vip: u32) -> Option<u32> {
    // SAFETY: read-only copy of a map value.
    let previous_owner = unsafe { VIP_TRANSITIONS.get(vip) }?.previous_owner;
    if decapsulated(ctx) {
        return None;
    }
    // SAFETY: as the caller's.
    Some(unsafe { encapsulate(ctx, previous_owner) })
}

/// Prepends the outer IPv4 header `tunnel source → dst` and sends the packet toward
/// `dst` (FIB lookup, MACs, redirect). The inner packet is left unchanged.
#[inline(always)]
unsafe fn encapsulate(ctx: &XdpContext, dst: u32) -> u32 {
    let source = match TUNNEL_SOURCE.get(0) {
        Some(&source) if source != 0 => source,
        _ => {
            count(counters::DROP_TUNNEL_NO_ROUTE);
            return XDP_DROP;
        }
    };
    let Some(inner) = ptr_at::<Ipv4Hdr>(ctx, ETH_HDR_LEN) else {
        return XDP_DROP;
    };
    // SAFETY: bounds-checked by ptr_at.
    let (inner_len, tos) = unsafe { (u16::from_be((*inner).tot_len), (*inner).tos) };
    let outer_len = u32::from(inner_len) + IPV4_HDR_LEN as u32;
    if outer_len > u32::from(u16::MAX) {
        count(counters::DROP_TUNNEL_TOO_BIG);
        return XDP_DROP;
    }
    // SAFETY: moves data down by the outer header's length; pointers re-derived below.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(IPV4_HDR_LEN as i32)) } != 0 {
        count(counters::DROP_TUNNEL_NO_ROUTE);
        return XDP_DROP;
    }
    let (Some(eth), Some(ip)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<Ipv4Hdr>(ctx, ETH_HDR_LEN),
    ) else {
        return XDP_DROP;
    };
    let header = Ipv4Hdr {
        version_ihl: 0x45,
        // RFC 2003, 3.1: the outer TOS is the inner one.
        tos,
        tot_len: (outer_len as u16).to_be(),
        id: 0,
        frag_off: IP_DF.to_be(),
        ttl: OUTER_TTL,
        protocol: IPPROTO_IPIP,
        check: 0,
        saddr: source,
        daddr: dst,
    };
    // SAFETY: Ipv4Hdr is exactly IPV4_HDR_LEN bytes.
    let check = fold(unsafe { sum_words::<{ IPV4_HDR_LEN / 2 }>((&raw const header).cast()) });
    // SAFETY: both headers bounds-checked above. The MACs are written by `transmit`.
    unsafe {
        (*eth).ether_type = ETH_P_IP_WIRE;
        *ip = Ipv4Hdr { check, ..header };
    }

    // SAFETY: all-zero is a valid value of this plain C struct.
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.family = fwd::AF_INET;
    params.l4_protocol = IPPROTO_IPIP;
    params.__bindgen_anon_1.tot_len = outer_len as u16;
    params.__bindgen_anon_2.tos = tos;
    params.__bindgen_anon_3.ipv4_src = source;
    params.__bindgen_anon_4.ipv4_dst = dst;
    params.ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: `params` is a valid, writable bpf_fib_lookup of the size passed.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &mut params,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {}
        // The lookup compares the outer length with the egress MTU.
        BPF_FIB_LKUP_RET_FRAG_NEEDED => {
            count(counters::DROP_TUNNEL_TOO_BIG);
            return XDP_DROP;
        }
        // Unlike a forwarded packet, this one is not handed to the kernel to resolve
        // the neighbour: it comes from one of the host's own addresses, which the
        // kernel refuses on input. The sync connection to the peer keeps the neighbour
        // resolved.
        _ => {
            count(counters::DROP_TUNNEL_NO_ROUTE);
            return XDP_DROP;
        }
    }
    count(counters::TUNNEL_FORWARDED);
    // SAFETY: bounds-checked above.
    unsafe { fwd::transmit(ctx, eth, params.ifindex, &params.dmac, &params.smac) }
}

/// An IPIP packet (no options, not a fragment, length within the frame): from a tunnel
/// peer to the tunnel source or a balancer address, decapsulated and processed again
/// from the start; from anyone else to those addresses, dropped; to other addresses,
/// passed untouched.
///
/// # Safety
/// `ip` must point at the bounds-checked outer IPv4 header of the packet in `ctx`.
#[inline(always)]
pub unsafe fn receive(ctx: &XdpContext, ip: *const Ipv4Hdr) -> u32 {
    // SAFETY: bounds-checked by the caller.
    let (saddr, daddr) = unsafe { ((*ip).saddr, (*ip).daddr) };
    let to_source = matches!(TUNNEL_SOURCE.get(0), Some(&source) if source != 0 && source == daddr);
    if !to_source && LOCAL_ADDRS.get_ptr(daddr).is_none() {
        count(counters::PASS_NOT_OURS);
        return XDP_PASS;
    }
    if TUNNEL_PEERS.get_ptr(saddr).is_none() {
        count(counters::DROP_TUNNEL_UNKNOWN_PEER);
        return XDP_DROP;
    }
    let Some(inner) = ptr_at::<Ipv4Hdr>(ctx, L4_OFFSET) else {
        count(counters::DROP_IP_TRUNCATED);
        return XDP_DROP;
    };
    // Decapsulated once only: the second pass must see an ordinary packet.
    // SAFETY: bounds-checked by ptr_at.
    if unsafe { (*inner).protocol } == IPPROTO_IPIP {
        count(counters::DROP_TUNNEL_NESTED);
        return XDP_DROP;
    }
    // The Ethernet header moves forward over the outer IPv4 header, so that replies
    // (RSTs, cookies) and the kernel see the frame as it came.
    let (Some(eth), Some(moved)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<EthHdr>(ctx, IPV4_HDR_LEN),
    ) else {
        return XDP_DROP;
    };
    // SAFETY: both bounds-checked; the two 14-byte ranges do not overlap.
    unsafe { core::ptr::copy_nonoverlapping(eth.cast_const(), moved, 1) };
    // SAFETY: shrinks the front of the packet; no pointer is used afterwards.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, IPV4_HDR_LEN as i32) } != 0 {
        count(counters::DROP_IP_TRUNCATED);
        return XDP_DROP;
    }
    // SAFETY: grows the metadata in front of the packet; checked below.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(MARK_LEN as i32)) } != 0 {
        count(counters::DROP_TUNNEL_NESTED);
        return XDP_DROP;
    }
    let meta = ctx.metadata();
    if meta + MARK_LEN > ctx.data() {
        count(counters::DROP_TUNNEL_NESTED);
        return XDP_DROP;
    }
    // SAFETY: bounds-checked just above.
    unsafe { (meta as *mut u32).write_unaligned(DECAPSULATED_MARK) };
    count(counters::TUNNEL_RECEIVED);
    // SAFETY: on success the tail call does not return.
    unsafe { REPROCESS.tail_call(ctx, 0) };
    count(counters::DROP_STAGE_MISSING);
    XDP_DROP
}
