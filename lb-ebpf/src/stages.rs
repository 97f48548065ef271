//! Programs entered by tail call from `lb_xdp`. The SYN proxy's handshake handlers (the
//! cookie SYN-ACK and the cookie ACK that opens the server side) walk TCP options and
//! build packets; inside `lb_xdp` their paths multiplied with everything else the
//! verifier explores and together went past its million-instruction budget. As a program
//! of their own they are verified alone, and the fast path never enters them
//! (docs/architecture.md, "Programs").

use aya_ebpf::{
    bindings::xdp_action::XDP_DROP,
    macros::{map, xdp},
    maps::ProgramArray,
    programs::XdpContext,
};
use lb_common::{FlowKey, IPPROTO_TCP, STAGE_COUNT, STAGE_SYN_PROXY, ServiceKey, counters};

use crate::{
    maps::SERVICES,
    parse::{
        ETH_HDR_LEN, IPV4_HDR_LEN, Ipv4Hdr, L4_OFFSET, TCP_ACK, TCP_FIN, TCP_HDR_LEN, TCP_RST,
        TCP_SYN, TcpHdr, ptr_at,
    },
    stats::{account_service_cookie, count},
    synproxy,
};

/// Stage programs by `STAGE_*` index; the controller fills it when it loads them.
#[map]
pub static STAGES: ProgramArray = ProgramArray::with_max_entries(STAGE_COUNT, 0);

/// Hands the packet to the SYN-proxy stage. Returns only if the stage is missing.
#[inline(always)]
pub fn syn_proxy(ctx: &XdpContext) -> u32 {
    // SAFETY: on success the tail call does not return.
    unsafe { STAGES.tail_call(ctx, STAGE_SYN_PROXY) };
    count(counters::DROP_STAGE_MISSING);
    XDP_DROP
}

/// The SYN-proxy stage: a SYN to answer with a cookie, or an ACK whose cookie may open
/// the server side. `lb_xdp` sends only those here, after its own checks (headers,
/// flags, checksums, allow-list), and changed nothing in the packet; the headers are
/// found again for the verifier.
#[xdp]
pub fn lb_xdp_syn_proxy(ctx: XdpContext) -> u32 {
    // SAFETY: every pointer comes from a `ptr_at` bounds check.
    unsafe { syn_proxy_stage(&ctx) }
}

#[inline(always)]
unsafe fn syn_proxy_stage(ctx: &XdpContext) -> u32 {
    let (Some(ip), Some(tcp)) = (
        ptr_at::<Ipv4Hdr>(ctx, ETH_HDR_LEN),
        ptr_at::<TcpHdr>(ctx, L4_OFFSET),
    ) else {
        return XDP_DROP;
    };
    // SAFETY: bounds-checked by ptr_at.
    let (tot_len, saddr, daddr, source, dest, doff_res, flags) = unsafe {
        (
            u16::from_be((*ip).tot_len) as usize,
            (*ip).saddr,
            (*ip).daddr,
            (*tcp).source,
            (*tcp).dest,
            (*tcp).doff_res,
            (*tcp).flags,
        )
    };
    let doff_bytes = ((doff_res >> 4) as usize) * 4;
    if doff_bytes < TCP_HDR_LEN || doff_bytes + IPV4_HDR_LEN > tot_len {
        return XDP_DROP;
    }
    let key = FlowKey {
        src_ip: saddr,
        dst_ip: daddr,
        src_port: source,
        dst_port: dest,
        proto: IPPROTO_TCP,
        _pad: [0; 3],
    };
    let service_key = ServiceKey {
        vip: daddr,
        port: dest,
        proto: IPPROTO_TCP,
        _pad: 0,
    };
    // SAFETY: read-only copy of a map value.
    let Some(service) = (unsafe { SERVICES.get(service_key) }).copied() else {
        return XDP_DROP;
    };
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    // SAFETY: headers bounds-checked above; the handlers re-derive what they change.
    unsafe {
        if flags & (TCP_SYN | TCP_ACK | TCP_FIN | TCP_RST) == TCP_SYN {
            account_service_cookie(service.id);
            return synproxy::on_syn(ctx, &key, doff_bytes);
        }
        if let Some(verdict) = synproxy::on_ack(ctx, ip, tcp, &key, &service, doff_bytes, frame_len)
        {
            return verdict;
        }
    }
    // No valid cookie, on a service that only accepts cookie ACKs for a while: an
    // ordinary segment without a flow. The check only read it.
    crate::no_flow(ctx, &service, &key, flags)
}
