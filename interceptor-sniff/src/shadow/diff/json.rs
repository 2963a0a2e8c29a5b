//! JSON bodies compared structurally, path by path.

use serde_json::Value;

use super::path::{render_path, Seg};
use super::volatile;
use super::{changed, Comparison, Difference, Kind, Location, Options};

pub(super) fn compare(
    c: &mut Comparison,
    request: bool,
    path: &mut Vec<Seg>,
    p: &Value,
    sh: &Value,
    opts: &Options,
) {
    if opts.path_ignored(path) {
        return;
    }
    let loc = |path: &[Seg]| Location::Body {
        request,
        path: render_path(path),
    };
    match (p, sh) {
        (Value::Object(po), Value::Object(so)) => {
            for (k, pv) in po {
                path.push(Seg::Key(k.clone()));
                match so.get(k) {
                    Some(sv) => compare(c, request, path, pv, sv, opts),
                    None if !opts.path_ignored(path) => c.push(
                        Difference {
                            location: loc(path),
                            kind: Kind::Removed,
                            primary: Some(pv.clone()),
                            shadow: None,
                        },
                        false,
                        opts.strict,
                    ),
                    None => {}
                }
                path.pop();
            }
            for (k, sv) in so {
                if po.contains_key(k) {
                    continue;
                }
                path.push(Seg::Key(k.clone()));
                if !opts.path_ignored(path) {
                    c.push(
                        Difference {
                            location: loc(path),
                            kind: Kind::Added,
                            primary: None,
                            shadow: Some(sv.clone()),
                        },
                        false,
                        opts.strict,
                    );
                }
                path.pop();
            }
        }
        (Value::Array(pa), Value::Array(sa)) => {
            // Index by index: services that add a field keep their order, and positions are
            // what a reader of `[0].imageUrl` expects.
            for i in 0..pa.len().max(sa.len()) {
                path.push(Seg::Index(i));
                match (pa.get(i), sa.get(i)) {
                    (Some(pv), Some(sv)) => compare(c, request, path, pv, sv, opts),
                    (Some(pv), None) if !opts.path_ignored(path) => c.push(
                        Difference {
                            location: loc(path),
                            kind: Kind::Removed,
                            primary: Some(pv.clone()),
                            shadow: None,
                        },
                        false,
                        opts.strict,
                    ),
                    (None, Some(sv)) if !opts.path_ignored(path) => c.push(
                        Difference {
                            location: loc(path),
                            kind: Kind::Added,
                            primary: None,
                            shadow: Some(sv.clone()),
                        },
                        false,
                        opts.strict,
                    ),
                    _ => {}
                }
                path.pop();
            }
        }
        (Value::Number(a), Value::Number(b)) => {
            if a != b && a.as_f64() != b.as_f64() {
                let noise = volatile::both_epoch(p, sh);
                c.push(
                    changed(loc(path), p.clone(), sh.clone()),
                    noise,
                    opts.strict,
                );
            }
        }
        (Value::String(a), Value::String(b)) => {
            if a != b {
                let noise = volatile::only_volatile_differs(a, b);
                c.push(
                    changed(loc(path), p.clone(), sh.clone()),
                    noise,
                    opts.strict,
                );
            }
        }
        _ => {
            if p != sh {
                c.push(
                    changed(loc(path), p.clone(), sh.clone()),
                    false,
                    opts.strict,
                );
            }
        }
    }
}
