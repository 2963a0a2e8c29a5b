//! The decoded form of an HTTP/1.1 exchange. The sniffer (`sniff`) produces these and both
//! the output writers and the shadow comparison (`shadow`) consume them.

use std::net::SocketAddr;
use std::time::SystemTime;

/// A message body after transfer decoding (chunked) and content decoding (gzip, deflate).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Body {
    /// Bytes kept for display and comparison: at most the configured `--max-body`.
    pub data: Vec<u8>,
    /// Length of the whole decoded body, including what was not kept.
    pub len: u64,
    /// True when `data` holds less than `len` bytes.
    pub truncated: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub target: String,
    /// "HTTP/1.1" or "HTTP/1.0".
    pub version: String,
    pub headers: Headers,
    pub body: Body,
    /// Timestamp of the packet that carried the first byte of the request.
    pub ts: SystemTime,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub version: String,
    pub headers: Headers,
    pub body: Body,
    /// Timestamp of the packet that carried the first byte of the response.
    pub ts: SystemTime,
}

/// One request and, when it came, its response, on one TCP connection.
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// The header fields of one message in wire order, repeated names kept, names lower-cased.
///
/// All fields live in one string (name, then value, field after field) with their ends
/// beside it: a head of a dozen fields costs two buffers rather than two dozen strings,
/// and a recycled `Headers` costs none.
#[derive(Clone, Default)]
pub struct Headers {
    text: String,
    /// For each field: where its name ends and where its value ends in `text`.
    ends: Vec<(u32, u32)>,
    /// Which of `KNOWN` are present: the parser asks for these in every message, and most
    /// messages lack most of them.
    known: u8,
    /// Which of `KNOWN` are present more than once.
    repeated: u8,
    /// For each of `KNOWN` that is present, the index of its first field.
    first: [u32; KNOWN.len()],
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
fn known_index(name: &str) -> Option<usize> {
    // The lengths differ, so one comparison at most.
    let i = match name.len() {
        14 => 0,
        17 => 1,
        16 => 2,
        7 => 3,
        _ => return None,
    };
    KNOWN[i].eq_ignore_ascii_case(name).then_some(i)
}

/// Lower-cases the ASCII letters of `s` eight bytes at a time: every name of every message
/// goes through here, and a byte-wise loop over short names was a visible share of parsing.
fn lower_ascii(s: &mut str) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    // SAFETY: only bytes in b'A'..=b'Z' change, each to its lower-case letter. ASCII bytes
    // never occur inside a multi-byte UTF-8 sequence, so `s` stays UTF-8.
    let b = unsafe { s.as_bytes_mut() };
    let mut words = b.chunks_exact_mut(8);
    for w in &mut words {
        let x = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        // Per byte, without carries between bytes: high bit set when the low seven bits
        // are >= 'A', and when they are > 'Z'; bytes >= 0x80 are left alone.
        let low = x & (0x7f * ONES);
        let ge_a = low + (0x80 - u64::from(b'A')) * ONES;
        let gt_z = low + (0x80 - u64::from(b'Z') - 1) * ONES;
        let upper = ge_a & !gt_z & !x & (0x80 * ONES);
        w.copy_from_slice(&(x | (upper >> 2)).to_le_bytes());
    }
    words.into_remainder().make_ascii_lowercase();
}

impl Headers {
    pub fn new() -> Headers {
        Headers::default()
    }

    /// Appends a field; the name is stored lower-cased.
    pub fn push(&mut self, name: &str, value: &str) {
        let start = self.text.len();
        self.text.push_str(name);
        lower_ascii(&mut self.text[start..]);
        let name_end = self.text.len();
        self.text.push_str(value);
        if let Some(i) = known_index(name) {
            let bit = 1 << i;
            if self.known & bit == 0 {
                self.first[i] = self.ends.len() as u32;
            } else {
                self.repeated |= bit;
            }
            self.known |= bit;
        }
        self.ends.push((name_end as u32, self.text.len() as u32));
    }

    /// Makes room for `fields` more fields of `bytes` bytes in all.
    pub fn reserve(&mut self, fields: usize, bytes: usize) {
        self.text.reserve(bytes);
        self.ends.reserve(fields);
    }

    /// The fields as (name, value), in wire order.
    pub fn iter(&self) -> HeaderIter<'_> {
        self.iter_from(0)
    }

    /// The fields from the `i`th on.
    fn iter_from(&self, i: usize) -> HeaderIter<'_> {
        let start = match i.checked_sub(1) {
            Some(prev) => self
                .ends
                .get(prev)
                .map_or(self.text.len(), |e| e.1 as usize),
            None => 0,
        };
        HeaderIter {
            text: &self.text,
            ends: self.ends.get(i..).unwrap_or_default().iter(),
            start,
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
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
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
        // Names are stored lower-cased, like `KNOWN`.
        self.iter_from(from)
            .filter(move |(n, _)| *n == KNOWN[i])
            .map(|(_, v)| v)
            .take(most)
    }

    /// Where to look for field `name`, and how many fields of that name there can be.
    fn span(&self, name: &str) -> (usize, usize) {
        match known_index(name) {
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
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Empties the list, keeping its buffers for reuse.
    pub fn clear(&mut self) {
        self.text.clear();
        self.ends.clear();
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
        self.text.capacity() + self.ends.capacity() * 8
    }

    /// All names and values back to back (for a quick scan of every byte, as JSON
    /// escaping does).
    pub fn text(&self) -> &str {
        &self.text
    }
}

pub struct HeaderIter<'a> {
    text: &'a str,
    ends: std::slice::Iter<'a, (u32, u32)>,
    start: usize,
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let &(name_end, end) = self.ends.next()?;
        let (name_end, end) = (name_end as usize, end as usize);
        let field = (
            self.text.get(self.start..name_end).unwrap_or_default(),
            self.text.get(name_end..end).unwrap_or_default(),
        );
        self.start = end;
        Some(field)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.ends.size_hint()
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

// The fields alone decide equality: `known`, `repeated` and `first` follow from them (and
// `first` keeps stale entries for absent fields).
impl PartialEq for Headers {
    fn eq(&self, other: &Headers) -> bool {
        self.text == other.text && self.ends == other.ends
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
    fn headers_keep_order_repeats_and_lower_case_names() {
        let mut h = Headers::from([("Host", "a"), ("Set-Cookie", "x=1"), ("set-cookie", "y=2")]);
        h.push("X-É", "é");
        assert_eq!(
            h.iter().collect::<Vec<_>>(),
            [
                ("host", "a"),
                ("set-cookie", "x=1"),
                ("set-cookie", "y=2"),
                ("x-É", "é")
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
        assert_eq!(h.iter().nth(5), Some(("trailer", "v")));
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
        assert_eq!(h, Headers::from([("upgrade", "websocket")]));
    }

    #[test]
    fn names_lower_case_every_ascii_letter_and_nothing_else() {
        let all: String = (0u8..128).map(char::from).chain("ÀÉé€".chars()).collect();
        for start in 0..9 {
            let mut s = all[start..].to_string();
            lower_ascii(&mut s);
            assert_eq!(s, all[start..].to_ascii_lowercase());
        }
    }
}
