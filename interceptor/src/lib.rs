//! interceptor: transparent interception for service-mesh sidecars (iptables or eBPF) and
//! an ngrep-style HTTP/1.1 sniffer that pairs mirrored shadow requests with their primaries.
//!
//! The binary (`src/main.rs`) is a thin command-line layer over these modules; each module
//! owns one concern.

pub mod capture;
pub mod config;
pub mod ebpf;
pub mod http;
pub mod init;
pub mod iptables;
pub mod reassembly;
pub mod rules;
pub mod shadow;
pub mod sniff;
pub mod tls;
pub mod validation;
