//! interceptor's metrics, with Istio's names for the request labels, and label values
//! bounded by construction: no path, id or raw header ever becomes a label value.
//!
//! - `interceptor_requests_total` and `interceptor_request_duration_seconds` (Envoy's
//!   default buckets, in seconds) by `source_workload`, `destination_workload`,
//!   `destination_service`, `request_protocol`, `response_code`, `method`. Workloads are
//!   pod names without their controller's suffixes, `unknown` when the pod is not known;
//!   the service is the Host header's name (no port), `unknown` when absent or not a host
//!   name; `method` is one of the nine standard methods or `OTHER`; `response_code` is the
//!   status, `0` when no response came. At most [`MAX_REQUEST_LABEL_SETS`] label sets:
//!   the requests of any further set are counted under one set whose labels are all
//!   `other` (`request_protocol` stays `http`).
//! - `interceptor_shadow_pairs_total{verdict}` (`same`, `different`),
//!   `interceptor_shadow_unmatched_total{role}` (`primary`, `shadow`),
//!   `interceptor_shadow_differences_total{path}`: per generalised body or header path
//!   (`body:[*].imageUrl`), the pairs in which it differed; at most
//!   [`MAX_DIFFERENCE_PATHS`] paths, the rest under `other`.
//! - Capture health, read from the run loop's counters at scrape time:
//!   `interceptor_capture_packets_total`, `…_bytes_total`,
//!   `…_kernel_dropped_total`, `…_interface_dropped_total`, `interceptor_tcp_flows_total`,
//!   `interceptor_tcp_open_flows`, `interceptor_tcp_gaps_total`,
//!   `interceptor_tcp_flows_evicted_total`.

use std::borrow::Cow;
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use interceptor_sniff::hash::Seed;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use interceptor_sniff::pipeline::health::Health;

/// Envoy's default histogram bucket bounds, in milliseconds (what Istio's
/// `istio_request_duration_milliseconds` uses).
pub const ENVOY_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Distinct request label sets before the rest is counted as `other`.
pub const MAX_REQUEST_LABEL_SETS: usize = 1000;
/// Label sets remembered by [`Recorder`] before it hashes.
const RECENT: usize = 4;

/// Distinct difference paths before the rest is counted as `other`.
pub const MAX_DIFFERENCE_PATHS: usize = 200;

/// The standard methods (RFC 9110 and PATCH); anything else is `OTHER`.
pub const STANDARD_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// The bucket bounds of the duration histogram, in seconds.
pub fn duration_buckets() -> [f64; 19] {
    ENVOY_BUCKETS_MS.map(|ms| ms / 1000.0)
}

/// The bucket bounds of the duration histogram, in microseconds (the exchanges' own unit:
/// no float is compared per observation).
const DURATION_BOUNDS_US: [u64; 19] = {
    let mut us = [0u64; 19];
    let mut i = 0;
    while i < 19 {
        us[i] = (ENVOY_BUCKETS_MS[i] * 1000.0) as u64;
        i += 1;
    }
    us
};

/// `interceptor_request_duration_seconds`' metric: a classic histogram with Envoy's buckets,
/// encoded as prometheus-client's is, but filled a batch at a time: a capture counts the
/// exchanges of a label set into [`DurationCounts`] and adds them under one lock, where
/// prometheus-client's histogram takes its lock for each observation.
#[derive(Clone, Debug, Default)]
pub struct Durations(Arc<Mutex<DurationCounts>>);

/// Observations of one label set not yet added to its [`Durations`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DurationCounts {
    sum_us: u64,
    count: u64,
    /// Per bucket (not cumulative), the last one `+Inf`'s.
    buckets: [u64; 20],
}

