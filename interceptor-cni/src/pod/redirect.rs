//! The interception settings for one pod, and the istio-iptables command line that says
//! them.
//!
//! Two sources: the pod's annotations, read as istio-cni's `NewRedirect` reads them
//! (`cni/pkg/plugin/sidecar_redirect.go`, then `sidecar_iptables_linux.go` for how they
//! become istio-iptables settings), or, for a pod the runtime passed no annotations for,
//! the sidecar injector's default istio-init arguments.

use std::collections::BTreeMap;

use super::annotations::{self as ann, AnnotationError, Check};
use crate::spec::PluginConf;

/// The sidecar's outbound and inbound listeners.
const PROXY_PORT: &str = "15001";
const INBOUND_CAPTURE_PORT: &str = "15006";
/// Ports of the sidecar itself that inbound capture never touches (agent status, Envoy
/// health, Envoy Prometheus); istio-cni appends them in this order.
const PROXY_PORTS: &str = "15020,15021,15090";
/// The agent's default status port, which istio-cni also excludes from outbound capture
/// by default.
const DEFAULT_STATUS_PORT: &str = "15020";

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Redirect {
    uid: String,
    gid: String,
    mode: String,
    include_cidrs: String,
    exclude_cidrs: String,
    include_inbound: String,
    exclude_inbound: String,
    include_outbound: String,
    exclude_outbound: String,
    reroute_virtual: String,
    exclude_interfaces: String,
    redirect_dns: bool,
    drop_invalid: bool,
    dual_stack: bool,
}

impl Redirect {
    /// What the sidecar injector passes istio-init by default: `-d 15090,15021,15020`, no
    /// outbound port excluded.
    pub(crate) fn injector_default(conf: &PluginConf) -> Redirect {
        Redirect {
            uid: conf.proxy_uid.to_string(),
            gid: conf.proxy_gid.to_string(),
            mode: "REDIRECT".into(),
            include_cidrs: "*".into(),
            exclude_cidrs: String::new(),
            include_inbound: "*".into(),
            exclude_inbound: "15090,15021,15020".into(),
            include_outbound: String::new(),
            exclude_outbound: String::new(),
            reroute_virtual: String::new(),
            exclude_interfaces: String::new(),
            redirect_dns: conf.redirect_dns,
            drop_invalid: conf.drop_invalid,
            dual_stack: conf.dual_stack,
        }
    }

    /// istio-cni's settings for an injected pod: each annotation's value when present
    /// (checked), istio-cni's default when not.
    pub(crate) fn from_annotations(
        a: &BTreeMap<String, String>,
        conf: &PluginConf,
    ) -> Result<Redirect, AnnotationError> {
        let get =
            |name: &'static str, default: &str, check: Check| -> Result<String, AnnotationError> {
                match a.get(name) {
                    None => Ok(default.to_string()),
                    Some(v) => check(v)
                        .map(|()| v.clone())
                        .map_err(|reason| AnnotationError {
                            annotation: name,
                            value: v.clone(),
                            reason,
                        }),
                }
            };
        let mode = get(ann::INTERCEPTION_MODE, "REDIRECT", ann::interception_mode)?;
        let include_cidrs = get(ann::INCLUDE_OUTBOUND_IP_RANGES, "*", ann::cidrs_or_wildcard)?;
        let exclude_cidrs = get(ann::EXCLUDE_OUTBOUND_IP_RANGES, "", ann::cidrs)?;
        let exclude_inbound = get(
            ann::EXCLUDE_INBOUND_PORTS,
            DEFAULT_STATUS_PORT,
            ann::ports_or_wildcard,
        )?;
        let include_inbound = get(ann::INCLUDE_INBOUND_PORTS, "*", ann::ports_or_wildcard)?;
        // istio-cni's default here is the status port (15020) too, unlike the injector's.
        let exclude_outbound = get(
            ann::EXCLUDE_OUTBOUND_PORTS,
            DEFAULT_STATUS_PORT,
            ann::ports_or_wildcard,
        )?;
        let include_outbound = get(ann::INCLUDE_OUTBOUND_PORTS, "", ann::ports_or_wildcard)?;
        let status_port = status_port(a)?;
        let exclude_interfaces = get(ann::EXCLUDE_INTERFACES, "", ann::interfaces)?;
        // The deprecated name counts only when the new one is absent.
        let reroute_virtual = if a.contains_key(ann::REROUTE_VIRTUAL_INTERFACES) {
            get(ann::REROUTE_VIRTUAL_INTERFACES, "", ann::interfaces)?
        } else {
            get(ann::KUBEVIRT_INTERFACES, "", ann::interfaces)?
        };
        Ok(Redirect {
            uid: conf.proxy_uid.to_string(),
            gid: conf.proxy_gid.to_string(),
            mode,
            include_cidrs,
            exclude_cidrs,
            include_inbound,
            exclude_inbound: exclude_inbound_ports(&exclude_inbound, status_port.as_deref()),
            include_outbound,
            exclude_outbound,
            reroute_virtual,
            exclude_interfaces,
            redirect_dns: conf.redirect_dns,
            drop_invalid: conf.drop_invalid,
            dual_stack: conf.dual_stack,
        })
    }

    /// The istio-iptables command line. Every setting is spelled out, so the rules do not
    /// depend on flag defaults or on `ISTIO_*` variables in the plugin's environment; the
    /// first sixteen are istio-init's usual ones, in its order.
    pub(crate) fn args(&self) -> Vec<String> {
        let flag = |f: &str, v: &str| [f.to_string(), v.to_string()];
        let switch = |f: &str, on: bool| format!("--{f}={on}");
        let mut out = Vec::with_capacity(34);
        for pair in [
            flag("-p", PROXY_PORT),
            flag("-z", INBOUND_CAPTURE_PORT),
            flag("-u", &self.uid),
            flag("-m", &self.mode),
            flag("-i", &self.include_cidrs),
            flag("-x", &self.exclude_cidrs),
            flag("-b", &self.include_inbound),
            flag("-d", &self.exclude_inbound),
            flag("-g", &self.gid),
            flag("-q", &self.include_outbound),
            flag("-o", &self.exclude_outbound),
            flag("-k", &self.reroute_virtual),
            flag("-c", &self.exclude_interfaces),
        ] {
            out.extend(pair);
        }
        // istio-cni sets CaptureAllDNS together with RedirectDNS.
        out.push(switch("redirect-dns", self.redirect_dns));
        out.push(switch("capture-all-dns", self.redirect_dns));
        out.push(switch("drop-invalid", self.drop_invalid));
        out.push(switch("dual-stack", self.dual_stack));
        out
    }
}

