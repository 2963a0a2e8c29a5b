//! Where the pipeline's records go: the [`Sink`] trait, the records it receives, and the
//! counters of a run.

use std::io;
use std::net::SocketAddr;
use std::time::SystemTime;

use crate::http::{Exchange, Request, Response};
use crate::tls::ClientHello;

/// A flow found to carry TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFlow {
    pub ts: SystemTime,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub interface: Option<String>,
    /// None when the handshake was not captured (flow seen mid-stream).
    pub hello: Option<ClientHello>,
}

/// Counters reported at the end (`{"type":"stats"}` and the summary line).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub packets: u64,
    pub bytes: u64,
    /// Packets captured shorter than they were on the wire (the snap length): the bytes
    /// cut off are gaps in their streams.
    pub truncated: u64,
    pub not_tcp: u64,
    pub undecodable: u64,
    /// TCP reassembly's counters.
    pub tcp: crate::reassembly::Stats,
    /// What the HTTP and TLS parsers reported.
    pub http: Counts,
    /// Kernel counters, live capture only.
    pub kernel: Option<KernelStats>,
}

/// What the parsers reported, counted as it is handed to the sink.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Every complete request, whether MATCH selects it or not.
    pub requests: u64,
    /// Answered exchanges reported: those MATCH selected, up to `-n`.
    pub exchanges: u64,
    /// Every answered exchange, reported or not.
    pub exchanges_seen: u64,
    /// Requests never answered (every one, reported or not).
    pub unanswered: u64,
    pub orphan_responses: u64,
    pub tls_flows: u64,
    pub resyncs: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    pub received: u64,
    pub dropped: u64,
    pub if_dropped: u64,
}

/// Receives what the sniffer reports: the text and JSON writers of [`crate::output`], the
/// shadow comparison. The command line picks one and hands it to the pipeline.
pub trait Sink: Send {
    /// A request, as soon as it is complete (the text format shows it then).
    fn request(&mut self, req: &Request, client: SocketAddr, server: SocketAddr) -> io::Result<()>;
    /// A request with its response, or without one when the flow ended first. `show_request`
    /// is false when the request was already shown by `request` (text) or did not match.
    /// The sink owns the exchange: one that keeps nothing of it hands it back, so its
    /// buffers are reused (`http::pool`); one that keeps it (the shadow comparison, until
    /// its partner comes) returns `None` and copies nothing.
    fn exchange(&mut self, ex: Exchange, show_request: bool) -> io::Result<Option<Exchange>>;
    /// A response whose request was not captured.
    fn orphan(&mut self, resp: &Response, client: SocketAddr, server: SocketAddr)
        -> io::Result<()>;
    fn tls(&mut self, t: &TlsFlow) -> io::Result<()>;
    fn stats(&mut self, s: &Summary) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
    /// A live capture had nothing to read for a while (the shadow comparison reports, then,
    /// exchanges whose partner is overdue).
    fn idle(&mut self, _now: SystemTime) -> io::Result<()> {
        Ok(())
    }
    /// True when `request` shows something: the sniffer then hands over a copy of each
    /// request as soon as it is complete.
    fn shows_requests(&self) -> bool {
        false
    }
    /// Exchanges the sink kept and is done with (the shadow comparison's, once paired and
    /// reported), moved to `out`: their buffers are reused like those of the exchanges
    /// `exchange` hands back.
    fn spent(&mut self, _out: &mut Vec<Exchange>) {}
    /// What also sees each exchange, on the thread that parsed it (see [`Tee`]); taken
    /// once, as the output thread starts.
    fn tee(&mut self) -> Option<Box<dyn Tee>> {
        None
    }
}

/// Sees every exchange the sink will be given, on the capture thread, before the output
/// thread gets it: work that needs only a look at each exchange (`sniff --serve`'s metrics)
/// is done there, where the exchange is still in the cache, rather than on the output
/// thread, the busier of the two.
pub trait Tee: Send {
    fn exchange(&mut self, ex: &Exchange);
    /// The exchanges seen so far are handed to the output thread now (a batch is full, or a
    /// live capture's output is due).
    fn flush(&mut self);
}

/// An output that shows nothing and keeps nothing: every exchange goes straight back to the
/// parser's pool (the node agent's captures without pairing, whose live view renders from
/// the ring).
pub struct Discard;

impl Sink for Discard {
    fn request(&mut self, _: &Request, _: SocketAddr, _: SocketAddr) -> io::Result<()> {
        Ok(())
    }

    fn exchange(&mut self, ex: Exchange, _: bool) -> io::Result<Option<Exchange>> {
        Ok(Some(ex))
    }

    fn orphan(&mut self, _: &Response, _: SocketAddr, _: SocketAddr) -> io::Result<()> {
        Ok(())
    }

    fn tls(&mut self, _: &TlsFlow) -> io::Result<()> {
        Ok(())
    }

    fn stats(&mut self, _: &Summary) -> io::Result<()> {
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
