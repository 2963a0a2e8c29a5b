//! The sniffer: what `interceptor sniff` does, as a library that knows no command line.
//!
//! A packet's path: [`capture`] (packet sources: a live interface or a capture file) →
//! [`wire`] (link, IP and TCP headers down to a segment) → [`reassembly`] (ordered byte
//! streams per direction) → [`pipeline`] (HTTP/1.1 parsers from [`http`], TLS detection
//! from [`tls`], request/response pairing, then a thread that hands records to a sink) →
//! a [`sink::Sink`]: the text or JSON writer of [`output`], or the [`shadow`] comparison.
//! The `interceptor` binary picks the sink and wires it in. [`pod`] finds the interface
//! that leads to a pod (`--pod`) and tags records with the pod they were seen for.

pub mod capture;
pub mod hash;
pub mod http;
pub mod output;
pub mod pipeline;
pub mod pod;
pub mod reassembly;
pub mod shadow;
pub mod sink;
pub mod tls;
pub mod wire;
