//! The peer protocol's transport (docs/scale-out.md, "Peer protocol"): a listener for
//! the peers' connections, and one connector per configured peer that sends this
//! instance's hello, snapshot, sync-done, then live announcements and heartbeats. Nothing
//! here waits on a slow peer: its queue is bounded, and an overflow drops its connection
//! (it gets a fresh snapshot when it reconnects).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, mpsc, oneshot};

use super::membership::{Accepted, ConnId, Membership, PeersStatus, Reject, Settings};
use super::record::Announcement;
use super::wire::{self, Header, Message, MoveStep, PacketType};
use crate::cluster::{agent::random_instance, frame::ClusterKey, router::wall_ms};
use crate::config::{PeerConfig, PeersConfig};
use crate::sync::lock;

/// Live announcements queued for one peer at most; beyond, its connection is dropped.
pub const QUEUE_LIMIT: usize = 65_536;
/// A live announcement waits at most this long for more to share its message.
pub const FLUSH_AFTER: Duration = Duration::from_millis(5);
/// Received batches waiting for the controller; beyond, readers wait (and the sending
/// peer's queue fills, which drops its connection).
const INBOX_LIMIT: usize = 1024;
/// Reconnect delays: doubled from the first to the last after each failure.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Open incoming connections beyond the peers' own (each may have a superseded one
/// for a moment) that are tolerated: more are closed at once, so strangers opening
/// connections cannot pile up readers.
const SPARE_CONNECTIONS: usize = 16;

/// What the peers ask of the controller.
#[derive(Debug)]
pub enum PeerInput {
    /// A batch from peer `from`, to apply (docs/scale-out.md, "Who may change what").
    /// `sent_ms`: its timestamp, when live (not part of a snapshot).
    Announcements {
        from: u16,
        batch: Vec<Announcement>,
        sent_ms: Option<u64>,
    },
    /// A connection to a peer starts: the flows this instance owns and those of owners
    /// it sees as down (`PeersStatus::live_nodes`). Dropping `reply` sends none.
    SnapshotWanted {
        reply: oneshot::Sender<Vec<Announcement>>,
    },
    /// Answered once every input before it has been handled: a peer's snapshot is in
    /// the flow table when it is.
    Applied { reply: oneshot::Sender<()> },
    /// A step of a VIP move from peer `from` (after every batch it sent before it).
    Move { from: u16, step: MoveStep },
    /// The owned VIPs peer `from` announces as primary.
    Claims {
        from: u16,
        claims: Vec<(Ipv4Addr, u64)>,
    },
}

/// The controller's end: what the peers ask of it.
pub type PeerInbox = mpsc::Receiver<PeerInput>;

/// One peer's outgoing side as the handle and its connector share it.
struct Outbox {
    config: PeerConfig,
    /// With when each was queued: a record's age grows while it waits.
    queue: Mutex<VecDeque<(Instant, Announcement)>>,
    /// Move steps, sent once the announcements queued before them are.
    moves: Mutex<VecDeque<MoveStep>>,
    /// A connection is past its hello: announcements are queued (before, the next
    /// snapshot covers them).
    active: AtomicBool,
    /// Drop the connection and start over (queue overflow, peer restarted).
    resync: AtomicBool,
    wake: Notify,
}

struct Shared {
    settings: Settings,
    membership: Mutex<Membership>,
    key: ClusterKey,
    instance: u64,
    /// One counter for every message to every peer, so each peer sees it rise.
    sequence: AtomicU64,
    announce: bool,
    own_snat: Vec<Ipv4Addr>,
    outboxes: Vec<Arc<Outbox>>,
    /// The owned VIPs this instance announces as primary, for its heartbeats.
    claims: Mutex<Vec<(Ipv4Addr, u64)>>,
    /// Readers of incoming connections, to close one from elsewhere.
    readers: Mutex<HashMap<ConnId, tokio::task::AbortHandle>>,
    inbox: mpsc::Sender<PeerInput>,
}

/// The daemon's end of the running protocol. Cheap to clone; never blocks.
#[derive(Clone)]
pub struct PeersHandle {
    shared: Arc<Shared>,
    tasks: Arc<Vec<tokio::task::AbortHandle>>,
}

pub struct Peers;

