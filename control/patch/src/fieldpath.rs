//! Field sets in the `FieldsV1` format of `metadata.managedFields`
//! (sigs.k8s.io/structured-merge-diff `fieldpath.Set`).
//!
//! A set is a trie whose edges are serialized path elements, exactly the keys FieldsV1 uses:
//! `f:<field>`, `k:<json object of the key fields>` (associative list element),
//! `v:<json value>` (set element), `i:<index>`. A node is a *member* when the path leading to it
//! is in the set; FieldsV1 writes a member without children as `{}` and a member with children
//! with an extra `".": {}` entry.

use std::cmp::Ordering;
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
            node = node.child_mut(pe);
        }
        node.member = true;
    }

    /// The child at `pe`, created empty if absent (the key is copied only then).
    pub fn child_mut(&mut self, pe: &str) -> &mut FieldSet {
        if !self.children.contains_key(pe) {
            self.children.insert(pe.to_string(), FieldSet::default());
        }
        self.children.get_mut(pe).expect("just inserted")
    }

    /// The child at `pe` (an owned key), created empty if absent.
    pub fn child_owned(&mut self, pe: String) -> &mut FieldSet {
        self.children.entry(pe).or_default()
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
    pub fn remove<S: AsRef<str>>(&mut self, path: &[S]) {
        let Some((head, rest)) = path.split_first() else {
            self.member = false;
            return;
        };
        let head = head.as_ref();
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

    /// Every member path in the order of structured-merge-diff's `Set.Iterate`: at each level
    /// the members first, then the descendants of each child, both sorted by [`pe_cmp`]. This is
    /// the order in which Kubernetes lists apply conflicts.
    pub fn members_smd_order(&self) -> Vec<Path> {
        let mut out = Vec::new();
        let mut prefix = Vec::new();
        self.collect_smd_order(&mut prefix, &mut out);
        out
    }

    fn collect_smd_order(&self, prefix: &mut Path, out: &mut Vec<Path>) {
        let mut keys: Vec<&String> = self.children.keys().collect();
        keys.sort_by(|a, b| pe_cmp(a, b));
        for k in &keys {
            if self.children[*k].member {
                prefix.push((*k).clone());
                out.push(prefix.clone());
                prefix.pop();
            }
        }
        for k in &keys {
            let child = &self.children[*k];
            if !child.children.is_empty() {
                prefix.push((*k).clone());
                child.collect_smd_order(prefix, out);
                prefix.pop();
            }
        }
    }

    /// The set in the FieldsV1 format (consumes it: its keys move instead of being copied).
    pub fn into_fields_v1(self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), Value::Object(Map::new()));
        }
        for (k, child) in self.children {
            m.insert(k, child.into_fields_v1());
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

/// Orders serialized path elements as structured-merge-diff's `PathElement.Compare` does:
/// fields before keys before values before indices; fields by name, keys field by field,
/// values by [`value_cmp`], indices numerically. Unparseable elements sort last, by text.
pub(crate) fn pe_cmp(a: &str, b: &str) -> Ordering {
    fn rank(pe: &Option<PathElement>) -> u8 {
        match pe {
            Some(PathElement::Field(_)) => 0,
            Some(PathElement::Key(_)) => 1,
            Some(PathElement::Value(_)) => 2,
            Some(PathElement::Index(_)) => 3,
            None => 4,
        }
    }
    let (pa, pb) = (parse_pe(a), parse_pe(b));
    let by_rank = rank(&pa).cmp(&rank(&pb));
    if by_rank != Ordering::Equal {
        return by_rank;
    }
    match (pa, pb) {
        (Some(PathElement::Field(x)), Some(PathElement::Field(y))) => x.cmp(&y),
        (Some(PathElement::Key(x)), Some(PathElement::Key(y))) => {
            let (x, y) = (sorted_fields(&x), sorted_fields(&y));
            for ((xn, xv), (yn, yv)) in x.iter().zip(&y) {
                let c = xn.cmp(yn).then_with(|| value_cmp(xv, yv));
                if c != Ordering::Equal {
                    return c;
                }
            }
            x.len().cmp(&y.len())
        }
        (Some(PathElement::Value(x)), Some(PathElement::Value(y))) => value_cmp(&x, &y),
        (Some(PathElement::Index(x)), Some(PathElement::Index(y))) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

fn sorted_fields(m: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut v: Vec<_> = m.iter().collect();
    v.sort_by(|a, b| a.0.cmp(b.0));
    v
}

/// structured-merge-diff's `value.Compare`: numbers (compared numerically) < strings < bools
/// < lists < maps < null.
pub(crate) fn value_cmp(a: &Value, b: &Value) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Number(_) => 0,
            Value::String(_) => 1,
            Value::Bool(_) => 2,
            Value::Array(_) => 3,
            Value::Object(_) => 4,
            Value::Null => 5,
        }
    }
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x.cmp(&y),
            _ => {
                let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
                x.partial_cmp(&y).unwrap_or(Ordering::Equal)
            }
        },
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Array(x), Value::Array(y)) => {
            for (x, y) in x.iter().zip(y) {
                let c = value_cmp(x, y);
                if c != Ordering::Equal {
                    return c;
                }
            }
            x.len().cmp(&y.len())
        }
        (Value::Object(_), Value::Object(_)) => canonical_json(a).cmp(&canonical_json(b)),
        _ => rank(a).cmp(&rank(b)),
    }
}

