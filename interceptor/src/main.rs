//! The `interceptor` command: every flag is here; the work is in the libraries
//! (`interceptor-intercept` for `init`, `cleanup` and `status`, `interceptor-sniff` for
//! `sniff`), and each command wires its pieces together.

mod init_args;
mod signal;
mod sniff_args;

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use clap::{Parser, Subcommand};

use interceptor_intercept::init::{self, InitError, InitOptions};

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
    Init(Box<init_args::InitArgs>),
    /// Remove everything `init` added: every table and both families (iptables), or the
    /// programs and pins of one cgroup and namespace (`--mode ebpf`).
    Cleanup(Box<init_args::InitArgs>),
    /// List the eBPF interception in place: where each program is attached, and its counters.
    Status,
    /// Sniff HTTP/1.1 like ngrep, with TCP reassembly and request/response pairing.
    Sniff(Box<sniff_args::Args>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let init_opts = match &cli.command {
        Command::Init(a) | Command::Cleanup(a) => Some(InitOptions::from(a.as_ref())),
        Command::Status | Command::Sniff(_) => None,
    };
    let level = init_opts.as_ref().and_then(|o| o.compat.log_level());
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
    let result = match (cli.command, init_opts) {
        (Command::Init(_), Some(opts)) => {
            let stop = if opts.debug { stop_flag() } else { Ok(&NEVER) };
            stop.and_then(|stop| init::init(&opts, &mut std::io::stdout(), stop).map_err(failed))
        }
        (Command::Cleanup(_), Some(opts)) => {
            init::cleanup(&opts, &mut std::io::stdout()).map_err(failed)
        }
        (Command::Status, _) => interceptor_intercept::ebpf::cli::status()
            .map_err(|e| failed(InitError::Ebpf(e))),
        (Command::Sniff(args), _) => {
            let live = args.input.is_none();
            let stop = if live { stop_flag() } else { Ok(&NEVER) };
            stop.and_then(|stop| {
                sniff_args::run(&args, stop).map_err(|e| (format!("{e:#}"), 2))
            })
        }
        (Command::Init(_) | Command::Cleanup(_), None) => unreachable!("options made above"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((message, code)) => {
            eprintln!("interceptor: {message}");
            ExitCode::from(code)
        }
    }
}

/// A flag nothing sets, for runs that end by themselves.
static NEVER: AtomicBool = AtomicBool::new(false);

fn stop_flag() -> Result<&'static AtomicBool, (String, u8)> {
    signal::stop_on_interrupt().map_err(|e| (e, 1))
}

/// An `init`/`cleanup`/`status` error as its message and exit status.
fn failed(e: InitError) -> (String, u8) {
    (e.to_string(), e.exit_code())
}
