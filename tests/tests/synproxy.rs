//! SYN proxy with real clients: curl and wrk through a SYN-proxied service, 100 MiB both
//! ways with sha256 intact (also under 1 % random loss on the client link), a spoofed
//! SYN flood that costs no flow entries, and a server that never answers.
//!
//! Needs root: run with `cargo xtask test` (or `cargo test -- --ignored --test-threads=1`).

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use lb_integration::{Balancer, SERVER_IPS, config_toml};
use lb_testbed::{
    self as testbed, Role, flood, http_get, payload_bytes, payload_sha256, run_in_netns,
};

/// The proxied service's port on the VIP (the servers' own port is 80).
const PROXY_PORT: u16 = 81;
const MIB_100: u64 = 100 * 1024 * 1024;

/// The standard config plus `proxied`, VIP:81 over the given servers' :80 with the SYN
/// proxy on, and `extra` TOML placed before the services.
fn start_syn_proxied(servers: &[Ipv4Addr], extra: &str) -> Balancer {
    let prefix = testbed::unique_prefix();
    let mut config = config_toml(&prefix, [1, 1, 1], extra);
    config.push_str(&format!(
        "[[service]]\nname = \"proxied\"\nvip = \"{}\"\nport = {PROXY_PORT}\n\
         snat_ip = \"{}\"\nsyn_proxy = true\n",
        testbed::VIP,
        testbed::SNAT_IP
    ));
    for ip in servers {
        config.push_str(&format!(
            "[[service.backend]]\naddress = \"{ip}\"\nport = 80\n"
        ));
    }
    Balancer::start(&prefix, &config).expect("start testbed and lb")
}

fn url(path: &str) -> String {
    format!("http://{}:{PROXY_PORT}{path}", testbed::VIP)
}

/// Runs a shell command in the client namespace; stdout, or a panic with everything.
fn client_sh(balancer: &Balancer, script: &str) -> String {
    let out = balancer.client(&["sh", "-c", script]).unwrap();
    assert!(
        out.status.success(),
        "{script}: {out:?}\ncounters: {}",
        balancer.json("stats").unwrap()["counters"]
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Absolute values of the named kernel SNMP counters of namespace `ns`.
fn nstat(balancer: &Balancer, role: Role, names: &[&str]) -> BTreeMap<String, u64> {
    let mut args = vec!["nstat", "-az"];
    args.extend_from_slice(names);
    let out = balancer.topo.exec(role, &args).unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let name = fields.next()?;
            let value = fields.next()?.parse().ok()?;
            names.contains(&name).then(|| (name.to_string(), value))
        })
        .collect()
}

fn sum_over_servers(balancer: &Balancer, name: &str) -> u64 {
    (1..=testbed::SERVER_COUNT)
        .map(|i| {
            nstat(balancer, Role::Server(i), &[name])
                .get(name)
                .copied()
                .unwrap_or(0)
        })
        .sum()
}

/// Downloads and uploads `MIB_100` through the proxy on one connection each; both
/// hashes must match the payload.
fn transfer_both_ways(balancer: &Balancer, upload_file: &std::path::Path) {
    let expected = payload_sha256(MIB_100);
    let down = client_sh(
        balancer,
        &format!(
            "curl -fsS --max-time 120 {} | sha256sum",
            url(&format!("/bytes/{MIB_100}"))
        ),
    );
    assert_eq!(
        down.split_whitespace().next(),
        Some(expected.as_str()),
        "sha256 of 100 MiB downloaded through the SYN proxy"
    );
    // `Expect:` off: the test server does not send 100 Continue.
    let up = client_sh(
        balancer,
        &format!(
            "curl -fsS --max-time 120 -H 'Expect:' -T {} {}",
            upload_file.display(),
            url("/sha256")
        ),
    );
    assert_eq!(
        up.trim(),
        expected,
        "sha256 of 100 MiB uploaded through the SYN proxy, as the server hashed it"
    );
}

/// The payload the servers send, written to a file for uploads; removed on drop.
struct UploadFile(std::path::PathBuf);

