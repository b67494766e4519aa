//! Field sets in the `FieldsV1` format of `metadata.managedFields`
//! (sigs.k8s.io/structured-merge-diff `fieldpath.Set`).
//!
//! A set is a trie whose edges are serialized path elements, exactly the keys FieldsV1 uses:
//! `f:<field>`, `k:<json object of the key fields>` (associative list element),
//! `v:<json value>` (set element), `i:<index>`. A node is a *member* when the path leading to it
//! is in the set; FieldsV1 writes a member without children as `{}` and a member with children
//! with an extra `".": {}` entry.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::util::{canonical_json, json_eq, remove_key};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldSet {
    pub member: bool,
    pub children: BTreeMap<String, FieldSet>,
}

pub(crate) type Path = Vec<String>;

pub(crate) fn field_pe(name: &str) -> String {
    format!("f:{name}")
}

pub(crate) fn key_pe(key: &str, value: &Value) -> String {
    let mut m = Map::new();
    m.insert(key.to_string(), value.clone());
    format!("k:{}", canonical_json(&Value::Object(m)))
}

pub(crate) fn value_pe(value: &Value) -> String {
    format!("v:{}", canonical_json(value))
}

impl FieldSet {
    pub fn insert(&mut self, path: &[String]) {
        let mut node = self;
        for pe in path {
            node = node.children.entry(pe.clone()).or_default();
        }
        node.member = true;
    }

    pub fn node(&self, path: &[String]) -> Option<&FieldSet> {
        let mut node = self;
        for pe in path {
            node = node.children.get(pe)?;
        }
        Some(node)
    }

    pub fn contains(&self, path: &[String]) -> bool {
        self.node(path).is_some_and(|n| n.member)
    }

    /// Whether `path` is a member without members below it (a leaf of the set).
    pub fn contains_leaf(&self, path: &[String]) -> bool {
        self.node(path).is_some_and(|n| n.member && n.children.is_empty())
    }

    pub fn is_empty(&self) -> bool {
        !self.member && self.children.is_empty()
    }

    /// Removes `path` from the set (its descendants stay), pruning nodes left empty.
    pub fn remove(&mut self, path: &[String]) {
        let Some((head, rest)) = path.split_first() else {
            self.member = false;
            return;
        };
        if let Some(child) = self.children.get_mut(head) {
            child.remove(rest);
            if child.is_empty() {
                self.children.remove(head);
            }
        }
    }

    pub fn union_with(&mut self, other: &FieldSet) {
        self.member |= other.member;
        for (k, o) in &other.children {
            self.children.entry(k.clone()).or_default().union_with(o);
        }
    }

    /// Members of `self` that are not members of `other`.
    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        let empty = FieldSet::default();
        let mut out = FieldSet { member: self.member && !other.member, children: BTreeMap::new() };
        for (k, child) in &self.children {
            let d = child.difference(other.children.get(k).unwrap_or(&empty));
            if !d.is_empty() {
                out.children.insert(k.clone(), d);
            }
        }
        out
    }

    /// Members of both sets.
    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet { member: self.member && other.member, children: BTreeMap::new() };
        for (k, child) in &self.children {
            if let Some(o) = other.children.get(k) {
                let i = child.intersection(o);
                if !i.is_empty() {
                    out.children.insert(k.clone(), i);
                }
            }
        }
        out
    }

    /// Every member path, parents before their children.
    pub fn members(&self) -> Vec<Path> {
        let mut out = Vec::new();
        let mut prefix = Vec::new();
        self.collect_members(&mut prefix, &mut out);
        out
    }

    fn collect_members(&self, prefix: &mut Path, out: &mut Vec<Path>) {
        for (k, child) in &self.children {
            prefix.push(k.clone());
            if child.member {
                out.push(prefix.clone());
            }
            child.collect_members(prefix, out);
            prefix.pop();
        }
    }

    pub fn to_fields_v1(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), Value::Object(Map::new()));
        }
        for (k, child) in &self.children {
            m.insert(k.clone(), child.to_fields_v1());
        }
        Value::Object(m)
    }

    /// Parses a FieldsV1 object; `None` when it is not one.
    pub fn from_fields_v1(v: &Value) -> Option<FieldSet> {
        let Value::Object(m) = v else { return None };
        let mut set = FieldSet::default();
        for (k, child) in m {
            if k == "." {
                set.member = true;
                continue;
            }
            parse_pe(k)?;
            let mut c = FieldSet::from_fields_v1(child)?;
            if child.as_object().is_some_and(Map::is_empty) {
                c.member = true;
            }
            if !c.is_empty() {
                set.children.insert(k.clone(), c);
            }
        }
        Some(set)
    }
}

/// A decoded path element.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PathElement {
    Field(String),
    Key(Map<String, Value>),
    Value(Value),
    Index(usize),
}

