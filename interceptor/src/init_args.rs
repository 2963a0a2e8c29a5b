//! `init` and `cleanup`: istio-iptables' flags, names and environment variables as istio
//! defines them (`tools/istio-iptables/pkg/cmd/root.go`), turned into the interception
//! library's [`IstioFlags`] and [`InitOptions`].

use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, ValueEnum};

use interceptor_intercept::config::IstioFlags;
use interceptor_intercept::init::{Compat, InitOptions, Mechanism};

/// The interception mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MechanismArg {
    /// istio-iptables' rules.
    Iptables,
    /// sockops + cgroup programs + sk_lookup.
    Ebpf,
}

#[derive(Args, Clone, Debug)]
pub struct InitArgs {
    /// Interception mechanism.
    #[arg(long = "mode", value_enum, default_value = "iptables")]
    pub mode: MechanismArg,
    /// cgroup (v2) whose sockets the eBPF mechanism intercepts.
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// eBPF mode: turn on the programs' debug logs and print them until interrupted.
    #[arg(long = "debug")]
    pub debug: bool,
    #[command(flatten)]
    pub flags: IstioArgs,
    #[command(flatten)]
    pub compat: CompatArgs,
}

/// The rest of the arguments the sidecar injector gives istio-init.
#[derive(Args, Clone, Debug, Default)]
pub struct CompatArgs {
    /// Change nothing (with --run-validation: only validate, as the istio-cni validation
    /// container does).
    #[arg(long = "skip-rule-apply", env = "SKIP_RULE_APPLY", action = ArgAction::Set, num_args = 0..=1,
          default_value = "false", default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub skip_rule_apply: bool,
    /// Only remove the rules (same as `interceptor cleanup`).
    #[arg(long = "cleanup-only", env = "CLEANUP_ONLY", action = ArgAction::Set, num_args = 0..=1,
          default_value = "false", default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub cleanup_only: bool,
    /// Accepted for istio-iptables compatibility: `init` always reconciles existing rules.
    #[arg(long = "reconcile", env = "RECONCILE", action = ArgAction::Set, num_args = 0..=1,
          default_value = "true", default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub reconcile: bool,
    /// Accepted for istio-iptables compatibility: `init` always applies the full ruleset.
    #[arg(long = "force-apply", env = "FORCE_APPLY", action = ArgAction::Set, num_args = 0..=1,
          default_value = "false", default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub force_apply: bool,
    /// istio's native nftables rules: not supported (use --force-iptables-binary nft).
    #[arg(long = "native-nftables", env = "NATIVE_NFTABLES", action = ArgAction::Set, num_args = 0..=1,
          default_value = "false", default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub native_nftables: bool,
    /// Network namespace (a path like /proc/PID/ns/net or /var/run/netns/NAME) to work in.
    #[arg(
        long = "network-namespace",
        env = "NETWORK_NAMESPACE",
        value_name = "PATH"
    )]
    pub network_namespace: Option<PathBuf>,
    /// istio log levels (`default:debug` or `debug`): sets this command's log level.
    #[arg(long = "log_output_level", value_name = "LEVELS")]
    pub log_output_level: Option<String>,
    /// Accepted for istio-iptables compatibility; logs stay plain text.
    #[arg(long = "log_as_json")]
    pub log_as_json: bool,
}

