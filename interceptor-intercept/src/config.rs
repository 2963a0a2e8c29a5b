//! The interception settings: istio-iptables' flags and environment variables, parsed and
//! checked into a [`Config`] that both the iptables and the eBPF mechanism read.
//!
//! Flag names, short letters, value syntax and meaning follow istio-iptables
//! (`tools/istio-iptables/pkg/cmd/root.go`, `tools/common/config`), so an istio-init
//! command line works unchanged. The defaults are not istio-iptables' empty ones but the
//! profile the sidecar injector passes (`-p 15001 -z 15006 -u 1337 -m REDIRECT -i '*'
//! -x "" -b '*' -d 15090,15021,15020` with port 22 excluded too), so `interceptor init`
//! with no flags sets up an ordinary sidecar.
//!
//! As in istio-iptables, each flag but `--envoy-port` can also come from the environment
//! variable named like it (`ISTIO_INBOUND_PORTS` for `--istio-inbound-ports`); DNS
//! capture, drop-invalid and dual-stack read `ISTIO_META_DNS_CAPTURE`, `INVALID_DROP` and
//! `ISTIO_DUAL_STACK`. The command line wins over the environment. Which variable a value
//! came from is the caller's knowledge ([`IstioFlags::env_sources`]).
//!
//! Every check names the flag (or, for a value taken from the environment, the variable)
//! and the value it rejects; nothing is applied before the whole configuration has been
//! checked.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};

/// How inbound connections reach the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterceptionMode {
    /// nat REDIRECT: the proxy sees the connection as addressed to itself.
    Redirect,
    /// mangle TPROXY: the proxy sees the original destination and the client's address.
    Tproxy,
}

/// Which iptables variant to drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Legacy,
    Nft,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Legacy => "legacy",
            Backend::Nft => "nft",
        }
    }
}

/// Inbound ports to capture (`-b`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InboundPorts {
    /// Empty list: no inbound capture.
    None,
    /// `*`: every port but the excluded ones.
    All,
    /// Only these ports (each a port or `first:last` range).
    Only(Vec<String>),
}

/// Outbound destinations to capture (`-i`), or to leave alone (`-x`), split by family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkRange {
    pub wildcard: bool,
    pub v4: Vec<IpNet>,
    pub v6: Vec<IpNet>,
}

impl NetworkRange {
    /// Whether a loopback network was named explicitly (then app-to-self over `lo` is captured).
    pub(crate) fn has_loopback(&self) -> bool {
        self.v4
            .iter()
            .chain(self.v6.iter())
            .any(|n| n.addr().is_loopback())
    }
}

/// Whose outbound traffic is captured, by owner group (`ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerGroups {
    /// true: capture every group except `values`; false: capture only `values`.
    pub except: bool,
    pub values: Vec<String>,
}

/// Everything `interceptor init` needs, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub proxy_port: u16,
    pub inbound_capture_port: u16,
    pub inbound_tunnel_port: u16,
    pub proxy_uids: Vec<String>,
    pub proxy_gids: Vec<String>,
    pub mode: InterceptionMode,
    pub tproxy_mark: u32,
    pub tproxy_route_table: u32,
    pub inbound_ports: InboundPorts,
    pub inbound_ports_exclude: Vec<String>,
    pub exclude_interfaces: Vec<String>,
    pub outbound_include: NetworkRange,
    pub outbound_exclude: NetworkRange,
    pub outbound_ports_include: Vec<String>,
    pub outbound_ports_exclude: Vec<String>,
    pub kube_virt_interfaces: Vec<String>,
    pub dry_run: bool,
    pub redirect_dns: bool,
    pub capture_all_dns: bool,
    pub drop_invalid: bool,
    pub dual_stack: bool,
    pub run_validation: bool,
    pub probe_port: u16,
    pub probe_timeout: Duration,
    pub owner_groups: OwnerGroups,
    pub loopback_cidr_v4: Ipv4Net,
    /// Write ip6tables rules too.
    pub ipv6: bool,
    pub dns_servers_v4: Vec<Ipv4Addr>,
    pub dns_servers_v6: Vec<Ipv6Addr>,
    /// Forced iptables variant; `None` detects it.
    pub backend: Option<Backend>,
    /// eBPF mode: pair the app's and the proxy's loopback sockets so that sk_msg passes
    /// data socket to socket (`--no-socket-fast-path` turns it off). The iptables mode has
    /// no such path: there it is off whatever this says.
    pub socket_fast_path: bool,
}

/// A rejected flag or environment variable value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value '{value}' for {flag}: {reason}")]
pub struct ConfigError {
    /// The flag as a user writes it (`--envoy-port`) or the environment variable's name.
    pub flag: String,
    pub value: String,
    pub reason: String,
}

