//! `/events`: one browser's server-sent-event stream, read from the ring at its own pace.
//!
//! The stream opens with `retry: 1000` (reconnect after a second), replays the ring (or
//! what followed the browser's `Last-Event-ID`), then follows it. When the browser falls
//! behind the ring's tail, the events it lost are counted and an `event: dropped` carries
//! this connection's running total (`missed`), before the events that follow the gap. A
//! quiet stream gets a `: ping` comment every `ping_interval`.

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
    send(stream, HEAD.as_bytes())?;
    let mut cursor = ring.start(last_event_id);
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
        let batch = ring.wait(&mut cursor, &mut summary_seen, cfg.batch, wait);
        if batch.closed {
            return Ok(());
        }
        if batch.skipped > 0 {
            missed += batch.skipped;
            let _ = write!(
                out,
                "event: dropped\ndata: {{\"type\":\"dropped\",\"missed\":{missed},\"skipped\":{},\"from_seq\":{}}}\n\n",
                batch.skipped, batch.skipped_from
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
