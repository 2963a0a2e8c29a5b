//! Compares a primary exchange with its shadow: request target, request and response headers,
//! status, bodies. JSON bodies are compared structurally (paths like `[0].imageUrl`), text
//! bodies by lines, anything else by bytes. What differs by design (the Host's `-shadow`
//! suffix, tracing and proxy headers, framing) is skipped unless `strict`; what differs by
//! nature (timestamps, UUIDs) is set apart as noise.

mod headers;
mod json;
mod lines;
mod path;

use std::fmt::Write as _;
use std::sync::Arc;

use serde_json::Value;

use super::volatile;
use crate::http::{Body, Exchange, Headers};

pub use headers::{is_shadow_host, strip_shadow_suffix};
pub use path::{generalise, render_path, PathPattern, Seg};

/// Headers that differ between a primary and its shadow by design: set per request by the
/// proxy or the tracer, or describing the connection rather than the message (bodies are
/// compared after transfer decoding, so framing is not content).
pub const DEFAULT_IGNORED_HEADERS: &[&str] = &[
    "date",
    "x-request-id",
    "x-b3-*",
    "b3",
    "traceparent",
    "tracestate",
    "x-envoy-*",
    "x-forwarded-for",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
];

/// At most this many differences are kept per pair; the rest are counted.
pub const MAX_DIFFERENCES: usize = 1000;

#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Header names (lower-case) to skip; a trailing `*` matches any suffix.
    pub ignore_headers: Vec<String>,
    /// Body paths to skip, with their subtrees.
    pub ignore_paths: Vec<PathPattern>,
    /// Compare everything: no default-ignored headers, Host taken literally, noise counted
    /// as differences.
    pub strict: bool,
    /// What the bodies of recent pairs were found to differ by, under these options.
    pub(crate) memo: BodyMemo,
}

/// The body comparisons of recent pairs, by the bytes compared. Mirrored traffic asks for
/// the same resources over and over, and most pairs bring a pair of bodies seen before
/// (the primary's answer and the shadow's, each the same as last time). Parsing both as
/// JSON and walking them was most of what comparing a pair cost; a pair of bodies seen
/// before gets what was found then.
#[derive(Default)]
pub(crate) struct BodyMemo {
    entries: std::cell::RefCell<Vec<Memo>>,
    /// The entry replaced next once all are taken.
    next: std::cell::Cell<usize>,
}

struct Memo {
    request: bool,
    json_type: bool,
    primary: Vec<u8>,
    shadow: Vec<u8>,
    /// What the comparison of these bodies alone found.
    found: Comparison,
}

/// Body pairs remembered, and the largest body remembered.
const MEMO_ENTRIES: usize = 8;
const MEMO_MAX_BODY: usize = 64 * 1024;

impl Clone for BodyMemo {
    /// Options copied start with nothing remembered.
    fn clone(&self) -> BodyMemo {
        BodyMemo::default()
    }
}

impl std::fmt::Debug for BodyMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BodyMemo({} entries)", self.entries.borrow().len())
    }
}

impl BodyMemo {
    /// What comparing bodies `p` and `sh` found, from memory or by `compare` (which must
    /// depend on nothing else: the options the memo belongs to are the same each time).
    fn get_or(
        &self,
        request: bool,
        json_type: bool,
        p: &[u8],
        sh: &[u8],
        compare: impl FnOnce(&mut Comparison),
    ) -> std::cell::Ref<'_, Comparison> {
        let hit = self.entries.borrow().iter().position(|m| {
            m.request == request && m.json_type == json_type && m.primary == p && m.shadow == sh
        });
        let at = match hit {
            Some(i) => i,
            None => {
                let mut found = Comparison::default();
                compare(&mut found);
                let mut entries = self.entries.borrow_mut();
                let fresh = Memo {
                    request,
                    json_type,
                    primary: p.to_vec(),
                    shadow: sh.to_vec(),
                    found,
                };
                if entries.len() < MEMO_ENTRIES {
                    entries.push(fresh);
                    entries.len() - 1
                } else {
                    let i = self.next.get() % MEMO_ENTRIES;
                    self.next.set(i + 1);
                    entries[i] = fresh;
                    i
                }
            }
        };
        std::cell::Ref::map(self.entries.borrow(), |e| &e[at].found)
    }
}

