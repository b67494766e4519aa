//! End-to-end checks of the published documents, including emulations of the three things
//! kubectl 1.33 does with them (field-validation probe, strategic-merge lookup, explain-style
//! resolution). Expectations about shape are taken from Kubernetes'
//! api/openapi-spec/v3/api__v1_openapi.json.

use k8s_openapi::api::{apps, autoscaling, batch, coordination, core, discovery, networking, policy, rbac, storage};
use serde_json::{Value, json};
use skiff_openapi::{Documents, PatchMeta, ResourceDoc, build, lint_openapi30, sha512_hex_upper};
use std::sync::OnceLock;
use std::time::Instant;

const ALL: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

fn resources() -> Vec<ResourceDoc> {
    let all = || ALL.to_vec();
    vec![
        ResourceDoc::of::<core::v1::Pod>(
            "pods",
            true,
            vec!["status", "binding", "eviction", "ephemeralcontainers", "log", "exec"],
            all(),
        ),
        ResourceDoc::of::<core::v1::Service>("services", true, vec!["status"], all()),
        ResourceDoc::of::<core::v1::ConfigMap>("configmaps", true, vec![], all()),
        ResourceDoc::of::<core::v1::Secret>("secrets", true, vec![], all()),
        ResourceDoc::of::<core::v1::Namespace>("namespaces", false, vec!["status", "finalize"], all()),
        ResourceDoc::of::<core::v1::Node>("nodes", false, vec!["status"], all()),
        ResourceDoc::of::<core::v1::Endpoints>("endpoints", true, vec![], all()),
        ResourceDoc::of::<core::v1::Event>("events", true, vec![], all()),
        ResourceDoc::of::<core::v1::ServiceAccount>("serviceaccounts", true, vec!["token"], all()),
        ResourceDoc::of::<core::v1::PersistentVolume>("persistentvolumes", false, vec!["status"], all()),
        ResourceDoc::of::<core::v1::PersistentVolumeClaim>("persistentvolumeclaims", true, vec!["status"], all()),
        ResourceDoc::of::<core::v1::ReplicationController>(
            "replicationcontrollers",
            true,
            vec!["status", "scale"],
            all(),
        ),
        ResourceDoc::of::<core::v1::LimitRange>("limitranges", true, vec![], all()),
        ResourceDoc::of::<core::v1::ResourceQuota>("resourcequotas", true, vec!["status"], all()),
        ResourceDoc::of::<core::v1::ComponentStatus>("componentstatuses", false, vec![], vec!["get", "list"]),
        ResourceDoc::of::<apps::v1::Deployment>("deployments", true, vec!["status", "scale"], all()),
        ResourceDoc::of::<apps::v1::ReplicaSet>("replicasets", true, vec!["status", "scale"], all()),
        ResourceDoc::of::<apps::v1::StatefulSet>("statefulsets", true, vec!["status", "scale"], all()),
        ResourceDoc::of::<apps::v1::DaemonSet>("daemonsets", true, vec!["status"], all()),
        ResourceDoc::of::<apps::v1::ControllerRevision>("controllerrevisions", true, vec![], all()),
        ResourceDoc::of::<batch::v1::Job>("jobs", true, vec!["status"], all()),
        ResourceDoc::of::<batch::v1::CronJob>("cronjobs", true, vec!["status"], all()),
        ResourceDoc::of::<autoscaling::v2::HorizontalPodAutoscaler>(
            "horizontalpodautoscalers",
            true,
            vec!["status"],
            all(),
        ),
        ResourceDoc::of::<autoscaling::v1::HorizontalPodAutoscaler>(
            "horizontalpodautoscalers",
            true,
            vec!["status"],
            all(),
        ),
        ResourceDoc::of::<discovery::v1::EndpointSlice>("endpointslices", true, vec![], all()),
        ResourceDoc::of::<coordination::v1::Lease>("leases", true, vec![], all()),
        ResourceDoc::of::<rbac::v1::Role>("roles", true, vec![], all()),
        ResourceDoc::of::<rbac::v1::RoleBinding>("rolebindings", true, vec![], all()),
        ResourceDoc::of::<rbac::v1::ClusterRole>("clusterroles", false, vec![], all()),
        ResourceDoc::of::<rbac::v1::ClusterRoleBinding>("clusterrolebindings", false, vec![], all()),
        ResourceDoc::of::<networking::v1::Ingress>("ingresses", true, vec!["status"], all()),
        ResourceDoc::of::<networking::v1::NetworkPolicy>("networkpolicies", true, vec![], all()),
        ResourceDoc::of::<policy::v1::PodDisruptionBudget>("poddisruptionbudgets", true, vec!["status"], all()),
        ResourceDoc::of::<storage::v1::StorageClass>("storageclasses", false, vec![], all()),
        ResourceDoc::of::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>(
            "customresourcedefinitions",
            false,
            vec!["status"],
            all(),
        ),
    ]
}

