//! Data-plane tests: crafted packets through the real XDP program in the kernel with
//! `BPF_PROG_TEST_RUN`, exact bytes and verdict out, flow table and counters checked.
//!
//! Each test runs on its own thread inside a throw-away network namespace whose routes
//! and permanent neighbour entries make `bpf_fib_lookup` deterministic. Expected
//! packets are built from scratch (etherparse computes their checksums), so a byte-exact
//! match also proves the program's incremental checksum updates.
//!
//! Needs root: run with `cargo xtask test` (or `cargo test -- --ignored` as root).

use std::{
    net::Ipv4Addr,
    path::Path,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::programs::{TestRun as _, TestRunOptions};
use etherparse::PacketBuilder;
use lb_common::{
    FLOW_DIR_CLIENT_TO_SERVER, FLOW_DIR_SERVER_TO_CLIENT, FLOW_STATE_CLOSING,
    FLOW_STATE_ESTABLISHED, FLOW_STATE_SYN_SEEN, FLOW_STATE_UDP, FlowEntry, FlowKey, IPPROTO_TCP,
    IPPROTO_UDP, counters,
};
use lb_userspace::{config::Config, dataplane::Dataplane, services::ServiceTable, sys};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
const DNAT_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 11);
const NO_NEIGH_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 12);
const SNAT: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 1);
const SERVER1: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 11);
const SERVER2: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 12);
const SERVER3: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 13);
const OTHER_HOST: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 50);

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const LB_EXT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
const LB_INT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x01];
const SERVER1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
const SERVER2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x12];
const SERVER3_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x13];

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

fn run(cmd: &str) {
    let status = Command::new("sh").arg("-c").arg(cmd).status().expect("sh");
    assert!(status.success(), "command failed: {cmd}");
}

/// A network namespace with an "external" and an "internal" interface, static
/// neighbours for the client and servers, and forwarding on. Deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "lbdp{}x{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        run(&format!("ip netns add {name}"));
        let netns = Netns { name };
        let n = &netns.name;
        for cmd in [
            format!("ip -n {n} link set lo up"),
            format!("ip -n {n} link add ext0 type veth peer name ext1"),
            format!("ip -n {n} link add int0 type veth peer name int1"),
            format!("ip -n {n} link set ext0 address 02:00:00:00:01:01"),
            format!("ip -n {n} link set int0 address 02:00:00:00:02:01"),
            format!("ip -n {n} addr add 198.18.0.1/24 dev ext0"),
            format!("ip -n {n} addr add 198.19.0.1/24 dev int0"),
            format!("ip -n {n} link set ext0 up"),
            format!("ip -n {n} link set ext1 up"),
            format!("ip -n {n} link set int0 up"),
            format!("ip -n {n} link set int1 up"),
            format!(
                "ip -n {n} neigh replace 198.18.0.2 lladdr 02:00:00:00:00:02 dev ext0 nud permanent"
            ),
            format!(
                "ip -n {n} neigh replace 198.19.0.11 lladdr 02:00:00:00:00:11 dev int0 nud permanent"
            ),
            format!(
                "ip -n {n} neigh replace 198.19.0.12 lladdr 02:00:00:00:00:12 dev int0 nud permanent"
            ),
            format!(
                "ip -n {n} neigh replace 198.19.0.13 lladdr 02:00:00:00:00:13 dev int0 nud permanent"
            ),
            format!(
                "ip -n {n} neigh replace 198.19.0.50 lladdr 02:00:00:00:00:50 dev int0 nud permanent"
            ),
            format!("ip netns exec {n} sysctl -qw net.ipv4.ip_forward=1"),
        ] {
            run(&cmd);
        }
        netns
    }

    /// Runs `f` on a thread that has entered this namespace (fib lookups of the
    /// program under test happen in the caller's namespace).
    fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            use std::os::fd::AsRawFd as _;
            // SAFETY: valid fd of a network namespace; affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The program loaded and programmed from `CONFIG`, inside a prepared namespace.
struct Harness {
    dp: Dataplane,
    _table: ServiceTable,
    ext_ifindex: u32,
    int_ifindex: u32,
}

impl Harness {
    fn new() -> Harness {
        let config = Config::parse(CONFIG, Path::new("dataplane-test.toml")).expect("config");
        let mut dp = Dataplane::load(config.limits, None).expect("load XDP program");
        let mut table = ServiceTable::default();
        table.apply(&mut dp, &config).expect("program tables");
        let ext_ifindex = sys::ifindex("ext0").unwrap();
        let int_ifindex = sys::ifindex("int0").unwrap();
        for ifindex in [ext_ifindex, int_ifindex] {
            dp.add_tx_port(ifindex).unwrap();
        }
        Harness {
            dp,
            _table: table,
            ext_ifindex,
            int_ifindex,
        }
    }

    /// One run of the program: verdict and the packet as it left.
    fn run(&mut self, packet: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; packet.len() + 512];
        let opts = TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        };
        let result = self.dp.program().unwrap().test_run(opts).expect("test_run");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    /// One run as if the packet arrived on `ifindex` (the program must be attached
    /// there, so the kernel has the receive queue the context names).
    fn run_on(&mut self, packet: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
        let mut ctx = Vec::new();
        for field in [0u32, packet.len() as u32, 0, ifindex, 0, 0] {
            ctx.extend_from_slice(&field.to_ne_bytes());
        }
        let mut out = vec![0u8; packet.len() + 512];
        let opts = TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..TestRunOptions::default()
        };
        let result = self.dp.program().unwrap().test_run(opts).expect("test_run");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    fn counter(&self, index: u32) -> u64 {
        self.dp.global_counters().unwrap()[index as usize].1
    }

    fn flows(&self) -> Vec<(FlowKey, FlowEntry)> {
        self.dp.flow_entries()
    }

    fn flow(&self, key: &FlowKey) -> Option<FlowEntry> {
        self.dp.flow(key)
    }
}

fn key(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, proto: u8) -> FlowKey {
    FlowKey {
        src_ip: u32::from(src).to_be(),
        dst_ip: u32::from(dst).to_be(),
        src_port: sport.to_be(),
        dst_port: dport.to_be(),
        proto,
        _pad: [0; 3],
    }
}

#[derive(Clone, Copy)]
struct Tcp {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    sport: u16,
    dport: u16,
    syn: bool,
    ack: Option<u32>,
    fin: bool,
    rst: bool,
    seq: u32,
}

