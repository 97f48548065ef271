//! `lb`: the load balancer's daemon (`lb run`) and operator CLI.

// A long-running daemon must not die on a broken invariant it could report instead: every
// remaining `unwrap`/`expect` outside tests is an explicit `#[expect]` with its reason.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Result;
use clap::{Parser, Subcommand};
use lb_userspace::{
    api::{self, Request},
    cluster, daemon,
    domain::{self, XdpMode},
    output,
};

#[derive(Parser)]
#[command(
    name = "lb",
    version,
    about = "XDP layer-4 load balancer: daemon and operator CLI"
)]
struct Cli {
    /// Control socket of the running daemon (the config's `control.socket`).
    #[arg(
        long,
        global = true,
        env = "LB_SOCKET",
        default_value = "/run/lb/lb.sock"
    )]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the XDP program, attach it and run the controller until SIGTERM.
    Run {
        /// Config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Override the config's `interfaces.xdp_mode`.
        #[arg(long, value_enum)]
        xdp_mode: Option<XdpMode>,
        /// Take over from the running (or killed) daemon: load this binary's program,
        /// swap it into the pinned links atomically, keep every map (flows included).
        #[arg(long)]
        replace: bool,
    },
    /// Daemon, interfaces and table sizes.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Counters: global verdicts, per service, per backend.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// The flow table: client, VIP, SNAT, server, state, age.
    Flows {
        #[arg(long)]
        json: bool,
    },
    /// Re-read the config file and apply the difference (same as SIGHUP).
    Reload {
        #[arg(long)]
        json: bool,
    },
    /// Backends per service: state, health, weights, flows, counters.
    Backends {
        #[arg(long)]
        json: bool,
    },
    /// Client-IP affinity sessions: client, service, backend, age, handle.
    Sessions {
        #[arg(long)]
        json: bool,
    },
    /// Cluster nodes: the router's health-and-load table (application, node, health,
    /// load, capacity, target and current allotment) and its counters.
    Nodes {
        #[arg(long)]
        json: bool,
    },
    /// Withdraw every route BIRD announces for this instance (`[bgp]`); the data path
    /// keeps forwarding. The routers move new traffic to the other instances.
    Drain {
        #[arg(long)]
        json: bool,
    },
    /// Balancer peers (`[peers]`): this instance's state (transition, ready, draining),
    /// each peer's state, flows held, announcement lag and last heard, and the counters.
    Peers {
        #[arg(long)]
        json: bool,
    },
    /// Owned VIPs (`[[bgp.owned_vip]]`): each one's mode here (normal: announced as
    /// primary; backup: another instance owns it), its owner, epoch and since when.
    Vips {
        #[arg(long)]
        json: bool,
    },
    /// Before a planned stop: move every owned VIP this instance announces as primary
    /// to its ready peers (`lb vip move`, one after another), then withdraw every route
    /// (`lb drain`). The instance can then be stopped with no connection broken.
    DrainInstance {
        /// Longest wait for one VIP's move, seconds.
        #[arg(long, default_value_t = 30)]
        move_timeout: u64,
    },
    /// Owned VIPs of the running cluster.
    Vip {
        #[command(subcommand)]
        action: VipAction,
    },
    /// Change backends of the running system (not the config file).
    Backend {
        #[command(subcommand)]
        action: BackendAction,
    },
    /// Run the node agent on a server: announce it to the router, report health and load,
    /// leave on SIGTERM (docs/cluster-protocol.md).
    Node(NodeArgs),
}

