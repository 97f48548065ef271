//! Who the peers are and what this instance makes of them (docs/scale-out.md, "Peer
//! protocol"): each peer's state, the checks every received message passes (sequence,
//! timestamp, node, address), the per-peer announcement budget, and this instance's
//! own state (transition → ready, draining). Pure: the transport (`io.rs`) feeds it
//! messages and clock readings.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::record::Announcement;
use super::wire::{DecodeError, Message, MoveStep, NodeState, PacketType};
use crate::config::{PeerConfig, PeersConfig};

/// Accepted distance between a message's timestamp and this instance's clock.
pub const MAX_CLOCK_SKEW_MS: u64 = 30_000;
/// Live announcements one peer may send per second (a token bucket holding one
/// second's worth); its snapshot, before sync-done, is not budgeted.
pub const ANNOUNCEMENT_BUDGET_PER_SEC: u32 = 200_000;
/// Sequence state of a peer's earlier instances is kept this long: a message of theirs
/// is stale by then.
const FORGET_INSTANCE_AFTER: Duration = Duration::from_secs(2 * MAX_CLOCK_SKEW_MS / 1000);

/// One incoming connection, numbered by the transport.
pub type ConnId = u64;

/// Why a received message (or, for `OverBudget`, announcement) was dropped. Nothing
/// else changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reject {
    /// Length prefix below a header and a tag: the connection is closed.
    Truncated,
    /// Length prefix above `MAX_MESSAGE`: the connection is closed.
    Oversized,
    WrongCluster,
    BadTag,
    Malformed,
    /// Anything but a hello first, or a second hello on a connection.
    UnexpectedType,
    /// Sender node id not among `[peers]`.
    UnknownNode,
    /// Receiver node id not this instance's.
    Misdirected,
    /// The connection's or header's address is not the sender's configured one.
    AddressMismatch,
    /// Node id or instance differs from the connection's hello.
    NodeMismatch,
    /// Sequence not above the last one from that node instance.
    Replay,
    /// Timestamp more than 30 s from this instance's clock.
    Stale,
    /// Live announcements beyond the sender's budget (counted per announcement).
    OverBudget,
    /// Authentic announcements that the flow table refused (docs/scale-out.md, "Who may
    /// change what"), counted per announcement: no service here at the record's VIP,
    /// port and protocol; no such backend in it; a change to the forwarding of a flow
    /// this instance owns; a removal from other than the copy's owner.
    UnknownService,
    UnknownBackend,
    OwnedByReceiver,
    OwnerMismatch,
}

impl Reject {
    pub const ALL: [Reject; 17] = [
        Reject::Truncated,
        Reject::Oversized,
        Reject::WrongCluster,
        Reject::BadTag,
        Reject::Malformed,
        Reject::UnexpectedType,
        Reject::UnknownNode,
        Reject::Misdirected,
        Reject::AddressMismatch,
        Reject::NodeMismatch,
        Reject::Replay,
        Reject::Stale,
        Reject::OverBudget,
        Reject::UnknownService,
        Reject::UnknownBackend,
        Reject::OwnedByReceiver,
        Reject::OwnerMismatch,
    ];

    /// Counter name (`lb peers`, metric label `reason`).
    pub const fn name(self) -> &'static str {
        match self {
            Reject::Truncated => "truncated",
            Reject::Oversized => "oversized",
            Reject::WrongCluster => "wrong_cluster",
            Reject::BadTag => "bad_tag",
            Reject::Malformed => "malformed",
            Reject::UnexpectedType => "unexpected_type",
            Reject::UnknownNode => "unknown_node",
            Reject::Misdirected => "misdirected",
            Reject::AddressMismatch => "address_mismatch",
            Reject::NodeMismatch => "node_mismatch",
            Reject::Replay => "replay",
            Reject::Stale => "stale",
            Reject::OverBudget => "over_budget",
            Reject::UnknownService => "unknown_service",
            Reject::UnknownBackend => "unknown_backend",
            Reject::OwnedByReceiver => "owned_by_receiver",
            Reject::OwnerMismatch => "owner_mismatch",
        }
    }

    pub fn of(error: &DecodeError) -> Reject {
        match error {
            DecodeError::Truncated(_) => Reject::Truncated,
            DecodeError::Oversized { .. } => Reject::Oversized,
            DecodeError::WrongCluster(_) => Reject::WrongCluster,
            DecodeError::BadTag => Reject::BadTag,
            DecodeError::Malformed(_) => Reject::Malformed,
        }
    }
}

