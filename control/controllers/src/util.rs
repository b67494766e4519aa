//! Helpers shared by the controllers: selectors, pod state, owner references, events, hashing.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod, PodTemplateSpec, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta, OwnerReference, Time,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::{Client, Resource};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

// ---------- errors ----------

pub fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}
pub fn is_not_found(e: &kube::Error) -> bool {
    api_code(e) == Some(404)
}
pub fn is_conflict(e: &kube::Error) -> bool {
    api_code(e) == Some(409)
}
/// A create refused because its namespace is being deleted (403) or is gone (404).
pub fn is_namespace_gone(e: &kube::Error) -> bool {
    matches!(api_code(e), Some(403) | Some(404))
}

// ---------- time ----------

/// Now, at the second precision Kubernetes stores times with.
pub fn now() -> Time {
    Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now()))
}

/// Seconds from `t` until now (negative if `t` is in the future).
pub fn age_secs(t: &Time) -> f64 {
    let d = Timestamp::now().as_millisecond() - t.0.as_millisecond();
    d as f64 / 1000.0
}

pub fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

// ---------- selectors ----------

/// A label selector (set-based; a map selector is one with only `matchLabels`). An empty
/// selector matches nothing: a controller never claims every pod of a namespace.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selector {
    pub match_labels: BTreeMap<String, String>,
    pub exprs: Vec<LabelSelectorRequirement>,
}

impl Selector {
    pub fn from_map(m: Option<&BTreeMap<String, String>>) -> Self {
        Selector { match_labels: m.cloned().unwrap_or_default(), exprs: Vec::new() }
    }
    pub fn from_label_selector(s: Option<&LabelSelector>) -> Self {
        match s {
            None => Selector::default(),
            Some(s) => Selector {
                match_labels: s.match_labels.clone().unwrap_or_default(),
                exprs: s.match_expressions.clone().unwrap_or_default(),
            },
        }
    }
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.exprs.is_empty()
    }
    pub fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        if self.is_empty() {
            return false;
        }
        let empty = BTreeMap::new();
        let labels = labels.unwrap_or(&empty);
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.exprs.iter().all(|e| {
                let values = e.values.as_deref().unwrap_or(&[]);
                let got = labels.get(&e.key);
                match e.operator.as_str() {
                    "In" => got.is_some_and(|g| values.contains(g)),
                    "NotIn" => got.is_none_or(|g| !values.contains(g)),
                    "Exists" => got.is_some(),
                    "DoesNotExist" => got.is_none(),
                    _ => false,
                }
            })
    }
    /// The selector as a label-selector query string.
    pub fn to_query(&self) -> String {
        let mut parts: Vec<String> = self.match_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for e in &self.exprs {
            let values = e.values.clone().unwrap_or_default().join(",");
            match e.operator.as_str() {
                "In" => parts.push(format!("{} in ({values})", e.key)),
                "NotIn" => parts.push(format!("{} notin ({values})", e.key)),
                "Exists" => parts.push(e.key.clone()),
                "DoesNotExist" => parts.push(format!("!{}", e.key)),
                _ => {}
            }
        }
        parts.join(",")
    }
}

// ---------- owner references ----------

pub fn controller_ref(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references.iter().flatten().find(|r| r.controller == Some(true))
}

/// The controller reference of `meta` if it names `kind` (any version of its group).
pub fn controller_of_kind<'a>(meta: &'a ObjectMeta, group: &str, kind: &str) -> Option<&'a OwnerReference> {
    controller_ref(meta).filter(|r| r.kind == kind && api_group(&r.api_version) == group)
}

pub fn api_group(api_version: &str) -> &str {
    api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("")
}

/// An ownerReference naming `owner` as controller, blocking its foreground deletion.
pub fn controller_owner_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

pub fn is_controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    controller_ref(meta).is_some_and(|r| r.uid == uid)
}

/// A merge patch that sets the ownerReferences, conditional on the resourceVersion the
/// decision was made on.
pub fn owner_refs_patch(meta: &ObjectMeta, refs: Vec<OwnerReference>) -> serde_json::Value {
    serde_json::json!({"metadata": {"ownerReferences": refs, "resourceVersion": meta.resource_version}})
}

// ---------- pods ----------

pub fn is_terminating(meta: &ObjectMeta) -> bool {
    meta.deletion_timestamp.is_some()
}

pub fn pod_phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending")
}

pub fn is_pod_finished(pod: &Pod) -> bool {
    matches!(pod_phase(pod), "Succeeded" | "Failed")
}

