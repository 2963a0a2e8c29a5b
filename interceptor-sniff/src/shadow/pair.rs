//! Pairs each mirrored (shadow) exchange with its primary.
//!
//! A shadow is recognised by its Host (or `:authority`) ending in `-shadow` before the port.
//! Partners are found by `x-request-id`; when one side has none, by method, target and body
//! within a short window. Exchanges come in whatever order their connections finish, from
//! any connection or interface, so both sides wait in pending tables until the other comes.
//! Those tables are bounded by count and by age (measured on the capture clock, the newest
//! request time seen): what falls out is reported as unmatched, so a shadow that never answers
//! costs nothing lasting.

use std::collections::hash_map;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};
use std::time::{Duration, SystemTime};

use super::diff::is_shadow_host;
use crate::hash::{ends, Seed};
use crate::http::{Exchange, Headers};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Most exchanges waiting for a partner; the oldest is dropped beyond.
    pub max_pending: usize,
    /// How long an exchange waits for its partner.
    pub max_age: Duration,
    /// How far apart a primary and a shadow without a common request id may be.
    pub window: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_pending: 10_000,
            max_age: Duration::from_secs(30),
            window: Duration::from_secs(2),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Primary,
    Shadow,
}

impl Role {
    fn idx(self) -> usize {
        self as usize
    }
    fn other(self) -> Role {
        match self {
            Role::Primary => Role::Shadow,
            Role::Shadow => Role::Primary,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Shadow => "shadow",
        }
    }
}

/// Whether `ex` is a shadow, by its Host, `:authority` or absolute-form target.
pub fn role_of(ex: &Exchange) -> Role {
    Fields::of(&ex.request.headers).role(&ex.request.target)
}

/// The request fields pairing reads, each the first of its name (as `Headers::get` finds
/// it), found in one pass over the headers.
#[derive(Default)]
struct Fields<'a> {
    host: Option<&'a str>,
    authority: Option<&'a str>,
    request_id: Option<&'a str>,
}

impl<'a> Fields<'a> {
    fn of(headers: &'a Headers) -> Fields<'a> {
        const HOST: Folded = Folded::new("host");
        const AUTHORITY: Folded = Folded::new(":authority");
        const REQUEST_ID: Folded = Folded::new("x-request-id");
        let mut f = Fields::default();
        // By the fields' places in the text: names need no check of character boundaries.
        let text = headers.text();
        for [n0, n1, v0, v1] in headers.spans() {
            let Some(n) = text.as_bytes().get(n0..n1) else {
                continue;
            };
            let slot = if HOST.matches(n) {
                &mut f.host
            } else if REQUEST_ID.matches(n) {
                &mut f.request_id
            } else if AUTHORITY.matches(n) {
                &mut f.authority
            } else {
                continue;
            };
            if slot.is_none() {
                *slot = Some(text.get(v0..v1).unwrap_or_default());
            }
            // `:authority` counts only without a Host.
            if f.host.is_some() && f.request_id.is_some() {
                break;
            }
        }
        f
    }

    fn role(&self, target: &str) -> Role {
        let authority = self.host.or(self.authority).or_else(|| {
            let rest = target.split_once("://")?.1;
            Some(rest.split_once('/').map_or(rest, |(a, _)| a))
        });
        match authority {
            Some(a) if is_shadow_host(trim(a)) => Role::Shadow,
            _ => Role::Primary,
        }
    }

    /// The request id, trimmed; None when absent or blank.
    fn id(&self) -> Option<&'a str> {
        self.request_id.map(trim).filter(|v| !v.is_empty())
    }
}

/// `s.trim()`, without decoding characters when it starts and ends with visible ASCII (the
/// usual value).
fn trim(s: &str) -> &str {
    let visible = |c: Option<&u8>| c.is_some_and(u8::is_ascii_graphic);
    if visible(s.as_bytes().first()) && visible(s.as_bytes().last()) {
        s
    } else {
        s.trim()
    }
}

/// An ASCII lower-case string of 4 to 16 bytes to compare others with in any case: its
/// first and last eight bytes (four when shorter; they overlap), with the case bit of each
/// letter. A string of its length equals it, in any case, when its words with those bits
/// set are these: two comparisons instead of one per byte.
struct Folded {
    len: usize,
    words: [u64; 2],
    case: [u64; 2],
}

impl Folded {
    const fn new(lower: &str) -> Folded {
        let b = lower.as_bytes();
        let n = b.len();
        assert!(n >= 4 && n <= 16);
        let w = if n >= 8 { 8 } else { 4 };
        let mut words = [0u64; 2];
        let mut case = [0u64; 2];
        let mut k = 0;
        while k < 2 {
            let from = if k == 0 { 0 } else { n - w };
            let mut i = 0;
            while i < w {
                let c = b[from + i];
                assert!(!c.is_ascii_uppercase());
                words[k] |= (c as u64) << (8 * i);
                if c.is_ascii_lowercase() {
                    case[k] |= 0x20 << (8 * i);
                }
                i += 1;
            }
            k += 1;
        }
        Folded {
            len: n,
            words,
            case,
        }
    }

    fn matches(&self, s: &[u8]) -> bool {
        s.len() == self.len && {
            let [a, b] = ends(s);
            a | self.case[0] == self.words[0] && b | self.case[1] == self.words[1]
        }
    }
}

/// How a pair was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchedBy {
    RequestId,
    /// Method, target and body, close in time.
    Shape,
}

