//! The balancer's TOML configuration: parsing and validation.
//!
//! Parsing is strict (unknown keys, wrong types and inconsistent values are refused) and
//! every error names the file, line and column of the offending value, so an operator
//! can fix a config before it touches the data path. The validated result is plain data
//! with std types; source positions are kept privately for later checks against the
//! running system ([`Config::check_interfaces`]).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// Instance name used when the file sets none.
pub const DEFAULT_NAME: &str = "lb";
/// Full-NAT source ports used when `[snat]` does not say otherwise: the unprivileged
/// range, so translated flows never look like they come from a system service.
pub const DEFAULT_SNAT_PORT_MIN: u16 = 1024;
pub const DEFAULT_SNAT_PORT_MAX: u16 = 65535;

/// The instance name becomes a bpffs directory and part of the socket path.
const MAX_NAME_LEN: usize = 32;
/// IFNAMSIZ (16) less the terminating NUL.
const MAX_IFNAME_LEN: usize = 15;
/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH_LEN: usize = 107;
/// Service names show up in operator output and logs; keep them short.
const MAX_SERVICE_NAME_LEN: usize = 64;
/// Idle timeouts are bounded so that their nanosecond value fits the data path's u64.
const MAX_TIMEOUT_SECS: i64 = u32::MAX as i64;
const PORTS: RangeInclusive<i64> = 1..=u16::MAX as i64;
const WEIGHTS: RangeInclusive<i64> = 0..=u16::MAX as i64;
const COUNTS: RangeInclusive<i64> = 1..=u32::MAX as i64;

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
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

/// Transport protocol of a service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
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

/// Forwarding mode of a service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
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

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Native => "native",
            Self::Generic => "generic",
            Self::Auto => "auto",
        })
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

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::FullNat => "full-nat",
            Self::Dnat => "dnat",
        })
    }
}

/// Idle timeouts of the flow table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Half-open: SYN seen, no reply yet.
    pub tcp_syn: Duration,
    pub tcp_established: Duration,
    /// After FIN or RST.
    pub tcp_closing: Duration,
    pub udp: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_syn: Duration::from_secs(30),
            tcp_established: Duration::from_secs(3600),
            tcp_closing: Duration::from_secs(10),
            udp: Duration::from_secs(60),
        }
    }
}

/// Capacities of the data path's maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Flow table entries (two per connection).
    pub max_flows: u32,
    pub max_services: u32,
    /// Distinct (address, port) backends across all services.
    pub max_backends: u32,
    /// Slots of the Maglev ring pool: each service takes two rings of its ring size
    /// (`maglev::ring_size_for`: 1,021 slots for up to 10 equal backends, up to 65,537).
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    pub address: Ipv4Addr,
    pub port: u16,
    /// 0..=65535; 0 keeps the backend configured but gives it no new flows.
    pub weight: u32,
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    pub name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    pub mode: Mode,
    /// Set exactly when `mode` is [`Mode::FullNat`].
    pub snat_ip: Option<Ipv4Addr>,
    /// The balancer answers SYNs with SYN cookies and opens the server side itself
    /// (TCP only).
    pub syn_proxy: bool,
    /// Never empty, and at least one has a weight above 0.
    pub backends: Vec<BackendConfig>,
    /// Some: authorization required, only these client prefixes may open flows.
    pub allow: Option<Vec<Prefix>>,
    pub deny: DenyAction,
    /// Some: client-IP session affinity with this idle timeout.
    pub affinity_timeout: Option<Duration>,
    pub health_check: Option<HealthCheck>,
    pub on_backend_down: BackendDown,
}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Maps are pinned under `/sys/fs/bpf/<name>/`.
    pub name: String,
    /// Interfaces the XDP program attaches to; never empty, no duplicates.
    pub attach: Vec<String>,
    pub xdp_mode: XdpMode,
    /// Unix socket of the operator API.
    pub socket: PathBuf,
    /// Address of the Prometheus text endpoint, if any.
    pub metrics: Option<std::net::SocketAddr>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    /// Full-NAT source port range, `snat_port_min <= snat_port_max`.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// In file order.
    pub services: Vec<ServiceConfig>,
    /// Cluster nodes announce themselves (`[cluster]`); `None`: only configured backends.
    pub cluster: Option<ClusterConfig>,
    origin: Origin,
}

/// Defaults of `[cluster]`.
pub const DEFAULT_CLUSTER_PORT: u16 = 7394;
pub const DEFAULT_HEARTBEAT_MS: u64 = 1000;
pub const DEFAULT_DEAD_AFTER: u32 = 3;

/// The router side of the cluster protocol (docs/cluster-protocol.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    pub cluster_id: u16,
    /// File holding the cluster's HMAC key; read when `lb run` starts.
    pub key_file: PathBuf,
    /// UDP port the router listens on (every address, so broadcast joins arrive).
    pub port: u16,
    /// The nodes' segment: the socket is bound to it and, without `router_ip`, its
    /// address is the router's.
    pub interface: Option<String>,
    /// The router address told to the nodes (header word 4).
    pub router_ip: Option<Ipv4Addr>,
    /// A configured management node; `None` elects the highest-priority live node.
    pub controller: Option<Ipv4Addr>,
    pub heartbeat_interval: Duration,
    /// Missed heartbeats before a node takes no new flows.
    pub dead_after: u32,
}

/// An invalid or unreadable configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    /// 1-based; 0 when the error has no position (the file could not be read).
    pub line: usize,
    /// 1-based, in characters; 0 when `line` is 0.
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.path.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
            path: path.to_owned(),
            line: 0,
            column: 0,
            message: format!("cannot read the configuration: {error}"),
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates `text`; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let parser = Parser { text, path };
        let raw: RawConfig = toml::from_str(text).map_err(|error| {
            // Some of toml's messages span lines; keep ours on one, like a compiler's.
            let message: Vec<&str> = error
                .message()
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .collect();
            parser.error(error.span().unwrap_or(0..0), message.join(", "))
        })?;
        parser.validate(raw)
    }

    /// Checks every interface in `attach` with `exists`; the error points at the line
    /// of the first missing one in the file the configuration was parsed from.
    pub fn check_interfaces(&self, exists: impl Fn(&str) -> bool) -> Result<(), ConfigError> {
        match self
            .attach
            .iter()
            .enumerate()
            .find(|(_, name)| !exists(name))
        {
            None => Ok(()),
            Some((index, name)) => {
                // A caller may have edited `attach`; without a position, say so with 0:0.
                let at = self.origin.attach.get(index).copied().unwrap_or_default();
                Err(ConfigError {
                    path: self.origin.path.clone(),
                    line: at.line,
                    column: at.column,
                    message: format!("interface {name:?} does not exist"),
                })
            }
        }
    }
}

/// Where the configuration came from, for errors found after parsing.
#[derive(Clone, Debug, Default)]
struct Origin {
    path: PathBuf,
    /// Position of each `attach` entry.
    attach: Vec<Position>,
}

