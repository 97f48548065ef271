//! Fixture for the netns integration tests: the xtask testbed (client, LB, three
//! servers) with a real `lb run` daemon attached in native XDP mode, torn down on drop
//! (the daemon is stopped by PID, namespaces deleted, pins removed) even when a test
//! fails.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use lb_testbed::{self as testbed, Role, Topology};
use serde_json::Value;

pub use lb_testbed::{SERVER_IPS, VIP};

/// The `lb` binary built next to this test executable (target/<profile>/lb).
pub fn lb_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    profile_dir.join("lb")
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
        let mut topo = Topology::up(prefix)?;
        topo.start_servers()?;
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
        Ok(balancer)
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
        let lb = lb_binary();
        let (lb, config) = (lb.to_string_lossy(), self.config_path.to_string_lossy());
        let pid = self.topo.spawn_logged(
            Role::Lb,
            &[
                "env",
                "RUST_LOG=info",
                &lb,
                "run",
                "--config",
                &config,
                "--replace",
            ],
            &self.log_path,
        )?;
        self.pid = Some(pid);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.topo.try_wait_child(old)?.is_none() {
            if Instant::now() > deadline {
                bail!("the old daemon did not hand over: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        loop {
            if let Some(status) = self.topo.try_wait_child(pid)? {
                bail!("lb --replace exited ({status}): {}", self.log());
            }
            if self.cli(&["status"]).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("lb --replace did not come up: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts a daemon again (after `kill_daemon`), waiting until it answers.
    pub fn spawn_daemon(&mut self) -> Result<()> {
        let lb = lb_binary();
        let (lb, config) = (lb.to_string_lossy(), self.config_path.to_string_lossy());
        let pid = self.topo.spawn_logged(
            Role::Lb,
            &["env", "RUST_LOG=info", &lb, "run", "--config", &config],
            &self.log_path,
        )?;
        self.pid = Some(pid);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.topo.try_wait_child(pid)? {
                bail!("lb exited during startup ({status}): {}", self.log());
            }
            if self.cli(&["status"]).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("lb did not come up within 20 s: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn socket(&self) -> String {
        format!("/run/lb/{}.sock", self.name)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// `lb --socket S args...`, stdout on success.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(lb_binary())
            .args(["--socket", &self.socket()])
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "lb {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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

/// Which server (1..=3) answered, from a test server's `GET /` body (`s1\n`...).
pub fn server_of(body: &str) -> Option<usize> {
    body.trim()
        .strip_prefix('s')
        .and_then(|n| n.parse().ok())
        .filter(|n| (1..=3).contains(n))
}

/// An HTTP/1.1 keep-alive connection from the client namespace to the VIP's port 80,
/// for tests that need one connection to outlive a change.
pub struct KeepAlive {
    reader: BufReader<TcpStream>,
}

impl KeepAlive {
    pub fn open(balancer: &Balancer) -> Result<KeepAlive> {
        let timeout = Duration::from_secs(5);
        let stream = testbed::run_in_netns(&balancer.topo.ns(Role::Client), move || {
            TcpStream::connect_timeout(&Balancer::vip(80).into(), timeout)
        })??;
        stream.set_read_timeout(Some(timeout))?;
        Ok(KeepAlive {
            reader: BufReader::new(stream),
        })
    }

    /// GET / on this connection: which server (1..=3) answered.
    pub fn get(&mut self) -> std::io::Result<usize> {
        self.reader
            .get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n")?;
        let mut content_length = 0usize;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                content_length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; content_length];
        self.reader.read_exact(&mut body)?;
        server_of(&String::from_utf8_lossy(&body))
            .ok_or_else(|| std::io::Error::other("unexpected body"))
    }
}
