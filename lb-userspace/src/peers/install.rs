//! Installing peers' flow records: what an announcement may change in this instance's
//! copy of a connection (docs/scale-out.md, "Who may change what"). Pure: the
//! controller looks the connection up, asks `merge`, and writes what `writes` says.

use lb_common::{FLOW_STATE_CLOSING, FLOW_STATE_RESET, FLOW_STATE_SYNPROXY, FlowEntry, FlowKey};

use super::record::{Announcement, FlowRecord, RecordOp};
use crate::flows::{further_state, state_rank};

/// Why an announcement changes nothing here, for the counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// An upsert whose forwarding (backend, SNAT) differs from that of a flow this
    /// instance owns: the owner's forwarding is never overwritten.
    OwnedByReceiver,
    /// A removal whose record's owner is not the local copy's owner.
    OwnerMismatch,
}

/// SYN-proxy fields of a connection whose server side opened: the deltas the record
/// brings to a copy that still waits for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyDeltas {
    pub synproxy: u8,
    pub wscales: u8,
    pub seq_delta: u32,
    pub ts_delta: u32,
    pub proxy_isn: u32,
}

/// Progress on a flow the receiver owns: the only parts of a record it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// A further TCP state.
    pub state: Option<u8>,
    /// Deltas it did not have yet.
    pub deltas: Option<ProxyDeltas>,
}

/// What to do with one announcement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// No copy here: write the record's two entries.
    Install,
    /// Another owner's copy: write the record's entries over it, keeping the copy's
    /// last seen and its next-hop cache where the rewrite stays the same.
    Replace,
    /// A flow the receiver owns: take the progress, nothing else.
    Progress(Progress),
    /// The owner ended the flow: delete the copy.
    Remove,
    /// Remote activity on a flow held here.
    Touch,
    /// Nothing new (nothing held, no progress, or a record older than the copy).
    Nothing,
    Reject(Rejection),
}

/// Whether a flow is this instance's: created here (`self_node`), or before it had
/// peers (owner 0).
pub fn owned_here(entry: &FlowEntry, self_node: u16) -> bool {
    entry.owner == 0 || entry.owner == self_node
}

/// Whether two records forward the connection the same way.
fn same_forwarding(a: &FlowRecord, b: &FlowRecord) -> bool {
    (a.proto, a.client, a.vip, a.backend, a.snat) == (b.proto, b.client, b.vip, b.backend, b.snat)
}

/// The local pair as a record, for comparing with an announced one.
fn local_record(announcement: &Announcement, local: &(FlowEntry, FlowEntry)) -> FlowRecord {
    let mut record = FlowRecord::from_entry(&announcement.record.forward_key(), &local.0, 0);
    record.state = further_state(local.0.state, local.1.state);
    record
}

/// Decides what `announcement` does to `local`, this instance's copy of the connection
/// (its forward and reverse entries, as found under the record's forward key and that
/// entry's peer key), for an instance whose node id is `self_node`.
///
/// - Upsert: installs a flow not held; replaces another owner's copy unless the record
///   is older than it (same forwarding, an earlier state, the copy not closed: a
///   delayed record); of a flow the receiver owns takes only progress, and refuses a
///   record that would change its forwarding.
/// - Remove: only when the record's owner is the copy's owner.
/// - Touch: remote activity on a flow held here.
pub fn merge(
    local: Option<(FlowEntry, FlowEntry)>,
    announcement: &Announcement,
    self_node: u16,
) -> Action {
    let record = &announcement.record;
    let Some(local) = local else {
        return match announcement.op {
            RecordOp::Upsert => Action::Install,
            RecordOp::Remove | RecordOp::Touch => Action::Nothing,
        };
    };
    match announcement.op {
        RecordOp::Touch => Action::Touch,
        RecordOp::Remove if record.owner == local.0.owner => Action::Remove,
        RecordOp::Remove => Action::Reject(Rejection::OwnerMismatch),
        RecordOp::Upsert => {
            let mine = local_record(announcement, &local);
            let same = same_forwarding(record, &mine);
            if owned_here(&local.0, self_node) {
                if !same {
                    return Action::Reject(Rejection::OwnedByReceiver);
                }
                let state =
                    (state_rank(record.state) > state_rank(mine.state)).then_some(record.state);
                let deltas = (mine.synproxy != 0
                    && mine.state == FLOW_STATE_SYNPROXY
                    && record.synproxy != 0
                    && record.state != FLOW_STATE_SYNPROXY)
                    .then_some(ProxyDeltas {
                        synproxy: record.synproxy,
                        wscales: record.wscales,
                        seq_delta: record.seq_delta,
                        ts_delta: record.ts_delta,
                        proxy_isn: record.proxy_isn,
                    });
                if state.is_none() && deltas.is_none() {
                    return Action::Nothing;
                }
                return Action::Progress(Progress { state, deltas });
            }
            let closed = matches!(mine.state, FLOW_STATE_CLOSING | FLOW_STATE_RESET);
            if same && state_rank(record.state) < state_rank(mine.state) && !closed {
                return Action::Nothing;
            }
            if *record
                == (FlowRecord {
                    age_ms: record.age_ms,
                    ..mine
                })
            {
                return Action::Nothing;
            }
            Action::Replace
        }
    }
}

