//! `/events`: one browser's server-sent-event stream, read from the ring at its own pace.
//!
//! The stream opens with `retry: 1000` (reconnect after a second), replays the ring (or
//! what followed the browser's `Last-Event-ID`), then follows it. When the browser falls
//! behind the ring's tail, the events it lost are counted and an `event: dropped` carries
//! this connection's running total (`missed`), before the events that follow the gap. A
//! quiet stream gets a `: ping` comment every `ping_interval`.
//!
//! Past its replay a connection is paced (`Config::events_per_second`, bursts of
//! `Config::batch`): when events come faster, it skips to the newest and counts what it
//! passed over as missed, the same way. A page keeps its last 2000 rows, so a faster
//! stream would only be rendered to be thrown away, while the capture waits for the CPU.

use std::io::{self, Write as _};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::events::Ring;
use crate::server::{send, Config};

pub const HEAD: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\nX-Accel-Buffering: no\r\nConnection: close\r\n\r\nretry: 1000\n\n";

/// Streams `ring` to `stream` until the ring closes or the peer goes.
pub fn stream(
    stream: &mut TcpStream,
    ring: &Arc<Ring>,
    last_event_id: Option<u64>,
    cfg: &Config,
) -> io::Result<()> {
    let mut cursor = ring.start(last_event_id);
    let mut pace = Pace::new(cfg.events_per_second, cfg.batch, ring.behind(cursor));
    send(stream, HEAD.as_bytes())?;
    // A paced stream waits for this many events' worth, so it is written in batches.
    let chunk = (u64::from(cfg.events_per_second) / 50).max(1);
    let mut summary_seen = 0;
    let mut missed = 0u64;
    let mut out = Vec::with_capacity(64 * 1024);
    let mut last_sent = Instant::now();
    loop {
        let quiet_for = last_sent.elapsed();
        let wait = cfg
            .ping_interval
            .saturating_sub(quiet_for)
            .max(Duration::from_millis(1));
        let allowed = pace.allowed();
        if allowed == 0 {
            if ring.pause(pace.until(chunk).min(wait)) {
                return Ok(());
            }
            continue;
        }
        let (mut skipped, mut skipped_from) = ring.keep_newest(&mut cursor, allowed);
        let max = usize::try_from(allowed)
            .unwrap_or(usize::MAX)
            .min(cfg.batch);
        let batch = ring.wait(&mut cursor, &mut summary_seen, max, wait);
        if batch.closed {
            return Ok(());
        }
        pace.spend(batch.events.len());
        if batch.skipped > 0 {
            if skipped == 0 {
                skipped_from = batch.skipped_from;
            }
            skipped += batch.skipped;
        }
        if skipped > 0 {
            missed += skipped;
            let _ = write!(
                out,
                "event: dropped\ndata: {{\"type\":\"dropped\",\"missed\":{missed},\"skipped\":{skipped},\"from_seq\":{skipped_from}}}\n\n",
            );
        }
        for e in &batch.events {
            e.frame(&mut out);
        }
        // After the events it counts, so the page's numbers agree with its rows.
        if let Some(s) = &batch.summary {
            out.extend_from_slice(s);
        }
        drop(batch);
        if out.is_empty() && last_sent.elapsed() >= cfg.ping_interval {
            out.extend_from_slice(b": ping\n\n");
        }
        if !out.is_empty() {
            send(stream, &out)?;
            out.clear();
            if out.capacity() > 1 << 20 {
                out.shrink_to(64 * 1024);
            }
            last_sent = Instant::now();
        }
    }
}

/// How many events a connection may be sent now: `per_second` accrue up to `burst`; the
/// replay it connected to comes on top, once.
struct Pace {
    per_second: f64,
    burst: f64,
    allowance: f64,
    at: Instant,
}

impl Pace {
    fn new(per_second: u32, burst: usize, replay: u64) -> Pace {
        let burst = burst.max(1) as f64;
        Pace {
            per_second: f64::from(per_second.max(1)),
            burst,
            allowance: burst + replay as f64,
            at: Instant::now(),
        }
    }

    /// Whole events allowed now.
    fn allowed(&mut self) -> u64 {
        let now = Instant::now();
        let accrued = now.duration_since(self.at).as_secs_f64() * self.per_second;
        self.at = now;
        // Above the burst (the replay) it is only spent, never topped up.
        self.allowance = (self.allowance + accrued).min(self.burst.max(self.allowance));
        self.allowance as u64
    }

    fn spend(&mut self, events: usize) {
        self.allowance = (self.allowance - events as f64).max(0.0);
    }

    /// How long until `events` are allowed.
    fn until(&self, events: u64) -> Duration {
        let short = (events as f64).min(self.burst) - self.allowance;
        Duration::from_secs_f64(short.max(0.0) / self.per_second)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    #[test]
    fn pace_allows_the_replay_once_then_the_rate_up_to_the_burst() {
        let mut p = Pace::new(1000, 10, 90);
        assert_eq!(p.allowed(), 100);
        p.spend(100);
        assert_eq!(p.allowed(), 0);
        // 10 events' worth at 1000 a second.
        assert!(p.until(10) > Duration::from_millis(9) && p.until(10) <= Duration::from_millis(10));
        thread::sleep(Duration::from_millis(50));
        // 50 accrued, 10 kept.
        assert_eq!(p.allowed(), 10);
        p.spend(4);
        assert_eq!(p.allowed(), 6);
        // More than the burst is never waited for.
        assert!(p.until(1000) <= Duration::from_millis(4));
    }
}
