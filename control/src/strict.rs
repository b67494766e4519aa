//! Server-side field validation (`fieldValidation=Strict|Warn|Ignore`): unknown and duplicate
//! fields, reported with their paths as Kubernetes does
//! (`strict decoding error: unknown field "spec.template.spec.image"`).

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::fmt;

/// Fields of `input` that did not survive a typed round trip (`typed`), with Kubernetes paths.
/// Maps with free-form keys (labels, data...) survive whole, so only schema fields are reported.
pub fn unknown_fields(input: &Value, typed: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(input, typed, None, &mut out);
    out
}

/// One step of a path, linked to its parent on the stack: paths are only rendered (allocated)
/// for the fields that get reported, not for every field walked.
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

struct PathNode<'a> {
    parent: Option<&'a PathNode<'a>>,
    seg: Seg<'a>,
}

/// Renders `a.b[0].c`.
fn render(node: Option<&PathNode<'_>>) -> String {
    let mut segs = Vec::new();
    let mut n = node;
    while let Some(p) = n {
        segs.push(&p.seg);
        n = p.parent;
    }
    let mut out = String::new();
    for seg in segs.into_iter().rev() {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => {
                use std::fmt::Write;
                let _ = write!(out, "[{i}]");
            }
        }
    }
    out
}

fn walk(input: &Value, typed: &Value, path: Option<&PathNode<'_>>, out: &mut Vec<String>) {
    match (input, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = PathNode { parent: path, seg: Seg::Key(k) };
                match b.get(k) {
                    Some(tv) => walk(v, tv, Some(&p), out),
                    // A null for an optional field is the same as leaving it out.
                    None if v.is_null() => {}
                    None => out.push(render(Some(&p))),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (v, tv)) in a.iter().zip(b.iter()).enumerate() {
                walk(v, tv, Some(&PathNode { parent: path, seg: Seg::Index(i) }), out);
            }
        }
        _ => {}
    }
}

/// Parses a JSON document and reports its duplicate keys in the same pass (a plain parse lets
/// the last duplicate win silently).
pub fn parse_checked(body: &[u8]) -> Result<(Value, Vec<String>), serde_json::Error> {
    let mut dups = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(body);
    let v = Checked { path: None, dups: &mut dups }.deserialize(&mut de)?;
    de.end()?;
    Ok((v, dups))
}

struct Checked<'p, 'd> {
    path: Option<&'p PathNode<'p>>,
    dups: &'d mut Vec<String>,
}

impl<'de> DeserializeSeed<'de> for Checked<'_, '_> {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Checked<'_, '_> {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map(Value::Number).unwrap_or(Value::Null))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        loop {
            let node = PathNode { parent: self.path, seg: Seg::Index(out.len()) };
            match seq.next_element_seed(Checked { path: Some(&node), dups: &mut *self.dups })? {
                Some(v) => out.push(v),
                None => return Ok(Value::Array(out)),
            }
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(k) = map.next_key::<String>()? {
            let v = {
                let node = PathNode { parent: self.path, seg: Seg::Key(&k) };
                map.next_value_seed(Checked { path: Some(&node), dups: &mut *self.dups })?
            };
            if out.contains_key(&k) {
                self.dups.push(render(Some(&PathNode { parent: self.path, seg: Seg::Key(&k) })));
            }
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn duplicate_fields(body: &[u8]) -> Vec<String> {
        parse_checked(body).map(|(_, d)| d).unwrap_or_default()
    }

    #[test]
    fn reports_misindented_fields_with_their_paths() {
        let input = json!({"spec": {"template": {"spec": {"containers": [{"name": "a"}], "image": "x", "env": []}}}});
        let typed = json!({"spec": {"template": {"spec": {"containers": [{"name": "a"}]}}}});
        let mut got = unknown_fields(&input, &typed);
        got.sort();
        assert_eq!(got, vec!["spec.template.spec.env", "spec.template.spec.image"]);
    }

    #[test]
    fn paths_are_rendered_only_for_what_is_reported() {
        // Indexes at the root, empty keys, keys after indexes: rendered as before (a.b[0].c).
        let d = duplicate_fields(br#"[{"a":1,"a":2},{"b":{"":{"c":1,"c":2}}}]"#);
        assert_eq!(d, vec!["[0].a", "[1].b..c"]);
        let input = json!({"spec": {"x": [{"y": 1}, {"z": 2, "w": null}]}, "k": 1});
        let typed = json!({"spec": {"x": [{}, {}]}});
        let mut got = unknown_fields(&input, &typed);
        got.sort();
        assert_eq!(got, vec!["k", "spec.x[0].y", "spec.x[1].z"]);
    }

    #[test]
    fn finds_duplicates_at_depth() {
        let d = duplicate_fields(br#"{"a":1,"b":{"c":[{"x":1,"x":2}]},"a":3}"#);
        assert_eq!(d, vec!["b.c[0].x", "a"]);
        let (v, _) = parse_checked(br#"{"a":1,"a":3,"n":-2.5}"#).unwrap();
        assert_eq!(v, serde_json::json!({"a": 3, "n": -2.5}), "the last duplicate wins, as in Go");
        assert!(duplicate_fields(br#"{"a":{"a":1}}"#).is_empty());
    }
}
