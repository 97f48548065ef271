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
        let mut sum = self.0;
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        !(sum as u16)
    }
}
