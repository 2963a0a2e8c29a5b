//! Shadow comparison (`interceptor sniff --shadow`): pairs each mirrored request with its
//! primary (`pair`), compares the two exchanges (`diff`) and reports verdicts, differences
//! and a summary (`report`). [`Shadow`] ties the three together for the sniff pipeline.

pub mod diff;
pub mod pair;
pub mod report;
pub mod volatile;

use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use crate::http::Exchange;

/// What the comparison is asked to do, unchecked (the command line's values).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Header names also ignored (a trailing `*` matches any suffix).
    pub ignore_header: Vec<String>,
    /// Body paths ignored with their subtree (`[*].imageUrl`).
    pub ignore_path: Vec<String>,
    /// Compare everything: nothing ignored, volatile values count as differences.
    pub strict: bool,
    /// Most exchanges waiting for their partner.
    pub max_pending: usize,
    /// Seconds an exchange waits for its partner.
    pub max_age: f64,
}

impl Default for Settings {
    fn default() -> Settings {
        let pairing = pair::Config::default();
        Settings {
            ignore_header: Vec::new(),
            ignore_path: Vec::new(),
            strict: false,
            max_pending: pairing.max_pending,
            max_age: pairing.max_age.as_secs_f64(),
        }
    }
}

/// A setting the comparison cannot work with; the caller names its flag.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SettingsError {
    #[error("{0}")]
    IgnoreHeader(String),
    #[error("{0}")]
    IgnorePath(String),
    #[error("{0}: must be at least 1")]
    MaxPending(usize),
    #[error("{0}: must be more than 0 and at most 86400 seconds")]
    MaxAge(f64),
}

impl Settings {
    /// The checked pairing and comparison settings.
    pub fn check(&self) -> Result<(pair::Config, diff::Options), SettingsError> {
        let mut opts = diff::Options {
            strict: self.strict,
            ..Default::default()
        };
        for h in &self.ignore_header {
            opts.ignore_header(h).map_err(SettingsError::IgnoreHeader)?;
        }
        for p in &self.ignore_path {
            opts.ignore_path(p).map_err(SettingsError::IgnorePath)?;
        }
        if self.max_pending == 0 {
            return Err(SettingsError::MaxPending(self.max_pending));
        }
        if !(self.max_age.is_finite() && self.max_age > 0.0 && self.max_age <= 86_400.0) {
            return Err(SettingsError::MaxAge(self.max_age));
        }
        let cfg = pair::Config {
            max_pending: self.max_pending,
            max_age: Duration::from_secs_f64(self.max_age),
            ..pair::Config::default()
        };
        Ok((cfg, opts))
    }
}

/// Sees every pair and unmatched exchange once it is reported (the live view and the
/// metrics of `sniff --serve`, beside the report on stdout), and keeps it: the live view
/// holds the pair's exchanges and comparison as they are, rather than copies or a
/// rendering of them, and hands the exchanges back for reuse when it lets them go.
pub trait Observer: Send {
    /// `places`: the generalised places it differs in (`body:[*].imageUrl`), as the
    /// report's summary counts them.
    fn pair(&mut self, pair: pair::Pair, cmp: diff::Comparison, places: &[String]);
    fn unmatched(&mut self, u: pair::Unmatched);
    /// An exchange still waiting for its partner [`WAITING_SHOWN_AFTER`] after it arrived:
    /// told once, before its pair or its unmatched report.
    fn waiting(&mut self, _ex: &Exchange) {}
}

/// How long an exchange waits for its partner before an observer is told of it alone
/// (half a second: a mirror's answer mostly comes sooner, and the live view should not
/// hold back for long what it could show).
pub const WAITING_SHOWN_AFTER: Duration = Duration::from_millis(500);

/// A running shadow comparison: feed it exchanges as the sniffer finishes them.
pub struct Shadow<W: Write> {
    matcher: pair::Matcher,
    opts: diff::Options,
    reporter: report::Reporter<W>,
    events: Vec<pair::Event>,
    observer: Option<Box<dyn Observer>>,
    /// Exchanges reported and done with, for the sniffer to reuse (`take_spent`).
    spent: Vec<Exchange>,
}

/// Most exchanges kept in `Shadow::spent` for reuse; beyond, they are dropped.
const MAX_SPENT: usize = 1024;

fn keep_spent(spent: &mut Vec<Exchange>, ex: Exchange) {
    if spent.len() < MAX_SPENT {
        spent.push(ex);
    }
}

impl<W: Write> Shadow<W> {
    pub fn new(cfg: pair::Config, opts: diff::Options, reporter: report::Reporter<W>) -> Shadow<W> {
        Shadow {
            matcher: pair::Matcher::new(cfg),
            opts,
            reporter,
            events: Vec::new(),
            observer: None,
            spent: Vec::new(),
        }
    }

    /// Moves the exchanges reported since the last call to `out`: the sniffer reuses their
    /// buffers (`http::pool`) rather than allocate new ones for every message.
    pub fn take_spent(&mut self, out: &mut Vec<Exchange>) {
        out.append(&mut self.spent);
    }

