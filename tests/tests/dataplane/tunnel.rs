//! Forwarding to a VIP's previous owner while the VIP moves here (docs/scale-out.md,
//! "Forwarding to the previous owner"): packets for a VIP in transition that find no
//! flow entry go to the previous owner in IPIP; IPIP from a tunnel peer is
//! decapsulated and processed as if it had come directly, and never forwarded again.
//!
//! The previous owner here is the other host on the server side (198.19.0.50), the
//! tunnel source the balancer's server-side address (198.19.0.1). Expected outer
//! headers are built with etherparse, which computes their checksums.

use etherparse::{EtherType, Ethernet2Header, IpNumber, Ipv4Header};
use lb_testbed::topology::LB_INT_IP;

use super::syn_proxy::{client_seg, proxy_syn};
use super::*;

const PREVIOUS_OWNER: Ipv4Addr = OTHER_HOST;
const PREVIOUS_OWNER_MAC: [u8; 6] = OTHER_HOST_MAC;
/// A host on the server side without a neighbour entry.
const UNRESOLVED_OWNER: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 60);
/// A host that is not a tunnel peer.
const STRANGER: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 77);
/// The mark `lb_xdp` leaves in the XDP metadata of a packet it decapsulated; a
/// `BPF_PROG_TEST_RUN` returns the metadata in front of the frame (on a real interface
/// it never goes on the wire).
const DECAPSULATED_MARK: u32 = 0x4c42_5455;

/// The harness with VIP in transition from `PREVIOUS_OWNER`, the previous owner a
/// tunnel peer and `LB_INT_IP` the tunnel source.
fn with_transition(test: impl FnOnce(&mut Harness) + Send + 'static) {
    with_harness(|h| {
        h.set_tunnel_source(Some(LB_INT_IP)).unwrap();
        h.set_tunnel_peers(&[PREVIOUS_OWNER]).unwrap();
        h.set_vip_transition(VIP, PREVIOUS_OWNER).unwrap();
        test(h);
    });
}

/// `frame`'s IPv4 packet in an outer IPv4 header `src → dst` (protocol 4, TTL 64, DF,
/// id 0, the inner TOS), in an Ethernet frame `src_mac → dst_mac`.
fn ipip(src_mac: [u8; 6], dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, frame: &[u8]) -> Vec<u8> {
    let inner = &frame[14..];
    let mut ip = Ipv4Header::new(
        inner.len() as u16,
        64,
        IpNumber::IPV4,
        src.octets(),
        dst.octets(),
    )
    .unwrap();
    ip.dont_fragment = true;
    ip.dscp = etherparse::Ipv4Dscp::try_new(inner[1] >> 2).unwrap();
    ip.ecn = etherparse::Ipv4Ecn::try_new(inner[1] & 3).unwrap();
    ip.header_checksum = ip.calc_header_checksum();
    let mut out = Vec::new();
    Ethernet2Header {
        source: src_mac,
        destination: dst_mac,
        ether_type: EtherType::IPV4,
    }
    .write(&mut out)
    .unwrap();
    ip.write_raw(&mut out).unwrap();
    out.extend_from_slice(inner);
    out
}

/// `frame` as the balancer forwards it to the previous owner.
fn to_previous_owner(frame: &[u8]) -> Vec<u8> {
    ipip(
        LB_INT_MAC,
        PREVIOUS_OWNER_MAC,
        LB_INT_IP,
        PREVIOUS_OWNER,
        frame,
    )
}

/// `frame` as a tunnel peer (`src`) sends it to this balancer.
fn from_peer(src: Ipv4Addr, frame: &[u8]) -> Vec<u8> {
    ipip(PREVIOUS_OWNER_MAC, LB_INT_MAC, src, LB_INT_IP, frame)
}

/// Checks the outer header's checksum independently and the inner packet's checksums.
fn assert_tunnelled_checksums(out: &[u8]) {
    let (outer, _) = Ipv4Header::from_slice(&out[14..]).unwrap();
    assert_eq!(outer.header_checksum, outer.calc_header_checksum());
    let inner_frame = [&out[..14], &out[34..]].concat();
    assert_checksums_valid(&inner_frame);
}

