//! Test scaffolding: a `skiff control` with the controller manager running in-process against
//! it, simulated nodes, and a small test kubelet.
#![allow(dead_code)]

use anyhow::Result;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use skiff_controllers::ControllersConfig;
use skiff_tests::Control;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Annotation on a pod (template): the test kubelet leaves it Running but not Ready.
pub const NOT_READY: &str = "skiff.test/not-ready";
/// Annotation on a pod (template): the test kubelet ends it with this exit code (0: Succeeded).
pub const EXIT: &str = "skiff.test/exit";

pub struct Env {
    pub control: Control,
    pub client: Client,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub kubelet: Option<Kubelet>,
}

impl Drop for Env {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Whether `skiff control` can be told not to run its own controllers and scheduler
/// (`--controllers= --disable-scheduler`): these tests run the controllers in-process with
/// their own settings and bind pods with the test kubelet, and two controller managers must
/// not act on one API server.
fn control_has_controllers_flag() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        std::process::Command::new(skiff_tests::skiff_bin())
            .args(["control", "--help"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("--controllers"))
            .unwrap_or(false)
    })
}

impl Env {
    /// A control plane with the controllers running (`config` adjusted by `tune`) and, when
    /// `nodes` is not empty, a test kubelet for those nodes.
    pub async fn start(nodes: &[&str], tune: impl FnOnce(&mut ControllersConfig)) -> Result<Env> {
        let control = tokio::task::spawn_blocking(|| {
            if control_has_controllers_flag() { Control::start_api_only(&[]) } else { Control::start() }
        })
        .await??;
        let client = control.client().await?;
        let mut config = ControllersConfig::default();
        tune(&mut config);
        let c = client.clone();
        let mgr = tokio::spawn(async move {
            if let Err(e) = skiff_controllers::run(c, config).await {
                eprintln!("controller manager stopped: {e:#}");
            }
        });
        let mut env = Env { control, client: client.clone(), tasks: vec![mgr], kubelet: None };
        if !nodes.is_empty() {
            env.kubelet = Some(Kubelet::start(client, nodes).await?);
        }
        Ok(env)
    }

    pub fn kubelet(&self) -> &Kubelet {
        self.kubelet.as_ref().expect("a kubelet")
    }

    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        self.control.kubectl_ok(args)
    }

    pub fn kubectl_stdin_ok(&self, args: &[&str], stdin: &str) -> String {
        let out = self.control.kubectl_stdin(args, Some(stdin));
        assert!(out.status.success(), "kubectl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Creates objects from YAML through kubectl (a real client's requests).
    pub fn apply(&self, yaml: &str) -> String {
        self.kubectl_stdin_ok(&["create", "-f", "-"], yaml)
    }

    pub fn pods(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Pods of a namespace matching a label selector, without the terminating ones.
    pub async fn live_pods(&self, ns: &str, selector: &str) -> Vec<Pod> {
        let list = self.pods(ns).list(&ListParams::default().labels(selector)).await.expect("list pods");
        list.items.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect()
    }
}

/// Polls `f` until it returns Some, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A simulated kubelet for a set of nodes: registers them, renews their leases, binds pending
/// pods round-robin (standing in for the scheduler, honouring a DaemonSet's node affinity),
/// marks their pods Running/Ready with a pod IP, finishes pods annotated with an exit code and
/// completes graceful deletions.
pub struct Kubelet {
    client: Client,
    alive: Arc<Mutex<HashSet<String>>>,
    nodes: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub async fn create_node(client: &Client, name: &str) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
        "spec": {},
    }))?;
    let created = nodes.create(&PostParams::default(), &node).await?;
    let now = Timestamp::now().to_string();
    let status = json!({"status": {
        "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
        "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status",
                        "lastHeartbeatTime": now, "lastTransitionTime": now}],
    }});
    nodes.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": name, "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name, "uid": created.uid()}]},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": Timestamp::now().to_string()},
    }))?;
    leases.create(&PostParams::default(), &lease).await?;
    Ok(())
}

impl Kubelet {
    pub async fn start(client: Client, nodes: &[&str]) -> Result<Kubelet> {
        for n in nodes {
            create_node(&client, n).await?;
        }
        let mut k = Kubelet {
            client: client.clone(),
            alive: Arc::new(Mutex::new(nodes.iter().map(|s| s.to_string()).collect())),
            nodes: Arc::new(Mutex::new(nodes.iter().map(|s| s.to_string()).collect())),
            tasks: Vec::new(),
        };
        k.tasks.push(tokio::spawn(renew_leases(client.clone(), k.alive.clone())));
        k.tasks.push(tokio::spawn(run_pods(client, k.alive.clone(), k.nodes.clone())));
        Ok(k)
    }

    /// Registers one more node with this kubelet.
    pub async fn add_node(&self, name: &str) -> Result<()> {
        create_node(&self.client, name).await?;
        self.nodes.lock().unwrap().push(name.to_string());
        self.alive.lock().unwrap().insert(name.to_string());
        Ok(())
    }

    /// The node stops renewing its lease and its pods are no longer looked after.
    pub fn stop_node(&self, name: &str) {
        self.alive.lock().unwrap().remove(name);
    }

    /// The node comes back.
    pub fn resume_node(&self, name: &str) {
        self.alive.lock().unwrap().insert(name.to_string());
    }
}

