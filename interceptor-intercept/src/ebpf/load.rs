//! `init --mode ebpf`: load, attach, pin, configure, with everything undone on failure.
//!
//! Order matters. Maps are created (or reopened from their pins) with the programs; a
//! fresh `SETTINGS` entry is all zero, which the programs read as "disabled", so the links
//! can be attached before any setting is written. Links are created and pinned, or, when a
//! pin exists from an earlier `init`, updated in place to the new program. The settings go
//! in last; the `SETTINGS` entry, which enables interception, is the very last write.
//!
//! The socket fast path is the sk_msg program on the `SOCKETS` sockhash plus the sockets
//! sockops puts there. With it off (`--no-socket-fast-path`) sk_msg is neither loaded nor
//! attached (one an earlier `init` attached is taken off the sockhash) and the settings'
//! `FLAG_NO_SOCKET_FAST_PATH` keeps sockops from pairing sockets; sockops itself stays
//! attached, as it also hands the original destination to `getsockopt` and records the
//! inbound capture listener.

use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{MapData, SockHash};
use aya::programs::Program;
use aya::{Ebpf, EbpfLoader};
use interceptor_common::{map, program, ListenerKey, NetnsTuple};

use super::listener;
use super::sys::{self, attach};
use super::target::{ensure_bpffs, Target};
use super::{netns_entries, object, Settings, USE_IPTABLES};

/// Programs attached to the cgroup, with their attach types.
pub const CGROUP_PROGRAMS: [(&str, u32); 6] = [
    (program::CONNECT4, attach::CGROUP_INET4_CONNECT),
    (program::CONNECT6, attach::CGROUP_INET6_CONNECT),
    (program::SENDMSG4, attach::CGROUP_UDP4_SENDMSG),
    (program::RECVMSG4, attach::CGROUP_UDP4_RECVMSG),
    (program::GETSOCKOPT, attach::CGROUP_GETSOCKOPT),
    (program::SOCKOPS, attach::CGROUP_SOCK_OPS),
];

/// Pin file of a program's link inside the pin directory.
pub fn link_pin_name(program: &str) -> String {
    format!("link_{program}")
}

/// What `init` did to each link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkChange {
    Created,
    Updated,
}

/// What `init` did to the sk_msg program on the `SOCKETS` sockhash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkMsgChange {
    /// Fast path on: attached (replacing an earlier `init`'s).
    Attached,
    /// Fast path off: an earlier `init`'s was taken off.
    Detached,
    /// Fast path off, and none was attached.
    NotAttached,
    /// Fast path off, but this kernel cannot say which program the sockhash holds
    /// (`BPF_PROG_QUERY` on sockmaps needs Linux 5.19), so an earlier `init`'s may still be
    /// there; no socket is paired, so it passes nothing.
    Unknown,
}

pub struct Loaded {
    pub target: Target,
    pub pin_dir: PathBuf,
    pub links: Vec<(String, LinkChange)>,
    pub skmsg: SkMsgChange,
    /// The loaded object, kept for following its debug logs.
    pub ebpf: Ebpf,
}

/// Loads and attaches everything for `target` with `settings`; `debug` turns on the
/// programs' aya-log output.
pub fn init(target: &Target, settings: &Settings, debug: bool) -> Result<Loaded> {
    settings.validate()?;
    check_privileges()?;
    ensure_bpffs()?;
    let pin_dir = target.pin_dir();
    let fresh = !pin_dir.exists();
    fs::create_dir_all(&pin_dir).with_context(|| format!("creating {}", pin_dir.display()))?;

    let mut undo = Undo {
        before: pin_names(&pin_dir),
        pin_dir: pin_dir.clone(),
        fresh,
        created: Vec::new(),
        updated: Vec::new(),
        skmsg_before: None,
    };
    match load_and_attach(target, settings, debug, &pin_dir, &mut undo) {
        Ok(loaded) => Ok(loaded),
        Err(e) => {
            undo.rollback();
            Err(e)
        }
    }
}

