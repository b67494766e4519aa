//! The table of served kinds and their strategies.

use super::defaults;
use super::validation::*;
use super::{Convert, DefaultStrategy, Kind, NameRule, Strategy, Subresource, WithStatus, round_trip};
use crate::status::Cause;
use k8s_openapi::api::{
    apps::v1 as apps, autoscaling::v1 as as1, autoscaling::v2 as as2, batch::v1 as batch, coordination::v1 as coord,
    core::v1 as core, discovery::v1 as disc,
};
use serde_json::{Value, json};
use std::sync::OnceLock;

use Subresource::*;

/// Builds a [`Kind`] whose type checks and schema come from the k8s-openapi type `$ty`.
macro_rules! kind {
    ($ty:ty, $group:expr, $version:expr, $kind:expr, $plural:expr, $singular:expr, namespaced: $ns:expr,
     short: $short:expr, cat: $cat:expr, sub: $sub:expr, storage: $storage:expr, name: $name:expr, strategy: $strategy:expr $(, convert: $conv:expr)? $(, read_only: $ro:expr)?) => {
        Kind {
            group: $group,
            version: $version,
            kind: $kind,
            list_kind: concat!($kind, "List"),
            plural: $plural,
            singular: $singular,
            namespaced: $ns,
            short_names: $short,
            categories: $cat,
            subresources: $sub,
            read_only: false $(|| $ro)?,
            storage: $storage,
            name_rule: $name,
            round_trip: round_trip::<$ty>,
            strategy: $strategy,
            convert: None $(.or(Some($conv)))?,
            doc: skiff_openapi::ResourceDoc::of::<$ty>,
        }
    };
}

pub fn kinds() -> &'static [Kind] {
    static KINDS: OnceLock<Vec<Kind>> = OnceLock::new();
    KINDS.get_or_init(|| {
        const ALL: &[&str] = &["all"];
        const NONE: &[&str] = &[];
        use NameRule::*;
        vec![
            kind!(core::Namespace, "", "v1", "Namespace", "namespaces", "namespace", namespaced: false, short: &["ns"], cat: NONE, sub: &[Status], storage: "namespaces", name: Dns1123Label, strategy: &NamespaceStrategy),
            kind!(core::Pod, "", "v1", "Pod", "pods", "pod", namespaced: true, short: &["po"], cat: ALL, sub: &[Status, Binding, Log], storage: "pods", name: Dns1123Subdomain, strategy: &PodStrategy),
            kind!(core::Service, "", "v1", "Service", "services", "service", namespaced: true, short: &["svc"], cat: ALL, sub: &[Status], storage: "services", name: Dns1035Label, strategy: &ServiceStrategy),
            kind!(core::Endpoints, "", "v1", "Endpoints", "endpoints", "endpoints", namespaced: true, short: &["ep"], cat: NONE, sub: &[], storage: "endpoints", name: Dns1123Subdomain, strategy: &CreateOnUpdate),
            kind!(core::Node, "", "v1", "Node", "nodes", "node", namespaced: false, short: &["no"], cat: NONE, sub: &[Status], storage: "nodes", name: Dns1123Subdomain, strategy: &WithStatus),
            kind!(core::ReplicationController, "", "v1", "ReplicationController", "replicationcontrollers", "replicationcontroller", namespaced: true, short: &["rc"], cat: ALL, sub: &[Status, Scale], storage: "controllers", name: Dns1123Subdomain, strategy: &ReplicationControllerStrategy),
            kind!(core::ConfigMap, "", "v1", "ConfigMap", "configmaps", "configmap", namespaced: true, short: &["cm"], cat: NONE, sub: &[], storage: "configmaps", name: Dns1123Subdomain, strategy: &DefaultStrategy),
            kind!(core::Secret, "", "v1", "Secret", "secrets", "secret", namespaced: true, short: &[], cat: NONE, sub: &[], storage: "secrets", name: Dns1123Subdomain, strategy: &SecretStrategy),
            kind!(core::ServiceAccount, "", "v1", "ServiceAccount", "serviceaccounts", "serviceaccount", namespaced: true, short: &["sa"], cat: NONE, sub: &[], storage: "serviceaccounts", name: Dns1123Subdomain, strategy: &ServiceAccountStrategy),
            kind!(core::Event, "", "v1", "Event", "events", "event", namespaced: true, short: &["ev"], cat: NONE, sub: &[], storage: "events", name: Dns1123Subdomain, strategy: &CreateOnUpdate),
            kind!(core::ComponentStatus, "", "v1", "ComponentStatus", "componentstatuses", "componentstatus", namespaced: false, short: &["cs"], cat: NONE, sub: &[], storage: "componentstatuses", name: Dns1123Subdomain, strategy: &DefaultStrategy, read_only: true),
            kind!(apps::Deployment, "apps", "v1", "Deployment", "deployments", "deployment", namespaced: true, short: &["deploy"], cat: ALL, sub: &[Status, Scale], storage: "deployments", name: Dns1123Subdomain, strategy: &WorkloadStrategy(defaults::deployment, true)),
            kind!(apps::ReplicaSet, "apps", "v1", "ReplicaSet", "replicasets", "replicaset", namespaced: true, short: &["rs"], cat: ALL, sub: &[Status, Scale], storage: "replicasets", name: Dns1123Subdomain, strategy: &WorkloadStrategy(defaults::replica_set, true)),
            kind!(apps::DaemonSet, "apps", "v1", "DaemonSet", "daemonsets", "daemonset", namespaced: true, short: &["ds"], cat: ALL, sub: &[Status], storage: "daemonsets", name: Dns1123Subdomain, strategy: &WorkloadStrategy(defaults::daemon_set, true)),
            kind!(apps::ControllerRevision, "apps", "v1", "ControllerRevision", "controllerrevisions", "controllerrevision", namespaced: true, short: &[], cat: NONE, sub: &[], storage: "controllerrevisions", name: Dns1123Subdomain, strategy: &DefaultStrategy),
            kind!(batch::Job, "batch", "v1", "Job", "jobs", "job", namespaced: true, short: &[], cat: ALL, sub: &[Status], storage: "jobs", name: Dns1123Subdomain, strategy: &WorkloadStrategy(defaults::job, false)),
            kind!(disc::EndpointSlice, "discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", "endpointslice", namespaced: true, short: &[], cat: NONE, sub: &[], storage: "endpointslices", name: Dns1123Subdomain, strategy: &DefaultStrategy),
            kind!(as2::HorizontalPodAutoscaler, "autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", "horizontalpodautoscaler", namespaced: true, short: &["hpa"], cat: ALL, sub: &[Status], storage: "horizontalpodautoscalers", name: Dns1123Subdomain, strategy: &WithStatus),
            kind!(as1::HorizontalPodAutoscaler, "autoscaling", "v1", "HorizontalPodAutoscaler", "horizontalpodautoscalers", "horizontalpodautoscaler", namespaced: true, short: &["hpa"], cat: ALL, sub: &[Status], storage: "horizontalpodautoscalers", name: Dns1123Subdomain, strategy: &WithStatus, convert: &HpaV1),
            kind!(coord::Lease, "coordination.k8s.io", "v1", "Lease", "leases", "lease", namespaced: true, short: &[], cat: NONE, sub: &[], storage: "leases", name: Dns1123Subdomain, strategy: &CreateOnUpdate),
        ]
    })
}

