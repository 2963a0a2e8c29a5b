//! The HTTP side of interceptor on a node: `/metrics`, `/healthz`, `/readyz`, and with the
//! live view on, the page at `/` and its event stream at `/events`. Used by
//! `interceptor sniff --serve ADDR` and by the node agent on its `--listen` address.
//!
//! ```no_run
//! use std::sync::{atomic::Ordering, Arc};
//! use interceptor_serve::{events::{Limits, Ring}, Server, State};
//! use prometheus_client::metrics::counter::Counter;
//!
//! // The agent: metrics and probes only.
//! let state = State::new();
//! let pods: Counter = Counter::default();
//! state.registry().lock().unwrap().register("interceptor_agent_pods", "Pods set up", pods.clone());
//! let server = Server::bind("0.0.0.0:15090", state.clone())?;
//! eprintln!("serving on {}", server.local_addr());
//! state.ready().store(true, Ordering::Relaxed);  // /readyz: 200 from now on
//! // ... with --inspect, the live view too: State::new().with_events(Arc::new(Ring::new(Limits::default())))
//! server.shutdown();
//! # Ok::<(), interceptor_serve::ServeError>(())
//! ```
//!
//! - [`Server::bind`]`(addr, `[`State`]`)` starts a listener thread; a thread per connection,
//!   at most [`Config::max_connections`] (64) at once (beyond: 503), request heads of at
//!   most 8 KiB read within 10 s, one request per connection (`Connection: close`).
//!   [`Server::local_addr`] is the bound address (port 0 picks one); [`Server::shutdown`]
//!   (or drop) stops accepting and ends the event streams.
//! - [`State`] is shared by cloning: [`State::registry`] is the
//!   `Arc<Mutex<prometheus_client::registry::Registry>>` that `/metrics` encodes (register
//!   your own metrics into it, before or after binding); [`State::ready`] is the
//!   `Arc<AtomicBool>` behind `/readyz` (false at first); [`State::with_events`] adds the
//!   live view, fed by an [`events::Ring`].
//! - `/metrics` answers OpenMetrics text to a client that accepts it (Prometheus asks
//!   for it first by default) and the classic `text/plain; version=0.0.4` to others.
//! - [`events::Ring`]: the bounded event queue (1024 events, 64 MiB by default) that a
//!   producer pushes into without ever waiting on a browser; see [`sse`] for the stream.
//! - [`metrics::Metrics`]: interceptor's request, shadow and capture metrics, with bounded
//!   label values; [`feed::ServeSink`]: the sniff sink that feeds the ring and the metrics
//!   while the chosen output still writes stdout.
//! - [`pods`]: the agent's pod records (`/var/run/interceptor/pods/<uid>.json`), read by
//!   `sniff --pod NAMESPACE/NAME`, written by the agent; [`pods::Workloads`], the workload
//!   names the request metrics give pod addresses.

pub mod events;
pub mod feed;
pub mod http;
pub mod metrics;
pub mod pods;
pub mod server;
pub mod sse;
pub mod summary;

pub use server::{Config, ServeError, Server, State};
