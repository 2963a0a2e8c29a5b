//! The event ring: what `/events` streams, kept in a bounded queue that the capture side
//! pushes into and every browser reads from at its own pace.
//!
//! The producer (the sniffer's output thread) never waits on a browser: a push takes the
//! lock for a constant amount of work (append, maybe evict from the front, wake readers)
//! and never touches a socket. Each `/events` connection keeps its own cursor (the next
//! sequence number it wants); a connection that fell behind the ring's tail, because its
//! browser reads slowly or not at all, skips to the tail and is told how many it missed.
//!
//! Events are kept either as rendered JSON or as a [`LazyEvent`] that renders itself when
//! a connection reads it: an exchange costs a few hundred nanoseconds to render, which an
//! offline capture read at a million packets a second would pay for every exchange, though
//! only the last thousand can ever be seen. Lazy events are rendered on the connection's
//! thread, outside the lock. A lazy event may have several parts, each an event of the
//! stream with its own sequence number (a shadow pair and its two exchanges; the exchanges
//! of one buffer the `--json` writer wrote), in one slot of the queue: pushed and given
//! back to its producer as one (evicted part by part, handed back with its last), so a
//! pair or a buffer costs one push.

use std::any::Any;
use std::collections::VecDeque;
#[cfg(test)]
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use interceptor_sniff::output::json::push_u64;

/// An event rendered only when a connection reads it. It may have several parts, each an
/// event of the stream with its own sequence number (a shadow pair and its two exchanges):
/// they take consecutive numbers and are held, evicted and given back as one.
pub trait LazyEvent: Send + Sync + 'static {
    /// Writes the JSON object of part `part` (0 for an event of one part), `{…}` on one
    /// line, without `seq` (the ring adds it; it is given here for parts that refer to the
    /// others, whose numbers are next to it).
    fn render(&self, part: usize, seq: u64, out: &mut Vec<u8>);
    /// The kind of part `part`, when the event has several (an event of one part has the
    /// kind it was pushed with).
    fn kind(&self, _part: usize) -> Option<&'static str> {
        None
    }
    /// About how many bytes it holds, for the ring's memory bound.
    fn size(&self) -> usize;
    /// It renders no raw line end (the JSON writers' compact output), so framing it needs
    /// no scan for one.
    fn one_line(&self) -> bool {
        false
    }
    /// Gives the event back by value once the ring evicts it (so the owner can reuse its
    /// buffers).
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
    /// Asks the CPU for the memory its owner will touch when it gets the event back: the
    /// ring calls this a few pushes before evicting it, as it was written thousands of
    /// events ago and is long out of the cache.
    fn prefetch(&self) {}
}

/// Asks the CPU to fetch the cache line at `p` (a hint: it never faults).
pub fn prefetch<T: ?Sized>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint and never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// `{"seq":N,` then the members of `object`; an object with none becomes `{"seq":N}`.
fn json_of(seq: u64, object: &[u8], out: &mut Vec<u8>) {
    out.reserve(object.len() + 32);
    out.extend_from_slice(b"{\"seq\":");
    push_u64(out, seq);
    match object.strip_prefix(b"{") {
        Some(rest) if !rest.starts_with(b"}") => {
            out.push(b',');
            out.extend_from_slice(rest);
        }
        _ => out.push(b'}'),
    }
}

/// Whether `b` holds a line end (eight bytes at a time: event data is a few hundred bytes
/// to kilobytes, and rarely has one).
fn memchr_newline(b: &[u8]) -> bool {
    const LO: u64 = u64::from_ne_bytes([0x01; 8]);
    const HI: u64 = u64::from_ne_bytes([0x80; 8]);
    const NL: u64 = u64::from_ne_bytes([b'\n'; 8]);
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let x = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) ^ NL;
        if x.wrapping_sub(LO) & !x & HI != 0 {
            return true;
        }
    }
    chunks.remainder().contains(&b'\n')
}

enum Payload {
    /// A JSON object, `{…}`, without `seq`.
    Json(Vec<u8>),
    Lazy(Box<dyn LazyEvent>),
}

