//! The eBPF socket load balancer on the real kernel (root required).
//!
//! Safe by construction (DESIGN.md §5): the programs are attached only to a cgroup v2 directory
//! this test creates, and only a child process the test moves there is affected; backends listen
//! on 127.0.0.1; the service range 10.96.0.0/12 is blackholed before anything is sent (so an
//! untranslated connect never leaves the machine), and the route is removed afterwards only if
//! this test added it. Every resource is released by guards' `Drop`, also when an assertion fails.
//!
//! Needs the object from `cargo xtask build-ebpf` (`target/bpf/skiff-dataplane.o`, or
//! `$SKIFF_EBPF_OBJECT`); `cargo xtask test` builds it first.
//!
//! The client side runs in a child process: this same test binary re-executed with
//! `SKIFF_DP_CLIENT` set, which makes the `client_helper` "test" act as a scripted client.

mod common;
use common::{Backends, CGROUP2_ROOT, TestCgroup};
use skiff_agent::dataplane::{Config, Dataplane, ObjectSource, Protocol, default_object_path};
use std::collections::HashMap;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SERVICE_RANGE: &str = "10.96.0.0/12";
const CLIENT_ENV: &str = "SKIFF_DP_CLIENT";
const PREFIX: &str = "SKIFF:";

/// The dataplane tests share the blackhole route; they run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());
static SEQ: AtomicU64 = AtomicU64::new(0);

// ---------------------------------------------------------------------------------------------
// Client side (child process)

/// Not a test of its own: the body of the client child process. Without `SKIFF_DP_CLIENT` it
/// does nothing.
#[test]
fn client_helper() {
    let Ok(script) = std::env::var(CLIENT_ENV) else { return };
    for cmd in script.split(';').map(str::trim).filter(|c| !c.is_empty()) {
        let parts: Vec<&str> = cmd.split_whitespace().collect();
        match parts.as_slice() {
            ["tcp", addr, n] => {
                let addr: SocketAddr = addr.parse().unwrap();
                for _ in 0..n.parse::<u32>().unwrap() {
                    let t = Instant::now();
                    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                        Ok(mut s) => {
                            let connect_us = t.elapsed().as_micros();
                            let peer = s.peer_addr().map(|p| p.to_string()).unwrap_or_else(|e| format!("error:{e}"));
                            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                            let mut id = String::new();
                            let _ = s.read_to_string(&mut id);
                            println!("{PREFIX}ok {} {peer} {connect_us}", id.trim());
                        }
                        Err(e) => println!(
                            "{PREFIX}err {:?} {} {}",
                            e.kind(),
                            e.raw_os_error().unwrap_or(0),
                            t.elapsed().as_micros()
                        ),
                    }
                }
            }
            ["udp-unconnected", addr, n] => {
                let addr: SocketAddr = addr.parse().unwrap();
                let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
                sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                for _ in 0..n.parse::<u32>().unwrap() {
                    match sock.send_to(b"ping", addr) {
                        Ok(_) => {
                            let mut buf = [0u8; 64];
                            match sock.recv_from(&mut buf) {
                                Ok((len, from)) => {
                                    println!("{PREFIX}ok {} {from} 0", String::from_utf8_lossy(&buf[..len]))
                                }
                                Err(e) => println!("{PREFIX}err {:?} {} 0", e.kind(), e.raw_os_error().unwrap_or(0)),
                            }
                        }
                        Err(e) => println!("{PREFIX}err {:?} {} 0", e.kind(), e.raw_os_error().unwrap_or(0)),
                    }
                }
            }
            ["udp-connected", addr, n] => {
                let addr: SocketAddr = addr.parse().unwrap();
                let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
                sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                match sock.connect(addr) {
                    Ok(()) => {
                        let peer = sock.peer_addr().map(|p| p.to_string()).unwrap_or_default();
                        for _ in 0..n.parse::<u32>().unwrap() {
                            sock.send(b"ping").unwrap();
                            let mut buf = [0u8; 64];
                            match sock.recv(&mut buf) {
                                Ok(len) => println!("{PREFIX}ok {} {peer} 0", String::from_utf8_lossy(&buf[..len])),
                                Err(e) => println!("{PREFIX}err {:?} {} 0", e.kind(), e.raw_os_error().unwrap_or(0)),
                            }
                        }
                    }
                    Err(e) => println!("{PREFIX}err {:?} {} 0", e.kind(), e.raw_os_error().unwrap_or(0)),
                }
            }
            other => panic!("unknown client command {other:?}"),
        }
    }
}

