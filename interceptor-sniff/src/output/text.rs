//! ngrep-style text: a `T time src -> dst` line per HTTP message, then the message
//! reassembled across packets, laid out per `-W`.
//!
//! Like `--json`, this is the hot path of an offline run: the text is put together by hand
//! in a reused buffer (no `fmt` per field, no allocation per message) and handed to the
//! writer in large blocks.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use super::json::{push_addr, push_span, push_u64};
use super::{epoch_micros, tunnel_kind, utc};
use crate::http::{Body, Exchange, Headers, Request, Response};
use crate::sink::{Sink, Summary, TlsFlow};

/// `-W`: how a message is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Start line and headers one per line, then the body (ngrep's byline).
    Byline,
    /// The whole message on one line after the `T` line, CR and LF shown as `.`.
    Normal,
    /// The `T` line and the message on a single line.
    Single,
}

/// `-t` / `-T`: what the `T` line shows as time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    None,
    /// `-t`: absolute UTC time.
    Absolute,
    /// `-T`: time since the previous message shown.
    Delta,
}

/// The buffer is handed to the writer once it holds this much.
const BLOCK: usize = 64 * 1024;

pub struct Text<W: Write> {
    w: W,
    layout: Layout,
    clock: Clock,
    last: Option<SystemTime>,
    buf: Vec<u8>,
    /// `-t`: the second the last `T` line fell in, and its `YYYY/MM/DD HH:MM:SS`
    /// (consecutive messages mostly share it).
    second: (i64, String),
    /// `--pod`: the `T` line ends with the pod a message was seen for.
    pods: Option<std::sync::Arc<crate::pod::PodTags>>,
    /// The pod of the `T` line being written, for `t_end`.
    t_pod: Option<usize>,
}

impl<W: Write> Text<W> {
    pub fn new(w: W, layout: Layout, clock: Clock) -> Text<W> {
        Text {
            w,
            layout,
            clock,
            last: None,
            buf: Vec::with_capacity(BLOCK + BLOCK / 2),
            second: (i64::MIN, String::new()),
            pods: None,
            t_pod: None,
        }
    }

    /// Ends each `T` line with `pod NAMESPACE/NAME` (or the pod's address).
    pub fn with_pods(mut self, pods: std::sync::Arc<crate::pod::PodTags>) -> Text<W> {
        self.pods = Some(pods);
        self
    }

