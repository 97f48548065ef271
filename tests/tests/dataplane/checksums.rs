//! Checksums of packets that would open a flow: a SYN, a SYN-proxy cookie ACK or a first
//! UDP datagram with a wrong IPv4 header, TCP or UDP checksum is dropped with its own
//! counter and makes no entry; flow hits are not verified.
//!
//! The builders compute correct checksums; each case corrupts one in the frame.

use super::syn_proxy::client_seg;
use super::*;

const IP_CHECK: usize = 14 + 10;
const TCP_CHECK: usize = 14 + 20 + 16;
const UDP_CHECK: usize = 14 + 20 + 6;

/// Payload lengths that take every branch of the program's summing: none, odd and
/// even tails, each power-of-two block, one and two 512-byte blocks, and (with the SYN's
/// 20 option bytes) a 1500-byte IP packet.
const LENGTHS: [usize; 14] = [0, 1, 2, 3, 5, 6, 255, 511, 512, 513, 1001, 1024, 1399, 1440];

/// MSS, SACK permitted, timestamps, window scale: 20 option bytes, as Linux sends.
fn syn_options() -> Vec<u8> {
    let mut options = vec![2, 4, 0x05, 0xb4, 4, 2, 8, 10];
    options.extend_from_slice(&1234u32.to_be_bytes());
    options.extend_from_slice(&0u32.to_be_bytes());
    options.extend_from_slice(&[1, 3, 3, 7]);
    options
}

