//! Fixture for the netns integration tests: the lb-testbed topology (client, LB, three
//! servers) with a real `lb run` daemon attached in native XDP mode, torn down on drop
//! (the daemon is stopped by PID, namespaces deleted, pins removed) even when a test
//! fails.

use std::{
    net::SocketAddrV4,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use lb_testbed::{self as testbed, KeepAliveClient, Role, Topology, daemon};
use serde_json::Value;

pub use lb_testbed::{SERVER_IPS, VIP, server_of};

/// The `lb` binary built next to this test executable (target/<profile>/lb).
pub fn lb_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    profile_dir.join("lb")
}

/// The directory (created) where a test named by `prefix` keeps its configs, keys and
/// logs: `target/<profile>/netns-tests/<prefix>`.
pub fn test_dir(prefix: &str) -> PathBuf {
    let dir = lb_binary()
        .parent()
        .expect("target/<profile>")
        .join("netns-tests")
        .join(prefix);
    std::fs::create_dir_all(&dir).expect("creating the test directory");
    dir
}

/// The scale-out testbed (`lb_testbed::scaleout`) with three instances sharing flows
/// (`options`), each running `lb`, once the routers learned every instance's routes
/// (within `converge`).
pub fn scaleout_cluster(
    options: lb_testbed::scaleout::PeersOptions,
    converge: Duration,
) -> lb_testbed::scaleout::ScaleOut {
    let prefix = lb_testbed::scaleout::unique_prefix();
    let mut testbed = lb_testbed::scaleout::ScaleOut::up_with_peers(
        &prefix,
        &test_dir(&prefix),
        &lb_binary(),
        3,
        options,
    )
    .expect("build the scale-out testbed");
    for i in 1..=3 {
        testbed.start_lb(i).expect("start lb");
    }
    testbed
        .wait_announced(&[1, 2, 3], converge)
        .expect("the routers learn every instance's routes");
    testbed
}

/// A standard config for the testbed: web (tcp/80) and dns-like (udp/5353) services
/// in full-NAT mode over the three servers with the given weights, plus `extra` TOML
/// (e.g. a `[timeouts]` table) placed before the services.
pub fn config_toml(name: &str, weights: [u32; 3], extra: &str) -> String {
    let mut text = format!(
        "name = \"{name}\"\n\
         [interfaces]\nattach = [\"lb-ext\", \"lb-int\"]\nxdp_mode = \"native\"\n\
         [control]\nsocket = \"/run/lb/{name}.sock\"\n{extra}\n"
    );
    for (service, port, protocol) in [("web", 80, "tcp"), ("dns-like", 5353, "udp")] {
        text.push_str(&format!(
            "[[service]]\nname = \"{service}\"\nvip = \"{}\"\nport = {port}\n\
             protocol = \"{protocol}\"\nsnat_ip = \"{}\"\n",
            testbed::VIP,
            testbed::SNAT_IP
        ));
        for (ip, weight) in SERVER_IPS.iter().zip(weights) {
            if weight > 0 {
                text.push_str(&format!(
                    "[[service.backend]]\naddress = \"{ip}\"\nweight = {weight}\n"
                ));
            }
        }
    }
    text
}

pub struct Balancer {
    pub topo: Topology,
    pub name: String,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pid: Option<u32>,
}

impl Balancer {
    /// Brings up the testbed, starts the servers and `lb run` with `config`
    /// (from `config_toml`, whose name must be the topology prefix).
    pub fn start(prefix: &str, config: &str) -> Result<Balancer> {
        Balancer::start_with(prefix, config, testbed::Options::default())
    }

    /// [`start`](Self::start) on a topology with `options` (e.g. a router in the path).
    pub fn start_with(prefix: &str, config: &str, options: testbed::Options) -> Result<Balancer> {
        Self::start_prepared(prefix, config, options, |_| Ok(())).map(|((), balancer)| balancer)
    }

    /// Like [`start_with`](Self::start_with), with `prepare` run on the topology before
    /// the daemon starts (e.g. to add an interface it attaches to); returns what
    /// `prepare` made first, so that a caller's `let (made, balancer)` drops the balancer
    /// first.
    pub fn start_prepared<T>(
        prefix: &str,
        config: &str,
        options: testbed::Options,
        prepare: impl FnOnce(&Topology) -> Result<T>,
    ) -> Result<(T, Balancer)> {
        let mut topo = Topology::up_with(prefix, options)?;
        topo.start_servers()?;
        let made = prepare(&topo)?;
        let dir = lb_binary()
            .parent()
            .expect("profile dir")
            .join("netns-tests")
            .join(prefix);
        std::fs::create_dir_all(&dir)?;
        let config_path = dir.join("lb.toml");
        std::fs::write(&config_path, config)?;
        let mut balancer = Balancer {
            topo,
            name: prefix.to_string(),
            log_path: dir.join("lb.log"),
            config_path,
            pid: None,
        };
        balancer.spawn_daemon()?;
        Ok((made, balancer))
    }

