//! SYN proxy (service "proxied", VIP:443 → 198.19.0.11:8443).

use super::*;

fn opt_mss(mss: u16) -> Vec<u8> {
    [&[2, 4][..], &mss.to_be_bytes()].concat()
}
fn opt_ts(tsval: u32, tsecr: u32) -> Vec<u8> {
    [&[8, 10][..], &tsval.to_be_bytes(), &tsecr.to_be_bytes()].concat()
}
fn opt_wscale(shift: u8) -> Vec<u8> {
    vec![1, 3, 3, shift]
}
/// MSS, SACK permitted, timestamps, window scale: the layout Linux sends in a SYN.
fn linux_syn_options(tsval: u32, tsecr: u32, wscale: u8) -> Vec<u8> {
    [
        opt_mss(1460),
        vec![4, 2],
        opt_ts(tsval, tsecr),
        opt_wscale(wscale),
    ]
    .concat()
}

pub(super) fn client_seg(sport: u16, seq: u32, ack: u32, flags: u8, options: Vec<u8>) -> Segment {
    Segment {
        src_mac: CLIENT_MAC,
        dst_mac: LB_EXT_MAC,
        src: CLIENT,
        dst: VIP,
        ttl: 64,
        sport,
        dport: 443,
        seq,
        ack,
        flags,
        window: 64240,
        options,
        payload: Vec::new(),
    }
}

/// Sends a client SYN with `options`, checks the SYN-ACK's frame around the cookie and
/// TSval it carries, and returns (cookie, TSval or 0).
pub(super) fn proxy_syn(h: &mut Harness, sport: u16, options: Vec<u8>) -> (u32, u32, Vec<u8>) {
    let syn = client_seg(sport, 1000, 0, F_SYN, options);
    let (verdict, out) = h.run(&syn.bytes());
    assert_eq!(verdict, XDP_TX, "the balancer answers the SYN itself");
    let synack = ParsedTcp::of(&out);
    let tsval = synack.timestamp.map_or(0, |(tsval, _)| tsval);
    (synack.seq, tsval, synack.options)
}