fn load_and_attach(
    target: &Target,
    settings: &Settings,
    debug: bool,
    pin_dir: &Path,
    undo: &mut Undo,
) -> Result<Loaded> {
    let level: u8 = if debug {
        aya_log::Level::Debug as u8
    } else {
        0
    };
    let object = object::object()?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .override_global(aya_log::LEVEL, &level, true)
        .load(object)
        .map_err(|e| anyhow!("loading the eBPF object failed: {e}; {USE_IPTABLES}"))?;

    // Without the fast path sk_msg is not even loaded: nothing could run it.
    let skmsg = settings.socket_fast_path.then_some(program::SKMSG);
    for name in CGROUP_PROGRAMS
        .iter()
        .map(|(n, _)| *n)
        .chain([program::SKLOOKUP])
        .chain(skmsg)
    {
        load_program(&mut ebpf, name)?;
    }

    // sk_msg is held by the sockhash (pinned with the maps), not by a link: attaching
    // replaces an earlier `init`'s, and with the fast path off that one is taken off. Done
    // before the links, so that a link failing below puts the sockhash's program back too.
    let skmsg_change = set_skmsg(&ebpf, settings.socket_fast_path, undo)?;

    let mut links = Vec::new();
    let cgroup = File::open(&target.cgroup)
        .with_context(|| format!("opening {}", target.cgroup.display()))?;
    for (name, attach_type) in CGROUP_PROGRAMS {
        let change = link(&ebpf, name, cgroup.as_fd(), attach_type, pin_dir, undo)?;
        links.push((name.to_string(), change));
    }
    // The calling thread's namespace: `--network-namespace` moves this thread only.
    let netns =
        File::open("/proc/thread-self/ns/net").context("opening /proc/thread-self/ns/net")?;
    let change = link(
        &ebpf,
        program::SKLOOKUP,
        netns.as_fd(),
        attach::SK_LOOKUP,
        pin_dir,
        undo,
    )?;
    links.push((program::SKLOOKUP.to_string(), change));

    record_existing_listener(
        &mut ebpf,
        target.netns_cookie,
        settings.inbound_capture_port,
    )?;
    write_settings(&mut ebpf, target, settings)?;
    Ok(Loaded {
        target: target.clone(),
        pin_dir: pin_dir.to_path_buf(),
        links,
        skmsg: skmsg_change,
        ebpf,
    })
}

/// Attaches the loaded sk_msg program to the `SOCKETS` sockhash (`on`), or takes off the
/// one an earlier `init` attached (`!on`), keeping what the sockhash held for a rollback.
fn set_skmsg(ebpf: &Ebpf, on: bool, undo: &mut Undo) -> Result<SkMsgChange> {
    let sockets: SockHash<&MapData, NetnsTuple> = SockHash::try_from(map_ref(ebpf, map::SOCKETS)?)?;
    let map_fd = sockets.fd().as_fd();
    // The program the sockhash holds now (an earlier `init`'s), opened so that it can be
    // detached, or put back on failure; `None` when the kernel cannot say.
    let before = sys::prog_query(map_fd, attach::SK_MSG_VERDICT)
        .ok()
        .map(|ids| {
            ids.into_iter()
                .map(sys::prog_fd_by_id)
                .collect::<io::Result<Vec<OwnedFd>>>()
                .map_err(|e| kernel_error("opening the sockhash's sk_msg program", e))
        })
        .transpose()?;
    if on {
        let prog = prog_fd(ebpf, program::SKMSG)?;
        // Recorded first: a failed attach may still have replaced the program.
        undo.skmsg_before = before.map(|mut b| b.pop());
        sys::prog_attach_to_map(prog, map_fd, attach::SK_MSG_VERDICT)
            .map_err(|e| kernel_error("attaching sk_msg to the sockhash", e))?;
        return Ok(SkMsgChange::Attached);
    }
    let Some(before) = before else {
        // A sockhash this run created holds nothing; an earlier `init`'s may hold its sk_msg.
        let earlier = undo.before.iter().any(|n| n == map::SOCKETS);
        return Ok(if earlier {
            SkMsgChange::Unknown
        } else {
            SkMsgChange::NotAttached
        });
    };
    let change = if before.is_empty() {
        SkMsgChange::NotAttached
    } else {
        SkMsgChange::Detached
    };
    let keep = before
        .first()
        .map(OwnedFd::try_clone)
        .transpose()
        .context("holding the sockhash's sk_msg program")?;
    undo.skmsg_before = Some(keep);
    for old in &before {
        sys::prog_detach_from_map(old.as_fd(), map_fd, attach::SK_MSG_VERDICT)
            .map_err(|e| kernel_error("detaching sk_msg from the sockhash", e))?;
    }
    Ok(change)
}

