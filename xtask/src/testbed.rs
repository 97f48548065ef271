//! Network-namespace testbed shared by `cargo xtask demo`, the integration
//! tests (package `lb-integration`) and the benchmarks.
//!
//! ```text
//!  {p}-client            {p}-lb                         {p}-sw          {p}-s1..s3
//!  eth0 198.18.0.2 ── lb-ext 198.18.0.1                 br0 ─ sw-s1 ── eth0 198.19.0.11
//!                        lb-int 198.19.0.1 ──── sw-lb ─┤    ─ sw-s2 ── eth0 198.19.0.12
//!                        lo: VIP 198.18.1.10/32        └─── sw-s3 ── eth0 198.19.0.13
//!                            SNAT 198.19.1.1/32
//! ```
//!
//! All addresses are in 198.18.0.0/15 (RFC 2544 benchmarking range), so
//! nothing here can collide with a real network. Every namespace, veth and
//! bridge is created by [`Topology::up`] and removed again on drop; the test
//! HTTP/UDP servers run as threads of the calling process whose sockets
//! were created inside the server namespaces (see [`run_in_netns`]).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};

/// Client address (ns `{p}-client`, iface `eth0`).
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// LB address on the client side (`lb-ext`); the client's default gateway.
pub const LB_EXT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// LB address on the server side (`lb-int`); the servers' default gateway.
pub const LB_INT_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
/// Virtual IP of the services, on the LB's `lo`.
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
/// Source address the LB uses towards backends in full-NAT mode, on the LB's `lo`.
pub const SNAT_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 1);
/// Backend addresses; `SERVER_IPS[i - 1]` belongs to `Role::Server(i)`.
pub const SERVER_IPS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(198, 19, 0, 11),
    Ipv4Addr::new(198, 19, 0, 12),
    Ipv4Addr::new(198, 19, 0, 13),
];
/// Number of backend servers.
pub const SERVER_COUNT: usize = SERVER_IPS.len();
/// TCP port of the test HTTP servers (and of the demo's `web` service).
pub const HTTP_PORT: u16 = 80;
/// UDP port of the test echo responders (and of the demo's `dns-like` service).
pub const UDP_PORT: u16 = 5353;

/// Interface names (unique only inside their namespace).
pub const CLIENT_IF: &str = "eth0";
pub const LB_EXT_IF: &str = "lb-ext";
pub const LB_INT_IF: &str = "lb-int";
pub const SERVER_IF: &str = "eth0";
pub const BRIDGE_IF: &str = "br0";
/// Bridge port facing the LB (peer of `lb-int`).
pub const SWITCH_LB_PORT: &str = "sw-lb";

/// Where `ip netns add` keeps its namespace handles.
pub const NETNS_DIR: &str = "/var/run/netns";

/// How long teardown lets a spawned child react to SIGTERM before SIGKILL.
const CHILD_GRACE: Duration = Duration::from_secs(5);
/// How often the server threads look at their stop flag.
const SERVER_POLL: Duration = Duration::from_millis(50);
/// An idle keep-alive connection is closed after this long, so abandoned
/// client connections cannot pin server threads forever.
const HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_HEAD_LINE: u64 = 8 * 1024;
const MAX_HEADERS: usize = 100;

/// The namespaces of a topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Client,
    Lb,
    Switch,
    /// Backend 1..=3.
    Server(usize),
}

impl Role {
    /// Every namespace of a topology, in creation order.
    pub const ALL: [Role; 6] = [
        Role::Client,
        Role::Lb,
        Role::Switch,
        Role::Server(1),
        Role::Server(2),
        Role::Server(3),
    ];

    /// Suffix of the namespace name: `{prefix}-{suffix}`.
    pub fn suffix(self) -> String {
        match self {
            Role::Client => "client".into(),
            Role::Lb => "lb".into(),
            Role::Switch => "sw".into(),
            Role::Server(i) => format!("s{i}"),
        }
    }
}

/// Per-server counters, kept across `stop_server`/`start_server`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    pub tcp_connections: u64,
    pub http_requests: u64,
    pub udp_datagrams: u64,
}

#[derive(Default)]
struct Counters {
    tcp_connections: AtomicU64,
    http_requests: AtomicU64,
    udp_datagrams: AtomicU64,
}

/// One running test server (HTTP acceptor thread + UDP responder thread).
struct TestServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl TestServer {
    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            // A panicking server thread has nothing left to clean up.
            let _ = t.join();
        }
    }
}

/// State shared between a [`Topology`] and its [`TeardownHandle`]s.
struct Shared {
    /// Namespaces that exist and must be deleted; emptied by teardown.
    namespaces: Mutex<Vec<String>>,
    children: Mutex<HashMap<u32, Child>>,
    servers: Mutex<[Option<TestServer>; SERVER_COUNT]>,
    counters: [Arc<Counters>; SERVER_COUNT],
}

/// Locks even a poisoned mutex: teardown must work after a test panicked.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Stop the test servers and the spawned children.
    fn stop_processes(&self) {
        let servers: Vec<TestServer> = lock(&self.servers)
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for s in servers {
            s.stop();
        }
        let children: Vec<Child> = lock(&self.children).drain().map(|(_, c)| c).collect();
        for mut c in children {
            terminate_child(&mut c, CHILD_GRACE);
        }
    }

    fn teardown(&self) {
        self.stop_processes();
        let namespaces = std::mem::take(&mut *lock(&self.namespaces));
        for ns in namespaces.iter().rev() {
            delete_netns(ns);
        }
    }
}

/// A built testbed. Dropping it tears everything down.
pub struct Topology {
    /// Namespace prefix: namespaces are named `{prefix}-{role suffix}`.
    pub prefix: String,
    shared: Arc<Shared>,
}

/// Tears a topology down from another thread, e.g. a Ctrl-C handler.
#[derive(Clone)]
pub struct TeardownHandle(Arc<Shared>);

