//! `meta.k8s.io/v1` Table rendering, as the API server does for
//! `Accept: application/json;as=Table;v=v1;g=meta.k8s.io` (what `kubectl get` asks for).
//!
//! Column definitions and cells follow `pkg/printers/internalversion/printers.go`
//! of Kubernetes 1.33. The API server always prints with `Wide: true` and lets
//! kubectl hide priority-1 columns, so rows here always carry the wide cells.

mod descriptions;
mod duration;
mod printers;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

pub use duration::human_duration;

/// What each row's `object` holds (`?includeObject=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum IncludeObject {
    /// No object in the row.
    None,
    /// A `PartialObjectMetadata` with the object's metadata (the default;
    /// kubectl reads labels from it for `--show-labels` and `-L`).
    #[default]
    Metadata,
    /// The full object (kubectl asks for this with `--sort-by`).
    Object,
}

impl IncludeObject {
    /// Parses the `includeObject` query parameter; `""` is the default
    /// (`Metadata`) and anything other than `None`, `Metadata` or `Object` is
    /// rejected, as the API server does.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "" | "Metadata" => Some(IncludeObject::Metadata),
            "None" => Some(IncludeObject::None),
            "Object" => Some(IncludeObject::Object),
            _ => None,
        }
    }
}

/// Renders `objects` (all of one `resource`, a plural such as `"pods"` or
/// `"deployments.apps"`) as a `meta.k8s.io/v1` Table.
///
/// `now` is the reference for every AGE-like cell, so callers (and tests) get
/// deterministic output. Resources without a Kubernetes printer get `NAME AGE`
/// — what kubectl shows for custom resources — except the built-ins Kubernetes
/// itself prints as `NAME CREATED AT` (roles, clusterroles, limitranges, CRDs).
///
/// The table's `metadata` is empty; a caller serving a list should copy the
/// list's `resourceVersion`/`continue` into it, since kubectl pages through
/// large lists with `continue`.
pub fn table(resource: &str, objects: &[Value], now: DateTime<Utc>, include_object: IncludeObject) -> Value {
    table_with_options(resource, objects, now, include_object, false)
}

/// [`table`] with `TableOptions.noHeaders`: when true, `columnDefinitions` is
/// `null`, as Kubernetes sends for watch events after the first.
pub fn table_with_options(
    resource: &str,
    objects: &[Value],
    now: DateTime<Utc>,
    include_object: IncludeObject,
    no_headers: bool,
) -> Value {
    let printer = printers::printer_for(resource);
    let columns = if no_headers {
        Value::Null
    } else {
        Value::Array(
            printer
                .columns
                .iter()
                .map(|c| {
                    json!({
                        "name": c.name,
                        "type": c.ty,
                        "format": c.format,
                        "description": c.description,
                        "priority": c.priority,
                    })
                })
                .collect(),
        )
    };
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let row = (printer.row)(obj, now);
            let mut out = Map::new();
            out.insert("cells".to_string(), Value::Array(row.cells));
            if let Some(conditions) = row.conditions {
                out.insert("conditions".to_string(), conditions);
            }
            match include_object {
                IncludeObject::None => {}
                IncludeObject::Metadata => {
                    out.insert("object".to_string(), partial_object_metadata(obj));
                }
                IncludeObject::Object => {
                    out.insert("object".to_string(), obj.clone());
                }
            }
            Value::Object(out)
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {},
        "columnDefinitions": columns,
        "rows": rows,
    })
}

/// `meta.AsPartialObjectMetadata` with the kind set as the API server sets it.
pub fn partial_object_metadata(object: &Value) -> Value {
    let metadata = match &object["metadata"] {
        Value::Object(m) => Value::Object(m.clone()),
        _ => json!({}),
    };
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
    })
}

#[cfg(test)]
mod tests;
