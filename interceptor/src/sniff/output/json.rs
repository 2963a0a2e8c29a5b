//! `--json`: one object per line, written by hand into a reused buffer because this is the
//! hot path of an offline run (tens of thousands of exchanges per second).

use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::SystemTime;

use super::{epoch_micros, tunnel_kind, utc, Output, Summary, TlsFlow};
use crate::http::{Body, Exchange, Headers, Request, Response};

/// Appends `,"name":` with the name known at compile time (one copy of a constant).
macro_rules! key {
    ($buf:expr, $k:literal) => {
        $buf.extend_from_slice(concat!(",\"", $k, "\":").as_bytes())
    };
}

pub struct Json<W: Write> {
    w: W,
    buf: Vec<u8>,
    /// Cached RFC 3339 prefix for the current second.
    ts_cache: (i64, String),
}

impl<W: Write> Json<W> {
    pub fn new(w: W) -> Json<W> {
        Json {
            w,
            buf: Vec::with_capacity(64 * 1024),
            ts_cache: (i64::MIN, String::new()),
        }
    }

    fn ts(&mut self, t: SystemTime) {
        let (secs, us) = epoch_micros(t);
        if self.ts_cache.0 != secs {
            let (y, mo, d, h, mi, s, _) = utc(t);
            self.ts_cache = (secs, format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}"));
        }
        self.buf.push(b'"');
        self.buf.extend_from_slice(self.ts_cache.1.as_bytes());
        let mut frac = *b".000000Z\"";
        let mut v = us;
        for d in frac[1..7].iter_mut().rev() {
            *d = b'0' + (v % 10) as u8;
            v /= 10;
        }
        self.buf.extend_from_slice(&frac);
    }

