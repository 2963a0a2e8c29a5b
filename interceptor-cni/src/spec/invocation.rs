//! One run of the plugin: the `CNI_*` environment variables and stdin, checked the way the
//! spec says for the command at hand.

use std::path::PathBuf;

use super::args::CniArgs;
use super::command::Command;
use super::error::SpecError;
use super::netconf::{valid_name, NetConf};
use super::version;

/// The longest interface name Linux takes (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;

/// A checked invocation.
#[derive(Clone, Debug, PartialEq)]
pub struct Invocation {
    pub command: Command,
    /// `CNI_CONTAINERID`; empty when the command does not take one and none was given.
    pub container_id: String,
    /// `CNI_NETNS`; may be absent on DEL (the namespace may already be gone).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`; empty when the command does not take one and none was given.
    pub ifname: String,
    /// `CNI_ARGS` (attachment commands only; empty otherwise).
    pub args: CniArgs,
    /// `CNI_PATH`, split on `:`.
    pub path: Vec<PathBuf>,
    pub input: Input,
}

/// What stdin held.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// VERSION: the version the runtime asked about, if it sent one.
    Version { requested: Option<String> },
    /// Every other command: the network configuration, its version already checked.
    Conf(Box<NetConf>),
}

impl Invocation {
    /// Reads the invocation from `env` (a lookup, so tests need not touch the process
    /// environment) and the bytes read from stdin. An empty variable counts as unset, as
    /// in libcni's skel.
    pub fn parse(
        env: &dyn Fn(&str) -> Option<String>,
        stdin: &[u8],
    ) -> Result<Invocation, SpecError> {
        let get = |name: &str| env(name).filter(|v| !v.is_empty());
        let command = match get("CNI_COMMAND") {
            Some(c) => Command::parse(&c)?,
            None => {
                return Err(SpecError::MissingEnv {
                    names: vec!["CNI_COMMAND"],
                })
            }
        };
        let missing: Vec<&'static str> = command
            .required_env()
            .iter()
            .copied()
            .filter(|name| get(name).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(SpecError::MissingEnv { names: missing });
        }

        let container_id = get("CNI_CONTAINERID").unwrap_or_default();
        let ifname = get("CNI_IFNAME").unwrap_or_default();
        let mut args = CniArgs::default();
        if command.is_attachment() {
            if !valid_name(&container_id) {
                return Err(SpecError::InvalidContainerId {
                    value: container_id,
                });
            }
            check_ifname(&ifname)?;
            if let Some(a) = get("CNI_ARGS") {
                args = CniArgs::parse(&a)?;
            }
        }
        let netns = get("CNI_NETNS").map(PathBuf::from);
        let path = get("CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();

        let input = if command == Command::Version {
            Input::Version {
                requested: requested_version(stdin)?,
            }
        } else {
            let conf = NetConf::parse(stdin)?;
            version::check(command, &conf.cni_version)?;
            Input::Conf(Box::new(conf))
        };
        Ok(Invocation {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
            input,
        })
    }

    /// [`parse`](Self::parse) with the environment in a map (for tests).
    #[cfg(test)]
    pub(crate) fn from_map(
        env: &std::collections::HashMap<String, String>,
        stdin: &[u8],
    ) -> Result<Invocation, SpecError> {
        Invocation::parse(&|k| env.get(k).cloned(), stdin)
    }

    /// The network configuration (every command but VERSION has one).
    pub fn conf(&self) -> Option<&NetConf> {
        match &self.input {
            Input::Conf(c) => Some(c),
            Input::Version { .. } => None,
        }
    }
}

/// The version VERSION's stdin asks about: none when stdin is empty or has no
/// `cniVersion`; an error when it is not JSON.
fn requested_version(stdin: &[u8]) -> Result<Option<String>, SpecError> {
    if stdin.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_slice(stdin).map_err(|e| SpecError::NotJson {
        message: e.to_string(),
    })?;
    match v.get("cniVersion") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if s.is_empty() => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(SpecError::FieldType {
            field: "cniVersion".into(),
            expected: "a string",
        }),
    }
}

