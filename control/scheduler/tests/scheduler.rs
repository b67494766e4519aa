//! The scheduler against a real `skiff control` with simulated nodes (Node objects with status,
//! no agent). Each test runs its own scheduler under its own `schedulerName`, so the results do
//! not depend on whether `skiff control` runs a default scheduler of its own.

use futures::future::join_all;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use skiff_scheduler::SchedulerConfig;
use skiff_tests::Control;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

struct Running(tokio::task::JoinHandle<anyhow::Result<()>>);
impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn start(client: &Client, name: &str) -> Running {
    let config = SchedulerConfig { scheduler_name: name.into(), ..Default::default() };
    Running(tokio::spawn(skiff_scheduler::run(client.clone(), config)))
}

fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

/// A simulated node: created, then given allocatable/capacity and `Ready=True` through
/// `nodes/status` (the API server drops status on create). `extra` is merged into the object.
async fn add_node(client: &Client, name: &str, cpu: &str, extra: Value) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut n = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {}
    });
    merge(&mut n, extra);
    nodes.create(&PostParams::default(), &serde_json::from_value(n)?).await?;
    let resources = json!({"cpu": cpu, "memory": "8Gi", "pods": "110"});
    let status = json!({"status": {
        "capacity": resources, "allocatable": resources,
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "simulated"}]
    }});
    nodes.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await?;
    Ok(())
}

fn pod(name: &str, scheduler: &str, cpu: &str, extra: Value) -> Pod {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "test"}},
        "spec": {
            "schedulerName": scheduler,
            "containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}]
        }
    });
    merge(&mut p, extra);
    serde_json::from_value(p).expect("pod")
}

async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match f().await {
            Ok(Some(v)) => return v,
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what} (last error: {last_err:?})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn node_of(p: &Pod) -> Option<String> {
    p.spec.as_ref().and_then(|s| s.node_name.clone())
}

async fn bound_node(pods: &Api<Pod>, name: &str) -> anyhow::Result<Option<String>> {
    Ok(node_of(&pods.get(name).await?))
}

async fn events_for(client: &Client, pod: &str) -> anyhow::Result<Vec<Event>> {
    let evs: Api<Event> = Api::namespaced(client.clone(), "default");
    Ok(evs
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(pod))
        .collect())
}

