//! `--json`: one object per line, written by hand into a reused buffer because this is the
//! hot path of an offline run (tens of thousands of exchanges per second).

use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::SystemTime;

use super::{epoch_micros, tunnel_kind, utc};
use crate::sink::{Sink, Summary, TlsFlow};
use crate::http::{Body, Exchange, Headers, Request, Response};
use crate::pod::PodTags;

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
    /// `--pod`: exchanges say which pod they were seen for (without it, no `pod` key, so
    /// the output stays as it was).
    pods: Option<std::sync::Arc<PodTags>>,
}

impl<W: Write> Json<W> {
    pub fn new(w: W) -> Json<W> {
        Json {
            w,
            buf: Vec::with_capacity(64 * 1024),
            ts_cache: (i64::MIN, String::new()),
            pods: None,
        }
    }

    /// Adds `"pod":{"ip","name","namespace"}` (or `null`) to every exchange.
    pub fn with_pods(mut self, pods: std::sync::Arc<PodTags>) -> Json<W> {
        self.pods = Some(pods);
        self
    }

    /// Renders one exchange object, exactly as a `--json` line has it but without the line
    /// end, into `out` (the live view's events reuse this writer rather than a second one).
    pub fn render_exchange(&mut self, ex: &Exchange, out: &mut Vec<u8>) {
        std::mem::swap(&mut self.buf, out);
        self.exchange_object(ex);
        self.buf.push(b'}');
        std::mem::swap(&mut self.buf, out);
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
        // Every name and value lies, in order, in `text`. One scan finds the next byte
        // that needs escaping; the fields before it are copied as they are, and only a
        // field holding one (an ETag's quotes, say) goes through `escape`. Line ends
        // between the fields of a parsed head are not in any field: skipped.
        let text = hs.text().as_bytes();
        let base = text.as_ptr() as usize;
        let mut special = scan_fields(text, 0);
        self.buf.reserve(text.len() + 8 * hs.len() + 2);
        self.buf.push(b'[');
        for (i, (n, v)) in hs.iter().enumerate() {
            if i > 0 {
                self.buf.push(b',');
            }
            let end = (v.as_ptr() as usize + v.len()).wrapping_sub(base);
            // Where the name is written: it is lower-cased there, once the value follows
            // it (lowering escaped text is the same as escaping lowered text: escapes
            // are in lower case).
            let name_at = self.buf.len() + 1;
            if special >= end {
                self.buf.extend_from_slice(b"[\"");
                self.buf.extend_from_slice(n.as_bytes());
                let name_end = self.buf.len();
                self.buf.extend_from_slice(b"\",\"");
                self.buf.extend_from_slice(v.as_bytes());
                self.buf.extend_from_slice(b"\"]");
                lower_ascii(&mut self.buf, name_at + 1, name_end);
            } else {
                self.buf.push(b'[');
                escape(&mut self.buf, n.as_bytes());
                let name_end = self.buf.len();
                self.buf.push(b',');
                escape(&mut self.buf, v.as_bytes());
                self.buf.push(b']');
                lower_ascii(&mut self.buf, name_at, name_end);
                special = scan_fields(text, end);
            }
        }
        self.buf.push(b']');
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
        self.message_rest(r.version, &r.headers, &r.body);
    }

