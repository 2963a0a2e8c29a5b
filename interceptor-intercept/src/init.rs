//! The `init` and `cleanup` subcommands: configuration in, rules applied (or removed), and
//! the exit status istio-init users expect (1 for bad input or a failed apply, 126 when
//! `--run-validation` finds that traffic is not redirected).

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use crate::config::{
    Config, ConfigError, HostFacts, InboundPorts, InterceptionMode, IstioEnv, IstioFlags,
};
use crate::ebpf;
use crate::iptables::{self, routes, IptablesError};
use crate::rules::{istio, restore};
use crate::validation::{self, ValidationError, EXIT_VALIDATION_FAILED};

/// The interception mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// istio-iptables' rules.
    Iptables,
    /// sockops + cgroup programs + sk_lookup.
    Ebpf,
}

/// What `init` and `cleanup` are asked to do.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// Interception mechanism.
    pub mode: Mechanism,
    /// cgroup (v2) whose sockets the eBPF mechanism intercepts; `pod` for the parent of
    /// the caller's own (`ebpf::target::POD_CGROUP`).
    pub cgroup: Option<PathBuf>,
    /// Where `--cgroup pod` looks for the host's cgroup tree (default
    /// `ebpf::target::HOST_CGROUP_ROOT`).
    pub host_cgroup_root: Option<PathBuf>,
    /// eBPF mode: turn on the programs' debug logs and print them until interrupted.
    pub debug: bool,
    pub flags: IstioFlags,
    pub compat: Compat,
}

/// The rest of the arguments the sidecar injector gives istio-init.
#[derive(Clone, Debug, Default)]
pub struct Compat {
    /// Change nothing (with --run-validation: only validate, as the istio-cni validation
    /// container does).
    pub skip_rule_apply: bool,
    /// Only remove the rules (same as `interceptor cleanup`).
    pub cleanup_only: bool,
    /// Accepted for istio-iptables compatibility: `init` always reconciles existing rules.
    pub reconcile: bool,
    /// Accepted for istio-iptables compatibility: `init` always applies the full ruleset.
    pub force_apply: bool,
    /// istio's native nftables rules: not supported (use --force-iptables-binary nft).
    pub native_nftables: bool,
    /// Network namespace (a path like /proc/PID/ns/net or /var/run/netns/NAME) to work in.
    pub network_namespace: Option<PathBuf>,
    /// istio log levels (`default:debug` or `debug`): sets this command's log level.
    pub log_output_level: Option<String>,
    /// Write the log as JSON lines (the binary sets up logging from it).
    pub log_as_json: bool,
}

impl Compat {
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
    /// `--run-validation` in eBPF mode found connections not redirected.
    #[error(transparent)]
    EbpfValidation(#[from] ebpf::validate::ValidationError),
}

impl InitError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            InitError::Validation(_) | InitError::EbpfValidation(_) => EXIT_VALIDATION_FAILED,
            _ => 1,
        }
    }
}

/// Checks the flags into a [`Config`] with this machine's facts.
pub fn config(args: &IstioFlags) -> Result<Config, ConfigError> {
    Config::from_args(args, &IstioEnv::from_process(), &HostFacts::gather())
}

/// `interceptor init`. `stop` ends `--debug`'s log following (the caller's signal handler
/// sets it).
pub fn init(args: &InitOptions, out: &mut dyn Write, stop: &AtomicBool) -> Result<(), InitError> {
    if args.mode == Mechanism::Ebpf {
        // First, as the iptables mode does: the netns cookie, the sk_lookup attachment and
        // the namespace's addresses are all taken from the namespace this thread is in.
        if let Some(ns) = &args.compat.network_namespace {
            enter_netns(ns)?;
        }
        return ebpf::cli::init(args, stop);
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
    let cfg = config(&args.flags)?;
    // As istio-init: the configuration first, so a pod's log says what was asked for.
    tracing::info!("Istio config:\n{}", cfg.describe().trim_end());
    let rules = istio::build(&cfg);
    if args.compat.skip_rule_apply {
        if cfg.run_validation {
            validation::run(&cfg)?;
        }
        return Ok(());
    }
    if cfg.dry_run {
        // The `ip` commands as `# ip ...` comment lines, then the restore input(s).
        let text = routes::dry_run(&cfg) + &restore::dry_run(&rules);
        let _ = out.write_all(text.as_bytes());
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
        tracing::info!(
            "{} --noflush applied:\n{}",
            a.tools.restore.display(),
            a.input.trim_end()
        );
    }
    if cfg.run_validation {
        validation::run(&cfg)?;
    }
    Ok(())
}

/// `interceptor cleanup`. With `--dry-run` it prints the iptables-restore input per
/// iptables variant that holds rules of ours (headed `# iptables-nft-restore`,
/// `# ip6tables-legacy-restore`, ...) and changes nothing.
pub fn cleanup(args: &InitOptions, out: &mut dyn Write) -> Result<(), InitError> {
    if args.mode == Mechanism::Ebpf {
        // The pin directory is named by the namespace's cookie: enter it first.
        if let Some(ns) = &args.compat.network_namespace {
            enter_netns(ns)?;
        }
        return ebpf::cli::cleanup(args);
    }
    if let Some(ns) = &args.compat.network_namespace {
        enter_netns(ns)?;
    }
    let cfg = config(&args.flags)?;
    let done = iptables::cleanup(&cfg)?;
    if cfg.dry_run {
        // Per variant with something to remove: `# <its restore binary>` and the input,
        // then `# nft delete table ...` for each table init created that would be empty.
        for c in done {
            let restore = c
                .tools
                .restore
                .file_name()
                .unwrap_or_default()
                .to_string_lossy();
            let mut text = String::new();
            if !c.input.is_empty() {
                text = format!("# {restore}\n{}", c.input);
            }
            for t in &c.tables_deleted {
                text += &format!(
                    "# {}\n",
                    iptables::tables::delete_command(c.tools.family, *t)
                );
            }
            let _ = out.write_all(text.as_bytes());
        }
        return Ok(());
    }
    routes::unconfigure(&cfg);
    Ok(())
}
