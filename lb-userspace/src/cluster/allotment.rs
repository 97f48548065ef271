//! Token allotment (docs/architecture.md, "Where the cluster protocol fits"): the
//! health-and-load handler turns each endpoint's capacity, load and health into a share
//! of a service's new flows (say 40 % to one node, 35 % and 25 % to two others) that
//! holds for a duration. The shares become the endpoints'
//! Maglev weights.
//!
//! Shares must follow real change but not noise: a new allotment is adopted at once when
//! the set of eligible endpoints changes (a node joined, failed, left or turned unhealthy),
//! otherwise only when some endpoint's share would move by more than a threshold and the
//! current allotment has held for its duration. Load reports are smoothed by the caller.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

/// Tokens handed out per service: shares are in per-mille (a tenth of a percent).
pub const TOKENS: u32 = 1000;

/// What the allotment knows of one endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointReport {
    /// Relative capacity, > 0 (the wire format rejects 0).
    pub capacity: u32,
    /// Load in per-mille of capacity; above 1000 is overloaded.
    pub load_permille: u32,
    /// Live, not draining, and its service's own health check passes.
    pub eligible: bool,
}

/// Tuning of the hysteresis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllotmentPolicy {
    /// An endpoint's share must move by more than this many tokens to be re-allotted.
    pub threshold_tokens: u32,
    /// An allotment holds at least this long unless the eligible set changes.
    pub hold: Duration,
    /// Spare capacity never counts for less than this fraction (per-mille), so a fully
    /// loaded node keeps a trickle of new flows and its load reports stay meaningful.
    pub min_spare_permille: u32,
}

impl Default for AllotmentPolicy {
    fn default() -> Self {
        Self {
            threshold_tokens: 50,
            hold: Duration::from_secs(5),
            min_spare_permille: 100,
        }
    }
}

/// The shares the reports call for now, before any hysteresis: spare capacity
/// `capacity × max(1 − load, min_spare)` of each eligible endpoint, apportioned to
/// [`TOKENS`] by largest remainder (ties to the lower key), so the shares always sum to
/// exactly [`TOKENS`] when any endpoint is eligible. Ineligible endpoints get 0.
pub fn target<K: Ord + Clone>(
    reports: &BTreeMap<K, EndpointReport>,
    policy: &AllotmentPolicy,
) -> BTreeMap<K, u32> {
    let spare = |r: &EndpointReport| -> u64 {
        if !r.eligible {
            return 0;
        }
        let free = 1000u32.saturating_sub(r.load_permille.min(1000));
        u64::from(r.capacity) * u64::from(free.max(policy.min_spare_permille.min(1000)))
    };
    let total: u64 = reports.values().map(spare).sum();
    let mut shares: BTreeMap<K, u32> = reports.keys().map(|k| (k.clone(), 0)).collect();
    if total == 0 {
        return shares;
    }
    let mut remainders: Vec<(u64, K)> = Vec::with_capacity(reports.len());
    let mut handed_out = 0u32;
    for (key, report) in reports {
        let exact = spare(report) * u64::from(TOKENS);
        // exact / total <= TOKENS, so the quotient fits in u32.
        let whole = (exact / total) as u32;
        handed_out += whole;
        shares.insert(key.clone(), whole);
        if report.eligible {
            remainders.push((exact % total, key.clone()));
        }
    }
    // Largest remainders first; equal remainders in key order (sort is stable).
    remainders.sort_by_key(|r| std::cmp::Reverse(r.0));
    for (_, key) in remainders.into_iter().take((TOKENS - handed_out) as usize) {
        if let Some(share) = shares.get_mut(&key) {
            *share += 1;
        }
    }
    shares
}

/// The allotment in force for one service and when it was adopted.
#[derive(Clone, Debug)]
pub struct Allotment<K: Ord + Clone> {
    policy: AllotmentPolicy,
    current: BTreeMap<K, u32>,
    adopted_at: Option<Instant>,
}

impl<K: Ord + Clone> Allotment<K> {
    pub fn new(policy: AllotmentPolicy) -> Self {
        Self {
            policy,
            current: BTreeMap::new(),
            adopted_at: None,
        }
    }