    fn response_obj(&mut self, r: &Response) {
        self.buf.extend_from_slice(b"{\"status\":");
        push_u64(&mut self.buf, u64::from(r.status));
        key!(self.buf, "reason");
        escape(&mut self.buf, r.reason.as_bytes());
        self.message_rest(r.version, &r.headers, &r.body);
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

/// Index of the first byte of `b` from `i` on that needs escaping (or is not ASCII, with
/// `high`); `b.len()` if none. 16 bytes at a time with SSE2 (always present on x86_64),
/// then 8 at a time: escaping bodies and headers dominates a `--json` run.
#[inline]
fn scan(b: &[u8], mut i: usize, high: bool) -> usize {
    #[cfg(target_arch = "x86_64")]
    while i + 16 <= b.len() {
        let m = sse2_escape_mask(&b[i..i + 16], high);
        if m != 0 {
            return i + m.trailing_zeros() as usize;
        }
        i += 16;
    }
    while i + 8 <= b.len() {
        let w = u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        let m = escape_mask(w, high);
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < b.len() && !(needs_escape(b[i]) || (high && b[i] >= 0x80)) {
        i += 1;
    }
    i
}

/// Lower-cases the ASCII letters of `b[start..end]` eight bytes at a time, leaving the
/// bytes after `end` as they are: every header name of every message goes through here,
/// and a byte-wise loop over short names costs several times as much.
fn lower_ascii(b: &mut [u8], start: usize, end: usize) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let mut i = start;
    while i < end {
        let Some(w) = b.get_mut(i..i + 8) else {
            // The last bytes of the buffer: one at a time.
            if let Some(c) = b.get_mut(i) {
                c.make_ascii_lowercase();
            }
            i += 1;
            continue;
        };
        let x = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        // Per byte, without carries between bytes: high bit set when the low seven bits
        // are >= 'A', and when they are > 'Z'; bytes >= 0x80 are left alone.
        let low = x & (0x7f * ONES);
        let ge_a = low + (0x80 - u64::from(b'A')) * ONES;
        let gt_z = low + (0x80 - u64::from(b'Z') - 1) * ONES;
        let mut upper = ge_a & !gt_z & !x & (0x80 * ONES);
        if end - i < 8 {
            upper &= !(!0u64 << (8 * (end - i)));
        }
        w.copy_from_slice(&(x | (upper >> 2)).to_le_bytes());
        i += 8;
    }
}

/// `scan` over header text: CR and LF end header lines and are in no field, so they are
/// passed over. (Every other byte that needs escaping is reported, even between fields:
/// that only sends a field through `escape` when it had no need to.)
fn scan_fields(b: &[u8], mut i: usize) -> usize {
    loop {
        i = scan(b, i, false);
        match b.get(i) {
            Some(b'\r' | b'\n') => i += 1,
            _ => return i,
        }
    }
}

fn push_escaped(out: &mut Vec<u8>, c: u8) {
    match c {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        _ => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(c >> 4)]);
            out.push(HEX[usize::from(c & 15)]);
        }
    }
}

/// JSON string escaping; `b` must be UTF-8 (header values were made so when parsed).
pub fn escape(out: &mut Vec<u8>, b: &[u8]) {
    out.reserve(b.len() + 2);
    out.push(b'"');
    let mut start = 0;
    loop {
        let i = scan(b, start, false);
        out.extend_from_slice(&b[start..i]);
        if i >= b.len() {
            break;
        }
        push_escaped(out, b[i]);
        start = i + 1;
    }
    out.push(b'"');
}

/// Writes a body as a JSON string if it is text: UTF-8 without NUL bytes. A body cut
/// (`truncated`) mid-character keeps the whole characters before the cut. Returns false,
/// having written nothing, for binary data. One pass: the scan that finds bytes to escape
/// also stops at the first non-ASCII byte, and only then is the rest checked as UTF-8.
fn text(out: &mut Vec<u8>, mut b: &[u8], truncated: bool) -> bool {
    let mark = out.len();
    out.reserve(b.len() + 2);
    out.push(b'"');
    let mut start = 0;
    let mut high = true;
    loop {
        let i = scan(b, start, high);
        out.extend_from_slice(&b[start..i]);
        if i >= b.len() {
            break;
        }
        let c = b[i];
        if c >= 0x80 {
            match std::str::from_utf8(&b[i..]) {
                Ok(_) => {}
                Err(e) if truncated && e.error_len().is_none() => b = &b[..i + e.valid_up_to()],
                Err(_) => {
                    out.truncate(mark);
                    return false;
                }
            }
            high = false;
            start = i;
            continue;
        }
        if c == 0 {
            out.truncate(mark);
            return false;
        }
        push_escaped(out, c);
        start = i + 1;
    }
    out.push(b'"');
    true
}

/// Appends `n` in decimal.
pub fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends `ip:port` (`[ip]:port` for IPv6) without going through `fmt`.
pub fn push_addr(out: &mut Vec<u8>, a: SocketAddr) {
    let v4 = match a {
        SocketAddr::V4(v4) => v4,
        SocketAddr::V6(v6) => {
            let _ = write!(out, "[{}]", v6.ip());
            out.push(b':');
            push_u64(out, u64::from(a.port()));
            return;
        }
    };
    // Two per message of every output: put together on the stack from a table of the
    // octets in decimal, and copied once (`255.255.255.255:65535` at most).
    let mut s = [0u8; 24];
    let mut n = 0;
    for o in v4.ip().octets() {
        let (dec, len) = OCTETS[usize::from(o)];
        s[n..n + 4].copy_from_slice(&dec);
        n += len as usize;
    }
    // The last octet's dot becomes the colon.
    s[n - 1] = b':';
    let port = v4.port();
    let digits = match port {
        0..=9 => 1,
        10..=99 => 2,
        100..=999 => 3,
        1000..=9999 => 4,
        _ => 5,
    };
    let mut v = port;
    for d in s[n..n + digits].iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
    // A copy of fixed length is a few moves; one of varying length, a call to memcpy.
    let at = out.len();
    out.extend_from_slice(&s);
    out.truncate(at + n + digits);
}

