//! Which of istio-iptables' flags the eBPF mode honours, and the refusal, by name, of
//! those it cannot: nobody should believe a flag took effect when it did not.
//!
//! A flag is refused only when set to something else than its default, i.e. when it asks
//! for something: the sidecar injector's command line carries `-m REDIRECT` and friends,
//! which must keep working. "Set" is judged by comparing with [`IstioFlags::default()`]
//! and [`Compat::default()`] (the clap defaults are the same values), so a flag given
//! explicitly with its default value is accepted (it asks for nothing), and a value from
//! the environment (`ISTIO_INBOUND_TPROXY_MARK=5`) is refused like the flag, with the
//! variable named ([`IstioFlags::env_sources`]).
//!
//! | flag | eBPF mode |
//! |------|-----------|
//! | `-p -z -e -u -g -b -d -i -x -q -o --redirect-dns` | honoured (maps) |
//! | `--capture-all-dns` | honoured: `--redirect-dns` redirects DNS to every server |
//! | `--ipv6`, `--dual-stack` | honoured: the programs cover both families always |
//! | `--run-validation`, `--iptables-probe-port`, `--probe-timeout` | honoured (`validate`) |
//! | `--skip-rule-apply` | honoured: nothing is attached (with `--run-validation`: only validate) |
//! | `--cleanup-only` | honoured: same as `cleanup --mode ebpf` |
//! | `--reconcile`, `--force-apply` | honoured: `init` always updates the pinned links in place |
//! | `--network-namespace` | honoured: entered before anything is read or attached |
//! | `--no-socket-fast-path` | honoured (ours): no socket pairing, sk_msg not attached |
//! | `-m TPROXY`, `-t`, `-r` | refused: sk_lookup keeps the original destination, no mark or route |
//! | `-k`, `-c` | refused: the programs do not tell traffic apart by interface |
//! | `--native-nftables`, `--force-iptables-binary` | refused: no ruleset is written |
//! | `--drop-invalid` | refused: there is no conntrack/NAT whose INVALID packets to drop |
//! | `-n/--dry-run` | refused: there is no ruleset to print |
//! | `--dns-servers` | refused: DNS to every server is redirected, not to a list |
//! | `--debug` with `--skip-rule-apply`/`--cleanup-only` | refused: nothing is loaded to log |

use crate::config::IstioFlags;
use crate::init::Compat;

/// A flag the eBPF mode cannot honour, with the value given and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag}{} `{value}` is not supported in eBPF mode: {reason}; drop it, or use --mode iptables",
        env.as_ref().map(|v| format!(" (from {v})")).unwrap_or_default())]
pub struct Unsupported {
    /// The flag as a user writes it (`-t/--istio-inbound-tproxy-mark`).
    pub flag: &'static str,
    pub value: String,
    pub reason: &'static str,
    /// The environment variable the value came from, when it did not come from the
    /// command line ([`IstioFlags::env_sources`]).
    pub env: Option<String>,
}

