//! Shadow comparison (`interceptor sniff --shadow`): pairs each mirrored request with its
//! primary (`pair`), compares the two exchanges (`diff`) and reports verdicts, differences
//! and a summary (`report`). [`Shadow`] ties the three together for the sniff pipeline.

pub mod diff;
pub mod pair;
pub mod report;
pub mod volatile;

use std::io::{self, Write};
use std::time::{Duration, SystemTime};

use crate::http::Exchange;

/// The `sniff` flags of the shadow comparison.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Args {
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
    #[arg(long = "shadow-max-pending", value_name = "N", default_value_t = pair::Config::default().max_pending, requires = "shadow")]
    pub max_pending: usize,
    /// With --shadow: seconds an exchange waits for its partner.
    #[arg(long = "shadow-max-age", value_name = "SECONDS", default_value_t = pair::Config::default().max_age.as_secs_f64(), requires = "shadow")]
    pub max_age: f64,
}

impl Args {
    /// The validated settings, or an error naming the bad flag and value.
    pub fn settings(&self) -> Result<(pair::Config, diff::Options), String> {
        let mut opts = diff::Options {
            strict: self.strict,
            ..Default::default()
        };
        for h in &self.ignore_header {
            opts.ignore_header(h)?;
        }
        for p in &self.ignore_path {
            opts.ignore_path(p)?;
        }
        if self.max_pending == 0 {
            return Err("--shadow-max-pending 0: must be at least 1".into());
        }
        if !(self.max_age.is_finite() && self.max_age > 0.0 && self.max_age <= 86_400.0) {
            return Err(format!(
                "--shadow-max-age {}: must be more than 0 and at most 86400 seconds",
                self.max_age
            ));
        }
        let cfg = pair::Config {
            max_pending: self.max_pending,
            max_age: Duration::from_secs_f64(self.max_age),
            ..pair::Config::default()
        };
        Ok((cfg, opts))
    }
}

/// A running shadow comparison: feed it exchanges as the sniffer finishes them.
pub struct Shadow<W: Write> {
    matcher: pair::Matcher,
    opts: diff::Options,
    reporter: report::Reporter<W>,
    events: Vec<pair::Event>,
}

impl<W: Write> Shadow<W> {
    pub fn new(cfg: pair::Config, opts: diff::Options, reporter: report::Reporter<W>) -> Shadow<W> {
        Shadow {
            matcher: pair::Matcher::new(cfg),
            opts,
            reporter,
            events: Vec::new(),
        }
    }

    /// Takes one finished exchange (response or not).
    pub fn push(&mut self, exchange: Exchange) -> io::Result<()> {
        self.matcher.push(exchange, &mut self.events);
        self.drain()
    }

    /// For live captures: advances the clock when no traffic comes, so lonely exchanges are
    /// reported once they have waited long enough. Not for pcap files (their clock is theirs).
    pub fn tick(&mut self, now: SystemTime) -> io::Result<()> {
        self.matcher.expire(now, &mut self.events);
        self.drain()
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

    fn drain(&mut self) -> io::Result<()> {
        for e in self.events.drain(..) {
            match e {
                pair::Event::Pair(p) => {
                    let cmp = diff::compare(&p.primary, &p.shadow, &self.opts);
                    self.reporter.pair(&p, &cmp)?;
                }
                pair::Event::Unmatched(u) => self.reporter.unmatched(&u)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        shadow: Args,
    }

    #[test]
    fn flags_need_shadow() {
        assert!(Cli::try_parse_from(["x", "--strict"]).is_err());
        assert!(Cli::try_parse_from(["x", "--ignore-path", "a"]).is_err());
        let c = Cli::try_parse_from([
            "x",
            "--shadow",
            "--strict",
            "--ignore-header",
            "etag",
            "--ignore-path",
            "[*].imageUrl",
        ])
        .unwrap();
        let (cfg, opts) = c.shadow.settings().unwrap();
        assert!(opts.strict);
        assert_eq!(opts.ignore_headers, ["etag"]);
        assert_eq!(opts.ignore_paths.len(), 1);
        assert_eq!(cfg, pair::Config::default());
    }

    #[test]
    fn bad_values_name_the_flag() {
        let c = Cli::try_parse_from(["x", "--shadow", "--ignore-path", "a[b"]).unwrap();
        let e = c.shadow.settings().unwrap_err();
        assert!(e.starts_with("--ignore-path \"a[b\""), "{e}");
        let c = Cli::try_parse_from(["x", "--shadow", "--shadow-max-age", "0"]).unwrap();
        assert!(c
            .shadow
            .settings()
            .unwrap_err()
            .starts_with("--shadow-max-age 0"));
        let c = Cli::try_parse_from(["x", "--shadow", "--shadow-max-pending", "0"]).unwrap();
        assert!(c
            .shadow
            .settings()
            .unwrap_err()
            .starts_with("--shadow-max-pending 0"));
    }
}
