//! The service proxy end to end (root required): a real `skiff control`, a Service and
//! EndpointSlices written through the API, the proxy programming the eBPF dataplane, and a client
//! in a cgroup this test made connecting to the ClusterIP.
//!
//! Safe by construction (DESIGN.md §5): the programs attach only to the test's own cgroup v2
//! directory; backends listen on 127.0.0.1; the service range is blackholed before anything is
//! sent and the route is removed afterwards only if this test added it; guards release everything
//! (proxy stopped, programs detached, pins removed, cgroup removed, route) also when an assertion
//! fails.
//!
//! Needs the object from `cargo xtask build-ebpf` and the `skiff` binary (`target/debug/skiff` or
//! `$SKIFF_BIN`); skips with a message when either is missing.

mod common;
use common::{Backends, CGROUP2_ROOT, TestCgroup, test_cgroup};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use skiff_agent::dataplane::{Config, Dataplane, ObjectSource, Protocol, default_object_path};
use skiff_agent::proxy::{NodeProxyConfig, Proxy, ProxyConfig, run_node_proxy};
use skiff_agent::route::{BlackholeRoute, Ipv4Cidr, blackhole_present, default_service_range};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const CLIENT_ENV: &str = "SKIFF_PROXY_CLIENT";
const PREFIX: &str = "SKIFF:";

static SERIAL: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------------------------------------
// Client side (child process in the test cgroup)

/// Not a test of its own: the body of the client child process.
#[test]
fn client_helper() {
    let Ok(script) = std::env::var(CLIENT_ENV) else { return };
    let parts: Vec<&str> = script.split_whitespace().collect();
    // One address, or several (comma-separated) taken in turn.
    let addrs: Vec<SocketAddr> = parts[0].split(',').map(|a| a.parse().unwrap()).collect();
    let pause = Duration::from_millis(parts.get(2).map(|p| p.parse().unwrap()).unwrap_or(0));
    for i in 0..parts[1].parse::<usize>().unwrap() {
        let addr = addrs[i % addrs.len()];
        std::thread::sleep(pause);
        let t = Instant::now();
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(mut s) => {
                let micros = t.elapsed().as_micros();
                let peer = s.peer_addr().map(|p| p.to_string()).unwrap_or_else(|e| format!("error:{e}"));
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut id = String::new();
                let _ = s.read_to_string(&mut id);
                println!("{PREFIX}ok {} {peer} {micros}", id.trim());
            }
            Err(e) => {
                println!("{PREFIX}err {:?} {} {}", e.kind(), e.raw_os_error().unwrap_or(0), t.elapsed().as_micros())
            }
        }
    }
}

#[derive(Debug)]
enum Outcome {
    Ok { id: String, peer: String },
    Err { kind: String, errno: i32, micros: u64 },
}

fn run_client(cgroup: &Path, addr: SocketAddrV4, n: u32) -> Vec<Outcome> {
    collect_client(spawn_client(cgroup, &format!("{addr} {n}")))
}

/// Starts a client child in `cgroup` with the script "ADDR[,ADDR…] COUNT [PAUSE_MS]".
fn spawn_client(cgroup: &Path, script: &str) -> std::process::Child {
    let procs = std::ffi::CString::new(cgroup.join("cgroup.procs").into_os_string().into_encoded_bytes()).unwrap();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "client_helper", "--nocapture", "--test-threads", "1"]).env(CLIENT_ENV, script);
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    // SAFETY: only async-signal-safe calls between fork and exec; "0" moves the writer itself.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let r = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if r != 1 {
                return Err(err);
            }
            Ok(())
        });
    }
    cmd.spawn().expect("running the client child")
}

fn collect_client(child: std::process::Child) -> Vec<Outcome> {
    let out = child.wait_with_output().expect("running the client child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "client failed: {}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    stdout
        .lines()
        .filter_map(|l| l.find(PREFIX).map(|i| &l[i + PREFIX.len()..]))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f[0] {
                "ok" => Outcome::Ok { id: f[1].into(), peer: f[2].into() },
                _ => Outcome::Err { kind: f[1].into(), errno: f[2].parse().unwrap(), micros: f[3].parse().unwrap() },
            }
        })
        .collect()
}

