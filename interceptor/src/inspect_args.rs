//! `sniff --pod` and `sniff --serve`: inspection on the node. `--pod` finds the interface
//! that leads to each pod and tags every record with the pod it was seen for; `--serve`
//! serves the live view, its event stream and the metrics while the chosen output still
//! writes stdout.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};

use interceptor_serve::events::{Limits, Ring};
use interceptor_serve::feed::Feed;
use interceptor_serve::metrics::Metrics;
use interceptor_serve::pods::{self, PodRecord};
use interceptor_serve::{Server, State};
use interceptor_sniff::output::json::Json;
use interceptor_sniff::pipeline::health::Health;
use interceptor_sniff::pipeline::{self, Options};
use interceptor_sniff::pod::{locate, Pod, PodTags};
use interceptor_sniff::shadow::Shadow;
use interceptor_sniff::sink::Sink;

/// The `sniff` flags of inspection on the node.
#[derive(clap::Args, Clone, Debug, Default)]
#[command(next_help_heading = "Inspection on the node")]
pub struct InspectArgs {
    /// Capture the traffic of this pod: its IP, or NAMESPACE/NAME of a pod the node agent
    /// knows (repeatable). The interface is found from the node's routes (instead of -d);
    /// records carry `pod` (JSON) or `pod …` (the T line). With -I, records are only tagged.
    #[arg(
        long = "pod",
        value_name = "IP|NAMESPACE/NAME",
        conflicts_with = "device"
    )]
    pub pod: Vec<String>,

    /// Where the node agent keeps its pod records (for NAMESPACE/NAME and pod names).
    #[arg(long = "pod-records", value_name = "DIR", default_value = pods::DEFAULT_DIR)]
    pub pod_records: PathBuf,

    /// Serve the live web view (/), its event stream (/events), /metrics, /healthz and
    /// /readyz on ADDR (e.g. 127.0.0.1:9090; port 0 picks one, printed on stderr). The
    /// output on stdout is unchanged. The server stays up after the capture ends (a file
    /// read, -n reached) until SIGINT or SIGTERM, so a browser can still look.
    #[arg(long = "serve", value_name = "ADDR")]
    pub serve: Option<String>,
}

/// What `--pod` makes of the capture.
pub struct PodCapture {
    /// The interface to capture on: the pod's veth, or `any` for several pods.
    pub device: Option<String>,
    /// A filter that keeps `any` to the pods' veths, combined with the user's.
    pub filter: String,
    pub tags: Arc<PodTags>,
}

impl InspectArgs {
    /// Resolves `--pod`: each pod's address (records for NAMESPACE/NAME), and unless the
    /// packets come from a file, the veth that leads to it. None without `--pod`.
    pub fn pods(&self, from_file: bool, user_filter: &str) -> Result<Option<PodCapture>> {
        if self.pod.is_empty() {
            return Ok(None);
        }
        let records = pods::read_all(&self.pod_records)?;
        let mut found: Vec<Pod> = Vec::new();
        let mut ifindexes: Vec<u32> = Vec::new();
        for p in &self.pod {
            let (ip, rec) = resolve(p, &records, &self.pod_records)?;
            let interface = if from_file {
                String::new()
            } else {
                let link = locate::locate(ip)?;
                if let Some(r) = rec.filter(|r| !r.netns.is_empty()) {
                    // The agent knows the pod's namespace: make sure the veth's other end
                    // is there (when we may look: entering it needs CAP_SYS_ADMIN).
                    if let Ok(false) = locate::netns_has_ip(std::path::Path::new(&r.netns), ip) {
                        bail!(
                            "--pod {p}: {ip} is not in the pod's network namespace {}: the agent's record is stale",
                            r.netns
                        );
                    }
                }
                if !ifindexes.contains(&link.ifindex) {
                    ifindexes.push(link.ifindex);
                }
                link.interface
            };
            found.push(Pod {
                ip,
                name: rec.map(|r| r.name.clone()),
                namespace: rec.map(|r| r.namespace.clone()),
                interface,
            });
        }
        let (device, filter) = if from_file {
            (None, user_filter.to_string())
        } else if let [one] = &found[..] {
            (Some(one.interface.clone()), user_filter.to_string())
        } else if ifindexes.len() == 1 {
            (
                found.first().map(|p| p.interface.clone()),
                user_filter.to_string(),
            )
        } else {
            // Several veths: one capture on `any`, kept to them by interface index (the
            // v2 cooked header carries it), so traffic also seen on a bridge or the uplink
            // is not reported twice.
            let only: Vec<String> = ifindexes.iter().map(|i| format!("ifindex {i}")).collect();
            let pods = only.join(" or ");
            let filter = if user_filter.trim().is_empty() {
                pods
            } else {
                format!("({pods}) and ({user_filter})")
            };
            (Some("any".to_string()), filter)
        };
        Ok(Some(PodCapture {
            device,
            filter,
            tags: Arc::new(PodTags::new(found)),
        }))
    }
}

