//! `interceptor agent --inspect`: the agent sniffs the pods it intercepts.
//!
//! Each recorded pod (mode `iptables` or `ebpf`) gets a capture of its own ([`capture`]):
//! the sniff pipeline on the host-side veth that leads to it (found from the node's routes
//! by the pod's IP, as `sniff --pod` does), on its own thread with its own stop flag. All
//! captures feed one event ring (the live view at `/` and `/events` on `--listen`), one
//! set of request and shadow metrics (`/metrics`, beside the agent's own) and one shadow
//! pairing stage ([`pairing`]), so a mirrored request pairs with its primary whichever
//! veths they crossed. Every exchange event carries its pod (`"pod":{…}`), and the request
//! metrics name the node's pods' workloads from one directory of them ([`Workloads`]),
//! shared by every capture and brought up to date at each reconcile: a pod recorded after
//! a capture started is named in that capture's series from then on.
//!
//! The set of captures follows the records ([`Inspector::reconcile`]): a record that
//! appears starts a capture, one that goes stops it. A capture that fails (its veth went
//! with the pod, or it could not start) ends alone: it is logged, counted, and started
//! again after a back-off while the pod's record still exists. Bounded: at most
//! `max_pods` captures (more are counted as skipped until one ends), each with a 2 MiB
//! kernel ring, `max_flows` flows and 16 KiB bodies; the ring and the pairing queue have
//! their own bounds.
//!
//! A request between two pods of this node is seen on both veths: the live view and the
//! request metrics show it once per capture, tagged with each pod (as Istio's source and
//! destination reporters both count it); the pairing stage drops the copy.

pub mod capture;
pub mod metrics;
pub mod pairing;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use interceptor_serve::events::Ring;
use interceptor_serve::feed::Feed;
use interceptor_serve::pods::Workloads;
use interceptor_sniff::shadow;
use prometheus_client::registry::Registry;

use crate::record::PodRecord;
use capture::{Capture, CaptureError, Settings, Target};
use metrics::InspectMetrics;
use pairing::Pairing;

/// What `--inspect` is told.
#[derive(Clone, Debug)]
pub struct InspectOptions {
    /// tcpdump filter applied on every pod's veth.
    pub filter: String,
    /// Most pods captured at once.
    pub max_pods: usize,
    /// Most TCP flows tracked per pod.
    pub max_flows: usize,
    /// Pair mirrored requests with their primaries.
    pub shadow: bool,
}

impl Default for InspectOptions {
    fn default() -> InspectOptions {
        InspectOptions {
            filter: "tcp".into(),
            max_pods: 256,
            max_flows: 16_384,
            shadow: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("--inspect-max-pods 0: at least one pod must be captured")]
    NoPods,
    #[error("--inspect-max-flows 0: at least one flow must be tracked")]
    NoFlows,
    #[error("starting the shadow pairing: {0}")]
    Pairing(std::io::Error),
    #[error("the metrics registry is poisoned")]
    Registry,
}

/// Exchanges waiting for a partner in the one pairing stage (the sniff default is 10 000
/// for one capture; the node's pods share this one).
const MAX_PENDING: usize = 8192;
/// First wait before a failed capture is tried again; doubled up to [`MAX_BACKOFF`].
const BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A capture that ran this long before failing starts its back-off again from the start.
const HEALTHY_RUN: Duration = Duration::from_secs(30);

/// Where a pod's capture stands.
enum Slot {
    /// `failures`: failures in a row before it started.
    Running { capture: Capture, failures: u32 },
    /// Failed: started again at `next` if the pod is still recorded.
    Retrying { failures: u32, next: Instant },
    /// Beyond `max_pods`: started when a capture ends.
    Skipped,
}

/// The node's pod captures.
pub struct Inspector {
    settings: Settings,
    max_pods: usize,
    feed: Feed,
    /// The workload names of the node's pods, by address: what every capture's metrics
    /// name, kept current from the records.
    workloads: Arc<Workloads>,
    pairing: Option<Pairing>,
    metrics: Arc<InspectMetrics>,
    records_dir: PathBuf,
    /// The pods to capture, by container id, as the records last said.
    wanted: BTreeMap<String, Target>,
    slots: BTreeMap<String, (Target, Slot)>,
}

impl Inspector {
    /// Registers the request, shadow and capture metrics into `registry` and starts the
    /// pairing stage; no capture runs until [`Inspector::reconcile`] is given the records.
    pub fn start(
        opts: &InspectOptions,
        ring: Arc<Ring>,
        registry: &Mutex<Registry>,
        records_dir: PathBuf,
    ) -> Result<Inspector, InspectError> {
        if opts.max_pods == 0 {
            return Err(InspectError::NoPods);
        }
        if opts.max_flows == 0 {
            return Err(InspectError::NoFlows);
        }
        let metrics = Arc::new(InspectMetrics::default());
        let serve_metrics = {
            let mut reg = registry.lock().map_err(|_| InspectError::Registry)?;
            metrics.register(&mut reg);
            interceptor_serve::metrics::Metrics::register(&mut reg)
        };
        let workloads = Arc::new(Workloads::new());
        let feed = Feed::with_workloads(ring, &serve_metrics, workloads.clone());
        let pairing = if opts.shadow {
            let cfg = shadow::pair::Config {
                max_pending: MAX_PENDING,
                ..shadow::pair::Config::default()
            };
            Some(
                Pairing::start(
                    cfg,
                    shadow::diff::Options::default(),
                    &feed,
                    metrics.pairing_dropped.clone(),
                )
                .map_err(InspectError::Pairing)?,
            )
        } else {
            None
        };
        Ok(Inspector {
            settings: Settings {
                filter: opts.filter.clone(),
                max_flows: opts.max_flows,
            },
            max_pods: opts.max_pods,
            feed,
            workloads,
            pairing,
            metrics,
            records_dir,
            wanted: BTreeMap::new(),
            slots: BTreeMap::new(),
        })
    }

