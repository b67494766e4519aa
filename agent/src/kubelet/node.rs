//! The node's Node object and heartbeat: registration with capacity read from the host, the
//! `podCIDR` the node IPAM controller assigns (waited for), and every `status_interval` a status
//! update with the four conditions plus a renewal of the node's Lease in `kube-node-lease`, which
//! is what the node lifecycle controller watches.

use super::KubeletConfig;
use super::status::rfc3339;
use crate::runtime::Runtime;
use anyhow::{Context, Result};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use std::time::Duration;

/// Facts about the host, read once at start.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    pub storage_bytes: i64,
    pub kernel: String,
    pub os_image: String,
    pub machine_id: String,
    pub boot_id: String,
    pub runtime_version: String,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_default()
}

impl NodeInfo {
    pub async fn read(runtime: &dyn Runtime, cfg: &KubeletConfig) -> Result<NodeInfo> {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as i64;
        let meminfo = read("/proc/meminfo");
        let mem_kb: i64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let storage_bytes = {
            let path = std::ffi::CString::new(cfg.root_dir.to_string_lossy().as_bytes())?;
            let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
            // SAFETY: path is a valid C string and `s` a properly sized out-parameter.
            if unsafe { libc::statvfs(path.as_ptr(), &mut s) } == 0 {
                (s.f_blocks as i64) * (s.f_frsize as i64)
            } else {
                0
            }
        };
        let os_image = read("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_else(|| "Linux".into());
        Ok(NodeInfo {
            cpu_millis: cpus * 1000,
            memory_bytes: mem_kb * 1024,
            storage_bytes,
            kernel: read("/proc/sys/kernel/osrelease"),
            os_image,
            machine_id: read("/etc/machine-id"),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
            runtime_version: runtime.version().await.context("asking the container runtime for its version")?,
        })
    }
}

fn status(cfg: &KubeletConfig, info: &NodeInfo, old_conditions: &[Value], runtime_error: Option<&str>) -> Value {
    let now = rfc3339(jiff::Timestamp::now());
    let cond = |ty: &str, st: &str, reason: &str, message: &str| {
        let since = old_conditions
            .iter()
            .find(|c| c["type"] == ty && c["status"] == st)
            .map(|c| c["lastTransitionTime"].clone())
            .unwrap_or_else(|| json!(now));
        json!({"type": ty, "status": st, "reason": reason, "message": message,
               "lastHeartbeatTime": now, "lastTransitionTime": since})
    };
    let resources = json!({
        "cpu": format!("{}", info.cpu_millis / 1000),
        "memory": format!("{}Ki", info.memory_bytes / 1024),
        "ephemeral-storage": format!("{}Ki", info.storage_bytes / 1024),
        "pods": "110",
    });
    json!({
        "capacity": resources,
        "allocatable": resources,
        "conditions": [
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            match runtime_error {
                None => cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
                Some(e) => cond("Ready", "False", "KubeletNotReady", &format!("container runtime is down: {e}")),
            },
        ],
        "addresses": [
            {"type": "InternalIP", "address": cfg.node_ip.to_string()},
            {"type": "Hostname", "address": cfg.node_name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": cfg.port}},
        "nodeInfo": {
            "machineID": info.machine_id, "systemUUID": info.machine_id, "bootID": info.boot_id,
            "kernelVersion": info.kernel, "osImage": info.os_image,
            "containerRuntimeVersion": info.runtime_version,
            "kubeletVersion": "v1.33.0", "kubeProxyVersion": "v1.33.0",
            "operatingSystem": "linux", "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
        },
    })
}

/// Creates the Node if needed, reports its status, and returns its podCIDR (waiting for the node
/// IPAM controller unless the configuration names one).
pub async fn register(client: &Client, cfg: &KubeletConfig, info: &NodeInfo) -> Result<ipnet::Ipv4Net> {
    let nodes: Api<Node> = Api::all(client.clone());
    if nodes.get_opt(&cfg.node_name).await?.is_none() {
        let mut spec = json!({});
        if let Some(c) = cfg.pod_cidr {
            spec = json!({"podCIDR": c.to_string(), "podCIDRs": [c.to_string()]});
        }
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": cfg.node_name, "labels": {
                "kubernetes.io/hostname": cfg.node_name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
                "beta.kubernetes.io/os": "linux",
            }},
            "spec": spec,
        }))?;
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e).context("registering the node"),
        }
    }
    report(client, cfg, info, None).await?;
    if let Some(c) = cfg.pod_cidr {
        return Ok(c);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let node = nodes.get(&cfg.node_name).await?;
        if let Some(c) = node.spec.and_then(|s| s.pod_cidr) {
            return c.parse().with_context(|| format!("node podCIDR {c:?}"));
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "node {} has no podCIDR after 120 s: is the node IPAM controller running (skiff control with its controllers)?",
                cfg.node_name
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn report(client: &Client, cfg: &KubeletConfig, info: &NodeInfo, runtime_error: Option<&str>) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let old = nodes.get_status(&cfg.node_name).await?;
    let old = serde_json::to_value(old.status.unwrap_or_default())?;
    let old_conditions = old["conditions"].as_array().cloned().unwrap_or_default();
    let st = status(cfg, info, &old_conditions, runtime_error);
    nodes.patch_status(&cfg.node_name, &PatchParams::default(), &Patch::Merge(json!({"status": st}))).await?;
    Ok(())
}

async fn renew_lease(client: &Client, cfg: &KubeletConfig) -> Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    let duration = 40;
    match leases.get_opt(&cfg.node_name).await? {
        Some(_) => {
            let patch =
                json!({"spec": {"holderIdentity": cfg.node_name, "leaseDurationSeconds": duration, "renewTime": now}});
            leases.patch(&cfg.node_name, &PatchParams::default(), &Patch::Merge(patch)).await?;
        }
        None => {
            let lease: Lease = serde_json::from_value(json!({
                "metadata": {"name": cfg.node_name, "namespace": "kube-node-lease",
                    "ownerReferences": []},
                "spec": {"holderIdentity": cfg.node_name, "leaseDurationSeconds": duration, "renewTime": now},
            }))?;
            leases.create(&PostParams::default(), &lease).await?;
        }
    }
    Ok(())
}

/// Renews the Lease and reports status every `status_interval`, forever; a container runtime
/// that does not answer makes the node NotReady, as in Kubernetes.
pub async fn heartbeat(
    client: Client,
    runtime: std::sync::Arc<dyn Runtime>,
    cfg: KubeletConfig,
    info: NodeInfo,
) -> Result<()> {
    let mut tick = tokio::time::interval(cfg.status_interval);
    loop {
        tick.tick().await;
        if let Err(e) = renew_lease(&client, &cfg).await {
            tracing::warn!(error = %e, "renewing the node lease");
        }
        let runtime_error = runtime.version().await.err().map(|e| e.to_string());
        if let Err(e) = report(&client, &cfg, &info, runtime_error.as_deref()).await {
            tracing::warn!(error = %e, "reporting node status");
        }
    }
}