/// Makes the sockhash `map` hold `prog` as its sk_msg program, or none.
fn restore_skmsg(map: BorrowedFd<'_>, prog: Option<BorrowedFd<'_>>) -> io::Result<()> {
    match prog {
        Some(p) => sys::prog_attach_to_map(p, map, attach::SK_MSG_VERDICT),
        None => {
            for id in sys::prog_query(map, attach::SK_MSG_VERDICT)? {
                let p = sys::prog_fd_by_id(id)?;
                sys::prog_detach_from_map(p.as_fd(), map, attach::SK_MSG_VERDICT)?;
            }
            Ok(())
        }
    }
}

/// Puts an inbound capture listener that already exists into `LISTENER`.
fn record_existing_listener(ebpf: &mut Ebpf, netns_cookie: u64, port: u16) -> Result<()> {
    let found = listener::find(port);
    if found.is_empty() {
        return Ok(());
    }
    let mut map: SockHash<&mut MapData, ListenerKey> =
        SockHash::try_from(map_mut(ebpf, map::LISTENER)?)?;
    for (index, sock) in found {
        let key = ListenerKey {
            netns_cookie,
            index,
            _pad: 0,
        };
        map.insert(key, sock.as_raw_fd(), 0)
            .context("recording the inbound capture listener")?;
    }
    Ok(())
}

pub(super) fn load_program(ebpf: &mut Ebpf, name: &str) -> Result<()> {
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?;
    let r = match prog {
        Program::CgroupSockAddr(p) => p.load(),
        Program::CgroupSockopt(p) => p.load(),
        Program::SockOps(p) => p.load(),
        Program::SkMsg(p) => p.load(),
        Program::SkLookup(p) => p.load(),
        other => bail!("program {name} has unexpected type {:?}", other.prog_type()),
    };
    r.map_err(|e| {
        // The verifier log is the useful part of a load error; aya puts it in the source chain.
        let mut msg = format!("the kernel refused program {name}: {e}");
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(&format!(": {s}"));
            src = s.source();
        }
        anyhow!("{msg}\n(the kernel may lack this program type or helper); {USE_IPTABLES}")
    })
}

pub(super) fn prog_fd<'a>(ebpf: &'a Ebpf, name: &str) -> Result<BorrowedFd<'a>> {
    let prog = ebpf
        .program(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?;
    Ok(prog.fd()?.as_fd())
}

fn map_ref<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a aya::maps::Map> {
    ebpf.map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
}

/// Attaches `name` to `target` as a pinned link, or points the already pinned link at the
/// newly loaded program.
fn link(
    ebpf: &Ebpf,
    name: &str,
    target: BorrowedFd<'_>,
    attach_type: u32,
    pin_dir: &Path,
    undo: &mut Undo,
) -> Result<LinkChange> {
    let prog = prog_fd(ebpf, name)?;
    let pin = pin_dir.join(link_pin_name(name));
    match sys::obj_get(&pin) {
        Ok(existing) => {
            // Hold the program the link has, so a failure later can put it back.
            let before = sys::link_info(existing.as_fd())
                .map_err(|e| kernel_error("reading a pinned link", e))?;
            let old = sys::prog_fd_by_id(before.prog_id)
                .map_err(|e| kernel_error("opening a pinned link's program", e))?;
            sys::link_update(existing.as_fd(), prog)
                .map_err(|e| kernel_error(&format!("updating link {name}"), e))?;
            undo.updated.push((pin, old));
            Ok(LinkChange::Updated)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let link = sys::link_create(prog, target, attach_type)
                .map_err(|e| kernel_error(&format!("attaching {name}"), e))?;
            sys::obj_pin(link.as_fd(), &pin)
                .map_err(|e| kernel_error(&format!("pinning link {name}"), e))?;
            undo.created.push(pin);
            Ok(LinkChange::Created)
        }
        Err(e) => Err(kernel_error(
            &format!("opening pinned link {}", pin.display()),
            e,
        )),
    }
}

