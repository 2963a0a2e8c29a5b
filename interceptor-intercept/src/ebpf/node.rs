//! The node agent's eBPF mode: one set of programs serves every pod of the node.
//!
//! The agent loads the programs once, attaches the cgroup ones at the cgroup v2 root (or
//! the root it is given) and pins links, maps and the sk_lookup program under
//! [`NODE_DIR`]. The programs act only for namespaces with a `SETTINGS` entry (keyed by
//! netns cookie), so attaching at the root changes nothing until a pod is registered.
//!
//! The CNI plugin registers a pod without loading anything: it writes the namespace's
//! entries ([`netns_entries`]) into the pinned maps and attaches the pinned sk_lookup
//! program to the pod's namespace, pinning that link as `netns_<cookie>`. Unregistering
//! removes both; detaching unpins the whole directory, which detaches every link.
//!
//! What happens when, in the directory: `link_<program>` for the six cgroup programs,
//! `prog_sklookup`, `netns_<cookie>` per pod, and the maps by name.

use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{MapData, SockHash};
use aya::EbpfLoader;
use interceptor_common::{map, program, NetnsTuple};

use super::load::{self, link_pin_name, CGROUP_PROGRAMS};
use super::netns_entries::{self, LocalAddrs, Pinned};
use super::sys::{self, attach, LinkTarget};
use super::{object, Settings, PIN_ROOT};

/// Where the node's programs, links and maps are pinned.
pub const NODE_DIR: &str = "/sys/fs/bpf/interceptor/node";
/// Pin of the loaded sk_lookup program, which the plugin attaches to each pod's namespace.
pub const SKLOOKUP_PROG_PIN: &str = "prog_sklookup";

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const BPFFS: &str = "/sys/fs/bpf";

/// Pin name of the sk_lookup link of the namespace `cookie`.
pub fn netns_link_pin(cookie: u64) -> String {
    format!("netns_{cookie}")
}

/// Why the node's programs cannot serve a pod.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("the agent's eBPF programs are not attached ({path} is missing): is the interceptor agent running in eBPF mode on this node?", path = .path.display())]
    NotAttached { path: PathBuf },
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

/// The node's programs, attached.
#[derive(Debug)]
pub struct Attached {
    pub dir: PathBuf,
    pub cgroup_root: PathBuf,
    /// False when an earlier agent had attached them and the links were updated in place.
    pub fresh: bool,
}

/// Checks, before anything is loaded, that `cgroup_root` is a cgroup v2 directory and that
/// bpffs is mounted at /sys/fs/bpf; each error names the path.
pub fn check_machine(cgroup_root: &Path) -> Result<()> {
    let magic = |p: &Path| -> Result<i64> {
        let st = nix::sys::statfs::statfs(p).map_err(|e| anyhow!("{}: {e}", p.display()))?;
        Ok(st.filesystem_type().0 as i64)
    };
    if magic(cgroup_root)? != CGROUP2_SUPER_MAGIC {
        bail!(
            "--cgroup-root {}: not a cgroup v2 directory (eBPF mode attaches its programs to the cgroup v2 root; use --mode iptables on cgroup v1 nodes)",
            cgroup_root.display()
        );
    }
    let bpffs = Path::new(BPFFS);
    if !bpffs.is_dir() || magic(bpffs)? != BPF_FS_MAGIC {
        bail!(
            "{BPFFS}: no bpffs mounted there (eBPF mode pins its programs on the node's bpffs; mount it, or use --mode iptables)"
        );
    }
    Ok(())
}

