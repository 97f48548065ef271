//! Traffic that runs for as long as a test scenario does, and reports what broke: long-
//! lived TCP connections exchanging numbered messages, a stream of short HTTP
//! connections made by curl, and UDP request/response flows. The servers they talk to
//! are real tools (socat echo, nginx), started by the testbed.

use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};

use crate::netns::{run_in_netns, spawn_in_netns};

/// A long-lived connection that hears nothing back for this long is broken.
const ECHO_TIMEOUT: Duration = Duration::from_secs(30);

/// Length of each numbered message of a [`Chatter`] connection.
pub const MESSAGE_BYTES: usize = 64;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What one long-lived connection has done so far.
struct Progress {
    local_port: std::sync::atomic::AtomicU16,
    echoed: AtomicU64,
    /// Longest time without an echo, in ms, since the last [`Chatter::new_window`].
    max_gap_ms: AtomicU64,
    /// When the last echo came, in ms since the chatter started.
    last_echo_ms: AtomicU64,
    error: Mutex<Option<String>>,
}

/// Long-lived TCP connections, each sending a numbered message every `interval` and
/// checking every byte of every echo: the connections a scale-out step must not break.
pub struct Chatter {
    started: Instant,
    stop: Arc<AtomicBool>,
    progress: Vec<Arc<Progress>>,
    threads: Vec<JoinHandle<io::Result<()>>>,
}

/// A broken long-lived connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broken {
    pub connection: usize,
    pub local_port: u16,
    pub error: String,
}

/// The long-lived connections as they stand.
#[derive(Clone, Debug)]
pub struct ChatterReport {
    pub connections: usize,
    pub broken: Vec<Broken>,
    /// Echoes received, all connections together.
    pub echoed: u64,
    /// The fewest echoes any connection received.
    pub fewest_echoes: u64,
    /// The longest time any connection went without an echo in this window, the
    /// silence still going on included.
    pub max_gap: Duration,
    /// Connections silent (or broken) for longer than [`STALL`], now or in this window.
    pub stalled: usize,
}

/// A connection without an echo for this long has stalled.
pub const STALL: Duration = Duration::from_secs(1);

/// Message `n` of connection `id`: its numbers, then filler derived from them, so a
/// byte out of place anywhere shows.
pub fn chatter_message(id: usize, n: u64) -> [u8; MESSAGE_BYTES] {
    let mut message = [0u8; MESSAGE_BYTES];
    let head = format!("c{id:05} n{n:012} ");
    message[..head.len()].copy_from_slice(head.as_bytes());
    for (i, byte) in message.iter_mut().enumerate().skip(head.len()) {
        *byte = b'a' + ((id as u64 + n + i as u64) % 26) as u8;
    }
    message[MESSAGE_BYTES - 1] = b'\n';
    message
}

impl Chatter {
    /// Opens `connections` connections to `target` from `ns`, all at once, each
    /// starting its exchange as soon as it is open (an idle connection would meet the
    /// balancer's idle timeouts); returns when all are open, or the first error.
    pub fn start(
        ns: &str,
        target: SocketAddrV4,
        connections: usize,
        interval: Duration,
    ) -> Result<Chatter> {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let (opened, results) = std::sync::mpsc::channel();
        let mut progress = Vec::new();
        let mut threads = Vec::new();
        for id in 0..connections {
            let entry = Arc::new(Progress {
                local_port: std::sync::atomic::AtomicU16::new(0),
                echoed: AtomicU64::new(0),
                max_gap_ms: AtomicU64::new(0),
                last_echo_ms: AtomicU64::new(0),
                error: Mutex::new(None),
            });
            let (stop, mine, opened) = (stop.clone(), entry.clone(), opened.clone());
            let thread = spawn_in_netns(ns, move || {
                let stream =
                    match TcpStream::connect_timeout(&target.into(), Duration::from_secs(10)) {
                        Ok(stream) => stream,
                        Err(e) => {
                            let _ = opened.send(Err(format!(
                                "opening long-lived connection {id} to {target}: {e}"
                            )));
                            return;
                        }
                    };
                let port = stream.local_addr().map(|a| a.port()).unwrap_or(0);
                mine.local_port.store(port, Ordering::Relaxed);
                let _ = opened.send(Ok(()));
                if let Err(e) = exchange(stream, id, interval, started, &stop, &mine) {
                    *lock(&mine.error) = Some(format!("{e:#}"));
                }
            })?;
            threads.push(thread);
            progress.push(entry);
        }
        drop(opened);
        let chatter = Chatter {
            started,
            stop,
            progress,
            threads,
        };
        for _ in 0..connections {
            match results.recv_timeout(Duration::from_secs(15)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(anyhow!(e)),
                Err(_) => {
                    return Err(anyhow!(
                        "long-lived connections to {target} not open within 15 s"
                    ));
                }
            }
        }
        Ok(chatter)
    }

