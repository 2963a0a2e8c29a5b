//! The decoded form of an HTTP/1.1 exchange. The sniffer (`sniff`) produces these and both
//! the output writers and the shadow comparison (`shadow`) consume them.

use std::net::SocketAddr;
use std::ops::Range;
use std::time::SystemTime;

use super::head::Scanned;

/// A message body after transfer decoding (chunked) and content decoding (gzip, deflate).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Body {
    /// Bytes kept for display and comparison: at most the configured `--max-body`.
    pub data: Vec<u8>,
    /// Length of the whole decoded body, including what was not kept.
    pub len: u64,
    /// True when `data` holds less than `len` bytes.
    pub truncated: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub target: String,
    /// "HTTP/1.1" or "HTTP/1.0" (a constant: the parser accepts no other).
    pub version: &'static str,
    pub headers: Headers,
    pub body: Body,
    /// Timestamp of the packet that carried the first byte of the request.
    pub ts: SystemTime,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    /// "HTTP/1.1" or "HTTP/1.0".
    pub version: &'static str,
    pub headers: Headers,
    pub body: Body,
    /// Timestamp of the packet that carried the first byte of the response.
    pub ts: SystemTime,
}

/// One request and, when it came, its response, on one TCP connection.
#[derive(Debug, PartialEq, Eq)]
pub struct Exchange {
    pub client: SocketAddr,
    pub server: SocketAddr,
    /// The interface it was captured on, when known (capturing on `any`).
    pub interface: Option<String>,
    // Boxed: messages are handed from parser to pairing to output, and moving a pointer
    // costs less than moving a few hundred bytes each time.
    pub request: Box<Request>,
    pub response: Option<Box<Response>>,
}

// Clone by hand: the derived `clone_from` is `*self = source.clone()`, which allocates
// anew and frees the old buffers. The text output copies every request into a recycled
// one (`http::pool`) as soon as it is complete, and field-wise copies reuse its buffers.
impl Clone for Body {
    fn clone(&self) -> Body {
        Body {
            data: self.data.clone(),
            len: self.len,
            truncated: self.truncated,
        }
    }

    fn clone_from(&mut self, o: &Body) {
        self.data.clone_from(&o.data);
        self.len = o.len;
        self.truncated = o.truncated;
    }
}

impl Clone for Request {
    fn clone(&self) -> Request {
        Request {
            method: self.method.clone(),
            target: self.target.clone(),
            version: self.version,
            headers: self.headers.clone(),
            body: self.body.clone(),
            ts: self.ts,
        }
    }

    fn clone_from(&mut self, o: &Request) {
        self.method.clone_from(&o.method);
        self.target.clone_from(&o.target);
        self.version = o.version;
        self.headers.clone_from(&o.headers);
        self.body.clone_from(&o.body);
        self.ts = o.ts;
    }
}

impl Clone for Response {
    fn clone(&self) -> Response {
        Response {
            status: self.status,
            reason: self.reason.clone(),
            version: self.version,
            headers: self.headers.clone(),
            body: self.body.clone(),
            ts: self.ts,
        }
    }

    fn clone_from(&mut self, o: &Response) {
        self.status = o.status;
        self.reason.clone_from(&o.reason);
        self.version = o.version;
        self.headers.clone_from(&o.headers);
        self.body.clone_from(&o.body);
        self.ts = o.ts;
    }
}

impl Clone for Exchange {
    fn clone(&self) -> Exchange {
        Exchange {
            client: self.client,
            server: self.server,
            interface: self.interface.clone(),
            request: self.request.clone(),
            response: self.response.clone(),
        }
    }

    fn clone_from(&mut self, o: &Exchange) {
        self.client = o.client;
        self.server = o.server;
        self.interface.clone_from(&o.interface);
        self.request.clone_from(&o.request);
        self.response.clone_from(&o.response);
    }
}

impl Clone for Headers {
    fn clone(&self) -> Headers {
        Headers {
            text: self.text.clone(),
            fields: self.fields.clone(),
            known: self.known,
            repeated: self.repeated,
            first: self.first,
        }
    }

    fn clone_from(&mut self, o: &Headers) {
        self.text.clone_from(&o.text);
        self.fields.clone_from(&o.fields);
        self.known = o.known;
        self.repeated = o.repeated;
        self.first = o.first;
    }
}

