//! Egress: FIB lookup for next hop and MACs, then a devmap redirect (also back out of the
//! ingress interface: see `back_out`). Flow-table hits use the next hop cached in their
//! entry (`forward_hit`): the FIB lookup was the largest single cost of a hit. A new
//! flow's first packet uses its backend's next hop cached by this CPU (`forward_new`,
//! docs/architecture.md, "Next hops").
//! When the neighbour is not resolved the rewritten packet goes to the kernel, which
//! resolves it and forwards: a new backend is never blackholed.

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams,
        xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    },
    helpers::generated::bpf_fib_lookup,
    programs::XdpContext,
};
use lb_common::{FlowEntry, LAST_SEEN_GRANULARITY_NS, NextHop, counters};

use crate::{
    maps::{NEXT_HOPS, TX_PORTS},
    nat::decrement_ttl,
    parse::{EthHdr, Ipv4Hdr},
    stats::count,
};

pub const AF_INET: u8 = 2;

/// Sends a rewritten packet on its way.
///
/// # Safety
/// `eth` and `ip` must point at bounds-checked headers of the packet in `ctx`.
#[inline(always)]
pub unsafe fn forward(ctx: &XdpContext, eth: *mut EthHdr, ip: *mut Ipv4Hdr) -> u32 {
    // SAFETY: as the caller's.
    unsafe { forward_with_cache(ctx, eth, ip, Cache::None) }
}

/// Where a successful FIB lookup's next hop is kept.
#[derive(Clone, Copy)]
enum Cache {
    None,
    /// The flow entry the packet hit.
    Flow(*mut FlowEntry),
    /// This CPU's entry for the new flow's backend, and the time of the lookup.
    Backend(*mut NextHop, u64),
}

/// Sends a new flow's first packet, rewritten toward backend `backend_id`: through
/// the next hop this CPU cached for the backend when it was looked up for the same
/// source, destination and ingress interface less than `LAST_SEEN_GRANULARITY_NS`
/// before `now` (and the packet fits its MTU), else through a FIB lookup whose result
/// is cached. So route and
/// neighbour changes reach new flows as fast as they reach established ones.
///
/// # Safety
/// As `forward`.
#[inline(always)]
pub unsafe fn forward_new(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    ip: *mut Ipv4Hdr,
    backend_id: u32,
    now: u64,
) -> u32 {
    let Some(hop) = NEXT_HOPS.get_ptr_mut(backend_id) else {
        // SAFETY: as the caller's.
        return unsafe { forward(ctx, eth, ip) };
    };
    // SAFETY: per-CPU map value valid for this run; headers bounds-checked (caller).
    unsafe {
        let ifindex = (*hop).tx_ifindex;
        if ifindex != 0
            && now.wrapping_sub((*hop).refreshed_ns) <= LAST_SEEN_GRANULARITY_NS
            && (*hop).dst_ip == (*ip).daddr
            && (*hop).src_ip == (*ip).saddr
            && (*hop).ingress_ifindex == ctx.ingress_ifindex() as u32
            && u16::from_be((*ip).tot_len) <= (*hop).mtu
        {
            let (dmac, smac) = ((*hop).dmac, (*hop).smac);
            return send(ctx, eth, ip, ifindex, &dmac, &smac);
        }
        forward_with_cache(ctx, eth, ip, Cache::Backend(hop, now))
    }
}

