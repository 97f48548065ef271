//! TCP segments without a flow entry that cannot open one (`unknown_segment`): dropped
//! by default, answered with a RST under `unknown_segment = "reset"`, never stored.

use super::syn_proxy::client_seg;
use super::*;

/// `CONFIG` with `unknown_segment = "reset"` on service `name`.
fn config_with_reset(name: &str) -> String {
    let table = format!("name = \"{name}\"\n");
    CONFIG.replacen(&table, &format!("{table}unknown_segment = \"reset\"\n"), 1)
}

/// A data segment (ACK 0x1234_5678, seq 5000) of a client connection to VIP:80 that
/// has no flow entry, like one whose flow expired while it idled.
fn stale_data_segment() -> Tcp {
    Tcp {
        syn: false,
        ack: Some(0x1234_5678),
        seq: 5000,
        ..Tcp::syn(CLIENT, 40000, VIP, 80)
    }
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn by_default_an_unknown_segment_is_dropped_unanswered() {
    with_harness(|h| {
        let packet = stale_data_segment().build(b"GET / HTTP/1.1\r\n\r\n");
        let (verdict, out) = h.run(&packet);
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(out, packet, "the dropped frame is left untouched");
        assert_eq!(h.counter(counters::DROP_NO_FLOW), 1);
        assert_eq!(h.counter(counters::TX_RST_NO_FLOW), 0);
        assert_eq!(h.service_stats(0).unwrap().drops, 1);
        assert!(h.flows().is_empty(), "no flow entry");
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn with_reset_an_unknown_segment_is_answered_with_a_rst() {
    with_harness(|h| {
        h.apply_config(&config_with_reset("web")).unwrap();
        let (verdict, out) = h.run(&stale_data_segment().build(b"GET / HTTP/1.1\r\n\r\n"));
        // Outside an attached interface the redirect back out of the ingress interface
        // falls back to XDP_TX.
        assert_eq!(verdict, XDP_TX);
        // RFC 793: the segment has an ACK, so the RST takes its sequence number from it
        // and acknowledges nothing.
        let expected = reset_to_client(80, 40000, 0x1234_5678, 0, F_RST);
        assert_eq!(out, expected, "exact bytes out");
        assert_checksums_valid(&out);
        assert_eq!(h.counter(counters::TX_RST_NO_FLOW), 1);
        assert_eq!(h.counter(counters::DROP_NO_FLOW), 0);
        assert_eq!(
            h.service_stats(0).unwrap().drops,
            1,
            "still a drop of the service"
        );
        assert!(h.flows().is_empty(), "no flow entry");

        // A segment without ACK (a bare FIN with data) is acknowledged instead: its
        // payload and FIN counted, sequence 0.
        let fin = Tcp {
            syn: false,
            fin: true,
            seq: 0xffff_fff0,
            ..Tcp::syn(CLIENT, 40001, VIP, 80)
        };
        let payload = b"bye";
        let (verdict, out) = h.run(&fin.build(payload));
        assert_eq!(verdict, XDP_TX);
        let ack = fin.seq.wrapping_add(payload.len() as u32 + 1);
        let expected = reset_to_client(80, 40001, 0, ack, F_RST | F_ACK);
        assert_eq!(out, expected, "exact bytes out");
        assert_checksums_valid(&out);
        assert_eq!(h.counter(counters::TX_RST_NO_FLOW), 2);
        assert!(h.flows().is_empty(), "no flow entry");

        // The fast path is untouched: a connection with a flow is forwarded.
        open_full_nat(h);
        let data = Tcp {
            syn: false,
            ack: Some(1),
            seq: 1001,
            ..Tcp::syn(CLIENT, 40000, VIP, 80)
        };
        assert_eq!(h.run(&data.build(b"x")).0, XDP_REDIRECT);
        assert_eq!(h.counter(counters::TX_RST_NO_FLOW), 2);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn with_reset_a_rst_without_a_flow_is_dropped_not_answered() {
    with_harness(|h| {
        h.apply_config(&config_with_reset("web")).unwrap();
        for rst in [
            Tcp {
                rst: true,
                ..stale_data_segment()
            },
            Tcp {
                syn: false,
                rst: true,
                ..Tcp::syn(CLIENT, 40000, VIP, 80)
            },
        ] {
            let packet = rst.build(&[]);
            let (verdict, out) = h.run(&packet);
            assert_eq!(verdict, XDP_DROP, "a RST is never answered with a RST");
            assert_eq!(out, packet, "the dropped frame is left untouched");
        }
        assert_eq!(h.counter(counters::DROP_NO_FLOW), 2);
        assert_eq!(h.counter(counters::TX_RST_NO_FLOW), 0);
        assert!(h.flows().is_empty(), "no flow entry");
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn with_reset_a_client_outside_the_allow_list_is_not_answered() {
    with_harness(|h| {
        let config = config_with_reset("web").replacen(
            "name = \"web\"\n",
            "name = \"web\"\nallow = [\"10.0.0.0/8\"]\n",
            1,
        );
        h.apply_config(&config).unwrap();
        let packet = stale_data_segment().build(&[]);
        let (verdict, out) = h.run(&packet);
        assert_eq!(
            verdict, XDP_DROP,
            "a refused client learns nothing from its probes"
        );
        assert_eq!(out, packet);
        assert_eq!(h.counter(counters::DROP_NO_FLOW), 1);
        assert_eq!(h.counter(counters::TX_RST_NO_FLOW), 0);
        assert!(h.flows().is_empty(), "no flow entry");
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn with_reset_a_syn_proxy_still_checks_acks_as_cookies() {
    with_harness(|h| {
        h.apply_config(&config_with_reset("proxied")).unwrap();
        // A bare ACK is a cookie candidate, not an unknown segment: a wrong one is
        // dropped silently, as without the key.
        let (verdict, _) = h.run(&client_seg(40001, 1001, 0x1234_5678, F_ACK, vec![]).bytes());
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(h.counter(counters::SYNPROXY_COOKIE_INVALID), 1);
        assert_eq!(h.counter(counters::TX_RST_NO_FLOW), 0);
        // A right one opens the connection.
        let (verdict, out) = h.run(&client_seg(40002, 1000, 0, F_SYN, vec![]).bytes());
        assert_eq!(verdict, XDP_TX);
        let cookie = ParsedTcp::of(&out).seq;
        let ack = client_seg(40002, 1001, cookie.wrapping_add(1), F_ACK, vec![]);
        assert_eq!(h.run(&ack.bytes()).0, XDP_REDIRECT);
        assert_eq!(h.counter(counters::SYNPROXY_COOKIE_VALID), 1);
        let flows_after_open = h.flow_count();
        // A FIN+ACK without a flow cannot carry a cookie: it is an unknown segment.
        let (verdict, out) =
            h.run(&client_seg(40003, 1000, 0x0bad_cafe, F_FIN | F_ACK, vec![]).bytes());
        assert_eq!(verdict, XDP_TX);
        let answer = ParsedTcp::of(&out);
        assert_eq!(answer.flags, F_RST);
        assert_eq!(answer.seq, 0x0bad_cafe, "RST seq = the ACK");
        assert_checksums_valid(&out);
        assert_eq!(h.counter(counters::TX_RST_NO_FLOW), 1);
        assert_eq!(h.flow_count(), flows_after_open, "no flow entry for it");
    });
}
