//! The per-connection protocol layer: decides what each direction carries (HTTP requests,
//! HTTP responses, TLS), runs the HTTP parsers, and pairs each response with the oldest
//! unanswered request on the connection (HTTP/1.1 answers in order, pipelined or not).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::SystemTime;

use super::writer::{Record, Writer};
use crate::http::head::Role;
use crate::http::stream::{Asked, Limits, Parsed, Parser};
use crate::http::{pool, Exchange, Request, Response};
use crate::output::{request_line, status_line, wire_text};
use crate::reassembly::{CloseReason, Dir, FlowId, Handler};
use crate::sink::{Counts, Sink, TlsFlow};
use crate::tls::{self, Hello};

/// Most unanswered requests kept per connection; older ones are reported unanswered.
const MAX_PENDING: usize = 256;
/// Bytes looked at before deciding what a direction carries.
const SNIFF_BYTES: usize = 8;

/// Everything the flows share: limits, the output, MATCH, counters.
pub struct Ctx {
    pub limits: Limits,
    /// The output, on its own thread.
    pub out: Writer,
    /// MATCH; None when it matches everything.
    pub matcher: Option<regex::bytes::Regex>,
    /// Stop reporting after this many records (`-n`).
    pub max_records: Option<u64>,
    pub records: u64,
    /// Name reported as the interface of every flow (`-d DEV`).
    pub interface: Option<String>,
    /// Resolve SLL2 interface indexes to names (live capture on `any`).
    pub resolve_ifindex: bool,
    ifnames: HashMap<u32, Option<String>>,
    pub counts: Counts,
    scratch: Vec<Parsed>,
    text: Vec<u8>,
}

impl Ctx {
    /// `live`: the capture is live, so output is handed over and flushed promptly.
    pub fn new(
        limits: Limits,
        out: Box<dyn Sink>,
        matcher: Option<regex::bytes::Regex>,
        live: bool,
    ) -> Ctx {
        Ctx {
            limits,
            out: Writer::spawn(out, live),
            matcher,
            max_records: None,
            records: 0,
            interface: None,
            resolve_ifindex: false,
            ifnames: HashMap::new(),
            counts: Counts::default(),
            scratch: Vec::new(),
            text: Vec::new(),
        }
    }

    /// True once `-n COUNT` records were reported or output failed.
    pub fn finished(&self) -> bool {
        self.out.failed() || self.max_records.is_some_and(|m| self.records >= m)
    }

    fn interface_of(&mut self, id: &FlowId) -> Option<String> {
        if let Some(i) = &self.interface {
            return Some(i.clone());
        }
        let idx = id.ifindex.filter(|_| self.resolve_ifindex)?;
        self.ifnames
            .entry(idx)
            .or_insert_with(|| {
                let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
                // SAFETY: buf has IF_NAMESIZE bytes as if_indextoname requires.
                let p = unsafe { libc::if_indextoname(idx, buf.as_mut_ptr()) };
                if p.is_null() {
                    None
                } else {
                    // SAFETY: on success buf holds a NUL-terminated name.
                    Some(
                        unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
                            .to_string_lossy()
                            .into_owned(),
                    )
                }
            })
            .clone()
    }

    fn matches_request(&mut self, r: &Request) -> bool {
        let Some(m) = &self.matcher else { return true };
        self.text.clear();
        wire_text(&request_line(r), &r.headers, &r.body.data, &mut self.text);
        m.is_match(&self.text)
    }

    fn matches_response(&mut self, r: &Response) -> bool {
        let Some(m) = &self.matcher else { return true };
        self.text.clear();
        wire_text(&status_line(r), &r.headers, &r.body.data, &mut self.text);
        m.is_match(&self.text)
    }

    /// Hands a record to the output, unless the run is finished.
    fn report(&mut self, r: Record) {
        if !self.finished() {
            self.records += 1;
            self.out.push(r);
        }
    }

    fn request_done(&mut self, r: &Request, client: SocketAddr, server: SocketAddr) {
        self.counts.requests += 1;
        if !self.out.shows_requests() || self.finished() || !self.matches_request(r) {
            return;
        }
        // Shown now by the text output; not a record of its own (the exchange is).
        let mut request = pool::request(r.ts);
        (*request).clone_from(r);
        self.out.push(Record::Request {
            request,
            client,
            server,
        });
    }