    fn end_line(&mut self) -> io::Result<()> {
        self.buf.extend_from_slice(b"}\n");
        if self.buf.len() >= 48 * 1024 {
            self.w.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    /// `,"name":` for a key that is not the first of its object.
    fn key(&mut self, k: &str) {
        self.buf.extend_from_slice(b",\"");
        self.buf.extend_from_slice(k.as_bytes());
        self.buf.extend_from_slice(b"\":");
    }

    /// Opens a record: `{"type":…,"ts":…,"client":…,"server":…` and the interface when known.
    fn head(
        &mut self,
        kind: &[u8],
        ts: SystemTime,
        client: SocketAddr,
        server: SocketAddr,
        interface: Option<&str>,
    ) {
        self.buf.extend_from_slice(b"{\"type\":\"");
        self.buf.extend_from_slice(kind);
        self.buf.push(b'"');
        key!(self.buf, "ts");
        self.ts(ts);
        key!(self.buf, "client");
        self.addr(client);
        key!(self.buf, "server");
        self.addr(server);
        if let Some(i) = interface {
            key!(self.buf, "interface");
            escape(&mut self.buf, i.as_bytes());
        }
    }

    fn addr(&mut self, a: SocketAddr) {
        self.buf.push(b'"');
        push_addr(&mut self.buf, a);
        self.buf.push(b'"');
    }

    /// `[[name, value], …]`, names lower-cased.
    fn headers(&mut self, hs: &Headers) {
        let buf = &mut self.buf;
        let mut pos = buf.len();
        // Room for a list of fields that need no escapes (the names and values are in
        // `text`); each field checks its own below.
        buf.resize(pos + hs.text().len() + 8 * hs.len() + 2 + SLACK, 0);
        buf[pos] = b'[';
        pos += 1;
        for (i, (n, v)) in hs.iter_bytes().enumerate() {
            // `,["` + name + `","` + value + `"]`, the closing `]`, and the scratch room.
            let need = pos + 9 + n.len() + v.len() + SLACK;
            if buf.len() < need {
                buf.resize(need, 0);
            }
            if i > 0 {
                buf[pos] = b',';
                pos += 1;
            }
            buf[pos..pos + 2].copy_from_slice(b"[\"");
            (pos, _) = put_escaped(buf, pos + 2, n, LOWER);
            buf[pos..pos + 3].copy_from_slice(b"\",\"");
            (pos, _) = put_escaped(buf, pos + 3, v, PLAIN);
            buf[pos..pos + 2].copy_from_slice(b"\"]");
            pos += 2;
        }
        buf[pos] = b']';
        buf.truncate(pos + 1);
    }

    fn body(&mut self, b: &Body) {
        key!(self.buf, "body_len");
        push_u64(&mut self.buf, b.len);
        key!(self.buf, "body");
        if !text(&mut self.buf, &b.data, b.truncated) {
            self.buf.push(b'"');
            base64(&mut self.buf, &b.data);
            self.buf.push(b'"');
            key!(self.buf, "body_encoding");
            self.buf.extend_from_slice(b"\"base64\"");
        }
        if b.truncated {
            key!(self.buf, "body_truncated");
            self.buf.extend_from_slice(b"true");
        }
    }

    fn request_obj(&mut self, r: &Request) {
        self.buf.extend_from_slice(b"{\"method\":");
        escape(&mut self.buf, r.method.as_bytes());
        key!(self.buf, "target");
        escape(&mut self.buf, r.target.as_bytes());
        self.message_rest(&r.version, &r.headers, &r.body);
    }

    fn response_obj(&mut self, r: &Response) {
        self.buf.extend_from_slice(b"{\"status\":");
        push_u64(&mut self.buf, u64::from(r.status));
        key!(self.buf, "reason");
        escape(&mut self.buf, r.reason.as_bytes());
        self.message_rest(&r.version, &r.headers, &r.body);
    }

    /// What requests and responses end with: version, headers, body, and the `}`.
    fn message_rest(&mut self, version: &str, headers: &Headers, body: &Body) {
        key!(self.buf, "version");
        escape(&mut self.buf, version.as_bytes());
        key!(self.buf, "headers");
        self.headers(headers);
        self.body(body);
        self.buf.push(b'}');
    }
}

/// Bytes that need escaping in a JSON string: controls, DEL, quote, backslash.
#[cfg(test)]
const fn needs_escape(c: u8) -> bool {
    c < 0x20 || c == b'"' || c == b'\\' || c == 0x7f
}

/// Bit 7 of each byte of the result is set where the byte of `w` needs escaping (or is
/// not ASCII, with `high`); the lowest set bit is exact (higher ones may be false positives
/// from borrows). SWAR, one word at a time.
#[inline]
fn escape_mask(w: u64, high: bool) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_in = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    let non_ascii = if high { w & HIGH } else { 0 };
    below_space
        | non_ascii
        | zero_in(w ^ (ONES * b'"' as u64))
        | zero_in(w ^ (ONES * b'\\' as u64))
        | zero_in(w ^ (ONES * 0x7f))
}

/// One bit per byte of `chunk` (16 bytes) that needs escaping (or is not ASCII, with
/// `high`).
#[cfg(target_arch = "x86_64")]
#[inline]
fn sse2_escape_mask(chunk: &[u8], high: bool) -> u32 {
    use std::arch::x86_64::*;
    debug_assert!(chunk.len() >= 16);
    // SAFETY: SSE2 is part of the x86_64 baseline; the load is unaligned and reads the
    // 16 bytes of `chunk`, which the caller guarantees exist.
    unsafe {
        let v = _mm_loadu_si128(chunk.as_ptr() as *const __m128i);
        // Unsigned v <= 0x1f  <=>  min(v, 0x1f) == v.
        let ctl = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
        let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
        let bslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
        let del = _mm_cmpeq_epi8(v, _mm_set1_epi8(0x7f));
        let special = _mm_movemask_epi8(_mm_or_si128(
            _mm_or_si128(ctl, quote),
            _mm_or_si128(bslash, del),
        )) as u32;
        // The sign bit of each byte is set exactly for bytes >= 0x80.
        let non_ascii = if high { _mm_movemask_epi8(v) as u32 } else { 0 };
        special | non_ascii
    }
}

/// `chunk` with its ASCII letters lower-cased (every header name goes through here).
#[inline(always)]
fn lower16(chunk: [u8; 16]) -> [u8; 16] {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE2 is part of the x86_64 baseline; loads and stores are unaligned and
    // touch exactly the 16 bytes of the arrays.
    unsafe {
        use std::arch::x86_64::*;
        let v = _mm_loadu_si128(chunk.as_ptr() as *const __m128i);
        // Signed compares: bytes >= 0x80 are negative, so never taken for letters.
        let upper = _mm_and_si128(
            _mm_cmpgt_epi8(v, _mm_set1_epi8(b'A' as i8 - 1)),
            _mm_cmplt_epi8(v, _mm_set1_epi8(b'Z' as i8 + 1)),
        );
        let lowered = _mm_or_si128(v, _mm_and_si128(upper, _mm_set1_epi8(0x20)));
        let mut out = [0u8; 16];
        _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, lowered);
        out
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        lower16_words(chunk)
    }
}