    /// Brings the captures in line with the records: new pods are captured, pods whose
    /// record went (or changed address) are no longer; every record's addresses name its
    /// workload in all captures' metrics, the gone ones' no more.
    pub fn reconcile(&mut self, records: &[PodRecord]) {
        if self.workloads.replace(
            records
                .iter()
                .flat_map(|r| {
                    std::iter::once(r.ip)
                        .chain(r.ips.iter().copied())
                        .map(|ip| (ip, r.name.as_str()))
                })
                .filter(|(ip, _)| !ip.is_unspecified()),
        ) {
            tracing::debug!(
                "inspect: {} pod addresses name workloads",
                self.workloads.len()
            );
        }
        self.wanted = records
            .iter()
            .filter(|r| matches!(r.mode.as_str(), "iptables" | "ebpf") && !r.ip.is_unspecified())
            .map(|r| {
                (
                    r.container_id.clone(),
                    Target {
                        container_id: r.container_id.clone(),
                        namespace: r.namespace.clone(),
                        name: r.name.clone(),
                        ip: r.ip,
                    },
                )
            })
            .collect();
        let gone: Vec<String> = self
            .slots
            .iter()
            .filter(|(id, (t, _))| self.wanted.get(*id) != Some(t))
            .map(|(id, _)| id.clone())
            .collect();
        // Every stop flag first, then the joins: the captures wind down together.
        let mut stopping = Vec::new();
        for id in gone {
            if let Some((t, slot)) = self.slots.remove(&id) {
                if let Slot::Running { capture: c, .. } = slot {
                    c.signal_stop();
                    stopping.push(c);
                } else {
                    tracing::info!("inspect: {} is gone; no longer captured", t.label());
                }
            }
        }
        for c in stopping {
            self.forget_health(&c.target);
            let label = c.target.label();
            match c.join() {
                Ok(()) => tracing::info!("inspect: {label} is gone; its capture stopped"),
                Err(e) => tracing::info!("inspect: {label} is gone; its capture had ended: {e}"),
            }
        }
        let new: Vec<Target> = self
            .wanted
            .iter()
            .filter(|(id, _)| !self.slots.contains_key(*id))
            .map(|(_, t)| t.clone())
            .collect();
        for t in new {
            self.slots.insert(
                t.container_id.clone(),
                (
                    t,
                    Slot::Retrying {
                        failures: 0,
                        next: Instant::now(),
                    },
                ),
            );
        }
        self.poll();
    }

