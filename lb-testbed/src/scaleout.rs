//! The scale-out testbed (docs/scale-out.md): balancer instances behind ECMP routers that
//! learn the routes from the instances' BIRD over BGP with BFD.
//!
//! ```text
//!  {p}-c                {p}-fr                    {p}-l1..l4                {p}-br             {p}-s1..s3
//!  eth0 198.18.0.2 ── c0 198.18.0.1               front 198.18.10i.2        l<i> 198.19.10i.1   br0 198.19.0.1
//!                       l<i> 198.18.10i.1 ─────── back  198.19.10i.2 ────── br0 ─ s1..s3 ────── eth0 198.19.0.1x
//!                     (BIRD, AS 65000,            lo: VIP 198.18.1.10       (BIRD, AS 65001,
//!                      ECMP to the VIP)               SNAT 198.19.1.i        ECMP to the clients)
//!                                                 (lb run + BIRD, AS 65010)
//! ```
//!
//! Each instance's BIRD has a BGP session with BFD to both routers: to the front router
//! it exports the VIPs (`lb_vips`), to the back router its SNAT addresses (`lb_snat`),
//! its peers' SNAT addresses with a longer AS path (`lb_snat_backup`) and the routes back
//! to the clients (`lb_return`). The routers merge equal routes into kernel ECMP routes
//! (`merge paths`) hashed by the 5-tuple (`fib_multipath_hash_policy = 1`). The instances
//! reach each other over their back arms through the back router.
//!
//! Every namespace, BIRD, `lb` and server started here is stopped on drop, even when a
//! test fails, and the instances' pins and sockets are removed. Addresses are all in
//! 198.18.0.0/15.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lb_userspace::bgp::routes::{
    PROTO_RETURN, PROTO_SNAT, PROTO_SNAT_BACKUP, PROTO_VIPS, PROTO_VIPS_BACKUP,
};
use lb_userspace::bgp::{RouteSet, routes};

use crate::netns::{Netns, add_veth_between};
use crate::process::{netns_command, send_signal, terminate_child};
use crate::server::{Counters, ServerStats, TestServer};
use crate::{HTTP_PORT, SERVER_COUNT, SERVER_IPS, UDP_PORT, VIP};

/// The client (ns `{p}-c`, `eth0`).
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The front router on the clients' segment: their gateway.
pub const FRONT_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The clients' prefix: each instance's return route.
pub const CLIENT_PREFIX: &str = "198.18.0.0/24";
/// The back router on the servers' segment: their gateway.
pub const BACK_SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
/// TCP echo port of the servers (`socat ... PIPE`).
pub const TCP_ECHO_PORT: u16 = 7;
/// Instances the testbed can hold.
pub const MAX_INSTANCES: usize = 4;
/// AS numbers: the routers', and the one every instance shares.
pub const FRONT_AS: u32 = 65000;
pub const BACK_AS: u32 = 65001;
pub const LB_AS: u32 = 65010;
/// BFD on every session: a neighbour silent for `BFD_INTERVAL_MS * BFD_MULTIPLIER` is down.
pub const BFD_INTERVAL_MS: u32 = 100;
pub const BFD_MULTIPLIER: u32 = 3;

/// Interface names: the instance's arms, the routers' ends (`l<i>`) and the rest.
pub const FRONT_IF: &str = "front";
pub const BACK_IF: &str = "back";
const CLIENT_IF: &str = "eth0";
const FRONT_CLIENT_IF: &str = "c0";
const SERVER_IF: &str = "eth0";
const BRIDGE_IF: &str = "br0";
/// The nftables table of [`ScaleOut::links_down`].
const LOST_TABLE: &str = "lbt_lost";
/// nftables table of `ScaleOut::partition_peers`.
const PARTITION_TABLE: &str = "lbt_partition";
/// How long a stopped child may take before SIGKILL.
const CHILD_GRACE: Duration = Duration::from_secs(5);

/// The front link of instance `i` (1..=4): (router end, instance end).
pub fn front_link(i: usize) -> (Ipv4Addr, Ipv4Addr) {
    let net = 100 + i as u8;
    (
        Ipv4Addr::new(198, 18, net, 1),
        Ipv4Addr::new(198, 18, net, 2),
    )
}

/// The back link of instance `i` (1..=4): (router end, instance end).
pub fn back_link(i: usize) -> (Ipv4Addr, Ipv4Addr) {
    let net = 100 + i as u8;
    (
        Ipv4Addr::new(198, 19, net, 1),
        Ipv4Addr::new(198, 19, net, 2),
    )
}

/// The SNAT address instance `i` owns.
pub fn snat_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, 1, i as u8)
}

/// Which router.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Front,
    Back,
}

impl Side {
    fn suffix(self) -> &'static str {
        match self {
            Side::Front => "fr",
            Side::Back => "br",
        }
    }

    fn asn(self) -> u32 {
        match self {
            Side::Front => FRONT_AS,
            Side::Back => BACK_AS,
        }
    }

    /// (router end, instance end) of instance `i`'s link on this side.
    fn link(self, i: usize) -> (Ipv4Addr, Ipv4Addr) {
        match self {
            Side::Front => front_link(i),
            Side::Back => back_link(i),
        }
    }

    fn router_id(self) -> Ipv4Addr {
        match self {
            Side::Front => FRONT_CLIENT_IP,
            Side::Back => BACK_SERVER_IP,
        }
    }
}

/// The BFD protocol every BIRD here runs.
fn bfd_section() -> String {
    format!(
        "protocol bfd {{\n  interface \"*\" {{\n    interval {BFD_INTERVAL_MS} ms;\n    \
         multiplier {BFD_MULTIPLIER};\n  }};\n}}\n"
    )
}

/// Session timers: reconnect within a second or two after a loss (BIRD's defaults wait
/// minutes), the hold timer is only the fallback of BFD.
const BGP_TIMERS: &str = "  hold time 9;\n  keepalive time 3;\n  connect delay time 1;\n  \
                          connect retry time 2;\n  error wait time 1, 5;\n  bfd on;\n";

