//! TTL handling: a would-be new flow whose TTL expires here is answered with an ICMP
//! time exceeded and opens nothing; an established flow's expiring packet is dropped.

use etherparse::{
    Icmpv4Type, IpHeaders, IpNumber, Ipv4Extensions, Ipv4Header, PacketBuilder,
    icmpv4::TimeExceededCode,
};

use super::*;

/// The ICMP time exceeded the balancer sends from VIP to the client for `offending`
/// (a frame from the client): TTL 64, IP id 0, DF clear, quoting the offending IPv4
/// header and the first 8 bytes of its payload.
fn time_exceeded_to_client(offending: &[u8]) -> Vec<u8> {
    let mut ip =
        Ipv4Header::new(0, 64, IpNumber::ICMP, VIP.octets(), CLIENT.octets()).expect("IPv4 header");
    ip.dont_fragment = false;
    let mut out = Vec::new();
    PacketBuilder::ethernet2(LB_EXT_MAC, CLIENT_MAC)
        .ip(IpHeaders::Ipv4(ip, Ipv4Extensions::default()))
        .icmpv4(Icmpv4Type::TimeExceeded(
            TimeExceededCode::TtlExceededInTransit,
        ))
        .write(&mut out, &offending[14..14 + 28])
        .expect("build an ICMP time exceeded");
    out
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn expiring_ttl_on_a_new_flow_is_answered_with_time_exceeded() {
    with_harness(|h| {
        let syn = Tcp {
            ttl: 1,
            ..Tcp::syn(CLIENT, 40000, VIP, 80)
        }
        .build(b"payload beyond the quote");
        let udp = udp_packet(CLIENT_MAC, LB_EXT_MAC, CLIENT, 50000, VIP, 5353, 0, b"q");
        for (name, packet) in [("SYN, TTL 1", syn), ("UDP, TTL 0", udp)] {
            let before = h.counter(counters::TX_ICMP_TIME_EXCEEDED);
            // Outside an attached interface the devmap redirect back out of the ingress
            // interface cannot be taken and the program falls back to XDP_TX.
            let (verdict, out) = h.run(&packet);
            assert_eq!(verdict, XDP_TX, "{name}: verdict");
            assert_eq!(
                out,
                time_exceeded_to_client(&packet),
                "{name}: exact bytes out"
            );
            assert_eq!(
                h.counter(counters::TX_ICMP_TIME_EXCEEDED),
                before + 1,
                "{name}: counter"
            );
            assert!(h.flows().is_empty(), "{name}: no flow entry");
        }
        assert_eq!(h.counter(counters::DROP_TTL_EXPIRED), 0);
        assert_eq!(h.counter(counters::NEW_FLOWS), 0);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn expiring_ttl_on_an_established_flow_is_dropped_and_the_flow_stays() {
    with_harness(|h| {
        open_full_nat(h);
        let ack = Tcp {
            syn: false,
            ack: Some(1),
            seq: 1001,
            ttl: 1,
            ..Tcp::syn(CLIENT, 40000, VIP, 80)
        };
        let (verdict, _) = h.run(&ack.build(b"data"));
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(h.counter(counters::DROP_TTL_EXPIRED), 1);
        assert_eq!(h.counter(counters::TX_ICMP_TIME_EXCEEDED), 0);
        assert_eq!(h.counter(counters::FLOW_HITS), 1);
        assert_eq!(h.flows().len(), 2, "the connection is kept");
    });
}
