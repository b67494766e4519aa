//! `skiff`: one binary for every Skiff component (DESIGN.md §2 is the command-line contract).

mod up;

use anyhow::{Context, Result};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "A Kubernetes-compatible orchestrator whose service networking runs in eBPF"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum StoreArg {
    Embedded,
    Etcd,
}

/// The control plane's settings, shared by `skiff control` and `skiff up`.
#[derive(Args)]
struct ControlArgs {
    #[arg(long, default_value = "/var/lib/skiff")]
    data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    #[arg(long, value_enum, default_value = "embedded")]
    store: StoreArg,
    /// Comma-separated etcd client URLs (with --store etcd).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    etcd_endpoints: Vec<String>,
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: String,
    /// Controllers to run, as kube-controller-manager's flag: `*` all, `name` one, `-name` not
    /// that one; empty runs none.
    #[arg(long, value_delimiter = ',', default_value = "*")]
    controllers: Vec<String>,
    /// Leave scheduling to another scheduler.
    #[arg(long)]
    disable_scheduler: bool,
    /// Seconds without a node lease renewal before the node is marked Unknown.
    #[arg(long, default_value_t = 40)]
    node_monitor_grace_period: u64,
    /// Seconds pods stay on an unreachable node without a toleration of their own.
    #[arg(long, default_value_t = 300)]
    pod_eviction_timeout: u64,
    /// This process's identity in the leader-election Lease (default: hostname and a UUID).
    #[arg(long)]
    leader_identity: Option<String>,
}

impl ControlArgs {
    fn config(self) -> skiff_control::ControlConfig {
        let mut cfg = skiff_control::ControlConfig::new(self.data_dir);
        cfg.listen = self.listen;
        cfg.store = match self.store {
            StoreArg::Embedded => skiff_control::StoreKind::Embedded,
            StoreArg::Etcd => skiff_control::StoreKind::Etcd,
        };
        cfg.etcd_endpoints = self.etcd_endpoints;
        cfg.service_cidr = self.service_cidr;
        let controllers: Vec<String> = self.controllers.into_iter().filter(|c| !c.is_empty()).collect();
        if controllers.is_empty() && self.disable_scheduler {
            cfg.loops = None;
        } else if let Some(l) = cfg.loops.as_mut() {
            if self.disable_scheduler {
                l.scheduler = None;
            }
            l.controllers.controllers = if controllers.is_empty() { vec!["-*".into()] } else { controllers };
            l.controllers.node_monitor_grace = std::time::Duration::from_secs(self.node_monitor_grace_period);
            l.controllers.pod_eviction_timeout = std::time::Duration::from_secs(self.pod_eviction_timeout);
            l.identity = self.leader_identity;
        }
        cfg
    }
}