    /// Starts a new window for [`ChatterReport::max_gap`].
    pub fn new_window(&self) {
        for p in &self.progress {
            p.max_gap_ms.store(0, Ordering::Relaxed);
        }
    }

    pub fn report(&self) -> ChatterReport {
        let broken = self
            .progress
            .iter()
            .enumerate()
            .filter_map(|(connection, p)| {
                lock(&p.error).clone().map(|error| Broken {
                    connection,
                    local_port: p.local_port.load(Ordering::Relaxed),
                    error,
                })
            })
            .collect();
        let echoes = self
            .progress
            .iter()
            .map(|p| p.echoed.load(Ordering::Relaxed));
        let now_ms = self.started.elapsed().as_millis() as u64;
        let gaps: Vec<u64> = self
            .progress
            .iter()
            .map(|p| {
                let silent = now_ms.saturating_sub(p.last_echo_ms.load(Ordering::Relaxed));
                p.max_gap_ms.load(Ordering::Relaxed).max(silent)
            })
            .collect();
        let stall_ms = STALL.as_millis() as u64;
        ChatterReport {
            connections: self.progress.len(),
            stalled: gaps.iter().filter(|gap| **gap > stall_ms).count(),
            broken,
            echoed: echoes.clone().sum(),
            fewest_echoes: echoes.min().unwrap_or(0),
            max_gap: Duration::from_millis(gaps.into_iter().max().unwrap_or(0)),
        }
    }

    /// Client ports of the connections, in connection order.
    pub fn local_ports(&self) -> Vec<u16> {
        self.progress
            .iter()
            .map(|p| p.local_port.load(Ordering::Relaxed))
            .collect()
    }

    /// Stops every exchange (the connections close) and reports.
    pub fn stop(mut self) -> ChatterReport {
        self.halt();
        self.report()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Chatter {
    fn drop(&mut self) {
        self.halt();
    }
}

fn exchange(
    mut stream: TcpStream,
    id: usize,
    interval: Duration,
    started: Instant,
    stop: &AtomicBool,
    progress: &Progress,
) -> Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(ECHO_TIMEOUT))?;
    let mut last_echo = Instant::now();
    let mut echo = [0u8; MESSAGE_BYTES];
    for n in 0.. {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let message = chatter_message(id, n);
        stream
            .write_all(&message)
            .with_context(|| format!("sending message {n}"))?;
        stream
            .read_exact(&mut echo)
            .with_context(|| format!("waiting for the echo of message {n}"))?;
        if echo != message {
            return Err(anyhow!(
                "the echo of message {n} differs: {:?}",
                String::from_utf8_lossy(&echo)
            ));
        }
        let now = Instant::now();
        let gap = now.duration_since(last_echo).as_millis() as u64;
        progress.max_gap_ms.fetch_max(gap, Ordering::Relaxed);
        progress.echoed.fetch_add(1, Ordering::Relaxed);
        progress.last_echo_ms.store(
            now.duration_since(started).as_millis() as u64,
            Ordering::Relaxed,
        );
        last_echo = now;
        thread::sleep(interval.saturating_sub(now.elapsed()));
    }
    Ok(())
}

/// One failed short connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Since the stream started.
    pub at: Duration,
    pub error: String,
}

#[derive(Default)]
struct Attempts {
    succeeded: u64,
    failures: Vec<Failure>,
}