impl Peers {
    /// Binds `config.listen` and starts the listener and the connectors on the current
    /// tokio runtime. Fails (nothing started) if the address cannot be bound or the key
    /// is short.
    pub fn start(
        config: &PeersConfig,
        key: Vec<u8>,
        own_snat: Vec<Ipv4Addr>,
    ) -> Result<(PeersHandle, PeerInbox)> {
        let key = ClusterKey::new(&key).map_err(|e| anyhow::anyhow!("peers.key_file: {e}"))?;
        let listener = bind_listener(config.listen)
            .with_context(|| format!("peers.listen: cannot listen on {}", config.listen))?;
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let settings = Settings::from_config(config);
        let (inbox_tx, inbox) = mpsc::channel(INBOX_LIMIT);
        let outboxes = config
            .members
            .iter()
            .map(|peer| {
                Arc::new(Outbox {
                    config: peer.clone(),
                    queue: Mutex::new(VecDeque::new()),
                    moves: Mutex::new(VecDeque::new()),
                    active: AtomicBool::new(false),
                    resync: AtomicBool::new(false),
                    wake: Notify::new(),
                })
            })
            .collect();
        let shared = Arc::new(Shared {
            membership: Mutex::new(Membership::new(settings.clone(), Instant::now())),
            settings,
            key,
            instance: random_instance(),
            // Seeded from the clock so it keeps rising across restarts.
            sequence: AtomicU64::new(wall_ms().saturating_mul(1000)),
            announce: config.announce,
            own_snat,
            outboxes,
            claims: Mutex::new(Vec::new()),
            readers: Mutex::new(HashMap::new()),
            inbox: inbox_tx,
        });
        let mut tasks = vec![
            tokio::spawn(listen(shared.clone(), listener)).abort_handle(),
            tokio::spawn(expire(shared.clone())).abort_handle(),
        ];
        for outbox in &shared.outboxes {
            tasks.push(tokio::spawn(connector(shared.clone(), outbox.clone())).abort_handle());
        }
        log::info!(
            "peers: node {} of cluster {}, listening on {}, {} peers",
            config.node_id,
            config.cluster_id,
            config.listen,
            config.members.len()
        );
        Ok((
            PeersHandle {
                shared,
                tasks: Arc::new(tasks),
            },
            inbox,
        ))
    }
}

/// Binds `listen`. An address in use is tried again for a moment: a daemon handing over
/// (`lb run --replace`) may still be closing its listener.
fn bind_listener(listen: SocketAddrV4) -> std::io::Result<std::net::TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match std::net::TcpListener::bind(listen) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            result => return result,
        }
    }
}

impl PeersHandle {
    /// Queues `batch` for every peer connected now. A full queue drops that peer's
    /// connection (counted); nothing waits.
    pub fn announce(&self, batch: Vec<Announcement>) {
        if !self.shared.announce || batch.is_empty() {
            return;
        }
        for outbox in &self.shared.outboxes {
            if !outbox.active.load(Ordering::Acquire) {
                continue;
            }
            let mut queue = lock(&outbox.queue);
            if queue.len() + batch.len() > QUEUE_LIMIT {
                queue.clear();
                drop(queue);
                outbox.resync.store(true, Ordering::Release);
                lock(&self.shared.membership).count_overflow(batch.len() as u64);
            } else {
                let now = Instant::now();
                queue.extend(batch.iter().map(|a| (now, *a)));
            }
            outbox.wake.notify_one();
        }
    }

    /// Queues `batch` for peer `node` alone (a VIP move's stream). False if its
    /// connection is not up or its queue is full (the move's timers then act).
    pub fn announce_to(&self, node: u16, batch: Vec<Announcement>) -> bool {
        let Some(outbox) = self.outbox(node) else {
            return false;
        };
        let mut queue = lock(&outbox.queue);
        if queue.len() + batch.len() > QUEUE_LIMIT {
            return false;
        }
        let now = Instant::now();
        queue.extend(batch.into_iter().map(|a| (now, a)));
        drop(queue);
        outbox.wake.notify_one();
        true
    }

    /// Queues a move step for peer `node`, behind what is queued for it already. False
    /// if its connection is not up.
    pub fn send_move(&self, node: u16, step: MoveStep) -> bool {
        let Some(outbox) = self.outbox(node) else {
            return false;
        };
        lock(&outbox.moves).push_back(step);
        outbox.wake.notify_one();
        true
    }

    /// The owned VIPs this instance announces as primary, claimed in its heartbeats.
    pub fn set_claims(&self, claims: Vec<(Ipv4Addr, u64)>) {
        *lock(&self.shared.claims) = claims;
    }

    fn outbox(&self, node: u16) -> Option<&Arc<Outbox>> {
        self.shared
            .outboxes
            .iter()
            .find(|o| o.config.node_id == node && o.active.load(Ordering::Acquire))
    }

    pub fn status(&self) -> PeersStatus {
        let mut membership = lock(&self.shared.membership);
        for outbox in &self.shared.outboxes {
            let queued = lock(&outbox.queue).len() as u64;
            membership.set_queued(outbox.config.node_id, queued);
        }
        membership.status(Instant::now())
    }

