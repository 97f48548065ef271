//! The flow table seen from userspace: expiry (garbage collection) and the operator's
//! dump in the shape of seed 001's access-correspondence table.

use std::{collections::HashMap, net::Ipv4Addr, time::Duration};

use lb_common::{
    FLOW_DIR_CLIENT_TO_SERVER, FLOW_STATE_CLOSING, FLOW_STATE_ESTABLISHED, FLOW_STATE_RESET,
    FLOW_STATE_SYN_SEEN, FLOW_STATE_SYNPROXY, FLOW_STATE_UDP, FlowEntry, FlowKey, IPPROTO_TCP,
    IPPROTO_UDP,
};
use serde::{Deserialize, Serialize};

use crate::config::Timeouts;

pub fn state_name(state: u8) -> &'static str {
    match state {
        FLOW_STATE_SYN_SEEN => "syn-seen",
        FLOW_STATE_ESTABLISHED => "established",
        FLOW_STATE_CLOSING => "closing",
        FLOW_STATE_UDP => "udp",
        FLOW_STATE_RESET => "reset",
        FLOW_STATE_SYNPROXY => "syn-proxy",
        _ => "unknown",
    }
}

fn timeout_for(state: u8, timeouts: &Timeouts) -> Duration {
    match state {
        FLOW_STATE_SYN_SEEN | FLOW_STATE_SYNPROXY => timeouts.tcp_syn,
        FLOW_STATE_ESTABLISHED => timeouts.tcp_established,
        FLOW_STATE_CLOSING | FLOW_STATE_RESET => timeouts.tcp_closing,
        _ => timeouts.udp,
    }
}

/// Whether a connection is idle longer than its state allows: its idle time is that
/// of the more recently used of its two entries, and its state the further advanced
/// one (a FIN seen in either direction means closing), so a one-way stream does not
/// lose its quiet direction.
fn idle(entry: &FlowEntry, peer: Option<&FlowEntry>, now_ns: u64, timeouts: &Timeouts) -> bool {
    let (last_seen, state) = match peer {
        Some(peer) => (
            entry.last_seen_ns.max(peer.last_seen_ns),
            entry.state.max(peer.state),
        ),
        None => (entry.last_seen_ns, entry.state),
    };
    let idle = Duration::from_nanos(now_ns.saturating_sub(last_seen));
    idle > timeout_for(state, timeouts)
}

