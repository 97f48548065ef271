//! Authorization of new flows (seed 000 fig. 5): a service that requires it admits only
//! clients inside its allow-list; others are dropped or, for TCP, answered with a RST.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_TX},
    helpers::bpf_xdp_adjust_tail,
    maps::lpm_trie::Key,
    programs::XdpContext,
};
use lb_common::{EligibilityKey, SERVICE_FLAG_AUTH_REQUIRED, Service};

use crate::{
    maps::{ELIGIBILITY, TX_PORTS},
    parse::{
        ETH_HDR_LEN, EthHdr, IPV4_HDR_LEN, Ipv4Hdr, L4_OFFSET, TCP_ACK, TCP_HDR_LEN, TCP_RST,
        TcpHdr, ptr_at,
    },
};

/// Whether `client` (network byte order) may open a new flow to `service`.
#[inline(always)]
pub fn allowed(service: &Service, client: u32) -> bool {
    if service.flags & SERVICE_FLAG_AUTH_REQUIRED == 0 {
        return true;
    }
    let key = Key::new(
        64,
        EligibilityKey {
            service_id_be: service.id.to_be(),
            addr: client,
        },
    );
    ELIGIBILITY.get(&key).is_some()
}

/// Folds a 32-bit one's-complement sum to 16 bits.
#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Sum of `N` 16-bit words as they sit in memory (checksums need no byte swapping).
#[inline(always)]
unsafe fn sum_words<const N: usize>(ptr: *const u16) -> u32 {
    let mut sum = 0u32;
    for i in 0..N {
        // SAFETY: the caller bounds-checked N words at ptr.
        sum += u32::from(unsafe { core::ptr::read_unaligned(ptr.add(i)) });
    }
    sum
}

/// Turns a TCP SYN into the RST+ACK that refuses it, sent back out of the ingress
/// interface: addresses and ports swapped, `ack = seq + 1`, options and payload cut.
/// Returns XDP_TX, or XDP_DROP if the frame cannot be rewritten.
#[inline(always)]
pub fn reset(ctx: &XdpContext) -> u32 {
    const RST_LEN: usize = L4_OFFSET + TCP_HDR_LEN;
    let frame_len = ctx.data_end() - ctx.data();
    if frame_len > RST_LEN {
        // SAFETY: shrinking the tail of our own frame; pointers are re-derived below.
        let delta = RST_LEN as i32 - frame_len as i32;
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
            return XDP_DROP;
        }
    }
    let (Some(eth), Some(ip), Some(tcp)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<Ipv4Hdr>(ctx, ETH_HDR_LEN),
        ptr_at::<TcpHdr>(ctx, L4_OFFSET),
    ) else {
        return XDP_DROP;
    };
    // SAFETY: all three headers bounds-checked by ptr_at.
    unsafe {
        core::mem::swap(&mut (*eth).dst, &mut (*eth).src);
        let (saddr, daddr) = ((*ip).saddr, (*ip).daddr);
        (*ip).saddr = daddr;
        (*ip).daddr = saddr;
        (*ip).tot_len = ((IPV4_HDR_LEN + TCP_HDR_LEN) as u16).to_be();
        (*ip).ttl = 64;
        (*ip).id = 0;
        (*ip).frag_off = 0x4000u16.to_be(); // DF
        (*ip).tos = 0;
        (*ip).check = 0;
        (*ip).check = fold(sum_words::<10>(ip as *const u16));

        let (source, dest, seq) = ((*tcp).source, (*tcp).dest, (*tcp).seq);
        (*tcp).source = dest;
        (*tcp).dest = source;
        (*tcp).ack_seq = u32::from_be(seq).wrapping_add(1).to_be();
        (*tcp).seq = 0;
        (*tcp).doff_res = ((TCP_HDR_LEN / 4) as u8) << 4;
        (*tcp).flags = TCP_RST | TCP_ACK;
        (*tcp).window = 0;
        (*tcp).urg_ptr = 0;
        (*tcp).check = 0;
        // Pseudo-header: addresses, zero + protocol, TCP length.
        let pseudo = sum_words::<4>(&raw const (*ip).saddr as *const u16)
            + u32::from(u16::from_be_bytes([0, lb_common::IPPROTO_TCP]).to_be())
            + u32::from((TCP_HDR_LEN as u16).to_be());
        (*tcp).check = fold(pseudo + sum_words::<10>(tcp as *const u16));
    }
    // Out of the ingress interface through the devmap rather than XDP_TX: a veth
    // delivers native XDP_TX frames to a peer only when the peer runs XDP itself.
    match TX_PORTS.redirect(ctx.ingress_ifindex() as u32, 0) {
        Ok(action) => action,
        Err(_) => XDP_TX,
    }
}