/// Counted by replica controllers: not terminating and not finished.
pub fn is_pod_active(pod: &Pod) -> bool {
    !is_terminating(&pod.metadata) && !is_pod_finished(pod)
}

pub fn pod_ready_condition(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::PodCondition> {
    pod.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")
}

pub fn is_pod_ready(pod: &Pod) -> bool {
    pod_ready_condition(pod).is_some_and(|c| c.status == "True")
}

/// Ready for at least `min_ready` seconds. The second value is how long until it will be
/// (when ready but not yet long enough).
pub fn pod_availability(pod: &Pod, min_ready: i32) -> (bool, Option<Duration>) {
    let Some(c) = pod_ready_condition(pod).filter(|c| c.status == "True") else { return (false, None) };
    if min_ready <= 0 {
        return (true, None);
    }
    let Some(t) = &c.last_transition_time else { return (true, None) };
    let age = age_secs(t);
    if age >= min_ready as f64 { (true, None) } else { (false, Some(secs(min_ready as f64 - age + 0.05))) }
}

pub fn is_pod_available(pod: &Pod, min_ready: i32) -> bool {
    pod_availability(pod, min_ready).0
}

pub fn pod_node(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.node_name.as_deref().filter(|n| !n.is_empty())
}

/// A pod built from a template, as Kubernetes' `GetPodFromTemplate`.
pub fn pod_from_template(
    template: &PodTemplateSpec,
    namespace: &str,
    generate_name: String,
    owner: OwnerReference,
) -> Pod {
    let tm = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name),
            namespace: Some(namespace.to_string()),
            labels: tm.labels,
            annotations: tm.annotations,
            finalizers: tm.finalizers,
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// The order in which surplus pods are deleted: earlier is deleted first (Kubernetes'
/// `ActivePods` ranking: unscheduled, pending, not ready, recently ready, restarting, newest).
pub fn deletion_rank(pod: &Pod) -> impl Ord + use<> {
    let assigned = pod_node(pod).is_some();
    let phase = match pod_phase(pod) {
        "Pending" => 0,
        "Unknown" => 1,
        "Running" => 2,
        _ => 3,
    };
    let ready = is_pod_ready(pod);
    // Newer ready time first: negate.
    let ready_since =
        pod_ready_condition(pod).and_then(|c| c.last_transition_time.as_ref()).map(|t| -t.0.as_second()).unwrap_or(0);
    let restarts: i32 = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).max().unwrap_or(0))
        .unwrap_or(0);
    let created = pod.metadata.creation_timestamp.as_ref().map(|t| -t.0.as_second()).unwrap_or(0);
    (assigned, phase, ready, if ready { ready_since } else { 0 }, -restarts, created, pod.metadata.name.clone())
}

// ---------- tolerations ----------

pub fn toleration_matches(t: &Toleration, key: &str, value: Option<&str>, effect: &str) -> bool {
    if let Some(e) = t.effect.as_deref().filter(|e| !e.is_empty()) {
        if e != effect {
            return false;
        }
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => t.key.as_deref().is_none_or(|k| k.is_empty() || k == key),
        _ => t.key.as_deref() == Some(key) && t.value.as_deref().unwrap_or("") == value.unwrap_or(""),
    }
}

// ---------- numbers ----------

/// An int-or-percent against a total, rounding percents up or down (Kubernetes'
/// `GetScaledValueFromIntOrPercent`).
pub fn scaled_value(v: Option<&IntOrString>, total: i32, round_up: bool, default: i32) -> i32 {
    match v {
        None => default,
        Some(IntOrString::Int(i)) => *i,
        Some(IntOrString::String(s)) => match s.strip_suffix('%').and_then(|p| p.parse::<f64>().ok()) {
            Some(p) => {
                let x = p * total as f64 / 100.0;
                (if round_up { x.ceil() } else { x.floor() }) as i32
            }
            None => s.parse().unwrap_or(default),
        },
    }
}

/// FNV-1a, 32 bit.
pub fn fnv32a(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for b in data {
        h ^= *b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    h
}

/// Kubernetes' `rand.SafeEncodeString` of a number: no vowels, no look-alike characters.
pub fn safe_encode(n: u64) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    n.to_string().bytes().map(|b| ALPHANUMS[(b as usize) % ALPHANUMS.len()] as char).collect()
}

/// The pod-template-hash of a template (plus collision count), as the label value Kubernetes
/// uses for ReplicaSets and ControllerRevisions.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut data = serde_json::to_vec(template).unwrap_or_default();
    if let Some(c) = collision_count {
        data.extend_from_slice(&c.to_le_bytes());
    }
    safe_encode(fnv32a(&data) as u64)
}

