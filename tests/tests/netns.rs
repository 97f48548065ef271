//! Integration tests: real TCP and UDP traffic from real clients (curl, std sockets)
//! through the XDP balancer attached in native mode, in network namespaces.
//!
//! Needs root: run with `cargo xtask test` (or `cargo test -- --ignored --test-threads=1`).

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddrV4, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use lb_common::{IPPROTO_TCP, hash::flow_hash};
use lb_integration::{Balancer, KeepAlive, SERVER_IPS, config_toml, server_of};
use lb_testbed::{self as testbed, Role, payload_sha256, run_in_netns, udp_request, unique_prefix};
use lb_userspace::maglev::{MaglevBackend, build_ring, ring_size_for};

const TIMEOUT: Duration = Duration::from_secs(10);

fn start(weights: [u32; 3], extra: &str) -> Balancer {
    let prefix = unique_prefix();
    let config = config_toml(&prefix, weights, extra);
    Balancer::start(&prefix, &config).expect("start testbed and lb")
}

fn flow_count(balancer: &Balancer) -> usize {
    balancer.json("flows").unwrap().as_array().unwrap().len()
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn attaches_natively_to_both_interfaces() {
    let balancer = start([1, 1, 1], "");
    let status = balancer.json("status").unwrap();
    let interfaces = status["interfaces"].as_array().unwrap();
    assert_eq!(interfaces.len(), 2);
    for interface in interfaces {
        assert_eq!(interface["mode"], "native", "{interface}");
    }
    assert!(std::path::Path::new(&format!("/sys/fs/bpf/{}/FLOWS", balancer.name)).exists());
}

/// 300 requests on new connections spread 2:1:1, and every connection went exactly
/// where the controller's Maglev ring says its 5-tuple belongs.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn http_requests_spread_by_weight() {
    // Closed connections stay listed for tcp_closing: long enough that the first of the
    // 300 is still there for the check below, however slowly a busy machine sends them.
    let balancer = start([2, 1, 1], "[timeouts]\ntcp_closing = 120");
    let mut answers = [0usize; 3];
    for i in 0..300 {
        let body = balancer
            .curl("/")
            .unwrap_or_else(|e| panic!("request {i}: {e:#}"));
        answers[server_of(&body).expect("server name") - 1] += 1;
    }
    let expected = [0.5, 0.25, 0.25];
    for (server, (&count, share)) in answers.iter().zip(expected).enumerate() {
        let got = count as f64 / 300.0;
        assert!(
            (got - share).abs() <= 0.15,
            "s{}: {count} of 300 ({:.1}%), expected {:.0}% ± 15 points; all: {answers:?}",
            server + 1,
            got * 100.0,
            share * 100.0
        );
    }
    // Every answer counted by the servers is a new flow in the balancer's counters.
    let stats = balancer.json("stats").unwrap();
    let web = &stats["services"][0];
    assert_eq!(web["name"], "web");
    assert_eq!(web["new_flows"], 300);
    let per_backend: Vec<u64> = web["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["new_flows"].as_u64().unwrap())
        .collect();
    assert_eq!(per_backend, answers.map(|a| a as u64).to_vec());
    assert_eq!(stats["counters"]["drop_no_flow"], 0);
    assert_eq!(stats["counters"]["drop_snat_exhausted"], 0);

    // The kernel picked exactly the backend the controller's ring assigns to each
    // connection's 5-tuple.
    let backends: Vec<MaglevBackend<'_>> = Vec::new();
    let keys: Vec<String> = SERVER_IPS.iter().map(|ip| format!("{ip}:80")).collect();
    let ids: Vec<u32> = web["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_u64().unwrap() as u32)
        .collect();
    let mut backends = backends;
    for ((key, id), weight) in keys.iter().zip(&ids).zip([2, 1, 1]) {
        backends.push(MaglevBackend {
            key,
            weight,
            id: *id,
        });
    }
    let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
    let ring_size = ring_size_for(&weights);
    let ring = build_ring(&backends, ring_size);
    let flows = balancer.json("flows").unwrap();
    let flows = flows.as_array().unwrap();
    assert_eq!(
        flows.len(),
        300,
        "{}",
        balancer.json("stats").unwrap()["counters"]
    );
    for flow in flows {
        let client: SocketAddrV4 = flow["client"].as_str().unwrap().parse().unwrap();
        let vip: SocketAddrV4 = flow["vip"].as_str().unwrap().parse().unwrap();
        let hash = flow_hash(
            u32::from(*client.ip()).to_be(),
            u32::from(*vip.ip()).to_be(),
            client.port().to_be(),
            vip.port().to_be(),
            IPPROTO_TCP,
        );
        let id = ring[(hash % ring_size) as usize];
        let index = ids.iter().position(|&i| i == id).unwrap();
        assert_eq!(flow["server"], keys[index], "{flow}");
    }
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_100_mib_transfer_arrives_intact() {
    let balancer = start([1, 1, 1], "");
    const SIZE: u64 = 100 * 1024 * 1024;
    let script = format!(
        "curl -sS --max-time 300 http://{}/bytes/{SIZE} | sha256sum",
        testbed::VIP
    );
    let out = balancer.client(&["sh", "-c", &script]).unwrap();
    assert!(out.status.success(), "{out:?}");
    let digest = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        digest.split_whitespace().next().unwrap(),
        payload_sha256(SIZE),
        "sha256 of the bytes that went through the VIP"
    );
    let stats = balancer.json("stats").unwrap();
    let bytes = stats["services"][0]["bytes"].as_u64().unwrap();
    assert!(
        bytes > SIZE,
        "the transfer went through XDP ({bytes} bytes counted)"
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn udp_request_response_through_the_vip() {
    let balancer = start([1, 1, 1], "");
    let ns = balancer.topo.ns(Role::Client);
    let mut servers = BTreeMap::new();
    for i in 0..30 {
        let payload = format!("ping {i}");
        let reply = udp_request(&ns, Balancer::vip(5353), payload.as_bytes(), TIMEOUT)
            .unwrap_or_else(|e| panic!("datagram {i}: {e:#}"));
        let reply = String::from_utf8(reply).unwrap();
        let (server, echoed) = reply.split_once(':').expect("server:payload");
        assert_eq!(echoed, payload);
        *servers.entry(server.to_string()).or_insert(0) += 1;
    }
    assert!(servers.len() > 1, "new UDP flows are balanced: {servers:?}");
    let flows = balancer.json("flows").unwrap();
    assert!(
        flows
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["protocol"] == "udp" && f["state"] == "udp")
    );
}

/// A datagram whose TTL expires at the balancer comes back as an ICMP time exceeded
/// that the client's kernel matches to its socket, and opens no flow.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_datagram_expiring_at_the_balancer_is_answered_with_time_exceeded() {
    let balancer = start([1, 1, 1], "");
    let ns = balancer.topo.ns(Role::Client);
    let got = run_in_netns(&ns, || -> std::io::Result<usize> {
        use std::os::fd::AsRawFd as _;
        let s = std::net::UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0))?;
        s.connect(Balancer::vip(5353))?;
        s.set_ttl(1)?;
        // Without IP_RECVERR a UDP socket ignores ICMP time exceeded (a soft error).
        let on: libc::c_int = 1;
        // SAFETY: plain setsockopt on a valid socket with an int option.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_RECVERR,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        s.set_read_timeout(Some(TIMEOUT))?;
        s.send(b"expires at the balancer")?;
        let mut buf = [0u8; 64];
        s.recv(&mut buf)
    })
    .unwrap();
    let err = got.expect_err("no reply can come back");
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EHOSTUNREACH),
        "the client saw the time exceeded: {err}"
    );
    assert_eq!(balancer.counter("tx_icmp_time_exceeded").unwrap(), 1);
    assert_eq!(balancer.counter("new_flows").unwrap(), 0);
    assert_eq!(flow_count(&balancer), 0);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn the_lb_host_itself_still_answers() {
    let balancer = start([1, 1, 1], "");
    for target in [testbed::LB_EXT_IP.to_string(), testbed::VIP.to_string()] {
        let out = balancer
            .client(&["ping", "-c", "3", "-i", "0.2", "-W", "2", &target])
            .unwrap();
        assert!(out.status.success(), "ping {target}: {out:?}");
    }
    // A TCP service of the LB host's own (think sshd) on its external address.
    let lb_ns = balancer.topo.ns(Role::Lb);
    let listener = run_in_netns(&lb_ns, || {
        TcpListener::bind(SocketAddrV4::new(testbed::LB_EXT_IP, 2222))
    })
    .unwrap()
    .unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.write_all(b"lb host here\n").unwrap();
    });
    let client_ns = balancer.topo.ns(Role::Client);
    let text = run_in_netns(&client_ns, || {
        let mut conn = TcpStream::connect_timeout(
            &SocketAddrV4::new(testbed::LB_EXT_IP, 2222).into(),
            TIMEOUT,
        )
        .unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).unwrap();
        text
    })
    .unwrap();
    server.join().unwrap();
    assert_eq!(text, "lb host here\n");
    assert!(
        balancer.counter("pass_not_ours").unwrap() > 0
            || balancer.counter("pass_local").unwrap() > 0
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn reload_removing_a_server_keeps_established_connections() {
    let balancer = start([1, 1, 1], "");
    // Keep-alive connections until each server has at least two.
    let mut connections = Vec::new();
    let mut per_server = [0usize; 3];
    let deadline = Instant::now() + Duration::from_secs(30);
    while per_server.iter().any(|&n| n < 2) {
        assert!(
            Instant::now() < deadline,
            "could not reach every server: {per_server:?}"
        );
        let mut conn = KeepAlive::open(&balancer).unwrap();
        let server = conn.get().unwrap();
        per_server[server - 1] += 1;
        connections.push((server, conn));
    }

    let summary = balancer
        .reload(&config_toml(&balancer.name, [1, 1, 0], ""))
        .unwrap();
    assert!(summary.contains("rings_swapped"), "{summary}");

    // Established connections to the remaining servers keep working, on the same server.
    for (server, conn) in connections.iter_mut().filter(|(s, _)| *s != 3) {
        for _ in 0..3 {
            assert_eq!(conn.get().unwrap(), *server, "same server after the reload");
        }
    }
    // New connections go only to the remaining servers.
    for i in 0..60 {
        let body = balancer
            .curl("/")
            .unwrap_or_else(|e| panic!("request {i}: {e:#}"));
        assert_ne!(
            server_of(&body),
            Some(3),
            "request {i} went to the removed server"
        );
    }
    let status = balancer.json("status").unwrap();
    assert_eq!(status["generation"], 2);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_bad_reload_changes_nothing() {
    let balancer = start([1, 1, 1], "");
    let good = std::fs::read_to_string(&balancer.config_path).unwrap();
    let bad = good.replace("weight = 1", "weight = \"heavy\"");
    let error = balancer.reload(&bad).unwrap_err().to_string();
    assert!(
        error.contains("lb.toml:"),
        "names the file and line: {error}"
    );
    let status = balancer.json("status").unwrap();
    assert_eq!(status["generation"], 1);
    assert!(
        status["last_reload"]
            .as_str()
            .unwrap()
            .starts_with("refused")
    );
    let mut seen = [false; 3];
    for _ in 0..60 {
        seen[server_of(&balancer.curl("/").unwrap()).unwrap() - 1] = true;
    }
    assert_eq!(seen, [true; 3], "all servers still in service");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn flow_entries_disappear_after_their_timeouts() {
    let timeouts = "[timeouts]\ntcp_syn = 2\ntcp_established = 3\ntcp_closing = 1\nudp = 2\n";
    let balancer = start([1, 1, 1], timeouts);
    let wait_until_empty = |what: &str, limit: Duration| {
        let started = Instant::now();
        while flow_count(&balancer) > 0 {
            assert!(
                started.elapsed() < limit,
                "{what}: flows still there after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        started.elapsed()
    };

    // A closed connection: closing timeout (1 s) plus the 1 s collector period.
    balancer.curl("/").unwrap();
    assert_eq!(flow_count(&balancer), 1);
    wait_until_empty("closed TCP", Duration::from_secs(4));

    // A UDP exchange: 2 s.
    let ns = balancer.topo.ns(Role::Client);
    udp_request(&ns, Balancer::vip(5353), b"x", TIMEOUT).unwrap();
    assert_eq!(flow_count(&balancer), 1);
    let took = wait_until_empty("UDP", Duration::from_secs(5));
    assert!(
        took >= Duration::from_millis(1500),
        "UDP flow expired early ({took:?})"
    );

    // An idle established connection: 3 s.
    let mut conn = KeepAlive::open(&balancer).unwrap();
    conn.get().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let flows = balancer.json("flows").unwrap();
    assert_eq!(flows[0]["state"], "established", "{flows}");
    let took = wait_until_empty("idle established TCP", Duration::from_secs(6));
    assert!(
        took >= Duration::from_millis(1000),
        "expired early ({took:?})"
    );
    assert!(
        balancer.json("status").unwrap()["flows_expired"]
            .as_u64()
            .unwrap()
            >= 6
    );
    drop(conn);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn sigterm_detaches_and_unpins() {
    let mut balancer = start([1, 1, 1], "");
    balancer.curl("/").unwrap();
    assert!(balancer.stop_daemon().unwrap(), "clean exit on SIGTERM");
    assert!(!std::path::Path::new(&format!("/sys/fs/bpf/{}", balancer.name)).exists());
    let out = balancer
        .topo
        .exec_unchecked(Role::Lb, &["ip", "-d", "link", "show", "lb-ext"])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("xdp"), "still attached: {text}");
    // Without the balancer the VIP is just a local address of the LB host: HTTP to it
    // is refused by the kernel instead of balanced.
    assert!(balancer.curl("/").is_err());
    let _ = SERVER_IPS;
}

/// A client that shuts its write side after its request (half close) while the server
/// answers in five parts with 15 s pauses, 60 s in all, each pause far longer than
/// `tcp_closing` (plus the collector's period): the pair stays half-closed, every byte
/// arrives, and both sides see EOF. (With the pair judged "closing" on the first FIN, it
/// expired in the first pause and the server's next part met a RST.)
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_half_closed_connection_outlives_long_pauses() {
    const PORT: u16 = 7000;
    const PAUSE: Duration = Duration::from_secs(15);
    const PARTS: usize = 5;
    let server_ip = SERVER_IPS[0];
    let extra = format!(
        "[timeouts]\ntcp_closing = 2\n\
         [[service]]\nname = \"half-close\"\nvip = \"{}\"\nport = {PORT}\nsnat_ip = \"{}\"\n\
         [[service.backend]]\naddress = \"{server_ip}\"\n",
        testbed::VIP,
        testbed::SNAT_IP
    );
    let balancer = start([1, 1, 1], &extra);
    let listener = run_in_netns(&balancer.topo.ns(Role::Server(1)), move || {
        TcpListener::bind(SocketAddrV4::new(server_ip, PORT))
    })
    .unwrap()
    .unwrap();
    let part = |i: usize| format!("part {i} of {PARTS}\n").into_bytes();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(TIMEOUT)).unwrap();
        // The whole request, then the client's EOF.
        let mut request = Vec::new();
        conn.read_to_end(&mut request).unwrap();
        for i in 0..PARTS {
            if i > 0 {
                std::thread::sleep(PAUSE);
            }
            conn.write_all(&part(i)).unwrap();
        }
        // Dropping closes the server's side: the client's EOF.
        request
    });
    let mut client = run_in_netns(&balancer.topo.ns(Role::Client), || {
        TcpStream::connect_timeout(&Balancer::vip(PORT).into(), TIMEOUT)
    })
    .unwrap()
    .unwrap();
    client.set_read_timeout(Some(PAUSE + TIMEOUT)).unwrap();
    client.write_all(b"request\n").unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let half_close_rows = || -> Vec<serde_json::Value> {
        let flows = balancer.json("flows").unwrap();
        flows
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["service"] == "half-close")
            .cloned()
            .collect()
    };
    for i in 0..PARTS {
        let mut got = vec![0u8; part(i).len()];
        client.read_exact(&mut got).unwrap();
        assert_eq!(got, part(i), "part {i} arrived whole");
        if i == 0 {
            // In the middle of the first pause, past tcp_closing: listed, half closed.
            std::thread::sleep(PAUSE / 2);
            let rows = half_close_rows();
            assert_eq!(rows.len(), 1, "{rows:?}");
            assert_eq!(rows[0]["state"], "half-closed-client", "{rows:?}");
        }
    }
    let mut rest = Vec::new();
    client
        .read_to_end(&mut rest)
        .expect("the server's EOF after the last part");
    assert!(rest.is_empty(), "nothing after the last part: {rest:?}");
    assert_eq!(server.join().unwrap(), b"request\n", "the server saw EOF");
    let rows = half_close_rows();
    assert!(rows.iter().all(|f| f["state"] == "closing"), "{rows:?}");
}

/// Runs `traceroute` from the client to the VIP with `args` (the probe method) and
/// returns its hop lines.
fn traceroute_hops(balancer: &Balancer, method: &[&str]) -> Vec<String> {
    let vip = testbed::VIP.to_string();
    let mut args = vec!["traceroute", "-n", "-q", "1", "-w", "2", "-m", "3"];
    args.extend_from_slice(method);
    args.push(&vip);
    let out = balancer.client(&args).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("traceroute {method:?}:\n{stdout}");
    assert!(
        out.status.success(),
        "traceroute {method:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().skip(1).map(str::to_owned).collect()
}

/// A traceroute to a TCP service (SYN probes) shows the balancer as the first hop,
/// answering from the VIP with time exceeded, and ends at the service: the probe with
/// one more hop opens a connection whose SYN-ACK comes back through the balancer.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn tcp_traceroute_to_the_vip_shows_the_balancer() {
    let balancer = start([1, 1, 1], "");
    let hops = traceroute_hops(&balancer, &["-T", "-p", "80"]);
    let vip = testbed::VIP.to_string();
    assert!(hops.len() >= 2, "{hops:?}");
    assert!(
        hops[0].split_whitespace().nth(1) == Some(vip.as_str()),
        "hop 1 is the balancer answering for the VIP: {hops:?}"
    );
    assert!(
        hops.last().unwrap().split_whitespace().nth(1) == Some(vip.as_str()),
        "the trace reached the service: {hops:?}"
    );
    assert!(balancer.counter("tx_icmp_time_exceeded").unwrap() >= 1);
}

/// The same with UDP probes to a UDP service: hop 1 is the balancer.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn udp_traceroute_to_the_vip_shows_the_balancer() {
    let balancer = start([1, 1, 1], "");
    let port = testbed::UDP_PORT.to_string();
    let hops = traceroute_hops(&balancer, &["-U", "-p", &port]);
    let vip = testbed::VIP.to_string();
    assert!(
        hops.first().and_then(|hop| hop.split_whitespace().nth(1)) == Some(vip.as_str()),
        "hop 1 is the balancer answering for the VIP: {hops:?}"
    );
    assert!(balancer.counter("tx_icmp_time_exceeded").unwrap() >= 1);
}