    /// From now on, this instance's heartbeats say draining.
    pub fn set_draining(&self) {
        lock(&self.shared.membership).set_draining();
    }

    /// Flows per owner in the local table (for `lb peers`).
    pub fn set_flows_held(&self, by_owner: &BTreeMap<u16, u64>) {
        lock(&self.shared.membership).set_flows_held(by_owner);
    }

    /// Announcements the controller applied.
    /// What the controller did with a batch, and the install lags (ms) of the new flows
    /// a live batch brought.
    pub fn count_applied(
        &self,
        stats: &crate::peers::install::ApplyStats,
        install_lags: impl IntoIterator<Item = u64>,
    ) {
        use crate::peers::membership::Reject;
        let mut membership = lock(&self.shared.membership);
        membership.record_install_lags(install_lags);
        membership.count_applied(
            stats.installed + stats.updated + stats.removed + stats.touched + stats.unchanged,
        );
        let refused = &stats.rejected;
        for (reason, count) in [
            (Reject::UnknownService, refused.unknown_service),
            (Reject::UnknownBackend, refused.unknown_backend),
            (Reject::OwnedByReceiver, refused.owned_by_receiver),
            (Reject::OwnerMismatch, refused.owner_mismatch),
        ] {
            if count > 0 {
                membership.reject(reason, count);
            }
        }
    }

    /// Stops every task; connections close.
    pub fn stop(&self) {
        for task in self.tasks.iter() {
            task.abort();
        }
        for (_, reader) in lock(&self.shared.readers).drain() {
            reader.abort();
        }
    }
}

impl Shared {
    fn message(&self, packet_type: PacketType, to: &PeerConfig) -> Message {
        let state = matches!(packet_type, PacketType::Hello | PacketType::Heartbeat)
            .then(|| lock(&self.membership).own_state(Instant::now()));
        Message {
            header: Header {
                source: *self.settings.listen.ip(),
                destination: *to.address.ip(),
                cluster_id: self.settings.cluster_id,
                packet_type,
                from_node: self.settings.node_id,
                to_node: to.node_id,
            },
            sequence: self.sequence.fetch_add(1, Ordering::Relaxed) + 1,
            timestamp_ms: wall_ms(),
            instance: self.instance,
            state,
            snat: if packet_type == PacketType::Hello {
                self.own_snat.clone()
            } else {
                Vec::new()
            },
            announcements: Vec::new(),
            move_step: None,
            claims: if packet_type == PacketType::Heartbeat {
                lock(&self.claims).clone()
            } else {
                Vec::new()
            },
        }
    }

    fn framed(&self, message: &Message) -> Result<Vec<u8>> {
        let bytes = wire::encode(message, &self.key).map_err(|e| anyhow::anyhow!(e))?;
        Ok(wire::framed(&bytes))
    }

    fn close_reader(&self, conn: ConnId) {
        if let Some(reader) = lock(&self.readers).remove(&conn) {
            reader.abort();
        }
        lock(&self.membership).closed(conn, Instant::now());
    }
}

async fn listen(shared: Arc<Shared>, listener: TcpListener) {
    let mut next: ConnId = 0;
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                log::warn!("peers: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let SocketAddr::V4(from) = from else {
            continue;
        };
        // Hold the lock over the spawn, so the reader's own removal comes after.
        let mut readers = lock(&shared.readers);
        if readers.len() >= 2 * shared.outboxes.len() + SPARE_CONNECTIONS {
            drop(readers);
            lock(&shared.membership).count_refused_connection();
            log::debug!("peers: too many open connections, closed one from {from}");
            continue;
        }
        next += 1;
        let conn = next;
        lock(&shared.membership).accepted(conn, *from.ip());
        let task = tokio::spawn(read(shared.clone(), conn, from, stream));
        readers.insert(conn, task.abort_handle());
    }
}

