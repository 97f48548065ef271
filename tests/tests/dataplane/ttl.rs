//! TTL handling.

use super::*;

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn expiring_ttl_is_dropped() {
    with_harness(|h| {
        let syn = Tcp {
            ttl: 1,
            ..Tcp::syn(CLIENT, 40000, VIP, 80)
        };
        let (verdict, _) = h.run(&syn.build(&[]));
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(h.counter(counters::DROP_TTL_EXPIRED), 1);
    });
}