    /// Reports a request of flow `id` with its response, or without one when it never came.
    fn exchange(
        &mut self,
        id: &FlowId,
        (client, server): (SocketAddr, SocketAddr),
        request: Box<Request>,
        response: Option<Box<Response>>,
    ) {
        let ex = Exchange {
            client,
            server,
            interface: self.interface_of(id),
            request,
            response,
        };
        let answered = ex.response.is_some();
        if answered {
            self.counts.exchanges_seen += 1;
        } else {
            self.counts.unanswered += 1;
        }
        let req_matched = self.matches_request(&ex.request);
        let matched = req_matched
            || ex
                .response
                .as_ref()
                .is_some_and(|r| self.matches_response(r));
        if matched && !self.finished() {
            // What the summary calls exchanges: those reported.
            if answered {
                self.counts.exchanges += 1;
            }
            // The text output showed the request already when it matched on its own.
            self.report(Record::Exchange {
                exchange: ex,
                show_request: !req_matched,
            });
        } else {
            pool::recycle(ex);
        }
    }

    fn orphan(&mut self, response: Box<Response>, client: SocketAddr, server: SocketAddr) {
        self.counts.orphan_responses += 1;
        if self.matches_response(&response) && !self.finished() {
            self.report(Record::Orphan {
                response,
                client,
                server,
            });
        } else {
            pool::recycle_response(response);
        }
    }

    fn tls(&mut self, t: TlsFlow) {
        self.counts.tls_flows += 1;
        if let Some(m) = &self.matcher {
            let sni = t
                .hello
                .as_ref()
                .and_then(|h| h.sni.as_deref())
                .unwrap_or("");
            if !m.is_match(sni.as_bytes()) {
                return;
            }
        }
        self.report(Record::Tls(t));
    }
}

/// What one direction of a flow carries.
enum Carries {
    /// Not enough bytes yet to tell.
    Unknown(Vec<u8>),
    Http(Box<Parser>),
    /// The client side of a TLS handshake: buffering the ClientHello.
    TlsHello(Vec<u8>),
    /// Nothing more to learn from this direction.
    Ignored,
}

pub struct HttpFlow {
    dirs: [Carries; 2],
    pending: VecDeque<Box<Request>>,
    asked: VecDeque<Asked>,
    done: bool,
}

impl HttpFlow {
    /// (client, server) given the direction requests travel in.
    fn ends(id: &FlowId, request_dir: Dir) -> (SocketAddr, SocketAddr) {
        id.ends(request_dir)
    }

    fn request_dir(&self, dir: Dir, role: Role) -> Dir {
        match role {
            Role::Request => dir,
            Role::Response => dir.other(),
        }
    }

    fn decide(&mut self, ctx: &mut Ctx, id: &FlowId, dir: Dir, first: &[u8], ts: SystemTime) {
        match tls::sniff(first) {
            tls::Sniffed::Handshake if first.get(5) == Some(&1) => {
                self.dirs[dir.index()] = Carries::TlsHello(Vec::new());
            }
            tls::Sniffed::Handshake | tls::Sniffed::Records => {
                // A ServerHello or records without a ClientHello: encrypted, handshake
                // missed (or the client side was not captured).
                self.tls_found(ctx, id, dir.other(), ts, None);
            }
            tls::Sniffed::Unsure | tls::Sniffed::NotTls => {
                let role = if first.starts_with(b"HTTP/") {
                    Role::Response
                } else {
                    Role::Request
                };
                self.dirs[dir.index()] =
                    Carries::Http(Box::new(Parser::new(role, ctx.limits.clone())));
            }
        }
    }

    /// Reports the flow as TLS (`client_dir`: the direction the client sends in); nothing
    /// more is decoded on it.
    fn tls_found(
        &mut self,
        ctx: &mut Ctx,
        id: &FlowId,
        client_dir: Dir,
        ts: SystemTime,
        hello: Option<tls::ClientHello>,
    ) {
        let (client, server) = id.ends(client_dir);
        let interface = ctx.interface_of(id);
        ctx.tls(TlsFlow {
            ts,
            client,
            server,
            interface,
            hello,
        });
        self.done = true;
    }

