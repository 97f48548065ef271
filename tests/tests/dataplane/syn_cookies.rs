//! Automatic SYN cookies on a full-NAT service without `syn_proxy` (service "web",
//! VIP:80 → 198.19.0.11:8080): the flags the controller sets under a SYN flood.

use lb_common::{FLOW_STATE_SYNPROXY, SERVICE_FLAG_COOKIE_ACKS, SERVICE_FLAG_SYN_COOKIES};
use lb_testbed::harness::Overrides;

use super::*;

fn web_flags(flags: u8) -> Overrides {
    Overrides {
        syn_cookies: [("web".to_string(), flags)].into(),
        ..Overrides::default()
    }
}

/// The client's SYN from `sport`, which the balancer answers itself; returns the cookie.
fn cookie_for(h: &mut Harness, sport: u16) -> u32 {
    let (verdict, out) = h.run(&Tcp::syn(CLIENT, sport, VIP, 80).build(&[]));
    assert_eq!(verdict, XDP_TX, "answered by the balancer");
    let synack = ParsedTcp::of(&out);
    assert_eq!((synack.src, synack.dst), (VIP, CLIENT));
    assert_eq!(synack.flags, F_SYN | F_ACK);
    assert_eq!(synack.ack, 1001, "acknowledges the client's SYN");
    assert_checksums_valid(&out);
    synack.seq
}

/// The client's ACK of the balancer's SYN-ACK carrying `cookie`.
fn cookie_ack(sport: u16, cookie: u32) -> Tcp {
    Tcp {
        syn: false,
        ack: Some(cookie.wrapping_add(1)),
        seq: 1001,
        ..Tcp::syn(CLIENT, sport, VIP, 80)
    }
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn under_automatic_cookies_a_syn_makes_no_entry_and_the_cookie_ack_opens_the_flow() {
    with_harness(|h| {
        h.apply_overrides(&web_flags(
            SERVICE_FLAG_SYN_COOKIES | SERVICE_FLAG_COOKIE_ACKS,
        ))
        .unwrap();
        let cookie = cookie_for(h, 40000);
        assert!(h.flows().is_empty(), "a SYN creates no flow entry");
        assert_eq!(h.counter(counters::SYNPROXY_SYNACK_SENT), 1);
        assert_eq!(h.counter(counters::NEW_FLOWS), 0);
        assert_eq!(h.service_stats(0).unwrap().syn_cookies, 1);

        // The cookie ACK opens the server side with the balancer's own SYN.
        let (verdict, out) = h.run(&cookie_ack(40000, cookie).build(&[]));
        assert_eq!(verdict, XDP_REDIRECT);
        let syn = ParsedTcp::of(&out);
        assert_eq!((syn.src, syn.dst), (SNAT, SERVER1));
        assert_eq!(syn.flags, F_SYN);
        assert_eq!(h.counter(counters::SYNPROXY_COOKIE_VALID), 1);
        assert_eq!(h.flows().len(), 2);
        let forward = h
            .flow(&flow_key(CLIENT, 40000, VIP, 80, IPPROTO_TCP))
            .unwrap();
        assert_eq!(forward.state, FLOW_STATE_SYNPROXY);

        // A bad cookie: dropped like any segment without a flow, nothing made.
        let (verdict, _) = h.run(&cookie_ack(40001, 0x0bad_c00c).build(&[]));
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(h.counter(counters::DROP_NO_FLOW), 1);
        assert_eq!(h.flows().len(), 2);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn after_the_flood_syns_open_flows_again_and_earlier_cookies_still_complete() {
    with_harness(|h| {
        h.apply_overrides(&web_flags(
            SERVICE_FLAG_SYN_COOKIES | SERVICE_FLAG_COOKIE_ACKS,
        ))
        .unwrap();
        let cookie = cookie_for(h, 40000);
        // Switched off, cookie ACKs still accepted.
        h.apply_overrides(&web_flags(SERVICE_FLAG_COOKIE_ACKS))
            .unwrap();
        let (verdict, _) = h.run(&Tcp::syn(CLIENT, 40001, VIP, 80).build(&[]));
        assert_eq!(verdict, XDP_REDIRECT, "a SYN goes to the server");
        let plain = h
            .flow(&flow_key(CLIENT, 40001, VIP, 80, IPPROTO_TCP))
            .unwrap();
        assert_eq!(plain.state, FLOW_STATE_SYN_SEEN);
        assert_eq!(plain.synproxy, 0, "not proxied");
        assert_eq!(h.counter(counters::SYNPROXY_SYNACK_SENT), 1);

        let (verdict, _) = h.run(&cookie_ack(40000, cookie).build(&[]));
        assert_eq!(verdict, XDP_REDIRECT, "the earlier handshake completes");
        let proxied = h
            .flow(&flow_key(CLIENT, 40000, VIP, 80, IPPROTO_TCP))
            .unwrap();
        assert_eq!(proxied.state, FLOW_STATE_SYNPROXY);
        assert_eq!(h.flows().len(), 4);

        // An ACK without a cookie is an ordinary segment without a flow.
        let stale = cookie_ack(40002, 0x0bad_c00c).build(&[]);
        let (verdict, out) = h.run(&stale);
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(out, stale, "left untouched");
        assert_eq!(h.counter(counters::DROP_NO_FLOW), 1);
        assert_eq!(h.counter(counters::SYNPROXY_COOKIE_INVALID), 0);
        assert_eq!(h.flows().len(), 4);

        // Cookies gone altogether: a cookie ACK is just another unknown segment.
        let late = cookie_for_off(h);
        let (verdict, _) = h.run(&late);
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(h.counter(counters::DROP_NO_FLOW), 2);
        assert_eq!(h.counter(counters::SYNPROXY_COOKIE_VALID), 1);
        assert_eq!(h.flows().len(), 4);
    });
}

/// Gets a cookie for client port 40003 with cookies on, then switches them off
/// altogether; returns the ACK that would complete that handshake.
fn cookie_for_off(h: &mut Harness) -> Vec<u8> {
    h.apply_overrides(&web_flags(
        SERVICE_FLAG_SYN_COOKIES | SERVICE_FLAG_COOKIE_ACKS,
    ))
    .unwrap();
    let cookie = cookie_for(h, 40003);
    h.apply_overrides(&Overrides::default()).unwrap();
    cookie_ack(40003, cookie).build(&[])
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_service_with_syn_cookies_off_ignores_the_flags() {
    with_harness(|h| {
        let off = CONFIG.replacen(
            "name = \"web\"\n",
            "name = \"web\"\nsyn_cookies = \"off\"\n",
            1,
        );
        h.apply_config(&off).unwrap();
        h.apply_overrides(&web_flags(
            SERVICE_FLAG_SYN_COOKIES | SERVICE_FLAG_COOKIE_ACKS,
        ))
        .unwrap();
        let (verdict, _) = h.run(&Tcp::syn(CLIENT, 40000, VIP, 80).build(&[]));
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(h.counter(counters::SYNPROXY_SYNACK_SENT), 0);
        assert_eq!(h.flows().len(), 2);
    });
}
