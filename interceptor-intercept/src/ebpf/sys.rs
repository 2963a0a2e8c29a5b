//! The few `bpf(2)` commands done by hand: aya 0.14 neither updates a link in place nor
//! turns every link kind into a pinnable fd (getsockopt links stay private), and `status`
//! wants the link's target, which aya does not report. One way for all links: created,
//! pinned, reopened, updated and described here.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;

/// `enum bpf_attach_type` values used here.
pub mod attach {
    pub const CGROUP_SOCK_OPS: u32 = 3;
    pub const SK_MSG_VERDICT: u32 = 7;
    pub const CGROUP_INET4_CONNECT: u32 = 10;
    pub const CGROUP_INET6_CONNECT: u32 = 11;
    pub const CGROUP_UDP4_SENDMSG: u32 = 14;
    pub const CGROUP_UDP4_RECVMSG: u32 = 19;
    pub const CGROUP_GETSOCKOPT: u32 = 21;
    pub const SK_LOOKUP: u32 = 36;

    pub fn name(t: u32) -> &'static str {
        match t {
            CGROUP_SOCK_OPS => "sock_ops",
            SK_MSG_VERDICT => "sk_msg_verdict",
            CGROUP_INET4_CONNECT => "cgroup_inet4_connect",
            CGROUP_INET6_CONNECT => "cgroup_inet6_connect",
            CGROUP_UDP4_SENDMSG => "cgroup_udp4_sendmsg",
            CGROUP_UDP4_RECVMSG => "cgroup_udp4_recvmsg",
            CGROUP_GETSOCKOPT => "cgroup_getsockopt",
            SK_LOOKUP => "sk_lookup",
            _ => "other",
        }
    }
}

/// `enum bpf_link_type` values `status` tells apart.
const BPF_LINK_TYPE_CGROUP: u32 = 3;
const BPF_LINK_TYPE_NETNS: u32 = 5;

