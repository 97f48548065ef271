//! ICMP errors about balanced connections, translated to the other side of the
//! connection (docs/architecture.md, "ICMP errors").
//!
//! A router that cannot deliver a packet the balancer sent (too big for a link, TTL
//! expired, unreachable...) reports it to that packet's source: a VIP, a SNAT address
//! or, in DNAT, the client. The quote inside the error is the packet as the balancer
//! sent it, so the flow entry of the opposite direction is keyed by the quoted tuple
//! reversed; that entry's rewrite, applied to the quote as a whole packet of its
//! direction, turns the quote back into the packet its real sender sent. Without this,
//! path MTU discovery through the VIP fails and large transfers stall.
//!
//! Only read here: no flow entry is created, changed or refreshed.

use aya_ebpf::{bindings::xdp_action::XDP_PASS, programs::XdpContext};
use lb_common::{
    FLOW_DIR_CLIENT_TO_SERVER, IPPROTO_TCP, IPPROTO_UDP, counters,
    icmp_relay::{is_relayed_error, quote_key, relay as plan},
};

use crate::{
    csum::CsumDelta,
    fwd, malformed,
    maps::{FLOWS, LOCAL_ADDRS},
    parse::{EthHdr, IPV4_HDR_LEN, Ipv4Hdr, L4_OFFSET, ptr_at},
    stats::count,
};

pub const IPPROTO_ICMP: u8 = 1;
const ICMP_HDR_LEN: usize = 8;
/// The quoted IPv4 header starts right after the error's ICMP header.
const QUOTE_IP_OFFSET: usize = L4_OFFSET + ICMP_HDR_LEN;
/// The quoted transport header: the quote's IPv4 header never has options here.
const QUOTE_L4_OFFSET: usize = QUOTE_IP_OFFSET + IPV4_HDR_LEN;
/// What every error must quote (RFC 792): the IPv4 header and 8 bytes, the ports.
const MIN_QUOTE_L4: usize = 8;
/// Quoted TCP bytes needed to hold its checksum (offset 16).
const TCP_CHECK_END: usize = 18;

#[repr(C)]
struct IcmpHdr {
    kind: u8,
    code: u8,
    check: u16,
    rest: u32,
}

/// The first 8 quoted bytes of TCP or UDP: the ports, then TCP's sequence number or
/// UDP's length and checksum.
#[repr(C)]
struct QuotedL4 {
    source: u16,
    dest: u16,
    word2: u16,
    word3: u16,
}

/// Handles an ICMP packet (outer IPv4 header checked by the caller, `l4_len` its
/// payload length): errors about a balanced connection are translated and forwarded,
/// everything else gets the verdicts documented on `lb_common::counters`.
///
/// # Safety
/// `eth` and `ip` must point at the bounds-checked headers of the packet in `ctx`, whose
/// IPv4 header has no options and whose total length lies inside the frame.
#[inline(always)]
pub unsafe fn relay(ctx: &XdpContext, eth: *mut EthHdr, ip: *mut Ipv4Hdr, l4_len: usize) -> u32 {
    // SAFETY: bounds-checked by the caller.
    let daddr = unsafe { (*ip).daddr };
    let Some(icmp) = ptr_at::<IcmpHdr>(ctx, L4_OFFSET) else {
        return not_ours();
    };
    // SAFETY: bounds-checked by ptr_at.
    let kind = unsafe { (*icmp).kind };
    // Echo and the other informational messages are the kernel's, as before.
    if !is_relayed_error(kind) {
        return not_ours();
    }
    let (Some(qip), Some(ql4)) = (
        ptr_at::<Ipv4Hdr>(ctx, QUOTE_IP_OFFSET),
        ptr_at::<QuotedL4>(ctx, QUOTE_L4_OFFSET),
    ) else {
        return malformed(daddr, counters::DROP_ICMP_TRUNCATED);
    };
    if l4_len < ICMP_HDR_LEN + IPV4_HDR_LEN + MIN_QUOTE_L4 {
        return malformed(daddr, counters::DROP_ICMP_TRUNCATED);
    }
    let quote_l4_len = l4_len - ICMP_HDR_LEN - IPV4_HDR_LEN;
    // SAFETY: bounds-checked by ptr_at.
    let (version_ihl, qproto, qfrag, qsrc, qdst, qcheck, sport, dport) = unsafe {
        (
            (*qip).version_ihl,
            (*qip).protocol,
            (*qip).frag_off,
            (*qip).saddr,
            (*qip).daddr,
            (*qip).check,
            (*ql4).source,
            (*ql4).dest,
        )
    };
    // The balancer never sends IPv4 options, so a quote with them is not of its packets
    // (and the ports would not be where they are read).
    if version_ihl != 0x45 {
        return malformed(daddr, counters::DROP_ICMP_BAD_QUOTE);
    }
    // Neither TCP nor UDP, or a fragment's tail (no ports): not a balanced packet.
    if (qproto != IPPROTO_TCP && qproto != IPPROTO_UDP) || qfrag & 0x1fffu16.to_be() != 0 {
        return unrelated(daddr, counters::PASS_ICMP_OTHER_QUOTE);
    }
    let key = quote_key(qsrc, qdst, sport, dport, qproto);
    // SAFETY: read-only copy of a map value.
    let Some(entry) = (unsafe { FLOWS.get(key) }).copied() else {
        return unrelated(daddr, counters::PASS_ICMP_NO_FLOW);
    };

    // The quote becomes the packet its real sender sent; the outer header is decided
    // there too (lb_common::icmp_relay).
    // SAFETY: bounds-checked by the caller.
    let r = plan(&key, &entry, unsafe { (*ip).saddr });
    let (new_qsrc, new_qdst) = (r.quote_src_ip, r.quote_dst_ip);
    let (new_sport, new_dport) = (r.quote_src_port, r.quote_dst_port);
    let new_qcheck = CsumDelta::from_check(qcheck)
        .replace32(qsrc, new_qsrc)
        .replace32(qdst, new_qdst)
        .finish();
    // SAFETY: bounds-checked by ptr_at.
    let mut icmp_sum = CsumDelta::from_check(unsafe { (*icmp).check })
        .replace32(qsrc, new_qsrc)
        .replace32(qdst, new_qdst)
        .replace16(qcheck, new_qcheck)
        .replace16(sport, new_sport)
        .replace16(dport, new_dport);
    // Changes the transport checksum of the quoted packet sees: pseudo-header and ports.
    let l4_sum = CsumDelta::empty()
        .replace32(qsrc, new_qsrc)
        .replace32(qdst, new_qdst)
        .replace16(sport, new_sport)
        .replace16(dport, new_dport);
    // SAFETY: bounds-checked by ptr_at.
    unsafe {
        (*qip).saddr = new_qsrc;
        (*qip).daddr = new_qdst;
        (*qip).check = new_qcheck;
        (*ql4).source = new_sport;
        (*ql4).dest = new_dport;
    }
    if qproto == IPPROTO_UDP {
        // UDP's checksum is in the first 8 bytes; zero means none and stays so.
        // SAFETY: bounds-checked by ptr_at.
        let old = unsafe { (*ql4).word3 };
        if old != 0 {
            let check = l4_sum.apply(old);
            let check = if check == 0 { 0xffff } else { check };
            icmp_sum = icmp_sum.replace16(old, check);
            // SAFETY: bounds-checked by ptr_at.
            unsafe { (*ql4).word3 = check };
        }
    } else {
        // SAFETY: bounds-checked by ptr_at.
        icmp_sum = unsafe { fix_quoted_tcp(ctx, ql4, &entry, l4_sum, quote_l4_len, icmp_sum) };
    }

    // SAFETY: bounds-checked by the caller and ptr_at.
    unsafe {
        let (old_src, old_dst) = ((*ip).saddr, (*ip).daddr);
        (*ip).saddr = r.outer_src_ip;
        (*ip).daddr = r.outer_dst_ip;
        (*ip).check = CsumDelta::from_check((*ip).check)
            .replace32(old_src, r.outer_src_ip)
            .replace32(old_dst, r.outer_dst_ip)
            .finish();
        (*icmp).check = icmp_sum.finish();
    }
    count(counters::ICMP_RELAYED);
    // SAFETY: headers bounds-checked above.
    unsafe { fwd::forward(ctx, eth, ip) }
}

