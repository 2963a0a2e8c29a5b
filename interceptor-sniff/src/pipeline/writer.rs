//! The output side of the sniffer, on a thread of its own.
//!
//! Formatting (JSON escaping, the text layout, the shadow comparison) costs about as much
//! as capture, reassembly and parsing together, so it runs beside them. Records cross in
//! batches, which keeps the channel's cost per record small, and the batches come back with
//! their messages, emptied here (where they were read last), so the parser reuses their
//! buffers (`http::pool`). The channel is bounded: a slow reader of stdout slows the
//! capture loop instead of growing memory.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::http::{pool, Exchange, Request, Response};
use crate::sink::{Sink, Summary, Tee, TlsFlow};

/// Records per batch.
const BATCH: usize = 256;
/// Batches in flight; with `BATCH` this bounds what the output thread lags behind.
const IN_FLIGHT: usize = 8;
/// A live capture hands over what it has at least this often, so output keeps up with
/// the traffic even when little of it is HTTP.
const LIVE_LATENCY: Duration = Duration::from_millis(20);

/// What the sniffer reports, in the order it found it.
pub enum Record {
    /// A complete request, for outputs that show requests before their response.
    Request {
        request: Box<Request>,
        client: SocketAddr,
        server: SocketAddr,
    },
    Exchange {
        exchange: Exchange,
        show_request: bool,
    },
    Orphan {
        response: Box<Response>,
        client: SocketAddr,
        server: SocketAddr,
    },
    Tls(TlsFlow),
    /// A live capture had nothing to read for a while.
    Idle(SystemTime),
}

/// How many records ahead the output thread asks for the next messages' bytes.
const PREFETCH_AHEAD: usize = 2;

impl Record {
    /// The messages the record carries.
    fn messages(&self) -> (Option<&Request>, Option<&Response>) {
        match self {
            Record::Request { request, .. } => (Some(request), None),
            Record::Exchange { exchange, .. } => {
                (Some(&exchange.request), exchange.response.as_deref())
            }
            Record::Orphan { response, .. } => (None, Some(response)),
            Record::Tls(_) | Record::Idle(_) => (None, None),
        }
    }

    /// Asks the CPU to fetch the bytes this record's output reads first. They were written
    /// on the capture thread's core; without this, the output thread waits on each
    /// message's header text and body in turn.
    fn prefetch(&self) {
        let (request, response) = self.messages();
        let parts = request
            .map(|r| (&r.headers, &r.body))
            .into_iter()
            .chain(response.map(|r| (&r.headers, &r.body)));
        for (headers, body) in parts {
            prefetch(headers.text().as_bytes());
            prefetch(&body.data);
        }
    }

    /// Prefetches the messages themselves (their fields point to the bytes), earlier than
    /// `prefetch` needs them.
    fn prefetch_messages(&self) {
        let (request, response) = self.messages();
        if let Some(r) = request {
            prefetch_value(r);
        }
        if let Some(r) = response {
            prefetch_value(r);
        }
    }

    /// Hands the record to the sink, which takes exchanges by value; what comes back
    /// (messages the sink keeps nothing of) is emptied into `back`.
    fn write_to(self, out: &mut dyn Sink, back: &mut Returned) -> io::Result<()> {
        match self {
            Record::Request {
                request,
                client,
                server,
            } => {
                let written = out.request(&request, client, server);
                back.keep_request(request);
                written
            }
            Record::Exchange {
                exchange,
                show_request,
            } => {
                let kept = out.exchange(exchange, show_request)?;
                if let Some(ex) = kept {
                    Record::Exchange {
                        exchange: ex,
                        show_request,
                    }
                    .empty_into(back);
                }
                Ok(())
            }
            Record::Orphan {
                response,
                client,
                server,
            } => {
                let written = out.orphan(&response, client, server);
                back.keep_response(response);
                written
            }
            Record::Tls(t) => out.tls(&t),
            Record::Idle(now) => out.idle(now),
        }
    }

    /// Empties the record's messages for reuse, on the output thread (which read them
    /// last, so their cache lines are here), and puts those worth keeping in `back`.
    fn empty_into(self, back: &mut Returned) {
        match self {
            Record::Request { request, .. } => back.keep_request(request),
            Record::Exchange { exchange, .. } => {
                back.keep_request(exchange.request);
                if let Some(r) = exchange.response {
                    back.keep_response(r);
                }
            }
            Record::Orphan { response, .. } => back.keep_response(response),
            Record::Tls(_) | Record::Idle(_) => {}
        }
    }
}

