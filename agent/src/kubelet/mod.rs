//! The kubelet part of the agent: the node's registration and heartbeat ([`node`]), pods on a
//! container [`Runtime`] with their network ([`skiff_podnet`]), volumes, environment, probes and
//! status ([`pod`]), and the logs endpoint the API server proxies to ([`server`]).
//!
//! Level-triggered like Kubernetes' kubelet: one worker per pod compares the pod's spec with what
//! the runtime reports (relisted every second and on every watch event) and does the next step.
//! Everything needed after a restart is in the API (specs) or in container labels (attempts,
//! restart counts); the IP allocations are on disk ([`skiff_podnet`]).

pub mod env;
pub mod node;
pub mod pod;
pub mod probe;
pub mod server;
pub mod status;
pub mod volumes;

use crate::runtime::{Runtime, labels};
use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Configuration of [`run`].
#[derive(Clone, Debug)]
pub struct KubeletConfig {
    pub node_name: String,
    /// Pod directories (volumes, resolv.conf, hosts) and the IP allocations.
    pub root_dir: PathBuf,
    /// The node's InternalIP, where the API server reaches the logs endpoint.
    pub node_ip: Ipv4Addr,
    /// Port of the logs endpoint (Kubernetes' kubelet port).
    pub port: u16,
    pub cluster_dns: Ipv4Addr,
    pub cluster_domain: String,
    pub cluster_cidr: ipnet::Ipv4Net,
    /// Used instead of waiting for the node IPAM controller to set `spec.podCIDR`.
    pub pod_cidr: Option<ipnet::Ipv4Net>,
    pub bridge: String,
    pub nft_table: String,
    /// First crash-loop back-off (Kubernetes: 10 s), doubled per restart up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Node status and Lease renewal period (Kubernetes: 10 s).
    pub status_interval: Duration,
    /// The image of the sandbox container that owns a pod's namespaces.
    pub sandbox_image: String,
    /// Bearer token the logs endpoint accepts (the API server presents it).
    pub auth_token: Option<String>,
    /// How long an image pull may take before it counts as failed.
    pub pull_timeout: Duration,
    /// A cgroup v2 directory that every container's main process is moved into once started:
    /// the service proxy's socket programs attach there when they are not on the root cgroup
    /// (tests), so pods still reach ClusterIPs. Docker places containers only in the v1
    /// hierarchies on this hybrid-mode machine, so the v2 placement is Skiff's to choose.
    pub pod_cgroup: Option<PathBuf>,
    /// On shutdown, stop and remove every container of this node and tear the pod network down
    /// (`skiff down`). Off for an agent that will be restarted: its pods keep running.
    pub cleanup_on_exit: bool,
}

impl Default for KubeletConfig {
    fn default() -> Self {
        Self {
            node_name: hostname(),
            root_dir: PathBuf::from("/var/lib/skiff/agent"),
            node_ip: Ipv4Addr::LOCALHOST,
            port: 10250,
            cluster_dns: Ipv4Addr::new(10, 96, 0, 10),
            cluster_domain: "cluster.local".into(),
            cluster_cidr: "10.244.0.0/16".parse().expect("valid"),
            pod_cidr: None,
            bridge: "skiff0".into(),
            nft_table: "skiff".into(),
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            status_interval: Duration::from_secs(10),
            sandbox_image: "skiff/pause:1".into(),
            auth_token: None,
            pull_timeout: Duration::from_secs(60),
            pod_cgroup: None,
            cleanup_on_exit: false,
        }
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_lowercase())
        .unwrap_or_else(|_| "node".into())
}

