//! Which pods are meshed, and with which istio-iptables arguments.
//!
//! With pod annotations (containerd and CRI-O pass them in `runtimeConfig` when the
//! conflist entry asks for the `io.kubernetes.cri.pod-annotations` capability) the
//! decision is istio-cni's (`cni/pkg/plugin/plugin.go`, sidecar mode): excluded
//! namespaces, then `sidecar.istio.io/inject: false`, then the injector's status
//! annotation, then the redirect annotations. Without annotations (podman) a pod is meshed
//! when its namespace is listed in the conf's `namespaces`, with the injector's default
//! istio-init arguments.

pub mod annotations;
mod redirect;
mod status;

use std::collections::BTreeMap;

pub use crate::spec::Mechanism;
use crate::spec::{CniArgs, NetConf, PluginConf};
pub use annotations::AnnotationError;
use redirect::Redirect;
use status::SidecarStatus;

/// The namespace never meshed, whatever the configuration says.
pub(crate) const KUBE_SYSTEM: &str = "kube-system";

/// The pod a sandbox belongs to, as the runtime describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// `None` when the runtime passed no annotations at all (not even an empty set).
    pub annotations: Option<BTreeMap<String, String>>,
}

impl PodInfo {
    /// The pod from `CNI_ARGS` (`K8S_POD_*`) and the conf's runtimeConfig.
    pub fn from_invocation(args: &CniArgs, conf: &NetConf) -> PodInfo {
        PodInfo {
            name: args.pod_name().unwrap_or_default().to_string(),
            namespace: args.pod_namespace().unwrap_or_default().to_string(),
            uid: args.pod_uid().unwrap_or_default().to_string(),
            annotations: conf.pod_annotations().cloned(),
        }
    }
}

/// What to do with a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Leave the pod alone; the reason is for the log.
    Skip(String),
    /// Send its traffic through the sidecar.
    Mesh(Interception),
}

/// How to intercept a meshed pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interception {
    pub mode: Mechanism,
    /// An istio-iptables command line (without the program name), for the same flag
    /// parser `interceptor init` uses; the eBPF mechanism reads the same settings.
    pub args: Vec<String>,
}

/// Decides for one pod. An annotation value istio would reject is an error: the caller
/// fails the ADD, so the pod does not start with the wrong (or no) interception.
pub fn decide(pod: &PodInfo, conf: &PluginConf) -> Result<Decision, AnnotationError> {
    if pod.name.is_empty() || pod.namespace.is_empty() {
        return Ok(skip(
            "not a Kubernetes pod: K8S_POD_NAME or K8S_POD_NAMESPACE is missing",
        ));
    }
    let ns = pod.namespace.as_str();
    if ns == KUBE_SYSTEM || conf.exclude_namespaces.iter().any(|e| e == ns) {
        return Ok(skip(format!("namespace {ns} is excluded")));
    }
    let Some(a) = &pod.annotations else {
        return Ok(if conf.namespaces.iter().any(|n| n == ns) {
            mesh(conf, Redirect::injector_default(conf))
        } else {
            skip(format!(
                "the runtime passed no pod annotations and namespace {ns} is not in namespaces"
            ))
        });
    };
    decide_annotated(a, conf)
}

/// istio-cni's checks, in its order, on what the annotations can tell.
fn decide_annotated(
    a: &BTreeMap<String, String>,
    conf: &PluginConf,
) -> Result<Decision, AnnotationError> {
    use annotations as ann;
    // Only an explicit false counts; a value ParseBool rejects is ignored, as in istio.
    if let Some(v) = a.get(ann::INJECT) {
        if annotations::go_bool(v) == Some(false) {
            return Ok(skip(format!("{} is {v:?}", ann::INJECT)));
        }
    }
    let Some(raw) = a.get(ann::STATUS) else {
        return Ok(skip(format!(
            "no {} annotation: no sidecar was injected",
            ann::STATUS
        )));
    };
    let status = SidecarStatus::parse(raw).map_err(|reason| AnnotationError {
        annotation: ann::STATUS,
        value: raw.clone(),
        reason,
    })?;
    if status.has_init("istio-init") {
        return Ok(skip("the istio-init container sets up interception itself"));
    }
    if !status.has("istio-proxy") {
        return Ok(skip(format!("no istio-proxy container in {}", ann::STATUS)));
    }
    // istio-cni skips proxies not run as `proxy sidecar`: gateways run `proxy router`,
    // which the gateway injection template is what sets up.
    if let Some(t) = a.get(ann::INJECT_TEMPLATES) {
        if t.split(',').any(|x| x.trim() == "gateway") {
            return Ok(skip(format!(
                "{}: {t:?} injects a gateway, not a sidecar",
                ann::INJECT_TEMPLATES
            )));
        }
    }
    // The injector accepts NONE ("the sidecar captures nothing"); istio-cni would reject it.
    if a.get(ann::INTERCEPTION_MODE).map(String::as_str) == Some("NONE") {
        return Ok(skip(format!("{} is NONE", ann::INTERCEPTION_MODE)));
    }
    Ok(mesh(conf, Redirect::from_annotations(a, conf)?))
}

fn skip(reason: impl Into<String>) -> Decision {
    Decision::Skip(reason.into())
}

fn mesh(conf: &PluginConf, r: Redirect) -> Decision {
    let mut args = r.args();
    // Ours, not istio's: only the eBPF mode has a socket fast path to turn off, and the
    // iptables mode's arguments stay istio-cni's.
    if conf.mode == Mechanism::Ebpf && !conf.socket_fast_path {
        args.push("--no-socket-fast-path".into());
    }
    Decision::Mesh(Interception {
        mode: conf.mode,
        args,
    })
}

#[cfg(test)]
mod tests;
