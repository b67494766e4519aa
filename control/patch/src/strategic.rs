//! Strategic merge patch, `application/strategic-merge-patch+json`.
//!
//! A port of `StrategicMergeMapPatch` from k8s.io/apimachinery/pkg/util/strategicpatch, i.e. the
//! server side of `kubectl apply` (client-side) and `kubectl patch`. Function names follow the Go
//! ones so that the two can be read side by side. Deliberate differences:
//! * Values taken from the patch as they are (a new field, an appended list element, the
//!   content of a `$patch: replace`) are themselves run through the merge against an empty
//!   value, so directives nested in them are honoured and never leak into the result (Go copies
//!   them verbatim and relies on decoding into a Go struct to drop unknown `$` keys).
//! * Go processes the keys of a patch map in random order; here `$retainKeys` comes first, then
//!   `$setElementOrder` lists, then ordinary keys, then `$deleteFromPrimitiveList` lists — the
//!   order Go's own `$setElementOrder` path ends up using.
//! * Errors that Go reports as plain `error`s (HTTP 500) are reported as `Invalid` (400): they
//!   are all caused by a malformed patch or object.

use serde_json::{Map, Value};

use crate::schema::{self, FieldMeta, ListStrategy, Ty};
use crate::util::{check_depth, guard, json_eq, opt_json_eq, remove_key};
use crate::{GroupKind, PatchError};

const DIRECTIVE_MARKER: &str = "$patch";
const DELETE_DIRECTIVE: &str = "delete";
const REPLACE_DIRECTIVE: &str = "replace";
const MERGE_DIRECTIVE: &str = "merge";
const RETAIN_KEYS_DIRECTIVE: &str = "$retainKeys";
const SET_ELEMENT_ORDER_PREFIX: &str = "$setElementOrder";
const DELETE_FROM_PRIMITIVE_LIST_PREFIX: &str = "$deleteFromPrimitiveList";

type Result<T> = std::result::Result<T, PatchError>;

fn invalid(msg: impl Into<String>) -> PatchError {
    PatchError::Invalid(msg.into())
}

