//! The `interceptor` command: a thin layer over the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Sniff HTTP/1.1 like ngrep, with TCP reassembly and request/response pairing.
    Sniff(interceptor::sniff::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sniff(args) => interceptor::sniff::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("interceptor: {e:#}");
            ExitCode::from(2)
        }
    }
}
