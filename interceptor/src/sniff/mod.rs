//! `interceptor sniff`: an ngrep-style sniffer that reassembles TCP and decodes HTTP/1.1.
//!
//! Pipeline: `capture` (libpcap source) -> `capture::packet` (decode to a TCP segment)
//! -> `reassembly` (ordered streams per direction) -> `flow` (HTTP parsers, TLS detection,
//! request/response pairing) -> `output` (text or JSON).

pub mod flow;
pub mod output;
pub mod writer;

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Result};

use crate::capture::packet::{self, Skip};
use crate::capture::{LiveConfig, Next, Source};
use crate::http::stream::Limits;
use crate::reassembly::{self, Table};
use flow::{Ctx, HttpFlow};
use output::json::Json;
use output::text::{Clock, Layout, Text};
use output::{KernelStats, Summary};

const EXAMPLES: &str = "\
Examples:
  The seeds' ngrep line, reassembled and paired (run on the node, as root or with CAP_NET_RAW):
    interceptor sniff -tW byline -d vethf6ac432b '' 'tcp port 3000'

  Mirrored traffic: pair each shadow request (Host …-shadow) with its primary by
  x-request-id and show how the two answers differ, with a summary on exit:
    interceptor sniff --shadow -d vethf6ac432b '' 'tcp port 3000'

  Every HTTP exchange on all interfaces as JSON lines, for jq:
    interceptor sniff --json -d any '' 'tcp port 80' | jq 'select(.response.status >= 500)'

  Only messages mentioning a request id, from a capture file (pcap or pcapng):
    interceptor sniff -I capture.pcapng 'x-request-id: 7f3a'

  Check that STRICT mTLS encrypts: plaintext shows up as HTTP, mTLS as TLS with its ALPN:
    interceptor sniff -d any -n 20 '' 'tcp port 9080'

  Keep the matching packets for Wireshark while watching:
    interceptor sniff -d eth0 -O out.pcap 'POST' 'port 8080'
";

/// Options of `interceptor sniff`, following ngrep's letters.
#[derive(clap::Args, Debug, Clone)]
#[command(
    about = "Sniff HTTP/1.1 on an interface or a capture file: TCP reassembled, requests paired with responses",
    after_help = EXAMPLES,
    disable_help_flag = false
)]
pub struct Args {
    /// Regular expression over each message (start line, headers, body); '' matches all.
    #[arg(value_name = "MATCH")]
    pub pattern: Option<String>,

    /// Packet filter in tcpdump/libpcap syntax, e.g. `tcp port 3000`, compiled to BPF.
    #[arg(
        value_name = "FILTER",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub filter: Vec<String>,

    /// Interface to capture on live: a veth, any interface, or `any`.
    #[arg(
        short = 'd',
        visible_short_alias = 'i',
        long = "device",
        value_name = "DEV",
        conflicts_with = "input"
    )]
    pub device: Option<String>,

    /// Read packets from a pcap or pcapng file instead of an interface.
    #[arg(
        short = 'I',
        visible_short_alias = 'r',
        long = "input",
        value_name = "FILE"
    )]
    pub input: Option<PathBuf>,

    /// Write the packets that pass FILTER (and MATCH, per packet) to a pcap file.
    #[arg(
        short = 'O',
        visible_short_alias = 'w',
        long = "output",
        value_name = "FILE"
    )]
    pub output: Option<PathBuf>,

    /// Text layout: byline (line by line), normal (one line per message), single.
    #[arg(
        short = 'W',
        long = "layout",
        value_name = "MODE",
        default_value = "byline"
    )]
    pub layout: Layout,

    /// Print absolute timestamps (UTC) on each message line.
    #[arg(short = 't', conflicts_with = "delta")]
    pub absolute: bool,

    /// Print the time since the previous message instead.
    #[arg(short = 'T')]
    pub delta: bool,

    /// Quiet: no summary line or notices on stderr.
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,

    /// Stop after COUNT reported exchanges (or TLS flows).
    #[arg(short = 'n', long = "count", value_name = "COUNT")]
    pub count: Option<u64>,

    /// One JSON object per line on stdout instead of text.
    #[arg(long)]
    pub json: bool,

    /// Body bytes kept per message after decoding; longer bodies are cut (and counted).
    #[arg(long = "max-body", value_name = "BYTES", default_value_t = 16 * 1024)]
    pub max_body: usize,

    /// Case-insensitive MATCH.
    #[arg(long = "ignore-case")]
    pub ignore_case: bool,

    /// Do not put the interface into promiscuous mode.
    #[arg(short = 'p')]
    pub no_promisc: bool,

    /// Bytes captured per packet (live).
    #[arg(
        short = 's',
        long = "snaplen",
        value_name = "BYTES",
        default_value_t = 262_144
    )]
    pub snaplen: i32,

    /// Kernel ring buffer size in MiB (live).
    #[arg(short = 'B', long = "buffer", value_name = "MIB", default_value_t = 64)]
    pub buffer_mib: i32,

    /// Most flows tracked at once; the least recently seen are closed beyond it.
    #[arg(long = "max-flows", value_name = "N", default_value_t = 1 << 18)]
    pub max_flows: usize,

    /// Seconds after which a silent flow is closed.
    #[arg(long = "idle-timeout", value_name = "SECS", default_value_t = 300)]
    pub idle_timeout: u64,

    // Last: its options print under a heading of their own.
    #[command(flatten)]
    pub shadow: crate::shadow::ShadowArgs,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn install_signal_handlers() -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    // No SA_RESTART: a blocked read returns so the loop sees the flag at once.
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(sig, &action) }
            .map_err(|e| anyhow!("installing the {sig} handler: {e}"))?;
    }
    Ok(())
}

