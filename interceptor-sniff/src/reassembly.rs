//! TCP stream reassembly: turns captured segments into two ordered byte streams per
//! connection, with holes marked rather than hidden.
//!
//! Each direction of a flow is a small state machine (`HalfState`): it learns its next
//! sequence number from the SYN, or from the first data when the capture started mid-stream,
//! delivers in-order bytes at once (borrowed from the packet, no copy), parks out-of-order
//! segments in a bounded buffer, trims retransmissions and overlaps, and when the buffer
//! limit is hit or the flow ends with a hole, reports the hole as a gap and moves past it.
//! Sequence numbers are compared with wrapping arithmetic, so wrap-around needs no case.
//! The flow table itself is bounded: idle flows time out and, when full, the oldest tenth
//! is closed in one pass.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use crate::wire::packet::{flags, Segment};

/// Which way bytes travel, relative to the side that opened the flow (sent the SYN, or
/// the first packet seen when the capture started mid-stream).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dir {
    FromOrig = 0,
    FromResp = 1,
}

impl Dir {
    pub fn index(self) -> usize {
        self as usize
    }
    pub fn other(self) -> Dir {
        match self {
            Dir::FromOrig => Dir::FromResp,
            Dir::FromResp => Dir::FromOrig,
        }
    }
}

/// The two endpoints of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowId {
    pub orig: SocketAddr,
    pub resp: SocketAddr,
    pub ifindex: Option<u32>,
}

impl FlowId {
    /// (source, destination) of bytes travelling in `dir`.
    pub fn ends(&self, dir: Dir) -> (SocketAddr, SocketAddr) {
        match dir {
            Dir::FromOrig => (self.orig, self.resp),
            Dir::FromResp => (self.resp, self.orig),
        }
    }
}

/// Why a flow left the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    Fin,
    Rst,
    Idle,
    Evicted,
    /// A new SYN reused the 4-tuple.
    Reused,
    EndOfCapture,
}

