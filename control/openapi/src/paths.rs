//! The `paths` object of each document: the REST operations Kubernetes registers per resource,
//! with the operation ids, parameters, bodies, responses and `x-kubernetes-*` extensions a
//! Kubernetes 1.33 API server publishes (copied from kubernetes/api/openapi-spec/v3).
//!
//! What kubectl relies on: every operation carries `x-kubernetes-group-version-kind` as a single
//! object (schemas carry it as an array), and the PATCH operation of a kind lists a
//! `fieldValidation` query parameter — kubectl's `supportsQueryParamV3` looks exactly there
//! before it sends `fieldValidation=Strict` — and accepts
//! `application/strategic-merge-patch+json`, which `kubectl apply` checks before computing a
//! strategic merge patch from the v3 schema.

use crate::ResourceDoc;
use crate::schemas::{Known, gvk, ref_to};
use serde_json::{Map, Value, json};

// Parameter descriptions, verbatim from the Kubernetes documents.
const ALLOW_WATCH_BOOKMARKS: &str = "allowWatchBookmarks requests watch events with type \"BOOKMARK\". Servers that do not implement bookmarks may ignore this flag and bookmarks are sent at the server's discretion. Clients should not assume bookmarks are returned at any specific interval, nor may they assume the server will send any BOOKMARK event during a session. If this is not a watch, this field is ignored.";
const CONTINUE: &str = "The continue option should be set when retrieving more results from the server. Since this value is server defined, clients may only use the continue value from a previous query result with identical query parameters (except for the value of continue) and the server may reject a continue value it does not recognize. If the specified continue value is no longer valid whether due to expiration (generally five to fifteen minutes) or a configuration change on the server, the server will respond with a 410 ResourceExpired error together with a continue token. If the client needs a consistent list, it must restart their list without the continue field. Otherwise, the client may send another list request with the token received with the 410 error, the server will respond with a list starting from the next key, but from the latest snapshot, which is inconsistent from the previous list results - objects that are created, modified, or deleted after the first list request will be included in the response, as long as their keys are after the \"next key\".\n\nThis field is not supported when watch is true. Clients may start a watch from the last resourceVersion value returned by the server and not miss any modifications.";
const DRY_RUN: &str = "When present, indicates that modifications should not be persisted. An invalid or unrecognized dryRun directive will result in an error response and no further processing of the request. Valid values are: - All: all dry run stages will be processed";
const FIELD_MANAGER: &str = "fieldManager is a name associated with the actor or entity that is making these changes. The value must be less than or 128 characters long, and only contain printable characters, as defined by https://golang.org/pkg/unicode/#IsPrint.";
const FIELD_MANAGER_PATCH: &str = "fieldManager is a name associated with the actor or entity that is making these changes. The value must be less than or 128 characters long, and only contain printable characters, as defined by https://golang.org/pkg/unicode/#IsPrint. This field is required for apply requests (application/apply-patch) but optional for non-apply patch types (JsonPatch, MergePatch, StrategicMergePatch).";
const FIELD_SELECTOR: &str =
    "A selector to restrict the list of returned objects by their fields. Defaults to everything.";
const FIELD_VALIDATION: &str = "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: - Ignore: This will ignore any unknown fields that are silently dropped from the object, and will ignore all but the last duplicate field that the decoder encounters. This is the default behavior prior to v1.23. - Warn: This will send a warning via the standard warning response header for each unknown field that is dropped from the object, and for each duplicate field that is encountered. The request will still succeed if there are no other errors, and will only persist the last of any duplicate fields. This is the default in v1.23+ - Strict: This will fail the request with a BadRequest error if any unknown fields would be dropped from the object, or if any duplicate fields are present. The error returned from the server will contain all unknown and duplicate fields encountered.";
const FORCE: &str = "Force is going to \"force\" Apply requests. It means user will re-acquire conflicting fields owned by other people. Force flag must be unset for non-apply patch requests.";
const GRACE_PERIOD_SECONDS: &str = "The duration in seconds before the object should be deleted. Value must be non-negative integer. The value zero indicates delete immediately. If this value is nil, the default grace period for the specified type will be used. Defaults to a per object value if not specified. zero means delete immediately.";
const IGNORE_STORE_READ_ERROR: &str = "if set to true, it will trigger an unsafe deletion of the resource in case the normal deletion flow fails with a corrupt object error. A resource is considered corrupt if it can not be retrieved from the underlying storage successfully because of a) its data can not be transformed e.g. decryption failure, or b) it fails to decode into an object. NOTE: unsafe deletion ignores finalizer constraints, skips precondition checks, and removes the object from the storage. WARNING: This may potentially break the cluster if the workload associated with the resource being unsafe-deleted relies on normal deletion flow. Use only if you REALLY know what you are doing. The default value is false, and the user must opt in to enable it";
const LABEL_SELECTOR: &str =
    "A selector to restrict the list of returned objects by their labels. Defaults to everything.";
