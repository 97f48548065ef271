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
        Command::Run { config, xdp_mode } => {
            let mode = xdp_mode.map(|m| match m {
                ModeArg::Native => XdpMode::Native,
                ModeArg::Generic => XdpMode::Generic,
                ModeArg::Auto => XdpMode::Auto,
            });
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            return runtime.block_on(daemon::run(&config, mode));
        }
        Command::Status { json } => (Request::Status, json),
        Command::Stats { json } => (Request::Stats, json),
        Command::Flows { json } => (Request::Flows, json),
        Command::Reload { json } => (Request::Reload, json),
    };
    let result = api::call(&cli.socket, &request)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print!("{}", output::render(&request, &result));
    }
    Ok(())
}
