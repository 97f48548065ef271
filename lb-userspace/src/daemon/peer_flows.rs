//! The controller's side of flow sharing (docs/scale-out.md, "Flow records", "Who may
//! change what"): installing peers' announcements, the snapshot a peer gets on
//! connect, and the collector pass with peers. The decisions are pure
//! (`peers::install`, `flows`); this file reads and writes the maps.

use std::collections::{BTreeSet, HashMap};

use lb_common::{FlowEntry, FlowKey};

use super::Controller;
use crate::{
    dataplane::{Dataplane, events::FlowEventReader},
    flows::{self, GcOutcome, Sharing},
    peers::{
        activity::RemoteActivity,
        install::{self, Action, ApplyStats},
        record::{Announcement, FlowRecord, RecordOp},
    },
    services::ServiceTable,
    sys,
};

/// Flow-sharing state the controller keeps between collector passes.
#[derive(Debug)]
pub struct PeerFlows {
    /// Peers' last touch of each connection.
    pub activity: RemoteActivity,
    /// Last seen of other owners' entries at the last pass, for touches.
    seen: HashMap<FlowKey, u64>,
}

impl PeerFlows {
    /// For a table of `max_flows` entries (two per connection).
    pub fn new(max_flows: u32) -> PeerFlows {
        PeerFlows {
            activity: RemoteActivity::new((max_flows as usize / 2).max(1)),
            seen: HashMap::new(),
        }
    }
}

/// Why a record's service or backend is not found here.
enum Unknown {
    Service,
    Backend,
}

impl Controller {
    /// This instance's node id (`[peers]`), 0 without peers.
    pub fn node_id(&self) -> u16 {
        self.config.peers.as_ref().map_or(0, |peers| peers.node_id)
    }

    /// The reader of the data path's flow events, for the task that announces them
    /// (once; `None` afterwards). Must be called inside the tokio runtime.
    pub fn flow_event_reader(&mut self) -> Option<std::io::Result<FlowEventReader>> {
        self.dataplane.take_flow_events().map(FlowEventReader::new)
    }

    /// Applies a batch of announcements from peer `from_node` to the flow table
    /// (`apply_announcements`, the free function).
    pub fn apply_announcements(&mut self, from_node: u16, batch: &[Announcement]) -> ApplyStats {
        let self_node = self.node_id();
        apply_announcements(
            &mut self.dataplane,
            &self.table,
            &mut self.peer_flows.activity,
            self_node,
            from_node,
            batch,
            sys::monotonic_ns(),
        )
    }

    /// What a peer gets on connect: an upsert for every flow owned here (or made before
    /// this instance had peers) or by a node not in `live`, each connection once with
    /// the further state of its two entries.
    pub fn sync_snapshot(&self, live: &BTreeSet<u16>) -> Vec<Announcement> {
        flows::sync_records(
            &self.dataplane.flow_entries(),
            self.node_id(),
            live,
            sys::monotonic_ns(),
        )
    }

    /// A collector pass with peers: copies held for the `live` peers stay, peers'
    /// touches count as activity. Returns the entries removed and what to announce:
    /// the end of the own connections removed, touches of other owners' connections
    /// that saw packets since the previous pass.
    pub fn expire_flows_with(
        &mut self,
        live: &BTreeSet<u16>,
        owners_heard: &std::collections::BTreeMap<u16, u64>,
    ) -> (usize, GcOutcome) {
        let started = std::time::Instant::now();
        let filter_pass = self.table.begin_filter_pass();
        let entries = self.dataplane.flow_entries();
        if let Err(e) = self
            .table
            .end_filter_pass(&mut self.dataplane, filter_pass, &entries)
        {
            log::warn!("updating the address filter: {e:#}");
        }
        self.update_syn_cookies(&entries);
        if let Some(peers) = &self.peers {
            peers.set_flows_held(&super::flows_by_owner(&entries));
        }
        let now = sys::monotonic_ns();
        let timeouts = self.config.timeouts;
        let longest = [
            timeouts.tcp_syn,
            timeouts.tcp_established,
            timeouts.tcp_half_closed,
            timeouts.tcp_closing,
            timeouts.udp,
        ]
        .into_iter()
        .max()
        .unwrap_or_default();
        self.peer_flows
            .activity
            .prune(now.saturating_sub(longest.as_nanos().min(u128::from(u64::MAX)) as u64));
        let sharing = Sharing {
            self_node: self.node_id(),
            live,
            activity: Some(&self.peer_flows.activity),
            owners_heard: Some(owners_heard),
            known_since_ns: if self.peers.is_some() {
                now.saturating_sub(self.started.elapsed().as_nanos() as u64)
            } else {
                0
            },
        };
        let touches = flows::touches(&entries, &sharing, &mut self.peer_flows.seen, now);
        let expired = flows::expired(&entries, now, &timeouts, &sharing);
        // The snapshot may be stale by now: each candidate is judged again as it goes.
        let removed = flows::remove_idle(
            &mut self.dataplane,
            &expired,
            sys::monotonic_ns(),
            &timeouts,
            &sharing,
        );
        for record in &removed.own {
            self.peer_flows.activity.forget(&record.forward_key());
        }
        self.flows_expired += removed.entries as u64;
        // Connections counted on the snapshot: the few removed just now were idle.
        self.flow_summary = flows::FlowSummary {
            connections: flows::connections_per_backend(&entries),
            entries: entries.len().saturating_sub(removed.entries),
            pass: started.elapsed(),
        };
        let outcome = GcOutcome {
            removed: removed
                .own
                .into_iter()
                .map(|record| Announcement {
                    op: RecordOp::Remove,
                    record,
                })
                .collect(),
            touches,
        };
        (removed.entries, outcome)
    }
}