/// A peer as this instance sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerState {
    /// Not heard within `dead_after` (or never).
    Down,
    /// A connection from its address is open; no hello yet.
    Connecting,
    /// Hello heard, its snapshot still coming.
    Syncing,
    /// Sync-done heard, and heard within `dead_after`.
    Up,
}

/// Whether this instance's own connection to a peer got through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outgoing {
    /// No attempt finished yet.
    Unknown,
    Connected,
    /// The last attempt failed (refused, timed out) or the connection was dropped.
    Failed,
}

/// Counters of the whole protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerCounters {
    /// Messages accepted.
    pub messages_received: u64,
    pub announcements_sent: u64,
    /// Bytes of the announcement messages sent (frames whole: length, header, HMAC).
    pub announcement_bytes_sent: u64,
    pub announcements_received: u64,
    /// Announcements the controller applied to its flow table.
    pub announcements_applied: u64,
    /// Announcements not queued for a peer because its queue was full (its connection
    /// is dropped and resynchronised).
    pub queue_overflows: u64,
    /// Incoming connections closed at once: too many were open.
    pub connections_refused: u64,
    /// Dropped messages by reason ([`Reject::name`]); `over_budget` counts announcements.
    pub rejected: BTreeMap<String, u64>,
}

/// One row of `lb peers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRow {
    pub node_id: u16,
    pub address: SocketAddrV4,
    pub state: PeerState,
    /// The state it announced (hello, heartbeat), while not down.
    pub announced: Option<NodeState>,
    pub outgoing: Outgoing,
    /// Milliseconds since its last accepted message; `None`: never.
    pub last_heard_ms: Option<u64>,
    /// Flows of this owner in the local flow table (as of the collector's last pass).
    pub flows_held: u64,
    /// Delay of its last announcement batch: local clock minus the batch's timestamp.
    pub lag_ms: Option<u64>,
    pub announcements_received: u64,
    /// Live announcements waiting in the queue to it.
    pub queued: u64,
    /// The SNAT addresses its hello listed.
    pub snat: Vec<Ipv4Addr>,
}

/// `lb peers`: this instance, its peers, the counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeersStatus {
    pub node_id: u16,
    pub cluster_id: u16,
    pub listen: SocketAddrV4,
    pub state: NodeState,
    /// Transition is over (and stays over): routes may be announced.
    pub ready: bool,
    /// This instance and every peer heard within `dead_after` (syncing or up).
    pub live_nodes: BTreeSet<u16>,
    /// The SNAT addresses every peer announced in its last hello, live or not: this
    /// instance backs them up on the routers, so that when a peer is lost (or drained
    /// and stopped) the servers' replies to its connections reach an instance that
    /// holds them (docs/scale-out.md, "Routes").
    pub peer_snat: Vec<Ipv4Addr>,
    pub join_timeout_ms: u64,
    pub dead_after_ms: u64,
    pub peers: Vec<PeerRow>,
    /// From a flow's creation at its owner to its copy installed here, over the latest
    /// new flows peers announced live (none: no such flow yet).
    pub install_lag: Option<InstallLag>,
    pub counters: PeerCounters,
}

/// Percentiles of the install lag: the owner's clock at creation (the record's age
/// subtracted from the batch's timestamp) to this instance's clock once the copy is in
/// the flow table. Whole milliseconds, as the wire carries them; clocks are assumed in
/// step (NTP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallLag {
    /// New flows the percentiles are over (at most [`INSTALL_LAG_WINDOW`]).
    pub samples: u64,
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

/// Latest install lags kept for [`InstallLag`].
pub const INSTALL_LAG_WINDOW: usize = 4096;

