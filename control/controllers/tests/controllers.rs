//! The controllers against a real `skiff control`, with simulated nodes and a test kubelet.

mod common;

use common::*;
use k8s_openapi::api::core::v1::{Event, Pod, ReplicationController};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::time::Duration;

const T: Duration = Duration::from_secs(15);

async fn rc_pods(env: &Env, ns: &str, sel: &str, n: usize) -> Vec<Pod> {
    eventually(T, &format!("{n} live pods for {sel}"), || async {
        Some(env.live_pods(ns, sel).await).filter(|p| p.len() == n)
    })
    .await
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
        assert_eq!(
            (r.kind.as_str(), r.name.as_str(), r.uid.as_str()),
            ("ReplicationController", "frontend", rc.uid().unwrap().as_str())
        );
        assert_eq!((r.controller, r.block_owner_deletion), (Some(true), Some(true)));
    }
    // Status follows the kubelet.
    eventually(T, "rc status 3 ready", || async {
        let s = rcs.get("frontend").await.ok()?.status?;
        (s.replicas == 3
            && s.ready_replicas == Some(3)
            && s.available_replicas == Some(3)
            && s.fully_labeled_replicas == Some(3)
            && s.observed_generation == Some(1))
        .then_some(())
    })
    .await;
    // Events as Kubernetes writes them.
    let events: Api<Event> = Api::namespaced(env.client.clone(), "default");
    eventually(T, "SuccessfulCreate events", || async {
        let evs = events.list(&ListParams::default()).await.ok()?;
        let created: Vec<_> = evs
            .items
            .iter()
            .filter(|e| {
                e.reason.as_deref() == Some("SuccessfulCreate") && e.involved_object.name.as_deref() == Some("frontend")
            })
            .collect();
        (created.len() == 3
            && created.iter().all(|e| {
                e.message.as_deref().is_some_and(|m| m.starts_with("Created pod: frontend-"))
                    && e.source.as_ref().and_then(|s| s.component.as_deref()) == Some("replication-controller")
            }))
        .then_some(())
    })
    .await;

    // A deleted pod is replaced.
    let victim = pods[0].name_any();
    env.pods("default")
        .delete(&victim, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
        .await
        .unwrap();
    let after = rc_pods(&env, "default", "name=frontend", 3).await;
    assert!(after.iter().all(|p| p.name_any() != victim));

    // Scale up and down with kubectl.
    env.kubectl_ok(&["scale", "rc", "frontend", "--replicas=5"]);
    rc_pods(&env, "default", "name=frontend", 5).await;
    env.kubectl_ok(&["scale", "rc", "frontend", "--replicas=2"]);
    rc_pods(&env, "default", "name=frontend", 2).await;
    eventually(T, "SuccessfulDelete events", || async {
        let evs = events.list(&ListParams::default()).await.ok()?;
        let n = evs
            .items
            .iter()
            .filter(|e| {
                e.reason.as_deref() == Some("SuccessfulDelete")
                    && e.message.as_deref().is_some_and(|m| m.starts_with("Deleted pod: frontend-"))
            })
            .count();
        (n >= 3).then_some(())
    })
    .await;
    eventually(T, "rc status 2", || async { (rcs.get("frontend").await.ok()?.status?.replicas == 2).then_some(()) })
        .await;

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
            Some(p) => {
                p.owner_references().iter().any(|r| r.name == "frontend" && r.controller == Some(true)).then_some(())
            }
        }
    })
    .await;
    rc_pods(&env, "default", "name=frontend", 2).await;
    let owned = env.live_pods("default", "name=frontend").await;
    let relabelled = owned[0].name_any();
    env.pods("default")
        .patch(
            &relabelled,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"name": "elsewhere"}}})),
        )
        .await
        .unwrap();
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
    api.list(&ListParams::default().labels(&format!("kubernetes.io/service-name={svc}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
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
    let ep = eventually(T, "endpoints with 3 not-ready addresses", || async {
        endpoints_of(&env, "default", "web").await.filter(|e| ep_ips(e).1.len() == 3)
    })
    .await;
    assert_eq!(ep_ips(&ep), (vec![], ips.clone()));
    let subset = &ep.subsets.as_ref().unwrap()[0];
    let port = &subset.ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.name.as_deref(), port.port, port.protocol.as_deref()),
        (Some("web"), 8080, Some("TCP")),
        "named targetPort resolved"
    );
    let addr = &subset.not_ready_addresses.as_ref().unwrap()[0];
    assert!(addr.node_name.is_some());
    assert_eq!(addr.target_ref.as_ref().unwrap().kind.as_deref(), Some("Pod"));
    assert_eq!(ep.labels().get("tier").map(String::as_str), Some("front"));
    // publishNotReadyAddresses: all addresses ready.
    let all = eventually(T, "web-all endpoints", || async {
        endpoints_of(&env, "default", "web-all").await.filter(|e| ep_ips(e).0.len() == 3)
    })
    .await;
    assert_eq!(ep_ips(&all).0, ips);
    // The slice.
    let slices = eventually(T, "one slice with 3 endpoints", || async {
        Some(slices_of(&env, "default", "web").await).filter(|s| s.len() == 1 && s[0].endpoints.len() == 3)
    })
    .await;
    let s = &slices[0];
    assert_eq!(
        s.labels().get("endpointslice.kubernetes.io/managed-by").map(String::as_str),
        Some("endpointslice-controller.k8s.io")
    );
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
            let slice_ready = sl
                .iter()
                .flat_map(|s| s.endpoints.iter())
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                .count();
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
    // The Endpoints and EndpointSlice controllers are independent (as in Kubernetes), so the
    // Endpoints object may lag the slice by one reconcile.
    eventually(T, "terminating pod to leave Endpoints", || async {
        let ep = endpoints_of(&env, "default", "web").await?;
        let (r, n) = ep_ips(&ep);
        (!r.contains(&vip) && !n.contains(&vip)).then_some(())
    })
    .await;

    // Deleting the service removes its Endpoints.
    Api::<k8s_openapi::api::core::v1::Service>::namespaced(env.client.clone(), "default")
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    eventually(T, "endpoints removed with the service", || async {
        endpoints_of(&env, "default", "web").await.is_none().then_some(())
    })
    .await;

    // A service without a selector: its hand-written Endpoints are mirrored into a slice.
    env.apply(
        r#"
apiVersion: v1
kind: Service
metadata: {name: ext}
spec: {ports: [{name: pg, port: 5432}]}
---
apiVersion: v1
kind: Endpoints
metadata: {name: ext}
subsets: [{addresses: [{ip: 192.0.2.10}], ports: [{name: pg, port: 5432}]}]
"#,
    );
    let mirrored = eventually(T, "mirrored slice", || async {
        Some(slices_of(&env, "default", "ext").await).filter(|s| s.len() == 1)
    })
    .await;
    assert_eq!(
        mirrored[0].labels().get("endpointslice.kubernetes.io/managed-by").map(String::as_str),
        Some("endpointslicemirroring-controller.k8s.io")
    );
    assert_eq!(mirrored[0].endpoints[0].addresses, vec!["192.0.2.10".to_string()]);
    assert_eq!(mirrored[0].ports.as_ref().unwrap()[0].port, Some(5432));
    assert_eq!(mirrored[0].owner_references()[0].kind, "Endpoints");
    // The API server's own service is not mirrored (skip-mirror).
    let k = slices_of(&env, "default", "kubernetes").await;
    assert!(k.iter().all(|s| s.labels().get("endpointslice.kubernetes.io/managed-by").map(String::as_str)
        != Some("endpointslicemirroring-controller.k8s.io")));
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
    eventually(T, "running pods", || async {
        Some(()).filter(|_| true).and(Some(env.live_pods("doomed", "app=a").await)).filter(|p| p.len() == 2)
    })
    .await;
    let out = env.kubectl_ok(&["delete", "namespace", "doomed", "--timeout=20s"]);
    assert!(out.contains("namespace \"doomed\" deleted"), "{out}");
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(env.client.clone());
    assert!(nss.get_opt("doomed").await.unwrap().is_none(), "namespace gone");
    for kind in [
        "pods",
        "services",
        "configmaps",
        "replicationcontrollers",
        "endpoints",
        "serviceaccounts",
        "deployments",
        "replicasets",
        "endpointslices",
        "events",
    ] {
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
        (p.len() == 2 && p.iter().all(|p| p.spec.as_ref().unwrap().node_name.as_deref() == Some("n1") && is_ready(p)))
            .then_some(())
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

/// Follows the pods of a selector with a watch and records the lowest number of ready,
/// non-terminating pods seen once `armed`.
fn watch_min_ready(
    client: kube::Client,
    ns: &str,
    selector: &str,
) -> (tokio::task::JoinHandle<()>, std::sync::Arc<std::sync::Mutex<(usize, usize)>>) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let api: Api<Pod> = Api::namespaced(client, ns);
    // (minimum seen, current)
    let state = std::sync::Arc::new(std::sync::Mutex::new((usize::MAX, 0usize)));
    let st = state.clone();
    let cfg = watcher::Config::default().labels(selector);
    let task = tokio::spawn(async move {
        let mut ready: std::collections::HashMap<String, bool> = Default::default();
        let mut synced = false;
        let mut stream = watcher::watcher(api, cfg).default_backoff().boxed();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => {
                    ready.insert(p.name_any(), is_ready(&p) && p.metadata.deletion_timestamp.is_none());
                }
                Ok(watcher::Event::Delete(p)) => {
                    ready.remove(&p.name_any());
                }
                Ok(watcher::Event::InitDone) => synced = true,
                _ => continue,
            }
            if synced {
                let n = ready.values().filter(|r| **r).count();
                let mut s = st.lock().unwrap();
                s.0 = s.0.min(n);
                s.1 = n;
            }
        }
    });
    (task, state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_rolling_update_and_undo() {
    let env = Env::start(&["n1", "n2", "n3"], |_| {}).await.unwrap();
    env.apply(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, annotations: {kubernetes.io/change-cause: first}}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 1}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: c, image: "busybox:1"}]}
