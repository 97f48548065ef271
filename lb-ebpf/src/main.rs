//! XDP program of the load balancer.
//!
//! Path of a packet (docs/architecture.md, "Packet paths"):
//! 1. parse with strict bounds checks; not IPv4 (or VLAN-tagged) → pass untouched;
//!    ICMP errors about balanced connections → translated (`icmp_relay`); later
//!    fragments → follow their first fragment's flow (`frag`);
//! 2. neither address in `ADDR_FILTER` → another host's packet, passed untouched before
//!    any hash lookup (`addr_filter`);
//!    flow-table hit → rewrite addresses/ports, incremental checksums, forward;
//! 3. miss on a SYN or a UDP datagram to a service → checksums verified, Maglev pick,
//!    both flow entries, rewrite, forward; a SYN or cookie ACK for the SYN proxy →
//!    the stage program `lb_xdp_syn_proxy` (`stages`, by tail call);
//! 4. anything else for a balancer address → documented drop or pass; everything not
//!    for the balancer → pass untouched.
//!
//! Malformed packets get the verdicts documented on `lb_common::counters`.
#![no_std]
#![no_main]

mod addr_filter;
mod csum;
mod eligibility;
mod events;
mod flow;
mod frag;
mod fwd;
mod icmp;
mod icmp_relay;
mod maps;
mod nat;
mod parse;
mod reset;
mod sched;
mod session;
mod stages;
mod stats;
mod synproxy;
mod tcpopt;
mod tunnel;
mod verify;

use aya_ebpf::{
    bindings::{
        BPF_ANY, BPF_NOEXIST,
        xdp_action::{XDP_DROP, XDP_PASS},
    },
    macros::xdp,
    programs::XdpContext,
};
use lb_common::{
    FLOW_DIR_CLIENT_TO_SERVER, FLOW_DIR_SERVER_TO_CLIENT, FLOW_STATE_CLOSING, FLOW_STATE_RESET,
    FLOW_STATE_SYN_SEEN, FLOW_STATE_SYNPROXY, FLOW_STATE_UDP, FlowEntry, FlowKey, IPPROTO_TCP,
    IPPROTO_UDP, MODE_DNAT, SERVICE_FLAG_AUTH_RST, SERVICE_FLAG_COOKIE_ACKS,
    SERVICE_FLAG_NO_FLOW_RST, SERVICE_FLAG_SYN_COOKIES, SERVICE_FLAG_SYN_PROXY, Service,
    ServiceKey, counters,
};

use crate::{
    maps::{FLOWS, LOCAL_ADDRS, SERVICES},
    nat::L4,
    parse::{
        ETH_HDR_LEN, ETH_P_8021AD_WIRE, ETH_P_8021Q_WIRE, ETH_P_IP_WIRE, EthHdr, IPV4_HDR_LEN,
        Ipv4Hdr, L4_OFFSET, TCP_ACK, TCP_FIN, TCP_HDR_LEN, TCP_RST, TCP_SYN, TcpHdr, UDP_HDR_LEN,
        UdpHdr, ptr_at,
    },
    stats::{account, account_new_flow, account_service_denied, account_service_drop, count},
};

#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    // SAFETY: all packet pointers below come from `ptr_at` bounds checks.
    unsafe { process(&ctx) }
}

/// Verdict for a packet that is malformed: dropped (and counted) if it is addressed to
/// the balancer, passed untouched otherwise (the kernel judges other hosts' traffic).
#[inline(always)]
fn malformed(daddr: u32, counter: u32) -> u32 {
    if LOCAL_ADDRS.get_ptr(daddr).is_some() {
        count(counter);
        XDP_DROP
    } else {
        count(counters::PASS_NOT_OURS);
        XDP_PASS
    }
}

/// `malformed` for an L4 header cut short, which in a first fragment is a tiny
/// fragment (RFC 1858): the header must not be completed by a fragment without ports.
#[inline(always)]
fn truncated(daddr: u32, first_fragment: bool, counter: u32) -> u32 {
    malformed(
        daddr,
        if first_fragment {
            counters::DROP_FRAGMENT_TINY
        } else {
            counter
        },
    )
}

