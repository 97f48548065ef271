//! One-arm: client and servers behind one interface.

use super::*;
use lb_testbed::harness::AttachedMode;

/// One-arm: the client and the servers sit behind the same interface, so the
/// rewritten packet leaves where it came in, with XDP_TX.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn one_arm_sends_back_out_of_the_same_interface() {
    with_harness(|h| {
        h.attach(INT_IF, Some(AttachedMode::Native))
            .expect("attach to int0");
        let local_client = Ipv4Addr::new(198, 19, 0, 50);
        let local_client_mac = [0x02, 0, 0, 0, 0, 0x50];
        let syn = Tcp {
            src_mac: local_client_mac,
            dst_mac: LB_INT_MAC,
            ..Tcp::syn(local_client, 42000, VIP, 80)
        };
        let int = h.int_ifindex();
        let (verdict, out) = h.run_on(&syn.build(&[]), int);
        // Back out of int0 by a devmap redirect to int0 itself, not XDP_TX.
        assert_eq!(verdict, XDP_REDIRECT);
        let forward = h
            .flow(&flow_key(local_client, 42000, VIP, 80, IPPROTO_TCP))
            .unwrap();
        let port = u16::from_be(forward.new_src_port);
        let expected = full_nat_to_server1(syn, port).build(&[]);
        assert_eq!(out, expected);

        let syn_ack = Tcp {
            ack: Some(1001),
            seq: 9000,
            ..server1_segment(port)
        };
        let (verdict, out) = h.run_on(&syn_ack.build(&[]), int);
        assert_eq!(verdict, XDP_REDIRECT);
        let expected = Tcp {
            src_mac: LB_INT_MAC,
            dst_mac: local_client_mac,
            src: VIP,
            dst: local_client,
            ttl: 63,
            sport: 80,
            dport: 42000,
            ..syn_ack
        }
        .build(&[]);
        assert_eq!(out, expected);
        assert_checksums_valid(&out);
        assert_eq!(h.counter(counters::TX), 2);
        assert_eq!(
            h.counter(counters::REDIRECT),
            0,
            "`tx` counts the one-arm case"
        );
        h.detach_all();
    });
}
