//! `sniff`: ngrep's command line (letters, MATCH and FILTER) over the sniffer library, and
//! the wiring: the flags pick the sink (text, JSON or the shadow comparison) that the
//! pipeline hands its records to.

use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use clap::ValueEnum;

use interceptor_sniff::output::json::Json;
use interceptor_sniff::output::text::{Clock, Layout, Text};
use interceptor_sniff::pipeline::{self, Input, Options};
use interceptor_sniff::shadow::{self, report, Shadow, ShadowSink};
use interceptor_sniff::sink::Sink;

use crate::inspect_args::{Decor, InspectArgs, Serving};

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

  tcpdump's pipes: a capture read from stdin, the matching packets written to stdout (the
  exchanges then show on stderr):
    tcpdump -U -w - -i eth0 port 80 | interceptor sniff -I - -O - 'POST' | tshark -r -
";

/// tcpdump's default snap length, which `-s 0` stands for.
pub const DEFAULT_SNAPLEN: i32 = 262_144;

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

    /// Read packets from a pcap or pcapng file instead of an interface; `-` reads standard
    /// input, as tcpdump's `-r -` (a pipe or FIFO is read as it comes: `tcpdump -U -w - |`).
    #[arg(
        short = 'I',
        visible_short_alias = 'r',
        long = "input",
        value_name = "FILE"
    )]
    pub input: Option<PathBuf>,

    /// Write the packets that pass FILTER (and MATCH, per packet) to a pcap file. `-` writes
    /// the pcap to stdout and nothing else there: the text or JSON output then goes to stderr
    /// with the notices and the summary, so `-O - | tshark -r -` reads a clean pcap.
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
    pub layout: LayoutArg,

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

    /// Bytes captured per packet (live); 0 is the default, 262144, as in tcpdump. Packets
    /// cut shorter are counted (`truncated` in the summary) and their missing bytes are gaps.
    #[arg(
        short = 's',
        long = "snaplen",
        value_name = "BYTES",
        default_value_t = DEFAULT_SNAPLEN
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
    pub shadow: ShadowArgs,

    #[command(flatten)]
    pub inspect: InspectArgs,
}

/// `-W`: how a message is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LayoutArg {
    /// Start line and headers one per line, then the body (ngrep's byline).
    Byline,
    /// The whole message on one line after the `T` line, CR and LF shown as `.`.
    Normal,
    /// The `T` line and the message on a single line.
    Single,
}

impl From<LayoutArg> for Layout {
    fn from(l: LayoutArg) -> Layout {
        match l {
            LayoutArg::Byline => Layout::Byline,
            LayoutArg::Normal => Layout::Normal,
            LayoutArg::Single => Layout::Single,
        }
    }
}

/// The `sniff` flags of the shadow comparison.
#[derive(clap::Args, Clone, Debug, Default)]
#[command(next_help_heading = "Shadow comparison")]
pub struct ShadowArgs {
    /// Pair each mirrored request (Host `…-shadow`) with its primary by x-request-id and
    /// compare the two responses instead of printing exchanges.
    #[arg(long)]
    pub shadow: bool,
    /// With --shadow: also ignore header NAME (repeatable; a trailing * matches any suffix).
    #[arg(long = "ignore-header", value_name = "NAME", requires = "shadow")]
    pub ignore_header: Vec<String>,
    /// With --shadow: ignore the body at PATH and beneath, e.g. `[*].imageUrl` (repeatable).
    #[arg(long = "ignore-path", value_name = "PATH", requires = "shadow")]
    pub ignore_path: Vec<String>,
    /// With --shadow: compare everything; nothing is ignored by default and volatile values
    /// (timestamps, UUIDs) count as differences.
    #[arg(long, requires = "shadow")]
    pub strict: bool,
    /// With --shadow: most exchanges waiting for their partner.
    #[arg(long = "shadow-max-pending", value_name = "N", default_value_t = shadow::Settings::default().max_pending, requires = "shadow")]
    pub max_pending: usize,
    /// With --shadow: seconds an exchange waits for its partner.
    #[arg(long = "shadow-max-age", value_name = "SECONDS", default_value_t = shadow::Settings::default().max_age, requires = "shadow")]
    pub max_age: f64,
}

impl ShadowArgs {
    /// The comparison's settings, checked; an error names the flag.
    fn settings(&self) -> Result<(shadow::pair::Config, shadow::diff::Options)> {
        let settings = shadow::Settings {
            ignore_header: self.ignore_header.clone(),
            ignore_path: self.ignore_path.clone(),
            strict: self.strict,
            max_pending: self.max_pending,
            max_age: self.max_age,
        };
        settings.check().map_err(|e| {
            let flag = match e {
                shadow::SettingsError::IgnoreHeader(_) => "--ignore-header",
                shadow::SettingsError::IgnorePath(_) => "--ignore-path",
                shadow::SettingsError::MaxPending(_) => "--shadow-max-pending",
                shadow::SettingsError::MaxAge(_) => "--shadow-max-age",
            };
            anyhow!("{flag} {e}")
        })
    }
}

