//! Headers: which are compared, how the shadow's Host is recognised, and how two header
//! lists differ.

use std::borrow::Cow;

use super::{changed, s, volatile, Comparison, Difference, Kind, Location, Options};
use crate::http::Headers;

/// The Host with the shadow marker removed: `catalog.ns-shadow:80` -> `catalog.ns:80`.
pub fn strip_shadow_suffix(host: &str) -> Option<String> {
    let (name, port) = split_port(host);
    // Host names are case-insensitive.
    let cut = name.len().checked_sub("-shadow".len())?;
    if !name.is_char_boundary(cut) || !name[cut..].eq_ignore_ascii_case("-shadow") {
        return None;
    }
    Some(format!("{}{port}", &name[..cut]))
}

/// True when a Host (or `:authority`) names a shadow: `-shadow` right before the port.
pub fn is_shadow_host(host: &str) -> bool {
    strip_shadow_suffix(host).is_some()
}

/// Splits `name:port` into (`name`, `:port`); IPv6 literals keep their brackets.
fn split_port(host: &str) -> (&str, &str) {
    match host.rfind(':') {
        Some(i) if !host[..i].contains(':') || host[..i].ends_with(']') => {
            if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) {
                (&host[..i], &host[i..])
            } else {
                (host, "")
            }
        }
        _ => (host, ""),
    }
}

/// Whether `primary` is `shadow` with its shadow marker removed (`strip_shadow_suffix`),
/// without building the stripped string; None when `shadow` has no marker.
fn equals_stripped(primary: &str, shadow: &str) -> Option<bool> {
    let (name, port) = split_port(shadow);
    let cut = name.len().checked_sub("-shadow".len())?;
    if !name.is_char_boundary(cut) || !name[cut..].eq_ignore_ascii_case("-shadow") {
        return None;
    }
    let stem = &name[..cut];
    Some(
        primary.len() == stem.len() + port.len()
            && primary.starts_with(stem)
            && primary.ends_with(port),
    )
}

/// The distinct header names of a list in first-seen order (as first spelt), each with
/// its value as one string, repeated headers joined as `, ` (borrowed when the header
/// appears once: the usual case, no allocation). One pass over the list.
fn distinct(headers: &Headers) -> Vec<(&str, Cow<'_, str>)> {
    let mut out: Vec<(&str, Cow<'_, str>)> = Vec::with_capacity(headers.len());
    for (n, v) in headers {
        match out.iter_mut().find(|(m, _)| m.eq_ignore_ascii_case(n)) {
            Some((_, joined)) => {
                let o = joined.to_mut();
                o.push_str(", ");
                o.push_str(v);
            }
            None => out.push((n, Cow::Borrowed(v))),
        }
    }
    out
}

/// Differences between the two header lists of one side (request or response).
pub(super) fn compare(
    c: &mut Comparison,
    request: bool,
    p: &Headers,
    sh: &Headers,
    opts: &Options,
) {
    let loc = |name: &str| Location::Header {
        request,
        name: name.to_ascii_lowercase(),
    };
    let (ps, shs) = (distinct(p), distinct(sh));
    for (name, pv) in &ps {
        if opts.header_ignored(name) {
            continue;
        }
        match shs.iter().find(|(m, _)| m.eq_ignore_ascii_case(name)) {
            None => c.push(
                Difference {
                    location: loc(name),
                    kind: Kind::Removed,
                    primary: Some(s(pv)),
                    shadow: None,
                },
                false,
                opts.strict,
            ),
            Some((_, sv)) => {
                let stripped = if !opts.strict && name.eq_ignore_ascii_case("host") {
                    equals_stripped(pv, sv)
                } else {
                    None
                };
                if !stripped.unwrap_or_else(|| pv == sv) {
                    let noise = volatile::only_volatile_differs(pv, sv);
                    c.push(changed(loc(name), s(pv), s(sv)), noise, opts.strict);
                }
            }
        }
    }
    for (name, sv) in &shs {
        if opts.header_ignored(name) || ps.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            continue;
        }
        c.push(
            Difference {
                location: loc(name),
                kind: Kind::Added,
                primary: None,
                shadow: Some(s(sv)),
            },
            false,
            opts.strict,
        );
    }
}

pub(super) fn is_json_type(headers: &Headers) -> bool {
    headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("content-type") && {
            let v = v.to_ascii_lowercase();
            v.contains("/json") || v.contains("+json")
        }
    })
}
