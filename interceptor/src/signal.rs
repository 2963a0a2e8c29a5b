//! The one signal helper: SIGINT and SIGTERM set a flag that long-running commands poll
//! (a live capture, `--debug`'s log following, the agent), and wake a command that has
//! nothing left to do but wait for one ([`wait_for_interrupt`]).

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

static STOP: AtomicBool = AtomicBool::new(false);
/// The self-pipe the handler writes a byte to: its read end, and its write end.
static WAKE_READ: AtomicI32 = AtomicI32::new(-1);
static WAKE_WRITE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
    let fd = WAKE_WRITE.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: errno is this thread's, saved and restored around write(2), which is
        // async-signal-safe; the pipe is non-blocking, and a full one is awake already.
        unsafe {
            let errno = *libc::__errno_location();
            libc::write(fd, [1u8].as_ptr().cast(), 1);
            *libc::__errno_location() = errno;
        }
    }
}

/// Installs the handlers (once is enough; again is harmless) and returns the flag they set.
pub fn stop_on_interrupt() -> Result<&'static AtomicBool, String> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    if WAKE_WRITE.load(Ordering::Relaxed) < 0 {
        let mut fds = [-1; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2(2) writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(format!(
                "creating the signal pipe: {}",
                std::io::Error::last_os_error()
            ));
        }
        WAKE_READ.store(fds[0], Ordering::Relaxed);
        WAKE_WRITE.store(fds[1], Ordering::Relaxed);
    }
    // No SA_RESTART: a blocked read or poll returns, so the loop sees the flag at once.
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to atomics and writes to a pipe, both
        // async-signal-safe.
        unsafe { sigaction(sig, &action) }
            .map_err(|e| format!("installing the {sig} handler: {e}"))?;
    }
    Ok(&STOP)
}

/// Blocks until `stop` is set: woken by the handler's byte the moment a signal comes (on
/// whichever thread it lands), without waking meanwhile. A byte written before the wait
/// began is still in the pipe, so none is missed.
pub fn wait_for_interrupt(stop: &AtomicBool) {
    let fd = WAKE_READ.load(Ordering::Relaxed);
    while !stop.load(Ordering::Relaxed) {
        if fd < 0 {
            // The handlers were not installed: nothing would write to the pipe.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd. The timeout only guards against a flag set some other
        // way than by the handler.
        unsafe { libc::poll(&mut p, 1, 1000) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_signal_wakes_the_wait_at_once() {
        let stop = stop_on_interrupt().unwrap();
        let t = std::thread::spawn(move || {
            let start = Instant::now();
            wait_for_interrupt(stop);
            start.elapsed()
        });
        std::thread::sleep(Duration::from_millis(50));
        // SAFETY: sends SIGINT to this process, whose handler is installed above.
        unsafe { libc::kill(libc::getpid(), libc::SIGINT) };
        let waited = t.join().unwrap();
        assert!(stop.load(Ordering::Relaxed));
        assert!(
            waited < Duration::from_millis(500),
            "woke after {waited:?}, not at the signal"
        );
    }
}
