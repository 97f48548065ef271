//! The client → LB → three servers testbed, built on [`Netns`], shared by `cargo xtask
//! demo`, the integration tests (package `lb-integration`) and the benchmarks.
//!
//! ```text
//!  {p}-client            {p}-lb                         {p}-sw          {p}-s1..s3
//!  eth0 198.18.0.2 ── lb-ext 198.18.0.1                 br0 ─ sw-s1 ── eth0 198.19.0.11
//!                        lb-int 198.19.0.1 ──── sw-lb ─┤    ─ sw-s2 ── eth0 198.19.0.12
//!                        lo: VIP 198.18.1.10/32        └─── sw-s3 ── eth0 198.19.0.13
//!                            SNAT 198.19.1.1/32
//! ```
//!
//! [`Topology::up_with`] can put a router namespace `{p}-rt` with a narrow link
//! ([`Router`]) between the client and the LB, or between the switch and one server,
//! keeping every address above (see [`RouterSite`]).
//!
//! All addresses are in 198.18.0.0/15 (RFC 2544 benchmarking range), so
//! nothing here can collide with a real network. Every namespace, veth and
//! bridge is created by [`Topology::up`] and removed again on drop; the test
//! HTTP/UDP servers run as threads of the calling process whose sockets
//! were created inside the server namespaces (see [`run_in_netns`]).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::lock;
use crate::netns::{Netns, add_veth_between, delete_netns, list_netns, run_in_netns};
use crate::process::{netns_command, send_signal, terminate_child};
use crate::server::{Counters, ServerStats, TestServer};

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

/// The router's address on its LB-facing link when it sits on the client side.
pub const ROUTER_CLIENT_SIDE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
/// The router's address on its switch-facing link when it sits before a server.
pub const ROUTER_SERVER_SIDE_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 254);
/// Addresses of the router's other link (towards the client or the server).
const ROUTER_CLIENT_SIDE_FAR_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 253);
const ROUTER_SERVER_SIDE_FAR_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 253);
/// The router's interfaces: `rt-near` towards the LB (directly or through the
/// switch), `rt-far` towards the client or the server, with the narrow MTU.
pub const ROUTER_NEAR_IF: &str = "rt-near";
pub const ROUTER_FAR_IF: &str = "rt-far";
const ROUTER_NEAR_MAC: &str = "02:00:00:00:fe:01";
const ROUTER_FAR_MAC: &str = "02:00:00:00:fe:02";

/// Interface names (unique only inside their namespace).
pub const CLIENT_IF: &str = "eth0";
pub const LB_EXT_IF: &str = "lb-ext";
pub const LB_INT_IF: &str = "lb-int";
pub const SERVER_IF: &str = "eth0";
pub const BRIDGE_IF: &str = "br0";
/// Bridge port facing the LB (peer of `lb-int`).
pub const SWITCH_LB_PORT: &str = "sw-lb";

/// How long teardown lets a spawned child react to SIGTERM before SIGKILL.
const CHILD_GRACE: Duration = Duration::from_secs(5);
/// The namespaces of a topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Client,
    Lb,
    Switch,
    /// Backend 1..=3.
    Server(usize),
    /// The optional router of [`Topology::up_with`] (not in [`Role::ALL`]).
    Router,
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
            Role::Router => "rt".into(),
        }
    }
}

/// Every namespace a topology may have: [`Role::ALL`] and the optional router.
const ALL_WITH_ROUTER: [Role; 7] = [
    Role::Client,
    Role::Lb,
    Role::Switch,
    Role::Server(1),
    Role::Server(2),
    Role::Server(3),
    Role::Router,
];

/// Where [`Topology::up_with`] puts a router. Either way nobody's address changes:
/// the hosts at both ends of the router keep their /24 and reach each other through
/// it by permanent neighbour entries naming the router's MACs, so configs written for
/// the plain topology work unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouterSite {
    /// Between the client and the LB's `lb-ext` (which then faces the router).
    Client,
    /// Between the switch and server `n` (1..=3), whose bridge port keeps its name.
    Server(usize),
}

/// A router namespace `{p}-rt` in the path, forwarding (and sending ICMP errors, not
/// rate-limited) like any Linux router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Router {
    pub site: RouterSite,
    /// MTU of the router's link towards the client or server (`rt-far`, the router's
    /// end only: the host behind it keeps 1500 and so advertises an MSS the link cannot
    /// carry, which is what path MTU discovery must then find out).
    pub far_mtu: u32,
}

/// Variations of the testbed; the default is the plain topology of [`Topology::up`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    pub router: Option<Router>,
}

/// State shared between a [`Topology`] and its [`TeardownHandle`]s.
struct Shared {
    /// Namespaces that exist and must be deleted; emptied by teardown.
    namespaces: Mutex<Vec<Netns>>,
    children: Mutex<HashMap<u32, Child>>,
    servers: Mutex<[Option<TestServer>; SERVER_COUNT]>,
    counters: [Arc<Counters>; SERVER_COUNT],
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
        // Dropping a Netns deletes it; servers before the switch before the LB.
        for ns in namespaces.into_iter().rev() {
            drop(ns);
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
        Topology::up_with(prefix, Options::default())
    }

