//! `lb`: the load balancer's daemon (`lb run`) and operator CLI.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use lb_userspace::{
    api::{self, Request},
    config::XdpMode,
    daemon, output,
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

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Native,
    Generic,
    Auto,
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
        xdp_mode: Option<ModeArg>,
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
    /// Change backends of the running system (not the config file).
    Backend {
        #[command(subcommand)]
        action: BackendAction,
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
            let mode = xdp_mode.map(|m| match m {
                ModeArg::Native => XdpMode::Native,
                ModeArg::Generic => XdpMode::Generic,
                ModeArg::Auto => XdpMode::Auto,
            });
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            return runtime.block_on(daemon::run(&config, mode, replace));
        }
        Command::Status { json } => (Request::Status, json),
        Command::Stats { json } => (Request::Stats, json),
        Command::Flows { json } => (Request::Flows, json),
        Command::Reload { json } => (Request::Reload, json),
        Command::Backends { json } => (Request::Backends, json),
        Command::Sessions { json } => (Request::Sessions, json),
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
    };
    let result = api::call(&cli.socket, &request)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print!("{}", output::render(&request, &result));
    }
    Ok(())
}