/// Each byte value in decimal followed by a dot (padded to four bytes), and how many of
/// those bytes count.
const OCTETS: [([u8; 4], u8); 256] = {
    let mut t = [([0u8; 4], 0u8); 256];
    let mut o = 0;
    while o < 256 {
        let (h, d, u) = ((o / 100) as u8, (o / 10 % 10) as u8, (o % 10) as u8);
        t[o] = if o >= 100 {
            ([b'0' + h, b'0' + d, b'0' + u, b'.'], 4)
        } else if o >= 10 {
            ([b'0' + d, b'0' + u, b'.', 0], 3)
        } else {
            ([b'0' + u, b'.', 0, 0], 2)
        };
        o += 1;
    }
    t
};

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

impl<W: Write + Send> Sink for Json<W> {
    fn request(&mut self, _: &Request, _: SocketAddr, _: SocketAddr) -> io::Result<()> {
        Ok(())
    }

    fn exchange(&mut self, ex: Exchange, show_request: bool) -> io::Result<Option<Exchange>> {
        self.write_exchange(&ex, show_request)?;
        Ok(Some(ex))
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
            ("truncated", s.truncated),
            ("tcp_segments", s.tcp.segments),
            ("not_tcp", s.not_tcp),
            ("undecodable", s.undecodable),
            ("flows", s.tcp.flows),
            ("max_concurrent_flows", s.tcp.max_concurrent),
            ("requests", s.http.requests),
            ("exchanges", s.http.exchanges),
            ("exchanges_seen", s.http.exchanges_seen),
            ("unanswered", s.http.unanswered),
            ("orphan_responses", s.http.orphan_responses),
            ("tls_flows", s.http.tls_flows),
            ("resyncs", s.http.resyncs),
            ("gaps", s.tcp.gaps),
            ("gap_bytes", s.tcp.gap_bytes),
            ("retransmitted", s.tcp.retransmitted),
            ("out_of_order", s.tcp.out_of_order),
            ("flows_evicted", s.tcp.evicted),
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

impl<W: Write + Send> Json<W> {
    /// Writes one exchange (the request too when `show_request`).
    fn write_exchange(&mut self, ex: &Exchange, _show_request: bool) -> io::Result<()> {
        self.exchange_object(ex);
        self.end_line()
    }
}

impl<W: Write> Json<W> {
    /// An exchange's object but its closing brace.
    fn exchange_object(&mut self, ex: &Exchange) {
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
        if let Some(pods) = &self.pods {
            key!(self.buf, "pod");
            match pods.for_exchange(ex) {
                Some(t) => self.buf.extend_from_slice(t.json()),
                None => self.buf.extend_from_slice(b"null"),
            }
        }
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
                assert_eq!(scan(&s, 0, false), if needs_escape(c) { pos } else { 41 });
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
    fn addresses_as_display_writes_them() {
        for a in [
            "0.0.0.0:0",
            "10.250.0.2:3000",
            "255.255.255.255:65535",
            "1.22.103.9:10",
            "100.10.1.0:999",
            "[fe80::1]:80",
        ] {
            let mut o = Vec::new();
            push_addr(&mut o, a.parse().unwrap());
            assert_eq!(String::from_utf8(o).unwrap(), a);
        }
    }

    #[test]
    fn lower_case_every_ascii_letter_of_a_range_and_nothing_else() {
        let all: Vec<u8> = (0u8..=255).collect();
        let n = all.len();
        for start in 0..9 {
            for end in (start..start + 20).chain(n - 12..=n) {
                let mut b = all.clone();
                lower_ascii(&mut b, start, end);
                let want = [
                    &all[..start],
                    &all[start..end].to_ascii_lowercase(),
                    &all[end..],
                ]
                .concat();
                assert_eq!(b, want, "{start}..{end}");
            }
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
            head.as_bytes(),
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
        )
        .unwrap();
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
    }
}