impl TeardownHandle {
    /// Same as [`Topology::teardown`]; idempotent, never panics.
    pub fn teardown(&self) {
        self.0.teardown();
    }
}

/// A fresh prefix `lbt{pid}x{n}` for tests, unique within this machine
/// while this process lives.
pub fn unique_prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "lbt{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl Topology {
    /// Build the topology. Leftover namespaces with exactly this prefix
    /// (from a crashed run) are removed first. On error everything created
    /// so far is removed again.
    pub fn up(prefix: &str) -> Result<Topology> {
        validate_prefix(prefix)?;
        destroy(prefix);
        let topo = Topology {
            prefix: prefix.to_string(),
            shared: Arc::new(Shared {
                namespaces: Mutex::new(Vec::new()),
                children: Mutex::new(HashMap::new()),
                servers: Mutex::new([None, None, None]),
                counters: Default::default(),
            }),
        };
        // On error `topo` is dropped here, which deletes what was created.
        topo.build()
            .with_context(|| format!("building testbed {prefix}"))?;
        Ok(topo)
    }

    fn build(&self) -> Result<()> {
        let [client, lb, sw, s1, s2, s3] = Role::ALL.map(|r| self.ns(r));
        let servers = [s1, s2, s3];

        for role in Role::ALL {
            let ns = self.ns(role);
            ip(&["netns", "add", &ns])?;
            lock(&self.shared.namespaces).push(ns.clone());
            // No IPv6: keeps router solicitations, MLD and DAD off the wire
            // so packet counters and captures see only the test's traffic.
            // Set before creating interfaces so `default` applies to them.
            write_sysctls(
                &ns,
                &[
                    ("net/ipv6/conf/all/disable_ipv6", "1"),
                    ("net/ipv6/conf/default/disable_ipv6", "1"),
                ],
                true,
            )?;
            ip_in(&ns, "link set lo up")?;
        }

        // Create veth pairs directly inside their namespaces, so that the
        // same name (eth0) can be used in several of them.
        veth(CLIENT_IF, &client, LB_EXT_IF, &lb)?;
        veth(LB_INT_IF, &lb, SWITCH_LB_PORT, &sw)?;
        for (i, ns) in servers.iter().enumerate() {
            veth(SERVER_IF, ns, &format!("sw-s{}", i + 1), &sw)?;
        }

        // The switch: one bridge (STP off, the default, so ports forward at
        // once) joining the LB and the servers in one L2 segment.
        ip_in(&sw, &format!("link add {BRIDGE_IF} type bridge"))?;
        ip_in(&sw, &format!("link set {BRIDGE_IF} up"))?;
        for port in [SWITCH_LB_PORT, "sw-s1", "sw-s2", "sw-s3"] {
            ip_in(&sw, &format!("link set {port} master {BRIDGE_IF}"))?;
            ip_in(&sw, &format!("link set {port} up"))?;
        }

        // Client.
        ip_in(&client, &format!("addr add {CLIENT_IP}/24 dev {CLIENT_IF}"))?;
        ip_in(&client, &format!("link set {CLIENT_IF} up"))?;
        ip_in(&client, &format!("route add default via {LB_EXT_IP}"))?;

        // Load balancer. The VIP and the SNAT address go on lo so that the
        // LB kernel owns them: traffic the XDP program passes up for them
        // (ARP, ICMP, replies to the LB's own probes) is handled locally.
        ip_in(&lb, &format!("addr add {LB_EXT_IP}/24 dev {LB_EXT_IF}"))?;
        ip_in(&lb, &format!("addr add {LB_INT_IP}/24 dev {LB_INT_IF}"))?;
        ip_in(&lb, &format!("addr add {VIP}/32 dev lo"))?;
        ip_in(&lb, &format!("addr add {SNAT_IP}/32 dev lo"))?;
        ip_in(&lb, &format!("link set {LB_EXT_IF} up"))?;
        ip_in(&lb, &format!("link set {LB_INT_IF} up"))?;
        let mut lb_sysctls = vec![("net/ipv4/ip_forward".to_string(), "1")];
        for dev in ["all", "default", "lo", LB_EXT_IF, LB_INT_IF] {
            // Rewritten packets handed to the kernel carry the local SNAT
            // address as source: without accept_local they would be dropped
            // as martians, and rp_filter would drop asymmetric paths.
            lb_sysctls.push((format!("net/ipv4/conf/{dev}/accept_local"), "1"));
            lb_sysctls.push((format!("net/ipv4/conf/{dev}/rp_filter"), "0"));
        }
        let lb_sysctls: Vec<(&str, &str)> =
            lb_sysctls.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        write_sysctls(&lb, &lb_sysctls, false)?;

        // Servers.
        for (ns, addr) in servers.iter().zip(SERVER_IPS) {
            ip_in(ns, &format!("addr add {addr}/24 dev {SERVER_IF}"))?;
            ip_in(ns, &format!("link set {SERVER_IF} up"))?;
            ip_in(ns, &format!("route add default via {LB_INT_IP}"))?;
        }

        // Senders compute real checksums (no tx offload, hence no TSO), so
        // the XDP program sees MTU-sized frames with valid checksums that it
        // can rewrite incrementally.
        self.exec(Role::Client, &["ethtool", "-K", CLIENT_IF, "tx", "off"])?;
        for i in 1..=SERVER_COUNT {
            self.exec(Role::Server(i), &["ethtool", "-K", SERVER_IF, "tx", "off"])?;
        }
        // Native XDP on a veth delivers XDP_TX/XDP_REDIRECT frames only if
        // the receiving peer runs NAPI; GRO on the peers of lb-ext/lb-int
        // enables that.
        self.exec(Role::Client, &["ethtool", "-K", CLIENT_IF, "gro", "on"])?;
        self.exec(
            Role::Switch,
            &["ethtool", "-K", SWITCH_LB_PORT, "gro", "on"],
        )?;
        Ok(())
    }

    /// Name of the namespace of `role`.
    pub fn ns(&self, role: Role) -> String {
        format!("{}-{}", self.prefix, role.suffix())
    }

    /// A handle that can tear this topology down from another thread (e.g.
    /// a Ctrl-C handler) while the `Topology` itself is in use.
    pub fn teardown_handle(&self) -> TeardownHandle {
        TeardownHandle(self.shared.clone())
    }

    /// Run `args` inside the namespace (`ip netns exec NS args...`) and wait.
    /// Errors (with stderr) if it exits non-zero.
    pub fn exec(&self, role: Role, args: &[&str]) -> Result<Output> {
        let out = self.exec_unchecked(role, args)?;
        if !out.status.success() {
            // Some tools (ping, curl -s) report only on stdout.
            let detail = if out.stderr.is_empty() {
                &out.stdout
            } else {
                &out.stderr
            };
            bail!(
                "`ip netns exec {} {}` failed ({}): {}",
                self.ns(role),
                args.join(" "),
                out.status,
                String::from_utf8_lossy(detail).trim()
            );
        }
        Ok(out)
    }

    /// Like [`exec`](Self::exec), but a non-zero exit is returned, not an
    /// error (for commands expected to fail, e.g. a ping that must not pass).
    pub fn exec_unchecked(&self, role: Role, args: &[&str]) -> Result<Output> {
        netns_command(&self.ns(role), args)?
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running ip netns exec {} {}", self.ns(role), args.join(" ")))
    }

    /// Start `args` in the background inside the namespace. stdin/stdout go
    /// to /dev/null, stderr is inherited. Returns the PID, which is the
    /// program's own (`ip netns exec` execs it). The child is stopped at
    /// teardown unless [`stop_child`](Self::stop_child) was called earlier.
    pub fn spawn(&self, role: Role, args: &[&str]) -> Result<u32> {
        let mut cmd = netns_command(&self.ns(role), args)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        self.track(cmd, role, args)
    }

    /// Like [`spawn`](Self::spawn), with stdout and stderr appended to `log`
    /// (its directory is created; the file is truncated first).
    pub fn spawn_logged(&self, role: Role, args: &[&str], log: &Path) -> Result<u32> {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let file2 = file.try_clone()?;
        let mut cmd = netns_command(&self.ns(role), args)?;
        cmd.stdin(Stdio::null()).stdout(file).stderr(file2);
        self.track(cmd, role, args)
    }

    fn track(&self, mut cmd: Command, role: Role, args: &[&str]) -> Result<u32> {
        // Hold the lock across spawn so a concurrent teardown cannot miss
        // the new child.
        let mut children = lock(&self.shared.children);
        if lock(&self.shared.namespaces).is_empty() {
            bail!("testbed {} is torn down", self.prefix);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {} in {}", args.join(" "), self.ns(role)))?;
        let pid = child.id();
        children.insert(pid, child);
        Ok(pid)
    }

    /// Send `signal` (e.g. `libc::SIGHUP`) to a spawned child.
    pub fn signal_child(&self, pid: u32, signal: libc::c_int) -> Result<()> {
        let children = lock(&self.shared.children);
        let child = children
            .get(&pid)
            .ok_or_else(|| anyhow!("pid {pid} is not a child spawned by this testbed"))?;
        // The Child is not yet reaped, so the PID cannot have been reused.
        send_signal(child.id(), signal).with_context(|| format!("signalling pid {pid}"))
    }

    /// Exit status of a spawned child if it has exited (it stays tracked).
    pub fn try_wait_child(&self, pid: u32) -> Result<Option<ExitStatus>> {
        let mut children = lock(&self.shared.children);
        let child = children
            .get_mut(&pid)
            .ok_or_else(|| anyhow!("pid {pid} is not a child spawned by this testbed"))?;
        Ok(child.try_wait()?)
    }

    /// Stop a spawned child now: SIGTERM, up to 5 s grace, then SIGKILL.
    /// Returns its exit status; it is no longer tracked afterwards.
    pub fn stop_child(&self, pid: u32) -> Result<ExitStatus> {
        let mut child = lock(&self.shared.children)
            .remove(&pid)
            .ok_or_else(|| anyhow!("pid {pid} is not a child spawned by this testbed"))?;
        terminate_child(&mut child, CHILD_GRACE).ok_or_else(|| anyhow!("could not reap pid {pid}"))
    }

    /// Start the test servers in all server namespaces.
    pub fn start_servers(&mut self) -> Result<()> {
        for i in 1..=SERVER_COUNT {
            self.start_server(i)?;
        }
        Ok(())
    }

    /// Start test server `idx` (1..=3): HTTP on [`HTTP_PORT`], UDP on
    /// [`UDP_PORT`], both bound to 0.0.0.0 in `{p}-s{idx}`. No-op if it runs.
    pub fn start_server(&mut self, idx: usize) -> Result<()> {
        check_server_idx(idx)?;
        let mut servers = lock(&self.shared.servers);
        if servers[idx - 1].is_some() {
            return Ok(());
        }
        let ns = self.ns(Role::Server(idx));
        // Sockets keep the namespace they were created in, so only the bind
        // needs to happen on a thread inside it; serving can be anywhere.
        let (listener, udp) = run_in_netns(&ns, || -> io::Result<(TcpListener, UdpSocket)> {
            let any = Ipv4Addr::UNSPECIFIED;
            Ok((
                TcpListener::bind((any, HTTP_PORT))?,
                UdpSocket::bind((any, UDP_PORT))?,
            ))
        })?
        .with_context(|| format!("binding test server sockets in {ns}"))?;
        servers[idx - 1] = Some(spawn_server(
            format!("s{idx}"),
            listener,
            udp,
            self.shared.counters[idx - 1].clone(),
        )?);
        Ok(())
    }

    /// Stop test server `idx` (1..=3): closes its listeners and its open
    /// connections, so its ports refuse new connections (RST / ICMP port
    /// unreachable) when this returns. No-op if it is not running or `idx`
    /// is out of range.
    pub fn stop_server(&mut self, idx: usize) {
        if check_server_idx(idx).is_err() {
            return;
        }
        let server = lock(&self.shared.servers)[idx - 1].take();
        if let Some(s) = server {
            s.stop();
        }
    }

    /// Whether test server `idx` is running.
    pub fn server_running(&self, idx: usize) -> bool {
        check_server_idx(idx).is_ok() && lock(&self.shared.servers)[idx - 1].is_some()
    }

    /// Counters of test server `idx` (1..=3; zero for anything else).
    pub fn server_stats(&self, idx: usize) -> ServerStats {
        if check_server_idx(idx).is_err() {
            return ServerStats::default();
        }
        let c = &self.shared.counters[idx - 1];
        ServerStats {
            tcp_connections: c.tcp_connections.load(Ordering::Relaxed),
            http_requests: c.http_requests.load(Ordering::Relaxed),
            udp_datagrams: c.udp_datagrams.load(Ordering::Relaxed),
        }
    }

    /// Stop servers and children, delete the namespaces. Idempotent, never
    /// panics (problems are printed to stderr).
    pub fn teardown(&mut self) {
        self.shared.teardown();
    }

    /// Keep the namespaces after this value is gone (for `testbed up`):
    /// servers and spawned children are stopped, the namespaces stay until
    /// [`destroy`] or [`cleanup_stale`].
    pub fn persist(self) {
        self.shared.stop_processes();
        lock(&self.shared.namespaces).clear();
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.shared.teardown();
    }
}

