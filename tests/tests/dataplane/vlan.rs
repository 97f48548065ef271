//! VLAN-tagged frames (802.1Q, 802.1ad and a QinQ stack) pass to the kernel untouched
//! and are never balanced, even when what they carry is a SYN or a datagram to a service.

use super::*;

/// `frame` with a VLAN tag (`tpid`, VLAN `vid`) inserted after the MAC addresses.
fn tagged(frame: &[u8], tpid: u16, vid: u16) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    out.extend_from_slice(&tpid.to_be_bytes());
    out.extend_from_slice(&vid.to_be_bytes());
    out.extend_from_slice(&frame[12..]);
    out
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn tagged_frames_to_a_service_pass_untouched_and_open_nothing() {
    with_harness(|h| {
        let syn = Tcp::syn(CLIENT, 40000, VIP, 80).build(&[]);
        let proxied_syn = Tcp::syn(CLIENT, 40001, VIP, 443).build(&[]);
        let udp = udp_packet(CLIENT_MAC, LB_EXT_MAC, CLIENT, 50000, VIP, 5353, 64, b"q");
        let cases = [
            ("802.1Q SYN", tagged(&syn, 0x8100, 10)),
            ("802.1ad SYN", tagged(&syn, 0x88a8, 20)),
            ("QinQ SYN", tagged(&tagged(&syn, 0x8100, 10), 0x88a8, 20)),
            ("802.1Q SYN-proxied SYN", tagged(&proxied_syn, 0x8100, 10)),
            ("802.1Q UDP", tagged(&udp, 0x8100, 10)),
            ("priority-tagged (VLAN 0) SYN", tagged(&syn, 0x8100, 0)),
        ];
        for (name, frame) in &cases {
            let (verdict, out) = h.run(frame);
            assert_eq!(verdict, XDP_PASS, "{name}: verdict");
            assert_eq!(&out, frame, "{name}: untouched");
        }
        assert_eq!(h.counter(counters::PASS_VLAN), cases.len() as u64);
        assert_eq!(h.counter(counters::PASS_NOT_IPV4), 0);
        assert_eq!(h.counter(counters::NEW_FLOWS), 0);
        assert_eq!(h.counter(counters::SYNPROXY_SYNACK_SENT), 0);
        assert!(h.flows().is_empty(), "no flow entry");

        // The same SYN untagged is balanced.
        assert_eq!(h.run(&syn).0, XDP_REDIRECT);
        assert_eq!(h.counter(counters::NEW_FLOWS), 1);
        // A tagged packet of that very flow is not one of its packets either.
        let (verdict, _) = h.run(&tagged(&syn, 0x8100, 10));
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(h.counter(counters::FLOW_HITS), 0);
    });
}
