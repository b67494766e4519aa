//! Leader election through a `coordination.k8s.io/v1` Lease, as Kubernetes' client-go does it:
//! whoever holds an unexpired Lease acts; the others wait and take over once it expires.
//!
//! Used so that two `skiff control` processes on one etcd run one scheduler and one set of
//! controllers between them. The Lease is read and written through the API like any client's.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use std::future::Future;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct LeaderConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a Lease is valid without renewal (client-go default 15 s).
    pub lease_duration: Duration,
    /// How often the leader renews and candidates retry (client-go default 2 s).
    pub retry_period: Duration,
}

impl LeaderConfig {
    pub fn new(name: &str, identity: &str) -> Self {
        LeaderConfig {
            namespace: "kube-system".into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// The outcome of one attempt to acquire or renew.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    Leading,
    Following { holder: String },
}

/// One acquire-or-renew step. Conflicts (another candidate wrote first) count as following.
pub async fn try_acquire(api: &Api<Lease>, cfg: &LeaderConfig) -> anyhow::Result<Attempt> {
    let now = MicroTime(Timestamp::now());
    let secs = cfg.lease_duration.as_secs() as i32;
    match api.get_opt(&cfg.name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(cfg.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Leading),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Following { holder: String::new() }),
                Err(e) => Err(e.into()),
            }
        }
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(Default::default);
            let holder = spec.holder_identity.clone().unwrap_or_default();
            let duration = SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(secs) as i64);
            let expired = spec
                .renew_time
                .as_ref()
                .is_none_or(|t| t.0.checked_add(duration).is_ok_and(|until| until < Timestamp::now()));
            if holder != cfg.identity && !holder.is_empty() && !expired {
                return Ok(Attempt::Following { holder });
            }
            if holder != cfg.identity {
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                spec.acquire_time = Some(now.clone());
                spec.holder_identity = Some(cfg.identity.clone());
            }
            spec.lease_duration_seconds = Some(secs);
            spec.renew_time = Some(now);
            // The resourceVersion from the read makes this a compare-and-swap.
            match api.replace(&cfg.name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Leading),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Following { holder }),
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// Runs `work` while this process holds the Lease; stops it (drops the future) as soon as
/// renewal fails for a lease duration, then competes again. Never returns unless `work` does.
pub async fn run_as_leader<F, Fut>(
    client: kube::Client,
    cfg: LeaderConfig,
    mut work: F,
    on_change: impl Fn(bool),
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    loop {
        // Follow until we acquire.
        loop {
            match try_acquire(&api, &cfg).await {
                Ok(Attempt::Leading) => break,
                Ok(Attempt::Following { holder }) => tracing::debug!(lease = %cfg.name, %holder, "following"),
                Err(e) => tracing::warn!(lease = %cfg.name, error = %e, "leader election attempt failed"),
            }
            tokio::time::sleep(cfg.retry_period).await;
        }
        tracing::info!(lease = %cfg.name, identity = %cfg.identity, "became leader");
        on_change(true);
        let task = tokio::spawn(work());
        let mut last_renewal = tokio::time::Instant::now();
        let lost = loop {
            tokio::time::sleep(cfg.retry_period).await;
            if task.is_finished() {
                break false;
            }
            match try_acquire(&api, &cfg).await {
                Ok(Attempt::Leading) => last_renewal = tokio::time::Instant::now(),
                Ok(Attempt::Following { holder }) => {
                    tracing::warn!(lease = %cfg.name, %holder, "lost the lease");
                    break true;
                }
                Err(e) => {
                    tracing::warn!(lease = %cfg.name, error = %e, "renewing the lease failed");
                    // Stop acting before another candidate may have taken over.
                    if last_renewal.elapsed() >= cfg.lease_duration - cfg.retry_period {
                        break true;
                    }
                }
            }
        };
        task.abort();
        on_change(false);
        if !lost {
            return match task.await {
                Ok(r) => r,
                Err(e) if e.is_cancelled() => Ok(()),
                Err(e) => Err(anyhow::anyhow!("leader task panicked: {e}")),
            };
        }
    }
}
