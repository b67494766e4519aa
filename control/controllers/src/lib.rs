//! The controller manager's controllers, each a level-triggered reconcile loop over the API.
//!
//! [`run`] starts every enabled controller against an API server through a `kube::Client`, like
//! any other client. Each controller is a module with a `register(ctx, queue)` function (which
//! maps informer events to keys of its queue) and a `reconcile(key, ctx)` function; the shared
//! informers (one watch per resource, with namespace / owner / custom indexes) and the work
//! queues (dedup, one reconcile per key at a time, error backoff, timed requeues) live in
//! [`runtime`]. The garbage collector keeps its own graph over every discovered kind ([`gc`]).
//!
//! Nothing a restart would lose is kept in memory: every decision is taken from the API's
//! objects (statuses, annotations, finalizers). After each write a reconcile waits for the
//! shared cache to show it, so the next reconcile of the same key never acts on older state.

pub mod daemonset;
pub mod deployment;
mod discovery;
pub mod endpoints;
pub mod endpointslice;
pub mod gc;
pub mod job;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
mod replicas;
pub mod replicaset;
pub mod replicationcontroller;
pub mod runtime;
pub mod serviceaccount;
pub mod util;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Node, Pod, ReplicationController, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher;
use kube::{Api, Client};
use runtime::{Informer, ObjKey, Queue};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Every controller's name, as `--controllers` of kube-controller-manager spells them.
pub const CONTROLLERS: &[&str] = &[
    "replicationcontroller",
    "replicaset",
    "deployment",
    "endpoints",
    "endpointslice",
    "serviceaccount",
    "namespace",
    "garbagecollector",
    "nodeipam",
    "nodelifecycle",
    "daemonset",
    "job",
];

#[derive(Clone, Debug)]
pub struct ControllersConfig {
    /// A node whose Lease is not renewed for this long is marked `Ready=Unknown` and tainted
    /// `node.kubernetes.io/unreachable:NoExecute` (kube-controller-manager's
    /// `--node-monitor-grace-period`, 40 s).
    pub node_monitor_grace: Duration,
    /// How long pods on a tainted (unreachable / not-ready) node stay when they have no matching
    /// toleration of their own (`--pod-eviction-timeout`, 300 s). Pods with a matching
    /// toleration are evicted after its `tolerationSeconds` (never, without one); the API
    /// server's default tolerations give every pod 300 s.
    pub pod_eviction_timeout: Duration,
    /// The pod network that node IPAM divides (`--cluster-cidr`).
    pub cluster_cidr: String,
    /// The prefix length of each node's range (`--node-cidr-mask-size`, 24).
    pub node_cidr_mask_size: u8,
    /// First delay before a failed Job pod is replaced; doubles per failure (10 s).
    pub job_backoff_base: Duration,
    /// Upper bound of that delay (6 min).
    pub job_backoff_max: Duration,
    /// Parallel reconciles per controller.
    pub workers: usize,
    /// Which controllers run: `*` for all, a name to enable one, `-name` to disable one
    /// (kube-controller-manager's `--controllers`).
    pub controllers: Vec<String>,
}

impl Default for ControllersConfig {
    fn default() -> Self {
        ControllersConfig {
            node_monitor_grace: Duration::from_secs(40),
            pod_eviction_timeout: Duration::from_secs(300),
            cluster_cidr: "10.244.0.0/16".to_string(),
            node_cidr_mask_size: 24,
            job_backoff_base: Duration::from_secs(10),
            job_backoff_max: Duration::from_secs(360),
            workers: 5,
            controllers: vec!["*".to_string()],
        }
    }
}

impl ControllersConfig {
    pub fn enabled(&self, name: &str) -> bool {
        let mut on = false;
        for c in &self.controllers {
            if c == "-*" {
                return false;
            }
            if c == "*" {
                on = true;
            } else if c == name {
                on = true;
            } else if c.strip_prefix('-') == Some(name) {
                return false;
            }
        }
        on
    }
}