impl Options {
    /// Checks and adds a `--ignore-header` value.
    pub fn ignore_header(&mut self, name: &str) -> Result<(), String> {
        let stem = name.strip_suffix('*').unwrap_or(name);
        if name.is_empty() || !stem.bytes().all(is_token_byte) {
            return Err(format!("{name:?}: not a header name (letters, digits, -_.!#$%&'+^`|~, optional trailing *)"));
        }
        self.ignore_headers.push(name.to_ascii_lowercase());
        Ok(())
    }

    /// Checks and adds an `--ignore-path` value.
    pub fn ignore_path(&mut self, pattern: &str) -> Result<(), String> {
        let p = PathPattern::parse(pattern).map_err(|e| format!("{pattern:?}: {e}"))?;
        self.ignore_paths.push(p);
        Ok(())
    }

    /// Whether `name` is ignored: asked for nearly every header of every pair, so the
    /// patterns are tried in a plain loop, lengths first.
    fn header_ignored(&self, name: &str) -> bool {
        let n = name.as_bytes();
        let matches = |pat: &str| match pat.as_bytes().split_last() {
            Some((b'*', prefix)) => n
                .get(..prefix.len())
                .is_some_and(|b| b.eq_ignore_ascii_case(prefix)),
            _ => n.len() == pat.len() && n.eq_ignore_ascii_case(pat.as_bytes()),
        };
        // The defaults are lower case and none is empty: their first byte rules most out.
        let first = n.first().map(|c| c.to_ascii_lowercase());
        let default = !self.strict
            && DEFAULT_IGNORED_HEADERS
                .iter()
                .any(|p| p.as_bytes().first() == first.as_ref() && matches(p));
        default || self.ignore_headers.iter().any(|p| matches(p))
    }

