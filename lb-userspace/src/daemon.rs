//! `lb run`: the controller daemon. Loads the XDP program, programs the tables from the
//! config, attaches, serves the operator API, expires idle flows, reloads on request or
//! SIGHUP, and detaches cleanly on SIGTERM/SIGINT.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    net::{Ipv4Addr, SocketAddr},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
};

use crate::{
    api::{Answer, MAX_REQUEST_BYTES, Request},
    cluster::{
        self,
        router::{AnnouncedEndpoint, KnownService, RouterEngine, RouterSettings},
    },
    config::{BackendConfig, BackendDown, ClusterConfig, Config, HealthCheck, XdpMode},
    dataplane::{self, AttachedMode, Capacity, Dataplane, PinnedState},
    flows,
    health::{self, Health},
    metrics::{BackendLabels, EventLabels, ReasonLabels, Scrape, ServiceLabels, StateLabels},
    services::{ApplySummary, BackendAddr, Overrides, ServiceTable},
    sys,
};

/// How often idle flows are looked for.
const GC_INTERVAL: Duration = Duration::from_secs(1);

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
    overrides: Overrides,
    /// Health of each checked (service, backend).
    health: BTreeMap<(String, BackendAddr), Health>,
    /// Set when a new daemon takes over: exit without detaching.
    pub handed_over: bool,
    /// The router side of the cluster protocol, with `[cluster]`.
    cluster: Option<ClusterRouter>,
}

/// How often the daemon looks for a change in the announced endpoints.
pub const CLUSTER_POLL: Duration = Duration::from_millis(100);

/// The cluster router as the controller sees it: the engine (shared with the socket
/// loop in `cluster::io`) and what of its table the data plane holds.
pub struct ClusterRouter {
    pub engine: Arc<Mutex<RouterEngine>>,
    pub config: ClusterConfig,
    /// Endpoints merged into every apply (as of `applied_generation`).
    announced: Vec<AnnouncedEndpoint>,
    applied_generation: Option<u64>,
    /// Last apply error, logged once until it changes.
    last_error: Option<String>,
    /// Skipped endpoints already logged.
    logged_skips: std::collections::BTreeSet<(String, BackendAddr)>,
}

/// The services nodes may offer: every configured one.
pub fn known_services(config: &Config) -> Vec<KnownService> {
    config
        .services
        .iter()
        .map(|s| KnownService {
            name: s.name.clone(),
            protocol: s.protocol,
            vip: s.vip,
            port: s.port,
        })
        .collect()
}

/// Reads the key, finds the router address and binds the socket: everything that can
/// fail about `[cluster]`, before the data path is touched.
pub fn prepare_cluster(config: &Config) -> Result<Option<(ClusterRouter, std::net::UdpSocket)>> {
    let Some(cluster) = &config.cluster else {
        return Ok(None);
    };
    let key =
        cluster::wire::ClusterKey::from_file(&cluster.key_file).context("cluster.key_file")?;
    let interface_ip = match &cluster.interface {
        Some(name) => {
            if !sys::interface_exists(name) {
                bail!("cluster.interface {name:?} does not exist");
            }
            Some(
                cluster::agent::interface_address(name)
                    .with_context(|| format!("cluster.interface {name:?}"))?
                    .0,
            )
        }
        None => None,
    };
    let router_ip = cluster
        .router_ip
        .or(interface_ip)
        .context("cluster: no router address (set router_ip)")?;
    let mut settings = RouterSettings::new(cluster.cluster_id, router_ip, known_services(config));
    settings.controller = cluster.controller;
    settings.heartbeat_interval = cluster.heartbeat_interval;
    settings.dead_after = cluster.dead_after;
    let engine = RouterEngine::new(
        settings,
        key,
        cluster::agent::random_instance(),
        cluster::router::Clock::system(),
    )
    .map_err(|e| anyhow::anyhow!("cluster: {e}"))?;
    // Every address, or broadcast joins would be missed; the interface (if named)
    // keeps other segments out.
    let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, cluster.port))
        .with_context(|| format!("cluster.port: cannot listen on UDP port {}", cluster.port))?;
    if let Some(name) = &cluster.interface {
        bind_to_device(&socket, name)
            .with_context(|| format!("cluster.interface: bind the socket to {name}"))?;
    }
    socket.set_nonblocking(true)?;
    log::info!(
        "cluster {}: router {router_ip}, listening on UDP port {}{}",
        cluster.cluster_id,
        cluster.port,
        cluster
            .interface
            .as_ref()
            .map_or(String::new(), |i| format!(" on {i}"))
    );
    Ok(Some((
        ClusterRouter {
            engine: Arc::new(Mutex::new(engine)),
            config: cluster.clone(),
            announced: Vec::new(),
            applied_generation: None,
            last_error: None,
            logged_skips: Default::default(),
        },
        socket,
    )))
}