    fn handle(&mut self, ctx: &mut Ctx, id: &FlowId, dir: Dir, role: Role, out: &mut Vec<Parsed>) {
        let req_dir = self.request_dir(dir, role);
        let (client, server) = Self::ends(id, req_dir);
        for p in out.drain(..) {
            match p {
                Parsed::Request(r) => {
                    ctx.request_done(&r, client, server);
                    self.asked.push_back(Asked::of(&r.method));
                    self.pending.push_back(r);
                    if self.pending.len() > MAX_PENDING {
                        self.asked.pop_front();
                        if let Some(old) = self.pending.pop_front() {
                            ctx.exchange(id, (client, server), old, None);
                        }
                    }
                }
                Parsed::Response(r) => {
                    if (100..200).contains(&r.status) && r.status != 101 {
                        continue; // interim (100 Continue): the final response follows
                    }
                    self.asked.pop_front();
                    match self.pending.pop_front() {
                        Some(req) => ctx.exchange(id, (client, server), req, Some(r)),
                        None => ctx.orphan(r, client, server),
                    }
                }
                Parsed::Tunnel => {
                    // A 101 or an accepted CONNECT: neither direction is HTTP from here.
                    if role == Role::Response {
                        for c in &mut self.dirs {
                            if let Carries::Http(p) = c {
                                p.tunnel();
                            }
                        }
                    }
                }
                Parsed::Lost => {
                    ctx.counts.resyncs += 1;
                    self.flush_pending(ctx, id, client, server);
                }
            }
        }
    }

    fn flush_pending(
        &mut self,
        ctx: &mut Ctx,
        id: &FlowId,
        client: SocketAddr,
        server: SocketAddr,
    ) {
        self.asked.clear();
        while let Some(req) = self.pending.pop_front() {
            ctx.exchange(id, (client, server), req, None);
        }
    }
}

impl Handler for HttpFlow {
    type Ctx = Ctx;

    fn open(_: &mut Ctx, _: &FlowId) -> Self {
        HttpFlow {
            dirs: [Carries::Unknown(Vec::new()), Carries::Unknown(Vec::new())],
            pending: VecDeque::new(),
            asked: VecDeque::new(),
            done: false,
        }
    }

    fn data(&mut self, ctx: &mut Ctx, id: &FlowId, dir: Dir, data: &[u8], ts: SystemTime) {
        if self.done {
            return;
        }
        if let Carries::Unknown(buf) = &mut self.dirs[dir.index()] {
            if buf.is_empty() && data.len() >= SNIFF_BYTES {
                self.decide(ctx, id, dir, data, ts);
            } else {
                buf.extend_from_slice(data);
                if buf.len() < SNIFF_BYTES {
                    return;
                }
                let first = std::mem::take(buf);
                self.decide(ctx, id, dir, &first, ts);
                return self.data(ctx, id, dir, &first, ts);
            }
        }
        match &mut self.dirs[dir.index()] {
            Carries::Http(p) => {
                let role = p.role();
                let mut out = std::mem::take(&mut ctx.scratch);
                p.feed(data, ts, &self.asked, &mut out);
                if !out.is_empty() {
                    self.handle(ctx, id, dir, role, &mut out);
                }
                ctx.scratch = out;
            }
            Carries::TlsHello(buf) => {
                let room = tls::MAX_HELLO.saturating_sub(buf.len());
                buf.extend_from_slice(&data[..data.len().min(room)]);
                let hello = match tls::client_hello(buf) {
                    Hello::Partial if room > 0 => return,
                    Hello::Complete(h) => Some(h),
                    Hello::Partial | Hello::Invalid => None,
                };
                self.dirs[dir.index()] = Carries::Ignored;
                self.tls_found(ctx, id, dir, ts, hello);
            }
            Carries::Unknown(_) | Carries::Ignored => {}
        }
    }

    fn gap(&mut self, ctx: &mut Ctx, id: &FlowId, dir: Dir, len: u64, _ts: SystemTime) {
        if let Carries::Http(p) = &mut self.dirs[dir.index()] {
            let role = p.role();
            let mut out = std::mem::take(&mut ctx.scratch);
            p.gap(len, &mut out);
            self.handle(ctx, id, dir, role, &mut out);
            ctx.scratch = out;
        } else if let Carries::Unknown(buf) = &mut self.dirs[dir.index()] {
            // The first bytes were lost: whatever follows is mid-message; let the
            // parser resynchronise on it.
            if !buf.is_empty() {
                *buf = Vec::new();
            }
        }
    }

