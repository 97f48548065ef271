//! SYN proxy (docs/architecture.md, "Packet paths"): the balancer answers a client's SYN
//! itself with a SYN cookie, opens the server side only for a client that returns a
//! valid cookie, and from then on shifts sequence numbers, SACK blocks and timestamps
//! between the two sequence spaces. A spoofed SYN costs one SYN-ACK and no table entry.
//!
//! The raw cookie helpers encode only the MSS, and the cookie check does not return it.
//! Like Linux, the balancer keeps the client's options in the low `TS_OPT_BITS` bits of
//! the TSval of its SYN-ACK (window shift, SACK permitted, MSS index); the client's ACK
//! echoes them in TSecr. A client without timestamps gets a SYN-ACK with only an MSS
//! option, and the server side is opened with MSS 536 and no other option (the options
//! cannot be recovered statelessly).

use aya_ebpf::{
    bindings::xdp_action::XDP_DROP,
    helpers::{
        bpf_ktime_get_ns,
        generated::{
            bpf_tcp_raw_check_syncookie_ipv4, bpf_tcp_raw_gen_syncookie_ipv4, bpf_xdp_adjust_tail,
            bpf_xdp_load_bytes,
        },
    },
    programs::XdpContext,
};
use lb_common::{
    FLOW_DIR_SERVER_TO_CLIENT, FLOW_STATE_ESTABLISHED, FLOW_STATE_SYNPROXY, FlowEntry, FlowKey,
    SERVICE_FLAG_SYN_PROXY, SYNPROXY_ACTIVE, SYNPROXY_MSS, SYNPROXY_TIMESTAMPS, SYNPROXY_WSCALE,
    SYNPROXY_WSCALE_OK, Service, counters,
};

use crate::{
    csum::{CsumDelta, fold, pseudo_header, sum_words},
    flow, fwd,
    maps::FLOWS,
    parse::{
        ETH_HDR_LEN, EthHdr, IPV4_HDR_LEN, Ipv4Hdr, L4_OFFSET, TCP_ACK, TCP_HDR_LEN, TCP_RST,
        TCP_SYN, TcpHdr, ptr_at,
    },
    stats::{account, account_new_flow, count},
    tcpopt::{
        self, MAX_WSCALE, OPT_MSS, OPT_SACK_PERM, OPT_TIMESTAMP, OPT_WSCALE, TCP_MAX_HDR_LEN,
        WSCALE_NONE,
    },
};

/// Low TSval bits carrying the client's options: 0-3 window shift (15: none), 4 SACK
/// permitted, 5-6 index into `MSS_TABLE`.
const TS_OPT_BITS: u32 = 7;
const TS_OPT_MASK: u32 = (1 << TS_OPT_BITS) - 1;
const TS_WSCALE_NONE: u32 = 0xf;
const TS_SACK: u32 = 1 << 4;
const TS_MSS_SHIFT: u32 = 5;
/// The MSS values the kernel's cookie encodes (net/ipv4/syncookies.c `msstab`).
const MSS_TABLE: [u16; 4] = [536, 1300, 1440, 1460];
/// MSS offered to the server when the client's is unknown (no timestamps): RFC 1122's
/// default, safe on any path.
const MSS_UNKNOWN: u16 = 536;
/// Receive window in the balancer's SYN-ACK (unscaled, as in any SYN).
const SYNACK_WINDOW: u16 = 65535;
/// How long the server side may take to answer; a client packet after that gets an RST.
pub const SERVER_TIMEOUT_NS: u64 = 3_000_000_000;
/// How long after the last SYN to the server a client segment is still taken as the
/// client's own retransmission; a later one sends the SYN again (the SYN or the
/// server's SYN-ACK was lost).
const SYN_RETRY_NS: u64 = 1_000_000_000;
const TTL: u8 = 64;

/// A TCP segment built on the stack: header and up to 20 bytes of options, every field
/// in network byte order. Unused option words stay zero, so they add nothing to the
/// checksum when it is summed over the whole struct.
#[repr(C)]
struct Segment {
    source: u16,
    dest: u16,
    seq: u32,
    ack_seq: u32,
    doff_res: u8,
    flags: u8,
    window: u16,
    check: u16,
    urg_ptr: u16,
    opts: [u32; 5],
    /// Number of option words used.
    opt_words: usize,
}

