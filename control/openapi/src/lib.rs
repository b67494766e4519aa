//! OpenAPI v3 documents for `/openapi/v3`, shaped like a Kubernetes 1.33 API server's.
//!
//! kubectl depends on them for more than `explain`:
//! - `create`/`apply`/`replace` look for a `fieldValidation` query parameter on the kind's PATCH
//!   operation (matched by the operation's `x-kubernetes-group-version-kind`) and only then send
//!   `fieldValidation=Strict`, leaving validation to the server;
//! - client-side `apply` computes the strategic merge patch from the kind's component schema
//!   (found by its `x-kubernetes-group-version-kind`), reading `x-kubernetes-patch-merge-key` and
//!   `x-kubernetes-patch-strategy` from properties and following `allOf`/`$ref`/`items`. If a
//!   field of the object is missing from the schema it falls back to `/openapi/v2` protobuf,
//!   which Skiff does not serve — so the schemas must be complete (they come from k8s-openapi).
//!
//! [`build`] runs once at start-up; the HTTP layer serves [`Documents::index`] for
//! `GET /openapi/v3` and [`Documents::by_path`] for `GET /openapi/v3/<path>`.

mod lint;
mod patch_ext;
mod paths;
mod schemas;
mod sha512;

use bytes::Bytes;
use paths::GroupVersion;
use schemas::Catalog;
use serde_json::{Map, Value, json};
use std::borrow::Cow;
use std::collections::BTreeMap;

pub use lint::lint_openapi30;
pub use sha512::sha512_hex_upper;

/// `info.version` of every document (a real server puts its git version there).
pub const KUBERNETES_VERSION: &str = "v1.33.0";

/// Strategic-merge-patch metadata for one field, as Kubernetes' Go struct tags declare it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PatchMeta {
    /// `"merge"`, `"retainKeys"`, `"merge,retainKeys"`; empty for none.
    pub strategy: &'static str,
    /// The list-element key for `merge` on lists of objects (`name`, `containerPort`, ...).
    pub merge_key: Option<&'static str>,
}

/// One served resource (a kind at a group-version) to publish.
#[derive(Clone, Debug)]
pub struct ResourceDoc {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub list_kind: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
    /// `status`, `scale`, `binding`, `eviction`, `ephemeralcontainers`, `resize`, `approval`,
    /// `finalize`, `token`; anything else (connect-style `exec`, `log`, ...) is not published.
    pub subresources: Vec<&'static str>,
    /// Kubernetes verbs: `get list watch create update patch delete deletecollection`.
    pub verbs: Vec<&'static str>,
    /// Registers the kind's schema in a generator and returns the `$ref` to it.
    pub schema: fn(&mut schemars::SchemaGenerator) -> schemars::Schema,
    /// The kind's Kubernetes definition name (`io.k8s.api.core.v1.Pod`).
    pub schema_name: fn() -> Cow<'static, str>,
}

fn subschema<K: schemars::JsonSchema>(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    generator.subschema_for::<K>()
}

impl ResourceDoc {
    /// Describes `K`. Matches `fn(&'static str, bool, Vec<&'static str>, Vec<&'static str>) ->
    /// ResourceDoc`, so `ResourceDoc::of::<Pod>` can be stored as a plain function pointer.
    pub fn of<K>(
        plural: &'static str,
        namespaced: bool,
        subresources: Vec<&'static str>,
        verbs: Vec<&'static str>,
    ) -> ResourceDoc
    where
        K: k8s_openapi::ListableResource + schemars::JsonSchema,
    {
        ResourceDoc {
            group: K::GROUP,
            version: K::VERSION,
            kind: K::KIND,
            list_kind: K::LIST_KIND,
            plural,
            namespaced,
            subresources,
            verbs,
            schema: subschema::<K>,
            schema_name: K::schema_name,
        }
    }

    /// The document path of this resource's group-version: `api/v1`, `apis/apps/v1`.
    pub fn document_path(&self) -> String {
        document_path(self.group, self.version)
    }
}

fn document_path(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") }
}

/// The published documents.
#[derive(Clone, Debug)]
pub struct Documents {
    /// `GET /openapi/v3`: `{"paths": {"api/v1": {"serverRelativeURL": "/openapi/v3/api/v1?hash=…"}, …}}`.
    pub index: Value,
    /// Document path (`api/v1`, `apis/apps/v1`, `apis/apps`, `api`, `apis`, `version`) →
    /// (hash, serialized JSON). The hash is the uppercase-hex SHA-512 of the bytes, as in
    /// Kubernetes; serve it as the `ETag` too.
    pub by_path: BTreeMap<String, (String, Bytes)>,
}