impl Args {
    fn validate(&self) -> Result<()> {
        if self.max_body > 1 << 30 {
            bail!("--max-body {}: at most 1 GiB", self.max_body);
        }
        if self.snaplen < 64 {
            bail!(
                "-s {}: the snap length must be at least 64 bytes",
                self.snaplen
            );
        }
        if !(1..=4096).contains(&self.buffer_mib) {
            bail!("-B {}: the ring buffer is 1 to 4096 MiB", self.buffer_mib);
        }
        if self.max_flows == 0 {
            bail!("--max-flows 0: at least one flow must be tracked");
        }
        if self.count == Some(0) {
            bail!("-n 0: COUNT must be at least 1");
        }
        self.shadow.settings().map_err(|e| anyhow!(e))?;
        if self.json && (self.layout != Layout::Byline || self.absolute || self.delta) {
            bail!("--json: -W, -t and -T shape the text output and cannot be combined with --json");
        }
        Ok(())
    }

    fn matcher(&self) -> Result<Option<regex::bytes::Regex>> {
        match self.pattern.as_deref() {
            None | Some("") => Ok(None),
            Some(p) => regex::bytes::RegexBuilder::new(p)
                .case_insensitive(self.ignore_case)
                .size_limit(16 << 20)
                .build()
                .map(Some)
                .map_err(|e| anyhow!("MATCH {p:?}: {e}")),
        }
    }
}

/// Runs the sniffer until the file ends, COUNT is reached, a signal, or the interface goes.
pub fn run(args: &Args) -> Result<()> {
    args.validate()?;
    let matcher = args.matcher()?;
    let filter = args.filter.join(" ");
    let mut source = match (&args.input, &args.device) {
        (Some(path), _) => Source::open_file(path, &filter)?,
        (None, dev) => {
            let device = dev.clone().unwrap_or_else(|| "any".to_string());
            let cfg = LiveConfig {
                device,
                snaplen: args.snaplen,
                promisc: !args.no_promisc,
                buffer: args.buffer_mib << 20,
                poll: Duration::from_millis(100),
            };
            Source::open_live(&cfg, &filter)?
        }
    };
    let mut savefile = match &args.output {
        Some(p) => Some(source.savefile(p)?),
        None => None,
    };
    let live = source.is_live();
    if live {
        install_signal_handlers()?;
        if !args.quiet {
            eprintln!(
                "interceptor sniff: listening on {} ({:?}){}",
                args.device.as_deref().unwrap_or("any"),
                source.link(),
                if filter.is_empty() {
                    String::new()
                } else {
                    format!(", filter: {filter}")
                }
            );
        }
    }

    let out: Box<dyn output::Output> = if args.shadow.shadow {
        use crate::shadow::{report, Shadow, SniffOutput};
        let (cfg, opts) = args.shadow.settings().map_err(|e| anyhow!(e))?;
        let style = if args.json {
            report::Style::Json
        } else {
            report::Style::text_for_stdout()
        };
        let writer = BufWriter::with_capacity(256 * 1024, io::stdout());
        Box::new(SniffOutput::new(
            Shadow::new(cfg, opts, report::Reporter::new(writer, style)),
            live,
        ))
    } else if args.json {
        // The JSON writer buffers by itself and writes stdout in large blocks.
        Box::new(Json::new(io::stdout()))
    } else {
        let writer = BufWriter::with_capacity(256 * 1024, io::stdout());
        let clock = if args.absolute {
            Clock::Absolute
        } else if args.delta {
            Clock::Delta
        } else {
            Clock::None
        };
        Box::new(Text::new(writer, args.layout, clock))
    };
    let limits = Limits {
        max_body: args.max_body,
        ..Limits::default()
    };
    let packet_matcher = matcher.clone();
    let mut ctx = Ctx::new(limits, out, matcher, live);
    ctx.max_records = args.count;
    match args.device.as_deref() {
        Some("any") | None => ctx.resolve_ifindex = live,
        Some(dev) => ctx.interface = Some(dev.to_string()),
    }
    let mut table: Table<HttpFlow> = Table::new(reassembly::Config {
        max_flows: args.max_flows,
        idle_timeout: Duration::from_secs(args.idle_timeout),
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
        let stopping = STOP.load(Ordering::Relaxed);
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
    let st = &table.stats;
    sum.tcp_segments = st.segments;
    sum.flows = st.flows;
    sum.max_concurrent_flows = st.max_concurrent;
    sum.gaps = st.gaps;
    sum.gap_bytes = st.gap_bytes;
    sum.retransmitted = st.retransmitted;
    sum.out_of_order = st.out_of_order;
    sum.flows_evicted = st.evicted;
    let c = &ctx.counts;
    sum.requests = c.requests;
    sum.exchanges = c.exchanges;
    sum.unanswered = c.unanswered;
    sum.orphan_responses = c.orphan_responses;
    sum.tls_flows = c.tls_flows;
    sum.resyncs = c.resyncs;
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
    if !args.quiet {
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
        s.packets, s.flows, s.exchanges, s.unanswered, s.orphan_responses, s.tls_flows, s.gaps
    );
    if let Some(k) = s.kernel {
        line.push_str(&format!(
            "; {} packets received by filter, {} packets dropped by kernel, {} dropped by interface",
            k.received, k.dropped, k.if_dropped
        ));
    }
    line
}
