//! `--run-validation` in eBPF mode: proof that this process's connections are redirected,
//! as istio-validation proves it for iptables rules.
//!
//! A probe listener binds 127.0.0.1 on the proxy's outbound port (nothing else listens
//! there while an init container runs); a thread with an identity that is not the proxy's
//! connects to a destination the settings capture (192.0.2.1, TEST-NET-1, or the first
//! host of an `-i` CIDR) on `--iptables-probe-port`. Validation passes when that
//! connection arrives on the listener and `SO_ORIGINAL_DST` on it names the probe's
//! destination: connect4 redirected it, sockops recorded it, getsockopt answered it.
//!
//! The programs act on sockets of the intercepted cgroup only, so the probe means
//! something only from inside it (the validation container of a pod is): elsewhere the
//! validation fails saying so rather than probing a path that is not intercepted.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use super::settings::{CidrSet, Settings};
use super::target::{own_cgroup, Target};
use crate::validation;

/// Address the probe connects to when the settings capture it (RFC 5737, never a host).
pub const TEST_ADDRESS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    #[error("eBPF validation failed: a connection to {to} from uid {uid} gid {gid} did not reach the probe listener on 127.0.0.1:{port} within {timeout:?}; traffic is not being redirected and the workload is not ready for the mesh")]
    NotRedirected {
        to: SocketAddrV4,
        uid: u32,
        gid: u32,
        port: u16,
        timeout: Duration,
    },
    #[error("eBPF validation failed: a connection to {to} reached 127.0.0.1:{port} but SO_ORIGINAL_DST on it gave {got}; the original destination is not being recorded")]
    WrongOriginalDst {
        to: SocketAddrV4,
        port: u16,
        got: String,
    },
    #[error("eBPF validation failed: cannot listen on 127.0.0.1:{port} (-p/--envoy-port) for the probe: {error}")]
    NoListener { port: u16, error: String },
    #[error("eBPF validation failed: this process's cgroup {own} is not --cgroup {target} or below it, so its connections are not intercepted and cannot probe; run the validation in the pod's cgroup, or drop --run-validation")]
    OutsideCgroup { own: PathBuf, target: PathBuf },
    #[error("eBPF validation failed: no destination on --iptables-probe-port {port} is redirected by -i/-x/-q/-o, so there is nothing to probe")]
    NothingToProbe { port: u16 },
    #[error("eBPF validation failed: cannot switch to uid {0} gid {1} to probe as a process that is not the proxy (needs CAP_SETUID and CAP_SETGID, or run as another user than -u/-g)")]
    CannotSwitch(u32, u32),
    #[error("eBPF validation failed: {0}")]
    Setup(String),
}