fn bind_to_device(socket: &std::net::UdpSocket, name: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: setsockopt on an open socket with a valid buffer and its length.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A health check the controller wants running.
pub type HealthTarget = (String, BackendAddr, HealthCheck);

/// `address` or `address:port` as the operator names a backend.
fn parse_backend(text: &str) -> Result<(Ipv4Addr, Option<u16>)> {
    if let Ok(addr) = text.parse::<Ipv4Addr>() {
        return Ok((addr, None));
    }
    match text.parse::<std::net::SocketAddrV4>() {
        Ok(addr) if addr.port() != 0 => Ok((*addr.ip(), Some(addr.port()))),
        _ => bail!("invalid backend {text:?}: expected ADDRESS or ADDRESS:PORT"),
    }
}

#[derive(Serialize)]
struct InterfaceStatus {
    name: String,
    ifindex: u32,
    mode: AttachedMode,
}

pub fn pin_dir(name: &str) -> PathBuf {
    Path::new("/sys/fs/bpf").join(name)
}

fn capacity(config: &Config) -> Capacity {
    Capacity {
        max_services: config.limits.max_services,
        max_backends: config.limits.max_backends,
        max_flows: config.limits.max_flows,
        max_ring_slots: config.limits.max_ring_slots,
    }
}

impl Controller {
    /// Validates, loads, programs and attaches. Nothing stays attached on error.
    pub fn start(
        config_path: &Path,
        mode_override: Option<XdpMode>,
        replace: bool,
    ) -> Result<Controller> {
        let config = Config::load(config_path)?;
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
        if !bpffs_mounted() {
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
        let mut dataplane = Dataplane::load_with(capacity(&config), Some(&dir), pinned)?;
        match Self::program_and_attach(&mut dataplane, &config, mode_override, adopt, replace) {
            Ok((table, overrides)) => Ok(Controller {
                config_path: config_path.to_path_buf(),
                config,
                dataplane,
                table,
                started: Instant::now(),
                generation: 1,
                last_reload: None,
                last_reload_ok: None,
                flows_expired: 0,
                overrides,
                health: BTreeMap::new(),
                handed_over: false,
                cluster: None,
            }),
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
        let overrides = Overrides {
            drained: table.draining(),
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
        let mode = match mode_override.unwrap_or(config.xdp_mode) {
            XdpMode::Native => Some(AttachedMode::Native),
            XdpMode::Generic => Some(AttachedMode::Generic),
            XdpMode::Auto => None,
        };
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

    pub fn handle(&mut self, request: &Request) -> Result<Value> {
        match request {
            Request::Status => Ok(self.status()),
            Request::Stats => self.stats(),
            Request::Flows => Ok(self.flows()),
            Request::Reload => self.reload().map(|s| json!(s)),
            Request::Backends => self.backends(),
            Request::Sessions => self.sessions(),
            Request::BackendDrain { backend } => self.set_drained(backend, true),
            Request::BackendUndrain { backend } => self.set_drained(backend, false),
            Request::BackendWeight {
                service,
                backend,
                weight,
            } => self.set_weight(service, backend, *weight),
            Request::BackendAdd {
                service,
                backend,
                weight,
            } => self.add_backend(service, backend, *weight),
            Request::BackendRemove { service, backend } => self.remove_backend(service, backend),
            Request::Nodes => self.nodes(),
            Request::Handover => {
                self.handed_over = true;
                Ok(json!({ "handed_over": true }))
            }
        }
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

    /// Applies the router's table if it changed since the last time (called every
    /// [`CLUSTER_POLL`]).
    pub fn sync_cluster(&mut self) {
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        let (generation, endpoints) = {
            let engine = cluster.engine.lock().unwrap_or_else(|p| p.into_inner());
            (engine.generation(), engine.endpoints().to_vec())
        };
        if cluster.applied_generation == Some(generation) {
            return;
        }
        cluster.announced = endpoints;
        let result = self.reapply();
        let cluster = self.cluster.as_mut().expect("checked above");
        match result {
            Ok(summary) => {
                let mut engine = cluster.engine.lock().unwrap_or_else(|p| p.into_inner());
                // Changed meanwhile: the next poll applies the newer table.
                if engine.generation() == generation {
                    engine.mark_applied();
                }
                cluster.applied_generation = Some(generation);
                cluster.last_error = None;
                log::info!(
                    "cluster: applied announced endpoints (table {generation}): {summary:?}"
                );
            }
            Err(e) => {
                let text = format!("{e:#}");
                if cluster.last_error.as_ref() != Some(&text) {
                    log::error!("cluster: applying announced endpoints failed: {text}");
                    cluster.last_error = Some(text);
                }
            }
        }
    }

    fn nodes(&self) -> Result<Value> {
        let Some(cluster) = &self.cluster else {
            bail!("no [cluster] in the config: this balancer takes no node announcements");
        };
        let engine = cluster.engine.lock().unwrap_or_else(|p| p.into_inner());
        let settings = engine.settings();
        let management = engine.management();
        Ok(json!({
            "cluster_id": settings.cluster_id,
            "router": settings.router_ip.to_string(),
            "port": cluster.config.port,
            "management": (!management.is_unspecified()).then(|| management.to_string()),
            "controller_configured": settings.controller.is_some(),
            "heartbeat_ms": settings.heartbeat_interval.as_millis() as u64,
            "dead_after": settings.dead_after,
            "table_generation": engine.generation(),
            "counters": engine.counters(),
            "endpoints": engine.endpoints(),
        }))
    }

    /// The configured backend addresses `text` names, in `service` if given.
    fn resolve(&self, service: Option<&str>, text: &str) -> Result<Vec<BackendAddr>> {
        let (ip, port) = parse_backend(text)?;
        if let Some(name) = service
            && !self.config.services.iter().any(|s| s.name == name)
        {
            bail!("no service named {name:?}");
        }
        let mut found: Vec<BackendAddr> = self
            .config
            .services
            .iter()
            .filter(|s| service.is_none_or(|name| s.name == name))
            .flat_map(|s| s.backends.iter())
            .filter(|b| b.address == ip && port.is_none_or(|p| b.port == p))
            .map(|b| (b.address, b.port))
            .collect();
        found.sort();
        found.dedup();
        match (found.len(), service) {
            (0, Some(name)) => bail!("service {name:?} has no backend {text}"),
            (0, None) => bail!("no service has a backend {text}"),
            (1, _) => Ok(found),
            _ => bail!("{text} names several backends (different ports): give ADDRESS:PORT"),
        }
    }

    fn set_drained(&mut self, text: &str, drained: bool) -> Result<Value> {
        let addr = self.resolve(None, text)?[0];
        let was = self.overrides.drained.contains(&addr);
        if was == drained {
            bail!(
                "backend {}:{} is {} draining",
                addr.0,
                addr.1,
                if drained { "already" } else { "not" }
            );
        }
        if drained {
            self.overrides.drained.insert(addr);
        } else {
            self.overrides.drained.remove(&addr);
        }
        let summary = self.reapply()?;
        log::info!(
            "backend {}:{} {}: {summary:?}",
            addr.0,
            addr.1,
            if drained { "draining" } else { "undrained" }
        );
        Ok(json!(summary))
    }

    fn set_weight(&mut self, service: &str, text: &str, weight: u32) -> Result<Value> {
        if weight > u32::from(u16::MAX) {
            bail!("weight must be between 0 and 65535, got {weight}");
        }
        let addr = self.resolve(Some(service), text)?[0];
        self.overrides
            .weights
            .insert((service.to_string(), addr), weight);
        let summary = self.reapply()?;
        log::info!(
            "{service}: backend {}:{} weight {weight}: {summary:?}",
            addr.0,
            addr.1
        );
        Ok(json!(summary))
    }

    fn add_backend(&mut self, service: &str, text: &str, weight: u32) -> Result<Value> {
        if weight > u32::from(u16::MAX) {
            bail!("weight must be between 0 and 65535, got {weight}");
        }
        let (ip, port) = parse_backend(text)?;
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
            bail!("backend address must be unicast, got {ip}");
        }
        let mut config = self.config.clone();
        let Some(entry) = config.services.iter_mut().find(|s| s.name == service) else {
            bail!("no service named {service:?}");
        };
        let port = port.unwrap_or(entry.port);
        if entry
            .backends
            .iter()
            .any(|b| b.address == ip && b.port == port)
        {
            bail!("service {service:?} already has backend {ip}:{port}");
        }
        entry.backends.push(BackendConfig {
            address: ip,
            port,
            weight,
        });
        let distinct = config
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| (b.address, b.port)))
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        if distinct as u64 > u64::from(self.dataplane.capacity.max_backends) {
            bail!(
                "limits.max_backends ({}) reached",
                self.dataplane.capacity.max_backends
            );
        }
        let summary = self.apply_config(&config)?;
        self.config = config;
        log::info!("{service}: added backend {ip}:{port} (weight {weight}): {summary:?}");
        Ok(json!(summary))
    }

    fn remove_backend(&mut self, service: &str, text: &str) -> Result<Value> {
        let addr = self.resolve(Some(service), text)?[0];
        let mut config = self.config.clone();
        let entry = config
            .services
            .iter_mut()
            .find(|s| s.name == service)
            .expect("resolved above");
        entry.backends.retain(|b| (b.address, b.port) != addr);
        if !entry.backends.iter().any(|b| b.weight > 0) && self.cluster.is_none() {
            bail!(
                "removing {}:{} would leave service {service:?} without a backend that \
                 can take flows",
                addr.0,
                addr.1
            );
        }
        let summary = self.apply_config(&config)?;
        self.config = config;
        self.prune_overrides();
        log::info!(
            "{service}: removed backend {}:{}: {summary:?}",
            addr.0,
            addr.1
        );
        Ok(json!(summary))
    }

    /// Forgets overrides and health of backends the config no longer has.
    fn prune_overrides(&mut self) {
        let present: std::collections::BTreeSet<(String, BackendAddr)> = self
            .config
            .services
            .iter()
            .flat_map(|s| {
                s.backends
                    .iter()
                    .map(move |b| (s.name.clone(), (b.address, b.port)))
            })
            .collect();
        let addrs: std::collections::BTreeSet<BackendAddr> =
            present.iter().map(|(_, a)| *a).collect();
        self.overrides.drained.retain(|a| addrs.contains(a));
        self.overrides.weights.retain(|k, _| present.contains(k));
        self.overrides.down.retain(|k| present.contains(k));
        let checked: std::collections::BTreeSet<(String, BackendAddr)> = self
            .health_targets()
            .into_iter()
            .map(|(s, a, _)| (s, a))
            .collect();
        self.health.retain(|k, _| checked.contains(k));
        self.overrides.down.retain(|k| checked.contains(k));
    }

    /// Every (service, backend) health check the config asks for.
    pub fn health_targets(&self) -> Vec<HealthTarget> {
        self.config
            .services
            .iter()
            .filter_map(|s| s.health_check.as_ref().map(|check| (s, check)))
            .flat_map(|(s, check)| {
                s.backends
                    .iter()
                    .map(move |b| (s.name.clone(), (b.address, b.port), check.clone()))
            })
            .collect()
    }

    /// Takes one probe result; a backend that falls or rises changes the rings.
    pub fn health_result(&mut self, target: &HealthTarget, result: Result<(), String>) {
        if !self.health_targets().contains(target) {
            return; // reconfigured while the probe ran
        }
        let (service, addr, check) = target;
        let key = (service.clone(), *addr);
        let health = self.health.entry(key.clone()).or_default();
        if !health.record(result, check.rise, check.fall) {
            return;
        }
        let up = health.up;
        let reason = health.last_error.clone().unwrap_or_default();
        if up {
            self.overrides.down.remove(&key);
            log::info!("{service}: backend {}:{} is up again", addr.0, addr.1);
        } else {
            self.overrides.down.insert(key);
            log::warn!("{service}: backend {}:{} is down: {reason}", addr.0, addr.1);
        }
        if let Err(e) = self.reapply() {
            log::error!("applying the health change failed: {e:#}");
        }
        if !up {
            let reset = self
                .config
                .services
                .iter()
                .any(|s| &s.name == service && s.on_backend_down == BackendDown::Reset);
            if reset {
                let marked = self.reset_flows(service, *addr);
                log::warn!(
                    "{service}: {marked} connections to {}:{} will be reset",
                    addr.0,
                    addr.1
                );
            }
        }
    }

    /// Marks both entries of every connection of `service` to `addr` for reset: the
    /// data path answers the client's next packet with a RST. Returns the count.
    fn reset_flows(&mut self, service: &str, addr: BackendAddr) -> usize {
        let (Some(service_id), Some(backend_id)) = (
            self.table
                .services()
                .find(|s| s.config.name == service)
                .map(|s| s.id),
            self.table.backend_id(addr),
        ) else {
            return 0;
        };
        let mut marked = 0;
        for (key, mut entry) in self.dataplane.flow_entries() {
            if entry.service_id != service_id
                || entry.backend_id != backend_id
                || key.proto != lb_common::IPPROTO_TCP
            {
                continue;
            }
            entry.state = lb_common::FLOW_STATE_RESET;
            // BPF_EXIST: never resurrect an entry that closed meanwhile.
            if self.dataplane.flows.insert(key, entry, 2).is_ok()
                && entry.direction == lb_common::FLOW_DIR_CLIENT_TO_SERVER
            {
                marked += 1;
            }
        }
        marked
    }

    fn backends(&self) -> Result<Value> {
        let entries = self.dataplane.flow_entries();
        let mut active: HashMap<(u32, u32), u64> = HashMap::new();
        for (_, entry) in &entries {
            if entry.direction == lb_common::FLOW_DIR_CLIENT_TO_SERVER {
                *active
                    .entry((entry.service_id, entry.backend_id))
                    .or_default() += 1;
            }
        }
        let mut rows = Vec::new();
        for service in self.table.services() {
            for ((backend, &id), &effective) in service
                .config
                .backends
                .iter()
                .zip(&service.backend_ids)
                .zip(&service.effective_weights)
            {
                let addr = (backend.address, backend.port);
                let key = (service.config.name.clone(), addr);
                let configured = self.config.services.iter().any(|s| {
                    s.name == service.config.name
                        && s.backends.iter().any(|b| (b.address, b.port) == addr)
                });
                let announced = self.cluster.as_ref().filter(|_| !configured).and_then(|c| {
                    c.announced
                        .iter()
                        .find(|e| e.service == service.config.name && (e.node, e.port) == addr)
                });
                let mut health = match (&service.config.health_check, self.health.get(&key)) {
                    (None, _) => "unchecked",
                    (Some(_), Some(h)) if !h.up => "down",
                    (Some(_), _) => "up",
                }
                .to_string();
                let mut state = match self.overrides.state(addr) {
                    lb_common::BACKEND_STATE_DRAINING => "draining",
                    _ if self.overrides.down.contains(&key) => "down",
                    _ => "active",
                }
                .to_string();
                if let Some(e) = announced {
                    // The node's own report and the router's view of the node.
                    health = serde_json::to_value(e.health)?
                        .as_str()
                        .unwrap_or("-")
                        .into();
                    state = serde_json::to_value(e.state)?
                        .as_str()
                        .unwrap_or("-")
                        .into();
                }
                let stats = self.dataplane.backend_stats(id)?;
                rows.push(json!({
                    "service": service.config.name,
                    "backend": format!("{}:{}", backend.address, backend.port),
                    "id": id,
                    "weight": self.overrides.weights.get(&key).copied().unwrap_or(backend.weight),
                    "effective_weight": effective,
                    "source": if configured { "config" } else { "announced" },
                    "state": state,
                    "health": health,
                    "last_error": self.health.get(&key).and_then(|h| h.last_error.clone()),
                    "active_flows": active.get(&(service.id, id)).copied().unwrap_or(0),
                    "new_flows": stats.new_flows,
                    "packets": stats.packets,
                    "bytes": stats.bytes,
                }));
            }
        }
        Ok(json!(rows))
    }

    fn sessions(&self) -> Result<Value> {
        let now = sys::monotonic_ns();
        let addr_of: HashMap<u32, BackendAddr> =
            self.table.backends().map(|(a, id)| (id, a)).collect();
        let mut rows: Vec<(u64, Value)> = Vec::new();
        for item in self.dataplane.sessions.iter() {
            let Ok((key, entry)) = item else { continue };
            let backend = addr_of
                .get(&entry.backend_id)
                .map(|(ip, port)| format!("{ip}:{port}"));
            rows.push((
                entry.created_ns,
                json!({
                    "client": Ipv4Addr::from(u32::from_be(key.client_ip)).to_string(),
                    "service": self.table.service_name(key.service_id),
                    "backend": backend,
                    "backend_id": entry.backend_id,
                    "age_secs": now.saturating_sub(entry.created_ns) / 1_000_000_000,
                    "idle_secs": now.saturating_sub(entry.last_seen_ns) / 1_000_000_000,
                    "handle": format!("{}/{}", key.service_id, Ipv4Addr::from(u32::from_be(key.client_ip))),
                }),
            ));
        }
        rows.sort_by_key(|(created, _)| *created);
        Ok(json!(rows.into_iter().map(|(_, v)| v).collect::<Vec<_>>()))
    }

    /// Deletes sessions idle beyond their service's timeout (or of removed services).
    pub fn expire_sessions(&mut self) -> usize {
        let now = sys::monotonic_ns();
        let timeouts: HashMap<u32, u64> = self
            .table
            .services()
            .filter_map(|s| {
                s.config
                    .affinity_timeout
                    .map(|t| (s.id, t.as_nanos() as u64))
            })
            .collect();
        let stale: Vec<lb_common::SessionKey> = self
            .dataplane
            .sessions
            .iter()
            .filter_map(Result::ok)
            .filter(|(key, entry)| {
                timeouts
                    .get(&key.service_id)
                    .is_none_or(|&t| now.saturating_sub(entry.last_seen_ns) > t)
            })
            .map(|(key, _)| key)
            .collect();
        stale
            .iter()
            .filter(|key| self.dataplane.sessions.remove(key).is_ok())
            .count()
    }

    /// The Prometheus text exposition of the current state.
    pub fn metrics(&self) -> Result<String> {
        let scrape = Scrape::default();
        for (name, value) in self.dataplane.global_counters()? {
            scrape
                .packets_by_verdict
                .get_or_create(&ReasonLabels {
                    reason: name.to_string(),
                })
                .inc_by(value);
        }
        let entries = self.dataplane.flow_entries();
        let mut active: HashMap<(u32, u32), i64> = HashMap::new();
        for (_, entry) in &entries {
            if entry.direction == lb_common::FLOW_DIR_CLIENT_TO_SERVER {
                *active
                    .entry((entry.service_id, entry.backend_id))
                    .or_default() += 1;
            }
        }
        for service in self.table.services() {
            let labels = ServiceLabels {
                service: service.config.name.clone(),
            };
            let stats = self.dataplane.service_stats(service.id)?;
            scrape
                .service_packets
                .get_or_create(&labels)
                .inc_by(stats.packets);
            scrape
                .service_bytes
                .get_or_create(&labels)
                .inc_by(stats.bytes);
            scrape
                .service_new_flows
                .get_or_create(&labels)
                .inc_by(stats.new_flows);
            scrape
                .service_drops
                .get_or_create(&labels)
                .inc_by(stats.drops);
            scrape
                .service_denied
                .get_or_create(&labels)
                .inc_by(stats.denied);
            let service_active: i64 = active
                .iter()
                .filter(|((s, _), _)| *s == service.id)
                .map(|(_, n)| n)
                .sum();
            scrape
                .service_active_flows
                .get_or_create(&labels)
                .set(service_active);
            for ((backend, &id), &effective) in service
                .config
                .backends
                .iter()
                .zip(&service.backend_ids)
                .zip(&service.effective_weights)
            {
                let labels = BackendLabels {
                    service: service.config.name.clone(),
                    backend: format!("{}:{}", backend.address, backend.port),
                };
                let stats = self.dataplane.backend_stats(id)?;
                scrape
                    .backend_packets
                    .get_or_create(&labels)
                    .inc_by(stats.packets);
                scrape
                    .backend_bytes
                    .get_or_create(&labels)
                    .inc_by(stats.bytes);
                scrape
                    .backend_new_flows
                    .get_or_create(&labels)
                    .inc_by(stats.new_flows);
                scrape
                    .backend_active_flows
                    .get_or_create(&labels)
                    .set(active.get(&(service.id, id)).copied().unwrap_or(0));
                let down = self
                    .overrides
                    .down
                    .contains(&(service.config.name.clone(), (backend.address, backend.port)));
                scrape
                    .backend_up
                    .get_or_create(&labels)
                    .set(i64::from(!down));
                scrape
                    .backend_weight
                    .get_or_create(&labels)
                    .set(i64::from(effective));
            }
        }
        if let Some(cluster) = &self.cluster {
            let engine = cluster.engine.lock().unwrap_or_else(|p| p.into_inner());
            let counters = serde_json::to_value(engine.counters())?;
            for (name, value) in counters.as_object().into_iter().flatten() {
                scrape
                    .cluster_events
                    .get_or_create(&EventLabels {
                        event: name.clone(),
                    })
                    .inc_by(value.as_u64().unwrap_or(0));
            }
            for state in ["active", "draining", "down"] {
                let count = engine
                    .endpoints()
                    .iter()
                    .filter(|e| serde_json::to_value(e.state).ok() == Some(json!(state)))
                    .count();
                scrape
                    .cluster_endpoints
                    .get_or_create(&StateLabels {
                        state: state.to_string(),
                    })
                    .set(count as i64);
            }
        }
        scrape.config_generation.set(self.generation as i64);
        scrape
            .last_reload_ok
            .set(self.last_reload_ok.map_or(-1, i64::from));
        scrape
            .sessions
            .set(self.dataplane.sessions.keys().filter(Result::is_ok).count() as i64);
        scrape.encode()
    }

    fn status(&self) -> Value {
        let interfaces: Vec<InterfaceStatus> = self
            .dataplane
            .attached()
            .into_iter()
            .map(|(name, ifindex, mode)| InterfaceStatus {
                name,
                ifindex,
                mode,
            })
            .collect();
        let connections = self
            .dataplane
            .flow_entries()
            .iter()
            .filter(|(_, e)| e.direction == lb_common::FLOW_DIR_CLIENT_TO_SERVER)
            .count();
        json!({
            "name": self.config.name,
            "config": self.config_path.display().to_string(),
            "pid": std::process::id(),
            "uptime_secs": self.started.elapsed().as_secs(),
            "generation": self.generation,
            "last_reload": self.last_reload,
            "interfaces": interfaces,
            "pin_dir": pin_dir(&self.config.name).display().to_string(),
            "services": self.config.services.len(),
            "connections": connections,
            "flows_expired": self.flows_expired,
            "adopted": self.dataplane.adopted,
            "metrics": self.config.metrics.map(|m| m.to_string()),
        })
    }

    fn stats(&self) -> Result<Value> {
        let counters: serde_json::Map<String, Value> = self
            .dataplane
            .global_counters()?
            .into_iter()
            .map(|(name, value)| (name.to_string(), json!(value)))
            .collect();
        let mut services = Vec::new();
        for service in self.table.services() {
            let stats = self.dataplane.service_stats(service.id)?;
            let mut backends = Vec::new();
            for (backend, &id) in service.config.backends.iter().zip(&service.backend_ids) {
                let b = self.dataplane.backend_stats(id)?;
                backends.push(json!({
                    "address": format!("{}:{}", backend.address, backend.port),
                    "id": id,
                    "weight": backend.weight,
                    "packets": b.packets,
                    "bytes": b.bytes,
                    "new_flows": b.new_flows,
                }));
            }
            services.push(json!({
                "name": service.config.name,
                "vip": format!("{}:{}", service.config.vip, service.config.port),
                "protocol": service.config.protocol.name(),
                "mode": service.config.mode.name(),
                "id": service.id,
                "packets": stats.packets,
                "bytes": stats.bytes,
                "new_flows": stats.new_flows,
                "drops": stats.drops,
                "denied": stats.denied,
                "backends": backends,
            }));
        }
        Ok(json!({ "counters": counters, "services": services }))
    }

    fn flows(&self) -> Value {
        let entries = self.dataplane.flow_entries();
        let rows = flows::rows(&entries, sys::monotonic_ns(), |id| {
            self.table.service_name(id).map(str::to_string)
        });
        json!(rows)
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
            || capacity(&config) != self.dataplane.capacity
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
        let summary = self.apply_config(&config)?;
        self.config = config;
        if let Some(cluster) = &self.cluster {
            cluster
                .engine
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .set_services(known_services(&self.config), Instant::now());
        }
        self.prune_overrides();
        // Overrides of backends that went away may have changed rings: settle them.
        self.reapply()?;
        self.generation += 1;
        log::info!("reloaded (generation {}): {summary:?}", self.generation);
        Ok(summary)
    }

    /// Deletes the entries of connections idle beyond their timeout.
    pub fn expire_flows(&mut self) -> usize {
        let entries = self.dataplane.flow_entries();
        let expired = flows::expired(&entries, sys::monotonic_ns(), &self.config.timeouts);
        let mut removed = 0;
        for key in &expired {
            if self.dataplane.flows.remove(key).is_ok() {
                removed += 1;
            }
        }
        self.flows_expired += removed as u64;
        removed
    }

    /// SIGTERM: detach and unpin. After a handover: leave everything to the new daemon.
    pub fn shutdown(&mut self) {
        if self.handed_over {
            self.dataplane.release();
        } else {
            self.dataplane.detach_all();
            self.dataplane.unpin_maps();
        }
    }
}

fn bpffs_mounted() -> bool {
    fs::read_to_string("/proc/self/mounts").is_ok_and(|mounts| {
        mounts.lines().any(|line| {
            let mut fields = line.split_whitespace();
            let (_, target, fstype) = (fields.next(), fields.next(), fields.next());
            target == Some("/sys/fs/bpf") && fstype == Some("bpf")
        })
    })
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

async fn serve_connection(controller: Arc<Mutex<Controller>>, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_REQUEST_BYTES as u64));
    let mut line = String::new();
    let answer = match reader.read_line(&mut line).await {
        Ok(0) => return,
        Ok(_) => match serde_json::from_str::<Request>(&line) {
            Ok(request) => {
                let controller = controller.clone();
                let result = tokio::task::spawn_blocking(move || {
                    let mut controller = controller.lock().unwrap_or_else(|p| p.into_inner());
                    controller.handle(&request)
                })
                .await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("request failed: {e}")));
                Answer::from_result(result)
            }
            Err(e) => Answer::from_result(Err(anyhow::anyhow!("malformed request: {e}"))),
        },
        Err(e) => Answer::from_result(Err(anyhow::anyhow!("cannot read request: {e}"))),
    };
    if let Ok(mut text) = serde_json::to_string(&answer) {
        text.push('\n');
        let _ = write.write_all(text.as_bytes()).await;
    }
}

