//! `init` and `cleanup`: istio-iptables' flags, names and environment variables as istio
//! defines them (`tools/istio-iptables/pkg/cmd/root.go`), turned into the interception
//! library's [`IstioFlags`] and [`InitOptions`].
//!
//! clap only collects strings here; the library checks them and names the flag and value
//! it rejects. So every value-taking istio flag takes the next argument whatever it looks
//! like (`allow_hyphen_values`, as Go's pflag does): `-p -1` reaches the port check
//! (exit 1, "invalid value '-1' for --envoy-port") instead of clap's "unexpected
//! argument". Where a value came from the environment, [`init_options`] records the
//! variable so that the check names it instead of the flag.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, Command, FromArgMatches, ValueEnum};

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
    /// cgroup (v2) whose sockets the eBPF mechanism intercepts (default: this process's
    /// own). `pod`, for an init container: the pod's cgroup, the parent of this process's
    /// own, found by id in the host's cgroup tree (--host-cgroup-root). `./pod` names a
    /// folder called pod.
    #[arg(long = "cgroup", value_name = "PATH|pod")]
    pub cgroup: Option<PathBuf>,
    /// With --cgroup pod: where the host's /sys/fs/cgroup is mounted (default:
    /// /host/sys/fs/cgroup, else the whole cgroup2 tree in sight when this process shares
    /// the host's cgroup namespace).
    #[arg(long = "host-cgroup-root", value_name = "PATH", requires = "cgroup")]
    pub host_cgroup_root: Option<PathBuf>,
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
    /// Write the log as JSON lines (one object per line) instead of plain text.
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
        allow_hyphen_values = true,
        value_name = "PORT",
        default_value = "15001"
    )]
    pub envoy_port: String,
    /// Port to which all inbound TCP traffic is redirected.
    #[arg(
        short = 'z',
        long = "inbound-capture-port",
        env = "INBOUND_CAPTURE_PORT",
        allow_hyphen_values = true,
        value_name = "PORT",
        default_value = "15006"
    )]
    pub inbound_capture_port: String,
    /// The HBONE tunnel port: inbound traffic to it is never captured.
    #[arg(
        short = 'e',
        long = "inbound-tunnel-port",
        env = "INBOUND_TUNNEL_PORT",
        allow_hyphen_values = true,
        value_name = "PORT",
        default_value = "15008"
    )]
    pub inbound_tunnel_port: String,
    /// Comma-separated UIDs whose traffic is never redirected (the proxy's).
    #[arg(
        short = 'u',
        long = "proxy-uid",
        env = "PROXY_UID",
        allow_hyphen_values = true,
        value_name = "UIDS",
        default_value = "1337"
    )]
    pub proxy_uid: String,
    /// Comma-separated GIDs whose traffic is never redirected; defaults to the UIDs.
    #[arg(
        short = 'g',
        long = "proxy-gid",
        env = "PROXY_GID",
        allow_hyphen_values = true,
        value_name = "GIDS"
    )]
    pub proxy_gid: Option<String>,
    /// Inbound interception mode: REDIRECT or TPROXY.
    #[arg(
        short = 'm',
        long = "istio-inbound-interception-mode",
        env = "ISTIO_INBOUND_INTERCEPTION_MODE",
        allow_hyphen_values = true,
        value_name = "MODE",
        default_value = "REDIRECT"
    )]
    pub interception_mode: String,
    /// Packet mark used in TPROXY mode.
    #[arg(
        short = 't',
        long = "istio-inbound-tproxy-mark",
        env = "ISTIO_INBOUND_TPROXY_MARK",
        allow_hyphen_values = true,
        value_name = "MARK",
        default_value = "1337"
    )]
    pub tproxy_mark: String,
    /// Routing table used in TPROXY mode.
    #[arg(
        short = 'r',
        long = "istio-inbound-tproxy-route-table",
        env = "ISTIO_INBOUND_TPROXY_ROUTE_TABLE",
        allow_hyphen_values = true,
        value_name = "TABLE",
        default_value = "133"
    )]
    pub tproxy_route_table: String,
    /// Inbound ports to capture: `*` for all, a comma-separated list, or empty for none.
    #[arg(
        short = 'b',
        long = "istio-inbound-ports",
        env = "ISTIO_INBOUND_PORTS",
        allow_hyphen_values = true,
        value_name = "PORTS",
        default_value = "*"
    )]
    pub inbound_ports: String,
    /// Inbound ports left alone when `-b '*'`.
    #[arg(
        short = 'd',
        long = "istio-local-exclude-ports",
        env = "ISTIO_LOCAL_EXCLUDE_PORTS",
        allow_hyphen_values = true,
        value_name = "PORTS",
        default_value = "22,15090,15021,15020"
    )]
    pub local_exclude_ports: String,
    /// Interfaces whose traffic is never captured, either way.
    #[arg(
        short = 'c',
        long = "istio-exclude-interfaces",
        env = "ISTIO_EXCLUDE_INTERFACES",
        allow_hyphen_values = true,
        value_name = "IFACES",
        default_value = ""
    )]
    pub exclude_interfaces: String,
    /// Outbound destinations to capture: `*`, a comma-separated CIDR list, or empty for none.
    #[arg(
        short = 'i',
        long = "istio-service-cidr",
        env = "ISTIO_SERVICE_CIDR",
        allow_hyphen_values = true,
        value_name = "CIDRS",
        default_value = "*"
    )]
    pub service_cidr: String,
    /// Outbound destinations never captured.
    #[arg(
        short = 'x',
        long = "istio-service-exclude-cidr",
        env = "ISTIO_SERVICE_EXCLUDE_CIDR",
        allow_hyphen_values = true,
        value_name = "CIDRS",
        default_value = ""
    )]
    pub service_exclude_cidr: String,
    /// Outbound ports always captured.
    #[arg(
        short = 'q',
        long = "istio-outbound-ports",
        env = "ISTIO_OUTBOUND_PORTS",
        allow_hyphen_values = true,
        value_name = "PORTS",
        default_value = ""
    )]
    pub outbound_ports: String,
    /// Outbound ports never captured.
    #[arg(
        short = 'o',
        long = "istio-local-outbound-ports-exclude",
        env = "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE",
        allow_hyphen_values = true,
        value_name = "PORTS",
        default_value = ""
    )]
    pub local_outbound_ports_exclude: String,
    /// Virtual interfaces (VMs) whose inbound traffic is treated as outbound.
    #[arg(
        short = 'k',
        long = "kube-virt-interfaces",
        env = "KUBE_VIRT_INTERFACES",
        allow_hyphen_values = true,
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
        allow_hyphen_values = true,
        value_name = "PORT",
        default_value = "15002"
    )]
    pub iptables_probe_port: String,
    /// How long the validation waits (Go-style duration: 5s, 500ms, 1m).
    #[arg(
        long = "probe-timeout",
        env = "PROBE_TIMEOUT",
        allow_hyphen_values = true,
        value_name = "DURATION",
        default_value = "5s"
    )]
    pub probe_timeout: String,
    /// Also write ip6tables rules (otherwise only when the pod's address is IPv6).
    #[arg(long = "ipv6")]
    pub ipv6: bool,
    /// DNS servers whose traffic --redirect-dns captures (default: nameservers in /etc/resolv.conf).
    #[arg(long = "dns-servers", allow_hyphen_values = true, value_name = "LIST")]
    pub dns_servers: Option<String>,
    /// Which iptables variant to use (default: the one holding rules, else the system's).
    #[arg(
        long = "force-iptables-binary",
        alias = "iptables-backend",
        allow_hyphen_values = true,
        value_name = "legacy|nft",
        env = "FORCE_IPTABLES_BINARY"
    )]
    pub force_iptables_binary: Option<String>,
    /// eBPF mode: no socket fast path. The app's and the proxy's loopback sockets are not
    /// paired and sk_msg is not attached, so their data takes the TCP/IP stack; needed by a
    /// proxy that reads with splice(2) (HAProxy's `option splice-*`), which does not see
    /// data the fast path passes. Redirection and the original destination are unchanged.
    /// The iptables mode has no fast path: there it changes nothing.
    #[arg(long = "no-socket-fast-path", action = ArgAction::Set, num_args = 0..=1, value_name = "BOOL",
          default_value = "false", default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub no_socket_fast_path: bool,
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
            dry_run: a.dry_run,
            redirect_dns: a.redirect_dns,
            capture_all_dns: a.capture_all_dns,
            drop_invalid: a.drop_invalid,
            dual_stack: a.dual_stack,
            run_validation: a.run_validation,
            iptables_probe_port: a.iptables_probe_port.clone(),
            probe_timeout: a.probe_timeout.clone(),
            ipv6: a.ipv6,
            dns_servers: a.dns_servers.clone(),
            force_iptables_binary: a.force_iptables_binary.clone(),
            no_socket_fast_path: a.no_socket_fast_path,
            env_sources: BTreeMap::new(),
        }
    }
}

