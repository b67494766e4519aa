//! The whole service proxy of a node, in the order safety requires: blackhole route for the
//! service range first, then the dataplane (pinned maps, programs, cgroup attachment), then the
//! watch-driven [`Proxy`].

use super::Proxy;
use crate::dataplane::{self, Dataplane};
use crate::route::{BlackholeRoute, Ipv4Cidr, default_service_range};
use anyhow::{Context, Result};
use kube::Client;
use std::future::Future;
use std::path::PathBuf;

/// Which dataplane [`run_node_proxy`] programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// The eBPF socket programs; falls back to nftables when the eBPF object cannot be loaded.
    Ebpf,
    /// nftables rules ([`super::nft`]).
    Nftables,
}

/// Where the socket programs attach by default: the root cgroup v2 (hybrid mode's mount), so
/// every process on the host gets ClusterIPs.
pub const DEFAULT_CGROUP: &str = "/sys/fs/cgroup/unified";

/// Configuration of [`run_node_proxy`].
#[derive(Clone, Debug)]
pub struct NodeProxyConfig {
    /// The eBPF object and the pin directory of the maps.
    pub dataplane: dataplane::Config,
    /// The cgroup v2 the socket programs attach to (tests: one they made, never the root).
    pub cgroup: PathBuf,
    /// The service range that gets a blackhole route.
    pub service_range: Ipv4Cidr,
    /// On shutdown: detach the programs, remove the pinned maps, and delete the blackhole route
    /// if this run added it (`skiff down`, tests). Off for an agent that will be restarted.
    pub cleanup_on_exit: bool,
    /// Pin the cgroup links under the pin directory so the programs stay attached when the agent
    /// exits or is killed, and reuse them on restart ([`Dataplane::attach_cgroup_pinned`]).
    /// Without it the attachments end with the process.
    pub pin_links: bool,
    /// Interfaces whose tc ingress gets the per-packet NodePort program (`--devices`): the
    /// node's external interfaces and its pod bridge (replies of local backends enter there).
    /// Each is attached when it exists; one that appears later (the bridge, created once the
    /// node has a podCIDR) is attached then. Empty: NodePorts answer only through the socket
    /// programs, i.e. to clients on this machine. Tests name veths of their own namespaces here.
    pub nodeport_devices: Vec<String>,
    /// Those of `nodeport_devices` that also get the XDP companion in native (driver) mode, for
    /// hairpin flows (in and out of the same interface: remote backends); where the driver has
    /// no XDP, tc alone serves. Not the pod bridge (no native XDP there).
    pub nodeport_xdp_devices: Vec<String>,
    /// eBPF (falling back to nftables where the programs cannot load) or nftables.
    pub mode: ProxyMode,
}

impl Default for NodeProxyConfig {
    fn default() -> Self {
        Self {
            dataplane: dataplane::Config::default(),
            cgroup: PathBuf::from(DEFAULT_CGROUP),
            service_range: default_service_range(),
            cleanup_on_exit: false,
            pin_links: true,
            nodeport_devices: Vec::new(),
            nodeport_xdp_devices: Vec::new(),
            mode: ProxyMode::Ebpf,
        }
    }
}

/// Installs the blackhole route (if absent), loads the dataplane, attaches it to
/// `config.cgroup`, and runs `proxy` until `shutdown` completes (or the proxy fails). Cleans up
/// per [`NodeProxyConfig::cleanup_on_exit`] on every return after the route step, also on errors.
pub async fn run_node_proxy(
    client: Client,
    config: &NodeProxyConfig,
    proxy: &Proxy,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let route = BlackholeRoute::ensure(config.service_range)
        .await
        .with_context(|| format!("installing the blackhole route for the service range {}", config.service_range))?;
    if route.added {
        tracing::info!("added blackhole route {}", config.service_range);
    }
    let result = async {
        if config.mode == ProxyMode::Nftables {
            return super::nft::run_node_proxy(client, config, proxy, shutdown).await;
        }
        let mut dp = match Dataplane::load(&config.dataplane) {
            Ok(dp) => dp,
            Err(e) => {
                tracing::error!(
                    "the eBPF service proxy cannot run on this kernel: loading the eBPF object failed: {e:#}; \
                     falling back to the nftables service proxy (as --proxy-mode nftables)"
                );
                return super::nft::run_node_proxy(client, config, proxy, shutdown).await;
            }
        };
        let attached = if config.pin_links {
            dp.attach_cgroup_pinned(&config.cgroup).map(|o| {
                tracing::info!(
                    attached = o.attached,
                    reused = o.reused,
                    "socket programs on {}",
                    config.cgroup.display()
                );
            })
        } else {
            dp.attach_cgroup(&config.cgroup)
        };
        let r = match attached {
            Ok(()) => {
                let (mut attacher, services) = dp.split();
                let devices = async {
                    attach_devices(&mut attacher, &config.nodeport_devices, &config.nodeport_xdp_devices).await;
                    std::future::pending::<()>().await
                };
                tokio::select! {
                    r = proxy.run(client, services, shutdown) => r,
                    () = devices => unreachable!("pending() never completes"),
                }
            }
            Err(e) => Err(e),
        };
        if config.cleanup_on_exit
            && let Err(e) = dp.cleanup()
        {
            tracing::error!("dataplane cleanup: {e:#}");
        }
        r
    }
    .await;
    if config.cleanup_on_exit
        && let Err(e) = route.remove().await
    {
        tracing::error!("{e:#}");
    }
    result
}

/// Attaches the NodePort program to each of `devices`, retrying every 2 s those that do not exist
/// yet (or failed), until all are attached.
async fn attach_devices(attacher: &mut dataplane::NodePortAttacher<'_>, devices: &[String], xdp: &[String]) {
    let mut pending: Vec<&String> = devices.iter().collect();
    let mut reported = std::collections::HashSet::new();
    while !pending.is_empty() {
        pending.retain(|dev| match attacher.attach_nodeport(dev) {
            Ok(o) => {
                tracing::info!(attached = o.attached, reused = o.reused, "NodePort program on the tc ingress of {dev}");
                if xdp.contains(dev) {
                    match attacher.attach_nodeport_xdp(dev, dataplane::XdpMode::Driver) {
                        Ok(o) => {
                            tracing::info!(attached = o.attached, reused = o.reused, "NodePort XDP (native) on {dev}")
                        }
                        Err(e) => tracing::info!("no native XDP on {dev} ({e:#}): NodePorts there are served at tc"),
                    }
                }
                false
            }
            Err(e) => {
                if reported.insert(dev.to_string()) {
                    tracing::warn!("NodePort program on {dev}: {e:#} (retrying every 2 s)");
                }
                true
            }
        });
        if !pending.is_empty() {
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        }
    }
}

/// The interface of the default IPv4 route (`/proc/net/route`), if there is one: `--devices`'
/// default, as Cilium's device detection starts from.
pub fn default_route_interface() -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // Iface Destination Gateway Flags ... Mask: destination and mask 0 = default.
        (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_string())
    })
}

/// Every IPv4 address on this machine's interfaces (loopback included): the addresses NodePorts
/// answer on, as kube-proxy's default `--nodeport-addresses` does.
pub fn local_ipv4_addresses() -> Vec<std::net::Ipv4Addr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we walk read-only and free once.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let a = (*cur).ifa_addr;
            if !a.is_null() && (*a).sa_family as i32 == libc::AF_INET {
                let sin = &*(a as *const libc::sockaddr_in);
                out.push(std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out.sort();
    out.dedup();
    out
}
