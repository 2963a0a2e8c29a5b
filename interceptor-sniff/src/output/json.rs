//! `--json`: one object per line, written by hand into a reused buffer because this is the
//! hot path of an offline run (tens of thousands of exchanges per second).

use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::SystemTime;

use super::{epoch_micros, tunnel_kind, utc};
use crate::http::{Body, Exchange, Headers, Request, Response};
use crate::pod::PodTags;
use crate::sink::{Sink, Summary, TlsFlow};

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
    /// `sniff --serve`: sees each exchange's object as it is written.
    tap: Option<Box<dyn Tap>>,
}

/// Sees where the writer renders each exchange object, and takes the buffer once it is
/// written out (`sniff --serve` keeps those very bytes for the live view, rather than
/// rendering the exchange a second time or copying it).
pub trait Tap: Send {
    /// An exchange's object, `{…}` without the line end, is at `at` in the buffer.
    fn exchange(&mut self, at: std::ops::Range<usize>);
    /// The buffer has been written out: the tap may keep it, leaving in its place an empty
    /// one to write into next.
    fn written(&mut self, buf: &mut Vec<u8>);
}

impl<W: Write> Json<W> {
    pub fn new(w: W) -> Json<W> {
        Json {
            w,
            buf: Vec::with_capacity(64 * 1024),
            ts_cache: (i64::MIN, String::new()),
            pods: None,
            tap: None,
        }
    }

