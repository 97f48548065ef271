//! The one network-namespace fixture: [`Netns`] creates a named namespace (removing a
//! leftover of the same name first), wires it up with `ip`, sets its sysctls, runs
//! closures inside it, and deletes it on drop, terminating whatever still runs there.

use std::fs::File;
use std::io::{self, Write as _};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::process::send_signal;

/// Where `ip netns add` keeps its namespace handles.
pub const NETNS_DIR: &str = "/var/run/netns";

/// A network namespace owned by this value: deleted when it is dropped (unless
/// [`persist`](Self::persist)ed), even when a test panics.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `name` with `lo` up. A leftover namespace of that name (from a
    /// crashed run) is deleted first.
    pub fn create(name: &str) -> Result<Netns> {
        validate_name(name)?;
        if Path::new(NETNS_DIR).join(name).exists() {
            delete_netns(name);
        }
        ip(&["netns", "add", name])?;
        // From here on, an error drops `netns`, which deletes it again.
        let netns = Netns {
            name: name.to_string(),
        };
        netns.ip("link set lo up")?;
        Ok(netns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS`, with ARGS split on whitespace (none of ours contain any).
    pub fn ip(&self, args: &str) -> Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend(args.split_whitespace());
        ip(&all)
    }

    /// Many `ip` commands in one `ip -n NAME -batch -` process: hundreds of separate
    /// `ip` processes would dominate the set-up time of a large neighbour table.
    pub fn ip_batch<S: AsRef<str>>(&self, commands: &[S]) -> Result<()> {
        let mut child = Command::new("ip")
            .args(["-n", &self.name, "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running `ip -batch` (is iproute2 installed? try `cargo xtask setup`)")?;
        {
            let mut stdin = child.stdin.take().context("ip -batch stdin")?;
            for command in commands {
                writeln!(stdin, "{}", command.as_ref())?;
            }
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "`ip -n {} -batch` failed ({}): {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// A veth pair with both ends in this namespace.
    pub fn add_veth(&self, name: &str, peer: &str) -> Result<()> {
        self.ip(&format!("link add {name} type veth peer name {peer}"))
    }

    /// Writes /proc/sys entries (`("net/ipv4/ip_forward", "1")`) as seen from inside
    /// the namespace: net sysctls are per namespace, resolved against the writing
    /// thread's namespace. `skip_missing` ignores entries the kernel does not have.
    pub fn set_sysctls(&self, entries: &[(&str, &str)], skip_missing: bool) -> Result<()> {
        let entries: Vec<(String, String)> = entries
            .iter()
            .map(|(k, v)| (format!("/proc/sys/{k}"), v.to_string()))
            .collect();
        self.run(move || -> Result<()> {
            for (path, value) in &entries {
                if skip_missing && !Path::new(path).exists() {
                    continue;
                }
                std::fs::write(path, value)
                    .with_context(|| format!("writing {value} to {path}"))?;
            }
            Ok(())
        })?
        .with_context(|| format!("setting sysctls in {}", self.name))
    }

    /// Runs `f` on a thread inside this namespace; see [`run_in_netns`].
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        run_in_netns(&self.name, f)
    }

    /// Like [`run`](Self::run), for tests: a failure to enter the namespace panics, and
    /// a panic in `f` is propagated to the caller.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.run(f)
            .unwrap_or_else(|e| panic!("entering namespace {}: {e:#}", self.name))
    }

    /// Keeps the namespace after this value is gone; returns its name.
    pub fn persist(self) -> String {
        let mut kept = std::mem::ManuallyDrop::new(self);
        std::mem::take(&mut kept.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete_netns(&self.name);
    }
}

/// A veth pair created directly inside the two namespaces, so the same interface name
/// (e.g. `eth0`) can be used in several of them.
pub fn add_veth_between(name: &str, ns: &Netns, peer: &str, peer_ns: &Netns) -> Result<()> {
    ip(&[
        "link",
        "add",
        name,
        "netns",
        ns.name(),
        "type",
        "veth",
        "peer",
        "name",
        peer,
        "netns",
        peer_ns.name(),
    ])
}

fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        bail!("invalid namespace name {name:?}");
    }
    Ok(())
}

/// `ip ARGS`; an error carries ip's stderr.
pub(crate) fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running `ip` (is iproute2 installed? try `cargo xtask setup`)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Run `f` on a fresh thread that has joined network namespace `ns`
/// (`setns(CLONE_NEWNET)` on `/var/run/netns/NS`) and return its result.
/// Sockets created by `f` stay in that namespace even when used elsewhere.
/// Errors if the namespace cannot be entered; a panic in `f` is propagated.
pub fn run_in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let thread = spawn_in_netns(ns, f)?;
    match thread.join() {
        Ok(result) => result.with_context(|| format!("setns into {NETNS_DIR}/{ns}")),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Starts `f` on a thread that has joined network namespace `ns` and returns at once:
/// for work that lives as long as a test step (traffic generators). The thread's
/// result is `Err` if it could not enter the namespace.
pub fn spawn_in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<thread::JoinHandle<io::Result<T>>> {
    validate_name(ns)?;
    let path = Path::new(NETNS_DIR).join(ns);
    let handle = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    thread::Builder::new()
        .name(format!("netns {ns}"))
        .spawn(move || -> io::Result<T> {
            // SAFETY: plain syscall on a valid, open fd. Only this thread
            // changes namespace (a network-namespace switch is per thread).
            let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            drop(handle);
            Ok(f())
        })
        .context("spawning a thread")
}

/// Names of all existing network namespaces.
pub fn list_netns() -> Vec<String> {
    let out = match Command::new("ip").args(["netns", "list"]).output() {
        Ok(o) if o.status.success() => o,
        _ => return Vec::new(),
    };
    // Lines look like "name (id: 3)" or just "name".
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Terminate what still runs in `ns`, then delete it. A process left inside
/// would keep the namespace (and its veths, XDP programs) alive anonymously.
/// Never panics (problems are printed to stderr).
pub fn delete_netns(ns: &str) {
    let own = std::process::id();
    let pids = |ns: &str| -> Vec<u32> {
        Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .filter(|&p| p != own)
                    .collect()
            })
            .unwrap_or_default()
    };
    let left = pids(ns);
    if !left.is_empty() {
        for &p in &left {
            let _ = send_signal(p, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut left = pids(ns);
        while !left.is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
            left = pids(ns);
        }
        for &p in &left {
            let _ = send_signal(p, libc::SIGKILL);
        }
    }
    match Command::new("ip")
        .args(["netns", "del", ns])
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!(
            "testbed: warning: `ip netns del {ns}` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => eprintln!("testbed: warning: running `ip netns del {ns}`: {e}"),
    }
}