/// What the ring holds: an event of the stream, or several (the parts of a lazy event),
/// all in one slot of the queue.
pub struct Event {
    /// Set under the ring's lock as the event is appended (atomic so that a recycled
    /// event needs no exclusive access there); read by connections after that lock. The
    /// first part's: the others follow it.
    seq: AtomicU64,
    parts: usize,
    /// No line end in the rendered object (the JSON writers' compact output), so framing
    /// it needs no scan.
    one_line: bool,
    kind: &'static str,
    payload: Payload,
    /// Bytes held, taken when pushed: reading a lazy event's size again at eviction would
    /// touch memory long out of the cache.
    size: usize,
}

impl Event {
    /// The part of this event numbered `seq`.
    fn part(&self, seq: u64) -> usize {
        seq.saturating_sub(self.seq.load(Ordering::Relaxed)) as usize
    }

    fn kind(&self, seq: u64) -> &'static str {
        match &self.payload {
            Payload::Lazy(l) => l.kind(self.part(seq)).unwrap_or(self.kind),
            Payload::Json(_) => self.kind,
        }
    }

    /// The JSON object of its part numbered `seq`, with `"seq"` first, into `out`.
    fn json(&self, seq: u64, out: &mut Vec<u8>) {
        match &self.payload {
            Payload::Json(b) => json_of(seq, b, out),
            Payload::Lazy(l) => {
                let mut body = Vec::new();
                l.render(self.part(seq), seq, &mut body);
                json_of(seq, &body, out);
            }
        }
    }

    /// The server-sent-events frame of its part numbered `seq`: `id`, `event`, `data` and
    /// the blank line.
    fn frame(&self, seq: u64, out: &mut Vec<u8>) {
        // Every exchange passes here on a connection's thread: no formatting machinery.
        out.extend_from_slice(b"id: ");
        push_u64(out, seq);
        out.extend_from_slice(b"\nevent: ");
        out.extend_from_slice(self.kind(seq).as_bytes());
        out.extend_from_slice(b"\ndata: ");
        let start = out.len();
        self.json(seq, out);
        if self.one_line {
            out.extend_from_slice(b"\n\n");
            return;
        }
        // Renderers write one line; a raw line end would end the data field early, so any
        // that slipped in is escaped as JSON whitespace would be (between tokens it is
        // insignificant, and JSON strings cannot hold a raw one).
        if memchr_newline(&out[start..]) {
            let data: Vec<u8> = out.split_off(start);
            for &c in &data {
                if c == b'\n' {
                    out.extend_from_slice(b"\ndata: ");
                } else {
                    out.push(c);
                }
            }
        }
        out.extend_from_slice(b"\n\n");
    }

    fn measure(payload: &Payload) -> usize {
        std::mem::size_of::<Event>()
            + match payload {
                // The capacity: a recycled buffer may hold more than this event needs.
                Payload::Json(b) => b.capacity(),
                Payload::Lazy(l) => l.size(),
            }
    }

    /// The lazy event of an evicted event back by value, when nothing else holds the
    /// event (a connection may be rendering it right now; then it is dropped there, later).
    /// The event is left empty, for [`Ring::push_lazy`] to fill again without allocating.
    pub fn take_lazy(ev: &mut Arc<Event>) -> Option<Box<dyn Any + Send>> {
        let e = Arc::get_mut(ev)?;
        match std::mem::replace(&mut e.payload, Payload::Json(Vec::new())) {
            Payload::Lazy(l) => Some(l.into_any()),
            json => {
                e.payload = json;
                None
            }
        }
    }
}

/// How much the ring keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Events kept for replay and for slow readers.
    pub events: usize,
    /// Bytes kept (by the events' own estimate): bodies are cut at `--max-body`, but 1024
    /// exchanges of 64 KiB each way would still be 128 MiB.
    pub bytes: usize,
}

impl Default for Limits {
    /// 1024 events: a few seconds of a busy pod to replay to a browser that connects, and
    /// memory the capture writes over again soon enough to find it in the cache. (With
    /// 4096, the copy of each exchange into memory last written 4096 events before cost
    /// `--serve` a fifth of a `--json` run's time on the benchmark's capture.)
    fn default() -> Limits {
        Limits {
            events: 1024,
            bytes: 64 << 20,
        }
    }
}

/// Counters of the ring, for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Events held now.
    pub len: usize,
    pub bytes: usize,
    /// The sequence number the next event gets.
    pub next_seq: u64,
    /// Events pushed out by newer ones.
    pub evicted: u64,
}

