//! Full NAT: the client side is rewritten to the SNAT address, the server side back to the VIP.

use super::*;

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn tcp_syn_to_full_nat_vip_is_rewritten_and_creates_both_entries() {
    with_harness(|h| {
        let syn = Tcp::syn(CLIENT, 40000, VIP, 80);
        let (verdict, out) = h.run(&syn.build(&[]));
        assert_eq!(
            verdict, XDP_REDIRECT,
            "redirected to the internal interface"
        );

        let forward = h
            .flow(&flow_key(CLIENT, 40000, VIP, 80, IPPROTO_TCP))
            .expect("forward entry");
        let port = u16::from_be(forward.new_src_port);
        assert!(
            (20000..=20999).contains(&port),
            "SNAT port {port} in the configured range"
        );
        assert_eq!(forward.direction, FLOW_DIR_CLIENT_TO_SERVER);
        assert_eq!(forward.state, FLOW_STATE_SYN_SEEN);
        assert_eq!(forward.new_src_ip, u32::from(SNAT).to_be());
        assert_eq!(forward.new_dst_ip, u32::from(SERVER1).to_be());
        assert_eq!(u16::from_be(forward.new_dst_port), 8080);

        let reverse = h
            .flow(&flow_key(SERVER1, 8080, SNAT, port, IPPROTO_TCP))
            .expect("reverse entry");
        assert_eq!(reverse.direction, FLOW_DIR_SERVER_TO_CLIENT);
        assert_eq!(reverse.new_src_ip, u32::from(VIP).to_be());
        assert_eq!(reverse.new_dst_ip, u32::from(CLIENT).to_be());
        assert_eq!(u16::from_be(reverse.new_src_port), 80);
        assert_eq!(u16::from_be(reverse.new_dst_port), 40000);
        assert_eq!(h.flows().len(), 2);

        let expected = full_nat_to_server1(syn, port).build(&[]);
        assert_eq!(out, expected, "exact bytes out");
        assert_checksums_valid(&out);
        assert_eq!(h.counter(counters::NEW_FLOWS), 1);
        assert_eq!(h.counter(counters::REDIRECT), 1);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn server_reply_is_rewritten_back_to_the_vip() {
    with_harness(|h| {
        let port = open_full_nat(h);
        let syn_ack = server1_syn_ack(port);
        let (verdict, out) = h.run(&syn_ack.build(&[]));
        assert_eq!(
            verdict, XDP_REDIRECT,
            "redirected to the external interface"
        );
        let expected = Tcp {
            src_mac: LB_EXT_MAC,
            dst_mac: CLIENT_MAC,
            src: VIP,
            dst: CLIENT,
            ttl: 63,
            sport: 80,
            dport: 40000,
            ..syn_ack
        }
        .build(&[]);
        assert_eq!(out, expected);
        assert_checksums_valid(&out);
        // The server's SYN-ACK leaves both directions half-open until the client's ACK
        // (flow_state.rs follows the whole handshake).
        let forward = h
            .flow(&flow_key(CLIENT, 40000, VIP, 80, IPPROTO_TCP))
            .unwrap();
        let reverse = h
            .flow(&flow_key(SERVER1, 8080, SNAT, port, IPPROTO_TCP))
            .unwrap();
        assert_eq!(forward.state, FLOW_STATE_SYN_ACK_SEEN);
        assert_eq!(reverse.state, FLOW_STATE_SYN_ACK_SEEN);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn established_flow_data_is_forwarded_by_the_flow_entry() {
    with_harness(|h| {
        let port = open_full_nat(h);
        let data = Tcp {
            syn: false,
            ack: Some(5001),
            seq: 1001,
            ..Tcp::syn(CLIENT, 40000, VIP, 80)
        };
        let payload = b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n";
        let (verdict, out) = h.run(&data.build(payload));
        assert_eq!(verdict, XDP_REDIRECT);
        let expected = full_nat_to_server1(data, port).build(payload);
        assert_eq!(out, expected);
        assert_checksums_valid(&out);
        assert_eq!(h.counter(counters::FLOW_HITS), 1);
        assert_eq!(h.counter(counters::NEW_FLOWS), 1, "no second flow");
        assert_eq!(h.flows().len(), 2);
    });
}
