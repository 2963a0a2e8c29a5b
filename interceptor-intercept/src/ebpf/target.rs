//! Where interception applies: one cgroup v2 and the current network namespace, and the
//! bpffs directory its pins live in. Checks here turn an unsuitable machine into a clear
//! error before anything is loaded.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use super::{sys, PIN_ROOT, USE_IPTABLES};

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const BPFFS_MOUNT: &str = "/sys/fs/bpf";

/// One cgroup in one network namespace, and its pin directory.
#[derive(Clone, Debug)]
pub struct Target {
    pub cgroup: PathBuf,
    /// The cgroup's id (its inode on cgroup2), as the kernel reports it for links.
    pub cgroup_id: u64,
    pub netns_cookie: u64,
}

impl Target {
    /// `cgroup`, or the caller's own cgroup v2 when `None`, in the current namespace.
    pub fn resolve(cgroup: Option<&Path>) -> Result<Target> {
        let cgroup = match cgroup {
            Some(p) => p.to_path_buf(),
            None => own_cgroup()?,
        };
        let meta = fs::metadata(&cgroup)
            .with_context(|| format!("--cgroup: cannot open `{}`", cgroup.display()))?;
        if !meta.is_dir() {
            bail!("--cgroup: `{}` is not a cgroup directory", cgroup.display());
        }
        match fs_magic(&cgroup)? {
            CGROUP2_SUPER_MAGIC => {}
            _ => bail!(
                "--cgroup: `{}` is not on a cgroup v2 filesystem (cgroup v1 cannot attach socket \
                 programs per cgroup); {USE_IPTABLES}",
                cgroup.display()
            ),
        }
        let netns_cookie = sys::current_netns_cookie().context(
            "reading this network namespace's cookie (SO_NETNS_COOKIE needs Linux 5.14+)",
        )?;
        Ok(Target {
            cgroup,
            cgroup_id: meta.ino(),
            netns_cookie,
        })
    }

    pub fn pin_dir(&self) -> PathBuf {
        Path::new(PIN_ROOT).join(format!("{}-{}", self.cgroup_id, self.netns_cookie))
    }
}

fn fs_magic(path: &Path) -> Result<i64> {
    let st =
        nix::sys::statfs::statfs(path).with_context(|| format!("statfs {}", path.display()))?;
    Ok(st.filesystem_type().0 as i64)
}

/// The caller's cgroup v2, from /proc/self/cgroup and the cgroup2 mount point.
pub(crate) fn own_cgroup() -> Result<PathBuf> {
    let text = fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| {
            anyhow!("this process is in no cgroup v2 hierarchy (cgroup v1 only); {USE_IPTABLES}")
        })?;
    let mount = cgroup2_mount()?;
    Ok(mount.join(rel.trim_start_matches('/')))
}

/// The mount point of the cgroup2 filesystem, from /proc/self/mountinfo.
pub fn cgroup2_mount() -> Result<PathBuf> {
    let info =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    for line in info.lines() {
        // "... mount-point ... - fstype source options"
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        if post.split_whitespace().next() == Some("cgroup2") {
            if let Some(mp) = pre.split_whitespace().nth(4) {
                return Ok(PathBuf::from(mp));
            }
        }
    }
    bail!("no cgroup2 filesystem is mounted (cgroup v1 only); {USE_IPTABLES}")
}

/// Why the pins of `init` would not outlive it, or cannot be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BpffsError {
    /// No bpffs at /sys/fs/bpf, outside the initial mount namespace: one mounted here would
    /// be private to this mount namespace (an init container's), and the pins, with the
    /// interception they hold, would vanish when it ends.
    #[error(
        "{BPFFS_MOUNT} is not the host's bpffs: nothing of type bpf is mounted there in this mount \
         namespace, and a bpffs mounted here would vanish with it (taking the interception along); \
         mount the host's {BPFFS_MOUNT} into the container (hostPath)"
    )]
    NotMounted,
    /// A bpffs at /sys/fs/bpf that is not the initial mount namespace's (another instance).
    #[error(
        "{BPFFS_MOUNT} is not the host's bpffs: the bpffs mounted there (device {here}) is not the \
         one of the initial mount namespace ({host}), so pins in it vanish with this mount \
         namespace; mount the host's {BPFFS_MOUNT} into the container (hostPath)"
    )]
    Private { here: String, host: String },
    #[error("bpffs is not mounted at {BPFFS_MOUNT} and mounting it failed: {0}; {USE_IPTABLES}")]
    MountFailed(String),
    #[error("{BPFFS_MOUNT} does not exist, so bpffs cannot be mounted there; {USE_IPTABLES}")]
    NoMountPoint,
}