struct Inner {
    /// One per entry, of one part or several, in order of their sequence numbers.
    events: VecDeque<Arc<Event>>,
    /// Parts held: the events of the stream.
    held: usize,
    /// Parts of the front entry already evicted (its bytes leave with its last part).
    front_gone: usize,
    next_seq: u64,
    bytes: usize,
    evicted: u64,
    closed: bool,
    /// Connections waiting for events: a push wakes them only when there are some (a
    /// wake is a system call, and most pushes find every reader busy or none at all).
    waiting: usize,
    /// The latest summary frame, replaced rather than queued: only the newest matters.
    summary: Option<Arc<[u8]>>,
    summary_version: u64,
}

impl Inner {
    /// Sequence number of the oldest event held (`next_seq` when empty).
    fn first(&self) -> u64 {
        self.next_seq - self.held as u64
    }
}

/// An event of the stream as a connection reads it: a part of what the ring holds.
#[derive(Clone)]
pub struct Slot {
    seq: u64,
    event: Arc<Event>,
}

impl Slot {
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn kind(&self) -> &'static str {
        self.event.kind(self.seq)
    }

    /// Its JSON object with `"seq"` first, into `out`.
    pub fn json(&self, out: &mut Vec<u8>) {
        self.event.json(self.seq, out)
    }

    /// The server-sent-events frame: `id`, `event`, `data` and the blank line.
    pub fn frame(&self, out: &mut Vec<u8>) {
        self.event.frame(self.seq, out)
    }
}

/// What a connection gets from one [`Ring::wait`].
#[derive(Default)]
pub struct Batch {
    /// Events it missed since its last batch: they left the ring before it read them.
    pub skipped: u64,
    /// The oldest sequence number it missed, when it missed some.
    pub skipped_from: u64,
    pub events: Vec<Slot>,
    /// A summary frame newer than the last one it got.
    pub summary: Option<Arc<[u8]>>,
    /// The ring was closed (server shutdown): end the stream.
    pub closed: bool,
}

/// The bounded event queue shared by the producer and every `/events` connection.
pub struct Ring {
    inner: Mutex<Inner>,
    wake: Condvar,
    /// Notified only when the ring closes: a paced connection sleeps on it (`pause`).
    closing: Condvar,
    limits: Limits,
}

