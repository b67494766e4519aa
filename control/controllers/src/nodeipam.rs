//! Node IPAM: every Node gets a free `/node_cidr_mask_size` range of the cluster CIDR as its
//! `spec.podCIDR` / `spec.podCIDRs`. The ranges in use are read from the nodes themselves.

use crate::Ctx;
use crate::runtime::{Action, ObjKey, Queue};
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

const COMPONENT: &str = "node-ipam-controller";

pub fn register(ctx: &Arc<Ctx>, queue: Queue) {
    ctx.nodes.on_change(move |_old, new| {
        if let Some(n) = new.filter(|n| pod_cidr(n).is_none()) {
            queue.add(ObjKey::cluster(n.name_any()));
        }
    });
}

fn pod_cidr(n: &Node) -> Option<&str> {
    n.spec.as_ref()?.pod_cidr.as_deref().filter(|c| !c.is_empty())
}

/// Parses `a.b.c.d/p`.
pub fn parse_cidr(s: &str) -> anyhow::Result<(u32, u8)> {
    let (ip, prefix) = s.split_once('/').ok_or_else(|| anyhow::anyhow!("invalid CIDR {s:?}"))?;
    let ip: Ipv4Addr = ip.parse()?;
    let prefix: u8 = prefix.parse()?;
    anyhow::ensure!(prefix <= 32, "invalid CIDR {s:?}");
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
    Ok((u32::from(ip) & mask, prefix))
}

/// The `index`th subnet of size `mask` in `cluster`.
pub fn subnet(cluster: (u32, u8), mask: u8, index: u32) -> String {
    let base = cluster.0 + (index << (32 - mask));
    format!("{}/{mask}", Ipv4Addr::from(base))
}

pub async fn reconcile(key: ObjKey, ctx: Arc<Ctx>) -> anyhow::Result<Action> {
    let Some(node) = ctx.nodes.get(&key) else { return Ok(Action::done()) };
    if pod_cidr(&node).is_some() {
        ctx.ipam_pending.lock().unwrap().retain(|_, (n, _)| *n != key.name);
        return Ok(Action::done());
    }
    let cluster = parse_cidr(&ctx.config.cluster_cidr)?;
    let mask = ctx.config.node_cidr_mask_size;
    anyhow::ensure!(
        mask >= cluster.1 && mask <= 32,
        "node CIDR mask /{mask} does not fit in {}",
        ctx.config.cluster_cidr
    );
    let count: u64 = 1u64 << (mask - cluster.1);
    // Choose and reserve under the lock, so that concurrent reconciles never pick the same
    // range before the node cache shows it.
    let cidr = {
        let mut pending = ctx.ipam_pending.lock().unwrap();
        pending.retain(|_, (_, at)| at.elapsed() < Duration::from_secs(60));
        let mut used: HashSet<String> =
            ctx.nodes.list().iter().filter_map(|n| pod_cidr(n).map(str::to_string)).collect();
        used.extend(pending.keys().cloned());
        if let Some((c, _)) = pending.iter().find(|(_, (n, _))| *n == key.name) {
            Some(c.clone())
        } else {
            let free = (0..count).map(|i| subnet(cluster, mask, i as u32)).find(|c| !used.contains(c));
            if let Some(c) = &free {
                pending.insert(c.clone(), (key.name.clone(), tokio::time::Instant::now()));
            }
            free
        }
    };
    let Some(cidr) = cidr else {
        ctx.recorder.warning(
            COMPONENT,
            node.as_ref(),
            "CIDRNotAvailable",
            format!("Node {} status is now: CIDRNotAvailable", key.name),
        );
        return Ok(Action::requeue(Duration::from_secs(30)));
    };
    let api: Api<Node> = Api::all(ctx.client.clone());
    let patch = json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}});
    api.patch(
        &key.name,
        &PatchParams { field_manager: Some(COMPONENT.into()), ..Default::default() },
        &Patch::Merge(&patch),
    )
    .await?;
    ctx.nodes.wait_until(Duration::from_secs(2), |s| s.get(&key).is_none_or(|n| pod_cidr(&n).is_some())).await;
    Ok(Action::done())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets() {
        let c = parse_cidr("10.244.0.0/16").unwrap();
        assert_eq!(subnet(c, 24, 0), "10.244.0.0/24");
        assert_eq!(subnet(c, 24, 255), "10.244.255.0/24");
    }
}
