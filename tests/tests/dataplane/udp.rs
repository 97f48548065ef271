//! UDP services: datagrams both ways, and datagrams without a checksum.

use super::*;

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn udp_datagram_both_ways() {
    with_harness(|h| {
        let request = udp_packet(
            CLIENT_MAC, LB_EXT_MAC, CLIENT, 50000, VIP, 5353, 64, b"query",
        );
        let (verdict, out) = h.run(&request);
        assert_eq!(verdict, XDP_REDIRECT);
        let forward = h
            .flow(&flow_key(CLIENT, 50000, VIP, 5353, IPPROTO_UDP))
            .unwrap();
        assert_eq!(forward.state, FLOW_STATE_UDP);
        let port = u16::from_be(forward.new_src_port);
        let expected = udp_packet(
            LB_INT_MAC,
            SERVER3_MAC,
            SNAT,
            port,
            SERVER3,
            5353,
            63,
            b"query",
        );
        assert_eq!(out, expected);
        assert_checksums_valid(&out);

        let reply = udp_packet(
            SERVER3_MAC,
            LB_INT_MAC,
            SERVER3,
            5353,
            SNAT,
            port,
            64,
            b"answer!",
        );
        let (verdict, out) = h.run(&reply);
        assert_eq!(verdict, XDP_REDIRECT);
        let expected = udp_packet(
            LB_EXT_MAC, CLIENT_MAC, VIP, 5353, CLIENT, 50000, 63, b"answer!",
        );
        assert_eq!(out, expected);
        assert_checksums_valid(&out);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn udp_without_checksum_stays_without_checksum() {
    with_harness(|h| {
        let mut request = udp_packet(CLIENT_MAC, LB_EXT_MAC, CLIENT, 50001, VIP, 5353, 64, b"q");
        request[14 + 20 + 6] = 0;
        request[14 + 20 + 7] = 0;
        let (verdict, out) = h.run(&request);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(&out[14 + 20 + 6..14 + 20 + 8], &[0, 0]);
    });
}
