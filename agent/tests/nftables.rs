//! `--proxy-mode nftables` on the real kernel, as root — and only inside network namespaces the
//! tests create (DESIGN.md §5): each test makes `skiff-nft-<pid>-<tag>`, runs the table, the
//! loopback backends and the client in a thread that joined it (`setns`), and deletes it on drop,
//! also on failure. Nothing is programmed in the host's namespace: the thread checks it is in the
//! new namespace before opening any netlink socket.
//!
//! Skipped (with a message) unless run as root with `ip` and nf_tables available.

mod common;

use common::Backends;
use skiff_agent::dataplane::{Frontend, FrontendPolicy, Protocol};
use skiff_agent::proxy::desired::{Desired, DesiredFrontend, ServicePortName};
use skiff_agent::proxy::nft::route::LoopbackRoutes;
use skiff_agent::proxy::{NftConfig, NftServiceTable, ProxyTable, apply_desired};
use skiff_agent::route::{BlackholeRoute, Ipv4Cidr, blackhole_present, default_service_range};
use std::collections::HashMap;
use std::io::{ErrorKind, Read};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::{Duration, Instant};

const PREFIX: &str = "skiff-nft-";

/// A network namespace of the test's own, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Option<Self> {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping: needs root");
            return None;
        }
        sweep_leftovers();
        let name = format!("{PREFIX}{}-{tag}", std::process::id());
        let st = Command::new("ip").args(["netns", "add", &name]).status();
        if !matches!(st, Ok(s) if s.success()) {
            eprintln!("skipping: `ip netns add {name}` failed");
            return None;
        }
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        // A global address for source selection: 127.0.0.1 has host scope, and the service
        // range's routes through lo need a source the backends can answer.
        ns.ip(&["addr", "add", "10.250.0.1/32", "dev", "lo"]);
        Some(ns)
    }

    fn ip(&self, args: &[&str]) {
        let st = Command::new("ip").arg("-n").arg(&self.name).args(args).status().expect("running ip");
        assert!(st.success(), "ip -n {} {args:?} failed", self.name);
    }

    /// `nft` inside the namespace (for what the tests print or check).
    fn nft(&self, args: &[&str]) -> String {
        let out =
            Command::new("ip").args(["netns", "exec", &self.name, "nft"]).args(args).output().expect("running nft");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// Runs `f` on a thread that joined the namespace (and so do the threads and sockets it
    /// creates); a panic in `f` is the caller's.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        let host = std::fs::metadata("/proc/thread-self/ns/net").expect("this thread's namespace").ino();
        let h = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("opening the namespace");
            let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
            // SAFETY: setns on this thread only, with a namespace file we hold open.
            let r = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            let mine = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
            let want = std::fs::metadata(&path).unwrap().ino();
            assert!(mine == want && mine != host, "not in the test's network namespace; refusing to go on");
            f()
        });
        match h.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Deletes namespaces of earlier test runs whose process is gone.
fn sweep_leftovers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(dir) = std::fs::read_dir("/run/netns") else { return };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(PREFIX) else { continue };
            let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
            if let Some(pid) = pid
                && pid != std::process::id()
                && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                eprintln!("removing leftover namespace {name}");
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
            }
        }
    });
}

/// Inside the namespace: the blackhole route first (as the agent does), then the table and the
/// loopback routes of the service range.
fn setup(service_range: Ipv4Cidr) -> NftServiceTable {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        BlackholeRoute::ensure(service_range).await.unwrap();
        assert!(blackhole_present(service_range).await.unwrap(), "the blackhole route must exist before traffic");
    });
    let table = NftServiceTable::new(NftConfig { service_range: Some(service_range), ..Default::default() })
        .expect("creating the nftables table");
    rt.block_on(async { LoopbackRoutes::ensure(service_range).await.unwrap() });
    table
}

