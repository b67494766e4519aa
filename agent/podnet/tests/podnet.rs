//! The pod network against the real kernel (run as root). Every test uses only names it owns — a
//! bridge `sktpn-<t>`, namespaces `sktpn-<t><n>`, nftables table `skiff_test_pn_<t>`, a podCIDR in
//! 10.244.248.0/21 that nothing else uses — and an [`Env`] guard that removes all of it (and the
//! iptables accept rules for its bridge) before the test and on drop, also after a panic. Traffic
//! goes only between the test's namespaces and the host's address on the test bridge, after
//! checking that the kernel routes the podCIDR to that bridge (DESIGN.md §5).

use skiff_podnet::{PodNetConfig, PodNetwork, host_veth};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const CLUSTER_CIDR: &str = "10.244.248.0/21";

fn root() -> bool {
    // SAFETY: no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipping: needs root (netlink, namespaces, nftables)");
    }
    root
}

/// Runs a command; returns (success, stdout).
fn sh(cmd: &str, args: &[&str]) -> (bool, String) {
    match Command::new(cmd).args(args).output() {
        Ok(o) => (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned()),
        Err(_) => (false, String::new()),
    }
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn ifindex(name: &str) -> u32 {
    std::fs::read_to_string(Path::new("/sys/class/net").join(name).join("ifindex")).unwrap().trim().parse().unwrap()
}

fn iptables_rule_present(chain: &str, dir: &str, bridge: &str) -> bool {
    sh("iptables", &["-w", "5", "-C", chain, dir, bridge, "-j", "ACCEPT"]).0
}

fn docker_user_chain() -> bool {
    sh("iptables", &["-w", "5", "-t", "filter", "-n", "-L", "DOCKER-USER"]).0
}

/// Everything one test creates, removed before and after it.
struct Env {
    bridge: String,
    table: String,
    netns: Vec<String>,
    keys: Vec<String>,
    state: tempfile::TempDir,
}

impl Env {
    fn new(tag: &str, namespaces: usize, keys: &[&str]) -> Env {
        let env = Env {
            bridge: format!("sktpn-{tag}"),
            table: format!("skiff_test_pn_{tag}"),
            netns: (1..=namespaces).map(|i| format!("sktpn-{tag}{i}")).collect(),
            keys: keys.iter().map(|k| k.to_string()).collect(),
            state: tempfile::tempdir().unwrap(),
        };
        env.cleanup();
        for ns in &env.netns {
            assert!(sh("ip", &["netns", "add", ns]).0, "ip netns add {ns}");
        }
        env
    }

    fn cfg(&self, pod_cidr: &str) -> PodNetConfig {
        PodNetConfig {
            bridge: self.bridge.clone(),
            pod_cidr: pod_cidr.parse().unwrap(),
            cluster_cidr: CLUSTER_CIDR.parse().unwrap(),
            state_dir: self.state.path().join("ipam"),
            nft_table: self.table.clone(),
        }
    }

    fn ns_path(&self, i: usize) -> PathBuf {
        Path::new("/var/run/netns").join(&self.netns[i])
    }

    fn cleanup(&self) {
        for ns in &self.netns {
            sh("ip", &["netns", "del", ns]);
        }
        for key in &self.keys {
            let host = host_veth(key);
            let peer = format!("p{}", &host[4..]);
            for l in [&host, &peer] {
                if link_exists(l) {
                    sh("ip", &["link", "del", l]);
                }
            }
        }
        if link_exists(&self.bridge) {
            sh("ip", &["link", "del", &self.bridge]);
        }
        sh("nft", &["delete", "table", "ip", &self.table]);
        for chain in ["DOCKER-USER", "FORWARD"] {
            for dir in ["-i", "-o"] {
                while iptables_rule_present(chain, dir, &self.bridge)
                    && sh("iptables", &["-w", "5", "-D", chain, dir, &self.bridge, "-j", "ACCEPT"]).0
                {}
            }
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Runs `f` on a thread of its own inside the namespace (sockets made there stay there).
fn in_ns<T: Send + 'static>(ns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(ns).unwrap();
    std::thread::spawn(move || {
        // SAFETY: a namespace fd; only this thread changes namespace.
        assert_eq!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
        f()
    })
    .join()
    .unwrap()
}

/// The kernel routes `cidr` to `bridge` (so test traffic cannot leave the machine).
fn assert_routed_to_bridge(cidr: &str, bridge: &str) {
    let (_, out) = sh("ip", &["-4", "route", "show", "exact", cidr]);
    assert!(out.contains(&format!("dev {bridge}")), "route for {cidr} via {bridge} missing: {out:?}");
}

/// Accepts one connection on `listener` (on a thread) and answers `greeting`.
fn serve_once(listener: TcpListener, greeting: &'static str) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        listener.set_nonblocking(false).unwrap();
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.write_all(greeting.as_bytes());
        }
    })
}

