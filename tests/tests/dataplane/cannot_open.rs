//! Packets that cannot open a connection leave no flow entry: SYN+FIN and SYN+RST, and
//! new flows whose TTL would expire on the way to the backend (UDP length mismatches are
//! in `malformed`).

use super::*;

/// Runs `packet`, expects `verdict` with `counter` one up, and no flow entry at all.
fn assert_refused(h: &mut Harness, name: &str, packet: &[u8], verdict: u32, counter: u32) {
    let before = h.counter(counter);
    let (got, _) = h.run(packet);
    assert_eq!(got, verdict, "{name}: verdict");
    assert_eq!(h.counter(counter), before + 1, "{name}: counter");
    assert!(h.flows().is_empty(), "{name}: no flow entry");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn syn_with_fin_or_rst_opens_nothing() {
    with_harness(|h| {
        let syn = Tcp::syn(CLIENT, 40000, VIP, 80);
        let cases = [
            ("SYN+FIN", Tcp { fin: true, ..syn }),
            ("SYN+RST", Tcp { rst: true, ..syn }),
            (
                "SYN+FIN+RST",
                Tcp {
                    fin: true,
                    rst: true,
                    ..syn
                },
            ),
            (
                "SYN+FIN, DNAT",
                Tcp {
                    fin: true,
                    dst: DNAT_VIP,
                    ..syn
                },
            ),
            (
                "SYN+FIN, SYN proxy",
                Tcp {
                    fin: true,
                    dport: 443,
                    ..syn
                },
            ),
            (
                "SYN+RST, SYN proxy",
                Tcp {
                    rst: true,
                    dport: 443,
                    ..syn
                },
            ),
        ];
        for (name, segment) in cases {
            let packet = segment.build(&[]);
            assert_refused(h, name, &packet, XDP_DROP, counters::DROP_TCP_BAD_FLAGS);
        }
        assert_eq!(h.counter(counters::NEW_FLOWS), 0);
        assert_eq!(h.counter(counters::DROP_NO_FLOW), 0);
        assert_eq!(h.counter(counters::SYNPROXY_SYNACK_SENT), 0);
        assert_eq!(h.counter(counters::SYNPROXY_SYN_DROPPED), 0);
        assert_eq!(h.service_stats(0).unwrap().drops, 3, "web's drops");
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn syn_rst_from_a_refused_client_gets_no_rst() {
    with_harness(|h| {
        let config = CONFIG.replacen(
            "name = \"web\"\n",
            "name = \"web\"\nallow = [\"10.0.0.0/8\"]\ndeny = \"reset\"\n",
            1,
        );
        h.apply_config(&config).unwrap();
        let syn_rst = Tcp {
            rst: true,
            ..Tcp::syn(CLIENT, 40000, VIP, 80)
        };
        assert_refused(
            h,
            "SYN+RST, refused client",
            &syn_rst.build(&[]),
            XDP_DROP,
            counters::DROP_TCP_BAD_FLAGS,
        );
        assert_eq!(
            h.counter(counters::TX_RST_NOT_ELIGIBLE),
            0,
            "a RST is never answered"
        );
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn syn_fin_on_a_closed_tuple_does_not_replace_the_flow() {
    with_harness(|h| {
        open_full_nat(h);
        let fin = Tcp {
            syn: false,
            fin: true,
            ack: Some(1),
            ..Tcp::syn(CLIENT, 40000, VIP, 80)
        };
        assert_eq!(h.run(&fin.build(&[])).0, XDP_REDIRECT);
        let before = h.flows();
        assert_eq!(before.len(), 2);

        let syn_fin = Tcp {
            fin: true,
            ..Tcp::syn(CLIENT, 40000, VIP, 80)
        };
        h.run(&syn_fin.build(&[]));
        assert_eq!(h.counter(counters::FLOW_REPLACED), 0);
        assert_eq!(
            h.counter(counters::NEW_FLOWS),
            1,
            "only the first SYN opened"
        );
        let forward = h
            .flow(&flow_key(CLIENT, 40000, VIP, 80, IPPROTO_TCP))
            .unwrap();
        assert_eq!(forward.state, FLOW_STATE_CLOSING, "the closed pair stays");
        assert_eq!(h.flows().len(), 2);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn expiring_ttl_opens_nothing() {
    with_harness(|h| {
        for ttl in [1, 0] {
            let syn = Tcp {
                ttl,
                ..Tcp::syn(CLIENT, 40000, VIP, 80)
            };
            // Answered with an ICMP time exceeded (the bytes are checked in `ttl`).
            let name = format!("SYN, TTL {ttl}");
            let answer = counters::TX_ICMP_TIME_EXCEEDED;
            assert_refused(h, &name, &syn.build(&[]), XDP_TX, answer);
            let udp = udp_packet(CLIENT_MAC, LB_EXT_MAC, CLIENT, 50000, VIP, 5353, ttl, b"q");
            let name = format!("UDP, TTL {ttl}");
            assert_refused(h, &name, &udp, XDP_TX, answer);
        }
        assert_eq!(h.counter(counters::DROP_TTL_EXPIRED), 0);
        assert_eq!(h.counter(counters::NEW_FLOWS), 0);
        assert_eq!(h.service_stats(0).unwrap().drops, 2, "web's drops");

        // TTL 2 still opens: it leaves the balancer with TTL 1.
        let syn = Tcp {
            ttl: 2,
            ..Tcp::syn(CLIENT, 40000, VIP, 80)
        };
        assert_eq!(h.run(&syn.build(&[])).0, XDP_REDIRECT);
        assert_eq!(h.flows().len(), 2);
    });
}
