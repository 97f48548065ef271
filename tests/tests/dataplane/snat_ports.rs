//! SNAT source-port allocation.

use super::*;

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn snat_ports_never_collide() {
    with_harness(|h| {
        let mut ports = std::collections::HashSet::new();
        for client_port in 30000..30200u16 {
            let (verdict, _) = h.run(&Tcp::syn(CLIENT, client_port, VIP, 80).build(&[]));
            assert_eq!(verdict, XDP_REDIRECT);
            let forward = h
                .flow(&flow_key(CLIENT, client_port, VIP, 80, IPPROTO_TCP))
                .unwrap();
            assert!(ports.insert(forward.new_src_port), "SNAT port reused");
        }
        assert_eq!(h.flows().len(), 400);
    });
}

/// A client that reuses its source port after its connection closed gets the same SNAT
/// port again, so the server sees the same tuple from the same client (its TIME_WAIT
/// socket then accepts the SYN). With random ports it would get the same one once in a
/// thousand (`[snat]` range of the test config).
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_reused_client_port_gets_its_snat_port_again() {
    with_harness(|h| {
        let first = open_full_nat(h);
        let key = flow_key(CLIENT, 40000, VIP, 80, IPPROTO_TCP);
        let mut forward = h.flow(&key).unwrap();
        forward.state = FLOW_STATE_CLOSING;
        h.set_flow(key, forward).unwrap();
        let (verdict, _) = h.run(&Tcp::syn(CLIENT, 40000, VIP, 80).build(&[]));
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(h.counter(counters::FLOW_REPLACED), 1);
        let again = u16::from_be(h.flow(&key).unwrap().new_src_port);
        assert_eq!(again, first, "the same SNAT port for the same client tuple");
        // Another client port gets its own.
        let (verdict, _) = h.run(&Tcp::syn(CLIENT, 40001, VIP, 80).build(&[]));
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(h.flows().len(), 4);
    });
}
