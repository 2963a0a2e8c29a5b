//! Working inside a pod's network namespace from a process that stays outside it.
//!
//! `setns(2)` moves only the calling thread, so each piece of work runs on a thread of
//! its own that enters the namespace and ends with it: the agent's other threads (its
//! listener, its watch) never change namespace, and programs spawned from that thread
//! (`iptables-restore`) start inside the pod's namespace.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// A namespace that cannot be entered.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {}: {source}", .path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("entering network namespace {}: {errno}", .path.display())]
    Enter {
        path: PathBuf,
        errno: nix::errno::Errno,
    },
    #[error("the work in network namespace {} panicked", .path.display())]
    Panicked { path: PathBuf },
}

impl NetnsError {
    /// The namespace is gone (its file no longer exists).
    pub fn is_gone(&self) -> bool {
        matches!(self, NetnsError::Open { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// Runs `f` on a thread inside the network namespace at `path`; `f` gets the open
/// namespace file (for attaching programs to it).
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce(&File) -> T + Send) -> Result<T, NetnsError> {
    let file = File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|errno| {
                NetnsError::Enter {
                    path: path.to_path_buf(),
                    errno,
                }
            })?;
            Ok(f(&file))
        })
        .join()
        .unwrap_or_else(|_| {
            Err(NetnsError::Panicked {
                path: path.to_path_buf(),
            })
        })
    })
}

/// `path`, or when it does not exist the same path under the other spelling of the run
/// directory (`/run/netns/x` and `/var/run/netns/x`): the plugin records the path the
/// runtime gave, and the agent's container may mount only one of the two.
pub fn resolve(path: &Path) -> Option<PathBuf> {
    if path.exists() {
        return Some(path.to_path_buf());
    }
    let other = if let Ok(rest) = path.strip_prefix("/var/run") {
        Path::new("/run").join(rest)
    } else if let Ok(rest) = path.strip_prefix("/run") {
        Path::new("/var/run").join(rest)
    } else {
        return None;
    };
    other.exists().then_some(other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_namespace_is_gone() {
        let e = in_netns(Path::new("/nonexistent/netns/x"), |_| ()).unwrap_err();
        assert!(e.is_gone(), "{e}");
        assert!(e.to_string().contains("/nonexistent/netns/x"), "{e}");
        assert_eq!(resolve(Path::new("/nonexistent/netns/x")), None);
    }

    #[test]
    fn run_and_var_run_are_the_same_place() {
        // /proc exists under neither prefix: no alternative.
        assert_eq!(
            resolve(Path::new("/proc/self/ns/net")),
            Some("/proc/self/ns/net".into())
        );
        assert_eq!(resolve(Path::new("/var/run/nonexistent-x")), None);
    }
}