const LIMIT: &str = "limit is a maximum number of responses to return for a list call. If more items exist, the server will set the `continue` field on the list metadata to a value that can be used with the same initial query to retrieve the next set of results. Setting a limit may return fewer than the requested amount of items (up to zero items) in the event all requested objects are filtered out and clients should only use the presence of the continue field to determine whether more results are available. Servers may choose not to support the limit argument and will return all of the available results. If limit is specified and the continue field is empty, clients may assume that no more results are available. This field is not supported if watch is true.\n\nThe server guarantees that the objects returned when using continue will be identical to issuing a single list call without a limit - that is, no objects created, modified, or deleted after the first request is issued will be included in any subsequent continued requests. This is sometimes referred to as a consistent snapshot, and ensures that a client that is using limit to receive smaller chunks of a very large result can ensure they see all possible objects. If objects are updated during a chunked list the version of the object that was present at the time the first list result was calculated is returned.";
const NAMESPACE: &str = "object name and auth scope, such as for teams and projects";
const ORPHAN_DEPENDENTS: &str = "Deprecated: please use the PropagationPolicy, this field will be deprecated in 1.7. Should the dependent objects be orphaned. If true/false, the \"orphan\" finalizer will be added to/removed from the object's finalizers list. Either this field or PropagationPolicy may be set, but not both.";
const PRETTY: &str = "If 'true', then the output is pretty printed. Defaults to 'false' unless the user-agent indicates a browser or command-line HTTP tool (curl and wget).";
const PROPAGATION_POLICY: &str = "Whether and how garbage collection will be performed. Either this field or OrphanDependents may be set, but not both. The default policy is decided by the existing finalizer set in the metadata.finalizers and the resource-specific default policy. Acceptable values are: 'Orphan' - orphan the dependents; 'Background' - allow the garbage collector to delete the dependents in the background; 'Foreground' - a cascading policy that deletes all dependents in the foreground.";
const RESOURCE_VERSION: &str = "resourceVersion sets a constraint on what resource versions a request may be served from. See https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-versions for details.\n\nDefaults to unset";
const RESOURCE_VERSION_MATCH: &str = "resourceVersionMatch determines how resourceVersion is applied to list calls. It is highly recommended that resourceVersionMatch be set for list calls where resourceVersion is set See https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-versions for details.\n\nDefaults to unset";
const SEND_INITIAL_EVENTS: &str = "`sendInitialEvents=true` may be set together with `watch=true`. In that case, the watch stream will begin with synthetic events to produce the current state of objects in the collection. Once all such events have been sent, a synthetic \"Bookmark\" event  will be sent. The bookmark will report the ResourceVersion (RV) corresponding to the set of objects, and be marked with `\"k8s.io/initial-events-end\": \"true\"` annotation. Afterwards, the watch stream will proceed as usual, sending watch events corresponding to changes (subsequent to the RV) to objects watched.\n\nWhen `sendInitialEvents` option is set, we require `resourceVersionMatch` option to also be set. The semantic of the watch request is as following: - `resourceVersionMatch` = NotOlderThan\n  is interpreted as \"data at least as new as the provided `resourceVersion`\"\n  and the bookmark event is send when the state is synced\n  to a `resourceVersion` at least as fresh as the one provided by the ListOptions.\n  If `resourceVersion` is unset, this is interpreted as \"consistent read\" and the\n  bookmark event is send when the state is synced at least to the moment\n  when request started being processed.\n- `resourceVersionMatch` set to any other value or unset\n  Invalid error is returned.\n\nDefaults to true if `resourceVersion=\"\"` or `resourceVersion=\"0\"` (for backward compatibility reasons) and to false otherwise.";
const TIMEOUT_SECONDS: &str =
    "Timeout for the list/watch call. This limits the duration of the call, regardless of any activity or inactivity.";
