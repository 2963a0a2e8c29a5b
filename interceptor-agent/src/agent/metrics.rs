//! The agent's metrics, registered into interceptor-serve's registry (served on
//! `--listen` at `/metrics`):
//!
//! - `interceptor_cni_requests_total{command,result}`: plugin runs, from the CNI request
//!   log (`requests`), so runs while the agent was down are counted too;
//! - `interceptor_pods{mode}`: pods intercepted on the node (records);
//! - `interceptor_repairs_total`: interceptions the agent found broken and set up again;
//!   `interceptor_repair_failures_total`: repairs that failed;
//!   `interceptor_records_dropped_total`: records dropped because the namespace is gone;
//! - `interceptor_ebpf_<counter>_total{namespace,pod}`: the eBPF programs' counters of
//!   each pod in eBPF mode (connects redirected, original destinations answered, inbound
//!   connections assigned, sockets paired, sk_msg bytes, DNS redirects), read from the
//!   pinned maps at each scrape.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use interceptor_intercept::ebpf::node;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::requests::Counts;

type Labels = Vec<(String, String)>;

/// A pod in eBPF mode, for the per-pod counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EbpfPod {
    pub namespace: String,
    pub name: String,
    pub netns_cookie: u64,
}

#[derive(Default)]
pub struct Metrics {
    cni_requests: Family<Labels, Counter>,
    /// What `cni_requests` holds, to add only the difference.
    reported: Mutex<Counts>,
    pods: Family<Labels, Gauge>,
    pub repairs: Counter,
    pub repair_failures: Counter,
    pub dropped: Counter,
    ebpf_pods: Arc<Mutex<Vec<EbpfPod>>>,
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "interceptor_cni_requests",
            "CNI plugin requests by command and result (ok, skipped, error)",
            self.cni_requests.clone(),
        );
        registry.register(
            "interceptor_pods",
            "Pods intercepted on this node, by mode",
            self.pods.clone(),
        );
        registry.register(
            "interceptor_repairs",
            "Pod interceptions found broken and set up again",
            self.repairs.clone(),
        );
        registry.register(
            "interceptor_repair_failures",
            "Repairs that failed",
            self.repair_failures.clone(),
        );
        registry.register(
            "interceptor_records_dropped",
            "Pod records dropped because their network namespace is gone",
            self.dropped.clone(),
        );
        registry.register_collector(Box::new(EbpfCounters(self.ebpf_pods.clone())));
    }

    /// Brings the request counters up to `counts` (totals since the log began).
    pub fn update_requests(&self, counts: &Counts) {
        let Ok(mut reported) = self.reported.lock() else {
            return;
        };
        for ((command, result), n) in counts {
            let before = reported
                .get(&(command.clone(), result.clone()))
                .copied()
                .unwrap_or(0);
            if *n > before {
                self.cni_requests
                    .get_or_create(&vec![
                        ("command".to_string(), command.clone()),
                        ("result".to_string(), result.clone()),
                    ])
                    .inc_by(n - before);
                reported.insert((command.clone(), result.clone()), *n);
            }
        }
    }

    /// Sets the pod gauge for every mode (a mode without pods reads 0).
    pub fn set_pods(&self, by_mode: &BTreeMap<&'static str, i64>) {
        for (mode, n) in by_mode {
            self.pods
                .get_or_create(&vec![("mode".to_string(), mode.to_string())])
                .set(*n);
        }
    }

    pub fn set_ebpf_pods(&self, pods: Vec<EbpfPod>) {
        if let Ok(mut p) = self.ebpf_pods.lock() {
            *p = pods;
        }
    }
}

/// The per-pod eBPF counters, read when scraped.
#[derive(Debug)]
struct EbpfCounters(Arc<Mutex<Vec<EbpfPod>>>);

impl Collector for EbpfCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let pods = self.0.lock().map(|p| p.clone()).unwrap_or_default();
        if pods.is_empty() {
            return Ok(());
        }
        let values: Vec<(Labels, Vec<(&'static str, u64)>)> = pods
            .iter()
            .map(|p| {
                (
                    vec![
                        ("namespace".to_string(), p.namespace.clone()),
                        ("pod".to_string(), p.name.clone()),
                    ],
                    node::counters(p.netns_cookie),
                )
            })
            .collect();
        let names: Vec<&'static str> = values
            .first()
            .map(|(_, c)| c.iter().map(|(n, _)| *n).collect())
            .unwrap_or_default();
        for (i, name) in names.iter().enumerate() {
            let metric = format!("interceptor_ebpf_{name}");
            let help = format!("eBPF programs' {} counter, per pod", name.replace('_', " "));
            let mut m = encoder.encode_descriptor(
                &metric,
                &help,
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            for (labels, counters) in &values {
                let v = counters.get(i).map(|(_, v)| *v).unwrap_or(0);
                ConstCounter::new(v).encode(m.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn requests_are_counted_once() {
        let m = Metrics::default();
        let mut r = Registry::default();
        m.register(&mut r);
        let mut c = Counts::new();
        c.insert(("ADD".into(), "ok".into()), 2);
        m.update_requests(&c);
        m.update_requests(&c);
        c.insert(("ADD".into(), "ok".into()), 3);
        m.update_requests(&c);
        m.repairs.inc();
        let mut by_mode = BTreeMap::new();
        by_mode.insert("iptables", 1);
        by_mode.insert("ebpf", 0);
        m.set_pods(&by_mode);
        let mut text = String::new();
        encode(&mut text, &r).unwrap();
        assert!(
            text.contains("interceptor_cni_requests_total{command=\"ADD\",result=\"ok\"} 3"),
            "{text}"
        );
        assert!(text.contains("interceptor_repairs_total 1"), "{text}");
        assert!(
            text.contains("interceptor_pods{mode=\"iptables\"} 1"),
            "{text}"
        );
        assert!(text.contains("interceptor_pods{mode=\"ebpf\"} 0"), "{text}");
    }
}