/// Layout is not meaning: configurations that differ only in where their values sit in
/// the file compare equal, so a reload can tell whether anything really changed.
impl PartialEq for Origin {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Origin {}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Position {
    line: usize,
    column: usize,
}

/// 1-based line and column (in characters) of a byte offset into `text`.
fn position(text: &str, offset: usize) -> Position {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    Position {
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
    }
}

// The file as written, with positions. Integers are read as i64 and range-checked here,
// so an out-of-range value gets a message in the file's terms rather than Rust's types.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    name: Option<Spanned<String>>,
    interfaces: RawInterfaces,
    control: Option<RawControl>,
    timeouts: Option<RawTimeouts>,
    limits: Option<RawLimits>,
    snat: Option<Spanned<RawSnat>>,
    #[serde(default)]
    service: Vec<Spanned<RawService>>,
    cluster: Option<Spanned<RawCluster>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    cluster_id: Spanned<i64>,
    key_file: Spanned<String>,
    port: Option<Spanned<i64>>,
    interface: Option<Spanned<String>>,
    router_ip: Option<Spanned<Ipv4Addr>>,
    controller: Option<Spanned<Ipv4Addr>>,
    heartbeat_ms: Option<Spanned<i64>>,
    dead_after: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterfaces {
    attach: Spanned<Vec<Spanned<String>>>,
    xdp_mode: Option<XdpMode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControl {
    socket: Option<Spanned<String>>,
    metrics: Option<Spanned<String>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    tcp_syn: Option<Spanned<i64>>,
    tcp_established: Option<Spanned<i64>>,
    tcp_closing: Option<Spanned<i64>>,
    udp: Option<Spanned<i64>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_flows: Option<Spanned<i64>>,
    max_services: Option<Spanned<i64>>,
    max_backends: Option<Spanned<i64>>,
    max_ring_slots: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSnat {
    port_min: Option<Spanned<i64>>,
    port_max: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    vip: Spanned<Ipv4Addr>,
    port: Spanned<i64>,
    protocol: Option<Protocol>,
    mode: Option<Mode>,
    snat_ip: Option<Spanned<Ipv4Addr>>,
    allow: Option<Vec<Spanned<String>>>,
    deny: Option<Spanned<DenyAction>>,
    affinity_timeout: Option<Spanned<i64>>,
    health_check: Option<Spanned<RawHealthCheck>>,
    on_backend_down: Option<BackendDown>,
    syn_proxy: Option<Spanned<bool>>,
    #[serde(default)]
    backend: Vec<Spanned<RawBackend>>,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawProbe {
    Tcp,
    Http,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    #[serde(rename = "type")]
    probe: RawProbe,
    port: Option<Spanned<i64>>,
    path: Option<Spanned<String>>,
    status_min: Option<Spanned<i64>>,
    status_max: Option<Spanned<i64>>,
    interval_ms: Option<Spanned<i64>>,
    timeout_ms: Option<Spanned<i64>>,
    rise: Option<Spanned<i64>>,
    fall: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: Spanned<Ipv4Addr>,
    port: Option<Spanned<i64>>,
    weight: Option<Spanned<i64>>,
}

/// Validation state: the text, to turn spans into positions.
struct Parser<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Parser<'_> {
    fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let at = position(self.text, span.start);
        ConfigError {
            path: self.path.to_owned(),
            line: at.line,
            column: at.column,
            message: message.into(),
        }
    }

    /// `value` as a `T`, refused unless within `range` (which must fit `T`).
    fn int<T: TryFrom<i64>>(
        &self,
        value: &Spanned<i64>,
        what: &str,
        range: RangeInclusive<i64>,
    ) -> Result<T, ConfigError> {
        let number = *value.get_ref();
        match T::try_from(number) {
            Ok(converted) if range.contains(&number) => Ok(converted),
            _ => Err(self.error(
                value.span(),
                format!(
                    "{what} must be between {} and {}, got {number}",
                    range.start(),
                    range.end()
                ),
            )),
        }
    }

    fn int_or<T: TryFrom<i64>>(
        &self,
        value: Option<&Spanned<i64>>,
        what: &str,
        range: RangeInclusive<i64>,
        default: T,
    ) -> Result<T, ConfigError> {
        value.map_or(Ok(default), |value| self.int(value, what, range))
    }

    fn timeout(
        &self,
        value: Option<&Spanned<i64>>,
        what: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        value.map_or(Ok(default), |value| {
            self.int::<u64>(value, what, 1..=MAX_TIMEOUT_SECS)
                .map(Duration::from_secs)
        })
    }

    /// Refuses addresses that can never name a single host.
    fn unicast(&self, address: &Spanned<Ipv4Addr>, what: &str) -> Result<Ipv4Addr, ConfigError> {
        let ip = *address.get_ref();
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
            return Err(self.error(
                address.span(),
                format!("{what} must be a unicast address, got {ip}"),
            ));
        }
        Ok(ip)
    }

    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let name = match &raw.name {
            None => DEFAULT_NAME.to_owned(),
            Some(name) if valid_instance_name(name.get_ref()) => name.get_ref().clone(),
            Some(name) => {
                return Err(self.error(
                    name.span(),
                    format!(
                        "invalid instance name {:?}: use 1 to {MAX_NAME_LEN} characters \
                         among a-z, A-Z, 0-9, '_' and '-'",
                        name.get_ref()
                    ),
                ));
            }
        };

        let (attach, attach_positions) = self.interfaces(&raw.interfaces.attach)?;

        let metrics = match raw.control.as_ref().and_then(|c| c.metrics.as_ref()) {
            None => None,
            Some(metrics) => Some(metrics.get_ref().parse().map_err(|_| {
                self.error(
                    metrics.span(),
                    format!(
                        "control.metrics must be an address:port such as \"127.0.0.1:9100\", \
                         got {:?}",
                        metrics.get_ref()
                    ),
                )
            })?),
        };
        let socket = match raw.control.and_then(|control| control.socket) {
            None => PathBuf::from(format!("/run/lb/{name}.sock")),
            Some(socket) => {
                let length = socket.get_ref().len();
                if length == 0 {
                    return Err(self.error(socket.span(), "control.socket must not be empty"));
                }
                if length > MAX_SOCKET_PATH_LEN {
                    return Err(self.error(
                        socket.span(),
                        format!(
                            "control.socket is {length} bytes long, more than a Unix socket \
                             path can hold ({MAX_SOCKET_PATH_LEN})"
                        ),
                    ));
                }
                PathBuf::from(socket.into_inner())
            }
        };

        let raw_timeouts = raw.timeouts.unwrap_or_default();
        let defaults = Timeouts::default();
        let timeouts = Timeouts {
            tcp_syn: self.timeout(
                raw_timeouts.tcp_syn.as_ref(),
                "timeouts.tcp_syn",
                defaults.tcp_syn,
            )?,
            tcp_established: self.timeout(
                raw_timeouts.tcp_established.as_ref(),
                "timeouts.tcp_established",
                defaults.tcp_established,
            )?,
            tcp_closing: self.timeout(
                raw_timeouts.tcp_closing.as_ref(),
                "timeouts.tcp_closing",
                defaults.tcp_closing,
            )?,
            udp: self.timeout(raw_timeouts.udp.as_ref(), "timeouts.udp", defaults.udp)?,
        };

        let raw_limits = raw.limits.unwrap_or_default();
        let defaults = Limits::default();
        let limits = Limits {
            // Each connection takes two entries (one per direction).
            max_flows: self.int_or(
                raw_limits.max_flows.as_ref(),
                "limits.max_flows",
                2..=*COUNTS.end(),
                defaults.max_flows,
            )?,
            max_services: self.int_or(
                raw_limits.max_services.as_ref(),
                "limits.max_services",
                COUNTS,
                defaults.max_services,
            )?,
            max_backends: self.int_or(
                raw_limits.max_backends.as_ref(),
                "limits.max_backends",
                COUNTS,
                defaults.max_backends,
            )?,
            // At least two of the largest rings, so any one service always fits.
            max_ring_slots: self.int_or(
                raw_limits.max_ring_slots.as_ref(),
                "limits.max_ring_slots",
                i64::from(2 * lb_common::MAGLEV_RING_SIZE)..=i64::from(u32::MAX / 4),
                defaults.max_ring_slots,
            )?,
        };

        let (snat_port_min, snat_port_max) = match &raw.snat {
            None => (DEFAULT_SNAT_PORT_MIN, DEFAULT_SNAT_PORT_MAX),
            Some(snat) => {
                let min = self.int_or(
                    snat.get_ref().port_min.as_ref(),
                    "snat.port_min",
                    PORTS,
                    DEFAULT_SNAT_PORT_MIN,
                )?;
                let max = self.int_or(
                    snat.get_ref().port_max.as_ref(),
                    "snat.port_max",
                    PORTS,
                    DEFAULT_SNAT_PORT_MAX,
                )?;
                if min > max {
                    return Err(self.error(
                        snat.span(),
                        format!(
                            "snat.port_min ({min}) must not be greater than snat.port_max ({max})"
                        ),
                    ));
                }
                (min, max)
            }
        };

        let cluster = match &raw.cluster {
            None => None,
            Some(cluster) => Some(self.cluster(cluster)?),
        };
        let services = self.services(&raw.service, &limits, cluster.is_some())?;

        Ok(Config {
            name,
            attach,
            xdp_mode: raw.interfaces.xdp_mode.unwrap_or_default(),
            socket,
            metrics,
            timeouts,
            limits,
            snat_port_min,
            snat_port_max,
            services,
            cluster,
            origin: Origin {
                path: self.path.to_owned(),
                attach: attach_positions,
            },
        })
    }