/// The `bird.conf` of a router: a session with every instance in `instances`, every
/// route imported, nothing exported to them, and the merged (ECMP) best routes written
/// to the kernel.
pub fn router_bird_conf(side: Side, instances: &[usize]) -> String {
    let mut text = format!(
        "# {side:?} router of the scale-out testbed (lb-testbed/src/scaleout.rs).\n\
         log stderr all;\nrouter id {};\n\n\
         protocol device {{\n  scan time 10;\n}}\n\n\
         protocol kernel {{\n  merge paths on;\n  ipv4 {{\n    import none;\n    \
         export all;\n  }};\n}}\n\n{}",
        side.router_id(),
        bfd_section(),
    );
    for &i in instances {
        let (local, neighbor) = side.link(i);
        text.push_str(&format!(
            "\nprotocol bgp lb{i} {{\n  local {local} as {};\n  neighbor {neighbor} as {LB_AS};\n\
             {BGP_TIMERS}  ipv4 {{\n    import all;\n    export none;\n  }};\n}}\n",
            side.asn()
        ));
    }
    text
}

/// The `bird.conf` of instance `i`: BGP with BFD to both routers, exporting the routes
/// file's protocols by name (docs/scale-out.md, "Routes"); the peers' SNAT addresses
/// with the AS path prepended twice so the owner's own route is preferred. No kernel
/// protocol: the blackholes of the routes file never reach the instance's kernel.
pub fn instance_bird_conf(i: usize, routes_file: &Path) -> String {
    let (front_router, front_local) = front_link(i);
    let (back_router, back_local) = back_link(i);
    format!(
        "# Instance {i} of the scale-out testbed (lb-testbed/src/scaleout.rs).\n\
         log stderr all;\nrouter id {front_local};\n\n\
         protocol device {{\n  scan time 10;\n}}\n\n{bfd}\n\
         # Written by lb run ([bgp] routes_file).\ninclude \"{routes}\";\n\n\
         filter front_out {{\n  if proto = \"{PROTO_VIPS}\" then accept;\n  \
         if proto = \"{PROTO_VIPS_BACKUP}\" then {{\n    bgp_path.prepend({LB_AS});\n    \
         bgp_path.prepend({LB_AS});\n    accept;\n  }}\n  reject;\n}}\n\n\
         filter back_out {{\n  \
         if proto = \"{PROTO_SNAT}\" || proto = \"{PROTO_RETURN}\" then accept;\n  \
         if proto = \"{PROTO_SNAT_BACKUP}\" then {{\n    bgp_path.prepend({LB_AS});\n    \
         bgp_path.prepend({LB_AS});\n    accept;\n  }}\n  reject;\n}}\n\n\
         protocol bgp front {{\n  local {front_local} as {LB_AS};\n  \
         neighbor {front_router} as {FRONT_AS};\n{BGP_TIMERS}  ipv4 {{\n    import none;\n    \
         export filter front_out;\n    next hop self;\n  }};\n}}\n\n\
         protocol bgp back {{\n  local {back_local} as {LB_AS};\n  \
         neighbor {back_router} as {BACK_AS};\n{BGP_TIMERS}  ipv4 {{\n    import none;\n    \
         export filter back_out;\n    next hop self;\n  }};\n}}\n",
        bfd = bfd_section(),
        routes = routes_file.display(),
    )
}

/// Flow sharing among the instances (`[peers]`, docs/scale-out.md): with it, each
/// instance's config lists every other possible instance as a peer over the back arms
/// and adds a DNAT and a SYN-proxied echo service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeersOptions {
    /// `peers.announce`: off shows what sharing prevents.
    pub announce: bool,
    /// `timeouts.tcp_established`, s: short, so connections outlive it.
    pub tcp_established_s: u64,
}

/// Port of the peer protocol on each instance's back arm.
pub const PEERS_PORT: u16 = 7395;
/// VIP ports of the echo services with `[peers]`: DNAT, and full-NAT behind the SYN proxy.
pub const DNAT_ECHO_PORT: u16 = 17;
pub const PROXY_ECHO_PORT: u16 = 27;
/// With `[peers]`: a VIP owned by instance 1 (`[[bgp.owned_vip]]`), announced as primary
/// by its owner and as backup by the others, serving the TCP echo in full NAT.
pub const OWNED_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 20);
/// The owned VIP's configured owner.
pub const OWNED_VIP_OWNER: usize = 1;

/// The `[peers]` (and extra services) part of instance `i`'s config.
pub fn instance_peers_config(dir: &Path, i: usize, options: &PeersOptions) -> String {
    let mut text = format!(
        "[timeouts]\ntcp_established = {}\n\
         [peers]\nnode_id = {i}\ncluster_id = 7\nkey_file = \"{}\"\nlisten = \"{}:{PEERS_PORT}\"\n\
         announce = {}\njoin_timeout_ms = 3000\ndead_after_ms = 1000\n",
        options.tcp_established_s,
        dir.join("peers.key").display(),
        back_link(i).1,
        options.announce,
    );
    for j in (1..=MAX_INSTANCES).filter(|&j| j != i) {
        text.push_str(&format!(
            "[[peers.peer]]\nnode_id = {j}\naddress = \"{}:{PEERS_PORT}\"\n",
            back_link(j).1
        ));
    }
    let snat = format!("snat_ip = \"{}\"\n", snat_ip(i));
    for (service, port, extra) in [
        ("echo-dnat", DNAT_ECHO_PORT, "mode = \"dnat\"\n".to_string()),
        (
            "echo-proxy",
            PROXY_ECHO_PORT,
            format!("syn_proxy = true\n{snat}"),
        ),
    ] {
        text.push_str(&format!(
            "[[service]]\nname = \"{service}\"\nvip = \"{VIP}\"\nport = {port}\n{extra}"
        ));
        for ip in SERVER_IPS {
            text.push_str(&format!(
                "[[service.backend]]\naddress = \"{ip}\"\nport = {TCP_ECHO_PORT}\n"
            ));
        }
    }
    text.push_str(&format!(
        "[[bgp.owned_vip]]\nvip = \"{OWNED_VIP}\"\nowner = {OWNED_VIP_OWNER}\n"
    ));
    // The owned VIP serves every kind: full-NAT echo and web, DNAT and SYN-proxied echo,
    // UDP echo.
    for (service, port, extra) in [
        ("owned-echo", TCP_ECHO_PORT, snat.clone()),
        ("owned-web", HTTP_PORT, snat.clone()),
        (
            "owned-dnat",
            DNAT_ECHO_PORT,
            "mode = \"dnat\"\n".to_string(),
        ),
        (
            "owned-proxy",
            PROXY_ECHO_PORT,
            format!("syn_proxy = true\n{snat}"),
        ),
        ("owned-udp", UDP_PORT, format!("protocol = \"udp\"\n{snat}")),
    ] {
        text.push_str(&format!(
            "[[service]]\nname = \"{service}\"\nvip = \"{OWNED_VIP}\"\nport = {port}\n{extra}"
        ));
        let backend_port = if port == DNAT_ECHO_PORT || port == PROXY_ECHO_PORT {
            TCP_ECHO_PORT
        } else {
            port
        };
        for ip in SERVER_IPS {
            text.push_str(&format!(
                "[[service.backend]]\naddress = \"{ip}\"\nport = {backend_port}\n"
            ));
        }
    }
    text
}

