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

/// Sets up what `cfg` needs besides iptables.
pub fn configure(cfg: &Config) -> Result<(), IptablesError> {
    if cfg.ipv6 {
        match ip(&["-6", "addr", "add", "::6/128", "dev", "lo"]) {
            Err(IptablesError::Failed { stderr, .. })
                if stderr.contains("File exists") || stderr.contains("already assigned") => {}
            other => other?,
        }
    }
    if cfg.mode == InterceptionMode::Tproxy && cfg.inbound_ports != InboundPorts::None {
        let (mark, table) = (
            cfg.tproxy_mark.to_string(),
            cfg.tproxy_route_table.to_string(),
        );
        for fam in families(cfg.ipv6) {
            delete_rules(fam, &mark, &table);
            ip(&[fam, "rule", "add", "fwmark", &mark, "lookup", &table])?;
            ip(&[
                fam, "route", "replace", "local", "default", "dev", "lo", "table", &table,
            ])?;
        }
    }
    Ok(())
}

/// Undoes [`configure`] for `cfg`'s mark and table (whatever the mode), in both families.
pub fn unconfigure(cfg: &Config) {
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