/// Keys of the entries whose connection has been idle longer than its state allows
/// (judged on a snapshot: candidates for `remove_idle`).
pub fn expired(entries: &[(FlowKey, FlowEntry)], now_ns: u64, timeouts: &Timeouts) -> Vec<FlowKey> {
    let by_key: HashMap<FlowKey, &FlowEntry> = entries.iter().map(|(k, v)| (*k, v)).collect();
    entries
        .iter()
        .filter(|(key, entry)| {
            let peer = by_key.get(&entry.peer_key(key.proto)).copied();
            idle(entry, peer, now_ns, timeouts)
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

impl<T: std::borrow::BorrowMut<aya::maps::MapData>> FlowTable
    for aya::maps::HashMap<T, FlowKey, FlowEntry>
{
    fn get(&self, key: &FlowKey) -> Option<FlowEntry> {
        aya::maps::HashMap::get(self, key, 0).ok()
    }
    fn remove(&mut self, key: &FlowKey) -> bool {
        aya::maps::HashMap::remove(self, key).is_ok()
    }
}

/// Removes the connections of `candidates` (from `expired`) that are still idle: each
/// entry and its peer are read again right before they go, so a packet that refreshed
/// either since the snapshot keeps the connection. Returns the number of entries
/// removed.
pub fn remove_idle(
    table: &mut impl FlowTable,
    candidates: &[FlowKey],
    now_ns: u64,
    timeouts: &Timeouts,
) -> usize {
    let mut removed = 0;
    for key in candidates {
        let Some(entry) = table.get(key) else {
            continue; // gone already (its peer's turn, LRU, the data path)
        };
        let peer_key = entry.peer_key(key.proto);
        let peer = table.get(&peer_key);
        if !idle(&entry, peer.as_ref(), now_ns, timeouts) {
            continue;
        }
        removed += usize::from(table.remove(key));
        if peer.is_some() {
            removed += usize::from(table.remove(&peer_key));
        }
    }
    removed
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
    /// SYN proxy (seed 001's TCP flow control columns): the balancer's initial sequence
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

fn endpoint(ip: u32, port: u16) -> String {
    format!(
        "{}:{}",
        Ipv4Addr::from(u32::from_be(ip)),
        u16::from_be(port)
    )
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
                client: endpoint(key.src_ip, key.src_port),
                vip: endpoint(key.dst_ip, key.dst_port),
                snat: endpoint(entry.new_src_ip, entry.new_src_port),
                server: endpoint(entry.new_dst_ip, entry.new_dst_port),
                state: state_name(entry.state).into(),
                age_secs: now_ns.saturating_sub(entry.created_ns) / 1_000_000_000,
                idle_secs: now_ns.saturating_sub(entry.last_seen_ns) / 1_000_000_000,
                backend_id: entry.backend_id,
                proxy: (entry.synproxy != 0).then_some(ProxyColumns {
                    seq: entry.proxy_isn,
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

    const SEC: u64 = 1_000_000_000;

    fn timeouts() -> Timeouts {
        Timeouts {
            tcp_syn: Duration::from_secs(5),
            tcp_established: Duration::from_secs(100),
            tcp_closing: Duration::from_secs(2),
            udp: Duration::from_secs(10),
        }
    }

    /// A full-NAT pair: client 10.0.0.1:1000 → VIP 10.0.1.1:80, SNAT 10.0.2.1:2000 →
    /// server 10.0.3.1:8080.
    fn pair(state: u8, fwd_seen: u64, rev_seen: u64) -> Vec<(FlowKey, FlowEntry)> {
        let ip = |a: [u8; 4]| u32::from_ne_bytes(a);
        let fwd_key = FlowKey {
            src_ip: ip([10, 0, 0, 1]),
            dst_ip: ip([10, 0, 1, 1]),
            src_port: 1000u16.to_be(),
            dst_port: 80u16.to_be(),
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        let fwd = FlowEntry {
            new_src_ip: ip([10, 0, 2, 1]),
            new_dst_ip: ip([10, 0, 3, 1]),
            new_src_port: 2000u16.to_be(),
            new_dst_port: 8080u16.to_be(),
            state,
            direction: FLOW_DIR_CLIENT_TO_SERVER,
            last_seen_ns: fwd_seen,
            ..FlowEntry::default()
        };
        let rev_key = fwd.peer_key(IPPROTO_TCP);
        let rev = FlowEntry {
            new_src_ip: fwd_key.dst_ip,
            new_dst_ip: fwd_key.src_ip,
            new_src_port: fwd_key.dst_port,
            new_dst_port: fwd_key.src_port,
            state,
            direction: FLOW_DIR_SERVER_TO_CLIENT,
            last_seen_ns: rev_seen,
            ..FlowEntry::default()
        };
        assert_eq!(rev.peer_key(IPPROTO_TCP), fwd_key);
        vec![(fwd_key, fwd), (rev_key, rev)]
    }

    #[test]
    fn idle_established_pair_expires_together() {
        let entries = pair(FLOW_STATE_ESTABLISHED, 10 * SEC, 20 * SEC);
        assert!(expired(&entries, 110 * SEC, &timeouts()).is_empty());
        assert_eq!(expired(&entries, 121 * SEC, &timeouts()).len(), 2);
    }

    #[test]
    fn a_busy_direction_keeps_the_quiet_one() {
        let entries = pair(FLOW_STATE_ESTABLISHED, 0, 500 * SEC);
        assert!(expired(&entries, 550 * SEC, &timeouts()).is_empty());
    }

    #[test]
    fn closing_uses_the_short_timeout_from_either_side() {
        let mut entries = pair(FLOW_STATE_ESTABLISHED, 10 * SEC, 10 * SEC);
        entries[1].1.state = FLOW_STATE_CLOSING;
        assert!(expired(&entries, 11 * SEC, &timeouts()).is_empty());
        assert_eq!(expired(&entries, 13 * SEC, &timeouts()).len(), 2);
    }

    #[test]
    fn half_open_and_udp_have_their_own_timeouts() {
        let entries = pair(FLOW_STATE_SYN_SEEN, 0, 0);
        assert_eq!(expired(&entries, 6 * SEC, &timeouts()).len(), 2);
        let entries = pair(FLOW_STATE_UDP, 0, 0);
        assert!(expired(&entries, 9 * SEC, &timeouts()).is_empty());
        assert_eq!(expired(&entries, 11 * SEC, &timeouts()).len(), 2);
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
        let candidates = expired(&entries, 111 * SEC, &timeouts());
        assert_eq!(candidates.len(), 2);
        let mut table: HashMap<FlowKey, FlowEntry> = entries.iter().copied().collect();
        // A packet in the reverse direction arrives before the collector deletes.
        table.get_mut(&entries[1].0).unwrap().last_seen_ns = 111 * SEC;
        assert_eq!(
            remove_idle(&mut table, &candidates, 112 * SEC, &timeouts()),
            0
        );
        assert_eq!(table.len(), 2);
        // Still quiet after its timeout: both entries go together.
        assert_eq!(
            remove_idle(&mut table, &candidates, 212 * SEC, &timeouts()),
            2
        );
        assert!(table.is_empty());
    }

    #[test]
    fn a_connection_that_changed_state_is_judged_by_its_new_state() {
        // A SYN-seen pair past tcp_syn is a candidate; established by now, it stays.
        let entries = pair(FLOW_STATE_SYN_SEEN, 0, 0);
        let candidates = expired(&entries, 6 * SEC, &timeouts());
        assert_eq!(candidates.len(), 2);
        let mut table: HashMap<FlowKey, FlowEntry> = entries.iter().copied().collect();
        table.get_mut(&entries[0].0).unwrap().state = FLOW_STATE_ESTABLISHED;
        assert_eq!(
            remove_idle(&mut table, &candidates, 6 * SEC, &timeouts()),
            0
        );
    }

    #[test]
    fn rows_show_one_line_per_connection() {
        let entries = pair(FLOW_STATE_ESTABLISHED, 3 * SEC, 3 * SEC);
        let rows = rows(&entries, 5 * SEC, |_| Some("web".into()));
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!(row.client, "10.0.0.1:1000");
        assert_eq!(row.vip, "10.0.1.1:80");
        assert_eq!(row.snat, "10.0.2.1:2000");
        assert_eq!(row.server, "10.0.3.1:8080");
        assert_eq!(row.state, "established");
        assert_eq!((row.age_secs, row.idle_secs), (5, 2));
    }
}