/// A `--pod` value as an address and the agent's record of it, if any.
fn resolve<'r>(
    value: &str,
    records: &'r [PodRecord],
    dir: &std::path::Path,
) -> Result<(IpAddr, Option<&'r PodRecord>)> {
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Ok((ip, records.iter().find(|r| r.addresses().any(|a| a == ip))));
    }
    let Some((ns, name)) = value
        .split_once('/')
        .filter(|(n, m)| !n.is_empty() && !m.is_empty())
    else {
        bail!("--pod {value}: neither an IP address nor NAMESPACE/NAME");
    };
    let rec = records
        .iter()
        .find(|r| r.namespace == ns && r.name == name)
        .ok_or_else(|| {
            anyhow!(
                "--pod {value}: the node agent has no record of this pod in {} ({} pods known); is the agent running on this node, and the pod here?",
                dir.display(),
                records.len()
            )
        })?;
    Ok((rec.ip, Some(rec)))
}

/// A running `--serve`: the server, what feeds it, and the capture's health counters.
pub struct Serving {
    server: Server,
    ring: Arc<Ring>,
    metrics: Metrics,
    health: Arc<Health>,
    pods: Option<Arc<PodTags>>,
}

impl Serving {
    /// Binds `--serve` and says where on stderr (also with -q: with port 0 this line is
    /// the only way to learn the port).
    pub fn start(addr: &str, pods: Option<Arc<PodTags>>) -> Result<Serving> {
        let ring = Arc::new(Ring::new(Limits::default()));
        let state = State::new().with_events(ring.clone());
        let health = Arc::new(Health::default());
        let metrics = {
            let mut registry = state
                .registry()
                .lock()
                .map_err(|_| anyhow!("the metrics registry is poisoned"))?;
            let m = Metrics::register(&mut registry);
            Metrics::register_capture(&mut registry, health.clone());
            m
        };
        let server = Server::bind(addr, state).map_err(|e| anyhow!("--serve {e}"))?;
        eprintln!(
            "interceptor sniff: serving the live view and metrics on http://{}/",
            server.local_addr()
        );
        Ok(Serving {
            server,
            ring,
            metrics,
            health,
            pods,
        })
    }

    /// The feed of the ring and the metrics; its observer goes to the shadow comparison,
    /// and the sink around the chosen output.
    pub fn feed(&self) -> Feed {
        Feed::new(self.ring.clone(), &self.metrics, self.pods.clone())
    }

    /// Runs the capture into `sink`, then, unless a signal ended it, keeps serving until
    /// one comes.
    pub fn run(
        self,
        opts: &Options,
        sink: Box<dyn Sink>,
        stop: &AtomicBool,
        quiet: bool,
    ) -> Result<()> {
        self.server.state().ready().store(true, Ordering::Relaxed);
        let result = pipeline::run_with(opts, sink, stop, Some(&self.health))
            .map_err(crate::sniff_args::flagged);
        if result.is_ok() && !stop.load(Ordering::Relaxed) {
            if !quiet {
                eprintln!(
                    "interceptor sniff: capture ended; still serving http://{}/ until interrupted",
                    self.server.local_addr()
                );
            }
            crate::signal::wait_for_interrupt(stop);
        }
        self.server.shutdown();
        result
    }
}

/// The decorations `--pod` and `--serve` put on the outputs.
pub struct Decor<'a> {
    pub pods: Option<&'a Arc<PodTags>>,
    pub feed: Option<Feed>,
}

impl Decor<'_> {
    /// The shadow comparison also reports to the feed.
    pub fn shadow<W: std::io::Write>(&self, s: Shadow<W>) -> Shadow<W> {
        match &self.feed {
            Some(f) => s.observe(f.observer()),
            None => s,
        }
    }

    /// The `--json` writer hands the feed each exchange object it renders, so the live view
    /// shares those bytes rather than rendering the exchange again.
    pub fn json<W: std::io::Write>(&self, j: Json<W>) -> Json<W> {
        match &self.feed {
            Some(f) => j.tap(f.json_tap()),
            None => j,
        }
    }

    /// The output, teed into the feed with `--serve`.
    pub fn wrap(self, sink: Box<dyn Sink>) -> Box<dyn Sink> {
        match self.feed {
            Some(f) => Box::new(f.sink(sink)),
            None => sink,
        }
    }
}