fn tcp(vip: Ipv4Addr, port: u16) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&SocketAddrV4::new(vip, port).into(), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn tally(vip: Ipv4Addr, port: u16, n: usize) -> HashMap<String, u32> {
    let mut m = HashMap::new();
    for _ in 0..n {
        let id = tcp(vip, port).unwrap_or_else(|e| panic!("connection to {vip}:{port}: {e}"));
        *m.entry(id).or_insert(0) += 1;
    }
    m
}

fn none() -> FrontendPolicy {
    FrontendPolicy::default()
}

/// Counters are read at most every 250 ms; wait that out before asserting on them.
fn counters(t: &NftServiceTable, vip: Ipv4Addr, port: u16, proto: Protocol) -> (u64, u64) {
    std::thread::sleep(Duration::from_millis(300));
    let c = t.counters(vip, port, proto).unwrap().unwrap();
    (c.translated, c.refused)
}

#[test]
fn clusterip_tcp_spreads_refuses_and_follows_backend_removal() {
    let Some(ns) = Netns::new("tcp") else { return };
    ns.run(|| {
        let mut t = setup(default_service_range());
        let vip = Ipv4Addr::new(10, 96, 100, 1);
        let backends = Backends::tcp(3);
        let st = t.upsert_frontend(vip, 80, Protocol::Tcp, &backends.list(), none()).unwrap();
        assert_eq!(st.slots_written, 3);
        assert!(t.upsert_frontend(vip, 80, Protocol::Tcp, &backends.list(), none()).unwrap().is_noop());

        // 300 connections over 3 backends, each ≥ 20%.
        let m = tally(vip, 80, 300);
        for i in 0..3 {
            let id = format!("be{i}");
            let n = m.get(&id).copied().unwrap_or(0);
            assert!(n >= 60, "backend {id} got {n} of 300 connections: {m:?}");
            assert_eq!(backends.count(&id), n);
        }
        assert_eq!(counters(&t, vip, 80, Protocol::Tcp), (300, 0));

        // Backend 1 removed: no new connection reaches it.
        let keep: Vec<_> = backends.list().into_iter().enumerate().filter(|(i, _)| *i != 1).map(|(_, b)| b).collect();
        let before = backends.count("be1");
        let st = t.upsert_frontend(vip, 80, Protocol::Tcp, &keep, none()).unwrap();
        assert_eq!((st.slots_written, st.slots_deleted), (0, 1), "only the removed endpoint's chain changes");
        let m = tally(vip, 80, 100);
        assert_eq!(m.get("be1"), None, "removed backend got connections: {m:?}");
        assert_eq!(backends.count("be1"), before);
        assert_eq!(t.backends(vip, 80, Protocol::Tcp).unwrap(), keep);

        // No backends: refused at once (RST), not a timeout.
        t.upsert_frontend(vip, 80, Protocol::Tcp, &[], none()).unwrap();
        let mut worst = Duration::ZERO;
        for _ in 0..20 {
            let s = Instant::now();
            let e = tcp(vip, 80).expect_err("a service without endpoints accepted a connection");
            assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
            worst = worst.max(s.elapsed());
        }
        assert!(worst < Duration::from_millis(500), "refusal took {worst:?}");
        eprintln!("no-endpoint refusal: worst {worst:?}");
        assert_eq!(counters(&t, vip, 80, Protocol::Tcp), (400, 20));

        // Backends back, then the frontend removed: the address is refused (post-DNAT reject of
        // the service range), nothing connects.
        t.upsert_frontend(vip, 80, Protocol::Tcp, &backends.list(), none()).unwrap();
        assert_eq!(tally(vip, 80, 10).values().sum::<u32>(), 10);
        t.remove_service(vip, 80, Protocol::Tcp).unwrap();
        assert_eq!(t.len(), 0);
        let e = tcp(vip, 80).expect_err("an untranslated service address connected");
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
        // An address of the range that was never a service: the same.
        let e = tcp(Ipv4Addr::new(10, 100, 1, 1), 443).expect_err("an unknown service address connected");
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    });
}

