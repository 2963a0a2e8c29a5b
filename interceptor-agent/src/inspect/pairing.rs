//! The one shadow pairing stage of the node's captures.
//!
//! Mirroring is done by the sender's sidecar, so both legs of a pair normally leave the
//! same pod's veth; but when the sender is not captured (another node, not meshed) the
//! primary and the mirror are only seen on their two destinations' veths. One stage fed by
//! every capture pairs both cases. A request seen on two veths (client and server pods on
//! this node) reaches it twice: the matcher drops such copies (same ends, method, target,
//! id and body, overlapping in time), so each pair is reported once.
//!
//! Captures hand over exchanges through a bounded queue and never wait: when the stage is
//! behind, the exchange is left out of pairing (it is counted, and the live view shows it
//! alone) and `dropped` says how many.

use std::io;
use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use interceptor_serve::feed::Feed;
use interceptor_sniff::http::{Exchange, Request, Response};
use interceptor_sniff::shadow::{diff, pair, report, Shadow};
use interceptor_sniff::sink::{Sink, Summary, TlsFlow};
use prometheus_client::metrics::counter::Counter;

/// Exchanges waiting for the stage; beyond, captures drop them from pairing.
const QUEUE: usize = 4096;
/// How often waiting exchanges are aged when no traffic comes.
const TICK: Duration = Duration::from_millis(500);

/// The running stage: its thread and the queue into it.
pub struct Pairing {
    tx: Option<SyncSender<Exchange>>,
    thread: Option<JoinHandle<()>>,
    dropped: Counter,
}

impl Pairing {
    /// Starts the stage; pairs and unmatched exchanges go to `feed`'s ring and metrics.
    pub fn start(
        cfg: pair::Config,
        opts: diff::Options,
        feed: &Feed,
        dropped: Counter,
    ) -> io::Result<Pairing> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        // The report itself is not wanted (the agent has no stdout reader): the observer
        // is what feeds the live view and the metrics, so the report only counts.
        let shadow = Shadow::new(
            cfg,
            opts,
            report::Reporter::new(io::sink(), report::Style::Counts),
        )
        .observe(feed.observer());
        let thread = std::thread::Builder::new()
            .name("inspect-pairing".into())
            .spawn(move || run(shadow, rx))?;
        Ok(Pairing {
            tx: Some(tx),
            thread: Some(thread),
            dropped,
        })
    }

    /// The sink end a capture hands its exchanges to.
    pub fn sink(&self) -> Option<ToPairing> {
        Some(ToPairing {
            tx: self.tx.clone()?,
            dropped: self.dropped.clone(),
        })
    }

    /// Ends the stage once every capture's sender is gone: what still waits is reported
    /// as unmatched.
    pub fn finish(mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(mut shadow: Shadow<io::Sink>, rx: Receiver<Exchange>) {
    loop {
        match rx.recv_timeout(TICK) {
            Ok(ex) => {
                let _ = shadow.push(ex);
            }
            // Live traffic: the wall clock ages lonely exchanges when nothing comes.
            Err(RecvTimeoutError::Timeout) => {
                let _ = shadow.tick(SystemTime::now());
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = shadow.finish();
}

/// A capture's output into the pairing stage: keeps every exchange (they travel to the
/// stage), reports nothing else.
pub struct ToPairing {
    tx: SyncSender<Exchange>,
    dropped: Counter,
}

impl Sink for ToPairing {
    fn request(&mut self, _: &Request, _: SocketAddr, _: SocketAddr) -> io::Result<()> {
        Ok(())
    }

    fn exchange(&mut self, ex: Exchange, _: bool) -> io::Result<Option<Exchange>> {
        match self.tx.try_send(ex) {
            Ok(()) => Ok(None),
            // Handed back: the live view shows it alone, as without pairing.
            Err(TrySendError::Full(ex)) | Err(TrySendError::Disconnected(ex)) => {
                self.dropped.inc();
                Ok(Some(ex))
            }
        }
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
