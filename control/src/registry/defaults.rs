//! Kubernetes' defaulting (the Go `SetDefaults_*` functions and the defaulting admission plugins),
//! applied to JSON objects before validation.

use serde_json::{Map, Value, json};

/// Sets `obj[key]` to `value` when it is missing or null.
pub fn set_default(obj: &mut Value, key: &str, value: Value) {
    if let Some(m) = obj.as_object_mut() {
        match m.get(key) {
            None | Some(Value::Null) => {
                m.insert(key.to_string(), value);
            }
            _ => {}
        }
    }
}

fn each_mut(obj: &mut Value, key: &str, mut f: impl FnMut(&mut Value)) {
    if let Some(Value::Array(items)) = obj.get_mut(key) {
        items.iter_mut().for_each(&mut f);
    }
}

/// Pod spec defaults, used for Pods and every pod template.
pub fn pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "enableServiceLinks", json!(true));
    // The ServiceAccount admission plugin assigns the namespace's default account.
    set_default(spec, "serviceAccountName", json!("default"));
    if spec.get("serviceAccount").is_none() {
        let sa = spec["serviceAccountName"].clone();
        spec["serviceAccount"] = sa;
    }
    set_default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    set_default(spec, "priority", json!(0));
    for key in ["containers", "initContainers"] {
        each_mut(spec, key, container);
    }
    each_mut(spec, "volumes", |v| {
        if let Some(cm) = v.get_mut("configMap") {
            set_default(cm, "defaultMode", json!(420));
        }
        if let Some(s) = v.get_mut("secret") {
            set_default(s, "defaultMode", json!(420));
        }
        if let Some(d) = v.get_mut("downwardAPI") {
            set_default(d, "defaultMode", json!(420));
        }
        if let Some(h) = v.get_mut("hostPath") {
            set_default(h, "type", json!(""));
        }
    });
}

/// Pod-only defaults that do not apply to templates (admission plugins acting on real pods).
pub fn pod(obj: &mut Value) {
    if let Some(spec) = obj.get_mut("spec") {
        pod_spec(spec);
        // DefaultTolerationSeconds admission: pods tolerate an unreachable or not-ready node
        // for 300 s before eviction.
        let tolerations = spec
            .as_object_mut()
            .map(|m| m.entry("tolerations").or_insert_with(|| json!([])))
            .and_then(Value::as_array_mut);
        if let Some(t) = tolerations {
            for key in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
                let present = t.iter().any(|x| x.get("key").and_then(Value::as_str) == Some(key));
                if !present {
                    t.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
                }
            }
        }
    }
}

fn container(c: &mut Value) {
    if !c.is_object() {
        return;
    }
    let image = c.get("image").and_then(Value::as_str).unwrap_or("").to_string();
    set_default(c, "imagePullPolicy", json!(default_pull_policy(&image)));
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    set_default(c, "resources", json!({}));
    each_mut(c, "ports", |p| set_default(p, "protocol", json!("TCP")));
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe) {
            set_default(p, "timeoutSeconds", json!(1));
            set_default(p, "periodSeconds", json!(10));
            set_default(p, "successThreshold", json!(1));
            set_default(p, "failureThreshold", json!(3));
            if let Some(h) = p.get_mut("httpGet") {
                set_default(h, "path", json!("/"));
                set_default(h, "scheme", json!("HTTP"));
            }
        }
    }
    each_mut(c, "env", |e| {
        if let Some(fr) = e.get_mut("valueFrom").and_then(|v| v.get_mut("fieldRef")) {
            set_default(fr, "apiVersion", json!("v1"));
        }
    });
}

/// `Always` for `:latest` or untagged images, `IfNotPresent` otherwise (Kubernetes' rule).
pub fn default_pull_policy(image: &str) -> &'static str {
    let without_digest = image.split('@').next().unwrap_or("");
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = without_digest.rsplit('/').next().unwrap_or("");
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