#[derive(Debug)]
enum Outcome {
    /// Backend id, the peer address the client saw, connect time.
    Ok { id: String, peer: String, micros: u64 },
    /// `io::ErrorKind` debug name, errno, time until the error.
    Err { kind: String, errno: i32, micros: u64 },
}

/// Runs the client script in a child process moved into `cgroup` before it execs.
fn run_client(cgroup: &Path, script: &str) -> Vec<Outcome> {
    let procs = std::ffi::CString::new(cgroup.join("cgroup.procs").into_os_string().into_encoded_bytes()).unwrap();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "client_helper", "--nocapture", "--test-threads", "1"]).env(CLIENT_ENV, script);
    // SAFETY: only async-signal-safe calls (open/write/close) between fork and exec. Writing "0"
    // to cgroup.procs moves the writing process itself.
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
    let out = cmd.output().expect("running the client child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "client failed: {}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    stdout
        .lines()
        // libtest prints "test client_helper ... " without a newline before the test's own output.
        .filter_map(|l| l.find(PREFIX).map(|i| &l[i + PREFIX.len()..]))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f[0] {
                "ok" => Outcome::Ok { id: f[1].into(), peer: f[2].into(), micros: f[3].parse().unwrap() },
                _ => Outcome::Err { kind: f[1].into(), errno: f[2].parse().unwrap(), micros: f[3].parse().unwrap() },
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Environment guards

/// The blackhole route for the service range: added if missing, removed on drop only if added.
struct BlackholeRoute {
    added: bool,
}

fn blackhole_present() -> bool {
    let out = Command::new("ip")
        .args(["-4", "route", "show", "type", "blackhole", SERVICE_RANGE])
        .output()
        .expect("running ip");
    String::from_utf8_lossy(&out.stdout).contains(SERVICE_RANGE.split('/').next().unwrap())
}

impl BlackholeRoute {
    fn ensure() -> Self {
        let mut added = false;
        if !blackhole_present() {
            let st = Command::new("ip")
                .args(["-4", "route", "add", "blackhole", SERVICE_RANGE])
                .status()
                .expect("ip route add");
            added = st.success();
        }
        assert!(blackhole_present(), "the service range {SERVICE_RANGE} must be blackholed before sending");
        // And the kernel's routing decision for a VIP must be the blackhole, not eth0.
        let out = Command::new("ip").args(["-4", "route", "get", "10.96.100.1"]).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!text.contains(" dev "), "10.96.100.1 would be routed to a device: {text}");
        BlackholeRoute { added }
    }
}

impl Drop for BlackholeRoute {
    fn drop(&mut self) {
        if self.added {
            let _ = Command::new("ip").args(["-4", "route", "del", "blackhole", SERVICE_RANGE]).status();
        }
    }
}

/// The loaded dataplane with its own pin directory; cleaned up (detached, unpinned) on drop.
struct DataplaneGuard(Option<Dataplane>);

impl DataplaneGuard {
    fn load(tag: &str) -> Self {
        let object = default_object_path();
        assert!(object.exists(), "{} is missing: run `cargo xtask build-ebpf` first", object.display());
        let config = Config {
            object: ObjectSource::Path(object),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/skiff-test-{}-{tag}", std::process::id())),
        };
        DataplaneGuard(Some(Dataplane::load(&config).expect("loading the dataplane")))
    }
}

impl std::ops::Deref for DataplaneGuard {
    type Target = Dataplane;
    fn deref(&self) -> &Dataplane {
        self.0.as_ref().unwrap()
    }
}
impl std::ops::DerefMut for DataplaneGuard {
    fn deref_mut(&mut self) -> &mut Dataplane {
        self.0.as_mut().unwrap()
    }
}
impl Drop for DataplaneGuard {
    fn drop(&mut self) {
        if let Some(dp) = self.0.take() {
            let pins = dp.pin_dir().to_path_buf();
            if let Err(e) = dp.cleanup() {
                eprintln!("dataplane cleanup: {e:#}");
            }
            assert!(!pins.exists() || std::thread::panicking(), "pin dir {} left behind", pins.display());
        }
    }
}

struct Env {
    // Field order is drop order: detach and unpin, then the cgroup, then the route.
    dp: DataplaneGuard,
    cgroup: TestCgroup,
    _route: BlackholeRoute,
    _serial: std::sync::MutexGuard<'static, ()>,
}

fn env() -> Option<Env> {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: the dataplane tests need root");
        return None;
    }
    let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    sweep_leftovers();
    let tag = SEQ.fetch_add(1, Ordering::Relaxed).to_string();
    let route = BlackholeRoute::ensure();
    let cgroup = TestCgroup::new(&tag);
    let mut dp = DataplaneGuard::load(&tag);
    dp.attach_cgroup(&cgroup.0).expect("attaching to the test cgroup");
    Some(Env { dp, cgroup, _route: route, _serial: serial })
}

