//! `sniff --serve`: a sink that hands every record to the output chosen on the command line
//! (text, JSON or the shadow comparison on stdout) and also feeds the live view's event
//! ring and the metrics.
//!
//! The cost on the sniffer's output thread is kept to a push into the ring per exchange,
//! and nothing is copied but the bytes `--json` renders anyway:
//! - with `--json`, the writer tells where it renders each exchange object and hands over
//!   each buffer it has written out ([`Feed::json_tap`]): the ring keeps that buffer as one
//!   entry, a part per exchange object, and the writer goes on in the buffer of an entry
//!   the ring let go: rendered once, copied never, nothing allocated;
//! - with the text output (and the agent's, which prints nothing), the exchange the output
//!   hands back goes into the ring as it is, unrendered (a [`LazyEvent`]), and is rendered
//!   by the `/events` connection that reads it, with the very writer `--json` uses; the
//!   exchange the ring evicts goes back to the parser's pool;
//! - with `--shadow`, the comparison keeps each exchange until its partner comes, then
//!   hands the pair over ([`Feed::observer`]): it goes into the ring as one entry of up to
//!   three parts (its two exchanges, then the pair; each an event of the stream), rendered
//!   only when read, and its exchanges go back to the parser once its last part is
//!   evicted. An exchange still waiting half a second after it arrived
//!   ([`interceptor_sniff::shadow::WAITING_SHOWN_AFTER`]) is shown then, from a copy, and
//!   its pair or unmatched report refers to that event: a mirror mostly answers sooner, so
//!   the benchmark's mirrored traffic is never copied, and traffic that is not mirrored
//!   still shows up promptly;
//! - events and their payloads are taken back from the ring and filled again (`Slots`):
//!   a steady stream allocates nothing for them;
//! - the metrics: each exchange is counted on the capture thread, as the sniffer's writer
//!   hands it over (the sink's [`Tee`]): the exchange is still in that core's cache, and the
//!   output thread, the busier of the two, does none of it. Its label set is found among
//!   the last few by comparing the raw values (addresses, Host, method, status), without
//!   building a label or taking a lock; the counters and the summary are brought up to
//!   date every [`FLUSH_EVERY`] exchanges and with every batch the writer hands over.
//!   The workload names come from a [`Workloads`] directory, read only when a set is
//!   built; when the directory changes (the agent recorded a pod, or one went), its
//!   generation moves on and the sinks drop the sets they built before.

use std::any::Any;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use interceptor_sniff::hash::Seed;
use interceptor_sniff::http::{Exchange, Request, Response};
use interceptor_sniff::output::json::{push_u64, Json, Tap};
use interceptor_sniff::pod::PodTags;
use interceptor_sniff::shadow::diff::Comparison;
use interceptor_sniff::shadow::pair::{Pair, Unmatched};
use interceptor_sniff::shadow::{report, Observer};
use interceptor_sniff::sink::{Sink, Summary as RunSummary, Tee, TlsFlow};

use prometheus_client::metrics::counter::Counter;

use crate::events::{prefetch, Event, LazyEvent, Ring};
use crate::metrics::{self, DurationCounts, Durations, Metrics, Recorder};
use crate::pods::Workloads;
use crate::summary::Summary;

/// How often the summary event is replaced.
const SUMMARY_EVERY: Duration = Duration::from_secs(1);
/// Exchanges counted before the shared counters and the summary are brought up to date (a
/// writer batch holds 256 records).
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

/// About how many bytes an exchange holds, for the ring's memory bound.
fn exchange_size(ex: &Exchange) -> usize {
    let msg = |headers: usize, body: usize| 256 + headers + body;
    msg(
        ex.request.headers.text().len(),
        ex.request.body.data.capacity(),
    ) + ex
        .response
        .as_ref()
        .map_or(0, |r| msg(r.headers.text().len(), r.body.data.capacity()))
}

/// What an event of the ring shows, rendered when a browser reads it (as `--json` and
/// `--shadow --json` write it).
// A pair is moved in once and out once per event, never boxed apart.
#[allow(clippy::large_enum_variant)]
enum Shown {
    /// An exchange: one the output handed back, or a copy of one the comparison holds.
    Exchange(Exchange),
    /// A pair, in up to three parts: its exchanges not shown before (primary, shadow), then
    /// the pair, which refers to its exchanges' events.
    Pair { pair: Pair, cmp: Comparison },
    /// An exchange whose partner never came, in up to two parts: the exchange unless shown
    /// before, then its `shadow_unmatched` object, which refers to the exchange's event.
    Unmatched(Unmatched),
    /// Nothing: taken back, to be filled again.
    Nothing,
}

/// What a part of a [`FeedEvent`] is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    /// An exchange: 0 the pair's primary (or the one exchange), 1 its shadow.
    Exchange(usize),
    Pair,
    Unmatched,
}

struct FeedEvent {
    shown: Shown,
    /// The pods of the captures its exchanges were seen in (a pair's primary, then its
    /// shadow).
    pods: [Option<Arc<PodTags>>; 2],
    /// The events of its exchanges shown before, while they waited for a partner.
    earlier: [Option<u64>; 2],
}