/// Pod template defaults inside workloads.
pub fn template(obj: &mut Value, path: &[&str]) {
    let mut cur = obj;
    for p in path {
        match cur.get_mut(*p) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(spec) = cur.get_mut("spec") {
        pod_spec(spec);
    }
}

pub fn service(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec") else { return };
    if !spec.is_object() {
        return;
    }
    set_default(spec, "type", json!("ClusterIP"));
    set_default(spec, "sessionAffinity", json!("None"));
    let ty = spec["type"].as_str().unwrap_or("ClusterIP").to_string();
    if ty != "ExternalName" {
        set_default(spec, "internalTrafficPolicy", json!("Cluster"));
        set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
        set_default(spec, "ipFamilies", json!(["IPv4"]));
    }
    if ty == "NodePort" || ty == "LoadBalancer" {
        set_default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if ty == "LoadBalancer" {
        set_default(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    if spec.get("sessionAffinity").and_then(Value::as_str) == Some("ClientIP") {
        set_default(spec, "sessionAffinityConfig", json!({"clientIP": {"timeoutSeconds": 10800}}));
    }
    each_mut(spec, "ports", |p| {
        set_default(p, "protocol", json!("TCP"));
        if p.get("targetPort").is_none_or(Value::is_null) {
            let port = p.get("port").cloned().unwrap_or(Value::Null);
            if !port.is_null() {
                p["targetPort"] = port;
            }
        }
    });
}

/// ReplicationController: replicas 1, selector and labels from the template's labels.
pub fn replication_controller(obj: &mut Value) {
    let template_labels = obj.pointer("/spec/template/metadata/labels").cloned();
    if let Some(spec) = obj.get_mut("spec").filter(|s| s.is_object()) {
        set_default(spec, "replicas", json!(1));
        if let Some(labels) = &template_labels {
            let empty = spec.get("selector").and_then(Value::as_object).is_none_or(Map::is_empty);
            if empty {
                spec["selector"] = labels.clone();
            }
        }
    }
    if let Some(labels) = template_labels {
        if let Some(meta) = obj.get_mut("metadata").filter(|m| m.is_object()) {
            let empty = meta.get("labels").and_then(Value::as_object).is_none_or(Map::is_empty);
            if empty {
                meta["labels"] = labels;
            }
        }
    }
    template(obj, &["spec", "template"]);
}

pub fn replica_set(obj: &mut Value) {
    if let Some(spec) = obj.get_mut("spec").filter(|s| s.is_object()) {
        set_default(spec, "replicas", json!(1));
    }
    template(obj, &["spec", "template"]);
}

pub fn deployment(obj: &mut Value) {
    if let Some(spec) = obj.get_mut("spec").filter(|s| s.is_object()) {
        set_default(spec, "replicas", json!(1));
        set_default(spec, "revisionHistoryLimit", json!(10));
        set_default(spec, "progressDeadlineSeconds", json!(600));
        set_default(spec, "strategy", json!({"type": "RollingUpdate"}));
        if let Some(st) = spec.get_mut("strategy") {
            set_default(st, "type", json!("RollingUpdate"));
            if st["type"] == "RollingUpdate" {
                set_default(st, "rollingUpdate", json!({}));
                if let Some(ru) = st.get_mut("rollingUpdate") {
                    set_default(ru, "maxUnavailable", json!("25%"));
                    set_default(ru, "maxSurge", json!("25%"));
                }
            }
        }
    }
    template(obj, &["spec", "template"]);
}

pub fn daemon_set(obj: &mut Value) {
    if let Some(spec) = obj.get_mut("spec").filter(|s| s.is_object()) {
        set_default(spec, "revisionHistoryLimit", json!(10));
        set_default(spec, "updateStrategy", json!({"type": "RollingUpdate"}));
        if let Some(st) = spec.get_mut("updateStrategy") {
            set_default(st, "type", json!("RollingUpdate"));
            if st["type"] == "RollingUpdate" {
                set_default(st, "rollingUpdate", json!({}));
                if let Some(ru) = st.get_mut("rollingUpdate") {
                    set_default(ru, "maxUnavailable", json!(1));
                    set_default(ru, "maxSurge", json!(0));
                }
            }
        }
    }
    template(obj, &["spec", "template"]);
}

pub fn job(obj: &mut Value) {
    if let Some(spec) = obj.get_mut("spec").filter(|s| s.is_object()) {
        set_default(spec, "parallelism", json!(1));
        if spec.get("completions").is_none() && spec["parallelism"] == json!(1) {
            spec["completions"] = json!(1);
        }
        set_default(spec, "backoffLimit", json!(6));
        set_default(spec, "completionMode", json!("NonIndexed"));
        set_default(spec, "suspend", json!(false));
        set_default(spec, "manualSelector", json!(false));
        set_default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    }
    template(obj, &["spec", "template"]);
}

pub fn namespace(obj: &mut Value) {
    set_default(obj, "spec", json!({}));
    if let Some(spec) = obj.get_mut("spec") {
        set_default(spec, "finalizers", json!(["kubernetes"]));
    }
}

pub fn secret(obj: &mut Value) {
    set_default(obj, "type", json!("Opaque"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy_follows_the_tag() {
        assert_eq!(default_pull_policy("nginx"), "Always");
        assert_eq!(default_pull_policy("nginx:latest"), "Always");
        assert_eq!(default_pull_policy("nginx:1.7.9"), "IfNotPresent");
        assert_eq!(default_pull_policy("localhost:5000/nginx"), "Always");
        assert_eq!(default_pull_policy("localhost:5000/nginx:1"), "IfNotPresent");
        assert_eq!(default_pull_policy("nginx@sha256:abc"), "IfNotPresent");
    }

    #[test]
    fn service_target_port_defaults_to_port() {
        let mut s = json!({"spec": {"ports": [{"port": 80}]}});
        service(&mut s);
        assert_eq!(s["spec"]["ports"][0]["targetPort"], json!(80));
        assert_eq!(s["spec"]["ports"][0]["protocol"], json!("TCP"));
        assert_eq!(s["spec"]["type"], json!("ClusterIP"));
    }

    #[test]
    fn rc_selector_and_labels_come_from_the_template() {
        let mut rc = json!({"metadata": {"name": "f"}, "spec": {"template": {"metadata": {"labels": {"name": "frontend"}}, "spec": {"containers": []}}}});
        replication_controller(&mut rc);
        assert_eq!(rc["spec"]["selector"], json!({"name": "frontend"}));
        assert_eq!(rc["metadata"]["labels"], json!({"name": "frontend"}));
        assert_eq!(rc["spec"]["replicas"], json!(1));
        assert_eq!(rc["spec"]["template"]["spec"]["restartPolicy"], json!("Always"));
    }
}
