//! ngrep-style text: a `T time src -> dst` line per HTTP message, then the message
//! reassembled across packets, laid out per `-W`.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use super::{request_line, status_line, tunnel_kind, utc, wire_text};
use crate::sink::{Sink, Summary, TlsFlow};
use crate::http::{Body, Exchange, Headers, Request, Response};

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

pub struct Text<W: Write> {
    w: W,
    layout: Layout,
    clock: Clock,
    last: Option<SystemTime>,
    scratch: Vec<u8>,
}

impl<W: Write> Text<W> {
    pub fn new(w: W, layout: Layout, clock: Clock) -> Text<W> {
        Text {
            w,
            layout,
            clock,
            last: None,
            scratch: Vec::new(),
        }
    }

    fn t_line(
        &mut self,
        ts: SystemTime,
        src: SocketAddr,
        dst: SocketAddr,
        what: &str,
    ) -> io::Result<()> {
        write!(self.w, "T ")?;
        match self.clock {
            Clock::None => {}
            Clock::Absolute => {
                let (y, mo, d, h, mi, s, us) = utc(ts);
                write!(
                    self.w,
                    "{y:04}/{mo:02}/{d:02} {h:02}:{mi:02}:{s:02}.{us:06} "
                )?;
            }
            Clock::Delta => {
                let delta = self
                    .last
                    .and_then(|l| ts.duration_since(l).ok())
                    .unwrap_or(Duration::ZERO);
                write!(self.w, "+{}.{:06} ", delta.as_secs(), delta.subsec_micros())?;
            }
        }
        self.last = Some(ts);
        write!(self.w, "{src} -> {dst} [{what}]")?;
        if self.layout != Layout::Single {
            writeln!(self.w)?;
        } else {
            write!(self.w, " ")?;
        }
        Ok(())
    }

    fn message(&mut self, start: &str, headers: &Headers, body: &Body) -> io::Result<()> {
        match self.layout {
            Layout::Byline => {
                writeln!(self.w, "{start}")?;
                for (n, v) in headers {
                    writeln!(self.w, "{n}: {v}")?;
                }
                writeln!(self.w)?;
                if !body.data.is_empty() {
                    self.scratch.clear();
                    printable(&body.data, true, &mut self.scratch);
                    self.w.write_all(&self.scratch)?;
                    if !self.scratch.ends_with(b"\n") {
                        writeln!(self.w)?;
                    }
                }
                if body.truncated {
                    writeln!(
                        self.w,
                        "[body: {} bytes, {} shown]",
                        body.len,
                        body.data.len()
                    )?;
                }
            }
            Layout::Normal | Layout::Single => {
                let mut wire = Vec::new();
                wire_text(start, headers, &body.data, &mut wire);
                self.scratch.clear();
                printable(&wire, false, &mut self.scratch);
                self.w.write_all(&self.scratch)?;
                writeln!(self.w)?;
            }
        }
        writeln!(self.w)
    }
}

/// Non-printable bytes become `.`, as ngrep shows them; `keep_lines` keeps LF and TAB.
fn printable(b: &[u8], keep_lines: bool, out: &mut Vec<u8>) {
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
        self.t_line(req.ts, client, server, "request")?;
        self.message(&request_line(req), &req.headers, &req.body)
    }

    fn shows_requests(&self) -> bool {
        true
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
        self.t_line(resp.ts, server, client, "response, request not captured")?;
        self.message(&status_line(resp), &resp.headers, &resp.body)
    }

    fn tls(&mut self, t: &TlsFlow) -> io::Result<()> {
        self.t_line(t.ts, t.client, t.server, "TLS")?;
        match &t.hello {
            Some(h) => writeln!(
                self.w,
                "ClientHello sni={} alpn={} versions={}\n",
                h.sni.as_deref().unwrap_or("-"),
                if h.alpn.is_empty() {
                    "-".to_string()
                } else {
                    h.alpn.join(",")
                },
                h.versions.join(",")
            ),
            None => writeln!(self.w, "encrypted; handshake not captured\n"),
        }
    }

    fn stats(&mut self, _: &Summary) -> io::Result<()> {
        // The text format puts the summary on stderr (see sniff::summary_line).
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}
impl<W: Write + Send> Text<W> {
    /// Writes one exchange (the request too when `show_request`).
    fn write_exchange(&mut self, ex: &Exchange, show_request: bool) -> io::Result<()> {
        if show_request {
            self.request(&ex.request, ex.client, ex.server)?;
        }
        match &ex.response {
            Some(resp) => {
                let what = match ex.latency_us() {
                    Some(us) => format!(
                        "response to {} {}, {}.{:03} ms",
                        ex.request.method,
                        ex.request.target,
                        us / 1000,
                        us % 1000
                    ),
                    None => "response".to_string(),
                };
                self.t_line(resp.ts, ex.server, ex.client, &what)?;
                self.message(&status_line(resp), &resp.headers, &resp.body)?;
                if let Some(t) = tunnel_kind(ex) {
                    writeln!(
                        self.w,
                        "[connection switched to {t}: not decoded further]\n"
                    )?;
                }
            }
            None => {
                writeln!(
                    self.w,
                    "[no response to {} {} from {} before the flow ended]\n",
                    ex.request.method, ex.request.target, ex.server
                )?;
            }
        }
        Ok(())
    }
}

