//! TCP resets made from the packet they answer: refused clients (allow-lists),
//! connections whose backend failed (`on_backend_down = "reset"`) and segments of
//! connections without a flow entry (`unknown_segment = "reset"`).

use aya_ebpf::{
    bindings::xdp_action::XDP_DROP, helpers::bpf_xdp_adjust_tail, programs::XdpContext,
};

use crate::{
    csum::{fold, pseudo_header, sum_words},
    parse::{
        ETH_HDR_LEN, EthHdr, IPV4_HDR_LEN, Ipv4Hdr, L4_OFFSET, TCP_ACK, TCP_FIN, TCP_HDR_LEN,
        TCP_RST, TCP_SYN, TcpHdr, ptr_at,
    },
};

/// Turns a TCP segment into the RST that answers it (RFC 793: if the segment has an
/// ACK, the RST takes its sequence number from it; otherwise it has sequence 0 and
/// acknowledges the segment), sent back out of the ingress interface with addresses
/// and ports swapped, options and payload cut. Returns the verdict.
#[inline(always)]
pub fn reply(ctx: &XdpContext) -> u32 {
    const RST_LEN: usize = L4_OFFSET + TCP_HDR_LEN;
    // What the answer acknowledges, read before the frame is cut.
    let (Some(ip), Some(tcp)) = (
        ptr_at::<Ipv4Hdr>(ctx, ETH_HDR_LEN),
        ptr_at::<TcpHdr>(ctx, L4_OFFSET),
    ) else {
        return XDP_DROP;
    };
    // SAFETY: bounds-checked by ptr_at.
    let (seq, ack_seq, flags, segment_len) = unsafe {
        let tot_len = u32::from(u16::from_be((*ip).tot_len));
        let doff = u32::from((*tcp).doff_res >> 4) * 4;
        (
            u32::from_be((*tcp).seq),
            (*tcp).ack_seq,
            (*tcp).flags,
            tot_len.saturating_sub(IPV4_HDR_LEN as u32 + doff),
        )
    };
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

        let (source, dest) = ((*tcp).source, (*tcp).dest);
        (*tcp).source = dest;
        (*tcp).dest = source;
        if flags & TCP_ACK != 0 {
            (*tcp).seq = ack_seq;
            (*tcp).ack_seq = 0;
            (*tcp).flags = TCP_RST;
        } else {
            let syn_fin = u32::from(flags & TCP_SYN != 0) + u32::from(flags & TCP_FIN != 0);
            (*tcp).seq = 0;
            (*tcp).ack_seq = seq.wrapping_add(segment_len + syn_fin).to_be();
            (*tcp).flags = TCP_RST | TCP_ACK;
        }
        (*tcp).doff_res = ((TCP_HDR_LEN / 4) as u8) << 4;
        (*tcp).window = 0;
        (*tcp).urg_ptr = 0;
        (*tcp).check = 0;
        let pseudo = pseudo_header(
            (*ip).saddr,
            (*ip).daddr,
            lb_common::IPPROTO_TCP,
            TCP_HDR_LEN as u16,
        );
        (*tcp).check = fold(pseudo + sum_words::<10>(tcp as *const u16));
    }
    crate::fwd::back_out(ctx)
}