fn check_server_idx(idx: usize) -> Result<()> {
    if !(1..=SERVER_COUNT).contains(&idx) {
        bail!("server index {idx} out of range 1..={SERVER_COUNT}");
    }
    Ok(())
}

fn validate_prefix(prefix: &str) -> Result<()> {
    let ok_chars = prefix
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if prefix.is_empty() || prefix.len() > 64 || !ok_chars {
        bail!("invalid testbed prefix {prefix:?}: use 1-64 characters [A-Za-z0-9_-]");
    }
    Ok(())
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running `ip` (is iproute2 installed? try `cargo xtask setup`)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `ip -n NS ARGS`, with ARGS split on whitespace (none of ours contain any).
fn ip_in(ns: &str, args: &str) -> Result<()> {
    let mut all = vec!["-n", ns];
    all.extend(args.split_whitespace());
    ip(&all)
}

fn veth(name: &str, ns: &str, peer: &str, peer_ns: &str) -> Result<()> {
    ip(&[
        "link", "add", name, "netns", ns, "type", "veth", "peer", "name", peer, "netns", peer_ns,
    ])
}

fn netns_command(ns: &str, args: &[&str]) -> Result<Command> {
    if args.is_empty() {
        bail!("empty command for namespace {ns}");
    }
    // nsenter switches only the network namespace; `ip netns exec` would also give the
    // command a private /sys without the host's bpffs, hiding the balancer's pinned maps.
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={NETNS_DIR}/{ns}"))
        .arg("--")
        .args(args);
    Ok(cmd)
}

/// Write /proc/sys entries as seen from inside `ns` (net sysctls are per
/// namespace and resolved against the writing thread's namespace).
fn write_sysctls(ns: &str, entries: &[(&str, &str)], skip_missing: bool) -> Result<()> {
    let entries: Vec<(String, String)> = entries
        .iter()
        .map(|(k, v)| (format!("/proc/sys/{k}"), v.to_string()))
        .collect();
    run_in_netns(ns, move || -> Result<()> {
        for (path, value) in &entries {
            if skip_missing && !Path::new(path).exists() {
                continue;
            }
            std::fs::write(path, value).with_context(|| format!("writing {value} to {path}"))?;
        }
        Ok(())
    })?
    .with_context(|| format!("setting sysctls in {ns}"))
}

/// Run `f` on a fresh thread that has joined network namespace `ns`
/// (`setns(CLONE_NEWNET)` on `/var/run/netns/NS`) and return its result.
/// Sockets created by `f` stay in that namespace even when used elsewhere.
/// Errors if the namespace cannot be entered; a panic in `f` is propagated.
pub fn run_in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    if ns.is_empty() || ns.contains('/') || ns.starts_with('.') {
        bail!("invalid namespace name {ns:?}");
    }
    let path = Path::new(NETNS_DIR).join(ns);
    let handle = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let thread = thread::Builder::new()
        .name(format!("netns {ns}"))
        .spawn(move || -> io::Result<T> {
            // SAFETY: plain syscall on a valid, open fd. Only this thread
            // changes namespace (a network-namespace switch is per thread).
            let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            drop(handle);
            Ok(f())
        })
        .context("spawning a thread")?;
    match thread.join() {
        Ok(result) => result.with_context(|| format!("setns into {}", path.display())),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Names of all existing network namespaces.
pub fn list_netns() -> Vec<String> {
    let out = match Command::new("ip").args(["netns", "list"]).output() {
        Ok(o) if o.status.success() => o,
        _ => return Vec::new(),
    };
    // Lines look like "name (id: 3)" or just "name".
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Delete the namespaces of the topology with exactly this prefix (also
/// one made by `cargo xtask testbed up` in another process). Processes
/// still inside them are terminated first. Never panics.
pub fn destroy(prefix: &str) {
    let existing = list_netns();
    for role in Role::ALL.iter().rev() {
        let ns = format!("{prefix}-{}", role.suffix());
        if existing.contains(&ns) {
            delete_netns(&ns);
        }
    }
}

/// Delete leftover testbed namespaces whose names start with `prefix_start`
/// and end in one of the role suffixes (`-client`, `-lb`, `-sw`, `-s1`..`-s3`),
/// so unrelated namespaces are never touched. Returns the deleted names.
pub fn cleanup_stale(prefix_start: &str) -> Vec<String> {
    let suffixes: Vec<String> = Role::ALL
        .iter()
        .map(|r| format!("-{}", r.suffix()))
        .collect();
    let mut deleted = Vec::new();
    for ns in list_netns() {
        let ours = ns.starts_with(prefix_start)
            && suffixes
                .iter()
                .any(|s| ns.len() > s.len() && ns.ends_with(s.as_str()));
        if ours {
            delete_netns(&ns);
            deleted.push(ns);
        }
    }
    deleted
}

/// Terminate what still runs in `ns`, then delete it. A process left inside
/// would keep the namespace (and its veths, XDP programs) alive anonymously.
fn delete_netns(ns: &str) {
    let own = std::process::id();
    let pids = |ns: &str| -> Vec<u32> {
        Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .filter(|&p| p != own)
                    .collect()
            })
            .unwrap_or_default()
    };
    let left = pids(ns);
    if !left.is_empty() {
        for &p in &left {
            let _ = send_signal(p, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut left = pids(ns);
        while !left.is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
            left = pids(ns);
        }
        for &p in &left {
            let _ = send_signal(p, libc::SIGKILL);
        }
    }
    match Command::new("ip")
        .args(["netns", "del", ns])
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!(
            "testbed: warning: `ip netns del {ns}` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => eprintln!("testbed: warning: running `ip netns del {ns}`: {e}"),
    }
}

fn send_signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// SIGTERM, wait up to `grace`, then SIGKILL; always reaps. Never panics.
fn terminate_child(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let _ = send_signal(child.id(), libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(_) => break,
        }
    }
    eprintln!("testbed: pid {} ignored SIGTERM, killing it", child.id());
    let _ = child.kill();
    child.wait().ok()
}

// ---------------------------------------------------------------------------
// Test servers
// ---------------------------------------------------------------------------

fn spawn_server(
    name: String,
    listener: TcpListener,
    udp: UdpSocket,
    counters: Arc<Counters>,
) -> Result<TestServer> {
    let stop = Arc::new(AtomicBool::new(false));
    listener.set_nonblocking(true)?;
    udp.set_read_timeout(Some(SERVER_POLL))?;
    let http = {
        let (stop, name, counters) = (stop.clone(), name.clone(), counters.clone());
        thread::Builder::new()
            .name(format!("{name} http"))
            .spawn(move || http_accept_loop(listener, &name, &stop, &counters))?
    };
    let udp = {
        let (stop, name) = (stop.clone(), name.clone());
        thread::Builder::new()
            .name(format!("{name} udp"))
            .spawn(move || udp_loop(udp, &name, &stop, &counters))?
    };
    Ok(TestServer {
        stop,
        threads: vec![http, udp],
    })
}

/// Accepts until `stop`; then closes the listener and every open
/// connection, and joins the connection threads.
fn http_accept_loop(
    listener: TcpListener,
    name: &str,
    stop: &AtomicBool,
    counters: &Arc<Counters>,
) {
    let open: Arc<Mutex<HashMap<u64, TcpStream>>> = Arc::default();
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    let mut next_id = 0u64;
    while !stop.load(Ordering::SeqCst) {
        // poll() instead of a blocking accept: wakes at once for a new
        // connection, and at least every SERVER_POLL to check `stop`.
        if !wait_readable(&listener, SERVER_POLL) {
            continue;
        }
        let (stream, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => {
                // E.g. ECONNABORTED or EMFILE; back off instead of spinning.
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        counters.tcp_connections.fetch_add(1, Ordering::Relaxed);
        workers.retain(|w| !w.is_finished());
        let id = next_id;
        next_id += 1;
        if let Ok(clone) = stream.try_clone() {
            lock(&open).insert(id, clone);
        }
        let (open2, name, counters) = (open.clone(), name.to_string(), counters.clone());
        let spawned = thread::Builder::new()
            .name(format!("{name} conn"))
            .spawn(move || {
                let _ = serve_tcp_connection(stream, peer, &name, &counters);
                lock(&open2).remove(&id);
            });
        match spawned {
            Ok(w) => workers.push(w),
            Err(_) => {
                lock(&open).remove(&id);
            }
        }
    }
    drop(listener);
    for (_, s) in lock(&open).drain() {
        let _ = s.shutdown(Shutdown::Both);
    }
    for w in workers {
        let _ = w.join();
    }
}

fn wait_readable(fd: &impl AsRawFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: pfd is a valid pollfd array of length 1 for the whole call.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    rc > 0
}

fn serve_tcp_connection(
    stream: TcpStream,
    peer: SocketAddr,
    name: &str,
    counters: &Counters,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    // Responses are written in one flush; Nagle would only delay the next
    // request's response on keep-alive connections.
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(HTTP_IDLE_TIMEOUT))?;
    let reader = BufReader::new(stream.try_clone()?);
    let writer = BufWriter::with_capacity(64 * 1024, stream);
    serve_http(reader, writer, name, Some(peer), counters)
}

#[derive(Debug)]
struct Request {
    method: String,
    target: String,
    keep_alive: bool,
    content_length: u64,
}

/// Reads one request head. `Ok(None)` on a clean EOF before a request.
fn read_request<R: BufRead>(reader: &mut R) -> io::Result<Option<Request>> {
    let bad = |msg: &str| io::Error::new(io::ErrorKind::InvalidData, msg.to_string());
    let mut line = String::new();
    if read_line_limited(reader, &mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("malformed request line"));
    };
    let mut keep_alive = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err(bad("unsupported HTTP version")),
    };
    let mut request = Request {
        method: method.to_string(),
        target: target.to_string(),
        keep_alive,
        content_length: 0,
    };
    for _ in 0..=MAX_HEADERS {
        line.clear();
        if read_line_limited(reader, &mut line)? == 0 {
            return Err(bad("EOF inside request head"));
        }
        let header = line.trim_end_matches(['\r', '\n']);
        if header.is_empty() {
            request.keep_alive = keep_alive;
            return Ok(Some(request));
        }
        let Some((key, value)) = header.split_once(':') else {
            return Err(bad("malformed header"));
        };
        let value = value.trim();
        if key.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        } else if key.eq_ignore_ascii_case("content-length") {
            request.content_length = value.parse().map_err(|_| bad("bad Content-Length"))?;
        } else if key.eq_ignore_ascii_case("transfer-encoding") {
            return Err(bad(
                "request bodies with Transfer-Encoding are not supported",
            ));
        }
    }
    Err(bad("too many headers"))
}

