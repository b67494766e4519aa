//! The cluster DNS server (issue 6).
//!
//! Watches Services, EndpointSlices and Pods through the API (kube-rs reflectors), builds an
//! immutable [`zone::Zone`] snapshot of prepared answers for the cluster domain, and serves it over
//! UDP and TCP; everything else is forwarded to upstream resolvers with a small cache. `/metrics`,
//! `/healthz` and `/readyz` are served on a separate HTTP port.
//!
//! Entry points: [`run`] (the `skiff dns` command) and [`start`] (embedding, tests).

pub mod authority;
pub mod index;
pub mod metrics;
pub mod server;
pub mod wire;
pub mod zone;

use anyhow::{Context, Result};
use futures::StreamExt;
use index::{Index, PodInfo, SliceInfo, SvcInfo};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use server::{PathConfig, Shared};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use zone::Zone;

/// Configuration of the DNS server.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// UDP and TCP address (same port for both). Port 0 picks a free port.
    pub listen: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz`; `None` serves no HTTP.
    pub http_listen: Option<SocketAddr>,
    /// The cluster domain (default `cluster.local`).
    pub domain: String,
    /// TTL of cluster records and of the SOA (negative answers), seconds (default 5).
    pub ttl: u32,
    /// Where names outside the cluster domain go. Empty: such queries get SERVFAIL.
    pub upstreams: Vec<SocketAddr>,
    /// Per-upstream timeout of a forwarded query.
    pub forward_timeout: Duration,
    /// Entries in the forwarding cache.
    pub cache_size: usize,
    /// Entries in the response cache of cluster answers (the hot path); 0 turns it off.
    pub answer_cache: usize,
    /// Tasks receiving on the UDP socket.
    pub udp_workers: usize,
    /// Answer a pod's search-path expansion of an external name (`example.com.<ns>.svc.D`) in
    /// one round trip (CNAME to the bare name + its records). Assumes pods' search lists are the
    /// cluster default without host search domains; turn off otherwise.
    pub autopath: bool,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            listen: "0.0.0.0:53".parse().unwrap(),
            http_listen: Some("127.0.0.1:9153".parse().unwrap()),
            domain: "cluster.local".into(),
            ttl: 5,
            upstreams: Vec::new(),
            forward_timeout: Duration::from_secs(2),
            cache_size: 10_000,
            answer_cache: 100_000,
            udp_workers: 2,
            autopath: true,
        }
    }
}

/// The nameservers of a resolv.conf (read only; port 53). Loopback stub resolvers are kept.
pub fn resolv_conf_upstreams(path: &Path) -> Vec<SocketAddr> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// A running server. Dropping it stops every task.
pub struct DnsServer {
    /// The bound UDP/TCP address.
    pub dns_addr: SocketAddr,
    /// The bound HTTP address, if any.
    pub http_addr: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl DnsServer {
    /// Waits until the first full list of Services, EndpointSlices and Pods is being served.
    pub async fn wait_synced(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.shared.synced.load(Ordering::SeqCst) {
            anyhow::ensure!(Instant::now() < deadline, "DNS index did not sync within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Stops every task and waits until they are gone (so the ports can be bound again; queries
    /// still being forwarded keep the UDP socket until their timeout).
    pub async fn shutdown(mut self) {
        let tasks = std::mem::take(&mut self.tasks);
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Runs until one of the tasks ends (they do not, normally).
    pub async fn wait(mut self) -> Result<()> {
        let (r, _, rest) = futures::future::select_all(std::mem::take(&mut self.tasks)).await;
        self.tasks = rest;
        r.context("a DNS task failed")?;
        anyhow::bail!("a DNS task ended unexpectedly")
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn bind(listen: SocketAddr) -> Result<(Arc<UdpSocket>, TcpListener)> {
    let mut last = None;
    for _ in 0..if listen.port() == 0 { 20 } else { 1 } {
        let udp = UdpSocket::bind(listen).await.with_context(|| format!("binding UDP {listen}"))?;
        let addr = udp.local_addr()?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((Arc::new(udp), tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .map(anyhow::Error::from)
        .unwrap_or_else(|| anyhow::anyhow!("no port"))
        .context(format!("binding TCP {listen}")))
}

/// Starts the server: binds, starts the watchers and listeners, and returns at once (the zone
/// starts empty and fills when the watches have listed; see [`DnsServer::wait_synced`]).
pub async fn start(client: Client, config: DnsConfig) -> Result<DnsServer> {
    let (udp, tcp) = bind(config.listen).await?;
    let dns_addr = udp.local_addr()?;
    let path = PathConfig {
        domain: config.domain.clone(),
        upstreams: config.upstreams.clone(),
        forward_timeout: config.forward_timeout,
        forward_cache: config.cache_size,
        answer_cache: config.answer_cache,
        autopath: config.autopath,
    };
    let shared = Arc::new(Shared::new(Zone::empty(&config.domain, config.ttl), &path)?);
    let mut tasks = Vec::new();
    for _ in 0..config.udp_workers.max(1) {
        tasks.push(tokio::spawn(server::udp_loop(udp.clone(), shared.clone())));
    }
    tasks.push(tokio::spawn(server::tcp_loop(tcp, shared.clone())));
    tasks.push(tokio::spawn(index(client, config.domain.clone(), config.ttl, shared.clone())));
    let mut http_addr = None;
    if let Some(listen) = config.http_listen {
        let l = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding HTTP {listen}"))?;
        http_addr = Some(l.local_addr()?);
        let app = http_app(shared.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(l, app).await {
                tracing::error!(error = %e, "DNS HTTP server failed");
            }
        }));
    }
    tracing::info!(%dns_addr, ?http_addr, domain = %config.domain, upstreams = ?config.upstreams, "cluster DNS serving");
    Ok(DnsServer { dns_addr, http_addr, shared, tasks })
}

/// `skiff dns --kubeconfig F [--listen ADDR]`: serves until interrupted. `kubeconfig` `None`
/// uses kube's default resolution (`KUBECONFIG`, `~/.kube/config`, in-cluster).
pub async fn run(kubeconfig: Option<&Path>, config: DnsConfig) -> Result<()> {
    let client = match kubeconfig {
        Some(path) => {
            let kc =
                kube::config::Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
            Client::try_from(kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?)?
        }
        None => Client::try_default().await?,
    };
    let server = start(client, config).await?;
    tokio::select! {
        r = server.wait() => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

fn http_app(shared: Arc<Shared>) -> axum::Router {
    use axum::http::StatusCode;
    use axum::routing::get;
    let m = shared.clone();
    let r = shared.clone();
    axum::Router::new()
        .route(
            "/metrics",
            get(move || async move { ([("content-type", "text/plain; version=0.0.4")], m.metrics.render()) }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move {
                if r.synced.load(Ordering::SeqCst) {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "index not synced")
                }
            }),
        )
}

/// Follows the three resources and rebuilds the zone snapshot after each batch of changes.
async fn index(client: Client, domain: String, ttl: u32, shared: Arc<Shared>) {
    let changed = Arc::new(Notify::new());
    let services: Shared_<SvcInfo> = Default::default();
    let slices: Shared_<SliceInfo> = Default::default();
    let pods: Shared_<PodInfo> = Default::default();
    let cfg = watcher::Config::default();
    let t1 = tokio::spawn(follow(
        watcher(Api::<Service>::all(client.clone()), cfg.clone()),
        services.clone(),
        SvcInfo::from_service,
        changed.clone(),
        "services",
    ));
    let t2 = tokio::spawn(follow(
        watcher(Api::<EndpointSlice>::all(client.clone()), cfg.clone()),
        slices.clone(),
        SliceInfo::from_slice,
        changed.clone(),
        "endpointslices",
    ));
    let t3 = tokio::spawn(follow(
        watcher(Api::<Pod>::all(client), cfg),
        pods.clone(),
        PodInfo::from_pod,
        changed.clone(),
        "pods",
    ));
    let _guards = [AbortOnDrop(t1), AbortOnDrop(t2), AbortOnDrop(t3)];
    let listed = || lock(&services).listed && lock(&slices).listed && lock(&pods).listed;
    while !listed() {
        changed.notified().await;
    }
    let mut since = Instant::now();
    loop {
        // Built (and the old snapshot freed) off the async workers, so queries are not held up.
        let (sv, sl, po, d, sh) = (services.clone(), slices.clone(), pods.clone(), domain.clone(), shared.clone());
        let records = tokio::task::spawn_blocking(move || {
            let zone = {
                let (sv, sl, po) = (lock(&sv), lock(&sl), lock(&po));
                Zone::from_index(&d, ttl, sv.live.values(), sl.live.values(), po.live.values())
            };
            let records = zone.records;
            sh.set_zone(zone);
            index::prune_interned();
            records
        })
        .await
        .unwrap_or(0);
        shared.metrics.rebuilt(since.elapsed(), records);
        if !shared.synced.swap(true, Ordering::SeqCst) {
            tracing::info!(records, "cluster DNS index synced");
        }
        changed.notified().await;
        since = Instant::now();
        // Coalesce a burst of events into one rebuild.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

type Shared_<V> = Arc<std::sync::Mutex<Index<V>>>;

fn lock<V>(m: &Shared_<V>) -> std::sync::MutexGuard<'_, Index<V>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn follow<K, V, S>(
    stream: S,
    index: Shared_<V>,
    convert: fn(&K) -> Option<V>,
    changed: Arc<Notify>,
    what: &'static str,
) where
    K: kube::Resource,
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
{
    let mut stream = std::pin::pin!(stream.default_backoff());
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(ev) => {
                if lock(&index).apply(ev, convert) {
                    changed.notify_one();
                }
            }
            Err(e) => tracing::warn!(resource = what, error = %e, "DNS watch failed; retrying"),
        }
    }
}

struct AbortOnDrop(JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
