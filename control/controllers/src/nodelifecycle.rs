//! Node lifecycle: a node whose kubelet stops renewing its Lease (in `kube-node-lease`) and
//! posting status for `node_monitor_grace` gets its conditions set to `Unknown`, the
//! `node.kubernetes.io/unreachable` taints (NoSchedule and NoExecute; `not-ready` for a node
//! that reports Ready=False) and its pods marked not ready. Pods on a node with NoExecute taints
//! are evicted (deleted) once their tolerations run out: a matching toleration's
//! `tolerationSeconds` (never, without it), or `pod_eviction_timeout` without a matching one.

use crate::Ctx;
use crate::runtime::{Action, ObjKey, Queue};
use crate::util;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

const COMPONENT: &str = "node-controller";
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";

pub fn register(ctx: &Arc<Ctx>, queue: Queue) {
    let q = queue.clone();
    ctx.nodes.on_change(move |old, new| {
        if let Some(n) = new.or(old) {
            q.add(ObjKey::cluster(n.name_any()));
        }
    });
    let q = queue.clone();
    ctx.leases.on_change(move |_old, new| {
        if let Some(l) = new {
            q.add(ObjKey::cluster(l.name_any()));
        }
    });
    // New pods on a tainted node need an eviction time.
    let nodes = Arc::downgrade(&ctx.nodes);
    ctx.pods.on_change(move |_old, new| {
        let Some(p) = new else { return };
        let Some(node) = util::pod_node(p) else { return };
        let Some(nodes) = nodes.upgrade() else { return };
        if nodes.get(&ObjKey::cluster(node)).is_some_and(|n| no_execute_taints(&n).next().is_some()) {
            queue.add(ObjKey::cluster(node));
        }
    });
}

fn no_execute_taints(n: &Node) -> impl Iterator<Item = &Taint> {
    n.spec.as_ref().and_then(|s| s.taints.as_ref()).into_iter().flatten().filter(|t| t.effect == "NoExecute")
}

fn secs_since(t: Timestamp) -> f64 {
    (Timestamp::now().as_millisecond() - t.as_millisecond()) as f64 / 1000.0
}

pub async fn reconcile(key: ObjKey, ctx: Arc<Ctx>) -> anyhow::Result<Action> {
    let Some(node) = ctx.nodes.get(&key) else { return Ok(Action::done()) };
    let grace = ctx.config.node_monitor_grace.as_secs_f64();
    let mut requeue = Action::done();

    // 1. Health: the latest of the lease renewal, the Ready heartbeat and the node's creation.
    let conditions: Vec<Value> = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(|c| c.iter().filter_map(|x| serde_json::to_value(x).ok()).collect())
        .unwrap_or_default();
    let ready = conditions.iter().find(|c| c["type"] == "Ready").cloned();
    let renew = ctx
        .leases
        .get_named("kube-node-lease", &key.name)
        .and_then(|l| l.spec.as_ref()?.renew_time.as_ref().map(|t| t.0));
    let heartbeat = ready.as_ref().and_then(|c| c["lastHeartbeatTime"].as_str()?.parse::<Timestamp>().ok());
    let created = node.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let probe = [renew, heartbeat, created].into_iter().flatten().max();
    let elapsed = probe.map(secs_since).unwrap_or(f64::MAX);
    let mut ready_status =
        ready.as_ref().and_then(|c| c["status"].as_str().map(str::to_string)).unwrap_or_else(|| "Unknown".into());
    if elapsed > grace {
        if ready.as_ref().is_none_or(|c| c["status"] != "Unknown") {
            mark_unknown(&ctx, &node, ready.is_none()).await?;
            ctx.recorder.normal(
                COMPONENT,
                node.as_ref(),
                "NodeNotReady",
                format!("Node {} status is now: NodeNotReady", key.name),
            );
        }
        ready_status = "Unknown".into();
    } else {
        requeue = requeue.min(Action::requeue(util::secs(grace - elapsed + 0.2)));
    }

    // 2. Taints follow the Ready condition.
    let node = ctx.nodes.get(&key).unwrap_or(node);
    let taints = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
    let wanted: Option<&str> = match ready_status.as_str() {
        "True" => None,
        "False" => Some(NOT_READY),
        _ => Some(UNREACHABLE),
    };
    let mut new_taints: Vec<Taint> = taints
        .iter()
        .filter(|t| !(t.key == UNREACHABLE || t.key == NOT_READY) || Some(t.key.as_str()) == wanted)
        .cloned()
        .collect();
    if let Some(k) = wanted {
        if !new_taints.iter().any(|t| t.key == k && t.effect == "NoSchedule") {
            new_taints.push(Taint { key: k.into(), effect: "NoSchedule".into(), ..Default::default() });
        }
        if !new_taints.iter().any(|t| t.key == k && t.effect == "NoExecute") {
            new_taints.push(Taint {
                key: k.into(),
                effect: "NoExecute".into(),
                time_added: Some(util::now()),
                value: None,
            });
        }
    }
    if new_taints != taints {
        let api: Api<Node> = Api::all(ctx.client.clone());
        let patch = json!({"spec": {"taints": new_taints}, "metadata": {"resourceVersion": node.resource_version()}});
        api.patch(
            &key.name,
            &PatchParams { field_manager: Some(COMPONENT.into()), ..Default::default() },
            &Patch::Merge(&patch),
        )
        .await?;
        let rv = node.resource_version();
        ctx.nodes.wait_until(Duration::from_secs(2), |s| s.get(&key).is_none_or(|n| n.resource_version() != rv)).await;
    }

    // 3. Pods of a node that is not ready are not ready either.
    let pods = ctx.pods.indexed(&format!("node:{}", key.name));
    if ready_status != "True" {
        for p in pods.iter().filter(|p| util::is_pod_active(p) && util::is_pod_ready(p)) {
            mark_pod_not_ready(&ctx, p).await?;
        }
    }

    // 4. Eviction by NoExecute taints.
    let node = ctx.nodes.get(&key).unwrap_or(node);
    let taints: Vec<Taint> = no_execute_taints(&node).cloned().collect();
    if !taints.is_empty() {
        let default_wait = ctx.config.pod_eviction_timeout.as_secs_f64();
        for p in pods.iter().filter(|p| !util::is_terminating(&p.metadata) && !util::is_pod_finished(p)) {
            let tolerations = p.spec.as_ref().and_then(|s| s.tolerations.clone()).unwrap_or_default();
            // Seconds until eviction: the soonest over the taints.
            let mut wait: Option<f64> = None;
            for t in &taints {
                let since = t.time_added.as_ref().map(|x| secs_since(x.0)).unwrap_or(0.0);
                let matching: Vec<_> = tolerations
                    .iter()
                    .filter(|tol| util::toleration_matches(tol, &t.key, t.value.as_deref(), &t.effect))
                    .collect();
                let allowed = if matching.is_empty() {
                    Some(default_wait)
                } else if matching.iter().any(|m| m.toleration_seconds.is_none()) {
                    None
                } else {
                    matching.iter().filter_map(|m| m.toleration_seconds).min().map(|s| s.max(0) as f64)
                };
                if let Some(a) = allowed {
                    let left = a - since;
                    wait = Some(wait.map_or(left, |w: f64| w.min(left)));
                }
            }
            match wait {
                Some(w) if w <= 0.0 => evict(&ctx, p).await?,
                Some(w) => requeue = requeue.min(Action::requeue(util::secs(w + 0.05))),
                None => {}
            }
        }
    }
    Ok(requeue)
}