    /// Shows `t` every exchange object written.
    pub fn tap(mut self, t: Box<dyn Tap>) -> Json<W> {
        self.tap = Some(t);
        self
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
            self.write_out()?;
        }
        Ok(())
    }

    /// Writes the buffer out and starts an empty one (the tap's, when it keeps this one).
    fn write_out(&mut self) -> io::Result<()> {
        self.w.write_all(&self.buf)?;
        match self.tap.as_mut() {
            Some(t) => t.written(&mut self.buf),
            None => self.buf.clear(),
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
        // Every name and value lies, in order, in `text`. One pass marks the bytes that
        // need escaping; a field with none is copied as it is (and its name lower-cased
        // where it was copied to), and only a field holding one (an ETag's quotes, say)
        // goes through `escape`. Line ends between the fields of a parsed head are marked
        // too, but are in no field.
        let text = hs.text().as_bytes();
        let mut marks = [0u64; 16];
        let marked = mark_escapes(text, &mut marks);
        self.buf.reserve(text.len() + 8 * hs.len() + 2);
        self.buf.push(b'[');
        for (i, [ns, ne, vs, ve]) in hs.spans().enumerate() {
            if i > 0 {
                self.buf.push(b',');
            }
            let (Some(name), Some(value)) = (text.get(ns..ne), text.get(vs..ve)) else {
                continue; // not a field `iter` would yield
            };
            // Where the name is written: it is lower-cased there, once the value follows
            // it (lowering escaped text is the same as escaping lowered text: escapes
            // are in lower case).
            let name_at = self.buf.len() + 1;
            let plain = marked && !any_marked(&marks, ns, ne) && !any_marked(&marks, vs, ve);
            if plain {
                self.buf.extend_from_slice(b"[\"");
                push_span(&mut self.buf, text, ns, ne);
                let name_end = self.buf.len();
                self.buf.extend_from_slice(b"\",\"");
                push_span(&mut self.buf, text, vs, ve);
                self.buf.extend_from_slice(b"\"]");
                lower_ascii(&mut self.buf, name_at + 1, name_end);
            } else {
                self.buf.push(b'[');
                escape(&mut self.buf, name);
                let name_end = self.buf.len();
                self.buf.push(b',');
                escape(&mut self.buf, value);
                self.buf.push(b']');
                lower_ascii(&mut self.buf, name_at, name_end);
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

/// One bit per byte of `chunk` that needs escaping.
#[cfg(target_arch = "x86_64")]
#[inline]
fn escape_bits(chunk: &[u8; 16]) -> u32 {
    use std::arch::x86_64::*;
    // SAFETY: SSE2 is part of the x86_64 baseline; the load is unaligned and reads the
    // 16 bytes of `chunk`.
    unsafe {
        let v = _mm_loadu_si128(chunk.as_ptr() as *const __m128i);
        // Unsigned v <= 0x1f  <=>  min(v, 0x1f) == v.
        let ctl = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
        let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
        let bslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
        let del = _mm_cmpeq_epi8(v, _mm_set1_epi8(0x7f));
        _mm_movemask_epi8(_mm_or_si128(
            _mm_or_si128(ctl, quote),
            _mm_or_si128(bslash, del),
        )) as u32
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn escape_bits(chunk: &[u8; 16]) -> u32 {
    chunk
        .iter()
        .enumerate()
        .fold(0, |m, (i, &c)| m | (u32::from(needs_escape(c)) << i))
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

/// Sets bit `i % 64` of `marks[i / 64]` for each byte `i` of `b` that needs escaping;
/// false, with nothing marked, if `b` is too long for `marks` (1 KiB: a head longer than
/// that has every field escaped, which writes the same).
fn mark_escapes(b: &[u8], marks: &mut [u64; 16]) -> bool {
    if b.len() > 64 * marks.len() {
        return false;
    }
    for (m, block) in marks.iter_mut().zip(b.chunks(64)) {
        let mut word = 0u64;
        for (k, part) in block.chunks(16).enumerate() {
            let chunk = match <&[u8; 16]>::try_from(part) {
                Ok(full) => *full,
                Err(_) => {
                    // The last bytes, padded with one that needs no escaping.
                    let mut c = [b'a'; 16];
                    c[..part.len()].copy_from_slice(part);
                    c
                }
            };
            word |= u64::from(escape_bits(&chunk)) << (16 * k);
        }
        *m = word;
    }
    true
}

/// Whether any of bytes `from..to` is marked in `marks` (`mark_escapes`).
fn any_marked(marks: &[u64; 16], from: usize, to: usize) -> bool {
    if from >= to {
        return false;
    }
    let (first, last) = (from / 64, (to - 1) / 64);
    let low = !0u64 << (from % 64);
    let high = !0u64 >> (63 - (to - 1) % 64);
    match marks.get(first..=last) {
        Some([only]) => only & low & high != 0,
        Some([a, middle @ .., z]) => {
            a & low != 0 || z & high != 0 || middle.iter().any(|&w| w != 0)
        }
        _ => true,
    }
}

/// Appends `src[from..to]`. A short span is copied as a fixed 32 or 64 bytes when `src`
/// has them, and the excess cut off again: a copy of varying length costs a call to
/// memcpy, and that call was most of what copying a header name or value cost.
#[inline]
pub(crate) fn push_span(out: &mut Vec<u8>, src: &[u8], from: usize, to: usize) {
    let len = to.saturating_sub(from);
    let at = out.len();
    if len <= 32 {
        if let Some(w) = src.get(from..from + 32) {
            let mut c = [0u8; 32];
            c.copy_from_slice(w);
            out.extend_from_slice(&c);
            out.truncate(at + len);
            return;
        }
    } else if len <= 64 {
        if let Some(w) = src.get(from..from + 64) {
            let mut c = [0u8; 64];
            c.copy_from_slice(w);
            out.extend_from_slice(&c);
            out.truncate(at + len);
            return;
        }
    }
    out.extend_from_slice(src.get(from..to).unwrap_or_default());
}

#[cfg(not(target_arch = "x86_64"))]
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

/// The escape sequence of each ASCII byte that `needs_escape` (zeros for the others),
/// padded to eight bytes, its length in the last: written with one eight-byte copy.
#[cfg(target_arch = "x86_64")]
const ESCAPES: [[u8; 8]; 128] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 8]; 128];
    let mut c = 0;
    while c < 128 {
        let short = match c as u8 {
            b'"' => b'"',
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            _ => 0,
        };
        if short != 0 {
            t[c] = [b'\\', short, 0, 0, 0, 0, 0, 2];
        } else if needs_escape(c as u8) {
            t[c] = [b'\\', b'u', b'0', b'0', HEX[c >> 4], HEX[c & 15], 0, 6];
        }
        c += 1;
    }
    t
};

/// Appends `b` escaped for a JSON string (no quotes), up to the first byte that is not
/// ASCII if `stop_high`, or NUL if `stop_nul`; returns how many bytes of `b` it took.
/// Every body and header of a `--json` run goes through here, and a pretty-printed JSON
/// body has a quote or a line end every few bytes. With SSSE3 (every x86_64 CPU since
/// 2006; asked once), a 16-byte chunk whose escapes are all two-byte ones (`\"`, `\\`,
/// `\n`, `\r`, `\t`) is written with one shuffle per half, whatever their number.
#[cfg(target_arch = "x86_64")]
fn escape_run(b: &[u8], stop_high: bool, stop_nul: bool, out: &mut Vec<u8>) -> usize {
    if std::is_x86_feature_detected!("ssse3") {
        // SAFETY: the CPU has SSSE3, checked just above.
        unsafe { escape_run_ssse3(b, stop_high, stop_nul, out) }
    } else {
        escape_chunks::<false>(b, stop_high, stop_nul, out)
    }
}

/// `escape_chunks` compiled with SSSE3, its two-byte escapes by shuffles.
///
/// # Safety
/// The CPU must have SSSE3.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "ssse3")]
unsafe fn escape_run_ssse3(b: &[u8], stop_high: bool, stop_nul: bool, out: &mut Vec<u8>) -> usize {
    escape_chunks::<true>(b, stop_high, stop_nul, out)
}

/// For each 8-bit mask of the bytes of a half chunk that take a backslash: the `pshufb`
/// indices that spread the eight bytes out with a hole (index 0x80, a zero byte) before
/// each marked one.
#[cfg(target_arch = "x86_64")]
const SPREAD: [[u8; 16]; 256] = {
    let mut t = [[0x80u8; 16]; 256];
    let mut m = 0;
    while m < 256 {
        let mut o = 0;
        let mut i = 0;
        while i < 8 {
            o += (m >> i) & 1;
            t[m][o] = i as u8;
            o += 1;
            i += 1;
        }
        m += 1;
    }
    t
};

/// The letter after the backslash of the control bytes with a two-byte escape, by their
/// low nibble (`\t` 0x09, `\n` 0x0a, `\r` 0x0d); zeros elsewhere.
#[cfg(target_arch = "x86_64")]
const CONTROL_LETTERS: [u8; 16] = {
    let mut t = [0u8; 16];
    t[0x09] = b't';
    t[0x0a] = b'n';
    t[0x0d] = b'r';
    t
};

/// The escaping loop of `escape_run`. 16 bytes are stored as they are; with `SHUFFLE`, a
/// chunk with only two-byte escapes is then rewritten spread out, each half by its
/// `SPREAD` entry, the holes filled with backslashes. Otherwise, for each byte of the
/// chunk that needs escaping, in turn, its sequence is written where it goes (one
/// eight-byte copy) and the bytes after it stored again after that: no call and no
/// capacity check either way.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn escape_chunks<const SHUFFLE: bool>(
    b: &[u8],
    stop_high: bool,
    stop_nul: bool,
    out: &mut Vec<u8>,
) -> usize {
    use std::arch::x86_64::*;
    /// The 16 bytes of `b` from `at`, padded with bytes that need no escaping.
    #[inline(always)]
    fn load(b: &[u8], at: usize) -> __m128i {
        match b.get(at..at + 16) {
            // SAFETY: SSE2 is part of the x86_64 baseline; the load is unaligned and
            // reads the 16 bytes of `c`.
            Some(c) => unsafe { _mm_loadu_si128(c.as_ptr() as *const __m128i) },
            None => load_tail(b, at),
        }
    }
    #[inline(never)]
    fn load_tail(b: &[u8], at: usize) -> __m128i {
        let mut tail = [b'a'; 16];
        let rest = b.get(at..).unwrap_or_default();
        tail[..rest.len().min(16)].copy_from_slice(&rest[..rest.len().min(16)]);
        // SAFETY: as in `load`, reading the 16 bytes of `tail`.
        unsafe { _mm_loadu_si128(tail.as_ptr() as *const __m128i) }
    }
    // A byte becomes at most six; a store reaches up to 16 bytes past the output.
    out.reserve(6 * b.len() + 16);
    let base = out.len();
    let dst = out.as_mut_ptr();
    // Every byte of `b` before `i` is written, and the output goes on at `o`. Each byte
    // taken wrote at most six: `o <= base + 6 * i`, with `i <= b.len()`, which keeps every
    // store below within the `6 * b.len() + 16` bytes reserved past `base`.
    let (mut i, mut o) = (0, base);
    while i < b.len() {
        let start = i;
        let n = (b.len() - start).min(16);
        let v = load(b, start);
        // SAFETY: SSE2, as above; the store writes 16 bytes at `o`, within the capacity.
        let mut stops = unsafe {
            let is = |c: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(c as i8));
            // Unsigned v <= 0x1f  <=>  min(v, 0x1f) == v.
            let ctl = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
            let special = _mm_or_si128(
                _mm_or_si128(ctl, is(b'"')),
                _mm_or_si128(is(b'\\'), is(0x7f)),
            );
            _mm_storeu_si128(dst.add(o) as *mut __m128i, v);
            // The sign bit of each byte is set exactly for bytes >= 0x80.
            let high = if stop_high {
                _mm_movemask_epi8(v) as u32
            } else {
                0
            };
            (_mm_movemask_epi8(special) as u32 | high) & ((1 << n) - 1)
        };
        if SHUFFLE && n == 16 && stops != 0 {
            // SAFETY: SSSE3 where `SHUFFLE` is set (`escape_run_ssse3`); the two stores
            // write 16 bytes each at `o` and `o + 8 + k` (k <= 8), and those 16 bytes of
            // input come out as at most 32, at most six per byte: within the capacity.
            unsafe {
                let is = |c: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(c as i8));
                let letters = _mm_or_si128(_mm_or_si128(is(b'\t'), is(b'\n')), is(b'\r'));
                let two = _mm_or_si128(_mm_or_si128(is(b'"'), is(b'\\')), letters);
                if stops & !(_mm_movemask_epi8(two) as u32) == 0 {
                    // The escaped letter of each byte: itself, or t, n, r for the controls.
                    let c = _mm_loadu_si128(CONTROL_LETTERS.as_ptr() as *const __m128i);
                    let mapped = _mm_or_si128(
                        _mm_andnot_si128(letters, v),
                        _mm_and_si128(letters, _mm_shuffle_epi8(c, v)),
                    );
                    let backslash = _mm_set1_epi8(b'\\' as i8);
                    for (half, bits) in [
                        (mapped, stops & 0xff),
                        (_mm_srli_si128(mapped, 8), stops >> 8),
                    ] {
                        let spread = SPREAD.as_ptr().add(bits as usize);
                        let w = _mm_shuffle_epi8(half, _mm_loadu_si128(spread as *const __m128i));
                        // The holes are the zero bytes: no byte of this chunk is NUL.
                        let holes = _mm_cmpeq_epi8(w, _mm_setzero_si128());
                        _mm_storeu_si128(
                            dst.add(o) as *mut __m128i,
                            _mm_or_si128(w, _mm_and_si128(holes, backslash)),
                        );
                        o += 8 + bits.count_ones() as usize;
                    }
                    i = start + 16;
                    continue;
                }
            }
        }
        // The bytes from `i` to the end of the chunk are stored at `o`.
        while stops != 0 {
            let at = start + stops.trailing_zeros() as usize;
            o += at - i;
            let c = b[at];
            if c >= 0x80 || (c == 0 && stop_nul) {
                // SAFETY: every byte from `base` to `o` was stored, within the capacity.
                unsafe { out.set_len(o) };
                return at;
            }
            let e = ESCAPES[usize::from(c)];
            // SAFETY: within the capacity (`at < b.len()`); then 16 bytes at the new `o`,
            // which covers the rest of the chunk.
            unsafe {
                std::ptr::copy_nonoverlapping(e.as_ptr(), dst.add(o), 8);
                o += usize::from(e[7]);
                _mm_storeu_si128(dst.add(o) as *mut __m128i, load(b, at + 1));
            }
            i = at + 1;
            stops &= stops - 1;
        }
        o += start + n - i;
        i = start + n;
    }
    // SAFETY: every byte from `base` to `o` was stored above, within the capacity.
    unsafe { out.set_len(o) };
    i
}

#[cfg(not(target_arch = "x86_64"))]
fn escape_run(b: &[u8], stop_high: bool, stop_nul: bool, out: &mut Vec<u8>) -> usize {
    for (i, &c) in b.iter().enumerate() {
        if (stop_high && c >= 0x80) || (stop_nul && c == 0) {
            return i;
        }
        if needs_escape(c) {
            push_escaped(out, c);
        } else {
            out.push(c);
        }
    }
    b.len()
}

/// JSON string escaping; `b` must be UTF-8 (header values were made so when parsed).
pub fn escape(out: &mut Vec<u8>, b: &[u8]) {
    out.push(b'"');
    escape_run(b, false, false, out);
    out.push(b'"');
}

/// Writes a body as a JSON string if it is text: UTF-8 without NUL bytes. A body cut
/// (`truncated`) mid-character keeps the whole characters before the cut. Returns false,
/// having written nothing, for binary data. One pass: the escaping stops at the first
/// non-ASCII byte, and only then is the rest checked as UTF-8.
fn text(out: &mut Vec<u8>, mut b: &[u8], truncated: bool) -> bool {
    let mark = out.len();
    out.push(b'"');
    let mut start = 0;
    let mut high = true;
    loop {
        start += escape_run(&b[start..], high, true, out);
        let Some(&c) = b.get(start) else {
            break;
        };
        if c == 0 {
            out.truncate(mark);
            return false;
        }
        // Not ASCII: the rest must be UTF-8.
        match std::str::from_utf8(&b[start..]) {
            Ok(_) => {}
            Err(e) if truncated && e.error_len().is_none() => b = &b[..start + e.valid_up_to()],
            Err(_) => {
                out.truncate(mark);
                return false;
            }
        }
        high = false;
    }
    out.push(b'"');
    true
}

/// Appends `n` in decimal.
pub fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends `ip:port` (`[ip]:port` for IPv6) without going through `fmt`.
pub(crate) fn push_addr(out: &mut Vec<u8>, a: SocketAddr) {
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
        self.write_out()?;
        self.w.flush()
    }
}