fn tally(outcomes: &[Outcome]) -> (HashMap<String, u32>, Vec<&Outcome>) {
    let mut ok = HashMap::new();
    let mut errs = Vec::new();
    for o in outcomes {
        match o {
            Outcome::Ok { id, .. } => *ok.entry(id.clone()).or_insert(0) += 1,
            e => errs.push(e),
        }
    }
    (ok, errs)
}

// ---------------------------------------------------------------------------------------------
// Guards

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

/// The test's own blackhole route (through the agent's rtnetlink code), removed on drop only if
/// added here.
struct RouteGuard(Option<BlackholeRoute>);

impl RouteGuard {
    fn ensure() -> Self {
        let r = block_on(BlackholeRoute::ensure(default_service_range())).expect("blackhole route");
        assert!(block_on(blackhole_present(default_service_range())).unwrap());
        // The kernel's decision for a VIP must be the blackhole, not a device.
        let out = Command::new("ip").args(["-4", "route", "get", "10.96.100.1"]).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!text.contains(" dev "), "10.96.100.1 would be routed to a device: {text}");
        RouteGuard(Some(r))
    }
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        if let Some(r) = self.0.take()
            && let Err(e) = block_on(r.remove())
        {
            eprintln!("{e:#}");
        }
    }
}

/// Removes the pin directory with everything in it (fallback when the proxy died without
/// cleanup); removing pinned links detaches their programs.
struct PinsGuard(PathBuf);

impl Drop for PinsGuard {
    fn drop(&mut self) {
        if self.0.exists()
            && let Err(e) = std::fs::remove_dir_all(&self.0)
        {
            eprintln!("removing {}: {e}", self.0.display());
        }
    }
}

/// The running node proxy (its own thread and runtime); stopped (with cleanup) on drop.
struct ProxyGuard {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl ProxyGuard {
    fn start(kubeconfig: PathBuf, config: NodeProxyConfig, proxy: Arc<Proxy>) -> Self {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            rt.block_on(async move {
                let kc = kube::config::Kubeconfig::read_from(&kubeconfig)?;
                let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
                let client = kube::Client::try_from(cfg)?;
                run_node_proxy(client, &config, &proxy, async {
                    let _ = rx.await;
                })
                .await
            })
        });
        ProxyGuard { stop: Some(tx), thread: Some(thread) }
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| anyhow::anyhow!("proxy thread panicked"))?,
            None => Ok(()),
        }
    }

    fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for ProxyGuard {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("proxy: {e:#}");
        }
    }
}