/// What the reassembler tells the protocol layer; one implementation per flow.
pub trait Handler: Sized {
    type Ctx;
    fn open(ctx: &mut Self::Ctx, id: &FlowId) -> Self;
    /// In-order bytes; `ts` is the capture time of the packet that carried them.
    fn data(&mut self, ctx: &mut Self::Ctx, id: &FlowId, dir: Dir, data: &[u8], ts: SystemTime);
    /// `len` bytes of the stream were never seen (capture loss, snaplen, buffer limit).
    fn gap(&mut self, ctx: &mut Self::Ctx, id: &FlowId, dir: Dir, len: u64, ts: SystemTime);
    /// The direction ended (FIN reached in order, RST, timeout, end of capture).
    fn end(&mut self, ctx: &mut Self::Ctx, id: &FlowId, dir: Dir, ts: SystemTime);
    /// The flow is leaving the table; both directions have been ended.
    fn close(&mut self, ctx: &mut Self::Ctx, id: &FlowId, reason: CloseReason);
    /// True when no further bytes matter (TLS, not HTTP): reassembly then skips buffering.
    fn done(&self) -> bool {
        false
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub max_flows: usize,
    pub idle_timeout: Duration,
    /// Out-of-order bytes parked per direction before the hole is declared a gap.
    pub max_buffered_bytes: usize,
    pub max_buffered_segments: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_flows: 1 << 18,
            idle_timeout: Duration::from_secs(300),
            max_buffered_bytes: 1 << 20,
            max_buffered_segments: 512,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub segments: u64,
    pub flows: u64,
    pub retransmitted: u64,
    pub out_of_order: u64,
    pub gaps: u64,
    pub gap_bytes: u64,
    pub evicted: u64,
    pub timed_out: u64,
    pub max_concurrent: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HalfState {
    /// Nothing seen yet in this direction.
    Unsynced,
    /// Expecting byte `next`.
    Open { next: u32 },
    /// FIN consumed in order, or reset.
    Closed,
}

struct Parked {
    seq: u32,
    data: Vec<u8>,
    missing: u32,
    fin: bool,
    ts: SystemTime,
}

struct Half {
    state: HalfState,
    isn: Option<u32>,
    /// Sorted by distance from `next`.
    parked: Vec<Parked>,
    parked_bytes: usize,
}

impl Half {
    fn new() -> Half {
        Half {
            state: HalfState::Unsynced,
            isn: None,
            parked: Vec::new(),
            parked_bytes: 0,
        }
    }
}

struct Flow<H> {
    id: FlowId,
    halves: [Half; 2],
    handler: H,
    last_seen: SystemTime,
}

/// Canonical 4-tuple: the smaller endpoint first, so both directions find the same flow.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key(SocketAddr, SocketAddr);

impl Key {
    fn of(a: SocketAddr, b: SocketAddr) -> Key {
        if a <= b {
            Key(a, b)
        } else {
            Key(b, a)
        }
    }
}

/// One 64-bit word per endpoint (address folded, port), mixed: hashing happens for every
/// packet, and `SocketAddr`'s own `Hash` feeds the hasher field by field.
fn endpoint_word(s: &SocketAddr) -> u64 {
    let ip = match s {
        SocketAddr::V4(v4) => u64::from(u32::from(*v4.ip())),
        SocketAddr::V6(v6) => {
            let x = u128::from(*v6.ip());
            (x as u64) ^ ((x >> 64) as u64).rotate_left(17)
        }
    };
    ip.rotate_left(16) ^ u64::from(s.port())
}

impl Hash for Key {
    fn hash<S: Hasher>(&self, state: &mut S) {
        state.write_u64(endpoint_word(&self.0) ^ endpoint_word(&self.1).rotate_left(32));
    }
}

/// Multiply-xorshift over the key's one word. The keys come from the capture, and
/// SipHash's DoS resistance buys little for a table that is bounded and evicts; speed per
/// packet matters more here.
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        let h = self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^ (h >> 29)
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not used by `Key`; kept correct for any other key type.
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0xff51_afd7_ed55_8ccd);
    }
}

pub struct Table<H: Handler> {
    flows: HashMap<Key, Flow<H>, BuildHasherDefault<KeyHasher>>,
    cfg: Config,
    pub stats: Stats,
    next_sweep: Sweep,
}

/// How often idle flows are looked for, in capture time.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// When the next sweep for idle flows is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sweep {
    /// No packet yet: the first one sets the clock.
    Unset,
    At(SystemTime),
    /// A timestamp so late that a second more is no time at all (a hostile capture): no
    /// later packet can be later, so nothing can turn idle after it.
    Never,
}

impl Sweep {
    /// The sweep after one at `now`.
    fn after(now: SystemTime) -> Sweep {
        now.checked_add(SWEEP_EVERY).map_or(Sweep::Never, Sweep::At)
    }
}

/// Signed distance from `from` to `to` in sequence space.
fn seq_diff(to: u32, from: u32) -> i64 {
    i64::from(to.wrapping_sub(from) as i32)
}

