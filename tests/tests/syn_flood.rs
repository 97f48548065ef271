//! A spoofed SYN flood against a full-NAT service without `syn_proxy`: with automatic
//! SYN cookies (the default) real clients keep being served and the flow table empties
//! within `tcp_syn` of the flood's end; with them off, the same flood exhausts the SNAT
//! port space and real requests fail (docs/architecture.md, "SYN floods").
//!
//! The flood comes from a second client namespace (`lb_testbed::flood`), 20,000 SYNs a
//! second for 5 s from random sources in 198.18.128.0/17, while the real client makes
//! one request after another. Both tests use a SNAT range of 16,384 ports (per
//! backend: 49,152 pairs in all), so that without cookies the flood fills the port
//! space within its 5 s as it would the full range in a longer one. With cookies,
//! `tcp_syn = 3` shows the table emptying; without, the default `tcp_syn` of 30 s keeps
//! the flood's pairs, as in the reported incident, and the requests right after the
//! flood fail (`tcp_closing = 30` too, so that the real connections closed before do
//! not free ports for them). Four SNAT addresses (`snat_ips`) hold the same flood
//! without cookies: the operator sizes the port space.
//!
//! Needs root: run with `cargo xtask test` (or `cargo test -- --ignored --test-threads=1`).

use std::{
    net::SocketAddrV4,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use lb_integration::{Balancer, config_toml};
use lb_testbed::{
    self as testbed, Role,
    flood::{Flooder, LB_FLOOD_IF, is_spoofed},
    http_get,
};
use serde_json::Value;

const RATE: u32 = 20_000;
const FLOOD_FOR: Duration = Duration::from_secs(5);
const TCP_SYN_SECS: u64 = 3;
/// Requests made once the flood is over, each with this timeout.
const REQUESTS_AFTER: u32 = 5;
const AFTER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the GC may take past a timeout: it runs every second (a pass on a loaded
/// machine can take a good part of one more).
const GC_SLACK: Duration = Duration::from_secs(5);
/// The servers retransmit a SYN-ACK once (`tcp_synack_retries = 1`), 1 s after the
/// first: that packet refreshes the half-open pair, so it expires `tcp_syn` after it.
/// With the default five retries the last refresh would come 31 s after the SYN.
const SYNACK_RETRANSMIT: Duration = Duration::from_secs(1);

/// A namespace prefix of this part's own (`fl…`), unique while this process lives.
fn prefix() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "fl{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The standard config, also attached to the flood's link, with `web_keys` in the
/// `web` service and `timeouts` as the `[timeouts]` table.
fn start(web_keys: &str, timeouts: &str) -> (Flooder, Balancer) {
    start_with_snat(web_keys, timeouts, &[])
}

/// `start` with `extra_snat` addresses also on the LB's `lo` (for `snat_ips`).
fn start_with_snat(
    web_keys: &str,
    timeouts: &str,
    extra_snat: &'static [&'static str],
) -> (Flooder, Balancer) {
    let prefix = prefix();
    let extra = format!("[timeouts]\n{timeouts}\n[snat]\nport_min = 1024\nport_max = 17407\n");
    let config = config_toml(&prefix, [1, 1, 1], &extra)
        .replacen(
            "attach = [\"lb-ext\", \"lb-int\"]",
            &format!("attach = [\"lb-ext\", \"lb-int\", \"{LB_FLOOD_IF}\"]"),
            1,
        )
        .replacen(
            "name = \"web\"\n",
            &format!("name = \"web\"\n{web_keys}\n"),
            1,
        );
    // snat_ips replaces web's snat_ip (the first in the file).
    let config = if web_keys.contains("snat_ips") {
        config.replacen(&format!("snat_ip = \"{}\"\n", testbed::SNAT_IP), "", 1)
    } else {
        config
    };
    Balancer::start_prepared(&prefix, &config, testbed::Options::default(), |topo| {
        for i in 1..=testbed::SERVER_COUNT {
            topo.exec(
                Role::Server(i),
                &["sysctl", "-qw", "net.ipv4.tcp_synack_retries=1"],
            )?;
        }
        for addr in extra_snat {
            topo.exec(
                Role::Lb,
                &["ip", "addr", "add", &format!("{addr}/32"), "dev", "lo"],
            )?;
        }
        Flooder::attach(topo)
    })
    .expect("start testbed and lb")
}

/// Real requests, one after another, until `stop` is set; (ok, failures).
fn real_client(
    balancer: &Balancer,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(u32, Vec<String>)> {
    let ns = balancer.topo.ns(Role::Client);
    std::thread::spawn(move || {
        let (mut ok, mut failed) = (0u32, Vec::new());
        let vip = SocketAddrV4::new(testbed::VIP, 80);
        while !stop.load(Ordering::SeqCst) {
            match http_get(&ns, vip, "/", Duration::from_secs(3)) {
                Ok(r) if r.status == 200 => ok += 1,
                Ok(r) => failed.push(format!("status {}", r.status)),
                Err(e) => failed.push(format!("{e:#}")),
            }
        }
        (ok, failed)
    })
}

/// The flood with real requests during it and for 2 s after; (ok, failures, when the
/// flood ended).
fn flood_with_real_requests(flooder: &Flooder, balancer: &Balancer) -> (u32, Vec<String>, Instant) {
    let stop = Arc::new(AtomicBool::new(false));
    let real = real_client(balancer, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    let target = SocketAddrV4::new(testbed::VIP, 80);
    let sent = flooder.syn_flood(target, RATE, FLOOD_FOR).expect("flood");
    let ended = Instant::now();
    let expected = u64::from(RATE) * FLOOD_FOR.as_secs();
    assert!(
        sent * 100 >= expected * 95,
        "only {sent} of {expected} spoofed SYNs left the flood namespace"
    );
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = real.join().expect("real client");
    (ok, failed, ended)
}

/// How many of `REQUESTS_AFTER` new requests succeed.
fn requests_after(balancer: &Balancer) -> u32 {
    let ns = balancer.topo.ns(Role::Client);
    let vip = SocketAddrV4::new(testbed::VIP, 80);
    (0..REQUESTS_AFTER)
        .filter(|_| http_get(&ns, vip, "/", AFTER_TIMEOUT).is_ok_and(|r| r.status == 200))
        .count() as u32
}

fn web_stats(balancer: &Balancer) -> Value {
    let stats = balancer.json("stats").expect("stats");
    stats["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|s| s["name"] == "web")
        .expect("web")
        .clone()
}

/// (all connections, those from spoofed sources) in `lb flows`.
fn flow_rows(balancer: &Balancer) -> (usize, usize) {
    let (rows, spoofed) = spoofed_rows(balancer);
    (rows, spoofed.len())
}

/// The number of connections in `lb flows`, and the rows of those from spoofed sources.
fn spoofed_rows(balancer: &Balancer) -> (usize, Vec<Value>) {
    let flows = balancer.json("flows").expect("flows");
    let rows = flows.as_array().expect("rows");
    let spoofed = rows
        .iter()
        .filter(|row| {
            row["client"]
                .as_str()
                .and_then(|c| c.parse::<SocketAddrV4>().ok())
                .is_some_and(|c| is_spoofed(*c.ip()))
        })
        .cloned()
        .collect();
    (rows.len(), spoofed)
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn with_automatic_syn_cookies_a_spoofed_flood_does_no_harm() {
    let (flooder, balancer) = start(
        "syn_cookie_threshold = 1000",
        &format!("tcp_syn = {TCP_SYN_SECS}"),
    );
    let (flows_before, _) = flow_rows(&balancer);
    let cookies_before = balancer.counter("synproxy_synack_sent").unwrap();

    let (ok, failed, ended) = flood_with_real_requests(&flooder, &balancer);

    let web = web_stats(&balancer);
    let counters = balancer.json("stats").unwrap()["counters"].clone();
    let total = ok + failed.len() as u32;
    assert!(
        total >= 50 && u64::from(ok) * 100 >= u64::from(total) * 99,
        "{ok} of {total} real requests succeeded: {failed:?}\nweb: {web}\ncounters: {counters}"
    );
    assert!(
        web["syn_cookies"]["switched_on"].as_u64() >= Some(1),
        "cookies never switched on: {web}\n{}",
        balancer.log()
    );
    let cookies = balancer.counter("synproxy_synack_sent").unwrap() - cookies_before;
    assert!(
        cookies >= u64::from(RATE),
        "only {cookies} SYNs answered with cookies: {web}"
    );
    // Only the pairs of the second before the switch took ports: a probe that missed
    // eight times in a row is rare at that fill.
    let exhausted = counters["drop_snat_exhausted"].as_u64().unwrap();
    let new_flows = counters["new_flows"].as_u64().unwrap();
    assert!(
        exhausted * 100 <= new_flows,
        "the SNAT port space held: {counters}"
    );
    assert_eq!(
        requests_after(&balancer),
        REQUESTS_AFTER,
        "requests after the flood"
    );

    // The flood's half-open pairs (from before the switch) expire after tcp_syn.
    let deadline = ended + SYNACK_RETRANSMIT + Duration::from_secs(TCP_SYN_SECS) + GC_SLACK;
    let (mut rows, mut spoofed) = flow_rows(&balancer);
    while spoofed > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        (rows, spoofed) = flow_rows(&balancer);
    }
    let (_, left) = spoofed_rows(&balancer);
    let left = &left[..left.len().min(5)];
    assert_eq!(
        spoofed,
        0,
        "{spoofed} flood connections left {:?} after the flood, e.g. {left:?}",
        ended.elapsed()
    );
    assert!(
        rows <= flows_before + total as usize,
        "{rows} connections in the table ({flows_before} before, {total} real requests)"
    );

    // Once the flood is over, SYNs open flows again (cookie ACKs still accepted).
    // The quiet spell starts once the pressure is low: the half-open pairs gone (just
    // seen) and the flood's cookies out of the window.
    let quiet_from = Instant::now().max(ended + Duration::from_secs(TCP_SYN_SECS));
    let deadline = quiet_from + lb_userspace::syn_cookies::QUIET + GC_SLACK * 2;
    let mut web = web_stats(&balancer);
    while web["syn_cookies"]["mode"] == "on" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        web = web_stats(&balancer);
    }
    assert_eq!(web["syn_cookies"]["mode"], "draining", "{web}");
    assert_eq!(web["syn_cookies"]["switched_off"], 1, "{web}");
    let sent = web["syn_cookies"]["sent"].as_u64().unwrap();
    balancer.curl("/").expect("a request after the flood");
    assert_eq!(
        web_stats(&balancer)["syn_cookies"]["sent"]
            .as_u64()
            .unwrap(),
        sent,
        "a SYN after the flood is not answered with a cookie"
    );
    eprintln!(
        "cookies: {ok}/{total} real requests ok, {cookies} cookies, flows {flows_before} → \
         {rows}; {}",
        web["syn_cookies"]
    );
    drop(balancer);
    drop(flooder);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn without_automatic_syn_cookies_the_same_flood_exhausts_the_snat_ports() {
    // The defaults' tcp_syn (30 s) keeps the flood's pairs; a tcp_closing as long keeps
    // the real connections made before the exhaustion from freeing their ports.
    let (flooder, balancer) = start("syn_cookies = \"off\"", "tcp_closing = 30");
    let (ok, failed, _) = flood_with_real_requests(&flooder, &balancer);
    let replaced = |balancer: &Balancer| balancer.counter("flow_replaced").unwrap();
    let replaced_before = replaced(&balancer);
    let after = requests_after(&balancer);
    // A request that reuses the client port of a closed connection replaces its pair and
    // gets that pair's SNAT port back (docs/architecture.md, "Source ports"): only a new
    // tuple meets the exhausted port space.
    let reused = replaced(&balancer) - replaced_before;

    let counters = balancer.json("stats").unwrap()["counters"].clone();
    let total = ok + failed.len() as u32;
    let exhausted = counters["drop_snat_exhausted"].as_u64().unwrap();
    assert!(
        exhausted > 0,
        "the flood did not exhaust the SNAT ports: {counters}"
    );
    // As reported: no new connection gets through once the port space is full.
    assert!(
        u64::from(after) <= 1 + reused,
        "{after} of {REQUESTS_AFTER} requests after the flood succeeded, {reused} of them on \
         a reused tuple: it should have hurt (counters: {counters})"
    );
    assert_eq!(web_stats(&balancer)["syn_cookies"]["mode"], "disabled");
    eprintln!(
        "no cookies: {ok}/{total} real requests ok during, {after}/{REQUESTS_AFTER} after; \
         drop_snat_exhausted {exhausted}"
    );
    drop(balancer);
    drop(flooder);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn four_snat_addresses_hold_the_same_flood_without_cookies() {
    // Four times the port space: the flood's 100,000 half-open pairs fit in 196,608.
    let (flooder, balancer) = start_with_snat(
        "syn_cookies = \"off\"\nsnat_ips = [\"198.19.1.1\", \"198.19.1.2\", \"198.19.1.3\", \"198.19.1.4\"]",
        "tcp_closing = 30",
        &["198.19.1.2", "198.19.1.3", "198.19.1.4"],
    );
    let (ok, failed, _) = flood_with_real_requests(&flooder, &balancer);
    let after = requests_after(&balancer);
    let counters = balancer.json("stats").unwrap()["counters"].clone();
    let total = ok + failed.len() as u32;
    let exhausted = counters["drop_snat_exhausted"].as_u64().unwrap();
    let new_flows = counters["new_flows"].as_u64().unwrap();
    assert!(
        exhausted * 100 <= new_flows,
        "{exhausted} flows found no SNAT port: {counters}"
    );
    assert_eq!(after, REQUESTS_AFTER, "requests after the flood");
    assert!(
        u64::from(ok) * 100 >= u64::from(total) * 99,
        "{ok} of {total} real requests succeeded: {failed:?}"
    );
    // Every address took its share of the flood.
    let flows = balancer.json("flows").unwrap();
    let mut per_address = std::collections::BTreeMap::new();
    for row in flows.as_array().unwrap() {
        let snat: SocketAddrV4 = row["snat"].as_str().unwrap().parse().unwrap();
        *per_address.entry(*snat.ip()).or_insert(0u64) += 1;
    }
    assert_eq!(per_address.len(), 4, "{per_address:?}");
    assert!(
        per_address.values().all(|&n| n * 8 >= new_flows),
        "{per_address:?} of {new_flows} new flows"
    );
    eprintln!(
        "four SNAT addresses: {ok}/{total} real requests ok, {after}/{REQUESTS_AFTER} after, \
         {per_address:?}"
    );
    drop(balancer);
    drop(flooder);
}
