//! The flow table seen from userspace: expiry (garbage collection) and the operator's
//! dump in the shape of an access-correspondence table (client, VIP, SNAT, server).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::Ipv4Addr,
    time::Duration,
};

use lb_common::{
    FLOW_DIR_CLIENT_TO_SERVER, FLOW_STATE_CLOSING, FLOW_STATE_ESTABLISHED,
    FLOW_STATE_HALF_CLOSED_CLIENT, FLOW_STATE_HALF_CLOSED_SERVER, FLOW_STATE_RESET,
    FLOW_STATE_SYN_ACK_SEEN, FLOW_STATE_SYN_SEEN, FLOW_STATE_SYNPROXY, FLOW_STATE_UDP, FlowEntry,
    FlowKey, IPPROTO_TCP, IPPROTO_UDP,
};
use serde::{Deserialize, Serialize};

use crate::{
    dataplane::Dataplane,
    domain::Timeouts,
    peers::{
        activity::RemoteActivity,
        record::{Announcement, FlowRecord, RecordOp},
    },
};

pub fn state_name(state: u8) -> &'static str {
    match state {
        FLOW_STATE_SYN_SEEN => "syn-seen",
        FLOW_STATE_SYN_ACK_SEEN => "syn-ack-seen",
        FLOW_STATE_ESTABLISHED => "established",
        FLOW_STATE_HALF_CLOSED_CLIENT => "half-closed-client",
        FLOW_STATE_HALF_CLOSED_SERVER => "half-closed-server",
        FLOW_STATE_CLOSING => "closing",
        FLOW_STATE_UDP => "udp",
        FLOW_STATE_RESET => "reset",
        FLOW_STATE_SYNPROXY => "syn-proxy",
        _ => "unknown",
    }
}

/// How far a connection has got, for judging a pair whose two entries disagree: the
/// higher rank is the one a packet moved it to last. Opening (a SYN seen, or the SYN
/// proxy opening the server side) < the server's SYN+ACK seen < established (TCP, or any
/// UDP flow) < half closed (one side's FIN seen) < closing (both FINs, or an RST) < reset
/// (marked by the controller: its next packet gets a RST).
pub(crate) fn state_rank(state: u8) -> u8 {
    match state {
        FLOW_STATE_SYN_SEEN | FLOW_STATE_SYNPROXY => 0,
        FLOW_STATE_SYN_ACK_SEEN => 1,
        FLOW_STATE_ESTABLISHED | FLOW_STATE_UDP => 2,
        FLOW_STATE_HALF_CLOSED_CLIENT | FLOW_STATE_HALF_CLOSED_SERVER => 3,
        FLOW_STATE_CLOSING => 4,
        FLOW_STATE_RESET => 5,
        // Unknown to this controller: judged as the data path left it, never as
        // further than a state we know.
        _ => 0,
    }
}

/// Of the states of a connection's two entries, the further advanced one.
pub(crate) fn further_state(a: u8, b: u8) -> u8 {
    if state_rank(b) > state_rank(a) { b } else { a }
}

fn timeout_for(state: u8, timeouts: &Timeouts) -> Duration {
    match state {
        FLOW_STATE_SYN_SEEN | FLOW_STATE_SYN_ACK_SEEN | FLOW_STATE_SYNPROXY => timeouts.tcp_syn,
        FLOW_STATE_ESTABLISHED => timeouts.tcp_established,
        FLOW_STATE_HALF_CLOSED_CLIENT | FLOW_STATE_HALF_CLOSED_SERVER => timeouts.tcp_half_closed,
        FLOW_STATE_CLOSING | FLOW_STATE_RESET => timeouts.tcp_closing,
        _ => timeouts.udp,
    }
}

/// Whether a connection is idle longer than its state allows: its idle time is that
/// of the more recently used of its two entries (or of a peer's touch, `remote_ns`),
/// and its state the further advanced one (a FIN seen in either direction means half
/// closed), so a one-way stream does not lose its quiet direction.
fn idle(
    entry: &FlowEntry,
    peer: Option<&FlowEntry>,
    remote_ns: u64,
    now_ns: u64,
    timeouts: &Timeouts,
) -> bool {
    let (last_seen, state) = match peer {
        Some(peer) => (
            entry.last_seen_ns.max(peer.last_seen_ns),
            further_state(entry.state, peer.state),
        ),
        None => (entry.last_seen_ns, entry.state),
    };
    let idle = Duration::from_nanos(now_ns.saturating_sub(last_seen.max(remote_ns)));
    idle > timeout_for(state, timeouts)
}

/// Key of the client → VIP entry of the connection `entry` (under `key`) belongs to.
fn forward_key(key: &FlowKey, entry: &FlowEntry) -> FlowKey {
    if entry.direction == FLOW_DIR_CLIENT_TO_SERVER {
        *key
    } else {
        entry.peer_key(key.proto)
    }
}

/// What the collector knows of the peers (docs/scale-out.md, "Who may change what"):
/// a copy held for a live owner is never expired here, and peers' touches count as
/// activity.
#[derive(Clone, Copy)]
pub struct Sharing<'a> {
    /// This instance's node id (0 without peers).
    pub self_node: u16,
    /// Node ids of the peers seen alive.
    pub live: &'a BTreeSet<u16>,
    pub activity: Option<&'a RemoteActivity>,
    /// When each peer was last heard (CLOCK_MONOTONIC ns). A copy of a down owner's
    /// flow counts as active until then: the owner was handling it, so the copy's own
    /// idle time says nothing before the owner was lost.
    pub owners_heard: Option<&'a BTreeMap<u16, u64>>,
    /// Activity before this instant (CLOCK_MONOTONIC ns) is unknown here: a restarted
    /// controller lost the peers' touches it had, so its start counts as one until the
    /// peers' next touches arrive. 0 without peers.
    pub known_since_ns: u64,
}

