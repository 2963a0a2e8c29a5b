//! Deleting the nf_tables tables `init` created. iptables creates a table on first use and
//! has no way to delete one, so after `cleanup` an `iptables-save` would show a `*nat`
//! (empty built-in chains) that was not there before `init`. With the nft backend the
//! table is an ordinary nf_tables table, which `nft delete table` removes.
//!
//! Only tables recorded as created by `init` (see [`super::state`]) are candidates, and
//! only when nf_tables itself (`nft -j list table`, which also sees what iptables-save
//! cannot show) finds nothing in them but base chains with an `accept` policy and no rule:
//! deleting such a table changes no packet's fate. Without the `nft` program the table
//! stays, as it would with the legacy backend.

use std::process::{Command, Stdio};

use crate::rules::restore::TableBlock;
use crate::rules::{Family, Table};

use super::backend::which;
use super::save::SavedTable;

/// What became of a created table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fate {
    Deleted,
    /// Something else lives in it now: it stays.
    NotEmpty,
    /// Already gone.
    Absent,
    /// No `nft` program to delete it with: it stays.
    NoNft,
}

/// The nf_tables family name of an iptables family.
pub(crate) fn nft_family(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

/// The command that deletes a table, as `cleanup --dry-run` shows it.
pub(crate) fn delete_command(family: Family, table: Table) -> String {
    format!("nft delete table {} {table}", nft_family(family))
}

/// Whether `nft -j list table` output shows an empty table: only the table, its base
/// chains with an accept policy, and metainfo.
pub(crate) fn json_is_empty(text: &str) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
        return false;
    };
    let Some(items) = v.get("nftables").and_then(|n| n.as_array()) else {
        return false;
    };
    items.iter().all(|item| {
        if item.get("metainfo").is_some() || item.get("table").is_some() {
            return true;
        }
        item.get("chain").is_some_and(|c| {
            c.get("hook").is_some() && c.get("policy").and_then(|p| p.as_str()) == Some("accept")
        })
    })
}

/// Deletes `table` of `family` if it holds nothing (see the module comment).
pub(crate) fn delete_if_empty(family: Family, table: Table) -> Fate {
    let Some(nft) = which("nft") else {
        tracing::info!(
            "nft is not in PATH: leaving the empty {} table {table} that init created",
            nft_family(family)
        );
        return Fate::NoNft;
    };
    let listed = Command::new(&nft)
        .args(["-j", "list", "table", nft_family(family), table.name()])
        .stdin(Stdio::null())
        .output();
    let listed = match listed {
        Ok(o) if o.status.success() => o.stdout,
        _ => return Fate::Absent,
    };
    if !json_is_empty(&String::from_utf8_lossy(&listed)) {
        tracing::info!(
            "leaving the {} table {table}: it holds more than empty built-in chains",
            nft_family(family)
        );
        return Fate::NotEmpty;
    }
    let deleted = Command::new(&nft)
        .args(["delete", "table", nft_family(family), table.name()])
        .stdin(Stdio::null())
        .output();
    match deleted {
        Ok(o) if o.status.success() => {
            tracing::info!("{}", delete_command(family, table));
            Fate::Deleted
        }
        Ok(o) => {
            tracing::warn!(
                "{} failed: {}",
                delete_command(family, table),
                String::from_utf8_lossy(&o.stderr).trim()
            );
            Fate::NotEmpty
        }
        Err(e) => {
            tracing::warn!("{} failed: {e}", delete_command(family, table));
            Fate::NotEmpty
        }
    }
}

/// For `--dry-run`: whether a saved table would hold nothing once `block` (the cleanup's
/// deletions for it) ran: no rule left, no user chain, every policy ACCEPT.
pub(crate) fn empty_after(saved: &SavedTable, block: Option<&TableBlock>) -> bool {
    let removed = |c: &str| block.is_some_and(|b| b.remove.iter().any(|r| r == c));
    let deleted = |chain: &str, args: &str| {
        block.is_some_and(|b| b.delete.iter().any(|d| *d == format!("{chain} {args}")))
    };
    saved
        .chains
        .iter()
        .all(|(c, policy)| removed(c) || policy == "ACCEPT")
        && saved
            .rules
            .iter()
            .all(|(chain, args)| removed(chain) || deleted(chain, args))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iptables::save::Saved;

    #[test]
    fn only_base_chains_with_accept_make_an_empty_table() {
        let base = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "ip", "name": "nat", "handle": 1}}, {"chain": {"family": "ip", "table": "nat", "name": "OUTPUT", "handle": 1, "type": "nat", "hook": "output", "prio": -100, "policy": "accept"}}"#;
        assert!(json_is_empty(&format!("{base}]}}")));
        let user_chain =
            r#", {"chain": {"family": "ip", "table": "nat", "name": "FOO", "handle": 3}}"#;
        assert!(!json_is_empty(&format!("{base}{user_chain}]}}")));
        let rule = r#", {"rule": {"family": "ip", "table": "nat", "chain": "OUTPUT", "handle": 4, "expr": []}}"#;
        assert!(!json_is_empty(&format!("{base}{rule}]}}")));
        let drop = base.replace(r#""policy": "accept""#, r#""policy": "drop""#);
        assert!(!json_is_empty(&format!("{drop}]}}")));
        assert!(!json_is_empty("not json"));
    }

    #[test]
    fn dry_run_emptiness_follows_the_deletions() {
        let saved = Saved::parse("*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:ISTIO_OUTPUT - [0:0]\n-A OUTPUT -j ISTIO_OUTPUT\n-A ISTIO_OUTPUT -j RETURN\nCOMMIT\n");
        let nat = &saved.tables["nat"];
        let block = TableBlock {
            delete: vec!["OUTPUT -j ISTIO_OUTPUT".into()],
            remove: vec!["ISTIO_OUTPUT".into()],
            ..Default::default()
        };
        assert!(empty_after(nat, Some(&block)));
        assert!(!empty_after(nat, None));
        let other =
            Saved::parse("*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -p udp -j RETURN\nCOMMIT\n");
        assert!(!empty_after(&other.tables["nat"], Some(&block)));
    }
}
