//! `sniff --serve`: a sink that hands every record to the output chosen on the command line
//! (text, JSON or the shadow comparison on stdout) and also feeds the live view's event
//! ring and the metrics.
//!
//! The cost on the sniffer's output thread is kept to a few hash lookups and atomics per
//! exchange: the exchange itself goes into the ring unrendered (a [`LazyEvent`]) once the
//! stdout output hands it back, and is rendered by the `/events` connection that reads it,
//! on that connection's thread, with the very writer `--json` uses. The ring evicts the
//! oldest exchange in return, and that one goes back to the parser's pool, so keeping
//! 4096 exchanges costs no allocation per exchange. Only with `--shadow`, whose comparison
//! keeps the exchange until its partner comes, is the exchange rendered at once.

use std::any::Any;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use interceptor_sniff::http::{Exchange, Request, Response};
use interceptor_sniff::output::json::Json;
use interceptor_sniff::pod::PodTags;
use interceptor_sniff::shadow::diff::{generalise, Comparison};
use interceptor_sniff::shadow::pair::{Pair, Role, Unmatched};
use interceptor_sniff::shadow::{report, Observer};
use interceptor_sniff::sink::{Sink, Summary as RunSummary, TlsFlow};

use crate::events::{prefetch, Event, LazyEvent, Ring};
use crate::metrics::{self, Metrics, Recorder};
use crate::pods::workload_of;
use crate::summary::Summary;

/// How often the summary event is replaced.
const SUMMARY_EVERY: Duration = Duration::from_secs(1);
/// Exchanges remembered for pairing their events with the shadow pair's.
const MAX_REMEMBERED: usize = 20_000;
/// Evicted exchanges held to hand back to the parser later.
const SPARE: usize = 64;

thread_local! {
    /// The JSON writer of a connection thread (or of the output thread, for `--shadow`):
    /// made once per thread, as its buffers and date cache are worth keeping.
    static JSON: RefCell<Json<io::Sink>> = RefCell::new(Json::new(io::sink()));
}

/// Renders `ex` as `--json` does, with `"pod"` last when the capture is for pods.
fn render_exchange(ex: &Exchange, pods: Option<&PodTags>, out: &mut Vec<u8>) {
    JSON.with(|j| j.borrow_mut().render_exchange(ex, out));
    if let Some(pods) = pods {
        // The writer's `--pod` form ends the same way: `,"pod":…}`.
        if out.last() == Some(&b'}') {
            out.pop();
            out.extend_from_slice(b",\"pod\":");
            match pods.for_exchange(ex) {
                Some(t) => out.extend_from_slice(t.json()),
                None => out.extend_from_slice(b"null"),
            }
            out.push(b'}');
        }
    }
}

/// An exchange waiting in the ring to be rendered by whoever reads it.
struct LazyExchange {
    exchange: Exchange,
    pods: Option<Arc<PodTags>>,
}

impl LazyEvent for LazyExchange {
    fn render(&self, out: &mut Vec<u8>) {
        render_exchange(&self.exchange, self.pods.as_deref(), out);
    }

    fn size(&self) -> usize {
        let ex = &self.exchange;
        let msg = |headers: usize, body: usize| 256 + headers + body;
        msg(ex.request.headers.text().len(), ex.request.body.data.capacity())
            + ex.response.as_ref().map_or(0, |r| {
                msg(r.headers.text().len(), r.body.data.capacity())
            })
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }

    /// The messages, which the parser's pool empties when the exchange comes back.
    fn prefetch(&self) {
        let req: *const Request = &*self.exchange.request;
        prefetch(req);
        prefetch(req.cast::<u8>().wrapping_add(64));
        prefetch(req.cast::<u8>().wrapping_add(128));
        if let Some(r) = &self.exchange.response {
            let resp: *const Response = &**r;
            prefetch(resp);
            prefetch(resp.cast::<u8>().wrapping_add(64));
            prefetch(resp.cast::<u8>().wrapping_add(128));
        }
    }
}

/// What an exchange is known by until its pair is reported.
type Key = (SocketAddr, SocketAddr, SystemTime);

fn key(ex: &Exchange) -> Key {
    (ex.client, ex.server, ex.request.ts)
}

/// The sequence numbers of exchange events, for the pairs that refer to them; bounded,
/// the oldest forgotten first.
#[derive(Default)]
struct Remembered {
    seqs: HashMap<Key, u64>,
    order: VecDeque<Key>,
}