impl Sharing<'_> {
    /// A single instance: every flow expires by its own timers.
    pub const NONE: Sharing<'static> = Sharing {
        self_node: 0,
        live: &BTreeSet::new(),
        activity: None,
        owners_heard: None,
        known_since_ns: 0,
    };

    /// Whether `entry` is this instance's (created here, or before it had peers).
    pub fn owns(&self, entry: &FlowEntry) -> bool {
        entry.owner == 0 || entry.owner == self.self_node
    }

    /// Whether `entry` is a copy of a live peer's flow, which only its owner ends.
    pub fn held_for_live_owner(&self, entry: &FlowEntry) -> bool {
        !self.owns(entry) && self.live.contains(&entry.owner)
    }

    /// The last touch by a peer of the connection of `entry` (under `key`), or 0.
    fn remote_ns(&self, key: &FlowKey, entry: &FlowEntry) -> u64 {
        let touched = self
            .activity
            .and_then(|activity| activity.last(&forward_key(key, entry)))
            .unwrap_or(0);
        let owner_heard = match self.owners_heard {
            Some(heard) if !self.owns(entry) => heard.get(&entry.owner).copied().unwrap_or(0),
            _ => 0,
        };
        touched.max(owner_heard).max(self.known_since_ns)
    }
}

/// Shortest wait between two collector passes.
pub const PASS_INTERVAL_MIN: Duration = Duration::from_secs(1);
/// Longest wait between two passes: no entry outlives its timeout by more. Reached
/// only by tables of millions of entries, whose pass takes seconds.
pub const PASS_INTERVAL_MAX: Duration = Duration::from_secs(60);
/// A pass is followed by a wait of this many times its own duration (within the bounds
/// above), so the collector keeps to about 5 % of a core however large the table: a
/// million-entry table read every second would cost a third of one.
const PASS_DUTY_FACTOR: u32 = 20;

/// How long to wait after a pass that took `pass` before the next one (Cilium's
/// conntrack GC paces itself the same way, by table size).
pub fn next_pass_delay(pass: Duration) -> Duration {
    (pass * PASS_DUTY_FACTOR).clamp(PASS_INTERVAL_MIN, PASS_INTERVAL_MAX)
}

/// What status, `lb backends` and the metrics show of the flow table, taken from the
/// collector's read of it once a second: copying millions of entries per request, under
/// the controller's lock, cost more than everything else the daemon does.
#[derive(Clone, Debug, Default)]
pub struct FlowSummary {
    /// Open connections per (service id, backend id).
    pub connections: HashMap<(u32, u32), u64>,
    /// Entries in the table after the pass.
    pub entries: usize,
    /// How long the collector's last pass took (read, judge, remove).
    pub pass: Duration,
}

/// Open connections per (service id, backend id): each connection counted once, by its
/// client-to-server entry.
pub fn connections_per_backend(entries: &[(FlowKey, FlowEntry)]) -> HashMap<(u32, u32), u64> {
    let mut connections = HashMap::new();
    for (_, entry) in entries {
        if entry.direction == FLOW_DIR_CLIENT_TO_SERVER {
            *connections
                .entry((entry.service_id, entry.backend_id))
                .or_default() += 1;
        }
    }
    connections
}

/// Half-open connections (the client's SYN seen, its ACK not yet) per service id, each
/// counted once, by its client-to-server entry: what a SYN flood fills the table with.
pub fn half_open_per_service(entries: &[(FlowKey, FlowEntry)]) -> HashMap<u32, u64> {
    let mut half_open = HashMap::new();
    for (_, entry) in entries {
        if entry.direction == FLOW_DIR_CLIENT_TO_SERVER
            && matches!(entry.state, FLOW_STATE_SYN_SEEN | FLOW_STATE_SYN_ACK_SEEN)
        {
            *half_open.entry(entry.service_id).or_default() += 1;
        }
    }
    half_open
}

/// Keys of the entries whose connection may have been idle longer than its state
/// allows, judged on a snapshot: the candidates `remove_idle` decides on with the live
/// entries.
///
/// Only an entry idle past its own state's timeout is considered: of an expired pair,
/// the entry holding the further advanced state always is (its idle time is at least
/// the pair's, its timeout the pair's), and `remove_idle` takes its peer with it. So at
/// millions of flows the pairs are matched among the few candidates instead of an index
/// of the whole table. A candidate whose peer is not a candidate is returned when it is
/// idle on its own: its peer is busy (the pair stays, as `remove_idle` finds) or gone.
pub fn expired(
    entries: &[(FlowKey, FlowEntry)],
    now_ns: u64,
    timeouts: &Timeouts,
    sharing: &Sharing<'_>,
) -> Vec<FlowKey> {
    let candidates: HashMap<FlowKey, &FlowEntry> = entries
        .iter()
        .filter(|(_, entry)| !sharing.held_for_live_owner(entry))
        .filter(|(key, entry)| idle(entry, None, sharing.remote_ns(key, entry), now_ns, timeouts))
        .map(|(key, entry)| (*key, entry))
        .collect();
    candidates
        .iter()
        .filter(|(key, entry)| {
            let peer = candidates.get(&entry.peer_key(key.proto)).copied();
            idle(entry, peer, sharing.remote_ns(key, entry), now_ns, timeouts)
        })
        .map(|(key, _)| *key)
        .collect()
}

