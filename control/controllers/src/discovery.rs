//! The API's resources, from its discovery documents (cached briefly).

use kube::Client;
use kube::api::ApiResource;
use kube::discovery::{ApiCapabilities, Discovery, Scope, verbs};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

#[derive(Clone)]
pub struct Resource {
    pub ar: ApiResource,
    pub namespaced: bool,
    pub caps: ApiCapabilities,
}

impl Resource {
    pub fn can(&self, verb: &str) -> bool {
        self.caps.supports_operation(verb)
    }
}

/// Every served resource in its group's preferred version.
pub async fn discover(client: &Client) -> anyhow::Result<Vec<Resource>> {
    let d = match Discovery::new(client.clone()).run_aggregated().await {
        Ok(d) => d,
        Err(_) => Discovery::new(client.clone()).run().await?,
    };
    let mut out = Vec::new();
    for g in d.groups() {
        for (ar, caps) in g.recommended_resources() {
            out.push(Resource { namespaced: caps.scope == Scope::Namespaced, ar, caps });
        }
    }
    Ok(out)
}

/// A discovery result reused for `ttl`.
pub struct Cached {
    ttl: Duration,
    value: Mutex<Option<(Instant, Arc<Vec<Resource>>)>>,
}

impl Cached {
    pub fn new(ttl: Duration) -> Self {
        Cached { ttl, value: Mutex::new(None) }
    }
    pub async fn get(&self, client: &Client) -> anyhow::Result<Arc<Vec<Resource>>> {
        let mut v = self.value.lock().await;
        if let Some((at, r)) = v.as_ref() {
            if at.elapsed() < self.ttl {
                return Ok(r.clone());
            }
        }
        let r = Arc::new(discover(client).await?);
        *v = Some((Instant::now(), r.clone()));
        Ok(r)
    }
}

pub fn deletable(r: &Resource) -> bool {
    r.can(verbs::LIST) && r.can(verbs::DELETE)
}
