//! `iptables-restore --noflush` input.
//!
//! A table block declares each own chain with `:NAME - [0:0]`, which creates it or, under
//! `--noflush`, empties it when it exists: so the same input applied twice leaves the same
//! ruleset (istio writes `-N NAME`, which fails on an existing chain, and instead compares
//! the state first). Before the rules come the deletions that make a re-run or a changed
//! configuration converge: our old rules in built-in chains (`-D`), and own chains the new
//! configuration no longer has (`-F`, then `-X`). All of it is one transaction per family.

use std::collections::BTreeMap;

use super::builder::{Family, RuleSet, Table};

/// What one table block does, in the order it is written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TableBlock {
    /// Own chains to create or empty.
    pub declare: Vec<String>,
    /// Rules to delete, as `CHAIN args...` (written `-D CHAIN args...`).
    pub delete: Vec<String>,
    /// Own chains to empty and remove (after the deletions dropped the jumps into them).
    pub remove: Vec<String>,
    /// `-A`/`-I` lines.
    pub rules: Vec<String>,
}

impl TableBlock {
    pub fn is_empty(&self) -> bool {
        self.declare.is_empty()
            && self.delete.is_empty()
            && self.remove.is_empty()
            && self.rules.is_empty()
    }
}

/// One family's transaction: table blocks in table order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Transaction {
    pub tables: BTreeMap<Table, TableBlock>,
}

impl Transaction {
    /// The rules of one family as they go in on a namespace without them.
    pub(crate) fn from_rules(rules: &RuleSet, family: Family) -> Transaction {
        let mut t = Transaction::default();
        for table in rules.tables(family) {
            let block = t.tables.entry(table).or_default();
            block.declare = rules.chains(family, table);
            block.rules = rules
                .rules(family)
                .iter()
                .filter(|r| r.table == table)
                .map(|r| r.command())
                .collect();
        }
        t
    }

    pub fn block(&mut self, table: Table) -> &mut TableBlock {
        self.tables.entry(table).or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.tables.values().all(TableBlock::is_empty)
    }

    /// The iptables-restore input.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (table, b) in &self.tables {
            if b.is_empty() {
                continue;
            }
            out.push_str(&format!("*{table}\n"));
            for c in &b.declare {
                out.push_str(&format!(":{c} - [0:0]\n"));
            }
            for d in &b.delete {
                out.push_str(&format!("-D {d}\n"));
            }
            for c in &b.remove {
                out.push_str(&format!("-F {c}\n"));
            }
            for c in &b.remove {
                out.push_str(&format!("-X {c}\n"));
            }
            for r in &b.rules {
                out.push_str(r);
                out.push('\n');
            }
            out.push_str("COMMIT\n");
        }
        out
    }
}

/// The `--dry-run` output: `# iptables-restore` and the IPv4 input, then, with IPv6 on,
/// `# ip6tables-restore` and the IPv6 input.
pub fn dry_run(rules: &RuleSet) -> String {
    let mut out = String::from("# iptables-restore\n");
    out.push_str(&Transaction::from_rules(rules, Family::V4).render());
    if rules.ipv6 {
        out.push_str("# ip6tables-restore\n");
        out.push_str(&Transaction::from_rules(rules, Family::V6).render());
    }
    out
}