impl Segment {
    #[inline(always)]
    fn new(src_port: u16, dst_port: u16, seq: u32, ack: u32, flags: u8, window: u16) -> Self {
        Segment {
            source: src_port,
            dest: dst_port,
            seq: seq.to_be(),
            ack_seq: ack.to_be(),
            doff_res: 0,
            flags,
            window: window.to_be(),
            check: 0,
            urg_ptr: 0,
            opts: [0; 5],
            opt_words: 0,
        }
    }

    #[inline(always)]
    fn push(&mut self, word: u32) {
        if self.opt_words < 5 {
            self.opts[self.opt_words] = word.to_be();
            self.opt_words += 1;
        }
    }

    #[inline(always)]
    fn push_mss(&mut self, mss: u16) {
        self.push((u32::from(OPT_MSS) << 24) | (4 << 16) | u32::from(mss));
    }

    /// SACK permitted (or two NOPs) and the timestamp option: three words.
    #[inline(always)]
    fn push_timestamps(&mut self, sack_perm: bool, tsval: u32, tsecr: u32) {
        let head = if sack_perm {
            (u32::from(OPT_SACK_PERM) << 24) | (2 << 16)
        } else {
            0x0101 << 16
        };
        self.push(head | (u32::from(OPT_TIMESTAMP) << 8) | 10);
        self.push(tsval);
        self.push(tsecr);
    }

    #[inline(always)]
    fn push_wscale(&mut self, shift: u8) {
        self.push((1 << 24) | (u32::from(OPT_WSCALE) << 16) | (3 << 8) | u32::from(shift));
    }

    #[inline(always)]
    fn len(&self) -> usize {
        TCP_HDR_LEN + 4 * self.opt_words
    }
}

/// Replaces the packet with an IPv4/TCP segment `saddr → daddr` carrying `seg` and no
/// payload; checksums computed from scratch. Returns the new header pointers.
///
/// # Safety
/// Invalidates every packet pointer the caller holds.
#[inline(always)]
unsafe fn emit(
    ctx: &XdpContext,
    saddr: u32,
    daddr: u32,
    seg: &mut Segment,
) -> Option<(*mut EthHdr, *mut Ipv4Hdr)> {
    let tcp_len = seg.len();
    let new_len = L4_OFFSET + tcp_len;
    // The barrier keeps LLVM from folding this into arithmetic on data_end, which the
    // verifier refuses.
    let old_len = core::hint::black_box(ctx.data_end() - ctx.data());
    // SAFETY: adjust_tail only moves data_end; pointers are re-derived below.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, new_len as i32 - old_len as i32) } != 0 {
        return None;
    }
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HDR_LEN)?;
    let tcp = ptr_at::<TcpHdr>(ctx, L4_OFFSET)?;

    seg.doff_res = ((tcp_len / 4) as u8) << 4;
    seg.check = 0;
    let pseudo = pseudo_header(saddr, daddr, lb_common::IPPROTO_TCP, tcp_len as u16);
    // SAFETY: the header and all five option words are the first 40 bytes of the
    // `#[repr(C)]` Segment; unused option words are zero and do not change the sum.
    let words = unsafe { sum_words::<{ (TCP_HDR_LEN + 20) / 2 }>((&raw const *seg).cast()) };
    seg.check = fold(pseudo + words);

    let header = Ipv4Hdr {
        version_ihl: 0x45,
        tos: 0,
        tot_len: ((IPV4_HDR_LEN + tcp_len) as u16).to_be(),
        id: 0,
        frag_off: 0x4000u16.to_be(),
        ttl: TTL,
        protocol: lb_common::IPPROTO_TCP,
        check: 0,
        saddr,
        daddr,
    };
    // SAFETY: Ipv4Hdr is exactly IPV4_HDR_LEN bytes.
    let ip_check = fold(unsafe { sum_words::<{ IPV4_HDR_LEN / 2 }>((&raw const header).cast()) });
    // SAFETY: all three pointers are bounds-checked above.
    unsafe {
        *ip = Ipv4Hdr {
            check: ip_check,
            ..header
        };
        *tcp = TcpHdr {
            source: seg.source,
            dest: seg.dest,
            seq: seg.seq,
            ack_seq: seg.ack_seq,
            doff_res: seg.doff_res,
            flags: seg.flags,
            window: seg.window,
            check: seg.check,
            urg_ptr: 0,
        };
    }
    for i in 0..5 {
        if i >= seg.opt_words {
            break;
        }
        let word = ptr_at::<[u8; 4]>(ctx, L4_OFFSET + TCP_HDR_LEN + 4 * i)?;
        // SAFETY: bounds-checked by ptr_at.
        unsafe { *word = seg.opts[i].to_ne_bytes() };
    }
    Some((eth, ip))
}

