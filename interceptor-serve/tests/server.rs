//! The server over real sockets: routes, limits, the event stream with a slow browser, and
//! the metrics text checked line by line against the exposition formats.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use interceptor_serve::events::{Limits, Ring};
use interceptor_serve::metrics::{self, Metrics};
use interceptor_serve::{Config, Server, State};
use interceptor_sniff::pipeline::health::Health;

/// Sends `request` and reads the whole answer (the server closes after one).
fn fetch(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn get(addr: SocketAddr, path: &str) -> String {
    fetch(addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"))
}

fn status(answer: &str) -> &str {
    answer.lines().next().unwrap_or("")
}

fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

#[test]
fn probes_routes_and_the_page() {
    let state = State::new();
    let server = Server::bind("127.0.0.1:0", state.clone()).unwrap();
    let addr = server.local_addr();
    assert_eq!(status(&get(addr, "/healthz")), "HTTP/1.1 200 OK");
    assert_eq!(
        status(&get(addr, "/readyz")),
        "HTTP/1.1 503 Service Unavailable"
    );
    state.ready().store(true, Ordering::Relaxed);
    let r = get(addr, "/readyz?verbose");
    assert_eq!((status(&r), body(&r)), ("HTTP/1.1 200 OK", "ready\n"));
    // Without the live view, no page and no stream.
    assert_eq!(status(&get(addr, "/")), "HTTP/1.1 404 Not Found");
    assert_eq!(status(&get(addr, "/events")), "HTTP/1.1 404 Not Found");
    let r = fetch(addr, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(status(&r), "HTTP/1.1 405 Method Not Allowed");
    let r = fetch(
        addr,
        &format!("GET / HTTP/1.1\r\nCookie: {}\r\n\r\n", "a".repeat(9000)),
    );
    assert_eq!(status(&r), "HTTP/1.1 431 Request Header Fields Too Large");
    let r = fetch(addr, "GARBAGE\r\n\r\n");
    assert_eq!(status(&r), "HTTP/1.1 400 Bad Request");
    server.shutdown();

    let ring = Arc::new(Ring::new(Limits::default()));
    let server = Server::bind("127.0.0.1:0", State::new().with_events(ring)).unwrap();
    let r = get(server.local_addr(), "/");
    assert!(r.contains("Content-Type: text/html; charset=utf-8"), "{r}");
    assert!(body(&r).contains("interceptor · live view"));
    let r = fetch(server.local_addr(), "HEAD / HTTP/1.1\r\n\r\n");
    assert!(status(&r).ends_with("200 OK") && body(&r).is_empty());
}

#[test]
fn a_silent_client_times_out_and_connections_are_bounded() {
    let cfg = Config {
        max_connections: 4,
        head_timeout: Duration::from_millis(300),
        ..Config::default()
    };
    let server = Server::bind_with("127.0.0.1:0", State::new(), cfg).unwrap();
    let addr = server.local_addr();
    // Four silent clients take every slot; the fifth is turned away at once.
    let silent: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.active_connections() < 4 {
        assert!(
            Instant::now() < deadline,
            "the silent clients were never accepted"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        status(&get(addr, "/healthz")),
        "HTTP/1.1 503 Service Unavailable"
    );
    // They are answered 408 after the head timeout, and the slots come back.
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert_eq!(status(&out), "HTTP/1.1 408 Request Timeout");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.active_connections() > 0 {
        assert!(Instant::now() < deadline, "connections were never released");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(status(&get(addr, "/healthz")), "HTTP/1.1 200 OK");
}

/// Reads SSE frames from `s` until `done` says so or the time is up.
fn read_frames(s: &mut TcpStream, until: Duration, mut done: impl FnMut(&str) -> bool) -> String {
    let deadline = Instant::now() + until;
    let mut text = String::new();
    let mut buf = vec![0u8; 1 << 16];
    while Instant::now() < deadline && !done(&text) {
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(_) => {}
        }
    }
    text
}

/// `(event, data)` of every frame, comments and `retry` left out.
fn frames(text: &str) -> Vec<(String, serde_json::Value)> {
    let body = text.split_once("\r\n\r\n").map_or(text, |(_, b)| b);
    body.split("\n\n")
        .filter_map(|f| {
            let mut event = String::new();
            let mut data = String::new();
            for line in f.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = e.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            (!event.is_empty()).then(|| (event, serde_json::from_str(&data).unwrap()))
        })
        .collect()
}

/// The `seq`s of the `exchange` events among `f`, in the order they came.
fn exchange_seqs(f: &[(String, serde_json::Value)]) -> Vec<u64> {
    f.iter()
        .filter(|(e, _)| e == "exchange")
        .filter_map(|(_, d)| d["seq"].as_u64())
        .collect()
}

/// Whether the frame of event `seq` has arrived whole (a frame can come in several reads).
fn arrived(text: &str, seq: u64) -> bool {
    text.rfind(&format!("\"seq\":{seq},"))
        .is_some_and(|at| text[at..].contains("\n\n"))
}

#[test]
fn the_stream_replays_then_follows_with_summary_and_pings() {
    let ring = Arc::new(Ring::new(Limits::default()));
    for i in 0..3 {
        ring.push_json(
            "exchange",
            format!("{{\"type\":\"exchange\",\"i\":{i}}}").as_bytes(),
        );
    }
    ring.set_summary(b"{\"type\":\"summary\",\"exchanges\":3}");
    let cfg = Config {
        ping_interval: Duration::from_millis(200),
        ..Config::default()
    };
    let server =
        Server::bind_with("127.0.0.1:0", State::new().with_events(ring.clone()), cfg).unwrap();
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    s.write_all(b"GET /events HTTP/1.1\r\nAccept: text/event-stream\r\n\r\n")
        .unwrap();
    let text = read_frames(&mut s, Duration::from_secs(5), |t| t.contains("summary"));
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"),
        "{text}"
    );
    assert!(
        text.contains("\r\n\r\nretry: 1000\n\n"),
        "retry comes first: {text}"
    );
    let f = frames(&text);
    let kinds: Vec<&str> = f.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(kinds, ["exchange", "exchange", "exchange", "summary"]);
    assert_eq!(f[2].1["seq"], 3);
    assert_eq!(f[2].1["i"], 2);
    ring.push_json("shadow", b"{\"type\":\"shadow\"}");
    let text = read_frames(&mut s, Duration::from_secs(5), |t| t.contains(": ping"));
    assert!(
        text.starts_with("id: 4\nevent: shadow\ndata: {\"seq\":4,\"type\":\"shadow\"}\n\n"),
        "{text}"
    );
    assert!(text.contains(": ping\n\n"));
    // A reconnecting browser gets what followed its Last-Event-ID only.
    let mut s2 = TcpStream::connect(server.local_addr()).unwrap();
    s2.write_all(b"GET /events HTTP/1.1\r\nLast-Event-ID: 3\r\n\r\n")
        .unwrap();
    let text = read_frames(&mut s2, Duration::from_secs(5), |t| t.contains("summary"));
    let seqs: Vec<u64> = frames(&text)
        .iter()
        .filter_map(|(_, d)| d["seq"].as_u64())
        .collect();
    assert_eq!(seqs, [4]);
    // Shutdown ends the streams.
    server.shutdown();
    let rest = read_frames(&mut s, Duration::from_secs(5), |_| false);
    assert!(!rest.contains("id: "), "{rest}");
}

#[test]
fn a_browser_that_stops_reading_never_holds_up_the_producer_and_learns_what_it_missed() {
    let limits = Limits {
        events: 256,
        bytes: 64 << 20,
    };
    let ring = Arc::new(Ring::new(limits));
    let server = Server::bind("127.0.0.1:0", State::new().with_events(ring.clone())).unwrap();
    let mut slow = TcpStream::connect(server.local_addr()).unwrap();
    slow.write_all(b"GET /events HTTP/1.1\r\n\r\n").unwrap();
    let head = read_frames(&mut slow, Duration::from_secs(5), |t| {
        t.contains("retry: 1000")
    });
    assert!(head.contains("retry: 1000"));
    // 20 000 events of 16 KiB, 320 MB in all, while the browser reads nothing: every push
    // is quick, and the ring stays within its bounds.
    let payload = format!(
        "{{\"type\":\"exchange\",\"body\":\"{}\"}}",
        "x".repeat(16 * 1024)
    );
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    for _ in 0..20_000 {
        let t = Instant::now();
        ring.push_json("exchange", payload.as_bytes());
        slowest = slowest.max(t.elapsed());
    }
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "20 000 pushes took {took:?}"
    );
    assert!(
        slowest < Duration::from_millis(200),
        "a push waited {slowest:?}"
    );
    let st = ring.stats();
    assert!(st.len <= 256 && st.evicted >= 20_000 - 256, "{st:?}");
    // Now the browser reads: it gets a `dropped` with its running total, then the newest
    // events, and the seqs it saw plus the missed account for every event.
    // Until the last event has arrived whole (its frame can come in several reads).
    let text = read_frames(&mut slow, Duration::from_secs(20), |t| arrived(t, 20_000));
    let f = frames(&text);
    let seen = exchange_seqs(&f);
    let dropped: Vec<&serde_json::Value> = f
        .iter()
        .filter(|(e, _)| e == "dropped")
        .map(|(_, d)| d)
        .collect();
    assert!(!dropped.is_empty(), "no dropped event");
    let missed = dropped.last().and_then(|d| d["missed"].as_u64()).unwrap();
    let totals: Vec<u64> = dropped
        .iter()
        .filter_map(|d| d["missed"].as_u64())
        .collect();
    assert!(
        totals.windows(2).all(|w| w[0] < w[1]),
        "missed is a running total: {totals:?}"
    );
    assert_eq!(
        seen.len() as u64 + missed,
        20_000,
        "seen {} + missed {missed}",
        seen.len()
    );
    assert_eq!(seen.last(), Some(&20_000));
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn a_browser_reading_fast_is_paced_to_the_newest_and_told_what_it_skipped() {
    let ring = Arc::new(Ring::new(Limits::default()));
    let cfg = Config {
        events_per_second: 1000,
        batch: 50,
        ..Config::default()
    };
    let server =
        Server::bind_with("127.0.0.1:0", State::new().with_events(ring.clone()), cfg).unwrap();
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    s.write_all(b"GET /events HTTP/1.1\r\n\r\n").unwrap();
    let head = read_frames(&mut s, Duration::from_secs(5), |t| {
        t.contains("retry: 1000")
    });
    assert!(head.contains("retry: 1000"));
    // 20 000 events over about half a second, read as fast as they are sent. (The
    // connection's allowance is at most its burst when this starts.)
    let start = Instant::now();
    let reader = std::thread::spawn(move || {
        let text = read_frames(&mut s, Duration::from_secs(20), |t| arrived(t, 20_000));
        (text, start.elapsed())
    });
    for i in 0..20_000u32 {
        ring.push_json(
            "exchange",
            format!("{{\"type\":\"exchange\",\"i\":{i}}}").as_bytes(),
        );
        if i % 400 == 399 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let (text, reading) = reader.join().unwrap();
    let f = frames(&text);
    let seen = exchange_seqs(&f);
    let missed = f
        .iter()
        .filter(|(e, _)| e == "dropped")
        .filter_map(|(_, d)| d["missed"].as_u64())
        .next_back()
        .expect("a dropped event");
    // The burst and what a second brings over the time it read, however long that was.
    let bound = 50 + (1000.0 * reading.as_secs_f64()).ceil() as u64;
    assert!(
        (seen.len() as u64) <= bound,
        "{} events sent in {reading:?}, at most {bound} expected",
        seen.len()
    );
    assert_eq!(seen.len() as u64 + missed, 20_000, "seen + missed");
    assert_eq!(seen.last(), Some(&20_000));
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    // A browser connecting now is replayed the whole ring at once, paced or not.
    let mut late = TcpStream::connect(server.local_addr()).unwrap();
    late.write_all(b"GET /events HTTP/1.1\r\n\r\n").unwrap();
    let text = read_frames(&mut late, Duration::from_secs(5), |t| arrived(t, 20_000));
    let replayed = exchange_seqs(&frames(&text));
    assert_eq!(replayed.len(), Limits::default().events);
    assert!(
        !text.contains("event: dropped"),
        "the replay skipped events"
    );
}

/// Checks every line of a metrics text against the exposition format: comments are HELP,
/// TYPE (UNIT, EOF in OpenMetrics) for a known family; samples are `name{labels} value`
/// with valid names, quoted and escaped label values, a number, and a family declared
/// before; histogram buckets are cumulative and end at +Inf. Returns the samples.
fn check_exposition(text: &str, openmetrics: bool) -> Vec<(String, HashMap<String, String>, f64)> {
    let name_ok = |n: &str| {
        let mut c = n.chars();
        c.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
            && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
    };
    let label_ok = |n: &str| {
        let mut c = n.chars();
        c.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
            && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
    };
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    assert!(!lines.is_empty());
    if openmetrics {
        assert_eq!(lines.last(), Some(&"# EOF"), "OpenMetrics ends with # EOF");
    }
    for (i, line) in lines.iter().enumerate() {
        if let Some(c) = line.strip_prefix("# ") {
            let mut parts = c.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("EOF"), None, None) if openmetrics => assert_eq!(i + 1, lines.len()),
                (Some("HELP"), Some(n), Some(_)) | (Some("UNIT"), Some(n), Some(_)) => {
                    assert!(name_ok(n), "{line}")
                }
                (Some("TYPE"), Some(n), Some(t)) => {
                    let known: &[&str] = if openmetrics {
                        &[
                            "counter",
                            "gauge",
                            "histogram",
                            "summary",
                            "unknown",
                            "info",
                            "stateset",
                            "gaugehistogram",
                        ]
                    } else {
                        &["counter", "gauge", "histogram", "summary", "untyped"]
                    };
                    assert!(name_ok(n) && known.contains(&t), "{line}");
                    types.insert(n.to_string(), t.to_string());
                }
                _ => panic!("line {}: not a valid comment: {line}", i + 1),
            }
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "line {}: {line:?}",
            i + 1
        );
        // name, optional {labels}, value.
        let (name, rest) = match line.find(['{', ' ']) {
            Some(j) => line.split_at(j),
            None => panic!("line {}: no value: {line}", i + 1),
        };
        assert!(name_ok(name), "line {}: bad name {name}", i + 1);
        let mut labels = HashMap::new();
        let rest = if let Some(mut r) = rest.strip_prefix('{') {
            loop {
                if let Some(after) = r.strip_prefix('}') {
                    r = after;
                    break;
                }
                let eq = r
                    .find("=\"")
                    .unwrap_or_else(|| panic!("line {}: bad label in {line}", i + 1));
                let (ln, after) = r.split_at(eq);
                assert!(label_ok(ln), "line {}: bad label name {ln}", i + 1);
                let mut value = String::new();
                let mut chars = after[2..].char_indices();
                let end = loop {
                    match chars.next() {
                        Some((k, '"')) => break k,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c @ ('"' | '\\'))) => value.push(c),
                            other => panic!("line {}: bad escape {other:?}", i + 1),
                        },
                        Some((_, '\n')) | None => {
                            panic!("line {}: unterminated label value", i + 1)
                        }
                        Some((_, c)) => value.push(c),
                    }
                };
                assert!(
                    labels.insert(ln.to_string(), value).is_none(),
                    "line {}: label {ln} twice",
                    i + 1
                );
                r = &after[2 + end + 1..];
                r = r.strip_prefix(',').unwrap_or(r);
            }
            r
        } else {
            rest
        };
        let value = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("line {}: no space before the value", i + 1));
        let value = value.split(' ').next().unwrap_or_default();
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("line {}: bad value {v:?}", i + 1)),
        };
        let family = ["_total", "_bucket", "_sum", "_count", "_created"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| types.contains_key(*f)))
            .unwrap_or(name);
        assert!(
            types.contains_key(family),
            "line {}: {name} has no TYPE before it",
            i + 1
        );
        samples.push((name.to_string(), labels, v));
    }
    // Buckets: cumulative per label set, ending at +Inf equal to _count.
    let mut series: HashMap<String, Vec<(f64, f64)>> = HashMap::new();
    for (name, labels, v) in &samples {
        if let Some(base) = name.strip_suffix("_bucket") {
            let mut l: Vec<(&String, &String)> =
                labels.iter().filter(|(k, _)| *k != "le").collect();
            l.sort();
            let le = &labels["le"];
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            series
                .entry(format!("{base}{l:?}"))
                .or_default()
                .push((le, *v));
        }
    }
    for (k, b) in &series {
        assert!(
            b.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{k}: {b:?}"
        );
        assert_eq!(b.last().map(|x| x.0), Some(f64::INFINITY), "{k}");
    }
    samples
}

