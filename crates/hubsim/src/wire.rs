//! Small pieces of HTTP text handling: percent-coding, query strings, `Range` headers, and the Hub's date format.
//!
//! Request text is untrusted: decoding rejects invalid escapes and non-UTF-8 results instead of guessing, and the
//! `Range` parser accepts exactly the three single-range forms of RFC 9110.

use chrono::{DateTime, SecondsFormat, Utc};

/// Percent-decodes one path segment or query component; `plus_is_space` for `application/x-www-form-urlencoded`.
/// `None` on a malformed escape or a result that is not UTF-8.
pub(crate) fn percent_decode(s: &str, plus_is_space: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|c| (*c as char).to_digit(16))?;
                let lo = bytes.get(i + 2).and_then(|c| (*c as char).to_digit(16))?;
                out.push(u8::try_from(hi * 16 + lo).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes everything but RFC 3986 unreserved characters (and `/` when `keep_slash`).
pub(crate) fn percent_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decoded `key=value` pairs of a query string (or a form body), in order; malformed pairs are dropped.
pub(crate) fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((percent_decode(k, true)?, percent_decode(v, true)?))
        })
        .collect()
}

/// Query parameters with lookup helpers.
#[derive(Debug, Default)]
pub(crate) struct Query(pub Vec<(String, String)>);

impl Query {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn all(&self, key: &str) -> impl Iterator<Item = &str> {
        self.0.iter().filter(move |(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Python sends `True`, httpx and JavaScript `true`, curl users `1`.
    pub fn flag(&self, key: &str) -> bool {
        self.get(key).is_some_and(|v| matches!(v, "true" | "True" | "1"))
    }
}

/// What a `Range` header asks of a resource of a known size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RangeAnswer {
    /// No usable range: send the whole body with 200 (no header, a syntax error, another unit, or several ranges:
    /// RFC 9110 lets a server ignore Range, and the Hub's storage ignores multi-range requests the same way).
    Full,
    /// Send bytes `start..=end` with 206.
    Partial { start: u64, end: u64 },
    /// 416 with `Content-Range: bytes */size`.
    Unsatisfiable,
}

/// Interprets a `Range` header value against a resource of `size` bytes.
pub(crate) fn parse_range(header: Option<&str>, size: u64) -> RangeAnswer {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeAnswer::Full;
    };
    if spec.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAnswer::Full;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match (first, last) {
        (f, "") if digits(f) => match f.parse::<u64>() {
            Ok(start) if start < size => RangeAnswer::Partial { start, end: size - 1 },
            _ => RangeAnswer::Unsatisfiable,
        },
        ("", n) if digits(n) => match n.parse::<u64>() {
            Ok(n) if n > 0 && size > 0 => RangeAnswer::Partial { start: size.saturating_sub(n), end: size - 1 },
            _ => RangeAnswer::Unsatisfiable,
        },
        (f, l) if digits(f) && digits(l) => match (f.parse::<u64>(), l.parse::<u64>()) {
            // A last position before the first makes the header invalid, which means: ignore it.
            (Ok(start), Ok(end)) if end < start => RangeAnswer::Full,
            (Ok(start), Ok(end)) if start < size => RangeAnswer::Partial { start, end: end.min(size - 1) },
            (Ok(_), Ok(_)) => RangeAnswer::Unsatisfiable,
            // Out of u64 range: as unsatisfiable as it gets.
            _ => RangeAnswer::Unsatisfiable,
        },
        _ => RangeAnswer::Full,
    }
}

/// The Hub's timestamp format: `2024-03-01T00:51:00.000Z`.
pub(crate) fn hub_date(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(header: Option<&str>, size: u64, expected: RangeAnswer) {
        assert_eq!(parse_range(header, size), expected, "{header:?} of {size}");
    }

    #[test]
    fn ranges() {
        use RangeAnswer::*;
        check(None, 10, Full);
        check(Some("bytes=0-4"), 10, Partial { start: 0, end: 4 });
        check(Some("bytes=5-"), 10, Partial { start: 5, end: 9 });
        check(Some("bytes=-3"), 10, Partial { start: 7, end: 9 });
        check(Some("bytes=-30"), 10, Partial { start: 0, end: 9 });
        check(Some("bytes=8-100000"), 10, Partial { start: 8, end: 9 });
        check(Some("bytes=10-"), 10, Unsatisfiable);
        check(Some("bytes=10-20"), 10, Unsatisfiable);
        check(Some("bytes=-0"), 10, Unsatisfiable);
        check(Some("bytes=0-0"), 0, Unsatisfiable);
        check(Some("bytes=5-3"), 10, Full);
        check(Some("bytes=0-1,4-5"), 10, Full);
        check(Some("items=0-1"), 10, Full);
        check(Some("bytes=a-b"), 10, Full);
        check(Some("bytes=99999999999999999999-"), 10, Unsatisfiable);
    }

    #[test]
    fn coding() {
        assert_eq!(percent_decode("refs%2Fpr%2F1", false).as_deref(), Some("refs/pr/1"));
        assert_eq!(percent_decode("a+b", true).as_deref(), Some("a b"));
        assert_eq!(percent_decode("a+b", false).as_deref(), Some("a+b"));
        assert_eq!(percent_decode("%zz", false), None);
        assert_eq!(percent_decode("%ff", false), None);
        assert_eq!(percent_decode("%2", false), None);
        assert_eq!(percent_encode("a b/c=é", true), "a%20b/c%3D%C3%A9");
        let q = Query(parse_query("expand%5B%5D=sha&expand=tags&full=True&x&bad=%zz"));
        assert_eq!(q.all("expand[]").collect::<Vec<_>>(), ["sha"]);
        assert_eq!(q.get("x"), Some(""));
        assert!(q.flag("full"));
        assert_eq!(q.get("bad"), None);
    }

    #[test]
    fn dates() {
        let t = DateTime::parse_from_rfc3339("2024-03-01T00:51:00Z").expect("date").with_timezone(&Utc);
        assert_eq!(hub_date(t), "2024-03-01T00:51:00.000Z");
    }
}