/// Waits for a `FailedScheduling` event on `pod` and returns its message.
async fn failed_scheduling(client: &Client, pod: &str, contains: &str) -> String {
    wait_for(&format!("FailedScheduling for {pod} containing {contains:?}"), Duration::from_secs(15), || async {
        Ok(events_for(client, pod)
            .await?
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("FailedScheduling"))
            .filter_map(|e| e.message)
            .find(|m| m.contains(contains)))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spreads_owner_reports_insufficient_cpu_and_retries_on_node_add() -> anyhow::Result<()> {
    let control = Control::start()?;
    let client = control.client().await?;
    let _s = start(&client, "spread-test");
    for n in ["node-1", "node-2", "node-3"] {
        add_node(&client, n, "4", json!({})).await?;
    }
    // The owner only needs to exist (a ConfigMap: no controller will adopt or delete the pods).
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let owner = cms
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "web-owner"}}))?)
        .await?;
    let owner_ref = json!({"metadata": {"ownerReferences": [{
        "apiVersion": "v1", "kind": "ConfigMap", "name": "web-owner",
        "uid": owner.metadata.uid.clone().unwrap(), "controller": true
    }]}});
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for i in 0..6 {
        pods.create(&PostParams::default(), &pod(&format!("web-{i}"), "spread-test", "100m", owner_ref.clone()))
            .await?;
    }
    let placement = wait_for("6 pods bound", Duration::from_secs(15), || async {
        let list = pods.list(&ListParams::default().labels("app=test")).await?;
        let nodes: Vec<String> = list.items.iter().filter_map(node_of).collect();
        Ok((nodes.len() == 6).then_some(nodes))
    })
    .await;
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for n in placement {
        *per_node.entry(n).or_default() += 1;
    }
    assert_eq!(per_node.values().copied().collect::<Vec<_>>(), vec![2, 2, 2], "{per_node:?}");

    // The Scheduled event, as Kubernetes writes it.
    let node0 = bound_node(&pods, "web-0").await?.unwrap();
    let ev = wait_for("Scheduled event", Duration::from_secs(10), || async {
        Ok(events_for(&client, "web-0").await?.into_iter().find(|e| e.reason.as_deref() == Some("Scheduled")))
    })
    .await;
    assert_eq!(ev.message.as_deref(), Some(format!("Successfully assigned default/web-0 to {node0}").as_str()));
    assert_eq!(ev.type_.as_deref(), Some("Normal"));
    assert_eq!(ev.source.as_ref().and_then(|s| s.component.as_deref()), Some("spread-test"));
    assert_eq!(ev.involved_object.kind.as_deref(), Some("Pod"));
    let web0 = pods.get("web-0").await?;
    assert_eq!(ev.involved_object.uid, web0.metadata.uid);
    let cond = web0.status.and_then(|s| s.conditions).unwrap_or_default();
    assert!(cond.iter().any(|c| c.type_ == "PodScheduled" && c.status == "True"), "{cond:?}");

    // Too large for any node: Pending, with Kubernetes' message and condition.
    pods.create(&PostParams::default(), &pod("big", "spread-test", "16", json!({}))).await?;
    let msg = failed_scheduling(&client, "big", "nodes are available").await;
    let want = "0/3 nodes are available: 3 Insufficient cpu. \
                preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.";
    assert_eq!(msg, want);
    let ev = events_for(&client, "big")
        .await?
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("FailedScheduling"))
        .unwrap();
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert_eq!(ev.source.as_ref().and_then(|s| s.component.as_deref()), Some("spread-test"));
    let cond = wait_for("PodScheduled=False", Duration::from_secs(10), || async {
        let p = pods.get("big").await?;
        Ok(p.status.and_then(|s| s.conditions).unwrap_or_default().into_iter().find(|c| c.type_ == "PodScheduled"))
    })
    .await;
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_deref(), cond.message.as_deref()),
        ("False", Some("Unschedulable"), Some(want))
    );
    assert_eq!(bound_node(&pods, "big").await?, None);

    // No hot loop: without cluster changes the pod is not retried (one event, count 1).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let failed: Vec<Event> = events_for(&client, "big")
        .await?
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("FailedScheduling"))
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].count, Some(1));

    // A node that fits arrives: the pod is retried and bound there.
    add_node(&client, "node-big", "32", json!({})).await?;
    let node = wait_for("big bound", Duration::from_secs(15), || async { bound_node(&pods, "big").await }).await;
    assert_eq!(node, "node-big");
    let ev = wait_for("Scheduled event for big", Duration::from_secs(10), || async {
        Ok(events_for(&client, "big").await?.into_iter().find(|e| e.reason.as_deref() == Some("Scheduled")))
    })
    .await;
    assert_eq!(ev.message.as_deref(), Some("Successfully assigned default/big to node-big"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_taints_cordon_and_host_ports() -> anyhow::Result<()> {
    let control = Control::start()?;
    let client = control.client().await?;
    let _s = start(&client, "filter-test");
    add_node(&client, "ssd", "4", json!({"metadata": {"labels": {"disk": "ssd"}}})).await?;
    add_node(
        &client,
        "tainted",
        "4",
        json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}),
    )
    .await?;
    add_node(&client, "cordoned", "4", json!({"spec": {"unschedulable": true}})).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();

    pods.create(&pp, &pod("sel", "filter-test", "100m", json!({"spec": {"nodeSelector": {"disk": "ssd"}}}))).await?;
    let tolerating = json!({"spec": {
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["tainted"]}]}]}}}
    }});
    pods.create(&pp, &pod("tol", "filter-test", "100m", tolerating)).await?;
    pods.create(&pp, &pod("nomatch", "filter-test", "100m", json!({"spec": {"nodeSelector": {"disk": "hdd"}}})))
        .await?;
    for (name, want) in [("sel", "ssd"), ("tol", "tainted")] {
        let node =
            wait_for(&format!("{name} bound"), Duration::from_secs(15), || async { bound_node(&pods, name).await })
                .await;
        assert_eq!(node, want, "{name}");
    }
    let msg = failed_scheduling(&client, "nomatch", "nodes are available").await;
    assert_eq!(
        msg,
        "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, \
         1 node(s) had untolerated taint {dedicated: gpu}, 1 node(s) were unschedulable. \
         preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
    );

    // Host ports: the second pod asking for 8080 finds the only open node's port taken.
    let port = json!({"spec": {"containers": [{"name": "c", "image": "busybox", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}});
    pods.create(&pp, &pod("port-a", "filter-test", "100m", port.clone())).await?;
    let node = wait_for("port-a bound", Duration::from_secs(15), || async { bound_node(&pods, "port-a").await }).await;
    assert_eq!(node, "ssd");
    pods.create(&pp, &pod("port-b", "filter-test", "100m", port)).await?;
    let msg = failed_scheduling(&client, "port-b", "nodes are available").await;
    assert_eq!(
        msg,
        "0/3 nodes are available: 1 node(s) didn't have free ports for the requested pod ports, \
         1 node(s) had untolerated taint {dedicated: gpu}, 1 node(s) were unschedulable. \
         preemption: 0/3 nodes are available: 1 No preemption victims found for incoming pod, \
         2 Preemption is not helpful for scheduling."
    );

    // Uncordoning is a node update: port-b is retried and lands on the uncordoned node.
    let nodes: Api<Node> = Api::all(client.clone());
    nodes.patch("cordoned", &PatchParams::default(), &Patch::Merge(json!({"spec": {"unschedulable": false}}))).await?;
    let node = wait_for("port-b bound", Duration::from_secs(15), || async { bound_node(&pods, "port-b").await }).await;
    assert_eq!(node, "cordoned");
    assert_eq!(bound_node(&pods, "nomatch").await?, None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_does_not_overcommit_and_deletion_frees_room() -> anyhow::Result<()> {
    let control = Control::start()?;
    let client = control.client().await?;
    add_node(&client, "small-1", "1", json!({})).await?;
    add_node(&client, "small-2", "1", json!({})).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    // All 30 pods exist before the scheduler starts, so they arrive as one burst.
    let creates = (0..30).map(|i| {
        let pods = pods.clone();
        async move {
            pods.create(&PostParams::default(), &pod(&format!("burst-{i}"), "burst-test", "100m", json!({}))).await
        }
    });
    for r in join_all(creates).await {
        r?;
    }
    let _s = start(&client, "burst-test");
    let count_bound = || async {
        let list = pods.list(&ListParams::default().labels("app=test")).await?;
        let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
        for n in list.items.iter().filter_map(node_of) {
            *per_node.entry(n).or_default() += 1;
        }
        anyhow::Ok(per_node)
    };
    let per_node = wait_for("20 pods bound", Duration::from_secs(15), || async {
        let m = count_bound().await?;
        Ok((m.values().sum::<usize>() >= 20).then_some(m))
    })
    .await;
    assert_eq!(per_node.values().copied().collect::<Vec<_>>(), vec![10, 10], "{per_node:?}");
    let pending: Vec<String> = pods
        .list(&ListParams::default().labels("app=test"))
        .await?
        .items
        .into_iter()
        .filter(|p| node_of(p).is_none())
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(pending.len(), 10);
    let msg = failed_scheduling(&client, &pending[0], "nodes are available").await;
    assert_eq!(
        msg,
        "0/2 nodes are available: 2 Insufficient cpu. preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod."
    );

    // Deleting a bound pod frees room: exactly one pending pod takes it.
    let victim = pods
        .list(&ListParams::default().labels("app=test"))
        .await?
        .items
        .into_iter()
        .find(|p| node_of(p).is_some())
        .unwrap();
    pods.delete(
        victim.metadata.name.as_deref().unwrap(),
        &DeleteParams { grace_period_seconds: Some(0), ..Default::default() },
    )
    .await?;
    wait_for("a pending pod bound after the deletion", Duration::from_secs(20), || async {
        let m = count_bound().await?;
        Ok((m.values().copied().collect::<Vec<_>>() == vec![10, 10]).then_some(()))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count_bound().await?.values().sum::<usize>(), 20);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_scheduler_ignores_other_scheduler_names() -> anyhow::Result<()> {
    let control = Control::start()?;
    let client = control.client().await?;
    let _s = start(&client, skiff_scheduler::DEFAULT_SCHEDULER_NAME);
    add_node(&client, "n1", "4", json!({})).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod("theirs", "other-scheduler", "100m", json!({}))).await?;
    // No schedulerName: the API server defaults it to default-scheduler.
    let mut mine = pod("mine", "", "100m", json!({}));
    mine.spec.as_mut().unwrap().scheduler_name = None;
    pods.create(&PostParams::default(), &mine).await?;
    let node = wait_for("mine bound", Duration::from_secs(15), || async { bound_node(&pods, "mine").await }).await;
    assert_eq!(node, "n1");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(bound_node(&pods, "theirs").await?, None);
    assert!(events_for(&client, "theirs").await?.is_empty());
    Ok(())
}

/// End-to-end throughput through the API server, pods created before the scheduler starts:
/// `SCHED_NODES=1000 SCHED_PODS=5000 cargo test -p skiff-scheduler --test scheduler -- --ignored --nocapture throughput`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput() -> anyhow::Result<()> {
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let (n_nodes, n_pods) = (env("SCHED_NODES", 500), env("SCHED_PODS", 2000));
    // The API server alone: the benchmark's scheduler is the only writer besides the client.
    let control = Control::start_api_only(&[])?;
    let client = control.client().await?;
    let t = Instant::now();
    let names: Vec<String> = (0..n_nodes).map(|i| format!("node-{i}")).collect();
    for chunk in names.chunks(32) {
        for r in join_all(chunk.iter().map(|n| add_node(&client, n, "32", json!({})))).await {
            r?;
        }
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let all: Vec<String> = (0..n_pods).map(|i| format!("tp-{i}")).collect();
    for chunk in all.chunks(32) {
        let creates = chunk.iter().map(|n| {
            let pods = pods.clone();
            async move { pods.create(&PostParams::default(), &pod(n, "tp", "10m", json!({}))).await }
        });
        for r in join_all(creates).await {
            r?;
        }
    }
    println!("setup: {n_nodes} nodes, {n_pods} pods in {:?}", t.elapsed());
    let server_cpu0 = server_cpu(&control);
    let own_cpu0 = cpu_seconds("self");
    let t = Instant::now();
    let config = SchedulerConfig {
        scheduler_name: "tp".into(),
        max_bindings_in_flight: env("SCHED_INFLIGHT", SchedulerConfig::default().max_bindings_in_flight),
        ..Default::default()
    };
    let _s = Running(tokio::spawn(skiff_scheduler::run(client.clone(), config)));
    wait_for("all bound", Duration::from_secs(600), || async {
        // Only the unbound ones, so polling stays cheap.
        let list = pods.list(&ListParams::default().fields("spec.nodeName=").limit(1)).await?;
        Ok(list.items.is_empty().then_some(()))
    })
    .await;
    let el = t.elapsed();
    println!("scheduled {n_pods} pods on {n_nodes} nodes in {el:?}: {:.0} pods/s", n_pods as f64 / el.as_secs_f64());
    println!(
        "cpu: API server {:.2}s, scheduler + test client {:.2}s",
        server_cpu(&control) - server_cpu0,
        cpu_seconds("self") - own_cpu0
    );
    Ok(())
}

/// utime + stime of a process in seconds (Linux).
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn server_cpu(control: &Control) -> f64 {
    let dir = control.dir.path().to_string_lossy().to_string();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = e.file_name().to_string_lossy().to_string();
        if pid.chars().all(|c| c.is_ascii_digit()) {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmd).contains(&dir) {
                return cpu_seconds(&pid);
            }
        }
    }
    0.0
}

/// `cargo xtask bench scheduler` (second part): a ReplicationController of 1,000 replicas created
/// against a full `skiff control` (its own controllers and scheduler) → all 1,000 pods bound.
/// `SCHED_NODES` nodes (default 100).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn rc_of_1000_to_all_bound() -> anyhow::Result<()> {
    let n_nodes = std::env::var("SCHED_NODES").ok().and_then(|v| v.parse().ok()).unwrap_or(100usize);
    let control = Control::start()?;
    let client = control.client().await?;
    let names: Vec<String> = (0..n_nodes).map(|i| format!("node-{i}")).collect();
    for chunk in names.chunks(32) {
        for r in join_all(chunk.iter().map(|n| add_node(&client, n, "32", json!({})))).await {
            r?;
        }
    }
    let rcs: Api<k8s_openapi::api::core::v1::ReplicationController> = Api::namespaced(client.clone(), "default");
    let rc = serde_json::from_value(json!({
        "metadata": {"name": "big"},
        "spec": {"replicas": 1000, "selector": {"app": "big"}, "template": {
            "metadata": {"labels": {"app": "big"}},
            "spec": {"containers": [{"name": "c", "image": "nginx:1.7.9", "resources": {"requests": {"cpu": "10m"}}}]}}}
    }))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let t = Instant::now();
    rcs.create(&PostParams::default(), &rc).await?;
    wait_for("1000 pods bound", Duration::from_secs(600), || async {
        let all = pods.list(&ListParams::default().labels("app=big")).await?;
        let bound = all.items.iter().filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()).count();
        Ok((all.items.len() == 1000 && bound == 1000).then_some(()))
    })
    .await;
    let el = t.elapsed();
    println!(
        "RC of 1000 replicas on {n_nodes} nodes: all pods bound {el:?} after create ({:.0} pods/s)",
        1000.0 / el.as_secs_f64()
    );
    Ok(())
}
