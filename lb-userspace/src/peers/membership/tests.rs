//! Peer states, own state, and every refusal (each leaves the state as it was).

use std::net::SocketAddrV4;

use super::*;
use crate::peers::record::{FlowRecord, RecordOp};
use crate::peers::wire::Header;

const ME: u16 = 1;
const B_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const C_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
const WALL: u64 = 1_700_000_000_000;
const DEAD: Duration = Duration::from_millis(1000);

fn settings(budget: u32) -> Settings {
    Settings {
        node_id: ME,
        cluster_id: 9,
        listen: "198.18.0.1:7395".parse().unwrap(),
        peers: vec![
            PeerConfig {
                node_id: 2,
                address: SocketAddrV4::new(B_IP, 7395),
            },
            PeerConfig {
                node_id: 3,
                address: SocketAddrV4::new(C_IP, 7395),
            },
        ],
        join_timeout: Duration::from_secs(5),
        dead_after: DEAD,
        budget_per_sec: budget,
    }
}

/// A message from node `from` (at its configured address) with `sequence`.
fn msg(packet_type: PacketType, from: u16, instance: u64, sequence: u64) -> Message {
    Message {
        header: Header {
            source: Ipv4Addr::new(198, 18, 0, from as u8),
            destination: Ipv4Addr::new(198, 18, 0, 1),
            cluster_id: 9,
            packet_type,
            from_node: from,
            to_node: ME,
        },
        sequence,
        timestamp_ms: WALL,
        instance,
        state: matches!(packet_type, PacketType::Hello | PacketType::Heartbeat)
            .then_some(NodeState::Ready),
        snat: if packet_type == PacketType::Hello {
            vec![Ipv4Addr::new(198, 19, 1, from as u8)]
        } else {
            Vec::new()
        },
        announcements: if packet_type == PacketType::Announcements {
            vec![announcement(from); 3]
        } else {
            Vec::new()
        },
        move_step: (packet_type == PacketType::Move).then_some(MoveStep {
            vip: Ipv4Addr::new(198, 18, 1, 20),
            epoch: 1,
            message: crate::peers::moves::MoveMessage::Offer,
        }),
        claims: Vec::new(),
    }
}

fn announcement(owner: u16) -> Announcement {
    let at = |text: &str| text.parse().unwrap();
    Announcement {
        op: RecordOp::Upsert,
        record: FlowRecord {
            owner,
            proto: 6,
            state: 2,
            client: at("198.18.9.1:40000"),
            vip: at("198.18.1.10:80"),
            backend: at("198.19.0.11:80"),
            snat: None,
            synproxy: 0,
            wscales: 0,
            seq_delta: 0,
            ts_delta: 0,
            proxy_isn: 0,
            age_ms: 0,
        },
    }
}

struct World {
    m: Membership,
    t0: Instant,
}

impl World {
    fn new() -> World {
        Self::with_budget(ANNOUNCEMENT_BUDGET_PER_SEC)
    }

