//! Message heads as nearly all traffic sends them, parsed from bitmasks.
//!
//! httparse walks a head byte by byte (about eight instructions a byte), and on a capture
//! of keep-alive traffic that is a third of the parsing thread. Most heads are plain: CRLF
//! lines of printable ASCII, `name: value` fields, no folding, well under 1 KiB. For those,
//! one AVX2 pass turns every 32 bytes into bitmasks (line feeds, carriage returns, blanks,
//! bytes no token may hold, bytes no head may hold), and the start line and fields
//! are cut at the set bits with no loop over bytes.
//!
//! `scan` accepts only heads it can prove plain and returns None for everything else (a
//! partial head, a bare LF, obs-text, folding, a head over 1 KiB, a CPU without AVX2), so
//! that httparse decides those. Whatever `scan` accepts, httparse parses the same way:
//! `agrees_with_httparse` checks that, driven by the tests below and the `http_head` fuzz
//! target.

use std::ops::Range;

/// Which side of a connection a head comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Client to server: requests.
    Request,
    /// Server to client: responses.
    Response,
}

/// Most header fields in one head; more is treated as hostile.
pub const MAX_HEADERS: usize = 100;

/// Longest head taken.
const MAX_LEN: usize = 1024;
/// Bytes in a block: one AVX2 vector, one bit each in a `u32`. (Two vectors joined in a
/// `u64` make LLVM move the bits out one byte at a time.)
const BLOCK: usize = 32;
const BLOCKS: usize = MAX_LEN / BLOCK;
/// Most fields taken.
pub(crate) const MAX_FIELDS: usize = 32;

/// The start line, as places in the head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartLine {
    Request {
        method: Range<usize>,
        target: Range<usize>,
        /// 0 for HTTP/1.0, 1 for HTTP/1.1.
        minor: u8,
    },
    Response {
        minor: u8,
        status: u16,
        reason: Range<usize>,
    },
}

/// Where the fields of a head lie: name start, name end, value start, value end. The caller
/// lends `scan` room for them, which keeps `Scanned` small enough to return cheaply.
pub type Fields = [[u16; 4]; MAX_FIELDS];

/// A plain head found at the start of the input.
pub struct Scanned<'a> {
    /// The head, through the blank line that ends it.
    pub text: &'a str,
    pub start: StartLine,
    fields: &'a [[u16; 4]],
}

impl Scanned<'_> {
    /// How many fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Where each field's name and value lie in `text`, in wire order.
    pub fn fields(&self) -> impl Iterator<Item = (Range<usize>, Range<usize>)> + '_ {
        self.fields.iter().map(|&[a, b, c, d]| {
            (
                usize::from(a)..usize::from(b),
                usize::from(c)..usize::from(d),
            )
        })
    }
}

/// The bitmasks of one block: bit i stands for byte i.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Block {
    lf: u32,
    cr: u32,
    /// SP or HTAB.
    blank: u32,
    /// Not a token character (RFC 9110 5.6.2): ends a method or a field name.
    nontoken: u32,
    /// Not allowed anywhere in a plain head: controls other than HTAB, CR and LF, DEL,
    /// and bytes over 0x7F.
    bad: u32,
}

const fn is_token(b: u8) -> bool {
    matches!(b,
        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9'
        | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_'
        | b'`' | b'|' | b'~')
}

