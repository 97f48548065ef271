//! The address filter (docs/architecture.md, "Address filter"): other hosts' packets
//! leave before any hash lookup with the verdict and counter they always had, and
//! nothing the balancer must see is filtered out: DNAT replies to the client's own
//! address, ICMP errors between a router and a client, a VIP a reload adds, and the
//! flows of a service a reload removes.

use super::icmp_errors::{ROUTER_INT, ROUTER_MAC, icmp_error, quote};
use super::*;

const NEW_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 13);

/// CONFIG with one more service, "late" at NEW_VIP:80 (full NAT to 198.19.0.13:8080).
fn config_with_new_vip() -> String {
    format!(
        "{CONFIG}[[service]]\nname = \"late\"\nvip = \"{NEW_VIP}\"\nport = 80\n\
         snat_ip = \"198.19.1.1\"\n[[service.backend]]\naddress = \"{SERVER3}\"\nport = 8080\n"
    )
}

/// CONFIG without the services on 198.18.1.10 (and so without its backend 198.19.0.11,
/// 198.19.0.13 and the SNAT address's only users but "unresolved").
fn config_without_web() -> String {
    r#"
name = "dptest"
[interfaces]
attach = ["ext0"]
[limits]
max_flows = 4096
max_services = 8
max_backends = 64
[[service]]
name = "web-dnat"
vip = "198.18.1.11"
port = 80
mode = "dnat"
[[service.backend]]
address = "198.19.0.12"
"#
    .to_string()
}

fn wire(addr: Ipv4Addr) -> u32 {
    lb_common::wire::addr_to_wire(addr)
}