#[derive(Subcommand)]
enum VipAction {
    /// Move owned VIP VIP from this instance to peer node TO: the target takes it over
    /// with its flows, then announces it as primary (docs/scale-out.md, "Moving a VIP").
    /// Answers at once with the mode table; `lb vips` follows the move.
    Move {
        vip: std::net::Ipv4Addr,
        #[arg(long)]
        to: u16,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum BackendAction {
    /// No new flows to ADDRESS[:PORT] in any service; established flows finish.
    Drain { backend: String },
    /// Give a drained backend new flows again.
    Undrain { backend: String },
    /// Set the weight of a backend of a service (0..=65535).
    Weight {
        service: String,
        backend: String,
        weight: u32,
    },
    /// Add ADDRESS[:PORT] (default: the service port) to a service.
    Add {
        service: String,
        backend: String,
        #[arg(long, default_value_t = 1)]
        weight: u32,
    },
    /// Remove a backend from a service; its established flows finish.
    Remove { service: String, backend: String },
}

#[derive(clap::Args)]
struct NodeArgs {
    /// Cluster to join: the router answers only its own cluster ID.
    #[arg(long)]
    cluster_id: u16,
    /// Management-node election: the highest priority wins.
    #[arg(long, default_value_t = 0)]
    priority: u16,
    /// A service this node offers, `name:tcp|udp:port` (repeat); the name is the
    /// balancer's service name.
    #[arg(long = "service", required = true)]
    services: Vec<cluster::agent::ServiceSpec>,
    /// File holding the cluster key (at least 16 bytes; trailing whitespace ignored).
    #[arg(long)]
    key_file: PathBuf,
    /// Heartbeat interval, e.g. `1s`, `500ms`.
    #[arg(long, default_value = DEFAULT_INTERVAL_ARG, value_parser = parse_duration)]
    interval: std::time::Duration,
    /// Relative capacity; the router shares new flows by it.
    #[arg(long, default_value_t = 1)]
    capacity: u32,
    /// What to report as load: the load average per CPU, or none (share by capacity).
    #[arg(long, value_enum, default_value = "loadavg")]
    load_source: cluster::agent::LoadSource,
    /// Interface on the internal segment: its address is the node's, joins go to its
    /// broadcast address.
    #[arg(long, required_unless_present = "address")]
    iface: Option<String>,
    /// The node's address (instead of --iface's).
    #[arg(long)]
    address: Option<std::net::Ipv4Addr>,
    /// Send joins here instead of the interface's broadcast address.
    #[arg(long)]
    router: Option<std::net::Ipv4Addr>,
    /// UDP port of the protocol.
    #[arg(long, default_value_t = domain::DEFAULT_CLUSTER_PORT)]
    port: u16,
    /// Router silent for this many intervals: look for a router again.
    #[arg(long, default_value_t = domain::DEFAULT_DEAD_AFTER)]
    dead_after: u32,
}

/// `domain::DEFAULT_HEARTBEAT_INTERVAL` as `--interval` takes it (a test keeps them equal).
const DEFAULT_INTERVAL_ARG: &str = "1s";

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |i| text.split_at(i));
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number with ms or s, e.g. 500ms"))?;
    match unit {
        "ms" => Ok(std::time::Duration::from_millis(value)),
        "s" => Ok(std::time::Duration::from_secs(value)),
        _ => Err(format!("{text:?}: unit must be ms or s")),
    }
}