impl FeedEvent {
    /// How many of its exchanges are parts of it (not shown before), of `n`.
    fn own(&self, n: usize) -> usize {
        self.earlier[..n].iter().filter(|e| e.is_none()).count()
    }

    fn parts(&self) -> usize {
        match &self.shown {
            Shown::Exchange(_) => 1,
            Shown::Pair { .. } => self.own(2) + 1,
            Shown::Unmatched(_) => self.own(1) + 1,
            Shown::Nothing => 0,
        }
    }

    /// Part `part`: its own exchanges first, in order, then the pair or unmatched report.
    fn part(&self, part: usize) -> Option<Part> {
        let (exchanges, last) = match &self.shown {
            Shown::Exchange(_) => return (part == 0).then_some(Part::Exchange(0)),
            Shown::Pair { .. } => (2, Part::Pair),
            Shown::Unmatched(_) => (1, Part::Unmatched),
            Shown::Nothing => return None,
        };
        let own = self.own(exchanges);
        if part < own {
            (0..exchanges)
                .filter(|&i| self.earlier[i].is_none())
                .nth(part)
                .map(Part::Exchange)
        } else {
            (part == own).then_some(last)
        }
    }

    /// The event number of exchange `i`, given that part `part` is numbered `seq`.
    fn exchange_seq(&self, i: usize, part: usize, seq: u64) -> u64 {
        if let Some(earlier) = self.earlier[i] {
            return earlier;
        }
        let first = seq.saturating_sub(part as u64);
        first + self.own(i) as u64
    }

    /// Exchange `i` and the pods of its capture.
    fn exchange(&self, i: usize) -> Option<(&Exchange, Option<&PodTags>)> {
        let ex = match (&self.shown, i) {
            (Shown::Exchange(ex), 0) => ex,
            (Shown::Pair { pair, .. }, 0) => &pair.primary,
            (Shown::Pair { pair, .. }, 1) => &pair.shadow,
            (Shown::Unmatched(u), 0) => &u.exchange,
            _ => return None,
        };
        Some((ex, self.pods.get(i)?.as_deref()))
    }
}

impl LazyEvent for FeedEvent {
    fn render(&self, part: usize, seq: u64, out: &mut Vec<u8>) {
        match (self.part(part), &self.shown) {
            (Some(Part::Exchange(i)), _) => {
                if let Some((ex, pods)) = self.exchange(i) {
                    render_exchange(ex, pods, out);
                }
            }
            (Some(Part::Pair), Shown::Pair { pair, cmp }) => {
                report::push_pair_json(out, pair, cmp);
                // The object ends with its `}`: the references to the exchange events go
                // before it.
                if out.last() == Some(&b'}') {
                    out.pop();
                    out.extend_from_slice(b",\"primary_exchange_seq\":");
                    push_u64(out, self.exchange_seq(0, part, seq));
                    out.extend_from_slice(b",\"shadow_exchange_seq\":");
                    push_u64(out, self.exchange_seq(1, part, seq));
                    out.push(b'}');
                }
            }
            (Some(Part::Unmatched), Shown::Unmatched(u)) => {
                let mut v = report::unmatched_json(u);
                if let Some(obj) = v.as_object_mut() {
                    let exchange_seq = self.exchange_seq(0, part, seq);
                    obj.insert("exchange_seq".into(), exchange_seq.into());
                }
                // A `Value` always serialises.
                let _ = serde_json::to_writer(&mut *out, &v);
            }
            _ => {}
        }
        if out.is_empty() {
            out.extend_from_slice(b"{}");
        }
    }

    fn kind(&self, part: usize) -> Option<&'static str> {
        Some(match self.part(part)? {
            Part::Exchange(_) => "exchange",
            Part::Pair => "shadow",
            Part::Unmatched => "shadow_unmatched",
        })
    }

    fn size(&self) -> usize {
        match &self.shown {
            Shown::Exchange(ex) => exchange_size(ex),
            Shown::Pair { pair, cmp } => {
                let differences = cmp.differences.len() + cmp.noise.len();
                exchange_size(&pair.primary) + exchange_size(&pair.shadow) + 128 * differences
            }
            Shown::Unmatched(u) => exchange_size(&u.exchange) + 256,
            Shown::Nothing => 0,
        }
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }

    /// The messages of an exchange the output handed back, which the parser's pool
    /// empties when the exchange comes back.
    fn prefetch(&self) {
        let Shown::Exchange(ex) = &self.shown else {
            return;
        };
        let req: *const Request = &*ex.request;
        prefetch(req);
        prefetch(req.cast::<u8>().wrapping_add(64));
        prefetch(req.cast::<u8>().wrapping_add(128));
        if let Some(r) = &ex.response {
            let resp: *const Response = &**r;
            prefetch(resp);
            prefetch(resp.cast::<u8>().wrapping_add(64));
            prefetch(resp.cast::<u8>().wrapping_add(128));
        }
    }
}

/// Evicted events and their payloads kept by a producer to be filled again; beyond, they
/// are freed.
const SLOTS: usize = 64;
/// Exchanges of evicted events kept for the parsers to reuse.
const SPENT: usize = 1024;

