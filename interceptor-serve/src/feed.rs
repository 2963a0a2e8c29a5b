//! `sniff --serve`: a sink that hands every record to the output chosen on the command line
//! (text, JSON or the shadow comparison on stdout) and also feeds the live view's event
//! ring and the metrics.
//!
//! The cost on the sniffer's output thread is kept to a few comparisons, a copy and an
//! atomic or two per exchange:
//! - with `--json`, the writer shows the sink each exchange object it renders
//!   ([`Feed::json_tap`]) and the ring keeps a copy of those bytes, written over the memory
//!   of the event it evicts ([`Ring::push_parts`]): rendered once, nothing allocated;
//! - with the text output (and the agent's, which prints nothing), the exchange goes into
//!   the ring unrendered (a [`LazyEvent`]) and is rendered by the `/events` connection that
//!   reads it, with the very writer `--json` uses; the exchange the ring evicts goes back to
//!   the parser's pool;
//! - with `--shadow`, whose comparison keeps the exchange until its partner comes, the ring
//!   gets a lazy copy, made in the buffers of an exchange it evicted; a pair's event is the
//!   object the comparison's report renders (once, for stdout's `--json` and the ring);
//! - the metrics: each exchange's label set is found among the last few by comparing the
//!   raw values (addresses, Host, method, status), without building a label or taking a
//!   lock; the counters and the summary are brought up to date every [`FLUSH_EVERY`]
//!   exchanges and whenever the output is flushed (every batch of a live capture) or idle.

use std::any::Any;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use interceptor_sniff::http::{Exchange, Request, Response};
use interceptor_sniff::output::json::{Json, Tap};
use interceptor_sniff::pod::PodTags;
use interceptor_sniff::shadow::diff::{Comparison, DifferingPlaces};
use interceptor_sniff::shadow::pair::{Pair, Role, Unmatched};
use interceptor_sniff::shadow::{report, Observer};
use interceptor_sniff::sink::{Sink, Summary as RunSummary, TlsFlow};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use crate::events::{prefetch, Event, LazyEvent, Recycler, Ring};
use crate::metrics::{self, Metrics, Recorder};
use crate::pods::workload_of;
use crate::summary::Summary;

/// How often the summary event is replaced.
const SUMMARY_EVERY: Duration = Duration::from_secs(1);
/// Exchanges remembered for pairing their events with the shadow pair's.
const MAX_REMEMBERED: usize = 20_000;
/// Evicted exchanges held to hand back to the parser later.
const SPARE: usize = 64;
/// Exchanges counted on the output thread before the shared counters and the summary are
/// brought up to date (a writer batch holds 256 records).
pub const FLUSH_EVERY: u32 = 256;
/// Label sets a sink remembers with their metrics, found by comparing raw values.
const CACHED_SETS: usize = 8;

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

/// The Host header (or HTTP/2's `:authority`), as the metrics label it: found by a scan
/// that compares lengths first, as every exchange passes here.
fn host_of(req: &Request) -> Option<&str> {
    let mut authority = None;
    for (name, value) in req.headers.iter() {
        match name.len() {
            4 if name.eq_ignore_ascii_case("host") => return Some(value),
            10 if authority.is_none() && name.eq_ignore_ascii_case(":authority") => {
                authority = Some(value)
            }
            _ => {}
        }
    }
    authority
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
        msg(
            ex.request.headers.text().len(),
            ex.request.body.data.capacity(),
        ) + ex
            .response
            .as_ref()
            .map_or(0, |r| msg(r.headers.text().len(), r.body.data.capacity()))
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
    /// The differing places of the pairs, generalised for the metrics and the summary.
    places: DifferingPlaces,
    buf: Vec<u8>,
    recycler: Recycler,
}

