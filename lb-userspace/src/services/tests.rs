use super::{plan::FreeIds, *};

#[test]
fn session_stays_only_while_fresh_and_its_backend_is_in_the_ring() {
    let policy = SessionPolicy {
        timeout_ns: 10,
        live_backends: [1, 3].into(),
    };
    assert!(policy.keeps(1, 100, 110));
    assert!(!policy.keeps(1, 100, 111), "idle beyond the timeout");
    assert!(!policy.keeps(2, 100, 105), "backend left the ring");
}

#[test]
fn ids_freed_in_this_apply_are_handed_out_last() {
    let mut ids = FreeIds::new([0, 1].into_iter(), 3, "service");
    ids.last_resort.push(1);
    assert_eq!(ids.take().unwrap(), 2);
    assert_eq!(ids.take().unwrap(), 1, "only when nothing else is free");
    assert!(ids.take().is_err());
}