fn keep(spent: &mut Vec<Exchange>, ex: Exchange) {
    if spent.len() < SPENT {
        spent.push(ex);
    }
}

/// A producer's evicted events and their payloads, taken back to be filled again (in a
/// steady stream a push allocates nothing).
// The payloads stay boxed: the ring holds them as `Box<dyn LazyEvent>`.
#[allow(clippy::vec_box)]
#[derive(Default)]
struct Slots {
    events: Vec<Arc<Event>>,
    payloads: Vec<Box<FeedEvent>>,
}

impl Slots {
    fn event(
        &mut self,
        shown: Shown,
        pods: [Option<Arc<PodTags>>; 2],
        earlier: [Option<u64>; 2],
    ) -> Box<FeedEvent> {
        match self.payloads.pop() {
            Some(mut ev) => {
                ev.shown = shown;
                ev.pods = pods;
                ev.earlier = earlier;
                ev
            }
            None => Box::new(FeedEvent {
                shown,
                pods,
                earlier,
            }),
        }
    }

    /// Takes back the events in `evicted`, and the exchanges they showed into `spent`, once
    /// their last part has gone. An event a connection is rendering just now is left to it.
    fn reclaim(&mut self, evicted: &mut Vec<Arc<Event>>, spent: &mut Vec<Exchange>) {
        for mut ev in evicted.drain(..) {
            let Some(payload) = Event::take_lazy(&mut ev) else {
                continue;
            };
            if self.events.len() < SLOTS {
                self.events.push(ev);
            }
            let Ok(mut payload) = payload.downcast::<FeedEvent>() else {
                continue;
            };
            payload.pods = [None, None];
            payload.earlier = [None, None];
            match std::mem::replace(&mut payload.shown, Shown::Nothing) {
                Shown::Exchange(ex) => keep(spent, ex),
                Shown::Pair { pair, .. } => {
                    keep(spent, pair.primary);
                    keep(spent, pair.shadow);
                }
                Shown::Unmatched(u) => keep(spent, u.exchange),
                Shown::Nothing => {}
            }
            if self.payloads.len() < SLOTS {
                self.payloads.push(payload);
            }
        }
    }
}

/// What the sinks and the shadow observer share (the sniffer's output thread, or the
/// agent's captures and its pairing stage).
struct Shared {
    ring: Arc<Ring>,
    recorder: Recorder,
    summary: Summary,
    /// The pods of the captures feeding the ring, by interface: a pair's exchange events
    /// say which pod each exchange was seen for, as the capture's own events do.
    pods: HashMap<String, Weak<PodTags>>,
    slots: Slots,
    evicted: Vec<Arc<Event>>,
    /// Exchanges of evicted events, for the sinks to hand back (`Sink::spent`).
    spent: Vec<Exchange>,
    /// The events of exchanges shown while they waited for a partner, for their pair or
    /// unmatched report to refer to.
    waited: Waited,
    /// When the summary event was last replaced.
    last_summary: Option<Instant>,
    /// Pairs not yet in the metrics and the summary.
    run: PairRun,
}

/// Pairs reported in a row with the same verdict and differing places (most pairs repeat
/// the last one's), counted into the metrics and the summary in one go when that changes
/// or they are next brought up to date.
#[derive(Default)]
struct PairRun {
    same: bool,
    places: Vec<String>,
    pairs: u64,
}

/// What an exchange is known by until its pair is reported.
type Key = (SocketAddr, SocketAddr, SystemTime);

fn key(ex: &Exchange) -> Key {
    (ex.client, ex.server, ex.request.ts)
}

/// Exchanges shown while they waited (`Observer::waiting`), by key, with their events'
/// numbers; bounded, the oldest forgotten first (then their pair shows them again).
#[derive(Default)]
struct Waited {
    seqs: HashMap<Key, u64, Seed>,
    order: VecDeque<Key>,
}

/// Exchanges remembered in [`Waited`] at most.
const MAX_WAITED: usize = 20_000;

impl Waited {
    fn insert(&mut self, k: Key, seq: u64) {
        if self.seqs.insert(k, seq).is_none() {
            self.order.push_back(k);
        }
        while self.order.len() > MAX_WAITED {
            if let Some(old) = self.order.pop_front() {
                self.seqs.remove(&old);
            }
        }
    }

    /// The event of `ex`, if it was shown while it waited.
    fn take(&mut self, ex: &Exchange) -> Option<u64> {
        if self.seqs.is_empty() {
            // Mirrored traffic mostly pairs before anything is shown: no hashing then.
            self.order.clear();
            return None;
        }
        // Left in `order`; it falls out there in its turn.
        self.seqs.remove(&key(ex))
    }
}

impl Shared {
    /// Replaces the summary event when a second has passed (or `force` says so); asked
    /// after each batch of counts and at each flush (every batch of a live capture) or
    /// idle moment, so the clock is read rarely.
    fn maybe_summary(&mut self, force: bool) {
        self.count_run();
        let due = self
            .last_summary
            .is_none_or(|t| t.elapsed() >= SUMMARY_EVERY);
        if force || due {
            self.last_summary = Some(Instant::now());
            self.ring.set_summary(&self.summary.json());
        }
    }

