//! The sniff pipeline: `capture` (a packet source) -> `wire::packet` (decode to a TCP
//! segment) -> `reassembly` (ordered streams per direction) -> `flow` (HTTP parsers, TLS
//! detection, request/response pairing) -> `writer` (a thread that hands records to the
//! sink the caller chose).

pub mod flow;

pub mod health;

pub mod writer;

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use crate::capture::{self, LiveConfig, Next, Source};
use crate::http::stream::Limits;
use crate::reassembly::{self, Table};
use crate::sink::{KernelStats, Sink, Summary};
use crate::wire::packet::{self, Skip};
use flow::{Ctx, HttpFlow};

/// Where packets come from.
#[derive(Clone, Debug)]
pub enum Input {
    /// A pcap or pcapng file; `-` is standard input (a pipe is read as it comes).
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

/// Why a run failed. A damaged file and a vanished interface end it after what was found
/// before has been reported (the summary is written first).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The packet source cannot be opened, or failed part way (see [`capture::Error`]'s
    /// subject for which input it is about).
    #[error(transparent)]
    Source(#[from] capture::Error),
    /// The interface went away (the pod was deleted): tcpdump exits non-zero then, and so
    /// does `sniff`, so a script sees the capture did not end as asked.
    #[error("{0}; the capture ended early")]
    InterfaceGone(String),
    /// Writing the output failed (a reader that went away, `| head`, is not a failure).
    #[error("writing output: {0}")]
    Output(io::Error),
}

type Result<T> = std::result::Result<T, Error>;

/// Runs the sniffer until the file ends, `count` is reached, `stop` is set (a signal), or
/// the interface goes, handing what it finds to `sink`.
pub fn run(opts: &Options, sink: Box<dyn Sink>, stop: &AtomicBool) -> Result<()> {
    run_with(opts, sink, stop, None)
}

/// Packets between two publications of the capture's health.
const HEALTH_EVERY: u64 = 4096;

/// [`run`], also publishing the capture's counters to `health` as it goes (for metrics
/// read by another thread while the capture runs).
pub fn run_with(
    opts: &Options,
    sink: Box<dyn Sink>,
    stop: &AtomicBool,
    health: Option<&health::Health>,
) -> Result<()> {
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
    // A pipe (`-I -` from `tcpdump -U -w -`) comes at the writer's pace: its findings are
    // handed to the output as promptly as a live capture's.
    let prompt = live || source.is_stream();
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
    let mut ctx = Ctx::new(limits, sink, opts.matcher.clone(), prompt);
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
                // A pause is when `-O`'s packets reach a reader (`-O - | wireshark -k -i -`)
                // rather than when libpcap's buffer fills; a failure shows at the end.
                if let Some(sf) = savefile.as_mut() {
                    let _ = sf.flush();
                }
                if live {
                    ctx.out.idle(SystemTime::now());
                } else {
                    // A pipe that paused: what waits is written, but no clock moves (a
                    // replayed capture's times are not now).
                    ctx.out.tick();
                }
                if let Some(h) = health {
                    h.publish(sum.packets, sum.bytes, &table.stats, table.len());
                    if let Some(k) = source.kernel() {
                        h.publish_kernel(KernelStats {
                            received: k.received,
                            dropped: k.dropped,
                            if_dropped: k.if_dropped,
                        });
                    }
                }
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
        if (frame.data.len() as u64) < u64::from(frame.len) {
            // Cut by the snap length: decoding goes on (the bytes that are missing become a
            // gap in the stream), but the run says so, once as it happens and in the counts.
            sum.truncated += 1;
            if sum.truncated == 1 && !opts.quiet {
                eprintln!(
                    "interceptor sniff: packet {} was captured {} of its {} bytes (snap length); \
                     cut packets are counted as truncated and their missing bytes are gaps{}",
                    sum.packets,
                    frame.data.len(),
                    frame.len,
                    if live {
                        " (-s 0 captures whole packets)"
                    } else {
                        ""
                    }
                );
            }
        }
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
                if let Some(h) = health.filter(|_| sum.packets % HEALTH_EVERY == 0) {
                    h.publish(sum.packets, sum.bytes, &table.stats, table.len());
                    // Kernel drops happen when busy, so they are read then too (a
                    // getsockopt, rarely enough not to count).
                    if sum.packets % (16 * HEALTH_EVERY) == 0 {
                        if let Some(k) = source.kernel() {
                            h.publish_kernel(KernelStats {
                                received: k.received,
                                dropped: k.dropped,
                                if_dropped: k.if_dropped,
                            });
                        }
                    }
                }
                if prompt {
                    ctx.out.tick();
                }
            }
            Err(Skip::NotTcp | Skip::Fragment) => sum.not_tcp += 1,
            Err(Skip::Truncated | Skip::Malformed) => sum.undecodable += 1,
        }
    }
    let kernel = source.kernel();
    if let Some(h) = health {
        h.publish(sum.packets, sum.bytes, &table.stats, table.len());
    }
    // Flush what is still open: close-delimited bodies end, unanswered requests are reported.
    if !ctx.finished() {
        table.finish(&mut ctx, last_ts);
    }
    if let Some(sf) = savefile.as_mut() {
        sf.flush().map_err(|e| capture::Error::Savefile {
            path: opts
                .savefile
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            reason: e.to_string(),
        })?;
    }
    sum.tcp = table.stats.clone();
    sum.http = ctx.counts.clone();
    sum.kernel = kernel.map(|k| KernelStats {
        received: k.received,
        dropped: k.dropped,
        if_dropped: k.if_dropped,
    });
    if let (Some(h), Some(k)) = (health, sum.kernel) {
        h.publish_kernel(k);
    }

    if let Err(e) = ctx.out.finish(&sum) {
        // A reader that went away (`| head`) is a normal end, not a failure.
        if e.kind() != io::ErrorKind::BrokenPipe {
            return Err(Error::Output(e));
        }
    }
    if !opts.quiet {
        let _ = writeln!(io::stderr().lock(), "{}", summary_line(&sum));
    }
    // Both end the run with an error, after the summary, as tcpdump does.
    match (damaged, gone) {
        (Some(e), _) => Err(e.into()),
        (None, Some(why)) => Err(Error::InterfaceGone(why)),
        (None, None) => Ok(()),
    }
}