/// Reads one incoming connection until it closes, misbehaves or falls silent.
async fn read(shared: Arc<Shared>, conn: ConnId, from: SocketAddrV4, mut stream: TcpStream) {
    let dead_after = shared.settings.dead_after;
    let why = loop {
        let mut prefix = [0u8; wire::LENGTH_PREFIX];
        match tokio::time::timeout(dead_after, stream.read_exact(&mut prefix)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => break "closed".to_string(),
            Err(_) => break "silent".to_string(),
        }
        let length = match wire::check_length(u32::from_be_bytes(prefix)) {
            Ok(length) => length,
            Err(e) => {
                lock(&shared.membership).reject(Reject::of(&e), 1);
                break e.to_string();
            }
        };
        let mut bytes = vec![0u8; length];
        match tokio::time::timeout(dead_after, stream.read_exact(&mut bytes)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => break "closed".to_string(),
            Err(_) => break "silent".to_string(),
        }
        let decoded = wire::decode(&bytes, &shared.key, shared.settings.cluster_id);
        let judged = lock(&shared.membership).receive(conn, decoded, wall_ms(), Instant::now());
        match judged {
            Ok(Accepted::Nothing) => {}
            Ok(Accepted::Hello {
                node,
                superseded,
                restarted,
            }) => {
                if let Some(old) = superseded
                    && let Some(reader) = lock(&shared.readers).remove(&old)
                {
                    reader.abort();
                }
                if restarted
                    && let Some(outbox) = shared.outboxes.iter().find(|o| o.config.node_id == node)
                {
                    // A new instance has none of our flows: send it a snapshot.
                    outbox.resync.store(true, Ordering::Release);
                    outbox.wake.notify_one();
                }
                log::info!("peers: node {node} connected from {from}");
            }
            Ok(Accepted::Announcements {
                from,
                batch,
                sent_ms,
            }) => {
                if shared
                    .inbox
                    .send(PeerInput::Announcements {
                        from,
                        batch,
                        sent_ms,
                    })
                    .await
                    .is_err()
                {
                    break "daemon gone".to_string();
                }
            }
            Ok(Accepted::Move { from, step }) => {
                if shared
                    .inbox
                    .send(PeerInput::Move { from, step })
                    .await
                    .is_err()
                {
                    break "daemon gone".to_string();
                }
            }
            Ok(Accepted::Claims { from, claims }) => {
                if shared
                    .inbox
                    .send(PeerInput::Claims { from, claims })
                    .await
                    .is_err()
                {
                    break "daemon gone".to_string();
                }
            }
            Ok(Accepted::SyncDone) => {
                let (reply, applied) = oneshot::channel();
                if shared
                    .inbox
                    .send(PeerInput::Applied { reply })
                    .await
                    .is_err()
                    || applied.await.is_err()
                {
                    break "daemon gone".to_string();
                }
                lock(&shared.membership).synced(conn, Instant::now());
            }
            Err(reason) => break format!("dropped a message ({})", reason.name()),
        }
    };
    log::debug!("peers: connection {conn} from {from} closed: {why}");
    lock(&shared.readers).remove(&conn);
    lock(&shared.membership).closed(conn, Instant::now());
}

/// Closes the connections of peers silent beyond `dead_after`.
async fn expire(shared: Arc<Shared>) {
    let mut ticker = tokio::time::interval(shared.settings.dead_after / 4);
    loop {
        ticker.tick().await;
        let silent = lock(&shared.membership).expire(Instant::now());
        for conn in silent {
            log::info!("peers: connection {conn} silent beyond dead_after, closed");
            shared.close_reader(conn);
        }
    }
}