    /// Also tells `o` about each pair and unmatched exchange, and of each exchange still
    /// waiting after [`WAITING_SHOWN_AFTER`].
    pub fn observe(mut self, o: Box<dyn Observer>) -> Shadow<W> {
        self.observer = Some(o);
        self.matcher.report_waiting(WAITING_SHOWN_AFTER);
        self
    }

    /// Takes one finished exchange (response or not).
    pub fn push(&mut self, exchange: Exchange) -> io::Result<()> {
        self.matcher.push(exchange, &mut self.events);
        self.drain()?;
        self.tell_waiting();
        Ok(())
    }

    /// For live captures: advances the clock when no traffic comes, so lonely exchanges are
    /// reported once they have waited long enough. Not for pcap files (their clock is theirs).
    pub fn tick(&mut self, now: SystemTime) -> io::Result<()> {
        self.matcher.expire(now, &mut self.events);
        self.drain()?;
        self.tell_waiting();
        Ok(())
    }

    fn tell_waiting(&mut self) {
        if let Some(o) = self.observer.as_mut() {
            self.matcher.waiting(|ex| o.waiting(ex));
        }
    }

    /// Ends the capture: reports what still waits, then the summary.
    pub fn finish(mut self) -> io::Result<W> {
        self.matcher.finish(&mut self.events);
        self.drain()?;
        let stats = self.matcher.stats();
        self.reporter.finish(&stats)
    }

    pub fn stats(&self) -> pair::Stats {
        self.matcher.stats()
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.reporter.flush()
    }

    fn drain(&mut self) -> io::Result<()> {
        for e in self.events.drain(..) {
            match e {
                pair::Event::Pair(p) => {
                    let cmp = diff::compare(&p.primary, &p.shadow, &self.opts);
                    self.reporter.pair(&p, &cmp)?;
                    match self.observer.as_mut() {
                        Some(o) => o.pair(p, cmp, self.reporter.places()),
                        None => {
                            keep_spent(&mut self.spent, p.primary);
                            keep_spent(&mut self.spent, p.shadow);
                        }
                    }
                }
                pair::Event::Unmatched(u) => {
                    self.reporter.unmatched(&u)?;
                    match self.observer.as_mut() {
                        Some(o) => o.unmatched(u),
                        None => keep_spent(&mut self.spent, u.exchange),
                    }
                }
            }
        }
        Ok(())
    }
}

/// The comparison as the sniff pipeline's sink: finished exchanges go to it; what else the
/// sniffer reports (requests as they complete, orphan responses, TLS flows) is not about pairs.
pub struct ShadowSink<W: Write> {
    /// Taken by `stats`, which ends the comparison and writes its summary.
    shadow: Option<Shadow<W>>,
    /// Live captures show each pair as it is found rather than when the buffer fills.
    live: bool,
}

impl<W: Write> ShadowSink<W> {
    pub fn new(shadow: Shadow<W>, live: bool) -> ShadowSink<W> {
        ShadowSink {
            shadow: Some(shadow),
            live,
        }
    }
}

impl<W: Write + Send> crate::sink::Sink for ShadowSink<W> {
    fn request(
        &mut self,
        _: &crate::http::Request,
        _: SocketAddr,
        _: SocketAddr,
    ) -> io::Result<()> {
        Ok(())
    }

    fn exchange(&mut self, ex: Exchange, _show_request: bool) -> io::Result<Option<Exchange>> {
        let Some(sh) = self.shadow.as_mut() else {
            return Ok(Some(ex));
        };
        sh.push(ex)?;
        if self.live {
            sh.flush()?;
        }
        Ok(None)
    }

    fn orphan(
        &mut self,
        _: &crate::http::Response,
        _: SocketAddr,
        _: SocketAddr,
    ) -> io::Result<()> {
        Ok(())
    }

    fn tls(&mut self, _: &crate::sink::TlsFlow) -> io::Result<()> {
        Ok(())
    }