#[test]
fn clusterip_udp_and_no_endpoint_udp() {
    let Some(ns) = Netns::new("udp") else { return };
    ns.run(|| {
        let mut t = setup(default_service_range());
        let vip = Ipv4Addr::new(10, 96, 100, 53);
        let backends = Backends::udp(2);
        t.upsert_frontend(vip, 53, Protocol::Udp, &backends.list(), none()).unwrap();
        let mut seen: HashMap<String, u32> = HashMap::new();
        for _ in 0..60 {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            // Connected: only replies from the service address itself are received.
            s.connect(SocketAddrV4::new(vip, 53)).unwrap();
            s.send(b"q").unwrap();
            let mut buf = [0u8; 16];
            let n = s.recv(&mut buf).expect("a reply from the service address");
            *seen.entry(String::from_utf8_lossy(&buf[..n]).into_owned()).or_insert(0) += 1;
        }
        assert!(seen.len() == 2 && seen.values().all(|n| *n >= 10), "UDP spread: {seen:?}");
        // Unconnected: the reply's source is the service address.
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.send_to(b"q", SocketAddrV4::new(vip, 53)).unwrap();
        let mut buf = [0u8; 16];
        let (_, from) = s.recv_from(&mut buf).unwrap();
        assert_eq!(from, SocketAddrV4::new(vip, 53).into());

        // A connected socket keeps its flow (conntrack) … until its backend is removed: the
        // flow's entry is deleted, and its next datagram goes to a live backend.
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.connect(SocketAddrV4::new(vip, 53)).unwrap();
        let mut ask = || {
            s.send(b"q").unwrap();
            let n = s.recv(&mut buf).expect("a reply");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        let first = ask();
        for _ in 0..10 {
            assert_eq!(ask(), first, "one flow, one backend");
        }
        let idx: usize = first.trim_start_matches("be").parse().unwrap();
        let keep: Vec<_> = backends.list().into_iter().enumerate().filter(|(i, _)| *i != idx).map(|(_, b)| b).collect();
        t.upsert_frontend(vip, 53, Protocol::Udp, &keep, none()).unwrap();
        for _ in 0..10 {
            assert_ne!(ask(), first, "the flow still reaches the removed backend");
        }
        let mut buf = [0u8; 16];

        // No endpoints: the send fails at once (rejected in the output hook), no timeout.
        t.upsert_frontend(vip, 53, Protocol::Udp, &[], none()).unwrap();
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.connect(SocketAddrV4::new(vip, 53)).unwrap();
        let start = Instant::now();
        let r = s.send(b"q").and_then(|_| s.recv(&mut buf));
        assert!(r.is_err(), "a UDP service without endpoints answered");
        assert!(start.elapsed() < Duration::from_millis(500), "refusal took {:?}", start.elapsed());
        eprintln!("UDP to a service without endpoints: {:?} after {:?}", r.unwrap_err(), start.elapsed());
    });
}

#[test]
fn client_ip_affinity_sticks_expires_and_leaves_removed_backends() {
    let Some(ns) = Netns::new("aff") else { return };
    ns.run(|| {
        let mut t = setup(default_service_range());
        let vip = Ipv4Addr::new(10, 96, 100, 7);
        let backends = Backends::tcp(3);
        let sticky = FrontendPolicy { affinity: Some(60), ..Default::default() };
        t.upsert_frontend(vip, 80, Protocol::Tcp, &backends.list(), sticky).unwrap();
        let m = tally(vip, 80, 60);
        assert_eq!(m.len(), 1, "one client sticks to one backend: {m:?}");
        let (first, _) = m.into_iter().next().unwrap();

        // Its backend removed: the client moves (and sticks again), the removed one gets nothing.
        let idx: usize = first.trim_start_matches("be").parse().unwrap();
        let keep: Vec<_> = backends.list().into_iter().enumerate().filter(|(i, _)| *i != idx).map(|(_, b)| b).collect();
        t.upsert_frontend(vip, 80, Protocol::Tcp, &keep, sticky).unwrap();
        let before = backends.count(&first);
        let m = tally(vip, 80, 30);
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(!m.contains_key(&first), "removed backend {first} got connections: {m:?}");
        assert_eq!(backends.count(&first), before);

        // Affinity off: spread again.
        t.upsert_frontend(vip, 80, Protocol::Tcp, &backends.list(), none()).unwrap();
        assert!(tally(vip, 80, 60).len() >= 2);

        // A 1 s timeout: the client is free again after a second without connections.
        let short = FrontendPolicy { affinity: Some(1), ..Default::default() };
        t.upsert_frontend(vip, 80, Protocol::Tcp, &backends.list(), short).unwrap();
        let first = tcp(vip, 80).unwrap();
        let mut moved = false;
        for _ in 0..12 {
            std::thread::sleep(Duration::from_millis(1200));
            if tcp(vip, 80).unwrap() != first {
                moved = true;
                break;
            }
        }
        assert!(moved, "affinity never expired");
    });
}

fn desired(entries: &[(Frontend, Vec<(Ipv4Addr, u16)>)]) -> Desired {
    entries
        .iter()
        .map(|(fe, b)| {
            (
                *fe,
                DesiredFrontend {
                    external: false,
                    service: ServicePortName {
                        namespace: "default".into(),
                        name: format!("s-{}-{}", fe.vip, fe.port),
                        port: String::new(),
                    },
                    backends: b.clone(),
                    affinity_timeout: None,
                    external_local: false,
                },
            )
        })
        .collect()
}

#[test]
fn stale_frontends_are_removed_and_a_restarted_table_recovers() {
    let Some(ns) = Netns::new("stale") else { return };
    let listing = ns.run(|| {
        let mut t = setup(default_service_range());
        let backends = Backends::tcp(2);
        let a = Frontend { vip: Ipv4Addr::new(10, 96, 100, 10), port: 80, proto: Protocol::Tcp };
        let b = Frontend { vip: Ipv4Addr::new(10, 96, 100, 11), port: 80, proto: Protocol::Tcp };
        let c = Frontend { vip: Ipv4Addr::new(10, 96, 100, 12), port: 53, proto: Protocol::Udp };
        let (w, ok) = apply_desired(&mut t, &desired(&[(a, backends.list()), (b, backends.list()), (c, vec![])]));
        assert!(ok && w > 0);
        assert_eq!(tally(b.vip, 80, 10).values().sum::<u32>(), 10);

        // A previous agent's table, read back by a new one: same frontends, and after one sync
        // (which rewrites the frontend chains, whose rules it cannot know) nothing to do.
        drop(t);
        let mut t =
            NftServiceTable::new(NftConfig { service_range: Some(default_service_range()), ..Default::default() })
                .unwrap();
        assert_eq!(t.frontends(), vec![a, b, c]);
        let mut sorted = backends.list();
        sorted.sort();
        let mut got = t.backends(a.vip, a.port, a.proto).unwrap();
        got.sort();
        assert_eq!(got, sorted);

        // The desired state no longer has b: the sync removes it, a keeps working.
        let d = desired(&[(a, backends.list()), (c, vec![])]);
        let (_, ok) = apply_desired(&mut t, &d);
        assert!(ok);
        assert_eq!(t.frontends(), vec![a, c]);
        let e = tcp(b.vip, 80).expect_err("a stale frontend still translates");
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
        assert_eq!(tally(a.vip, 80, 10).values().sum::<u32>(), 10);
        assert_eq!(apply_desired(&mut t, &d), (0, true), "a second identical sync writes nothing");
        t.table_name().to_string()
    });
    let out = ns.nft(&["list", "ruleset"]);
    assert!(out.contains(&format!("table ip {listing}-")), "{out}");
    assert!(out.contains("service-10.96.100.10/tcp/80") && !out.contains("10.96.100.11"), "{out}");
}

#[test]
fn programming_10k_services_and_one_change() {
    let Some(ns) = Netns::new("10k") else { return };
    ns.run(|| {
        let mut t = setup(default_service_range());
        let backends = Backends::tcp(3);
        let be = backends.list();
        // 10,000 ClusterIPs in 10.100.0.0/16, 3 backends each.
        let count: u32 = 10_000;
        let vips: Vec<Ipv4Addr> = (0..count).map(|i| Ipv4Addr::from(0x0a64_0000 + i)).collect();
        let entries: Vec<(Frontend, Vec<(Ipv4Addr, u16)>)> =
            vips.iter().map(|v| (Frontend { vip: *v, port: 80, proto: Protocol::Tcp }, be.clone())).collect();
        let d = desired(&entries);
        let start = Instant::now();
        let (_, ok) = apply_desired(&mut t, &d);
        let scratch = start.elapsed();
        assert!(ok);
        assert_eq!(t.len(), count as usize);
        for i in [0usize, count as usize / 2, count as usize - 1] {
            assert_eq!(tally(vips[i], 80, 3).values().sum::<u32>(), 3);
        }

        // One change with 10,000 present: one backend removed, then added back.
        let mut times = Vec::new();
        for round in 0..20 {
            let vip = vips[(count as usize / 2 + round) % vips.len()];
            let s = Instant::now();
            t.upsert_frontend(vip, 80, Protocol::Tcp, &be[..2], none()).unwrap();
            times.push(s.elapsed());
            let s = Instant::now();
            t.upsert_frontend(vip, 80, Protocol::Tcp, &be, none()).unwrap();
            times.push(s.elapsed());
        }
        times.sort();
        // A full resync with nothing changed.
        let s = Instant::now();
        assert_eq!(apply_desired(&mut t, &d), (0, true));
        let noop = s.elapsed();
        // Printed, not asserted.
        eprintln!(
            "nftables: programmed 10,000 services x 3 backends from scratch in {scratch:?}; one change: median {:?}, \
             max {:?}; full resync without changes {noop:?}",
            times[times.len() / 2],
            times[times.len() - 1]
        );
        let s = Instant::now();
        assert_eq!(t.retain(&|_| false).unwrap(), count as usize);
        eprintln!("nftables: removed 10,000 services in {:?}", s.elapsed());
    });
}

fn scrape(addr: std::net::SocketAddr) -> String {
    use std::io::Write;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connecting to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

fn wait_metrics(addr: std::net::SocketAddr, what: &str, cond: impl Fn(&str) -> bool) -> Duration {
    let t = Instant::now();
    loop {
        let m = scrape(addr);
        if cond(&m) {
            return t.elapsed();
        }
        assert!(t.elapsed() < Duration::from_secs(30), "timed out waiting for {what}; metrics:\n{m}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The whole node proxy against a real API server, all inside the test's namespace (the
/// `skiff control` child inherits it): the eBPF object cannot load (a path that does not
/// exist), so the agent falls back to nftables; Services and EndpointSlices then drive the
/// tables, `/metrics` counts, and cleanup removes the tables and the routes.
#[test]
fn node_proxy_falls_back_to_nftables_and_follows_the_api() {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::{Api, DeleteParams, PostParams};
    use skiff_agent::dataplane::{Config, ObjectSource};
    use skiff_agent::proxy::{NodeProxyConfig, Proxy, ProxyConfig, run_node_proxy};
    use std::sync::Arc;

    if !skiff_tests::skiff_bin().exists() {
        eprintln!("skipping: {} is missing (build the skiff binary)", skiff_tests::skiff_bin().display());
        return;
    }
    let Some(ns) = Netns::new("node") else { return };
    let pin_dir = std::path::PathBuf::from(format!("/sys/fs/bpf/skiff-test-{}-nftnode", std::process::id()));
    let table = skiff_agent::proxy::nft::table_name_for(&pin_dir);
    // The failed load may have created the (empty) pin directory.
    struct RmDir(std::path::PathBuf);
    impl Drop for RmDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _pins = RmDir(pin_dir.clone());
    ns.run(move || {
        let control = skiff_tests::Control::start_api_only(&[]).expect("starting skiff control");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let client = rt.block_on(control.client()).unwrap();
        let services: Api<Service> = Api::namespaced(client.clone(), "default");
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
        let backends = Backends::tcp(3);
        let svc: Service = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"ports": [{"name": "http", "port": 80}]}
        }))
        .unwrap();
        let svc = rt.block_on(services.create(&PostParams::default(), &svc)).unwrap();
        let vip: Ipv4Addr = svc.spec.unwrap().cluster_ip.unwrap().parse().unwrap();
        for (i, a) in backends.addrs.iter().enumerate() {
            let s: EndpointSlice = serde_json::from_value(serde_json::json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("web-{i}"), "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": a.port(), "protocol": "TCP"}],
                "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]
            }))
            .unwrap();
            rt.block_on(slices.create(&PostParams::default(), &s)).unwrap();
        }

        let proxy = Arc::new(
            Proxy::new(ProxyConfig { metrics_listen: Some("127.0.0.1:0".parse().unwrap()), ..Default::default() })
                .unwrap(),
        );
        let maddr = proxy.metrics_addr().unwrap();
        let config = NodeProxyConfig {
            dataplane: Config { object: ObjectSource::Path("/nonexistent/skiff-dataplane.o".into()), pin_dir },
            service_range: default_service_range(),
            cleanup_on_exit: true,
            ..Default::default()
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let kubeconfig = control.kubeconfig.clone();
        let p = proxy.clone();
        let runner = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let kc = kube::config::Kubeconfig::read_from(&kubeconfig)?;
                let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
                let client = kube::Client::try_from(cfg)?;
                run_node_proxy(client, &config, &p, async {
                    let _ = stop_rx.await;
                })
                .await
            })
        });

        let fe = format!("frontend=\"{vip}:80/TCP\"");
        let line = format!("skiff_service_backends{{namespace=\"default\",service=\"web\",port=\"http\",{fe}}}");
        let took = wait_metrics(maddr, "3 backends", |m| metric(m, &line) == Some(3.0));
        eprintln!("nftables node proxy: start → service programmed in {took:?}");
        let m = tally(vip, 80, 90);
        assert!(m.len() == 3 && m.values().all(|n| *n >= 15), "spread: {m:?}");
        let translated = format!(
            "skiff_service_connections_translated_total{{namespace=\"default\",service=\"web\",port=\"http\",{fe}}}"
        );
        wait_metrics(maddr, "90 translated", |m| metric(m, &translated) == Some(90.0));

        // One slice deleted: its backend gets no new connection once programmed.
        rt.block_on(slices.delete("web-1", &DeleteParams::default())).unwrap();
        let took = wait_metrics(maddr, "2 backends", |m| metric(m, &line) == Some(2.0));
        eprintln!("nftables node proxy: endpoint removal programmed in {took:?}");
        let before = backends.count("be1");
        let m = tally(vip, 80, 40);
        assert!(!m.contains_key("be1"), "{m:?}");
        assert_eq!(backends.count("be1"), before);

        // No endpoints: refused at once.
        for s in ["web-0", "web-2"] {
            rt.block_on(slices.delete(s, &DeleteParams::default())).unwrap();
        }
        wait_metrics(maddr, "0 backends", |m| metric(m, &line) == Some(0.0));
        let e = tcp(vip, 80).expect_err("a service without endpoints accepted a connection");
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused);

        let _ = stop_tx.send(());
        runner.join().unwrap().expect("the node proxy ran without error");
        drop(control);
    });
    let left = ns.nft(&["list", "tables"]);
    assert!(!left.contains(&table), "tables left after cleanup: {left}");
    let out = Command::new("ip").args(["-n", &ns.name, "route", "show", "dev", "lo"]).output().unwrap();
    let routes = String::from_utf8_lossy(&out.stdout);
    assert!(!routes.contains("10.96.0.0/13"), "routes left after cleanup: {routes}");
}