/// The line printed on stderr at the end, in the spirit of tcpdump's.
pub(crate) fn summary_line(s: &Summary) -> String {
    let mut line = format!(
        "{} packets, {} truncated, {} flows, {} exchanges ({} seen), {} unanswered requests, {} orphan responses, {} TLS flows, {} gaps",
        s.packets,
        s.truncated,
        s.tcp.flows,
        s.http.exchanges,
        s.http.exchanges_seen,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::json::Json;
    use crate::wire::packet::build::ethernet_tcp;
    use crate::wire::packet::flags::{ACK, PSH, SYN};
    use crate::wire::pcap;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    /// A `Write` the test reads back after the run.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// One keep-alive connection: GET /alpha and GET /beta, each answered; the packet
    /// with /beta's response is cut 10 bytes short (as a snap length would).
    fn capture() -> Vec<u8> {
        let c: SocketAddr = "10.1.0.1:40000".parse().unwrap();
        let s: SocketAddr = "10.1.0.2:80".parse().unwrap();
        let mut w = pcap::Writer::new(Vec::new(), pcap::LINKTYPE_ETHERNET, 65535).unwrap();
        let (mut cs, mut ss) = (101u32, 501u32);
        let mut t = 1_700_000_000_000_000u64;
        let mut put = |w: &mut pcap::Writer<Vec<u8>>, f: Vec<u8>, cut: usize| {
            t += 1000;
            w.packet_cut(t, &f[..f.len() - cut], f.len()).unwrap();
        };
        put(&mut w, ethernet_tcp(c, s, 100, 0, SYN, b""), 0);
        put(&mut w, ethernet_tcp(s, c, 500, 101, SYN | ACK, b""), 0);
        for (path, cut) in [("alpha", 0), ("beta", 10)] {
            let req = format!("GET /{path} HTTP/1.1\r\nHost: a\r\n\r\n");
            let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n{path:>20}");
            put(
                &mut w,
                ethernet_tcp(c, s, cs, ss, ACK | PSH, req.as_bytes()),
                0,
            );
            cs += req.len() as u32;
            put(
                &mut w,
                ethernet_tcp(s, c, ss, cs, ACK | PSH, resp.as_bytes()),
                cut,
            );
            ss += resp.len() as u32;
        }
        w.into_inner()
    }

    /// Runs the pipeline over `file` with MATCH `matcher`: the JSON lines it wrote.
    fn run_json(file: &[u8], matcher: &str) -> Vec<serde_json::Value> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "interceptor-pipeline-{}-{}.pcap",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, file).unwrap();
        let out = Shared::default();
        let opts = Options {
            input: Input::File(path.clone()),
            filter: String::new(),
            matcher: Some(regex::bytes::Regex::new(matcher).unwrap()),
            savefile: None,
            count: None,
            max_body: 1024,
            max_flows: 16,
            idle_timeout: Duration::from_secs(300),
            quiet: true,
        };
        run(
            &opts,
            Box::new(Json::new(out.clone())),
            &AtomicBool::new(false),
        )
        .unwrap();
        std::fs::remove_file(&path).unwrap();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The summary counts what MATCH selected as `exchanges`, everything as
    /// `exchanges_seen`, and the packet the snap length cut as `truncated` (its missing
    /// bytes are still a gap).
    #[test]
    fn the_summary_counts_selected_exchanges_and_packets_cut_short() {
        let lines = run_json(&capture(), "alpha");
        let exchanges: Vec<_> = lines.iter().filter(|l| l["type"] == "exchange").collect();
        assert_eq!(exchanges.len(), 1);
        assert_eq!(exchanges[0]["request"]["target"], "/alpha");
        let stats = lines.last().unwrap();
        assert_eq!(stats["type"], "stats");
        assert_eq!(
            (
                &stats["exchanges"],
                &stats["exchanges_seen"],
                &stats["truncated"],
                &stats["gaps"],
                &stats["gap_bytes"]
            ),
            (&1.into(), &2.into(), &1.into(), &1.into(), &10.into())
        );
        let all = run_json(&capture(), "");
        assert_eq!(all.last().unwrap()["exchanges"], 2);
        let sum = Summary {
            packets: 6,
            truncated: 1,
            http: crate::sink::Counts {
                exchanges: 1,
                exchanges_seen: 2,
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(
            summary_line(&sum)
                .starts_with("6 packets, 1 truncated, 0 flows, 1 exchanges (2 seen), "),
            "{}",
            summary_line(&sum)
        );
    }
}
