//! Group 2 (end to end over veth) and the start-up half of group 3, on the netns testbed:
//! client → LB namespace → bridge → s1..s3.
//!
//! Configurations, all over the same servers in the same run:
//! - kernel routing: the LB namespace only routes; the client addresses the servers
//!   directly (no load balancing: the ceiling of this testbed);
//! - nftables: what an operator would write for the same job as lb's full-NAT: DNAT by
//!   `jhash` of the 5-tuple over the three servers, and SNAT to the balancer's internal
//!   address, with conntrack;
//! - lb native / lb generic: `lb run` (full-NAT) attached in that XDP mode.
//!
//! (IPVS would be a fourth baseline; it is left out where the kernel has no `ip_vs`, as
//! this machine kind's kernel has not.)
//!
//! Tools: trafgen (64-byte UDP payloads over a fixed set of 1,004 source ports, so that
//! conntrack-based baselines meet a steady set of flows rather than a new one per packet;
//! counted as packets received on the servers' interfaces), iperf3 (servers spawned in
//! s1, ended by PID; its service has s1 as only backend, since iperf3's streams must meet
//! one server), wrk against nginx (Debian's nginx-light, one worker per server) serving a
//! small file: with `Connection: close` (one new TCP connection per request) and with
//! keep-alive.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use super::model::{E2eCell, E2eResults, E2eRow, Startup};
use lb_testbed::{self as testbed, Role, SERVER_IPS, Topology, VIP, daemon};

const UDP_SINK_PORT: u16 = 9;
const IPERF_PORT: u16 = 5201;
/// Port of the nginx backends (the testbed's own HTTP servers keep port 80).
const NGINX_PORT: u16 = 8080;

pub struct E2eParams {
    pub runs: usize,
    pub seconds: u64,
    pub lb_binary: PathBuf,
    pub out_dir: PathBuf,
    pub startup: Vec<(usize, usize)>,
}

#[derive(Clone, Copy, PartialEq)]
enum Setup {
    Routing,
    Nftables,
    LbNative,
    LbGeneric,
}

impl Setup {
    fn label(self) -> &'static str {
        match self {
            Setup::Routing => "kernel routing",
            Setup::Nftables => "nftables full-NAT",
            Setup::LbNative => "lb native XDP",
            Setup::LbGeneric => "lb generic XDP",
        }
    }
}

fn lb_config(name: &str, services_extra: &str) -> String {
    let mut text = format!(
        "name = \"{name}\"\n[interfaces]\nattach = [\"lb-ext\", \"lb-int\"]\n\
         [control]\nsocket = \"/run/lb/{name}.sock\"\n"
    );
    text.push_str(services_extra);
    for (svc, port, proto, servers) in [
        ("udp-sink", UDP_SINK_PORT, "udp", &SERVER_IPS[..]),
        ("web", NGINX_PORT, "tcp", &SERVER_IPS[..]),
        ("iperf", IPERF_PORT, "tcp", &SERVER_IPS[..1]),
        ("dns-like", 5353, "udp", &SERVER_IPS[..]),
    ] {
        text.push_str(&format!(
            "[[service]]\nname = \"{svc}\"\nvip = \"{VIP}\"\nport = {port}\nprotocol = \"{proto}\"\nsnat_ip = \"{}\"\n",
            testbed::SNAT_IP
        ));
        for ip in servers {
            text.push_str(&format!("[[service.backend]]\naddress = \"{ip}\"\n"));
        }
    }
    text
}

/// The nftables baseline: DNAT spread by a hash of the 5-tuple (each connection keeps
/// its server, as with lb's Maglev) and SNAT to the address lb uses toward the servers,
/// i.e. the same full-NAT lb does, with conntrack doing the state.
fn nft_ruleset() -> String {
    let map = |l4: &str| {
        format!(
            "jhash ip saddr . {l4} sport . ip daddr . {l4} dport mod 3 map {{ 0 : {}, 1 : {}, 2 : {} }}",
            SERVER_IPS[0], SERVER_IPS[1], SERVER_IPS[2]
        )
    };
    format!(
        "table ip lbbench {{\n chain pre {{\n  type nat hook prerouting priority dstnat;\n  \
         ip daddr {VIP} udp dport {UDP_SINK_PORT} dnat to {}\n  \
         ip daddr {VIP} tcp dport {NGINX_PORT} dnat to {}\n  \
         ip daddr {VIP} tcp dport {IPERF_PORT} dnat to {}\n }}\n \
         chain post {{\n  type nat hook postrouting priority srcnat;\n  \
         ct status dnat oifname \"{}\" snat to {}\n }}\n}}\n",
        map("udp"),
        map("tcp"),
        SERVER_IPS[0],
        testbed::LB_INT_IF,
        testbed::SNAT_IP
    )
}