/// Applies a strategic merge patch to `target`, using the patch metadata of `kind`
/// (see [`crate::list_strategy`]).
///
/// * maps merge recursively and `null` deletes a key;
/// * lists with a merge key merge element-wise by key (`{"name": "x", "$patch": "delete"}`
///   deletes an element, an element `{"$patch": "replace"}` replaces the whole list);
/// * lists of scalars with the merge strategy are unions, with deletions through
///   `$deleteFromPrimitiveList/<field>`;
/// * `$setElementOrder/<field>` fixes the order of a merged list;
/// * `$retainKeys` clears the keys of a map it does not list;
/// * `{"$patch": "replace"}` / `{"$patch": "delete"}` in a map replace / delete that map;
/// * every other list is replaced atomically.
pub fn strategic_merge_patch(target: &Value, patch: &Value, kind: &GroupKind) -> Result<Value> {
    check_depth(target, "object")?;
    check_depth(patch, "patch")?;
    let Value::Object(patch) = patch else {
        return Err(invalid("invalid JSON document: a strategic merge patch must be a JSON object"));
    };
    let original = match target {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    merge_map(original, patch.clone(), Some(schema::root(kind)), 0).map(Value::Object)
}

/// Merges `patch` into `original` (both maps of type `ty`).
fn merge_map(
    mut original: Map<String, Value>,
    mut patch: Map<String, Value>,
    ty: Option<Ty>,
    depth: usize,
) -> Result<Map<String, Value>> {
    guard(depth)?;
    if let Some(directive) = patch.get(DIRECTIVE_MARKER) {
        return match directive.as_str() {
            Some(REPLACE_DIRECTIVE) => {
                // The patch *is* the new value; it still has to be cleaned of directives.
                remove_key(&mut patch, DIRECTIVE_MARKER);
                merge_map(Map::new(), patch, ty, depth + 1)
            }
            Some(DELETE_DIRECTIVE) => Ok(Map::new()),
            // "merge" is only meaningful to the client-side diff; Go rejects it here too.
            _ => Err(invalid(format!("Unknown patch type: {directive} in map: {}", Value::Object(patch.clone())))),
        };
    }

    apply_retain_keys_directive(&mut original, &mut patch)?;
    merge_patch_into_original(&mut original, &mut patch, ty, depth)?;

    let mut deletion_lists = Vec::new();
    for (k, patch_v) in patch {
        if k.starts_with(DELETE_FROM_PRIMITIVE_LIST_PREFIX) {
            deletion_lists.push((k, patch_v));
            continue;
        }
        // `null` deletes; a `null` for a key the original lacks is simply dropped
        // (IgnoreUnmatchedNulls, as the API server sets it).
        if patch_v.is_null() {
            remove_key(&mut original, &k);
            continue;
        }
        let meta = schema::field(ty, &k);
        match original.get_mut(&k) {
            Some(slot) => {
                let original_v = slot.take();
                *slot = merge_value(original_v, patch_v, &meta, depth)?;
            }
            None => {
                let v = from_patch(patch_v, &meta, depth)?;
                original.insert(k, v);
            }
        }
    }

    for (k, patch_v) in deletion_lists {
        delete_from_primitive_list(&mut original, &k, patch_v)?;
    }
    Ok(original)
}

/// Merges a patch value into an original value of the same field.
fn merge_value(original: Value, patch: Value, meta: &FieldMeta, depth: usize) -> Result<Value> {
    match (original, patch) {
        (Value::Object(o), Value::Object(p)) => merge_map(o, p, meta.ty, depth + 1).map(Value::Object),
        (Value::Array(o), Value::Array(p)) => merge_slice_handler(o, p, meta, depth + 1).map(Value::Array),
        // Different types (or scalars): the patch value wins.
        (_, p) => from_patch(p, meta, depth),
    }
}

/// A value taken from the patch without anything to merge with: merged into an empty value of
/// its own type so that directives inside it are applied rather than copied.
fn from_patch(patch: Value, meta: &FieldMeta, depth: usize) -> Result<Value> {
    match patch {
        Value::Object(p) => merge_map(Map::new(), p, meta.ty, depth + 1).map(Value::Object),
        Value::Array(p) => merge_slice_handler(Vec::new(), p, meta, depth + 1).map(Value::Array),
        other => Ok(other),
    }
}

fn merge_slice_handler(original: Vec<Value>, patch: Vec<Value>, meta: &FieldMeta, depth: usize) -> Result<Vec<Value>> {
    guard(depth)?;
    match meta.strategy {
        Some(ListStrategy::Merge { key }) => merge_slice(original, patch, Some(key), meta.ty, depth),
        Some(ListStrategy::MergePrimitives) => merge_slice(original, patch, None, meta.ty, depth),
        // Atomic list: the patch replaces it (its elements are still cleaned of directives).
        _ => patch.into_iter().map(|e| clean_element(e, meta.ty, depth + 1)).collect(),
    }
}

/// An element taken from a patch list as it is: maps are merged into an empty map (applying and
/// removing their directives), nested lists (only possible in atomic lists) are cleaned in turn.
fn clean_element(e: Value, ty: Option<Ty>, depth: usize) -> Result<Value> {
    guard(depth)?;
    match e {
        Value::Object(m) => merge_map(Map::new(), m, ty, depth + 1).map(Value::Object),
        Value::Array(a) => {
            a.into_iter().map(|e| clean_element(e, None, depth + 1)).collect::<Result<Vec<_>>>().map(Value::Array)
        }
        other => Ok(other),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Null,
    Bool,
    Number,
    String,
    Array,
    Map,
}

fn kind_of(v: &Value) -> Kind {
    match v {
        Value::Null => Kind::Null,
        Value::Bool(_) => Kind::Bool,
        Value::Number(_) => Kind::Number,
        Value::String(_) => Kind::String,
        Value::Array(_) => Kind::Array,
        Value::Object(_) => Kind::Map,
    }
}

/// The common element kind of the given lists (Go's `sliceElementType`).
fn slice_element_kind(lists: &[&[Value]]) -> Result<Option<Kind>> {
    let mut kind = None;
    for v in lists.iter().flat_map(|l| l.iter()) {
        let k = kind_of(v);
        if k == Kind::Array {
            return Err(PatchError::Unprocessable("lists of lists are not supported".into()));
        }
        match kind {
            None => kind = Some(k),
            Some(prev) if prev != k => {
                return Err(invalid("list element types are not identical"));
            }
            _ => {}
        }
    }
    Ok(kind)
}

/// Merges two lists with the merge strategy (`merge_key` is `None` for lists of scalars).
fn merge_slice(
    original: Vec<Value>,
    patch: Vec<Value>,
    merge_key: Option<&'static str>,
    elem_ty: Option<Ty>,
    depth: usize,
) -> Result<Vec<Value>> {
    if original.is_empty() && patch.is_empty() {
        return Ok(original);
    }
    let Some(kind) = slice_element_kind(&[&original, &patch])? else {
        return Ok(original);
    };

    if kind != Kind::Map {
        // Set union, original order first, no duplicates.
        let mut merged: Vec<Value> = Vec::with_capacity(original.len() + patch.len());
        for v in original.iter().chain(&patch) {
            if !merged.iter().any(|m| json_eq(m, v)) {
                merged.push(v.clone());
            }
        }
        let (patch_items, server_only) = partition(merged, &patch, None);
        return Ok(normalize_element_order(patch_items, server_only, &patch, &original, None, kind));
    }

    let key = merge_key.ok_or_else(|| invalid("cannot merge lists without merge key"))?;
    let (original, patch) = merge_slice_with_special_elements(original, patch, key, elem_ty, depth)?;
    let merged = merge_slice_without_special_elements(original.clone(), &patch, key, elem_ty, depth)?;
    let (patch_items, server_only) = partition(merged, &patch, Some(key));
    Ok(normalize_element_order(patch_items, server_only, &patch, &original, Some(key), kind))
}

fn directive_of(v: &Value) -> Option<&Value> {
    v.as_object().and_then(|m| m.get(DIRECTIVE_MARKER))
}

fn no_merge_key(v: &Value, key: &str) -> PatchError {
    invalid(format!("map: {v} does not contain declared merge key: {key}"))
}

/// Handles the elements carrying `$patch`: deletions are applied to `original`, a `replace`
/// makes the rest of the patch the new list. Returns the new original and the patch without
/// special elements.
fn merge_slice_with_special_elements(
    mut original: Vec<Value>,
    patch: Vec<Value>,
    key: &str,
    elem_ty: Option<Ty>,
    depth: usize,
) -> Result<(Vec<Value>, Vec<Value>)> {
    let mut plain = Vec::with_capacity(patch.len());
    let mut replace = false;
    for v in patch {
        let Some(directive) = directive_of(&v) else {
            plain.push(v);
            continue;
        };
        match directive.as_str() {
            Some(DELETE_DIRECTIVE) => {
                let Some(kv) = v.get(key) else {
                    return Err(no_merge_key(&v, key));
                };
                original.retain(|e| !e.get(key).is_some_and(|x| json_eq(x, kv)));
            }
            // Keep going: the other special elements still have to be pruned.
            Some(REPLACE_DIRECTIVE) => replace = true,
            Some(MERGE_DIRECTIVE) => {
                return Err(invalid("merging lists cannot yet be specified in the patch"));
            }
            _ => {
                return Err(invalid(format!("Unknown patch type: {directive} in map: {v}")));
            }
        }
    }
    if replace {
        let replaced = plain.into_iter().map(|e| clean_element(e, elem_ty, depth + 1)).collect::<Result<Vec<_>>>()?;
        return Ok((replaced, Vec::new()));
    }
    Ok((original, plain))
}

fn merge_slice_without_special_elements(
    mut original: Vec<Value>,
    patch: &[Value],
    key: &str,
    elem_ty: Option<Ty>,
    depth: usize,
) -> Result<Vec<Value>> {
    for v in patch {
        let Value::Object(m) = v else {
            return Err(invalid(format!("list element {v} is not a map")));
        };
        let Some(kv) = m.get(key) else {
            return Err(no_merge_key(v, key));
        };
        let found = original.iter().position(|e| e.get(key).is_some_and(|x| json_eq(x, kv)));
        match found {
            Some(i) => {
                let o = match original[i].take() {
                    Value::Object(o) => o,
                    _ => Map::new(),
                };
                original[i] = Value::Object(merge_map(o, m.clone(), elem_ty, depth + 1)?);
            }
            None => original.push(Value::Object(merge_map(Map::new(), m.clone(), elem_ty, depth + 1)?)),
        }
    }
    Ok(original)
}

/// The value identifying a list element: its merge key for maps, itself for scalars.
fn ident<'a>(v: &'a Value, key: Option<&str>) -> Option<&'a Value> {
    match key {
        Some(k) => v.as_object().and_then(|m| m.get(k)),
        None => Some(v),
    }
}

