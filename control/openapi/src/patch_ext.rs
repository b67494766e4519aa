//! Strategic-merge-patch metadata (`x-kubernetes-patch-strategy`, `x-kubernetes-patch-merge-key`).
//!
//! k8s-openapi's schemas do not carry the Go struct tags these come from, so the caller supplies
//! them as a function of (group, kind, field path). We walk each kind's schema from its root along
//! `properties`, through `$ref`/`allOf` and array `items`, ask for every property path, and write
//! the answer onto the property *in the component that declares it* — where kubectl reads it:
//! `PatchMetaFromOpenAPIV3.LookupPatchMetadataForSlice/Struct` takes the extensions from the
//! property schema before resolving its `$ref`.
//!
//! A component is reached through many paths (PodSpec from Pod, from PodTemplateSpec in
//! Deployment, ...). The caller's answers for the same property agree; if they ever did not, the
//! first answer wins, so the output does not depend on more than the order of `resources`.

use crate::PatchMeta;
use crate::schemas::ref_name;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Component nesting deeper than this is not followed. Kubernetes types nest about 12 deep
/// (Deployment → PodTemplateSpec → PodSpec → Volume → ... ); the cap only guards pathological
/// input.
const MAX_DEPTH: usize = 48;
/// Schema nodes visited per root before giving up: a guard against a DAG of types exploding
/// into exponentially many paths. A Pod is about 5k nodes.
const NODE_BUDGET: usize = 400_000;

pub(crate) type PatchMetaFn<'f> = &'f dyn Fn(&str, &str, &[&str]) -> Option<PatchMeta>;

/// Where a property lives: (component name, JSON-pointer segments within the component).
type Location = (String, Vec<String>);

/// Annotates `defs` in place. `roots` are (group, kind, component name of the kind).
pub(crate) fn annotate(defs: &mut Map<String, Value>, roots: &[(&str, &str, &str)], patch_meta: PatchMetaFn<'_>) {
    let mut found: BTreeMap<Location, PatchMeta> = BTreeMap::new();
    for (group, kind, component) in roots {
        let mut w = Walker {
            defs,
            group,
            kind,
            patch_meta,
            path: Vec::new(),
            stack: Vec::new(),
            budget: NODE_BUDGET,
            found: &mut found,
        };
        w.component(component);
    }

    for ((component, pointer), meta) in found {
        let pointer: String = pointer.iter().map(|s| format!("/{}", s.replace('~', "~0").replace('/', "~1"))).collect();
        let Some(Value::Object(property)) = defs.get_mut(&component).and_then(|c| c.pointer_mut(&pointer)) else {
            continue;
        };
        if !meta.strategy.is_empty() {
            property.insert("x-kubernetes-patch-strategy".into(), meta.strategy.into());
        }
        if let Some(key) = meta.merge_key {
            property.insert("x-kubernetes-patch-merge-key".into(), key.into());
        }
    }
}

struct Walker<'a, 'f> {
    defs: &'a Map<String, Value>,
    group: &'a str,
    kind: &'a str,
    patch_meta: PatchMetaFn<'f>,
    /// Field path from the object root (array items transparent).
    path: Vec<&'a str>,
    /// Components being expanded: a component already on the stack is a cycle (JSONSchemaProps).
    stack: Vec<&'a str>,
    budget: usize,
    found: &'f mut BTreeMap<Location, PatchMeta>,
}

impl<'a> Walker<'a, '_> {
    fn component(&mut self, name: &'a str) {
        if self.stack.len() >= MAX_DEPTH || self.stack.contains(&name) {
            return;
        }
        let Some(schema) = self.defs.get(name) else {
            return;
        };
        self.stack.push(name);
        let mut pointer = Vec::new();
        self.properties(schema, name, &mut pointer);
        self.stack.pop();
    }

    /// Visits the properties of an object schema located at `pointer` inside `component`.
    fn properties(&mut self, schema: &'a Value, component: &'a str, pointer: &mut Vec<&'a str>) {
        let Some(props) = schema.get("properties").and_then(Value::as_object) else {
            return;
        };
        for (field, prop) in props {
            if self.budget == 0 {
                return;
            }
            self.budget -= 1;
            self.path.push(field);
            pointer.push("properties");
            pointer.push(field);
            if let Some(meta) = (self.patch_meta)(self.group, self.kind, &self.path) {
                let key = (component.to_owned(), pointer.iter().map(|s| (*s).to_owned()).collect());
                self.found.entry(key).or_insert(meta);
            }
            self.value(prop, component, pointer);
            pointer.pop();
            pointer.pop();
            self.path.pop();
        }
    }

    /// Descends into the type of a property's value: array items, referenced components, and
    /// inline object schemas. Map values (`additionalProperties`) are not descended into: a map
    /// key is data, not a field name, so no patch metadata can be addressed through it.
    fn value(&mut self, schema: &'a Value, component: &'a str, pointer: &mut Vec<&'a str>) {
        if let Some(items) = schema.get("items").filter(|v| v.is_object()) {
            pointer.push("items");
            self.value(items, component, pointer);
            pointer.pop();
        }
        if let Some(target) = schema.get("$ref").and_then(Value::as_str).and_then(ref_name) {
            self.component(target);
        }
        if let Some(all_of) = schema.get("allOf").and_then(Value::as_array) {
            for s in all_of {
                if let Some(target) = s.get("$ref").and_then(Value::as_str).and_then(ref_name) {
                    self.component(target);
                }
            }
        }
        self.properties(schema, component, pointer);
    }
}
