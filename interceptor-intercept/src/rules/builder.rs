//! An ordered list of rules per address family, in the order istio's rule builder records
//! them: the order matters, since it is the order rules are appended or inserted.

use std::fmt;

/// The address family a rule belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn both() -> [Family; 2] {
        [Family::V4, Family::V6]
    }
}

/// The iptables tables sidecar rules live in. Declared in the order istio writes them
/// (alphabetical).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Filter,
    Mangle,
    Nat,
    Raw,
}

impl Table {
    pub const ALL: [Table; 4] = [Table::Filter, Table::Mangle, Table::Nat, Table::Raw];

    pub fn name(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Mangle => "mangle",
            Table::Nat => "nat",
            Table::Raw => "raw",
        }
    }

    pub fn from_name(s: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == s)
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Chains and targets iptables defines itself: never created or deleted by us.
pub(crate) fn is_builtin(chain_or_target: &str) -> bool {
    matches!(
        chain_or_target,
        "INPUT"
            | "OUTPUT"
            | "FORWARD"
            | "PREROUTING"
            | "POSTROUTING"
            | "ACCEPT"
            | "RETURN"
            | "DROP"
    )
}

/// Whether a chain is one of the sidecar's own: one of the names istio-iptables creates
/// ([`super::istio::CHAINS`]), not any `ISTIO_*` (another tool may use that prefix).
pub fn is_own_chain(chain: &str) -> bool {
    super::istio::CHAINS.contains(&chain)
}

/// Append to the end of a chain, or insert at a 1-based position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Append,
    Insert(u32),
}

/// One rule: where it goes and its match/target arguments (without `-A CHAIN`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub table: Table,
    pub chain: String,
    pub op: Op,
    pub args: Vec<String>,
}

impl Rule {
    /// The jump target (`-j X`), if the rule ends in one.
    pub fn target(&self) -> Option<&str> {
        let n = self.args.len();
        (n >= 2 && self.args[n - 2] == "-j").then(|| self.args[n - 1].as_str())
    }

    /// The rule as an iptables-restore command line (`-A CHAIN ...` / `-I CHAIN N ...`).
    pub fn command(&self) -> String {
        let head = match self.op {
            Op::Append => format!("-A {}", self.chain),
            Op::Insert(n) => format!("-I {} {n}", self.chain),
        };
        if self.args.is_empty() {
            head
        } else {
            format!("{head} {}", self.args.join(" "))
        }
    }
}

/// The rules for both families, in the order they were added.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleSet {
    pub v4: Vec<Rule>,
    pub v6: Vec<Rule>,
    /// IPv6 rules are recorded only when on (istio's builder drops them otherwise).
    pub ipv6: bool,
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

impl RuleSet {
    pub fn new(ipv6: bool) -> RuleSet {
        RuleSet {
            v4: Vec::new(),
            v6: Vec::new(),
            ipv6,
        }
    }

