//! Headers: which are compared, how the shadow's Host is recognised, and how two header
//! lists differ.

use std::borrow::Cow;

use super::{changed, s, volatile, Comparison, Difference, Kind, Location, Options};
use crate::http::Headers;

/// The Host with the shadow marker removed: `catalog.ns-shadow:80` -> `catalog.ns:80`.
pub fn strip_shadow_suffix(host: &str) -> Option<String> {
    shadow_stem(host).map(|(stem, port)| format!("{stem}{port}"))
}

/// True when a Host (or `:authority`) names a shadow: `-shadow` right before the port.
pub fn is_shadow_host(host: &str) -> bool {
    shadow_stem(host).is_some()
}

/// A shadow Host's name without its marker, and its port (`:80` or empty); None when
/// `host` has no marker. Host names are case-insensitive.
fn shadow_stem(host: &str) -> Option<(&str, &str)> {
    let (name, port) = split_port(host);
    let cut = name.len().checked_sub("-shadow".len())?;
    if !name.is_char_boundary(cut) || !name[cut..].eq_ignore_ascii_case("-shadow") {
        return None;
    }
    Some((&name[..cut], port))
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
    let (stem, port) = shadow_stem(shadow)?;
    Some(
        primary.len() == stem.len() + port.len()
            && primary.starts_with(stem)
            && primary.ends_with(port),
    )
}

/// A header name's length and three of its bytes, case folded: names with different keys
/// differ, names with the same key are compared in full. Header lists are compared name
/// against name, and this makes most of those comparisons one integer compare.
fn name_key(name: &str) -> u32 {
    let b = name.as_bytes();
    let fold = |i: usize| u32::from(b.get(i).map_or(0, |c| c | 0x20));
    (b.len() as u32) << 24 | fold(0) << 16 | fold(b.len() / 2) << 8 | fold(b.len().wrapping_sub(1))
}

/// A distinct header of a list: its key, its name as first spelt, and its value (the
/// values of a repeated header joined).
struct Distinct<'a> {
    key: u32,
    name: &'a str,
    value: Cow<'a, str>,
}

impl Distinct<'_> {
    fn is(&self, key: u32, name: &str) -> bool {
        self.key == key && self.name.eq_ignore_ascii_case(name)
    }
}

/// The distinct header names of a list in first-seen order (as first spelt), each with
/// its value as one string, repeated headers joined as `, ` (borrowed when the header
/// appears once: the usual case, no allocation). One pass over the list.
fn distinct(headers: &Headers) -> Vec<Distinct<'_>> {
    let mut out: Vec<Distinct<'_>> = Vec::with_capacity(headers.len());
    for (name, v) in headers {
        let key = name_key(name);
        match out.iter_mut().find(|d| d.is(key, name)) {
            Some(d) => {
                let o = d.value.to_mut();
                o.push_str(", ");
                o.push_str(v);
            }
            None => out.push(Distinct {
                key,
                name,
                value: Cow::Borrowed(v),
            }),
        }
    }
    out
}

fn header_location(request: bool, name: &str) -> Location {
    Location::Header {
        request,
        name: name.to_ascii_lowercase(),
    }
}

/// The values of header `name` on both sides: the same, or a difference (the shadow's
/// Host is the same when it is the primary's with the shadow marker).
fn compare_values(
    c: &mut Comparison,
    request: bool,
    name: &str,
    pv: &str,
    sv: &str,
    opts: &Options,
) {
    let stripped = if !opts.strict && name.eq_ignore_ascii_case("host") {
        equals_stripped(pv, sv)
    } else {
        None
    };
    if !stripped.unwrap_or_else(|| pv == sv) {
        let noise = volatile::only_volatile_differs(pv, sv);
        c.push(
            changed(header_location(request, name), s(pv), s(sv)),
            noise,
            opts.strict,
        );
    }
}

/// Whether both lists have the same names, spelt the same, in the same order, and no
/// name twice (in any case).
fn same_names(p: &Headers, sh: &Headers) -> bool {
    const MOST: usize = 32;
    if p.len() != sh.len() || p.len() > MOST {
        return false;
    }
    let mut keys = [0u32; MOST];
    for (i, ((pn, _), (sn, _))) in p.iter().zip(sh).enumerate() {
        if pn != sn {
            return false;
        }
        // A repeated name has the key of its first: same keys send it the general way.
        let key = name_key(pn);
        if keys[..i].contains(&key) {
            return false;
        }
        keys[i] = key;
    }
    true
}

/// Differences between the two header lists of one side (request or response).
pub(super) fn compare(
    c: &mut Comparison,
    request: bool,
    p: &Headers,
    sh: &Headers,
    opts: &Options,
) {
    if same_names(p, sh) {
        // The usual pair: the same names in the same order, none twice. What follows
        // finds the same, name by name, without building the lists of distinct names.
        for ((name, pv), (_, sv)) in p.iter().zip(sh) {
            if !opts.header_ignored(name) {
                compare_values(c, request, name, pv, sv, opts);
            }
        }
        return;
    }
    let (ps, shs) = (distinct(p), distinct(sh));
    for Distinct {
        key,
        name,
        value: pv,
    } in &ps
    {
        if opts.header_ignored(name) {
            continue;
        }
        match shs.iter().find(|d| d.is(*key, name)) {
            None => c.push(
                Difference {
                    location: header_location(request, name),
                    kind: Kind::Removed,
                    primary: Some(s(pv)),
                    shadow: None,
                },
                false,
                opts.strict,
            ),
            Some(Distinct { value: sv, .. }) => compare_values(c, request, name, pv, sv, opts),
        }
    }
    for Distinct {
        key,
        name,
        value: sv,
    } in &shs
    {
        // Most names are the primary's too: that is checked first, as it is cheaper.
        if ps.iter().any(|d| d.is(*key, name)) || opts.header_ignored(name) {
            continue;
        }
        c.push(
            Difference {
                location: header_location(request, name),
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
    let has = |v: &[u8], part: &[u8]| v.windows(part.len()).any(|w| w.eq_ignore_ascii_case(part));
    headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("content-type")
            && (has(v.as_bytes(), b"/json") || has(v.as_bytes(), b"+json"))
    })
}
