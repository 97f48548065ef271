//! Traffic that is not for a service passes to the kernel untouched.

use super::*;
use etherparse::PacketBuilder;

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn traffic_not_for_the_balancer_passes_untouched() {
    with_harness(|h| {
        let tcp = Tcp::syn(CLIENT, 40000, OTHER_HOST, 22).build(&[]);
        let udp = udp_packet(
            CLIENT_MAC, LB_EXT_MAC, CLIENT, 1000, OTHER_HOST, 53, 64, b"x",
        );
        // TCP to the VIP on a port without a service: the kernel's business.
        let other_port = Tcp::syn(CLIENT, 40000, VIP, 22).build(&[]);
        let mut icmp = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, LB_EXT_MAC)
            .ipv4(CLIENT.octets(), VIP.octets(), 64)
            .icmpv4_echo_request(1, 1)
            .write(&mut icmp, b"ping")
            .unwrap();
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&CLIENT_MAC);
        arp.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&CLIENT_MAC);
        arp.extend_from_slice(&CLIENT.octets());
        arp.extend_from_slice(&[0; 6]);
        arp.extend_from_slice(&VIP.octets());
        let mut ipv6 = vec![0x33, 0x33, 0, 0, 0, 1];
        ipv6.extend_from_slice(&CLIENT_MAC);
        ipv6.extend_from_slice(&[0x86, 0xdd]);
        ipv6.extend_from_slice(&[0x60, 0, 0, 0, 0, 0, 59, 64]);
        ipv6.extend_from_slice(&[0; 32]);
        for packet in [&tcp, &udp, &other_port, &icmp, &arp, &ipv6] {
            let (verdict, out) = h.run(packet);
            assert_eq!(verdict, XDP_PASS);
            assert_eq!(&out, packet, "untouched");
        }
        assert!(h.flows().is_empty());
        assert_eq!(h.counter(counters::PASS_NOT_IPV4), 2);
        assert_eq!(h.counter(counters::PASS_NOT_OURS), 3);
        assert_eq!(h.counter(counters::PASS_LOCAL), 1);
    });
}
