//! Writing files so that a reader (the runtime reloading its CNI config) sees the old
//! content or the new, never a half-written file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::{ConflistError, TMP_SUFFIX};

/// Writes `bytes` to `path` with permission bits `mode`: a temporary file in the same
/// directory, synced, then renamed over `path`.
pub(crate) fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ConflistError> {
    let dir = parent(path);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("conf");
    let tmp = dir.join(format!(".{name}.{}{TMP_SUFFIX}", std::process::id()));
    let result = (|| -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode given at creation.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| ConflistError::io(path, e))
}

/// Removes `path`; fine if it is already gone.
pub(crate) fn remove_if_present(path: &Path) -> Result<(), ConflistError> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(parent(path)).map_err(|e| ConflistError::io(path, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ConflistError::io(path, e)),
    }
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes a rename or removal durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
