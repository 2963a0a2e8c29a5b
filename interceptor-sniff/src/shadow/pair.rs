//! Pairs each mirrored (shadow) exchange with its primary.
//!
//! A shadow is recognised by its Host (or `:authority`) ending in `-shadow` before the port.
//! Partners are found by `x-request-id`; when one side has none, by method, target and body
//! within a short window. Exchanges come in whatever order their connections finish, from
//! any connection or interface, so both sides wait in pending tables until the other comes.
//! Those tables are bounded by count and by age (measured on the capture clock, the newest
//! request time seen): what falls out is reported as unmatched, so a shadow that never answers
//! costs nothing lasting.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::time::{Duration, SystemTime};

use super::diff::is_shadow_host;
use crate::http::Exchange;

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
    let authority = ex
        .request
        .header("host")
        .or_else(|| ex.request.header(":authority"))
        .map(str::to_string)
        .or_else(|| {
            let rest = ex.request.target.split_once("://")?.1;
            Some(rest.split('/').next().unwrap_or(rest).to_string())
        });
    match authority {
        Some(a) if is_shadow_host(a.trim()) => Role::Shadow,
        _ => Role::Primary,
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

struct Entry {
    role: Role,
    exchange: Exchange,
    id: Option<String>,
    shape: u64,
    ts: SystemTime,
}

/// Exchanges already seen, to drop the second copy of one captured on two interfaces.
const SEEN_CAPACITY: usize = 8192;

pub struct Matcher {
    cfg: Config,
    next_seq: u64,
    /// Pending exchanges by arrival: the first is the oldest.
    entries: BTreeMap<u64, Entry>,
    by_id: [HashMap<String, VecDeque<u64>>; 2],
    by_shape: [HashMap<u64, VecDeque<u64>>; 2],
    seen: HashMap<u64, (SystemTime, Option<SystemTime>)>,
    seen_order: VecDeque<u64>,
    clock: SystemTime,
    stats: Stats,
}

impl Matcher {
    pub fn new(cfg: Config) -> Matcher {
        Matcher {
            cfg,
            next_seq: 0,
            entries: BTreeMap::new(),
            by_id: [HashMap::new(), HashMap::new()],
            by_shape: [HashMap::new(), HashMap::new()],
            seen: HashMap::new(),
            seen_order: VecDeque::new(),
            clock: SystemTime::UNIX_EPOCH,
            stats: Stats::default(),
        }
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    pub fn pending(&self) -> usize {
        self.entries.len()
    }

    /// Takes one finished exchange; appends the pair it completes, or the exchanges it
    /// pushes out of the pending tables, to `out`.
    pub fn push(&mut self, exchange: Exchange, out: &mut Vec<Event>) {
        let role = role_of(&exchange);
        if self.is_duplicate(role, &exchange) {
            self.stats.duplicates += 1;
            return;
        }
        match role {
            Role::Primary => self.stats.primaries += 1,
            Role::Shadow => self.stats.shadows += 1,
        }
        let ts = exchange.request.ts;
        self.expire(ts, out);

        let id = exchange
            .request
            .header("x-request-id")
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty());
        let shape = shape_of(&exchange);
        if let Some(seq) = self.find_partner(role, id.as_deref(), shape, &exchange) {
            if let Some(partner) = self.remove(seq) {
                let by = match (&id, &partner.id) {
                    (Some(a), Some(b)) if a == b => MatchedBy::RequestId,
                    _ => MatchedBy::Shape,
                };
                let (primary, shadow, pid, sid) = match role {
                    Role::Primary => (exchange, partner.exchange, id, partner.id),
                    Role::Shadow => (partner.exchange, exchange, partner.id, id),
                };
                self.stats.pairs += 1;
                out.push(Event::Pair(Pair {
                    primary,
                    shadow,
                    request_id: pid.or(sid),
                    by,
                }));
                return;
            }
        }

        while self.entries.len() >= self.cfg.max_pending.max(1) {
            let Some((&seq, _)) = self.entries.first_key_value() else {
                break;
            };
            self.drop_unmatched(seq, Reason::Evicted, out);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(id) = &id {
            self.by_id[role.idx()]
                .entry(id.clone())
                .or_default()
                .push_back(seq);
        }
        self.by_shape[role.idx()]
            .entry(shape)
            .or_default()
            .push_back(seq);
        self.entries.insert(
            seq,
            Entry {
                role,
                exchange,
                id,
                shape,
                ts,
            },
        );
    }

    /// Advances the capture clock to `now` (a live capture calls this when idle) and reports
    /// what waited longer than `max_age`.
    pub fn expire(&mut self, now: SystemTime, out: &mut Vec<Event>) {
        if now > self.clock {
            self.clock = now;
        }
        while let Some((&seq, e)) = self.entries.first_key_value() {
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
            self.drop_unmatched(seq, Reason::Expired, out);
        }
    }

    /// Ends the capture: everything still waiting is unmatched.
    pub fn finish(&mut self, out: &mut Vec<Event>) {
        while let Some((&seq, _)) = self.entries.first_key_value() {
            self.drop_unmatched(seq, Reason::Ended, out);
        }
    }

    fn drop_unmatched(&mut self, seq: u64, reason: Reason, out: &mut Vec<Event>) {
        let Some(e) = self.remove(seq) else { return };
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

    fn find_partner(&self, role: Role, id: Option<&str>, shape: u64, ex: &Exchange) -> Option<u64> {
        let other = role.other().idx();
        if let Some(id) = id {
            if let Some(&seq) = self.by_id[other].get(id).and_then(|q| q.front()) {
                return Some(seq);
            }
        }
        // By shape: only when one side has no id (two different ids are two requests).
        let queue = self.by_shape[other].get(&shape)?;
        queue.iter().copied().find(|seq| {
            let Some(e) = self.entries.get(seq) else {
                return false;
            };
            (id.is_none() || e.id.is_none())
                && within(e.ts, ex.request.ts, self.cfg.window)
                && e.exchange.request.method == ex.request.method
                && e.exchange.request.target == ex.request.target
                && e.exchange.request.body == ex.request.body
        })
    }

    fn remove(&mut self, seq: u64) -> Option<Entry> {
        let e = self.entries.remove(&seq)?;
        let r = e.role.idx();
        if let Some(id) = &e.id {
            unindex(&mut self.by_id[r], id, seq);
        }
        unindex(&mut self.by_shape[r], &e.shape, seq);
        Some(e)
    }

    /// True when this very exchange (same connection, same request, overlapping in time) was
    /// seen already: capturing on `any` sees a routed packet on both its interfaces.
    fn is_duplicate(&mut self, role: Role, ex: &Exchange) -> bool {
        let mut h = DefaultHasher::new();
        role.hash(&mut h);
        ex.client.hash(&mut h);
        ex.server.hash(&mut h);
        ex.request.method.hash(&mut h);
        ex.request.target.hash(&mut h);
        ex.request.header("x-request-id").hash(&mut h);
        ex.request.body.data.hash(&mut h);
        let fp = h.finish();
        let req_ts = ex.request.ts;
        let resp_ts = ex.response.as_ref().map(|r| r.ts);
        if let Some(&(seen_req, seen_resp)) = self.seen.get(&fp) {
            // On one HTTP/1.1 connection the next request starts after the previous
            // response; a copy of the same one starts before it (or within a millisecond).
            let overlaps = match seen_resp {
                Some(r) => req_ts < r && seen_req < resp_ts.unwrap_or(r),
                None => within(seen_req, req_ts, Duration::from_millis(1)),
            };
            if overlaps {
                return true;
            }
        }
        if self.seen.insert(fp, (req_ts, resp_ts)).is_none() {
            self.seen_order.push_back(fp);
            if self.seen_order.len() > SEEN_CAPACITY {
                if let Some(old) = self.seen_order.pop_front() {
                    self.seen.remove(&old);
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

fn shape_of(ex: &Exchange) -> u64 {
    let mut h = DefaultHasher::new();
    ex.request.method.hash(&mut h);
    ex.request.target.hash(&mut h);
    ex.request.body.data.hash(&mut h);
    h.finish()
}

fn unindex<K: Hash + Eq + Clone>(map: &mut HashMap<K, VecDeque<u64>>, key: &K, seq: u64) {
    if let Some(q) = map.get_mut(key) {
        q.retain(|&s| s != seq);
        if q.is_empty() {
            map.remove(key);
        }
    }
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
        assert!(m.by_shape[0].values().map(|q| q.len()).sum::<usize>() <= 100);
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