const WATCH: &str = "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications. Specify resourceVersion.";

const OBJECT_TYPES: &[&str] = &["application/json", "application/vnd.kubernetes.protobuf", "application/yaml"];
const STREAM_TYPES: &[&str] = &[
    "application/json",
    "application/json;stream=watch",
    "application/vnd.kubernetes.protobuf",
    "application/vnd.kubernetes.protobuf;stream=watch",
    "application/yaml",
];
const PATCH_TYPES: &[&str] = &[
    "application/apply-patch+yaml",
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
];

fn param(name: &str, location: &str, description: &str, ty: &str) -> Value {
    let mut p = json!({
        "description": description,
        "in": location,
        "name": name,
        "schema": { "type": ty, "uniqueItems": true },
    });
    if location == "path" {
        p["required"] = Value::Bool(true);
    }
    p
}

fn query(name: &str, description: &str, ty: &str) -> Value {
    param(name, "query", description, ty)
}

fn pretty() -> Value {
    query("pretty", PRETTY, "string")
}

fn namespace() -> Value {
    param("namespace", "path", NAMESPACE, "string")
}

fn name(kind: &str) -> Value {
    param("name", "path", &format!("name of the {kind}"), "string")
}

/// The list/watch query parameters, in the (alphabetical) order Kubernetes lists them.
fn list_params() -> Vec<Value> {
    vec![
        query("allowWatchBookmarks", ALLOW_WATCH_BOOKMARKS, "boolean"),
        query("continue", CONTINUE, "string"),
        query("fieldSelector", FIELD_SELECTOR, "string"),
        query("labelSelector", LABEL_SELECTOR, "string"),
        query("limit", LIMIT, "integer"),
        query("resourceVersion", RESOURCE_VERSION, "string"),
        query("resourceVersionMatch", RESOURCE_VERSION_MATCH, "string"),
        query("sendInitialEvents", SEND_INITIAL_EVENTS, "boolean"),
        query("timeoutSeconds", TIMEOUT_SECONDS, "integer"),
        query("watch", WATCH, "boolean"),
    ]
}

fn write_params(patch: bool) -> Vec<Value> {
    let mut p = vec![
        query("dryRun", DRY_RUN, "string"),
        query("fieldManager", if patch { FIELD_MANAGER_PATCH } else { FIELD_MANAGER }, "string"),
        query("fieldValidation", FIELD_VALIDATION, "string"),
    ];
    if patch {
        p.push(query("force", FORCE, "boolean"));
    }
    p
}

fn delete_params() -> Vec<Value> {
    vec![
        query("dryRun", DRY_RUN, "string"),
        query("gracePeriodSeconds", GRACE_PERIOD_SECONDS, "integer"),
        query("ignoreStoreReadErrorWithClusterBreakingPotential", IGNORE_STORE_READ_ERROR, "boolean"),
        query("orphanDependents", ORPHAN_DEPENDENTS, "boolean"),
        query("propagationPolicy", PROPAGATION_POLICY, "string"),
    ]
}

fn delete_collection_params() -> Vec<Value> {
    let mut p = delete_params();
    p.extend(
        list_params().into_iter().filter(|v| !matches!(v["name"].as_str(), Some("allowWatchBookmarks" | "watch"))),
    );
    sorted(p)
}

fn sorted(mut params: Vec<Value>) -> Vec<Value> {
    params.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    params
}

fn content(schema: &str, types: &[&str]) -> Value {
    let mut m = Map::new();
    for t in types {
        m.insert((*t).into(), json!({ "schema": ref_to(schema) }));
    }
    Value::Object(m)
}

/// `responses` with the given success codes (all returning `schema`) plus 401.
fn responses(codes: &[&str], schema: &str, types: &[&str]) -> Value {
    let mut m = Map::new();
    for code in codes {
        let description = match *code {
            "201" => "Created",
            "202" => "Accepted",
            _ => "OK",
        };
        m.insert((*code).into(), json!({ "content": content(schema, types), "description": description }));
    }
    m.insert("401".into(), json!({ "description": "Unauthorized" }));
    Value::Object(m)
}