const fn merge(key: &'static str) -> Option<PatchMeta> {
    Some(PatchMeta { strategy: "merge", merge_key: Some(key) })
}

/// A few of Kubernetes' real patch tags, addressed the way the patch crate will address them.
fn rules(_group: &str, kind: &str, path: &[&str]) -> Option<PatchMeta> {
    let pod_spec: Option<&[&str]> = match (kind, path) {
        ("Pod", ["spec", rest @ ..]) => Some(rest),
        (
            "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job" | "ReplicationController",
            ["spec", "template", "spec", rest @ ..],
        ) => Some(rest),
        ("CronJob", ["spec", "jobTemplate", "spec", "template", "spec", rest @ ..]) => Some(rest),
        _ => None,
    };
    if let Some(rest) = pod_spec {
        return match rest {
            ["containers" | "initContainers" | "ephemeralContainers"] => merge("name"),
            ["containers" | "initContainers", "ports"] => merge("containerPort"),
            ["containers" | "initContainers", "env"] => merge("name"),
            ["containers" | "initContainers", "volumeMounts"] => merge("mountPath"),
            ["volumes"] => Some(PatchMeta { strategy: "merge,retainKeys", merge_key: Some("name") }),
            ["imagePullSecrets"] => merge("name"),
            _ => None,
        };
    }
    match (kind, path) {
        (_, [.., "metadata", "finalizers"]) => Some(PatchMeta { strategy: "merge", merge_key: None }),
        (_, [.., "metadata", "ownerReferences"]) => merge("uid"),
        ("Service", ["spec", "ports"]) => merge("port"),
        ("Deployment", ["spec", "strategy"]) => Some(PatchMeta { strategy: "retainKeys", merge_key: None }),
        _ => None,
    }
}

fn docs() -> &'static (Documents, std::time::Duration) {
    static DOCS: OnceLock<(Documents, std::time::Duration)> = OnceLock::new();
    DOCS.get_or_init(|| {
        let rs = resources();
        let start = Instant::now();
        let d = build(&rs, &rules);
        (d, start.elapsed())
    })
}

fn doc(path: &str) -> Value {
    let (d, _) = docs();
    let (_, bytes) = d.get(path).unwrap_or_else(|| panic!("no document {path}"));
    serde_json::from_slice(bytes).expect("document is JSON")
}

fn schemas(doc: &Value) -> &serde_json::Map<String, Value> {
    doc.pointer("/components/schemas").and_then(Value::as_object).expect("components.schemas")
}

/// kubectl's `resolve`: take `allOf[0]`, then follow a `$ref` into components.
fn resolve<'a>(doc: &'a Value, mut schema: &'a Value) -> &'a Value {
    if let Some(first) = schema.get("allOf").and_then(|a| a.get(0)) {
        schema = first;
    }
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.strip_prefix("#/components/schemas/").expect("local ref");
        return schemas(doc).get(name).unwrap_or_else(|| panic!("dangling ref {r}"));
    }
    schema
}

/// kubectl's `gvkMatchesArray` over components: the component(s) for a GVK.
fn kind_schema<'a>(doc: &'a Value, group: &str, version: &str, kind: &str) -> Vec<(&'a String, &'a Value)> {
    let want = json!({ "group": group, "kind": kind, "version": version });
    schemas(doc)
        .iter()
        .filter(|(_, s)| {
            s.get("x-kubernetes-group-version-kind").and_then(Value::as_array).is_some_and(|l| l.contains(&want))
        })
        .collect()
}