fn bad(flag: &str, value: &str, reason: impl fmt::Display) -> ConfigError {
    ConfigError {
        flag: flag.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// istio-iptables' flags as given (on the command line, in the environment, or built by
/// the CNI plugin from a pod's annotations), before they are checked into a [`Config`].
/// `Default` is the profile istio's sidecar injector passes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IstioFlags {
    /// Port to which all outbound TCP traffic is redirected (the proxy's outbound listener).
    pub envoy_port: String,
    /// Port to which all inbound TCP traffic is redirected.
    pub inbound_capture_port: String,
    /// The HBONE tunnel port: inbound traffic to it is never captured.
    pub inbound_tunnel_port: String,
    /// Comma-separated UIDs whose traffic is never redirected (the proxy's).
    pub proxy_uid: String,
    /// Comma-separated GIDs whose traffic is never redirected; defaults to the UIDs.
    pub proxy_gid: Option<String>,
    /// Inbound interception mode: REDIRECT or TPROXY.
    pub interception_mode: String,
    /// Packet mark used in TPROXY mode.
    pub tproxy_mark: String,
    /// Routing table used in TPROXY mode.
    pub tproxy_route_table: String,
    /// Inbound ports to capture: `*` for all, a comma-separated list, or empty for none.
    pub inbound_ports: String,
    /// Inbound ports left alone when `-b '*'`.
    pub local_exclude_ports: String,
    /// Interfaces whose traffic is never captured, either way.
    pub exclude_interfaces: String,
    /// Outbound destinations to capture: `*`, a comma-separated CIDR list, or empty for none.
    pub service_cidr: String,
    /// Outbound destinations never captured.
    pub service_exclude_cidr: String,
    /// Outbound ports always captured.
    pub outbound_ports: String,
    /// Outbound ports never captured.
    pub local_outbound_ports_exclude: String,
    /// Virtual interfaces (VMs) whose inbound traffic is treated as outbound.
    pub kube_virt_interfaces: String,
    /// Print the iptables-restore input and change nothing.
    pub dry_run: bool,
    /// Send DNS (port 53) to the agent's resolver on 15053.
    pub redirect_dns: bool,
    /// With --redirect-dns, capture DNS to every address, not only the configured servers.
    pub capture_all_dns: bool,
    /// Drop packets conntrack finds INVALID instead of letting them reset connections.
    pub drop_invalid: bool,
    /// Dual-stack pod: write IPv6 rules when the pod has any IPv6 address.
    pub dual_stack: bool,
    /// After applying, prove that redirection works (exit 126 when it does not).
    pub run_validation: bool,
    /// Original-destination port the validation probe connects to.
    pub iptables_probe_port: String,
    /// How long the validation waits (Go-style duration: 5s, 500ms, 1m).
    pub probe_timeout: String,
    /// Also write ip6tables rules (otherwise only when the pod's address is IPv6).
    pub ipv6: bool,
    /// DNS servers whose traffic --redirect-dns captures (default: nameservers in /etc/resolv.conf).
    pub dns_servers: Option<String>,
    /// Which iptables variant to use (default: the one holding rules, else the system's).
    pub force_iptables_binary: Option<String>,
    /// eBPF mode: no socket fast path (sockops pairs no sockets, sk_msg passes nothing), for
    /// a proxy that reads with splice(2). Ours, not istio's; moot in the iptables mode,
    /// which has no fast path.
    pub no_socket_fast_path: bool,
    /// The flags whose value came from an environment variable rather than the command
    /// line: long flag (`--inbound-capture-port`) to variable (`INBOUND_CAPTURE_PORT`).
    /// A rejected value is reported under the variable's name, the one the user set. Empty
    /// when every value came from the command line or the defaults.
    pub env_sources: BTreeMap<String, String>,
}

impl IstioFlags {
    /// The name to report a value of `flag` under: its environment variable when the value
    /// came from there (see [`IstioFlags::env_sources`]), else the flag itself.
    pub(crate) fn source_name<'a>(&'a self, flag: &'a str) -> &'a str {
        self.env_sources.get(flag).map_or(flag, String::as_str)
    }
}

impl Default for IstioFlags {
    fn default() -> IstioFlags {
        let s = |v: &str| v.to_string();
        IstioFlags {
            envoy_port: s("15001"),
            inbound_capture_port: s("15006"),
            inbound_tunnel_port: s("15008"),
            proxy_uid: s("1337"),
            proxy_gid: None,
            interception_mode: s("REDIRECT"),
            tproxy_mark: s("1337"),
            tproxy_route_table: s("133"),
            inbound_ports: s("*"),
            local_exclude_ports: s("22,15090,15021,15020"),
            exclude_interfaces: String::new(),
            service_cidr: s("*"),
            service_exclude_cidr: String::new(),
            outbound_ports: String::new(),
            local_outbound_ports_exclude: String::new(),
            kube_virt_interfaces: String::new(),
            dry_run: false,
            redirect_dns: false,
            capture_all_dns: false,
            drop_invalid: false,
            dual_stack: false,
            run_validation: false,
            iptables_probe_port: s("15002"),
            probe_timeout: s("5s"),
            ipv6: false,
            dns_servers: None,
            force_iptables_binary: None,
            no_socket_fast_path: false,
            env_sources: BTreeMap::new(),
        }
    }
}

/// The environment variables istio-iptables reads that have no flag.
#[derive(Clone, Debug, Default)]
pub struct IstioEnv {
    pub owner_groups: Option<String>,
    pub owner_groups_exclude: Option<String>,
    pub ipv4_loopback_cidr: Option<String>,
}

impl IstioEnv {
    pub(crate) fn from_process() -> IstioEnv {
        let get = |k: &str| std::env::var(k).ok();
        IstioEnv {
            owner_groups: get("ISTIO_OUTBOUND_OWNER_GROUPS"),
            owner_groups_exclude: get("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE"),
            ipv4_loopback_cidr: get("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR"),
        }
    }
}

/// Facts about the machine the configuration depends on, gathered by the caller so that
/// [`Config::from_args`] stays a pure function.
#[derive(Clone, Debug, Default)]
pub struct HostFacts {
    /// Addresses of the pod's interfaces (to decide whether IPv6 is on, as istio does).
    pub local_addrs: Vec<IpAddr>,
    /// Nameservers from /etc/resolv.conf.
    pub resolv_conf_servers: Vec<IpAddr>,
}

impl HostFacts {
    pub(crate) fn gather() -> HostFacts {
        HostFacts {
            local_addrs: local_addrs(),
            resolv_conf_servers: resolv_conf_servers("/etc/resolv.conf"),
        }
    }
}

/// The items of a comma list. An empty (or all-blank) value is the empty list, which
/// istio reads as "none" (`-x ""`, `-b ""`); an empty item inside a non-empty list
/// (`1337,,`, `80,,81`) is refused: istio would pass it on to iptables as an empty port or
/// id, and a stray comma is more likely a typo than a wish.
pub(crate) fn list_items<'a>(flag: &str, v: &'a str) -> Result<Vec<&'a str>, ConfigError> {
    if v.trim().is_empty() {
        return Ok(Vec::new());
    }
    let items: Vec<&str> = v.split(',').map(str::trim).collect();
    if items.iter().any(|x| x.is_empty()) {
        return Err(bad(
            flag,
            v,
            "empty item in the list (a leading, trailing or doubled comma)",
        ));
    }
    Ok(items)
}