impl Request {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }
}

impl Exchange {
    /// Microseconds from the first byte of the request to the first byte of the response.
    pub fn latency_us(&self) -> Option<u64> {
        let resp = self.response.as_ref()?;
        resp.ts
            .duration_since(self.request.ts)
            .ok()
            .map(|d| d.as_micros() as u64)
    }
}

/// The header fields of one message in wire order, repeated names kept, names as they
/// came (lookups ignore case; the JSON output lower-cases them).
///
/// All fields are cut from one string, with where each name and value lies beside it: a
/// parsed head is copied in one piece (its separators stay between the fields), and a
/// head of a dozen fields costs two buffers rather than two dozen strings. A recycled
/// `Headers` costs none.
#[derive(Default)]
pub struct Headers {
    text: String,
    fields: Vec<Field>,
    /// Which of `KNOWN` are present: the parser asks for these in every message, and most
    /// messages lack most of them.
    known: u8,
    /// Which of `KNOWN` are present more than once.
    repeated: u8,
    /// For each of `KNOWN` that is present, the index of its first field.
    first: [u32; KNOWN.len()],
}

/// Where a field's name and value lie in `Headers::text`.
#[derive(Clone, Copy, Debug)]
struct Field {
    name: (u32, u32),
    value: (u32, u32),
}

/// Field names looked up for every message (framing, content coding, upgrades), in the
/// order of `Known`.
const KNOWN: [&str; 4] = [
    "content-length",
    "transfer-encoding",
    "content-encoding",
    "upgrade",
];

/// The fields of `KNOWN`, for lookups that need no name comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Known {
    ContentLength,
    TransferEncoding,
    ContentEncoding,
    Upgrade,
}

/// The index in `KNOWN` of `name` (any case).
fn known_index(name: &[u8]) -> Option<usize> {
    // The lengths differ, so one comparison at most.
    let i = match name.len() {
        14 => 0,
        17 => 1,
        16 => 2,
        7 => 3,
        _ => return None,
    };
    let eq = if name.len() >= 8 {
        // Nearly every message has one of these names (Content-Length): compared eight
        // bytes at a time, the case bit ignored where `KNOWN` has a letter.
        let n = name.len();
        KNOWN_WORDS[i]
            .iter()
            .zip([0, n / 2 - 4, n - 8])
            .all(|(&(w, case), at)| word(&name[at..]) | case == w)
    } else {
        KNOWN[i].as_bytes().eq_ignore_ascii_case(name)
    };
    eq.then_some(i)
}

/// The first eight bytes of `b` as one word.
fn word(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_le_bytes(w)
}

/// For each of `KNOWN`: three words of eight bytes (its first, middle and last, which
/// overlap and cover names of 8 to 24 bytes), each with the case bit of the letters in it.
/// A name of the same length equals it, in any case, when its words with those bits set
/// are these.
const KNOWN_WORDS: [[(u64, u64); 3]; KNOWN.len()] = {
    const fn word_at(name: &[u8], from: usize) -> (u64, u64) {
        let (mut w, mut case, mut i) = (0u64, 0u64, 0);
        while i < 8 && from + i < name.len() {
            let b = name[from + i];
            w |= (b as u64) << (8 * i);
            if b.is_ascii_lowercase() {
                case |= 0x20 << (8 * i);
            }
            i += 1;
        }
        (w, case)
    }
    let mut t = [[(0u64, 0u64); 3]; KNOWN.len()];
    let mut k = 0;
    while k < KNOWN.len() {
        let name = KNOWN[k].as_bytes();
        let n = name.len();
        if n >= 8 {
            t[k] = [
                word_at(name, 0),
                word_at(name, n / 2 - 4),
                word_at(name, n - 8),
            ];
        }
        k += 1;
    }
    t
};

impl Headers {
    pub fn new() -> Headers {
        Headers::default()
    }

    /// Appends a field.
    pub fn push(&mut self, name: &str, value: &str) {
        let start = self.text.len();
        self.text.push_str(name);
        self.text.push_str(value);
        let mid = start + name.len();
        self.add(start..mid, mid..self.text.len());
    }