#[inline(always)]
unsafe fn process(ctx: &XdpContext) -> u32 {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        count(counters::DROP_SHORT_FRAME);
        return XDP_DROP;
    };
    // SAFETY: bounds-checked by ptr_at.
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type != ETH_P_IP_WIRE {
        // A tagged frame belongs to a VLAN the balancer does not serve: the kernel's VLAN
        // device gets it, untouched (README, "VLANs"). A tag the device stripped into the
        // receive metadata is not visible here.
        if ether_type == ETH_P_8021Q_WIRE || ether_type == ETH_P_8021AD_WIRE {
            count(counters::PASS_VLAN);
        } else {
            count(counters::PASS_NOT_IPV4);
        }
        return XDP_PASS;
    }
    // A truncated, IHL<5 or over-long IPv4 header is dropped whoever it is for: the
    // kernel would drop it too, and its addresses cannot be trusted.
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_HDR_LEN) else {
        count(counters::DROP_IP_TRUNCATED);
        return XDP_DROP;
    };
    // SAFETY: bounds-checked by ptr_at.
    let (version_ihl, tot_len, daddr, proto) = unsafe {
        (
            (*ip).version_ihl,
            u16::from_be((*ip).tot_len) as usize,
            (*ip).daddr,
            (*ip).protocol,
        )
    };
    let ihl_bytes = ((version_ihl & 0x0f) as usize) * 4;
    if version_ihl >> 4 != 4 || ihl_bytes < IPV4_HDR_LEN {
        count(counters::DROP_IP_BAD_IHL);
        return XDP_DROP;
    }
    if tot_len < ihl_bytes || ctx.data() + ETH_HDR_LEN + tot_len > ctx.data_end() {
        count(counters::DROP_IP_BAD_LENGTH);
        return XDP_DROP;
    }
    // Options are refused for balancer traffic; other hosts' packets pass.
    if ihl_bytes != IPV4_HDR_LEN {
        return malformed(daddr, counters::DROP_IP_OPTIONS);
    }
    let l4_len = tot_len - IPV4_HDR_LEN;
    // Fragments (docs/architecture.md, "Fragments"): the first carries the ports and
    // takes the normal path below, noting its datagram once the flow is known; later
    // ones follow that note. Everything fragment-specific hides behind this one branch,
    // or behind checks that already failed, so unfragmented packets pay nothing more.
    let mut first_fragment = false;
    // SAFETY: bounds-checked by ptr_at.
    if unsafe { (*ip).is_fragment() } {
        if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
            return malformed(daddr, counters::DROP_IP_FRAGMENT);
        }
        // SAFETY: bounds-checked by ptr_at.
        let frag_off = u16::from_be(unsafe { (*ip).frag_off });
        if frag_off & frag::IP_OFFSET_MASK != 0 {
            // SAFETY: headers bounds-checked, no options, length within the frame.
            return unsafe { frag::later(ctx, eth, ip, frag_off, l4_len) };
        }
        first_fragment = true;
    }

    let (l4, src_port, dst_port, tcp_flags, doff_bytes) = match proto {
        IPPROTO_TCP => {
            let Some(tcp) = ptr_at::<TcpHdr>(ctx, L4_OFFSET) else {
                return truncated(daddr, first_fragment, counters::DROP_TCP_TRUNCATED);
            };
            if l4_len < TCP_HDR_LEN {
                return truncated(daddr, first_fragment, counters::DROP_TCP_TRUNCATED);
            }
            // SAFETY: bounds-checked by ptr_at.
            let (doff_res, source, dest, flags) =
                unsafe { ((*tcp).doff_res, (*tcp).source, (*tcp).dest, (*tcp).flags) };
            let doff_bytes = ((doff_res >> 4) as usize) * 4;
            if doff_bytes < TCP_HDR_LEN || doff_bytes > l4_len {
                // A first fragment must hold the whole header, options included (RFC
                // 1858): the rest would come unchecked in a fragment without ports.
                if doff_bytes >= TCP_HDR_LEN {
                    return truncated(daddr, first_fragment, counters::DROP_TCP_BAD_DOFF);
                }
                return malformed(daddr, counters::DROP_TCP_BAD_DOFF);
            }
            (L4::Tcp(tcp), source, dest, Some(flags), doff_bytes)
        }
        IPPROTO_UDP => {
            let Some(udp) = ptr_at::<UdpHdr>(ctx, L4_OFFSET) else {
                return truncated(daddr, first_fragment, counters::DROP_UDP_TRUNCATED);
            };
            if l4_len < UDP_HDR_LEN {
                return truncated(daddr, first_fragment, counters::DROP_UDP_TRUNCATED);
            }
            // SAFETY: bounds-checked by ptr_at.
            let (source, dest, len) = unsafe { ((*udp).source, (*udp).dest, (*udp).len) };
            // The UDP length must be the IP payload's: a shorter one hides trailing
            // bytes the backend would see differently, a longer one lies. A first
            // fragment's is its whole datagram's, so only at least its own bytes.
            let len = u16::from_be(len) as usize;
            if len != l4_len && !(first_fragment && len > l4_len) {
                return malformed(daddr, counters::DROP_UDP_BAD_LENGTH);
            }
            (L4::Udp(udp), source, dest, None, 0)
        }
        // ICMP errors about balanced connections go to the connection's other side
        // (docs/architecture.md, "ICMP errors"); the rest passes as before.
        // SAFETY: headers bounds-checked above, no IPv4 options.
        icmp_relay::IPPROTO_ICMP => return unsafe { icmp_relay::relay(ctx, eth, ip, l4_len) },
        // IPIP from a peer forwarding packets of a VIP it is taking over
        // (docs/scale-out.md, "Forwarding to the previous owner").
        // SAFETY: header bounds-checked above, no IPv4 options.
        lb_common::IPPROTO_IPIP => return unsafe { tunnel::receive(ctx, ip) },
        _ => {
            count(counters::PASS_NOT_OURS);
            return XDP_PASS;
        }
    };

    let key = FlowKey {
        // SAFETY: bounds-checked by ptr_at.
        src_ip: unsafe { (*ip).saddr },
        dst_ip: daddr,
        src_port,
        dst_port,
        proto,
        _pad: [0; 3],
    };
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    // A SYN that can open a connection: no ACK, and neither FIN nor RST with it.
    let is_syn = matches!(tcp_flags, Some(flags) if flags & (TCP_SYN | TCP_ACK | TCP_FIN | TCP_RST) == TCP_SYN);

    // Other hosts' packets leave here, before any hash lookup: neither address is one
    // a flow entry or a local address can match (docs/architecture.md, "Address
    // filter"). ICMP errors and later fragments took their own paths above.
    if !addr_filter::may_be_ours(key.src_ip, daddr) {
        count(counters::PASS_NOT_OURS);
        return XDP_PASS;
    }

    // Fast path: an established flow in either direction.
    if let Some(entry) = FLOWS.get_ptr_mut(key) {
        // SAFETY: map value valid for this run; headers bounds-checked.
        unsafe {
            // A SYN on a closed connection's tuple is a new connection (port reuse):
            // drop the old pair and schedule it afresh.
            let state = (*entry).state;
            if is_syn
                && (state == FLOW_STATE_CLOSING || state == FLOW_STATE_RESET)
                && (*entry).direction == FLOW_DIR_CLIENT_TO_SERVER
            {
                flow::remove_pair(&key, &*entry);
                count(counters::FLOW_REPLACED);
            } else if state == FLOW_STATE_RESET {
                // The backend failed: tell the client at once instead of letting it
                // retransmit into a dead server.
                if let Some(flags) = tcp_flags
                    && (*entry).direction == FLOW_DIR_CLIENT_TO_SERVER
                {
                    // A RST is never answered with a RST (RFC 793): the client gave
                    // up on its own, so the pair is simply forgotten.
                    if flags & TCP_RST != 0 {
                        flow::remove_pair(&key, &*entry);
                        count(counters::DROP_BACKEND_DOWN);
                        return XDP_DROP;
                    }
                    count(counters::TX_RST_BACKEND_DOWN);
                    return reset::reply(ctx);
                }
                count(counters::DROP_BACKEND_DOWN);
                return XDP_DROP;
            } else {
                if let (L4::Tcp(tcp), Some(flags)) = (l4, tcp_flags)
                    && (*entry).synproxy != 0
                {
                    if (*entry).state == FLOW_STATE_SYNPROXY {
                        return synproxy::on_handshake(
                            ctx, eth, ip, tcp, &key, entry, flags, doff_bytes,
                        );
                    }
                    synproxy::translate(ctx, tcp, &*entry, flags, doff_bytes);
                }
                let refresh = flow::touch(&key, entry, tcp_flags, flow::now());
                count(counters::FLOW_HITS);
                account((*entry).service_id, (*entry).backend_id, frame_len);
                if first_fragment {
                    frag::record(ip, &key, l4_len, false);
                }
                nat::rewrite(ip, l4, &*entry);
                return fwd::forward_hit(ctx, eth, ip, entry, refresh);
            }
        }
    }

    // Classifier: is this a new flow to a service? Every VIP is a local address (the
    // controller writes it there before any service on it), so other hosts' packets
    // leave after one small lookup instead of two (docs/architecture.md, "Packet paths").
    if LOCAL_ADDRS.get_ptr(daddr).is_none() {
        count(counters::PASS_NOT_OURS);
        return XDP_PASS;
    }
    let service_key = ServiceKey {
        vip: daddr,
        port: dst_port,
        proto,
        _pad: 0,
    };
    // SAFETY: read-only copy of a map value.
    let Some(service) = (unsafe { SERVICES.get(service_key) }).copied() else {
        // The kernel reassembles for its own services: the later fragments follow.
        if first_fragment {
            // SAFETY: bounds-checked by ptr_at.
            unsafe { frag::record(ip, &key, l4_len, true) };
        }
        count(counters::PASS_LOCAL);
        return XDP_PASS;
    };
    // SYN+FIN and SYN+RST cannot open a connection: dropped before anything else looks
    // at them (a refused client's SYN+RST gets no RST, RFC 793), and no entry is made.
    if let Some(flags) = tcp_flags
        && flags & TCP_SYN != 0
        && flags & (TCP_FIN | TCP_RST) != 0
    {
        count(counters::DROP_TCP_BAD_FLAGS);
        account_service_drop(service.id);
        return XDP_DROP;
    }
    // A datagram without an entry at a VIP moving here may belong to a flow the
    // previous owner has and has not streamed yet: UDP has no handshake to tell a new
    // flow from an old one, so the previous owner judges them all (docs/scale-out.md,
    // "Forwarding to the previous owner").
    // SAFETY: headers bounds-checked above; nothing is used after a verdict.
    if tcp_flags.is_none()
        && let Some(verdict) = unsafe { tunnel::forward(ctx, daddr) }
    {
        return verdict;
    }
    // A SYN-proxied service (or one under automatic SYN cookies) answers SYNs with a
    // cookie and opens flows on the client's cookie-carrying ACK; after automatic
    // cookies switch off, such ACKs are still accepted for the cookies' lifetime
    // (docs/architecture.md, "SYN floods").
    let cookie_syn =
        is_syn && service.flags & (SERVICE_FLAG_SYN_PROXY | SERVICE_FLAG_SYN_COOKIES) != 0;
    let proxy_ack = service.flags & (SERVICE_FLAG_SYN_PROXY | SERVICE_FLAG_COOKIE_ACKS) != 0
        && matches!(tcp_flags, Some(flags) if flags & (TCP_SYN | TCP_RST | TCP_FIN | TCP_ACK) == TCP_ACK);
    if let Some(flags) = tcp_flags
        && !is_syn
        && !proxy_ack
    {
        return no_flow(ctx, &service, &key, flags);
    }
    // A packet that would open a flow must be intact: a corrupted SYN, cookie ACK or
    // first datagram makes no entry, gets no cookie and no answer (its source may be
    // wrong). Checked here, off the fast path (docs/architecture.md, "Checksums"). A
    // first fragment holds part of the segment its L4 checksum covers: only its IP
    // header can be checked.
    // SAFETY: IPv4 header (no options) and L4 header bounds-checked above.
    if let Some(counter) = unsafe { bad_checksum(ctx, ip, l4, !first_fragment) } {
        count(counter);
        account_service_drop(service.id);
        return XDP_DROP;
    }
    // Authorization comes before the SYN proxy: a refused client gets its refusal, never
    // a cookie, and an ACK from outside the allow-list spends no cookie check.
    if !eligibility::allowed(&service, key.src_ip) {
        account_service_denied(service.id);
        if tcp_flags.is_some() && service.flags & SERVICE_FLAG_AUTH_RST != 0 {
            count(counters::TX_RST_NOT_ELIGIBLE);
            return reset::reply(ctx);
        }
        count(counters::DROP_NOT_ELIGIBLE);
        return XDP_DROP;
    }
    if tcp_flags.is_some() && (cookie_syn || proxy_ack) {
        // The handshake handlers of the SYN proxy run as a program of their own, entered
        // by tail call, with the verifier's whole budget to themselves
        // (docs/architecture.md, "Programs").
        return stages::syn_proxy(ctx);
    }
    // A packet that would expire on its way to the backend opens nothing: checked here,
    // not only in egress, so that no flow entry outlives the dropped packet. It is
    // answered like a router would, so a traceroute to the VIP shows this hop. (The SYN
    // proxy answers SYNs itself and sends the server a SYN of its own.)
    // SAFETY: bounds-checked by ptr_at.
    if unsafe { (*ip).ttl } <= 1 {
        account_service_drop(service.id);
        if let Some(verdict) = icmp::time_exceeded(ctx) {
            count(counters::TX_ICMP_TIME_EXCEEDED);
            return verdict;
        }
        count(counters::DROP_TTL_EXPIRED);
        return XDP_DROP;
    }
    let init = FlowInit {
        state: if tcp_flags.is_some() {
            FLOW_STATE_SYN_SEEN
        } else {
            FLOW_STATE_UDP
        },
        seq_delta: 0,
        ts_delta: 0,
        synproxy: 0,
        wscales: 0,
        proxy_isn: 0,
    };
    // (Whatever verifies an L4 checksum on this path must skip a first fragment: the
    // checksum covers the whole datagram, most of which is still to come.)
    let Some(forward) = create_flow(&service, &key, &init) else {
        account_service_drop(service.id);
        return XDP_DROP;
    };
    count(counters::NEW_FLOWS);
    account_new_flow(forward.service_id, forward.backend_id);
    account(forward.service_id, forward.backend_id, frame_len);
    // SAFETY: headers bounds-checked above.
    unsafe {
        if first_fragment {
            frag::record(ip, &key, l4_len, false);
        }
        nat::rewrite(ip, l4, &forward);
        fwd::forward_new(ctx, eth, ip, forward.backend_id, forward.created_ns)
    }
}