impl Remembered {
    fn insert(&mut self, k: Key, seq: u64) {
        if self.seqs.insert(k, seq).is_none() {
            self.order.push_back(k);
        }
        while self.order.len() > MAX_REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.seqs.remove(&old);
            }
        }
    }

    fn take(&mut self, k: &Key) -> Option<u64> {
        // Left in `order`; it falls out there in its turn.
        self.seqs.remove(k)
    }
}

/// What the sink and the shadow observer share (both run on the output thread).
struct Shared {
    ring: Arc<Ring>,
    recorder: Recorder,
    summary: Summary,
    remembered: Remembered,
    buf: Vec<u8>,
}

impl Shared {
    fn pair(&mut self, pair: &Pair, cmp: &Comparison) {
        let mut paths: Vec<String> = cmp
            .differences
            .iter()
            .map(|d| generalise(&d.location.to_string()))
            .collect();
        paths.sort();
        paths.dedup();
        self.recorder.pair(cmp.same(), &paths);
        self.summary.pair(cmp.same(), &paths);
        let primary = self.remembered.take(&key(&pair.primary));
        let shadow = self.remembered.take(&key(&pair.shadow));
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        report::write_pair_json(&mut buf, pair, cmp);
        if buf.last() == Some(&b'}') {
            buf.pop();
            for (k, seq) in [("primary_exchange_seq", primary), ("shadow_exchange_seq", shadow)] {
                if let Some(s) = seq {
                    let _ = write!(buf, ",\"{k}\":{s}");
                }
            }
            buf.push(b'}');
        }
        self.ring.push_json("shadow", &buf);
        self.buf = buf;
    }

    fn unmatched(&mut self, u: &Unmatched) {
        let role = match u.role {
            Role::Primary => "primary",
            Role::Shadow => "shadow",
        };
        self.recorder.unmatched(role);
        self.summary.unmatched();
        let mut v = report::unmatched_json(u);
        if let (Some(seq), Some(obj)) = (self.remembered.take(&key(&u.exchange)), v.as_object_mut()) {
            obj.insert("exchange_seq".into(), seq.into());
        }
        if let Ok(b) = serde_json::to_vec(&v) {
            self.ring.push_json("shadow_unmatched", &b);
        }
    }
}

/// Builds the sink and the shadow observer over one ring and one set of metrics.
pub struct Feed {
    shared: Arc<Mutex<Shared>>,
    ring: Arc<Ring>,
    pods: Option<Arc<PodTags>>,
    /// Workload names of the capture's pods, by address, for the metrics' labels.
    workloads: HashMap<IpAddr, String>,
}

impl Feed {
    /// `pods`: the capture's pods (`--pod`), which name the workloads in the metrics and
    /// tag the exchange events.
    pub fn new(ring: Arc<Ring>, metrics: &Metrics, pods: Option<Arc<PodTags>>) -> Feed {
        let workloads = pods
            .iter()
            .flat_map(|p| p.tags())
            .filter_map(|t| Some((t.pod.ip, workload_of(t.pod.name.as_deref()?).to_string())))
            .collect();
        Feed {
            shared: Arc::new(Mutex::new(Shared {
                ring: ring.clone(),
                recorder: metrics.recorder(),
                summary: Summary::default(),
                remembered: Remembered::default(),
                buf: Vec::new(),
            })),
            ring,
            pods,
            workloads,
        }
    }

    /// For [`interceptor_sniff::shadow::Shadow::observe`]: the pairs and unmatched
    /// exchanges go to the ring and the metrics too.
    pub fn observer(&self) -> Box<dyn Observer> {
        Box::new(ShadowFeed(self.shared.clone()))
    }

    /// The sink: `inner` is the output on stdout; `inner_keeps` says it keeps the
    /// exchanges it is given (the shadow comparison), so they are rendered at once.
    pub fn sink(self, inner: Box<dyn Sink>, inner_keeps: bool) -> ServeSink {
        ServeSink {
            inner,
            inner_keeps,
            feed: self,
            evicted: Vec::new(),
            spare: Vec::new(),
            last_summary: None,
            unclocked: 0,
            buf: Vec::new(),
        }
    }
}

struct ShadowFeed(Arc<Mutex<Shared>>);

impl Observer for ShadowFeed {
    fn pair(&mut self, pair: &Pair, cmp: &Comparison) {
        lock(&self.0).pair(pair, cmp);
    }

