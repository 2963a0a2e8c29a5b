//! Where interception applies: one cgroup v2 and the current network namespace, and the
//! bpffs directory its pins live in. Checks here turn an unsuitable machine into a clear
//! error before anything is loaded.
//!
//! `--cgroup pod` names the pod's cgroup from inside one of its containers: the parent of
//! this process's own cgroup, found by id in the host's cgroup tree (see [`pod_cgroup`]).

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
    /// This process's own cgroup in the tree `cgroup` was found in, when resolving found it
    /// (`--cgroup pod`): inside a container its own cgroup is not visible at a path that
    /// lies under `cgroup`, and the validation probe needs to know it is below.
    pub caller: Option<PathBuf>,
}

impl Target {
    /// `cgroup`, or the caller's own cgroup v2 when `None`, or the pod's ([`POD_CGROUP`]),
    /// in the current namespace. `host_root` (`--host-cgroup-root`) is where the pod's is
    /// looked for, and only means something with [`POD_CGROUP`].
    pub fn resolve(cgroup: Option<&Path>, host_root: Option<&Path>) -> Result<Target> {
        let is_pod = cgroup == Some(Path::new(POD_CGROUP));
        if let (Some(root), false) = (host_root, is_pod) {
            return Err(PodCgroupError::HostRootWithoutPod(root.to_path_buf()).into());
        }
        let mut caller = None;
        let cgroup = match cgroup {
            _ if is_pod => {
                let found = pod_cgroup(host_root)?;
                caller = Some(found.caller);
                found.pod
            }
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
            caller,
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

/// The caller's cgroup v2, from /proc/self/cgroup and the cgroup2 mount that shows it.
pub(crate) fn own_cgroup() -> Result<PathBuf> {
    let rel = own_cgroup_rel()?;
    let mounts = cgroup2_mounts()?;
    if mounts.is_empty() {
        bail!("no cgroup2 filesystem is mounted (cgroup v1 only); {USE_IPTABLES}");
    }
    visible_cgroup(&rel, &mounts).ok_or_else(|| {
        anyhow!(
            "no cgroup2 mount here shows this process's cgroup `{rel}` (each mounted tree \
             starts elsewhere); pass --cgroup PATH"
        )
    })
}

/// This process's cgroup v2 path relative to its cgroup namespace's root ("0::" in
/// /proc/self/cgroup; "/" in a private cgroup namespace).
fn own_cgroup_rel() -> Result<String> {
    let text = fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
        .ok_or_else(|| {
            anyhow!("this process is in no cgroup v2 hierarchy (cgroup v1 only); {USE_IPTABLES}")
        })
}

/// The cgroup2 mounts of this mount namespace, in mountinfo order: (root, mount point).
/// The root is the mounted tree's top relative to this process's cgroup namespace: "/" for
/// the whole hierarchy or a private namespace's own root, `/../..` for the host's tree
/// bind-mounted into a container with a private namespace.
fn cgroup2_mounts() -> Result<Vec<(String, PathBuf)>> {
    let info =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|line| {
            // "id parent major:minor root mount-point options ... - fstype source options"
            let (pre, post) = line.split_once(" - ")?;
            if post.split_whitespace().next() != Some("cgroup2") {
                return None;
            }
            let mut f = pre.split_whitespace().skip(3);
            Some((f.next()?.to_string(), PathBuf::from(f.next()?)))
        })
        .collect())
}

/// Where one of `mounts` shows the cgroup at `rel` (relative to this cgroup namespace).
fn visible_cgroup(rel: &str, mounts: &[(String, PathBuf)]) -> Option<PathBuf> {
    // Outside this namespace's root: no mount in it shows that (and a path with ".." in it
    // would climb out of the mount point).
    if rel.split('/').any(|c| c == "..") {
        return None;
    }
    mounts.iter().find_map(|(root, mp)| {
        if root.split('/').any(|c| c == "..") {
            return None;
        }
        let below = Path::new(rel).strip_prefix(root).ok()?;
        Some(if below.as_os_str().is_empty() {
            mp.clone()
        } else {
            mp.join(below)
        })
    })
}

/// `--cgroup pod`: not a path but the pod's cgroup, the parent of this process's own. In a
/// Kubernetes pod (kubelet's cgroupfs and systemd drivers) and a podman pod each container
/// has a cgroup of its own under the pod's, so programs attached there cover every
/// container of the pod, those that start later included. (`./pod` names a folder.)
pub const POD_CGROUP: &str = "pod";

/// Where `--cgroup pod` looks for the host's cgroup tree by default: the manifests mount
/// the host's /sys/fs/cgroup there (hostPath), never over the container's own.
pub const HOST_CGROUP_ROOT: &str = "/host/sys/fs/cgroup";

/// The initial cgroup namespace's fixed inode (`PROC_CGROUP_INIT_INO`).
const PROC_CGROUP_INIT_INO: u64 = 0xEFFF_FFFB;

/// The root cgroup's id: kernfs numbers the root of the hierarchy 1.
const ROOT_CGROUP_ID: u64 = 1;

/// Bounds of the search for this process's cgroup in the host's tree. A node has a few
/// thousand cgroup directories (kubepods/<qos>/pod<uid>/<container>, system slices),
/// nested well under 32 deep; the bounds only stop a runaway walk.
const WALK_MAX_DIRS: usize = 200_000;
const WALK_MAX_DEPTH: usize = 32;

/// Why `--cgroup pod` found no pod cgroup. Nothing is attached when one is returned.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PodCgroupError {
    #[error(
        "--host-cgroup-root {}: only --cgroup pod searches a host cgroup tree; add --cgroup \
         pod or drop --host-cgroup-root",
        .0.display()
    )]
    HostRootWithoutPod(PathBuf),
    #[error(
        "--host-cgroup-root: `{}` is not a cgroup2 mount: mount the host's /sys/fs/cgroup \
         there (hostPath; on a host with cgroup v1 controllers, its /sys/fs/cgroup/unified)",
        .0.display()
    )]
    HostRootNotCgroup2(PathBuf),
    #[error("--cgroup pod: cannot tell this process's cgroup: {0}")]
    OwnUnknown(String),
    /// A private cgroup namespace (containerd and CRI-O on cgroup v2): the container's own
    /// cgroup is the top of everything it sees.
    #[error(
        "--cgroup pod: this container's cgroup (id {id}) is the root of its own cgroup \
         namespace, so the pod's cgroup above it is not visible here, and {HOST_CGROUP_ROOT} \
         is not a cgroup2 mount: mount the host's /sys/fs/cgroup there (hostPath), or name \
         where it is mounted with --host-cgroup-root"
    )]
    PrivateNamespace { id: u64 },
    /// The host's cgroup namespace, but no mount of the whole hierarchy in sight (a
    /// container on a host with cgroup v1 controllers has none).
    #[error(
        "--cgroup pod: this container's cgroup (id {id}) is in no cgroup2 tree mounted here \
         ({HOST_CGROUP_ROOT} is not a cgroup2 mount and no whole cgroup2 hierarchy is \
         mounted): mount the host's /sys/fs/cgroup at {HOST_CGROUP_ROOT} (hostPath)"
    )]
    NoTree { id: u64 },
    #[error(
        "--cgroup pod: this container's cgroup (id {id}) is not under {}: mount the host's \
         /sys/fs/cgroup there (hostPath)",
        .root.display()
    )]
    NotUnder { id: u64, root: PathBuf },
    #[error(
        "--cgroup pod: this container's cgroup (id {id}) was not among the first {dirs} \
         directories under {}; name the pod's cgroup with --cgroup PATH",
        .root.display()
    )]
    TooLarge { id: u64, root: PathBuf, dirs: usize },
    /// The tree searched starts at this process's own cgroup (the container's own
    /// /sys/fs/cgroup mounted where the host's was expected).
    #[error(
        "--cgroup pod: this container's cgroup (id {id}) is the top of {}, so its parent is \
         not visible there: mount the host's whole /sys/fs/cgroup there (hostPath), not this \
         container's",
        .root.display()
    )]
    OwnIsRoot { id: u64, root: PathBuf },
    /// Attaching to the root cgroup would cover every process of the node in this network
    /// namespace: a top-level cgroup is no pod's container.
    #[error(
        "--cgroup pod: this process's cgroup {} is a top-level cgroup, so its parent is the \
         root cgroup, not a pod's; run it in a container of a pod, or name the cgroup with \
         --cgroup PATH",
        .0.display()
    )]
    ParentIsRoot(PathBuf),
}