/// A path as structured-merge-diff's `Path.String` prints it (`.spec.containers[name="c"].image`,
/// `.metadata.finalizers[="x"]`, `.spec.args[0]`): the form of conflict messages.
pub(crate) fn path_string(path: &[String]) -> String {
    let mut out = String::new();
    for pe in path {
        match parse_pe(pe) {
            Some(PathElement::Field(f)) => {
                out.push('.');
                out.push_str(&f);
            }
            Some(PathElement::Key(m)) => {
                let parts: Vec<String> =
                    sorted_fields(&m).into_iter().map(|(k, v)| format!("{k}={}", go_value_string(v))).collect();
                out.push('[');
                out.push_str(&parts.join(","));
                out.push(']');
            }
            Some(PathElement::Value(v)) => {
                out.push_str("[=");
                out.push_str(&go_value_string(&v));
                out.push(']');
            }
            Some(PathElement::Index(i)) => out.push_str(&format!("[{i}]")),
            None => out.push_str("{{invalid path element}}"),
        }
    }
    out
}

/// structured-merge-diff's `value.ToString`: strings quoted as Go's `%q`, numbers as Go's `%v`.
fn go_value_string(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::String(s) => go_quote(s),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i.to_string(),
            (None, Some(u)) => u.to_string(),
            _ => go_float(n.as_f64().unwrap_or(0.0)),
        },
        Value::Array(a) => format!("[{}]", a.iter().map(go_value_string).collect::<Vec<_>>().join(",")),
        Value::Object(m) => {
            let parts: Vec<String> =
                sorted_fields(m).into_iter().map(|(k, v)| format!("{k}={}", go_value_string(v))).collect();
            format!("{{{}}}", parts.join(","))
        }
    }
}

/// Go's `%q` (`strconv.Quote`) for the characters that occur in practice.
pub(crate) fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go's `%v` for a float64: the shortest representation, in exponent form (`1e+06`) when the
/// decimal exponent is below -4 or at least 6.
fn go_float(f: f64) -> String {
    if !f.is_finite() {
        return if f.is_nan() {
            "NaN".into()
        } else if f > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if f != 0.0 && !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    } else {
        format!("{f}")
    }
}

fn matches(item: &Value, pe: &PathElement) -> bool {
    match pe {
        PathElement::Key(keys) => {
            let Value::Object(m) = item else { return false };
            // A port's protocol key defaults to TCP (see `apply::element_key`).
            keys.iter().all(|(k, v)| match m.get(k) {
                Some(x) => json_eq(x, v),
                None => k == "protocol" && v == "TCP",
            })
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
        assert_eq!(set.clone().into_fields_v1(), v);
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
    fn paths_print_like_structured_merge_diff() {
        let path = p(&[
            "f:spec",
            "f:containers",
            "k:{\"name\":\"web\"}",
            "f:ports",
            "k:{\"containerPort\":80,\"protocol\":\"TCP\"}",
        ]);
        assert_eq!(path_string(&path), ".spec.containers[name=\"web\"].ports[containerPort=80,protocol=\"TCP\"]");
        assert_eq!(
            path_string(&p(&["f:metadata", "f:finalizers", "v:\"a\\\"b\""])),
            ".metadata.finalizers[=\"a\\\"b\"]"
        );
        assert_eq!(path_string(&p(&["f:args", "i:3"])), ".args[3]");
        assert_eq!(go_float(1.5), "1.5");
        assert_eq!(go_float(1e6), "1e+06");
        assert_eq!(go_float(1234567.0), "1.234567e+06");
        assert_eq!(go_float(0.00001), "1e-05");
        assert_eq!(go_float(0.0001), "0.0001");
        assert_eq!(go_quote("a\tb\u{1}"), "\"a\\tb\\x01\"");
    }

    #[test]
    fn smd_iteration_order() {
        let mut s = FieldSet::default();
        for path in [
            p(&["f:spec", "f:a", "f:b"]),
            p(&["f:spec", "f:z"]),
            p(&["f:data", "f:k"]),
            p(&["f:spec", "f:ports", "k:{\"port\":443}"]),
            p(&["f:spec", "f:ports", "k:{\"port\":80}"]),
        ] {
            s.insert(&path);
        }
        let got: Vec<String> = s.members_smd_order().iter().map(|m| path_string(m)).collect();
        assert_eq!(got, [".data.k", ".spec.z", ".spec.a.b", ".spec.ports[port=80]", ".spec.ports[port=443]"]);
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