/// Asks the daemon on `socket` to hand over and waits for it to exit (its socket goes).
fn take_over(socket: &Path) -> Result<()> {
    crate::api::call(socket, &Request::Handover)
        .context("--replace: the running daemon refused to hand over")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    // The old daemon removes its socket file last thing before exiting; waiting for
    // the file (not just a refused connect) keeps it from removing ours.
    while socket.exists() {
        if Instant::now() > deadline {
            bail!("--replace: the running daemon did not exit within 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Runs the daemon until SIGTERM or SIGINT (or a handover to a new daemon).
pub async fn run(config_path: &Path, mode_override: Option<XdpMode>, replace: bool) -> Result<()> {
    // Validate the config before touching anything else.
    let config = Config::load(config_path)?;
    // Bind the metrics port early: a port in use refuses the start, nothing changed.
    let metrics = match config.metrics {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("control.metrics: cannot listen on {addr}"))?,
        ),
        None => None,
    };
    if replace && std::os::unix::net::UnixStream::connect(&config.socket).is_ok() {
        take_over(&config.socket)?;
    }
    prepare_socket(&config.socket)?;
    // Bind the API socket before loading anything: a path the daemon cannot create
    // refuses the start with nothing changed.
    let socket = config.socket.clone();
    let listener = std::os::unix::net::UnixListener::bind(&socket)
        .with_context(|| format!("control.socket: cannot create {}", socket.display()))?;
    // Only the owner (root by default) may drive the balancer.
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o600))?;
    // The cluster socket and key too: a bad [cluster] refuses the start, nothing changed.
    let cluster = match prepare_cluster(&config) {
        Ok(cluster) => cluster,
        Err(e) => {
            let _ = fs::remove_file(&socket);
            return Err(e);
        }
    };
    let mut controller = match Controller::start(config_path, mode_override, replace) {
        Ok(controller) => controller,
        Err(e) => {
            let _ = fs::remove_file(&socket);
            return Err(e);
        }
    };
    let cluster_task = match cluster {
        Some((router, udp)) => {
            let engine = router.engine.clone();
            controller.cluster = Some(router);
            let udp = tokio::net::UdpSocket::from_std(udp)?;
            Some(tokio::spawn(async move {
                if let Err(e) = cluster::io::serve(udp, engine, std::future::pending()).await {
                    log::error!("cluster: router socket failed: {e:#}");
                }
            }))
        }
        None => None,
    };
    let controller = Arc::new(Mutex::new(controller));

    let result = serve(controller.clone(), &socket, listener, metrics).await;
    if let Some(task) = cluster_task {
        task.abort();
    }
    let _ = fs::remove_file(&socket);
    let mut controller = controller.lock().unwrap_or_else(|p| p.into_inner());
    controller.shutdown();
    if controller.handed_over {
        log::info!("handed over to the new daemon, bye");
    } else {
        log::info!("detached, bye");
    }
    result
}