    fn with_budget(budget: u32) -> World {
        let t0 = Instant::now();
        World {
            m: Membership::new(settings(budget), t0),
            t0,
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    fn rx(&mut self, conn: ConnId, m: Message, ms: u64) -> Result<Accepted, Reject> {
        let now = self.at(ms);
        self.m.receive(conn, Ok(m), WALL + ms, now)
    }

    /// Node `from` connects on `conn`, says hello and finishes its snapshot.
    fn join(&mut self, conn: ConnId, from: u16, ms: u64) {
        self.m.accepted(conn, Ipv4Addr::new(198, 18, 0, from as u8));
        self.rx(conn, msg(PacketType::Hello, from, 7, 10), ms)
            .unwrap();
        self.sync_done(conn, from, 11, ms);
    }

    /// Node `from`'s sync-done (sequence `seq`) arrives on `conn` and the controller has
    /// installed what came before it.
    fn sync_done(&mut self, conn: ConnId, from: u16, seq: u64, ms: u64) {
        assert_eq!(
            self.rx(conn, msg(PacketType::SyncDone, from, 7, seq), ms),
            Ok(Accepted::SyncDone)
        );
        self.m.synced(conn, self.at(ms));
    }

    fn state(&self, node: u16, ms: u64) -> PeerState {
        self.m.peer_state(node, self.at(ms))
    }

    fn rejected(&mut self, reason: Reject) -> u64 {
        self.m.status(self.t0).counters.rejected[reason.name()]
    }
}

#[test]
fn a_peer_goes_connecting_syncing_up_and_down() {
    let mut w = World::new();
    assert_eq!(w.state(2, 0), PeerState::Down);
    w.m.accepted(1, B_IP);
    assert_eq!(w.state(2, 0), PeerState::Connecting);
    assert_eq!(
        w.rx(1, msg(PacketType::Hello, 2, 7, 10), 0),
        Ok(Accepted::Hello {
            node: 2,
            superseded: None,
            restarted: false
        })
    );
    assert_eq!(w.state(2, 0), PeerState::Syncing);
    // The snapshot comes as announcements before sync-done.
    assert!(matches!(
        w.rx(1, msg(PacketType::Announcements, 2, 7, 11), 10),
        Ok(Accepted::Announcements { from: 2, ref batch, sent_ms: None }) if batch.len() == 3
    ));
    w.sync_done(1, 2, 12, 20);
    assert_eq!(w.state(2, 20), PeerState::Up);
    // Live now: the batch's timestamp comes along, for the install lag.
    let live = msg(PacketType::Announcements, 2, 7, 13);
    let sent = live.timestamp_ms;
    assert!(matches!(
        w.rx(1, live, 30),
        Ok(Accepted::Announcements { sent_ms: Some(ms), .. }) if ms == sent
    ));
    w.rx(1, msg(PacketType::Heartbeat, 2, 7, 14), 500).unwrap();
    assert_eq!(w.state(2, 1500), PeerState::Up);
    assert_eq!(w.m.expire(w.at(1500)), Vec::<ConnId>::new());
    // Silent beyond dead_after: down, and its connection is closed.
    assert_eq!(w.state(2, 1501), PeerState::Down);
    assert_eq!(w.m.expire(w.at(1501)), vec![1]);
    let status = w.m.status(w.at(1501));
    assert_eq!(status.peers[0].state, PeerState::Down);
    assert_eq!(status.peers[0].last_heard_ms, Some(1001));
    assert_eq!(status.peers[0].announcements_received, 6);
    assert_eq!(status.counters.announcements_received, 6);
    assert_eq!(status.counters.messages_received, 5);
}

#[test]
fn live_nodes_are_the_live_peers_and_snat_every_peers_last_known() {
    let mut w = World::new();
    w.join(1, 2, 0);
    w.m.accepted(2, C_IP);
    w.rx(2, msg(PacketType::Hello, 3, 7, 10), 0).unwrap();
    let status = w.m.status(w.at(10));
    assert_eq!(status.live_nodes, BTreeSet::from([1, 2, 3]));
    assert_eq!(
        status.peer_snat,
        vec![Ipv4Addr::new(198, 19, 1, 2), Ipv4Addr::new(198, 19, 1, 3)]
    );
    w.m.closed(1, w.at(20));
    let status = w.m.status(w.at(20));
    assert_eq!(status.live_nodes, BTreeSet::from([1, 3]));
    // A peer gone down keeps its SNAT address backed up: its connections' replies
    // must still reach an instance that holds them.
    assert_eq!(
        status.peer_snat,
        vec![Ipv4Addr::new(198, 19, 1, 2), Ipv4Addr::new(198, 19, 1, 3)]
    );
    let mut held = BTreeMap::new();
    held.insert(3, 42);
    w.m.set_flows_held(&held);
    assert_eq!(w.m.status(w.at(20)).peers[1].flows_held, 42);
}

#[test]
fn move_steps_and_claims_go_to_the_controller() {
    let mut w = World::new();
    w.join(1, 2, 0);
    assert_eq!(
        w.rx(1, msg(PacketType::Move, 2, 7, 12), 10),
        Ok(Accepted::Move {
            from: 2,
            step: MoveStep {
                vip: Ipv4Addr::new(198, 18, 1, 20),
                epoch: 1,
                message: crate::peers::moves::MoveMessage::Offer,
            }
        })
    );
    let mut beat = msg(PacketType::Heartbeat, 2, 7, 13);
    beat.claims = vec![(Ipv4Addr::new(198, 18, 1, 20), 4)];
    assert_eq!(
        w.rx(1, beat, 20),
        Ok(Accepted::Claims {
            from: 2,
            claims: vec![(Ipv4Addr::new(198, 18, 1, 20), 4)]
        })
    );
    // A move step on a connection no hello bound is refused like any other message.
    w.m.accepted(5, C_IP);
    assert_eq!(
        w.rx(5, msg(PacketType::Move, 3, 7, 1), 30),
        Err(Reject::UnexpectedType)
    );
}

#[test]
fn transition_lasts_until_every_reachable_peer_is_synced() {
    let mut w = World::new();
    assert_eq!(w.m.own_state(w.at(0)), NodeState::Transition);
    // Node 3 is unreachable: it does not hold the instance back.
    w.m.outgoing(3, false, w.at(10));
    // Node 2 is reachable and syncing: still transition.
    w.m.outgoing(2, true, w.at(10));
    w.m.accepted(1, B_IP);
    w.rx(1, msg(PacketType::Hello, 2, 7, 10), 20).unwrap();
    assert_eq!(w.m.own_state(w.at(30)), NodeState::Transition);
    assert!(!w.m.status(w.at(30)).ready);
    // Sync-done received, its snapshot not installed yet: still transition.
    assert_eq!(
        w.rx(1, msg(PacketType::SyncDone, 2, 7, 11), 40),
        Ok(Accepted::SyncDone)
    );
    assert_eq!(w.state(2, 40), PeerState::Syncing);
    assert_eq!(w.m.own_state(w.at(40)), NodeState::Transition);
    w.m.synced(1, w.at(45));
    assert_eq!(w.m.own_state(w.at(45)), NodeState::Ready);
    // Ready for good: a peer lost later does not bring transition back.
    w.m.closed(1, w.at(50));
    assert_eq!(w.m.own_state(w.at(50)), NodeState::Ready);
    w.m.set_draining();
    assert_eq!(w.m.own_state(w.at(60)), NodeState::Draining);
    assert!(w.m.status(w.at(60)).ready);
}

#[test]
fn join_timeout_ends_transition() {
    let mut w = World::new();
    w.m.outgoing(2, true, w.at(0));
    w.m.outgoing(3, true, w.at(0));
    w.m.accepted(1, B_IP);
    w.rx(1, msg(PacketType::Hello, 2, 7, 10), 0).unwrap();
    // Keeps talking, never finishes its snapshot.
    w.rx(1, msg(PacketType::Heartbeat, 2, 7, 11), 4000).unwrap();
    assert_eq!(w.m.own_state(w.at(4999)), NodeState::Transition);
    assert_eq!(w.m.own_state(w.at(5000)), NodeState::Ready);
}

#[test]
fn without_peers_or_join_timeout_an_instance_is_ready_at_once() {
    let t0 = Instant::now();
    let mut alone = settings(1);
    alone.peers.clear();
    assert_eq!(Membership::new(alone, t0).own_state(t0), NodeState::Ready);
    let mut impatient = settings(1);
    impatient.join_timeout = Duration::ZERO;
    assert_eq!(
        Membership::new(impatient, t0).own_state(t0),
        NodeState::Ready
    );
}

/// `bad` is refused for `reason`, and nothing but that counter changes.
#[track_caller]
fn assert_refused(w: &mut World, conn: ConnId, bad: Message, reason: Reject) {
    let before = w.m.status(w.at(100));
    let count = w.rejected(reason);
    assert_eq!(w.rx(conn, bad, 100), Err(reason));
    let after = w.m.status(w.at(100));
    assert_eq!(w.rejected(reason), count + 1);
    assert_eq!(after.peers, before.peers);
    assert_eq!(
        after.counters.messages_received,
        before.counters.messages_received
    );
    assert_eq!(after.state, before.state);
}

#[test]
fn every_bad_message_is_refused_by_reason_and_changes_nothing() {
    let mut w = World::new();
    w.join(1, 2, 0);
    // Not a hello first.
    w.m.accepted(2, C_IP);
    assert_refused(
        &mut w,
        2,
        msg(PacketType::Heartbeat, 3, 7, 50),
        Reject::UnexpectedType,
    );
    // A second hello on a bound connection.
    assert_refused(
        &mut w,
        1,
        msg(PacketType::Hello, 2, 7, 50),
        Reject::UnexpectedType,
    );
    // Unknown node.
    w.m.accepted(3, Ipv4Addr::new(198, 18, 0, 9));
    assert_refused(
        &mut w,
        3,
        msg(PacketType::Hello, 9, 7, 50),
        Reject::UnknownNode,
    );
    let mut own = msg(PacketType::Hello, 1, 7, 50);
    own.header.source = Ipv4Addr::new(198, 18, 0, 9);
    assert_refused(&mut w, 3, own, Reject::UnknownNode);
    // For another node.
    let mut other = msg(PacketType::Hello, 3, 7, 50);
    other.header.to_node = 2;
    assert_refused(&mut w, 2, other, Reject::Misdirected);
    // Node 3's hello from node 2's address, and with another header address.
    w.m.accepted(4, B_IP);
    assert_refused(
        &mut w,
        4,
        msg(PacketType::Hello, 3, 7, 50),
        Reject::AddressMismatch,
    );
    let mut spoofed = msg(PacketType::Hello, 3, 7, 50);
    spoofed.header.source = B_IP;
    assert_refused(&mut w, 2, spoofed, Reject::AddressMismatch);
    // On node 2's connection: node 3's message, and another instance's.
    assert_refused(
        &mut w,
        1,
        msg(PacketType::Heartbeat, 3, 7, 50),
        Reject::NodeMismatch,
    );
    assert_refused(
        &mut w,
        1,
        msg(PacketType::Heartbeat, 2, 8, 50),
        Reject::NodeMismatch,
    );
    // Replayed: the sequence of an accepted message, or below.
    assert_refused(
        &mut w,
        1,
        msg(PacketType::Heartbeat, 2, 7, 11),
        Reject::Replay,
    );
    assert_refused(
        &mut w,
        1,
        msg(PacketType::Announcements, 2, 7, 5),
        Reject::Replay,
    );
    // 30 s off either way.
    let mut old = msg(PacketType::Heartbeat, 2, 7, 60);
    old.timestamp_ms = WALL + 100 - MAX_CLOCK_SKEW_MS - 1;
    assert_refused(&mut w, 1, old, Reject::Stale);
    let mut ahead = msg(PacketType::Heartbeat, 2, 7, 60);
    ahead.timestamp_ms = WALL + 100 + MAX_CLOCK_SKEW_MS + 1;
    assert_refused(&mut w, 1, ahead, Reject::Stale);
    // Decoding refusals are counted by theirs.
    for (error, reason) in [
        (DecodeError::Truncated(3), Reject::Truncated),
        (
            DecodeError::Oversized {
                len: 70_000,
                max: 65_536,
            },
            Reject::Oversized,
        ),
        (DecodeError::WrongCluster(8), Reject::WrongCluster),
        (DecodeError::BadTag, Reject::BadTag),
        (DecodeError::Malformed("x".into()), Reject::Malformed),
    ] {
        let count = w.rejected(reason);
        assert_eq!(w.m.receive(1, Err(error), WALL, w.at(100)), Err(reason));
        assert_eq!(w.rejected(reason), count + 1);
    }
    // Still up, and the good sequence goes on.
    assert_eq!(w.state(2, 100), PeerState::Up);
    w.rx(1, msg(PacketType::Heartbeat, 2, 7, 12), 100).unwrap();
}

#[test]
fn sequences_keep_rising_across_connections() {
    let mut w = World::new();
    w.join(1, 2, 0);
    w.m.closed(1, w.at(10));
    // A recorded hello replayed on a new connection.
    w.m.accepted(2, B_IP);
    assert_refused(&mut w, 2, msg(PacketType::Hello, 2, 7, 10), Reject::Replay);
    // The same instance going on: accepted, and not a restart.
    assert_eq!(
        w.rx(2, msg(PacketType::Hello, 2, 7, 12), 100),
        Ok(Accepted::Hello {
            node: 2,
            superseded: None,
            restarted: false
        })
    );
    // A new instance (restarted peer), on a third connection, supersedes the second.
    w.m.accepted(3, B_IP);
    assert_eq!(
        w.rx(3, msg(PacketType::Hello, 2, 8, 1), 200),
        Ok(Accepted::Hello {
            node: 2,
            superseded: Some(2),
            restarted: true
        })
    );
    // The superseded connection is not the peer's any more.
    assert_eq!(
        w.rx(2, msg(PacketType::Heartbeat, 2, 7, 13), 200),
        Err(Reject::UnexpectedType)
    );
}

#[test]
fn live_announcements_beyond_the_budget_are_dropped_and_counted() {
    // 5 per second; batches of 3.
    let mut w = World::with_budget(5);
    w.m.accepted(1, B_IP);
    w.rx(1, msg(PacketType::Hello, 2, 7, 10), 0).unwrap();
    // The snapshot is not budgeted.
    for seq in 11..15 {
        assert!(matches!(
            w.rx(1, msg(PacketType::Announcements, 2, 7, seq), 0),
            Ok(Accepted::Announcements { .. })
        ));
    }
    w.sync_done(1, 2, 15, 0);
    assert!(matches!(
        w.rx(1, msg(PacketType::Announcements, 2, 7, 16), 0),
        Ok(Accepted::Announcements { .. })
    ));
    // 2 tokens left, 3 wanted.
    assert_eq!(
        w.rx(1, msg(PacketType::Announcements, 2, 7, 17), 0),
        Ok(Accepted::Nothing)
    );
    assert_eq!(w.rejected(Reject::OverBudget), 3);
    let status = w.m.status(w.at(0));
    assert_eq!(status.peers[0].announcements_received, 15);
    // A second later the bucket is full again.
    assert!(matches!(
        w.rx(1, msg(PacketType::Announcements, 2, 7, 18), 1000),
        Ok(Accepted::Announcements { .. })
    ));
}

#[test]
fn install_lag_is_nearest_rank_over_the_latest_window() {
    assert_eq!(InstallLag::of([]), None);
    assert_eq!(
        InstallLag::of([7]),
        Some(InstallLag {
            samples: 1,
            p50_ms: 7,
            p99_ms: 7,
            max_ms: 7
        })
    );
    // 1..=100: the 50th and 99th values.
    let lag = InstallLag::of((1..=100).rev()).unwrap();
    assert_eq!((lag.p50_ms, lag.p99_ms, lag.max_ms), (50, 99, 100));
    let mut w = World::new();
    assert_eq!(w.m.status(w.at(0)).install_lag, None);
    // Only the latest window counts: the old large lags fall out.
    w.m.record_install_lags(std::iter::repeat_n(500, 10));
    w.m.record_install_lags(std::iter::repeat_n(2, INSTALL_LAG_WINDOW));
    let lag = w.m.status(w.at(0)).install_lag.unwrap();
    assert_eq!(lag.samples, INSTALL_LAG_WINDOW as u64);
    assert_eq!((lag.p50_ms, lag.p99_ms, lag.max_ms), (2, 2, 2));
}
