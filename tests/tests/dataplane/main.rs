//! Data-plane tests: crafted packets through the real XDP program in the kernel with
//! `BPF_PROG_TEST_RUN`, exact bytes and verdict out, flow table and counters checked.
//!
//! Each test runs on its own thread inside a throw-away network namespace whose routes
//! and permanent neighbours make `bpf_fib_lookup` deterministic (the harness from
//! `lb-testbed`). Expected packets are built from scratch with etherparse, which
//! computes their checksums, so a byte-exact match also proves the program's
//! incremental checksum updates.
//!
//! One test binary with a module per behaviour (one binary keeps link time low).
//! Needs root: run with `cargo xtask test` (or `cargo test -- --ignored` as root).

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

use lb_common::{
    FLOW_DIR_CLIENT_TO_SERVER, FLOW_DIR_SERVER_TO_CLIENT, FLOW_STATE_CLOSING,
    FLOW_STATE_ESTABLISHED, FLOW_STATE_HALF_CLOSED_CLIENT, FLOW_STATE_HALF_CLOSED_SERVER,
    FLOW_STATE_SYN_ACK_SEEN, FLOW_STATE_SYN_SEEN, FLOW_STATE_UDP, FlowKey, IPPROTO_TCP,
    IPPROTO_UDP, counters,
};
use lb_testbed::harness::{
    CLIENT_MAC, EXT_IF, Harness, INT_IF, LB_EXT_MAC, LB_INT_MAC, Neighbour, XDP_DROP, XDP_PASS,
    XDP_REDIRECT, XDP_TX, harness_netns,
};
use lb_testbed::packet::{
    F_ACK, F_FIN, F_PSH, F_RST, F_SYN, ParsedTcp, Segment, Tcp, assert_checksums_valid, flow_key,
    udp_packet,
};
use lb_testbed::{Netns, SERVER_IPS};

mod addr_filter;
mod allow_list;
mod attach;
mod cannot_open;
mod checksums;
mod dnat;
mod flow_events;
mod flow_state;
mod flow_table_read;
mod fragments;
mod full_nat;
mod icmp_errors;
mod malformed;
mod next_hop;
mod not_ours;
mod one_arm;
mod pinning;
mod reload_ids;
mod reset;
mod rings;
mod snat_ips;
mod snat_ports;
mod syn_cookies;
mod syn_proxy;
mod ttl;
mod tunnel;
mod udp;
mod unknown_segment;
mod vlan;

const CLIENT: Ipv4Addr = lb_testbed::CLIENT_IP;
const VIP: Ipv4Addr = lb_testbed::VIP;
const DNAT_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 11);
const NO_NEIGH_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 12);
const SNAT: Ipv4Addr = lb_testbed::SNAT_IP;
const SERVER1: Ipv4Addr = SERVER_IPS[0];
const SERVER2: Ipv4Addr = SERVER_IPS[1];
const SERVER3: Ipv4Addr = SERVER_IPS[2];
const OTHER_HOST: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 50);

const SERVER1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
const SERVER2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x12];
const SERVER3_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x13];
const OTHER_HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x50];

const CONFIG: &str = r#"
name = "dptest"
[interfaces]
attach = ["ext0"]
[timeouts]
tcp_syn = 5
[limits]
max_flows = 4096
max_services = 8
max_backends = 64
[snat]
port_min = 20000
port_max = 20999
[[service]]
name = "web"
vip = "198.18.1.10"
port = 80
snat_ip = "198.19.1.1"
[[service.backend]]
address = "198.19.0.11"
port = 8080
[[service]]
name = "web-dnat"
vip = "198.18.1.11"
port = 80
mode = "dnat"
[[service.backend]]
address = "198.19.0.12"
[[service]]
name = "dns"
vip = "198.18.1.10"
port = 5353
protocol = "udp"
snat_ip = "198.19.1.1"
[[service.backend]]
address = "198.19.0.13"
[[service]]
name = "proxied"
vip = "198.18.1.10"
port = 443
snat_ip = "198.19.1.1"
syn_proxy = true
[[service.backend]]
address = "198.19.0.11"
port = 8443
[[service]]
name = "unresolved"
vip = "198.18.1.12"
port = 80
snat_ip = "198.19.1.1"
[[service.backend]]
address = "198.19.0.99"
"#;