pub(crate) fn parse_pe(s: &str) -> Option<PathElement> {
    let (tag, rest) = (s.get(..2)?, s.get(2..)?);
    match tag {
        "f:" => Some(PathElement::Field(rest.to_string())),
        "k:" => match serde_json::from_str::<Value>(rest).ok()? {
            Value::Object(m) => Some(PathElement::Key(m)),
            _ => None,
        },
        "v:" => serde_json::from_str::<Value>(rest).ok().map(PathElement::Value),
        "i:" => rest.parse().ok().map(PathElement::Index),
        _ => None,
    }
}

fn matches(item: &Value, pe: &PathElement) -> bool {
    match pe {
        PathElement::Key(keys) => {
            let Value::Object(m) = item else { return false };
            keys.iter().all(|(k, v)| m.get(k).is_some_and(|x| json_eq(x, v)))
        }
        PathElement::Value(v) => json_eq(item, v),
        _ => false,
    }
}

fn position(list: &[Value], pe: &PathElement) -> Option<usize> {
    match pe {
        PathElement::Index(i) => (*i < list.len()).then_some(*i),
        PathElement::Field(_) => None,
        _ => list.iter().position(|e| matches(e, pe)),
    }
}

pub(crate) fn child<'a>(v: &'a Value, pe: &PathElement) -> Option<&'a Value> {
    match (v, pe) {
        (Value::Object(m), PathElement::Field(f)) => m.get(f),
        (Value::Array(a), pe) => a.get(position(a, pe)?),
        _ => None,
    }
}

pub(crate) fn child_mut<'a>(v: &'a mut Value, pe: &PathElement) -> Option<&'a mut Value> {
    match (v, pe) {
        (Value::Object(m), PathElement::Field(f)) => m.get_mut(f),
        (Value::Array(a), pe) => {
            let i = position(a, pe)?;
            a.get_mut(i)
        }
        _ => None,
    }
}

pub(crate) fn remove_child(v: &mut Value, pe: &PathElement) -> bool {
    match (v, pe) {
        (Value::Object(m), PathElement::Field(f)) => remove_key(m, f).is_some(),
        (Value::Array(a), pe) => match position(a, pe) {
            Some(i) => {
                a.remove(i);
                true
            }
            None => false,
        },
        _ => false,
    }
}

pub(crate) fn value_at<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = v;
    for pe in path {
        cur = child(cur, &parse_pe(pe)?)?;
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(parts: &[&str]) -> Path {
        parts.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn fields_v1_round_trip() {
        let v = json!({
            "f:metadata":{"f:labels":{"f:app":{}}},
            "f:spec":{"f:containers":{"k:{\"name\":\"c\"}":{".":{},"f:image":{},"f:name":{}}}}
        });
        let set = FieldSet::from_fields_v1(&v).unwrap();
        assert!(set.contains(&p(&["f:metadata", "f:labels", "f:app"])));
        assert!(!set.contains(&p(&["f:metadata", "f:labels"])));
        assert!(set.contains(&p(&["f:spec", "f:containers", "k:{\"name\":\"c\"}"])));
        assert_eq!(set.to_fields_v1(), v);
        assert_eq!(set.members().len(), 4);
        assert!(FieldSet::from_fields_v1(&json!({"bogus":{}})).is_none());
        assert!(FieldSet::from_fields_v1(&json!({"f:a":[]})).is_none());
    }

    #[test]
    fn set_algebra() {
        let mut a = FieldSet::default();
        a.insert(&p(&["f:a", "f:b"]));
        a.insert(&p(&["f:a", "f:c"]));
        let mut b = FieldSet::default();
        b.insert(&p(&["f:a", "f:c"]));
        let d = a.difference(&b);
        assert_eq!(d.members(), vec![p(&["f:a", "f:b"])]);
        assert_eq!(a.intersection(&b).members(), vec![p(&["f:a", "f:c"])]);
        a.remove(&p(&["f:a", "f:b"]));
        assert_eq!(a, b);
        b.union_with(&d);
        assert_eq!(b.members().len(), 2);
    }

    #[test]
    fn navigation() {
        let v = json!({"spec":{"containers":[{"name":"a","image":"x"},{"name":"b"}]},"fin":["p","q"]});
        assert_eq!(key_pe("name", &json!("b")), "k:{\"name\":\"b\"}");
        let path = p(&["f:spec", "f:containers", "k:{\"name\":\"a\"}", "f:image"]);
        assert_eq!(value_at(&v, &path), Some(&json!("x")));
        assert_eq!(value_at(&v, &p(&["f:fin", &value_pe(&json!("q"))])), Some(&json!("q")));
        assert_eq!(value_at(&v, &p(&["f:fin", "i:0"])), Some(&json!("p")));
        assert_eq!(value_at(&v, &p(&["f:fin", "i:9"])), None);
        assert_eq!(value_at(&v, &p(&["x:fin"])), None);
        let mut w = v.clone();
        assert!(remove_child(
            child_mut(&mut w, &PathElement::Field("fin".into())).unwrap(),
            &PathElement::Value(json!("p"))
        ));
        assert_eq!(w["fin"], json!(["q"]));
    }
}
