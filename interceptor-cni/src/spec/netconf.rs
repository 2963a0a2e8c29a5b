//! The network configuration the runtime writes to stdin: the spec's fields plus this
//! plugin's own keys.
//!
//! Our keys (all optional, snake_case like istio-cni's):
//!
//! | key                  | type            | default                 | meaning |
//! |----------------------|-----------------|-------------------------|---------|
//! | `mode`               | `"iptables"` or `"ebpf"` | `"iptables"`   | interception mechanism |
//! | `namespaces`         | list of strings | `[]`                    | namespaces meshed when the runtime passes no pod annotations (podman) |
//! | `exclude_namespaces` | list of strings | `[]`                    | never meshed; the installer always writes `kube-system` and the agent's namespace here |
//! | `state_dir`          | path            | `/var/run/interceptor`  | where the plugin keeps per-pod state |
//! | `log_file`           | path            | none (stderr only)      | where the plugin appends its log |
//! | `redirect_dns`       | bool            | `false`                 | capture DNS to the agent (istio-cni reads `ISTIO_META_DNS_CAPTURE` from the proxy's env, which is mesh-wide in practice) |
//! | `dual_stack`         | bool            | `false`                 | as the proxy's `ISTIO_DUAL_STACK` |
//! | `drop_invalid`       | bool            | `false`                 | as the proxy's `INVALID_DROP` |
//! | `proxy_uid`          | integer         | `1337`                  | the sidecar's uid (istio-cni reads the proxy container's `runAsUser`) |
//! | `proxy_gid`          | integer         | `1337`                  | the sidecar's gid (`runAsGroup`) |
//! | `socket_fast_path`   | bool            | `true`                  | eBPF mode: pair the app's and the sidecar's loopback sockets (sk_msg); `false` for a sidecar that reads with splice(2), as `init --no-socket-fast-path`. The iptables mode has no fast path and ignores it |
//!
//! Unknown keys are ignored (a conflist entry carries `capabilities` and whatever else the
//! installer put there). A key with the wrong JSON type is an error naming it; `null`
//! counts as absent.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Map, Value};

use super::error::SpecError;

/// The runtimeConfig key under which containerd and CRI-O pass the pod's annotations
/// (when the conflist entry declares the capability).
pub(crate) const POD_ANNOTATIONS_CAPABILITY: &str = "io.kubernetes.cri.pod-annotations";

/// The default `state_dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/run/interceptor";

/// The sidecar's uid and gid when nothing says otherwise (istio's default).
pub(crate) const DEFAULT_PROXY_ID: u32 = 1337;

/// How the pod's traffic is sent through the sidecar.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mechanism {
    /// iptables rules in the pod's network namespace (istio-iptables' ruleset).
    #[default]
    Iptables,
    /// eBPF programs attached to the pod's cgroup.
    Ebpf,
}

impl Mechanism {
    pub fn parse(s: &str) -> Result<Mechanism, SpecError> {
        match s {
            "iptables" => Ok(Mechanism::Iptables),
            "ebpf" => Ok(Mechanism::Ebpf),
            _ => Err(SpecError::UnknownMode {
                value: s.to_string(),
            }),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Iptables => "iptables",
            Mechanism::Ebpf => "ebpf",
        }
    }
}

/// A parsed network configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    /// `type`: the plugin's binary name.
    pub plugin_type: String,
    /// The previous plugin's result, kept as JSON and passed through on ADD.
    pub prev_result: Option<Value>,
    pub runtime_config: RuntimeConfig,
    pub plugin: PluginConf,
}

/// What this plugin reads from `runtimeConfig`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// `io.kubernetes.cri.pod-annotations`; `None` when the runtime passed none (podman,
    /// or a conflist entry without the capability).
    pub pod_annotations: Option<BTreeMap<String, String>>,
}

/// This plugin's own configuration keys (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginConf {
    pub mode: Mechanism,
    pub namespaces: Vec<String>,
    pub exclude_namespaces: Vec<String>,
    pub state_dir: PathBuf,
    pub log_file: Option<PathBuf>,
    pub redirect_dns: bool,
    pub dual_stack: bool,
    pub drop_invalid: bool,
    pub proxy_uid: u32,
    pub proxy_gid: u32,
    /// eBPF mode: the socket fast path (`false`: pods get `--no-socket-fast-path`).
    pub socket_fast_path: bool,
}

impl Default for PluginConf {
    fn default() -> PluginConf {
        PluginConf {
            mode: Mechanism::Iptables,
            namespaces: Vec::new(),
            exclude_namespaces: Vec::new(),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            log_file: None,
            redirect_dns: false,
            dual_stack: false,
            drop_invalid: false,
            proxy_uid: DEFAULT_PROXY_ID,
            proxy_gid: DEFAULT_PROXY_ID,
            socket_fast_path: true,
        }
    }
}