/// Kubernetes' "Kubelet stopped posting node status": every condition Unknown.
async fn mark_unknown(ctx: &Ctx, node: &Node, never_posted: bool) -> anyhow::Result<()> {
    let now = json!(util::now());
    let (reason, message) = if never_posted {
        ("NodeStatusNeverUpdated", "Kubelet never posted node status.")
    } else {
        ("NodeStatusUnknown", "Kubelet stopped posting node status.")
    };
    let mut status = serde_json::to_value(&node.status)?;
    if !status.is_object() {
        status = json!({});
    }
    let mut conds: Vec<Value> = status["conditions"].as_array().cloned().unwrap_or_default();
    for t in ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"] {
        match conds.iter_mut().find(|c| c["type"] == t) {
            Some(c) => {
                if c["status"] != "Unknown" {
                    c["lastTransitionTime"] = now.clone();
                }
                c["status"] = json!("Unknown");
                c["reason"] = json!(reason);
                c["message"] = json!(message);
            }
            None if t == "Ready" || never_posted => conds.push(json!({
                "type": t, "status": "Unknown", "reason": reason, "message": message,
                "lastHeartbeatTime": node.metadata.creation_timestamp, "lastTransitionTime": now,
            })),
            None => {}
        }
    }
    status["conditions"] = json!(conds);
    let api: Api<Node> = Api::all(ctx.client.clone());
    crate::replicas::write_status(api, node, status, COMPONENT).await?;
    let rv = node.resource_version();
    let key = ObjKey::cluster(node.name_any());
    ctx.nodes.wait_until(Duration::from_secs(2), |s| s.get(&key).is_none_or(|n| n.resource_version() != rv)).await;
    Ok(())
}

async fn mark_pod_not_ready(ctx: &Ctx, pod: &Pod) -> anyhow::Result<()> {
    let mut status = serde_json::to_value(&pod.status)?;
    let now = json!(util::now());
    if let Some(conds) = status["conditions"].as_array_mut() {
        for c in conds.iter_mut().filter(|c| c["type"] == "Ready") {
            c["status"] = json!("False");
            c["lastTransitionTime"] = now.clone();
        }
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    let patch = json!({"status": {"conditions": status["conditions"]}, "metadata": {"resourceVersion": pod.resource_version()}});
    match api
        .patch_status(
            &pod.name_any(),
            &PatchParams { field_manager: Some(COMPONENT.into()), ..Default::default() },
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if util::is_not_found(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn evict(ctx: &Ctx, pod: &Pod) -> anyhow::Result<()> {
    let ns = pod.namespace().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let dp = DeleteParams {
        preconditions: Some(Preconditions { uid: pod.uid(), resource_version: None }),
        ..Default::default()
    };
    match api.delete(&pod.name_any(), &dp).await {
        Ok(_) => {
            ctx.recorder.normal(
                "taint-eviction-controller",
                pod,
                "TaintManagerEviction",
                format!("Marking for deletion Pod {ns}/{}", pod.name_any()),
            );
            Ok(())
        }
        Err(e) if util::is_not_found(&e) || util::is_conflict(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