impl<H: Handler> Table<H> {
    pub fn new(cfg: Config) -> Table<H> {
        Table {
            flows: HashMap::default(),
            cfg,
            stats: Stats::default(),
            next_sweep: Sweep::Unset,
        }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    pub fn segment(&mut self, ctx: &mut H::Ctx, seg: &Segment<'_>, ts: SystemTime) {
        self.stats.segments += 1;
        self.maybe_sweep(ctx, ts);
        let key = Key::of(seg.src, seg.dst);
        let syn = seg.has(flags::SYN);
        let rst = seg.has(flags::RST);

        // A bare SYN on a flow whose opener used another ISN: the 4-tuple was reused.
        if syn && !seg.has(flags::ACK) {
            if let Some(flow) = self.flows.get(&key) {
                let dir = if flow.id.orig == seg.src {
                    Dir::FromOrig
                } else {
                    Dir::FromResp
                };
                if flow.halves[dir.index()]
                    .isn
                    .is_some_and(|isn| isn != seg.seq)
                {
                    self.remove(ctx, key, CloseReason::Reused, ts);
                }
            }
        }
        // Only a SYN or data opens a flow: the last ACK of a closed connection, or a RST/FIN
        // for one we never saw, must not leave a flow behind.
        let opens = !rst && (syn || !seg.payload.is_empty() || seg.missing > 0);
        if opens && self.flows.len() >= self.cfg.max_flows && !self.flows.contains_key(&key) {
            self.evict_oldest(ctx, ts);
        }
        // One lookup for the packets of known flows (nearly all of them).
        let open_flows = self.flows.len() as u64;
        let flow = match self.flows.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(_) if !opens => return,
            Entry::Vacant(v) => {
                // A SYN-ACK first means we missed the SYN: the destination opened the flow.
                let (orig, resp) = if syn && seg.has(flags::ACK) {
                    (seg.dst, seg.src)
                } else {
                    (seg.src, seg.dst)
                };
                let id = FlowId {
                    orig,
                    resp,
                    ifindex: seg.ifindex,
                };
                let handler = H::open(ctx, &id);
                self.stats.flows += 1;
                self.stats.max_concurrent = self.stats.max_concurrent.max(open_flows + 1);
                v.insert(Flow {
                    id,
                    halves: [Half::new(), Half::new()],
                    handler,
                    last_seen: ts,
                })
            }
        };
        flow.last_seen = ts;
        let dir = if flow.id.orig == seg.src {
            Dir::FromOrig
        } else {
            Dir::FromResp
        };

        if rst {
            self.remove(ctx, key, CloseReason::Rst, ts);
            return;
        }
        let stats = &mut self.stats;
        let half = &mut flow.halves[dir.index()];
        let mut seq = seg.seq;
        if syn {
            half.isn = Some(seg.seq);
            seq = seg.seq.wrapping_add(1);
            if half.state == HalfState::Unsynced {
                half.state = HalfState::Open { next: seq };
            }
        }
        let fin = seg.has(flags::FIN);
        if flow.handler.done() {
            // Nobody wants the bytes; only track the end of the flow.
            if fin {
                half.state = HalfState::Closed;
            }
        } else {
            if half.state == HalfState::Unsynced {
                if !seg.payload.is_empty() || seg.missing > 0 {
                    half.state = HalfState::Open { next: seq };
                } else if fin {
                    half.state = HalfState::Closed;
                }
            }
            accept(
                stats,
                &self.cfg,
                half,
                &mut flow.handler,
                ctx,
                &flow.id,
                dir,
                seq,
                seg.payload,
                seg.missing,
                fin,
                ts,
            );
        }
        let closed = flow.halves.iter().all(|h| h.state == HalfState::Closed);
        if closed {
            self.remove(ctx, key, CloseReason::Fin, ts);
        }
    }

    /// Ends every flow (end of the capture, or shutdown).
    pub fn finish(&mut self, ctx: &mut H::Ctx, ts: SystemTime) {
        // In order of last activity, so the output does not depend on the hash.
        let mut keys: Vec<(SystemTime, SocketAddr, SocketAddr, Key)> = self
            .flows
            .iter()
            .map(|(k, f)| (f.last_seen, f.id.orig, f.id.resp, *k))
            .collect();
        keys.sort_unstable_by_key(|&(t, o, r, _)| (t, o, r));
        for (_, _, _, k) in keys {
            self.remove(ctx, k, CloseReason::EndOfCapture, ts);
        }
    }