/// Starts, stops and restarts the probe tasks so that they match the config.
fn reconcile_health(
    controller: &Arc<Mutex<Controller>>,
    running: &mut HashMap<HealthTarget, tokio::task::JoinHandle<()>>,
) {
    let wanted = controller
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .health_targets();
    running.retain(|target, task| {
        let keep = wanted.contains(target);
        if !keep {
            task.abort();
        }
        keep
    });
    for target in wanted {
        if running.contains_key(&target) {
            continue;
        }
        let controller = controller.clone();
        let task_target = target.clone();
        let task = tokio::spawn(async move {
            let (_, (ip, port), check) = &task_target;
            let addr = SocketAddr::from((*ip, check.port.unwrap_or(*port)));
            let mut ticker = tokio::time::interval(check.interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let result = health::probe(addr, check).await;
                let controller = controller.clone();
                let target = task_target.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    controller
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .health_result(&target, result)
                })
                .await;
            }
        });
        running.insert(target, task);
    }
}

async fn serve_metrics(controller: Arc<Mutex<Controller>>, mut stream: tokio::net::TcpStream) {
    // Read the request head (any path answers); a slow or silent client is dropped.
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        true
    })
    .await;
    if !matches!(read, Ok(true)) {
        return;
    }
    let text = tokio::task::spawn_blocking(move || {
        controller
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .metrics()
    })
    .await;
    let (status, body) = match text {
        Ok(Ok(body)) => ("200 OK", body),
        Ok(Err(e)) => ("500 Internal Server Error", format!("{e:#}\n")),
        Err(e) => ("500 Internal Server Error", format!("{e}\n")),
    };
    let answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
}

