//! The balancer's vocabulary, shared by the config, the service table, the daemon and the
//! cluster protocol: protocols, forwarding and attach modes, addresses, limits, timeouts,
//! allow-list prefixes, health checks, and the defaults and value checks that go with
//! them. Plain data and pure functions; nothing here reads a file or touches the kernel.

use std::fmt;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Identity of a service: what a client addresses (VIP, port, IP protocol number).
pub type ServiceAddr = (Ipv4Addr, u16, u8);
/// Identity of a backend: where packets go.
pub type BackendAddr = (Ipv4Addr, u16);

/// Full-NAT source ports used when `[snat]` does not say otherwise (the data path
/// starts with the same range).
pub use lb_common::{DEFAULT_SNAT_PORT_MAX, DEFAULT_SNAT_PORT_MIN};

/// UDP port of the cluster protocol, on the router (`cluster.port`) and the nodes
/// (`lb node --port`).
pub const DEFAULT_CLUSTER_PORT: u16 = 7394;
/// How often nodes and the router hear from each other (`cluster.heartbeat_ms`).
pub const DEFAULT_HEARTBEAT_MS: u64 = 1000;
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(DEFAULT_HEARTBEAT_MS);
/// Missed heartbeats before the other side counts as gone (`cluster.dead_after`,
/// `lb node --dead-after`).
pub const DEFAULT_DEAD_AFTER: u32 = 3;
/// How long a starting instance waits for its reachable peers' snapshots
/// (`peers.join_timeout_ms`).
pub const DEFAULT_JOIN_TIMEOUT_MS: u64 = 5000;
/// Silence after which a peer is down (`peers.dead_after_ms`).
pub const DEFAULT_PEER_DEAD_AFTER_MS: u64 = 1000;

/// Ports of services and backends (0 names no port).
pub const PORTS: RangeInclusive<i64> = 1..=u16::MAX as i64;
/// Backend weights: 0 keeps a backend configured but gives it no new flows; the ring
/// builder takes at most a u16.
pub const WEIGHTS: RangeInclusive<i64> = 0..=u16::MAX as i64;

/// `number` as a `T` if it lies within `range` (which must fit `T`); otherwise the
/// message the config and the operator API both give, naming the value `what`.
pub fn in_range<T: TryFrom<i64>>(
    what: &str,
    number: i64,
    range: RangeInclusive<i64>,
) -> Result<T, String> {
    match T::try_from(number) {
        Ok(converted) if range.contains(&number) => Ok(converted),
        _ => Err(format!(
            "{what} must be between {} and {}, got {number}",
            range.start(),
            range.end()
        )),
    }
}

/// A backend weight, or why it is refused.
pub fn weight(number: i64) -> Result<u32, String> {
    in_range("weight", number, WEIGHTS)
}

/// Whether `ip` can name a single host: not 0.0.0.0, broadcast or multicast.
pub fn is_unicast(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast())
}

/// Transport protocol of a service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    /// IP protocol number, as used in the data path's keys.
    pub const fn number(&self) -> u8 {
        match self {
            Self::Tcp => lb_common::IPPROTO_TCP,
            Self::Udp => lb_common::IPPROTO_UDP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

/// Forwarding mode of a service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Source and destination rewritten: replies come back through the balancer
    /// whatever the backends' routes.
    #[default]
    FullNat,
    /// Destination rewritten only: backends see client addresses and must route
    /// replies back through the balancer.
    Dnat,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::FullNat => "full-nat",
            Self::Dnat => "dnat",
        })
    }
}

/// How the XDP program is to be attached: the config's `interfaces.xdp_mode` and
/// `lb run --xdp-mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// In the driver; fails where the driver has no XDP support.
    Native,
    /// In the generic network stack: works everywhere, slower.
    Generic,
    /// Native, falling back to generic with a warning.
    #[default]
    Auto,
}

impl XdpMode {
    /// The one mode to attach in, or `None` to try native, then generic.
    pub const fn required(self) -> Option<AttachedMode> {
        match self {
            Self::Native => Some(AttachedMode::Native),
            Self::Generic => Some(AttachedMode::Generic),
            Self::Auto => None,
        }
    }
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Native => "native",
            Self::Generic => "generic",
            Self::Auto => "auto",
        })
    }
}

/// How the program is attached to an interface. Not an [`XdpMode`]: `auto` is a wish,
/// and every attachment ends up in one of these two modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachedMode {
    Native,
    Generic,
}

/// Idle timeouts of the flow table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Half-open: SYN seen, the client has not ACKed the server's SYN+ACK yet.
    pub tcp_syn: Duration,
    pub tcp_established: Duration,
    /// One side's FIN seen: the other side may still send.
    pub tcp_half_closed: Duration,
    /// Both sides' FINs, or an RST.
    pub tcp_closing: Duration,
    pub udp: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_syn: Duration::from_secs(30),
            tcp_established: Duration::from_secs(3600),
            tcp_half_closed: Duration::from_secs(3600),
            tcp_closing: Duration::from_secs(10),
            udp: Duration::from_secs(60),
        }
    }
}

