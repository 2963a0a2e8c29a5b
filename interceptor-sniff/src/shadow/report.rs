//! Writes what the shadow comparison found: per pair a one-line verdict and the differences
//! side by side (primary | shadow), coloured on a terminal, or one JSON object per line; per
//! unmatched exchange one line; at the end a summary with counts, the paths that differ
//! most and the latencies of both sides.

use std::collections::HashMap;
use std::io::{self, Write};

use serde::Serialize;
use serde_json::{json, Value};

use super::diff::{Comparison, DifferingPlaces, Kind};
use super::pair::{MatchedBy, Pair, Stats, Unmatched};
use crate::hash::Seed;
use crate::http::Exchange;
use crate::output::json::push_addr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Human-readable; `width` is the line width for the two columns.
    Text { color: bool, width: usize },
    /// One JSON object per line.
    Json,
    /// Nothing written: only the summary's counts are kept (the node agent's pairing
    /// stage, whose pairs go to the live view and the metrics).
    Counts,
}

impl Style {
    /// Text, coloured and as wide as the terminal when stdout is one.
    pub fn text_for_stdout() -> Style {
        use std::io::IsTerminal;
        let tty = std::io::stdout().is_terminal();
        let width = terminal_width().unwrap_or(120).clamp(60, 400);
        let color = tty && std::env::var_os("NO_COLOR").is_none();
        Style::Text { color, width }
    }
}

fn terminal_width() -> Option<usize> {
    if let Some(c) = std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()) {
        return Some(c);
    }
    // SAFETY: winsize is plain integers, for which all zeroes is a valid value.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ fills a winsize; it fails harmlessly when stdout is not a terminal.
    let r = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_col > 0).then_some(ws.ws_col as usize)
}

/// Distinct differing locations counted; beyond this many, new ones go to "other".
const MAX_COUNTED_PATHS: usize = 10_000;
/// How many of the most differing locations the summary lists.
const TOP_PATHS: usize = 10;

#[derive(Default)]
pub struct Summary {
    pub same: u64,
    pub different: u64,
    /// Pairs whose only differences were noise.
    pub noisy: u64,
    /// Per generalised location (`body:[*].imageUrl`): in how many pairs it differed.
    paths: HashMap<String, u64, Seed>,
    other_paths: u64,
    places: DifferingPlaces,
    pub primary_latency: Histogram,
    pub shadow_latency: Histogram,
}

impl Summary {
    fn count(&mut self, cmp: &Comparison) {
        for p in self.places.of(cmp) {
            if let Some(n) = self.paths.get_mut(p) {
                *n += 1;
            } else if self.paths.len() < MAX_COUNTED_PATHS {
                self.paths.insert(p.clone(), 1);
            } else {
                self.other_paths += 1;
            }
        }
    }

    /// The most differing locations, most first, ties by name.
    pub fn top_paths(&self) -> Vec<(&str, u64)> {
        let mut v: Vec<(&str, u64)> = self.paths.iter().map(|(k, &n)| (k.as_str(), n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v.truncate(TOP_PATHS);
        v
    }
}

/// Latencies in microseconds, kept as counts in log-linear buckets (32 per power of two,
/// about 3 % wide): fixed memory however long the capture runs.
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    /// Exact extremes: quantiles are clamped to them, so few samples read exactly.
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: vec![0; 32 * 61],
            count: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

impl Histogram {
    fn index(v: u64) -> usize {
        if v < 32 {
            return v as usize;
        }
        let e = 63 - v.leading_zeros() as usize; // >= 5
        32 * (e - 4) + ((v >> (e - 5)) as usize - 32)
    }

    fn value(idx: usize) -> u64 {
        if idx < 32 {
            return idx as u64;
        }
        let e = idx / 32 + 4;
        let low = (32 + (idx % 32) as u64) << (e - 5);
        low + ((1u64 << (e - 5)) >> 1)
    }

    pub fn record(&mut self, v: u64) {
        self.buckets[Self::index(v)] += 1;
        self.count += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The value at quantile `q` (0..=1), None when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Self::value(i).clamp(self.min, self.max));
            }
        }
        None
    }
}

pub struct Reporter<W: Write> {
    out: W,
    style: Style,
    summary: Summary,
    /// A line put together before it is written.
    line: Vec<u8>,
    text: TextScratch,
}