/// Map changes that carry out an action.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Writes {
    pub put: Vec<(FlowKey, FlowEntry)>,
    pub delete: Vec<FlowKey>,
}

fn same_rewrite(a: &FlowEntry, b: &FlowEntry) -> bool {
    (a.new_src_ip, a.new_src_port, a.new_dst_ip, a.new_dst_port)
        == (b.new_src_ip, b.new_src_port, b.new_dst_ip, b.new_dst_port)
}

/// The map changes of `action` on `local` (as given to `merge`). `built` are the
/// record's entries with this instance's ids (`FlowRecord::entries`, next-hop cache
/// empty), needed for `Install` and `Replace` only.
pub fn writes(
    action: Action,
    announcement: &Announcement,
    local: Option<&(FlowEntry, FlowEntry)>,
    built: Option<[(FlowKey, FlowEntry); 2]>,
) -> Writes {
    let proto = announcement.record.proto;
    let forward_key = announcement.record.forward_key();
    let mut writes = Writes::default();
    match (action, local, built) {
        (Action::Install, _, Some(built)) => writes.put.extend(built),
        (Action::Replace, Some(local), Some(built)) => {
            for ((key, mut entry), old) in built.into_iter().zip([local.0, local.1]) {
                entry.last_seen_ns = old.last_seen_ns;
                // The cache names the next hop of this rewrite: kept only for the same one.
                if same_rewrite(&entry, &old) {
                    entry.tx_ifindex = old.tx_ifindex;
                    entry.tx_dmac = old.tx_dmac;
                    entry.tx_smac = old.tx_smac;
                }
                writes.put.push((key, entry));
            }
            let old_reverse = local.0.peer_key(proto);
            if old_reverse != writes.put[1].0 {
                writes.delete.push(old_reverse);
            }
        }
        (Action::Progress(progress), Some(local), _) => {
            let keys = [forward_key, local.0.peer_key(proto)];
            for (key, mut entry) in keys.into_iter().zip([local.0, local.1]) {
                if let Some(state) = progress.state {
                    entry.state = state;
                }
                if let Some(d) = progress.deltas {
                    (entry.synproxy, entry.wscales) = (d.synproxy, d.wscales);
                    (entry.seq_delta, entry.ts_delta) = (d.seq_delta, d.ts_delta);
                    entry.proxy_isn = d.proxy_isn;
                    if progress.state.is_none() {
                        entry.state = announcement.record.state;
                    }
                }
                writes.put.push((key, entry));
            }
        }
        (Action::Remove, Some(local), _) => {
            writes.delete = vec![forward_key, local.0.peer_key(proto)];
        }
        _ => {}
    }
    writes
}