/// Loads the programs and attaches them once for the node. When an earlier agent left
/// them pinned (a restart), the pinned maps are reused, so registered pods keep their
/// entries, and every pinned link is pointed at the newly loaded program. Fails with
/// nothing left over (a fresh attach) or with the earlier programs back in place.
pub fn attach(cgroup_root: &Path) -> Result<Attached> {
    check_machine(cgroup_root)?;
    load::check_privileges()?;
    let dir = PathBuf::from(NODE_DIR);
    let fresh = !dir.join(SKLOOKUP_PROG_PIN).exists();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut undo = Undo {
        before: pin_names(&dir),
        dir: dir.clone(),
        created_dir: fresh && pin_names(&dir).is_empty(),
        created: Vec::new(),
        updated: Vec::new(),
        replaced_prog: None,
    };
    match load_and_attach(cgroup_root, &dir, &mut undo) {
        Ok(()) => Ok(Attached {
            dir,
            cgroup_root: cgroup_root.to_path_buf(),
            fresh,
        }),
        Err(e) => {
            undo.rollback();
            Err(e)
        }
    }
}

fn load_and_attach(cgroup_root: &Path, dir: &Path, undo: &mut Undo) -> Result<()> {
    let level: u8 = 0;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(dir)
        .override_global(aya_log::LEVEL, &level, true)
        .load(object::object()?)
        .map_err(|e| {
            anyhow!("loading the eBPF object failed: {e}; use --mode iptables on this node")
        })?;
    for name in CGROUP_PROGRAMS
        .iter()
        .map(|(n, _)| *n)
        .chain([program::SKMSG, program::SKLOOKUP])
    {
        load::load_program(&mut ebpf, name)?;
    }
    let cgroup =
        File::open(cgroup_root).with_context(|| format!("opening {}", cgroup_root.display()))?;
    for (name, attach_type) in CGROUP_PROGRAMS {
        let prog = load::prog_fd(&ebpf, name)?;
        let pin = dir.join(link_pin_name(name));
        attach_or_update(prog, cgroup.as_fd(), attach_type, &pin, name, undo)?;
    }

    // The sk_lookup program: pods registered by an earlier agent get the new one too.
    let sklookup = load::prog_fd(&ebpf, program::SKLOOKUP)?;
    for cookie in netns_links(dir) {
        let pin = dir.join(netns_link_pin(cookie));
        if let Ok(link) = sys::obj_get(&pin) {
            let before = sys::link_info(link.as_fd())
                .and_then(|i| sys::prog_fd_by_id(i.prog_id))
                .map_err(|e| load::kernel_error("reading a pod's sk_lookup link", e))?;
            sys::link_update(link.as_fd(), sklookup)
                .map_err(|e| load::kernel_error("updating a pod's sk_lookup link", e))?;
            undo.updated.push((pin, before));
        }
    }
    let prog_pin = dir.join(SKLOOKUP_PROG_PIN);
    if let Ok(old) = sys::obj_get(&prog_pin) {
        fs::remove_file(&prog_pin).with_context(|| format!("replacing {}", prog_pin.display()))?;
        undo.replaced_prog = Some(old);
    }
    sys::obj_pin(sklookup, &prog_pin)
        .map_err(|e| load::kernel_error("pinning the sk_lookup program", e))?;
    undo.created.push(prog_pin);

    // sk_msg is held by the sockhash (pinned with the maps); attaching again replaces it.
    let sockets: SockHash<&MapData, NetnsTuple> = SockHash::try_from(
        ebpf.map(map::SOCKETS)
            .ok_or_else(|| anyhow!("map {} missing from the eBPF object", map::SOCKETS))?,
    )?;
    sys::prog_attach_to_map(
        load::prog_fd(&ebpf, program::SKMSG)?,
        sockets.fd().as_fd(),
        attach::SK_MSG_VERDICT,
    )
    .map_err(|e| load::kernel_error("attaching sk_msg to the sockhash", e))?;
    Ok(())
}

fn attach_or_update(
    prog: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    attach_type: u32,
    pin: &Path,
    name: &str,
    undo: &mut Undo,
) -> Result<()> {
    match sys::obj_get(pin) {
        Ok(existing) => {
            let before = sys::link_info(existing.as_fd())
                .and_then(|i| sys::prog_fd_by_id(i.prog_id))
                .map_err(|e| load::kernel_error("reading a pinned link", e))?;
            sys::link_update(existing.as_fd(), prog)
                .map_err(|e| load::kernel_error(&format!("updating link {name}"), e))?;
            undo.updated.push((pin.to_path_buf(), before));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let link = sys::link_create(prog, target, attach_type)
                .map_err(|e| load::kernel_error(&format!("attaching {name}"), e))?;
            sys::obj_pin(link.as_fd(), pin)
                .map_err(|e| load::kernel_error(&format!("pinning link {name}"), e))?;
            undo.created.push(pin.to_path_buf());
        }
        Err(e) => {
            return Err(load::kernel_error(
                &format!("opening pinned link {}", pin.display()),
                e,
            ))
        }
    }
    Ok(())
}

