//! `--run-validation`: proof that the installed rules really redirect, in the manner of
//! istio-validation (`tools/istio-iptables/pkg/validation`).
//!
//! Probe listeners bind 127.0.0.1 on the outbound and the inbound capture ports; nothing
//! else listens there during `init`, so a connection arriving on one, with
//! `SO_ORIGINAL_DST` naming the probe port, can only have been redirected. Two probes:
//!
//! - istio's: a client thread with the proxy's uid/gid connects to 127.0.0.6:<probe port>;
//!   only the `ISTIO_OUTPUT` rule that sends the proxy's loopback calls to the inbound side
//!   can deliver it.
//! - the app's: a client thread with a uid/gid that is not the proxy's connects to a test
//!   address (192.0.2.1, TEST-NET-1, never a real host) on the probe port, which outbound
//!   capture must deliver to the outbound listener. It runs only when that address is
//!   captured by the configuration (`-i '*'`, not excluded) and routable from the pod.
//!
//! Validation fails when any probe that runs is not delivered within `--probe-timeout`.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::config::Config;

/// Exit status istio-validation uses when interception does not work.
pub const EXIT_VALIDATION_FAILED: u8 = 126;

/// Address the app-side probe connects to (RFC 5737 documentation range).
pub const TEST_ADDRESS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const PASSTHROUGH: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);

#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    #[error("iptables validation failed: {what} did not reach a probe listener on 127.0.0.1:{listen} within {timeout:?}; traffic is not being redirected and the workload is not ready for the mesh")]
    NotRedirected {
        what: String,
        listen: String,
        timeout: Duration,
    },
    #[error("iptables validation failed: could not listen on any of 127.0.0.1:{0} (something else holds the ports)")]
    NoListener(String),
    #[error("iptables validation failed: proxy uid/gid '{0}' is not numeric")]
    BadId(String),
    #[error("iptables validation failed: cannot switch to uid {0} gid {1} to probe (needs CAP_SETUID and CAP_SETGID, or run as that user)")]
    CannotSwitch(u32, u32),
}

/// Where a redirected connection was originally addressed (`SO_ORIGINAL_DST`).
fn original_dst(s: &TcpStream) -> Option<SocketAddrV4> {
    const SO_ORIGINAL_DST: libc::c_int = 80;
    // SAFETY: an all-zero sockaddr_in is a valid value.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: addr is a writable sockaddr_in and len holds its size.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            &mut addr as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    (rc == 0).then(|| {
        SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
            u16::from_be(addr.sin_port),
        )
    })
}

/// Switches only the calling thread to `uid`/`gid` (raw syscalls; glibc's wrappers would
/// change every thread of the process).
fn become_on_this_thread(uid: u32, gid: u32) -> bool {
    // SAFETY: plain syscalls with integer arguments; -1 leaves an id unchanged.
    unsafe {
        libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) == 0
            && libc::syscall(libc::SYS_setresgid, -1i64, gid as i64, -1i64) == 0
            && libc::syscall(libc::SYS_setresuid, -1i64, uid as i64, -1i64) == 0
    }
}

/// One probe: who connects where.
#[derive(Clone, Copy, Debug)]
struct Probe {
    uid: u32,
    gid: u32,
    to: SocketAddrV4,
    /// Skipped, rather than failed, when this process cannot take the probe's ids (the
    /// istio-cni validation container runs as the proxy user without capabilities).
    optional: bool,
}

impl Probe {
    fn describe(&self) -> String {
        format!(
            "a connection to {} from uid {} gid {}",
            self.to, self.uid, self.gid
        )
    }

