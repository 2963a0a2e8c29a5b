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
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    text: String,
    /// For each field: where its name ends and where its value ends in `text`.
    ends: Vec<(u32, u32)>,
    /// Which of `KNOWN` are present: the parser asks for these in every message, and most
    /// messages lack most of them.
    known: u8,
}

/// Field names looked up for every message (framing, content coding, upgrades).
const KNOWN: [&str; 4] = [
    "content-length",
    "transfer-encoding",
    "content-encoding",
    "upgrade",
];

/// The bit of `KNOWN` that `name` (any case) is, or 0.
fn known_bit(name: &str) -> u8 {
    // The lengths differ, so one comparison at most.
    let i = match name.len() {
        14 => 0,
        17 => 1,
        16 => 2,
        7 => 3,
        _ => return 0,
    };
    if KNOWN[i].eq_ignore_ascii_case(name) {
        1 << i
    } else {
        0
    }
}

impl Headers {
    pub fn new() -> Headers {
        Headers::default()
    }

    /// Appends a field; the name is stored lower-cased.
    pub fn push(&mut self, name: &str, value: &str) {
        let start = self.text.len();
        self.text.push_str(name);
        // Lower-casing ASCII letters keeps the string UTF-8.
        self.text[start..].make_ascii_lowercase();
        let name_end = self.text.len();
        self.text.push_str(value);
        self.ends.push((name_end as u32, self.text.len() as u32));
        self.known |= known_bit(name);
    }

    /// The fields as (name, value), in wire order.
    pub fn iter(&self) -> HeaderIter<'_> {
        HeaderIter {
            text: &self.text,
            ends: self.ends.iter(),
            start: 0,
        }
    }

    /// The first value of field `name` (any case).
    pub fn get(&self, name: &str) -> Option<&str> {
        if self.surely_lacks(name) {
            return None;
        }
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Every value of field `name` (any case), in wire order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let skip = self.surely_lacks(name);
        self.iter()
            .take(if skip { 0 } else { usize::MAX })
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// True when `name` is one of `KNOWN` and not present.
    fn surely_lacks(&self, name: &str) -> bool {
        let bit = known_bit(name);
        bit != 0 && self.known & bit == 0
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
}
