//! The peer protocol inside the daemon (docs/scale-out.md, "Peer protocol"): starting
//! it from `[peers]`, answering its snapshot requests from the flow table, applying the
//! announcements it receives (`daemon/peer_flows.rs`), and the operator's view.

use super::*;
use crate::cluster::router::wall_ms;
use crate::peers::{
    io::{PeerInbox, PeerInput, Peers, PeersHandle},
    record::Announcement,
};

/// Reads the key (an error names `peers.key_file`'s line) and binds `peers.listen`:
/// everything that can fail about `[peers]`, before the data path is touched.
pub fn prepare_peers(config: &Config) -> Result<Option<(PeersHandle, PeerInbox)>> {
    let Some(peers) = &config.peers else {
        return Ok(None);
    };
    let key = config.peers_key(|path| fs::read(path))?.unwrap_or_default();
    let (handle, inbox) = Peers::start(peers, key, own_snat(config))?;
    Ok(Some((handle, inbox)))
}

/// The SNAT addresses this instance's services use: each peer routes them back here.
pub fn own_snat(config: &Config) -> Vec<Ipv4Addr> {
    Config::snat_addresses(&config.services)
        .into_iter()
        .collect()
}

/// Connections per owner (counted on their client → VIP entries).
pub fn flows_by_owner(
    entries: &[(lb_common::FlowKey, lb_common::FlowEntry)],
) -> BTreeMap<u16, u64> {
    let mut by_owner = BTreeMap::new();
    for (_, entry) in entries {
        if entry.direction == lb_common::FLOW_DIR_CLIENT_TO_SERVER {
            *by_owner.entry(entry.owner).or_default() += 1;
        }
    }
    by_owner
}

impl Controller {
    /// A batch a peer announced: installed by the flow-record rules, counted.
    /// `sent_ms`: the batch's timestamp if it is live, which dates its new flows'
    /// creation for the install lag.
    pub(super) fn peer_announcements(
        &mut self,
        from: u16,
        batch: &[Announcement],
        sent_ms: Option<u64>,
    ) {
        let stats = self.apply_announcements(from, batch);
        log::debug!("peers: node {from}: {stats:?}");
        if let Some(peers) = &self.peers {
            // In the flow table now: creation (timestamp − age) to now.
            let transit_ms = sent_ms.map(|sent| wall_ms().saturating_sub(sent));
            let lags = transit_ms.into_iter().flat_map(|transit| {
                stats
                    .installed_age_ms
                    .iter()
                    .map(move |&age| transit + u64::from(age))
            });
            peers.count_applied(&stats, lags);
        }
    }

    /// What a new peer connection starts with: the flows owned here and those of owners
    /// not live (`Controller::sync_snapshot`).
    fn peer_snapshot(&self) -> Vec<Announcement> {
        let Some(handle) = &self.peers else {
            return Vec::new();
        };
        self.sync_snapshot(&handle.status().live_nodes)
    }

    /// `lb vips`: the owned VIPs' mode table.
    pub(super) fn vip_modes(&self) -> Result<Vec<crate::peers::moves::VipRow>> {
        match &self.moves {
            Some(moves) => Ok(moves.rows(std::time::Instant::now())),
            None => bail!("no [[bgp.owned_vip]] in the config: every VIP is announced by all"),
        }
    }

    pub(super) fn peers_status(&self) -> Result<crate::peers::membership::PeersStatus> {
        match &self.peers {
            Some(handle) => Ok(handle.status()),
            None => bail!("no [peers] in the config: this balancer has no peers"),
        }
    }
}

/// How often the daemon looks at the peers' state for what BIRD announces: a synced
/// instance starts announcing within this.
pub const PEERS_POLL: Duration = Duration::from_millis(100);

/// Most flow events turned into one batch of announcements.
const EVENT_BATCH: usize = 4096;

