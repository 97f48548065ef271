//! Operator-grade control, with real traffic through the XDP balancer in network
//! namespaces: allow-lists, session affinity, health checks, drain, reloads under load,
//! `kill -9` and adoption of the pinned data path, Prometheus metrics, the answer to a
//! segment of a connection whose flow expired.
//!
//! Needs root: run with `cargo xtask test` (or `cargo test -- --ignored --test-threads=1`).

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use lb_integration::{Balancer, KeepAlive, config_toml, server_of};
use lb_testbed::{self as testbed, Role, payload_sha256, unique_prefix};

/// The standard config with `web_extra` lines added to the `web` service.
fn config_with_web(prefix: &str, extra: &str, web_extra: &str) -> String {
    config_toml(prefix, [1, 1, 1], extra).replacen(
        "name = \"web\"\n",
        &format!("name = \"web\"\n{web_extra}\n"),
        1,
    )
}

fn start(extra: &str, web_extra: &str) -> Balancer {
    let prefix = unique_prefix();
    let config = config_with_web(&prefix, extra, web_extra);
    Balancer::start(&prefix, &config).expect("start testbed and lb")
}

fn web_stat(balancer: &Balancer, field: &str) -> u64 {
    let stats = balancer.json("stats").unwrap();
    stats["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "web")
        .unwrap()[field]
        .as_u64()
        .unwrap()
}

/// Which server answered `GET /`, or why not.
fn hit(balancer: &Balancer) -> Result<usize, String> {
    let body = balancer.curl("/").map_err(|e| format!("{e:#}"))?;
    server_of(&body).ok_or_else(|| format!("unexpected body {body:?}"))
}

/// One metric sample from a Prometheus text exposition.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|line| {
            line.starts_with(name_and_labels) && line[name_and_labels.len()..].starts_with(' ')
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Scrapes the metrics endpoint with curl from the client namespace.
fn scrape(balancer: &Balancer, port: u16) -> String {
    let url = format!("http://{}:{port}/metrics", testbed::LB_EXT_IP);
    let out = balancer
        .client(&["curl", "-sS", "--max-time", "10", &url])
        .unwrap();
    assert!(out.status.success(), "scrape {url}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn allow_list_admits_inside_and_resets_outside_and_metrics_match() {
    const METRICS_PORT: u16 = 9464;
    let extra = format!("metrics = \"{}:{METRICS_PORT}\"", testbed::LB_EXT_IP);
    let prefix = unique_prefix();
    let allowed = config_with_web(
        &prefix,
        &extra,
        "allow = [\"198.18.0.0/24\"]\ndeny = \"reset\"",
    );
    let balancer = Balancer::start(&prefix, &allowed).expect("start testbed and lb");
    for _ in 0..10 {
        hit(&balancer).expect("a client inside the allow-list connects");
    }
    assert_eq!(web_stat(&balancer, "denied"), 0);

    // The client's /24 leaves the list: new connections are refused at once with a RST.
    let refused = allowed.replace("198.18.0.0/24", "10.0.0.0/8");
    balancer.reload(&refused).unwrap();
    // The RST's exact bytes are checked by the data-plane test; here the client
    // must not get through, and the verdict must be counted.
    let out = balancer
        .client(&[
            "curl",
            "-sS",
            "--max-time",
            "2",
            &format!("http://{}/", testbed::VIP),
        ])
        .unwrap();
    assert!(
        !out.status.success(),
        "a client outside the allow-list cannot connect"
    );
    assert!(balancer.counter("tx_rst_not_eligible").unwrap() >= 1);
    assert!(web_stat(&balancer, "denied") >= 1);

    // deny = "drop": no answer at all.
    balancer
        .reload(&refused.replace("deny = \"reset\"", "deny = \"drop\""))
        .unwrap();
    let out = balancer
        .client(&[
            "curl",
            "-sS",
            "--max-time",
            "2",
            &format!("http://{}/", testbed::VIP),
        ])
        .unwrap();
    assert!(!out.status.success());
    assert!(balancer.counter("drop_not_eligible").unwrap() >= 1);

    // Metrics agree with the traffic: exactly 10 flows admitted, the rest denied.
    let text = scrape(&balancer, METRICS_PORT);
    let denied = web_stat(&balancer, "denied") as f64;
    assert_eq!(
        sample(&text, "lb_service_new_flows_total{service=\"web\"}"),
        Some(10.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "lb_service_denied_total{service=\"web\"}"),
        Some(denied),
        "{text}"
    );
    let packets = web_stat(&balancer, "packets") as f64;
    let scraped = sample(&text, "lb_service_packets_total{service=\"web\"}").unwrap();
    assert!((scraped - packets).abs() <= 4.0, "{scraped} vs {packets}");
    // 10 HTTP exchanges: at least 5 packets each way of each.
    assert!(scraped >= 100.0, "{scraped}");
    assert_eq!(sample(&text, "lb_config_generation"), Some(3.0), "{text}");
    assert_eq!(sample(&text, "lb_last_reload_ok"), Some(1.0), "{text}");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn affinity_pins_a_client_until_its_session_times_out() {
    let balancer = start("", "affinity_timeout = 1");
    let mut servers = BTreeSet::new();
    for _ in 0..100 {
        servers.insert(hit(&balancer).unwrap());
    }
    assert_eq!(
        servers.len(),
        1,
        "100 connections from one client, one backend"
    );
    let sessions = balancer.json("sessions").unwrap();
    let sessions = sessions.as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0]["client"], "198.18.0.2");
    assert_eq!(sessions[0]["service"], "web");
    assert!(balancer.counter("session_hits").unwrap() >= 99);

    // Draining the session's backend re-pins the session instead of following it.
    let pinned = *servers.first().unwrap();
    let pinned_addr = format!("{}:80", lb_integration::SERVER_IPS[pinned - 1]);
    balancer.cli(&["backend", "drain", &pinned_addr]).unwrap();
    let mut repinned = BTreeSet::new();
    for _ in 0..10 {
        repinned.insert(hit(&balancer).unwrap());
    }
    assert_eq!(repinned.len(), 1, "{repinned:?}");
    assert!(
        !repinned.contains(&pinned),
        "no new connection to the drained backend"
    );
    assert!(balancer.counter("session_repinned").unwrap() >= 1);
    balancer.cli(&["backend", "undrain", &pinned_addr]).unwrap();

    // Each round starts after the session expired: the pick is free again.
    let mut spread = BTreeSet::new();
    for _ in 0..8 {
        thread::sleep(Duration::from_millis(1600));
        spread.insert(hit(&balancer).unwrap());
    }
    assert!(
        spread.len() > 1,
        "after time-outs connections spread: {spread:?}"
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_failed_backend_leaves_within_interval_times_fall_and_returns() {
    let mut balancer = start(
        "",
        "health_check = { type = \"http\", path = \"/\", interval_ms = 500, \
         timeout_ms = 300, rise = 2, fall = 2 }",
    );
    balancer.topo.stop_server(1);
    // interval × fall + 1 s.
    thread::sleep(Duration::from_millis(500 * 2 + 1000));
    let mut failures = 0;
    for _ in 0..60 {
        match hit(&balancer) {
            Ok(server) => assert_ne!(server, 1, "a request reached the stopped server"),
            Err(_) => failures += 1,
        }
    }
    assert_eq!(failures, 0);
    let backends = balancer.json("backends").unwrap();
    let s1 = backends
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["service"] == "web" && b["backend"] == "198.19.0.11:80")
        .unwrap()
        .clone();
    assert_eq!(s1["health"], "down", "{s1}");
    assert_eq!(s1["state"], "down", "{s1}");
    assert_eq!(s1["effective_weight"], 0, "{s1}");

    balancer.topo.start_server(1).unwrap();
    thread::sleep(Duration::from_millis(500 * 2 + 1000));
    let back = (0..60).filter(|_| hit(&balancer) == Ok(1)).count();
    assert!(back > 0, "the recovered server gets new flows again");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn draining_during_a_transfer_lets_it_finish_and_sends_nothing_new() {
    let balancer = Arc::new(start("", ""));
    const SIZE: u64 = 50 * 1024 * 1024;
    let transfer = {
        let balancer = balancer.clone();
        thread::spawn(move || {
            let script = format!(
                "curl -sS --max-time 120 --limit-rate 10M http://{}/bytes/{SIZE} | sha256sum",
                testbed::VIP
            );
            balancer.client(&["sh", "-c", &script]).unwrap()
        })
    };
    // Find the transfer's backend in the flow table.
    let deadline = Instant::now() + Duration::from_secs(10);
    let server = loop {
        let flows = balancer.json("flows").unwrap();
        if let Some(flow) = flows
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["service"] == "web")
        {
            break flow["server"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "the transfer never showed up");
        thread::sleep(Duration::from_millis(50));
    };
    let index = lb_integration::SERVER_IPS
        .iter()
        .position(|ip| server == format!("{ip}:80"))
        .unwrap()
        + 1;
    balancer.cli(&["backend", "drain", &server]).unwrap();
    assert!(
        balancer.cli(&["backend", "drain", &server]).is_err(),
        "already draining"
    );
    for _ in 0..30 {
        assert_ne!(
            hit(&balancer).unwrap(),
            index,
            "a new connection reached {server}"
        );
    }
    let out = transfer.join().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap(),
        payload_sha256(SIZE)
    );
    let backends = balancer.json("backends").unwrap();
    assert!(
        backends
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["backend"] == server.as_str() && b["state"] == "draining")
    );
    balancer.cli(&["backend", "undrain", &server]).unwrap();
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn twenty_reloads_under_load_fail_no_request() {
    let balancer = Arc::new(start("", ""));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (balancer, stop, ok, failed) =
            (balancer.clone(), stop.clone(), ok.clone(), failed.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match hit(&balancer) {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("request failed: {e}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        })
    };
    let base = std::fs::read_to_string(&balancer.config_path).unwrap();
    for i in 0..20 {
        // Only the UDP service changes (a weight flips); web stays as it is.
        let config = base.replacen("weight = 1\n", &format!("weight = {}\n", 1 + i % 2), 4);
        let config = if i % 2 == 0 { base.clone() } else { config };
        balancer.reload(&config).unwrap();
        thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(ok.load(Ordering::Relaxed) >= 20, "the load ran");
    assert_eq!(balancer.json("status").unwrap()["generation"], 21);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn kill_9_keeps_forwarding_and_a_new_daemon_adopts_flows_and_counters() {
    let balancer = Arc::new(std::sync::Mutex::new(start("", "")));
    const SIZE: u64 = 20 * 1024 * 1024;
    let transfers: Vec<_> = (0..10)
        .map(|_| {
            let balancer = balancer.clone();
            thread::spawn(move || {
                let script = format!(
                    "curl -sS --max-time 120 --limit-rate 4M http://{}/bytes/{SIZE} | sha256sum",
                    testbed::VIP
                );
                let b = balancer.lock().unwrap();
                let topo_ns = b.topo.ns(testbed::Role::Client);
                drop(b);
                std::process::Command::new("ip")
                    .args(["netns", "exec", &topo_ns, "sh", "-c", &script])
                    .output()
                    .unwrap()
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let before = loop {
        let b = balancer.lock().unwrap();
        let flows = b.json("flows").unwrap();
        let clients: BTreeSet<String> = flows
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["state"] == "established")
            .map(|f| f["client"].as_str().unwrap().to_string())
            .collect();
        if clients.len() == 10 {
            break clients;
        }
        assert!(Instant::now() < deadline, "ten transfers never ran at once");
        drop(b);
        thread::sleep(Duration::from_millis(50));
    };
    let hits_before = balancer.lock().unwrap().counter("flow_hits").unwrap();
    balancer.lock().unwrap().kill_daemon().unwrap();
    thread::sleep(Duration::from_millis(500));
    balancer.lock().unwrap().spawn_daemon().unwrap();
    {
        let b = balancer.lock().unwrap();
        let status = b.json("status").unwrap();
        assert_eq!(status["adopted"], true, "{status}");
        let flows = b.json("flows").unwrap();
        let after: BTreeSet<String> = flows
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["client"].as_str().unwrap().to_string())
            .collect();
        assert!(before.is_subset(&after), "{before:?} vs {after:?}");
        assert!(
            b.counter("flow_hits").unwrap() > hits_before,
            "counters continue"
        );
    }
    for transfer in transfers {
        let out = transfer.join().unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()
                .unwrap(),
            payload_sha256(SIZE)
        );
    }
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn bad_operator_commands_change_nothing() {
    let balancer = start("", "");
    let before = balancer.json("backends").unwrap();
    for (args, wanted) in [
        (
            &["backend", "drain", "198.19.0.99"][..],
            "no service has a backend",
        ),
        (
            &["backend", "weight", "nosuch", "198.19.0.11", "3"],
            "no service named",
        ),
        (&["backend", "undrain", "198.19.0.11:80"], "not draining"),
        (
            &["backend", "drain", "198.19.0.11"],
            "names several backends",
        ),
        (
            &["backend", "add", "web", "198.19.0.11"],
            "already has backend",
        ),
        (
            &["backend", "weight", "web", "198.19.0.11", "70000"],
            "between 0 and 65535",
        ),
        (&["backend", "drain", "not-an-address"], "invalid backend"),
    ] {
        let error = balancer.cli(args).expect_err("refused").to_string();
        assert!(error.contains(wanted), "{args:?}: {error}");
    }
    assert_eq!(balancer.json("backends").unwrap(), before);
    // Removing the last two leaves one, removing that one too is refused.
    balancer
        .cli(&["backend", "remove", "web", "198.19.0.12"])
        .unwrap();
    balancer
        .cli(&["backend", "remove", "web", "198.19.0.13"])
        .unwrap();
    let error = balancer
        .cli(&["backend", "remove", "web", "198.19.0.11"])
        .unwrap_err();
    assert!(error.to_string().contains("without a backend"), "{error}");
    for _ in 0..5 {
        assert_eq!(hit(&balancer).unwrap(), 1);
    }
    balancer
        .cli(&["backend", "add", "web", "198.19.0.12", "--weight", "1"])
        .unwrap();
    let socket_mode = std::fs::metadata(balancer.socket()).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(socket_mode.permissions().mode() & 0o777, 0o600);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_failed_backends_connections_are_reset_when_the_service_says_so() {
    let balancer = start(
        "",
        "on_backend_down = \"reset\"\nhealth_check = { type = \"tcp\", interval_ms = 300, \
         timeout_ms = 200, rise = 2, fall = 2 }",
    );
    // Open connections until one of them is served by s1 and one by another server.
    let mut on_s1 = None;
    let mut elsewhere = None;
    for _ in 0..30 {
        let mut connection = KeepAlive::open(&balancer).unwrap();
        match connection.get().unwrap() {
            1 if on_s1.is_none() => on_s1 = Some(connection),
            n if n != 1 && elsewhere.is_none() => elsewhere = Some(connection),
            _ => {}
        }
        if on_s1.is_some() && elsewhere.is_some() {
            break;
        }
    }
    let (mut on_s1, mut elsewhere) = (on_s1.unwrap(), elsewhere.unwrap());
    // s1 refuses the balancer's probes (from 198.19.0.1) but still serves clients
    // (from the SNAT address): only the health check sees it fail.
    balancer
        .topo
        .exec(
            Role::Server(1),
            &[
                "nft",
                "add table inet probe; add chain inet probe input { type filter hook input \
                 priority 0; }; add rule inet probe input ip saddr 198.19.0.1 tcp dport 80 \
                 reject with tcp reset",
            ],
        )
        .unwrap();
    thread::sleep(Duration::from_millis(300 * 2 + 1000));
    let started = Instant::now();
    let error = on_s1
        .get()
        .expect_err("the connection to the failed backend is reset");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "reset, not a timeout"
    );
    assert!(elsewhere.get().is_ok(), "other backends' connections go on");
    assert!(balancer.counter("tx_rst_backend_down").unwrap() >= 1);
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn replace_swaps_the_program_and_keeps_established_connections() {
    let mut balancer = start("", "");
    let mut connection = KeepAlive::open(&balancer).unwrap();
    let first = connection.get().unwrap();
    let hits = balancer.counter("flow_hits").unwrap();
    let drained = format!(
        "{}:80",
        lb_integration::SERVER_IPS[if first == 3 { 1 } else { 2 }]
    );
    balancer.cli(&["backend", "drain", &drained]).unwrap();
    // A second daemon with --replace takes over from the running one.
    let old_log = balancer.log();
    balancer.replace_daemon().unwrap();
    assert!(old_log.contains("serving the operator API"));
    let status = balancer.json("status").unwrap();
    assert_eq!(status["adopted"], true, "{status}");
    assert!(
        balancer.log().contains("program replaced"),
        "{}",
        balancer.log()
    );
    assert_eq!(
        connection.get().unwrap(),
        first,
        "same connection, same server"
    );
    assert!(
        balancer.counter("flow_hits").unwrap() > hits,
        "counters continue"
    );
    assert_eq!(status["interfaces"].as_array().unwrap().len(), 2);
    let backends = balancer.json("backends").unwrap();
    let states: Vec<(String, String)> = backends
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["service"] == "web")
        .map(|b| {
            (
                b["backend"].as_str().unwrap().into(),
                b["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    for (backend, state) in &states {
        let wanted = if *backend == drained {
            "draining"
        } else {
            "active"
        };
        assert_eq!(state, wanted, "the drain survives the restart: {states:?}");
    }
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn unreachable_health_target_and_busy_metrics_port_are_clear_errors() {
    let prefix = unique_prefix();
    // The probe port of every backend is closed: all backends down, clear reason.
    let config = config_with_web(
        &prefix,
        "metrics = \"198.18.0.1:9465\"",
        "health_check = { type = \"tcp\", port = 9, interval_ms = 200, timeout_ms = 100, \
         rise = 1, fall = 1 }",
    );
    let balancer = Balancer::start(&prefix, &config).unwrap();
    thread::sleep(Duration::from_millis(1200));
    let backends = balancer.json("backends").unwrap();
    for backend in backends
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["service"] == "web")
    {
        assert_eq!(backend["health"], "down", "{backend}");
        assert!(
            backend["last_error"].as_str().unwrap().contains("refused"),
            "{backend}"
        );
    }
    let stats = balancer.counter("drop_no_backend").unwrap();
    assert!(hit(&balancer).is_err(), "no backend is up");
    assert!(balancer.counter("drop_no_backend").unwrap() > stats);

    // A second instance on the same metrics port refuses to start and changes nothing.
    let other = balancer.config_path.with_file_name("other.toml");
    std::fs::write(
        &other,
        config
            .replace(&format!("name = \"{prefix}\""), "name = \"lbportbusy\"")
            .replace(&format!("/run/lb/{prefix}.sock"), "/run/lb/lbportbusy.sock"),
    )
    .unwrap();
    let out = balancer
        .topo
        .exec_unchecked(
            Role::Lb,
            &[
                lb_integration::lb_binary().to_str().unwrap(),
                "run",
                "--config",
                other.to_str().unwrap(),
            ],
        )
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("control.metrics: cannot listen on 198.18.0.1:9465"),
        "{stderr}"
    );
    assert!(!std::path::Path::new("/sys/fs/bpf/lbportbusy").exists());
    assert_eq!(
        balancer.json("status").unwrap()["interfaces"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // A socket path the daemon cannot create: refused before anything is loaded.
    let denied = config
        .replace(&format!("name = \"{prefix}\""), "name = \"lbsockdenied\"")
        .replace("metrics = \"198.18.0.1:9465\"", "")
        .replace(&format!("/run/lb/{prefix}.sock"), "/proc/lb.sock");
    std::fs::write(&other, denied).unwrap();
    let out = balancer
        .topo
        .exec_unchecked(
            Role::Lb,
            &[
                lb_integration::lb_binary().to_str().unwrap(),
                "run",
                "--config",
                other.to_str().unwrap(),
            ],
        )
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/proc"),
        "{out:?}"
    );
    assert!(!std::path::Path::new("/sys/fs/bpf/lbsockdenied").exists());
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn an_expired_keep_alive_connection_fails_fast_when_the_service_says_so() {
    let prefix = unique_prefix();
    let timeouts = "[timeouts]\ntcp_established = 2\n";
    let balancer = Balancer::start(&prefix, &config_with_web(&prefix, timeouts, ""))
        .expect("start testbed and lb");
    let flow_count = || balancer.json("flows").unwrap().as_array().unwrap().len();
    // Two idle keep-alive connections outlive their flows (2 s plus the collector's
    // 1 s period, on a clock refreshed once a second).
    let mut dropped = KeepAlive::open(&balancer).unwrap();
    let mut reset = KeepAlive::open(&balancer).unwrap();
    dropped.get().unwrap();
    reset.get().unwrap();
    let started = Instant::now();
    while flow_count() > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "flows not expired"
        );
        thread::sleep(Duration::from_millis(200));
    }

    // By default the next request goes into silence: the client waits out its own
    // read timeout (5 s) while its segments are dropped.
    let error = dropped
        .get()
        .expect_err("no answer without unknown_segment");
    assert!(
        matches!(
            error.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{error}"
    );
    assert!(balancer.counter("drop_no_flow").unwrap() >= 1);
    assert_eq!(balancer.counter("tx_rst_no_flow").unwrap(), 0);

    // With unknown_segment = "reset" the other connection's request is refused at once.
    balancer
        .reload(&config_with_web(
            &prefix,
            timeouts,
            "unknown_segment = \"reset\"",
        ))
        .unwrap();
    let started = Instant::now();
    let error = reset.get().expect_err("the stale connection is reset");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "reset, not a timeout"
    );
    assert!(balancer.counter("tx_rst_no_flow").unwrap() >= 1);
    assert_eq!(flow_count(), 0, "the answered segments opened no flow");

    // The client's next request, on a new connection, is served.
    let mut fresh = KeepAlive::open(&balancer).unwrap();
    assert!(fresh.get().is_ok());
    assert!(hit(&balancer).is_ok());
}