impl InstallLag {
    /// Nearest-rank percentiles of `lags`; `None` when empty.
    pub fn of(lags: impl IntoIterator<Item = u64>) -> Option<InstallLag> {
        let mut sorted: Vec<u64> = lags.into_iter().collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_unstable();
        let rank = |p: usize| sorted[(sorted.len() * p).div_ceil(100).max(1) - 1];
        Some(InstallLag {
            samples: sorted.len() as u64,
            p50_ms: rank(50),
            p99_ms: rank(99),
            max_ms: sorted[sorted.len() - 1],
        })
    }
}

/// What an accepted message asks of the transport.
#[derive(Debug, PartialEq, Eq)]
pub enum Accepted {
    /// Nothing more to do.
    Nothing,
    /// A hello bound the connection to `node`. An older connection of that node is
    /// closed; with a new instance (the peer restarted), this instance's own
    /// connection to it starts over, so the peer gets a fresh snapshot.
    Hello {
        node: u16,
        superseded: Option<ConnId>,
        restarted: bool,
    },
    /// Announcements for the controller. `sent_ms`: the batch's timestamp when it is
    /// live (after the sender's snapshot), for the install lag; `None` in a snapshot.
    Announcements {
        from: u16,
        batch: Vec<Announcement>,
        sent_ms: Option<u64>,
    },
    /// The peer's snapshot is complete. It counts (`Membership::synced`) only once the
    /// controller has installed every batch before it: until then this instance would
    /// take traffic for flows it does not hold yet.
    SyncDone,
    /// A step of a VIP move, for the controller's mode table.
    Move { from: u16, step: MoveStep },
    /// The owned VIPs a peer announces as primary (hello, heartbeat), with epochs.
    Claims {
        from: u16,
        claims: Vec<(Ipv4Addr, u64)>,
    },
}

struct Peer {
    config: PeerConfig,
    /// The connection its hello bound, and the hello's instance.
    bound: Option<(ConnId, u64)>,
    sync_done: bool,
    announced: Option<NodeState>,
    last_heard: Option<Instant>,
    last_instance: Option<u64>,
    outgoing: Outgoing,
    flows_held: u64,
    lag_ms: Option<u64>,
    announcements_received: u64,
    queued: u64,
    snat: Vec<Ipv4Addr>,
    /// Announcement budget: tokens and when they were last topped up.
    tokens: f64,
    refilled: Instant,
    /// Last sequence of each recent instance, and when it was heard.
    sequences: HashMap<u64, (u64, Instant)>,
}

/// An incoming connection: where it comes from.
struct Conn {
    from: Ipv4Addr,
}

/// Settings taken from `[peers]`, and the budget.
#[derive(Clone, Debug)]
pub struct Settings {
    pub node_id: u16,
    pub cluster_id: u16,
    pub listen: SocketAddrV4,
    pub peers: Vec<PeerConfig>,
    pub join_timeout: Duration,
    pub dead_after: Duration,
    pub budget_per_sec: u32,
}

impl Settings {
    pub fn from_config(config: &PeersConfig) -> Settings {
        Settings {
            node_id: config.node_id,
            cluster_id: config.cluster_id,
            listen: config.listen,
            peers: config.members.clone(),
            join_timeout: config.join_timeout,
            dead_after: config.dead_after,
            budget_per_sec: ANNOUNCEMENT_BUDGET_PER_SEC,
        }
    }
}

pub struct Membership {
    settings: Settings,
    started: Instant,
    peers: BTreeMap<u16, Peer>,
    conns: HashMap<ConnId, Conn>,
    draining: bool,
    ready: bool,
    counters: PeerCounters,
    /// The latest new flows' install lags, oldest first.
    install_lags: VecDeque<u64>,
}

