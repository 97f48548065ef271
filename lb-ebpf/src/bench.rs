//! Kernel-side helpers of `cargo xtask bench`, a separate object from the production
//! program:
//!
//! - `bench_wrapper` restores the packet from `BENCH_PACKET` (with `repeat > 1` the
//!   kernel would otherwise hand each repeat the buffer the previous one rewrote),
//!   optionally makes it a new flow, and tail-calls the program under test;
//! - `bench_floor` is the cheapest useful XDP program: parse Ethernet/IPv4/TCP with
//!   bounds checks, swap the MAC addresses, `XDP_TX`. Paths are reported as multiples of it;
//! - `bench_null` returns `XDP_TX`: wrapper → null measures the wrapper's own cost.
#![no_std]
#![no_main]

// Shared with the production program; only the layouts and the checksum update are
// used here.
#[allow(dead_code)]
mod csum;
#[allow(dead_code, unused_imports)]
mod parse;

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX},
    helpers::generated::bpf_xdp_store_bytes,
    macros::{map, xdp},
    maps::{Array, ProgramArray},
    programs::XdpContext,
};
use lb_common::{
    BENCH_PACKET_MAX, BENCH_PORT_BASE, BENCH_PORTS_PER_ADDR, BenchPacket, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::{
    csum::CsumDelta,
    parse::{ETH_HDR_LEN, ETH_P_IP_WIRE, EthHdr, Ipv4Hdr, L4_OFFSET, TcpHdr, ptr_at},
};

#[map]
static BENCH_TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[map]
static BENCH_PACKET: Array<BenchPacket> = Array::with_max_entries(1, 0);

#[map]
static BENCH_SEQUENCE: Array<u32> = Array::with_max_entries(1, 0);

/// Offsets in an option-less frame: IPv4 protocol, header checksum and source address,
/// L4 source port, TCP and UDP checksums.
const PROTO_OFFSET: usize = 23;
const IP_CHECK_OFFSET: usize = 24;
const SADDR_OFFSET: usize = 26;
const SPORT_OFFSET: usize = L4_OFFSET;
const TCP_CHECK_OFFSET: usize = L4_OFFSET + 16;
const UDP_CHECK_OFFSET: usize = L4_OFFSET + 6;

/// A 16-bit field of the stored bytes, as it sits in memory.
#[inline(always)]
fn word(bytes: &[u8; BENCH_PACKET_MAX], at: usize) -> u16 {
    u16::from_ne_bytes([bytes[at], bytes[at + 1]])
}

#[inline(always)]
fn set_word(bytes: &mut [u8; BENCH_PACKET_MAX], at: usize, value: u16) {
    let [a, b] = value.to_ne_bytes();
    bytes[at] = a;
    bytes[at + 1] = b;
}

/// Makes the stored packet flow `j`: its source address and port, with the IPv4 and
/// TCP/UDP checksums updated, so the packet stays valid for a balancer that verifies
/// checksums on its new-flow path. Done in the map value before the one restore, so a
/// new flow costs no extra packet writes.
#[inline(always)]
fn vary_source(packet: &mut BenchPacket, j: u32) {
    let bytes = &mut packet.bytes;
    let old_saddr = u32::from_ne_bytes([
        bytes[SADDR_OFFSET],
        bytes[SADDR_OFFSET + 1],
        bytes[SADDR_OFFSET + 2],
        bytes[SADDR_OFFSET + 3],
    ]);
    let old_sport = word(bytes, SPORT_OFFSET);
    let saddr = packet
        .src_base
        .wrapping_add(j / BENCH_PORTS_PER_ADDR)
        .to_be();
    let sport = ((BENCH_PORT_BASE + j % BENCH_PORTS_PER_ADDR) as u16).to_be();
    let ip_check = CsumDelta::from_check(word(bytes, IP_CHECK_OFFSET))
        .replace32(old_saddr, saddr)
        .finish();
    set_word(bytes, IP_CHECK_OFFSET, ip_check);
    let l4_check_at = match bytes[PROTO_OFFSET] {
        IPPROTO_TCP => Some(TCP_CHECK_OFFSET),
        IPPROTO_UDP if word(bytes, UDP_CHECK_OFFSET) != 0 => Some(UDP_CHECK_OFFSET),
        _ => None,
    };
    if let Some(at) = l4_check_at {
        let check = CsumDelta::from_check(word(bytes, at))
            .replace32(old_saddr, saddr)
            .replace16(old_sport, sport)
            .finish();
        // A computed UDP zero is sent as all ones (RFC 768).
        let check = if check == 0 && at == UDP_CHECK_OFFSET {
            0xffff
        } else {
            check
        };
        set_word(bytes, at, check);
    }
    let [a, b, c, d] = saddr.to_ne_bytes();
    bytes[SADDR_OFFSET..SADDR_OFFSET + 4].copy_from_slice(&[a, b, c, d]);
    set_word(bytes, SPORT_OFFSET, sport);
}

#[xdp]
pub fn bench_wrapper(ctx: XdpContext) -> u32 {
    // SAFETY: map pointers come from successful lookups; the helper bounds-checks writes.
    unsafe { wrap(&ctx) }
}

#[inline(always)]
unsafe fn wrap(ctx: &XdpContext) -> u32 {
    let Some(packet) = BENCH_PACKET.get_ptr_mut(0) else {
        return XDP_ABORTED;
    };
    // SAFETY: valid map value pointer.
    let packet = unsafe { &mut *packet };
    let len = packet.len;
    if len == 0 || len > BENCH_PACKET_MAX as u32 {
        return XDP_ABORTED;
    }
    // Read once: a second load could see another value, and the compiler would then
    // keep a division-by-zero panic path the verifier refuses.
    let vary = packet.vary_count;
    if vary != 0 {
        let Some(sequence) = BENCH_SEQUENCE.get_ptr_mut(0) else {
            return XDP_ABORTED;
        };
        // SAFETY: valid map value pointer; test_run runs all repeats on one CPU.
        let j = unsafe {
            let j = *sequence % vary;
            *sequence = (*sequence).wrapping_add(1);
            j
        };
        vary_source(packet, j);
    }
    // SAFETY: `len` is within the map value's byte array; the helper checks the packet.
    let stored = unsafe { bpf_xdp_store_bytes(ctx.ctx, 0, packet.bytes.as_mut_ptr().cast(), len) };
    if stored != 0 {
        return XDP_ABORTED;
    }
    // SAFETY: slot 0 holds the program under test; on success this does not return.
    unsafe { BENCH_TARGET.tail_call(ctx, 0) };
    XDP_ABORTED
}

#[xdp]
pub fn bench_floor(ctx: XdpContext) -> u32 {
    let Some(eth) = ptr_at::<EthHdr>(&ctx, 0) else {
        return XDP_DROP;
    };
    // SAFETY: every pointer below is bounds-checked by ptr_at.
    unsafe {
        if (*eth).ether_type != ETH_P_IP_WIRE {
            return XDP_PASS;
        }
        let Some(ip) = ptr_at::<Ipv4Hdr>(&ctx, ETH_HDR_LEN) else {
            return XDP_DROP;
        };
        if (*ip).version_ihl != 0x45 || (*ip).protocol != IPPROTO_TCP {
            return XDP_PASS;
        }
        if ptr_at::<TcpHdr>(&ctx, L4_OFFSET).is_none() {
            return XDP_DROP;
        }
        core::mem::swap(&mut (*eth).dst, &mut (*eth).src);
    }
    XDP_TX
}

#[xdp]
pub fn bench_null(_ctx: XdpContext) -> u32 {
    XDP_TX
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