    /// Records the pods of a capture.
    fn register(&mut self, tags: &Arc<PodTags>) {
        self.pods.retain(|_, t| t.strong_count() > 0);
        for t in tags.tags() {
            self.pods
                .insert(t.pod.interface.clone(), Arc::downgrade(tags));
        }
    }

    /// The pods of the capture `ex` was seen in: by its interface, or the only capture's.
    fn pods_of(&self, ex: &Exchange) -> Option<Arc<PodTags>> {
        if self.pods.is_empty() {
            return None;
        }
        let by_interface = ex.interface.as_deref().and_then(|i| self.pods.get(i));
        let only = || {
            let mut all = self.pods.values();
            let first = all.next()?;
            all.all(|t| t.ptr_eq(first)).then_some(first)
        };
        by_interface.or_else(only)?.upgrade()
    }

    fn pair(&mut self, pair: Pair, cmp: Comparison, places: &[String]) {
        let same = cmp.same();
        let run = &mut self.run;
        if run.pairs == 0 || run.same != same || run.places != places {
            self.count_run();
            self.run.same = same;
            places.clone_into(&mut self.run.places);
        }
        self.run.pairs += 1;
        let pods = [self.pods_of(&pair.primary), self.pods_of(&pair.shadow)];
        let earlier = [
            self.waited.take(&pair.primary),
            self.waited.take(&pair.shadow),
        ];
        let event = self.slots.event(Shown::Pair { pair, cmp }, pods, earlier);
        self.push(event);
    }

    /// Counts the run of pairs into the metrics and the summary.
    fn count_run(&mut self) {
        let run = &mut self.run;
        if run.pairs > 0 {
            self.recorder.pairs(run.same, &run.places, run.pairs);
            self.summary.pairs(run.same, &run.places, run.pairs);
            run.pairs = 0;
        }
    }

    fn unmatched(&mut self, u: Unmatched) {
        self.recorder.unmatched(u.role.as_str());
        self.summary.unmatched();
        let pods = [self.pods_of(&u.exchange), None];
        let earlier = [self.waited.take(&u.exchange), None];
        let event = self.slots.event(Shown::Unmatched(u), pods, earlier);
        self.push(event);
    }

    /// Shows a copy of an exchange the comparison still holds, made in the buffers of one
    /// the ring let go.
    fn waiting(&mut self, ex: &Exchange) {
        let copy = match self.spent.pop() {
            Some(mut c) => {
                c.clone_from(ex);
                c
            }
            None => ex.clone(),
        };
        let pods = [self.pods_of(ex), None];
        let event = self.slots.event(Shown::Exchange(copy), pods, [None, None]);
        let seq = self.push(event);
        self.waited.insert(key(ex), seq);
    }

    fn push(&mut self, event: Box<FeedEvent>) -> u64 {
        let parts = event.parts();
        let seq = self.ring.push_lazy(
            "exchange",
            parts,
            event,
            &mut self.slots.events,
            &mut self.evicted,
        );
        self.slots.reclaim(&mut self.evicted, &mut self.spent);
        seq
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
        let shared = Feed::shared(&ring, metrics);
        Feed::with_shared(shared, ring, pods, workloads)
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
            pods: HashMap::new(),
            slots: Slots::default(),
            evicted: Vec::new(),
            spent: Vec::new(),
            waited: Waited::default(),
            last_summary: None,
            run: PairRun::default(),
        }))
    }

    fn with_shared(
        shared: Arc<Mutex<Shared>>,
        ring: Arc<Ring>,
        pods: Option<Arc<PodTags>>,
        workloads: Arc<Workloads>,
    ) -> Feed {
        if let Some(tags) = &pods {
            lock(&shared).register(tags);
        }
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
            objects: Vec::new(),
            events: Vec::new(),
            chunks: Vec::new(),
            evicted: Vec::new(),
        })
    }

    /// For [`interceptor_sniff::shadow::Shadow::observe`]: the pairs and unmatched
    /// exchanges go to the ring and the metrics too, and with them the events of their
    /// exchanges (the comparison keeps each exchange until its partner comes; one still
    /// waiting after [`interceptor_sniff::shadow::WAITING_SHOWN_AFTER`] is shown then).
    pub fn observer(&self) -> Box<dyn Observer> {
        Box::new(ShadowFeed(self.shared.clone()))
    }

    /// The sink: `inner` is the output on stdout. The exchanges it hands back go into the
    /// ring (those it keeps, the shadow comparison's, come through [`Feed::observer`]).
    pub fn sink(self, inner: Box<dyn Sink>) -> ServeSink {
        let counting = Counting {
            shared: self.shared.clone(),
            workloads: self.workloads.clone(),
            generation: self.workloads.generation(),
            sets: Vec::with_capacity(CACHED_SETS),
            next_set: 0,
            pending_exchanges: 0,
            pending_latencies: Vec::with_capacity(FLUSH_EVERY as usize),
        };
        ServeSink {
            inner,
            tapped: self.tapped.load(Ordering::Relaxed),
            feed: self,
            slots: Slots::default(),
            evicted: Vec::new(),
            spare: Vec::new(),
            counting: Some(counting),
        }
    }
}