/// The quoted TCP header's share: in a SYN-proxied connection the server's sequence
/// numbers were shifted toward the client, so a quote going to the server is shifted
/// back (its stack checks that the quoted SEQ is in flight). The checksum, at offset
/// 16, is fixed only when the quote reaches it. Returns the ICMP checksum state.
///
/// # Safety
/// `ql4` must point at the bounds-checked first 8 quoted TCP bytes.
#[inline(always)]
unsafe fn fix_quoted_tcp(
    ctx: &XdpContext,
    ql4: *mut QuotedL4,
    entry: &lb_common::FlowEntry,
    mut l4_sum: CsumDelta,
    quote_l4_len: usize,
    mut icmp_sum: CsumDelta,
) -> CsumDelta {
    // SAFETY: bounds-checked by the caller.
    unsafe {
        if entry.synproxy != 0 && entry.direction == FLOW_DIR_CLIENT_TO_SERVER {
            let (hi, lo) = ((*ql4).word2, (*ql4).word3);
            let seq = (u32::from(u16::from_be(hi)) << 16) | u32::from(u16::from_be(lo));
            let seq = seq.wrapping_sub(entry.seq_delta);
            let (new_hi, new_lo) = (((seq >> 16) as u16).to_be(), (seq as u16).to_be());
            l4_sum = l4_sum.replace16(hi, new_hi).replace16(lo, new_lo);
            icmp_sum = icmp_sum.replace16(hi, new_hi).replace16(lo, new_lo);
            (*ql4).word2 = new_hi;
            (*ql4).word3 = new_lo;
        }
        if quote_l4_len >= TCP_CHECK_END
            && let Some(check) = ptr_at::<u16>(ctx, QUOTE_L4_OFFSET + 16)
        {
            let old = check.read_unaligned();
            let new = l4_sum.apply(old);
            icmp_sum = icmp_sum.replace16(old, new);
            check.write_unaligned(new);
        }
    }
    icmp_sum
}

/// Not an error the balancer relays: passed to the kernel untouched, as before.
#[inline(always)]
fn not_ours() -> u32 {
    count(counters::PASS_NOT_OURS);
    XDP_PASS
}

/// An error that is not about a balanced connection: the kernel's (its own
/// connections', or another host's), passed untouched; counted as `counter` when it is
/// addressed to the balancer.
#[inline(always)]
fn unrelated(daddr: u32, counter: u32) -> u32 {
    if LOCAL_ADDRS.get_ptr(daddr).is_some() {
        count(counter);
    } else {
        count(counters::PASS_NOT_OURS);
    }
    XDP_PASS
}