/// Go's `index`: position of the first element of `list` with the same identity as `item`.
fn index_of(list: &[Value], item: &Value, key: Option<&str>) -> Option<usize> {
    let id = ident(item, key);
    list.iter().position(|v| opt_json_eq(ident(v, key), id))
}

/// Splits `merged` into the elements present in `by` and the others (server-only).
fn partition(merged: Vec<Value>, by: &[Value], key: Option<&str>) -> (Vec<Value>, Vec<Value>) {
    merged.into_iter().partition(|v| match ident(v, key) {
        Some(id) => by.iter().any(|b| ident(b, key).is_some_and(|x| json_eq(x, id))),
        None => false,
    })
}

/// Sorts the patch items by `patch_order` and the server-only items by `server_order`, then
/// interleaves them (Go's `normalizeElementOrder`): `$setElementOrder` > order in the patch >
/// order in the live list.
fn normalize_element_order(
    patch: Vec<Value>,
    server_only: Vec<Value>,
    patch_order: &[Value],
    server_order: &[Value],
    key: Option<&str>,
    kind: Kind,
) -> Vec<Value> {
    let patch = normalize_slice_order(patch, patch_order, key, kind);
    let server_only = normalize_slice_order(server_only, server_order, key, kind);
    merge_sorted_slice(server_only, patch, server_order, key)
}

fn normalize_slice_order(to_sort: Vec<Value>, order: &[Value], key: Option<&str>, kind: Kind) -> Vec<Value> {
    let (keep, to_delete): (Vec<Value>, Vec<Value>) = if kind == Kind::Map {
        to_sort.into_iter().partition(|v| directive_of(v).and_then(Value::as_str) != Some(DELETE_DIRECTIVE))
    } else {
        (to_sort, Vec::new())
    };
    // Elements missing from `order` go last (Go's comparator is not a strict weak order there;
    // this is the stable reading of it).
    let mut keyed: Vec<(usize, Value)> =
        keep.into_iter().map(|v| (index_of(order, &v, key).unwrap_or(usize::MAX), v)).collect();
    keyed.sort_by_key(|(i, _)| *i);
    keyed.into_iter().map(|(_, v)| v).chain(to_delete).collect()
}