/// A steady stream of new HTTP connections made by curl (`Connection: close`, one
/// request each), sequential, one every `interval`.
pub struct NewConnections {
    stop: Arc<AtomicBool>,
    attempts: Arc<Mutex<Attempts>>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

/// The short connections since the last [`NewConnections::take`].
#[derive(Clone, Debug, Default)]
pub struct NewConnectionsReport {
    pub succeeded: u64,
    pub failures: Vec<Failure>,
}

impl NewConnectionsReport {
    pub fn attempts(&self) -> u64 {
        self.succeeded + self.failures.len() as u64
    }

    /// Succeeded share of the attempts, 1.0 when there were none.
    pub fn success_ratio(&self) -> f64 {
        match self.attempts() {
            0 => 1.0,
            attempts => self.succeeded as f64 / attempts as f64,
        }
    }
}

impl NewConnections {
    pub fn start(ns: &str, url: &str, interval: Duration) -> Result<NewConnections> {
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(Mutex::new(Attempts::default()));
        let (url, flag, record) = (url.to_string(), stop.clone(), attempts.clone());
        let thread = spawn_in_netns(ns, move || {
            let started = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                let begun = Instant::now();
                let outcome = curl_once(&url);
                let mut attempts = lock(&record);
                match outcome {
                    Ok(()) => attempts.succeeded += 1,
                    Err(error) => attempts.failures.push(Failure {
                        at: begun.duration_since(started),
                        error,
                    }),
                }
                drop(attempts);
                thread::sleep(interval.saturating_sub(begun.elapsed()));
            }
        })?;
        Ok(NewConnections {
            stop,
            attempts,
            thread: Some(thread),
        })
    }

    /// The attempts since the last call, and a fresh count.
    pub fn take(&self) -> NewConnectionsReport {
        let taken = std::mem::take(&mut *lock(&self.attempts));
        NewConnectionsReport {
            succeeded: taken.succeeded,
            failures: taken.failures,
        }
    }

