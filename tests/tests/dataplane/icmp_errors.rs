//! ICMP errors about balanced connections: a router's error about a packet the balancer
//! sent is translated to the connection's other side (quote, outer addresses and every
//! checksum), in both directions, full NAT and DNAT; errors about no flow pass to the
//! kernel; malformed ones get their verdicts. No flow entry is made or changed.
//!
//! Expected frames are built from scratch: the quote from the packet its real sender
//! sent (etherparse checksums), the ICMP and IPv4 checksums by an independent sum here.

use std::collections::HashMap;

use etherparse::{IpHeaders, IpNumber, Ipv4Extensions, Ipv4Header, PacketBuilder};
use lb_common::{FlowEntry, FlowKey};

use super::*;

/// A router on the client side (it reports server → client packets to the VIP).
const ROUTER_EXT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
/// A router on the server side (it reports client → server packets to the SNAT
/// address, or in DNAT to the client).
pub(super) const ROUTER_INT: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 254);
pub(super) const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

/// Fragmentation needed, next-hop MTU 1400: the "rest of header" word.
const MTU_1400: [u8; 4] = [0, 0, 0x05, 0x78];

/// (name, type, code, rest of header) of every error kind the balancer relays.
const KINDS: [(&str, u8, u8, [u8; 4]); 5] = [
    ("fragmentation needed", 3, 4, MTU_1400),
    ("host unreachable", 3, 1, [0; 4]),
    ("port unreachable", 3, 3, [0; 4]),
    ("time exceeded", 11, 0, [0; 4]),
    ("parameter problem", 12, 0, [20, 0, 0, 0]),
];

/// Internet checksum of `bytes`, summed here independently of the program and etherparse.
fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in bytes.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP error frame: outer IPv4 by etherparse (DF set, id 0), ICMP header and its
/// checksum written here, `quote` as given.
#[allow(clippy::too_many_arguments)]
pub(super) fn icmp_error(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    (kind, code, rest): (u8, u8, [u8; 4]),
    quote: &[u8],
) -> Vec<u8> {
    let mut message = vec![kind, code, 0, 0];
    message.extend_from_slice(&rest);
    message.extend_from_slice(quote);
    let check = internet_checksum(&message);
    message[2..4].copy_from_slice(&check.to_be_bytes());
    let mut ip =
        Ipv4Header::new(0, ttl, IpNumber::ICMP, src.octets(), dst.octets()).expect("IPv4 header");
    ip.dont_fragment = true;
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src_mac, dst_mac)
        .ip(IpHeaders::Ipv4(ip, Ipv4Extensions::default()))
        .write(&mut out, IpNumber::ICMP, &message)
        .expect("build an ICMP error");
    out
}

/// The first `len` bytes of `frame`'s IPv4 packet: what an error quotes.
pub(super) fn quote(frame: &[u8], len: usize) -> Vec<u8> {
    frame[14..14 + len].to_vec()
}

/// Recomputes the outer IPv4, ICMP and quoted IPv4 checksums of an error frame.
fn assert_icmp_checksums(frame: &[u8], name: &str) {
    let ip = &frame[14..34];
    assert_eq!(internet_checksum(ip), 0, "{name}: outer IPv4 checksum");
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    assert_eq!(
        internet_checksum(&frame[34..14 + total]),
        0,
        "{name}: ICMP checksum"
    );
    assert_eq!(
        internet_checksum(&frame[42..62]),
        0,
        "{name}: quoted IPv4 checksum"
    );
}

fn flow_table(h: &Harness) -> HashMap<FlowKey, FlowEntry> {
    h.flows().into_iter().collect()
}