impl Tcp {
    fn syn(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Tcp {
        Tcp {
            src_mac: CLIENT_MAC,
            dst_mac: LB_EXT_MAC,
            src,
            dst,
            ttl: 64,
            sport,
            dport,
            syn: true,
            ack: None,
            fin: false,
            rst: false,
            seq: 1000,
        }
    }

    fn build(&self, payload: &[u8]) -> Vec<u8> {
        let mut builder = PacketBuilder::ethernet2(self.src_mac, self.dst_mac)
            .ipv4(self.src.octets(), self.dst.octets(), self.ttl)
            .tcp(self.sport, self.dport, self.seq, 64240);
        if self.syn {
            builder = builder.syn();
        }
        if let Some(ack) = self.ack {
            builder = builder.ack(ack);
        }
        if self.fin {
            builder = builder.fin();
        }
        if self.rst {
            builder = builder.rst();
        }
        let mut out = Vec::new();
        builder.write(&mut out, payload).unwrap();
        out
    }
}

#[allow(clippy::too_many_arguments)]
fn udp_packet(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    ttl: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src.octets(), dst.octets(), ttl)
        .udp(sport, dport)
        .write(&mut out, payload)
        .unwrap();
    out
}

/// Independent check that the IPv4 and L4 checksums of `packet` are right.
fn assert_checksums_valid(packet: &[u8]) {
    let sliced = etherparse::SlicedPacket::from_ethernet(packet).expect("parse output");
    let Some(etherparse::NetSlice::Ipv4(ip)) = &sliced.net else {
        panic!("not IPv4");
    };
    let header = ip.header().to_header();
    assert_eq!(
        header.header_checksum,
        header.calc_header_checksum(),
        "IPv4 checksum"
    );
    match &sliced.transport {
        Some(etherparse::TransportSlice::Tcp(tcp)) => {
            let expected = tcp
                .to_header()
                .calc_checksum_ipv4(&header, tcp.payload())
                .unwrap();
            assert_eq!(tcp.checksum(), expected, "TCP checksum");
        }
        Some(etherparse::TransportSlice::Udp(udp)) => {
            let expected = udp
                .to_header()
                .calc_checksum_ipv4(&header, udp.payload())
                .unwrap();
            assert_eq!(udp.checksum(), expected, "UDP checksum");
        }
        _ => panic!("no TCP/UDP"),
    }
}

fn with_harness(test: impl FnOnce(&mut Harness) + Send + 'static) {
    let netns = Netns::new();
    netns.enter(move || {
        let mut harness = Harness::new();
        test(&mut harness);
    });
}