struct CreateOnUpdate;
impl Strategy for CreateOnUpdate {
    fn allow_create_on_update(&self) -> bool {
        true
    }
}

struct NamespaceStrategy;
impl Strategy for NamespaceStrategy {
    fn default(&self, obj: &mut Value) {
        defaults::namespace(obj);
    }
    fn has_status(&self) -> bool {
        true
    }
    fn return_deleted_object(&self) -> bool {
        true
    }
    fn initial_status(&self, _obj: &Value) -> Option<Value> {
        Some(json!({"phase": "Active"}))
    }
}

struct ServiceAccountStrategy;
impl Strategy for ServiceAccountStrategy {
    fn return_deleted_object(&self) -> bool {
        true
    }
}

struct SecretStrategy;
impl Strategy for SecretStrategy {
    fn default(&self, obj: &mut Value) {
        defaults::secret(obj);
    }
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        if new["type"] != old["type"] {
            return vec![Cause::invalid("type", &new["type"], "field is immutable")];
        }
        Vec::new()
    }
}

struct PodStrategy;
impl Strategy for PodStrategy {
    fn default(&self, obj: &mut Value) {
        defaults::pod(obj);
    }
    fn validate(&self, obj: &Value) -> Vec<Cause> {
        validate_pod_spec(&obj["spec"], "spec")
    }
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        // Kubernetes allows a running pod's spec to change only in a few places.
        let masked = |spec: &Value| {
            let mut s = spec.clone();
            for list in ["containers", "initContainers"] {
                if let Some(cs) = s.get_mut(list).and_then(Value::as_array_mut) {
                    for c in cs {
                        c["image"] = Value::Null;
                    }
                }
            }
            if let Some(m) = s.as_object_mut() {
                m.remove("activeDeadlineSeconds");
                m.remove("tolerations");
                m.remove("terminationGracePeriodSeconds");
            }
            s
        };
        if masked(&new["spec"]) != masked(&old["spec"]) {
            return vec![Cause::forbidden(
                "spec",
                "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
            )];
        }
        Vec::new()
    }
    fn has_status(&self) -> bool {
        true
    }
    fn return_deleted_object(&self) -> bool {
        true
    }
    fn initial_status(&self, obj: &Value) -> Option<Value> {
        Some(json!({"phase": "Pending", "qosClass": skiff_apimachinery::qos::class(&obj["spec"])}))
    }
}