    pub fn rules(&self, family: Family) -> &[Rule] {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    fn push(&mut self, family: Family, table: Table, chain: &str, op: Op, args: Vec<String>) {
        let rule = Rule {
            table,
            chain: chain.to_string(),
            op,
            args,
        };
        match family {
            Family::V4 => self.v4.push(rule),
            Family::V6 if self.ipv6 => self.v6.push(rule),
            Family::V6 => {}
        }
    }

    pub fn append(&mut self, chain: &str, table: Table, args: &[&str]) {
        self.append_v4(chain, table, args);
        self.append_v6(chain, table, args);
    }

    pub fn append_v4(&mut self, chain: &str, table: Table, args: &[&str]) {
        self.push(Family::V4, table, chain, Op::Append, strings(args));
    }

    pub fn append_v6(&mut self, chain: &str, table: Table, args: &[&str]) {
        self.push(Family::V6, table, chain, Op::Append, strings(args));
    }

    pub fn append_family(&mut self, family: Family, chain: &str, table: Table, args: &[&str]) {
        self.push(family, table, chain, Op::Append, strings(args));
    }

    /// Appends a rule to both families whose arguments hold a family-specific address:
    /// `args` gets `v4` or `v6` and returns the arguments.
    pub(crate) fn append_versioned(
        &mut self,
        v4: &str,
        v6: &str,
        chain: &str,
        table: Table,
        args: impl Fn(&str) -> Vec<String>,
    ) {
        self.push(Family::V4, table, chain, Op::Append, args(v4));
        self.push(Family::V6, table, chain, Op::Append, args(v6));
    }

    pub fn insert(&mut self, chain: &str, table: Table, pos: u32, args: &[&str]) {
        self.insert_v4(chain, table, pos, args);
        self.insert_v6(chain, table, pos, args);
    }

    pub fn insert_v4(&mut self, chain: &str, table: Table, pos: u32, args: &[&str]) {
        self.push(Family::V4, table, chain, Op::Insert(pos), strings(args));
    }

    pub fn insert_v6(&mut self, chain: &str, table: Table, pos: u32, args: &[&str]) {
        self.push(Family::V6, table, chain, Op::Insert(pos), strings(args));
    }

    pub fn insert_family(
        &mut self,
        family: Family,
        chain: &str,
        table: Table,
        pos: u32,
        args: &[&str],
    ) {
        self.push(family, table, chain, Op::Insert(pos), strings(args));
    }

    /// The own chains of one family in one table, in the order istio declares them: first
    /// chains holding rules, then chains only jumped to (both in order of first mention).
    pub fn chains(&self, family: Family, table: Table) -> Vec<String> {
        let rules = self.rules(family);
        let mut out: Vec<String> = Vec::new();
        let mut add = |c: &str| {
            if !is_builtin(c) && !out.iter().any(|x| x == c) {
                out.push(c.to_string());
            }
        };
        for r in rules.iter().filter(|r| r.table == table) {
            add(&r.chain);
        }
        for r in rules.iter().filter(|r| r.table == table) {
            if let Some(t) = r.target() {
                if is_own_chain(t) {
                    add(t);
                }
            }
        }
        out
    }

    /// Tables that hold rules in one family, in restore order.
    pub fn tables(&self, family: Family) -> Vec<Table> {
        Table::ALL
            .into_iter()
            .filter(|t| self.rules(family).iter().any(|r| r.table == *t))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v6_rules_only_when_on() {
        let mut off = RuleSet::new(false);
        off.append("OUTPUT", Table::Nat, &["-j", "ISTIO_OUTPUT"]);
        assert_eq!(off.v4.len(), 1);
        assert!(off.v6.is_empty());
        let mut on = RuleSet::new(true);
        on.append_versioned(
            "127.0.0.1/32",
            "::1/128",
            "ISTIO_OUTPUT",
            Table::Nat,
            |ip| vec!["-d".into(), ip.into(), "-j".into(), "RETURN".into()],
        );
        assert_eq!(
            on.v4[0].command(),
            "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN"
        );
        assert_eq!(on.v6[0].command(), "-A ISTIO_OUTPUT -d ::1/128 -j RETURN");
    }

    #[test]
    fn chains_in_declaration_order() {
        let mut r = RuleSet::new(false);
        r.append(
            "ISTIO_INBOUND",
            Table::Nat,
            &["-p", "tcp", "--dport", "15008", "-j", "RETURN"],
        );
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
        r.insert("PREROUTING", Table::Nat, 1, &["-i", "x", "-j", "RETURN"]);
        assert_eq!(
            r.chains(Family::V4, Table::Nat),
            vec!["ISTIO_INBOUND", "ISTIO_IN_REDIRECT"]
        );
        assert_eq!(
            r.rules(Family::V4)[3].command(),
            "-I PREROUTING 1 -i x -j RETURN"
        );
        assert_eq!(r.tables(Family::V4), vec![Table::Nat]);
    }
}
