//! Server-side apply (`application/apply-patch+yaml`) and the field ownership bookkeeping
//! (`metadata.managedFields`) that goes with it.
//!
//! A simplified sigs.k8s.io/structured-merge-diff:
//! * the apply configuration is merged into the live object: maps recursively, associative
//!   lists (a merge key in [`crate::list_strategy`]) element by element, sets (merge strategy
//!   on scalars) by value, every other list replaced;
//! * the fields the configuration sets become the manager's `Apply` entry in `managedFields`;
//! * fields the manager applied last time but not any more are removed from the object unless
//!   another manager still owns them — the defining behaviour of apply;
//! * a field another manager owns (an `Apply` or `Update` entry, including the applier's own
//!   `Update` entry) and whose value the configuration changes is a conflict: without `force`
//!   the apply fails with [`PatchError::Conflict`] (409) listing them in Kubernetes' words, with
//!   `force` the applier takes them over and the other managers lose them. Setting a field to
//!   the value it already has is no conflict: the field becomes shared.

use std::collections::{HashMap, HashSet, VecDeque};

use serde_json::{Map, Value};

use crate::fieldpath::{
    FieldSet, Path, PathElement, child_mut, field_pe, go_quote, key_pe, parse_pe, path_string, remove_child, value_at,
    value_pe,
};
use crate::schema::{self, FieldMeta, ListStrategy, Ty};
use crate::util::{check_depth, guard, metadata_mut, now_rfc3339, opt_json_eq, remove_key, strip_nulls};
use crate::{ConflictCause, GroupKind, PatchError};

type Result<T> = std::result::Result<T, PatchError>;

const APPLY: &str = "Apply";
const UPDATE: &str = "Update";

/// Server-side apply of `applied` (the request body, already decoded from JSON or YAML) by
/// field manager `manager`.
///
/// `live` is the stored object, `None` when the apply creates it. The result carries an
/// updated `metadata.managedFields`. The HTTP layer still owns everything around it (name and
/// namespace checks, `resourceVersion` preconditions, defaulting, status reset, validation,
/// rejecting `force` on non-apply patches).
///
/// `force` is the request's `force` query parameter. A *conflict* is a field that the
/// configuration sets to a value different from the live one while another manager owns it —
/// any other entry of `managedFields`, `Apply` or `Update`, the applier's own `Update` entry
/// included, since Kubernetes identifies managers by name *and* operation. Without `force` any
/// conflict fails the whole apply with [`PatchError::Conflict`], whose message is the API
/// server's:
///
/// ```text
/// Apply failed with 1 conflict: conflict with "mgr": .data.k
/// Apply failed with 2 conflicts: conflicts with "kubectl-edit" using v1:
/// - .data.a
/// - .data.b
/// ```
///
/// (managers printed as `"name"` for `Apply` entries, `"name" using <apiVersion>` for `Update`
/// ones, plus ` with subresource "s"` when the entry has one). With `force` the applier takes
/// the conflicting fields over and the other managers lose them. Setting a field to the value
/// it already has is never a conflict: the field is then shared by both managers.
pub fn apply(live: Option<&Value>, applied: &Value, manager: &str, kind: &GroupKind, force: bool) -> Result<Value> {
    check_depth(applied, "apply configuration")?;
    if let Some(live) = live {
        check_depth(live, "object")?;
    }
    if manager.is_empty() {
        return Err(PatchError::Invalid("fieldManager is required for apply requests".into()));
    }
    let Value::Object(cfg_map) = applied else {
        return Err(PatchError::Invalid("an apply configuration must be an object".into()));
    };
    match cfg_map.get("metadata") {
        None | Some(Value::Null) => {}
        Some(Value::Object(meta)) => match meta.get("managedFields") {
            None | Some(Value::Null) => {}
            Some(Value::Array(a)) if a.is_empty() => {}
            Some(_) => return Err(PatchError::Invalid("metadata.managedFields must be nil".into())),
        },
        Some(_) => return Err(PatchError::Invalid("metadata must be an object".into())),
    }

    // `null` in a configuration means "not set": drop it rather than own it.
    let mut cfg = applied.clone();
    strip_nulls(&mut cfg);
    remove_managed_fields(&mut cfg);

    let ty = schema::root(kind);
    let new_set = object_field_set(&cfg, ty, true)?;
    let api_version = cfg
        .get("apiVersion")
        .or_else(|| live.and_then(|l| l.get("apiVersion")))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let now = now_rfc3339();

    let Some(live) = live else {
        let entry = Entry::new(manager, APPLY, &api_version, new_set);
        let mut entries = vec![entry];
        return Ok(with_managed_fields(cfg, &mut entries, &now));
    };
    if !live.is_object() {
        return Err(PatchError::Invalid("the live object is not a JSON object".into()));
    }

    let mut entries = parse_entries(live);
    let mut base = live.clone();
    remove_managed_fields(&mut base);
    let mut merged = merge(&base, &cfg, Some(ty), 0)?;

    let mine = entries.iter().position(|e| e.is(manager, APPLY));
    let previous = mine.map(|i| entries[i].set.clone()).unwrap_or_default();

    // Conflicts: leaf fields of other managers whose value this apply changes. Fields set to
    // the value they already had are not conflicts; they become shared, as in Kubernetes.
    let mut conflicts: Vec<(usize, FieldSet)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if Some(i) == mine {
            continue;
        }
        let mut lost = FieldSet::default();
        for p in e.set.members() {
            if new_set.contains_leaf(&p) && !opt_json_eq(value_at(&base, &p), value_at(&merged, &p)) {
                lost.insert(&p);
            }
        }
        if !lost.is_empty() {
            conflicts.push((i, lost));
        }
    }
    if !force && !conflicts.is_empty() {
        return Err(conflict_error(&entries, &conflicts));
    }
    // force=true: the other managers lose the conflicting fields.
    for (i, lost) in &conflicts {
        let e = &mut entries[*i];
        for p in lost.members() {
            e.set.remove(&p);
        }
        e.changed = true;
    }

    // Prune what this manager stopped applying, unless someone (the new config included)
    // still owns it.
    let mut owned = new_set.clone();
    for (i, e) in entries.iter().enumerate() {
        if Some(i) != mine {
            owned.union_with(&e.set);
        }
    }
    for path in previous.difference(&owned).members() {
        remove_path(&mut merged, &path, &owned, &mut Vec::new());
    }

    match mine {
        Some(i) => {
            let e = &mut entries[i];
            e.set = new_set;
            e.api_version = api_version;
            e.changed = true;
        }
        None => entries.push(Entry::new(manager, APPLY, &api_version, new_set)),
    }
    Ok(with_managed_fields(merged, &mut entries, &now))
}

