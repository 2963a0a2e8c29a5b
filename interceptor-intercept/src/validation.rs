//! `--run-validation`: proof that the installed rules really redirect, in the manner of
//! istio-validation (`tools/istio-iptables/pkg/validation/validator.go`).
//!
//! Probe listeners bind 127.0.0.1 on the outbound and the inbound capture ports; nothing
//! else listens there before the sidecar starts, so a connection arriving on one, with
//! `SO_ORIGINAL_DST` naming the probe port, can only have been redirected. Two probes:
//!
//! - istio's: a client with the proxy's uid/gid connects from 127.0.0.1 to
//!   127.0.0.6:<probe port>; only the `ISTIO_OUTPUT` rule that sends the proxy's loopback
//!   calls to the inbound side (`-o lo ! -d 127.0.0.1/32 -m owner --uid-owner 1337 -j
//!   ISTIO_IN_REDIRECT`) can deliver it. This is all istio's validator checks, and it needs
//!   no privilege: istio-cni's istio-validation container runs it as uid/gid 1337 with no
//!   capability and a read-only root filesystem. When this process is not the proxy and
//!   can switch (CAP_SETUID and CAP_SETGID), the client thread takes the proxy's ids;
//!   otherwise it connects with its own, as istio's does.
//! - the app's: a client with a uid/gid that is not the proxy's connects to a test address
//!   (192.0.2.1, TEST-NET-1, never a real host) on the probe port, which outbound capture
//!   must deliver to the outbound listener. It runs only when this process has such ids
//!   or can take them, and when that address is captured by the configuration (`-i '*'`,
//!   not excluded) and routable from the pod.
//!
//! Validation fails when a probe that runs is not delivered within `--probe-timeout`.
//! Nothing is written anywhere.

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
pub(crate) const EXIT_VALIDATION_FAILED: u8 = 126;

/// Address the app-side probe connects to (RFC 5737 documentation range).
pub(crate) const TEST_ADDRESS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
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
    #[error("iptables validation failed: the probe client thread for {0} could not take its ids")]
    CannotSwitch(String),
}

/// Where a redirected connection was originally addressed (`SO_ORIGINAL_DST`); the eBPF
/// mode's probe reads it the same way (its getsockopt program answers it).
pub(crate) fn original_dst(s: &TcpStream) -> Option<SocketAddrV4> {
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

/// Whether this process may take other uids/gids (CAP_SETUID and CAP_SETGID effective).
fn can_switch_ids() -> bool {
    const CAP_SETGID: u32 = 6;
    const CAP_SETUID: u32 = 7;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SETUID) != 0 && caps & (1 << CAP_SETGID) != 0)
}

/// This process's effective ids.
fn own_ids() -> (u32, u32) {
    (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    )
}

/// One probe: who connects where.
#[derive(Clone, Copy, Debug)]
struct Probe {
    uid: u32,
    gid: u32,
    /// Whether the client thread must take `uid`/`gid` (they are not the process's own).
    switch: bool,
    /// The local address to connect from (istio binds 127.0.0.1 for its probe).
    from: Option<Ipv4Addr>,
    to: SocketAddrV4,
}

impl Probe {
    fn describe(&self) -> String {
        let from = self.from.map(|a| format!(" from {a}")).unwrap_or_default();
        format!(
            "a connection{from} to {} by uid {} gid {}",
            self.to, self.uid, self.gid
        )
    }