impl Membership {
    pub fn new(settings: Settings, now: Instant) -> Membership {
        let peers = settings
            .peers
            .iter()
            .map(|config| {
                (
                    config.node_id,
                    Peer {
                        config: config.clone(),
                        bound: None,
                        sync_done: false,
                        announced: None,
                        last_heard: None,
                        last_instance: None,
                        outgoing: Outgoing::Unknown,
                        flows_held: 0,
                        lag_ms: None,
                        announcements_received: 0,
                        queued: 0,
                        snat: Vec::new(),
                        tokens: f64::from(settings.budget_per_sec),
                        refilled: now,
                        sequences: HashMap::new(),
                    },
                )
            })
            .collect();
        let counters = PeerCounters {
            rejected: Reject::ALL
                .iter()
                .map(|r| (r.name().to_string(), 0))
                .collect(),
            ..PeerCounters::default()
        };
        let mut membership = Membership {
            settings,
            started: now,
            peers,
            conns: HashMap::new(),
            draining: false,
            ready: false,
            counters,
            install_lags: VecDeque::new(),
        };
        membership.update_ready(now);
        membership
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// A connection from `from` was accepted.
    pub fn accepted(&mut self, conn: ConnId, from: Ipv4Addr) {
        self.conns.insert(conn, Conn { from });
    }

    /// A connection closed (either side). Its peer goes down if it was bound to it.
    pub fn closed(&mut self, conn: ConnId, now: Instant) {
        self.conns.remove(&conn);
        for peer in self.peers.values_mut() {
            if peer.bound.is_some_and(|(c, _)| c == conn) {
                peer.bound = None;
                peer.sync_done = false;
            }
        }
        self.update_ready(now);
    }

    pub fn reject(&mut self, reason: Reject, count: u64) {
        *self
            .counters
            .rejected
            .entry(reason.name().to_string())
            .or_default() += count;
    }

    /// Judges one message read from `conn`: decoded (`message`), at local wall clock
    /// `wall_ms` and monotonic `now`. A refusal changes nothing but its counter.
    pub fn receive(
        &mut self,
        conn: ConnId,
        message: Result<Message, DecodeError>,
        wall_ms: u64,
        now: Instant,
    ) -> Result<Accepted, Reject> {
        let result = self.judge(conn, message, wall_ms, now);
        match &result {
            Ok(_) => self.counters.messages_received += 1,
            Err(reason) => self.reject(*reason, 1),
        }
        self.update_ready(now);
        result
    }

    fn judge(
        &mut self,
        conn: ConnId,
        message: Result<Message, DecodeError>,
        wall_ms: u64,
        now: Instant,
    ) -> Result<Accepted, Reject> {
        let message = message.map_err(|e| Reject::of(&e))?;
        let h = message.header;
        let Some(from) = self.conns.get(&conn).map(|c| c.from) else {
            // The transport only passes messages of connections it announced.
            return Err(Reject::UnexpectedType);
        };
        if h.to_node != self.settings.node_id {
            return Err(Reject::Misdirected);
        }
        // The node and instance whose hello bound this connection.
        let bound = self.peers.iter().find_map(|(id, p)| {
            p.bound
                .filter(|(c, _)| *c == conn)
                .map(|(_, instance)| (*id, instance))
        });
        match (h.packet_type, bound) {
            (PacketType::Hello, None) => {}
            (PacketType::Hello, Some(_)) | (_, None) => return Err(Reject::UnexpectedType),
            (_, Some((node, instance))) => {
                if node != h.from_node || instance != message.instance {
                    return Err(Reject::NodeMismatch);
                }
            }
        }
        let Some(peer) = self.peers.get_mut(&h.from_node) else {
            return Err(Reject::UnknownNode);
        };
        if from != *peer.config.address.ip() || h.source != from {
            return Err(Reject::AddressMismatch);
        }
        if wall_ms.abs_diff(message.timestamp_ms) > MAX_CLOCK_SKEW_MS {
            return Err(Reject::Stale);
        }
        peer.sequences
            .retain(|_, (_, heard)| now.duration_since(*heard) < FORGET_INSTANCE_AFTER);
        if peer
            .sequences
            .get(&message.instance)
            .is_some_and(|(last, _)| message.sequence <= *last)
        {
            return Err(Reject::Replay);
        }
        // Budget last: a refused batch spends no tokens.
        if h.packet_type == PacketType::Announcements && peer.sync_done {
            let elapsed = now.duration_since(peer.refilled).as_secs_f64();
            let rate = f64::from(self.settings.budget_per_sec);
            peer.tokens = (peer.tokens + elapsed * rate).min(rate);
            peer.refilled = now;
            let wanted = message.announcements.len() as f64;
            if wanted > peer.tokens {
                let count = message.announcements.len() as u64;
                // Authentic and in order: the sequence is used up, the batch is not.
                peer.sequences
                    .insert(message.instance, (message.sequence, now));
                peer.last_heard = Some(now);
                self.reject(Reject::OverBudget, count);
                // Counted per announcement above, not as a message.
                return Ok(Accepted::Nothing);
            }
            peer.tokens -= wanted;
        }

        peer.sequences
            .insert(message.instance, (message.sequence, now));
        peer.last_heard = Some(now);
        Ok(match h.packet_type {
            PacketType::Hello => {
                let superseded = peer.bound.map(|(c, _)| c).filter(|c| *c != conn);
                let restarted = peer
                    .last_instance
                    .is_some_and(|instance| instance != message.instance);
                peer.bound = Some((conn, message.instance));
                peer.last_instance = Some(message.instance);
                peer.sync_done = false;
                peer.announced = message.state;
                peer.snat = message.snat;
                peer.lag_ms = None;
                if let Some(old) = superseded {
                    self.conns.remove(&old);
                }
                Accepted::Hello {
                    node: h.from_node,
                    superseded,
                    restarted,
                }
            }
            PacketType::Heartbeat => {
                peer.announced = message.state;
                if message.claims.is_empty() {
                    Accepted::Nothing
                } else {
                    Accepted::Claims {
                        from: h.from_node,
                        claims: message.claims,
                    }
                }
            }
            PacketType::Move => match message.move_step {
                Some(step) => Accepted::Move {
                    from: h.from_node,
                    step,
                },
                None => Accepted::Nothing,
            },
            PacketType::SyncDone => Accepted::SyncDone,
            PacketType::Announcements => {
                let count = message.announcements.len() as u64;
                peer.announcements_received += count;
                peer.lag_ms = Some(wall_ms.saturating_sub(message.timestamp_ms));
                self.counters.announcements_received += count;
                Accepted::Announcements {
                    from: h.from_node,
                    batch: message.announcements,
                    sent_ms: peer.sync_done.then_some(message.timestamp_ms),
                }
            }
        })
    }

    /// The controller has installed the snapshot that connection `conn` ended with
    /// `SyncDone`: its peer is up, unless the connection was replaced or closed meanwhile.
    pub fn synced(&mut self, conn: ConnId, now: Instant) {
        if let Some(peer) = self
            .peers
            .values_mut()
            .find(|p| p.bound.is_some_and(|(c, _)| c == conn))
        {
            peer.sync_done = true;
            // The snapshot may have taken the whole budget's worth of time.
            peer.refilled = now;
        }
        self.update_ready(now);
    }

    /// Called often (every heartbeat interval at least): the bound connections of
    /// peers silent beyond `dead_after`, which the transport closes (the peer is down).
    pub fn expire(&mut self, now: Instant) -> Vec<ConnId> {
        let dead_after = self.settings.dead_after;
        let mut close = Vec::new();
        for peer in self.peers.values_mut() {
            let silent = peer
                .last_heard
                .is_none_or(|heard| now.duration_since(heard) > dead_after);
            if silent && let Some((conn, _)) = peer.bound.take() {
                peer.sync_done = false;
                close.push(conn);
            }
        }
        for conn in &close {
            self.conns.remove(conn);
        }
        self.update_ready(now);
        close
    }

    /// This instance's own connection to `node`: connected, or failed/dropped.
    pub fn outgoing(&mut self, node: u16, connected: bool, now: Instant) {
        if let Some(peer) = self.peers.get_mut(&node) {
            peer.outgoing = if connected {
                Outgoing::Connected
            } else {
                Outgoing::Failed
            };
        }
        self.update_ready(now);
    }

    /// One announcement message sent: `announcements` in `bytes`.
    pub fn count_sent(&mut self, announcements: u64, bytes: u64) {
        self.counters.announcements_sent += announcements;
        self.counters.announcement_bytes_sent += bytes;
    }

    /// Install lags of new flows from a live batch, in milliseconds.
    pub fn record_install_lags(&mut self, lags: impl IntoIterator<Item = u64>) {
        for lag in lags {
            if self.install_lags.len() == INSTALL_LAG_WINDOW {
                self.install_lags.pop_front();
            }
            self.install_lags.push_back(lag);
        }
    }

    pub fn count_applied(&mut self, announcements: u64) {
        self.counters.announcements_applied += announcements;
    }

    pub fn count_refused_connection(&mut self) {
        self.counters.connections_refused += 1;
    }

    pub fn count_overflow(&mut self, announcements: u64) {
        self.counters.queue_overflows += announcements;
    }

    pub fn set_queued(&mut self, node: u16, queued: u64) {
        if let Some(peer) = self.peers.get_mut(&node) {
            peer.queued = queued;
        }
    }

    /// Flows held per owner, from the controller's flow table.
    pub fn set_flows_held(&mut self, by_owner: &BTreeMap<u16, u64>) {
        for (id, peer) in &mut self.peers {
            peer.flows_held = by_owner.get(id).copied().unwrap_or(0);
        }
    }

    pub fn set_draining(&mut self) {
        self.draining = true;
    }

    pub fn peer_state(&self, node: u16, now: Instant) -> PeerState {
        self.peers
            .get(&node)
            .map_or(PeerState::Down, |peer| self.state_of(peer, now))
    }

    fn state_of(&self, peer: &Peer, now: Instant) -> PeerState {
        let heard = peer
            .last_heard
            .is_some_and(|heard| now.duration_since(heard) <= self.settings.dead_after);
        match (peer.bound, heard) {
            (Some(_), true) if peer.sync_done => PeerState::Up,
            (Some(_), true) => PeerState::Syncing,
            _ if self
                .conns
                .values()
                .any(|c| c.from == *peer.config.address.ip())
                && peer.bound.is_none() =>
            {
                PeerState::Connecting
            }
            _ => PeerState::Down,
        }
    }

    /// Transition ends, for good, when every peer is either up or known unreachable
    /// (down, and this instance's own connection to it failed), or at `join_timeout`.
    fn update_ready(&mut self, now: Instant) {
        if self.ready {
            return;
        }
        let settled = self
            .peers
            .values()
            .all(|peer| match self.state_of(peer, now) {
                PeerState::Up => true,
                PeerState::Down => peer.outgoing == Outgoing::Failed,
                PeerState::Connecting | PeerState::Syncing => false,
            });
        if settled || now.duration_since(self.started) >= self.settings.join_timeout {
            self.ready = true;
        }
    }

    pub fn own_state(&mut self, now: Instant) -> NodeState {
        self.update_ready(now);
        if self.draining {
            NodeState::Draining
        } else if self.ready {
            NodeState::Ready
        } else {
            NodeState::Transition
        }
    }

    pub fn status(&mut self, now: Instant) -> PeersStatus {
        let state = self.own_state(now);
        let mut live_nodes = BTreeSet::from([self.settings.node_id]);
        let mut peer_snat = Vec::new();
        let mut rows = Vec::new();
        for (id, peer) in &self.peers {
            let peer_state = self.state_of(peer, now);
            let live = matches!(peer_state, PeerState::Syncing | PeerState::Up);
            if live {
                live_nodes.insert(*id);
            }
            peer_snat.extend(peer.snat.iter().copied());
            rows.push(PeerRow {
                node_id: *id,
                address: peer.config.address,
                state: peer_state,
                announced: if live { peer.announced } else { None },
                outgoing: peer.outgoing,
                last_heard_ms: peer
                    .last_heard
                    .map(|heard| now.duration_since(heard).as_millis() as u64),
                flows_held: peer.flows_held,
                lag_ms: peer.lag_ms,
                announcements_received: peer.announcements_received,
                queued: peer.queued,
                snat: peer.snat.clone(),
            });
        }
        peer_snat.sort_unstable();
        peer_snat.dedup();
        PeersStatus {
            node_id: self.settings.node_id,
            cluster_id: self.settings.cluster_id,
            listen: self.settings.listen,
            state,
            ready: self.ready,
            live_nodes,
            peer_snat,
            join_timeout_ms: self.settings.join_timeout.as_millis() as u64,
            dead_after_ms: self.settings.dead_after.as_millis() as u64,
            peers: rows,
            install_lag: InstallLag::of(self.install_lags.iter().copied()),
            counters: self.counters.clone(),
        }
    }
}

#[cfg(test)]
mod tests;
