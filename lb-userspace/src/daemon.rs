//! `lb run`: the controller daemon. Loads the XDP program, programs the tables from the
//! config, attaches, serves the operator API, expires idle flows, reloads on request or
//! SIGHUP, and detaches cleanly on SIGTERM/SIGINT.

use std::{
    fs,
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
    config::{Config, XdpMode},
    dataplane::{AttachedMode, Capacity, Dataplane},
    flows,
    services::{ApplySummary, ServiceTable},
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
    flows_expired: u64,
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
    }
}

impl Controller {
    /// Validates, loads, programs and attaches. Nothing stays attached on error.
    pub fn start(config_path: &Path, mode_override: Option<XdpMode>) -> Result<Controller> {
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
        let mut dataplane = Dataplane::load(capacity(&config), Some(&pin_dir(&config.name)))?;
        let mut table = ServiceTable::default();
        let summary = table.apply(&mut dataplane, &config)?;
        log::info!("programmed: {summary:?}");
        let mode = match mode_override.unwrap_or(config.xdp_mode) {
            XdpMode::Native => Some(AttachedMode::Native),
            XdpMode::Generic => Some(AttachedMode::Generic),
            XdpMode::Auto => None,
        };
        for ifname in &config.attach {
            let attached = dataplane.attach(ifname, mode)?;
            log::info!("attached to {ifname} ({attached:?} mode)");
        }
        Ok(Controller {
            config_path: config_path.to_path_buf(),
            config,
            dataplane,
            table,
            started: Instant::now(),
            generation: 1,
            last_reload: None,
            flows_expired: 0,
        })
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
        }
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
            || capacity(&config) != self.dataplane.capacity
        {
            bail!(
                "{}: name, interfaces, xdp_mode, socket and limits can only change with a restart",
                self.config_path.display()
            );
        }
        let summary = self.table.apply(&mut self.dataplane, &config)?;
        self.config = config;
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

    pub fn shutdown(&mut self) {
        self.dataplane.detach_all();
        self.dataplane.unpin_maps();
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

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config_path: &Path, mode_override: Option<XdpMode>) -> Result<()> {
    // Validate the config before touching anything else.
    let config = Config::load(config_path)?;
    prepare_socket(&config.socket)?;
    let controller = Controller::start(config_path, mode_override)?;
    let socket = controller.socket_path().to_path_buf();
    let controller = Arc::new(Mutex::new(controller));

    let result = serve(controller.clone(), &socket).await;
    let _ = fs::remove_file(&socket);
    controller
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .shutdown();
    log::info!("detached, bye");
    result
}

async fn serve(controller: Arc<Mutex<Controller>>, socket: &Path) -> Result<()> {
    let listener =
        UnixListener::bind(socket).with_context(|| format!("bind {}", socket.display()))?;
    // Only the owner (root by default) may drive the balancer.
    fs::set_permissions(socket, fs::Permissions::from_mode(0o600))?;
    log::info!("serving the operator API on {}", socket.display());

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut gc = tokio::time::interval(GC_INTERVAL);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                match accepted {
                    Ok((stream, _)) => { tokio::spawn(serve_connection(controller.clone(), stream)); }
                    Err(e) => log::warn!("accept on {}: {e}", socket.display()),
                }
            }
            _ = gc.tick() => {
                let controller = controller.clone();
                let removed = tokio::task::spawn_blocking(move || {
                    controller.lock().unwrap_or_else(|p| p.into_inner()).expire_flows()
                }).await.unwrap_or(0);
                if removed > 0 {
                    log::debug!("expired {removed} flow entries");
                }
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
            _ = sigterm.recv() => { log::info!("SIGTERM: detaching"); return Ok(()); }
            _ = sigint.recv() => { log::info!("SIGINT: detaching"); return Ok(()); }
        }
    }
}