/// What every reconcile sees: the client, the configuration, the shared informers and the
/// event recorder.
pub struct Ctx {
    pub client: Client,
    pub config: ControllersConfig,
    pub pods: Arc<Informer<Pod>>,
    pub rcs: Arc<Informer<ReplicationController>>,
    pub replicasets: Arc<Informer<ReplicaSet>>,
    pub deployments: Arc<Informer<Deployment>>,
    pub daemonsets: Arc<Informer<DaemonSet>>,
    pub jobs: Arc<Informer<Job>>,
    pub services: Arc<Informer<Service>>,
    pub endpoints: Arc<Informer<Endpoints>>,
    pub slices: Arc<Informer<EndpointSlice>>,
    pub nodes: Arc<Informer<Node>>,
    pub leases: Arc<Informer<Lease>>,
    pub namespaces: Arc<Informer<Namespace>>,
    pub serviceaccounts: Arc<Informer<ServiceAccount>>,
    pub recorder: util::Recorder,
    /// The API's resources (for the namespace controller), refreshed every 30 s.
    pub(crate) discovery: discovery::Cached,
    /// Node IPAM's ranges handed out but maybe not yet seen by the node informer (range →
    /// node, when).
    pub(crate) ipam_pending: std::sync::Mutex<std::collections::HashMap<String, (String, tokio::time::Instant)>>,
}

/// Pod index values: the node a pod is bound to (`node:<name>`).
fn pod_index(p: &Pod) -> Vec<String> {
    util::pod_node(p).map(|n| vec![format!("node:{n}")]).unwrap_or_default()
}

/// EndpointSlice index values: the service it belongs to (`<ns>/<service>`).
fn slice_index(s: &EndpointSlice) -> Vec<String> {
    let ns = s.metadata.namespace.clone().unwrap_or_default();
    s.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(endpointslice::SERVICE_NAME_LABEL))
        .map(|n| vec![format!("{ns}/{n}")])
        .unwrap_or_default()
}

impl Ctx {
    fn new(client: Client, config: ControllersConfig) -> Arc<Ctx> {
        let wc = watcher::Config::default;
        Arc::new(Ctx {
            pods: Informer::new("pods", Api::all(client.clone()), wc(), Some(Box::new(pod_index))),
            rcs: Informer::new("replicationcontrollers", Api::all(client.clone()), wc(), None),
            replicasets: Informer::new("replicasets", Api::all(client.clone()), wc(), None),
            deployments: Informer::new("deployments", Api::all(client.clone()), wc(), None),
            daemonsets: Informer::new("daemonsets", Api::all(client.clone()), wc(), None),
            jobs: Informer::new("jobs", Api::all(client.clone()), wc(), None),
            services: Informer::new("services", Api::all(client.clone()), wc(), None),
            endpoints: Informer::new("endpoints", Api::all(client.clone()), wc(), None),
            slices: Informer::new("endpointslices", Api::all(client.clone()), wc(), Some(Box::new(slice_index))),
            nodes: Informer::new("nodes", Api::all(client.clone()), wc(), None),
            leases: Informer::new("leases", Api::namespaced(client.clone(), "kube-node-lease"), wc(), None),
            namespaces: Informer::new("namespaces", Api::all(client.clone()), wc(), None),
            serviceaccounts: Informer::new("serviceaccounts", Api::all(client.clone()), wc(), None),
            recorder: util::Recorder::new(client.clone()),
            discovery: discovery::Cached::new(Duration::from_secs(30)),
            ipam_pending: Default::default(),
            client,
            config,
        })
    }

    async fn wait_synced(&self) {
        self.pods.wait_synced().await;
        self.rcs.wait_synced().await;
        self.replicasets.wait_synced().await;
        self.deployments.wait_synced().await;
        self.daemonsets.wait_synced().await;
        self.jobs.wait_synced().await;
        self.services.wait_synced().await;
        self.endpoints.wait_synced().await;
        self.slices.wait_synced().await;
        self.nodes.wait_synced().await;
        self.leases.wait_synced().await;
        self.namespaces.wait_synced().await;
        self.serviceaccounts.wait_synced().await;
    }

