//! The cluster router inside the daemon: socket set-up and the merge of announced
//! endpoints into the data plane (`cluster/` holds the protocol itself).

use super::*;

/// How often the daemon looks for a change in the announced endpoints.
pub const CLUSTER_POLL: Duration = Duration::from_millis(100);

/// The cluster router as the controller sees it: the engine (shared with the socket
/// loop in `cluster::io`) and what of its table the data plane holds.
pub struct ClusterRouter {
    pub engine: Arc<Mutex<RouterEngine>>,
    pub config: ClusterConfig,
    /// Endpoints merged into every apply (as of `applied_generation`).
    pub(super) announced: Vec<AnnouncedEndpoint>,
    pub(super) applied_generation: Option<u64>,
    /// Last apply error, logged once until it changes.
    pub(super) last_error: Option<String>,
    /// Skipped endpoints already logged.
    pub(super) logged_skips: std::collections::BTreeSet<(String, BackendAddr)>,
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

pub(super) fn bind_to_device(socket: &std::net::UdpSocket, name: &str) -> std::io::Result<()> {
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

impl Controller {
    /// Applies the router's table if it changed since the last time (called every
    /// [`CLUSTER_POLL`]).
    pub fn sync_cluster(&mut self) {
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        let (generation, endpoints) = {
            let engine = lock(&cluster.engine);
            (engine.generation(), engine.endpoints().to_vec())
        };
        if cluster.applied_generation == Some(generation) {
            return;
        }
        cluster.announced = endpoints;
        let result = self.reapply();
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        match result {
            Ok(summary) => {
                let mut engine = lock(&cluster.engine);
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

    pub(super) fn nodes(&self) -> Result<api::Nodes> {
        let Some(cluster) = &self.cluster else {
            bail!("no [cluster] in the config: this balancer takes no node announcements");
        };
        let engine = lock(&cluster.engine);
        let settings = engine.settings();
        let management = engine.management();
        Ok(api::Nodes {
            cluster_id: settings.cluster_id,
            router: settings.router_ip,
            port: cluster.config.port,
            management: (!management.is_unspecified()).then_some(management),
            controller_configured: settings.controller.is_some(),
            heartbeat_ms: settings.heartbeat_interval.as_millis() as u64,
            dead_after: settings.dead_after,
            table_generation: engine.generation(),
            counters: engine.counters(),
            endpoints: engine.endpoints().to_vec(),
        })
    }
}