#[test]
fn build_is_fast_and_deterministic() {
    let (d, took) = docs();
    let total: usize = d.by_path.values().map(|(_, b)| b.len()).sum();
    println!(
        "built {} documents ({} bytes) for {} resources in {:?} (debug build)",
        d.by_path.len(),
        total,
        resources().len(),
        took
    );
    // Debug builds are several times slower than release; this bounds the release time well under 1 s.
    assert!(took.as_secs_f64() < 5.0, "build took {took:?}");

    let again = build(&resources(), &rules);
    for (path, (hash, _)) in &d.by_path {
        assert_eq!(&again.by_path[path].0, hash, "{path} hash is not stable");
    }
}

#[test]
fn index_lists_every_document_with_its_hash() {
    let (d, _) = docs();
    let index = d.index["paths"].as_object().expect("index.paths");
    for gv in [
        "api/v1",
        "apis/apps/v1",
        "apis/batch/v1",
        "apis/autoscaling/v1",
        "apis/autoscaling/v2",
        "apis/rbac.authorization.k8s.io/v1",
        "apis/apiextensions.k8s.io/v1",
        "apis/apps",
        "api",
        "apis",
        "version",
    ] {
        assert!(index.contains_key(gv), "index lacks {gv}");
    }
    assert_eq!(index.len(), d.by_path.len());
    for (path, (hash, bytes)) in &d.by_path {
        assert_eq!(hash.len(), 128);
        assert!(hash.chars().all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()));
        assert_eq!(&sha512_hex_upper(bytes), hash, "{path}: hash does not match the bytes");
        assert_eq!(index[path]["serverRelativeURL"], json!(format!("/openapi/v3/{path}?hash={hash}")),);
    }
    // The index serializes as kubectl reads it.
    let parsed: Value = serde_json::from_slice(&d.index_bytes()).expect("index JSON");
    assert!(
        parsed["paths"]["api/v1"]["serverRelativeURL"]
            .as_str()
            .is_some_and(|u| u.starts_with("/openapi/v3/api/v1?hash="))
    );
    assert!(d.get("/apis/apps/v1").is_some());
}

#[test]
fn documents_are_openapi_30_only() {
    let (d, _) = docs();
    for path in d.by_path.keys() {
        let doc = doc(path);
        assert_eq!(doc["openapi"], "3.0.0");
        assert_eq!(doc["info"], json!({ "title": "Kubernetes", "version": "v1.33.0" }));
        let problems = lint_openapi30(&doc);
        assert!(problems.is_empty(), "{path}: {problems:#?}");
        // Belt and braces: no schemars artefacts anywhere in the text.
        let text = String::from_utf8_lossy(&d.by_path[path].1).into_owned();
        assert!(!text.contains("\"$defs\""), "{path} has $defs");
        assert!(!text.contains("#/$defs"), "{path} refers into $defs");
        assert!(!text.contains("\"const\""), "{path} has const");
    }
    // The linter itself catches what it should.
    let bad = json!({ "openapi": "3.0.0", "paths": {}, "components": { "schemas": {
        "A": { "type": ["string", "null"], "$defs": {}, "properties": { "$ref": { "type": "string" }, "b": { "$ref": "#/components/schemas/Nope", "description": "x" } } }
    }}});
    let problems = lint_openapi30(&bad);
    assert_eq!(problems.len(), 4, "{problems:#?}");
}

