//! The ServiceAccount controller: every active namespace has a `default` ServiceAccount.

use crate::Ctx;
use crate::runtime::{Action, ObjKey, Queue};
use crate::util;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use std::sync::Arc;

const COMPONENT: &str = "service-account-controller";
pub const DEFAULT: &str = "default";

pub fn register(ctx: &Arc<Ctx>, queue: Queue) {
    let q = queue.clone();
    ctx.namespaces.on_change(move |old, new| {
        if let Some(n) = new.or(old) {
            q.add(ObjKey::cluster(n.name_any()));
        }
    });
    ctx.serviceaccounts.on_change(move |old, new| {
        if let (Some(sa), None) = (old, new) {
            if sa.name_any() == DEFAULT {
                queue.add(ObjKey::cluster(sa.namespace().unwrap_or_default()));
            }
        }
    });
}

pub async fn reconcile(key: ObjKey, ctx: Arc<Ctx>) -> anyhow::Result<Action> {
    let Some(ns) = ctx.namespaces.get(&key) else { return Ok(Action::done()) };
    if ns.metadata.deletion_timestamp.is_some() || ctx.serviceaccounts.get_named(&key.name, DEFAULT).is_some() {
        return Ok(Action::done());
    }
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &key.name);
    let sa = ServiceAccount {
        metadata: ObjectMeta { name: Some(DEFAULT.into()), ..Default::default() },
        ..Default::default()
    };
    match api.create(&PostParams { field_manager: Some(COMPONENT.into()), ..Default::default() }, &sa).await {
        Ok(_) => {}
        Err(e) if util::is_conflict(&e) || util::is_namespace_gone(&e) => {}
        Err(e) => return Err(e.into()),
    }
    ctx.serviceaccounts
        .wait_until(std::time::Duration::from_secs(2), |s| s.get_named(&key.name, DEFAULT).is_some())
        .await;
    Ok(Action::done())
}