async fn renew_leases(client: Client, alive: Arc<Mutex<HashSet<String>>>) {
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    loop {
        let names: Vec<String> = alive.lock().unwrap().iter().cloned().collect();
        for n in names {
            let patch = json!({"spec": {"renewTime": Timestamp::now().to_string()}});
            let _ = leases.patch(&n, &PatchParams::default(), &Patch::Merge(&patch)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The node a DaemonSet-style pod is pinned to by its required node affinity.
fn affinity_node(p: &Pod) -> Option<String> {
    let v = serde_json::to_value(p.spec.as_ref()?.affinity.as_ref()?).ok()?;
    let terms =
        v["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"].as_array()?.clone();
    for t in terms {
        for f in t["matchFields"].as_array().cloned().unwrap_or_default() {
            if f["key"] == "metadata.name" && f["operator"] == "In" {
                return f["values"][0].as_str().map(str::to_string);
            }
        }
    }
    None
}

struct KubeletState {
    client: Client,
    alive: Arc<Mutex<HashSet<String>>>,
    nodes: Arc<Mutex<Vec<String>>>,
    next: usize,
    ips: HashMap<String, u32>,
    finishing: HashSet<String>,
}

async fn run_pods(client: Client, alive: Arc<Mutex<HashSet<String>>>, nodes: Arc<Mutex<Vec<String>>>) {
    let api: Api<Pod> = Api::all(client.clone());
    let mut st = KubeletState { client, alive, nodes, next: 0, ips: HashMap::new(), finishing: HashSet::new() };
    let mut stream = watcher::watcher(api.clone(), watcher::Config::default()).default_backoff().boxed();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            ev = stream.next() => match ev {
                Some(Ok(watcher::Event::Apply(p))) | Some(Ok(watcher::Event::InitApply(p))) => st.process(p).await,
                Some(_) => {}
                None => return,
            },
            _ = tick.tick() => {
                // A periodic look at every pod (e.g. after a node comes back).
                if let Ok(list) = api.list(&ListParams::default()).await {
                    for p in list.items {
                        st.process(p).await;
                    }
                }
            }
        }
    }
}

impl KubeletState {
    async fn process(&mut self, pod: Pod) {
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let papi: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty());
        let Some(node) = node else {
            if pod.metadata.deletion_timestamp.is_some() {
                return;
            }
            // Bind: to the pinned node, else round-robin over live nodes.
            let target = match affinity_node(&pod) {
                Some(n) => self.alive.lock().unwrap().contains(&n).then_some(n),
                None => {
                    let alive = self.alive.lock().unwrap().clone();
                    let live: Vec<String> =
                        self.nodes.lock().unwrap().iter().filter(|n| alive.contains(*n)).cloned().collect();
                    if live.is_empty() {
                        None
                    } else {
                        self.next += 1;
                        Some(live[self.next % live.len()].clone())
                    }
                }
            };
            if let Some(target) = target {
                let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name}, "target": {"apiVersion": "v1", "kind": "Node", "name": target}});
                let _ =
                    papi.create_subresource::<Value, Value>("binding", &name, &PostParams::default(), &binding).await;
            }
            return;
        };
        if !self.alive.lock().unwrap().contains(&node) {
            return;
        }
        if pod.metadata.deletion_timestamp.is_some() {
            let _ = papi.delete(&name, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await;
            return;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        let annotations = pod.annotations().clone();
        let idx = self.nodes.lock().unwrap().iter().position(|n| *n == node).unwrap_or(0) as u32;
        if phase == "Pending" || phase.is_empty() {
            let n = self.ips.entry(node.clone()).or_insert(1);
            *n += 1;
            let ip = format!("10.244.{}.{}", idx, *n);
            let ready = !annotations.contains_key(NOT_READY);
            let now = Timestamp::now().to_string();
            let containers: Vec<Value> = pod
                .spec
                .as_ref()
                .map(|s| s.containers.iter().map(|c| json!({"name": c.name, "image": c.image, "imageID": "", "ready": ready, "restartCount": 0, "started": true, "state": {"running": {"startedAt": now}}})).collect())
                .unwrap_or_default();
            let st = if ready { "True" } else { "False" };
            let status = json!({"status": {
                "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "10.0.0.1", "startTime": now,
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                    {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": st, "lastTransitionTime": now},
                    {"type": "Ready", "status": st, "lastTransitionTime": now},
                ],
                "containerStatuses": containers,
            }});
            let _ = papi.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await;
            return;
        }
        if phase == "Running" {
            if let Some(code) = annotations.get(EXIT).and_then(|c| c.parse::<i32>().ok()) {
                let key = format!("{ns}/{name}/{}", pod.uid().unwrap_or_default());
                if self.finishing.insert(key) {
                    let papi = papi.clone();
                    let name = name.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        let now = Timestamp::now().to_string();
                        let phase = if code == 0 { "Succeeded" } else { "Failed" };
                        let reason = if code == 0 { "Completed" } else { "Error" };
                        let status = json!({"status": {
                            "phase": phase,
                            "conditions": [
                                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                                {"type": "ContainersReady", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now},
                                {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now},
                            ],
                            "containerStatuses": [{"name": "main", "image": "busybox", "imageID": "", "ready": false, "restartCount": 0, "started": false,
                                "state": {"terminated": {"exitCode": code, "reason": reason, "startedAt": now, "finishedAt": now}}}],
                        }});
                        let _ = papi.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await;
                    });
                }
            }
        }
    }
}

/// Sets a pod's Ready condition (as a kubelet's readiness probe would).
pub async fn set_ready(client: &Client, ns: &str, name: &str, ready: bool) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod = api.get_status(name).await?;
    let mut status = serde_json::to_value(pod.status.unwrap_or_default())?;
    let st = if ready { "True" } else { "False" };
    let now = Timestamp::now().to_string();
    if let Some(conds) = status["conditions"].as_array_mut() {
        for c in conds.iter_mut() {
            if c["type"] == "Ready" || c["type"] == "ContainersReady" {
                if c["status"] != st {
                    c["lastTransitionTime"] = json!(now);
                }
                c["status"] = json!(st);
            }
        }
    }
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&json!({"status": status}))).await?;
    Ok(())
}