    fn maybe_sweep(&mut self, ctx: &mut H::Ctx, now: SystemTime) {
        // Timestamps come from the capture: adding to them is checked.
        let due = match self.next_sweep {
            Sweep::Unset => {
                self.next_sweep = Sweep::after(now);
                false
            }
            Sweep::At(t) => now >= t,
            Sweep::Never => false,
        };
        if !due {
            return;
        }
        self.next_sweep = Sweep::after(now);
        let idle = self.cfg.idle_timeout;
        let stale: Vec<Key> = self
            .flows
            .iter()
            .filter(|(_, f)| {
                now.duration_since(f.last_seen)
                    .map(|d| d > idle)
                    .unwrap_or(false)
            })
            .map(|(k, _)| *k)
            .collect();
        for k in stale {
            self.stats.timed_out += 1;
            self.remove(ctx, k, CloseReason::Idle, now);
        }
    }

    /// Closes the least recently seen tenth of the table in one pass, so a flood of new
    /// flows costs amortised constant time each.
    fn evict_oldest(&mut self, ctx: &mut H::Ctx, now: SystemTime) {
        let mut ages: Vec<(SystemTime, Key)> =
            self.flows.iter().map(|(k, f)| (f.last_seen, *k)).collect();
        let n = (ages.len() / 10).max(1);
        if n < ages.len() {
            ages.select_nth_unstable_by_key(n, |(t, _)| *t);
        }
        for (_, k) in ages.into_iter().take(n) {
            self.stats.evicted += 1;
            self.remove(ctx, k, CloseReason::Evicted, now);
        }
    }

    fn remove(&mut self, ctx: &mut H::Ctx, key: Key, reason: CloseReason, ts: SystemTime) {
        let Some(mut flow) = self.flows.remove(&key) else {
            return;
        };
        for dir in [Dir::FromOrig, Dir::FromResp] {
            let half = &mut flow.halves[dir.index()];
            if half.state != HalfState::Closed {
                flush_with_gaps(&mut self.stats, half, &mut flow.handler, ctx, &flow.id, dir);
                flow.handler.end(ctx, &flow.id, dir, ts);
            }
        }
        flow.handler.close(ctx, &flow.id, reason);
    }
}

#[allow(clippy::too_many_arguments)]
fn accept<H: Handler>(
    stats: &mut Stats,
    cfg: &Config,
    half: &mut Half,
    handler: &mut H,
    ctx: &mut H::Ctx,
    id: &FlowId,
    dir: Dir,
    seq: u32,
    payload: &[u8],
    missing: u32,
    fin: bool,
    ts: SystemTime,
) {
    let HalfState::Open { next } = half.state else {
        return;
    };
    let len = payload.len() as u64 + u64::from(missing);
    if len == 0 && !fin {
        return;
    }
    let rel = seq_diff(seq, next);
    if rel > 0 {
        // Ahead of a hole: park it.
        stats.out_of_order += 1;
        if half
            .parked
            .iter()
            .any(|p| p.seq == seq && p.data.len() == payload.len())
        {
            stats.retransmitted += 1;
            return;
        }
        let pos = half
            .parked
            .iter()
            .position(|p| seq_diff(p.seq, next) > rel)
            .unwrap_or(half.parked.len());
        half.parked_bytes += payload.len();
        half.parked.insert(
            pos,
            Parked {
                seq,
                data: payload.to_vec(),
                missing,
                fin,
                ts,
            },
        );
        if half.parked_bytes > cfg.max_buffered_bytes
            || half.parked.len() > cfg.max_buffered_segments
        {
            skip_to_first_parked(stats, half, handler, ctx, id, dir);
        }
        return;
    }
    deliver(
        stats, half, handler, ctx, id, dir, next, seq, payload, missing, fin, ts,
    );
    drain(stats, half, handler, ctx, id, dir);
}