/// Removes cgroups and pin directories of earlier test processes killed before their guards ran.
fn sweep_leftovers() {
    let alive = |name: &str| -> bool {
        let pid =
            name.strip_prefix("skiff-test-").and_then(|r| r.split('-').next()).and_then(|p| p.parse::<u32>().ok());
        match pid {
            Some(pid) => Path::new(&format!("/proc/{pid}")).exists(),
            None => true,
        }
    };
    for (root, is_pins) in [(CGROUP2_ROOT, false), ("/sys/fs/bpf", true)] {
        let Ok(entries) = std::fs::read_dir(root) else { continue };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("skiff-test-") || alive(&name) {
                continue;
            }
            if is_pins {
                let _ = std::fs::remove_dir_all(e.path());
            } else {
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }
}

fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connecting to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

/// The value of the first metric line starting with `prefix` (name and labels).
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

/// Polls `/metrics` until `cond` holds; returns the time it took.
fn wait_metrics(addr: SocketAddr, what: &str, timeout: Duration, cond: impl Fn(&str) -> bool) -> Duration {
    let t = Instant::now();
    loop {
        let m = scrape(addr);
        if cond(&m) {
            return t.elapsed();
        }
        assert!(t.elapsed() < timeout, "timed out waiting for {what}; metrics:\n{m}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

/// What the end-to-end tests share. Struct fields drop in declaration order: pinned maps and
/// links (detaching the programs), then the cgroup, the route, and last the lock that keeps
/// these tests from running side by side.
struct Harness {
    _pins: PinsGuard,
    cgroup: TestCgroup,
    _route: RouteGuard,
    _serial: std::sync::MutexGuard<'static, ()>,
    pin_dir: PathBuf,
    dp_config: Config,
}

impl Harness {
    /// `None` (the test skips, saying why) when the preconditions are missing.
    fn new(name: &str) -> Option<Harness> {
        if !preconditions() {
            return None;
        }
        let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        sweep_leftovers();
        let route = RouteGuard::ensure();
        let cgroup = test_cgroup(name);
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/skiff-test-{}-{name}", std::process::id()));
        let dp_config = Config { object: ObjectSource::Path(default_object_path()), pin_dir: pin_dir.clone() };
        Some(Harness { _pins: PinsGuard(pin_dir.clone()), cgroup, _route: route, _serial: serial, pin_dir, dp_config })
    }
}

fn preconditions() -> bool {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: the proxy tests need root");
        return false;
    }
    if !default_object_path().exists() {
        eprintln!("skipping: {} is missing (run `cargo xtask build-ebpf`)", default_object_path().display());
        return false;
    }
    if !skiff_tests::skiff_bin().exists() {
        eprintln!("skipping: {} is missing (build the skiff binary)", skiff_tests::skiff_bin().display());
        return false;
    }
    true
}

#[test]
fn blackhole_route_is_added_once_and_removed_only_by_its_owner() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: needs root");
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // A range of its own inside the service range's neighbourhood that nothing else uses.
    let range: Ipv4Cidr = "10.111.250.0/24".parse().unwrap();
    let _outer = RouteGuard::ensure(); // so the /24 never matters for routing even if left behind
    assert!(!block_on(blackhole_present(range)).unwrap(), "{range} already blackholed");
    let first = block_on(BlackholeRoute::ensure(range)).unwrap();
    assert!(first.added);
    assert!(block_on(blackhole_present(range)).unwrap());
    let second = block_on(BlackholeRoute::ensure(range)).unwrap();
    assert!(!second.added, "a present route is not ours");
    block_on(second.remove()).unwrap();
    assert!(block_on(blackhole_present(range)).unwrap(), "removed by a non-owner");
    block_on(first.remove()).unwrap();
    assert!(!block_on(blackhole_present(range)).unwrap(), "left behind by its owner");
}

#[test]
fn services_and_endpointslices_drive_the_dataplane() {
    // Dropped after everything below (the proxy is stopped first): pins, cgroup, route.
    let Some(h) = Harness::new("proxy") else { return };
    let (cgroup, pin_dir, dp_config) = (&h.cgroup, h.pin_dir.clone(), h.dp_config.clone());

    // A previous agent's leftover in the pinned maps: must be removed by the first sync.
    let stale = Ipv4Addr::new(10, 96, 200, 200);
    {
        let mut dp = Dataplane::load(&dp_config).expect("loading the dataplane");
        dp.services.upsert_service(stale, 99, Protocol::Tcp, &[(Ipv4Addr::LOCALHOST, 1)], None).unwrap();
        // dropped without cleanup(): the maps stay pinned, like after an agent restart
    }

    let control = skiff_tests::Control::start().expect("starting skiff control");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let client = rt.block_on(control.client()).unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");

    let backends = Backends::tcp(3);
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    }))
    .unwrap();
    let svc = rt.block_on(services.create(&PostParams::default(), &svc)).expect("creating the Service");
    let vip: Ipv4Addr = svc.spec.as_ref().unwrap().cluster_ip.as_ref().expect("a ClusterIP").parse().unwrap();
    assert!(default_service_range().contains(vip), "ClusterIP {vip} outside the blackholed range");
    let target = SocketAddrV4::new(vip, 80);
    // One slice per backend: the backends share 127.0.0.1 and differ in port, and a slice has one
    // port list for all its endpoints.
    for (i, a) in backends.addrs.iter().enumerate() {
        let s: EndpointSlice = serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("web-test-{i}"), "labels": {
                "kubernetes.io/service-name": "web", "endpointslice.kubernetes.io/managed-by": "skiff-agent-test"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": a.port(), "protocol": "TCP"}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]
        }))
        .unwrap();
        rt.block_on(slices.create(&PostParams::default(), &s)).expect("creating an EndpointSlice");
    }

    let proxy = Arc::new(
        Proxy::new(ProxyConfig { metrics_listen: Some("127.0.0.1:0".parse().unwrap()), ..Default::default() }).unwrap(),
    );
    let maddr = proxy.metrics_addr().unwrap();
    let pmetrics = proxy.metrics();
    let node_config = NodeProxyConfig {
        dataplane: dp_config.clone(),
        cgroup: cgroup.0.clone(),
        service_range: default_service_range(),
        cleanup_on_exit: true,
        pin_links: true,
        nodeport_devices: Vec::new(),
        nodeport_xdp_devices: Vec::new(),
        mode: skiff_agent::proxy::ProxyMode::Ebpf,
    };
    let mut running = ProxyGuard::start(control.kubeconfig.clone(), node_config, proxy.clone());

    // Programmed: 3 backends for the Service's frontend, the stale frontend gone.
    let fe_label = format!("frontend=\"{vip}:80/TCP\"");
    let backends_line =
        format!("skiff_service_backends{{namespace=\"default\",service=\"web\",port=\"http\",{fe_label}}}");
    let took = wait_metrics(maddr, "3 backends", Duration::from_secs(20), |m| metric(m, &backends_line) == Some(3.0));
    eprintln!("proxy start → service programmed: {took:?}");
    let m = scrape(maddr);
    assert!(!m.contains("10.96.200.200:99"), "the stale pinned frontend was not removed:\n{m}");
    assert!(running.is_running());

    // 300 connections spread over the 3 backends, each ≥ 20%; getpeername shows the ClusterIP.
    let out = run_client(&cgroup.0, target, 300);
    let (ok, errs) = tally(&out);
    assert!(errs.is_empty(), "failed connections: {errs:?}");
    for i in 0..3 {
        let n = ok.get(&format!("be{i}")).copied().unwrap_or(0);
        assert!(n >= 60, "be{i} got {n} of 300: {ok:?}");
    }
    for o in &out {
        if let Outcome::Ok { peer, .. } = o {
            assert_eq!(peer, &target.to_string(), "getpeername must show the service address");
        }
    }
    let m = scrape(maddr);
    let translated = format!(
        "skiff_service_connections_translated_total{{namespace=\"default\",service=\"web\",port=\"http\",{fe_label}}}"
    );
    assert_eq!(metric(&m, &translated), Some(300.0), "per-service counter:\n{m}");

    // be1 becomes not ready: 1 s after the API write, no new connection reaches it.
    let t = Instant::now();
    let patch = json!({"endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": false}}]});
    rt.block_on(slices.patch("web-test-1", &PatchParams::default(), &Patch::Merge(&patch))).unwrap();
    let took = wait_metrics(maddr, "2 backends", Duration::from_secs(1), |m| metric(m, &backends_line) == Some(2.0));
    eprintln!("API write (not ready) → maps updated, seen through /metrics: {took:?}");
    std::thread::sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
    let before = backends.count("be1");
    let out = run_client(&cgroup.0, target, 100);
    let (ok, errs) = tally(&out);
    assert!(errs.is_empty(), "failed connections: {errs:?}");
    assert_eq!(ok.get("be1"), None, "a not-ready endpoint got connections: {ok:?}");
    assert_eq!(backends.count("be1"), before);
    assert!(ok.contains_key("be0") && ok.contains_key("be2"), "{ok:?}");

    // All endpoints gone: ECONNREFUSED at once.
    for i in 0..3 {
        rt.block_on(slices.delete(&format!("web-test-{i}"), &DeleteParams::default())).unwrap();
    }
    let took = wait_metrics(maddr, "0 backends", Duration::from_secs(2), |m| metric(m, &backends_line) == Some(0.0));
    eprintln!("API delete (slices) → maps updated: {took:?}");
    let out = run_client(&cgroup.0, target, 20);
    for o in &out {
        match o {
            Outcome::Err { kind, errno, micros } => {
                assert_eq!((kind.as_str(), *errno), ("ConnectionRefused", libc::ECONNREFUSED), "{o:?}");
                assert!(*micros < 10_000, "refusal took {micros} µs");
            }
            other => panic!("connected to a service without endpoints: {other:?}"),
        }
    }

    // The Service deleted: no translation any more (the blackhole refuses locally).
    rt.block_on(services.delete("web", &DeleteParams::default())).unwrap();
    let took = wait_metrics(maddr, "frontend removed", Duration::from_secs(2), |m| !m.contains(&fe_label));
    eprintln!("API delete (service) → maps updated: {took:?}");
    let out = run_client(&cgroup.0, target, 1);
    match &out[0] {
        Outcome::Err { errno, .. } => assert_ne!(*errno, libc::ECONNREFUSED, "still translated: {:?}", out[0]),
        other => panic!("an untranslated VIP connected: {other:?}"),
    }

    let h = &pmetrics.programming_latency;
    eprintln!(
        "programming latency (watch event → maps): n={} p50={:?} p99={:?} max={:?}",
        h.count(),
        h.quantile(0.5).unwrap_or_default(),
        h.quantile(0.99).unwrap_or_default(),
        h.quantile(1.0).unwrap_or_default()
    );
    assert!(h.count() >= 5, "latency observations: {}", h.count());
    assert!(h.quantile(0.99).unwrap() < Duration::from_millis(500));

    running.stop().expect("the proxy ran without error");
    assert!(!pin_dir.exists(), "pins left behind at {}", pin_dir.display());
}

