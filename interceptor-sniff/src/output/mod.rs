//! Writers for what the sniffer finds: ngrep-like text blocks or JSON lines, and the
//! formatting both share (dates, message lines as they went over the wire).

pub mod json;
pub mod text;

use std::time::{SystemTime, UNIX_EPOCH};

use crate::http::{Exchange, Headers, Request, Response};

/// Seconds and microseconds since the epoch (times before it clamp to zero).
pub(crate) fn epoch_micros(t: SystemTime) -> (i64, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_secs() as i64, d.subsec_micros())
}

/// Calendar date from days since 1970-01-01 (proleptic Gregorian).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Broken-down UTC time: (year, month, day, hour, minute, second, microsecond).
pub(crate) fn utc(t: SystemTime) -> (i64, u32, u32, u32, u32, u32, u32) {
    let (secs, us) = epoch_micros(t);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400) as u32;
    (y, mo, d, sod / 3600, sod / 60 % 60, sod % 60, us)
}

/// RFC 3339 with microseconds, UTC: `2026-11-22T22:31:43.123456Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s, us) = utc(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{us:06}Z")
}

/// How a connection left HTTP after this exchange, if it did.
pub(crate) fn tunnel_kind(ex: &Exchange) -> Option<String> {
    let resp = ex.response.as_ref()?;
    if resp.status == 101 {
        return Some(
            resp.header("upgrade")
                .or(ex.request.header("upgrade"))
                .unwrap_or("unknown")
                .to_ascii_lowercase(),
        );
    }
    if ex.request.method == "CONNECT" && (200..300).contains(&resp.status) {
        return Some("connect".to_string());
    }
    None
}

/// Renders a message head and body as it went over the wire (for MATCH and display).
pub(crate) fn wire_text(start: &str, headers: &Headers, body: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(start.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (n, v) in headers {
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

pub fn request_line(r: &Request) -> String {
    format!("{} {} {}", r.method, r.target, r.version)
}

pub fn status_line(r: &Response) -> String {
    if r.reason.is_empty() {
        format!("{} {}", r.version, r.status)
    } else {
        format!("{} {} {}", r.version, r.status, r.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let t = UNIX_EPOCH + Duration::from_micros(1_795_386_703_123_456);
        assert_eq!(rfc3339(t), "2026-11-22T22:31:43.123456Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000000Z");
    }
}