/// The `lb run` configuration of instance `i` in testbed `prefix` whose files are in
/// `dir`: web (tcp/80), echo (tcp/7) and udp-echo (udp/5353) on the VIP in full-NAT
/// with the instance's own SNAT address, over the three servers, and `[bgp]`.
pub fn instance_lb_config(prefix: &str, dir: &Path, i: usize) -> String {
    let name = instance_name(prefix, i);
    let files = dir.join(format!("l{i}"));
    let mut text = format!(
        "name = \"{name}\"\n\
         [interfaces]\nattach = [\"{FRONT_IF}\", \"{BACK_IF}\"]\nxdp_mode = \"native\"\n\
         [control]\nsocket = \"/run/lb/{name}.sock\"\n\
         [bgp]\ncontrol_socket = \"{}\"\nroutes_file = \"{}\"\n\
         return_routes = [\"{CLIENT_PREFIX}\"]\nwithdraw_delay_ms = 500\n",
        files.join("bird.ctl").display(),
        files.join("routes.conf").display(),
    );
    for (service, port, protocol) in [
        ("web", HTTP_PORT, "tcp"),
        ("echo", TCP_ECHO_PORT, "tcp"),
        ("udp-echo", UDP_PORT, "udp"),
    ] {
        text.push_str(&format!(
            "[[service]]\nname = \"{service}\"\nvip = \"{VIP}\"\nport = {port}\n\
             protocol = \"{protocol}\"\nsnat_ip = \"{}\"\n",
            snat_ip(i)
        ));
        for ip in SERVER_IPS {
            text.push_str(&format!("[[service.backend]]\naddress = \"{ip}\"\n"));
        }
    }
    text
}

/// The `lb` instance name (also its pin directory and socket name).
pub fn instance_name(prefix: &str, i: usize) -> String {
    format!("{prefix}-l{i}")
}

/// A fresh prefix `bgp{pid}x{n}`, unique on this machine while this process lives.
pub fn unique_prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "bgp{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Next hops of `prefix` in `ip -j route show` output (`[]` when there is no route).
pub fn next_hops(json: &str, prefix: &str) -> Result<BTreeSet<Ipv4Addr>> {
    let routes: serde_json::Value =
        serde_json::from_str(json).with_context(|| format!("parsing ip's JSON {json:?}"))?;
    let bare = prefix.strip_suffix("/32").unwrap_or(prefix);
    let mut hops = BTreeSet::new();
    for route in routes.as_array().into_iter().flatten() {
        if route["dst"].as_str() != Some(bare) {
            continue;
        }
        let gateways: Vec<&serde_json::Value> = match route["nexthops"].as_array() {
            Some(nexthops) => nexthops.iter().collect(),
            None => vec![route],
        };
        for hop in gateways {
            if let Some(gateway) = hop["gateway"].as_str() {
                hops.insert(gateway.parse()?);
            }
        }
    }
    Ok(hops)
}

/// A running instance's processes.
#[derive(Default)]
struct Instance {
    bird: Option<u32>,
    lb: Option<u32>,
}

/// The built testbed; dropping it tears everything down.
pub struct ScaleOut {
    pub prefix: String,
    /// Configs, sockets, logs: `{dir}/fr`, `{dir}/br`, `{dir}/l<i>`.
    pub dir: PathBuf,
    lb_binary: PathBuf,
    /// Creation order; deleted in reverse.
    namespaces: Vec<Netns>,
    children: HashMap<u32, Child>,
    routers: HashMap<Side, u32>,
    /// Index i - 1: instance i, `None` when not added.
    instances: Vec<Option<Instance>>,
    servers: Vec<TestServer>,
    counters: Vec<Arc<Counters>>,
    /// `[peers]` in the configs of instances added from now on.
    peers: Option<PeersOptions>,
}

