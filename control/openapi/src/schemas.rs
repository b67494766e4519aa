//! Component schemas: generated once from the k8s-openapi types with schemars, then decorated the
//! way a Kubernetes 1.33 API server decorates them.
//!
//! schemars' `openapi3` settings already give the right shape: definitions are named by
//! `JsonSchema::schema_name()` (k8s-openapi returns the Kubernetes definition name, e.g.
//! `io.k8s.api.core.v1.Pod`), live under `#/components/schemas/`, and a `$ref` carrying siblings
//! (a field description) becomes `allOf: [{$ref}]` — exactly the form kube-openapi emits and the
//! form kubectl's strategic-merge lookup (`PatchMetaFromOpenAPIV3.resolve`) expects.

use crate::ResourceDoc;
use k8s_openapi::Resource;
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

pub(crate) const REF_PREFIX: &str = "#/components/schemas/";

/// `{"$ref": "#/components/schemas/<name>"}`.
pub(crate) fn ref_to(name: &str) -> Value {
    json!({ "$ref": format!("{REF_PREFIX}{name}") })
}

/// The component name a `$ref` string points at, if it points into `components/schemas`.
/// Kubernetes definition names contain neither `~` nor `/`, so no JSON-pointer unescaping is
/// needed (and none is done, which keeps the result borrowed).
pub(crate) fn ref_name(reference: &str) -> Option<&str> {
    reference.strip_prefix(REF_PREFIX)
}

/// Names of the schemas the paths refer to besides the served kinds. Taken from what the
/// generator returned rather than hard-coded, so a renamed definition cannot leave a dangling
/// `$ref`.
#[derive(Debug, Clone)]
pub(crate) struct Known {
    pub patch: String,
    pub status: String,
    pub delete_options: String,
    pub watch_event: String,
    pub list_meta: String,
    pub scale: String,
    pub binding: String,
    pub eviction: String,
    pub token_request: String,
    pub api_resource_list: String,
    pub api_versions: String,
    pub api_group_list: String,
    pub api_group: String,
    pub version_info: String,
}

/// Everything the documents are cut from.
pub(crate) struct Catalog {
    /// All component schemas, keyed by Kubernetes definition name.
    pub defs: Map<String, Value>,
    /// Per entry of the `resources` slice given to `build`: (kind schema, list schema) names.
    pub names: Vec<(String, String)>,
    pub known: Known,
}

/// The `{group, kind, version}` object Kubernetes uses in `x-kubernetes-group-version-kind`.
pub(crate) fn gvk(group: &str, version: &str, kind: &str) -> Value {
    json!({ "group": group, "kind": kind, "version": version })
}

fn gvk_of<K: Resource>() -> Value {
    gvk(K::GROUP, K::VERSION, K::KIND)
}

/// The name `subschema_for` registered `T` under (the returned schema is a `$ref` to it).
fn register<T: JsonSchema>(generator: &mut SchemaGenerator) -> String {
    let schema = generator.subschema_for::<T>();
    name_of(&schema).unwrap_or_else(|| T::schema_name().into_owned())
}

fn name_of(schema: &Schema) -> Option<String> {
    schema.get("$ref").and_then(Value::as_str).and_then(ref_name).map(str::to_owned)
}