/// The id the controller gave service `name`.
fn service_id(h: &Harness, name: &str) -> u32 {
    (0..8)
        .find(|&id| h.table().service_name(id) == Some(name))
        .expect("service id")
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

/// A client SYN to "web" (VIP:80) with Linux's options and `len` bytes of payload.
fn syn_with(sport: u16, len: usize) -> Segment {
    Segment {
        dport: 80,
        options: syn_options(),
        payload: payload(len),
        ..client_seg(sport, 1000, 0, F_SYN, vec![])
    }
}

/// `frame` with the 16-bit word at `at` changed (a checksum or two data bytes).
fn corrupt(frame: &[u8], at: usize) -> Vec<u8> {
    let mut frame = frame.to_vec();
    frame[at] ^= 0x5a;
    if at + 1 < frame.len() {
        frame[at + 1] ^= 0x01;
    }
    frame
}

/// Runs `frame`, expects a drop counted by `counter` and in service `service`'s drops,
/// and no new flow entry.
fn assert_dropped(h: &mut Harness, name: &str, frame: &[u8], counter: u32, service: u32) {
    let before = h.counter(counter);
    let drops = h.service_stats(service).unwrap().drops;
    let flows = h.flow_count();
    let (verdict, _) = h.run(frame);
    assert_eq!(verdict, XDP_DROP, "{name}: verdict");
    assert_eq!(h.counter(counter), before + 1, "{name}: counter");
    assert_eq!(
        h.service_stats(service).unwrap().drops,
        drops + 1,
        "{name}: service drops"
    );
    assert_eq!(h.flow_count(), flows, "{name}: no flow entry");
}

fn assert_no_checksum_drops(h: &Harness) {
    for counter in [
        counters::DROP_IP_BAD_CHECKSUM,
        counters::DROP_TCP_BAD_CHECKSUM,
        counters::DROP_UDP_BAD_CHECKSUM,
    ] {
        assert_eq!(h.counter(counter), 0, "counter {counter}");
    }
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn syn_with_a_bad_ip_header_checksum_opens_nothing() {
    with_harness(|h| {
        let web = service_id(h, "web");
        let syn = Tcp::syn(CLIENT, 40000, VIP, 80).build(&[]);
        assert_dropped(
            h,
            "bad IP checksum",
            &corrupt(&syn, IP_CHECK),
            counters::DROP_IP_BAD_CHECKSUM,
            web,
        );
        // A bad IP checksum wins over a bad TCP one: the header is checked first.
        let both = corrupt(&corrupt(&syn, IP_CHECK), TCP_CHECK);
        assert_dropped(h, "both bad", &both, counters::DROP_IP_BAD_CHECKSUM, web);
        assert_eq!(h.counter(counters::DROP_TCP_BAD_CHECKSUM), 0);
        assert_eq!(h.counter(counters::NEW_FLOWS), 0);
        assert!(h.flows().is_empty());
        // The intact SYN opens the flow.
        assert_eq!(h.run(&syn).0, XDP_REDIRECT);
        assert_eq!(h.counter(counters::NEW_FLOWS), 1);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn syn_with_a_bad_tcp_checksum_opens_nothing_at_any_length() {
    with_harness(|h| {
        let web = service_id(h, "web");
        for (i, len) in LENGTHS.into_iter().enumerate() {
            let syn = syn_with(41000 + i as u16, len).bytes();
            assert_dropped(
                h,
                &format!("bad checksum field, payload {len}"),
                &corrupt(&syn, TCP_CHECK),
                counters::DROP_TCP_BAD_CHECKSUM,
                web,
            );
            // A changed last byte (or last two): the sum must cover the whole segment,
            // the odd tail included.
            let last = syn.len() - if len % 2 == 1 { 1 } else { 2 };
            assert_dropped(
                h,
                &format!("changed last bytes, payload {len}"),
                &corrupt(&syn, last),
                counters::DROP_TCP_BAD_CHECKSUM,
                web,
            );
        }
        assert_eq!(h.counter(counters::NEW_FLOWS), 0);
        assert!(h.flows().is_empty());
        assert_eq!(h.counter(counters::DROP_IP_BAD_CHECKSUM), 0);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn intact_syns_of_every_length_are_forwarded_unchanged_but_for_the_nat() {
    with_harness(|h| {
        for (i, len) in LENGTHS.into_iter().enumerate() {
            let sport = 42000 + i as u16;
            let syn = syn_with(sport, len);
            let (verdict, out) = h.run(&syn.bytes());
            assert_eq!(verdict, XDP_REDIRECT, "payload {len}: verdict");
            let forward = h
                .flow(&flow_key(CLIENT, sport, VIP, 80, IPPROTO_TCP))
                .expect("forward entry");
            let expected = Segment {
                src_mac: LB_INT_MAC,
                dst_mac: SERVER1_MAC,
                src: SNAT,
                dst: SERVER1,
                ttl: 63,
                sport: u16::from_be(forward.new_src_port),
                dport: 8080,
                ..syn
            };
            assert_eq!(out, expected.bytes(), "payload {len}: exact bytes out");
            assert_checksums_valid(&out);
        }
        assert_eq!(h.counter(counters::NEW_FLOWS), LENGTHS.len() as u64);
        assert_eq!(h.flow_count(), 2 * LENGTHS.len());
        assert_no_checksum_drops(h);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn udp_datagrams_with_a_bad_checksum_open_nothing_and_zero_means_none() {
    with_harness(|h| {
        let dns = service_id(h, "dns");
        for (i, len) in LENGTHS.into_iter().enumerate() {
            let sport = 50000 + i as u16;
            let datagram = udp_packet(
                CLIENT_MAC,
                LB_EXT_MAC,
                CLIENT,
                sport,
                VIP,
                5353,
                64,
                &payload(len),
            );
            assert_dropped(
                h,
                &format!("bad UDP checksum, payload {len}"),
                &corrupt(&datagram, UDP_CHECK),
                counters::DROP_UDP_BAD_CHECKSUM,
                dns,
            );
            if len > 0 {
                let last = datagram.len() - if len % 2 == 1 { 1 } else { 2 };
                assert_dropped(
                    h,
                    &format!("changed last bytes, payload {len}"),
                    &corrupt(&datagram, last),
                    counters::DROP_UDP_BAD_CHECKSUM,
                    dns,
                );
            }
            assert_dropped(
                h,
                &format!("bad IP checksum, payload {len}"),
                &corrupt(&datagram, IP_CHECK),
                counters::DROP_IP_BAD_CHECKSUM,
                dns,
            );
            assert_eq!(h.flow_count(), 4 * i, "payload {len}: no new flow entry");

            // The intact datagram opens the flow, rewritten exactly.
            let (verdict, out) = h.run(&datagram);
            assert_eq!(verdict, XDP_REDIRECT, "payload {len}: intact");
            let forward = h
                .flow(&flow_key(CLIENT, sport, VIP, 5353, IPPROTO_UDP))
                .expect("forward entry");
            let expected = udp_packet(
                LB_INT_MAC,
                SERVER3_MAC,
                SNAT,
                u16::from_be(forward.new_src_port),
                SERVER3,
                5353,
                63,
                &payload(len),
            );
            assert_eq!(out, expected, "payload {len}: exact bytes out");

            // Checksum 0 is "none" (RFC 768): accepted even with the data changed.
            let mut unchecked = corrupt(&datagram, datagram.len() - 2);
            unchecked[UDP_CHECK] = 0;
            unchecked[UDP_CHECK + 1] = 0;
            let sport = sport + 100;
            unchecked[14 + 20..14 + 22].copy_from_slice(&sport.to_be_bytes());
            let (verdict, _) = h.run(&unchecked);
            assert_eq!(verdict, XDP_REDIRECT, "payload {len}: checksum 0");
            assert!(
                h.flow(&flow_key(CLIENT, sport, VIP, 5353, IPPROTO_UDP))
                    .is_some()
            );
        }
        assert_eq!(h.counter(counters::NEW_FLOWS), 2 * LENGTHS.len() as u64);
        assert_eq!(h.counter(counters::DROP_TCP_BAD_CHECKSUM), 0);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn syn_proxy_answers_no_corrupt_syn_and_opens_nothing_on_a_corrupt_cookie_ack() {
    with_harness(|h| {
        let proxied = service_id(h, "proxied");
        let syn = client_seg(40000, 1000, 0, F_SYN, syn_options()).bytes();
        assert_dropped(
            h,
            "SYN, bad TCP checksum",
            &corrupt(&syn, TCP_CHECK),
            counters::DROP_TCP_BAD_CHECKSUM,
            proxied,
        );
        assert_dropped(
            h,
            "SYN, bad IP checksum",
            &corrupt(&syn, IP_CHECK),
            counters::DROP_IP_BAD_CHECKSUM,
            proxied,
        );
        assert_eq!(h.counter(counters::SYNPROXY_SYNACK_SENT), 0, "no cookie");

        let (verdict, out) = h.run(&syn);
        assert_eq!(verdict, XDP_TX);
        let cookie = ParsedTcp::of(&out).seq;
        let ack = Segment {
            payload: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            ..client_seg(40000, 1001, cookie.wrapping_add(1), F_ACK | F_PSH, vec![])
        }
        .bytes();
        assert_dropped(
            h,
            "cookie ACK, bad TCP checksum",
            &corrupt(&ack, TCP_CHECK),
            counters::DROP_TCP_BAD_CHECKSUM,
            proxied,
        );
        assert_dropped(
            h,
            "cookie ACK, changed data",
            &corrupt(&ack, ack.len() - 2),
            counters::DROP_TCP_BAD_CHECKSUM,
            proxied,
        );
        assert_eq!(h.counter(counters::SYNPROXY_COOKIE_VALID), 0);
        assert_eq!(h.counter(counters::SYNPROXY_COOKIE_INVALID), 0);
        assert!(h.flows().is_empty());

        // The intact ACK carries the same cookie and opens the server side.
        assert_eq!(h.run(&ack).0, XDP_REDIRECT);
        assert_eq!(h.counter(counters::SYNPROXY_COOKIE_VALID), 1);
        assert_eq!(h.flow_count(), 2);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn flow_hits_are_not_verified() {
    with_harness(|h| {
        let port = open_full_nat(h);
        let sent = Tcp {
            syn: false,
            ack: Some(1),
            seq: 1001,
            ..Tcp::syn(CLIENT, 40000, VIP, 80)
        };
        let data = sent.build(b"data");
        // The incremental update carries the wrong checksum through, still wrong, for
        // the server to reject.
        let (verdict, out) = h.run(&corrupt(&data, TCP_CHECK));
        assert_eq!(verdict, XDP_REDIRECT);
        let expected = full_nat_to_server1(sent, port).build(b"data");
        assert_eq!(out.len(), expected.len());
        assert_eq!(out[..TCP_CHECK], expected[..TCP_CHECK]);
        assert_eq!(out[TCP_CHECK + 2..], expected[TCP_CHECK + 2..]);
        assert_ne!(
            out[TCP_CHECK..TCP_CHECK + 2],
            expected[TCP_CHECK..TCP_CHECK + 2]
        );
        assert_eq!(h.counter(counters::FLOW_HITS), 1);
        assert_no_checksum_drops(h);
    });
}