/// Announcements refused, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rejected {
    /// No service here at the record's VIP, port and protocol.
    pub unknown_service: u64,
    /// The service here has no backend at the record's backend address.
    pub unknown_backend: u64,
    /// Would change the forwarding of a flow this instance owns.
    pub owned_by_receiver: u64,
    /// A removal from other than the copy's owner.
    pub owner_mismatch: u64,
}

/// What one batch of a peer's announcements did here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Flows installed (new here).
    pub installed: u64,
    /// The installed records' ages (ms at the sender's timestamp), for the install lag.
    pub installed_age_ms: Vec<u32>,
    /// Copies replaced, and own flows that took progress.
    pub updated: u64,
    pub removed: u64,
    pub touched: u64,
    /// Nothing new in the record.
    pub unchanged: u64,
    pub rejected: Rejected,
}

impl ApplyStats {
    /// Counts one merge decision.
    pub fn count(&mut self, action: Action) {
        match action {
            Action::Install => self.installed += 1,
            Action::Replace | Action::Progress(_) => self.updated += 1,
            Action::Remove => self.removed += 1,
            Action::Touch => self.touched += 1,
            Action::Nothing => self.unchanged += 1,
            Action::Reject(Rejection::OwnedByReceiver) => self.rejected.owned_by_receiver += 1,
            Action::Reject(Rejection::OwnerMismatch) => self.rejected.owner_mismatch += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddrV4;

    use lb_common::{
        FLOW_STATE_ESTABLISHED, FLOW_STATE_HALF_CLOSED_CLIENT, FLOW_STATE_SYN_SEEN, IPPROTO_TCP,
        SYNPROXY_ACTIVE, SYNPROXY_TIMESTAMPS,
    };

    use super::*;

    const SELF: u16 = 1;
    const PEER: u16 = 2;
    const NOW: u64 = 100_000_000_000;

    fn endpoint(text: &str) -> SocketAddrV4 {
        text.parse().unwrap()
    }

    fn record(owner: u16, state: u8) -> FlowRecord {
        FlowRecord {
            owner,
            proto: IPPROTO_TCP,
            state,
            client: endpoint("198.18.0.10:40000"),
            vip: endpoint("198.18.1.1:80"),
            backend: endpoint("198.18.2.11:8080"),
            snat: Some(endpoint("198.18.3.1:51000")),
            synproxy: 0,
            wscales: 0,
            seq_delta: 0,
            ts_delta: 0,
            proxy_isn: 0,
            age_ms: 2000,
        }
    }

    fn upsert(record: FlowRecord) -> Announcement {
        Announcement {
            op: RecordOp::Upsert,
            record,
        }
    }

    /// The local pair of `record`, with a next-hop cache and an older last seen.
    fn local(record: FlowRecord) -> (FlowEntry, FlowEntry) {
        let [(_, mut forward), (_, mut reverse)] = record.entries(3, 4, NOW - 5_000_000_000);
        for (entry, ifindex) in [(&mut forward, 7), (&mut reverse, 8)] {
            entry.tx_ifindex = ifindex;
            entry.tx_dmac = [2, 0, 0, 0, 0, ifindex as u8];
        }
        (forward, reverse)
    }

    #[test]
    fn a_flow_not_held_is_installed_and_nothing_else_happens_to_it() {
        let announcement = upsert(record(PEER, FLOW_STATE_ESTABLISHED));
        assert_eq!(merge(None, &announcement, SELF), Action::Install);
        let built = announcement.record.entries(3, 4, NOW);
        let writes = writes(Action::Install, &announcement, None, Some(built));
        assert_eq!(writes.put, built.to_vec());
        assert!(writes.put.iter().all(|(_, e)| e.tx_ifindex == 0));
        for op in [RecordOp::Remove, RecordOp::Touch] {
            let announcement = Announcement { op, ..announcement };
            assert_eq!(merge(None, &announcement, SELF), Action::Nothing);
        }
    }

    #[test]
    fn another_owners_copy_is_replaced_keeping_its_cache_and_last_seen() {
        let old = local(record(PEER, FLOW_STATE_SYN_SEEN));
        let announcement = upsert(record(PEER, FLOW_STATE_ESTABLISHED));
        assert_eq!(merge(Some(old), &announcement, SELF), Action::Replace);
        let built = announcement.record.entries(3, 4, NOW);
        let writes = writes(Action::Replace, &announcement, Some(&old), Some(built));
        assert!(writes.delete.is_empty());
        let [(fkey, forward), (rkey, reverse)] = [writes.put[0], writes.put[1]];
        assert_eq!((fkey, rkey), (built[0].0, built[1].0));
        assert_eq!(forward.state, FLOW_STATE_ESTABLISHED);
        assert_eq!((forward.tx_ifindex, reverse.tx_ifindex), (7, 8));
        assert_eq!(forward.tx_dmac, old.0.tx_dmac);
        assert_eq!(forward.last_seen_ns, old.0.last_seen_ns);
        assert_eq!(forward.owner, PEER);
    }

    #[test]
    fn a_replaced_copy_with_another_snat_port_loses_its_old_reverse_entry_and_cache() {
        let old = local(record(PEER, FLOW_STATE_CLOSING));
        let mut new = record(3, FLOW_STATE_SYN_SEEN);
        new.snat = Some(endpoint("198.18.3.1:52000"));
        let announcement = upsert(new);
        // A connection reusing the closed one's tuple, from another owner.
        assert_eq!(merge(Some(old), &announcement, SELF), Action::Replace);
        let built = new.entries(3, 4, NOW);
        let writes = writes(Action::Replace, &announcement, Some(&old), Some(built));
        assert_eq!(writes.delete, vec![old.0.peer_key(IPPROTO_TCP)]);
        assert_eq!(writes.put[0].1.tx_ifindex, 0, "another rewrite, no cache");
        assert_eq!(
            writes.put[1].1.tx_ifindex, 8,
            "same rewrite back to the client"
        );
    }

    #[test]
    fn a_delayed_record_does_not_set_another_owners_copy_back() {
        let old = local(record(PEER, FLOW_STATE_ESTABLISHED));
        let announcement = upsert(record(PEER, FLOW_STATE_SYN_SEEN));
        assert_eq!(merge(Some(old), &announcement, SELF), Action::Nothing);
        // The very same record again: nothing to write either.
        let announcement = upsert(record(PEER, FLOW_STATE_ESTABLISHED));
        assert_eq!(merge(Some(old), &announcement, SELF), Action::Nothing);
    }

    #[test]
    fn an_own_flow_takes_only_a_further_state() {
        let old = local(record(SELF, FLOW_STATE_ESTABLISHED));
        let announcement = upsert(record(PEER, FLOW_STATE_HALF_CLOSED_CLIENT));
        let action = merge(Some(old), &announcement, SELF);
        assert_eq!(
            action,
            Action::Progress(Progress {
                state: Some(FLOW_STATE_HALF_CLOSED_CLIENT),
                deltas: None
            })
        );
        let writes = writes(action, &announcement, Some(&old), None);
        assert_eq!(writes.put.len(), 2);
        for ((_, entry), old) in writes.put.iter().zip([old.0, old.1]) {
            assert_eq!(
                FlowEntry {
                    state: old.state,
                    ..*entry
                },
                old,
                "only the state changes"
            );
            assert_eq!(entry.state, FLOW_STATE_HALF_CLOSED_CLIENT);
        }
        // An earlier state is no progress.
        let behind = upsert(record(SELF, FLOW_STATE_SYN_SEEN));
        assert_eq!(merge(Some(old), &behind, SELF), Action::Nothing);
        // Owner 0 (created before peers) counts as the receiver's own.
        let mut unowned = old;
        (unowned.0.owner, unowned.1.owner) = (0, 0);
        assert_eq!(merge(Some(unowned), &behind, SELF), Action::Nothing);
    }

    #[test]
    fn an_own_flow_never_takes_other_forwarding() {
        let old = local(record(SELF, FLOW_STATE_ESTABLISHED));
        let mut other = record(PEER, FLOW_STATE_CLOSING);
        other.backend = endpoint("198.18.2.12:8080");
        assert_eq!(
            merge(Some(old), &upsert(other), SELF),
            Action::Reject(Rejection::OwnedByReceiver)
        );
        let mut snat = record(SELF, FLOW_STATE_CLOSING);
        snat.snat = None;
        assert_eq!(
            merge(Some(old), &upsert(snat), SELF),
            Action::Reject(Rejection::OwnedByReceiver)
        );
    }

    #[test]
    fn an_own_proxied_flow_takes_the_deltas_it_did_not_have() {
        let mut opening = record(SELF, FLOW_STATE_SYNPROXY);
        (opening.synproxy, opening.seq_delta, opening.proxy_isn) = (SYNPROXY_ACTIVE | 2, 77, 999);
        let old = local(opening);
        let mut open = record(PEER, FLOW_STATE_ESTABLISHED);
        open.synproxy = SYNPROXY_ACTIVE;
        (open.seq_delta, open.ts_delta, open.proxy_isn, open.wscales) = (5, 6, 77, 0x97);
        let announcement = upsert(open);
        let action = merge(Some(old), &announcement, SELF);
        let Action::Progress(progress) = action else {
            panic!("{action:?}");
        };
        assert_eq!(progress.state, Some(FLOW_STATE_ESTABLISHED));
        assert_eq!(
            progress.deltas,
            Some(ProxyDeltas {
                synproxy: SYNPROXY_ACTIVE,
                wscales: 0x97,
                seq_delta: 5,
                ts_delta: 6,
                proxy_isn: 77
            })
        );
        let writes = writes(action, &announcement, Some(&old), None);
        for (_, entry) in &writes.put {
            assert_eq!((entry.seq_delta, entry.ts_delta), (5, 6));
            assert_eq!(entry.synproxy & SYNPROXY_TIMESTAMPS, 0);
            assert_eq!(entry.state, FLOW_STATE_ESTABLISHED);
            assert_eq!(entry.owner, SELF);
        }
        // Once it has its deltas, a record's other deltas are not taken.
        let mut done = open;
        done.seq_delta = 1234;
        let established = local(open);
        let mut own = established;
        (own.0.owner, own.1.owner) = (SELF, SELF);
        assert_eq!(merge(Some(own), &upsert(done), SELF), Action::Nothing);
    }

    #[test]
    fn only_the_copys_owner_removes_it() {
        let old = local(record(PEER, FLOW_STATE_ESTABLISHED));
        let remove = Announcement {
            op: RecordOp::Remove,
            record: record(PEER, FLOW_STATE_ESTABLISHED),
        };
        assert_eq!(merge(Some(old), &remove, SELF), Action::Remove);
        let writes = writes(Action::Remove, &remove, Some(&old), None);
        assert_eq!(
            writes.delete,
            vec![remove.record.forward_key(), remove.record.reverse_key()]
        );
        assert!(writes.put.is_empty());
        let foreign = Announcement {
            record: record(3, FLOW_STATE_ESTABLISHED),
            ..remove
        };
        assert_eq!(
            merge(Some(old), &foreign, SELF),
            Action::Reject(Rejection::OwnerMismatch)
        );
        // The owner's own flow, removed by a peer's data path (its tuple reused there).
        let own = local(record(SELF, FLOW_STATE_CLOSING));
        let ended = Announcement {
            record: record(SELF, FLOW_STATE_CLOSING),
            ..remove
        };
        assert_eq!(merge(Some(own), &ended, SELF), Action::Remove);
    }

    #[test]
    fn a_touch_of_a_held_flow_is_activity_only() {
        let old = local(record(SELF, FLOW_STATE_ESTABLISHED));
        let touch = Announcement {
            op: RecordOp::Touch,
            record: record(SELF, FLOW_STATE_ESTABLISHED),
        };
        assert_eq!(merge(Some(old), &touch, SELF), Action::Touch);
        assert_eq!(
            writes(Action::Touch, &touch, Some(&old), None),
            Writes::default()
        );
    }
}