/// Inserts the items of `left` (server-only) among those of `right` (patch), keeping the
/// relative order of both; a left item goes before a right item when the live list has it first.
fn merge_sorted_slice(left: Vec<Value>, right: Vec<Value>, server_order: &[Value], key: Option<&str>) -> Vec<Value> {
    let mut out = Vec::with_capacity(left.len() + right.len());
    let mut left = left.into_iter().peekable();
    let mut right = right.into_iter().peekable();
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => matches!(
                (index_of(server_order, l, key), index_of(server_order, r, key)),
                (Some(li), Some(ri)) if li < ri
            ),
        };
        let next = if take_left { left.next() } else { right.next() };
        out.extend(next);
    }
    out
}

/// `$retainKeys`: validates that the patch only sets listed keys and clears the others.
fn apply_retain_keys_directive(original: &mut Map<String, Value>, patch: &mut Map<String, Value>) -> Result<()> {
    let Some(retain) = remove_key(patch, RETAIN_KEYS_DIRECTIVE) else {
        return Ok(());
    };
    let Value::Array(list) = retain else {
        return Err(invalid("invalid patch format of retainKeys: $retainKeys must be a list"));
    };
    let keep = |k: &str| list.iter().any(|v| v.as_str() == Some(k));
    for (k, v) in patch.iter() {
        if v.is_null() || k.starts_with(DELETE_FROM_PRIMITIVE_LIST_PREFIX) || k.starts_with(SET_ELEMENT_ORDER_PREFIX) {
            continue;
        }
        if !keep(k) {
            return Err(invalid(format!(
                "invalid patch format of retainKeys: field {k:?} is in the patch but not in $retainKeys"
            )));
        }
    }
    original.retain(|k, _| keep(k));
    Ok(())
}

/// Trims `prefix/` off a directive key (Go's `extractKey`).
fn extract_key(s: &str, prefix: &str) -> Result<String> {
    match s.split_once('/') {
        Some((p, rest)) if p == prefix => Ok(rest.to_string()),
        _ => Err(invalid(match prefix {
            DELETE_FROM_PRIMITIVE_LIST_PREFIX => format!("invalid patch format of primitive list: {s:?}"),
            _ => format!("invalid patch format of setElementOrder list: {s:?}"),
        })),
    }
}

/// `$setElementOrder/<field>`: merges the field's patch list now and orders the result
/// (Go's `mergePatchIntoOriginal`). The merged field is removed from `patch`.
fn merge_patch_into_original(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
    ty: Option<Ty>,
    depth: usize,
) -> Result<()> {
    let keys: Vec<String> = patch.keys().filter(|k| k.starts_with(SET_ELEMENT_ORDER_PREFIX)).cloned().collect();
    for key in keys {
        let Some(order_v) = remove_key(patch, &key) else { continue };
        let Value::Array(order) = order_v else {
            return Err(invalid(format!("invalid patch format of setElementOrder list: {key} must be a list")));
        };
        let field = extract_key(&key, SET_ELEMENT_ORDER_PREFIX)?;
        let meta = schema::field(ty, &field);
        let merge_key = match meta.strategy {
            Some(ListStrategy::Merge { key }) => Some(key),
            _ => None,
        };

        let original_list = match original.get(&field) {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) => Some(a.clone()),
            Some(other) => {
                return Err(invalid(format!("field {field:?} is not a list in the object: {other}")));
            }
        };
        let patch_list = match patch.get(&field) {
            None => None,
            Some(Value::Array(a)) => Some(a.clone()),
            Some(other) => {
                return Err(invalid(format!("field {field:?} is not a list in the patch: {other}")));
            }
        };
        validate_patch_with_set_order_list(patch_list.as_deref().unwrap_or(&[]), &order, merge_key)?;

        let merged = match (&original_list, &patch_list) {
            (Some(o), None) => o.clone(),
            (None, Some(p)) => merge_slice_handler(Vec::new(), p.clone(), &meta, depth + 1)?,
            (Some(o), Some(p)) => merge_slice_handler(o.clone(), p.clone(), &meta, depth + 1)?,
            (None, None) => continue,
        };
        remove_key(patch, &field);

        let original_list = original_list.unwrap_or_default();
        let kind = slice_element_kind(&[&original_list, patch_list.as_deref().unwrap_or(&[])])?;
        let both = match kind {
            Some(kind) if !merged.is_empty() => {
                let key = if kind == Kind::Map { merge_key } else { None };
                if let Some(k) = key {
                    if let Some(bad) = order.iter().find(|o| o.get(k).is_none()) {
                        return Err(no_merge_key(bad, k));
                    }
                }
                let (patch_items, server_only) = partition(merged, &order, key);
                normalize_element_order(patch_items, server_only, &order, &original_list, key, kind)
            }
            _ => merged,
        };
        original.insert(field, Value::Array(both));
    }
    Ok(())
}