/// Unpins everything under [`NODE_DIR`]: pods' sk_lookup links first, then the cgroup
/// links (both detach as their last reference goes), then the program and the maps.
/// `Ok(false)` when nothing was pinned.
pub fn detach() -> Result<bool> {
    let dir = Path::new(NODE_DIR);
    if !dir.exists() {
        return Ok(false);
    }
    let mut names: Vec<String> = pin_names(dir)
        .into_iter()
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    let rank = |n: &str| {
        if n.starts_with("netns_") {
            0
        } else if n.starts_with("link_") {
            1
        } else if n == SKLOOKUP_PROG_PIN {
            2
        } else {
            3
        }
    };
    names.sort_by_key(|n| rank(n));
    for n in &names {
        let p = dir.join(n);
        fs::remove_file(&p).with_context(|| format!("unpinning {}", p.display()))?;
    }
    fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))?;
    // The root goes too once nothing else is pinned there (per-cgroup instances keep it).
    let _ = fs::remove_dir(PIN_ROOT);
    Ok(true)
}

/// Checks that the node's programs are attached: the sk_lookup program and every cgroup
/// link pinned (the plugin's precondition for registering a pod).
pub fn check_attached() -> Result<(), NodeError> {
    let dir = Path::new(NODE_DIR);
    let wanted = CGROUP_PROGRAMS
        .iter()
        .map(|(n, _)| link_pin_name(n))
        .chain([SKLOOKUP_PROG_PIN.to_string()]);
    for name in wanted {
        let path = dir.join(name);
        if sys::obj_get(&path).is_err() {
            return Err(NodeError::NotAttached { path });
        }
    }
    Ok(())
}

/// The cookie of the calling thread's network namespace.
pub fn current_netns_cookie() -> Result<u64> {
    sys::current_netns_cookie()
        .context("reading the network namespace's cookie (SO_NETNS_COOKIE needs Linux 5.14+)")
}

