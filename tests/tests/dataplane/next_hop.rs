//! A next hop without a neighbour entry: the kernel resolves it.

use super::*;

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn unresolved_next_hop_goes_to_the_kernel_rewritten() {
    with_harness(|h| {
        let syn = Tcp::syn(CLIENT, 40000, NO_NEIGH_VIP, 80);
        let (verdict, out) = h.run(&syn.build(&[]));
        assert_eq!(
            verdict, XDP_PASS,
            "the kernel resolves the neighbour and forwards"
        );
        let forward = h
            .flow(&flow_key(CLIENT, 40000, NO_NEIGH_VIP, 80, IPPROTO_TCP))
            .unwrap();
        let expected = Tcp {
            src: SNAT,
            dst: Ipv4Addr::new(198, 19, 0, 99),
            sport: u16::from_be(forward.new_src_port),
            ..syn
        }
        .build(&[]);
        assert_eq!(out, expected, "rewritten, MACs and TTL left to the kernel");
        assert_checksums_valid(&out);
        assert_eq!(h.counter(counters::PASS_NO_NEIGH), 1);
    });
}