    /// [`up`](Self::up) with variations (a router in the path).
    pub fn up_with(prefix: &str, options: Options) -> Result<Topology> {
        validate_prefix(prefix)?;
        if let Some(Router {
            site: RouterSite::Server(idx),
            ..
        }) = options.router
        {
            check_server_idx(idx)?;
        }
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
        topo.build(options)
            .with_context(|| format!("building testbed {prefix}"))?;
        Ok(topo)
    }

    fn build(&self, options: Options) -> Result<()> {
        let mut namespaces = lock(&self.shared.namespaces);
        let roles = if options.router.is_some() {
            &ALL_WITH_ROUTER[..]
        } else {
            &Role::ALL[..]
        };
        for &role in roles {
            // Kept in `shared` at once, so an error below deletes what exists.
            namespaces.push(Netns::create(&self.ns(role))?);
            // No IPv6: keeps router solicitations, MLD and DAD off the wire
            // so packet counters and captures see only the test's traffic.
            // Set before creating interfaces so `default` applies to them.
            namespaces[namespaces.len() - 1].set_sysctls(
                &[
                    ("net/ipv6/conf/all/disable_ipv6", "1"),
                    ("net/ipv6/conf/default/disable_ipv6", "1"),
                ],
                true,
            )?;
        }
        let [client, lb, sw, s1, s2, s3] = &namespaces[..6] else {
            unreachable!("one namespace per role");
        };
        let servers = [s1, s2, s3];
        let router = options.router.zip(namespaces.get(6));

        if let Some((
            Router {
                site: RouterSite::Client,
                ..
            },
            rt,
        )) = router
        {
            add_veth_between(CLIENT_IF, client, ROUTER_FAR_IF, rt)?;
            add_veth_between(ROUTER_NEAR_IF, rt, LB_EXT_IF, lb)?;
        } else {
            add_veth_between(CLIENT_IF, client, LB_EXT_IF, lb)?;
        }
        add_veth_between(LB_INT_IF, lb, SWITCH_LB_PORT, sw)?;
        for (i, ns) in servers.iter().enumerate() {
            let port = format!("sw-s{}", i + 1);
            match router {
                Some((
                    Router {
                        site: RouterSite::Server(n),
                        ..
                    },
                    rt,
                )) if n == i + 1 => {
                    add_veth_between(SERVER_IF, ns, ROUTER_FAR_IF, rt)?;
                    add_veth_between(ROUTER_NEAR_IF, rt, &port, sw)?;
                }
                _ => add_veth_between(SERVER_IF, ns, &port, sw)?,
            }
        }

        // The switch: one bridge (STP off, the default, so ports forward at
        // once) joining the LB and the servers in one L2 segment.
        sw.ip(&format!("link add {BRIDGE_IF} type bridge"))?;
        sw.ip(&format!("link set {BRIDGE_IF} up"))?;
        for port in [SWITCH_LB_PORT, "sw-s1", "sw-s2", "sw-s3"] {
            sw.ip(&format!("link set {port} master {BRIDGE_IF}"))?;
            sw.ip(&format!("link set {port} up"))?;
        }

        // Client.
        client.ip(&format!("addr add {CLIENT_IP}/24 dev {CLIENT_IF}"))?;
        client.ip(&format!("link set {CLIENT_IF} up"))?;
        client.ip(&format!("route add default via {LB_EXT_IP}"))?;

        // Load balancer. The VIP and the SNAT address go on lo so that the
        // LB kernel owns them: traffic the XDP program passes up for them
        // (ARP, ICMP, replies to the LB's own probes) is handled locally.
        lb.ip(&format!("addr add {LB_EXT_IP}/24 dev {LB_EXT_IF}"))?;
        lb.ip(&format!("addr add {LB_INT_IP}/24 dev {LB_INT_IF}"))?;
        lb.ip(&format!("addr add {VIP}/32 dev lo"))?;
        lb.ip(&format!("addr add {SNAT_IP}/32 dev lo"))?;
        lb.ip(&format!("link set {LB_EXT_IF} up"))?;
        lb.ip(&format!("link set {LB_INT_IF} up"))?;
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
        lb.set_sysctls(&lb_sysctls, false)?;

        // Servers.
        for (ns, addr) in servers.iter().zip(SERVER_IPS) {
            ns.ip(&format!("addr add {addr}/24 dev {SERVER_IF}"))?;
            ns.ip(&format!("link set {SERVER_IF} up"))?;
            ns.ip(&format!("route add default via {LB_INT_IP}"))?;
        }
        if let Some((config, rt)) = router {
            wire_router(config, rt, client, lb, &servers)?;
        }
        drop(namespaces);

        // Senders compute real checksums (no tx offload, hence no TSO), so
        // the XDP program sees MTU-sized frames with valid checksums that it
        // can rewrite incrementally, and verify on new flows: with offload on,
        // a veth delivers a socket's packet with only the pseudo-header sum
        // in its L4 checksum field (CHECKSUM_PARTIAL), which the balancer
        // drops as corrupt (docs/architecture.md, "Checksums"). A frame from
        // a wire always carries its full checksum.
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
        if let Some(Router {
            site: RouterSite::Client,
            ..
        }) = options.router
        {
            // The router's end of lb-ext takes over that role from the client's.
            self.exec(
                Role::Router,
                &["ethtool", "-K", ROUTER_NEAR_IF, "gro", "on"],
            )?;
        }
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
        servers[idx - 1] = Some(TestServer::spawn(
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
        self.shared.counters[idx - 1].snapshot()
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
        for ns in std::mem::take(&mut *lock(&self.shared.namespaces)) {
            ns.persist();
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.shared.teardown();
    }
}

/// Addresses, routes and neighbours of the router of `config` and of the two hosts it
/// stands between (links already made, the hosts' own addresses set).
fn wire_router(
    config: Router,
    rt: &Netns,
    client: &Netns,
    lb: &Netns,
    servers: &[&Netns; SERVER_COUNT],
) -> Result<()> {
    // (host behind the router, its address, its interface, the LB-side host and
    // interface facing the router, the LB-side address, router addresses near/far)
    let (far, far_ip, far_if, near, near_if, near_ip, rt_near_ip, rt_far_ip) = match config.site {
        RouterSite::Client => (
            client,
            CLIENT_IP,
            CLIENT_IF,
            lb,
            LB_EXT_IF,
            LB_EXT_IP,
            ROUTER_CLIENT_SIDE_IP,
            ROUTER_CLIENT_SIDE_FAR_IP,
        ),
        RouterSite::Server(n) => (
            servers[n - 1],
            SERVER_IPS[n - 1],
            SERVER_IF,
            lb,
            LB_INT_IF,
            LB_INT_IP,
            ROUTER_SERVER_SIDE_IP,
            ROUTER_SERVER_SIDE_FAR_IP,
        ),
    };
    let mut sysctls = vec![
        ("net/ipv4/ip_forward".to_string(), "1"),
        // Every error is sent: the tests count on the router's ICMP.
        ("net/ipv4/icmp_ratelimit".to_string(), "0"),
    ];
    for dev in ["all", "default", ROUTER_NEAR_IF, ROUTER_FAR_IF] {
        sysctls.push((format!("net/ipv4/conf/{dev}/rp_filter"), "0"));
    }
    let sysctls: Vec<(&str, &str)> = sysctls.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    rt.set_sysctls(&sysctls, false)?;
    rt.ip_batch(&[
        format!("link set {ROUTER_NEAR_IF} address {ROUTER_NEAR_MAC}"),
        format!("link set {ROUTER_FAR_IF} address {ROUTER_FAR_MAC}"),
        format!("link set {ROUTER_FAR_IF} mtu {}", config.far_mtu),
        format!("addr add {rt_near_ip}/32 dev {ROUTER_NEAR_IF}"),
        format!("addr add {rt_far_ip}/32 dev {ROUTER_FAR_IF}"),
        format!("link set {ROUTER_NEAR_IF} up"),
        format!("link set {ROUTER_FAR_IF} up"),
        format!("route add {far_ip}/32 dev {ROUTER_FAR_IF}"),
        format!("route add {near_ip}/32 dev {ROUTER_NEAR_IF}"),
        // VIPs, SNAT addresses and the other side: all through the LB.
        format!("route add default via {near_ip} dev {ROUTER_NEAR_IF}"),
    ])?;
    // Both ends reach each other through the router's MACs; their /24 stays on-link.
    far.ip(&format!(
        "neigh replace {near_ip} lladdr {ROUTER_FAR_MAC} dev {far_if} nud permanent"
    ))?;
    near.ip(&format!(
        "neigh replace {far_ip} lladdr {ROUTER_NEAR_MAC} dev {near_if} nud permanent"
    ))?;
    Ok(())
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

/// Delete the namespaces of the topology with exactly this prefix (also
/// one made by `cargo xtask testbed up` in another process). Processes
/// still inside them are terminated first. Never panics.
pub fn destroy(prefix: &str) {
    let existing = list_netns();
    for role in ALL_WITH_ROUTER.iter().rev() {
        let ns = format!("{prefix}-{}", role.suffix());
        if existing.contains(&ns) {
            delete_netns(&ns);
        }
    }
}

/// Delete leftover testbed namespaces whose names start with `prefix_start`
/// and end in one of the role suffixes (`-client`, `-lb`, `-sw`, `-s1`..`-s3`, `-rt`),
/// so unrelated namespaces are never touched. Returns the deleted names.
pub fn cleanup_stale(prefix_start: &str) -> Vec<String> {
    let suffixes: Vec<String> = ALL_WITH_ROUTER
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_client::http_get;
    use crate::payload::{payload_sha256, sha256_hex};
    use crate::udp::udp_request;
    use std::net::SocketAddrV4;

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