/// Registers the namespace `netns` (an open namespace file, whose cookie is `cookie` and
/// whose addresses are `local`) with `settings`. All or nothing: on failure whatever this
/// call wrote is removed again.
pub fn register(
    netns: BorrowedFd<'_>,
    cookie: u64,
    settings: &Settings,
    local: &LocalAddrs,
) -> Result<(), NodeError> {
    check_attached()?;
    let dir = Path::new(NODE_DIR);
    let mut maps = Pinned::new(dir);
    let link_pin = dir.join(netns_link_pin(cookie));
    let had_link = link_pin.exists();
    let result = (|| -> Result<()> {
        netns_entries::write(&mut maps, cookie, settings, local)?;
        if !had_link {
            let prog = sys::obj_get(&dir.join(SKLOOKUP_PROG_PIN))
                .map_err(|e| load::kernel_error("opening the pinned sk_lookup program", e))?;
            let link = sys::link_create(prog.as_fd(), netns, attach::SK_LOOKUP)
                .map_err(|e| load::kernel_error("attaching sk_lookup to the pod's namespace", e))?;
            sys::obj_pin(link.as_fd(), &link_pin)
                .map_err(|e| load::kernel_error("pinning the pod's sk_lookup link", e))?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        if !had_link {
            let _ = fs::remove_file(&link_pin);
        }
        let _ = netns_entries::remove(&mut maps, cookie);
        return Err(e.into());
    }
    Ok(())
}

/// Removes the namespace `cookie`: its sk_lookup link and its map entries. `Ok(false)`
/// when there was nothing (unregistering twice is fine).
pub fn unregister(cookie: u64) -> Result<bool> {
    let dir = Path::new(NODE_DIR);
    if !dir.exists() {
        return Ok(false);
    }
    let link_pin = dir.join(netns_link_pin(cookie));
    let had_link = match fs::remove_file(&link_pin) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(anyhow!("unpinning {}: {e}", link_pin.display())),
    };
    let had_entries = netns_entries::remove(&mut Pinned::new(dir), cookie)?;
    Ok(had_link || had_entries)
}

/// What is missing for the namespace `cookie` (whose namespace file has inode
/// `netns_ino` and whose addresses are `local`): empty when all is in place.
pub fn check(cookie: u64, netns_ino: u64, settings: &Settings, local: &LocalAddrs) -> Vec<String> {
    let dir = Path::new(NODE_DIR);
    let mut problems = Vec::new();
    if let Err(e) = check_attached() {
        problems.push(e.to_string());
        return problems;
    }
    let link_pin = dir.join(netns_link_pin(cookie));
    match sys::obj_get(&link_pin).and_then(|l| sys::link_info(l.as_fd())) {
        Ok(info) => match info.target {
            LinkTarget::Netns(ino) if u64::from(ino) == netns_ino => {}
            other => problems.push(format!(
                "{} is attached to {other:?}, not netns inode {netns_ino}",
                link_pin.display()
            )),
        },
        Err(e) => problems.push(format!("no sk_lookup link {}: {e}", link_pin.display())),
    }
    problems.extend(netns_entries::check(
        &mut Pinned::new(dir),
        cookie,
        settings,
        local,
    ));
    problems
}

/// Every registered namespace's cookie.
pub fn registered() -> Result<Vec<u64>> {
    let dir = Path::new(NODE_DIR);
    if !dir.exists() {
        return Ok(Vec::new());
    }
    netns_entries::cookies(&mut Pinned::new(dir))
}

/// The programs' counters for namespace `cookie`.
pub fn counters(cookie: u64) -> Vec<(&'static str, u64)> {
    netns_entries::counters(&mut Pinned::new(Path::new(NODE_DIR)), cookie)
}

/// The inode of a namespace file (what sk_lookup links report as their target).
pub fn netns_inode(netns: &File) -> Result<u64> {
    Ok(netns
        .metadata()
        .context("stat of the network namespace")?
        .ino())
}

fn netns_links(dir: &Path) -> Vec<u64> {
    pin_names(dir)
        .iter()
        .filter_map(|n| n.to_str()?.strip_prefix("netns_")?.parse().ok())
        .collect()
}

fn pin_names(dir: &Path) -> Vec<std::ffi::OsString> {
    fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default()
}

/// What to take back when [`attach`] fails half way.
struct Undo {
    dir: PathBuf,
    /// The directory was made (empty) by this run.
    created_dir: bool,
    before: Vec<std::ffi::OsString>,
    created: Vec<PathBuf>,
    updated: Vec<(PathBuf, OwnedFd)>,
    /// The sk_lookup program pinned before, unpinned to make room for the new one.
    replaced_prog: Option<OwnedFd>,
}

impl Undo {
    fn rollback(&mut self) {
        for pin in self.created.drain(..) {
            let _ = fs::remove_file(&pin);
        }
        for (pin, old) in self.updated.drain(..) {
            if let Ok(link) = sys::obj_get(&pin) {
                let _ = sys::link_update(link.as_fd(), old.as_fd());
            }
        }
        if let Some(old) = self.replaced_prog.take() {
            let _ = sys::obj_pin(old.as_fd(), &self.dir.join(SKLOOKUP_PROG_PIN));
        }
        // Maps this run pinned, then the directory if this run made it.
        for name in pin_names(&self.dir) {
            if !self.before.contains(&name) {
                let _ = fs::remove_file(self.dir.join(name));
            }
        }
        if self.created_dir {
            let _ = fs::remove_dir(&self.dir);
            let _ = fs::remove_dir(PIN_ROOT);
        }
    }
}
