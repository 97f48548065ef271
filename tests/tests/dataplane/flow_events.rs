//! Flow events (`FLOW_EVENTS`) and flows installed from peers' records
//! (docs/scale-out.md, "Flow records", "Who may change what").

use lb_common::{
    FLOW_EVENT_CHANGED, FLOW_EVENT_CREATED, FLOW_STATE_SYNPROXY, FlowEntry, FlowEvent,
    SYNPROXY_ACTIVE, Settings,
};
use lb_userspace::peers::{
    events::announcements,
    record::{Announcement, FlowRecord, RecordOp},
};

use super::syn_proxy::client_seg;
use super::*;

const OWNER: u16 = 1;
const RECEIVER: u16 = 2;

fn announce(h: &mut Harness, node_id: u16, on: bool) {
    let settings = Settings {
        node_id,
        announce: on.into(),
        ..h.settings().unwrap()
    };
    h.set_settings(settings).unwrap();
}

fn now_ns() -> u64 {
    lb_userspace::sys::monotonic_ns()
}

/// `entry` without what only its own instance's data path and clock decide: the
/// next-hop cache and the timestamps.
fn forwarding(mut entry: FlowEntry) -> FlowEntry {
    entry.tx_ifindex = 0;
    entry.tx_dmac = [0; 6];
    entry.tx_smac = [0; 6];
    entry.created_ns = 0;
    entry.last_seen_ns = 0;
    entry
}

/// (kind, state) of each event.
fn kinds(events: &[FlowEvent]) -> Vec<(u8, u8)> {
    events.iter().map(|e| (e.kind, e.entry.state)).collect()
}

