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
fn own_cgroup() -> Result<PathBuf> {
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

/// Makes sure bpffs is mounted at /sys/fs/bpf, mounting it when missing.
pub fn ensure_bpffs() -> Result<()> {
    let dir = Path::new(BPFFS_MOUNT);
    if dir.is_dir() && fs_magic(dir)? == BPF_FS_MAGIC {
        return Ok(());
    }
    use nix::mount::{mount, MsFlags};
    mount(
        Some("bpf"),
        mount_target(dir)?,
        Some("bpf"),
        MsFlags::empty(),
        Some("mode=0700"),
    )
    .map_err(|e| {
        anyhow!("bpffs is not mounted at {BPFFS_MOUNT} and mounting it failed: {e}; {USE_IPTABLES}")
    })?;
    Ok(())
}

fn mount_target(mount: &Path) -> Result<&Path> {
    if !mount.is_dir() {
        bail!(
            "{} does not exist, so bpffs cannot be mounted there; {USE_IPTABLES}",
            mount.display()
        );
    }
    Ok(mount)
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
