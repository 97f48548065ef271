//! Incremental Internet checksum updates (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
//!
//! The one's complement sum does not depend on byte order as long as every word is
//! taken the same way, so fields are summed exactly as they sit in memory and the
//! result is stored back the same way: no byte swapping on the data path.

/// Running state of one incremental update: the complemented checksum plus the
/// complemented old and the new words.
#[derive(Clone, Copy)]
pub struct CsumDelta(u32);

impl CsumDelta {
    /// Starts from a checksum field as stored in the packet.
    #[inline(always)]
    pub fn from_check(check: u16) -> Self {
        CsumDelta(u32::from(!check))
    }

    /// A change tied to no checksum yet, to be applied to one later (`apply`): for
    /// the same words changing under several checksums.
    #[inline(always)]
    pub fn empty() -> Self {
        CsumDelta(0)
    }

    /// The checksum field value `check` (as stored) with this change applied.
    #[inline(always)]
    pub fn apply(self, check: u16) -> u16 {
        fold(self.0 + u32::from(!check))
    }

    #[inline(always)]
    pub fn replace16(self, old: u16, new: u16) -> Self {
        CsumDelta(self.0 + u32::from(!old) + u32::from(new))
    }

    #[inline(always)]
    pub fn replace32(self, old: u32, new: u32) -> Self {
        self.replace16(old as u16, new as u16)
            .replace16((old >> 16) as u16, (new >> 16) as u16)
    }

    /// Folds the sum into the final checksum field value.
    #[inline(always)]
    pub fn finish(self) -> u16 {
        fold(self.0)
    }
}

/// Folds a 32-bit one's complement sum into a checksum field value (complemented).
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// One's complement sum of `N` 16-bit words at `ptr`, taken as they sit in memory.
/// `N` is a constant so the verifier sees a bounded, unrolled loop.
///
/// # Safety
/// `ptr` must point to at least `2 * N` readable bytes (any alignment).
#[inline(always)]
pub unsafe fn sum_words<const N: usize>(ptr: *const u16) -> u32 {
    let mut sum = 0u32;
    for i in 0..N {
        // SAFETY: `i < N`, and the caller guarantees N words at ptr.
        sum += u32::from(unsafe { ptr.add(i).read_unaligned() });
    }
    sum
}

/// Sum of the IPv4 pseudo-header (RFC 793/768): addresses as they sit in the packet,
/// zero + protocol, and the length of the transport segment.
#[inline(always)]
pub fn pseudo_header(saddr: u32, daddr: u32, proto: u8, l4_len: u16) -> u32 {
    // A 32-bit field's two memory words sum the same as its two halves, whatever
    // the byte order.
    (saddr & 0xffff)
        + (saddr >> 16)
        + (daddr & 0xffff)
        + (daddr >> 16)
        + u32::from(u16::from(proto).to_be())
        + u32::from(l4_len.to_be())
}