/// Hands the data path's flow events to the peers as announcements, in batches, until
/// the daemon stops. Never waits on a peer (`PeersHandle::announce` only queues).
pub(super) async fn announce_flow_events(
    mut reader: crate::dataplane::events::FlowEventReader,
    peers: PeersHandle,
) {
    loop {
        let events = reader.next_batch(EVENT_BATCH).await;
        let batch = crate::peers::events::announcements(&events, sys::monotonic_ns());
        peers.announce(batch);
    }
}

/// Serves the peers' requests to the controller until the protocol stops.
pub(super) async fn serve_inbox(controller: Arc<Mutex<Controller>>, mut inbox: PeerInbox) {
    while let Some(input) = inbox.recv().await {
        let c = controller.clone();
        match input {
            PeerInput::Announcements {
                from,
                batch,
                sent_ms,
            } => {
                let _ = tokio::task::spawn_blocking(move || {
                    lock(&c).peer_announcements(from, &batch, sent_ms);
                })
                .await;
            }
            PeerInput::Move { from, step } => {
                let _ = tokio::task::spawn_blocking(move || lock(&c).peer_move(from, step)).await;
            }
            PeerInput::Claims { from, claims } => {
                let _ =
                    tokio::task::spawn_blocking(move || lock(&c).peer_claims(from, &claims)).await;
            }
            // Inputs are handled in order (each batch awaited above).
            PeerInput::Applied { reply } => {
                let _ = reply.send(());
            }
            PeerInput::SnapshotWanted { reply } => {
                // The flow table read can take a while: off the runtime's threads.
                tokio::task::spawn_blocking(move || {
                    let snapshot = lock(&c).peer_snapshot();
                    let _ = reply.send(snapshot);
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use lb_common::{FLOW_DIR_SERVER_TO_CLIENT, FlowEntry, FlowKey};

    use super::*;

    fn entry(owner: u16, direction: u8, client_port: u16) -> (FlowKey, FlowEntry) {
        let key = FlowKey::new(
            Ipv4Addr::new(198, 18, 9, 1),
            client_port,
            Ipv4Addr::new(198, 18, 1, 10),
            80,
            6,
        );
        let mut entry = FlowEntry {
            owner,
            direction,
            ..FlowEntry::default()
        };
        entry.set_rewrite(
            SocketAddrV4::new(Ipv4Addr::new(198, 19, 1, 1), 40000),
            SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 11), 80),
        );
        (key, entry)
    }

    #[test]
    fn flows_are_counted_by_owner_on_their_forward_entries() {
        let entries = vec![
            entry(1, lb_common::FLOW_DIR_CLIENT_TO_SERVER, 1000),
            entry(1, FLOW_DIR_SERVER_TO_CLIENT, 1000),
            entry(0, lb_common::FLOW_DIR_CLIENT_TO_SERVER, 1001),
            entry(2, lb_common::FLOW_DIR_CLIENT_TO_SERVER, 1002),
            entry(3, lb_common::FLOW_DIR_CLIENT_TO_SERVER, 1003),
        ];
        assert_eq!(
            flows_by_owner(&entries),
            BTreeMap::from([(0, 1), (1, 1), (2, 1), (3, 1)])
        );
    }

    #[test]
    fn own_snat_is_every_services_addresses_once() {
        let text = r#"[interfaces]
attach = ["lb-ext"]
[[service]]
name = "a"
vip = "198.18.1.10"
port = 80
snat_ips = ["198.19.1.2", "198.19.1.1"]
[[service.backend]]
address = "198.19.0.11"
[[service]]
name = "b"
vip = "198.18.1.11"
port = 80
snat_ip = "198.19.1.1"
[[service.backend]]
address = "198.19.0.11"
"#;
        let config = Config::parse(text, Path::new("t.toml")).unwrap();
        assert_eq!(
            own_snat(&config),
            vec![Ipv4Addr::new(198, 19, 1, 1), Ipv4Addr::new(198, 19, 1, 2)]
        );
    }
}