/// Checks that the patch list is ordered consistently with `$setElementOrder` and is a subset
/// of it (deletions excepted).
fn validate_patch_with_set_order_list(patch_list: &[Value], order: &[Value], key: Option<&str>) -> Result<()> {
    if order.is_empty() || patch_list.is_empty() {
        return Ok(());
    }
    let mut non_delete = Vec::with_capacity(patch_list.len());
    for v in patch_list {
        if key.is_some() && !v.is_object() {
            return Err(invalid(format!("list element {v} is not a map")));
        }
        if directive_of(v).and_then(Value::as_str) != Some(DELETE_DIRECTIVE) {
            non_delete.push(v);
        }
    }
    let key_equal = |l: &Value, r: &Value| -> Result<bool> {
        let Some(k) = key else { return Ok(json_eq(l, r)) };
        let lv = l.get(k).ok_or_else(|| no_merge_key(l, k))?;
        let rv = r.get(k).ok_or_else(|| no_merge_key(r, k))?;
        Ok(json_eq(lv, rv))
    };
    let (mut pi, mut si) = (0, 0);
    while pi < non_delete.len() && si < order.len() {
        if directive_of(non_delete[pi]).is_some() {
            pi += 1;
            continue;
        }
        if key_equal(non_delete[pi], &order[si])? {
            pi += 1;
        }
        si += 1;
    }
    let unmatched = non_delete[pi..].iter().any(|v| directive_of(v).is_none());
    if unmatched {
        return Err(invalid(format!(
            "The order in patch list: {} doesn't match {SET_ELEMENT_ORDER_PREFIX} list: {}",
            Value::Array(patch_list.to_vec()),
            Value::Array(order.to_vec())
        )));
    }
    Ok(())
}