#[derive(Subcommand)]
enum Command {
    /// API server (and, as they land, scheduler and controllers). Writes D/kubeconfig.
    Control(ControlArgs),
    /// A single-node cluster in one command: control plane, DNS, node agent and dataplane.
    Up {
        #[command(flatten)]
        control: ControlArgs,
        #[command(flatten)]
        node: up::NodeArgs,
    },
    /// Stops the cluster started by `skiff up` on this data directory.
    Down {
        #[arg(long, default_value = "/var/lib/skiff")]
        data_dir: PathBuf,
    },
    /// Health of each component of the cluster on this data directory.
    Status {
        #[arg(long, default_value = "/var/lib/skiff")]
        data_dir: PathBuf,
    },
    /// Prints the admin kubeconfig of a data directory.
    Kubeconfig {
        #[arg(long, default_value = "/var/lib/skiff")]
        data_dir: PathBuf,
    },
    /// Node agent: registers the node, runs its pods on Docker with the pod network, serves
    /// their logs, and runs the eBPF service proxy.
    Agent {
        #[arg(long)]
        kubeconfig: PathBuf,
        /// Default: the host name.
        #[arg(long)]
        node_name: Option<String>,
        /// The node's InternalIP (default: the source address of the default route).
        #[arg(long)]
        node_ip: Option<std::net::Ipv4Addr>,
        /// Pod directories and IP allocations.
        #[arg(long, default_value = "/var/lib/skiff/agent")]
        root_dir: PathBuf,
        /// Port of the agent's HTTPS endpoint (logs), as the kubelet's.
        #[arg(long, default_value_t = 10250)]
        port: u16,
        /// Use this podCIDR instead of waiting for the node IPAM controller's.
        #[arg(long)]
        pod_cidr: Option<String>,
        #[arg(long, default_value = "10.244.0.0/16")]
        cluster_cidr: String,
        /// The node's bridge for pods.
        #[arg(long, default_value = "skiff0")]
        bridge: String,
        /// Skiff's own nftables table (masquerading).
        #[arg(long, default_value = "skiff")]
        nft_table: String,
        #[arg(long, default_value = "10.96.0.10")]
        cluster_dns: std::net::Ipv4Addr,
        /// First crash-loop back-off in seconds (Kubernetes: 10), doubling up to 300.
        #[arg(long, default_value_t = 10.0)]
        crashloop_backoff: f64,
        /// `ebpf` (default; falls back to `nftables` when the eBPF programs cannot load),
        /// `nftables` (rules in the table `ip skiff-proxy`), or `none` to leave service routing to
        /// another proxy.
        #[arg(long, default_value = "ebpf")]
        proxy_mode: String,
        /// Interfaces whose tc ingress gets the per-packet NodePort program, comma-separated;
        /// `auto` (default): the default route's interface; `none`: NodePorts answer only to
        /// clients on this machine (socket programs). The pod bridge is added unless `none`.
        #[arg(long, default_value = "auto")]
        devices: String,
        /// The cgroup v2 the socket programs attach to (default: the root, so every process on
        /// the host reaches ClusterIPs).
        #[arg(long, default_value = "/sys/fs/cgroup/unified")]
        cgroup: PathBuf,
        #[arg(long, default_value = "10.96.0.0/12")]
        service_cidr: String,
        /// Where the proxy serves `/metrics`.
        #[arg(long, default_value = "127.0.0.1:10249")]
        metrics_listen: SocketAddr,
        /// Detach programs, remove pins and the blackhole route on exit.
        #[arg(long)]
        cleanup_on_exit: bool,
    },
    /// Removes the kernel state of an agent's pod network (bridge, nftables table, the accept
    /// rules for Docker's FORWARD policy). `skiff down` does this for `skiff up`; tests use it.
    #[command(hide = true)]
    AgentCleanup {
        #[arg(long, default_value = "skiff0")]
        bridge: String,
        #[arg(long, default_value = "skiff")]
        nft_table: String,
        #[arg(long, default_value = "10.244.0.0/24")]
        pod_cidr: String,
        #[arg(long, default_value = "10.244.0.0/16")]
        cluster_cidr: String,
    },
    /// The cluster DNS server: answers `cluster.local` from watched Services, EndpointSlices
    /// and Pods; forwards other names to the upstream resolvers.
    Dns {
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// UDP and TCP address to answer on.
        #[arg(long, default_value = "0.0.0.0:53")]
        listen: SocketAddr,
        /// `/metrics` and health endpoints.
        #[arg(long, default_value = "127.0.0.1:9153")]
        metrics_listen: SocketAddr,
        /// Upstream resolvers for names outside the cluster domain (default: /etc/resolv.conf's).
        #[arg(long, value_delimiter = ',')]
        upstream: Vec<SocketAddr>,
        #[arg(long, default_value = "cluster.local")]
        domain: String,
        /// TTL of cluster records and of negative answers, seconds.
        #[arg(long, default_value_t = 5)]
        ttl: u32,
    },
}

/// The node's InternalIP when none is given: the address of the default route's interface.
/// The interfaces `--devices` names (tc) and those of them that also get XDP: `none`, `auto`
/// (the default route's interface), or a comma-separated list; the pod bridge joins the tc list
/// unless `none` (replies of local backends enter the node there).
pub(crate) fn nodeport_devices(flag: &str, bridge: &str) -> Result<(Vec<String>, Vec<String>)> {
    let mut out: Vec<String> = match flag {
        "none" => return Ok((Vec::new(), Vec::new())),
        "auto" => skiff_agent::proxy::default_route_interface().into_iter().collect(),
        list => list
            .split(',')
            .map(|d| {
                let d = d.trim();
                // The kernel's limit is IFNAMSIZ - 1; names never hold '/', ':' or blanks.
                if d.is_empty() || d.len() > 15 || d.contains(['/', ':', ' ']) || d == "." || d == ".." {
                    anyhow::bail!("--devices {list:?}: {d:?} is not an interface name");
                }
                Ok(d.to_string())
            })
            .collect::<Result<_>>()?,
    };
    let xdp: Vec<String> = out.iter().filter(|d| *d != bridge).cloned().collect();
    if !out.iter().any(|d| d == bridge) {
        out.push(bridge.to_string());
    }
    Ok((out, xdp))
}