/// Where this process stands relative to the host's mount namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MountNs {
    /// The initial mount namespace (kthreadd's): a bpffs mounted here is the host's.
    Initial,
    /// Another mount namespace, with the device of the bpffs the initial one has at
    /// /sys/fs/bpf (`None`: it has none there). Known when kthreadd is visible (initial
    /// PID namespace: the host, a hostPID pod, `unshare --mount`).
    Other { host_bpffs: Option<u64> },
    /// Another or an unknown mount namespace (a container with its own PID namespace
    /// cannot see the host's): a bpffs at /sys/fs/bpf is taken to be the hostPath mount.
    Unknown,
}

/// What `init` may do about /sys/fs/bpf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BpffsAction {
    Ready,
    Mount,
}

/// Decides from the device of the bpffs at /sys/fs/bpf (`None`: no bpffs there) and the
/// mount namespace. Only the initial mount namespace may mount bpffs itself: a bpffs
/// mounted anywhere else is private to a namespace that ends with its container.
pub fn bpffs_action(here: Option<u64>, ns: MountNs) -> Result<BpffsAction, BpffsError> {
    let dev = |d: u64| format!("{}:{}", nix::sys::stat::major(d), nix::sys::stat::minor(d));
    match (here, ns) {
        (Some(_), MountNs::Initial | MountNs::Unknown) => Ok(BpffsAction::Ready),
        (Some(h), MountNs::Other { host_bpffs }) if host_bpffs == Some(h) => Ok(BpffsAction::Ready),
        (Some(h), MountNs::Other { host_bpffs }) => Err(BpffsError::Private {
            here: dev(h),
            host: host_bpffs.map_or_else(
                || format!("which has none at {BPFFS_MOUNT}"),
                |d| format!("device {}", dev(d)),
            ),
        }),
        (None, MountNs::Initial) => Ok(BpffsAction::Mount),
        (None, MountNs::Other { .. } | MountNs::Unknown) => Err(BpffsError::NotMounted),
    }
}

/// Makes sure the host's bpffs is at /sys/fs/bpf, mounting it only in the initial mount
/// namespace (see [`bpffs_action`]). Runs before anything is loaded, so a refusal leaves
/// nothing attached.
pub fn ensure_bpffs() -> Result<(), BpffsError> {
    let dir = Path::new(BPFFS_MOUNT);
    match bpffs_action(bpffs_device(dir), mount_ns())? {
        BpffsAction::Ready => Ok(()),
        BpffsAction::Mount => {
            if !dir.is_dir() {
                return Err(BpffsError::NoMountPoint);
            }
            use nix::mount::{mount, MsFlags};
            mount(
                Some("bpf"),
                dir,
                Some("bpf"),
                MsFlags::empty(),
                Some("mode=0700"),
            )
            .map_err(|e| BpffsError::MountFailed(e.to_string()))
        }
    }
}

/// Whether bpffs is mounted at /sys/fs/bpf, as `status` reports it.
pub fn bpffs_visible() -> bool {
    bpffs_device(Path::new(BPFFS_MOUNT)).is_some()
}

/// The device of the bpffs at `dir`, or `None` when `dir` is not on bpffs.
fn bpffs_device(dir: &Path) -> Option<u64> {
    match fs_magic(dir) {
        Ok(BPF_FS_MAGIC) => fs::metadata(dir).ok().map(|m| m.dev()),
        _ => None,
    }
}

/// The initial PID namespace has this fixed inode (`PROC_PID_INIT_INO`).
const PROC_PID_INIT_INO: u64 = 0xEFFF_FFFC;

