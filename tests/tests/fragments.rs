//! Fragmented datagrams through the VIP, in network namespaces: the senders' kernels
//! fragment (1,500-byte MTU), the balancer follows the fragments without reassembly,
//! the receivers' kernels reassemble.
//!
//! Needs root: run with `cargo xtask test` (or `cargo test -- --ignored --test-threads=1`).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use lb_integration::{Balancer, SERVER_IPS, config_toml};
use lb_testbed::{self as testbed, Role, udp_reply};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Namespaces `fr{pid}x{n}-*`, apart from the other suites'.
fn prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "fr{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The standard services plus "dns" (udp/53) on server 1 alone, where dnsmasq runs.
fn start() -> Balancer {
    let prefix = prefix();
    let mut config = config_toml(&prefix, [1, 1, 1], "");
    config.push_str(&format!(
        "[[service]]\nname = \"dns\"\nvip = \"{}\"\nport = 53\nprotocol = \"udp\"\n\
         snat_ip = \"{}\"\n[[service.backend]]\naddress = \"{}\"\n",
        testbed::VIP,
        testbed::SNAT_IP,
        SERVER_IPS[0]
    ));
    Balancer::start(&prefix, &config).expect("start testbed and lb")
}

/// A 4,000-byte datagram to the VIP reaches a server in fragments and its 4,003-byte
/// echo comes back the same way, every byte intact.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_4000_byte_datagram_is_echoed_through_the_vip() {
    let balancer = start();
    let ns = balancer.topo.ns(Role::Client);
    let payload: Vec<u8> = (0..4000u32).map(|i| (i * 7 + i / 256) as u8).collect();
    let reply = testbed::udp_request(&ns, Balancer::vip(5353), &payload, TIMEOUT)
        .expect("the echo of a fragmented datagram");
    let server = (1..=3)
        .map(|i| format!("s{i}"))
        .find(|name| reply.starts_with(format!("{name}:").as_bytes()))
        .expect("a server's echo");
    assert_eq!(reply, udp_reply(&server, &payload), "every byte echoed");
    // Three fragments each way: two followed per datagram.
    assert!(balancer.counter("fragments_followed").unwrap() >= 4);
    assert_eq!(balancer.counter("drop_fragment_no_first").unwrap(), 0);
}

/// dig asks dnsmasq (behind the VIP) for a 2 KB TXT record over UDP with a 4,096-byte
/// EDNS buffer: the answer comes in fragments, complete and not truncated.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_dns_answer_larger_than_the_mtu_arrives_over_udp() {
    let balancer = start();
    // Nine strings of 230 characters: 2,070 bytes of text.
    let strings: Vec<String> = (0..9)
        .map(|i| {
            (0..230)
                .map(|j| char::from(b'a' + ((i * 7 + j) % 26) as u8))
                .collect()
        })
        .collect();
    // dnsmasq makes one string of each comma-separated part.
    let record = format!("--txt-record=big.test,{}", strings.join(","));
    let listen = format!("--listen-address={}", SERVER_IPS[0]);
    balancer
        .topo
        .spawn(
            Role::Server(1),
            &[
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                &listen,
                "--port=53",
                "--pid-file=",
                "--edns-packet-max=4096",
                &record,
            ],
        )
        .expect("start dnsmasq");
    let vip = format!("@{}", testbed::VIP);
    let dig = || {
        balancer
            .client(&[
                "dig",
                &vip,
                "-p",
                "53",
                "big.test",
                "TXT",
                "+bufsize=4096",
                "+notcp",
                "+ignore",
                "+tries=1",
                "+time=2",
            ])
            .expect("run dig")
    };
    // dnsmasq needs a moment to bind.
    let deadline = Instant::now() + TIMEOUT;
    let output = loop {
        let out = dig();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && text.contains("ANSWER SECTION") {
            break text;
        }
        assert!(Instant::now() < deadline, "no answer from dig: {text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let flags = output
        .lines()
        .find(|line| line.starts_with(";; flags:"))
        .expect("a flags line");
    let flags = flags.split(';').nth(2).unwrap_or_default();
    assert!(
        !flags.split_whitespace().any(|f| f == "tc"),
        "not truncated: {output}"
    );
    let answer = output
        .lines()
        .find(|line| line.starts_with("big.test.") && line.contains("TXT"))
        .unwrap_or_else(|| panic!("a TXT answer: {output}"));
    let got: Vec<&str> = answer
        .split('"')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s)
        .collect();
    assert_eq!(got, strings, "the whole record");
    assert!(balancer.counter("fragments_followed").unwrap() >= 1);
}