impl ScaleOut {
    /// Builds the client, both routers (with BIRD), the servers (HTTP, TCP and UDP echo)
    /// and `instances` instance namespaces with BIRD running; no `lb` yet
    /// ([`start_lb`](Self::start_lb)). `dir` holds the files; `lb_binary` is `lb`.
    pub fn up(prefix: &str, dir: &Path, lb_binary: &Path, instances: usize) -> Result<ScaleOut> {
        if instances > MAX_INSTANCES {
            bail!("{instances} instances: the testbed holds at most {MAX_INSTANCES}");
        }
        if prefix.is_empty()
            || prefix.len() > 20
            || !prefix.chars().all(|c| c.is_ascii_alphanumeric())
        {
            bail!("invalid scale-out prefix {prefix:?}: 1-20 characters [A-Za-z0-9]");
        }
        let _ = std::fs::remove_dir_all(dir);
        for sub in ["fr", "br"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut testbed = ScaleOut {
            prefix: prefix.to_string(),
            dir: dir.to_path_buf(),
            lb_binary: lb_binary.to_path_buf(),
            namespaces: Vec::new(),
            children: HashMap::new(),
            routers: HashMap::new(),
            instances: Vec::new(),
            servers: Vec::new(),
            counters: (0..SERVER_COUNT).map(|_| Arc::default()).collect(),
            peers: None,
        };
        // On error `testbed` is dropped, which removes what exists.
        testbed
            .build()
            .with_context(|| format!("building scale-out testbed {prefix}"))?;
        for _ in 0..instances {
            testbed.add_instance()?;
        }
        Ok(testbed)
    }

    /// Like [`up`](Self::up), with the instances sharing flows (`[peers]`).
    pub fn up_with_peers(
        prefix: &str,
        dir: &Path,
        lb_binary: &Path,
        instances: usize,
        options: PeersOptions,
    ) -> Result<ScaleOut> {
        let mut testbed = ScaleOut::up(prefix, dir, lb_binary, 0)?;
        testbed.peers = Some(options);
        std::fs::write(dir.join("peers.key"), "scale-out test cluster key\n")?;
        for _ in 0..instances {
            testbed.add_instance()?;
        }
        Ok(testbed)
    }

    /// Name of a namespace: `{prefix}-{suffix}` (`c`, `fr`, `br`, `s1`.., `l1`..).
    pub fn ns(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.prefix)
    }

    pub fn instance_ns(&self, i: usize) -> String {
        self.ns(&format!("l{i}"))
    }

    pub fn client_ns(&self) -> String {
        self.ns("c")
    }

    pub fn router_ns(&self, side: Side) -> String {
        self.ns(side.suffix())
    }

    fn netns(&self, name: &str) -> Result<&Netns> {
        self.namespaces
            .iter()
            .find(|ns| ns.name() == name)
            .with_context(|| format!("no namespace {name}"))
    }

    fn create_ns(&mut self, suffix: &str) -> Result<()> {
        let ns = Netns::create(&self.ns(suffix))?;
        self.namespaces.push(ns);
        let ns = &self.namespaces[self.namespaces.len() - 1];
        // No IPv6: only the test's traffic on the wire.
        ns.set_sysctls(
            &[
                ("net/ipv6/conf/all/disable_ipv6", "1"),
                ("net/ipv6/conf/default/disable_ipv6", "1"),
            ],
            true,
        )
    }

    fn build(&mut self) -> Result<()> {
        for suffix in ["c", "fr", "br", "s1", "s2", "s3"] {
            self.create_ns(suffix)?;
        }
        let (client, front, back) = (
            self.netns(&self.client_ns())?,
            self.netns(&self.router_ns(Side::Front))?,
            self.netns(&self.router_ns(Side::Back))?,
        );
        add_veth_between(CLIENT_IF, client, FRONT_CLIENT_IF, front)?;
        client.ip_batch(&[
            format!("addr add {CLIENT_IP}/24 dev {CLIENT_IF}"),
            format!("link set {CLIENT_IF} up"),
            format!("route add default via {FRONT_CLIENT_IP}"),
        ])?;
        front.ip_batch(&[
            format!("addr add {FRONT_CLIENT_IP}/24 dev {FRONT_CLIENT_IF}"),
            format!("link set {FRONT_CLIENT_IF} up"),
        ])?;
        back.ip_batch(&[
            format!("link add {BRIDGE_IF} type bridge"),
            format!("addr add {BACK_SERVER_IP}/24 dev {BRIDGE_IF}"),
            format!("link set {BRIDGE_IF} up"),
        ])?;
        for (n, ip) in SERVER_IPS.iter().enumerate() {
            let server = self.netns(&self.ns(&format!("s{}", n + 1)))?;
            let port = format!("s{}", n + 1);
            add_veth_between(SERVER_IF, server, &port, back)?;
            back.ip_batch(&[
                format!("link set {port} master {BRIDGE_IF}"),
                format!("link set {port} up"),
            ])?;
            server.ip_batch(&[
                format!("addr add {ip}/24 dev {SERVER_IF}"),
                format!("link set {SERVER_IF} up"),
                format!("route add default via {BACK_SERVER_IP}"),
            ])?;
        }
        for router in [front, back] {
            let mut sysctls = vec![
                ("net/ipv4/ip_forward", "1"),
                // ECMP by the 5-tuple, so connections spread over the instances.
                ("net/ipv4/fib_multipath_hash_policy", "1"),
            ];
            sysctls.push(("net/ipv4/conf/all/rp_filter", "0"));
            sysctls.push(("net/ipv4/conf/default/rp_filter", "0"));
            router.set_sysctls(&sysctls, false)?;
        }
        // Senders compute full checksums (the balancer drops partial ones; see
        // topology.rs on checksums).
        self.exec(
            &self.client_ns(),
            &["ethtool", "-K", CLIENT_IF, "tx", "off"],
        )?;
        for n in 1..=SERVER_COUNT {
            self.exec(
                &self.ns(&format!("s{n}")),
                &["ethtool", "-K", SERVER_IF, "tx", "off"],
            )?;
        }
        self.start_servers()?;
        for side in [Side::Front, Side::Back] {
            self.write_router_conf(side)?;
            let pid = self.spawn_bird(&self.router_ns(side), side.suffix())?;
            self.routers.insert(side, pid);
        }
        Ok(())
    }

    /// HTTP on 80 and UDP echo on 5353 (the testbed's own servers), TCP echo on 7.
    fn start_servers(&mut self) -> Result<()> {
        for n in 1..=SERVER_COUNT {
            let ns = self.ns(&format!("s{n}"));
            let (listener, udp) =
                crate::run_in_netns(&ns, || -> io::Result<(TcpListener, UdpSocket)> {
                    let any = Ipv4Addr::UNSPECIFIED;
                    Ok((
                        TcpListener::bind((any, HTTP_PORT))?,
                        UdpSocket::bind((any, UDP_PORT))?,
                    ))
                })?
                .with_context(|| format!("binding server sockets in {ns}"))?;
            self.servers.push(TestServer::spawn(
                format!("s{n}"),
                listener,
                udp,
                self.counters[n - 1].clone(),
            )?);
            let listen = format!("TCP4-LISTEN:{TCP_ECHO_PORT},reuseaddr,fork");
            self.spawn(&ns, &["socat", &listen, "PIPE"], None)?;
        }
        Ok(())
    }

