//! CNI error codes and the error result every failure is reported as.
//!
//! The spec reserves codes 0-99 for well-known errors and leaves 100+ to plugins; ours are
//! listed in [`code`]. Every failure in this crate maps to exactly one code, so the
//! runtime (and whoever reads the kubelet event) can tell "bad config" from "try again".

use std::fmt;

/// The error codes this plugin reports.
pub mod code {
    /// Incompatible CNI version (the conf's `cniVersion`, or the one VERSION was asked for).
    pub(crate) const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid or missing `CNI_*` environment variables.
    pub(crate) const INVALID_ENVIRONMENT: u32 = 4;
    /// I/O failure, e.g. reading stdin.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content (stdin is not JSON, a field has the wrong JSON type).
    pub(crate) const DECODING_FAILURE: u32 = 6;
    /// Invalid network configuration (a field's value is not acceptable).
    pub(crate) const INVALID_NETWORK_CONFIG: u32 = 7;
    /// A transient condition: the runtime should retry later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot service ADD requests.
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// STATUS: not available, and existing containers may have limited connectivity.
    pub const PLUGIN_NOT_AVAILABLE_LIMITED: u32 = 51;

    // Ours (100+).

    /// A pod annotation that decides interception has a value istio would reject; the
    /// pod is not started rather than started without (or with the wrong) interception.
    pub(crate) const INVALID_POD_ANNOTATION: u32 = 100;
    /// Interception could not be set up in the pod (iptables rules or eBPF programs).
    pub const INTERCEPTION_FAILED: u32 = 101;
    /// The plugin's state directory could not be read or written.
    pub const STATE_FAILURE: u32 = 102;
}

/// An error as the CNI spec's error result carries it: a code, a short message and
/// details. Every typed error of this crate converts into one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.details.is_empty() {
            write!(f, "{} (CNI error {})", self.msg, self.code)
        } else {
            write!(
                f,
                "{}: {} (CNI error {})",
                self.msg, self.details, self.code
            )
        }
    }
}

impl std::error::Error for CniError {}

/// Everything that can be wrong with an invocation: its environment, its stdin, or the
/// versions involved. Each variant names the variable, field or value it rejects.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SpecError {
    #[error("required environment variables [{}] missing", .names.join(","))]
    MissingEnv { names: Vec<&'static str> },
    #[error("unknown CNI_COMMAND {value:?}")]
    UnknownCommand { value: String },
    #[error("invalid CNI_CONTAINERID {value:?}: must start with a letter or digit, then letters, digits, '_', '.' or '-'")]
    InvalidContainerId { value: String },
    #[error("invalid CNI_IFNAME {value:?}: {reason}")]
    InvalidIfName { value: String, reason: &'static str },
    #[error("invalid CNI_ARGS entry {entry:?}: expected KEY=VALUE")]
    InvalidCniArgs { entry: String },
    #[error("invalid CNI_ARGS IgnoreUnknown={value:?}: expected 1, 0, true or false")]
    InvalidIgnoreUnknown { value: String },
    #[error("network configuration on stdin is not JSON: {message}")]
    NotJson { message: String },
    #[error("network configuration on stdin is not a JSON object")]
    NotAnObject,
    #[error("network configuration field {field:?} must be {expected}")]
    FieldType {
        field: String,
        expected: &'static str,
    },
    #[error("network configuration field {field:?} is {value}: it must be {expected}")]
    FieldValue {
        field: String,
        /// The value as JSON text.
        value: String,
        expected: &'static str,
    },
    #[error("network configuration has no {field:?}")]
    MissingField { field: &'static str },
    #[error("invalid network name {value:?}: must start with a letter or digit, then letters, digits, '_', '.' or '-'")]
    InvalidNetworkName { value: String },
    #[error("invalid mode {value:?}: expected \"iptables\" or \"ebpf\"")]
    UnknownMode { value: String },
    #[error("network configuration has no cniVersion (that means 0.1.0, which this plugin does not support)")]
    MissingVersion,
    #[error("incompatible CNI version {version:?}: this plugin supports {}", super::version::SUPPORTED.join(", "))]
    UnsupportedVersion { version: String },
    #[error("CNI version {version:?} does not allow {command}: it needs {minimum} or newer")]
    CommandTooNew {
        command: &'static str,
        version: String,
        minimum: &'static str,
    },
    #[error("no prevResult: interceptor is a chained plugin and must follow the interface plugin in a conflist")]
    MissingPrevResult,
}

impl SpecError {
    /// The spec's error code for this failure.
    pub fn code(&self) -> u32 {
        use SpecError::*;
        match self {
            MissingEnv { .. }
            | UnknownCommand { .. }
            | InvalidContainerId { .. }
            | InvalidIfName { .. }
            | InvalidCniArgs { .. }
            | InvalidIgnoreUnknown { .. } => code::INVALID_ENVIRONMENT,
            NotJson { .. } | NotAnObject | FieldType { .. } | FieldValue { .. } => {
                code::DECODING_FAILURE
            }
            MissingField { .. }
            | InvalidNetworkName { .. }
            | UnknownMode { .. }
            | MissingPrevResult => code::INVALID_NETWORK_CONFIG,
            MissingVersion | UnsupportedVersion { .. } | CommandTooNew { .. } => {
                code::INCOMPATIBLE_VERSION
            }
        }
    }

    /// The short message of the error result: what kind of failure.
    fn msg(&self) -> &'static str {
        match self.code() {
            code::INVALID_ENVIRONMENT => "invalid environment variables",
            code::DECODING_FAILURE => "failed to decode network configuration",
            code::INCOMPATIBLE_VERSION => "incompatible CNI version",
            _ => "invalid network configuration",
        }
    }
}

impl From<&SpecError> for CniError {
    fn from(e: &SpecError) -> CniError {
        CniError::new(e.code(), e.msg(), e.to_string())
    }
}

impl From<SpecError> for CniError {
    fn from(e: SpecError) -> CniError {
        CniError::from(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_spec() {
        let cases = [
            (
                SpecError::MissingEnv {
                    names: vec!["CNI_NETNS"],
                },
                4,
            ),
            (SpecError::NotAnObject, 6),
            (SpecError::MissingField { field: "name" }, 7),
            (
                SpecError::UnsupportedVersion {
                    version: "0.2.0".into(),
                },
                1,
            ),
            (SpecError::MissingPrevResult, 7),
        ];
        for (e, want) in cases {
            assert_eq!(e.code(), want, "{e}");
            assert_eq!(CniError::from(&e).code, want);
        }
    }

    #[test]
    fn message_names_the_missing_variables() {
        let e = SpecError::MissingEnv {
            names: vec!["CNI_CONTAINERID", "CNI_IFNAME"],
        };
        assert_eq!(
            e.to_string(),
            "required environment variables [CNI_CONTAINERID,CNI_IFNAME] missing"
        );
        let c = CniError::from(e);
        assert_eq!(c.msg, "invalid environment variables");
        assert!(c.details.contains("CNI_IFNAME"));
    }
}
