//! The `interceptor` command: a thin layer over the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use interceptor::init::{self, InitArgs};

#[derive(Parser)]
#[command(
    name = "interceptor",
    version,
    about = "Transparent interception and HTTP inspection for service-mesh sidecars"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send the pod's TCP traffic through the sidecar (a drop-in for istio-iptables, which
    /// is also this subcommand's other name).
    #[command(alias = "istio-iptables")]
    Init(Box<InitArgs>),
    /// Remove everything `init` added: every table and both families (iptables), or the
    /// programs and pins of one cgroup and namespace (`--mode ebpf`).
    Cleanup(Box<InitArgs>),
    /// List the eBPF interception in place: where each program is attached, and its counters.
    Status,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match &cli.command {
        Command::Init(a) | Command::Cleanup(a) => a.compat.log_level(),
        Command::Status => None,
    };
    let filter = match level {
        Some(l) => tracing_subscriber::EnvFilter::new(l.as_str()),
        None => tracing_subscriber::EnvFilter::from_default_env(),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Init(args) => init::init(&args, &mut std::io::stdout()),
        Command::Cleanup(args) => init::cleanup(&args, &mut std::io::stdout()),
        Command::Status => interceptor::ebpf::cli::status().map_err(init::InitError::Ebpf),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("interceptor: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
