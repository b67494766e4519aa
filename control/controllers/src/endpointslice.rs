//! TODO

use crate::runtime::{Action, ObjKey, Queue};
use crate::Ctx;
use std::sync::Arc;

pub fn register(_ctx: &Arc<Ctx>, _queue: Queue) {}

pub async fn reconcile(_key: ObjKey, _ctx: Arc<Ctx>) -> anyhow::Result<Action> {
    Ok(Action::done())
}
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
