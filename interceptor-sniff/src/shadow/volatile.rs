//! Values that change from one response to the next by nature: timestamps (RFC 3339, HTTP
//! dates, epoch numbers) and UUIDs. A difference made only of such values is noise, not a
//! regression: the shadow answered at another instant, or minted another identifier.

use std::borrow::Cow;
use std::sync::OnceLock;

use regex::Regex;

/// One regular expression matching every volatile token inside a string.
fn tokens() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        let rfc3339 = r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:?\d{2})?";
        let http_date = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d{2}:\d{2}:\d{2} GMT";
        let uuid = r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}";
        // Seconds, milliseconds, microseconds or nanoseconds since 1970 for dates between
        // 2001 and 2100, standing alone (not inside a longer number).
        let epoch = r"\b(?:[1-4]\d{9}(?:\.\d+)?|[1-4]\d{12}|[1-4]\d{15}|[1-4]\d{18})\b";
        Regex::new(&format!("{rfc3339}|{http_date}|{uuid}|{epoch}")).expect("volatile token regex")
    })
}

/// `s` with every volatile token replaced by a placeholder naming its kind.
pub fn mask(s: &str) -> Cow<'_, str> {
    tokens().replace_all(s, |c: &regex::Captures| {
        kind(&c[0]).unwrap_or("volatile").to_string()
    })
}

/// The kind of volatile value `s` is as a whole, if it is one.
pub fn kind(s: &str) -> Option<&'static str> {
    let m = tokens().find(s)?;
    if m.start() != 0 || m.end() != s.len() {
        return None;
    }
    let b = s.as_bytes();
    Some(
        if s.len() == 36 && b.get(8) == Some(&b'-') && b.get(13) == Some(&b'-') {
            "<uuid>"
        } else if s.ends_with(" GMT") {
            "<http-date>"
        } else if b.get(4) == Some(&b'-') {
            "<timestamp>"
        } else {
            "<epoch>"
        },
    )
}

/// True when `a` and `b` differ only in volatile tokens, and do differ in at least one.
pub fn only_volatile_differs(a: &str, b: &str) -> bool {
    a != b && mask(a) == mask(b)
}

/// For JSON numbers: true when both look like epoch timestamps of the same unit.
pub fn both_epoch(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    let (Some(x), Some(y)) = (a.as_f64(), b.as_f64()) else {
        return false;
    };
    let unit = |v: f64| -> Option<u32> {
        (1..=4).find(|&u| {
            let scale = 1000f64.powi(u as i32 - 1);
            (1.0e9 * scale..5.0e9 * scale).contains(&v)
        })
    };
    x != y && unit(x).is_some() && unit(x) == unit(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn whole_value_kinds() {
        assert_eq!(kind("2025-04-26T11:18:31Z"), Some("<timestamp>"));
        assert_eq!(
            kind("2025-04-26T11:18:31.105759+09:00"),
            Some("<timestamp>")
        );
        assert_eq!(kind("Sat, 26 Apr 2025 11:18:31 GMT"), Some("<http-date>"));
        assert_eq!(kind("03e6e06b-04ce-40d3-a1c5-1caf29731635"), Some("<uuid>"));
        assert_eq!(kind("1745666311"), Some("<epoch>"));
        assert_eq!(kind("1745666311123"), Some("<epoch>"));
        assert_eq!(kind("282.00"), None);
        assert_eq!(kind("amber"), None);
        assert_eq!(kind("id 1745666311"), None);
        assert_eq!(kind("12345"), None);
    }

    #[test]
    fn differences_in_tokens_only() {
        assert!(only_volatile_differs(
            "generated at 2025-04-26T11:18:31Z by a",
            "generated at 2025-04-26T11:18:32Z by a"
        ));
        assert!(!only_volatile_differs(
            "generated at 2025-04-26T11:18:31Z by a",
            "generated at 2025-04-26T11:18:32Z by b"
        ));
        assert!(!only_volatile_differs("same", "same"));
        // A UUID and a timestamp are different kinds: not interchangeable noise.
        assert!(!only_volatile_differs(
            "03e6e06b-04ce-40d3-a1c5-1caf29731635",
            "2025-04-26T11:18:31Z"
        ));
        // Prices are not volatile.
        assert!(!only_volatile_differs("282.00", "283.00"));
    }

    #[test]
    fn epoch_numbers() {
        assert!(both_epoch(&json!(1745666311), &json!(1745666312)));
        assert!(both_epoch(&json!(1745666311.5), &json!(1745666312.25)));
        assert!(both_epoch(
            &json!(1745666311000u64),
            &json!(1745666312000u64)
        ));
        assert!(!both_epoch(&json!(1745666311), &json!(1745666311000u64)));
        assert!(!both_epoch(&json!(282), &json!(283)));
        assert!(!both_epoch(&json!(1745666311), &json!(1745666311)));
    }
}