/// Sends the packet back where it came from (the reply of an endpoint).
///
/// # Safety
/// `eth` must be bounds-checked.
#[inline(always)]
unsafe fn bounce(ctx: &XdpContext, eth: *mut EthHdr) -> u32 {
    // SAFETY: bounds-checked by the caller.
    unsafe {
        core::mem::swap(&mut (*eth).dst, &mut (*eth).src);
    }
    count(counters::TX);
    fwd::back_out(ctx)
}

#[inline(always)]
fn ts_now_ms() -> u32 {
    // SAFETY: helper without side effects.
    (unsafe { bpf_ktime_get_ns() } / 1_000_000) as u32
}

/// A client SYN to a SYN-proxied service: answer with a SYN-ACK whose sequence number
/// is the kernel's SYN cookie. Creates no state. The classifier has already dropped a
/// SYN with FIN or RST (`drop_tcp_bad_flags`).
///
/// # Safety
/// Headers up to the TCP header must be bounds-checked; all packet pointers are
/// invalid afterwards.
#[inline(always)]
pub unsafe fn on_syn(ctx: &XdpContext, key: &FlowKey, doff_bytes: usize) -> u32 {
    let opts = tcpopt::parse(ctx, doff_bytes);
    // The cookie helper reads `th_len` bytes of TCP header (th_len must equal the data
    // offset) and the verifier needs a constant bound on them. Copies of the headers on
    // the stack give it that without growing the frame: an skb-backed veth frame often
    // has no tailroom to grow into (a flood of bare SYNs was mostly dropped that way).
    let th_len = doff_bytes as u32;
    if !(TCP_HDR_LEN as u32..=TCP_MAX_HDR_LEN as u32).contains(&th_len) {
        count(counters::SYNPROXY_SYN_DROPPED);
        return XDP_DROP;
    }
    let mut ip_copy = [0u8; IPV4_HDR_LEN];
    // Header, then room for 16 option words: the verifier's bound on the masked length.
    let mut tcp_copy = [0u8; TCP_HDR_LEN + 64];
    let opt_words = th_len / 4 - 5;
    // SAFETY: the helper writes at most the given lengths into the stack buffers; the
    // main parser checked that doff_bytes bytes of TCP header are inside the packet.
    let loaded = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            ETH_HDR_LEN as u32,
            ip_copy.as_mut_ptr().cast(),
            IPV4_HDR_LEN as u32,
        ) == 0
            && bpf_xdp_load_bytes(
                ctx.ctx,
                L4_OFFSET as u32,
                tcp_copy.as_mut_ptr().cast(),
                TCP_HDR_LEN as u32,
            ) == 0
            && (opt_words == 0
                || bpf_xdp_load_bytes(
                    ctx.ctx,
                    (L4_OFFSET + TCP_HDR_LEN) as u32,
                    tcp_copy.as_mut_ptr().add(TCP_HDR_LEN).cast(),
                    // 1..=10 words; the mask changes nothing but bounds it for the verifier
                    // (behind black_box, so the compiler cannot prove it away).
                    ((core::hint::black_box(opt_words - 1) & 15) + 1) * 4,
                ) == 0)
    };
    if !loaded {
        count(counters::SYNPROXY_SYN_DROPPED);
        return XDP_DROP;
    }
    let client_seq = u32::from_ne_bytes([tcp_copy[4], tcp_copy[5], tcp_copy[6], tcp_copy[7]]);
    // SAFETY: both buffers hold the headers; the helper only reads th_len <= 60 bytes.
    let value = unsafe {
        bpf_tcp_raw_gen_syncookie_ipv4(
            ip_copy.as_mut_ptr().cast(),
            tcp_copy.as_mut_ptr().cast(),
            th_len,
        )
    };
    if value < 0 {
        count(counters::SYNPROXY_SYN_DROPPED);
        return XDP_DROP;
    }
    let cookie = value as u32;
    let mss = (value >> 32) as u16;

    let mut seg = Segment::new(
        key.dst_port,
        key.src_port,
        cookie,
        u32::from_be(client_seq).wrapping_add(1),
        TCP_SYN | TCP_ACK,
        SYNACK_WINDOW,
    );
    seg.push_mss(SYNPROXY_MSS);
    if opts.ts_off != 0 {
        let mut mss_index = 0;
        for (i, table_mss) in MSS_TABLE.iter().enumerate() {
            if *table_mss == mss {
                mss_index = i as u32;
            }
        }
        let wscale_bits = if opts.wscale == WSCALE_NONE {
            TS_WSCALE_NONE
        } else {
            u32::from(opts.wscale)
        };
        let encoded =
            wscale_bits | if opts.sack_perm { TS_SACK } else { 0 } | (mss_index << TS_MSS_SHIFT);
        let tsval = (ts_now_ms() & !TS_OPT_MASK) | encoded;
        seg.push_timestamps(opts.sack_perm, tsval, opts.tsval);
        if opts.wscale != WSCALE_NONE {
            seg.push_wscale(SYNPROXY_WSCALE);
        }
    }
    // SAFETY: every pointer is re-derived by emit.
    match unsafe { emit(ctx, key.dst_ip, key.src_ip, &mut seg) } {
        Some((eth, _)) => {
            count(counters::SYNPROXY_SYNACK_SENT);
            // SAFETY: bounds-checked by emit.
            unsafe { bounce(ctx, eth) }
        }
        None => {
            count(counters::SYNPROXY_SYN_DROPPED);
            XDP_DROP
        }
    }
}

