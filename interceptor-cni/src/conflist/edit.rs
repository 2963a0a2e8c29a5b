//! Adding our entry to a configuration, and taking it out again.

use super::json::Json;
use super::primary::Kind;
use super::PLUGIN_TYPE;

fn is_ours(plugin: &Json) -> bool {
    plugin.get("type").and_then(Json::as_str) == Some(PLUGIN_TYPE)
}

fn plugins(conf: &Json) -> &[Json] {
    match conf.get("plugins") {
        Some(Json::Array(p)) => p,
        _ => &[],
    }
}

/// Whether the configuration runs our plugin.
pub(crate) fn contains_ours(conf: &Json, kind: Kind) -> bool {
    match kind {
        Kind::List => plugins(conf).iter().any(is_ours),
        Kind::Single => is_ours(conf),
    }
}

/// The configuration with `ours` as the last plugin. A list loses any entry of ours it
/// had (so installing twice gives the same file); a single plugin becomes a list of it
/// and ours, with its `cniVersion` and `name` (as libcni's `ConfListFromConf` does).
pub(crate) fn insert(conf: &Json, kind: Kind, ours: &Json) -> Json {
    match kind {
        Kind::List => {
            let mut list: Vec<Json> = plugins(conf)
                .iter()
                .filter(|p| !is_ours(p))
                .cloned()
                .collect();
            list.push(ours.clone());
            set_plugins(conf, list)
        }
        Kind::Single => {
            let mut pairs = Vec::new();
            for key in ["cniVersion", "name"] {
                if let Some(v) = conf.get(key) {
                    pairs.push((key.to_string(), v.clone()));
                }
            }
            pairs.push((
                "plugins".to_string(),
                Json::Array(vec![conf.clone(), ours.clone()]),
            ));
            Json::Object(pairs)
        }
    }
}

/// The list without entries of ours.
pub(crate) fn strip(conf: &Json) -> Json {
    let list = plugins(conf)
        .iter()
        .filter(|p| !is_ours(p))
        .cloned()
        .collect();
    set_plugins(conf, list)
}

fn set_plugins(conf: &Json, list: Vec<Json>) -> Json {
    let Json::Object(pairs) = conf else {
        return conf.clone();
    };
    // A repeated key: readers use the last one; keep only that, in its place.
    let last = pairs.iter().rposition(|(k, _)| k == "plugins");
    let mut list = Some(list);
    let mut out = Vec::with_capacity(pairs.len());
    for (i, (k, v)) in pairs.iter().enumerate() {
        if k != "plugins" {
            out.push((k.clone(), v.clone()));
        } else if Some(i) == last {
            out.push((k.clone(), Json::Array(list.take().unwrap_or_default())));
        }
    }
    Json::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(s: &str) -> Json {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn list_insert_replaces_ours_and_appends() {
        let ours = j(r#"{"type":"interceptor","mode":"ebpf"}"#);
        let conf = j(
            r#"{"cniVersion":"0.3.1","name":"k","plugins":[{"type":"interceptor","mode":"iptables"},{"type":"calico"},{"type":"portmap"}]}"#,
        );
        let got = insert(&conf, Kind::List, &ours);
        assert_eq!(
            got,
            j(
                r#"{"cniVersion":"0.3.1","name":"k","plugins":[{"type":"calico"},{"type":"portmap"},{"type":"interceptor","mode":"ebpf"}]}"#
            )
        );
        assert_eq!(insert(&got, Kind::List, &ours), got);
        assert!(contains_ours(&got, Kind::List));
        assert_eq!(
            strip(&got),
            j(
                r#"{"cniVersion":"0.3.1","name":"k","plugins":[{"type":"calico"},{"type":"portmap"}]}"#
            )
        );
    }

    #[test]
    fn single_becomes_list() {
        let ours = j(r#"{"type":"interceptor"}"#);
        let conf =
            j(r#"{"cniVersion":"0.4.0","name":"bridge-net","type":"bridge","bridge":"cni0"}"#);
        assert!(!contains_ours(&conf, Kind::Single));
        assert_eq!(
            insert(&conf, Kind::Single, &ours),
            j(r#"{"cniVersion":"0.4.0","name":"bridge-net","plugins":[
                {"cniVersion":"0.4.0","name":"bridge-net","type":"bridge","bridge":"cni0"},
                {"type":"interceptor"}]}"#)
        );
    }
}