/// `lower16` a word at a time (SWAR), for targets without SSE2.
#[cfg_attr(all(target_arch = "x86_64", not(test)), allow(dead_code))]
fn lower16_words(chunk: [u8; 16]) -> [u8; 16] {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let mut out = [0u8; 16];
    for (o, w) in out.chunks_exact_mut(8).zip(chunk.chunks_exact(8)) {
        let x = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
        // Per byte, without carries between bytes: high bit set when the low seven bits
        // are >= 'A', and when they are > 'Z'; bytes >= 0x80 are left alone.
        let low = x & (0x7f * ONES);
        let ge_a = low + (0x80 - u64::from(b'A')) * ONES;
        let gt_z = low + (0x80 - u64::from(b'Z') - 1) * ONES;
        let upper = ge_a & !gt_z & !x & (0x80 * ONES);
        o.copy_from_slice(&(x | (upper >> 2)).to_le_bytes());
    }
    out
}

/// What `put_escaped` writes past its output: it stores 16 bytes at a time, whole, and the
/// bytes past the end are scratch that the caller overwrites or cuts off.
const SLACK: usize = 16;

/// Index of the first byte of `chunk` that needs escaping (or is not ASCII, with `high`);
/// 16 if none. SSE2 is part of the x86_64 baseline; elsewhere, two words at a time.
#[inline]
fn first_special(chunk: &[u8; 16], high: bool) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        let m = sse2_escape_mask(chunk, high);
        if m == 0 {
            16
        } else {
            m.trailing_zeros() as usize
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        first_special_words(chunk, high)
    }
}

/// `first_special` a word at a time (SWAR), for targets without SSE2.
#[cfg_attr(all(target_arch = "x86_64", not(test)), allow(dead_code))]
#[inline]
fn first_special_words(chunk: &[u8; 16], high: bool) -> usize {
    let (a, b) = chunk.split_at(8);
    for (k, w) in [(0, a), (8, b)] {
        let m = escape_mask(u64::from_le_bytes(w.try_into().unwrap_or([0; 8])), high);
        if m != 0 {
            return k + (m.trailing_zeros() / 8) as usize;
        }
    }
    16
}

/// The JSON escape for a byte that needs one, and its length.
fn escape_seq(c: u8) -> ([u8; 6], usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match c {
        b'"' => (*b"\\\"    ", 2),
        b'\\' => (*b"\\\\    ", 2),
        b'\n' => (*b"\\n    ", 2),
        b'\r' => (*b"\\r    ", 2),
        b'\t' => (*b"\\t    ", 2),
        _ => (
            [
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(c >> 4)],
                HEX[usize::from(c & 15)],
            ],
            6,
        ),
    }
}

/// How `put_escaped` copies.
#[derive(Clone, Copy)]
struct Put {
    /// Lower-case ASCII letters (header names). Lowering escaped text is the same as
    /// escaping lowered text: escapes are in lower case.
    lower: bool,
    /// Stop at a byte >= 0x80 (for `text` to check the rest as UTF-8 once).
    stop_non_ascii: bool,
    /// Stop at a NUL byte (binary data).
    stop_nul: bool,
}

const PLAIN: Put = Put {
    lower: false,
    stop_non_ascii: false,
    stop_nul: false,
};
const LOWER: Put = Put {
    lower: true,
    ..PLAIN
};