/// Naming pieces for one group-version, as the Kubernetes OpenAPI builder derives them.
pub(crate) struct GroupVersion<'a> {
    pub group: &'a str,
    pub version: &'a str,
}

impl GroupVersion<'_> {
    /// `/api/v1` or `/apis/apps/v1`.
    pub(crate) fn prefix(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }

    /// `Core`, `Apps`, `RbacAuthorization`, `FlowcontrolApiserver`: the group with `.k8s.io`
    /// dropped and each dot-separated word capitalised.
    fn group_id(&self) -> String {
        group_id(self.group)
    }

    /// `CoreV1`, `AppsV1`, `AutoscalingV2`.
    fn id(&self) -> String {
        format!("{}{}", self.group_id(), capitalize(self.version))
    }

    /// `core_v1`, `rbacAuthorization_v1`.
    fn tag(&self) -> String {
        format!("{}_{}", lower_first(&self.group_id()), self.version)
    }
}

pub(crate) fn group_id(group: &str) -> String {
    if group.is_empty() {
        return "Core".into();
    }
    group.trim_end_matches(".k8s.io").split('.').map(capitalize).collect()
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

pub(crate) fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// "a Pod", "an Ingress", "Endpoints": apiserver's GetArticleForNoun.
fn with_article(kind: &str) -> String {
    if kind.ends_with('s') && !kind.ends_with("ss") {
        return kind.to_string();
    }
    match kind.chars().next() {
        Some(c) if "AEIOUaeiou".contains(c) => format!("an {kind}"),
        _ => format!("a {kind}"),
    }
}

/// One operation object.
struct Op<'a> {
    description: String,
    id: String,
    action: &'a str,
    gvk: Value,
    params: Vec<Value>,
    body: Option<Value>,
    responses: Value,
}

impl Op<'_> {
    fn into_value(self, tag: &str) -> Value {
        let mut m = Map::new();
        m.insert("description".into(), self.description.into());
        m.insert("operationId".into(), self.id.into());
        if !self.params.is_empty() {
            m.insert("parameters".into(), Value::Array(self.params));
        }
        if let Some(b) = self.body {
            m.insert("requestBody".into(), b);
        }
        m.insert("responses".into(), self.responses);
        m.insert("tags".into(), json!([tag]));
        m.insert("x-kubernetes-action".into(), self.action.into());
        m.insert("x-kubernetes-group-version-kind".into(), self.gvk);
        Value::Object(m)
    }
}

fn body(schema: &str) -> Value {
    json!({ "content": { "*/*": { "schema": ref_to(schema) } }, "required": true })
}

fn patch_body(patch: &str) -> Value {
    let mut c = Map::new();
    for t in PATCH_TYPES {
        c.insert((*t).into(), json!({ "schema": ref_to(patch) }));
    }
    json!({ "content": c, "required": true })
}

fn delete_body(delete_options: &str) -> Value {
    json!({ "content": { "*/*": { "schema": ref_to(delete_options) } } })
}

/// Adds `op` under `method` of the path item at `path`, creating the item with `params` as its
/// path-level parameters.
fn add(paths: &mut Map<String, Value>, path: &str, params: &[Value], method: &str, op: Value) {
    let item = paths.entry(path.to_string()).or_insert_with(|| {
        let mut m = Map::new();
        m.insert("parameters".into(), Value::Array(sorted(params.to_vec())));
        Value::Object(m)
    });
    if let Value::Object(m) = item {
        m.entry(method.to_string()).or_insert(op);
    }
}

/// All paths for the resources of one group-version. `names[i]` is (kind schema, list schema)
/// for `resources[i]`.
pub(crate) fn group_version_paths(
    gv: &GroupVersion<'_>,
    resources: &[(&ResourceDoc, &(String, String))],
    known: &Known,
) -> Map<String, Value> {
    let mut paths = Map::new();
    let prefix = gv.prefix();
    let id = gv.id();
    let tag = gv.tag();

    // GET /api/v1/ — the resource list (APIResourceList).
    paths.insert(
        format!("{prefix}/"),
        json!({ "get": {
            "description": "get available resources",
            "operationId": format!("get{id}APIResources"),
            "responses": responses(&["200"], &known.api_resource_list, OBJECT_TYPES),
            "tags": [tag],
        }}),
    );

    for (r, (kind_schema, list_schema)) in resources {
        resource_paths(&mut paths, gv, r, kind_schema, list_schema, known);
    }
    paths
}