fn parse_port(flag: &str, v: &str) -> Result<u16, ConfigError> {
    // Wider than u16 so that -1 or 70000 are called out of range, not "not a number".
    match v.trim().parse::<i64>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        Ok(_) => Err(bad(flag, v, "port out of range 1-65535")),
        Err(_) => Err(bad(flag, v, "not a port number")),
    }
}

/// A port list item: a port or an iptables `first:last` range.
fn parse_port_list(flag: &str, v: &str) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    for item in list_items(flag, v)? {
        match item.split_once(':') {
            Some((a, b)) => {
                let (a, b) = (parse_port(flag, a)?, parse_port(flag, b)?);
                if a > b {
                    return Err(bad(flag, item, "port range start is above its end"));
                }
                out.push(format!("{a}:{b}"));
            }
            None => out.push(parse_port(flag, item)?.to_string()),
        }
    }
    Ok(out)
}

/// A uid/gid list: numbers, or names looked up in the user/group database (iptables itself
/// would look them up; doing it here turns a typo into an error that names the flag).
fn parse_id_list(flag: &str, v: &str, group: bool) -> Result<Vec<String>, ConfigError> {
    let items = list_items(flag, v)?;
    if items.is_empty() {
        return Err(bad(
            flag,
            v,
            if group {
                "no group id given"
            } else {
                "no user id given"
            },
        ));
    }
    items
        .into_iter()
        .map(|item| parse_id(flag, item, group))
        .collect()
}

fn parse_id(flag: &str, item: &str, group: bool) -> Result<String, ConfigError> {
    if let Ok(n) = item.parse::<u32>() {
        if n == u32::MAX {
            return Err(bad(flag, item, "id out of range"));
        }
        return Ok(n.to_string());
    }
    let found = if group {
        nix::unistd::Group::from_name(item)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    } else {
        nix::unistd::User::from_name(item)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw())
    };
    match found {
        Some(id) => Ok(id.to_string()),
        None => Err(bad(
            flag,
            item,
            if group {
                "no such group"
            } else {
                "no such user"
            },
        )),
    }
}

fn parse_u32(flag: &str, v: &str) -> Result<u32, ConfigError> {
    v.trim()
        .parse::<u32>()
        .map_err(|_| bad(flag, v, "not a non-negative integer"))
}

fn parse_ifaces(flag: &str, v: &str) -> Result<Vec<String>, ConfigError> {
    list_items(flag, v)?
        .into_iter()
        .map(|i| {
            let ok = i.len() <= 15
                && i.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-+@:".contains(&b));
            if ok {
                Ok(i.to_string())
            } else {
                Err(bad(flag, i, "not an interface name (at most 15 letters, digits, '.', '_', '-', '+', '@', ':')"))
            }
        })
        .collect()
}

fn parse_ranges(flag: &str, v: &str) -> Result<NetworkRange, ConfigError> {
    if v.trim() == "*" {
        return Ok(NetworkRange {
            wildcard: true,
            ..Default::default()
        });
    }
    let mut r = NetworkRange::default();
    for item in list_items(flag, v)? {
        let net: IpNet = item
            .parse()
            .map_err(|_| bad(flag, item, "not a CIDR (address/prefix-length)"))?;
        match net {
            IpNet::V4(_) => r.v4.push(net),
            IpNet::V6(_) => r.v6.push(net),
        }
    }
    Ok(r)
}

/// A Go-style duration (`5s`, `500ms`, `1m30s`) or plain seconds.
pub(crate) fn parse_duration(flag: &str, v: &str) -> Result<Duration, ConfigError> {
    let s = v.trim();
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs > 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
        return Err(bad(flag, v, "duration must be positive"));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad(flag, v, "empty duration"));
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(bad(flag, v, "not a duration (like 5s, 500ms, 1m)"));
        }
        let n: f64 = rest[..num_len]
            .parse()
            .map_err(|_| bad(flag, v, "not a duration (like 5s, 500ms, 1m)"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad(flag, v, "not a duration (like 5s, 500ms, 1m)")),
        };
        rest = &rest[unit_len..];
        total += Duration::from_secs_f64(n * scale);
    }
    if total.is_zero() {
        return Err(bad(flag, v, "duration must be positive"));
    }
    Ok(total)
}

impl Config {
    /// Checks flags and environment into a configuration. A rejected value that came from
    /// an environment variable is reported under the variable's name.
    pub fn from_args(
        args: &IstioFlags,
        env: &IstioEnv,
        host: &HostFacts,
    ) -> Result<Config, ConfigError> {
        Config::check(args, env, host).map_err(|mut e| {
            e.flag = args.source_name(&e.flag).to_string();
            e
        })
    }

