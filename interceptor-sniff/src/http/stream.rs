//! HTTP/1.1 message parsing over one reassembled direction of a connection.
//!
//! A `Parser` is an explicit state machine fed with in-order bytes, gaps and the end of
//! the stream. It finds message heads (`head::scan` for plain ones, httparse for the
//! rest), frames bodies per RFC 9112 section 6 (Content-Length, chunked with trailers,
//! close-delimited, no body for HEAD, 1xx, 204 and 304), stops at Upgrade and CONNECT,
//! and after a gap or garbage resynchronises at the next line that looks like a message
//! start. Heads are bounded; bodies are kept up to a limit and counted beyond it, so
//! hostile input cannot grow memory.

use std::collections::VecDeque;
use std::time::SystemTime;

use super::decode::{Coding, Collector};
use super::head::{self, StartLine};
use super::head::{Role, MAX_HEADERS};
use super::message::{Headers, Known, Request, Response};
use super::pool;

#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest head (start line + headers) accepted.
    pub max_head: usize,
    /// Decoded body bytes kept per message.
    pub max_body: usize,
    /// Decoded body bytes counted before decoding stops.
    pub max_decoded: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: 64 * 1024,
            max_body: 64 * 1024,
            max_decoded: 64 << 20,
        }
    }
}

/// What the parser found.
#[derive(Debug)]
pub enum Parsed {
    Request(Box<Request>),
    Response(Box<Response>),
    /// After this the direction carries another protocol (Upgrade accepted, CONNECT).
    Tunnel,
    /// The parser lost its place (gap inside a head, garbage, unframeable message) and
    /// skips to the next message start; pairing across this point is unreliable.
    Lost,
}

/// What the response side needs to know about the request it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asked {
    Head,
    Connect,
    Other,
}

impl Asked {
    pub fn of(method: &str) -> Asked {
        match method {
            "HEAD" => Asked::Head,
            "CONNECT" => Asked::Connect,
            _ => Asked::Other,
        }
    }
}

/// How a message body is delimited (RFC 9112 section 6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

/// Why a message cannot be framed; the rest of the direction is not trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BadFraming {
    /// Content-Length not a number, or several different ones.
    ContentLength,
    /// A request whose Transfer-Encoding does not end in chunked.
    TransferEncoding,
}

fn transfer_chunked(headers: &Headers) -> Option<bool> {
    let mut last = None;
    for v in headers.known(Known::TransferEncoding) {
        for coding in v.split(',') {
            let c = coding.trim();
            if !c.is_empty() {
                last = Some(c.eq_ignore_ascii_case("chunked"));
            }
        }
    }
    last
}

fn content_length(headers: &Headers) -> Result<Option<u64>, BadFraming> {
    let mut found: Option<u64> = None;
    for v in headers.known(Known::ContentLength) {
        // A list of identical values is allowed (RFC 9110 8.6); anything else is not.
        for part in v.as_bytes().split(|b| *b == b',') {
            let n = decimal(part.trim_ascii()).ok_or(BadFraming::ContentLength)?;
            match found {
                Some(f) if f != n => return Err(BadFraming::ContentLength),
                _ => found = Some(n),
            }
        }
    }
    Ok(found)
}

/// A non-empty run of ASCII digits as a number, if it fits.
fn decimal(b: &[u8]) -> Option<u64> {
    if b.is_empty() {
        return None;
    }
    b.iter().try_fold(0u64, |n, &c| {
        let d = c.checked_sub(b'0').filter(|d| *d <= 9)?;
        n.checked_mul(10)?.checked_add(u64::from(d))
    })
}

/// Request body framing. Transfer-Encoding overrides Content-Length (RFC 9112 6.3 item 3).
pub(crate) fn request_framing(headers: &Headers) -> Result<Framing, BadFraming> {
    match transfer_chunked(headers) {
        Some(true) => Ok(Framing::Chunked),
        Some(false) => Err(BadFraming::TransferEncoding),
        None => Ok(match content_length(headers)? {
            Some(0) | None => Framing::None,
            Some(n) => Framing::Length(n),
        }),
    }
}

