//! Running the `lb` daemon on a [`Topology`]: `lb run` in the LB namespace, its CLI,
//! and waiting until it answers. Used by the integration tests' fixture, the demo and
//! the bench.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::topology::{Role, Topology};

/// Starts `env RUST_LOG=<rust_log> lb run --config <config> <extra>...` in the LB
/// namespace with its output in `log`. Returns the PID, which is lb's own (`env` execs
/// it); the topology stops it at teardown unless the caller does earlier.
pub fn spawn_lb_run(
    topo: &Topology,
    lb: &Path,
    config: &Path,
    rust_log: &str,
    extra: &[&str],
    log: &Path,
) -> Result<u32> {
    let rust_log = format!("RUST_LOG={rust_log}");
    let (lb, config) = (lb.to_string_lossy(), config.to_string_lossy());
    let mut args = vec!["env", &rust_log, &lb, "run", "--config", &config];
    args.extend_from_slice(extra);
    topo.spawn_logged(Role::Lb, &args, log)
}

/// `lb --socket <socket> <args>...`: its stdout on success, an error with its stderr
/// otherwise. The control socket is a filesystem path, so this works from any namespace.
pub fn lb_cli(lb: &Path, socket: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(lb)
        .args(["--socket", socket])
        .args(args)
        .output()
        .with_context(|| format!("running {}", lb.display()))?;
    if !out.status.success() {
        bail!(
            "`lb --socket {socket} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `lb status` every `poll` until it answers and returns its output. Fails as
/// soon as the daemon `pid` (a child of `topo`) exits, or after `timeout`.
pub fn wait_until_answering(
    topo: &Topology,
    pid: u32,
    lb: &Path,
    socket: &str,
    timeout: Duration,
    poll: Duration,
) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = topo.try_wait_child(pid)? {
            bail!("lb exited during startup ({status})");
        }
        match lb_cli(lb, socket, &["status"]) {
            Ok(text) => return Ok(text),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!(
                    "lb did not answer `status` within {} s",
                    timeout.as_secs()
                )));
            }
            Err(_) => std::thread::sleep(poll),
        }
    }
}
