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
    /// Sniff HTTP/1.1 like ngrep, with TCP reassembly and request/response pairing.
    Sniff(Box<interceptor::sniff::Args>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match &cli.command {
        Command::Init(a) | Command::Cleanup(a) => a.compat.log_level(),
        Command::Status | Command::Sniff(_) => None,
    };
    let filter = match level {
        Some(l) => tracing_subscriber::EnvFilter::new(l.as_str()),
        None => tracing_subscriber::EnvFilter::from_default_env(),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    // Each command keeps the exit status its peers use: istio-init's 1 and 126 for `init`,
    // ngrep's 2 for `sniff`.
    let result = match cli.command {
        Command::Init(args) => init::init(&args, &mut std::io::stdout()).map_err(failed),
        Command::Cleanup(args) => init::cleanup(&args, &mut std::io::stdout()).map_err(failed),
        Command::Status => {
            interceptor::ebpf::cli::status().map_err(|e| failed(init::InitError::Ebpf(e)))
        }
        Command::Sniff(args) => interceptor::sniff::run(&args).map_err(|e| (format!("{e:#}"), 2)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((message, code)) => {
            eprintln!("interceptor: {message}");
            ExitCode::from(code)
        }
    }
}

/// An `init`/`cleanup`/`status` error as its message and exit status.
fn failed(e: init::InitError) -> (String, u8) {
    (e.to_string(), e.exit_code())
}