impl Shared {
    fn pair(&mut self, pair: &Pair, cmp: &Comparison, json: &[u8]) {
        let paths = self.places.of(cmp);
        self.recorder.pair(cmp.same(), paths);
        self.summary.pair(cmp.same(), paths);
        let primary = self.remembered.take(&key(&pair.primary));
        let shadow = self.remembered.take(&key(&pair.shadow));
        // `json` ends with the object's `}`: the references to the exchange events go
        // before it.
        let (head, close) = json.split_at(json.len().saturating_sub(1));
        let mut refs = std::mem::take(&mut self.buf);
        refs.clear();
        for (k, seq) in [
            ("primary_exchange_seq", primary),
            ("shadow_exchange_seq", shadow),
        ] {
            if let Some(s) = seq {
                let _ = write!(refs, ",\"{k}\":{s}");
            }
        }
        self.ring
            .push_parts("shadow", &[head, &refs, close], &mut self.recycler);
        self.buf = refs;
    }

    fn unmatched(&mut self, u: &Unmatched) {
        let role = match u.role {
            Role::Primary => "primary",
            Role::Shadow => "shadow",
        };
        self.recorder.unmatched(role);
        self.summary.unmatched();
        let mut v = report::unmatched_json(u);
        if let (Some(seq), Some(obj)) = (self.remembered.take(&key(&u.exchange)), v.as_object_mut())
        {
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
    /// [`Feed::json_tap`] was called: the `--json` writer feeds the ring itself.
    tapped: AtomicBool,
}

impl Feed {
    /// `pods`: the capture's pods (`--pod`), which name the workloads in the metrics and
    /// tag the exchange events.
    pub fn new(ring: Arc<Ring>, metrics: &Metrics, pods: Option<Arc<PodTags>>) -> Feed {
        let shared = Arc::new(Mutex::new(Shared {
            ring: ring.clone(),
            recorder: metrics.recorder(),
            summary: Summary::default(),
            remembered: Remembered::default(),
            places: DifferingPlaces::default(),
            buf: Vec::new(),
            recycler: Recycler::default(),
        }));
        Feed::with_shared(shared, ring, pods)
    }

    fn with_shared(
        shared: Arc<Mutex<Shared>>,
        ring: Arc<Ring>,
        pods: Option<Arc<PodTags>>,
    ) -> Feed {
        let workloads = pods
            .iter()
            .flat_map(|p| p.tags())
            .filter_map(|t| Some((t.pod.ip, workload_of(t.pod.name.as_deref()?).to_string())))
            .collect();
        Feed {
            shared,
            ring,
            pods,
            workloads,
            tapped: AtomicBool::new(false),
        }
    }

    /// Another feed into the same ring, metrics and summary, for a capture of other pods
    /// (the node agent runs one capture per pod).
    pub fn for_pods(&self, pods: Option<Arc<PodTags>>) -> Feed {
        Feed::with_shared(self.shared.clone(), self.ring.clone(), pods)
    }

    /// For [`Json::tap`]: the `--json` writer then hands the ring the bytes of each
    /// exchange object it writes, and the sink made from this feed leaves exchanges to it.
    /// (The writer renders `"pod"` itself, with [`Json::with_pods`].)
    pub fn json_tap(&self) -> Box<dyn Tap> {
        self.tapped.store(true, Ordering::Relaxed);
        Box::new(RingTap {
            ring: self.ring.clone(),
            recycler: Recycler::default(),
        })
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
            tapped: self.tapped.load(Ordering::Relaxed),
            feed: self,
            evicted: Vec::new(),
            spare: Vec::new(),
            last_summary: None,
            sets: Vec::with_capacity(CACHED_SETS),
            next_set: 0,
            pending_exchanges: 0,
            pending_latencies: Vec::with_capacity(FLUSH_EVERY as usize),
        }
    }
}

/// The `--json` writer's tap: a copy of each exchange object goes into the ring.
struct RingTap {
    ring: Arc<Ring>,
    recycler: Recycler,
}

impl Tap for RingTap {
    fn exchange(&mut self, _: &Exchange, object: &[u8]) {
        self.ring
            .push_parts("exchange", &[object, b"}"], &mut self.recycler);
    }
}

/// A request label set as the sink last saw it: the raw values it was made from, and its
/// metrics. Counts wait in `pending` until the next flush.
struct CachedSet {
    client: IpAddr,
    server: IpAddr,
    status: Option<u16>,
    method: Box<str>,
    host: Option<Box<str>>,
    requests: Counter,
    duration: Histogram,
    pending: u64,
}

impl CachedSet {
    fn flush(&mut self) {
        if self.pending > 0 {
            self.requests.inc_by(self.pending);
            self.pending = 0;
        }
    }
}

struct ShadowFeed(Arc<Mutex<Shared>>);

impl Observer for ShadowFeed {
    fn pair(&mut self, pair: &Pair, cmp: &Comparison, json: &[u8]) {
        lock(&self.0).pair(pair, cmp, json);
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
    /// The `--json` writer pushes the exchanges into the ring (see [`Feed::json_tap`]).
    tapped: bool,
    feed: Feed,
    evicted: Vec<Arc<Event>>,
    spare: Vec<Exchange>,
    last_summary: Option<Instant>,
    /// The label sets seen last, most traffic repeats a few.
    sets: Vec<CachedSet>,
    /// Where the next set found goes in `sets` once it is full.
    next_set: usize,
    /// Exchanges and latencies not yet in the shared summary.
    pending_exchanges: u32,
    pending_latencies: Vec<u64>,
}

impl ServeSink {
    /// Metrics and summary for one exchange: the label set is found by comparing raw
    /// values with the last few; the shared state is only touched every `FLUSH_EVERY`.
    fn account(&mut self, ex: &Exchange) {
        let latency_us = ex.latency_us();
        let host = host_of(&ex.request);
        let (client, server) = (ex.client.ip(), ex.server.ip());
        let status = ex.response.as_ref().map(|r| r.status);
        let method = &*ex.request.method;
        let hit = self.sets.iter().position(|c| {
            c.status == status
                && c.client == client
                && c.server == server
                && *c.method == *method
                && c.host.as_deref() == host
        });
        let i = match hit {
            Some(i) => i,
            None => self.new_set(client, server, host, method, status),
        };
        let set = &mut self.sets[i];
        set.pending += 1;
        if let Some(l) = latency_us {
            set.duration.observe(Duration::from_micros(l).as_secs_f64());
            self.pending_latencies.push(l);
        }
        self.pending_exchanges += 1;
        if self.pending_exchanges >= FLUSH_EVERY {
            self.flush_counts();
            self.maybe_summary(false);
        }
    }