/// The live flow table as the garbage collector needs it.
pub trait FlowTable {
    fn get(&self, key: &FlowKey) -> Option<FlowEntry>;
    /// Whether the entry was there to remove.
    fn remove(&mut self, key: &FlowKey) -> bool;
}

impl FlowTable for Dataplane {
    fn get(&self, key: &FlowKey) -> Option<FlowEntry> {
        self.flow(key)
    }
    fn remove(&mut self, key: &FlowKey) -> bool {
        self.remove_flow(key)
    }
}

/// What `remove_idle` removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// Entries removed.
    pub entries: usize,
    /// The connections among them that this instance owns (with peers: `self_node`
    /// set), whose end it announces.
    pub own: Vec<FlowRecord>,
}

/// Removes the connections of `candidates` (from `expired`) that are still idle: each
/// entry and its peer are read again right before they go, so a packet that refreshed
/// either since the snapshot keeps the connection. With peers (see `expired`), it also
/// returns the records of the removed connections this instance owns.
pub fn remove_idle(
    table: &mut impl FlowTable,
    candidates: &[FlowKey],
    now_ns: u64,
    timeouts: &Timeouts,
    sharing: &Sharing<'_>,
) -> Removed {
    let mut removed = Removed::default();
    for key in candidates {
        let Some(entry) = table.get(key) else {
            continue; // gone already (its peer's turn, LRU, the data path)
        };
        let peer_key = entry.peer_key(key.proto);
        let peer = table.get(&peer_key);
        if sharing.held_for_live_owner(&entry)
            || !idle(
                &entry,
                peer.as_ref(),
                sharing.remote_ns(key, &entry),
                now_ns,
                timeouts,
            )
        {
            continue;
        }
        removed.entries += usize::from(table.remove(key));
        if peer.is_some() {
            removed.entries += usize::from(table.remove(&peer_key));
        }
        if sharing.self_node != 0 && entry.owner == sharing.self_node {
            let mut record = FlowRecord::from_entry(key, &entry, now_ns);
            if let Some(peer) = &peer {
                record.state = further_state(entry.state, peer.state);
            }
            removed.own.push(record);
        }
    }
    removed
}

/// What a collector pass yields for the peers (docs/scale-out.md, "Who may change
/// what").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcOutcome {
    /// The end of every own connection the pass removed.
    pub removed: Vec<Announcement>,
    /// Other owners' connections that saw packets here since the previous pass.
    pub touches: Vec<Announcement>,
}

/// Touches for the connections of other owners whose entries' `last_seen_ns` moved
/// since the previous pass; `previous` (last seen of each such entry at that pass) is
/// replaced by this pass's. An entry seen for the first time (just installed from a
/// record) is no activity yet.
pub fn touches(
    entries: &[(FlowKey, FlowEntry)],
    sharing: &Sharing<'_>,
    previous: &mut HashMap<FlowKey, u64>,
    now_ns: u64,
) -> Vec<Announcement> {
    let mut seen = HashMap::new();
    let mut touched = HashSet::new();
    let mut announcements = Vec::new();
    for (key, entry) in entries {
        if sharing.owns(entry) {
            continue;
        }
        seen.insert(*key, entry.last_seen_ns);
        let moved = previous
            .get(key)
            .is_some_and(|&last| entry.last_seen_ns > last);
        if moved && touched.insert(forward_key(key, entry)) {
            announcements.push(Announcement {
                op: RecordOp::Touch,
                record: FlowRecord::from_entry(key, entry, now_ns),
            });
        }
    }
    *previous = seen;
    announcements
}

/// The upserts a peer gets on connect (`Controller::sync_snapshot`): every connection
/// this instance owns (`self_node`, or 0: made before it had peers) or whose owner is not
/// in `live`, once, by its forward entry, with the further state of its two entries. A
/// copy of a down owner's flow keeps that owner.
pub fn sync_records(
    entries: &[(FlowKey, FlowEntry)],
    self_node: u16,
    live: &BTreeSet<u16>,
    now_ns: u64,
) -> Vec<Announcement> {
    let sharing = Sharing {
        self_node,
        live,
        activity: None,
        owners_heard: None,
        known_since_ns: 0,
    };
    records_where(entries, self_node, now_ns, |_, entry| {
        !sharing.held_for_live_owner(entry)
    })
}

/// Every connection to `vip`, whoever owns it: what a VIP move streams to its target
/// (docs/scale-out.md, "Moving a VIP").
pub fn vip_records(
    entries: &[(FlowKey, FlowEntry)],
    self_node: u16,
    vip: Ipv4Addr,
    now_ns: u64,
) -> Vec<Announcement> {
    records_where(entries, self_node, now_ns, |key, _| {
        *key.destination().ip() == vip
    })
}

