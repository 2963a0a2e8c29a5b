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
pub const ISTIO_DROP: &str = "ISTIO_DROP";

/// Mark the proxy puts on its outbound-to-app packets in TPROXY mode (istio `OutboundMark`).
pub const OUTBOUND_MARK: &str = "1338";
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