fn resource_paths(
    paths: &mut Map<String, Value>,
    gv: &GroupVersion<'_>,
    r: &ResourceDoc,
    kind_schema: &str,
    list_schema: &str,
    known: &Known,
) {
    let prefix = gv.prefix();
    let id = gv.id();
    let tag = gv.tag();
    let kind = r.kind;
    let gvk_v = gvk(r.group, r.version, kind);
    let has = |verb: &str| r.verbs.contains(&verb);
    // Operation-id infix: namespaced resources are `...NamespacedPod`, cluster ones `...Node`.
    let ns = if r.namespaced { "Namespaced" } else { "" };

    let (collection, collection_params) = if r.namespaced {
        (format!("{prefix}/namespaces/{{namespace}}/{}", r.plural), vec![namespace(), pretty()])
    } else {
        (format!("{prefix}/{}", r.plural), vec![pretty()])
    };
    let item = format!("{collection}/{{name}}");
    let mut item_params = collection_params.clone();
    item_params.push(name(kind));

    let op = |description: String, verb: &str, suffix: &str, action: &'static str, gvk: &Value| Op {
        description,
        id: format!("{verb}{id}{ns}{kind}{suffix}"),
        action,
        gvk: gvk.clone(),
        params: Vec::new(),
        body: None,
        responses: Value::Null,
    };

    // Collection: list, create, deletecollection.
    if has("list") {
        let o = Op {
            params: list_params(),
            responses: responses(&["200"], list_schema, STREAM_TYPES),
            ..op(format!("list or watch objects of kind {kind}"), "list", "", "list", &gvk_v)
        };
        add(paths, &collection, &collection_params, "get", o.into_value(&tag));
    }
    if has("create") {
        let o = Op {
            params: write_params(false),
            body: Some(body(kind_schema)),
            responses: responses(&["200", "201", "202"], kind_schema, OBJECT_TYPES),
            ..op(format!("create {}", with_article(kind)), "create", "", "post", &gvk_v)
        };
        add(paths, &collection, &collection_params, "post", o.into_value(&tag));
    }
    if has("deletecollection") {
        let o = Op {
            id: format!("delete{id}Collection{ns}{kind}"),
            params: delete_collection_params(),
            body: Some(delete_body(&known.delete_options)),
            responses: responses(&["200"], &known.status, OBJECT_TYPES),
            ..op(format!("delete collection of {kind}"), "", "", "deletecollection", &gvk_v)
        };
        add(paths, &collection, &collection_params, "delete", o.into_value(&tag));
    }

    // Item: read, replace, patch, delete.
    if has("get") {
        let o = Op {
            responses: responses(&["200"], kind_schema, OBJECT_TYPES),
            ..op(format!("read the specified {kind}"), "read", "", "get", &gvk_v)
        };
        add(paths, &item, &item_params, "get", o.into_value(&tag));
    }
    if has("update") {
        let o = Op {
            params: write_params(false),
            body: Some(body(kind_schema)),
            responses: responses(&["200", "201"], kind_schema, OBJECT_TYPES),
            ..op(format!("replace the specified {kind}"), "replace", "", "put", &gvk_v)
        };
        add(paths, &item, &item_params, "put", o.into_value(&tag));
    }
    if has("patch") {
        let o = Op {
            params: write_params(true),
            body: Some(patch_body(&known.patch)),
            responses: responses(&["200", "201"], kind_schema, OBJECT_TYPES),
            ..op(format!("partially update the specified {kind}"), "patch", "", "patch", &gvk_v)
        };
        add(paths, &item, &item_params, "patch", o.into_value(&tag));
    }
    if has("delete") {
        let o = Op {
            params: delete_params(),
            body: Some(delete_body(&known.delete_options)),
            responses: responses(&["200", "202"], kind_schema, OBJECT_TYPES),
            ..op(format!("delete {}", with_article(kind)), "delete", "", "delete", &gvk_v)
        };
        add(paths, &item, &item_params, "delete", o.into_value(&tag));
    }

    // Across all namespaces: GET /api/v1/pods, with the list parameters on the path item.
    if r.namespaced && has("list") {
        let mut params = list_params();
        params.push(pretty());
        let o = Op {
            id: format!("list{id}{kind}ForAllNamespaces"),
            responses: responses(&["200"], list_schema, STREAM_TYPES),
            ..op(format!("list or watch objects of kind {kind}"), "", "", "list", &gvk_v)
        };
        add(paths, &format!("{prefix}/{}", r.plural), &params, "get", o.into_value(&tag));
    }

    // The deprecated /watch/ paths a real server still publishes.
    if has("watch") {
        let mut params = list_params();
        params.push(pretty());
        let watch_list = format!(
            "watch individual changes to a list of {kind}. deprecated: use the 'watch' parameter with a list operation instead."
        );
        let watch_one = format!(
            "watch changes to an object of kind {kind}. deprecated: use the 'watch' parameter with a list operation instead, filtered to a single item with the 'fieldSelector' parameter."
        );
        let ws = |description: &str, id: String, action: &'static str| {
            Op {
                id,
                responses: responses(&["200"], &known.watch_event, STREAM_TYPES),
                ..op(description.to_string(), "", "", action, &gvk_v)
            }
            .into_value(&tag)
        };
        if r.namespaced {
            let mut p = params.clone();
            p.push(namespace());
            let coll = format!("{prefix}/watch/namespaces/{{namespace}}/{}", r.plural);
            add(paths, &coll, &p, "get", ws(&watch_list, format!("watch{id}{ns}{kind}List"), "watchlist"));
            let mut pi = p.clone();
            pi.push(name(kind));
            add(
                paths,
                &format!("{coll}/{{name}}"),
                &pi,
                "get",
                ws(&watch_one, format!("watch{id}{ns}{kind}"), "watch"),
            );
            add(
                paths,
                &format!("{prefix}/watch/{}", r.plural),
                &params,
                "get",
                ws(&watch_list, format!("watch{id}{kind}ListForAllNamespaces"), "watchlist"),
            );
        } else {
            let coll = format!("{prefix}/watch/{}", r.plural);
            add(paths, &coll, &params, "get", ws(&watch_list, format!("watch{id}{kind}List"), "watchlist"));
            let mut pi = params.clone();
            pi.push(name(kind));
            add(paths, &format!("{coll}/{{name}}"), &pi, "get", ws(&watch_one, format!("watch{id}{kind}"), "watch"));
        }
    }

    // Subresources.
    for sub in &r.subresources {
        let path = format!("{item}/{sub}");
        let suffix = capitalize(sub);
        let sub_params = |subject: &str| {
            let mut p = collection_params.clone();
            p.push(name(subject));
            p
        };
        match *sub {
            // Subresources that read and write the parent object (or a view of it).
            "status" | "ephemeralcontainers" | "resize" | "approval" | "scale" => {
                let (schema, subject_gvk, subject) = if *sub == "scale" {
                    (known.scale.as_str(), gvk("autoscaling", "v1", "Scale"), "Scale")
                } else {
                    (kind_schema, gvk_v.clone(), kind)
                };
                let params = sub_params(subject);
                let get = Op {
                    responses: responses(&["200"], schema, OBJECT_TYPES),
                    ..op(format!("read {sub} of the specified {kind}"), "read", &suffix, "get", &subject_gvk)
                };
                add(paths, &path, &params, "get", get.into_value(&tag));
                let put = Op {
                    params: write_params(false),
                    body: Some(body(schema)),
                    responses: responses(&["200", "201"], schema, OBJECT_TYPES),
                    ..op(format!("replace {sub} of the specified {kind}"), "replace", &suffix, "put", &subject_gvk)
                };
                add(paths, &path, &params, "put", put.into_value(&tag));
                let patch = Op {
                    params: write_params(true),
                    body: Some(patch_body(&known.patch)),
                    responses: responses(&["200", "201"], schema, OBJECT_TYPES),
                    ..op(
                        format!("partially update {sub} of the specified {kind}"),
                        "patch",
                        &suffix,
                        "patch",
                        &subject_gvk,
                    )
                };
                add(paths, &path, &params, "patch", patch.into_value(&tag));
            }
            // Subresources that accept a different kind by POST.
            "binding" | "eviction" | "token" => {
                let (schema, subject_gvk, subject) = match *sub {
                    "binding" => (known.binding.as_str(), gvk("", "v1", "Binding"), "Binding"),
                    "eviction" => (known.eviction.as_str(), gvk("policy", "v1", "Eviction"), "Eviction"),
                    _ => (
                        known.token_request.as_str(),
                        gvk("authentication.k8s.io", "v1", "TokenRequest"),
                        "TokenRequest",
                    ),
                };
                let o = Op {
                    params: write_params(false),
                    body: Some(body(schema)),
                    responses: responses(&["200", "201", "202"], schema, OBJECT_TYPES),
                    ..op(format!("create {sub} of {}", with_article(kind)), "create", &suffix, "post", &subject_gvk)
                };
                add(paths, &path, &sub_params(subject), "post", o.into_value(&tag));
            }
            // Namespace finalization: PUT of the Namespace itself.
            "finalize" => {
                let o = Op {
                    params: write_params(false),
                    body: Some(body(kind_schema)),
                    responses: responses(&["200", "201"], kind_schema, OBJECT_TYPES),
                    ..op(format!("replace finalize of the specified {kind}"), "replace", &suffix, "put", &gvk_v)
                };
                add(paths, &path, &sub_params(kind), "put", o.into_value(&tag));
            }
            // Connect-style subresources (exec, attach, portforward, proxy, log) are not part
            // of what clients read from these documents; they are left out rather than guessed.
            _ => {}
        }
    }
}

