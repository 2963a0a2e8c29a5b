//! The listener: a thread accepting connections, a thread per connection (at most
//! `Config::max_connections` at once), one request each, and the routes.

use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;

use crate::events::Ring;
use crate::http::{self, Head};

/// The live view, embedded: the binary serves it with nothing on disk.
pub const PAGE: &str = include_str!("../../web/index.html");

/// The OpenMetrics text format, what Prometheus asks for first by default.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text format, for every other client (curl, older scrapers).
pub const PROMETHEUS_TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Limits of the listener.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Connections served at once; beyond, new ones get 503 and are closed.
    pub max_connections: usize,
    /// Largest request head accepted.
    pub max_head: usize,
    /// Time a client has to send its request head.
    pub head_timeout: Duration,
    /// A write that cannot proceed for this long ends the connection (a browser that stopped
    /// reading its event stream, a scraper that went away).
    pub write_timeout: Duration,
    /// A comment line is sent on a quiet event stream this often, so proxies and the
    /// browser keep it open and a dead peer is noticed.
    pub ping_interval: Duration,
    /// Events read from the ring per write to the socket, and the burst a paced event
    /// stream may send at once.
    pub batch: usize,
    /// Events a second an event stream is sent after its replay; when more come, it skips
    /// to the newest and counts the rest as missed (see [`crate::sse`]).
    pub events_per_second: u32,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_connections: 64,
            max_head: 8 * 1024,
            head_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            ping_interval: Duration::from_secs(15),
            batch: 256,
            events_per_second: 2000,
        }
    }
}

/// What the server answers from: the metrics registry and the readiness flag its owner
/// shares, and the event ring when the live view is on. Cloning shares the same state.
#[derive(Clone)]
pub struct State {
    registry: Arc<Mutex<Registry>>,
    ready: Arc<AtomicBool>,
    events: Option<Arc<Ring>>,
}

impl Default for State {
    fn default() -> State {
        State::new()
    }
}

impl State {
    /// `/metrics`, `/healthz` and `/readyz` (not ready until the owner says so); `/` and
    /// `/events` answer 404.
    pub fn new() -> State {
        State {
            registry: Arc::new(Mutex::new(Registry::default())),
            ready: Arc::new(AtomicBool::new(false)),
            events: None,
        }
    }

    /// Also serves the live view at `/` and its event stream at `/events`, from `ring`.
    pub fn with_events(mut self, ring: Arc<Ring>) -> State {
        self.events = Some(ring);
        self
    }

    /// The registry `/metrics` encodes: register the owner's metrics here.
    pub fn registry(&self) -> &Arc<Mutex<Registry>> {
        &self.registry
    }

    /// `/readyz` answers 200 while this is true, 503 otherwise.
    pub fn ready(&self) -> &Arc<AtomicBool> {
        &self.ready
    }

    pub fn events(&self) -> Option<&Arc<Ring>> {
        self.events.as_ref()
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{addr}: {source}")]
    Bind { addr: String, source: io::Error },
    #[error("{0}: names no address")]
    NoAddress(String),
    #[error("starting the listener thread: {0}")]
    Thread(io::Error),
}

/// What the accepting thread and the connections share.
struct Shared {
    state: State,
    config: Config,
    stop: AtomicBool,
    active: AtomicUsize,
    /// Notified as each connection ends, for the shutdown waiting on them.
    ended: (Mutex<()>, Condvar),
}

/// A running server; [`Server::shutdown`] (or dropping it) stops it.
pub struct Server {
    local: SocketAddr,
    shared: Arc<Shared>,
    listener: Arc<TcpListener>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `addr` (`127.0.0.1:9090`, `[::]:0`, `localhost:9090`) and starts serving
    /// `state` with the default limits.
    pub fn bind<A: ToSocketAddrs + std::fmt::Display>(
        addr: A,
        state: State,
    ) -> Result<Server, ServeError> {
        Server::bind_with(addr, state, Config::default())
    }

    pub fn bind_with<A: ToSocketAddrs + std::fmt::Display>(
        addr: A,
        state: State,
        config: Config,
    ) -> Result<Server, ServeError> {
        let name = addr.to_string();
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|source| ServeError::Bind {
                addr: name.clone(),
                source,
            })?
            .collect();
        if addrs.is_empty() {
            return Err(ServeError::NoAddress(name));
        }
        let listener = TcpListener::bind(&addrs[..]).map_err(|source| ServeError::Bind {
            addr: name.clone(),
            source,
        })?;
        let local = listener
            .local_addr()
            .map_err(|source| ServeError::Bind { addr: name, source })?;
        let listener = Arc::new(listener);
        let shared = Arc::new(Shared {
            state,
            config,
            stop: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            ended: (Mutex::new(()), Condvar::new()),
        });
        let (l, s) = (listener.clone(), shared.clone());
        let accept = std::thread::Builder::new()
            .name("serve-accept".into())
            .spawn(move || accept_loop(&l, &s))
            .map_err(ServeError::Thread)?;
        Ok(Server {
            local,
            shared,
            listener,
            accept: Some(accept),
        })
    }