    fn check(args: &IstioFlags, env: &IstioEnv, host: &HostFacts) -> Result<Config, ConfigError> {
        let proxy_uids = parse_id_list("--proxy-uid", &args.proxy_uid, false)?;
        // istio: "For TPROXY as its uid and gid are same" -- the gid list defaults to the uids.
        let proxy_gids = match &args.proxy_gid {
            Some(g) => parse_id_list("--proxy-gid", g, true)?,
            None => proxy_uids.clone(),
        };
        let mode = match args.interception_mode.trim() {
            // istio-iptables' flag is unset (empty) unless the injector passes it, and
            // empty means REDIRECT there.
            "REDIRECT" | "" => InterceptionMode::Redirect,
            "TPROXY" => InterceptionMode::Tproxy,
            other => {
                return Err(bad(
                    "--istio-inbound-interception-mode",
                    other,
                    "mode must be REDIRECT or TPROXY",
                ))
            }
        };
        let inbound_ports = if args.inbound_ports.trim() == "*" {
            InboundPorts::All
        } else {
            let l = parse_port_list("--istio-inbound-ports", &args.inbound_ports)?;
            if l.is_empty() {
                InboundPorts::None
            } else {
                InboundPorts::Only(l)
            }
        };
        let outbound_include = parse_ranges("--istio-service-cidr", &args.service_cidr)?;
        let outbound_exclude =
            parse_ranges("--istio-service-exclude-cidr", &args.service_exclude_cidr)?;
        if outbound_exclude.wildcard {
            return Err(bad(
                "--istio-service-exclude-cidr",
                &args.service_exclude_cidr,
                "'*' is not allowed here",
            ));
        }

        let owner_groups = {
            let include = env.owner_groups.clone().unwrap_or_else(|| "*".to_string());
            let exclude = env.owner_groups_exclude.clone().unwrap_or_default();
            if include.trim() == "*" {
                let values = list_items("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", &exclude)?
                    .into_iter()
                    .map(|g| parse_id("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", g, true))
                    .collect::<Result<Vec<_>, _>>()?;
                OwnerGroups {
                    except: true,
                    values,
                }
            } else {
                let values = list_items("ISTIO_OUTBOUND_OWNER_GROUPS", &include)?
                    .into_iter()
                    .map(|g| parse_id("ISTIO_OUTBOUND_OWNER_GROUPS", g, true))
                    .collect::<Result<Vec<_>, _>>()?;
                // One rule holds one `-m owner ! --gid-owner` match per group; istio caps it.
                if values.len() > 64 {
                    return Err(bad(
                        "ISTIO_OUTBOUND_OWNER_GROUPS",
                        &include,
                        "more than 64 groups",
                    ));
                }
                OwnerGroups {
                    except: false,
                    values,
                }
            }
        };

        let loopback_cidr_v4 = {
            let v = env
                .ipv4_loopback_cidr
                .clone()
                .unwrap_or_else(|| "127.0.0.1/32".to_string());
            let flag = "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR";
            let net: Ipv4Net = v
                .trim()
                .parse()
                .map_err(|_| bad(flag, &v, "not an IPv4 CIDR"))?;
            if !net.addr().is_loopback() {
                return Err(bad(flag, &v, "not a loopback address (127.0.0.0/8)"));
            }
            if net.prefix_len() < 8 {
                return Err(bad(flag, &v, "prefix length must be 8-32"));
            }
            net
        };

        let backend = match args.force_iptables_binary.as_deref().map(str::trim) {
            None | Some("") => None,
            Some("legacy") => Some(Backend::Legacy),
            Some("nft") => Some(Backend::Nft),
            Some(other) => {
                return Err(bad(
                    "--force-iptables-binary",
                    other,
                    "must be legacy or nft",
                ))
            }
        };

        let (dns_servers_v4, dns_servers_v6) = {
            let servers: Vec<IpAddr> = match &args.dns_servers {
                Some(list) => list_items("--dns-servers", list)?
                    .into_iter()
                    .map(|s| {
                        s.parse::<IpAddr>()
                            .map_err(|_| bad("--dns-servers", s, "not an IP address"))
                    })
                    .collect::<Result<_, _>>()?,
                None => host.resolv_conf_servers.clone(),
            };
            let v4 = servers
                .iter()
                .filter_map(|a| {
                    if let IpAddr::V4(a) = a {
                        Some(*a)
                    } else {
                        None
                    }
                })
                .collect();
            let v6 = servers
                .iter()
                .filter_map(|a| {
                    if let IpAddr::V6(a) = a {
                        Some(*a)
                    } else {
                        None
                    }
                })
                .collect();
            (v4, v6)
        };

        let ipv6 = args.ipv6 || pod_is_ipv6(&host.local_addrs, args.dual_stack);

        Ok(Config {
            proxy_port: parse_port("--envoy-port", &args.envoy_port)?,
            inbound_capture_port: parse_port("--inbound-capture-port", &args.inbound_capture_port)?,
            inbound_tunnel_port: parse_port("--inbound-tunnel-port", &args.inbound_tunnel_port)?,
            proxy_uids,
            proxy_gids,
            mode,
            tproxy_mark: parse_u32("--istio-inbound-tproxy-mark", &args.tproxy_mark)?,
            tproxy_route_table: {
                let t = parse_u32(
                    "--istio-inbound-tproxy-route-table",
                    &args.tproxy_route_table,
                )?;
                if t == 0 || (253..=255).contains(&t) {
                    return Err(bad(
                        "--istio-inbound-tproxy-route-table",
                        &args.tproxy_route_table,
                        "0 and 253-255 are the kernel's own tables",
                    ));
                }
                t
            },
            inbound_ports,
            inbound_ports_exclude: parse_port_list(
                "--istio-local-exclude-ports",
                &args.local_exclude_ports,
            )?,
            exclude_interfaces: parse_ifaces(
                "--istio-exclude-interfaces",
                &args.exclude_interfaces,
            )?,
            outbound_include,
            outbound_exclude,
            outbound_ports_include: parse_port_list(
                "--istio-outbound-ports",
                &args.outbound_ports,
            )?,
            outbound_ports_exclude: parse_port_list(
                "--istio-local-outbound-ports-exclude",
                &args.local_outbound_ports_exclude,
            )?,
            kube_virt_interfaces: parse_ifaces(
                "--kube-virt-interfaces",
                &args.kube_virt_interfaces,
            )?,
            dry_run: args.dry_run,
            redirect_dns: args.redirect_dns,
            capture_all_dns: args.capture_all_dns,
            drop_invalid: args.drop_invalid,
            dual_stack: args.dual_stack,
            run_validation: args.run_validation,
            probe_port: parse_port("--iptables-probe-port", &args.iptables_probe_port)?,
            probe_timeout: parse_duration("--probe-timeout", &args.probe_timeout)?,
            owner_groups,
            loopback_cidr_v4,
            ipv6,
            dns_servers_v4,
            dns_servers_v6,
            backend,
            socket_fast_path: !args.no_socket_fast_path,
        })
    }

