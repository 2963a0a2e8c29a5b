//! Text bodies compared line by line.

use serde_json::Value;

use super::{changed, s, volatile, Comparison, Difference, Kind, Location, Options};

/// Text bodies whose differing middle exceeds this many line pairs are reported as one change
/// rather than diffed line by line (the line diff is quadratic).
const MAX_LINE_DIFF_CELLS: usize = 4_000_000;

/// Line diff: common head and tail trimmed, the middle aligned by longest common
/// subsequence; a removed line facing an added line is one changed line.
pub(super) fn compare(c: &mut Comparison, request: bool, p: &str, sh: &str, opts: &Options) {
    let a: Vec<&str> = p.lines().collect();
    let b: Vec<&str> = sh.lines().collect();
    let head = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let tail = a[head..]
        .iter()
        .rev()
        .zip(b[head..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let am = &a[head..a.len() - tail];
    let bm = &b[head..b.len() - tail];
    let loc = |n: usize| Location::Body {
        request,
        path: format!("line:{n}"),
    };
    let line = |t: &str| Some(Value::String(t.to_string()));
    if am.is_empty() && bm.is_empty() {
        // Same lines, different line endings or final newline.
        c.push(
            changed(loc(head + 1), describe_text(p), describe_text(sh)),
            false,
            opts.strict,
        );
        return;
    }
    if am.len().saturating_mul(bm.len()) > MAX_LINE_DIFF_CELLS {
        c.push(
            Difference {
                location: Location::Body {
                    request,
                    path: format!("line:{}", head + 1),
                },
                kind: Kind::Changed,
                primary: Some(Value::String(format!("<{} lines>", am.len()))),
                shadow: Some(Value::String(format!("<{} lines>", bm.len()))),
            },
            false,
            opts.strict,
        );
        return;
    }
    // lcs[i][j]: length of the LCS of am[i..] and bm[j..].
    let w = bm.len() + 1;
    let mut lcs = vec![0u32; (am.len() + 1) * w];
    for i in (0..am.len()).rev() {
        for j in (0..bm.len()).rev() {
            lcs[i * w + j] = if am[i] == bm[j] {
                lcs[(i + 1) * w + j + 1] + 1
            } else {
                lcs[(i + 1) * w + j].max(lcs[i * w + j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut removed: Vec<(usize, &str)> = Vec::new();
    let mut added: Vec<(usize, &str)> = Vec::new();
    let flush =
        |c: &mut Comparison, removed: &mut Vec<(usize, &str)>, added: &mut Vec<(usize, &str)>| {
            let n = removed.len().max(added.len());
            for k in 0..n {
                let d = match (removed.get(k), added.get(k)) {
                    (Some(&(ln, r)), Some(&(_, a))) => {
                        let noise = volatile::only_volatile_differs(r, a);
                        c.push(changed(loc(ln), s(r), s(a)), noise, opts.strict);
                        continue;
                    }
                    (Some(&(ln, r)), None) => Difference {
                        location: loc(ln),
                        kind: Kind::Removed,
                        primary: line(r),
                        shadow: None,
                    },
                    (None, Some(&(ln, a))) => Difference {
                        location: loc(ln),
                        kind: Kind::Added,
                        primary: None,
                        shadow: line(a),
                    },
                    (None, None) => continue,
                };
                c.push(d, false, opts.strict);
            }
            removed.clear();
            added.clear();
        };
    while i < am.len() || j < bm.len() {
        if i < am.len() && j < bm.len() && am[i] == bm[j] {
            flush(c, &mut removed, &mut added);
            i += 1;
            j += 1;
        } else if j < bm.len() && (i == am.len() || lcs[i * w + j + 1] >= lcs[(i + 1) * w + j]) {
            added.push((head + j + 1, bm[j]));
            j += 1;
        } else {
            removed.push((head + i + 1, am[i]));
            i += 1;
        }
    }
    flush(c, &mut removed, &mut added);
}

fn describe_text(t: &str) -> Value {
    let end = if t.ends_with("\r\n") {
        "CRLF"
    } else if t.ends_with('\n') {
        "LF"
    } else {
        "no newline"
    };
    Value::String(format!(
        "<{} bytes, {} lines, ends with {end}>",
        t.len(),
        t.lines().count()
    ))
}