    /// A label set not among the last few: its metrics from the shared recorder (which
    /// keeps the bound on label sets), remembered in place of the oldest.
    fn new_set(
        &mut self,
        client: IpAddr,
        server: IpAddr,
        host: Option<&str>,
        method: &str,
        status: Option<u16>,
    ) -> usize {
        let w = &self.feed.workloads;
        let workload = |ip: IpAddr| w.get(&ip).map_or("", String::as_str);
        let req = metrics::Request {
            source_workload: workload(client),
            destination_workload: workload(server),
            host,
            method,
            status,
            latency: None,
        };
        let (requests, duration) = lock(&self.feed.shared).recorder.handles(&req);
        let set = CachedSet {
            client,
            server,
            status,
            method: method.into(),
            host: host.map(Into::into),
            requests,
            duration,
            pending: 0,
        };
        if self.sets.len() < CACHED_SETS {
            self.sets.push(set);
            return self.sets.len() - 1;
        }
        let i = self.next_set;
        self.next_set = (i + 1) % CACHED_SETS;
        self.sets[i].flush();
        self.sets[i] = set;
        i
    }

    /// Brings the shared counters and the summary up to date.
    fn flush_counts(&mut self) {
        for s in &mut self.sets {
            s.flush();
        }
        if self.pending_exchanges == 0 {
            return;
        }
        let mut s = lock(&self.feed.shared);
        s.summary
            .exchanges(self.pending_exchanges, &self.pending_latencies);
        drop(s);
        self.pending_exchanges = 0;
        self.pending_latencies.clear();
    }

