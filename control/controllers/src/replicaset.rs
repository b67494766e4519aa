//! The ReplicaSet controller: `spec.replicas` pods matching the selector, owned by the set.

use crate::Ctx;
use crate::replicas::{self, Replicated};
use crate::runtime::{Action, Informer, ObjKey, Queue};
use crate::util::Selector;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use std::sync::Arc;

impl Replicated for ReplicaSet {
    const COMPONENT: &'static str = "replicaset-controller";
    const GROUP: &'static str = "apps";
    const KIND: &'static str = "ReplicaSet";
    fn selector(&self) -> Selector {
        Selector::from_label_selector(self.spec.as_ref().map(|s| &s.selector))
    }
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0)
    }
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().and_then(|s| s.template.as_ref())
    }
    fn status_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.status).unwrap_or_default()
    }
    fn informer(ctx: &Ctx) -> &Arc<Informer<Self>> {
        &ctx.replicasets
    }
}

pub fn register(ctx: &Arc<Ctx>, queue: Queue) {
    replicas::register::<ReplicaSet>(ctx, queue)
}

pub async fn reconcile(key: ObjKey, ctx: Arc<Ctx>) -> anyhow::Result<Action> {
    replicas::reconcile::<ReplicaSet>(key, ctx).await
}