    fn interfaces(
        &self,
        attach: &Spanned<Vec<Spanned<String>>>,
    ) -> Result<(Vec<String>, Vec<Position>), ConfigError> {
        let entries = attach.get_ref();
        if entries.is_empty() {
            return Err(self.error(
                attach.span(),
                "interfaces.attach must list at least one interface",
            ));
        }
        let max = lb_common::MAX_INTERFACES as usize;
        if let Some(extra) = entries.get(max) {
            return Err(self.error(
                extra.span(),
                format!("interfaces.attach lists more than {max} interfaces"),
            ));
        }
        let mut seen = HashSet::new();
        for entry in entries {
            let name = entry.get_ref();
            if !valid_ifname(name) {
                return Err(self.error(
                    entry.span(),
                    format!(
                        "invalid interface name {name:?}: a Linux interface name has 1 to \
                         {MAX_IFNAME_LEN} bytes, is not \".\" or \"..\", and has no '/', ':' \
                         or whitespace"
                    ),
                ));
            }
            if !seen.insert(name) {
                return Err(self.error(entry.span(), format!("interface {name:?} is listed twice")));
            }
        }
        Ok((
            entries
                .iter()
                .map(|entry| entry.get_ref().clone())
                .collect(),
            entries
                .iter()
                .map(|entry| position(self.text, entry.span().start))
                .collect(),
        ))
    }

    fn cluster(&self, raw: &Spanned<RawCluster>) -> Result<ClusterConfig, ConfigError> {
        let cluster = raw.get_ref();
        let key_file = cluster.key_file.get_ref();
        if key_file.is_empty() {
            return Err(self.error(
                cluster.key_file.span(),
                "cluster.key_file must not be empty",
            ));
        }
        let interface = match &cluster.interface {
            None => None,
            Some(name) if valid_ifname(name.get_ref()) => Some(name.get_ref().clone()),
            Some(name) => {
                return Err(self.error(
                    name.span(),
                    format!(
                        "cluster.interface {:?} is not a valid interface name",
                        name.get_ref()
                    ),
                ));
            }
        };
        let router_ip = match &cluster.router_ip {
            None => None,
            Some(ip) => Some(self.unicast(ip, "cluster.router_ip")?),
        };
        if interface.is_none() && router_ip.is_none() {
            return Err(self.error(
                raw.span(),
                "[cluster] needs `interface` (the nodes' segment) or `router_ip`",
            ));
        }
        let controller = match &cluster.controller {
            None => None,
            Some(ip) => Some(self.unicast(ip, "cluster.controller")?),
        };
        // Bounded so that a node is always declared down well before it is forgotten
        // (300 s), which replay protection relies on.
        let heartbeat_ms: u64 = self.int_or(
            cluster.heartbeat_ms.as_ref(),
            "cluster.heartbeat_ms",
            50..=10_000,
            DEFAULT_HEARTBEAT_MS,
        )?;
        Ok(ClusterConfig {
            cluster_id: self.int(
                &cluster.cluster_id,
                "cluster.cluster_id",
                0..=u16::MAX as i64,
            )?,
            key_file: PathBuf::from(key_file),
            port: self.int_or(
                cluster.port.as_ref(),
                "cluster.port",
                PORTS,
                DEFAULT_CLUSTER_PORT,
            )?,
            interface,
            router_ip,
            controller,
            heartbeat_interval: Duration::from_millis(heartbeat_ms),
            dead_after: self.int_or(
                cluster.dead_after.as_ref(),
                "cluster.dead_after",
                1..=20,
                DEFAULT_DEAD_AFTER,
            )?,
        })
    }

    /// With a cluster, a service may start without configured backends: nodes announce
    /// theirs.
    fn services(
        &self,
        raw: &[Spanned<RawService>],
        limits: &Limits,
        announced_backends: bool,
    ) -> Result<Vec<ServiceConfig>, ConfigError> {
        // A full-NAT source address equal to any VIP, even a later one, would make
        // translated packets look like client traffic to that service.
        let mut vip_owners: HashMap<Ipv4Addr, &str> = HashMap::new();
        for service in raw {
            let service = service.get_ref();
            vip_owners
                .entry(*service.vip.get_ref())
                .or_insert(service.name.get_ref());
        }

        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut listeners: HashMap<(Ipv4Addr, u16, Protocol), &str> = HashMap::new();
        let mut distinct_backends: HashSet<(Ipv4Addr, u16)> = HashSet::new();
        let mut services = Vec::with_capacity(raw.len());
        let mut ring_slots = 0u64;
        let mut allow_prefixes = 0usize;

        for (index, spanned) in raw.iter().enumerate() {
            let table = spanned.span();
            let service = spanned.get_ref();
            if index as u64 >= u64::from(limits.max_services) {
                return Err(self.error(
                    table,
                    format!(
                        "too many services: limits.max_services is {}",
                        limits.max_services
                    ),
                ));
            }

            let name = service.name.get_ref();
            if !valid_service_name(name) {
                return Err(self.error(
                    service.name.span(),
                    format!(
                        "invalid service name {name:?}: use 1 to {MAX_SERVICE_NAME_LEN} \
                         characters, without whitespace or control characters"
                    ),
                ));
            }
            // The byte offset; its line is worked out only for the error (per service it
            // would rescan the file: minutes for 10,000 services).
            if let Some(first) = names.insert(name, table.start) {
                let first = position(self.text, first).line;
                return Err(self.error(
                    service.name.span(),
                    format!("duplicate service name {name:?} (first defined on line {first})"),
                ));
            }

            let vip = self.unicast(&service.vip, "vip")?;
            let port: u16 = self.int(&service.port, "port", PORTS)?;
            let protocol = service.protocol.unwrap_or_default();
            if let Some(other) = listeners.insert((vip, port, protocol), name) {
                return Err(self.error(
                    table,
                    format!(
                        "service {name:?} listens on {vip}:{port}/{protocol}, \
                         as does service {other:?}"
                    ),
                ));
            }

            let syn_proxy = match &service.syn_proxy {
                Some(flag) if *flag.get_ref() && protocol != Protocol::Tcp => {
                    return Err(self.error(
                        flag.span(),
                        format!("service {name:?} is {protocol}: syn_proxy is only for tcp"),
                    ));
                }
                Some(flag) => *flag.get_ref(),
                None => false,
            };
            let mode = service.mode.unwrap_or_default();
            let snat_ip = match (mode, &service.snat_ip) {
                (Mode::FullNat, None) => {
                    return Err(self.error(
                        table,
                        format!("service {name:?} is full-nat and needs a snat_ip"),
                    ));
                }
                (Mode::Dnat, Some(snat_ip)) => {
                    return Err(self.error(
                        snat_ip.span(),
                        format!("service {name:?} is dnat: snat_ip is only for full-nat"),
                    ));
                }
                (Mode::Dnat, None) => None,
                (Mode::FullNat, Some(spanned_ip)) => {
                    let snat_ip = self.unicast(spanned_ip, "snat_ip")?;
                    if let Some(owner) = vip_owners.get(&snat_ip) {
                        return Err(self.error(
                            spanned_ip.span(),
                            format!(
                                "snat_ip {snat_ip} of service {name:?} is the VIP of \
                                 service {owner:?}"
                            ),
                        ));
                    }
                    Some(snat_ip)
                }
            };

            if service.backend.is_empty() && !announced_backends {
                return Err(self.error(
                    table,
                    format!(
                        "service {name:?} has no backends (and no [cluster] whose nodes \
                         could announce some)"
                    ),
                ));
            }
            let mut backends = Vec::with_capacity(service.backend.len());
            let mut seen = HashSet::new();
            for spanned_backend in &service.backend {
                let backend = spanned_backend.get_ref();
                let address = self.unicast(&backend.address, "backend address")?;
                let port = self.int_or(backend.port.as_ref(), "backend port", PORTS, port)?;
                let weight = self.int_or(backend.weight.as_ref(), "weight", WEIGHTS, 1)?;
                if !seen.insert((address, port)) {
                    return Err(self.error(
                        spanned_backend.span(),
                        format!("service {name:?} lists backend {address}:{port} twice"),
                    ));
                }
                if distinct_backends.insert((address, port))
                    && distinct_backends.len() as u64 > u64::from(limits.max_backends)
                {
                    return Err(self.error(
                        spanned_backend.span(),
                        format!(
                            "too many backends: limits.max_backends is {} distinct \
                             address:port pairs",
                            limits.max_backends
                        ),
                    ));
                }
                backends.push(BackendConfig {
                    address,
                    port,
                    weight,
                });
            }
            if !announced_backends && backends.iter().all(|backend| backend.weight == 0) {
                return Err(self.error(
                    table,
                    format!(
                        "every backend of service {name:?} has weight 0, so it could take \
                         no new flow"
                    ),
                ));
            }

            let allow = match &service.allow {
                None => None,
                Some(entries) => {
                    let mut prefixes = Vec::with_capacity(entries.len());
                    for entry in entries {
                        let prefix: Prefix = entry
                            .get_ref()
                            .parse()
                            .map_err(|message: String| self.error(entry.span(), message))?;
                        prefixes.push(prefix);
                    }
                    prefixes.sort();
                    prefixes.dedup();
                    // All services share one ELIGIBILITY map: refused here, a full one
                    // would stop an apply half-way.
                    allow_prefixes += prefixes.len();
                    let capacity = lb_common::MAX_ELIGIBILITY_PREFIXES as usize;
                    if allow_prefixes > capacity {
                        let at = entries.first().map_or(table.clone(), |e| e.span());
                        return Err(self.error(
                            at,
                            format!(
                                "the allow lists of the services up to {name:?} hold {allow_prefixes} \
                                 prefixes but the data path holds at most {capacity}"
                            ),
                        ));
                    }
                    Some(prefixes)
                }
            };
            let deny = match &service.deny {
                None => DenyAction::default(),
                Some(deny) if service.allow.is_none() => {
                    return Err(self.error(
                        deny.span(),
                        format!("service {name:?} sets deny but has no allow list"),
                    ));
                }
                Some(deny) => *deny.get_ref(),
            };
            let affinity_timeout = match &service.affinity_timeout {
                None => None,
                Some(secs) => Some(Duration::from_secs(self.int::<u64>(
                    secs,
                    "affinity_timeout",
                    1..=MAX_TIMEOUT_SECS,
                )?)),
            };
            let health_check = match &service.health_check {
                None => None,
                Some(raw) => Some(self.health_check(raw)?),
            };
            // Announced backends are not known yet: such a service gets the largest ring.
            let ring_size = if announced_backends {
                lb_common::MAGLEV_RING_SIZE
            } else {
                let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
                crate::maglev::ring_size_for(&weights)
            };
            ring_slots += 2 * u64::from(ring_size);
            if ring_slots > u64::from(limits.max_ring_slots) {
                return Err(self.error(
                    table,
                    format!(
                        "the Maglev rings of the services up to {name:?} need {ring_slots} \
                         slots but limits.max_ring_slots is {}",
                        limits.max_ring_slots
                    ),
                ));
            }

            services.push(ServiceConfig {
                name: name.clone(),
                vip,
                port,
                protocol,
                mode,
                snat_ip,
                syn_proxy,
                backends,
                allow,
                deny,
                affinity_timeout,
                health_check,
                on_backend_down: service.on_backend_down.unwrap_or_default(),
            });
        }
        Ok(services)
    }
}

