//! What the data path's flow events (`FLOW_EVENTS`) become for the peers: one
//! announcement per connection per batch (docs/scale-out.md, "Flow records").

use std::collections::HashMap;

use lb_common::{FLOW_EVENT_CHANGED, FLOW_EVENT_CREATED, FLOW_EVENT_REMOVED, FlowEvent};

use super::record::{Announcement, FlowRecord, RecordOp};

/// The announcements of a batch of events, in the order of each connection's last
/// event: created and changed flows are upserts, removed ones removals, and of several
/// events of one connection only the latest counts (it carries the whole record).
/// Events of an unknown kind are skipped. `now_ns` is CLOCK_MONOTONIC (the records'
/// ages).
pub fn announcements(events: &[FlowEvent], now_ns: u64) -> Vec<Announcement> {
    let mut slots: Vec<Option<Announcement>> = Vec::with_capacity(events.len());
    let mut latest = HashMap::with_capacity(events.len());
    for event in events {
        let op = match event.kind {
            FLOW_EVENT_CREATED | FLOW_EVENT_CHANGED => RecordOp::Upsert,
            FLOW_EVENT_REMOVED => RecordOp::Remove,
            _ => continue,
        };
        let record = FlowRecord::from_entry(&event.key, &event.entry, now_ns);
        if let Some(earlier) = latest.insert(record.forward_key(), slots.len()) {
            slots[earlier] = None;
        }
        slots.push(Some(Announcement { op, record }));
    }
    slots.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddrV4;

    use lb_common::{FLOW_STATE_ESTABLISHED, FLOW_STATE_SYN_SEEN, FlowEntry, FlowKey, IPPROTO_TCP};

    use super::*;

    fn endpoint(text: &str) -> SocketAddrV4 {
        text.parse().unwrap()
    }

    /// The two entries of client:`port` → 198.18.1.1:80 in full NAT, in `state`.
    fn pair(port: u16, state: u8) -> [(FlowKey, FlowEntry); 2] {
        FlowRecord {
            owner: 1,
            proto: IPPROTO_TCP,
            state,
            client: SocketAddrV4::new("198.18.0.10".parse().unwrap(), port),
            vip: endpoint("198.18.1.1:80"),
            backend: endpoint("198.18.2.11:8080"),
            snat: Some(endpoint("198.18.3.1:51000")),
            synproxy: 0,
            wscales: 0,
            seq_delta: 0,
            ts_delta: 0,
            proxy_isn: 0,
            age_ms: 0,
        }
        .entries(1, 1, 1_000_000_000)
    }

    fn event(kind: u8, (key, entry): (FlowKey, FlowEntry)) -> FlowEvent {
        FlowEvent {
            kind,
            key,
            entry,
            ..FlowEvent::default()
        }
    }

    #[test]
    fn each_event_kind_becomes_its_op() {
        let [forward, reverse] = pair(40000, FLOW_STATE_SYN_SEEN);
        let [other, _] = pair(40001, FLOW_STATE_SYN_SEEN);
        let third = pair(40002, FLOW_STATE_ESTABLISHED)[1];
        let events = [
            event(FLOW_EVENT_CREATED, forward),
            event(FLOW_EVENT_REMOVED, other),
            event(FLOW_EVENT_CHANGED, third),
            event(9, reverse),
        ];
        let ops: Vec<_> = announcements(&events, 1_000_000_000)
            .iter()
            .map(|a| (a.op, a.record.client.port(), a.record.state))
            .collect();
        assert_eq!(
            ops,
            [
                (RecordOp::Upsert, 40000, FLOW_STATE_SYN_SEEN),
                (RecordOp::Remove, 40001, FLOW_STATE_SYN_SEEN),
                (RecordOp::Upsert, 40002, FLOW_STATE_ESTABLISHED),
            ]
        );
    }

    #[test]
    fn the_latest_event_of_a_connection_wins_from_either_entry() {
        let [forward, _] = pair(40000, FLOW_STATE_SYN_SEEN);
        let [_, reverse] = pair(40000, FLOW_STATE_ESTABLISHED);
        let [other, _] = pair(40001, FLOW_STATE_SYN_SEEN);
        let events = [
            event(FLOW_EVENT_CREATED, forward),
            event(FLOW_EVENT_CREATED, other),
            event(FLOW_EVENT_CHANGED, reverse),
        ];
        let batch = announcements(&events, 1_000_000_000);
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[0].record.client.port(), 40001);
        assert_eq!(batch[1].record.client.port(), 40000);
        assert_eq!(batch[1].record.state, FLOW_STATE_ESTABLISHED);
        // A flow removed and opened again in one batch: the new one is announced.
        let events = [
            event(FLOW_EVENT_REMOVED, forward),
            event(FLOW_EVENT_CREATED, forward),
        ];
        let batch = announcements(&events, 1_000_000_000);
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].op, RecordOp::Upsert);
    }
}