/// Response body framing, given the request it answers.
pub(crate) fn response_framing(
    status: u16,
    asked: Asked,
    headers: &Headers,
) -> Result<Framing, BadFraming> {
    if asked == Asked::Head || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Framing::None);
    }
    if asked == Asked::Connect && (200..300).contains(&status) {
        return Ok(Framing::None);
    }
    match transfer_chunked(headers) {
        Some(true) => Ok(Framing::Chunked),
        Some(false) => Ok(Framing::Close),
        None => Ok(match content_length(headers)? {
            Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }),
    }
}

#[derive(Debug)]
enum Chunk {
    /// Reading a chunk-size line.
    Size,
    Data(u64),
    /// The CRLF after chunk data.
    DataEnd,
    /// Trailer fields after the last chunk, up to an empty line.
    Trailer,
}

enum State {
    /// Between messages.
    Idle,
    /// Part of a head is in `buf`.
    Head,
    Length(u64),
    Chunked(Chunk),
    Close,
    /// Not HTTP any more.
    Tunnel,
    /// Skipping to the next line that starts a message.
    Resync,
}

/// A message whose head is parsed and whose body is being read.
enum Head {
    Request(Box<Request>),
    Response(Box<Response>),
}

impl Head {
    fn headers(&self) -> &Headers {
        match self {
            Head::Request(r) => &r.headers,
            Head::Response(r) => &r.headers,
        }
    }
}

struct Current {
    head: Head,
    body: Collector,
    /// Trailer fields arrive after the body and join the headers. Rare: boxed, so that
    /// the message being read stays small to move.
    trailers: Option<Box<Headers>>,
}

pub struct Parser {
    role: Role,
    state: State,
    limits: Limits,
    /// Partial head, chunk-size line or trailer section.
    buf: Vec<u8>,
    cur: Option<Current>,
    /// Timestamp of the first byte of the message being read.
    msg_ts: SystemTime,
    /// The previous byte delivered ended a line (a message may start at the next one).
    at_line_start: bool,
    /// Final responses completed during the current `feed`: the caller pops one pending
    /// request per response after the call, so the next head answers `pending[answered]`.
    answered: usize,
    /// A request with `Upgrade` went out: a 101 switches both directions to tunnel.
    pub upgrade_requested: bool,
}

const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

