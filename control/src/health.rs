//! Component health: `/readyz` checks and the read-only `componentstatuses` resource.
//!
//! The scheduler and controller manager register here once they exist (the scheduler and
//! controllers issue); until then they are reported as not running rather than pretended healthy.

use crate::api::Shared;
use crate::status::{ApiError, ApiResult};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use skiff_storage::Store;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct Health {
    /// name → (healthy, message) for components living in this process.
    components: Mutex<Vec<(String, bool, String)>>,
    store: Mutex<Option<Arc<dyn Store>>>,
}

impl Health {
    pub fn new(store: Arc<dyn Store>) -> Self {
        let h = Health::default();
        *h.store.lock().unwrap_or_else(|e| e.into_inner()) = Some(store);
        h
    }

    pub fn set(&self, name: &str, healthy: bool, message: &str) {
        let mut c = self.components.lock().unwrap_or_else(|e| e.into_inner());
        c.retain(|(n, _, _)| n != name);
        c.push((name.to_string(), healthy, message.to_string()));
    }

    async fn store_ok(&self) -> Result<(), String> {
        let store = self.store.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match store {
            Some(s) => match tokio::time::timeout(std::time::Duration::from_secs(2), s.current_revision()).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timed out".into()),
            },
            None => Err("no store".into()),
        }
    }

    /// Statuses for `componentstatuses`: the store, then in-process components, then the ones
    /// Kubernetes always lists.
    pub async fn components(&self) -> Vec<(String, bool, String)> {
        let mut out = vec![match self.store_ok().await {
            Ok(()) => ("etcd-0".to_string(), true, "ok".to_string()),
            Err(e) => ("etcd-0".to_string(), false, e),
        }];
        let registered = self.components.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for name in ["scheduler", "controller-manager"] {
            match registered.iter().find(|(n, _, _)| n == name) {
                Some(c) => out.push(c.clone()),
                None => out.push((name.to_string(), false, "not running: not part of this build yet".to_string())),
            }
        }
        out
    }

    pub async fn readyz(&self, verbose: bool) -> Response {
        let store = self.store_ok().await;
        let mut lines = vec![format!("[{}]ping ok", "+")];
        lines.push(match &store {
            Ok(()) => "[+]etcd ok".to_string(),
            Err(e) => format!("[-]etcd failed: {e}"),
        });
        // In-process control loops: a standby (not leading) loop is healthy, a stopped one not.
        let registered = self.components.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut loops_ok = true;
        for (name, healthy, message) in &registered {
            if *healthy {
                lines.push(format!("[+]{name} ok"));
            } else {
                loops_ok = false;
                lines.push(format!("[-]{name} failed: {message}"));
            }
        }
        let ok = store.is_ok() && loops_ok;
        if verbose || !ok {
            lines.push(if ok { "readyz check passed".into() } else { "readyz check failed".into() });
            let code = if ok { StatusCode::OK } else { StatusCode::INTERNAL_SERVER_ERROR };
            (code, lines.join("\n") + "\n").into_response()
        } else {
            (StatusCode::OK, "ok").into_response()
        }
    }
}

fn component_status(name: &str, healthy: bool, message: &str) -> Value {
    let mut cond = json!({"type": "Healthy", "status": if healthy { "True" } else { "False" }});
    if healthy {
        cond["message"] = json!(message);
    } else {
        cond["error"] = json!(message);
    }
    json!({"kind": "ComponentStatus", "apiVersion": "v1", "metadata": {"name": name}, "conditions": [cond]})
}

pub async fn component_statuses(state: &Shared, name: Option<&str>, accept: &str) -> ApiResult<Response> {
    let kind = crate::registry::find("", "v1", "componentstatuses")
        .ok_or_else(|| ApiError::internal("componentstatuses missing"))?;
    let items: Vec<Value> =
        state.health.components().await.iter().map(|(n, h, m)| component_status(n, *h, m)).collect();
    let body = match name {
        Some(n) => items
            .into_iter()
            .find(|i| i["metadata"]["name"] == n)
            .ok_or_else(|| ApiError::not_found("", "componentstatuses", n))?,
        None if crate::api::negotiate_output_is_table(accept) => {
            let t = skiff_apimachinery::table::table(
                kind.plural,
                &items,
                chrono::Utc::now(),
                skiff_apimachinery::table::IncludeObject::Metadata,
            );
            return Ok(deprecated(
                (StatusCode::OK, [("content-type", "application/json")], t.to_string()).into_response(),
            ));
        }
        None => json!({"kind": "ComponentStatusList", "apiVersion": "v1", "metadata": {}, "items": items}),
    };
    Ok(deprecated((StatusCode::OK, [("content-type", "application/json")], body.to_string()).into_response()))
}

/// Kubernetes deprecated ComponentStatus in 1.19 and says so on every response.
fn deprecated(mut r: Response) -> Response {
    r.headers_mut().insert(
        "warning",
        axum::http::HeaderValue::from_static("299 - \"v1 ComponentStatus is deprecated in v1.19+\""),
    );
    r
}
