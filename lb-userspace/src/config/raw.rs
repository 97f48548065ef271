//! The file as written, with positions: strict serde structs (`deny_unknown_fields`)
//! whose values keep their spans, so validation can point at them. Integers are read as
//! i64 and range-checked in [`super::validate`], so an out-of-range value gets a message
//! in the file's terms rather than Rust's types.

use std::net::Ipv4Addr;

use serde::Deserialize;
use toml::Spanned;

use crate::domain::{BackendDown, DenyAction, Mode, Protocol, SynCookies, UnknownSegment, XdpMode};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) name: Option<Spanned<String>>,
    pub(super) interfaces: RawInterfaces,
    pub(super) control: Option<RawControl>,
    pub(super) timeouts: Option<RawTimeouts>,
    pub(super) limits: Option<RawLimits>,
    pub(super) snat: Option<Spanned<RawSnat>>,
    #[serde(default)]
    pub(super) service: Vec<Spanned<RawService>>,
    pub(super) cluster: Option<Spanned<RawCluster>>,
    pub(super) bgp: Option<Spanned<RawBgp>>,
    pub(super) peers: Option<Spanned<RawPeers>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBgp {
    pub(super) control_socket: Spanned<String>,
    pub(super) routes_file: Spanned<String>,
    #[serde(default)]
    pub(super) return_routes: Vec<Spanned<String>>,
    pub(super) withdraw_delay_ms: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) owned_vip: Vec<Spanned<RawOwnedVip>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOwnedVip {
    pub(super) vip: Spanned<String>,
    pub(super) owner: Spanned<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPeers {
    pub(super) node_id: Spanned<i64>,
    pub(super) cluster_id: Spanned<i64>,
    pub(super) key_file: Spanned<String>,
    pub(super) listen: Spanned<String>,
    #[serde(default)]
    pub(super) peer: Vec<Spanned<RawPeer>>,
    pub(super) announce: Option<bool>,
    pub(super) join_timeout_ms: Option<Spanned<i64>>,
    pub(super) dead_after_ms: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPeer {
    pub(super) node_id: Spanned<i64>,
    pub(super) address: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub(super) cluster_id: Spanned<i64>,
    pub(super) key_file: Spanned<String>,
    pub(super) port: Option<Spanned<i64>>,
    pub(super) interface: Option<Spanned<String>>,
    pub(super) router_ip: Option<Spanned<Ipv4Addr>>,
    pub(super) controller: Option<Spanned<Ipv4Addr>>,
    pub(super) heartbeat_ms: Option<Spanned<i64>>,
    pub(super) dead_after: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInterfaces {
    pub(super) attach: Spanned<Vec<Spanned<String>>>,
    pub(super) xdp_mode: Option<XdpMode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawControl {
    pub(super) socket: Option<Spanned<String>>,
    pub(super) metrics: Option<Spanned<String>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    pub(super) tcp_syn: Option<Spanned<i64>>,
    pub(super) tcp_established: Option<Spanned<i64>>,
    pub(super) tcp_half_closed: Option<Spanned<i64>>,
    pub(super) tcp_closing: Option<Spanned<i64>>,
    pub(super) udp: Option<Spanned<i64>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) max_flows: Option<Spanned<i64>>,
    pub(super) max_services: Option<Spanned<i64>>,
    pub(super) max_backends: Option<Spanned<i64>>,
    pub(super) max_ring_slots: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSnat {
    pub(super) port_min: Option<Spanned<i64>>,
    pub(super) port_max: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) name: Spanned<String>,
    pub(super) vip: Spanned<Ipv4Addr>,
    pub(super) port: Spanned<i64>,
    pub(super) protocol: Option<Protocol>,
    pub(super) mode: Option<Mode>,
    pub(super) snat_ip: Option<Spanned<Ipv4Addr>>,
    pub(super) snat_ips: Option<Spanned<Vec<Spanned<Ipv4Addr>>>>,
    pub(super) allow: Option<Vec<Spanned<String>>>,
    pub(super) deny: Option<Spanned<DenyAction>>,
    pub(super) affinity_timeout: Option<Spanned<i64>>,
    pub(super) health_check: Option<Spanned<RawHealthCheck>>,
    pub(super) on_backend_down: Option<BackendDown>,
    pub(super) unknown_segment: Option<Spanned<UnknownSegment>>,
    pub(super) syn_proxy: Option<Spanned<bool>>,
    pub(super) syn_cookies: Option<Spanned<SynCookies>>,
    pub(super) syn_cookie_threshold: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) backend: Vec<Spanned<RawBackend>>,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawProbe {
    Tcp,
    Http,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealthCheck {
    #[serde(rename = "type")]
    pub(super) probe: RawProbe,
    pub(super) port: Option<Spanned<i64>>,
    pub(super) path: Option<Spanned<String>>,
    pub(super) status_min: Option<Spanned<i64>>,
    pub(super) status_max: Option<Spanned<i64>>,
    pub(super) interval_ms: Option<Spanned<i64>>,
    pub(super) timeout_ms: Option<Spanned<i64>>,
    pub(super) rise: Option<Spanned<i64>>,
    pub(super) fall: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub(super) address: Spanned<Ipv4Addr>,
    pub(super) port: Option<Spanned<i64>>,
    pub(super) weight: Option<Spanned<i64>>,
}