/// Probes `settings`' outbound redirection from this process, on `probe_port`, for at
/// most `timeout`.
pub fn run(
    target: &Target,
    settings: &Settings,
    probe_port: u16,
    timeout: Duration,
) -> Result<(), ValidationError> {
    // `--cgroup pod` found this process's cgroup in the same tree as the target's; its
    // own view (a private cgroup namespace's "/") would not lie under it.
    let own = match &target.caller {
        Some(caller) => caller.clone(),
        None => own_cgroup().map_err(|e| ValidationError::Setup(format!("{e:#}")))?,
    };
    if !within(&own, &target.cgroup) {
        return Err(ValidationError::OutsideCgroup {
            own,
            target: target.cgroup.clone(),
        });
    }
    let to = probe_destination(settings, probe_port)
        .ok_or(ValidationError::NothingToProbe { port: probe_port })?;
    let port = settings.proxy_port;
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
        .and_then(|l| l.set_nonblocking(true).map(|_| l))
        .map_err(|e| ValidationError::NoListener {
            port,
            error: e.to_string(),
        })?;
    let (uid, gid) = probe_ids(settings);

    let stop = Arc::new(AtomicBool::new(false));
    let switched = Arc::new(AtomicBool::new(true));
    let client = {
        let (stop, switched) = (stop.clone(), switched.clone());
        std::thread::spawn(move || {
            if !become_on_this_thread(uid, gid) {
                switched.store(false, Ordering::Relaxed);
                return;
            }
            // Connections stay open until the end, so the listener can read them.
            let mut open = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(s) =
                    TcpStream::connect_timeout(&SocketAddr::V4(to), Duration::from_millis(500))
                {
                    open.push(s);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let deadline = Instant::now() + timeout;
    let mut result = Err(ValidationError::NotRedirected {
        to,
        uid,
        gid,
        port,
        timeout,
    });
    while Instant::now() < deadline && switched.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((s, _)) => {
                result = match validation::original_dst(&s) {
                    Some(d) if d == to => Ok(()),
                    got => Err(ValidationError::WrongOriginalDst {
                        to,
                        port,
                        got: got.map_or_else(|| "an error".to_string(), |d| d.to_string()),
                    }),
                };
                break;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = client.join();
    if !switched.load(Ordering::Relaxed) {
        return Err(ValidationError::CannotSwitch(uid, gid));
    }
    result
}

/// Whether `cgroup` is `ancestor` or below it (programs attached to a cgroup act on its
/// descendants too).
fn within(cgroup: &std::path::Path, ancestor: &std::path::Path) -> bool {
    let canon = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    canon(cgroup).starts_with(canon(ancestor))
}

/// A destination the settings redirect on `port`: the test address, else the first host
/// of an included CIDR; `None` when `-o` spares the port or nothing fits.
pub fn probe_destination(s: &Settings, port: u16) -> Option<SocketAddrV4> {
    if s.outbound_exclude_ports.contains(&port) {
        return None;
    }
    let excluded = |a: Ipv4Addr| {
        s.outbound_exclude_cidrs
            .iter()
            .any(|n| n.contains(&IpAddr::V4(a)))
    };
    let port_included = s.outbound_ports.contains(&port);
    let mut candidates = vec![TEST_ADDRESS];
    if let CidrSet::List(nets) = &s.outbound_cidrs {
        candidates.extend(nets.iter().filter_map(|n| match n {
            IpNet::V4(n) if n.prefix_len() < 32 => n.hosts().next(),
            IpNet::V4(n) => Some(n.addr()),
            IpNet::V6(_) => None,
        }));
    }
    let included = |a: Ipv4Addr| match &s.outbound_cidrs {
        CidrSet::All => true,
        CidrSet::List(nets) => nets.iter().any(|n| n.contains(&IpAddr::V4(a))),
    };
    candidates
        .into_iter()
        .find(|a| !a.is_loopback() && !excluded(*a) && (port_included || included(*a)))
        .map(|a| SocketAddrV4::new(a, port))
}

/// Real ids for the probe thread: this process's when they are not the proxy's (the
/// programs compare the real uid and gid), else the highest ids the proxy does not use.
fn probe_ids(s: &Settings) -> (u32, u32) {
    let free = |taken: &[u32]| {
        (1..=65534u32)
            .rev()
            .find(|id| !taken.contains(id))
            .unwrap_or(65534)
    };
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    (
        if s.proxy_uids.contains(&uid) {
            free(&s.proxy_uids)
        } else {
            uid
        },
        if s.proxy_gids.contains(&gid) {
            free(&s.proxy_gids)
        } else {
            gid
        },
    )
}

/// Takes `uid`/`gid` as real and effective ids on the calling thread only (raw syscalls:
/// glibc's wrappers would change every thread). A no-op when they are already ours.
fn become_on_this_thread(uid: u32, gid: u32) -> bool {
    if nix::unistd::getuid().as_raw() == uid && nix::unistd::getgid().as_raw() == gid {
        return true;
    }
    // SAFETY: plain syscalls with integer arguments; -1 leaves an id unchanged.
    unsafe {
        libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) == 0
            && libc::syscall(libc::SYS_setresgid, gid as i64, gid as i64, -1i64) == 0
            && libc::syscall(libc::SYS_setresuid, uid as i64, uid as i64, -1i64) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_goes_where_the_settings_redirect() {
        let all = Settings::default();
        assert_eq!(
            probe_destination(&all, 15002),
            Some(SocketAddrV4::new(TEST_ADDRESS, 15002))
        );
        // -o spares the probe port: nothing to probe.
        let o = Settings {
            outbound_exclude_ports: vec![15002],
            ..Settings::default()
        };
        assert_eq!(probe_destination(&o, 15002), None);
        // -i lists CIDRs: the first host of one.
        let i = Settings {
            outbound_cidrs: CidrSet::List(vec!["10.96.0.0/12".parse().unwrap()]),
            ..Settings::default()
        };
        assert_eq!(
            probe_destination(&i, 15002),
            Some("10.96.0.1:15002".parse().unwrap())
        );
        // -x takes the test address away; -q brings a port back whatever the CIDR.
        let x = Settings {
            outbound_exclude_cidrs: vec!["192.0.2.0/24".parse().unwrap()],
            ..Settings::default()
        };
        assert_eq!(probe_destination(&x, 15002), None);
        let q = Settings {
            outbound_cidrs: CidrSet::List(Vec::new()),
            outbound_ports: vec![15002],
            ..Settings::default()
        };
        assert_eq!(
            probe_destination(&q, 15002),
            Some(SocketAddrV4::new(TEST_ADDRESS, 15002))
        );
    }

    #[test]
    fn the_probe_never_runs_as_the_proxy() {
        let s = Settings {
            proxy_uids: vec![nix::unistd::getuid().as_raw(), 65534],
            proxy_gids: vec![nix::unistd::getgid().as_raw()],
            ..Settings::default()
        };
        let (uid, gid) = probe_ids(&s);
        assert!(!s.proxy_uids.contains(&uid) && !s.proxy_gids.contains(&gid));
        assert_eq!(uid, 65533);
    }

    #[test]
    fn cgroups_below_the_target_count_as_within() {
        use std::path::Path;
        assert!(within(
            Path::new("/sys/fs/cgroup/pod/ctr"),
            Path::new("/sys/fs/cgroup/pod")
        ));
        assert!(within(
            Path::new("/sys/fs/cgroup/pod"),
            Path::new("/sys/fs/cgroup/pod")
        ));
        assert!(!within(
            Path::new("/sys/fs/cgroup/pod2"),
            Path::new("/sys/fs/cgroup/pod")
        ));
    }
}
