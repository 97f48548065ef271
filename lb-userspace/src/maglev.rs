//! Weighted Maglev consistent hashing (Eisenbud et al., NSDI 2016).
//!
//! The controller builds one lookup ring per service here and writes it into the
//! `MAGLEV_RINGS` BPF array; the XDP program picks a backend for a new flow by indexing
//! the ring with the flow hash. Two properties matter:
//!
//! * every host running the balancer builds the same ring from the same backend set, so
//!   a flow lands on the same backend whichever balancer receives it (ECMP, failover);
//! * changing the backend set moves few slots, so few established flows are remapped
//!   when a controller's flow table is lost.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// One candidate backend of a ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevBackend<'a> {
    /// Stable identity of the backend (the controller passes `"ip:port"`): its position
    /// in the ring derives from this alone, never from its id or its place in the input.
    pub key: &'a str,
    /// Relative share of the ring; 0 leaves the backend out.
    pub weight: u32,
    /// Value written into the backend's slots (the index into the BACKENDS map).
    pub id: u32,
}

/// Ring sizes the controller chooses from (primes). Maglev's paper bounds the share
/// error of a ring of M slots and N backends by about N/M, so a ring of at least 100
/// slots per backend keeps every share within 1 %; small services thus need small
/// rings, which is what lets thousands of services share the MAGLEV_RINGS pool.
pub const RING_SIZES: [u32; 7] = [1_021, 2_039, 4_093, 8_191, 16_381, 32_749, 65_537];

/// Ring size for a service with backends of these weights (0 = not in the ring): the
/// smallest of `RING_SIZES` that gives the lightest backend at least 100 slots, the
/// largest (`lb_common::MAGLEV_RING_SIZE`) where none does.
pub fn ring_size_for(weights: &[u32]) -> u32 {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let lightest = weights
        .iter()
        .copied()
        .filter(|&w| w > 0)
        .min()
        .unwrap_or(1);
    let wanted = total.saturating_mul(100).div_ceil(u64::from(lightest));
    RING_SIZES
        .iter()
        .copied()
        .find(|&size| u64::from(size) >= wanted)
        .unwrap_or(lb_common::MAGLEV_RING_SIZE)
}

/// Seeds of the two independent hashes of a key (arbitrary, but frozen: changing them
/// moves every flow of every service).
const OFFSET_SEED: u64 = 0x6d61_676c_6576_6f66; // "maglevof"
const SKIP_SEED: u64 = 0x6d61_676c_6576_736b; // "maglevsk"