pub(crate) fn default_ipv4() -> Option<std::net::Ipv4Addr> {
    match skiff_control::primary_ip()? {
        std::net::IpAddr::V4(ip) => Some(ip),
        _ => None,
    }
}

use up::PID_FILE;

pub(crate) async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

/// The pid recorded by `skiff up`, if that process is still alive.
pub(crate) fn running_pid(data_dir: &std::path::Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(data_dir.join(PID_FILE)).ok()?.trim().parse().ok()?;
    // Signal 0 checks existence without signalling.
    let alive = std::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    alive.then_some(pid)
}

fn down(data_dir: &std::path::Path) -> Result<()> {
    match running_pid(data_dir) {
        None => {
            println!("no cluster running on {}", data_dir.display());
            Ok(())
        }
        Some(pid) => {
            std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
            for _ in 0..900 {
                if running_pid(data_dir).is_none() {
                    println!("stopped (pid {pid})");
                    let _ = std::fs::remove_file(data_dir.join(PID_FILE));
                    return Ok(());
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            anyhow::bail!("pid {pid} did not stop within 90 s")
        }
    }
}

fn status(data_dir: &std::path::Path) -> Result<()> {
    let Some(pid) = running_pid(data_dir) else {
        println!("not running (no live `skiff up` on {})", data_dir.display());
        std::process::exit(1);
    };
    let kubeconfig = std::fs::read_to_string(data_dir.join("kubeconfig")).unwrap_or_default();
    let server = kubeconfig.lines().find_map(|l| l.trim().strip_prefix("server: ")).unwrap_or("").to_string();
    let addr = server.trim_start_matches("https://");
    let api_ok = addr
        .parse::<SocketAddr>()
        .ok()
        .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(2)).is_ok());
    println!("skiff (pid {pid})");
    println!("  api-server   {}  {server}", if api_ok { "healthy  " } else { "unhealthy" });
    // `skiff up` records where each component listens (D/components).
    let mut all_ok = api_ok;
    let components = std::fs::read_to_string(data_dir.join(up::COMPONENTS_FILE)).unwrap_or_default();
    for line in components.lines() {
        let Some((name, addr)) = line.split_once(' ') else { continue };
        let ok = addr
            .parse::<SocketAddr>()
            .ok()
            .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(2)).is_ok());
        all_ok &= ok;
        println!("  {name:<12} {}  {addr}", if ok { "healthy  " } else { "unhealthy" });
    }
    if !all_ok {
        std::process::exit(1);
    }
    Ok(())
}

