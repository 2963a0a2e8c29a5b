//! What `init` leaves that `cleanup` cannot recognise by itself, remembered per network
//! namespace:
//!
//! - the rules it put into built-in chains that do not jump into one of istio's chains
//!   (interface RETURNs, TPROXY marks), so that `cleanup`, or an `init` with other flags,
//!   finds them without being told the old flags (jumps into istio's chains need no
//!   record: their target gives them away);
//! - the nf_tables tables it had to create (`nat`, `mangle`, `raw` absent before the first
//!   `init`), so that `cleanup` deletes them again once they are empty, leaving
//!   `iptables-save` as it was. A table that existed before is never deleted.
//!
//! The record lives in `/run/interceptor/netns-cookie-<netns cookie>.rules`, one item a
//! line: `<4|6> <table> <chain> <args...>` for a rule, `created <4|6> <table>` for a table.
//! Losing it only means falling back to the flags, and leaving created tables (empty).

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

/// What one network namespace's record holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// Rules in built-in chains that jump elsewhere than istio's chains.
    pub rules: Vec<(Family, Rule)>,
    /// nf_tables tables `init` created.
    pub created: Vec<(Family, Table)>,
}

impl Record {
    /// The recorded rules of one family.
    pub(crate) fn rules_of(&self, family: Family) -> Vec<&Rule> {
        self.rules
            .iter()
            .filter(|(f, _)| *f == family)
            .map(|(_, r)| r)
            .collect()
    }

    /// The recorded created tables of one family.
    pub(crate) fn created_in(&self, family: Family) -> Vec<Table> {
        self.created
            .iter()
            .filter(|(f, _)| *f == family)
            .map(|(_, t)| *t)
            .collect()
    }
}

fn family_digit(f: Family) -> &'static str {
    if f == Family::V4 {
        "4"
    } else {
        "6"
    }
}

fn family_of(digit: &str) -> Option<Family> {
    match digit {
        "4" => Some(Family::V4),
        "6" => Some(Family::V6),
        _ => None,
    }
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

pub fn render(record: &Record) -> String {
    let mut out = String::new();
    for (f, r) in &record.rules {
        out.push_str(&format!(
            "{} {} {} {}\n",
            family_digit(*f),
            r.table,
            r.chain,
            r.args.join(" ")
        ));
    }
    for (f, t) in &record.created {
        out.push_str(&format!("created {} {t}\n", family_digit(*f)));
    }
    out
}

pub fn parse(text: &str) -> Record {
    let mut record = Record::default();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        let Some(first) = w.next() else { continue };
        if first == "created" {
            if let (Some(f), Some(t)) = (
                w.next().and_then(family_of),
                w.next().and_then(Table::from_name),
            ) {
                record.created.push((f, t));
            }
            continue;
        }
        let (Some(family), Some(table), Some(chain)) = (
            family_of(first),
            w.next().and_then(Table::from_name),
            w.next(),
        ) else {
            continue;
        };
        record.rules.push((
            family,
            Rule {
                table,
                chain: chain.to_string(),
                op: Op::Append,
                args: w.map(str::to_string).collect(),
            },
        ));
    }
    record
}

/// The record for this network namespace (empty when there is none).
pub fn load() -> Record {
    path()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|t| parse(&t))
        .unwrap_or_default()
}

/// Records what an `init` of `rules` leaves, and the tables `created` so far.
pub fn store(rules: &RuleSet, created: &[(Family, Table)]) {
    let Some(p) = path() else { return };
    let record = Record {
        rules: remembered(rules),
        created: created.to_vec(),
    };
    if record == Record::default() {
        let _ = std::fs::remove_file(&p);
        return;
    }
    if std::fs::create_dir_all(DIR).is_ok() {
        if let Err(e) = std::fs::write(&p, render(&record)) {
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
        let record = Record {
            rules: r,
            created: vec![(Family::V4, Table::Nat), (Family::V6, Table::Mangle)],
        };
        let text = render(&record);
        assert!(
            text.ends_with("created 4 nat\ncreated 6 mangle\n"),
            "{text}"
        );
        assert_eq!(parse(&text), record);
        assert_eq!(record.created_in(Family::V6), vec![Table::Mangle]);
        assert_eq!(record.rules_of(Family::V4).len(), 1);
    }
}
