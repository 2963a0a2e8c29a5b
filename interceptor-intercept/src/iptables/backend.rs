//! Which iptables to drive: legacy (x_tables) or nft (nf_tables), chosen the way
//! istio-iptables does (`dependencies.DetectIptablesVersion`): a forced choice wins; else the
//! variant that already holds rules in this network namespace (legacy first); else the
//! system's default `iptables`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::Backend;
use crate::rules::Family;

use super::IptablesError;

/// The three binaries of one variant for one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tools {
    pub backend: Backend,
    pub family: Family,
    /// `iptables-nft`, `ip6tables-legacy`, ...
    pub iptables: PathBuf,
    pub save: PathBuf,
    pub restore: PathBuf,
}

impl Tools {
    fn find(backend: Backend, family: Family) -> Option<Tools> {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        let name = format!("{base}-{}", backend.name());
        Some(Tools {
            backend,
            family,
            iptables: which(&name)?,
            save: which(&format!("{name}-save"))?,
            restore: which(&format!("{name}-restore"))?,
        })
    }

    /// The variant's name, as its `iptables` binary is called (`iptables-nft`).
    pub fn name(&self) -> String {
        let base = match self.family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        format!("{base}-{}", self.backend.name())
    }

    /// Command for `iptables`; legacy takes the xtables lock (`-w`), nft needs none.
    pub(crate) fn iptables_cmd(&self) -> Command {
        let mut c = Command::new(&self.iptables);
        if self.backend == Backend::Legacy {
            c.arg("-w");
        }
        c
    }

    pub fn restore_cmd(&self) -> Command {
        let mut c = Command::new(&self.restore);
        if self.backend == Backend::Legacy {
            c.arg("-w");
        }
        c
    }

    /// The current ruleset, as `iptables-save` prints it.
    pub fn save_text(&self) -> Result<String, IptablesError> {
        let out = Command::new(&self.save)
            .output()
            .map_err(|e| IptablesError::Exec(self.save.display().to_string(), e.to_string()))?;
        if !out.status.success() {
            return Err(IptablesError::Failed {
                what: self.save.display().to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A program in PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Whether a variant holds anything in this namespace (istio: three or more lines of save
/// output, i.e. at least one table).
fn holds_rules(tools: &Tools) -> bool {
    tools
        .save_text()
        .map(|t| t.lines().filter(|l| !l.starts_with('#')).count() >= 3)
        .unwrap_or(false)
}

/// The system's default variant: what plain `iptables --version` reports.
fn system_default(family: Family) -> Option<Backend> {
    let base = match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    };
    let out = Command::new(which(base)?).arg("--version").output().ok()?;
    let v = String::from_utf8_lossy(&out.stdout);
    Some(if v.contains("nf_tables") {
        Backend::Nft
    } else {
        Backend::Legacy
    })
}

/// Every variant of one family that is installed (legacy first).
pub fn available(family: Family) -> Vec<Tools> {
    [Backend::Legacy, Backend::Nft]
        .into_iter()
        .filter_map(|b| Tools::find(b, family))
        .collect()
}

/// Picks the variant for one family.
pub fn detect(family: Family, forced: Option<Backend>) -> Result<Tools, IptablesError> {
    if let Some(b) = forced {
        return Tools::find(b, family).ok_or(IptablesError::Forced(b, family));
    }
    let legacy = Tools::find(Backend::Legacy, family);
    let nft = Tools::find(Backend::Nft, family);
    for t in [&legacy, &nft].into_iter().flatten() {
        if holds_rules(t) {
            return Ok(t.clone());
        }
    }
    let pick = match system_default(family) {
        Some(Backend::Legacy) => legacy.clone().or(nft.clone()),
        _ => nft.clone().or(legacy.clone()),
    };
    pick.ok_or(IptablesError::Missing(family))
}