/// Refuses, by name, the first flag of `flags`/`compat` that asks the eBPF mode for
/// something it does not do (see the module's table). `debug` is `--debug`.
pub fn check(flags: &IstioFlags, compat: &Compat, debug: bool) -> Result<(), Unsupported> {
    let d = IstioFlags::default();
    let refuse = |flag: &'static str, value: &str, reason| {
        // env_sources is keyed by the long flag: `--istio-inbound-tproxy-mark`.
        let long = flag.rsplit('/').next().unwrap_or(flag);
        Err(Unsupported {
            flag,
            value: value.to_string(),
            reason,
            env: flags.env_sources.get(long).cloned(),
        })
    };
    let changed = |given: &str, default: &str| given.trim() != default.trim();
    const NO_TPROXY: &str =
        "sk_lookup already hands inbound connections to the proxy with their original destination, as TPROXY does, with no packet mark or policy route";
    if changed(&flags.interception_mode, &d.interception_mode) {
        return refuse(
            "-m/--istio-inbound-interception-mode",
            &flags.interception_mode,
            NO_TPROXY,
        );
    }
    if changed(&flags.tproxy_mark, &d.tproxy_mark) {
        return refuse(
            "-t/--istio-inbound-tproxy-mark",
            &flags.tproxy_mark,
            NO_TPROXY,
        );
    }
    if changed(&flags.tproxy_route_table, &d.tproxy_route_table) {
        return refuse(
            "-r/--istio-inbound-tproxy-route-table",
            &flags.tproxy_route_table,
            NO_TPROXY,
        );
    }
    const NO_INTERFACES: &str =
        "the programs act on sockets and do not tell traffic apart by interface";
    if changed(&flags.kube_virt_interfaces, &d.kube_virt_interfaces) {
        return refuse(
            "-k/--kube-virt-interfaces",
            &flags.kube_virt_interfaces,
            NO_INTERFACES,
        );
    }
    if changed(&flags.exclude_interfaces, &d.exclude_interfaces) {
        return refuse(
            "-c/--istio-exclude-interfaces",
            &flags.exclude_interfaces,
            NO_INTERFACES,
        );
    }
    if compat.native_nftables {
        return refuse(
            "--native-nftables",
            "true",
            "no nftables (or iptables) rules are written",
        );
    }
    if let Some(b) = flags
        .force_iptables_binary
        .as_deref()
        .filter(|b| !b.trim().is_empty())
    {
        return refuse("--force-iptables-binary", b, "no iptables binary is run");
    }
    if flags.drop_invalid {
        return refuse(
            "--drop-invalid",
            "true",
            "connections are not NATed, so there are no conntrack INVALID packets to drop",
        );
    }
    if flags.dry_run {
        return refuse(
            "-n/--dry-run",
            "true",
            "there is no ruleset to print (`status` shows what is attached)",
        );
    }
    if let Some(servers) = &flags.dns_servers {
        return refuse(
            "--dns-servers",
            servers,
            "--redirect-dns sends DNS to every server to the proxy (as --capture-all-dns), not only to listed ones",
        );
    }
    if debug && (compat.skip_rule_apply || compat.cleanup_only) {
        let flag = if compat.cleanup_only {
            "--cleanup-only"
        } else {
            "--skip-rule-apply"
        };
        return Err(Unsupported {
            flag: "--debug",
            value: format!("with {flag}"),
            reason: "nothing is loaded whose logs could be followed",
            env: None,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::flags_from_argv;

    fn check_argv(argv: &[&str]) -> Result<(), Unsupported> {
        check(&flags_from_argv(argv), &Compat::default(), false)
    }

    #[test]
    fn the_injectors_command_line_is_accepted() {
        // What istio's sidecar injector passes istio-init, defaults spelled out included.
        check_argv(&[
            "-p",
            "15001",
            "-z",
            "15006",
            "-u",
            "1337",
            "-m",
            "REDIRECT",
            "-i",
            "*",
            "-x",
            "",
            "-b",
            "*",
            "-d",
            "15090,15021,15020",
            "--redirect-dns",
            "--capture-all-dns",
            "--run-validation",
            "--ipv6",
            "--dual-stack",
            "-t",
            "1337",
            "-r",
            "133",
            "-e",
            "15008",
        ])
        .unwrap();
    }

    #[test]
    fn flags_without_meaning_in_ebpf_mode_are_refused_by_name() {
        for (argv, flag, value) in [
            (
                &["-m", "TPROXY"][..],
                "-m/--istio-inbound-interception-mode",
                "TPROXY",
            ),
            (&["-t", "5"][..], "-t/--istio-inbound-tproxy-mark", "5"),
            (
                &["-r", "200"][..],
                "-r/--istio-inbound-tproxy-route-table",
                "200",
            ),
            (&["-k", "eth1"][..], "-k/--kube-virt-interfaces", "eth1"),
            (&["-c", "eth2"][..], "-c/--istio-exclude-interfaces", "eth2"),
            (
                &["--force-iptables-binary", "nft"][..],
                "--force-iptables-binary",
                "nft",
            ),
            (&["--drop-invalid"][..], "--drop-invalid", "true"),
            (&["-n"][..], "-n/--dry-run", "true"),
            (
                &["--dns-servers", "10.0.0.10"][..],
                "--dns-servers",
                "10.0.0.10",
            ),
        ] {
            let err = check_argv(argv).unwrap_err();
            assert_eq!((err.flag, err.value.as_str()), (flag, value), "{argv:?}");
            let msg = err.to_string();
            assert!(
                msg.starts_with(flag)
                    && msg.contains("eBPF mode")
                    && msg.contains("--mode iptables"),
                "{msg}"
            );
        }
    }

    #[test]
    fn a_value_from_the_environment_names_its_variable() {
        let mut f = flags_from_argv(&["-t", "5"]);
        f.env_sources.insert(
            "--istio-inbound-tproxy-mark".into(),
            "ISTIO_INBOUND_TPROXY_MARK".into(),
        );
        let msg = check(&f, &Compat::default(), false)
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("-t/--istio-inbound-tproxy-mark (from ISTIO_INBOUND_TPROXY_MARK) `5`"),
            "{msg}"
        );
    }

    #[test]
    fn compat_flags_are_refused_or_honoured_by_name() {
        let f = IstioFlags::default();
        let native = Compat {
            native_nftables: true,
            ..Compat::default()
        };
        assert_eq!(
            check(&f, &native, false).unwrap_err().flag,
            "--native-nftables"
        );
        for compat in [
            Compat {
                skip_rule_apply: true,
                ..Compat::default()
            },
            Compat {
                cleanup_only: true,
                ..Compat::default()
            },
        ] {
            check(&f, &compat, false).unwrap();
            let err = check(&f, &compat, true).unwrap_err().to_string();
            assert!(err.starts_with("--debug `with --"), "{err}");
        }
        let honoured = Compat {
            reconcile: false,
            force_apply: true,
            log_as_json: true,
            network_namespace: Some("/run/netns/x".into()),
            ..Compat::default()
        };
        check(&f, &honoured, true).unwrap();
    }
}
