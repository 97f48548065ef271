//! VLAN policy with real traffic through the attached program: tagged frames from the
//! client to a service are handed to the kernel (`pass_vlan`) instead of being balanced,
//! while untagged traffic still is.
//!
//! The test kernel may lack 802.1Q support (`CONFIG_VLAN_8021Q`), so no VLAN device is
//! used: the client sends its frames on a raw packet socket, which puts the tag in the
//! frame as a switch's trunk port delivers it.
//!
//! Needs root: run with `cargo xtask test` (or `cargo test -- --ignored --test-threads=1`).

use std::sync::atomic::{AtomicU32, Ordering};

use lb_integration::{Balancer, config_toml, server_of};
use lb_testbed::{CLIENT_IF, CLIENT_IP, LB_EXT_IF, Role, VIP, packet::Tcp, run_in_netns};

/// A testbed prefix of this suite's own (`vl{pid}x{n}`).
fn prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "vl{}x{}",
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

/// `frame` with a VLAN tag (`tpid`, VLAN `vid`) inserted after the MAC addresses.
fn tagged(frame: &[u8], tpid: u16, vid: u16) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    out.extend_from_slice(&tpid.to_be_bytes());
    out.extend_from_slice(&vid.to_be_bytes());
    out.extend_from_slice(&frame[12..]);
    out
}

/// Sends `frame` as it is out of the client's interface (raw packet socket).
fn send_from_client(balancer: &Balancer, frame: Vec<u8>) {
    let ns = balancer.topo.ns(Role::Client);
    let len = frame.len();
    let sent = run_in_netns(&ns, move || {
        let name = std::ffi::CString::new(CLIENT_IF).unwrap();
        // SAFETY: plain syscalls on a socket this closure owns; `addr` and `frame`
        // outlive the calls that read them.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&frame[..6]);
            let rc = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if rc < 0 { Err(err) } else { Ok(rc as usize) }
        }
    })
    .expect("enter the client namespace");
    assert_eq!(sent.expect("send the frame"), len, "frame sent whole");
}

fn flow_count(balancer: &Balancer) -> usize {
    balancer.json("flows").unwrap().as_array().unwrap().len()
}

/// Polls the counter `name` until it reaches `want` (the frame crosses the veth
/// asynchronously), for up to 5 s; its last value.
fn wait_counter(balancer: &Balancer, name: &str, want: u64) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let value = balancer.counter(name).unwrap();
        if value >= want || std::time::Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn tagged_syns_to_the_vip_are_passed_to_the_kernel_and_untagged_traffic_is_balanced() {
    let prefix = prefix();
    let balancer = Balancer::start(&prefix, &config_toml(&prefix, [1, 1, 1], ""))
        .expect("start testbed and lb");
    let syn = Tcp {
        src_mac: mac(&balancer, Role::Client, CLIENT_IF),
        dst_mac: mac(&balancer, Role::Lb, LB_EXT_IF),
        ..Tcp::syn(CLIENT_IP, 40000, VIP, 80)
    }
    .build(&[]);
    let new_flows = balancer.counter("new_flows").unwrap();
    let pass_vlan = balancer.counter("pass_vlan").unwrap();

    let frames = [
        tagged(&syn, 0x8100, 10),
        tagged(&syn, 0x88a8, 20),
        tagged(&tagged(&syn, 0x8100, 10), 0x88a8, 20),
    ];
    let count = frames.len() as u64;
    for frame in frames {
        send_from_client(&balancer, frame);
    }
    assert_eq!(
        wait_counter(&balancer, "pass_vlan", pass_vlan + count),
        pass_vlan + count,
        "each tagged SYN passed as pass_vlan"
    );
    assert_eq!(
        balancer.counter("new_flows").unwrap(),
        new_flows,
        "not balanced"
    );
    assert_eq!(flow_count(&balancer), 0, "no flow entry");

    // The very same SYN untagged opens a flow (the server's SYN-ACK then meets a client
    // stack that never sent it, which is of no concern here)...
    send_from_client(&balancer, syn);
    assert_eq!(
        wait_counter(&balancer, "new_flows", new_flows + 1),
        new_flows + 1
    );
    // ... and the client's own connections are balanced as ever.
    let body = balancer.curl("/").expect("untagged request");
    assert!(server_of(&body).is_some(), "{body}");
    assert_eq!(balancer.counter("new_flows").unwrap(), new_flows + 2);
    assert_eq!(
        balancer.counter("pass_vlan").unwrap(),
        pass_vlan + count,
        "nothing else counted as tagged"
    );
}
