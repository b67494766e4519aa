//! `skiff up`: the whole single-node cluster in this process — API server, scheduler and
//! controllers, the cluster DNS with its `kube-dns` Service, and the node agent (kubelet on
//! Docker, pod network, eBPF service proxy) — each talking to the API like an external client.
//! On SIGTERM (`skiff down`) or Ctrl-C it stops them in reverse order and removes its kernel
//! state: pods' containers, the bridge and nft table, the programs, pins and the blackhole route.

use anyhow::{Context, Result};
use clap::Args;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const PID_FILE: &str = "skiff.pid";
/// "name address" lines: where each component answers, for `skiff status`.
pub const COMPONENTS_FILE: &str = "components";

/// The node's settings for `skiff up` (the control plane's are `ControlArgs`).
#[derive(Args, Clone, Debug)]
pub struct NodeArgs {
    /// Default: the host name.
    #[arg(long)]
    pub node_name: Option<String>,
    /// The node's address (default: the source address of the default route).
    #[arg(long)]
    pub node_ip: Option<Ipv4Addr>,
    /// Interfaces whose tc ingress gets the per-packet NodePort program, comma-separated;
    /// `auto` (default): the default route's interface; `none`: NodePorts answer only to clients
    /// on this machine (socket programs). The pod bridge is added unless `none`.
    #[arg(long, default_value = "auto")]
    pub devices: String,
    /// `ebpf` (default; falls back to `nftables` when the eBPF programs cannot load) or
    /// `nftables`.
    #[arg(long, default_value = "ebpf", value_parser = ["ebpf", "nftables"])]
    pub proxy_mode: String,
    /// The cgroup v2 the socket programs attach to (default: the root, so every process on this
    /// machine, pods included, reaches ClusterIPs).
    #[arg(long, default_value = skiff_agent::proxy::DEFAULT_CGROUP)]
    pub cgroup: PathBuf,
    /// Upstream resolvers for names outside the cluster domain (default: /etc/resolv.conf's).
    #[arg(long, value_delimiter = ',')]
    pub dns_upstream: Vec<SocketAddr>,
    /// Port the cluster DNS listens on (all addresses; kube-dns's endpoint is the node address).
    #[arg(long, default_value_t = 53)]
    pub dns_port: u16,
    /// Use this podCIDR instead of the node IPAM controller's.
    #[arg(long)]
    pub pod_cidr: Option<skiff_agent::Ipv4Net>,
    /// Port of the agent's HTTPS endpoint (logs).
    #[arg(long, default_value_t = 10250)]
    pub agent_port: u16,
    /// The pod bridge.
    #[arg(long, default_value = "skiff0")]
    pub bridge: String,
    /// Skiff's nftables table.
    #[arg(long, default_value = "skiff")]
    pub nft_table: String,
    /// Where the service proxy serves `/metrics`.
    #[arg(long, default_value = "127.0.0.1:10249")]
    pub proxy_metrics: SocketAddr,
    /// Where the dataplane's maps and links are pinned (bpffs).
    #[arg(long, default_value = "/sys/fs/bpf/skiff")]
    pub bpf_pin_dir: PathBuf,
    /// Where the DNS serves `/metrics` and health.
    #[arg(long, default_value = "127.0.0.1:9153")]
    pub dns_metrics: SocketAddr,
}

fn say(msg: &str) {
    println!("==> {msg}");
}

