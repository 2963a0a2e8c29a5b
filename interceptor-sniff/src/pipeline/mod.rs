//! The sniff pipeline: `capture` (a packet source) -> `wire::packet` (decode to a TCP
//! segment) -> `reassembly` (ordered streams per direction) -> `flow` (HTTP parsers, TLS
//! detection, request/response pairing) -> `writer` (a thread that hands records to the
//! sink the caller chose).

pub mod flow;

pub mod writer;

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Result};

use crate::wire::packet::{self, Skip};
use crate::capture::{LiveConfig, Next, Source};
use crate::http::stream::Limits;
use crate::reassembly::{self, Table};
use crate::sink::{KernelStats, Sink, Summary};
use flow::{Ctx, HttpFlow};

/// Where packets come from.
#[derive(Clone, Debug)]
pub enum Input {
    /// A pcap or pcapng file.
    File(PathBuf),
    /// A live interface (`any` for all).
    Live {
        device: String,
        snaplen: i32,
        promisc: bool,
        /// Kernel ring size in bytes.
        buffer: i32,
    },
}

/// What one run of the sniffer does, checked by the caller.
#[derive(Clone, Debug)]
pub struct Options {
    pub input: Input,
    /// tcpdump filter syntax; empty for none.
    pub filter: String,
    /// Messages to report (over the message as it went over the wire); `None` for all.
    pub matcher: Option<regex::bytes::Regex>,
    /// Write the packets that pass the filter (and the matcher, per packet) here.
    pub savefile: Option<PathBuf>,
    /// Stop after this many reported exchanges (or TLS flows).
    pub count: Option<u64>,
    pub max_body: usize,
    pub max_flows: usize,
    pub idle_timeout: Duration,
    /// No notices or summary line on stderr.
    pub quiet: bool,
}

impl Options {
    pub fn is_live(&self) -> bool {
        matches!(self.input, Input::Live { .. })
    }
}

/// Runs the sniffer until the file ends, `count` is reached, `stop` is set (a signal), or
/// the interface goes, handing what it finds to `sink`.
pub fn run(opts: &Options, sink: Box<dyn Sink>, stop: &AtomicBool) -> Result<()> {
    let filter = opts.filter.as_str();
    let mut source = match &opts.input {
        Input::File(path) => Source::open_file(path, filter)?,
        Input::Live {
            device,
            snaplen,
            promisc,
            buffer,
        } => {
            let cfg = LiveConfig {
                device: device.clone(),
                snaplen: *snaplen,
                promisc: *promisc,
                buffer: *buffer,
                poll: Duration::from_millis(100),
            };
            Source::open_live(&cfg, filter)?
        }
    };
    let mut savefile = match &opts.savefile {
        Some(p) => Some(source.savefile(p)?),
        None => None,
    };
    let live = source.is_live();
    if let (Input::Live { device, .. }, false) = (&opts.input, opts.quiet) {
        eprintln!(
            "interceptor sniff: listening on {} ({:?}){}",
            device,
            source.link(),
            if filter.is_empty() {
                String::new()
            } else {
                format!(", filter: {filter}")
            }
        );
    }

    let limits = Limits {
        max_body: opts.max_body,
        ..Limits::default()
    };
    let packet_matcher = opts.matcher.clone();
    let mut ctx = Ctx::new(limits, sink, opts.matcher.clone(), live);
    ctx.max_records = opts.count;
    match &opts.input {
        Input::Live { device, .. } if device == "any" => ctx.resolve_ifindex = true,
        Input::Live { device, .. } => ctx.interface = Some(device.clone()),
        Input::File(_) => {}
    }
    let mut table: Table<HttpFlow> = Table::new(reassembly::Config {
        max_flows: opts.max_flows,
        idle_timeout: opts.idle_timeout,
        ..reassembly::Config::default()
    });

    let mut sum = Summary::default();
    let mut last_ts = SystemTime::UNIX_EPOCH;
    let mut gone = None;
    // A capture file damaged part way: what came before it is still decoded and written,
    // then the run fails with the reason.
    let mut damaged = None;
    loop {
        if ctx.finished() {
            break;
        }
        let stopping = stop.load(Ordering::Relaxed);
        let next = match source.read() {
            Ok(next) => next,
            Err(e) => {
                damaged = Some(e);
                break;
            }
        };
        let frame = match next {
            Next::Frame(f) => f,
            // After a signal, read on until the ring is empty: packets already captured
            // (up to one poll interval of them) are still reported.
            Next::Idle if stopping => break,
            Next::Idle => {
                ctx.out.idle(SystemTime::now());
                continue;
            }
            Next::End => break,
            Next::Gone(why) => {
                gone = Some(why);
                break;
            }
        };
        sum.packets += 1;
        sum.bytes += u64::from(frame.len);
        last_ts = frame.ts;
        let Some(link) = frame.link else {
            sum.undecodable += 1;
            continue;
        };
        match packet::decode(link, frame.data) {
            Ok(seg) => {
                if let Some(sf) = savefile.as_mut() {
                    if packet_matcher
                        .as_ref()
                        .is_none_or(|m| m.is_match(seg.payload))
                    {
                        frame.write_to(sf);
                    }
                }
                table.segment(&mut ctx, &seg, frame.ts);
                if live {
                    ctx.out.tick();
                }
            }
            Err(Skip::NotTcp | Skip::Fragment) => sum.not_tcp += 1,
            Err(Skip::Truncated | Skip::Malformed) => sum.undecodable += 1,
        }
    }
    let kernel = source.kernel();
    // Flush what is still open: close-delimited bodies end, unanswered requests are reported.
    if !ctx.finished() {
        table.finish(&mut ctx, last_ts);
    }
    if let Some(sf) = savefile.as_mut() {
        sf.flush().map_err(|e| anyhow!("-O: {e}"))?;
    }
    sum.tcp = table.stats.clone();
    sum.http = ctx.counts.clone();
    sum.kernel = kernel.map(|k| KernelStats {
        received: k.received,
        dropped: k.dropped,
        if_dropped: k.if_dropped,
    });

    if let Err(e) = ctx.out.finish(&sum) {
        // A reader that went away (`| head`) is a normal end, not a failure.
        if e.kind() != io::ErrorKind::BrokenPipe {
            return Err(anyhow!("writing output: {e}"));
        }
    }
    if !opts.quiet {
        let mut err = io::stderr().lock();
        if let Some(why) = &gone {
            let _ = writeln!(err, "interceptor sniff: {why}; stopping");
        }
        let _ = writeln!(err, "{}", summary_line(&sum));
    }
    match damaged {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The line printed on stderr at the end, in the spirit of tcpdump's.
pub fn summary_line(s: &Summary) -> String {
    let mut line = format!(
        "{} packets, {} flows, {} exchanges, {} unanswered requests, {} orphan responses, {} TLS flows, {} gaps",
        s.packets,
        s.tcp.flows,
        s.http.exchanges,
        s.http.unanswered,
        s.http.orphan_responses,
        s.http.tls_flows,
        s.tcp.gaps
    );
    if let Some(k) = s.kernel {
        line.push_str(&format!(
            "; {} packets received by filter, {} packets dropped by kernel, {} dropped by interface",
            k.received, k.dropped, k.if_dropped
        ));
    }
    line
}