/// The options the client offered in its SYN, as the TSval of the balancer's SYN-ACK
/// encodes them (`encoded`: its low `TS_OPT_BITS` bits, echoed in the client's TSecr).
/// Without timestamps nothing is known: no window scale, no SACK, `MSS_UNKNOWN`.
struct ClientOpts {
    timestamps: bool,
    /// `WSCALE_NONE` when the client did not offer window scaling.
    wscale: u8,
    sack_perm: bool,
    mss: u16,
}

impl ClientOpts {
    #[inline(always)]
    fn decode(timestamps: bool, encoded: u32) -> Self {
        let wscale = if timestamps && encoded & 0xf != TS_WSCALE_NONE {
            let shift = (encoded & 0xf) as u8;
            if shift > MAX_WSCALE {
                MAX_WSCALE
            } else {
                shift
            }
        } else {
            WSCALE_NONE
        };
        ClientOpts {
            timestamps,
            wscale,
            sack_perm: timestamps && encoded & TS_SACK != 0,
            mss: if timestamps {
                MSS_TABLE[((encoded >> TS_MSS_SHIFT) & 3) as usize]
            } else {
                MSS_UNKNOWN
            },
        }
    }
}

/// Turns the packet into the SYN that opens the server side of a proxied connection,
/// from `forward`'s rewritten addresses, and sends it: sequence number `client_isn`,
/// the client's options, its TSval `tsval`, and its `window` (in its scale) unscaled.
/// Both the first SYN (`on_ack`) and its retransmissions (`on_handshake`) are built
/// here, so they carry the same bytes. `None` when the frame has no room for it.
///
/// # Safety
/// Invalidates every packet pointer the caller holds.
#[inline(always)]
unsafe fn syn_to_server(
    ctx: &XdpContext,
    forward: &FlowEntry,
    client_isn: u32,
    client: &ClientOpts,
    tsval: u32,
    window: u16,
) -> Option<u32> {
    // The SYN window is unscaled: the client's window in bytes, capped.
    let syn_window = if client.wscale == WSCALE_NONE {
        window
    } else {
        let bytes = u32::from(window) << client.wscale;
        if bytes > 0xffff { 0xffff } else { bytes as u16 }
    };
    let mut seg = Segment::new(
        forward.new_src_port,
        forward.new_dst_port,
        client_isn,
        0,
        TCP_SYN,
        syn_window,
    );
    seg.push_mss(client.mss);
    if client.timestamps {
        seg.push_timestamps(client.sack_perm, tsval, 0);
    }
    if client.wscale != WSCALE_NONE {
        seg.push_wscale(client.wscale);
    }
    // SAFETY: every pointer is re-derived by emit.
    let (eth, ip) = unsafe { emit(ctx, forward.new_src_ip, forward.new_dst_ip, &mut seg) }?;
    // SAFETY: bounds-checked by emit.
    Some(unsafe { fwd::forward(ctx, eth, ip) })
}