fn read_line_limited<R: BufRead>(reader: &mut R, line: &mut String) -> io::Result<usize> {
    let n = reader.by_ref().take(MAX_HEAD_LINE).read_line(line)?;
    if n as u64 == MAX_HEAD_LINE && !line.ends_with('\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "header line too long",
        ));
    }
    Ok(n)
}

/// Serves HTTP/1.x requests until the client closes, asks to close, or an
/// error. Generic over the transport so it can be unit-tested without a
/// network.
fn serve_http<R: BufRead, W: Write>(
    mut reader: R,
    mut writer: W,
    name: &str,
    peer: Option<SocketAddr>,
    counters: &Counters,
) -> io::Result<()> {
    loop {
        let request = match read_request(&mut reader) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let body = format!("bad request: {e}\n");
                write_head(
                    &mut writer,
                    "400 Bad Request",
                    name,
                    peer,
                    body.len() as u64,
                    false,
                )?;
                writer.write_all(body.as_bytes())?;
                return writer.flush();
            }
            Err(e) => return Err(e),
        };
        counters.http_requests.fetch_add(1, Ordering::Relaxed);
        let keep_alive = request.keep_alive;
        let head_only = request.method == "HEAD";
        // An upload is hashed as it arrives, so tests can check what reached the server.
        if matches!(request.method.as_str(), "POST" | "PUT") && request.target == "/sha256" {
            let mut hasher = Sha256::new();
            let mut body = reader.by_ref().take(request.content_length);
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0u64;
            loop {
                let n = body.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                got += n as u64;
            }
            if got != request.content_length {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let answer = format!("{}\n", hex(&hasher.finalize()));
            write_head(
                &mut writer,
                "200 OK",
                name,
                peer,
                answer.len() as u64,
                keep_alive,
            )?;
            writer.write_all(answer.as_bytes())?;
            writer.flush()?;
            if !keep_alive {
                return Ok(());
            }
            continue;
        }
        // Discard any other request body; only GET/HEAD are meaningful there.
        io::copy(
            &mut reader.by_ref().take(request.content_length),
            &mut io::sink(),
        )?;
        if request.method != "GET" && !head_only {
            let body = "method not allowed\n";
            write_head(
                &mut writer,
                "405 Method Not Allowed",
                name,
                peer,
                body.len() as u64,
                keep_alive,
            )?;
            writer.write_all(body.as_bytes())?;
        } else if request.target == "/" {
            let body = format!("{name}\n");
            write_head(
                &mut writer,
                "200 OK",
                name,
                peer,
                body.len() as u64,
                keep_alive,
            )?;
            if !head_only {
                writer.write_all(body.as_bytes())?;
            }
        } else if let Some(n) = request
            .target
            .strip_prefix("/bytes/")
            .and_then(|n| n.parse::<u64>().ok())
        {
            write_head(&mut writer, "200 OK", name, peer, n, keep_alive)?;
            if !head_only {
                copy_payload(n, &mut writer)?;
            }
        } else {
            let body = "not found\n";
            write_head(
                &mut writer,
                "404 Not Found",
                name,
                peer,
                body.len() as u64,
                keep_alive,
            )?;
            if !head_only {
                writer.write_all(body.as_bytes())?;
            }
        }
        writer.flush()?;
        if !keep_alive {
            return Ok(());
        }
    }
}