/// `$deleteFromPrimitiveList/<field>`: removes the listed scalars from the field.
fn delete_from_primitive_list(original: &mut Map<String, Value>, key: &str, patch_v: Value) -> Result<()> {
    let field = extract_key(key, DELETE_FROM_PRIMITIVE_LIST_PREFIX)?;
    let Value::Array(to_delete) = patch_v else {
        return Err(invalid(format!("invalid patch format of primitive list: {key} must be a list")));
    };
    if let Some(Value::Array(list)) = original.get_mut(&field) {
        list.retain(|v| !to_delete.iter().any(|d| json_eq(d, v)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> GroupKind {
        GroupKind::new("", "Pod")
    }

    fn smp(target: Value, patch: Value) -> Value {
        strategic_merge_patch(&target, &patch, &pod()).unwrap()
    }

    fn smp_err(target: Value, patch: Value) -> PatchError {
        strategic_merge_patch(&target, &patch, &pod()).unwrap_err()
    }

    /// Directive keys must never survive into a result.
    fn assert_no_directives(v: &Value) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    assert!(
                        !(k == DIRECTIVE_MARKER
                            || k == RETAIN_KEYS_DIRECTIVE
                            || k.starts_with(SET_ELEMENT_ORDER_PREFIX)
                            || k.starts_with(DELETE_FROM_PRIMITIVE_LIST_PREFIX)),
                        "directive {k} left in result"
                    );
                    assert_no_directives(v);
                }
            }
            Value::Array(a) => a.iter().for_each(assert_no_directives),
            _ => {}
        }
    }

    #[test]
    fn maps_merge_and_null_deletes() {
        let got = smp(
            json!({"metadata":{"name":"p","labels":{"a":"1","b":"2"}},"spec":{"nodeName":"n1"}}),
            json!({"metadata":{"labels":{"a":null,"c":"3"}},"spec":{"nodeName":"n2"},"x":null}),
        );
        assert_eq!(got, json!({"metadata":{"name":"p","labels":{"b":"2","c":"3"}},"spec":{"nodeName":"n2"}}));
        // Nulls inside a value that is new are dropped too.
        assert_eq!(smp(json!({}), json!({"spec":{"a":null,"b":1}})), json!({"spec":{"b":1}}));
    }

    #[test]
    fn merge_by_key_updates_and_appends() {
        let got = smp(
            json!({"spec":{"containers":[
                {"name":"a","image":"a:1","ports":[{"containerPort":80}]},
                {"name":"b","image":"b:1"}]}}),
            json!({"spec":{"containers":[{"name":"b","image":"b:2"},{"name":"c","image":"c:1"}]}}),
        );
        assert_eq!(
            got,
            json!({"spec":{"containers":[
                {"name":"a","image":"a:1","ports":[{"containerPort":80}]},
                {"name":"b","image":"b:2"},
                {"name":"c","image":"c:1"}]}})
        );
    }

    #[test]
    fn nested_merge_by_key_with_numeric_keys() {
        let got = smp(
            json!({"spec":{"containers":[{"name":"a","ports":[{"containerPort":80,"name":"http"},{"containerPort":443}],
                   "env":[{"name":"X","value":"1"}]}]}}),
            json!({"spec":{"containers":[{"name":"a","ports":[{"containerPort":80.0,"protocol":"TCP"}],
                   "env":[{"name":"Y","value":"2"}]}]}}),
        );
        assert_eq!(
            got,
            json!({"spec":{"containers":[{"name":"a","ports":[{"containerPort":80.0,"name":"http","protocol":"TCP"},{"containerPort":443}],
                   "env":[{"name":"Y","value":"2"},{"name":"X","value":"1"}]}]}})
        );
    }

    #[test]
    fn delete_directive_in_list() {
        let got = smp(
            json!({"spec":{"containers":[{"name":"a"},{"name":"b"},{"name":"c"}]}}),
            json!({"spec":{"containers":[{"name":"b","$patch":"delete"},{"name":"zz","$patch":"delete"}]}}),
        );
        assert_eq!(got, json!({"spec":{"containers":[{"name":"a"},{"name":"c"}]}}));
        // A delete without the merge key is malformed.
        let e = smp_err(
            json!({"spec":{"containers":[{"name":"a"}]}}),
            json!({"spec":{"containers":[{"$patch":"delete"}]}}),
        );
        assert_eq!(e.status_code(), 400);
    }

    #[test]
    fn replace_directive_in_list_and_map() {
        let got = smp(
            json!({"spec":{"containers":[{"name":"a","image":"x"},{"name":"b"}]}}),
            json!({"spec":{"containers":[{"name":"c","image":"y"},{"$patch":"replace"}]}}),
        );
        assert_eq!(got, json!({"spec":{"containers":[{"name":"c","image":"y"}]}}));

        let got = smp(
            json!({"metadata":{"labels":{"a":"1","b":"2"}}}),
            json!({"metadata":{"labels":{"$patch":"replace","c":"3"}}}),
        );
        assert_eq!(got, json!({"metadata":{"labels":{"c":"3"}}}));

        let got = smp(
            json!({"metadata":{"labels":{"a":"1"},"name":"x"}}),
            json!({"metadata":{"labels":{"$patch":"delete"}}}),
        );
        assert_eq!(got, json!({"metadata":{"labels":{},"name":"x"}}));

        // Whole-object replace.
        assert_eq!(smp(json!({"a":1,"b":2}), json!({"$patch":"replace","c":3})), json!({"c":3}));
    }

    #[test]
    fn bad_directives_are_invalid() {
        for patch in [
            json!({"$patch":"merge"}),
            json!({"$patch":"explode"}),
            json!({"$patch":5}),
            json!({"metadata":{"$patch":null}}),
            json!({"spec":{"containers":[{"name":"a","$patch":"merge"}]}}),
            json!({"spec":{"containers":[{"name":"a","$patch":7}]}}),
            json!({"spec":{"containers":[{"image":"no-name"}]}}),
            json!({"spec":{"$retainKeys":"nope"}}),
            json!({"spec":{"$retainKeys":["a"],"b":1}}),
            json!({"spec":{"$setElementOrder/containers":{"name":"a"}}}),
            json!({"spec":{"$setElementOrder":[]}}),
            json!({"spec":{"$setElementOrderX/containers":[]}}),
            json!({"metadata":{"$deleteFromPrimitiveList/finalizers":"a"}}),
            json!({"metadata":{"$deleteFromPrimitiveList":["a"]}}),
            json!({"spec":{"containers":[{"name":"a"}],"$setElementOrder/containers":[{"image":"x"}]}}),
            json!({"spec":{"containers":[{"name":"a"},{"name":"b"}],"$setElementOrder/containers":[{"name":"b"},{"name":"a"}]}}),
            json!({"spec":{"containers":{"name":"a"},"$setElementOrder/containers":[{"name":"a"}]}}),
            json!({"metadata":{"finalizers":["a",{"b":1}]}}),
            json!({"metadata":{"finalizers":[{"b":1}]}}),
        ] {
            let target = json!({"metadata":{"finalizers":["x"]},"spec":{"containers":[{"name":"a"}]}});
            let e = smp_err(target, patch.clone());
            assert_eq!(e.status_code(), 400, "{patch}: {e}");
        }
        let e = smp_err(json!({"metadata":{"finalizers":["x"]}}), json!({"metadata":{"finalizers":[["a"]]}}));
        assert_eq!(e.status_code(), 422);
        for patch in [json!([]), json!("x"), json!(null), json!(1)] {
            assert_eq!(smp_err(json!({}), patch).status_code(), 400);
        }
    }

    #[test]
    fn set_element_order() {
        // Reorder only.
        let got = smp(
            json!({"spec":{"containers":[{"name":"a"},{"name":"b"},{"name":"c"}]}}),
            json!({"spec":{"$setElementOrder/containers":[{"name":"c"},{"name":"a"},{"name":"b"}]}}),
        );
        assert_eq!(got, json!({"spec":{"containers":[{"name":"c"},{"name":"a"},{"name":"b"}]}}));

        // Insert in the middle, with a server-only element kept near its live position.
        let got = smp(
            json!({"spec":{"containers":[{"name":"a"},{"name":"server"},{"name":"c","image":"old"}]}}),
            json!({"spec":{
                "$setElementOrder/containers":[{"name":"a"},{"name":"b"},{"name":"c"}],
                "containers":[{"name":"b","image":"new"},{"name":"c","image":"c2"}]}}),
        );
        assert_eq!(
            got,
            // Go cannot place "b" against the live list, so it goes before the server-only item.
            json!({"spec":{"containers":[{"name":"a"},{"name":"b","image":"new"},{"name":"server"},{"name":"c","image":"c2"}]}})
        );

        // Deletions alongside an order list.
        let got = smp(
            json!({"spec":{"containers":[{"name":"a"},{"name":"b"},{"name":"c"}]}}),
            json!({"spec":{
                "$setElementOrder/containers":[{"name":"c"},{"name":"a"}],
                "containers":[{"name":"b","$patch":"delete"}]}}),
        );
        assert_eq!(got, json!({"spec":{"containers":[{"name":"c"},{"name":"a"}]}}));

        // Field absent from the original.
        let got = smp(
            json!({"spec":{}}),
            json!({"spec":{"$setElementOrder/initContainers":[{"name":"b"},{"name":"a"}],
                   "initContainers":[{"name":"b"},{"name":"a","env":[{"name":"E","value":null}]}]}}),
        );
        assert_eq!(got, json!({"spec":{"initContainers":[{"name":"b"},{"name":"a","env":[{"name":"E"}]}]}}));

        // Order list without a patch list and without an original: nothing happens.
        assert_eq!(
            smp(json!({"spec":{}}), json!({"spec":{"$setElementOrder/volumes":[{"name":"v"}]}})),
            json!({"spec":{}})
        );
    }

    #[test]
    fn primitive_lists_merge_and_delete() {
        let got = smp(
            json!({"metadata":{"finalizers":["a","b","c"]}}),
            json!({"metadata":{"finalizers":["d","b"],"$deleteFromPrimitiveList/finalizers":["a","zz"]}}),
        );
        // New items that the live list cannot place go first (Go's mergeSortedSlice).
        assert_eq!(got, json!({"metadata":{"finalizers":["d","b","c"]}}));

        // With an order list, as kubectl sends it.
        let got = smp(
            json!({"metadata":{"finalizers":["a","b","c"]}}),
            json!({"metadata":{
                "$setElementOrder/finalizers":["c","x","b"],
                "finalizers":["x"],
                "$deleteFromPrimitiveList/finalizers":["a"]}}),
        );
        assert_eq!(got, json!({"metadata":{"finalizers":["c","x","b"]}}));

        // Deleting from a missing list is a no-op; lists without the merge strategy are replaced.
        assert_eq!(
            smp(json!({"metadata":{}}), json!({"metadata":{"$deleteFromPrimitiveList/finalizers":["a"]}})),
            json!({"metadata":{}})
        );
        assert_eq!(
            smp(
                json!({"spec":{"containers":[{"name":"a","args":["1","2"]}]}}),
                json!({"spec":{"containers":[{"name":"a","args":["3"]}]}})
            ),
            json!({"spec":{"containers":[{"name":"a","args":["3"]}]}})
        );
    }

    #[test]
    fn atomic_lists_are_replaced() {
        let got = smp(
            json!({"spec":{"tolerations":[{"key":"a","operator":"Exists"}],"containers":[{"name":"c"}]}}),
            json!({"spec":{"tolerations":[{"key":"b","operator":"Exists"}]}}),
        );
        assert_eq!(got, json!({"spec":{"tolerations":[{"key":"b","operator":"Exists"}],"containers":[{"name":"c"}]}}));
        // Unknown kinds: every list is atomic, metadata still merges.
        let crd = GroupKind::new("example.com", "Widget");
        let got = strategic_merge_patch(
            &json!({"metadata":{"finalizers":["a"]},"spec":{"items":[{"name":"x","v":1}]}}),
            &json!({"metadata":{"finalizers":["b"]},"spec":{"items":[{"name":"x","w":2}]}}),
            &crd,
        )
        .unwrap();
        assert_eq!(got, json!({"metadata":{"finalizers":["b","a"]},"spec":{"items":[{"name":"x","w":2}]}}));
    }

    #[test]
    fn retain_keys_on_volumes_and_strategy() {
        // kubectl switching a volume from hostPath to emptyDir.
        let got = smp(
            json!({"spec":{"volumes":[{"name":"v","hostPath":{"path":"/tmp"}},{"name":"w","emptyDir":{}}]}}),
            json!({"spec":{"$setElementOrder/volumes":[{"name":"v"},{"name":"w"}],
                   "volumes":[{"$retainKeys":["emptyDir","name"],"emptyDir":{},"name":"v"}]}}),
        );
        assert_eq!(got, json!({"spec":{"volumes":[{"name":"v","emptyDir":{}},{"name":"w","emptyDir":{}}]}}));

        // Deployment strategy: RollingUpdate -> Recreate.
        let deploy = GroupKind::new("apps", "Deployment");
        let got = strategic_merge_patch(
            &json!({"spec":{"replicas":1,"strategy":{"type":"RollingUpdate","rollingUpdate":{"maxSurge":"25%"}}}}),
            &json!({"spec":{"strategy":{"$retainKeys":["type"],"type":"Recreate","rollingUpdate":null}}}),
            &deploy,
        )
        .unwrap();
        assert_eq!(got, json!({"spec":{"replicas":1,"strategy":{"type":"Recreate"}}}));
    }

    #[test]
    fn directives_inside_new_values_are_applied() {
        let got = smp(
            json!({}),
            json!({"spec":{"containers":[{"name":"a","$patch":"delete"},{"name":"b","env":[{"name":"x","$patch":"delete"}]},{"$patch":"replace"}],
                           "$setElementOrder/containers":[{"name":"b"}]},
                   "metadata":{"labels":{"$patch":"replace","a":"1"},"$deleteFromPrimitiveList/finalizers":["x"]}}),
        );
        assert_eq!(got, json!({"spec":{"containers":[{"name":"b","env":[]}]},"metadata":{"labels":{"a":"1"}}}));
        assert_no_directives(&got);
    }

    /// The realistic `kubectl apply` (client-side) case: the three-way patch only carries the
    /// changed image, the order list and the last-applied annotation.
    #[test]
    fn kubectl_apply_image_update() {
        let last_applied = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"annotations":{},"name":"nginx","namespace":"default"},"spec":{"containers":[{"image":"nginx:1.9","name":"nginx","ports":[{"containerPort":80}]}]}}"#;
        let live = json!({
            "apiVersion":"v1","kind":"Pod",
            "metadata":{"name":"nginx","namespace":"default","uid":"u1","resourceVersion":"7",
                "annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{...old...}"}},
            "spec":{"containers":[{"name":"nginx","image":"nginx:1.7.9","imagePullPolicy":"IfNotPresent",
                "ports":[{"containerPort":80,"protocol":"TCP"}]}],
                "restartPolicy":"Always","nodeName":"node-1"},
            "status":{"phase":"Running"}
        });
        let patch = json!({
            "metadata":{"annotations":{"kubectl.kubernetes.io/last-applied-configuration": last_applied}},
            "spec":{"$setElementOrder/containers":[{"name":"nginx"}],
                    "containers":[{"image":"nginx:1.9","name":"nginx"}]}
        });
        let got = smp(live.clone(), patch);
        let mut want = live;
        want["spec"]["containers"][0]["image"] = json!("nginx:1.9");
        want["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = json!(last_applied);
        assert_eq!(got, want);
        assert_eq!(got["spec"]["containers"][0]["ports"], json!([{"containerPort":80,"protocol":"TCP"}]));
    }

    /// kubectl apply on a ReplicationController whose config drops a container and an env var.
    #[test]
    fn kubectl_apply_replication_controller_template() {
        let rc = GroupKind::new("", "ReplicationController");
        let live = json!({
            "metadata":{"name":"web","labels":{"app":"web"}},
            "spec":{"replicas":2,"selector":{"app":"web"},"template":{
                "metadata":{"labels":{"app":"web"}},
                "spec":{"containers":[
                    {"name":"web","image":"nginx:1.7.9","env":[{"name":"A","value":"1"},{"name":"B","value":"2"}],
                     "ports":[{"containerPort":80,"protocol":"TCP"}]},
                    {"name":"sidecar","image":"busybox"}]}}}
        });
        let patch = json!({
            "spec":{"replicas":3,"template":{"spec":{
                "$setElementOrder/containers":[{"name":"web"}],
                "containers":[
                    {"$setElementOrder/env":[{"name":"A"}],"env":[{"$patch":"delete","name":"B"}],
                     "image":"nginx:1.9","name":"web"},
                    {"$patch":"delete","name":"sidecar"}]}}}
        });
        let got = strategic_merge_patch(&live, &patch, &rc).unwrap();
        assert_eq!(
            got,
            json!({
                "metadata":{"name":"web","labels":{"app":"web"}},
                "spec":{"replicas":3,"selector":{"app":"web"},"template":{
                    "metadata":{"labels":{"app":"web"}},
                    "spec":{"containers":[
                        {"name":"web","image":"nginx:1.9","env":[{"name":"A","value":"1"}],
                         "ports":[{"containerPort":80,"protocol":"TCP"}]}]}}}
            })
        );
        // Same patch against a Pod-shaped path for a CronJob.
        let cj = GroupKind::new("batch", "CronJob");
        let got = strategic_merge_patch(
            &json!({"spec":{"jobTemplate":{"spec":{"template":{"spec":{"containers":[{"name":"a","image":"1"},{"name":"b"}]}}}}}}),
            &json!({"spec":{"jobTemplate":{"spec":{"template":{"spec":{"containers":[{"name":"a","image":"2"}]}}}}}}),
            &cj,
        )
        .unwrap();
        assert_eq!(
            got,
            json!({"spec":{"jobTemplate":{"spec":{"template":{"spec":{"containers":[{"name":"a","image":"2"},{"name":"b"}]}}}}}})
        );
    }

    #[test]
    fn status_conditions_merge_by_type() {
        let got = smp(
            json!({"status":{"conditions":[{"type":"Ready","status":"False"},{"type":"Scheduled","status":"True"}]}}),
            json!({"status":{"conditions":[{"type":"Ready","status":"True"}]}}),
        );
        assert_eq!(
            got,
            json!({"status":{"conditions":[{"type":"Ready","status":"True"},{"type":"Scheduled","status":"True"}]}})
        );
    }

    #[test]
    fn type_changes_replace() {
        assert_eq!(smp(json!({"spec":{"a":[1]}}), json!({"spec":{"a":{"b":1}}})), json!({"spec":{"a":{"b":1}}}));
        assert_eq!(smp(json!({"spec":{"a":"s"}}), json!({"spec":{"a":[1]}})), json!({"spec":{"a":[1]}}));
        assert_eq!(smp(json!("not an object"), json!({"a":1})), json!({"a":1}));
    }
}