/// The definition of `Block`, a byte at a time: what the vector version must equal.
#[cfg(test)]
fn classify_scalar(block: &[u8; BLOCK]) -> Block {
    let mut m = Block::default();
    for (i, &b) in block.iter().enumerate() {
        let bit = 1u32 << i;
        let set = |mask: &mut u32, yes: bool| *mask |= if yes { bit } else { 0 };
        set(&mut m.lf, b == b'\n');
        set(&mut m.cr, b == b'\r');
        set(&mut m.blank, b == b' ' || b == b'\t');
        set(&mut m.nontoken, !is_token(b));
        set(
            &mut m.bad,
            !(matches!(b, b'\t' | b'\r' | b'\n') || (0x20..0x7f).contains(&b)),
        );
    }
    m
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{is_token, Block};
    use std::arch::x86_64::*;

    /// For each low nibble, which high nibbles (bit h for 0..8) make a token character.
    const LOW: [i8; 16] = {
        let mut t = [0i8; 16];
        let mut b = 0;
        while b < 0x80 {
            if is_token(b as u8) {
                t[b & 15] |= (1u8 << (b >> 4)) as i8;
            }
            b += 1;
        }
        t
    };
    /// For each high nibble, its bit in `LOW` (none for 8 and up: not ASCII).
    const HIGH: [i8; 16] = {
        let mut t = [0i8; 16];
        let mut h = 0;
        while h < 8 {
            t[h] = (1u8 << h) as i8;
            h += 1;
        }
        t
    };

    #[target_feature(enable = "avx2")]
    pub(super) fn classify(block: &[u8; super::BLOCK]) -> Block {
        // SAFETY: 32 bytes, an unaligned load.
        let v = unsafe { _mm256_loadu_si256(block.as_ptr().cast()) };
        let eq = |c: u8| _mm256_cmpeq_epi8(v, _mm256_set1_epi8(c as i8));
        let mask = |x: __m256i| _mm256_movemask_epi8(x) as u32;
        let (lf, cr, tab) = (eq(b'\n'), eq(b'\r'), eq(b'\t'));
        let blank = _mm256_or_si256(eq(b' '), tab);
        // Signed: 0x20..=0x7f are the bytes greater than 0x1f; then drop DEL.
        let printable = _mm256_andnot_si256(eq(0x7f), _mm256_cmpgt_epi8(v, _mm256_set1_epi8(0x1f)));
        let allowed = _mm256_or_si256(_mm256_or_si256(printable, tab), _mm256_or_si256(cr, lf));
        // Token: LOW[low nibble] & HIGH[high nibble] != 0 (shuffles look up 16 entries).
        let nibble = _mm256_set1_epi8(0x0f);
        // SAFETY: each table is 16 bytes (an unaligned load).
        let (low_table, high_table) = unsafe {
            (
                _mm256_broadcastsi128_si256(_mm_loadu_si128(LOW.as_ptr().cast())),
                _mm256_broadcastsi128_si256(_mm_loadu_si128(HIGH.as_ptr().cast())),
            )
        };
        let low = _mm256_shuffle_epi8(low_table, _mm256_and_si256(v, nibble));
        let high = _mm256_shuffle_epi8(
            high_table,
            _mm256_and_si256(_mm256_srli_epi16::<4>(v), nibble),
        );
        let nontoken = _mm256_cmpeq_epi8(_mm256_and_si256(low, high), _mm256_setzero_si256());
        Block {
            lf: mask(lf),
            cr: mask(cr),
            blank: mask(blank),
            nontoken: mask(nontoken),
            bad: !mask(allowed),
        }
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn scan<'a>(
        b: &'a [u8],
        role: super::Role,
        fields: &'a mut super::Fields,
    ) -> Option<super::Scanned<'a>> {
        // `classify` inlines here, where AVX2 is enabled.
        super::scan_with(b, role, fields, |block| classify(block))
    }
}

/// The plain head at the start of `b`, or None: then httparse must parse it.
pub fn scan<'a>(b: &'a [u8], role: Role, fields: &'a mut Fields) -> Option<Scanned<'a>> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { avx2::scan(b, role, fields) };
    }
    let _ = (b, role, fields);
    None
}

/// The first set bit at `from` or after, across words.
fn next_bit(m: &[u32], from: usize) -> Option<usize> {
    let mut w = from / BLOCK;
    let mut x = *m.get(w)? & (!0u32 << (from % BLOCK));
    loop {
        if x != 0 {
            return Some(w * BLOCK + x.trailing_zeros() as usize);
        }
        w += 1;
        x = *m.get(w)?;
    }
}

/// The set bits of a run of masks, in order.
struct Bits<'a> {
    words: &'a [u32],
    w: usize,
    x: u32,
}