impl Parser {
    pub fn new(role: Role, limits: Limits) -> Parser {
        Parser {
            role,
            state: State::Idle,
            limits,
            buf: Vec::new(),
            cur: None,
            msg_ts: SystemTime::UNIX_EPOCH,
            at_line_start: true,
            answered: 0,
            upgrade_requested: false,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn is_tunnel(&self) -> bool {
        matches!(self.state, State::Tunnel)
    }

    /// Switches to tunnel mode (the other direction saw the Upgrade/CONNECT accepted).
    pub fn tunnel(&mut self) {
        self.state = State::Tunnel;
        self.buf = Vec::new();
        self.cur = None;
    }

    /// Bytes held by this parser (for memory accounting in tests).
    pub fn buffered(&self) -> usize {
        self.buf.capacity()
    }

    /// Feeds in-order bytes. `pending` lists the requests still waiting for a response,
    /// oldest first (responses need to know if they answer HEAD or CONNECT).
    pub fn feed(
        &mut self,
        mut data: &[u8],
        ts: SystemTime,
        pending: &VecDeque<Asked>,
        out: &mut Vec<Parsed>,
    ) {
        self.answered = 0;
        while !data.is_empty() {
            let used = match self.state {
                State::Tunnel => data.len(),
                State::Idle => {
                    // Blank lines between messages are allowed (RFC 9112 2.2).
                    let skip = data
                        .iter()
                        .take_while(|b| **b == b'\r' || **b == b'\n')
                        .count();
                    if skip > 0 {
                        skip
                    } else {
                        self.msg_ts = ts;
                        self.state = State::Head;
                        0
                    }
                }
                State::Head => self.head(data, pending, out),
                State::Length(rem) => {
                    let n = (rem.min(data.len() as u64)) as usize;
                    if let Some(c) = self.cur.as_mut() {
                        c.body.push(&data[..n]);
                    }
                    if rem - n as u64 == 0 {
                        self.complete(out, false);
                    } else {
                        self.state = State::Length(rem - n as u64);
                    }
                    n
                }
                State::Close => {
                    if let Some(c) = self.cur.as_mut() {
                        c.body.push(data);
                    }
                    data.len()
                }
                State::Chunked(_) => self.chunked(data, out),
                State::Resync => self.resync(data),
            };
            if used > 0 {
                self.at_line_start = data[used - 1] == b'\n';
            }
            data = &data[used..];
        }
    }

    /// `len` bytes of this direction were lost.
    pub fn gap(&mut self, len: u64, out: &mut Vec<Parsed>) {
        match self.state {
            State::Tunnel | State::Resync => {}
            State::Idle => self.lose(out),
            State::Length(rem) if len < rem => {
                if let Some(c) = self.cur.as_mut() {
                    c.body.skip(len);
                }
                self.state = State::Length(rem - len);
            }
            State::Length(rem) if len == rem => {
                if let Some(c) = self.cur.as_mut() {
                    c.body.skip(len);
                }
                self.complete(out, false);
            }
            State::Chunked(Chunk::Data(rem)) if len < rem => {
                if let Some(c) = self.cur.as_mut() {
                    c.body.skip(len);
                }
                self.state = State::Chunked(Chunk::Data(rem - len));
            }
            State::Close => {
                if let Some(c) = self.cur.as_mut() {
                    c.body.skip(len);
                }
            }
            _ => {
                if self.cur.is_some() {
                    self.complete(out, true);
                }
                self.lose(out);
            }
        }
        self.at_line_start = false;
    }

    /// The direction ended: a close-delimited body completes, anything else was cut.
    pub fn end(&mut self, out: &mut Vec<Parsed>) {
        match self.state {
            State::Close => self.complete(out, false),
            State::Length(_) | State::Chunked(_) => self.complete(out, true),
            _ => {}
        }
        self.buf = Vec::new();
        self.state = State::Tunnel;
    }

    fn lose(&mut self, out: &mut Vec<Parsed>) {
        // The caller drops its pending requests on `Lost`: answer nothing from them.
        self.answered = usize::MAX / 2;
        self.buf = Vec::new();
        self.cur = None;
        self.state = State::Resync;
        out.push(Parsed::Lost);
    }

    /// Finds the end of the head in `buf ++ data`; returns bytes of `data` consumed.
    fn head(&mut self, data: &[u8], pending: &VecDeque<Asked>, out: &mut Vec<Parsed>) -> usize {
        let scan_from = self.buf.len().saturating_sub(3);
        let had = self.buf.len();
        if had == 0 {
            // Fast path: parse in place; usually the whole head is in this segment.
            return match self.parse_head(data) {
                Ok(Some((h, used))) => {
                    self.start_body(h, pending, out);
                    used
                }
                Ok(None) if data.len() <= self.limits.max_head && !self.early_garbage(data) => {
                    self.buf.extend_from_slice(data);
                    data.len()
                }
                Ok(None) => {
                    self.lose(out);
                    data.len()
                }
                Err(()) => {
                    // Not a head: look for the next message start after its first line
                    // (not at it, or the same bytes would be tried again).
                    self.lose(out);
                    self.at_line_start = false;
                    0
                }
            };
        }
        let room = self.limits.max_head.saturating_sub(had);
        let take = data.len().min(room);
        self.buf.extend_from_slice(&data[..take]);
        // Only a new blank line can complete the head: look for one before parsing again,
        // so a head trickling in byte by byte costs linear time.
        match head_end(&self.buf, scan_from) {
            Some(end) => {
                let buf = std::mem::take(&mut self.buf);
                match self.parse_head(&buf[..end]) {
                    Ok(Some((h, _))) => self.start_body(h, pending, out),
                    Ok(None) | Err(()) => self.lose(out),
                }
                end - had
            }
            None => {
                if self.buf.len() >= self.limits.max_head || self.early_garbage(&self.buf) {
                    self.lose(out);
                }
                data.len()
            }
        }
    }

    /// A partial head whose first line already cannot start a message.
    fn early_garbage(&self, b: &[u8]) -> bool {
        let line = match memchr::memchr(b'\n', b) {
            Some(i) => &b[..i],
            None => return false,
        };
        !self.looks_like_start(line)
    }

    fn looks_like_start(&self, b: &[u8]) -> bool {
        match self.role {
            Role::Response => {
                b.starts_with(b"HTTP/1.") || (b.len() < 7 && b"HTTP/1.".starts_with(b))
            }
            Role::Request => {
                METHODS
                    .iter()
                    .any(|m| b.starts_with(m) || (b.len() < m.len() && m.starts_with(b)))
                    || (b.len() > 1
                        && b.iter().take_while(|c| c.is_ascii_uppercase()).count() > 0
                        && b.contains(&b' '))
            }
        }
    }

    /// Parses the head at the start of `b`: the message head and its length, None if `b`
    /// ends before the head does, or an error if it is not a valid head.
    fn parse_head(&self, b: &[u8]) -> Result<Option<(Head, usize)>, ()> {
        let mut fields = [[0; 4]; head::MAX_FIELDS];
        if let Some(s) = head::scan(b, self.role, &mut fields) {
            let head = match s.start.clone() {
                StartLine::Request {
                    method,
                    target,
                    minor,
                } => {
                    let mut r = pool::request(self.msg_ts);
                    r.method.push_str(&s.text[method]);
                    r.target.push_str(&s.text[target]);
                    r.version = version(Some(minor));
                    r.headers.push_scanned(&s);
                    Head::Request(r)
                }
                StartLine::Response {
                    minor,
                    status,
                    reason,
                } => {
                    let mut r = pool::response(self.msg_ts);
                    r.status = status;
                    r.reason.push_str(&s.text[reason]);
                    r.version = version(Some(minor));
                    r.headers.push_scanned(&s);
                    Head::Response(r)
                }
            };
            return Ok(Some((head, s.text.len())));
        }
        match self.role {
            Role::Request => {
                // Uninitialised header slots: initialising 100 of them per message costs
                // more than parsing a typical head.
                let mut storage = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() };
                    MAX_HEADERS];
                let mut req = httparse::Request::new(&mut []);
                let len = match req.parse_with_uninit_headers(b, &mut storage) {
                    Ok(httparse::Status::Complete(n)) => n,
                    Ok(httparse::Status::Partial) => return Ok(None),
                    Err(_) => return Err(()),
                };
                let mut r = pool::request(self.msg_ts);
                r.method.push_str(req.method.unwrap_or_default());
                r.target.push_str(req.path.unwrap_or_default());
                r.version = version(req.version);
                collect_headers(&b[..len], req.headers, &mut r.headers);
                Ok(Some((Head::Request(r), len)))
            }
            Role::Response => {
                let mut storage = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() };
                    MAX_HEADERS];
                let mut resp = httparse::Response::new(&mut []);
                let config = httparse::ParserConfig::default();
                let len =
                    match config.parse_response_with_uninit_headers(&mut resp, b, &mut storage) {
                        Ok(httparse::Status::Complete(n)) => n,
                        Ok(httparse::Status::Partial) => return Ok(None),
                        Err(_) => return Err(()),
                    };
                let mut r = pool::response(self.msg_ts);
                r.status = resp.code.unwrap_or_default();
                r.reason.push_str(resp.reason.unwrap_or_default());
                r.version = version(resp.version);
                collect_headers(&b[..len], resp.headers, &mut r.headers);
                Ok(Some((Head::Response(r), len)))
            }
        }
    }

    fn start_body(&mut self, mut head: Head, pending: &VecDeque<Asked>, out: &mut Vec<Parsed>) {
        let (framing, tunnel_after) = match &head {
            Head::Request(r) => {
                if r.headers.known(Known::Upgrade).next().is_some() {
                    self.upgrade_requested = true;
                }
                (request_framing(&r.headers), r.method == "CONNECT")
            }
            Head::Response(r) => {
                // Responses completed earlier in this feed answered the first requests.
                let asked = pending.get(self.answered).copied().unwrap_or(Asked::Other);
                let tunnel =
                    r.status == 101 || (asked == Asked::Connect && (200..300).contains(&r.status));
                (response_framing(r.status, asked, &r.headers), tunnel)
            }
        };
        let coding = Coding::from_header(head.headers().known(Known::ContentEncoding).next());
        // The body goes into the (recycled) buffer of the message it belongs to.
        let buffer = match &mut head {
            Head::Request(r) => std::mem::take(&mut r.body.data),
            Head::Response(r) => std::mem::take(&mut r.body.data),
        };
        let body = Collector::new(coding, self.limits.max_body, self.limits.max_decoded)
            .with_buffer(buffer);
        self.cur = Some(Current {
            head,
            body,
            trailers: None,
        });
        match framing {
            Ok(Framing::None) => self.complete(out, false),
            Ok(Framing::Length(n)) => self.state = State::Length(n),
            Ok(Framing::Chunked) => self.state = State::Chunked(Chunk::Size),
            Ok(Framing::Close) => self.state = State::Close,
            Err(_) => {
                // Report the head we saw, then distrust the rest of the direction.
                self.complete(out, true);
                self.lose(out);
                return;
            }
        }
        if tunnel_after {
            if matches!(self.state, State::Idle) {
                out.push(Parsed::Tunnel);
                self.state = State::Tunnel;
            } else {
                // Body first (rare: a 101 with a body is not allowed, but be safe).
                self.state = State::Tunnel;
                self.complete_into_tunnel(out);
            }
        }
    }

    fn complete_into_tunnel(&mut self, out: &mut Vec<Parsed>) {
        self.complete(out, false);
        out.push(Parsed::Tunnel);
        self.state = State::Tunnel;
    }

    /// Emits the current message; `cut` says its body ended early.
    fn complete(&mut self, out: &mut Vec<Parsed>, cut: bool) {
        self.state = State::Idle;
        let Some(c) = self.cur.take() else { return };
        let body = c.body.finish(cut);
        match c.head {
            Head::Request(mut r) => {
                r.body = body;
                if let Some(t) = c.trailers {
                    r.headers.append(&t);
                }
                out.push(Parsed::Request(r));
            }
            Head::Response(mut r) => {
                if !(100..200).contains(&r.status) || r.status == 101 {
                    self.answered += 1;
                }
                r.body = body;
                if let Some(t) = c.trailers {
                    r.headers.append(&t);
                }
                out.push(Parsed::Response(r));
            }
        }
    }

    fn chunked(&mut self, data: &[u8], out: &mut Vec<Parsed>) -> usize {
        let State::Chunked(chunk) = &mut self.state else {
            return data.len();
        };
        match chunk {
            Chunk::Data(rem) => {
                let n = (*rem).min(data.len() as u64) as usize;
                *rem -= n as u64;
                if *rem == 0 {
                    *chunk = Chunk::DataEnd;
                }
                if let Some(c) = self.cur.as_mut() {
                    c.body.push(&data[..n]);
                }
                n
            }
            Chunk::DataEnd => {
                // Expect CRLF (tolerate a bare LF).
                match data[0] {
                    b'\r' => 1,
                    b'\n' => {
                        *chunk = Chunk::Size;
                        1
                    }
                    _ => {
                        self.complete(out, true);
                        self.lose(out);
                        0
                    }
                }
            }
            Chunk::Size | Chunk::Trailer => {
                let is_size = matches!(chunk, Chunk::Size);
                let line_limit = if is_size { 1024 } else { self.limits.max_head };
                let (line_done, used) = match memchr::memchr(b'\n', data) {
                    Some(i) => (true, i + 1),
                    None => (false, data.len()),
                };
                if self.buf.len() + used > line_limit {
                    self.complete(out, true);
                    self.lose(out);
                    return used;
                }
                self.buf.extend_from_slice(&data[..used]);
                if !line_done {
                    return used;
                }
                if is_size {
                    match parse_chunk_size(&self.buf) {
                        Some(0) => {
                            self.buf.clear();
                            self.state = State::Chunked(Chunk::Trailer);
                        }
                        Some(n) => {
                            self.buf.clear();
                            self.state = State::Chunked(Chunk::Data(n));
                        }
                        None => {
                            self.buf = Vec::new();
                            self.complete(out, true);
                            self.lose(out);
                        }
                    }
                } else {
                    // Trailer section: ends with an empty line.
                    let n = self.buf.len();
                    let blank_line = self.buf == b"\r\n" || self.buf == b"\n";
                    let ends =
                        blank_line || self.buf.ends_with(b"\n\r\n") || self.buf.ends_with(b"\n\n");
                    if ends {
                        if !blank_line {
                            let trailers = parse_trailers(&self.buf[..n]);
                            if let Some(c) = self.cur.as_mut() {
                                c.trailers = Some(Box::new(trailers));
                            }
                        }
                        self.buf = Vec::new();
                        self.complete(out, false);
                    }
                }
                used
            }
        }
    }

    /// Skips to the next line that starts a message.
    fn resync(&mut self, data: &[u8]) -> usize {
        let mut at = if self.at_line_start { Some(0) } else { None };
        let mut search = 0;
        loop {
            if let Some(i) = at {
                let rest = &data[i..];
                let full = match self.role {
                    Role::Response => rest.starts_with(b"HTTP/1."),
                    Role::Request => METHODS.iter().any(|m| rest.starts_with(m)),
                };
                if full {
                    self.state = State::Idle;
                    return i;
                }
            }
            match memchr::memchr(b'\n', &data[search..]) {
                Some(j) => {
                    at = Some(search + j + 1);
                    search = search + j + 1;
                    if search >= data.len() {
                        return data.len();
                    }
                }
                None => return data.len(),
            }
        }
    }
}