    /// Whether DNS capture is really on: istio turns it off when only specific servers are to
    /// be captured and there are none.
    pub(crate) fn dns_capture(&self) -> bool {
        self.redirect_dns
            && (self.capture_all_dns
                || !self.dns_servers_v4.is_empty()
                || !self.dns_servers_v6.is_empty())
    }

    /// The checked configuration as `KEY=VALUE` lines under istio-iptables' names (its
    /// `config.Print`, which istio-init logs before applying), plus our own settings.
    pub fn describe(&self) -> String {
        fn ranges(r: &NetworkRange) -> String {
            if r.wildcard {
                return "*".into();
            }
            let all: Vec<String> = r.v4.iter().chain(&r.v6).map(ToString::to_string).collect();
            all.join(",")
        }
        let (groups_include, groups_exclude) = if self.owner_groups.except {
            ("*".to_string(), self.owner_groups.values.join(","))
        } else {
            (self.owner_groups.values.join(","), String::new())
        };
        let dns: Vec<String> = self
            .dns_servers_v4
            .iter()
            .map(ToString::to_string)
            .chain(self.dns_servers_v6.iter().map(ToString::to_string))
            .collect();
        let pairs: [(&str, String); 30] = [
            ("PROXY_PORT", self.proxy_port.to_string()),
            (
                "PROXY_INBOUND_CAPTURE_PORT",
                self.inbound_capture_port.to_string(),
            ),
            ("PROXY_TUNNEL_PORT", self.inbound_tunnel_port.to_string()),
            ("PROXY_UID", self.proxy_uids.join(",")),
            ("PROXY_GID", self.proxy_gids.join(",")),
            (
                "INBOUND_INTERCEPTION_MODE",
                match self.mode {
                    InterceptionMode::Redirect => "REDIRECT".into(),
                    InterceptionMode::Tproxy => "TPROXY".into(),
                },
            ),
            ("INBOUND_TPROXY_MARK", self.tproxy_mark.to_string()),
            (
                "INBOUND_TPROXY_ROUTE_TABLE",
                self.tproxy_route_table.to_string(),
            ),
            (
                "INBOUND_PORTS_INCLUDE",
                match &self.inbound_ports {
                    InboundPorts::None => String::new(),
                    InboundPorts::All => "*".into(),
                    InboundPorts::Only(p) => p.join(","),
                },
            ),
            (
                "INBOUND_PORTS_EXCLUDE",
                self.inbound_ports_exclude.join(","),
            ),
            ("OUTBOUND_OWNER_GROUPS_INCLUDE", groups_include),
            ("OUTBOUND_OWNER_GROUPS_EXCLUDE", groups_exclude),
            ("OUTBOUND_IP_RANGES_INCLUDE", ranges(&self.outbound_include)),
            ("OUTBOUND_IP_RANGES_EXCLUDE", ranges(&self.outbound_exclude)),
            (
                "OUTBOUND_PORTS_INCLUDE",
                self.outbound_ports_include.join(","),
            ),
            (
                "OUTBOUND_PORTS_EXCLUDE",
                self.outbound_ports_exclude.join(","),
            ),
            (
                "OUTBOUND_IPV4_LOOPBACK_CIDR",
                self.loopback_cidr_v4.to_string(),
            ),
            ("KUBE_VIRT_INTERFACES", self.kube_virt_interfaces.join(",")),
            ("ENABLE_INBOUND_IPV6", self.ipv6.to_string()),
            ("DUAL_STACK", self.dual_stack.to_string()),
            ("DNS_CAPTURE", self.redirect_dns.to_string()),
            ("DROP_INVALID", self.drop_invalid.to_string()),
            ("CAPTURE_ALL_DNS", self.capture_all_dns.to_string()),
            ("DNS_SERVERS", dns.join(",")),
            ("EXCLUDE_INTERFACES", self.exclude_interfaces.join(",")),
            (
                "FORCE_IPTABLES_BINARY",
                self.backend.map(Backend::name).unwrap_or_default().into(),
            ),
            ("DRY_RUN", self.dry_run.to_string()),
            ("RUN_VALIDATION", self.run_validation.to_string()),
            ("IPTABLES_PROBE_PORT", self.probe_port.to_string()),
            ("PROBE_TIMEOUT", format!("{:?}", self.probe_timeout)),
        ];
        pairs.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
    }
}

/// istio decides IPv6 from the pod's first global address (any, with dual-stack).
fn pod_is_ipv6(addrs: &[IpAddr], dual_stack: bool) -> bool {
    let global = addrs.iter().filter(|a| match a {
        IpAddr::V4(a) => !a.is_loopback() && !a.is_link_local(),
        IpAddr::V6(a) => {
            !a.is_loopback() && (a.segments()[0] & 0xffc0) != 0xfe80 && !a.is_multicast()
        }
    });
    if dual_stack {
        global.into_iter().any(IpAddr::is_ipv6)
    } else {
        global.into_iter().next().is_some_and(IpAddr::is_ipv6)
    }
}

