//! Checksum verification of packets that would open a flow (docs/architecture.md,
//! "Checksums").
//!
//! Only the new-flow path calls this: a flow hit is forwarded with incremental updates,
//! which carry a wrong checksum through unchanged for the endpoint to reject, so only a
//! packet that would make entries needs its checksums checked. The IPv4 header and the
//! transport segment are separate calls so that a path that cannot verify the segment
//! (a first fragment: its checksum covers the whole datagram) checks the header only.

use aya_ebpf::{helpers::bpf_csum_diff, programs::XdpContext};
use lb_common::IPPROTO_UDP;

use crate::{
    csum::{fold, pseudo_header, sum_words},
    parse::{ETH_HDR_LEN, IPV4_HDR_LEN, Ipv4Hdr, L4_OFFSET, UDP_HDR_LEN, UdpHdr},
};

/// Largest block `bpf_csum_diff` sums in one call.
const BLOCK: usize = 512;
/// Blocks a segment may have: a linear XDP frame of a 9000-byte MTU fits; a longer
/// segment cannot be summed and opens nothing.
const MAX_BLOCKS: usize = 18;

/// Whether the IPv4 header (no options: refused before) sums to zero.
///
/// # Safety
/// `ip` must point to a bounds-checked IPv4 header of `IPV4_HDR_LEN` bytes.
#[inline(always)]
pub unsafe fn ip_header_ok(ip: *const Ipv4Hdr) -> bool {
    // SAFETY: the caller guarantees the 20 header bytes.
    fold(unsafe { sum_words::<{ IPV4_HDR_LEN / 2 }>(ip.cast()) }) == 0
}

/// Whether the transport segment sums to zero with its pseudo-header, checksum field
/// included. A UDP checksum of 0 means "none" (RFC 768) and is accepted.
///
/// The caller has checked the headers; this re-reads what it needs from the packet.
#[inline(always)]
pub fn segment_ok(ctx: &XdpContext) -> bool {
    segment_check(ctx.data(), ctx.data_end()) != 0
}

/// `segment_ok` as a BPF subprogram of its own, on the packet's `data..end`. The sum's
/// branches narrow the length differently on each path; inside a call frame, with the
/// length read afresh from the packet, that narrowing ends at the return, and the
/// verifier does not walk the rest of the new-flow path once per length class. (The
/// bounds are passed as addresses, not the context, so that the compiler cannot hand
/// the subprogram 32-bit context fields to widen: the verifier forbids arithmetic on
/// the end pointer.)
#[inline(never)]
fn segment_check(data: usize, end: usize) -> u32 {
    if data + L4_OFFSET + UDP_HDR_LEN > end {
        return 0;
    }
    let ip = (data + ETH_HDR_LEN) as *const Ipv4Hdr;
    // SAFETY: bounds-checked just above (the IPv4 header ends before L4_OFFSET).
    let (tot_len, saddr, daddr, proto) =
        unsafe { ((*ip).tot_len, (*ip).saddr, (*ip).daddr, (*ip).protocol) };
    let Some(l4_len) = (u16::from_be(tot_len) as usize).checked_sub(IPV4_HDR_LEN) else {
        return 0;
    };
    if proto == IPPROTO_UDP {
        let udp = (data + L4_OFFSET) as *const UdpHdr;
        // SAFETY: bounds-checked above: the UDP header ends at L4_OFFSET + 8.
        if unsafe { (*udp).check } == 0 {
            return 1;
        }
    }
    let Some(sum) = sum_packet(data + L4_OFFSET, end, l4_len) else {
        return 0;
    };
    let total = sum + u64::from(pseudo_header(saddr, daddr, proto, l4_len as u16));
    u32::from(fold(fold_to_32(total)) == 0)
}

/// One's complement sum, in memory order, of the `len` packet bytes from `start`
/// (an odd last byte padded with a zero byte); `None` if they are not all in the packet
/// or there are more than `MAX_BLOCKS` blocks.
///
/// Blocks of 512 bytes, then one block of each power of two from 256 down to 4 that
/// the rest needs, then 2 and 1 bytes: every `bpf_csum_diff` size is a constant, each
/// preceded by its own bounds check, which is what the verifier accepts. Each smaller
/// block's offset is computed from the length (the bits above its size) rather than
/// advanced along, so that taking a block or not leaves the same state behind and the
/// verifier walks the blocks once, not once per combination.
#[inline(always)]
fn sum_packet(start: usize, end: usize, len: usize) -> Option<u64> {
    if len >= (MAX_BLOCKS + 1) * BLOCK {
        return None;
    }
    let mut sum = 0u64;
    for i in 0..MAX_BLOCKS {
        if (i + 1) * BLOCK > len {
            break;
        }
        sum += block::<BLOCK>(start + i * BLOCK, end)?;
    }
    macro_rules! power {
        ($($size:literal),*) => {$(
            if len & $size != 0 {
                sum += block::<$size>(start + (len & !(2 * $size - 1)), end)?;
            }
        )*};
    }
    power!(256, 128, 64, 32, 16, 8, 4);
    if len & 2 != 0 {
        let ptr = start + (len & !3);
        if ptr + 2 > end {
            return None;
        }
        // SAFETY: bounds-checked just above.
        sum += u64::from(unsafe { (ptr as *const u16).read_unaligned() });
    }
    if len & 1 != 0 {
        let ptr = start + (len & !1);
        if ptr + 1 > end {
            return None;
        }
        // SAFETY: bounds-checked just above.
        let byte = unsafe { *(ptr as *const u8) };
        sum += u64::from(u16::from_ne_bytes([byte, 0]));
    }
    Some(sum)
}

/// Sum of the `N` packet bytes at `ptr` (`N` a multiple of 4, at most 512).
#[inline(always)]
fn block<const N: usize>(ptr: usize, end: usize) -> Option<u64> {
    if ptr + N > end {
        return None;
    }
    // SAFETY: the N bytes are inside the packet; bpf_csum_diff only reads them.
    let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, ptr as *mut u32, N as u32, 0) };
    // Only a size the helper refuses gives a negative value; N is one it takes.
    if sum < 0 {
        return None;
    }
    Some(sum as u64 & 0xffff_ffff)
}

/// Folds a 64-bit one's complement sum to 32 bits.
#[inline(always)]
fn fold_to_32(sum: u64) -> u32 {
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    ((sum & 0xffff_ffff) + (sum >> 32)) as u32
}