/// A batch the output thread is done with: the vector, emptied, and its messages, emptied
/// for the parser's pool (`http::pool`), still boxed as the pool keeps them.
#[allow(clippy::vec_box)]
struct Returned {
    batch: Vec<Record>,
    requests: Vec<Box<Request>>,
    responses: Vec<Box<Response>>,
}

impl Returned {
    /// Empties `r` and keeps it, if it is worth keeping.
    fn keep_request(&mut self, mut r: Box<Request>) {
        if pool::empty_request(&mut r) {
            self.requests.push(r);
        }
    }

    fn keep_response(&mut self, mut r: Box<Response>) {
        if pool::empty_response(&mut r) {
            self.responses.push(r);
        }
    }
}

/// What the output thread ends with: the output, and the write error that stopped it.
type Finished = (Box<dyn Sink>, Option<io::Error>);

/// The capture side's handle on the output thread.
pub struct Writer {
    batch: Vec<Record>,
    /// When the first record of `batch` was added (live captures only).
    batch_started: Option<Instant>,
    live: bool,
    shows_requests: bool,
    to_thread: Option<SyncSender<Vec<Record>>>,
    back: Receiver<Returned>,
    spare: Vec<Vec<Record>>,
    failed: Arc<AtomicBool>,
    thread: Option<JoinHandle<Finished>>,
    /// The sink's [`Tee`], run here on the capture side.
    tee: Option<Box<dyn Tee>>,
}

impl Writer {
    /// Starts the output thread. A live capture's output is flushed after every batch, so
    /// what is found shows up within `LIVE_LATENCY` (or the capture's poll interval).
    pub fn spawn(mut out: Box<dyn Sink>, live: bool) -> Writer {
        let shows_requests = out.shows_requests();
        let tee = out.tee();
        let (to_thread, from_main) = mpsc::sync_channel(IN_FLIGHT);
        let (to_main, back) = mpsc::channel();
        let failed = Arc::new(AtomicBool::new(false));
        let flag = failed.clone();
        let thread = std::thread::Builder::new()
            .name("sniff-output".into())
            .spawn(move || write_batches(out, from_main, to_main, flag, live))
            .ok();
        Writer {
            batch: Vec::with_capacity(BATCH),
            batch_started: None,
            live,
            shows_requests,
            to_thread: Some(to_thread),
            back,
            spare: Vec::new(),
            failed,
            thread,
            tee,
        }
    }

    /// The output shows each request as soon as it is complete (the text layout).
    pub fn shows_requests(&self) -> bool {
        self.shows_requests
    }