/// Static file every nginx backend serves (a small page, as a health or API answer).
const NGINX_BODY_BYTES: usize = 612;

/// Starts nginx in each server namespace, listening on the server's address,
/// one worker each (two cores for three servers, the balancer and the client). Returns
/// the PIDs, to be ended by the caller.
fn start_nginx(topo: &Topology, dir: &Path) -> Result<Vec<u32>> {
    let mut pids = Vec::new();
    for (i, ip) in SERVER_IPS.iter().enumerate() {
        let root = dir.join(format!("nginx-s{}", i + 1));
        let www = root.join("www");
        std::fs::create_dir_all(&www)?;
        std::fs::write(www.join("index.html"), vec![b'x'; NGINX_BODY_BYTES])?;
        let root_s = root.to_string_lossy();
        let conf = format!(
            "worker_processes 1;\npid {root_s}/nginx.pid;\nerror_log {root_s}/error.log warn;\n\
             events {{ worker_connections 8192; }}\n\
             http {{\n access_log off;\n keepalive_requests 1000000;\n\
             client_body_temp_path {root_s}/body;\n\
             server {{\n  listen {ip}:{NGINX_PORT} backlog=4096;\n  root {root_s}/www;\n }}\n}}\n"
        );
        let conf_path = root.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let pid = topo.spawn_logged(
            Role::Server(i + 1),
            &[
                "nginx",
                "-p",
                &root_s,
                "-c",
                &conf_path.to_string_lossy(),
                "-g",
                "daemon off;",
            ],
            &root.join("stdout.log"),
        )?;
        pids.push(pid);
    }
    // Answering on every server before any measurement starts.
    let deadline = Instant::now() + Duration::from_secs(10);
    for ip in SERVER_IPS {
        let url = format!("http://{ip}:{NGINX_PORT}/");
        loop {
            let out = topo.exec_unchecked(
                Role::Client,
                &["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", &url],
            )?;
            if out.stdout == b"200" {
                break;
            }
            ensure!(Instant::now() < deadline, "nginx on {ip} does not answer");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(pids)
}

struct Daemon {
    pid: u32,
    socket: String,
}

fn start_lb(
    topo: &Topology,
    lb: &Path,
    config: &Path,
    mode: &str,
    log: &Path,
    socket: &str,
) -> Result<Daemon> {
    let pid = daemon::spawn_lb_run(topo, lb, config, "warn", &["--xdp-mode", mode], log)?;
    daemon::wait_until_answering(
        topo,
        pid,
        lb,
        socket,
        Duration::from_secs(600),
        Duration::from_millis(50),
    )
    .with_context(|| std::fs::read_to_string(log).unwrap_or_default())?;
    Ok(Daemon {
        pid,
        socket: socket.to_string(),
    })
}

fn rx_packets(topo: &Topology, role: Role) -> Result<u64> {
    let out = topo.exec(role, &["ip", "-j", "-s", "link", "show", "dev", "eth0"])?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    v[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .context("no rx packets in `ip -j -s link`")
}

fn servers_rx(topo: &Topology) -> Result<u64> {
    let mut sum = 0;
    for role in [Role::Server(1), Role::Server(2), Role::Server(3)] {
        sum += rx_packets(topo, role)?;
    }
    Ok(sum)
}

fn mac_of(topo: &Topology, role: Role, ifname: &str) -> Result<String> {
    let out = topo.exec(role, &["ip", "-j", "link", "show", "dev", ifname])?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    Ok(v[0]["address"].as_str().context("no MAC")?.to_string())
}

/// trafgen config: Ethernet/IPv4/UDP, 64-byte payload, IP checksum recomputed per
/// packet, UDP checksum 0 (none). The source port cycles through a fixed set: high byte
/// 4..=7 and low byte 0..=250 step together, periods 4 and 251 (coprime), so 1,004 ports
/// from 1024 on: a steady set of flows, as real clients give, not one new flow per packet.
fn trafgen_conf(dst_mac: &str, src_mac: &str, dst: Option<std::net::Ipv4Addr>) -> String {
    let hex = |mac: &str| {
        mac.split(':')
            .map(|b| format!("0x{b}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let c = testbed::CLIENT_IP.octets();
    let dst_bytes = match dst {
        Some(ip) => {
            let o = ip.octets();
            format!("{}, {}, {}, {}", o[0], o[1], o[2], o[3])
        }
        // Routing: spread over the three servers (198.19.0.11..13).
        None => "198, 19, 0, dinc(11, 13, 1)".into(),
    };
    format!(
        "{{\n {}, {}, 0x08, 0x00,\n 0x45, 0x00, const16(92), const16(0), 0x40, 0x00, 64, 17, csumip(14, 33),\n \
         {}, {}, {}, {}, {dst_bytes},\n dinc(4, 7, 1), dinc(0, 250, 1), const16({UDP_SINK_PORT}), const16(72), const16(0),\n fill(0x42, 64)\n}}\n",
        hex(dst_mac),
        hex(src_mac),
        c[0],
        c[1],
        c[2],
        c[3]
    )
}

fn udp_rate(topo: &Topology, setup: Setup, seconds: u64, dir: &Path) -> Result<f64> {
    let lb_mac = mac_of(topo, Role::Lb, testbed::LB_EXT_IF)?;
    let client_mac = mac_of(topo, Role::Client, testbed::CLIENT_IF)?;
    let dst = if setup == Setup::Routing {
        None
    } else {
        Some(VIP)
    };
    let conf = dir.join("trafgen.cfg");
    std::fs::write(&conf, trafgen_conf(&lb_mac, &client_mac, dst))?;
    let conf_s = conf.to_string_lossy();
    let pid = topo.spawn_logged(
        Role::Client,
        &[
            "trafgen",
            "--dev",
            testbed::CLIENT_IF,
            "--conf",
            &conf_s,
            "--cpus",
            "1",
            "--no-sock-mem",
            "-q",
        ],
        &dir.join("trafgen.log"),
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let (start, t0) = (servers_rx(topo)?, Instant::now());
    std::thread::sleep(Duration::from_secs(seconds));
    let (end, t1) = (servers_rx(topo)?, Instant::now());
    let exited = topo.try_wait_child(pid)?;
    let _ = topo.stop_child(pid);
    ensure!(
        exited.is_none(),
        "trafgen exited early: {}",
        std::fs::read_to_string(dir.join("trafgen.log")).unwrap_or_default()
    );
    Ok((end - start) as f64 / (t1 - t0).as_secs_f64())
}

fn iperf(topo: &Topology, setup: Setup, seconds: u64, streams: u32) -> Result<f64> {
    let target = if setup == Setup::Routing {
        SERVER_IPS[0]
    } else {
        VIP
    };
    let out = topo.exec(
        Role::Client,
        &[
            "iperf3",
            "-c",
            &target.to_string(),
            "-p",
            &IPERF_PORT.to_string(),
            "-t",
            &seconds.to_string(),
            "-P",
            &streams.to_string(),
            "-J",
        ],
    )?;
    let v: Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3: no sum_received")
}

/// HTTP requests per second by wrk against the web service: with `close`, every request
/// opens a new TCP connection (the connection rate); without, connections are kept.
fn http_rate(topo: &Topology, setup: Setup, seconds: u64, close: bool) -> Result<f64> {
    let target = if setup == Setup::Routing {
        SERVER_IPS[0]
    } else {
        VIP
    };
    let url = format!("http://{target}:{NGINX_PORT}/");
    let duration = format!("{seconds}s");
    let mut args = vec!["wrk", "-t", "2", "-c", "32", "-d", &duration];
    if close {
        args.extend(["-H", "Connection: close"]);
    }
    args.push(&url);
    let out = topo.exec(Role::Client, &args)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let errors = text
        .lines()
        .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"));
    let rate = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("wrk output without Requests/sec: {text}"))?;
    if let Some(e) = errors {
        eprintln!("bench: wrk ({}) reported: {}", setup.label(), e.trim());
    }
    Ok(rate)
}

/// A new testbed with the e2e group's servers: the testbed's own (UDP echo for the
/// start-up measurement), nginx, and iperf3 in s1. Returns it and the servers' PIDs.
fn fresh_testbed(prefix: &str, dir: &Path) -> Result<(Topology, Vec<u32>)> {
    let mut topo = Topology::up(prefix)?;
    // The testbed's own HTTP servers (a thread per connection) would bound the connection
    // rate before any balancer does: the web backends here are nginx, on their own port.
    topo.start_servers()?;
    let mut servers = start_nginx(&topo, dir)?;
    servers.push(topo.spawn_logged(
        Role::Server(1),
        &["iperf3", "-s", "-p", &IPERF_PORT.to_string()],
        &dir.join("iperf3-server.log"),
    )?);
    std::thread::sleep(Duration::from_millis(300));
    Ok((topo, servers))
}

fn stop_all(topo: &Topology, pids: &[u32]) {
    for &pid in pids {
        let _ = topo.stop_child(pid);
    }
}

pub fn run(p: &E2eParams) -> Result<(E2eResults, Vec<Startup>)> {
    let prefix = testbed::unique_prefix();
    let dir = p.out_dir.join("e2e");
    std::fs::create_dir_all(&dir)?;
    // The testbed forwards with ip_forward=1; the servers route back through the LB.
    let setups = [
        Setup::Routing,
        Setup::Nftables,
        Setup::LbNative,
        Setup::LbGeneric,
    ];
    let metrics = [
        "UDP 64 B payload",
        "TCP 1 stream",
        "TCP 4 streams",
        "new TCP connections",
        "HTTP requests, keep-alive",
    ];
    let units = ["packets/s", "bit/s", "bit/s", "conn/s", "req/s"];
    let mut samples: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); setups.len()]; metrics.len()];
    let mut notes = Vec::new();
    let config_path = dir.join("lb.toml");
    std::fs::write(&config_path, lb_config(&prefix, ""))?;
    let socket = format!("/run/lb/{prefix}.sock");
    for (si, &setup) in setups.iter().enumerate() {
        // Each configuration gets a fresh testbed: the servers' TIME_WAIT sockets (60 s)
        // from the previous configuration's connections, under other source ports,
        // would otherwise meet this one's SYNs.
        let (mut topo, servers) = fresh_testbed(&prefix, &dir)?;
        let mut daemon = None;
        match setup {
            Setup::Routing => {}
            Setup::Nftables => {
                let rules = dir.join("nft.rules");
                std::fs::write(&rules, nft_ruleset())?;
                topo.exec(Role::Lb, &["nft", "-f", &rules.to_string_lossy()])?;
            }
            Setup::LbNative | Setup::LbGeneric => {
                let mode = if setup == Setup::LbNative {
                    "native"
                } else {
                    "generic"
                };
                daemon = Some(start_lb(
                    &topo,
                    &p.lb_binary,
                    &config_path,
                    mode,
                    &dir.join(format!("lb-{mode}.log")),
                    &socket,
                )?);
            }
        }
        for run in 0..p.runs {
            println!("bench: e2e {} run {}/{}", setup.label(), run + 1, p.runs);
            let results = [
                udp_rate(&topo, setup, p.seconds, &dir),
                iperf(&topo, setup, p.seconds, 1),
                iperf(&topo, setup, p.seconds, 4),
                http_rate(&topo, setup, p.seconds, true),
                http_rate(&topo, setup, p.seconds, false),
            ];
            for (mi, r) in results.into_iter().enumerate() {
                match r {
                    Ok(v) => samples[mi][si].push(v),
                    Err(e) => notes.push(format!("{} / {}: {e:#}", setup.label(), metrics[mi])),
                }
            }
        }
        if setup == Setup::Nftables {
            topo.exec(Role::Lb, &["nft", "delete", "table", "ip", "lbbench"])?;
        }
        if let Some(d) = daemon.take() {
            let status = topo.stop_child(d.pid)?;
            ensure!(status.success(), "lb did not exit cleanly: {status}");
            let _ = d.socket;
        }
        stop_all(&topo, &servers);
        topo.teardown();
    }

    let (mut topo, servers) = fresh_testbed(&prefix, &dir)?;
    stop_all(&topo, &servers);
    let mut startup = Vec::new();
    for &(services, backends) in &p.startup {
        startup.push(measure_startup(
            &topo, p, &prefix, services, backends, &dir,
        )?);
    }
    topo.teardown();

    let e2e = E2eResults {
        configs: setups.iter().map(|s| s.label().to_string()).collect(),
        rows: metrics
            .iter()
            .zip(units)
            .enumerate()
            .map(|(mi, (m, u))| E2eRow {
                metric: m.to_string(),
                unit: u.to_string(),
                cells: samples[mi]
                    .iter()
                    .map(|s| (!s.is_empty()).then(|| E2eCell::new(s.clone())))
                    .collect(),
            })
            .collect(),
        notes,
    };
    Ok((e2e, startup))
}

/// Time from spawning `lb run` with `services` services and `backends` backends in the
/// config to the first UDP answer through the balancer (native mode).
fn measure_startup(
    topo: &Topology,
    p: &E2eParams,
    prefix: &str,
    services: usize,
    backends: usize,
    dir: &Path,
) -> Result<Startup> {
    let fillers = services.saturating_sub(4);
    let per_service = if fillers > 0 {
        backends.div_ceil(fillers)
    } else {
        0
    };
    // Each filler service gets a ring sized for its backends; the testbed's own
    // services get room for the largest rings.
    let ring_slots =
        fillers * 2 * lb_userspace::maglev::ring_size_for(&vec![1; per_service]) as usize
            + 4 * 2 * lb_common::MAGLEV_RING_SIZE as usize;
    let mut extra = format!(
        "[limits]\nmax_services = {}\nmax_backends = {}\nmax_ring_slots = {ring_slots}\n",
        services + 4,
        fillers * per_service + 16
    );
    let mut next = 0usize;
    for s in 0..fillers {
        extra.push_str(&format!(
            "[[service]]\nname = \"filler{s}\"\nvip = \"198.18.2.{}\"\nport = {}\nprotocol = \"tcp\"\nsnat_ip = \"{}\"\n",
            1 + s / 50000,
            1000 + s % 50000,
            testbed::SNAT_IP
        ));
        for _ in 0..per_service {
            // Distinct (address, port) backends: 40,000 addresses from 198.19.16.0,
            // then the next port (never contacted).
            let a = 16 * 256 + next % 40_000;
            extra.push_str(&format!(
                "[[service.backend]]\naddress = \"198.19.{}.{}\"\nport = {}\n",
                a / 256,
                a % 256,
                8000 + next / 40_000
            ));
            next += 1;
        }
    }
    let path = dir.join(format!("lb-startup-{services}.toml"));
    std::fs::write(&path, lb_config(prefix, &extra))?;
    let socket = format!("/run/lb/{prefix}.sock");
    let sock = testbed::run_in_netns(&topo.ns(Role::Client), || {
        std::net::UdpSocket::bind("0.0.0.0:0")
    })??;
    sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    let start = Instant::now();
    let log = dir.join(format!("lb-startup-{services}.log"));
    let pid = daemon::spawn_lb_run(
        topo,
        &p.lb_binary,
        &path,
        "warn",
        &["--xdp-mode", "native"],
        &log,
    )?;
    let mut seconds = None;
    let mut buf = [0u8; 256];
    while start.elapsed() < Duration::from_secs(900) {
        if topo.try_wait_child(pid)?.is_some() {
            break;
        }
        let _ = sock.send_to(b"ping", (VIP, 5353));
        if let Ok((n, _)) = sock.recv_from(&mut buf)
            && buf[..n].ends_with(b"ping")
        {
            seconds = Some(start.elapsed().as_secs_f64());
            break;
        }
    }
    let _ = topo.stop_child(pid);
    let note = match seconds {
        Some(_) => format!(
            "rings of {} slots each, written through mmap; max_ring_slots = {ring_slots}",
            lb_userspace::maglev::ring_size_for(&vec![1; per_service])
        ),
        None => format!(
            "no answer; log: {}",
            std::fs::read_to_string(&log).unwrap_or_default().trim()
        ),
    };
    let _ = socket;
    Ok(Startup {
        services,
        backends,
        seconds,
        note,
    })
}