/// Writes `src`, escaped for the inside of a JSON string, into `buf` from `pos` on: 16
/// bytes at a time, each chunk stored whole and then checked, so text without escapes is
/// copied with no per-byte work (this is the hot path of a `--json` run). `buf` must hold
/// `src.len() + SLACK` bytes from `pos`; it is lengthened as escapes need, keeping that
/// room for the rest. Returns where the output ends and how much of `src` was written
/// (less than all only at a byte `stop` names).
#[inline(always)]
fn put_escaped(buf: &mut Vec<u8>, mut pos: usize, src: &[u8], how: Put) -> (usize, usize) {
    let mut i = 0;
    while i < src.len() {
        let rest = &src[i..];
        let chunk: [u8; 16] = match rest.first_chunk::<16>() {
            Some(c) => *c,
            None => pad16(rest),
        };
        buf[pos..pos + 16].copy_from_slice(&if how.lower { lower16(chunk) } else { chunk });
        let k = first_special(&chunk, how.stop_non_ascii).min(rest.len());
        pos += k;
        i += k;
        if k == 16 || i == src.len() {
            continue;
        }
        let c = src[i];
        if (how.stop_non_ascii && c >= 0x80) || (how.stop_nul && c == 0) {
            return (pos, i);
        }
        let (seq, n) = escape_seq(c);
        // One input byte becomes `n`: keep the room for the rest.
        buf.resize(buf.len() + n - 1, 0);
        buf[pos..pos + 6].copy_from_slice(&seq);
        pos += n;
        i += 1;
    }
    (pos, i)
}

/// `b` (under 16 bytes) padded to 16 with a byte that needs no escape. Two overlapping
/// copies of a fixed size, not a call to `memcpy`: most header names and values are this
/// short, and every string ends in such a tail.
#[inline(always)]
fn pad16(b: &[u8]) -> [u8; 16] {
    let mut c = [b' '; 16];
    let n = b.len();
    if n >= 8 {
        c[..8].copy_from_slice(&b[..8]);
        c[n - 8..n].copy_from_slice(&b[n - 8..]);
    } else if n >= 4 {
        c[..4].copy_from_slice(&b[..4]);
        c[n - 4..n].copy_from_slice(&b[n - 4..]);
    } else if n > 0 {
        c[0] = b[0];
        c[n / 2] = b[n / 2];
        c[n - 1] = b[n - 1];
    }
    c
}

/// JSON string escaping; `b` must be UTF-8 (header values were made so when parsed).
pub fn escape(out: &mut Vec<u8>, b: &[u8]) {
    let mut pos = out.len();
    out.resize(pos + 1 + b.len() + SLACK, 0);
    out[pos] = b'"';
    (pos, _) = put_escaped(out, pos + 1, b, PLAIN);
    out[pos] = b'"';
    out.truncate(pos + 1);
}

/// Writes a body as a JSON string if it is text: UTF-8 without NUL bytes. A body cut
/// (`truncated`) mid-character keeps the whole characters before the cut. Returns false,
/// having written nothing, for binary data. One pass: the copy stops at the first
/// non-ASCII byte, and only then is the rest checked as UTF-8.
fn text(out: &mut Vec<u8>, mut b: &[u8], truncated: bool) -> bool {
    let mark = out.len();
    out.resize(mark + 1 + b.len() + SLACK, 0);
    out[mark] = b'"';
    let mut pos = mark + 1;
    let mut start = 0;
    let mut how = Put {
        stop_non_ascii: true,
        stop_nul: true,
        ..PLAIN
    };
    loop {
        let (p, n) = put_escaped(out, pos, &b[start..], how);
        pos = p;
        start += n;
        let Some(&c) = b.get(start) else { break };
        if c == 0 {
            out.truncate(mark);
            return false;
        }
        // A byte >= 0x80: the rest must be UTF-8 (or a character cut by truncation).
        match std::str::from_utf8(&b[start..]) {
            Ok(_) => {}
            Err(e) if truncated && e.error_len().is_none() => b = &b[..start + e.valid_up_to()],
            Err(_) => {
                out.truncate(mark);
                return false;
            }
        }
        how.stop_non_ascii = false;
    }
    out[pos] = b'"';
    out.truncate(pos + 1);
    true
}

/// Appends `n` in decimal.
pub fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Each byte value in decimal, as its digits padded with dots, and how many digits.
const OCTETS: [([u8; 3], usize); 256] = {
    let mut t = [([b'.'; 3], 0); 256];
    let mut i = 0;
    while i < 256 {
        let (h, d, u) = ((i / 100) as u8, (i / 10 % 10) as u8, (i % 10) as u8);
        t[i] = if i >= 100 {
            ([b'0' + h, b'0' + d, b'0' + u], 3)
        } else if i >= 10 {
            ([b'0' + d, b'0' + u, b'.'], 2)
        } else {
            ([b'0' + u, b'.', b'.'], 1)
        };
        i += 1;
    }
    t
};