    /// The address bound (the port chosen, for `:0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn state(&self) -> &State {
        &self.shared.state
    }

    /// Connections being served now.
    pub fn active_connections(&self) -> usize {
        self.shared.active.load(Ordering::Relaxed)
    }

    /// Stops accepting, ends the event streams (closing the ring) and waits up to two
    /// seconds for open connections to finish.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.shared.stop.store(true, Ordering::SeqCst);
        // shutdown(2) on a listening socket makes a blocked accept(2) return (EINVAL) on
        // Linux: no self-connection needed to wake it.
        // SAFETY: the descriptor belongs to `self.listener`, alive for this call.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        let _ = accept.join();
        if let Some(ring) = self.shared.state.events() {
            ring.close();
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let (lock, ended) = &self.shared.ended;
        let mut g = lock.lock().unwrap_or_else(|p| p.into_inner());
        while self.shared.active.load(Ordering::SeqCst) > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            g = match ended.wait_timeout(g, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Decrements the connection count however the connection ends.
struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        // Under the lock, so a shutdown between its check and its wait still hears it.
        let (lock, ended) = &self.0.ended;
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        self.0.active.fetch_sub(1, Ordering::SeqCst);
        ended.notify_all();
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    loop {
        let conn = listener.accept();
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let mut stream = match conn {
            Ok((s, _)) => s,
            // Out of descriptors, a connection reset before accept: not the listener's end.
            Err(_) => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if shared.active.fetch_add(1, Ordering::SeqCst) >= shared.config.max_connections {
            shared.active.fetch_sub(1, Ordering::SeqCst);
            // Answered here, briefly: this thread must get back to accepting.
            let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
            let _ = http::respond_text(
                &mut stream,
                "503 Service Unavailable",
                "too many connections\n",
                false,
            );
            continue;
        }
        let slot = Slot(shared.clone());
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("serve-conn".into())
            .spawn(move || {
                let _slot = slot;
                serve(stream, &s);
            });
        // A thread that could not start dropped its closure, and the slot with it.
        let _ = spawned;
    }
}

/// One connection: read its request, answer it.
fn serve(mut stream: TcpStream, shared: &Shared) {
    let cfg = &shared.config;
    let _ = stream.set_write_timeout(Some(cfg.write_timeout));
    let _ = stream.set_nodelay(true);
    let head = match http::read_head(&mut stream, cfg.max_head, cfg.head_timeout) {
        Ok(h) => h,
        Err(e) => {
            if let Some(status) = e.status() {
                let _ = http::respond_text(&mut stream, status, &format!("{e}\n"), false);
            }
            return;
        }
    };
    let _ = route(&mut stream, &head, shared);
    let _ = stream.shutdown(Shutdown::Both);
}

fn route(stream: &mut TcpStream, head: &Head, shared: &Shared) -> io::Result<()> {
    let head_only = head.method == "HEAD";
    if head.method != "GET" && !head_only {
        return http::respond_text(
            stream,
            "405 Method Not Allowed",
            "only GET and HEAD\n",
            false,
        );
    }
    let state = &shared.state;
    match (head.path.as_str(), state.events()) {
        ("/healthz", _) => http::respond_text(stream, "200 OK", "ok\n", head_only),
        ("/readyz", _) => {
            if state.ready.load(Ordering::Relaxed) {
                http::respond_text(stream, "200 OK", "ready\n", head_only)
            } else {
                http::respond_text(stream, "503 Service Unavailable", "not ready\n", head_only)
            }
        }
        ("/metrics", _) => {
            let (body, content_type) = metrics_text(&state.registry, head.accept.as_deref());
            match body {
                Ok(text) => {
                    http::respond(stream, "200 OK", content_type, text.as_bytes(), head_only)
                }
                Err(_) => http::respond_text(
                    stream,
                    "500 Internal Server Error",
                    "encoding the metrics failed\n",
                    head_only,
                ),
            }
        }
        ("/" | "/index.html", Some(_)) => http::respond(
            stream,
            "200 OK",
            "text/html; charset=utf-8",
            PAGE.as_bytes(),
            head_only,
        ),
        ("/events", Some(ring)) if !head_only => {
            let last = head.last_event_id.as_deref().and_then(|v| v.parse().ok());
            crate::sse::stream(stream, ring, last, &shared.config)
        }
        _ => http::respond_text(stream, "404 Not Found", "not found\n", head_only),
    }
}

/// The registry in the format the client accepts: OpenMetrics when it says so (Prometheus
/// does by default), else the classic text format.
pub fn metrics_text(
    registry: &Mutex<Registry>,
    accept: Option<&str>,
) -> (Result<String, std::fmt::Error>, &'static str) {
    let registry = registry.lock().unwrap_or_else(|p| p.into_inner());
    let mut text = String::with_capacity(16 * 1024);
    if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
        let r = prometheus_client::encoding::text::encode(&mut text, &registry);
        (r.map(|()| text), OPENMETRICS)
    } else {
        let r = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry);
        (r.map(|()| text), PROMETHEUS_TEXT)
    }
}

/// Writes `bytes` and flushes; a helper for the stream, whose writes all go this way.
pub(crate) fn send(stream: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes)?;
    stream.flush()
}