impl<W: Write + Send> Json<W> {
    /// Writes one exchange (the request too when `show_request`).
    fn write_exchange(&mut self, ex: &Exchange, _show_request: bool) -> io::Result<()> {
        let start = self.buf.len();
        self.exchange_object(ex);
        if let Some(t) = self.tap.as_mut() {
            // With the closing brace `end_line` adds.
            t.exchange(start..self.buf.len() + 1);
        }
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
                let mut marks = [0; 16];
                assert!(mark_escapes(&s, &mut marks));
                let first = (marks[0].trailing_zeros() as usize).min(41);
                assert_eq!(first, if needs_escape(c) { pos } else { 41 });
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

    #[test]
    fn header_lists_of_long_heads_escape_what_needs_it() {
        // Fields across the 64-byte words of the marks, and heads past what they cover.
        for n in [1, 7, 30, 90] {
            let mut head = String::from("HTTP/1.1 200 OK\r\n");
            let mut spans = Vec::new();
            for i in 0..n {
                let name = format!("X-Field-{i}");
                let value = match i % 4 {
                    0 => format!("\"etag-{i}\""),
                    1 => "a\\b".to_string(),
                    _ => "v".repeat(i % 13),
                };
                let ns = head.len();
                head.push_str(&format!("{name}: {value}\r\n"));
                spans.push((
                    ns..ns + name.len(),
                    ns + name.len() + 2..ns + name.len() + 2 + value.len(),
                ));
            }
            head.push_str("\r\n");
            let mut hs = Headers::new();
            hs.push_head(head.as_bytes(), spans).unwrap();
            let mut j = Json::new(Vec::new());
            j.headers(&hs);
            let mut want = b"[".to_vec();
            for (i, (n, v)) in hs.iter().enumerate() {
                if i > 0 {
                    want.push(b',');
                }
                want.push(b'[');
                escape(&mut want, n.to_ascii_lowercase().as_bytes());
                want.push(b',');
                escape(&mut want, v.as_bytes());
                want.push(b']');
            }
            want.push(b']');
            assert_eq!(
                String::from_utf8(j.buf).unwrap(),
                String::from_utf8(want).unwrap()
            );
        }
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

    /// JSON escaping one byte at a time, as it was first written.
    fn escape_reference(b: &[u8]) -> Vec<u8> {
        let mut out = vec![b'"'];
        for &c in b {
            match c {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                c if needs_escape(c) => out.extend_from_slice(format!("\\u{c:04x}").as_bytes()),
                c => out.push(c),
            }
        }
        out.push(b'"');
        out
    }

    #[test]
    fn dense_escapes_come_out_as_byte_by_byte() {
        // Escapes next to each other, at every place of a 16-byte chunk, and runs of them
        // (each six bytes out) filling the room reserved.
        let mut x: u32 = 0x9e37_79b9;
        // The second alphabet has only two-byte escapes: whole chunks of it are shuffled.
        let alphabets: [&[u8]; 2] = [b"ab\"\\\n\r\t\x01\x7f {}:,\xc3\xa9", b"ab\"\\\n\r\t {}:,"];
        for (alphabet, len) in alphabets.iter().flat_map(|a| (0..200).map(move |l| (a, l))) {
            let mut b: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    alphabet[x as usize % alphabet.len()]
                })
                .collect();
            let mut o = Vec::new();
            escape(&mut o, &b);
            assert_eq!(o, escape_reference(&b), "{b:?}");
            // And without the shuffles, as on a CPU without SSSE3.
            #[cfg(target_arch = "x86_64")]
            {
                let mut o = b"\"".to_vec();
                escape_chunks::<false>(&b, false, false, &mut o);
                o.push(b'"');
                assert_eq!(o, escape_reference(&b), "{b:?}");
            }
            // As a body: text when it is UTF-8 (the é may be cut in two).
            b.retain(|&c| c < 0x80);
            let mut o = Vec::new();
            assert!(text(&mut o, &b, false));
            assert_eq!(o, escape_reference(&b));
        }
        let all_escaped = vec![1u8; 300];
        let mut o = b"x".to_vec();
        escape(&mut o, &all_escaped);
        assert_eq!(&o[1..], &escape_reference(&all_escaped)[..]);
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
