use super::*;

const V: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 20);
const A: u16 = 1;
const B: u16 = 2;

struct Pair {
    t0: Instant,
    a: Moves,
    b: Moves,
}

impl Pair {
    /// Node 1 owns V; node 2 backs it up.
    fn new() -> Pair {
        let t0 = Instant::now();
        let owned = BTreeMap::from([(V, A)]);
        Pair {
            t0,
            a: Moves::new(A, &owned, MoveTimers::default(), t0),
            b: Moves::new(B, &owned, MoveTimers::default(), t0),
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// Delivers every `Send` of `effects` to the other side at `ms`, and what that side
    /// answers, until no message is left; returns the other effects, in order.
    fn deliver(&mut self, from: u16, effects: Vec<Effect>, ms: u64) -> Vec<(u16, Effect)> {
        let now = self.at(ms);
        let mut pending: Vec<(u16, Effect)> = effects.into_iter().map(|e| (from, e)).collect();
        let mut others = Vec::new();
        while !pending.is_empty() {
            let (sender, effect) = pending.remove(0);
            match effect {
                Effect::Send {
                    peer,
                    vip,
                    epoch,
                    message,
                } => {
                    let receiver = if peer == A { &mut self.a } else { &mut self.b };
                    let answers = receiver.message(sender, vip, epoch, message, now);
                    pending.extend(answers.into_iter().map(|e| (peer, e)));
                }
                other => others.push((sender, other)),
            }
        }
        others
    }
}

fn mode(m: &Moves, ms: Instant) -> (Mode, u16, u64) {
    let row = m.rows(ms)[0];
    (row.mode, row.owner, row.epoch)
}

#[test]
fn a_move_releases_before_it_takes_and_ends_normal_on_the_target() {
    let mut p = Pair::new();
    assert_eq!(p.a.primary(), vec![V]);
    assert_eq!(p.b.backup(), vec![V]);
    let offer = p.a.start(V, B, true, true, p.at(0)).unwrap();
    // The target goes transition (forwarding misses to the source) and accepts; the
    // source streams.
    let effects = p.deliver(A, offer, 0);
    assert_eq!(
        effects,
        vec![
            (
                B,
                Effect::Forward {
                    vip: V,
                    to: Some(A)
                }
            ),
            (
                A,
                Effect::StreamFlows {
                    peer: B,
                    vip: V,
                    epoch: 1
                }
            ),
        ]
    );
    assert_eq!(mode(&p.b, p.at(0)).0, Mode::Transition);
    assert_eq!(p.b.primary(), Vec::<Ipv4Addr>::new());
    // Stream done → installed → the source releases: backup, routes rewritten.
    let done = vec![send(B, V, 1, MoveMessage::StreamDone)];
    let effects = p.deliver(A, done, 10);
    assert_eq!(effects, vec![(A, Effect::Routes)]);
    assert_eq!(mode(&p.a, p.at(10)), (Mode::Backup, B, 1));
    // Nobody primary in between: the backups carry the VIP.
    assert!(p.a.primary().is_empty() && p.b.primary().is_empty());
    // BIRD took the withdrawal: released → the target takes it.
    let released = p.a.routes_applied(p.at(20));
    let effects = p.deliver(A, released, 20);
    assert_eq!(effects, vec![(B, Effect::Routes)]);
    assert_eq!(p.b.primary(), vec![V]);
    assert_eq!(
        p.a.rows(p.at(20))[0].moving,
        None,
        "taken ends the source's side"
    );
    // The target forwards misses until the drain window passes without any.
    assert!(p.b.tick(p.at(1000), |_| true, None).is_empty());
    assert!(p.b.tick(p.at(2100), |_| true, Some(p.at(2100))).is_empty());
    assert_eq!(
        p.b.tick(p.at(2100), |_| true, None),
        vec![Effect::Forward { vip: V, to: None }]
    );
    assert_eq!(mode(&p.b, p.at(2100)), (Mode::Normal, B, 1));
    assert_eq!(p.b.claims(), vec![(V, 1)]);
    assert!(p.a.claims().is_empty());
}

#[test]
fn a_move_that_cannot_start_is_refused_and_changes_nothing() {
    let mut p = Pair::new();
    let other = Ipv4Addr::new(198, 18, 1, 99);
    assert_eq!(
        p.a.start(other, B, true, true, p.at(0)),
        Err(Refusal::UnknownVip)
    );
    assert_eq!(p.b.start(V, A, true, true, p.at(0)), Err(Refusal::NotOwner));
    assert_eq!(p.a.start(V, A, true, true, p.at(0)), Err(Refusal::ToSelf));
    assert_eq!(
        p.a.start(V, 9, false, false, p.at(0)),
        Err(Refusal::UnknownPeer)
    );
    assert_eq!(
        p.a.start(V, B, true, false, p.at(0)),
        Err(Refusal::PeerNotReady)
    );
    assert_eq!(mode(&p.a, p.at(0)), (Mode::Normal, A, 0));
    assert_eq!(p.a.rows(p.at(0))[0].moving, None);
    p.a.start(V, B, true, true, p.at(0)).unwrap();
    assert_eq!(p.a.start(V, B, true, true, p.at(1)), Err(Refusal::Busy));
}

#[test]
fn an_offer_the_target_cannot_take_is_refused_and_the_source_stays_owner() {
    let mut p = Pair::new();
    // The target believes someone else owns V at a newer epoch: it refuses.
    p.b.claim(3, V, 5, p.at(0));
    let offer = p.a.start(V, B, true, true, p.at(0)).unwrap();
    assert!(p.deliver(A, offer, 0).is_empty());
    assert_eq!(mode(&p.a, p.at(0)), (Mode::Normal, A, 0));
    assert_eq!(p.a.rows(p.at(0))[0].moving, None);
    assert_eq!(mode(&p.b, p.at(0)), (Mode::Backup, 3, 5));
}

#[test]
fn a_target_lost_before_the_release_leaves_the_source_owner() {
    let mut p = Pair::new();
    let offer = p.a.start(V, B, true, true, p.at(0)).unwrap();
    p.deliver(A, offer, 0);
    // The target dies while the flows stream: the source calls the move off.
    let effects = p.a.tick(p.at(100), |n| n != B, None);
    assert_eq!(effects, vec![send(B, V, 1, MoveMessage::Abort)]);
    assert_eq!(mode(&p.a, p.at(100)), (Mode::Normal, A, 0));
    assert_eq!(p.a.primary(), vec![V]);
}

#[test]
fn a_silent_target_is_given_up_after_the_answer_timer() {
    let mut p = Pair::new();
    p.a.start(V, B, true, true, p.at(0)).unwrap();
    assert!(p.a.tick(p.at(9_999), |_| true, None).is_empty());
    assert_eq!(
        p.a.tick(p.at(10_000), |_| true, None),
        vec![send(B, V, 1, MoveMessage::Abort)]
    );
    assert_eq!(p.a.primary(), vec![V]);
}

#[test]
fn a_source_lost_before_the_release_leaves_the_vip_to_the_backups() {
    let mut p = Pair::new();
    let offer = p.a.start(V, B, true, true, p.at(0)).unwrap();
    p.deliver(A, offer, 0);
    // The source dies mid-stream (or a partition cuts it off): the target never makes
    // itself primary; it stops forwarding and stays a backup, as every survivor is.
    let effects = p.b.tick(p.at(50), |n| n != A, None);
    assert_eq!(effects, vec![Effect::Forward { vip: V, to: None }]);
    assert_eq!(mode(&p.b, p.at(50)), (Mode::Backup, A, 0));
    assert_eq!(p.b.backup(), vec![V]);
}

#[test]
fn a_partition_after_the_release_makes_no_second_primary() {
    let mut p = Pair::new();
    let offer = p.a.start(V, B, true, true, p.at(0)).unwrap();
    p.deliver(A, offer, 0);
    p.deliver(A, vec![send(B, V, 1, MoveMessage::StreamDone)], 10);
    // Released, but the message never arrives (partition): the source is backup, the
    // target still transition without primary.
    let _lost = p.a.routes_applied(p.at(20));
    let effects = p.a.tick(p.at(30), |n| n != B, None);
    assert!(effects.is_empty());
    let effects = p.b.tick(p.at(30), |n| n != A, None);
    assert_eq!(effects, vec![Effect::Forward { vip: V, to: None }]);
    assert!(p.a.primary().is_empty() && p.b.primary().is_empty());
    assert_eq!(p.a.backup(), vec![V]);
    assert_eq!(p.b.backup(), vec![V]);
}

#[test]
fn a_late_or_foreign_message_changes_nothing() {
    let mut p = Pair::new();
    // Messages of no running move, or of another epoch, are ignored.
    for message in [
        MoveMessage::Accept,
        MoveMessage::Installed,
        MoveMessage::Released,
        MoveMessage::Taken,
        MoveMessage::Abort,
        MoveMessage::StreamDone,
    ] {
        assert!(p.a.message(B, V, 1, message, p.at(0)).is_empty());
        assert!(p.b.message(A, V, 7, message, p.at(0)).is_empty());
    }
    assert_eq!(mode(&p.a, p.at(0)), (Mode::Normal, A, 0));
    assert_eq!(mode(&p.b, p.at(0)), (Mode::Backup, A, 0));
    // An offer from a node that does not own the VIP is refused.
    assert_eq!(
        p.b.message(3, V, 1, MoveMessage::Offer, p.at(0)),
        vec![refuse(3, V, 1, Refusal::NotOwner)]
    );
}

#[test]
fn the_higher_claim_wins_and_equal_claims_go_to_the_lower_node() {
    let mut p = Pair::new();
    // A restarted owner with the config's placement (epoch 0) yields to a newer claim.
    assert_eq!(p.a.claim(B, V, 3, p.at(0)), vec![Effect::Routes]);
    assert_eq!(mode(&p.a, p.at(0)), (Mode::Backup, B, 3));
    // An older claim changes nothing.
    assert!(p.a.claim(3, V, 2, p.at(0)).is_empty());
    assert_eq!(mode(&p.a, p.at(0)), (Mode::Backup, B, 3));
    // Two primaries at the same epoch (only after a partition): the lower node wins.
    let owned = BTreeMap::from([(V, B)]);
    let mut b = Moves::new(B, &owned, MoveTimers::default(), p.at(0));
    assert_eq!(b.claim(A, V, 0, p.at(0)), vec![Effect::Routes]);
    assert!(b.primary().is_empty());
    let owned = BTreeMap::from([(V, A)]);
    let mut a = Moves::new(A, &owned, MoveTimers::default(), p.at(0));
    assert!(a.claim(B, V, 0, p.at(0)).is_empty());
    assert_eq!(a.primary(), vec![V]);
}

#[test]
fn refusals_round_trip_on_the_wire() {
    for r in Refusal::ALL {
        assert_eq!(Refusal::from_wire(r.to_wire()), Some(r));
    }
    assert_eq!(Refusal::from_wire(0), None);
}

#[test]
fn a_drain_spreads_the_owned_vips_over_the_ready_peers() {
    let row = |last: u8, mode: Mode| VipRow {
        vip: Ipv4Addr::new(198, 18, 1, last),
        mode,
        owner: 1,
        epoch: 0,
        since_ms: 0,
        moving: None,
    };
    let rows = [
        row(20, Mode::Normal),
        row(21, Mode::Backup),
        row(22, Mode::Normal),
        row(23, Mode::Normal),
    ];
    assert_eq!(
        drain_plan(&rows, &[3, 2, 3]),
        Some(vec![
            (Ipv4Addr::new(198, 18, 1, 20), 2),
            (Ipv4Addr::new(198, 18, 1, 22), 3),
            (Ipv4Addr::new(198, 18, 1, 23), 2),
        ])
    );
    assert_eq!(drain_plan(&rows, &[]), None);
    assert_eq!(drain_plan(&[row(21, Mode::Backup)], &[]), Some(Vec::new()));
}

#[test]
fn the_configured_owner_takes_back_a_vip_its_owner_no_longer_claims() {
    let mut p = Pair::new();
    // Moved to B at epoch 1; B then restarts with the config's placement (A's) and
    // claims nothing.
    let offer = p.a.start(V, B, true, true, p.at(0)).unwrap();
    p.deliver(A, offer, 0);
    p.deliver(A, vec![send(B, V, 1, MoveMessage::StreamDone)], 10);
    let released = p.a.routes_applied(p.at(20));
    p.deliver(A, released, 20);
    assert_eq!(mode(&p.a, p.at(20)), (Mode::Backup, B, 1));
    // While B claims it, A leaves it alone, however long.
    for ms in [1000, 2000, 3000, 4000] {
        p.a.claim(B, V, 1, p.at(ms));
        assert!(p.a.tick(p.at(ms + 500), |_| true, None).is_empty());
    }
    // B up but silent about it: after RECLAIM_AFTER, A takes it back at a new epoch.
    let silent_since = 4000;
    let just_before = silent_since + RECLAIM_AFTER.as_millis() as u64 - 1;
    assert!(p.a.tick(p.at(just_before), |_| true, None).is_empty());
    assert_eq!(
        p.a.tick(p.at(just_before + 1), |_| true, None),
        vec![Effect::Routes]
    );
    assert_eq!(mode(&p.a, p.at(just_before + 1)), (Mode::Normal, A, 2));
    assert_eq!(p.a.claims(), vec![(V, 2)]);
    // The restarted B, at epoch 0, yields to that claim.
    let owned = BTreeMap::from([(V, A)]);
    let mut restarted = Moves::new(B, &owned, MoveTimers::default(), p.at(0));
    restarted.claim(A, V, 2, p.at(9000));
    assert_eq!(mode(&restarted, p.at(9000)), (Mode::Backup, A, 2));
}

#[test]
fn only_the_configured_owner_reclaims_and_never_from_a_lost_owner() {
    let t0 = Instant::now();
    let later = t0 + RECLAIM_AFTER * 2;
    // Node 3 believes B owns V (a claim at epoch 1); the config says A: not 3's to take.
    let owned = BTreeMap::from([(V, A)]);
    let mut c = Moves::new(3, &owned, MoveTimers::default(), t0);
    c.claim(B, V, 1, t0);
    assert!(c.tick(later, |_| true, None).is_empty());
    assert_eq!(c.primary(), Vec::<Ipv4Addr>::new());
    // A, the configured owner, with B lost (maybe only partitioned): no reclaim.
    let mut a = Moves::new(A, &owned, MoveTimers::default(), t0);
    a.claim(B, V, 1, t0);
    assert!(a.tick(later, |n| n != B, None).is_empty());
    assert_eq!(a.primary(), Vec::<Ipv4Addr>::new());
}

#[test]
fn a_target_claims_the_vip_as_soon_as_it_is_primary() {
    let mut p = Pair::new();
    let offer = p.a.start(V, B, true, true, p.at(0)).unwrap();
    p.deliver(A, offer, 0);
    assert!(p.b.claims().is_empty(), "not primary while streaming");
    p.deliver(A, vec![send(B, V, 1, MoveMessage::StreamDone)], 10);
    let released = p.a.routes_applied(p.at(20));
    p.deliver(A, released, 20);
    // Primary, still forwarding misses: it claims, so the source never reclaims.
    assert_eq!(p.b.claims(), vec![(V, 1)]);
}
