//! `lb run`: the controller daemon. Loads the XDP program, programs the tables from the
//! config, attaches, serves the operator API, expires idle flows, reloads on request or
//! SIGHUP, and detaches cleanly on SIGTERM/SIGINT.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
};

use crate::{
    api::{self, Answer, MAX_REQUEST_BYTES, Reply, Request},
    cluster::{
        self,
        router::{AnnouncedEndpoint, KnownService, RouterEngine, RouterSettings},
    },
    config::{BackendConfig, ClusterConfig, Config},
    dataplane::{self, Dataplane, PinnedState},
    domain::{BackendAddr, BackendDown, HealthCheck, XdpMode},
    flows,
    health::{self, Health},
    metrics::{
        BackendLabels, EventLabels, PeerLabels, QuantileLabels, ReasonLabels, Scrape,
        ServiceLabels, StateLabels,
    },
    services::{ApplySummary, Overrides, ServiceTable},
    sync::lock,
    sys,
};

mod backends;
mod bgp;
mod cluster_router;
mod flood;
mod health_results;
mod peer_flows;
mod peers;
mod scrape;
mod server;
mod vip_moves;

pub use bgp::BgpState;
pub use cluster_router::{CLUSTER_POLL, ClusterRouter, known_services, prepare_cluster};
pub use peer_flows::{PeerFlows, apply_announcements};
pub use peers::{flows_by_owner, own_snat, prepare_peers};
pub use server::run;

/// How often the daemon looks after its housekeeping: health-check tasks, session
/// expiry, a hand-over. The flow collector paces itself (`flows::next_pass_delay`).
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);

pub struct Controller {
    config_path: PathBuf,
    config: Config,
    dataplane: Dataplane,
    table: ServiceTable,
    started: Instant,
    generation: u64,
    last_reload: Option<String>,
    last_reload_ok: Option<bool>,
    flows_expired: u64,
    /// The flow table as of the collector's last pass.
    flow_summary: flows::FlowSummary,
    overrides: Overrides,
    /// Health of each checked (service, backend).
    health: BTreeMap<(String, BackendAddr), Health>,
    /// Automatic SYN cookies of each `syn_cookies = "auto"` service, by name.
    syn_cookies: BTreeMap<String, crate::syn_cookies::AutoCookies>,
    /// Set when a new daemon takes over: exit without detaching.
    pub handed_over: bool,
    /// The router side of the cluster protocol, with `[cluster]`.
    cluster: Option<ClusterRouter>,
    /// What BIRD announces, with `[bgp]`.
    pub bgp: Option<BgpState>,
    /// The peer protocol, with `[peers]`.
    peers: Option<crate::peers::io::PeersHandle>,
    /// Flow sharing with peers (`[peers]`): remote activity, the collector's memory.
    peer_flows: PeerFlows,
    /// The owned VIPs' modes (`[[bgp.owned_vip]]`, docs/scale-out.md, "Owned VIPs").
    moves: Option<crate::peers::moves::Moves>,
    move_io: vip_moves::MoveIo,
}

/// A health check the controller wants running.
pub type HealthTarget = (String, BackendAddr, HealthCheck);

/// The mode table of the owned VIPs, as configured (each owner's VIPs `normal` there,
/// `backup` everywhere else); `None` without owned VIPs.
fn owned_vip_modes(config: &Config) -> Option<crate::peers::moves::Moves> {
    let (Some(bgp), Some(peers)) = (&config.bgp, &config.peers) else {
        return None;
    };
    (!bgp.owned_vips.is_empty()).then(|| {
        crate::peers::moves::Moves::new(
            peers.node_id,
            &bgp.owned_vips,
            crate::peers::moves::MoveTimers::default(),
            Instant::now(),
        )
    })
}

pub fn pin_dir(name: &str) -> PathBuf {
    Path::new(sys::BPFFS).join(name)
}

