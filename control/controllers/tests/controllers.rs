//! The controllers against a real `skiff control`, with simulated nodes and a test kubelet.

mod common;

use common::*;
use k8s_openapi::api::core::v1::{Event, Pod, ReplicationController};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::json;
use std::time::Duration;

const T: Duration = Duration::from_secs(15);

async fn rc_pods(env: &Env, ns: &str, sel: &str, n: usize) -> Vec<Pod> {
    eventually(T, &format!("{n} live pods for {sel}"), || async { Some(env.live_pods(ns, sel).await).filter(|p| p.len() == n) }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_controller_keeps_replicas() {
    let env = Env::start(&["n1", "n2", "n3"], |_| {}).await.unwrap();
    let rc_yaml = std::fs::read_to_string(skiff_tests::seed("frontend-controller.yaml")).unwrap();
    env.apply(&rc_yaml);
    let pods = rc_pods(&env, "default", "name=frontend", 3).await;
    let rcs: Api<ReplicationController> = Api::namespaced(env.client.clone(), "default");
    let rc = rcs.get("frontend").await.unwrap();
    for p in &pods {
        assert!(p.name_any().starts_with("frontend-"), "{}", p.name_any());
        assert_eq!(p.metadata.generate_name.as_deref(), Some("frontend-"));
        let r = &p.owner_references()[0];
        assert_eq!((r.kind.as_str(), r.name.as_str(), r.uid.as_str()), ("ReplicationController", "frontend", rc.uid().unwrap().as_str()));
        assert_eq!((r.controller, r.block_owner_deletion), (Some(true), Some(true)));
    }
    // Status follows the kubelet.
    eventually(T, "rc status 3 ready", || async {
        let s = rcs.get("frontend").await.ok()?.status?;
        (s.replicas == 3 && s.ready_replicas == Some(3) && s.available_replicas == Some(3) && s.fully_labeled_replicas == Some(3) && s.observed_generation == Some(1)).then_some(())
    })
    .await;
    // Events as Kubernetes writes them.
    let events: Api<Event> = Api::namespaced(env.client.clone(), "default");
    eventually(T, "SuccessfulCreate events", || async {
        let evs = events.list(&ListParams::default()).await.ok()?;
        let created: Vec<_> = evs.items.iter().filter(|e| e.reason.as_deref() == Some("SuccessfulCreate") && e.involved_object.name.as_deref() == Some("frontend")).collect();
        (created.len() == 3
            && created.iter().all(|e| e.message.as_deref().is_some_and(|m| m.starts_with("Created pod: frontend-")) && e.source.as_ref().and_then(|s| s.component.as_deref()) == Some("replication-controller")))
        .then_some(())
    })
    .await;

    // A deleted pod is replaced.
    let victim = pods[0].name_any();
    env.pods("default").delete(&victim, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await.unwrap();
    let after = rc_pods(&env, "default", "name=frontend", 3).await;
    assert!(after.iter().all(|p| p.name_any() != victim));

    // Scale up and down with kubectl.
    env.kubectl_ok(&["scale", "rc", "frontend", "--replicas=5"]);
    rc_pods(&env, "default", "name=frontend", 5).await;
    env.kubectl_ok(&["scale", "rc", "frontend", "--replicas=2"]);
    rc_pods(&env, "default", "name=frontend", 2).await;
    eventually(T, "SuccessfulDelete events", || async {
        let evs = events.list(&ListParams::default()).await.ok()?;
        let n = evs.items.iter().filter(|e| e.reason.as_deref() == Some("SuccessfulDelete") && e.message.as_deref().is_some_and(|m| m.starts_with("Deleted pod: frontend-"))).count();
        (n >= 3).then_some(())
    })
    .await;
    eventually(T, "rc status 2", || async { (rcs.get("frontend").await.ok()?.status?.replicas == 2).then_some(()) }).await;

    // An orphan that matches is adopted (and the surplus removed); a pod relabelled away is
    // released and replaced.
    let orphan: Pod = serde_json::from_value(json!({
        "metadata": {"name": "stray", "labels": {"name": "frontend"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }))
    .unwrap();
    env.pods("default").create(&PostParams::default(), &orphan).await.unwrap();
    eventually(T, "orphan adopted or removed", || async {
        match env.pods("default").get_opt("stray").await.ok()? {
            None => Some(()),
            Some(p) if p.metadata.deletion_timestamp.is_some() => Some(()),
            Some(p) => p.owner_references().iter().any(|r| r.name == "frontend" && r.controller == Some(true)).then_some(()),
        }
    })
    .await;
    rc_pods(&env, "default", "name=frontend", 2).await;
    let owned = env.live_pods("default", "name=frontend").await;
    let relabelled = owned[0].name_any();
    env.pods("default").patch(&relabelled, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"name": "elsewhere"}}}))).await.unwrap();
    eventually(T, "relabelled pod released", || async {
        let p = env.pods("default").get(&relabelled).await.ok()?;
        p.owner_references().is_empty().then_some(())
    })
    .await;
    rc_pods(&env, "default", "name=frontend", 2).await;
}
