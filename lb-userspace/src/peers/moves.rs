//! VIP moves (docs/scale-out.md, "Moving a VIP"): the transfer processing mode table of
//! one instance and the two sides' state machines. Pure: the daemon feeds it operator
//! requests, peer messages, peer liveness and the clock, and carries out the effects it
//! returns (routes, the data path's transition table, messages, the flow stream).
//!
//! An owned VIP is announced as primary by its owner (`normal`) and as backup by every
//! other instance (`backup`), so it is never unannounced while an instance lives. A move
//! releases before it takes: the source demotes itself to backup, and only then does the
//! target promote itself, so no outcome has two primaries.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A VIP's mode on this instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// This instance owns the VIP: announced as primary.
    Normal,
    /// This instance is taking the VIP over from `owner`: misses are forwarded to it;
    /// primary once the source released the VIP.
    Transition,
    /// Another instance owns it: announced as backup.
    Backup,
}

/// One row of `lb vips`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipRow {
    pub vip: Ipv4Addr,
    pub mode: Mode,
    /// The node that announces it as primary (as this instance knows), 0: none.
    pub owner: u16,
    /// Ownership generation: +1 per move; the higher claim wins.
    pub epoch: u64,
    /// Milliseconds in this mode.
    pub since_ms: u64,
    /// A move this instance takes part in: its peer and step.
    pub moving: Option<MoveRow>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveRow {
    /// The other side: the target on the source, the source on the target.
    pub peer: u16,
    pub step: Step,
}

/// Where a move stands, on the side that shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Source: offered, waiting for the target's accept.
    Offered,
    /// Source: streaming the VIP's flows; target: receiving them.
    Streaming,
    /// Source: the target installed them; withdrawing the primary route.
    Releasing,
    /// Source: released, waiting for the target's taken. Target: primary now,
    /// forwarding misses until the drain window passes.
    Released,
}

/// Messages of a move, all carrying the VIP and the move's epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveMessage {
    /// Source → target: take this VIP over, at this epoch.
    Offer,
    /// Target → source: in transition, send the flows.
    Accept,
    /// Target → source: not now (its reason).
    Refuse(Refusal),
    /// Source → target: every flow of the VIP was sent (after the stream's batches).
    StreamDone,
    /// Target → source: the streamed flows are in its table.
    Installed,
    /// Source → target: the primary route is withdrawn; take it.
    Released,
    /// Target → source: primary now.
    Taken,
    /// Source → target: the move is off; back to backup.
    Abort,
}

/// Why a move cannot start or was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// Not an owned VIP of this cluster.
    UnknownVip,
    /// This instance does not own the VIP.
    NotOwner,
    /// A move of this VIP is already running.
    Busy,
    /// The target is not a known peer.
    UnknownPeer,
    /// The target is not up (synced and heard).
    PeerNotReady,
    /// The target is this instance.
    ToSelf,
}

impl Refusal {
    pub const ALL: [Refusal; 6] = [
        Refusal::UnknownVip,
        Refusal::NotOwner,
        Refusal::Busy,
        Refusal::UnknownPeer,
        Refusal::PeerNotReady,
        Refusal::ToSelf,
    ];

    pub const fn to_wire(self) -> u8 {
        match self {
            Refusal::UnknownVip => 1,
            Refusal::NotOwner => 2,
            Refusal::Busy => 3,
            Refusal::UnknownPeer => 4,
            Refusal::PeerNotReady => 5,
            Refusal::ToSelf => 6,
        }
    }

    pub fn from_wire(raw: u8) -> Option<Refusal> {
        Refusal::ALL.into_iter().find(|r| r.to_wire() == raw)
    }

    pub const fn reason(self) -> &'static str {
        match self {
            Refusal::UnknownVip => "not an owned VIP of this cluster (bgp.owned_vips)",
            Refusal::NotOwner => "this instance does not own the VIP",
            Refusal::Busy => "a move of this VIP is already running",
            Refusal::UnknownPeer => "the target is not one of this instance's peers",
            Refusal::PeerNotReady => "the target is not up (synced and heard)",
            Refusal::ToSelf => "the target is this instance",
        }
    }
}

/// What the daemon must do for the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send `message` about `vip` at `epoch` to `peer`.
    Send {
        peer: u16,
        vip: Ipv4Addr,
        epoch: u64,
        message: MoveMessage,
    },
    /// Stream every flow of `vip` to `peer` (upserts), then send `StreamDone`.
    StreamFlows {
        peer: u16,
        vip: Ipv4Addr,
        epoch: u64,
    },
    /// Forward the misses of `vip` to node `to` (data path), or stop (`None`).
    Forward { vip: Ipv4Addr, to: Option<u16> },
    /// The announced routes changed (`announced`): rewrite BIRD's file, and report back
    /// with [`Moves::routes_applied`] once BIRD took it.
    Routes,
}

