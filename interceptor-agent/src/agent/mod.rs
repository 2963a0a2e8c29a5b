//! `interceptor agent`: the DaemonSet's process.
//!
//! The agent's life, as a state machine:
//!
//! 1. **Preflight** — the CNI conf dir holds a parsable primary config, the bin dir
//!    exists, the state dir can be made, the listen address binds; eBPF mode: the cgroup
//!    root is cgroup v2 and bpffs is mounted. Any failure is an error naming the path,
//!    and nothing has been written.
//! 2. **Install** — eBPF mode: the node's programs attached at the cgroup root and pinned
//!    (`ebpf::node`); the binary copied into the bin dir; our entry last in the primary
//!    conflist. A failing step undoes the ones before it. `/readyz` turns 200.
//! 3. **Run** — woken by inotify (conf dir, records) or every `reconcile_interval`: the
//!    entry put back when the primary CNI rewrote its file; a reconcile pass over the
//!    plugin's records (`reconcile`); the CNI request log counted (`requests`); with
//!    `--inspect`, the pods' captures started and stopped with their records
//!    (`crate::inspect`).
//! 4. **Uninstall** (SIGTERM/SIGINT) — the entry out (the conflist byte for byte as it
//!    was), the binary removed, eBPF mode: every pin of the node's programs removed, which
//!    detaches them. Pod records stay: a new agent picks them up.

mod install;
mod metrics;
mod reconcile;
mod watch;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use interceptor_cni::{ConflistError, PluginConf};
use interceptor_intercept::ebpf::{node, target};
use interceptor_serve::events::{Limits, Ring};
use interceptor_serve::{ServeError, Server, State};

pub use install::{InstallError, Installer, CONFLIST_STATE};
pub use metrics::Metrics;
pub use reconcile::{Pass, Reconciler};

use crate::inspect::{InspectError, InspectOptions, Inspector};
use crate::intercept::{ArgsParser, Mode};
use crate::record::Records;
use crate::requests::RequestCounter;

/// The plugin's log, under the state dir.
pub const PLUGIN_LOG: &str = "cni.log";

