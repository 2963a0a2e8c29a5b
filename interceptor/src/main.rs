//! The `interceptor` command: every flag is here; the work is in the libraries
//! (`interceptor-intercept` for `init`, `cleanup` and `status`, `interceptor-sniff` for
//! `sniff`), and each command wires its pieces together.

mod agent_args;
mod cni_plugin;
mod init_args;
mod inspect_args;
mod signal;
mod sniff_args;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

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
    Status(StatusArgs),
    /// Sniff HTTP/1.1 like ngrep, with TCP reassembly and request/response pairing.
    Sniff(Box<sniff_args::Args>),
    /// The node agent (the DaemonSet's process): installs this binary as a chained CNI
    /// plugin, keeps it in the CNI configuration, repairs pods' interception, serves
    /// metrics; uninstalls on SIGTERM.
    Agent(Box<agent_args::AgentArgs>),
}

fn main() -> ExitCode {
    // Run by the container runtime as a CNI plugin: no arguments, CNI_* variables.
    if cni_plugin::requested() && std::env::args_os().len() == 1 {
        return cni_plugin::run();
    }
    // Parsed through ArgMatches, not Cli::parse(), to learn which values came from
    // environment variables (init_args::init_options).
    let command = Cli::command();
    let matches = command.clone().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let init_opts = match matches.subcommand() {
        Some((name @ ("init" | "cleanup"), sub)) => {
            let sub_command = command
                .find_subcommand(name)
                .expect("init and cleanup are subcommands");
            Some(init_args::init_options(sub_command, sub).unwrap_or_else(|e| e.exit()))
        }
        _ => None,
    };
    let json = init_opts.as_ref().is_some_and(|o| o.compat.log_as_json);
    if matches.subcommand_name() == Some("agent") && std::env::var_os("RUST_LOG").is_none() {
        // The agent says what it installs, repairs and removes unless told otherwise.
        // (`init`'s own lines for each repair, the ruleset applied, stay at debug.)
        std::env::set_var("RUST_LOG", "info,interceptor_intercept=warn");
    }
    init_logging(init_opts.as_ref());
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
        (Command::Status(a), _) => interceptor_intercept::ebpf::cli::status(a.json)
            .map_err(|e| failed(InitError::Ebpf(e)))
            .and_then(|()| node_status(&a)),
        (Command::Agent(args), _) => stop_flag().and_then(|stop| {
            let opts = interceptor_agent::agent::AgentOptions::from(args.as_ref());
            interceptor_agent::agent::run(&opts, stop).map_err(|e| (e.to_string(), 1))
        }),
        (Command::Sniff(args), _) => {
            // A live capture, or a pipe (`-I -`: Ctrl-C reaches tcpdump and us alike),
            // ends on SIGINT/SIGTERM with what it found and the summary.
            let live = args
                .input
                .as_deref()
                .is_none_or(|p| p == std::path::Path::new("-"))
                // --serve keeps serving after a file is read, until interrupted.
                || args.inspect.serve.is_some();
            let stop = if live { stop_flag() } else { Ok(&NEVER) };
            stop.and_then(|stop| sniff_args::run(&args, stop).map_err(|e| (format!("{e:#}"), 2)))
        }
        (Command::Init(_) | Command::Cleanup(_), None) => unreachable!("options made above"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((message, code)) => {
            if json {
                // Every line of a --log_as_json run is a JSON object, the failure too.
                tracing::error!("interceptor: {message}");
            } else {
                eprintln!("interceptor: {message}");
            }
            ExitCode::from(code)
        }
    }
}

/// The log goes to stderr: stdout carries only what a command prints as its result
/// (`init --dry-run`'s iptables-restore input, `sniff`'s exchanges), so it can be piped;
/// `kubectl logs` shows both streams. Colour only on a terminal, so a container's log has
/// no escape codes.
///
/// `init` and `cleanup` log at info unless told otherwise, as istio-init does (the
/// configuration and the iptables-restore input applied): `--log_output_level` (istio's
/// `default:info` form) wins, then `RUST_LOG`. `--log_as_json` writes one JSON object a
/// line. Other commands log only errors unless `RUST_LOG` says more.
fn init_logging(init_opts: Option<&InitOptions>) {
    use tracing_subscriber::EnvFilter;
    let level = init_opts.and_then(|o| o.compat.log_level());
    let filter = match (level, init_opts) {
        (Some(l), _) => EnvFilter::new(l.as_str()),
        (None, Some(_)) if std::env::var_os(EnvFilter::DEFAULT_ENV).is_none() => {
            EnvFilter::new("info")
        }
        _ => EnvFilter::from_default_env(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if init_opts.is_some_and(|o| o.compat.log_as_json) {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// `status`'s flags.
#[derive(clap::Args)]
struct StatusArgs {
    /// Print one JSON document: the pinned instances (cgroup, netns cookie, links,
    /// counters), whether bpffs is visible here, and the programs the kernel reports.
    #[arg(long)]
    json: bool,
    /// The node agent's state dir: its pods are listed with their mode and health.
    #[arg(long, value_name = "DIR", default_value = "/var/run/interceptor")]
    state_dir: std::path::PathBuf,
}

/// `status`' node part: the pods the CNI plugin recorded, checked now (text output only;
/// `interceptor_agent::status::pods` has them for the JSON document).
fn node_status(a: &StatusArgs) -> Result<(), (String, u8)> {
    if a.json {
        return Ok(());
    }
    let pods = interceptor_agent::status::pods(&a.state_dir, cni_plugin::parse_init_args)
        .map_err(|e| (e, 1))?;
    print!("{}", interceptor_agent::status::render(&a.state_dir, &pods));
    Ok(())
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