impl Args {
    fn validate(&self) -> Result<()> {
        if self.max_body > 1 << 30 {
            bail!("--max-body {}: at most 1 GiB", self.max_body);
        }
        if self.snaplen != 0 && self.snaplen < 64 {
            bail!(
                "-s {}: the snap length is 0 (the default, {DEFAULT_SNAPLEN}) or at least 64 bytes",
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
        self.shadow.settings()?;
        if self.json && (self.layout != LayoutArg::Byline || self.absolute || self.delta) {
            bail!("--json: -W, -t and -T shape the text output and cannot be combined with --json");
        }
        Ok(())
    }

    /// `-s`, with tcpdump's 0 for the default.
    fn snaplen(&self) -> i32 {
        match self.snaplen {
            0 => DEFAULT_SNAPLEN,
            n => n,
        }
    }

    /// `-O -`: the pcap has stdout to itself.
    fn pcap_to_stdout(&self) -> bool {
        self.output.as_deref() == Some(Path::new("-"))
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

/// `interceptor sniff`: checks the flags, picks the sink, runs the pipeline.
pub fn run(args: &Args, stop: &AtomicBool) -> Result<()> {
    args.validate()?;
    let pods = args
        .inspect
        .pods(args.input.is_some(), &args.filter.join(" "))?;
    let input = match (&args.input, &args.device) {
        (Some(path), _) => Input::File(path.clone()),
        (None, dev) => Input::Live {
            device: (pods.as_ref().and_then(|p| p.device.clone()))
                .or_else(|| dev.clone())
                .unwrap_or_else(|| "any".to_string()),
            snaplen: args.snaplen(),
            promisc: !args.no_promisc,
            buffer: args.buffer_mib << 20,
        },
    };
    let opts = Options {
        input,
        filter: pods
            .as_ref()
            .map_or_else(|| args.filter.join(" "), |p| p.filter.clone()),
        matcher: args.matcher()?,
        savefile: args.output.clone(),
        count: args.count,
        max_body: args.max_body,
        max_flows: args.max_flows,
        idle_timeout: Duration::from_secs(args.idle_timeout),
        quiet: args.quiet,
    };
    let tags = pods.map(|p| p.tags);
    let serving = match &args.inspect.serve {
        Some(addr) => Some(Serving::start(addr, tags.clone())?),
        None => None,
    };
    let decor = Decor {
        pods: tags.as_ref(),
        feed: serving.as_ref().map(Serving::feed),
    };
    let sink = sink(args, opts.is_live(), decor)?;
    match serving {
        Some(s) => s.run(&opts, sink, stop, args.quiet),
        None => pipeline::run(&opts, sink, stop).map_err(flagged),
    }
}

/// A pipeline error with the flag or argument that gave the value it names.
pub(crate) fn flagged(e: pipeline::Error) -> anyhow::Error {
    use interceptor_sniff::capture::Subject;
    let flag = match &e {
        pipeline::Error::Source(c) => match c.subject() {
            Subject::File => "-I ",
            Subject::Filter => "FILTER ",
            Subject::Device => "-d ",
            Subject::Savefile => "-O ",
            Subject::Other => "",
        },
        pipeline::Error::InterfaceGone(_) | pipeline::Error::Output(_) => "",
    };
    anyhow!("{flag}{e}")
}

/// Where the findings go: stdout, or stderr when `-O -` gives stdout to the pcap.
fn findings(args: &Args) -> Box<dyn Write + Send> {
    if args.pcap_to_stdout() {
        Box::new(io::stderr())
    } else {
        Box::new(io::stdout())
    }
}

/// The sink the flags ask for: the shadow comparison, JSON lines, or ngrep's text.
fn sink(args: &Args, live: bool, decor: Decor) -> Result<Box<dyn Sink>> {
    if args.shadow.shadow {
        let (cfg, opts) = args.shadow.settings()?;
        let style = if args.json {
            report::Style::Json
        } else if args.pcap_to_stdout() {
            report::Style::Text {
                color: io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
                width: 120,
            }
        } else {
            report::Style::text_for_stdout()
        };
        let writer = BufWriter::with_capacity(256 * 1024, findings(args));
        let shadow = decor.shadow(Shadow::new(cfg, opts, report::Reporter::new(writer, style)));
        return Ok(decor.wrap(Box::new(ShadowSink::new(shadow, live))));
    }
    if args.json {
        // The JSON writer buffers by itself and writes stdout in large blocks.
        let json = Json::new(findings(args));
        let json = match decor.pods {
            Some(p) => json.with_pods(p.clone()),
            None => json,
        };
        let json = decor.json(json);
        return Ok(decor.wrap(Box::new(json)));
    }
    let writer = BufWriter::with_capacity(256 * 1024, findings(args));
    let clock = if args.absolute {
        Clock::Absolute
    } else if args.delta {
        Clock::Delta
    } else {
        Clock::None
    };
    let text = Text::new(writer, args.layout.into(), clock);
    let text = match decor.pods {
        Some(p) => text.with_pods(p.clone()),
        None => text,
    };
    Ok(decor.wrap(Box::new(text)))
}
