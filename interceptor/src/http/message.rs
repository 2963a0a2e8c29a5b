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
    /// Header names lower-cased, in wire order, repeated names kept.
    pub headers: Vec<(String, String)>,
    pub body: Body,
    /// Timestamp of the packet that carried the first byte of the request.
    pub ts: SystemTime,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
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
    pub request: Request,
    pub response: Option<Response>,
}

impl Request {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
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

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}
