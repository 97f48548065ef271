//! Node agent (`lb node`): runs on a server, announces it to the router and reports health,
//! load and capacity.
//!
//! Until a router answers, it broadcasts a join every interval. Once answered it sends a
//! heartbeat to that router every interval. If no router message arrives for `dead_after`
//! intervals, it goes back to broadcasting joins. On shutdown (SIGTERM) it sends a leave.
//!
//! Health is the node's own check of each service: a TCP connect to the service's port on
//! the node address, or for UDP a socket bound to the port (from `/proc/net/udp`). Load is
//! the one-minute load average per CPU in per-mille; connections counts established TCP
//! connections to the offered ports (`/proc/net/tcp`, so it is per network namespace).

use std::{
    future::Future,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    str::FromStr,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use log::{info, warn};
use tokio::{net::UdpSocket, time::Instant};

use super::{
    router::wall_ms,
    wire::{self, ClusterKey, Fields, Function, Header, Health, Message, PacketType, ServiceOffer},
};
use crate::domain::Protocol;

/// `name:protocol:port`, e.g. `http:tcp:80`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

impl FromStr for ServiceSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split(':').collect();
        let [name, protocol, port] = parts[..] else {
            return Err(format!(
                "{text:?}: expected name:protocol:port, e.g. http:tcp:80"
            ));
        };
        wire::check_service_name(name)?;
        let protocol = match protocol {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            other => return Err(format!("{text:?}: protocol {other:?} is not tcp or udp")),
        };
        let port: u16 = port
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{text:?}: port {port:?} is not 1..=65535"))?;
        Ok(Self {
            name: name.to_string(),
            protocol,
            port,
        })
    }
}

/// What the agent reports as its load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadSource {
    /// One-minute load average per CPU.
    #[default]
    Loadavg,
    /// Always 0: the router shares by capacity alone (e.g. nodes that share a host,
    /// whose load average says nothing about any one of them).
    None,
}

#[derive(Clone, Debug)]
pub struct AgentSettings {
    pub cluster_id: u16,
    pub priority: u16,
    pub services: Vec<ServiceSpec>,
    pub key: ClusterKey,
    pub interval: Duration,
    /// Router silent this many intervals: look for a router again.
    pub dead_after: u32,
    pub capacity: u32,
    pub load_source: LoadSource,
    /// The node's address on the internal segment: its identity and its services' address.
    pub address: Ipv4Addr,
    /// Local UDP port (0: any).
    pub listen_port: u16,
    /// Where joins go: the segment's broadcast address, or a router's address.
    pub announce_to: SocketAddrV4,
}

impl AgentSettings {
    pub fn validate(&self) -> Result<()> {
        if self.services.is_empty() {
            bail!("at least one --service is needed");
        }
        if self.services.len() > wire::MAX_SERVICES {
            bail!("at most {} services", wire::MAX_SERVICES);
        }
        for (i, s) in self.services.iter().enumerate() {
            if self.services[..i].iter().any(|o| o.name == s.name) {
                bail!("service {:?} given twice", s.name);
            }
        }
        if self.capacity == 0 {
            bail!("--capacity must be above 0");
        }
        if self.interval.is_zero() || self.dead_after == 0 {
            bail!("--interval and --dead-after must be above 0");
        }
        if self.address.is_unspecified() {
            bail!("the node address must not be 0.0.0.0");
        }
        Ok(())
    }
}