struct ServiceStrategy;
impl Strategy for ServiceStrategy {
    fn default(&self, obj: &mut Value) {
        defaults::service(obj);
    }
    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let spec = &obj["spec"];
        let mut causes = Vec::new();
        let ty = spec["type"].as_str().unwrap_or("ClusterIP");
        let types = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
        if !types.contains(&ty) {
            causes.push(Cause::not_supported("spec.type", &json!(ty), &types));
        }
        let ports = spec["ports"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        let headless = spec["clusterIP"].as_str() == Some("None");
        if ports.is_empty() && ty != "ExternalName" && !headless {
            causes.push(Cause::required("spec.ports"));
        }
        if ty == "ExternalName" && spec["externalName"].as_str().unwrap_or("").is_empty() {
            causes.push(Cause::required("spec.externalName"));
        }
        let mut names = std::collections::HashSet::new();
        let mut seen = std::collections::HashSet::new();
        for (i, p) in ports.iter().enumerate() {
            let f = format!("spec.ports[{i}]");
            let name = p["name"].as_str().unwrap_or("");
            if ports.len() > 1 && name.is_empty() {
                causes.push(Cause::required(format!("{f}.name")));
            }
            if !name.is_empty() {
                for c in validate_name(NameRule::Dns1123Label, name, &format!("{f}.name")) {
                    causes.push(c);
                }
                if !names.insert(name.to_string()) {
                    causes.push(Cause::duplicate(format!("{f}.name"), &json!(name)));
                }
            }
            causes.extend(validate_port_number(&p["port"], &format!("{f}.port"), true));
            causes.extend(validate_protocol(&p["protocol"], &format!("{f}.protocol")));
            if let Some(tp) = p["targetPort"].as_i64() {
                if !(1..=65535).contains(&tp) {
                    causes.push(Cause::invalid(
                        format!("{f}.targetPort"),
                        &p["targetPort"],
                        "must be between 1 and 65535, inclusive",
                    ));
                }
            }
            if !p["nodePort"].is_null() && ty != "NodePort" && ty != "LoadBalancer" {
                causes.push(Cause::forbidden(format!("{f}.nodePort"), "may not be used when `type` is 'ClusterIP'"));
            }
            let key = (p["port"].as_i64(), p["protocol"].as_str().unwrap_or("TCP").to_string());
            if !seen.insert(key) {
                causes.push(Cause::duplicate(format!("{f}"), &json!({"port": p["port"], "protocol": p["protocol"]})));
            }
        }
        if let Some(sel) = spec.get("selector") {
            causes.extend(validate_labels(sel, "spec.selector"));
        }
        if let Some(sa) = spec["sessionAffinity"].as_str() {
            if sa != "None" && sa != "ClientIP" {
                causes.push(Cause::not_supported("spec.sessionAffinity", &json!(sa), &["ClientIP", "None"]));
            }
        }
        for field in ["externalTrafficPolicy", "internalTrafficPolicy"] {
            if let Some(p) = spec[field].as_str() {
                if p != "Cluster" && p != "Local" {
                    causes.push(Cause::not_supported(format!("spec.{field}"), &json!(p), &["Cluster", "Local"]));
                }
            }
        }
        causes
    }
    fn prepare_update(&self, new: &mut Value, old: &Value) {
        crate::api::alloc::keep_allocated(new, old);
    }
    fn return_deleted_object(&self) -> bool {
        true
    }
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        let (n, o) = (&new["spec"]["clusterIP"], &old["spec"]["clusterIP"]);
        let switching_type = new["spec"]["type"] != old["spec"]["type"]
            && (new["spec"]["type"] == "ExternalName" || old["spec"]["type"] == "ExternalName");
        if !o.is_null() && o != "" && n != o && !switching_type {
            return vec![Cause::invalid("spec.clusterIPs[0]", n, "may not change once set")];
        }
        Vec::new()
    }
    fn has_status(&self) -> bool {
        true
    }
    fn initial_status(&self, _obj: &Value) -> Option<Value> {
        Some(json!({"loadBalancer": {}}))
    }
}

