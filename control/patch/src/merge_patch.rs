//! JSON merge patch (RFC 7386), `application/merge-patch+json`.

use serde_json::{Map, Value};

use crate::PatchError;
use crate::util::{check_depth, guard, remove_key};

/// Applies an RFC 7386 merge patch: objects merge recursively, `null` deletes a member, any
/// other value (arrays included) replaces the target's.
///
/// The patch must be a JSON object: RFC 7386 would let a non-object patch replace the whole
/// document, but an API object can only be patched into another object, and the API server
/// answers 400 for such patches (evanphx/json-patch returns `ErrBadJSONPatch` for `null` and
/// scalars; an array would fail to decode as an object).
pub fn merge_patch(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    check_depth(target, "object")?;
    check_depth(patch, "patch")?;
    if !patch.is_object() {
        return Err(PatchError::Invalid("invalid JSON merge patch: the patch must be a JSON object".into()));
    }
    merge(target.clone(), patch, 0)
}

fn merge(target: Value, patch: &Value, depth: usize) -> Result<Value, PatchError> {
    guard(depth)?;
    let Value::Object(p) = patch else {
        return Ok(patch.clone());
    };
    // A non-object target is replaced by an object built from the patch (RFC 7386 §2).
    let mut t = match target {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    for (k, v) in p {
        if v.is_null() {
            remove_key(&mut t, k);
            continue;
        }
        // Merge in place so that, with serde_json's `preserve_order`, keys keep their position.
        match t.get_mut(k) {
            Some(slot) => {
                let cur = slot.take();
                *slot = merge(cur, v, depth + 1)?;
            }
            None => {
                let new = merge(Value::Null, v, depth + 1)?;
                t.insert(k.clone(), new);
            }
        }
    }
    Ok(Value::Object(t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// RFC 7386 Appendix A, restricted to object patches (the others are rejected on purpose).
    #[test]
    fn rfc7386_appendix_a() {
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (json!({"a":"b","b":"c"}), json!({"a":null}), json!({"b":"c"})),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (json!({"a":{"b":"c"}}), json!({"a":{"b":"d","c":null}}), json!({"a":{"b":"d"}})),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (json!({}), json!({"a":{"bb":{"ccc":null}}}), json!({"a":{"bb":{}}})),
        ];
        for (target, patch, want) in cases {
            assert_eq!(merge_patch(&target, &patch).unwrap(), want, "{target} + {patch}");
        }
    }

    #[test]
    fn non_object_patches_are_rejected() {
        for patch in [json!(null), json!("x"), json!([1]), json!(3)] {
            let err = merge_patch(&json!({"a": 1}), &patch).unwrap_err();
            assert_eq!(err.status_code(), 400, "{patch}");
        }
    }

    #[test]
    fn labels_and_lists() {
        let pod = json!({"metadata":{"labels":{"app":"a","tier":"web"}},
                         "spec":{"containers":[{"name":"a","image":"x"},{"name":"b"}]}});
        let patch = json!({"metadata":{"labels":{"tier":null,"new":"1"}},
                           "spec":{"containers":[{"name":"a","image":"y"}]}});
        assert_eq!(
            merge_patch(&pod, &patch).unwrap(),
            json!({"metadata":{"labels":{"app":"a","new":"1"}},
                   "spec":{"containers":[{"name":"a","image":"y"}]}})
        );
    }

    #[test]
    fn too_deep_is_invalid() {
        let mut p = json!({});
        for _ in 0..150 {
            p = json!({ "a": p });
        }
        assert!(matches!(merge_patch(&json!({}), &p), Err(PatchError::Invalid(_))));
    }
}
