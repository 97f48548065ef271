//! VIP moves in the daemon (docs/scale-out.md, "Moving a VIP"): the operator's request,
//! the peers' move steps and claims fed to the mode table (`peers/moves.rs`), and what
//! it asks done: messages, the VIP's flow stream, the routes, the data path's
//! forwarding of misses to the previous owner.

use super::*;
use crate::peers::moves::{Effect, MoveMessage, VipRow};
use crate::peers::wire::MoveStep;

/// Move-related state besides the mode table.
#[derive(Default)]
pub struct MoveIo {
    /// A release's routes were handed to the announcer; BIRD has not taken them yet.
    pub routes_pending: bool,
    /// `tunnel_forwarded` at the last tick, and when it last grew.
    pub forwarded: u64,
    pub forwarded_at: Option<Instant>,
}

impl Controller {
    /// `lb vip move VIP --to NODE`: starts the move (or refuses it, changing nothing).
    pub(super) fn start_vip_move(&mut self, vip: Ipv4Addr, to: u16) -> Result<Vec<VipRow>> {
        let (Some(moves), Some(peers)) = (&mut self.moves, &self.peers) else {
            bail!("no [[bgp.owned_vip]] in the config: no VIP can move");
        };
        let status = peers.status();
        let row = status.peers.iter().find(|p| p.node_id == to);
        let up = row.is_some_and(|p| p.state == crate::peers::membership::PeerState::Up);
        let effects = moves
            .start(vip, to, row.is_some(), up, Instant::now())
            .map_err(|why| anyhow::anyhow!("cannot move {vip} to node {to}: {}", why.reason()))?;
        log::info!("moves: moving {vip} to node {to}");
        self.run_move_effects(effects);
        self.vip_modes()
    }

    /// A move step from peer `from`: it comes after every batch `from` sent before it.
    pub(super) fn peer_move(&mut self, from: u16, step: MoveStep) {
        let Some(moves) = &mut self.moves else {
            return;
        };
        log::info!(
            "moves: {:?} for {} (epoch {}) from node {from}",
            step.message,
            step.vip,
            step.epoch
        );
        let effects = moves.message(from, step.vip, step.epoch, step.message, Instant::now());
        self.run_move_effects(effects);
    }

    /// A peer's claims: the owned VIPs it announces as primary.
    pub(super) fn peer_claims(&mut self, from: u16, claims: &[(Ipv4Addr, u64)]) {
        let Some(moves) = &mut self.moves else {
            return;
        };
        let now = Instant::now();
        let effects: Vec<Effect> = claims
            .iter()
            .flat_map(|&(vip, epoch)| moves.claim(from, vip, epoch, now))
            .collect();
        self.run_move_effects(effects);
    }

    /// On the peers' poll: BIRD took a release's routes; the moves' timers; the claims
    /// the heartbeats carry.
    pub(super) fn tick_moves(&mut self) {
        let (Some(moves), Some(peers)) = (&mut self.moves, &self.peers) else {
            return;
        };
        let now = Instant::now();
        let forwarded = self
            .dataplane
            .global_counter(lb_common::counters::TUNNEL_FORWARDED)
            .unwrap_or(self.move_io.forwarded);
        if forwarded != self.move_io.forwarded {
            self.move_io.forwarded = forwarded;
            self.move_io.forwarded_at = Some(now);
        }
        let mut effects = Vec::new();
        if self.move_io.routes_pending
            && self
                .bgp
                .as_ref()
                .is_some_and(|state| state.announcer.status().in_sync())
        {
            self.move_io.routes_pending = false;
            effects.extend(moves.routes_applied(now));
        }
        let status = peers.status();
        let up = |node: u16| {
            status
                .peers
                .iter()
                .any(|p| p.node_id == node && p.state == crate::peers::membership::PeerState::Up)
        };
        effects.extend(moves.tick(now, up, self.move_io.forwarded_at));
        self.run_move_effects(effects);
    }

    fn run_move_effects(&mut self, effects: Vec<Effect>) {
        let Some(peers) = self.peers.clone() else {
            return;
        };
        for effect in effects {
            match effect {
                Effect::Send {
                    peer,
                    vip,
                    epoch,
                    message,
                } => {
                    if !peers.send_move(
                        peer,
                        MoveStep {
                            vip,
                            epoch,
                            message,
                        },
                    ) {
                        log::warn!(
                            "moves: node {peer} not connected; {message:?} for {vip} not sent"
                        );
                    }
                }
                Effect::StreamFlows { peer, vip, epoch } => {
                    let batch = crate::flows::vip_records(
                        &self.dataplane.flow_entries(),
                        self.node_id(),
                        vip,
                        sys::monotonic_ns(),
                    );
                    log::info!(
                        "moves: streaming {} flows of {vip} to node {peer}",
                        batch.len()
                    );
                    if !peers.announce_to(peer, batch) {
                        log::warn!(
                            "moves: the stream of {vip} to node {peer} did not fit its queue"
                        );
                    }
                    let done = MoveStep {
                        vip,
                        epoch,
                        message: MoveMessage::StreamDone,
                    };
                    peers.send_move(peer, done);
                }
                Effect::Forward { vip, to } => {
                    let result = match to.and_then(|node| self.peer_address(node)) {
                        Some(previous_owner) => {
                            self.dataplane.set_vip_transition(vip, previous_owner)
                        }
                        None => self.dataplane.clear_vip_transition(vip).map(|_| ()),
                    };
                    if let Err(e) = result {
                        log::warn!("moves: forwarding of {vip}'s misses: {e:#}");
                    }
                }
                Effect::Routes => {
                    self.move_io.routes_pending = true;
                    self.sync_peer_routes();
                }
            }
        }
        if let Some(moves) = &self.moves {
            peers.set_claims(moves.claims());
        }
    }

    /// With owned VIPs: the data path accepts the peers' tunnelled packets and tunnels
    /// from this instance's peer address; the heartbeats carry the claims. A restarted
    /// controller finds no transition it did not start: none is left over.
    pub(super) fn start_moves(&mut self) -> Result<()> {
        let (Some(moves), Some(peers), Some(config)) =
            (&self.moves, &self.peers, &self.config.peers)
        else {
            return Ok(());
        };
        peers.set_claims(moves.claims());
        let members: Vec<Ipv4Addr> = config.members.iter().map(|m| *m.address.ip()).collect();
        self.dataplane
            .set_tunnel_source(Some(*config.listen.ip()))?;
        self.dataplane.set_tunnel_peers(&members)?;
        for (vip, _) in self.dataplane.vip_transitions()? {
            self.dataplane.clear_vip_transition(vip)?;
        }
        Ok(())
    }

    /// A peer's address (its `peers.listen`): where its tunnelled packets go.
    fn peer_address(&self, node: u16) -> Option<Ipv4Addr> {
        self.config
            .peers
            .as_ref()?
            .members
            .iter()
            .find(|m| m.node_id == node)
            .map(|m| *m.address.ip())
    }
}