#[test]
fn node_ports_answer_on_the_node_addresses_at_the_socket() {
    let Some(h) = Harness::new("nodeport") else { return };
    let (cgroup, dp_config) = (&h.cgroup, h.dp_config.clone());
    let control = skiff_tests::Control::start().expect("starting skiff control");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let client = rt.block_on(control.client()).unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let backends = Backends::tcp(1);
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "front"},
        "spec": {"type": "NodePort", "ports": [{"port": 80, "targetPort": 8080}]}
    }))
    .unwrap();
    let svc = rt.block_on(services.create(&PostParams::default(), &svc)).expect("creating the Service");
    let node_port = svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].node_port.expect("a nodePort") as u16;
    assert!((30000..=32767).contains(&node_port));
    let s: EndpointSlice = serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "front-test", "labels": {"kubernetes.io/service-name": "front"}},
        "addressType": "IPv4",
        "ports": [{"name": "", "port": backends.addrs[0].port(), "protocol": "TCP"}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]
    }))
    .unwrap();
    rt.block_on(slices.create(&PostParams::default(), &s)).unwrap();
    // The node's "addresses" here: loopback only (the test never touches other interfaces).
    let proxy = Arc::new(
        Proxy::new(ProxyConfig {
            metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
            node_addresses: vec![Ipv4Addr::LOCALHOST],
            ..Default::default()
        })
        .unwrap(),
    );
    let maddr = proxy.metrics_addr().unwrap();
    let node_config = NodeProxyConfig {
        dataplane: dp_config,
        cgroup: cgroup.0.clone(),
        service_range: default_service_range(),
        cleanup_on_exit: true,
        pin_links: true,
        nodeport_devices: Vec::new(),
        nodeport_xdp_devices: Vec::new(),
        mode: skiff_agent::proxy::ProxyMode::Ebpf,
    };
    let mut running = ProxyGuard::start(control.kubeconfig.clone(), node_config, proxy.clone());
    let fe = format!("frontend=\"127.0.0.1:{node_port}/TCP\"");
    wait_metrics(maddr, "the NodePort frontend", Duration::from_secs(20), |m| m.contains(&fe));
    let out = run_client(&cgroup.0, SocketAddrV4::new(Ipv4Addr::LOCALHOST, node_port), 20);
    let (ok, errs) = tally(&out);
    assert!(errs.is_empty(), "failed connections: {errs:?}");
    assert_eq!(ok.get("be0"), Some(&20), "{ok:?}");
    running.stop().expect("the proxy ran without error");
}