/// Delivers a segment that starts at or before `next`, trimming what was already seen.
#[allow(clippy::too_many_arguments)]
fn deliver<H: Handler>(
    stats: &mut Stats,
    half: &mut Half,
    handler: &mut H,
    ctx: &mut H::Ctx,
    id: &FlowId,
    dir: Dir,
    next: u32,
    seq: u32,
    payload: &[u8],
    missing: u32,
    fin: bool,
    ts: SystemTime,
) {
    let old = (-seq_diff(seq, next)) as u64;
    let total = payload.len() as u64 + u64::from(missing);
    if old > 0 && old >= total {
        if total > 0 {
            stats.retransmitted += 1;
        }
        // A FIN whose data we already have still ends the stream.
        if fin && old == total {
            half.state = HalfState::Closed;
            handler.end(ctx, id, dir, ts);
        }
        return;
    }
    let mut next = next;
    if old < payload.len() as u64 {
        let fresh = &payload[old as usize..];
        if old > 0 {
            stats.retransmitted += 1;
        }
        handler.data(ctx, id, dir, fresh, ts);
        next = next.wrapping_add(fresh.len() as u32);
        if missing > 0 {
            stats.gaps += 1;
            stats.gap_bytes += u64::from(missing);
            handler.gap(ctx, id, dir, u64::from(missing), ts);
            next = next.wrapping_add(missing);
        }
    } else if total > old {
        // Only part of the cut-off tail is new.
        let gap = total - old;
        stats.gaps += 1;
        stats.gap_bytes += gap;
        handler.gap(ctx, id, dir, gap, ts);
        next = next.wrapping_add(gap as u32);
    }
    if fin {
        half.state = HalfState::Closed;
        handler.end(ctx, id, dir, ts);
    } else {
        half.state = HalfState::Open { next };
    }
}

/// Delivers parked segments that the stream has now reached.
fn drain<H: Handler>(
    stats: &mut Stats,
    half: &mut Half,
    handler: &mut H,
    ctx: &mut H::Ctx,
    id: &FlowId,
    dir: Dir,
) {
    while let HalfState::Open { next } = half.state {
        let Some(first) = half.parked.first() else {
            return;
        };
        if seq_diff(first.seq, next) > 0 {
            return;
        }
        let p = half.parked.remove(0);
        half.parked_bytes -= p.data.len();
        deliver(
            stats, half, handler, ctx, id, dir, next, p.seq, &p.data, p.missing, p.fin, p.ts,
        );
    }
    // Closed: whatever is still parked lies beyond the FIN.
    half.parked.clear();
    half.parked_bytes = 0;
}

/// Declares the hole before the first parked segment a gap and resumes there.
fn skip_to_first_parked<H: Handler>(
    stats: &mut Stats,
    half: &mut Half,
    handler: &mut H,
    ctx: &mut H::Ctx,
    id: &FlowId,
    dir: Dir,
) {
    let HalfState::Open { next } = half.state else {
        return;
    };
    let Some(first) = half.parked.first() else {
        return;
    };
    let hole = seq_diff(first.seq, next);
    if hole > 0 {
        stats.gaps += 1;
        stats.gap_bytes += hole as u64;
        handler.gap(ctx, id, dir, hole as u64, first.ts);
        half.state = HalfState::Open { next: first.seq };
    }
    drain(stats, half, handler, ctx, id, dir);
}

