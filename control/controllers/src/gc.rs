//! The garbage collector: follows ownerReferences across every kind the API serves.
//!
//! - background: a dependent whose owners are all gone is deleted;
//! - foreground: an owner being deleted with the `foregroundDeletion` finalizer has its
//!   dependents deleted first, and loses the finalizer (and with it its last obstacle) once no
//!   dependent with `blockOwnerDeletion` remains;
//! - orphan: an owner being deleted with the `orphan` finalizer has its references removed from
//!   its dependents, then loses the finalizer.
//!
//! A graph of every object's identity and ownerReferences is kept from one watch per resource
//! (metadata only is retained). Work is keyed by object UID; whether an owner is really gone is
//! confirmed with a live read, as Kubernetes does, so a lagging watch never deletes a dependent
//! whose owner exists.

use crate::discovery::{self, Resource};
use crate::runtime::{self, Action, ObjKey, Queue};
use crate::util;
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions, PropagationPolicy};
use kube::discovery::verbs;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

const COMPONENT: &str = "garbage-collector-controller";
pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";

/// Kinds the garbage collector leaves alone (as Kubernetes does).
fn ignored(r: &Resource) -> bool {
    r.ar.plural == "events" && (r.ar.group.is_empty() || r.ar.group == "events.k8s.io")
}

#[derive(Clone, Debug)]
struct GcNode {
    resource: usize,
    namespace: Option<String>,
    name: String,
    resource_version: Option<String>,
    owners: Vec<OwnerReference>,
    deleting: bool,
    finalizers: Vec<String>,
}

impl GcNode {
    fn has_finalizer(&self, f: &str) -> bool {
        self.finalizers.iter().any(|x| x == f)
    }
    fn deleting_dependents(&self) -> bool {
        self.deleting && self.has_finalizer(FOREGROUND)
    }
}

#[derive(Default)]
struct Graph {
    nodes: HashMap<String, GcNode>,
    dependents: HashMap<String, HashSet<String>>,
}

struct Gc {
    client: Client,
    resources: Vec<Resource>,
    graph: RwLock<Graph>,
    queue: Queue,
}

pub async fn run(client: Client, workers: usize) {
    loop {
        match run_once(client.clone(), workers).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "garbage collector: discovery failed; retrying");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
}

async fn run_once(client: Client, workers: usize) -> anyhow::Result<()> {
    let resources: Vec<Resource> = discovery::discover(&client)
        .await?
        .into_iter()
        .filter(|r| r.can(verbs::LIST) && r.can(verbs::WATCH) && r.can(verbs::DELETE) && !ignored(r))
        .collect();
    let (queue, rx) = Queue::new();
    let gc = Arc::new(Gc { client: client.clone(), resources, graph: RwLock::new(Graph::default()), queue });
    let mut tasks = tokio::task::JoinSet::new();
    let (synced_tx, mut synced_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    for i in 0..gc.resources.len() {
        tasks.spawn(monitor(gc.clone(), i, synced_tx.clone()));
    }
    // Start deciding once every kind has been listed (or after a while, if one cannot be).
    let mut synced = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while synced.len() < gc.resources.len() {
        match tokio::time::timeout_at(deadline, synced_rx.recv()).await {
            Ok(Some(i)) => {
                synced.insert(i);
            }
            _ => break,
        }
    }
    tracing::info!(kinds = gc.resources.len(), "garbage collector graph synced");
    let g = gc.clone();
    tasks.spawn(runtime::run_queue("garbagecollector", rx, workers, move |k| reconcile(k, g.clone())));
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// One resource's watch feeding the graph.
async fn monitor(gc: Arc<Gc>, idx: usize, synced: tokio::sync::mpsc::UnboundedSender<usize>) {
    let r = &gc.resources[idx];
    let api: Api<DynamicObject> = Api::all_with(gc.client.clone(), &r.ar);
    let mut stream = watcher::watcher(api, watcher::Config::default()).default_backoff().boxed();
    let mut listed: Option<HashSet<String>> = None;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(Event::Apply(o)) => gc.observe(idx, &o),
            Ok(Event::Delete(o)) => gc.forget(o.uid().unwrap_or_default()),
            Ok(Event::Init) => listed = Some(HashSet::new()),
            Ok(Event::InitApply(o)) => {
                listed.get_or_insert_with(HashSet::new).insert(o.uid().unwrap_or_default());
                gc.observe(idx, &o);
            }
            Ok(Event::InitDone) => {
                let seen = listed.take().unwrap_or_default();
                let gone: Vec<String> = gc
                    .graph
                    .read()
                    .unwrap()
                    .nodes
                    .iter()
                    .filter(|(uid, n)| n.resource == idx && !seen.contains(*uid))
                    .map(|(u, _)| u.clone())
                    .collect();
                for uid in gone {
                    gc.forget(uid);
                }
                let _ = synced.send(idx);
            }
            Err(e) => tracing::debug!(resource = %r.ar.plural, error = %e, "garbage collector watch failed; retrying"),
        }
    }
}