/// Appends `ip:port` (`[ip]:port` for IPv6) without going through `fmt`: two addresses
/// start every record.
pub fn push_addr(out: &mut Vec<u8>, a: SocketAddr) {
    match a {
        SocketAddr::V4(v4) => {
            // Each octet is written with a dot after it (the table pads with dots), the
            // next one over the padding; the last dot becomes the colon.
            let mut b = [0u8; 16];
            let mut at = 0;
            for o in v4.ip().octets() {
                let (digits, n) = OCTETS[usize::from(o)];
                b[at..at + 3].copy_from_slice(&digits);
                b[at + n] = b'.';
                at += n + 1;
            }
            b[at - 1] = b':';
            out.extend_from_slice(&b[..at]);
        }
        SocketAddr::V6(v6) => {
            let _ = write!(out, "[{}]:", v6.ip());
        }
    }
    push_u64(out, u64::from(a.port()));
}

pub fn base64(out: &mut Vec<u8>, b: &[u8]) {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        out.push(T[(n >> 18) as usize & 63]);
        out.push(T[(n >> 12) as usize & 63]);
        out.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63]
        } else {
            b'='
        });
        out.push(if c.len() > 2 {
            T[n as usize & 63]
        } else {
            b'='
        });
    }
}

impl<W: Write + Send> Output for Json<W> {
    fn request(&mut self, _: &Request, _: SocketAddr, _: SocketAddr) -> io::Result<()> {
        Ok(())
    }

    fn exchange(&mut self, ex: &Exchange, _show_request: bool) -> io::Result<()> {
        self.head(
            b"exchange",
            ex.request.ts,
            ex.client,
            ex.server,
            ex.interface.as_deref(),
        );
        key!(self.buf, "request");
        self.request_obj(&ex.request);
        key!(self.buf, "response");
        match &ex.response {
            Some(r) => self.response_obj(r),
            None => self.buf.extend_from_slice(b"null"),
        }
        key!(self.buf, "latency_us");
        match ex.latency_us() {
            Some(l) => push_u64(&mut self.buf, l),
            None => self.buf.extend_from_slice(b"null"),
        }
        if let Some(t) = tunnel_kind(ex) {
            key!(self.buf, "tunnel");
            escape(&mut self.buf, t.as_bytes());
        }
        self.end_line()
    }

    fn orphan(
        &mut self,
        resp: &Response,
        client: SocketAddr,
        server: SocketAddr,
    ) -> io::Result<()> {
        self.head(b"response", resp.ts, client, server, None);
        key!(self.buf, "response");
        self.response_obj(resp);
        self.end_line()
    }

    fn tls(&mut self, t: &TlsFlow) -> io::Result<()> {
        self.head(b"tls", t.ts, t.client, t.server, t.interface.as_deref());
        key!(self.buf, "handshake");
        self.buf
            .extend_from_slice(if t.hello.is_some() { b"true" } else { b"false" });
        key!(self.buf, "sni");
        match t.hello.as_ref().and_then(|h| h.sni.as_ref()) {
            Some(s) => escape(&mut self.buf, s.as_bytes()),
            None => self.buf.extend_from_slice(b"null"),
        }
        for (k, list) in [
            ("alpn", t.hello.as_ref().map(|h| &h.alpn)),
            ("versions", t.hello.as_ref().map(|h| &h.versions)),
        ] {
            self.key(k);
            self.buf.push(b'[');
            for (i, v) in list.into_iter().flatten().enumerate() {
                if i > 0 {
                    self.buf.push(b',');
                }
                escape(&mut self.buf, v.as_bytes());
            }
            self.buf.push(b']');
        }
        self.end_line()
    }