    /// Hands the buffer to the writer once it is full enough.
    fn spill(&mut self) -> io::Result<()> {
        if self.buf.len() >= BLOCK {
            self.w.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    /// `T [time ]src -> dst [`: the caller writes what the message is, then `t_end`.
    fn t_line(&mut self, ts: SystemTime, src: SocketAddr, dst: SocketAddr) {
        self.buf.extend_from_slice(b"T ");
        match self.clock {
            Clock::None => {}
            Clock::Absolute => {
                let (secs, us) = epoch_micros(ts);
                if self.second.0 != secs {
                    let (y, mo, d, h, mi, s, _) = utc(ts);
                    self.second = (secs, format!("{y:04}/{mo:02}/{d:02} {h:02}:{mi:02}:{s:02}"));
                }
                self.buf.extend_from_slice(self.second.1.as_bytes());
                push_frac(&mut self.buf, us);
                self.buf.push(b' ');
            }
            Clock::Delta => {
                let delta = self
                    .last
                    .and_then(|l| ts.duration_since(l).ok())
                    .unwrap_or(Duration::ZERO);
                self.buf.push(b'+');
                push_u64(&mut self.buf, delta.as_secs());
                push_frac(&mut self.buf, delta.subsec_micros());
                self.buf.push(b' ');
            }
        }
        self.last = Some(ts);
        push_socket(&mut self.buf, src);
        self.buf.extend_from_slice(b" -> ");
        push_socket(&mut self.buf, dst);
        self.buf.extend_from_slice(b" [");
        self.t_pod = self.pods.as_ref().and_then(|p| {
            let t = p.for_addrs(src, dst)?;
            p.tags().iter().position(|x| std::ptr::eq(x, t))
        });
    }

    /// Closes the `T` line: the message follows on the next line, or on the same one
    /// (`-W single`).
    fn t_end(&mut self) {
        if let Some(t) = self
            .t_pod
            .take()
            .and_then(|i| self.pods.as_ref()?.tags().get(i))
        {
            self.buf.extend_from_slice(b"] pod ");
            self.buf.extend_from_slice(t.label().as_bytes());
            self.buf
                .extend_from_slice(if self.layout == Layout::Single {
                    b" "
                } else {
                    b"\n"
                });
            return;
        }
        self.buf
            .extend_from_slice(if self.layout == Layout::Single {
                b"] "
            } else {
                b"]\n"
            });
    }

    /// A message: `start` is its start line in parts, joined by spaces.
    fn message(&mut self, start: &[&str], headers: &Headers, body: &Body) -> io::Result<()> {
        match self.layout {
            Layout::Byline => {
                // The start line and each field of a parsed head lie in its text as they
                // are shown here (`name: value`): copied from there in one piece.
                let text = headers.text().as_bytes();
                match start_in(start, text) {
                    Some(len) => push_span(&mut self.buf, text, 0, len),
                    None => push_joined(&mut self.buf, start),
                }
                self.buf.push(b'\n');
                for [ns, ne, vs, ve] in headers.spans() {
                    match text.get(ns..ve) {
                        Some(_) if vs == ne + 2 && text.get(ne..vs) == Some(b": ") => {
                            push_span(&mut self.buf, text, ns, ve)
                        }
                        _ => {
                            self.buf
                                .extend_from_slice(text.get(ns..ne).unwrap_or_default());
                            self.buf.extend_from_slice(b": ");
                            self.buf
                                .extend_from_slice(text.get(vs..ve).unwrap_or_default());
                        }
                    }
                    self.buf.push(b'\n');
                }
                self.buf.push(b'\n');
                if !body.data.is_empty() {
                    let mark = self.buf.len();
                    printable(&body.data, true, &mut self.buf);
                    if !self.buf[mark..].ends_with(b"\n") {
                        self.buf.push(b'\n');
                    }
                }
                if body.truncated {
                    writeln!(
                        self.buf,
                        "[body: {} bytes, {} shown]",
                        body.len,
                        body.data.len()
                    )?;
                }
            }
            Layout::Normal | Layout::Single => {
                // The message as it went over the wire (`super::wire_text`), shown with
                // `printable`: a parsed head as it lies in the headers' text, in one
                // piece, when it is laid out as `wire_text` would write it; else one part
                // at a time (the parts before the body are UTF-8, so this shows what the
                // whole would show).
                if let Some(head) = head_as_written(start, headers) {
                    printable(head, false, &mut self.buf);
                } else {
                    for (i, part) in start.iter().enumerate() {
                        if i > 0 {
                            self.buf.push(b' ');
                        }
                        printable(part.as_bytes(), false, &mut self.buf);
                    }
                    self.buf.extend_from_slice(b"..");
                    for (n, v) in headers {
                        printable(n.as_bytes(), false, &mut self.buf);
                        self.buf.extend_from_slice(b": ");
                        printable(v.as_bytes(), false, &mut self.buf);
                        self.buf.extend_from_slice(b"..");
                    }
                    self.buf.extend_from_slice(b"..");
                }
                printable(&body.data, false, &mut self.buf);
                self.buf.push(b'\n');
            }
        }
        self.buf.push(b'\n');
        Ok(())
    }

    fn request_message(&mut self, r: &Request) -> io::Result<()> {
        self.message(&[&r.method, &r.target, r.version], &r.headers, &r.body)
    }

    fn response_message(&mut self, r: &Response) -> io::Result<()> {
        let mut code = itoa::Buffer::new();
        let code = code.format(r.status);
        if r.reason.is_empty() {
            self.message(&[r.version, code], &r.headers, &r.body)
        } else {
            self.message(&[r.version, code, &r.reason], &r.headers, &r.body)
        }
    }
}

/// `.` and six digits of microseconds.
fn push_frac(out: &mut Vec<u8>, us: u32) {
    let mut frac = *b".000000";
    let mut v = us;
    for d in frac[1..].iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.extend_from_slice(&frac);
}

/// A socket address as `Display` writes it.
fn push_socket(out: &mut Vec<u8>, a: SocketAddr) {
    match a {
        SocketAddr::V4(_) => push_addr(out, a),
        // Rare, and with scope ids to get right: `fmt` does it.
        SocketAddr::V6(_) => {
            let _ = write!(out, "{a}");
        }
    }
}

/// The headers' text from its start through the blank line, if it is exactly what
/// `super::wire_text` writes for `start` and the fields: the start line, each field as
/// `name: value`, CR LF after each line. A parsed head is laid out so unless it had
/// unusual spacing (`name:value`, a tab) or trailers were added.
fn head_as_written<'a>(start: &[&str], headers: &'a Headers) -> Option<&'a [u8]> {
    let text = headers.text().as_bytes();
    let mut at = start_in(start, text)?;
    for [ns, ne, vs, ve] in headers.spans() {
        let laid_out = text.get(at..ns)? == b"\r\n" && vs == ne + 2 && text.get(ne..vs)? == b": ";
        laid_out.then_some(())?;
        at = ve;
    }
    (text.get(at..at + 4)? == b"\r\n\r\n").then_some(())?;
    text.get(..at + 4)
}

