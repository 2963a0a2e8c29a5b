//! The live view's `summary` event: totals since the capture started, sent about once a
//! second (and once more at the end), replacing the previous one.

use std::collections::HashMap;

use interceptor_sniff::hash::Seed;

use interceptor_sniff::shadow::report::Histogram;
use serde_json::json;

/// Distinct difference paths counted; beyond, they count as `other`.
const MAX_PATHS: usize = 10_000;
/// Paths listed in the summary.
const TOP: usize = 10;

#[derive(Default)]
pub struct Summary {
    exchanges: u64,
    same: u64,
    different: u64,
    unmatched: u64,
    /// Per generalised path, the pairs in which it differed.
    paths: HashMap<String, u64, Seed>,
    other_paths: u64,
    latency: Histogram,
}

impl Summary {
    /// `n` exchanges, with the latencies of those that were answered.
    pub fn exchanges(&mut self, n: u32, latencies_us: &[u64]) {
        self.exchanges += u64::from(n);
        for &l in latencies_us {
            self.latency.record(l);
        }
    }

    pub fn exchange(&mut self, latency_us: Option<u64>) {
        self.exchanges += 1;
        if let Some(l) = latency_us {
            self.latency.record(l);
        }
    }

    /// A pair, with its generalised differing paths (each once).
    /// `n` pairs of one verdict that differed in `paths`.
    pub fn pairs(&mut self, same: bool, paths: &[String], n: u64) {
        if same {
            self.same += n;
        } else {
            self.different += n;
        }
        for p in paths {
            if let Some(c) = self.paths.get_mut(p) {
                *c += n;
            } else if self.paths.len() < MAX_PATHS {
                self.paths.insert(p.clone(), n);
            } else {
                self.other_paths += n;
            }
        }
    }

    pub fn unmatched(&mut self) {
        self.unmatched += 1;
    }

    /// `{"type":"summary","exchanges":N,"pairs":{"same","different","unmatched"},
    /// "top_differences":[[path,pairs],…],"latency_us":{"count","p50","p99"}}`.
    pub fn json(&self) -> Vec<u8> {
        let mut top: Vec<(&str, u64)> = self.paths.iter().map(|(p, &n)| (p.as_str(), n)).collect();
        if self.other_paths > 0 {
            top.push(("other", self.other_paths));
        }
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        top.truncate(TOP);
        let v = json!({
            "type": "summary",
            "exchanges": self.exchanges,
            "pairs": { "same": self.same, "different": self.different, "unmatched": self.unmatched },
            "top_differences": top,
            "latency_us": {
                "count": self.latency.count(),
                "p50": self.latency.quantile(0.5),
                "p99": self.latency.quantile(0.99),
            },
        });
        serde_json::to_vec(&v).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_pairs_paths_and_latency() {
        let mut s = Summary::default();
        for l in [10, 20, 30, 400] {
            s.exchange(Some(l));
        }
        s.exchange(None);
        s.pairs(
            false,
            &["body:[*].imageUrl".into(), "header:etag".into()],
            1,
        );
        s.pairs(false, &["body:[*].imageUrl".into()], 1);
        s.pairs(true, &[], 1);
        s.unmatched();
        let v: serde_json::Value = serde_json::from_slice(&s.json()).unwrap();
        assert_eq!(v["exchanges"], 5);
        assert_eq!(
            v["pairs"],
            json!({"same": 1, "different": 2, "unmatched": 1})
        );
        assert_eq!(
            v["top_differences"],
            json!([["body:[*].imageUrl", 2], ["header:etag", 1]])
        );
        assert_eq!(v["latency_us"]["count"], 4);
        assert_eq!(v["latency_us"]["p50"], 20);
        assert_eq!(v["latency_us"]["p99"], 400);
    }
}