/// `lb drain-instance`: the owned VIPs to the ready peers, one move at a time, then
/// `lb drain`. Stops at the first move that fails or does not finish in `move_timeout`,
/// leaving the remaining VIPs where they are.
fn drain_instance(socket: &std::path::Path, move_timeout: Duration) -> Result<()> {
    use lb_userspace::peers::{membership::PeerState, moves, wire::NodeState};
    let rows = match api::call(socket, &Request::Vips) {
        Ok(api::Reply::Vips(rows)) => rows,
        // No owned VIPs: draining is all there is to do.
        _ => Vec::new(),
    };
    let ready: Vec<u16> = match api::call(socket, &Request::Peers)? {
        api::Reply::Peers(status) => status
            .peers
            .iter()
            .filter(|p| p.state == PeerState::Up && p.announced == Some(NodeState::Ready))
            .map(|p| p.node_id)
            .collect(),
        other => anyhow::bail!("unexpected answer to peers: {other:?}"),
    };
    let plan = moves::drain_plan(&rows, &ready)
        .ok_or_else(|| anyhow::anyhow!("no ready peer to take this instance's VIPs"))?;
    for (vip, to) in plan {
        println!("moving {vip} to node {to}");
        api::call(socket, &Request::VipMove { vip, to })?;
        let started = std::time::Instant::now();
        loop {
            let done = match api::call(socket, &Request::Vips)? {
                api::Reply::Vips(rows) => rows
                    .iter()
                    .any(|r| r.vip == vip && r.mode == moves::Mode::Backup && r.moving.is_none()),
                other => anyhow::bail!("unexpected answer to vips: {other:?}"),
            };
            if done {
                println!("{vip} is node {to}'s after {:.1?}", started.elapsed());
                break;
            }
            if started.elapsed() > move_timeout {
                anyhow::bail!("the move of {vip} to node {to} did not finish in {move_timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let reply = api::call(socket, &Request::Drain)?;
    print!("{}", output::render(&reply));
    Ok(())
}

fn run_node(args: NodeArgs) -> Result<()> {
    let key = cluster::wire::ClusterKey::from_file(&args.key_file)?;
    let (iface_address, broadcast) = match &args.iface {
        Some(name) => {
            let (a, b) = cluster::agent::interface_address(name)?;
            (Some(a), b)
        }
        None => (None, None),
    };
    let address = args
        .address
        .or(iface_address)
        .ok_or_else(|| anyhow::anyhow!("give --iface or --address"))?;
    let announce_ip = args
        .router
        .or(broadcast)
        .ok_or_else(|| anyhow::anyhow!("no broadcast address on the interface: give --router"))?;
    let settings = cluster::agent::AgentSettings {
        cluster_id: args.cluster_id,
        priority: args.priority,
        services: args.services,
        key,
        interval: args.interval,
        dead_after: args.dead_after,
        capacity: args.capacity,
        load_source: args.load_source,
        address,
        listen_port: args.port,
        announce_to: std::net::SocketAddrV4::new(announce_ip, args.port),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        cluster::agent::run(settings, async move {
            tokio::select! {
                _ = sigterm.recv() => {}
                _ = sigint.recv() => {}
            }
        })
        .await
    })
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let (request, json) = match cli.command {
        Command::Run {
            config,
            xdp_mode,
            replace,
        } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            return runtime.block_on(daemon::run(&config, xdp_mode, replace));
        }
        Command::Status { json } => (Request::Status, json),
        Command::Stats { json } => (Request::Stats, json),
        Command::Flows { json } => (Request::Flows, json),
        Command::Reload { json } => (Request::Reload, json),
        Command::Backends { json } => (Request::Backends, json),
        Command::Sessions { json } => (Request::Sessions, json),
        Command::Nodes { json } => (Request::Nodes, json),
        Command::Drain { json } => (Request::Drain, json),
        Command::Peers { json } => (Request::Peers, json),
        Command::Vips { json } => (Request::Vips, json),
        Command::Vip {
            action: VipAction::Move { vip, to, json },
        } => (Request::VipMove { vip, to }, json),
        Command::Backend { action } => (
            match action {
                BackendAction::Drain { backend } => Request::BackendDrain { backend },
                BackendAction::Undrain { backend } => Request::BackendUndrain { backend },
                BackendAction::Weight {
                    service,
                    backend,
                    weight,
                } => Request::BackendWeight {
                    service,
                    backend,
                    weight,
                },
                BackendAction::Add {
                    service,
                    backend,
                    weight,
                } => Request::BackendAdd {
                    service,
                    backend,
                    weight,
                },
                BackendAction::Remove { service, backend } => {
                    Request::BackendRemove { service, backend }
                }
            },
            false,
        ),
        Command::Node(args) => return run_node(args),
        Command::DrainInstance { move_timeout } => {
            return drain_instance(&cli.socket, Duration::from_secs(move_timeout));
        }
    };
    let reply = api::call(&cli.socket, &request)?;
    if json {
        println!("{}", output::json(&reply)?);
    } else {
        print!("{}", output::render(&reply));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_interval_default_is_the_heartbeat_default() {
        assert_eq!(
            parse_duration(DEFAULT_INTERVAL_ARG),
            Ok(domain::DEFAULT_HEARTBEAT_INTERVAL)
        );
    }
}
