//! Two `skiff control` processes on one etcd: one Lease, one acting scheduler and controller
//! manager; killing the holder hands over.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};
use serde_json::json;
use skiff_tests::Control;
use std::time::{Duration, Instant};

async fn holder(api: &Api<Lease>) -> Option<String> {
    api.get_opt("skiff-control-plane").await.ok().flatten()?.spec?.holder_identity
}

async fn wait_scheduled(pods: &Api<Pod>, name: &str, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(p) = pods.get(name).await {
            if let Some(n) = p.spec.and_then(|s| s.node_name).filter(|n| !n.is_empty()) {
                return Some(n);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(
        json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "nginx:1.7.9"}]}}),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_holder_acts_and_hands_over_when_killed() {
    let etcd =
        skiff_storage::conformance::EtcdProcess::start().await.expect("etcd (cargo xtask setup installs etcd-server)");
    let url = etcd.endpoints().join(",");
    let start = |id: &'static str| {
        let url = url.clone();
        move || Control::start_with(&["--store", "etcd", "--etcd-endpoints", &url, "--leader-identity", id])
    };
    let mut a = tokio::task::block_in_place(start("control-a")).expect("first control plane");
    let mut b = tokio::task::block_in_place(start("control-b")).expect("second control plane");
    let client = a.client().await.unwrap();
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");

    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        if let Some(h) = holder(&leases).await {
            break h;
        }
        assert!(Instant::now() < deadline, "no control plane took the lease");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(first == "control-a" || first == "control-b", "holder {first}");

    // A schedulable node (no agent: status written directly).
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "node-1"}})).unwrap())
        .await
        .unwrap();
    // A merge patch: node IPAM writes the node's podCIDR concurrently.
    let status = json!({"status": {
        "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
        "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test"}]
    }});
    nodes.patch_status("node-1", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&status)).await.unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod("before")).await.unwrap();
    assert_eq!(
        wait_scheduled(&pods, "before", Duration::from_secs(15)).await.as_deref(),
        Some("node-1"),
        "the leader schedules"
    );

    // Kill the holder; the other takes the lease after it expires (15 s) and schedules.
    let survivor_client = if first == "control-a" {
        a.kill();
        b.client().await.unwrap()
    } else {
        b.kill();
        a.client().await.unwrap()
    };
    let leases: Api<Lease> = Api::namespaced(survivor_client.clone(), "kube-system");
    let pods: Api<Pod> = Api::namespaced(survivor_client, "default");
    pods.create(&PostParams::default(), &pod("after")).await.unwrap();
    assert_eq!(
        wait_scheduled(&pods, "after", Duration::from_secs(30)).await.as_deref(),
        Some("node-1"),
        "the survivor took over"
    );
    let now = holder(&leases).await.expect("a holder");
    assert_ne!(now, first, "the lease moved to the surviving control plane");
}