impl Documents {
    /// The serialized index.
    pub fn index_bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(&self.index).unwrap_or_default())
    }

    /// The document for `path` (without the `/openapi/v3/` prefix or the query string).
    pub fn get(&self, path: &str) -> Option<(&str, &Bytes)> {
        self.by_path.get(path.trim_matches('/')).map(|(h, b)| (h.as_str(), b))
    }
}

/// Builds every document for `resources`. `patch_meta(group, kind, path)` gives the
/// strategic-merge metadata for the field at `path` from the object root (list elements are
/// transparent: `["spec", "containers", "ports"]`); see [`PatchMeta`].
pub fn build(resources: &[ResourceDoc], patch_meta: &dyn Fn(&str, &str, &[&str]) -> Option<PatchMeta>) -> Documents {
    // One (group, version, plural) is published once, whatever the caller passes.
    let mut unique: Vec<&ResourceDoc> = Vec::new();
    for r in resources {
        if !unique.iter().any(|u| (u.group, u.version, u.plural) == (r.group, r.version, r.plural)) {
            unique.push(r);
        }
    }
    let owned: Vec<ResourceDoc> = unique.into_iter().cloned().collect();
    let resources = owned.as_slice();

    let mut catalog = Catalog::generate(resources);
    let roots: Vec<(&str, &str, &str)> = resources
        .iter()
        .zip(&catalog.names)
        .map(|(r, (kind_schema, _))| (r.group, r.kind, kind_schema.as_str()))
        .collect();
    patch_ext::annotate(&mut catalog.defs, &roots, patch_meta);

    let mut by_path = BTreeMap::new();

    // Group-versions, and the groups they belong to, in first-appearance order.
    let mut gvs: Vec<(&str, &str)> = Vec::new();
    for r in resources {
        if !gvs.contains(&(r.group, r.version)) {
            gvs.push((r.group, r.version));
        }
    }
    for &(group, version) in &gvs {
        let members: Vec<(&ResourceDoc, &(String, String))> =
            resources.iter().zip(&catalog.names).filter(|(r, _)| r.group == group && r.version == version).collect();
        let gv = GroupVersion { group, version };
        let paths = paths::group_version_paths(&gv, &members, &catalog.known);
        by_path.insert(document_path(group, version), finish(paths, &catalog));
    }

    let mut groups: Vec<&str> = Vec::new();
    for &(group, _) in &gvs {
        if !group.is_empty() && !groups.contains(&group) {
            groups.push(group);
        }
    }
    for group in groups {
        let paths = paths::group_paths(group, &catalog.known);
        by_path.insert(format!("apis/{group}"), finish(paths, &catalog));
    }
    by_path.insert("api".into(), finish(paths::core_versions_paths(&catalog.known), &catalog));
    by_path.insert("apis".into(), finish(paths::groups_paths(&catalog.known), &catalog));
    by_path.insert("version".into(), finish(paths::version_paths(&catalog.known), &catalog));

    let mut index = Map::new();
    for (path, (hash, _)) in &by_path {
        index.insert(path.clone(), json!({ "serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}") }));
    }
    Documents { index: json!({ "paths": index }), by_path }
}

/// Wraps `paths` into a document carrying exactly the components it references, serializes it
/// and hashes the bytes.
fn finish(paths: Map<String, Value>, catalog: &Catalog) -> (String, Bytes) {
    let paths = Value::Object(paths);
    let components = schemas::closure(&catalog.defs, &paths);
    let doc = json!({
        "components": {
            "schemas": components,
            "securitySchemes": {
                "BearerToken": {
                    "description": "Bearer Token authentication",
                    "in": "header",
                    "name": "authorization",
                    "type": "apiKey",
                },
            },
        },
        "info": { "title": "Kubernetes", "version": KUBERNETES_VERSION },
        "openapi": "3.0.0",
        "paths": paths,
        "security": [{ "BearerToken": [] }],
    });
    // serde_json cannot fail on a Value (all keys are strings); an empty body would only make
    // kubectl fall back, never crash the server.
    let bytes = serde_json::to_vec(&doc).unwrap_or_default();
    (sha512_hex_upper(&bytes), Bytes::from(bytes))
}