impl<W: Write> Reporter<W> {
    pub fn new(out: W, style: Style) -> Reporter<W> {
        Reporter {
            out,
            style,
            summary: Summary::default(),
            line: Vec::new(),
            text: TextScratch::default(),
        }
    }

    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    pub fn into_inner(self) -> W {
        self.out
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The generalised places the last pair reported differed in (`body:[*].imageUrl`),
    /// as the summary counted them.
    pub fn places(&self) -> &[String] {
        self.summary.places.last()
    }

    /// Reports a pair.
    pub fn pair(&mut self, pair: &Pair, cmp: &Comparison) -> io::Result<()> {
        if cmp.same() {
            self.summary.same += 1;
            if !cmp.noise.is_empty() {
                self.summary.noisy += 1;
            }
        } else {
            self.summary.different += 1;
        }
        self.summary.count(cmp);
        if let Some(l) = pair.primary.latency_us() {
            self.summary.primary_latency.record(l);
        }
        if let Some(l) = pair.shadow.latency_us() {
            self.summary.shadow_latency.record(l);
        }
        match self.style {
            Style::Json => {
                self.line.clear();
                push_pair_json(&mut self.line, pair, cmp);
                self.line.push(b'\n');
                self.out.write_all(&self.line)
            }
            Style::Text { color, width } => {
                write_pair_text(&mut self.out, &mut self.text, pair, cmp, color, width)
            }
            Style::Counts => Ok(()),
        }
    }

    pub fn unmatched(&mut self, u: &Unmatched) -> io::Result<()> {
        let req = &u.exchange.request;
        let id = req.header("x-request-id");
        match self.style {
            Style::Json => {
                serde_json::to_writer(&mut self.out, &unmatched_json(u))?;
                self.out.write_all(b"\n")
            }
            Style::Text { color, .. } => {
                let missing = match u.role {
                    super::pair::Role::Primary => "its shadow never came",
                    super::pair::Role::Shadow => "its primary never came",
                };
                let label = paint(color, DIM, &format!("unmatched {}", u.role.as_str()));
                writeln!(
                    self.out,
                    "{label} {} {}{}  {}: {missing} ({})",
                    req.method,
                    req.target,
                    id.map(|i| format!("  x-request-id {i}"))
                        .unwrap_or_default(),
                    side_text(&u.exchange),
                    u.reason.as_str()
                )
            }
            Style::Counts => Ok(()),
        }
    }

    /// Writes the summary and returns the output.
    pub fn finish(mut self, stats: &Stats) -> io::Result<W> {
        let s = &self.summary;
        let lat = |h: &Histogram| json!({ "count": h.count(), "p50": h.quantile(0.5), "p99": h.quantile(0.99) });
        match self.style {
            Style::Json => {
                let top: Vec<Value> = s
                    .top_paths()
                    .iter()
                    .map(|(w, n)| json!({"where": w, "pairs": n}))
                    .collect();
                let v = json!({
                    "type": "shadow_summary",
                    "pairs": stats.pairs,
                    "same": s.same,
                    "different": s.different,
                    "same_but_noise": s.noisy,
                    "primaries_without_shadow": stats.unmatched_primaries,
                    "shadows_without_primary": stats.unmatched_shadows,
                    "evicted": stats.evicted,
                    "duplicates": stats.duplicates,
                    "top_differences": top,
                    "latency_us": { "primary": lat(&s.primary_latency), "shadow": lat(&s.shadow_latency) },
                });
                serde_json::to_writer(&mut self.out, &v)?;
                self.out.write_all(b"\n")?;
            }
            Style::Text { color, .. } => {
                let o = &mut self.out;
                writeln!(o, "{}", paint(color, BOLD, "shadow summary"))?;
                writeln!(
                    o,
                    "  pairs {}: {} same{}, {} different",
                    stats.pairs,
                    s.same,
                    if s.noisy > 0 {
                        format!(" ({} with noise only)", s.noisy)
                    } else {
                        String::new()
                    },
                    s.different
                )?;
                writeln!(
                    o,
                    "  primaries whose shadow never came {}, shadows whose primary never came {}{}",
                    stats.unmatched_primaries,
                    stats.unmatched_shadows,
                    if stats.evicted > 0 {
                        format!(" ({} pushed out of the pending table)", stats.evicted)
                    } else {
                        String::new()
                    }
                )?;
                let top = s.top_paths();
                if !top.is_empty() {
                    writeln!(o, "  differing most (pairs):")?;
                    let w = top.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
                    for (p, n) in top {
                        writeln!(o, "    {p:<w$}  {n}")?;
                    }
                }
                let ms = |v: Option<u64>| v.map_or("-".to_string(), fmt_us);
                writeln!(
                    o,
                    "  latency p50/p99: primary {} / {}, shadow {} / {}",
                    ms(s.primary_latency.quantile(0.5)),
                    ms(s.primary_latency.quantile(0.99)),
                    ms(s.shadow_latency.quantile(0.5)),
                    ms(s.shadow_latency.quantile(0.99)),
                )?;
            }
            Style::Counts => {}
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

/// One side of a pair as the JSON output shows it.
#[derive(Serialize)]
struct SideOut {
    server: String,
    status: Option<u16>,
    latency_us: Option<u64>,
}

fn side_out(ex: &Exchange) -> SideOut {
    SideOut {
        server: ex.server.to_string(),
        status: ex.response.as_ref().map(|r| r.status),
        latency_us: ex.latency_us(),
    }
}

fn side_json(ex: &Exchange) -> Value {
    serde_json::to_value(side_out(ex)).unwrap_or(Value::Null)
}

#[cfg(test)]
#[derive(Serialize)]
struct DifferenceOut<'a> {
    #[serde(rename = "where")]
    location: String,
    kind: &'static str,
    primary: &'a Option<Value>,
    shadow: &'a Option<Value>,
}

/// A pair as serde_json writes it, what `push_pair_json` must write (the tests' oracle).
#[cfg(test)]
#[derive(Serialize)]
struct PairOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    request_id: Option<&'a str>,
    matched_by: &'static str,
    method: &'a str,
    target: &'a str,
    primary: SideOut,
    shadow: SideOut,
    verdict: &'static str,
    differences: Vec<DifferenceOut<'a>>,
    noise: Vec<DifferenceOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    omitted: Option<usize>,
}

#[cfg(test)]
fn pair_out<'a>(pair: &'a Pair, cmp: &'a Comparison) -> PairOut<'a> {
    let diffs = |v: &'a [std::sync::Arc<super::diff::Difference>]| -> Vec<DifferenceOut<'a>> {
        v.iter()
            .map(|d| DifferenceOut {
                location: d.location.to_string(),
                kind: d.kind.as_str(),
                primary: &d.primary,
                shadow: &d.shadow,
            })
            .collect()
    };
    PairOut {
        kind: "shadow",
        request_id: pair.request_id.as_deref(),
        matched_by: match pair.by {
            MatchedBy::RequestId => "request-id",
            MatchedBy::Shape => "shape",
        },
        method: &pair.primary.request.method,
        target: &pair.primary.request.target,
        primary: side_out(&pair.primary),
        shadow: side_out(&pair.shadow),
        verdict: if cmp.same() { "same" } else { "different" },
        differences: diffs(&cmp.differences),
        noise: diffs(&cmp.noise),
        omitted: (cmp.omitted > 0).then_some(cmp.omitted),
    }
}

/// Appends `s` as a JSON string escaped as serde_json escapes it (the `--shadow --json`
/// output was serde_json's, and stays byte for byte the same): the runs between the bytes
/// to escape are copied whole, and most strings (paths, ids, URLs) are one run.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let b = s.as_bytes();
    let mut start = 0;
    while let Some(k) = next_to_escape(&b[start..]) {
        let i = start + k;
        let c = b[i];
        out.extend_from_slice(&b[start..i]);
        let short = match c {
            b'"' => b'"',
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x08 => b'b',
            0x0c => b'f',
            _ => b'u',
        };
        out.push(b'\\');
        out.push(short);
        if short == b'u' {
            out.extend_from_slice(&[
                b'0',
                b'0',
                HEX[usize::from(c >> 4)],
                HEX[usize::from(c & 15)],
            ]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}

/// Where the first byte that serde_json escapes (a control byte, `"` or `\\`) is: eight
/// bytes at a time, as every place and value of every pair goes through here.
fn next_to_escape(b: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x80 * ONES;
    // Per byte, high bit set where it is below 0x20, or equal to `"` or `\\`. A borrow
    // only runs on from a byte that is marked itself, so the lowest mark is exact.
    let below = |x: u64, n: u64| x.wrapping_sub(n * ONES) & !x & HIGH;
    let marks = |x: u64| below(x, 0x20) | below(x ^ (0x22 * ONES), 1) | below(x ^ (0x5c * ONES), 1);
    let mut words = b.chunks_exact(8);
    let mut at = 0;
    for w in words.by_ref() {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        let m = marks(u64::from_le_bytes(a));
        if m != 0 {
            return Some(at + m.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&c| c < 0x20 || c == b'"' || c == b'\\')
        .map(|k| at + k)
}

/// Appends an optional value: `null`, a string (escaped here), or what serde_json writes.
fn push_json_value(out: &mut Vec<u8>, v: &Option<Value>) {
    match v {
        None => out.extend_from_slice(b"null"),
        Some(Value::String(s)) => push_json_str(out, s),
        Some(other) => {
            if serde_json::to_writer(&mut *out, other).is_err() {
                out.extend_from_slice(b"null");
            }
        }
    }
}

fn push_json_side(out: &mut Vec<u8>, ex: &Exchange) {
    out.extend_from_slice(b"{\"server\":\"");
    // A socket address needs no escaping.
    push_addr(out, ex.server);
    out.extend_from_slice(b"\",\"status\":");
    match ex.response.as_ref() {
        Some(r) => out.extend_from_slice(itoa::Buffer::new().format(r.status).as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"latency_us\":");
    match ex.latency_us() {
        Some(l) => out.extend_from_slice(itoa::Buffer::new().format(l).as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
}

/// Appends the pair's JSON object as `--shadow --json` writes it, on one line, without a
/// line end: `PairOut` as serde_json writes it, written by hand (serde's generic writer was
/// most of what reporting a pair cost). The live view renders its pair events with it.
pub fn push_pair_json(out: &mut Vec<u8>, pair: &Pair, cmp: &Comparison) {
    out.extend_from_slice(b"{\"type\":\"shadow\",\"request_id\":");
    match pair.request_id.as_deref() {
        Some(id) => push_json_str(out, id),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(match pair.by {
        MatchedBy::RequestId => b",\"matched_by\":\"request-id\",\"method\":",
        MatchedBy::Shape => b",\"matched_by\":\"shape\",\"method\":",
    });
    push_json_str(out, &pair.primary.request.method);
    out.extend_from_slice(b",\"target\":");
    push_json_str(out, &pair.primary.request.target);
    out.extend_from_slice(b",\"primary\":");
    push_json_side(out, &pair.primary);
    out.extend_from_slice(b",\"shadow\":");
    push_json_side(out, &pair.shadow);
    out.extend_from_slice(if cmp.same() {
        b",\"verdict\":\"same\""
    } else {
        b",\"verdict\":\"different\""
    });
    let mut place = String::new();
    for (key, list) in [
        (&b",\"differences\":["[..], &cmp.differences),
        (b",\"noise\":[", &cmp.noise),
    ] {
        out.extend_from_slice(key);
        for (i, d) in list.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            place.clear();
            d.location.push_to(&mut place);
            out.extend_from_slice(b"{\"where\":");
            push_json_str(out, &place);
            out.extend_from_slice(b",\"kind\":\"");
            out.extend_from_slice(d.kind.as_str().as_bytes());
            out.extend_from_slice(b"\",\"primary\":");
            push_json_value(out, &d.primary);
            out.extend_from_slice(b",\"shadow\":");
            push_json_value(out, &d.shadow);
            out.push(b'}');
        }
        out.push(b']');
    }
    if cmp.omitted > 0 {
        out.extend_from_slice(b",\"omitted\":");
        out.extend_from_slice(itoa::Buffer::new().format(cmp.omitted).as_bytes());
    }
    out.push(b'}');
}

/// The JSON object for an exchange whose partner never came.
pub fn unmatched_json(u: &Unmatched) -> Value {
    let req = &u.exchange.request;
    json!({
        "type": "shadow_unmatched",
        "role": u.role.as_str(),
        "reason": u.reason.as_str(),
        "request_id": req.header("x-request-id"),
        "method": req.method,
        "target": req.target,
        "side": side_json(&u.exchange),
    })
}

const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const DIM: &str = "\x1b[2m";
const BOLD: &str = "\x1b[1m";

fn paint(color: bool, code: &str, s: &str) -> String {
    if color {
        format!("{code}{s}\x1b[0m")
    } else {
        s.to_string()
    }
}

fn fmt_us(us: u64) -> String {
    if us < 1000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{:.2} s", us as f64 / 1e6)
    }
}

fn side_text(ex: &Exchange) -> String {
    let status = ex
        .response
        .as_ref()
        .map_or("no response".to_string(), |r| r.status.to_string());
    let lat = ex
        .latency_us()
        .map(|l| format!(" {}", fmt_us(l)))
        .unwrap_or_default();
    format!("{status}{lat} from {}", ex.server)
}

/// A value for a column: strings bare, others as JSON, absence as a dash.
fn cell(v: &Option<Value>) -> std::borrow::Cow<'_, str> {
    match v {
        None => "—".into(),
        Some(Value::String(s)) => s.as_str().into(),
        Some(other) => other.to_string().into(),
    }
}

/// Whether every byte is printable ASCII (0x20 to 0x7e): eight bytes at a time, as each
/// value and place of each difference is asked.
fn printable_ascii(b: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x80 * ONES;
    let mut words = b.chunks_exact(8);
    // Per byte, high bit set when it is below 0x20 (the borrow), 0x7f or above (the
    // carry), or 0x80 and above (its own). A borrow or carry into the next byte only
    // comes from a byte already marked.
    let marked = |x: u64| (x.wrapping_sub(0x20 * ONES) | x.wrapping_add(ONES) | x) & HIGH != 0;
    for w in words.by_ref() {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        if marked(u64::from_le_bytes(a)) {
            return false;
        }
    }
    words.remainder().iter().all(|c| (0x20..0x7f).contains(c))
}

/// Cuts `s` to `w` characters, marking the cut; control characters are escaped.
fn fit(s: &str, w: usize) -> String {
    // Nearly every value is printable ASCII: a character per byte and nothing to escape.
    if printable_ascii(s.as_bytes()) {
        let mut t = String::with_capacity(w.max(s.len()) + 2);
        if s.len() <= w {
            t.push_str(s);
            t.extend(std::iter::repeat_n(' ', w - s.len()));
        } else {
            t.push_str(&s[..w.saturating_sub(1)]);
            t.push('…');
        }
        return t;
    }
    let mut clean = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            clean.extend(c.escape_default());
        } else {
            clean.push(c);
        }
    }
    let n = clean.chars().count();
    if n <= w {
        format!("{clean}{}", " ".repeat(w - n))
    } else {
        let mut t: String = clean.chars().take(w.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Appends `s` cut or padded to `w` characters, as `fit` returns it.
fn push_fit(out: &mut Vec<u8>, s: &str, w: usize) {
    // Nearly every value is printable ASCII: a character per byte and nothing to escape.
    if printable_ascii(s.as_bytes()) {
        if s.len() <= w {
            out.extend_from_slice(s.as_bytes());
            push_spaces(out, w - s.len());
        } else {
            out.extend_from_slice(&s.as_bytes()[..w.saturating_sub(1)]);
            out.extend_from_slice("…".as_bytes());
        }
        return;
    }
    // Else a character at a time ("—" for an absent value), escaping only if needed.
    if !s.chars().any(char::is_control) {
        let n = s.chars().count();
        if n <= w {
            out.extend_from_slice(s.as_bytes());
            push_spaces(out, w - n);
        } else {
            let cut = s
                .char_indices()
                .nth(w.saturating_sub(1))
                .map_or(s.len(), |(i, _)| i);
            out.extend_from_slice(&s.as_bytes()[..cut]);
            out.extend_from_slice("…".as_bytes());
        }
        return;
    }
    out.extend_from_slice(fit(s, w).as_bytes());
}

/// `n` spaces, a slice at a time rather than a character at a time.
fn push_spaces(out: &mut Vec<u8>, n: usize) {
    out.resize(out.len() + n, b' ');
}

/// `side_text`, appended to `out`.
fn push_side_text(out: &mut Vec<u8>, ex: &Exchange) {
    match ex.response.as_ref() {
        Some(r) => out.extend_from_slice(itoa::Buffer::new().format(r.status).as_bytes()),
        None => out.extend_from_slice(b"no response"),
    }
    match ex.latency_us() {
        // `fmt_us`, without a string of its own for the usual case.
        Some(l) if l < 1000 => {
            out.push(b' ');
            out.extend_from_slice(itoa::Buffer::new().format(l).as_bytes());
            out.extend_from_slice(" µs".as_bytes());
        }
        Some(l) => {
            out.push(b' ');
            out.extend_from_slice(fmt_us(l).as_bytes());
        }
        None => {}
    }
    out.extend_from_slice(b" from ");
    push_addr(out, ex.server);
}

/// What the text report of a pair reuses from one pair to the next.
#[derive(Default)]
struct TextScratch {
    /// The pair's text, written in one piece.
    text: Vec<u8>,
    /// The differences' places one after another (`body:[0].imageUrl (noise)`), and
    /// where each ends.
    places: String,
    ends: Vec<usize>,
}

/// A pair as text: put together in one buffer (no string per part), then written.
fn write_pair_text<W: Write>(
    o: &mut W,
    scratch: &mut TextScratch,
    pair: &Pair,
    cmp: &Comparison,
    color: bool,
    width: usize,
) -> io::Result<()> {
    use std::io::Write as _;
    let TextScratch {
        text: s,
        places,
        ends,
    } = scratch;
    s.clear();
    let painted = |s: &mut Vec<u8>, code: &str, text: &str| {
        if color {
            s.extend_from_slice(code.as_bytes());
            s.extend_from_slice(text.as_bytes());
            s.extend_from_slice(b"\x1b[0m");
        } else {
            s.extend_from_slice(text.as_bytes());
        }
    };
    if cmp.same() {
        painted(s, GREEN, "same     ");
    } else {
        painted(s, RED, "different");
    }
    s.push(b' ');
    s.extend_from_slice(pair.primary.request.method.as_bytes());
    s.push(b' ');
    s.extend_from_slice(pair.primary.request.target.as_bytes());
    if let Some(i) = pair.request_id.as_deref() {
        s.extend_from_slice(b"  x-request-id ");
        s.extend_from_slice(i.as_bytes());
    }
    s.extend_from_slice(b"  primary ");
    push_side_text(s, &pair.primary);
    s.extend_from_slice(b" | shadow ");
    push_side_text(s, &pair.shadow);
    if !cmp.same() {
        let n = cmp.differences.len() + cmp.omitted;
        let _ = write!(s, "  {n} difference{}", if n == 1 { "" } else { "s" });
    }
    if !cmp.noise.is_empty() {
        let _ = write!(s, "  {} noise", cmp.noise.len());
    }
    s.push(b'\n');
    if cmp.differences.is_empty() && cmp.noise.is_empty() {
        return o.write_all(s);
    }
    let all =
        || (cmp.differences.iter().map(|d| (d, false))).chain(cmp.noise.iter().map(|d| (d, true)));
    places.clear();
    ends.clear();
    let mut ww = 0;
    for (d, noise) in all() {
        let at = places.len();
        d.location.push_to(places);
        if noise {
            places.push_str(" (noise)");
        }
        ends.push(places.len());
        ww = ww.max(places[at..].chars().count());
    }
    let ww = ww.min(width / 3);
    // "  ~ " + where + "  " + primary + " │ " + shadow
    let col = width.saturating_sub(4 + ww + 2 + 3) / 2;
    let col = col.max(12);
    s.extend_from_slice(b"    ");
    push_fit(s, "", ww);
    s.extend_from_slice(b"  ");
    push_fit(s, "primary", col);
    s.extend_from_slice(" │ shadow\n".as_bytes());
    let mut start = 0;
    for ((d, noise), &end) in all().zip(ends.iter()) {
        let (mark, code) = match (noise, d.kind) {
            (true, _) => ("·", DIM),
            (false, Kind::Added) => ("+", GREEN),
            (false, Kind::Removed) => ("-", RED),
            (false, Kind::Changed) => ("~", YELLOW),
        };
        if color {
            s.extend_from_slice(code.as_bytes());
        }
        s.extend_from_slice(b"  ");
        s.extend_from_slice(mark.as_bytes());
        s.push(b' ');
        push_fit(s, &places[start..end], ww);
        start = end;
        s.extend_from_slice(b"  ");
        push_fit(s, &cell(&d.primary), col);
        s.extend_from_slice(" │ ".as_bytes());
        let at = s.len();
        push_fit(s, &cell(&d.shadow), col);
        // What push_fit wrote is UTF-8 (whole characters of a str, and spaces).
        let kept = std::str::from_utf8(&s[at..]).map_or(s.len() - at, |t| t.trim_end().len());
        s.truncate(at + kept);
        if color {
            s.extend_from_slice(b"\x1b[0m");
        }
        s.push(b'\n');
    }
    if cmp.omitted > 0 {
        let _ = writeln!(s, "    … and {} more", cmp.omitted);
    }
    o.write_all(s)
}

#[cfg(test)]
mod tests {
    use super::super::diff::{compare, Options};
    use super::super::pair::{Reason, Role};
    use super::*;
    use crate::http::{Body, Headers, Request, Response};
    use std::time::{Duration, SystemTime};

    #[test]
    fn next_to_escape_finds_the_first_byte_serde_escapes() {
        let escaped = |c: u8| c < 0x20 || c == b'"' || c == b'\\';
        for c in 0..=255u8 {
            for at in 0..19 {
                let mut b = vec![b'a'; 19];
                b[at] = c;
                let want = escaped(c).then_some(at);
                assert_eq!(next_to_escape(&b), want, "{c:#x} at {at}");
                // A second one further on does not move the first.
                b[18] = b'"';
                let want = if escaped(c) { Some(at) } else { Some(18) };
                assert_eq!(next_to_escape(&b), want, "{c:#x} at {at}, then a quote");
            }
        }
        assert_eq!(next_to_escape(b""), None);
    }

    #[test]
    fn printable_ascii_marks_every_byte_outside_0x20_to_0x7e() {
        for c in 0..=255u8 {
            for at in 0..17 {
                let mut b = vec![b'a'; 17];
                b[at] = c;
                assert_eq!(
                    printable_ascii(&b),
                    (0x20..0x7f).contains(&c),
                    "{c:#x} at {at}"
                );
            }
        }
        assert!(printable_ascii(b""));
    }

    fn ex(host: &str, server: &str, latency_ms: u64, body: &str) -> Exchange {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        Exchange {
            client: "10.123.1.2:40000".parse().unwrap(),
            server: server.parse().unwrap(),
            interface: None,
            request: Box::new(Request {
                method: "GET".into(),
                target: "/items".into(),
                version: "HTTP/1.1",
                headers: Headers::from([("host", host), ("x-request-id", "rid-1")]),
                body: Body::default(),
                ts: t0,
            }),
            response: Some(Box::new(Response {
                status: 200,
                reason: "OK".into(),
                version: "HTTP/1.1",
                headers: Headers::from([("content-type", "application/json")]),
                body: Body {
                    data: body.as_bytes().to_vec(),
                    len: body.len() as u64,
                    truncated: false,
                },
                ts: t0 + Duration::from_millis(latency_ms),
            })),
        }
    }

    fn pair(pbody: &str, sbody: &str) -> (Pair, Comparison) {
        let p = ex("catalog:80", "10.123.2.2:3000", 2, pbody);
        let s = ex("catalog-shadow:80", "10.123.3.2:3000", 5, sbody);
        let c = compare(&p, &s, &Options::default());
        (
            Pair {
                primary: p,
                shadow: s,
                request_id: Some("rid-1".into()),
                by: MatchedBy::RequestId,
            },
            c,
        )
    }

    /// The hand-written pair object is what serde_json writes for `PairOut`, byte for byte.
    #[test]
    fn pair_json_is_serde_jsons() {
        let bodies = [
            (r#"[{"id":1}]"#, r#"[{"id":1,"imageUrl":"u"}]"#),
            (
                r#"{"a":"x\"y\\z\u0001\u007f\b\f\t é","n":1.5}"#,
                r#"{"a":"w","n":2e3,"o":{"k":[1,null,true]}}"#,
            ),
            (
                r#"{"t":"2026-11-22T22:31:43Z"}"#,
                r#"{"t":"2026-11-22T22:31:44Z"}"#,
            ),
            ("same", "same"),
            ("text\nline", "text\nother"),
        ];
        for (pb, sb) in bodies {
            let (mut p, mut cmp) = pair(pb, sb);
            for variant in 0..3 {
                if variant == 1 {
                    p.request_id = None;
                    p.by = MatchedBy::Shape;
                    p.shadow.response = None;
                }
                if variant == 2 {
                    cmp.omitted = 7;
                }
                let want = serde_json::to_vec(&pair_out(&p, &cmp)).unwrap();
                let mut got = Vec::new();
                push_pair_json(&mut got, &p, &cmp);
                assert_eq!(
                    String::from_utf8(got).unwrap(),
                    String::from_utf8(want).unwrap()
                );
            }
        }
        let mut s = Vec::new();
        let all: String = (0u8..0x80).map(char::from).collect();
        push_json_str(&mut s, &all);
        assert_eq!(s, serde_json::to_vec(&all).unwrap());
    }

    #[test]
    fn counts_only_writes_nothing_and_still_knows_the_places() {
        let (p, c) = pair(r#"[{"id":1}]"#, r#"[{"id":1,"imageUrl":"u"}]"#);
        let mut r = Reporter::new(Vec::new(), Style::Counts);
        r.pair(&p, &c).unwrap();
        assert_eq!(r.places(), ["body:[*].imageUrl"]);
        let out = r.finish(&Stats::default()).unwrap();
        assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    }

    #[test]
    fn json_object_per_pair_matches_the_documented_shape() {
        let (p, c) = pair(r#"[{"id":1}]"#, r#"[{"id":1,"imageUrl":"u"}]"#);
        let mut r = Reporter::new(Vec::new(), Style::Json);
        r.pair(&p, &c).unwrap();
        let out = String::from_utf8(r.into_inner()).unwrap();
        assert_eq!(out.lines().count(), 1);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["type"], "shadow");
        assert_eq!(v["request_id"], "rid-1");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["target"], "/items");
        assert_eq!(
            v["primary"],
            json!({"server": "10.123.2.2:3000", "status": 200, "latency_us": 2000})
        );
        assert_eq!(v["shadow"]["latency_us"], 5000);
        assert_eq!(v["verdict"], "different");
        assert_eq!(
            v["differences"],
            json!([{"where": "body:[0].imageUrl", "kind": "added", "primary": null, "shadow": "u"}])
        );
    }

    #[test]
    fn text_has_a_verdict_line_and_two_columns() {
        let (p, c) = pair(
            r#"[{"id":1,"name":"a"}]"#,
            r#"[{"id":1,"name":"b","imageUrl":"http://x"}]"#,
        );
        let mut r = Reporter::new(
            Vec::new(),
            Style::Text {
                color: false,
                width: 100,
            },
        );
        r.pair(&p, &c).unwrap();
        let out = String::from_utf8(r.into_inner()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("different GET /items  x-request-id rid-1  primary 200 2.0 ms from 10.123.2.2:3000 | shadow 200 5.0 ms from 10.123.3.2:3000  2 differences"), "{out}");
        assert!(
            lines[1].contains("primary") && lines[1].contains("│ shadow"),
            "{out}"
        );
        assert!(
            lines[2].starts_with("  ~ body:[0].name ") && lines[2].ends_with(" │ b"),
            "{out}"
        );
        assert!(
            lines[3].starts_with("  + body:[0].imageUrl")
                && lines[3].contains("—")
                && lines[3].ends_with("│ http://x"),
            "{out}"
        );
        // The separators line up.
        let col = |l: &str| l.chars().position(|c| c == '│');
        assert_eq!(col(lines[1]), col(lines[2]));
        assert_eq!(col(lines[2]), col(lines[3]));
        assert!(!out.contains('\x1b'), "no colour when asked for none");
        let (p, c) = pair("[1]", "[1]");
        let mut r = Reporter::new(
            Vec::new(),
            Style::Text {
                color: true,
                width: 100,
            },
        );
        r.pair(&p, &c).unwrap();
        let out = String::from_utf8(r.into_inner()).unwrap();
        assert_eq!(out.lines().count(), 1);
        assert!(out.starts_with("\x1b[32msame"), "{out:?}");
    }

    #[test]
    fn long_values_are_cut_to_the_column() {
        let long = "x".repeat(500);
        let (p, c) = pair(r#"{"a":"short"}"#, &format!(r#"{{"a":"{long}"}}"#));
        let mut r = Reporter::new(
            Vec::new(),
            Style::Text {
                color: false,
                width: 80,
            },
        );
        r.pair(&p, &c).unwrap();
        let out = String::from_utf8(r.into_inner()).unwrap();
        for l in out.lines().skip(1) {
            assert!(l.chars().count() <= 80, "{l}");
        }
        assert!(out.contains('…'));
    }

    #[test]
    fn summary_counts_paths_latencies_and_unmatched() {
        let mut r = Reporter::new(Vec::new(), Style::Json);
        for _ in 0..3 {
            let (p, c) = pair(
                r#"[{"id":1},{"id":2}]"#,
                r#"[{"id":1,"imageUrl":"u"},{"id":2,"imageUrl":"u"}]"#,
            );
            r.pair(&p, &c).unwrap();
        }
        let (p, c) = pair("[1]", "[1]");
        r.pair(&p, &c).unwrap();
        let u = Unmatched {
            role: Role::Primary,
            exchange: ex("catalog:80", "10.123.2.2:3000", 1, ""),
            reason: Reason::Expired,
        };
        r.unmatched(&u).unwrap();
        let stats = Stats {
            pairs: 4,
            primaries: 5,
            shadows: 4,
            unmatched_primaries: 1,
            ..Stats::default()
        };
        let out = String::from_utf8(r.finish(&stats).unwrap()).unwrap();
        let lines: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 6);
        assert_eq!(lines[4]["type"], "shadow_unmatched");
        assert_eq!(lines[4]["role"], "primary");
        assert_eq!(lines[4]["reason"], "expired");
        let s = &lines[5];
        assert_eq!(s["type"], "shadow_summary");
        assert_eq!(
            (
                s["pairs"].as_u64(),
                s["same"].as_u64(),
                s["different"].as_u64()
            ),
            (Some(4), Some(1), Some(3))
        );
        assert_eq!(s["primaries_without_shadow"], 1);
        assert_eq!(s["shadows_without_primary"], 0);
        // Both items' imageUrl count once per pair under one generalised path.
        assert_eq!(
            s["top_differences"],
            json!([{"where": "body:[*].imageUrl", "pairs": 3}])
        );
        let p50 = s["latency_us"]["primary"]["p50"].as_u64().unwrap();
        let s50 = s["latency_us"]["shadow"]["p50"].as_u64().unwrap();
        assert!((1940..=2060).contains(&p50), "{p50}");
        assert!((4850..=5150).contains(&s50), "{s50}");
    }

    #[test]
    fn text_summary() {
        let mut r = Reporter::new(
            Vec::new(),
            Style::Text {
                color: false,
                width: 100,
            },
        );
        let (p, c) = pair(r#"[{"id":1}]"#, r#"[{"id":1,"imageUrl":"u"}]"#);
        r.pair(&p, &c).unwrap();
        let stats = Stats {
            pairs: 1,
            unmatched_shadows: 2,
            ..Stats::default()
        };
        let out = String::from_utf8(r.finish(&stats).unwrap()).unwrap();
        assert!(out.contains("pairs 1: 0 same, 1 different"), "{out}");
        assert!(out.contains("shadows whose primary never came 2"), "{out}");
        assert!(out.contains("body:[*].imageUrl  1"), "{out}");
        assert!(
            out.contains("latency p50/p99: primary 2.0 ms / 2.0 ms, shadow 5.0 ms / 5.0 ms"),
            "{out}"
        );
    }

    #[test]
    fn histogram_quantiles() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for v in 1..=1000u64 {
            h.record(v * 100);
        }
        let p50 = h.quantile(0.5).unwrap() as f64;
        let p99 = h.quantile(0.99).unwrap() as f64;
        assert!((p50 / 50_000.0 - 1.0).abs() < 0.04, "{p50}");
        assert!((p99 / 99_000.0 - 1.0).abs() < 0.04, "{p99}");
        h.record(0);
        h.record(u64::MAX);
        assert_eq!(h.count(), 1002);
        for v in [0u64, 1, 31, 32, 33, 63, 64, 1000, 1 << 40] {
            let back = Histogram::value(Histogram::index(v)) as f64;
            assert!(
                v < 32 && back == v as f64 || (back / v as f64 - 1.0).abs() < 0.04,
                "{v} -> {back}"
            );
        }
    }
}