/// Everything `interceptor agent` is told.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub mode: Mode,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dir: PathBuf,
    /// Namespaces meshed when the runtime passes no pod annotations.
    pub namespaces: Vec<String>,
    pub listen: String,
    pub state_dir: PathBuf,
    /// Never meshed, like kube-system.
    pub agent_namespace: String,
    pub reconcile_interval: Duration,
    /// eBPF mode: where the node's cgroup programs go (default: the cgroup v2 mount).
    pub cgroup_root: Option<PathBuf>,
    /// eBPF mode: the socket fast path for the pods the plugin meshes (the conflist's
    /// `socket_fast_path`; `false` gives them `--no-socket-fast-path`).
    pub socket_fast_path: bool,
    /// The executable installed as the plugin (normally /proc/self/exe).
    pub self_exe: PathBuf,
    pub parse: ArgsParser,
    /// `--inspect`: capture the recorded pods and serve the live view and their metrics.
    pub inspect: Option<InspectOptions>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("--cni-conf-dir {}: {source}", .dir.display())]
    ConfDir { dir: PathBuf, source: ConflistError },
    #[error(transparent)]
    Install(#[from] InstallError),
    #[error("--state-dir {}: {source}", .dir.display())]
    StateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("--listen {addr}: {source}")]
    Listen { addr: String, source: ServeError },
    #[error("eBPF mode: {0:#}")]
    Ebpf(anyhow::Error),
    #[error(transparent)]
    Watch(#[from] watch::WatchError),
    #[error(transparent)]
    Inspect(#[from] InspectError),
    #[error("uninstalling: {0}")]
    Uninstall(String),
}

impl AgentOptions {
    /// The plugin's conflist keys for this agent.
    pub fn plugin_conf(&self) -> PluginConf {
        PluginConf {
            mode: self.mode,
            namespaces: self.namespaces.clone(),
            state_dir: self.state_dir.clone(),
            log_file: Some(self.state_dir.join(PLUGIN_LOG)),
            socket_fast_path: self.socket_fast_path,
            ..PluginConf::default()
        }
    }

    pub fn installer(&self) -> Installer {
        Installer::new(
            &self.cni_conf_dir,
            &self.cni_bin_dir,
            &self.state_dir,
            &self.self_exe,
            &self.plugin_conf(),
            &self.agent_namespace,
        )
    }
}

/// Runs the agent until `stop` is set; then uninstalls and returns.
pub fn run(opts: &AgentOptions, stop: &AtomicBool) -> Result<(), AgentError> {
    // 1. Preflight: nothing written before every check passed.
    let installer = opts.installer();
    let primary = installer.preflight().map_err(|e| match e {
        InstallError::Conflist(source) => AgentError::ConfDir {
            dir: opts.cni_conf_dir.clone(),
            source,
        },
        other => AgentError::Install(other),
    })?;
    let cgroup_root = match opts.mode {
        Mode::Ebpf => {
            let root = match &opts.cgroup_root {
                Some(r) => r.clone(),
                None => target::cgroup2_mount().map_err(AgentError::Ebpf)?,
            };
            node::check_machine(&root).map_err(AgentError::Ebpf)?;
            Some(root)
        }
        Mode::Iptables => None,
    };
    let records = Records::new(&opts.state_dir);
    let state_err = |source| AgentError::StateDir {
        dir: opts.state_dir.clone(),
        source,
    };
    std::fs::create_dir_all(records.dir()).map_err(state_err)?;
    let mut requests = RequestCounter::open(&opts.state_dir).map_err(state_err)?;

    // With --inspect, the live view too: the pods' captures feed its event ring.
    let ring = opts
        .inspect
        .as_ref()
        .map(|_| Arc::new(Ring::new(Limits::default())));
    let state = match &ring {
        Some(r) => State::new().with_events(r.clone()),
        None => State::new(),
    };
    let metrics = Metrics::default();
    if let Ok(mut reg) = state.registry().lock() {
        metrics.register(&mut reg);
    }
    let server =
        Server::bind(&opts.listen, state.clone()).map_err(|source| AgentError::Listen {
            addr: opts.listen.clone(),
            source,
        })?;
    tracing::info!(
        "agent: {} mode, primary CNI config {}, metrics on http://{}/metrics",
        opts.mode.as_str(),
        primary.display(),
        server.local_addr()
    );

    // 2. Install, undoing on failure.
    if let Some(root) = &cgroup_root {
        let attached = node::attach(root).map_err(AgentError::Ebpf)?;
        tracing::info!(
            "agent: eBPF programs {} at cgroup {}, pinned under {}",
            if attached.fresh {
                "attached"
            } else {
                "updated in place"
            },
            attached.cgroup_root.display(),
            attached.dir.display()
        );
    }
    let installed = match installer.install() {
        Ok(i) => i,
        Err(e) => {
            if cgroup_root.is_some() {
                let _ = node::detach();
            }
            return Err(e.into());
        }
    };
    tracing::info!(
        "agent: plugin installed as {} and added to {}",
        installer.binary_path().display(),
        installed.path.display()
    );
    let watch = match watch::Watch::new(&opts.cni_conf_dir, &records.dir()) {
        Ok(w) => w,
        Err(e) => {
            let _ = uninstall(&installer, cgroup_root.is_some());
            return Err(e.into());
        }
    };
    let mut inspector = match (&opts.inspect, ring) {
        (Some(o), Some(ring)) => match Inspector::start(o, ring, state.registry(), records.dir()) {
            Ok(i) => Some(i),
            Err(e) => {
                let _ = uninstall(&installer, cgroup_root.is_some());
                return Err(e.into());
            }
        },
        _ => None,
    };
    state.ready().store(true, Ordering::Relaxed);

    // 3. Run.
    let reconciler = Reconciler {
        records: &records,
        parse: opts.parse,
        metrics: &metrics,
        ebpf: cgroup_root.is_some(),
    };
    let mut next_pass = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= next_pass {
            let p = reconciler.pass();
            tracing::debug!("reconcile: {p:?}");
            if let Some(i) = inspector.as_mut() {
                // After the pass: records of pods whose namespace is gone are dropped.
                i.reconcile(&inspect_targets(&records));
            }
            next_pass = now + opts.reconcile_interval;
        }
        if let Err(e) = requests.poll() {
            tracing::error!("counting CNI requests: {e}");
        }
        metrics.update_requests(&requests.counts());
        // Short waits: a signal may land on another thread and not interrupt this one.
        let changes = watch.wait(
            next_pass
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(250)),
        );
        if changes.conf_dir {
            match installer.ensure_installed() {
                Ok(Some(done)) => tracing::info!(
                    "agent: the primary CNI config changed; our entry is back in {}",
                    done.path.display()
                ),
                Ok(None) => {}
                Err(e) => tracing::error!(
                    "agent: re-installing into {}: {e}",
                    opts.cni_conf_dir.display()
                ),
            }
        }
        if changes.pods {
            next_pass = Instant::now();
        }
        if let Some(i) = inspector.as_mut() {
            i.poll();
        }
    }

    // 4. Uninstall.
    state.ready().store(false, Ordering::Relaxed);
    if let Some(i) = inspector {
        i.stop();
    }
    let result = uninstall(&installer, cgroup_root.is_some());
    server.shutdown();
    result
}

/// The records `--inspect` captures; unreadable ones are logged by the reconcile pass.
fn inspect_targets(records: &Records) -> Vec<crate::record::PodRecord> {
    match records.list() {
        Ok(l) => l.into_iter().filter_map(Result::ok).collect(),
        Err(e) => {
            tracing::error!("inspect: {e}");
            Vec::new()
        }
    }
}

fn uninstall(installer: &Installer, ebpf: bool) -> Result<(), AgentError> {
    let mut errors = Vec::new();
    match installer.uninstall() {
        Ok(done) => tracing::info!("agent: plugin uninstalled ({done:?})"),
        Err(e) => errors.push(e.to_string()),
    }
    if ebpf {
        match node::detach() {
            Ok(_) => tracing::info!(
                "agent: eBPF programs detached and unpinned ({})",
                node::NODE_DIR
            ),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(AgentError::Uninstall(errors.join("; ")))
    }
}
