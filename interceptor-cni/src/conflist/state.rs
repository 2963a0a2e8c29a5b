//! What the installer remembers between install and uninstall: the primary file's name,
//! bytes and mode before we touched it, and what we wrote.

use std::fs;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::atomic;
use super::ConflistError;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct State {
    /// The primary CNI's file name before install.
    pub(crate) original_name: String,
    /// Its content then; `None` when it already held an entry of ours the first time we
    /// saw it (a lost state file), so the pristine bytes are unknown.
    pub(crate) original: Option<String>,
    /// Its permission bits then.
    pub(crate) original_mode: u32,
    /// The file holding our entry (a `.conf` becomes a `.conflist`).
    pub(crate) installed_name: String,
    /// What we last wrote there: if the file still reads so, nobody changed it since.
    pub(crate) written: String,
}

impl State {
    /// Reads the state file; `None` when there is none.
    pub(crate) fn load(path: &Path) -> Result<Option<State>, ConflistError> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ConflistError::io(path, e)),
        };
        let bad = |message: String| ConflistError::BadState {
            path: path.to_path_buf(),
            message,
        };
        let st: State = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        // The names are joined to the conf dir: a name with a path in it is not ours.
        for name in [&st.original_name, &st.installed_name] {
            if !plain_file_name(name) {
                return Err(bad(format!("{name:?} is not a file name")));
            }
        }
        Ok(Some(st))
    }

    pub(crate) fn save(&self, path: &Path) -> Result<(), ConflistError> {
        let text = serde_json::to_string_pretty(self).map_err(|e| ConflistError::BadState {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        atomic::write(path, text.as_bytes(), 0o600)
    }

    pub(crate) fn remove(path: &Path) -> Result<(), ConflistError> {
        atomic::remove_if_present(path)
    }
}

fn plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_plain() {
        assert!(plain_file_name("10-calico.conflist"));
        for bad in ["", "..", "../x.conf", "/etc/passwd", "a/b"] {
            assert!(!plain_file_name(bad), "{bad}");
        }
    }
}