impl<'a> Bits<'a> {
    fn new(words: &'a [u32]) -> Bits<'a> {
        Bits {
            words,
            w: 0,
            x: words.first().copied().unwrap_or(0),
        }
    }
}

impl Iterator for Bits<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        while self.x == 0 {
            self.w += 1;
            self.x = *self.words.get(self.w)?;
        }
        let i = self.x.trailing_zeros() as usize;
        self.x &= self.x - 1;
        Some(self.w * BLOCK + i)
    }
}

/// Whether any bit in `from..to` is set.
fn any_bit(m: &[u32], from: usize, to: usize) -> bool {
    next_bit(m, from).is_some_and(|i| i < to)
}

#[inline(always)]
fn scan_with<'a>(
    b: &'a [u8],
    role: Role,
    fields: &'a mut Fields,
    classify: impl Fn(&[u8; BLOCK]) -> Block,
) -> Option<Scanned<'a>> {
    // Classify block by block until one holds the blank line (CR LF CR LF) ending the head.
    let mut lf = [0u32; BLOCKS];
    let mut blank = [0u32; BLOCKS];
    let mut nontoken = [0u32; BLOCKS];
    let (mut prev_lf, mut prev_cr) = (0u32, 0u32);
    let mut k = 0;
    let end = loop {
        let at = k * BLOCK;
        if k == BLOCKS || at >= b.len() {
            return None;
        }
        let m = match b.get(at..at + BLOCK) {
            Some(full) => classify(full.try_into().ok()?),
            // The input ends inside this block: classify its last 32 bytes and shift out
            // those of the block before (zeros come in past the end: no LF, CR or bad).
            None if b.len() >= BLOCK => {
                let last = classify(b[b.len() - BLOCK..].try_into().ok()?);
                let shift = (at + BLOCK - b.len()) as u32;
                Block {
                    lf: last.lf >> shift,
                    cr: last.cr >> shift,
                    blank: last.blank >> shift,
                    nontoken: last.nontoken >> shift,
                    bad: last.bad >> shift,
                }
            }
            None => {
                let mut pad = [0u8; BLOCK];
                pad[..b.len() - at].copy_from_slice(&b[at..]);
                classify(&pad)
            }
        };
        // Where a CR is just before (a CR in the last bit of a block meets its LF in the
        // next block's first).
        let after_cr = (m.cr << 1) | (prev_cr >> 31);
        // Bytes that break the rules: bad ones, and an LF not after a CR or a CR not
        // before an LF.
        let broken = m.bad | (m.lf ^ after_cr);
        let hits = m.lf & ((m.lf << 2) | (prev_lf >> 30)) & after_cr;
        if hits != 0 {
            let last = hits.trailing_zeros();
            // Bits of this block inside the head.
            let inside = !0u32 >> (31 - last);
            if broken & inside != 0 {
                return None;
            }
            lf[k] = m.lf & inside;
            blank[k] = m.blank & inside;
            nontoken[k] = m.nontoken & inside;
            break at + last as usize + 1;
        }
        if broken != 0 {
            return None;
        }
        (lf[k], blank[k], nontoken[k]) = (m.lf, m.blank, m.nontoken);
        (prev_lf, prev_cr) = (m.lf, m.cr);
        k += 1;
    };
    let bytes = &b[..end];
    debug_assert!(bytes.is_ascii());
    // SAFETY: ASCII, so UTF-8: no byte of the head is over 0x7e (`bad`).
    let text = unsafe { std::str::from_utf8_unchecked(bytes) };

    // The start line ends at the first LF (its CR just before).
    let mut lines = Bits::new(&lf[..=k]);
    let eol = lines.next()?;
    let line_end = eol.checked_sub(1)?;
    let start = match role {
        Role::Request => {
            let sp1 = next_bit(&blank, 0).filter(|&i| i > 0 && i < line_end)?;
            let sp2 = next_bit(&blank, sp1 + 1).filter(|&i| i > sp1 + 1 && i < line_end)?;
            if bytes[sp1] != b' ' || bytes[sp2] != b' ' || any_bit(&nontoken, 0, sp1) {
                return None;
            }
            // The target holds no blank (up to sp2) and no bad byte: all of it is
            // 0x21..=0x7e, which httparse takes.
            StartLine::Request {
                method: 0..sp1,
                target: sp1 + 1..sp2,
                minor: version(bytes.get(sp2 + 1..line_end)?)?,
            }
        }
        Role::Response => {
            let minor = version(bytes.get(..8)?)?;
            let digits = bytes.get(9..12)?;
            if bytes[8] != b' ' || !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let status = digits
                .iter()
                .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
            let reason = match line_end {
                12 => 12..12,
                _ if line_end > 12 && bytes[12] == b' ' => 13..line_end,
                _ => return None,
            };
            StartLine::Response {
                minor,
                status,
                reason,
            }
        }
    };

    let mut count = 0;
    let mut s = eol + 1;
    for eol in lines {
        let cr = eol - 1;
        if cr == s {
            // The blank line: the first one is the end, found above.
            break;
        }
        // The name is all token bytes, so the first byte that is not one must be the
        // colon after it (a blank there is folding or a space before the colon).
        let c = next_bit(&nontoken, s)?;
        if c == s || c >= cr || bytes[c] != b':' || count == MAX_FIELDS {
            return None;
        }
        // Blanks around the value are not part of it.
        // (Every index is below MAX_LEN: the mask only shows the compiler so.)
        let blank_at = |i: usize| blank[(i / BLOCK) & (BLOCKS - 1)] >> (i % BLOCK) & 1 != 0;
        let mut v0 = c + 1;
        while v0 < cr && blank_at(v0) {
            v0 += 1;
        }
        let mut v1 = cr;
        while v1 > v0 && blank_at(v1 - 1) {
            v1 -= 1;
        }
        // Below MAX_LEN, so each fits.
        fields[count] = [s as u16, c as u16, v0 as u16, v1 as u16];
        count += 1;
        s = eol + 1;
    }
    Some(Scanned {
        text,
        start,
        fields: &fields[..count],
    })
}

