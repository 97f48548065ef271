//! Runs a [`RouterEngine`] on a UDP socket: received datagrams in, answers out, and a
//! tick every half heartbeat interval. The daemon owns the engine behind a mutex so its
//! API can read the table while this loop runs.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::Result;
use log::warn;
use tokio::net::UdpSocket;

use super::{
    router::{Clock, Outgoing, RouterEngine},
    wire,
};
use crate::sync::lock;

/// Serves until `shutdown` completes. The socket should be bound to `0.0.0.0:port` on the
/// nodes' segment so that broadcast joins arrive.
pub async fn serve(
    socket: UdpSocket,
    engine: Arc<Mutex<RouterEngine>>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let interval = lock(&engine).settings().heartbeat_interval;
    let mut ticker = tokio::time::interval(interval / 2);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One byte more than the limit, so an oversized datagram is seen as such.
    let mut buf = vec![0u8; wire::MAX_DATAGRAM + 1];
    tokio::pin!(shutdown);
    loop {
        let out: Vec<Outgoing> = tokio::select! {
            () = &mut shutdown => return Ok(()),
            _ = ticker.tick() => lock(&engine).tick(Clock::system()),
            received = socket.recv_from(&mut buf) => match received {
                Ok((len, SocketAddr::V4(from))) => lock(&engine)
                    .handle_datagram(&buf[..len], from, Clock::system()),
                Ok(_) => continue,
                Err(e) => {
                    warn!("cluster: receive: {e}");
                    continue;
                }
            },
        };
        for o in out {
            if let Err(e) = socket.send_to(&o.datagram, o.to).await {
                warn!("cluster: send to {}: {e}", o.to);
            }
        }
    }
}
