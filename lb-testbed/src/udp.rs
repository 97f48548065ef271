//! UDP traffic: the test servers' echo responder and a one-shot client request.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::netns::run_in_netns;
use crate::server::Counters;

/// Answers each datagram with `{name}:` + the datagram until `stop`.
pub(crate) fn serve_loop(sock: UdpSocket, name: &str, stop: &AtomicBool, counters: &Counters) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::SeqCst) {
        match sock.recv_from(&mut buf) {
            Ok((n, peer)) => {
                counters.udp_datagrams.fetch_add(1, Ordering::Relaxed);
                // Oversized replies fail with EMSGSIZE; nothing to do then.
                let _ = sock.send_to(&udp_reply(name, &buf[..n]), peer);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            // E.g. a queued ICMP error from an earlier reply; keep serving.
            Err(_) => thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// The UDP responder's answer to `datagram`: `s{idx}:` followed by it.
pub fn udp_reply(server_name: &str, datagram: &[u8]) -> Vec<u8> {
    let mut reply = Vec::with_capacity(server_name.len() + 1 + datagram.len());
    reply.extend_from_slice(server_name.as_bytes());
    reply.push(b':');
    reply.extend_from_slice(datagram);
    reply
}
/// Send one UDP datagram from inside `ns` and wait up to `timeout` for the reply.
pub fn udp_request(
    ns: &str,
    addr: SocketAddrV4,
    payload: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>> {
    let payload = payload.to_vec();
    run_in_netns(ns, move || -> Result<Vec<u8>> {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        s.connect(addr)?;
        s.set_read_timeout(Some(timeout))?;
        s.send(&payload)?;
        let mut buf = vec![0u8; 65536];
        let n = s
            .recv(&mut buf)
            .with_context(|| format!("waiting for a UDP reply from {addr}"))?;
        buf.truncate(n);
        Ok(buf)
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_reply_format() {
        assert_eq!(udp_reply("s3", b"ping"), b"s3:ping");
    }
}