/// Removes cgroups and pin directories of earlier test processes that were killed before their
/// guards ran (their bpf_links died with them; only empty directories and pinned maps remain).
fn sweep_leftovers() {
    let alive = |name: &str| -> bool {
        let pid =
            name.strip_prefix("skiff-test-").and_then(|r| r.split('-').next()).and_then(|p| p.parse::<u32>().ok());
        match pid {
            Some(pid) => Path::new(&format!("/proc/{pid}")).exists(),
            None => true, // not ours: leave it
        }
    };
    for (root, is_pins) in [(CGROUP2_ROOT, false), ("/sys/fs/bpf", true)] {
        let Ok(entries) = std::fs::read_dir(root) else { continue };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("skiff-test-") || alive(&name) {
                continue;
            }
            if is_pins && let Ok(files) = std::fs::read_dir(e.path()) {
                for f in files.flatten() {
                    let _ = std::fs::remove_file(f.path());
                }
            }
            let _ = std::fs::remove_dir(e.path());
        }
    }
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
// Tests

#[test]
fn clusterip_tcp_spreads_refuses_and_follows_backend_removal() {
    let Some(mut env) = env() else { return };
    let vip = Ipv4Addr::new(10, 96, 100, 1);
    let backends = Backends::tcp(3);
    let stats = env.dp.services.upsert_service(vip, 80, Protocol::Tcp, &backends.list()).unwrap();
    assert_eq!(stats.slots_written, 3);
    // An identical upsert writes nothing.
    assert!(env.dp.services.upsert_service(vip, 80, Protocol::Tcp, &backends.list()).unwrap().is_noop());

    // 300 connections spread over 3 backends, each ≥ 20%; getpeername shows the service address.
    let out = run_client(&env.cgroup.0, "tcp 10.96.100.1:80 300");
    assert_eq!(out.len(), 300);
    let (ok, errs) = tally(&out);
    assert!(errs.is_empty(), "failed connections: {errs:?}");
    for i in 0..3 {
        let id = format!("be{i}");
        let n = ok.get(&id).copied().unwrap_or(0);
        assert!(n >= 60, "backend {id} got {n} of 300 connections: {ok:?}");
        assert_eq!(backends.count(&id), n, "server-side count of {id}");
    }
    for o in &out {
        if let Outcome::Ok { peer, .. } = o {
            assert_eq!(peer, "10.96.100.1:80", "getpeername must return the service address");
        }
    }
    let c = env.dp.services.counters(vip, 80, Protocol::Tcp).unwrap().unwrap();
    assert_eq!((c.translated, c.refused), (300, 0), "per-service counters");
    let mut times: Vec<u64> =
        out.iter().filter_map(|o| if let Outcome::Ok { micros, .. } = o { Some(*micros) } else { None }).collect();
    times.sort();
    eprintln!("translated connect: p50 {} µs, p99 {} µs", times[times.len() / 2], times[times.len() * 99 / 100]);
    // For comparison (printed only): the same client straight to a backend.
    let direct = run_client(&env.cgroup.0, &format!("tcp {} 300", backends.addrs[0]));
    let mut dtimes: Vec<u64> =
        direct.iter().filter_map(|o| if let Outcome::Ok { micros, .. } = o { Some(*micros) } else { None }).collect();
    dtimes.sort();
    if !dtimes.is_empty() {
        eprintln!(
            "direct connect:     p50 {} µs, p99 {} µs",
            dtimes[dtimes.len() / 2],
            dtimes[dtimes.len() * 99 / 100]
        );
    }

    // Remove backend 1: no new connection reaches it.
    let keep: Vec<_> = backends.list().into_iter().enumerate().filter(|(i, _)| *i != 1).map(|(_, b)| b).collect();
    let before = backends.count("be1");
    let stats = env.dp.services.upsert_service(vip, 80, Protocol::Tcp, &keep).unwrap();
    assert_eq!((stats.slots_written, stats.slots_deleted), (1, 1), "swap-remove: one slot rewritten, one deleted");
    let out = run_client(&env.cgroup.0, "tcp 10.96.100.1:80 100");
    let (ok, errs) = tally(&out);
    assert!(errs.is_empty(), "failed connections: {errs:?}");
    assert_eq!(ok.get("be1"), None, "removed backend got connections: {ok:?}");
    assert_eq!(backends.count("be1"), before);
    assert_eq!(ok.values().sum::<u32>(), 100);

    // No backends: refused at once with ECONNREFUSED, not a timeout.
    env.dp.services.upsert_service(vip, 80, Protocol::Tcp, &[]).unwrap();
    let out = run_client(&env.cgroup.0, "tcp 10.96.100.1:80 20");
    for o in &out {
        match o {
            Outcome::Err { kind, errno, micros } => {
                assert_eq!((kind.as_str(), *errno), ("ConnectionRefused", libc::ECONNREFUSED), "{o:?}");
                assert!(*micros < 10_000, "refusal took {micros} µs");
            }
            other => panic!("connection to a service without backends succeeded: {other:?}"),
        }
    }
    let c = env.dp.services.counters(vip, 80, Protocol::Tcp).unwrap().unwrap();
    assert_eq!((c.translated, c.refused), (400, 20), "per-service counters");
    let worst = out.iter().map(|o| if let Outcome::Err { micros, .. } = o { *micros } else { 0 }).max().unwrap();
    eprintln!("no-backend refusal: worst {worst} µs");

    // Backends back, then the service removed: the VIP is no longer translated and the blackhole
    // route refuses it locally (nothing leaves the machine).
    env.dp.services.upsert_service(vip, 80, Protocol::Tcp, &backends.list()).unwrap();
    assert_eq!(env.dp.services.backends(vip, 80, Protocol::Tcp).unwrap().len(), 3);
    env.dp.services.remove_service(vip, 80, Protocol::Tcp).unwrap();
    assert!(env.dp.services.is_empty());
    let out = run_client(&env.cgroup.0, "tcp 10.96.100.1:80 1");
    assert!(matches!(out[0], Outcome::Err { .. }), "untranslated VIP must not connect: {:?}", out[0]);
}

