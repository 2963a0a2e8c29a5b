//! The node captures' own metrics, beside the request and shadow families that
//! interceptor-serve's feed records:
//!
//! - `interceptor_inspect_captures{state}`: pod captures `running`, `retrying` (failed,
//!   waiting to start again) and `skipped` (beyond `--inspect-max-pods`);
//! - `interceptor_inspect_capture_failures_total`: captures that could not start or ended
//!   by themselves (the veth gone with its pod);
//! - `interceptor_inspect_pairing_dropped_total`: exchanges left out of the shadow
//!   pairing because its queue was full;
//! - `interceptor_inspect_capture_packets_total{namespace,pod}` and
//!   `…_kernel_dropped_total{namespace,pod}`: each running capture's counters, read at
//!   scrape time (at most `--inspect-max-pods` series each).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use interceptor_sniff::pipeline::health::Health;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// The states a pod's capture is counted in.
pub const STATES: [&str; 3] = ["running", "retrying", "skipped"];

/// A running capture's health, by pod (namespace, name).
pub type Healths = Arc<Mutex<BTreeMap<(String, String), Arc<Health>>>>;

#[derive(Default)]
pub struct InspectMetrics {
    captures: Family<Labels, Gauge>,
    pub failures: Counter,
    pub pairing_dropped: Counter,
    pub healths: Healths,
}

impl InspectMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "interceptor_inspect_captures",
            "Pod captures of --inspect, by state (running, retrying, skipped)",
            self.captures.clone(),
        );
        registry.register(
            "interceptor_inspect_capture_failures",
            "Pod captures that could not start or ended by themselves (the veth gone)",
            self.failures.clone(),
        );
        registry.register(
            "interceptor_inspect_pairing_dropped",
            "Exchanges left out of the shadow pairing because its queue was full",
            self.pairing_dropped.clone(),
        );
        registry.register_collector(Box::new(PerPod(self.healths.clone())));
        self.set_captures(&BTreeMap::new());
    }

    /// Sets the capture gauge for every state (a state without captures reads 0).
    pub fn set_captures(&self, by_state: &BTreeMap<&'static str, i64>) {
        for state in STATES {
            self.captures
                .get_or_create(&vec![("state".to_string(), state.to_string())])
                .set(by_state.get(state).copied().unwrap_or(0));
        }
    }
}

/// Each running capture's packet and drop counters, read when scraped.
#[derive(Debug)]
struct PerPod(Healths);

impl Collector for PerPod {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snaps: Vec<(Labels, interceptor_sniff::pipeline::health::Snapshot)> =
            match self.0.lock() {
                Ok(h) => h
                    .iter()
                    .map(|((ns, pod), h)| {
                        (
                            vec![
                                ("namespace".to_string(), ns.clone()),
                                ("pod".to_string(), pod.clone()),
                            ],
                            h.snapshot(),
                        )
                    })
                    .collect(),
                Err(_) => return Ok(()),
            };
        if snaps.is_empty() {
            return Ok(());
        }
        type Get = fn(&interceptor_sniff::pipeline::health::Snapshot) -> u64;
        let families: [(&str, &str, Get); 2] = [
            (
                "interceptor_inspect_capture_packets",
                "Packets captured on each pod's veth",
                |s| s.packets,
            ),
            (
                "interceptor_inspect_capture_kernel_dropped",
                "Packets the kernel dropped from each pod's capture ring",
                |s| s.kernel_dropped,
            ),
        ];
        for (name, help, get) in families {
            let mut m = encoder.encode_descriptor(
                name,
                help,
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            for (labels, s) in &snaps {
                ConstCounter::new(get(s)).encode(m.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}