    fn end(&mut self, ctx: &mut Ctx, id: &FlowId, dir: Dir, ts: SystemTime) {
        if let Carries::Unknown(buf) = &mut self.dirs[dir.index()] {
            if !buf.is_empty() && !self.done {
                // A short stream (under SNIFF_BYTES): decide on what there is.
                let first = std::mem::take(buf);
                self.decide(ctx, id, dir, &first, ts);
                if let Carries::Http(_) = &self.dirs[dir.index()] {
                    self.data(ctx, id, dir, &first, ts);
                }
            }
        }
        if let Carries::Http(p) = &mut self.dirs[dir.index()] {
            let role = p.role();
            let mut out = std::mem::take(&mut ctx.scratch);
            p.end(&mut out);
            self.handle(ctx, id, dir, role, &mut out);
            ctx.scratch = out;
        }
    }

    fn close(&mut self, ctx: &mut Ctx, id: &FlowId, _reason: CloseReason) {
        // Requests that never got a response are still reported.
        let req_dir = self
            .dirs
            .iter()
            .enumerate()
            .find_map(|(i, c)| match c {
                Carries::Http(p) => {
                    let d = if i == 0 { Dir::FromOrig } else { Dir::FromResp };
                    Some(self.request_dir(d, p.role()))
                }
                _ => None,
            })
            .unwrap_or(Dir::FromOrig);
        let (client, server) = Self::ends(id, req_dir);
        self.flush_pending(ctx, id, client, server);
    }

    fn done(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::json::Json;
    use crate::reassembly::{Config, Table};
    use crate::wire::packet::{build::ethernet_tcp, decode, flags, LinkType};
    use std::time::{Duration, SystemTime};

    /// Pseudo-random segments over a few flows (any flags, sequence numbers near each
    /// other, payloads drawn from HTTP fragments and garbage): the whole stack must never
    /// panic and must stay within its bounds. The same shape as fuzz/reassembly.rs, run on
    /// every `cargo test`.
    #[test]
    fn hostile_segment_streams_never_panic_and_stay_bounded() {
        let pieces: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"ffffffff\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
            b"\x16\x03\x01\x00\x05\x01\x00\x00\x01",
            b"\x00\xff\r\n\r\n",
            b"HTTP/1.1 101 Switching\r\n\r\n",
        ];
        let mut x: u64 = 0x853c49e6748fea9b;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let cfg = Config {
            max_flows: 3,
            max_buffered_bytes: 4096,
            max_buffered_segments: 8,
            ..Config::default()
        };
        let mut table: Table<HttpFlow> = Table::new(cfg);
        let mut ctx = Ctx::new(
            Limits {
                max_body: 64,
                ..Limits::default()
            },
            Box::new(Json::new(std::io::sink())),
            None,
            false,
        );
        let mut seqs = [0u32; 16];
        let mut t = SystemTime::UNIX_EPOCH;
        for _ in 0..200_000 {
            let r = rnd();
            let flow = (r & 3) as usize;
            let to_server = r & 4 == 0;
            let (c, s) = (
                format!("10.0.0.{flow}:1000").parse().unwrap(),
                "10.0.1.1:80".parse().unwrap(),
            );
            let (src, dst) = if to_server { (c, s) } else { (s, c) };
            let piece = pieces[(r >> 8) as usize % pieces.len()];
            let slot = flow * 2 + usize::from(to_server);
            // Mostly in order, sometimes behind, ahead or far away.
            let seq = match (r >> 16) % 10 {
                0 => seqs[slot].wrapping_sub(5),
                1 => seqs[slot].wrapping_add(100),
                2 => (r >> 32) as u32,
                _ => seqs[slot],
            };
            let fl = match (r >> 24) % 40 {
                0 => flags::SYN,
                1 => flags::FIN | flags::ACK,
                2 => flags::RST,
                _ => flags::ACK,
            };
            seqs[slot] = seq.wrapping_add(piece.len() as u32);
            t += Duration::from_millis((r >> 40) % 50);
            let frame = ethernet_tcp(src, dst, seq, 0, fl, piece);
            let cut = if (r >> 48) % 7 == 0 {
                frame.len() - (r as usize % piece.len().max(1))
            } else {
                frame.len()
            };
            if let Ok(seg) = decode(LinkType::Ethernet, &frame[..cut]) {
                table.segment(&mut ctx, &seg, t);
            }
            assert!(table.len() <= 3);
        }
        table.finish(&mut ctx, t);
        assert!(ctx.counts.requests > 0);
    }
}
