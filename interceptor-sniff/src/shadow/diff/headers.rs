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

/// The value of header `name` as one string, repeated headers joined as `, `; borrowed when
/// the header appears once (the usual case: no allocation).
fn joined<'a>(headers: &'a Headers, name: &str) -> Option<Cow<'a, str>> {
    let mut it = headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name));
    let (_, first) = it.next()?;
    let mut out = Cow::Borrowed(first);
    for (_, v) in it {
        let o = out.to_mut();
        o.push_str(", ");
        o.push_str(v);
    }
    Some(out)
}

/// Distinct header names, in first-seen order.
fn names(headers: &Headers) -> impl Iterator<Item = &str> {
    headers.iter().enumerate().filter_map(move |(i, (n, _))| {
        let first = !headers
            .iter()
            .take(i)
            .any(|(m, _)| m.eq_ignore_ascii_case(n));
        first.then_some(n)
    })
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
    for name in names(p) {
        if opts.header_ignored(name) {
            continue;
        }
        let Some(pv) = joined(p, name) else { continue };
        match joined(sh, name) {
            None => c.push(
                Difference {
                    location: loc(name),
                    kind: Kind::Removed,
                    primary: Some(s(&pv)),
                    shadow: None,
                },
                false,
                opts.strict,
            ),
            Some(sv) => {
                let stripped = if !opts.strict && name.eq_ignore_ascii_case("host") {
                    strip_shadow_suffix(&sv)
                } else {
                    None
                };
                if *pv != *stripped.as_deref().unwrap_or(&sv) {
                    let noise = volatile::only_volatile_differs(&pv, &sv);
                    c.push(changed(loc(name), s(&pv), s(&sv)), noise, opts.strict);
                }
            }
        }
    }
    for name in names(sh) {
        if opts.header_ignored(name) || p.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            continue;
        }
        let Some(sv) = joined(sh, name) else { continue };
        c.push(
            Difference {
                location: loc(name),
                kind: Kind::Added,
                primary: None,
                shadow: Some(s(&sv)),
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
