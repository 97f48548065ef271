//! The `[peers]` table (docs/scale-out.md, "Peers").

use std::collections::HashSet;
use std::net::SocketAddrV4;

use super::*;
use crate::config::PeerConfig;
use crate::config::raw::RawPeers;
use crate::domain::{DEFAULT_JOIN_TIMEOUT_MS, DEFAULT_PEER_DEAD_AFTER_MS};

/// Node ids: 0 marks a flow of an instance without peers (`FlowEntry::owner`).
const NODE_IDS: RangeInclusive<i64> = 1..=u16::MAX as i64;
/// Peers one instance may list: every instance holds every connection to each of them.
pub const MAX_PEERS: usize = 64;

impl Parser<'_> {
    fn endpoint(&self, value: &Spanned<String>, what: &str) -> Result<SocketAddrV4, ConfigError> {
        let address: SocketAddrV4 = value.get_ref().parse().map_err(|_| {
            self.error(
                value.span(),
                format!(
                    "{what} must be an IPv4 address:port such as \"198.18.0.1:7395\", got {:?}",
                    value.get_ref()
                ),
            )
        })?;
        if !domain::is_unicast(*address.ip()) || address.port() == 0 {
            return Err(self.error(
                value.span(),
                format!("{what} must be a unicast address and a port above 0, got {address}"),
            ));
        }
        Ok(address)
    }

    pub(super) fn peers(
        &self,
        raw: &Spanned<RawPeers>,
    ) -> Result<(PeersConfig, Position), ConfigError> {
        let peers = raw.get_ref();
        let key_file = peers.key_file.get_ref();
        if key_file.is_empty() {
            return Err(self.error(peers.key_file.span(), "peers.key_file must not be empty"));
        }
        let node_id: u16 = self.int(&peers.node_id, "peers.node_id", NODE_IDS)?;
        // A specific address: peers connect to it, and connections to them leave from it,
        // so each side can check the other's address (docs/scale-out.md, "Peer protocol").
        let listen = self.endpoint(&peers.listen, "peers.listen")?;
        if peers.peer.len() > MAX_PEERS {
            return Err(self.error(
                peers.peer[MAX_PEERS].span(),
                format!("[peers] lists more than {MAX_PEERS} peers"),
            ));
        }
        let mut ids = HashSet::new();
        let mut addresses = HashSet::new();
        let mut members = Vec::new();
        for entry in &peers.peer {
            let peer = entry.get_ref();
            let id: u16 = self.int(&peer.node_id, "peers.peer.node_id", NODE_IDS)?;
            if id == node_id {
                return Err(self.error(
                    peer.node_id.span(),
                    format!("peers.peer.node_id {id} is this instance's own node_id"),
                ));
            }
            if !ids.insert(id) {
                return Err(self.error(
                    peer.node_id.span(),
                    format!("peer node_id {id} is listed twice"),
                ));
            }
            let address = self.endpoint(&peer.address, "peers.peer.address")?;
            if address.ip() == listen.ip() {
                return Err(self.error(
                    peer.address.span(),
                    format!("peers.peer.address {address} is this instance's own (peers.listen)"),
                ));
            }
            if !addresses.insert(*address.ip()) {
                return Err(self.error(
                    peer.address.span(),
                    format!("peer address {} is listed twice", address.ip()),
                ));
            }
            members.push(PeerConfig {
                node_id: id,
                address,
            });
        }
        let join_timeout_ms: u64 = self.int_or(
            peers.join_timeout_ms.as_ref(),
            "peers.join_timeout_ms",
            0..=600_000,
            DEFAULT_JOIN_TIMEOUT_MS,
        )?;
        // Heartbeats go every quarter of it; below 100 ms a busy host would flap.
        let dead_after_ms: u64 = self.int_or(
            peers.dead_after_ms.as_ref(),
            "peers.dead_after_ms",
            100..=60_000,
            DEFAULT_PEER_DEAD_AFTER_MS,
        )?;
        Ok((
            PeersConfig {
                node_id,
                cluster_id: self.int(&peers.cluster_id, "peers.cluster_id", 0..=u16::MAX as i64)?,
                key_file: PathBuf::from(key_file),
                listen,
                members,
                announce: peers.announce.unwrap_or(true),
                join_timeout: Duration::from_millis(join_timeout_ms),
                dead_after: Duration::from_millis(dead_after_ms),
            },
            position(self.text, peers.key_file.span().start),
        ))
    }
}