/// What every pod worker shares.
pub struct Kubelet {
    pub cfg: KubeletConfig,
    pub client: Client,
    pub runtime: Arc<dyn Runtime>,
    /// The same runtime, counting changes, for [`Kubelet::containers_of`].
    counting: Arc<crate::runtime::Counting>,
    /// One listing of this node's containers shared by all pod workers (the kubelet's PLEG
    /// relist), valid while younger than a second and no container changed since.
    relist: tokio::sync::Mutex<Option<Relist>>,
    pub net: skiff_podnet::PodNetwork,
    pub pods: Store<Pod>,
    pub services: Store<Service>,
    /// Node allocatable (cpu millis, memory bytes), for `resourceFieldRef` without limits.
    pub allocatable: (i64, i64),
    pub(crate) workers: Mutex<HashMap<String, Arc<pod::Worker>>>,
    /// Set when the agent stops with cleanup: workers finish their current step and exit, so
    /// nothing starts a container while the cleanup removes them.
    pub(crate) stopping: std::sync::atomic::AtomicBool,
}

struct Relist {
    taken: std::time::Instant,
    mutations: u64,
    by_pod: HashMap<String, Vec<crate::runtime::ContainerInfo>>,
}

impl Kubelet {
    /// The containers of one pod, from the shared listing when it is current: one Docker call
    /// per second for the whole node instead of one per pod.
    pub async fn containers_of(&self, uid: &str) -> Result<Vec<crate::runtime::ContainerInfo>> {
        let mut g = self.relist.lock().await;
        let current = g.as_ref().is_some_and(|r| {
            r.mutations == self.counting.mutations() && r.taken.elapsed() < Duration::from_millis(900)
        });
        if !current {
            // Read before listing: a change during the call makes the result stale at once.
            let mutations = self.counting.mutations();
            let taken = std::time::Instant::now();
            let all = self.runtime.list(&format!("{}={}", labels::MANAGED, self.cfg.node_name)).await?;
            let mut by_pod: HashMap<String, Vec<crate::runtime::ContainerInfo>> = HashMap::new();
            for c in all {
                by_pod.entry(c.label(labels::POD_UID).to_string()).or_default().push(c);
            }
            *g = Some(Relist { taken, mutations, by_pod });
        }
        Ok(g.as_ref().and_then(|r| r.by_pod.get(uid).cloned()).unwrap_or_default())
    }

    pub fn pod_label_filter(uid: &str) -> String {
        format!("{}={uid}", labels::POD_UID)
    }

    pub fn find_pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.pods.get(&reflector::ObjectRef::new(name).within(namespace))
    }
}

/// Runs the kubelet until `shutdown` completes: registers the node, sets up the pod network,
/// then keeps every pod bound to this node in sync.
pub async fn run(
    client: Client,
    runtime: Arc<dyn Runtime>,
    cfg: KubeletConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    std::fs::create_dir_all(&cfg.root_dir).with_context(|| format!("creating {}", cfg.root_dir.display()))?;
    let node_info = node::NodeInfo::read(&*runtime, &cfg).await?;
    let allocatable = (node_info.cpu_millis, node_info.memory_bytes);
    let pod_cidr = node::register(&client, &cfg, &node_info).await?;
    tracing::info!(node = %cfg.node_name, %pod_cidr, "node registered");
    let net = skiff_podnet::PodNetwork::setup(skiff_podnet::PodNetConfig {
        bridge: cfg.bridge.clone(),
        pod_cidr,
        cluster_cidr: cfg.cluster_cidr,
        state_dir: cfg.root_dir.join("ipam"),
        nft_table: cfg.nft_table.clone(),
    })
    .await
    .context("setting up the pod network")?;

    let field = format!("spec.nodeName={}", cfg.node_name);
    let (pods, pod_writer) = reflector::store::<Pod>();
    let (services, svc_writer) = reflector::store::<Service>();
    let kick = Arc::new(Notify::new());
    let k1 = kick.clone();
    let pod_watch = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default().fields(&field))
        .default_backoff()
        .reflect(pod_writer)
        .for_each(move |_| {
            k1.notify_one();
            futures::future::ready(())
        });
    let svc_watch = watcher(Api::<Service>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(svc_writer)
        .for_each(|_| futures::future::ready(()));
    let counting = Arc::new(crate::runtime::Counting::new(runtime));
    let kubelet = Arc::new(Kubelet {
        cfg: cfg.clone(),
        client: client.clone(),
        runtime: counting.clone(),
        counting,
        relist: tokio::sync::Mutex::new(None),
        net,
        pods,
        services,
        allocatable,
        workers: Mutex::new(HashMap::new()),
        stopping: std::sync::atomic::AtomicBool::new(false),
    });
    let heartbeat = node::heartbeat(client.clone(), kubelet.runtime.clone(), cfg.clone(), node_info);
    let server = server::serve(kubelet.clone());
    let supervise = supervise(kubelet.clone(), kick);
    tokio::select! {
        _ = pod_watch => anyhow::bail!("pod watch ended"),
        _ = svc_watch => anyhow::bail!("service watch ended"),
        r = heartbeat => r,
        r = server => r,
        r = supervise => r,
        _ = shutdown => {
            if kubelet.cfg.cleanup_on_exit {
                cleanup(&kubelet).await?;
            }
            Ok(())
        }
    }
}