/// libcni's interface-name rules: what the kernel accepts.
fn check_ifname(name: &str) -> Result<(), SpecError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > MAX_IFNAME {
        "longer than 15 bytes"
    } else if name == "." || name == ".." {
        "'.' and '..' are not interface names"
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        "contains '/', ':' or whitespace"
    } else {
        return Ok(());
    };
    Err(SpecError::InvalidIfName {
        value: name.to_string(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"interceptor",
        "prevResult":{"cniVersion":"1.0.0","ips":[]}}"#;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn add_env() -> HashMap<String, String> {
        env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "0a1b2c3d"),
            ("CNI_NETNS", "/var/run/netns/cni-1234"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1",
            ),
            ("CNI_PATH", "/opt/cni/bin::/usr/libexec/cni"),
        ])
    }

    #[test]
    fn add_reads_everything() {
        let inv = Invocation::from_map(&add_env(), CONF.as_bytes()).unwrap();
        assert_eq!(inv.command, Command::Add);
        assert_eq!(inv.container_id, "0a1b2c3d");
        assert_eq!(inv.netns, Some(PathBuf::from("/var/run/netns/cni-1234")));
        assert_eq!(inv.ifname, "eth0");
        assert_eq!(inv.args.pod_namespace(), Some("shop"));
        assert_eq!(
            inv.path,
            [
                PathBuf::from("/opt/cni/bin"),
                PathBuf::from("/usr/libexec/cni")
            ]
        );
        assert_eq!(inv.conf().unwrap().name, "k8s-pod-network");
    }

    #[test]
    fn required_variables_per_command() {
        // (command, variables removed, missing names reported)
        let cases: &[(&str, &[&str], &[&str])] = &[
            ("ADD", &["CNI_NETNS"], &["CNI_NETNS"]),
            (
                "ADD",
                &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH", "CNI_ARGS"],
                &["CNI_CONTAINERID", "CNI_IFNAME"],
            ),
            ("CHECK", &["CNI_NETNS"], &["CNI_NETNS"]),
            ("DEL", &["CNI_CONTAINERID"], &["CNI_CONTAINERID"]),
            ("GC", &["CNI_PATH"], &["CNI_PATH"]),
        ];
        for (cmd, removed, want) in cases {
            let mut e = add_env();
            e.insert("CNI_COMMAND".into(), cmd.to_string());
            for r in *removed {
                e.remove(*r);
            }
            assert_eq!(
                Invocation::from_map(&e, CONF.as_bytes()),
                Err(SpecError::MissingEnv {
                    names: want.to_vec()
                }),
                "{cmd} without {removed:?}"
            );
        }
        // DEL may come without a netns, STATUS and VERSION with nothing but the command;
        // an empty variable is an unset one.
        let mut e = add_env();
        e.insert("CNI_COMMAND".into(), "DEL".into());
        e.insert("CNI_NETNS".into(), String::new());
        let inv = Invocation::from_map(&e, CONF.as_bytes()).unwrap();
        assert_eq!(inv.netns, None);

        let conf11 = CONF.replace("1.0.0", "1.1.0");
        let inv =
            Invocation::from_map(&env(&[("CNI_COMMAND", "STATUS")]), conf11.as_bytes()).unwrap();
        assert_eq!(inv.command, Command::Status);
        assert_eq!(inv.container_id, "");

        let inv = Invocation::from_map(&env(&[("CNI_COMMAND", "VERSION")]), b"").unwrap();
        assert_eq!(inv.input, Input::Version { requested: None });

        assert_eq!(
            Invocation::from_map(&env(&[]), b""),
            Err(SpecError::MissingEnv {
                names: vec!["CNI_COMMAND"]
            })
        );
        assert_eq!(
            Invocation::from_map(&env(&[("CNI_COMMAND", "REMOVE")]), b""),
            Err(SpecError::UnknownCommand {
                value: "REMOVE".into()
            })
        );
    }

    #[test]
    fn container_id_and_ifname_are_checked() {
        let mut e = add_env();
        e.insert("CNI_CONTAINERID".into(), "-bad".into());
        assert_eq!(
            Invocation::from_map(&e, CONF.as_bytes()),
            Err(SpecError::InvalidContainerId {
                value: "-bad".into()
            })
        );
        for (name, reason) in [
            ("averyveryverylongname", "longer than 15 bytes"),
            ("..", "'.' and '..' are not interface names"),
            ("eth:0", "contains '/', ':' or whitespace"),
            ("eth 0", "contains '/', ':' or whitespace"),
        ] {
            let mut e = add_env();
            e.insert("CNI_IFNAME".into(), name.into());
            assert_eq!(
                Invocation::from_map(&e, CONF.as_bytes()),
                Err(SpecError::InvalidIfName {
                    value: name.into(),
                    reason
                })
            );
        }
        let mut e = add_env();
        e.insert("CNI_ARGS".into(), "K8S_POD_NAME".into());
        assert_eq!(
            Invocation::from_map(&e, CONF.as_bytes()),
            Err(SpecError::InvalidCniArgs {
                entry: "K8S_POD_NAME".into()
            })
        );
    }

    #[test]
    fn versions_are_checked_per_command() {
        let e = add_env();
        let old = CONF.replace("1.0.0", "0.2.0");
        assert_eq!(
            Invocation::from_map(&e, old.as_bytes()),
            Err(SpecError::UnsupportedVersion {
                version: "0.2.0".into()
            })
        );
        let mut e = add_env();
        e.insert("CNI_COMMAND".into(), "CHECK".into());
        let v031 = CONF.replace("1.0.0", "0.3.1");
        assert!(matches!(
            Invocation::from_map(&e, v031.as_bytes()),
            Err(SpecError::CommandTooNew {
                command: "CHECK",
                ..
            })
        ));
        assert!(Invocation::from_map(&e, CONF.as_bytes()).is_ok());
    }

    #[test]
    fn version_request() {
        let e = env(&[("CNI_COMMAND", "VERSION")]);
        let inv = Invocation::from_map(&e, br#"{"cniVersion":"0.4.0"}"#).unwrap();
        assert_eq!(
            inv.input,
            Input::Version {
                requested: Some("0.4.0".into())
            }
        );
        assert_eq!(inv.conf(), None);
        let inv = Invocation::from_map(&e, b"  \n").unwrap();
        assert_eq!(inv.input, Input::Version { requested: None });
        assert!(matches!(
            Invocation::from_map(&e, b"{"),
            Err(SpecError::NotJson { .. })
        ));
    }
}
