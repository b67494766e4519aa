//! A container's environment, computed the way the kubelet does: the Docker-links-style service
//! variables first, then `envFrom`, then `env` (later wins), with `$(VAR)` expansion against what
//! came before. Pure: the ConfigMaps and Secrets it reads are fetched by the caller.

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service};
use std::collections::{BTreeMap, HashMap};

/// The objects a container's environment and volumes may reference, fetched beforehand.
#[derive(Default)]
pub struct Refs {
    pub config_maps: HashMap<String, ConfigMap>,
    pub secrets: HashMap<String, Secret>,
}

impl Refs {
    pub fn config_map_value(&self, name: &str, key: &str) -> Option<String> {
        let cm = self.config_maps.get(name)?;
        cm.data.as_ref().and_then(|d| d.get(key).cloned()).or_else(|| {
            cm.binary_data.as_ref().and_then(|d| d.get(key)).map(|b| String::from_utf8_lossy(&b.0).into_owned())
        })
    }
    pub fn secret_value(&self, name: &str, key: &str) -> Option<String> {
        let s = self.secrets.get(name)?;
        s.data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .or_else(|| s.string_data.as_ref().and_then(|d| d.get(key).cloned()))
    }
}

/// The ConfigMaps and Secrets (names) a container's env refers to.
pub fn referenced(c: &Container) -> (Vec<String>, Vec<String>) {
    let (mut cms, mut secrets) = (Vec::new(), Vec::new());
    for e in c.env.iter().flatten() {
        if let Some(src) = &e.value_from {
            if let Some(r) = &src.config_map_key_ref {
                cms.push(r.name.clone());
            }
            if let Some(r) = &src.secret_key_ref {
                secrets.push(r.name.clone());
            }
        }
    }
    for f in c.env_from.iter().flatten() {
        if let Some(r) = &f.config_map_ref {
            cms.push(r.name.clone());
        }
        if let Some(r) = &f.secret_ref {
            secrets.push(r.name.clone());
        }
    }
    (cms, secrets)
}

/// `redis-master` → `REDIS_MASTER`.
fn env_name(service: &str) -> String {
    service.to_uppercase().replace('-', "_")
}

/// The variables Kubernetes gives every container for each Service of its namespace (and the
/// `kubernetes` Service of `default`) that existed when the pod started: `{SVC}_SERVICE_HOST`,
/// `{SVC}_SERVICE_PORT[_{PORTNAME}]`, and the Docker-links `{SVC}_PORT*` family.
pub fn service_variables(namespace: &str, services: &[Service]) -> Vec<(String, String)> {
    let mut chosen: BTreeMap<String, &Service> = BTreeMap::new();
    for s in services {
        let ns = s.metadata.namespace.as_deref().unwrap_or("");
        let name = s.metadata.name.clone().unwrap_or_default();
        let spec = match &s.spec {
            Some(spec) => spec,
            None => continue,
        };
        let ip = spec.cluster_ip.as_deref().unwrap_or("");
        if ip.is_empty() || ip == "None" {
            continue;
        }
        if ns == namespace || (ns == "default" && name == "kubernetes" && !chosen.contains_key(&name)) {
            chosen.insert(name, s);
        }
    }
    let mut out = Vec::new();
    for (name, s) in chosen {
        let spec = s.spec.as_ref().expect("checked above");
        let ip = spec.cluster_ip.clone().unwrap_or_default();
        let prefix = env_name(&name);
        let ports = spec.ports.as_deref().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        out.push((format!("{prefix}_SERVICE_HOST"), ip.clone()));
        out.push((format!("{prefix}_SERVICE_PORT"), first.port.to_string()));
        for p in ports {
            if let Some(pn) = p.name.as_deref().filter(|n| !n.is_empty()) {
                out.push((format!("{prefix}_SERVICE_PORT_{}", env_name(pn)), p.port.to_string()));
            }
        }
        let proto = |p: &k8s_openapi::api::core::v1::ServicePort| p.protocol.clone().unwrap_or_else(|| "TCP".into());
        out.push((format!("{prefix}_PORT"), format!("{}://{ip}:{}", proto(first).to_lowercase(), first.port)));
        for p in ports {
            let pr = proto(p);
            let base = format!("{prefix}_PORT_{}_{}", p.port, pr.to_uppercase());
            out.push((base.clone(), format!("{}://{ip}:{}", pr.to_lowercase(), p.port)));
            out.push((format!("{base}_PROTO"), pr.to_lowercase()));
            out.push((format!("{base}_PORT"), p.port.to_string()));
            out.push((format!("{base}_ADDR"), ip.clone()));
        }
    }
    out
}