/// Capacities of the data path's maps, fixed when the program is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Flow table entries (two per connection).
    pub max_flows: u32,
    pub max_services: u32,
    /// Distinct (address, port) backends across all services.
    pub max_backends: u32,
    /// Slots of the Maglev ring pool (MAGLEV_RINGS): each service takes two rings of its
    /// ring size (`maglev::ring_size_for`: 1,021 slots for up to 10 equal backends, up
    /// to 65,537).
    pub max_ring_slots: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_flows: lb_common::DEFAULT_MAX_FLOWS,
            max_services: lb_common::DEFAULT_MAX_SERVICES,
            max_backends: lb_common::DEFAULT_MAX_BACKENDS,
            max_ring_slots: lb_common::DEFAULT_MAX_RING_SLOTS,
        }
    }
}

/// What happens to a new flow from a client outside a service's allow-list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DenyAction {
    #[default]
    Drop,
    /// TCP SYNs are answered with a RST (UDP is dropped).
    Reset,
}

/// What a TCP segment to a service gets when it has no flow entry and cannot open one
/// (no SYN; on a SYN-proxied service, not an ACK carrying a cookie either).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownSegment {
    /// Dropped: safe when several balancers share flow state, since a segment may
    /// arrive a moment before its flow is installed here and TCP retransmits it.
    #[default]
    Drop,
    /// Answered with a RST (a RST itself is dropped), so the client fails fast.
    Reset,
}

/// Whether a TCP service without `syn_proxy` switches to SYN cookies by itself under a
/// SYN flood (docs/architecture.md, "SYN floods").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SynCookies {
    /// On while the service's half-open connections exceed its threshold.
    #[default]
    Auto,
    /// Never (a flood then fills the flow table and the SNAT port space).
    Off,
}

/// Default `syn_cookie_threshold`: half-open connections of one service above which
/// automatic SYN cookies switch on (README, "SYN floods").
pub const DEFAULT_SYN_COOKIE_THRESHOLD: u32 = 4096;

/// What happens to the established flows of a backend whose health check fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendDown {
    /// They continue (the server may still answer them).
    #[default]
    Keep,
    /// Their clients' next packets are answered with a RST.
    Reset,
}

/// An IPv4 prefix of an allow-list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl std::str::FromStr for Prefix {
    type Err = String;

    /// `a.b.c.d/len` (host bits must be zero) or a bare address (a /32).
    fn from_str(text: &str) -> Result<Prefix, String> {
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (
                addr,
                len.parse::<u8>()
                    .ok()
                    .filter(|len| *len <= 32)
                    .ok_or_else(|| format!("invalid prefix length in {text:?} (0 to 32)"))?,
            ),
            None => (text, 32),
        };
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("invalid IPv4 prefix {text:?}"))?;
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        if u32::from(addr) & !mask != 0 {
            return Err(format!(
                "prefix {text:?} has host bits set (did you mean {}/{len}?)",
                Ipv4Addr::from(u32::from(addr) & mask)
            ));
        }
        Ok(Prefix { addr, len })
    }
}

/// How a health check probes a backend.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HealthProbe {
    /// A TCP connection is accepted.
    Tcp,
    /// `GET path` answers with a status in `status_min..=status_max`.
    Http {
        path: String,
        status_min: u16,
        status_max: u16,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    pub probe: HealthProbe,
    /// Port to probe; the backend's own port when not set.
    pub port: Option<u16>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend back.
    pub rise: u32,
    /// Consecutive failures that take a backend out.
    pub fall: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serde_name<T: Serialize>(value: &T) -> String {
        serde_json::to_value(value)
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    }

    fn from_name<'a, T: Deserialize<'a>>(name: &'a str) -> T {
        T::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(name))
            .unwrap()
    }

    #[test]
    fn display_names_are_the_serde_names() {
        // The config reads these names and the operator output prints them: one spelling.
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            assert_eq!(serde_name(&protocol), protocol.to_string());
            assert_eq!(from_name::<Protocol>(&protocol.to_string()), protocol);
        }
        for mode in [Mode::FullNat, Mode::Dnat] {
            assert_eq!(serde_name(&mode), mode.to_string());
            assert_eq!(from_name::<Mode>(&mode.to_string()), mode);
        }
    }

    #[test]
    fn xdp_mode_names_agree_across_config_cli_and_status() {
        use clap::ValueEnum as _;
        for mode in XdpMode::value_variants() {
            let cli = mode.to_possible_value().unwrap();
            assert_eq!(cli.get_name(), mode.to_string());
            assert_eq!(from_name::<XdpMode>(cli.get_name()), *mode);
        }
        // `lb status` reports an attachment by the name that asks for it.
        for mode in [AttachedMode::Native, AttachedMode::Generic] {
            let asked: XdpMode = from_name(&serde_name(&mode));
            assert_eq!(asked.required(), Some(mode));
        }
        assert_eq!(XdpMode::Auto.required(), None);
    }

    #[test]
    fn range_checks_name_the_value_and_the_bounds() {
        assert_eq!(weight(0), Ok(0));
        assert_eq!(weight(65535), Ok(65535));
        assert_eq!(
            weight(65536),
            Err("weight must be between 0 and 65535, got 65536".to_string())
        );
        assert_eq!(
            in_range::<u16>("port", 0, PORTS),
            Err("port must be between 1 and 65535, got 0".to_string())
        );
        // A range wider than the type still refuses what the type cannot hold.
        assert!(in_range::<u8>("x", 300, 0..=1000).is_err());
    }

    #[test]
    fn unicast_excludes_what_names_no_single_host() {
        assert!(is_unicast(Ipv4Addr::new(198, 18, 0, 1)));
        for ip in [
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::BROADCAST,
            Ipv4Addr::new(224, 0, 0, 1),
        ] {
            assert!(!is_unicast(ip), "{ip}");
        }
    }
}
