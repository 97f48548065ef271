//! Attaching registers the interface as a redirect target.

use super::*;
use lb_testbed::harness::{AttachedMode, ifindex};

/// An interface is a redirect target from the moment the program runs on it, and a
/// failed attach leaves no redirect target behind.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn attach_registers_the_redirect_target_and_a_failed_attach_leaves_none() {
    with_harness(|h| {
        let lo = ifindex("lo").unwrap();
        // Loopback has no driver XDP hook: the forced native attach fails.
        assert!(h.attach("lo", Some(AttachedMode::Native)).is_err());
        assert!(h.tx_port(lo).is_none(), "no entry after a failure");
        assert!(h.attached().is_empty());

        assert_eq!(
            h.attach("lo", Some(AttachedMode::Generic)).unwrap(),
            AttachedMode::Generic
        );
        assert_eq!(h.tx_port(lo), Some(lo));
        h.detach_all();
        assert!(h.tx_port(lo).is_none(), "removed on detach");
    });
}
