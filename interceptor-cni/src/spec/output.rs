//! What the plugin writes to stdout: the ADD result, the VERSION result, or an error.
//!
//! The binary writes the bytes and exits 0, or writes an error's bytes and exits 1. DEL,
//! CHECK, STATUS and GC print nothing on success.

use serde_json::{json, Value};

use super::error::{CniError, SpecError};
use super::netconf::NetConf;
use super::version::{self, NEWEST, SUPPORTED};

/// The ADD result of a chained plugin that changes no interface or address: the
/// `prevResult` it was given, unchanged except that its `cniVersion` is the conf's (the
/// result must be in the version the runtime asked for). A conf without `prevResult` is
/// an error: this plugin only makes sense after the interface plugin in a conflist.
pub fn add_result(conf: &NetConf) -> Result<Vec<u8>, SpecError> {
    let Some(prev) = &conf.prev_result else {
        return Err(SpecError::MissingPrevResult);
    };
    let Value::Object(obj) = prev else {
        return Err(SpecError::FieldType {
            field: "prevResult".into(),
            expected: "an object",
        });
    };
    let mut out = obj.clone();
    out.insert("cniVersion".into(), conf.cni_version.clone().into());
    Ok(to_bytes(&Value::Object(out)))
}

/// The VERSION result: the version asked about (or the newest when none was) and every
/// version supported. Asking about an unsupported version is an error (code 1).
pub fn version_result(requested: Option<&str>) -> Result<Vec<u8>, SpecError> {
    let version = match requested {
        Some(v) if !version::is_supported(v) => {
            return Err(SpecError::UnsupportedVersion {
                version: v.to_string(),
            })
        }
        Some(v) => v,
        None => NEWEST,
    };
    Ok(to_bytes(&json!({
        "cniVersion": version,
        "supportedVersions": SUPPORTED,
    })))
}

/// The error result, in `cni_version` (see [`error_version`]).
pub fn error_result(err: &CniError, cni_version: &str) -> Vec<u8> {
    to_bytes(&json!({
        "cniVersion": cni_version,
        "code": err.code,
        "msg": err.msg,
        "details": err.details,
    }))
}

/// The version to report an error in: the conf's `cniVersion` when stdin has a supported
/// one, else the newest (the conf may be what failed to parse).
pub fn error_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .filter(|v| version::is_supported(v))
        .unwrap_or_else(|| NEWEST.to_string())
}

fn to_bytes(v: &Value) -> Vec<u8> {
    // A Value always serializes; the fallback only keeps this free of panics.
    serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::error::code;

    fn conf(text: &str) -> NetConf {
        NetConf::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn add_passes_prev_result_through() {
        let c = conf(
            r#"{"cniVersion":"0.4.0","name":"n","type":"interceptor","prevResult":{
                "cniVersion":"0.3.1",
                "interfaces":[{"name":"eth0","sandbox":"/var/run/netns/x"}],
                "ips":[{"version":"4","address":"10.1.0.5/16","gateway":"10.1.0.1","interface":0}],
                "dns":{}}}"#,
        );
        let out: Value = serde_json::from_slice(&add_result(&c).unwrap()).unwrap();
        let mut want = c.prev_result.clone().unwrap();
        want["cniVersion"] = "0.4.0".into();
        assert_eq!(out, want);
    }

    #[test]
    fn add_without_prev_result_is_an_error() {
        let c = conf(r#"{"cniVersion":"1.0.0","name":"n","type":"interceptor"}"#);
        assert_eq!(add_result(&c), Err(SpecError::MissingPrevResult));
        assert_eq!(
            SpecError::MissingPrevResult.code(),
            code::INVALID_NETWORK_CONFIG
        );
        let c = conf(r#"{"cniVersion":"1.0.0","name":"n","type":"interceptor","prevResult":[]}"#);
        assert!(matches!(add_result(&c), Err(SpecError::FieldType { .. })));
    }

    #[test]
    fn version_output() {
        let v: Value = serde_json::from_slice(&version_result(Some("0.3.1")).unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"cniVersion":"0.3.1","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]})
        );
        let v: Value = serde_json::from_slice(&version_result(None).unwrap()).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
        let e = version_result(Some("0.2.0")).unwrap_err();
        assert_eq!(e.code(), code::INCOMPATIBLE_VERSION);
    }

    #[test]
    fn error_output() {
        let err = CniError::from(SpecError::MissingEnv {
            names: vec!["CNI_NETNS"],
        });
        let v: Value = serde_json::from_slice(&error_result(&err, "1.0.0")).unwrap();
        assert_eq!(
            v,
            json!({
                "cniVersion": "1.0.0",
                "code": 4,
                "msg": "invalid environment variables",
                "details": "required environment variables [CNI_NETNS] missing",
            })
        );
    }

    #[test]
    fn error_version_falls_back_to_newest() {
        assert_eq!(error_version(br#"{"cniVersion":"0.3.1"}"#), "0.3.1");
        assert_eq!(error_version(br#"{"cniVersion":"0.2.0"}"#), "1.1.0");
        assert_eq!(error_version(b"garbage"), "1.1.0");
        assert_eq!(error_version(b""), "1.1.0");
    }
}