/// The kube-dns Service at the cluster DNS address and its EndpointSlice naming this node's DNS.
/// Created if missing; the slice is rewritten each time (the node address may have changed).
async fn ensure_kube_dns(client: &Client, node_name: &str, node_ip: Ipv4Addr, port: u16) -> Result<()> {
    let services: Api<Service> = Api::namespaced(client.clone(), "kube-system");
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system",
                     "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS", "kubernetes.io/cluster-service": "true"}},
        // Local: each node's pods ask that node's DNS, at the socket — never through conntrack.
        "spec": {"clusterIP": "10.96.0.10", "internalTrafficPolicy": "Local", "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": port},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": port}]}
    }))?;
    match services.create(&PostParams::default(), &svc).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {
            // A data directory from before the policy: bring it up to date.
            let p = json!({"spec": {"internalTrafficPolicy": "Local"}});
            services.patch("kube-dns", &PatchParams::default(), &Patch::Merge(&p)).await?;
        }
        Err(e) => return Err(e).context("creating the kube-dns Service"),
    }
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "kube-system");
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kube-dns-skiff", "namespace": "kube-system",
                     "labels": {"kubernetes.io/service-name": "kube-dns", "endpointslice.kubernetes.io/managed-by": "skiff-up"}},
        "addressType": "IPv4",
        "ports": [{"name": "dns", "port": port, "protocol": "UDP"}, {"name": "dns-tcp", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [node_ip.to_string()], "nodeName": node_name, "conditions": {"ready": true}}]
    });
    if slices.get_opt("kube-dns-skiff").await?.is_some() {
        slices.patch("kube-dns-skiff", &PatchParams::default(), &Patch::Merge(&slice)).await?;
    } else {
        slices
            .create(&PostParams::default(), &serde_json::from_value(slice)?)
            .await
            .context("creating kube-dns's EndpointSlice")?;
    }
    Ok(())
}