/// The `--json` writer's tap: each buffer the writer has written out goes into the ring as
/// one entry, whose parts are the exchange objects in it (the very bytes stdout got), and
/// the writer goes on in a buffer of an entry the ring let go.
// The chunks stay boxed: the ring holds them as `Box<dyn LazyEvent>`.
#[allow(clippy::vec_box)]
struct RingTap {
    ring: Arc<Ring>,
    /// Where the exchange objects are in the buffer being written.
    objects: Vec<Range<usize>>,
    /// Emptied entries and their buffers, to fill again.
    events: Vec<Arc<Event>>,
    chunks: Vec<Box<JsonChunk>>,
    evicted: Vec<Arc<Event>>,
}

/// Buffers of the `--json` writer kept for it to write into; beyond, they are freed.
const CHUNKS: usize = 4;

/// A buffer the `--json` writer wrote out, with the exchange objects in it: one part each.
struct JsonChunk {
    bytes: Vec<u8>,
    objects: Vec<Range<usize>>,
}

impl LazyEvent for JsonChunk {
    fn render(&self, part: usize, _seq: u64, out: &mut Vec<u8>) {
        let object = self
            .objects
            .get(part)
            .and_then(|r| self.bytes.get(r.clone()));
        out.extend_from_slice(object.unwrap_or(b"{}"));
    }

    fn size(&self) -> usize {
        self.bytes.capacity() + self.objects.capacity() * std::mem::size_of::<Range<usize>>()
    }

    fn one_line(&self) -> bool {
        true
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}

impl Tap for RingTap {
    fn exchange(&mut self, at: Range<usize>) {
        self.objects.push(at);
    }

    fn written(&mut self, buf: &mut Vec<u8>) {
        if self.objects.is_empty() {
            buf.clear();
            return;
        }
        let mut chunk = self.chunks.pop().unwrap_or_else(|| {
            Box::new(JsonChunk {
                bytes: Vec::with_capacity(buf.capacity()),
                objects: Vec::new(),
            })
        });
        // The writer goes on in the chunk's (empty) buffer; the chunk takes the full one.
        std::mem::swap(&mut chunk.bytes, buf);
        std::mem::swap(&mut chunk.objects, &mut self.objects);
        let parts = chunk.objects.len();
        self.ring.push_lazy(
            "exchange",
            parts,
            chunk,
            &mut self.events,
            &mut self.evicted,
        );
        for mut ev in self.evicted.drain(..) {
            let Some(payload) = Event::take_lazy(&mut ev) else {
                continue;
            };
            if let Ok(mut chunk) = payload.downcast::<JsonChunk>() {
                if self.chunks.len() < CHUNKS {
                    chunk.bytes.clear();
                    chunk.objects.clear();
                    self.chunks.push(chunk);
                    self.events.push(ev);
                }
            }
        }
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
    duration: Durations,
    pending: u64,
    pending_durations: DurationCounts,
}

impl CachedSet {
    fn flush(&mut self) {
        if self.pending > 0 {
            self.requests.inc_by(self.pending);
            self.pending = 0;
        }
        self.duration.add(&mut self.pending_durations);
    }
}

struct ShadowFeed(Arc<Mutex<Shared>>);

impl Observer for ShadowFeed {
    fn pair(&mut self, pair: Pair, cmp: Comparison, places: &[String]) {
        lock(&self.0).pair(pair, cmp, places);
    }

    fn unmatched(&mut self, u: Unmatched) {
        lock(&self.0).unmatched(u);
    }

    fn waiting(&mut self, ex: &Exchange) {
        lock(&self.0).waiting(ex);
    }
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The tee: stdout's output first, then the ring and the metrics.
pub struct ServeSink {
    inner: Box<dyn Sink>,
    /// The `--json` writer pushes the exchanges into the ring (see [`Feed::json_tap`]).
    tapped: bool,
    feed: Feed,
    slots: Slots,
    evicted: Vec<Arc<Event>>,
    /// Exchanges of evicted events, to hand back to the parser.
    spare: Vec<Exchange>,
    /// The metrics' count of each exchange, done here unless the sniffer's writer took it
    /// to run on the capture thread ([`Sink::tee`]).
    counting: Option<Counting>,
}

/// Counts each exchange into the metrics and the summary: a [`Tee`], so on the capture
/// thread (see the module's notes).
struct Counting {
    shared: Arc<Mutex<Shared>>,
    workloads: Arc<Workloads>,
    /// The generation of the workload directory that named the label sets in `sets`.
    generation: u64,
    /// The label sets seen last, most traffic repeats a few.
    sets: Vec<CachedSet>,
    /// Where the next set found goes in `sets` once it is full.
    next_set: usize,
    /// Exchanges and latencies not yet in the shared summary.
    pending_exchanges: u32,
    pending_latencies: Vec<u64>,
}

impl Counting {
    /// Metrics and summary for one exchange: the label set is found by comparing raw
    /// values with the last few; the shared state is only touched every `FLUSH_EVERY`.
    fn account(&mut self, ex: &Exchange) {
        let latency_us = ex.latency_us();
        let host = host_of(&ex.request);
        let (client, server) = (ex.client.ip(), ex.server.ip());
        let status = ex.response.as_ref().map(|r| r.status);
        let method = &*ex.request.method;
        let generation = self.workloads.generation();
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
            set.pending_durations.observe_us(l);
            self.pending_latencies.push(l);
        }
        self.pending_exchanges += 1;
        if self.pending_exchanges >= FLUSH_EVERY {
            self.flush_counts();
            lock(&self.shared).maybe_summary(false);
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
        let names = self.workloads.read();
        let req = metrics::Request {
            source_workload: names.get(client).unwrap_or(""),
            destination_workload: names.get(server).unwrap_or(""),
            host,
            method,
            status,
            latency: None,
        };
        let (requests, duration) = lock(&self.shared).recorder.handles(&req);
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
            pending_durations: DurationCounts::default(),
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
        let mut s = lock(&self.shared);
        s.summary
            .exchanges(self.pending_exchanges, &self.pending_latencies);
        drop(s);
        self.pending_exchanges = 0;
        self.pending_latencies.clear();
    }
}

impl Tee for Counting {
    fn exchange(&mut self, ex: &Exchange) {
        self.account(ex);
    }

