//! One backend's test server: an HTTP acceptor thread and a UDP responder thread whose
//! sockets were bound inside the server's namespace, with counters that outlive a
//! stop/start.

use std::net::{TcpListener, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::Result;

use crate::{http_server, udp};

/// How often the server threads look at their stop flag.
pub(crate) const SERVER_POLL: Duration = Duration::from_millis(50);

/// Per-server counters, kept across `stop_server`/`start_server`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    pub tcp_connections: u64,
    pub http_requests: u64,
    pub udp_datagrams: u64,
}

/// The live counters behind [`ServerStats`], shared with the serving threads.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) tcp_connections: AtomicU64,
    pub(crate) http_requests: AtomicU64,
    pub(crate) udp_datagrams: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> ServerStats {
        ServerStats {
            tcp_connections: self.tcp_connections.load(Ordering::Relaxed),
            http_requests: self.http_requests.load(Ordering::Relaxed),
            udp_datagrams: self.udp_datagrams.load(Ordering::Relaxed),
        }
    }
}

/// One running test server (HTTP acceptor thread + UDP responder thread).
pub(crate) struct TestServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl TestServer {
    /// Serves HTTP on `listener` and answers datagrams on `udp` as server `name`
    /// (`s1`..), until [`stop`](Self::stop).
    pub(crate) fn spawn(
        name: String,
        listener: TcpListener,
        udp: UdpSocket,
        counters: Arc<Counters>,
    ) -> Result<TestServer> {
        let stop = Arc::new(AtomicBool::new(false));
        listener.set_nonblocking(true)?;
        udp.set_read_timeout(Some(SERVER_POLL))?;
        let http = {
            let (stop, name, counters) = (stop.clone(), name.clone(), counters.clone());
            thread::Builder::new()
                .name(format!("{name} http"))
                .spawn(move || http_server::accept_loop(listener, &name, &stop, &counters))?
        };
        let udp = {
            let (stop, name) = (stop.clone(), name.clone());
            thread::Builder::new()
                .name(format!("{name} udp"))
                .spawn(move || udp::serve_loop(udp, &name, &stop, &counters))?
        };
        Ok(TestServer {
            stop,
            threads: vec![http, udp],
        })
    }

    /// Closes the listeners and open connections and joins the threads.
    pub(crate) fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            // A panicking server thread has nothing left to clean up.
            let _ = t.join();
        }
    }
}
