//! What the ReplicationController and ReplicaSet controllers share: keep `spec.replicas` active
//! pods matching the selector, owned through a controller reference.

use crate::Ctx;
use crate::runtime::{Action, Informer, Obj, ObjKey, Queue};
use crate::util::{self, Selector};
use futures::future::join_all;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// Kubernetes' burst limit for one sync.
const BURST_REPLICAS: usize = 500;

pub trait Replicated: Obj + Serialize + Resource<Scope = k8s_openapi::NamespaceResourceScope> {
    /// The event source and field manager (`replicaset-controller`).
    const COMPONENT: &'static str;
    const GROUP: &'static str;
    const KIND: &'static str;
    fn selector(&self) -> Selector;
    fn replicas(&self) -> i32;
    fn min_ready_seconds(&self) -> i32;
    fn template(&self) -> Option<&PodTemplateSpec>;
    fn status_json(&self) -> Value;
    fn informer(ctx: &Ctx) -> &Arc<Informer<Self>>;
}

pub fn register<K: Replicated>(ctx: &Arc<Ctx>, queue: Queue) {
    let q = queue.clone();
    K::informer(ctx).on_change(move |old, new| {
        if let Some(o) = new.or(old) {
            q.add(ObjKey::of(o.as_ref()));
        }
    });
    let owners = Arc::downgrade(K::informer(ctx));
    ctx.pods.on_change(move |old, new| {
        for p in [old, new].into_iter().flatten() {
            if let Some(r) = util::controller_of_kind(&p.metadata, K::GROUP, K::KIND) {
                queue.add(ObjKey::new(p.namespace().unwrap_or_default(), r.name.clone()));
            }
        }
        // An orphan may be adopted by any controller whose selector matches it.
        if let Some(p) =
            new.filter(|p| util::controller_ref(&p.metadata).is_none() && !util::is_terminating(&p.metadata))
        {
            let Some(owners) = owners.upgrade() else { return };
            let ns = p.namespace().unwrap_or_default();
            for o in owners.list_ns(&ns) {
                if o.selector().matches(p.metadata.labels.as_ref()) {
                    queue.add(ObjKey::of(o.as_ref()));
                }
            }
        }
    });
}

fn pods_api(ctx: &Ctx, ns: &str) -> Api<Pod> {
    Api::namespaced(ctx.client.clone(), ns)
}

fn error_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        e => e.to_string(),
    }
}