#[test]
fn clusterip_udp_replies_come_from_the_service_address() {
    let Some(mut env) = env() else { return };
    let vip = Ipv4Addr::new(10, 96, 100, 2);
    let backends = Backends::udp(3);
    env.dp.services.upsert_service(vip, 53, Protocol::Udp, &backends.list()).unwrap();

    // Unconnected sendto/recvfrom: sendmsg4 translates, recvmsg4 shows the service as source.
    let out = run_client(&env.cgroup.0, "udp-unconnected 10.96.100.2:53 60");
    let (ok, errs) = tally(&out);
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(ok.values().sum::<u32>(), 60);
    for o in &out {
        if let Outcome::Ok { peer, .. } = o {
            assert_eq!(peer, "10.96.100.2:53", "a UDP reply must come from the service address");
        }
    }

    // Connected UDP: connect4 picks one backend for the socket; getpeername shows the service.
    let out = run_client(&env.cgroup.0, "udp-connected 10.96.100.2:53 10");
    let (ok, errs) = tally(&out);
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(ok.len(), 1, "a connected UDP socket sticks to one backend: {ok:?}");
    for o in &out {
        if let Outcome::Ok { peer, .. } = o {
            assert_eq!(peer, "10.96.100.2:53");
        }
    }

    // The TCP entry for the same address and port does not exist: protocols are separate keys.
    assert!(env.dp.services.backends(vip, 53, Protocol::Tcp).is_none());
}

