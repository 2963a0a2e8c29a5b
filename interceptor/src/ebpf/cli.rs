//! Command-line arguments of the eBPF mode, with istio-iptables' flag names where they
//! apply, and the three commands built on them.

use std::path::PathBuf;

/// Prints a line; a closed stdout (`| head`) must not turn finished work into a panic.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};

use super::settings::{parse_cidr_set, parse_cidrs, parse_ids, parse_port_set, parse_ports};
use super::{cleanup, load, logs, status, Settings, Target};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// sockops, cgroup and sk_lookup programs (no iptables rules)
    Ebpf,
}

/// istio-iptables' interception flags, as strings so errors can quote them.
#[derive(Args, Debug, Clone)]
pub struct InterceptArgs {
    /// Port the proxy's outbound listener uses
    #[arg(short = 'p', long = "envoy-port", default_value = "15001")]
    pub envoy_port: String,
    /// Port inbound traffic is sent to
    #[arg(short = 'z', long = "inbound-capture-port", default_value = "15006")]
    pub inbound_capture_port: String,
    /// Comma-separated uids of the proxy; their traffic is not intercepted
    #[arg(short = 'u', long = "proxy-uid", default_value = "1337")]
    pub proxy_uid: String,
    /// Comma-separated gids of the proxy; their traffic is not intercepted
    #[arg(short = 'g', long = "proxy-gid", default_value = "1337")]
    pub proxy_gid: String,
    /// Inbound ports captured, comma-separated, or `*` for all
    #[arg(short = 'b', long = "istio-inbound-ports", default_value = "*")]
    pub inbound_ports: String,
    /// Inbound ports never captured, comma-separated
    #[arg(
        short = 'd',
        long = "istio-local-exclude-ports",
        default_value = "15090,15021,15020"
    )]
    pub inbound_exclude_ports: String,
    /// Outbound destinations redirected, comma-separated CIDRs, or `*` for all
    #[arg(short = 'i', long = "istio-service-cidr", default_value = "*")]
    pub outbound_cidrs: String,
    /// Outbound destinations never redirected, comma-separated CIDRs
    #[arg(short = 'x', long = "istio-service-exclude-cidr", default_value = "")]
    pub outbound_exclude_cidrs: String,
    /// Outbound ports always redirected, comma-separated
    #[arg(short = 'q', long = "istio-outbound-ports", default_value = "")]
    pub outbound_ports: String,
    /// Outbound ports never redirected, comma-separated
    #[arg(
        short = 'o',
        long = "istio-local-outbound-ports-exclude",
        default_value = ""
    )]
    pub outbound_exclude_ports: String,
    /// Send DNS (port 53) to the proxy's DNS port, 15053
    #[arg(long = "redirect-dns")]
    pub redirect_dns: bool,

    // istio-iptables flags that only mean something with iptables rules.
    /// Inbound interception mode; only REDIRECT in eBPF mode
    #[arg(short = 'm', long = "istio-inbound-interception-mode")]
    pub inbound_interception_mode: Option<String>,
    #[arg(short = 't', long = "istio-inbound-tproxy-mark", hide = true)]
    pub tproxy_mark: Option<String>,
    #[arg(short = 'r', long = "istio-inbound-tproxy-route-table", hide = true)]
    pub tproxy_route_table: Option<String>,
    #[arg(short = 'k', long = "kube-virt-interfaces", hide = true)]
    pub kube_virt_interfaces: Option<String>,
    #[arg(short = 'c', long = "istio-exclude-interfaces", hide = true)]
    pub exclude_interfaces: Option<String>,
}

impl InterceptArgs {
    /// The eBPF settings these flags ask for, or an error naming the flag that cannot apply.
    pub fn to_settings(&self) -> Result<Settings> {
        if let Some(m) = &self.inbound_interception_mode {
            if !m.eq_ignore_ascii_case("REDIRECT") {
                bail!(
                    "-m/--istio-inbound-interception-mode `{m}` is not supported in eBPF mode: sk_lookup \
                     already keeps the original destination as TPROXY does; drop the flag, or use --mode iptables"
                );
            }
        }
        for (flag, v) in [
            ("-t/--istio-inbound-tproxy-mark", &self.tproxy_mark),
            (
                "-r/--istio-inbound-tproxy-route-table",
                &self.tproxy_route_table,
            ),
            ("-k/--kube-virt-interfaces", &self.kube_virt_interfaces),
            ("-c/--istio-exclude-interfaces", &self.exclude_interfaces),
        ] {
            if let Some(v) = v {
                bail!("{flag} `{v}` is not supported in eBPF mode; use --mode iptables for it");
            }
        }
        let port = |flag: &str, v: &str| -> Result<u16> {
            match v.trim().parse::<u16>() {
                Ok(p) if p != 0 => Ok(p),
                _ => bail!("{flag}: `{v}` is not a port (1-65535)"),
            }
        };
        let s = Settings {
            proxy_port: port("-p/--envoy-port", &self.envoy_port)?,
            inbound_capture_port: port("-z/--inbound-capture-port", &self.inbound_capture_port)?,
            proxy_uids: parse_ids("-u/--proxy-uid", &self.proxy_uid)?,
            proxy_gids: parse_ids("-g/--proxy-gid", &self.proxy_gid)?,
            inbound_ports: parse_port_set("-b/--istio-inbound-ports", &self.inbound_ports)?,
            inbound_exclude_ports: parse_ports(
                "-d/--istio-local-exclude-ports",
                &self.inbound_exclude_ports,
            )?,
            outbound_cidrs: parse_cidr_set("-i/--istio-service-cidr", &self.outbound_cidrs)?,
            outbound_exclude_cidrs: parse_cidrs(
                "-x/--istio-service-exclude-cidr",
                &self.outbound_exclude_cidrs,
            )?,
            outbound_ports: parse_ports("-q/--istio-outbound-ports", &self.outbound_ports)?,
            outbound_exclude_ports: parse_ports(
                "-o/--istio-local-outbound-ports-exclude",
                &self.outbound_exclude_ports,
            )?,
            redirect_dns: self.redirect_dns,
            ..Settings::default()
        };
        s.validate()?;
        Ok(s)
    }
}