impl PluginConf {
    /// Reads our keys from a conf object; absent keys take their defaults.
    pub(crate) fn from_object(obj: &Map<String, Value>) -> Result<PluginConf, SpecError> {
        let d = PluginConf::default();
        Ok(PluginConf {
            mode: match opt_str(obj, "mode")? {
                Some(m) => Mechanism::parse(&m)?,
                None => d.mode,
            },
            namespaces: opt_str_list(obj, "namespaces")?.unwrap_or_default(),
            exclude_namespaces: opt_str_list(obj, "exclude_namespaces")?.unwrap_or_default(),
            state_dir: opt_str(obj, "state_dir")?.map_or(d.state_dir, PathBuf::from),
            log_file: opt_str(obj, "log_file")?.map(PathBuf::from),
            redirect_dns: opt_bool(obj, "redirect_dns")?.unwrap_or(d.redirect_dns),
            dual_stack: opt_bool(obj, "dual_stack")?.unwrap_or(d.dual_stack),
            drop_invalid: opt_bool(obj, "drop_invalid")?.unwrap_or(d.drop_invalid),
            proxy_uid: opt_u32(obj, "proxy_uid")?.unwrap_or(d.proxy_uid),
            proxy_gid: opt_u32(obj, "proxy_gid")?.unwrap_or(d.proxy_gid),
            socket_fast_path: opt_bool(obj, "socket_fast_path")?.unwrap_or(d.socket_fast_path),
        })
    }

    /// Our keys as JSON, every one written out (so the conflist shows the settings in
    /// force); what [`from_object`](Self::from_object) reads back unchanged.
    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("mode".into(), self.mode.as_str().into());
        m.insert("namespaces".into(), self.namespaces.clone().into());
        m.insert(
            "exclude_namespaces".into(),
            self.exclude_namespaces.clone().into(),
        );
        m.insert(
            "state_dir".into(),
            self.state_dir.to_string_lossy().into_owned().into(),
        );
        if let Some(f) = &self.log_file {
            m.insert("log_file".into(), f.to_string_lossy().into_owned().into());
        }
        m.insert("redirect_dns".into(), self.redirect_dns.into());
        m.insert("dual_stack".into(), self.dual_stack.into());
        m.insert("drop_invalid".into(), self.drop_invalid.into());
        m.insert("proxy_uid".into(), self.proxy_uid.into());
        m.insert("proxy_gid".into(), self.proxy_gid.into());
        m.insert("socket_fast_path".into(), self.socket_fast_path.into());
        m
    }
}

impl NetConf {
    /// Parses stdin. The version is not checked here (see [`super::version::check`]);
    /// `cniVersion`, `name` and `type` must be present.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, SpecError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| SpecError::NotJson {
            message: e.to_string(),
        })?;
        let Value::Object(obj) = value else {
            return Err(SpecError::NotAnObject);
        };
        let cni_version = opt_str(&obj, "cniVersion")?
            .filter(|v| !v.is_empty())
            .ok_or(SpecError::MissingVersion)?;
        let name = opt_str(&obj, "name")?
            .filter(|v| !v.is_empty())
            .ok_or(SpecError::MissingField { field: "name" })?;
        if !valid_name(&name) {
            return Err(SpecError::InvalidNetworkName { value: name });
        }
        let plugin_type = opt_str(&obj, "type")?
            .filter(|v| !v.is_empty())
            .ok_or(SpecError::MissingField { field: "type" })?;
        let prev_result = obj.get("prevResult").filter(|v| !v.is_null()).cloned();
        let runtime_config = match obj.get("runtimeConfig") {
            None | Some(Value::Null) => RuntimeConfig::default(),
            Some(Value::Object(rc)) => RuntimeConfig::from_object(rc)?,
            Some(_) => return Err(field_type("runtimeConfig", "an object")),
        };
        Ok(NetConf {
            cni_version,
            name,
            plugin_type,
            prev_result,
            runtime_config,
            plugin: PluginConf::from_object(&obj)?,
        })
    }

    /// The pod's annotations as the runtime passed them, if it did.
    pub(crate) fn pod_annotations(&self) -> Option<&BTreeMap<String, String>> {
        self.runtime_config.pod_annotations.as_ref()
    }
}