/// Completes the client side and returns (cookie, SNAT port).
fn proxy_open(h: &mut Harness, sport: u16) -> (u32, u16) {
    let (cookie, _, _) = proxy_syn(h, sport, vec![]);
    let ack = client_seg(sport, 1001, cookie.wrapping_add(1), F_ACK, vec![]);
    assert_eq!(h.run(&ack.bytes()).0, XDP_REDIRECT);
    let forward = h
        .flow(&flow_key(CLIENT, sport, VIP, 443, IPPROTO_TCP))
        .unwrap();
    (cookie, u16::from_be(forward.new_src_port))
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn syn_proxy_handshake_and_translated_data_both_ways() {
    with_harness(|h| {
        // 1. SYN → SYN-ACK with a cookie, from the VIP, back out of the same port.
        let (cookie, our_tsval, _) = proxy_syn(h, 40000, linux_syn_options(1000, 0, 7));
        // TSval carries the client's options: wscale 7, SACK (bit 4), MSS 1460 (index 3).
        assert_eq!(our_tsval & 0x7f, 7 | 1 << 4 | 3 << 5, "options in TSval");
        let expected = Segment {
            src_mac: LB_EXT_MAC,
            dst_mac: CLIENT_MAC,
            src: VIP,
            dst: CLIENT,
            ttl: 64,
            sport: 443,
            dport: 40000,
            seq: cookie,
            ack: 1001,
            flags: F_SYN | F_ACK,
            window: 65535,
            options: [
                opt_mss(1460),
                vec![4, 2],
                opt_ts(our_tsval, 1000),
                opt_wscale(7),
            ]
            .concat(),
            payload: vec![],
        };
        let syn = client_seg(40000, 1000, 0, F_SYN, linux_syn_options(1000, 0, 7));
        let (_, out) = h.run(&syn.bytes());
        assert_eq!(out, expected.bytes(), "SYN-ACK exact bytes");
        assert_checksums_valid(&out);
        assert!(h.flows().is_empty(), "a SYN creates no flow entry");
        assert_eq!(h.counter(counters::SYNPROXY_SYNACK_SENT), 2);
        assert_eq!(h.counter(counters::NEW_FLOWS), 0);

        // 2. The client's ACK: the kernel helper accepts the cookie, both entries are
        // created, and the ACK becomes the SYN that opens the server side.
        let ack = client_seg(
            40000,
            1001,
            cookie.wrapping_add(1),
            F_ACK,
            [vec![1, 1], opt_ts(1010, our_tsval)].concat(),
        );
        let (verdict, out) = h.run(&ack.bytes());
        assert_eq!(verdict, XDP_REDIRECT, "SYN toward the server");
        assert_eq!(h.counter(counters::SYNPROXY_COOKIE_VALID), 1);
        let forward = h
            .flow(&flow_key(CLIENT, 40000, VIP, 443, IPPROTO_TCP))
            .unwrap();
        let port = u16::from_be(forward.new_src_port);
        assert_eq!(forward.state, lb_common::FLOW_STATE_SYNPROXY);
        // While the server side opens: the cookie in seq_delta, the client's ISN kept
        // for a retransmitted SYN.
        assert_eq!(forward.seq_delta, cookie);
        assert_eq!(forward.proxy_isn, 1000);
        let server_syn = Segment {
            src_mac: LB_INT_MAC,
            dst_mac: SERVER1_MAC,
            src: SNAT,
            dst: SERVER1,
            ttl: 63,
            sport: port,
            dport: 8443,
            seq: 1000,
            ack: 0,
            flags: F_SYN,
            window: 65535,
            options: [opt_mss(1460), vec![4, 2], opt_ts(1010, 0), opt_wscale(7)].concat(),
            payload: vec![],
        };
        assert_eq!(out, server_syn.bytes(), "server SYN exact bytes");
        assert_eq!(h.flows().len(), 2);

        // 3. The server's SYN-ACK (ISN 5000, TSval 777, wscale 9) is answered by the
        // balancer with the ACK that completes the server handshake.
        let server_synack = Segment {
            src_mac: SERVER1_MAC,
            dst_mac: LB_INT_MAC,
            src: SERVER1,
            dst: SNAT,
            ttl: 64,
            sport: 8443,
            dport: port,
            seq: 5000,
            ack: 1001,
            flags: F_SYN | F_ACK,
            window: 65160,
            options: [opt_mss(1460), vec![4, 2], opt_ts(777, 1010), opt_wscale(9)].concat(),
            payload: vec![],
        };
        let (verdict, out) = h.run(&server_synack.bytes());
        assert_eq!(verdict, XDP_TX, "ACK back to the server");
        let server_ack = Segment {
            src_mac: LB_INT_MAC,
            dst_mac: SERVER1_MAC,
            src: SNAT,
            dst: SERVER1,
            ttl: 64,
            sport: port,
            dport: 8443,
            seq: 1001,
            ack: 5001,
            flags: F_ACK,
            window: 65535 >> 7,
            options: [vec![1, 1], opt_ts(1010, 777)].concat(),
            payload: vec![],
        };
        assert_eq!(out, server_ack.bytes(), "server ACK exact bytes");
        assert_eq!(h.counter(counters::SYNPROXY_SERVER_DONE), 1);
        let seq_delta = cookie.wrapping_sub(5000);
        let ts_delta = our_tsval.wrapping_sub(777);
        for k in [
            flow_key(CLIENT, 40000, VIP, 443, IPPROTO_TCP),
            flow_key(SERVER1, 8443, SNAT, port, IPPROTO_TCP),
        ] {
            let entry = h.flow(&k).unwrap();
            assert_eq!(entry.state, FLOW_STATE_ESTABLISHED);
            assert_eq!(entry.seq_delta, seq_delta);
            assert_eq!(entry.ts_delta, ts_delta);
            assert_eq!(entry.proxy_isn, cookie, "the cookie, for lb flows");
        }

        // 4. Server → client data: SEQ and TSval shifted, window rescaled from the
        // server's shift 9 to the 7 the client was told.
        let data = Segment {
            seq: 5001,
            ack: 1101,
            flags: F_ACK | F_PSH,
            window: 1000,
            options: [vec![1, 1], opt_ts(800, 1020)].concat(),
            payload: b"hello from the server".to_vec(),
            ..server_synack.clone()
        };
        let (verdict, out) = h.run(&data.bytes());
        assert_eq!(verdict, XDP_REDIRECT);
        let to_client = Segment {
            src_mac: LB_EXT_MAC,
            dst_mac: CLIENT_MAC,
            src: VIP,
            dst: CLIENT,
            ttl: 63,
            sport: 443,
            dport: 40000,
            seq: cookie.wrapping_add(1),
            window: 4000,
            options: [vec![1, 1], opt_ts(800u32.wrapping_add(ts_delta), 1020)].concat(),
            ..data.clone()
        };
        // The program keeps the server's IP id/flags (only its own segments use id 0 +
        // DF), so the TCP bytes are compared.
        assert_eq!(
            ParsedTcp::of(&out).bytes,
            ParsedTcp::of(&to_client.bytes()).bytes,
            "server data exact TCP bytes"
        );
        assert_checksums_valid(&out);

        // 5. Client → server: ACK, both SACK blocks and TSecr shifted back.
        let sack = |a: u32, b: u32| [&a.to_be_bytes()[..], &b.to_be_bytes()[..]].concat();
        let client_data = Segment {
            payload: b"GET / HTTP/1.0\r\n\r\n".to_vec(),
            flags: F_ACK | F_PSH,
            ack: cookie.wrapping_add(101),
            options: [
                vec![1, 1],
                opt_ts(1030, our_tsval.wrapping_add(50)),
                vec![1, 1, 5, 18],
                sack(cookie.wrapping_add(201), cookie.wrapping_add(301)),
                sack(cookie.wrapping_add(401), cookie.wrapping_add(501)),
            ]
            .concat(),
            ..client_seg(40000, 1001, 0, 0, vec![])
        };
        let (verdict, out) = h.run(&client_data.bytes());
        assert_eq!(verdict, XDP_REDIRECT);
        let to_server = Segment {
            src_mac: LB_INT_MAC,
            dst_mac: SERVER1_MAC,
            src: SNAT,
            dst: SERVER1,
            ttl: 63,
            sport: port,
            dport: 8443,
            ack: 5101,
            options: [
                vec![1, 1],
                opt_ts(1030, 827),
                vec![1, 1, 5, 18],
                sack(5201, 5301),
                sack(5401, 5501),
            ]
            .concat(),
            ..client_data.clone()
        };
        assert_eq!(
            ParsedTcp::of(&out).bytes,
            ParsedTcp::of(&to_server.bytes()).bytes,
            "client data exact TCP bytes"
        );
        assert_checksums_valid(&out);

        // An odd-aligned SACK block (one NOP before it) is patched just as well.
        let odd_options =
            |left: u32, right: u32| [vec![1, 5, 10], sack(left, right), vec![0]].concat();
        let odd = Segment {
            options: odd_options(cookie.wrapping_add(201), cookie.wrapping_add(301)),
            ..client_data.clone()
        };
        let (_, out) = h.run(&odd.bytes());
        let expected = Segment {
            options: odd_options(5201, 5301),
            ..to_server.clone()
        }
        .bytes();
        assert_eq!(
            ParsedTcp::of(&out).bytes,
            ParsedTcp::of(&expected).bytes,
            "odd-aligned SACK exact TCP bytes"
        );
        assert_checksums_valid(&out);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn syn_proxy_ack_without_a_valid_cookie_is_dropped_and_leaves_no_entry() {
    with_harness(|h| {
        // No SYN was ever answered for this tuple: any ACK number is a wrong cookie.
        let ack = client_seg(40001, 1001, 0x1234_5678, F_ACK, vec![]);
        let (verdict, _) = h.run(&ack.bytes());
        assert_eq!(verdict, XDP_DROP);
        // A real cookie for another tuple (port 40002) is wrong for this one, and a
        // right cookie with the wrong client sequence number is wrong too.
        let (cookie, _, _) = proxy_syn(h, 40002, vec![]);
        let stolen = client_seg(40001, 1001, cookie.wrapping_add(1), F_ACK, vec![]);
        assert_eq!(h.run(&stolen.bytes()).0, XDP_DROP);
        let bad_seq = client_seg(40002, 5001, cookie.wrapping_add(1), F_ACK, vec![]);
        assert_eq!(h.run(&bad_seq.bytes()).0, XDP_DROP);
        assert_eq!(h.counter(counters::SYNPROXY_COOKIE_INVALID), 3);
        assert_eq!(h.counter(counters::SYNPROXY_COOKIE_VALID), 0);
        // RST, FIN and SYN+FIN without a flow: dropped, nothing answered or stored.
        for flags in [F_RST, F_FIN | F_ACK, F_SYN | F_FIN] {
            let seg = client_seg(40003, 1000, 0, flags, vec![]);
            assert_eq!(h.run(&seg.bytes()).0, XDP_DROP, "flags {flags:#x}");
        }
        assert!(h.flows().is_empty());
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn syn_proxy_odd_syn_options() {
    with_harness(|h| {
        // No options at all: the SYN-ACK carries only the MSS, and the server side is
        // opened with the RFC 1122 default MSS and no other option.
        let (cookie, tsval, options) = proxy_syn(h, 40010, vec![]);
        assert_eq!(tsval, 0);
        assert_eq!(options, opt_mss(1460));
        let ack = client_seg(40010, 1001, cookie.wrapping_add(1), F_ACK, vec![]);
        let (verdict, out) = h.run(&ack.bytes());
        assert_eq!(verdict, XDP_REDIRECT);
        let server_syn = ParsedTcp::of(&out);
        assert_eq!(server_syn.options, opt_mss(536), "server SYN options");
        assert!(server_syn.payload.is_empty());
        assert_eq!(server_syn.flags, F_SYN);
        assert_checksums_valid(&out);

        // A huge window shift and an unknown option: the shift is clamped to 14 and
        // the unknown option skipped.
        let options = [
            opt_mss(1460),
            vec![99, 4, 0xab, 0xcd],
            vec![1, 1],
            opt_ts(5, 0),
            opt_wscale(200),
        ]
        .concat();
        let (cookie, tsval, synack_options) = proxy_syn(h, 40011, options);
        assert_eq!(tsval & 0xf, 14, "window shift clamped");
        assert_eq!(tsval & 0x10, 0, "no SACK offered");
        assert_eq!(
            synack_options,
            [opt_mss(1460), vec![1, 1], opt_ts(tsval, 5), opt_wscale(7)].concat()
        );
        let ack = client_seg(
            40011,
            1001,
            cookie.wrapping_add(1),
            F_ACK,
            [vec![1, 1], opt_ts(6, tsval)].concat(),
        );
        let (verdict, out) = h.run(&ack.bytes());
        assert_eq!(verdict, XDP_REDIRECT);
        let server_syn = ParsedTcp::of(&out);
        assert_eq!(
            server_syn.options,
            [opt_mss(1460), vec![1, 1], opt_ts(6, 0), opt_wscale(14)].concat()
        );
        assert!(server_syn.payload.is_empty());
        assert_checksums_valid(&out);
        assert_eq!(h.counter(counters::SYNPROXY_SYNACK_SENT), 2);
        assert_eq!(h.flows().len(), 4);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn syn_proxy_server_refusal_resets_the_client_and_frees_the_pair() {
    with_harness(|h| {
        let (cookie, port) = proxy_open(h, 40020);
        // Data from the client before the server is up: dropped for retransmission.
        let early = Segment {
            payload: b"early".to_vec(),
            ..client_seg(40020, 1001, cookie.wrapping_add(1), F_ACK | F_PSH, vec![])
        };
        assert_eq!(h.run(&early.bytes()).0, XDP_DROP);
        assert_eq!(h.counter(counters::SYNPROXY_CLIENT_EARLY), 1);
        // The server refuses: the client gets an RST in its own sequence space.
        let rst = Segment {
            src_mac: SERVER1_MAC,
            dst_mac: LB_INT_MAC,
            src: SERVER1,
            dst: SNAT,
            ttl: 64,
            sport: 8443,
            dport: port,
            seq: 0,
            ack: 1001,
            flags: F_RST | F_ACK,
            window: 0,
            options: vec![],
            payload: vec![],
        };
        let (verdict, out) = h.run(&rst.bytes());
        assert_eq!(verdict, XDP_REDIRECT);
        let expected = Segment {
            src_mac: LB_EXT_MAC,
            dst_mac: CLIENT_MAC,
            src: VIP,
            dst: CLIENT,
            ttl: 63,
            sport: 443,
            dport: 40020,
            seq: cookie.wrapping_add(1),
            ..rst.clone()
        }
        .bytes();
        assert_eq!(
            ParsedTcp::of(&out).bytes,
            ParsedTcp::of(&expected).bytes,
            "RST to the client"
        );
        assert_checksums_valid(&out);
        assert!(h.flows().is_empty(), "pair removed");
        assert_eq!(h.counter(counters::SYNPROXY_SERVER_FAILED), 1);

        // A client RST during the handshake also frees the pair.
        let (cookie, _) = proxy_open(h, 40021);
        let rst = client_seg(40021, 1001, cookie.wrapping_add(1), F_RST | F_ACK, vec![]);
        assert_eq!(h.run(&rst.bytes()).0, XDP_DROP);
        assert!(h.flows().is_empty(), "pair removed");
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn syn_proxy_silent_server_times_out_with_an_rst_to_the_client() {
    with_harness(|h| {
        let (cookie, _) = proxy_open(h, 40030);
        assert_eq!(h.flows().len(), 2);
        std::thread::sleep(std::time::Duration::from_millis(3200));
        // The client's retransmission after the server's deadline is answered with RST.
        let data = Segment {
            payload: b"GET /".to_vec(),
            ..client_seg(40030, 1001, cookie.wrapping_add(1), F_ACK | F_PSH, vec![])
        };
        let (verdict, out) = h.run(&data.bytes());
        assert_eq!(verdict, XDP_TX);
        let expected = reset_to_client(443, 40030, cookie.wrapping_add(1), 0, F_RST);
        assert_eq!(out, expected, "RST exact bytes");
        assert!(h.flows().is_empty(), "pair removed");
        assert_eq!(h.counter(counters::SYNPROXY_SERVER_FAILED), 1);
    });
}

/// Moves the timestamps of `key`'s entry `ns` into the past.
fn age_flow(h: &mut Harness, key: FlowKey, ns: u64) {
    let mut entry = h.flow(&key).unwrap();
    entry.created_ns -= ns;
    entry.last_seen_ns -= ns;
    h.set_flow(key, entry).unwrap();
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn syn_proxy_retransmits_a_lost_server_syn_then_times_out() {
    with_harness(|h| {
        let (cookie, our_tsval, _) = proxy_syn(h, 40040, linux_syn_options(1000, 0, 7));
        let ack = client_seg(
            40040,
            1001,
            cookie.wrapping_add(1),
            F_ACK,
            [vec![1, 1], opt_ts(1010, our_tsval)].concat(),
        );
        let (verdict, first_syn) = h.run(&ack.bytes());
        assert_eq!(verdict, XDP_REDIRECT, "SYN toward the server");
        let parsed = ParsedTcp::of(&first_syn);
        assert_eq!(
            (parsed.flags, parsed.seq),
            (F_SYN, 1000),
            "the client's ISN"
        );
        let key = flow_key(CLIENT, 40040, VIP, 443, IPPROTO_TCP);
        assert_eq!(h.flows().len(), 2);

        // Within 1 s of the SYN: the client's retransmission is dropped.
        assert_eq!(h.run(&ack.bytes()).0, XDP_DROP);
        assert_eq!(h.counter(counters::SYNPROXY_CLIENT_EARLY), 1);
        assert_eq!(h.counter(counters::SYNPROXY_SYN_RETRANSMITTED), 0);

        // 1.5 s later, still no SYN-ACK: the client's next segment (here with data,
        // which is dropped) becomes the same SYN again.
        age_flow(h, key, 1_500_000_000);
        let data = Segment {
            payload: b"GET /".to_vec(),
            flags: F_ACK | F_PSH,
            ..ack.clone()
        };
        let (verdict, out) = h.run(&data.bytes());
        assert_eq!(verdict, XDP_REDIRECT, "SYN sent again");
        assert_eq!(out, first_syn, "the same SYN bytes: seq, ports, options");
        assert_checksums_valid(&out);
        assert_eq!(h.counter(counters::SYNPROXY_SYN_RETRANSMITTED), 1);
        assert_eq!(h.counter(counters::NEW_FLOWS), 1, "no new pair");
        assert_eq!(h.flows().len(), 2);
        assert_eq!(h.flow(&key).unwrap().state, lb_common::FLOW_STATE_SYNPROXY);

        // The retry's time is recorded: the next segment right after is dropped.
        assert_eq!(h.run(&ack.bytes()).0, XDP_DROP);
        assert_eq!(h.counter(counters::SYNPROXY_CLIENT_EARLY), 2);
        assert_eq!(h.counter(counters::SYNPROXY_SYN_RETRANSMITTED), 1);

        // 3 s after the pair was created the server is given up: RST, pair removed.
        age_flow(h, key, 2_000_000_000);
        let (verdict, out) = h.run(&ack.bytes());
        assert_eq!(verdict, XDP_TX);
        let expected = reset_to_client(443, 40040, cookie.wrapping_add(1), 0, F_RST);
        assert_eq!(out, expected, "RST exact bytes");
        assert!(h.flows().is_empty(), "pair removed");
        assert_eq!(h.counter(counters::SYNPROXY_SERVER_FAILED), 1);
        assert_eq!(h.counter(counters::SYNPROXY_SYN_RETRANSMITTED), 1);
    });
}