fn local_addrs() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|a| a.address)
        .filter_map(|s| {
            if let Some(v4) = s.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect()
}

/// The `nameserver` lines of a resolv.conf (a missing file means none).
pub(crate) fn resolv_conf_servers(path: &str) -> Vec<IpAddr> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    parse_resolv_conf(&text)
}

pub fn parse_resolv_conf(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next()) {
                // A scoped IPv6 nameserver (fe80::1%eth0) cannot go into an iptables rule.
                (Some("nameserver"), Some(addr)) => addr.parse().ok(),
                _ => None,
            }
        })
        .collect()
}

/// istio-iptables flags written as on a command line (`-p 15001`, `--redirect-dns`,
/// `--probe-timeout=2s`), for tests: the command line itself is the binary's.
#[cfg(test)]
pub(crate) fn flags_from_argv(argv: &[&str]) -> IstioFlags {
    let mut f = IstioFlags::default();
    let mut args = argv.iter().map(|a| a.to_string());
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let bools: [(&str, &str, &mut bool); 8] = [
            ("-n", "--dry-run", &mut f.dry_run),
            ("", "--redirect-dns", &mut f.redirect_dns),
            ("", "--capture-all-dns", &mut f.capture_all_dns),
            ("", "--drop-invalid", &mut f.drop_invalid),
            ("", "--dual-stack", &mut f.dual_stack),
            ("", "--run-validation", &mut f.run_validation),
            ("", "--ipv6", &mut f.ipv6),
            ("", "--no-socket-fast-path", &mut f.no_socket_fast_path),
        ];
        if let Some((_, _, b)) = bools
            .into_iter()
            .find(|(short, long, _)| name == *long || (!short.is_empty() && name == *short))
        {
            *b = inline.is_none_or(|v| v == "true");
            continue;
        }
        let mut value = || inline.clone().or_else(|| args.next()).expect("flag value");
        match name.as_str() {
            "-p" | "--envoy-port" => f.envoy_port = value(),
            "-z" | "--inbound-capture-port" => f.inbound_capture_port = value(),
            "-e" | "--inbound-tunnel-port" => f.inbound_tunnel_port = value(),
            "-u" | "--proxy-uid" => f.proxy_uid = value(),
            "-g" | "--proxy-gid" => f.proxy_gid = Some(value()),
            "-m" | "--istio-inbound-interception-mode" => f.interception_mode = value(),
            "-t" | "--istio-inbound-tproxy-mark" => f.tproxy_mark = value(),
            "-r" | "--istio-inbound-tproxy-route-table" => f.tproxy_route_table = value(),
            "-b" | "--istio-inbound-ports" => f.inbound_ports = value(),
            "-d" | "--istio-local-exclude-ports" => f.local_exclude_ports = value(),
            "-c" | "--istio-exclude-interfaces" => f.exclude_interfaces = value(),
            "-i" | "--istio-service-cidr" => f.service_cidr = value(),
            "-x" | "--istio-service-exclude-cidr" => f.service_exclude_cidr = value(),
            "-q" | "--istio-outbound-ports" => f.outbound_ports = value(),
            "-o" | "--istio-local-outbound-ports-exclude" => {
                f.local_outbound_ports_exclude = value()
            }
            "-k" | "--kube-virt-interfaces" => f.kube_virt_interfaces = value(),
            "--iptables-probe-port" => f.iptables_probe_port = value(),
            "--probe-timeout" => f.probe_timeout = value(),
            "--dns-servers" => f.dns_servers = Some(value()),
            "--force-iptables-binary" | "--iptables-backend" => {
                f.force_iptables_binary = Some(value())
            }
            other => panic!("flags_from_argv: unknown flag {other}"),
        }
    }
    f
}

