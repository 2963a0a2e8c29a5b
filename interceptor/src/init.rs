//! The `init` and `cleanup` subcommands: configuration in, rules applied (or removed), and
//! the exit status istio-init users expect (1 for bad input or a failed apply, 126 when
//! `--run-validation` finds that traffic is not redirected).

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::config::{
    CaptureArgs, CaptureEnv, Config, ConfigError, HostFacts, InboundPorts, InterceptionMode,
};
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
    #[command(flatten)]
    pub capture: CaptureArgs,
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

fn ebpf_unavailable() -> InitError {
    InitError::Unsupported("--mode ebpf: eBPF mode: not in this build".into())
}

/// Checks the flags into a [`Config`] with this machine's facts.
pub fn config(args: &CaptureArgs) -> Result<Config, ConfigError> {
    Config::from_args(args, &CaptureEnv::from_process(), &HostFacts::gather())
}

/// `interceptor init`.
pub fn init(args: &InitArgs, out: &mut dyn Write) -> Result<(), InitError> {
    if args.mode == Mechanism::Ebpf {
        return Err(ebpf_unavailable());
    }
    let cfg = config(&args.capture)?;
    let rules = capture::build(&cfg);
    if cfg.dry_run {
        let _ = out.write_all(restore::dry_run(&rules).as_bytes());
        return Ok(());
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

/// `interceptor cleanup`.
pub fn cleanup(args: &InitArgs) -> Result<(), InitError> {
    if args.mode == Mechanism::Ebpf {
        return Err(ebpf_unavailable());
    }
    let cfg = config(&args.capture)?;
    iptables::cleanup(&cfg)?;
    routes::unconfigure(&cfg);
    Ok(())
}
