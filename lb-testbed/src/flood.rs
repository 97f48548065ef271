//! A second client namespace that sends a spoofed SYN flood, and swallows the replies.
//!
//! ```text
//!  {p}-flood                 {p}-lb
//!  eth0 198.18.2.2 ──────── lb-fl 198.18.2.1   route 198.18.128.0/17 via 198.18.2.2
//! ```
//!
//! The flood's sources are random addresses of 198.18.128.0/17, which the testbed uses
//! nowhere else. The balancer routes every reply to them (its own cookie SYN-ACKs, the
//! servers' SYN-ACKs) back into `{p}-flood`, which owns none of them and forwards
//! nothing, so they are dropped there without an answer: like a real spoofed flood, no
//! RST ever closes a half-open connection. `lb-fl` must be in the balancer's `attach`
//! list, so the flood meets the XDP program, not the LB's own kernel.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use etherparse::PacketBuilder;

use crate::netns::{Netns, run_in_netns};
use crate::topology::{Role, Topology};

/// The flood namespace's address, and the LB's on that link.
pub const FLOOD_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
pub const LB_FLOOD_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
/// The LB's interface towards the flood namespace.
pub const LB_FLOOD_IF: &str = "lb-fl";
/// Where spoofed sources come from: 198.18.128.0/17.
pub const SPOOFED_NET: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 0);
pub const SPOOFED_PREFIX_LEN: u8 = 17;

/// Whether `ip` is one of the flood's spoofed sources.
pub fn is_spoofed(ip: Ipv4Addr) -> bool {
    u32::from(ip) >> (32 - SPOOFED_PREFIX_LEN)
        == u32::from(SPOOFED_NET) >> (32 - SPOOFED_PREFIX_LEN)
}

/// The flood namespace `{prefix}-flood` of a topology; deleted on drop.
pub struct Flooder {
    ns: Netns,
}

impl Flooder {
    /// Creates `{topology prefix}-flood` and wires it to the LB namespace. Call before
    /// the daemon starts, so that `lb-fl` exists when it attaches.
    pub fn attach(topo: &Topology) -> Result<Flooder> {
        let ns = Netns::create(&format!("{}-flood", topo.prefix))?;
        ns.set_sysctls(
            &[
                ("net/ipv6/conf/all/disable_ipv6", "1"),
                ("net/ipv6/conf/default/disable_ipv6", "1"),
                // Replies to spoofed sources are not for this host: never forwarded.
                ("net/ipv4/ip_forward", "0"),
            ],
            true,
        )?;
        let lb = topo.ns(Role::Lb);
        ns.ip(&format!(
            "link add eth0 type veth peer name {LB_FLOOD_IF} netns {lb}"
        ))?;
        ns.ip(&format!("addr add {FLOOD_IP}/24 dev eth0"))?;
        ns.ip("link set eth0 up")?;
        ns.ip(&format!("route add default via {LB_FLOOD_IP}"))?;
        let lb_ns = LbNs(lb.clone());
        lb_ns.ip(&format!("addr add {LB_FLOOD_IP}/24 dev {LB_FLOOD_IF}"))?;
        lb_ns.ip(&format!("link set {LB_FLOOD_IF} up"))?;
        lb_ns.ip(&format!(
            "route add {SPOOFED_NET}/{SPOOFED_PREFIX_LEN} via {FLOOD_IP}"
        ))?;
        // As on the LB's other interfaces (topology.rs): asymmetric paths are fine.
        run_in_netns(&lb, || -> Result<()> {
            for (key, value) in [("rp_filter", "0"), ("accept_local", "1")] {
                let path = format!("/proc/sys/net/ipv4/conf/{LB_FLOOD_IF}/{key}");
                std::fs::write(&path, value)
                    .with_context(|| format!("writing {value} to {path}"))?;
            }
            Ok(())
        })??;
        Ok(Flooder { ns })
    }

    pub fn ns(&self) -> &str {
        self.ns.name()
    }