    fn flush(&mut self) {
        self.flush_counts();
        lock(&self.shared).maybe_summary(false);
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        self.flush_counts();
    }
}

impl Sink for ServeSink {
    fn request(&mut self, req: &Request, client: SocketAddr, server: SocketAddr) -> io::Result<()> {
        self.inner.request(req, client, server)
    }

    fn exchange(&mut self, ex: Exchange, show_request: bool) -> io::Result<Option<Exchange>> {
        if let Some(c) = self.counting.as_mut() {
            c.account(&ex);
        }
        let Some(ex) = self.inner.exchange(ex, show_request)? else {
            // The output keeps it (the shadow comparison): its event comes with its pair.
            return Ok(None);
        };
        if self.tapped {
            // The writer put it in the ring as it wrote it.
            return Ok(Some(ex));
        }
        let pods = [self.feed.pods.clone(), None];
        let event = self.slots.event(Shown::Exchange(ex), pods, [None, None]);
        self.feed.ring.push_lazy(
            "exchange",
            1,
            event,
            &mut self.slots.events,
            &mut self.evicted,
        );
        self.slots.reclaim(&mut self.evicted, &mut self.spare);
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
        // The shadow comparison reports what still waits here, so the summary comes after
        // (the writer has handed over every exchange by now, and its tee counted them).
        let r = self.inner.stats(s);
        self.flush_counts();
        lock(&self.feed.shared).maybe_summary(true);
        r
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_counts();
        lock(&self.feed.shared).maybe_summary(false);
        self.inner.flush()
    }

    fn idle(&mut self, now: SystemTime) -> io::Result<()> {
        self.flush_counts();
        let r = self.inner.idle(now);
        lock(&self.feed.shared).maybe_summary(false);
        r
    }

    fn shows_requests(&self) -> bool {
        self.inner.shows_requests()
    }

    fn spent(&mut self, out: &mut Vec<Exchange>) {
        self.inner.spent(out);
        out.append(&mut self.spare);
        let mut shared = lock(&self.feed.shared);
        if out.is_empty() {
            // The usual case with `--shadow`: the vectors trade places, nothing is moved.
            std::mem::swap(out, &mut shared.spent);
        } else {
            out.append(&mut shared.spent);
        }
    }

