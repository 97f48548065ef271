//! The replies of the operator API, one type each: the daemon answers with them, the CLI
//! reads the same types back to render them (or print them with `--json`). The JSON
//! shape of each is pinned by the tests at the end of this file.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Request;
use crate::domain::{Mode, Protocol};
pub use crate::{
    cluster::{
        router::{AnnouncedEndpoint, NodeState, RouterCounters},
        wire::Health as NodeHealth,
    },
    domain::AttachedMode,
    flows::{FlowRow, ProxyColumns},
    peers::membership::{Outgoing as PeerOutgoing, PeerCounters, PeerRow, PeerState, PeersStatus},
    peers::wire::NodeState as PeerNodeState,
    services::ApplySummary,
};

/// The answer to each request, as the daemon sends it (the variant's own shape: no tag).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Reply {
    Status(Status),
    Stats(Stats),
    /// One row per connection, oldest first.
    Flows(Vec<FlowRow>),
    /// `reload`: what applying the re-read config changed.
    Reloaded(ApplySummary),
    Backends(Vec<BackendRow>),
    /// Oldest first.
    Sessions(Vec<SessionRow>),
    Nodes(Nodes),
    Peers(PeersStatus),
    /// One row per owned VIP.
    Vips(Vec<crate::peers::moves::VipRow>),
    /// A backend change (drain, undrain, weight, add, remove): what applying it changed.
    Applied(ApplySummary),
    HandedOver(HandedOver),
    /// `drain`: the announcements now.
    Drained(BgpStatus),
}

impl Reply {
    /// Reads the `result` of an answer to `request`: the request says which reply it is.
    pub fn decode(request: &Request, result: Value) -> serde_json::Result<Reply> {
        use serde_json::from_value;
        Ok(match request {
            Request::Status => Reply::Status(from_value(result)?),
            Request::Stats => Reply::Stats(from_value(result)?),
            Request::Flows => Reply::Flows(from_value(result)?),
            Request::Reload => Reply::Reloaded(from_value(result)?),
            Request::Backends => Reply::Backends(from_value(result)?),
            Request::Sessions => Reply::Sessions(from_value(result)?),
            Request::Nodes => Reply::Nodes(from_value(result)?),
            Request::Peers => Reply::Peers(from_value(result)?),
            Request::Vips | Request::VipMove { .. } => Reply::Vips(from_value(result)?),
            Request::BackendDrain { .. }
            | Request::BackendUndrain { .. }
            | Request::BackendWeight { .. }
            | Request::BackendAdd { .. }
            | Request::BackendRemove { .. } => Reply::Applied(from_value(result)?),
            Request::Handover => Reply::HandedOver(from_value(result)?),
            Request::Drain => Reply::Drained(from_value(result)?),
        })
    }
}

/// `status`: the daemon, its interfaces and a few totals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The config's `name` (also the pin directory's).
    pub name: String,
    /// Path of the config file.
    pub config: String,
    pub pid: u32,
    pub uptime_secs: u64,
    /// 1 at start, one more per successful reload.
    pub generation: u64,
    /// Outcome of the last reload (`None`: no reload yet).
    pub last_reload: Option<String>,
    pub interfaces: Vec<InterfaceStatus>,
    pub pin_dir: String,
    /// Configured services.
    pub services: usize,
    /// Connections in the flow table (client→server entries).
    pub connections: u64,
    /// Flow entries removed as idle since the start.
    pub flows_expired: u64,
    /// Whether the maps were taken over from an earlier daemon.
    pub adopted: bool,
    /// Address of the Prometheus endpoint, if any.
    pub metrics: Option<SocketAddr>,
    /// The routes BIRD announces, with `[bgp]`.
    #[serde(default)]
    pub bgp: Option<BgpStatus>,
}

/// What BIRD announces for the instance (docs/scale-out.md, "Routes").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpStatus {
    /// "announcing" (ready), "draining" (`lb drain`, SIGTERM: nothing announced) or
    /// "not-ready" (not synced with the peers yet: nothing announced).
    pub state: String,
    /// Routes the instance wants announced.
    pub routes_wanted: usize,
    /// Routes BIRD last accepted (`None`: not once since the start).
    pub routes_announced: Option<usize>,
    /// BIRD has the wanted routes.
    pub in_sync: bool,
    /// Successful and failed `configure` runs since the start.
    pub configures: u64,
    pub configure_failures: u64,
    /// The last failure while BIRD does not have the wanted routes.
    pub last_error: Option<String>,
}

/// An interface the program is attached to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub name: String,
    pub ifindex: u32,
    pub mode: AttachedMode,
}