impl From<&CompatArgs> for Compat {
    fn from(a: &CompatArgs) -> Compat {
        Compat {
            skip_rule_apply: a.skip_rule_apply,
            cleanup_only: a.cleanup_only,
            reconcile: a.reconcile,
            force_apply: a.force_apply,
            native_nftables: a.native_nftables,
            network_namespace: a.network_namespace.clone(),
            log_output_level: a.log_output_level.clone(),
            log_as_json: a.log_as_json,
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
            host_cgroup_root: a.host_cgroup_root.clone(),
            debug: a.debug,
            flags: IstioFlags::from(&a.flags),
            compat: Compat::from(&a.compat),
        }
    }
}

/// The arguments of `cmd` (the `init` or `cleanup` command) whose value clap took from
/// their environment variable: long flag (`--inbound-capture-port`) to variable
/// (`INBOUND_CAPTURE_PORT`).
fn env_sources(cmd: &Command, m: &ArgMatches) -> BTreeMap<String, String> {
    cmd.get_arguments()
        .filter(|a| m.value_source(a.get_id().as_str()) == Some(ValueSource::EnvVariable))
        .filter_map(|a| {
            let long = a.get_long()?;
            let var = a.get_env()?;
            Some((format!("--{long}"), var.to_string_lossy().into_owned()))
        })
        .collect()
}