/// Builds a lookup table of `ring_size` slots, each holding the `id` of a backend.
///
/// Backends with weight 0 are left out; the result is empty when no backend has weight
/// greater than 0. A backend's number of slots is proportional to its weight (to within
/// about one slot), and the result does not depend on the order of `backends`.
///
/// # Panics
///
/// If `ring_size` is not prime (production uses `lb_common::MAGLEV_RING_SIZE`): a
/// backend's probe sequence only visits every slot when its skip is coprime with the
/// ring size, and a composite size would let the population loop spin forever.
pub fn build_ring(backends: &[MaglevBackend<'_>], ring_size: u32) -> Vec<u32> {
    assert!(
        is_prime(ring_size),
        "Maglev ring size must be prime, got {ring_size}"
    );

    let mut live: Vec<&MaglevBackend<'_>> = backends.iter().filter(|b| b.weight > 0).collect();
    if live.is_empty() {
        return Vec::new();
    }
    // Canonical order, so every host builds the same ring from the same set.
    live.sort_unstable_by(|a, b| (a.key, a.id, a.weight).cmp(&(b.key, b.id, b.weight)));

    let size = u64::from(ring_size);
    let max_weight = live.iter().map(|b| u64::from(b.weight)).max().unwrap_or(1);

    // Each backend walks its own permutation of the slots: offset, offset + skip, ...
    // (mod size). Only the current position is kept, not the whole permutation table.
    let mut positions: Vec<u64> = Vec::with_capacity(live.len());
    let mut skips: Vec<u64> = Vec::with_capacity(live.len());
    for backend in &live {
        positions.push(key_hash(backend.key, OFFSET_SEED) % size);
        skips.push(key_hash(backend.key, SKIP_SEED) % (size - 1) + 1);
    }

    // Weighting: the classic algorithm gives every backend one turn per round. Here a
    // backend of weight w gets w / max_weight of a turn per round, so its k-th turn comes
    // in round ceil(k * max_weight / w): slot counts follow the weights, and a backend's
    // schedule depends only on its own weight and the largest one. The heap replays the
    // rounds in (round, canonical index) order without visiting idle backends, so heavily
    // skewed weights cost no empty rounds.
    let turn_round = |turn: u64, weight: u32| (turn * max_weight).div_ceil(u64::from(weight));
    let mut turns: Vec<u64> = vec![0; live.len()];
    let mut queue: BinaryHeap<Reverse<(u64, usize)>> = live
        .iter()
        .enumerate()
        .map(|(index, backend)| Reverse((turn_round(1, backend.weight), index)))
        .collect();

    let mut ring = vec![0u32; ring_size as usize];
    let mut taken = vec![false; ring_size as usize];
    let mut filled = 0u64;
    while filled < size {
        let Some(Reverse((_, index))) = queue.pop() else {
            // Unreachable: every backend is pushed back after its turn.
            break;
        };
        // Take the backend's next preferred slot that is still free.
        let mut slot = positions[index];
        while taken[slot as usize] {
            slot = (slot + skips[index]) % size;
        }
        taken[slot as usize] = true;
        ring[slot as usize] = live[index].id;
        positions[index] = (slot + skips[index]) % size;
        filled += 1;

        turns[index] += 1;
        queue.push(Reverse((
            turn_round(turns[index] + 1, live[index].weight),
            index,
        )));
    }
    ring
}

/// FNV-1a 64 over the seed's bytes then the key, finalised with murmur3's fmix64.
///
/// A fixed function rather than std's hashers, whose output may differ between Rust
/// versions (and is randomised per process for `RandomState`): the ring must be the same
/// on every host. fmix64 spreads FNV's weak low bits, which the modulo relies on.
fn key_hash(key: &str, seed: u64) -> u64 {
    const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = seed
        .to_le_bytes()
        .iter()
        .chain(key.as_bytes())
        .fold(FNV_OFFSET_BASIS, |hash, &byte| {
            (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
        });
    fmix64(hash)
}

/// The 64-bit finaliser of MurmurHash3.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = u64::from(n);
    (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const RING: u32 = lb_common::MAGLEV_RING_SIZE;

    /// Owned backends, so tests can build `MaglevBackend`s borrowing their keys.
    struct Set(Vec<(String, u32, u32)>);

    impl Set {
        fn new(weights: &[u32]) -> Self {
            Self(
                weights
                    .iter()
                    .enumerate()
                    .map(|(i, &w)| {
                        let i = i as u32;
                        (format!("198.19.{}.{}:8080", i / 250, i % 250 + 1), w, i)
                    })
                    .collect(),
            )
        }

        fn backends(&self) -> Vec<MaglevBackend<'_>> {
            self.0
                .iter()
                .map(|(key, weight, id)| MaglevBackend {
                    key,
                    weight: *weight,
                    id: *id,
                })
                .collect()
        }
    }

    fn slot_counts(ring: &[u32]) -> HashMap<u32, usize> {
        let mut counts = HashMap::new();
        for &id in ring {
            *counts.entry(id).or_default() += 1;
        }
        counts
    }

    /// Asserts that every backend's share of the ring is within 1% (relative) of its
    /// share of the total weight.
    fn assert_shares(weights: &[u32]) {
        let set = Set::new(weights);
        let ring = build_ring(&set.backends(), RING);
        assert_eq!(ring.len(), RING as usize);
        let counts = slot_counts(&ring);
        let total: u32 = weights.iter().sum();
        for (id, &weight) in weights.iter().enumerate() {
            let slots = counts.get(&(id as u32)).copied().unwrap_or(0);
            let expected = f64::from(RING) * f64::from(weight) / f64::from(total);
            let error = (slots as f64 / expected - 1.0).abs();
            assert!(
                error <= 0.01,
                "backend {id} (weight {weight}) has {slots} slots, expected {expected:.1} \
                 (relative error {error:.4})"
            );
        }
    }

    fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
        bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    }

    /// Every pool size is prime, and the size chosen for a service keeps each share
    /// within 1 % wherever the largest ring is not needed.
    #[test]
    fn chosen_ring_sizes_keep_shares_within_one_percent() {
        assert!(RING_SIZES.iter().all(|&size| is_prime(size)));
        for weights in [
            vec![1],
            vec![2, 1, 1],
            vec![1; 10],
            vec![1; 11],
            vec![1; 100],
            vec![1; 300],
            (1..=10).collect::<Vec<_>>(),
        ] {
            let size = ring_size_for(&weights);
            assert!(u64::from(size) >= 100 * weights.len() as u64);
            let set = Set::new(&weights);
            let ring = build_ring(&set.backends(), size);
            let counts = slot_counts(&ring);
            let total: u32 = weights.iter().sum();
            for (id, &weight) in weights.iter().enumerate() {
                let slots = counts.get(&(id as u32)).copied().unwrap_or(0);
                let expected = f64::from(size) * f64::from(weight) / f64::from(total);
                let error = (slots as f64 / expected - 1.0).abs();
                assert!(
                    error <= 0.01,
                    "{weights:?} in {size}: backend {id} error {error}"
                );
            }
        }
        assert_eq!(ring_size_for(&[1; 10]), 1_021);
        assert_eq!(ring_size_for(&[1; 1000]), lb_common::MAGLEV_RING_SIZE);
    }

    #[test]
    fn shares_follow_weights_2_1_1() {
        assert_shares(&[2, 1, 1]);
    }

    #[test]
    fn shares_follow_weights_1_to_10() {
        assert_shares(&(1..=10).collect::<Vec<_>>());
    }

    #[test]
    fn shares_are_equal_for_100_equal_backends() {
        assert_shares(&[1; 100]);
    }

    #[test]
    fn shares_follow_skewed_weights() {
        assert_shares(&[65_535, 1_000, 300, 100]);
    }

    #[test]
    fn removing_one_backend_moves_few_slots() {
        for n in [3usize, 5, 10, 50] {
            let set = Set::new(&vec![1; n]);
            let all = set.backends();
            let before = build_ring(&all, RING);
            // Every backend in turn, so the bound holds whichever one goes away.
            for removed in 0..n {
                let mut rest = all.clone();
                rest.remove(removed);
                let after = build_ring(&rest, RING);
                let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count();
                let bound = f64::from(RING) * (1.0 / n as f64 + 0.01);
                assert!(
                    changed as f64 <= bound,
                    "N={n}, removing backend {removed} changed {changed} slots (bound {bound:.0})"
                );
                // The removed backend is gone entirely.
                assert!(!after.contains(&(removed as u32)));
            }
        }
    }

    #[test]
    fn input_order_does_not_matter() {
        let set = Set::new(&(1..=40).map(|w| w % 7 + 1).collect::<Vec<_>>());
        let backends = set.backends();
        let reference = build_ring(&backends, RING);

        let mut reversed = backends.clone();
        reversed.reverse();
        assert_eq!(build_ring(&reversed, RING), reference);

        // Fisher-Yates with a fixed xorshift, so the test itself is deterministic.
        let mut shuffled = backends.clone();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for i in (1..shuffled.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            shuffled.swap(i, (state % (i as u64 + 1)) as usize);
        }
        assert_ne!(shuffled, backends);
        assert_eq!(build_ring(&shuffled, RING), reference);
    }

    /// Catches any change of the hash or of the algorithm: such a change remaps flows
    /// when hosts of different versions serve the same service, so it must be deliberate.
    /// The values were cross-checked with an independent reimplementation of the
    /// algorithm as documented above.
    #[test]
    fn golden_ring() {
        let set = Set::new(&[1, 2, 3, 1, 5]);
        let ring = build_ring(&set.backends(), RING);
        assert_eq!(
            &ring[..16],
            &[4, 3, 4, 4, 1, 4, 2, 1, 4, 4, 1, 4, 0, 2, 4, 2]
        );
        let checksum = fnv1a(ring.iter().flat_map(|id| id.to_le_bytes()));
        assert_eq!(checksum, 0x4154_4fef_1e22_03c7);
    }

    #[test]
    fn golden_hash() {
        assert_eq!(fnv1a(*b"a"), 0xaf63_dc4c_8601_ec8c); // published FNV-1a 64 vector
        assert_eq!(key_hash("", OFFSET_SEED), 0xe900_b717_f687_00d8);
        assert_eq!(
            key_hash("198.19.0.11:8080", OFFSET_SEED),
            0x7aa6_0747_a4f2_9768
        );
        assert_eq!(
            key_hash("198.19.0.11:8080", SKIP_SEED),
            0x01df_70c8_a635_0df3
        );
    }

    #[test]
    fn zero_weight_backends_get_no_slot() {
        let set = Set::new(&[1, 0, 3, 0]);
        let ring = build_ring(&set.backends(), RING);
        let counts = slot_counts(&ring);
        assert_eq!(counts.len(), 2);
        assert!(!counts.contains_key(&1));
        assert!(!counts.contains_key(&3));
        assert_eq!(counts.values().sum::<usize>(), RING as usize);
    }

    #[test]
    fn no_usable_backend_gives_empty_ring() {
        assert!(build_ring(&Set::new(&[0, 0, 0]).backends(), RING).is_empty());
        assert!(build_ring(&[], RING).is_empty());
    }

    #[test]
    fn zero_weight_backend_does_not_disturb_the_others() {
        let with_zero = Set::new(&[1, 1, 0, 1]);
        let mut without = Set::new(&[1, 1, 0, 1]);
        without.0.remove(2);
        assert_eq!(
            build_ring(&with_zero.backends(), RING),
            build_ring(&without.backends(), RING)
        );
    }

    #[test]
    fn more_backends_than_slots_fills_every_slot_once() {
        let ring = build_ring(&Set::new(&[1; 10]).backends(), 7);
        assert_eq!(ring.len(), 7);
        assert_eq!(slot_counts(&ring).len(), 7);
    }

    #[test]
    #[should_panic(expected = "must be prime")]
    fn composite_ring_size_is_refused() {
        build_ring(&Set::new(&[1]).backends(), 65_536);
    }

    #[test]
    fn primality() {
        let primes: Vec<u32> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65_537));
        assert!(is_prime(u32::MAX - 4)); // 4294967291, the largest 32-bit prime
        assert!(!is_prime(u32::MAX));
    }

    #[test]
    fn thousand_backends_build_quickly() {
        let set = Set::new(&(0..1000).map(|i| i % 4 + 1).collect::<Vec<_>>());
        let backends = set.backends();
        let start = std::time::Instant::now();
        let ring = build_ring(&backends, RING);
        let elapsed = start.elapsed();
        assert_eq!(ring.len(), RING as usize);
        assert_eq!(slot_counts(&ring).len(), 1000);
        // Timing means something only in an optimised build.
        if !cfg!(debug_assertions) {
            assert!(
                elapsed < std::time::Duration::from_millis(100),
                "1000 backends took {elapsed:?}"
            );
        }
    }
}
