//! Setting one pod's interception up, checking it and taking it down, in its network
//! namespace: the plugin's ADD, CHECK and DEL and the agent's repairs all come here.
//!
//! - iptables: the same ruleset `interceptor init` writes for the pod's istio-iptables
//!   arguments (`init::init` itself, run on a thread inside the namespace: one
//!   `iptables-restore` transaction per family, all or nothing), then the namespace's
//!   `iptables-save` lines that belong to the interception, kept as the pod's fingerprint.
//! - eBPF: nothing is loaded; the namespace is registered with the programs the agent
//!   attached for the node (`ebpf::node`): its settings in the pinned maps, the pinned
//!   sk_lookup program attached to it.

use std::io;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use interceptor_intercept::config::Config;
use interceptor_intercept::ebpf::netns_entries::LocalAddrs;
use interceptor_intercept::ebpf::{node, Settings};
use interceptor_intercept::init::{self, InitError, InitOptions, Mechanism};
use interceptor_intercept::iptables::{self, save::Saved, save::SavedTable, IptablesError};
use interceptor_intercept::rules::builder::is_own_chain;
use interceptor_intercept::rules::{istio, Family};

use crate::netns::{in_netns, NetnsError};

/// Turns istio-iptables arguments into `init`'s options: the `interceptor` binary's own
/// flag parser (one parser for `init` and the plugin), handed in by the binary.
pub type ArgsParser = fn(&[String]) -> Result<InitOptions, String>;

/// How a pod is intercepted (the conflist's `mode`).
pub use interceptor_cni::Mechanism as Mode;