    fn unmatched(&mut self, u: &Unmatched) {
        lock(&self.0).unmatched(u);
    }
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The tee: stdout's output first, then the ring and the metrics.
pub struct ServeSink {
    inner: Box<dyn Sink>,
    inner_keeps: bool,
    feed: Feed,
    evicted: Vec<Arc<Event>>,
    spare: Vec<Exchange>,
    last_summary: Option<Instant>,
    /// Records since the clock was last read for the summary.
    unclocked: u32,
    buf: Vec<u8>,
}

impl ServeSink {
    /// Metrics and summary for one exchange; cheap (the labels are looked up, not built).
    fn account(&mut self, ex: &Exchange) {
        let w = &self.feed.workloads;
        let workload = |ip: IpAddr| w.get(&ip).map_or("", String::as_str);
        let latency_us = ex.latency_us();
        let req = metrics::Request {
            source_workload: workload(ex.client.ip()),
            destination_workload: workload(ex.server.ip()),
            host: ex.request.header("host").or_else(|| ex.request.header(":authority")),
            method: &ex.request.method,
            status: ex.response.as_ref().map(|r| r.status),
            latency: latency_us.map(Duration::from_micros),
        };
        let mut s = lock(&self.feed.shared);
        s.recorder.request(&req);
        s.summary.exchange(latency_us);
    }

    /// Replaces the summary event when a second has passed (or `force` says so); the
    /// clock is read every 64 records only.
    fn maybe_summary(&mut self, force: bool) {
        self.unclocked += 1;
        if !force && self.unclocked < 64 && self.last_summary.is_some() {
            return;
        }
        self.unclocked = 0;
        let due = self.last_summary.is_none_or(|t| t.elapsed() >= SUMMARY_EVERY);
        if force || due {
            self.last_summary = Some(Instant::now());
            let json = lock(&self.feed.shared).summary.json();
            self.feed.ring.set_summary(&json);
        }
    }

    /// Takes back what the ring evicted: exchanges go back to the parser, via the spare
    /// list when more than one came out at once.
    fn reclaim(&mut self) -> Option<Exchange> {
        for ev in self.evicted.drain(..) {
            if let Some(any) = Event::into_lazy(ev) {
                if let Ok(lazy) = any.downcast::<LazyExchange>() {
                    if self.spare.len() < SPARE {
                        self.spare.push(lazy.exchange);
                    }
                }
            }
        }
        self.spare.pop()
    }
}

impl Sink for ServeSink {
    fn request(&mut self, req: &Request, client: SocketAddr, server: SocketAddr) -> io::Result<()> {
        self.inner.request(req, client, server)
    }

    fn exchange(&mut self, ex: Exchange, show_request: bool) -> io::Result<Option<Exchange>> {
        self.account(&ex);
        if self.inner_keeps {
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            render_exchange(&ex, self.feed.pods.as_deref(), &mut buf);
            let k = key(&ex);
            let seq = self.feed.ring.push_json("exchange", &buf);
            self.buf = buf;
            lock(&self.feed.shared).remembered.insert(k, seq);
            let back = self.inner.exchange(ex, show_request)?;
            self.maybe_summary(false);
            return Ok(back);
        }
        let Some(ex) = self.inner.exchange(ex, show_request)? else {
            // The output kept it after all: nothing to show.
            self.maybe_summary(false);
            return Ok(None);
        };
        let lazy = Box::new(LazyExchange {
            exchange: ex,
            pods: self.feed.pods.clone(),
        });
        self.feed.ring.push_lazy("exchange", lazy, &mut self.evicted);
        self.maybe_summary(false);
        Ok(self.reclaim())
    }

    fn orphan(&mut self, resp: &Response, client: SocketAddr, server: SocketAddr) -> io::Result<()> {
        self.inner.orphan(resp, client, server)
    }

    fn tls(&mut self, t: &TlsFlow) -> io::Result<()> {
        self.inner.tls(t)
    }

    fn stats(&mut self, s: &RunSummary) -> io::Result<()> {
        // The shadow comparison reports what still waits here, so the summary comes after.
        let r = self.inner.stats(s);
        self.maybe_summary(true);
        r
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }

    fn idle(&mut self, now: SystemTime) -> io::Result<()> {
        let r = self.inner.idle(now);
        self.maybe_summary(false);
        r
    }

    fn shows_requests(&self) -> bool {
        self.inner.shows_requests()
    }
}