fn write_head<W: Write>(
    w: &mut W,
    status: &str,
    name: &str,
    peer: Option<SocketAddr>,
    content_length: u64,
    keep_alive: bool,
) -> io::Result<()> {
    write!(
        w,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {content_length}\r\n\
         X-Server: {name}\r\n"
    )?;
    // The address the server saw: lets tests check the SNAT/DSR behaviour.
    if let Some(peer) = peer {
        write!(w, "X-Peer: {peer}\r\n")?;
    }
    let connection = if keep_alive { "keep-alive" } else { "close" };
    write!(w, "Connection: {connection}\r\n\r\n")
}

fn copy_payload<W: Write>(n: u64, w: &mut W) -> io::Result<()> {
    let mut payload = payload_bytes(n);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let got = payload.read(&mut buf)?;
        if got == 0 {
            return Ok(());
        }
        w.write_all(&buf[..got])?;
    }
}

/// Answers each datagram with `{name}:` + the datagram until `stop`.
fn udp_loop(sock: UdpSocket, name: &str, stop: &AtomicBool, counters: &Counters) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::SeqCst) {
        match sock.recv_from(&mut buf) {
            Ok((n, peer)) => {
                counters.udp_datagrams.fetch_add(1, Ordering::Relaxed);
                // Oversized replies fail with EMSGSIZE; nothing to do then.
                let _ = sock.send_to(&udp_reply(name, &buf[..n]), peer);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            // E.g. a queued ICMP error from an earlier reply; keep serving.
            Err(_) => thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// The UDP responder's answer to `datagram`: `s{idx}:` followed by it.
pub fn udp_reply(server_name: &str, datagram: &[u8]) -> Vec<u8> {
    let mut reply = Vec::with_capacity(server_name.len() + 1 + datagram.len());
    reply.extend_from_slice(server_name.as_bytes());
    reply.push(b':');
    reply.extend_from_slice(datagram);
    reply
}

// ---------------------------------------------------------------------------
// Deterministic payload
// ---------------------------------------------------------------------------

/// The `n` bytes that `GET /bytes/{n}` returns: a fixed pseudo-random
/// stream (splitmix64), so a transfer can be verified without storing it.
/// Byte `i` is the same whatever `n` is.
pub fn payload_bytes(n: u64) -> Payload {
    Payload {
        state: 0x6c62_2d70_6179_6c64, // "lb-payld"
        remaining: n,
        word: [0; 8],
        used: 8,
    }
}

/// Lowercase hex SHA-256 of `payload_bytes(n)`.
pub fn payload_sha256(n: u64) -> String {
    let mut hasher = Sha256::new();
    let mut payload = payload_bytes(n);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let got = payload.read(&mut buf).unwrap_or(0);
        if got == 0 {
            break;
        }
        hasher.update(&buf[..got]);
    }
    hex(&hasher.finalize())
}

/// Lowercase hex SHA-256 of `data` (to compare with [`payload_sha256`]).
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reader/iterator over the deterministic payload; see [`payload_bytes`].
#[derive(Clone, Debug)]
pub struct Payload {
    state: u64,
    remaining: u64,
    word: [u8; 8],
    used: usize,
}

impl Payload {
    fn next_word(&mut self) -> [u8; 8] {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)).to_le_bytes()
    }
}