#[test]
fn pod_operations_look_like_kubernetes() {
    let doc = doc("api/v1");
    let paths = &doc["paths"];
    let pod_gvk = json!({ "group": "", "kind": "Pod", "version": "v1" });

    let coll = &paths["/api/v1/namespaces/{namespace}/pods"];
    let names = |params: &Value| -> Vec<String> {
        params.as_array().expect("params").iter().map(|p| p["name"].as_str().unwrap_or("").to_string()).collect()
    };
    assert_eq!(names(&coll["parameters"]), ["namespace", "pretty"]);

    let post = &coll["post"];
    assert_eq!(post["x-kubernetes-group-version-kind"], pod_gvk);
    assert_eq!(post["x-kubernetes-action"], "post");
    assert_eq!(post["operationId"], "createCoreV1NamespacedPod");
    assert_eq!(post["description"], "create a Pod");
    assert_eq!(post["tags"], json!(["core_v1"]));
    assert_eq!(names(&post["parameters"]), ["dryRun", "fieldManager", "fieldValidation"]);
    let fv = post["parameters"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "fieldValidation"))
        .expect("fieldValidation");
    assert_eq!(fv["in"], "query");
    assert_eq!(fv["schema"], json!({ "type": "string", "uniqueItems": true }));
    assert!(
        fv["description"]
            .as_str()
            .is_some_and(|d| { d.starts_with("fieldValidation instructs the server on how to handle objects") })
    );
    assert_eq!(post["requestBody"]["content"]["*/*"]["schema"]["$ref"], "#/components/schemas/io.k8s.api.core.v1.Pod");
    assert_eq!(post["requestBody"]["required"], true);
    for code in ["200", "201", "202"] {
        assert_eq!(
            post["responses"][code]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/io.k8s.api.core.v1.Pod"
        );
    }
    assert_eq!(post["responses"]["401"], json!({ "description": "Unauthorized" }));

    let list = &coll["get"];
    assert_eq!(list["x-kubernetes-action"], "list");
    assert_eq!(list["operationId"], "listCoreV1NamespacedPod");
    assert_eq!(
        names(&list["parameters"]),
        [
            "allowWatchBookmarks",
            "continue",
            "fieldSelector",
            "labelSelector",
            "limit",
            "resourceVersion",
            "resourceVersionMatch",
            "sendInitialEvents",
            "timeoutSeconds",
            "watch"
        ]
    );
    assert_eq!(
        list["responses"]["200"]["content"]["application/json;stream=watch"]["schema"]["$ref"],
        "#/components/schemas/io.k8s.api.core.v1.PodList"
    );

    let dc = &coll["delete"];
    assert_eq!(dc["x-kubernetes-action"], "deletecollection");
    assert_eq!(dc["operationId"], "deleteCoreV1CollectionNamespacedPod");
    assert_eq!(
        dc["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Status"
    );
    assert_eq!(
        dc["requestBody"]["content"]["*/*"]["schema"]["$ref"],
        "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions"
    );

    let item = &paths["/api/v1/namespaces/{namespace}/pods/{name}"];
    assert_eq!(names(&item["parameters"]), ["name", "namespace", "pretty"]);
    assert_eq!(item["parameters"][0]["description"], "name of the Pod");
    let patch = &item["patch"];
    assert_eq!(patch["x-kubernetes-group-version-kind"], pod_gvk);
    assert_eq!(patch["x-kubernetes-action"], "patch");
    assert_eq!(patch["operationId"], "patchCoreV1NamespacedPod");
    assert_eq!(names(&patch["parameters"]), ["dryRun", "fieldManager", "fieldValidation", "force"]);
    let content = patch["requestBody"]["content"].as_object().expect("patch content");
    assert_eq!(
        content.keys().collect::<Vec<_>>(),
        [
            "application/apply-patch+yaml",
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/strategic-merge-patch+json"
        ]
    );
    for media in content.values() {
        assert_eq!(media["schema"]["$ref"], "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Patch");
    }
    assert_eq!(item["put"]["operationId"], "replaceCoreV1NamespacedPod");
    assert_eq!(item["get"]["operationId"], "readCoreV1NamespacedPod");
    assert_eq!(item["delete"]["operationId"], "deleteCoreV1NamespacedPod");
    assert_eq!(
        names(&item["delete"]["parameters"]),
        [
            "dryRun",
            "gracePeriodSeconds",
            "ignoreStoreReadErrorWithClusterBreakingPotential",
            "orphanDependents",
            "propagationPolicy"
        ]
    );

    let all_ns = &paths["/api/v1/pods"];
    assert_eq!(all_ns["get"]["operationId"], "listCoreV1PodForAllNamespaces");
    assert!(names(&all_ns["parameters"]).contains(&"watch".to_string()));

    let status = &paths["/api/v1/namespaces/{namespace}/pods/{name}/status"];
    assert_eq!(status["patch"]["operationId"], "patchCoreV1NamespacedPodStatus");
    assert_eq!(status["patch"]["x-kubernetes-group-version-kind"], pod_gvk);
    assert_eq!(status["get"]["description"], "read status of the specified Pod");

    let binding = &paths["/api/v1/namespaces/{namespace}/pods/{name}/binding"];
    assert_eq!(binding["post"]["operationId"], "createCoreV1NamespacedPodBinding");
    assert_eq!(
        binding["post"]["x-kubernetes-group-version-kind"],
        json!({ "group": "", "kind": "Binding", "version": "v1" })
    );
    assert_eq!(binding["parameters"][0]["description"], "name of the Binding");
    assert!(paths["/api/v1/namespaces/{namespace}/pods/{name}/eviction"]["post"].is_object());
    // Connect-style subresources are not published.
    assert!(paths.get("/api/v1/namespaces/{namespace}/pods/{name}/exec").is_none());

    assert_eq!(paths["/api/v1/watch/namespaces/{namespace}/pods"]["get"]["x-kubernetes-action"], "watchlist");
    assert_eq!(
        paths["/api/v1/watch/namespaces/{namespace}/pods/{name}"]["get"]["operationId"],
        "watchCoreV1NamespacedPod"
    );
    assert_eq!(paths["/api/v1/watch/pods"]["get"]["operationId"], "watchCoreV1PodListForAllNamespaces");
    assert_eq!(paths["/api/v1/"]["get"]["operationId"], "getCoreV1APIResources");

    // Cluster-scoped and read-only kinds.
    assert_eq!(paths["/api/v1/nodes/{name}"]["get"]["operationId"], "readCoreV1Node");
    assert_eq!(paths["/api/v1/namespaces/{name}/finalize"]["put"]["operationId"], "replaceCoreV1NamespaceFinalize");
    let cs = paths["/api/v1/componentstatuses"].as_object().expect("componentstatuses");
    assert!(cs.contains_key("get") && !cs.contains_key("post") && !cs.contains_key("delete"));
    assert!(paths["/api/v1/componentstatuses/{name}"].get("patch").is_none());
}