    /// Notices captures that ended, and starts those that are due (new, retrying, or
    /// skipped while there is room). Cheap: called every turn of the agent's loop.
    pub fn poll(&mut self) {
        let now = Instant::now();
        let ended: Vec<String> = self
            .slots
            .iter()
            .filter(
                |(_, (_, s))| matches!(s, Slot::Running { capture, .. } if capture.is_finished()),
            )
            .map(|(id, _)| id.clone())
            .collect();
        for id in ended {
            let Some((
                t,
                Slot::Running {
                    capture: c,
                    failures,
                },
            )) = self.slots.remove(&id)
            else {
                continue;
            };
            self.forget_health(&t);
            let ran = c.started.elapsed();
            let interface = c.interface.clone();
            let why = match c.join() {
                Err(e) => e,
                Ok(()) => CaptureError::Ended,
            };
            self.metrics.failures.inc();
            // The record is checked now: a pod deleted ends its capture before its record
            // goes, and such a capture is not tried again.
            let recorded = self.records_dir.join(format!("{id}.json")).exists();
            tracing::warn!(
                "inspect: the capture of {} on {interface} failed: {why}{}",
                t.label(),
                if recorded {
                    "; trying again"
                } else {
                    "; the pod is gone"
                }
            );
            if recorded {
                let failures = if ran >= HEALTHY_RUN {
                    1
                } else {
                    failures.saturating_add(1)
                };
                self.slots.insert(
                    id,
                    (
                        t,
                        Slot::Retrying {
                            failures,
                            next: now + backoff(failures),
                        },
                    ),
                );
            } else {
                self.wanted.remove(&id);
            }
        }
        let mut running = self
            .slots
            .values()
            .filter(|(_, s)| matches!(s, Slot::Running { .. }))
            .count();
        let due: Vec<String> = self
            .slots
            .iter()
            .filter(|(_, (_, s))| match s {
                Slot::Retrying { next, .. } => *next <= now,
                Slot::Skipped => true,
                Slot::Running { .. } => false,
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let Some((t, slot)) = self.slots.remove(&id) else {
                continue;
            };
            if running >= self.max_pods {
                if !matches!(slot, Slot::Skipped) {
                    tracing::warn!(
                        "inspect: {} not captured: --inspect-max-pods {} captures run",
                        t.label(),
                        self.max_pods
                    );
                }
                self.slots.insert(id, (t, Slot::Skipped));
                continue;
            }
            let failures = match slot {
                Slot::Retrying { failures, .. } => failures,
                _ => 0,
            };
            let pairing = self.pairing.as_ref().and_then(Pairing::sink);
            match Capture::start(&t, &self.settings, &self.feed, pairing) {
                Ok(c) => {
                    tracing::info!(
                        "inspect: capturing {} ({}) on {}",
                        t.label(),
                        t.ip,
                        c.interface
                    );
                    if let Ok(mut h) = self.metrics.healths.lock() {
                        h.insert((t.namespace.clone(), t.name.clone()), c.health.clone());
                    }
                    running += 1;
                    self.slots.insert(
                        id,
                        (
                            t,
                            Slot::Running {
                                capture: c,
                                failures,
                            },
                        ),
                    );
                }
                Err(e) => {
                    self.metrics.failures.inc();
                    let failures = failures.saturating_add(1);
                    let wait = backoff(failures);
                    tracing::warn!(
                        "inspect: cannot capture {}: {e}; trying again in {}s",
                        t.label(),
                        wait.as_secs()
                    );
                    self.slots.insert(
                        id,
                        (
                            t,
                            Slot::Retrying {
                                failures,
                                next: now + wait,
                            },
                        ),
                    );
                }
            }
        }
        let mut by_state: BTreeMap<&'static str, i64> = BTreeMap::new();
        for (_, s) in self.slots.values() {
            let state = match s {
                Slot::Running { .. } => "running",
                Slot::Retrying { .. } => "retrying",
                Slot::Skipped => "skipped",
            };
            *by_state.entry(state).or_default() += 1;
        }
        self.metrics.set_captures(&by_state);
    }

    /// Stops every capture, then the pairing stage (which reports what still waits).
    pub fn stop(mut self) {
        let slots = std::mem::take(&mut self.slots);
        let running: Vec<Capture> = slots
            .into_values()
            .filter_map(|(_, s)| match s {
                Slot::Running { capture, .. } => Some(capture),
                _ => None,
            })
            .collect();
        for c in &running {
            c.signal_stop();
        }
        for c in running {
            let _ = c.join();
        }
        if let Some(p) = self.pairing.take() {
            p.finish();
        }
    }

    fn forget_health(&self, t: &Target) {
        if let Ok(mut h) = self.metrics.healths.lock() {
            h.remove(&(t.namespace.clone(), t.name.clone()));
        }
    }
}

/// The wait after the `failures`th failure in a row: 1 s, 2 s, 4 s, … 30 s.
fn backoff(failures: u32) -> Duration {
    BACKOFF
        .saturating_mul(1u32 << failures.saturating_sub(1).min(5))
        .min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_thirty_seconds() {
        let secs: Vec<u64> = (1..=8).map(|f| backoff(f).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
    }
}
