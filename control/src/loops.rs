//! The control loops `skiff control` runs beside the API server: the scheduler and the
//! controller manager, under one leader-election Lease so that two `skiff control` processes on
//! one etcd do not both act.
//!
//! Architecture invariant: they reach the API server the way any client does — HTTPS with the
//! admin kubeconfig — never through this process's storage or cache.

use crate::health::Health;
use crate::leader::{LeaderConfig, run_as_leader};
use std::path::Path;
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct LoopsConfig {
    /// `None` leaves scheduling to another scheduler.
    pub scheduler: Option<skiff_scheduler::SchedulerConfig>,
    pub controllers: skiff_controllers::ControllersConfig,
    /// This process's identity in the Lease (`<hostname>_<uuid>` by default).
    pub identity: Option<String>,
}

impl Default for LoopsConfig {
    fn default() -> Self {
        LoopsConfig { scheduler: Some(Default::default()), controllers: Default::default(), identity: None }
    }
}

pub const LEASE_NAME: &str = "skiff-control-plane";

/// A kube-rs client from the admin kubeconfig the API server wrote.
pub async fn client(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(kube::Client::try_from(cfg)?)
}

/// Competes for the Lease and runs the scheduler and controllers while holding it. Health is
/// reported for `componentstatuses` and `/readyz`: the leader's loops are "ok", a standby
/// process says so.
pub async fn run(kubeconfig: &Path, cfg: LoopsConfig, health: Arc<Health>) -> anyhow::Result<()> {
    let client = client(kubeconfig).await?;
    let host =
        std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "skiff".into());
    let identity = cfg.identity.clone().unwrap_or_else(|| format!("{host}_{}", uuid::Uuid::new_v4()));
    health.set("scheduler", true, "standby: waiting for the leader lease");
    health.set("controller-manager", true, "standby: waiting for the leader lease");
    let lease = LeaderConfig::new(LEASE_NAME, &identity);
    let h = health.clone();
    run_as_leader(
        client.clone(),
        lease,
        move || {
            let client = client.clone();
            let sched = cfg.scheduler.clone();
            let ctrl = cfg.controllers.clone();
            async move {
                let scheduler = async {
                    match sched {
                        Some(s) => skiff_scheduler::run(client.clone(), s).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::try_join!(scheduler, skiff_controllers::run(client.clone(), ctrl))?;
                Ok(())
            }
        },
        move |leading| {
            let msg = if leading { "ok" } else { "standby: waiting for the leader lease" };
            h.set("scheduler", true, msg);
            h.set("controller-manager", true, msg);
        },
    )
    .await
}
