//! IPv4 fragments of balanced flows: followed without reassembly, both directions.
//! Inputs are whole datagrams built with etherparse and cut here; each output fragment
//! must equal the expected datagram cut the same way (byte for byte), carry a valid IP
//! checksum, and the outputs reassembled must carry a valid L4 checksum.

use lb_common::{FragmentEntry, FragmentKey};

use super::*;

/// Cuts the IPv4 datagram in `frame` (Ethernet + 20-byte IPv4 header) at the payload
/// byte offsets `cuts` (multiples of 8) into fragments with IP id `id`: DF cleared, MF
/// on all but the last, IP checksum computed.
pub(super) fn fragment(frame: &[u8], id: u16, cuts: &[usize]) -> Vec<Vec<u8>> {
    let (head, payload) = frame.split_at(14 + 20);
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(payload.len());
    bounds
        .windows(2)
        .map(|w| {
            let (start, end) = (w[0], w[1]);
            assert_eq!(start % 8, 0, "fragment offsets are multiples of 8");
            let mut out = head.to_vec();
            out[16..18].copy_from_slice(&((20 + end - start) as u16).to_be_bytes());
            out[18..20].copy_from_slice(&id.to_be_bytes());
            let more = if end < payload.len() { 0x2000 } else { 0 };
            out[20..22].copy_from_slice(&(more | (start / 8) as u16).to_be_bytes());
            out.extend_from_slice(&payload[start..end]);
            set_ip_checksum(&mut out);
            out
        })
        .collect()
}