/// A client ACK without a flow to a SYN-proxied service: if its cookie is valid, pick
/// the backend, create both flow entries in `FLOW_STATE_SYNPROXY` and turn the packet
/// into the SYN that opens the server side. Payload on that ACK is dropped; the client
/// retransmits it once the server side is up.
///
/// `None` (nothing done, the packet untouched) for an ACK without a valid cookie to a
/// service that is not a SYN proxy but only accepts cookie ACKs for a while
/// (`SERVICE_FLAG_COOKIE_ACKS`), or at a VIP in transition (`tunnel::would_forward`):
/// the caller treats it as any segment without a flow.
///
/// # Safety
/// `ip` and `tcp` must be bounds-checked; all packet pointers are invalid afterwards
/// unless `None` is returned.
#[inline(always)]
pub unsafe fn on_ack(
    ctx: &XdpContext,
    ip: *mut Ipv4Hdr,
    tcp: *mut TcpHdr,
    key: &FlowKey,
    service: &Service,
    doff_bytes: usize,
    frame_len: u64,
) -> Option<u32> {
    // SAFETY: both headers are bounds-checked (caller); the helper only reads them.
    if unsafe { bpf_tcp_raw_check_syncookie_ipv4(ip.cast(), tcp.cast()) } != 0 {
        // An ACK whose cookie is not ours, at a VIP moving here, may belong to a flow of
        // the previous owner: the caller forwards it (`no_flow`).
        if service.flags & SERVICE_FLAG_SYN_PROXY == 0
            || crate::tunnel::would_forward(ctx, key.dst_ip)
        {
            return None;
        }
        count(counters::SYNPROXY_COOKIE_INVALID);
        crate::stats::account_service_drop(service.id);
        return Some(XDP_DROP);
    }
    count(counters::SYNPROXY_COOKIE_VALID);
    // SAFETY: bounds-checked by the caller.
    let (seq, ack, window) = unsafe {
        (
            u32::from_be((*tcp).seq),
            u32::from_be((*tcp).ack_seq),
            u16::from_be((*tcp).window),
        )
    };
    let opts = tcpopt::parse(ctx, doff_bytes);
    // The options the client offered, as echoed back from our SYN-ACK's TSval.
    let timestamps = opts.ts_off != 0;
    let client = ClientOpts::decode(timestamps, opts.tsecr & TS_OPT_MASK);
    let client_wscale = client.wscale;
    let mut synproxy = SYNPROXY_ACTIVE;
    if timestamps {
        synproxy |= SYNPROXY_TIMESTAMPS;
    }
    if client_wscale != WSCALE_NONE {
        synproxy |= SYNPROXY_WSCALE_OK;
    }
    let init = crate::FlowInit {
        state: FLOW_STATE_SYNPROXY,
        seq_delta: ack.wrapping_sub(1),
        ts_delta: opts.tsecr,
        synproxy,
        wscales: if client_wscale == WSCALE_NONE {
            0
        } else {
            client_wscale
        },
        // The client's ISN until the server side is up, for a retransmitted SYN.
        proxy_isn: seq.wrapping_sub(1),
    };
    let Some(forward) = crate::create_flow(service, key, &init) else {
        crate::stats::account_service_drop(service.id);
        return Some(XDP_DROP);
    };
    count(counters::NEW_FLOWS);
    account_new_flow(forward.service_id, forward.backend_id);
    account(forward.service_id, forward.backend_id, frame_len);

    // SAFETY: no packet pointer is used afterwards.
    Some(
        match unsafe {
            syn_to_server(
                ctx,
                &forward,
                seq.wrapping_sub(1),
                &client,
                opts.tsval,
                window,
            )
        } {
            Some(verdict) => verdict,
            None => {
                // No room for the SYN: forget the pair, so that the client's next
                // segment (its cookie is still valid) opens the server side afresh.
                // Reported from the map's copy: this stage has no stack to spare.
                if let Some(created) = FLOWS.get_ptr(key) {
                    // SAFETY: map value valid for this run.
                    crate::events::report(lb_common::FLOW_EVENT_REMOVED, key, unsafe { &*created });
                }
                flow::remove_unannounced(key, &forward);
                count(counters::SYNPROXY_SERVER_FAILED);
                XDP_DROP
            }
        },
    )
}