#[test]
fn scale_subresource_uses_autoscaling_scale() {
    let doc = doc("apis/apps/v1");
    let scale = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"];
    assert_eq!(scale["patch"]["operationId"], "patchAppsV1NamespacedDeploymentScale");
    assert_eq!(
        scale["patch"]["x-kubernetes-group-version-kind"],
        json!({ "group": "autoscaling", "kind": "Scale", "version": "v1" })
    );
    assert_eq!(
        scale["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/io.k8s.api.autoscaling.v1.Scale"
    );
    assert_eq!(scale["parameters"][0]["description"], "name of the Scale");
    let s = &schemas(&doc)["io.k8s.api.autoscaling.v1.Scale"];
    assert_eq!(
        s["x-kubernetes-group-version-kind"],
        json!([{ "group": "autoscaling", "kind": "Scale", "version": "v1" }])
    );
    assert_eq!(doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments"]["post"]["tags"], json!(["apps_v1"]));
    let rbac = crate::doc("apis/rbac.authorization.k8s.io/v1");
    assert_eq!(
        rbac["paths"]["/apis/rbac.authorization.k8s.io/v1/clusterroles"]["post"]["operationId"],
        "createRbacAuthorizationV1ClusterRole"
    );
}

/// kubectl's `supportsQueryParamV3`: the first PATCH operation for the GVK must list
/// `fieldValidation` as a query parameter, or kubectl will not send `fieldValidation=Strict`.
#[test]
fn kubectl_sees_field_validation_for_every_patchable_kind() {
    for r in resources().iter().filter(|r| r.verbs.contains(&"patch")) {
        let doc = doc(&r.document_path());
        let want = json!({ "group": r.group, "kind": r.kind, "version": r.version });
        let ops: Vec<&Value> = doc["paths"]
            .as_object()
            .expect("paths")
            .values()
            .filter_map(|item| item.get("patch"))
            .filter(|op| op["x-kubernetes-group-version-kind"] == want)
            .collect();
        assert!(!ops.is_empty(), "{} has no PATCH operation", r.kind);
        for op in ops {
            let params = op["parameters"].as_array().expect("params");
            assert!(params.iter().any(|p| p["name"] == "fieldValidation" && p["in"] == "query"), "{}", r.kind);
            assert!(op["requestBody"]["content"].get("application/strategic-merge-patch+json").is_some());
        }
    }
}

#[test]
fn every_kind_has_one_schema_with_its_gvk() {
    for r in resources() {
        let doc = doc(&r.document_path());
        let found = kind_schema(&doc, r.group, r.version, r.kind);
        assert_eq!(
            found.len(),
            1,
            "{}/{} {}: {:?}",
            r.group,
            r.version,
            r.kind,
            found.iter().map(|f| f.0).collect::<Vec<_>>()
        );
        let lists = kind_schema(&doc, r.group, r.version, r.list_kind);
        assert_eq!(lists.len(), 1, "{}", r.list_kind);
        let list = lists[0].1;
        assert_eq!(list["required"], json!(["items"]));
        assert_eq!(resolve(&doc, &list["properties"]["items"]["items"]), found[0].1);
        assert_eq!(
            list["properties"]["metadata"]["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta"
        );
        // Kubernetes never marks metadata required.
        let required = found[0].1.get("required").and_then(Value::as_array).cloned().unwrap_or_default();
        assert!(!required.contains(&json!("metadata")), "{} requires metadata", r.kind);
    }
    let core = doc("api/v1");
    assert_eq!(
        schemas(&core)["io.k8s.api.core.v1.Pod"]["x-kubernetes-group-version-kind"],
        json!([{ "group": "", "kind": "Pod", "version": "v1" }])
    );
    assert_eq!(
        schemas(&core)["io.k8s.apimachinery.pkg.apis.meta.v1.Status"]["x-kubernetes-group-version-kind"],
        json!([{ "group": "", "kind": "Status", "version": "v1" }])
    );
    let ios = &schemas(&core)["io.k8s.apimachinery.pkg.util.intstr.IntOrString"];
    assert_eq!(ios["format"], "int-or-string");
    assert_eq!(ios["oneOf"], json!([{ "type": "integer" }, { "type": "string" }]));
    // Documents carry only what they reference.
    assert!(!schemas(&core).contains_key("io.k8s.api.apps.v1.Deployment"));
    assert!(schemas(&doc("apis/apps/v1")).contains_key("io.k8s.api.core.v1.PodSpec"));
}

#[test]
fn pod_schema_resolves_down_to_container_image() {
    let doc = doc("api/v1");
    let pod = kind_schema(&doc, "", "v1", "Pod")[0].1;
    let spec = resolve(&doc, &pod["properties"]["spec"]);
    assert!(spec["properties"]["restartPolicy"].is_object(), "spec is PodSpec");
    let containers = &spec["properties"]["containers"];
    assert_eq!(containers["type"], "array");
    let container = resolve(&doc, &containers["items"]);
    assert_eq!(container["properties"]["image"]["type"], "string");
    let meta = resolve(&doc, &pod["properties"]["metadata"]);
    assert_eq!(meta["properties"]["labels"]["additionalProperties"]["type"], "string");
    // The field description survives next to the reference, kube-openapi style.
    assert!(
        pod["properties"]["spec"]["description"]
            .as_str()
            .is_some_and(|d| d.starts_with("Specification of the desired behavior"))
    );
}

#[test]
fn patch_extensions_land_on_the_declaring_component() {
    let doc = doc("apis/apps/v1");
    let s = schemas(&doc);
    let prop = |component: &str, field: &str| s[component]["properties"][field].clone();
    let ext =
        |v: &Value| (v.get("x-kubernetes-patch-strategy").cloned(), v.get("x-kubernetes-patch-merge-key").cloned());

    assert_eq!(ext(&prop("io.k8s.api.core.v1.PodSpec", "containers")), (Some(json!("merge")), Some(json!("name"))));
    assert_eq!(ext(&prop("io.k8s.api.core.v1.PodSpec", "initContainers")), (Some(json!("merge")), Some(json!("name"))));
    assert_eq!(
        ext(&prop("io.k8s.api.core.v1.PodSpec", "volumes")),
        (Some(json!("merge,retainKeys")), Some(json!("name")))
    );
    assert_eq!(
        ext(&prop("io.k8s.api.core.v1.Container", "ports")),
        (Some(json!("merge")), Some(json!("containerPort")))
    );
    assert_eq!(ext(&prop("io.k8s.api.core.v1.Container", "env")), (Some(json!("merge")), Some(json!("name"))));
    assert_eq!(
        ext(&prop("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "finalizers")),
        (Some(json!("merge")), None)
    );
    assert_eq!(
        ext(&prop("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "ownerReferences")),
        (Some(json!("merge")), Some(json!("uid")))
    );
    assert_eq!(ext(&prop("io.k8s.api.apps.v1.DeploymentSpec", "strategy")), (Some(json!("retainKeys")), None));
    // Not tagged: nothing added.
    assert_eq!(ext(&prop("io.k8s.api.core.v1.Container", "args")), (None, None));

    let core = crate::doc("api/v1");
    let s = schemas(&core);
    assert_eq!(s["io.k8s.api.core.v1.ServiceSpec"]["properties"]["ports"]["x-kubernetes-patch-merge-key"], "port");
    assert_eq!(s["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]["x-kubernetes-patch-merge-key"], "name");
}

/// Emulates kubectl's `PatchMetaFromOpenAPIV3` over a whole manifest: every field it contains
/// must be found (else kubectl errors "unable to find api field" and falls back to
/// /openapi/v2), and list merge keys come out as a real server's would.
#[test]
fn kubectl_strategic_merge_lookup_finds_every_field() {
    fn walk(doc: &Value, schema: &Value, value: &Value, at: &str, keys: &mut Vec<(String, String)>) {
        let Some(obj) = value.as_object() else { return };
        for (k, v) in obj {
            // traverse(): the key must be a declared property.
            let props = schema.get("properties").and_then(Value::as_object);
            let Some(prop) = props.and_then(|p| p.get(k)) else {
                panic!("unable to find api field \"{k}\" at {at}");
            };
            let here = format!("{at}.{k}");
            if let Some(key) = prop.get("x-kubernetes-patch-merge-key").and_then(Value::as_str) {
                keys.push((here.clone(), key.to_string()));
            }
            match v {
                Value::Object(_) => {
                    let sub = resolve(doc, prop);
                    // Maps (labels, resources.limits) have no properties; their values are data.
                    if sub.get("properties").is_some() {
                        walk(doc, sub, v, &here, keys);
                    }
                }
                Value::Array(items) => {
                    let item_schema = resolve(doc, prop.get("items").expect("array items"));
                    for item in items {
                        walk(doc, item_schema, item, &format!("{here}[]"), keys);
                    }
                }
                _ => {}
            }
        }
    }

    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "web", "labels": { "app": "web" }, "annotations": { "kubectl.kubernetes.io/last-applied-configuration": "{}" }, "finalizers": ["x"] },
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": { "app": "web" } },
            "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxSurge": "25%", "maxUnavailable": 1 } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": {
                    "containers": [{
                        "name": "c", "image": "nginx", "args": ["-g"],
                        "ports": [{ "containerPort": 80, "protocol": "TCP" }],
                        "env": [{ "name": "A", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } }],
                        "resources": { "limits": { "cpu": "1", "memory": "1Gi" } },
                        "volumeMounts": [{ "name": "v", "mountPath": "/v" }],
                        "readinessProbe": { "httpGet": { "path": "/", "port": 80 } }
                    }],
                    "volumes": [{ "name": "v", "emptyDir": {} }, { "name": "cm", "configMap": { "name": "cm", "items": [{ "key": "a", "path": "a" }] } }],
                    "nodeSelector": { "kubernetes.io/os": "linux" },
                    "tolerations": [{ "key": "k", "operator": "Exists" }]
                }
            }
        }
    });
    let doc = doc("apis/apps/v1");
    let root = kind_schema(&doc, "apps", "v1", "Deployment")[0].1;
    let mut keys = Vec::new();
    walk(&doc, root, &deployment, "", &mut keys);
    assert!(keys.contains(&(".spec.template.spec.containers".into(), "name".into())), "{keys:?}");
    assert!(keys.contains(&(".spec.template.spec.containers[].ports".into(), "containerPort".into())), "{keys:?}");
    assert!(keys.contains(&(".spec.template.spec.volumes".into(), "name".into())), "{keys:?}");

    let service = json!({
        "apiVersion": "v1", "kind": "Service", "metadata": { "name": "s" },
        "spec": { "selector": { "app": "web" }, "ports": [{ "port": 80, "targetPort": 8080, "name": "http" }], "type": "NodePort" }
    });
    let core = crate::doc("api/v1");
    let mut keys = Vec::new();
    walk(&core, kind_schema(&core, "", "v1", "Service")[0].1, &service, "", &mut keys);
    assert_eq!(keys, [(".spec.ports".to_string(), "port".to_string())]);
}

/// A sample of the shape of the real document (api__v1_openapi.json in kubernetes/kubernetes),
/// reduced to what is structural, compared with ours.
#[test]
fn shape_matches_a_real_kubernetes_document() {
    // From the real ResourceQuota item path: path-level params, and the PATCH operation.
    let real_item_params = json!([
        { "description": "name of the ResourceQuota", "in": "path", "name": "name", "required": true, "schema": { "type": "string", "uniqueItems": true } },
        { "description": "object name and auth scope, such as for teams and projects", "in": "path", "name": "namespace", "required": true, "schema": { "type": "string", "uniqueItems": true } },
        { "description": "If 'true', then the output is pretty printed. Defaults to 'false' unless the user-agent indicates a browser or command-line HTTP tool (curl and wget).", "in": "query", "name": "pretty", "schema": { "type": "string", "uniqueItems": true } }
    ]);
    let real_force = json!({
        "description": "Force is going to \"force\" Apply requests. It means user will re-acquire conflicting fields owned by other people. Force flag must be unset for non-apply patch requests.",
        "in": "query", "name": "force", "schema": { "type": "boolean", "uniqueItems": true }
    });
    let doc = doc("api/v1");
    let item = &doc["paths"]["/api/v1/namespaces/{namespace}/resourcequotas/{name}"];
    assert_eq!(item["parameters"], real_item_params);
    let patch = item["patch"].as_object().expect("patch op");
    assert_eq!(
        patch.keys().collect::<Vec<_>>(),
        [
            "description",
            "operationId",
            "parameters",
            "requestBody",
            "responses",
            "tags",
            "x-kubernetes-action",
            "x-kubernetes-group-version-kind"
        ]
    );
    assert_eq!(patch["description"], "partially update the specified ResourceQuota");
    assert_eq!(patch["parameters"][3], real_force);
    assert_eq!(
        patch["responses"].as_object().map(|r| r.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["200".into(), "201".into(), "401".into()])
    );
    assert_eq!(
        patch["responses"]["201"]["content"].as_object().map(|c| c.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["application/json".into(), "application/vnd.kubernetes.protobuf".into(), "application/yaml".into()])
    );
    assert_eq!(patch["responses"]["201"]["description"], "Created");
    let delete = &item["delete"];
    assert_eq!(
        delete["requestBody"],
        json!({ "content": { "*/*": { "schema": { "$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions" } } } })
    );
    assert_eq!(delete["responses"]["202"]["description"], "Accepted");
    let list = &doc["paths"]["/api/v1/namespaces/{namespace}/secrets"]["get"];
    assert_eq!(list["description"], "list or watch objects of kind Secret");
    assert_eq!(
        list["responses"]["200"]["content"].as_object().map(|c| c.len()),
        Some(5),
        "list responses carry the watch stream types"
    );
    // Top level, as a server publishes it.
    assert_eq!(doc["components"]["securitySchemes"]["BearerToken"]["type"], "apiKey");
    assert_eq!(doc["security"], json!([{ "BearerToken": [] }]));
    // Property references are allOf-wrapped with the description beside them.
    let rq = &schemas(&doc)["io.k8s.api.core.v1.ResourceQuota"];
    assert_eq!(
        rq["properties"]["metadata"]["allOf"],
        json!([{ "$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta" }])
    );
    assert_eq!(rq["type"], "object");
}

#[test]
fn group_and_root_documents() {
    let apps = doc("apis/apps");
    assert_eq!(apps["paths"]["/apis/apps/"]["get"]["operationId"], "getAppsAPIGroup");
    assert!(schemas(&apps).contains_key("io.k8s.apimachinery.pkg.apis.meta.v1.APIGroup"));
    assert_eq!(doc("api")["paths"]["/api/"]["get"]["operationId"], "getCoreAPIVersions");
    assert_eq!(doc("apis")["paths"]["/apis/"]["get"]["operationId"], "getAPIVersions");
    let version = doc("version");
    assert_eq!(
        version["paths"]["/version/"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/io.k8s.apimachinery.pkg.version.Info"
    );
}

#[test]
fn empty_and_duplicate_input() {
    let d = build(&[], &|_, _, _| None);
    assert!(d.by_path.contains_key("version"));
    assert!(!d.by_path.contains_key("api/v1"));
    let twice = [resources()[0].clone(), resources()[0].clone()];
    let d = build(&twice, &|_, _, _| None);
    let doc: Value = serde_json::from_slice(&d.by_path["api/v1"].1).expect("json");
    assert!(lint_openapi30(&doc).is_empty());
    assert_eq!(kind_schema(&doc, "", "v1", "Pod").len(), 1);
}