/// The group document (`apis/apps`): `GET /apis/apps/` → APIGroup.
pub(crate) fn group_paths(group: &str, known: &Known) -> Map<String, Value> {
    let gid = group_id(group);
    let mut paths = Map::new();
    paths.insert(
        format!("/apis/{group}/"),
        json!({ "get": {
            "description": "get information of a group",
            "operationId": format!("get{gid}APIGroup"),
            "responses": responses(&["200"], &known.api_group, OBJECT_TYPES),
            "tags": [lower_first(&gid)],
        }}),
    );
    paths
}

/// The `api` document: `GET /api/` → APIVersions.
pub(crate) fn core_versions_paths(known: &Known) -> Map<String, Value> {
    let mut paths = Map::new();
    paths.insert(
        "/api/".into(),
        json!({ "get": {
            "description": "get available API versions",
            "operationId": "getCoreAPIVersions",
            "responses": responses(&["200"], &known.api_versions, OBJECT_TYPES),
            "tags": ["core"],
        }}),
    );
    paths
}

/// The `apis` document: `GET /apis/` → APIGroupList.
pub(crate) fn groups_paths(known: &Known) -> Map<String, Value> {
    let mut paths = Map::new();
    paths.insert(
        "/apis/".into(),
        json!({ "get": {
            "description": "get available API versions",
            "operationId": "getAPIVersions",
            "responses": responses(&["200"], &known.api_group_list, OBJECT_TYPES),
            "tags": ["apis"],
        }}),
    );
    paths
}