impl UploadFile {
    fn new(balancer: &Balancer) -> UploadFile {
        let path = balancer.config_path.with_file_name("upload.bin");
        let mut file = std::fs::File::create(&path).unwrap();
        std::io::copy(&mut payload_bytes(MIB_100), &mut file).unwrap();
        UploadFile(path)
    }
}

impl Drop for UploadFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn proxied_rows(balancer: &Balancer) -> Vec<serde_json::Value> {
    balancer
        .json("flows")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["service"] == "proxied")
        .cloned()
        .collect()
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn curl_wrk_and_100_mib_both_ways_through_the_syn_proxy() {
    let balancer = start_syn_proxied(&SERVER_IPS, "");
    let out = client_sh(
        &balancer,
        &format!(
            "ok=0; for i in $(seq 1 30); do curl -fsS --max-time 5 -H 'Connection: close' {} \
             >/dev/null && ok=$((ok+1)); done; echo $ok",
            url("/")
        ),
    );
    assert_eq!(out.trim(), "30", "curl requests through the SYN proxy");
    let counter = |name| balancer.counter(name).unwrap();
    assert!(counter("synproxy_synack_sent") >= 30);
    assert!(counter("synproxy_cookie_valid") >= 30);
    assert!(counter("synproxy_server_done") >= 30);
    assert_eq!(counter("synproxy_cookie_invalid"), 0);
    assert_eq!(counter("synproxy_server_failed"), 0);

    // wrk: keep-alive connections, many requests each.
    let out = client_sh(
        &balancer,
        &format!("wrk -t1 -c8 -d2s --timeout 2s {}", url("/")),
    );
    let requests: u64 = out
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ")?.0.parse().ok())
        .unwrap_or_else(|| panic!("wrk output: {out}"));
    assert!(requests > 100, "wrk made {requests} requests: {out}");
    assert!(
        !out.contains("Socket errors") && !out.contains("Non-2xx"),
        "wrk saw errors: {out}"
    );

    // Proxied connections show SEQ (the cookie) and, once spliced, DELTA.
    let rows = proxied_rows(&balancer);
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|f| f["proxy"]["seq"].is_u64()), "{rows:?}");
    let spliced = rows
        .iter()
        .filter(|f| f["proxy"]["delta"].as_u64().is_some_and(|d| d != 0))
        .count();
    assert!(spliced > 0, "no row with a DELTA among {} rows", rows.len());
    let text = balancer.cli(&["flows"]).unwrap();
    assert!(
        text.contains("SEQ") && text.contains("DELTA") && text.contains("TIMESTAMP"),
        "{text}"
    );

    let upload = UploadFile::new(&balancer);
    transfer_both_ways(&balancer, &upload.0);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn transfers_survive_1_percent_loss_with_retransmission_and_sack() {
    let balancer = start_syn_proxied(&SERVER_IPS, "");
    // 1 % of the client's packets lost each way, in its own namespace. Netfilter sees
    // GSO and GRO aggregates, so both are held to one segment per skb (GRO itself stays
    // on: the veth needs it to receive the balancer's XDP frames).
    client_sh(
        &balancer,
        "ip link set dev eth0 gso_max_size 1500 gro_max_size 1 && \
         nft add table inet lossy && \
         nft add chain inet lossy in '{ type filter hook input priority 0; }' && \
         nft add chain inet lossy out '{ type filter hook output priority 0; }' && \
         nft add rule inet lossy in numgen random mod 100 '<' 1 counter drop && \
         nft add rule inet lossy out numgen random mod 100 '<' 1 counter drop",
    );
    // A drop in the sender's own output path is reported to its TCP as a failed send
    // and sent again as new data, never as a loss. So that the client's segments are
    // really lost on the wire (and the servers SACK them), 1 % of the frames the
    // servers' bridge forwards are dropped too.
    balancer
        .topo
        .exec(
            Role::Switch,
            &[
                "sh",
                "-c",
                "nft add table bridge lossy && \
                 nft add chain bridge lossy forwarded '{ type filter hook forward priority 0; }' && \
                 nft add rule bridge lossy forwarded numgen random mod 100 '<' 1 counter drop",
            ],
        )
        .unwrap();
    let upload = UploadFile::new(&balancer);
    transfer_both_ways(&balancer, &upload.0);

    let dropped = client_sh(&balancer, "nft list table inet lossy");
    let bridge = balancer
        .topo
        .exec(Role::Switch, &["nft", "list", "table", "bridge", "lossy"])
        .unwrap();
    let dropped = format!("{dropped}{}", String::from_utf8_lossy(&bridge.stdout));
    const NAMES: [&str; 4] = [
        "TcpRetransSegs",
        "TcpExtTCPSackRecovery",
        "TcpExtTCPRenoRecovery",
        "TcpExtTCPSACKDiscard",
    ];
    let client_counters = nstat(&balancer, Role::Client, &NAMES);
    let client: BTreeMap<&str, u64> = NAMES
        .iter()
        .map(|name| (*name, client_counters.get(*name).copied().unwrap_or(0)))
        .collect();
    let servers: BTreeMap<&str, u64> = NAMES
        .iter()
        .map(|name| (*name, sum_over_servers(&balancer, name)))
        .collect();
    eprintln!("client {client:?}, servers {servers:?}, {dropped}");
    // Both sides lost segments, retransmitted them and recovered with SACK, never with
    // plain Reno: SACK was negotiated through the proxy. The servers' recoveries use
    // the client's SACK blocks shifted into their sequence space; none was discarded
    // as out of window.
    for (side, value) in [("client", &client), ("servers", &servers)] {
        assert!(
            value["TcpRetransSegs"] > 0,
            "{side}: {client:?} {servers:?}"
        );
        assert!(
            value["TcpExtTCPSackRecovery"] > 0,
            "{side}: {client:?} {servers:?}"
        );
        assert_eq!(value["TcpExtTCPRenoRecovery"], 0, "{side}");
        assert_eq!(value["TcpExtTCPSACKDiscard"], 0, "{side}");
    }
}

