//! Putting sidecar rules into the kernel and taking them out again.
//!
//! Each family is changed by one `iptables-restore --noflush` transaction, so a family's
//! rules go in whole or not at all. The transaction is planned against what is there now
//! (`reconcile`): our previous rules in built-in chains are deleted before they are added
//! again and own chains the configuration no longer has are removed, so `init` twice, or
//! `init` with changed flags, converges on exactly one copy of the configured ruleset.

pub mod apply;
pub mod backend;
pub mod routes;
pub mod save;
pub mod state;
pub mod tables;

pub use apply::{apply, cleanup, Cleaned};
pub use backend::{detect, Tools};

use crate::config::Backend;
use crate::rules::Family;

#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("no iptables found for {}: install iptables (looked for the legacy and nft binaries with their -save and -restore in PATH)", family_name(*.0))]
    Missing(Family),
    #[error("--force-iptables-binary {}: {} not found in PATH", .0.name(), forced_names(*.0, *.1))]
    Forced(Backend, Family),
    #[error("cannot run {0}: {1}")]
    Exec(String, String),
    #[error("{what} failed: {stderr}")]
    Failed { what: String, stderr: String },
    #[error("cleanup --force-iptables-binary {}: cleaned that variant only; rules or chains of ours remain in {remaining}; run `interceptor cleanup` without --force-iptables-binary to clean every variant", .forced.name())]
    Remains {
        forced: Backend,
        /// Each other variant and what it holds (`iptables-legacy (nat: ISTIO_OUTPUT, ...)`).
        remaining: String,
    },
    #[error("missing CAP_NET_ADMIN: changing iptables rules needs it (run as root, or add the NET_ADMIN capability)")]
    NoNetAdmin,
}

fn family_name(f: Family) -> &'static str {
    match f {
        Family::V4 => "IPv4 (iptables)",
        Family::V6 => "IPv6 (ip6tables)",
    }
}

fn forced_names(b: Backend, f: Family) -> String {
    let base = match f {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    };
    format!(
        "{base}-{0}, {base}-{0}-save or {base}-{0}-restore",
        b.name()
    )
}

/// Whether this process may change the network namespace's firewall (CAP_NET_ADMIN in its
/// effective set).
pub(crate) fn has_net_admin() -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}