// ---------------------------------------------------------------------------------------------
// Agent restart (kill -9) with pinned links

const AGENT_ENV: &str = "SKIFF_PROXY_AGENT";

/// Not a test of its own: the body of an agent child process ("KUBECONFIG|PIN_DIR|CGROUP|METRICS").
/// Runs the node proxy without cleanup until killed, as a production agent does.
#[test]
fn agent_helper() {
    let Ok(args) = std::env::var(AGENT_ENV) else { return };
    let a: Vec<&str> = args.split('|').collect();
    let config = NodeProxyConfig {
        dataplane: Config { object: ObjectSource::Path(default_object_path()), pin_dir: PathBuf::from(a[1]) },
        cgroup: PathBuf::from(a[2]),
        service_range: default_service_range(),
        cleanup_on_exit: false,
        pin_links: true,
        nodeport_devices: Vec::new(),
        nodeport_xdp_devices: Vec::new(),
        mode: skiff_agent::proxy::ProxyMode::Ebpf,
    };
    // NodePorts on the loopback address: reached at the socket from the test's cgroup, nothing
    // on a real interface.
    let proxy = Proxy::new(ProxyConfig {
        metrics_listen: Some(a[3].parse().unwrap()),
        node_addresses: vec![Ipv4Addr::LOCALHOST],
        ..Default::default()
    })
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(a[0]).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
        let client = kube::Client::try_from(cfg).unwrap();
        run_node_proxy(client, &config, &proxy, std::future::pending()).await.unwrap();
    });
}