    /// Connects repeatedly until told to stop (attempts fail until the rules act). Sets
    /// `failed` when it cannot take the probe's ids.
    fn start(self, stop: Arc<AtomicBool>, failed: Arc<AtomicBool>) -> JoinHandle<()> {
        std::thread::spawn(move || {
            let already = nix::unistd::geteuid().as_raw() == self.uid
                && nix::unistd::getegid().as_raw() == self.gid;
            if !already && !become_on_this_thread(self.uid, self.gid) {
                failed.store(true, Ordering::Relaxed);
                return;
            }
            let target = SocketAddr::V4(self.to);
            while !stop.load(Ordering::Relaxed) {
                let _ = TcpStream::connect_timeout(&target, Duration::from_millis(500));
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    }
}

/// The first id at or below 65534 that the proxy does not use.
fn non_proxy_id(proxy: &[String]) -> u32 {
    (1..=65534u32)
        .rev()
        .find(|id| !proxy.iter().any(|p| p == &id.to_string()))
        .unwrap_or(65534)
}

fn port_listed(list: &[String], port: u16) -> bool {
    list.iter().any(|item| match item.split_once(':') {
        Some((a, b)) => matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if (a..=b).contains(&port)),
        None => item.parse() == Ok(port),
    })
}

/// Whether the app-side probe applies: the test address is captured and routable.
fn app_probe(cfg: &Config) -> Option<Probe> {
    let covered = cfg.outbound_include.wildcard
        || cfg
            .outbound_include
            .v4
            .iter()
            .any(|n| n.contains(&std::net::IpAddr::V4(TEST_ADDRESS)));
    let excluded = cfg
        .outbound_exclude
        .v4
        .iter()
        .any(|n: &IpNet| n.contains(&std::net::IpAddr::V4(TEST_ADDRESS)))
        || port_listed(&cfg.outbound_ports_exclude, cfg.probe_port);
    // Our own ids when they are not the proxy's (no switch needed), else a free one.
    let pick = |own: u32, proxy: &[String]| {
        if proxy.iter().any(|p| p == &own.to_string()) {
            non_proxy_id(proxy)
        } else {
            own
        }
    };
    let uid = pick(nix::unistd::geteuid().as_raw(), &cfg.proxy_uids);
    let gid = pick(nix::unistd::getegid().as_raw(), &cfg.proxy_gids);
    let groups_captured = if cfg.owner_groups.except {
        !cfg.owner_groups
            .values
            .iter()
            .any(|g| g == &gid.to_string())
    } else {
        cfg.owner_groups
            .values
            .iter()
            .any(|g| g == &gid.to_string())
    };
    (covered && !excluded && groups_captured && routable(TEST_ADDRESS)).then_some(Probe {
        uid,
        gid,
        to: SocketAddrV4::new(TEST_ADDRESS, cfg.probe_port),
        optional: true,
    })
}

/// Whether the kernel has a route to `addr` (a UDP connect sends nothing).
fn routable(addr: Ipv4Addr) -> bool {
    std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| s.connect((addr, 9)))
        .is_ok()
}

pub fn run(cfg: &Config) -> Result<(), ValidationError> {
    let id = |list: &[String]| -> Result<u32, ValidationError> {
        let s = list.first().cloned().unwrap_or_default();
        s.parse().map_err(|_| ValidationError::BadId(s))
    };
    let mut probes = vec![Probe {
        uid: id(&cfg.proxy_uids)?,
        gid: id(&cfg.proxy_gids)?,
        to: SocketAddrV4::new(PASSTHROUGH, cfg.probe_port),
        optional: false,
    }];
    probes.extend(app_probe(cfg));

    let ports = [cfg.proxy_port, cfg.inbound_capture_port];
    let listen_desc = format!("{{{},{}}}", ports[0], ports[1]);
    let listeners: Vec<TcpListener> = ports
        .iter()
        .filter_map(|p| TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, *p)).ok())
        .collect();
    if listeners.is_empty() {
        return Err(ValidationError::NoListener(listen_desc));
    }
    for l in &listeners {
        let _ = l.set_nonblocking(true);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let failed: Vec<Arc<AtomicBool>> = probes
        .iter()
        .map(|_| Arc::new(AtomicBool::new(false)))
        .collect();
    let clients: Vec<JoinHandle<()>> = probes
        .iter()
        .zip(&failed)
        .map(|(p, f)| p.start(stop.clone(), f.clone()))
        .collect();
    let mut arrived = vec![false; probes.len()];
    let deadline = Instant::now() + cfg.probe_timeout;
    // Done when every probe has arrived or cannot run.
    let settled = |arrived: &[bool]| {
        arrived
            .iter()
            .zip(&failed)
            .all(|(a, f)| *a || f.load(Ordering::Relaxed))
    };
    let must_fail = || {
        probes
            .iter()
            .zip(&failed)
            .any(|(p, f)| !p.optional && f.load(Ordering::Relaxed))
    };
    while Instant::now() < deadline && !settled(&arrived) && !must_fail() {
        for l in &listeners {
            match l.accept() {
                Ok((s, _)) => {
                    if let Some(dst) = original_dst(&s) {
                        for (i, p) in probes.iter().enumerate() {
                            arrived[i] |= dst == p.to;
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => {}
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    if let Some((p, _)) = probes
        .iter()
        .zip(&failed)
        .find(|(_, f)| f.load(Ordering::Relaxed))
    {
        return Err(ValidationError::CannotSwitch(p.uid, p.gid));
    }
    match probes.iter().zip(&arrived).find(|(_, a)| !**a) {
        None => Ok(()),
        Some((p, _)) => Err(ValidationError::NotRedirected {
            what: p.describe(),
            listen: listen_desc,
            timeout: cfg.probe_timeout,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_proxy_ids() {
        assert_eq!(non_proxy_id(&["1337".into()]), 65534);
        assert_eq!(non_proxy_id(&["65534".into(), "65533".into()]), 65532);
    }

    #[test]
    fn port_lists_and_ranges() {
        assert!(port_listed(&["15002".into()], 15002));
        assert!(port_listed(&["15000:15010".into()], 15002));
        assert!(!port_listed(&["80".into(), "15003:15010".into()], 15002));
    }
}
