//! ICMP errors made from the packet they report: "time exceeded in transit" for a
//! would-be new flow whose TTL expires at the balancer, so that a traceroute to a
//! VIP shows the balancer's hop instead of a silent one.

use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};

use crate::{
    csum::{fold, sum_words},
    parse::{ETH_HDR_LEN, ETH_P_IP_WIRE, EthHdr, IPV4_HDR_LEN, Ipv4Hdr, ptr_at},
};

const IPPROTO_ICMP: u8 = 1;
const ICMP_TIME_EXCEEDED: u8 = 11;
/// Code 0: time to live exceeded in transit.
const ICMP_EXC_TTL: u8 = 0;
const ICMP_HDR_LEN: usize = 8;
/// What the error quotes (RFC 792): the offending IPv4 header (never with options: they
/// are refused for balancer traffic) and the first 8 bytes of its payload, the ports.
const QUOTE_LEN: usize = IPV4_HDR_LEN + 8;
/// Bytes put in front of the quoted header: the error's own IPv4 and ICMP headers.
const GROW: usize = IPV4_HDR_LEN + ICMP_HDR_LEN;
/// The ICMP message (header and quote) in 16-bit words, for its checksum.
const ICMP_WORDS: usize = (ICMP_HDR_LEN + QUOTE_LEN) / 2;

#[repr(C)]
struct IcmpHdr {
    kind: u8,
    code: u8,
    check: u16,
    unused: u32,
}

/// Turns the packet into the ICMP time exceeded that reports it, from its destination
/// address (the VIP) back to its source, sent out of the ingress interface. Returns the
/// verdict, or `None` (the packet is then to be dropped) when the source is not a
/// unicast address (RFC 1812 4.3.2.7: no error to 0/8, multicast or broadcast) or the
/// frame cannot be reshaped.
///
/// The offending IPv4 header already sits where the quote goes once the frame grows
/// by `GROW` bytes at its head, so only the new headers are written.
#[inline(always)]
pub fn time_exceeded(ctx: &XdpContext) -> Option<u32> {
    let (Some(eth), Some(ip)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<Ipv4Hdr>(ctx, ETH_HDR_LEN),
    ) else {
        return None;
    };
    // SAFETY: bounds-checked by ptr_at.
    let (client_mac, our_mac, saddr, daddr) =
        unsafe { ((*eth).src, (*eth).dst, (*ip).saddr, (*ip).daddr) };
    let first_octet = u32::from_be(saddr) >> 24;
    if first_octet == 0 || first_octet >= 224 {
        return None;
    }
    let frame_len = ctx.data_end() - ctx.data();
    if frame_len > ETH_HDR_LEN + QUOTE_LEN {
        let delta = (ETH_HDR_LEN + QUOTE_LEN) as i32 - frame_len as i32;
        // SAFETY: shrinking the tail of our own frame; pointers are re-derived below.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
            return None;
        }
    }
    // SAFETY: growing the head into the frame's headroom; pointers are re-derived below.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(GROW as i32)) } != 0 {
        return None;
    }
    let (Some(eth), Some(ip), Some(icmp), Some(message)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<Ipv4Hdr>(ctx, ETH_HDR_LEN),
        ptr_at::<IcmpHdr>(ctx, ETH_HDR_LEN + IPV4_HDR_LEN),
        ptr_at::<[u16; ICMP_WORDS]>(ctx, ETH_HDR_LEN + IPV4_HDR_LEN),
    ) else {
        return None;
    };
    // SAFETY: all headers bounds-checked by ptr_at; the quote lies inside `message`.
    unsafe {
        (*eth).dst = client_mac;
        (*eth).src = our_mac;
        (*eth).ether_type = ETH_P_IP_WIRE;
        (*ip).version_ihl = 0x45;
        (*ip).tos = 0;
        (*ip).tot_len = ((IPV4_HDR_LEN + ICMP_HDR_LEN + QUOTE_LEN) as u16).to_be();
        (*ip).id = 0;
        (*ip).frag_off = 0;
        (*ip).ttl = 64;
        (*ip).protocol = IPPROTO_ICMP;
        (*ip).saddr = daddr;
        (*ip).daddr = saddr;
        (*ip).check = 0;
        (*ip).check = fold(sum_words::<10>(ip as *const u16));

        (*icmp).kind = ICMP_TIME_EXCEEDED;
        (*icmp).code = ICMP_EXC_TTL;
        (*icmp).check = 0;
        (*icmp).unused = 0;
        (*icmp).check = fold(sum_words::<ICMP_WORDS>(message as *const u16));
    }
    Some(crate::fwd::back_out(ctx))
}
