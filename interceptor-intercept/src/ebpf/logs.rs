//! `--debug`: prints the programs' aya-log records until interrupted. Interception stays
//! in place when this stops; only the logs end.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{anyhow, Result};
use aya::Ebpf;
use aya_log::EbpfLogger;

/// Writes each record as one line on stdout.
struct Stdout;

impl log::Log for Stdout {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "ebpf {}: {}", record.level(), record.args());
        let _ = out.flush();
    }
    fn flush(&self) {
        let _ = std::io::stdout().flush();
    }
}

/// Prints the programs' records until `stop` is set (the caller's signal handler sets it).
pub fn follow(ebpf: &mut Ebpf, stop: &AtomicBool) -> Result<()> {
    let mut logger = EbpfLogger::init_with_logger(ebpf, Stdout)
        .map_err(|e| anyhow!("reading the programs' logs: {e}"))?;
    println!("following eBPF debug logs; interrupt to stop (interception stays in place)");
    let _ = std::io::stdout().flush();
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: logger.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; a signal ends the wait with EINTR, which is fine.
        unsafe { libc::poll(&mut pfd, 1, 250) };
        logger.flush();
    }
    Ok(())
}
