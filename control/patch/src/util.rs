//! Small JSON helpers shared by every patch flavour.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Number, Value};

use crate::PatchError;

/// Deepest nesting (objects + arrays) accepted in an object or a patch.
///
/// Real Kubernetes objects are far shallower (a CronJob's env var sits ~14 levels down;
/// CRD schemas rarely pass 40), and every algorithm in this crate recurses over the input.
/// Checking the bound once, iteratively, up front means nothing later can blow the stack
/// (test threads only have 2 MiB) whatever a client sends.
pub const MAX_DEPTH: usize = 100;

/// Internal recursion guard. The inputs are depth-checked first, so this only trips on a bug;
/// it keeps a logic error from turning into a stack overflow.
pub(crate) const MAX_RECURSION: usize = 8 * MAX_DEPTH;

/// Rejects values nested deeper than [`MAX_DEPTH`], without recursing.
pub(crate) fn check_depth(v: &Value, what: &str) -> Result<(), PatchError> {
    let too_deep = || Err(PatchError::Invalid(format!("{what} is nested deeper than {MAX_DEPTH} levels")));
    // Only containers go on the stack: scalars cannot be too deep.
    let is_container = |c: &&Value| c.is_array() || c.is_object();
    let mut stack: Vec<(&Value, usize)> = vec![(v, 1)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(a) => {
                if d > MAX_DEPTH {
                    return too_deep();
                }
                stack.extend(a.iter().filter(is_container).map(|c| (c, d + 1)));
            }
            Value::Object(m) => {
                if d > MAX_DEPTH {
                    return too_deep();
                }
                stack.extend(m.values().filter(is_container).map(|c| (c, d + 1)));
            }
            _ => {}
        }
    }
    Ok(())
}

pub(crate) fn guard(depth: usize) -> Result<(), PatchError> {
    if depth > MAX_RECURSION {
        Err(PatchError::Invalid(format!("patch is nested deeper than {MAX_DEPTH} levels")))
    } else {
        Ok(())
    }
}

/// Semantic JSON equality: `80` and `80.0` are the same number. Go decodes every JSON number
/// into a float64 before comparing merge keys, so Kubernetes treats them as equal; serde_json's
/// `PartialEq` would not.
pub(crate) fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => num_eq(x, y),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

fn num_eq(x: &Number, y: &Number) -> bool {
    if let (Some(a), Some(b)) = (x.as_i64(), y.as_i64()) {
        return a == b;
    }
    if let (Some(a), Some(b)) = (x.as_u64(), y.as_u64()) {
        return a == b;
    }
    match (x.as_f64(), y.as_f64()) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

pub(crate) fn opt_json_eq(a: Option<&Value>, b: Option<&Value>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => json_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// Compact JSON with object keys sorted and integral floats printed as integers.
///
/// Used for the `k:{...}` / `v:...` path elements of FieldsV1, which must be byte-identical for
/// the same logical key whatever map ordering serde_json was compiled with (`preserve_order`
/// may be switched on by another crate in the workspace).
pub(crate) fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                write_canonical(&m[k.as_str()], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, e) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(e, out);
            }
            out.push(']');
        }
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 => out.push_str(&(f as i64).to_string()),
            _ => out.push_str(&n.to_string()),
        },
        other => out.push_str(&other.to_string()),
    }
}

/// Removes object members whose value is `null`, recursively (list elements are kept, as Go's
/// `discardNullValuesFromPatch` does).
pub(crate) fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// Removes `key` keeping the order of the other members.
///
/// serde_json's `Map::remove` is a `swap_remove` when another crate of the workspace switches on
/// `preserve_order`, which would shuffle the keys of every object we touch; `shift_remove` only
/// exists with that feature. `retain` preserves order in both configurations.
pub(crate) fn remove_key(m: &mut Map<String, Value>, key: &str) -> Option<Value> {
    let v = m.get_mut(key)?.take();
    m.retain(|k, _| k != key);
    Some(v)
}

pub(crate) fn metadata_mut(obj: &mut Map<String, Value>) -> Option<&mut Map<String, Value>> {
    obj.get_mut("metadata").and_then(Value::as_object_mut)
}

/// `time.Now().UTC()` formatted like metav1.Time (RFC 3339, second precision).
pub(crate) fn now_rfc3339() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    format_rfc3339(secs)
}

pub(crate) fn format_rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil algorithm: avoids a chrono dependency for one timestamp.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", sod / 3600, sod % 3600 / 60, sod % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_compare_semantically() {
        assert!(json_eq(&json!(80), &json!(80.0)));
        assert!(json_eq(&json!({"a": [1, 2.0]}), &json!({"a": [1.0, 2]})));
        assert!(!json_eq(&json!(80), &json!("80")));
        assert!(!json_eq(&json!([1]), &json!([1, 1])));
    }

    #[test]
    fn canonical_json_sorts_keys_and_normalizes_floats() {
        let v = json!({"protocol": "TCP", "containerPort": 80.0, "x": [true, null, "a\"b"]});
        assert_eq!(canonical_json(&v), r#"{"containerPort":80,"protocol":"TCP","x":[true,null,"a\"b"]}"#);
        assert_eq!(canonical_json(&json!(1.5)), "1.5");
    }

    #[test]
    fn depth_check_is_iterative_and_bounded() {
        let mut v = json!(1);
        for _ in 0..MAX_DEPTH {
            v = json!([v]);
        }
        assert!(check_depth(&v, "x").is_ok());
        v = json!({ "a": v });
        assert!(matches!(check_depth(&v, "x"), Err(PatchError::Invalid(_))));
    }

    #[test]
    fn rfc3339_formatting() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_rfc3339(1_719_835_199), "2024-07-01T11:59:59Z");
        assert!(now_rfc3339().ends_with('Z'));
    }
}
