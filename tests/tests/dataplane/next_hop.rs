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

/// Points the neighbour entry of `ip` (behind `int0`) at `mac`, as a changed server
/// or an ARP update would.
fn set_neighbour(ip: Ipv4Addr, mac: [u8; 6]) {
    let mac = mac.map(|b| format!("{b:02x}")).join(":");
    let status = std::process::Command::new("ip")
        .args(["neigh", "replace", &ip.to_string(), "lladdr", &mac])
        .args(["dev", INT_IF, "nud", "permanent"])
        .status()
        .expect("run ip");
    assert!(status.success(), "ip neigh replace {ip}");
}

/// The destination MAC of a new flow's first packet from client port `sport` to the
/// web service (its one backend is server 1).
fn first_packet_dmac(h: &mut Harness, sport: u16) -> [u8; 6] {
    let (verdict, out) = h.run(&Tcp::syn(CLIENT, sport, VIP, 80).build(&[]));
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(Ipv4Addr::new(out[30], out[31], out[32], out[33]), SERVER1);
    assert_checksums_valid(&out);
    out[..6].try_into().unwrap()
}

/// New flows to a backend reuse the next hop the first one looked up (no FIB lookup per
/// new flow), for at most `LAST_SEEN_GRANULARITY_NS`: then a new flow looks it up again
/// and sees the changed neighbour, as established flows do (docs/architecture.md,
/// "Next hops").
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn new_flows_share_the_backends_next_hop_for_at_most_the_refresh_interval() {
    with_harness(|h| {
        let moved: [u8; 6] = [0x02, 0, 0, 0, 0, 0x21];
        assert_eq!(first_packet_dmac(h, 41000), SERVER1_MAC);
        set_neighbour(SERVER1, moved);
        assert_eq!(
            first_packet_dmac(h, 41001),
            SERVER1_MAC,
            "the second new flow within the interval takes the cached next hop"
        );
        std::thread::sleep(std::time::Duration::from_nanos(
            lb_common::LAST_SEEN_GRANULARITY_NS + 200_000_000,
        ));
        assert_eq!(
            first_packet_dmac(h, 41002),
            moved,
            "after the interval a new flow looks the next hop up again"
        );
        // Each flow made its two entries and nothing else changed the table.
        assert_eq!(h.flow_count(), 6);
        assert_eq!(h.counter(counters::NEW_FLOWS), 3);
    });
}

/// The cached next hop serves only the source it was looked up for: a DNAT flow to the
/// same backend (the client as source) gets a lookup of its own.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_cached_next_hop_serves_only_the_source_it_was_looked_up_for() {
    with_harness(|h| {
        // The DNAT service's backend becomes web's (same address and port: one id).
        let text = CONFIG.replace(
            "address = \"198.19.0.12\"",
            "address = \"198.19.0.11\"\nport = 8080",
        );
        h.apply_config(&text).expect("reprogram");
        let moved: [u8; 6] = [0x02, 0, 0, 0, 0, 0x22];
        // Full NAT (the SNAT address as source) fills the backend's cache.
        assert_eq!(first_packet_dmac(h, 42000), SERVER1_MAC);
        set_neighbour(SERVER1, moved);
        let (verdict, out) = h.run(&Tcp::syn(CLIENT, 42001, DNAT_VIP, 80).build(&[]));
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(Ipv4Addr::new(out[26], out[27], out[28], out[29]), CLIENT);
        assert_eq!(Ipv4Addr::new(out[30], out[31], out[32], out[33]), SERVER1);
        assert_checksums_valid(&out);
        let web = h
            .flow(&flow_key(CLIENT, 42000, VIP, 80, IPPROTO_TCP))
            .unwrap();
        let dnat = h
            .flow(&flow_key(CLIENT, 42001, DNAT_VIP, 80, IPPROTO_TCP))
            .unwrap();
        assert_eq!(
            web.backend_id, dnat.backend_id,
            "one backend, one cache slot"
        );
        assert_eq!(&out[..6], &moved, "looked up for the client as source");
    });
}

/// A first datagram too big for the egress interface goes to the kernel, as the FIB
/// lookup says (`pass_fib_failed`), also when a smaller one just cached the backend's
/// next hop: the cache keeps the interface's MTU.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_cached_next_hop_does_not_carry_a_first_packet_over_the_mtu() {
    with_harness(|h| {
        let datagram = |sport, len| {
            udp_packet(
                CLIENT_MAC,
                LB_EXT_MAC,
                CLIENT,
                sport,
                VIP,
                5353,
                64,
                &vec![0x42; len],
            )
        };
        let (verdict, out) = h.run(&datagram(43000, 64));
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(Ipv4Addr::new(out[30], out[31], out[32], out[33]), SERVER3);
        // 1,600 bytes of payload: an IPv4 packet of 1,628 bytes, over int0's 1,500.
        let (verdict, _) = h.run(&datagram(43001, 1600));
        assert_eq!(verdict, XDP_PASS, "the kernel fragments or refuses it");
        assert_eq!(h.counter(counters::PASS_FIB_FAILED), 1);
        assert_eq!(h.counter(counters::NEW_FLOWS), 2);
    });
}