/// This instance's ids of the record's service and backend, matched by address.
fn local_ids(table: &ServiceTable, record: &FlowRecord) -> Result<(u32, u32), Unknown> {
    let service = table
        .service_at((*record.vip.ip(), record.vip.port(), record.proto))
        .ok_or(Unknown::Service)?;
    let backend = table
        .backend_id((*record.backend.ip(), record.backend.port()))
        .filter(|id| service.backend_ids.contains(id))
        .ok_or(Unknown::Backend)?;
    Ok((service.id, backend))
}

/// Applies a batch of announcements from peer `from_node` to the flow table by the
/// rules of `peers::install::merge`, for an instance with node id `self_node` whose
/// services are `table`; touches go to `activity`. Entries are looked up one by one
/// (a pending write of this batch counts as the table), then written in batches;
/// entries written here leave the next-hop cache empty (the data path fills it),
/// except a replaced copy's, kept for the same rewrite.
pub fn apply_announcements(
    dataplane: &mut Dataplane,
    table: &ServiceTable,
    activity: &mut RemoteActivity,
    self_node: u16,
    from_node: u16,
    batch: &[Announcement],
    now: u64,
) -> ApplyStats {
    let mut stats = ApplyStats::default();
    // The batch's writes by key: Some = put, None = delete.
    let mut pending: HashMap<FlowKey, Option<FlowEntry>> = HashMap::new();
    for announcement in batch {
        let record = &announcement.record;
        let built = if announcement.op == RecordOp::Upsert {
            match local_ids(table, record) {
                Ok((service_id, backend_id)) => Some(record.entries(service_id, backend_id, now)),
                Err(Unknown::Service) => {
                    stats.rejected.unknown_service += 1;
                    continue;
                }
                Err(Unknown::Backend) => {
                    stats.rejected.unknown_backend += 1;
                    continue;
                }
            }
        } else {
            None
        };
        let lookup = |key: &FlowKey| match pending.get(key) {
            Some(pending) => *pending,
            None => dataplane.flow(key),
        };
        let forward_key = record.forward_key();
        let forward = lookup(&forward_key);
        let reverse = forward.and_then(|f| lookup(&f.peer_key(record.proto)));
        let local = match (forward, reverse) {
            (Some(forward), Some(reverse)) => Some((forward, reverse)),
            // Half a pair (the other entry evicted): an own flow's forwarding still
            // stands; anything else is a copy to replace or remove.
            (Some(forward), None) if announcement.op != RecordOp::Upsert => {
                Some((forward, forward))
            }
            (Some(forward), None) if install::owned_here(&forward, self_node) => {
                stats.count(Action::Reject(install::Rejection::OwnedByReceiver));
                continue;
            }
            _ => None,
        };
        let action = install::merge(local, announcement, self_node);
        stats.count(action);
        if action == Action::Install {
            stats.installed_age_ms.push(record.age_ms);
        }
        match action {
            Action::Touch => activity.touch(forward_key, now),
            Action::Remove => activity.forget(&forward_key),
            _ => {}
        }
        let writes = install::writes(action, announcement, local.as_ref(), built);
        for (key, entry) in writes.put {
            pending.insert(key, Some(entry));
        }
        for key in writes.delete {
            pending.insert(key, None);
        }
    }
    let mut puts = Vec::new();
    let mut deletes = Vec::new();
    for (key, entry) in pending {
        match entry {
            Some(entry) => puts.push((key, entry)),
            None => deletes.push(key),
        }
    }
    if let Err(e) = dataplane.write_flows(&puts) {
        log::warn!("installing flows announced by node {from_node}: {e:#}");
    }
    for key in deletes {
        dataplane.remove_flow(&key);
    }
    log::debug!("announcements from node {from_node}: {stats:?}");
    stats
}
