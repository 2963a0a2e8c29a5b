//! `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`, where the runtime says which pod the
//! sandbox belongs to.
//!
//! containerd and CRI-O pass `K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_INFRA_CONTAINER_ID`
//! and `K8S_POD_UID` (with `IgnoreUnknown=1`). Podman passes
//! `IgnoreUnknown=1;K8S_POD_NAME=<container>` followed by whatever its own environment's
//! `CNI_ARGS` holds, so `CNI_ARGS=K8S_POD_NAMESPACE=shop podman run ...` puts a container in
//! a namespace.

use std::collections::BTreeMap;

use super::error::SpecError;

pub const K8S_POD_NAME: &str = "K8S_POD_NAME";
pub const K8S_POD_NAMESPACE: &str = "K8S_POD_NAMESPACE";
pub const K8S_POD_UID: &str = "K8S_POD_UID";
pub const K8S_POD_INFRA_CONTAINER_ID: &str = "K8S_POD_INFRA_CONTAINER_ID";
pub(crate) const IGNORE_UNKNOWN: &str = "IgnoreUnknown";

/// Parsed `CNI_ARGS`. Every key is kept: this plugin reads only the `K8S_POD_*` ones, and
/// ignoring the rest is what `IgnoreUnknown=1` asks for anyway.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniArgs {
    values: BTreeMap<String, String>,
    /// `IgnoreUnknown` as given (false when absent). Recorded, not enforced: this plugin
    /// never rejects a key it does not know.
    pub ignore_unknown: bool,
}

impl CniArgs {
    /// Parses `K=V;K=V`. Empty entries (a trailing `;`) are skipped; an entry without `=`
    /// is an error naming it. A value may itself contain `=` (split at the first one).
    ///
    /// Duplicate keys: the last one wins. That is what libcni's `LoadArgs` does (it sets
    /// the field once per pair, in order), and podman relies on it: its own
    /// `K8S_POD_NAME=<container>` comes first and the user's `CNI_ARGS` after, so the user's
    /// value overrides.
    pub fn parse(s: &str) -> Result<CniArgs, SpecError> {
        let mut args = CniArgs::default();
        for entry in s.split(';').filter(|e| !e.is_empty()) {
            let Some((key, value)) = entry.split_once('=') else {
                return Err(SpecError::InvalidCniArgs {
                    entry: entry.to_string(),
                });
            };
            if key.is_empty() {
                return Err(SpecError::InvalidCniArgs {
                    entry: entry.to_string(),
                });
            }
            args.values.insert(key.to_string(), value.to_string());
        }
        if let Some(v) = args.values.get(IGNORE_UNKNOWN) {
            // libcni's UnmarshallableBool: "1"/"true" and "0"/"false", any case.
            args.ignore_unknown = match v.to_ascii_lowercase().as_str() {
                "1" | "true" => true,
                "0" | "false" => false,
                _ => return Err(SpecError::InvalidIgnoreUnknown { value: v.clone() }),
            };
        }
        Ok(args)
    }

    /// The value of `key`, if present and not empty (an empty value says nothing).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn pod_name(&self) -> Option<&str> {
        self.get(K8S_POD_NAME)
    }

    pub fn pod_namespace(&self) -> Option<&str> {
        self.get(K8S_POD_NAMESPACE)
    }

    pub fn pod_uid(&self) -> Option<&str> {
        self.get(K8S_POD_UID)
    }

    pub fn pod_infra_container_id(&self) -> Option<&str> {
        self.get(K8S_POD_INFRA_CONTAINER_ID)
    }

    /// All pairs, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_args() {
        let a = CniArgs::parse(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=istioinaction;K8S_POD_NAME=webapp-7d9f;\
             K8S_POD_INFRA_CONTAINER_ID=0a1b2c;K8S_POD_UID=5f0e-11",
        )
        .unwrap();
        assert!(a.ignore_unknown);
        assert_eq!(a.pod_name(), Some("webapp-7d9f"));
        assert_eq!(a.pod_namespace(), Some("istioinaction"));
        assert_eq!(a.pod_uid(), Some("5f0e-11"));
        assert_eq!(a.pod_infra_container_id(), Some("0a1b2c"));
    }

    #[test]
    fn podman_args_user_values_come_last_and_win() {
        let a = CniArgs::parse(
            "IgnoreUnknown=1;K8S_POD_NAME=app;K8S_POD_NAMESPACE=istioinaction;K8S_POD_UID=1234",
        )
        .unwrap();
        assert_eq!(a.pod_name(), Some("app"));
        assert_eq!(a.pod_namespace(), Some("istioinaction"));
        assert_eq!(a.pod_uid(), Some("1234"));

        let a = CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAME=ctr;K8S_POD_NAME=webapp").unwrap();
        assert_eq!(a.pod_name(), Some("webapp"));
    }

    #[test]
    fn empty_and_odd_input() {
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
        let a = CniArgs::parse("A=1;;B=x=y;").unwrap();
        assert_eq!(a.get("A"), Some("1"));
        assert_eq!(a.get("B"), Some("x=y"));
        assert!(!a.ignore_unknown);
        let a = CniArgs::parse("K8S_POD_NAMESPACE=;IgnoreUnknown=true").unwrap();
        assert_eq!(a.pod_namespace(), None);
        assert!(a.ignore_unknown);
        assert_eq!(a.iter().count(), 2);
    }

    #[test]
    fn malformed_entries_are_named() {
        assert_eq!(
            CniArgs::parse("A=1;NOEQUALS"),
            Err(SpecError::InvalidCniArgs {
                entry: "NOEQUALS".into()
            })
        );
        assert_eq!(
            CniArgs::parse("=v"),
            Err(SpecError::InvalidCniArgs { entry: "=v".into() })
        );
        assert_eq!(
            CniArgs::parse("IgnoreUnknown=maybe"),
            Err(SpecError::InvalidIgnoreUnknown {
                value: "maybe".into()
            })
        );
    }
}