/// The output of a run on a decapsulated packet: the mark in front, then the frame.
fn strip_mark(out: &[u8]) -> Vec<u8> {
    assert_eq!(
        out[..4],
        DECAPSULATED_MARK.to_ne_bytes(),
        "the decapsulation mark in the metadata"
    );
    out[4..].to_vec()
}

/// A data segment of a connection client:`sport` → VIP:80 with no entry here.
fn stale_segment(sport: u16) -> Tcp {
    Tcp {
        syn: false,
        ack: Some(0x1234_5678),
        seq: 5000,
        ..Tcp::syn(CLIENT, sport, VIP, 80)
    }
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_segment_without_entry_goes_to_the_previous_owner_in_ipip() {
    with_transition(|h| {
        let sent = stale_segment(40000).build(b"GET / HTTP/1.1\r\n\r\n");
        let (verdict, out) = h.run(&sent);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(out, to_previous_owner(&sent), "exact bytes out");
        assert_eq!(&out[34..], &sent[14..], "inner packet unchanged");
        assert_tunnelled_checksums(&out);
        assert_eq!(h.counter(counters::TUNNEL_FORWARDED), 1);
        assert_eq!(h.counter(counters::DROP_NO_FLOW), 0);
        assert_eq!(h.service_stats(0).unwrap().drops, 0, "not a drop");

        // A FIN and a RST without entry too: the previous owner ends its connection.
        for flags in [(true, false), (false, true)] {
            let sent = Tcp {
                fin: flags.0,
                rst: flags.1,
                ..stale_segment(40001)
            }
            .build(&[]);
            let (verdict, out) = h.run(&sent);
            assert_eq!(verdict, XDP_REDIRECT);
            assert_eq!(out, to_previous_owner(&sent), "exact bytes out");
        }
        // A UDP datagram without entry: the previous owner judges it.
        let datagram = udp_packet(CLIENT_MAC, LB_EXT_MAC, CLIENT, 41000, VIP, 5353, 64, b"q");
        let (verdict, out) = h.run(&datagram);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(out, to_previous_owner(&datagram), "exact bytes out");
        assert_tunnelled_checksums(&out);
        assert_eq!(h.counter(counters::TUNNEL_FORWARDED), 4);
        assert_eq!(h.counter(counters::NEW_FLOWS), 0);
        assert!(
            h.flows().is_empty(),
            "a forwarded packet makes no flow entry"
        );
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_syn_opens_locally_and_its_flow_stays_local() {
    with_transition(|h| {
        let snat_port = open_full_nat(h);
        assert_eq!(h.counter(counters::NEW_FLOWS), 1);
        let data = Tcp {
            syn: false,
            ack: Some(1),
            seq: 1001,
            ..Tcp::syn(CLIENT, 40000, VIP, 80)
        };
        let (verdict, out) = h.run(&data.build(b"x"));
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(out, full_nat_to_server1(data, snat_port).build(b"x"));
        assert_eq!(h.counter(counters::TUNNEL_FORWARDED), 0);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn syn_proxy_own_cookie_stays_local_a_foreign_ack_is_forwarded() {
    with_transition(|h| {
        // SYNs are answered here with our cookie; the ACK carrying it opens the flow.
        let (cookie, _, _) = proxy_syn(h, 40100, vec![]);
        let ack = client_seg(40100, 1001, cookie.wrapping_add(1), F_ACK, vec![]);
        assert_eq!(h.run(&ack.bytes()).0, XDP_REDIRECT);
        assert_eq!(h.counter(counters::SYNPROXY_COOKIE_VALID), 1);
        assert!(
            h.flow(&flow_key(CLIENT, 40100, VIP, 443, IPPROTO_TCP))
                .is_some()
        );
        assert_eq!(h.counter(counters::TUNNEL_FORWARDED), 0);

        // An ACK whose cookie is not ours: a connection the previous owner proxied.
        let foreign = client_seg(40101, 7001, 0x0bad_c0de, F_ACK, vec![]).bytes();
        let (verdict, out) = h.run(&foreign);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(out, to_previous_owner(&foreign), "exact bytes out");
        assert_tunnelled_checksums(&out);
        assert_eq!(h.counter(counters::SYNPROXY_COOKIE_INVALID), 0);
        assert_eq!(h.counter(counters::TUNNEL_FORWARDED), 1);
        assert!(
            h.flow(&flow_key(CLIENT, 40101, VIP, 443, IPPROTO_TCP))
                .is_none(),
            "no flow entry"
        );
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_vip_not_in_transition_still_refuses() {
    with_transition(|h| {
        h.set_vip_transition(DNAT_VIP, PREVIOUS_OWNER).unwrap();
        assert!(h.clear_vip_transition(VIP).unwrap());
        assert!(!h.clear_vip_transition(VIP).unwrap());
        assert_eq!(
            h.vip_transitions().unwrap(),
            vec![(DNAT_VIP, PREVIOUS_OWNER)]
        );
        let packet = stale_segment(40000).build(b"x");
        let (verdict, out) = h.run(&packet);
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(out, packet);
        assert_eq!(h.counter(counters::DROP_NO_FLOW), 1);
        assert_eq!(h.counter(counters::TUNNEL_FORWARDED), 0);
        assert!(h.flows().is_empty(), "no flow entry");
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn decapsulated_packet_gives_the_bytes_of_the_same_packet_sent_directly() {
    with_transition(|h| {
        let snat_port = open_full_nat(h);
        let data = Tcp {
            syn: false,
            ack: Some(1),
            seq: 1001,
            ..Tcp::syn(CLIENT, 40000, VIP, 80)
        };
        let direct = data.build(b"hello");
        let (verdict, direct_out) = h.run(&direct);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(
            direct_out,
            full_nat_to_server1(data, snat_port).build(b"hello")
        );

        let (verdict, out) = h.run(&from_peer(PREVIOUS_OWNER, &direct));
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(
            strip_mark(&out),
            direct_out,
            "exact bytes of the direct run"
        );
        assert_eq!(h.counter(counters::TUNNEL_RECEIVED), 1);
        assert_eq!(h.counter(counters::FLOW_HITS), 2);
        assert_eq!(h.counter(counters::TUNNEL_FORWARDED), 0);
        assert_eq!(h.flow_count(), 2, "still the one pair");

        // A SYN from the tunnel opens a flow here like a direct one.
        let syn = Tcp::syn(CLIENT, 40002, VIP, 80).build(&[]);
        let (verdict, _) = h.run(&from_peer(PREVIOUS_OWNER, &syn));
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(h.counter(counters::NEW_FLOWS), 2);
        assert_eq!(h.flow_count(), 4);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_decapsulated_miss_is_refused_not_tunnelled_again() {
    with_transition(|h| {
        let inner = stale_segment(40000).build(b"x");
        let tunnelled = from_peer(PREVIOUS_OWNER, &inner);
        let (verdict, out) = h.run(&tunnelled);
        assert_eq!(verdict, XDP_DROP);
        // The frame as it came, without the outer IPv4 header.
        let decapsulated = [&tunnelled[..14], &inner[14..]].concat();
        assert_eq!(strip_mark(&out), decapsulated, "the inner packet, refused");
        assert_eq!(h.counter(counters::TUNNEL_RECEIVED), 1);
        assert_eq!(h.counter(counters::DROP_NO_FLOW), 1);
        assert_eq!(h.counter(counters::TUNNEL_FORWARDED), 0);
        // UDP too: opened here, since the previous owner sent it on.
        let datagram = udp_packet(CLIENT_MAC, LB_EXT_MAC, CLIENT, 41000, VIP, 5353, 64, b"q");
        let (verdict, _) = h.run(&from_peer(PREVIOUS_OWNER, &datagram));
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(h.counter(counters::TUNNEL_FORWARDED), 0);
        assert_eq!(h.counter(counters::NEW_FLOWS), 1);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn ipip_from_an_unknown_peer_is_dropped_to_others_passed() {
    with_transition(|h| {
        let inner = Tcp::syn(CLIENT, 40000, VIP, 80).build(&[]);
        let packet = from_peer(STRANGER, &inner);
        let (verdict, out) = h.run(&packet);
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(out, packet, "untouched");
        assert_eq!(h.counter(counters::DROP_TUNNEL_UNKNOWN_PEER), 1);
        assert_eq!(h.counter(counters::TUNNEL_RECEIVED), 0);
        assert!(h.flows().is_empty(), "no flow entry");

        // IPIP between other hosts is none of the balancer's business.
        let transit = ipip(
            PREVIOUS_OWNER_MAC,
            LB_INT_MAC,
            PREVIOUS_OWNER,
            STRANGER,
            &inner,
        );
        let (verdict, out) = h.run(&transit);
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(out, transit);
        assert_eq!(h.counter(counters::PASS_NOT_OURS), 1);

        // IPIP in IPIP is decapsulated never.
        let nested = from_peer(PREVIOUS_OWNER, &from_peer(PREVIOUS_OWNER, &inner));
        let (verdict, _) = h.run(&nested);
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(h.counter(counters::DROP_TUNNEL_NESTED), 1);
        assert_eq!(h.counter(counters::TUNNEL_RECEIVED), 0);

        // Once the peer is gone, its packets are strangers' too.
        let accepted = from_peer(PREVIOUS_OWNER, &inner);
        assert_eq!(h.run(&accepted).0, XDP_REDIRECT);
        h.set_tunnel_peers(&[STRANGER]).unwrap();
        assert_eq!(h.tunnel_peers().unwrap(), vec![STRANGER]);
        assert_eq!(h.run(&accepted).0, XDP_DROP);
        assert_eq!(h.counter(counters::DROP_TUNNEL_UNKNOWN_PEER), 2);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_packet_too_big_once_encapsulated_is_dropped() {
    with_transition(|h| {
        // 1480 bytes of IP fill the 1500-byte MTU once encapsulated; 1481 do not.
        let fits = stale_segment(40000).build(&[0x55; 1440]);
        assert_eq!(fits.len() - 14, 1480);
        let (verdict, out) = h.run(&fits);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(out, to_previous_owner(&fits));
        let too_big = stale_segment(40000).build(&[0x55; 1441]);
        let (verdict, _) = h.run(&too_big);
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(h.counter(counters::DROP_TUNNEL_TOO_BIG), 1);
        assert_eq!(h.counter(counters::TUNNEL_FORWARDED), 1);
        assert!(h.flows().is_empty(), "no flow entry");
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn without_tunnel_source_or_route_the_packet_is_dropped() {
    with_transition(|h| {
        let packet = stale_segment(40000).build(b"x");
        h.set_vip_transition(VIP, UNRESOLVED_OWNER).unwrap();
        assert_eq!(h.run(&packet).0, XDP_DROP);
        assert_eq!(h.counter(counters::DROP_TUNNEL_NO_ROUTE), 1);
        h.set_vip_transition(VIP, PREVIOUS_OWNER).unwrap();
        h.set_tunnel_source(None).unwrap();
        assert_eq!(h.run(&packet).0, XDP_DROP);
        assert_eq!(h.counter(counters::DROP_TUNNEL_NO_ROUTE), 2);
        assert_eq!(h.counter(counters::TUNNEL_FORWARDED), 0);
        assert_eq!(h.counter(counters::DROP_NO_FLOW), 0);
        assert!(h.flows().is_empty(), "no flow entry");
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_fragmented_datagram_goes_to_the_previous_owner_whole() {
    with_transition(|h| {
        let datagram = udp_packet(
            CLIENT_MAC,
            LB_EXT_MAC,
            CLIENT,
            41000,
            VIP,
            5353,
            64,
            &[0x42; 100],
        );
        let fragments = super::fragments::fragment(&datagram, 0x77, &[48]);
        for fragment in &fragments {
            let (verdict, out) = h.run(fragment);
            assert_eq!(verdict, XDP_REDIRECT);
            assert_eq!(out, to_previous_owner(fragment), "exact bytes out");
        }
        assert_eq!(h.counter(counters::TUNNEL_FORWARDED), 2);
        assert_eq!(h.counter(counters::DROP_FRAGMENT_NO_FIRST), 0);
        assert!(h.flows().is_empty(), "no flow entry");
        assert!(h.fragments().is_empty(), "no fragment record");
    });
}