/// The host's resolvers, where names outside the cluster domain go.
fn resolv_conf_nameservers() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("SKIFF_LOG").unwrap_or_else(|_| EnvFilter::new("info,netlink_packet_route=error"));
    let json = std::env::var("SKIFF_LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Opts the process out of transparent huge pages (`PR_SET_THP_DISABLE`).
///
/// mimalloc marks its arenas `MADV_HUGEPAGE`, so with THP on (`madvise` mode, Debian's default)
/// every first touch of a fresh arena region faults in and zeroes a whole 2 MiB page, even for a
/// few small JSON values. Under a burst of API creates that zeroing was ~30 % of the API server's
/// CPU (perf: `clear_page_erms` under `do_huge_pmd_anonymous_page`), most of it for memory never
/// used; with 4 KiB pages only what is touched is zeroed. Best effort: an old kernel refusing the
/// call just keeps THP.
fn disable_transparent_huge_pages() {
    // SAFETY: prctl with PR_SET_THP_DISABLE takes plain integer arguments and touches no memory.
    unsafe {
        libc::prctl(
            libc::PR_SET_THP_DISABLE,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        );
    }
}

fn main() -> Result<()> {
    disable_transparent_huge_pages();
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Control(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(async move {
                let control = skiff_control::start(args.config()).await?;
                println!("skiff control: API server at https://{}", control.addr);
                println!("export KUBECONFIG={}", control.kubeconfig.display());
                tokio::select! {
                    r = control.wait() => r,
                    _ = tokio::signal::ctrl_c() => Ok(()),
                }
            })
        }
        Command::Up { control, node } => {
            let upstreams =
                if node.dns_upstream.is_empty() { resolv_conf_nameservers() } else { node.dns_upstream.clone() };
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(up::up(control.config(), node, upstreams))
        }
        Command::Down { data_dir } => down(&data_dir),
        Command::Status { data_dir } => status(&data_dir),
        Command::Kubeconfig { data_dir } => {
            let path = data_dir.join("kubeconfig");
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "no kubeconfig at {} (has `skiff control --data-dir {}` run?)",
                    path.display(),
                    data_dir.display()
                )
            })?;
            print!("{text}");
            Ok(())
        }
        Command::Agent {
            kubeconfig,
            node_name,
            node_ip,
            root_dir,
            port,
            pod_cidr,
            cluster_cidr,
            bridge,
            nft_table,
            cluster_dns,
            crashloop_backoff,
            proxy_mode,
            devices,
            cgroup,
            service_cidr,
            metrics_listen,
            cleanup_on_exit,
        } => {
            let mode = match proxy_mode.as_str() {
                "ebpf" | "none" => skiff_agent::proxy::ProxyMode::Ebpf,
                "nftables" => skiff_agent::proxy::ProxyMode::Nftables,
                _ => anyhow::bail!("--proxy-mode {proxy_mode}: one of `ebpf`, `nftables`, `none`"),
            };
            let (nodeport_devices, nodeport_xdp_devices) = nodeport_devices(&devices, &bridge)?;
            if !(crashloop_backoff > 0.0 && crashloop_backoff <= 300.0) {
                anyhow::bail!("--crashloop-backoff {crashloop_backoff}: must be between 0 and 300 seconds");
            }
            let parse_net = |flag: &str, v: &str| -> Result<skiff_agent::Ipv4Net> {
                v.parse().map_err(|e| anyhow::anyhow!("--{flag} {v:?}: {e}"))
            };
            let kubelet = skiff_agent::kubelet::KubeletConfig {
                node_name: node_name.unwrap_or_else(skiff_agent::kubelet::hostname),
                root_dir,
                node_ip: node_ip.or_else(default_ipv4).unwrap_or(std::net::Ipv4Addr::LOCALHOST),
                port,
                cluster_dns,
                cluster_cidr: parse_net("cluster-cidr", &cluster_cidr)?,
                pod_cidr: pod_cidr.as_deref().map(|c| parse_net("pod-cidr", c)).transpose()?,
                bridge,
                nft_table,
                backoff_base: std::time::Duration::from_secs_f64(crashloop_backoff),
                ..Default::default()
            };
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(async move {
                let kc = kube::config::Kubeconfig::read_from(&kubeconfig)
                    .with_context(|| format!("reading {}", kubeconfig.display()))?;
                let token = kc.auth_infos.iter().find_map(|a| a.auth_info.as_ref()?.token.clone());
                let client =
                    kube::Client::try_from(kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?)?;
                let service_range =
                    service_cidr.parse().map_err(|e| anyhow::anyhow!("--service-cidr {service_cidr:?}: {e}"))?;
                let proxy = (proxy_mode != "none").then(|| skiff_agent::proxy::NodeProxyConfig {
                    mode,
                    cgroup,
                    nodeport_devices,
                    nodeport_xdp_devices,
                    service_range,
                    cleanup_on_exit,
                    ..Default::default()
                });
                let cfg = skiff_agent::AgentConfig {
                    kubelet: skiff_agent::kubelet::KubeletConfig {
                        auth_token: token.map(|t| secrecy::ExposeSecret::expose_secret(&t).to_string()),
                        ..kubelet
                    },
                    proxy,
                    metrics_listen: Some(metrics_listen),
                };
                skiff_agent::run(client, cfg, async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await
            })
        }
        Command::AgentCleanup { bridge, nft_table, pod_cidr, cluster_cidr } => {
            let cfg = skiff_agent::podnet::PodNetConfig {
                bridge,
                pod_cidr: pod_cidr.parse().map_err(|e| anyhow::anyhow!("--pod-cidr {pod_cidr:?}: {e}"))?,
                cluster_cidr: cluster_cidr
                    .parse()
                    .map_err(|e| anyhow::anyhow!("--cluster-cidr {cluster_cidr:?}: {e}"))?,
                state_dir: std::env::temp_dir(),
                nft_table,
            };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(skiff_agent::podnet::PodNetwork::teardown(&cfg))
        }
        Command::Dns { kubeconfig, listen, metrics_listen, upstream, domain, ttl } => {
            let upstreams = if upstream.is_empty() { resolv_conf_nameservers() } else { upstream };
            let cfg = skiff_dns::DnsConfig {
                listen,
                http_listen: Some(metrics_listen),
                domain,
                ttl,
                upstreams,
                ..Default::default()
            };
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(skiff_dns::run(kubeconfig.as_deref(), cfg))
        }
    }
}
