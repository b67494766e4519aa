//! Discovery: `/api`, `/apis`, `/api/v1`, `/apis/<group>[/<version>]`, both the legacy documents
//! and the aggregated `apidiscovery.k8s.io/v2` form kubectl asks for first.

use crate::registry::{self, Kind, Subresource};
use serde_json::{Value, json};

pub const AGGREGATED_CT: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether the Accept header asks for aggregated discovery (v2; v2beta1 is answered as v2).
pub fn wants_aggregated(accept: &str) -> bool {
    accept.contains("as=APIGroupDiscoveryList") && accept.contains("g=apidiscovery.k8s.io") && accept.contains("v=v2")
}

fn kinds_in<'a>(group: &'a str, version: &'a str) -> impl Iterator<Item = &'static Kind> + 'a {
    registry::kinds().iter().filter(move |k| k.group == group && k.version == version)
}

fn gv(group: &str, version: &str) -> String {
    if group.is_empty() { version.to_string() } else { format!("{group}/{version}") }
}

/// `/api` (legacy): `APIVersions`.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_doc(group: &str, versions: &[&str]) -> Value {
    let vs: Vec<Value> = versions.iter().map(|v| json!({"groupVersion": gv(group, v), "version": v})).collect();
    json!({"name": group, "versions": vs, "preferredVersion": vs[0].clone()})
}

/// `/apis` (legacy): `APIGroupList`.
pub fn api_group_list() -> Value {
    let groups: Vec<Value> =
        registry::group_versions().iter().filter(|(g, _)| !g.is_empty()).map(|(g, vs)| group_doc(g, vs)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`: `APIGroup`.
pub fn api_group(group: &str) -> Option<Value> {
    let gvs = registry::group_versions();
    let (_, vs) = gvs.iter().find(|(g, _)| *g == group && !g.is_empty())?;
    let mut d = group_doc(group, vs);
    d["kind"] = json!("APIGroup");
    d["apiVersion"] = json!("v1");
    Some(d)
}

/// `/api/v1`, `/apis/<group>/<version>`: `APIResourceList`.
pub fn api_resource_list(group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for k in kinds_in(group, version) {
        let mut r = json!({
            "name": k.plural,
            "singularName": k.singular,
            "namespaced": k.namespaced,
            "kind": k.kind,
            "verbs": k.verbs(),
        });
        if !k.short_names.is_empty() {
            r["shortNames"] = json!(k.short_names);
        }
        if !k.categories.is_empty() {
            r["categories"] = json!(k.categories);
        }
        resources.push(r);
        for s in k.subresources {
            let (kind, verbs, grp, ver): (&str, Vec<&str>, &str, &str) = match s {
                Subresource::Status => (k.kind, vec!["get", "patch", "update"], "", ""),
                Subresource::Scale => ("Scale", vec!["get", "patch", "update"], "autoscaling", "v1"),
                Subresource::Binding => ("Binding", vec!["create"], "", ""),
                Subresource::Log => ("Pod", vec!["get"], "", ""),
            };
            let mut r = json!({"name": format!("{}/{}", k.plural, s.name()), "singularName": "", "namespaced": k.namespaced, "kind": kind, "verbs": verbs});
            if !grp.is_empty() {
                r["group"] = json!(grp);
                r["version"] = json!(ver);
            }
            resources.push(r);
        }
    }
    if resources.is_empty() {
        return None;
    }
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv(group, version), "resources": resources}),
    )
}

/// Aggregated discovery for `/api` (core only) or `/apis` (every named group).
pub fn aggregated(core: bool) -> Value {
    let mut items = Vec::new();
    for (group, versions) in registry::group_versions() {
        if group.is_empty() != core {
            continue;
        }
        let vs: Vec<Value> = versions
            .iter()
            .map(|v| {
                let resources: Vec<Value> = kinds_in(group, v)
                    .map(|k| {
                        let mut r = json!({
                            "resource": k.plural,
                            "responseKind": {"group": k.group, "version": k.version, "kind": k.kind},
                            "scope": if k.namespaced { "Namespaced" } else { "Cluster" },
                            "singularResource": k.singular,
                            "verbs": k.verbs(),
                        });
                        if !k.short_names.is_empty() {
                            r["shortNames"] = json!(k.short_names);
                        }
                        if !k.categories.is_empty() {
                            r["categories"] = json!(k.categories);
                        }
                        let subs: Vec<Value> = k
                            .subresources
                            .iter()
                            .map(|s| {
                                let (rk, verbs) = match s {
                                    Subresource::Status => (
                                        json!({"group": k.group, "version": k.version, "kind": k.kind}),
                                        vec!["get", "patch", "update"],
                                    ),
                                    Subresource::Scale => (
                                        json!({"group": "autoscaling", "version": "v1", "kind": "Scale"}),
                                        vec!["get", "patch", "update"],
                                    ),
                                    Subresource::Binding => {
                                        (json!({"group": "", "version": "v1", "kind": "Binding"}), vec!["create"])
                                    }
                                    Subresource::Log => {
                                        (json!({"group": "", "version": "v1", "kind": "Pod"}), vec!["get"])
                                    }
                                };
                                json!({"subresource": s.name(), "responseKind": rk, "verbs": verbs})
                            })
                            .collect();
                        if !subs.is_empty() {
                            r["subresources"] = json!(subs);
                        }
                        r
                    })
                    .collect();
                json!({"version": v, "resources": resources, "freshness": "Current"})
            })
            .collect();
        items.push(json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": vs}));
    }
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}