/// The length of the start line `start` (its parts joined by spaces) if `text` begins
/// with it, as a parsed head's text does.
fn start_in(start: &[&str], text: &[u8]) -> Option<usize> {
    let mut at = 0;
    for (i, part) in start.iter().enumerate() {
        if i > 0 {
            (text.get(at) == Some(&b' ')).then_some(())?;
            at += 1;
        }
        (text.get(at..at + part.len())? == part.as_bytes()).then_some(())?;
        at += part.len();
    }
    Some(at)
}

fn push_joined(out: &mut Vec<u8>, parts: &[&str]) {
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(part.as_bytes());
    }
}

/// Non-printable bytes become `.`, as ngrep shows them; `keep_lines` keeps LF and TAB and
/// drops CR. ASCII (nearly all of what is shown) goes 16 bytes at a time (`show_ascii`);
/// from the first byte that is not ASCII on, the text is decoded as UTF-8
/// (`printable_utf8`).
fn printable(b: &[u8], keep_lines: bool, out: &mut Vec<u8>) {
    let mut i = 0;
    loop {
        i += show_ascii(&b[i..], keep_lines, out);
        match b.get(i) {
            None => return,
            Some(b'\r') if keep_lines => i += 1, // dropped
            Some(_) => return printable_utf8(&b[i..], keep_lines, out),
        }
    }
}