/// The IPv4 address and broadcast address of interface `name`.
pub fn interface_address(name: &str) -> Result<(Ipv4Addr, Option<Ipv4Addr>)> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a list we free below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getifaddrs");
    }
    let mut found = None;
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: cursor walks the list getifaddrs returned, which stays valid until freed.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() || entry.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string; ifa_addr points to a sockaddr.
        let entry_name = unsafe { std::ffi::CStr::from_ptr(entry.ifa_name) };
        let family = unsafe { (*entry.ifa_addr).sa_family };
        if entry_name.to_bytes() != name.as_bytes() || i32::from(family) != libc::AF_INET {
            continue;
        }
        let v4 = |sa: *const libc::sockaddr| {
            // SAFETY: AF_INET entries carry sockaddr_in in both address fields.
            let sin = unsafe { &*(sa as *const libc::sockaddr_in) };
            Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))
        };
        let address = v4(entry.ifa_addr);
        // An address added without `brd` has no broadcast address (getifaddrs then
        // repeats the address): use the limited broadcast, which the kernel sends out
        // of the interface owning the source address and never routes further.
        let broadcast = (entry.ifa_flags & libc::IFF_BROADCAST as u32 != 0).then(|| {
            Some(entry.ifa_ifu)
                .filter(|p| !p.is_null())
                .map(|p| v4(p))
                .filter(|b| *b != address && !b.is_unspecified())
                .unwrap_or(Ipv4Addr::BROADCAST)
        });
        found = Some((address, broadcast));
        break;
    }
    // SAFETY: list came from getifaddrs and is not used afterwards.
    unsafe { libc::freeifaddrs(list) };
    found.with_context(|| format!("interface {name} has no IPv4 address"))
}

/// 8 random bytes: this process's instance id.
pub fn random_instance() -> u64 {
    let mut bytes = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_err()
    {
        // No urandom: time and pid still differ between two starts.
        let fallback =
            wall_ms().wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(std::process::id());
        return fallback;
    }
    u64::from_ne_bytes(bytes)
}

/// What the agent reports about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalReport {
    pub services: Vec<ServiceOffer>,
    pub load_permille: u32,
    pub connections: u32,
}

/// Runs each service's local check and reads the load.
pub async fn local_report(settings: &AgentSettings) -> LocalReport {
    let mut services = Vec::with_capacity(settings.services.len());
    let udp_ports = bound_ports("/proc/net/udp", None);
    for s in &settings.services {
        let health = match s.protocol {
            Protocol::Tcp => {
                let target = SocketAddr::from((settings.address, s.port));
                let check = tokio::net::TcpStream::connect(target);
                match tokio::time::timeout(check_timeout(settings.interval), check).await {
                    Ok(Ok(_)) => Health::Up,
                    _ => Health::Down,
                }
            }
            Protocol::Udp => match &udp_ports {
                Some(ports) if ports.contains(&s.port) => Health::Up,
                Some(_) => Health::Down,
                None => Health::Unknown,
            },
        };
        services.push(ServiceOffer {
            name: s.name.clone(),
            protocol: s.protocol,
            port: s.port,
            health,
        });
    }
    let tcp_ports: Vec<u16> = settings
        .services
        .iter()
        .filter(|s| s.protocol == Protocol::Tcp)
        .map(|s| s.port)
        .collect();
    // State 01 is ESTABLISHED.
    let connections = bound_ports("/proc/net/tcp", Some("01")).map_or(0, |ports| {
        ports.iter().filter(|p| tcp_ports.contains(p)).count()
    });
    LocalReport {
        services,
        load_permille: match settings.load_source {
            LoadSource::Loadavg => load_permille(),
            LoadSource::None => 0,
        },
        connections: u32::try_from(connections).unwrap_or(u32::MAX),
    }
}

fn check_timeout(interval: Duration) -> Duration {
    (interval / 2).min(Duration::from_secs(1))
}

/// Local ports of the sockets in a `/proc/net/{tcp,udp}` table (optionally in one state).
fn bound_ports(table: &str, state: Option<&str>) -> Option<Vec<u16>> {
    let text = std::fs::read_to_string(table).ok()?;
    Some(
        text.lines()
            .skip(1)
            .filter_map(|line| {
                let mut columns = line.split_whitespace();
                let local = columns.nth(1)?;
                let socket_state = columns.nth(1)?;
                if state.is_some_and(|s| s != socket_state) {
                    return None;
                }
                u16::from_str_radix(local.rsplit(':').next()?, 16).ok()
            })
            .collect(),
    )
}

