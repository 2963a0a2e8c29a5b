//! `--run-validation`: proof that the installed rules really redirect, the way
//! istio-validation checks it (`tools/istio-iptables/pkg/validation`).
//!
//! Probe listeners bind 127.0.0.1 on the outbound and the inbound capture ports. A client
//! thread running with the proxy's uid/gid connects to 127.0.0.6:<probe port>: only the
//! `ISTIO_OUTPUT` rule that sends the proxy's loopback calls through the inbound side can
//! make that connection arrive on a probe listener, whose `SO_ORIGINAL_DST` must then name
//! the probe port. Nothing else listens there, so arrival proves redirection.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;

/// Exit status istio-validation uses when interception does not work.
pub const EXIT_VALIDATION_FAILED: u8 = 126;

#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    #[error("iptables validation failed: no connection to 127.0.0.6:{port} from uid {uid} reached a probe listener on 127.0.0.1:{listen} within {timeout:?}; traffic is not being redirected and the workload is not ready for the mesh")]
    NotRedirected {
        port: u16,
        uid: String,
        listen: String,
        timeout: Duration,
    },
    #[error("iptables validation could not listen on any of 127.0.0.1:{0} (something else holds the ports)")]
    NoListener(String),
    #[error("iptables validation: proxy uid/gid {0} is not numeric")]
    BadId(String),
}

/// The port a redirected connection was originally addressed to (`SO_ORIGINAL_DST`).
fn original_dst_port(s: &TcpStream) -> Option<u16> {
    const SO_ORIGINAL_DST: libc::c_int = 80;
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: addr is a properly sized, writable sockaddr_in and len holds its size.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            &mut addr as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    (rc == 0).then(|| u16::from_be(addr.sin_port))
}

/// Switches only the calling thread to `uid`/`gid` (raw syscalls; glibc's wrappers would
/// change every thread of the process).
fn become_on_this_thread(uid: u32, gid: u32) -> bool {
    // SAFETY: plain syscalls with integer arguments; -1 leaves an id unchanged.
    unsafe {
        libc::syscall(libc::SYS_setresgid, -1i64, gid as i64, -1i64) == 0
            && libc::syscall(libc::SYS_setresuid, -1i64, uid as i64, -1i64) == 0
    }
}

pub fn run(cfg: &Config) -> Result<(), ValidationError> {
    let uid_s = cfg.proxy_uids.first().cloned().unwrap_or_default();
    let gid_s = cfg
        .proxy_gids
        .first()
        .cloned()
        .unwrap_or_else(|| uid_s.clone());
    let uid: u32 = uid_s
        .parse()
        .map_err(|_| ValidationError::BadId(uid_s.clone()))?;
    let gid: u32 = gid_s
        .parse()
        .map_err(|_| ValidationError::BadId(gid_s.clone()))?;
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
    let probe_port = cfg.probe_port;
    let client = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            if !become_on_this_thread(uid, gid) {
                return;
            }
            let target = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 6), probe_port));
            while !stop.load(Ordering::Relaxed) {
                // A refused or timed-out attempt is expected until the rules take effect.
                let _ = TcpStream::connect_timeout(&target, Duration::from_millis(500));
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };

    let deadline = Instant::now() + cfg.probe_timeout;
    let mut ok = false;
    'wait: while Instant::now() < deadline {
        for l in &listeners {
            match l.accept() {
                Ok((s, _)) => {
                    if original_dst_port(&s) == Some(probe_port) {
                        ok = true;
                        break 'wait;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => {}
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = client.join();
    if ok {
        Ok(())
    } else {
        Err(ValidationError::NotRedirected {
            port: probe_port,
            uid: uid_s,
            listen: listen_desc,
            timeout: cfg.probe_timeout,
        })
    }
}
