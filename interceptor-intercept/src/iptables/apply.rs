//! Planning and running the restore transactions for `init` and `cleanup`.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::config::{Backend, Config, InterceptionMode};
use crate::rules::builder::{is_builtin, is_own_chain};
use crate::rules::restore::Transaction;
use crate::rules::{istio, Family, Rule, RuleSet, Table};

use super::backend::{available, detect, Tools};
use super::save::{Saved, SavedTable};
use super::state;
use super::tables::{self, Fate};
use super::{has_net_admin, IptablesError};

/// What `init` did to one family.
#[derive(Debug)]
pub struct Applied {
    pub tools: Tools,
    /// The restore input that was run.
    pub input: String,
}

/// Whether a rule is in the kernel now (`iptables -C`).
fn rule_exists(tools: &Tools, table: Table, chain: &str, args: &[String]) -> bool {
    tools
        .iptables_cmd()
        .args(["-t", table.name(), "-C", chain])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Deletions of our rules in built-in chains: every saved rule there that jumps into an
/// own chain, and each of `known` (rules we put there that jump elsewhere: RETURN, MARK,
/// CONNMARK) that is present.
fn delete_ours(tx: &mut Transaction, tools: &Tools, saved: &Saved, known: &[&Rule]) {
    for (name, table) in &saved.tables {
        let Some(t) = Table::from_name(name) else {
            continue;
        };
        for (chain, args) in &table.rules {
            if is_builtin(chain) && SavedTable::target(args).is_some_and(is_own_chain) {
                push_unique(&mut tx.block(t).delete, format!("{chain} {args}"));
            }
        }
    }
    for r in known {
        if is_builtin(&r.chain) && !r.target().is_some_and(is_own_chain) {
            let present = saved.tables.contains_key(r.table.name())
                && rule_exists(tools, r.table, &r.chain, &r.args);
            if present {
                push_unique(
                    &mut tx.block(r.table).delete,
                    format!("{} {}", r.chain, r.args.join(" ")),
                );
            }
        }
    }
}

fn push_unique(v: &mut Vec<String>, s: String) {
    if !v.contains(&s) {
        v.push(s);
    }
}

/// The `init` transaction for one family: the configured rules, after removing what an
/// earlier `init` left.
/// `earlier` are the rules an earlier `init` recorded (see [`state`]).
pub(crate) fn plan_init(
    rules: &RuleSet,
    family: Family,
    tools: &Tools,
    saved: &Saved,
    earlier: &[&Rule],
) -> Transaction {
    let mut tx = Transaction::from_rules(rules, family);
    let known: Vec<&Rule> = rules
        .rules(family)
        .iter()
        .chain(earlier.iter().copied())
        .collect();
    delete_ours(&mut tx, tools, saved, &known);
    for (name, table) in &saved.tables {
        let Some(t) = Table::from_name(name) else {
            continue;
        };
        let planned = rules.chains(family, t);
        for (chain, _) in &table.chains {
            if is_own_chain(chain) && !planned.contains(chain) {
                tx.block(t).remove.push(chain.clone());
            }
        }
    }
    tx
}

/// The `cleanup` transaction for one family: no rule of ours in built-in chains, no own chain.
pub(crate) fn plan_cleanup(known: &[&Rule], tools: &Tools, saved: &Saved) -> Transaction {
    let mut tx = Transaction::default();
    delete_ours(&mut tx, tools, saved, known);
    for (name, table) in &saved.tables {
        let Some(t) = Table::from_name(name) else {
            continue;
        };
        for (chain, _) in &table.chains {
            if is_own_chain(chain) {
                tx.block(t).remove.push(chain.clone());
            }
        }
    }
    tx
}

/// Runs one restore transaction.
fn run_restore(tools: &Tools, input: &str, noflush: bool) -> Result<(), IptablesError> {
    let what = tools.restore.display().to_string();
    let mut cmd: Command = tools.restore_cmd();
    if noflush {
        cmd.arg("--noflush");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| IptablesError::Exec(what.clone(), e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| IptablesError::Exec(what.clone(), e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| IptablesError::Exec(what.clone(), e.to_string()))?;
    if !out.status.success() {
        return Err(IptablesError::Failed {
            what: format!("{what} (nothing of this family was changed)"),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

fn families(ipv6: bool) -> Vec<Family> {
    if ipv6 {
        vec![Family::V4, Family::V6]
    } else {
        vec![Family::V4]
    }
}

/// Applies `rules`: one transaction per family. When a later family fails, the earlier ones
/// are put back as they were, so nothing is left half-applied.
pub fn apply(cfg: &Config, rules: &RuleSet) -> Result<Vec<Applied>, IptablesError> {
    if !has_net_admin() {
        return Err(IptablesError::NoNetAdmin);
    }
    // Find every binary before changing anything.
    let tools: Vec<Tools> = families(rules.ipv6)
        .into_iter()
        .map(|f| detect(f, cfg.backend))
        .collect::<Result<_, _>>()?;
    let previous = state::load();
    // Tables created by this init or an earlier one: cleanup deletes them when empty.
    let mut created = previous.created.clone();
    let mut done: Vec<(Applied, String, Vec<Table>)> = Vec::new();
    for t in tools {
        let before = t.save_text()?;
        let saved = Saved::parse(&before);
        let tx = plan_init(rules, t.family, &t, &saved, &previous.rules_of(t.family));
        let input = tx.render();
        if let Err(e) = run_restore(&t, &input, true) {
            for (applied, before, new_tables) in done.iter().rev() {
                roll_back(&applied.tools, before, new_tables);
            }
            return Err(e);
        }
        let new_tables = new_tables(&t, &tx, &saved);
        for table in &new_tables {
            if !created.contains(&(t.family, *table)) {
                created.push((t.family, *table));
            }
        }
        done.push((Applied { tools: t, input }, before, new_tables));
    }
    state::store(rules, &created);
    Ok(done.into_iter().map(|(a, _, _)| a).collect())
}

/// The tables `tx` writes to that `saved` did not have: created by running it. Only
/// nf_tables tables count, since only they can be deleted again.
fn new_tables(tools: &Tools, tx: &Transaction, saved: &Saved) -> Vec<Table> {
    if tools.backend != Backend::Nft {
        return Vec::new();
    }
    tx.tables
        .iter()
        .filter(|(t, b)| !b.is_empty() && !saved.tables.contains_key(t.name()))
        .map(|(t, _)| *t)
        .collect()
}

/// Puts one family back to `before`: its tables restored whole, own chains removed from
/// tables it did not have, and the nf_tables tables the failed init created deleted.
fn roll_back(tools: &Tools, before: &str, new_tables: &[Table]) {
    let saved = Saved::parse(before);
    if !saved.tables.is_empty() {
        let _ = run_restore(tools, before, false);
    }
    if let Ok(now) = tools.save_text() {
        let now = Saved::parse(&now);
        let mut tx = plan_cleanup(&[], tools, &now);
        tx.tables
            .retain(|t, _| !saved.tables.contains_key(t.name()));
        if !tx.is_empty() {
            let _ = run_restore(tools, &tx.render(), true);
        }
    }
    for table in new_tables {
        tables::delete_if_empty(tools.family, *table);
    }
}

/// What `cleanup` did (or, with `--dry-run`, would do) to one iptables variant of one
/// family.
#[derive(Debug)]
pub struct Cleaned {
    pub tools: Tools,
    /// The restore input run (empty when the variant held nothing of ours).
    pub input: String,
    /// The nf_tables tables `init` had created, deleted since they were left empty.
    pub tables_deleted: Vec<Table>,
}

/// Removes everything `init` adds, in every table and both families. Own chains and jumps
/// into them are found in the ruleset; the few rules `init` puts in built-in chains that
/// jump elsewhere are found from `init`'s record for this namespace (see [`state`]) and
/// from `cfg` (both interception modes), for rules made without a record. The nf_tables
/// tables `init` created are deleted once empty (see [`tables`]).
///
/// Every installed variant (legacy and nft) is cleaned, since rules can be in both (an
/// `init` forced to one after another went to the other). With `--force-iptables-binary`
/// only that variant is; when another still holds rules of ours, that is an error naming
/// them.
///
/// With `cfg.dry_run` nothing changes; the inputs that would run are returned all the same.
pub fn cleanup(cfg: &Config) -> Result<Vec<Cleaned>, IptablesError> {
    if !has_net_admin() {
        return Err(IptablesError::NoNetAdmin);
    }
    let mut both = cfg.clone();
    both.ipv6 = true;
    let mut tproxy = both.clone();
    tproxy.mode = InterceptionMode::Tproxy;
    let sets = [istio::build(&both), istio::build(&tproxy)];
    let record = state::load();

    let mut cleaned = Vec::new();
    let mut remaining: Vec<(String, String)> = Vec::new();
    for family in Family::both() {
        let variants = match cfg.backend {
            Some(b) => match detect(family, Some(b)) {
                Ok(t) => vec![t],
                Err(e) => return Err(e),
            },
            None => available(family),
        };
        if variants.is_empty() {
            // Without ip6tables there can be no IPv6 rules to remove.
            if family == Family::V6 {
                continue;
            }
            return Err(IptablesError::Missing(family));
        }
        let known: Vec<&Rule> = sets
            .iter()
            .flat_map(|s| s.rules(family))
            .chain(record.rules_of(family))
            .collect();
        for tools in variants {
            let saved = Saved::parse(&tools.save_text()?);
            let tx = plan_cleanup(&known, &tools, &saved);
            let input = tx.render();
            if !tx.is_empty() && !cfg.dry_run {
                run_restore(&tools, &input, true)?;
                tracing::info!("{} removed:\n{}", tools.restore.display(), input.trim_end());
            }
            let mut tables_deleted = Vec::new();
            if tools.backend == Backend::Nft {
                for table in record.created_in(family) {
                    let gone = if cfg.dry_run {
                        saved
                            .tables
                            .get(table.name())
                            .is_some_and(|st| tables::empty_after(st, tx.tables.get(&table)))
                    } else {
                        tables::delete_if_empty(family, table) == Fate::Deleted
                    };
                    if gone {
                        tables_deleted.push(table);
                    }
                }
            }
            cleaned.push(Cleaned {
                tools,
                input,
                tables_deleted,
            });
        }
        if let Some(forced) = cfg.backend {
            for other in available(family)
                .into_iter()
                .filter(|t| t.backend != forced)
            {
                // A variant that cannot even be read holds nothing we could remove.
                let Ok(text) = other.save_text() else {
                    continue;
                };
                let tx = plan_cleanup(&known, &other, &Saved::parse(&text));
                if !tx.is_empty() {
                    remaining.push((other.name(), held(&tx)));
                }
            }
        }
    }
    if let Some(forced) = cfg.backend.filter(|_| !remaining.is_empty()) {
        // The record stays: it serves the cleanup that removes the rest.
        let remaining: Vec<String> = remaining
            .into_iter()
            .map(|(variant, what)| format!("{variant} ({what})"))
            .collect();
        return Err(IptablesError::Remains {
            forced,
            remaining: remaining.join(", "),
        });
    }
    if !cfg.dry_run {
        state::forget();
    }
    Ok(cleaned)
}

/// What a cleanup transaction would remove, by table: own chains and the count of rules
/// in built-in chains.
fn held(tx: &Transaction) -> String {
    tx.tables
        .iter()
        .filter(|(_, b)| !b.is_empty())
        .map(|(t, b)| {
            let mut parts = b.remove.clone();
            if !b.delete.is_empty() {
                parts.push(format!("{} rule(s) in built-in chains", b.delete.len()));
            }
            format!("{t}: {}", parts.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// Tools whose `iptables -C` always says "no such rule".
    fn tools() -> Tools {
        Tools {
            backend: Backend::Nft,
            family: Family::V4,
            iptables: PathBuf::from("/bin/false"),
            save: PathBuf::from("/bin/false"),
            restore: PathBuf::from("/bin/false"),
        }
    }

    fn rules() -> RuleSet {
        let mut r = RuleSet::new(false);
        r.append(
            "PREROUTING",
            Table::Nat,
            &["-p", "tcp", "-j", "ISTIO_INBOUND"],
        );
        r.append(
            "ISTIO_INBOUND",
            Table::Nat,
            &["-p", "tcp", "-j", "ISTIO_IN_REDIRECT"],
        );
        r.append(
            "ISTIO_IN_REDIRECT",
            Table::Nat,
            &["-p", "tcp", "-j", "REDIRECT", "--to-ports", "15006"],
        );
        r
    }

    const EARLIER: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:ISTIO_INBOUND - [0:0]\n:ISTIO_IN_REDIRECT - [0:0]\n:ISTIO_OUTPUT - [0:0]\n-A PREROUTING -p tcp -j ISTIO_INBOUND\n-A PREROUTING -s 10.0.0.0/8 -j RETURN\n-A OUTPUT -j ISTIO_OUTPUT\n-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT\nCOMMIT\n*mangle\n:PREROUTING ACCEPT [0:0]\n:ISTIO_DIVERT - [0:0]\n-A PREROUTING -p tcp -j ISTIO_DIVERT\nCOMMIT\n";

    #[test]
    fn fresh_namespace_gets_the_plain_input() {
        let tx = plan_init(&rules(), Family::V4, &tools(), &Saved::default(), &[]);
        assert_eq!(tx, Transaction::from_rules(&rules(), Family::V4));
    }

    #[test]
    fn init_over_an_earlier_init_converges() {
        let tx = plan_init(&rules(), Family::V4, &tools(), &Saved::parse(EARLIER), &[]);
        let text = tx.render();
        // Our jumps go, someone else's rule stays; stale own chains are removed after the
        // jumps into them are gone; planned chains are re-declared (emptied).
        assert_eq!(
            text,
            "*mangle\n-D PREROUTING -p tcp -j ISTIO_DIVERT\n-F ISTIO_DIVERT\n-X ISTIO_DIVERT\nCOMMIT\n\
             *nat\n:ISTIO_INBOUND - [0:0]\n:ISTIO_IN_REDIRECT - [0:0]\n-D PREROUTING -p tcp -j ISTIO_INBOUND\n\
             -D OUTPUT -j ISTIO_OUTPUT\n-F ISTIO_OUTPUT\n-X ISTIO_OUTPUT\n-A PREROUTING -p tcp -j ISTIO_INBOUND\n\
             -A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT\n-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006\nCOMMIT\n"
        );
        assert!(!text.contains("10.0.0.0/8"));
    }

    #[test]
    fn cleanup_removes_every_own_chain_and_jump() {
        let tx = plan_cleanup(&[], &tools(), &Saved::parse(EARLIER));
        let text = tx.render();
        assert_eq!(
            text,
            "*mangle\n-D PREROUTING -p tcp -j ISTIO_DIVERT\n-F ISTIO_DIVERT\n-X ISTIO_DIVERT\nCOMMIT\n\
             *nat\n-D PREROUTING -p tcp -j ISTIO_INBOUND\n-D OUTPUT -j ISTIO_OUTPUT\n-F ISTIO_INBOUND\n\
             -F ISTIO_IN_REDIRECT\n-F ISTIO_OUTPUT\n-X ISTIO_INBOUND\n-X ISTIO_IN_REDIRECT\n-X ISTIO_OUTPUT\nCOMMIT\n"
        );
        assert!(plan_cleanup(&[], &tools(), &Saved::default()).is_empty());
    }

    /// Another tool's chains that merely share istio's prefix.
    const OTHERS: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:ISTIO_CUSTOM - [0:0]\n:ISTIO_OUTPUT_X - [0:0]\n-A OUTPUT -p udp -j ISTIO_CUSTOM\n-A PREROUTING -j ISTIO_OUTPUT_X\n-A ISTIO_CUSTOM -j RETURN\nCOMMIT\n*filter\n:INPUT ACCEPT [0:0]\n:ISTIO_CUSTOM - [0:0]\n-A INPUT -j ISTIO_CUSTOM\nCOMMIT\n";

    #[test]
    fn chains_that_only_share_the_prefix_are_left_alone() {
        assert!(plan_cleanup(&[], &tools(), &Saved::parse(OTHERS)).is_empty());
        let tx = plan_init(&rules(), Family::V4, &tools(), &Saved::parse(OTHERS), &[]);
        assert_eq!(tx, Transaction::from_rules(&rules(), Family::V4));
        let mixed = format!("{EARLIER}{OTHERS}");
        let text = plan_cleanup(&[], &tools(), &Saved::parse(&mixed)).render();
        assert!(
            text.contains("-X ISTIO_OUTPUT\n")
                && !text.contains("CUSTOM")
                && !text.contains("ISTIO_OUTPUT_X"),
            "{text}"
        );
    }

    #[test]
    fn new_nft_tables_are_the_ones_written_and_absent_before() {
        let tx = Transaction::from_rules(&rules(), Family::V4);
        assert_eq!(
            new_tables(&tools(), &tx, &Saved::default()),
            vec![Table::Nat]
        );
        assert!(new_tables(&tools(), &tx, &Saved::parse(EARLIER)).is_empty());
        let legacy = Tools {
            backend: Backend::Legacy,
            ..tools()
        };
        assert!(new_tables(&legacy, &tx, &Saved::default()).is_empty());
    }
}