async fn serve(
    controller: Arc<Mutex<Controller>>,
    socket: &Path,
    listener: std::os::unix::net::UnixListener,
    metrics: Option<std::net::TcpListener>,
) -> Result<()> {
    listener.set_nonblocking(true)?;
    let listener = UnixListener::from_std(listener)?;
    log::info!("serving the operator API on {}", socket.display());
    let metrics = match metrics {
        Some(listener) => {
            listener.set_nonblocking(true)?;
            log::info!(
                "serving metrics on http://{}/metrics",
                listener.local_addr()?
            );
            Some(tokio::net::TcpListener::from_std(listener)?)
        }
        None => None,
    };

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut gc = tokio::time::interval(GC_INTERVAL);
    let has_cluster = controller
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .cluster
        .is_some();
    let mut cluster_poll = tokio::time::interval(CLUSTER_POLL);
    cluster_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut probes = HashMap::new();
    reconcile_health(&controller, &mut probes);
    let result = loop {
        tokio::select! {
            accepted = listener.accept() => {
                match accepted {
                    Ok((stream, _)) => { tokio::spawn(serve_connection(controller.clone(), stream)); }
                    Err(e) => log::warn!("accept on {}: {e}", socket.display()),
                }
            }
            accepted = async { metrics.as_ref().expect("guarded").accept().await }, if metrics.is_some() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(serve_metrics(controller.clone(), stream));
                }
            }
            _ = gc.tick() => {
                let c = controller.clone();
                let (removed, handed_over) = tokio::task::spawn_blocking(move || {
                    let mut c = c.lock().unwrap_or_else(|p| p.into_inner());
                    let removed = c.expire_flows();
                    c.expire_sessions();
                    (removed, c.handed_over)
                }).await.unwrap_or((0, false));
                if removed > 0 {
                    log::debug!("expired {removed} flow entries");
                }
                if handed_over {
                    break Ok(());
                }
                reconcile_health(&controller, &mut probes);
            }
            _ = cluster_poll.tick(), if has_cluster => {
                let c = controller.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    c.lock().unwrap_or_else(|p| p.into_inner()).sync_cluster();
                }).await;
            }
            _ = sighup.recv() => {
                let controller = controller.clone();
                let result = tokio::task::spawn_blocking(move || {
                    controller.lock().unwrap_or_else(|p| p.into_inner()).reload()
                }).await;
                match result {
                    Ok(Ok(summary)) => log::info!("SIGHUP reload: {summary:?}"),
                    Ok(Err(e)) => log::error!("SIGHUP reload refused, nothing changed: {e:#}"),
                    Err(e) => log::error!("SIGHUP reload failed: {e}"),
                }
            }
            _ = sigterm.recv() => { log::info!("SIGTERM: detaching"); break Ok(()); }
            _ = sigint.recv() => { log::info!("SIGINT: detaching"); break Ok(()); }
        }
    };
    for task in probes.values() {
        task.abort();
    }
    result
}