/// Timers of a move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MoveTimers {
    /// The source waits this long for each answer of the target before it aborts.
    pub answer: Duration,
    /// The target leaves transition once no miss was forwarded for this long.
    pub drain: Duration,
}

impl Default for MoveTimers {
    fn default() -> Self {
        MoveTimers {
            answer: Duration::from_secs(10),
            drain: Duration::from_secs(2),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Source,
    Target,
}

#[derive(Clone, Copy, Debug)]
struct Move {
    side: Side,
    peer: u16,
    epoch: u64,
    step: Step,
    /// When the step began (the source's answer timer, the target's drain window).
    step_since: Instant,
}

#[derive(Clone, Copy, Debug)]
struct Vip {
    mode: Mode,
    owner: u16,
    epoch: u64,
    since: Instant,
    moving: Option<Move>,
    /// The owner in the config: the fallback when the believed owner disclaims it.
    configured_owner: u16,
    /// When the believed owner last claimed it (or became the believed owner).
    owner_heard: Instant,
}

/// A backup that is the VIP's configured owner takes it back when the believed owner is
/// up but has not claimed it for this long (it restarted with its config's placement).
/// Heartbeats, which carry the claims, come every `dead_after / 4`.
pub const RECLAIM_AFTER: Duration = Duration::from_secs(3);

/// The transfer processing mode table of one instance.
pub struct Moves {
    node_id: u16,
    timers: MoveTimers,
    vips: BTreeMap<Ipv4Addr, Vip>,
}

impl Moves {
    /// `owned`: every owned VIP of the cluster with its configured owner (epoch 0).
    pub fn new(
        node_id: u16,
        owned: &BTreeMap<Ipv4Addr, u16>,
        timers: MoveTimers,
        now: Instant,
    ) -> Moves {
        let vips = owned
            .iter()
            .map(|(&vip, &owner)| {
                let mode = if owner == node_id {
                    Mode::Normal
                } else {
                    Mode::Backup
                };
                (
                    vip,
                    Vip {
                        mode,
                        owner,
                        epoch: 0,
                        since: now,
                        moving: None,
                        configured_owner: owner,
                        owner_heard: now,
                    },
                )
            })
            .collect();
        Moves {
            node_id,
            timers,
            vips,
        }
    }

    /// The owned VIPs this instance announces as primary; every other owned VIP it
    /// announces as backup.
    pub fn primary(&self) -> Vec<Ipv4Addr> {
        self.vips
            .iter()
            .filter(|(_, v)| {
                v.mode == Mode::Normal
                    || (v.mode == Mode::Transition
                        && v.moving.is_some_and(|m| m.step == Step::Released))
            })
            .map(|(vip, _)| *vip)
            .collect()
    }

    pub fn backup(&self) -> Vec<Ipv4Addr> {
        let primary = self.primary();
        self.vips
            .keys()
            .filter(|vip| !primary.contains(vip))
            .copied()
            .collect()
    }

    pub fn rows(&self, now: Instant) -> Vec<VipRow> {
        self.vips
            .iter()
            .map(|(&vip, v)| VipRow {
                vip,
                mode: v.mode,
                owner: v.owner,
                epoch: v.epoch,
                since_ms: now.duration_since(v.since).as_millis() as u64,
                moving: v.moving.map(|m| MoveRow {
                    peer: m.peer,
                    step: m.step,
                }),
            })
            .collect()
    }

    /// The operator asks to move `vip` to `to`; `peer_up(node)` says whether a peer is up.
    /// A refusal changes nothing.
    pub fn start(
        &mut self,
        vip: Ipv4Addr,
        to: u16,
        peer_known: bool,
        peer_up: bool,
        now: Instant,
    ) -> Result<Vec<Effect>, Refusal> {
        let node_id = self.node_id;
        let v = self.vips.get_mut(&vip).ok_or(Refusal::UnknownVip)?;
        if v.moving.is_some() {
            return Err(Refusal::Busy);
        }
        if v.mode != Mode::Normal || v.owner != node_id {
            return Err(Refusal::NotOwner);
        }
        if to == node_id {
            return Err(Refusal::ToSelf);
        }
        if !peer_known {
            return Err(Refusal::UnknownPeer);
        }
        if !peer_up {
            return Err(Refusal::PeerNotReady);
        }
        let epoch = v.epoch + 1;
        v.moving = Some(Move {
            side: Side::Source,
            peer: to,
            epoch,
            step: Step::Offered,
            step_since: now,
        });
        Ok(vec![Effect::Send {
            peer: to,
            vip,
            epoch,
            message: MoveMessage::Offer,
        }])
    }

    /// A move message from peer `from`. Messages that fit no running move are ignored
    /// (a late answer after an abort, a replay the transport let through).
    pub fn message(
        &mut self,
        from: u16,
        vip: Ipv4Addr,
        epoch: u64,
        message: MoveMessage,
        now: Instant,
    ) -> Vec<Effect> {
        let node_id = self.node_id;
        let Some(v) = self.vips.get_mut(&vip) else {
            return match message {
                MoveMessage::Offer => vec![refuse(from, vip, epoch, Refusal::UnknownVip)],
                _ => Vec::new(),
            };
        };
        let current = v.moving.filter(|m| m.peer == from && m.epoch == epoch);
        match (message, current.map(|m| (m.side, m.step))) {
            (MoveMessage::Offer, _) => {
                if v.moving.is_some() {
                    return vec![refuse(from, vip, epoch, Refusal::Busy)];
                }
                if v.owner != from || epoch <= v.epoch || v.mode != Mode::Backup {
                    return vec![refuse(from, vip, epoch, Refusal::NotOwner)];
                }
                v.mode = Mode::Transition;
                v.since = now;
                v.moving = Some(Move {
                    side: Side::Target,
                    peer: from,
                    epoch,
                    step: Step::Streaming,
                    step_since: now,
                });
                vec![
                    Effect::Forward {
                        vip,
                        to: Some(from),
                    },
                    send(from, vip, epoch, MoveMessage::Accept),
                ]
            }
            (MoveMessage::Accept, Some((Side::Source, Step::Offered))) => {
                set_step(v, Step::Streaming, now);
                vec![Effect::StreamFlows {
                    peer: from,
                    vip,
                    epoch,
                }]
            }
            (MoveMessage::Refuse(_), Some((Side::Source, Step::Offered))) => {
                v.moving = None;
                Vec::new()
            }
            (MoveMessage::StreamDone, Some((Side::Target, Step::Streaming))) => {
                // The daemon answers only once the stream is installed (the same
                // barrier as a snapshot's sync-done), so this is that moment.
                vec![send(from, vip, epoch, MoveMessage::Installed)]
            }
            (MoveMessage::Installed, Some((Side::Source, Step::Streaming))) => {
                // Release: backup from now on; primary withdrawn once BIRD took it.
                v.mode = Mode::Backup;
                v.owner = from;
                v.owner_heard = now;
                v.epoch = epoch;
                v.since = now;
                set_step(v, Step::Releasing, now);
                vec![Effect::Routes]
            }
            (MoveMessage::Released, Some((Side::Target, Step::Streaming))) => {
                v.owner = node_id;
                v.epoch = epoch;
                set_step(v, Step::Released, now);
                vec![Effect::Routes, send(from, vip, epoch, MoveMessage::Taken)]
            }
            (MoveMessage::Taken, Some((Side::Source, Step::Released))) => {
                v.moving = None;
                Vec::new()
            }
            (MoveMessage::Abort, Some((Side::Target, Step::Streaming))) => {
                v.mode = Mode::Backup;
                v.since = now;
                v.moving = None;
                vec![Effect::Forward { vip, to: None }]
            }
            _ => Vec::new(),
        }
    }

    /// BIRD took the routes written for [`Effect::Routes`]: a releasing source tells
    /// its target.
    pub fn routes_applied(&mut self, now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        for (&vip, v) in &mut self.vips {
            if let Some(m) = v.moving
                && m.side == Side::Source
                && m.step == Step::Releasing
            {
                set_step(v, Step::Released, now);
                effects.push(send(m.peer, vip, m.epoch, MoveMessage::Released));
            }
        }
        effects
    }

    /// Clock and liveness: `peer_up(node)`; `last_forwarded`: when the data path last
    /// forwarded a miss to a previous owner (one counter for every VIP, so any forwarded
    /// miss keeps every transition open).
    pub fn tick(
        &mut self,
        now: Instant,
        peer_up: impl Fn(u16) -> bool,
        last_forwarded: Option<Instant>,
    ) -> Vec<Effect> {
        let timers = self.timers;
        let node_id = self.node_id;
        let forwarded_within =
            |window: Duration| last_forwarded.is_some_and(|at| now.duration_since(at) < window);
        let mut effects = Vec::new();
        for (&vip, v) in &mut self.vips {
            let Some(m) = v.moving else {
                // Only the configured owner, and only while the believed owner is up and
                // silent about the VIP: a lost owner may still be primary elsewhere (a
                // partition), and any other backup taking it would make two primaries.
                if v.mode == Mode::Backup
                    && v.configured_owner == node_id
                    && v.owner != node_id
                    && peer_up(v.owner)
                    && now.duration_since(v.owner_heard) >= RECLAIM_AFTER
                {
                    v.mode = Mode::Normal;
                    v.owner = node_id;
                    v.epoch += 1;
                    v.since = now;
                    effects.push(Effect::Routes);
                }
                continue;
            };
            let waited = now.duration_since(m.step_since);
            match (m.side, m.step) {
                // Before the release the source still owns the VIP: a silent or lost
                // target only calls the move off.
                (Side::Source, Step::Offered | Step::Streaming)
                    if waited >= timers.answer || !peer_up(m.peer) =>
                {
                    v.moving = None;
                    effects.push(send(m.peer, vip, m.epoch, MoveMessage::Abort));
                }
                // Released: the VIP is the target's whatever happens; the source keeps
                // announcing it as backup and stops waiting once the target is lost.
                (Side::Source, Step::Released) if !peer_up(m.peer) => {
                    v.moving = None;
                }
                // A target whose source is lost before the release never promotes
                // itself (a partition would make two primaries): the VIP stays with
                // every survivor's backup route, and forwarding to the lost source stops.
                (Side::Target, Step::Streaming) if !peer_up(m.peer) => {
                    v.mode = Mode::Backup;
                    v.since = now;
                    v.moving = None;
                    effects.push(Effect::Forward { vip, to: None });
                }
                (Side::Target, Step::Released)
                    if (waited >= timers.drain && !forwarded_within(timers.drain))
                        || !peer_up(m.peer) =>
                {
                    v.mode = Mode::Normal;
                    v.owner = node_id;
                    v.since = now;
                    v.moving = None;
                    effects.push(Effect::Forward { vip, to: None });
                }
                _ => {}
            }
        }
        effects
    }

    /// A peer's claim, from its heartbeats: it owns `vip` at `epoch`. A higher claim wins
    /// (an instance that restarted with its config's placement, or the other side of a
    /// healed partition, yields).
    pub fn claim(&mut self, from: u16, vip: Ipv4Addr, epoch: u64, now: Instant) -> Vec<Effect> {
        let Some(v) = self.vips.get_mut(&vip) else {
            return Vec::new();
        };
        if from == v.owner && epoch >= v.epoch {
            v.owner_heard = now;
        }
        if epoch < v.epoch || (epoch == v.epoch && v.owner == from) || v.moving.is_some() {
            return Vec::new();
        }
        // Equal epochs with different owners: the lower node id wins, everywhere alike.
        if epoch == v.epoch && from > v.owner {
            return Vec::new();
        }
        let was_primary = v.mode == Mode::Normal;
        v.mode = Mode::Backup;
        v.owner = from;
        v.owner_heard = now;
        v.epoch = epoch;
        if was_primary {
            v.since = now;
            vec![Effect::Routes]
        } else {
            Vec::new()
        }
    }

    /// What this instance claims in its heartbeats: its primary VIPs with their epochs.
    pub fn claims(&self) -> Vec<(Ipv4Addr, u64)> {
        let primary = self.primary();
        self.vips
            .iter()
            .filter(|(vip, _)| primary.contains(vip))
            .map(|(vip, v)| (*vip, v.epoch))
            .collect()
    }
}

/// `lb drain-instance`: where each owned VIP this instance announces as primary goes,
/// round-robin over `ready_peers` (node ids of peers up and ready, any order). Empty
/// when there is nothing to move; `None` when a VIP must move and no peer can take it.
pub fn drain_plan(rows: &[VipRow], ready_peers: &[u16]) -> Option<Vec<(Ipv4Addr, u16)>> {
    let mut peers = ready_peers.to_vec();
    peers.sort_unstable();
    peers.dedup();
    let owned: Vec<Ipv4Addr> = rows
        .iter()
        .filter(|r| r.mode == Mode::Normal && r.moving.is_none())
        .map(|r| r.vip)
        .collect();
    if owned.is_empty() {
        return Some(Vec::new());
    }
    if peers.is_empty() {
        return None;
    }
    Some(
        owned
            .into_iter()
            .zip(peers.iter().cycle())
            .map(|(vip, &peer)| (vip, peer))
            .collect(),
    )
}

fn set_step(v: &mut Vip, step: Step, now: Instant) {
    if let Some(m) = &mut v.moving {
        m.step = step;
        m.step_since = now;
    }
}

fn send(peer: u16, vip: Ipv4Addr, epoch: u64, message: MoveMessage) -> Effect {
    Effect::Send {
        peer,
        vip,
        epoch,
        message,
    }
}

fn refuse(peer: u16, vip: Ipv4Addr, epoch: u64, why: Refusal) -> Effect {
    send(peer, vip, epoch, MoveMessage::Refuse(why))
}

#[cfg(test)]
mod tests;