impl Controller {
    /// Loads, programs and attaches `config`, read from `config_path` (which reloads
    /// read again). Nothing stays attached on error.
    pub fn start(
        config_path: &Path,
        config: Config,
        mode_override: Option<XdpMode>,
        replace: bool,
    ) -> Result<Controller> {
        config.check_interfaces(sys::interface_exists)?;
        if !sys::is_root() {
            bail!("lb run needs root (CAP_BPF, CAP_NET_ADMIN) to load and attach XDP programs");
        }
        if fs::read_to_string("/proc/sys/net/ipv4/ip_forward").is_ok_and(|v| v.trim() != "1") {
            log::warn!(
                "net.ipv4.ip_forward is off: packets whose next hop is not resolved yet are \
                 handed to the kernel, which must forward them"
            );
        }
        if !sys::bpffs_mounted() {
            bail!(
                "no bpffs at /sys/fs/bpf in this mount namespace (run `cargo xtask setup`; \
                 note that `ip netns exec` hides it: enter the namespace with \
                 `nsenter --net=/var/run/netns/NAME` instead)"
            );
        }
        let dir = pin_dir(&config.name);
        let adopt = dataplane::has_pinned_state(&dir);
        if replace && !adopt {
            bail!(
                "--replace needs the pinned state of a running (or killed) daemon in {}, \
                 and there is none: start without --replace",
                dir.display()
            );
        }
        let pinned = if adopt {
            log::info!("adopting the pinned data path in {}", dir.display());
            PinnedState::Adopt
        } else {
            PinnedState::Replace
        };
        let mut dataplane = Dataplane::load_with(config.limits, Some(&dir), pinned)?;
        match Self::program_and_attach(&mut dataplane, &config, mode_override, adopt, replace) {
            Ok((table, overrides)) => {
                let peer_flows = PeerFlows::new(config.limits.max_flows);
                let moves = owned_vip_modes(&config);
                let mut controller = Controller {
                    config_path: config_path.to_path_buf(),
                    config,
                    dataplane,
                    table,
                    started: Instant::now(),
                    generation: 1,
                    last_reload: None,
                    last_reload_ok: None,
                    flows_expired: 0,
                    flow_summary: flows::FlowSummary::default(),
                    overrides,
                    health: BTreeMap::new(),
                    syn_cookies: BTreeMap::new(),
                    handed_over: false,
                    cluster: None,
                    bgp: None,
                    peers: None,
                    peer_flows,
                    moves,
                    move_io: vip_moves::MoveIo::default(),
                };
                controller.resume_syn_cookies();
                Ok(controller)
            }
            Err(e) => {
                if adopt {
                    // Whatever failed, the adopted data path keeps forwarding.
                    dataplane.release();
                }
                Err(e)
            }
        }
    }

    fn program_and_attach(
        dataplane: &mut Dataplane,
        config: &Config,
        mode_override: Option<XdpMode>,
        adopt: bool,
        replace: bool,
    ) -> Result<(ServiceTable, Overrides)> {
        let mut table = if adopt {
            ServiceTable::adopt(dataplane, config)?
        } else {
            ServiceTable::default()
        };
        // A restart keeps the drains and the automatic SYN cookies it finds.
        let overrides = Overrides {
            drained: table.draining(),
            syn_cookies: table.syn_cookie_flags(),
            ..Overrides::default()
        };
        let summary = table.apply_with(dataplane, config, &overrides)?;
        log::info!("programmed: {summary:?}");
        let adopted = if adopt {
            dataplane.adopt_links(replace)?
        } else {
            Vec::new()
        };
        for (ifname, mode) in &adopted {
            log::info!(
                "adopted the pinned link on {ifname} ({mode:?} mode){}",
                if replace { ", program replaced" } else { "" }
            );
        }
        let mode = mode_override.unwrap_or(config.xdp_mode).required();
        for ifname in &config.attach {
            if adopted.iter().any(|(name, _)| name == ifname) {
                continue;
            }
            let attached = dataplane.attach(ifname, mode)?;
            log::info!("attached to {ifname} ({attached:?} mode)");
        }
        Ok((table, overrides))
    }

    pub fn socket_path(&self) -> &Path {
        &self.config.socket
    }