    fn stats(&mut self, s: &Summary) -> io::Result<()> {
        self.buf.extend_from_slice(b"{\"type\":\"stats\"");
        let fields = [
            ("packets", s.packets),
            ("bytes", s.bytes),
            ("tcp_segments", s.tcp_segments),
            ("not_tcp", s.not_tcp),
            ("undecodable", s.undecodable),
            ("flows", s.flows),
            ("max_concurrent_flows", s.max_concurrent_flows),
            ("requests", s.requests),
            ("exchanges", s.exchanges),
            ("unanswered", s.unanswered),
            ("orphan_responses", s.orphan_responses),
            ("tls_flows", s.tls_flows),
            ("resyncs", s.resyncs),
            ("gaps", s.gaps),
            ("gap_bytes", s.gap_bytes),
            ("retransmitted", s.retransmitted),
            ("out_of_order", s.out_of_order),
            ("flows_evicted", s.flows_evicted),
        ];
        for (k, v) in fields {
            self.key(k);
            let _ = write!(self.buf, "{v}");
        }
        if let Some(k) = s.kernel {
            for (name, v) in [
                ("kernel_received", k.received),
                ("kernel_dropped", k.dropped),
                ("if_dropped", k.if_dropped),
            ] {
                self.key(name);
                let _ = write!(self.buf, "{v}");
            }
        }
        self.end_line()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.w.write_all(&self.buf)?;
        self.buf.clear();
        self.w.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_base64() {
        let mut o = Vec::new();
        escape(&mut o, "a\"b\\c\n\u{1}é".as_bytes());
        // Every byte value, inside and outside the word-at-a-time path.
        for c in 0u8..128 {
            for pos in [0usize, 3, 9, 15, 16, 23, 31, 39] {
                let mut s = vec![b'x'; 41];
                s[pos] = c;
                let mut e = Vec::new();
                escape(&mut e, &s);
                let back: String = serde_json::from_slice(&e).unwrap();
                assert_eq!(back.as_bytes(), &s[..], "byte {c} at {pos}");
                assert_eq!(needs_escape(c), e.len() > s.len() + 2);
                let start = pos / 16 * 16;
                let mut chunk = [b'x'; 16];
                let part = &s[start..s.len().min(start + 16)];
                chunk[..part.len()].copy_from_slice(part);
                let want = if needs_escape(c) { pos % 16 } else { 16 };
                assert_eq!(first_special(&chunk, false), want, "byte {c} at {pos}");
                assert_eq!(first_special_words(&chunk, false), want, "byte {c} at {pos}");
            }
        }
        assert_eq!(
            String::from_utf8(o.clone()).unwrap(),
            r#""a\"b\\c\n\u0001é""#
        );
        let v: String = serde_json::from_slice(&o).unwrap();
        assert_eq!(v, "a\"b\\c\n\u{1}é");
        for (i, e) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"\xff\xfe\x00", "//4A"),
        ] {
            let mut o = Vec::new();
            base64(&mut o, i);
            assert_eq!(o, e.as_bytes());
        }
    }

    #[test]
    fn first_special_finds_the_first_byte_to_stop_at_in_either_form() {
        for c in 0u8..=255 {
            for high in [false, true] {
                let special = needs_escape(c) || (high && c >= 0x80);
                for pos in 0..16 {
                    let mut chunk = [b'a'; 16];
                    chunk[pos] = c;
                    // A second special byte later must not hide the first.
                    if pos < 15 {
                        chunk[15] = b'"';
                    }
                    let want = if special { pos } else if pos < 15 { 15 } else { 16 };
                    assert_eq!(first_special(&chunk, high), want, "{c} at {pos}, {high}");
                    assert_eq!(first_special_words(&chunk, high), want, "{c} at {pos}, {high}");
                }
            }
        }
    }

    #[test]
    fn pad16_keeps_every_byte_of_a_short_tail() {
        let src: Vec<u8> = (1..=15).collect();
        for n in 0..16 {
            let mut want = [b' '; 16];
            want[..n].copy_from_slice(&src[..n]);
            assert_eq!(pad16(&src[..n]), want, "{n} bytes");
        }
    }

    #[test]
    fn lower16_lowers_ascii_letters_and_nothing_else() {
        for base in (0u8..=255).step_by(16) {
            let chunk: [u8; 16] = std::array::from_fn(|i| base + i as u8);
            let want = chunk.map(|c| c.to_ascii_lowercase());
            assert_eq!(lower16(chunk), want, "from {base}");
            assert_eq!(lower16_words(chunk), want, "from {base}");
        }
    }

    #[test]
    fn header_lists_escape_just_the_fields_that_need_it() {
        let fields = [
            ("Server", "nginx"),
            ("ETag", "\"6740-186\""),
            ("Date", "Sun"),
            ("X-Tab", "a\tb"),
            ("X-Back", "c\\"),
            ("X-\"Odd\"-NAME", "v"),
            ("Via", "1.1 proxy"),
        ];
        for n in 0..=fields.len() {
            let hs = Headers::from_iter(fields[..n].iter().copied());
            let mut j = Json::new(Vec::new());
            j.headers(&hs);
            let back: Vec<(String, String)> = serde_json::from_slice(&j.buf).unwrap();
            let want: Vec<(String, String)> = hs
                .iter()
                .map(|(a, b)| (a.to_ascii_lowercase(), b.into()))
                .collect();
            assert_eq!(back, want);
        }
        // A parsed head: separators (line ends, a tab after a colon) lie between fields.
        let head =
            "GET /\"q\" HTTP/1.1\r\nHost:\tx\r\nETag: \"e\"\r\nA: b\r\nC: d\\\r\nE: f\r\n\r\n";
        let at = |s: &str| {
            let i = head.find(s).unwrap();
            i..i + s.len()
        };
        let mut hs = Headers::new();
        hs.push_head(
            head,
            [
                ("Host", "x"),
                ("ETag", "\"e\""),
                ("A", "b"),
                ("C", "d\\"),
                ("E", "f"),
            ]
            .map(|(n, v)| {
                (
                    at(&format!("{n}:")).start..at(&format!("{n}:")).end - 1,
                    at(v),
                )
            }),
        );
        let mut j = Json::new(Vec::new());
        j.headers(&hs);
        assert_eq!(
            String::from_utf8(j.buf).unwrap(),
            r#"[["host","x"],["etag","\"e\""],["a","b"],["c","d\\"],["e","f"]]"#
        );
    }

    /// `text` as a string, or None for binary.
    fn text_of(b: &[u8], truncated: bool) -> Option<String> {
        let mut o = b"prefix".to_vec();
        if !text(&mut o, b, truncated) {
            assert_eq!(o, b"prefix", "nothing is left behind for binary data");
            return None;
        }
        Some(serde_json::from_slice(&o[6..]).unwrap())
    }

    #[test]
    fn text_cut_mid_character_keeps_whole_characters() {
        let s = "héllo".as_bytes();
        assert_eq!(text_of(&s[..2], true).as_deref(), Some("h"));
        assert_eq!(text_of(&s[..2], false), None);
        assert_eq!(text_of(b"\x1f\x8b\x08\x00", false), None);
        assert_eq!(
            text_of("a\"é\n€".as_bytes(), false).as_deref(),
            Some("a\"é\n€")
        );
        // Every byte value at positions inside and outside the vector and word paths:
        // text exactly when std calls it UTF-8 and it has no NUL; the same text back.
        for c in 0u8..=255 {
            for pos in [0usize, 5, 15, 16, 20, 33, 40] {
                let mut b = vec![b'y'; 41];
                b[pos] = c;
                let want = std::str::from_utf8(&b)
                    .ok()
                    .filter(|t| !t.contains('\0'))
                    .map(str::to_string);
                assert_eq!(text_of(&b, false), want, "byte {c} at {pos}");
            }
        }
        let long = "é".repeat(40);
        assert_eq!(text_of(&long.as_bytes()[..79], true), Some("é".repeat(39)));
        assert_eq!(text_of(&long.as_bytes()[..79], false), None);
        let mut o = Vec::new();
        push_addr(&mut o, "10.0.0.1:8080".parse().unwrap());
        push_addr(&mut o, "[fd00::1]:80".parse().unwrap());
        push_u64(&mut o, 0);
        assert_eq!(o, b"10.0.0.1:8080[fd00::1]:800");
        for x in 0u8..=255 {
            let a = SocketAddr::from(([x, 255 - x, x / 3, 7], u16::from(x) * 257));
            let mut o = Vec::new();
            push_addr(&mut o, a);
            assert_eq!(String::from_utf8(o).unwrap(), a.to_string());
        }
    }
}
