//! Path MTU discovery through the balancer: a router with a 1400-byte link between the
//! client and the balancer (a download) or between the balancer and a server (an
//! upload) reports the balancer's oversized packets with ICMP "fragmentation needed"
//! to the VIP or the SNAT address; the balancer translates the error to the real
//! sender (docs/architecture.md, "ICMP errors"), which lowers its segment size, and
//! the 20 MiB transfer completes. Without the translation it stalls.
//!
//! Needs root: run with `cargo xtask test` (or `cargo test -- --ignored --test-threads=1`).

use std::sync::atomic::{AtomicU32, Ordering};

use lb_integration::{Balancer, config_toml};
use lb_testbed::{
    self as testbed, Options, Role, Router, RouterSite, payload_bytes, payload_sha256,
};

const SIZE: u64 = 20 * 1024 * 1024;
/// Seconds a transfer may take: plenty with path MTU discovery working, while a stalled
/// one never finishes.
const TRANSFER_SECS: &str = "30";
const NARROW_MTU: u32 = 1400;

/// A fresh `pm<pid>x<n>` prefix: unique to this suite, so parallel suites never collide.
fn prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "pm{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Forwarding mode of the web service under test.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    FullNat,
    Dnat,
}

/// `config_toml`'s services with `weights`, or in DNAT one web service over the servers
/// whose weight is not 0 (the servers route back through the LB, their default gateway).
fn config(prefix: &str, weights: [u32; 3], mode: Mode) -> String {
    if mode == Mode::FullNat {
        return config_toml(prefix, weights, "");
    }
    let mut text = format!(
        "name = \"{prefix}\"\n\
         [interfaces]\nattach = [\"lb-ext\", \"lb-int\"]\nxdp_mode = \"native\"\n\
         [control]\nsocket = \"/run/lb/{prefix}.sock\"\n\
         [[service]]\nname = \"web\"\nvip = \"{}\"\nport = 80\nmode = \"dnat\"\n",
        testbed::VIP
    );
    for (ip, weight) in testbed::SERVER_IPS.iter().zip(weights) {
        if weight > 0 {
            text.push_str(&format!(
                "[[service.backend]]\naddress = \"{ip}\"\nweight = {weight}\n"
            ));
        }
    }
    text
}

fn start(weights: [u32; 3], site: RouterSite, mode: Mode) -> Balancer {
    let prefix = prefix();
    let config = config(&prefix, weights, mode);
    let options = Options {
        router: Some(Router {
            site,
            far_mtu: NARROW_MTU,
        }),
    };
    Balancer::start_with(&prefix, &config, options).expect("start testbed and lb")
}

fn sysctl(balancer: &Balancer, role: Role, key: &str) -> String {
    let out = balancer
        .topo
        .exec(role, &["cat", &format!("/proc/sys/{key}")])
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The senders rely on ICMP alone: DF on every segment (path MTU discovery on, the
/// Linux default) and no MTU probing that could find the size without it.
fn assert_needs_icmp(balancer: &Balancer, sender: Role) {
    assert_eq!(sysctl(balancer, sender, "net/ipv4/tcp_mtu_probing"), "0");
    assert_eq!(sysctl(balancer, sender, "net/ipv4/ip_no_pmtu_disc"), "0");
}

/// Echo to the VIP is answered (by the LB host's kernel, as without a router).
fn assert_vip_answers_ping(balancer: &Balancer) {
    let out = balancer
        .client(&["ping", "-c1", "-W2", &testbed::VIP.to_string()])
        .unwrap();
    assert!(out.status.success(), "ping to the VIP: {out:?}");
}

/// A download through a router between the client and the LB: the router reports the
/// servers' segments to the VIP.
fn download_through_a_narrow_client_link(mode: Mode) {
    let balancer = start([1, 1, 1], RouterSite::Client, mode);
    for i in 1..=3 {
        assert_needs_icmp(&balancer, Role::Server(i));
    }
    assert_vip_answers_ping(&balancer);
    let script = format!(
        "curl -sS --max-time {TRANSFER_SECS} http://{}/bytes/{SIZE} | sha256sum",
        testbed::VIP
    );
    let out = balancer.client(&["sh", "-c", &script]).unwrap();
    let digest = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        digest.split_whitespace().next().unwrap_or(""),
        payload_sha256(SIZE),
        "the download arrives intact: {} (lb stats: {})",
        String::from_utf8_lossy(&out.stderr).trim(),
        balancer.cli(&["stats"]).unwrap_or_default()
    );
    assert_relayed_and_vip_answers(&balancer);
}

/// After a transfer: the router's errors went through the balancer, and echo to the VIP
/// still works.
fn assert_relayed_and_vip_answers(balancer: &Balancer) {
    assert!(
        balancer.counter("icmp_relayed").unwrap() > 0,
        "the router's errors went through the balancer"
    );
    assert_vip_answers_ping(balancer);
}

/// An upload through a router between the switch and server 1 (the only backend):
/// the router reports the client's segments to the SNAT address, or in DNAT to the
/// client's own address through the LB.
fn upload_through_a_narrow_server_link(mode: Mode) {
    let balancer = start([1, 0, 0], RouterSite::Server(1), mode);
    assert_needs_icmp(&balancer, Role::Client);
    assert_vip_answers_ping(&balancer);
    let file = balancer.config_path.with_file_name("upload.bin");
    std::io::copy(
        &mut payload_bytes(SIZE),
        &mut std::fs::File::create(&file).unwrap(),
    )
    .unwrap();
    let url = format!("http://{}/sha256", testbed::VIP);
    let file_arg = file.to_string_lossy();
    let out = balancer
        .client(&[
            "curl",
            "-sS",
            "--max-time",
            TRANSFER_SECS,
            "-H",
            "Expect:",
            "-T",
            &file_arg,
            &url,
        ])
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        payload_sha256(SIZE),
        "the server hashed the whole upload: {} (lb stats: {})",
        String::from_utf8_lossy(&out.stderr).trim(),
        balancer.cli(&["stats"]).unwrap_or_default()
    );
    assert_relayed_and_vip_answers(&balancer);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_download_through_a_narrow_client_link_completes() {
    download_through_a_narrow_client_link(Mode::FullNat);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn an_upload_through_a_narrow_server_link_completes() {
    upload_through_a_narrow_server_link(Mode::FullNat);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_dnat_download_through_a_narrow_client_link_completes() {
    download_through_a_narrow_client_link(Mode::Dnat);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_dnat_upload_through_a_narrow_server_link_completes() {
    upload_through_a_narrow_server_link(Mode::Dnat);
}
