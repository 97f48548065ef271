//! The balancer's TOML configuration: parsing and validation.
//!
//! Parsing is strict (unknown keys, wrong types and inconsistent values are refused) and
//! every error names the file, line and column of the offending value, so an operator
//! can fix a config before it touches the data path. The validated result is plain data
//! with std and [`crate::domain`] types; source positions are kept privately for later
//! checks against the running system ([`Config::check_interfaces`]).
//!
//! [`raw`] is the file as written (serde structs with spans), [`validate`] turns it into
//! a [`Config`].

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::domain::{
    BackendDown, DenyAction, HealthCheck, Limits, Mode, Prefix, Protocol, SynCookies, Timeouts,
    UnknownSegment, XdpMode,
};

mod raw;
mod validate;

#[cfg(test)]
mod tests;

/// Instance name used when the file sets none.
pub const DEFAULT_NAME: &str = "lb";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    pub address: Ipv4Addr,
    pub port: u16,
    /// 0..=65535; 0 keeps the backend configured but gives it no new flows.
    pub weight: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    pub name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    pub mode: Mode,
    /// Full-NAT source addresses (`snat_ip`, or `snat_ips`): 1 to `MAX_SNAT_IPS` when
    /// `mode` is [`Mode::FullNat`], none in DNAT mode. New flows spread over them.
    pub snat_ips: Vec<Ipv4Addr>,
    /// The balancer answers SYNs with SYN cookies and opens the server side itself
    /// (TCP only).
    pub syn_proxy: bool,
    /// Automatic SYN cookies (always [`SynCookies::Off`] for UDP and with `syn_proxy`,
    /// which answers every SYN with a cookie).
    pub syn_cookies: SynCookies,
    /// Half-open connections above which automatic SYN cookies switch on.
    pub syn_cookie_threshold: u32,
    /// Never empty, and at least one has a weight above 0.
    pub backends: Vec<BackendConfig>,
    /// Some: authorization required, only these client prefixes may open flows.
    pub allow: Option<Vec<Prefix>>,
    pub deny: DenyAction,
    /// Some: client-IP session affinity with this idle timeout.
    pub affinity_timeout: Option<Duration>,
    pub health_check: Option<HealthCheck>,
    pub on_backend_down: BackendDown,
    /// What a TCP segment without a flow entry that cannot open one gets (always
    /// [`UnknownSegment::Drop`] for UDP).
    pub unknown_segment: UnknownSegment,
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
    /// Flow sharing with other balancer instances (`[peers]`, docs/scale-out.md);
    /// `None`: a single instance.
    pub peers: Option<PeersConfig>,
    /// The instance announces its routes through BIRD (`[bgp]`, docs/scale-out.md).
    pub bgp: Option<BgpConfig>,
    origin: Origin,
}

/// This instance among its peers (docs/scale-out.md, "Peers").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeersConfig {
    /// 1-65535, unique in the cluster; written into every flow this instance creates.
    pub node_id: u16,
    pub cluster_id: u16,
    /// File holding the peers' HMAC key; read when `lb run` starts.
    pub key_file: PathBuf,
    /// Where the peers connect to this instance.
    pub listen: std::net::SocketAddrV4,
    /// Every other instance that may exist, up or not.
    pub members: Vec<PeerConfig>,
    /// Off: no flow is announced (a test switch that shows what sharing prevents).
    pub announce: bool,
    /// How long a starting instance waits for unreachable peers before it is ready.
    pub join_timeout: Duration,
    /// Silence after which a peer is down.
    pub dead_after: Duration,
}

/// One other instance of `[peers]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    pub node_id: u16,
    pub address: std::net::SocketAddrV4,
}

/// Default of `bgp.withdraw_delay_ms`: long enough for the routers to act on a
/// withdrawal (BGP update, FIB change) before the data path goes.
pub const DEFAULT_WITHDRAW_DELAY_MS: u64 = 2000;

/// How the instance tells BIRD what to announce (docs/scale-out.md, "Routes").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BgpConfig {
    /// BIRD's control socket (`bird -s`).
    pub control_socket: PathBuf,
    /// The file `lb` writes and the instance's `bird.conf` includes; absolute.
    pub routes_file: PathBuf,
    /// Routes back to the clients, announced to the back router (DNAT replies).
    pub return_routes: Vec<Prefix>,
    /// After withdrawing on SIGTERM, how long to keep forwarding before exiting.
    pub withdraw_delay: Duration,
    /// VIPs with one owner (`[[bgp.owned_vip]]`): announced as primary by their owner
    /// and as backup by every other instance, and moved with `lb vip move`
    /// (docs/scale-out.md, "Moving a VIP"). Every other VIP is announced by all (ECMP).
    pub owned_vips: std::collections::BTreeMap<Ipv4Addr, u16>,
}

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
    /// Every SNAT address of the configured services, once: what this instance owns,
    /// announces (`[bgp]`) and tells its peers about (`[peers]`).
    pub fn snat_addresses(services: &[ServiceConfig]) -> std::collections::BTreeSet<Ipv4Addr> {
        services
            .iter()
            .flat_map(|s| s.snat_ips.iter().copied())
            .collect()
    }

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
        validate::parse(text, path)
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

impl Config {
    /// An error about `bgp.control_socket` (found when `lb run` starts), at its line.
    pub fn bgp_control_socket_error(&self, message: impl Into<String>) -> ConfigError {
        self.origin_error(self.origin.bgp_control_socket, message)
    }

    /// An error about `bgp.routes_file` (found when `lb run` starts), at its line.
    pub fn bgp_routes_file_error(&self, message: impl Into<String>) -> ConfigError {
        self.origin_error(self.origin.bgp_routes_file, message)
    }

    fn origin_error(&self, at: Position, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: self.origin.path.clone(),
            line: at.line,
            column: at.column,
            message: message.into(),
        }
    }

    /// The peers' key (`peers.key_file`, read with `read`), at least
    /// [`crate::cluster::frame::MIN_KEY_LEN`] bytes without trailing whitespace. A
    /// missing or short key is an error at the line of `key_file`.
    pub fn peers_key(
        &self,
        read: impl Fn(&Path) -> std::io::Result<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>, ConfigError> {
        let Some(peers) = &self.peers else {
            return Ok(None);
        };
        let at = self.origin.peers_key_file.unwrap_or_default();
        let error = |message: String| ConfigError {
            path: self.origin.path.clone(),
            line: at.line,
            column: at.column,
            message,
        };
        let bytes = read(&peers.key_file).map_err(|e| {
            error(format!(
                "peers.key_file: cannot read {}: {e}",
                peers.key_file.display()
            ))
        })?;
        crate::cluster::frame::key_bytes(&bytes)
            .map(|key| Some(key.to_vec()))
            .map_err(|e| error(format!("peers.key_file {}: {e}", peers.key_file.display())))
    }
}

/// Where the configuration came from, for errors found after parsing.
#[derive(Clone, Debug, Default)]
struct Origin {
    path: PathBuf,
    /// Position of each `attach` entry.
    attach: Vec<Position>,
    /// Position of `bgp.control_socket` and `bgp.routes_file`.
    bgp_control_socket: Position,
    bgp_routes_file: Position,
    /// Position of `peers.key_file`, with `[peers]`.
    peers_key_file: Option<Position>,
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
