//! The Deployment controller: manages ReplicaSets named `<deployment>-<pod-template-hash>`,
//! rolling from the old ones to the one matching the current template (RollingUpdate within
//! maxSurge / maxUnavailable, or Recreate), keeps `revisionHistoryLimit` old ones with their
//! `deployment.kubernetes.io/revision`, and reports status and the Available / Progressing
//! conditions as Kubernetes does, so `kubectl rollout status|history|undo` work.
//!
//! Availability used for scaling decisions is counted from the pods in the shared cache (capped
//! at each ReplicaSet's desired size), which never lags behind the ReplicaSets' own status.

use crate::Ctx;
use crate::replicas::{put_count, write_status};
use crate::runtime::{Action, ObjKey, Queue};
use crate::util::{self, Selector};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const COMPONENT: &str = "deployment-controller";
pub const HASH_LABEL: &str = "pod-template-hash";
pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
const ROLLBACK_TO: &str = "deprecated.deployment.rollback.to";
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

pub fn register(ctx: &Arc<Ctx>, queue: Queue) {
    let q = queue.clone();
    ctx.deployments.on_change(move |old, new| {
        if let Some(d) = new.or(old) {
            q.add(ObjKey::of(d.as_ref()));
        }
    });
    let q = queue.clone();
    let deployments = Arc::downgrade(&ctx.deployments);
    ctx.replicasets.on_change(move |old, new| {
        for rs in [old, new].into_iter().flatten() {
            if let Some(r) = util::controller_of_kind(&rs.metadata, "apps", "Deployment") {
                q.add(ObjKey::new(rs.namespace().unwrap_or_default(), r.name.clone()));
            }
        }
        if let Some(rs) = new.filter(|rs| util::controller_ref(&rs.metadata).is_none()) {
            let Some(deployments) = deployments.upgrade() else { return };
            for d in deployments.list_ns(&rs.namespace().unwrap_or_default()) {
                if selector(&d).matches(rs.metadata.labels.as_ref()) {
                    q.add(ObjKey::of(d.as_ref()));
                }
            }
        }
    });
    // Pods of a deployment's ReplicaSets: availability and (for Recreate) old pods going away.
    let replicasets = Arc::downgrade(&ctx.replicasets);
    ctx.pods.on_change(move |old, new| {
        let Some(replicasets) = replicasets.upgrade() else { return };
        for p in [old, new].into_iter().flatten() {
            let Some(r) = util::controller_of_kind(&p.metadata, "apps", "ReplicaSet") else { continue };
            let ns = p.namespace().unwrap_or_default();
            if let Some(rs) = replicasets.get_named(&ns, &r.name) {
                if let Some(d) = util::controller_of_kind(&rs.metadata, "apps", "Deployment") {
                    queue.add(ObjKey::new(ns, d.name.clone()));
                }
            }
        }
    });
}

fn selector(d: &Deployment) -> Selector {
    Selector::from_label_selector(d.spec.as_ref().map(|s| &s.selector))
}

fn replicas_of(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.annotations().get(REVISION).and_then(|r| r.parse().ok()).unwrap_or(0)
}

fn created(rs: &ReplicaSet) -> (i64, String) {
    (rs.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()).unwrap_or(0), rs.name_any())
}

fn is_recreate(d: &Deployment) -> bool {
    d.spec.as_ref().and_then(|s| s.strategy.as_ref()).and_then(|s| s.type_.as_deref()) == Some("Recreate")
}

/// (maxSurge, maxUnavailable) resolved against the replica count (surge rounds up,
/// unavailability down; both zero means one may be unavailable).
fn surge_unavailable(d: &Deployment) -> (i32, i32) {
    if is_recreate(d) {
        return (0, 0);
    }
    let replicas = replicas_of(d);
    let ru = d.spec.as_ref().and_then(|s| s.strategy.as_ref()).and_then(|s| s.rolling_update.as_ref());
    let default = k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("25%".into());
    let surge =
        util::scaled_value(Some(ru.and_then(|r| r.max_surge.as_ref()).unwrap_or(&default)), replicas, true, 0).max(0);
    let mut unavailable =
        util::scaled_value(Some(ru.and_then(|r| r.max_unavailable.as_ref()).unwrap_or(&default)), replicas, false, 0)
            .max(0);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable.min(replicas))
}

fn max_unavailable(d: &Deployment) -> i32 {
    if is_recreate(d) {
        return 0;
    }
    surge_unavailable(d).1
}

