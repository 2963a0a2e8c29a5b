//! The iptables rules of a sidecar: what istio-iptables would install, as data.
//!
//! `builder` holds an ordered rule list per address family, `istio` fills it from a
//! [`crate::config::Config`] the way istio's `capture.Run` does, and `restore` renders
//! it as `iptables-restore --noflush` input.

pub mod builder;
pub mod istio;
pub mod restore;

pub use builder::{Family, Op, Rule, RuleSet, Table};