impl Catalog {
    pub(crate) fn generate(resources: &[ResourceDoc]) -> Catalog {
        use k8s_openapi::api::{authentication, autoscaling, core, policy};
        use k8s_openapi::apimachinery::pkg::{api::resource::Quantity, apis::meta::v1 as meta};
        use k8s_openapi::apimachinery::pkg::{util::intstr::IntOrString, version};

        let mut generator = SchemaSettings::openapi3().into_generator();

        let mut kind_names = Vec::with_capacity(resources.len());
        let mut inlined = Vec::new();
        for r in resources {
            let schema = (r.schema)(&mut generator);
            match name_of(&schema) {
                Some(name) => kind_names.push(name),
                None => {
                    // A type that inlines itself instead of registering a definition: file it
                    // under its schema name so it can still be referenced.
                    let name = (r.schema_name)().into_owned();
                    inlined.push((name.clone(), schema.to_value()));
                    kind_names.push(name);
                }
            }
        }

        let known = Known {
            patch: register::<meta::Patch>(&mut generator),
            status: register::<meta::Status>(&mut generator),
            delete_options: register::<meta::DeleteOptions>(&mut generator),
            // WatchEvent<T>'s schema does not depend on T (the object is a RawExtension).
            watch_event: register::<meta::WatchEvent<core::v1::Pod>>(&mut generator),
            list_meta: register::<meta::ListMeta>(&mut generator),
            scale: register::<autoscaling::v1::Scale>(&mut generator),
            binding: register::<core::v1::Binding>(&mut generator),
            eviction: register::<policy::v1::Eviction>(&mut generator),
            token_request: register::<authentication::v1::TokenRequest>(&mut generator),
            api_resource_list: register::<meta::APIResourceList>(&mut generator),
            api_versions: register::<meta::APIVersions>(&mut generator),
            api_group_list: register::<meta::APIGroupList>(&mut generator),
            api_group: register::<meta::APIGroup>(&mut generator),
            version_info: register::<version::Info>(&mut generator),
        };
        let int_or_string = register::<IntOrString>(&mut generator);
        let quantity = register::<Quantity>(&mut generator);

        // `true` applies the openapi3 transforms ($ref siblings → allOf, nullable, no bool
        // schemas, ...) to every definition.
        let mut defs = generator.take_definitions(true);
        for (name, schema) in inlined {
            defs.entry(name).or_insert(schema);
        }

        // kube-openapi publishes these two as `oneOf` unions (k8s-openapi only marks them with
        // `x-kubernetes-int-or-string`); match the real documents so `kubectl explain` and any
        // schema-driven client see the same types.
        if let Some(Value::Object(s)) = defs.get_mut(&int_or_string) {
            s.remove("x-kubernetes-int-or-string");
            s.insert("format".into(), "int-or-string".into());
            s.insert("oneOf".into(), json!([{ "type": "integer" }, { "type": "string" }]));
        }
        if let Some(Value::Object(s)) = defs.get_mut(&quantity) {
            s.remove("x-kubernetes-int-or-string");
            s.insert("oneOf".into(), json!([{ "type": "string" }, { "type": "number" }]));
        }

        let mut catalog = Catalog { defs, names: Vec::new(), known };
        catalog.decorate(resources, kind_names);
        catalog
    }

    /// Adds what Kubernetes adds on top of the Go types: GVK extensions, list kinds, and the
    /// optional `metadata`.
    fn decorate(&mut self, resources: &[ResourceDoc], kind_names: Vec<String>) {
        use k8s_openapi::api::{authentication, autoscaling, core, policy};

        for (r, kind_name) in resources.iter().zip(kind_names) {
            add_gvk(&mut self.defs, &kind_name, gvk(r.group, r.version, r.kind));
            // k8s-openapi marks `metadata` required because the Rust field is not an Option;
            // Kubernetes never requires it (kubectl explain would print it as -required-).
            if let Some(Value::Object(s)) = self.defs.get_mut(&kind_name) {
                let now_empty = match s.get_mut("required") {
                    Some(Value::Array(req)) => {
                        req.retain(|v| v.as_str() != Some("metadata"));
                        req.is_empty()
                    }
                    _ => false,
                };
                if now_empty {
                    s.remove("required");
                }
            }

            let list_name = list_schema_name(&kind_name, r.kind, r.list_kind);
            if !self.defs.contains_key(&list_name) {
                let list = list_schema(&self.defs, &kind_name, r, &self.known.list_meta);
                self.defs.insert(list_name.clone(), list);
            }
            add_gvk(&mut self.defs, &list_name, gvk(r.group, r.version, r.list_kind));
            self.names.push((kind_name, list_name));
        }

        let known = self.known.clone();
        add_gvk(&mut self.defs, &known.scale, gvk_of::<autoscaling::v1::Scale>());
        add_gvk(&mut self.defs, &known.binding, gvk_of::<core::v1::Binding>());
        add_gvk(&mut self.defs, &known.eviction, gvk_of::<policy::v1::Eviction>());
        add_gvk(&mut self.defs, &known.token_request, gvk_of::<authentication::v1::TokenRequest>());
        add_gvk(&mut self.defs, &known.status, gvk("", "v1", "Status"));
        // DeleteOptions and WatchEvent are registered in every group-version, and a real server
        // lists them all on the one shared definition.
        let mut gvs: Vec<(&str, &str)> = Vec::new();
        for r in resources {
            if !gvs.contains(&(r.group, r.version)) {
                gvs.push((r.group, r.version));
            }
        }
        for (g, v) in gvs {
            add_gvk(&mut self.defs, &known.delete_options, gvk(g, v, "DeleteOptions"));
            add_gvk(&mut self.defs, &known.watch_event, gvk(g, v, "WatchEvent"));
        }
    }
}