/// Appends `b` as `printable` shows ASCII (control characters as `.`, but LF and TAB with
/// `keep_lines`), up to the first byte it cannot show so (one that is not ASCII; CR with
/// `keep_lines`); returns how many bytes it took. Per 16 bytes, one load, a few compares
/// and one store, and no branch per byte.
#[cfg(target_arch = "x86_64")]
fn show_ascii(b: &[u8], keep_lines: bool, out: &mut Vec<u8>) -> usize {
    use std::arch::x86_64::*;
    // Each step stores 16 bytes where the next output goes, the last maybe past the end of
    // `b`'s share: room for it.
    out.reserve(b.len() + 16);
    let base = out.len();
    let mut i = 0;
    loop {
        // The last bytes are padded with a printable byte, and not counted.
        let mut tail = [b' '; 16];
        let n = (b.len() - i).min(16);
        let chunk = match b.get(i..i + 16) {
            Some(c) => c,
            None => {
                tail[..n].copy_from_slice(&b[i..]);
                &tail[..]
            }
        };
        // SAFETY: SSE2 is part of the x86_64 baseline. The load reads the 16 bytes of
        // `chunk`. The store writes 16 bytes at `base + i` of `out`, within its capacity
        // (`i <= b.len()`, and `b.len() + 16` were reserved past `base`).
        let stops = unsafe {
            let v = _mm_loadu_si128(chunk.as_ptr() as *const __m128i);
            let is = |c: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(c as i8));
            // Unsigned v <= 0x1f  <=>  min(v, 0x1f) == v.
            let ctl = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
            let ctl = _mm_or_si128(ctl, is(0x7f));
            let (dots, stops) = if keep_lines {
                let cr = is(b'\r');
                let kept = _mm_or_si128(_mm_or_si128(is(b'\n'), is(b'\t')), cr);
                // The sign bit of each byte is set exactly for bytes >= 0x80.
                let stops = _mm_movemask_epi8(_mm_or_si128(cr, v)) as u32;
                (_mm_andnot_si128(kept, ctl), stops)
            } else {
                (ctl, _mm_movemask_epi8(v) as u32)
            };
            let shown = _mm_or_si128(
                _mm_and_si128(dots, _mm_set1_epi8(b'.' as i8)),
                _mm_andnot_si128(dots, v),
            );
            _mm_storeu_si128(out.as_mut_ptr().add(base + i) as *mut __m128i, shown);
            stops
        };
        let taken = (stops.trailing_zeros() as usize).min(n);
        i += taken;
        if taken < 16 {
            // SAFETY: every byte up to `base + i` was stored above, within the capacity.
            unsafe { out.set_len(base + i) };
            return i;
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn show_ascii(b: &[u8], keep_lines: bool, out: &mut Vec<u8>) -> usize {
    for (i, &c) in b.iter().enumerate() {
        if c >= 0x80 || (keep_lines && c == b'\r') {
            return i;
        }
        let kept = keep_lines && (c == b'\n' || c == b'\t');
        out.push(if (c < 0x20 || c == 0x7f) && !kept {
            b'.'
        } else {
            c
        });
    }
    b.len()
}

/// `printable` for text that is not all ASCII: invalid UTF-8 and control characters
/// become `.`.
fn printable_utf8(b: &[u8], keep_lines: bool, out: &mut Vec<u8>) {
    let text = String::from_utf8_lossy(b);
    for c in text.chars() {
        match c {
            '\n' | '\t' if keep_lines => out.push(c as u8),
            '\r' if keep_lines => {}
            '\u{fffd}' => out.push(b'.'),
            c if c.is_control() => out.push(b'.'),
            c => {
                let mut tmp = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
            }
        }
    }
}

impl<W: Write + Send> Sink for Text<W> {
    fn request(&mut self, req: &Request, client: SocketAddr, server: SocketAddr) -> io::Result<()> {
        self.show_request(req, client, server)?;
        self.spill()
    }

    fn shows_requests(&self) -> bool {
        true
    }

    fn exchange(&mut self, ex: Exchange, show_request: bool) -> io::Result<Option<Exchange>> {
        self.write_exchange(&ex, show_request)?;
        self.spill()?;
        Ok(Some(ex))
    }

    fn orphan(
        &mut self,
        resp: &Response,
        client: SocketAddr,
        server: SocketAddr,
    ) -> io::Result<()> {
        self.t_line(resp.ts, server, client);
        self.buf
            .extend_from_slice(b"response, request not captured");
        self.t_end();
        self.response_message(resp)?;
        self.spill()
    }

    fn tls(&mut self, t: &TlsFlow) -> io::Result<()> {
        self.t_line(t.ts, t.client, t.server);
        self.buf.extend_from_slice(b"TLS");
        self.t_end();
        match &t.hello {
            Some(h) => writeln!(
                self.buf,
                "ClientHello sni={} alpn={} versions={}\n",
                h.sni.as_deref().unwrap_or("-"),
                if h.alpn.is_empty() {
                    "-".to_string()
                } else {
                    h.alpn.join(",")
                },
                h.versions.join(",")
            )?,
            None => writeln!(self.buf, "encrypted; handshake not captured\n")?,
        }
        self.spill()
    }

    fn stats(&mut self, _: &Summary) -> io::Result<()> {
        // The text format puts the summary on stderr (see sniff::summary_line).
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.w.write_all(&self.buf)?;
        self.buf.clear();
        self.w.flush()
    }
}

impl<W: Write + Send> Text<W> {
    fn show_request(
        &mut self,
        req: &Request,
        client: SocketAddr,
        server: SocketAddr,
    ) -> io::Result<()> {
        self.t_line(req.ts, client, server);
        self.buf.extend_from_slice(b"request");
        self.t_end();
        self.request_message(req)
    }

    /// Writes one exchange (the request too when `show_request`).
    fn write_exchange(&mut self, ex: &Exchange, show_request: bool) -> io::Result<()> {
        if show_request {
            self.show_request(&ex.request, ex.client, ex.server)?;
        }
        match &ex.response {
            Some(resp) => {
                self.t_line(resp.ts, ex.server, ex.client);
                match ex.latency_us() {
                    Some(us) => {
                        self.buf.extend_from_slice(b"response to ");
                        self.buf.extend_from_slice(ex.request.method.as_bytes());
                        self.buf.push(b' ');
                        self.buf.extend_from_slice(ex.request.target.as_bytes());
                        self.buf.extend_from_slice(b", ");
                        push_u64(&mut self.buf, us / 1000);
                        let ms = (us % 1000) as u32;
                        let digits = [
                            b'.',
                            b'0' + (ms / 100) as u8,
                            b'0' + (ms / 10 % 10) as u8,
                            b'0' + (ms % 10) as u8,
                        ];
                        self.buf.extend_from_slice(&digits);
                        self.buf.extend_from_slice(b" ms");
                    }
                    None => self.buf.extend_from_slice(b"response"),
                }
                self.t_end();
                self.response_message(resp)?;
                if let Some(t) = tunnel_kind(ex) {
                    writeln!(
                        self.buf,
                        "[connection switched to {t}: not decoded further]\n"
                    )?;
                }
            }
            None => {
                writeln!(
                    self.buf,
                    "[no response to {} {} from {} before the flow ended]\n",
                    ex.request.method, ex.request.target, ex.server
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first implementation: `String::from_utf8_lossy`, then character by character.
    fn printable_reference(b: &[u8], keep_lines: bool) -> Vec<u8> {
        let mut out = Vec::new();
        printable_utf8(b, keep_lines, &mut out);
        out
    }

    #[test]
    fn printable_shows_what_the_character_loop_shows() {
        let samples: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"plain ascii text that is longer than sixteen bytes".to_vec(),
            b"[\n  {\n    \"id\": 1,\r\n\t\"x\": \"y\"\n  }\n]".to_vec(),
            (0u8..=255).collect(),
            (0u8..=255).rev().collect(),
            "caf\u{e9} \u{85} \u{fffd} \u{1F600}".as_bytes().to_vec(),
            b"ok\xff\xfe then ascii again, long enough to fill a chunk\x7f\r".to_vec(),
            b"\xe2\x82".to_vec(),
            b"0123456789abcde\xc3\xa9".to_vec(),
        ];
        for s in &samples {
            // Every start, so that each byte falls at every place of a chunk.
            for from in 0..s.len().min(40) {
                for keep in [false, true] {
                    let mut got = b"prefix".to_vec();
                    printable(&s[from..], keep, &mut got);
                    assert_eq!(
                        &got[6..],
                        &printable_reference(&s[from..], keep)[..],
                        "{:?} from {from}, keep_lines {keep}",
                        String::from_utf8_lossy(s)
                    );
                }
            }
        }
    }

    fn exchange() -> Exchange {
        let t = SystemTime::UNIX_EPOCH + Duration::from_micros(1_795_386_703_123_456);
        let headers = |h: &[(&str, &str)]| Headers::from_iter(h.iter().copied());
        Exchange {
            client: "10.0.0.1:41000".parse().unwrap(),
            server: "[fe80::1%2]:80".parse().unwrap(),
            interface: None,
            request: Box::new(Request {
                method: "GET".into(),
                target: "/items".into(),
                version: "HTTP/1.1",
                headers: headers(&[("Host", "catalog")]),
                body: Body::default(),
                ts: t,
            }),
            response: Some(Box::new(Response {
                status: 200,
                reason: "OK".into(),
                version: "HTTP/1.1",
                headers: headers(&[("Content-Type", "application/json")]),
                body: Body {
                    data: b"[\r\n  1\r\n]".to_vec(),
                    len: 20,
                    truncated: true,
                },
                ts: t + Duration::from_micros(1_234_005),
            })),
        }
    }

    fn written(layout: Layout, clock: Clock) -> String {
        let mut out = Text::new(Vec::new(), layout, clock);
        out.exchange(exchange(), true).unwrap();
        out.exchange(exchange(), true).unwrap();
        out.flush().unwrap();
        String::from_utf8(out.w).unwrap()
    }

    #[test]
    fn layouts() {
        let block = "T 2026/11/22 22:31:43.123456 10.0.0.1:41000 -> [fe80::1%2]:80 [request]\n\
            GET /items HTTP/1.1\nHost: catalog\n\n\n\
            T 2026/11/22 22:31:44.357461 [fe80::1%2]:80 -> 10.0.0.1:41000 [response to GET /items, 1234.005 ms]\n\
            HTTP/1.1 200 OK\nContent-Type: application/json\n\n[\n  1\n]\n[body: 20 bytes, 9 shown]\n\n";
        assert_eq!(written(Layout::Byline, Clock::Absolute), block.repeat(2));
        let normal = written(Layout::Normal, Clock::Delta);
        assert!(
            normal.starts_with(
                "T +0.000000 10.0.0.1:41000 -> [fe80::1%2]:80 [request]\n\
             GET /items HTTP/1.1..Host: catalog....\n\n\
             T +1.234005 [fe80::1%2]:80 -> 10.0.0.1:41000 [response to GET /items, 1234.005 ms]\n\
             HTTP/1.1 200 OK..Content-Type: application/json....[..  1..]\n\n\
             T +0.000000 10.0.0.1:41000"
            ),
            "{normal}"
        );
        let single = written(Layout::Single, Clock::None);
        assert!(single.starts_with(
            "T 10.0.0.1:41000 -> [fe80::1%2]:80 [request] GET /items HTTP/1.1..Host: catalog....\n\n"
        ), "{single}");
    }
}