/// Records field ownership for a non-apply write (create, update, or a non-apply patch) by
/// `manager`, the way the API server's field manager does for `operation: Update`: the manager
/// gains the fields whose value it set or changed, the other managers lose them, and nobody
/// keeps fields that are gone from the object. Returns `new` with `metadata.managedFields` set.
///
/// The manager's entry has `operation: Update` and the object's `apiVersion`; a later
/// [`apply`] by another manager (or by the same name, which is a different manager for an
/// `Update` entry) that changes one of these fields without `force` conflicts with
/// `"<manager>" using <apiVersion>`. Updates themselves never conflict.
///
/// `managedFields` sent in `new` replace the old ones when they differ from them (a client may
/// rewrite them; `[{}]` clears them), as in Kubernetes.
pub fn update_managed_fields(old: Option<&Value>, new: &Value, manager: &str, kind: &GroupKind) -> Result<Value> {
    check_depth(new, "object")?;
    update_managed_fields_owned(old, new.clone(), manager, kind)
}

/// [`update_managed_fields`] of an object the caller hands over (no copy of it is made).
pub fn update_managed_fields_owned(old: Option<&Value>, new: Value, manager: &str, kind: &GroupKind) -> Result<Value> {
    check_depth(&new, "object")?;
    if let Some(old) = old {
        check_depth(old, "object")?;
    }
    if manager.is_empty() {
        return Err(PatchError::Invalid("a field manager name is required".into()));
    }
    if !new.is_object() {
        return Err(PatchError::Invalid("the object is not a JSON object".into()));
    }
    let requested = new.pointer("/metadata/managedFields").filter(|v| match v {
        Value::Array(a) => !a.is_empty(),
        _ => false,
    });
    let previous = old.and_then(|o| o.pointer("/metadata/managedFields"));
    let mut entries = match requested {
        Some(r) if Some(r) != previous => parse_entries(&new),
        _ => old.map(parse_entries).unwrap_or_default(),
    };

    let ty = schema::root(kind);
    let mut new_obj = new;
    remove_managed_fields(&mut new_obj);
    let old_obj = old.map(|o| {
        let mut o = o.clone();
        remove_managed_fields(&mut o);
        o
    });
    let mut new_fields = object_field_set(&new_obj, ty, false)?;

    // On a create every field is new: what changed is `new_fields` itself (no copy, no compare).
    let changed = match &old_obj {
        None => None,
        Some(old_obj) => {
            let old_fields =
                if old_obj.is_object() { object_field_set(old_obj, ty, false)? } else { FieldSet::default() };
            let mut changed = FieldSet::default();
            for p in new_fields.members() {
                let is_leaf = new_fields.contains_leaf(&p);
                let differs = if is_leaf {
                    !opt_json_eq(value_at(old_obj, &p), value_at(&new_obj, &p))
                } else {
                    !old_fields.contains(&p)
                };
                if differs {
                    changed.insert(&p);
                }
            }
            Some(changed)
        }
    };

    let mine = entries.iter().position(|e| e.is(manager, UPDATE));
    {
        let changed = changed.as_ref().unwrap_or(&new_fields);
        for (i, e) in entries.iter_mut().enumerate() {
            let mut set = e.set.intersection(&new_fields);
            if Some(i) != mine {
                set = set.difference(changed);
            }
            if set != e.set {
                e.set = set;
                e.changed = true;
            }
        }
    }
    let api_version = new_obj.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_string();
    match mine {
        Some(i) => {
            let changed = changed.as_ref().unwrap_or(&new_fields);
            let e = &mut entries[i];
            let before = e.set.clone();
            e.set.union_with(changed);
            if e.set != before {
                e.changed = true;
                e.api_version = api_version;
            }
        }
        None => {
            let changed = changed.unwrap_or_else(|| std::mem::take(&mut new_fields));
            if !changed.is_empty() {
                entries.push(Entry::new(manager, UPDATE, &api_version, changed));
            }
        }
    }
    Ok(with_managed_fields(new_obj, &mut entries, &now_rfc3339()))
}

/// One `metadata.managedFields` entry.
#[derive(Debug, Clone)]
struct Entry {
    /// The entry as stored, to keep fields this crate does not interpret.
    raw: Map<String, Value>,
    manager: String,
    operation: String,
    subresource: String,
    api_version: String,
    set: FieldSet,
    /// Re-render the set and bump `time`.
    changed: bool,
}

impl Entry {
    fn new(manager: &str, operation: &str, api_version: &str, set: FieldSet) -> Entry {
        Entry {
            raw: Map::new(),
            manager: manager.into(),
            operation: operation.into(),
            subresource: String::new(),
            api_version: api_version.into(),
            set,
            changed: true,
        }
    }

    fn is(&self, manager: &str, operation: &str) -> bool {
        self.manager == manager && self.operation == operation && self.subresource.is_empty()
    }

    /// The API server's manager identifier (`BuildManagerIdentifier`): the entry's JSON without
    /// fields and time, and without `apiVersion` for `Apply` entries. Conflicts are grouped and
    /// sorted by it.
    fn identifier(&self) -> String {
        let q = |v: &str| Value::String(v.to_string()).to_string();
        let mut parts = Vec::new();
        if !self.manager.is_empty() {
            parts.push(format!("\"manager\":{}", q(&self.manager)));
        }
        parts.push(format!("\"operation\":{}", q(&self.operation)));
        if self.operation != APPLY && !self.api_version.is_empty() {
            parts.push(format!("\"apiVersion\":{}", q(&self.api_version)));
        }
        if !self.subresource.is_empty() {
            parts.push(format!("\"subresource\":{}", q(&self.subresource)));
        }
        format!("{{{}}}", parts.join(","))
    }

    /// The manager as conflict messages print it (`printManager`): `"name"`, then
    /// ` with subresource "s"`, then ` using <apiVersion>` for `Update` entries.
    fn printed(&self) -> String {
        let mut s = go_quote(&self.manager);
        if !self.subresource.is_empty() {
            s = format!("{s} with subresource {}", go_quote(&self.subresource));
        }
        if self.operation == UPDATE {
            s = format!("{s} using {}", self.api_version);
        }
        s
    }

    fn render(self, now: &str) -> Value {
        let mut m = self.raw;
        let s = |v: String| Value::String(v);
        m.insert("manager".into(), s(self.manager));
        m.insert("operation".into(), s(self.operation));
        if !self.api_version.is_empty() {
            m.insert("apiVersion".into(), s(self.api_version));
        }
        if self.changed || !m.contains_key("time") {
            m.insert("time".into(), s(now.to_string()));
        }
        m.insert("fieldsType".into(), s("FieldsV1".to_string()));
        m.insert("fieldsV1".into(), self.set.into_fields_v1());
        Value::Object(m)
    }
}

