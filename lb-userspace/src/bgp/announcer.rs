//! The daemon's side of the announcements: a task that, whenever the wanted routes
//! change, writes the routes file atomically (temp file + rename, so BIRD never reads
//! half a file) and runs `configure` over BIRD's control socket. A failure is logged,
//! counted and retried with backoff; nothing here ever blocks the operator API or the
//! data path, which only hand the task a new [`RouteSet`] (docs/scale-out.md, "Routes").

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use tokio::sync::watch;

use super::control;
use super::routes::{RouteSet, render};
use crate::config::BgpConfig;
use crate::sync::lock;

/// First retry after a failed `configure`; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What the announcer did, for `lb status` and the metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnnouncerStatus {
    /// What the daemon wants announced now.
    pub wanted: RouteSet,
    /// What BIRD last accepted (`None`: nothing yet since the start).
    pub announced: Option<RouteSet>,
    /// Successful `configure` runs.
    pub configures: u64,
    pub configure_failures: u64,
    /// The last failure, while the wanted set is not announced yet.
    pub last_error: Option<String>,
}

impl AnnouncerStatus {
    /// BIRD has the wanted routes.
    pub fn in_sync(&self) -> bool {
        self.announced.as_ref() == Some(&self.wanted)
    }
}

/// Handle of the running task; dropping it stops the task (BIRD keeps what it has).
pub struct Announcer {
    wanted: watch::Sender<RouteSet>,
    status: Arc<Mutex<AnnouncerStatus>>,
    task: tokio::task::JoinHandle<()>,
}

impl Announcer {
    /// Starts the task (inside a tokio runtime) announcing `initial`.
    pub fn spawn(config: BgpConfig, initial: RouteSet) -> Announcer {
        let (wanted, receiver) = watch::channel(initial.clone());
        let status = Arc::new(Mutex::new(AnnouncerStatus {
            wanted: initial,
            ..AnnouncerStatus::default()
        }));
        let task = tokio::spawn(run(config, receiver, status.clone()));
        Announcer {
            wanted,
            status,
            task,
        }
    }

    /// Asks for `routes` to be announced; a no-op when they already are the wanted set.
    pub fn want(&self, routes: RouteSet) {
        lock(&self.status).wanted = routes.clone();
        self.wanted.send_if_modified(|current| {
            if *current == routes {
                false
            } else {
                *current = routes;
                true
            }
        });
    }

    pub fn status(&self) -> AnnouncerStatus {
        lock(&self.status).clone()
    }

    /// The shared status, to wait on without holding the announcer.
    pub fn status_handle(&self) -> Arc<Mutex<AnnouncerStatus>> {
        self.status.clone()
    }

    /// Waits until BIRD has the wanted routes, up to `limit`; whether it has.
    pub async fn wait_in_sync(&self, limit: Duration) -> bool {
        wait_in_sync(&self.status, limit).await
    }
}

/// Waits until `status` says BIRD has the wanted routes, up to `limit`; whether it has.
pub async fn wait_in_sync(status: &Mutex<AnnouncerStatus>, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if lock(status).in_sync() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    config: BgpConfig,
    mut receiver: watch::Receiver<RouteSet>,
    status: Arc<Mutex<AnnouncerStatus>>,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let wanted = receiver.borrow_and_update().clone();
        match announce(&config, &wanted).await {
            Ok(said) => {
                log::info!(
                    "bgp: BIRD announces {} routes ({})",
                    wanted.len(),
                    said.lines().last().unwrap_or("")
                );
                {
                    let mut status = lock(&status);
                    status.announced = Some(wanted);
                    status.configures += 1;
                    status.last_error = None;
                }
                backoff = MIN_BACKOFF;
                if receiver.changed().await.is_err() {
                    return;
                }
            }
            Err(e) => {
                log::warn!(
                    "bgp: announcing {} routes failed, retrying in {} ms: {e:#}",
                    wanted.len(),
                    backoff.as_millis()
                );
                {
                    let mut status = lock(&status);
                    status.configure_failures += 1;
                    status.last_error = Some(format!("{e:#}"));
                }
                // A newer wanted set is tried at once, else after the backoff.
                tokio::select! {
                    changed = receiver.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Writes the file for `routes` and has BIRD load it.
async fn announce(config: &BgpConfig, routes: &RouteSet) -> Result<String> {
    write_atomically(&config.routes_file, &render(routes)).await?;
    control::configure(&config.control_socket, control::DEFAULT_TIMEOUT)
        .await
        .context("BIRD configure")
}

/// Writes `text` to a temporary file beside `path` and renames it over `path`.
pub async fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let temp = temp_path(path);
    tokio::fs::write(&temp, text)
        .await
        .with_context(|| format!("writing {}", temp.display()))?;
    tokio::fs::rename(&temp, path).await.with_context(|| {
        let _ = std::fs::remove_file(&temp);
        format!("renaming {} to {}", temp.display(), path.display())
    })
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp.{}", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_atomically_and_replaces() {
        let dir = std::env::temp_dir().join(format!("lb-routes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("routes.conf");
        write_atomically(&path, "one\n").await.unwrap();
        write_atomically(&path, "two\n").await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left behind");
        assert!(
            write_atomically(&dir.join("none/routes.conf"), "x")
                .await
                .is_err()
        );
    }

    /// Without BIRD, the announcer counts failures and keeps the last error.
    #[tokio::test]
    async fn failures_are_counted_and_retried() {
        let dir = std::env::temp_dir().join(format!("lb-announcer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let announcer = Announcer::spawn(
            BgpConfig {
                control_socket: dir.join("no-bird.ctl"),
                routes_file: dir.join("routes.conf"),
                return_routes: Vec::new(),
                withdraw_delay: Duration::ZERO,
                owned_vips: Default::default(),
            },
            RouteSet::default(),
        );
        assert!(!announcer.wait_in_sync(Duration::from_millis(500)).await);
        let status = announcer.status();
        assert!(status.configure_failures >= 2, "{status:?}");
        assert!(status.last_error.unwrap().contains("cannot connect"));
        assert_eq!(status.announced, None);
        // The file was written all the same: BIRD finds it when it comes.
        assert!(dir.join("routes.conf").exists());
    }
}
