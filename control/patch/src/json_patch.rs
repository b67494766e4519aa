//! JSON patch (RFC 6902), `application/json-patch+json`, as the API server applies it
//! (gopkg.in/evanphx/json-patch.v4).
//!
//! Differences from a strict RFC 6902 reading, kept because they are what Kubernetes does:
//! * negative array indices count from the end (`/-1` is the last element; for `add`,
//!   `/-1` inserts before the position *after* the last, i.e. appends);
//! * operations on the whole document (path `""`) fail, except `test`;
//! * every failure while applying is a 422, only an undecodable patch is a 400.

use serde_json::Value;

use crate::PatchError;
use crate::util::{check_depth, json_eq, remove_key};

/// The API server refuses JSON patches with more operations than this (HTTP 413).
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// Applies an RFC 6902 JSON patch (an array of operations) to `target`.
pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    check_depth(target, "object")?;
    check_depth(patch, "patch")?;
    let Value::Array(ops) = patch else {
        return Err(PatchError::Invalid("invalid JSON patch: the patch must be a JSON array of operations".into()));
    };
    // Decoding comes before applying: a non-object operation makes the whole patch undecodable.
    if let Some(bad) = ops.iter().find(|op| !op.is_object()) {
        return Err(PatchError::Invalid(format!("invalid JSON patch: operation {bad} is not a JSON object")));
    }
    if ops.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(PatchError::TooLarge(format!(
            "The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {}",
            ops.len()
        )));
    }
    let mut doc = target.clone();
    for op in ops {
        apply_op(&mut doc, op)?;
    }
    Ok(doc)
}

fn unprocessable(msg: impl Into<String>) -> PatchError {
    PatchError::Unprocessable(msg.into())
}

fn apply_op(doc: &mut Value, op: &Value) -> Result<(), PatchError> {
    let kind = op.get("op").and_then(Value::as_str).unwrap_or("unknown");
    let path = || -> Result<&str, PatchError> {
        op.get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| unprocessable(format!("{kind} operation is missing a string \"path\"")))
    };
    let from = || -> Result<&str, PatchError> {
        op.get("from")
            .and_then(Value::as_str)
            .ok_or_else(|| unprocessable(format!("{kind} operation is missing a string \"from\"")))
    };
    let value = || -> Result<Value, PatchError> {
        op.get("value").cloned().ok_or_else(|| unprocessable(format!("{kind} operation is missing \"value\"")))
    };
    match kind {
        "add" => {
            let path = path()?;
            add(doc, path, value()?, "add")
        }
        "remove" => remove(doc, path()?, "remove").map(drop),
        "replace" => replace(doc, path()?, value()?),
        "move" => {
            let (from, path) = (from()?, path()?);
            let v = remove(doc, from, "move")?;
            add(doc, path, v, "move")
        }
        "copy" => {
            let (from, path) = (from()?, path()?);
            let v = get(doc, from).cloned().ok_or_else(|| {
                unprocessable(format!("copy operation does not apply: doc is missing from path: {from}"))
            })?;
            add(doc, path, v, "copy")
        }
        "test" => {
            let path = path()?;
            let want = value()?;
            match get(doc, path) {
                Some(have) if json_eq(have, &want) => Ok(()),
                // json-patch v4 reads a missing member as null, so testing it against null passes.
                None if want.is_null() && parent_exists(doc, path) => Ok(()),
                _ => Err(unprocessable(format!("testing value {path} failed: test failed"))),
            }
        }
        other => Err(unprocessable(format!("Unexpected kind: {other}"))),
    }
}

/// Splits an RFC 6901 pointer into unescaped tokens. `""` is the whole document.
fn tokens(path: &str) -> Result<Vec<String>, PatchError> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(unprocessable(format!("invalid JSON pointer {path:?}: must start with \"/\"")));
    };
    // "~1" before "~0", so that "~01" decodes to "~1" and not "/".
    Ok(rest.split('/').map(|t| t.replace("~1", "/").replace("~0", "~")).collect())
}

