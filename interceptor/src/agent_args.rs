//! `interceptor agent`'s flags, turned into `interceptor_agent::agent::AgentOptions`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use interceptor_agent::agent::AgentOptions;
use interceptor_agent::inspect::InspectOptions;
use interceptor_agent::intercept::Mode;

use crate::cni_plugin;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AgentMode {
    /// istio-iptables' rules in each pod's network namespace.
    Iptables,
    /// The node's eBPF programs (attached once at the cgroup root), registered per pod.
    Ebpf,
}

#[derive(Args, Clone, Debug)]
pub struct AgentArgs {
    /// How the plugin intercepts pods.
    #[arg(long, value_enum, default_value = "iptables")]
    pub mode: AgentMode,
    /// The runtime's CNI configuration directory (the primary conflist is the first file).
    #[arg(long, value_name = "DIR", default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// The runtime's CNI plugin directory, where the plugin binary goes.
    #[arg(long, value_name = "DIR", default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// Namespaces meshed when the runtime passes no pod annotations (comma-separated).
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "")]
    pub namespaces: Vec<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:15014")]
    pub listen: String,
    /// Where the plugin records pods and the agent keeps its state (the same directory
    /// for both: on the node, or mounted from it).
    #[arg(long, value_name = "DIR", default_value = "/var/run/interceptor")]
    pub state_dir: PathBuf,
    /// The agent's own namespace, never meshed.
    #[arg(
        long,
        value_name = "NAME",
        env = "POD_NAMESPACE",
        default_value = "interceptor-system"
    )]
    pub agent_namespace: String,
    /// Seconds between checks of every recorded pod's interception.
    #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = parse_secs)]
    pub reconcile_interval: Duration,
    /// eBPF mode: the cgroup v2 directory the node's programs attach to (default: the
    /// cgroup2 mount point, i.e. the root).
    #[arg(long, value_name = "DIR")]
    pub cgroup_root: Option<PathBuf>,
    /// eBPF mode: no socket fast path for the pods the plugin meshes (the conflist's
    /// `socket_fast_path: false`; each pod gets `init`'s --no-socket-fast-path): their
    /// loopback sockets are not paired, for sidecars that read with splice(2). The
    /// iptables mode has no fast path: there it changes nothing.
    #[arg(long)]
    pub no_socket_fast_path: bool,
    /// Sniff the recorded pods on their veths: the live view (/, /events) and the request
    /// and shadow metrics on --listen, every exchange tagged with its pod.
    #[arg(long, help_heading = "Inspection of the node's pods")]
    pub inspect: bool,
    /// tcpdump filter applied on every pod's veth.
    #[arg(
        long,
        value_name = "FILTER",
        default_value = "tcp",
        requires = "inspect",
        help_heading = "Inspection of the node's pods"
    )]
    pub inspect_filter: String,
    /// Pair mirrored requests (Host `…-shadow`) with their primaries, across all pods.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set, requires = "inspect", help_heading = "Inspection of the node's pods")]
    pub inspect_shadow: bool,
    /// Most pods captured at once; more wait (counted as skipped) until one goes.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 256,
        requires = "inspect",
        help_heading = "Inspection of the node's pods"
    )]
    pub inspect_max_pods: usize,
    /// Most TCP flows tracked per pod.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 16_384,
        requires = "inspect",
        help_heading = "Inspection of the node's pods"
    )]
    pub inspect_max_flows: usize,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

impl From<&AgentArgs> for AgentOptions {
    fn from(a: &AgentArgs) -> AgentOptions {
        AgentOptions {
            mode: match a.mode {
                AgentMode::Iptables => Mode::Iptables,
                AgentMode::Ebpf => Mode::Ebpf,
            },
            cni_conf_dir: a.cni_conf_dir.clone(),
            cni_bin_dir: a.cni_bin_dir.clone(),
            namespaces: a
                .namespaces
                .iter()
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect(),
            listen: a.listen.clone(),
            state_dir: a.state_dir.clone(),
            agent_namespace: a.agent_namespace.clone(),
            reconcile_interval: a.reconcile_interval,
            cgroup_root: a.cgroup_root.clone(),
            socket_fast_path: !a.no_socket_fast_path,
            self_exe: PathBuf::from("/proc/self/exe"),
            parse: cni_plugin::parse_init_args,
            inspect: a.inspect.then(|| InspectOptions {
                filter: a.inspect_filter.clone(),
                max_pods: a.inspect_max_pods,
                max_flows: a.inspect_max_flows,
                shadow: a.inspect_shadow,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct TestCli {
        #[command(flatten)]
        agent: AgentArgs,
    }

    fn parse(argv: &[&str]) -> Result<AgentOptions, clap::Error> {
        TestCli::try_parse_from(std::iter::once("agent").chain(argv.iter().copied()))
            .map(|c| AgentOptions::from(&c.agent))
    }

    #[test]
    fn no_socket_fast_path_reaches_the_conflist_entry() {
        let on = parse(&["--mode", "ebpf"]).unwrap();
        assert!(on.socket_fast_path && on.plugin_conf().socket_fast_path);
        let off = parse(&["--mode", "ebpf", "--no-socket-fast-path"]).unwrap();
        assert!(!off.socket_fast_path);
        let conf = off.plugin_conf();
        assert!(!conf.socket_fast_path);
        assert_eq!(
            conf.to_json()["socket_fast_path"],
            serde_json::Value::Bool(false)
        );
        // A plain switch: a value is an error that names it.
        let e = parse(&["--no-socket-fast-path=yes"])
            .expect_err("a value is refused")
            .to_string();
        assert!(
            e.contains("'yes'") && e.contains("--no-socket-fast-path"),
            "{e}"
        );
    }
}