/// An agent child process, killed with SIGKILL on drop.
struct AgentChild(std::process::Child);

impl AgentChild {
    fn start(kubeconfig: &Path, pin_dir: &Path, cgroup: &Path, metrics: SocketAddr) -> Self {
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "agent_helper", "--nocapture", "--test-threads", "1"])
            .env(AGENT_ENV, format!("{}|{}|{}|{metrics}", kubeconfig.display(), pin_dir.display(), cgroup.display()))
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("starting the agent child");
        AgentChild(child)
    }

    fn kill9(&mut self) {
        let _ = self.0.kill(); // SIGKILL
        let _ = self.0.wait();
    }
}

impl Drop for AgentChild {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn pin_inodes(dir: &Path) -> Vec<(String, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut v: Vec<(String, u64)> =
        walk(dir).into_iter().map(|p| (p.display().to_string(), p.metadata().unwrap().ino())).collect();
    v.sort();
    v
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn kill_9_and_restart_of_the_agent_fails_no_connection() {
    let Some(h) = Harness::new("restart") else { return };
    let (cgroup, pin_dir) = (&h.cgroup, h.pin_dir.clone());

    let control = skiff_tests::Control::start().expect("starting skiff control");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let client = rt.block_on(control.client()).unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let backends = Backends::tcp(3);
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"type": "NodePort", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))
    .unwrap();
    let svc = rt.block_on(services.create(&PostParams::default(), &svc)).unwrap();
    let spec = svc.spec.unwrap();
    let vip: Ipv4Addr = spec.cluster_ip.unwrap().parse().unwrap();
    assert!(default_service_range().contains(vip));
    let target = SocketAddrV4::new(vip, 80);
    let node_port = SocketAddrV4::new(Ipv4Addr::LOCALHOST, spec.ports.unwrap()[0].node_port.unwrap() as u16);
    for (i, a) in backends.addrs.iter().enumerate() {
        let s: EndpointSlice = serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("web-test-{i}"), "labels": {
                "kubernetes.io/service-name": "web", "endpointslice.kubernetes.io/managed-by": "skiff-agent-test"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": a.port(), "protocol": "TCP"}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]
        }))
        .unwrap();
        rt.block_on(slices.create(&PostParams::default(), &s)).unwrap();
    }

    let backends_line = format!(
        "skiff_service_backends{{namespace=\"default\",service=\"web\",port=\"http\",frontend=\"{vip}:80/TCP\"}}"
    );
    let m1 = free_port();
    let mut agent = AgentChild::start(&control.kubeconfig, &pin_dir, &cgroup.0, m1);
    wait_metrics_up(m1, Duration::from_secs(20));
    wait_metrics(m1, "3 backends", Duration::from_secs(20), |m| metric(m, &backends_line) == Some(3.0));
    let pins_before = pin_inodes(&pin_dir);
    // One pinned link per socket program (sock_addr hooks and the release hook).
    let links = skiff_agent::dataplane::SOCKET_PROGRAMS.len();
    assert_eq!(pins_before.iter().filter(|(p, _)| p.contains("/links/")).count(), links, "{pins_before:?}");

    // Continuous connections (bounded: 400 × ≥5 ms), in turn through the ClusterIP and the
    // NodePort, across kill -9 and a restart.
    let client_child = spawn_client(&cgroup.0, &format!("{target},{node_port} 400 5"));
    std::thread::sleep(Duration::from_millis(500));
    agent.kill9();
    std::thread::sleep(Duration::from_millis(700));
    let m2 = free_port();
    let mut agent = AgentChild::start(&control.kubeconfig, &pin_dir, &cgroup.0, m2);
    wait_metrics_up(m2, Duration::from_secs(20));
    wait_metrics(m2, "3 backends after restart", Duration::from_secs(20), |m| metric(m, &backends_line) == Some(3.0));
    let out = collect_client(client_child);
    let (ok, errs) = tally(&out);
    eprintln!("across kill -9 + restart: {} ok, {} failed: {ok:?}", ok.values().sum::<u32>(), errs.len());
    assert!(errs.is_empty(), "failed connections across the restart: {errs:?}");
    assert_eq!(out.len(), 400);
    let via_node_port =
        out.iter().filter(|o| matches!(o, Outcome::Ok { peer, .. } if *peer == node_port.to_string())).count();
    assert_eq!(via_node_port, 200, "every other connection went through the NodePort (getpeername shows it)");
    // The restarted agent reused the pinned links and maps instead of attaching or creating anew.
    assert_eq!(pin_inodes(&pin_dir), pins_before, "pins replaced by the restarted agent");

    // The restarted agent programs what the (reused) programs use.
    let patch = json!({"endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": false}}]});
    rt.block_on(slices.patch("web-test-1", &PatchParams::default(), &Patch::Merge(&patch))).unwrap();
    wait_metrics(m2, "2 backends", Duration::from_secs(1), |m| metric(m, &backends_line) == Some(2.0));
    let out = run_client(&cgroup.0, target, 60);
    let (ok, errs) = tally(&out);
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(ok.get("be1"), None, "{ok:?}");
    agent.kill9();
    // _pins removes maps and links (detaching the programs), then the cgroup and the route go.
}

