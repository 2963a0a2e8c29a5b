//! The agent's wake-ups: inotify on the CNI conf dir (the primary CNI rewrote its file)
//! and on the records' dir (the plugin added or removed a pod), waited on with a timeout
//! so the periodic reconcile and the stop flag are never late.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

#[derive(Debug, thiserror::Error)]
#[error("watching {}: {errno}", .path.display())]
pub struct WatchError {
    pub path: PathBuf,
    pub errno: Errno,
}

/// What changed since the last wait.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub conf_dir: bool,
    pub pods: bool,
}

pub struct Watch {
    inotify: Inotify,
    conf: WatchDescriptor,
    pods: WatchDescriptor,
}

/// Every way a file in a directory can appear, change or go.
fn dir_events() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_ATTRIB
}

impl Watch {
    pub fn new(conf_dir: &Path, pods_dir: &Path) -> Result<Watch, WatchError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |errno| WatchError { path, errno }
        };
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(err(Path::new("inotify")))?;
        let conf = inotify
            .add_watch(conf_dir, dir_events())
            .map_err(err(conf_dir))?;
        let pods = inotify
            .add_watch(pods_dir, dir_events())
            .map_err(err(pods_dir))?;
        Ok(Watch {
            inotify,
            conf,
            pods,
        })
    }

    /// Waits up to `timeout` for changes (an interrupted wait returns what it has).
    pub fn wait(&self, timeout: Duration) -> Changes {
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(ms));
        let mut changes = Changes::default();
        while let Ok(events) = self.inotify.read_events() {
            if events.is_empty() {
                break;
            }
            for e in events {
                // A temporary file of an atomic write is not the change; its rename is.
                let tmp = e
                    .name
                    .as_ref()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.contains(".tmp") || n.starts_with('.'));
                if tmp {
                    continue;
                }
                if e.wd == self.conf {
                    changes.conf_dir = true;
                } else if e.wd == self.pods {
                    changes.pods = true;
                }
            }
        }
        changes
    }
}
