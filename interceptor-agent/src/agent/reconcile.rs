//! The agent's reconcile pass over the plugin's records: each pod's interception is
//! checked in its namespace and set up again when something removed it (rules flushed,
//! map entries deleted); records whose namespace is gone are dropped. Every repair is
//! logged and counted.
//!
//! Each record is handled under the state dir's lock and re-read there, so a DEL that
//! ran meanwhile is seen and nothing it removed comes back.

use std::collections::BTreeMap;
use std::path::Path;

use interceptor_intercept::ebpf::node;

use super::metrics::{EbpfPod, Metrics};
use crate::intercept::{self, Applied, ArgsParser, Mode};
use crate::netns;
use crate::record::{PodRecord, Records};

/// What one pass found, pod by pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    pub healthy: usize,
    pub repaired: usize,
    pub failed: usize,
    pub dropped: usize,
}

/// How one record stands.
enum Verdict {
    Healthy,
    Repaired(Vec<String>),
    Failed(String),
    Dropped(String),
    /// Removed by a DEL while we were looking.
    Gone,
}

pub struct Reconciler<'a> {
    pub records: &'a Records,
    pub parse: ArgsParser,
    pub metrics: &'a Metrics,
    /// The node's eBPF programs are ours to tidy (eBPF mode).
    pub ebpf: bool,
}

impl Reconciler<'_> {
    pub fn pass(&self) -> Pass {
        let mut pass = Pass::default();
        let list = match self.records.list() {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("reconcile: {e}");
                return pass;
            }
        };
        let mut by_mode: BTreeMap<&'static str, i64> =
            [("iptables", 0), ("ebpf", 0)].into_iter().collect();
        let mut ebpf_pods = Vec::new();
        let mut known_cookies = Vec::new();
        for rec in list {
            let rec = match rec {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("reconcile: {e}");
                    continue;
                }
            };
            let pod = format!("{}/{}", rec.namespace, rec.name);
            match self.one(&rec.container_id) {
                Verdict::Healthy => pass.healthy += 1,
                Verdict::Repaired(problems) => {
                    pass.repaired += 1;
                    self.metrics.repairs.inc();
                    tracing::warn!(
                        "repaired {pod} ({}, container {}): {}",
                        rec.mode,
                        rec.container_id,
                        intercept::summary(&problems)
                    );
                }
                Verdict::Failed(why) => {
                    pass.failed += 1;
                    self.metrics.repair_failures.inc();
                    tracing::error!(
                        "cannot repair {pod} (container {}): {why}",
                        rec.container_id
                    );
                }
                Verdict::Dropped(why) => {
                    pass.dropped += 1;
                    self.metrics.dropped.inc();
                    tracing::info!(
                        "dropped the record of {pod} (container {}): {why}",
                        rec.container_id
                    );
                    continue;
                }
                Verdict::Gone => continue,
            }
            if rec.mode == Mode::Ebpf.as_str() {
                *by_mode.entry("ebpf").or_default() += 1;
                known_cookies.push(rec.netns_cookie);
                ebpf_pods.push(EbpfPod {
                    namespace: rec.namespace.clone(),
                    name: rec.name.clone(),
                    netns_cookie: rec.netns_cookie,
                });
            } else {
                *by_mode.entry("iptables").or_default() += 1;
            }
        }
        if self.ebpf {
            self.drop_orphans(&known_cookies);
        }
        self.metrics.set_pods(&by_mode);
        self.metrics.set_ebpf_pods(ebpf_pods);
        pass
    }

    fn one(&self, container_id: &str) -> Verdict {
        let _lock = match self.records.lock() {
            Ok(l) => l,
            Err(e) => return Verdict::Failed(e.to_string()),
        };
        let rec = match self.records.load(container_id) {
            Ok(Some(r)) => r,
            Ok(None) => return Verdict::Gone,
            Err(e) => return Verdict::Failed(e.to_string()),
        };
        let mode = match Mode::parse(&rec.mode) {
            Ok(m) => m,
            Err(e) => return Verdict::Failed(e.to_string()),
        };
        let Some(ns) = netns::resolve(Path::new(&rec.netns)) else {
            return self.drop(
                &rec,
                mode,
                format!("network namespace {} is gone", rec.netns),
            );
        };
        let opts = match intercept::options(self.parse, mode, &rec.args) {
            Ok(o) => o,
            Err(e) => return Verdict::Failed(e.to_string()),
        };
        let recorded = Applied {
            netns_cookie: rec.netns_cookie,
            iptables_rules: rec.iptables_rules.clone(),
        };
        let problems = match intercept::check(mode, &ns, &opts, &recorded) {
            Ok(p) if p.is_empty() => return Verdict::Healthy,
            Ok(p) => p,
            Err(e) if e.namespace_gone() => return self.drop(&rec, mode, e.to_string()),
            Err(e) => return Verdict::Failed(e.to_string()),
        };
        match intercept::apply(mode, &ns, &opts) {
            Ok(applied) => {
                // Rules read back differently after a repair (another iptables version
                // on the node): the new reading is what later checks compare against.
                if applied.iptables_rules != rec.iptables_rules {
                    let mut updated = rec.clone();
                    updated.iptables_rules = applied.iptables_rules;
                    if let Err(e) = self.records.write(&updated) {
                        return Verdict::Failed(e.to_string());
                    }
                }
                Verdict::Repaired(problems)
            }
            Err(e) => Verdict::Failed(format!(
                "{} (while repairing: {e})",
                intercept::summary(&problems)
            )),
        }
    }

    fn drop(&self, rec: &PodRecord, mode: Mode, why: String) -> Verdict {
        if mode == Mode::Ebpf {
            if let Err(e) = node::unregister(rec.netns_cookie) {
                return Verdict::Failed(format!("{why}; removing its eBPF entries: {e:#}"));
            }
        }
        match self.records.remove(&rec.container_id) {
            Ok(_) => Verdict::Dropped(why),
            Err(e) => Verdict::Failed(e.to_string()),
        }
    }

    /// Namespaces registered with the node's programs that no record names (a plugin
    /// that died half way, a record removed by hand): their entries go.
    fn drop_orphans(&self, known: &[u64]) {
        let _lock = match self.records.lock() {
            Ok(l) => l,
            Err(_) => return,
        };
        // Re-read under the lock: an ADD may have registered and recorded a pod since.
        let recorded: Vec<u64> = self
            .records
            .list()
            .unwrap_or_default()
            .into_iter()
            .flatten()
            .filter(|r| r.mode == Mode::Ebpf.as_str())
            .map(|r| r.netns_cookie)
            .chain(known.iter().copied())
            .collect();
        let Ok(registered) = node::registered() else {
            return;
        };
        for cookie in registered.into_iter().filter(|c| !recorded.contains(c)) {
            match node::unregister(cookie) {
                Ok(_) => tracing::info!(
                    "removed eBPF entries of netns cookie {cookie}: no pod record names it"
                ),
                Err(e) => tracing::error!("removing eBPF entries of netns cookie {cookie}: {e:#}"),
            }
        }
    }
}
