//! `cleanup --mode ebpf`: unpin exactly one cgroup/namespace pair's links and maps.
//! A link is detached when its pin, its last reference, goes; the sk_msg program goes with
//! the sockhash that holds it.

use std::fs;
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::Target;

/// Removes the pin directory of `target`. `Ok(None)` when nothing was pinned for it.
pub fn cleanup(target: &Target) -> Result<Option<PathBuf>> {
    let dir = target.pin_dir();
    if !dir.exists() {
        return Ok(None);
    }
    let mut entries: Vec<PathBuf> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    // Links first, so no program runs against maps that are going away.
    entries.sort_by_key(|p| {
        !p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("link_"))
    });
    for p in &entries {
        fs::remove_file(p).with_context(|| format!("unpinning {}", p.display()))?;
    }
    fs::remove_dir(&dir).with_context(|| format!("removing {}", dir.display()))?;
    // The root goes too once no instance is left; another one keeps it.
    let _ = fs::remove_dir(super::PIN_ROOT);
    Ok(Some(dir))
}