#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("invalid istio-iptables arguments {args:?}: {reason}")]
    Args { args: Vec<String>, reason: String },
    #[error("{0}")]
    Init(#[from] InitError),
    #[error("reading the rules back: {0}")]
    Save(#[from] IptablesError),
    #[error("{0:#}")]
    Ebpf(anyhow::Error),
    #[error("{0}")]
    Node(#[from] node::NodeError),
    #[error("{path} is another network namespace now (cookie {cookie}; the pod's was {recorded})")]
    Replaced {
        path: String,
        cookie: u64,
        recorded: u64,
    },
}

impl InterceptError {
    /// The pod's namespace no longer exists (or its path names another one): its record
    /// is stale.
    pub fn namespace_gone(&self) -> bool {
        match self {
            InterceptError::Netns(e) => e.is_gone(),
            InterceptError::Replaced { .. } => true,
            _ => false,
        }
    }
}

/// What ADD set up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub netns_cookie: u64,
    /// iptables mode: the fingerprint (see [`fingerprint`]).
    pub iptables_rules: Vec<String>,
}

/// A flag nothing sets: `init` never follows logs here.
static NEVER: AtomicBool = AtomicBool::new(false);

/// The options for `args`, pinned to what the plugin does: the mechanism is `mode`, the
/// namespace is entered by the caller, and nothing from the environment may turn the
/// run into a dry run (an ADD that succeeds without rules would fail open).
pub fn options(
    parse: ArgsParser,
    mode: Mode,
    args: &[String],
) -> Result<InitOptions, InterceptError> {
    let bad = |reason: String| InterceptError::Args {
        args: args.to_vec(),
        reason,
    };
    let mut o = parse(args).map_err(bad)?;
    if o.flags.dry_run {
        return Err(bad(
            "--dry-run (or DRY_RUN in the environment) would apply nothing".into(),
        ));
    }
    o.mode = match mode {
        Mode::Iptables => Mechanism::Iptables,
        Mode::Ebpf => Mechanism::Ebpf,
    };
    o.cgroup = None;
    o.debug = false;
    o.compat.network_namespace = None;
    o.compat.skip_rule_apply = false;
    o.compat.cleanup_only = false;
    Ok(o)
}

/// Sets the pod up in the namespace at `netns`. All or nothing: on failure nothing of it
/// is left in the namespace or the maps.
pub fn apply(mode: Mode, netns: &Path, opts: &InitOptions) -> Result<Applied, InterceptError> {
    match mode {
        Mode::Iptables => in_netns(netns, |_| {
            let netns_cookie = nonzero_cookie()?;
            init::init(opts, &mut io::sink(), &NEVER)?;
            match fingerprint(&init::config(&opts.flags).map_err(InitError::from)?) {
                Ok(iptables_rules) => Ok(Applied {
                    netns_cookie,
                    iptables_rules,
                }),
                Err(e) => {
                    let _ = init::cleanup(opts, &mut io::sink());
                    Err(e.into())
                }
            }
        })?,
        Mode::Ebpf => in_netns(netns, |file| {
            let (cookie, settings, local) = ebpf_facts(opts)?;
            node::register(std::os::fd::AsFd::as_fd(file), cookie, &settings, &local)?;
            Ok(Applied {
                netns_cookie: cookie,
                iptables_rules: Vec::new(),
            })
        })?,
    }
}

/// What is missing in the namespace at `netns` compared with what [`apply`] set up
/// (`recorded`): one line per problem, empty when all is in place.
pub fn check(
    mode: Mode,
    netns: &Path,
    opts: &InitOptions,
    recorded: &Applied,
) -> Result<Vec<String>, InterceptError> {
    in_netns(netns, |file| {
        let cookie = nonzero_cookie()?;
        if cookie != recorded.netns_cookie {
            return Err(InterceptError::Replaced {
                path: netns.display().to_string(),
                cookie,
                recorded: recorded.netns_cookie,
            });
        }
        match mode {
            Mode::Iptables => {
                let cfg = init::config(&opts.flags).map_err(InitError::from)?;
                let now = fingerprint(&cfg)?;
                Ok(diff(&recorded.iptables_rules, &now))
            }
            Mode::Ebpf => {
                let (cookie, settings, local) = ebpf_facts(opts)?;
                let ino = node::netns_inode(file).map_err(InterceptError::Ebpf)?;
                Ok(node::check(cookie, ino, &settings, &local))
            }
        }
    })?
}

/// Takes the pod down. iptables: the rules in the namespace (when it still exists; its
/// rules go with it otherwise). eBPF: the namespace's entries and link, found by the
/// recorded cookie even when the namespace is gone.
pub fn remove(
    mode: Mode,
    netns: Option<&Path>,
    opts: Option<&InitOptions>,
    cookie: Option<u64>,
) -> Result<(), InterceptError> {
    match mode {
        Mode::Iptables => {
            let (Some(netns), Some(opts)) = (netns, opts) else {
                return Ok(());
            };
            match in_netns(netns, |_| init::cleanup(opts, &mut io::sink())) {
                Ok(r) => Ok(r?),
                Err(e) if e.is_gone() => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        Mode::Ebpf => {
            let cookie = match (cookie, netns) {
                (Some(c), _) => Some(c),
                (None, Some(ns)) => match in_netns(ns, |_| node::current_netns_cookie()) {
                    Ok(c) => Some(c.map_err(InterceptError::Ebpf)?),
                    Err(e) if e.is_gone() => None,
                    Err(e) => return Err(e.into()),
                },
                (None, None) => None,
            };
            if let Some(c) = cookie {
                node::unregister(c).map_err(InterceptError::Ebpf)?;
            }
            Ok(())
        }
    }
}

/// The cookie of the namespace at `netns`.
pub fn netns_cookie(netns: &Path) -> Result<u64, InterceptError> {
    in_netns(netns, |_| node::current_netns_cookie())?.map_err(InterceptError::Ebpf)
}

/// The eBPF view of the calling thread's namespace: cookie, settings, addresses.
fn ebpf_facts(opts: &InitOptions) -> Result<(u64, Settings, LocalAddrs), InterceptError> {
    let cookie = nonzero_cookie()?;
    let cfg = init::config(&opts.flags).map_err(InitError::from)?;
    let settings = Settings::from_config(&cfg).map_err(InterceptError::Ebpf)?;
    let local = LocalAddrs::current().map_err(InterceptError::Ebpf)?;
    Ok((cookie, settings, local))
}

/// The calling thread's namespace cookie; 0 would match no socket, so it is an error.
fn nonzero_cookie() -> Result<u64, InterceptError> {
    match node::current_netns_cookie().map_err(InterceptError::Ebpf)? {
        0 => Err(InterceptError::Ebpf(anyhow::anyhow!(
            "the kernel gave network namespace cookie 0"
        ))),
        c => Ok(c),
    }
}

/// The interception's lines in the calling thread's namespace, per family the
/// configuration writes: `<4|6> <table> -A <chain> <args>` for every rule in one of our
/// chains or jumping into one, and `<4|6> <table> :<chain>` for each of our chains, in
/// `iptables-save` order.
pub fn fingerprint(cfg: &Config) -> Result<Vec<String>, IptablesError> {
    let rules = istio::build(cfg);
    let families: &[Family] = if rules.ipv6 {
        &[Family::V4, Family::V6]
    } else {
        &[Family::V4]
    };
    let mut out = Vec::new();
    for &family in families {
        let tools = iptables::detect(family, cfg.backend)?;
        let tag = if family == Family::V4 { "4" } else { "6" };
        let saved = Saved::parse(&tools.save_text()?);
        for (table, t) in &saved.tables {
            for (chain, _) in t.chains.iter().filter(|(c, _)| is_own_chain(c)) {
                out.push(format!("{tag} {table} :{chain}"));
            }
            for (chain, args) in &t.rules {
                if is_own_chain(chain) || SavedTable::target(args).is_some_and(is_own_chain) {
                    out.push(format!("{tag} {table} -A {chain} {args}"));
                }
            }
        }
    }
    Ok(out)
}

/// Problems in one line: the first few, and how many more.
pub fn summary(problems: &[String]) -> String {
    const SHOWN: usize = 4;
    let mut s = problems
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if problems.len() > SHOWN {
        s.push_str(&format!("; and {} more", problems.len() - SHOWN));
    }
    s
}

/// `want` lines missing from `now`, then lines of ours in `now` that `want` lacks.
fn diff(want: &[String], now: &[String]) -> Vec<String> {
    let mut problems: Vec<String> = want
        .iter()
        .filter(|l| !now.contains(l))
        .map(|l| format!("missing: {l}"))
        .collect();
    problems.extend(
        now.iter()
            .filter(|l| !want.contains(l))
            .map(|l| format!("unexpected: {l}")),
    );
    if problems.is_empty() && want != now {
        problems.push("our rules are in another order".into());
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_differences_are_named() {
        let want = vec![
            "4 nat :ISTIO_OUTPUT".to_string(),
            "4 nat -A OUTPUT -j ISTIO_OUTPUT".into(),
        ];
        assert!(diff(&want, &want).is_empty());
        let now = vec!["4 nat :ISTIO_OUTPUT".to_string()];
        assert_eq!(
            diff(&want, &now),
            vec!["missing: 4 nat -A OUTPUT -j ISTIO_OUTPUT"]
        );
        let swapped = vec![want[1].clone(), want[0].clone()];
        assert_eq!(
            diff(&want, &swapped),
            vec!["our rules are in another order"]
        );
    }
}
