//! Skiff's control plane: the Kubernetes-compatible API server over a pluggable store.
//!
//! Request flow: [`api`] routes and authenticates, [`api::rest`] is the one generic REST path,
//! [`registry`] says per kind how to default, validate and handle status, [`cache`] mirrors
//! storage for lists and watches, and `skiff-storage` persists.

pub mod api;
pub mod bootstrap;
pub mod cache;
pub mod health;
pub mod leader;
pub mod loops;
pub mod pki;
pub mod registry;
pub mod status;
pub mod strict;

use anyhow::{Context, Result};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Embedded,
    Etcd,
}

#[derive(Clone, Debug)]
pub struct ControlConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub store: StoreKind,
    pub etcd_endpoints: Vec<String>,
    pub service_cidr: String,
    /// The scheduler and controllers run beside the API server (under leader election) unless
    /// this is `None`.
    pub loops: Option<loops::LoopsConfig>,
}

impl ControlConfig {
    pub fn new(data_dir: PathBuf) -> Self {
        ControlConfig {
            data_dir,
            listen: "127.0.0.1:6443".parse().expect("static address"),
            store: StoreKind::Embedded,
            etcd_endpoints: vec!["http://127.0.0.1:2379".into()],
            service_cidr: "10.96.0.0/12".into(),
            loops: Some(loops::LoopsConfig::default()),
        }
    }
}

/// A running API server.
pub struct Control {
    pub state: api::Shared,
    pub kubeconfig: PathBuf,
    pub addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl Control {
    pub async fn wait(self) -> Result<()> {
        self.server.await.context("API server task")?;
        Ok(())
    }
}

pub async fn open_store(cfg: &ControlConfig) -> Result<Arc<dyn skiff_storage::Store>> {
    Ok(match cfg.store {
        StoreKind::Embedded => {
            let path = cfg.data_dir.join("store.redb");
            Arc::new(
                skiff_storage::embedded::EmbeddedStore::open(&path)
                    .with_context(|| format!("opening the embedded store at {}", path.display()))?,
            )
        }
        StoreKind::Etcd => Arc::new(
            skiff_storage::etcd::EtcdStore::connect(&cfg.etcd_endpoints)
                .await
                .with_context(|| format!("connecting to etcd at {}", cfg.etcd_endpoints.join(",")))?,
        ),
    })
}

/// Starts the API server: store, credentials, kubeconfig, watch cache, bootstrap objects.
pub async fn start(cfg: ControlConfig) -> Result<Control> {
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let store = open_store(&cfg).await?;
    let allocator = api::alloc::Allocator::new(&cfg.service_cidr)?;
    let api_service_ip = allocator.nth(1);
    let pki = pki::load_or_create(&cfg.data_dir.join("pki"), &[cfg.listen.ip(), IpAddr::V4(api_service_ip)])?;
    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("binding {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let client_ip = if addr.ip().is_unspecified() { IpAddr::from([127, 0, 0, 1]) } else { addr.ip() };
    let server_url = format!("https://{}", SocketAddr::new(client_ip, addr.port()));
    let kubeconfig = cfg.data_dir.join("kubeconfig");
    std::fs::write(&kubeconfig, pki::kubeconfig(&server_url, &pki.ca_pem, &pki.admin_token))?;

    let cache = cache::Cache::start(store.clone()).await?;
    let docs: Vec<skiff_openapi::ResourceDoc> = registry::kinds()
        .iter()
        .map(|k| {
            let subs = k.subresources.iter().map(|s| s.name()).collect();
            (k.doc)(k.plural, k.namespaced, subs, k.verbs())
        })
        .collect();
    let openapi = skiff_openapi::build(&docs, &patch_meta);
    let state = Arc::new(api::AppState {
        store: store.clone(),
        cache,
        admin_token: pki.admin_token.clone(),
        openapi,
        allocator,
        server_address: SocketAddr::new(client_ip, addr.port()).to_string(),
        health: Arc::new(health::Health::new(store.clone())),
    });
    let node_ip = if addr.ip().is_loopback() || addr.ip().is_unspecified() {
        primary_ip().unwrap_or(client_ip)
    } else {
        addr.ip()
    };
    bootstrap::ensure(&state, &node_ip.to_string(), addr.port()).await?;
    tokio::spawn(compactor(store));

    let tls = Arc::new(pki::server_tls(&pki)?);
    let app = api::router(state.clone());
    let server = tokio::spawn(serve(listener, tls, app));
    tracing::info!(%addr, kubeconfig = %kubeconfig.display(), "API server listening");
    if let Some(loops_cfg) = cfg.loops.clone() {
        let (kc, health) = (kubeconfig.clone(), state.health.clone());
        tokio::spawn(async move {
            if let Err(e) = loops::run(&kc, loops_cfg, health.clone()).await {
                tracing::error!(error = %e, "scheduler and controllers stopped");
                health.set("scheduler", false, &format!("stopped: {e}"));
                health.set("controller-manager", false, &format!("stopped: {e}"));
            }
        });
    }
    Ok(Control { state, kubeconfig, addr, server })
}

/// Patch metadata for the OpenAPI documents comes from the same table the server's strategic
/// merge uses, so what kubectl computes and what the server applies agree.
fn patch_meta(group: &str, kind: &str, path: &[&str]) -> Option<skiff_openapi::PatchMeta> {
    use skiff_patch::ListStrategy;
    let gk = skiff_patch::GroupKind::new(group, kind);
    let retain = skiff_patch::retains_keys(&gk, path);
    match skiff_patch::list_strategy(&gk, path) {
        Some(ListStrategy::Merge { key }) => Some(skiff_openapi::PatchMeta {
            strategy: if retain { "merge,retainKeys" } else { "merge" },
            merge_key: Some(key),
        }),
        Some(ListStrategy::MergePrimitives) => Some(skiff_openapi::PatchMeta { strategy: "merge", merge_key: None }),
        _ if retain => Some(skiff_openapi::PatchMeta { strategy: "retainKeys", merge_key: None }),
        _ => None,
    }
}

/// The address of the interface holding the default route (what the `kubernetes` endpoints
/// advertise when listening on loopback or all addresses).
pub fn primary_ip() -> Option<IpAddr> {
    // Connecting a UDP socket sends nothing; it only asks the kernel for the source address.
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("10.255.255.255:9").ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

async fn serve(listener: tokio::net::TcpListener, tls: Arc<rustls::ServerConfig>, app: axum::Router) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tower::ServiceExt;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                app.clone().oneshot(req.map(axum::body::Body::new))
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                .await;
        });
    }
}

/// Keeps storage bounded: every minute, history older than the previous tick's revision goes.
async fn compactor(store: Arc<dyn skiff_storage::Store>) {
    let mut previous = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        if previous > 0 {
            if let Err(e) = store.compact(previous).await {
                tracing::warn!(error = %e, revision = previous, "compaction failed");
            }
        }
        previous = store.current_revision().await.unwrap_or(previous);
    }
}
