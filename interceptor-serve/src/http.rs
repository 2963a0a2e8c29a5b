//! Just enough HTTP/1.1 for a scraper and a browser: one request per connection, its head
//! read within a size and time limit, the answer written with `Connection: close`.
//!
//! Keep-alive would save Prometheus a TCP handshake every scrape interval; it is not worth
//! a request loop, pipelining and idle timeouts here.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

/// Headers parsed per request; a browser sends about 15.
const MAX_HEADERS: usize = 48;

/// A request head, reduced to what the routes look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    /// The path without its query.
    pub path: String,
    /// `Accept`, for the metrics format.
    pub accept: Option<String>,
    /// `Last-Event-ID`, sent by a reconnecting EventSource.
    pub last_event_id: Option<String>,
}

/// Why a request head could not be read; each maps to the status answered, if any.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("request head over {0} bytes")]
    TooLarge(usize),
    #[error("malformed request head: {0}")]
    Malformed(String),
    #[error("no complete request head within {0:?}")]
    Timeout(Duration),
    #[error("connection closed before a complete request head")]
    Closed,
    #[error("reading the request: {0}")]
    Io(#[from] io::Error),
}

impl HeadError {
    /// The status line to answer with, or None when the peer is gone or silent.
    pub fn status(&self) -> Option<&'static str> {
        match self {
            HeadError::TooLarge(_) => Some("431 Request Header Fields Too Large"),
            HeadError::Malformed(_) => Some("400 Bad Request"),
            HeadError::Timeout(_) => Some("408 Request Timeout"),
            HeadError::Closed | HeadError::Io(_) => None,
        }
    }
}

/// Reads one request head of at most `limit` bytes within `timeout` (a whole-head deadline,
/// not per read: a client trickling a byte a second gets no more time than a silent one).
/// A body, if any, is not read: no route takes one.
pub fn read_head<S: Read + SetTimeout>(
    s: &mut S,
    limit: usize,
    timeout: Duration,
) -> Result<Head, HeadError> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; limit];
    let mut len = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HeadError::Timeout(timeout));
        }
        s.set_read_timeout(Some(left))?;
        let Some(room) = buf.get_mut(len..) else {
            return Err(HeadError::TooLarge(limit));
        };
        if room.is_empty() {
            return Err(HeadError::TooLarge(limit));
        }
        let n = match s.read(room) {
            Ok(0) => return Err(HeadError::Closed),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(HeadError::Timeout(timeout))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(HeadError::Io(e)),
        };
        len += n;
        if let Some(head) = parse(&buf[..len])? {
            return Ok(head);
        }
    }
}

/// Parses a head if `b` holds a complete one.
fn parse(b: &[u8]) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(b) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(_)) => {
            let method = req.method.unwrap_or_default().to_string();
            let target = req.path.unwrap_or_default();
            let path = target
                .split(['?', '#'])
                .next()
                .unwrap_or_default()
                .to_string();
            let find = |name: &str| {
                req.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .map(|v| v.trim().to_string())
            };
            Ok(Some(Head {
                method,
                path,
                accept: find("accept"),
                last_event_id: find("last-event-id"),
            }))
        }
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge(MAX_HEADERS)),
        Err(e) => Err(HeadError::Malformed(e.to_string())),
    }
}

/// Sockets (and test doubles) whose reads can time out.
pub trait SetTimeout {
    fn set_read_timeout(&mut self, t: Option<Duration>) -> io::Result<()>;
}

impl SetTimeout for std::net::TcpStream {
    fn set_read_timeout(&mut self, t: Option<Duration>) -> io::Result<()> {
        std::net::TcpStream::set_read_timeout(self, t)
    }
}

/// Writes a complete answer: status, content type, length, `Connection: close`, and the
/// body unless the request was HEAD.
pub fn respond<W: Write>(
    w: &mut W,
    status: &str,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> io::Result<()> {
    let mut out = Vec::with_capacity(160 + body.len());
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if !head_only {
        out.extend_from_slice(body);
    }
    w.write_all(&out)?;
    w.flush()
}

/// A plain-text answer (errors, health).
pub fn respond_text<W: Write>(
    w: &mut W,
    status: &str,
    text: &str,
    head_only: bool,
) -> io::Result<()> {
    respond(
        w,
        status,
        "text/plain; charset=utf-8",
        text.as_bytes(),
        head_only,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out its input in pieces, as a socket would.
    struct Trickle {
        parts: Vec<Vec<u8>>,
    }

    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.parts.is_empty() {
                return Err(io::Error::from(io::ErrorKind::WouldBlock));
            }
            let p = self.parts.remove(0);
            let n = p.len().min(out.len());
            out[..n].copy_from_slice(&p[..n]);
            if n < p.len() {
                self.parts.insert(0, p[n..].to_vec());
            }
            Ok(n)
        }
    }

    impl SetTimeout for Trickle {
        fn set_read_timeout(&mut self, _: Option<Duration>) -> io::Result<()> {
            Ok(())
        }
    }

    fn head(parts: &[&str], limit: usize) -> Result<Head, HeadError> {
        let mut t = Trickle {
            parts: parts.iter().map(|p| p.as_bytes().to_vec()).collect(),
        };
        read_head(&mut t, limit, Duration::from_secs(1))
    }

    #[test]
    fn a_head_in_pieces_with_query_and_headers() {
        let h = head(
            &[
                "GET /events?x=1 HT",
                "TP/1.1\r\nAccept: text/event-stream\r\nLast-Event-ID:  42 \r\n",
                "\r\n",
            ],
            8192,
        )
        .unwrap();
        assert_eq!(h.method, "GET");
        assert_eq!(h.path, "/events");
        assert_eq!(h.accept.as_deref(), Some("text/event-stream"));
        assert_eq!(h.last_event_id.as_deref(), Some("42"));
    }

    #[test]
    fn bad_heads_get_the_right_status() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(200));
        let e = head(&[&big], 100).unwrap_err();
        assert_eq!(e.status(), Some("431 Request Header Fields Too Large"));
        let e = head(&["GET / HTTP/1.1\r\nBad Header\r\n\r\n"], 8192).unwrap_err();
        assert_eq!(e.status(), Some("400 Bad Request"));
        let e = head(&["GET / HTTP/1.1\r\n"], 8192).unwrap_err();
        assert_eq!(e.status(), Some("408 Request Timeout"));
        let many: String = (0..60).map(|i| format!("H{i}: v\r\n")).collect();
        let e = head(&[&format!("GET / HTTP/1.1\r\n{many}\r\n")], 8192).unwrap_err();
        assert_eq!(e.status(), Some("431 Request Header Fields Too Large"));
        let mut t = Trickle { parts: vec![] };
        t.parts.clear();
        struct Eof;
        impl Read for Eof {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Ok(0)
            }
        }
        impl SetTimeout for Eof {
            fn set_read_timeout(&mut self, _: Option<Duration>) -> io::Result<()> {
                Ok(())
            }
        }
        let e = read_head(&mut Eof, 100, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, HeadError::Closed) && e.status().is_none());
    }

    #[test]
    fn answers_close_and_head_has_no_body() {
        let mut out = Vec::new();
        respond(&mut out, "200 OK", "text/plain", b"hello", false).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(s.contains("Content-Length: 5\r\n") && s.contains("Connection: close\r\n"));
        assert!(s.ends_with("\r\n\r\nhello"));
        let mut out = Vec::new();
        respond(&mut out, "200 OK", "text/plain", b"hello", true).unwrap();
        assert!(String::from_utf8(out).unwrap().ends_with(
            "Content-Length: 5\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
        ));
    }
}