    /// Appends the fields of a parsed head: `head` is copied whole, and each field is
    /// given as where its name and where its value lie in it. A range that is not a slice
    /// of `head` (out of it, reversed, or not on character boundaries) is skipped. A head
    /// that is not UTF-8 is refused whole, with nothing added.
    pub(crate) fn push_head<I>(&mut self, head: &[u8], fields: I) -> Result<(), std::str::Utf8Error>
    where
        I: IntoIterator<Item = (Range<usize>, Range<usize>)>,
    {
        // Nearly every head is ASCII: one OR over its bytes (vectorised) shows it, and
        // then every index is a character boundary.
        let ascii = head.iter().fold(0u8, |a, &b| a | b) < 0x80;
        let text = if ascii {
            // SAFETY: ASCII is UTF-8.
            unsafe { std::str::from_utf8_unchecked(head) }
        } else {
            std::str::from_utf8(head)?
        };
        // Checked against `head` alone: what is already in `text` ends on a boundary.
        let slice = |r: &Range<usize>| {
            r.start <= r.end
                && r.end <= head.len()
                && (ascii || (text.is_char_boundary(r.start) && text.is_char_boundary(r.end)))
        };
        let fields = fields.into_iter().filter(|(n, v)| slice(n) && slice(v));
        self.append_head(text, fields);
        Ok(())
    }

    /// Appends the fields of a head `head::scan` accepted: its text is ASCII and every
    /// range is inside it, so nothing needs checking.
    pub(crate) fn push_scanned(&mut self, head: &Scanned<'_>) {
        self.fields.reserve(head.len());
        self.append_head(head.text, head.fields());
    }

    /// Copies `head` whole and records each field, given as where its name and value lie
    /// in it (every range already checked to be a slice of it).
    fn append_head<I>(&mut self, head: &str, fields: I)
    where
        I: Iterator<Item = (Range<usize>, Range<usize>)>,
    {
        let base = self.text.len();
        self.text.push_str(head);
        for (name, value) in fields {
            self.record(
                known_index(&head.as_bytes()[name.clone()]),
                base + name.start..base + name.end,
                base + value.start..base + value.end,
            );
        }
    }

    /// Records a field whose name and value are in `text`; skips it if either range is
    /// not a slice of `text`, so that every field `iter` yields is one.
    fn add(&mut self, name: Range<usize>, value: Range<usize>) {
        let known = match (self.text.get(name.clone()), self.text.get(value.clone())) {
            (Some(n), Some(_)) => known_index(n.as_bytes()),
            _ => return,
        };
        self.record(known, name, value);
    }

    /// Records a field already checked to be a slice of `text`; `known` is its index in
    /// `KNOWN`, if it is one of them.
    fn record(&mut self, known: Option<usize>, name: Range<usize>, value: Range<usize>) {
        if let Some(i) = known {
            let bit = 1 << i;
            if self.known & bit == 0 {
                self.first[i] = self.fields.len() as u32;
            } else {
                self.repeated |= bit;
            }
            self.known |= bit;
        }
        self.fields.push(Field {
            name: (name.start as u32, name.end as u32),
            value: (value.start as u32, value.end as u32),
        });
    }