/// Where eBPF interception applies.
#[derive(Args, Debug, Clone)]
pub struct EbpfTargetArgs {
    /// cgroup v2 directory whose processes are intercepted (default: this process's own)
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Interception mechanism
    #[arg(long, value_enum)]
    pub mode: Mode,
    #[command(flatten)]
    pub target: EbpfTargetArgs,
    #[command(flatten)]
    pub intercept: InterceptArgs,
    /// Enable the programs' debug logs and print them until interrupted
    #[arg(long)]
    pub debug: bool,
}

#[derive(Args, Debug)]
pub struct CleanupArgs {
    /// Interception mechanism
    #[arg(long, value_enum)]
    pub mode: Mode,
    #[command(flatten)]
    pub target: EbpfTargetArgs,
}

pub fn init(args: &InitArgs) -> Result<()> {
    let settings = args.intercept.to_settings()?;
    let target = Target::resolve(args.target.cgroup.as_deref())?;
    let mut loaded = load::init(&target, &settings, args.debug)?;
    say!(
        "ebpf: intercepting cgroup {} in netns cookie {}, pinned at {}",
        target.cgroup.display(),
        target.netns_cookie,
        loaded.pin_dir.display()
    );
    for (name, change) in &loaded.links {
        let what = match change {
            load::LinkChange::Created => "attached",
            load::LinkChange::Updated => "updated in place",
        };
        say!("ebpf: {name} {what}");
    }
    if args.debug {
        logs::follow(&mut loaded.ebpf)?;
    }
    Ok(())
}

pub fn cleanup(args: &CleanupArgs) -> Result<()> {
    let target = Target::resolve(args.target.cgroup.as_deref())?;
    match cleanup::cleanup(&target)? {
        Some(dir) => say!("ebpf: detached and unpinned {}", dir.display()),
        None => say!(
            "ebpf: nothing pinned for cgroup {} in this network namespace",
            target.cgroup.display()
        ),
    }
    Ok(())
}

pub fn status() -> Result<()> {
    say!("{}", status::render(&status::instances()?).trim_end());
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::ebpf::{CidrSet, PortSet};

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: InterceptArgs,
    }

    fn parse(args: &[&str]) -> Result<Settings> {
        let mut v = vec!["t"];
        v.extend_from_slice(args);
        T::try_parse_from(v)?.a.to_settings()
    }

    #[test]
    fn istio_flags_map_to_settings() {
        let s = parse(&[
            "-p",
            "15001",
            "-z",
            "15006",
            "-u",
            "1337",
            "-g",
            "1337,1338",
            "-b",
            "8080,9090",
            "-d",
            "15020",
            "-i",
            "10.96.0.0/12",
            "-x",
            "10.96.0.1/32",
            "-q",
            "3306",
            "-o",
            "6379",
            "--redirect-dns",
        ])
        .unwrap();
        assert_eq!(s.proxy_gids, vec![1337, 1338]);
        assert_eq!(s.inbound_ports, PortSet::List(vec![8080, 9090]));
        assert_eq!(
            s.outbound_cidrs,
            CidrSet::List(vec!["10.96.0.0/12".parse().unwrap()])
        );
        assert_eq!(s.outbound_ports, vec![3306]);
        assert_eq!(s.outbound_exclude_ports, vec![6379]);
        assert!(s.redirect_dns);
    }

    #[test]
    fn defaults_are_istios() {
        assert_eq!(parse(&[]).unwrap(), Settings::default());
    }

    #[test]
    fn iptables_only_flags_are_rejected_by_name() {
        let err = parse(&["-m", "TPROXY"]).unwrap_err().to_string();
        assert!(
            err.contains("-m/--istio-inbound-interception-mode") && err.contains("TPROXY"),
            "{err}"
        );
        let err = parse(&["-k", "eth1"]).unwrap_err().to_string();
        assert!(
            err.contains("-k/--kube-virt-interfaces") && err.contains("iptables"),
            "{err}"
        );
        assert!(parse(&["-m", "REDIRECT"]).is_ok());
    }

    #[test]
    fn bad_values_name_flag_and_value() {
        let err = parse(&["-p", "http"]).unwrap_err().to_string();
        assert!(
            err.contains("-p/--envoy-port") && err.contains("`http`"),
            "{err}"
        );
        let err = parse(&["-x", "10.0.0.0/40"]).unwrap_err().to_string();
        assert!(err.contains("-x/--istio-service-exclude-cidr"), "{err}");
    }
}
