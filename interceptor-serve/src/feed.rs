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
//!   The workload names come from a [`Workloads`] directory, read only when a set is
//!   built; when the directory changes (the agent recorded a pod, or one went), its
//!   generation moves on and the sinks drop the sets they built before.

use std::any::Any;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use interceptor_sniff::hash::Seed;
use interceptor_sniff::http::{Exchange, Request, Response};
use interceptor_sniff::output::json::{push_u64, Json, Tap};
use interceptor_sniff::pod::PodTags;
use interceptor_sniff::shadow::diff::{Comparison, DifferingPlaces};
use interceptor_sniff::shadow::pair::{Pair, Role, Unmatched};
use interceptor_sniff::shadow::{report, Observer};
use interceptor_sniff::sink::{Sink, Summary as RunSummary, TlsFlow};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use crate::events::{prefetch, Event, LazyEvent, Recycler, Ring};
use crate::metrics::{self, Metrics, Recorder};
use crate::pods::Workloads;
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
    seqs: HashMap<Key, u64, Seed>,
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
            (&b",\"primary_exchange_seq\":"[..], primary),
            (b",\"shadow_exchange_seq\":", shadow),
        ] {
            if let Some(s) = seq {
                refs.extend_from_slice(k);
                push_u64(&mut refs, s);
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
    /// Workload names by address, for the metrics' labels: the `--pod` pods', or the node
    /// agent's directory of its pods, shared by all its feeds and kept current.
    workloads: Arc<Workloads>,
    /// [`Feed::json_tap`] was called: the `--json` writer feeds the ring itself.
    tapped: AtomicBool,
}

impl Feed {
    /// `pods`: the capture's pods (`--pod`), which name the workloads in the metrics and
    /// tag the exchange events.
    pub fn new(ring: Arc<Ring>, metrics: &Metrics, pods: Option<Arc<PodTags>>) -> Feed {
        let workloads = Arc::new(Workloads::from_tags(pods.as_deref()));
        Feed::with_shared(Feed::shared(&ring, metrics), ring, pods, workloads)
    }

    /// A feed whose metrics name workloads from `workloads`, a directory its owner keeps
    /// current (the node agent, from its records); the feeds made by [`Feed::for_pods`]
    /// share it, so a pod recorded after their captures started is named in their series.
    pub fn with_workloads(ring: Arc<Ring>, metrics: &Metrics, workloads: Arc<Workloads>) -> Feed {
        Feed::with_shared(Feed::shared(&ring, metrics), ring, None, workloads)
    }

    fn shared(ring: &Arc<Ring>, metrics: &Metrics) -> Arc<Mutex<Shared>> {
        Arc::new(Mutex::new(Shared {
            ring: ring.clone(),
            recorder: metrics.recorder(),
            summary: Summary::default(),
            remembered: Remembered::default(),
            places: DifferingPlaces::default(),
            buf: Vec::new(),
            recycler: Recycler::default(),
        }))
    }

    fn with_shared(
        shared: Arc<Mutex<Shared>>,
        ring: Arc<Ring>,
        pods: Option<Arc<PodTags>>,
        workloads: Arc<Workloads>,
    ) -> Feed {
        Feed {
            shared,
            ring,
            pods,
            workloads,
            tapped: AtomicBool::new(false),
        }
    }

    /// Another feed into the same ring, metrics and summary, for a capture of other pods
    /// (the node agent runs one capture per pod): `pods` tag its exchange events; the
    /// metrics name workloads from this feed's directory, shared.
    pub fn for_pods(&self, pods: Option<Arc<PodTags>>) -> Feed {
        Feed::with_shared(
            self.shared.clone(),
            self.ring.clone(),
            pods,
            self.workloads.clone(),
        )
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
            generation: self.workloads.generation(),
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
    /// The generation of the workload directory that named the label sets in `sets`.
    generation: u64,
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
        let generation = self.feed.workloads.generation();
        if generation != self.generation {
            self.forget_sets(generation);
        }
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

    /// The workload directory changed: the cached label sets may name an address
    /// differently now (a pod recorded since, or gone). Their counts go to the sets they
    /// were made for; the next exchanges build theirs anew.
    fn forget_sets(&mut self, generation: u64) {
        for s in &mut self.sets {
            s.flush();
        }
        self.sets.clear();
        self.next_set = 0;
        self.generation = generation;
    }

    /// A label set not among the last few: its metrics from the shared recorder (which
    /// keeps the bound on label sets), remembered in place of the oldest. The workloads
    /// are read from the directory now, under its read lock.
    fn new_set(
        &mut self,
        client: IpAddr,
        server: IpAddr,
        host: Option<&str>,
        method: &str,
        status: Option<u16>,
    ) -> usize {
        let names = self.feed.workloads.read();
        let req = metrics::Request {
            source_workload: names.get(client).unwrap_or(""),
            destination_workload: names.get(server).unwrap_or(""),
            host,
            method,
            status,
            latency: None,
        };
        let (requests, duration) = lock(&self.feed.shared).recorder.handles(&req);
        drop(names);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Limits;
    use interceptor_sniff::http::pool;
    use interceptor_sniff::pod::Pod;
    use interceptor_sniff::sink::Discard;
    use prometheus_client::registry::Registry;

    const WEBAPP: &str = "10.0.0.1";
    const RATINGS: &str = "10.0.0.2";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// `GET /` from `client` to `server`:8000, answered 200.
    fn exchange(client: &str, server: &str) -> Exchange {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut request = pool::request(t);
        request.method.push_str("GET");
        request.target.push('/');
        request.headers.push("Host", "ratings.shop:8000");
        let mut response = pool::response(t + Duration::from_millis(2));
        response.status = 200;
        Exchange {
            client: SocketAddr::new(ip(client), 40_000),
            server: SocketAddr::new(ip(server), 8000),
            interface: None,
            request,
            response: Some(response),
        }
    }

    fn webapp_tags() -> Arc<PodTags> {
        Arc::new(PodTags::new(vec![Pod {
            ip: ip(WEBAPP),
            name: Some("webapp-7c8d9f6b4d-q8w4n".into()),
            namespace: Some("shop".into()),
            interface: "veth-webapp".into(),
        }]))
    }

    /// `interceptor_requests_total` by (source, destination workload), from /metrics' text.
    fn requests(registry: &Registry) -> Vec<(String, String, u64)> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        let label = |l: &str, name: &str| {
            let v = l.split(&format!("{name}=\"")).nth(1)?;
            Some(v.split('"').next()?.to_string())
        };
        let mut out: Vec<(String, String, u64)> = text
            .lines()
            .filter(|l| l.starts_with("interceptor_requests_total{"))
            .filter_map(|l| {
                Some((
                    label(l, "source_workload")?,
                    label(l, "destination_workload")?,
                    l.rsplit(' ').next()?.parse().ok()?,
                ))
            })
            .collect();
        out.sort();
        out
    }

    fn counts(v: &[(&str, &str, u64)]) -> Vec<(String, String, u64)> {
        v.iter()
            .map(|(s, d, n)| (s.to_string(), d.to_string(), *n))
            .collect()
    }

    #[test]
    fn a_pod_recorded_after_the_capture_started_is_named_in_its_series() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let ring = Arc::new(Ring::new(Limits::default()));
        let directory = Arc::new(Workloads::new());
        directory.replace([(ip(WEBAPP), "webapp-7c8d9f6b4d-q8w4n")]);
        // The agent's way: one feed over the node's directory, one per capture from it.
        let node = Feed::with_workloads(ring, &metrics, directory.clone());
        let mut sink = node
            .for_pods(Some(webapp_tags()))
            .sink(Box::new(Discard), false);

        // webapp calls an address no pod is recorded at yet.
        for _ in 0..3 {
            sink.exchange(exchange(WEBAPP, RATINGS), false).unwrap();
        }
        sink.flush().unwrap();
        assert_eq!(requests(&registry), counts(&[("webapp", "unknown", 3)]));
        assert_eq!(sink.sets.len(), 1, "one label set, cached");

        // The same directory again (a reconcile with nothing new) keeps the cached set.
        assert!(!directory.replace([(ip(WEBAPP), "webapp-7c8d9f6b4d-q8w4n")]));
        sink.exchange(exchange(WEBAPP, RATINGS), false).unwrap();
        assert_eq!(sink.sets.len(), 1);

        // The ratings pod is recorded there: the cached set named it `unknown`, the next
        // exchanges name it, the earlier counts stay where they were counted.
        assert!(directory.replace([
            (ip(WEBAPP), "webapp-7c8d9f6b4d-q8w4n"),
            (ip(RATINGS), "ratings-v1-7d9c5f8b4-k2x7p"),
        ]));
        for _ in 0..2 {
            sink.exchange(exchange(WEBAPP, RATINGS), false).unwrap();
        }
        sink.exchange(exchange(RATINGS, WEBAPP), false).unwrap();
        sink.flush().unwrap();
        assert_eq!(
            requests(&registry),
            counts(&[
                ("ratings-v1", "webapp", 1),
                ("webapp", "ratings-v1", 2),
                ("webapp", "unknown", 4),
            ])
        );

        // A capture started now names it too, and so does one made before the change.
        let mut later = node
            .for_pods(Some(webapp_tags()))
            .sink(Box::new(Discard), false);
        later.exchange(exchange(WEBAPP, RATINGS), false).unwrap();
        later.flush().unwrap();
        assert_eq!(
            requests(&registry)
                .into_iter()
                .find(|(_, d, _)| d == "ratings-v1"),
            Some(("webapp".into(), "ratings-v1".into(), 3))
        );

        // The pod goes with its record: its address is unknown again.
        assert!(directory.replace([(ip(WEBAPP), "webapp-7c8d9f6b4d-q8w4n")]));
        sink.exchange(exchange(WEBAPP, RATINGS), false).unwrap();
        sink.flush().unwrap();
        assert_eq!(
            requests(&registry),
            counts(&[
                ("ratings-v1", "webapp", 1),
                ("webapp", "ratings-v1", 3),
                ("webapp", "unknown", 5),
            ])
        );
    }

    #[test]
    fn the_pods_of_sniff_name_their_workloads() {
        // `sniff --serve --pod …`: the pods given, fixed.
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let ring = Arc::new(Ring::new(Limits::default()));
        let feed = Feed::new(ring, &metrics, Some(webapp_tags()));
        let generation = feed.workloads.generation();
        let mut sink = feed.sink(Box::new(Discard), false);
        sink.exchange(exchange(WEBAPP, RATINGS), false).unwrap();
        sink.exchange(exchange(RATINGS, WEBAPP), false).unwrap();
        sink.flush().unwrap();
        assert_eq!(
            requests(&registry),
            counts(&[("unknown", "webapp", 1), ("webapp", "unknown", 1)])
        );
        assert_eq!(sink.feed.workloads.generation(), generation);
        assert_eq!(sink.sets.len(), 2);
    }
}