/// The `PatchError::Conflict` for `conflicts` (entry index, conflicting fields), worded as the
/// API server's `getConflictMessage` (k8s.io/apimachinery `managedfields/internal/conflict.go`):
/// one conflict on one line; several grouped by manager, managers sorted by their identifier,
/// paths in structured-merge-diff's set order.
fn conflict_error(entries: &[Entry], conflicts: &[(usize, FieldSet)]) -> PatchError {
    // (manager identifier, printed manager, paths); entries with the same identifier merge.
    let mut groups: Vec<(String, String, Vec<String>)> = Vec::new();
    let causes = |groups: &[(String, String, Vec<String>)]| -> Vec<ConflictCause> {
        groups
            .iter()
            .flat_map(|(_, who, paths)| paths.iter().map(|p| ConflictCause { manager: who.clone(), field: p.clone() }))
            .collect()
    };
    for (i, set) in conflicts {
        let e = &entries[*i];
        let id = e.identifier();
        let paths = set.members_smd_order().iter().map(|p| path_string(p)).collect::<Vec<_>>();
        match groups.iter_mut().find(|g| g.0 == id) {
            Some(g) => g.2.extend(paths),
            None => groups.push((id, e.printed(), paths)),
        }
    }
    let total: usize = groups.iter().map(|g| g.2.len()).sum();
    if total == 1 {
        let (_, who, paths) = &groups[0];
        let message = format!("Apply failed with 1 conflict: conflict with {who}: {}", paths[0]);
        return PatchError::Conflict(message, causes(&groups));
    }
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    let mut lines = Vec::new();
    for (_, who, paths) in &groups {
        lines.push(format!("conflicts with {who}:"));
        lines.extend(paths.iter().map(|p| format!("- {p}")));
    }
    PatchError::Conflict(format!("Apply failed with {total} conflicts: {}", lines.join("\n")), causes(&groups))
}

/// The usable entries of an object's `managedFields`; malformed ones are dropped, as the API
/// server resets managed fields it cannot decode rather than failing the request.
fn parse_entries(obj: &Value) -> Vec<Entry> {
    let Some(Value::Array(list)) = obj.pointer("/metadata/managedFields") else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|e| {
            let raw = e.as_object()?;
            let text = |k: &str| raw.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
            if raw.get("fieldsType").is_some_and(|t| t.as_str() != Some("FieldsV1")) {
                return None;
            }
            let set = match raw.get("fieldsV1") {
                None | Some(Value::Null) => FieldSet::default(),
                Some(v) => FieldSet::from_fields_v1(v)?,
            };
            let manager = text("manager");
            let operation = text("operation");
            if operation.is_empty() {
                return None;
            }
            Some(Entry {
                raw: raw.clone(),
                manager,
                operation,
                subresource: text("subresource"),
                api_version: text("apiVersion"),
                set,
                changed: false,
            })
        })
        .collect()
}

fn remove_managed_fields(obj: &mut Value) {
    if let Some(meta) = obj.as_object_mut().and_then(metadata_mut) {
        remove_key(meta, "managedFields");
    }
}

fn with_managed_fields(mut obj: Value, entries: &mut Vec<Entry>, now: &str) -> Value {
    entries.retain(|e| !e.set.is_empty());
    let Some(root) = obj.as_object_mut() else { return obj };
    if entries.is_empty() {
        if let Some(meta) = metadata_mut(root) {
            remove_key(meta, "managedFields");
        }
        return obj;
    }
    let rendered = Value::Array(entries.drain(..).map(|e| e.render(now)).collect());
    let meta = root.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    if let Some(meta) = meta.as_object_mut() {
        meta.insert("managedFields".into(), rendered);
    }
    obj
}

// --- field sets of objects -------------------------------------------------------------------

/// Fields nobody owns (structured-merge-diff's strip set): identity and server-maintained
/// metadata.
const STRIPPED_METADATA: &[&str] = &[
    "name",
    "namespace",
    "creationTimestamp",
    "selfLink",
    "uid",
    "clusterName",
    "generation",
    "managedFields",
    "resourceVersion",
];

/// `f:` and the stripped metadata fields' path elements, as [`object_field_set`] removes them.
const STRIPPED_ROOT: &[&str] = &["f:apiVersion", "f:kind", "f:metadata"];

fn object_field_set(obj: &Value, ty: Ty, strict: bool) -> Result<FieldSet> {
    let mut set = FieldSet::default();
    if let Value::Object(m) = obj {
        // Built in one walk, each node reached from its parent (no path copies from the root).
        collect_map(m, Some(ty), &mut set, strict, 0)?;
    }
    for pe in STRIPPED_ROOT {
        set.remove(&[*pe]);
    }
    for f in STRIPPED_METADATA {
        set.remove(&["f:metadata", &field_pe(f)]);
    }
    Ok(set)
}

/// Adds the fields of `m` below `node` (the node of the path leading to `m`).
fn collect_map(m: &Map<String, Value>, ty: Option<Ty>, node: &mut FieldSet, strict: bool, depth: usize) -> Result<()> {
    guard(depth)?;
    for (k, v) in m {
        if v.is_null() {
            continue;
        }
        let meta = schema::field(ty, k);
        let child = node.child_owned(field_pe(k));
        let r = collect_value(v, &meta, child, strict, depth + 1);
        // A non-empty map whose fields are all null adds nothing, not even its own path.
        if child.is_empty() {
            node.children.remove(&field_pe(k));
        }
        r?;
    }
    Ok(())
}

/// Adds `v` at `node` (the node of `v`'s path).
fn collect_value(v: &Value, meta: &FieldMeta, node: &mut FieldSet, strict: bool, depth: usize) -> Result<()> {
    match v {
        // An empty map is owned as a whole (e.g. `emptyDir: {}`), a non-empty one through its
        // fields.
        Value::Object(m) if m.is_empty() => node.member = true,
        Value::Object(m) => collect_map(m, meta.ty, node, strict, depth + 1)?,
        Value::Array(items) => match list_kind(items, meta, strict)? {
            ListKind::Keyed(key) => {
                for item in items {
                    let Value::Object(m) = item else { continue };
                    let Some(pe) = element_key(m, key) else { continue };
                    let child = node.child_owned(pe);
                    child.member = true;
                    collect_map(m, meta.ty, child, strict, depth + 1)?;
                }
            }
            ListKind::Set => {
                for item in items {
                    node.child_owned(value_pe(item)).member = true;
                }
            }
            ListKind::Atomic => node.member = true,
        },
        _ => node.member = true,
    }
    Ok(())
}

/// The path-by-path construction [`object_field_set`] replaced: every member inserted from the
/// root. Kept as the reference the one-walk construction is tested against.
#[cfg(test)]
fn object_field_set_by_paths(obj: &Value, ty: Ty, strict: bool) -> Result<FieldSet> {
    fn map(
        m: &Map<String, Value>,
        ty: Option<Ty>,
        prefix: &mut Path,
        set: &mut FieldSet,
        strict: bool,
        depth: usize,
    ) -> Result<()> {
        guard(depth)?;
        for (k, v) in m {
            if v.is_null() {
                continue;
            }
            let meta = schema::field(ty, k);
            prefix.push(field_pe(k));
            value(v, &meta, prefix, set, strict, depth + 1)?;
            prefix.pop();
        }
        Ok(())
    }
    fn value(
        v: &Value,
        meta: &FieldMeta,
        prefix: &mut Path,
        set: &mut FieldSet,
        strict: bool,
        depth: usize,
    ) -> Result<()> {
        match v {
            Value::Object(m) if m.is_empty() => set.insert(prefix),
            Value::Object(m) => map(m, meta.ty, prefix, set, strict, depth + 1)?,
            Value::Array(items) => match list_kind(items, meta, strict)? {
                ListKind::Keyed(key) => {
                    for item in items {
                        let Value::Object(m) = item else { continue };
                        let Some(pe) = element_key(m, key) else { continue };
                        prefix.push(pe);
                        set.insert(prefix);
                        map(m, meta.ty, prefix, set, strict, depth + 1)?;
                        prefix.pop();
                    }
                }
                ListKind::Set => {
                    for item in items {
                        prefix.push(value_pe(item));
                        set.insert(prefix);
                        prefix.pop();
                    }
                }
                ListKind::Atomic => set.insert(prefix),
            },
            _ => set.insert(prefix),
        }
        Ok(())
    }
    let mut set = FieldSet::default();
    if let Value::Object(m) = obj {
        map(m, Some(ty), &mut Vec::new(), &mut set, strict, 0)?;
    }
    set.remove(&[field_pe("apiVersion")]);
    set.remove(&[field_pe("kind")]);
    set.remove(&[field_pe("metadata")]);
    for f in STRIPPED_METADATA {
        set.remove(&[field_pe("metadata"), field_pe(f)]);
    }
    Ok(set)
}

