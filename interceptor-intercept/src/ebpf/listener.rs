//! The inbound capture listener when it already exists at `init` (the proxy started
//! first, or `init` runs again after `cleanup`): the sockops program only sees sockets
//! that start listening after it is attached, so `init` finds the listening socket in
//! /proc and borrows it from its owner with pidfd_getfd(2) to put it in `LISTENER`.

use std::fs;
use std::os::fd::{FromRawFd, OwnedFd};

/// Listening TCP sockets on `port` in the current network namespace, with the
/// `LISTENER` index each belongs at (0 for IPv4, 1 for IPv6).
pub fn find(port: u16) -> Vec<(u32, OwnedFd)> {
    let mut wanted = Vec::new();
    // /proc/net is the main thread's namespace; `--network-namespace` moves this thread.
    for (table, index) in [
        ("/proc/thread-self/net/tcp", 0u32),
        ("/proc/thread-self/net/tcp6", 1u32),
    ] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for inode in listening_inodes(&text, port) {
            wanted.push((inode, index));
        }
    }
    if wanted.is_empty() {
        return Vec::new();
    }
    let mut found = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return found;
    };
    for p in procs.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = fs::read_link(fd.path()) else {
                continue;
            };
            let link = link.to_string_lossy();
            let Some(inode) = link
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
            else {
                continue;
            };
            let Ok(inode) = inode.parse::<u64>() else {
                continue;
            };
            let Some(pos) = wanted.iter().position(|(i, _)| *i == inode) else {
                continue;
            };
            let Ok(target_fd) = fd.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if let Some(sock) = borrow_fd(pid, target_fd) {
                found.push((wanted[pos].1, sock));
                wanted.remove(pos);
            }
        }
        if wanted.is_empty() {
            break;
        }
    }
    found
}

/// Socket inodes of /proc/net/tcp{,6} rows in LISTEN state on `port`.
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    const TCP_LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local = f.get(1)?;
            let (_, hex_port) = local.rsplit_once(':')?;
            let p = u16::from_str_radix(hex_port, 16).ok()?;
            (p == port && *f.get(3)? == TCP_LISTEN)
                .then(|| f.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

fn borrow_fd(pid: i32, fd: i32) -> Option<OwnedFd> {
    // SAFETY: plain syscalls; each returned fd is owned right away.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        if pidfd < 0 {
            return None;
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
        let sock = libc::syscall(
            libc::SYS_pidfd_getfd,
            std::os::fd::AsRawFd::as_raw_fd(&pidfd),
            fd,
            0,
        );
        (sock >= 0).then(|| OwnedFd::from_raw_fd(sock as i32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_rows_are_picked_by_port_and_state() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:3A9E 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1337        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:3A99 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1337        0 4343 1 0000000000000000 100 0 0 10 0
   2: 0100007F:3A9E 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 4444 1 0000000000000000 20 4 30 10 -1
";
        assert_eq!(listening_inodes(table, 15006), vec![4242]);
        assert_eq!(listening_inodes(table, 15001), vec![4343]);
        assert!(listening_inodes(table, 80).is_empty());
    }

    #[test]
    fn a_listener_of_this_process_is_found() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let found = find(port);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, 0);
    }
}
