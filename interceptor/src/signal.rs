//! The one signal helper: SIGINT and SIGTERM set a flag that long-running commands poll
//! (a live capture, `--debug`'s log following, the agent).

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Installs the handlers (once is enough; again is harmless) and returns the flag they set.
pub fn stop_on_interrupt() -> Result<&'static AtomicBool, String> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    // No SA_RESTART: a blocked read or poll returns, so the loop sees the flag at once.
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &action) }
            .map_err(|e| format!("installing the {sig} handler: {e}"))?;
    }
    Ok(&STOP)
}
