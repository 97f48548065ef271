//! The daemon's event loop: operator API, metrics endpoint, health probes, cluster
//! router, GC, signals, and the hand-over to a replacing daemon.

use super::*;

pub(super) async fn serve_connection(controller: Arc<Mutex<Controller>>, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_REQUEST_BYTES as u64));
    let mut line = String::new();
    let answer = match reader.read_line(&mut line).await {
        Ok(0) => return,
        Ok(_) => match serde_json::from_str::<Request>(&line) {
            Ok(request) => {
                let drain = request == Request::Drain;
                let c = controller.clone();
                let mut result = tokio::task::spawn_blocking(move || {
                    let mut controller = lock(&c);
                    controller.handle(&request)
                })
                .await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("request failed: {e}")));
                if drain && result.is_ok() {
                    result = bgp::drained(controller.clone()).await;
                }
                Answer::from_result(result)
            }
            Err(e) => Answer::from_result(Err(anyhow::anyhow!("malformed request: {e}"))),
        },
        Err(e) => Answer::from_result(Err(anyhow::anyhow!("cannot read request: {e}"))),
    };
    if let Ok(mut text) = serde_json::to_string(&answer) {
        text.push('\n');
        let _ = write.write_all(text.as_bytes()).await;
    }
}

/// Asks the daemon on `socket` to hand over and waits for it to exit (its socket goes).
pub(super) fn take_over(socket: &Path) -> Result<()> {
    crate::api::call(socket, &Request::Handover)
        .context("--replace: the running daemon refused to hand over")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    // The old daemon removes its socket file last thing before exiting; waiting for
    // the file (not just a refused connect) keeps it from removing ours.
    while socket.exists() {
        if Instant::now() > deadline {
            bail!("--replace: the running daemon did not exit within 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Runs the daemon until SIGTERM or SIGINT (or a handover to a new daemon).
pub async fn run(config_path: &Path, mode_override: Option<XdpMode>, replace: bool) -> Result<()> {
    // Read and validate the config once, before touching anything else: the sockets
    // below and the controller all start from this copy.
    let config = Config::load(config_path)?;
    // Bind the metrics port early: a port in use refuses the start, nothing changed.
    let metrics = match config.metrics {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("control.metrics: cannot listen on {addr}"))?,
        ),
        None => None,
    };
    if replace && std::os::unix::net::UnixStream::connect(&config.socket).is_ok() {
        take_over(&config.socket)?;
    }
    prepare_socket(&config.socket)?;
    // Bind the API socket before loading anything: a path the daemon cannot create
    // refuses the start with nothing changed.
    let socket = config.socket.clone();
    let listener = std::os::unix::net::UnixListener::bind(&socket)
        .with_context(|| format!("control.socket: cannot create {}", socket.display()))?;
    // Only the owner (root by default) may drive the balancer.
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o600))?;
    // The cluster socket and key too: a bad [cluster] refuses the start, nothing changed.
    let cluster = match prepare_cluster(&config) {
        Ok(cluster) => cluster,
        Err(e) => {
            let _ = fs::remove_file(&socket);
            return Err(e);
        }
    };
    // BIRD must answer before anything is loaded: a wrong socket refuses the start.
    if let Err(e) = bgp::check_bird(&config).await {
        let _ = fs::remove_file(&socket);
        return Err(e);
    }
    // The peers' key and listen port too; the protocol starts here, so that a started
    // instance is reachable (and in transition) as soon as possible.
    let peers = match prepare_peers(&config) {
        Ok(peers) => peers,
        Err(e) => {
            let _ = fs::remove_file(&socket);
            return Err(e);
        }
    };
    let mut controller = match Controller::start(config_path, config, mode_override, replace) {
        Ok(controller) => controller,
        Err(e) => {
            if let Some((handle, _)) = &peers {
                handle.stop();
            }
            let _ = fs::remove_file(&socket);
            return Err(e);
        }
    };
    let peers_inbox = match peers {
        Some((handle, inbox)) => {
            controller.peers = Some(handle);
            if let Err(e) = controller.start_moves() {
                log::error!("moves: programming the tunnel: {e:#}");
            }
            Some(inbox)
        }
        None => None,
    };
    let cluster_task = match cluster {
        Some((router, udp)) => {
            let engine = router.engine.clone();
            controller.cluster = Some(router);
            let udp = tokio::net::UdpSocket::from_std(udp)?;
            Some(tokio::spawn(async move {
                if let Err(e) = cluster::io::serve(udp, engine, std::future::pending()).await {
                    log::error!("cluster: router socket failed: {e:#}");
                }
            }))
        }
        None => None,
    };
    controller.start_announcing();
    let peers_handle = controller.peers.clone();
    let events = if peers_handle.is_some() {
        controller.flow_event_reader()
    } else {
        None
    };
    let events_task = match (peers_handle, events) {
        (Some(peers), Some(Ok(reader))) => Some(tokio::spawn(super::peers::announce_flow_events(
            reader, peers,
        ))),
        (Some(_), Some(Err(e))) => {
            controller.shutdown();
            let _ = fs::remove_file(&socket);
            return Err(anyhow::Error::from(e).context("reading FLOW_EVENTS"));
        }
        _ => None,
    };
    let controller = Arc::new(Mutex::new(controller));
    let peers_task =
        peers_inbox.map(|inbox| tokio::spawn(super::peers::serve_inbox(controller.clone(), inbox)));

    let result = serve(controller.clone(), &socket, listener, metrics).await;
    if let Some(task) = cluster_task {
        task.abort();
    }
    // SIGTERM with [bgp]: the routers move the traffic away before the data path goes.
    // A handover keeps the routes: the new daemon announces the same.
    let withdraw = {
        let mut controller = lock(&controller);
        if controller.handed_over {
            None
        } else {
            controller.withdraw_for_exit()
        }
    };
    if let Some((status, delay)) = withdraw {
        bgp::withdraw_and_wait(status, delay).await;
    }
    for task in [peers_task, events_task].into_iter().flatten() {
        task.abort();
    }
    // Before the socket goes: a replacing daemon waits for it, then binds peers.listen.
    if let Some(peers) = &lock(&controller).peers {
        peers.stop();
    }
    let _ = fs::remove_file(&socket);
    let mut controller = lock(&controller);
    controller.shutdown();
    if controller.handed_over {
        log::info!("handed over to the new daemon, bye");
    } else {
        log::info!("detached, bye");
    }
    result
}

