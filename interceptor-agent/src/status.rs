//! `interceptor status`'s node part: the pods the plugin recorded under the state dir,
//! each with its mode and whether its interception is in place right now.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::intercept::{self, Applied, ArgsParser, Mode};
use crate::netns;
use crate::record::Records;

/// One pod's line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodStatus {
    pub namespace: String,
    pub name: String,
    pub container_id: String,
    pub mode: String,
    /// eBPF mode: whether the pod's loopback sockets are paired (sk_msg), as its recorded
    /// arguments ask (`--no-socket-fast-path`: off); a `SETTINGS` entry that says
    /// otherwise makes the pod `broken`. `None` in the iptables mode, which has no fast path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_fast_path: Option<bool>,
    pub ip: String,
    pub netns: String,
    /// `healthy`, `broken`, `gone` (namespace no longer exists) or `unknown`.
    pub health: String,
    /// What is wrong, when not healthy.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// Every recorded pod under `state_dir`, checked.
pub fn pods(state_dir: &Path, parse: ArgsParser) -> Result<Vec<PodStatus>, String> {
    let records = Records::new(state_dir);
    let mut out = Vec::new();
    for rec in records.list().map_err(|e| e.to_string())? {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                out.push(PodStatus {
                    namespace: String::new(),
                    name: String::new(),
                    container_id: String::new(),
                    mode: String::new(),
                    socket_fast_path: None,
                    ip: String::new(),
                    netns: String::new(),
                    health: "unknown".into(),
                    problems: vec![e.to_string()],
                });
                continue;
            }
        };
        let (health, problems) = health(&rec, parse);
        let socket_fast_path = match Mode::parse(&rec.mode) {
            Ok(Mode::Ebpf) => intercept::options(parse, Mode::Ebpf, &rec.args)
                .ok()
                .map(|o| !o.flags.no_socket_fast_path),
            _ => None,
        };
        out.push(PodStatus {
            namespace: rec.namespace,
            name: rec.name,
            container_id: rec.container_id,
            mode: rec.mode,
            socket_fast_path,
            ip: rec.ip.to_string(),
            netns: rec.netns,
            health: health.into(),
            problems,
        });
    }
    Ok(out)
}

fn health(rec: &crate::record::PodRecord, parse: ArgsParser) -> (&'static str, Vec<String>) {
    let mode = match Mode::parse(&rec.mode) {
        Ok(m) => m,
        Err(e) => return ("unknown", vec![e.to_string()]),
    };
    let Some(ns) = netns::resolve(Path::new(&rec.netns)) else {
        return (
            "gone",
            vec![format!("network namespace {} is gone", rec.netns)],
        );
    };
    let opts = match intercept::options(parse, mode, &rec.args) {
        Ok(o) => o,
        Err(e) => return ("unknown", vec![e.to_string()]),
    };
    let recorded = Applied {
        netns_cookie: rec.netns_cookie,
        iptables_rules: rec.iptables_rules.clone(),
    };
    match intercept::check(mode, &ns, &opts, &recorded) {
        Ok(p) if p.is_empty() => ("healthy", p),
        Ok(p) => ("broken", p),
        Err(e) if e.namespace_gone() => ("gone", vec![e.to_string()]),
        Err(e) => ("unknown", vec![e.to_string()]),
    }
}

/// The text form: a header, then a line per pod (and its problems indented).
pub fn render(state_dir: &Path, pods: &[PodStatus]) -> String {
    let mut s = String::new();
    if pods.is_empty() {
        let _ = writeln!(
            s,
            "node: no pods recorded in {}",
            state_dir.join(crate::record::PODS_DIR).display()
        );
        return s;
    }
    let _ = writeln!(
        s,
        "node: {} pod(s) recorded in {}",
        pods.len(),
        state_dir.join(crate::record::PODS_DIR).display()
    );
    for p in pods {
        let fast_path = match p.socket_fast_path {
            Some(true) => " (socket fast path on)",
            Some(false) => " (socket fast path off)",
            None => "",
        };
        let _ = writeln!(
            s,
            "  pod {}/{} mode {}{fast_path} {} ip {} netns {} container {}",
            p.namespace, p.name, p.mode, p.health, p.ip, p.netns, p.container_id
        );
        for problem in &p.problems {
            let _ = writeln!(s, "    {problem}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(mode: &str, socket_fast_path: Option<bool>) -> PodStatus {
        PodStatus {
            namespace: "default".into(),
            name: "web".into(),
            container_id: "c1".into(),
            mode: mode.into(),
            socket_fast_path,
            ip: "10.88.0.5".into(),
            netns: "/run/netns/x".into(),
            health: "healthy".into(),
            problems: Vec::new(),
        }
    }

    #[test]
    fn ebpf_pods_say_whether_the_socket_fast_path_is_on() {
        let text = render(
            Path::new("/run/interceptor"),
            &[
                pod("ebpf", Some(false)),
                pod("ebpf", Some(true)),
                pod("iptables", None),
            ],
        );
        let lines: Vec<&str> = text.lines().skip(1).collect();
        assert!(
            lines[0].starts_with("  pod default/web mode ebpf (socket fast path off) healthy"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("  pod default/web mode ebpf (socket fast path on) healthy"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("  pod default/web mode iptables healthy"),
            "{text}"
        );
        let v = serde_json::to_value(pod("ebpf", Some(false))).unwrap();
        assert_eq!(v["socket_fast_path"], serde_json::Value::Bool(false));
        let v = serde_json::to_value(pod("iptables", None)).unwrap();
        assert!(v.get("socket_fast_path").is_none());
    }
}
