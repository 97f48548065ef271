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

// Shared with the production program; only the layouts are used here.
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
    BENCH_PACKET_MAX, BENCH_PORT_BASE, BENCH_PORTS_PER_ADDR, BenchPacket, IPPROTO_TCP,
};

use crate::parse::{ETH_HDR_LEN, ETH_P_IP_WIRE, EthHdr, Ipv4Hdr, L4_OFFSET, TcpHdr, ptr_at};

#[map]
static BENCH_TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[map]
static BENCH_PACKET: Array<BenchPacket> = Array::with_max_entries(1, 0);

#[map]
static BENCH_SEQUENCE: Array<u32> = Array::with_max_entries(1, 0);

/// Offsets of the IPv4 source address and the L4 source port in an option-less frame.
const SADDR_OFFSET: u32 = 26;
const SPORT_OFFSET: u32 = 34;

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
    // SAFETY: `len` is within the map value's byte array; the helper checks the packet.
    let stored = unsafe { bpf_xdp_store_bytes(ctx.ctx, 0, packet.bytes.as_mut_ptr().cast(), len) };
    if stored != 0 {
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
        let mut saddr = packet
            .src_base
            .wrapping_add(j / BENCH_PORTS_PER_ADDR)
            .to_be();
        let mut sport = ((BENCH_PORT_BASE + j % BENCH_PORTS_PER_ADDR) as u16).to_be();
        // SAFETY: stack buffers of the given sizes.
        let written = unsafe {
            bpf_xdp_store_bytes(ctx.ctx, SADDR_OFFSET, (&raw mut saddr).cast(), 4)
                | bpf_xdp_store_bytes(ctx.ctx, SPORT_OFFSET, (&raw mut sport).cast(), 2)
        };
        if written != 0 {
            return XDP_ABORTED;
        }
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