impl RuntimeConfig {
    fn from_object(rc: &Map<String, Value>) -> Result<RuntimeConfig, SpecError> {
        let field = || format!("runtimeConfig.{POD_ANNOTATIONS_CAPABILITY}");
        let pod_annotations = match rc.get(POD_ANNOTATIONS_CAPABILITY) {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => {
                let mut out = BTreeMap::new();
                for (k, v) in m {
                    let Value::String(s) = v else {
                        return Err(SpecError::FieldType {
                            field: format!("{}[{k:?}]", field()),
                            expected: "a string",
                        });
                    };
                    out.insert(k.clone(), s.clone());
                }
                Some(out)
            }
            Some(_) => {
                return Err(SpecError::FieldType {
                    field: field(),
                    expected: "an object of strings",
                })
            }
        };
        Ok(RuntimeConfig { pod_annotations })
    }
}

/// The spec's rule for network names (and container ids): a letter or digit, then
/// letters, digits, `_`, `.` or `-`.
pub(crate) fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn field_type(field: &str, expected: &'static str) -> SpecError {
    SpecError::FieldType {
        field: field.to_string(),
        expected,
    }
}

fn present<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn opt_str(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, SpecError> {
    match present(obj, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(field_type(key, "a string")),
    }
}

fn opt_bool(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, SpecError> {
    match present(obj, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        // The value is named: `"false"` (a string) is the likely slip.
        Some(v) => Err(SpecError::FieldValue {
            field: key.to_string(),
            value: v.to_string(),
            expected: "true or false (a JSON boolean)",
        }),
    }
}

fn opt_u32(obj: &Map<String, Value>, key: &str) -> Result<Option<u32>, SpecError> {
    match present(obj, key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| field_type(key, "an integer from 0 to 4294967295")),
    }
}

fn opt_str_list(obj: &Map<String, Value>, key: &str) -> Result<Option<Vec<String>>, SpecError> {
    match present(obj, key) {
        None => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.clone()),
                _ => Err(field_type(key, "a list of strings")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(field_type(key, "a list of strings")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTAINERD_ADD: &str = r#"{
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "interceptor",
        "mode": "ebpf",
        "namespaces": ["istioinaction"],
        "exclude_namespaces": ["kube-system", "interceptor-system"],
        "state_dir": "/run/interceptor",
        "log_file": "/var/log/interceptor-cni.log",
        "redirect_dns": true,
        "proxy_uid": 1000670000,
        "capabilities": {"io.kubernetes.cri.pod-annotations": true},
        "some_future_key": {"x": 1},
        "runtimeConfig": {
            "io.kubernetes.cri.pod-annotations": {
                "sidecar.istio.io/status": "{\"containers\":[\"istio-proxy\"]}",
                "kubectl.kubernetes.io/default-container": "webapp"
            }
        },
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/cni-1"}],
            "ips": [{"address": "10.244.1.7/24", "interface": 0}]
        }
    }"#;

    #[test]
    fn parses_spec_fields_and_ours() {
        let c = NetConf::parse(CONTAINERD_ADD.as_bytes()).unwrap();
        assert_eq!(c.cni_version, "1.0.0");
        assert_eq!(c.name, "k8s-pod-network");
        assert_eq!(c.plugin_type, "interceptor");
        assert_eq!(c.plugin.mode, Mechanism::Ebpf);
        assert_eq!(c.plugin.namespaces, ["istioinaction"]);
        assert_eq!(
            c.plugin.exclude_namespaces,
            ["kube-system", "interceptor-system"]
        );
        assert_eq!(c.plugin.state_dir, PathBuf::from("/run/interceptor"));
        assert_eq!(
            c.plugin.log_file,
            Some(PathBuf::from("/var/log/interceptor-cni.log"))
        );
        assert!(c.plugin.redirect_dns);
        assert!(!c.plugin.dual_stack);
        assert_eq!(c.plugin.proxy_uid, 1000670000);
        assert_eq!(c.plugin.proxy_gid, 1337);
        let ann = c.pod_annotations().unwrap();
        assert_eq!(ann.len(), 2);
        assert_eq!(ann["kubectl.kubernetes.io/default-container"], "webapp");
        let prev = c.prev_result.unwrap();
        assert_eq!(prev["ips"][0]["address"], "10.244.1.7/24");
    }

    #[test]
    fn defaults_when_only_spec_fields() {
        let c = NetConf::parse(br#"{"cniVersion":"0.3.1","name":"podman","type":"interceptor"}"#)
            .unwrap();
        assert_eq!(c.plugin, PluginConf::default());
        assert_eq!(c.plugin.state_dir, PathBuf::from("/var/run/interceptor"));
        assert_eq!(c.prev_result, None);
        assert_eq!(c.pod_annotations(), None);
        // null is absent
        let c = NetConf::parse(
            br#"{"cniVersion":"0.3.1","name":"n","type":"t","prevResult":null,"mode":null,"runtimeConfig":{"portMappings":[]}}"#,
        )
        .unwrap();
        assert_eq!(c.prev_result, None);
        assert_eq!(c.plugin.mode, Mechanism::Iptables);
        assert_eq!(c.pod_annotations(), None);
    }

    #[test]
    fn missing_and_bad_fields_are_named() {
        let cases: &[(&str, SpecError)] = &[
            (
                "not json",
                SpecError::NotJson {
                    message: String::new(),
                },
            ),
            ("[1]", SpecError::NotAnObject),
            (r#"{"name":"n","type":"t"}"#, SpecError::MissingVersion),
            (
                r#"{"cniVersion":"","name":"n","type":"t"}"#,
                SpecError::MissingVersion,
            ),
            (
                r#"{"cniVersion":"1.0.0","type":"t"}"#,
                SpecError::MissingField { field: "name" },
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n"}"#,
                SpecError::MissingField { field: "type" },
            ),
            (
                r#"{"cniVersion":1,"name":"n","type":"t"}"#,
                field_type("cniVersion", "a string"),
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"bad name","type":"t"}"#,
                SpecError::InvalidNetworkName {
                    value: "bad name".into(),
                },
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","mode":"nft"}"#,
                SpecError::UnknownMode {
                    value: "nft".into(),
                },
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","namespaces":"a,b"}"#,
                field_type("namespaces", "a list of strings"),
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","exclude_namespaces":[1]}"#,
                field_type("exclude_namespaces", "a list of strings"),
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","redirect_dns":"yes"}"#,
                SpecError::FieldValue {
                    field: "redirect_dns".into(),
                    value: r#""yes""#.into(),
                    expected: "true or false (a JSON boolean)",
                },
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","socket_fast_path":"false"}"#,
                SpecError::FieldValue {
                    field: "socket_fast_path".into(),
                    value: r#""false""#.into(),
                    expected: "true or false (a JSON boolean)",
                },
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","proxy_uid":-1}"#,
                field_type("proxy_uid", "an integer from 0 to 4294967295"),
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","runtimeConfig":[]}"#,
                field_type("runtimeConfig", "an object"),
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","runtimeConfig":{"io.kubernetes.cri.pod-annotations":{"a":1}}}"#,
                SpecError::FieldType {
                    field: "runtimeConfig.io.kubernetes.cri.pod-annotations[\"a\"]".into(),
                    expected: "a string",
                },
            ),
        ];
        for (input, want) in cases {
            let got = NetConf::parse(input.as_bytes()).unwrap_err();
            match (want, &got) {
                (SpecError::NotJson { .. }, SpecError::NotJson { message }) => {
                    assert!(message.contains("line 1"), "{message}")
                }
                _ => assert_eq!(&got, want, "{input}"),
            }
        }
    }

    #[test]
    fn plugin_conf_round_trips_through_json() {
        let p = PluginConf {
            mode: Mechanism::Ebpf,
            namespaces: vec!["a".into()],
            exclude_namespaces: vec!["kube-system".into()],
            log_file: Some("/var/log/x".into()),
            redirect_dns: true,
            dual_stack: true,
            drop_invalid: true,
            proxy_uid: 7,
            proxy_gid: 8,
            socket_fast_path: false,
            ..PluginConf::default()
        };
        assert_eq!(PluginConf::from_object(&p.to_json()).unwrap(), p);
        assert_eq!(p.to_json()["socket_fast_path"], Value::Bool(false));
        let d = PluginConf::default();
        assert_eq!(PluginConf::from_object(&d.to_json()).unwrap(), d);
    }

    #[test]
    fn socket_fast_path_is_on_unless_the_conf_says_false() {
        let conf = |extra: &str| {
            NetConf::parse(
                format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"t"{extra}}}"#).as_bytes(),
            )
            .map(|c| c.plugin.socket_fast_path)
        };
        assert_eq!(conf(""), Ok(true));
        assert_eq!(conf(r#","socket_fast_path":null"#), Ok(true));
        assert_eq!(conf(r#","socket_fast_path":true"#), Ok(true));
        assert_eq!(
            conf(r#","mode":"ebpf","socket_fast_path":false"#),
            Ok(false)
        );
        let e = conf(r#","socket_fast_path":0"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"network configuration field "socket_fast_path" is 0: it must be true or false (a JSON boolean)"#
        );
        assert_eq!(e.code(), crate::spec::code::DECODING_FAILURE);
    }

    #[test]
    fn names() {
        for ok in ["k8s-pod-network", "cbr0", "a", "9_x.y-z"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "-a", ".a", "a b", "a/b", "ä"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