/// The `version` document: `GET /version/` → version.Info.
pub(crate) fn version_paths(known: &Known) -> Map<String, Value> {
    let mut paths = Map::new();
    paths.insert(
        "/version/".into(),
        json!({ "get": {
            "description": "get the version information for this server",
            "operationId": "getCodeVersion",
            "responses": responses(&["200"], &known.version_info, &["application/json"]),
            "tags": ["version"],
        }}),
    );
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naming_matches_kubernetes() {
        assert_eq!(group_id(""), "Core");
        assert_eq!(group_id("apps"), "Apps");
        assert_eq!(group_id("rbac.authorization.k8s.io"), "RbacAuthorization");
        assert_eq!(group_id("flowcontrol.apiserver.k8s.io"), "FlowcontrolApiserver");
        let gv = GroupVersion { group: "rbac.authorization.k8s.io", version: "v1" };
        assert_eq!(gv.tag(), "rbacAuthorization_v1");
        assert_eq!(gv.id(), "RbacAuthorizationV1");
        assert_eq!(GroupVersion { group: "", version: "v1" }.tag(), "core_v1");
        assert_eq!(with_article("Pod"), "a Pod");
        assert_eq!(with_article("Ingress"), "an Ingress");
        assert_eq!(with_article("Endpoints"), "Endpoints");
    }
}