fn write_settings(ebpf: &mut Ebpf, target: &Target, settings: &Settings) -> Result<()> {
    // The maps are keyed by namespace (see `netns_entries`); this instance serves one.
    let local = netns_entries::LocalAddrs::current()?;
    netns_entries::write(ebpf, target.netns_cookie, settings, &local)
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
}

pub(super) fn kernel_error(what: &str, e: io::Error) -> anyhow::Error {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => anyhow!(
            "{what}: permission denied ({e}); eBPF mode needs root or CAP_BPF and CAP_NET_ADMIN; {USE_IPTABLES}"
        ),
        Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) | Some(ENOTSUPP) => {
            anyhow!("{what}: the kernel does not support it ({e}); {USE_IPTABLES}")
        }
        _ => anyhow!("{what}: {e}"),
    }
}

/// Capabilities this needs, checked up front so a non-root run fails before loading.
pub(super) fn check_privileges() -> Result<()> {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_BPF: u32 = 39;
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| anyhow!("cannot read CapEff from /proc/self/status"))?;
    let has = |c: u32| eff & (1u64 << c) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !missing.is_empty() {
        bail!(
            "eBPF mode needs {} (run as root, or grant them to the init container); {USE_IPTABLES}",
            missing.join(" and ")
        );
    }
    Ok(())
}

/// What to take back when `init` fails half way.
struct Undo {
    pin_dir: PathBuf,
    fresh: bool,
    /// Pins that were there before this run; every other one is this run's.
    before: Vec<std::ffi::OsString>,
    /// Link pins made by this run: removing them detaches the links.
    created: Vec<PathBuf>,
    /// Pinned links pointed at a new program, with the program they had.
    updated: Vec<(PathBuf, OwnedFd)>,
    /// Set once this run may have changed the `SOCKETS` sockhash's sk_msg program: the
    /// program it held before (`None`: none).
    skmsg_before: Option<Option<OwnedFd>>,
}

impl Undo {
    fn rollback(&mut self) {
        for pin in self.created.drain(..) {
            let _ = fs::remove_file(&pin);
        }
        for (pin, old_prog) in self.updated.drain(..) {
            if let Ok(link) = sys::obj_get(&pin) {
                let _ = sys::link_update(link.as_fd(), old_prog.as_fd());
            }
        }
        // The sockhash of an earlier `init` gets its sk_msg program back; one this run
        // pinned goes below, and the program with it.
        if let Some(prev) = self.skmsg_before.take() {
            if self.before.iter().any(|n| n == map::SOCKETS) {
                if let Ok(m) = sys::obj_get(&self.pin_dir.join(map::SOCKETS)) {
                    let _ = restore_skmsg(m.as_fd(), prev.as_ref().map(|p| p.as_fd()));
                }
            }
        }
        // Maps this run pinned, then the directory if this run made it.
        for name in pin_names(&self.pin_dir) {
            if !self.before.contains(&name) {
                let _ = fs::remove_file(self.pin_dir.join(name));
            }
        }
        if self.fresh {
            let _ = fs::remove_dir(&self.pin_dir);
        }
    }
}

/// The kernel's internal "not supported" errno, which bpf(2) can leak to userspace.
const ENOTSUPP: i32 = 524;

fn pin_names(dir: &Path) -> Vec<std::ffi::OsString> {
    fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default()
}
