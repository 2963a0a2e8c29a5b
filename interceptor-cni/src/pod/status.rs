//! The injector's `sidecar.istio.io/status` annotation: which containers it added.
//!
//! istio-cni asks the API server for the pod's containers; a CNI plugin fed by the runtime
//! has only annotations, and this one lists what the injector put in the pod, e.g.
//! `{"initContainers":["istio-validation"],"containers":["istio-proxy"],"volumes":[...],
//! "imagePullSecrets":null,"revision":"default"}` (with native sidecars istio-proxy is
//! among the init containers).

use serde::Deserialize;

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
pub(crate) struct SidecarStatus {
    #[serde(default, rename = "initContainers")]
    init_containers: Option<Vec<String>>,
    #[serde(default)]
    containers: Option<Vec<String>>,
}

impl SidecarStatus {
    /// Parses the annotation; `Err` holds serde's message.
    pub(crate) fn parse(value: &str) -> Result<SidecarStatus, String> {
        serde_json::from_str(value).map_err(|e| format!("not the injector's status JSON: {e}"))
    }

    /// Whether the injector added a container of this name (init or regular).
    pub(crate) fn has(&self, name: &str) -> bool {
        self.init_containers
            .iter()
            .chain(self.containers.iter())
            .flatten()
            .any(|c| c == name)
    }

    pub(crate) fn has_init(&self, name: &str) -> bool {
        self.init_containers.iter().flatten().any(|c| c == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injector_output() {
        let s = SidecarStatus::parse(
            r#"{"initContainers":["istio-validation"],"containers":["istio-proxy"],
                "volumes":["workload-socket","istio-envoy"],"imagePullSecrets":null,"revision":"default"}"#,
        )
        .unwrap();
        assert!(s.has("istio-proxy"));
        assert!(s.has("istio-validation"));
        assert!(s.has_init("istio-validation"));
        assert!(!s.has_init("istio-proxy"));

        let native = SidecarStatus::parse(
            r#"{"initContainers":["istio-validation","istio-proxy"],"containers":null}"#,
        )
        .unwrap();
        assert!(native.has("istio-proxy"));

        let empty = SidecarStatus::parse("{}").unwrap();
        assert!(!empty.has("istio-proxy"));
    }

    #[test]
    fn not_json_object() {
        for bad in ["true", "", "{", r#"{"containers":"istio-proxy"}"#] {
            assert!(SidecarStatus::parse(bad).is_err(), "{bad:?}");
        }
    }
}