/// The counter of the checksum a would-be new flow's packet fails, if any; the L4
/// checksum only with `whole_segment` (not for a first fragment).
///
/// # Safety
/// `ip` must point to a bounds-checked IPv4 header without options, followed by the
/// bounds-checked TCP or UDP header `l4` whose segment fits in the frame.
#[inline(always)]
unsafe fn bad_checksum(
    ctx: &XdpContext,
    ip: *const Ipv4Hdr,
    l4: L4,
    whole_segment: bool,
) -> Option<u32> {
    // SAFETY: guaranteed by the caller.
    unsafe {
        if !verify::ip_header_ok(ip) {
            return Some(counters::DROP_IP_BAD_CHECKSUM);
        }
        if whole_segment && !verify::segment_ok(ctx) {
            return Some(match l4 {
                L4::Tcp(_) => counters::DROP_TCP_BAD_CHECKSUM,
                L4::Udp(_) => counters::DROP_UDP_BAD_CHECKSUM,
            });
        }
    }
    None
}

/// A TCP segment to a service, without a flow entry, that cannot open one.
#[inline(always)]
pub(crate) fn no_flow(ctx: &XdpContext, service: &Service, key: &FlowKey, flags: u8) -> u32 {
    // At a VIP moving here, the previous owner may have the flow (docs/scale-out.md,
    // "Forwarding to the previous owner").
    // SAFETY: every caller bounds-checked the headers; nothing is used after a verdict.
    if let Some(verdict) = unsafe { tunnel::forward(ctx, key.dst_ip) } {
        return verdict;
    }
    account_service_drop(service.id);
    // A segment of a connection this balancer does not know (its flow expired, or
    // it belongs to another instance's) is answered only where the operator asked
    // for it: with shared flow state the flow may be a moment from being installed
    // here, and a RST would kill a live connection. A RST is never answered, and a
    // client outside the allow-list learns nothing from its probes.
    if service.flags & SERVICE_FLAG_NO_FLOW_RST != 0
        && flags & TCP_RST == 0
        && eligibility::allowed(service, key.src_ip)
    {
        count(counters::TX_RST_NO_FLOW);
        return reset::reply(ctx);
    }
    count(counters::DROP_NO_FLOW);
    XDP_DROP
}

