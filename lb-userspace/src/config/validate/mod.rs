//! From the file as written ([`super::raw`]) to a [`Config`]: ranges, names,
//! addresses, consistency between values and the data path's capacities. Every refusal
//! is a [`ConfigError`] at the position of the value it is about.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::raw::{RawBgp, RawCluster, RawConfig};
use super::{
    BgpConfig, ClusterConfig, Config, ConfigError, DEFAULT_NAME, DEFAULT_WITHDRAW_DELAY_MS, Origin,
    PeersConfig, Position, position,
};
use crate::domain::{
    self, DEFAULT_CLUSTER_PORT, DEFAULT_DEAD_AFTER, DEFAULT_HEARTBEAT_MS, DEFAULT_SNAT_PORT_MAX,
    DEFAULT_SNAT_PORT_MIN, Limits, PORTS, Timeouts,
};

mod peers;
mod service;

/// The instance name becomes a bpffs directory and part of the socket path.
const MAX_NAME_LEN: usize = 32;
/// IFNAMSIZ (16) less the terminating NUL.
const MAX_IFNAME_LEN: usize = 15;
/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH_LEN: usize = 107;
/// Idle timeouts are bounded so that their nanosecond value fits the data path's u64.
const MAX_TIMEOUT_SECS: i64 = u32::MAX as i64;
const COUNTS: RangeInclusive<i64> = 1..=u32::MAX as i64;

/// Parses and validates `text`; `path` is only used in error messages.
pub(super) fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
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
        domain::in_range(what, *value.get_ref(), range)
            .map_err(|message| self.error(value.span(), message))
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
        if !domain::is_unicast(ip) {
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
            tcp_half_closed: self.timeout(
                raw_timeouts.tcp_half_closed.as_ref(),
                "timeouts.tcp_half_closed",
                defaults.tcp_half_closed,
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
        let (bgp, bgp_control_socket, bgp_routes_file) = match &raw.bgp {
            None => (None, Position::default(), Position::default()),
            Some(bgp) => {
                let raw_bgp = bgp.get_ref();
                (
                    Some(self.bgp(raw_bgp)?),
                    position(self.text, raw_bgp.control_socket.span().start),
                    position(self.text, raw_bgp.routes_file.span().start),
                )
            }
        };
        let (peers, peers_key_file) = match &raw.peers {
            None => (None, None),
            Some(peers) => {
                let (config, at) = self.peers(peers)?;
                (Some(config), Some(at))
            }
        };

        if let (Some(bgp), Some(raw_bgp)) = (&bgp, &raw.bgp) {
            self.owned_vips(bgp, raw_bgp.get_ref(), &services, peers.as_ref())?;
        }

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
            peers,
            bgp,
            origin: Origin {
                path: self.path.to_owned(),
                attach: attach_positions,
                bgp_control_socket,
                bgp_routes_file,
                peers_key_file,
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
}

impl Parser<'_> {
    /// An owned VIP is a service's VIP, owned by this instance or one of its peers.
    fn owned_vips(
        &self,
        bgp: &BgpConfig,
        raw: &RawBgp,
        services: &[super::ServiceConfig],
        peers: Option<&PeersConfig>,
    ) -> Result<(), ConfigError> {
        for entry in &raw.owned_vip {
            let owned = entry.get_ref();
            let Ok(vip) = owned.vip.get_ref().parse::<Ipv4Addr>() else {
                continue;
            };
            if !services.iter().any(|s| s.vip == vip) {
                return Err(self.error(
                    owned.vip.span(),
                    format!("bgp.owned_vip: {vip} is the VIP of no service"),
                ));
            }
            let Some(peers) = peers else {
                return Err(self.error(
                    entry.span(),
                    "bgp.owned_vip needs [peers]: the owner is a node id of the cluster",
                ));
            };
            let owner = bgp.owned_vips[&vip];
            if owner != peers.node_id && !peers.members.iter().any(|m| m.node_id == owner) {
                return Err(self.error(
                    owned.owner.span(),
                    format!(
                        "bgp.owned_vip.owner {owner} is neither this instance (peers.node_id \
                         {}) nor one of its [[peers.peer]]",
                        peers.node_id
                    ),
                ));
            }
        }
        Ok(())
    }

    fn bgp(&self, bgp: &RawBgp) -> Result<BgpConfig, ConfigError> {
        let socket = &bgp.control_socket;
        if socket.get_ref().is_empty() {
            return Err(self.error(socket.span(), "bgp.control_socket must not be empty"));
        }
        if socket.get_ref().len() > MAX_SOCKET_PATH_LEN {
            return Err(self.error(
                socket.span(),
                format!(
                    "bgp.control_socket is {} bytes long, more than a Unix socket path can \
                     hold ({MAX_SOCKET_PATH_LEN})",
                    socket.get_ref().len()
                ),
            ));
        }
        let routes_file = &bgp.routes_file;
        // BIRD includes the file by the same path from its own working directory.
        if !routes_file.get_ref().starts_with('/') || routes_file.get_ref().ends_with('/') {
            return Err(self.error(
                routes_file.span(),
                format!(
                    "bgp.routes_file must be an absolute file path (BIRD includes it by that \
                     path), got {:?}",
                    routes_file.get_ref()
                ),
            ));
        }
        let mut return_routes: Vec<domain::Prefix> = Vec::new();
        for entry in &bgp.return_routes {
            let prefix: domain::Prefix = entry
                .get_ref()
                .parse()
                .map_err(|e: String| self.error(entry.span(), format!("bgp.return_routes: {e}")))?;
            if return_routes.contains(&prefix) {
                return Err(self.error(
                    entry.span(),
                    format!("bgp.return_routes lists {prefix} twice"),
                ));
            }
            return_routes.push(prefix);
        }
        let withdraw_delay_ms: u64 = self.int_or(
            bgp.withdraw_delay_ms.as_ref(),
            "bgp.withdraw_delay_ms",
            0..=60_000,
            DEFAULT_WITHDRAW_DELAY_MS,
        )?;
        let mut owned_vips = std::collections::BTreeMap::new();
        for entry in &bgp.owned_vip {
            let owned = entry.get_ref();
            let vip: Ipv4Addr = owned.vip.get_ref().parse().map_err(|_| {
                self.error(
                    owned.vip.span(),
                    format!(
                        "bgp.owned_vip.vip: {:?} is not an IPv4 address",
                        owned.vip.get_ref()
                    ),
                )
            })?;
            let owner: u16 = self.int(&owned.owner, "bgp.owned_vip.owner", 1..=65535)?;
            if owned_vips.insert(vip, owner).is_some() {
                return Err(
                    self.error(owned.vip.span(), format!("bgp.owned_vip lists {vip} twice"))
                );
            }
        }
        Ok(BgpConfig {
            control_socket: PathBuf::from(socket.get_ref()),
            routes_file: PathBuf::from(routes_file.get_ref()),
            return_routes,
            owned_vips,
            withdraw_delay: Duration::from_millis(withdraw_delay_ms),
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
