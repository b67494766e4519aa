//! Objects every cluster has from the start: the four system namespaces and the `kubernetes`
//! Service with its Endpoints, pointing at this API server.

use crate::api::{Shared, rest};
use crate::registry;
use serde_json::{Value, json};

pub const SYSTEM_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

pub async fn ensure(state: &Shared, api_ip: &str, api_port: u16) -> anyhow::Result<()> {
    let ns_kind = registry::find("", "v1", "namespaces").expect("namespaces registered");
    for ns in SYSTEM_NAMESPACES {
        create_if_missing(state, ns_kind, None, json!({"metadata": {"name": ns}})).await?;
    }
    let svc_kind = registry::find("", "v1", "services").expect("services registered");
    let cluster_ip = state.allocator.nth(1).to_string();
    let svc = json!({
        "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"clusterIP": cluster_ip, "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": api_port}], "sessionAffinity": "None", "type": "ClusterIP"},
    });
    create_if_missing(state, svc_kind, Some("default"), svc).await?;
    let ep_kind = registry::find("", "v1", "endpoints").expect("endpoints registered");
    let ep = json!({
        "metadata": {"name": "kubernetes", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": api_ip}], "ports": [{"name": "https", "port": api_port, "protocol": "TCP"}]}],
    });
    upsert(state, ep_kind, Some("default"), "kubernetes", ep).await?;
    let es_kind = registry::find("discovery.k8s.io", "v1", "endpointslices").expect("endpointslices registered");
    let es = json!({
        "metadata": {"name": "kubernetes", "labels": {"kubernetes.io/service-name": "kubernetes", "endpointslice.kubernetes.io/managed-by": "skiff-apiserver"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [api_ip], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": api_port, "protocol": "TCP"}],
    });
    upsert(state, es_kind, Some("default"), "kubernetes", es).await?;
    Ok(())
}

async fn create_if_missing(
    state: &Shared,
    kind: &'static registry::Kind,
    ns: Option<&str>,
    obj: Value,
) -> anyhow::Result<()> {
    match rest::create_object(state, kind, ns, obj, false, Some("skiff-apiserver")).await {
        Ok(_) => Ok(()),
        Err(e) if e.code == 409 => Ok(()),
        Err(e) => anyhow::bail!("bootstrapping {}: {}", kind.plural, e.message),
    }
}

/// The API server's own endpoints follow its address, which can change between restarts.
async fn upsert(
    state: &Shared,
    kind: &'static registry::Kind,
    ns: Option<&str>,
    name: &str,
    obj: Value,
) -> anyhow::Result<()> {
    let key = kind.storage_key(ns, name);
    if let Some(kv) = state.store.get(&key).await? {
        let mut current: Value = serde_json::from_slice(&kv.value)?;
        let mut changed = false;
        for field in ["subsets", "endpoints", "ports"] {
            if obj.get(field).is_some() && current.get(field) != obj.get(field) {
                current[field] = obj[field].clone();
                changed = true;
            }
        }
        if changed {
            state.store.update(&key, serde_json::to_vec(&current)?, kv.mod_revision).await?;
        }
        return Ok(());
    }
    create_if_missing(state, kind, ns, obj).await
}