impl Read for Payload {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let mut filled = 0;
        while filled < want {
            if self.used == 8 {
                self.word = self.next_word();
                self.used = 0;
            }
            let take = (8 - self.used).min(want - filled);
            buf[filled..filled + take].copy_from_slice(&self.word[self.used..self.used + take]);
            self.used += take;
            filled += take;
        }
        self.remaining -= filled as u64;
        Ok(filled)
    }
}

impl Iterator for Payload {
    type Item = u8;
    fn next(&mut self) -> Option<u8> {
        let mut b = [0u8];
        match self.read(&mut b) {
            Ok(1) => Some(b[0]),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------
// Client helpers for tests
// ---------------------------------------------------------------------------

/// A parsed HTTP response from [`http_get`].
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lowercased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First header with this (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text, e.g. `"s1\n"`.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `GET path` on a new connection from inside namespace `ns`, with
/// `Connection: close`; reads until EOF. `timeout` bounds connect and each read.
pub fn http_get(
    ns: &str,
    addr: SocketAddrV4,
    path: &str,
    timeout: Duration,
) -> Result<HttpResponse> {
    let path = path.to_string();
    run_in_netns(ns, move || -> Result<HttpResponse> {
        let mut s = TcpStream::connect_timeout(&addr.into(), timeout)
            .with_context(|| format!("connecting to {addr}"))?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .with_context(|| format!("reading response from {addr}"))?;
        parse_response(&raw)
    })?
}

fn parse_response(raw: &[u8]) -> Result<HttpResponse> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("no complete HTTP response head in {} bytes", raw.len()))?;
    let head = std::str::from_utf8(&raw[..end]).context("non-UTF-8 response head")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    })
}