/// istio-iptables' flags, as `interceptor init` (and `cleanup`, which needs the same
/// settings to find the rules `init` put in the built-in chains) takes them.
#[derive(Args, Clone, Debug)]
pub struct IstioArgs {
    /// Port to which all outbound TCP traffic is redirected (the proxy's outbound listener).
    #[arg(
        short = 'p',
        long = "envoy-port",
        value_name = "PORT",
        default_value = "15001"
    )]
    pub envoy_port: String,
    /// Port to which all inbound TCP traffic is redirected.
    #[arg(
        short = 'z',
        long = "inbound-capture-port",
        env = "INBOUND_CAPTURE_PORT",
        value_name = "PORT",
        default_value = "15006"
    )]
    pub inbound_capture_port: String,
    /// The HBONE tunnel port: inbound traffic to it is never captured.
    #[arg(
        short = 'e',
        long = "inbound-tunnel-port",
        env = "INBOUND_TUNNEL_PORT",
        value_name = "PORT",
        default_value = "15008"
    )]
    pub inbound_tunnel_port: String,
    /// Comma-separated UIDs whose traffic is never redirected (the proxy's).
    #[arg(
        short = 'u',
        long = "proxy-uid",
        env = "PROXY_UID",
        value_name = "UIDS",
        default_value = "1337"
    )]
    pub proxy_uid: String,
    /// Comma-separated GIDs whose traffic is never redirected; defaults to the UIDs.
    #[arg(
        short = 'g',
        long = "proxy-gid",
        env = "PROXY_GID",
        value_name = "GIDS"
    )]
    pub proxy_gid: Option<String>,
    /// Inbound interception mode: REDIRECT or TPROXY.
    #[arg(
        short = 'm',
        long = "istio-inbound-interception-mode",
        env = "ISTIO_INBOUND_INTERCEPTION_MODE",
        value_name = "MODE",
        default_value = "REDIRECT"
    )]
    pub interception_mode: String,
    /// Packet mark used in TPROXY mode.
    #[arg(
        short = 't',
        long = "istio-inbound-tproxy-mark",
        env = "ISTIO_INBOUND_TPROXY_MARK",
        value_name = "MARK",
        default_value = "1337"
    )]
    pub tproxy_mark: String,
    /// Routing table used in TPROXY mode.
    #[arg(
        short = 'r',
        long = "istio-inbound-tproxy-route-table",
        env = "ISTIO_INBOUND_TPROXY_ROUTE_TABLE",
        value_name = "TABLE",
        default_value = "133"
    )]
    pub tproxy_route_table: String,
    /// Inbound ports to capture: `*` for all, a comma-separated list, or empty for none.
    #[arg(
        short = 'b',
        long = "istio-inbound-ports",
        env = "ISTIO_INBOUND_PORTS",
        value_name = "PORTS",
        default_value = "*"
    )]
    pub inbound_ports: String,
    /// Inbound ports left alone when `-b '*'`.
    #[arg(
        short = 'd',
        long = "istio-local-exclude-ports",
        env = "ISTIO_LOCAL_EXCLUDE_PORTS",
        value_name = "PORTS",
        default_value = "22,15090,15021,15020"
    )]
    pub local_exclude_ports: String,
    /// Interfaces whose traffic is never captured, either way.
    #[arg(
        short = 'c',
        long = "istio-exclude-interfaces",
        env = "ISTIO_EXCLUDE_INTERFACES",
        value_name = "IFACES",
        default_value = ""
    )]
    pub exclude_interfaces: String,
    /// Outbound destinations to capture: `*`, a comma-separated CIDR list, or empty for none.
    #[arg(
        short = 'i',
        long = "istio-service-cidr",
        env = "ISTIO_SERVICE_CIDR",
        value_name = "CIDRS",
        default_value = "*"
    )]
    pub service_cidr: String,
    /// Outbound destinations never captured.
    #[arg(
        short = 'x',
        long = "istio-service-exclude-cidr",
        env = "ISTIO_SERVICE_EXCLUDE_CIDR",
        value_name = "CIDRS",
        default_value = ""
    )]
    pub service_exclude_cidr: String,
    /// Outbound ports always captured.
    #[arg(
        short = 'q',
        long = "istio-outbound-ports",
        env = "ISTIO_OUTBOUND_PORTS",
        value_name = "PORTS",
        default_value = ""
    )]
    pub outbound_ports: String,
    /// Outbound ports never captured.
    #[arg(
        short = 'o',
        long = "istio-local-outbound-ports-exclude",
        env = "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE",
        value_name = "PORTS",
        default_value = ""
    )]
    pub local_outbound_ports_exclude: String,
    /// Virtual interfaces (VMs) whose inbound traffic is treated as outbound.
    #[arg(
        short = 'k',
        long = "kube-virt-interfaces",
        env = "KUBE_VIRT_INTERFACES",
        value_name = "IFACES",
        default_value = ""
    )]
    pub kube_virt_interfaces: String,
    /// Print the iptables-restore input and change nothing.
    #[arg(short = 'n', long = "dry-run", env = "DRY_RUN", action = ArgAction::Set, num_args = 0..=1,
          default_value = "false", default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub dry_run: bool,
    /// Send DNS (port 53) to the agent's resolver on 15053.
    #[arg(long = "redirect-dns", env = "ISTIO_META_DNS_CAPTURE", action = ArgAction::Set,
          num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub redirect_dns: bool,
    /// With --redirect-dns, capture DNS to every address, not only the configured servers.
    #[arg(long = "capture-all-dns", env = "CAPTURE_ALL_DNS", action = ArgAction::Set, num_args = 0..=1, default_value = "false",
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub capture_all_dns: bool,
    /// Drop packets conntrack finds INVALID instead of letting them reset connections.
    #[arg(long = "drop-invalid", env = "INVALID_DROP", action = ArgAction::Set, num_args = 0..=1,
          default_value = "false", default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub drop_invalid: bool,
    /// Dual-stack pod: write IPv6 rules when the pod has any IPv6 address.
    #[arg(long = "dual-stack", env = "ISTIO_DUAL_STACK", action = ArgAction::Set, num_args = 0..=1,
          default_value = "false", default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub dual_stack: bool,
    /// After applying, prove that redirection works (exit 126 when it does not).
    #[arg(long = "run-validation", env = "RUN_VALIDATION", action = ArgAction::Set, num_args = 0..=1,
          default_value = "false", default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub run_validation: bool,
    /// Original-destination port the validation probe connects to.
    #[arg(
        long = "iptables-probe-port",
        env = "IPTABLES_PROBE_PORT",
        value_name = "PORT",
        default_value = "15002"
    )]
    pub iptables_probe_port: String,
    /// How long the validation waits (Go-style duration: 5s, 500ms, 1m).
    #[arg(
        long = "probe-timeout",
        env = "PROBE_TIMEOUT",
        value_name = "DURATION",
        default_value = "5s"
    )]
    pub probe_timeout: String,
    /// Also write ip6tables rules (otherwise only when the pod's address is IPv6).
    #[arg(long = "ipv6")]
    pub ipv6: bool,
    /// DNS servers whose traffic --redirect-dns captures (default: nameservers in /etc/resolv.conf).
    #[arg(long = "dns-servers", value_name = "LIST")]
    pub dns_servers: Option<String>,
    /// Which iptables variant to use (default: the one holding rules, else the system's).
    #[arg(
        long = "force-iptables-binary",
        alias = "iptables-backend",
        value_name = "legacy|nft",
        env = "FORCE_IPTABLES_BINARY"
    )]
    pub force_iptables_binary: Option<String>,
}