/// Waits until something answers on the metrics address.
fn wait_metrics_up(addr: SocketAddr, timeout: Duration) {
    let t = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(t.elapsed() < timeout, "the agent's /metrics on {addr} did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The proxy's full-recompute sync at scale (no API server: objects built in memory), on the
/// real maps: 10,000 services × 3 endpoints from scratch, then one endpoint change with 10,000
/// present. The programs are loaded but attached nowhere.
#[test]
fn full_sync_with_10k_services() {
    if unsafe { libc::geteuid() } != 0 || !default_object_path().exists() {
        eprintln!("skipping: needs root and the eBPF object");
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    sweep_leftovers();
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/skiff-test-{}-scale", std::process::id()));
    let _pins = PinsGuard(pin_dir.clone());
    let mut dp = Dataplane::load(&Config { object: ObjectSource::Path(default_object_path()), pin_dir }).unwrap();

    let n = 10_000u32;
    let svc = |i: u32| -> Arc<Service> {
        let ip = Ipv4Addr::from(0x0a64_0000 + i); // 10.100.x.y, inside 10.96.0.0/12
        Arc::new(
            serde_json::from_value(json!({"metadata": {"namespace": "bench", "name": format!("s{i}")},
                "spec": {"clusterIP": ip.to_string(), "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}))
            .unwrap(),
        )
    };
    let slice = |i: u32, ready_last: bool| -> Arc<EndpointSlice> {
        let ep = |k: u32, ready: bool| json!({"addresses": [Ipv4Addr::from(0x0af4_0000 + i * 4 + k).to_string()], "conditions": {"ready": ready}});
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"namespace": "bench", "name": format!("s{i}-1"), "labels": {"kubernetes.io/service-name": format!("s{i}")}},
                "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": [ep(0, true), ep(1, true), ep(2, ready_last)]}))
            .unwrap(),
        )
    };
    let services: Vec<Arc<Service>> = (0..n).map(svc).collect();
    let mut slices: Vec<Arc<EndpointSlice>> = (0..n).map(|i| slice(i, true)).collect();

    let t = Instant::now();
    let d = skiff_agent::proxy::desired::compute(&services, &slices, &[], None);
    let compute = t.elapsed();
    let (writes, ok) = skiff_agent::proxy::apply_desired(&mut dp.services, &d);
    let scratch = t.elapsed();
    assert!(ok);
    assert_eq!(dp.services.len(), n as usize);
    assert_eq!(writes, n as usize * 4);

    slices[5000] = slice(5000, false);
    let t = Instant::now();
    let d = skiff_agent::proxy::desired::compute(&services, &slices, &[], None);
    let compute_one = t.elapsed();
    let (writes, ok) = skiff_agent::proxy::apply_desired(&mut dp.services, &d);
    let one = t.elapsed();
    assert!(ok);
    assert_eq!(writes, 2, "one slot deleted and the count rewritten");
    eprintln!(
        "full-recompute sync (initial list, relist, 30 s resync), 10,000 services x 3 endpoints: from scratch {scratch:?} (compute {compute:?}); \
         one change with 10,000 present {one:?} (compute {compute_one:?})"
    );
    assert!(scratch < Duration::from_secs(10), "{scratch:?}");
    assert!(one < Duration::from_secs(2), "{one:?}");
    dp.cleanup().unwrap();
}