/// A template without its pod-template-hash label, for comparison.
fn template_without_hash(t: Option<&PodTemplateSpec>) -> Value {
    let mut v = serde_json::to_value(t).unwrap_or(Value::Null);
    if let Some(labels) = v.pointer_mut("/metadata/labels").and_then(Value::as_object_mut) {
        labels.remove(HASH_LABEL);
        if labels.is_empty() {
            v["metadata"].as_object_mut().map(|m| m.remove("labels"));
        }
    }
    if v["metadata"].as_object().is_some_and(|m| m.is_empty()) {
        v.as_object_mut().map(|m| m.remove("metadata"));
    }
    v
}

/// Pod counts of one ReplicaSet from the pod cache.
#[derive(Clone, Copy, Default, Debug)]
struct PodCounts {
    active: i32,
    ready: i32,
    available: i32,
    /// Pods not finished, terminating or not.
    running: i32,
}

struct Plan {
    d: Arc<Deployment>,
    key: ObjKey,
    new_rs: Option<Arc<ReplicaSet>>,
    old_rss: Vec<Arc<ReplicaSet>>,
    counts: BTreeMap<String, PodCounts>,
    next_check: Option<Duration>,
}

impl Plan {
    fn counts(&self, rs: &ReplicaSet) -> PodCounts {
        self.counts.get(&rs.uid().unwrap_or_default()).copied().unwrap_or_default()
    }
    /// Available pods, at most the set's desired size (surplus pods are about to go).
    fn available(&self, rs: &ReplicaSet) -> i32 {
        self.counts(rs).available.min(rs_replicas(rs))
    }
    fn all(&self) -> Vec<Arc<ReplicaSet>> {
        self.old_rss.iter().cloned().chain(self.new_rs.clone()).collect()
    }
    fn total_spec(&self) -> i32 {
        self.all().iter().map(|r| rs_replicas(r)).sum()
    }
}

fn pod_counts(
    ctx: &Ctx,
    ns: &str,
    rss: &[Arc<ReplicaSet>],
    min_ready: i32,
) -> (BTreeMap<String, PodCounts>, Option<Duration>) {
    let mut out: BTreeMap<String, PodCounts> =
        rss.iter().map(|r| (r.uid().unwrap_or_default(), PodCounts::default())).collect();
    let mut next: Option<Duration> = None;
    for rs in rss {
        let uid = rs.uid().unwrap_or_default();
        let sel = Selector::from_label_selector(rs.spec.as_ref().map(|s| &s.selector));
        let c = out.get_mut(&uid).expect("present");
        for p in ctx.pods.owned_by(&uid) {
            if !util::is_controlled_by(&p.metadata, &uid)
                || p.namespace().as_deref() != Some(ns)
                || !sel.matches(p.metadata.labels.as_ref())
            {
                continue;
            }
            if !util::is_pod_finished(&p) {
                c.running += 1;
            }
            if !util::is_pod_active(&p) {
                continue;
            }
            c.active += 1;
            if util::is_pod_ready(&p) {
                c.ready += 1;
            }
            match util::pod_availability(&p, min_ready) {
                (true, _) => c.available += 1,
                (false, Some(d)) => next = Some(next.map_or(d, |x: Duration| x.min(d))),
                _ => {}
            }
        }
    }
    (out, next)
}

pub async fn reconcile(key: ObjKey, ctx: Arc<Ctx>) -> anyhow::Result<Action> {
    let Some(d) = ctx.deployments.get(&key) else { return Ok(Action::done()) };
    let sel = selector(&d);
    if sel.is_empty() {
        if d.status.as_ref().and_then(|s| s.observed_generation) != d.metadata.generation {
            ctx.recorder.warning(
                COMPONENT,
                d.as_ref(),
                "SelectingAll",
                "This deployment is selecting all pods. A non-empty selector is required.",
            );
            let mut st = serde_json::to_value(&d.status)?;
            if !st.is_object() {
                st = json!({});
            }
            st["observedGeneration"] = json!(d.metadata.generation);
            write_status(Api::namespaced(ctx.client.clone(), &key.namespace), d.as_ref(), st, COMPONENT).await?;
        }
        return Ok(Action::done());
    }
    let rss = claim_replicasets(&ctx, &d, &sel).await?;
    let deleting = d.metadata.deletion_timestamp.is_some();
    let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
    let mut plan = make_plan(&ctx, &key, d.clone(), rss);
    if deleting {
        return sync_status(&ctx, &plan, false).await;
    }
    check_paused_condition(&ctx, &mut plan, paused).await?;
    if paused {
        sync_revision(&ctx, &mut plan).await?;
        scale_only(&ctx, &mut plan).await?;
        return sync_status(&ctx, &plan, false).await;
    }
    if is_recreate(&d) { rollout_recreate(&ctx, &mut plan).await } else { rollout_rolling(&ctx, &mut plan).await }
}

