//! Installing the plugin into the primary CNI configuration, and taking it out again.
//!
//! As istio-cni's installer (`cni/pkg/install/cniconfig.go`): our entry goes last in the
//! `plugins` list of the file the runtime uses; a single-plugin `.conf` (or `.json`)
//! becomes a `.conflist` of the same stem holding it and ours, and the old file goes.
//! Unlike istio-cni we remember what the file was, in a state file in the same directory
//! ([`STATE_FILE`]), so that uninstalling puts the directory back byte for byte (same
//! names, same bytes, same modes) when nobody else changed it meanwhile; when the primary
//! CNI rewrote the file since, only our entry is taken out of it.
//!
//! Every write is atomic (temporary file and rename in the same directory) and keeps the
//! file's permission bits.

mod atomic;
mod edit;
mod json;
mod primary;
mod state;

use std::io;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::spec::netconf::POD_ANNOTATIONS_CAPABILITY;
use crate::spec::PluginConf;
use edit::contains_ours;
use json::Json;
use primary::{read_config, read_primary, Kind, Primary};
use state::State;

/// The `type` of our entry: the name of the plugin binary in the runtime's CNI bin dir.
pub const PLUGIN_TYPE: &str = "interceptor";
/// The installer's state file, in the conf dir unless told otherwise. No CNI extension, so
/// runtimes never read it.
pub(crate) const STATE_FILE: &str = ".interceptor-cni.state";
/// The suffix of temporary files written on the way to a rename.
pub(crate) const TMP_SUFFIX: &str = ".interceptor-tmp";

