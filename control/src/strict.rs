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
    walk(input, typed, String::new(), &mut out);
    out
}

fn walk(input: &Value, typed: &Value, path: String, out: &mut Vec<String>) {
    match (input, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match b.get(k) {
                    Some(tv) => walk(v, tv, p, out),
                    // A null for an optional field is the same as leaving it out.
                    None if v.is_null() => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (v, tv)) in a.iter().zip(b.iter()).enumerate() {
                walk(v, tv, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Duplicate keys in a JSON document (the last one would silently win otherwise).
pub fn duplicate_fields(body: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(body);
    let _ = Dup { path: String::new(), out: &mut out }.deserialize(&mut de);
    out
}

struct Dup<'a> {
    path: String,
    out: &'a mut Vec<String>,
}

impl<'de> DeserializeSeed<'de> for Dup<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Dup<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        loop {
            let p = format!("{}[{i}]", self.path);
            if seq.next_element_seed(Dup { path: p, out: &mut *self.out })?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(k) = map.next_key::<String>()? {
            let p = if self.path.is_empty() { k.clone() } else { format!("{}.{k}", self.path) };
            if !seen.insert(k) {
                self.out.push(p.clone());
            }
            map.next_value_seed(Dup { path: p, out: &mut *self.out })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reports_misindented_fields_with_their_paths() {
        let input = json!({"spec": {"template": {"spec": {"containers": [{"name": "a"}], "image": "x", "env": []}}}});
        let typed = json!({"spec": {"template": {"spec": {"containers": [{"name": "a"}]}}}});
        let mut got = unknown_fields(&input, &typed);
        got.sort();
        assert_eq!(got, vec!["spec.template.spec.env", "spec.template.spec.image"]);
    }

    #[test]
    fn finds_duplicates_at_depth() {
        let d = duplicate_fields(br#"{"a":1,"b":{"c":[{"x":1,"x":2}]},"a":3}"#);
        assert_eq!(d, vec!["b.c[0].x", "a"]);
        assert!(duplicate_fields(br#"{"a":{"a":1}}"#).is_empty());
    }
}