fn make_plan(ctx: &Ctx, key: &ObjKey, d: Arc<Deployment>, mut rss: Vec<Arc<ReplicaSet>>) -> Plan {
    rss.sort_by_key(|r| created(r));
    let want = template_without_hash(d.spec.as_ref().map(|s| &s.template));
    let new_idx =
        rss.iter().position(|r| template_without_hash(r.spec.as_ref().and_then(|s| s.template.as_ref())) == want);
    let new_rs = new_idx.map(|i| rss.remove(i));
    let min_ready = d.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let all: Vec<Arc<ReplicaSet>> = rss.iter().cloned().chain(new_rs.clone()).collect();
    let (counts, next_check) = pod_counts(ctx, &key.namespace, &all, min_ready);
    Plan { d, key: key.clone(), new_rs, old_rss: rss, counts, next_check }
}

/// Adopts orphan ReplicaSets matching the selector and releases owned ones that stopped
/// matching; returns the owned, matching ones.
async fn claim_replicasets(ctx: &Ctx, d: &Deployment, sel: &Selector) -> anyhow::Result<Vec<Arc<ReplicaSet>>> {
    let ns = d.namespace().unwrap_or_default();
    let uid = d.uid().unwrap_or_default();
    let deleting = d.metadata.deletion_timestamp.is_some();
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let pp = PatchParams { field_manager: Some(COMPONENT.into()), ..Default::default() };
    let mut mine = Vec::new();
    let mut fresh_checked: Option<bool> = None;
    for rs in ctx.replicasets.list_ns(&ns) {
        match util::controller_ref(&rs.metadata) {
            Some(r) if r.uid == uid => {
                if sel.matches(rs.metadata.labels.as_ref()) {
                    mine.push(rs);
                } else if !deleting {
                    let refs: Vec<_> = rs.owner_references().iter().filter(|r| r.uid != uid).cloned().collect();
                    match api
                        .patch(&rs.name_any(), &pp, &Patch::Merge(util::owner_refs_patch(&rs.metadata, refs)))
                        .await
                    {
                        Ok(_) => {}
                        Err(e) if util::is_not_found(&e) || util::is_conflict(&e) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            Some(_) => {}
            None => {
                if deleting || util::is_terminating(&rs.metadata) || !sel.matches(rs.metadata.labels.as_ref()) {
                    continue;
                }
                if fresh_checked.is_none() {
                    let dapi: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
                    let ok = matches!(dapi.get(&d.name_any()).await, Ok(f) if f.uid() == d.uid() && f.metadata.deletion_timestamp.is_none());
                    fresh_checked = Some(ok);
                }
                if fresh_checked == Some(true) {
                    let mut refs = rs.owner_references().to_vec();
                    refs.push(util::controller_owner_ref(d));
                    match api
                        .patch(&rs.name_any(), &pp, &Patch::Merge(util::owner_refs_patch(&rs.metadata, refs)))
                        .await
                    {
                        Ok(adopted) => mine.push(Arc::new(adopted)),
                        Err(e) if util::is_not_found(&e) || util::is_conflict(&e) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
    }
    Ok(mine)
}

/// The deployment's annotations that its ReplicaSets carry too (e.g. `kubernetes.io/change-cause`).
fn copied_annotations(d: &Deployment) -> BTreeMap<String, String> {
    d.annotations()
        .iter()
        .filter(|(k, _)| {
            ![REVISION, REVISION_HISTORY, DESIRED_REPLICAS, MAX_REPLICAS, ROLLBACK_TO, LAST_APPLIED]
                .contains(&k.as_str())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Brings the new ReplicaSet's revision (and the deployment's) up to date; when an old
/// ReplicaSet becomes the new one again (a rollback), its former revision goes to the history.
async fn sync_revision(ctx: &Ctx, plan: &mut Plan) -> anyhow::Result<()> {
    let Some(rs) = plan.new_rs.clone() else { return Ok(()) };
    let max_old = plan.old_rss.iter().map(|r| revision(r)).max().unwrap_or(0);
    let new_revision = max_old + 1;
    let mut annotations = rs.annotations().clone();
    let mut changed = false;
    for (k, v) in copied_annotations(&plan.d) {
        if annotations.get(&k) != Some(&v) {
            annotations.insert(k, v);
            changed = true;
        }
    }
    let old_rev = annotations.get(REVISION).and_then(|r| r.parse::<i64>().ok());
    if old_rev.unwrap_or(0) < new_revision {
        annotations.insert(REVISION.into(), new_revision.to_string());
        changed = true;
        if let Some(o) = old_rev {
            let history = annotations.get(REVISION_HISTORY).cloned().unwrap_or_default();
            let h = if history.is_empty() { o.to_string() } else { format!("{history},{o}") };
            annotations.insert(REVISION_HISTORY.into(), h);
        }
    }
    let min_ready = plan.d.spec.as_ref().and_then(|s| s.min_ready_seconds);
    let rs_min_ready = rs.spec.as_ref().and_then(|s| s.min_ready_seconds);
    if changed || min_ready.unwrap_or(0) != rs_min_ready.unwrap_or(0) {
        let mut new = (*rs).clone();
        new.metadata.annotations = Some(annotations);
        if let Some(spec) = new.spec.as_mut() {
            spec.min_ready_seconds = min_ready;
        }
        plan.new_rs = Some(update_rs(ctx, &plan.key, new).await?);
    }
    let rev = plan.new_rs.as_ref().and_then(|r| r.annotations().get(REVISION).cloned());
    if let Some(rev) = rev {
        set_deployment_revision(ctx, plan, &rev).await?;
    }
    Ok(())
}

async fn set_deployment_revision(ctx: &Ctx, plan: &mut Plan, rev: &str) -> anyhow::Result<()> {
    if plan.d.annotations().get(REVISION).map(String::as_str) == Some(rev) {
        return Ok(());
    }
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &plan.key.namespace);
    let patch = json!({"metadata": {"annotations": {REVISION: rev}, "resourceVersion": plan.d.resource_version()}});
    api.patch(
        &plan.key.name,
        &PatchParams { field_manager: Some(COMPONENT.into()), ..Default::default() },
        &Patch::Merge(&patch),
    )
    .await?;
    refresh(ctx, plan).await;
    Ok(())
}

/// After writing the deployment: wait for the cache to have the write and use that copy.
async fn refresh(ctx: &Ctx, plan: &mut Plan) {
    let rv = plan.d.resource_version();
    ctx.deployments
        .wait_until(Duration::from_secs(2), |s| s.get(&plan.key).is_none_or(|d| d.resource_version() != rv))
        .await;
    if let Some(fresh) = ctx.deployments.get(&plan.key).filter(|d| d.uid() == plan.d.uid()) {
        plan.d = fresh;
    }
}

/// Writes a ReplicaSet and waits for the cache to see it.
async fn update_rs(ctx: &Ctx, key: &ObjKey, rs: ReplicaSet) -> anyhow::Result<Arc<ReplicaSet>> {
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let pp = PostParams { field_manager: Some(COMPONENT.into()), ..Default::default() };
    let updated = api.replace(&rs.name_any(), &pp, &rs).await?;
    let k = ObjKey::of(&updated);
    let rv = updated.resource_version();
    ctx.replicasets
        .wait_until(Duration::from_secs(2), |s| {
            s.get(&k).is_none_or(|r| r.resource_version() == rv || r.metadata.generation > updated.metadata.generation)
        })
        .await;
    Ok(Arc::new(updated))
}

/// Creates the ReplicaSet for the current template with `replicas`.
async fn create_new_rs(ctx: &Ctx, plan: &mut Plan, replicas: i32) -> anyhow::Result<()> {
    let d = plan.d.clone();
    let spec = d.spec.clone().unwrap_or_default();
    let collision = d.status.as_ref().and_then(|s| s.collision_count);
    let hash = util::template_hash(&spec.template, collision);
    let mut template = spec.template.clone();
    let tm = template.metadata.get_or_insert_with(Default::default);
    tm.labels.get_or_insert_with(Default::default).insert(HASH_LABEL.into(), hash.clone());
    let mut selector: LabelSelector = spec.selector.clone();
    selector.match_labels.get_or_insert_with(Default::default).insert(HASH_LABEL.into(), hash.clone());
    let name = format!("{}-{}", d.name_any(), hash);
    let max_old = plan.old_rss.iter().map(|r| revision(r)).max().unwrap_or(0);
    let (surge, _) = surge_unavailable(&d);
    let mut annotations = copied_annotations(&d);
    annotations.insert(REVISION.into(), (max_old + 1).to_string());
    annotations.insert(DESIRED_REPLICAS.into(), replicas_of(&d).to_string());
    annotations.insert(MAX_REPLICAS.into(), (replicas_of(&d) + surge).to_string());
    let rs = ReplicaSet {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(plan.key.namespace.clone()),
            labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
            annotations: Some(annotations),
            owner_references: Some(vec![util::controller_owner_ref(d.as_ref())]),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        }),
        status: None,
    };
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &plan.key.namespace);
    let pp = PostParams { field_manager: Some(COMPONENT.into()), ..Default::default() };
    let created = match api.create(&pp, &rs).await {
        Ok(c) => c,
        Err(e) if util::is_conflict(&e) => {
            // The name is taken: ours with this template already (a stale cache), or a hash
            // collision, which a new collision count resolves.
            let existing = api.get(&name).await?;
            let same = util::is_controlled_by(&existing.metadata, &d.uid().unwrap_or_default())
                && template_without_hash(existing.spec.as_ref().and_then(|s| s.template.as_ref()))
                    == template_without_hash(Some(&spec.template));
            if same {
                existing
            } else {
                let mut st = serde_json::to_value(&d.status)?;
                if !st.is_object() {
                    st = json!({});
                }
                st["collisionCount"] = json!(collision.unwrap_or(0) + 1);
                write_status(Api::namespaced(ctx.client.clone(), &plan.key.namespace), d.as_ref(), st, COMPONENT)
                    .await?;
                anyhow::bail!("hash collision for replica set {name}");
            }
        }
        Err(e) if util::is_namespace_gone(&e) => return Ok(()),
        Err(e) => {
            let msg = match &e {
                kube::Error::Api(s) => s.message.clone(),
                e => e.to_string(),
            };
            set_progressing(
                ctx,
                plan,
                "False",
                "ReplicaSetCreateError",
                &format!("Failed to create new replica set {name:?}: {msg}"),
            )
            .await?;
            return Err(e.into());
        }
    };
    let k = ObjKey::of(&created);
    ctx.replicasets.wait_until(Duration::from_secs(2), |s| s.get(&k).is_some()).await;
    if replicas > 0 {
        ctx.recorder.normal(
            COMPONENT,
            d.as_ref(),
            "ScalingReplicaSet",
            format!("Scaled up replica set {name} from 0 to {replicas}"),
        );
    }
    let created = Arc::new(created);
    plan.counts.insert(created.uid().unwrap_or_default(), PodCounts::default());
    plan.new_rs = Some(created);
    set_deployment_revision(ctx, plan, &(max_old + 1).to_string()).await?;
    set_progressing(ctx, plan, "True", "NewReplicaSetCreated", &format!("Created new replica set {name:?}")).await?;
    Ok(())
}

/// Writes the Progressing condition right away (as Kubernetes does around creating a
/// ReplicaSet).
async fn set_progressing(ctx: &Ctx, plan: &mut Plan, status: &str, reason: &str, message: &str) -> anyhow::Result<()> {
    if plan.d.spec.as_ref().and_then(|s| s.progress_deadline_seconds).is_none() {
        return Ok(());
    }
    let d = plan.d.clone();
    let mut st = serde_json::to_value(&d.status)?;
    if !st.is_object() {
        st = json!({});
    }
    let mut conds: Vec<Value> = st["conditions"].as_array().cloned().unwrap_or_default();
    set_deployment_condition(&mut conds, "Progressing", status, reason, message);
    st["conditions"] = json!(conds);
    write_status(Api::namespaced(ctx.client.clone(), &plan.key.namespace), d.as_ref(), st, COMPONENT).await?;
    refresh(ctx, plan).await;
    Ok(())
}

/// Kubernetes' `SetDeploymentCondition`: nothing changes when status and reason are the same;
/// the transition time stays while the status does.
fn set_deployment_condition(conds: &mut Vec<Value>, type_: &str, status: &str, reason: &str, message: &str) {
    let now = json!(util::now());
    // A changed condition moves to the end of the list, as Kubernetes appends it.
    let mut transition = now.clone();
    if let Some(i) = conds.iter().position(|c| c["type"] == type_) {
        let c = &conds[i];
        if c["status"] == status && c["reason"] == reason {
            return;
        }
        if c["status"] == status {
            transition = c["lastTransitionTime"].clone();
        }
        conds.remove(i);
    }
    conds.push(json!({"type": type_, "status": status, "lastUpdateTime": now, "lastTransitionTime": transition, "reason": reason, "message": message}));
}

/// Scales a ReplicaSet (and its desired/max annotations), with the `ScalingReplicaSet` event.
async fn scale_rs(ctx: &Ctx, plan: &mut Plan, rs: &Arc<ReplicaSet>, to: i32) -> anyhow::Result<bool> {
    let d = plan.d.clone();
    let from = rs_replicas(rs);
    let (surge, _) = surge_unavailable(&d);
    let desired = replicas_of(&d).to_string();
    let max = (replicas_of(&d) + surge).to_string();
    let annotations_ok =
        rs.annotations().get(DESIRED_REPLICAS) == Some(&desired) && rs.annotations().get(MAX_REPLICAS) == Some(&max);
    if from == to && annotations_ok {
        return Ok(false);
    }
    let mut new = (**rs).clone();
    if let Some(spec) = new.spec.as_mut() {
        spec.replicas = Some(to);
    }
    let a = new.metadata.annotations.get_or_insert_with(Default::default);
    a.insert(DESIRED_REPLICAS.into(), desired);
    a.insert(MAX_REPLICAS.into(), max);
    let updated = update_rs(ctx, &plan.key, new).await?;
    if from != to {
        let dir = if to > from { "up" } else { "down" };
        ctx.recorder.normal(
            COMPONENT,
            d.as_ref(),
            "ScalingReplicaSet",
            format!("Scaled {dir} replica set {} from {from} to {to}", rs.name_any()),
        );
    }
    let uid = updated.uid();
    if plan.new_rs.as_ref().is_some_and(|n| n.uid() == uid) {
        plan.new_rs = Some(updated);
    } else if let Some(o) = plan.old_rss.iter_mut().find(|o| o.uid() == uid) {
        *o = updated;
    }
    Ok(from != to)
}

async fn rollout_rolling(ctx: &Ctx, plan: &mut Plan) -> anyhow::Result<Action> {
    sync_revision(ctx, plan).await?;
    let d = plan.d.clone();
    let replicas = replicas_of(&d);
    let (surge, _) = surge_unavailable(&d);
    if plan.new_rs.is_none() {
        // New ReplicaSet, as large as the surge allows.
        let current = plan.total_spec();
        let n = if current >= replicas + surge { 0 } else { (replicas + surge - current).min(replicas) };
        create_new_rs(ctx, plan, n).await?;
        return sync_status(ctx, plan, false).await;
    }
    // Scale the new one up.
    let new_rs = plan.new_rs.clone().expect("present");
    let new_replicas = rs_replicas(&new_rs);
    if new_replicas > replicas {
        scale_rs(ctx, plan, &new_rs, replicas).await?;
        return sync_status(ctx, plan, false).await;
    }
    if new_replicas < replicas {
        let current = plan.total_spec();
        let max_total = replicas + surge;
        let target = if current >= max_total {
            new_replicas
        } else {
            new_replicas + (max_total - current).min(replicas - new_replicas)
        };
        if target != new_replicas {
            scale_rs(ctx, plan, &new_rs, target).await?;
            return sync_status(ctx, plan, false).await;
        }
    }
    // Scale the old ones down.
    if reconcile_old(ctx, plan).await? {
        return sync_status(ctx, plan, false).await;
    }
    // Keep the annotations of the new one current even when nothing moves.
    let new_rs = plan.new_rs.clone().expect("present");
    scale_rs(ctx, plan, &new_rs, rs_replicas(&new_rs)).await?;
    sync_status(ctx, plan, true).await
}

/// Kubernetes' `reconcileOldReplicaSets`: first remove unhealthy old pods, then scale old
/// ReplicaSets down as far as availability allows.
async fn reconcile_old(ctx: &Ctx, plan: &mut Plan) -> anyhow::Result<bool> {
    let d = plan.d.clone();
    let replicas = replicas_of(&d);
    let old_count: i32 = plan.old_rss.iter().map(|r| rs_replicas(r)).sum();
    if old_count == 0 {
        return Ok(false);
    }
    let all_count = plan.total_spec();
    let min_available = replicas - max_unavailable(&d);
    let new_rs = plan.new_rs.clone().expect("present");
    let new_unavailable = rs_replicas(&new_rs) - plan.available(&new_rs);
    let max_scaled_down = all_count - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return Ok(false);
    }
    let mut scaled = 0;
    // Unhealthy replicas first (oldest sets first).
    let olds: Vec<Arc<ReplicaSet>> = plan.old_rss.clone();
    for rs in &olds {
        if scaled >= max_scaled_down {
            break;
        }
        let n = rs_replicas(rs);
        let avail = plan.available(rs);
        if n == 0 || n == avail {
            continue;
        }
        let down = (max_scaled_down - scaled).min(n - avail);
        scale_rs(ctx, plan, rs, n - down).await?;
        scaled += down;
    }
    // Then healthy ones, keeping minAvailable.
    let available: i32 = plan.all().iter().map(|r| plan.available(r)).sum();
    // Pods just removed above are no longer available.
    let available = available.min(plan.total_spec());
    if available > min_available {
        let mut total = available - min_available;
        let olds: Vec<Arc<ReplicaSet>> = plan.old_rss.clone();
        for rs in &olds {
            if total <= 0 {
                break;
            }
            let n = rs_replicas(rs);
            if n == 0 {
                continue;
            }
            let down = n.min(total);
            scale_rs(ctx, plan, rs, n - down).await?;
            scaled += down;
            total -= down;
        }
    }
    Ok(scaled > 0)
}

async fn rollout_recreate(ctx: &Ctx, plan: &mut Plan) -> anyhow::Result<Action> {
    sync_revision(ctx, plan).await?;
    // Old ones down to zero first.
    let mut scaled = false;
    for rs in plan.old_rss.clone() {
        if rs_replicas(&rs) > 0 {
            scaled |= scale_rs(ctx, plan, &rs, 0).await?;
        }
    }
    if scaled {
        return sync_status(ctx, plan, false).await;
    }
    // Then wait until no old pod is running.
    if plan.old_rss.iter().any(|r| plan.counts(r).running > 0) {
        return sync_status(ctx, plan, false).await;
    }
    let replicas = replicas_of(&plan.d);
    match plan.new_rs.clone() {
        None => create_new_rs(ctx, plan, replicas).await?,
        Some(rs) => {
            scale_rs(ctx, plan, &rs, replicas).await?;
        }
    }
    sync_status(ctx, plan, true).await
}

/// A paused deployment: only its size follows `spec.replicas` (when one set is active).
async fn scale_only(ctx: &Ctx, plan: &mut Plan) -> anyhow::Result<()> {
    let replicas = replicas_of(&plan.d);
    let active: Vec<Arc<ReplicaSet>> = plan.all().into_iter().filter(|r| rs_replicas(r) > 0).collect();
    let target = match active.len() {
        0 => plan.new_rs.clone().or_else(|| plan.old_rss.iter().max_by_key(|r| created(r)).cloned()),
        1 => Some(active[0].clone()),
        _ => None,
    };
    if let Some(rs) = target {
        scale_rs(ctx, plan, &rs, replicas).await?;
    }
    Ok(())
}

async fn check_paused_condition(ctx: &Ctx, plan: &mut Plan, paused: bool) -> anyhow::Result<()> {
    if plan.d.spec.as_ref().and_then(|s| s.progress_deadline_seconds).is_none() {
        return Ok(());
    }
    let conds = plan.d.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    let cond = conds.iter().find(|c| c.type_ == "Progressing");
    let paused_cond = cond.is_some_and(|c| c.reason.as_deref() == Some("DeploymentPaused"));
    let (status, reason, message) = if paused && !paused_cond {
        ("Unknown", "DeploymentPaused", "Deployment is paused")
    } else if !paused && paused_cond {
        ("Unknown", "DeploymentResumed", "Deployment is resumed")
    } else {
        return Ok(());
    };
    let mut st = serde_json::to_value(&plan.d.status)?;
    if !st.is_object() {
        st = json!({});
    }
    let mut c: Vec<Value> = st["conditions"].as_array().cloned().unwrap_or_default();
    set_deployment_condition(&mut c, "Progressing", status, reason, message);
    st["conditions"] = json!(c);
    write_status(Api::namespaced(ctx.client.clone(), &plan.key.namespace), plan.d.as_ref(), st, COMPONENT).await?;
    refresh(ctx, plan).await;
    Ok(())
}

/// Deletes the oldest unused ReplicaSets beyond `revisionHistoryLimit`.
async fn cleanup(ctx: &Ctx, plan: &Plan) -> anyhow::Result<()> {
    let Some(limit) = plan.d.spec.as_ref().and_then(|s| s.revision_history_limit) else { return Ok(()) };
    let mut cleanable: Vec<Arc<ReplicaSet>> =
        plan.old_rss.iter().filter(|r| r.metadata.deletion_timestamp.is_none()).cloned().collect();
    let diff = cleanable.len() as i32 - limit;
    if diff <= 0 {
        return Ok(());
    }
    cleanable.sort_by_key(|r| (revision(r), created(r)));
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &plan.key.namespace);
    for rs in cleanable.iter().take(diff as usize) {
        let status_replicas = rs.status.as_ref().map(|s| s.replicas).unwrap_or(0);
        let observed = rs.status.as_ref().and_then(|s| s.observed_generation).unwrap_or(0);
        if status_replicas != 0
            || rs_replicas(rs) != 0
            || plan.counts(rs).running > 0
            || rs.metadata.generation.unwrap_or(0) > observed
        {
            continue;
        }
        let dp = DeleteParams {
            preconditions: Some(Preconditions { uid: rs.uid(), resource_version: None }),
            ..Default::default()
        };
        match api.delete(&rs.name_any(), &dp).await {
            Ok(_) => {}
            Err(e) if util::is_not_found(&e) || util::is_conflict(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Status and conditions as Kubernetes' `syncRolloutStatus` computes them; cleans up old
/// ReplicaSets once the rollout is complete (`may_cleanup`).
async fn sync_status(ctx: &Ctx, plan: &Plan, may_cleanup: bool) -> anyhow::Result<Action> {
    let d = plan.d.clone();
    let replicas = replicas_of(&d);
    let all = plan.all();
    let mut total = 0;
    let mut ready = 0;
    let mut available = 0;
    for rs in &all {
        let c = plan.counts(rs);
        total += c.active;
        ready += c.ready;
        available += c.available;
    }
    let updated = plan.new_rs.as_ref().map(|r| plan.counts(r).active).unwrap_or(0);
    let old_status = serde_json::to_value(&d.status)?;
    let old = |k: &str| old_status[k].as_i64().unwrap_or(0);
    let mut st = serde_json::Map::new();
    put_count(&mut st, "observedGeneration", d.metadata.generation.unwrap_or(0));
    put_count(&mut st, "replicas", total as i64);
    put_count(&mut st, "updatedReplicas", updated as i64);
    put_count(&mut st, "readyReplicas", ready as i64);
    put_count(&mut st, "availableReplicas", available as i64);
    put_count(&mut st, "unavailableReplicas", (replicas - available).max(0) as i64);
    if let Some(c) = old_status.get("collisionCount").filter(|c| !c.is_null()) {
        st.insert("collisionCount".into(), c.clone());
    }
    let mut conds: Vec<Value> = old_status["conditions"].as_array().cloned().unwrap_or_default();
    if available >= replicas - max_unavailable(&d) {
        set_deployment_condition(
            &mut conds,
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
        );
    } else {
        set_deployment_condition(
            &mut conds,
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
        );
    }
    let deadline = d.spec.as_ref().and_then(|s| s.progress_deadline_seconds);
    let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
    let mut requeue = plan.next_check;
    let generation_seen = true;
    let complete = updated == replicas && total == replicas && available == replicas && generation_seen;
    match deadline {
        None => conds.retain(|c| c["type"] != "Progressing"),
        Some(deadline) if !paused => {
            let current = conds.iter().find(|c| c["type"] == "Progressing").cloned();
            let is_complete =
                total == updated && current.as_ref().is_some_and(|c| c["reason"] == "NewReplicaSetAvailable");
            let rs_name = plan.new_rs.as_ref().map(|r| r.name_any());
            if !is_complete {
                let progressing = updated as i64 > old("updatedReplicas")
                    || ((total - updated) as i64) < old("replicas") - old("updatedReplicas")
                    || ready as i64 > old("readyReplicas")
                    || available as i64 > old("availableReplicas");
                if complete {
                    let msg = match &rs_name {
                        Some(n) => format!("ReplicaSet {n:?} has successfully progressed."),
                        None => format!("Deployment {:?} has successfully progressed.", d.name_any()),
                    };
                    set_deployment_condition(&mut conds, "Progressing", "True", "NewReplicaSetAvailable", &msg);
                } else if progressing {
                    let msg = format!("ReplicaSet {:?} is progressing.", rs_name.clone().unwrap_or_default());
                    let now = json!(util::now());
                    let transition = match &current {
                        Some(c) if c["status"] == "True" => c["lastTransitionTime"].clone(),
                        _ => now.clone(),
                    };
                    conds.retain(|c| c["type"] != "Progressing");
                    conds.push(json!({"type": "Progressing", "status": "True", "lastUpdateTime": now, "lastTransitionTime": transition, "reason": "ReplicaSetUpdated", "message": msg}));
                } else if let Some(c) = &current {
                    // Timed out?
                    let last =
                        c["lastUpdateTime"].as_str().and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok());
                    if let Some(last) = last {
                        let elapsed = (k8s_openapi::jiff::Timestamp::now().as_second() - last.as_second()) as f64;
                        if c["reason"] != "ProgressDeadlineExceeded" && elapsed > deadline as f64 {
                            let msg = format!(
                                "ReplicaSet {:?} has timed out progressing.",
                                rs_name.clone().unwrap_or_default()
                            );
                            set_deployment_condition(
                                &mut conds,
                                "Progressing",
                                "False",
                                "ProgressDeadlineExceeded",
                                &msg,
                            );
                        } else if c["reason"] != "ProgressDeadlineExceeded" {
                            let left = util::secs(deadline as f64 - elapsed + 1.0);
                            requeue = Some(requeue.map_or(left, |r: Duration| r.min(left)));
                        }
                    }
                }
            }
        }
        Some(_) => {}
    }
    // Failure conditions of the ReplicaSets surface on the deployment.
    let failure = all.iter().find_map(|rs| {
        rs.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
            .cloned()
    });
    match failure {
        Some(f) => set_deployment_condition(
            &mut conds,
            "ReplicaFailure",
            "True",
            f.reason.as_deref().unwrap_or(""),
            f.message.as_deref().unwrap_or(""),
        ),
        None => conds.retain(|c| c["type"] != "ReplicaFailure"),
    }
    if !conds.is_empty() {
        st.insert("conditions".into(), Value::Array(conds));
    }
    let new_status = Value::Object(st);
    if new_status != old_status {
        write_status(Api::namespaced(ctx.client.clone(), &plan.key.namespace), d.as_ref(), new_status, COMPONENT)
            .await?;
    }
    if may_cleanup && complete {
        cleanup(ctx, plan).await?;
    }
    Ok(requeue.map(Action::requeue).unwrap_or_default())
}
