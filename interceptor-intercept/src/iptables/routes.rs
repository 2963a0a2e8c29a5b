//! The routing side of interception (istio `tools/common/tproxy`): in TPROXY mode, packets
//! carrying the mark are routed to `lo` by a policy rule and a local default route in their
//! own table; with IPv6, `::6` on `lo` is the proxy's inbound passthrough source address.
//! Done with iproute2's `ip`, idempotently: `init` twice leaves one rule and one route.

use std::process::{Command, Stdio};

use crate::config::{Config, InboundPorts, InterceptionMode};

use super::IptablesError;

fn ip(args: &[&str]) -> Result<(), IptablesError> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| IptablesError::Exec("ip".into(), e.to_string()))?;
    if !out.status.success() {
        return Err(IptablesError::Failed {
            what: format!("ip {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

fn families(ipv6: bool) -> &'static [&'static str] {
    if ipv6 {
        &["-4", "-6"]
    } else {
        &["-4"]
    }
}

/// Deletes every copy of the TPROXY policy rule in one family.
fn delete_rules(fam: &str, mark: &str, table: &str) {
    // Bounded: each successful delete removes one copy.
    for _ in 0..64 {
        if ip(&[fam, "rule", "del", "fwmark", mark, "lookup", table]).is_err() {
            break;
        }
    }
}

/// One change `init` makes with `ip`, besides iptables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// `ip -6 addr add ::6/128 dev lo`: the inbound passthrough source (already there is fine).
    PassthroughAddress,
    /// `ip -4|-6 rule add fwmark MARK lookup TABLE` (earlier copies are deleted first, so
    /// there is one).
    MarkRule {
        family: &'static str,
        mark: String,
        table: String,
    },
    /// `ip -4|-6 route replace local default dev lo table TABLE`.
    LocalRoute { family: &'static str, table: String },
}

impl Step {
    /// The arguments to `ip`.
    pub fn args(&self) -> Vec<String> {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect();
        match self {
            Step::PassthroughAddress => v(&["-6", "addr", "add", "::6/128", "dev", "lo"]),
            Step::MarkRule {
                family,
                mark,
                table,
            } => v(&[family, "rule", "add", "fwmark", mark, "lookup", table]),
            Step::LocalRoute { family, table } => v(&[
                family, "route", "replace", "local", "default", "dev", "lo", "table", table,
            ]),
        }
    }

    /// The command line, as a user would type it.
    pub fn command(&self) -> String {
        format!("ip {}", self.args().join(" "))
    }
}

/// What [`configure`] does for `cfg`, in order.
pub(crate) fn planned(cfg: &Config) -> Vec<Step> {
    let mut steps = Vec::new();
    if cfg.ipv6 {
        steps.push(Step::PassthroughAddress);
    }
    if cfg.mode == InterceptionMode::Tproxy && cfg.inbound_ports != InboundPorts::None {
        let (mark, table) = (
            cfg.tproxy_mark.to_string(),
            cfg.tproxy_route_table.to_string(),
        );
        for &family in families(cfg.ipv6) {
            steps.push(Step::MarkRule {
                family,
                mark: mark.clone(),
                table: table.clone(),
            });
            steps.push(Step::LocalRoute {
                family,
                table: table.clone(),
            });
        }
    }
    steps
}

/// `init --dry-run`'s account of [`configure`]: each command as a `# ip ...` line, so that
/// the output stays valid iptables-restore input (comments are skipped there).
pub fn dry_run(cfg: &Config) -> String {
    planned(cfg)
        .iter()
        .map(|s| format!("# {}\n", s.command()))
        .collect()
}

/// Sets up what `cfg` needs besides iptables.
pub(crate) fn configure(cfg: &Config) -> Result<(), IptablesError> {
    for step in planned(cfg) {
        let args = step.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match &step {
            Step::PassthroughAddress => match ip(&args) {
                Err(IptablesError::Failed { stderr, .. })
                    if stderr.contains("File exists") || stderr.contains("already assigned") => {}
                other => other?,
            },
            Step::MarkRule {
                family,
                mark,
                table,
            } => {
                delete_rules(family, mark, table);
                ip(&args)?;
            }
            Step::LocalRoute { .. } => ip(&args)?,
        }
        tracing::info!("{}", step.command());
    }
    Ok(())
}

/// Undoes [`configure`] for `cfg`'s mark and table (whatever the mode), in both families.
pub(crate) fn unconfigure(cfg: &Config) {
    let (mark, table) = (
        cfg.tproxy_mark.to_string(),
        cfg.tproxy_route_table.to_string(),
    );
    for fam in ["-4", "-6"] {
        delete_rules(fam, &mark, &table);
        let _ = ip(&[
            fam, "route", "del", "local", "default", "dev", "lo", "table", &table,
        ]);
    }
    let _ = ip(&["-6", "addr", "del", "::6/128", "dev", "lo"]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::config_from_flags;
    use crate::config::IstioEnv;

    fn dry(argv: &[&str]) -> String {
        dry_run(&config_from_flags(argv, &IstioEnv::default()).unwrap())
    }

    #[test]
    fn dry_run_lists_the_ip_commands_as_comments() {
        assert_eq!(dry(&[]), "");
        assert_eq!(
            dry(&["-m", "TPROXY"]),
            "# ip -4 rule add fwmark 1337 lookup 133\n# ip -4 route replace local default dev lo table 133\n"
        );
        assert_eq!(
            dry(&["-m", "TPROXY", "--ipv6", "-t", "7", "-r", "70"]),
            "# ip -6 addr add ::6/128 dev lo\n\
             # ip -4 rule add fwmark 7 lookup 70\n# ip -4 route replace local default dev lo table 70\n\
             # ip -6 rule add fwmark 7 lookup 70\n# ip -6 route replace local default dev lo table 70\n"
        );
        // TPROXY without inbound capture needs no route.
        assert_eq!(dry(&["-m", "TPROXY", "-b", ""]), "");
    }
}