    fn spawn_informers(&self, tasks: &mut tokio::task::JoinSet<()>) {
        tasks.spawn(self.pods.clone().run());
        tasks.spawn(self.rcs.clone().run());
        tasks.spawn(self.replicasets.clone().run());
        tasks.spawn(self.deployments.clone().run());
        tasks.spawn(self.daemonsets.clone().run());
        tasks.spawn(self.jobs.clone().run());
        tasks.spawn(self.services.clone().run());
        tasks.spawn(self.endpoints.clone().run());
        tasks.spawn(self.slices.clone().run());
        tasks.spawn(self.nodes.clone().run());
        tasks.spawn(self.leases.clone().run());
        tasks.spawn(self.namespaces.clone().run());
        tasks.spawn(self.serviceaccounts.clone().run());
    }
}

type Starter = Box<dyn FnOnce(&mut tokio::task::JoinSet<()>) + Send>;

fn controller<F, Fut>(ctx: &Arc<Ctx>, name: &'static str, register: fn(&Arc<Ctx>, Queue), reconcile: F) -> Starter
where
    F: Fn(ObjKey, Arc<Ctx>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<runtime::Action>> + Send + 'static,
{
    let (queue, rx) = Queue::new();
    register(ctx, queue);
    let ctx = ctx.clone();
    let workers = ctx.config.workers.max(1);
    Box::new(move |tasks: &mut tokio::task::JoinSet<()>| {
        tasks.spawn(runtime::run_queue(name, rx, workers, move |k| reconcile(k, ctx.clone())));
    })
}

/// Starts every enabled controller and runs until one of them stops (which only happens when
/// the client's runtime goes away) or the future is dropped (which stops them all).
pub async fn run(client: Client, config: ControllersConfig) -> anyhow::Result<()> {
    let ctx = Ctx::new(client.clone(), config.clone());
    let mut starters: Vec<Starter> = Vec::new();
    let on = |n: &str| config.enabled(n);
    if on("replicationcontroller") {
        starters.push(controller(
            &ctx,
            "replicationcontroller",
            replicationcontroller::register,
            replicationcontroller::reconcile,
        ));
    }
    if on("replicaset") {
        starters.push(controller(&ctx, "replicaset", replicaset::register, replicaset::reconcile));
    }
    if on("deployment") {
        starters.push(controller(&ctx, "deployment", deployment::register, deployment::reconcile));
    }
    if on("endpoints") {
        starters.push(controller(&ctx, "endpoints", endpoints::register, endpoints::reconcile));
    }
    if on("endpointslice") {
        starters.push(controller(&ctx, "endpointslice", endpointslice::register, endpointslice::reconcile));
    }
    if on("serviceaccount") {
        starters.push(controller(&ctx, "serviceaccount", serviceaccount::register, serviceaccount::reconcile));
    }
    if on("namespace") {
        starters.push(controller(&ctx, "namespace", namespace::register, namespace::reconcile));
    }
    if on("nodeipam") {
        starters.push(controller(&ctx, "nodeipam", nodeipam::register, nodeipam::reconcile));
    }
    if on("nodelifecycle") {
        starters.push(controller(&ctx, "nodelifecycle", nodelifecycle::register, nodelifecycle::reconcile));
    }
    if on("daemonset") {
        starters.push(controller(&ctx, "daemonset", daemonset::register, daemonset::reconcile));
    }
    if on("job") {
        starters.push(controller(&ctx, "job", job::register, job::reconcile));
    }
    let mut tasks = tokio::task::JoinSet::new();
    ctx.spawn_informers(&mut tasks);
    ctx.wait_synced().await;
    tracing::info!("controller informers synced");
    for s in starters {
        s(&mut tasks);
    }
    if on("garbagecollector") {
        tasks.spawn(gc::run(client.clone(), config.workers.max(1)));
    }
    // Tasks run forever; the first to end (a panic) ends the manager.
    match tasks.join_next().await {
        Some(Err(e)) if e.is_panic() => anyhow::bail!("a controller panicked: {e}"),
        _ => anyhow::bail!("a controller stopped"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_selection() {
        let c = |v: &[&str]| ControllersConfig {
            controllers: v.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        assert!(c(&["*"]).enabled("job"));
        assert!(!c(&["*", "-job"]).enabled("job"));
        assert!(c(&["*", "-job"]).enabled("daemonset"));
        assert!(c(&["job"]).enabled("job"));
        assert!(!c(&["job"]).enabled("daemonset"));
        assert!(!c(&["-*"]).enabled("job"));
        assert!(!c(&[]).enabled("job"));
    }
}