#[derive(Clone, Debug)]
pub struct Pair {
    pub primary: Exchange,
    pub shadow: Exchange,
    /// The primary's request id (or else the shadow's), when either has one.
    pub request_id: Option<String>,
    pub by: MatchedBy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Waited longer than `max_age`.
    Expired,
    /// Pushed out by newer exchanges beyond `max_pending`.
    Evicted,
    /// Still waiting when the capture ended.
    Ended,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Expired => "expired",
            Reason::Evicted => "evicted",
            Reason::Ended => "ended",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Unmatched {
    pub role: Role,
    pub exchange: Exchange,
    pub reason: Reason,
}

// A pair is twice an unmatched exchange; events live only between push and report, so
// boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Event {
    Pair(Pair),
    Unmatched(Unmatched),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub primaries: u64,
    pub shadows: u64,
    pub pairs: u64,
    /// Primaries whose shadow never came.
    pub unmatched_primaries: u64,
    /// Shadows whose primary never came.
    pub unmatched_shadows: u64,
    /// Of the unmatched, those pushed out by the count bound.
    pub evicted: u64,
    /// The same exchange captured twice (on two interfaces of `any`), dropped.
    pub duplicates: u64,
}

type Table<V> = HashMap<u64, V, Seed>;

/// Where a pending exchange is: its arrival number (unique: a key to a slot reused since
/// finds nothing) and its slot in `Pending`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key {
    seq: u64,
    slot: usize,
}

/// The pending exchanges under one table key, oldest first. Nearly every table key has
/// one, held without a buffer of its own.
enum Queue {
    One(Key),
    Many(VecDeque<Key>),
}

impl Queue {
    /// The oldest for which `f` holds.
    fn find(&self, mut f: impl FnMut(Key) -> bool) -> Option<Key> {
        match self {
            Queue::One(key) => Some(*key).filter(|&k| f(k)),
            Queue::Many(q) => q.iter().copied().find(|&k| f(k)),
        }
    }

    fn push(&mut self, key: Key) {
        match self {
            Queue::One(first) => *self = Queue::Many(VecDeque::from([*first, key])),
            Queue::Many(q) => q.push_back(key),
        }
    }

    /// Takes `key` out; true when none is left.
    fn remove(&mut self, key: Key) -> bool {
        match self {
            Queue::One(only) => *only == key,
            Queue::Many(q) => {
                // In arrival order, so sorted.
                if let Ok(i) = q.binary_search_by_key(&key.seq, |k| k.seq) {
                    q.remove(i);
                }
                q.is_empty()
            }
        }
    }
}

fn index(table: &mut Table<Queue>, hash: u64, key: Key) {
    match table.entry(hash) {
        hash_map::Entry::Occupied(mut o) => o.get_mut().push(key),
        hash_map::Entry::Vacant(v) => {
            v.insert(Queue::One(key));
        }
    }
}

fn unindex(table: &mut Table<Queue>, hash: u64, key: Key) {
    if let hash_map::Entry::Occupied(mut o) = table.entry(hash) {
        if o.get_mut().remove(key) {
            o.remove();
        }
    }
}

struct Entry {
    role: Role,
    exchange: Exchange,
    id: Option<String>,
    shape: u64,
    ts: SystemTime,
}

/// No slot: the ends of the arrival list.
const NIL: usize = usize::MAX;

struct Slot {
    seq: u64,
    /// None when free.
    entry: Option<Entry>,
    prev: usize,
    next: usize,
}

/// The pending exchanges in arrival order (the first is the oldest), in slots reused once
/// free and linked in that order: adding one, finding one and taking one out of the middle
/// are a few steps each, where a map by arrival number searched and moved entries. The
/// slots grow to the most pending at once (`Config::max_pending` at most).
struct Pending {
    slots: Vec<Slot>,
    free: Vec<usize>,
    first: usize,
    last: usize,
    len: usize,
}