async fn wait_node_ready(client: &Client, name: &str, timeout: Duration) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(n) = nodes.get_opt(name).await? {
            let ready = n
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if ready {
                return Ok(());
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "node {name} not Ready within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asks the DNS for `kubernetes.default.svc.<domain>` over UDP until it answers with an address.
async fn wait_dns(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let sock = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
    // A minimal query: id 0x5353, RD, one question, type A, class IN.
    let mut q = vec![0x53, 0x53, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in "kubernetes.default.svc.cluster.local".split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 512];
    loop {
        sock.send_to(&q, addr).await?;
        if let Ok(Ok((n, _))) = tokio::time::timeout(Duration::from_millis(300), sock.recv_from(&mut buf)).await {
            // NOERROR with at least one answer.
            if n > 12 && buf[3] & 0x0f == 0 && u16::from_be_bytes([buf[6], buf[7]]) > 0 {
                return Ok(());
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "kube-dns at {addr} did not answer within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn up(cfg: skiff_control::ControlConfig, node: NodeArgs, upstreams: Vec<SocketAddr>) -> Result<()> {
    let started = Instant::now();
    let data_dir = cfg.data_dir.clone();
    let pid_path = data_dir.join(PID_FILE);
    if let Some(pid) = crate::running_pid(&data_dir) {
        anyhow::bail!(
            "a cluster is already running on {} (pid {pid}); `skiff down --data-dir {}` stops it",
            data_dir.display(),
            data_dir.display()
        );
    }
    let (nodeport_devices, nodeport_xdp_devices) = crate::nodeport_devices(&node.devices, &node.bridge)?;
    let node_name = node.node_name.clone().unwrap_or_else(skiff_agent::kubelet::hostname);
    let node_ip = node.node_ip.or_else(crate::default_ipv4).unwrap_or(Ipv4Addr::LOCALHOST);
    let service_range: skiff_agent::route::Ipv4Cidr =
        cfg.service_cidr.parse().map_err(|e| anyhow::anyhow!("--service-cidr {:?}: {e}", cfg.service_cidr))?;
    say(&format!("data directory {}", data_dir.display()));
    say(&format!(
        "starting the API server ({} store), scheduler and controllers",
        match cfg.store {
            skiff_control::StoreKind::Embedded => "embedded",
            skiff_control::StoreKind::Etcd => "etcd",
        }
    ));
    let control = skiff_control::start(cfg).await?;
    std::fs::write(&pid_path, std::process::id().to_string())?;
    let kc = kube::config::Kubeconfig::read_from(&control.kubeconfig)?;
    let token = kc.auth_infos.iter().find_map(|a| a.auth_info.as_ref()?.token.clone());
    let client = Client::try_from(kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?)?;

    say(&format!("starting the cluster DNS on {node_ip}:{} (kube-dns 10.96.0.10)", node.dns_port));
    ensure_kube_dns(&client, &node_name, node_ip, node.dns_port).await?;
    let dns = skiff_dns::start(
        client.clone(),
        skiff_dns::DnsConfig {
            // All addresses: the node address may be the pod bridge's, which the agent makes later.
            listen: SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), node.dns_port),
            http_listen: Some(node.dns_metrics),
            upstreams,
            ..Default::default()
        },
    )
    .await
    .context("starting the cluster DNS")?;

    say(&format!("starting the node agent ({node_name}, {node_ip}): pods on Docker, pod network, eBPF service proxy"));
    let agent_cfg = skiff_agent::AgentConfig {
        kubelet: skiff_agent::kubelet::KubeletConfig {
            node_name: node_name.clone(),
            root_dir: data_dir.join("agent"),
            node_ip,
            port: node.agent_port,
            bridge: node.bridge.clone(),
            nft_table: node.nft_table.clone(),
            auth_token: token.map(|t| secrecy::ExposeSecret::expose_secret(&t).to_string()),
            pod_cidr: node.pod_cidr,
            cleanup_on_exit: true,
            ..Default::default()
        },
        proxy: Some(skiff_agent::proxy::NodeProxyConfig {
            dataplane: skiff_agent::dataplane::Config { pin_dir: node.bpf_pin_dir.clone(), ..Default::default() },
            cgroup: node.cgroup.clone(),
            service_range,
            nodeport_devices,
            nodeport_xdp_devices,
            mode: if node.proxy_mode == "nftables" {
                skiff_agent::proxy::ProxyMode::Nftables
            } else {
                skiff_agent::proxy::ProxyMode::Ebpf
            },
            cleanup_on_exit: true,
            ..Default::default()
        }),
        metrics_listen: Some(node.proxy_metrics),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let agent_client = client.clone();
    let mut agent = tokio::spawn(async move {
        let mut rx = stop_rx;
        skiff_agent::run(agent_client, agent_cfg, async move {
            let _ = rx.wait_for(|s| *s).await;
        })
        .await
    });

    let ready = async {
        wait_node_ready(&client, &node_name, Duration::from_secs(60)).await?;
        say("node Ready");
        wait_dns(SocketAddr::new(node_ip.into(), node.dns_port), Duration::from_secs(30)).await?;
        say("kube-dns answers");
        anyhow::Ok(())
    };
    tokio::select! {
        r = ready => r?,
        r = &mut agent => {
            let _ = std::fs::remove_file(&pid_path);
            return Err(r.map_err(anyhow::Error::from).and_then(|r| r).err().unwrap_or_else(|| anyhow::anyhow!("the agent stopped")));
        }
    }

    let components =
        format!("agent {node_ip}:{}\ndataplane {}\ndns {}\n", node.agent_port, node.proxy_metrics, dns.dns_addr);
    std::fs::write(data_dir.join(COMPONENTS_FILE), components)?;
    println!();
    println!("Skiff is up ({:.1} s).", started.elapsed().as_secs_f64());
    println!("  API server:  https://{}", control.addr);
    println!("  node:        {node_name} ({node_ip})");
    println!("  DNS:         10.96.0.10 (kube-dns) → {node_ip}:{}", node.dns_port);
    println!("  kubeconfig:  {}", control.kubeconfig.display());
    println!();
    println!("  export KUBECONFIG={}", control.kubeconfig.display());
    println!("  kubectl get nodes");
    println!();
    println!("Stop with Ctrl-C or `skiff down --data-dir {}`.", data_dir.display());

    let result = tokio::select! {
        r = control.wait() => r,
        r = &mut agent => r.map_err(anyhow::Error::from).and_then(|r| r),
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = crate::terminate() => Ok(()),
    };
    say("stopping: agent (containers, pod network, dataplane), DNS, control plane");
    let _ = stop_tx.send(true);
    if !agent.is_finished() {
        match tokio::time::timeout(Duration::from_secs(60), agent).await {
            Ok(Ok(Err(e))) => eprintln!("agent: {e:#}"),
            Ok(Err(e)) => eprintln!("agent: {e}"),
            Err(_) => eprintln!("agent: did not stop within 60 s"),
            _ => {}
        }
    }
    dns.shutdown().await;
    let _ = std::fs::remove_file(&pid_path);
    say("stopped");
    result
}
