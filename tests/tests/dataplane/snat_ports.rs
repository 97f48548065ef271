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