    pub fn stop(mut self) -> NewConnectionsReport {
        self.halt();
        self.take()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for NewConnections {
    fn drop(&mut self) {
        self.halt();
    }
}

fn curl_once(url: &str) -> std::result::Result<(), String> {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Connection: close",
        ])
        .args(["--connect-timeout", "3", "--max-time", "5", url])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running curl: {e}"))?;
    let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && code == "200" {
        Ok(())
    } else {
        Err(format!(
            "curl {} (HTTP {code}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// UDP request/response flows: each from its own fixed source port, one numbered
/// request every `interval`, the reply expected within the next interval.
pub struct UdpFlows {
    stop: Arc<AtomicBool>,
    counts: Arc<Mutex<UdpCounts>>,
    thread: Option<JoinHandle<()>>,
}

/// Requests sent and answered, all flows together, since the last [`UdpFlows::take`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpCounts {
    pub sent: u64,
    pub answered: u64,
    /// Replies whose content does not end with the request (a misrouted or garbled one).
    pub wrong: u64,
}

impl UdpFlows {
    /// `flows` sockets bound in `ns` to consecutive ports from `first_port` on `source`.
    pub fn start(
        ns: &str,
        source: Ipv4Addr,
        first_port: u16,
        flows: u16,
        target: SocketAddrV4,
        interval: Duration,
    ) -> Result<UdpFlows> {
        let sockets = run_in_netns(ns, move || -> io::Result<Vec<UdpSocket>> {
            (0..flows)
                .map(|i| {
                    let socket = UdpSocket::bind(SocketAddrV4::new(source, first_port + i))?;
                    socket.connect(target)?;
                    socket.set_nonblocking(true)?;
                    Ok(socket)
                })
                .collect()
        })?
        .context("binding the UDP flows")?;
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new(UdpCounts::default()));
        let (flag, record) = (stop.clone(), counts.clone());
        let thread = thread::spawn(move || udp_loop(&sockets, interval, &flag, &record));
        Ok(UdpFlows {
            stop,
            counts,
            thread: Some(thread),
        })
    }

    pub fn take(&self) -> UdpCounts {
        std::mem::take(&mut *lock(&self.counts))
    }

    pub fn stop(mut self) -> UdpCounts {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.take()
    }
}

impl Drop for UdpFlows {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn udp_loop(
    sockets: &[UdpSocket],
    interval: Duration,
    stop: &AtomicBool,
    counts: &Mutex<UdpCounts>,
) {
    let mut buf = vec![0u8; 2048];
    for round in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let begun = Instant::now();
        let requests: Vec<Vec<u8>> = (0..sockets.len())
            .map(|flow| format!("flow {flow} request {round}").into_bytes())
            .collect();
        let mut sent = 0;
        for (socket, request) in sockets.iter().zip(&requests) {
            if socket.send(request).is_ok() {
                sent += 1;
            }
        }
        let mut answered = vec![false; sockets.len()];
        let mut wrong = 0;
        while begun.elapsed() < interval && answered.iter().any(|a| !a) {
            for (flow, socket) in sockets.iter().enumerate() {
                while let Ok(n) = socket.recv(&mut buf) {
                    // The echo server returns the request, the test servers prefix it.
                    if buf[..n].ends_with(&requests[flow]) {
                        answered[flow] = true;
                    } else if !String::from_utf8_lossy(&buf[..n])
                        .contains(&format!("flow {flow} request"))
                    {
                        wrong += 1;
                    }
                }
            }
            thread::sleep(Duration::from_millis(2));
        }
        let mut total = lock(counts);
        total.sent += sent;
        total.answered += answered.iter().filter(|a| **a).count() as u64;
        total.wrong += wrong;
        drop(total);
        thread::sleep(interval.saturating_sub(begun.elapsed()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_their_numbers_and_differ_everywhere() {
        let m = chatter_message(7, 42);
        assert!(m.starts_with(b"c00007 n000000000042 "));
        assert_eq!(m[MESSAGE_BYTES - 1], b'\n');
        assert_ne!(m, chatter_message(7, 43));
        assert_ne!(m, chatter_message(8, 42));
    }

    #[test]
    fn no_attempt_is_full_success() {
        assert_eq!(NewConnectionsReport::default().success_ratio(), 1.0);
        let half = NewConnectionsReport {
            succeeded: 1,
            failures: vec![Failure {
                at: Duration::ZERO,
                error: "x".into(),
            }],
        };
        assert_eq!(half.success_ratio(), 0.5);
    }

    /// The generators against socat echo servers over a namespace's loopback: every
    /// message echoed, nothing broken, every datagram answered.
    #[test]
    #[ignore = "needs root (creates a network namespace)"]
    fn the_generators_see_healthy_echo_servers_as_healthy() {
        let ns = crate::Netns::create("wl-selftest").unwrap();
        ns.ip("link set lo up").unwrap();
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9000);
        let spawn = |args: &[&str]| {
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            run_in_netns(ns.name(), move || {
                Command::new(&args[0])
                    .args(&args[1..])
                    .stdin(Stdio::null())
                    .spawn()
            })
            .unwrap()
            .unwrap()
        };
        let mut servers = [
            spawn(&[
                "socat",
                "TCP-LISTEN:9000,bind=127.0.0.1,reuseaddr,fork",
                "PIPE",
            ]),
            spawn(&["socat", "UDP-RECVFROM:9000,bind=127.0.0.1,fork", "PIPE"]),
        ];
        thread::sleep(Duration::from_millis(300));
        let chatter = Chatter::start(ns.name(), addr, 20, Duration::from_millis(50)).unwrap();
        let udp = UdpFlows::start(
            ns.name(),
            Ipv4Addr::LOCALHOST,
            40000,
            8,
            addr,
            Duration::from_millis(100),
        )
        .unwrap();
        thread::sleep(Duration::from_millis(1200));
        let report = chatter.stop();
        let counts = udp.stop();
        for server in &mut servers {
            let _ = server.kill();
            let _ = server.wait();
        }
        assert!(report.broken.is_empty(), "{:?}", report.broken);
        assert!(report.fewest_echoes >= 10, "{report:?}");
        assert!(report.max_gap < Duration::from_millis(500), "{report:?}");
        assert!(
            counts.sent >= 64 && counts.answered == counts.sent && counts.wrong == 0,
            "{counts:?}"
        );
    }
}
