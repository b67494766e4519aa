//! The node agent: the [`kubelet`] (node registration and heartbeat, pods on a container
//! [`runtime`] — Docker — with the pod network of `skiff-podnet`, logs endpoint) and the eBPF
//! service proxy: the [`dataplane`] (programs, pinned maps, service table), the [`proxy`] that
//! fills it from watched Services and EndpointSlices, and the service range's blackhole [`route`].

pub mod dataplane;
pub mod kubelet;
pub mod proxy;
pub mod route;
pub mod runtime;

pub use ipnet::Ipv4Net;
pub use skiff_podnet as podnet;

use anyhow::Result;
use std::net::SocketAddr;
use std::sync::Arc;

/// What `skiff agent` runs.
pub struct AgentConfig {
    pub kubelet: kubelet::KubeletConfig,
    /// The eBPF service proxy; `None` leaves service routing to something else.
    pub proxy: Option<proxy::NodeProxyConfig>,
    pub metrics_listen: Option<SocketAddr>,
}

/// Runs the kubelet and (optionally) the service proxy until `shutdown` completes or one fails.
pub async fn run(
    client: kube::Client,
    mut cfg: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    // Socket programs on a cgroup other than the root (tests) see only the processes in it: the
    // kubelet then moves each container there, so pods keep reaching ClusterIPs.
    if cfg.kubelet.pod_cgroup.is_none() {
        cfg.kubelet.pod_cgroup = cfg
            .proxy
            .as_ref()
            .map(|p| p.cgroup.clone())
            .filter(|c| c.as_path() != std::path::Path::new(proxy::DEFAULT_CGROUP));
    }
    let runtime: Arc<dyn runtime::Runtime> = Arc::new(runtime::docker::DockerRuntime::connect().await?);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // Either half ending (an error, or the shutdown signal) stops the other.
    let node_name = cfg.kubelet.node_name.clone();
    let kubelet = async {
        let r = kubelet::run(client.clone(), runtime, cfg.kubelet, stopped(stop_rx.clone())).await;
        let _ = stop_tx.send(true);
        r
    };
    let proxy = async {
        match cfg.proxy {
            Some(pcfg) => {
                let p = proxy::Proxy::new(proxy::ProxyConfig {
                    metrics_listen: cfg.metrics_listen,
                    track_node_addresses: true,
                    node_name: Some(node_name),
                    ..Default::default()
                })?;
                let r = proxy::run_node_proxy(client.clone(), &pcfg, &p, stopped(stop_rx.clone())).await;
                let _ = stop_tx.send(true);
                r
            }
            None => {
                stopped(stop_rx.clone()).await;
                Ok(())
            }
        }
    };
    let signal = async {
        tokio::select! {
            _ = shutdown => { let _ = stop_tx.send(true); }
            _ = stopped(stop_rx.clone()) => {}
        }
    };
    let (k, p, ()) = tokio::join!(kubelet, proxy, signal);
    k.and(p)
}