    pub fn handle(&mut self, request: &Request) -> Result<Reply> {
        Ok(match request {
            Request::Status => Reply::Status(self.status()),
            Request::Stats => Reply::Stats(self.stats()?),
            Request::Flows => Reply::Flows(self.flows()),
            Request::Reload => Reply::Reloaded(self.reload()?),
            Request::Backends => Reply::Backends(self.backends()?),
            Request::Sessions => Reply::Sessions(self.sessions()),
            Request::BackendDrain { backend } => Reply::Applied(self.set_drained(backend, true)?),
            Request::BackendUndrain { backend } => {
                Reply::Applied(self.set_drained(backend, false)?)
            }
            Request::BackendWeight {
                service,
                backend,
                weight,
            } => Reply::Applied(self.set_weight(service, backend, *weight)?),
            Request::BackendAdd {
                service,
                backend,
                weight,
            } => Reply::Applied(self.add_backend(service, backend, *weight)?),
            Request::BackendRemove { service, backend } => {
                Reply::Applied(self.remove_backend(service, backend)?)
            }
            Request::Nodes => Reply::Nodes(self.nodes()?),
            Request::Drain => Reply::Drained(self.drain()?),
            Request::Peers => Reply::Peers(self.peers_status()?),
            Request::Vips => Reply::Vips(self.vip_modes()?),
            Request::VipMove { vip, to } => Reply::Vips(self.start_vip_move(*vip, *to)?),
            Request::Handover => {
                self.handed_over = true;
                Reply::HandedOver(api::HandedOver { handed_over: true })
            }
        })
    }

    /// Re-applies config and overrides (a difference: only changed rings are swapped).
    fn reapply(&mut self) -> Result<ApplySummary> {
        let config = self.config.clone();
        self.apply_config(&config)
    }

    /// Applies `config` with the overrides and the announced endpoints on top.
    fn apply_config(&mut self, config: &Config) -> Result<ApplySummary> {
        let Some(cluster) = &mut self.cluster else {
            return self
                .table
                .apply_with(&mut self.dataplane, config, &self.overrides);
        };
        let (merged, overrides, skipped) =
            cluster::backends::merge(config, &self.overrides, &cluster.announced);
        for (service, (ip, port)) in &skipped.configured {
            if cluster.logged_skips.insert((service.clone(), (*ip, *port))) {
                log::warn!(
                    "cluster: {service}: {ip}:{port} is announced and also configured: \
                     the configured backend is used"
                );
            }
        }
        for (service, (ip, port)) in &skipped.no_room {
            if cluster.logged_skips.insert((service.clone(), (*ip, *port))) {
                log::warn!(
                    "cluster: {service}: no room for announced {ip}:{port} \
                     (limits.max_backends is {})",
                    config.limits.max_backends
                );
            }
        }
        self.table
            .apply_with(&mut self.dataplane, &merged, &overrides)
    }

