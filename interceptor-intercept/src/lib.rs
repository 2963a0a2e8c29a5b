//! Transparent interception for service-mesh sidecars: the pod's TCP traffic goes through
//! the proxy (outbound to 15001, inbound to 15006), never the proxy's own.
//!
//! A flag's path: [`config::IstioFlags`] (istio-iptables' flags as given) is checked into a
//! [`config::Config`], which [`rules::istio`] turns into istio's ruleset, applied by
//! [`iptables`] as one `iptables-restore` transaction per family; or which
//! [`ebpf::Settings`] turns into the eBPF programs' map entries. [`init`] is the `init` and
//! `cleanup` commands' logic, [`validation`] istio-validation's probe. The command line
//! is the `interceptor` binary's.

pub mod config;
pub mod ebpf;
pub mod init;
pub mod iptables;
pub mod rules;
pub mod validation;
