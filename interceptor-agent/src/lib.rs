//! interceptor's node-level DaemonSet mode, as a library: what the `interceptor` binary
//! does when the container runtime runs it as a chained CNI plugin ([`plugin`]), and when
//! it runs as `interceptor agent` ([`agent`]). The binary only wires them up: it hands in
//! its istio-iptables flag parser ([`intercept::ArgsParser`]), so the plugin reads the
//! arguments `interceptor_cni::pod::decide` built with the same parser `init` uses.
//!
//! - [`plugin`]: ADD/DEL/CHECK/VERSION/STATUS/GC; per pod, [`intercept`] sets interception
//!   up in the pod's namespace (the `init` ruleset, or a registration with the node's eBPF
//!   programs) and [`record`] remembers it under the state dir.
//! - [`agent`]: installs the plugin (binary and conflist entry), keeps the entry in place,
//!   repairs pods whose interception was removed, serves metrics, and uninstalls on
//!   SIGTERM.
//! - [`inspect`]: `--inspect`, the agent's captures of its pods (live view, request and
//!   shadow metrics on the agent's listener).
//! - [`requests`]: the log through which plugin runs reach the agent's counters.
//! - [`status`]: the node's pods for `interceptor status`.

pub mod agent;
pub mod inspect;
pub mod intercept;
pub mod netns;
pub mod plugin;
pub mod plugin_log;
pub mod record;
pub mod requests;
pub mod status;
mod timefmt;