#[test]
fn metrics_are_valid_exposition_text_in_both_formats() {
    let state = State::new();
    let health = Arc::new(Health::default());
    let m = {
        let mut reg = state.registry().lock().unwrap();
        let m = Metrics::register(&mut reg);
        Metrics::register_capture(&mut reg, health.clone());
        m
    };
    let mut r = m.recorder();
    for (host, method, status, ms) in [
        ("catalog.istioinaction:3000", "GET", Some(200), 1),
        ("catalog.istioinaction:3000", "GET", Some(200), 40),
        ("catalog.istioinaction-shadow:80", "GET", Some(500), 2),
        ("weird\"host", "PROPFIND", None, 0),
    ] {
        r.request(&metrics::Request {
            source_workload: "webapp",
            destination_workload: "",
            host: Some(host),
            method,
            status,
            latency: status.map(|_| Duration::from_millis(ms)),
        });
    }
    r.pairs(
        false,
        &["body:[*].imageUrl".into(), "header:x-\"odd\"\\name".into()],
        1,
    );
    let server = Server::bind("127.0.0.1:0", state).unwrap();
    let plain = get(server.local_addr(), "/metrics");
    assert!(
        plain.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"),
        "{plain}"
    );
    let samples = check_exposition(body(&plain), false);
    let om = fetch(
        server.local_addr(),
        "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n\r\n",
    );
    assert!(om.contains("Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8"));
    check_exposition(body(&om), true);
    let find = |name: &str, want: &[(&str, &str)]| {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && want
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
    };
    assert_eq!(
        find(
            "interceptor_requests_total",
            &[
                ("destination_service", "catalog.istioinaction"),
                ("response_code", "200")
            ]
        ),
        Some(2.0)
    );
    assert_eq!(
        find(
            "interceptor_requests_total",
            &[
                ("destination_service", "unknown"),
                ("method", "OTHER"),
                ("response_code", "0")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        find(
            "interceptor_request_duration_seconds_bucket",
            &[
                ("destination_service", "catalog.istioinaction"),
                ("le", "0.05")
            ]
        ),
        Some(2.0)
    );
    assert_eq!(
        find(
            "interceptor_request_duration_seconds_bucket",
            &[
                ("destination_service", "catalog.istioinaction"),
                ("le", "0.025")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        find(
            "interceptor_shadow_differences_total",
            &[("path", "header:x-\"odd\"\\name")]
        ),
        Some(1.0)
    );
    assert_eq!(find("interceptor_capture_packets_total", &[]), Some(0.0));
    assert_eq!(find("interceptor_tcp_open_flows", &[]), Some(0.0));
}