/// `io.k8s.api.core.v1.Pod` → `io.k8s.api.core.v1.PodList`.
fn list_schema_name(kind_name: &str, kind: &str, list_kind: &str) -> String {
    match kind_name.strip_suffix(kind) {
        Some(prefix) => format!("{prefix}{list_kind}"),
        None => format!("{kind_name}List"),
    }
}

/// A list kind's schema, shaped like the ones Kubernetes generates for `XxxList` Go types
/// (k8s-openapi models lists with one generic `List<T>` that has no schema of its own).
fn list_schema(defs: &Map<String, Value>, kind_name: &str, r: &ResourceDoc, list_meta: &str) -> Value {
    // apiVersion/kind descriptions are the standard TypeMeta ones; reuse the kind's copies.
    let kind_props = defs.get(kind_name).and_then(|s| s.get("properties"));
    let prop = |name: &str, fallback: &str| {
        kind_props
            .and_then(|p| p.get(name))
            .cloned()
            .unwrap_or_else(|| json!({ "description": fallback, "type": "string" }))
    };
    let mut items = ref_to(kind_name);
    if let Value::Object(o) = &mut items {
        // kube-openapi wraps non-pointer struct items as allOf + default {}.
        let reference = o.remove("$ref").unwrap_or(Value::Null);
        o.insert("allOf".into(), json!([{ "$ref": reference }]));
        o.insert("default".into(), json!({}));
    }
    json!({
        "description": format!("{} is a list of {} objects.", r.list_kind, r.kind),
        "properties": {
            "apiVersion": prop("apiVersion", "APIVersion defines the versioned schema of this representation of an object."),
            "items": {
                "description": format!("List of {}.", r.plural),
                "items": items,
                "type": "array",
            },
            "kind": prop("kind", "Kind is a string value representing the REST resource this object represents."),
            "metadata": {
                "allOf": [ref_to(list_meta)],
                "default": {},
                "description": "Standard list metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds",
            },
        },
        "required": ["items"],
        "type": "object",
    })
}

/// Appends `entry` to the schema's `x-kubernetes-group-version-kind` array (once).
fn add_gvk(defs: &mut Map<String, Value>, name: &str, entry: Value) {
    let Some(Value::Object(schema)) = defs.get_mut(name) else {
        return;
    };
    let list = schema.entry("x-kubernetes-group-version-kind").or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(list) = list {
        if !list.contains(&entry) {
            list.push(entry);
        }
    }
}

/// The components referenced, transitively, by the `$ref`s inside `seed` (a document's paths):
/// exactly the components that one document has to carry.
pub(crate) fn closure(defs: &Map<String, Value>, seed: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    let mut pending: Vec<&str> = Vec::new();
    collect_refs(seed, &mut pending);
    while let Some(name) = pending.pop() {
        if out.contains_key(name) {
            continue;
        }
        let Some(schema) = defs.get(name) else {
            continue;
        };
        out.insert(name.to_owned(), schema.clone());
        collect_refs(schema, &mut pending);
    }
    out
}

/// Pushes every `$ref` target. A `$ref` key whose value is not a string is a property *named*
/// `$ref` (JSONSchemaProps has one), not a reference, so it is descended into instead.
fn collect_refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                match (k.as_str(), v) {
                    ("$ref", Value::String(s)) => {
                        if let Some(n) = ref_name(s) {
                            out.push(n);
                        }
                    }
                    _ => collect_refs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}