    /// Tokens per endpoint in force (0 for an endpoint without new flows).
    pub fn tokens(&self) -> &BTreeMap<K, u32> {
        &self.current
    }

    /// When the allotment in force stops holding by time alone.
    pub fn holds_until(&self) -> Option<Instant> {
        self.adopted_at.map(|t| t + self.policy.hold)
    }

    /// Re-evaluates against the latest reports; returns whether the allotment changed.
    pub fn update(&mut self, reports: &BTreeMap<K, EndpointReport>, now: Instant) -> bool {
        let wanted = target(reports, &self.policy);
        if wanted == self.current {
            return false;
        }
        let eligible_set_changed = wanted.len() != self.current.len()
            || wanted.iter().any(|(key, &tokens)| {
                self.current
                    .get(key)
                    .is_none_or(|&held| (held > 0) != (tokens > 0))
            });
        let expired = self.holds_until().is_none_or(|until| now >= until);
        let moved_enough = wanted.iter().any(|(key, &tokens)| {
            let held = self.current.get(key).copied().unwrap_or(0);
            tokens.abs_diff(held) > self.policy.threshold_tokens
        });
        if eligible_set_changed || (expired && moved_enough) {
            self.current = wanted;
            self.adopted_at = Some(now);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn report(capacity: u32, load_permille: u32) -> EndpointReport {
        EndpointReport {
            capacity,
            load_permille,
            eligible: true,
        }
    }

    fn reports(list: &[(u8, EndpointReport)]) -> BTreeMap<u8, EndpointReport> {
        list.iter().copied().collect()
    }

    fn shares(map: &BTreeMap<u8, u32>) -> Vec<u32> {
        map.values().copied().collect()
    }

    #[test]
    fn capacity_shares() {
        let policy = AllotmentPolicy::default();
        let r = reports(&[(1, report(4, 0)), (2, report(3, 0)), (3, report(3, 0))]);
        assert_eq!(shares(&target(&r, &policy)), [400, 300, 300]);
        // Equal load everywhere keeps the capacity ratio.
        let r = reports(&[
            (1, report(4, 500)),
            (2, report(3, 500)),
            (3, report(3, 500)),
        ]);
        assert_eq!(shares(&target(&r, &policy)), [400, 300, 300]);
        // Spare capacities 8:7:5 give 40/35/25 %.
        let r = reports(&[
            (1, report(8, 500)),
            (2, report(7, 500)),
            (3, report(5, 500)),
        ]);
        assert_eq!(shares(&target(&r, &policy)), [400, 350, 250]);
        // Load takes away share: 4×0.25 : 3×1.0 : 3×1.0 = 1 : 3 : 3.
        let r = reports(&[(1, report(4, 750)), (2, report(3, 0)), (3, report(3, 0))]);
        assert_eq!(shares(&target(&r, &policy)), [143, 429, 428]);
        // Overloaded nodes keep the floor, not zero.
        let r = reports(&[(1, report(1, 5000)), (2, report(1, 0))]);
        assert_eq!(shares(&target(&r, &policy)), [91, 909]);
    }

    #[test]
    fn ineligible_endpoints_get_nothing() {
        let policy = AllotmentPolicy::default();
        let mut r = reports(&[(1, report(4, 0)), (2, report(3, 0)), (3, report(3, 0))]);
        r.get_mut(&1).unwrap().eligible = false;
        assert_eq!(shares(&target(&r, &policy)), [0, 500, 500]);
        for v in r.values_mut() {
            v.eligible = false;
        }
        assert_eq!(shares(&target(&r, &policy)), [0, 0, 0]);
        assert!(target::<u8>(&BTreeMap::new(), &policy).is_empty());
    }

    #[test]
    fn rounding_sums_exactly() {
        let policy = AllotmentPolicy::default();
        let r = reports(&[(1, report(1, 0)), (2, report(1, 0)), (3, report(1, 0))]);
        assert_eq!(shares(&target(&r, &policy)), [334, 333, 333]);
    }

    #[test]
    fn noise_never_changes_the_allotment() {
        let policy = AllotmentPolicy::default();
        let start = Instant::now();
        let mut allotment = Allotment::new(policy);
        let base = [(1, 4), (2, 3), (3, 3)];
        let at = |load: [u32; 3]| {
            reports(&[
                (base[0].0, report(base[0].1, load[0])),
                (base[1].0, report(base[1].1, load[1])),
                (base[2].0, report(base[2].1, load[2])),
            ])
        };
        assert!(allotment.update(&at([300, 300, 300]), start));
        assert_eq!(shares(allotment.tokens()), [400, 300, 300]);
        // Loads jitter by ±6 % around 30 % for a minute of 1 s reports.
        let mut changes = 0;
        for second in 1..=60u64 {
            let wobble = |i: u64| {
                if (second + i).is_multiple_of(2) {
                    360
                } else {
                    240
                }
            };
            if allotment.update(
                &at([wobble(0), wobble(1), wobble(2)]),
                start + Duration::from_secs(second),
            ) {
                changes += 1;
            }
        }
        assert_eq!(changes, 0, "{:?}", allotment.tokens());
        assert_eq!(shares(allotment.tokens()), [400, 300, 300]);
    }

    #[test]
    fn real_change_waits_for_the_hold_then_applies_once() {
        let policy = AllotmentPolicy::default();
        let start = Instant::now();
        let mut allotment = Allotment::new(policy);
        let even = reports(&[(1, report(1, 0)), (2, report(1, 0))]);
        assert!(allotment.update(&even, start));
        assert_eq!(allotment.holds_until(), Some(start + policy.hold));
        // Node 1 becomes 80 % loaded: target 200 / 800 (after the floor: 1×0.2 : 1×1.0 → 167 / 833).
        let skewed = reports(&[(1, report(1, 800)), (2, report(1, 0))]);
        assert!(!allotment.update(&skewed, start + Duration::from_secs(1)));
        assert_eq!(shares(allotment.tokens()), [500, 500]);
        assert!(allotment.update(&skewed, start + policy.hold));
        assert_eq!(shares(allotment.tokens()), [167, 833]);
        for s in 6..30 {
            assert!(!allotment.update(&skewed, start + Duration::from_secs(s)));
        }
    }

    #[test]
    fn eligibility_changes_apply_at_once() {
        let policy = AllotmentPolicy::default();
        let start = Instant::now();
        let mut allotment = Allotment::new(policy);
        let mut r = reports(&[(1, report(4, 0)), (2, report(3, 0)), (3, report(3, 0))]);
        assert!(allotment.update(&r, start));
        r.get_mut(&2).unwrap().eligible = false;
        let soon = start + Duration::from_millis(10);
        assert!(allotment.update(&r, soon));
        assert_eq!(shares(allotment.tokens()), [571, 0, 429]);
        r.get_mut(&2).unwrap().eligible = true;
        assert!(allotment.update(&r, soon));
        assert_eq!(shares(allotment.tokens()), [400, 300, 300]);
        // A new endpoint joins.
        r.insert(4, report(10, 0));
        assert!(allotment.update(&r, soon));
        assert_eq!(shares(allotment.tokens()), [200, 150, 150, 500]);
        // One is forgotten.
        r.remove(&4);
        assert!(allotment.update(&r, soon));
        assert_eq!(shares(allotment.tokens()), [400, 300, 300]);
    }

    proptest! {
        #[test]
        fn shares_sum_to_tokens(list in prop::collection::vec((1u32..=1_000_000, 0u32..=3000, any::<bool>()), 0..40)) {
            let r: BTreeMap<usize, EndpointReport> = list
                .iter()
                .enumerate()
                .map(|(i, &(capacity, load_permille, eligible))| (i, EndpointReport { capacity, load_permille, eligible }))
                .collect();
            let t = target(&r, &AllotmentPolicy::default());
            let sum: u32 = t.values().sum();
            let any_eligible = r.values().any(|e| e.eligible);
            prop_assert_eq!(sum, if any_eligible { TOKENS } else { 0 });
            for (k, e) in &r {
                if !e.eligible { prop_assert_eq!(t[k], 0); }
            }
        }
    }
}