/// Starts, stops and restarts the probe tasks so that they match the config.
pub(super) fn reconcile_health(
    controller: &Arc<Mutex<Controller>>,
    running: &mut HashMap<HealthTarget, tokio::task::JoinHandle<()>>,
) {
    let wanted = lock(controller).health_targets();
    running.retain(|target, task| {
        let keep = wanted.contains(target);
        if !keep {
            task.abort();
        }
        keep
    });
    for target in wanted {
        if running.contains_key(&target) {
            continue;
        }
        let controller = controller.clone();
        let task_target = target.clone();
        let task = tokio::spawn(async move {
            let (_, (ip, port), check) = &task_target;
            let addr = SocketAddr::from((*ip, check.port.unwrap_or(*port)));
            let mut ticker = tokio::time::interval(check.interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let result = health::probe(addr, check).await;
                let controller = controller.clone();
                let target = task_target.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    lock(&controller).health_result(&target, result)
                })
                .await;
            }
        });
        running.insert(target, task);
    }
}

pub(super) async fn serve_metrics(
    controller: Arc<Mutex<Controller>>,
    mut stream: tokio::net::TcpStream,
) {
    // Read the request head (any path answers); a slow or silent client is dropped.
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        true
    })
    .await;
    if !matches!(read, Ok(true)) {
        return;
    }
    let text = tokio::task::spawn_blocking(move || lock(&controller).metrics()).await;
    let (status, body) = match text {
        Ok(Ok(body)) => ("200 OK", body),
        Ok(Err(e)) => ("500 Internal Server Error", format!("{e:#}\n")),
        Err(e) => ("500 Internal Server Error", format!("{e}\n")),
    };
    let answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
}

