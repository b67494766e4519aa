//! The DaemonSet controller: one pod per eligible node (node selector, required node affinity,
//! taints the daemon pods do not tolerate), pinned to its node through required node affinity
//! (`matchFields metadata.name`), following nodes as they join and leave; RollingUpdate replaces
//! pods of an older template within `maxUnavailable`.

use crate::Ctx;
use crate::replicas::{claim_pods, create_pods, delete_pods, put_count, write_status};
use crate::runtime::{Action, ObjKey, Queue};
use crate::util::{self, Selector};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodSpec, Toleration,
};
use kube::ResourceExt;
use kube::api::Api;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

const COMPONENT: &str = "daemonset-controller";
pub const HASH_LABEL: &str = "controller-revision-hash";

pub fn register(ctx: &Arc<Ctx>, queue: Queue) {
    let q = queue.clone();
    ctx.daemonsets.on_change(move |old, new| {
        if let Some(d) = new.or(old) {
            q.add(ObjKey::of(d.as_ref()));
        }
    });
    // Any node change may change where daemons run.
    let q = queue.clone();
    let dss = Arc::downgrade(&ctx.daemonsets);
    ctx.nodes.on_change(move |old, new| {
        let relevant = match (old, new) {
            (Some(o), Some(n)) => {
                o.metadata.labels != n.metadata.labels
                    || o.spec != n.spec
                    || o.metadata.deletion_timestamp != n.metadata.deletion_timestamp
            }
            _ => true,
        };
        if !relevant {
            return;
        }
        if let Some(dss) = dss.upgrade() {
            for d in dss.list() {
                q.add(ObjKey::of(d.as_ref()));
            }
        }
    });
    let dss = Arc::downgrade(&ctx.daemonsets);
    ctx.pods.on_change(move |old, new| {
        for p in [old, new].into_iter().flatten() {
            if let Some(r) = util::controller_of_kind(&p.metadata, "apps", "DaemonSet") {
                queue.add(ObjKey::new(p.namespace().unwrap_or_default(), r.name.clone()));
            }
        }
        if let Some(p) =
            new.filter(|p| util::controller_ref(&p.metadata).is_none() && !util::is_terminating(&p.metadata))
        {
            let Some(dss) = dss.upgrade() else { return };
            for d in dss.list_ns(&p.namespace().unwrap_or_default()) {
                if selector(&d).matches(p.metadata.labels.as_ref()) {
                    queue.add(ObjKey::of(d.as_ref()));
                }
            }
        }
    });
}

fn selector(ds: &DaemonSet) -> Selector {
    Selector::from_label_selector(ds.spec.as_ref().map(|s| &s.selector))
}

fn toleration(key: &str, effect: &str) -> Toleration {
    Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    }
}

/// The tolerations Kubernetes adds to every daemon pod.
fn add_daemon_tolerations(spec: &mut PodSpec) {
    let mut extra = vec![
        toleration("node.kubernetes.io/not-ready", "NoExecute"),
        toleration("node.kubernetes.io/unreachable", "NoExecute"),
        toleration("node.kubernetes.io/disk-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/memory-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/pid-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if spec.host_network == Some(true) {
        extra.push(toleration("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    let t = spec.tolerations.get_or_insert_with(Vec::new);
    for e in extra {
        if !t.iter().any(|x| x.key == e.key && x.effect == e.effect) {
            t.push(e);
        }
    }
}

/// Required node affinity pinning a pod to `node` (Kubernetes'
/// `ReplaceDaemonSetPodNodeNameNodeAffinity`).
fn pin_to_node(spec: &mut PodSpec, node: &str) {
    let field =
        NodeSelectorRequirement { key: "metadata.name".into(), operator: "In".into(), values: Some(vec![node.into()]) };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let na = affinity.node_affinity.get_or_insert_with(NodeAffinity::default);
    let required = na
        .required_during_scheduling_ignored_during_execution
        .get_or_insert_with(|| NodeSelector { node_selector_terms: Vec::new() });
    if required.node_selector_terms.is_empty() {
        required
            .node_selector_terms
            .push(NodeSelectorTerm { match_fields: Some(vec![field]), match_expressions: None });
    } else {
        for t in required.node_selector_terms.iter_mut() {
            t.match_fields = Some(vec![field.clone()]);
        }
    }
}

/// The node a daemon pod is for: its `nodeName`, else its pinned affinity.
pub fn target_node(p: &Pod) -> Option<String> {
    if let Some(n) = util::pod_node(p) {
        return Some(n.to_string());
    }
    let terms = &p
        .spec
        .as_ref()?
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|f| f.key == "metadata.name" && f.operator == "In")
        .and_then(|f| f.values.as_ref()?.first().cloned())
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&String>) -> bool {
    let values = r.values.as_deref().unwrap_or(&[]);
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) =
                (value.and_then(|v| v.parse::<i64>().ok()), values.first().and_then(|b| b.parse::<i64>().ok()))
            else {
                return false;
            };
            if r.operator == "Gt" { v > bound } else { v < bound }
        }
        _ => false,
    }
}