impl Parser<'_> {
    fn health_check(&self, raw: &Spanned<RawHealthCheck>) -> Result<HealthCheck, ConfigError> {
        let check = raw.get_ref();
        let ms = |value: Option<&Spanned<i64>>, what: &str, default: u64| {
            self.int_or::<u64>(value, what, 1..=3_600_000, default)
                .map(Duration::from_millis)
        };
        let interval = ms(check.interval_ms.as_ref(), "health_check.interval_ms", 1000)?;
        let timeout = ms(check.timeout_ms.as_ref(), "health_check.timeout_ms", 500)?;
        if timeout > interval {
            return Err(self.error(
                raw.span(),
                "health_check.timeout_ms must not exceed health_check.interval_ms",
            ));
        }
        let probe = match check.probe {
            RawProbe::Tcp => {
                for (field, name) in [
                    (check.path.as_ref().map(Spanned::span), "path"),
                    (check.status_min.as_ref().map(Spanned::span), "status_min"),
                    (check.status_max.as_ref().map(Spanned::span), "status_max"),
                ] {
                    if let Some(span) = field {
                        return Err(self.error(
                            span,
                            format!("health_check.{name} is only for type = \"http\""),
                        ));
                    }
                }
                HealthProbe::Tcp
            }
            RawProbe::Http => {
                let path = match &check.path {
                    None => "/".to_string(),
                    Some(path) => {
                        let text = path.get_ref();
                        if !text.starts_with('/')
                            || text.len() > 1024
                            || text.chars().any(|c| c.is_whitespace() || c.is_control())
                        {
                            return Err(self.error(
                                path.span(),
                                "health_check.path must start with '/' and contain no \
                                 whitespace or control characters (at most 1024 bytes)",
                            ));
                        }
                        text.clone()
                    }
                };
                let status_min = self.int_or(
                    check.status_min.as_ref(),
                    "health_check.status_min",
                    100..=599,
                    200,
                )?;
                let status_max = self.int_or(
                    check.status_max.as_ref(),
                    "health_check.status_max",
                    100..=599,
                    399,
                )?;
                if status_min > status_max {
                    return Err(self.error(
                        raw.span(),
                        "health_check.status_min must not exceed health_check.status_max",
                    ));
                }
                HealthProbe::Http {
                    path,
                    status_min,
                    status_max,
                }
            }
        };
        Ok(HealthCheck {
            probe,
            port: match &check.port {
                None => None,
                Some(port) => Some(self.int(port, "health_check.port", PORTS)?),
            },
            interval,
            timeout,
            rise: self.int_or(check.rise.as_ref(), "health_check.rise", 1..=100, 2)?,
            fall: self.int_or(check.fall.as_ref(), "health_check.fall", 1..=100, 3)?,
        })
    }
}

fn valid_instance_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
}

