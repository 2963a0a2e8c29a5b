//! interceptor's chained CNI plugin, as a library: what the `interceptor` binary needs
//! when the container runtime runs it as a CNI plugin, and what the node agent needs to
//! put it in the runtime's CNI configuration. It works like istio-cni: pure logic and
//! files, no root, no network.
//!
//! [`spec`] reads an invocation: the `CNI_*` environment variables (through a lookup
//! function, so nothing depends on the process environment) and the network
//! configuration on stdin, with this plugin's keys (documented in [`spec::netconf`]). It
//! checks what the CNI spec requires for each command (which variables, which spec
//! versions: 0.3.0 to 1.1.0) and fails with the spec's error codes: a missing or malformed
//! variable, a conf that is not JSON, lacks `cniVersion`/`name`/`type` or has a key of the
//! wrong type, an unsupported version, or an ADD without `prevResult`. It renders the ADD
//! result (the `prevResult`, passed through), the VERSION result and error results.
//!
//! [`pod`] decides whether a pod is meshed and builds the istio-iptables command line
//! istio-cni would program for it. It reads the pod's name and namespace from `CNI_ARGS`
//! and its annotations from runtimeConfig; without annotations (podman) it meshes the
//! namespaces the conf lists. `kube-system` and the conf's `exclude_namespaces` are never
//! meshed. It fails closed on an annotation value istio would reject (or an unreadable
//! `sidecar.istio.io/status`): an error, so the pod is not started with interception
//! other than what it asked for.
//!
//! [`conflist`] installs our entry last in the primary CNI configuration (the first
//! `*.conf`/`*.conflist`/`*.json` by name, as runtimes pick it), turning a single-plugin
//! `.conf` into a `.conflist`, and uninstalls it, restoring the directory byte for byte
//! when nobody else changed the file meanwhile. It fails closed when the directory is
//! missing, holds no config, or the primary file is unparsable: nothing is written then.

#![forbid(unsafe_code)]

pub mod conflist;
pub mod pod;
pub mod spec;

pub use conflist::{ConfDir, ConflistError, Installed, Uninstalled};
pub use pod::{decide, AnnotationError, Decision, Interception, Mechanism, PodInfo};
pub use spec::{CniError, Command, Invocation, NetConf, PluginConf, SpecError};