/// Node selector and required node affinity of a pod spec against a node.
pub fn node_matches(spec: &PodSpec, node: &Node) -> bool {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    if let Some(sel) = &spec.node_selector {
        if !sel.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            return false;
        }
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref());
    let Some(required) = required else { return true };
    let name = node.name_any();
    required.node_selector_terms.iter().any(|t| {
        let exprs = t.match_expressions.as_deref().unwrap_or(&[]);
        let fields = t.match_fields.as_deref().unwrap_or(&[]);
        if exprs.is_empty() && fields.is_empty() {
            return false;
        }
        exprs.iter().all(|e| requirement_matches(e, labels.get(&e.key)))
            && fields.iter().all(|f| f.key == "metadata.name" && requirement_matches(f, Some(&name)))
    })
}

/// (should run, should continue running) — Kubernetes' `NodeShouldRunDaemonPod`.
fn should_run(spec: &PodSpec, node: &Node) -> (bool, bool) {
    if spec.node_name.as_deref().is_some_and(|n| !n.is_empty() && n != node.name_any()) || !node_matches(spec, node) {
        return (false, false);
    }
    let tolerations = spec.tolerations.clone().unwrap_or_default();
    let mut untolerated_schedule = false;
    let mut untolerated_execute = false;
    for t in node.spec.as_ref().and_then(|s| s.taints.as_ref()).into_iter().flatten() {
        if t.effect != "NoSchedule" && t.effect != "NoExecute" {
            continue;
        }
        if !tolerations.iter().any(|tol| util::toleration_matches(tol, &t.key, t.value.as_deref(), &t.effect)) {
            untolerated_schedule = true;
            if t.effect == "NoExecute" {
                untolerated_execute = true;
            }
        }
    }
    (!untolerated_schedule, !untolerated_execute)
}

