//! Flows marked for reset when their backend fails (`on_backend_down = "reset"`).

use super::*;

/// Opens a full-NAT connection and marks both its entries for reset, as the controller
/// does when the backend fails under `on_backend_down = "reset"`. Returns the client's
/// and the server's entry keys.
fn open_flow_marked_for_reset(h: &mut Harness) -> (FlowKey, FlowKey) {
    let port = open_full_nat(h);
    let client_key = flow_key(CLIENT, 40000, VIP, 80, IPPROTO_TCP);
    let server_key = flow_key(SERVER1, 8080, SNAT, port, IPPROTO_TCP);
    for k in [client_key, server_key] {
        let mut entry = h.flow(&k).unwrap();
        entry.state = lb_common::FLOW_STATE_RESET;
        h.set_flow(k, entry).unwrap();
    }
    (client_key, server_key)
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_flow_marked_for_reset_answers_the_client_with_a_rst() {
    with_harness(|h| {
        let (_, server_key) = open_flow_marked_for_reset(h);
        let data = Tcp {
            syn: false,
            ack: Some(0x1234_5678),
            seq: 1001,
            ..Tcp::syn(CLIENT, 40000, VIP, 80)
        };
        let (verdict, out) = h.run(&data.build(b"GET / HTTP/1.1\r\n\r\n"));
        assert_eq!(verdict, XDP_TX);
        // RFC 793: the RST takes its sequence number from the segment's ACK.
        let expected = reset_to_client(80, 40000, 0x1234_5678, 0, F_RST);
        assert_eq!(out, expected, "exact bytes out");
        assert_checksums_valid(&out);
        assert_eq!(h.counter(counters::TX_RST_BACKEND_DOWN), 1);

        // The dead server's packets are dropped; a new SYN on the tuple starts afresh.
        let reply = Tcp {
            src_mac: LB_INT_MAC,
            dst_mac: LB_INT_MAC,
            syn: false,
            ack: Some(1001),
            ..Tcp::syn(SERVER1, 8080, SNAT, u16::from_be(server_key.dst_port))
        };
        assert_eq!(h.run(&reply.build(&[])).0, XDP_DROP);
        assert_eq!(h.counter(counters::DROP_BACKEND_DOWN), 1);
        let (verdict, _) = h.run(&Tcp::syn(CLIENT, 40000, VIP, 80).build(&[]));
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(h.counter(counters::FLOW_REPLACED), 1);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_client_rst_on_a_flow_marked_for_reset_is_dropped_and_removes_the_pair() {
    with_harness(|h| {
        let (client_key, server_key) = open_flow_marked_for_reset(h);
        let rst = Tcp {
            syn: false,
            rst: true,
            ack: Some(0x1234_5678),
            seq: 1001,
            ..Tcp::syn(CLIENT, 40000, VIP, 80)
        };
        let packet = rst.build(&[]);
        let (verdict, out) = h.run(&packet);
        assert_eq!(verdict, XDP_DROP, "a RST is never answered with a RST");
        assert_eq!(out, packet, "the dropped frame is left untouched");
        assert_eq!(h.counter(counters::TX_RST_BACKEND_DOWN), 0);
        assert_eq!(h.counter(counters::DROP_BACKEND_DOWN), 1);
        assert!(h.flow(&client_key).is_none(), "client entry removed");
        assert!(h.flow(&server_key).is_none(), "server entry removed");
        assert!(h.flows().is_empty());
    });
}