    fn status(&self) -> api::Status {
        let interfaces = self
            .dataplane
            .attached()
            .into_iter()
            .map(|(name, ifindex, mode)| api::InterfaceStatus {
                name,
                ifindex,
                mode,
            })
            .collect();
        let connections: u64 = self.flow_summary.connections.values().sum();
        api::Status {
            name: self.config.name.clone(),
            config: self.config_path.display().to_string(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            generation: self.generation,
            last_reload: self.last_reload.clone(),
            interfaces,
            pin_dir: pin_dir(&self.config.name).display().to_string(),
            services: self.config.services.len(),
            connections,
            flows_expired: self.flows_expired,
            adopted: self.dataplane.adopted(),
            metrics: self.config.metrics,
            bgp: self.bgp_status(),
        }
    }

    fn stats(&self) -> Result<api::Stats> {
        let counters = self
            .dataplane
            .global_counters()?
            .into_iter()
            .map(|(name, value)| (name.to_string(), value))
            .collect();
        let mut services = Vec::new();
        for service in self.table.services() {
            let stats = self.dataplane.service_stats(service.id)?;
            let mut backends = Vec::new();
            for (backend, id, _) in service.members() {
                let b = self.dataplane.backend_stats(id)?;
                backends.push(api::BackendStats {
                    address: SocketAddrV4::new(backend.address, backend.port),
                    id,
                    weight: backend.weight,
                    packets: b.packets,
                    bytes: b.bytes,
                    new_flows: b.new_flows,
                });
            }
            services.push(api::ServiceStats {
                name: service.config.name.clone(),
                vip: SocketAddrV4::new(service.config.vip, service.config.port),
                protocol: service.config.protocol,
                mode: service.config.mode,
                snat_ips: service.config.snat_ips.clone(),
                id: service.id,
                packets: stats.packets,
                bytes: stats.bytes,
                new_flows: stats.new_flows,
                drops: stats.drops,
                denied: stats.denied,
                syn_cookies: self.syn_cookie_stats(&service.config, stats.syn_cookies),
                backends,
            });
        }
        Ok(api::Stats { counters, services })
    }

    fn flows(&self) -> Vec<api::FlowRow> {
        let entries = self.dataplane.flow_entries();
        flows::rows(&entries, sys::monotonic_ns(), |id| {
            self.table.service_name(id).map(str::to_string)
        })
    }

    /// Re-reads the config file and applies the difference. A bad file changes nothing.
    pub fn reload(&mut self) -> Result<ApplySummary> {
        let result = self.try_reload();
        self.last_reload_ok = Some(result.is_ok());
        self.last_reload = Some(match &result {
            Ok(_) => format!("ok (generation {})", self.generation),
            Err(e) => format!("refused: {e:#}"),
        });
        result
    }

    fn try_reload(&mut self) -> Result<ApplySummary> {
        let config = Config::load(&self.config_path)?;
        config.check_interfaces(sys::interface_exists)?;
        if config.name != self.config.name
            || config.attach != self.config.attach
            || config.xdp_mode != self.config.xdp_mode
            || config.socket != self.config.socket
            || config.metrics != self.config.metrics
            || config.limits != self.dataplane.capacity()
        {
            bail!(
                "{}: name, interfaces, xdp_mode, socket, metrics and limits can only change \
                 with a restart",
                self.config_path.display()
            );
        }
        if config.cluster != self.config.cluster {
            bail!(
                "{}: [cluster] can only change with a restart",
                self.config_path.display()
            );
        }
        if config.bgp != self.config.bgp {
            bail!(
                "{}: [bgp] can only change with a restart",
                self.config_path.display()
            );
        }
        if config.peers != self.config.peers {
            bail!(
                "{}: [peers] can only change with a restart",
                self.config_path.display()
            );
        }
        let summary = self.apply_new_config(config)?;
        // The VIPs and SNAT addresses may have changed.
        self.update_routes();
        if let Some(cluster) = &self.cluster {
            lock(&cluster.engine).set_services(known_services(&self.config), Instant::now());
        }
        self.generation += 1;
        log::info!("reloaded (generation {}): {summary:?}", self.generation);
        Ok(summary)
    }

    /// Deletes the entries of connections idle beyond their timeout.
    /// How long the flow collector's last pass took.
    pub fn last_flow_pass(&self) -> Duration {
        self.flow_summary.pass
    }

    pub fn expire_flows(&mut self) -> usize {
        // Until the peers synced this instance it cannot tell a down peer from one it
        // has not heard yet: every configured peer counts as live, so no copy of a
        // live peer's flow is expired here by mistake.
        let now = sys::monotonic_ns();
        let mut owners_heard = BTreeMap::new();
        let live = match (&self.peers, &self.config.peers) {
            (Some(peers), Some(config)) => {
                let status = peers.status();
                for row in &status.peers {
                    if let Some(ms) = row.last_heard_ms {
                        owners_heard.insert(row.node_id, now.saturating_sub(ms * 1_000_000));
                    }
                }
                if status.ready {
                    status.live_nodes
                } else {
                    config
                        .members
                        .iter()
                        .map(|peer| peer.node_id)
                        .chain([config.node_id])
                        .collect()
                }
            }
            _ => std::collections::BTreeSet::new(),
        };
        let (removed, outcome) = self.expire_flows_with(&live, &owners_heard);
        if let Some(peers) = &self.peers {
            let mut batch = outcome.removed;
            batch.extend(outcome.touches);
            if !batch.is_empty() {
                peers.announce(batch);
            }
        }
        removed
    }

    /// SIGTERM: detach and unpin. After a handover: leave everything to the new daemon.
    pub fn shutdown(&mut self) {
        if let Some(peers) = &self.peers {
            peers.stop();
        }
        if self.handed_over {
            self.dataplane.release();
        } else {
            self.dataplane.detach_all();
            self.dataplane.unpin_maps();
        }
    }
}

/// Refuses to start over a live daemon's socket; removes a stale one.
fn prepare_socket(path: &Path) -> Result<()> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!(
            "another lb daemon is already serving {} (stop it first)",
            path.display()
        );
    }
    let _ = fs::remove_file(path);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    Ok(())
}