struct ReplicationControllerStrategy;
impl Strategy for ReplicationControllerStrategy {
    fn default(&self, obj: &mut Value) {
        defaults::replication_controller(obj);
    }
    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let spec = &obj["spec"];
        let mut causes = validate_replicas(spec);
        let sel = &spec["selector"];
        if sel.as_object().is_none_or(|m| m.is_empty()) {
            causes.push(Cause::required("spec.selector"));
        } else {
            causes.extend(validate_labels(sel, "spec.selector"));
        }
        match spec.get("template").filter(|t| t.is_object()) {
            None => causes.push(Cause::required("spec.template")),
            Some(t) => {
                causes.extend(validate_selector_matches_template(sel, &t["metadata"]["labels"], false));
                causes.extend(validate_template(t));
            }
        }
        causes
    }
    fn has_status(&self) -> bool {
        true
    }
    fn initial_status(&self, _obj: &Value) -> Option<Value> {
        Some(json!({"replicas": 0}))
    }
}

/// Deployments, ReplicaSets, DaemonSets and Jobs: set-based selectors over a pod template.
struct WorkloadStrategy(fn(&mut Value), bool);
impl Strategy for WorkloadStrategy {
    fn default(&self, obj: &mut Value) {
        (self.0)(obj);
    }
    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let spec = &obj["spec"];
        let mut causes = validate_replicas(spec);
        let sel = &spec["selector"];
        let require_selector = self.1;
        let empty = sel.is_null()
            || sel.as_object().is_some_and(|m| {
                m.values().all(|v| {
                    v.is_null()
                        || v.as_object().is_some_and(|x| x.is_empty())
                        || v.as_array().is_some_and(|x| x.is_empty())
                })
            });
        if require_selector && empty {
            causes.push(Cause::required("spec.selector"));
        }
        match spec.get("template").filter(|t| t.is_object()) {
            None => causes.push(Cause::required("spec.template")),
            Some(t) => {
                if !empty {
                    causes.extend(validate_selector_matches_template(sel, &t["metadata"]["labels"], true));
                }
                causes.extend(validate_template(t));
            }
        }
        causes
    }
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        if self.1 && !old["spec"]["selector"].is_null() && new["spec"]["selector"] != old["spec"]["selector"] {
            return vec![Cause::invalid("spec.selector", &new["spec"]["selector"], "field is immutable")];
        }
        Vec::new()
    }
    fn has_status(&self) -> bool {
        true
    }
}

fn validate_replicas(spec: &Value) -> Vec<Cause> {
    match &spec["replicas"] {
        Value::Null => Vec::new(),
        v if v.as_i64().is_some_and(|r| r >= 0) => Vec::new(),
        v => vec![Cause::invalid("spec.replicas", v, "must be greater than or equal to 0")],
    }
}

fn validate_template(t: &Value) -> Vec<Cause> {
    let mut causes = validate_labels(&t["metadata"]["labels"], "spec.template.metadata.labels");
    causes.extend(validate_pod_spec(&t["spec"], "spec.template.spec"));
    causes
}

/// autoscaling/v1 HPAs are stored as autoscaling/v2: v1's single CPU target is v2's first
/// `Resource` metric.
struct HpaV1;
impl Convert for HpaV1 {
    fn to_storage(&self, mut obj: Value) -> Value {
        obj["apiVersion"] = json!("autoscaling/v2");
        if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
            if let Some(cpu) = spec.remove("targetCPUUtilizationPercentage") {
                if !cpu.is_null() {
                    spec.insert(
                        "metrics".into(),
                        json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": cpu}}}]),
                    );
                }
            }
        }
        if let Some(status) = obj.get_mut("status").and_then(Value::as_object_mut) {
            if let Some(cpu) = status.remove("currentCPUUtilizationPercentage") {
                status.insert(
                    "currentMetrics".into(),
                    json!([{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": cpu}}}]),
                );
            }
        }
        obj
    }
    fn from_storage(&self, mut obj: Value) -> Value {
        obj["apiVersion"] = json!("autoscaling/v1");
        if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
            let metrics = spec.remove("metrics");
            spec.remove("behavior");
            let cpu = metrics.as_ref().and_then(|m| {
                m.as_array()?.iter().find_map(|x| {
                    (x["type"] == "Resource" && x["resource"]["name"] == "cpu")
                        .then(|| x["resource"]["target"]["averageUtilization"].clone())
                })
            });
            if let Some(cpu) = cpu.filter(|c| !c.is_null()) {
                spec.insert("targetCPUUtilizationPercentage".into(), cpu);
            }
        }
        if let Some(status) = obj.get_mut("status").and_then(Value::as_object_mut) {
            let current = status.remove("currentMetrics");
            status.remove("conditions");
            let cpu = current.as_ref().and_then(|m| {
                m.as_array()?.iter().find_map(|x| {
                    (x["type"] == "Resource" && x["resource"]["name"] == "cpu")
                        .then(|| x["resource"]["current"]["averageUtilization"].clone())
                })
            });
            if let Some(cpu) = cpu.filter(|c| !c.is_null()) {
                status.insert("currentCPUUtilizationPercentage".into(), cpu);
            }
        }
        obj
    }
}