/// `init`'s or `cleanup`'s options from their matches (`cmd` is that subcommand), with
/// [`IstioFlags::env_sources`] filled in.
pub fn init_options(cmd: &Command, m: &ArgMatches) -> Result<InitOptions, clap::Error> {
    let args = InitArgs::from_arg_matches(m)?;
    let mut opts = InitOptions::from(&args);
    opts.flags.env_sources = env_sources(cmd, m);
    Ok(opts)
}

/// Flag parsing: names, short letters, value forms and environment variables as istio's.
/// What the values mean once checked is `interceptor_intercept::config`'s to test.
#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};
    use interceptor_intercept::config::{
        Config, ConfigError, HostFacts, InboundPorts, InterceptionMode, IstioEnv,
    };
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::Mutex;
    use std::time::Duration;

    #[derive(Parser)]
    struct TestCli {
        #[command(flatten)]
        init: InitArgs,
    }

    /// clap reads the process environment: the tests here parse under this lock, so a
    /// variable one of them sets is never seen by another. (Other modules' parsing tests do
    /// not take it; the variables set here are all of flags those pass explicitly.)
    static ENV: Mutex<()> = Mutex::new(());

    /// Parses `argv` (after `init`) with `vars` set in the environment.
    fn parse_env(argv: &[&str], vars: &[(&str, &str)]) -> Result<InitOptions, clap::Error> {
        let _guard = ENV.lock().unwrap_or_else(|e| e.into_inner());
        for (k, v) in vars {
            std::env::set_var(k, v);
        }
        let cmd = TestCli::command();
        let got = cmd
            .clone()
            .try_get_matches_from(std::iter::once("init").chain(argv.iter().copied()))
            .and_then(|m| init_options(&cmd, &m));
        for (k, _) in vars {
            std::env::remove_var(k);
        }
        got
    }

    fn parse(argv: &[&str]) -> Result<InitOptions, clap::Error> {
        parse_env(argv, &[])
    }

    fn config(o: &InitOptions) -> Result<Config, ConfigError> {
        Config::from_args(&o.flags, &IstioEnv::default(), &HostFacts::default())
    }

    #[test]
    fn short_and_long_flags_match_istio() {
        let o = parse(&[
            "-p",
            "16001",
            "-z",
            "16006",
            "-e",
            "16008",
            "-u",
            "1000,1001",
            "-g",
            "2000",
            "-m",
            "TPROXY",
            "-t",
            "7",
            "-r",
            "99",
            "-b",
            "80,8080",
            "-d",
            "9",
            "-c",
            "eth9",
            "-i",
            "10.0.0.0/8,fd00::/8",
            "-x",
            "10.1.0.0/16",
            "-q",
            "3306",
            "-o",
            "25",
            "-k",
            "virt0",
            "-n",
        ])
        .unwrap();
        let c = config(&o).unwrap();
        assert_eq!(
            (c.proxy_port, c.inbound_capture_port, c.inbound_tunnel_port),
            (16001, 16006, 16008)
        );
        assert_eq!(c.proxy_uids, vec!["1000", "1001"]);
        assert_eq!(c.proxy_gids, vec!["2000"]);
        assert_eq!(
            (c.mode, c.tproxy_mark, c.tproxy_route_table),
            (InterceptionMode::Tproxy, 7, 99)
        );
        assert_eq!(
            c.inbound_ports,
            InboundPorts::Only(vec!["80".into(), "8080".into()])
        );
        assert_eq!(c.inbound_ports_exclude, vec!["9"]);
        assert_eq!(c.exclude_interfaces, vec!["eth9"]);
        assert_eq!(
            (c.outbound_include.v4.len(), c.outbound_include.v6.len()),
            (1, 1)
        );
        assert_eq!(c.outbound_exclude.v4.len(), 1);
        assert_eq!(c.outbound_ports_include, vec!["3306"]);
        assert_eq!(c.outbound_ports_exclude, vec!["25"]);
        assert_eq!(c.kube_virt_interfaces, vec!["virt0"]);
        assert!(c.dry_run);

        let l = parse(&[
            "--envoy-port",
            "1",
            "--inbound-capture-port",
            "2",
            "--inbound-tunnel-port",
            "3",
            "--proxy-uid",
            "4",
            "--proxy-gid",
            "5",
            "--istio-inbound-interception-mode",
            "REDIRECT",
            "--istio-inbound-tproxy-mark",
            "6",
            "--istio-inbound-tproxy-route-table",
            "7",
            "--istio-inbound-ports",
            "",
            "--istio-local-exclude-ports",
            "",
            "--istio-exclude-interfaces",
            "",
            "--istio-service-cidr",
            "",
            "--istio-service-exclude-cidr",
            "",
            "--istio-outbound-ports",
            "",
            "--istio-local-outbound-ports-exclude",
            "",
            "--kube-virt-interfaces",
            "",
            "--dry-run",
            "--redirect-dns",
            "--capture-all-dns",
            "--drop-invalid",
            "--dual-stack",
            "--run-validation",
            "--iptables-probe-port",
            "9",
            "--probe-timeout",
            "1m30s",
            "--ipv6",
            "--dns-servers",
            "10.0.0.10,fd00::a",
            "--iptables-backend",
            "nft",
        ])
        .unwrap();
        let c = config(&l).unwrap();
        assert_eq!(
            (c.proxy_port, c.inbound_capture_port, c.inbound_tunnel_port),
            (1, 2, 3)
        );
        assert_eq!(
            (c.proxy_uids[0].as_str(), c.proxy_gids[0].as_str()),
            ("4", "5")
        );
        assert_eq!(
            (c.tproxy_mark, c.tproxy_route_table, c.probe_port),
            (6, 7, 9)
        );
        assert_eq!(c.inbound_ports, InboundPorts::None);
        assert!(!c.outbound_include.wildcard && c.outbound_include.v4.is_empty());
        assert!(
            c.redirect_dns
                && c.capture_all_dns
                && c.drop_invalid
                && c.dual_stack
                && c.run_validation
                && c.ipv6
                && c.dry_run
        );
        assert_eq!(c.probe_timeout, Duration::from_secs(90));
        assert_eq!(
            c.dns_servers_v4,
            vec!["10.0.0.10".parse::<Ipv4Addr>().unwrap()]
        );
        assert_eq!(
            c.dns_servers_v6,
            vec!["fd00::a".parse::<Ipv6Addr>().unwrap()]
        );
        assert_eq!(c.backend.map(|b| b.name()), Some("nft"));
        assert!(l.flags.env_sources.is_empty());
    }

    #[test]
    fn boolean_flags_take_an_optional_value_as_in_istio() {
        let f = |argv: &[&str]| parse(argv).unwrap().flags;
        assert!(f(&["--redirect-dns"]).redirect_dns);
        assert!(f(&["--redirect-dns=true"]).redirect_dns);
        assert!(!f(&["--redirect-dns=false"]).redirect_dns);
        assert!(!f(&["--dry-run=false"]).dry_run);
        assert!(f(&["-n"]).dry_run);
        assert!(!f(&["--run-validation=0"]).run_validation);
        // A bare boolean does not swallow the next flag.
        let o = f(&["--redirect-dns", "-p", "16001"]);
        assert!(o.redirect_dns && o.envoy_port == "16001");
        let c = parse(&["--skip-rule-apply", "--cleanup-only=false"])
            .unwrap()
            .compat;
        assert!(c.skip_rule_apply && !c.cleanup_only && c.reconcile);
    }

    #[test]
    fn values_that_look_like_flags_reach_the_checks() {
        // clap would call these "unexpected argument" (exit 2); istio's pflag takes them as
        // the value, and the check names the flag.
        let o = parse(&[
            "-p",
            "-1",
            "-t",
            "-7",
            "--iptables-probe-port",
            "-2",
            "-x",
            "",
        ])
        .unwrap();
        assert_eq!(
            (o.flags.envoy_port.as_str(), o.flags.tproxy_mark.as_str()),
            ("-1", "-7")
        );
        let e = config(&o).unwrap_err();
        assert_eq!((e.flag.as_str(), e.value.as_str()), ("--envoy-port", "-1"));
        // An empty value followed by another flag stays empty.
        let o = parse(&["-x", "", "-b", "*"]).unwrap();
        assert_eq!(
            (
                o.flags.service_exclude_cidr.as_str(),
                o.flags.inbound_ports.as_str()
            ),
            ("", "*")
        );
    }

    #[test]
    fn environment_variables_fill_flags_and_name_bad_values() {
        let o = parse_env(
            &["-b", "8082"],
            &[
                ("INBOUND_CAPTURE_PORT", "16006"),
                ("ISTIO_INBOUND_PORTS", "8081"),
                ("ISTIO_META_DNS_CAPTURE", "true"),
                ("INVALID_DROP", "1"),
                ("ISTIO_DUAL_STACK", "false"),
            ],
        )
        .unwrap();
        // The command line wins over the environment.
        assert_eq!(o.flags.inbound_ports, "8082");
        assert_eq!(o.flags.inbound_capture_port, "16006");
        assert!(o.flags.redirect_dns && o.flags.drop_invalid && !o.flags.dual_stack);
        assert_eq!(
            o.flags
                .env_sources
                .get("--inbound-capture-port")
                .map(String::as_str),
            Some("INBOUND_CAPTURE_PORT")
        );
        assert!(!o.flags.env_sources.contains_key("--istio-inbound-ports"));
        assert!(!o.flags.env_sources.contains_key("--envoy-port"));

        let o = parse_env(&[], &[("INBOUND_CAPTURE_PORT", "70000")]).unwrap();
        assert_eq!(
            config(&o).unwrap_err().to_string(),
            "invalid value '70000' for INBOUND_CAPTURE_PORT: port out of range 1-65535"
        );
        let o = parse_env(&[], &[("PROXY_UID", "1337,,")]).unwrap();
        let e = config(&o).unwrap_err();
        assert_eq!((e.flag.as_str(), e.value.as_str()), ("PROXY_UID", "1337,,"));
        // The same value on the command line is named by its flag.
        let o = parse_env(&["-z", "70000"], &[("INBOUND_CAPTURE_PORT", "15006")]).unwrap();
        assert_eq!(config(&o).unwrap_err().flag, "--inbound-capture-port");
        // --envoy-port has no variable in istio.
        let o = parse_env(&[], &[("ENVOY_PORT", "1")]).unwrap();
        assert_eq!(o.flags.envoy_port, "15001");
    }

    #[test]
    fn no_socket_fast_path_is_a_switch_and_names_a_bad_value() {
        let f = |argv: &[&str]| parse(argv).unwrap().flags.no_socket_fast_path;
        assert!(!f(&["--mode", "ebpf"]));
        assert!(f(&["--mode", "ebpf", "--no-socket-fast-path"]));
        assert!(f(&["--no-socket-fast-path=true", "--mode", "ebpf"]));
        assert!(!f(&["--no-socket-fast-path=false"]));
        // A bare switch does not swallow the next flag.
        let o = parse(&["--no-socket-fast-path", "-p", "16001"]).unwrap();
        assert!(o.flags.no_socket_fast_path && o.flags.envoy_port == "16001");
        let c = config(&parse(&["--no-socket-fast-path"]).unwrap()).unwrap();
        assert!(!c.socket_fast_path);
        assert!(config(&parse(&[]).unwrap()).unwrap().socket_fast_path);
        // A value that is no boolean: clap's error names the flag and the value.
        let e = parse(&["--no-socket-fast-path=maybe"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("'maybe'") && e.contains("--no-socket-fast-path"),
            "{e}"
        );
        // Not istio's: no environment variable turns it on.
        let o = parse_env(&[], &[("NO_SOCKET_FAST_PATH", "true")]).unwrap();
        assert!(!o.flags.no_socket_fast_path);
    }

    #[test]
    fn host_cgroup_root_goes_with_cgroup() {
        let o = parse(&[
            "--mode",
            "ebpf",
            "--cgroup",
            "pod",
            "--host-cgroup-root",
            "/h",
        ])
        .unwrap();
        assert_eq!(o.cgroup.as_deref(), Some(std::path::Path::new("pod")));
        assert_eq!(
            o.host_cgroup_root.as_deref(),
            Some(std::path::Path::new("/h"))
        );
        let e = parse(&["--mode", "ebpf", "--host-cgroup-root", "/h"]).unwrap_err();
        assert_eq!(
            e.kind(),
            clap::error::ErrorKind::MissingRequiredArgument,
            "{e}"
        );
    }
}