impl Gc {
    fn observe(&self, idx: usize, o: &DynamicObject) {
        let Some(uid) = o.uid() else { return };
        let node = GcNode {
            resource: idx,
            namespace: o.namespace(),
            name: o.name_any(),
            resource_version: o.resource_version(),
            owners: o.metadata.owner_references.clone().unwrap_or_default(),
            deleting: o.metadata.deletion_timestamp.is_some(),
            finalizers: o.metadata.finalizers.clone().unwrap_or_default(),
        };
        let mut enqueue: Vec<String> = Vec::new();
        {
            let mut g = self.graph.write().unwrap();
            let old = g.nodes.insert(uid.clone(), node.clone());
            let old_owners: Vec<OwnerReference> = old.as_ref().map(|n| n.owners.clone()).unwrap_or_default();
            for r in &old_owners {
                if !node.owners.iter().any(|n| n.uid == r.uid) {
                    if let Some(set) = g.dependents.get_mut(&r.uid) {
                        set.remove(&uid);
                        if set.is_empty() {
                            g.dependents.remove(&r.uid);
                        }
                    }
                }
            }
            for r in &node.owners {
                g.dependents.entry(r.uid.clone()).or_default().insert(uid.clone());
            }
            let owners_changed = old.as_ref().is_none_or(|o| o.owners != node.owners);
            if !node.owners.is_empty() && owners_changed {
                enqueue.push(uid.clone());
            }
            if node.deleting && (node.has_finalizer(ORPHAN) || node.has_finalizer(FOREGROUND)) {
                enqueue.push(uid.clone());
            }
            let state_changed =
                old.as_ref().is_none_or(|o| o.deleting != node.deleting || o.finalizers != node.finalizers);
            if state_changed && node.deleting_dependents() {
                enqueue.extend(g.dependents.get(&uid).into_iter().flatten().cloned());
            }
            // Owners waiting for their dependents learn about changes to them.
            for r in old_owners.iter().chain(node.owners.iter()) {
                if g.nodes.get(&r.uid).is_some_and(|o| o.deleting_dependents()) {
                    enqueue.push(r.uid.clone());
                }
            }
        }
        for u in enqueue {
            self.queue.add(ObjKey::cluster(u));
        }
    }

    fn forget(&self, uid: String) {
        let mut enqueue: Vec<String> = Vec::new();
        {
            let mut g = self.graph.write().unwrap();
            let Some(old) = g.nodes.remove(&uid) else { return };
            for r in &old.owners {
                if let Some(set) = g.dependents.get_mut(&r.uid) {
                    set.remove(&uid);
                    if set.is_empty() {
                        g.dependents.remove(&r.uid);
                    }
                }
                if g.nodes.get(&r.uid).is_some_and(|o| o.deleting_dependents()) {
                    enqueue.push(r.uid.clone());
                }
            }
            // Its dependents may have lost their last owner.
            enqueue.extend(g.dependents.get(&uid).into_iter().flatten().cloned());
        }
        for u in enqueue {
            self.queue.add(ObjKey::cluster(u));
        }
    }