fn ip_checksum(frame: &[u8]) -> u16 {
    let mut sum = 0u32;
    for i in (14..34).step_by(2) {
        if i != 24 {
            sum += u32::from(u16::from_be_bytes([frame[i], frame[i + 1]]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn set_ip_checksum(frame: &mut [u8]) {
    let check = ip_checksum(frame);
    frame[24..26].copy_from_slice(&check.to_be_bytes());
}

/// Rebuilds one unfragmented frame from fragments (in any order), as a receiver
/// would: header of the first fragment, flags cleared, payloads at their offsets.
fn reassemble(fragments: &[Vec<u8>]) -> Vec<u8> {
    let offset = |f: &Vec<u8>| usize::from(u16::from_be_bytes([f[20], f[21]]) & 0x1fff) * 8;
    let first = fragments.iter().find(|f| offset(f) == 0).expect("first");
    let total = fragments
        .iter()
        .map(|f| offset(f) + f.len() - 34)
        .max()
        .unwrap();
    let mut payload = vec![0u8; total];
    for f in fragments {
        payload[offset(f)..offset(f) + f.len() - 34].copy_from_slice(&f[34..]);
    }
    let mut out = first[..34].to_vec();
    out[16..18].copy_from_slice(&((20 + total) as u16).to_be_bytes());
    out[20..22].copy_from_slice(&[0, 0]);
    out.extend_from_slice(&payload);
    set_ip_checksum(&mut out);
    out
}

/// Runs every fragment; each must be redirected, valid in its IP checksum and equal
/// to the matching fragment of `expected`; their reassembly must have valid checksums.
fn assert_fragments_forwarded(h: &mut Harness, sent: &[Vec<u8>], expected: &[Vec<u8>]) {
    let mut outs = Vec::new();
    for (i, (fragment, expected)) in sent.iter().zip(expected).enumerate() {
        let (verdict, out) = h.run(fragment);
        assert_eq!(verdict, XDP_REDIRECT, "fragment {i}");
        assert_eq!(
            u16::from_be_bytes([out[24], out[25]]),
            ip_checksum(&out),
            "IP checksum of fragment {i}"
        );
        assert_same(&out, expected, &format!("fragment {i}"));
        outs.push(out);
    }
    assert_checksums_valid(&reassemble(&outs));
}

/// `assert_eq!` on frames, reporting the first differing byte instead of both frames.
fn assert_same(got: &[u8], expected: &[u8], what: &str) {
    if let Some(at) = (0..got.len().min(expected.len())).find(|&i| got[i] != expected[i]) {
        panic!(
            "{what}: byte {at} is {:#04x}, expected {:#04x}",
            got[at], expected[at]
        );
    }
    assert_eq!(got.len(), expected.len(), "{what}: length");
}

fn fragment_key(src: Ipv4Addr, dst: Ipv4Addr, id: u16, proto: u8) -> FragmentKey {
    FragmentKey {
        src_ip: u32::from_ne_bytes(src.octets()),
        dst_ip: u32::from_ne_bytes(dst.octets()),
        id: id.to_be(),
        proto,
        _pad: 0,
    }
}

fn record(h: &Harness, key: &FragmentKey) -> Option<FragmentEntry> {
    h.fragments()
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, entry)| entry)
}

/// A payload whose every byte tells its position, so a misplaced piece shows.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 256) as u8).collect()
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn udp_fragments_in_order_both_ways_full_nat() {
    with_harness(|h| {
        // A 3,000-byte request in three fragments (1480 + 1480 + 48 bytes of payload).
        let data = payload(3000);
        let request = udp_packet(CLIENT_MAC, LB_EXT_MAC, CLIENT, 50000, VIP, 5353, 64, &data);
        let cuts = [1480, 2960];
        let sent = fragment(&request, 0x1234, &cuts);
        let (verdict, first_out) = h.run(&sent[0]);
        assert_eq!(verdict, XDP_REDIRECT);
        let forward = h
            .flow(&flow_key(CLIENT, 50000, VIP, 5353, IPPROTO_UDP))
            .expect("the first fragment opened the flow");
        assert_eq!(forward.state, FLOW_STATE_UDP);
        let port = u16::from_be(forward.new_src_port);
        let to_server = udp_packet(
            LB_INT_MAC,
            SERVER3_MAC,
            SNAT,
            port,
            SERVER3,
            5353,
            63,
            &data,
        );
        let expected = fragment(&to_server, 0x1234, &cuts);
        assert_same(&first_out, &expected[0], "first fragment");
        let key = fragment_key(CLIENT, VIP, 0x1234, IPPROTO_UDP);
        let rec = record(h, &key).expect("the first fragment is recorded");
        assert_eq!(rec.flow, flow_key(CLIENT, 50000, VIP, 5353, IPPROTO_UDP));
        assert_eq!(rec.end, 1480);
        let followed = h.counter(counters::FRAGMENTS_FOLLOWED);
        let service = h.service_stats(forward.service_id).unwrap();
        let mut outs = vec![first_out];
        for (i, fragment) in sent.iter().enumerate().skip(1) {
            let (verdict, out) = h.run(fragment);
            assert_eq!(verdict, XDP_REDIRECT, "fragment {i}");
            assert_same(&out, &expected[i], &format!("fragment {i}"));
            assert_eq!(u16::from_be_bytes([out[24], out[25]]), ip_checksum(&out));
            outs.push(out);
        }
        assert_checksums_valid(&reassemble(&outs));
        assert_same(
            &reassemble(&outs)[26..],
            &to_server[26..],
            "reassembled datagram",
        );
        assert_eq!(h.counter(counters::FRAGMENTS_FOLLOWED), followed + 2);
        assert_eq!(record(h, &key).unwrap().end, 3008, "all data forwarded");
        let after = h.service_stats(forward.service_id).unwrap();
        assert_eq!(after.packets, service.packets + 2, "counted like hits");
        assert_eq!(after.new_flows, service.new_flows, "no new flow");
        assert_eq!(h.flow_count(), 2);

        // The 2,000-byte answer, fragmented by the server to the SNAT address.
        let answer = payload(2000);
        let reply = udp_packet(
            SERVER3_MAC,
            LB_INT_MAC,
            SERVER3,
            5353,
            SNAT,
            port,
            64,
            &answer,
        );
        let to_client = udp_packet(
            LB_EXT_MAC, CLIENT_MAC, VIP, 5353, CLIENT, 50000, 63, &answer,
        );
        assert_fragments_forwarded(
            h,
            &fragment(&reply, 0xbeef, &[1480]),
            &fragment(&to_client, 0xbeef, &[1480]),
        );
        let rec = record(h, &fragment_key(SERVER3, SNAT, 0xbeef, IPPROTO_UDP)).unwrap();
        assert_eq!(rec.flow, flow_key(SERVER3, 5353, SNAT, port, IPPROTO_UDP));
        assert_eq!(h.counter(counters::FRAGMENTS_FOLLOWED), followed + 3);
        assert_eq!(h.flow_count(), 2);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn tcp_fragments_follow_an_established_connection() {
    with_harness(|h| {
        let port = open_full_nat(h);
        let data = Tcp {
            syn: false,
            ack: Some(5001),
            seq: 1001,
            ..Tcp::syn(CLIENT, 40000, VIP, 80)
        };
        let bytes = payload(2500);
        let cuts = [1480, 2000];
        assert_fragments_forwarded(
            h,
            &fragment(&data.build(&bytes), 77, &cuts),
            &fragment(&full_nat_to_server1(data, port).build(&bytes), 77, &cuts),
        );
        assert_eq!(h.counter(counters::FRAGMENTS_FOLLOWED), 2);
        assert_eq!(h.counter(counters::NEW_FLOWS), 1, "no second flow");
        assert_eq!(h.flow_count(), 2);
    });
}

/// DNAT: the server answers the client's own address, which is not a balancer
/// address; its fragments are still followed, since the first one hit a flow.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn dnat_server_fragments_to_the_client_are_followed() {
    with_harness(|h| {
        let syn = Tcp::syn(CLIENT, 41000, DNAT_VIP, 80);
        let (verdict, _) = h.run(&syn.build(&[]));
        assert_eq!(verdict, XDP_REDIRECT);
        let answer = Tcp {
            src_mac: SERVER2_MAC,
            dst_mac: LB_INT_MAC,
            src: SERVER2,
            dst: CLIENT,
            sport: 80,
            dport: 41000,
            syn: false,
            ack: Some(1001),
            seq: 7001,
            ..syn
        };
        let to_client = Tcp {
            src_mac: LB_EXT_MAC,
            dst_mac: CLIENT_MAC,
            src: DNAT_VIP,
            ttl: 63,
            ..answer
        };
        let bytes = payload(2000);
        assert_fragments_forwarded(
            h,
            &fragment(&answer.build(&bytes), 0x4242, &[1480]),
            &fragment(&to_client.build(&bytes), 0x4242, &[1480]),
        );
        assert_eq!(h.counter(counters::FRAGMENTS_FOLLOWED), 1);
        assert_eq!(h.flow_count(), 2);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn later_fragment_before_its_first_is_dropped_and_leaves_nothing() {
    with_harness(|h| {
        let request = udp_packet(
            CLIENT_MAC,
            LB_EXT_MAC,
            CLIENT,
            50001,
            VIP,
            5353,
            64,
            &payload(2000),
        );
        let sent = fragment(&request, 9, &[1480]);
        let (verdict, _) = h.run(&sent[1]);
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(h.counter(counters::DROP_FRAGMENT_NO_FIRST), 1);
        assert_eq!(h.flow_count(), 0, "no flow entry");
        assert!(h.fragments().is_empty(), "no fragment record");

        // The first fragment, when it comes, opens the flow; the sender's resent tail
        // then follows it.
        let (verdict, _) = h.run(&sent[0]);
        assert_eq!(verdict, XDP_REDIRECT);
        let (verdict, _) = h.run(&sent[1]);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(h.counter(counters::DROP_FRAGMENT_NO_FIRST), 1);
        assert_eq!(h.counter(counters::FRAGMENTS_FOLLOWED), 1);

        // A later fragment for another host passes untouched.
        let other = udp_packet(
            CLIENT_MAC,
            LB_EXT_MAC,
            CLIENT,
            50002,
            OTHER_HOST,
            5353,
            64,
            &payload(2000),
        );
        let tail = &fragment(&other, 10, &[1480])[1];
        let (verdict, out) = h.run(tail);
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(&out, tail);
        assert_eq!(h.counter(counters::DROP_FRAGMENT_NO_FIRST), 1);
    });
}

/// A datagram to a balancer address without a service on its port is the kernel's:
/// its first fragment and the later ones all pass untouched, and no flow is made.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn fragments_to_the_local_stack_all_pass() {
    with_harness(|h| {
        let datagram = udp_packet(
            CLIENT_MAC,
            LB_EXT_MAC,
            CLIENT,
            50007,
            VIP,
            9999,
            64,
            &payload(3000),
        );
        for (i, fragment) in fragment(&datagram, 13, &[1480, 2960]).iter().enumerate() {
            let (verdict, out) = h.run(fragment);
            assert_eq!(verdict, XDP_PASS, "fragment {i}");
            assert_same(&out, fragment, &format!("fragment {i} untouched"));
        }
        assert_eq!(h.counter(counters::PASS_LOCAL), 3);
        assert_eq!(h.counter(counters::DROP_FRAGMENT_NO_FIRST), 0);
        assert_eq!(h.counter(counters::FRAGMENTS_FOLLOWED), 0);
        assert_eq!(h.flow_count(), 0, "no flow entry");
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn overlapping_fragments_are_dropped() {
    with_harness(|h| {
        let request = udp_packet(
            CLIENT_MAC,
            LB_EXT_MAC,
            CLIENT,
            50003,
            VIP,
            5353,
            64,
            &payload(3000),
        );
        let sent = fragment(&request, 11, &[1480, 2960]);
        for fragment in &sent[..2] {
            let (verdict, _) = h.run(fragment);
            assert_eq!(verdict, XDP_REDIRECT);
        }
        let key = fragment_key(CLIENT, VIP, 11, IPPROTO_UDP);
        assert_eq!(record(h, &key).unwrap().end, 2960);
        // A copy of the second fragment, and one reaching back into the first's data
        // (it would rewrite bytes already forwarded, the UDP header among them).
        let overlapping = fragment(&request, 11, &[16, 1480]).remove(1);
        for (name, fragment) in [("duplicate", &sent[1]), ("overlap", &overlapping)] {
            let before = h.counter(counters::DROP_FRAGMENT_OVERLAP);
            let (verdict, _) = h.run(fragment);
            assert_eq!(verdict, XDP_DROP, "{name}");
            assert_eq!(
                h.counter(counters::DROP_FRAGMENT_OVERLAP),
                before + 1,
                "{name}"
            );
        }
        assert_eq!(record(h, &key).unwrap().end, 2960, "mark unchanged");
        // The last fragment still follows.
        let (verdict, _) = h.run(&sent[2]);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(h.counter(counters::FRAGMENTS_FOLLOWED), 2);
        assert_eq!(h.flow_count(), 2);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn tiny_fragments_are_dropped_and_leave_nothing() {
    with_harness(|h| {
        let syn = Tcp::syn(CLIENT, 40000, VIP, 80).build(&payload(64));
        let with_options = Segment {
            src_mac: CLIENT_MAC,
            dst_mac: LB_EXT_MAC,
            src: CLIENT,
            dst: VIP,
            ttl: 64,
            sport: 40001,
            dport: 80,
            seq: 1000,
            ack: 0,
            flags: F_SYN,
            window: 64240,
            // MSS, SACK permitted, NOP, NOP, window scale, NOP, NOP, NOP: 12 bytes.
            options: vec![2, 4, 5, 180, 4, 2, 1, 1, 3, 3, 7, 1],
            payload: payload(64),
        }
        .bytes();
        let udp = udp_packet(
            CLIENT_MAC,
            LB_EXT_MAC,
            CLIENT,
            50004,
            VIP,
            5353,
            64,
            &payload(64),
        );
        let cases = [
            // 16 of the 20 bytes of the TCP header.
            ("TCP header cut", fragment(&syn, 1, &[16]).remove(0)),
            // The base header, but only 4 of the 12 bytes of options.
            (
                "TCP options cut",
                fragment(&with_options, 2, &[24]).remove(0),
            ),
            // A TCP fragment at offset 8 (RFC 1858), with no record.
            ("TCP at offset 8", fragment(&syn, 3, &[8]).remove(1)),
        ];
        for (name, packet) in cases {
            let before = h.counter(counters::DROP_FRAGMENT_TINY);
            let (verdict, _) = h.run(&packet);
            assert_eq!(verdict, XDP_DROP, "{name}");
            assert_eq!(
                h.counter(counters::DROP_FRAGMENT_TINY),
                before + 1,
                "{name}"
            );
        }
        // The UDP header cannot be cut by a legal fragment (offsets are multiples of
        // 8): a first fragment shorter than 8 bytes is hand-made.
        let mut udp_cut = fragment(&udp, 4, &[8]).remove(0);
        udp_cut.truncate(34 + 4);
        udp_cut[16..18].copy_from_slice(&24u16.to_be_bytes());
        set_ip_checksum(&mut udp_cut);
        let (verdict, _) = h.run(&udp_cut);
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(h.counter(counters::DROP_FRAGMENT_TINY), 4);
        assert_eq!(h.counter(counters::DROP_FRAGMENT_NO_FIRST), 0);
        assert_eq!(h.flow_count(), 0, "no flow entry");
        assert!(h.fragments().is_empty(), "no fragment record");
        assert_eq!(h.counter(counters::NEW_FLOWS), 0);
    });
}

/// The UDP length of a first fragment is its datagram's: shorter than the fragment's
/// own bytes is still a lie.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn first_udp_fragment_with_a_length_below_its_bytes_is_dropped() {
    with_harness(|h| {
        let udp = udp_packet(
            CLIENT_MAC,
            LB_EXT_MAC,
            CLIENT,
            50005,
            VIP,
            5353,
            64,
            &payload(2000),
        );
        let mut first = fragment(&udp, 5, &[1480]).remove(0);
        first[34 + 4..34 + 6].copy_from_slice(&1000u16.to_be_bytes());
        let (verdict, _) = h.run(&first);
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(h.counter(counters::DROP_UDP_BAD_LENGTH), 1);
        assert_eq!(h.flow_count(), 0);
        assert!(h.fragments().is_empty());
    });
}

/// A record older than 30 s (Linux's ipfrag_time) counts as absent; a younger one is
/// followed.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_record_older_than_30_s_counts_as_absent() {
    with_harness(|h| {
        let request = udp_packet(
            CLIENT_MAC,
            LB_EXT_MAC,
            CLIENT,
            50006,
            VIP,
            5353,
            64,
            &payload(3000),
        );
        let sent = fragment(&request, 12, &[1480, 2960]);
        let (verdict, _) = h.run(&sent[0]);
        assert_eq!(verdict, XDP_REDIRECT);
        let key = fragment_key(CLIENT, VIP, 12, IPPROTO_UDP);
        let fresh = record(h, &key).unwrap();
        let aged = |seconds: u64| FragmentEntry {
            created_ns: fresh.created_ns - seconds * 1_000_000_000,
            ..fresh
        };
        h.set_fragment(key, aged(29)).unwrap();
        let (verdict, _) = h.run(&sent[1]);
        assert_eq!(verdict, XDP_REDIRECT, "29 s old: followed");
        h.set_fragment(
            key,
            FragmentEntry {
                end: 2960,
                ..aged(31)
            },
        )
        .unwrap();
        let (verdict, _) = h.run(&sent[2]);
        assert_eq!(verdict, XDP_DROP, "31 s old: absent");
        assert_eq!(h.counter(counters::DROP_FRAGMENT_NO_FIRST), 1);
        assert_eq!(h.counter(counters::FRAGMENTS_FOLLOWED), 1);
    });
}

/// A daemon from before FRAGMENTS existed pinned no such map: the new one still adopts
/// its state (`lb run --replace`) and creates and pins the map itself.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn state_pinned_without_fragments_is_adopted() {
    let netns = test_netns();
    netns.enter(|| {
        let dir =
            std::path::PathBuf::from(format!("/sys/fs/bpf/frdp-adopt-{}", std::process::id()));
        let result = std::panic::catch_unwind(|| {
            let mut old = Harness::load_pinned(CONFIG, &dir, false).expect("load");
            old.attach(EXT_IF, Some(lb_testbed::harness::AttachedMode::Generic))
                .expect("attach");
            old.release();
            drop(old);
            let pin = dir.join(lb_common::map_names::FRAGMENTS);
            std::fs::remove_file(&pin).expect("unpin FRAGMENTS");
            assert!(lb_testbed::harness::has_pinned_state(&dir));
            let mut new = Harness::load_pinned(CONFIG, &dir, true).expect("adopt");
            assert!(pin.exists(), "FRAGMENTS pinned again");
            new.adopt_links(true).expect("replace the program");
            new.detach_all();
        });
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    });
}
