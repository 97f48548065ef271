//! DNAT mode: only the destination changes, the client address reaches the server.

use super::*;

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn tcp_syn_to_dnat_vip_keeps_the_client_address() {
    with_harness(|h| {
        let syn = Tcp::syn(CLIENT, 41000, DNAT_VIP, 80);
        let (verdict, out) = h.run(&syn.build(b""));
        assert_eq!(verdict, XDP_REDIRECT);
        let expected = Tcp {
            src_mac: LB_INT_MAC,
            dst_mac: SERVER2_MAC,
            dst: SERVER2,
            ttl: 63,
            ..syn
        }
        .build(&[]);
        assert_eq!(out, expected);
        assert_checksums_valid(&out);
        let reverse = h
            .flow(&flow_key(SERVER2, 80, CLIENT, 41000, IPPROTO_TCP))
            .expect("reverse entry keyed on the client address");
        assert_eq!(reverse.new_src_ip, u32::from(DNAT_VIP).to_be());

        // The server's SYN-ACK goes back with the VIP as source.
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
        let (verdict, out) = h.run(&syn_ack.build(&[]));
        assert_eq!(verdict, XDP_REDIRECT);
        let expected = Tcp {
            src_mac: LB_EXT_MAC,
            dst_mac: CLIENT_MAC,
            src: DNAT_VIP,
            ttl: 63,
            ..syn_ack
        }
        .build(&[]);
        assert_eq!(out, expected);
    });
}