/// Removes every container of this node (each stopped with its pod's grace period, at most
/// 10 s) and the pod network's kernel state. IP allocations stay, so pods come back with the
/// same addresses.
async fn cleanup(k: &Kubelet) -> Result<()> {
    k.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let busy = k.workers.lock().unwrap().values().filter(|w| !w.finished()).count();
        if busy == 0 || tokio::time::Instant::now() > deadline {
            break;
        }
        for w in k.workers.lock().unwrap().values() {
            w.kick();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let filter = format!("{}={}", labels::MANAGED, k.cfg.node_name);
    let containers = k.runtime.list(&filter).await?;
    tracing::info!(containers = containers.len(), "removing this node's containers");
    let longest = containers.iter().filter_map(|c| c.label(labels::GRACE).parse::<u64>().ok()).max().unwrap_or(30);
    pod::kill_all(k, &containers, Some(Duration::from_secs(longest.min(10)))).await;
    skiff_podnet::PodNetwork::teardown(k.net.config()).await
}

/// Starts a worker for every pod of this node, wakes them on every change and every second, and
/// cleans up containers whose pod no longer exists (deleted while the agent was down).
async fn supervise(k: Arc<Kubelet>, kick: Arc<Notify>) -> Result<()> {
    k.pods.wait_until_ready().await.context("pod cache")?;
    k.services.wait_until_ready().await.context("service cache")?;
    let mut orphan_check = tokio::time::interval(Duration::from_secs(5));
    loop {
        let pods = k.pods.state();
        let live: HashSet<String> = pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
        {
            let mut workers = k.workers.lock().unwrap();
            workers.retain(|uid, w| live.contains(uid) || !w.finished());
            for p in &pods {
                let Some(uid) = p.metadata.uid.clone() else { continue };
                let w = workers.entry(uid.clone()).or_insert_with(|| pod::Worker::spawn(k.clone(), uid));
                w.kick();
            }
        }
        tokio::select! {
            _ = kick.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = orphan_check.tick() => {
                if let Err(e) = cleanup_orphans(&k, &live).await {
                    tracing::warn!(error = %e, "cleaning up containers of deleted pods");
                }
            }
        }
    }
}

async fn cleanup_orphans(k: &Kubelet, live: &HashSet<String>) -> Result<()> {
    let filter = format!("{}={}", labels::MANAGED, k.cfg.node_name);
    let containers = k.runtime.list(&filter).await?;
    let mut orphans: HashMap<String, Vec<crate::runtime::ContainerInfo>> = HashMap::new();
    for c in containers {
        let uid = c.label(labels::POD_UID).to_string();
        if !live.contains(&uid) && !k.workers.lock().unwrap().contains_key(&uid) {
            orphans.entry(uid).or_default().push(c);
        }
    }
    for (uid, cs) in orphans {
        tracing::info!(%uid, containers = cs.len(), "removing containers of a pod that no longer exists");
        pod::kill_all(k, &cs, None).await;
        k.net.detach(&uid).await?;
        let _ = std::fs::remove_dir_all(volumes::pod_dir(&k.cfg.root_dir, &uid));
    }
    let mut keep = live.clone();
    keep.extend(k.workers.lock().unwrap().keys().cloned());
    k.net.retain(&keep).await?;
    Ok(())
}