/// One upsert per connection whose forward entry passes `keep`, with the further state
/// of its two entries; owner 0 (made before the instance had peers) is `self_node`.
fn records_where(
    entries: &[(FlowKey, FlowEntry)],
    self_node: u16,
    now_ns: u64,
    keep: impl Fn(&FlowKey, &FlowEntry) -> bool,
) -> Vec<Announcement> {
    let reverse_states: HashMap<FlowKey, u8> = entries
        .iter()
        .filter(|(_, entry)| entry.direction != FLOW_DIR_CLIENT_TO_SERVER)
        .map(|(key, entry)| (*key, entry.state))
        .collect();
    entries
        .iter()
        .filter(|(_, entry)| entry.direction == FLOW_DIR_CLIENT_TO_SERVER)
        .filter(|(key, entry)| keep(key, entry))
        .map(|(key, entry)| {
            let mut record = FlowRecord::from_entry(key, entry, now_ns);
            // Made before the data path knew the node id: this instance's.
            if record.owner == 0 {
                record.owner = self_node;
            }
            if let Some(&state) = reverse_states.get(&entry.peer_key(key.proto)) {
                record.state = further_state(entry.state, state);
            }
            Announcement {
                op: RecordOp::Upsert,
                record,
            }
        })
        .collect()
}

/// One connection, as `lb flows` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FlowRow {
    pub protocol: String,
    pub service: String,
    pub client: String,
    pub vip: String,
    /// Source the server sees: the SNAT address and port (full-NAT) or the client (DNAT).
    pub snat: String,
    pub server: String,
    pub state: String,
    pub age_secs: u64,
    pub idle_secs: u64,
    pub backend_id: u32,
    /// Node id of the instance that created the flow (0 without peers).
    #[serde(default)]
    pub owner: u16,
    /// SYN proxy (the TCP flow-control columns): the balancer's initial sequence
    /// number toward the client, the SEQ delta and the timestamp delta. `None` for a
    /// connection that is not proxied.
    pub proxy: Option<ProxyColumns>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProxyColumns {
    pub seq: u32,
    pub delta: u32,
    pub timestamp: u32,
}

