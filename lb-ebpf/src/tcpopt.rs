//! TCP options: parsing the few the SYN proxy needs (MSS, window scale, SACK, SACK
//! permitted, timestamps) and rewriting 32-bit option fields in place with an
//! incremental checksum update.

use aya_ebpf::programs::XdpContext;

use crate::{
    csum::CsumDelta,
    maps::OPT_SCRATCH,
    parse::{L4_OFFSET, TCP_HDR_LEN, TcpHdr, ptr_at},
};

const OPT_EOL: u8 = 0;
const OPT_NOP: u8 = 1;
pub const OPT_MSS: u8 = 2;
pub const OPT_WSCALE: u8 = 3;
pub const OPT_SACK_PERM: u8 = 4;
const OPT_SACK: u8 = 5;
pub const OPT_TIMESTAMP: u8 = 8;

/// Largest TCP header (data offset 15).
pub const TCP_MAX_HDR_LEN: usize = 60;
/// Largest window shift RFC 7323 allows; larger values are treated as 14.
pub const MAX_WSCALE: u8 = 14;
/// "No window scale option".
pub const WSCALE_NONE: u8 = 0xff;
/// Steps of the option walk (the verifier explores each): real stacks send at most
/// about eight option entries (NOPs included); options beyond the 12th are ignored.
const MAX_OPTION_STEPS: usize = 12;

/// What the options of one segment say. Offsets are from the start of the TCP header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TcpOpts {
    /// 0: no MSS option.
    pub mss: u16,
    /// `WSCALE_NONE` or 0..=14.
    pub wscale: u8,
    pub sack_perm: bool,
    /// Offset of TSval (TSecr follows), 0 without a timestamp option.
    pub ts_off: usize,
    pub tsval: u32,
    pub tsecr: u32,
    /// Offset of the first SACK block, 0 without SACK blocks.
    pub sack_off: usize,
    pub sack_blocks: usize,
}

#[inline(always)]
fn read_u8(ctx: &XdpContext, off: usize) -> Option<u8> {
    // SAFETY: bounds-checked by ptr_at.
    ptr_at::<u8>(ctx, L4_OFFSET + off).map(|p| unsafe { *p })
}

/// Reads a big-endian u32 at `off` bytes into the TCP header (any alignment).
#[inline(always)]
pub fn read_u32(ctx: &XdpContext, off: usize) -> Option<u32> {
    // SAFETY: bounds-checked by ptr_at; [u8; 4] has alignment 1.
    ptr_at::<[u8; 4]>(ctx, L4_OFFSET + off).map(|p| u32::from_be_bytes(unsafe { *p }))
}

/// Parses the options of a TCP header `doff_bytes` long. Malformed options end the
/// walk: what was found before them still counts, nothing after them does.
///
/// The walk writes into a per-CPU scratch value and the result is read back from it:
/// values read from a map are unknown to the verifier, so the many paths through the
/// walk all continue as one state instead of multiplying the rest of the program.
#[inline(always)]
pub fn parse(ctx: &XdpContext, doff_bytes: usize) -> TcpOpts {
    let mut result = TcpOpts {
        mss: 0,
        wscale: WSCALE_NONE,
        sack_perm: false,
        ts_off: 0,
        tsval: 0,
        tsecr: 0,
        sack_off: 0,
        sack_blocks: 0,
    };
    let Some(opts) = OPT_SCRATCH.get_ptr_mut(0) else {
        return result;
    };
    // SAFETY: per-CPU scratch value, valid for this run and used by this CPU only.
    unsafe {
        *opts = result;
        let mut off = TCP_HDR_LEN;
        for _ in 0..MAX_OPTION_STEPS {
            if off >= doff_bytes || off >= TCP_MAX_HDR_LEN {
                break;
            }
            let Some(kind) = read_u8(ctx, off) else { break };
            if kind == OPT_EOL {
                break;
            }
            if kind == OPT_NOP {
                off += 1;
                continue;
            }
            let Some(len) = read_u8(ctx, off + 1) else {
                break;
            };
            let len = len as usize;
            if len < 2 || off + len > doff_bytes {
                break;
            }
            match (kind, len) {
                (OPT_MSS, 4) => {
                    if let Some(p) = ptr_at::<[u8; 2]>(ctx, L4_OFFSET + off + 2) {
                        (*opts).mss = u16::from_be_bytes(*p);
                    }
                }
                (OPT_WSCALE, 3) => {
                    if let Some(shift) = read_u8(ctx, off + 2) {
                        (*opts).wscale = if shift > MAX_WSCALE {
                            MAX_WSCALE
                        } else {
                            shift
                        };
                    }
                }
                (OPT_SACK_PERM, 2) => (*opts).sack_perm = true,
                (OPT_TIMESTAMP, 10) => {
                    if let (Some(tsval), Some(tsecr)) =
                        (read_u32(ctx, off + 2), read_u32(ctx, off + 6))
                    {
                        (*opts).ts_off = off + 2;
                        (*opts).tsval = tsval;
                        (*opts).tsecr = tsecr;
                    }
                }
                (OPT_SACK, _) if len >= 10 && (len - 2) & 7 == 0 => {
                    (*opts).sack_off = off + 2;
                    (*opts).sack_blocks = (len - 2) / 8;
                }
                _ => {}
            }
            off += len;
        }
        result = core::ptr::read_volatile(opts);
    }
    // Offsets come back unknown to the verifier: bound them for packet arithmetic.
    result.ts_off &= 0x3f;
    result.sack_off &= 0x3f;
    result.sack_blocks &= 0x7;
    result
}

/// Adds `delta` to the big-endian u32 at `off` bytes into the TCP header and patches
/// the TCP checksum. A field at an odd offset straddles checksum words, so its
/// contribution is the value rotated by one byte.
///
/// # Safety
/// `tcp` must point at the bounds-checked TCP header of the packet in `ctx`.
#[inline(always)]
pub unsafe fn add_u32(ctx: &XdpContext, tcp: *mut TcpHdr, off: usize, delta: u32) {
    let Some(field) = ptr_at::<[u8; 4]>(ctx, L4_OFFSET + off) else {
        return;
    };
    // SAFETY: bounds-checked by ptr_at; the caller vouches for `tcp`.
    unsafe {
        let old = *field;
        let new = u32::from_be_bytes(old).wrapping_add(delta).to_be_bytes();
        *field = new;
        let (mut old_word, mut new_word) = (u32::from_ne_bytes(old), u32::from_ne_bytes(new));
        if off & 1 == 1 {
            old_word = old_word.rotate_right(8);
            new_word = new_word.rotate_right(8);
        }
        (*tcp).check = CsumDelta::from_check((*tcp).check)
            .replace32(old_word, new_word)
            .finish();
    }
}