/// `$(VAR)` → its value when defined, `$$(VAR)` → `$(VAR)`, anything else unchanged (Kubernetes'
/// expansion rules).
pub fn expand(s: &str, vars: &HashMap<String, String>) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'(' {
                if let Some(end) = s[i + 2..].find(')') {
                    let name = &s[i + 2..i + 2 + end];
                    match vars.get(name) {
                        Some(v) => out.push_str(v),
                        None => out.push_str(&s[i..i + 3 + end]),
                    }
                    i += 3 + end;
                    continue;
                }
            }
        }
        let ch = s[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// `metadata.name`, `metadata.labels['app']`, `status.podIP`, ... for `fieldRef`.
pub fn field_value(pod: &Pod, path: &str, pod_ip: &str, host_ip: &str) -> Result<String, String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let keyed = |prefix: &str, map: Option<&BTreeMap<String, String>>| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.and_then(|m| m.get(key).cloned()).unwrap_or_default())
    };
    if let Some(v) = keyed("metadata.labels['", meta.labels.as_ref()) {
        return Ok(v);
    }
    if let Some(v) = keyed("metadata.annotations['", meta.annotations.as_ref()) {
        return Ok(v);
    }
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
        "status.podIP" | "status.podIPs" => pod_ip.to_string(),
        "status.hostIP" | "status.hostIPs" => host_ip.to_string(),
        other => return Err(format!("unsupported fieldRef {other:?}")),
    })
}

/// `limits.memory` with divisor `1Mi` and friends, for `resourceFieldRef`; unset limits fall back to
/// the node's allocatable, as in Kubernetes.
pub fn resource_value(
    c: &Container,
    resource: &str,
    divisor: Option<&str>,
    node_cpu_millis: i64,
    node_memory: i64,
) -> Result<String, String> {
    let res = c.resources.as_ref();
    let (kind, name) = resource.split_once('.').ok_or_else(|| format!("invalid resource {resource:?}"))?;
    let map = match kind {
        "limits" => res.and_then(|r| r.limits.as_ref()),
        "requests" => res.and_then(|r| r.requests.as_ref()),
        _ => return Err(format!("invalid resource {resource:?}")),
    };
    let q = map.and_then(|m| m.get(name)).map(|q| q.0.clone());
    match name {
        "cpu" => {
            let millis = match q {
                Some(q) => skiff_apimachinery::quantity::parse_scaled(&q, 1000)
                    .ok_or_else(|| format!("invalid cpu quantity {q:?}"))?,
                None if kind == "limits" => node_cpu_millis,
                None => 0,
            };
            let d = divisor
                .map(|d| skiff_apimachinery::quantity::parse_scaled(d, 1000))
                .unwrap_or(Some(1000))
                .filter(|d| *d > 0)
                .unwrap_or(1000);
            // Kubernetes rounds up: a limit of 500m with divisor 1 is 1.
            Ok(((millis + d - 1) / d).to_string())
        }
        "memory" | "ephemeral-storage" => {
            let bytes = match q {
                Some(q) => skiff_apimachinery::quantity::parse_scaled(&q, 1)
                    .ok_or_else(|| format!("invalid quantity {q:?}"))?,
                None if kind == "limits" => node_memory,
                None => 0,
            };
            let d = divisor
                .map(|d| skiff_apimachinery::quantity::parse_scaled(d, 1))
                .unwrap_or(Some(1))
                .filter(|d| *d > 0)
                .unwrap_or(1);
            Ok(((bytes + d - 1) / d).to_string())
        }
        other => Err(format!("unsupported resource {other:?}")),
    }
}