/// The kernel's own rule (`dev_valid_name`), plus no control characters, which would
/// at best be truncated on their way through C strings.
fn valid_ifname(name: &str) -> bool {
    (1..=MAX_IFNAME_LEN).contains(&name.len())
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

fn valid_service_name(name: &str) -> bool {
    (1..=MAX_SERVICE_NAME_LEN).contains(&name.chars().count())
        && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/etc/lb/test.toml";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new(PATH))
    }

    /// Asserts that `text` is refused at `line` with a message containing `needle`.
    #[track_caller]
    fn assert_refused(text: &str, line: usize, needle: &str) -> ConfigError {
        let error = parse(text).expect_err("the configuration should be refused");
        assert_eq!(error.path, Path::new(PATH));
        assert_eq!(error.line, line, "wrong line in: {error}");
        assert!(
            error.message.contains(needle),
            "expected {needle:?} in: {error}"
        );
        error
    }

    /// A valid file to derive refusals from; `{}` is replaced by the test's lines,
    /// which start on line 12.
    fn with_service(lines: &str) -> String {
        format!(
            r#"[interfaces]
attach = ["lb-ext"]

[[service]]
name = "web"
vip = "198.18.1.10"
port = 80
snat_ip = "198.19.1.1"

[[service.backend]]
address = "198.19.0.11"
{lines}"#
        )
    }

    const FULL: &str = r#"# Every key, none at its default.
name = "edge-1"

[interfaces]
attach = ["lb-ext", "lb-int"]
xdp_mode = "native"

[control]
socket = "/run/edge/api.sock"

[timeouts]
tcp_syn = 5
tcp_established = 7200
tcp_closing = 20
udp = 30

[limits]
max_flows = 2000
max_services = 8
max_backends = 16

[snat]
port_min = 20000
port_max = 29999

[[service]]
name = "web"
vip = "198.18.1.10"
port = 80
protocol = "tcp"
mode = "full-nat"
snat_ip = "198.19.1.1"

[[service.backend]]
address = "198.19.0.11"
port = 8080
weight = 2

[[service.backend]]
address = "198.19.0.12"

[[service]]
name = "dns"
vip = "198.18.1.10"
port = 53
protocol = "udp"
mode = "dnat"
backend = [
  { address = "198.19.0.21", weight = 0 },
  { address = "198.19.0.22", port = 5353 },
]
"#;

    #[test]
    fn full_config_parses_into_expected_struct() {
        let config = parse(FULL).unwrap();
        let expected = Config {
            name: "edge-1".into(),
            attach: vec!["lb-ext".into(), "lb-int".into()],
            xdp_mode: XdpMode::Native,
            socket: "/run/edge/api.sock".into(),
            metrics: None,
            timeouts: Timeouts {
                tcp_syn: Duration::from_secs(5),
                tcp_established: Duration::from_secs(7200),
                tcp_closing: Duration::from_secs(20),
                udp: Duration::from_secs(30),
            },
            limits: Limits {
                max_flows: 2000,
                max_services: 8,
                max_backends: 16,
                max_ring_slots: lb_common::DEFAULT_MAX_RING_SLOTS,
            },
            snat_port_min: 20000,
            snat_port_max: 29999,
            services: vec![
                ServiceConfig {
                    name: "web".into(),
                    vip: Ipv4Addr::new(198, 18, 1, 10),
                    port: 80,
                    protocol: Protocol::Tcp,
                    mode: Mode::FullNat,
                    snat_ip: Some(Ipv4Addr::new(198, 19, 1, 1)),
                    syn_proxy: false,
                    backends: vec![
                        BackendConfig {
                            address: Ipv4Addr::new(198, 19, 0, 11),
                            port: 8080,
                            weight: 2,
                        },
                        BackendConfig {
                            address: Ipv4Addr::new(198, 19, 0, 12),
                            port: 80,
                            weight: 1,
                        },
                    ],
                    allow: None,
                    deny: DenyAction::Drop,
                    affinity_timeout: None,
                    health_check: None,
                    on_backend_down: BackendDown::Keep,
                },
                ServiceConfig {
                    name: "dns".into(),
                    vip: Ipv4Addr::new(198, 18, 1, 10),
                    port: 53,
                    protocol: Protocol::Udp,
                    mode: Mode::Dnat,
                    snat_ip: None,
                    syn_proxy: false,
                    backends: vec![
                        BackendConfig {
                            address: Ipv4Addr::new(198, 19, 0, 21),
                            port: 53,
                            weight: 0,
                        },
                        BackendConfig {
                            address: Ipv4Addr::new(198, 19, 0, 22),
                            port: 5353,
                            weight: 1,
                        },
                    ],
                    allow: None,
                    deny: DenyAction::Drop,
                    affinity_timeout: None,
                    health_check: None,
                    on_backend_down: BackendDown::Keep,
                },
            ],
            cluster: None,
            origin: Origin::default(),
        };
        assert_eq!(config, expected);
        assert_eq!(
            config.origin.attach,
            [
                Position {
                    line: 5,
                    column: 11
                },
                Position {
                    line: 5,
                    column: 21
                }
            ]
        );
        assert_eq!(config.services[1].protocol.number(), 17);
        assert_eq!(config.services[0].protocol.number(), 6);
    }

    /// A valid file with `lines` among the service's own keys, starting on line 9.
    fn with_service_keys(lines: &str) -> String {
        with_service("").replacen(
            "snat_ip = \"198.19.1.1\"\n",
            &format!("snat_ip = \"198.19.1.1\"\n{lines}\n"),
            1,
        )
    }

    #[test]
    fn operator_keys_parse() {
        let text = with_service_keys(
            "allow = [\"10.0.0.0/8\", \"198.18.0.2\", \"10.0.0.0/8\"]\ndeny = \"reset\"\n\
             affinity_timeout = 30\non_backend_down = \"reset\"\n\
             health_check = { type = \"http\", path = \"/health\", status_min = 200, \
             status_max = 204, interval_ms = 2000, timeout_ms = 1000, rise = 3, fall = 4 }",
        );
        let config = parse(&text).unwrap();
        let service = &config.services[0];
        assert_eq!(
            service.allow.as_deref().unwrap(),
            [
                Prefix {
                    addr: Ipv4Addr::new(10, 0, 0, 0),
                    len: 8
                },
                Prefix {
                    addr: Ipv4Addr::new(198, 18, 0, 2),
                    len: 32
                },
            ]
        );
        assert_eq!(service.deny, DenyAction::Reset);
        assert_eq!(service.affinity_timeout, Some(Duration::from_secs(30)));
        assert_eq!(service.on_backend_down, BackendDown::Reset);
        let check = service.health_check.as_ref().unwrap();
        assert_eq!(
            check.probe,
            HealthProbe::Http {
                path: "/health".into(),
                status_min: 200,
                status_max: 204
            }
        );
        assert_eq!(
            (check.interval, check.timeout),
            (Duration::from_secs(2), Duration::from_secs(1))
        );
        assert_eq!((check.rise, check.fall, check.port), (3, 4, None));
        let tcp = parse(&with_service_keys("health_check = { type = \"tcp\" }")).unwrap();
        let check = tcp.services[0].health_check.clone().unwrap();
        assert_eq!(check.probe, HealthProbe::Tcp);
        assert_eq!(
            (check.interval.as_millis(), check.timeout.as_millis()),
            (1000, 500)
        );
        assert_eq!((check.rise, check.fall), (2, 3));
    }

    #[test]
    fn operator_keys_are_checked() {
        assert_refused(
            &with_service_keys("allow = [\"10.0.0.1/8\"]"),
            9,
            "host bits set (did you mean 10.0.0.0/8?)",
        );
        assert_refused(
            &with_service_keys("allow = [\"10.0.0.0/33\"]"),
            9,
            "invalid prefix length",
        );
        assert_refused(
            &with_service_keys("allow = [\"ten\"]"),
            9,
            "invalid IPv4 prefix",
        );
        assert_refused(
            &with_service_keys("deny = \"reset\""),
            9,
            "sets deny but has no allow list",
        );
        assert_refused(
            &with_service_keys("deny = \"reject\""),
            9,
            "unknown variant",
        );
        assert_refused(
            &with_service_keys("affinity_timeout = 0"),
            9,
            "affinity_timeout must be between 1",
        );
        assert_refused(
            &with_service_keys("on_backend_down = \"drop\""),
            9,
            "unknown variant",
        );
        assert_refused(
            &with_service_keys("health_check = { type = \"tcp\", path = \"/\" }"),
            9,
            "health_check.path is only for type = \"http\"",
        );
        assert_refused(
            &with_service_keys(
                "health_check = { type = \"http\", interval_ms = 100, timeout_ms = 200 }",
            ),
            9,
            "timeout_ms must not exceed",
        );
        assert_refused(
            &with_service_keys(
                "health_check = { type = \"http\", status_min = 500, status_max = 200 }",
            ),
            9,
            "status_min must not exceed",
        );
        assert_refused(
            &with_service_keys("health_check = { type = \"http\", path = \"no-slash\" }"),
            9,
            "must start with '/'",
        );
        assert_refused(
            &with_service_keys("health_check = { type = \"icmp\" }"),
            9,
            "unknown variant",
        );
        assert_refused(
            "[interfaces]\nattach = [\"eth0\"]\n[control]\nmetrics = \"localhost\"\n",
            4,
            "control.metrics must be an address:port",
        );
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let config = parse("[interfaces]\nattach = [\"eth0\"]\n").unwrap();
        assert_eq!(config.name, "lb");
        assert_eq!(config.attach, ["eth0"]);
        assert_eq!(config.xdp_mode, XdpMode::Auto);
        assert_eq!(config.socket, Path::new("/run/lb/lb.sock"));
        assert_eq!(config.timeouts.tcp_syn, Duration::from_secs(30));
        assert_eq!(config.timeouts.tcp_established, Duration::from_secs(3600));
        assert_eq!(config.timeouts.tcp_closing, Duration::from_secs(10));
        assert_eq!(config.timeouts.udp, Duration::from_secs(60));
        assert_eq!(
            config.limits,
            Limits {
                max_flows: 1_048_576,
                max_services: 64,
                max_backends: 4096,
                max_ring_slots: 64 * 2 * 65_537
            }
        );
        assert_eq!((config.snat_port_min, config.snat_port_max), (1024, 65535));
        assert!(config.services.is_empty());
    }

    #[test]
    fn defaults_apply_inside_tables() {
        let text = with_service("[timeouts]\nudp = 5\n[limits]\nmax_flows = 10\n");
        let config = parse(&text).unwrap();
        assert_eq!(config.timeouts.udp, Duration::from_secs(5));
        assert_eq!(config.timeouts.tcp_syn, Duration::from_secs(30));
        assert_eq!(config.limits.max_flows, 10);
        assert_eq!(config.limits.max_services, 64);
        let service = &config.services[0];
        assert_eq!(
            (service.protocol, service.mode),
            (Protocol::Tcp, Mode::FullNat)
        );
        assert_eq!(
            service.backends,
            [BackendConfig {
                address: Ipv4Addr::new(198, 19, 0, 11),
                port: 80,
                weight: 1
            }]
        );
    }

    #[test]
    fn socket_defaults_to_the_instance_name() {
        let config = parse("name = \"edge_2\"\n[interfaces]\nattach = [\"eth0\"]\n").unwrap();
        assert_eq!(config.socket, Path::new("/run/lb/edge_2.sock"));
    }

    #[test]
    fn layout_does_not_make_configs_different() {
        let compact = parse("[interfaces]\nattach = [\"a\", \"b\"]\n").unwrap();
        let spread = parse("\n\n[interfaces]\nattach = [\n  \"a\",\n  \"b\",\n]\n").unwrap();
        assert_eq!(compact, spread);
    }

    #[test]
    fn error_display_is_path_line_column_message() {
        let error = assert_refused("[interfaces]\nattach = [\"eth0\"]\n  bogus = 1\n", 3, "");
        assert_eq!(
            error.to_string(),
            "/etc/lb/test.toml:3:3: unknown field `bogus`, expected `attach` or `xdp_mode`"
        );
    }

    #[test]
    fn load_reads_the_file() {
        let path = std::env::temp_dir().join(format!("lb-config-test-{}.toml", std::process::id()));
        std::fs::write(&path, FULL).unwrap();
        let loaded = Config::load(&path);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(loaded.unwrap(), parse(FULL).unwrap());
    }

    #[test]
    fn unreadable_file_has_no_position() {
        let path = Path::new("/nonexistent/lb.toml");
        let error = Config::load(path).unwrap_err();
        assert_eq!((error.line, error.column), (0, 0));
        assert_eq!(error.path, path);
        assert!(
            error
                .to_string()
                .starts_with("/nonexistent/lb.toml:0:0: cannot read")
        );
    }

    #[test]
    fn toml_syntax_error_is_refused() {
        // Unterminated array: found at the end of the file.
        let error = assert_refused(
            "[interfaces]\nattach = [\"eth0\"\n",
            3,
            "invalid array, expected `]`",
        );
        assert!(!error.to_string().contains('\n'));
        assert_refused("name = \"a\"\nname = \"b\"\n", 2, "duplicate key");
    }

    #[test]
    fn wrong_type_is_refused() {
        assert_refused(
            &with_service("port = \"8080\"\n"),
            12,
            "invalid type: string",
        );
        assert_refused(
            "name = 3\n[interfaces]\nattach = [\"eth0\"]\n",
            1,
            "invalid type",
        );
        assert_refused("[interfaces]\nattach = \"eth0\"\n", 2, "invalid type");
        assert_refused(
            "[interfaces]\nattach = [\"eth0\"]\nxdp_mode = \"fast\"\n",
            3,
            "unknown variant `fast`",
        );
        assert_refused(
            &with_service("[[service]]\nname = \"x\"\nvip = \"198.18.1.300\"\n"),
            14,
            "invalid IPv4 address",
        );
    }

    #[test]
    fn unknown_key_is_refused() {
        assert_refused(
            "colour = \"red\"\n[interfaces]\nattach = [\"eth0\"]\n",
            1,
            "unknown field `colour`",
        );
        assert_refused(&with_service("wieght = 2\n"), 12, "unknown field `wieght`");
        assert_refused(
            &with_service("[snat]\nport = 1\n"),
            13,
            "unknown field `port`",
        );
        assert_refused(
            "[interfaces]\nattach = [\"eth0\"]\n[[services]]\nname = \"web\"\n",
            3,
            "unknown field `services`",
        );
    }

    #[test]
    fn missing_required_key_is_refused() {
        assert_refused("name = \"lb\"\n", 1, "missing field `interfaces`");
        assert_refused(
            "[interfaces]\nxdp_mode = \"auto\"\n",
            1,
            "missing field `attach`",
        );
        assert_refused(
            &with_service("\n[[service]]\nname = \"api\"\nport = 443\n"),
            13,
            "missing field `vip`",
        );
        assert_refused(
            &with_service("[[service.backend]]\nport = 81\n"),
            12,
            "missing field `address`",
        );
    }

    #[test]
    fn duplicate_service_name_is_refused() {
        assert_refused(
            &with_service(
                "[[service]]\nname = \"web\"\nvip = \"198.18.1.11\"\nport = 80\nmode = \"dnat\"\n",
            ),
            13,
            "duplicate service name \"web\" (first defined on line 4)",
        );
    }

    #[test]
    fn duplicate_service_address_is_refused() {
        let error = assert_refused(
            &with_service(
                "[[service]]\nname = \"web2\"\nvip = \"198.18.1.10\"\nport = 80\nmode = \"dnat\"\n",
            ),
            12,
            "listens on 198.18.1.10:80/tcp, as does service \"web\"",
        );
        assert_eq!(error.column, 1);
        // The same address and port over another protocol is another service.
        let text = with_service(
            "[[service]]\nname = \"web-udp\"\nvip = \"198.18.1.10\"\nport = 80\n\
             protocol = \"udp\"\nmode = \"dnat\"\n[[service.backend]]\naddress = \"198.19.0.11\"\n",
        );
        assert_eq!(parse(&text).unwrap().services.len(), 2);
    }

    const CLUSTER: &str = r#"[interfaces]
attach = ["lb-ext", "lb-int"]
[cluster]
cluster_id = 7
key_file = "/etc/lb/cluster.key"
interface = "lb-int"
[[service]]
name = "web"
vip = "198.18.1.10"
port = 80
snat_ip = "198.19.1.1"
"#;

    #[test]
    fn cluster_table_parses_with_defaults() {
        let config = parse(CLUSTER).unwrap();
        assert_eq!(
            config.cluster,
            Some(ClusterConfig {
                cluster_id: 7,
                key_file: "/etc/lb/cluster.key".into(),
                port: DEFAULT_CLUSTER_PORT,
                interface: Some("lb-int".into()),
                router_ip: None,
                controller: None,
                heartbeat_interval: Duration::from_millis(DEFAULT_HEARTBEAT_MS),
                dead_after: DEFAULT_DEAD_AFTER,
            })
        );
        // With a cluster, a service may wait for announced backends.
        assert!(config.services[0].backends.is_empty());
        let full = CLUSTER.replace(
            "interface = \"lb-int\"\n",
            "router_ip = \"198.19.0.1\"\ncontroller = \"198.19.0.13\"\nport = 9000\n\
             heartbeat_ms = 250\ndead_after = 4\n",
        );
        let cluster = parse(&full).unwrap().cluster.unwrap();
        assert_eq!(cluster.router_ip, Some(Ipv4Addr::new(198, 19, 0, 1)));
        assert_eq!(cluster.controller, Some(Ipv4Addr::new(198, 19, 0, 13)));
        assert_eq!(cluster.port, 9000);
        assert_eq!(cluster.heartbeat_interval, Duration::from_millis(250));
        assert_eq!(cluster.dead_after, 4);
        assert_eq!(cluster.interface, None);
    }

    #[test]
    fn cluster_keys_are_checked() {
        let with = |from: &str, to: &str| CLUSTER.replace(from, to);
        assert_refused(
            &with("cluster_id = 7", "cluster_id = 65536"),
            4,
            "cluster.cluster_id must be between 0 and 65535",
        );
        assert_refused(
            &with("interface = \"lb-int\"\n", ""),
            3,
            "needs `interface` (the nodes' segment) or `router_ip`",
        );
        assert_refused(
            &with("interface = \"lb-int\"", "interface = \"a/b\""),
            6,
            "not a valid interface name",
        );
        assert_refused(
            &with("cluster_id = 7", "cluster_id = 7\nheartbeat_ms = 10"),
            5,
            "cluster.heartbeat_ms must be between 50 and 10000",
        );
        assert_refused(
            &with("cluster_id = 7", "cluster_id = 7\ndead_after = 0"),
            5,
            "cluster.dead_after must be between 1 and 20",
        );
        assert_refused(
            &with(
                "cluster_id = 7",
                "cluster_id = 7\ncontroller = \"255.255.255.255\"",
            ),
            5,
            "cluster.controller must be a unicast address",
        );
        assert_refused(
            &with("key_file = \"/etc/lb/cluster.key\"", "key_file = \"\""),
            5,
            "must not be empty",
        );
        assert_refused(
            &with("cluster_id = 7", "cluster_id = 7\nsecret = 1"),
            5,
            "unknown field `secret`",
        );
    }

    #[test]
    fn service_without_backends_is_refused() {
        assert_refused(
            &with_service(
                "[[service]]\nname = \"empty\"\nvip = \"198.18.1.11\"\nport = 80\nmode = \"dnat\"\n",
            ),
            12,
            "service \"empty\" has no backends",
        );
        assert_refused(
            &with_service(
                "[[service]]\nname = \"empty\"\nvip = \"198.18.1.11\"\nport = 80\n\
                 mode = \"dnat\"\nbackend = []\n",
            ),
            12,
            "service \"empty\" has no backends",
        );
    }

    #[test]
    fn service_with_only_zero_weights_is_refused() {
        let text = r#"[interfaces]
attach = ["eth0"]
[[service]]
name = "drained"
vip = "198.18.1.10"
port = 80
mode = "dnat"
[[service.backend]]
address = "198.19.0.11"
weight = 0
[[service.backend]]
address = "198.19.0.12"
weight = 0
"#;
        assert_refused(text, 3, "every backend of service \"drained\" has weight 0");
    }

    #[test]
    fn duplicate_backend_in_a_service_is_refused() {
        // 198.19.0.11 with the default port 80, then again with an explicit 80.
        assert_refused(
            &with_service("[[service.backend]]\naddress = \"198.19.0.11\"\nport = 80\n"),
            12,
            "service \"web\" lists backend 198.19.0.11:80 twice",
        );
        // Another port of the same host is another backend.
        let text = with_service("[[service.backend]]\naddress = \"198.19.0.11\"\nport = 81\n");
        assert_eq!(parse(&text).unwrap().services[0].backends.len(), 2);
    }

    #[test]
    fn backend_shared_by_two_services_is_allowed() {
        let text = with_service(
            "[[service]]\nname = \"web-tls\"\nvip = \"198.18.1.10\"\nport = 443\n\
             snat_ip = \"198.19.1.1\"\n[[service.backend]]\naddress = \"198.19.0.11\"\nport = 80\n",
        );
        assert_eq!(parse(&text).unwrap().services.len(), 2);
    }

    #[test]
    fn full_nat_without_snat_ip_is_refused() {
        let text = r#"[interfaces]
attach = ["eth0"]

[[service]]
name = "web"
vip = "198.18.1.10"
port = 80
[[service.backend]]
address = "198.19.0.11"
"#;
        assert_refused(text, 4, "service \"web\" is full-nat and needs a snat_ip");
    }

    #[test]
    fn dnat_with_snat_ip_is_refused() {
        let text = r#"[interfaces]
attach = ["eth0"]
[[service]]
name = "web"
vip = "198.18.1.10"
port = 80
mode = "dnat"
snat_ip = "198.19.1.1"
[[service.backend]]
address = "198.19.0.11"
"#;
        let error = assert_refused(
            text,
            8,
            "service \"web\" is dnat: snat_ip is only for full-nat",
        );
        assert_eq!(error.column, 11);
    }

    #[test]
    fn snat_ip_equal_to_a_vip_is_refused() {
        // The clash is with a VIP defined further down the file.
        let text = r#"[interfaces]
attach = ["eth0"]
[[service]]
name = "web"
vip = "198.18.1.10"
port = 80
snat_ip = "198.18.1.20"
[[service.backend]]
address = "198.19.0.11"
[[service]]
name = "api"
vip = "198.18.1.20"
port = 443
mode = "dnat"
[[service.backend]]
address = "198.19.0.12"
"#;
        assert_refused(
            text,
            7,
            "snat_ip 198.18.1.20 of service \"web\" is the VIP of service \"api\"",
        );
        assert_refused(
            &text.replace("198.18.1.20\"\n[[", "198.18.1.10\"\n[["),
            7,
            "is the VIP of service \"web\"",
        );
    }

    #[test]
    fn port_zero_is_refused() {
        let text = with_service("").replace("port = 80", "port = 0");
        assert_refused(&text, 7, "port must be between 1 and 65535, got 0");
        assert_refused(
            &with_service("port = 0\n"),
            12,
            "backend port must be between 1 and 65535, got 0",
        );
        assert_refused(
            &with_service("port = 65536\n"),
            12,
            "backend port must be between 1 and 65535, got 65536",
        );
    }

    #[test]
    fn weight_out_of_range_is_refused() {
        assert_refused(
            &with_service("weight = 65536\n"),
            12,
            "weight must be between 0 and 65535",
        );
        assert_refused(
            &with_service("weight = -1\n"),
            12,
            "weight must be between 0 and 65535, got -1",
        );
    }

    #[test]
    fn zero_timeout_is_refused() {
        for key in ["tcp_syn", "tcp_established", "tcp_closing", "udp"] {
            assert_refused(
                &with_service(&format!("[timeouts]\n{key} = 0\n")),
                13,
                &format!("timeouts.{key} must be between 1 and 4294967295, got 0"),
            );
        }
    }

    #[test]
    fn bad_limits_are_refused() {
        assert_refused(
            &with_service("[limits]\nmax_flows = 1\n"),
            13,
            "limits.max_flows must be between 2 and 4294967295, got 1",
        );
        assert_refused(
            &with_service("[limits]\nmax_services = 0\n"),
            13,
            "limits.max_services must be between 1",
        );
        assert_refused(
            &with_service("[limits]\nmax_backends = 4294967296\n"),
            13,
            "limits.max_backends must be between 1 and 4294967295",
        );
    }

    #[test]
    fn bad_snat_port_range_is_refused() {
        assert_refused(
            &with_service("[snat]\nport_min = 3000\nport_max = 2000\n"),
            12,
            "snat.port_min (3000) must not be greater than snat.port_max (2000)",
        );
        // The default port_min (1024) is above this port_max.
        assert_refused(
            &with_service("\n[snat]\nport_max = 1000\n"),
            13,
            "snat.port_min (1024) must not be greater than snat.port_max (1000)",
        );
        assert_refused(
            &with_service("[snat]\nport_min = 0\n"),
            13,
            "snat.port_min must be between 1 and 65535, got 0",
        );
        let config = parse(&with_service("[snat]\nport_min = 7\nport_max = 7\n")).unwrap();
        assert_eq!((config.snat_port_min, config.snat_port_max), (7, 7));
    }

    #[test]
    fn too_many_allow_prefixes_over_all_services_are_refused() {
        let list = |from: u32, count: u32| {
            (from..from + count)
                .map(|i| format!("\"{}\"", Ipv4Addr::from(0x0a00_0000 + i)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let half = lb_common::MAX_ELIGIBILITY_PREFIXES / 2;
        let text = with_service(&format!(
            "\n[[service]]\nname = \"b\"\nvip = \"198.18.1.11\"\nport = 80\nmode = \"dnat\"\n\
             allow = [{}]\nbackend = [{{ address = \"198.19.0.11\" }}]\n",
            list(0, half + 1)
        ))
        .replace(
            "port = 80\nsnat_ip",
            &format!("port = 80\nallow = [{}]\nsnat_ip", list(half + 1, half)),
        );
        assert_refused(
            &text,
            19,
            "hold 16385 prefixes but the data path holds at most 16384",
        );
        // Exactly the capacity (a prefix listed twice counts once) is fine.
        let fits = text.replace("[\"10.0.0.0\", ", "[\"10.0.0.1\", ");
        assert!(parse(&fits).is_ok());
    }

    #[test]
    fn too_many_services_are_refused() {
        let text = with_service(
            "[[service]]\nname = \"b\"\nvip = \"198.18.1.11\"\nport = 80\nmode = \"dnat\"\n\
             backend = [{ address = \"198.19.0.11\" }]\n\
             [[service]]\nname = \"c\"\nvip = \"198.18.1.12\"\nport = 80\nmode = \"dnat\"\n\
             backend = [{ address = \"198.19.0.11\" }]\n\
             [limits]\nmax_services = 2\n",
        );
        assert_refused(&text, 18, "too many services: limits.max_services is 2");
        let allowed = text.replace("max_services = 2", "max_services = 3");
        assert_eq!(parse(&allowed).unwrap().services.len(), 3);
    }

    #[test]
    fn too_many_backends_are_refused() {
        // Five backend entries, but only three distinct address:port pairs.
        let text = r#"[interfaces]
attach = ["eth0"]
[limits]
max_backends = 2
[[service]]
name = "a"
vip = "198.18.1.10"
port = 80
mode = "dnat"
backend = [{ address = "198.19.0.11" }, { address = "198.19.0.12" }]
[[service]]
name = "b"
vip = "198.18.1.11"
port = 80
mode = "dnat"
backend = [
  { address = "198.19.0.11" },
  { address = "198.19.0.12" },
  { address = "198.19.0.13" },
]
"#;
        let error = assert_refused(
            text,
            19,
            "too many backends: limits.max_backends is 2 distinct address:port pairs",
        );
        assert_eq!(error.column, 3);
        let allowed = text.replace("max_backends = 2", "max_backends = 3");
        assert_eq!(parse(&allowed).unwrap().services.len(), 2);
    }

    #[test]
    fn empty_attach_is_refused() {
        assert_refused(
            "[interfaces]\n\nattach = []\n",
            3,
            "interfaces.attach must list at least one interface",
        );
    }

    #[test]
    fn duplicate_interface_is_refused() {
        let error = assert_refused(
            "[interfaces]\nattach = [\n  \"eth0\",\n  \"eth1\",\n  \"eth0\",\n]\n",
            5,
            "interface \"eth0\" is listed twice",
        );
        assert_eq!(error.column, 3);
    }

    #[test]
    fn invalid_interface_name_is_refused() {
        for name in [
            "",
            "a/b",
            "a b",
            "eth0:1",
            ".",
            "..",
            "tab\\t",
            "sixteen-chars-xx",
        ] {
            assert_refused(
                &format!("[interfaces]\nattach = [\"eth0\",\n\"{name}\"]\n"),
                3,
                "invalid interface name",
            );
        }
        let longest = parse("[interfaces]\nattach = [\"fifteen-chars-x\"]\n").unwrap();
        assert_eq!(longest.attach, ["fifteen-chars-x"]);
    }

    #[test]
    fn too_many_interfaces_are_refused() {
        let names: Vec<String> = (0..=64).map(|i| format!("\"veth{i}\",\n")).collect();
        assert_refused(
            &format!("[interfaces]\nattach = [\n{}]\n", names.concat()),
            67,
            "more than 64 interfaces",
        );
    }

    #[test]
    fn invalid_instance_name_is_refused() {
        let long = "x".repeat(33);
        for name in ["", "a.b", "lb/x", "ünï", long.as_str()] {
            assert_refused(
                &format!("\nname = \"{name}\"\n[interfaces]\nattach = [\"eth0\"]\n"),
                2,
                "invalid instance name",
            );
        }
        let longest = "x".repeat(32);
        let text = format!("name = \"{longest}\"\n[interfaces]\nattach = [\"eth0\"]\n");
        assert_eq!(parse(&text).unwrap().name, longest);
    }

    #[test]
    fn invalid_service_name_is_refused() {
        let text = with_service("").replace("name = \"web\"", "name = \"my web\"");
        assert_refused(&text, 5, "invalid service name \"my web\"");
        let text = with_service("").replace("name = \"web\"", "name = \"\"");
        assert_refused(&text, 5, "invalid service name \"\"");
    }

    #[test]
    fn non_unicast_address_is_refused() {
        let text = with_service("").replace("198.18.1.10", "0.0.0.0");
        assert_refused(&text, 6, "vip must be a unicast address, got 0.0.0.0");
        let text = with_service("").replace("198.19.1.1", "224.0.0.1");
        assert_refused(&text, 8, "snat_ip must be a unicast address");
        let text = with_service("").replace("198.19.0.11", "255.255.255.255");
        assert_refused(&text, 11, "backend address must be a unicast address");
    }

    #[test]
    fn bad_socket_is_refused() {
        let base = "[interfaces]\nattach = [\"eth0\"]\n[control]\n";
        assert_refused(
            &format!("{base}socket = \"\"\n"),
            4,
            "control.socket must not be empty",
        );
        let long = format!("/run/{}", "s".repeat(103));
        assert_refused(
            &format!("{base}socket = \"{long}\"\n"),
            4,
            "control.socket is 108 bytes long",
        );
        let longest = format!("/run/{}", "s".repeat(102));
        let config = parse(&format!("{base}socket = \"{longest}\"\n")).unwrap();
        assert_eq!(config.socket, Path::new(&longest));
    }

    #[test]
    fn check_interfaces_points_at_the_missing_one() {
        let text = "[interfaces]\nattach = [\n  \"lb-ext\",\n  \"lb-int\",\n]\n";
        let config = parse(text).unwrap();
        assert_eq!(config.check_interfaces(|_| true), Ok(()));
        let error = config
            .check_interfaces(|name| name != "lb-int")
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "/etc/lb/test.toml:4:3: interface \"lb-int\" does not exist"
        );
        let error = config.check_interfaces(|_| false).unwrap_err();
        assert_eq!((error.line, error.column), (3, 3));
    }

    #[test]
    fn columns_count_characters() {
        let text = "# é\nname = \"é\" # ü\n";
        assert_eq!(position(text, 0), Position { line: 1, column: 1 });
        assert_eq!(
            position(text, text.find("name").unwrap()),
            Position { line: 2, column: 1 }
        );
        assert_eq!(
            position(text, text.find('#').unwrap()),
            Position { line: 1, column: 1 }
        );
        let comment = text.rfind('#').unwrap();
        assert_eq!(
            position(text, comment),
            Position {
                line: 2,
                column: 12
            }
        );
        // Past the end, or inside a character: clamped, never a panic.
        assert_eq!(position(text, 1000).line, 3);
        assert_eq!(position(text, 3), Position { line: 1, column: 3 });
        assert_eq!(
            assert_refused("[interfaces]\nattach = [\"é\", \"é\"]\n", 2, "listed twice").column,
            16
        );
    }
}