/// An element's identity in an associative list, as its field-path element. Server-side apply
/// keys lists by `x-kubernetes-list-map-keys`, which for ports also include the protocol — 53/UDP
/// and 53/TCP are two entries (kube-dns has both) — where strategic merge keys by the port alone;
/// a missing protocol is its default, TCP.
fn element_key(m: &Map<String, Value>, key: &str) -> Option<String> {
    let kv = m.get(key).filter(|v| !v.is_null())?;
    match key {
        "port" | "containerPort" => {
            let proto = m.get("protocol").filter(|v| !v.is_null()).cloned().unwrap_or_else(|| Value::from("TCP"));
            let mut k = Map::new();
            k.insert(key.to_string(), kv.clone());
            k.insert("protocol".to_string(), proto);
            Some(format!("k:{}", crate::util::canonical_json(&Value::Object(k))))
        }
        _ => Some(key_pe(key, kv)),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListKind {
    Keyed(&'static str),
    Set,
    Atomic,
}

/// How apply treats a given list value. A list that cannot be associative (an element without
/// its key, duplicate keys) is an error in a configuration (`strict`) and atomic in a stored
/// object, so that a bad stored object never blocks writes.
fn list_kind(items: &[Value], meta: &FieldMeta, strict: bool) -> Result<ListKind> {
    match meta.strategy {
        Some(ListStrategy::Merge { key }) => {
            let mut seen = HashSet::new();
            for item in items {
                let kv = item.as_object().and_then(|m| m.get(key)).filter(|v| !v.is_null());
                let Some(kv) = kv else {
                    if strict {
                        return Err(PatchError::Invalid(format!(
                            "associative list with keys has an element that omits key field {key:?}: {item}"
                        )));
                    }
                    return Ok(ListKind::Atomic);
                };
                let pe = item.as_object().and_then(|m| element_key(m, key)).unwrap_or_else(|| key_pe(key, kv));
                if !seen.insert(pe) {
                    if strict {
                        return Err(PatchError::Invalid(format!("duplicate entries for key [{key}={kv}]")));
                    }
                    return Ok(ListKind::Atomic);
                }
            }
            Ok(ListKind::Keyed(key))
        }
        Some(ListStrategy::MergePrimitives) => {
            let mut seen = HashSet::new();
            for item in items {
                if item.is_object() || item.is_array() {
                    if strict {
                        return Err(PatchError::Invalid(format!("a set may only hold scalars, found {item}")));
                    }
                    return Ok(ListKind::Atomic);
                }
                if !seen.insert(value_pe(item)) && strict {
                    return Err(PatchError::Invalid(format!("duplicate entries for value {item}")));
                }
            }
            Ok(ListKind::Set)
        }
        _ => Ok(ListKind::Atomic),
    }
}

// --- merging ---------------------------------------------------------------------------------

/// Merges an apply configuration into a live value.
fn merge(live: &Value, cfg: &Value, ty: Option<Ty>, depth: usize) -> Result<Value> {
    guard(depth)?;
    let (Value::Object(l), Value::Object(c)) = (live, cfg) else {
        return Ok(cfg.clone());
    };
    let mut out = l.clone();
    for (k, cv) in c {
        let meta = schema::field(ty, k);
        let merged = match l.get(k) {
            Some(lv) => merge_field(lv, cv, &meta, depth + 1)?,
            None => cv.clone(),
        };
        out.insert(k.clone(), merged);
    }
    Ok(Value::Object(out))
}

fn merge_field(live: &Value, cfg: &Value, meta: &FieldMeta, depth: usize) -> Result<Value> {
    match (live, cfg) {
        (Value::Object(_), Value::Object(_)) => merge(live, cfg, meta.ty, depth),
        (Value::Array(l), Value::Array(c)) => match list_kind(c, meta, true)? {
            ListKind::Keyed(key) => {
                let ident = |v: &Value| v.as_object().and_then(|m| element_key(m, key));
                merge_list(l, c, ident, |lv, cv| match lv {
                    Some(lv) => merge(lv, cv, meta.ty, depth + 1),
                    None => Ok(cv.clone()),
                })
                .map(Value::Array)
            }
            ListKind::Set => merge_list(l, c, |v| Some(value_pe(v)), |_, cv| Ok(cv.clone())).map(Value::Array),
            ListKind::Atomic => Ok(cfg.clone()),
        },
        _ => Ok(cfg.clone()),
    }
}

/// Merges two keyed lists with structured-merge-diff's ordering: items only in the live list
/// keep their place, items of the configuration come in its order, new items right after the
/// configuration item before them.
fn merge_list(
    lhs: &[Value],
    rhs: &[Value],
    ident: impl Fn(&Value) -> Option<String>,
    mut merge_item: impl FnMut(Option<&Value>, &Value) -> Result<Value>,
) -> Result<Vec<Value>> {
    // Live items without an identity can never match; give them unique private ones.
    let lhs_pes: Vec<String> =
        lhs.iter().enumerate().map(|(i, v)| ident(v).unwrap_or_else(|| format!("\u{0}live#{i}"))).collect();
    let rhs_pes: Vec<String> =
        rhs.iter().enumerate().map(|(i, v)| ident(v).unwrap_or_else(|| format!("\u{0}cfg#{i}"))).collect();
    let mut observed_lhs: HashMap<&str, usize> = HashMap::new();
    for (i, pe) in lhs_pes.iter().enumerate() {
        observed_lhs.entry(pe).or_insert(i);
    }
    let observed_rhs: HashSet<&str> = rhs_pes.iter().map(String::as_str).collect();

    let mut shared: VecDeque<&str> =
        rhs_pes.iter().map(String::as_str).filter(|pe| observed_lhs.contains_key(pe)).collect();
    let mut next_shared = shared.pop_front();
    let mut merged_rhs: HashSet<&str> = HashSet::new();
    let mut out = Vec::with_capacity(lhs.len().max(rhs.len()));

    let (mut li, mut ri) = (0, 0);
    while li < lhs.len() || ri < rhs.len() {
        if li < lhs.len() && ri < rhs.len() {
            let pe = lhs_pes[li].as_str();
            if pe == rhs_pes[ri] {
                merged_rhs.insert(pe);
                out.push(merge_item(Some(&lhs[li]), &rhs[ri])?);
                li += 1;
                ri += 1;
                next_shared = shared.pop_front();
                continue;
            }
            if observed_rhs.contains(pe) && next_shared.is_some_and(|n| n != pe) {
                // A shared item, but not the next one in the configuration's order.
                li += 1;
                continue;
            }
        }
        if li < lhs.len() {
            let pe = lhs_pes[li].as_str();
            if !observed_rhs.contains(pe) {
                out.push(lhs[li].clone());
                li += 1;
                continue;
            }
            if merged_rhs.contains(pe) {
                li += 1;
                continue;
            }
        }
        if ri < rhs.len() {
            let pe = rhs_pes[ri].as_str();
            merged_rhs.insert(pe);
            let live_item = observed_lhs.get(pe).map(|&i| &lhs[i]);
            out.push(merge_item(live_item, &rhs[ri])?);
            ri += 1;
            if next_shared == Some(pe) {
                next_shared = shared.pop_front();
            }
        }
    }
    Ok(out)
}

/// Removes `path` from `v`; maps and lists left empty by the removal go too, unless someone
/// owns them (Go structs drop empty `omitempty` fields the same way).
fn remove_path(v: &mut Value, path: &[String], owned: &FieldSet, prefix: &mut Path) -> bool {
    let Some((head, rest)) = path.split_first() else { return false };
    let Some(pe) = parse_pe(head) else { return false };
    if rest.is_empty() {
        return remove_child(v, &pe);
    }
    let Some(child) = child_mut(v, &pe) else { return false };
    prefix.push(head.clone());
    let removed = remove_path(child, rest, owned, prefix);
    let emptied = match child {
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    };
    if removed && emptied && matches!(pe, PathElement::Field(_)) && !owned.contains(prefix) {
        remove_child(v, &pe);
    }
    prefix.pop();
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> GroupKind {
        GroupKind::new("", "Pod")
    }

    fn managed(obj: &Value) -> &Vec<Value> {
        obj["metadata"]["managedFields"].as_array().expect("managedFields")
    }

    fn entry<'a>(obj: &'a Value, manager: &str) -> Option<&'a Value> {
        managed(obj).iter().find(|e| e["manager"] == manager)
    }

    fn without_managed(mut v: Value) -> Value {
        remove_managed_fields(&mut v);
        v
    }

    fn nginx(image: &str) -> Value {
        json!({
            "apiVersion":"v1","kind":"Pod",
            "metadata":{"name":"nginx","namespace":"default","labels":{"app":"web"}},
            "spec":{"containers":[{"name":"nginx","image":image,"ports":[{"containerPort":80}]}]}
        })
    }

    /// Objects of several kinds and shapes: keyed lists (containers, ports with and without a
    /// protocol), sets (finalizers), atomic lists (args, tolerations), empty maps (emptyDir),
    /// nulls, maps whose fields are all null, empty lists, duplicate keys in a stored object.
    fn field_set_samples() -> Vec<(GroupKind, Value)> {
        vec![
            (pod(), nginx("nginx:1.7.9")),
            (
                pod(),
                json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "p", "namespace": "default", "uid": "u", "generation": 1,
                        "creationTimestamp": "2026-11-27T00:00:00Z", "resourceVersion": "5",
                        "labels": {"app": "bench", "tier": "web"}, "annotations": {"a": "b"},
                        "finalizers": ["x/y", "x/z"], "ownerReferences": [{"uid": "o", "name": "rs", "kind": "ReplicaSet", "apiVersion": "apps/v1"}]},
                    "spec": {
                        "containers": [
                            {"name": "a", "image": "nginx", "args": ["-x", "-y"], "ports": [{"containerPort": 80}, {"containerPort": 53, "protocol": "UDP"}],
                             "env": [{"name": "E", "value": "1"}, {"name": "F", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                             "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}, "volumeMounts": [{"name": "v", "mountPath": "/v"}]},
                            {"name": "b", "image": "busybox", "resources": {}, "securityContext": {"privileged": null}}
                        ],
                        "volumes": [{"name": "v", "emptyDir": {}}],
                        "tolerations": [{"key": "k", "operator": "Exists"}],
                        "nodeSelector": null, "affinity": {"nodeAffinity": null},
                        "initContainers": [], "restartPolicy": "Always"
                    },
                    "status": {"phase": "Pending", "qosClass": "Burstable", "conditions": [{"type": "Ready", "status": "False"}]}
                }),
            ),
            (
                pod(),
                // A stored object with a keyed list that cannot be associative: atomic.
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "d"},
                    "spec": {"containers": [{"name": "a"}, {"name": "a"}, {"image": "x"}]}}),
            ),
            (
                GroupKind::new("apps", "Deployment"),
                json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"app": "web"}},
                    "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx", "ports": [{"containerPort": 80}]}]}}}}),
            ),
            (
                GroupKind::new("", "Service"),
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
                    "spec": {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53}], "selector": {"app": "dns"}, "clusterIPs": ["10.0.0.10"]}}),
            ),
            (
                cm(),
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1", "b": ""}}),
            ),
            (cm(), json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})),
        ]
    }

    #[test]
    fn one_walk_field_set_is_the_path_by_path_one() {
        for (gk, obj) in field_set_samples() {
            let ty = schema::root(&gk);
            for strict in [false, true] {
                let fast = object_field_set(&obj, ty, strict);
                let reference = object_field_set_by_paths(&obj, ty, strict);
                match (fast, reference) {
                    (Ok(a), Ok(b)) => assert_eq!(a, b, "{obj}"),
                    (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                    (a, b) => panic!("{obj}: {a:?} vs {b:?}"),
                }
            }
        }
    }

    #[test]
    fn create_records_what_a_field_by_field_comparison_records() {
        // On a create every field is the creator's; the general path (comparing each field with
        // an object that has none) must agree, entry for entry, with the shortcut.
        let strip_time = |mut v: Value| {
            for e in v["metadata"]["managedFields"].as_array_mut().into_iter().flatten() {
                e.as_object_mut().unwrap().remove("time");
            }
            v
        };
        for (gk, obj) in field_set_samples() {
            let created = update_managed_fields(None, &obj, "creator", &gk).unwrap();
            let owned = update_managed_fields_owned(None, obj.clone(), "creator", &gk).unwrap();
            let compared = update_managed_fields(Some(&json!({})), &obj, "creator", &gk).unwrap();
            assert_eq!(strip_time(created.clone()), strip_time(compared), "{obj}");
            assert_eq!(strip_time(created.clone()), strip_time(owned));
            let reference = object_field_set_by_paths(&obj, schema::root(&gk), false).unwrap();
            if reference.is_empty() {
                assert!(created["metadata"].get("managedFields").is_none(), "no fields, no entry: {created}");
            } else {
                let fields = &created["metadata"]["managedFields"][0]["fieldsV1"];
                assert_eq!(fields, &reference.into_fields_v1());
            }
        }
        // With managedFields in the request (the creator's entry and another manager's).
        let mut obj = nginx("nginx:1");
        obj["metadata"]["managedFields"] = json!([
            {"manager": "creator", "operation": "Update", "apiVersion": "v1", "time": "2020-01-01T00:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}, "subresource": ""},
            {"manager": "other", "operation": "Apply", "apiVersion": "v1", "time": "2020-01-01T00:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {"f:app": {}}}}}
        ]);
        let created = update_managed_fields_owned(None, obj.clone(), "creator", &pod()).unwrap();
        let compared = update_managed_fields(Some(&json!({})), &obj, "creator", &pod()).unwrap();
        assert_eq!(strip_time(created), strip_time(compared));
    }

    #[test]
    fn service_ports_are_keyed_by_port_and_protocol() {
        let svc = GroupKind::new("", "Service");
        let dns = json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "kube-dns", "namespace": "kube-system"},
            "spec": {"ports": [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}
        });
        let got = apply(None, &dns, "kubectl", &svc, false).unwrap();
        assert_eq!(without_managed(got.clone()), dns);
        let f = &entry(&got, "kubectl").unwrap()["fieldsV1"]["f:spec"]["f:ports"];
        assert!(f.get("k:{\"port\":53,\"protocol\":\"UDP\"}").is_some(), "{f}");
        assert!(f.get("k:{\"port\":53,\"protocol\":\"TCP\"}").is_some(), "{f}");
        // Re-applied with the TCP port renamed: only that entry changes.
        let mut again = dns.clone();
        again["spec"]["ports"][1]["name"] = json!("dns-over-tcp");
        let got = apply(Some(&got), &again, "kubectl", &svc, false).unwrap();
        assert_eq!(got["spec"]["ports"], again["spec"]["ports"]);
        // A true duplicate is still refused.
        let mut dup = dns.clone();
        dup["spec"]["ports"][1]["protocol"] = json!("UDP");
        assert!(apply(None, &dup, "kubectl", &svc, false).is_err());
    }

    #[test]
    fn create_records_fields_v1() {
        let got = apply(None, &nginx("nginx:1.7.9"), "kubectl", &pod(), false).unwrap();
        assert_eq!(without_managed(got.clone()), nginx("nginx:1.7.9"));
        let e = entry(&got, "kubectl").unwrap();
        assert_eq!(e["operation"], "Apply");
        assert_eq!(e["apiVersion"], "v1");
        assert_eq!(e["fieldsType"], "FieldsV1");
        assert!(e["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(
            e["fieldsV1"],
            json!({
                "f:metadata":{"f:labels":{"f:app":{}}},
                "f:spec":{"f:containers":{"k:{\"name\":\"nginx\"}":{
                    ".":{},"f:image":{},"f:name":{},
                    "f:ports":{"k:{\"containerPort\":80,\"protocol\":\"TCP\"}":{".":{},"f:containerPort":{}}}}}}
            })
        );
    }

    #[test]
    fn reapply_changes_image_and_keeps_server_fields() {
        let created = apply(None, &nginx("nginx:1.7.9"), "kubectl", &pod(), false).unwrap();
        // The server adds defaults and status that nobody applied.
        let mut live = created;
        live["metadata"]["uid"] = json!("u1");
        live["spec"]["containers"][0]["imagePullPolicy"] = json!("IfNotPresent");
        live["spec"]["containers"][0]["ports"][0]["protocol"] = json!("TCP");
        live["spec"]["restartPolicy"] = json!("Always");
        live["status"] = json!({"phase":"Running"});

        let got = apply(Some(&live), &nginx("nginx:1.9"), "kubectl", &pod(), false).unwrap();
        assert_eq!(got["spec"]["containers"][0]["image"], "nginx:1.9");
        assert_eq!(got["spec"]["containers"][0]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(got["spec"]["containers"][0]["ports"], json!([{"containerPort":80,"protocol":"TCP"}]));
        assert_eq!(got["spec"]["restartPolicy"], "Always");
        assert_eq!(got["status"], json!({"phase":"Running"}));
        assert_eq!(got["metadata"]["uid"], "u1");
        assert_eq!(managed(&got).len(), 1);
    }

    #[test]
    fn removing_a_field_from_the_config_removes_it() {
        let mut cfg = nginx("nginx:1.7.9");
        cfg["metadata"]["labels"]["tier"] = json!("frontend");
        cfg["metadata"]["annotations"] = json!({"note":"x"});
        cfg["spec"]["containers"][0]["env"] = json!([{"name":"A","value":"1"},{"name":"B","value":"2"}]);
        let live = apply(None, &cfg, "kubectl", &pod(), false).unwrap();

        let mut cfg2 = nginx("nginx:1.7.9");
        cfg2["spec"]["containers"][0]["env"] = json!([{"name":"A","value":"1"}]);
        let got = apply(Some(&live), &cfg2, "kubectl", &pod(), false).unwrap();
        assert_eq!(got["metadata"]["labels"], json!({"app":"web"}));
        // The annotations map went empty and disappears, like an omitempty Go field.
        assert!(got["metadata"].get("annotations").is_none());
        assert_eq!(got["spec"]["containers"][0]["env"], json!([{"name":"A","value":"1"}]));
        let fields = &entry(&got, "kubectl").unwrap()["fieldsV1"];
        assert!(fields["f:metadata"]["f:labels"].get("f:tier").is_none());
    }

    #[test]
    fn fields_owned_by_another_manager_survive() {
        let mut cfg = nginx("nginx:1.7.9");
        cfg["metadata"]["labels"]["shared"] = json!("yes");
        let live = apply(None, &cfg, "kubectl", &pod(), false).unwrap();
        // A controller also applies the same label value: shared ownership.
        let ctrl_cfg = json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"nginx","labels":{"shared":"yes"}}});
        let live = apply(Some(&live), &ctrl_cfg, "controller", &pod(), false).unwrap();
        assert_eq!(managed(&live).len(), 2);

        let got = apply(Some(&live), &nginx("nginx:1.7.9"), "kubectl", &pod(), false).unwrap();
        assert_eq!(got["metadata"]["labels"], json!({"app":"web","shared":"yes"}));
        // The controller removing its label now really removes it.
        let ctrl_cfg2 = json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"nginx"}});
        let got = apply(Some(&got), &ctrl_cfg2, "controller", &pod(), false).unwrap();
        assert_eq!(got["metadata"]["labels"], json!({"app":"web"}));
        assert!(entry(&got, "controller").is_none(), "empty entries are dropped");
    }

    #[test]
    fn force_takes_over_conflicting_fields() {
        let live = apply(None, &nginx("nginx:1.7.9"), "kubectl", &pod(), false).unwrap();
        let other = json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"nginx"},
                           "spec":{"containers":[{"name":"nginx","image":"nginx:2"}]}});
        let err = apply(Some(&live), &other, "ci", &pod(), false).unwrap_err();
        assert_eq!(
            err.message(),
            "Apply failed with 1 conflict: conflict with \"kubectl\": .spec.containers[name=\"nginx\"].image"
        );
        assert_eq!(err.status_code(), 409);
        let got = apply(Some(&live), &other, "ci", &pod(), true).unwrap();
        assert_eq!(got["spec"]["containers"][0]["image"], "nginx:2");
        let kubectl = &entry(&got, "kubectl").unwrap()["fieldsV1"];
        let c = &kubectl["f:spec"]["f:containers"]["k:{\"name\":\"nginx\"}"];
        assert!(c.get("f:image").is_none(), "kubectl lost the image: {kubectl}");
        assert!(c.get("f:name").is_some(), "same-valued fields stay shared");
        // kubectl dropping the whole container does not remove what ci still owns.
        let kubectl_cfg = json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"nginx","labels":{"app":"web"}}});
        let got = apply(Some(&got), &kubectl_cfg, "kubectl", &pod(), false).unwrap();
        assert_eq!(got["spec"]["containers"], json!([{"name":"nginx","image":"nginx:2"}]));
    }

    #[test]
    fn associative_lists_merge_by_key_with_apply_ordering() {
        let live = json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},
            "spec":{"containers":[{"name":"a","image":"1"},{"name":"server","image":"s"},{"name":"b","image":"1"}]}});
        let cfg = json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},
            "spec":{"containers":[{"name":"b","image":"2"},{"name":"new","image":"n"},{"name":"a","image":"2"}]}});
        let got = apply(Some(&live), &cfg, "m", &pod(), false).unwrap();
        let names: Vec<&str> =
            got["spec"]["containers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["server", "b", "new", "a"]);
        assert_eq!(got["spec"]["containers"][1]["image"], "2");
        // Sets union; atomic lists are replaced.
        let live = json!({"metadata":{"name":"p","finalizers":["x"]},"spec":{"tolerations":[{"key":"a"}]}});
        let cfg = json!({"metadata":{"name":"p","finalizers":["y"]},"spec":{"tolerations":[{"key":"b"}]}});
        let got = apply(Some(&live), &cfg, "m", &pod(), false).unwrap();
        assert_eq!(got["metadata"]["finalizers"], json!(["x", "y"]));
        assert_eq!(got["spec"]["tolerations"], json!([{"key":"b"}]));
        let fields = &entry(&got, "m").unwrap()["fieldsV1"];
        assert_eq!(fields["f:metadata"]["f:finalizers"], json!({"v:\"y\"":{}}));
        assert_eq!(fields["f:spec"]["f:tolerations"], json!({}));
    }

    #[test]
    fn invalid_configurations() {
        let bad = [
            json!([]),
            json!("x"),
            json!({"metadata":"x"}),
            json!({"metadata":{"managedFields":[{"manager":"x"}]}}),
            json!({"spec":{"containers":[{"image":"no-name"}]}}),
            json!({"spec":{"containers":[{"name":"a"},{"name":"a"}]}}),
            json!({"metadata":{"finalizers":[{"a":1}]}}),
        ];
        for cfg in bad {
            let e = apply(None, &cfg, "m", &pod(), false).unwrap_err();
            assert_eq!(e.status_code(), 400, "{cfg}");
        }
        assert!(apply(None, &json!({}), "", &pod(), false).is_err());
        assert!(apply(Some(&json!(3)), &json!({}), "m", &pod(), false).is_err());
        // An empty managedFields list is tolerated; nulls are dropped.
        let got = apply(
            None,
            &json!({"metadata":{"name":"x","managedFields":[]},"data":{"a":null,"b":"1"}}),
            "m",
            &GroupKind::new("", "ConfigMap"),
            false,
        )
        .unwrap();
        assert_eq!(got["data"], json!({"b":"1"}));
    }

    #[test]
    fn malformed_managed_fields_in_live_are_ignored() {
        let live = json!({"metadata":{"name":"x","managedFields":[1, {"manager":"a","operation":"Apply","fieldsV1":"bad"},
            {"manager":"b","operation":"Update","fieldsType":"FieldsV2"}]},"data":{"k":"v"}});
        let got = apply(
            Some(&live),
            &json!({"metadata":{"name":"x"},"data":{"j":"w"}}),
            "m",
            &GroupKind::new("", "ConfigMap"),
            false,
        )
        .unwrap();
        assert_eq!(got["data"], json!({"k":"v","j":"w"}));
        assert_eq!(managed(&got).len(), 1);
    }

    #[test]
    fn update_tracks_ownership_for_non_apply_writers() {
        let cm = GroupKind::new("", "ConfigMap");
        let created = update_managed_fields(
            None,
            &json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"},"data":{"a":"1"}}),
            "kubectl-create",
            &cm,
        )
        .unwrap();
        let e = entry(&created, "kubectl-create").unwrap();
        assert_eq!(e["operation"], "Update");
        assert_eq!(e["fieldsV1"], json!({"f:data":{"f:a":{}}}));

        // Apply by another manager adds b and changes a: a conflict with the creator, unless
        // forced, and then ssa takes a.
        let cfg = json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"},"data":{"a":"2","b":"1"}});
        let err = apply(Some(&created), &cfg, "ssa", &cm, false).unwrap_err();
        assert_eq!(
            err,
            PatchError::Conflict(
                "Apply failed with 1 conflict: conflict with \"kubectl-create\" using v1: .data.a".into(),
                vec![ConflictCause { manager: "\"kubectl-create\" using v1".into(), field: ".data.a".into() }]
            )
        );
        let applied = apply(Some(&created), &cfg, "ssa", &cm, true).unwrap();
        assert!(entry(&applied, "kubectl-create").is_none());

        // An update that changes b moves b to the updater; the applier then drops b from its
        // config but b stays, owned by the updater.
        let mut updated = applied.clone();
        updated["data"]["b"] = json!("9");
        let updated = update_managed_fields(Some(&applied), &updated, "editor", &cm).unwrap();
        assert_eq!(entry(&updated, "editor").unwrap()["fieldsV1"], json!({"f:data":{"f:b":{}}}));
        let reapplied = apply(
            Some(&updated),
            &json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"},"data":{"a":"2"}}),
            "ssa",
            &cm,
            false,
        )
        .unwrap();
        assert_eq!(reapplied["data"], json!({"a":"2","b":"9"}));

        // Fields deleted by an update are owned by nobody any more.
        let mut gone = reapplied.clone();
        gone["data"].as_object_mut().unwrap().remove("b");
        let gone = update_managed_fields(Some(&reapplied), &gone, "editor", &cm).unwrap();
        assert!(entry(&gone, "editor").is_none());

        // Unchanged writes record nothing; `[{}]` clears managedFields.
        let same = update_managed_fields(Some(&gone), &gone, "noop", &cm).unwrap();
        assert!(entry(&same, "noop").is_none());
        let mut cleared = gone.clone();
        cleared["metadata"]["managedFields"] = json!([{}]);
        let cleared = update_managed_fields(Some(&gone), &cleared, "noop", &cm).unwrap();
        assert!(cleared["metadata"].get("managedFields").is_none());
    }

    fn cm() -> GroupKind {
        GroupKind::new("", "ConfigMap")
    }

    fn config_map(data: Value) -> Value {
        json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c","namespace":"default"},"data":data})
    }

    fn owns(obj: &Value, manager: &str, field: &str) -> bool {
        entry(obj, manager).is_some_and(|e| e["fieldsV1"]["f:data"].get(field).is_some())
    }

    #[test]
    fn conflicting_apply_fails_without_force_and_takes_over_with_it() {
        let live = apply(None, &config_map(json!({"k":"v"})), "mgr", &cm(), false).unwrap();
        let cfg = config_map(json!({"k":"w"}));

        let err = apply(Some(&live), &cfg, "mgr2", &cm(), false).unwrap_err();
        assert_eq!(
            err,
            PatchError::Conflict(
                "Apply failed with 1 conflict: conflict with \"mgr\": .data.k".into(),
                vec![ConflictCause { manager: "\"mgr\"".into(), field: ".data.k".into() }]
            )
        );
        assert_eq!((err.status_code(), err.reason()), (409, "Conflict"));

        let got = apply(Some(&live), &cfg, "mgr2", &cm(), true).unwrap();
        assert_eq!(got["data"], json!({"k":"w"}));
        assert!(owns(&got, "mgr2", "f:k"));
        assert!(!owns(&got, "mgr", "f:k"), "mgr lost k");
        assert!(entry(&got, "mgr").is_none(), "an entry left empty is dropped");

        // Now the original applier is the one in conflict.
        let err = apply(Some(&got), &config_map(json!({"k":"v"})), "mgr", &cm(), false).unwrap_err();
        assert_eq!(err.message(), "Apply failed with 1 conflict: conflict with \"mgr2\": .data.k");
    }

    #[test]
    fn same_value_is_shared_not_a_conflict() {
        let live = apply(None, &config_map(json!({"k":"v","own":"1"})), "mgr", &cm(), false).unwrap();
        let got = apply(Some(&live), &config_map(json!({"k":"v"})), "mgr2", &cm(), false).unwrap();
        assert_eq!(got["data"], json!({"k":"v","own":"1"}));
        assert!(owns(&got, "mgr", "f:k"));
        assert!(owns(&got, "mgr2", "f:k"));
        // An applier changing only its own fields never conflicts.
        let got = apply(Some(&got), &config_map(json!({"k":"v","own":"2"})), "mgr", &cm(), false).unwrap();
        assert_eq!(got["data"]["own"], "2");
    }

    #[test]
    fn update_owners_conflict_with_appliers() {
        let mut cfg = config_map(json!({"k":"v"}));
        cfg["metadata"]["labels"] = json!({"tier":"web"});
        let live = apply(None, &cfg, "mgr", &cm(), false).unwrap();

        // `kubectl edit` changes the label: an Update entry takes it from mgr.
        let mut edited = live.clone();
        edited["metadata"]["labels"]["tier"] = json!("db");
        let edited = update_managed_fields(Some(&live), &edited, "kubectl-edit", &cm()).unwrap();
        let e = entry(&edited, "kubectl-edit").unwrap();
        assert_eq!(e["operation"], "Update");
        assert_eq!(e["apiVersion"], "v1");
        assert_eq!(e["fieldsV1"], json!({"f:metadata":{"f:labels":{"f:tier":{}}}}));

        // mgr re-applying its own (now stale) value conflicts with the editor.
        let err = apply(Some(&edited), &cfg, "mgr", &cm(), false).unwrap_err();
        assert_eq!(
            err.message(),
            "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using v1: .metadata.labels.tier"
        );
        // Agreeing with the editor is fine, and forcing wins.
        let mut agree = cfg.clone();
        agree["metadata"]["labels"]["tier"] = json!("db");
        apply(Some(&edited), &agree, "mgr", &cm(), false).unwrap();
        let forced = apply(Some(&edited), &cfg, "mgr", &cm(), true).unwrap();
        assert_eq!(forced["metadata"]["labels"]["tier"], "web");
        assert!(entry(&forced, "kubectl-edit").is_none());

        // A manager's own Update entry is another manager to its Apply, as in Kubernetes.
        let mut self_edit = live.clone();
        self_edit["data"]["k"] = json!("x");
        let self_edit = update_managed_fields(Some(&live), &self_edit, "mgr", &cm()).unwrap();
        let err = apply(Some(&self_edit), &cfg, "mgr", &cm(), false).unwrap_err();
        assert_eq!(err.message(), "Apply failed with 1 conflict: conflict with \"mgr\" using v1: .data.k");
    }

    #[test]
    fn unowned_fields_never_conflict() {
        // Written before field management, or by a writer that recorded nothing.
        let live = config_map(json!({"k":"v"}));
        let got = apply(Some(&live), &config_map(json!({"k":"w","n":"1"})), "mgr", &cm(), false).unwrap();
        assert_eq!(got["data"], json!({"k":"w","n":"1"}));
        assert!(owns(&got, "mgr", "f:k"));
        // A field owned by someone else but not touched by the configuration is no conflict.
        let got = apply(Some(&got), &config_map(json!({"other":"1"})), "mgr2", &cm(), false).unwrap();
        assert_eq!(got["data"], json!({"k":"w","n":"1","other":"1"}));
    }

    #[test]
    fn several_conflicts_are_grouped_by_manager() {
        let live = apply(None, &config_map(json!({"b":"1","a":"1","z":"1"})), "mgr", &cm(), false).unwrap();
        let err = apply(Some(&live), &config_map(json!({"a":"2","b":"2"})), "ci", &cm(), false).unwrap_err();
        assert_eq!(err.message(), "Apply failed with 2 conflicts: conflicts with \"mgr\":\n- .data.a\n- .data.b");

        let mut edited = live.clone();
        edited["metadata"]["labels"] = json!({"x":"1"});
        edited["data"]["z"] = json!("2");
        let edited = update_managed_fields(Some(&live), &edited, "kubectl-edit", &cm()).unwrap();
        let mut cfg = config_map(json!({"a":"3","b":"3","z":"3"}));
        cfg["metadata"]["labels"] = json!({"x":"3"});
        let err = apply(Some(&edited), &cfg, "ci", &cm(), false).unwrap_err();
        assert_eq!(
            err.message(),
            "Apply failed with 4 conflicts: conflicts with \"kubectl-edit\" using v1:\n\
             - .data.z\n\
             - .metadata.labels.x\n\
             conflicts with \"mgr\":\n\
             - .data.a\n\
             - .data.b"
        );
        // One cause per conflicting field, in the message's order.
        let causes: Vec<(&str, &str)> =
            err.conflict_causes().iter().map(|c| (c.manager.as_str(), c.field.as_str())).collect();
        assert_eq!(
            causes,
            [
                ("\"kubectl-edit\" using v1", ".data.z"),
                ("\"kubectl-edit\" using v1", ".metadata.labels.x"),
                ("\"mgr\"", ".data.a"),
                ("\"mgr\"", ".data.b"),
            ]
        );
        // Forced, ci owns all four and both other entries are emptied.
        let got = apply(Some(&edited), &cfg, "ci", &cm(), true).unwrap();
        assert_eq!(managed(&got).len(), 1);
        assert_eq!(got["data"], json!({"a":"3","b":"3","z":"3"}));
    }
}