pub(super) async fn serve(
    controller: Arc<Mutex<Controller>>,
    socket: &Path,
    listener: std::os::unix::net::UnixListener,
    metrics: Option<std::net::TcpListener>,
) -> Result<()> {
    listener.set_nonblocking(true)?;
    let listener = UnixListener::from_std(listener)?;
    log::info!("serving the operator API on {}", socket.display());
    let metrics = match metrics {
        Some(listener) => {
            listener.set_nonblocking(true)?;
            log::info!(
                "serving metrics on http://{}/metrics",
                listener.local_addr()?
            );
            Some(tokio::net::TcpListener::from_std(listener)?)
        }
        None => None,
    };

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    let next_flow_pass = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(next_flow_pass);
    let has_cluster = lock(&controller).cluster.is_some();
    let mut cluster_poll = tokio::time::interval(CLUSTER_POLL);
    cluster_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let has_peers = lock(&controller).peers.is_some();
    let mut peers_poll = tokio::time::interval(super::peers::PEERS_POLL);
    peers_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut probes = HashMap::new();
    reconcile_health(&controller, &mut probes);
    let result = loop {
        tokio::select! {
            accepted = listener.accept() => {
                match accepted {
                    Ok((stream, _)) => { tokio::spawn(serve_connection(controller.clone(), stream)); }
                    Err(e) => log::warn!("accept on {}: {e}", socket.display()),
                }
            }
            accepted = accept_metrics(metrics.as_ref()) => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(serve_metrics(controller.clone(), stream));
                }
            }
            () = &mut next_flow_pass => {
                let c = controller.clone();
                let (removed, pass) = tokio::task::spawn_blocking(move || {
                    let mut c = lock(&c);
                    (c.expire_flows(), c.last_flow_pass())
                }).await.unwrap_or((0, Duration::ZERO));
                if removed > 0 {
                    log::debug!("expired {removed} flow entries");
                }
                next_flow_pass
                    .as_mut()
                    .reset(tokio::time::Instant::now() + crate::flows::next_pass_delay(pass));
            }
            _ = housekeeping.tick() => {
                let c = controller.clone();
                let handed_over = tokio::task::spawn_blocking(move || {
                    let mut c = lock(&c);
                    c.expire_sessions();
                    c.handed_over
                }).await.unwrap_or(false);
                if handed_over {
                    break Ok(());
                }
                reconcile_health(&controller, &mut probes);
            }
            _ = cluster_poll.tick(), if has_cluster => {
                let c = controller.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    lock(&c).sync_cluster();
                }).await;
            }
            _ = peers_poll.tick(), if has_peers => {
                let c = controller.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    let mut controller = lock(&c);
                    controller.sync_peer_routes();
                    controller.tick_moves();
                }).await;
            }
            _ = sighup.recv() => {
                let controller = controller.clone();
                let result = tokio::task::spawn_blocking(move || {
                    lock(&controller).reload()
                }).await;
                match result {
                    Ok(Ok(summary)) => log::info!("SIGHUP reload: {summary:?}"),
                    Ok(Err(e)) => log::error!("SIGHUP reload refused, nothing changed: {e:#}"),
                    Err(e) => log::error!("SIGHUP reload failed: {e}"),
                }
            }
            _ = sigterm.recv() => { log::info!("SIGTERM: detaching"); break Ok(()); }
            _ = sigint.recv() => { log::info!("SIGINT: detaching"); break Ok(()); }
        }
    };
    for task in probes.values() {
        task.abort();
    }
    result
}

/// The next scrape connection; without a metrics listener, never.
async fn accept_metrics(
    listener: Option<&tokio::net::TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}
