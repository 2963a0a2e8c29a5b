//! Installing the plugin on the node and taking it out again: the binary in the CNI bin
//! dir, our entry last in the primary conflist. Install is ordered so that a failure
//! leaves nothing behind: the binary first (harmless alone), then the entry (which makes
//! the runtime call the binary), each undone if a later step fails. Uninstall reverses
//! it: the entry first, so the runtime never calls a binary that is gone.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use interceptor_cni::conflist::{plugin_entry, PLUGIN_TYPE};
use interceptor_cni::{ConfDir, ConflistError, Installed, PluginConf, Uninstalled};
use serde_json::Value;

/// The installer's state file, under the agent's state dir (not in the conf dir, which
/// the runtime reads).
pub const CONFLIST_STATE: &str = "conflist.state";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("--cni-bin-dir {}: {source}", .dir.display())]
    BinDir { dir: PathBuf, source: io::Error },
    #[error("installing the plugin binary {}: {source}", .path.display())]
    Binary { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Conflist(#[from] ConflistError),
}

/// What the agent puts on the node.
pub struct Installer {
    conf: ConfDir,
    bin_dir: PathBuf,
    self_exe: PathBuf,
    entry: Value,
}

impl Installer {
    pub fn new(
        conf_dir: &Path,
        bin_dir: &Path,
        state_dir: &Path,
        self_exe: &Path,
        plugin: &PluginConf,
        agent_namespace: &str,
    ) -> Installer {
        Installer {
            conf: ConfDir::with_state_file(conf_dir, state_dir.join(CONFLIST_STATE)),
            bin_dir: bin_dir.to_path_buf(),
            self_exe: self_exe.to_path_buf(),
            entry: plugin_entry(plugin, agent_namespace),
        }
    }

    pub fn entry(&self) -> &Value {
        &self.entry
    }

    pub fn binary_path(&self) -> PathBuf {
        self.bin_dir.join(PLUGIN_TYPE)
    }

    /// Checks what install needs before anything is written: the bin dir exists and the
    /// conf dir holds a parsable primary config.
    pub fn preflight(&self) -> Result<PathBuf, InstallError> {
        match fs::metadata(&self.bin_dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(InstallError::BinDir {
                    dir: self.bin_dir.clone(),
                    source: io::Error::other("not a directory"),
                })
            }
            Err(source) => {
                return Err(InstallError::BinDir {
                    dir: self.bin_dir.clone(),
                    source,
                })
            }
        }
        Ok(self.conf.find_primary()?)
    }

    /// The binary, then the entry.
    pub fn install(&self) -> Result<Installed, InstallError> {
        self.preflight()?;
        self.install_binary()?;
        match self.conf.install(&self.entry) {
            Ok(done) => Ok(done),
            Err(e) => {
                let _ = fs::remove_file(self.binary_path());
                Err(e.into())
            }
        }
    }

    /// What the conf dir watch runs: the entry back in when the primary CNI rewrote its
    /// file, the binary back when someone removed it. `None` when nothing was needed.
    pub fn ensure_installed(&self) -> Result<Option<Installed>, InstallError> {
        if !self.binary_path().exists() {
            self.install_binary()?;
        }
        Ok(self.conf.ensure_installed(&self.entry)?)
    }

    /// The entry, then the binary.
    pub fn uninstall(&self) -> Result<Uninstalled, InstallError> {
        let done = self.conf.uninstall()?;
        match fs::remove_file(self.binary_path()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(InstallError::Binary {
                    path: self.binary_path(),
                    source,
                })
            }
        }
        Ok(done)
    }

    /// Copies our own executable to `<bin dir>/interceptor`: a temporary file in the same
    /// directory, renamed over the old one, so the runtime never runs half a binary.
    fn install_binary(&self) -> Result<(), InstallError> {
        let path = self.binary_path();
        let tmp = self
            .bin_dir
            .join(format!(".{PLUGIN_TYPE}.tmp-{}", std::process::id()));
        let err = |source| InstallError::Binary {
            path: path.clone(),
            source,
        };
        let result = (|| -> io::Result<()> {
            let bytes = fs::read(&self.self_exe)?;
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.set_permissions(fs::Permissions::from_mode(0o755))?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(err)
    }
}