    /// Replaces the summary event when a second has passed (or `force` says so); asked
    /// every `FLUSH_EVERY` exchanges and at each flush (every batch of a live capture) or
    /// idle moment, so the clock is read rarely.
    fn maybe_summary(&mut self, force: bool) {
        let due = self
            .last_summary
            .is_none_or(|t| t.elapsed() >= SUMMARY_EVERY);
        if force || due {
            self.last_summary = Some(Instant::now());
            self.flush_counts();
            let json = lock(&self.feed.shared).summary.json();
            self.feed.ring.set_summary(&json);
        }
    }

    /// Takes back the exchanges of the events the ring evicted, into `spare`: for the
    /// parser to reuse, or for the next copy.
    fn reclaim(&mut self) {
        for ev in self.evicted.drain(..) {
            if let Some(any) = Event::into_lazy(ev) {
                if let Ok(lazy) = any.downcast::<LazyExchange>() {
                    if self.spare.len() < SPARE {
                        self.spare.push(lazy.exchange);
                    }
                }
            }
        }
    }
}

impl Sink for ServeSink {
    fn request(&mut self, req: &Request, client: SocketAddr, server: SocketAddr) -> io::Result<()> {
        self.inner.request(req, client, server)
    }

    fn exchange(&mut self, ex: Exchange, show_request: bool) -> io::Result<Option<Exchange>> {
        self.account(&ex);
        if self.inner_keeps {
            // The comparison keeps `ex` until its partner comes: the ring gets a copy, made
            // in the buffers of one it evicted, and rendered only if a browser reads it.
            let mut shared = lock(&self.feed.shared);
            // The pairs' events evict exchanges too.
            let evicted_by_pairs = || {
                let lazy = shared
                    .recycler
                    .take_lazy()?
                    .downcast::<LazyExchange>()
                    .ok()?;
                Some(lazy.exchange)
            };
            let copy = match self.spare.pop().or_else(evicted_by_pairs) {
                Some(mut c) => {
                    c.clone_from(&ex);
                    c
                }
                None => ex.clone(),
            };
            let lazy = Box::new(LazyExchange {
                exchange: copy,
                pods: self.feed.pods.clone(),
            });
            let seq = self
                .feed
                .ring
                .push_lazy("exchange", lazy, &mut self.evicted);
            shared.remembered.insert(key(&ex), seq);
            drop(shared);
            self.reclaim();
            return self.inner.exchange(ex, show_request);
        }
        let Some(ex) = self.inner.exchange(ex, show_request)? else {
            // The output kept it after all: nothing to show.
            return Ok(None);
        };
        if self.tapped {
            // The writer put it in the ring as it wrote it.
            return Ok(Some(ex));
        }
        let lazy = Box::new(LazyExchange {
            exchange: ex,
            pods: self.feed.pods.clone(),
        });
        self.feed
            .ring
            .push_lazy("exchange", lazy, &mut self.evicted);
        self.reclaim();
        Ok(self.spare.pop())
    }

    fn orphan(
        &mut self,
        resp: &Response,
        client: SocketAddr,
        server: SocketAddr,
    ) -> io::Result<()> {
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
        self.flush_counts();
        self.maybe_summary(false);
        self.inner.flush()
    }

    fn idle(&mut self, now: SystemTime) -> io::Result<()> {
        self.flush_counts();
        let r = self.inner.idle(now);
        self.maybe_summary(false);
        r
    }

    fn shows_requests(&self) -> bool {
        self.inner.shows_requests()
    }

    fn spent(&mut self, out: &mut Vec<Exchange>) {
        self.inner.spent(out);
    }
}

impl Drop for ServeSink {
    fn drop(&mut self) {
        self.flush_counts();
    }
}
