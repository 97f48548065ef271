//! Forwarding to a VIP's previous owner with real frames through the attached program
//! (docs/scale-out.md, "Forwarding to the previous owner"): a segment without a flow for
//! a VIP in transition leaves `lb-int` in IPIP toward the previous owner (server 1
//! stands in for it), and IPIP from that peer is decapsulated on `lb-int` and opens a
//! flow like a direct SYN. The daemon does not program the tunnel maps; the test writes
//! them into its pinned maps, as the controller of a VIP move will.
//!
//! Needs root: run with `cargo xtask test` (or `cargo test -- --ignored --test-threads=1`).

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap, Map, MapData};
use lb_common::{TUNNEL_PEER_ACCEPT, VipTransition, map_names, wire::addr_to_wire};
use lb_integration::{Balancer, config_toml};
use lb_testbed::{
    CLIENT_IF, CLIENT_IP, LB_EXT_IF, LB_INT_IF, LB_INT_IP, Role, SERVER_IF, SERVER_IPS, VIP,
    packet::Tcp, run_in_netns,
};

/// A testbed prefix of this suite's own (`tu{pid}x{n}`).
fn prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "tu{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The MAC address of `dev` in `role`'s namespace (from `ip -o link`).
fn mac(balancer: &Balancer, role: Role, dev: &str) -> [u8; 6] {
    let out = balancer
        .topo
        .exec(role, &["ip", "-o", "link", "show", "dev", dev])
        .expect("ip link show");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let addr = text
        .split_whitespace()
        .skip_while(|word| *word != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {text:?}"));
    let bytes: Vec<u8> = addr
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("hex MAC"))
        .collect();
    bytes.try_into().expect("6-byte MAC")
}

fn pinned(balancer: &Balancer, name: &str) -> MapData {
    MapData::from_pin(Path::new("/sys/fs/bpf").join(&balancer.name).join(name))
        .unwrap_or_else(|e| panic!("open the pinned {name}: {e}"))
}

/// VIP in transition from `previous_owner`, which is a tunnel peer; `LB_INT_IP` the
/// tunnel source.
fn program_transition(balancer: &Balancer, previous_owner: Ipv4Addr) {
    let mut source: Array<MapData, u32> =
        Array::try_from(Map::Array(pinned(balancer, map_names::TUNNEL_SOURCE))).unwrap();
    source.set(0, addr_to_wire(LB_INT_IP), 0).unwrap();
    let mut peers: HashMap<MapData, u32, u32> =
        HashMap::try_from(Map::HashMap(pinned(balancer, map_names::TUNNEL_PEERS))).unwrap();
    peers
        .insert(addr_to_wire(previous_owner), TUNNEL_PEER_ACCEPT, 0)
        .unwrap();
    let mut transitions: HashMap<MapData, u32, VipTransition> =
        HashMap::try_from(Map::HashMap(pinned(balancer, map_names::VIP_TRANSITIONS))).unwrap();
    let transition = VipTransition {
        previous_owner: addr_to_wire(previous_owner),
        _reserved: 0,
    };
    transitions
        .insert(addr_to_wire(VIP), transition, 0)
        .unwrap();
}

/// A raw packet socket on `dev` in `role`'s namespace, receiving every frame, with a
/// short receive timeout.
fn packet_socket(balancer: &Balancer, role: Role, dev: &'static str) -> OwnedFd {
    let ns = balancer.topo.ns(role);
    run_in_netns(&ns, move || {
        let name = std::ffi::CString::new(dev).unwrap();
        // SAFETY: plain syscalls on a socket this closure creates and hands over.
        unsafe {
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from((libc::ETH_P_ALL as u16).to_be()),
            );
            assert!(fd >= 0, "{}", std::io::Error::last_os_error());
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
            addr.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
            let rc = libc::bind(
                fd,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
            let timeout = libc::timeval {
                tv_sec: 0,
                tv_usec: 200_000,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
            OwnedFd::from_raw_fd(fd)
        }
    })
    .expect("enter the namespace")
}

fn send(fd: &OwnedFd, frame: &[u8]) {
    // SAFETY: `frame` outlives the call; the socket is bound to its interface.
    let rc = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    assert_eq!(
        rc,
        frame.len() as isize,
        "{}",
        std::io::Error::last_os_error()
    );
}

/// The first frame on `fd` within 5 s that `wanted` accepts.
fn receive(fd: &OwnedFd, wanted: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 4096];
    while Instant::now() < deadline {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n > 0 && wanted(&buf[..n as usize]) {
            return Some(buf[..n as usize].to_vec());
        }
    }
    None
}