#[derive(Debug, thiserror::Error)]
pub enum ConflistError {
    #[error("CNI config directory {} does not exist", .dir.display())]
    DirMissing { dir: PathBuf },
    #[error("no CNI network config (*.conf, *.conflist, *.json) in {}", .dir.display())]
    NoConfig { dir: PathBuf },
    #[error("cannot parse CNI config {}: {message}", .path.display())]
    Unparsable { path: PathBuf, message: String },
    #[error("{} is not a CNI network config: {reason}", .path.display())]
    NotCniConfig { path: PathBuf, reason: &'static str },
    #[error("{} runs the interceptor plugin alone; it can only be chained after an interface plugin", .path.display())]
    OwnPluginIsPrimary { path: PathBuf },
    #[error("{} exists and is not ours; not overwriting it with the converted {}", .path.display(), .from.display())]
    TargetExists { path: PathBuf, from: PathBuf },
    #[error("invalid plugin entry: {reason}")]
    BadEntry { reason: &'static str },
    #[error("unreadable installer state {}: {message}", .path.display())]
    BadState { path: PathBuf, message: String },
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ConflistError {
    pub(crate) fn io(path: &Path, source: io::Error) -> ConflistError {
        ConflistError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The result of an install.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    /// The file now holding our entry.
    pub path: PathBuf,
    /// The primary file it was made from (the same file unless a `.conf` was converted).
    pub primary: PathBuf,
    /// False when the file already was exactly what install would write.
    pub changed: bool,
}

/// The result of an uninstall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Uninstalled {
    /// The primary CNI's file is back as it was before install, byte for byte.
    Restored { path: PathBuf },
    /// The file changed since we wrote it: only our entry was removed (or, for a
    /// `.conflist` we had made from a `.conf` the primary CNI has since rewritten, our
    /// file was removed).
    Removed { path: PathBuf },
    /// Nothing of ours was there.
    NothingToDo,
}

/// Our conflist entry: `type`, the pod-annotations capability (so containerd and CRI-O
/// pass annotations in runtimeConfig), and our keys, with `kube-system` and the agent's
/// namespace always among `exclude_namespaces`.
pub fn plugin_entry(conf: &PluginConf, agent_namespace: &str) -> Value {
    let mut conf = conf.clone();
    for ns in [crate::pod::KUBE_SYSTEM, agent_namespace] {
        if !ns.is_empty() && !conf.exclude_namespaces.iter().any(|e| e == ns) {
            conf.exclude_namespaces.push(ns.to_string());
        }
    }
    let mut m = serde_json::Map::new();
    m.insert("type".into(), PLUGIN_TYPE.into());
    m.insert(
        "capabilities".into(),
        serde_json::json!({ POD_ANNOTATIONS_CAPABILITY: true }),
    );
    m.extend(conf.to_json());
    Value::Object(m)
}

/// A CNI configuration directory and where the installer's state for it lives.
#[derive(Clone, Debug)]
pub struct ConfDir {
    dir: PathBuf,
    state: PathBuf,
}

impl ConfDir {
    /// `dir`, with the state file in it.
    pub fn new(dir: impl Into<PathBuf>) -> ConfDir {
        let dir = dir.into();
        let state = dir.join(STATE_FILE);
        ConfDir { dir, state }
    }

    /// `dir`, with the state file at `state` (e.g. under the agent's state directory).
    pub fn with_state_file(dir: impl Into<PathBuf>, state: impl Into<PathBuf>) -> ConfDir {
        ConfDir {
            dir: dir.into(),
            state: state.into(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file the runtime uses (see [`find_primary`]).
    pub fn find_primary(&self) -> Result<PathBuf, ConflistError> {
        read_primary(&self.dir).map(|p| p.path)
    }

    /// Puts `entry` last in the primary configuration's plugins; see the module docs.
    /// Installing again with the same entry changes nothing.
    pub fn install(&self, entry: &Value) -> Result<Installed, ConflistError> {
        let ours = our_entry(entry)?;
        let mut state = State::load(&self.state)?;
        let mut primary = read_primary(&self.dir)?;
        // May be overwritten by a conversion: it was ours.
        let previously_ours = state.as_ref().map(|s| s.installed_name.clone());
        if let Some(st) = &state {
            if st.installed_name != primary.name {
                // We are in another file (another one now sorts first, or the primary
                // CNI wrote a new .conf next to our .conflist): undo that one first.
                self.undo(st)?;
                state = None;
                primary = read_primary(&self.dir)?;
            }
        }
        if primary.kind == Kind::Single && contains_ours(&primary.json, Kind::Single) {
            return Err(ConflistError::OwnPluginIsPrimary { path: primary.path });
        }
        let target_name = match primary.kind {
            Kind::List => primary.name.clone(),
            Kind::Single => conflist_name(&primary.name),
        };
        let target = self.dir.join(&target_name);
        let text = edit::insert(&primary.json, primary.kind, &ours).to_pretty();

        let state_before = state.clone();
        let untouched = state.as_ref().is_some_and(|st| st.written == primary.text);
        let new_state = match state {
            // Still what we wrote: keep the original we saved then.
            Some(st) if untouched => State {
                installed_name: target_name.clone(),
                written: text.clone(),
                ..st
            },
            // The primary CNI's file, new or rewritten: it is the original from now on.
            _ => {
                let had_ours = contains_ours(&primary.json, primary.kind);
                State {
                    original_name: primary.name.clone(),
                    original: (!had_ours).then(|| primary.text.clone()),
                    original_mode: primary.mode,
                    installed_name: target_name.clone(),
                    written: text.clone(),
                }
            }
        };
        if target_name == primary.name && text == primary.text {
            // Nothing to write; the state is saved only if it says something new, since
            // each write wakes the agent's watch on the directory.
            if state_before.as_ref() != Some(&new_state) {
                new_state.save(&self.state)?;
            }
            return Ok(Installed {
                path: target,
                primary: primary.path,
                changed: false,
            });
        }
        if target_name != primary.name
            && target.exists()
            && previously_ours.as_deref() != Some(&target_name)
        {
            return Err(ConflistError::TargetExists {
                path: target,
                from: primary.path,
            });
        }
        // State first: if we stop between the two writes, the next run still knows the
        // original.
        new_state.save(&self.state)?;
        atomic::write(&target, text.as_bytes(), primary.mode)?;
        if target_name != primary.name {
            atomic::remove_if_present(&primary.path)?;
        }
        Ok(Installed {
            path: target,
            primary: primary.path,
            changed: true,
        })
    }

    /// Takes our entry out; see the module docs. Uninstalling twice is fine.
    pub fn uninstall(&self) -> Result<Uninstalled, ConflistError> {
        if let Some(st) = State::load(&self.state)? {
            let done = self.undo(&st)?;
            State::remove(&self.state)?;
            return Ok(done);
        }
        // No record (never installed, or the state is gone): take our entry out of the
        // primary file if it has one.
        let primary = match read_primary(&self.dir) {
            Ok(p) => p,
            Err(ConflistError::DirMissing { .. } | ConflistError::NoConfig { .. }) => {
                return Ok(Uninstalled::NothingToDo)
            }
            Err(e) => return Err(e),
        };
        strip_file(&primary)
    }

    /// Whether the file the runtime uses lacks our entry (the primary CNI rewrote it, or
    /// we were never installed); the tests' view of what `ensure_installed` acts on.
    #[cfg(test)]
    pub(crate) fn needs_reinsert(&self) -> Result<bool, ConflistError> {
        let p = read_primary(&self.dir)?;
        Ok(!contains_ours(&p.json, p.kind))
    }

    /// What the agent runs when the conf dir changes: installs `entry` if the primary
    /// file lacks it or holds another version of it. `None` when nothing needed doing
    /// (so the agent's own write, seen by its watch, ends there).
    pub fn ensure_installed(&self, entry: &Value) -> Result<Option<Installed>, ConflistError> {
        let done = self.install(entry)?;
        Ok(done.changed.then_some(done))
    }

    /// Undoes an install recorded in `st`.
    fn undo(&self, st: &State) -> Result<Uninstalled, ConflistError> {
        let installed = self.dir.join(&st.installed_name);
        let current = match read_config(&installed) {
            Ok(c) => c,
            // Gone: the primary CNI removed it, nothing of ours is left.
            Err(ConflistError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(Uninstalled::NothingToDo)
            }
            // Unparsable now: someone else wrote it, and we cannot take our entry out.
            Err(e) => return Err(e),
        };
        let (Some(original), true) = (&st.original, current.text == st.written) else {
            return strip_file(&current);
        };
        if st.original_name == st.installed_name {
            atomic::write(&installed, original.as_bytes(), st.original_mode)?;
            return Ok(Uninstalled::Restored { path: installed });
        }
        // We had made a .conflist from their .conf.
        let original_path = self.dir.join(&st.original_name);
        match std::fs::read(&original_path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                atomic::write(&original_path, original.as_bytes(), st.original_mode)?;
            }
            Err(e) => return Err(ConflistError::io(&original_path, e)),
            Ok(bytes) if bytes == original.as_bytes() => {}
            // They wrote a new .conf since: it stands, ours just goes.
            Ok(_) => {
                atomic::remove_if_present(&installed)?;
                return Ok(Uninstalled::Removed { path: installed });
            }
        }
        atomic::remove_if_present(&installed)?;
        Ok(Uninstalled::Restored {
            path: original_path,
        })
    }
}

/// Takes our entries out of a list file, keeping its mode.
fn strip_file(p: &Primary) -> Result<Uninstalled, ConflistError> {
    if p.kind != Kind::List || !contains_ours(&p.json, p.kind) {
        return Ok(Uninstalled::NothingToDo);
    }
    let text = edit::strip(&p.json).to_pretty();
    atomic::write(&p.path, text.as_bytes(), p.mode)?;
    Ok(Uninstalled::Removed {
        path: p.path.clone(),
    })
}

/// Checks the entry is an object of our type, and puts `type` first for readers.
fn our_entry(entry: &Value) -> Result<Json, ConflistError> {
    let Json::Object(mut pairs) = Json::from_value(entry) else {
        return Err(ConflistError::BadEntry {
            reason: "not a JSON object",
        });
    };
    let Some(pos) = pairs.iter().position(|(k, _)| k == "type") else {
        return Err(ConflistError::BadEntry { reason: "no type" });
    };
    let ty = pairs.remove(pos);
    if ty.1.as_str() != Some(PLUGIN_TYPE) {
        return Err(ConflistError::BadEntry {
            reason: "type is not \"interceptor\"",
        });
    }
    pairs.insert(0, ty);
    Ok(Json::Object(pairs))
}

/// `10-bridge.conf` → `10-bridge.conflist` (and `x.json` → `x.conflist`).
fn conflist_name(name: &str) -> String {
    let stem = Path::new(name)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or(name);
    format!("{stem}.conflist")
}

/// The file the runtime uses in `dir`: the first by name among `*.conf`, `*.conflist` and
/// `*.json`, parsed and checked to be a network config.
pub fn find_primary(dir: &Path) -> Result<PathBuf, ConflistError> {
    ConfDir::new(dir).find_primary()
}

/// [`ConfDir::install`] with the state file in `dir`.
pub fn install(dir: &Path, entry: &Value) -> Result<Installed, ConflistError> {
    ConfDir::new(dir).install(entry)
}

/// [`ConfDir::uninstall`] with the state file in `dir`.
pub fn uninstall(dir: &Path) -> Result<Uninstalled, ConflistError> {
    ConfDir::new(dir).uninstall()
}

/// [`ConfDir::needs_reinsert`].
#[cfg(test)]
pub(crate) fn needs_reinsert(dir: &Path) -> Result<bool, ConflistError> {
    ConfDir::new(dir).needs_reinsert()
}

/// [`ConfDir::ensure_installed`] with the state file in `dir`.
pub fn ensure_installed(dir: &Path, entry: &Value) -> Result<Option<Installed>, ConflistError> {
    ConfDir::new(dir).ensure_installed(entry)
}

#[cfg(test)]
mod tests;