#[test]
fn a_new_agent_reuses_pinned_maps() {
    let Some(mut env) = env() else { return };
    let vip = Ipv4Addr::new(10, 96, 100, 3);
    let backends = Backends::tcp(2);
    env.dp.services.upsert_service(vip, 8080, Protocol::Tcp, &backends.list()).unwrap();
    // A second loader on the same pin directory (what a restarted agent does) sees the service.
    let config = Config { object: ObjectSource::Path(default_object_path()), pin_dir: env.dp.pin_dir().to_path_buf() };
    let mut second = Dataplane::load(&config).expect("second load");
    let mut got = second.services.backends(vip, 8080, Protocol::Tcp).expect("service recovered from the pinned map");
    let mut want = backends.list();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    // Its updates are visible to the programs the first one attached (same maps).
    second.services.upsert_service(vip, 8080, Protocol::Tcp, &want[..1]).unwrap();
    drop(second); // not cleanup(): that would unpin the maps the first instance still uses
    let out = run_client(&env.cgroup.0, "tcp 10.96.100.3:8080 20");
    let (ok, errs) = tally(&out);
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(ok.len(), 1, "only the backend the second instance left: {ok:?}");
    // Keep the first instance's in-memory view consistent for its cleanup.
    env.dp.services.remove_service(vip, 8080, Protocol::Tcp).unwrap();
}

#[test]
fn programming_10k_services_and_one_change() {
    let Some(mut env) = env() else { return };
    let be: Vec<(Ipv4Addr, u16)> = (0..3).map(|i| (Ipv4Addr::LOCALHOST, 20_000 + i)).collect();
    // 10,000 ClusterIPs in 10.100.0.0/16 (inside the blackholed 10.96.0.0/12), 3 backends each.
    let vips: Vec<Ipv4Addr> = (0..10_000u32).map(|i| Ipv4Addr::from(0x0a64_0000 + i)).collect();
    let t = Instant::now();
    for vip in &vips {
        env.dp.services.upsert_service(*vip, 80, Protocol::Tcp, &be).unwrap();
    }
    let scratch = t.elapsed();
    assert_eq!(env.dp.services.len(), 10_000);
    // One change with 10,000 present: a backend replaced.
    let changed = [be[0], be[1], (Ipv4Addr::LOCALHOST, 20_003)];
    let t = Instant::now();
    let stats = env.dp.services.upsert_service(vips[5000], 80, Protocol::Tcp, &changed).unwrap();
    let one = t.elapsed();
    assert_eq!(stats.slots_written, 1);
    eprintln!("programmed 10,000 services x 3 backends from scratch in {scratch:?}; one change in {one:?}");
    // Generous bounds (shared 2-core machine, unoptimised test build); the numbers are printed.
    assert!(scratch < Duration::from_secs(5), "{scratch:?}");
    assert!(one < Duration::from_millis(50), "{one:?}");
    let t = Instant::now();
    assert_eq!(env.dp.services.retain(|_| false).unwrap(), 10_000);
    eprintln!("removed 10,000 services in {:?}", t.elapsed());
    assert!(env.dp.services.is_empty());
}
