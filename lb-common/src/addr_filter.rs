//! ADDR_FILTER (docs/architecture.md, "Address filter"): a bitmap of every address a
//! packet can be the balancer's by, hashed, so that most packets for other hosts leave
//! before any hash-map lookup. A set bit only costs the lookups; a clear bit must mean
//! that no flow entry and no local address can match.

/// The bitmap has 2^16 bits (8 KB): a few thousand addresses leave most bits clear.
pub const ADDR_FILTER_BITS_LOG2: u32 = 16;
pub const ADDR_FILTER_WORDS: usize = 1 << (ADDR_FILTER_BITS_LOG2 - 6);

/// ADDR_FILTER value (array of one).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct AddrFilter {
    pub words: [u64; ADDR_FILTER_WORDS],
}

/// Word index and bit mask of an address (network byte order, as in the packet):
/// Fibonacci hashing, one multiply, the top bits of the product.
#[inline(always)]
pub const fn addr_filter_slot(addr: u32) -> (usize, u64) {
    let h = addr.wrapping_mul(0x9e37_79b1) >> (32 - ADDR_FILTER_BITS_LOG2);
    ((h >> 6) as usize, 1u64 << (h & 63))
}

impl AddrFilter {
    pub const EMPTY: AddrFilter = AddrFilter {
        words: [0; ADDR_FILTER_WORDS],
    };

    #[inline(always)]
    pub fn contains(&self, addr: u32) -> bool {
        let (word, bit) = addr_filter_slot(addr);
        self.words[word] & bit != 0
    }

    pub fn insert(&mut self, addr: u32) {
        let (word, bit) = addr_filter_slot(addr);
        self.words[word] |= bit;
    }

    /// Every bit set in `self` or `other`.
    pub fn union(&self, other: &AddrFilter) -> AddrFilter {
        let mut out = *self;
        for (a, b) in out.words.iter_mut().zip(other.words.iter()) {
            *a |= b;
        }
        out
    }

    /// Whether every bit of `other` is set here.
    pub fn covers(&self, other: &AddrFilter) -> bool {
        self.words
            .iter()
            .zip(other.words.iter())
            .all(|(a, b)| a & b == *b)
    }

    pub fn bits_set(&self) -> u32 {
        self.words.iter().map(|w| w.count_ones()).sum()
    }
}

impl Default for AddrFilter {
    fn default() -> AddrFilter {
        AddrFilter::EMPTY
    }
}

impl core::fmt::Debug for AddrFilter {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "AddrFilter({} bits set)", self.bits_set())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inserted_address_is_contained_and_others_mostly_not() {
        let mut filter = AddrFilter::EMPTY;
        let ours = u32::from_ne_bytes([198, 18, 0, 10]);
        filter.insert(ours);
        assert!(filter.contains(ours));
        assert_eq!(filter.bits_set(), 1);
        // Neighbours of a set address (same /16, any last octets) land elsewhere.
        let mut hits = 0;
        for c in 0..=255u8 {
            for d in 0..=255u8 {
                let addr = u32::from_ne_bytes([198, 19, c, d]);
                hits += u32::from(filter.contains(addr));
            }
        }
        assert!(hits <= 4, "{hits} of 65536 foreign addresses collide");
    }

    #[test]
    fn union_and_covers() {
        let (a, b) = (
            u32::from_ne_bytes([198, 18, 0, 1]),
            u32::from_ne_bytes([198, 18, 0, 2]),
        );
        let mut x = AddrFilter::EMPTY;
        x.insert(a);
        let mut y = AddrFilter::EMPTY;
        y.insert(b);
        let both = x.union(&y);
        assert!(both.contains(a) && both.contains(b));
        assert!(both.covers(&x) && both.covers(&y));
        assert!(!x.covers(&both));
    }

    #[test]
    fn the_slot_stays_inside_the_bitmap() {
        for addr in [0, 1, u32::MAX, 0x8000_0000, 0x1234_5678] {
            assert!(addr_filter_slot(addr).0 < ADDR_FILTER_WORDS);
        }
    }
}
