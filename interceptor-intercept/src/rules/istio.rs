//! The sidecar's interception rules, built from a [`Config`] in the order istio's
//! `IptablesConfigurator.Run` (`tools/istio-iptables/pkg/capture/run.go`) records them, so
//! the resulting ruleset (tables, chains, rules, order) is the one istio-iptables installs.
//!
//! Chain roles:
//! - nat `ISTIO_INBOUND` (from PREROUTING): which inbound TCP goes to the proxy;
//! - nat `ISTIO_IN_REDIRECT`: REDIRECT to the inbound capture port (15006);
//! - nat `ISTIO_OUTPUT` (from OUTPUT): which outbound traffic goes to the proxy;
//! - nat `ISTIO_REDIRECT`: REDIRECT to the outbound port (15001);
//! - nat/raw `ISTIO_OUTPUT_DNS`, raw `ISTIO_INBOUND`: DNS to the agent (15053) and the
//!   conntrack zones that keep the agent's own upstream queries apart from the app's;
//! - mangle `ISTIO_INBOUND`/`ISTIO_DIVERT`/`ISTIO_TPROXY`: the TPROXY variant of inbound;
//! - mangle `ISTIO_DROP`: `--drop-invalid`.

use crate::config::{Config, InboundPorts, InterceptionMode, NetworkRange};

use super::builder::{Family, RuleSet, Table};

pub const ISTIO_OUTPUT: &str = "ISTIO_OUTPUT";
pub const ISTIO_OUTPUT_DNS: &str = "ISTIO_OUTPUT_DNS";
pub const ISTIO_INBOUND: &str = "ISTIO_INBOUND";
pub const ISTIO_DIVERT: &str = "ISTIO_DIVERT";
pub const ISTIO_TPROXY: &str = "ISTIO_TPROXY";
pub const ISTIO_REDIRECT: &str = "ISTIO_REDIRECT";
pub const ISTIO_IN_REDIRECT: &str = "ISTIO_IN_REDIRECT";
pub(crate) const ISTIO_DROP: &str = "ISTIO_DROP";

/// Every chain istio-iptables creates (its `constants.go`), in any table: the only chains
/// `init` and `cleanup` ever flush or delete, and the only targets whose jumps they remove
/// from built-in chains. Another tool's `ISTIO_CUSTOM` is not ours.
pub(crate) const CHAINS: [&str; 8] = [
    ISTIO_OUTPUT,
    ISTIO_OUTPUT_DNS,
    ISTIO_INBOUND,
    ISTIO_DIVERT,
    ISTIO_TPROXY,
    ISTIO_REDIRECT,
    ISTIO_IN_REDIRECT,
    ISTIO_DROP,
];

/// Mark the proxy puts on its outbound-to-app packets in TPROXY mode (istio `OutboundMark`).
pub(crate) const OUTBOUND_MARK: &str = "1338";
/// The agent's DNS listener.
pub const DNS_PORT: &str = "15053";
/// Source address the proxy uses for inbound passthrough connections to the app.
const INBOUND_PASSTHROUGH_V4: &str = "127.0.0.6/32";
const INBOUND_PASSTHROUGH_V6: &str = "::6/128";
const LOOPBACK_V6: &str = "::1/128";

