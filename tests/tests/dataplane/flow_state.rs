//! TCP flow state: no flow without a SYN, FIN and RST close, a new SYN replaces.

use super::*;

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn tcp_without_syn_and_without_flow_is_dropped() {
    with_harness(|h| {
        let ack = Tcp {
            syn: false,
            ack: Some(1),
            ..Tcp::syn(CLIENT, 40000, VIP, 80)
        };
        let (verdict, _) = h.run(&ack.build(&[]));
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(h.counter(counters::DROP_NO_FLOW), 1);
        assert!(h.flows().is_empty());
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn fin_closes_and_a_new_syn_replaces_the_flow() {
    with_harness(|h| {
        let first_port = open_full_nat(h);
        let fin = Tcp {
            syn: false,
            fin: true,
            ack: Some(1),
            ..Tcp::syn(CLIENT, 40000, VIP, 80)
        };
        let (verdict, _) = h.run(&fin.build(&[]));
        assert_eq!(verdict, XDP_REDIRECT);
        let forward = h
            .flow(&flow_key(CLIENT, 40000, VIP, 80, IPPROTO_TCP))
            .unwrap();
        let reverse = h
            .flow(&flow_key(SERVER1, 8080, SNAT, first_port, IPPROTO_TCP))
            .unwrap();
        assert_eq!(forward.state, FLOW_STATE_CLOSING);
        assert_eq!(reverse.state, FLOW_STATE_CLOSING, "mirrored to the peer");

        // The client reuses its port for a new connection.
        open_full_nat(h);
        assert_eq!(h.counter(counters::FLOW_REPLACED), 1);
        let forward = h
            .flow(&flow_key(CLIENT, 40000, VIP, 80, IPPROTO_TCP))
            .unwrap();
        assert_eq!(forward.state, FLOW_STATE_SYN_SEEN);
        assert_eq!(h.flows().len(), 2, "the old pair is gone");
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn rst_from_the_server_closes_the_flow() {
    with_harness(|h| {
        let port = open_full_nat(h);
        let rst = Tcp {
            syn: false,
            ack: Some(1001),
            rst: true,
            seq: 0,
            ..server1_segment(port)
        };
        let (verdict, _) = h.run(&rst.build(&[]));
        assert_eq!(verdict, XDP_REDIRECT);
        let forward = h
            .flow(&flow_key(CLIENT, 40000, VIP, 80, IPPROTO_TCP))
            .unwrap();
        assert_eq!(forward.state, FLOW_STATE_CLOSING);
    });
}
