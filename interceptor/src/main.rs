//! The `interceptor` command: a thin layer over the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use interceptor::ebpf;

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
    /// Start intercepting the pod's traffic
    Init(ebpf::cli::InitArgs),
    /// Undo `init`
    Cleanup(ebpf::cli::CleanupArgs),
    /// Show what interception is in place
    Status,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Init(args) => ebpf::cli::init(args),
        Command::Cleanup(args) => ebpf::cli::cleanup(args),
        Command::Status => ebpf::cli::status(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("interceptor: {e:#}");
            ExitCode::FAILURE
        }
    }
}