/// A packet that hit a proxied connection still opening its server side.
///
/// Server → client: a SYN-ACK fixes the deltas, is answered with the ACK that completes
/// the server handshake and moves the pair to `established`; an RST is passed to the
/// client with the sequence number it expects and ends the pair; anything else is
/// dropped. Client → server: dropped for retransmission (`synproxy_client_early`) while
/// the server has `SERVER_TIMEOUT_NS` to answer, except that a segment more than
/// `SYN_RETRY_NS` after the last SYN is turned into that SYN again
/// (`synproxy_syn_retransmitted`); after `SERVER_TIMEOUT_NS` it is answered with an RST
/// that ends the pair; a client RST ends the pair.
///
/// # Safety
/// `entry` must come from a `FLOWS` lookup of `key` in this run; `eth`, `ip` and `tcp`
/// must be bounds-checked. All packet pointers are invalid afterwards.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub unsafe fn on_handshake(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    ip: *mut Ipv4Hdr,
    tcp: *mut TcpHdr,
    key: &FlowKey,
    entry: *mut FlowEntry,
    flags: u8,
    doff_bytes: usize,
) -> u32 {
    // SAFETY: map value valid for this run; headers bounds-checked (caller).
    unsafe {
        let current = *entry;
        let (seq, ack) = (u32::from_be((*tcp).seq), u32::from_be((*tcp).ack_seq));
        let window = u16::from_be((*tcp).window);
        // One parse for both directions (a second copy of the parser's loop costs the
        // verifier too much).
        let opts = tcpopt::parse(ctx, doff_bytes);
        if current.direction == FLOW_DIR_SERVER_TO_CLIENT {
            if flags & TCP_RST != 0 {
                // Refused: tell the client, in its sequence space.
                (*tcp).check = CsumDelta::from_check((*tcp).check)
                    .replace32((*tcp).seq, current.seq_delta.wrapping_add(1).to_be())
                    .finish();
                (*tcp).seq = current.seq_delta.wrapping_add(1).to_be();
                flow::remove_pair(key, &current);
                count(counters::SYNPROXY_SERVER_FAILED);
                crate::nat::rewrite(ip, crate::nat::L4::Tcp(tcp), &current);
                return fwd::forward(ctx, eth, ip);
            }
            if flags & (TCP_SYN | TCP_ACK) != (TCP_SYN | TCP_ACK) {
                count(counters::SYNPROXY_CLIENT_EARLY);
                return XDP_DROP;
            }
            let seq_delta = current.seq_delta.wrapping_sub(seq);
            let mut synproxy = current.synproxy;
            let mut ts_delta = 0;
            if synproxy & SYNPROXY_TIMESTAMPS != 0 && opts.ts_off != 0 {
                ts_delta = current.ts_delta.wrapping_sub(opts.tsval);
            } else {
                synproxy &= !SYNPROXY_TIMESTAMPS;
            }
            let server_wscale = if opts.wscale == WSCALE_NONE {
                0
            } else {
                opts.wscale
            };
            let client_wscale = current.wscales & 0xf;
            let wscales = client_wscale | (server_wscale << 4);
            let now = flow::now();
            for e in [
                entry,
                FLOWS
                    .get_ptr_mut(current.peer_key(key.proto))
                    .unwrap_or(entry),
            ] {
                // The cookie, for `lb flows`, in place of the client's ISN.
                (*e).proxy_isn = current.seq_delta;
                (*e).seq_delta = seq_delta;
                (*e).ts_delta = ts_delta;
                (*e).synproxy = synproxy;
                (*e).wscales = wscales;
                (*e).state = FLOW_STATE_ESTABLISHED;
                (*e).last_seen_ns = now;
            }
            crate::events::report(lb_common::FLOW_EVENT_CHANGED, key, &*entry);
            count(counters::SYNPROXY_SERVER_DONE);
            // The ACK completing the server handshake, from the client's (rewritten)
            // address. Its window: 64 KiB in the client's scale until the client's next
            // segment tells the server the real one.
            let window = if synproxy & SYNPROXY_WSCALE_OK != 0 {
                (0xffffu32 >> client_wscale) as u16
            } else {
                0xffff
            };
            let mut seg = Segment::new(
                key.dst_port,
                key.src_port,
                ack,
                seq.wrapping_add(1),
                TCP_ACK,
                window,
            );
            if synproxy & SYNPROXY_TIMESTAMPS != 0 {
                seg.push_timestamps(false, opts.tsecr, opts.tsval);
            }
            return match emit(ctx, key.dst_ip, key.src_ip, &mut seg) {
                Some((eth, _)) => bounce(ctx, eth),
                None => XDP_DROP,
            };
        }

        if flags & TCP_RST != 0 {
            flow::remove_pair(key, &current);
            count(counters::SYNPROXY_CLIENT_EARLY);
            return XDP_DROP;
        }
        let now = flow::now();
        if now.wrapping_sub(current.created_ns) <= SERVER_TIMEOUT_NS {
            // The last SYN (its time in last_seen_ns, which nothing else writes while
            // the server side opens) is still young: the client is only retransmitting.
            if now.wrapping_sub(current.last_seen_ns) <= SYN_RETRY_NS {
                count(counters::SYNPROXY_CLIENT_EARLY);
                return XDP_DROP;
            }
            // The SYN or the server's SYN-ACK was lost: send the SYN again, with the
            // options the client's TSecr still echoes from the balancer's SYN-ACK.
            let client = ClientOpts::decode(
                current.synproxy & SYNPROXY_TIMESTAMPS != 0,
                current.ts_delta & TS_OPT_MASK,
            );
            (*entry).last_seen_ns = now;
            return match syn_to_server(
                ctx,
                &current,
                current.proxy_isn,
                &client,
                opts.tsval,
                window,
            ) {
                Some(verdict) => {
                    count(counters::SYNPROXY_SYN_RETRANSMITTED);
                    verdict
                }
                None => {
                    count(counters::SYNPROXY_CLIENT_EARLY);
                    XDP_DROP
                }
            };
        }
        // The server never answered: reset the client, forget the pair.
        flow::remove_pair(key, &current);
        count(counters::SYNPROXY_SERVER_FAILED);
        let mut seg = Segment::new(key.dst_port, key.src_port, ack, 0, TCP_RST, 0);
        match emit(ctx, key.dst_ip, key.src_ip, &mut seg) {
            Some((eth, _)) => bounce(ctx, eth),
            None => XDP_DROP,
        }
    }
}