/// `forward`, storing a successful lookup's next hop in `cache`.
#[inline(always)]
unsafe fn forward_with_cache(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    ip: *mut Ipv4Hdr,
    cache: Cache,
) -> u32 {
    // SAFETY: all-zero is a valid value of this plain C struct.
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    let ingress = ctx.ingress_ifindex() as u32;
    // SAFETY: `ip` is bounds-checked; the unions are plain integers.
    unsafe {
        params.family = AF_INET;
        params.l4_protocol = (*ip).protocol;
        params.__bindgen_anon_1.tot_len = u16::from_be((*ip).tot_len);
        params.__bindgen_anon_2.tos = (*ip).tos;
        params.__bindgen_anon_3.ipv4_src = (*ip).saddr;
        params.__bindgen_anon_4.ipv4_dst = (*ip).daddr;
    }
    params.ifindex = ingress;

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
        BPF_FIB_LKUP_RET_NO_NEIGH => {
            count(counters::PASS_NO_NEIGH);
            return XDP_PASS;
        }
        _ => {
            count(counters::PASS_FIB_FAILED);
            return XDP_PASS;
        }
    }

    match cache {
        Cache::None => {}
        // SAFETY: map value valid for this run (caller).
        Cache::Flow(entry) => unsafe {
            (*entry).tx_ifindex = params.ifindex;
            (*entry).tx_dmac = params.dmac;
            (*entry).tx_smac = params.smac;
        },
        // SAFETY: per-CPU map value valid for this run (caller); `ip` bounds-checked.
        Cache::Backend(hop, now) => unsafe {
            *hop = NextHop {
                refreshed_ns: now,
                src_ip: (*ip).saddr,
                dst_ip: (*ip).daddr,
                ingress_ifindex: ingress,
                tx_ifindex: params.ifindex,
                dmac: params.dmac,
                smac: params.smac,
                // On success the lookup reports the egress MTU in place of the length.
                mtu: params.__bindgen_anon_1.mtu_result,
                _pad: [0; 2],
            };
        },
    }
    // SAFETY: headers are bounds-checked by the caller.
    unsafe { send(ctx, eth, ip, params.ifindex, &params.dmac, &params.smac) }
}

/// Forwards a flow-table hit: through the entry's cached next hop, or, when the cache
/// is empty or due for a refresh, through a FIB lookup whose result is cached.
///
/// # Safety
/// As `forward`; `entry` must come from a `FLOWS` lookup during this program run.
#[inline(always)]
pub unsafe fn forward_hit(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    ip: *mut Ipv4Hdr,
    entry: *mut FlowEntry,
    refresh: bool,
) -> u32 {
    // SAFETY: map value valid for this run; headers bounds-checked (caller).
    unsafe {
        let ifindex = (*entry).tx_ifindex;
        if refresh || ifindex == 0 {
            return forward_with_cache(ctx, eth, ip, Cache::Flow(entry));
        }
        let (dmac, smac) = ((*entry).tx_dmac, (*entry).tx_smac);
        send(ctx, eth, ip, ifindex, &dmac, &smac)
    }
}

/// TTL, MACs and the redirect to `ifindex`.
///
/// # Safety
/// `eth` and `ip` must point at bounds-checked headers of the packet in `ctx`.
#[inline(always)]
unsafe fn send(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    ip: *mut Ipv4Hdr,
    ifindex: u32,
    dmac: &[u8; 6],
    smac: &[u8; 6],
) -> u32 {
    // SAFETY: headers are bounds-checked by the caller.
    unsafe {
        if (*ip).ttl <= 1 {
            count(counters::DROP_TTL_EXPIRED);
            return XDP_DROP;
        }
        decrement_ttl(ip);
        transmit(ctx, eth, ifindex, dmac, smac)
    }
}

/// MACs and the redirect to `ifindex`, for a packet whose IP header is final (one
/// this balancer wrote itself, like an encapsulated one, leaves with its own TTL).
///
/// # Safety
/// `eth` must point at the bounds-checked Ethernet header of the packet in `ctx`.
#[inline(always)]
pub unsafe fn transmit(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    ifindex: u32,
    dmac: &[u8; 6],
    smac: &[u8; 6],
) -> u32 {
    // SAFETY: bounds-checked by the caller.
    unsafe {
        (*eth).dst = *dmac;
        (*eth).src = *smac;
    }

    if ifindex == ctx.ingress_ifindex() as u32 {
        count(counters::TX);
        return back_out(ctx);
    }
    match TX_PORTS.redirect(ifindex, 0) {
        Ok(action) => {
            count(counters::REDIRECT);
            action
        }
        Err(_) => {
            // Egress interface not served by the balancer: let the kernel send it.
            count(counters::PASS_FIB_FAILED);
            XDP_PASS
        }
    }
}

/// Sends the frame back out of the interface it arrived on.
///
/// Through the devmap rather than `XDP_TX`: in this testbed native `XDP_TX` frames on a
/// veth never reached the peer, while a devmap redirect to the same interface does. Only
/// where the ingress interface is not in `TX_PORTS` (a `BPF_PROG_TEST_RUN` outside an
/// attached interface) does it fall back to `XDP_TX`.
#[inline(always)]
pub fn back_out(ctx: &XdpContext) -> u32 {
    TX_PORTS
        .redirect(ctx.ingress_ifindex() as u32, 0)
        .unwrap_or(XDP_TX)
}