/// This process's mount namespace relative to the initial one. Kernel threads always live
/// in the initial mount namespace, so kthreadd (PID 2 of the initial PID namespace) is
/// the reference; PID 1 is not (in a container it is the container's init, and it may be
/// unreadable even to root).
fn mount_ns() -> MountNs {
    let in_initial_pid_ns =
        fs::metadata("/proc/self/ns/pid").is_ok_and(|m| m.ino() == PROC_PID_INIT_INO);
    let kthreadd = fs::read_to_string("/proc/2/comm").is_ok_and(|c| c.trim() == "kthreadd");
    if !(in_initial_pid_ns && kthreadd) {
        return MountNs::Unknown;
    }
    let id = |p: &str| fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
    match (id("/proc/self/ns/mnt"), id("/proc/2/ns/mnt")) {
        (Some(a), Some(b)) if a == b => MountNs::Initial,
        (Some(_), Some(_)) => MountNs::Other {
            host_bpffs: bpffs_device(Path::new("/proc/2/root/sys/fs/bpf")),
        },
        _ => MountNs::Unknown,
    }
}

/// Finds the cgroup directory whose id is `id` under the cgroup2 mount (for `status`).
pub fn cgroup_path_by_id(id: u64) -> Option<PathBuf> {
    let root = cgroup2_mount().ok()?;
    let mut stack = vec![(root, 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        if fs::metadata(&dir).map(|m| m.ino()).ok() == Some(id) {
            return Some(dir);
        }
        if depth >= 12 {
            continue;
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push((e.path(), depth + 1));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_cgroup_directory_is_rejected_with_the_flag_named() {
        let err = Target::resolve(Some(Path::new("/tmp")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--cgroup") && err.contains("cgroup v2") && err.contains("iptables"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_cgroup_is_rejected() {
        let err = Target::resolve(Some(Path::new("/nonexistent/cg")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--cgroup") && err.contains("/nonexistent/cg"),
            "{err}"
        );
    }

    #[test]
    fn bpffs_is_mounted_only_in_the_initial_mount_namespace() {
        use BpffsAction::*;
        let ours = 39;
        assert_eq!(bpffs_action(Some(ours), MountNs::Initial), Ok(Ready));
        assert_eq!(bpffs_action(None, MountNs::Initial), Ok(Mount));
        // A container's /sys/fs/bpf that is the host's (hostPath): same device.
        let host = MountNs::Other {
            host_bpffs: Some(ours),
        };
        assert_eq!(bpffs_action(Some(ours), host), Ok(Ready));
        // Cannot see the host (own PID namespace): a bpffs there is taken as the hostPath.
        assert_eq!(bpffs_action(Some(ours), MountNs::Unknown), Ok(Ready));
        for ns in [MountNs::Unknown, host, MountNs::Other { host_bpffs: None }] {
            let err = bpffs_action(None, ns).unwrap_err().to_string();
            assert!(
                err.contains("/sys/fs/bpf is not the host's bpffs") && err.contains("hostPath"),
                "{err}"
            );
        }
        // A private bpffs mounted in the container: another device than the host's.
        let err = bpffs_action(Some(ours + 1), host).unwrap_err();
        assert!(matches!(err, BpffsError::Private { .. }), "{err}");
        assert!(err.to_string().contains("hostPath"), "{err}");
    }

    #[test]
    fn this_test_process_sees_its_mount_namespace() {
        // The test runs on the host or in a container; either way bpffs_visible agrees
        // with statfs and mount_ns does not panic.
        let _ = mount_ns();
        assert_eq!(
            bpffs_visible(),
            fs_magic(Path::new(BPFFS_MOUNT)).ok() == Some(BPF_FS_MAGIC)
        );
    }

    #[test]
    fn own_cgroup_resolves_on_a_cgroup2_machine() {
        if cgroup2_mount().is_err() {
            return; // cgroup v1 machine: nothing to resolve
        }
        let t = Target::resolve(None).unwrap();
        assert!(t.cgroup.is_dir());
        assert_eq!(
            cgroup_path_by_id(t.cgroup_id).map(|p| fs::canonicalize(p).unwrap()),
            Some(fs::canonicalize(&t.cgroup).unwrap())
        );
        assert!(t.pin_dir().starts_with(PIN_ROOT));
    }
}