impl DurationCounts {
    pub fn observe_us(&mut self, us: u64) {
        let i = DURATION_BOUNDS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(DURATION_BOUNDS_US.len());
        self.buckets[i] += 1;
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

impl Durations {
    /// Adds `c` and empties it.
    pub fn add(&self, c: &mut DurationCounts) {
        if c.is_empty() {
            return;
        }
        let mut d = self.0.lock().unwrap_or_else(|p| p.into_inner());
        d.sum_us = d.sum_us.saturating_add(c.sum_us);
        d.count += c.count;
        for (total, n) in d.buckets.iter_mut().zip(c.buckets) {
            *total += n;
        }
        drop(d);
        *c = DurationCounts::default();
    }

    pub fn observe(&self, latency: Duration) {
        let mut c = DurationCounts::default();
        c.observe_us(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
        self.add(&mut c);
    }
}

impl TypedMetric for Durations {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Durations {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let d = *self.0.lock().unwrap_or_else(|p| p.into_inner());
        let bounds = duration_buckets().into_iter().chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds.zip(d.buckets).collect();
        let sum = d.sum_us as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, d.count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub source_workload: String,
    pub destination_workload: String,
    pub destination_service: String,
    pub request_protocol: String,
    pub response_code: String,
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabels {
    pub role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabels {
    pub path: String,
}

type DurationFamily = Family<RequestLabels, Durations>;

/// The metric families, registered once; cloning shares them.
#[derive(Clone)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    durations: DurationFamily,
    pairs: Family<VerdictLabels, Counter>,
    unmatched: Family<RoleLabels, Counter>,
    differences: Family<PathLabels, Counter>,
}

impl Metrics {
    /// Registers the request and shadow families into `registry`.
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            requests: Family::default(),
            durations: Family::default(),
            pairs: Family::default(),
            unmatched: Family::default(),
            differences: Family::default(),
        };
        registry.register(
            "interceptor_requests",
            "HTTP requests seen, by Istio's standard labels",
            m.requests.clone(),
        );
        registry.register(
            "interceptor_request_duration_seconds",
            "Time from the request's first packet to the response's first packet, Envoy's buckets",
            m.durations.clone(),
        );
        registry.register(
            "interceptor_shadow_pairs",
            "Mirrored requests paired with their primary, by verdict",
            m.pairs.clone(),
        );
        registry.register(
            "interceptor_shadow_unmatched",
            "Exchanges whose partner never came, by role",
            m.unmatched.clone(),
        );
        registry.register(
            "interceptor_shadow_differences",
            "Pairs in which a generalised body or header path differed",
            m.differences.clone(),
        );
        m
    }

    /// Registers the capture's health counters, read from `health` at each scrape.
    pub fn register_capture(registry: &mut Registry, health: Arc<Health>) {
        registry.register_collector(Box::new(CaptureCollector(health)));
    }

    /// A recorder for the thread that sees the traffic.
    pub fn recorder(&self) -> Recorder {
        Recorder {
            metrics: self.clone(),
            sets: HashMap::new(),
            count: 0,
            overflow: None,
            recent: Default::default(),
            recent_next: 0,
            paths: HashMap::default(),
            other_path: None,
            verdicts: [None, None],
        }
    }
}

/// One request as the metrics see it.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub source_workload: &'a str,
    pub destination_workload: &'a str,
    pub host: Option<&'a str>,
    pub method: &'a str,
    /// None when no response came.
    pub status: Option<u16>,
    pub latency: Option<Duration>,
}

/// A request label set's metrics, kept so a repeated set costs a hash and two atomics.
#[derive(Clone)]
struct Handles {
    labels: RequestLabels,
    code: u16,
    requests: Counter,
    duration: Durations,
}

/// Records requests and pairs; owned by one thread (the sniffer's output thread).
pub struct Recorder {
    metrics: Metrics,
    /// Label sets seen, by a hash of their values (collisions are told apart by value).
    sets: HashMap<u64, Vec<Handles>>,
    count: usize,
    overflow: Option<(Counter, Durations)>,
    /// The sets used last: traffic mostly repeats a few (a mirrored call alternates two),
    /// and comparing costs less than hashing.
    recent: [Option<Handles>; RECENT],
    /// Where the next set found goes in `recent`.
    recent_next: usize,
    paths: HashMap<String, Counter, Seed>,
    other_path: Option<Counter>,
    /// The pair counters by verdict (same, different), made on first use.
    verdicts: [Option<Counter>; 2],
}

impl Recorder {
    pub fn request(&mut self, r: &Request) {
        let (counter, durations) = self.handles(r);
        counter.inc();
        if let Some(l) = r.latency {
            durations.observe(l);
        }
    }

    /// The counter and histogram `r` counts in (its label set's, or `other`'s beyond the
    /// bound), for a caller that counts many requests of one set (`r.latency` unused).
    pub fn handles(&mut self, r: &Request) -> (Counter, Durations) {
        let service = service_label(r.host);
        let method = method_label(r.method);
        let code = r.status.filter(|s| (100..=999).contains(s)).unwrap_or(0);
        let src = workload_label(r.source_workload);
        let dst = workload_label(r.destination_workload);
        let same = |s: &Handles| {
            s.code == code
                && s.labels.method == method
                && s.labels.destination_service == service
                && s.labels.source_workload == src
                && s.labels.destination_workload == dst
        };
        if let Some(s) = self.recent.iter().flatten().find(|s| same(s)) {
            return (s.requests.clone(), s.duration.clone());
        }
        let mut h = DefaultHasher::new();
        (src, dst, service.as_ref(), code, method).hash(&mut h);
        let key = h.finish();
        let known = self.sets.get(&key).and_then(|v| v.iter().position(same));
        let at = match known {
            Some(i) => Some(i),
            None if self.count < MAX_REQUEST_LABEL_SETS => {
                let labels = RequestLabels {
                    source_workload: src.to_string(),
                    destination_workload: dst.to_string(),
                    destination_service: service.into_owned(),
                    request_protocol: "http".into(),
                    response_code: code.to_string(),
                    method: method.to_string(),
                };
                let handles = Handles {
                    requests: self.metrics.requests.get_or_create_owned(&labels),
                    duration: self.metrics.durations.get_or_create_owned(&labels),
                    labels,
                    code,
                };
                self.count += 1;
                let v = self.sets.entry(key).or_default();
                v.push(handles);
                Some(v.len() - 1)
            }
            None => None,
        };
        let (counter, histogram) = match at.and_then(|i| self.sets.get(&key)?.get(i)) {
            Some(s) => {
                self.recent[self.recent_next] = Some(s.clone());
                self.recent_next = (self.recent_next + 1) % RECENT;
                (&s.requests, &s.duration)
            }
            None => {
                let m = &self.metrics;
                let (c, h) = self.overflow.get_or_insert_with(|| {
                    let labels = RequestLabels {
                        source_workload: "other".into(),
                        destination_workload: "other".into(),
                        destination_service: "other".into(),
                        request_protocol: "http".into(),
                        response_code: "other".into(),
                        method: "other".into(),
                    };
                    (
                        m.requests.get_or_create_owned(&labels),
                        m.durations.get_or_create_owned(&labels),
                    )
                });
                (&*c, &*h)
            }
        };
        (counter.clone(), histogram.clone())
    }

    /// `n` pairs of one verdict, with the generalised paths that differed in each (each
    /// path once).
    pub fn pairs(&mut self, same: bool, paths: &[String], n: u64) {
        let verdict = if same { "same" } else { "different" };
        let pairs = &self.metrics.pairs;
        self.verdicts[usize::from(!same)]
            .get_or_insert_with(|| {
                pairs.get_or_create_owned(&VerdictLabels {
                    verdict: verdict.into(),
                })
            })
            .inc_by(n);
        for p in paths {
            self.path_counter(p).inc_by(n);
        }
    }

    /// The counter of difference path `p`, or `other`'s beyond the bound.
    fn path_counter(&mut self, p: &str) -> Counter {
        if let Some(c) = self.paths.get(p) {
            return c.clone();
        }
        if self.paths.len() < MAX_DIFFERENCE_PATHS {
            let c = self
                .metrics
                .differences
                .get_or_create_owned(&PathLabels { path: p.into() });
            self.paths.insert(p.into(), c.clone());
            return c;
        }
        let m = &self.metrics;
        self.other_path
            .get_or_insert_with(|| {
                m.differences.get_or_create_owned(&PathLabels {
                    path: "other".into(),
                })
            })
            .clone()
    }

    /// An exchange whose partner never came; `role` is `primary` or `shadow`.
    pub fn unmatched(&mut self, role: &'static str) {
        self.metrics
            .unmatched
            .get_or_create(&RoleLabels { role: role.into() })
            .inc();
    }
}

/// `method` when standard, else `OTHER`.
pub fn method_label(m: &str) -> &'static str {
    STANDARD_METHODS
        .iter()
        .find(|s| **s == m)
        .copied()
        .unwrap_or("OTHER")
}

/// A workload name as given (already bounded: it comes from the pod records), `unknown`
/// when empty.
fn workload_label(w: &str) -> &str {
    if w.is_empty() {
        "unknown"
    } else {
        w
    }
}

/// The Host header's name without its port, lower case, if it is a host name (letters,
/// digits, `-` and `.`, at most 253) or an address; `unknown` otherwise.
pub fn service_label(host: Option<&str>) -> Cow<'_, str> {
    let Some(h) = host.map(str::trim).filter(|h| !h.is_empty()) else {
        return Cow::Borrowed("unknown");
    };
    let name = if let Some(rest) = h.strip_prefix('[') {
        // [v6]:port
        match rest.split_once(']') {
            Some((addr, _)) if addr.parse::<std::net::Ipv6Addr>().is_ok() => {
                return Cow::Owned(addr.to_ascii_lowercase())
            }
            _ => return Cow::Borrowed("unknown"),
        }
    } else {
        match h.rsplit_once(':') {
            Some((n, port)) if !port.is_empty() && port.bytes().all(|c| c.is_ascii_digit()) => n,
            Some(_) => return Cow::Borrowed("unknown"),
            None => h,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.');
    if !ok {
        Cow::Borrowed("unknown")
    } else if name.bytes().any(|c| c.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        // The usual case, and no allocation: every exchange passes here.
        Cow::Borrowed(name)
    }
}

/// The capture's counters, read when scraped.
#[derive(Debug)]
struct CaptureCollector(Arc<Health>);

impl Collector for CaptureCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.snapshot();
        let counters = [
            ("interceptor_capture_packets", "Packets read", s.packets),
            (
                "interceptor_capture_bytes",
                "Bytes of the packets read",
                s.bytes,
            ),
            (
                "interceptor_capture_kernel_dropped",
                "Packets the kernel dropped for want of room in the capture ring (live capture)",
                s.kernel_dropped,
            ),
            (
                "interceptor_capture_interface_dropped",
                "Packets the interface dropped (live capture)",
                s.if_dropped,
            ),
            ("interceptor_tcp_flows", "TCP flows seen", s.flows),
            (
                "interceptor_tcp_gaps",
                "Holes in TCP streams that reassembly skipped",
                s.gaps,
            ),
            (
                "interceptor_tcp_flows_evicted",
                "Flows pushed out of the full flow table",
                s.evicted,
            ),
        ];
        for (name, help, v) in counters {
            let c = ConstCounter::new(v);
            let m = encoder.encode_descriptor(name, help, None, c.metric_type())?;
            c.encode(m)?;
        }
        let g = ConstGauge::new(i64::try_from(s.open_flows).unwrap_or(i64::MAX));
        let m = encoder.encode_descriptor(
            "interceptor_tcp_open_flows",
            "TCP flows being tracked now",
            None,
            g.metric_type(),
        )?;
        g.encode(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(host: &'a str, method: &'a str, status: Option<u16>, ms: u64) -> Request<'a> {
        Request {
            source_workload: "webapp",
            destination_workload: "",
            host: Some(host),
            method,
            status,
            latency: status.map(|_| Duration::from_millis(ms)),
        }
    }

    fn text(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    #[test]
    fn buckets_are_envoys_in_seconds() {
        let b = duration_buckets();
        assert_eq!(b[0], 0.0005);
        assert_eq!(b[9], 1.0);
        assert_eq!(b[18], 3600.0);
        assert!(b.windows(2).all(|w| w[0] < w[1]));
        let mut reg = Registry::default();
        let m = Metrics::register(&mut reg);
        m.recorder()
            .request(&req("catalog:80", "GET", Some(200), 3));
        let t = text(&reg);
        let les: Vec<&str> = t
            .lines()
            .filter(|l| l.starts_with("interceptor_request_duration_seconds_bucket"))
            .filter_map(|l| l.split("le=\"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(
            les,
            [
                "0.0005", "0.001", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0",
                "2.5", "5.0", "10.0", "30.0", "60.0", "300.0", "600.0", "1800.0", "3600.0", "+Inf"
            ]
        );
        let bucket = |le: &str| {
            t.lines()
                .find(|l| {
                    l.starts_with("interceptor_request_duration_seconds_bucket{")
                        && l.contains(&format!("le=\"{le}\""))
                })
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_string)
        };
        assert_eq!(
            bucket("0.005").as_deref(),
            Some("1"),
            "3 ms falls in the 5 ms bucket:\n{t}"
        );
        assert_eq!(bucket("0.001").as_deref(), Some("0"));
    }

    #[test]
    fn labels_are_bounded_and_normalised() {
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("get"), "OTHER");
        assert_eq!(method_label("PROPFIND"), "OTHER");
        for (host, want) in [
            (Some("catalog.istioinaction:3000"), "catalog.istioinaction"),
            (Some("Catalog.Example."), "catalog.example"),
            (Some("10.0.0.1:80"), "10.0.0.1"),
            (Some("[FD00::1]:8080"), "fd00::1"),
            (Some("evil/path?x=1"), "unknown"),
            (Some("a:b"), "unknown"),
            (Some(""), "unknown"),
            (None, "unknown"),
        ] {
            assert_eq!(service_label(host), want, "{host:?}");
        }
        assert_eq!(service_label(Some(&"a".repeat(254))), "unknown");

        let mut reg = Registry::default();
        let m = Metrics::register(&mut reg);
        let mut r = m.recorder();
        // Far more distinct hosts than label sets allowed: the rest goes to `other`.
        for i in 0..MAX_REQUEST_LABEL_SETS + 500 {
            let host = format!("svc-{i}.ns:80");
            r.request(&req(&host, "GET", Some(200), 1));
            r.request(&req(&host, "BREW", None, 1));
        }
        assert_eq!(r.count, MAX_REQUEST_LABEL_SETS);
        let t = text(&reg);
        let series: Vec<&str> = t
            .lines()
            .filter(|l| l.starts_with("interceptor_requests_total{"))
            .collect();
        assert_eq!(series.len(), MAX_REQUEST_LABEL_SETS + 1);
        let other = series
            .iter()
            .find(|l| l.contains("destination_service=\"other\""))
            .unwrap();
        assert!(other.ends_with(" 2000"), "{other}");
        assert!(series
            .iter()
            .any(|l| l.contains("method=\"OTHER\"") && l.contains("response_code=\"0\"")));
        assert!(series
            .iter()
            .all(|l| l.contains("source_workload=\"webapp\"")
                || l.contains("source_workload=\"other\"")));
        assert!(series
            .iter()
            .any(|l| l.contains("destination_workload=\"unknown\"")));

        for i in 0..MAX_DIFFERENCE_PATHS + 50 {
            r.pairs(false, &[format!("body:[*].f{i}"), "header:etag".into()], 1);
        }
        r.pairs(true, &[], 1);
        r.unmatched("shadow");
        let t = text(&reg);
        let paths = t
            .lines()
            .filter(|l| l.starts_with("interceptor_shadow_differences_total{"))
            .count();
        assert_eq!(paths, MAX_DIFFERENCE_PATHS + 1);
        assert!(
            t.contains("interceptor_shadow_differences_total{path=\"other\"} 51"),
            "{t}"
        );
        assert!(t.contains("interceptor_shadow_differences_total{path=\"header:etag\"} 250"));
        assert!(t.contains("interceptor_shadow_pairs_total{verdict=\"different\"} 250"));
        assert!(t.contains("interceptor_shadow_pairs_total{verdict=\"same\"} 1"));
        assert!(t.contains("interceptor_shadow_unmatched_total{role=\"shadow\"} 1"));
    }
}