/// `status.sidecar.istio.io/port`, when set to a port (0 or empty: no status port).
fn status_port(a: &BTreeMap<String, String>) -> Result<Option<String>, AnnotationError> {
    let Some(v) = a.get(ann::STATUS_PORT) else {
        return Ok(None);
    };
    let t = v.trim();
    if t.is_empty() {
        return Ok(None);
    }
    match ann::port(t) {
        Ok(0) => Ok(None),
        Ok(p) => Ok(Some(p.to_string())),
        Err(reason) => Err(AnnotationError {
            annotation: ann::STATUS_PORT,
            value: v.clone(),
            reason,
        }),
    }
}

/// istio-cni's `-d`: the annotation's list, then 15020,15021,15090, without repeats (first
/// occurrence kept, compared as written). We also append the status port; the injector
/// already puts it in the annotation it writes, so this only matters for pods annotated
/// by hand.
fn exclude_inbound_ports(annotation: &str, status_port: Option<&str>) -> String {
    let mut list = annotation.trim().to_string();
    if !list.is_empty() && !list.ends_with(',') {
        list.push(',');
    }
    list.push_str(PROXY_PORTS);
    if let Some(p) = status_port {
        list.push(',');
        list.push_str(p);
    }
    let mut seen: Vec<&str> = Vec::new();
    for port in list.split(',') {
        if !seen.contains(&port) {
            seen.push(port);
        }
    }
    seen.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclude_inbound_list() {
        assert_eq!(exclude_inbound_ports("", None), "15020,15021,15090");
        assert_eq!(exclude_inbound_ports("15020", None), "15020,15021,15090");
        assert_eq!(
            exclude_inbound_ports(" 3333,4444 ", None),
            "3333,4444,15020,15021,15090"
        );
        assert_eq!(
            exclude_inbound_ports("3333,", None),
            "3333,15020,15021,15090"
        );
        assert_eq!(
            exclude_inbound_ports("15555", Some("15555")),
            "15555,15020,15021,15090"
        );
        assert_eq!(
            exclude_inbound_ports("", Some("15555")),
            "15020,15021,15090,15555"
        );
    }

    #[test]
    fn status_port_values() {
        let a = |v: &str| BTreeMap::from([(ann::STATUS_PORT.to_string(), v.to_string())]);
        assert_eq!(status_port(&BTreeMap::new()), Ok(None));
        assert_eq!(status_port(&a("0")), Ok(None));
        assert_eq!(status_port(&a(" ")), Ok(None));
        assert_eq!(status_port(&a("15555")), Ok(Some("15555".into())));
        assert_eq!(status_port(&a("015555")), Ok(Some("15555".into())));
        let e = status_port(&a("status")).unwrap_err();
        assert_eq!(e.annotation, ann::STATUS_PORT);
        assert_eq!(e.value, "status");
    }
}
