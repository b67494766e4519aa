//! The Namespace controller: a namespace being deleted has every namespaced object of every
//! kind deleted (kinds found through the API's discovery); once nothing is left, the
//! `kubernetes` finalizer is removed through `namespaces/{name}/finalize` and the API server
//! removes the namespace.

use crate::Ctx;
use crate::discovery;
use crate::replicas::set_condition;
use crate::runtime::{Action, ObjKey, Queue};
use crate::util;
use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams, PropagationPolicy};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const COMPONENT: &str = "namespace-controller";
pub const FINALIZER: &str = "kubernetes";

pub fn register(ctx: &Arc<Ctx>, queue: Queue) {
    let q = queue.clone();
    ctx.namespaces.on_change(move |old, new| {
        if let Some(n) = new.or(old) {
            q.add(ObjKey::cluster(n.name_any()));
        }
    });
    // A pod finishing its termination is the usual last thing a namespace waits for.
    let namespaces = Arc::downgrade(&ctx.namespaces);
    ctx.pods.on_change(move |old, new| {
        if let (Some(p), None) = (old, new) {
            let ns = p.namespace().unwrap_or_default();
            if namespaces
                .upgrade()
                .and_then(|n| n.get(&ObjKey::cluster(ns.clone())))
                .is_some_and(|n| n.metadata.deletion_timestamp.is_some())
            {
                queue.add(ObjKey::cluster(ns));
            }
        }
    });
}

fn has_finalizer(ns: &Namespace) -> bool {
    ns.spec.as_ref().and_then(|s| s.finalizers.as_ref()).is_some_and(|f| f.iter().any(|x| x == FINALIZER))
}

pub async fn reconcile(key: ObjKey, ctx: Arc<Ctx>) -> anyhow::Result<Action> {
    let Some(ns) = ctx.namespaces.get(&key) else { return Ok(Action::done()) };
    if ns.metadata.deletion_timestamp.is_none() || !has_finalizer(&ns) {
        return Ok(Action::done());
    }
    let name = key.name.clone();
    let resources = ctx.discovery.get(&ctx.client).await?;
    let mut remaining: BTreeMap<String, usize> = BTreeMap::new();
    let mut finalizers: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    for r in resources.iter().filter(|r| r.namespaced && discovery::deletable(r)) {
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &name, &r.ar);
        let items = match api.list(&ListParams::default()).await {
            Ok(l) => l.items,
            Err(e) if matches!(util::api_code(&e), Some(404) | Some(405)) => continue,
            Err(e) => {
                failures.push(format!("{}: {e}", r.ar.plural));
                continue;
            }
        };
        if items.is_empty() {
            continue;
        }
        let group = if r.ar.group.is_empty() { r.ar.plural.clone() } else { format!("{}.{}", r.ar.plural, r.ar.group) };
        for obj in &items {
            for f in obj.metadata.finalizers.iter().flatten() {
                *finalizers.entry(f.clone()).or_default() += 1;
            }
            if obj.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let dp = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
            match api.delete(&obj.name_any(), &dp).await {
                Ok(_) => {}
                Err(e) if util::is_not_found(&e) || util::is_conflict(&e) => {}
                Err(e) => failures.push(format!("{group} {}: {e}", obj.name_any())),
            }
        }
        // What is left after this round (graceful pods, finalizers).
        match api.list(&ListParams::default()).await {
            Ok(l) if !l.items.is_empty() => {
                remaining.insert(group, l.items.len());
            }
            Ok(_) => {}
            Err(e) => failures.push(format!("{}: {e}", r.ar.plural)),
        }
    }
    write_conditions(&ctx, &ns, &remaining, &finalizers, &failures).await?;
    if !remaining.is_empty() || !failures.is_empty() {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    // Nothing left: remove our finalizer.
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    let mut v = serde_json::to_value(ns.as_ref())?;
    let kept: Vec<Value> = v["spec"]["finalizers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|f| f != FINALIZER)
        .collect();
    v["spec"]["finalizers"] = json!(kept);
    let pp = PostParams { field_manager: Some(COMPONENT.into()), ..Default::default() };
    match api.replace_subresource("finalize", &name, &pp, &v).await {
        Ok(_) => Ok(Action::done()),
        Err(e) if util::is_not_found(&e) => Ok(Action::done()),
        Err(e) => Err(e.into()),
    }
}

/// The conditions Kubernetes' namespace controller reports while it deletes content.
async fn write_conditions(
    ctx: &Ctx,
    ns: &Namespace,
    remaining: &BTreeMap<String, usize>,
    finalizers: &BTreeMap<String, usize>,
    failures: &[String],
) -> anyhow::Result<()> {
    let status = serde_json::to_value(&ns.status)?;
    let mut conditions: Vec<Value> = status["conditions"].as_array().cloned().unwrap_or_default();
    set_condition(
        &mut conditions,
        "NamespaceDeletionDiscoveryFailure",
        Some(("False", "ResourcesDiscovered", "All resources successfully discovered")),
    );
    set_condition(
        &mut conditions,
        "NamespaceDeletionGroupVersionParsingFailure",
        Some(("False", "ParsedGroupVersions", "All legacy kube types successfully parsed")),
    );
    let content_failure = if failures.is_empty() {
        (
            "False".to_string(),
            "ContentDeleted",
            "All content successfully deleted, may be waiting on finalization".to_string(),
        )
    } else {
        (
            "True".to_string(),
            "ContentDeletionFailed",
            format!("Failed to delete all resource types, {} remaining: {}", failures.len(), failures.join(", ")),
        )
    };
    set_condition(
        &mut conditions,
        "NamespaceDeletionContentFailure",
        Some((&content_failure.0, content_failure.1, &content_failure.2)),
    );
    if remaining.is_empty() {
        set_condition(
            &mut conditions,
            "NamespaceContentRemaining",
            Some(("False", "ContentRemoved", "All content successfully removed")),
        );
    } else {
        let msg = format!(
            "Some resources are remaining: {}",
            remaining.iter().map(|(g, n)| format!("{g} has {n} resource instances")).collect::<Vec<_>>().join(", ")
        );
        set_condition(&mut conditions, "NamespaceContentRemaining", Some(("True", "SomeResourcesRemain", &msg)));
    }
    if finalizers.is_empty() {
        set_condition(
            &mut conditions,
            "NamespaceFinalizersRemaining",
            Some(("False", "ContentHasNoFinalizers", "All content-preserving finalizers finished")),
        );
    } else {
        let msg = format!(
            "Some content in the namespace has finalizers remaining: {}",
            finalizers.iter().map(|(f, n)| format!("{f} in {n} resource instances")).collect::<Vec<_>>().join(", ")
        );
        set_condition(&mut conditions, "NamespaceFinalizersRemaining", Some(("True", "SomeFinalizersRemain", &msg)));
    }
    // lastTransitionTime only moves with the status, so an unchanged round writes nothing.
    let mut new_status = status.clone();
    if !new_status.is_object() {
        new_status = json!({});
    }
    new_status["conditions"] = json!(conditions);
    if new_status == status {
        return Ok(());
    }
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    crate::replicas::write_status(api, ns, new_status, COMPONENT).await
}
