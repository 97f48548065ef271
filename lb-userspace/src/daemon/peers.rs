//! The peer protocol inside the daemon (docs/scale-out.md, "Peer protocol"): starting
//! it from `[peers]`, answering its snapshot requests from the flow table, and the
//! operator's view. Received announcements are not applied here yet: installing them
//! belongs to the flow-record code, which plugs in at [`Controller::peer_announcements`].

use super::*;
use crate::peers::{
    io::{PeerInbox, PeerInput, Peers, PeersHandle},
    record::{Announcement, FlowRecord, RecordOp},
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
    let mut snat: Vec<Ipv4Addr> = config
        .services
        .iter()
        .flat_map(|s| s.snat_ips.iter().copied())
        .collect();
    snat.sort_unstable();
    snat.dedup();
    snat
}

/// The snapshot a new peer connection starts with: one upsert per connection (its
/// client → VIP entry) that this instance owns, or whose owner is not live. Owner 0
/// (a flow made before the data path knew the node id) counts as this instance's.
pub fn snapshot(
    entries: &[(lb_common::FlowKey, lb_common::FlowEntry)],
    now_ns: u64,
    own: u16,
    live: &std::collections::BTreeSet<u16>,
) -> Vec<Announcement> {
    entries
        .iter()
        .filter(|(_, e)| e.direction == lb_common::FLOW_DIR_CLIENT_TO_SERVER)
        .filter(|(_, e)| e.owner == 0 || e.owner == own || !live.contains(&e.owner))
        .map(|(key, entry)| {
            let mut record = FlowRecord::from_entry(key, entry, now_ns);
            if record.owner == 0 {
                record.owner = own;
            }
            Announcement {
                op: RecordOp::Upsert,
                record,
            }
        })
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
    /// A batch a peer announced. Not applied yet (see the module's comment).
    pub(super) fn peer_announcements(&mut self, from: u16, batch: &[Announcement]) {
        log::debug!("peers: {} announcements from node {from}", batch.len());
    }

    fn peer_snapshot(&self) -> Vec<Announcement> {
        let (Some(handle), Some(config)) = (&self.peers, &self.config.peers) else {
            return Vec::new();
        };
        let live = handle.status().live_nodes;
        let entries = self.dataplane.flow_entries();
        snapshot(&entries, sys::monotonic_ns(), config.node_id, &live)
    }

    pub(super) fn peers_status(&self) -> Result<crate::peers::membership::PeersStatus> {
        match &self.peers {
            Some(handle) => Ok(handle.status()),
            None => bail!("no [peers] in the config: this balancer has no peers"),
        }
    }
}

/// Serves the peers' requests to the controller until the protocol stops.
pub(super) async fn serve_inbox(controller: Arc<Mutex<Controller>>, mut inbox: PeerInbox) {
    while let Some(input) = inbox.recv().await {
        let c = controller.clone();
        match input {
            PeerInput::Announcements { from, batch } => {
                let _ = tokio::task::spawn_blocking(move || {
                    lock(&c).peer_announcements(from, &batch);
                })
                .await;
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
    use std::collections::BTreeSet;

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
    fn the_snapshot_holds_own_flows_and_those_of_down_owners_once_each() {
        let entries = vec![
            entry(1, lb_common::FLOW_DIR_CLIENT_TO_SERVER, 1000),
            entry(1, FLOW_DIR_SERVER_TO_CLIENT, 1000),
            entry(0, lb_common::FLOW_DIR_CLIENT_TO_SERVER, 1001),
            // A live peer's flow: it sends it itself.
            entry(2, lb_common::FLOW_DIR_CLIENT_TO_SERVER, 1002),
            // A down owner's flow: this instance passes it on.
            entry(3, lb_common::FLOW_DIR_CLIENT_TO_SERVER, 1003),
        ];
        let live = BTreeSet::from([1, 2]);
        let snapshot = snapshot(&entries, 0, 1, &live);
        let got: Vec<(u16, u16)> = snapshot
            .iter()
            .map(|a| (a.record.owner, a.record.client.port()))
            .collect();
        assert_eq!(got, vec![(1, 1000), (1, 1001), (3, 1003)]);
        assert!(snapshot.iter().all(|a| a.op == RecordOp::Upsert));
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
