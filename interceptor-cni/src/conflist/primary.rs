//! Finding the configuration file the runtime uses, and reading it.
//!
//! containerd (go-cni) and CRI-O list the directory with libcni's `ConfFiles` for the
//! extensions `.conf`, `.conflist` and `.json`, sort the names and use the first. istio-cni
//! picks the same file (it skips unparsable files; containerd fails on them, and so do
//! we: installing into the second file would chain us into a network nobody uses).

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::json::Json;
use super::{ConflistError, STATE_FILE, TMP_SUFFIX};

const EXTENSIONS: &[&str] = &["conf", "conflist", "json"];

/// The primary configuration file, read.
pub(crate) struct Primary {
    pub(crate) path: PathBuf,
    pub(crate) name: String,
    pub(crate) text: String,
    pub(crate) json: Json,
    pub(crate) mode: u32,
    pub(crate) kind: Kind,
}

/// What the file holds (decided by content, not by extension).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A network configuration list (`plugins`).
    List,
    /// A single plugin configuration (`type`), as in a `.conf`.
    Single,
}

/// The name of the file the runtime uses: the first, by name, with a CNI extension.
pub(crate) fn primary_path(dir: &Path) -> Result<PathBuf, ConflistError> {
    let entries = fs::read_dir(dir).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => ConflistError::DirMissing {
            dir: dir.to_path_buf(),
        },
        _ => ConflistError::io(dir, e),
    })?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ConflistError::io(dir, e))?;
        let path = entry.path();
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let ext_ok = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e));
        // Our own files never carry a CNI extension; the check says so explicitly.
        if !ext_ok || name == STATE_FILE || name.ends_with(TMP_SUFFIX) {
            continue;
        }
        // As libcni: directories are skipped, symlinks to files count.
        if fs::metadata(&path).map(|m| m.is_dir()).unwrap_or(true) {
            continue;
        }
        names.push(name.to_string());
    }
    names.sort();
    names
        .first()
        .map(|n| dir.join(n))
        .ok_or_else(|| ConflistError::NoConfig {
            dir: dir.to_path_buf(),
        })
}

/// Reads and parses the primary file.
pub(crate) fn read_primary(dir: &Path) -> Result<Primary, ConflistError> {
    let path = primary_path(dir)?;
    read_config(&path)
}

/// Reads and parses one configuration file.
pub(crate) fn read_config(path: &Path) -> Result<Primary, ConflistError> {
    let bytes = fs::read(path).map_err(|e| ConflistError::io(path, e))?;
    let mode = fs::metadata(path)
        .map_err(|e| ConflistError::io(path, e))?
        .permissions()
        .mode()
        & 0o7777;
    let unparsable = |message: String| ConflistError::Unparsable {
        path: path.to_path_buf(),
        message,
    };
    // Parseable JSON is UTF-8, so keeping the text is keeping the bytes.
    let text = String::from_utf8(bytes).map_err(|e| unparsable(e.to_string()))?;
    let json: Json = serde_json::from_str(&text).map_err(|e| unparsable(e.to_string()))?;
    let not_cni = |reason: &'static str| ConflistError::NotCniConfig {
        path: path.to_path_buf(),
        reason,
    };
    let kind = match (&json, json.get("plugins"), json.get("type")) {
        (Json::Object(_), Some(Json::Array(p)), _) if !p.is_empty() => Kind::List,
        (Json::Object(_), Some(Json::Array(_)), _) => {
            return Err(not_cni("its plugins list is empty"))
        }
        (Json::Object(_), Some(_), _) => return Err(not_cni("plugins is not a list")),
        (Json::Object(_), None, Some(Json::String(t))) if !t.is_empty() => Kind::Single,
        (Json::Object(_), None, _) => return Err(not_cni("it has neither plugins nor type")),
        _ => return Err(not_cni("it is not a JSON object")),
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    Ok(Primary {
        path: path.to_path_buf(),
        name,
        text,
        json,
        mode,
        kind,
    })
}
