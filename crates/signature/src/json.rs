//! A strict JSON reader for untrusted header and index text.
//!
//! `serde_json`'s own maps silently keep the last of two equal keys, and its recursion limit (128) is far above
//! anything a safetensors header needs. This module parses into a small tree of its own ([`Json`]) that keeps
//! every key of every object in file order, so callers can reject duplicates, and it bounds nesting with a
//! cheap byte scan *before* serde recurses. Numbers keep serde_json's three shapes (u64, negative i64, f64) so a
//! caller can insist on unsigned integers without any float round trip.

use std::collections::HashSet;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

/// A parsed JSON value whose objects keep duplicate keys, in file order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

/// A JSON number as serde_json reports it: non-negative integers as `U64`, other integers as `I64`, the rest
/// (fractions, exponents, integers beyond `u64`) as `F64`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Number {
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Json {
    /// The value as an unsigned integer, if it is written as one.
    pub(crate) fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Number(Number::U64(n)) => Some(*n),
            _ => None,
        }
    }

    /// A short name of the value's JSON type, for error messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "boolean",
            Json::Number(_) => "number",
            Json::String(_) => "string",
            Json::Array(_) => "array",
            Json::Object(_) => "object",
        }
    }
}

/// Why a text is not acceptable JSON for us.
#[derive(Debug)]
pub(crate) enum JsonError {
    /// Arrays and objects nest deeper than the caller's limit.
    TooDeep,
    /// serde_json rejected the text (syntax, number out of range, trailing characters…).
    Syntax(serde_json::Error),
    /// An object holds the same key twice (at any level); carries the key.
    DuplicateKey(String),
}

/// True when `[`/`{` nesting outside string literals goes beyond `limit` anywhere in `text`.
///
/// This is a lexical scan, not a parser: it only has to be right for valid JSON (for invalid JSON, serde_json
/// rejects the text anyway), and it must never recurse, so a "JSON bomb" of a million `[` costs one pass.
pub(crate) fn nesting_exceeds(text: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in text {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Parses `text` strictly: nesting at most `max_depth`, valid JSON with only whitespace around the value, and
/// no object with a repeated key.
pub(crate) fn parse(text: &str, max_depth: usize) -> Result<Json, JsonError> {
    if nesting_exceeds(text.as_bytes(), max_depth) {
        return Err(JsonError::TooDeep);
    }
    let value: Json = serde_json::from_str(text).map_err(JsonError::Syntax)?;
    if let Some(key) = first_duplicate_key(&value) {
        return Err(JsonError::DuplicateKey(key.to_owned()));
    }
    Ok(value)
}

/// The first repeated key of any object in `value`, depth first. Iterative, although the depth is already
/// bounded, so that this never depends on the caller having checked.
fn first_duplicate_key(value: &Json) -> Option<&str> {
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Json::Object(entries) => {
                let mut seen = HashSet::with_capacity(entries.len());
                for (key, child) in entries {
                    if !seen.insert(key.as_str()) {
                        return Some(key);
                    }
                    stack.push(child);
                }
            }
            Json::Array(items) => stack.extend(items.iter()),
            _ => {}
        }
    }
    None
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Json, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Number(Number::U64(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Json, E> {
        // serde_json only calls this for negative literals, which is what callers rely on.
        Ok(Json::Number(Number::I64(v)))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json, E> {
        Ok(Json::Number(Number::F64(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Json>()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value::<Json>()?;
            entries.push((key, value));
        }
        Ok(Json::Object(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_scan_ignores_brackets_inside_strings() {
        assert!(!nesting_exceeds(br#"{"a":"[[[[[[[[[[","b":"\"[[[["}"#, 2));
        assert!(nesting_exceeds(b"[[[", 2));
        assert!(!nesting_exceeds(b"[[]]", 2));
        assert!(nesting_exceeds(br#"{"a":{"b":{"c":1}}}"#, 2));
    }

    #[test]
    fn duplicates_are_found_at_any_depth() {
        let check = |text: &str, expected: Option<&str>| {
            let got = match parse(text, 8) {
                Err(JsonError::DuplicateKey(k)) => Some(k),
                Ok(_) => None,
                Err(other) => panic!("unexpected error {other:?} for {text}"),
            };
            assert_eq!(got.as_deref(), expected, "{text}");
        };
        check(r#"{"a":1,"b":2}"#, None);
        check(r#"{"a":1,"a":2}"#, Some("a"));
        check(r#"{"x":{"k":1,"k":1}}"#, Some("k"));
        check(r#"[{"q":1},{"q":2}]"#, None);
        check(r#"[{"q":1,"q":2}]"#, Some("q"));
    }

    #[test]
    fn numbers_keep_their_shape() {
        let v = parse(r#"[1, -1, 1.0, 18446744073709551616, -0]"#, 4).expect("valid json");
        assert_eq!(
            v,
            Json::Array(vec![
                Json::Number(Number::U64(1)),
                Json::Number(Number::I64(-1)),
                Json::Number(Number::F64(1.0)),
                Json::Number(Number::F64(18446744073709551616.0)),
                // serde_json reads `-0` as a float, which is what makes it fail a u64 check.
                Json::Number(Number::F64(-0.0)),
            ])
        );
    }

    #[test]
    fn syntax_errors_and_trailing_text_are_rejected() {
        for text in ["{", "{}x", "{\"a\":}", "", "{'a':1}", "{\"a\":1,}"] {
            assert!(matches!(parse(text, 8), Err(JsonError::Syntax(_))), "{text:?}");
        }
        // Trailing spaces are the padding safetensors writers use; they are whitespace, hence fine.
        assert!(parse("{}    ", 8).is_ok());
    }
}