/// What `--cgroup pod` resolved: the pod's cgroup and, below it, this process's own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCgroup {
    pub pod: PathBuf,
    pub caller: PathBuf,
}

/// The pod's cgroup: this process's own cgroup, found by its id in the host's cgroup tree
/// (`host_root`, by default [`HOST_CGROUP_ROOT`], or the whole hierarchy in sight when
/// this process shares the host's cgroup namespace), and then its parent. By id, because a
/// container cannot name its own cgroup on the host: with a private cgroup namespace its
/// /proc/self/cgroup says `0::/`.
pub fn pod_cgroup(host_root: Option<&Path>) -> Result<PodCgroup, PodCgroupError> {
    let id = own_cgroup_id()?;
    let root = host_tree(host_root, id)?;
    let own = find_cgroup(&root, id)?;
    if own == root {
        return Err(PodCgroupError::OwnIsRoot { id, root });
    }
    let Some(parent) = own.parent().map(Path::to_path_buf) else {
        return Err(PodCgroupError::OwnIsRoot { id, root });
    };
    if fs::metadata(&parent).map(|m| m.ino()).ok() == Some(ROOT_CGROUP_ID) {
        return Err(PodCgroupError::ParentIsRoot(own));
    }
    Ok(PodCgroup {
        pod: parent,
        caller: own,
    })
}