/// One-minute load average per CPU, in per-mille.
fn load_permille() -> u32 {
    let one_minute: f64 = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    (one_minute / cpus * 1000.0)
        .round()
        .clamp(0.0, f64::from(u32::MAX)) as u32
}

/// The router this agent has joined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Joined {
    router: SocketAddrV4,
    router_ip: Ipv4Addr,
    management: Ipv4Addr,
    router_instance: u64,
    router_sequence: u64,
    heard: Instant,
}

/// Runs the agent until `shutdown` completes, then sends a leave.
pub async fn run(settings: AgentSettings, shutdown: impl Future<Output = ()>) -> Result<()> {
    settings.validate()?;
    let socket = UdpSocket::bind(SocketAddrV4::new(settings.address, settings.listen_port))
        .await
        .with_context(|| format!("bind {}:{}", settings.address, settings.listen_port))?;
    socket.set_broadcast(true)?;
    let instance = random_instance();
    // Seeded from the clock so the sequence keeps rising across restarts.
    let mut sequence = wall_ms().saturating_mul(1000);
    let mut joined: Option<Joined> = None;
    info!(
        "node agent {} (cluster {}, instance {instance:016x}): looking for a router via {}",
        settings.address, settings.cluster_id, settings.announce_to
    );
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; wire::MAX_DATAGRAM + 1];
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = ticker.tick() => {
                if let Some(j) = joined
                    && j.heard.elapsed() > settings.interval * settings.dead_after
                {
                    warn!("router {} silent: looking for a router again", j.router_ip);
                    joined = None;
                }
                let report = local_report(&settings).await;
                let (packet_type, to) = match &joined {
                    None => (PacketType::Join, settings.announce_to),
                    Some(j) => (PacketType::Heartbeat, j.router),
                };
                sequence += 1;
                let message = node_message(&settings, packet_type, joined.as_ref(), instance, sequence, Some(&report));
                send(&socket, &message, &settings.key, to).await;
            }
            received = socket.recv_from(&mut buf) => {
                let (len, from) = match received {
                    Ok(r) => r,
                    Err(e) => {
                        warn!("receive: {e}");
                        continue;
                    }
                };
                let SocketAddr::V4(from) = from else { continue };
                match accept_router_message(&buf[..len], from, &settings, instance, joined.as_ref()) {
                    Ok(update) => {
                        if joined.is_none_or(|j| j.router_ip != update.router_ip || j.management != update.management) {
                            info!(
                                "router {} answered; management node {}",
                                update.router_ip, update.management
                            );
                        }
                        joined = Some(update);
                    }
                    Err(why) => log::debug!("ignored datagram from {from}: {why}"),
                }
            }
        }
    }
    if let Some(j) = joined {
        sequence += 1;
        let message = node_message(
            &settings,
            PacketType::Leave,
            Some(&j),
            instance,
            sequence,
            None,
        );
        send(&socket, &message, &settings.key, j.router).await;
        info!("left the cluster (router {})", j.router_ip);
    }
    Ok(())
}

fn node_message(
    settings: &AgentSettings,
    packet_type: PacketType,
    joined: Option<&Joined>,
    instance: u64,
    sequence: u64,
    report: Option<&LocalReport>,
) -> Message {
    Message {
        header: Header {
            source: settings.address,
            destination: joined.map_or(*settings.announce_to.ip(), |j| j.router_ip),
            priority: settings.priority,
            cluster_id: settings.cluster_id,
            packet_type,
            function: Function::ClusterNode,
            // N/A in a join; a joined node names the router it reports to.
            router: joined.map_or(Ipv4Addr::UNSPECIFIED, |j| j.router_ip),
            management: joined.map_or(Ipv4Addr::UNSPECIFIED, |j| j.management),
            source_port: 0,
            destination_port: 0,
        },
        fields: Fields {
            sequence,
            timestamp_ms: wall_ms(),
            instance,
            services: report.map(|r| r.services.clone()).unwrap_or_default(),
            capacity: report.map(|_| settings.capacity),
            load_permille: report.map(|r| r.load_permille),
            connections: report.map(|r| r.connections),
            ..Fields::default()
        },
    }
}