impl From<&IstioArgs> for IstioFlags {
    fn from(a: &IstioArgs) -> IstioFlags {
        IstioFlags {
            envoy_port: a.envoy_port.clone(),
            inbound_capture_port: a.inbound_capture_port.clone(),
            inbound_tunnel_port: a.inbound_tunnel_port.clone(),
            proxy_uid: a.proxy_uid.clone(),
            proxy_gid: a.proxy_gid.clone(),
            interception_mode: a.interception_mode.clone(),
            tproxy_mark: a.tproxy_mark.clone(),
            tproxy_route_table: a.tproxy_route_table.clone(),
            inbound_ports: a.inbound_ports.clone(),
            local_exclude_ports: a.local_exclude_ports.clone(),
            exclude_interfaces: a.exclude_interfaces.clone(),
            service_cidr: a.service_cidr.clone(),
            service_exclude_cidr: a.service_exclude_cidr.clone(),
            outbound_ports: a.outbound_ports.clone(),
            local_outbound_ports_exclude: a.local_outbound_ports_exclude.clone(),
            kube_virt_interfaces: a.kube_virt_interfaces.clone(),
            dry_run: a.dry_run.clone(),
            redirect_dns: a.redirect_dns.clone(),
            capture_all_dns: a.capture_all_dns.clone(),
            drop_invalid: a.drop_invalid.clone(),
            dual_stack: a.dual_stack.clone(),
            run_validation: a.run_validation.clone(),
            iptables_probe_port: a.iptables_probe_port.clone(),
            probe_timeout: a.probe_timeout.clone(),
            ipv6: a.ipv6.clone(),
            dns_servers: a.dns_servers.clone(),
            force_iptables_binary: a.force_iptables_binary.clone(),
        }
    }
}

impl From<&CompatArgs> for Compat {
    fn from(a: &CompatArgs) -> Compat {
        Compat {
            skip_rule_apply: a.skip_rule_apply.clone(),
            cleanup_only: a.cleanup_only.clone(),
            reconcile: a.reconcile.clone(),
            force_apply: a.force_apply.clone(),
            native_nftables: a.native_nftables.clone(),
            network_namespace: a.network_namespace.clone(),
            log_output_level: a.log_output_level.clone(),
            log_as_json: a.log_as_json.clone(),
        }
    }
}

impl From<&InitArgs> for InitOptions {
    fn from(a: &InitArgs) -> InitOptions {
        InitOptions {
            mode: match a.mode {
                MechanismArg::Iptables => Mechanism::Iptables,
                MechanismArg::Ebpf => Mechanism::Ebpf,
            },
            cgroup: a.cgroup.clone(),
            debug: a.debug,
            flags: IstioFlags::from(&a.flags),
            compat: Compat::from(&a.compat),
        }
    }
}