/// A zeroed `union bpf_attr`, large enough for every command used.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }
    fn u32_at(&mut self, off: usize, v: u32) -> &mut Attr {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64_at(&mut self, off: usize, v: u64) -> &mut Attr {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: attr is a properly sized, zero-padded bpf_attr for `cmd`; pointers inside it
    // (paths, info buffers) outlive the call.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), attr.0.len()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret)
}

/// `BPF_LINK_CREATE`: attaches `prog` to `target` (a cgroup or netns fd).
pub fn link_create(
    prog: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    a.u32_at(0, prog.as_raw_fd() as u32)
        .u32_at(4, target.as_raw_fd() as u32)
        .u32_at(8, attach_type);
    let fd = bpf(BPF_LINK_CREATE, &mut a)?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `BPF_LINK_UPDATE`: swaps the program of an existing link, atomically.
pub fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut a = Attr::new();
    a.u32_at(0, link.as_raw_fd() as u32)
        .u32_at(4, prog.as_raw_fd() as u32);
    bpf(BPF_LINK_UPDATE, &mut a).map(drop)
}

/// `BPF_PROG_ATTACH` of an sk_msg program to a sockmap/sockhash. The map holds the
/// program from then on; it is released when the map goes.
pub fn prog_attach_to_map(
    prog: BorrowedFd<'_>,
    map: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<()> {
    prog_and_map(BPF_PROG_ATTACH, prog, map, attach_type)
}

/// `BPF_PROG_DETACH` of the sk_msg program `prog` from a sockmap/sockhash (the kernel
/// wants the program attached, not any: ENOENT otherwise). Sockets already in the map keep
/// the program they got when they joined it.
pub fn prog_detach_from_map(
    prog: BorrowedFd<'_>,
    map: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<()> {
    prog_and_map(BPF_PROG_DETACH, prog, map, attach_type)
}

/// `cmd` (attach or detach) with the attributes both take: the map, the program, the type.
fn prog_and_map(
    cmd: libc::c_long,
    prog: BorrowedFd<'_>,
    map: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<()> {
    let mut a = Attr::new();
    a.u32_at(0, map.as_raw_fd() as u32)
        .u32_at(4, prog.as_raw_fd() as u32)
        .u32_at(8, attach_type);
    bpf(cmd, &mut a).map(drop)
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))
}

/// `BPF_OBJ_PIN`.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let p = c_path(path)?;
    let mut a = Attr::new();
    a.u64_at(0, p.as_ptr() as u64)
        .u32_at(8, fd.as_raw_fd() as u32);
    bpf(BPF_OBJ_PIN, &mut a).map(drop)
}

/// `BPF_OBJ_GET`: opens a pinned object.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let p = c_path(path)?;
    let mut a = Attr::new();
    a.u64_at(0, p.as_ptr() as u64);
    let fd = bpf(BPF_OBJ_GET, &mut a)?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `BPF_PROG_GET_FD_BY_ID`: a loaded program by id.
pub fn prog_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    a.u32_at(0, id);
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut a)?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Every link the kernel has (`BPF_LINK_GET_NEXT_ID`), for `status` where bpffs is not
/// visible: links are global, whatever mount namespace pinned them.
pub fn link_ids() -> io::Result<Vec<u32>> {
    let mut ids = Vec::new();
    let mut next = 0u32;
    loop {
        let mut a = Attr::new();
        a.u32_at(0, next);
        match bpf(BPF_LINK_GET_NEXT_ID, &mut a) {
            Ok(_) => {
                next = u32::from_ne_bytes([a.0[4], a.0[5], a.0[6], a.0[7]]);
                ids.push(next);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(ids),
            Err(e) => return Err(e),
        }
    }
}

/// `BPF_LINK_GET_FD_BY_ID`: a link by id.
pub fn link_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    a.u32_at(0, id);
    let fd = bpf(BPF_LINK_GET_FD_BY_ID, &mut a)?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `BPF_PROG_QUERY`: ids of the programs attached to `target` (a cgroup or a sockmap)
/// with `attach_type`.
pub fn prog_query(target: BorrowedFd<'_>, attach_type: u32) -> io::Result<Vec<u32>> {
    let mut ids = [0u32; 64];
    let mut a = Attr::new();
    a.u32_at(0, target.as_raw_fd() as u32)
        .u32_at(4, attach_type)
        .u64_at(16, ids.as_mut_ptr() as u64)
        .u32_at(24, ids.len() as u32);
    bpf(BPF_PROG_QUERY, &mut a)?;
    let count = u32::from_ne_bytes([a.0[24], a.0[25], a.0[26], a.0[27]]) as usize;
    Ok(ids[..count.min(ids.len())].to_vec())
}

/// What a link is attached to, from `BPF_OBJ_GET_INFO_BY_FD`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub id: u32,
    pub prog_id: u32,
    pub target: LinkTarget,
    pub attach_type: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkTarget {
    Cgroup(u64),
    Netns(u32),
    Other(u32),
}

pub fn link_info(link: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    // struct bpf_link_info: type, id, prog_id, then a union at offset 16.
    let mut info = [0u8; 64];
    let mut a = Attr::new();
    a.u32_at(0, link.as_raw_fd() as u32)
        .u32_at(4, info.len() as u32)
        .u64_at(8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a)?;
    let u32_at = |o: usize| u32::from_ne_bytes([info[o], info[o + 1], info[o + 2], info[o + 3]]);
    let kind = u32_at(0);
    let (target, attach_type) = match kind {
        BPF_LINK_TYPE_CGROUP => {
            let mut id = [0u8; 8];
            id.copy_from_slice(&info[16..24]);
            (LinkTarget::Cgroup(u64::from_ne_bytes(id)), u32_at(24))
        }
        BPF_LINK_TYPE_NETNS => (LinkTarget::Netns(u32_at(16)), u32_at(20)),
        other => (LinkTarget::Other(other), 0),
    };
    Ok(LinkInfo {
        id: u32_at(4),
        prog_id: u32_at(8),
        target,
        attach_type,
    })
}

/// The cookie of the current network namespace (`SO_NETNS_COOKIE`, Linux 5.14+), the
/// value `bpf_get_netns_cookie` gives the programs for sockets made here.
pub fn current_netns_cookie() -> io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: cookie and len are valid for the kernel to write.
    let ret = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_cookie_is_stable_within_a_namespace() {
        let a = current_netns_cookie().unwrap();
        assert_eq!(a, current_netns_cookie().unwrap());
        assert_ne!(a, 0);
    }

    #[test]
    fn link_enumeration_needs_no_pins() {
        // As root the ids come back (maybe none); unprivileged, EPERM says why.
        match link_ids() {
            Ok(ids) => assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}"),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}"),
        }
    }

    #[test]
    fn obj_get_of_a_missing_pin_fails() {
        assert!(obj_get(Path::new("/sys/fs/bpf/interceptor-no-such-pin")).is_err());
    }
}