/// Index just past the blank line ending a head, scanning from `from`.
fn head_end(b: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while let Some(i) = memchr::memchr(b'\n', &b[at..]) {
        let nl = at + i;
        match b.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if b.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => {}
        }
        at = nl + 1;
    }
    None
}

fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let mut n: u64 = 0;
    let mut digits = 0;
    for &b in line {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => break,
        };
        n = n.checked_mul(16)?.checked_add(u64::from(d))?;
        digits += 1;
    }
    let rest = &line[digits..];
    let rest_ok = matches!(rest.first(), Some(b';' | b'\r' | b'\n' | b' ' | b'\t'));
    (digits > 0 && rest_ok).then_some(n)
}

fn parse_trailers(b: &[u8]) -> Headers {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut out = Headers::new();
    if let Ok(httparse::Status::Complete((n, hs))) = httparse::parse_headers(b, &mut storage) {
        collect_headers(&b[..n], hs, &mut out);
    }
    out
}

/// Copies the fields httparse found in `head` into `out`. Values that are not UTF-8
/// (obs-text) are kept with replacement characters.
fn collect_headers(head: &[u8], hs: &[httparse::Header<'_>], out: &mut Headers) {
    // Where each name and value lies in `head` (httparse's slices borrow from it). The head
    // is checked as UTF-8 once, whole: a value of a valid head, cut at ASCII delimiters, is
    // valid by itself.
    let base = head.as_ptr() as usize;
    let at = |s: &[u8]| {
        let i = (s.as_ptr() as usize).wrapping_sub(base);
        i..i.wrapping_add(s.len())
    };
    let fields = hs.iter().map(|h| (at(h.name.as_bytes()), at(h.value)));
    if out.push_head(head, fields).is_err() {
        for h in hs {
            out.push(h.name, &String::from_utf8_lossy(h.value));
        }
    }
}

fn version(v: Option<u8>) -> &'static str {
    match v {
        Some(0) => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(role: Role, pieces: &[&[u8]], pending: &[Asked]) -> Vec<Parsed> {
        let mut p = Parser::new(
            role,
            Limits {
                max_body: 32,
                ..Limits::default()
            },
        );
        let pending: VecDeque<Asked> = pending.iter().copied().collect();
        let mut out = Vec::new();
        for piece in pieces {
            p.feed(piece, SystemTime::UNIX_EPOCH, &pending, &mut out);
        }
        p.end(&mut out);
        out
    }

    fn summary(out: &[Parsed]) -> Vec<String> {
        out.iter()
            .map(|m| match m {
                Parsed::Request(r) => format!(
                    "{} {} {}{}",
                    r.method,
                    r.target,
                    String::from_utf8_lossy(&r.body.data),
                    if r.body.truncated { " (cut)" } else { "" }
                ),
                Parsed::Response(r) => format!(
                    "{} {}/{}{}",
                    r.status,
                    String::from_utf8_lossy(&r.body.data),
                    r.body.len,
                    if r.body.truncated { " (cut)" } else { "" }
                ),
                Parsed::Tunnel => "tunnel".into(),
                Parsed::Lost => "lost".into(),
            })
            .collect()
    }

    #[test]
    fn pipelined_requests_split_anywhere() {
        let wire = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /c HTTP/1.1\r\n\r\n";
        for split in 1..wire.len() {
            let out = run(Role::Request, &[&wire[..split], &wire[split..]], &[]);
            assert_eq!(
                summary(&out),
                vec!["GET /a ", "POST /b hello", "GET /c "],
                "split at {split}"
            );
        }
    }

    #[test]
    fn chunked_with_trailers_and_extensions() {
        let wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        for split in 1..wire.len() {
            let out = run(
                Role::Response,
                &[&wire[..split], &wire[split..]],
                &[Asked::Other, Asked::Other],
            );
            assert_eq!(
                summary(&out),
                vec!["200 hello world/11", "204 /0"],
                "split at {split}"
            );
            let Parsed::Response(r) = &out[0] else {
                panic!()
            };
            assert_eq!(r.header("x-checksum"), Some("abc"));
        }
    }

    #[test]
    fn no_body_cases_head_1xx_204_304() {
        let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let out = run(
            Role::Response,
            &[wire],
            &[Asked::Head, Asked::Other, Asked::Other],
        );
        assert_eq!(
            summary(&out),
            vec!["100 /0", "200 /0", "304 /0", "200 ok/2"]
        );
    }

    #[test]
    fn close_delimited_body_and_cut_length() {
        let out = run(
            Role::Response,
            &[b"HTTP/1.0 200 OK\r\n\r\nuntil ", b"close"],
            &[],
        );
        assert_eq!(summary(&out), vec!["200 until close/11"]);
        let out = run(
            Role::Response,
            &[b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"],
            &[],
        );
        assert_eq!(summary(&out), vec!["200 abc/3 (cut)"]);
    }

    #[test]
    fn upgrade_and_connect_stop_decoding() {
        let out = run(
            Role::Response,
            &[b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello GET / HTTP/1.1\r\n\r\n"],
            &[Asked::Other],
        );
        assert_eq!(summary(&out), vec!["101 /0", "tunnel"]);
        let out = run(
            Role::Request,
            &[b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n\x16\x03\x01GET / HTTP/1.1\r\n\r\n"],
            &[],
        );
        assert_eq!(summary(&out), vec!["CONNECT a:443 ", "tunnel"]);
        let out = run(
            Role::Response,
            &[b"HTTP/1.1 200 OK\r\n\r\nraw tunnel bytes"],
            &[Asked::Connect],
        );
        assert_eq!(summary(&out), vec!["200 /0", "tunnel"]);
    }

    #[test]
    fn conflicting_framing_per_rfc9112() {
        // TE chunked overrides Content-Length.
        let out = run(
            Role::Request,
            &[b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n"],
            &[],
        );
        assert_eq!(summary(&out), vec!["POST / ab"]);
        // A request TE that is not chunked cannot be framed: reported, then resync.
        let out = run(
            Role::Request,
            &[b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\nxxxx\r\nGET /next HTTP/1.1\r\n\r\n"],
            &[],
        );
        assert_eq!(summary(&out), vec!["POST /  (cut)", "lost", "GET /next "]);
        // Different Content-Lengths: same.
        let out = run(
            Role::Request,
            &[b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"],
            &[],
        );
        assert_eq!(summary(&out), vec!["POST /  (cut)", "lost"]);
        // Identical repeated values are fine.
        let out = run(
            Role::Request,
            &[b"POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\nabc"],
            &[],
        );
        assert_eq!(summary(&out), vec!["POST / abc"]);
    }

    #[test]
    fn content_length_values() {
        let cl = |vals: &[&str]| {
            let h: Headers = vals.iter().map(|v| ("Content-Length", *v)).collect();
            content_length(&h)
        };
        let bad = Err(BadFraming::ContentLength);
        assert_eq!(cl(&[]), Ok(None));
        assert_eq!(cl(&["0"]), Ok(Some(0)));
        assert_eq!(cl(&["502"]), Ok(Some(502)));
        assert_eq!(cl(&[" 7 ,7\t", "7"]), Ok(Some(7)));
        assert_eq!(cl(&["18446744073709551615"]), Ok(Some(u64::MAX)));
        for v in [
            "",
            "+5",
            "-5",
            "5x",
            "0x10",
            "5,",
            "5,6",
            "18446744073709551616",
            "５",
        ] {
            assert_eq!(cl(&[v]), bad, "{v:?}");
        }
        assert_eq!(cl(&["5", "6"]), bad);
    }

    #[test]
    fn gap_in_body_is_skipped_and_gap_in_head_resyncs() {
        let mut p = Parser::new(Role::Request, Limits::default());
        let pend = VecDeque::new();
        let mut out = Vec::new();
        let t = SystemTime::UNIX_EPOCH;
        p.feed(
            b"POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\nab",
            t,
            &pend,
            &mut out,
        );
        p.gap(5, &mut out);
        p.feed(b"xyzGET /y HTT", t, &pend, &mut out);
        p.gap(3, &mut out);
        p.feed(
            b"junk\r\nmore junk\nGET /z HTTP/1.1\r\n\r\n",
            t,
            &pend,
            &mut out,
        );
        assert_eq!(
            summary(&out),
            vec!["POST /x abxyz (cut)", "lost", "GET /z "]
        );
    }

    #[test]
    fn midstream_start_resyncs_at_next_message() {
        let out = run(
            Role::Response,
            &[b"dy of something\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"],
            &[],
        );
        assert_eq!(summary(&out), vec!["lost", "200 x/1"]);
    }

    #[test]
    fn invalid_head_that_starts_like_a_message_is_skipped_once() {
        // The bad head begins with a method, so a resync at its own start would match it
        // again; the parser must move past it, whether the head is parsed in place or
        // from the buffer after arriving in pieces.
        let wire = b"GET / HTTP/1.1\r\nbad header line\r\n\r\nGET /ok HTTP/1.1\r\n\r\n";
        let out = run(Role::Request, &[wire], &[]);
        assert_eq!(summary(&out), vec!["lost", "GET /ok "]);
        let pieces: [&[u8]; 3] = [&wire[..3], &wire[3..35], &wire[35..]];
        assert_eq!(
            summary(&run(Role::Request, &pieces, &[])),
            vec!["lost", "GET /ok "]
        );
    }

    #[test]
    fn body_kept_up_to_limit_but_counted() {
        let mut wire = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec();
        wire.extend(std::iter::repeat_n(b'a', 1000));
        let out = run(Role::Response, &[&wire], &[]);
        let Parsed::Response(r) = &out[0] else {
            panic!()
        };
        assert_eq!(
            (r.body.data.len(), r.body.len, r.body.truncated),
            (32, 1000, true)
        );
    }

    #[test]
    fn hostile_input_stays_bounded() {
        let limits = Limits::default();
        // A head that never ends.
        let mut p = Parser::new(Role::Request, limits.clone());
        let pend = VecDeque::new();
        let mut out = Vec::new();
        p.feed(
            b"GET / HTTP/1.1\r\n",
            SystemTime::UNIX_EPOCH,
            &pend,
            &mut out,
        );
        for _ in 0..100_000 {
            p.feed(
                b"X-A: aaaaaaaaaaaaaaaa\r\n",
                SystemTime::UNIX_EPOCH,
                &pend,
                &mut out,
            );
            assert!(p.buffered() <= 2 * limits.max_head);
        }
        assert!(matches!(out[0], Parsed::Lost));
        // Endless chunks.
        let mut p = Parser::new(Role::Response, limits.clone());
        let mut out = Vec::new();
        p.feed(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            SystemTime::UNIX_EPOCH,
            &pend,
            &mut out,
        );
        for _ in 0..100_000 {
            p.feed(
                b"10\r\n0123456789abcdef\r\n",
                SystemTime::UNIX_EPOCH,
                &pend,
                &mut out,
            );
        }
        assert!(out.is_empty() && p.buffered() < 4096);
        p.end(&mut out);
        let Parsed::Response(r) = &out[0] else {
            panic!()
        };
        assert_eq!(
            (r.body.len, r.body.data.len()),
            (1_600_000, limits.max_body)
        );
        // Oversized chunk sizes and overflow.
        let out = run(
            Role::Response,
            &[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffffff\r\n"],
            &[],
        );
        assert!(matches!(out.last(), Some(Parsed::Lost)));
        // Too many headers.
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..500 {
            many.extend_from_slice(format!("h{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let out = run(Role::Request, &[&many], &[]);
        assert!(matches!(out[0], Parsed::Lost));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic generator over an alphabet rich in HTTP syntax.
        let alphabet: &[&[u8]] = &[
            b"GET ",
            b"HTTP/1.1 ",
            b"200 ",
            b"\r\n",
            b"\n",
            b"Content-Length: ",
            b"Transfer-Encoding: chunked",
            b"0",
            b"5",
            b"ff",
            b";",
            b":",
            b" ",
            b"a",
            b"\x00",
            b"\xff",
            b"HEAD ",
            b"101 ",
        ];
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..2000 {
            let mut input = Vec::new();
            for _ in 0..40 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                input.extend_from_slice(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            for role in [Role::Request, Role::Response] {
                let cut = (x as usize) % input.len();
                let _ = run(
                    role,
                    &[&input[..cut], &input[cut..]],
                    &[Asked::Head, Asked::Connect],
                );
            }
        }
    }
}
