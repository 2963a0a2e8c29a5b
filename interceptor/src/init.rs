//! The `init` and `cleanup` subcommands: configuration in, rules applied (or removed), and
//! the exit status istio-init users expect (1 for bad input or a failed apply, 126 when
//! `--run-validation` finds that traffic is not redirected).

use std::io::Write;
use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, ValueEnum};

use crate::config::{
    CaptureArgs, CaptureEnv, Config, ConfigError, HostFacts, InboundPorts, InterceptionMode,
};
use crate::ebpf;
use crate::iptables::{self, routes, IptablesError};
use crate::rules::{capture, restore};
use crate::validation::{self, ValidationError, EXIT_VALIDATION_FAILED};

/// The interception mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mechanism {
    /// istio-iptables' rules.
    Iptables,
    /// sockops + cgroup programs + sk_lookup.
    Ebpf,
}

#[derive(Args, Clone, Debug)]
pub struct InitArgs {
    /// Interception mechanism.
    #[arg(long = "mode", value_enum, default_value = "iptables")]
    pub mode: Mechanism,
    /// cgroup (v2) whose sockets the eBPF mechanism intercepts.
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// eBPF mode: turn on the programs' debug logs and print them until interrupted.
    #[arg(long = "debug")]
    pub debug: bool,
    #[command(flatten)]
    pub capture: CaptureArgs,
    #[command(flatten)]
    pub compat: CompatArgs,
}

/// The rest of the arguments the sidecar injector gives istio-init.
#[derive(Args, Clone, Debug, Default)]
pub struct CompatArgs {
    /// Change nothing (with --run-validation: only validate, as the istio-cni validation
    /// container does).
    #[arg(long = "skip-rule-apply", env = "SKIP_RULE_APPLY", action = ArgAction::Set, num_args = 0..=1,
          default_value = "false", default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub skip_rule_apply: bool,
    /// Only remove the rules (same as `interceptor cleanup`).
    #[arg(long = "cleanup-only", env = "CLEANUP_ONLY", action = ArgAction::Set, num_args = 0..=1,
          default_value = "false", default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub cleanup_only: bool,
    /// Accepted for istio-iptables compatibility: `init` always reconciles existing rules.
    #[arg(long = "reconcile", env = "RECONCILE", action = ArgAction::Set, num_args = 0..=1,
          default_value = "true", default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub reconcile: bool,
    /// Accepted for istio-iptables compatibility: `init` always applies the full ruleset.
    #[arg(long = "force-apply", env = "FORCE_APPLY", action = ArgAction::Set, num_args = 0..=1,
          default_value = "false", default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub force_apply: bool,
    /// istio's native nftables rules: not supported (use --force-iptables-binary nft).
    #[arg(long = "native-nftables", env = "NATIVE_NFTABLES", action = ArgAction::Set, num_args = 0..=1,
          default_value = "false", default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub native_nftables: bool,
    /// Network namespace (a path like /proc/PID/ns/net or /var/run/netns/NAME) to work in.
    #[arg(
        long = "network-namespace",
        env = "NETWORK_NAMESPACE",
        value_name = "PATH"
    )]
    pub network_namespace: Option<PathBuf>,
    /// istio log levels (`default:debug` or `debug`): sets this command's log level.
    #[arg(long = "log_output_level", value_name = "LEVELS")]
    pub log_output_level: Option<String>,
    /// Accepted for istio-iptables compatibility; logs stay plain text.
    #[arg(long = "log_as_json")]
    pub log_as_json: bool,
}

impl CompatArgs {
    /// The tracing level `--log_output_level` asks for (istio: `scope:level,...`).
    pub fn log_level(&self) -> Option<tracing::Level> {
        let spec = self.log_output_level.as_deref()?;
        let level = spec
            .split(',')
            .find_map(|part| match part.split_once(':') {
                Some(("default", l)) => Some(l),
                Some(_) => None,
                None => Some(part),
            })?;
        match level.trim() {
            "debug" => Some(tracing::Level::DEBUG),
            "info" => Some(tracing::Level::INFO),
            "warn" => Some(tracing::Level::WARN),
            "error" | "fatal" | "none" => Some(tracing::Level::ERROR),
            _ => None,
        }
    }
}

/// Moves this process into the network namespace at `path`.
fn enter_netns(path: &std::path::Path) -> Result<(), InitError> {
    let f = std::fs::File::open(path).map_err(|e| bad_netns(path, e.to_string()))?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| bad_netns(path, e.to_string()))
}