fn v(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Builds the rules `interceptor init` installs for `cfg`.
pub fn build(cfg: &Config) -> RuleSet {
    let mut r = RuleSet::new(cfg.ipv6);
    let tproxy = cfg.mode == InterceptionMode::Tproxy;
    let mark = cfg.tproxy_mark.to_string();
    let lo4 = cfg.loopback_cidr_v4.to_string();
    let tunnel = cfg.inbound_tunnel_port.to_string();
    let dns = cfg.dns_capture();

    // Excluded interfaces bypass everything (run.go shortCircuitExcludeInterfaces).
    for i in &cfg.exclude_interfaces {
        r.append("PREROUTING", Table::Nat, &["-i", i, "-j", "RETURN"]);
        r.append("OUTPUT", Table::Nat, &["-o", i, "-j", "RETURN"]);
    }
    if tproxy {
        for i in &cfg.exclude_interfaces {
            r.append("PREROUTING", Table::Mangle, &["-i", i, "-j", "RETURN"]);
            r.append("OUTPUT", Table::Mangle, &["-o", i, "-j", "RETURN"]);
        }
    }
    // Traffic arriving from VMs on virtual interfaces is not inbound (shortCircuitKubeInternalInterface).
    for k in &cfg.kube_virt_interfaces {
        r.insert("PREROUTING", Table::Nat, 1, &["-i", k, "-j", "RETURN"]);
    }
    if cfg.drop_invalid {
        r.append(
            "PREROUTING",
            Table::Mangle,
            &["-m", "conntrack", "--ctstate", "INVALID", "-j", ISTIO_DROP],
        );
        r.append(ISTIO_DROP, Table::Mangle, &["-j", "DROP"]);
    }
    // The tunnel port reaches the proxy directly.
    r.append(
        ISTIO_INBOUND,
        Table::Nat,
        &["-p", "tcp", "--dport", &tunnel, "-j", "RETURN"],
    );
    r.append(
        ISTIO_REDIRECT,
        Table::Nat,
        &[
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &cfg.proxy_port.to_string(),
        ],
    );
    r.append(
        ISTIO_IN_REDIRECT,
        Table::Nat,
        &[
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &cfg.inbound_capture_port.to_string(),
        ],
    );

    inbound(&mut r, cfg, &mark, &lo4);

    // Every outbound packet goes through ISTIO_OUTPUT (UDP is sorted out inside).
    r.append("OUTPUT", Table::Nat, &["-j", ISTIO_OUTPUT]);
    // Port exclusions come before anything that sends app-to-self traffic to the proxy.
    for p in &cfg.outbound_ports_exclude {
        r.append(
            ISTIO_OUTPUT,
            Table::Nat,
            &["-p", "tcp", "--dport", p, "-j", "RETURN"],
        );
        r.append(
            ISTIO_OUTPUT,
            Table::Nat,
            &["-p", "udp", "--dport", p, "-j", "RETURN"],
        );
    }
    // The proxy's inbound passthrough connects from 127.0.0.6 / ::6.
    r.append_versioned(
        INBOUND_PASSTHROUGH_V4,
        INBOUND_PASSTHROUGH_V6,
        ISTIO_OUTPUT,
        Table::Nat,
        |ip| v(&["-o", "lo", "-s", ip, "-j", "RETURN"]),
    );

    let loopback_included = cfg.outbound_include.has_loopback();
    for (owner, ids) in [
        ("--uid-owner", &cfg.proxy_uids),
        ("--gid-owner", &cfg.proxy_gids),
    ] {
        for id in ids {
            // The proxy calling a service VIP that lands back on this pod goes through the
            // inbound side: app -> proxy (outbound) -> proxy (inbound) -> app.
            r.append_versioned(&lo4, LOOPBACK_V6, ISTIO_OUTPUT, Table::Nat, |ip| {
                // istio skips port 53 here only in the uid rule.
                if dns && owner == "--uid-owner" {
                    v(&[
                        "-o",
                        "lo",
                        "!",
                        "-d",
                        ip,
                        "-p",
                        "tcp",
                        "-m",
                        "multiport",
                        "!",
                        "--dports",
                        &format!("53,{tunnel}"),
                        "-m",
                        "owner",
                        owner,
                        id,
                        "-j",
                        ISTIO_IN_REDIRECT,
                    ])
                } else {
                    v(&[
                        "-o",
                        "lo",
                        "!",
                        "-d",
                        ip,
                        "-p",
                        "tcp",
                        "!",
                        "--dport",
                        &tunnel,
                        "-m",
                        "owner",
                        owner,
                        id,
                        "-j",
                        ISTIO_IN_REDIRECT,
                    ])
                }
            });
            // The app talking to itself over lo stays direct, unless loopback was asked for.
            if !loopback_included {
                if dns {
                    r.append(
                        ISTIO_OUTPUT,
                        Table::Nat,
                        &[
                            "-o", "lo", "-p", "tcp", "!", "--dport", "53", "-m", "owner", "!",
                            owner, id, "-j", "RETURN",
                        ],
                    );
                } else {
                    r.append(
                        ISTIO_OUTPUT,
                        Table::Nat,
                        &["-o", "lo", "-m", "owner", "!", owner, id, "-j", "RETURN"],
                    );
                }
            }
            // The proxy's own traffic never loops back into it (any protocol, any destination).
            r.append(
                ISTIO_OUTPUT,
                Table::Nat,
                &["-m", "owner", owner, id, "-j", "RETURN"],
            );
        }
    }

    // Owner-group filter (ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE]).
    if cfg.owner_groups.except {
        for g in &cfg.owner_groups.values {
            r.append(
                ISTIO_OUTPUT,
                Table::Nat,
                &["-m", "owner", "--gid-owner", g, "-j", "RETURN"],
            );
        }
    } else {
        let mut args: Vec<&str> = Vec::new();
        for g in &cfg.owner_groups.values {
            args.extend_from_slice(&["-m", "owner", "!", "--gid-owner", g]);
        }
        args.extend_from_slice(&["-j", "RETURN"]);
        r.append(ISTIO_OUTPUT, Table::Nat, &args);
    }

    if dns {
        dns_redirect(&mut r, cfg);
    }

    // Explicit localhost traffic (proxy-aware apps, container to container) stays direct.
    r.append_versioned(&lo4, LOOPBACK_V6, ISTIO_OUTPUT, Table::Nat, |ip| {
        v(&["-d", ip, "-j", "RETURN"])
    });
    for n in &cfg.outbound_exclude.v4 {
        r.append_v4(
            ISTIO_OUTPUT,
            Table::Nat,
            &["-d", &n.to_string(), "-j", "RETURN"],
        );
    }
    for n in &cfg.outbound_exclude.v6 {
        r.append_v6(
            ISTIO_OUTPUT,
            Table::Nat,
            &["-d", &n.to_string(), "-j", "RETURN"],
        );
    }
    for p in &cfg.outbound_ports_include {
        r.append(
            ISTIO_OUTPUT,
            Table::Nat,
            &["-p", "tcp", "--dport", p, "-j", ISTIO_REDIRECT],
        );
    }
    outbound_include(&mut r, cfg, Family::V4, &cfg.outbound_include);
    outbound_include(&mut r, cfg, Family::V6, &cfg.outbound_include);

    if tproxy {
        tproxy_marks(&mut r, cfg, &mark, &lo4);
    }
    r
}

/// Inbound capture (run.go handleInboundPortsInclude).
fn inbound(r: &mut RuleSet, cfg: &Config, mark: &str, lo4: &str) {
    if cfg.inbound_ports == InboundPorts::None {
        return;
    }
    let tproxy = cfg.mode == InterceptionMode::Tproxy;
    let table = if tproxy {
        // Marked packets are routed to lo (policy route), where TPROXY hands them to the proxy.
        r.append(
            ISTIO_DIVERT,
            Table::Mangle,
            &["-j", "MARK", "--set-mark", mark],
        );
        r.append(ISTIO_DIVERT, Table::Mangle, &["-j", "ACCEPT"]);
        let port = cfg.inbound_capture_port.to_string();
        r.append_versioned(lo4, LOOPBACK_V6, ISTIO_TPROXY, Table::Mangle, |ip| {
            v(&[
                "!",
                "-d",
                ip,
                "-p",
                "tcp",
                "-j",
                "TPROXY",
                "--tproxy-mark",
                &format!("{mark}/0xffffffff"),
                "--on-port",
                &port,
            ])
        });
        Table::Mangle
    } else {
        Table::Nat
    };
    r.append("PREROUTING", table, &["-p", "tcp", "-j", ISTIO_INBOUND]);
    match &cfg.inbound_ports {
        InboundPorts::All => {
            for p in &cfg.inbound_ports_exclude {
                r.append(
                    ISTIO_INBOUND,
                    table,
                    &["-p", "tcp", "--dport", p, "-j", "RETURN"],
                );
            }
            if tproxy {
                // Packets of established sockets go to lo; new connections through TPROXY.
                r.append(
                    ISTIO_INBOUND,
                    Table::Mangle,
                    &[
                        "-p",
                        "tcp",
                        "-m",
                        "conntrack",
                        "--ctstate",
                        "RELATED,ESTABLISHED",
                        "-j",
                        ISTIO_DIVERT,
                    ],
                );
                r.append(
                    ISTIO_INBOUND,
                    Table::Mangle,
                    &["-p", "tcp", "-j", ISTIO_TPROXY],
                );
            } else {
                r.append(
                    ISTIO_INBOUND,
                    Table::Nat,
                    &["-p", "tcp", "-j", ISTIO_IN_REDIRECT],
                );
            }
        }
        InboundPorts::Only(ports) => {
            for p in ports {
                if tproxy {
                    r.append(
                        ISTIO_INBOUND,
                        Table::Mangle,
                        &[
                            "-p",
                            "tcp",
                            "--dport",
                            p,
                            "-m",
                            "conntrack",
                            "--ctstate",
                            "RELATED,ESTABLISHED",
                            "-j",
                            ISTIO_DIVERT,
                        ],
                    );
                    r.append(
                        ISTIO_INBOUND,
                        Table::Mangle,
                        &["-p", "tcp", "--dport", p, "-j", ISTIO_TPROXY],
                    );
                } else {
                    r.append(
                        ISTIO_INBOUND,
                        Table::Nat,
                        &["-p", "tcp", "--dport", p, "-j", ISTIO_IN_REDIRECT],
                    );
                }
            }
        }
        InboundPorts::None => {}
    }
}

/// Outbound destinations to capture, for one family (run.go handleOutboundIncludeRules).
fn outbound_include(r: &mut RuleSet, cfg: &Config, family: Family, range: &NetworkRange) {
    if range.wildcard {
        r.append_family(family, ISTIO_OUTPUT, Table::Nat, &["-j", ISTIO_REDIRECT]);
        for k in &cfg.kube_virt_interfaces {
            r.insert_family(
                family,
                "PREROUTING",
                Table::Nat,
                1,
                &["-i", k, "-j", ISTIO_REDIRECT],
            );
        }
        return;
    }
    let nets = match family {
        Family::V4 => &range.v4,
        Family::V6 => &range.v6,
    };
    for n in nets {
        let n = n.to_string();
        for k in &cfg.kube_virt_interfaces {
            r.insert_family(
                family,
                "PREROUTING",
                Table::Nat,
                1,
                &["-i", k, "-d", &n, "-j", ISTIO_REDIRECT],
            );
        }
        r.append_family(
            family,
            ISTIO_OUTPUT,
            Table::Nat,
            &["-d", &n, "-j", ISTIO_REDIRECT],
        );
    }
}

/// DNS to the agent and the conntrack zones (run.go SetupDNSRedir, addDNSConntrackZones).
fn dns_redirect(r: &mut RuleSet, cfg: &Config) {
    let all = cfg.capture_all_dns;
    let v4: Vec<String> = cfg
        .dns_servers_v4
        .iter()
        .map(|a| format!("{a}/32"))
        .collect();
    let v6: Vec<String> = cfg
        .dns_servers_v6
        .iter()
        .map(|a| format!("{a}/128"))
        .collect();

    r.append("OUTPUT", Table::Raw, &["-j", ISTIO_OUTPUT_DNS]);
    if all || !v4.is_empty() {
        r.append_v4(ISTIO_OUTPUT, Table::Nat, &["-j", ISTIO_OUTPUT_DNS]);
    }
    if all || !v6.is_empty() {
        r.append_v6(ISTIO_OUTPUT, Table::Nat, &["-j", ISTIO_OUTPUT_DNS]);
    }
    // TCP first, then UDP; istio spells the UDP target's option `--to-port`.
    for (proto, to) in [("tcp", "--to-ports"), ("udp", "--to-port")] {
        if all {
            r.append(
                ISTIO_OUTPUT_DNS,
                Table::Nat,
                &["-p", proto, "--dport", "53", "-j", "REDIRECT", to, DNS_PORT],
            );
        } else {
            for (family, servers) in [(Family::V4, &v4), (Family::V6, &v6)] {
                for s in servers {
                    r.append_family(
                        family,
                        ISTIO_OUTPUT_DNS,
                        Table::Nat,
                        &[
                            "-p", proto, "--dport", "53", "-d", s, "-j", "REDIRECT", to, DNS_PORT,
                        ],
                    );
                }
            }
        }
    }

    // Zone 1: the agent and upstream resolvers; zone 2: apps and the agent.
    for (owner, ids) in [
        ("--uid-owner", &cfg.proxy_uids),
        ("--gid-owner", &cfg.proxy_gids),
    ] {
        for id in ids {
            r.append(
                ISTIO_OUTPUT_DNS,
                Table::Raw,
                &[
                    "-p", "udp", "--dport", "53", "-m", "owner", owner, id, "-j", "CT", "--zone",
                    "1",
                ],
            );
            r.append(
                ISTIO_OUTPUT_DNS,
                Table::Raw,
                &[
                    "-p", "udp", "--sport", DNS_PORT, "-m", "owner", owner, id, "-j", "CT",
                    "--zone", "2",
                ],
            );
        }
    }
    if all {
        r.append("PREROUTING", Table::Raw, &["-j", ISTIO_INBOUND]);
        r.append(
            ISTIO_OUTPUT_DNS,
            Table::Raw,
            &["-p", "udp", "--dport", "53", "-j", "CT", "--zone", "2"],
        );
        r.append(
            ISTIO_INBOUND,
            Table::Raw,
            &["-p", "udp", "--sport", "53", "-j", "CT", "--zone", "1"],
        );
    } else {
        for (family, servers) in [(Family::V4, &v4), (Family::V6, &v6)] {
            if !servers.is_empty() {
                r.append_family(family, "PREROUTING", Table::Raw, &["-j", ISTIO_INBOUND]);
            }
            for s in servers {
                r.append_family(
                    family,
                    ISTIO_OUTPUT_DNS,
                    Table::Raw,
                    &[
                        "-p", "udp", "--dport", "53", "-d", s, "-j", "CT", "--zone", "2",
                    ],
                );
                r.append_family(
                    family,
                    ISTIO_INBOUND,
                    Table::Raw,
                    &[
                        "-p", "udp", "--sport", "53", "-s", s, "-j", "CT", "--zone", "1",
                    ],
                );
            }
        }
    }
}

/// TPROXY connection marks (end of run.go Run).
fn tproxy_marks(r: &mut RuleSet, cfg: &Config, mark: &str, lo4: &str) {
    // Keep the mark the original_src filter sets as the connection's mark.
    r.append(
        "PREROUTING",
        Table::Mangle,
        &[
            "-p",
            "tcp",
            "-m",
            "mark",
            "--mark",
            mark,
            "-j",
            "CONNMARK",
            "--save-mark",
        ],
    );
    // Proxy-to-app packets already marked are not marked again.
    r.append(
        "OUTPUT",
        Table::Mangle,
        &[
            "-p", "tcp", "-o", "lo", "-m", "mark", "--mark", mark, "-j", "RETURN",
        ],
    );
    for (owner, ids) in [
        ("--uid-owner", &cfg.proxy_uids),
        ("--gid-owner", &cfg.proxy_gids),
    ] {
        for id in ids {
            // app -> VIP -> proxy outbound -(1338)-> proxy inbound -> app
            r.append_versioned(lo4, LOOPBACK_V6, "OUTPUT", Table::Mangle, |ip| {
                v(&[
                    "!",
                    "-d",
                    ip,
                    "-p",
                    "tcp",
                    "-o",
                    "lo",
                    "-m",
                    "owner",
                    owner,
                    id,
                    "-j",
                    "MARK",
                    "--set-mark",
                    OUTBOUND_MARK,
                ])
            });
        }
    }
    // Replies from the app carry the mark, so the policy route sends them back via lo.
    r.append(
        "OUTPUT",
        Table::Mangle,
        &[
            "-p",
            "tcp",
            "-m",
            "connmark",
            "--mark",
            mark,
            "-j",
            "CONNMARK",
            "--restore-mark",
        ],
    );
    r.insert(
        ISTIO_INBOUND,
        Table::Mangle,
        1,
        &["-p", "tcp", "-m", "mark", "--mark", mark, "-j", "RETURN"],
    );
    r.insert_v4(
        ISTIO_INBOUND,
        Table::Mangle,
        2,
        &[
            "-p",
            "tcp",
            "-s",
            INBOUND_PASSTHROUGH_V4,
            "-i",
            "lo",
            "-j",
            "RETURN",
        ],
    );
    r.insert_v6(
        ISTIO_INBOUND,
        Table::Mangle,
        2,
        &[
            "-p",
            "tcp",
            "-s",
            INBOUND_PASSTHROUGH_V6,
            "-i",
            "lo",
            "-j",
            "RETURN",
        ],
    );
    r.insert(
        ISTIO_INBOUND,
        Table::Mangle,
        3,
        &[
            "-p",
            "tcp",
            "-i",
            "lo",
            "-m",
            "mark",
            "!",
            "--mark",
            OUTBOUND_MARK,
            "-j",
            "RETURN",
        ],
    );
}

/// Expected rulesets here are written from reading istio's `capture/run.go` (function named
/// on each case), not produced by this code.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{config_from_flags, IstioEnv};
    use crate::rules::restore::Transaction;

    fn cfg_env(argv: &[&str], env: IstioEnv) -> Config {
        config_from_flags(argv, &env).expect("config")
    }

    fn cfg(argv: &[&str]) -> Config {
        cfg_env(argv, IstioEnv::default())
    }

    fn v4(argv: &[&str]) -> String {
        Transaction::from_rules(&build(&cfg(argv)), Family::V4).render()
    }

    fn v6(argv: &[&str]) -> String {
        Transaction::from_rules(&build(&cfg(argv)), Family::V6).render()
    }

    /// The uid-then-gid block of ISTIO_OUTPUT for proxy id 1337 without DNS (Run's loops).
    const OWNER_1337: &str = "\
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
";

    #[test]
    fn default_profile_is_the_injected_sidecar() {
        // Seed 003's istio-init listing, as current istio writes it: OUTPUT jumps for every
        // protocol and the proxy's lo rule skips the tunnel port.
        let want = format!(
            "*nat
:ISTIO_INBOUND - [0:0]
:ISTIO_REDIRECT - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 22 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
{OWNER_1337}-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT
"
        );
        assert_eq!(v4(&[]), want);
        assert_eq!(v6(&[]), "", "no IPv6 rules unless IPv6 is on");
    }

    #[test]
    fn port_lists_cidrs_interfaces() {
        // handleInboundPortsInclude (list), shortCircuitExcludeInterfaces,
        // shortCircuitKubeInternalInterface, outbound port/CIDR exclusion and inclusion.
        let got = v4(&[
            "-b",
            "80,443",
            "-i",
            "10.0.0.0/8,fd00::/8",
            "-x",
            "10.1.0.0/16,fd01::/16",
            "-q",
            "3306",
            "-o",
            "25",
            "-k",
            "virt0",
            "-c",
            "eth1",
        ]);
        let want = format!(
            "*nat
:ISTIO_INBOUND - [0:0]
:ISTIO_REDIRECT - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A PREROUTING -i eth1 -j RETURN
-A OUTPUT -o eth1 -j RETURN
-I PREROUTING 1 -i virt0 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 80 -j ISTIO_IN_REDIRECT
-A ISTIO_INBOUND -p tcp --dport 443 -j ISTIO_IN_REDIRECT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -p tcp --dport 25 -j RETURN
-A ISTIO_OUTPUT -p udp --dport 25 -j RETURN
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
{OWNER_1337}-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -d 10.1.0.0/16 -j RETURN
-A ISTIO_OUTPUT -p tcp --dport 3306 -j ISTIO_REDIRECT
-I PREROUTING 1 -i virt0 -d 10.0.0.0/8 -j ISTIO_REDIRECT
-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT
COMMIT
"
        );
        assert_eq!(got, want);
    }

    #[test]
    fn ipv6_family_gets_v6_addresses_and_cidrs() {
        let got = v6(&[
            "--ipv6",
            "-b",
            "",
            "-i",
            "10.0.0.0/8,fd00::/8",
            "-x",
            "10.1.0.0/16,fd01::/16",
            "-k",
            "virt0",
        ]);
        assert!(got.contains("-A ISTIO_OUTPUT -o lo -s ::6/128 -j RETURN\n"));
        assert!(got.contains("-A ISTIO_OUTPUT -o lo ! -d ::1/128 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT\n"));
        assert!(got.contains(
            "-A ISTIO_OUTPUT -d ::1/128 -j RETURN\n-A ISTIO_OUTPUT -d fd01::/16 -j RETURN\n"
        ));
        assert!(got.contains("-I PREROUTING 1 -i virt0 -d fd00::/8 -j ISTIO_REDIRECT\n-A ISTIO_OUTPUT -d fd00::/8 -j ISTIO_REDIRECT\n"));
        assert!(
            !got.contains("10.0.0.0/8") && !got.contains("10.1.0.0/16") && !got.contains("127.0.0")
        );
        // -b '': no inbound jump in either family.
        assert!(!got.contains("-A PREROUTING -p tcp -j ISTIO_INBOUND"));
        assert!(!v4(&["-b", ""]).contains("-A PREROUTING -p tcp -j ISTIO_INBOUND"));
    }

    #[test]
    fn empty_service_cidr_captures_no_outbound() {
        let got = v4(&["-i", ""]);
        assert!(
            !got.contains("-j ISTIO_REDIRECT\n-A")
                && !got.contains("-A ISTIO_OUTPUT -j ISTIO_REDIRECT")
        );
        assert!(
            got.contains("-A OUTPUT -j ISTIO_OUTPUT"),
            "the OUTPUT jump is unconditional"
        );
    }

    #[test]
    fn loopback_in_service_cidr_keeps_app_to_self_captured() {
        // Run: the `-o lo -m owner ! --uid-owner` RETURN is skipped when loopback is included.
        let got = v4(&["-i", "127.0.0.1/32"]);
        assert!(!got.contains("! --uid-owner") && !got.contains("! --gid-owner"));
        assert!(got.contains("-A ISTIO_OUTPUT -d 127.0.0.1/32 -j ISTIO_REDIRECT\n"));
    }

    #[test]
    fn several_proxy_ids_in_order() {
        let got = v4(&["-u", "1337,1338", "-g", "1400"]);
        let lines: Vec<&str> = got.lines().filter(|l| l.contains("-owner")).collect();
        assert_eq!(lines.len(), 9);
        assert!(
            lines[0].contains("--uid-owner 1337")
                && lines[3].contains("--uid-owner 1338")
                && lines[6].contains("--gid-owner 1400")
        );
    }

    #[test]
    fn owner_groups_env() {
        // handleCaptureByOwnerGroup: include list -> one rule of `! --gid-owner` matches.
        let c = cfg_env(
            &[],
            IstioEnv {
                owner_groups: Some("100,200".into()),
                ..Default::default()
            },
        );
        let got = Transaction::from_rules(&build(&c), Family::V4).render();
        assert!(got.contains("-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN\n-A ISTIO_OUTPUT -m owner ! --gid-owner 100 -m owner ! --gid-owner 200 -j RETURN\n-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN\n"));
        let c = cfg_env(
            &[],
            IstioEnv {
                owner_groups_exclude: Some("300,400".into()),
                ..Default::default()
            },
        );
        let got = Transaction::from_rules(&build(&c), Family::V4).render();
        assert!(got.contains("-A ISTIO_OUTPUT -m owner --gid-owner 300 -j RETURN\n-A ISTIO_OUTPUT -m owner --gid-owner 400 -j RETURN\n-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN\n"));
        let c = cfg_env(
            &[],
            IstioEnv {
                ipv4_loopback_cidr: Some("127.0.0.0/8".into()),
                ..Default::default()
            },
        );
        let got = Transaction::from_rules(&build(&c), Family::V4).render();
        assert!(
            got.contains("! -d 127.0.0.0/8 -p tcp ! --dport 15008 -m owner --uid-owner 1337")
                && got.contains("-A ISTIO_OUTPUT -d 127.0.0.0/8 -j RETURN\n")
        );
        assert!(!got.contains("127.0.0.1/32"));
    }

    #[test]
    fn dns_with_servers() {
        // SetupDNSRedir + addDNSConntrackZones with servers from resolv.conf / --dns-servers.
        let got = v4(&["--redirect-dns", "--dns-servers", "10.96.0.10"]);
        let want_nat_tail = "\
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp -m multiport ! --dports 53,15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -p tcp ! --dport 53 -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -p tcp ! --dport 53 -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_OUTPUT_DNS
-A ISTIO_OUTPUT_DNS -p tcp --dport 53 -d 10.96.0.10/32 -j REDIRECT --to-ports 15053
-A ISTIO_OUTPUT_DNS -p udp --dport 53 -d 10.96.0.10/32 -j REDIRECT --to-port 15053
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT
*raw
:ISTIO_OUTPUT_DNS - [0:0]
:ISTIO_INBOUND - [0:0]
-A OUTPUT -j ISTIO_OUTPUT_DNS
-A ISTIO_OUTPUT_DNS -p udp --dport 53 -m owner --uid-owner 1337 -j CT --zone 1
-A ISTIO_OUTPUT_DNS -p udp --sport 15053 -m owner --uid-owner 1337 -j CT --zone 2
-A ISTIO_OUTPUT_DNS -p udp --dport 53 -m owner --gid-owner 1337 -j CT --zone 1
-A ISTIO_OUTPUT_DNS -p udp --sport 15053 -m owner --gid-owner 1337 -j CT --zone 2
-A PREROUTING -j ISTIO_INBOUND
-A ISTIO_OUTPUT_DNS -p udp --dport 53 -d 10.96.0.10/32 -j CT --zone 2
-A ISTIO_INBOUND -p udp --sport 53 -s 10.96.0.10/32 -j CT --zone 1
COMMIT
";
        assert!(got.ends_with(want_nat_tail), "{got}");
        assert!(got.contains(":ISTIO_OUTPUT - [0:0]\n:ISTIO_OUTPUT_DNS - [0:0]\n"));
        // IPv6 on with only an IPv4 server: raw jump and zones, but no nat DNS jump for v6.
        let six = v6(&["--ipv6", "--redirect-dns", "--dns-servers", "10.96.0.10"]);
        assert!(
            six.contains("-A OUTPUT -j ISTIO_OUTPUT_DNS")
                && !six.contains("-A ISTIO_OUTPUT -j ISTIO_OUTPUT_DNS")
        );
        assert!(!six.contains("-A PREROUTING -j ISTIO_INBOUND"));
    }

    #[test]
    fn dns_without_servers_is_off_unless_capture_all() {
        assert!(!v4(&["--redirect-dns", "--dns-servers", ""]).contains("DNS"));
        let all = v4(&["--redirect-dns", "--capture-all-dns", "--dns-servers", ""]);
        assert!(all.contains("-A ISTIO_OUTPUT_DNS -p tcp --dport 53 -j REDIRECT --to-ports 15053\n-A ISTIO_OUTPUT_DNS -p udp --dport 53 -j REDIRECT --to-port 15053\n"));
        assert!(all.contains("-A PREROUTING -j ISTIO_INBOUND\n-A ISTIO_OUTPUT_DNS -p udp --dport 53 -j CT --zone 2\n-A ISTIO_INBOUND -p udp --sport 53 -j CT --zone 1\nCOMMIT\n"));
        // --capture-all-dns alone does nothing.
        assert!(!v4(&["--capture-all-dns"]).contains("DNS"));
    }

    #[test]
    fn drop_invalid_uses_mangle() {
        let got = v4(&["--drop-invalid"]);
        assert!(got.starts_with("*mangle\n:ISTIO_DROP - [0:0]\n-A PREROUTING -m conntrack --ctstate INVALID -j ISTIO_DROP\n-A ISTIO_DROP -j DROP\nCOMMIT\n*nat\n"));
    }

    #[test]
    fn tproxy_inbound() {
        // handleInboundPortsInclude (TPROXY) and the mark rules at the end of Run.
        let got = v4(&["-m", "TPROXY", "-b", "*", "-d", "22", "-c", "eth1"]);
        let want_mangle = "*mangle
:ISTIO_DIVERT - [0:0]
:ISTIO_TPROXY - [0:0]
:ISTIO_INBOUND - [0:0]
-A PREROUTING -i eth1 -j RETURN
-A OUTPUT -o eth1 -j RETURN
-A ISTIO_DIVERT -j MARK --set-mark 1337
-A ISTIO_DIVERT -j ACCEPT
-A ISTIO_TPROXY ! -d 127.0.0.1/32 -p tcp -j TPROXY --tproxy-mark 1337/0xffffffff --on-port 15006
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 22 -j RETURN
-A ISTIO_INBOUND -p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j ISTIO_DIVERT
-A ISTIO_INBOUND -p tcp -j ISTIO_TPROXY
-A PREROUTING -p tcp -m mark --mark 1337 -j CONNMARK --save-mark
-A OUTPUT -p tcp -o lo -m mark --mark 1337 -j RETURN
-A OUTPUT ! -d 127.0.0.1/32 -p tcp -o lo -m owner --uid-owner 1337 -j MARK --set-mark 1338
-A OUTPUT ! -d 127.0.0.1/32 -p tcp -o lo -m owner --gid-owner 1337 -j MARK --set-mark 1338
-A OUTPUT -p tcp -m connmark --mark 1337 -j CONNMARK --restore-mark
-I ISTIO_INBOUND 1 -p tcp -m mark --mark 1337 -j RETURN
-I ISTIO_INBOUND 2 -p tcp -s 127.0.0.6/32 -i lo -j RETURN
-I ISTIO_INBOUND 3 -p tcp -i lo -m mark ! --mark 1338 -j RETURN
COMMIT
";
        assert!(got.starts_with(want_mangle), "{got}");
        // nat keeps ISTIO_INBOUND for the tunnel port but has no PREROUTING jump.
        let nat = &got[want_mangle.len()..];
        assert!(
            nat.contains("-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN")
                && !nat.contains("-j ISTIO_INBOUND")
        );
        // Listed ports, custom mark and capture port.
        let l = v4(&["-m", "TPROXY", "-b", "8080", "-t", "77", "-z", "16006"]);
        assert!(l.contains("-A ISTIO_INBOUND -p tcp --dport 8080 -m conntrack --ctstate RELATED,ESTABLISHED -j ISTIO_DIVERT\n-A ISTIO_INBOUND -p tcp --dport 8080 -j ISTIO_TPROXY\n"));
        assert!(
            l.contains("--tproxy-mark 77/0xffffffff --on-port 16006")
                && l.contains("-A ISTIO_DIVERT -j MARK --set-mark 77")
        );
        let six = v6(&["--ipv6", "-m", "TPROXY"]);
        assert!(
            six.contains("-I ISTIO_INBOUND 2 -p tcp -s ::6/128 -i lo -j RETURN")
                && six.contains("! -d ::1/128 -p tcp -j TPROXY")
        );
    }

    #[test]
    fn ports_are_configurable() {
        let got = v4(&["-p", "16001", "-z", "16006", "-e", "16008"]);
        assert!(
            got.contains("--to-ports 16001")
                && got.contains("--to-ports 16006")
                && got.contains("--dport 16008 -j RETURN")
        );
        assert!(got.contains("! --dport 16008 -m owner"));
    }

    #[test]
    fn every_chain_built_is_one_of_istios() {
        // The widest configuration: TPROXY, DNS, drop-invalid, IPv6, interfaces.
        let c = cfg(&[
            "-m",
            "TPROXY",
            "--redirect-dns",
            "--capture-all-dns",
            "--drop-invalid",
            "--ipv6",
            "-c",
            "eth1",
            "-k",
            "virt0",
        ]);
        let rules = build(&c);
        let mut seen = Vec::new();
        for family in Family::both() {
            for table in rules.tables(family) {
                for chain in rules.chains(family, table) {
                    assert!(CHAINS.contains(&chain.as_str()), "{chain} in {table}");
                    if !seen.contains(&chain) {
                        seen.push(chain);
                    }
                }
            }
        }
        assert_eq!(
            seen.len(),
            CHAINS.len(),
            "a listed chain is never built: {seen:?}"
        );
    }

    #[test]
    fn dry_run_prints_both_inputs() {
        let out = crate::rules::restore::dry_run(&build(&cfg(&["--ipv6"])));
        assert!(out.starts_with("# iptables-restore\n*nat\n"));
        let (four, six) = out.split_once("# ip6tables-restore\n").expect("IPv6 part");
        assert!(
            four.contains("127.0.0.6/32") && six.contains("::6/128") && six.ends_with("COMMIT\n")
        );
        assert!(!crate::rules::restore::dry_run(&build(&cfg(&[]))).contains("ip6tables"));
    }
}