impl Ring {
    pub fn new(limits: Limits) -> Ring {
        Ring {
            inner: Mutex::new(Inner {
                events: VecDeque::with_capacity(limits.events.clamp(1, 1 << 16)),
                held: 0,
                front_gone: 0,
                next_seq: 1,
                bytes: 0,
                evicted: 0,
                closed: false,
                waiting: 0,
                summary: None,
                summary_version: 0,
            }),
            wake: Condvar::new(),
            closing: Condvar::new(),
            limits,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The lock, even after a panic elsewhere: the queue is consistent after every step.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a rendered event (a JSON object without `seq`); returns its sequence number.
    pub fn push_json(&self, kind: &'static str, object: &[u8]) -> u64 {
        let mut evicted = Vec::new();
        let seq = self.push(kind, Payload::Json(object.to_vec()), &mut evicted);
        drop(evicted);
        seq
    }

    /// Adds a lazy event of `parts` parts (see [`LazyEvent`]); returns the sequence number
    /// of its first. It goes into an event of `spare` when there is one that nothing else
    /// holds (taken back with [`Event::take_lazy`]): in a steady stream a push allocates
    /// nothing. The events pushed out are appended to `evicted` as their last part goes.
    pub fn push_lazy(
        &self,
        kind: &'static str,
        parts: usize,
        lazy: Box<dyn LazyEvent>,
        spare: &mut Vec<Arc<Event>>,
        evicted: &mut Vec<Arc<Event>>,
    ) -> u64 {
        let size = std::mem::size_of::<Event>() + lazy.size();
        let one_line = lazy.one_line();
        let parts = parts.max(1);
        let mut payload = Some(Payload::Lazy(lazy));
        let mut reused = None;
        while let Some(mut ev) = spare.pop() {
            if let Some(e) = Arc::get_mut(&mut ev) {
                e.kind = kind;
                e.parts = parts;
                e.one_line = one_line;
                e.size = size;
                e.payload = payload.take().unwrap_or(Payload::Json(Vec::new()));
                reused = Some(ev);
                break;
            }
        }
        let ev = match (reused, payload) {
            (Some(ev), _) => ev,
            (None, payload) => Arc::new(Event {
                seq: AtomicU64::new(0),
                parts,
                one_line,
                kind,
                payload: payload.unwrap_or(Payload::Json(Vec::new())),
                size,
            }),
        };
        self.push_event(ev, evicted)
    }

    fn push(&self, kind: &'static str, payload: Payload, evicted: &mut Vec<Arc<Event>>) -> u64 {
        let size = Event::measure(&payload);
        let ev = Arc::new(Event {
            seq: AtomicU64::new(0),
            parts: 1,
            one_line: false,
            kind,
            payload,
            size,
        });
        self.push_event(ev, evicted)
    }

    /// Appends `ev` (held by nothing else) under the next sequence numbers, one for each
    /// part; evicts what the limits say, oldest part first. An entry is one slot of the
    /// queue whatever its parts, so a pair costs one append and one removal.
    fn push_event(&self, ev: Arc<Event>, evicted: &mut Vec<Arc<Event>>) -> u64 {
        let (size, parts) = (ev.size, ev.parts);
        let mut g = self.lock();
        let seq = g.next_seq;
        ev.seq.store(seq, Ordering::Relaxed);
        g.bytes += size;
        g.held += parts;
        g.events.push_back(ev);
        g.next_seq += parts as u64;
        let limit = self.limits.events.max(1);
        while g.events.len() > 1 && (g.held > limit || g.bytes > self.limits.bytes) {
            let Some(front) = g.events.front() else {
                break;
            };
            let left = front.parts - g.front_gone;
            // Over the count, the oldest parts go one by one; over the bytes, whole entries.
            let over = if g.held > limit { g.held - limit } else { left };
            if over < left {
                g.front_gone += over;
                g.held -= over;
                g.evicted += over as u64;
                break;
            }
            let Some(old) = g.events.pop_front() else {
                break;
            };
            g.front_gone = 0;
            g.held -= left;
            g.evicted += left as u64;
            g.bytes = g.bytes.saturating_sub(old.size);
            evicted.push(old);
        }
        // The entries evicted next, fetched in stages (each stage reads a pointer the
        // previous one fetched): the event, its lazy payload, what the payload points to.
        if let Some(e) = g.events.get(4) {
            prefetch(Arc::as_ptr(e));
        }
        if let Some(Payload::Lazy(l)) = g.events.get(2).map(|e| &e.payload) {
            prefetch(&**l as *const dyn LazyEvent);
        }
        if let Some(Payload::Lazy(l)) = g.events.get(1).map(|e| &e.payload) {
            l.prefetch();
        }
        let wake = g.waiting > 0;
        drop(g);
        if wake {
            self.wake.notify_all();
        }
        seq
    }

    /// Replaces the summary every connection is sent next (a JSON object).
    pub fn set_summary(&self, object: &[u8]) {
        let mut frame = Vec::with_capacity(object.len() + 32);
        frame.extend_from_slice(b"event: summary\ndata: ");
        frame.extend(object.iter().map(|&c| if c == b'\n' { b' ' } else { c }));
        frame.extend_from_slice(b"\n\n");
        let mut g = self.lock();
        g.summary = Some(frame.into());
        g.summary_version += 1;
        drop(g);
        self.wake.notify_all();
    }

    /// Ends every stream (their next `wait` says closed).
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
        self.closing.notify_all();
    }

    pub fn stats(&self) -> RingStats {
        let g = self.lock();
        RingStats {
            len: g.held,
            bytes: g.bytes,
            next_seq: g.next_seq,
            evicted: g.evicted,
        }
    }

    /// The cursor of a new connection: the whole ring is replayed (the page drops what it
    /// already has by `seq`), or, for a reconnecting browser that says which event it saw
    /// last (`Last-Event-ID`), what came after it. An id from before a restart of the
    /// server (beyond the newest) counts as none.
    pub fn start(&self, last_event_id: Option<u64>) -> u64 {
        let g = self.lock();
        match last_event_id {
            Some(id) if id < g.next_seq => id + 1,
            _ => g.first(),
        }
    }

    /// Sleeps for `d`, or until the ring closes (pushes do not wake it); returns whether
    /// it is closed.
    pub fn pause(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut g = self.lock();
        while !g.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            g = match self.closing.wait_timeout(g, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        g.closed
    }

    /// How many events from `cursor` on the ring holds.
    pub fn behind(&self, cursor: u64) -> u64 {
        let g = self.lock();
        g.next_seq - cursor.max(g.first()).min(g.next_seq)
    }

    /// Moves `cursor` past all but the newest `keep` events (a connection paced below the
    /// rate events come at skips to the newest), and past those that already left the
    /// ring. Returns how many it passed over, and the first of them.
    pub fn keep_newest(&self, cursor: &mut u64, keep: u64) -> (u64, u64) {
        let g = self.lock();
        let to = g.first().max(g.next_seq.saturating_sub(keep));
        if *cursor >= to {
            return (0, 0);
        }
        let passed = (to - *cursor, *cursor);
        *cursor = to;
        passed
    }

    /// Waits up to `timeout` for events from `cursor` on (at most `max`), or a newer
    /// summary than `summary_seen`; advances both. Returns at once when there is something.
    pub fn wait(
        &self,
        cursor: &mut u64,
        summary_seen: &mut u64,
        max: usize,
        timeout: Duration,
    ) -> Batch {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock();
        loop {
            if g.closed {
                return Batch {
                    closed: true,
                    ..Batch::default()
                };
            }
            let first = g.first();
            let mut batch = Batch::default();
            if *cursor < first {
                batch.skipped = first - *cursor;
                batch.skipped_from = *cursor;
                *cursor = first;
            }
            let have = g.next_seq.saturating_sub(*cursor);
            if have > 0 {
                let n = (have as usize).min(max.max(1));
                let end = *cursor + n as u64;
                // The entry holding `cursor`: the first that ends after it.
                let at = g
                    .events
                    .partition_point(|e| e.seq.load(Ordering::Relaxed) + e.parts as u64 <= *cursor);
                for event in g.events.range(at..) {
                    let from = event.seq.load(Ordering::Relaxed).max(*cursor);
                    let to = (event.seq.load(Ordering::Relaxed) + event.parts as u64).min(end);
                    batch.events.extend((from..to).map(|seq| Slot {
                        seq,
                        event: event.clone(),
                    }));
                    if to >= end {
                        break;
                    }
                }
                *cursor = end;
            }
            if g.summary_version != *summary_seen {
                *summary_seen = g.summary_version;
                batch.summary = g.summary.clone();
            }
            if batch.skipped > 0 || !batch.events.is_empty() || batch.summary.is_some() {
                return batch;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return batch;
            }
            g.waiting += 1;
            g = match self.wake.wait_timeout(g, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
            g.waiting -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(e: &Slot) -> String {
        let mut out = Vec::new();
        e.frame(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn pause_ends_when_the_ring_closes_not_on_a_push() {
        let ring = Arc::new(Ring::new(Limits::default()));
        let r = ring.clone();
        let t = std::thread::spawn(move || {
            let start = Instant::now();
            let closed = r.pause(Duration::from_secs(10));
            (closed, start.elapsed())
        });
        std::thread::sleep(Duration::from_millis(20));
        ring.push_json("exchange", b"{}");
        std::thread::sleep(Duration::from_millis(20));
        assert!(!t.is_finished(), "a push ended the pause");
        ring.close();
        let (closed, took) = t.join().unwrap();
        assert!(closed && took < Duration::from_secs(5), "{took:?}");
        assert!(!Ring::new(Limits::default()).pause(Duration::from_millis(1)));
    }

    #[test]
    fn frames_carry_seq_first_and_stay_one_data_line() {
        let ring = Ring::new(Limits::default());
        assert_eq!(
            ring.push_json("exchange", br#"{"type":"exchange","a":1}"#),
            1
        );
        assert_eq!(ring.push_json("shadow", b"{}"), 2);
        assert_eq!(ring.push_json("shadow", b"{\"x\":\n2}"), 3);
        let (mut c, mut s) = (ring.start(None), 0);
        let b = ring.wait(&mut c, &mut s, 10, Duration::ZERO);
        let frames: Vec<String> = b.events.iter().map(text).collect();
        assert_eq!(
            frames[0],
            "id: 1\nevent: exchange\ndata: {\"seq\":1,\"type\":\"exchange\",\"a\":1}\n\n"
        );
        assert_eq!(frames[1], "id: 2\nevent: shadow\ndata: {\"seq\":2}\n\n");
        assert_eq!(
            frames[2],
            "id: 3\nevent: shadow\ndata: {\"seq\":3,\"x\":\ndata: 2}\n\n"
        );
        assert_eq!(c, 4);
    }

    #[test]
    fn a_reader_behind_the_tail_skips_ahead_and_is_told_how_many() {
        let ring = Ring::new(Limits {
            events: 8,
            bytes: usize::MAX,
        });
        let (mut c, mut s) = (ring.start(None), 0);
        assert_eq!(c, 1);
        for i in 0..20 {
            ring.push_json("exchange", format!("{{\"i\":{i}}}").as_bytes());
        }
        let b = ring.wait(&mut c, &mut s, 100, Duration::ZERO);
        assert_eq!((b.skipped, b.skipped_from), (12, 1));
        let seqs: Vec<u64> = b.events.iter().map(|e| e.seq()).collect();
        assert_eq!(seqs, (13..=20).collect::<Vec<_>>());
        let st = ring.stats();
        assert_eq!((st.len, st.evicted, st.next_seq), (8, 12, 21));
        // Caught up: nothing more, nothing skipped.
        let b = ring.wait(&mut c, &mut s, 100, Duration::from_millis(10));
        assert!(b.events.is_empty() && b.skipped == 0 && !b.closed);
    }

    #[test]
    fn the_byte_bound_evicts_too_but_keeps_the_newest() {
        let ring = Ring::new(Limits {
            events: 1000,
            bytes: 4096,
        });
        let big = format!("{{\"b\":\"{}\"}}", "x".repeat(1500));
        for _ in 0..10 {
            ring.push_json("exchange", big.as_bytes());
        }
        let st = ring.stats();
        assert!(st.bytes <= 4096 && st.len == 2, "{st:?}");
        let huge = format!("{{\"b\":\"{}\"}}", "x".repeat(10_000));
        ring.push_json("exchange", huge.as_bytes());
        assert_eq!(
            ring.stats().len,
            1,
            "one event over the bound alone is kept"
        );
    }

    #[test]
    fn last_event_id_resumes_after_it_and_counts_what_left_meanwhile() {
        let ring = Ring::new(Limits {
            events: 4,
            bytes: usize::MAX,
        });
        for _ in 0..3 {
            ring.push_json("exchange", b"{}");
        }
        assert_eq!(ring.start(Some(2)), 3);
        assert_eq!(
            ring.start(Some(99)),
            1,
            "an id from another run replays everything"
        );
        let mut c = ring.start(Some(1));
        for _ in 0..5 {
            ring.push_json("exchange", b"{}");
        }
        let mut s = 0;
        let b = ring.wait(&mut c, &mut s, 100, Duration::ZERO);
        assert_eq!((b.skipped, b.skipped_from), (3, 2));
        assert_eq!(b.events.first().map(|e| e.seq()), Some(5));
    }

    #[test]
    fn summaries_replace_each_other_and_close_ends_waits() {
        let ring = Arc::new(Ring::new(Limits::default()));
        let (mut c, mut s) = (ring.start(None), 0);
        ring.set_summary(b"{\"exchanges\":1}");
        ring.set_summary(b"{\"exchanges\":2}");
        let b = ring.wait(&mut c, &mut s, 10, Duration::ZERO);
        assert_eq!(
            b.summary.as_deref(),
            Some(&b"event: summary\ndata: {\"exchanges\":2}\n\n"[..])
        );
        assert!(ring
            .wait(&mut c, &mut s, 10, Duration::ZERO)
            .summary
            .is_none());
        let r = ring.clone();
        let waiter = std::thread::spawn(move || {
            let (mut c, mut s) = (r.start(None), 2);
            r.wait(&mut c, &mut s, 10, Duration::from_secs(30)).closed
        });
        std::thread::sleep(Duration::from_millis(50));
        ring.close();
        assert!(waiter.join().unwrap());
    }

    /// A lazy event of `parts` parts: `pair` shows that it is rendered by part, with the
    /// numbers of its parts.
    struct Probe(u32, usize);
    impl LazyEvent for Probe {
        fn render(&self, part: usize, seq: u64, out: &mut Vec<u8>) {
            let _ = write!(out, "{{\"n\":{},\"part\":{part},\"at\":{seq}}}", self.0);
        }
        fn kind(&self, part: usize) -> Option<&'static str> {
            (self.1 > 1).then_some(["exchange", "exchange", "shadow"][part.min(2)])
        }
        fn size(&self) -> usize {
            100
        }
        fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
            self
        }
    }

    fn push(ring: &Ring, p: Probe, spare: &mut Vec<Arc<Event>>, ev: &mut Vec<Arc<Event>>) -> u64 {
        let parts = p.1;
        ring.push_lazy("exchange", parts, Box::new(p), spare, ev)
    }

    #[test]
    fn lazy_events_render_when_read_by_part_and_come_back_when_evicted() {
        let ring = Ring::new(Limits {
            events: 4,
            bytes: usize::MAX,
        });
        let (mut spare, mut evicted) = (Vec::new(), Vec::new());
        assert_eq!(push(&ring, Probe(0, 1), &mut spare, &mut evicted), 1);
        // Three parts: three events of the stream with consecutive numbers.
        assert_eq!(push(&ring, Probe(1, 3), &mut spare, &mut evicted), 2);
        assert_eq!(ring.stats().len, 4);
        let (mut c, mut s) = (ring.start(None), 0);
        let b = ring.wait(&mut c, &mut s, 10, Duration::ZERO);
        let frames: Vec<String> = b.events.iter().map(text).collect();
        assert_eq!(
            frames,
            [
                "id: 1\nevent: exchange\ndata: {\"seq\":1,\"n\":0,\"part\":0,\"at\":1}\n\n",
                "id: 2\nevent: exchange\ndata: {\"seq\":2,\"n\":1,\"part\":0,\"at\":2}\n\n",
                "id: 3\nevent: exchange\ndata: {\"seq\":3,\"n\":1,\"part\":1,\"at\":3}\n\n",
                "id: 4\nevent: shadow\ndata: {\"seq\":4,\"n\":1,\"part\":2,\"at\":4}\n\n",
            ]
        );
        drop(b);
        // A reader that resumes in the middle of it gets the parts from there on.
        let (mut c, mut s) = (ring.start(Some(2)), 0);
        let b = ring.wait(&mut c, &mut s, 10, Duration::ZERO);
        assert_eq!(b.events.iter().map(Slot::seq).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(b.events[1].kind(), "shadow");
        drop(b);

        // Evicted part by part, handed back with its last part.
        assert_eq!(push(&ring, Probe(2, 1), &mut spare, &mut evicted), 5);
        assert_eq!(push(&ring, Probe(3, 1), &mut spare, &mut evicted), 6);
        assert_eq!(
            evicted.len(),
            1,
            "the first event; the pair's first part went too"
        );
        let mut first = evicted.pop().unwrap();
        let back = Event::take_lazy(&mut first).unwrap();
        assert_eq!(back.downcast::<Probe>().unwrap().0, 0);
        assert_eq!(push(&ring, Probe(4, 1), &mut spare, &mut evicted), 7);
        assert!(evicted.is_empty(), "its last part is still in the ring");
        assert_eq!(push(&ring, Probe(5, 1), &mut spare, &mut evicted), 8);
        let mut last = evicted.pop().unwrap();
        assert_eq!(
            Event::take_lazy(&mut last)
                .unwrap()
                .downcast::<Probe>()
                .unwrap()
                .0,
            1
        );
        // Its bytes left with its last part.
        assert_eq!(ring.stats().bytes, 4 * (std::mem::size_of::<Event>() + 100));

        // The emptied event is filled again rather than a new one made.
        let reused = Arc::as_ptr(&last);
        spare.push(last);
        evicted.clear();
        assert_eq!(push(&ring, Probe(6, 1), &mut spare, &mut evicted), 9);
        assert!(spare.is_empty());
        let (mut c, mut s) = (ring.start(Some(8)), 0);
        let b = ring.wait(&mut c, &mut s, 10, Duration::ZERO);
        assert_eq!(b.events.len(), 1);
        assert_eq!(Arc::as_ptr(&b.events[0].event), reused);

        // Held by a reader: eviction cannot take it back, and does not wait for it.
        let held = b.events[0].clone();
        drop(b);
        evicted.clear();
        for n in 7..11 {
            push(&ring, Probe(n, 1), &mut spare, &mut evicted);
        }
        let mut taken: Vec<bool> = evicted
            .iter_mut()
            .map(|e| Event::take_lazy(e).is_some())
            .collect();
        taken.sort();
        assert_eq!(taken, [false, true, true, true]);
        drop(held);
    }
}