fn flush_with_gaps<H: Handler>(
    stats: &mut Stats,
    half: &mut Half,
    handler: &mut H,
    ctx: &mut H::Ctx,
    id: &FlowId,
    dir: Dir,
) {
    while !half.parked.is_empty() && matches!(half.state, HalfState::Open { .. }) {
        skip_to_first_parked(stats, half, handler, ctx, id, dir);
    }
    half.parked.clear();
    half.parked_bytes = 0;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::packet::build::ethernet_tcp;
    use crate::wire::packet::{decode, LinkType};

    /// Records what the reassembler delivers, per direction.
    #[derive(Default)]
    struct Rec {
        streams: [Vec<u8>; 2],
        events: Vec<String>,
    }

    impl Handler for Rec {
        type Ctx = Vec<String>;
        fn open(_: &mut Vec<String>, _: &FlowId) -> Self {
            Rec::default()
        }
        fn data(&mut self, _: &mut Vec<String>, _: &FlowId, dir: Dir, data: &[u8], _: SystemTime) {
            self.streams[dir.index()].extend_from_slice(data);
        }
        fn gap(&mut self, _: &mut Vec<String>, _: &FlowId, dir: Dir, len: u64, _: SystemTime) {
            self.streams[dir.index()].extend_from_slice(format!("<gap {len}>").as_bytes());
        }
        fn end(&mut self, _: &mut Vec<String>, _: &FlowId, dir: Dir, _: SystemTime) {
            self.events.push(format!("end {dir:?}"));
        }
        fn close(&mut self, ctx: &mut Vec<String>, _: &FlowId, reason: CloseReason) {
            ctx.push(format!(
                "{:?}|{}|{}|{}",
                reason,
                String::from_utf8_lossy(&self.streams[0]),
                String::from_utf8_lossy(&self.streams[1]),
                self.events.join(",")
            ));
        }
    }

    const C: &str = "10.0.0.1:40000";
    const S: &str = "10.0.0.2:80";

    fn run(segs: &[(&str, &str, u32, u8, &[u8])]) -> (Vec<String>, Stats) {
        let mut t: Table<Rec> = Table::new(Config::default());
        let mut out = Vec::new();
        for (i, (src, dst, seq, fl, data)) in segs.iter().enumerate() {
            let f = ethernet_tcp(
                src.parse().unwrap(),
                dst.parse().unwrap(),
                *seq,
                0,
                *fl,
                data,
            );
            let s = decode(LinkType::Ethernet, &f).unwrap();
            t.segment(
                &mut out,
                &s,
                SystemTime::UNIX_EPOCH + Duration::from_millis(i as u64),
            );
        }
        t.finish(&mut out, SystemTime::UNIX_EPOCH + Duration::from_secs(1));
        (out, t.stats.clone())
    }

    const A: u8 = flags::ACK;

    #[test]
    fn in_order_with_handshake_and_fin() {
        let (out, _) = run(&[
            (C, S, 100, flags::SYN, b""),
            (S, C, 500, flags::SYN | A, b""),
            (C, S, 101, A, b"hello "),
            (C, S, 107, A, b"world"),
            (S, C, 501, A | flags::FIN, b"bye"),
            (C, S, 112, A | flags::FIN, b""),
        ]);
        assert_eq!(out, vec!["Fin|hello world|bye|end FromResp,end FromOrig"]);
    }

    #[test]
    fn reorder_duplicate_and_overlap() {
        let (out, st) = run(&[
            (C, S, 100, flags::SYN, b""),
            (C, S, 107, A, b"world"),
            (C, S, 101, A, b"hel"),
            (C, S, 101, A, b"hel"),
            (C, S, 103, A, b"llo "),
            (C, S, 107, A, b"world"),
        ]);
        assert_eq!(
            out,
            vec!["EndOfCapture|hello world||end FromOrig,end FromResp"]
        );
        assert_eq!(st.retransmitted, 3);
        assert!(st.out_of_order >= 1);
    }

    #[test]
    fn sequence_wraps() {
        let isn = u32::MAX - 3;
        let (out, _) = run(&[
            (C, S, isn, flags::SYN, b""),
            (C, S, isn.wrapping_add(6), A, b"cdef"),
            (C, S, isn.wrapping_add(1), A, b"xyzab"),
        ]);
        assert!(out[0].starts_with("EndOfCapture|xyzabcdef|"), "{out:?}");
    }

    #[test]
    fn hole_at_end_is_a_gap_and_midstream_start_works() {
        let (out, st) = run(&[(C, S, 1000, A, b"abc"), (C, S, 1010, A, b"xyz")]);
        assert!(out[0].starts_with("EndOfCapture|abc<gap 7>xyz|"), "{out:?}");
        assert_eq!((st.gaps, st.gap_bytes), (1, 7));
    }

    #[test]
    fn buffer_limit_forces_gap_and_resumes() {
        let mut t: Table<Rec> = Table::new(Config {
            max_buffered_segments: 2,
            ..Config::default()
        });
        let mut out = Vec::new();
        let ts = SystemTime::UNIX_EPOCH;
        let c = C.parse().unwrap();
        let s = S.parse().unwrap();
        for (seq, d) in [
            (1u32, &b"a"[..]),
            (10, b"j"),
            (11, b"k"),
            (12, b"l"),
            (13, b"m"),
        ] {
            let f = ethernet_tcp(c, s, seq, 0, A, d);
            t.segment(&mut out, &decode(LinkType::Ethernet, &f).unwrap(), ts);
        }
        t.finish(&mut out, ts);
        assert!(out[0].starts_with("EndOfCapture|a<gap 8>jklm|"), "{out:?}");
    }

    #[test]
    fn rst_closes_and_reused_tuple_starts_a_new_flow() {
        let (out, _) = run(&[
            (C, S, 100, flags::SYN, b""),
            (C, S, 101, A, b"one"),
            (C, S, 9000, flags::SYN, b""),
            (C, S, 9001, A, b"two"),
            (S, C, 1, flags::RST, b""),
        ]);
        assert_eq!(out.len(), 2);
        assert!(out[0].starts_with("Reused|one|"));
        assert!(out[1].starts_with("Rst|two|"));
    }

    /// The latest time a `SystemTime` holds: a second more used to panic the sweep.
    #[test]
    fn timestamps_at_the_end_of_time_do_not_panic_and_still_time_out() {
        let end = SystemTime::UNIX_EPOCH + Duration::from_secs(i64::MAX as u64);
        assert!(end.checked_add(Duration::from_secs(1)).is_none());
        let mut t: Table<Rec> = Table::new(Config {
            idle_timeout: Duration::from_secs(10),
            ..Config::default()
        });
        let mut out = Vec::new();
        let c: SocketAddr = C.parse().unwrap();
        let s: SocketAddr = S.parse().unwrap();
        let early = end - Duration::from_secs(60);
        // A flow seen a minute before the end, then packets at the very end.
        let f = ethernet_tcp(c, s, 1, 0, A, b"old");
        t.segment(&mut out, &decode(LinkType::Ethernet, &f).unwrap(), early);
        let other: SocketAddr = "10.0.0.9:5".parse().unwrap();
        for (seq, d) in [(1u32, &b"ab"[..]), (3, b"cd")] {
            let f = ethernet_tcp(other, s, seq, 0, A, d);
            t.segment(&mut out, &decode(LinkType::Ethernet, &f).unwrap(), end);
        }
        // The sweep at the first of them timed the old flow out; none is due after it.
        assert_eq!(t.stats.timed_out, 1);
        assert!(out[0].starts_with("Idle|old|"), "{out:?}");
        t.finish(&mut out, end);
        assert!(out[1].starts_with("EndOfCapture|abcd|"), "{out:?}");
    }

    #[test]
    fn flow_table_is_bounded() {
        let mut t: Table<Rec> = Table::new(Config {
            max_flows: 100,
            ..Config::default()
        });
        let mut out = Vec::new();
        for i in 0..1000u32 {
            let c = SocketAddr::new([10, 0, (i >> 8) as u8, i as u8].into(), 1000);
            let f = ethernet_tcp(c, S.parse().unwrap(), 1, 0, flags::SYN, b"");
            t.segment(
                &mut out,
                &decode(LinkType::Ethernet, &f).unwrap(),
                SystemTime::UNIX_EPOCH,
            );
            assert!(t.len() <= 100);
        }
        assert!(t.stats.evicted >= 900);
    }
}
