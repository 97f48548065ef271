//! Allow lists: refused clients get a RST and leave no state.

use super::syn_proxy::client_seg;
use super::*;

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn syn_from_outside_the_allow_list_is_answered_with_a_rst() {
    with_harness(|h| {
        let config = CONFIG.replacen(
            "name = \"web\"\n",
            "name = \"web\"\nallow = [\"10.0.0.0/8\", \"198.18.0.3/32\"]\ndeny = \"reset\"\n",
            1,
        );
        h.apply_config(&config).unwrap();
        let mut syn = Tcp::syn(CLIENT, 40000, VIP, 80);
        syn.seq = 0xffff_ffff;
        // Outside an attached interface the devmap redirect back out of the ingress
        // interface cannot be taken and the program falls back to XDP_TX.
        let payload = b"data in the SYN is cut";
        let (verdict, out) = h.run(&syn.build(payload));
        assert_eq!(verdict, XDP_TX);
        // RFC 793: a segment without ACK is acknowledged, SYN and payload counted.
        let ack = syn.seq.wrapping_add(1 + payload.len() as u32);
        let expected = reset_to_client(80, 40000, 0, ack, F_RST | F_ACK);
        assert_eq!(out, expected, "exact bytes out");
        assert_checksums_valid(&out);
        assert_eq!(h.counter(counters::TX_RST_NOT_ELIGIBLE), 1);
        assert!(h.flows().is_empty(), "a refused client leaves no flow");
        assert_eq!(h.service_stats(0).unwrap().denied, 1);

        // A /32 inside the list is admitted; UDP from outside is dropped.
        let (verdict, _) =
            h.run(&Tcp::syn(Ipv4Addr::new(198, 18, 0, 3), 40001, VIP, 80).build(&[]));
        assert_eq!(verdict, XDP_REDIRECT);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn syn_proxy_refuses_clients_outside_the_allow_list_before_spending_a_cookie() {
    with_harness(|h| {
        let config = CONFIG.replacen(
            "name = \"proxied\"\n",
            "name = \"proxied\"\nallow = [\"10.0.0.0/8\"]\ndeny = \"reset\"\n",
            1,
        );
        h.apply_config(&config).unwrap();
        // The SYN gets the refusal (a RST acknowledging it), not a SYN-ACK with a cookie.
        let (verdict, out) = h.run(&client_seg(40050, 1000, 0, F_SYN, vec![]).bytes());
        assert_eq!(verdict, XDP_TX);
        let refusal = ParsedTcp::of(&out);
        assert_eq!(refusal.flags, F_RST | F_ACK, "a RST+ACK, not a SYN-ACK");
        assert_eq!(refusal.ack, 1001, "acknowledges the SYN");
        assert_checksums_valid(&out);
        // An ACK from outside the list is refused without a cookie check.
        let (verdict, out) = h.run(&client_seg(40050, 1001, 0x1234_5678, F_ACK, vec![]).bytes());
        assert_eq!(verdict, XDP_TX);
        let refusal = ParsedTcp::of(&out);
        assert_eq!(refusal.flags, F_RST);
        assert_eq!(refusal.seq, 0x1234_5678, "RST seq = the ACK");
        assert_eq!(h.counter(counters::TX_RST_NOT_ELIGIBLE), 2);
        assert_eq!(h.counter(counters::SYNPROXY_SYNACK_SENT), 0);
        assert_eq!(h.counter(counters::SYNPROXY_COOKIE_INVALID), 0);
        assert_eq!(h.counter(counters::SYNPROXY_COOKIE_VALID), 0);
        assert!(h.flows().is_empty());
    });
}