/// Resolves an array index the way json-patch v4 does: Go's `strconv.Atoi` (so `+1` and `01`
/// parse) and negative indices counting from the end. `len` is the size of the addressable
/// range (the array length, or length + 1 for `add`).
fn index(token: &str, len: usize) -> Option<usize> {
    let i: i64 = token.parse().ok()?;
    let len = i64::try_from(len).ok()?;
    let i = if i < 0 { i + len } else { i };
    if (0..len).contains(&i) { usize::try_from(i).ok() } else { None }
}

fn get<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = doc;
    for t in tokens(path).ok()? {
        cur = match cur {
            Value::Object(m) => m.get(&t)?,
            Value::Array(a) => a.get(index(&t, a.len())?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Whether the member named by `path` could exist: its parent is an object.
fn parent_exists(doc: &Value, path: &str) -> bool {
    let Ok(mut toks) = tokens(path) else { return false };
    if toks.pop().is_none() {
        return false;
    }
    let parent: String = toks.iter().map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1"))).collect();
    get(doc, &parent).is_some_and(Value::is_object)
}

/// The container holding the last token of `path`, plus that token.
fn parent_mut<'a>(doc: &'a mut Value, path: &str, op: &str) -> Result<(&'a mut Value, String), PatchError> {
    let mut toks = tokens(path)?;
    let missing = || unprocessable(format!("{op} operation does not apply: doc is missing path: \"{path}\""));
    let Some(last) = toks.pop() else {
        return Err(missing());
    };
    let mut cur = doc;
    for t in toks {
        cur = match cur {
            Value::Object(m) => m.get_mut(&t).ok_or_else(missing)?,
            Value::Array(a) => {
                let i = index(&t, a.len()).ok_or_else(missing)?;
                a.get_mut(i).ok_or_else(missing)?
            }
            _ => return Err(missing()),
        };
    }
    if !(cur.is_object() || cur.is_array()) {
        return Err(missing());
    }
    Ok((cur, last))
}

fn add(doc: &mut Value, path: &str, v: Value, op: &str) -> Result<(), PatchError> {
    let (parent, key) = parent_mut(doc, path, op)?;
    match parent {
        Value::Object(m) => {
            m.insert(key, v);
            Ok(())
        }
        Value::Array(a) => {
            if key == "-" {
                a.push(v);
                return Ok(());
            }
            let i = index(&key, a.len() + 1)
                .ok_or_else(|| unprocessable(format!("Unable to access invalid index: {key}")))?;
            a.insert(i, v);
            Ok(())
        }
        _ => Err(unprocessable(format!("{op} operation does not apply: doc is missing path: \"{path}\""))),
    }
}

fn remove(doc: &mut Value, path: &str, op: &str) -> Result<Value, PatchError> {
    let (parent, key) = parent_mut(doc, path, op)?;
    let missing = || unprocessable(format!("{op} operation does not apply: doc is missing path: \"{path}\""));
    match parent {
        Value::Object(m) => remove_key(m, &key).ok_or_else(missing),
        Value::Array(a) => {
            let i = index(&key, a.len()).ok_or_else(missing)?;
            Ok(a.remove(i))
        }
        _ => Err(missing()),
    }
}

fn replace(doc: &mut Value, path: &str, v: Value) -> Result<(), PatchError> {
    let (parent, key) = parent_mut(doc, path, "replace")?;
    let missing = || unprocessable(format!("replace operation does not apply: doc is missing key: {path}"));
    let slot = match parent {
        Value::Object(m) => m.get_mut(&key).ok_or_else(missing)?,
        Value::Array(a) => {
            let i = index(&key, a.len()).ok_or_else(missing)?;
            &mut a[i]
        }
        _ => return Err(missing()),
    };
    *slot = v;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(doc: Value, patch: Value) -> Value {
        json_patch(&doc, &patch).unwrap()
    }

    fn err(doc: Value, patch: Value) -> PatchError {
        json_patch(&doc, &patch).unwrap_err()
    }

    /// RFC 6902 Appendix A.
    #[test]
    fn rfc6902_appendix_a() {
        assert_eq!(
            ok(json!({"foo":"bar"}), json!([{"op":"add","path":"/baz","value":"qux"}])),
            json!({"baz":"qux","foo":"bar"})
        );
        assert_eq!(
            ok(json!({"foo":["bar","baz"]}), json!([{"op":"add","path":"/foo/1","value":"qux"}])),
            json!({"foo":["bar","qux","baz"]})
        );
        assert_eq!(ok(json!({"baz":"qux","foo":"bar"}), json!([{"op":"remove","path":"/baz"}])), json!({"foo":"bar"}));
        assert_eq!(
            ok(json!({"foo":["bar","qux","baz"]}), json!([{"op":"remove","path":"/foo/1"}])),
            json!({"foo":["bar","baz"]})
        );
        assert_eq!(
            ok(json!({"baz":"qux","foo":"bar"}), json!([{"op":"replace","path":"/baz","value":"boo"}])),
            json!({"baz":"boo","foo":"bar"})
        );
        assert_eq!(
            ok(
                json!({"foo":{"bar":"baz","waldo":"fred"},"qux":{"corge":"grault"}}),
                json!([{"op":"move","from":"/foo/waldo","path":"/qux/thud"}])
            ),
            json!({"foo":{"bar":"baz"},"qux":{"corge":"grault","thud":"fred"}})
        );
        assert_eq!(
            ok(json!({"foo":["all","grass","cows","eat"]}), json!([{"op":"move","from":"/foo/1","path":"/foo/3"}])),
            json!({"foo":["all","cows","eat","grass"]})
        );
        assert_eq!(
            ok(
                json!({"baz":"qux","foo":["a",2,"c"]}),
                json!([{"op":"test","path":"/baz","value":"qux"},{"op":"test","path":"/foo/1","value":2}])
            ),
            json!({"baz":"qux","foo":["a",2,"c"]})
        );
        let e = err(json!({"baz":"qux"}), json!([{"op":"test","path":"/baz","value":"bar"}]));
        assert_eq!(e.status_code(), 422);
        assert_eq!(
            ok(json!({"foo":"bar"}), json!([{"op":"add","path":"/child","value":{"grandchild":{}}}])),
            json!({"foo":"bar","child":{"grandchild":{}}})
        );
        // A.9 ignores unrecognized members.
        assert_eq!(
            ok(json!({"foo":"bar"}), json!([{"op":"add","path":"/baz","value":"qux","xyz":123}])),
            json!({"foo":"bar","baz":"qux"})
        );
        // A.12 adding to a nonexistent target.
        assert_eq!(err(json!({"foo":"bar"}), json!([{"op":"add","path":"/baz/bat","value":"qux"}])).status_code(), 422);
        // A.14 escape ordering.
        assert_eq!(ok(json!({"/":9,"~1":10}), json!([{"op":"test","path":"/~01","value":10}])), json!({"/":9,"~1":10}));
        // A.15 string vs number.
        assert!(json_patch(&json!({"/":9,"~1":10}), &json!([{"op":"test","path":"/~01","value":"10"}])).is_err());
        // A.16 adding an array value.
        assert_eq!(
            ok(json!({"foo":["bar"]}), json!([{"op":"add","path":"/foo/-","value":["abc","def"]}])),
            json!({"foo":["bar",["abc","def"]]})
        );
    }

    #[test]
    fn pointer_escaping_and_copy() {
        let doc = json!({"metadata":{"annotations":{"example.com/a~b":"1"}}});
        assert_eq!(
            ok(doc.clone(), json!([{"op":"replace","path":"/metadata/annotations/example.com~1a~0b","value":"2"}])),
            json!({"metadata":{"annotations":{"example.com/a~b":"2"}}})
        );
        assert_eq!(
            ok(doc, json!([{"op":"copy","from":"/metadata/annotations","path":"/metadata/labels"}])),
            json!({"metadata":{"annotations":{"example.com/a~b":"1"},"labels":{"example.com/a~b":"1"}}})
        );
    }

    #[test]
    fn indices_like_json_patch_v4() {
        let doc = json!({"a":[1,2,3]});
        assert_eq!(ok(doc.clone(), json!([{"op":"remove","path":"/a/-1"}])), json!({"a":[1,2]}));
        assert_eq!(ok(doc.clone(), json!([{"op":"replace","path":"/a/-3","value":0}])), json!({"a":[0,2,3]}));
        assert_eq!(ok(doc.clone(), json!([{"op":"add","path":"/a/3","value":4}])), json!({"a":[1,2,3,4]}));
        assert_eq!(ok(doc.clone(), json!([{"op":"add","path":"/a/-1","value":4}])), json!({"a":[1,2,3,4]}));
        assert_eq!(ok(doc.clone(), json!([{"op":"add","path":"/a/-","value":4}])), json!({"a":[1,2,3,4]}));
        for bad in [
            json!([{"op":"add","path":"/a/5","value":4}]),
            json!([{"op":"remove","path":"/a/3"}]),
            json!([{"op":"remove","path":"/a/-4"}]),
            json!([{"op":"remove","path":"/a/x"}]),
            json!([{"op":"replace","path":"/a/-","value":1}]),
            json!([{"op":"remove","path":"/b"}]),
            json!([{"op":"replace","path":"/b","value":1}]),
            json!([{"op":"add","path":"/a/0/x","value":1}]),
            json!([{"op":"move","from":"/a","path":"/a/0"}]),
            json!([{"op":"copy","from":"/nope","path":"/b"}]),
            json!([{"op":"remove","path":""}]),
            json!([{"op":"add","path":"","value":{}}]),
            json!([{"op":"add","path":"a","value":1}]),
            json!([{"op":"add","path":"/b"}]),
            json!([{"op":"add","value":1}]),
            json!([{"op":"move","path":"/b"}]),
            json!([{"op":"frobnicate","path":"/a"}]),
            json!([{"path":"/a"}]),
        ] {
            assert_eq!(err(doc.clone(), bad.clone()).status_code(), 422, "{bad}");
        }
        // Like json-patch v4, a missing member tests equal to null (but a missing parent does not).
        assert_eq!(ok(doc.clone(), json!([{"op":"test","path":"/nope","value":null}])), doc);
        assert_eq!(err(doc.clone(), json!([{"op":"test","path":"/no/pe","value":null}])).status_code(), 422);
        assert_eq!(err(doc.clone(), json!([{"op":"test","path":"/nope","value":1}])).status_code(), 422);
        // test on the whole document works.
        assert_eq!(ok(doc.clone(), json!([{"op":"test","path":"","value":{"a":[1,2,3.0]}}])), doc);
    }

    #[test]
    fn failures_leave_no_partial_result_and_shapes_are_checked() {
        for bad in [json!({"op":"add"}), json!("x"), json!(null), json!([1]), json!([[]])] {
            assert_eq!(err(json!({}), bad.clone()).status_code(), 400, "{bad}");
        }
        let many = Value::Array(vec![json!({"op":"test","path":"/a","value":1}); MAX_JSON_PATCH_OPERATIONS + 1]);
        assert_eq!(err(json!({"a":1}), many).status_code(), 413);
        assert_eq!(ok(json!({"a":1}), json!([])), json!({"a":1}));
    }

    #[test]
    fn scalar_documents() {
        assert_eq!(err(json!("str"), json!([{"op":"add","path":"/a","value":1}])).status_code(), 422);
        assert_eq!(err(json!({"a":"s"}), json!([{"op":"add","path":"/a/b","value":1}])).status_code(), 422);
    }
}