    /// Connects repeatedly until told to stop (attempts fail until the rules act). Sets
    /// `failed` when it cannot take the probe's ids.
    fn start(self, stop: Arc<AtomicBool>, failed: Arc<AtomicBool>) -> JoinHandle<()> {
        std::thread::spawn(move || {
            if self.switch && !become_on_this_thread(self.uid, self.gid) {
                failed.store(true, Ordering::Relaxed);
                return;
            }
            while !stop.load(Ordering::Relaxed) {
                let _ = self.connect();
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    }

    fn connect(&self) -> std::io::Result<()> {
        use nix::sys::socket::{
            bind, connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType,
            SockaddrIn,
        };
        use nix::sys::time::{TimeVal, TimeValLike};
        let Some(from) = self.from else {
            return TcpStream::connect_timeout(
                &SocketAddr::V4(self.to),
                Duration::from_millis(500),
            )
            .map(drop);
        };
        // std has no bind-before-connect. The send timeout bounds the connect too, should
        // a rule drop the SYN, so the thread notices `stop` soon.
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        setsockopt(&fd, sockopt::SendTimeout, &TimeVal::milliseconds(500))?;
        bind(
            fd.as_raw_fd(),
            &SockaddrIn::from(SocketAddrV4::new(from, 0)),
        )?;
        connect(fd.as_raw_fd(), &SockaddrIn::from(self.to))?;
        Ok(())
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

/// istio's probe: from the proxy's ids when this process has or can take them, else from
/// its own (as istio's validator, which never switches).
fn proxy_probe(cfg: &Config, own: (u32, u32), can_switch: bool) -> Result<Probe, ValidationError> {
    let id = |list: &[String]| -> Result<u32, ValidationError> {
        let s = list.first().cloned().unwrap_or_default();
        s.parse().map_err(|_| ValidationError::BadId(s))
    };
    let proxy = (id(&cfg.proxy_uids)?, id(&cfg.proxy_gids)?);
    let (uid, gid) = if own == proxy || !can_switch {
        own
    } else {
        proxy
    };
    if (uid, gid) != proxy {
        tracing::warn!(
            "running as uid {uid} gid {gid}, not the proxy's {} {}, without CAP_SETUID/CAP_SETGID: the probe will not be redirected unless these ids are captured as the proxy's",
            proxy.0,
            proxy.1
        );
    }
    Ok(Probe {
        uid,
        gid,
        switch: (uid, gid) != own,
        from: Some(Ipv4Addr::LOCALHOST),
        to: SocketAddrV4::new(PASSTHROUGH, cfg.probe_port),
    })
}

/// The app-side probe, when it applies: the test address is captured and routable, and
/// this process has, or can take, ids that are not the proxy's.
fn app_probe(cfg: &Config, own: (u32, u32), can_switch: bool) -> Option<Probe> {
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
    let is_proxy = |id: u32, proxy: &[String]| proxy.iter().any(|p| p == &id.to_string());
    let own_is_app = !is_proxy(own.0, &cfg.proxy_uids) && !is_proxy(own.1, &cfg.proxy_gids);
    // Our own ids when they are not the proxy's (no switch needed), else free ones.
    let (uid, gid) = if own_is_app {
        own
    } else if can_switch {
        (non_proxy_id(&cfg.proxy_uids), non_proxy_id(&cfg.proxy_gids))
    } else {
        tracing::info!(
            "running as the proxy's ids without CAP_SETUID/CAP_SETGID: only istio's probe runs, not the app-side one"
        );
        return None;
    };
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
        switch: (uid, gid) != own,
        from: None,
        to: SocketAddrV4::new(TEST_ADDRESS, cfg.probe_port),
    })
}

/// Whether the kernel has a route to `addr` (a UDP connect sends nothing).
fn routable(addr: Ipv4Addr) -> bool {
    std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| s.connect((addr, 9)))
        .is_ok()
}

pub fn run(cfg: &Config) -> Result<(), ValidationError> {
    tracing::info!("Starting iptables validation. This check verifies that iptables rules are properly established for the network.");
    let own = own_ids();
    let can_switch = can_switch_ids();
    let mut probes = vec![proxy_probe(cfg, own, can_switch)?];
    probes.extend(app_probe(cfg, own, can_switch));

    let ports = [cfg.proxy_port, cfg.inbound_capture_port];
    let listen_desc = format!("{{{},{}}}", ports[0], ports[1]);
    let listeners: Vec<(u16, TcpListener)> = ports
        .iter()
        .filter_map(|p| {
            let l = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, *p));
            if let Err(e) = &l {
                tracing::warn!("cannot listen on 127.0.0.1:{p}: {e}");
            }
            l.ok().map(|l| (*p, l))
        })
        .collect();
    if listeners.is_empty() {
        return Err(ValidationError::NoListener(listen_desc));
    }
    for (p, l) in &listeners {
        tracing::info!("Listening on 127.0.0.1:{p}");
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
    let any_failed = || failed.iter().any(|f| f.load(Ordering::Relaxed));
    while Instant::now() < deadline && !arrived.iter().all(|a| *a) && !any_failed() {
        for (port, l) in &listeners {
            match l.accept() {
                Ok((s, _)) => {
                    if let Some(dst) = original_dst(&s) {
                        for (i, p) in probes.iter().enumerate() {
                            if dst == p.to && !arrived[i] {
                                tracing::info!("{} reached 127.0.0.1:{port}", p.describe());
                                arrived[i] = true;
                            }
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
        return Err(ValidationError::CannotSwitch(p.describe()));
    }
    match probes.iter().zip(&arrived).find(|(_, a)| !**a) {
        None => {
            tracing::info!("Validation passed, iptables rules established");
            Ok(())
        }
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

    fn cfg(argv: &[&str]) -> Config {
        crate::config::config_from_flags(argv, &crate::config::IstioEnv::default()).unwrap()
    }

    #[test]
    fn the_proxy_probe_needs_no_privilege() {
        let c = cfg(&[]);
        // istio-validation: uid/gid 1337, no capability: no switch, from 127.0.0.1.
        let p = proxy_probe(&c, (1337, 1337), false).unwrap();
        assert_eq!((p.uid, p.gid, p.switch), (1337, 1337, false));
        assert_eq!(p.from, Some(Ipv4Addr::LOCALHOST));
        assert_eq!(p.to, SocketAddrV4::new(PASSTHROUGH, 15002));
        // Root in istio-init: takes the proxy's ids on the probe thread.
        let p = proxy_probe(&c, (0, 0), true).unwrap();
        assert_eq!((p.uid, p.gid, p.switch), (1337, 1337, true));
        // Someone else without capabilities: probes as itself, as istio's validator does.
        let p = proxy_probe(&c, (1000, 1000), false).unwrap();
        assert_eq!((p.uid, p.gid, p.switch), (1000, 1000, false));
        assert!(matches!(
            proxy_probe(&cfg(&["-u", "root"]), (0, 0), true),
            Ok(Probe { uid: 0, .. })
        ));
    }

    #[test]
    fn the_app_probe_runs_only_with_non_proxy_ids_at_hand() {
        let c = cfg(&[]);
        // The proxy's ids and no capability: no app probe at all (routable or not).
        assert!(app_probe(&c, (1337, 1337), false).is_none());
        if routable(TEST_ADDRESS) {
            let p = app_probe(&c, (1337, 1337), true).unwrap();
            assert_eq!((p.uid, p.gid, p.switch), (65534, 65534, true));
            let p = app_probe(&c, (0, 0), false).unwrap();
            assert_eq!((p.uid, p.gid, p.switch), (0, 0, false));
            assert!(app_probe(&cfg(&["-x", "192.0.2.0/24"]), (0, 0), true).is_none());
        }
    }

    #[test]
    fn port_lists_and_ranges() {
        assert!(port_listed(&["15002".into()], 15002));
        assert!(port_listed(&["15000:15010".into()], 15002));
        assert!(!port_listed(&["80".into(), "15003:15010".into()], 15002));
    }
}