/// Initial state and SYN-proxy fields of a new connection's entries.
pub struct FlowInit {
    pub state: u8,
    pub seq_delta: u32,
    pub ts_delta: u32,
    pub synproxy: u8,
    pub wscales: u8,
    pub proxy_isn: u32,
}

/// Creates both flow entries of a new connection, owned by this instance
/// (`Settings::node_id`), and returns the forward one. Counts the reason when it
/// cannot. Reports the new flow (`events`).
#[inline(always)]
fn create_flow(service: &Service, key: &FlowKey, init: &FlowInit) -> Option<FlowEntry> {
    if service.backend_count == 0 {
        count(counters::DROP_NO_BACKEND);
        return None;
    }
    let now = flow::now();
    let node_id = events::settings().0;
    let Some((backend_id, backend)) = session::pick_backend(service, key, now) else {
        count(counters::DROP_NO_BACKEND);
        return None;
    };
    let dnat = service.mode == MODE_DNAT;
    // Server → balancer: restore the VIP as source and the client as destination.
    let reverse = FlowEntry {
        new_src_ip: key.dst_ip,
        new_dst_ip: key.src_ip,
        new_src_port: key.dst_port,
        new_dst_port: key.src_port,
        service_id: service.id,
        backend_id,
        seq_delta: init.seq_delta,
        ts_delta: init.ts_delta,
        state: init.state,
        direction: FLOW_DIR_SERVER_TO_CLIENT,
        synproxy: init.synproxy,
        wscales: init.wscales,
        proxy_isn: init.proxy_isn,
        tx_ifindex: 0,
        created_ns: now,
        last_seen_ns: now,
        tx_dmac: [0; 6],
        tx_smac: [0; 6],
        owner: node_id,
        _pad: 0,
    };
    let mut reverse_key = FlowKey {
        src_ip: backend.ip,
        dst_ip: if dnat { key.src_ip } else { service.snat_ip },
        src_port: backend.port,
        dst_port: key.src_port,
        proto: key.proto,
        _pad: [0; 3],
    };
    let (new_src_ip, new_src_port) = if dnat {
        if FLOWS
            .insert(reverse_key, reverse, u64::from(BPF_NOEXIST))
            .is_err()
        {
            count(counters::DROP_FLOW_INSERT);
            return None;
        }
        (key.src_ip, key.src_port)
    } else {
        let Some(snat) = sched::insert_with_snat(service, key, &mut reverse_key, &reverse) else {
            count(counters::DROP_SNAT_EXHAUSTED);
            return None;
        };
        snat
    };
    let forward = FlowEntry {
        new_src_ip,
        new_dst_ip: backend.ip,
        new_src_port,
        new_dst_port: backend.port,
        direction: FLOW_DIR_CLIENT_TO_SERVER,
        ..reverse
    };
    if FLOWS.insert(key, forward, u64::from(BPF_ANY)).is_err() {
        let _ = FLOWS.remove(reverse_key);
        count(counters::DROP_FLOW_INSERT);
        return None;
    }
    events::report(lb_common::FLOW_EVENT_CREATED, key, &forward);
    Some(forward)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// bpf_fib_lookup is GPL-only; the program is dual licensed so it may call it.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