async fn send(socket: &UdpSocket, message: &Message, key: &ClusterKey, to: SocketAddrV4) {
    match wire::encode(message, key) {
        Ok(bytes) => {
            if let Err(e) = socket.send_to(&bytes, to).await {
                warn!("send {} to {to}: {e}", message.header.packet_type.name());
            }
        }
        Err(e) => warn!("cannot encode {}: {e}", message.header.packet_type.name()),
    }
}

/// A router reply to our join, or a router-to-nodes message from our router (or from any
/// router while we have none).
fn accept_router_message(
    datagram: &[u8],
    from: SocketAddrV4,
    settings: &AgentSettings,
    instance: u64,
    joined: Option<&Joined>,
) -> Result<Joined, String> {
    let message =
        wire::decode(datagram, &settings.key, settings.cluster_id).map_err(|e| e.to_string())?;
    let h = &message.header;
    let f = &message.fields;
    if h.packet_type.from_node() {
        return Err(format!("a node's {}", h.packet_type.name()));
    }
    if h.destination != settings.address {
        return Err(format!("addressed to {}", h.destination));
    }
    if h.source != *from.ip() || h.router.is_unspecified() {
        return Err("router address does not match the sender".into());
    }
    if h.packet_type == PacketType::RouterReply && f.ack_instance != Some(instance) {
        return Err("answers another instance".into());
    }
    if wall_ms().abs_diff(f.timestamp_ms) > 30_000 {
        return Err("stale".into());
    }
    if let Some(j) = joined
        && j.router_instance == f.instance
        && f.sequence <= j.router_sequence
    {
        return Err("replayed".into());
    }
    let management = if h.packet_type == PacketType::RouterToNodes {
        h.management
    } else {
        joined.map_or(Ipv4Addr::UNSPECIFIED, |j| j.management)
    };
    Ok(Joined {
        router: from,
        router_ip: h.router,
        management,
        router_instance: f.instance,
        router_sequence: f.sequence,
        heard: Instant::now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_specs() {
        assert_eq!(
            "http:tcp:80".parse::<ServiceSpec>().unwrap(),
            ServiceSpec {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80
            }
        );
        assert_eq!(
            "dns:udp:53".parse::<ServiceSpec>().unwrap().protocol,
            Protocol::Udp
        );
        for (bad, why) in [
            ("http:tcp", "expected name:protocol:port"),
            ("http:sctp:80", "not tcp or udp"),
            ("http:tcp:0", "not 1..=65535"),
            ("http:tcp:70000", "not 1..=65535"),
            ("ht tp:tcp:80", "may hold only"),
            (":tcp:80", "1 to 32 bytes"),
        ] {
            let err = bad.parse::<ServiceSpec>().unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn loopback_interface_address() {
        let (address, _) = interface_address("lo").unwrap();
        assert_eq!(address, Ipv4Addr::LOCALHOST);
        assert!(interface_address("no-such-if0").is_err());
    }

    #[test]
    fn proc_tables_parse() {
        // This process's own listener shows up in /proc/net/tcp (state 0A, LISTEN).
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let listening = bound_ports("/proc/net/tcp", Some("0A")).unwrap();
        assert!(listening.contains(&port));
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let udp_port = udp.local_addr().unwrap().port();
        assert!(
            bound_ports("/proc/net/udp", None)
                .unwrap()
                .contains(&udp_port)
        );
        assert!(bound_ports("/proc/net/no-such-table", None).is_none());
    }
}