fn read_all(mut s: TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn listen_in(ns: &Path) -> TcpListener {
    in_ns(ns, || TcpListener::bind("0.0.0.0:8080").unwrap())
}

fn pod_ifaddrs(ns: &str, ifname: &str) -> String {
    sh("ip", &["netns", "exec", ns, "ip", "-4", "-o", "addr", "show", "dev", ifname]).1
}

#[tokio::test]
async fn pods_get_addresses_reach_each_other_and_the_host_and_keep_them() {
    if !root() {
        return;
    }
    let (k1, k2) = ("pn-test-a-pod-1", "pn-test-a-pod-2");
    let env = Env::new("a", 2, &[k1, k2]);
    let cidr = "10.244.250.0/24";
    let cfg = env.cfg(cidr);
    let net = PodNetwork::setup(cfg.clone()).await.unwrap();

    let ip1 = net.attach(k1, &env.ns_path(0), "eth0").await.unwrap();
    let ip2 = net.attach(k2, &env.ns_path(1), "eth0").await.unwrap();
    assert_ne!(ip1, ip2);
    for ip in [ip1, ip2] {
        assert!(cfg.pod_cidr.contains(&ip), "{ip} in {cidr}");
        assert!(![0, 1, 255].contains(&ip.octets()[3]), "{ip}: not network, gateway or broadcast");
    }
    let mut allocs = net.allocations().unwrap();
    allocs.sort();
    assert_eq!(allocs, vec![(k1.to_string(), ip1), (k2.to_string(), ip2)]);

    // Wiring: host ends on the bridge, pod ends named eth0 with the address and a default route.
    for k in [k1, k2] {
        let host = host_veth(k);
        assert!(host.len() <= 15);
        let master = std::fs::read_link(format!("/sys/class/net/{host}/master")).unwrap();
        assert_eq!(master.file_name().unwrap().to_str().unwrap(), env.bridge);
    }
    assert!(pod_ifaddrs(&env.netns[0], "eth0").contains(&format!("{ip1}/24")));
    let (_, routes) = sh("ip", &["netns", "exec", &env.netns[0], "ip", "-4", "route", "show", "default"]);
    assert!(routes.contains("via 10.244.250.1 dev eth0"), "{routes}");
    let (_, lo) = sh("ip", &["netns", "exec", &env.netns[0], "ip", "-o", "link", "show", "lo"]);
    assert!(lo.contains("UP"), "lo up: {lo}");

    // Only now send anything: the podCIDR goes to the test bridge.
    assert_routed_to_bridge(cidr, &env.bridge);
    let (ok, out) =
        sh("ip", &["netns", "exec", &env.netns[1], "busybox", "ping", "-c", "1", "-W", "3", &ip1.to_string()]);
    assert!(ok, "ping pod 2 -> pod 1: {out}");

    // TCP pod 2 -> pod 1 (across the bridge, through Docker's FORWARD chain).
    let server = serve_once(listen_in(&env.ns_path(0)), "hello from pod 1");
    let to = SocketAddr::from((ip1, 8080));
    let s = in_ns(&env.ns_path(1), move || TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap());
    assert_eq!(read_all(s), "hello from pod 1");
    server.join().unwrap();

    // TCP host -> pod 2.
    let server = serve_once(listen_in(&env.ns_path(1)), "hello from pod 2");
    let s = TcpStream::connect_timeout(&SocketAddr::from((ip2, 8080)), Duration::from_secs(5)).unwrap();
    assert_eq!(read_all(s), "hello from pod 2");
    server.join().unwrap();

    // Attaching again is a no-op: same address, same veth.
    let before = ifindex(&host_veth(k1));
    assert_eq!(net.attach(k1, &env.ns_path(0), "eth0").await.unwrap(), ip1);
    assert_eq!(ifindex(&host_veth(k1)), before, "veth not re-created");

    // A new PodNetwork on the same state (agent restart) keeps the allocations.
    drop(net);
    let net = PodNetwork::setup(cfg.clone()).await.unwrap();
    let mut again = net.allocations().unwrap();
    again.sort();
    assert_eq!(again, allocs);
    assert_eq!(net.attach(k1, &env.ns_path(0), "eth0").await.unwrap(), ip1);
    assert_eq!(ifindex(&host_veth(k1)), before);

    // Detach frees the address and removes both ends; twice is fine.
    net.detach(k2).await.unwrap();
    net.detach(k2).await.unwrap();
    assert!(!link_exists(&host_veth(k2)));
    assert!(pod_ifaddrs(&env.netns[1], "eth0").is_empty(), "pod end gone with the host end");
    assert_eq!(net.allocations().unwrap(), vec![(k1.to_string(), ip1)]);
    assert!(!cfg.state_dir.join(ip2.to_string()).exists());

    // Re-attached, the pod gets the next address (round robin), and retain() drops it again.
    let ip2b = net.attach(k2, &env.ns_path(1), "eth0").await.unwrap();
    assert_ne!(ip2b, ip2, "a freed address is not handed out again at once");
    assert_ne!(ip2b, ip1);
    net.retain(&HashSet::from([k1.to_string()])).await.unwrap();
    assert_eq!(net.allocations().unwrap(), vec![(k1.to_string(), ip1)]);
    assert!(!link_exists(&host_veth(k2)));
    assert!(link_exists(&host_veth(k1)));

    PodNetwork::teardown(&cfg).await.unwrap();
    assert!(!link_exists(&env.bridge));
    assert!(!link_exists(&host_veth(k1)), "teardown removes the pod veths on the bridge");
    assert_eq!(net.allocations().unwrap(), vec![(k1.to_string(), ip1)], "allocations survive teardown");
}

#[tokio::test]
async fn setup_is_idempotent_readdresses_and_teardown_removes_everything() {
    if !root() {
        return;
    }
    let k = "pn-test-b-pod-1";
    let env = Env::new("b", 1, &[k]);
    let cfg = env.cfg("10.244.251.0/24");
    let nft = sh("nft", &["--version"]).0;
    let snapshot = || {
        (
            sh("ip", &["-4", "-o", "addr", "show", "dev", &env.bridge]).1,
            sh("ip", &["-o", "link", "show", &env.bridge]).1,
            if nft { sh("nft", &["list", "table", "ip", &env.table]).1 } else { String::new() },
            sh("iptables", &["-w", "5", "-S"])
                .1
                .lines()
                .filter(|l| l.contains(&env.bridge))
                .collect::<Vec<_>>()
                .join("\n"),
        )
    };

    PodNetwork::setup(cfg.clone()).await.unwrap();
    let first = snapshot();
    assert!(first.0.contains("inet 10.244.251.1/24"), "gateway on the bridge: {}", first.0);
    assert_eq!(first.0.lines().count(), 1, "exactly one address: {}", first.0);
    assert!(first.1.contains(",UP") || first.1.contains("<UP"), "bridge up: {}", first.1);
    assert_eq!(std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap().trim(), "1");
    if nft {
        let t = &first.2;
        assert!(t.contains("type nat hook postrouting priority srcnat"), "{t}");
        assert!(
            t.contains(&format!(
                "ip saddr 10.244.251.0/24 ip daddr != {CLUSTER_CIDR} oifname != \"{}\" counter packets 0 bytes 0 masquerade",
                env.bridge
            )),
            "masquerade rule: {t}"
        );
    } else {
        eprintln!("nft not installed: table contents not checked");
    }
    let chain = if docker_user_chain() { "DOCKER-USER" } else { "FORWARD" };
    for dir in ["-i", "-o"] {
        assert!(iptables_rule_present(chain, dir, &env.bridge), "{chain} {dir} {} ACCEPT", env.bridge);
    }
    assert_eq!(first.3.lines().count(), 2, "two accept rules: {}", first.3);

    // Again: nothing changes.
    PodNetwork::setup(cfg.clone()).await.unwrap();
    assert_eq!(snapshot(), first);

    // The bridge keeps its own MAC when a pod (port) comes and goes.
    let mac = std::fs::read_to_string(format!("/sys/class/net/{}/address", env.bridge)).unwrap();
    let net = PodNetwork::setup(cfg.clone()).await.unwrap();
    let ip = net.attach(k, &env.ns_path(0), "eth0").await.unwrap();
    assert_eq!(std::fs::read_to_string(format!("/sys/class/net/{}/address", env.bridge)).unwrap(), mac);
    net.detach(k).await.unwrap();
    assert_eq!(std::fs::read_to_string(format!("/sys/class/net/{}/address", env.bridge)).unwrap(), mac);
    assert!(net.allocations().unwrap().is_empty(), "{ip} freed");

    // A new podCIDR re-addresses the bridge and the rule.
    let cfg2 = env.cfg("10.244.252.0/24");
    let net2 = PodNetwork::setup(cfg2.clone()).await.unwrap();
    let second = snapshot();
    assert!(second.0.contains("inet 10.244.252.1/24"), "{}", second.0);
    assert_eq!(second.0.lines().count(), 1, "old gateway removed: {}", second.0);
    if nft {
        assert!(second.2.contains("ip saddr 10.244.252.0/24"), "{}", second.2);
        assert!(!second.2.contains("10.244.251.0/24"), "{}", second.2);
    }
    assert_routed_to_bridge("10.244.252.0/24", &env.bridge);
    let ip2 = net2.attach(k, &env.ns_path(0), "eth0").await.unwrap();
    assert!(cfg2.pod_cidr.contains(&ip2), "{ip2}");
    let (ok, out) =
        sh("ip", &["netns", "exec", &env.netns[0], "busybox", "ping", "-c", "1", "-W", "3", "10.244.252.1"]);
    assert!(ok, "pod -> gateway: {out}");

    // Teardown removes bridge, veth, table and accept rules; twice is fine.
    PodNetwork::teardown(&cfg2).await.unwrap();
    PodNetwork::teardown(&cfg2).await.unwrap();
    assert!(!link_exists(&env.bridge));
    assert!(!link_exists(&host_veth(k)));
    if nft {
        assert!(!sh("nft", &["list", "table", "ip", &env.table]).0, "table removed");
    }
    for c in ["DOCKER-USER", "FORWARD"] {
        for dir in ["-i", "-o"] {
            assert!(!iptables_rule_present(c, dir, &env.bridge), "{c} {dir} rule removed");
        }
    }
    let _: Ipv4Addr = ip;
}
