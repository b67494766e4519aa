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

async fn endpoints_of(env: &Env, ns: &str, name: &str) -> Option<k8s_openapi::api::core::v1::Endpoints> {
    Api::<k8s_openapi::api::core::v1::Endpoints>::namespaced(env.client.clone(), ns).get_opt(name).await.ok().flatten()
}

async fn slices_of(env: &Env, ns: &str, svc: &str) -> Vec<k8s_openapi::api::discovery::v1::EndpointSlice> {
    let api: Api<k8s_openapi::api::discovery::v1::EndpointSlice> = Api::namespaced(env.client.clone(), ns);
    api.list(&ListParams::default().labels(&format!("kubernetes.io/service-name={svc}"))).await.map(|l| l.items).unwrap_or_default()
}

/// (ready IPs, not-ready IPs) of an Endpoints object.
fn ep_ips(ep: &k8s_openapi::api::core::v1::Endpoints) -> (Vec<String>, Vec<String>) {
    let mut r = Vec::new();
    let mut n = Vec::new();
    for s in ep.subsets.iter().flatten() {
        r.extend(s.addresses.iter().flatten().map(|a| a.ip.clone()));
        n.extend(s.not_ready_addresses.iter().flatten().map(|a| a.ip.clone()));
    }
    r.sort();
    n.sort();
    (r, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_follow_readiness() {
    let env = Env::start(&["n1", "n2"], |_| {}).await.unwrap();
    env.apply(&format!(
        r#"
apiVersion: v1
kind: ReplicationController
metadata: {{name: web}}
spec:
  replicas: 3
  selector: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
      annotations: {{"{NOT_READY}": "true"}}
    spec:
      containers:
      - name: c
        image: busybox
        ports: [{{name: http, containerPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web, labels: {{tier: front}}}}
spec:
  selector: {{app: web}}
  ports: [{{name: web, port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-all}}
spec:
  selector: {{app: web}}
  publishNotReadyAddresses: true
  ports: [{{port: 80, targetPort: 8080}}]
"#
    ));
    // Three running pods with IPs, none ready.
    let pods = eventually(T, "3 running pods", || async {
        let p = env.live_pods("default", "app=web").await;
        (p.len() == 3 && p.iter().all(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some())).then_some(p)
    })
    .await;
    let mut ips: Vec<String> = pods.iter().map(|p| p.status.as_ref().unwrap().pod_ip.clone().unwrap()).collect();
    ips.sort();
    let ep = eventually(T, "endpoints with 3 not-ready addresses", || async { endpoints_of(&env, "default", "web").await.filter(|e| ep_ips(e).1.len() == 3) }).await;
    assert_eq!(ep_ips(&ep), (vec![], ips.clone()));
    let subset = &ep.subsets.as_ref().unwrap()[0];
    let port = &subset.ports.as_ref().unwrap()[0];
    assert_eq!((port.name.as_deref(), port.port, port.protocol.as_deref()), (Some("web"), 8080, Some("TCP")), "named targetPort resolved");
    let addr = &subset.not_ready_addresses.as_ref().unwrap()[0];
    assert!(addr.node_name.is_some());
    assert_eq!(addr.target_ref.as_ref().unwrap().kind.as_deref(), Some("Pod"));
    assert_eq!(ep.labels().get("tier").map(String::as_str), Some("front"));
    // publishNotReadyAddresses: all addresses ready.
    let all = eventually(T, "web-all endpoints", || async { endpoints_of(&env, "default", "web-all").await.filter(|e| ep_ips(e).0.len() == 3) }).await;
    assert_eq!(ep_ips(&all).0, ips);
    // The slice.
    let slices = eventually(T, "one slice with 3 endpoints", || async { Some(slices_of(&env, "default", "web").await).filter(|s| s.len() == 1 && s[0].endpoints.len() == 3) }).await;
    let s = &slices[0];
    assert_eq!(s.labels().get("endpointslice.kubernetes.io/managed-by").map(String::as_str), Some("endpointslice-controller.k8s.io"));
    assert_eq!(s.address_type, "IPv4");
    assert!(s.metadata.generate_name.as_deref() == Some("web-"));
    let r = &s.owner_references()[0];
    assert_eq!((r.kind.as_str(), r.name.as_str(), r.controller), ("Service", "web", Some(true)));
    let p = &s.ports.as_ref().unwrap()[0];
    assert_eq!((p.name.as_deref(), p.port, p.protocol.as_deref()), (Some("web"), Some(8080), Some("TCP")));
    for e in &s.endpoints {
        let c = e.conditions.as_ref().unwrap();
        assert_eq!((c.ready, c.serving, c.terminating), (Some(false), Some(false), Some(false)));
        assert!(e.node_name.is_some() && e.target_ref.is_some());
    }

    // Readiness changes show up within a second, one pod after another.
    for (i, pod) in pods.iter().enumerate() {
        let ip = pod.status.as_ref().unwrap().pod_ip.clone().unwrap();
        let started = std::time::Instant::now();
        set_ready(&env.client, "default", &pod.name_any(), true).await.unwrap();
        eventually(Duration::from_secs(1), "endpoints to follow readiness within 1 s", || async {
            let ep = endpoints_of(&env, "default", "web").await?;
            let sl = slices_of(&env, "default", "web").await;
            let slice_ready = sl.iter().flat_map(|s| s.endpoints.iter()).filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true)).count();
            (ep_ips(&ep).0.contains(&ip) && ep_ips(&ep).0.len() == i + 1 && slice_ready == i + 1).then_some(())
        })
        .await;
        eprintln!("readiness of pod {i} reflected after {:?}", started.elapsed());
    }
    // And back.
    set_ready(&env.client, "default", &pods[0].name_any(), false).await.unwrap();
    eventually(Duration::from_secs(1), "not-ready pod to move to notReadyAddresses within 1 s", || async {
        let ep = endpoints_of(&env, "default", "web").await?;
        (ep_ips(&ep).0.len() == 2 && ep_ips(&ep).1.len() == 1).then_some(())
    })
    .await;

    // A terminating pod (its node no longer finishes the deletion): serving, terminating, not
    // ready in the slice; gone from Endpoints.
    let victim = pods[1].clone();
    let node = victim.spec.as_ref().unwrap().node_name.clone().unwrap();
    env.kubelet().stop_node(&node);
    env.pods("default").delete(&victim.name_any(), &DeleteParams::default()).await.unwrap();
    let vip = victim.status.as_ref().unwrap().pod_ip.clone().unwrap();
    eventually(T, "terminating endpoint in the slice", || async {
        let sl = slices_of(&env, "default", "web").await;
        let e = sl.iter().flat_map(|s| s.endpoints.iter()).find(|e| e.addresses[0] == vip)?;
        let c = e.conditions.as_ref()?;
        (c.ready == Some(false) && c.serving == Some(true) && c.terminating == Some(true)).then_some(())
    })
    .await;
    let ep = endpoints_of(&env, "default", "web").await.unwrap();
    let (r, n) = ep_ips(&ep);
    assert!(!r.contains(&vip) && !n.contains(&vip), "terminating pod left Endpoints");

    // Deleting the service removes its Endpoints.
    Api::<k8s_openapi::api::core::v1::Service>::namespaced(env.client.clone(), "default").delete("web", &DeleteParams::default()).await.unwrap();
    eventually(T, "endpoints removed with the service", || async { endpoints_of(&env, "default", "web").await.is_none().then_some(()) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_deletion_removes_everything() {
    let env = Env::start(&["n1"], |_| {}).await.unwrap();
    env.kubectl_ok(&["create", "namespace", "doomed"]);
    // The ServiceAccount controller gives it a default account.
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(env.client.clone(), "doomed");
    eventually(T, "default service account", || async { sas.get_opt("default").await.ok().flatten() }).await;
    env.kubectl_stdin_ok(
        &["create", "-n", "doomed", "-f", "-"],
        r#"
apiVersion: v1
kind: ReplicationController
metadata: {name: app}
spec:
  replicas: 2
  selector: {app: a}
  template:
    metadata: {labels: {app: a}}
    spec: {containers: [{name: c, image: busybox}]}
---
apiVersion: v1
kind: Service
metadata: {name: app}
spec: {selector: {app: a}, ports: [{port: 80}]}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data: {k: v}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: d}
spec:
  replicas: 1
  selector: {matchLabels: {app: d}}
  template:
    metadata: {labels: {app: d}}
    spec: {containers: [{name: c, image: busybox}]}
"#,
    );
    eventually(T, "running pods", || async { Some(()).filter(|_| true).and(Some(env.live_pods("doomed", "app=a").await)).filter(|p| p.len() == 2) }).await;
    let out = env.kubectl_ok(&["delete", "namespace", "doomed", "--timeout=20s"]);
    assert!(out.contains("namespace \"doomed\" deleted"), "{out}");
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(env.client.clone());
    assert!(nss.get_opt("doomed").await.unwrap().is_none(), "namespace gone");
    for kind in ["pods", "services", "configmaps", "replicationcontrollers", "endpoints", "serviceaccounts", "deployments", "replicasets", "endpointslices", "events"] {
        let out = env.kubectl_ok(&["get", kind, "-n", "doomed", "-o", "name"]);
        assert!(out.trim().is_empty(), "{kind} left behind: {out}");
    }
}

fn rc_yaml(name: &str, replicas: i32) -> String {
    format!(
        r#"
apiVersion: v1
kind: ReplicationController
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{app: {name}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec: {{containers: [{{name: c, image: busybox}}]}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collector_propagation() {
    let env = Env::start(&["n1"], |_| {}).await.unwrap();
    let rcs: Api<ReplicationController> = Api::namespaced(env.client.clone(), "default");
    let all_pods = |sel: &'static str| {
        let api = env.pods("default");
        async move { api.list(&ListParams::default().labels(sel)).await.unwrap().items }
    };

    // Background (kubectl's default): the owner goes at once, its pods after it.
    env.apply(&rc_yaml("bg", 2));
    rc_pods(&env, "default", "app=bg", 2).await;
    env.kubectl_ok(&["delete", "rc", "bg"]);
    eventually(T, "background: pods collected", || async { all_pods("app=bg").await.is_empty().then_some(()) }).await;

    // Foreground: dependents first. The node is stopped so the pods stay terminating for a
    // while; the owner must still be there, waiting with its finalizer.
    env.apply(&rc_yaml("fg", 2));
    eventually(T, "fg pods running on n1", || async {
        let p = env.live_pods("default", "app=fg").await;
        (p.len() == 2 && p.iter().all(|p| p.spec.as_ref().unwrap().node_name.as_deref() == Some("n1") && is_ready(p))).then_some(())
    })
    .await;
    env.kubelet().stop_node("n1");
    rcs.delete("fg", &DeleteParams::foreground()).await.unwrap();
    eventually(T, "foreground: dependents being deleted", || async {
        let p = all_pods("app=fg").await;
        (p.len() == 2 && p.iter().all(|p| p.metadata.deletion_timestamp.is_some())).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let owner = rcs.get("fg").await.expect("owner waits for its dependents");
    assert!(owner.metadata.deletion_timestamp.is_some());
    assert!(owner.finalizers().iter().any(|f| f == "foregroundDeletion"));
    env.kubelet().resume_node("n1");
    eventually(T, "foreground: owner deleted after its dependents", || async {
        // Owner first, then pods: if the owner is gone, the pods must be too.
        let owner_left = rcs.get_opt("fg").await.unwrap().is_some();
        let pods_left = all_pods("app=fg").await.len();
        assert!(owner_left || pods_left == 0, "owner went before its dependents");
        (!owner_left).then_some(())
    })
    .await;

    // Orphan: the owner goes, the pods stay without a reference to it.
    env.apply(&rc_yaml("or", 2));
    rc_pods(&env, "default", "app=or", 2).await;
    rcs.delete("or", &DeleteParams::orphan()).await.unwrap();
    eventually(T, "orphan: owner deleted", || async { rcs.get_opt("or").await.unwrap().is_none().then_some(()) }).await;
    let left = eventually(T, "orphan: pods released", || async {
        let p = all_pods("app=or").await;
        (p.len() == 2 && p.iter().all(|p| p.owner_references().is_empty())).then_some(p)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.live_pods("default", "app=or").await.len(), left.len(), "orphans stay");
}