/// Everything a container's `env` and `envFrom` produce, service variables first. An error is the
/// message of a `CreateContainerConfigError`.
pub fn container_env(
    pod: &Pod,
    c: &Container,
    services: &[Service],
    refs: &Refs,
    pod_ip: &str,
    host_ip: &str,
    node: (i64, i64),
) -> Result<Vec<(String, String)>, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut order: Vec<String> = Vec::new();
    let mut vars: HashMap<String, String> = HashMap::new();
    let set = |k: String, v: String, order: &mut Vec<String>, vars: &mut HashMap<String, String>| {
        if vars.insert(k.clone(), v).is_none() {
            order.push(k);
        }
    };
    let links = pod.spec.as_ref().and_then(|s| s.enable_service_links).unwrap_or(true);
    for (k, v) in service_variables(ns, services) {
        // With enableServiceLinks=false only the `kubernetes` Service's variables remain.
        if links || k.starts_with("KUBERNETES_") {
            set(k, v, &mut order, &mut vars);
        }
    }
    for f in c.env_from.iter().flatten() {
        let prefix = f.prefix.clone().unwrap_or_default();
        if let Some(r) = &f.config_map_ref {
            match refs.config_maps.get(&r.name) {
                Some(cm) => {
                    for (k, v) in cm.data.iter().flatten() {
                        set(format!("{prefix}{k}"), v.clone(), &mut order, &mut vars);
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(format!("configmap \"{}\" not found", r.name)),
            }
        }
        if let Some(r) = &f.secret_ref {
            match refs.secrets.get(&r.name) {
                Some(s) => {
                    for (k, v) in s.data.iter().flatten() {
                        set(format!("{prefix}{k}"), String::from_utf8_lossy(&v.0).into_owned(), &mut order, &mut vars);
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(format!("secret \"{}\" not found", r.name)),
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = if let Some(src) = &e.value_from {
            if let Some(f) = &src.field_ref {
                field_value(pod, &f.field_path, pod_ip, host_ip)?
            } else if let Some(r) = &src.resource_field_ref {
                let target = match r.container_name.as_deref().filter(|n| !n.is_empty()) {
                    Some(n) => pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.containers.iter().find(|c| c.name == n))
                        .ok_or_else(|| format!("resourceFieldRef: no container {n:?}"))?,
                    None => c,
                };
                resource_value(target, &r.resource, r.divisor.as_ref().map(|d| d.0.as_str()), node.0, node.1)?
            } else if let Some(r) = &src.config_map_key_ref {
                match refs.config_map_value(&r.name, &r.key) {
                    Some(v) => v,
                    None if r.optional == Some(true) => continue,
                    None if refs.config_maps.contains_key(&r.name) => {
                        return Err(format!("couldn't find key {} in ConfigMap {ns}/{}", r.key, r.name));
                    }
                    None => return Err(format!("configmap \"{}\" not found", r.name)),
                }
            } else if let Some(r) = &src.secret_key_ref {
                match refs.secret_value(&r.name, &r.key) {
                    Some(v) => v,
                    None if r.optional == Some(true) => continue,
                    None if refs.secrets.contains_key(&r.name) => {
                        return Err(format!("couldn't find key {} in Secret {ns}/{}", r.key, r.name));
                    }
                    None => return Err(format!("secret \"{}\" not found", r.name)),
                }
            } else {
                String::new()
            }
        } else {
            expand(e.value.as_deref().unwrap_or(""), &vars)
        };
        set(e.name.clone(), value, &mut order, &mut vars);
    }
    Ok(order.into_iter().filter_map(|k| vars.remove(&k).map(|v| (k, v))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(ns: &str, name: &str, ip: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "ports": ports}
        }))
        .unwrap()
    }

    #[test]
    fn the_seeds_redis_master_variables() {
        let services = vec![
            svc("default", "redis-master", "10.0.0.11", json!([{"port": 6379, "targetPort": 6379}])),
            svc("other", "elsewhere", "10.0.0.12", json!([{"port": 80}])),
            svc("default", "headless", "None", json!([{"port": 80}])),
        ];
        let vars: HashMap<_, _> = service_variables("default", &services).into_iter().collect();
        assert_eq!(vars["REDIS_MASTER_SERVICE_HOST"], "10.0.0.11");
        assert_eq!(vars["REDIS_MASTER_SERVICE_PORT"], "6379");
        assert_eq!(vars["REDIS_MASTER_PORT"], "tcp://10.0.0.11:6379");
        assert_eq!(vars["REDIS_MASTER_PORT_6379_TCP"], "tcp://10.0.0.11:6379");
        assert_eq!(vars["REDIS_MASTER_PORT_6379_TCP_PROTO"], "tcp");
        assert_eq!(vars["REDIS_MASTER_PORT_6379_TCP_PORT"], "6379");
        assert_eq!(vars["REDIS_MASTER_PORT_6379_TCP_ADDR"], "10.0.0.11");
        assert_eq!(vars.len(), 7, "other namespaces and headless services give nothing: {vars:?}");
    }

    #[test]
    fn named_ports_and_the_kubernetes_service_from_default() {
        let services = vec![
            svc("default", "kubernetes", "10.96.0.1", json!([{"name": "https", "port": 443, "protocol": "TCP"}])),
            svc("web", "dns-ish", "10.96.0.10", json!([{"name": "dns", "port": 53, "protocol": "UDP"}])),
        ];
        let vars: HashMap<_, _> = service_variables("web", &services).into_iter().collect();
        assert_eq!(vars["KUBERNETES_SERVICE_PORT_HTTPS"], "443");
        assert_eq!(vars["DNS_ISH_SERVICE_PORT_DNS"], "53");
        assert_eq!(vars["DNS_ISH_PORT"], "udp://10.96.0.10:53");
        assert_eq!(vars["DNS_ISH_PORT_53_UDP_PROTO"], "udp");
    }

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let vars = HashMap::from([("A".to_string(), "x".to_string())]);
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &vars), "x-$(B)-$(A)-$");
    }

    #[test]
    fn env_sources_resolve_and_missing_references_are_errors() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{
                "name": "c", "image": "busybox",
                "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}},
                "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
                "env": [
                    {"name": "LIT", "value": "v"},
                    {"name": "EXP", "value": "$(LIT)-$(CM_k)"},
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                    {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                    {"name": "S", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "pw"}}}
                ]
            }]}
        }))
        .unwrap();
        let c = pod.spec.as_ref().unwrap().containers[0].clone();
        let mut refs = Refs::default();
        refs.config_maps.insert("cm".into(), serde_json::from_value(json!({"data": {"k": "cv"}})).unwrap());
        let err = container_env(&pod, &c, &[], &refs, "10.244.0.5", "10.0.0.1", (2000, 1 << 30)).unwrap_err();
        assert_eq!(err, "secret \"sec\" not found");
        refs.secrets.insert("sec".into(), serde_json::from_value(json!({"data": {"pw": "aHVudGVyMg=="}})).unwrap());
        let env: HashMap<_, _> = container_env(&pod, &c, &[], &refs, "10.244.0.5", "10.0.0.1", (2000, 1 << 30))
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(env["CM_k"], "cv");
        assert_eq!(env["EXP"], "v-cv");
        assert_eq!(env["POD"], "p");
        assert_eq!(env["APP"], "web");
        assert_eq!(env["IP"], "10.244.0.5");
        assert_eq!(env["MEM"], "64");
        assert_eq!(env["CPU"], "1");
        assert_eq!(env["S"], "hunter2");
    }
}