    fn instances_present(&self) -> Vec<usize> {
        self.instances
            .iter()
            .enumerate()
            .filter(|(_, instance)| instance.is_some())
            .map(|(index, _)| index + 1)
            .collect()
    }

    fn write_router_conf(&self, side: Side) -> Result<()> {
        let path = self.dir.join(side.suffix()).join("bird.conf");
        std::fs::write(&path, router_bird_conf(side, &self.instances_present()))
            .with_context(|| format!("writing {}", path.display()))
    }

    /// `bird -f` in `ns` with `{dir}/{sub}/bird.conf` and control socket
    /// `{dir}/{sub}/bird.ctl`, logging to `{dir}/{sub}/bird.log`; waits until it answers.
    fn spawn_bird(&mut self, ns: &str, sub: &str) -> Result<u32> {
        let files = self.dir.join(sub);
        let (conf, ctl, pid_file) = (
            files.join("bird.conf"),
            files.join("bird.ctl"),
            files.join("bird.pid"),
        );
        let pid = self.spawn(
            ns,
            &[
                "bird",
                "-f",
                "-c",
                &conf.to_string_lossy(),
                "-s",
                &ctl.to_string_lossy(),
                "-P",
                &pid_file.to_string_lossy(),
            ],
            Some(&files.join("bird.log")),
        )?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.birdc(&ctl, "show status").is_err() {
            if let Some(status) = self.children.get_mut(&pid).and_then(|c| c.try_wait().ok()?) {
                bail!(
                    "bird in {ns} exited ({status}): {}",
                    std::fs::read_to_string(files.join("bird.log")).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!("bird in {ns} does not answer on {}", ctl.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(pid)
    }

    /// `birdc -s ctl command`, its output; an error when BIRD reports one.
    fn birdc(&self, ctl: &Path, command: &str) -> Result<String> {
        let out = std::process::Command::new("birdc")
            .arg("-s")
            .arg(ctl)
            .args(command.split_whitespace())
            .stdin(Stdio::null())
            .output()
            .context("running birdc (is bird2 installed? try `cargo xtask setup`)")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() || text.contains("Unable to connect") {
            bail!("birdc -s {} {command}: {}", ctl.display(), text.trim());
        }
        Ok(text)
    }

    /// `birdc show protocols` (or any command) on a router's BIRD.
    pub fn router_birdc(&self, side: Side, command: &str) -> Result<String> {
        self.birdc(&self.dir.join(side.suffix()).join("bird.ctl"), command)
    }

    /// `birdc` on instance `i`'s BIRD.
    pub fn instance_birdc(&self, i: usize, command: &str) -> Result<String> {
        self.birdc(&self.dir.join(format!("l{i}")).join("bird.ctl"), command)
    }

    fn spawn(&mut self, ns: &str, args: &[&str], log: Option<&Path>) -> Result<u32> {
        let mut cmd = netns_command(ns, args)?;
        cmd.stdin(Stdio::null());
        match log {
            Some(log) => {
                let file =
                    File::create(log).with_context(|| format!("creating {}", log.display()))?;
                cmd.stdout(file.try_clone()?).stderr(file);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {} in {ns}", args.join(" ")))?;
        let pid = child.id();
        self.children.insert(pid, child);
        Ok(pid)
    }

    /// Adds the next instance (namespace, links, addresses, BIRD; no `lb`) and tells
    /// the routers about it. Returns its number.
    pub fn add_instance(&mut self) -> Result<usize> {
        let i = self.instances.len() + 1;
        if i > MAX_INSTANCES {
            bail!("the testbed holds {MAX_INSTANCES} instances");
        }
        self.instances.push(Some(Instance::default()));
        self.create_ns(&format!("l{i}"))?;
        let files = self.dir.join(format!("l{i}"));
        std::fs::create_dir_all(&files)?;
        let ns = self.netns(&self.instance_ns(i))?;
        let front = self.netns(&self.router_ns(Side::Front))?;
        let back = self.netns(&self.router_ns(Side::Back))?;
        let port = format!("l{i}");
        add_veth_between(FRONT_IF, ns, &port, front)?;
        add_veth_between(BACK_IF, ns, &port, back)?;
        let ((front_router, front_local), (back_router, back_local)) =
            (front_link(i), back_link(i));
        ns.ip_batch(&[
            format!("addr add {front_local}/24 dev {FRONT_IF}"),
            format!("addr add {back_local}/24 dev {BACK_IF}"),
            // The VIP and the SNAT address on lo: the instance's kernel owns them.
            format!("addr add {VIP}/32 dev lo"),
            format!("addr add {OWNED_VIP}/32 dev lo"),
            format!("addr add {}/32 dev lo", snat_ip(i)),
            format!("link set {FRONT_IF} up"),
            format!("link set {BACK_IF} up"),
            format!("route add {CLIENT_PREFIX} via {front_router} dev {FRONT_IF}"),
            // Servers, the peers' back arms and SNAT addresses: via the back router.
            format!("route add 198.19.0.0/16 via {back_router} dev {BACK_IF}"),
        ])?;
        let mut sysctls = vec![("net/ipv4/ip_forward".to_string(), "1")];
        for dev in ["all", "default", "lo", FRONT_IF, BACK_IF] {
            // As on the plain testbed's LB (topology.rs): local SNAT sources, asymmetry.
            sysctls.push((format!("net/ipv4/conf/{dev}/accept_local"), "1"));
            sysctls.push((format!("net/ipv4/conf/{dev}/rp_filter"), "0"));
        }
        let sysctls: Vec<(&str, &str)> = sysctls.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        ns.set_sysctls(&sysctls, false)?;
        for (router, near) in [(front, front_router), (back, back_router)] {
            router.ip_batch(&[
                format!("addr add {near}/24 dev {port}"),
                format!("link set {port} up"),
            ])?;
        }
        // Native XDP on a veth delivers XDP_TX/REDIRECT frames only to a NAPI peer; a
        // router that sends to the VIP itself (a test reaching one instance directly)
        // computes full checksums, like every sender here.
        for side in [Side::Front, Side::Back] {
            self.exec(
                &self.router_ns(side),
                &["ethtool", "-K", &port, "gro", "on", "tx", "off"],
            )?;
        }
        // The routes file exists before BIRD includes it: empty until lb writes it.
        let routes_file = files.join("routes.conf");
        std::fs::write(&routes_file, routes::render(&RouteSet::default()))?;
        std::fs::write(files.join("bird.conf"), instance_bird_conf(i, &routes_file))?;
        std::fs::write(files.join("lb.toml"), self.lb_config(i))?;
        let pid = self.spawn_bird(&self.instance_ns(i), &format!("l{i}"))?;
        if let Some(Some(instance)) = self.instances.get_mut(i - 1) {
            instance.bird = Some(pid);
        }
        for side in [Side::Front, Side::Back] {
            self.write_router_conf(side)?;
            self.router_birdc(side, "configure")?;
        }
        Ok(i)
    }

    /// Stops instance `i`'s BIRD (SIGTERM): its sessions end, the routers drop its routes.
    pub fn stop_bird(&mut self, i: usize) -> Result<()> {
        let pid = self.instance(i)?.bird.take().context("no BIRD running")?;
        let mut child = self.children.remove(&pid).context("BIRD not tracked")?;
        terminate_child(&mut child, CHILD_GRACE).context("reaping BIRD")?;
        Ok(())
    }

    /// Starts instance `i`'s BIRD again (with the routes file as it is now).
    pub fn start_bird(&mut self, i: usize) -> Result<()> {
        if self.instance(i)?.bird.is_some() {
            bail!("BIRD already runs on instance {i}");
        }
        let pid = self.spawn_bird(&self.instance_ns(i), &format!("l{i}"))?;
        self.instance(i)?.bird = Some(pid);
        Ok(())
    }

    /// Instance `i`'s `lb run` configuration (also in `{dir}/l<i>/lb.toml`).
    pub fn lb_config(&self, i: usize) -> String {
        let mut text = instance_lb_config(&self.prefix, &self.dir, i);
        if let Some(options) = &self.peers {
            text.push_str(&instance_peers_config(&self.dir, i, options));
        }
        text
    }

    pub fn lb_config_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("l{i}")).join("lb.toml")
    }

    pub fn lb_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("l{i}")).join("lb.log")).unwrap_or_default()
    }

    pub fn lb_socket(&self, i: usize) -> String {
        format!("/run/lb/{}.sock", instance_name(&self.prefix, i))
    }

    fn instance(&mut self, i: usize) -> Result<&mut Instance> {
        self.instances
            .get_mut(i.wrapping_sub(1))
            .and_then(Option::as_mut)
            .with_context(|| format!("no instance {i}"))
    }

    /// Starts `lb run` on instance `i` with its config file and waits until it answers.
    pub fn start_lb(&mut self, i: usize) -> Result<()> {
        let pid = self.spawn_lb(i)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.children.get_mut(&pid).and_then(|c| c.try_wait().ok()?) {
                bail!("lb on instance {i} exited ({status}): {}", self.lb_log(i));
            }
            if self.lb_cli(i, &["status"]).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("lb on instance {i} did not answer: {}", self.lb_log(i));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts `lb run` on instance `i` without waiting; its PID.
    pub fn spawn_lb(&mut self, i: usize) -> Result<u32> {
        if self.instance(i)?.lb.is_some() {
            bail!("lb already runs on instance {i}");
        }
        let (lb, config) = (
            self.lb_binary.to_string_lossy().into_owned(),
            self.lb_config_path(i).to_string_lossy().into_owned(),
        );
        let log = self.dir.join(format!("l{i}")).join("lb.log");
        let ns = self.instance_ns(i);
        let pid = self.spawn(
            &ns,
            &["env", "RUST_LOG=info", &lb, "run", "--config", &config],
            Some(&log),
        )?;
        self.instance(i)?.lb = Some(pid);
        Ok(pid)
    }

    /// Waits for an `lb` spawned by [`spawn_lb`](Self::spawn_lb) to exit, up to `limit`.
    pub fn wait_lb_exit(&mut self, i: usize, limit: Duration) -> Result<ExitStatus> {
        let pid = self.instance(i)?.lb.context("no lb running")?;
        let deadline = Instant::now() + limit;
        loop {
            let child = self.children.get_mut(&pid).context("lb not tracked")?;
            if let Some(status) = child.try_wait()? {
                self.children.remove(&pid);
                self.instance(i)?.lb = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("lb on instance {i} still runs after {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM to instance `i`'s `lb` (which withdraws its routes first) and waits.
    pub fn stop_lb(&mut self, i: usize) -> Result<ExitStatus> {
        let pid = self.instance(i)?.lb.take().context("no lb running")?;
        let mut child = self.children.remove(&pid).context("lb not tracked")?;
        terminate_child(&mut child, CHILD_GRACE).context("reaping lb")
    }

    /// Sends `signal` to instance `i`'s `lb` without waiting.
    pub fn signal_lb(&mut self, i: usize, signal: libc::c_int) -> Result<()> {
        let pid = self.instance(i)?.lb.context("no lb running")?;
        send_signal(pid, signal).with_context(|| format!("signalling lb {pid}"))
    }

    /// Whether instance `i`'s `lb` still runs.
    pub fn lb_running(&mut self, i: usize) -> bool {
        let Some(pid) = self.instance(i).ok().and_then(|instance| instance.lb) else {
            return false;
        };
        self.children
            .get_mut(&pid)
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// SIGKILL to instance `i`'s `lb`: no cleanup at all (BIRD keeps its routes).
    pub fn kill_lb(&mut self, i: usize) -> Result<()> {
        let pid = self.instance(i)?.lb.take().context("no lb running")?;
        let mut child = self.children.remove(&pid).context("lb not tracked")?;
        let _ = send_signal(pid, libc::SIGKILL);
        child.wait()?;
        Ok(())
    }

    /// `lb --socket <instance i's> args...`: stdout, or an error with stderr.
    pub fn lb_cli(&self, i: usize, args: &[&str]) -> Result<String> {
        crate::daemon::lb_cli(&self.lb_binary, &self.lb_socket(i), args)
    }

    /// `lb ... --json` on instance `i`, parsed.
    pub fn lb_json(&self, i: usize, command: &str) -> Result<serde_json::Value> {
        let text = self.lb_cli(i, &[command, "--json"])?;
        serde_json::from_str(&text).with_context(|| format!("parsing `lb {command} --json`"))
    }

    /// Instance `i` is lost to both routers without a carrier change: every frame that
    /// reaches it or the routers over its links is dropped (nftables at ingress, which
    /// XDP precedes: the instance's own forwarding dies at the routers' ingress). Only
    /// BFD (or the hold timer) can tell.
    pub fn links_down(&self, i: usize) -> Result<()> {
        let port = format!("l{i}");
        for (ns, devices) in [
            (self.instance_ns(i), vec![FRONT_IF, BACK_IF]),
            (self.router_ns(Side::Front), vec![port.as_str()]),
            (self.router_ns(Side::Back), vec![port.as_str()]),
        ] {
            let mut rules = format!("table netdev {LOST_TABLE} {{\n");
            for device in devices {
                rules.push_str(&format!(
                    "  chain in_{device} {{ type filter hook ingress device \"{device}\" \
                     priority -500; policy drop; }}\n"
                ));
            }
            rules.push_str("}\n");
            self.nft(&ns, &rules)?;
        }
        Ok(())
    }

    /// Undoes [`links_down`](Self::links_down).
    pub fn links_up(&self, i: usize) -> Result<()> {
        for ns in [
            self.instance_ns(i),
            self.router_ns(Side::Front),
            self.router_ns(Side::Back),
        ] {
            self.exec(&ns, &["nft", "delete", "table", "netdev", LOST_TABLE])?;
        }
        Ok(())
    }

    /// Cuts the peer protocol between instances `i` and `j` (both directions, at `i`'s
    /// input and output); everything else between them, and the routes, stay.
    pub fn partition_peers(&self, i: usize, j: usize) -> Result<()> {
        let peer = back_link(j).1;
        let mut rules = format!("table inet {PARTITION_TABLE} {{\n");
        for (hook, field) in [("input", "saddr"), ("output", "daddr")] {
            rules.push_str(&format!(
                "  chain {hook} {{ type filter hook {hook} priority -500; \
                 ip {field} {peer} tcp dport {PEERS_PORT} drop; \
                 ip {field} {peer} tcp sport {PEERS_PORT} drop; }}\n"
            ));
        }
        rules.push_str("}\n");
        self.nft(&self.instance_ns(i), &rules)
    }

    /// Undoes [`partition_peers`](Self::partition_peers) at instance `i`.
    pub fn heal_peers(&self, i: usize) -> Result<()> {
        self.exec(
            &self.instance_ns(i),
            &["nft", "delete", "table", "inet", PARTITION_TABLE],
        )?;
        Ok(())
    }

    fn nft(&self, ns: &str, rules: &str) -> Result<()> {
        use std::io::Write as _;
        let mut child = netns_command(ns, &["nft", "-f", "-"])?
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running nft")?;
        child
            .stdin
            .take()
            .context("nft stdin")?
            .write_all(rules.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "nft in {ns}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// The kernel next hops of `prefix` (e.g. "198.18.1.10/32") on a router now.
    pub fn router_next_hops(&self, side: Side, prefix: &str) -> Result<BTreeSet<Ipv4Addr>> {
        let out = self.exec(
            &self.router_ns(side),
            &["ip", "-j", "-4", "route", "show", prefix],
        )?;
        next_hops(&String::from_utf8_lossy(&out.stdout), prefix)
    }

    /// Polls until the router's next hops of `prefix` are `wanted`, up to `limit`;
    /// how long it took.
    pub fn wait_next_hops(
        &self,
        side: Side,
        prefix: &str,
        wanted: &BTreeSet<Ipv4Addr>,
        limit: Duration,
    ) -> Result<Duration> {
        let started = Instant::now();
        loop {
            let now = self.router_next_hops(side, prefix)?;
            if &now == wanted {
                return Ok(started.elapsed());
            }
            if started.elapsed() > limit {
                bail!(
                    "{side:?} router: next hops of {prefix} are {now:?}, not {wanted:?}, \
                     after {limit:?}; BIRD: {}",
                    self.router_birdc(side, "show protocols")
                        .unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until the routers learned what `instances` announce: the VIP via all of
    /// them on the front router, each one's SNAT address via itself on the back router
    /// (full-NAT replies need it). Each wait is bounded by `limit`.
    pub fn wait_announced(&self, instances: &[usize], limit: Duration) -> Result<()> {
        self.wait_next_hops(
            Side::Front,
            &format!("{VIP}/32"),
            &ScaleOut::front_hops(instances),
            limit,
        )
        .context("the front router learns the VIP from every instance")?;
        for &i in instances {
            self.wait_next_hops(
                Side::Back,
                &format!("{}/32", snat_ip(i)),
                &ScaleOut::back_hops(&[i]),
                limit,
            )
            .context("the back router learns each instance's SNAT address")?;
        }
        Ok(())
    }

    /// The front links' instance ends of `instances`: the VIP's wanted next hops.
    pub fn front_hops(instances: &[usize]) -> BTreeSet<Ipv4Addr> {
        instances.iter().map(|&i| front_link(i).1).collect()
    }

    /// The back links' instance ends of `instances`.
    pub fn back_hops(instances: &[usize]) -> BTreeSet<Ipv4Addr> {
        instances.iter().map(|&i| back_link(i).1).collect()
    }

    /// Runs `args` in namespace `ns` and waits; an error (with its output) on failure.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Result<Output> {
        let out = self.run_in(ns, args)?;
        if !out.status.success() {
            bail!(
                "`{}` in {ns} failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out)
    }

    /// Runs `args` in namespace `ns` and returns its output whatever its exit status.
    pub fn run_in(&self, ns: &str, args: &[&str]) -> Result<Output> {
        netns_command(ns, args)?
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {} in {ns}", args.join(" ")))
    }

    /// Counters of server `n` (1..=3).
    pub fn server_stats(&self, n: usize) -> ServerStats {
        self.counters
            .get(n.wrapping_sub(1))
            .map(|c| c.snapshot())
            .unwrap_or_default()
    }

    fn teardown(&mut self) {
        // lb first, so that SIGTERM's withdrawal still finds its BIRD.
        let lbs: Vec<u32> = self
            .instances
            .iter_mut()
            .flatten()
            .filter_map(|instance| instance.lb.take())
            .collect();
        for pid in lbs {
            if let Some(mut child) = self.children.remove(&pid) {
                terminate_child(&mut child, CHILD_GRACE);
            }
        }
        for (_, mut child) in self.children.drain() {
            terminate_child(&mut child, CHILD_GRACE);
        }
        for server in self.servers.drain(..) {
            server.stop();
        }
        while let Some(ns) = self.namespaces.pop() {
            drop(ns);
        }
        for i in 1..=self.instances.len() {
            let name = instance_name(&self.prefix, i);
            // A killed lb leaves its pins and socket behind.
            let pins = Path::new("/sys/fs/bpf").join(&name);
            if let Ok(entries) = std::fs::read_dir(&pins) {
                for entry in entries.flatten() {
                    let _ = std::fs::remove_file(entry.path());
                }
                let _ = std::fs::remove_dir(&pins);
            }
            let _ = std::fs::remove_file(format!("/run/lb/{name}.sock"));
        }
        self.instances.clear();
    }
}

impl Drop for ScaleOut {
    fn drop(&mut self) {
        self.teardown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_stay_in_the_benchmark_range() {
        for i in 1..=MAX_INSTANCES {
            for ip in [
                front_link(i).0,
                front_link(i).1,
                back_link(i).0,
                back_link(i).1,
                snat_ip(i),
            ] {
                let [a, b, ..] = ip.octets();
                assert!(a == 198 && (b == 18 || b == 19), "{ip}");
            }
        }
        assert_eq!(
            front_link(2),
            (
                "198.18.102.1".parse().unwrap(),
                "198.18.102.2".parse().unwrap()
            )
        );
        assert_eq!(snat_ip(3), Ipv4Addr::new(198, 19, 1, 3));
    }

    #[test]
    fn instance_conf_exports_the_route_file_protocols() {
        let text = instance_bird_conf(2, Path::new("/t/l2/routes.conf"));
        assert!(text.contains("router id 198.18.102.2;"));
        assert!(text.contains("include \"/t/l2/routes.conf\";"));
        assert!(text.contains("if proto = \"lb_vips\" then accept;"));
        assert!(text.contains("if proto = \"lb_snat\" || proto = \"lb_return\" then accept;"));
        assert!(text.contains(
            "if proto = \"lb_snat_backup\" then {\n    bgp_path.prepend(65010);\n    \
             bgp_path.prepend(65010);\n    accept;\n  }"
        ));
        assert!(text.contains("local 198.18.102.2 as 65010;\n  neighbor 198.18.102.1 as 65000;"));
        assert!(text.contains("local 198.19.102.2 as 65010;\n  neighbor 198.19.102.1 as 65001;"));
        assert_eq!(text.matches("bfd on;").count(), 2);
        assert!(text.contains("interval 100 ms;\n    multiplier 3;"));
        assert!(
            !text.contains("protocol kernel"),
            "no blackhole reaches the kernel"
        );
    }

    #[test]
    fn router_conf_merges_paths_and_peers_with_each_instance() {
        let text = router_bird_conf(Side::Front, &[1, 3]);
        assert!(text.contains("merge paths on;"));
        assert!(text.contains(
            "protocol bgp lb1 {\n  local 198.18.101.1 as 65000;\n  neighbor 198.18.101.2 as 65010;"
        ));
        assert!(text.contains("protocol bgp lb3 {"));
        assert!(!text.contains("protocol bgp lb2"));
        let text = router_bird_conf(Side::Back, &[1]);
        assert!(text.contains("router id 198.19.0.1;"));
        assert!(text.contains("local 198.19.101.1 as 65001;"));
        assert!(text.contains("export none;"));
    }

    #[test]
    fn lb_config_parses_with_bgp() {
        let text = instance_lb_config("bgp1x0", Path::new("/t"), 2);
        let config =
            lb_userspace::config::Config::parse(&text, Path::new("lb.toml")).expect("valid config");
        assert_eq!(config.name, "bgp1x0-l2");
        let bgp = config.bgp.expect("[bgp]");
        assert_eq!(bgp.control_socket, Path::new("/t/l2/bird.ctl"));
        assert_eq!(bgp.routes_file, Path::new("/t/l2/routes.conf"));
        assert_eq!(bgp.return_routes[0].to_string(), CLIENT_PREFIX);
        assert_eq!(config.services.len(), 3);
        assert!(config.services.iter().all(|s| s.snat_ips == [snat_ip(2)]));
    }

    #[test]
    fn next_hops_of_single_and_multipath_routes() {
        let single = r#"[{"dst":"198.18.1.10","gateway":"198.18.101.2","dev":"l1","protocol":"bird","metric":32,"flags":[]}]"#;
        assert_eq!(
            next_hops(single, "198.18.1.10/32").unwrap(),
            [Ipv4Addr::new(198, 18, 101, 2)].into()
        );
        let multi = r#"[{"dst":"198.18.1.10","protocol":"bird","metric":32,"flags":[],"nexthops":[{"gateway":"198.18.101.2","dev":"l1","weight":1,"flags":[]},{"gateway":"198.18.102.2","dev":"l2","weight":1,"flags":[]}]}]"#;
        assert_eq!(next_hops(multi, "198.18.1.10/32").unwrap().len(), 2);
        assert!(next_hops("[]", "198.18.1.10/32").unwrap().is_empty());
        let other = r#"[{"dst":"198.18.0.0/24","gateway":"198.19.101.2"}]"#;
        assert_eq!(next_hops(other, "198.18.0.0/24").unwrap().len(), 1);
        assert!(next_hops(other, "198.18.1.10/32").unwrap().is_empty());
    }
}