/// IPv4 packet `inner` (without Ethernet header) in an outer header `src → dst`,
/// TTL 64, DF, checksum set, in a frame `src_mac → dst_mac`.
fn ipip(src_mac: [u8; 6], dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, inner: &[u8]) -> Vec<u8> {
    let mut header = etherparse::Ipv4Header::new(
        inner.len() as u16,
        64,
        etherparse::IpNumber::IPV4,
        src.octets(),
        dst.octets(),
    )
    .unwrap();
    header.dont_fragment = true;
    let mut out = [&dst_mac[..], &src_mac[..], &[0x08, 0x00]].concat();
    header.write(&mut out).unwrap();
    out.extend_from_slice(inner);
    out
}

fn wait_counter(balancer: &Balancer, name: &str, want: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let value = balancer.counter(name).unwrap();
        if value >= want || Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_stale_segment_goes_to_the_previous_owner_and_its_ipip_comes_back_decapsulated() {
    let prefix = prefix();
    let balancer = Balancer::start(&prefix, &config_toml(&prefix, [1, 1, 1], ""))
        .expect("start testbed and lb");
    let owner = SERVER_IPS[0];
    program_transition(&balancer, owner);
    // The neighbour toward the previous owner must be resolved: the packet comes from
    // one of the host's own addresses, so it is not handed to the kernel to resolve it
    // (the peer connection keeps it resolved in a cluster).
    let ping = balancer
        .topo
        .exec(
            Role::Lb,
            &["ping", "-c", "1", "-W", "2", &owner.to_string()],
        )
        .expect("ping");
    assert!(ping.status.success(), "the previous owner answers a ping");
    let owner_mac = mac(&balancer, Role::Server(1), SERVER_IF);
    let lb_int_mac = mac(&balancer, Role::Lb, LB_INT_IF);
    let client = packet_socket(&balancer, Role::Client, CLIENT_IF);
    let at_owner = packet_socket(&balancer, Role::Server(1), SERVER_IF);

    // 1. A segment of a connection this instance has no flow for.
    let stale = Tcp {
        src_mac: mac(&balancer, Role::Client, CLIENT_IF),
        dst_mac: mac(&balancer, Role::Lb, LB_EXT_IF),
        syn: false,
        ack: Some(0x1234_5678),
        seq: 5000,
        ..Tcp::syn(CLIENT_IP, 40000, VIP, 80)
    }
    .build(b"late data");
    send(&client, &stale);
    let got = receive(&at_owner, |frame| {
        frame.len() > 34 && frame[12..14] == [0x08, 0x00] && frame[23] == 4
    })
    .expect("the IPIP frame reaches the previous owner");
    assert_eq!(
        got,
        ipip(lb_int_mac, owner_mac, LB_INT_IP, owner, &stale[14..]),
        "outer header from the tunnel source, inner packet unchanged"
    );
    assert_eq!(balancer.counter("tunnel_forwarded").unwrap(), 1);
    assert_eq!(balancer.counter("drop_no_flow").unwrap(), 0);

    // 2. The previous owner sends a client's SYN back through the tunnel: decapsulated
    // on lb-int, it opens a flow here like a direct one.
    let new_flows = balancer.counter("new_flows").unwrap();
    let syn = Tcp::syn(CLIENT_IP, 40100, VIP, 80).build(&[]);
    let tunnelled = ipip(owner_mac, lb_int_mac, owner, LB_INT_IP, &syn[14..]);
    send(&at_owner, &tunnelled);
    assert_eq!(wait_counter(&balancer, "tunnel_received", 1), 1);
    assert!(wait_counter(&balancer, "new_flows", new_flows + 1) > new_flows);
    assert_eq!(balancer.counter("tunnel_forwarded").unwrap(), 1);
}