/// Sends `packet` and checks it passed untouched as `pass_not_ours`, no flow made.
fn assert_not_ours(h: &mut Harness, packet: &[u8], name: &str) {
    let flows = h.flow_count();
    let before = h.counter(counters::PASS_NOT_OURS);
    let (verdict, out) = h.run(packet);
    assert_eq!(verdict, XDP_PASS, "{name}");
    assert_eq!(out, packet, "{name}: untouched");
    assert_eq!(h.counter(counters::PASS_NOT_OURS), before + 1, "{name}");
    assert_eq!(h.flow_count(), flows, "{name}: no flow entry");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn other_hosts_packets_pass_as_before_and_the_filter_decides_before_the_flow_table() {
    with_harness(|h| {
        let filter = h.addr_filter().unwrap();
        for addr in [VIP, DNAT_VIP, SNAT, SERVER1, SERVER2, SERVER3] {
            assert!(filter.contains(wire(addr)), "{addr} has its bit");
        }
        assert!(!filter.contains(wire(OTHER_HOST)) && !filter.contains(wire(CLIENT)));
        let syn = Tcp::syn(CLIENT, 40000, OTHER_HOST, 80).build(&[]);
        let ack = Tcp {
            syn: false,
            ack: Some(1),
            ..Tcp::syn(CLIENT, 40000, OTHER_HOST, 80)
        }
        .build(b"x");
        let udp = udp_packet(
            CLIENT_MAC, LB_EXT_MAC, CLIENT, 1000, OTHER_HOST, 53, 64, b"x",
        );
        for (name, packet) in [("SYN", &syn), ("ACK", &ack), ("UDP", &udp)] {
            assert_not_ours(h, packet, name);
        }
        assert!(h.flows().is_empty());

        // An entry keyed by two foreign addresses (which the controller never makes)
        // is never reached: the packet leaves on the filter, before FLOWS.
        open_full_nat(h);
        let key = flow_key(CLIENT, 40000, VIP, 80, IPPROTO_TCP);
        let entry = h.flow(&key).unwrap();
        let foreign = flow_key(CLIENT, 40000, OTHER_HOST, 80, IPPROTO_TCP);
        h.set_flow(foreign, entry).unwrap();
        let hits = h.counter(counters::FLOW_HITS);
        assert_not_ours(h, &ack, "ACK to another host, an entry for it in FLOWS");
        assert_eq!(h.counter(counters::FLOW_HITS), hits);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_dnat_reply_to_the_clients_own_address_is_still_translated() {
    with_harness(|h| {
        let syn = Tcp::syn(CLIENT, 41000, DNAT_VIP, 80);
        let (verdict, _) = h.run(&syn.build(&[]));
        assert_eq!(verdict, XDP_REDIRECT);
        // Neither the client nor this destination is the balancer's: the backend
        // source is what lets it through.
        assert!(!h.addr_filter().unwrap().contains(wire(CLIENT)));
        let syn_ack = Tcp {
            src_mac: SERVER2_MAC,
            dst_mac: LB_INT_MAC,
            src: SERVER2,
            dst: CLIENT,
            sport: 80,
            dport: 41000,
            ack: Some(1001),
            seq: 7000,
            ..syn
        };
        let (verdict, out) = h.run(&syn_ack.build(&[]));
        assert_eq!(verdict, XDP_REDIRECT);
        let expected = Tcp {
            src_mac: LB_EXT_MAC,
            dst_mac: CLIENT_MAC,
            src: DNAT_VIP,
            ttl: 63,
            ..syn_ack
        }
        .build(&[]);
        assert_eq!(out, expected);
        assert_eq!(h.flow_count(), 2);
        // The same backend to the client on another connection: no entry, not ours.
        let stray = Tcp {
            dport: 41001,
            ..syn_ack
        }
        .build(&[]);
        assert_not_ours(h, &stray, "backend to client without a flow");
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn an_icmp_error_from_a_router_to_a_client_about_a_flow_is_still_relayed() {
    with_harness(|h| {
        let syn = Tcp::syn(CLIENT, 41000, DNAT_VIP, 80);
        let (verdict, to_server) = h.run(&syn.build(&[]));
        assert_eq!(verdict, XDP_REDIRECT);
        let flows: Vec<_> = h.flows();
        // Host unreachable from a router on the servers' side to the client's own
        // address: both outer addresses are foreign, the quote names the flow.
        let error = icmp_error(
            ROUTER_MAC,
            LB_INT_MAC,
            ROUTER_INT,
            CLIENT,
            64,
            (3, 1, [0; 4]),
            &quote(&to_server, 28),
        );
        let filter = h.addr_filter().unwrap();
        assert!(!filter.contains(wire(ROUTER_INT)) && !filter.contains(wire(CLIENT)));
        let relayed = h.counter(counters::ICMP_RELAYED);
        let (verdict, out) = h.run(&error);
        assert_eq!(verdict, XDP_REDIRECT);
        let expected = icmp_error(
            LB_EXT_MAC,
            CLIENT_MAC,
            ROUTER_INT,
            CLIENT,
            63,
            (3, 1, [0; 4]),
            &quote(&Tcp { ttl: 63, ..syn }.build(&[]), 28),
        );
        assert_eq!(out, expected);
        assert_eq!(h.counter(counters::ICMP_RELAYED), relayed + 1);
        assert_eq!(h.flows(), flows, "flow table unchanged");
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_vip_added_by_a_reload_is_balanced_at_once() {
    with_harness(|h| {
        let syn = Tcp::syn(CLIENT, 42000, NEW_VIP, 80);
        assert!(!h.addr_filter().unwrap().contains(wire(NEW_VIP)));
        assert_not_ours(h, &syn.build(&[]), "SYN before the reload");

        h.apply_config(&config_with_new_vip()).unwrap();
        assert!(h.addr_filter().unwrap().contains(wire(NEW_VIP)));
        let (verdict, out) = h.run(&syn.build(&[]));
        assert_eq!(verdict, XDP_REDIRECT);
        let forward = h
            .flow(&flow_key(CLIENT, 42000, NEW_VIP, 80, IPPROTO_TCP))
            .expect("forward entry");
        let snat_port = u16::from_be(forward.new_src_port);
        let expected = Tcp {
            src_mac: LB_INT_MAC,
            dst_mac: SERVER3_MAC,
            src: SNAT,
            dst: SERVER3,
            ttl: 63,
            sport: snat_port,
            dport: 8080,
            ..syn
        }
        .build(&[]);
        assert_eq!(out, expected);
        assert_eq!(h.flow_count(), 2);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_removed_services_flows_keep_their_bits_until_the_collector_sees_them_gone() {
    with_harness(|h| {
        let snat_port = open_full_nat(h);
        let (verdict, _) = h.run(&server1_syn_ack(snat_port).build(&[]));
        assert_eq!(verdict, XDP_REDIRECT);
        let data = Tcp {
            syn: false,
            ack: Some(5001),
            seq: 1001,
            ..Tcp::syn(CLIENT, 40000, VIP, 80)
        };
        let reply = Tcp {
            syn: false,
            ack: Some(1001),
            seq: 5001,
            ..server1_segment(snat_port)
        };
        h.apply_config(&config_without_web()).unwrap();
        // The VIP, the SNAT address and the backend left the config; their flow lives.
        for pass in 0..3 {
            let (verdict, out) = h.run(&data.build(b"up"));
            assert_eq!(verdict, XDP_REDIRECT, "client → server after {pass} passes");
            assert_eq!(out, full_nat_to_server1(data, snat_port).build(b"up"));
            let (verdict, _) = h.run(&reply.build(b"down"));
            assert_eq!(verdict, XDP_REDIRECT, "server → client after {pass} passes");
            h.filter_pass().unwrap();
        }
        // Once the connection's entries are gone, the next passes clear the bits: a
        // new SYN to the old VIP is another host's packet again.
        for (key, _) in h.flows() {
            h.remove_flow(&key);
        }
        h.filter_pass().unwrap();
        let filter = h.addr_filter().unwrap();
        for addr in [VIP, SERVER1] {
            assert!(!filter.contains(wire(addr)), "{addr} cleared");
        }
        assert!(filter.contains(wire(DNAT_VIP)) && filter.contains(wire(SERVER2)));
        assert_not_ours(h, &Tcp::syn(CLIENT, 40001, VIP, 80).build(&[]), "old VIP");
    });
}