/// Send one UDP datagram from inside `ns` and wait up to `timeout` for the reply.
pub fn udp_request(
    ns: &str,
    addr: SocketAddrV4,
    payload: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>> {
    let payload = payload.to_vec();
    run_in_netns(ns, move || -> Result<Vec<u8>> {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        s.connect(addr)?;
        s.set_read_timeout(Some(timeout))?;
        s.send(&payload)?;
        let mut buf = vec![0u8; 65536];
        let n = s
            .recv(&mut buf)
            .with_context(|| format!("waiting for a UDP reply from {addr}"))?;
        buf.truncate(n);
        Ok(buf)
    })?
}

/// Count response bodies per server: `"s1\n"` counts for `"s1"`, anything
/// else under its trimmed text.
pub fn count_by_server<I, S>(bodies: I) -> BTreeMap<String, usize>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut counts = BTreeMap::new();
    for b in bodies {
        *counts.entry(b.as_ref().trim().to_string()).or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    /// Runs the HTTP handler over a socketpair: exercises parsing and
    /// keep-alive without any network traffic.
    fn converse(request: &[u8]) -> Vec<u8> {
        let (mut client, server) = UnixStream::pair().unwrap();
        let worker = thread::spawn(move || {
            let reader = BufReader::new(server.try_clone().unwrap());
            let counters = Counters::default();
            serve_http(reader, server, "s2", None, &counters).unwrap();
        });
        client.write_all(request).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).unwrap();
        worker.join().unwrap();
        out
    }

    #[test]
    fn payload_is_deterministic_and_chunking_independent() {
        let all: Vec<u8> = payload_bytes(1000).collect();
        assert_eq!(all.len(), 1000);
        let mut chunked = Vec::new();
        let mut p = payload_bytes(1000);
        let mut buf = [0u8; 7];
        loop {
            let n = p.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            chunked.extend_from_slice(&buf[..n]);
        }
        assert_eq!(all, chunked);
        // A prefix of a longer payload is the shorter payload.
        let longer: Vec<u8> = payload_bytes(5000).collect();
        assert_eq!(&longer[..1000], &all[..]);
        assert_eq!(payload_sha256(1000), sha256_hex(&all));
        assert_eq!(payload_sha256(0), sha256_hex(&[]));
        // Not trivially constant.
        assert!(all.iter().any(|&b| b != all[0]));
    }

    #[test]
    fn http_root_and_keep_alive() {
        let out = converse(
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        );
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
        assert!(text.contains("X-Server: s2\r\n"));
        assert!(text.contains("Connection: keep-alive\r\n"));
        assert!(text.ends_with("Connection: close\r\n\r\ns2\n"), "{text}");
    }

    #[test]
    fn http_bytes_and_errors() {
        let out = converse(b"GET /bytes/100000 HTTP/1.0\r\n\r\nGET / HTTP/1.1\r\n\r\n");
        let resp = parse_response(&out).unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("content-length"), Some("100000"));
        // HTTP/1.0 without keep-alive closes after the first response.
        assert_eq!(resp.body.len(), 100000);
        assert_eq!(sha256_hex(&resp.body), payload_sha256(100000));

        let resp = parse_response(&converse(
            b"GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n",
        ))
        .unwrap();
        assert_eq!(resp.status, 404);
        let resp = parse_response(&converse(b"garbage\r\n\r\n")).unwrap();
        assert_eq!(resp.status, 400);
        let resp = parse_response(&converse(
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        ))
        .unwrap();
        assert_eq!(resp.status, 405);
        let resp = parse_response(&converse(
            b"PUT /sha256 HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        ))
        .unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), format!("{}\n", sha256_hex(b"abc")));
        let resp = parse_response(&converse(
            b"HEAD /bytes/10 HTTP/1.1\r\nConnection: close\r\n\r\n",
        ))
        .unwrap();
        assert_eq!(resp.status, 200);
        assert!(resp.body.is_empty());
    }

    #[test]
    fn udp_reply_format() {
        assert_eq!(udp_reply("s3", b"ping"), b"s3:ping");
    }

    #[test]
    fn counting() {
        let c = count_by_server(["s1\n", "s2\n", "s1\n"]);
        assert_eq!(c.get("s1"), Some(&2));
        assert_eq!(c.get("s2"), Some(&1));
    }

    #[test]
    fn role_names() {
        let names: Vec<String> = Role::ALL.iter().map(|r| r.suffix()).collect();
        assert_eq!(names, ["client", "lb", "sw", "s1", "s2", "s3"]);
        assert!(validate_prefix("lbt123x4").is_ok());
        assert!(validate_prefix("bad/name").is_err());
        assert!(validate_prefix("").is_err());
    }

    fn require_root() {
        // SAFETY: no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "this test needs root (network namespaces)"
        );
    }

    /// End to end without the load balancer: plain routing through the LB
    /// namespace to the servers, their HTTP and UDP services, stop/start,
    /// and a teardown that leaves nothing behind.
    #[test]
    #[ignore = "needs root: creates network namespaces"]
    fn topology_routes_and_serves() {
        require_root();
        let prefix = unique_prefix();
        let mut topo = Topology::up(&prefix).unwrap();
        topo.start_servers().unwrap();
        let client = topo.ns(Role::Client);

        topo.exec(Role::Client, &["ping", "-c1", "-W2", "198.19.0.11"])
            .unwrap();

        // curl by the server's real IP, through the LB namespace's routing.
        for (i, ip) in SERVER_IPS.iter().enumerate() {
            let out = topo
                .exec(
                    Role::Client,
                    &["curl", "-s", "--max-time", "5", &format!("http://{ip}/")],
                )
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                format!("s{}\n", i + 1)
            );
        }
        let n = 1_048_576u64;
        let out = topo
            .exec(
                Role::Client,
                &[
                    "curl",
                    "-s",
                    "--max-time",
                    "20",
                    &format!("http://{}/bytes/{n}", SERVER_IPS[1]),
                ],
            )
            .unwrap();
        assert_eq!(out.stdout.len() as u64, n);
        assert_eq!(sha256_hex(&out.stdout), payload_sha256(n));

        // The in-process client helper sees the real client address.
        let resp = http_get(
            &client,
            SocketAddrV4::new(SERVER_IPS[2], HTTP_PORT),
            "/",
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), "s3\n");
        assert_eq!(resp.header("x-server"), Some("s3"));
        assert!(
            resp.header("x-peer")
                .unwrap()
                .starts_with(&format!("{CLIENT_IP}:"))
        );

        // UDP with socat, and with the helper.
        let out = topo
            .exec(
                Role::Client,
                &[
                    "sh",
                    "-c",
                    &format!(
                        "printf hello | socat -T2 - UDP4:{}:{UDP_PORT}",
                        SERVER_IPS[0]
                    ),
                ],
            )
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "s1:hello");
        let reply = udp_request(
            &client,
            SocketAddrV4::new(SERVER_IPS[1], UDP_PORT),
            b"x",
            Duration::from_secs(2),
        )
        .unwrap();
        assert_eq!(reply, b"s2:x");
        assert!(topo.server_stats(1).udp_datagrams >= 1);
        assert!(topo.server_stats(2).http_requests >= 1);

        // A stopped server refuses connections; restarting it works.
        topo.stop_server(1);
        assert!(!topo.server_running(1));
        let out = topo
            .exec_unchecked(
                Role::Client,
                &["curl", "-s", "--max-time", "3", "http://198.19.0.11/"],
            )
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(7),
            "curl must fail to connect (exit 7)"
        );
        topo.start_server(1).unwrap();
        let out = topo
            .exec(
                Role::Client,
                &["curl", "-s", "--max-time", "5", "http://198.19.0.11/"],
            )
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "s1\n");

        // The VIP is owned by the LB kernel but nothing listens there yet.
        let out = topo
            .exec_unchecked(
                Role::Client,
                &["curl", "-s", "--max-time", "3", &format!("http://{VIP}/")],
            )
            .unwrap();
        assert!(!out.status.success());

        // Spawned children are tracked and stopped.
        let pid = topo.spawn(Role::Server(3), &["sleep", "60"]).unwrap();
        assert!(topo.try_wait_child(pid).unwrap().is_none());
        let status = topo.stop_child(pid).unwrap();
        assert!(!status.success());
        let _lingering = topo.spawn(Role::Lb, &["sleep", "60"]).unwrap();

        let handle = topo.teardown_handle();
        drop(topo);
        handle.teardown(); // idempotent
        let left: Vec<String> = list_netns()
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect();
        assert!(left.is_empty(), "namespaces left behind: {left:?}");
    }
}
