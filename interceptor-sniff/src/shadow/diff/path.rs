//! Body paths: rendered (`items[2].price`), generalised for summaries (`[*].imageUrl`) and
//! matched against `--ignore-path` patterns.

use std::fmt::Write as _;

use serde_json::Value;

/// One step of a JSON path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// Renders a JSON path: `[0].imageUrl`, `items[2].price`, `meta["a.b"]`.
pub fn render_path(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Index(i) => {
                let _ = write!(out, "[{i}]");
            }
            Seg::Key(k) if is_plain_key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Key(k) => {
                let _ = write!(out, "[{}]", Value::String(k.clone()));
            }
        }
    }
    out
}

fn is_plain_key(k: &str) -> bool {
    !k.is_empty()
        && k != "*"
        && !k.starts_with("line:")
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'$')
}

/// Replaces array indices with `[*]` so that the same field across items counts as one.
pub fn generalise(location: &str) -> String {
    let mut out = String::with_capacity(location.len());
    let mut rest = location;
    while let Some(i) = rest.find('[') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if after.starts_with('"') {
            // A quoted key: copy it as it is, brackets inside included.
            let end = after.find("\"]").map_or(after.len(), |j| j + 2);
            out.push('[');
            out.push_str(&after[..end]);
            rest = &after[end..];
            continue;
        }
        match after.find(']') {
            Some(j) if j > 0 && after[..j].bytes().all(|b| b.is_ascii_digit()) => {
                out.push_str("[*]");
                rest = &after[j + 1..];
            }
            _ => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// A body path to ignore: the path syntax of the output, plus `[*]` (any index) and `*`
/// (any key). It covers the paths it names and everything beneath them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathPattern(Vec<PatSeg>);

#[derive(Clone, Debug, PartialEq, Eq)]
enum PatSeg {
    Key(String),
    AnyKey,
    Index(usize),
    AnyIndex,
}

impl PathPattern {
    pub fn parse(text: &str) -> Result<PathPattern, String> {
        let t = text.strip_prefix("body:").unwrap_or(text);
        let t = t.strip_prefix('$').unwrap_or(t);
        let b = t.as_bytes();
        let mut segs = Vec::new();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'.' => {
                    i += 1;
                    let start = i;
                    while i < b.len() && b[i] != b'.' && b[i] != b'[' {
                        i += 1;
                    }
                    if start == i {
                        return Err(format!("empty key at byte {start}"));
                    }
                    segs.push(key_seg(&t[start..i]));
                }
                b'[' => {
                    let close = t[i..]
                        .find(']')
                        .map(|j| i + j)
                        .ok_or_else(|| format!("unclosed '[' at byte {i}"))?;
                    let inner = &t[i + 1..close];
                    if inner == "*" {
                        segs.push(PatSeg::AnyIndex);
                        i = close + 1;
                    } else if let Ok(n) = inner.parse::<usize>() {
                        segs.push(PatSeg::Index(n));
                        i = close + 1;
                    } else if inner.starts_with('"') {
                        // A quoted key may itself contain ']': read a JSON string.
                        let mut de =
                            serde_json::Deserializer::from_str(&t[i + 1..]).into_iter::<String>();
                        let key = match de.next() {
                            Some(Ok(k)) => k,
                            _ => return Err(format!("bad quoted key at byte {i}")),
                        };
                        let end = i + 1 + de.byte_offset();
                        if b.get(end) != Some(&b']') {
                            return Err(format!("expected ']' at byte {end}"));
                        }
                        segs.push(PatSeg::Key(key));
                        i = end + 1;
                    } else {
                        return Err(format!(
                            "expected an index, * or a quoted key inside [] at byte {i}"
                        ));
                    }
                }
                _ if i == 0 => {
                    let start = i;
                    while i < b.len() && b[i] != b'.' && b[i] != b'[' {
                        i += 1;
                    }
                    segs.push(key_seg(&t[start..i]));
                }
                c => return Err(format!("unexpected {:?} at byte {i}", c as char)),
            }
        }
        if segs.is_empty() {
            return Err("empty path: name a field, e.g. [*].imageUrl".into());
        }
        Ok(PathPattern(segs))
    }

    pub(super) fn covers(&self, path: &[Seg]) -> bool {
        self.0.len() <= path.len()
            && self.0.iter().zip(path).all(|(p, s)| match (p, s) {
                (PatSeg::AnyKey, Seg::Key(_)) | (PatSeg::AnyIndex, Seg::Index(_)) => true,
                (PatSeg::Key(a), Seg::Key(b)) => a == b,
                (PatSeg::Index(a), Seg::Index(b)) => a == b,
                _ => false,
            })
    }
}

fn key_seg(k: &str) -> PatSeg {
    if k == "*" {
        PatSeg::AnyKey
    } else {
        PatSeg::Key(k.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_parsing() {
        assert_eq!(
            PathPattern::parse("items[2].price").unwrap(),
            PathPattern(vec![
                PatSeg::Key("items".into()),
                PatSeg::Index(2),
                PatSeg::Key("price".into())
            ])
        );
        assert_eq!(
            PathPattern::parse("$.a[*].*").unwrap(),
            PathPattern(vec![
                PatSeg::Key("a".into()),
                PatSeg::AnyIndex,
                PatSeg::AnyKey
            ])
        );
        assert_eq!(PathPattern::parse("[0].imageUrl").unwrap().0.len(), 2);
    }

    #[test]
    fn generalised_locations() {
        assert_eq!(generalise("body:[0].imageUrl"), "body:[*].imageUrl");
        assert_eq!(
            generalise("body:items[12].tags[3]"),
            "body:items[*].tags[*]"
        );
        assert_eq!(generalise(r#"body:["a[1]"]"#), r#"body:["a[1]"]"#);
        assert_eq!(generalise("header:etag"), "header:etag");
    }
}
