//! Places of the services' rings in the shared MAGLEV_RINGS pool.

use std::collections::BTreeMap;

use anyhow::{Result, bail};

/// A service's place in the MAGLEV_RINGS pool: two rings of `size` slots from `base`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingRegion {
    pub base: u32,
    pub size: u32,
}

impl RingRegion {
    /// First slot of ring half 0 or 1.
    pub fn offset(&self, half: u32) -> u32 {
        self.base + half * self.size
    }

    /// Pool slots of ring half 0 or 1.
    pub fn slots(&self, half: u32) -> std::ops::Range<usize> {
        let start = self.offset(half) as usize;
        start..start + self.size as usize
    }
}

/// Allocation of the ring pool: first fit over the gaps between used regions.
#[derive(Clone, Debug, Default)]
pub(super) struct RingPool {
    /// Used regions: base → length in slots.
    used: BTreeMap<u32, u32>,
}

impl RingPool {
    pub(super) fn allocate(&mut self, len: u32, capacity: u32) -> Result<u32> {
        let mut start = 0u32;
        for (&base, &used) in &self.used {
            if base - start >= len {
                break;
            }
            start = base + used;
        }
        if u64::from(start) + u64::from(len) > u64::from(capacity) {
            bail!(
                "the Maglev ring pool is full: {len} more slots needed, {} of {capacity} in use \
                 (raise limits.max_ring_slots; it changes with a clean restart)",
                self.used.values().map(|&l| u64::from(l)).sum::<u64>()
            );
        }
        self.used.insert(start, len);
        Ok(start)
    }

    /// Marks a region found in the maps as used (both halves).
    pub(super) fn reserve(&mut self, region: RingRegion) {
        self.used.insert(region.base, 2 * region.size);
    }

    pub(super) fn free(&mut self, region: RingRegion) {
        self.used.remove(&region.base);
    }
}