/// Runs every error kind, quoting `sent` (as the balancer sent it) in `quote_len`
/// bytes, and checks that it comes out as `expected` builds it from the real
/// sender's packet, the flow table untouched.
fn relay_each_kind(
    h: &mut Harness,
    name: &str,
    arrive: (Ipv4Addr, Ipv4Addr, [u8; 6]),
    sent: &[u8],
    original: &[u8],
    leave: (Ipv4Addr, Ipv4Addr, [u8; 6], [u8; 6]),
) {
    let (from, to, in_dmac) = arrive;
    let (out_src, out_dst, out_smac, out_dmac) = leave;
    let flows = flow_table(h);
    let ip_len = sent.len() - 14;
    // The whole packet (Linux quotes as much as fits), the header and 8 bytes (RFC 792
    // minimum: no TCP checksum), and 18 bytes (just reaching TCP's checksum).
    let mut quote_lens = vec![ip_len, 28, 38];
    quote_lens.retain(|&len| len <= ip_len);
    quote_lens.dedup();
    for quote_len in quote_lens {
        for (kind_name, kind, code, rest) in KINDS {
            let name = format!("{name}, {kind_name}, {quote_len}-byte quote");
            let error = icmp_error(
                ROUTER_MAC,
                in_dmac,
                from,
                to,
                64,
                (kind, code, rest),
                &quote(sent, quote_len),
            );
            let relayed = h.counter(counters::ICMP_RELAYED);
            let (verdict, out) = h.run(&error);
            assert_eq!(verdict, XDP_REDIRECT, "{name}: verdict");
            let expected = icmp_error(
                out_smac,
                out_dmac,
                out_src,
                out_dst,
                63,
                (kind, code, rest),
                &quote(original, quote_len),
            );
            assert_eq!(out, expected, "{name}: exact bytes out");
            assert_icmp_checksums(&out, &name);
            assert_eq!(h.counter(counters::ICMP_RELAYED), relayed + 1, "{name}");
            assert_eq!(flow_table(h), flows, "{name}: flow table unchanged");
        }
    }
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn full_nat_tcp_errors_reach_the_other_side() {
    with_harness(|h| {
        let syn = Tcp::syn(CLIENT, 40000, VIP, 80);
        let (_, to_server) = h.run(&syn.build(&[]));
        let snat_port = u16::from_be(
            h.flow(&flow_key(CLIENT, 40000, VIP, 80, IPPROTO_TCP))
                .unwrap()
                .new_src_port,
        );
        let syn_ack = server1_syn_ack(snat_port);
        let (verdict, to_client) = h.run(&syn_ack.build(&[]));
        assert_eq!(verdict, XDP_REDIRECT);

        // Download: a client-side router reports the SYN-ACK to the VIP; the server
        // gets it from the SNAT address about its own SYN-ACK.
        relay_each_kind(
            h,
            "full NAT, server → client",
            (ROUTER_EXT, VIP, LB_EXT_MAC),
            &to_client,
            &Tcp { ttl: 63, ..syn_ack }.build(&[]),
            (SNAT, SERVER1, LB_INT_MAC, SERVER1_MAC),
        );
        // Upload: a server-side router reports the SYN to the SNAT address; the client
        // gets it from the VIP about its own SYN.
        relay_each_kind(
            h,
            "full NAT, client → server",
            (ROUTER_INT, SNAT, LB_INT_MAC),
            &to_server,
            &Tcp { ttl: 63, ..syn }.build(&[]),
            (VIP, CLIENT, LB_EXT_MAC, CLIENT_MAC),
        );
        assert_eq!(h.counter(counters::NEW_FLOWS), 1);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn dnat_tcp_errors_reach_the_other_side_from_the_router() {
    with_harness(|h| {
        let syn = Tcp::syn(CLIENT, 41000, DNAT_VIP, 80);
        let (_, to_server) = h.run(&syn.build(&[]));
        let syn_ack = Tcp {
            src_mac: SERVER2_MAC,
            dst_mac: LB_INT_MAC,
            src: SERVER2,
            dst: CLIENT,
            sport: 80,
            dport: 41000,
            ack: Some(1001),
            seq: 7000,
            ..syn
        };
        let (verdict, to_client) = h.run(&syn_ack.build(&[]));
        assert_eq!(verdict, XDP_REDIRECT);

        // Download: reported to the VIP, forwarded to the server, still from the router.
        relay_each_kind(
            h,
            "DNAT, server → client",
            (ROUTER_EXT, DNAT_VIP, LB_EXT_MAC),
            &to_client,
            &Tcp { ttl: 63, ..syn_ack }.build(&[]),
            (ROUTER_EXT, SERVER2, LB_INT_MAC, SERVER2_MAC),
        );
        // Upload: reported to the client's own address (the quote's source), routed
        // through the balancer; the quote names the VIP again.
        relay_each_kind(
            h,
            "DNAT, client → server",
            (ROUTER_INT, CLIENT, LB_INT_MAC),
            &to_server,
            &Tcp { ttl: 63, ..syn }.build(&[]),
            (ROUTER_INT, CLIENT, LB_EXT_MAC, CLIENT_MAC),
        );
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn udp_errors_reach_the_other_side_with_the_quoted_checksum_fixed() {
    with_harness(|h| {
        let request = udp_packet(
            CLIENT_MAC, LB_EXT_MAC, CLIENT, 50000, VIP, 5353, 64, b"query",
        );
        let (_, to_server) = h.run(&request);
        let port = u16::from_be(
            h.flow(&flow_key(CLIENT, 50000, VIP, 5353, IPPROTO_UDP))
                .unwrap()
                .new_src_port,
        );
        let reply = |ttl| {
            udp_packet(
                SERVER3_MAC,
                LB_INT_MAC,
                SERVER3,
                5353,
                SNAT,
                port,
                ttl,
                b"answer!",
            )
        };
        let (verdict, to_client) = h.run(&reply(64));
        assert_eq!(verdict, XDP_REDIRECT);
        relay_each_kind(
            h,
            "UDP, server → client",
            (ROUTER_EXT, VIP, LB_EXT_MAC),
            &to_client,
            &reply(63),
            (SNAT, SERVER3, LB_INT_MAC, SERVER3_MAC),
        );
        relay_each_kind(
            h,
            "UDP, client → server",
            (SERVER3, SNAT, LB_INT_MAC),
            &to_server,
            &udp_packet(
                CLIENT_MAC, LB_EXT_MAC, CLIENT, 50000, VIP, 5353, 63, b"query",
            ),
            (VIP, CLIENT, LB_EXT_MAC, CLIENT_MAC),
        );
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn udp_without_checksum_is_quoted_without_checksum() {
    with_harness(|h| {
        let mut request = udp_packet(CLIENT_MAC, LB_EXT_MAC, CLIENT, 50002, VIP, 5353, 64, b"q");
        request[14 + 20 + 6..14 + 20 + 8].fill(0);
        let (_, to_server) = h.run(&request);
        let mut original = udp_packet(CLIENT_MAC, LB_EXT_MAC, CLIENT, 50002, VIP, 5353, 63, b"q");
        original[14 + 20 + 6..14 + 20 + 8].fill(0);
        relay_each_kind(
            h,
            "UDP without checksum",
            (ROUTER_INT, SNAT, LB_INT_MAC),
            &to_server,
            &original,
            (VIP, CLIENT, LB_EXT_MAC, CLIENT_MAC),
        );
    });
}

/// An error that must reach the kernel untouched, with `counter` one up.
fn assert_passed(h: &mut Harness, name: &str, error: &[u8], counter: u32) {
    let flows = flow_table(h);
    let before = h.counter(counter);
    let (verdict, out) = h.run(error);
    assert_eq!(verdict, XDP_PASS, "{name}: verdict");
    assert_eq!(out, error, "{name}: untouched");
    assert_eq!(h.counter(counter), before + 1, "{name}: counter");
    assert_eq!(flow_table(h), flows, "{name}: flow table unchanged");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn errors_about_no_flow_pass_to_the_kernel() {
    with_harness(|h| {
        open_full_nat(h);
        // The host's own connection from the VIP, or a closed one: no entry.
        let unknown = Tcp {
            src_mac: LB_EXT_MAC,
            dst_mac: CLIENT_MAC,
            ack: Some(1),
            ..Tcp::syn(VIP, 80, CLIENT, 49999)
        }
        .build(b"data");
        let frag_needed = (3, 4, MTU_1400);
        let error = icmp_error(
            ROUTER_MAC,
            LB_EXT_MAC,
            ROUTER_EXT,
            VIP,
            64,
            frag_needed,
            &quote(&unknown, 44),
        );
        assert_passed(h, "to the VIP", &error, counters::PASS_ICMP_NO_FLOW);
        let error = icmp_error(
            ROUTER_MAC,
            LB_INT_MAC,
            ROUTER_INT,
            OTHER_HOST,
            64,
            frag_needed,
            &quote(&unknown, 44),
        );
        assert_passed(h, "to another host", &error, counters::PASS_NOT_OURS);
        assert_eq!(h.counter(counters::ICMP_RELAYED), 0);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn malformed_errors_are_dropped_for_the_balancer_and_passed_for_others() {
    with_harness(|h| {
        let syn = Tcp::syn(CLIENT, 40000, VIP, 80);
        let (_, to_server) = h.run(&syn.build(&[]));
        let flows = flow_table(h);
        let unreachable = (3, 1, [0; 4]);
        let error = |to: Ipv4Addr, quote: &[u8]| {
            icmp_error(
                ROUTER_MAC,
                LB_INT_MAC,
                ROUTER_INT,
                to,
                64,
                unreachable,
                quote,
            )
        };
        // Header and 4 bytes: the ports, but less than RFC 792's 8 bytes.
        let short = quote(&to_server, 24);
        // The quoted header claims options (IHL 6): the ports are not where they seem.
        let mut options = quote(&to_server, 28);
        options[0] = 0x46;
        // A quoted ICMP echo (the host's own ping) or a fragment's tail: no ports.
        let mut echo = quote(&to_server, 28);
        echo[9] = 1;
        let mut tail = quote(&to_server, 28);
        tail[6..8].copy_from_slice(&[0x00, 0xb9]);
        let cases = [
            (
                "short quote",
                &short,
                XDP_DROP,
                counters::DROP_ICMP_TRUNCATED,
            ),
            (
                "quoted options",
                &options,
                XDP_DROP,
                counters::DROP_ICMP_BAD_QUOTE,
            ),
            (
                "quoted ICMP",
                &echo,
                XDP_PASS,
                counters::PASS_ICMP_OTHER_QUOTE,
            ),
            (
                "quoted fragment tail",
                &tail,
                XDP_PASS,
                counters::PASS_ICMP_OTHER_QUOTE,
            ),
        ];
        for (name, quoted, verdict, counter) in cases {
            let before = h.counter(counter);
            let packet = error(SNAT, quoted);
            let (got, out) = h.run(&packet);
            assert_eq!(got, verdict, "{name}: verdict");
            if verdict == XDP_PASS {
                assert_eq!(out, packet, "{name}: untouched");
            }
            assert_eq!(h.counter(counter), before + 1, "{name}: counter");
            // Another host's malformed errors are the kernel's to judge.
            let before = h.counter(counters::PASS_NOT_OURS);
            let packet = error(OTHER_HOST, quoted);
            let (got, out) = h.run(&packet);
            assert_eq!(got, XDP_PASS, "{name}, another host: verdict");
            assert_eq!(out, packet, "{name}, another host: untouched");
            assert_eq!(
                h.counter(counters::PASS_NOT_OURS),
                before + 1,
                "{name}, another host"
            );
        }
        // An ICMP header cut short (no quote at all).
        let mut cut = error(SNAT, &[]);
        cut.truncate(14 + 20 + 8);
        let (got, _) = h.run(&cut);
        assert_eq!(got, XDP_DROP, "no quote");
        assert_eq!(h.counter(counters::ICMP_RELAYED), 0);
        assert_eq!(flow_table(h), flows, "flow table unchanged");
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn echo_and_other_informational_icmp_pass_as_before() {
    with_harness(|h| {
        open_full_nat(h);
        for (name, kind) in [("echo request", 8u8), ("echo reply", 0), ("redirect", 5)] {
            let packet = icmp_error(
                CLIENT_MAC,
                LB_EXT_MAC,
                CLIENT,
                VIP,
                64,
                (kind, 0, [0, 1, 0, 1]),
                b"ping payload, or a quote the balancer does not relay",
            );
            assert_passed(h, name, &packet, counters::PASS_NOT_OURS);
        }
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn syn_proxied_errors_reach_the_server_in_its_own_sequence_space() {
    with_harness(|h| {
        use super::syn_proxy::client_seg;
        let (verdict, out) = h.run(&client_seg(40100, 1000, 0, F_SYN, vec![]).bytes());
        assert_eq!(verdict, XDP_TX, "the balancer answers the SYN itself");
        let cookie = ParsedTcp::of(&out).seq;
        let ack = client_seg(40100, 1001, cookie.wrapping_add(1), F_ACK, vec![]);
        assert_eq!(h.run(&ack.bytes()).0, XDP_REDIRECT);
        let port = u16::from_be(
            h.flow(&flow_key(CLIENT, 40100, VIP, 443, IPPROTO_TCP))
                .unwrap()
                .new_src_port,
        );
        let server = |ttl, seq, flags, payload: &[u8]| Segment {
            src_mac: SERVER1_MAC,
            dst_mac: LB_INT_MAC,
            src: SERVER1,
            dst: SNAT,
            ttl,
            sport: 8443,
            dport: port,
            seq,
            ack: 1001,
            flags,
            window: 65160,
            options: vec![],
            payload: payload.to_vec(),
        };
        assert_eq!(
            h.run(&server(64, 5000, F_SYN | F_ACK, b"").bytes()).0,
            XDP_TX
        );
        let data = b"a server segment too big for the client's path";
        let (verdict, to_client) = h.run(&server(64, 5001, F_ACK | F_PSH, data).bytes());
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(ParsedTcp::of(&to_client).seq, cookie.wrapping_add(1));
        // The server's stack ignores an error whose quoted SEQ it never sent.
        relay_each_kind(
            h,
            "SYN proxy, server → client",
            (ROUTER_EXT, VIP, LB_EXT_MAC),
            &to_client,
            &server(63, 5001, F_ACK | F_PSH, data).bytes(),
            (SNAT, SERVER1, LB_INT_MAC, SERVER1_MAC),
        );
    });
}