    fn api_for(&self, node: &GcNode) -> Api<DynamicObject> {
        let r = &self.resources[node.resource];
        match (&node.namespace, r.namespaced) {
            (Some(ns), true) => Api::namespaced_with(self.client.clone(), ns, &r.ar),
            _ => Api::all_with(self.client.clone(), &r.ar),
        }
    }

    /// The API for an owner reference, in the namespace of its dependent when namespaced.
    fn owner_api(&self, r: &OwnerReference, dependent_ns: Option<&str>) -> Option<Api<DynamicObject>> {
        let (group, version) = match r.api_version.rsplit_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), r.api_version.clone()),
        };
        let res = self.resources.iter().find(|x| x.ar.group == group && x.ar.kind == r.kind)?;
        let ar = ApiResource {
            group,
            version,
            api_version: r.api_version.clone(),
            kind: r.kind.clone(),
            plural: res.ar.plural.clone(),
        };
        Some(match (res.namespaced, dependent_ns) {
            (true, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &ar),
            (true, None) => return None,
            (false, _) => Api::all_with(self.client.clone(), &ar),
        })
    }
}

#[derive(PartialEq)]
enum OwnerState {
    Solid,
    Dangling,
    Waiting,
}

async fn owner_state(gc: &Gc, node: &GcNode, r: &OwnerReference) -> anyhow::Result<OwnerState> {
    let known = gc.graph.read().unwrap().nodes.get(&r.uid).cloned();
    if let Some(o) = known {
        return Ok(if o.deleting_dependents() { OwnerState::Waiting } else { OwnerState::Solid });
    }
    // Not in the graph: ask the API (the graph may lag behind).
    let Some(api) = gc.owner_api(r, node.namespace.as_deref()) else {
        // A kind this server does not serve (or a namespaced owner of a cluster-scoped object):
        // nothing can be confirmed, so nothing is deleted.
        return Ok(OwnerState::Solid);
    };
    match api.get_opt(&r.name).await? {
        None => Ok(OwnerState::Dangling),
        Some(o) if o.uid().as_deref() != Some(r.uid.as_str()) => Ok(OwnerState::Dangling),
        Some(o) => {
            let deleting = o.metadata.deletion_timestamp.is_some() && o.finalizers().iter().any(|f| f == FOREGROUND);
            Ok(if deleting { OwnerState::Waiting } else { OwnerState::Solid })
        }
    }
}