    /// The fields as (name, value), in wire order.
    pub fn iter(&self) -> HeaderIter<'_> {
        self.iter_from(0)
    }

    /// The fields from the `i`th on.
    fn iter_from(&self, i: usize) -> HeaderIter<'_> {
        HeaderIter {
            text: &self.text,
            fields: self.fields.get(i..).unwrap_or_default().iter(),
        }
    }

    /// The first value of field `name` (any case).
    pub fn get(&self, name: &str) -> Option<&str> {
        let (from, most) = self.span(name);
        if most == 0 {
            return None;
        }
        self.iter_from(from)
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Every value of field `name` (any case), in wire order.
    #[cfg(test)]
    pub(crate) fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let (from, most) = self.span(name);
        self.iter_from(from)
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .take(most)
    }

    /// Every value of field `k`, in wire order.
    pub fn known(&self, k: Known) -> impl Iterator<Item = &str> + '_ {
        let i = k as usize;
        let (from, most) = self.span_of(i);
        // The first is at `from`; others are looked for only when there are some.
        self.iter_from(from)
            .enumerate()
            .filter(move |(j, (n, _))| *j == 0 || n.eq_ignore_ascii_case(KNOWN[i]))
            .map(|(_, (_, v))| v)
            .take(most)
    }

    /// Where to look for field `name`, and how many fields of that name there can be.
    fn span(&self, name: &str) -> (usize, usize) {
        match known_index(name.as_bytes()) {
            Some(i) => self.span_of(i),
            None => (0, usize::MAX),
        }
    }

    /// `span` for the `i`th of `KNOWN`: found without a search, and not looked for past
    /// its first occurrence when it has no other.
    fn span_of(&self, i: usize) -> (usize, usize) {
        let bit = 1 << i;
        if self.known & bit == 0 {
            (0, 0)
        } else if self.repeated & bit == 0 {
            (self.first[i] as usize, 1)
        } else {
            (self.first[i] as usize, usize::MAX)
        }
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Empties the list, keeping its buffers for reuse.
    pub fn clear(&mut self) {
        self.text.clear();
        self.fields.clear();
        self.known = 0;
        self.repeated = 0;
    }

    /// Appends every field of `other` (trailer fields join the head's).
    pub fn append(&mut self, other: &Headers) {
        for (n, v) in other {
            self.push(n, v);
        }
    }

    /// Bytes held, for the recycling pool's bounds.
    pub fn capacity(&self) -> usize {
        self.text.capacity() + self.fields.capacity() * std::mem::size_of::<Field>()
    }

    /// Where each field lies in `text()`, in wire order: `[name start, name end, value
    /// start, value end]`. For writers that copy fields together with what lies between
    /// them (a parsed head's `: ` and line ends) in one piece.
    pub fn spans(&self) -> impl ExactSizeIterator<Item = [usize; 4]> + '_ {
        self.fields.iter().map(|f| {
            [
                f.name.0 as usize,
                f.name.1 as usize,
                f.value.0 as usize,
                f.value.1 as usize,
            ]
        })
    }

    /// The string every name and value is cut from, in field order, with other bytes
    /// between fields (the separators of a parsed head): one scan of it sees every byte
    /// of the fields, as JSON escaping wants. Each name and value `iter` yields is a
    /// slice of it.
    pub fn text(&self) -> &str {
        &self.text
    }
}

pub struct HeaderIter<'a> {
    text: &'a str,
    fields: std::slice::Iter<'a, Field>,
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let f = self.fields.next()?;
        let part = |(a, b): (u32, u32)| self.text.get(a as usize..b as usize).unwrap_or_default();
        Some((part(f.name), part(f.value)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.fields.size_hint()
    }
}

impl ExactSizeIterator for HeaderIter<'_> {}

impl<'a> IntoIterator for &'a Headers {
    type Item = (&'a str, &'a str);
    type IntoIter = HeaderIter<'a>;

    fn into_iter(self) -> HeaderIter<'a> {
        self.iter()
    }
}

impl<'a> FromIterator<(&'a str, &'a str)> for Headers {
    fn from_iter<I: IntoIterator<Item = (&'a str, &'a str)>>(it: I) -> Headers {
        let mut h = Headers::new();
        for (n, v) in it {
            h.push(n, v);
        }
        h
    }
}

impl<const N: usize> From<[(&str, &str); N]> for Headers {
    fn from(fields: [(&str, &str); N]) -> Headers {
        fields.into_iter().collect()
    }
}

// The fields alone decide equality: not the bytes between them, and not `known`,
// `repeated` and `first`, which follow from them (`first` keeps stale entries for absent
// fields).
impl PartialEq for Headers {
    fn eq(&self, other: &Headers) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Headers {}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_keep_order_repeats_and_names_as_they_came() {
        let mut h = Headers::from([("Host", "a"), ("Set-Cookie", "x=1"), ("set-cookie", "y=2")]);
        h.push("X-É", "é");
        assert_eq!(
            h.iter().collect::<Vec<_>>(),
            [
                ("Host", "a"),
                ("Set-Cookie", "x=1"),
                ("set-cookie", "y=2"),
                ("X-É", "é")
            ]
        );
        assert_eq!(
            (h.get("SET-COOKIE"), h.get("x-é"), h.len()),
            (Some("x=1"), None, 4)
        );
        let mut t = Headers::new();
        t.push("", "");
        t.push("Trailer", "v");
        h.append(&t);
        assert_eq!(h.iter().nth(5), Some(("Trailer", "v")));
        assert_eq!(h.iter().nth(4), Some(("", "")));
        h.clear();
        assert!(h.is_empty() && h.iter().next().is_none());
    }

