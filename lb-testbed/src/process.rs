//! Processes started inside a namespace, and how they are stopped.

use std::io;
use std::process::{Child, Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::netns::NETNS_DIR;

/// A command that runs `args` inside namespace `ns`.
pub(crate) fn netns_command(ns: &str, args: &[&str]) -> Result<Command> {
    if args.is_empty() {
        bail!("empty command for namespace {ns}");
    }
    // nsenter switches only the network namespace; `ip netns exec` would also give the
    // command a private /sys without the host's bpffs, hiding the balancer's pinned maps.
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={NETNS_DIR}/{ns}"))
        .arg("--")
        .args(args);
    Ok(cmd)
}

pub(crate) fn send_signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// SIGTERM, wait up to `grace`, then SIGKILL; always reaps. Never panics.
pub(crate) fn terminate_child(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let _ = send_signal(child.id(), libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(_) => break,
        }
    }
    eprintln!("testbed: pid {} ignored SIGTERM, killing it", child.id());
    let _ = child.kill();
    child.wait().ok()
}
