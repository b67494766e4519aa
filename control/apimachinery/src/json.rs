//! Lenient readers over `serde_json::Value`.
//!
//! Go decodes a stored object into typed structs, so a missing field, a `null`
//! and (for our purposes) a field of the wrong type all end up as the zero
//! value. These helpers give the same zero values, which keeps the printers and
//! selectors panic-free and Go-compatible without `unwrap` noise at every read.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value;

/// The string at `v`, or `""` (Go's zero string).
pub(crate) fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// The integer at `v`. Integral floats count, because JSON writers (JavaScript,
/// Python) sometimes emit `3.0` and Go's decoder accepts it into an int field.
pub(crate) fn int_of(v: &Value) -> Option<i64> {
    if let Some(i) = v.as_i64() {
        return Some(i);
    }
    if let Some(u) = v.as_u64() {
        return Some(i64::try_from(u).unwrap_or(i64::MAX));
    }
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e18 => Some(f as i64),
        _ => None,
    }
}

/// The integer at `v`, or 0.
pub(crate) fn int_or_zero(v: &Value) -> i64 {
    int_of(v).unwrap_or(0)
}

/// The boolean at `v`, or `false`.
pub(crate) fn bool_of(v: &Value) -> bool {
    v.as_bool().unwrap_or(false)
}

/// The array at `v`, or an empty slice.
pub(crate) fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// Number of entries of the object at `v` (Go `len(map)`), 0 when absent.
pub(crate) fn map_len(v: &Value) -> usize {
    v.as_object().map_or(0, |m| m.len())
}

/// Whether a Go pointer field decoded from `v` would be non-nil: the key is
/// present and not `null`.
pub(crate) fn present(v: &Value) -> bool {
    !v.is_null()
}

/// A `map[string]string` read from `v`; non-string values are skipped, as they
/// could never have been stored by a Kubernetes server.
pub(crate) fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string()))).collect())
        .unwrap_or_default()
}

/// A `metav1.Time` / `metav1.MicroTime`: `None` when absent, unparsable or
/// Go's zero time (`0001-01-01T00:00:00Z`), all of which Go treats as `IsZero()`.
pub(crate) fn time_of(v: &Value) -> Option<DateTime<Utc>> {
    let t = DateTime::parse_from_rfc3339(v.as_str()?).ok()?.with_timezone(&Utc);
    let go_zero = NaiveDate::from_ymd_opt(1, 1, 1).and_then(|d| d.and_hms_opt(0, 0, 0));
    (Some(t.naive_utc()) != go_zero).then_some(t)
}

/// Go's `%q` for a string: double-quoted with Go escapes. Used where Kubernetes
/// formats a value with `%q` in an error message.
pub(crate) fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn zero_values_for_missing_or_mistyped_fields() {
        let v = json!({"s": 1, "n": "x", "a": {}, "m": [1]});
        assert_eq!(str_of(&v["s"]), "");
        assert_eq!(int_of(&v["n"]), None);
        assert_eq!(int_of(&json!(3.0)), Some(3));
        assert!(arr(&v["a"]).is_empty());
        assert_eq!(map_len(&v["m"]), 0);
        assert!(!present(&v["missing"]));
        assert!(!present(&json!(null)));
    }

    #[test]
    fn go_zero_time_is_absent() {
        assert_eq!(time_of(&json!("0001-01-01T00:00:00Z")), None);
        assert_eq!(time_of(&json!("not a time")), None);
        assert!(time_of(&json!("2024-01-02T03:04:05Z")).is_some());
        assert!(time_of(&json!("2024-01-02T03:04:05.123456Z")).is_some());
    }

    #[test]
    fn go_quote_escapes_like_go() {
        assert_eq!(go_quote("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
        assert_eq!(go_quote("é"), "\"é\"");
    }
}
