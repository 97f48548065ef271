//! Peers' activity on flows held here: the last remote touch of each connection, which
//! the collector counts as activity (docs/scale-out.md, "Who may change what").

use std::collections::HashMap;

use lb_common::FlowKey;

/// Last remote touch (CLOCK_MONOTONIC here, when the touch arrived) per connection, by
/// its forward key. Bounded: when full, the oldest eighth goes, so a flood of touches
/// for flows that never were costs memory only up to the bound.
#[derive(Debug)]
pub struct RemoteActivity {
    last: HashMap<FlowKey, u64>,
    capacity: usize,
}

impl RemoteActivity {
    pub fn new(capacity: usize) -> RemoteActivity {
        RemoteActivity {
            last: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// Notes a peer's touch of the connection `forward_key` at `now_ns`.
    pub fn touch(&mut self, forward_key: FlowKey, now_ns: u64) {
        if self.last.len() >= self.capacity && !self.last.contains_key(&forward_key) {
            self.evict_oldest(self.capacity.div_ceil(8));
        }
        let last = self.last.entry(forward_key).or_insert(now_ns);
        *last = (*last).max(now_ns);
    }

    /// The connection's last remote touch, if any.
    pub fn last(&self, forward_key: &FlowKey) -> Option<u64> {
        self.last.get(forward_key).copied()
    }

    /// Forgets the connection (it ended).
    pub fn forget(&mut self, forward_key: &FlowKey) {
        self.last.remove(forward_key);
    }

    /// Forgets touches older than `before_ns`: no timeout is that long.
    pub fn prune(&mut self, before_ns: u64) {
        self.last.retain(|_, last| *last >= before_ns);
    }

    pub fn len(&self) -> usize {
        self.last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }

    fn evict_oldest(&mut self, count: usize) {
        let mut times: Vec<u64> = self.last.values().copied().collect();
        let nth = count.min(times.len()).saturating_sub(1);
        let (_, &mut cutoff, _) = times.select_nth_unstable(nth);
        self.last.retain(|_, last| *last > cutoff);
    }
}

#[cfg(test)]
mod tests {
    use lb_common::IPPROTO_TCP;

    use super::*;

    fn key(port: u16) -> FlowKey {
        FlowKey::new(
            "198.18.0.10".parse().unwrap(),
            port,
            "198.18.1.1".parse().unwrap(),
            80,
            IPPROTO_TCP,
        )
    }

    #[test]
    fn the_latest_touch_is_kept() {
        let mut activity = RemoteActivity::new(10);
        activity.touch(key(1), 5);
        activity.touch(key(1), 3);
        assert_eq!(activity.last(&key(1)), Some(5));
        activity.touch(key(1), 9);
        assert_eq!(activity.last(&key(1)), Some(9));
        assert_eq!(activity.last(&key(2)), None);
        activity.forget(&key(1));
        assert!(activity.is_empty());
    }

    #[test]
    fn a_full_table_drops_its_oldest_touches() {
        let mut activity = RemoteActivity::new(16);
        for port in 0..16 {
            activity.touch(key(port), u64::from(port));
        }
        activity.touch(key(100), 100);
        assert!(activity.len() <= 16);
        assert_eq!(activity.last(&key(0)), None, "the oldest went");
        assert_eq!(activity.last(&key(15)), Some(15));
        assert_eq!(activity.last(&key(100)), Some(100));
        activity.prune(15);
        assert_eq!(activity.len(), 2);
    }
}
