//! The pod network of one node — what a CNI bridge plugin, host-local IPAM and kube-proxy's
//! masquerading do together:
//!
//! - a bridge (`skiff0`) holding the first address of the node's podCIDR, which is every pod's
//!   gateway; the kernel's connected route for the podCIDR makes the host reach pods;
//! - per pod a veth pair: the host end enslaved to the bridge, the other end moved into the
//!   sandbox container's network namespace, renamed `eth0`, addressed, with a default route;
//! - IP allocations as one file per address under a state directory ([`ipam`]), created with
//!   `O_EXCL`, so they survive agent restarts and a crash never hands out an address twice;
//! - masquerading of pod traffic that leaves the cluster range, in Skiff's own nftables table
//!   ([`nft`]), never touching anyone else's;
//! - Docker sets iptables' FORWARD policy to DROP, and with `br_netfilter`
//!   (`bridge-nf-call-iptables=1`, which Docker turns on) even bridged pod-to-pod frames traverse
//!   that chain: accept rules for the bridge go into Docker's `DOCKER-USER` chain, through the
//!   `iptables` binary so they land in whichever backend (nft or legacy) Docker itself used.
//!
//! Namespace work happens on a dedicated OS thread that `setns`es into the pod's namespace and
//! opens its own netlink socket there: network namespaces are per thread, so this must never run
//! on a tokio worker.

pub mod ipam;
mod link;
pub mod nft;

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct PodNetConfig {
    /// The node's bridge, e.g. `skiff0`.
    pub bridge: String,
    /// This node's podCIDR; its first host address is the gateway on the bridge.
    pub pod_cidr: Ipv4Net,
    /// The whole pod range: traffic to it is not masqueraded.
    pub cluster_cidr: Ipv4Net,
    /// Where the IP allocations live.
    pub state_dir: PathBuf,
    /// Skiff's own nftables table (family `ip`).
    pub nft_table: String,
}

pub struct PodNetwork {
    cfg: PodNetConfig,
    ipam: ipam::Ipam,
}

impl PodNetConfig {
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.pod_cidr.network()) + 1)
    }
}

/// The host-side veth name for a pod: deterministic, so a restarted agent finds it again.
pub fn host_veth(key: &str) -> String {
    format!("veth{:08x}", fnv(key) as u32)
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

impl PodNetwork {
    /// Idempotent: bridge with the gateway address, up; IP forwarding on; Skiff's nft table with
    /// the masquerade rule (replaced atomically); accept rules for Docker's FORWARD drop.
    pub async fn setup(cfg: PodNetConfig) -> Result<PodNetwork> {
        std::fs::create_dir_all(&cfg.state_dir).with_context(|| format!("creating {}", cfg.state_dir.display()))?;
        link::ensure_bridge(&cfg.bridge, cfg.gateway(), cfg.pod_cidr.prefix_len()).await?;
        tracing::debug!(bridge = %cfg.bridge, "bridge ready");
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enabling IPv4 forwarding")?;
        nft::install(&cfg.nft_table, cfg.pod_cidr, cfg.cluster_cidr, &cfg.bridge)
            .context("installing the nftables table")?;
        tracing::debug!(table = %cfg.nft_table, "nftables table installed");
        docker_forward_accept(&cfg.bridge, true);
        tracing::debug!("FORWARD accept rules in place");
        let ipam = ipam::Ipam::new(cfg.state_dir.clone(), cfg.pod_cidr);
        Ok(PodNetwork { cfg, ipam })
    }

    pub fn config(&self) -> &PodNetConfig {
        &self.cfg
    }

    /// Wires pod `key` into the namespace at `netns` as `ifname`; returns its IP. Idempotent.
    pub async fn attach(&self, key: &str, netns: &Path, ifname: &str) -> Result<Ipv4Addr> {
        let ip = self.ipam.allocate(key)?;
        let host = host_veth(key);
        let prefix = self.cfg.pod_cidr.prefix_len();
        if link::host_side_ready(&self.cfg.bridge, &host).await?
            && link::pod_side_ready(netns, ifname, ip).await.unwrap_or(false)
        {
            return Ok(ip);
        }
        link::delete(&host).await?;
        link::create_pod_link(&self.cfg.bridge, &host, netns, ifname, ip, prefix, self.cfg.gateway())
            .await
            .with_context(|| format!("wiring pod {key} into {}", netns.display()))?;
        Ok(ip)
    }

    /// Frees the key's IP and removes its host veth (which removes the peer). Idempotent.
    pub async fn detach(&self, key: &str) -> Result<()> {
        link::delete(&host_veth(key)).await?;
        self.ipam.release(key)
    }

    pub fn allocations(&self) -> Result<Vec<(String, Ipv4Addr)>> {
        self.ipam.allocations()
    }

    /// Frees every allocation whose key is not in `live` (after a restart: pods that went away).
    pub async fn retain(&self, live: &HashSet<String>) -> Result<()> {
        for (key, _) in self.ipam.allocations()? {
            if !live.contains(&key) {
                self.detach(&key).await?;
            }
        }
        Ok(())
    }

    /// Removes the bridge (with the pod veths still on it), the nft table and the FORWARD accept
    /// rules (`skiff down`, tests). The allocations in `state_dir` stay.
    pub async fn teardown(cfg: &PodNetConfig) -> Result<()> {
        link::delete_ports(&cfg.bridge).await?;
        link::delete(&cfg.bridge).await?;
        nft::remove(&cfg.nft_table)?;
        docker_forward_accept(&cfg.bridge, false);
        Ok(())
    }
}

/// Inserts (or deletes) `-i BR -j ACCEPT` and `-o BR -j ACCEPT` in Docker's `DOCKER-USER` chain,
/// falling back to `FORWARD`; a machine without iptables or Docker needs nothing.
fn docker_forward_accept(bridge: &str, add: bool) {
    use std::process::{Command, Stdio};
    let run = |args: &[&str]| {
        Command::new("iptables")
            .args(["-w", "5"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let chain = if run(&["-t", "filter", "-n", "-L", "DOCKER-USER"]) { "DOCKER-USER" } else { "FORWARD" };
    for dir in ["-i", "-o"] {
        let rule = [chain, dir, bridge, "-j", "ACCEPT"];
        let present = run(&[&["-C"][..], &rule[..]].concat());
        if add && !present {
            if !run(&[&["-I"][..], &rule[..]].concat()) {
                tracing::warn!(chain, bridge, "could not add the FORWARD accept rule for the pod bridge");
            }
        } else if !add {
            // Remove every copy (from both chains, in case Docker appeared in between).
            for c in ["DOCKER-USER", "FORWARD"] {
                let r = [c, dir, bridge, "-j", "ACCEPT"];
                while run(&[&["-C"][..], &r[..]].concat()) && run(&[&["-D"][..], &r[..]].concat()) {}
            }
        }
    }
}