/// This process's cgroup v2 id. Where a cgroup2 mount of this mount namespace shows its
/// cgroup (a container's /sys/fs/cgroup on a cgroup v2 node: the root of its private
/// cgroup namespace), that directory's inode, which is the id. Where none does (a container
/// on a host with cgroup v1 controllers gets no cgroup2 mount), the id the kernel reports
/// for a socket this process makes: sockets belong to their creator's cgroup v2.
fn own_cgroup_id() -> Result<u64, PodCgroupError> {
    let unknown = |e: anyhow::Error| PodCgroupError::OwnUnknown(format!("{e:#}"));
    let rel = own_cgroup_rel().map_err(unknown)?;
    let mounts = cgroup2_mounts().map_err(unknown)?;
    if let Some(dir) = visible_cgroup(&rel, &mounts) {
        if let Ok(m) = fs::metadata(&dir) {
            return Ok(m.ino());
        }
    }
    socket_cgroup_id().map_err(|e| {
        PodCgroupError::OwnUnknown(format!(
            "no cgroup2 mount here shows it (/proc/self/cgroup says `0::{rel}`), and the \
             kernel's socket diagnostics did not report it ({e}; needs Linux 5.7+ with \
             CONFIG_INET_DIAG)"
        ))
    })
}

/// The tree to search: `explicit` (`--host-cgroup-root`), else the host's /sys/fs/cgroup
/// mounted at [`HOST_CGROUP_ROOT`] (or its `unified/`: on a host with cgroup v1
/// controllers, a recursive hostPath mount of /sys/fs/cgroup brings the cgroup2 tree
/// there), else, in the host's cgroup namespace only, the whole hierarchy in sight.
fn host_tree(explicit: Option<&Path>, id: u64) -> Result<PathBuf, PodCgroupError> {
    let is_cgroup2 = |p: &Path| fs_magic(p).ok() == Some(CGROUP2_SUPER_MAGIC);
    if let Some(root) = explicit {
        return if is_cgroup2(root) {
            Ok(root.to_path_buf())
        } else {
            Err(PodCgroupError::HostRootNotCgroup2(root.to_path_buf()))
        };
    }
    let host = Path::new(HOST_CGROUP_ROOT);
    for candidate in [host.to_path_buf(), host.join("unified")] {
        if is_cgroup2(&candidate) {
            return Ok(candidate);
        }
    }
    // In a private cgroup namespace, a mount rooted at "/" is only this namespace's top.
    let private =
        fs::metadata("/proc/self/ns/cgroup").is_ok_and(|m| m.ino() != PROC_CGROUP_INIT_INO);
    if private {
        return Err(PodCgroupError::PrivateNamespace { id });
    }
    cgroup2_mounts()
        .ok()
        .and_then(|m| m.into_iter().find(|(root, _)| root == "/"))
        .map(|(_, mp)| mp)
        .ok_or(PodCgroupError::NoTree { id })
}

/// The directory under `root` whose inode is `id`: a bounded depth-first walk that reads
/// inodes from the directory entries (no stat per directory).
fn find_cgroup(root: &Path, id: u64) -> Result<PathBuf, PodCgroupError> {
    use std::os::unix::fs::DirEntryExt;
    if fs::metadata(root).map(|m| m.ino()).ok() == Some(id) {
        return Ok(root.to_path_buf());
    }
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    let mut dirs = 0usize;
    while let Some((dir, depth)) = stack.pop() {
        dirs += 1;
        if dirs > WALK_MAX_DIRS {
            return Err(PodCgroupError::TooLarge {
                id,
                root: root.to_path_buf(),
                dirs: WALK_MAX_DIRS,
            });
        }
        // A cgroup removed meanwhile (a container ending) is simply skipped.
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            // Confirmed with stat: d_ino is what readdir reported, the id is what counts.
            if e.ino() == id && fs::metadata(e.path()).is_ok_and(|m| m.ino() == id) {
                return Ok(e.path());
            }
            if depth + 1 < WALK_MAX_DEPTH {
                stack.push((e.path(), depth + 1));
            }
        }
    }
    Err(PodCgroupError::NotUnder {
        id,
        root: root.to_path_buf(),
    })
}