    #[test]
    fn lookups_of_framing_fields_find_first_and_repeated_values() {
        let mut h = Headers::from([
            ("Date", "x"),
            ("Content-Length", "5"),
            ("Server", "y"),
            ("content-LENGTH", "6"),
        ]);
        assert_eq!(h.get("content-length"), Some("5"));
        assert_eq!(h.get_all("Content-Length").collect::<Vec<_>>(), ["5", "6"]);
        assert_eq!(h.get_all("upgrade").count(), 0);
        assert_eq!(h.get("server"), Some("y"));
        assert_eq!(
            h.known(Known::ContentLength).collect::<Vec<_>>(),
            ["5", "6"]
        );
        assert_eq!(h.known(Known::Upgrade).count(), 0);
        h.clear();
        h.push("Upgrade", "websocket");
        assert_eq!(h.get("content-length"), None);
        assert_eq!(h.get_all("UPGRADE").collect::<Vec<_>>(), ["websocket"]);
        assert_eq!(h.known(Known::Upgrade).collect::<Vec<_>>(), ["websocket"]);
        // Equality ignores what a cleared list remembers of absent fields.
        assert_eq!(h, Headers::from([("Upgrade", "websocket")]));
    }

    #[test]
    fn known_names_match_in_any_case_and_nothing_else_does() {
        for (i, name) in KNOWN.iter().enumerate() {
            let upper = name.to_ascii_uppercase();
            let title: String = name
                .split('-')
                .map(|w| w[..1].to_ascii_uppercase() + &w[1..])
                .collect::<Vec<_>>()
                .join("-");
            for n in [name.to_string(), upper, title] {
                assert_eq!(known_index(n.as_bytes()), Some(i), "{n}");
            }
            // Every byte changed in turn (to a byte that is not the same letter in
            // another case) makes it another name.
            for at in 0..name.len() {
                for b in 0..=255u8 {
                    let mut n = name.as_bytes().to_vec();
                    if b.eq_ignore_ascii_case(&n[at]) {
                        continue;
                    }
                    n[at] = b;
                    assert_eq!(known_index(&n), None, "{:?}", String::from_utf8_lossy(&n));
                }
            }
        }
        assert_eq!(known_index(b"content-lengths"), None);
    }

    #[test]
    // Reversed ranges are what it is given on purpose: they must be skipped.
    #[allow(clippy::reversed_empty_ranges)]
    fn a_parsed_head_keeps_its_fields_and_skips_ranges_outside_it() {
        let head = "GET / HTTP/1.1\r\nHost: a\r\nX-Long-Name-Here: é\r\n\r\n";
        let at = |s: &str| {
            let i = head.find(s).unwrap();
            i..i + s.len()
        };
        let mut h = Headers::new();
        h.push("Via", "1");
        let pushed = h.push_head(
            head.as_bytes(),
            [
                (at("Host"), at("a")),
                (at("X-Long-Name-Here"), at("é")),
                (0..1000, 0..1),
                (0..1, 0..1000),
                (at("Host"), at("é").start..at("é").start + 1),
                (2..1, 0..1),
            ],
        );
        assert!(pushed.is_ok());
        h.push("Trailer", "t");
        assert_eq!(
            h,
            Headers::from([
                ("Via", "1"),
                ("Host", "a"),
                ("X-Long-Name-Here", "é"),
                ("Trailer", "t")
            ])
        );
        assert!(h.text().contains("GET / HTTP/1.1"));

        // An ASCII head: only the bounds are checked.
        let head = "HTTP/1.1 200 OK\r\nServer: s\r\n\r\n";
        let mut h = Headers::new();
        let pushed = h.push_head(
            head.as_bytes(),
            [
                (17..23, 25..26),
                (17..23, 25..99),
                (23..17, 25..26),
                (40..41, 0..1),
            ],
        );
        assert!(pushed.is_ok());
        assert_eq!(h, Headers::from([("Server", "s")]));

        // A head that is not UTF-8 adds nothing.
        let mut h = Headers::new();
        assert!(h
            .push_head(b"HTTP/1.1 200 OK\r\nX: \xff\r\n\r\n", [(17..18, 20..21)])
            .is_err());
        assert!(h.is_empty() && h.text().is_empty());
    }
}