    /// Kills the daemon with SIGKILL (no cleanup at all) and reaps it.
    pub fn kill_daemon(&mut self) -> Result<()> {
        let pid = self.pid.take().context("no daemon running")?;
        self.topo.signal_child(pid, libc::SIGKILL)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.topo.try_wait_child(pid)?.is_none() {
            if Instant::now() > deadline {
                bail!("lb {pid} did not die on SIGKILL");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Starts `lb run --replace`, which takes over from the running daemon; waits until
    /// the old one has exited and the new one answers.
    pub fn replace_daemon(&mut self) -> Result<()> {
        let old = self.pid.take().context("no daemon running")?;
        let pid = self.spawn_lb_run(&["--replace"])?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.topo.try_wait_child(old)?.is_none() {
            if Instant::now() > deadline {
                bail!("the old daemon did not hand over: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        self.wait_until_answering(pid, left, Duration::from_millis(100))
            .with_context(|| format!("lb --replace did not come up: {}", self.log()))
    }

    /// Starts a daemon again (after `kill_daemon`), waiting until it answers.
    pub fn spawn_daemon(&mut self) -> Result<()> {
        let pid = self.spawn_lb_run(&[])?;
        self.wait_until_answering(pid, Duration::from_secs(20), Duration::from_millis(200))
            .with_context(|| format!("lb did not come up: {}", self.log()))
    }

    /// `lb run --config <config> <extra>` with info logging; becomes the tracked daemon.
    fn spawn_lb_run(&mut self, extra: &[&str]) -> Result<u32> {
        let pid = daemon::spawn_lb_run(
            &self.topo,
            &lb_binary(),
            &self.config_path,
            "info",
            extra,
            &self.log_path,
        )?;
        self.pid = Some(pid);
        Ok(pid)
    }

    fn wait_until_answering(&self, pid: u32, timeout: Duration, poll: Duration) -> Result<()> {
        daemon::wait_until_answering(&self.topo, pid, &lb_binary(), &self.socket(), timeout, poll)
            .map(drop)
    }

    pub fn socket(&self) -> String {
        format!("/run/lb/{}.sock", self.name)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// `lb --socket S args...`, stdout on success.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        daemon::lb_cli(&lb_binary(), &self.socket(), args)
    }

    /// `lb ... --json`, parsed.
    pub fn json(&self, command: &str) -> Result<Value> {
        let text = self.cli(&[command, "--json"])?;
        serde_json::from_str(&text).with_context(|| format!("parse `lb {command} --json`"))
    }

    pub fn counter(&self, name: &str) -> Result<u64> {
        self.json("stats")?["counters"][name]
            .as_u64()
            .with_context(|| format!("no counter {name}"))
    }

    /// Replaces the config file and asks the daemon to reload it.
    pub fn reload(&self, config: &str) -> Result<String> {
        std::fs::write(&self.config_path, config)?;
        self.cli(&["reload"])
    }

    /// Runs a command in the client namespace.
    pub fn client(&self, args: &[&str]) -> Result<std::process::Output> {
        self.topo.exec_unchecked(Role::Client, args)
    }

    /// One HTTP GET on a new connection from the client to the VIP; the body.
    pub fn curl(&self, path: &str) -> Result<String> {
        let url = format!("http://{}{path}", testbed::VIP);
        let out = self.client(&[
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-H",
            "Connection: close",
            &url,
        ])?;
        if !out.status.success() {
            bail!(
                "curl {url}: {} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn vip(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(testbed::VIP, port)
    }

    /// Stops the daemon (SIGTERM) and returns whether it exited cleanly.
    pub fn stop_daemon(&mut self) -> Result<bool> {
        match self.pid.take() {
            Some(pid) => Ok(self.topo.stop_child(pid)?.success()),
            None => Ok(true),
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.stop_daemon();
        self.topo.teardown();
        // A daemon killed before its own cleanup leaves its pins behind.
        let pins = Path::new("/sys/fs/bpf").join(&self.name);
        if let Ok(entries) = std::fs::read_dir(&pins) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
            let _ = std::fs::remove_dir(&pins);
        }
        let _ = std::fs::remove_file(self.socket());
    }
}

/// An HTTP/1.1 keep-alive connection from the client namespace to the VIP's port 80,
/// for tests that need one connection to outlive a change.
pub struct KeepAlive {
    client: KeepAliveClient,
}

impl KeepAlive {
    pub fn open(balancer: &Balancer) -> Result<KeepAlive> {
        let client = KeepAliveClient::connect(
            &balancer.topo.ns(Role::Client),
            Balancer::vip(80),
            Duration::from_secs(5),
        )?;
        Ok(KeepAlive { client })
    }

    /// GET / on this connection: which server (1..=3) answered.
    pub fn get(&mut self) -> std::io::Result<usize> {
        let body = self.client.get("/")?;
        server_of(&String::from_utf8_lossy(&body))
            .ok_or_else(|| std::io::Error::other("unexpected body"))
    }
}