/// Shifts a proxied connection's packet between the two sequence spaces; checksums
/// patched incrementally. Server → client: SEQ and TSval forward, window rescaled to
/// the shift the client was told. Client → server: ACK, SACK blocks and TSecr back.
///
/// # Safety
/// `tcp` must be the bounds-checked TCP header of the packet in `ctx`.
#[inline(always)]
pub unsafe fn translate(
    ctx: &XdpContext,
    tcp: *mut TcpHdr,
    entry: &FlowEntry,
    flags: u8,
    doff_bytes: usize,
) {
    let opts = tcpopt::parse(ctx, doff_bytes);
    // SAFETY: bounds-checked by the caller.
    unsafe {
        if entry.direction == FLOW_DIR_SERVER_TO_CLIENT {
            tcpopt::add_u32(ctx, tcp, 4, entry.seq_delta);
            if entry.synproxy & SYNPROXY_TIMESTAMPS != 0 && opts.ts_off != 0 {
                tcpopt::add_u32(ctx, tcp, opts.ts_off, entry.ts_delta);
            }
            if entry.synproxy & SYNPROXY_WSCALE_OK != 0 && flags & TCP_SYN == 0 {
                let bytes = u32::from(u16::from_be((*tcp).window)) << (entry.wscales >> 4);
                let scaled = bytes >> SYNPROXY_WSCALE;
                let window = (if scaled > 0xffff { 0xffff } else { scaled } as u16).to_be();
                (*tcp).check = CsumDelta::from_check((*tcp).check)
                    .replace16((*tcp).window, window)
                    .finish();
                (*tcp).window = window;
            }
        } else {
            let back = entry.seq_delta.wrapping_neg();
            if flags & TCP_ACK != 0 {
                tcpopt::add_u32(ctx, tcp, 8, back);
            }
            for i in 0..4 {
                if i >= opts.sack_blocks || opts.sack_off == 0 {
                    break;
                }
                let block = (opts.sack_off + 8 * i) & 0x3f;
                tcpopt::add_u32(ctx, tcp, block, back);
                tcpopt::add_u32(ctx, tcp, (block + 4) & 0x3f, back);
            }
            if entry.synproxy & SYNPROXY_TIMESTAMPS != 0 && opts.ts_off != 0 {
                tcpopt::add_u32(ctx, tcp, opts.ts_off + 4, entry.ts_delta.wrapping_neg());
            }
        }
    }
}