impl Pending {
    fn new() -> Pending {
        Pending {
            slots: Vec::new(),
            free: Vec::new(),
            first: NIL,
            last: NIL,
            len: 0,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    /// Appends `entry`, the newest, numbered `seq`.
    fn push(&mut self, seq: u64, entry: Entry) -> Key {
        let slot = Slot {
            seq,
            entry: Some(entry),
            prev: self.last,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        };
        match self.last {
            NIL => self.first = i,
            last => self.slots[last].next = i,
        }
        self.last = i;
        self.len += 1;
        Key { seq, slot: i }
    }

    fn get(&self, key: Key) -> Option<&Entry> {
        let s = self.slots.get(key.slot)?;
        s.entry.as_ref().filter(|_| s.seq == key.seq)
    }

    /// The oldest.
    fn first(&self) -> Option<(Key, &Entry)> {
        let s = self.slots.get(self.first)?;
        let key = Key {
            seq: s.seq,
            slot: self.first,
        };
        Some((key, s.entry.as_ref()?))
    }

    fn remove(&mut self, key: Key) -> Option<Entry> {
        let s = self.slots.get_mut(key.slot).filter(|s| s.seq == key.seq)?;
        let entry = s.entry.take()?;
        let (prev, next) = (s.prev, s.next);
        match prev {
            NIL => self.first = next,
            p => self.slots[p].next = next,
        }
        match next {
            NIL => self.last = prev,
            n => self.slots[n].prev = prev,
        }
        self.free.push(key.slot);
        self.len -= 1;
        Some(entry)
    }
}

/// Exchanges already seen, to drop the second copy of one captured on two interfaces.
const SEEN_CAPACITY: usize = 8192;

pub struct Matcher {
    cfg: Config,
    next_seq: u64,
    pending: Pending,
    /// By the hash of the request id: entries hold the ids themselves, compared on lookup,
    /// so the table holds no copy and a collision costs one comparison more.
    by_id: [Table<Queue>; 2],
    by_shape: [Table<Queue>; 2],
    /// `by_shape` for those without a request id, the only ones that one with an id pairs
    /// with by shape: it need not pass over every other waiting with the same shape.
    by_shape_anon: [Table<Queue>; 2],
    seen: Table<(SystemTime, Option<SystemTime>)>,
    seen_order: VecDeque<u64>,
    seed: Seed,
    clock: SystemTime,
    stats: Stats,
    /// See [`Matcher::report_waiting`].
    waiting_after: Option<Duration>,
    /// The exchanges not yet reported as waiting, in arrival order (keys of those paired or
    /// dropped since are passed over).
    unreported: VecDeque<Key>,
    /// Nothing in `unreported` is due before this (the oldest that was still waiting when
    /// last looked at); the clock is compared with it first.
    next_due: SystemTime,
}

/// Keys kept for [`Matcher::waiting`] at most: beyond, the oldest are let go (they are
/// shown with their pair or as unmatched instead).
const MAX_UNREPORTED: usize = 1 << 16;

impl Matcher {
    pub fn new(cfg: Config) -> Matcher {
        Matcher::seeded(cfg, Seed::random())
    }

    fn seeded(cfg: Config, seed: Seed) -> Matcher {
        let table = || HashMap::with_hasher(seed);
        Matcher {
            cfg,
            next_seq: 0,
            pending: Pending::new(),
            by_id: [table(), table()],
            by_shape: [table(), table()],
            by_shape_anon: [table(), table()],
            seen: HashMap::with_hasher(seed),
            seen_order: VecDeque::new(),
            seed,
            clock: SystemTime::UNIX_EPOCH,
            stats: Stats::default(),
            waiting_after: None,
            unreported: VecDeque::new(),
            next_due: SystemTime::UNIX_EPOCH,
        }
    }

    /// Also tells, through [`Matcher::waiting`], of each exchange still waiting for its
    /// partner `after` it arrived (on the capture clock): the live view shows those then
    /// rather than holding them back until they pair or are given up.
    pub fn report_waiting(&mut self, after: Duration) {
        self.waiting_after = Some(after);
    }

    /// Hands `f` each exchange that has waited for its partner longer than
    /// [`Matcher::report_waiting`] says, once, oldest first.
    pub fn waiting(&mut self, mut f: impl FnMut(&Exchange)) {
        let Some(after) = self.waiting_after else {
            return;
        };
        if self.clock < self.next_due {
            return;
        }
        while let Some(&key) = self.unreported.front() {
            if let Some(e) = self.pending.get(key) {
                // Arrival order is close to time order: one out of order is told late.
                match e.ts.checked_add(after) {
                    Some(due) if due <= self.clock => f(&e.exchange),
                    due => {
                        // Those behind it arrived later.
                        self.next_due = due.unwrap_or(SystemTime::UNIX_EPOCH);
                        return;
                    }
                }
            }
            self.unreported.pop_front();
        }
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Takes one finished exchange; appends the pair it completes, or the exchanges it
    /// pushes out of the pending tables, to `out`.
    pub fn push(&mut self, exchange: Exchange, out: &mut Vec<Event>) {
        let fields = Fields::of(&exchange.request.headers);
        let role = fields.role(&exchange.request.target);
        let shape = self.seed.hash_one((
            &exchange.request.method,
            &exchange.request.target,
            &exchange.request.body.data,
        ));
        if self.is_duplicate(role, &exchange, fields.request_id, shape) {
            self.stats.duplicates += 1;
            return;
        }
        match role {
            Role::Primary => self.stats.primaries += 1,
            Role::Shadow => self.stats.shadows += 1,
        }
        let ts = exchange.request.ts;
        self.expire(ts, out);

        let id = fields.id();
        if let Some((key, by)) = self.find_partner(role, id, shape, &exchange) {
            if let Some(partner) = self.remove(key) {
                // The primary's id, or else the shadow's.
                let request_id = match (by, role) {
                    // Both sides have it.
                    (MatchedBy::RequestId, _) => partner.id,
                    (MatchedBy::Shape, Role::Primary) => id.map(str::to_string).or(partner.id),
                    (MatchedBy::Shape, Role::Shadow) => {
                        partner.id.or_else(|| id.map(str::to_string))
                    }
                };
                let (primary, shadow) = match role {
                    Role::Primary => (exchange, partner.exchange),
                    Role::Shadow => (partner.exchange, exchange),
                };
                self.stats.pairs += 1;
                out.push(Event::Pair(Pair {
                    primary,
                    shadow,
                    request_id,
                    by,
                }));
                return;
            }
        }

        let id = id.map(str::to_string);
        while self.pending.len() >= self.cfg.max_pending.max(1) {
            let Some((key, _)) = self.pending.first() else {
                break;
            };
            self.drop_unmatched(key, Reason::Evicted, out);
        }
        let id_hash = id.as_ref().map(|id| self.seed.hash_one(id));
        let key = self.pending.push(
            self.next_seq,
            Entry {
                role,
                exchange,
                id,
                shape,
                ts,
            },
        );
        self.next_seq += 1;
        if self.waiting_after.is_some() {
            if self.unreported.len() >= MAX_UNREPORTED {
                self.unreported.pop_front();
            }
            self.unreported.push_back(key);
        }
        match id_hash {
            Some(h) => index(&mut self.by_id[role.idx()], h, key),
            None => index(&mut self.by_shape_anon[role.idx()], shape, key),
        }
        index(&mut self.by_shape[role.idx()], shape, key);
    }

    /// Advances the capture clock to `now` (a live capture calls this when idle) and reports
    /// what waited longer than `max_age`.
    pub fn expire(&mut self, now: SystemTime, out: &mut Vec<Event>) {
        if now > self.clock {
            self.clock = now;
        }
        while let Some((key, e)) = self.pending.first() {
            // Arrival order is close to time order; an entry that arrived out of order waits
            // for the ones ahead of it, which only delays its report.
            // Checked: the time comes from the capture, and one near the end of what a
            // `SystemTime` holds has no deadline after it (it waits for `finish`).
            if e.ts
                .checked_add(self.cfg.max_age)
                .is_none_or(|deadline| deadline >= self.clock)
            {
                break;
            }
            self.drop_unmatched(key, Reason::Expired, out);
        }
    }

    /// Ends the capture: everything still waiting is unmatched.
    pub fn finish(&mut self, out: &mut Vec<Event>) {
        while let Some((key, _)) = self.pending.first() {
            self.drop_unmatched(key, Reason::Ended, out);
        }
    }

    fn drop_unmatched(&mut self, key: Key, reason: Reason, out: &mut Vec<Event>) {
        let Some(e) = self.remove(key) else { return };
        match e.role {
            Role::Primary => self.stats.unmatched_primaries += 1,
            Role::Shadow => self.stats.unmatched_shadows += 1,
        }
        if reason == Reason::Evicted {
            self.stats.evicted += 1;
        }
        out.push(Event::Unmatched(Unmatched {
            role: e.role,
            exchange: e.exchange,
            reason,
        }));
    }

    /// The oldest pending exchange of the other role that `ex` pairs with, and how: by
    /// request id first, else by shape.
    fn find_partner(
        &self,
        role: Role,
        id: Option<&str>,
        shape: u64,
        ex: &Exchange,
    ) -> Option<(Key, MatchedBy)> {
        let other = role.other().idx();
        if let Some(id) = id {
            let same_id = |key| {
                self.pending
                    .get(key)
                    .is_some_and(|e| e.id.as_deref() == Some(id))
            };
            let found = self.by_id[other]
                .get(&self.seed.hash_one(id))
                .and_then(|q| q.find(same_id));
            if let Some(key) = found {
                return Some((key, MatchedBy::RequestId));
            }
        }
        // By shape: only when one side has no id (two different ids are two requests).
        let shapes = match id {
            Some(_) => &self.by_shape_anon[other],
            None => &self.by_shape[other],
        };
        let key = shapes.get(&shape)?.find(|key| {
            let Some(e) = self.pending.get(key) else {
                return false;
            };
            within(e.ts, ex.request.ts, self.cfg.window)
                && e.exchange.request.method == ex.request.method
                && e.exchange.request.target == ex.request.target
                && e.exchange.request.body == ex.request.body
        })?;
        Some((key, MatchedBy::Shape))
    }

    fn remove(&mut self, key: Key) -> Option<Entry> {
        let e = self.pending.remove(key)?;
        let r = e.role.idx();
        match &e.id {
            Some(id) => unindex(&mut self.by_id[r], self.seed.hash_one(id), key),
            None => unindex(&mut self.by_shape_anon[r], e.shape, key),
        }
        unindex(&mut self.by_shape[r], e.shape, key);
        Some(e)
    }

    /// True when this very exchange (same connection, same request, overlapping in time) was
    /// seen already: capturing on `any` sees a routed packet on both its interfaces. `id` is
    /// the raw first `x-request-id`; `shape` stands for method, target and body.
    fn is_duplicate(&mut self, role: Role, ex: &Exchange, id: Option<&str>, shape: u64) -> bool {
        let fp = self.seed.hash_one((role, ex.client, ex.server, id, shape));
        let req_ts = ex.request.ts;
        let resp_ts = ex.response.as_ref().map(|r| r.ts);
        match self.seen.entry(fp) {
            hash_map::Entry::Occupied(mut o) => {
                let (seen_req, seen_resp) = *o.get();
                // On one HTTP/1.1 connection the next request starts after the previous
                // response; a copy of the same one starts before it (or within a millisecond).
                let overlaps = match seen_resp {
                    Some(r) => req_ts < r && seen_req < resp_ts.unwrap_or(r),
                    None => within(seen_req, req_ts, Duration::from_millis(1)),
                };
                if overlaps {
                    return true;
                }
                o.insert((req_ts, resp_ts));
            }
            hash_map::Entry::Vacant(v) => {
                v.insert((req_ts, resp_ts));
                self.seen_order.push_back(fp);
                if self.seen_order.len() > SEEN_CAPACITY {
                    if let Some(old) = self.seen_order.pop_front() {
                        self.seen.remove(&old);
                    }
                }
            }
        }
        false
    }
}

fn within(a: SystemTime, b: SystemTime, window: Duration) -> bool {
    let d = a
        .duration_since(b)
        .or_else(|_| b.duration_since(a))
        .unwrap_or_default();
    d <= window
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Body, Headers, Request, Response};

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_millis(ms)
    }

    fn ex(host: &str, id: Option<&str>, client_port: u16, ms: u64) -> Exchange {
        let mut headers = Headers::from([("host", host)]);
        if let Some(id) = id {
            headers.push("x-request-id", id);
        }
        Exchange {
            client: format!("10.0.0.1:{client_port}").parse().unwrap(),
            server: "10.0.0.2:3000".parse().unwrap(),
            interface: None,
            request: Box::new(Request {
                method: "GET".into(),
                target: "/items".into(),
                version: "HTTP/1.1",
                headers,
                body: Body::default(),
                ts: at(ms),
            }),
            response: Some(Box::new(Response {
                status: 200,
                reason: "OK".into(),
                version: "HTTP/1.1",
                headers: Headers::new(),
                body: Body::default(),
                ts: at(ms + 1),
            })),
        }
    }

    fn primary(id: Option<&str>, port: u16, ms: u64) -> Exchange {
        ex("catalog.istioinaction:80", id, port, ms)
    }
    fn shadow(id: Option<&str>, port: u16, ms: u64) -> Exchange {
        ex("catalog.istioinaction-shadow:80", id, port, ms)
    }

    fn pairs(events: &[Event]) -> Vec<(u16, u16, MatchedBy)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Pair(p) => Some((p.primary.client.port(), p.shadow.client.port(), p.by)),
                _ => None,
            })
            .collect()
    }

    fn unmatched(events: &[Event]) -> Vec<(Role, u16, Reason)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Unmatched(u) => Some((u.role, u.exchange.client.port(), u.reason)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn roles_from_host() {
        assert_eq!(role_of(&primary(None, 1, 0)), Role::Primary);
        assert_eq!(role_of(&shadow(None, 1, 0)), Role::Shadow);
        let mut e = primary(None, 1, 0);
        e.request.headers = Headers::from([(":authority", "reviews-shadow:9080")]);
        assert_eq!(role_of(&e), Role::Shadow);
        e.request.headers.clear();
        e.request.target = "http://reviews-shadow:9080/x".into();
        assert_eq!(role_of(&e), Role::Shadow);
        e.request.target = "/x".into();
        assert_eq!(role_of(&e), Role::Primary);
    }

    #[test]
    fn roles_from_host_authority_or_target_in_that_order() {
        let role = |fields: &[(&str, &str)], target: &str| {
            let headers = Headers::from_iter(fields.iter().copied());
            Fields::of(&headers).role(target)
        };
        // A Host, even an empty one, decides alone.
        assert_eq!(
            role(&[("Host", "a:80"), (":authority", "a-shadow:80")], "/"),
            Role::Primary
        );
        assert_eq!(
            role(&[("HOST", ""), (":authority", "a-shadow")], "/"),
            Role::Primary
        );
        assert_eq!(
            role(&[(":Authority", "a-shadow"), ("host", "a-shadow")], "/"),
            Role::Shadow
        );
        // The first Host counts.
        assert_eq!(
            role(&[("host", "a"), ("host", "a-shadow")], "/"),
            Role::Primary
        );
        // Trimmed, in the Unicode sense as `str::trim`.
        assert_eq!(role(&[("host", " a-shadow:80\t")], "/"), Role::Shadow);
        assert_eq!(
            role(&[("host", "\u{a0}a-SHADOW\u{2003}")], "/"),
            Role::Shadow
        );
        // The target's authority only without both.
        assert_eq!(role(&[("hostx", "a")], "https://a-shadow/x"), Role::Shadow);
        assert_eq!(role(&[], "http://a-shadow:8080"), Role::Shadow);
        assert_eq!(role(&[], "http://a/b-shadow"), Role::Primary);
        assert_eq!(role(&[], "/a-shadow"), Role::Primary);
    }

    /// One pass finds what `Headers::get` finds for each name.
    #[test]
    fn fields_are_the_first_of_each_name_in_any_case() {
        let lists: &[&[(&str, &str)]] = &[
            &[],
            &[("Host", "h"), ("X-Request-Id", " r "), ("accept", "*/*")],
            &[
                ("x-request-ic", "no"),
                ("X-REQUEST-ID", "r1"),
                ("x-request-id", "r2"),
            ],
            &[
                ("hast", "no"),
                ("host", "h1"),
                ("HOST", "h2"),
                (":authority", "a"),
            ],
            &[
                (":AUTHORITY", "a1"),
                (":authority", "a2"),
                ("hostname", "no"),
            ],
            &[("x-request-id", ""), ("host", "h"), ("x-request-id", "r")],
            &[
                ("\u{e9}ost", "no"),
                ("x-request-\u{e9}", "no"),
                ("h\u{f6}st", "no"),
            ],
        ];
        for fields in lists {
            let h = Headers::from_iter(fields.iter().copied());
            let f = Fields::of(&h);
            assert_eq!(f.host, h.get("host"), "{fields:?}");
            assert_eq!(f.request_id, h.get("x-request-id"), "{fields:?}");
            if f.host.is_none() {
                assert_eq!(f.authority, h.get(":authority"), "{fields:?}");
            }
            let id = h
                .get("x-request-id")
                .map(str::trim)
                .filter(|v| !v.is_empty());
            assert_eq!(f.id(), id, "{fields:?}");
        }
    }

    /// Which Hosts name a shadow: the pairing and the comparison decide by the same rule.
    #[test]
    fn shadow_hosts_as_the_comparison_recognises_them() {
        let hosts = [
            ("catalog.istioinaction-shadow:80", true),
            ("catalog-shadow", true),
            ("Catalog-SHADOW:80", true),
            ("catalog-shadow:", true),
            ("-shadow", true),
            ("-Shadow:0", true),
            ("\u{fc}-shadow:1", true),
            ("a:b-shadow", true),
            ("catalog.istioinaction:80", false),
            ("shadow:80", false),
            ("catalog-shadow.ns:80", false),
            ("catalog_shadow:80", false),
            ("catalog-shadow:8a0", false),
            ("catalog-shadow8080", false),
            ("catalog-shadow::80", false),
            ("a:b-shadow:80", false),
            ("[::1]:80", false),
            ("[fe80::1]-shadow:80", false),
            ("[fe80::1-shadow]:80", false),
            ("\u{e9}:80", false),
            ("\u{e9}shadow:80", false),
            ("12345", false),
            (":", false),
            ("", false),
        ];
        for (host, shadow) in hosts {
            assert_eq!(is_shadow_host(host), shadow, "{host:?}");
        }
    }

    #[test]
    fn trim_as_str_trim() {
        for s in [
            "", " ", "a", " a", "a ", "\tab\r\n", "\u{a0}a", "a\u{85}", "\u{b}a", "a\u{7f}",
            "\u{e9}",
        ] {
            assert_eq!(trim(s), s.trim(), "{s:?}");
        }
    }

    /// Any byte anywhere, and lengths around: as `eq_ignore_ascii_case`.
    #[test]
    fn folded_compares_in_any_case_and_nothing_else() {
        const NAMES: [Folded; 4] = [
            Folded::new("host"),
            Folded::new("-shadow"),
            Folded::new(":authority"),
            Folded::new("x-request-id"),
        ];
        let lower = ["host", "-shadow", ":authority", "x-request-id"];
        for (f, lower) in NAMES.iter().zip(lower) {
            assert!(f.matches(lower.as_bytes()));
            assert!(f.matches(lower.to_ascii_uppercase().as_bytes()));
            assert!(!f.matches(&lower.as_bytes()[1..]));
            assert!(!f.matches(format!("{lower}x").as_bytes()));
            for at in 0..lower.len() {
                for c in 0..=255u8 {
                    let mut s = lower.as_bytes().to_vec();
                    s[at] = c;
                    assert_eq!(
                        f.matches(&s),
                        s.eq_ignore_ascii_case(lower.as_bytes()),
                        "{lower} with {c:#x} at {at}"
                    );
                }
            }
        }
    }

    fn key(seq: u64) -> Key {
        Key {
            seq,
            slot: seq as usize * 7,
        }
    }

    #[test]
    fn queues_keep_arrival_order() {
        let mut q = Queue::One(key(1));
        assert_eq!(q.find(|_| true), Some(key(1)));
        assert!(!q.remove(key(2)));
        for s in 2..=5 {
            q.push(key(s));
        }
        assert!(!q.remove(key(3)));
        assert!(!q.remove(key(3)));
        let mut order = Vec::new();
        q.find(|k| {
            order.push(k.seq);
            false
        });
        assert_eq!(order, [1, 2, 4, 5]);
        assert_eq!(q.find(|k| k.seq > 1), Some(key(2)));
        for s in [1, 5, 2] {
            assert!(!q.remove(key(s)));
        }
        assert!(q.remove(key(4)));
        assert!(Queue::One(key(9)).remove(key(9)));
    }

    #[test]
    fn pending_in_arrival_order_with_slots_reused() {
        let entry = |port| Entry {
            role: Role::Primary,
            exchange: primary(None, port, 0),
            id: None,
            shape: 0,
            ts: at(0),
        };
        let port = |e: Option<&Entry>| e.map(|e| e.exchange.client.port());
        let mut p = Pending::new();
        let keys: Vec<Key> = (0..4).map(|i| p.push(i, entry(1000 + i as u16))).collect();
        assert_eq!(p.len(), 4);
        // Out of the middle, then the ends.
        assert_eq!(port(p.remove(keys[2]).as_ref()), Some(1002));
        assert!(p.remove(keys[2]).is_none());
        assert_eq!(p.first().map(|(k, _)| k), Some(keys[0]));
        assert_eq!(port(p.remove(keys[0]).as_ref()), Some(1000));
        assert_eq!(p.first().map(|(k, _)| k), Some(keys[1]));
        // A freed slot serves again; the old key finds nothing there.
        let k4 = p.push(4, entry(1004));
        assert!(k4.slot == keys[0].slot || k4.slot == keys[2].slot);
        assert!(p.get(keys[0]).is_none() && p.get(keys[2]).is_none());
        assert_eq!(port(p.get(k4)), Some(1004));
        let mut order = Vec::new();
        while let Some((k, e)) = p.first() {
            order.push(e.exchange.client.port());
            p.remove(k);
        }
        assert_eq!(order, [1001, 1003, 1004]);
        assert_eq!(p.len(), 0);
        assert!(p.first().is_none());
    }

    /// Every table key the same (a seed that hashes everything to 0): each lookup compares
    /// what it finds, so pairing is what it is without collisions.
    #[test]
    fn hash_collisions_change_no_pairing() {
        let colliding = Seed::colliding();
        assert_eq!(colliding.hash_one("a"), colliding.hash_one("b"));
        assert_eq!(colliding.hash_one(1u64), colliding.hash_one(2u64));
        let run = |mut m: Matcher| {
            let mut out = Vec::new();
            // One exchange a millisecond: none overlaps another, so none is a duplicate.
            let mut ms = 0;
            let mut push =
                |m: &mut Matcher, e: fn(Option<&str>, u16, u64) -> Exchange, id, port| {
                    ms += 2;
                    m.push(e(id, port, ms), &mut out);
                };
            push(&mut m, primary, Some("a"), 1000);
            push(&mut m, primary, Some("b"), 1001);
            push(&mut m, shadow, Some("c"), 2002);
            push(&mut m, shadow, Some("b"), 2001);
            push(&mut m, primary, Some("r"), 1003);
            push(&mut m, primary, Some("r"), 1004);
            push(&mut m, shadow, Some("r"), 2003);
            push(&mut m, shadow, None, 2000);
            push(&mut m, shadow, Some("r"), 2004);
            push(&mut m, primary, None, 1005);
            m.finish(&mut out);
            (pairs(&out), unmatched(&out), m.stats())
        };
        let plain = run(Matcher::new(Config::default()));
        assert_eq!(
            plain.0,
            [
                (1001, 2001, MatchedBy::RequestId),
                (1003, 2003, MatchedBy::RequestId),
                (1000, 2000, MatchedBy::Shape),
                (1004, 2004, MatchedBy::RequestId),
                (1005, 2002, MatchedBy::Shape),
            ]
        );
        assert!(plain.1.is_empty());
        assert_eq!(run(Matcher::seeded(Config::default(), colliding)), plain);
    }

    #[test]
    fn waiting_exchanges_are_told_once_after_the_delay_and_paired_ones_never() {
        let mut m = Matcher::new(Config::default());
        let mut out = Vec::new();
        let mut told = Vec::new();
        // Not asked for: nothing is told, nothing is kept for it.
        m.push(primary(Some("x"), 999, 0), &mut out);
        m.waiting(|ex| told.push(ex.client.port()));
        assert!(told.is_empty() && m.unreported.is_empty());

        m.report_waiting(Duration::from_millis(500));
        m.push(primary(Some("a"), 1000, 0), &mut out);
        m.push(primary(Some("b"), 1001, 100), &mut out);
        m.push(shadow(Some("b"), 2001, 200), &mut out);
        m.waiting(|ex| told.push(ex.client.port()));
        assert!(told.is_empty(), "nothing has waited 500 ms yet");
        // The capture clock moves on with the next exchange: a has waited 600 ms; b paired.
        m.push(primary(Some("c"), 1002, 600), &mut out);
        m.waiting(|ex| told.push(ex.client.port()));
        assert_eq!(told, [1000]);
        m.expire(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_002),
            &mut out,
        );
        m.waiting(|ex| told.push(ex.client.port()));
        assert_eq!(told, [1000, 1002], "each once, oldest first");
        assert!(m.unreported.is_empty());
    }

    #[test]
    fn by_request_id_in_either_order_across_connections() {
        let mut m = Matcher::new(Config::default());
        let mut out = Vec::new();
        m.push(primary(Some("a"), 1000, 0), &mut out);
        m.push(shadow(Some("b"), 2001, 1), &mut out);
        assert!(out.is_empty());
        m.push(shadow(Some("a"), 2000, 2), &mut out);
        m.push(primary(Some("b"), 1001, 3), &mut out);
        assert_eq!(
            pairs(&out),
            [
                (1000, 2000, MatchedBy::RequestId),
                (1001, 2001, MatchedBy::RequestId)
            ]
        );
        match &out[0] {
            Event::Pair(p) => assert_eq!(p.request_id.as_deref(), Some("a")),
            _ => unreachable!(),
        }
        assert_eq!(m.pending(), 0);
        let s = m.stats();
        assert_eq!((s.primaries, s.shadows, s.pairs), (2, 2, 2));
    }

    #[test]
    fn different_ids_never_pair_even_with_same_shape() {
        let mut m = Matcher::new(Config::default());
        let mut out = Vec::new();
        m.push(primary(Some("a"), 1000, 0), &mut out);
        m.push(shadow(Some("b"), 2000, 0), &mut out);
        m.finish(&mut out);
        assert_eq!(
            unmatched(&out),
            [
                (Role::Primary, 1000, Reason::Ended),
                (Role::Shadow, 2000, Reason::Ended)
            ]
        );
        let s = m.stats();
        assert_eq!(
            (s.unmatched_primaries, s.unmatched_shadows, s.pairs),
            (1, 1, 0)
        );
    }

    #[test]
    fn by_shape_within_the_window_when_an_id_is_missing() {
        let mut m = Matcher::new(Config::default());
        let mut out = Vec::new();
        m.push(primary(None, 1000, 0), &mut out);
        m.push(shadow(None, 2000, 1500), &mut out);
        assert_eq!(pairs(&out), [(1000, 2000, MatchedBy::Shape)]);
        // One side with an id, the other without: still a pair by shape.
        out.clear();
        m.push(shadow(None, 2001, 5000), &mut out);
        m.push(primary(Some("z"), 1001, 5001), &mut out);
        assert_eq!(pairs(&out), [(1001, 2001, MatchedBy::Shape)]);
        // Outside the window: no pair.
        out.clear();
        m.push(primary(None, 1002, 10_000), &mut out);
        m.push(shadow(None, 2002, 12_500), &mut out);
        assert!(pairs(&out).is_empty());
        // Different target: no pair.
        let mut other = shadow(None, 2003, 10_001);
        other.request.target = "/items/1".into();
        m.push(other, &mut out);
        assert!(pairs(&out).is_empty());
        assert_eq!(m.pending(), 3);
    }

    /// One with an id pairs by shape with the oldest without one, passing over older ones
    /// with ids; one without pairs with the oldest of all.
    #[test]
    fn shape_pairs_with_the_oldest_that_may_pair() {
        let mut m = Matcher::new(Config::default());
        let mut out = Vec::new();
        m.push(primary(Some("a"), 1000, 0), &mut out);
        m.push(primary(None, 1001, 10), &mut out);
        m.push(primary(Some("b"), 1002, 20), &mut out);
        m.push(primary(None, 1003, 30), &mut out);
        m.push(shadow(Some("z"), 2000, 40), &mut out);
        m.push(shadow(None, 2001, 50), &mut out);
        m.push(shadow(Some("y"), 2002, 60), &mut out);
        m.push(shadow(Some("x"), 2003, 70), &mut out);
        assert_eq!(
            pairs(&out),
            [
                (1001, 2000, MatchedBy::Shape),
                (1000, 2001, MatchedBy::Shape),
                (1003, 2002, MatchedBy::Shape)
            ]
        );
        assert_eq!(m.pending(), 2);
        out.clear();
        m.finish(&mut out);
        assert_eq!(
            unmatched(&out),
            [
                (Role::Primary, 1002, Reason::Ended),
                (Role::Shadow, 2003, Reason::Ended)
            ]
        );
        assert!(m
            .by_shape
            .iter()
            .chain(&m.by_shape_anon)
            .all(|t| t.is_empty()));
        assert!(m.by_id.iter().all(|t| t.is_empty()));
    }

    #[test]
    fn shape_pairs_oldest_first() {
        let mut m = Matcher::new(Config::default());
        let mut out = Vec::new();
        m.push(primary(None, 1000, 0), &mut out);
        m.push(primary(None, 1001, 10), &mut out);
        m.push(shadow(None, 2000, 20), &mut out);
        m.push(shadow(None, 2001, 30), &mut out);
        assert_eq!(
            pairs(&out),
            [
                (1000, 2000, MatchedBy::Shape),
                (1001, 2001, MatchedBy::Shape)
            ]
        );
    }

    #[test]
    fn missing_shadow_and_missing_primary_expire() {
        let cfg = Config {
            max_age: Duration::from_secs(5),
            ..Config::default()
        };
        let mut m = Matcher::new(cfg);
        let mut out = Vec::new();
        m.push(primary(Some("lonely-primary"), 1000, 0), &mut out);
        m.push(shadow(Some("lonely-shadow"), 2000, 100), &mut out);
        m.push(primary(Some("x"), 1001, 4000), &mut out);
        assert!(out.is_empty(), "nothing older than 5 s yet");
        m.push(shadow(Some("x"), 2001, 5050), &mut out);
        assert_eq!(unmatched(&out), [(Role::Primary, 1000, Reason::Expired)]);
        assert_eq!(pairs(&out), [(1001, 2001, MatchedBy::RequestId)]);
        out.clear();
        // A live capture advances the clock when idle.
        m.expire(at(6000), &mut out);
        assert_eq!(unmatched(&out), [(Role::Shadow, 2000, Reason::Expired)]);
        let s = m.stats();
        assert_eq!(
            (
                s.unmatched_primaries,
                s.unmatched_shadows,
                s.pairs,
                s.evicted
            ),
            (1, 1, 1, 0)
        );
        assert_eq!(m.pending(), 0);
    }

    /// Capture times near the end of what a `SystemTime` holds: adding `max_age` used to
    /// panic. An exchange that late has no deadline (it waits for the end of the capture);
    /// one from before is still expired by the clock it moved.
    #[test]
    fn times_at_the_end_of_time_do_not_panic() {
        let end = SystemTime::UNIX_EPOCH + Duration::from_secs(i64::MAX as u64);
        let mut m = Matcher::new(Config::default());
        let mut out = Vec::new();
        m.push(primary(Some("early"), 1000, 0), &mut out);
        let mut late = primary(Some("late"), 1001, 0);
        late.request.ts = end;
        if let Some(r) = late.response.as_mut() {
            r.ts = end;
        }
        m.push(late, &mut out);
        m.expire(end, &mut out);
        assert_eq!(unmatched(&out), [(Role::Primary, 1000, Reason::Expired)]);
        out.clear();
        m.finish(&mut out);
        assert_eq!(unmatched(&out), [(Role::Primary, 1001, Reason::Ended)]);
    }

    #[test]
    fn pending_is_bounded_by_count() {
        let cfg = Config {
            max_pending: 100,
            ..Config::default()
        };
        let mut m = Matcher::new(cfg);
        let mut out = Vec::new();
        for i in 0..1000u16 {
            m.push(
                primary(Some(&format!("p{i}")), 10_000 + i, u64::from(i)),
                &mut out,
            );
            assert!(m.pending() <= 100);
        }
        assert_eq!(out.len(), 900);
        assert_eq!(unmatched(&out)[0], (Role::Primary, 10_000, Reason::Evicted));
        assert_eq!(m.stats().evicted, 900);
        // The index tables shrink with the entries.
        assert_eq!(m.by_id[0].len(), 100);
        assert!(
            m.by_shape[0]
                .values()
                .map(|q| match q {
                    Queue::One(_) => 1,
                    Queue::Many(q) => q.len(),
                })
                .sum::<usize>()
                <= 100
        );
        // The newest still pairs.
        out.clear();
        m.push(shadow(Some("p999"), 3000, 1000), &mut out);
        assert_eq!(pairs(&out), [(10_999, 3000, MatchedBy::RequestId)]);
    }

    #[test]
    fn duplicate_capture_on_two_interfaces_is_dropped() {
        let mut m = Matcher::new(Config::default());
        let mut out = Vec::new();
        let p = primary(Some("a"), 1000, 0);
        let mut p2 = p.clone();
        p2.interface = Some("veth2".into());
        p2.request.ts += Duration::from_micros(30);
        m.push(p, &mut out);
        m.push(shadow(Some("a"), 2000, 0), &mut out);
        m.push(p2, &mut out);
        m.finish(&mut out);
        assert_eq!(pairs(&out).len(), 1);
        assert!(unmatched(&out).is_empty());
        assert_eq!(m.stats().duplicates, 1);
        // The same request again later on the same connection is not a duplicate.
        out.clear();
        m.push(primary(Some("a"), 1000, 50), &mut out);
        assert_eq!(m.stats().duplicates, 1);
        assert_eq!(m.pending(), 1);
    }

    #[test]
    fn same_id_retries_pair_in_order() {
        let mut m = Matcher::new(Config::default());
        let mut out = Vec::new();
        m.push(primary(Some("r"), 1000, 0), &mut out);
        m.push(primary(Some("r"), 1001, 100), &mut out);
        m.push(shadow(Some("r"), 2000, 101), &mut out);
        m.push(shadow(Some("r"), 2001, 102), &mut out);
        assert_eq!(
            pairs(&out),
            [
                (1000, 2000, MatchedBy::RequestId),
                (1001, 2001, MatchedBy::RequestId)
            ]
        );
    }
}