    fn path_ignored(&self, path: &[Seg]) -> bool {
        self.ignore_paths.iter().any(|p| p.covers(path))
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Where two exchanges differ.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Location {
    /// The response status; also used when one side has no response at all.
    Status,
    /// The request target (path and query).
    Target,
    Header {
        request: bool,
        name: String,
    },
    /// A body: `path` is empty for the body as a whole, a JSON path, or `line:N`.
    Body {
        request: bool,
        path: String,
    },
}

impl Location {
    /// Appends the location as the reports show it (`request.header:host`,
    /// `body:[0].imageUrl`): every difference of every pair is shown, so without `fmt`.
    pub fn push_to(&self, out: &mut String) {
        match self {
            Location::Status => out.push_str("status"),
            Location::Target => out.push_str("request.target"),
            Location::Header { request, name } => {
                if *request {
                    out.push_str("request.");
                }
                out.push_str("header:");
                out.push_str(name);
            }
            Location::Body { request, path } => {
                out.push_str(if *request { "request.body" } else { "body" });
                if !path.is_empty() {
                    out.push(':');
                    out.push_str(path);
                }
            }
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = String::new();
        self.push_to(&mut s);
        f.write_str(&s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Present in the shadow only.
    Added,
    /// Present in the primary only.
    Removed,
    Changed,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Added => "added",
            Kind::Removed => "removed",
            Kind::Changed => "changed",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Difference {
    pub location: Location,
    pub kind: Kind,
    /// The primary's value (None when absent).
    pub primary: Option<Value>,
    pub shadow: Option<Value>,
}

/// What comparing a pair found. The differences are shared: the bodies of most pairs are
/// a pair seen before (`BodyMemo`), whose differences every such pair gets again.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Comparison {
    pub differences: Vec<Arc<Difference>>,
    /// Changes in volatile values only (timestamps, UUIDs): reported apart.
    pub noise: Vec<Arc<Difference>>,
    /// Differences beyond `MAX_DIFFERENCES`, counted but not kept.
    pub omitted: usize,
}

impl Comparison {
    pub fn same(&self) -> bool {
        self.differences.is_empty() && self.omitted == 0
    }

    fn push(&mut self, d: impl Into<Arc<Difference>>, noise: bool, strict: bool) {
        let list = if noise && !strict {
            &mut self.noise
        } else {
            &mut self.differences
        };
        if list.len() >= MAX_DIFFERENCES {
            self.omitted += 1;
        } else {
            list.push(d.into());
        }
    }
}

/// The generalised places a pair differs in (`body:[*].imageUrl`), sorted and without
/// repeats, as the summaries and the metrics count them. Consecutive pairs mostly differ
/// in the same places: those of the last pair are kept and given again.
#[derive(Default)]
pub struct DifferingPlaces {
    /// The differences of the last comparison: a pair whose bodies were seen before shares
    /// them (`BodyMemo`), so most are recognised by address.
    differences: Vec<Arc<Difference>>,
    paths: Vec<String>,
    place: String,
}

impl DifferingPlaces {
    pub fn of(&mut self, cmp: &Comparison) -> &[String] {
        let same_places = self.differences.len() == cmp.differences.len()
            && self
                .differences
                .iter()
                .zip(&cmp.differences)
                .all(|(a, b)| Arc::ptr_eq(a, b) || a.location == b.location);
        if !same_places {
            self.differences.clear();
            self.paths.clear();
            for d in &cmp.differences {
                self.differences.push(d.clone());
                self.place.clear();
                d.location.push_to(&mut self.place);
                self.paths.push(generalise(&self.place));
            }
            self.paths.sort();
            self.paths.dedup();
        }
        &self.paths
    }

    /// What [`DifferingPlaces::of`] gave last.
    pub fn last(&self) -> &[String] {
        &self.paths
    }
}

/// Compares `primary` with `shadow` under `opts`.
pub fn compare(primary: &Exchange, shadow: &Exchange, opts: &Options) -> Comparison {
    let mut c = Comparison::default();
    if primary.request.target != shadow.request.target {
        let d = changed(
            Location::Target,
            s(&primary.request.target),
            s(&shadow.request.target),
        );
        c.push(d, false, opts.strict);
    }
    headers::compare(
        &mut c,
        true,
        &primary.request.headers,
        &shadow.request.headers,
        opts,
    );
    body(
        &mut c,
        true,
        &primary.request.body,
        &shadow.request.body,
        &primary.request.headers,
        opts,
    );

    match (&primary.response, &shadow.response) {
        (None, None) => {}
        (Some(p), None) => c.push(
            Difference {
                location: Location::Status,
                kind: Kind::Removed,
                primary: Some(p.status.into()),
                shadow: None,
            },
            false,
            opts.strict,
        ),
        (None, Some(sh)) => c.push(
            Difference {
                location: Location::Status,
                kind: Kind::Added,
                primary: None,
                shadow: Some(sh.status.into()),
            },
            false,
            opts.strict,
        ),
        (Some(p), Some(sh)) => {
            if p.status != sh.status {
                c.push(
                    changed(Location::Status, p.status.into(), sh.status.into()),
                    false,
                    opts.strict,
                );
            }
            headers::compare(&mut c, false, &p.headers, &sh.headers, opts);
            body(&mut c, false, &p.body, &sh.body, &p.headers, opts);
        }
    }
    c
}

pub(super) fn s(v: &str) -> Value {
    Value::String(v.to_string())
}

pub(super) fn changed(location: Location, primary: Value, shadow: Value) -> Difference {
    Difference {
        location,
        kind: Kind::Changed,
        primary: Some(primary),
        shadow: Some(shadow),
    }
}

fn body(
    c: &mut Comparison,
    request: bool,
    p: &Body,
    sh: &Body,
    p_headers: &Headers,
    opts: &Options,
) {
    if p.data == sh.data && p.len == sh.len {
        return;
    }
    let whole = |kind, primary, shadow| Difference {
        location: Location::Body {
            request,
            path: String::new(),
        },
        kind,
        primary,
        shadow,
    };
    if p.len == 0 || sh.len == 0 {
        let (kind, pv, sv) = if p.len == 0 {
            (Kind::Added, None, Some(describe(sh)))
        } else {
            (Kind::Removed, Some(describe(p)), None)
        };
        c.push(whole(kind, pv, sv), false, opts.strict);
        return;
    }
    if p.truncated || sh.truncated {
        // Only a prefix of each is known: say that they differ, and where.
        c.push(
            whole(Kind::Changed, Some(describe(p)), Some(describe(sh))),
            false,
            opts.strict,
        );
        return;
    }
    let json_type = headers::is_json_type(p_headers);
    if p.data.len() <= MEMO_MAX_BODY && sh.data.len() <= MEMO_MAX_BODY {
        let found = opts
            .memo
            .get_or(request, json_type, &p.data, &sh.data, |found| {
                body_content(found, request, p, sh, json_type, opts)
            });
        // As if pushed here: each list keeps its order and its bound.
        for d in &found.differences {
            c.push(d.clone(), false, opts.strict);
        }
        for d in &found.noise {
            c.push(d.clone(), true, opts.strict);
        }
        c.omitted += found.omitted;
        return;
    }
    body_content(c, request, p, sh, json_type, opts)
}

/// `body` for two bodies known whole, not empty and not the same: as JSON, lines or bytes.
/// Depends on nothing but its arguments (`BodyMemo`).
fn body_content(
    c: &mut Comparison,
    request: bool,
    p: &Body,
    sh: &Body,
    json_type: bool,
    opts: &Options,
) {
    let whole = |kind, primary, shadow| Difference {
        location: Location::Body {
            request,
            path: String::new(),
        },
        kind,
        primary,
        shadow,
    };
    let looks_json = |b: &[u8]| {
        matches!(
            b.iter().find(|c| !c.is_ascii_whitespace()),
            Some(b'{' | b'[')
        )
    };
    if json_type || (looks_json(&p.data) && looks_json(&sh.data)) {
        if let (Ok(pj), Ok(sj)) = (
            serde_json::from_slice::<Value>(&p.data),
            serde_json::from_slice::<Value>(&sh.data),
        ) {
            let mut path = Vec::new();
            json::compare(c, request, &mut path, &pj, &sj, opts);
            return;
        }
    }
    match (std::str::from_utf8(&p.data), std::str::from_utf8(&sh.data)) {
        (Ok(pt), Ok(st)) => lines::compare(c, request, pt, st, opts),
        _ => c.push(
            whole(Kind::Changed, Some(describe(p)), Some(describe(sh))),
            false,
            opts.strict,
        ),
    }
}

/// A short description of a body that is not shown whole.
fn describe(b: &Body) -> Value {
    let mut s = format!("<{} bytes", b.len);
    if b.truncated {
        let _ = write!(s, ", {} kept", b.data.len());
    }
    s.push('>');
    Value::String(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Request, Response};
    use serde_json::json;
    use std::time::SystemTime;

    fn body(data: &str) -> Body {
        Body {
            data: data.as_bytes().to_vec(),
            len: data.len() as u64,
            truncated: false,
        }
    }

    fn hdrs(h: &[(&str, &str)]) -> Headers {
        h.iter().copied().collect()
    }

    fn ex(
        host: &str,
        req_h: &[(&str, &str)],
        status: u16,
        resp_h: &[(&str, &str)],
        resp_body: &str,
    ) -> Exchange {
        let mut rh = hdrs(&[("host", host)]);
        rh.append(&hdrs(req_h));
        Exchange {
            client: "10.0.0.1:40000".parse().unwrap(),
            server: "10.0.0.2:3000".parse().unwrap(),
            interface: None,
            request: Box::new(Request {
                method: "GET".into(),
                target: "/items".into(),
                version: "HTTP/1.1",
                headers: rh,
                body: Body::default(),
                ts: SystemTime::UNIX_EPOCH,
            }),
            response: Some(Box::new(Response {
                status,
                reason: "OK".into(),
                version: "HTTP/1.1",
                headers: hdrs(resp_h),
                body: body(resp_body),
                ts: SystemTime::UNIX_EPOCH,
            })),
        }
    }

    const JSON_CT: (&str, &str) = ("content-type", "application/json; charset=utf-8");

    fn wheres(v: &[Arc<Difference>]) -> Vec<String> {
        v.iter()
            .map(|d| format!("{} {}", d.location, d.kind.as_str()))
            .collect()
    }

    fn cmp_bodies(p: &str, s: &str, opts: &Options) -> Comparison {
        compare(
            &ex("catalog:80", &[], 200, &[JSON_CT], p),
            &ex("catalog-shadow:80", &[], 200, &[JSON_CT], s),
            opts,
        )
    }

    /// Bodies compared before are not parsed again: what was found then is given again,
    /// the same as a fresh comparison finds, whatever came in between.
    #[test]
    fn bodies_seen_before_compare_as_before() {
        let memo = Options::default();
        let pairs = [
            (r#"[{"id":1}]"#, r#"[{"id":1,"imageUrl":"u"}]"#),
            (
                r#"{"a":1,"b":"2026-11-22T22:31:43Z"}"#,
                r#"{"a":2,"b":"2026-11-22T22:31:44Z"}"#,
            ),
            ("line one\nline two", "line one\nline 2"),
        ];
        for round in 0..3 {
            for (p, s) in pairs.iter().chain(pairs.iter().rev()) {
                let fresh = cmp_bodies(p, s, &Options::default());
                assert_eq!(cmp_bodies(p, s, &memo), fresh, "round {round}: {p} / {s}");
            }
        }
        // More body pairs than are remembered: the older ones are compared anew.
        for i in 0..2 * MEMO_ENTRIES {
            let (p, s) = (format!("[{i}]"), format!("[{}]", i + 1));
            assert_eq!(
                cmp_bodies(&p, &s, &memo),
                cmp_bodies(&p, &s, &Options::default())
            );
        }
    }

    #[test]
    fn identical_is_same_despite_designed_differences() {
        let p = ex(
            "catalog.istioinaction:80",
            &[
                ("x-request-id", "a"),
                ("x-b3-spanid", "1"),
                ("x-forwarded-for", "172.18.0.1"),
                ("traceparent", "00-1"),
            ],
            200,
            &[
                JSON_CT,
                ("date", "Sat, 26 Apr 2025 11:27:34 GMT"),
                ("x-envoy-upstream-service-time", "0"),
            ],
            "[1]",
        );
        let s = ex(
            "catalog.istioinaction-shadow:80",
            &[
                ("x-request-id", "a"),
                ("x-b3-spanid", "2"),
                ("x-forwarded-for", "172.18.0.1,10.10.0.15"),
                ("traceparent", "00-2"),
            ],
            200,
            &[
                JSON_CT,
                ("date", "Sat, 26 Apr 2025 11:27:35 GMT"),
                ("x-envoy-upstream-service-time", "1"),
            ],
            "[1]",
        );
        let c = compare(&p, &s, &Options::default());
        assert!(c.same(), "{:?}", c);
        assert!(c.noise.is_empty());
    }

    #[test]
    fn strict_reports_designed_differences() {
        let p = ex(
            "catalog:80",
            &[("x-b3-spanid", "1")],
            200,
            &[("date", "Sat, 26 Apr 2025 11:27:34 GMT")],
            "",
        );
        let s = ex(
            "catalog-shadow:80",
            &[("x-b3-spanid", "2")],
            200,
            &[("date", "Sat, 26 Apr 2025 11:27:35 GMT")],
            "",
        );
        let c = compare(
            &p,
            &s,
            &Options {
                strict: true,
                ..Default::default()
            },
        );
        assert_eq!(
            wheres(&c.differences),
            [
                "request.header:host changed",
                "request.header:x-b3-spanid changed",
                "header:date changed"
            ]
        );
        assert!(c.noise.is_empty(), "strict counts noise as differences");
    }

    #[test]
    fn host_compared_after_suffix_is_removed() {
        let p = ex("catalog:80", &[], 200, &[], "");
        let s = ex("reviews-shadow:80", &[], 200, &[], "");
        let c = compare(&p, &s, &Options::default());
        assert_eq!(wheres(&c.differences), ["request.header:host changed"]);
        assert_eq!(c.differences[0].shadow, Some(json!("reviews-shadow:80")));
    }

    #[test]
    fn seed_catalog_v2_adds_image_url_per_item() {
        let v1 = r#"[{"id":1,"color":"amber","department":"Eyewear","name":"Elinor Glasses","price":"282.00"},
                     {"id":2,"color":"cyan","department":"Clothing","name":"Atlas Shirt","price":"127.00"}]"#;
        let v2 = r#"[{"id":1,"color":"amber","department":"Eyewear","name":"Elinor Glasses","price":"282.00","imageUrl":"http://lorempixel.com/640/480"},
                     {"id":2,"color":"cyan","department":"Clothing","name":"Atlas Shirt","price":"127.00","imageUrl":"http://lorempixel.com/640/480"}]"#;
        let c = cmp_bodies(v1, v2, &Options::default());
        assert_eq!(
            wheres(&c.differences),
            ["body:[0].imageUrl added", "body:[1].imageUrl added"]
        );
        assert_eq!(c.differences[0].primary, None);
        assert_eq!(
            c.differences[0].shadow,
            Some(json!("http://lorempixel.com/640/480"))
        );
        assert!(!c.same());
    }

    #[test]
    fn nested_object_and_array_paths() {
        let p =
            r#"{"items":[{"price":1},{"price":2},{"price":3,"tags":["a"]}],"total":3,"old":true}"#;
        let s = r#"{"items":[{"price":1},{"price":2},{"price":4,"tags":["a","b"]}],"total":"3","new":null}"#;
        let c = cmp_bodies(p, s, &Options::default());
        assert_eq!(
            wheres(&c.differences),
            [
                "body:items[2].price changed",
                "body:items[2].tags[1] added",
                "body:total changed",
                "body:old removed",
                "body:new added"
            ]
        );
        // Keys come in document order (serde_json's preserve_order).
        assert_eq!(c.differences[2].primary, Some(json!(3)));
        assert_eq!(c.differences[2].shadow, Some(json!("3")));
    }

    #[test]
    fn array_length_and_root_type_changes() {
        let c = cmp_bodies("[1,2,3]", "[1,2]", &Options::default());
        assert_eq!(wheres(&c.differences), ["body:[2] removed"]);
        let c = cmp_bodies("[1]", "{\"a\":1}", &Options::default());
        assert_eq!(wheres(&c.differences), ["body changed"]);
        // Numbers equal in value are equal: 1 and 1.0.
        assert!(cmp_bodies("[1]", "[1.0]", &Options::default()).same());
        // Formatting does not matter.
        assert!(cmp_bodies("{\"a\": [1, 2]}", "{\"a\":[1,2]}", &Options::default()).same());
    }

    #[test]
    fn volatile_values_are_noise_not_differences() {
        let p = r#"{"generated":"2025-04-26T11:27:34Z","trace":"03e6e06b-04ce-40d3-a1c5-1caf29731635","at":1745666854,"price":"282.00"}"#;
        let s = r#"{"generated":"2025-04-26T11:27:35.120Z","trace":"52efe2f7-e4d7-4fbd-ac44-9dab8815d827","at":1745666855,"price":"282.00"}"#;
        let c = cmp_bodies(p, s, &Options::default());
        assert!(c.same(), "{:?}", c.differences);
        assert_eq!(
            wheres(&c.noise),
            [
                "body:generated changed",
                "body:trace changed",
                "body:at changed"
            ]
        );
        // But a volatile-looking value that appears or disappears is a real difference.
        let c = cmp_bodies(
            r#"{"a":1}"#,
            r#"{"a":1,"at":"2025-04-26T11:27:35Z"}"#,
            &Options::default(),
        );
        assert_eq!(wheres(&c.differences), ["body:at added"]);
        // Strict: noise counts.
        let c = cmp_bodies(
            p,
            s,
            &Options {
                strict: true,
                ..Default::default()
            },
        );
        assert_eq!(
            wheres(&c.differences),
            [
                "request.header:host changed",
                "body:generated changed",
                "body:trace changed",
                "body:at changed"
            ]
        );
        assert!(c.noise.is_empty());
    }

    #[test]
    fn volatile_header_values_are_noise() {
        let p = ex(
            "c:80",
            &[],
            200,
            &[
                ("last-modified", "Sat, 26 Apr 2025 11:27:34 GMT"),
                ("etag", "W/\"1\""),
            ],
            "",
        );
        let s = ex(
            "c-shadow:80",
            &[],
            200,
            &[
                ("last-modified", "Sat, 26 Apr 2025 11:27:39 GMT"),
                ("etag", "W/\"2\""),
            ],
            "",
        );
        let c = compare(&p, &s, &Options::default());
        assert_eq!(wheres(&c.differences), ["header:etag changed"]);
        assert_eq!(wheres(&c.noise), ["header:last-modified changed"]);
    }

    #[test]
    fn ignore_options() {
        let mut o = Options::default();
        o.ignore_path("[*].imageUrl").unwrap();
        o.ignore_header("x-powered-*").unwrap();
        o.ignore_header("ETag").unwrap();
        let p = ex(
            "c:80",
            &[],
            200,
            &[JSON_CT, ("x-powered-by", "Express"), ("etag", "1")],
            r#"[{"id":1},{"id":2}]"#,
        );
        let s = ex(
            "c-shadow:80",
            &[],
            200,
            &[JSON_CT, ("x-powered-by", "Flask"), ("etag", "2")],
            r#"[{"id":1,"imageUrl":"u"},{"id":2,"imageUrl":"u"}]"#,
        );
        assert!(compare(&p, &s, &o).same());
        // A pattern covers its subtree, and a concrete index only that element.
        let mut o = Options::default();
        o.ignore_path("body:[0]").unwrap();
        let c = cmp_bodies(r#"[{"a":1},{"a":1}]"#, r#"[{"a":2},{"a":2}]"#, &o);
        assert_eq!(wheres(&c.differences), ["body:[1].a changed"]);
        // Key wildcard.
        let mut o = Options::default();
        o.ignore_path("meta.*").unwrap();
        assert!(cmp_bodies(r#"{"meta":{"x":1,"y":2}}"#, r#"{"meta":{"x":2,"z":3}}"#, &o).same());
        // Ignores apply in strict mode too.
        let mut o = Options {
            strict: true,
            ..Default::default()
        };
        o.ignore_path("a").unwrap();
        o.ignore_header("host").unwrap();
        assert!(cmp_bodies(r#"{"a":1}"#, r#"{"a":2}"#, &o).same());
    }

    #[test]
    fn bad_ignore_values_name_the_flag() {
        let mut o = Options::default();
        let e = o.ignore_header("bad header").unwrap_err();
        assert!(e.contains("bad header"), "{e}");
        assert!(o.ignore_header("").is_err());
        let e = o.ignore_path("items[").unwrap_err();
        assert!(e.contains("items["), "{e}");
        assert!(o.ignore_path("items[x]").is_err());
        assert!(o.ignore_path("").is_err());
        assert!(o.ignore_path("a..b").is_err());
        assert!(
            o.ignore_headers.is_empty() && o.ignore_paths.is_empty(),
            "nothing half-applied"
        );
    }

    #[test]
    fn text_bodies_by_lines() {
        let p = ex(
            "c:80",
            &[],
            200,
            &[("content-type", "text/plain")],
            "a\nb\nc\nd\n",
        );
        let s = ex(
            "c-shadow:80",
            &[],
            200,
            &[("content-type", "text/plain")],
            "a\nB\nc\nd\ne\n",
        );
        let c = compare(&p, &s, &Options::default());
        assert_eq!(
            wheres(&c.differences),
            ["body:line:2 changed", "body:line:5 added"]
        );
        assert_eq!(c.differences[0].primary, Some(json!("b")));
        assert_eq!(c.differences[0].shadow, Some(json!("B")));
        let p = ex("c:80", &[], 200, &[], "x\ny\nz\n");
        let s = ex("c-shadow:80", &[], 200, &[], "x\nz\n");
        assert_eq!(
            wheres(&compare(&p, &s, &Options::default()).differences),
            ["body:line:2 removed"]
        );
        // A line that differs only in a timestamp is noise.
        let p = ex(
            "c:80",
            &[],
            200,
            &[],
            "<p>rendered 2025-04-26T11:27:34Z</p>\n",
        );
        let s = ex(
            "c-shadow:80",
            &[],
            200,
            &[],
            "<p>rendered 2025-04-26T11:27:36Z</p>\n",
        );
        let c = compare(&p, &s, &Options::default());
        assert!(c.same());
        assert_eq!(wheres(&c.noise), ["body:line:1 changed"]);
    }

    #[test]
    fn binary_truncated_and_missing_bodies() {
        let mut p = ex("c:80", &[], 200, &[], "");
        let mut s = ex("c-shadow:80", &[], 200, &[], "");
        p.response.as_mut().unwrap().body = Body {
            data: vec![0xff, 0, 1],
            len: 3,
            truncated: false,
        };
        s.response.as_mut().unwrap().body = Body {
            data: vec![0xff, 0, 2],
            len: 3,
            truncated: false,
        };
        let c = compare(&p, &s, &Options::default());
        assert_eq!(wheres(&c.differences), ["body changed"]);
        assert_eq!(c.differences[0].primary, Some(json!("<3 bytes>")));

        s.response.as_mut().unwrap().body = Body {
            data: vec![0xff, 0],
            len: 9000,
            truncated: true,
        };
        let c = compare(&p, &s, &Options::default());
        assert_eq!(c.differences[0].shadow, Some(json!("<9000 bytes, 2 kept>")));

        s.response.as_mut().unwrap().body = Body::default();
        assert_eq!(
            wheres(&compare(&p, &s, &Options::default()).differences),
            ["body removed"]
        );
    }

    #[test]
    fn missing_response_and_status() {
        let p = ex("c:80", &[], 200, &[], "x");
        let mut s = ex("c-shadow:80", &[], 503, &[], "x");
        let c = compare(&p, &s, &Options::default());
        assert_eq!(wheres(&c.differences), ["status changed"]);
        assert_eq!(c.differences[0].shadow, Some(json!(503)));
        s.response = None;
        let c = compare(&p, &s, &Options::default());
        assert_eq!(wheres(&c.differences), ["status removed"]);
        assert_eq!(c.differences[0].shadow, None);
    }

    #[test]
    fn request_side_differences() {
        let p = ex("c:80", &[("accept", "application/json")], 200, &[], "");
        let mut s = ex("c-shadow:80", &[], 200, &[], "");
        s.request.target = "/items?x=1".into();
        let c = compare(&p, &s, &Options::default());
        assert_eq!(
            wheres(&c.differences),
            ["request.target changed", "request.header:accept removed"]
        );
    }

    #[test]
    fn repeated_headers_compare_joined() {
        let p = ex(
            "c:80",
            &[],
            200,
            &[("vary", "Origin"), ("vary", "Accept-Encoding")],
            "",
        );
        let s = ex(
            "c-shadow:80",
            &[],
            200,
            &[("vary", "Origin, Accept-Encoding")],
            "",
        );
        assert!(compare(&p, &s, &Options::default()).same());
    }

    #[test]
    fn header_names_in_any_case() {
        let p = ex(
            "c:80",
            &[],
            200,
            &[
                ("Date", "x"),
                ("X-Envoy-Upstream-Service-Time", "1"),
                ("Vary", "Origin"),
                ("vary", "Accept"),
            ],
            "",
        );
        let s = ex(
            "c-shadow:80",
            &[],
            200,
            &[
                ("date", "y"),
                ("x-envoy-upstream-service-time", "2"),
                ("VARY", "Origin, Accept"),
                ("ETag", "1"),
            ],
            "",
        );
        let c = compare(&p, &s, &Options::default());
        assert_eq!(wheres(&c.differences), ["header:etag added"]);
    }

    #[test]
    fn names_alike_in_length_ends_and_middle_are_still_different_names() {
        // "ab-cd", "ax-cd" and "AB-CD" have the same length, first, middle and last byte
        // (case folded): only the first and the last are the same header.
        let p = ex("c:80", &[], 200, &[("ab-cd", "1"), ("x@y", "2")], "");
        let s = ex(
            "c-shadow:80",
            &[],
            200,
            &[("ax-cd", "1"), ("AB-CD", "1"), ("x`y", "2")],
            "",
        );
        let c = compare(&p, &s, &Options::default());
        assert_eq!(
            wheres(&c.differences),
            [
                "header:x@y removed",
                "header:ax-cd added",
                "header:x`y added"
            ]
        );
    }

    #[test]
    fn differences_are_bounded() {
        let p: Vec<u32> = (0..3000).collect();
        let s: Vec<u32> = (1..3001).collect();
        let c = cmp_bodies(
            &json!(p).to_string(),
            &json!(s).to_string(),
            &Options::default(),
        );
        assert_eq!(c.differences.len(), MAX_DIFFERENCES);
        assert_eq!(c.omitted, 2000);
    }

    #[test]
    fn shadow_host_recognition() {
        assert!(is_shadow_host("catalog.istioinaction-shadow:80"));
        assert!(is_shadow_host("catalog-shadow"));
        assert!(is_shadow_host("Catalog-SHADOW:80"));
        assert!(!is_shadow_host("é:80"));
        assert!(!is_shadow_host("catalog.istioinaction:80"));
        assert!(!is_shadow_host("shadow:80"));
        assert!(!is_shadow_host("catalog-shadow.ns:80"));
        assert_eq!(
            strip_shadow_suffix("catalog.istioinaction-shadow:80").as_deref(),
            Some("catalog.istioinaction:80")
        );
        assert_eq!(strip_shadow_suffix("[::1]:80"), None);
    }

    #[test]
    fn odd_keys_are_quoted_in_paths() {
        let c = cmp_bodies(
            r#"{"a.b":{"x y":1}}"#,
            r#"{"a.b":{"x y":2}}"#,
            &Options::default(),
        );
        assert_eq!(wheres(&c.differences), [r#"body:["a.b"]["x y"] changed"#]);
        let pat = PathPattern::parse(r#"["a.b"]["x y"]"#).unwrap();
        let mut o = Options::default();
        o.ignore_paths.push(pat);
        assert!(cmp_bodies(r#"{"a.b":{"x y":1}}"#, r#"{"a.b":{"x y":2}}"#, &o).same());
    }
}
