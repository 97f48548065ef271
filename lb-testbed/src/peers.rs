//! Two (or more) balancer instances as peers (docs/scale-out.md, "Peer protocol"): one
//! namespace per instance, all joined by veths to a bridge namespace on the peers'
//! segment, each with a veth pair of its own for the XDP program to attach to (so the
//! peers' TCP never crosses it). [`PeerNet`] deletes everything on drop, stopping the
//! processes it started first. Needs root.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context as _, Result};

use crate::lock;
use crate::netns::{Netns, add_veth_between};
use crate::process::{netns_command, send_signal, terminate_child};

/// Address of instance `i` (0-based) on the peers' segment, 198.18.77.0/24.
pub fn peer_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 77, 1 + i as u8)
}

/// Interface each instance's XDP program attaches to (a veth whose peer stays in the
/// same namespace).
pub const XDP_IFACE: &str = "px0";

/// MAC address of instance `i`'s [`XDP_IFACE`] (fixed, so a test can address frames to it).
pub fn xdp_mac(i: usize) -> String {
    format!("02:00:00:00:77:{:02x}", i + 1)
}

/// The namespaces of `count` instances and their segment.
pub struct PeerNet {
    /// Instance namespaces, `<prefix>n0`, `<prefix>n1`, ...
    pub nodes: Vec<Netns>,
    /// Holds the bridge of the segment.
    _switch: Netns,
    children: Mutex<Vec<Child>>,
}

impl PeerNet {
    pub fn up(prefix: &str, count: usize) -> Result<PeerNet> {
        let switch = Netns::create(&format!("{prefix}sw"))?;
        switch.ip("link add br0 type bridge")?;
        switch.ip("link set br0 up")?;
        let mut nodes = Vec::new();
        for i in 0..count {
            let ns = Netns::create(&format!("{prefix}n{i}"))?;
            add_veth_between("eth0", &ns, &format!("p{i}"), &switch)?;
            switch.ip(&format!("link set p{i} master br0"))?;
            switch.ip(&format!("link set p{i} up"))?;
            ns.ip(&format!("addr add {}/24 dev eth0", peer_ip(i)))?;
            ns.ip("link set eth0 up")?;
            ns.ip(&format!(
                "link add {XDP_IFACE} address {} type veth peer name px1",
                xdp_mac(i)
            ))?;
            ns.ip(&format!("link set {XDP_IFACE} up"))?;
            ns.ip("link set px1 up")?;
            // Frames sent out of px1 carry full checksums (veth would leave them to an
            // offload that never happens, and the XDP program checks them).
            let status = netns_command(ns.name(), &["ethtool", "-K", "px1", "tx", "off"])?
                .stdout(Stdio::null())
                .status()
                .context("running ethtool")?;
            if !status.success() {
                anyhow::bail!("ethtool -K px1 tx off failed in {}", ns.name());
            }
            nodes.push(ns);
        }
        Ok(PeerNet {
            nodes,
            _switch: switch,
            children: Mutex::new(Vec::new()),
        })
    }

    /// Starts `args` in instance `i`'s namespace, output to `log`; returns its PID.
    pub fn spawn(&self, i: usize, args: &[&str], log: &Path) -> Result<u32> {
        let file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = netns_command(self.nodes[i].name(), args)?;
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let mut children = lock(&self.children);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", args.join(" ")))?;
        let pid = child.id();
        children.push(child);
        Ok(pid)
    }

    /// Sends `signal` to a process this value started (and has not stopped).
    pub fn signal(&self, pid: u32, signal: libc::c_int) -> Result<()> {
        let children = lock(&self.children);
        let child = children
            .iter()
            .find(|c| c.id() == pid)
            .with_context(|| format!("pid {pid} was not started here"))?;
        Ok(send_signal(child.id(), signal)?)
    }

    /// SIGTERM (SIGKILL after 5 s) and reap a process this value started.
    pub fn stop(&self, pid: u32) {
        let mut children = lock(&self.children);
        if let Some(at) = children.iter().position(|c| c.id() == pid) {
            let mut child = children.remove(at);
            // A stopped process cannot act on SIGTERM.
            let _ = send_signal(pid, libc::SIGCONT);
            terminate_child(&mut child, Duration::from_secs(5));
        }
    }

    /// Whether a process this value started has exited.
    pub fn exited(&self, pid: u32) -> bool {
        let mut children = lock(&self.children);
        children
            .iter_mut()
            .find(|c| c.id() == pid)
            .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
    }
}

impl Drop for PeerNet {
    fn drop(&mut self) {
        let children = std::mem::take(&mut *lock(&self.children));
        for mut child in children {
            let _ = send_signal(child.id(), libc::SIGCONT);
            terminate_child(&mut child, Duration::from_secs(5));
        }
        // The namespaces go with their fields.
    }
}