/// One row per connection (from its client→server entry), oldest first.
pub fn rows(
    entries: &[(FlowKey, FlowEntry)],
    now_ns: u64,
    service_name: impl Fn(u32) -> Option<String>,
) -> Vec<FlowRow> {
    let mut rows: Vec<(u64, FlowRow)> = entries
        .iter()
        .filter(|(_, e)| e.direction == FLOW_DIR_CLIENT_TO_SERVER)
        .map(|(key, entry)| {
            let row = FlowRow {
                protocol: match key.proto {
                    IPPROTO_TCP => "tcp",
                    IPPROTO_UDP => "udp",
                    _ => "other",
                }
                .into(),
                service: service_name(entry.service_id)
                    .unwrap_or_else(|| format!("#{}", entry.service_id)),
                client: key.source().to_string(),
                vip: key.destination().to_string(),
                snat: entry.new_source().to_string(),
                server: entry.new_destination().to_string(),
                state: state_name(entry.state).into(),
                age_secs: now_ns.saturating_sub(entry.created_ns) / 1_000_000_000,
                idle_secs: now_ns.saturating_sub(entry.last_seen_ns) / 1_000_000_000,
                backend_id: entry.backend_id,
                owner: entry.owner,
                proxy: (entry.synproxy != 0).then_some(ProxyColumns {
                    // Still opening the server side: proxy_isn holds the client's
                    // ISN, seq_delta the cookie.
                    seq: if entry.state == FLOW_STATE_SYNPROXY {
                        entry.seq_delta
                    } else {
                        entry.proxy_isn
                    },
                    // Still opening the server side: no delta yet.
                    delta: if entry.state == FLOW_STATE_SYNPROXY {
                        0
                    } else {
                        entry.seq_delta
                    },
                    timestamp: if entry.state == FLOW_STATE_SYNPROXY {
                        0
                    } else {
                        entry.ts_delta
                    },
                }),
            };
            (entry.created_ns, row)
        })
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.client.cmp(&b.1.client)));
    rows.into_iter().map(|(_, row)| row).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::FLOW_DIR_SERVER_TO_CLIENT;

    /// Instance 1 with peers `live`, nothing else known.
    fn node1(live: &BTreeSet<u16>) -> Sharing<'_> {
        Sharing {
            self_node: 1,
            live,
            ..Sharing::NONE
        }
    }

    const SEC: u64 = 1_000_000_000;

    fn timeouts() -> Timeouts {
        Timeouts {
            tcp_syn: Duration::from_secs(5),
            tcp_established: Duration::from_secs(100),
            tcp_half_closed: Duration::from_secs(50),
            tcp_closing: Duration::from_secs(2),
            udp: Duration::from_secs(10),
        }
    }

    /// A full-NAT pair: client 198.18.0.2:1000 → VIP 198.18.1.10:80, SNAT
    /// 198.19.1.1:2000 → server 198.19.0.11:8080.
    fn pair(state: u8, fwd_seen: u64, rev_seen: u64) -> Vec<(FlowKey, FlowEntry)> {
        use std::net::{Ipv4Addr, SocketAddrV4};
        let client = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 1000);
        let vip = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 10), 80);
        let snat = SocketAddrV4::new(Ipv4Addr::new(198, 19, 1, 1), 2000);
        let server = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 11), 8080);
        let fwd_key = FlowKey::new(
            *client.ip(),
            client.port(),
            *vip.ip(),
            vip.port(),
            IPPROTO_TCP,
        );
        let mut fwd = FlowEntry {
            state,
            direction: FLOW_DIR_CLIENT_TO_SERVER,
            last_seen_ns: fwd_seen,
            ..FlowEntry::default()
        };
        fwd.set_rewrite(snat, server);
        let rev_key = fwd.peer_key(IPPROTO_TCP);
        let mut rev = FlowEntry {
            state,
            direction: FLOW_DIR_SERVER_TO_CLIENT,
            last_seen_ns: rev_seen,
            ..FlowEntry::default()
        };
        rev.set_rewrite(vip, client);
        assert_eq!(rev.peer_key(IPPROTO_TCP), fwd_key);
        vec![(fwd_key, fwd), (rev_key, rev)]
    }

    /// Entries the collector removes from a table holding `entries` at `now_ns`: its
    /// snapshot judgement and its re-check of the live entries, together.
    fn collected(entries: &[(FlowKey, FlowEntry)], now_ns: u64) -> usize {
        let mut table: HashMap<FlowKey, FlowEntry> = entries.iter().copied().collect();
        let candidates = expired(entries, now_ns, &timeouts(), &Sharing::NONE);
        remove_idle(&mut table, &candidates, now_ns, &timeouts(), &Sharing::NONE).entries
    }

    #[test]
    fn the_collector_paces_itself_by_its_pass() {
        assert_eq!(next_pass_delay(Duration::from_millis(2)), PASS_INTERVAL_MIN);
        assert_eq!(
            next_pass_delay(Duration::from_millis(200)),
            Duration::from_secs(4)
        );
        assert_eq!(
            next_pass_delay(Duration::from_secs(2)),
            Duration::from_secs(40)
        );
        assert_eq!(next_pass_delay(Duration::from_secs(4)), PASS_INTERVAL_MAX);
    }

    #[test]
    fn a_connection_counts_once_for_its_backend() {
        let mut entries = pair(FLOW_STATE_ESTABLISHED, 0, 0);
        entries.extend(
            pair(FLOW_STATE_ESTABLISHED, 0, 0)
                .into_iter()
                .map(|(k, mut e)| {
                    e.backend_id = 3;
                    (k, e)
                }),
        );
        entries.extend(pair(FLOW_STATE_ESTABLISHED, 0, 0));
        let connections = connections_per_backend(&entries);
        assert_eq!(connections.len(), 2);
        assert_eq!(connections[&(0, 0)], 2);
        assert_eq!(connections[&(0, 3)], 1);
    }

    #[test]
    fn half_open_connections_count_once_per_service() {
        let mut entries = pair(FLOW_STATE_SYN_SEEN, 0, 0);
        entries.extend(pair(FLOW_STATE_SYN_ACK_SEEN, 0, 0));
        entries.extend(pair(FLOW_STATE_ESTABLISHED, 0, 0));
        // A SYN proxy's pair opening the server side had its cookie checked: not a flood.
        entries.extend(pair(lb_common::FLOW_STATE_SYNPROXY, 0, 0));
        entries.extend(
            pair(FLOW_STATE_SYN_SEEN, 0, 0)
                .into_iter()
                .map(|(k, mut e)| {
                    e.service_id = 4;
                    (k, e)
                }),
        );
        let half_open = half_open_per_service(&entries);
        assert_eq!(half_open.len(), 2);
        assert_eq!(half_open[&0], 2);
        assert_eq!(half_open[&4], 1);
    }

    #[test]
    fn idle_established_pair_expires_together() {
        let entries = pair(FLOW_STATE_ESTABLISHED, 10 * SEC, 20 * SEC);
        assert_eq!(collected(&entries, 110 * SEC), 0);
        assert_eq!(collected(&entries, 121 * SEC), 2);
    }

    #[test]
    fn an_entry_whose_peer_is_gone_expires_alone() {
        let entries = pair(FLOW_STATE_ESTABLISHED, 0, 0);
        let orphan = &entries[..1];
        assert_eq!(collected(orphan, 100 * SEC), 0);
        assert_eq!(collected(orphan, 101 * SEC), 1);
    }

    /// Entries within their timeouts are not even candidates: the collector's work per
    /// pass follows the idle connections, not the table's size.
    #[test]
    fn live_connections_are_not_candidates() {
        let entries = pair(FLOW_STATE_ESTABLISHED, 10 * SEC, 0);
        assert!(expired(&entries, 50 * SEC, &timeouts(), &Sharing::NONE).is_empty());
        // The quiet direction of a one-way stream is a candidate; the live peer keeps it.
        let candidates = expired(&entries, 105 * SEC, &timeouts(), &Sharing::NONE);
        assert_eq!(candidates, vec![entries[1].0]);
        assert_eq!(collected(&entries, 105 * SEC), 0);
    }

    #[test]
    fn a_busy_direction_keeps_the_quiet_one() {
        let entries = pair(FLOW_STATE_ESTABLISHED, 0, 500 * SEC);
        assert_eq!(collected(&entries, 550 * SEC), 0);
    }

    #[test]
    fn closing_uses_the_short_timeout_from_either_side() {
        let mut entries = pair(FLOW_STATE_ESTABLISHED, 10 * SEC, 10 * SEC);
        entries[1].1.state = FLOW_STATE_CLOSING;
        assert_eq!(collected(&entries, 11 * SEC), 0);
        assert_eq!(collected(&entries, 13 * SEC), 2);
    }

    #[test]
    fn a_pair_is_judged_by_its_further_advanced_entry() {
        use lb_common::{FLOW_STATE_RESET, FLOW_STATE_SYNPROXY};
        for half_closed in [FLOW_STATE_HALF_CLOSED_CLIENT, FLOW_STATE_HALF_CLOSED_SERVER] {
            let lifecycle = [
                FLOW_STATE_SYN_SEEN,
                FLOW_STATE_SYN_ACK_SEEN,
                FLOW_STATE_ESTABLISHED,
                half_closed,
                FLOW_STATE_CLOSING,
                FLOW_STATE_RESET,
            ];
            for pair in lifecycle.windows(2) {
                assert_eq!(further_state(pair[0], pair[1]), pair[1]);
                assert_eq!(further_state(pair[1], pair[0]), pair[1]);
            }
        }
        // The SYN proxy opening the server side is still opening: the established
        // entry (its peer already updated) decides.
        assert_eq!(
            further_state(FLOW_STATE_SYNPROXY, FLOW_STATE_ESTABLISHED),
            FLOW_STATE_ESTABLISHED
        );
        // A RST-marked half of an established pair uses the closing timeout.
        let mut entries = pair(FLOW_STATE_ESTABLISHED, 10 * SEC, 10 * SEC);
        entries[0].1.state = FLOW_STATE_RESET;
        assert_eq!(collected(&entries, 13 * SEC), 2);
    }

    #[test]
    fn half_open_and_udp_have_their_own_timeouts() {
        let entries = pair(FLOW_STATE_SYN_SEEN, 0, 0);
        assert_eq!(collected(&entries, 6 * SEC), 2);
        let entries = pair(FLOW_STATE_UDP, 0, 0);
        assert_eq!(collected(&entries, 9 * SEC), 0);
        assert_eq!(collected(&entries, 11 * SEC), 2);
    }

    /// The idle time after which a pair in `state` (both entries) is expired.
    fn lifetime(state: u8) -> u64 {
        let entries = pair(state, 0, 0);
        let mut secs = 1;
        while collected(&entries, secs * SEC + 1) == 0 {
            secs += 1;
            assert!(secs < 1000, "state {state} never expires");
        }
        secs
    }

    #[test]
    fn each_tcp_state_has_its_timeout() {
        let t = timeouts();
        for (state, timeout) in [
            (FLOW_STATE_SYN_SEEN, t.tcp_syn),
            (FLOW_STATE_SYNPROXY, t.tcp_syn),
            // The server answered, the client has not: still half-open.
            (FLOW_STATE_SYN_ACK_SEEN, t.tcp_syn),
            (FLOW_STATE_ESTABLISHED, t.tcp_established),
            (FLOW_STATE_HALF_CLOSED_CLIENT, t.tcp_half_closed),
            (FLOW_STATE_HALF_CLOSED_SERVER, t.tcp_half_closed),
            (FLOW_STATE_CLOSING, t.tcp_closing),
            (FLOW_STATE_RESET, t.tcp_closing),
            (FLOW_STATE_UDP, t.udp),
        ] {
            assert_eq!(lifetime(state), timeout.as_secs(), "{}", state_name(state));
        }
    }

    #[test]
    fn a_half_closed_pair_outlives_closing_and_closes_on_the_second_fin() {
        // Client FIN at 10 s: the server keeps the pair alive with its data.
        let mut entries = pair(FLOW_STATE_HALF_CLOSED_CLIENT, 10 * SEC, 10 * SEC);
        assert_eq!(collected(&entries, 40 * SEC), 0);
        entries[1].1.last_seen_ns = 55 * SEC;
        assert_eq!(collected(&entries, 100 * SEC), 0);
        assert_eq!(collected(&entries, 106 * SEC), 2);
        // The server's FIN at 55 s, written into one entry only (its peer missing the
        // update) still closes the pair.
        entries[1].1.state = FLOW_STATE_CLOSING;
        assert_eq!(collected(&entries, 57 * SEC), 0);
        assert_eq!(collected(&entries, 58 * SEC), 2);
    }

    #[test]
    fn every_state_has_a_name() {
        for state in 1..=9 {
            assert_ne!(state_name(state), "unknown", "state {state}");
        }
        assert_eq!(state_name(FLOW_STATE_SYN_ACK_SEEN), "syn-ack-seen");
        assert_eq!(
            state_name(FLOW_STATE_HALF_CLOSED_CLIENT),
            "half-closed-client"
        );
        assert_eq!(
            state_name(FLOW_STATE_HALF_CLOSED_SERVER),
            "half-closed-server"
        );
    }

    impl FlowTable for HashMap<FlowKey, FlowEntry> {
        fn get(&self, key: &FlowKey) -> Option<FlowEntry> {
            HashMap::get(self, key).copied()
        }
        fn remove(&mut self, key: &FlowKey) -> bool {
            HashMap::remove(self, key).is_some()
        }
    }

    #[test]
    fn a_connection_refreshed_after_the_snapshot_is_kept() {
        let entries = pair(FLOW_STATE_ESTABLISHED, 10 * SEC, 10 * SEC);
        let candidates = expired(&entries, 111 * SEC, &timeouts(), &Sharing::NONE);
        assert_eq!(candidates.len(), 2);
        let mut table: HashMap<FlowKey, FlowEntry> = entries.iter().copied().collect();
        // A packet in the reverse direction arrives before the collector deletes.
        table.get_mut(&entries[1].0).unwrap().last_seen_ns = 111 * SEC;
        assert_eq!(
            remove_idle(
                &mut table,
                &candidates,
                112 * SEC,
                &timeouts(),
                &Sharing::NONE
            )
            .entries,
            0
        );
        assert_eq!(table.len(), 2);
        // Still quiet after its timeout: both entries go together.
        assert_eq!(
            remove_idle(
                &mut table,
                &candidates,
                212 * SEC,
                &timeouts(),
                &Sharing::NONE
            )
            .entries,
            2
        );
        assert!(table.is_empty());
    }

    #[test]
    fn a_connection_that_changed_state_is_judged_by_its_new_state() {
        // A SYN-seen pair past tcp_syn is a candidate; established by now, it stays.
        let entries = pair(FLOW_STATE_SYN_SEEN, 0, 0);
        let candidates = expired(&entries, 6 * SEC, &timeouts(), &Sharing::NONE);
        assert_eq!(candidates.len(), 2);
        let mut table: HashMap<FlowKey, FlowEntry> = entries.iter().copied().collect();
        table.get_mut(&entries[0].0).unwrap().state = FLOW_STATE_ESTABLISHED;
        assert_eq!(
            remove_idle(
                &mut table,
                &candidates,
                6 * SEC,
                &timeouts(),
                &Sharing::NONE
            )
            .entries,
            0
        );
    }

    /// `pair` owned by `owner`.
    fn owned_pair(owner: u16, fwd_seen: u64, rev_seen: u64) -> Vec<(FlowKey, FlowEntry)> {
        pair(FLOW_STATE_ESTABLISHED, fwd_seen, rev_seen)
            .into_iter()
            .map(|(k, mut e)| {
                e.owner = owner;
                (k, e)
            })
            .collect()
    }

    /// What a shared collector pass removes (entries, own records) at `now_ns`.
    fn collected_shared(
        entries: &[(FlowKey, FlowEntry)],
        now_ns: u64,
        sharing: &Sharing<'_>,
    ) -> Removed {
        let mut table: HashMap<FlowKey, FlowEntry> = entries.iter().copied().collect();
        let candidates = expired(entries, now_ns, &timeouts(), sharing);
        remove_idle(&mut table, &candidates, now_ns, &timeouts(), sharing)
    }

    #[test]
    fn a_copy_held_for_a_live_owner_never_expires_here() {
        let live = BTreeSet::from([2]);
        let sharing = node1(&live);
        let held = owned_pair(2, 0, 0);
        assert!(expired(&held, 1000 * SEC, &timeouts(), &sharing).is_empty());
        // Judged again as it goes: a candidate of an earlier pass is kept as well.
        let mut table: HashMap<FlowKey, FlowEntry> = held.iter().copied().collect();
        let candidates = vec![held[0].0, held[1].0];
        let removed = remove_idle(&mut table, &candidates, 1000 * SEC, &timeouts(), &sharing);
        assert_eq!(removed, Removed::default());
        // Its owner down: expired like an own flow, and not announced.
        let down = Sharing {
            live: &BTreeSet::new(),
            ..sharing
        };
        let removed = collected_shared(&held, 101 * SEC, &down);
        assert_eq!((removed.entries, removed.own.len()), (2, 0));
    }

    #[test]
    fn a_lost_owners_copy_is_idle_only_from_when_the_owner_was_last_heard() {
        // Idle here since 0 (its packets went to its owner), owner lost at 95 s.
        let held = owned_pair(2, 0, 0);
        let heard = BTreeMap::from([(2, 95 * SEC)]);
        let none_live = BTreeSet::new();
        let lost = Sharing {
            owners_heard: Some(&heard),
            ..node1(&none_live)
        };
        // 101 s: 6 s after the owner went, within the established timeout.
        assert_eq!(collected_shared(&held, 101 * SEC, &lost).entries, 0);
        // Without the owner's time it would have gone at once.
        let blind = Sharing {
            owners_heard: None,
            ..lost
        };
        assert_eq!(collected_shared(&held, 101 * SEC, &blind).entries, 2);
        // Idle past the timeout after the owner went: expired like an own flow.
        assert_eq!(
            collected_shared(&held, 95 * SEC + 101 * SEC, &lost).entries,
            2
        );
    }

    #[test]
    fn a_restarted_controller_counts_its_start_as_activity() {
        // An own connection whose packets go through peers: only their touches, lost
        // with the old controller, kept it alive here.
        let own = owned_pair(1, 0, 0);
        let live = BTreeSet::from([2]);
        let restarted = Sharing {
            known_since_ns: 95 * SEC,
            ..node1(&live)
        };
        assert_eq!(collected_shared(&own, 101 * SEC, &restarted).entries, 0);
        let forgetful = Sharing {
            known_since_ns: 0,
            ..restarted
        };
        assert_eq!(collected_shared(&own, 101 * SEC, &forgetful).entries, 2);
    }

    #[test]
    fn own_flows_expire_as_before_and_their_end_is_announced() {
        let live = BTreeSet::from([2]);
        let sharing = node1(&live);
        let own = owned_pair(1, 10 * SEC, 20 * SEC);
        assert_eq!(
            collected_shared(&own, 110 * SEC, &sharing),
            Removed::default()
        );
        let removed = collected_shared(&own, 121 * SEC, &sharing);
        assert_eq!(removed.entries, 2);
        assert_eq!(removed.own.len(), 1);
        assert_eq!(removed.own[0].client.to_string(), "198.18.0.2:1000");
        assert_eq!(removed.own[0].owner, 1);
        // Created before the instance had peers: expired, nothing to announce.
        let unowned = owned_pair(0, 10 * SEC, 20 * SEC);
        let removed = collected_shared(&unowned, 121 * SEC, &sharing);
        assert_eq!((removed.entries, removed.own.len()), (2, 0));
    }

    #[test]
    fn a_peers_touch_keeps_a_flow_alive() {
        let live = BTreeSet::new();
        let mut activity = RemoteActivity::new(16);
        let own = owned_pair(1, 10 * SEC, 10 * SEC);
        // The connection's forward key, touched through either entry.
        activity.touch(own[0].0, 100 * SEC);
        let sharing = Sharing {
            activity: Some(&activity),
            ..node1(&live)
        };
        assert_eq!(collected_shared(&own, 150 * SEC, &sharing).entries, 0);
        assert_eq!(collected_shared(&own, 201 * SEC, &sharing).entries, 2);
        // A down owner's flow too: the peer that touched it still uses it.
        let held = owned_pair(3, 10 * SEC, 10 * SEC);
        assert_eq!(collected_shared(&held, 150 * SEC, &sharing).entries, 0);
    }

    #[test]
    fn touches_name_other_owners_flows_that_saw_packets_since_the_last_pass() {
        let live = BTreeSet::from([2]);
        let sharing = node1(&live);
        let mut entries = owned_pair(2, 10 * SEC, 10 * SEC);
        entries.extend(
            owned_pair(1, 10 * SEC, 10 * SEC)
                .into_iter()
                .map(|(mut k, e)| {
                    k.src_port = 1001;
                    (k, e)
                }),
        );
        let mut previous = HashMap::new();
        // First sight (just installed): no activity yet.
        assert!(touches(&entries, &sharing, &mut previous, 11 * SEC).is_empty());
        assert_eq!(previous.len(), 2, "only the other owner's entries");
        assert!(touches(&entries, &sharing, &mut previous, 12 * SEC).is_empty());
        // Both entries refreshed: one touch for the connection.
        entries[0].1.last_seen_ns = 13 * SEC;
        entries[1].1.last_seen_ns = 13 * SEC;
        entries[2].1.last_seen_ns = 13 * SEC;
        let touched = touches(&entries, &sharing, &mut previous, 14 * SEC);
        assert_eq!(touched.len(), 1);
        assert_eq!(touched[0].op, RecordOp::Touch);
        assert_eq!(touched[0].record.owner, 2);
        assert_eq!(touched[0].record.forward_key(), entries[0].0);
        assert!(touches(&entries, &sharing, &mut previous, 15 * SEC).is_empty());
    }

    #[test]
    fn a_joining_peer_gets_own_flows_and_down_owners_flows_once_each() {
        let mut entries = owned_pair(1, 0, 0);
        // The reverse entry saw the client's FIN last: the further state is sent.
        entries[1].1.state = FLOW_STATE_HALF_CLOSED_CLIENT;
        let with_port = |owner: u16, port: u16| {
            // Another client port, and another SNAT port so the reverse key differs too.
            owned_pair(owner, 0, 0)
                .into_iter()
                .map(move |(mut k, mut e)| {
                    if e.direction == FLOW_DIR_CLIENT_TO_SERVER {
                        (k.src_port, e.new_src_port) = (port.to_be(), port.to_be());
                    } else {
                        (k.dst_port, e.new_dst_port) = (port.to_be(), port.to_be());
                    }
                    (k, e)
                })
        };
        entries.extend(with_port(0, 1001)); // made before peers
        entries.extend(with_port(2, 1002)); // a live peer's
        entries.extend(with_port(3, 1003)); // a down peer's
        let live = BTreeSet::from([2]);
        let mut sent: Vec<(u16, u16, u8)> = sync_records(&entries, 1, &live, 0)
            .iter()
            .map(|a| {
                assert_eq!(a.op, RecordOp::Upsert);
                (a.record.client.port(), a.record.owner, a.record.state)
            })
            .collect();
        sent.sort();
        assert_eq!(
            sent,
            [
                (1000, 1, FLOW_STATE_HALF_CLOSED_CLIENT),
                // Made before the node id was known: sent as this instance's.
                (1001, 1, FLOW_STATE_ESTABLISHED),
                (1003, 3, FLOW_STATE_ESTABLISHED),
            ]
        );
    }

    #[test]
    fn rows_show_one_line_per_connection() {
        let entries = pair(FLOW_STATE_ESTABLISHED, 3 * SEC, 3 * SEC);
        let rows = rows(&entries, 5 * SEC, |_| Some("web".into()));
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!(row.client, "198.18.0.2:1000");
        assert_eq!(row.vip, "198.18.1.10:80");
        assert_eq!(row.snat, "198.19.1.1:2000");
        assert_eq!(row.server, "198.19.0.11:8080");
        assert_eq!(row.state, "established");
        assert_eq!((row.age_secs, row.idle_secs), (5, 2));
        assert_eq!(row.owner, 0);
    }

    #[test]
    fn rows_show_the_cookie_as_seq_while_the_server_side_opens() {
        use lb_common::{FLOW_STATE_SYNPROXY, SYNPROXY_ACTIVE};
        // Opening: seq_delta holds the cookie, proxy_isn the client's ISN.
        let mut entries = pair(FLOW_STATE_SYNPROXY, 0, 0);
        for (_, e) in &mut entries {
            (e.synproxy, e.seq_delta, e.ts_delta, e.proxy_isn) = (SYNPROXY_ACTIVE, 77, 9, 1000);
        }
        let proxy = rows(&entries, 0, |_| None)[0].proxy.unwrap();
        assert_eq!((proxy.seq, proxy.delta, proxy.timestamp), (77, 0, 0));
        // Spliced: proxy_isn holds the cookie, seq_delta the delta.
        for (_, e) in &mut entries {
            (e.state, e.seq_delta, e.proxy_isn) = (FLOW_STATE_ESTABLISHED, 5, 77);
        }
        let proxy = rows(&entries, 0, |_| None)[0].proxy.unwrap();
        assert_eq!((proxy.seq, proxy.delta, proxy.timestamp), (77, 5, 9));
    }
}