fn bad_netns(path: &std::path::Path, why: String) -> InitError {
    InitError::Config(ConfigError {
        flag: "--network-namespace".into(),
        value: path.display().to_string(),
        reason: why,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Iptables(#[from] IptablesError),
    #[error(transparent)]
    Validation(#[from] ValidationError),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0:#}")]
    Ebpf(anyhow::Error),
}

impl InitError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            InitError::Validation(_) => EXIT_VALIDATION_FAILED,
            _ => 1,
        }
    }
}

/// Checks the flags into a [`Config`] with this machine's facts.
pub fn config(args: &CaptureArgs) -> Result<Config, ConfigError> {
    Config::from_args(args, &CaptureEnv::from_process(), &HostFacts::gather())
}

/// `interceptor init`.
pub fn init(args: &InitArgs, out: &mut dyn Write) -> Result<(), InitError> {
    if args.mode == Mechanism::Ebpf {
        let cfg = config(&args.capture)?;
        let settings = ebpf::Settings::from_config(&cfg).map_err(InitError::Ebpf)?;
        return ebpf::cli::init(&settings, args.cgroup.as_deref(), args.debug)
            .map_err(InitError::Ebpf);
    }
    if args.debug {
        return Err(InitError::Unsupported(
            "--debug: only the eBPF mode has program logs; add --mode ebpf or drop --debug".into(),
        ));
    }
    if let Some(cg) = &args.cgroup {
        return Err(InitError::Unsupported(format!(
            "--cgroup {}: only the eBPF mode works per cgroup; iptables rules cover the whole network namespace (add --mode ebpf or drop --cgroup)",
            cg.display()
        )));
    }
    if args.compat.native_nftables {
        return Err(InitError::Unsupported(
            "--native-nftables: istio's native nftables rules are not supported; interceptor writes iptables rules (use --force-iptables-binary nft for the nf_tables backend)".into(),
        ));
    }
    if let Some(ns) = &args.compat.network_namespace {
        enter_netns(ns)?;
    }
    if args.compat.cleanup_only {
        return cleanup(args, out);
    }
    let cfg = config(&args.capture)?;
    let rules = capture::build(&cfg);
    if args.compat.skip_rule_apply {
        if cfg.run_validation {
            validation::run(&cfg)?;
        }
        return Ok(());
    }
    if cfg.dry_run {
        let _ = out.write_all(restore::dry_run(&rules).as_bytes());
        return Ok(());
    }
    if !iptables::has_net_admin() {
        return Err(IptablesError::NoNetAdmin.into());
    }
    let needs_ip = cfg.ipv6
        || (cfg.mode == InterceptionMode::Tproxy && cfg.inbound_ports != InboundPorts::None);
    if needs_ip && iptables::backend::which("ip").is_none() {
        return Err(IptablesError::Exec(
            "ip".into(),
            "iproute2's `ip` is not in PATH (needed for TPROXY routes and the IPv6 ::6 address)"
                .into(),
        )
        .into());
    }
    // Routes first: when they fail, no iptables rule has been touched yet.
    if let Err(e) = routes::configure(&cfg) {
        routes::unconfigure(&cfg);
        return Err(e.into());
    }
    let applied = match iptables::apply(&cfg, &rules) {
        Ok(a) => a,
        Err(e) => {
            routes::unconfigure(&cfg);
            return Err(e.into());
        }
    };
    for a in &applied {
        tracing::info!(restore = %a.tools.restore.display(), "applied:\n{}", a.input);
    }
    if cfg.run_validation {
        validation::run(&cfg)?;
    }
    Ok(())
}

/// `interceptor cleanup`. With `--dry-run` it prints the iptables-restore input per
/// family (`# iptables-restore`, `# ip6tables-restore`) and changes nothing.
pub fn cleanup(args: &InitArgs, out: &mut dyn Write) -> Result<(), InitError> {
    if args.mode == Mechanism::Ebpf {
        return ebpf::cli::cleanup(args.cgroup.as_deref()).map_err(InitError::Ebpf);
    }
    if let Some(ns) = &args.compat.network_namespace {
        enter_netns(ns)?;
    }
    let cfg = config(&args.capture)?;
    let done = iptables::cleanup(&cfg)?;
    if cfg.dry_run {
        for (tools, input) in done {
            let head = if tools.family == crate::rules::Family::V4 {
                "# iptables-restore\n"
            } else {
                "# ip6tables-restore\n"
            };
            let _ = out.write_all(head.as_bytes());
            let _ = out.write_all(input.as_bytes());
        }
        return Ok(());
    }
    routes::unconfigure(&cfg);
    Ok(())
}