/// Packets the client's link dropped on send (`tx_dropped`): a veth drops what its XDP
/// peer's ring cannot take.
fn client_tx_dropped(balancer: &Balancer) -> u64 {
    let out = balancer
        .topo
        .exec(
            Role::Client,
            &["ip", "-j", "-s", "link", "show", testbed::CLIENT_IF],
        )
        .unwrap();
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    links[0]["stats64"]["tx"]["dropped"].as_u64().unwrap()
}

/// Sends `count` SYNs from random sources in 198.18.128.0/17 through a raw socket in
/// namespace `ns`. Returns how many the kernel accepted.
fn syn_flood(ns: &str, count: u32) -> u32 {
    run_in_netns(ns, move || {
        // SAFETY: plain socket syscalls on a socket this closure owns.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            let vip = SocketAddrV4::new(testbed::VIP, PROXY_PORT);
            let dst = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from(testbed::VIP).to_be(),
                },
                sin_zero: [0; 8],
            };
            // xorshift: a different source for every SYN, no dependency needed.
            let mut state = 0x9e37_79b9u32 ^ std::process::id();
            let mut sent = 0;
            for _ in 0..count {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let src = Ipv4Addr::from(0xc612_8000 | (state & 0x7fff));
                let packet = flood::spoofed_syn(src, 1024 + (state >> 17) as u16, vip, state);
                let rc = libc::sendto(
                    fd,
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&raw const dst).cast(),
                    size_of::<libc::sockaddr_in>() as u32,
                );
                if rc == packet.len() as isize {
                    sent += 1;
                } else {
                    // ENOBUFS: the queue is full; give it a moment.
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
            libc::close(fd);
            sent
        }
    })
    .expect("enter client ns")
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_spoofed_syn_flood_costs_no_flow_entries_and_real_clients_get_through() {
    const FLOOD: u32 = 200_000;
    let balancer = start_syn_proxied(&SERVER_IPS, "");
    let flows_before = balancer.json("flows").unwrap().as_array().unwrap().len();
    let synacks_before = balancer.counter("synproxy_synack_sent").unwrap();
    let lost_before = client_tx_dropped(&balancer);

    // A real client makes requests for as long as the flood lasts.
    let flooding = Arc::new(AtomicBool::new(true));
    let client_ns = balancer.topo.ns(Role::Client);
    let real = {
        let (flooding, ns) = (flooding.clone(), client_ns.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let vip = SocketAddrV4::new(testbed::VIP, PROXY_PORT);
            while flooding.load(Ordering::SeqCst) || ok + (failed.len() as u32) < 100 {
                match http_get(&ns, vip, "/", Duration::from_secs(5)) {
                    Ok(r) if r.status == 200 => ok += 1,
                    Ok(r) => failed.push(format!("status {}", r.status)),
                    Err(e) => failed.push(format!("{e:#}")),
                }
            }
            (ok, failed)
        })
    };
    let started = Instant::now();
    let sent = syn_flood(&client_ns, FLOOD);
    let flood_time = started.elapsed();
    // The flood's SYN-ACKs are answered while the table is looked at.
    let flows_during = balancer.json("flows").unwrap().as_array().unwrap().len();
    flooding.store(false, Ordering::SeqCst);
    let (ok, failed) = real.join().unwrap();

    assert_eq!(sent, FLOOD, "every spoofed SYN left the client");
    // A veth whose peer runs XDP drops what does not fit its ring before XDP sees it: those
    // SYNs never reached the balancer, so they are owed no SYN-ACK.
    let lost_on_link = client_tx_dropped(&balancer) - lost_before;
    let synacks = balancer.counter("synproxy_synack_sent").unwrap() - synacks_before;
    assert!(
        synacks + lost_on_link >= u64::from(FLOOD) && lost_on_link * 10 <= u64::from(FLOOD),
        "{synacks} SYN-ACKs for {FLOOD} spoofed SYNs ({lost_on_link} lost on the link) \
         in {flood_time:?}: {}",
        balancer.json("stats").unwrap()["counters"]
    );
    let total = ok + failed.len() as u32;
    assert!(
        u64::from(ok) * 100 >= u64::from(total) * 99,
        "{ok} of {total} real requests succeeded during the flood: {failed:?}"
    );
    // Only real connections are in the table: at most one row each.
    let flows_after = balancer.json("flows").unwrap().as_array().unwrap().len();
    for flows in [flows_during, flows_after] {
        assert!(
            flows <= flows_before + total as usize,
            "{flows} flows after the flood ({flows_before} before, {total} real requests)"
        );
    }
    eprintln!(
        "flood: {FLOOD} SYNs in {flood_time:?} ({lost_on_link} lost on the link), \
         {ok}/{total} real requests ok, \
         flows {flows_before} → {flows_during} → {flows_after}"
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_server_that_never_answers_resets_the_client_and_leaks_no_entry() {
    // s1 swallows every SYN to :80, so its server side never opens.
    let balancer = start_syn_proxied(&SERVER_IPS[..1], "[timeouts]\ntcp_syn = 5\n");
    balancer
        .topo
        .exec(
            Role::Server(1),
            &[
                "sh",
                "-c",
                "nft add table inet silent && \
                 nft add chain inet silent in '{ type filter hook input priority 0; }' && \
                 nft add rule inet silent in tcp dport 80 drop",
            ],
        )
        .unwrap();
    let started = Instant::now();
    let out = balancer
        .client(&[
            "curl",
            "-sS",
            "--max-time",
            "15",
            "-H",
            "Connection: close",
            &url("/"),
        ])
        .unwrap();
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The client's handshake with the balancer completes; its request is dropped for
    // retransmission until the server side times out, then it is reset.
    assert!(!out.status.success());
    assert!(
        stderr.contains("reset"),
        "curl should see a reset, got: {stderr}"
    );
    assert!(
        elapsed >= Duration::from_secs(3) && elapsed < Duration::from_secs(14),
        "reset after {elapsed:?}"
    );
    assert!(balancer.counter("synproxy_server_failed").unwrap() >= 1);
    assert!(balancer.counter("synproxy_client_early").unwrap() >= 1);
    assert!(
        proxied_rows(&balancer).is_empty(),
        "pair removed by the reset"
    );
}
