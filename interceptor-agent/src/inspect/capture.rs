//! One pod's capture: the sniff pipeline on the pod's host-side veth, on a thread of its
//! own with a stop flag of its own, its records tagged with the pod.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use interceptor_serve::feed::Feed;
use interceptor_sniff::pipeline::health::Health;
use interceptor_sniff::pipeline::{self, Input, Options};
use interceptor_sniff::pod::locate::{self, LocateError};
use interceptor_sniff::pod::{Pod, PodTags};
use interceptor_sniff::sink::{Discard, Sink};

use super::pairing::ToPairing;

/// tcpdump's snap length: a veth carries GSO packets of up to 64 KiB and more.
const SNAPLEN: i32 = 262_144;
/// The kernel ring of one pod's capture: a few MiB per pod keeps 256 pods under 1 GiB.
const RING_BYTES: i32 = 2 << 20;
/// Bodies kept per message, as `sniff`'s default.
const MAX_BODY: usize = 16 * 1024;
/// A flow without packets for this long is forgotten.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// A recorded pod to capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub container_id: String,
    pub namespace: String,
    pub name: String,
    pub ip: IpAddr,
}

impl Target {
    pub fn label(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn pod(&self, interface: String) -> Pod {
        Pod {
            ip: self.ip,
            name: Some(self.name.clone()),
            namespace: Some(self.namespace.clone()),
            interface,
        }
    }
}

/// How every pod is captured (`--inspect-filter`, `--inspect-max-flows`).
#[derive(Clone, Debug)]
pub struct Settings {
    pub filter: String,
    pub max_flows: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("finding its veth: {0}")]
    Locate(#[from] LocateError),
    #[error("starting its capture thread: {0}")]
    Spawn(std::io::Error),
    #[error("{0}")]
    Run(#[from] pipeline::Error),
    #[error("the capture ended by itself")]
    Ended,
    #[error("the capture thread panicked")]
    Panicked,
}

/// A running capture.
pub struct Capture {
    pub target: Target,
    pub interface: String,
    pub health: Arc<Health>,
    pub started: Instant,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<(), CaptureError>>,
}

impl Capture {
    /// Finds the pod's veth and starts capturing on it. Its records are tagged with the
    /// pod; its metrics name workloads from `feed`'s directory of the node's pods.
    pub fn start(
        target: &Target,
        settings: &Settings,
        feed: &Feed,
        pairing: Option<ToPairing>,
    ) -> Result<Capture, CaptureError> {
        let link = locate::locate(target.ip)?;
        // The pod's veth tags every record of the capture.
        let pods = vec![target.pod(link.interface.clone())];
        let feed = feed.for_pods(Some(Arc::new(PodTags::new(pods))));
        let sink: Box<dyn Sink> = match pairing {
            Some(p) => Box::new(feed.sink(Box::new(p))),
            None => Box::new(feed.sink(Box::new(Discard))),
        };
        let opts = Options {
            input: Input::Live {
                device: link.interface.clone(),
                snaplen: SNAPLEN,
                // The veth's traffic is all the pod's: no need to see other MACs.
                promisc: false,
                buffer: RING_BYTES,
            },
            filter: settings.filter.clone(),
            matcher: None,
            savefile: None,
            count: None,
            max_body: MAX_BODY,
            max_flows: settings.max_flows,
            idle_timeout: IDLE_TIMEOUT,
            quiet: true,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let health = Arc::new(Health::default());
        let thread = {
            let (stop, health) = (stop.clone(), health.clone());
            std::thread::Builder::new()
                .name(format!("inspect-{}", link.interface))
                .spawn(move || {
                    pipeline::run_with(&opts, sink, &stop, Some(&health))?;
                    if stop.load(Ordering::Relaxed) {
                        Ok(())
                    } else {
                        Err(CaptureError::Ended)
                    }
                })
                .map_err(CaptureError::Spawn)?
        };
        Ok(Capture {
            target: target.clone(),
            interface: link.interface,
            health,
            started: Instant::now(),
            stop,
            thread,
        })
    }

    /// The capture ended (failed, or stopped).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Asks the capture to stop; [`Capture::join`] waits for it.
    pub fn signal_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Waits for the thread; its outcome.
    pub fn join(self) -> Result<(), CaptureError> {
        self.thread.join().unwrap_or(Err(CaptureError::Panicked))
    }
}