    fn tee(&mut self) -> Option<Box<dyn Tee>> {
        self.counting.take().map(|c| Box::new(c) as Box<dyn Tee>)
    }
}

impl ServeSink {
    /// Brings the metrics and the summary up to date with what this sink counted itself.
    fn flush_counts(&mut self) {
        if let Some(c) = self.counting.as_mut() {
            c.flush_counts();
        }
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

    /// The label sets a sink counting by itself has cached.
    fn sets(sink: &ServeSink) -> usize {
        sink.counting.as_ref().map_or(0, |c| c.sets.len())
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
        let mut sink = node.for_pods(Some(webapp_tags())).sink(Box::new(Discard));

        // webapp calls an address no pod is recorded at yet.
        for _ in 0..3 {
            sink.exchange(exchange(WEBAPP, RATINGS), false).unwrap();
        }
        sink.flush().unwrap();
        assert_eq!(requests(&registry), counts(&[("webapp", "unknown", 3)]));
        assert_eq!(sets(&sink), 1, "one label set, cached");

        // The same directory again (a reconcile with nothing new) keeps the cached set.
        assert!(!directory.replace([(ip(WEBAPP), "webapp-7c8d9f6b4d-q8w4n")]));
        sink.exchange(exchange(WEBAPP, RATINGS), false).unwrap();
        assert_eq!(sets(&sink), 1);

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
        let mut later = node.for_pods(Some(webapp_tags())).sink(Box::new(Discard));
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
        let mut sink = feed.sink(Box::new(Discard));
        // As the sniffer's writer does: the tee counts on the capture thread, before the
        // sink gets each exchange; the sink then counts nothing itself.
        let mut tee = sink.tee().expect("a tee");
        assert!(sink.tee().is_none(), "taken once");
        for ex in [exchange(WEBAPP, RATINGS), exchange(RATINGS, WEBAPP)] {
            tee.exchange(&ex);
            sink.exchange(ex, false).unwrap();
        }
        assert_eq!(
            requests(&registry),
            counts(&[("unknown", "webapp", 0), ("webapp", "unknown", 0)]),
            "the series exist, their counts wait for the flush"
        );
        tee.flush();
        sink.flush().unwrap();
        assert_eq!(
            requests(&registry),
            counts(&[("unknown", "webapp", 1), ("webapp", "unknown", 1)])
        );
        assert_eq!(sink.feed.workloads.generation(), generation);
        // The summary event counts them too.
        sink.stats(&RunSummary::default()).unwrap();
        let summary = lock(&sink.feed.shared).summary.json();
        let summary: serde_json::Value = serde_json::from_slice(&summary).unwrap();
        assert_eq!(summary["exchanges"], 2);
    }

    /// `GET /items` to `host`, id `id`, sent at `ms` past the base time, answered `body`.
    fn mirrored(host: &str, id: &str, ms: u64, body: &str) -> Exchange {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut ex = exchange(WEBAPP, RATINGS);
        ex.client = SocketAddr::new(ip(WEBAPP), 40_000 + ms as u16);
        ex.request.ts = t + Duration::from_millis(ms);
        ex.request.target.clear();
        ex.request.target.push_str("/items");
        ex.request.headers = Default::default();
        ex.request.headers.push("Host", host);
        ex.request.headers.push("x-request-id", id);
        if let Some(r) = ex.response.as_mut() {
            r.ts = ex.request.ts + Duration::from_millis(2);
            r.body.data.extend_from_slice(body.as_bytes());
            r.body.len = body.len() as u64;
        }
        ex
    }

    /// Header `name` of an exchange event's request (headers are `[name, value]` pairs).
    fn header<'v>(ex: &'v serde_json::Value, name: &str) -> &'v str {
        let headers = ex["request"]["headers"].as_array();
        let found = headers.into_iter().flatten().find(|h| h[0] == name);
        found.and_then(|h| h[1].as_str()).unwrap_or("")
    }

    /// The ring's events as (seq, kind, object).
    fn stream(ring: &Ring) -> Vec<(u64, String, serde_json::Value)> {
        let (mut c, mut s) = (ring.start(None), u64::MAX);
        let b = ring.wait(&mut c, &mut s, 1000, Duration::ZERO);
        b.events
            .iter()
            .map(|e| {
                let mut out = Vec::new();
                e.json(&mut out);
                let v = serde_json::from_slice(&out).unwrap();
                (e.seq(), e.kind().to_string(), v)
            })
            .collect()
    }

    #[test]
    fn a_pair_shows_its_exchanges_with_it_and_one_that_waits_is_shown_alone_first() {
        use interceptor_sniff::shadow::{pair, report, Shadow};
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let ring = Arc::new(Ring::new(Limits::default()));
        let feed = Feed::new(ring.clone(), &metrics, None);
        let reporter = report::Reporter::new(io::sink(), report::Style::Json);
        let mut shadow = Shadow::new(pair::Config::default(), Default::default(), reporter)
            .observe(feed.observer());

        // A pair whose halves come close together: one entry of three events, nothing
        // shown before it.
        shadow.push(mirrored("catalog", "a", 0, "[1]")).unwrap();
        shadow
            .push(mirrored("catalog-shadow", "a", 5, "[1]"))
            .unwrap();
        // A primary whose mirror is late: once the capture clock has moved on past
        // WAITING_SHOWN_AFTER, it is shown alone, and its pair refers to that event.
        shadow.push(mirrored("catalog", "b", 10, "[2]")).unwrap();
        assert_eq!(stream(&ring).len(), 3, "b waits, not yet shown");
        shadow.push(mirrored("catalog", "c", 600, "[3]")).unwrap();
        let events = stream(&ring);
        assert_eq!(events.len(), 4, "b shown alone");
        assert_eq!(header(&events[3].2, "x-request-id"), "b");
        shadow
            .push(mirrored("catalog-shadow", "b", 700, "[2,0]"))
            .unwrap();
        let events = stream(&ring);
        let kinds: Vec<(u64, &str)> = events.iter().map(|(s, k, _)| (*s, k.as_str())).collect();
        assert_eq!(
            kinds,
            [
                (1, "exchange"),
                (2, "exchange"),
                (3, "shadow"),
                (4, "exchange"),
                (5, "exchange"),
                (6, "shadow"),
            ]
        );
        let (_, _, first) = &events[2];
        assert_eq!(
            (
                first["primary_exchange_seq"].as_u64(),
                first["shadow_exchange_seq"].as_u64()
            ),
            (Some(1), Some(2))
        );
        assert_eq!(header(&events[0].2, "host"), "catalog");
        assert_eq!(header(&events[1].2, "host"), "catalog-shadow");
        // 4: b, shown while it waited; 5: its mirror, with the pair.
        assert_eq!(header(&events[3].2, "x-request-id"), "b");
        assert_eq!(header(&events[4].2, "host"), "catalog-shadow");
        let (_, _, late) = &events[5];
        assert_eq!(late["verdict"], "different");
        assert_eq!(
            (
                late["primary_exchange_seq"].as_u64(),
                late["shadow_exchange_seq"].as_u64()
            ),
            (Some(4), Some(5))
        );

        // c never pairs: shown while it waited, then reported unmatched, referring to it.
        shadow.push(mirrored("catalog", "d", 1200, "[4]")).unwrap();
        let events = stream(&ring);
        assert_eq!(events.len(), 7, "c shown alone");
        assert_eq!(header(&events[6].2, "x-request-id"), "c");
        shadow.finish().unwrap();
        let events = stream(&ring);
        let c = events
            .iter()
            .find(|(_, k, v)| k == "exchange" && header(v, "x-request-id") == "c")
            .map(|(s, _, _)| *s)
            .unwrap();
        let unmatched: Vec<u64> = events
            .iter()
            .filter(|(_, k, _)| k == "shadow_unmatched")
            .map(|(_, _, v)| v["exchange_seq"].as_u64().unwrap())
            .collect();
        assert_eq!(unmatched.len(), 2, "c and d");
        assert!(unmatched.contains(&c));
        // Each exchange was shown once.
        let ids: Vec<(String, String)> = events
            .iter()
            .filter(|(_, k, _)| k == "exchange")
            .map(|(_, _, v)| (header(v, "x-request-id").into(), header(v, "host").into()))
            .collect();
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!((ids.len(), unique.len()), (6, 6), "{ids:?}");
    }