/// Service "web"'s id and its backend's, as this instance numbered them.
fn web_ids(h: &Harness, port: u16, backend: (Ipv4Addr, u16)) -> (u32, u32) {
    let service = h.table().service_at((VIP, port, IPPROTO_TCP)).unwrap().id;
    (service, h.table().backend_id(backend).unwrap())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_syn_makes_one_created_event_whose_record_rebuilds_both_entries() {
    with_harness(|h| {
        announce(h, OWNER, true);
        let syn = Tcp::syn(CLIENT, 40000, VIP, 80);
        let (verdict, out) = h.run(&syn.build(&[]));
        assert_eq!(verdict, XDP_REDIRECT);
        let fkey = flow_key(CLIENT, 40000, VIP, 80, IPPROTO_TCP);
        let forward = h.flow(&fkey).unwrap();
        let port = u16::from_be(forward.new_src_port);
        assert_eq!(out, full_nat_to_server1(syn, port).build(&[]));
        assert_checksums_valid(&out);
        let rkey = flow_key(SERVER1, 8080, SNAT, port, IPPROTO_TCP);
        let reverse = h.flow(&rkey).unwrap();
        assert_eq!((forward.owner, reverse.owner), (OWNER, OWNER));

        let events = h.flow_events();
        assert_eq!(kinds(&events), [(FLOW_EVENT_CREATED, FLOW_STATE_SYN_SEEN)]);
        assert_eq!(events[0].key, fkey);
        assert_eq!(forwarding(events[0].entry), forwarding(forward));
        let batch = announcements(&events, now_ns());
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].op, RecordOp::Upsert);
        let (service_id, backend_id) = web_ids(h, 80, (SERVER1, 8080));
        let [(k1, e1), (k2, e2)] = batch[0].record.entries(service_id, backend_id, now_ns());
        assert_eq!((k1, k2), (fkey, rkey));
        assert_eq!(forwarding(e1), forwarding(forward));
        assert_eq!(forwarding(e2), forwarding(reverse));
        assert_eq!(h.counter(counters::FLOW_EVENTS_LOST), 0);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn with_announcements_off_no_event_is_made() {
    with_harness(|h| {
        // Without [peers]: no owner, no event.
        let port = open_full_nat(h);
        let fkey = flow_key(CLIENT, 40000, VIP, 80, IPPROTO_TCP);
        assert_eq!(h.flow(&fkey).unwrap().owner, 0);
        // A node id with announcements off: owned, still no event.
        announce(h, OWNER, false);
        let (verdict, _) = h.run(&Tcp::syn(CLIENT, 40001, VIP, 80).build(&[]));
        assert_eq!(verdict, XDP_REDIRECT);
        let second = h
            .flow(&flow_key(CLIENT, 40001, VIP, 80, IPPROTO_TCP))
            .unwrap();
        assert_eq!(second.owner, OWNER);
        let (verdict, _) = h.run(&server1_syn_ack(port).build(&[]));
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(h.flow(&fkey).unwrap().state, FLOW_STATE_SYN_ACK_SEEN);
        assert!(h.flow_events().is_empty());
        assert_eq!(h.counter(counters::FLOW_EVENTS_LOST), 0);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn state_changes_make_changed_events_and_plain_segments_none() {
    with_harness(|h| {
        announce(h, OWNER, true);
        let port = open_full_nat(h);
        let client = Tcp {
            syn: false,
            seq: 1001,
            ack: Some(5001),
            ..Tcp::syn(CLIENT, 40000, VIP, 80)
        };
        let server = Tcp {
            syn: false,
            seq: 5001,
            ack: Some(1001),
            ..server1_segment(port)
        };
        let steps = [
            (
                server1_syn_ack(port).build(&[]),
                Some(FLOW_STATE_SYN_ACK_SEEN),
            ),
            (client.build(&[]), Some(FLOW_STATE_ESTABLISHED)),
            (client.build(b"data"), None),
            (server.build(b"more"), None),
            (
                Tcp {
                    fin: true,
                    ..client
                }
                .build(&[]),
                Some(FLOW_STATE_HALF_CLOSED_CLIENT),
            ),
            (
                Tcp {
                    fin: true,
                    ..server
                }
                .build(&[]),
                Some(FLOW_STATE_CLOSING),
            ),
        ];
        assert_eq!(
            kinds(&h.flow_events()),
            [(FLOW_EVENT_CREATED, FLOW_STATE_SYN_SEEN)]
        );
        for (packet, changed) in steps {
            let (verdict, _) = h.run(&packet);
            assert_eq!(verdict, XDP_REDIRECT);
            let events = h.flow_events();
            match changed {
                Some(state) => {
                    assert_eq!(kinds(&events), [(FLOW_EVENT_CHANGED, state)]);
                    // The entry the packet hit, under its own key.
                    assert_eq!(h.flow(&events[0].key).unwrap().state, state);
                    let record = FlowRecord::from_entry(&events[0].key, &events[0].entry, 0);
                    assert_eq!(record.client.port(), 40000);
                    assert_eq!(record.snat.unwrap().port(), port);
                }
                None => assert!(events.is_empty(), "{events:?}"),
            }
        }
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_syn_reusing_a_closed_tuple_reports_the_old_flows_removal_then_the_new_one() {
    with_harness(|h| {
        announce(h, OWNER, true);
        let _ = open_full_nat(h);
        let rst = Tcp {
            syn: false,
            rst: true,
            seq: 1001,
            ..Tcp::syn(CLIENT, 40000, VIP, 80)
        };
        assert_eq!(h.run(&rst.build(&[])).0, XDP_REDIRECT);
        let syn = Tcp::syn(CLIENT, 40000, VIP, 80);
        assert_eq!(h.run(&syn.build(&[])).0, XDP_REDIRECT);
        assert_eq!(h.counter(counters::FLOW_REPLACED), 1);
        let events = h.flow_events();
        assert_eq!(
            kinds(&events),
            [
                (FLOW_EVENT_CREATED, FLOW_STATE_SYN_SEEN),
                (FLOW_EVENT_CHANGED, FLOW_STATE_CLOSING),
                (lb_common::FLOW_EVENT_REMOVED, FLOW_STATE_CLOSING),
                (FLOW_EVENT_CREATED, FLOW_STATE_SYN_SEEN),
            ]
        );
        assert_eq!(h.flows().len(), 2, "only the new pair");
        // For the peers, the new connection replaces the old one.
        let batch = announcements(&events, now_ns());
        assert_eq!(batch.len(), 1);
        assert_eq!(
            (batch[0].op, batch[0].record.state),
            (RecordOp::Upsert, FLOW_STATE_SYN_SEEN)
        );
    });
}

/// A proxied handshake on client port `sport` up to the server's SYN-ACK: returns
/// (cookie, SNAT port).
fn proxy_handshake(h: &mut Harness, sport: u16) -> (u32, u16) {
    let (verdict, out) = h.run(&client_seg(sport, 1000, 0, F_SYN, vec![]).bytes());
    assert_eq!(verdict, XDP_TX);
    let cookie = ParsedTcp::of(&out).seq;
    let ack = client_seg(sport, 1001, cookie.wrapping_add(1), F_ACK, vec![]);
    assert_eq!(h.run(&ack.bytes()).0, XDP_REDIRECT);
    let forward = h
        .flow(&flow_key(CLIENT, sport, VIP, 443, IPPROTO_TCP))
        .unwrap();
    let port = u16::from_be(forward.new_src_port);
    let (verdict, _) = h.run(&proxied_server_seg(port, 5000, 1001, F_SYN | F_ACK, &[]).bytes());
    assert_eq!(verdict, XDP_TX, "the balancer ACKs the server");
    (cookie, port)
}

/// A segment from service "proxied"'s backend 198.19.0.11:8443 to the SNAT port.
fn proxied_server_seg(port: u16, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Segment {
    Segment {
        src_mac: SERVER1_MAC,
        dst_mac: LB_INT_MAC,
        src: SERVER1,
        dst: SNAT,
        ttl: 64,
        sport: 8443,
        dport: port,
        seq,
        ack,
        flags,
        window: 1000,
        options: vec![],
        payload: payload.to_vec(),
    }
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn the_proxy_servers_syn_ack_makes_a_changed_event_with_the_delta() {
    with_harness(|h| {
        announce(h, OWNER, true);
        let (cookie, port) = proxy_handshake(h, 40100);
        let events = h.flow_events();
        assert_eq!(
            kinds(&events),
            [
                (FLOW_EVENT_CREATED, FLOW_STATE_SYNPROXY),
                (FLOW_EVENT_CHANGED, FLOW_STATE_ESTABLISHED)
            ]
        );
        assert_eq!(
            events[0].entry.seq_delta, cookie,
            "the cookie while opening"
        );
        let changed = events[1].entry;
        assert_eq!(changed.seq_delta, cookie.wrapping_sub(5000));
        assert_eq!(changed.proxy_isn, cookie);
        assert_eq!(changed.synproxy, SYNPROXY_ACTIVE);
        assert_eq!(
            events[1].key,
            flow_key(SERVER1, 8443, SNAT, port, IPPROTO_TCP)
        );
        let batch = announcements(&events, now_ns());
        assert_eq!(batch.len(), 1, "one record for the connection");
        assert_eq!(batch[0].record.seq_delta, cookie.wrapping_sub(5000));
        assert_eq!(batch[0].record.state, FLOW_STATE_ESTABLISHED);
    });
}

/// Sends each (packet, expected frame) as the owner, then hands the connection's record
/// to an instance that never saw it (this one, its table emptied, as node `RECEIVER`)
/// and sends them again: the same bytes must leave.
fn same_bytes_after_the_record_is_installed(h: &mut Harness, packets: &[(Vec<u8>, Vec<u8>)]) {
    for (packet, expected) in packets {
        let (verdict, out) = h.run(packet);
        assert_eq!(verdict, XDP_REDIRECT, "at the owner");
        assert_eq!(&out, expected, "at the owner");
        assert_checksums_valid(&out);
    }
    let batch: Vec<Announcement> = announcements(&h.flow_events(), now_ns());
    assert_eq!(batch.len(), 1);
    let owned = h.flows();
    assert_eq!(owned.len(), 2);
    for (key, _) in &owned {
        assert!(h.remove_flow(key));
    }
    announce(h, RECEIVER, true);
    let stats = h.apply_announcements(RECEIVER, OWNER, &batch);
    assert_eq!(stats.installed, 1, "{stats:?}");
    let mut installed = h.flows();
    installed.sort_by_key(|(k, _)| (k.src_ip, k.src_port));
    let mut owned = owned;
    owned.sort_by_key(|(k, _)| (k.src_ip, k.src_port));
    for ((k1, e1), (k2, e2)) in owned.iter().zip(&installed) {
        assert_eq!(k1, k2);
        assert_eq!(forwarding(*e1), forwarding(*e2));
        assert_eq!(e2.tx_ifindex, 0, "written without a next-hop cache");
        assert_eq!(e2.owner, OWNER);
    }
    for (packet, expected) in packets {
        let (verdict, out) = h.run(packet);
        assert_eq!(verdict, XDP_REDIRECT, "at the receiver");
        assert_eq!(&out, expected, "at the receiver");
    }
    assert!(
        h.flow_events().is_empty(),
        "mid-connection segments change nothing"
    );
    assert_eq!(h.flows().len(), 2);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_full_nat_record_forwards_both_directions_as_the_owner_does() {
    with_harness(|h| {
        announce(h, OWNER, true);
        let port = open_full_nat(h);
        let _ = h.run(&server1_syn_ack(port).build(&[]));
        let client = Tcp {
            syn: false,
            seq: 1001,
            ack: Some(5001),
            ..Tcp::syn(CLIENT, 40000, VIP, 80)
        };
        let _ = h.run(&client.build(&[]));
        let server = Tcp {
            syn: false,
            seq: 5001,
            ack: Some(1006),
            ..server1_segment(port)
        };
        let to_client = Tcp {
            src_mac: LB_EXT_MAC,
            dst_mac: CLIENT_MAC,
            src: VIP,
            dst: CLIENT,
            ttl: 63,
            sport: 80,
            dport: 40000,
            ..server
        };
        same_bytes_after_the_record_is_installed(
            h,
            &[
                (
                    client.build(b"hello"),
                    full_nat_to_server1(client, port).build(b"hello"),
                ),
                (server.build(b"world"), to_client.build(b"world")),
            ],
        );
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_dnat_record_forwards_both_directions_as_the_owner_does() {
    with_harness(|h| {
        announce(h, OWNER, true);
        let syn = Tcp::syn(CLIENT, 41000, DNAT_VIP, 80);
        let client = Tcp {
            syn: false,
            seq: 1001,
            ack: Some(7001),
            ..syn
        };
        let server = Tcp {
            src_mac: SERVER2_MAC,
            dst_mac: LB_INT_MAC,
            src: SERVER2,
            dst: CLIENT,
            sport: 80,
            dport: 41000,
            syn: false,
            seq: 7001,
            ack: Some(1006),
            ..syn
        };
        let syn_ack = Tcp {
            syn: true,
            seq: 7000,
            ack: Some(1001),
            ..server
        };
        for packet in [syn.build(&[]), syn_ack.build(&[]), client.build(&[])] {
            assert_eq!(h.run(&packet).0, XDP_REDIRECT);
        }
        same_bytes_after_the_record_is_installed(
            h,
            &[
                (
                    client.build(b"hello"),
                    Tcp {
                        src_mac: LB_INT_MAC,
                        dst_mac: SERVER2_MAC,
                        dst: SERVER2,
                        ttl: 63,
                        ..client
                    }
                    .build(b"hello"),
                ),
                (
                    server.build(b"world"),
                    Tcp {
                        src_mac: LB_EXT_MAC,
                        dst_mac: CLIENT_MAC,
                        src: DNAT_VIP,
                        ttl: 63,
                        ..server
                    }
                    .build(b"world"),
                ),
            ],
        );
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_proxied_record_keeps_translating_with_its_delta() {
    with_harness(|h| {
        announce(h, OWNER, true);
        let (cookie, port) = proxy_handshake(h, 40100);
        assert_ne!(cookie.wrapping_sub(5000), 0, "a nonzero delta");
        // Server → client: SEQ moved into the cookie's space.
        let server = proxied_server_seg(port, 5001, 1001, F_ACK | F_PSH, b"hi");
        let to_client = Segment {
            src_mac: LB_EXT_MAC,
            dst_mac: CLIENT_MAC,
            src: VIP,
            dst: CLIENT,
            ttl: 63,
            sport: 443,
            dport: 40100,
            seq: cookie.wrapping_add(1),
            ..server.clone()
        };
        // Client → server: ACK moved back into the server's space.
        let client = Segment {
            payload: b"ok".to_vec(),
            ..client_seg(40100, 1001, cookie.wrapping_add(3), F_ACK | F_PSH, vec![])
        };
        let to_server = Segment {
            src_mac: LB_INT_MAC,
            dst_mac: SERVER1_MAC,
            src: SNAT,
            dst: SERVER1,
            ttl: 63,
            sport: port,
            dport: 8443,
            ack: 5003,
            ..client.clone()
        };
        same_bytes_after_the_record_is_installed(
            h,
            &[
                (server.bytes(), to_client.bytes()),
                (client.bytes(), to_server.bytes()),
            ],
        );
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_record_for_a_flow_the_receiver_owns_does_not_change_it() {
    with_harness(|h| {
        announce(h, RECEIVER, true);
        let port = open_full_nat(h);
        let before = h.flows();
        let fkey = flow_key(CLIENT, 40000, VIP, 80, IPPROTO_TCP);
        let mut record = FlowRecord::from_entry(&fkey, &h.flow(&fkey).unwrap(), now_ns());
        // Another instance's idea of the connection: another SNAT port, further on.
        record.owner = OWNER;
        record.state = FLOW_STATE_ESTABLISHED;
        record.snat = Some(std::net::SocketAddrV4::new(SNAT, port ^ 1));
        let other = Announcement {
            op: RecordOp::Upsert,
            record,
        };
        let stats = h.apply_announcements(RECEIVER, OWNER, &[other]);
        assert_eq!(stats.rejected.owned_by_receiver, 1, "{stats:?}");
        // A removal by a node that does not own it.
        let remove = Announcement {
            op: RecordOp::Remove,
            ..other
        };
        let stats = h.apply_announcements(RECEIVER, OWNER, &[remove]);
        assert_eq!(stats.rejected.owner_mismatch, 1, "{stats:?}");
        assert_eq!(h.flows(), before, "both entries exactly as they were");
        // The receiver's own forwarding still applies.
        let (verdict, out) = h.run(&server1_syn_ack(port).build(&[]));
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(ParsedTcp::of(&out).dst, CLIENT);
    });
}

/// A peer's record of client:40000 → VIP:80 through 198.19.0.11:8080 (service "web"),
/// established, SNAT port 20500.
fn peer_record() -> FlowRecord {
    use std::net::SocketAddrV4;
    FlowRecord {
        owner: OWNER,
        proto: IPPROTO_TCP,
        state: FLOW_STATE_ESTABLISHED,
        client: SocketAddrV4::new(CLIENT, 40000),
        vip: SocketAddrV4::new(VIP, 80),
        backend: SocketAddrV4::new(SERVER1, 8080),
        snat: Some(SocketAddrV4::new(SNAT, 20500)),
        synproxy: 0,
        wscales: 0,
        seq_delta: 0,
        ts_delta: 0,
        proxy_isn: 0,
        age_ms: 3000,
    }
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_record_of_an_unknown_service_or_backend_makes_no_entry() {
    use std::net::SocketAddrV4;
    with_harness(|h| {
        let upsert = |record| Announcement {
            op: RecordOp::Upsert,
            record,
        };
        let no_service = FlowRecord {
            vip: SocketAddrV4::new(VIP, 81),
            ..peer_record()
        };
        let udp = FlowRecord {
            proto: IPPROTO_UDP,
            ..peer_record()
        };
        // 198.19.0.13:5353 is a backend here, but of "dns", not of "web".
        let no_backend = FlowRecord {
            backend: SocketAddrV4::new(SERVER3, 5353),
            ..peer_record()
        };
        let other_port = FlowRecord {
            backend: SocketAddrV4::new(SERVER1, 8081),
            ..peer_record()
        };
        let stats = h.apply_announcements(
            RECEIVER,
            OWNER,
            &[
                upsert(no_service),
                upsert(udp),
                upsert(no_backend),
                upsert(other_port),
            ],
        );
        assert_eq!(stats.rejected.unknown_service, 2, "{stats:?}");
        assert_eq!(stats.rejected.unknown_backend, 2, "{stats:?}");
        assert_eq!(stats.installed, 0);
        assert!(h.table().backend_id((SERVER3, 5353)).is_some());
        assert!(h.flows().is_empty(), "no flow entry");
        // The client's next segment finds no flow, as before.
        let ack = Tcp {
            syn: false,
            seq: 1001,
            ack: Some(5001),
            ..Tcp::syn(CLIENT, 40000, VIP, 80)
        };
        assert_eq!(h.run(&ack.build(&[])).0, XDP_DROP);
        assert_eq!(h.counter(counters::DROP_NO_FLOW), 1);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn the_owners_removal_deletes_the_copy_and_touches_write_nothing() {
    with_harness(|h| {
        let record = peer_record();
        let stats = h.apply_announcements(
            RECEIVER,
            OWNER,
            &[Announcement {
                op: RecordOp::Upsert,
                record,
            }],
        );
        assert_eq!(stats.installed, 1);
        let installed = h.flows();
        assert_eq!(installed.len(), 2);
        let stats = h.apply_announcements(
            RECEIVER,
            OWNER,
            &[Announcement {
                op: RecordOp::Touch,
                record,
            }],
        );
        assert_eq!(stats.touched, 1);
        assert_eq!(h.flows(), installed, "a touch is activity, not a write");
        let stats = h.apply_announcements(
            RECEIVER,
            OWNER,
            &[Announcement {
                op: RecordOp::Remove,
                record,
            }],
        );
        assert_eq!(stats.removed, 1);
        assert!(h.flows().is_empty(), "both entries gone");
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_full_ring_counts_lost_events_and_still_forwards() {
    with_harness(|h| {
        announce(h, OWNER, true);
        // New DNAT flows (no SNAT port to run out of) until the ring, never read, is
        // full: about 40,000 events of 104 bytes in 4 MiB.
        let mut sport = 1024u16;
        let mut lost = 0;
        while lost == 0 {
            for _ in 0..1000 {
                let (verdict, _) = h.run(&Tcp::syn(CLIENT, sport, DNAT_VIP, 80).build(&[]));
                assert_eq!(verdict, XDP_REDIRECT);
                sport += 1;
            }
            lost = h.counter(counters::FLOW_EVENTS_LOST);
            assert!(sport < 60_000, "the ring never filled");
        }
        let syn = Tcp::syn(CLIENT, sport, DNAT_VIP, 80);
        let (verdict, out) = h.run(&syn.build(&[]));
        assert_eq!(verdict, XDP_REDIRECT, "forwarded as usual");
        let expected = Tcp {
            src_mac: LB_INT_MAC,
            dst_mac: SERVER2_MAC,
            dst: SERVER2,
            ttl: 63,
            ..syn
        };
        assert_eq!(out, expected.build(&[]));
        assert_eq!(h.counter(counters::FLOW_EVENTS_LOST), lost + 1);
        assert!(
            h.flow(&flow_key(CLIENT, sport, DNAT_VIP, 80, IPPROTO_TCP))
                .is_some(),
            "the flow exists, only its event is lost"
        );
        // The events that fit are all there, each a new flow.
        let events = h.flow_events();
        assert!(events.len() > 30_000, "{}", events.len());
        assert!(events.iter().all(|e| e.kind == FLOW_EVENT_CREATED));
        // Read, the ring takes events again.
        assert_eq!(
            h.run(&Tcp::syn(CLIENT, sport + 1, DNAT_VIP, 80).build(&[]))
                .0,
            XDP_REDIRECT
        );
        assert_eq!(h.flow_events().len(), 1);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn the_reader_waits_for_events_and_hands_them_out_in_batches() {
    use lb_userspace::dataplane::events::FlowEventReader;
    use std::time::Duration;
    use tokio::time::timeout;

    with_harness(|h| {
        announce(h, OWNER, true);
        let ring = h.take_flow_events().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut reader = FlowEventReader::new(ring).unwrap();
            let quiet = timeout(Duration::from_millis(200), reader.next_batch(8)).await;
            assert!(quiet.is_err(), "no event, no batch");
            for sport in 40000..40003 {
                let (verdict, _) = h.run(&Tcp::syn(CLIENT, sport, VIP, 80).build(&[]));
                assert_eq!(verdict, XDP_REDIRECT);
            }
            let wait = Duration::from_secs(2);
            let first = timeout(wait, reader.next_batch(2)).await.unwrap();
            let rest = timeout(wait, reader.next_batch(8)).await.unwrap();
            let ports: Vec<u16> = first
                .iter()
                .chain(&rest)
                .map(|e| u16::from_be(e.key.src_port))
                .collect();
            assert_eq!(ports, [40000, 40001, 40002]);
            assert_eq!(first.len(), 2, "at most max");
            // A later event wakes the reader again.
            let _ = h.run(&Tcp::syn(CLIENT, 40003, VIP, 80).build(&[]));
            let later = timeout(wait, reader.next_batch(8)).await.unwrap();
            assert_eq!(later.len(), 1);
        });
    });
}

/// The verifier accepts both programs well under its budget; the counts are printed
/// for the record (`--nocapture`).
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn programs_stay_well_under_the_verifier_budget() {
    with_harness(|h| {
        let counts = h.verified_instructions().unwrap();
        for (name, count) in &counts {
            println!("verified_instruction_count {name} = {count}");
            assert!(*count > 0 && *count < 500_000, "{name}: {count}");
        }
        assert_eq!(counts.len(), 2);
    });
}