pub async fn reconcile(key: ObjKey, ctx: Arc<Ctx>) -> anyhow::Result<Action> {
    let Some(ds) = ctx.daemonsets.get(&key) else { return Ok(Action::done()) };
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::done());
    }
    let sel = selector(&ds);
    if sel.is_empty() {
        return Ok(Action::done());
    }
    let spec = ds.spec.clone().unwrap_or_default();
    let mut template = spec.template.clone();
    let hash = util::template_hash(&template, ds.status.as_ref().and_then(|s| s.collision_count));
    template
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(Default::default)
        .insert(HASH_LABEL.into(), hash.clone());
    let mut pod_spec = template.spec.clone().unwrap_or_default();
    add_daemon_tolerations(&mut pod_spec);
    template.spec = Some(pod_spec.clone());

    let fresh = {
        let (ctx, key, uid) = (ctx.clone(), key.clone(), ds.uid());
        async move {
            let api: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &key.namespace);
            matches!(api.get(&key.name).await, Ok(o) if o.uid() == uid && o.metadata.deletion_timestamp.is_none())
        }
    };
    let pods = claim_pods(&ctx, ds.as_ref(), &sel, COMPONENT, fresh).await?;
    let mut by_node: BTreeMap<String, Vec<Arc<Pod>>> = BTreeMap::new();
    let mut unpinned = Vec::new();
    for p in &pods {
        match target_node(p) {
            Some(n) => by_node.entry(n).or_default().push(p.clone()),
            None => unpinned.push(p.clone()),
        }
    }
    let nodes = ctx.nodes.list();
    let node_names: HashSet<String> = nodes.iter().map(|n| n.name_any()).collect();
    let mut create_on: Vec<String> = Vec::new();
    let mut delete: Vec<Arc<Pod>> = unpinned.into_iter().filter(|p| !util::is_terminating(&p.metadata)).collect();
    let mut requeue = Action::done();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    for node in &nodes {
        let name = node.name_any();
        let (run, keep) = should_run(&pod_spec, node);
        let here: Vec<Arc<Pod>> = by_node.get(&name).cloned().unwrap_or_default();
        let live: Vec<Arc<Pod>> = here.iter().filter(|p| !util::is_terminating(&p.metadata)).cloned().collect();
        if run {
            let mut running: Vec<Arc<Pod>> = Vec::new();
            for p in &live {
                if util::pod_phase(p) == "Failed" {
                    ctx.recorder.warning(
                        COMPONENT,
                        ds.as_ref(),
                        "FailedDaemonPod",
                        format!(
                            "Found failed daemon pod {}/{} on node {name}, will try to kill it",
                            key.namespace,
                            p.name_any()
                        ),
                    );
                    delete.push(p.clone());
                } else {
                    running.push(p.clone());
                }
            }
            if running.is_empty()
                && here.iter().all(|p| !util::is_terminating(&p.metadata) || util::pod_phase(p) == "Failed")
            {
                create_on.push(name.clone());
            } else if running.len() > 1 {
                // Keep the oldest.
                running
                    .sort_by_key(|p| (p.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()), p.name_any()));
                delete.extend(running.into_iter().skip(1));
            }
        } else if !keep {
            delete.extend(live);
        }
    }
    // Daemon pods for nodes that no longer exist.
    for (n, ps) in &by_node {
        if !node_names.contains(n) {
            delete.extend(ps.iter().filter(|p| !util::is_terminating(&p.metadata)).cloned());
        }
    }
    // Rolling update: replace pods of an older template, at most maxUnavailable at a time.
    let rolling =
        spec.update_strategy.as_ref().and_then(|s| s.type_.as_deref()).unwrap_or("RollingUpdate") == "RollingUpdate";
    let desired: i32 = nodes.iter().filter(|n| should_run(&pod_spec, n).0).count() as i32;
    if rolling && delete.is_empty() && create_on.is_empty() {
        let ru = spec.update_strategy.as_ref().and_then(|s| s.rolling_update.as_ref());
        let max_unavailable = util::scaled_value(ru.and_then(|r| r.max_unavailable.as_ref()), desired, true, 1).max(1);
        let mut unavailable = 0;
        let mut old: Vec<Arc<Pod>> = Vec::new();
        for node in nodes.iter().filter(|n| should_run(&pod_spec, n).0) {
            let live: Vec<Arc<Pod>> = by_node
                .get(&node.name_any())
                .into_iter()
                .flatten()
                .filter(|p| !util::is_terminating(&p.metadata))
                .cloned()
                .collect();
            let Some(p) = live.first() else {
                unavailable += 1;
                continue;
            };
            if !util::is_pod_available(p, min_ready) {
                unavailable += 1;
            }
            if p.labels().get(HASH_LABEL) != Some(&hash) {
                old.push(p.clone());
            }
        }
        // Terminating pods of nodes being replaced count as unavailable too.
        unavailable += pods.iter().filter(|p| util::is_terminating(&p.metadata)).count() as i32;
        old.sort_by_key(|p| (util::is_pod_available(p, min_ready), p.name_any()));
        for p in old {
            let avail = util::is_pod_available(&p, min_ready);
            if !avail {
                delete.push(p);
            } else if unavailable < max_unavailable {
                unavailable += 1;
                delete.push(p);
            }
        }
    }
    let mut failure: Option<kube::Error> = None;
    if !delete.is_empty() {
        if let Err(e) = delete_pods(&ctx, ds.as_ref(), &delete, COMPONENT).await {
            failure = Some(e);
        }
    }
    if !create_on.is_empty() {
        // One pod per node, in growing batches.
        let mut batch = 1usize;
        let mut i = 0;
        while i < create_on.len() && failure.is_none() {
            let chunk: Vec<String> = create_on[i..(i + batch).min(create_on.len())].to_vec();
            let results = futures::future::join_all(chunk.iter().map(|node| {
                let t = template.clone();
                let node = node.clone();
                let ctx = ctx.clone();
                let ds = ds.clone();
                async move {
                    create_pods(&ctx, ds.as_ref(), &t, 1, COMPONENT, |p| {
                        if let Some(s) = p.spec.as_mut() {
                            pin_to_node(s, &node);
                        }
                    })
                    .await
                }
            }))
            .await;
            for r in results {
                if let Err(e) = r {
                    failure = Some(e);
                }
            }
            i += batch;
            batch *= 2;
        }
    }
    // Status from the cache as it is now.
    let pods: Vec<Arc<Pod>> = ctx
        .pods
        .list_ns(&key.namespace)
        .into_iter()
        .filter(|p| {
            util::is_controlled_by(&p.metadata, &ds.uid().unwrap_or_default())
                && sel.matches(p.metadata.labels.as_ref())
        })
        .collect();
    let mut by_node: BTreeMap<String, Vec<Arc<Pod>>> = BTreeMap::new();
    for p in pods.iter().filter(|p| !util::is_terminating(&p.metadata)) {
        if let Some(n) = target_node(p) {
            by_node.entry(n).or_default().push(p.clone());
        }
    }
    let (mut current, mut misscheduled, mut ready, mut available, mut updated) = (0, 0, 0, 0, 0);
    for node in &nodes {
        let run = should_run(&pod_spec, node).0;
        let Some(ps) = by_node.get(&node.name_any()) else { continue };
        if run {
            current += 1;
            let mut ps = ps.clone();
            ps.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()));
            let p = &ps[0];
            if util::is_pod_ready(p) {
                ready += 1;
            }
            match util::pod_availability(p, min_ready) {
                (true, _) => available += 1,
                (false, Some(d)) => requeue = requeue.min(Action::requeue(d)),
                _ => {}
            }
            if p.labels().get(HASH_LABEL) == Some(&hash) {
                updated += 1;
            }
        } else {
            misscheduled += 1;
        }
    }
    let old = serde_json::to_value(&ds.status)?;
    let mut st = serde_json::Map::new();
    st.insert("currentNumberScheduled".into(), json!(current));
    st.insert("numberMisscheduled".into(), json!(misscheduled));
    st.insert("desiredNumberScheduled".into(), json!(desired));
    st.insert("numberReady".into(), json!(ready));
    put_count(&mut st, "observedGeneration", ds.metadata.generation.unwrap_or(0));
    put_count(&mut st, "updatedNumberScheduled", updated);
    put_count(&mut st, "numberAvailable", available);
    put_count(&mut st, "numberUnavailable", (desired as i64 - available).max(0));
    for k in ["collisionCount", "conditions"] {
        if let Some(v) = old.get(k).filter(|v| !v.is_null()) {
            st.insert(k.into(), v.clone());
        }
    }
    write_status(Api::namespaced(ctx.client.clone(), &key.namespace), ds.as_ref(), Value::Object(st), COMPONENT)
        .await?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    if !delete.is_empty() {
        requeue = requeue.min(Action::requeue(Duration::from_secs(1)));
    }
    Ok(requeue)
}