/// The cgroup v2 id of this process from the kernel's socket diagnostics: a TCP socket
/// listening on an ephemeral port (only listening and connected sockets are in the tables
/// sock_diag dumps), found in a dump of this network namespace's listeners by its inode,
/// carries its creator's cgroup id (`INET_DIAG_CGROUP_ID`, Linux 5.7+).
fn socket_cgroup_id() -> std::io::Result<u64> {
    use nix::sys::socket::{
        recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol,
        SockType,
    };
    use std::io::{Error, ErrorKind};
    use std::os::fd::AsRawFd;

    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLM_F_REQUEST: u16 = 0x1;
    const NLM_F_DUMP: u16 = 0x300;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const TCP_LISTEN: u32 = 10;
    const INET_DIAG_CGROUP_ID: u16 = 21;
    // struct inet_diag_msg: family, state, timer, retrans, sockid (48), expires, rqueue,
    // wqueue, uid, inode.
    const DIAG_MSG_LEN: usize = 72;
    const INODE_AT: usize = 68;

    let listener = std::net::TcpListener::bind("0.0.0.0:0")?;
    let port = listener.local_addr()?.port();
    let inode = nix::sys::stat::fstat(listener.as_raw_fd())?.st_ino;

    let nl = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )?;
    // nlmsghdr, then inet_diag_req_v2: IPv4 TCP listeners, source port ours.
    let mut req = Vec::with_capacity(72);
    req.extend_from_slice(&72u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    req.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    req.extend_from_slice(&[libc::AF_INET as u8, libc::IPPROTO_TCP as u8, 0, 0]);
    req.extend_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    let mut id = [0u8; 48];
    id[0..2].copy_from_slice(&port.to_be_bytes());
    req.extend_from_slice(&id);
    sendto(
        nl.as_raw_fd(),
        &req,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )?;

    let mut buf = vec![0u8; 64 * 1024];
    let u16_at = |b: &[u8], at: usize| u16::from_ne_bytes([b[at], b[at + 1]]);
    let u32_at = |b: &[u8], at: usize| u32::from_ne_bytes(b[at..at + 4].try_into().unwrap());
    let mut found = None;
    loop {
        let n = recv(nl.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        let mut at = 0;
        while at + 16 <= n {
            let len = u32_at(&buf, at) as usize;
            let kind = u16_at(&buf, at + 4);
            if len < 16 || at + len > n {
                return Err(Error::new(
                    ErrorKind::InvalidData,
                    "truncated netlink message",
                ));
            }
            let msg = &buf[at + 16..at + len];
            match kind {
                NLMSG_DONE => {
                    return found.ok_or_else(|| {
                        Error::new(
                            ErrorKind::NotFound,
                            "its listening socket carried no cgroup id",
                        )
                    })
                }
                NLMSG_ERROR => {
                    let errno = i32::from_ne_bytes(msg[0..4].try_into().unwrap_or([0; 4]));
                    return Err(Error::from_raw_os_error(-errno));
                }
                SOCK_DIAG_BY_FAMILY
                    if msg.len() >= DIAG_MSG_LEN && u64::from(u32_at(msg, INODE_AT)) == inode =>
                {
                    // Attributes (struct nlattr: length, type), 4-byte aligned.
                    let mut a = DIAG_MSG_LEN;
                    while a + 4 <= msg.len() {
                        let alen = u16_at(msg, a) as usize;
                        if alen < 4 || a + alen > msg.len() {
                            break;
                        }
                        if u16_at(msg, a + 2) & 0x3fff == INET_DIAG_CGROUP_ID && alen >= 12 {
                            found =
                                Some(u64::from_ne_bytes(msg[a + 4..a + 12].try_into().unwrap()));
                        }
                        a += (alen + 3) & !3;
                    }
                }
                _ => {}
            }
            at += (len + 3) & !3;
        }
    }
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
        let err = Target::resolve(Some(Path::new("/tmp")), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--cgroup") && err.contains("cgroup v2") && err.contains("iptables"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_cgroup_is_rejected() {
        let err = Target::resolve(Some(Path::new("/nonexistent/cg")), None)
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
        let t = Target::resolve(None, None).unwrap();
        assert!(t.cgroup.is_dir());
        assert_eq!(
            cgroup_path_by_id(t.cgroup_id).map(|p| fs::canonicalize(p).unwrap()),
            Some(fs::canonicalize(&t.cgroup).unwrap())
        );
        assert!(t.pin_dir().starts_with(PIN_ROOT));
    }

    #[test]
    fn the_own_cgroup_is_found_through_the_mount_whose_root_covers_it() {
        let mounts = vec![
            // The host's tree bind-mounted into a container with a private namespace.
            (
                "/../../..".to_string(),
                PathBuf::from("/host/sys/fs/cgroup"),
            ),
            ("/".to_string(), PathBuf::from("/sys/fs/cgroup")),
        ];
        assert_eq!(
            visible_cgroup("/", &mounts),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            visible_cgroup("/a/b", &mounts),
            Some(PathBuf::from("/sys/fs/cgroup/a/b"))
        );
        // A subtree mount shows only what is below its root.
        let sub = vec![("/kubepods/pod1".to_string(), PathBuf::from("/cg"))];
        assert_eq!(
            visible_cgroup("/kubepods/pod1/c1", &sub),
            Some(PathBuf::from("/cg/c1"))
        );
        assert_eq!(visible_cgroup("/kubepods/pod10", &sub), None);
        // Outside this namespace's root, and no cgroup2 mounted at all (a container on a
        // host with cgroup v1 controllers).
        assert_eq!(visible_cgroup("/../x", &mounts), None);
        assert_eq!(visible_cgroup("/", &[]), None);
    }

    #[test]
    fn host_cgroup_root_is_refused_without_cgroup_pod() {
        for cgroup in [
            None,
            Some(Path::new("/sys/fs/cgroup")),
            Some(Path::new("./pod")),
        ] {
            let err = Target::resolve(cgroup, Some(Path::new("/h"))).unwrap_err();
            assert_eq!(
                err.downcast_ref::<PodCgroupError>(),
                Some(&PodCgroupError::HostRootWithoutPod("/h".into())),
                "{cgroup:?}"
            );
        }
    }

    #[test]
    fn a_host_cgroup_root_that_is_not_cgroup2_is_named() {
        let err = Target::resolve(Some(Path::new("pod")), Some(Path::new("/tmp"))).unwrap_err();
        assert_eq!(
            err.downcast_ref::<PodCgroupError>(),
            Some(&PodCgroupError::HostRootNotCgroup2("/tmp".into()))
        );
        assert!(
            err.to_string().contains("--host-cgroup-root: `/tmp`"),
            "{err}"
        );
    }

    #[test]
    fn the_walk_finds_a_directory_by_inode_and_says_where_it_looked() {
        let top = std::env::temp_dir().join(format!("ic-walk-{}", std::process::id()));
        let deep = top.join("kubepods/burstable/pod1/ctr");
        fs::create_dir_all(&deep).unwrap();
        fs::create_dir_all(top.join("kubepods/besteffort/pod2/ctr")).unwrap();
        let id = fs::metadata(&deep).unwrap().ino();
        assert_eq!(find_cgroup(&top, id), Ok(deep.clone()));
        assert_eq!(find_cgroup(&deep, id), Ok(deep.clone()));
        let elsewhere = top.join("kubepods/besteffort");
        let err = find_cgroup(&elsewhere, id).unwrap_err();
        assert_eq!(
            err,
            PodCgroupError::NotUnder {
                id,
                root: elsewhere.clone()
            }
        );
        assert_eq!(
            err.to_string(),
            format!(
                "--cgroup pod: this container's cgroup (id {id}) is not under {}: mount the \
                 host's /sys/fs/cgroup there (hostPath)",
                elsewhere.display()
            )
        );
        fs::remove_dir_all(&top).unwrap();
    }

    #[test]
    fn sockets_report_the_cgroup_whose_directory_has_that_inode() {
        let Ok(own) = own_cgroup() else {
            return; // cgroup v1 machine: no cgroup2 id to compare
        };
        let id = fs::metadata(&own).unwrap().ino();
        assert_eq!(socket_cgroup_id().unwrap(), id);
        assert_eq!(own_cgroup_id().unwrap(), id);
    }
}