    #[test]
    fn pairs_in_a_row_are_counted_when_the_run_changes_or_the_sink_flushes() {
        use interceptor_sniff::shadow::{pair, report, Shadow};
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let ring = Arc::new(Ring::new(Limits::default()));
        let feed = Feed::new(ring, &metrics, None);
        let reporter = report::Reporter::new(io::sink(), report::Style::Json);
        let mut shadow = Shadow::new(pair::Config::default(), Default::default(), reporter)
            .observe(feed.observer());
        let mut sink = feed.sink(Box::new(Discard));
        let pairs_text = |registry: &Registry| {
            let mut t = String::new();
            prometheus_client::encoding::text::encode(&mut t, registry).unwrap();
            t.lines()
                .filter(|l| l.starts_with("interceptor_shadow_"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let mut at = 0;
        let mut mirror = |id: &str, primary: &str, shadow_body: &str| {
            at += 10;
            let p = mirrored("catalog", id, at, primary);
            let s = mirrored("catalog-shadow", id, at + 1, shadow_body);
            [p, s]
        };
        // Two the same, then two that differ in the same place.
        for (id, a, b) in [
            ("a", "[1]", "[1]"),
            ("b", "[1]", "[1]"),
            ("c", "[2]", "[2,0]"),
            ("d", "[2]", "[2,0]"),
        ] {
            for ex in mirror(id, a, b) {
                shadow.push(ex).unwrap();
            }
        }
        // The run of the same was counted as the verdict changed; the other, by the flush.
        let t = pairs_text(&registry);
        assert!(
            t.contains(&"interceptor_shadow_pairs_total{verdict=\"same\"} 2".to_string()),
            "{t:?}"
        );
        sink.flush().unwrap();
        let t = pairs_text(&registry);
        assert!(
            t.contains(&"interceptor_shadow_pairs_total{verdict=\"different\"} 2".to_string()),
            "{t:?}"
        );
        assert!(
            t.iter().any(
                |l| l.starts_with("interceptor_shadow_differences_total{") && l.ends_with(" 2")
            ),
            "{t:?}"
        );
    }

    #[test]
    fn the_json_writer_s_buffers_are_the_ring_s_exchange_events() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        // Room for fewer events than written: the oldest buffers are evicted whole and
        // written into again.
        let ring = Arc::new(Ring::new(Limits {
            events: 300,
            bytes: usize::MAX,
        }));
        let feed = Feed::new(ring.clone(), &metrics, None);
        let json = Json::new(io::sink()).tap(feed.json_tap());
        let mut sink = feed.sink(Box::new(json));
        // What `--json` writes for each, rendered apart.
        let mut reference = Json::new(io::sink());
        let mut lines = Vec::new();
        for i in 0..1000u16 {
            let mut ex = exchange(WEBAPP, RATINGS);
            ex.client.set_port(i);
            ex.response
                .as_mut()
                .unwrap()
                .body
                .data
                .extend_from_slice(&[b'x'; 100]);
            let mut line = Vec::new();
            reference.render_exchange(&ex, &mut line);
            lines.push(serde_json::from_slice::<serde_json::Value>(&line).unwrap());
            let back = sink.exchange(ex, false).unwrap();
            assert!(back.is_some(), "handed back for reuse");
        }
        sink.flush().unwrap();
        let events = stream(&ring);
        assert_eq!(events.len(), 300);
        // The last events are the last exchanges, object for object, numbered in order.
        let (last_seq, _, _) = events.last().unwrap();
        assert_eq!(*last_seq, 1000);
        for ((seq, kind, mut v), line) in events.into_iter().rev().zip(lines.iter().rev()) {
            assert_eq!(kind, "exchange");
            assert_eq!(v["seq"].take(), seq);
            v.as_object_mut().unwrap().remove("seq");
            assert_eq!(&v, line, "event {seq}");
        }
    }
}