/// The minor version of exactly "HTTP/1.0" or "HTTP/1.1".
fn version(b: &[u8]) -> Option<u8> {
    match b {
        b"HTTP/1.0" => Some(0),
        b"HTTP/1.1" => Some(1),
        _ => None,
    }
}

/// Checks that httparse parses a head `scan` accepts into the same parts, returning what
/// differs. (For the tests and the `http_head` fuzz target.)
#[doc(hidden)]
pub fn agrees_with_httparse(b: &[u8], role: Role) -> Result<(), String> {
    let mut fields = [[0; 4]; MAX_FIELDS];
    let Some(s) = scan(b, role, &mut fields) else {
        return Ok(());
    };
    let ours: Vec<(&str, &str)> = s.fields().map(|(n, v)| (&s.text[n], &s.text[v])).collect();
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let complete = |parsed: httparse::Result<usize>| match parsed {
        Ok(httparse::Status::Complete(n)) => Ok(n),
        other => Err(format!("httparse: {other:?}")),
    };
    let (len, line, theirs) = match role {
        Role::Request => {
            let mut r = httparse::Request::new(&mut storage);
            let len = complete(r.parse(b))?;
            let line = format!("{:?} {:?} {:?}", r.method, r.path, r.version);
            (len, line, r.headers.to_vec())
        }
        Role::Response => {
            let mut r = httparse::Response::new(&mut storage);
            let len = complete(r.parse(b))?;
            let line = format!("{:?} {:?} {:?}", r.version, r.code, r.reason);
            (len, line, r.headers.to_vec())
        }
    };
    let mine = match &s.start {
        StartLine::Request {
            method,
            target,
            minor,
        } => format!(
            "{:?} {:?} {:?}",
            Some(&s.text[method.clone()]),
            Some(&s.text[target.clone()]),
            Some(minor)
        ),
        StartLine::Response {
            minor,
            status,
            reason,
        } => format!(
            "{:?} {:?} {:?}",
            Some(minor),
            Some(status),
            Some(&s.text[reason.clone()])
        ),
    };
    let theirs: Vec<(&str, &str)> = theirs
        .iter()
        .map(|h| {
            (
                h.name,
                std::str::from_utf8(h.value).unwrap_or("<not UTF-8>"),
            )
        })
        .collect();
    if len != s.text.len() || line != mine || ours != theirs {
        return Err(format!(
            "scan: {} bytes, {mine}, {ours:?}\nhttparse: {len} bytes, {line}, {theirs:?}",
            s.text.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NGINX: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\n\
        Date: Sun, 22 Nov 2026 23:51:20 GMT\r\nContent-Type: text/plain\r\n\
        Content-Length: 396\r\nLast-Modified: Sun, 22 Nov 2026 23:51:19 GMT\r\n\
        Connection: keep-alive\r\nETag: \"6b037ff7-18c\"\r\nAccept-Ranges: bytes\r\n\r\nxxxx";

    fn avx2() -> bool {
        #[cfg(target_arch = "x86_64")]
        return std::is_x86_feature_detected!("avx2");
        #[allow(unreachable_code)]
        false
    }

    /// A small deterministic generator (xorshift).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn vector_masks_equal_the_definition() {
        if !avx2() {
            return;
        }
        let mut rng = Rng(0x2545f4914f6cdd1d);
        // Every byte value in every position, then random blocks.
        for start in 0..=255u8 {
            let mut block = [0u8; BLOCK];
            for (i, b) in block.iter_mut().enumerate() {
                *b = start.wrapping_add(i as u8);
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the test returned above unless the CPU has AVX2.
            assert_eq!(unsafe { avx2::classify(&block) }, classify_scalar(&block));
        }
        for _ in 0..10_000 {
            let mut block = [0u8; BLOCK];
            block.iter_mut().for_each(|b| *b = rng.next() as u8);
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the test returned above unless the CPU has AVX2.
            assert_eq!(unsafe { avx2::classify(&block) }, classify_scalar(&block));
        }
    }

    #[test]
    fn everyday_heads_take_the_fast_path() {
        if !avx2() {
            return;
        }
        let mut buf = [[0; 4]; MAX_FIELDS];
        let s = scan(NGINX, Role::Response, &mut buf).expect("plain response");
        assert_eq!(s.text.len(), NGINX.len() - 4);
        assert_eq!(
            s.start,
            StartLine::Response {
                minor: 1,
                status: 200,
                reason: 13..15
            }
        );
        let fields: Vec<_> = s.fields().map(|(n, v)| (&s.text[n], &s.text[v])).collect();
        assert_eq!(fields.len(), 8);
        assert_eq!(fields[3], ("Content-Length", "396"));
        assert_eq!(fields[6], ("ETag", "\"6b037ff7-18c\""));

        let req =
            b"GET /item.json HTTP/1.0\r\nHost: 10.250.0.2\r\nX-Empty:\r\nX-Pad: \t a b \t\r\n\r\n";
        let s = scan(req, Role::Request, &mut buf).expect("plain request");
        assert_eq!(
            s.start,
            StartLine::Request {
                method: 0..3,
                target: 4..14,
                minor: 0
            }
        );
        let fields: Vec<_> = s.fields().map(|(n, v)| (&s.text[n], &s.text[v])).collect();
        assert_eq!(
            fields,
            [("Host", "10.250.0.2"), ("X-Empty", ""), ("X-Pad", "a b")]
        );
        // A head across a block boundary, ending right at one, and one without fields.
        for pad in 0..80 {
            let mut h = format!("GET /{} HTTP/1.1\r\nA: b\r\n\r\n", "p".repeat(pad)).into_bytes();
            assert!(
                scan(&h, Role::Request, &mut [[0; 4]; MAX_FIELDS]).is_some(),
                "pad {pad}"
            );
            agrees_with_httparse(&h, Role::Request).unwrap();
            h.truncate(h.len() - 1);
            assert!(
                scan(&h, Role::Request, &mut [[0; 4]; MAX_FIELDS]).is_none(),
                "partial, pad {pad}"
            );
        }
        assert!(scan(
            b"HTTP/1.1 204\r\n\r\n",
            Role::Response,
            &mut [[0; 4]; MAX_FIELDS]
        )
        .is_some());
    }

    #[test]
    fn anything_unusual_is_left_to_httparse() {
        let unusual: &[(&[u8], Role)] = &[
            (b"GET / HTTP/1.1\nHost: a\n\n", Role::Request),
            (b"GET / HTTP/1.1\r\nHost: a\n\r\n", Role::Request),
            (b"GET / HTTP/1.1\r\nHost: a\r\r\n\r\n", Role::Request),
            (b"GET / HTTP/1.1\r\nHost: \xc3\xa9\r\n\r\n", Role::Request),
            (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", Role::Request),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
                Role::Request,
            ),
            (b"GET  / HTTP/1.1\r\n\r\n", Role::Request),
            (b"GET /\t HTTP/1.1\r\n\r\n", Role::Request),
            (b"GET / HTTP/1.2\r\n\r\n", Role::Request),
            (b"G(T / HTTP/1.1\r\n\r\n", Role::Request),
            (b"\r\nGET / HTTP/1.1\r\n\r\n", Role::Request),
            (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", Role::Request),
            (b"GET / HTTP/1.1\r\n: empty name\r\n\r\n", Role::Request),
            (b"GET / HTTP/1.1\r\nA: \x7f\r\n\r\n", Role::Request),
            (b"GET / HTTP/1.1\r\nA: b\r\n", Role::Request),
            (b"HTTP/1.1 20 OK\r\n\r\n", Role::Response),
            (b"HTTP/1.1 200OK\r\n\r\n", Role::Response),
            (b"HTTP/1.1  200 OK\r\n\r\n", Role::Response),
            (b"HTTP/2.0 200 OK\r\n\r\n", Role::Response),
        ];
        for (head, role) in unusual {
            assert!(
                scan(head, *role, &mut [[0; 4]; MAX_FIELDS]).is_none(),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
        let many: String = (0..=MAX_FIELDS).map(|i| format!("F{i}: v\r\n")).collect();
        let head = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(scan(head.as_bytes(), Role::Request, &mut [[0; 4]; MAX_FIELDS]).is_none());
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_LEN));
        assert!(scan(long.as_bytes(), Role::Request, &mut [[0; 4]; MAX_FIELDS]).is_none());
    }

    #[test]
    fn whatever_scan_accepts_httparse_parses_the_same() {
        // Heads built from pieces rich in HTTP syntax, then mutated byte by byte.
        let pieces: &[&[u8]] = &[
            b"GET ",
            b"POST ",
            b"M-X ",
            b"/a?b=c ",
            b"* ",
            b"HTTP/1.1",
            b"HTTP/1.0",
            b"HTTP/1.1 ",
            b"200 ",
            b"204",
            b" OK",
            b"\r\n",
            b"\r\n",
            b"\r\n",
            b"\n",
            b"Host: x",
            b"Content-Length: 5",
            b"A:",
            b"B: \t",
            b" ",
            b"\t",
            b":",
            b"a",
            b"\x00",
            b"\xc3\xa9",
            b"\x7f",
            b"(",
            b"\r",
        ];
        let mut rng = Rng(0x9e3779b97f4a7c15);
        let mut accepted = [0usize; 2];
        for round in 0..200_000 {
            let mut head = Vec::new();
            if round % 2 == 0 {
                head.extend_from_slice(if round % 4 == 0 {
                    b"GET / HTTP/1.1\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\n"
                });
            }
            for _ in 0..rng.below(24) {
                head.extend_from_slice(pieces[rng.below(pieces.len())]);
            }
            if round % 3 != 0 {
                head.extend_from_slice(b"\r\n\r\n");
            }
            if round % 5 == 0 && !head.is_empty() {
                let i = rng.below(head.len());
                head[i] = rng.next() as u8;
            }
            for (j, role) in [Role::Request, Role::Response].into_iter().enumerate() {
                if let Err(e) = agrees_with_httparse(&head, role) {
                    panic!("{:?}\n{e}", String::from_utf8_lossy(&head));
                }
                accepted[j] += usize::from(scan(&head, role, &mut [[0; 4]; MAX_FIELDS]).is_some());
            }
        }
        // The comparison means something only if the fast path took many of them.
        if avx2() {
            assert!(accepted.iter().all(|&n| n > 1000), "{accepted:?}");
        }
    }
}
