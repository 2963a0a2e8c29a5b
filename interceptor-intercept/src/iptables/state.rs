//! What `init` put into built-in chains that does not jump into an own chain (interface
//! RETURNs, TPROXY marks), remembered per network namespace so that `cleanup`, or an `init`
//! with other flags, can find those rules again without being told the old flags. Jumps
//! into `ISTIO_*` chains need no record: they are recognised by their target.
//!
//! The record lives in `/run/interceptor/netns-cookie-<netns cookie>.rules`, one rule a line:
//! `<4|6> <table> <chain> <args...>`. Losing it only means falling back to the flags.

use std::path::PathBuf;

use crate::rules::builder::{is_builtin, is_own_chain};
use crate::rules::{Family, Op, Rule, RuleSet, Table};

const DIR: &str = "/run/interceptor";

fn path() -> Option<PathBuf> {
    let id = match netns_cookie() {
        Some(c) => format!("cookie-{c}"),
        None => {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata("/proc/self/ns/net").ok()?;
            format!("{}-{}", m.dev(), m.ino())
        }
    };
    Some(PathBuf::from(DIR).join(format!("netns-{id}.rules")))
}

/// The network namespace's cookie (`SO_NETNS_COOKIE`, Linux 5.14+): unlike the inode, never
/// reused by a later namespace, so a stale record cannot be mistaken for this one's.
fn netns_cookie() -> Option<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let sock = std::net::UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0)).ok()?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: cookie is a writable u64 and len holds its size.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            &mut cookie as *mut u64 as *mut libc::c_void,
            &mut len,
        )
    };
    (rc == 0).then_some(cookie)
}

/// The rules of `rules` that need remembering.
pub fn remembered(rules: &RuleSet) -> Vec<(Family, Rule)> {
    let mut out = Vec::new();
    for family in Family::both() {
        for r in rules.rules(family) {
            if is_builtin(&r.chain) && !r.target().is_some_and(is_own_chain) {
                out.push((family, r.clone()));
            }
        }
    }
    out
}

pub fn render(rules: &[(Family, Rule)]) -> String {
    rules
        .iter()
        .map(|(f, r)| {
            let fam = if *f == Family::V4 { "4" } else { "6" };
            format!("{fam} {} {} {}\n", r.table, r.chain, r.args.join(" "))
        })
        .collect()
}

pub fn parse(text: &str) -> Vec<(Family, Rule)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let family = match w.next()? {
                "4" => Family::V4,
                "6" => Family::V6,
                _ => return None,
            };
            let table = Table::from_name(w.next()?)?;
            let chain = w.next()?.to_string();
            let args = w.map(str::to_string).collect();
            Some((
                family,
                Rule {
                    table,
                    chain,
                    op: Op::Append,
                    args,
                },
            ))
        })
        .collect()
}

/// The record for this network namespace (empty when there is none).
pub fn load() -> Vec<(Family, Rule)> {
    path()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|t| parse(&t))
        .unwrap_or_default()
}

pub fn store(rules: &RuleSet) {
    let Some(p) = path() else { return };
    let remembered = remembered(rules);
    if remembered.is_empty() {
        let _ = std::fs::remove_file(&p);
        return;
    }
    if std::fs::create_dir_all(DIR).is_ok() {
        if let Err(e) = std::fs::write(&p, render(&remembered)) {
            tracing::warn!("cannot record rules in {}: {e}", p.display());
        }
    }
}

pub fn forget() {
    if let Some(p) = path() {
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut rs = RuleSet::new(true);
        rs.append("PREROUTING", Table::Nat, &["-i", "eth1", "-j", "RETURN"]);
        rs.append(
            "PREROUTING",
            Table::Nat,
            &["-p", "tcp", "-j", "ISTIO_INBOUND"],
        );
        rs.append("ISTIO_OUTPUT", Table::Nat, &["-j", "RETURN"]);
        let r = remembered(&rs);
        assert_eq!(
            r.len(),
            2,
            "only the built-in chain rule without an own target, per family"
        );
        assert_eq!(parse(&render(&r)), r);
    }
}
