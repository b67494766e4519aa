//! The container runtime as the pod logic sees it: a small trait in Kubernetes' terms (containers
//! with labels, images, exec, logs), so that `kubelet/` never speaks a runtime's own API. Docker,
//! through `bollard`, is the backend that must work ([`docker::DockerRuntime`]).
//!
//! Everything the agent needs to find its containers again after a restart lives in container
//! labels ([`labels`]), not in the agent's memory: adoption after `kill -9` is a relist.

pub mod docker;

use anyhow::Result;
use bytes::Bytes;
use futures::stream::BoxStream;
use std::collections::BTreeMap;
use std::time::Duration;

/// Label keys Skiff puts on every container it creates.
pub mod labels {
    /// Present on every container Skiff manages (value: the node name).
    pub const MANAGED: &str = "io.skiff.node";
    pub const POD_UID: &str = "io.skiff.pod.uid";
    pub const POD_NAME: &str = "io.skiff.pod.name";
    pub const POD_NAMESPACE: &str = "io.skiff.pod.namespace";
    /// The container's name in the pod spec; `POD` for the sandbox.
    pub const CONTAINER_NAME: &str = "io.skiff.container.name";
    /// `sandbox`, `init` or `app`.
    pub const CONTAINER_KIND: &str = "io.skiff.container.kind";
    /// How many times this container name had been restarted when this instance was created: the
    /// pod's `restartCount` survives agent restarts because it is read back from here.
    pub const ATTEMPT: &str = "io.skiff.container.attempt";
    /// The pod's termination grace period, so an orphan (pod gone from the API while the agent was
    /// down) is still stopped the way its spec asked.
    pub const GRACE: &str = "io.skiff.pod.grace";
}

/// What a container is doing, in Kubernetes' three states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Created,
    Running,
    Exited,
}

/// A container as the runtime reports it.
#[derive(Clone, Debug)]
pub struct ContainerInfo {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub state: State,
    pub exit_code: i64,
    pub oom_killed: bool,
    /// The runtime's own error for a container that could not start (e.g. "exec: not found").
    pub error: String,
    pub created_at: Option<jiff::Timestamp>,
    pub started_at: Option<jiff::Timestamp>,
    pub finished_at: Option<jiff::Timestamp>,
    pub pid: i64,
    pub image: String,
    pub image_id: String,
}

impl ContainerInfo {
    pub fn label(&self, key: &str) -> &str {
        self.labels.get(key).map(String::as_str).unwrap_or("")
    }
    pub fn attempt(&self) -> u32 {
        self.label(labels::ATTEMPT).parse().unwrap_or(0)
    }
}

/// A host path made visible inside a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bind {
    pub host: String,
    pub container: String,
    pub read_only: bool,
}

/// Which network namespace a container gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Network {
    /// Its own, empty (loopback only): the sandbox, which the pod network then wires.
    None,
    /// The host's (`hostNetwork: true`).
    Host,
    /// The namespace of another container (the pod's sandbox).
    Container(String),
}

/// What to create.
#[derive(Clone, Debug)]
pub struct ContainerConfig {
    pub name: String,
    pub image: String,
    /// Replaces the image's entrypoint (`command:`).
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's cmd (`args:`).
    pub cmd: Option<Vec<String>>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub binds: Vec<Bind>,
    pub network: Network,
    /// Share the IPC namespace of this container (the sandbox), as pods do.
    pub ipc_from: Option<String>,
    pub hostname: Option<String>,
    pub memory_limit: Option<i64>,
    pub nano_cpus: Option<i64>,
    pub cpu_shares: Option<i64>,
    pub tty: bool,
    pub stdin: bool,
    pub privileged: bool,
    pub user: Option<String>,
}

/// `kubectl logs` options, already parsed.
#[derive(Clone, Debug, Default)]
pub struct LogOptions {
    pub follow: bool,
    pub tail: Option<i64>,
    pub timestamps: bool,
    pub since_seconds: Option<i64>,
}

/// The result of pulling an image.
#[derive(Debug)]
pub enum PullError {
    /// The registry could not be reached or refused the image.
    Failed(String),
}

#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// `docker://20.10.24`, as the Node's `containerRuntimeVersion`.
    async fn version(&self) -> Result<String>;
    /// Every container (any state) carrying `label`.
    async fn list(&self, label: &str) -> Result<Vec<ContainerInfo>>;
    async fn inspect(&self, id: &str) -> Result<Option<ContainerInfo>>;
    async fn create(&self, cfg: &ContainerConfig) -> Result<String>;
    async fn start(&self, id: &str) -> Result<()>;
    /// SIGTERM, then SIGKILL after `grace`.
    async fn stop(&self, id: &str, grace: Duration) -> Result<()>;
    /// Removes a container (killing it if it still runs); a missing container is fine.
    async fn remove(&self, id: &str) -> Result<()>;
    async fn image_present(&self, image: &str) -> Result<bool>;
    async fn pull(&self, image: &str) -> std::result::Result<(), PullError>;
    /// Runs `cmd` in the container; its exit code, or an error after `timeout`.
    async fn exec(&self, id: &str, cmd: &[String], timeout: Duration) -> Result<i64>;
    /// The container's output, stdout and stderr interleaved as written.
    fn logs(&self, id: &str, opts: &LogOptions) -> BoxStream<'static, Result<Bytes>>;
}

/// A runtime that counts the calls that change containers (create, start, stop, remove), so a
/// cached listing can tell whether it is still current ([`Counting::mutations`]).
pub struct Counting {
    inner: std::sync::Arc<dyn Runtime>,
    mutations: std::sync::atomic::AtomicU64,
}

impl Counting {
    pub fn new(inner: std::sync::Arc<dyn Runtime>) -> Self {
        Self { inner, mutations: std::sync::atomic::AtomicU64::new(0) }
    }
    pub fn mutations(&self) -> u64 {
        self.mutations.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn bump(&self) {
        self.mutations.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl Runtime for Counting {
    async fn version(&self) -> Result<String> {
        self.inner.version().await
    }
    async fn list(&self, label: &str) -> Result<Vec<ContainerInfo>> {
        self.inner.list(label).await
    }
    async fn inspect(&self, id: &str) -> Result<Option<ContainerInfo>> {
        self.inner.inspect(id).await
    }
    async fn create(&self, cfg: &ContainerConfig) -> Result<String> {
        self.bump();
        let r = self.inner.create(cfg).await;
        self.bump();
        r
    }
    async fn start(&self, id: &str) -> Result<()> {
        self.bump();
        let r = self.inner.start(id).await;
        self.bump();
        r
    }
    async fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        self.bump();
        let r = self.inner.stop(id, grace).await;
        self.bump();
        r
    }
    async fn remove(&self, id: &str) -> Result<()> {
        self.bump();
        let r = self.inner.remove(id).await;
        self.bump();
        r
    }
    async fn image_present(&self, image: &str) -> Result<bool> {
        self.inner.image_present(image).await
    }
    async fn pull(&self, image: &str) -> std::result::Result<(), PullError> {
        self.inner.pull(image).await
    }
    async fn exec(&self, id: &str, cmd: &[String], timeout: Duration) -> Result<i64> {
        self.inner.exec(id, cmd, timeout).await
    }
    fn logs(&self, id: &str, opts: &LogOptions) -> BoxStream<'static, Result<Bytes>> {
        self.inner.logs(id, opts)
    }
}