/// `init`'s flags as a user types them, checked into a [`Config`] with the given
/// environment and no facts from this machine: the one way tests make a configuration.
#[cfg(test)]
pub(crate) fn config_from_flags(argv: &[&str], env: &IstioEnv) -> Result<Config, ConfigError> {
    Config::from_args(&flags_from_argv(argv), env, &HostFacts::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Result<Config, ConfigError> {
        config_from_flags(argv, &IstioEnv::default())
    }

    fn err(argv: &[&str]) -> ConfigError {
        parse(argv).expect_err("should be rejected")
    }

    #[test]
    fn defaults_are_the_injected_sidecar_profile() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.proxy_port, 15001);
        assert_eq!(c.inbound_capture_port, 15006);
        assert_eq!(c.inbound_tunnel_port, 15008);
        assert_eq!(c.proxy_uids, vec!["1337"]);
        assert_eq!(c.proxy_gids, vec!["1337"]);
        assert_eq!(c.mode, InterceptionMode::Redirect);
        assert_eq!(c.inbound_ports, InboundPorts::All);
        assert_eq!(
            c.inbound_ports_exclude,
            vec!["22", "15090", "15021", "15020"]
        );
        assert!(c.outbound_include.wildcard);
        assert!(!c.ipv6);
        assert!(c.owner_groups.except && c.owner_groups.values.is_empty());
        assert_eq!(c.loopback_cidr_v4.to_string(), "127.0.0.1/32");
        assert_eq!(c.probe_port, 15002);
        assert_eq!(c.probe_timeout, Duration::from_secs(5));
    }

    #[test]
    fn bad_input_names_flag_and_value() {
        let e = err(&["-p", "70000"]);
        assert_eq!(
            (e.flag.as_str(), e.value.as_str()),
            ("--envoy-port", "70000")
        );
        assert!(e.to_string().contains("--envoy-port") && e.to_string().contains("70000"));
        let e = err(&["-z", "0"]);
        assert_eq!(e.flag, "--inbound-capture-port");
        let e = err(&["-b", "80,99999"]);
        assert_eq!(
            (e.flag.as_str(), e.value.as_str()),
            ("--istio-inbound-ports", "99999")
        );
        let e = err(&["-d", "http"]);
        assert_eq!(e.flag, "--istio-local-exclude-ports");
        let e = err(&["-i", "10.0.0.0/33"]);
        assert_eq!(
            (e.flag.as_str(), e.value.as_str()),
            ("--istio-service-cidr", "10.0.0.0/33")
        );
        let e = err(&["-x", "10.0.0.1"]);
        assert_eq!(e.flag, "--istio-service-exclude-cidr");
        let e = err(&["-x", "*"]);
        assert_eq!(e.flag, "--istio-service-exclude-cidr");
        let e = err(&["-m", "TPROXYX"]);
        assert_eq!(
            (e.flag.as_str(), e.value.as_str()),
            ("--istio-inbound-interception-mode", "TPROXYX")
        );
        let e = err(&["-u", ""]);
        assert_eq!(e.flag, "--proxy-uid");
        let e = err(&["-g", ","]);
        assert_eq!(e.flag, "--proxy-gid");
        let e = err(&["-u", "no-such-user-xyz"]);
        assert_eq!(
            (e.flag.as_str(), e.value.as_str()),
            ("--proxy-uid", "no-such-user-xyz")
        );
        let e = err(&["-c", "bad iface"]);
        assert_eq!(e.flag, "--istio-exclude-interfaces");
        let e = err(&["-t", "0x"]);
        assert_eq!(e.flag, "--istio-inbound-tproxy-mark");
        let e = err(&["--probe-timeout", "soon"]);
        assert_eq!(e.flag, "--probe-timeout");
        let e = err(&["--dns-servers", "10.0.0"]);
        assert_eq!(
            (e.flag.as_str(), e.value.as_str()),
            ("--dns-servers", "10.0.0")
        );
        let e = err(&["--force-iptables-binary", "ebtables"]);
        assert_eq!(e.flag, "--force-iptables-binary");
        let e = err(&["-q", "5:4"]);
        assert_eq!(e.flag, "--istio-outbound-ports");
    }

    #[test]
    fn empty_values_mean_none_but_empty_items_are_refused() {
        // istio's injector passes `-x ""`, and `-b ""` turns inbound capture off.
        let c = parse(&[
            "-x",
            "",
            "-b",
            "",
            "-i",
            "",
            "-d",
            "",
            "-q",
            " ",
            "--dns-servers",
            "",
        ])
        .unwrap();
        assert_eq!(c.inbound_ports, InboundPorts::None);
        assert!(c.inbound_ports_exclude.is_empty() && c.outbound_ports_include.is_empty());
        assert!(!c.outbound_include.wildcard && c.outbound_include.v4.is_empty());
        assert_eq!(c.outbound_exclude, NetworkRange::default());
        assert!(c.dns_servers_v4.is_empty() && c.dns_servers_v6.is_empty());
        for (argv, flag, value) in [
            (&["-u", "1337,,"][..], "--proxy-uid", "1337,,"),
            (&["-g", ",1337"][..], "--proxy-gid", ",1337"),
            (&["-b", "80,,81"][..], "--istio-inbound-ports", "80,,81"),
            (
                &["-d", "15090,,"][..],
                "--istio-local-exclude-ports",
                "15090,,",
            ),
            (
                &["-o", "25,"][..],
                "--istio-local-outbound-ports-exclude",
                "25,",
            ),
            (
                &["-i", "10.0.0.0/8, ,"][..],
                "--istio-service-cidr",
                "10.0.0.0/8, ,",
            ),
            (
                &["-x", ",10.0.0.0/8"][..],
                "--istio-service-exclude-cidr",
                ",10.0.0.0/8",
            ),
            (
                &["-c", "eth0,,eth1"][..],
                "--istio-exclude-interfaces",
                "eth0,,eth1",
            ),
            (&["-k", "virt0,"][..], "--kube-virt-interfaces", "virt0,"),
            (
                &["--dns-servers", "10.0.0.10,,"][..],
                "--dns-servers",
                "10.0.0.10,,",
            ),
        ] {
            let e = err(argv);
            assert_eq!(
                (e.flag.as_str(), e.value.as_str()),
                (flag, value),
                "{argv:?}"
            );
            assert!(e.reason.contains("empty item"), "{argv:?}: {e}");
        }
        let env = IstioEnv {
            owner_groups: Some("100,,200".into()),
            ..Default::default()
        };
        assert_eq!(
            config_from_flags(&[], &env).unwrap_err().flag,
            "ISTIO_OUTBOUND_OWNER_GROUPS"
        );
    }

    #[test]
    fn empty_mode_is_redirect_as_in_istio() {
        assert_eq!(parse(&["-m", ""]).unwrap().mode, InterceptionMode::Redirect);
        assert_eq!(
            parse(&["-m", "TPROXY"]).unwrap().mode,
            InterceptionMode::Tproxy
        );
    }

    #[test]
    fn negative_numbers_are_out_of_range() {
        for (argv, flag) in [
            (&["-p", "-1"][..], "--envoy-port"),
            (&["-z", "-15006"][..], "--inbound-capture-port"),
            (
                &["--iptables-probe-port", "-2"][..],
                "--iptables-probe-port",
            ),
            (&["-d", "-5"][..], "--istio-local-exclude-ports"),
        ] {
            let e = err(argv);
            assert_eq!((e.flag.as_str(), e.value.as_str()), (flag, argv[1]));
            assert_eq!(e.reason, "port out of range 1-65535");
        }
        let e = err(&["-t", "-1"]);
        assert_eq!(
            (e.flag.as_str(), e.value.as_str()),
            ("--istio-inbound-tproxy-mark", "-1")
        );
        let e = err(&["-u", "-1"]);
        assert_eq!(e.flag, "--proxy-uid");
    }

    #[test]
    fn a_value_from_the_environment_is_reported_under_its_variable() {
        let mut f = flags_from_argv(&["-z", "70000", "-p", "0"]);
        f.env_sources.insert(
            "--inbound-capture-port".into(),
            "INBOUND_CAPTURE_PORT".into(),
        );
        // -p came from the command line: still named by its flag.
        let e = Config::from_args(&f, &IstioEnv::default(), &HostFacts::default()).unwrap_err();
        assert_eq!(e.flag, "--envoy-port");
        f.envoy_port = "15001".into();
        let e = Config::from_args(&f, &IstioEnv::default(), &HostFacts::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid value '70000' for INBOUND_CAPTURE_PORT: port out of range 1-65535"
        );
    }

    #[test]
    fn describe_lists_the_settings_under_istio_names() {
        let d = parse(&["-d", "15090,15021,15020", "-x", "10.1.0.0/16,fd01::/16"])
            .unwrap()
            .describe();
        for line in [
            "PROXY_PORT=15001\n",
            "PROXY_INBOUND_CAPTURE_PORT=15006\n",
            "PROXY_UID=1337\n",
            "PROXY_GID=1337\n",
            "INBOUND_INTERCEPTION_MODE=REDIRECT\n",
            "INBOUND_PORTS_INCLUDE=*\n",
            "INBOUND_PORTS_EXCLUDE=15090,15021,15020\n",
            "OUTBOUND_IP_RANGES_INCLUDE=*\n",
            "OUTBOUND_IP_RANGES_EXCLUDE=10.1.0.0/16,fd01::/16\n",
            "OUTBOUND_OWNER_GROUPS_INCLUDE=*\n",
            "DNS_CAPTURE=false\n",
            "PROBE_TIMEOUT=5s\n",
        ] {
            assert!(d.contains(line), "{line:?} missing from\n{d}");
        }
        assert!(d.lines().all(|l| l.contains('=')));
    }

    #[test]
    fn environment_variables() {
        let env = IstioEnv {
            owner_groups: Some("100,200".into()),
            ..Default::default()
        };
        let c = config_from_flags(&[], &env).unwrap();
        assert_eq!(
            c.owner_groups,
            OwnerGroups {
                except: false,
                values: vec!["100".into(), "200".into()]
            }
        );
        let env = IstioEnv {
            owner_groups_exclude: Some("300".into()),
            ..Default::default()
        };
        let c = config_from_flags(&[], &env).unwrap();
        assert_eq!(
            c.owner_groups,
            OwnerGroups {
                except: true,
                values: vec!["300".into()]
            }
        );
        let env = IstioEnv {
            ipv4_loopback_cidr: Some("127.0.0.0/8".into()),
            ..Default::default()
        };
        assert_eq!(
            config_from_flags(&[], &env)
                .unwrap()
                .loopback_cidr_v4
                .to_string(),
            "127.0.0.0/8"
        );
        for bad_cidr in ["10.0.0.1/32", "127.0.0.1/4", "nope"] {
            let env = IstioEnv {
                ipv4_loopback_cidr: Some(bad_cidr.into()),
                ..Default::default()
            };
            let e = config_from_flags(&[], &env).unwrap_err();
            assert_eq!(
                (e.flag.as_str(), e.value.as_str()),
                ("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", bad_cidr)
            );
        }
        let many = (1..=65)
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let env = IstioEnv {
            owner_groups: Some(many),
            ..Default::default()
        };
        assert_eq!(
            config_from_flags(&[], &env).unwrap_err().flag,
            "ISTIO_OUTBOUND_OWNER_GROUPS"
        );
    }

    #[test]
    fn ipv6_follows_the_pod_address_like_istio() {
        let t = flags_from_argv(&[]);
        let v4: IpAddr = "10.0.0.5".parse().unwrap();
        let v6: IpAddr = "fd00::5".parse().unwrap();
        let lo: IpAddr = "::1".parse().unwrap();
        let facts = |a: Vec<IpAddr>| HostFacts {
            local_addrs: a,
            resolv_conf_servers: vec![],
        };
        let on = |a: &IstioFlags, f: HostFacts| {
            Config::from_args(a, &IstioEnv::default(), &f).unwrap().ipv6
        };
        assert!(!on(&t, facts(vec![lo, v4, v6])));
        assert!(on(&t, facts(vec![lo, v6, v4])));
        let d = flags_from_argv(&["--dual-stack"]);
        assert!(on(&d, facts(vec![v4, v6])));
    }

    #[test]
    fn resolv_conf_nameservers() {
        let s = parse_resolv_conf("# c\nsearch a.b\nnameserver 10.96.0.10\nnameserver fd00::10\nnameserver fe80::1%eth0\noptions ndots:5\n");
        assert_eq!(
            s,
            vec![
                "10.96.0.10".parse::<IpAddr>().unwrap(),
                "fd00::10".parse().unwrap()
            ]
        );
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("f", "500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(parse_duration("f", "2").unwrap(), Duration::from_secs(2));
        assert_eq!(
            parse_duration("f", "1h1s").unwrap(),
            Duration::from_secs(3601)
        );
        assert!(parse_duration("f", "0s").is_err());
        assert!(parse_duration("f", "5x").is_err());
    }
}