/// `stats`: the data path's global verdict counters, then per service and backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Packets per verdict, by counter name.
    pub counters: std::collections::BTreeMap<String, u64>,
    pub services: Vec<ServiceStats>,
}

/// Counters of one service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStats {
    pub name: String,
    pub vip: SocketAddrV4,
    pub protocol: Protocol,
    pub mode: Mode,
    /// Full-NAT source addresses new flows spread over (none in DNAT mode).
    #[serde(default)]
    pub snat_ips: Vec<std::net::Ipv4Addr>,
    /// Id in the data path's tables.
    pub id: u32,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub drops: u64,
    /// New flows refused by the allow-list (also counted in `drops`).
    pub denied: u64,
    #[serde(default)]
    pub syn_cookies: SynCookieStats,
    pub backends: Vec<BackendStats>,
}

/// SYN cookies of one service (docs/architecture.md, "SYN floods").
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynCookieStats {
    /// "always" (`syn_proxy`), "disabled" (`syn_cookies = "off"`, UDP), or the
    /// automatic mode: "off", "on", "draining" (off, cookie ACKs still accepted).
    pub mode: String,
    /// SYNs answered with a cookie.
    pub sent: u64,
    /// Times automatic SYN cookies switched on, and back off.
    pub switched_on: u64,
    pub switched_off: u64,
    /// Half-open connections at the last GC tick, plus while on the cookies sent during
    /// the last `tcp_syn` that no valid ACK answered: what the threshold is compared to.
    pub pressure: u64,
}

/// Counters of one backend of a service (configured backends only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStats {
    pub address: SocketAddrV4,
    pub id: u32,
    /// Configured weight.
    pub weight: u32,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

/// `backends`: one row per backend of each service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendRow {
    pub service: String,
    pub backend: SocketAddrV4,
    pub id: u32,
    /// Configured weight, or the operator's override.
    pub weight: u32,
    /// Weight in the ring now (0 while drained or down).
    pub effective_weight: u32,
    pub source: BackendSource,
    pub state: BackendState,
    pub health: BackendHealth,
    /// Last failed health probe, if any.
    pub last_error: Option<String>,
    /// Connections to this backend in the flow table.
    pub active_flows: u64,
    pub new_flows: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// Where a backend comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendSource {
    /// The config file (or `lb backend add`).
    Config,
    /// A cluster node's announcement.
    Announced,
}

/// Whether a backend takes new flows: the operator's drain, health checks, or (for an
/// announced backend) the router's view of its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendState {
    Active,
    Draining,
    Down,
}

impl From<NodeState> for BackendState {
    fn from(state: NodeState) -> Self {
        match state {
            NodeState::Active => Self::Active,
            NodeState::Draining => Self::Draining,
            NodeState::Down => Self::Down,
        }
    }
}

/// A backend's health: its health check's verdict, or an announced node's own report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendHealth {
    /// The service has no health check.
    Unchecked,
    Up,
    Down,
    /// A node that has not reported its health.
    Unknown,
}

impl From<NodeHealth> for BackendHealth {
    fn from(health: NodeHealth) -> Self {
        match health {
            NodeHealth::Unknown => Self::Unknown,
            NodeHealth::Up => Self::Up,
            NodeHealth::Down => Self::Down,
        }
    }
}

/// `sessions`: one client-IP affinity session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRow {
    pub client: Ipv4Addr,
    /// `None`: the service is gone (the session expires soon).
    pub service: Option<String>,
    /// `None`: the backend is gone.
    pub backend: Option<SocketAddrV4>,
    pub backend_id: u32,
    pub age_secs: u64,
    pub idle_secs: u64,
    /// `service-id/client`: names the session's map entry.
    pub handle: String,
}

/// `nodes`: the cluster router's settings, health-and-load table and counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nodes {
    pub cluster_id: u16,
    pub router: Ipv4Addr,
    /// UDP port of the protocol.
    pub port: u16,
    /// The management node, once there is one.
    pub management: Option<Ipv4Addr>,
    /// Whether the management node is configured (not elected).
    pub controller_configured: bool,
    pub heartbeat_ms: u64,
    /// Heartbeat intervals of silence after which a node is down.
    pub dead_after: u32,
    /// Changes with every change of the table.
    pub table_generation: u64,
    pub counters: RouterCounters,
    pub endpoints: Vec<AnnouncedEndpoint>,
}

/// `handover`: the daemon exits without detaching once this is sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandedOver {
    pub handed_over: bool,
}

/// The name an enum value has in the replies (its serde name), so the text tables, the
/// metrics' labels and `--json` agree.
pub fn serde_name(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(name)) => name,
        _ => "-".into(),
    }
}

#[cfg(test)]
pub(crate) mod samples;
#[cfg(test)]
mod tests;