async fn reconcile(key: ObjKey, gc: Arc<Gc>) -> anyhow::Result<Action> {
    let uid = key.name;
    let Some(node) = gc.graph.read().unwrap().nodes.get(&uid).cloned() else { return Ok(Action::done()) };
    if node.deleting {
        if node.has_finalizer(ORPHAN) {
            orphan_dependents(&gc, &uid, &node).await?;
            return Ok(Action::done());
        }
        if node.has_finalizer(FOREGROUND) {
            return process_deleting_dependents(&gc, &uid, &node).await;
        }
        return Ok(Action::done());
    }
    if node.owners.is_empty() {
        return Ok(Action::done());
    }
    let mut solid = Vec::new();
    let mut dangling = Vec::new();
    let mut waiting = Vec::new();
    for r in &node.owners {
        match owner_state(&gc, &node, r).await? {
            OwnerState::Solid => solid.push(r.uid.clone()),
            OwnerState::Dangling => dangling.push(r.uid.clone()),
            OwnerState::Waiting => waiting.push(r.uid.clone()),
        }
    }
    let api = gc.api_for(&node);
    if !solid.is_empty() {
        if dangling.is_empty() && waiting.is_empty() {
            return Ok(Action::done());
        }
        // Still owned: only drop the references to owners that are gone or going.
        let drop: HashSet<String> = dangling.into_iter().chain(waiting).collect();
        let kept: Vec<&OwnerReference> = node.owners.iter().filter(|r| !drop.contains(&r.uid)).collect();
        let patch = json!({"metadata": {"ownerReferences": kept, "resourceVersion": node.resource_version}});
        match api
            .patch(
                &node.name,
                &PatchParams { field_manager: Some(COMPONENT.into()), ..Default::default() },
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if util::is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(Action::done());
    }
    let has_dependents = gc.graph.read().unwrap().dependents.get(&uid).is_some_and(|d| !d.is_empty());
    let policy = if !waiting.is_empty() && has_dependents {
        PropagationPolicy::Foreground
    } else if node.has_finalizer(ORPHAN) {
        PropagationPolicy::Orphan
    } else if node.has_finalizer(FOREGROUND) {
        PropagationPolicy::Foreground
    } else {
        PropagationPolicy::Background
    };
    tracing::debug!(object = %node.name, ?policy, "garbage collector deletes a dependent without owners");
    let dp = DeleteParams {
        propagation_policy: Some(policy),
        preconditions: Some(Preconditions { uid: Some(uid), resource_version: None }),
        ..Default::default()
    };
    match api.delete(&node.name, &dp).await {
        Ok(_) => Ok(Action::done()),
        Err(e) if util::is_not_found(&e) || util::is_conflict(&e) => Ok(Action::done()),
        Err(e) => Err(e.into()),
    }
}

/// Foreground: delete the dependents; drop the finalizer once no blocking dependent is left.
async fn process_deleting_dependents(gc: &Gc, uid: &str, node: &GcNode) -> anyhow::Result<Action> {
    let (blocking, pending): (Vec<String>, Vec<String>) = {
        let g = gc.graph.read().unwrap();
        let deps: Vec<(&String, &GcNode)> =
            g.dependents.get(uid).into_iter().flatten().filter_map(|d| g.nodes.get(d).map(|n| (d, n))).collect();
        let blocking = deps
            .iter()
            .filter(|(_, n)| n.owners.iter().any(|r| r.uid == uid && r.block_owner_deletion == Some(true)))
            .map(|(d, _)| (*d).clone())
            .collect();
        let pending = deps.iter().filter(|(_, n)| !n.deleting).map(|(d, _)| (*d).clone()).collect();
        (blocking, pending)
    };
    if blocking.is_empty() {
        remove_finalizer(gc, node, FOREGROUND).await?;
        return Ok(Action::done());
    }
    for d in pending {
        gc.queue.add(ObjKey::cluster(d));
    }
    Ok(Action::done())
}

/// Orphan: remove the owner's references from its dependents, then its `orphan` finalizer.
async fn orphan_dependents(gc: &Gc, uid: &str, node: &GcNode) -> anyhow::Result<()> {
    let deps: Vec<GcNode> = {
        let g = gc.graph.read().unwrap();
        g.dependents.get(uid).into_iter().flatten().filter_map(|d| g.nodes.get(d).cloned()).collect()
    };
    for d in deps {
        let api = gc.api_for(&d);
        let Some(current) = api.get_opt(&d.name).await? else { continue };
        let refs: Vec<OwnerReference> = current.owner_references().to_vec();
        if !refs.iter().any(|r| r.uid == uid) {
            continue;
        }
        let kept: Vec<&OwnerReference> = refs.iter().filter(|r| r.uid != uid).collect();
        let patch = json!({"metadata": {"ownerReferences": kept, "resourceVersion": current.resource_version()}});
        match api
            .patch(
                &d.name,
                &PatchParams { field_manager: Some(COMPONENT.into()), ..Default::default() },
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if util::is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    remove_finalizer(gc, node, ORPHAN).await
}

async fn remove_finalizer(gc: &Gc, node: &GcNode, finalizer: &str) -> anyhow::Result<()> {
    let api = gc.api_for(node);
    let Some(current) = api.get_opt(&node.name).await? else { return Ok(()) };
    if !current.finalizers().iter().any(|f| f == finalizer) {
        return Ok(());
    }
    let kept: Vec<&String> = current.finalizers().iter().filter(|f| *f != finalizer).collect();
    let patch = json!({"metadata": {"finalizers": kept, "resourceVersion": current.resource_version()}});
    match api
        .patch(
            &node.name,
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