/// Adopts matching orphans and releases owned pods that stopped matching; returns the pods
/// this controller owns and that match its selector.
pub async fn claim_pods<K: Obj>(
    ctx: &Ctx,
    owner: &K,
    sel: &Selector,
    component: &str,
    fresh_owner: impl std::future::Future<Output = bool>,
) -> anyhow::Result<Vec<Arc<Pod>>> {
    let ns = owner.namespace().unwrap_or_default();
    let uid = owner.uid().unwrap_or_default();
    let deleting = owner.meta().deletion_timestamp.is_some();
    let api = pods_api(ctx, &ns);
    let mut mine = Vec::new();
    let mut orphans = Vec::new();
    for p in ctx.pods.list_ns(&ns) {
        match util::controller_ref(&p.metadata) {
            Some(r) if r.uid == uid => {
                if sel.matches(p.metadata.labels.as_ref()) {
                    mine.push(p);
                } else if !deleting {
                    // Release: drop our reference.
                    let refs: Vec<_> =
                        p.metadata.owner_references.iter().flatten().filter(|r| r.uid != uid).cloned().collect();
                    let pp = PatchParams { field_manager: Some(component.to_string()), ..Default::default() };
                    match api.patch(&p.name_any(), &pp, &Patch::Merge(util::owner_refs_patch(&p.metadata, refs))).await
                    {
                        Ok(_) => {}
                        Err(e) if util::is_not_found(&e) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            Some(_) => {}
            None => {
                if !deleting && !util::is_terminating(&p.metadata) && sel.matches(p.metadata.labels.as_ref()) {
                    orphans.push(p);
                }
            }
        }
    }
    if !orphans.is_empty() && fresh_owner.await {
        let owner_ref = util::controller_owner_ref(owner);
        for p in orphans {
            let mut refs: Vec<_> = p.metadata.owner_references.clone().unwrap_or_default();
            refs.push(owner_ref.clone());
            let pp = PatchParams { field_manager: Some(component.to_string()), ..Default::default() };
            match api.patch(&p.name_any(), &pp, &Patch::Merge(util::owner_refs_patch(&p.metadata, refs))).await {
                Ok(adopted) => mine.push(Arc::new(adopted)),
                Err(e) if util::is_not_found(&e) || util::is_conflict(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(mine)
}

/// Creates `count` pods from `template` owned by `owner`, in Kubernetes' slow-start batches
/// (1, 2, 4, …), stopping at the first error. Waits until the pod cache has them.
pub async fn create_pods<K: Obj>(
    ctx: &Ctx,
    owner: &K,
    template: &PodTemplateSpec,
    count: usize,
    component: &str,
    customize: impl Fn(&mut Pod),
) -> Result<Vec<String>, kube::Error> {
    let ns = owner.namespace().unwrap_or_default();
    let api = pods_api(ctx, &ns);
    let owner_ref = util::controller_owner_ref(owner);
    let prefix = format!("{}-", owner.name_any());
    let pp = PostParams { field_manager: Some(component.to_string()), ..Default::default() };
    let mut created = Vec::new();
    let mut batch = 1usize;
    let mut remaining = count;
    let mut failure = None;
    while remaining > 0 && failure.is_none() {
        let n = batch.min(remaining);
        let results = join_all((0..n).map(|_| {
            let mut pod = util::pod_from_template(template, &ns, prefix.clone(), owner_ref.clone());
            customize(&mut pod);
            let api = api.clone();
            let pp = pp.clone();
            async move { api.create(&pp, &pod).await }
        }))
        .await;
        for r in results {
            match r {
                Ok(p) => {
                    let name = p.name_any();
                    ctx.recorder.normal(component, owner, "SuccessfulCreate", format!("Created pod: {name}"));
                    created.push(name);
                }
                Err(e) => {
                    if !util::is_namespace_gone(&e) {
                        ctx.recorder.warning(
                            component,
                            owner,
                            "FailedCreate",
                            format!("Error creating: {}", error_message(&e)),
                        );
                    }
                    failure = Some(e);
                }
            }
        }
        remaining -= n;
        batch *= 2;
    }
    let keys: Vec<ObjKey> = created.iter().map(|n| ObjKey::new(ns.clone(), n.clone())).collect();
    ctx.pods.wait_until(Duration::from_secs(5), |s| keys.iter().all(|k| s.get(k).is_some())).await;
    match failure {
        Some(e) if !util::is_namespace_gone(&e) => Err(e),
        _ => Ok(created),
    }
}

/// Deletes pods (with a UID precondition), records events, and waits until the cache shows
/// them gone or terminating.
pub async fn delete_pods<K: Obj>(ctx: &Ctx, owner: &K, pods: &[Arc<Pod>], component: &str) -> Result<(), kube::Error> {
    let ns = owner.namespace().unwrap_or_default();
    let api = pods_api(ctx, &ns);
    let results = join_all(pods.iter().map(|p| {
        let api = api.clone();
        let dp = DeleteParams {
            preconditions: Some(Preconditions { uid: p.uid(), resource_version: None }),
            ..Default::default()
        };
        async move { (p.name_any(), api.delete(&p.name_any(), &dp).await) }
    }))
    .await;
    let mut failure = None;
    for (name, r) in results {
        match r {
            Ok(_) => ctx.recorder.normal(component, owner, "SuccessfulDelete", format!("Deleted pod: {name}")),
            Err(e) if util::is_not_found(&e) || util::is_conflict(&e) => {}
            Err(e) => {
                ctx.recorder.warning(
                    component,
                    owner,
                    "FailedDelete",
                    format!("Error deleting: {}", error_message(&e)),
                );
                failure = Some(e);
            }
        }
    }
    let keys: Vec<(ObjKey, Option<String>)> = pods.iter().map(|p| (ObjKey::of(p.as_ref()), p.uid())).collect();
    ctx.pods
        .wait_until(Duration::from_secs(5), |s| {
            keys.iter().all(|(k, uid)| s.get(k).is_none_or(|p| p.uid() != *uid || util::is_terminating(&p.metadata)))
        })
        .await;
    failure.map_or(Ok(()), Err)
}

/// The replica counts Kubernetes reports for a set of pods.
pub struct Counts {
    pub replicas: i32,
    pub fully_labeled: i32,
    pub ready: i32,
    pub available: i32,
    /// When the next not-yet-available ready pod becomes available.
    pub next_available: Option<Duration>,
}

pub fn counts(pods: &[Arc<Pod>], template: Option<&PodTemplateSpec>, min_ready: i32) -> Counts {
    let tl = template.and_then(|t| t.metadata.as_ref()).and_then(|m| m.labels.clone()).unwrap_or_default();
    let mut c = Counts { replicas: 0, fully_labeled: 0, ready: 0, available: 0, next_available: None };
    for p in pods.iter().filter(|p| util::is_pod_active(p)) {
        c.replicas += 1;
        let labels = p.metadata.labels.clone().unwrap_or_default();
        if tl.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            c.fully_labeled += 1;
        }
        if util::is_pod_ready(p) {
            c.ready += 1;
        }
        match util::pod_availability(p, min_ready) {
            (true, _) => c.available += 1,
            (false, Some(d)) => c.next_available = Some(c.next_available.map_or(d, |x: Duration| x.min(d))),
            _ => {}
        }
    }
    c
}

/// Sets or clears a condition in a JSON conditions list, keeping lastTransitionTime when the
/// status did not change.
pub fn set_condition(conditions: &mut Vec<Value>, type_: &str, status: Option<(&str, &str, &str)>) {
    match status {
        None => conditions.retain(|c| c["type"] != type_),
        Some((st, reason, message)) => {
            let now = json!(util::now());
            if let Some(c) = conditions.iter_mut().find(|c| c["type"] == type_) {
                if c["status"] != st {
                    c["lastTransitionTime"] = now;
                }
                c["status"] = json!(st);
                c["reason"] = json!(reason);
                c["message"] = json!(message);
            } else {
                conditions.push(json!({"type": type_, "status": st, "reason": reason, "message": message, "lastTransitionTime": now}));
            }
        }
    }
}

/// Writes `status` with a PUT of the status subresource if it differs from the cached one.
pub async fn write_status<K: Obj + Serialize>(
    api: Api<K>,
    obj: &K,
    status: Value,
    component: &str,
) -> anyhow::Result<()> {
    let mut v = serde_json::to_value(obj)?;
    if v["status"] == status {
        return Ok(());
    }
    v["status"] = status;
    let updated: K = serde_json::from_value(v)?;
    let pp = PostParams { field_manager: Some(component.to_string()), ..Default::default() };
    match api.replace_status(&obj.name_any(), &pp, &updated).await {
        Ok(_) => Ok(()),
        Err(e) if util::is_not_found(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Omits zero counters as Go's `omitempty` does.
pub fn put_count(m: &mut serde_json::Map<String, Value>, key: &str, v: i64) {
    if v != 0 {
        m.insert(key.into(), json!(v));
    }
}

pub async fn reconcile<K: Replicated>(key: ObjKey, ctx: Arc<Ctx>) -> anyhow::Result<Action> {
    let Some(owner) = K::informer(&ctx).get(&key) else { return Ok(Action::done()) };
    let sel = owner.selector();
    let uid = owner.uid().unwrap_or_default();
    let deleting = owner.meta().deletion_timestamp.is_some();
    let fresh = {
        let ctx = ctx.clone();
        let key = key.clone();
        let uid = uid.clone();
        async move {
            let api: Api<K> = Api::namespaced(ctx.client.clone(), &key.namespace);
            matches!(api.get(&key.name).await, Ok(o) if o.uid().as_deref() == Some(uid.as_str()) && o.meta().deletion_timestamp.is_none())
        }
    };
    let mine = claim_pods(&ctx, owner.as_ref(), &sel, K::COMPONENT, fresh).await?;
    let active: Vec<Arc<Pod>> = mine.iter().filter(|p| util::is_pod_active(p)).cloned().collect();
    let want = owner.replicas().max(0) as usize;
    let mut failure: Option<(&str, kube::Error)> = None;
    if !deleting {
        if active.len() < want {
            if let Some(t) = owner.template() {
                let n = (want - active.len()).min(BURST_REPLICAS);
                if let Err(e) = create_pods(&ctx, owner.as_ref(), t, n, K::COMPONENT, |_| {}).await {
                    failure = Some(("FailedCreate", e));
                }
            }
        } else if active.len() > want {
            let mut victims = active.clone();
            victims.sort_by_key(|p| util::deletion_rank(p));
            victims.truncate((active.len() - want).min(BURST_REPLICAS));
            if let Err(e) = delete_pods(&ctx, owner.as_ref(), &victims, K::COMPONENT).await {
                failure = Some(("FailedDelete", e));
            }
        }
    }
    // Status from the cache as it is now (it has seen this sync's writes).
    let pods: Vec<Arc<Pod>> = ctx
        .pods
        .list_ns(&key.namespace)
        .into_iter()
        .filter(|p| util::is_controlled_by(&p.metadata, &uid) && sel.matches(p.metadata.labels.as_ref()))
        .collect();
    let c = counts(&pods, owner.template(), owner.min_ready_seconds());
    let old = owner.status_json();
    let mut status = serde_json::Map::new();
    status.insert("replicas".into(), json!(c.replicas));
    put_count(&mut status, "fullyLabeledReplicas", c.fully_labeled as i64);
    put_count(&mut status, "readyReplicas", c.ready as i64);
    put_count(&mut status, "availableReplicas", c.available as i64);
    put_count(&mut status, "observedGeneration", owner.meta().generation.unwrap_or(0));
    let mut conditions: Vec<Value> = old["conditions"].as_array().cloned().unwrap_or_default();
    match &failure {
        Some((reason, e)) => {
            set_condition(&mut conditions, "ReplicaFailure", Some(("True", reason, &error_message(e))))
        }
        None => set_condition(&mut conditions, "ReplicaFailure", None),
    }
    if !conditions.is_empty() {
        status.insert("conditions".into(), Value::Array(conditions));
    }
    write_status(
        Api::namespaced(ctx.client.clone(), &key.namespace),
        owner.as_ref(),
        Value::Object(status),
        K::COMPONENT,
    )
    .await?;
    if let Some((_, e)) = failure {
        return Err(e.into());
    }
    Ok(c.next_available.map(Action::requeue).unwrap_or_default())
}