/// Keeps this instance's connection to one peer: connect (with backoff), hello,
/// snapshot, sync-done, then live announcements and heartbeats until it breaks.
async fn connector(shared: Arc<Shared>, outbox: Arc<Outbox>) {
    let node = outbox.config.node_id;
    let mut backoff = BACKOFF_FIRST;
    loop {
        let result = session(&shared, &outbox).await;
        outbox.active.store(false, Ordering::Release);
        lock(&outbox.queue).clear();
        lock(&outbox.moves).clear();
        lock(&shared.membership).outgoing(node, false, Instant::now());
        match result {
            // It reached live announcements: start over quickly.
            Ok(()) => backoff = BACKOFF_FIRST,
            Err(e) => {
                log::debug!("peers: to node {node}: {e:#}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// One connection's life. `Ok` once it got to live announcements and then ended.
async fn session(shared: &Shared, outbox: &Outbox) -> Result<()> {
    let peer = &outbox.config;
    let dead_after = shared.settings.dead_after;
    let socket = TcpSocket::new_v4()?;
    // Leave from the listen address: the peer checks that it is ours.
    socket.bind(SocketAddr::new((*shared.settings.listen.ip()).into(), 0))?;
    let mut stream = tokio::time::timeout(dead_after, socket.connect(peer.address.into()))
        .await
        .context("connect timed out")?
        .context("connect")?;
    stream.set_nodelay(true)?;
    lock(&shared.membership).outgoing(peer.node_id, true, Instant::now());
    outbox.resync.store(false, Ordering::Release);
    outbox.active.store(true, Ordering::Release);
    let mut heartbeat = tokio::time::interval(dead_after / 4);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: the hello counts as it.
    heartbeat.tick().await;
    let hello = shared.framed(&shared.message(PacketType::Hello, peer))?;
    write_with_timeout(&mut stream, &hello, dead_after).await?;
    // The owned-VIP claims before the snapshot: a peer that restarted with its config's
    // placement learns who owns what before it is ready to announce.
    if !lock(&shared.claims).is_empty() {
        let claims = shared.framed(&shared.message(PacketType::Heartbeat, peer))?;
        write_with_timeout(&mut stream, &claims, dead_after).await?;
    }
    if shared.announce {
        let (reply, answer) = oneshot::channel();
        shared
            .inbox
            .send(PeerInput::SnapshotWanted { reply })
            .await
            .ok()
            .context("daemon gone")?;
        // The controller may take a while (starting, or a large flow table): keep
        // the peer hearing from us meanwhile, or it would count us down.
        tokio::pin!(answer);
        let snapshot = loop {
            tokio::select! {
                reply = &mut answer => break reply.unwrap_or_default(),
                _ = heartbeat.tick() => {
                    let bytes = shared.framed(&shared.message(PacketType::Heartbeat, peer))?;
                    write_with_timeout(&mut stream, &bytes, dead_after).await?;
                }
            }
        };
        let (count, mut bytes) = (snapshot.len() as u64, 0);
        for chunk in snapshot.chunks(wire::MAX_ANNOUNCEMENTS) {
            let mut message = shared.message(PacketType::Announcements, peer);
            message.announcements = chunk.to_vec();
            let framed = shared.framed(&message)?;
            write_with_timeout(&mut stream, &framed, dead_after).await?;
            bytes += framed.len() as u64;
        }
        lock(&shared.membership).count_sent(count, bytes);
    }
    let done = shared.framed(&shared.message(PacketType::SyncDone, peer))?;
    write_with_timeout(&mut stream, &done, dead_after).await?;
    log::info!("peers: synced to node {} at {}", peer.node_id, peer.address);

    let (mut read_half, mut write_half) = stream.into_split();
    let mut scratch = [0u8; 64];
    loop {
        if outbox.resync.load(Ordering::Acquire) {
            return Ok(());
        }
        tokio::select! {
            _ = heartbeat.tick() => {
                let bytes = shared.framed(&shared.message(PacketType::Heartbeat, peer))?;
                write_with_timeout(&mut write_half, &bytes, dead_after).await?;
            }
            () = outbox.wake.notified() => {
                // Let a few more gather, unless a message is full already.
                if lock(&outbox.queue).len() < wire::MAX_ANNOUNCEMENTS {
                    tokio::time::sleep(FLUSH_AFTER).await;
                }
                loop {
                    let batch: Vec<Announcement> = {
                        let mut queue = lock(&outbox.queue);
                        let n = queue.len().min(wire::MAX_ANNOUNCEMENTS);
                        queue.drain(..n).map(|(queued, a)| aged(a, queued.elapsed())).collect()
                    };
                    if batch.is_empty() {
                        break;
                    }
                    let count = batch.len() as u64;
                    let mut message = shared.message(PacketType::Announcements, peer);
                    message.announcements = batch;
                    let framed = shared.framed(&message)?;
                    write_with_timeout(&mut write_half, &framed, dead_after).await?;
                    lock(&shared.membership).count_sent(count, framed.len() as u64);
                }
                // Move steps after the announcements queued before them (a stream's
                // batches before its stream-done).
                loop {
                    let Some(step) = lock(&outbox.moves).pop_front() else { break };
                    let mut message = shared.message(PacketType::Move, peer);
                    message.move_step = Some(step);
                    write_with_timeout(&mut write_half, &shared.framed(&message)?, dead_after)
                        .await?;
                }
            }
            // The peer never writes on this connection: anything is an end.
            _ = read_half.read(&mut scratch) => return Ok(()),
        }
    }
}

/// `announcement` with `waited` added to its record's age: the receiver dates the flow's
/// creation from the message's timestamp minus the age.
fn aged(mut announcement: Announcement, waited: Duration) -> Announcement {
    let waited_ms = u32::try_from(waited.as_millis()).unwrap_or(u32::MAX);
    announcement.record.age_ms = announcement.record.age_ms.saturating_add(waited_ms);
    announcement
}

async fn write_with_timeout(
    write: &mut (impl tokio::io::AsyncWrite + Unpin),
    bytes: &[u8],
    limit: Duration,
) -> Result<()> {
    tokio::time::timeout(limit, write.write_all(bytes))
        .await
        .context("write timed out")?
        .context("write")
}