    /// Sends spoofed SYNs to `target` at `rate` per second for `duration`, each from a
    /// random source address of 198.18.128.0/17 and port. Returns how many the kernel
    /// took (a full queue drops one now and then; the pace goes on).
    pub fn syn_flood(&self, target: SocketAddrV4, rate: u32, duration: Duration) -> Result<u64> {
        run_in_netns(self.ns.name(), move || send_flood(target, rate, duration))?
    }
}

/// `ip -n NAME` for a namespace known by name only.
struct LbNs(String);

impl LbNs {
    fn ip(&self, args: &str) -> Result<()> {
        let mut all = vec!["-n", self.0.as_str()];
        all.extend(args.split_whitespace());
        crate::netns::ip(&all)
    }
}

/// One spoofed SYN (IPv4 + TCP, MSS option, valid checksums), as a raw socket sends it.
pub fn spoofed_syn(src: Ipv4Addr, sport: u16, dst: SocketAddrV4, seq: u32) -> Vec<u8> {
    let builder = PacketBuilder::ipv4(src.octets(), dst.ip().octets(), 64)
        .tcp(sport, dst.port(), seq, 64240)
        .syn()
        .options(&[etherparse::TcpOptionElement::MaximumSegmentSize(1460)])
        .expect("an MSS option fits");
    let mut packet = Vec::with_capacity(builder.size(0));
    builder.write(&mut packet, &[]).expect("write to a Vec");
    packet
}

fn send_flood(target: SocketAddrV4, rate: u32, duration: Duration) -> Result<u64> {
    if rate == 0 {
        bail!("a flood needs a rate");
    }
    // SAFETY: plain socket syscalls on a socket this function owns and closes.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("raw socket");
    }
    let dst = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(*target.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // xorshift: a different source for every SYN, no dependency needed.
    let mut state = 0x2545_f491u32 ^ std::process::id();
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    let host_bits = (1u32 << (32 - SPOOFED_PREFIX_LEN)) - 1;
    let started = Instant::now();
    let total = u64::from(rate) * duration.as_millis() as u64 / 1000;
    let (mut due, mut sent) = (0u64, 0u64);
    while due < total {
        // Paced in 1 ms steps: what should have left by now, leaves now.
        let elapsed = started.elapsed();
        let now_due = (u64::from(rate) * elapsed.as_micros() as u64 / 1_000_000).min(total);
        while due < now_due {
            let random = next();
            let src = Ipv4Addr::from(u32::from(SPOOFED_NET) | (random & host_bits).max(1));
            let sport = 1024 + (next() % 64_000) as u16;
            let packet = spoofed_syn(src, sport, target, next());
            // SAFETY: valid buffer and address for the duration of the call.
            let rc = unsafe {
                libc::sendto(
                    fd,
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&raw const dst).cast(),
                    size_of::<libc::sockaddr_in>() as u32,
                )
            };
            if rc == packet.len() as isize {
                sent += 1;
            }
            due += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: the fd is ours.
    unsafe { libc::close(fd) };
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::ParsedTcp;

    #[test]
    fn spoofed_sources_are_the_reserved_block_only() {
        assert!(is_spoofed(Ipv4Addr::new(198, 18, 128, 1)));
        assert!(is_spoofed(Ipv4Addr::new(198, 18, 255, 254)));
        assert!(!is_spoofed(Ipv4Addr::new(198, 18, 0, 2)));
        assert!(!is_spoofed(Ipv4Addr::new(198, 19, 128, 1)));
    }

    #[test]
    fn a_spoofed_syn_is_a_valid_syn() {
        let target = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 10), 80);
        let packet = spoofed_syn(Ipv4Addr::new(198, 18, 130, 7), 4242, target, 99);
        // ParsedTcp reads frames: give it an Ethernet header.
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(&packet);
        crate::packet::assert_checksums_valid(&frame);
        let tcp = ParsedTcp::of(&frame);
        assert_eq!(tcp.src, Ipv4Addr::new(198, 18, 130, 7));
        assert_eq!(tcp.dst, *target.ip());
        assert_eq!(tcp.flags, crate::packet::F_SYN);
        assert_eq!(tcp.seq, 99);
    }
}