    /// Writing failed (the reader went away, the disk is full): the run should stop.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed) || self.thread.is_none()
    }

    pub fn push(&mut self, r: Record) {
        if let (Some(tee), Record::Exchange { exchange, .. }) = (self.tee.as_mut(), &r) {
            tee.exchange(exchange);
        }
        if self.live && self.batch.is_empty() {
            self.batch_started = Some(Instant::now());
        }
        self.batch.push(r);
        if self.batch.len() >= BATCH {
            self.send();
        }
    }

    /// Live captures: hands over what is waiting once it has waited `LIVE_LATENCY`.
    pub fn tick(&mut self) {
        if self
            .batch_started
            .is_some_and(|t| t.elapsed() >= LIVE_LATENCY)
        {
            self.send();
        }
    }

    /// Nothing was captured for a while: hands over what is waiting, and tells the output.
    pub fn idle(&mut self, now: SystemTime) {
        self.batch.push(Record::Idle(now));
        self.send();
    }

    fn send(&mut self) {
        self.batch_started = None;
        if let Some(tee) = self.tee.as_mut() {
            tee.flush();
        }
        if self.batch.is_empty() {
            return;
        }
        // Batches the output thread is done with: their messages go back to the pool,
        // already emptied there.
        while let Ok(done) = self.back.try_recv() {
            pool::keep_requests(done.requests);
            pool::keep_responses(done.responses);
            self.spare.push(done.batch);
        }
        let next = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BATCH));
        let full = std::mem::replace(&mut self.batch, next);
        if let Some(tx) = &self.to_thread {
            if tx.send(full).is_err() {
                // The thread ended (it panicked); `finish` reports it.
                self.to_thread = None;
                self.failed.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Hands over the last records, waits for them to be written, then writes the
    /// summary record and flushes.
    pub fn finish(mut self, summary: &Summary) -> io::Result<()> {
        self.send();
        self.to_thread = None;
        let Some(thread) = self.thread.take() else {
            return Err(io::Error::other("could not start the output thread"));
        };
        let (mut out, error) = thread
            .join()
            .map_err(|_| io::Error::other("the output thread panicked"))?;
        if let Some(e) = error {
            return Err(e);
        }
        out.stats(summary)?;
        out.flush()
    }
}

/// Asks the CPU to fetch the cache lines of `len` bytes from `at`, up to 1 KiB of them
/// (bodies can be long; the hardware prefetcher follows a stream once it has started).
#[inline]
fn prefetch_lines(at: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    for off in (0..len.min(1024)).step_by(64) {
        // SAFETY: a prefetch is only a hint: it never faults, whatever the address.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                at.wrapping_add(off) as *const i8,
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (at, len);
}

fn prefetch(b: &[u8]) {
    prefetch_lines(b.as_ptr(), b.len());
}

/// The cache lines that hold `v` itself (not what it points to).
fn prefetch_value<T>(v: &T) {
    prefetch_lines(v as *const T as *const u8, std::mem::size_of::<T>());
}

/// The output thread: writes each batch, then hands it back.
fn write_batches(
    mut out: Box<dyn Sink>,
    batches: Receiver<Vec<Record>>,
    back: Sender<Returned>,
    failed: Arc<AtomicBool>,
    live: bool,
) -> Finished {
    let mut error = None;
    let mut spent = Vec::new();
    for mut batch in batches {
        let mut done = Returned {
            batch: Vec::new(),
            requests: Vec::with_capacity(batch.len()),
            responses: Vec::with_capacity(batch.len()),
        };
        let mut records = batch.drain(..);
        while let Some(r) = records.next() {
            if error.is_some() {
                // Keep taking batches (so the capture side never blocks), write no more.
                r.empty_into(&mut done);
                continue;
            }
            let ahead = records.as_slice();
            if let Some(later) = ahead.get(2 * PREFETCH_AHEAD - 1) {
                later.prefetch_messages();
            }
            if let Some(next) = ahead.get(PREFETCH_AHEAD - 1) {
                next.prefetch();
            }
            if let Err(e) = r.write_to(out.as_mut(), &mut done) {
                failed.store(true, Ordering::Relaxed);
                error = Some(e);
            }
        }
        drop(records);
        // What the sink kept and is done with (the shadow comparison's pairs) goes back
        // too: otherwise the parser builds every message of a shadow run anew.
        out.spent(&mut spent);
        for ex in spent.drain(..) {
            done.keep_request(ex.request);
            if let Some(r) = ex.response {
                done.keep_response(r);
            }
        }
        if error.is_none() && live {
            if let Err(e) = out.flush() {
                failed.store(true, Ordering::Relaxed);
                error = Some(e);
            }
        }
        done.batch = batch;
        if back.send(done).is_err() {
            break;
        }
    }
    (out, error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::json::Json;
    use std::sync::Mutex;

    /// Collects what reaches it, or fails after `fail_after` writes.
    #[derive(Clone)]
    struct Probe {
        seen: Arc<Mutex<Vec<String>>>,
        fail_after: usize,
    }

    impl Sink for Probe {
        fn request(&mut self, r: &Request, _: SocketAddr, _: SocketAddr) -> io::Result<()> {
            self.note(format!("request {}", r.target))
        }
        fn exchange(&mut self, ex: Exchange, _: bool) -> io::Result<Option<Exchange>> {
            self.note(format!("exchange {}", ex.request.target))?;
            Ok(Some(ex))
        }
        fn orphan(&mut self, r: &Response, _: SocketAddr, _: SocketAddr) -> io::Result<()> {
            self.note(format!("orphan {}", r.status))
        }
        fn tls(&mut self, _: &TlsFlow) -> io::Result<()> {
            self.note("tls".into())
        }
        fn stats(&mut self, s: &Summary) -> io::Result<()> {
            self.note(format!("stats {}", s.http.exchanges))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
        fn shows_requests(&self) -> bool {
            true
        }
    }

    impl Probe {
        fn new(fail_after: usize) -> Probe {
            Probe {
                seen: Arc::default(),
                fail_after,
            }
        }

        fn note(&mut self, s: String) -> io::Result<()> {
            let mut seen = self.seen.lock().unwrap();
            if seen.len() >= self.fail_after {
                return Err(io::Error::from(io::ErrorKind::BrokenPipe));
            }
            seen.push(s);
            Ok(())
        }
    }

    fn exchange(target: &str) -> Record {
        let mut request = pool::request(SystemTime::UNIX_EPOCH);
        request.target.push_str(target);
        Record::Exchange {
            exchange: Exchange {
                client: "10.0.0.1:1000".parse().unwrap(),
                server: "10.0.0.2:80".parse().unwrap(),
                interface: None,
                request,
                response: None,
            },
            show_request: true,
        }
    }

    #[test]
    fn written_messages_come_back_empty_to_the_parsers_pool() {
        let probe = Probe::new(usize::MAX);
        let mut w = Writer::spawn(Box::new(probe), false);
        // A batch of messages with bodies, whose buffers should come back.
        let mut buffers = std::collections::HashSet::new();
        for i in 0..BATCH {
            let mut r = exchange(&format!("/{i}"));
            if let Record::Exchange { exchange, .. } = &mut r {
                exchange.request.body.data.extend_from_slice(b"body");
                buffers.insert(exchange.request.body.data.as_ptr() as usize);
            }
            w.push(r);
        }
        // Later batches take back what the output thread has returned by then.
        let deadline = Instant::now() + Duration::from_secs(10);
        let reused = loop {
            std::thread::sleep(Duration::from_millis(5));
            w.push(Record::Idle(SystemTime::UNIX_EPOCH));
            w.send();
            let r = pool::request(SystemTime::UNIX_EPOCH);
            let ptr = r.body.data.as_ptr() as usize;
            if buffers.contains(&ptr) || Instant::now() > deadline {
                break r;
            }
            pool::recycle_request(r);
        };
        assert!(buffers.contains(&(reused.body.data.as_ptr() as usize)));
        assert!(reused.target.is_empty() && reused.body.data.is_empty());
        assert_eq!(reused.body.len, 0);
        assert!(w.finish(&Summary::default()).is_ok());
    }

    #[test]
    fn records_arrive_in_order_across_batches_then_the_summary() {
        let probe = Probe::new(usize::MAX);
        let mut w = Writer::spawn(Box::new(probe.clone()), false);
        assert!(w.shows_requests());
        let n = BATCH * 3 + 7;
        for i in 0..n {
            w.push(exchange(&format!("/{i}")));
        }
        w.finish(&Summary {
            http: crate::sink::Counts {
                exchanges: n as u64,
                ..Default::default()
            },
            ..Summary::default()
        })
        .unwrap();
        let seen = probe.seen.lock().unwrap();
        let want: Vec<String> = (0..n)
            .map(|i| format!("exchange /{i}"))
            .chain([format!("stats {n}")])
            .collect();
        assert_eq!(*seen, want);
    }

    #[test]
    fn a_write_error_stops_the_run_and_is_returned() {
        let probe = Probe::new(10);
        let mut w = Writer::spawn(Box::new(probe.clone()), false);
        let mut pushed = 0;
        while !w.failed() {
            w.push(exchange("/x"));
            pushed += 1;
            assert!(pushed < 1_000_000, "the failure never showed");
        }
        let e = w.finish(&Summary::default()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
        assert_eq!(probe.seen.lock().unwrap().len(), 10);
    }

    #[test]
    fn live_output_is_handed_over_without_waiting_for_a_full_batch() {
        let probe = Probe::new(usize::MAX);
        let mut w = Writer::spawn(Box::new(probe.clone()), true);
        w.push(Record::Orphan {
            response: pool::response(SystemTime::UNIX_EPOCH),
            client: "10.0.0.1:1000".parse().unwrap(),
            server: "10.0.0.2:80".parse().unwrap(),
        });
        // Within a few latency periods the record is written without any more pushes.
        let deadline = Instant::now() + Duration::from_secs(10);
        while probe.seen.lock().unwrap().is_empty() {
            assert!(
                Instant::now() < deadline,
                "the record never reached the output"
            );
            std::thread::sleep(LIVE_LATENCY / 2);
            w.tick();
        }
        assert_eq!(*probe.seen.lock().unwrap(), ["orphan 0"]);
        let json = Writer::spawn(Box::new(Json::new(io::sink())), true);
        assert!(!json.shows_requests());
        json.finish(&Summary::default()).unwrap();
    }
}