/// A fresh harness namespace (`lbdp<pid>x<n>`): `ext0` 198.18.0.1/24 towards the client,
/// `int0` 198.19.0.1/24 towards the servers and one other host, all permanent
/// neighbours. Deleted on drop, passed or not.
fn test_netns() -> Netns {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "lbdp{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let neighbour = |ip, mac, dev| Neighbour { ip, mac, dev };
    harness_netns(
        &name,
        24,
        &[
            neighbour(CLIENT, CLIENT_MAC, EXT_IF),
            neighbour(SERVER1, SERVER1_MAC, INT_IF),
            neighbour(SERVER2, SERVER2_MAC, INT_IF),
            neighbour(SERVER3, SERVER3_MAC, INT_IF),
            neighbour(OTHER_HOST, OTHER_HOST_MAC, INT_IF),
        ],
    )
    .expect("create the test namespace")
}

/// Runs `test` inside a fresh namespace with the program loaded from `CONFIG`.
fn with_harness(test: impl FnOnce(&mut Harness) + Send + 'static) {
    let netns = test_netns();
    netns.enter(move || {
        let mut harness = Harness::load(CONFIG).expect("load and program the XDP program");
        test(&mut harness);
    });
}

/// Opens a full-NAT connection client:40000 → VIP:80 and returns the SNAT port.
fn open_full_nat(h: &mut Harness) -> u16 {
    let syn = Tcp::syn(CLIENT, 40000, VIP, 80);
    let (verdict, _) = h.run(&syn.build(&[]));
    assert_eq!(verdict, XDP_REDIRECT);
    let forward = h
        .flow(&flow_key(CLIENT, 40000, VIP, 80, IPPROTO_TCP))
        .unwrap();
    u16::from_be(forward.new_src_port)
}

/// `sent` as the balancer forwards it in full NAT to service "web"'s backend
/// (198.19.0.11:8080): from the SNAT address and `snat_port`, one hop later.
fn full_nat_to_server1(sent: Tcp, snat_port: u16) -> Tcp {
    Tcp {
        src_mac: LB_INT_MAC,
        dst_mac: SERVER1_MAC,
        src: SNAT,
        dst: SERVER1,
        ttl: 63,
        sport: snat_port,
        dport: 8080,
        ..sent
    }
}

/// A SYN (seq 1000, TTL 64) from service "web"'s backend 198.19.0.11:8080 to the SNAT
/// address and `snat_port`, for struct update into the server's other segments.
fn server1_segment(snat_port: u16) -> Tcp {
    Tcp {
        src_mac: SERVER1_MAC,
        dst_mac: LB_INT_MAC,
        ..Tcp::syn(SERVER1, 8080, SNAT, snat_port)
    }
}

/// Server 1's SYN+ACK (seq 5000) to the client's SYN (seq 1000), to the SNAT port.
fn server1_syn_ack(snat_port: u16) -> Tcp {
    Tcp {
        ack: Some(1001),
        seq: 5000,
        ..server1_segment(snat_port)
    }
}

/// A reset the balancer writes itself from VIP:`vip_port` to the client: TTL 64,
/// window 0, DF set and IP id 0.
fn reset_to_client(vip_port: u16, client_port: u16, seq: u32, ack: u32, flags: u8) -> Vec<u8> {
    Segment {
        src_mac: LB_EXT_MAC,
        dst_mac: CLIENT_MAC,
        src: VIP,
        dst: CLIENT,
        ttl: 64,
        sport: vip_port,
        dport: client_port,
        seq,
        ack,
        flags,
        window: 0,
        options: vec![],
        payload: vec![],
    }
    .bytes()
}