// ---------- events ----------

/// Writes core/v1 Events as Kubernetes' event recorder does (`reason`, `message`,
/// `source.component`), counting repeats of the same event.
pub struct Recorder {
    client: Client,
    seen: Mutex<HashMap<(String, String, String), (String, String, i32)>>,
}

impl Recorder {
    pub fn new(client: Client) -> Self {
        Recorder { client, seen: Mutex::new(HashMap::new()) }
    }

    pub fn normal<K: Resource<DynamicType = ()>>(
        &self,
        component: &str,
        obj: &K,
        reason: &str,
        message: impl Into<String>,
    ) {
        self.publish(component, obj.object_ref(&()), "Normal", reason, message.into());
    }

    pub fn warning<K: Resource<DynamicType = ()>>(
        &self,
        component: &str,
        obj: &K,
        reason: &str,
        message: impl Into<String>,
    ) {
        self.publish(component, obj.object_ref(&()), "Warning", reason, message.into());
    }

    pub fn publish(&self, component: &str, involved: ObjectReference, type_: &str, reason: &str, message: String) {
        let ns = involved.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".to_string());
        let uid = involved.uid.clone().unwrap_or_default();
        let key = (uid, reason.to_string(), message.clone());
        let repeat = {
            let mut seen = self.seen.lock().unwrap();
            if seen.len() > 4096 {
                seen.clear();
            }
            match seen.get_mut(&key) {
                Some(e) => {
                    e.2 += 1;
                    Some(e.clone())
                }
                None => None,
            }
        };
        let client = self.client.clone();
        let now = now();
        let component = component.to_string();
        let type_ = type_.to_string();
        let reason = reason.to_string();
        let name = match &repeat {
            Some((_, n, _)) => n.clone(),
            None => {
                let n = format!("{}.{:x}", involved.name.clone().unwrap_or_default(), Timestamp::now().as_nanosecond());
                self.seen.lock().unwrap().insert(key, (ns.clone(), n.clone(), 1));
                n
            }
        };
        tokio::spawn(async move {
            let api: Api<Event> = Api::namespaced(client, &ns);
            if let Some((_, _, count)) = repeat {
                let patch = serde_json::json!({"count": count, "lastTimestamp": now});
                if api.patch(&name, &Default::default(), &kube::api::Patch::Merge(&patch)).await.is_ok() {
                    return;
                }
            }
            let ev = Event {
                metadata: ObjectMeta { name: Some(name), namespace: Some(ns.clone()), ..Default::default() },
                involved_object: involved,
                reason: Some(reason),
                message: Some(message),
                source: Some(EventSource { component: Some(component.clone()), host: None }),
                first_timestamp: Some(now.clone()),
                last_timestamp: Some(now),
                count: Some(1),
                type_: Some(type_),
                reporting_component: Some(component),
                reporting_instance: Some(String::new()),
                ..Default::default()
            };
            if let Err(e) = api.create(&PostParams::default(), &ev).await {
                tracing::debug!(error = %e, "writing event failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let mut l = BTreeMap::new();
        l.insert("app".to_string(), "web".to_string());
        l.insert("tier".to_string(), "fe".to_string());
        let s = Selector::from_map(Some(&BTreeMap::from([("app".to_string(), "web".to_string())])));
        assert!(s.matches(Some(&l)));
        assert!(!Selector::default().matches(Some(&l)));
        let s = Selector {
            match_labels: BTreeMap::new(),
            exprs: vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "In".into(),
                values: Some(vec!["fe".into(), "be".into()]),
            }],
        };
        assert!(s.matches(Some(&l)));
        let s = Selector {
            match_labels: BTreeMap::new(),
            exprs: vec![LabelSelectorRequirement { key: "x".into(), operator: "Exists".into(), values: None }],
        };
        assert!(!s.matches(Some(&l)));
    }

    #[test]
    fn scaled() {
        assert_eq!(scaled_value(Some(&IntOrString::String("25%".into())), 3, true, 0), 1);
        assert_eq!(scaled_value(Some(&IntOrString::String("25%".into())), 3, false, 0), 0);
        assert_eq!(scaled_value(Some(&IntOrString::Int(2)), 3, false, 0), 2);
    }

    #[test]
    fn safe_encoding_has_no_vowels() {
        let s = safe_encode(fnv32a(b"hello") as u64);
        assert!(s.chars().all(|c| !"aeiou".contains(c)));
        assert!(!s.is_empty());
    }
}