    fn stats(&mut self, _: &crate::sink::Summary) -> io::Result<()> {
        match self.shadow.take() {
            Some(sh) => sh.finish().map(drop),
            None => Ok(()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.shadow.as_mut() {
            Some(sh) => sh.flush(),
            None => Ok(()),
        }
    }

    fn idle(&mut self, now: SystemTime) -> io::Result<()> {
        let Some(sh) = self.shadow.as_mut() else {
            return Ok(());
        };
        sh.tick(now)?;
        sh.flush()
    }

    fn spent(&mut self, out: &mut Vec<Exchange>) {
        if let Some(sh) = self.shadow.as_mut() {
            sh.take_spent(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(host: &str, id: &str, port: u16, ms: u64, body: &str) -> Exchange {
        use crate::http::{Body, Headers, Request, Response};
        let t =
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_millis(ms);
        Exchange {
            client: format!("10.123.1.2:{port}").parse().unwrap(),
            server: "10.123.2.2:3000".parse().unwrap(),
            interface: None,
            request: Box::new(Request {
                method: "GET".into(),
                target: "/items".into(),
                version: "HTTP/1.1",
                headers: Headers::from([("host", host), ("x-request-id", id)]),
                body: Body::default(),
                ts: t,
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
                ts: t + Duration::from_millis(1),
            })),
        }
    }

    #[test]
    fn session_reports_pairs_unmatched_and_summary() {
        let reporter = report::Reporter::new(Vec::new(), report::Style::Json);
        let mut sh = Shadow::new(pair::Config::default(), diff::Options::default(), reporter);
        sh.push(exchange("catalog:80", "a", 1, 0, r#"[{"id":1}]"#))
            .unwrap();
        sh.push(exchange("catalog-shadow:80", "b", 2, 1, r#"[{"id":1}]"#))
            .unwrap();
        sh.push(exchange(
            "catalog-shadow:80",
            "a",
            3,
            2,
            r#"[{"id":1,"imageUrl":"u"}]"#,
        ))
        .unwrap();
        sh.push(exchange("catalog:80", "c", 4, 3, r#"[{"id":1}]"#))
            .unwrap();
        assert_eq!(sh.stats().pairs, 1);
        let out = String::from_utf8(sh.finish().unwrap()).unwrap();
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let types: Vec<&str> = lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            [
                "shadow",
                "shadow_unmatched",
                "shadow_unmatched",
                "shadow_summary"
            ]
        );
        assert_eq!(lines[0]["differences"][0]["where"], "body:[0].imageUrl");
        assert_eq!(
            (lines[1]["role"].as_str(), lines[1]["request_id"].as_str()),
            (Some("shadow"), Some("b"))
        );
        assert_eq!(
            (lines[2]["role"].as_str(), lines[2]["reason"].as_str()),
            (Some("primary"), Some("ended"))
        );
        assert_eq!(lines[3]["primaries_without_shadow"], 1);
        assert_eq!(lines[3]["shadows_without_primary"], 1);
    }

    /// A writer whose contents the test can read after the output took it.
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn as_a_sniff_output() {
        use crate::sink::{Sink, Summary};
        let buf = Shared::default();
        let cfg = pair::Config {
            max_age: Duration::from_secs(5),
            ..pair::Config::default()
        };
        let reporter = report::Reporter::new(buf.clone(), report::Style::Json);
        let mut out = ShadowSink::new(Shadow::new(cfg, diff::Options::default(), reporter), true);
        out.exchange(exchange("catalog:80", "a", 1, 0, "[1]"), true)
            .unwrap();
        out.exchange(exchange("catalog-shadow:80", "a", 2, 1, "[1]"), true)
            .unwrap();
        out.exchange(exchange("catalog:80", "lonely", 3, 2, "[1]"), true)
            .unwrap();
        let lines = |b: &Shared| -> Vec<serde_json::Value> {
            String::from_utf8(b.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        };
        // Live: each pair is written as soon as it is found.
        assert_eq!(lines(&buf).len(), 1);
        assert_eq!(lines(&buf)[0]["verdict"], "same");
        // Idle long enough: the lonely primary is reported without new traffic.
        let later = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_010);
        out.idle(later).unwrap();
        assert_eq!(lines(&buf)[1]["type"], "shadow_unmatched");
        assert_eq!(lines(&buf)[1]["reason"], "expired");
        out.stats(&Summary::default()).unwrap();
        let all = lines(&buf);
        assert_eq!(all.len(), 3);
        assert_eq!(all[2]["type"], "shadow_summary");
        assert_eq!(all[2]["primaries_without_shadow"], 1);
        // After the summary, nothing more is written.
        out.exchange(exchange("catalog:80", "b", 4, 3, "[1]"), true)
            .unwrap();
        out.stats(&Summary::default()).unwrap();
        assert_eq!(lines(&buf).len(), 3);
    }

    #[test]
    fn settings_are_checked() {
        let s = Settings {
            strict: true,
            ignore_header: vec!["etag".into()],
            ignore_path: vec!["[*].imageUrl".into()],
            ..Settings::default()
        };
        let (cfg, opts) = s.check().unwrap();
        assert!(opts.strict);
        assert_eq!(opts.ignore_headers, ["etag"]);
        assert_eq!(opts.ignore_paths.len(), 1);
        assert_eq!(cfg, pair::Config::default());
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        let bad = |s: Settings| s.check().unwrap_err();
        let e = bad(Settings {
            ignore_path: vec!["a[b".into()],
            ..Settings::default()
        });
        assert!(
            matches!(&e, SettingsError::IgnorePath(m) if m.starts_with("\"a[b\"")),
            "{e}"
        );
        let e = bad(Settings {
            max_age: 0.0,
            ..Settings::default()
        });
        assert_eq!(e, SettingsError::MaxAge(0.0));
        assert_eq!(
            e.to_string(),
            "0: must be more than 0 and at most 86400 seconds"
        );
        let e = bad(Settings {
            max_pending: 0,
            ..Settings::default()
        });
        assert_eq!(e, SettingsError::MaxPending(0));
    }
}