"#,
    );
    let out = env.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=30s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(env.client.clone(), "default");
    let rss: Api<k8s_openapi::api::apps::v1::ReplicaSet> = Api::namespaced(env.client.clone(), "default");
    let d = deployments.get("web").await.unwrap();
    assert_eq!(d.annotations().get("deployment.kubernetes.io/revision").map(String::as_str), Some("1"));
    let st = d.status.clone().unwrap();
    assert_eq!(
        (st.replicas, st.updated_replicas, st.ready_replicas, st.available_replicas),
        (Some(3), Some(3), Some(3), Some(3))
    );
    let conds: Vec<(String, String, String)> = st
        .conditions
        .unwrap()
        .iter()
        .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone().unwrap_or_default()))
        .collect();
    assert!(conds.contains(&("Available".into(), "True".into(), "MinimumReplicasAvailable".into())), "{conds:?}");
    assert!(conds.contains(&("Progressing".into(), "True".into(), "NewReplicaSetAvailable".into())), "{conds:?}");
    let list = rss.list(&ListParams::default().labels("app=web")).await.unwrap().items;
    assert_eq!(list.len(), 1);
    let first = &list[0];
    let hash = first.labels().get("pod-template-hash").cloned().expect("pod-template-hash label");
    assert_eq!(first.name_any(), format!("web-{hash}"));
    assert_eq!(first.annotations().get("deployment.kubernetes.io/revision").map(String::as_str), Some("1"));
    assert_eq!(first.owner_references()[0].kind, "Deployment");

    // Rolling update, watched for its whole duration.
    let (watch, seen) = watch_min_ready(env.client.clone(), "default", "app=web");
    eventually(T, "watch synced", || async { (seen.lock().unwrap().1 == 3).then_some(()) }).await;
    env.kubectl_ok(&["set", "image", "deployment/web", "c=busybox:2"]);
    env.kubectl_ok(&["annotate", "deployment/web", "kubernetes.io/change-cause=second", "--overwrite"]);
    let out = env.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=30s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let pods = rc_pods(&env, "default", "app=web", 3).await;
    assert!(pods.iter().all(|p| p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some("busybox:2")));
    let (min, _) = *seen.lock().unwrap();
    watch.abort();
    eprintln!("lowest ready count during the rollout: {min}");
    assert!(min >= 2, "ready pods dropped to {min} during the rollout (replicas 3, maxUnavailable 1)");
    let d = deployments.get("web").await.unwrap();
    assert_eq!(d.annotations().get("deployment.kubernetes.io/revision").map(String::as_str), Some("2"));
    let history = env.kubectl_ok(&["rollout", "history", "deployment/web"]);
    assert!(
        history.lines().any(|l| l.split_whitespace().next() == Some("1"))
            && history.lines().any(|l| l.split_whitespace().next() == Some("2")),
        "{history}"
    );
    let events: Api<Event> = Api::namespaced(env.client.clone(), "default");
    let evs = events.list(&ListParams::default()).await.unwrap().items;
    assert!(
        evs.iter().any(|e| e.reason.as_deref() == Some("ScalingReplicaSet")
            && e.message
                .as_deref()
                .is_some_and(|m| m.starts_with("Scaled up replica set web-") && m.contains(" from 0 to "))),
        "ScalingReplicaSet events"
    );

    // Undo goes back to the first template, whose ReplicaSet becomes revision 3.
    env.kubectl_ok(&["rollout", "undo", "deployment/web"]);
    let out = env.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=30s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let pods = rc_pods(&env, "default", "app=web", 3).await;
    assert!(
        pods.iter().all(|p| p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some("busybox:1")),
        "back to the first template"
    );
    let first = rss.get(&first.name_any()).await.unwrap();
    assert_eq!(first.annotations().get("deployment.kubernetes.io/revision").map(String::as_str), Some("3"));
    assert_eq!(first.spec.as_ref().unwrap().replicas, Some(3));
    let history = env.kubectl_ok(&["rollout", "history", "deployment/web"]);
    assert!(history.lines().any(|l| l.split_whitespace().next() == Some("3")), "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ipam_and_lease_timeout() {
    let env = Env::start(&["n1", "n2"], |c| c.node_monitor_grace = Duration::from_secs(2)).await.unwrap();
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(env.client.clone());
    // IPAM: a /24 each, distinct.
    let cidrs = eventually(T, "pod CIDRs", || async {
        let mut c = Vec::new();
        for n in ["n1", "n2"] {
            let spec = nodes.get(n).await.ok()?.spec?;
            let cidr = spec.pod_cidr?;
            assert_eq!(spec.pod_cidrs.as_deref(), Some(&[cidr.clone()][..]));
            c.push(cidr);
        }
        Some(c)
    })
    .await;
    assert!(cidrs.iter().all(|c| c.starts_with("10.244.") && c.ends_with(".0/24")), "{cidrs:?}");
    assert_ne!(cidrs[0], cidrs[1]);
    env.kubelet().add_node("n3").await.unwrap();
    let c3 = eventually(T, "n3 pod CIDR", || async { nodes.get("n3").await.ok()?.spec?.pod_cidr }).await;
    assert!(!cidrs.contains(&c3));

    // Pods that tolerate an unreachable node for 1 s.
    env.apply(
        r#"
apiVersion: v1
kind: ReplicationController
metadata: {name: lc}
spec:
  replicas: 3
  selector: {app: lc}
  template:
    metadata: {labels: {app: lc}}
    spec:
      containers: [{name: c, image: busybox}]
      tolerations:
      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 1}
"#,
    );
    let pods = eventually(T, "lc pods running", || async {
        let p = env.live_pods("default", "app=lc").await;
        (p.len() == 3 && p.iter().all(is_ready)).then_some(p)
    })
    .await;
    let victim_node = pods[0].spec.as_ref().unwrap().node_name.clone().unwrap();
    let on_victim: Vec<String> = pods
        .iter()
        .filter(|p| p.spec.as_ref().unwrap().node_name.as_deref() == Some(victim_node.as_str()))
        .map(|p| p.name_any())
        .collect();
    env.kubelet().stop_node(&victim_node);
    let stopped = std::time::Instant::now();
    let node = eventually(T, "node Ready=Unknown with the unreachable taint", || async {
        let n = nodes.get(&victim_node).await.ok()?;
        let ready = n.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")?.clone();
        let tainted =
            n.spec.as_ref()?.taints.as_ref()?.iter().any(|t| {
                t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute" && t.time_added.is_some()
            });
        (ready.status == "Unknown" && tainted).then_some(n)
    })
    .await;
    let took = stopped.elapsed();
    assert!(took >= Duration::from_millis(1500), "marked unknown after {took:?}, before the 2 s grace");
    let ready = node.status.unwrap().conditions.unwrap().into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.reason.as_deref(), Some("NodeStatusUnknown"));
    assert_eq!(ready.message.as_deref(), Some("Kubelet stopped posting node status."));
    // Its pods are evicted after their toleration and recreated on the other nodes.
    eventually(T, "pods on the lost node evicted", || async {
        let mut all = true;
        for name in &on_victim {
            let p = env.pods("default").get(name).await.ok()?;
            all &= p.metadata.deletion_timestamp.is_some();
        }
        all.then_some(())
    })
    .await;
    let replaced = rc_pods(&env, "default", "app=lc", 3).await;
    assert!(replaced.iter().all(|p| p.spec.as_ref().unwrap().node_name.as_deref() != Some(victim_node.as_str())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_follows_nodes() {
    let env = Env::start(&["n1", "n2"], |_| {}).await.unwrap();
    env.apply(
        r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec: {containers: [{name: c, image: "busybox:1"}]}
"#,
    );
    let dss: Api<k8s_openapi::api::apps::v1::DaemonSet> = Api::namespaced(env.client.clone(), "default");
    let per_node = |want: &'static [&'static str]| {
        let env = &env;
        async move {
            eventually(T, &format!("one ready daemon pod on each of {want:?}"), || async {
                let pods = env.live_pods("default", "app=agent").await;
                let mut nodes: Vec<String> =
                    pods.iter().filter(|p| is_ready(p)).filter_map(|p| p.spec.as_ref()?.node_name.clone()).collect();
                nodes.sort();
                (pods.len() == want.len() && nodes == want).then_some(pods)
            })
            .await
        }
    };
    let pods = per_node(&["n1", "n2"]).await;
    for p in &pods {
        // Pinned by required node affinity on metadata.name, tolerating unreachable nodes.
        let na = serde_json::to_value(p.spec.as_ref().unwrap().affinity.as_ref().unwrap()).unwrap();
        let field = &na["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchFields"]
            [0];
        assert_eq!(field["key"], "metadata.name");
        assert_eq!(field["values"][0].as_str(), p.spec.as_ref().unwrap().node_name.as_deref());
        assert!(
            p.spec
                .as_ref()
                .unwrap()
                .tolerations
                .as_ref()
                .unwrap()
                .iter()
                .any(|t| t.key.as_deref() == Some("node.kubernetes.io/unreachable") && t.toleration_seconds.is_none())
        );
        assert!(p.labels().contains_key("controller-revision-hash"));
    }
    eventually(T, "status 2/2", || async {
        let s = dss.get("agent").await.ok()?.status?;
        (s.desired_number_scheduled == 2
            && s.current_number_scheduled == 2
            && s.number_ready == 2
            && s.number_available == Some(2)
            && s.updated_number_scheduled == Some(2))
        .then_some(())
    })
    .await;

    // A node joins.
    env.kubelet().add_node("n3").await.unwrap();
    per_node(&["n1", "n2", "n3"]).await;
    // A node leaves.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(env.client.clone());
    nodes.delete("n2", &DeleteParams::default()).await.unwrap();
    per_node(&["n1", "n3"]).await;
    // A NoExecute taint the daemon does not tolerate drives it off the node.
    nodes
        .patch(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoExecute"}]}})),
        )
        .await
        .unwrap();
    per_node(&["n3"]).await;
    eventually(T, "status 1/1", || async {
        let s = dss.get("agent").await.ok()?.status?;
        (s.desired_number_scheduled == 1 && s.current_number_scheduled == 1 && s.number_ready == 1).then_some(())
    })
    .await;
    // A template change rolls the pods.
    nodes.patch("n1", &PatchParams::default(), &Patch::Merge(json!({"spec": {"taints": null}}))).await.unwrap();
    per_node(&["n1", "n3"]).await;
    env.kubectl_ok(&["set", "image", "daemonset/agent", "c=busybox:2"]);
    eventually(T, "daemon pods updated", || async {
        let pods = env.live_pods("default", "app=agent").await;
        (pods.len() == 2
            && pods
                .iter()
                .all(|p| is_ready(p) && p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some("busybox:2")))
        .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_complete_or_fail_at_backoff_limit() {
    let env = Env::start(&["n1", "n2"], |c| c.job_backoff_base = Duration::from_millis(200)).await.unwrap();
    env.apply(&format!(
        r#"
apiVersion: batch/v1
kind: Job
metadata: {{name: ok}}
spec:
  completions: 3
  parallelism: 2
  template:
    metadata: {{annotations: {{"{EXIT}": "0"}}}}
    spec: {{restartPolicy: Never, containers: [{{name: main, image: busybox}}]}}
---
apiVersion: batch/v1
kind: Job
metadata: {{name: bad}}
spec:
  backoffLimit: 2
  template:
    metadata: {{annotations: {{"{EXIT}": "1"}}}}
    spec: {{restartPolicy: Never, containers: [{{name: main, image: busybox}}]}}
"#
    ));
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(env.client.clone(), "default");
    let cond = |j: &k8s_openapi::api::batch::v1::Job, t: &str| -> Option<(String, String)> {
        j.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == t && c.status == "True")
            .map(|c| (c.reason.clone().unwrap_or_default(), c.message.clone().unwrap_or_default()))
    };
    let ok = eventually(Duration::from_secs(20), "job ok complete", || async {
        jobs.get("ok").await.ok().filter(|j| cond(j, "Complete").is_some())
    })
    .await;
    let st = ok.status.clone().unwrap();
    assert_eq!((st.succeeded, st.failed.unwrap_or(0), st.active.unwrap_or(0)), (Some(3), 0, 0));
    assert!(st.completion_time.is_some() && st.start_time.is_some());
    assert_eq!(cond(&ok, "Complete").unwrap().0, "CompletionsReached");
    let ok_pods = env.pods("default").list(&ListParams::default().labels("job-name=ok")).await.unwrap().items;
    assert_eq!(ok_pods.len(), 3, "exactly the completions were run");
    assert!(ok_pods.iter().all(|p| p.finalizers().is_empty()), "tracking finalizers removed");

    let bad = eventually(Duration::from_secs(20), "job bad failed", || async {
        jobs.get("bad").await.ok().filter(|j| cond(j, "Failed").is_some())
    })
    .await;
    assert_eq!(
        cond(&bad, "Failed").unwrap(),
        ("BackoffLimitExceeded".to_string(), "Job has reached the specified backoff limit".to_string())
    );
    assert_eq!(bad.status.as_ref().unwrap().failed, Some(3));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let bad_pods = env.pods("default").list(&ListParams::default().labels("job-name=bad")).await.unwrap().items;
    assert_eq!(bad_pods.len(), 3, "backoffLimit 2: three attempts, then no more");
    let events: Api<Event> = Api::namespaced(env.client.clone(), "default");
    let evs = events.list(&ListParams::default()).await.unwrap().items;
    assert!(
        evs.iter().any(|e| e.reason.as_deref() == Some("Completed") && e.involved_object.name.as_deref() == Some("ok"))
    );
    assert!(evs.iter().any(
        |e| e.reason.as_deref() == Some("BackoffLimitExceeded") && e.involved_object.name.as_deref() == Some("bad")
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_recreate_stops_old_pods_first() {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let env = Env::start(&["n1", "n2"], |_| {}).await.unwrap();
    env.apply(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: rec}
spec:
  replicas: 2
  selector: {matchLabels: {app: rec}}
  strategy: {type: Recreate}
  template:
    metadata: {labels: {app: rec}}
    spec: {containers: [{name: c, image: "busybox:1"}]}
"#,
    );
    env.kubectl_ok(&["rollout", "status", "deployment/rec", "--timeout=30s"]);
    // Follow every pod: a pod of the new template must never exist beside one of the old.
    let api: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    let overlap = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let o = overlap.clone();
    let watch = tokio::spawn(async move {
        let mut images: std::collections::HashMap<String, String> = Default::default();
        let mut stream = watcher::watcher(api, watcher::Config::default().labels("app=rec")).default_backoff().boxed();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => {
                    images.insert(p.name_any(), p.spec.unwrap().containers[0].image.clone().unwrap_or_default());
                }
                Ok(watcher::Event::Delete(p)) => {
                    images.remove(&p.name_any());
                }
                _ => {}
            }
            let kinds: std::collections::HashSet<&String> = images.values().collect();
            if kinds.len() > 1 {
                o.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.kubectl_ok(&["set", "image", "deployment/rec", "c=busybox:2"]);
    env.kubectl_ok(&["rollout", "status", "deployment/rec", "--timeout=30s"]);
    let pods = rc_pods(&env, "default", "app=rec", 2).await;
    assert!(pods.iter().all(|p| p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some("busybox:2")));
    watch.abort();
    assert!(!overlap.load(std::sync::atomic::Ordering::SeqCst), "new pods appeared while old ones still existed");
}

/// Every object's resourceVersion (events and leases aside), to tell whether anything is
/// being written.
async fn resource_versions(env: &Env) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let text = env.kubectl_ok(&["get", "pods,services,endpoints,endpointslices,replicationcontrollers,replicasets,deployments,daemonsets,jobs,nodes,serviceaccounts,namespaces", "-A", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for item in v["items"].as_array().unwrap() {
        let m = &item["metadata"];
        out.insert(
            format!("{}/{}/{}", item["kind"], m["namespace"], m["name"]),
            m["resourceVersion"].as_str().unwrap_or("").to_string(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controllers_are_quiet_at_rest() {
    let env = Env::start(&["n1", "n2"], |_| {}).await.unwrap();
    env.apply(&format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: d}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: d}}}}
  template:
    metadata: {{labels: {{app: d}}}}
    spec: {{containers: [{{name: c, image: busybox, ports: [{{name: http, containerPort: 80}}]}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: d}}
spec: {{selector: {{app: d}}, ports: [{{port: 80, targetPort: http}}]}}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: ds}}
spec:
  selector: {{matchLabels: {{app: ds}}}}
  template:
    metadata: {{labels: {{app: ds}}}}
    spec: {{containers: [{{name: c, image: busybox}}]}}
---
apiVersion: batch/v1
kind: Job
metadata: {{name: j}}
spec:
  template:
    metadata: {{annotations: {{"{EXIT}": "0"}}}}
    spec: {{restartPolicy: Never, containers: [{{name: main, image: busybox}}]}}
"#
    ));
    env.kubectl_ok(&["rollout", "status", "deployment/d", "--timeout=30s"]);
    env.kubectl_ok(&["rollout", "status", "daemonset/ds", "--timeout=30s"]);
    env.kubectl_ok(&["wait", "--for=condition=complete", "job/j", "--timeout=30s"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = resource_versions(&env).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = resource_versions(&env).await;
    let changed: Vec<&String> = after.iter().filter(|(k, v)| before.get(*k) != Some(v)).map(|(k, _)| k).collect();
    assert!(changed.is_empty(), "objects still being written at rest: {changed:?}");
}

/// How long an RC of 1,000 replicas takes to have its pods (no kubelet); run by hand:
/// `cargo test -p skiff-controllers --test controllers -- --ignored --nocapture rc_of_1000`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn rc_of_1000() {
    let env = Env::start(&[], |_| {}).await.unwrap();
    let started = std::time::Instant::now();
    env.apply(&rc_yaml("big", 1000));
    let rcs: Api<ReplicationController> = Api::namespaced(env.client.clone(), "default");
    eventually(Duration::from_secs(120), "1000 pods", || async {
        (rcs.get("big").await.ok()?.status?.replicas == 1000).then_some(())
    })
    .await;
    eprintln!("RC of 1000: all pods created and counted after {:?}", started.elapsed());
    assert_eq!(env.live_pods("default", "app=big").await.len(), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexed_job_completes_every_index() {
    let env = Env::start(&["n1"], |_| {}).await.unwrap();
    env.apply(&format!(
        r#"
apiVersion: batch/v1
kind: Job
metadata: {{name: idx}}
spec:
  completions: 4
  parallelism: 2
  completionMode: Indexed
  template:
    metadata: {{annotations: {{"{EXIT}": "0"}}}}
    spec: {{restartPolicy: Never, containers: [{{name: main, image: busybox}}]}}
"#
    ));
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(env.client.clone(), "default");
    let job = eventually(Duration::from_secs(20), "indexed job complete", || async {
        let j = jobs.get("idx").await.ok()?;
        j.status.as_ref()?.conditions.as_ref()?.iter().any(|c| c.type_ == "Complete" && c.status == "True").then_some(j)
    })
    .await;
    assert_eq!(job.status.as_ref().unwrap().completed_indexes.as_deref(), Some("0-3"));
    let pods = env.pods("default").list(&ListParams::default().labels("job-name=idx")).await.unwrap().items;
    let mut idx: Vec<String> =
        pods.iter().map(|p| p.annotations()["batch.kubernetes.io/job-completion-index"].clone()).collect();
    idx.sort();
    assert_eq!(idx, ["0", "1", "2", "3"]);
    assert!(pods.iter().all(|p| {
        p.name_any().starts_with(&format!("idx-{}-", p.annotations()["batch.kubernetes.io/job-completion-index"]))
    }));
}
