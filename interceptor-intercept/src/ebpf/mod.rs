//! eBPF interception: the same redirection as the iptables mode with no iptables rules,
//! done by the programs of `interceptor-ebpf` (embedded in this binary by build.rs).
//!
//! - `init` loads the programs, writes [`Settings`] into their maps, attaches them to one
//!   cgroup v2 (connect4/6, sendmsg4, recvmsg4, getsockopt, sockops), to the `SOCKETS`
//!   sockhash (sk_msg) and to the current network namespace (sk_lookup), and pins links
//!   and maps under `/sys/fs/bpf/interceptor/<cgroup id>-<netns cookie>/` so they outlive
//!   the process. A second `init` for the same pair updates the pinned links in place
//!   (`BPF_LINK_UPDATE`) and rewrites the settings: nothing stacks.
//! - `cleanup` unpins exactly that directory, which detaches everything.
//! - `status` lists what is pinned, where it is attached, and the programs' counters;
//!   where bpffs is not visible it lists what the kernel reports attached instead.
//!
//! `init` refuses, by name, the istio-iptables flags it cannot honour (`flags`), enters
//! `--network-namespace` first, and pins only on the host's bpffs: outside the initial
//! mount namespace it never mounts one itself (`target::ensure_bpffs`).
//!
//! The inbound capture listener is not found by `init`: the sockops program records the
//! socket that starts listening on the inbound capture port in the pod's namespace
//! (`BPF_SOCK_OPS_TCP_LISTEN_CB`), so `init` can run before the proxy exists, as an init
//! container does. When the proxy already listens, `init` takes its socket from /proc
//! with pidfd_getfd(2) (see `listener`).

pub mod cleanup;
pub mod cli;
pub mod flags;
pub mod kernel;
mod listener;
pub mod load;
mod logs;
pub mod netns_entries;
pub mod node;
mod object;
pub mod report;
pub mod settings;
pub mod status;
mod sys;
pub mod target;
pub mod validate;

pub use settings::{CidrSet, PortSet, Settings};
pub use target::Target;

/// Root of the pin directories on bpffs.
pub const PIN_ROOT: &str = "/sys/fs/bpf/interceptor";

/// Hint appended to errors that mean this machine cannot do eBPF interception.
pub const USE_IPTABLES: &str = "use `--mode iptables` on this machine instead";