/// Opens a full-NAT connection client:40000 → VIP:80 and returns the SNAT port.
fn open_full_nat(h: &mut Harness) -> u16 {
    let syn = Tcp::syn(CLIENT, 40000, VIP, 80);
    let (verdict, _) = h.run(&syn.build(&[]));
    assert_eq!(verdict, XDP_REDIRECT);
    let forward = h.flow(&key(CLIENT, 40000, VIP, 80, IPPROTO_TCP)).unwrap();
    u16::from_be(forward.new_src_port)
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn tcp_syn_to_full_nat_vip_is_rewritten_and_creates_both_entries() {
    with_harness(|h| {
        let syn = Tcp::syn(CLIENT, 40000, VIP, 80);
        let (verdict, out) = h.run(&syn.build(&[]));
        assert_eq!(
            verdict, XDP_REDIRECT,
            "redirected to the internal interface"
        );

        let forward = h
            .flow(&key(CLIENT, 40000, VIP, 80, IPPROTO_TCP))
            .expect("forward entry");
        let port = u16::from_be(forward.new_src_port);
        assert!(
            (20000..=20999).contains(&port),
            "SNAT port {port} in the configured range"
        );
        assert_eq!(forward.direction, FLOW_DIR_CLIENT_TO_SERVER);
        assert_eq!(forward.state, FLOW_STATE_SYN_SEEN);
        assert_eq!(forward.new_src_ip, u32::from(SNAT).to_be());
        assert_eq!(forward.new_dst_ip, u32::from(SERVER1).to_be());
        assert_eq!(u16::from_be(forward.new_dst_port), 8080);

        let reverse = h
            .flow(&key(SERVER1, 8080, SNAT, port, IPPROTO_TCP))
            .expect("reverse entry");
        assert_eq!(reverse.direction, FLOW_DIR_SERVER_TO_CLIENT);
        assert_eq!(reverse.new_src_ip, u32::from(VIP).to_be());
        assert_eq!(reverse.new_dst_ip, u32::from(CLIENT).to_be());
        assert_eq!(u16::from_be(reverse.new_src_port), 80);
        assert_eq!(u16::from_be(reverse.new_dst_port), 40000);
        assert_eq!(h.flows().len(), 2);

        let expected = Tcp {
            src_mac: LB_INT_MAC,
            dst_mac: SERVER1_MAC,
            src: SNAT,
            dst: SERVER1,
            ttl: 63,
            sport: port,
            dport: 8080,
            ..syn
        }
        .build(&[]);
        assert_eq!(out, expected, "exact bytes out");
        assert_checksums_valid(&out);
        assert_eq!(h.counter(counters::NEW_FLOWS), 1);
        assert_eq!(h.counter(counters::REDIRECT), 1);
        let _ = h.int_ifindex;
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn tcp_syn_to_dnat_vip_keeps_the_client_address() {
    with_harness(|h| {
        let syn = Tcp::syn(CLIENT, 41000, DNAT_VIP, 80);
        let (verdict, out) = h.run(&syn.build(b""));
        assert_eq!(verdict, XDP_REDIRECT);
        let expected = Tcp {
            src_mac: LB_INT_MAC,
            dst_mac: SERVER2_MAC,
            dst: SERVER2,
            ttl: 63,
            ..syn
        }
        .build(&[]);
        assert_eq!(out, expected);
        assert_checksums_valid(&out);
        let reverse = h
            .flow(&key(SERVER2, 80, CLIENT, 41000, IPPROTO_TCP))
            .expect("reverse entry keyed on the client address");
        assert_eq!(reverse.new_src_ip, u32::from(DNAT_VIP).to_be());

        // The server's SYN-ACK goes back with the VIP as source.
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
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn server_reply_is_rewritten_back_to_the_vip() {
    with_harness(|h| {
        let port = open_full_nat(h);
        let syn_ack = Tcp {
            src_mac: SERVER1_MAC,
            dst_mac: LB_INT_MAC,
            src: SERVER1,
            dst: SNAT,
            ttl: 64,
            sport: 8080,
            dport: port,
            syn: true,
            ack: Some(1001),
            fin: false,
            rst: false,
            seq: 5000,
        };
        let (verdict, out) = h.run(&syn_ack.build(&[]));
        assert_eq!(
            verdict, XDP_REDIRECT,
            "redirected to the external interface"
        );
        let expected = Tcp {
            src_mac: LB_EXT_MAC,
            dst_mac: CLIENT_MAC,
            src: VIP,
            dst: CLIENT,
            ttl: 63,
            sport: 80,
            dport: 40000,
            ..syn_ack
        }
        .build(&[]);
        assert_eq!(out, expected);
        assert_checksums_valid(&out);
        // SYN-ACK from the server establishes both directions.
        let forward = h.flow(&key(CLIENT, 40000, VIP, 80, IPPROTO_TCP)).unwrap();
        let reverse = h
            .flow(&key(SERVER1, 8080, SNAT, port, IPPROTO_TCP))
            .unwrap();
        assert_eq!(forward.state, FLOW_STATE_ESTABLISHED);
        assert_eq!(reverse.state, FLOW_STATE_ESTABLISHED);
        let _ = h.ext_ifindex;
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn established_flow_data_is_forwarded_by_the_flow_entry() {
    with_harness(|h| {
        let port = open_full_nat(h);
        let data = Tcp {
            syn: false,
            ack: Some(5001),
            seq: 1001,
            ..Tcp::syn(CLIENT, 40000, VIP, 80)
        };
        let payload = b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n";
        let (verdict, out) = h.run(&data.build(payload));
        assert_eq!(verdict, XDP_REDIRECT);
        let expected = Tcp {
            src_mac: LB_INT_MAC,
            dst_mac: SERVER1_MAC,
            src: SNAT,
            dst: SERVER1,
            ttl: 63,
            sport: port,
            dport: 8080,
            ..data
        }
        .build(payload);
        assert_eq!(out, expected);
        assert_checksums_valid(&out);
        assert_eq!(h.counter(counters::FLOW_HITS), 1);
        assert_eq!(h.counter(counters::NEW_FLOWS), 1, "no second flow");
        assert_eq!(h.flows().len(), 2);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn udp_datagram_both_ways() {
    with_harness(|h| {
        let request = udp_packet(
            CLIENT_MAC, LB_EXT_MAC, CLIENT, 50000, VIP, 5353, 64, b"query",
        );
        let (verdict, out) = h.run(&request);
        assert_eq!(verdict, XDP_REDIRECT);
        let forward = h.flow(&key(CLIENT, 50000, VIP, 5353, IPPROTO_UDP)).unwrap();
        assert_eq!(forward.state, FLOW_STATE_UDP);
        let port = u16::from_be(forward.new_src_port);
        let expected = udp_packet(
            LB_INT_MAC,
            SERVER3_MAC,
            SNAT,
            port,
            SERVER3,
            5353,
            63,
            b"query",
        );
        assert_eq!(out, expected);
        assert_checksums_valid(&out);

        let reply = udp_packet(
            SERVER3_MAC,
            LB_INT_MAC,
            SERVER3,
            5353,
            SNAT,
            port,
            64,
            b"answer!",
        );
        let (verdict, out) = h.run(&reply);
        assert_eq!(verdict, XDP_REDIRECT);
        let expected = udp_packet(
            LB_EXT_MAC, CLIENT_MAC, VIP, 5353, CLIENT, 50000, 63, b"answer!",
        );
        assert_eq!(out, expected);
        assert_checksums_valid(&out);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn udp_without_checksum_stays_without_checksum() {
    with_harness(|h| {
        let mut request = udp_packet(CLIENT_MAC, LB_EXT_MAC, CLIENT, 50001, VIP, 5353, 64, b"q");
        request[14 + 20 + 6] = 0;
        request[14 + 20 + 7] = 0;
        let (verdict, out) = h.run(&request);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(&out[14 + 20 + 6..14 + 20 + 8], &[0, 0]);
    });
}

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

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn tcp_without_syn_and_without_flow_is_dropped() {
    with_harness(|h| {
        let ack = Tcp {
            syn: false,
            ack: Some(1),
            ..Tcp::syn(CLIENT, 40000, VIP, 80)
        };
        let (verdict, _) = h.run(&ack.build(&[]));
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(h.counter(counters::DROP_NO_FLOW), 1);
        assert!(h.flows().is_empty());
    });
}

/// Each malformed packet: its documented verdict, its counter, and no flow entry.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn malformed_packets_get_documented_verdicts() {
    with_harness(|h| {
        let syn = Tcp::syn(CLIENT, 40000, VIP, 80).build(&[]);
        let udp = udp_packet(CLIENT_MAC, LB_EXT_MAC, CLIENT, 50000, VIP, 5353, 64, b"q");
        let with = |base: &[u8], edit: &dyn Fn(&mut Vec<u8>)| {
            let mut p = base.to_vec();
            edit(&mut p);
            p
        };
        let fix_ip_checksum = |p: &mut Vec<u8>| {
            p[24] = 0;
            p[25] = 0;
            let mut sum = 0u32;
            for i in (14..34).step_by(2) {
                sum += u32::from(u16::from_be_bytes([p[i], p[i + 1]]));
            }
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            let check = !(sum as u16);
            p[24..26].copy_from_slice(&check.to_be_bytes());
        };
        let set_tot_len = |p: &mut Vec<u8>, len: usize| {
            p[16..18].copy_from_slice(&(len as u16).to_be_bytes());
        };
        let cases: Vec<(&str, Vec<u8>, u32, u32)> = vec![
            (
                "truncated IPv4 header",
                syn[..14 + 12].to_vec(),
                XDP_DROP,
                counters::DROP_IP_TRUNCATED,
            ),
            (
                "IHL < 5",
                with(&syn, &|p| {
                    p[14] = 0x44;
                    fix_ip_checksum(p);
                }),
                XDP_DROP,
                counters::DROP_IP_BAD_IHL,
            ),
            (
                "total length beyond the frame",
                with(&syn, &|p| {
                    set_tot_len(p, 200);
                    fix_ip_checksum(p);
                }),
                XDP_DROP,
                counters::DROP_IP_BAD_LENGTH,
            ),
            (
                "IP options",
                with(&syn, &|p| {
                    // Four bytes of NOP options after the base header.
                    p.splice(34..34, [1u8, 1, 1, 1]);
                    p[14] = 0x46;
                    let len = p.len() - 14;
                    set_tot_len(p, len);
                    fix_ip_checksum(p);
                }),
                XDP_DROP,
                counters::DROP_IP_OPTIONS,
            ),
            (
                "fragment",
                with(&syn, &|p| {
                    p[20] = 0x20; // more fragments
                    p[21] = 0;
                    fix_ip_checksum(p);
                }),
                XDP_DROP,
                counters::DROP_IP_FRAGMENT,
            ),
            (
                "truncated TCP header",
                with(&syn, &|p| {
                    p.truncate(34 + 12);
                    set_tot_len(p, 20 + 12);
                    fix_ip_checksum(p);
                }),
                XDP_DROP,
                counters::DROP_TCP_TRUNCATED,
            ),
            (
                "TCP data offset < 5",
                with(&syn, &|p| p[34 + 12] = 0x40),
                XDP_DROP,
                counters::DROP_TCP_BAD_DOFF,
            ),
            (
                "TCP data offset beyond the packet",
                with(&syn, &|p| p[34 + 12] = 0xf0),
                XDP_DROP,
                counters::DROP_TCP_BAD_DOFF,
            ),
            (
                "truncated UDP header",
                with(&udp, &|p| {
                    p.truncate(34 + 4);
                    set_tot_len(p, 20 + 4);
                    fix_ip_checksum(p);
                }),
                XDP_DROP,
                counters::DROP_UDP_TRUNCATED,
            ),
        ];
        for (name, packet, verdict, counter) in cases {
            let before = h.counter(counter);
            let (got, _) = h.run(&packet);
            assert_eq!(got, verdict, "{name}: verdict");
            assert_eq!(h.counter(counter), before + 1, "{name}: counter");
            assert!(h.flows().is_empty(), "{name}: no flow entry");
        }
        assert_eq!(h.counter(counters::NEW_FLOWS), 0);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn malformed_packets_for_other_hosts_pass() {
    with_harness(|h| {
        let mut options = Tcp::syn(CLIENT, 40000, OTHER_HOST, 80).build(&[]);
        options.splice(34..34, [1u8, 1, 1, 1]);
        options[14] = 0x46;
        let len = (options.len() - 14) as u16;
        options[16..18].copy_from_slice(&len.to_be_bytes());
        let (verdict, out) = h.run(&options);
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(out, options);
        assert_eq!(h.counter(counters::DROP_IP_OPTIONS), 0);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn frame_shorter_than_ethernet_never_reaches_a_verdict_that_creates_state() {
    with_harness(|h| {
        // The kernel refuses to run XDP on less than an Ethernet header (here: 10 bytes
        // behind 12 bytes of metadata, the only way to ask); drivers never deliver such
        // frames either. The program still checks (the verifier insists) and would drop
        // and count DROP_SHORT_FRAME.
        let mut input = vec![0u8; 12];
        input.extend_from_slice(&[0xab; 10]);
        let mut ctx = Vec::new();
        for field in [12u32, input.len() as u32, 0, 0, 0, 0] {
            ctx.extend_from_slice(&field.to_ne_bytes());
        }
        let mut out = vec![0u8; 64];
        let opts = TestRunOptions {
            data_in: Some(&input),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..TestRunOptions::default()
        };
        let refused = h.dp.program().unwrap().test_run(opts);
        assert!(refused.is_err(), "the kernel runs XDP on a 10-byte frame");

        // The shortest frame that does arrive: a bare Ethernet header.
        let mut bare_ipv4 = CLIENT_MAC.to_vec();
        bare_ipv4.extend_from_slice(&LB_EXT_MAC);
        bare_ipv4.extend_from_slice(&[0x08, 0x00]);
        let (verdict, _) = h.run(&bare_ipv4);
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(h.counter(counters::DROP_IP_TRUNCATED), 1);
        let mut bare_other = bare_ipv4.clone();
        bare_other[12..14].copy_from_slice(&[0x88, 0xb5]);
        let (verdict, out) = h.run(&bare_other);
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(out, bare_other);
        assert_eq!(h.counter(counters::DROP_SHORT_FRAME), 0);
        assert!(h.flows().is_empty());
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn fin_closes_and_a_new_syn_replaces_the_flow() {
    with_harness(|h| {
        let first_port = open_full_nat(h);
        let fin = Tcp {
            syn: false,
            fin: true,
            ack: Some(1),
            ..Tcp::syn(CLIENT, 40000, VIP, 80)
        };
        let (verdict, _) = h.run(&fin.build(&[]));
        assert_eq!(verdict, XDP_REDIRECT);
        let forward = h.flow(&key(CLIENT, 40000, VIP, 80, IPPROTO_TCP)).unwrap();
        let reverse = h
            .flow(&key(SERVER1, 8080, SNAT, first_port, IPPROTO_TCP))
            .unwrap();
        assert_eq!(forward.state, FLOW_STATE_CLOSING);
        assert_eq!(reverse.state, FLOW_STATE_CLOSING, "mirrored to the peer");

        // The client reuses its port for a new connection.
        open_full_nat(h);
        assert_eq!(h.counter(counters::FLOW_REPLACED), 1);
        let forward = h.flow(&key(CLIENT, 40000, VIP, 80, IPPROTO_TCP)).unwrap();
        assert_eq!(forward.state, FLOW_STATE_SYN_SEEN);
        assert_eq!(h.flows().len(), 2, "the old pair is gone");
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn rst_from_the_server_closes_the_flow() {
    with_harness(|h| {
        let port = open_full_nat(h);
        let rst = Tcp {
            src_mac: SERVER1_MAC,
            dst_mac: LB_INT_MAC,
            src: SERVER1,
            dst: SNAT,
            ttl: 64,
            sport: 8080,
            dport: port,
            syn: false,
            ack: Some(1001),
            fin: false,
            rst: true,
            seq: 0,
        };
        let (verdict, _) = h.run(&rst.build(&[]));
        assert_eq!(verdict, XDP_REDIRECT);
        let forward = h.flow(&key(CLIENT, 40000, VIP, 80, IPPROTO_TCP)).unwrap();
        assert_eq!(forward.state, FLOW_STATE_CLOSING);
    });
}

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
            .flow(&key(CLIENT, 40000, NO_NEIGH_VIP, 80, IPPROTO_TCP))
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

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn expiring_ttl_is_dropped() {
    with_harness(|h| {
        let syn = Tcp {
            ttl: 1,
            ..Tcp::syn(CLIENT, 40000, VIP, 80)
        };
        let (verdict, _) = h.run(&syn.build(&[]));
        assert_eq!(verdict, XDP_DROP);
        assert_eq!(h.counter(counters::DROP_TTL_EXPIRED), 1);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn snat_ports_never_collide() {
    with_harness(|h| {
        let mut ports = std::collections::HashSet::new();
        for client_port in 30000..30200u16 {
            let (verdict, _) = h.run(&Tcp::syn(CLIENT, client_port, VIP, 80).build(&[]));
            assert_eq!(verdict, XDP_REDIRECT);
            let forward = h
                .flow(&key(CLIENT, client_port, VIP, 80, IPPROTO_TCP))
                .unwrap();
            assert!(ports.insert(forward.new_src_port), "SNAT port reused");
        }
        assert_eq!(h.flows().len(), 400);
    });
}

/// One-arm: the client and the servers sit behind the same interface, so the
/// rewritten packet leaves where it came in, with XDP_TX.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn one_arm_sends_back_out_of_the_same_interface() {
    with_harness(|h| {
        h.dp.attach("int0", Some(lb_userspace::domain::AttachedMode::Native))
            .expect("attach to int0");
        let local_client = Ipv4Addr::new(198, 19, 0, 50);
        let local_client_mac = [0x02, 0, 0, 0, 0, 0x50];
        let syn = Tcp {
            src_mac: local_client_mac,
            dst_mac: LB_INT_MAC,
            ..Tcp::syn(local_client, 42000, VIP, 80)
        };
        let int = h.int_ifindex;
        let (verdict, out) = h.run_on(&syn.build(&[]), int);
        // Back out of int0 by a devmap redirect to int0 itself, not XDP_TX.
        assert_eq!(verdict, XDP_REDIRECT);
        let forward = h
            .flow(&key(local_client, 42000, VIP, 80, IPPROTO_TCP))
            .unwrap();
        let port = u16::from_be(forward.new_src_port);
        let expected = Tcp {
            src_mac: LB_INT_MAC,
            dst_mac: SERVER1_MAC,
            src: SNAT,
            dst: SERVER1,
            ttl: 63,
            sport: port,
            dport: 8080,
            ..syn
        }
        .build(&[]);
        assert_eq!(out, expected);

        let syn_ack = Tcp {
            src_mac: SERVER1_MAC,
            dst_mac: LB_INT_MAC,
            src: SERVER1,
            dst: SNAT,
            sport: 8080,
            dport: port,
            ack: Some(1001),
            seq: 9000,
            ..syn
        };
        let (verdict, out) = h.run_on(&syn_ack.build(&[]), int);
        assert_eq!(verdict, XDP_REDIRECT);
        let expected = Tcp {
            src_mac: LB_INT_MAC,
            dst_mac: local_client_mac,
            src: VIP,
            dst: local_client,
            ttl: 63,
            sport: 80,
            dport: 42000,
            ..syn_ack
        }
        .build(&[]);
        assert_eq!(out, expected);
        assert_checksums_valid(&out);
        assert_eq!(h.counter(counters::TX), 2);
        assert_eq!(
            h.counter(counters::REDIRECT),
            0,
            "`tx` counts the one-arm case"
        );
        h.dp.detach_all();
    });
}

/// An interface is a redirect target from the moment the program runs on it, and a
/// failed attach leaves no redirect target behind.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn attach_registers_the_redirect_target_and_a_failed_attach_leaves_none() {
    use lb_userspace::domain::AttachedMode;
    with_harness(|h| {
        let lo = sys::ifindex("lo").unwrap();
        // Loopback has no driver XDP hook: the forced native attach fails.
        assert!(h.dp.attach("lo", Some(AttachedMode::Native)).is_err());
        assert!(h.dp.tx_port(lo).is_none(), "no entry after a failure");
        assert!(h.dp.attached().is_empty());

        assert_eq!(
            h.dp.attach("lo", Some(AttachedMode::Generic)).unwrap(),
            AttachedMode::Generic
        );
        assert_eq!(h.dp.tx_port(lo), Some(lo));
        h.dp.detach_all();
        assert!(h.dp.tx_port(lo).is_none(), "removed on detach");
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn syn_from_outside_the_allow_list_is_answered_with_a_rst() {
    with_harness(|h| {
        let config = CONFIG.replacen(
            "name = \"web\"\n",
            "name = \"web\"\nallow = [\"10.0.0.0/8\", \"198.18.0.3/32\"]\ndeny = \"reset\"\n",
            1,
        );
        let config = Config::parse(&config, Path::new("allow.toml")).unwrap();
        h._table.apply(&mut h.dp, &config).unwrap();
        let mut syn = Tcp::syn(CLIENT, 40000, VIP, 80);
        syn.seq = 0xffff_ffff;
        // Outside an attached interface the devmap redirect back out of the ingress
        // interface cannot be taken and the program falls back to XDP_TX.
        let payload = b"data in the SYN is cut";
        let (verdict, out) = h.run(&syn.build(payload));
        assert_eq!(verdict, XDP_TX);
        let mut expected = Vec::new();
        PacketBuilder::ethernet2(LB_EXT_MAC, CLIENT_MAC)
            .ipv4(VIP.octets(), CLIENT.octets(), 64)
            .tcp(80, 40000, 0, 0)
            .rst()
            // RFC 793: a segment without ACK is acknowledged, SYN and payload counted.
            .ack(syn.seq.wrapping_add(1 + payload.len() as u32))
            .write(&mut expected, &[])
            .unwrap();
        // DF set, as the program writes it; etherparse leaves it clear.
        expected[20] = 0x40;
        let ip = etherparse::Ipv4HeaderSlice::from_slice(&expected[14..]).unwrap();
        let check = ip.to_header().calc_header_checksum();
        expected[24..26].copy_from_slice(&check.to_be_bytes());
        assert_eq!(out, expected, "exact bytes out");
        assert_checksums_valid(&out);
        assert_eq!(h.counter(counters::TX_RST_NOT_ELIGIBLE), 1);
        assert!(h.flows().is_empty(), "a refused client leaves no flow");
        assert_eq!(h.dp.service_stats(0).unwrap().denied, 1);

        // A /32 inside the list is admitted; UDP from outside is dropped.
        let (verdict, _) =
            h.run(&Tcp::syn(Ipv4Addr::new(198, 18, 0, 3), 40001, VIP, 80).build(&[]));
        assert_eq!(verdict, XDP_REDIRECT);
    });
}

// ---------------------------------------------------------------------------------
// SYN proxy (service "proxied", VIP:443 → 198.19.0.11:8443).

const F_FIN: u8 = 0x01;
const F_SYN: u8 = 0x02;
const F_RST: u8 = 0x04;
const F_ACK: u8 = 0x10;
const F_PSH: u8 = 0x08;

/// One's complement sum, independent of the program's incremental arithmetic.
fn csum(chunks: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|w| u32::from(w[0]) << 8 | u32::from(*w.get(1).unwrap_or(&0)))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A TCP/IPv4 frame with exact options, DF set and IP id 0 (as the balancer emits
/// its own segments), checksums computed from scratch.
#[derive(Clone)]
struct Seg {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    options: Vec<u8>,
    payload: Vec<u8>,
}

impl Seg {
    fn bytes(&self) -> Vec<u8> {
        assert_eq!(self.options.len() % 4, 0);
        let tcp_len = 20 + self.options.len() + self.payload.len();
        let mut tcp = Vec::new();
        tcp.extend_from_slice(&self.sport.to_be_bytes());
        tcp.extend_from_slice(&self.dport.to_be_bytes());
        tcp.extend_from_slice(&self.seq.to_be_bytes());
        tcp.extend_from_slice(&self.ack.to_be_bytes());
        tcp.push((((20 + self.options.len()) / 4) as u8) << 4);
        tcp.push(self.flags);
        tcp.extend_from_slice(&self.window.to_be_bytes());
        tcp.extend_from_slice(&[0, 0, 0, 0]);
        tcp.extend_from_slice(&self.options);
        tcp.extend_from_slice(&self.payload);
        let pseudo = [
            &self.src.octets()[..],
            &self.dst.octets()[..],
            &[0, 6],
            &(tcp_len as u16).to_be_bytes(),
        ]
        .concat();
        let check = csum(&[&pseudo, &tcp]);
        tcp[16..18].copy_from_slice(&check.to_be_bytes());
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0x40, 0, self.ttl, 6, 0, 0]);
        ip.extend_from_slice(&self.src.octets());
        ip.extend_from_slice(&self.dst.octets());
        let check = csum(&[&ip]);
        ip[10..12].copy_from_slice(&check.to_be_bytes());
        [
            &self.dst_mac[..],
            &self.src_mac[..],
            &[0x08, 0x00],
            &ip,
            &tcp,
        ]
        .concat()
    }
}

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

fn client_seg(sport: u16, seq: u32, ack: u32, flags: u8, options: Vec<u8>) -> Seg {
    Seg {
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

fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap())
}

/// Sends a client SYN with `options`, checks the SYN-ACK's frame around the cookie and
/// TSval it carries, and returns (cookie, TSval or 0).
fn proxy_syn(h: &mut Harness, sport: u16, options: Vec<u8>) -> (u32, u32, Vec<u8>) {
    let syn = client_seg(sport, 1000, 0, F_SYN, options);
    let (verdict, out) = h.run(&syn.bytes());
    assert_eq!(verdict, XDP_TX, "the balancer answers the SYN itself");
    assert!(out.len() >= 54, "SYN-ACK frame");
    let cookie = be32(&out, 38);
    let doff = (out[46] >> 4) as usize * 4;
    let options = out[54..34 + doff].to_vec();
    let tsval = options
        .windows(2)
        .position(|w| w == [8, 10])
        .map_or(0, |at| be32(&options, at + 2));
    (cookie, tsval, options)
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn syn_proxy_handshake_and_translated_data_both_ways() {
    with_harness(|h| {
        // 1. SYN → SYN-ACK with a cookie, from the VIP, back out of the same port.
        let (cookie, our_tsval, _) = proxy_syn(h, 40000, linux_syn_options(1000, 0, 7));
        // TSval carries the client's options: wscale 7, SACK (bit 4), MSS 1460 (index 3).
        assert_eq!(our_tsval & 0x7f, 7 | 1 << 4 | 3 << 5, "options in TSval");
        let expected = Seg {
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
        let forward = h.flow(&key(CLIENT, 40000, VIP, 443, IPPROTO_TCP)).unwrap();
        let port = u16::from_be(forward.new_src_port);
        assert_eq!(forward.state, lb_common::FLOW_STATE_SYNPROXY);
        assert_eq!(forward.proxy_isn, cookie);
        let server_syn = Seg {
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
        let server_synack = Seg {
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
        let server_ack = Seg {
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
            key(CLIENT, 40000, VIP, 443, IPPROTO_TCP),
            key(SERVER1, 8443, SNAT, port, IPPROTO_TCP),
        ] {
            let entry = h.flow(&k).unwrap();
            assert_eq!(entry.state, FLOW_STATE_ESTABLISHED);
            assert_eq!(entry.seq_delta, seq_delta);
            assert_eq!(entry.ts_delta, ts_delta);
        }

        // 4. Server → client data: SEQ and TSval shifted, window rescaled from the
        // server's shift 9 to the 7 the client was told.
        let data = Seg {
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
        let to_client = Seg {
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
        // The program keeps the server's IP id/flags; only our own segments use id 0 + DF.
        let mut expected = to_client.bytes();
        expected[18..22].copy_from_slice(&out[18..22]);
        expected[24..26].copy_from_slice(&out[24..26]);
        assert_eq!(out[34..], expected[34..], "server data exact TCP bytes");
        assert_checksums_valid(&out);

        // 5. Client → server: ACK, both SACK blocks and TSecr shifted back.
        let sack = |a: u32, b: u32| [&a.to_be_bytes()[..], &b.to_be_bytes()[..]].concat();
        let client_data = Seg {
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
        let to_server = Seg {
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
        let expected = to_server.bytes();
        assert_eq!(out[34..], expected[34..], "client data exact TCP bytes");
        assert_checksums_valid(&out);

        // An odd-aligned SACK block (one NOP before it) is patched just as well.
        let odd_options =
            |left: u32, right: u32| [vec![1, 5, 10], sack(left, right), vec![0]].concat();
        let odd = Seg {
            options: odd_options(cookie.wrapping_add(201), cookie.wrapping_add(301)),
            ..client_data.clone()
        };
        let (_, out) = h.run(&odd.bytes());
        let expected = Seg {
            options: odd_options(5201, 5301),
            ..to_server.clone()
        }
        .bytes();
        assert_eq!(
            out[34..],
            expected[34..],
            "odd-aligned SACK exact TCP bytes"
        );
        assert_checksums_valid(&out);
    });
}

/// Opens a full-NAT connection and marks both its entries for reset, as the controller
/// does when the backend fails under `on_backend_down = "reset"`. Returns the client's
/// and the server's entry keys.
fn open_flow_marked_for_reset(h: &mut Harness) -> (FlowKey, FlowKey) {
    let port = open_full_nat(h);
    let client_key = key(CLIENT, 40000, VIP, 80, IPPROTO_TCP);
    let server_key = key(SERVER1, 8080, SNAT, port, IPPROTO_TCP);
    for k in [client_key, server_key] {
        let mut entry = h.flow(&k).unwrap();
        entry.state = lb_common::FLOW_STATE_RESET;
        h.dp.insert_flow(k, entry).unwrap();
    }
    (client_key, server_key)
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_flow_marked_for_reset_answers_the_client_with_a_rst() {
    with_harness(|h| {
        let (_, server_key) = open_flow_marked_for_reset(h);
        let data = Tcp {
            syn: false,
            ack: Some(0x1234_5678),
            seq: 1001,
            ..Tcp::syn(CLIENT, 40000, VIP, 80)
        };
        let (verdict, out) = h.run(&data.build(b"GET / HTTP/1.1\r\n\r\n"));
        assert_eq!(verdict, XDP_TX);
        let mut expected = Vec::new();
        PacketBuilder::ethernet2(LB_EXT_MAC, CLIENT_MAC)
            .ipv4(VIP.octets(), CLIENT.octets(), 64)
            // RFC 793: the RST takes its sequence number from the segment's ACK.
            .tcp(80, 40000, 0x1234_5678, 0)
            .rst()
            .write(&mut expected, &[])
            .unwrap();
        expected[20] = 0x40; // DF
        let ip = etherparse::Ipv4HeaderSlice::from_slice(&expected[14..]).unwrap();
        let check = ip.to_header().calc_header_checksum();
        expected[24..26].copy_from_slice(&check.to_be_bytes());
        assert_eq!(out, expected, "exact bytes out");
        assert_checksums_valid(&out);
        assert_eq!(h.counter(counters::TX_RST_BACKEND_DOWN), 1);

        // The dead server's packets are dropped; a new SYN on the tuple starts afresh.
        let reply = Tcp {
            src_mac: LB_INT_MAC,
            dst_mac: LB_INT_MAC,
            syn: false,
            ack: Some(1001),
            ..Tcp::syn(SERVER1, 8080, SNAT, u16::from_be(server_key.dst_port))
        };
        assert_eq!(h.run(&reply.build(&[])).0, XDP_DROP);
        assert_eq!(h.counter(counters::DROP_BACKEND_DOWN), 1);
        let (verdict, _) = h.run(&Tcp::syn(CLIENT, 40000, VIP, 80).build(&[]));
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(h.counter(counters::FLOW_REPLACED), 1);
    });
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_client_rst_on_a_flow_marked_for_reset_is_dropped_and_removes_the_pair() {
    with_harness(|h| {
        let (client_key, server_key) = open_flow_marked_for_reset(h);
        let rst = Tcp {
            syn: false,
            rst: true,
            ack: Some(0x1234_5678),
            seq: 1001,
            ..Tcp::syn(CLIENT, 40000, VIP, 80)
        };
        let packet = rst.build(&[]);
        let (verdict, out) = h.run(&packet);
        assert_eq!(verdict, XDP_DROP, "a RST is never answered with a RST");
        assert_eq!(out, packet, "the dropped frame is left untouched");
        assert_eq!(h.counter(counters::TX_RST_BACKEND_DOWN), 0);
        assert_eq!(h.counter(counters::DROP_BACKEND_DOWN), 1);
        assert!(h.flow(&client_key).is_none(), "client entry removed");
        assert!(h.flow(&server_key).is_none(), "server entry removed");
        assert!(h.flows().is_empty());
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
        assert_eq!(out[54..], opt_mss(536)[..], "server SYN options");
        assert_eq!(out[47], F_SYN);
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
        assert_eq!(
            out[54..],
            [opt_mss(1460), vec![1, 1], opt_ts(6, 0), opt_wscale(14)].concat()[..]
        );
        assert_checksums_valid(&out);
        assert_eq!(h.counter(counters::SYNPROXY_SYNACK_SENT), 2);
        assert_eq!(h.flows().len(), 4);
    });
}

/// Completes the client side and returns (cookie, SNAT port).
fn proxy_open(h: &mut Harness, sport: u16) -> (u32, u16) {
    let (cookie, _, _) = proxy_syn(h, sport, vec![]);
    let ack = client_seg(sport, 1001, cookie.wrapping_add(1), F_ACK, vec![]);
    assert_eq!(h.run(&ack.bytes()).0, XDP_REDIRECT);
    let forward = h.flow(&key(CLIENT, sport, VIP, 443, IPPROTO_TCP)).unwrap();
    (cookie, u16::from_be(forward.new_src_port))
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn syn_proxy_server_refusal_resets_the_client_and_frees_the_pair() {
    with_harness(|h| {
        let (cookie, port) = proxy_open(h, 40020);
        // Data from the client before the server is up: dropped for retransmission.
        let early = Seg {
            payload: b"early".to_vec(),
            ..client_seg(40020, 1001, cookie.wrapping_add(1), F_ACK | F_PSH, vec![])
        };
        assert_eq!(h.run(&early.bytes()).0, XDP_DROP);
        assert_eq!(h.counter(counters::SYNPROXY_CLIENT_EARLY), 1);
        // The server refuses: the client gets an RST in its own sequence space.
        let rst = Seg {
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
        let expected = Seg {
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
        assert_eq!(out[34..], expected[34..], "RST to the client");
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
        let data = Seg {
            payload: b"GET /".to_vec(),
            ..client_seg(40030, 1001, cookie.wrapping_add(1), F_ACK | F_PSH, vec![])
        };
        let (verdict, out) = h.run(&data.bytes());
        assert_eq!(verdict, XDP_TX);
        let expected = Seg {
            src_mac: LB_EXT_MAC,
            dst_mac: CLIENT_MAC,
            src: VIP,
            dst: CLIENT,
            ttl: 64,
            sport: 443,
            dport: 40030,
            seq: cookie.wrapping_add(1),
            ack: 0,
            flags: F_RST,
            window: 0,
            options: vec![],
            payload: vec![],
        };
        assert_eq!(out, expected.bytes(), "RST exact bytes");
        assert!(h.flows().is_empty(), "pair removed");
        assert_eq!(h.counter(counters::SYNPROXY_SERVER_FAILED), 1);
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
        let config = Config::parse(&config, Path::new("allow.toml")).unwrap();
        h._table.apply(&mut h.dp, &config).unwrap();
        // The SYN gets the refusal (a RST acknowledging it), not a SYN-ACK with a cookie.
        let (verdict, out) = h.run(&client_seg(40050, 1000, 0, F_SYN, vec![]).bytes());
        assert_eq!(verdict, XDP_TX);
        assert_eq!(out[47], F_RST | F_ACK, "a RST+ACK, not a SYN-ACK");
        assert_eq!(&out[42..46], &1001u32.to_be_bytes(), "acknowledges the SYN");
        assert_checksums_valid(&out);
        // An ACK from outside the list is refused without a cookie check.
        let (verdict, out) = h.run(&client_seg(40050, 1001, 0x1234_5678, F_ACK, vec![]).bytes());
        assert_eq!(verdict, XDP_TX);
        assert_eq!(out[47], F_RST);
        assert_eq!(
            &out[38..42],
            &0x1234_5678u32.to_be_bytes(),
            "RST seq = the ACK"
        );
        assert_eq!(h.counter(counters::TX_RST_NOT_ELIGIBLE), 2);
        assert_eq!(h.counter(counters::SYNPROXY_SYNACK_SENT), 0);
        assert_eq!(h.counter(counters::SYNPROXY_COOKIE_INVALID), 0);
        assert_eq!(h.counter(counters::SYNPROXY_COOKIE_VALID), 0);
        assert!(h.flows().is_empty());
    });
}

/// Removes a bpffs pin directory when the test ends, passed or not.
struct PinDir(std::path::PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `--replace`: the new program goes onto the pinned link itself (same link, same pin
/// file), so the interface never loses its XDP program during the swap.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn replace_updates_the_pinned_link_in_place() {
    use aya::programs::links::{FdLink, PinnedLink};
    use lb_userspace::{dataplane::PinnedState, domain::AttachedMode};
    let netns = Netns::new();
    netns.enter(|| {
        let pins = PinDir(format!("/sys/fs/bpf/lbdp-replace-{}", std::process::id()).into());
        let config = Config::parse(CONFIG, Path::new("dataplane-test.toml")).expect("config");
        let capacity = config.limits;
        let link_info = |path: &Path| {
            FdLink::from(PinnedLink::from_pin(path).expect("open the link pin"))
                .info()
                .expect("link info")
        };

        let mut old = Dataplane::load(capacity, Some(&pins.0)).expect("load");
        old.attach("ext0", Some(AttachedMode::Generic))
            .expect("attach");
        old.release();
        drop(old);
        let path = pins.0.join("link_generic_ext0");
        let before = link_info(&path);

        let mut new =
            Dataplane::load_with(capacity, Some(&pins.0), PinnedState::Adopt).expect("adopt");
        let adopted = new.adopt_links(true).expect("replace the program");
        assert_eq!(adopted, vec![("ext0".to_string(), AttachedMode::Generic)]);
        let new_program = new.program().unwrap().info().unwrap().id();
        assert_ne!(new_program, before.program_id());
        let after = link_info(&path);
        assert_eq!(after.id(), before.id(), "the same link, still pinned");
        assert_eq!(
            after.program_id(),
            new_program,
            "now running the new program"
        );

        new.detach_all();
        assert!(!path.exists(), "detach removes the link pin");
    });
}

/// A drain, a health-down or a weight override changes a service's ring contents but
/// never its size or place in the pool: a new size would remap every flow of the
/// service and need a region the config check never budgeted.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn run_time_weight_changes_keep_the_ring_size_and_region() {
    use lb_userspace::services::Overrides;
    let netns = Netns::new();
    netns.enter(|| {
        // Weights 100 and 1 need 10,100 slots (16,381); without the light backend the
        // service would fit in 1,021, with the light one raised to 100 in 1,021 too.
        let config = Config::parse(
            r#"
name = "dptest"
[interfaces]
attach = ["ext0"]
[[service]]
name = "web"
vip = "198.18.1.10"
port = 80
snat_ip = "198.19.1.1"
[[service.backend]]
address = "198.19.0.11"
weight = 100
[[service.backend]]
address = "198.19.0.12"
weight = 1
"#,
            Path::new("ring-size-test.toml"),
        )
        .expect("config");
        let mut dp = Dataplane::load(config.limits, None).expect("load XDP program");
        let mut table = ServiceTable::default();
        table.apply(&mut dp, &config).expect("apply");
        let region = |table: &ServiceTable| {
            let s = table.services().next().unwrap();
            (s.rings, s.effective_weights.clone())
        };
        let (rings, _) = region(&table);
        assert_eq!(rings.size, 16_381);
        let light = (SERVER2, 80);

        let mut down = Overrides::default();
        down.down.insert(("web".to_string(), light));
        table.apply_with(&mut dp, &config, &down).expect("down");
        assert_eq!(region(&table), (rings, vec![100, 0]));

        let mut drained = Overrides::default();
        drained.drained.insert(light);
        table.apply_with(&mut dp, &config, &drained).expect("drain");
        assert_eq!(region(&table), (rings, vec![100, 0]));

        let mut heavier = Overrides::default();
        heavier.weights.insert(("web".to_string(), light), 100);
        table
            .apply_with(&mut dp, &config, &heavier)
            .expect("weight");
        assert_eq!(region(&table), (rings, vec![100, 100]));

        // The live ring really changed: half of it now holds the raised backend.
        let service = dp.service_entries().unwrap()[0].1;
        let live = &dp.ring_slots()
            [service.ring_offset as usize..(service.ring_offset + service.ring_size) as usize];
        let light_id = u64::from(table.backend_id(light).unwrap());
        let light_slots = live.iter().filter(|&&id| id == light_id).count();
        assert!((8_000..8_400).contains(&light_slots), "{light_slots}");
    });
}

/// Freed service and backend ids take nothing along: their sessions go and their
/// per-CPU counters are zeroed, and a service added in the same apply does not get a
/// removed service's id.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn freed_ids_lose_their_sessions_and_counters() {
    use lb_common::{BackendStats, ServiceStats, SessionEntry, SessionKey};
    let netns = Netns::new();
    netns.enter(|| {
        let service = |name: &str, port: u16, backends: &[Ipv4Addr]| {
            let mut text = format!(
                "[[service]]\nname = \"{name}\"\nvip = \"198.18.1.10\"\nport = {port}\n\
                 snat_ip = \"198.19.1.1\"\naffinity_timeout = 600\n"
            );
            for b in backends {
                text += &format!("[[service.backend]]\naddress = \"{b}\"\n");
            }
            text
        };
        let parse = |services: &str| {
            Config::parse(
                &format!("name = \"dptest\"\n[interfaces]\nattach = [\"ext0\"]\n{services}"),
                Path::new("freed-ids-test.toml"),
            )
            .expect("config")
        };
        let before = parse(&service("a", 80, &[SERVER1, SERVER2]));
        let mut dp = Dataplane::load(before.limits, None).expect("load XDP program");
        let mut table = ServiceTable::default();
        table.apply(&mut dp, &before).expect("apply");
        let a_id = table.services().next().unwrap().id;
        let b1 = table.backend_id((SERVER1, 80)).unwrap();
        let b2 = table.backend_id((SERVER2, 80)).unwrap();
        let cpus = aya::util::nr_cpus().unwrap();
        let session = |client: u8, service_id: u32, backend_id: u32| {
            let key = SessionKey {
                service_id,
                client_ip: u32::from(Ipv4Addr::new(198, 18, 0, client)).to_be(),
            };
            let entry = SessionEntry {
                backend_id,
                _pad: 0,
                created_ns: 1,
                last_seen_ns: 1,
            };
            (key, entry)
        };
        for (key, entry) in [session(2, a_id, b1), session(3, a_id, b2)] {
            dp.insert_session(key, entry).unwrap();
        }
        let counted = BackendStats {
            packets: 5,
            bytes: 500,
            new_flows: 1,
            _reserved: 0,
        };
        dp.fill_backend_stats(b2, counted).unwrap();
        let service_counted = ServiceStats {
            packets: 7,
            ..ServiceStats::default()
        };
        dp.fill_service_stats(a_id, service_counted).unwrap();

        // SERVER2 leaves the service: its session and counters go, SERVER1's stay.
        table
            .apply(&mut dp, &parse(&service("a", 80, &[SERVER1])))
            .expect("apply");
        let sessions: Vec<u32> = dp
            .session_entries()
            .iter()
            .map(|(_, entry)| entry.backend_id)
            .collect();
        assert_eq!(sessions, vec![b1]);
        assert_eq!(dp.backend_stats(b2).unwrap(), BackendStats::default());
        assert_eq!(dp.service_stats(a_id).unwrap().packets, 7 * cpus as u64);

        // Service a goes and b comes in one apply: b gets another id, a's sessions and
        // counters are gone.
        table
            .apply(&mut dp, &parse(&service("b", 81, &[SERVER1])))
            .expect("apply");
        let b_id = table.services().next().unwrap().id;
        assert_ne!(b_id, a_id);
        assert_eq!(dp.session_count(), 0);
        assert_eq!(dp.service_stats(a_id).unwrap(), ServiceStats::default());
    });
}
