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
use common::{Backends, CGROUP2_ROOT, TestCgroup, test_cgroup};
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
            // One connection held open for `ms`: its peer address is printed when it opens (so
            // the test knows it is up), the connection closed after the pause.
            ["tcp-hold", addr, ms] => {
                let addr: SocketAddr = addr.parse().unwrap();
                let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
                println!("{PREFIX}ok held {} 0", s.peer_addr().unwrap());
                std::io::Write::flush(&mut std::io::stdout()).unwrap();
                std::thread::sleep(Duration::from_millis(ms.parse().unwrap()));
                drop(s);
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
            // A long-lived connected UDP socket (a resolver's): `n1` exchanges, a pause of `ms`
            // (the test removes this socket's backend meanwhile), then `n2` more, reconnecting
            // after an error as resolvers do. Sockets connected straight to the backends listed in
            // `direct` (comma-separated) exchange one message each at the end.
            ["udp-hold", addr, n1, ms, n2, direct] => {
                let addr: SocketAddr = addr.parse().unwrap();
                let directs: Vec<UdpSocket> = direct
                    .split(',')
                    .map(|d| {
                        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                        s.connect(d.parse::<SocketAddr>().unwrap()).unwrap();
                        s
                    })
                    .collect();
                let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
                sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                sock.connect(addr).unwrap();
                let exchange = |sock: &UdpSocket| -> std::io::Result<String> {
                    sock.send(b"ping")?;
                    let mut buf = [0u8; 64];
                    let len = sock.recv(&mut buf)?;
                    Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
                };
                let report = |r: std::io::Result<String>| match r {
                    Ok(id) => println!("{PREFIX}ok {id} - 0"),
                    Err(e) => println!("{PREFIX}err {:?} {} 0", e.kind(), e.raw_os_error().unwrap_or(0)),
                };
                for _ in 0..n1.parse::<u32>().unwrap() {
                    report(exchange(&sock));
                }
                std::thread::sleep(Duration::from_millis(ms.parse().unwrap()));
                for _ in 0..n2.parse::<u32>().unwrap() {
                    let r = exchange(&sock);
                    let failed = r.is_err();
                    report(r);
                    if failed {
                        let _ = sock.connect(addr);
                    }
                }
                for d in &directs {
                    report(exchange(d));
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
    let out = client_command(cgroup, script).output().expect("running the client child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "client failed: {}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    stdout.lines().filter_map(parse_outcome).collect()
}

/// One line of the client's output, if it is a result line.
fn parse_outcome(line: &str) -> Option<Outcome> {
    // libtest prints "test client_helper ... " without a newline before the test's own output.
    let l = &line[line.find(PREFIX)? + PREFIX.len()..];
    let f: Vec<&str> = l.split_whitespace().collect();
    Some(match f[0] {
        "ok" => Outcome::Ok { id: f[1].into(), peer: f[2].into(), micros: f[3].parse().unwrap() },
        _ => Outcome::Err { kind: f[1].into(), errno: f[2].parse().unwrap(), micros: f[3].parse().unwrap() },
    })
}

/// The client child's command: this test binary, moved into `cgroup` before it execs.
fn client_command(cgroup: &Path, script: &str) -> Command {
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
    cmd
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
    let cgroup = test_cgroup(&tag);
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

/// Asserts that all `n` outcomes succeeded and that each saw `peer` as the other end (the
/// service address: getpeername for TCP, the reply's source for UDP); the count per backend.
fn all_ok_from(outcomes: &[Outcome], n: u32, peer: &str) -> HashMap<String, u32> {
    let (ok, errs) = tally(outcomes);
    assert!(errs.is_empty(), "failed: {errs:?}");
    assert_eq!(ok.values().sum::<u32>(), n);
    for o in outcomes {
        if let Outcome::Ok { peer: seen, .. } = o {
            assert_eq!(seen, peer, "the client must see the service address");
        }
    }
    ok
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
    let stats = env.dp.services.upsert_service(vip, 80, Protocol::Tcp, &backends.list(), None).unwrap();
    assert_eq!(stats.slots_written, 3);
    // An identical upsert writes nothing.
    assert!(env.dp.services.upsert_service(vip, 80, Protocol::Tcp, &backends.list(), None).unwrap().is_noop());

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
    let stats = env.dp.services.upsert_service(vip, 80, Protocol::Tcp, &keep, None).unwrap();
    assert_eq!((stats.slots_written, stats.slots_deleted), (1, 1), "swap-remove: one slot rewritten, one deleted");
    let out = run_client(&env.cgroup.0, "tcp 10.96.100.1:80 100");
    let (ok, errs) = tally(&out);
    assert!(errs.is_empty(), "failed connections: {errs:?}");
    assert_eq!(ok.get("be1"), None, "removed backend got connections: {ok:?}");
    assert_eq!(backends.count("be1"), before);
    assert_eq!(ok.values().sum::<u32>(), 100);

    // No backends: refused at once with ECONNREFUSED, not a timeout.
    env.dp.services.upsert_service(vip, 80, Protocol::Tcp, &[], None).unwrap();
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
    env.dp.services.upsert_service(vip, 80, Protocol::Tcp, &backends.list(), None).unwrap();
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
    env.dp.services.upsert_service(vip, 53, Protocol::Udp, &backends.list(), None).unwrap();

    // Unconnected sendto/recvfrom: sendmsg4 translates, recvmsg4 shows the service as source.
    let out = run_client(&env.cgroup.0, "udp-unconnected 10.96.100.2:53 60");
    all_ok_from(&out, 60, "10.96.100.2:53");

    // Connected UDP: connect4 picks one backend for the socket; getpeername shows the service.
    let out = run_client(&env.cgroup.0, "udp-connected 10.96.100.2:53 10");
    let ok = all_ok_from(&out, 10, "10.96.100.2:53");
    assert_eq!(ok.len(), 1, "a connected UDP socket sticks to one backend: {ok:?}");

    // The TCP entry for the same address and port does not exist: protocols are separate keys.
    assert!(env.dp.services.backends(vip, 53, Protocol::Tcp).is_none());
}

/// The backends that answered, with how many connections each.
fn served(out: &[Outcome]) -> HashMap<String, u32> {
    let (ok, errs) = tally(out);
    assert!(errs.is_empty(), "failed connections: {errs:?}");
    ok
}

#[test]
fn client_ip_affinity_sticks_expires_and_leaves_removed_backends() {
    let Some(mut env) = env() else { return };
    let vip = Ipv4Addr::new(10, 96, 100, 4);
    let backends = Backends::tcp(3);
    let all = backends.list();
    // sessionAffinity: ClientIP with a 1-second timeout.
    env.dp.services.upsert_service(vip, 80, Protocol::Tcp, &all, Some(1)).unwrap();

    // One client (this machine's network namespace) keeps its backend, across processes too.
    let first = served(&run_client(&env.cgroup.0, "tcp 10.96.100.4:80 40"));
    assert_eq!(first.len(), 1, "40 connections within the timeout must reach one backend: {first:?}");
    let sticky = first.keys().next().unwrap().clone();
    let again = served(&run_client(&env.cgroup.0, "tcp 10.96.100.4:80 10"));
    assert_eq!(again.keys().collect::<Vec<_>>(), [&sticky], "a second process of the same client");

    // After the timeout the client gets a fresh random choice: over ten expiries, more than one
    // backend (all ten the same has probability 3^-9).
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(1_300));
        seen.extend(served(&run_client(&env.cgroup.0, "tcp 10.96.100.4:80 1")).into_keys());
    }
    assert!(seen.len() > 1, "affinity never expired: always {seen:?}");

    // Its backend removed, the client moves to another one at once, and sticks to that.
    let current = served(&run_client(&env.cgroup.0, "tcp 10.96.100.4:80 1")).into_keys().next().unwrap();
    let idx: usize = current.trim_start_matches("be").parse().unwrap();
    let rest: Vec<_> = all.iter().enumerate().filter(|(i, _)| *i != idx).map(|(_, b)| *b).collect();
    env.dp.services.upsert_service(vip, 80, Protocol::Tcp, &rest, Some(1)).unwrap();
    let moved = served(&run_client(&env.cgroup.0, "tcp 10.96.100.4:80 30"));
    assert_eq!(moved.len(), 1, "sticks to one remaining backend: {moved:?}");
    assert!(!moved.contains_key(&current), "the removed backend {current} got connections: {moved:?}");

    // Affinity switched off: connections spread again.
    env.dp.services.upsert_service(vip, 80, Protocol::Tcp, &all, None).unwrap();
    let spread = served(&run_client(&env.cgroup.0, "tcp 10.96.100.4:80 60"));
    assert_eq!(spread.len(), 3, "without affinity all backends serve: {spread:?}");
}

#[test]
fn connected_udp_sockets_leave_a_removed_backend() {
    use std::io::BufRead;
    let Some(mut env) = env() else { return };
    let vip = Ipv4Addr::new(10, 96, 100, 5);
    let backends = Backends::udp(3);
    let all = backends.list();
    env.dp.services.upsert_service(vip, 53, Protocol::Udp, &all, None).unwrap();
    let direct: Vec<String> = backends.addrs.iter().map(|a| a.to_string()).collect();
    let script = format!("udp-hold 10.96.100.5:53 3 1500 10 {}", direct.join(","));
    let mut child = client_command(&env.cgroup.0, &script)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawning the client child");
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = || loop {
        let line = lines.next().expect("client output ended early").unwrap();
        if let Some(o) = parse_outcome(&line) {
            return o;
        }
    };
    // The socket's backend, from its first exchanges.
    let before: Vec<Outcome> = (0..3).map(|_| next()).collect();
    let pinned = served(&before);
    assert_eq!(pinned.len(), 1, "a connected socket talks to one backend: {pinned:?}");
    let old = pinned.into_keys().next().unwrap();
    let idx: usize = old.trim_start_matches("be").parse().unwrap();
    // The backend leaves the service while the socket stays connected to it (the backend itself
    // keeps answering, so only re-steering can move the socket).
    let rest: Vec<_> = all.iter().enumerate().filter(|(i, _)| *i != idx).map(|(_, b)| *b).collect();
    env.dp.services.upsert_service(vip, 53, Protocol::Udp, &rest, None).unwrap();
    let after: Vec<Outcome> = (0..10).map(|_| next()).collect();
    let directs: Vec<Outcome> = (0..3).map(|_| next()).collect();
    assert!(child.wait().unwrap().success());
    // The socket was told (ECONNABORTED, or EDESTADDRREQ once disconnected) and, reconnected,
    // reaches only the remaining backends.
    let errors: Vec<&Outcome> = after.iter().filter(|o| matches!(o, Outcome::Err { .. })).collect();
    assert!(!errors.is_empty() && errors.len() <= 2, "the socket must be aborted once: {after:?}");
    assert!(matches!(after[0], Outcome::Err { .. }), "the first exchange after removal must fail: {after:?}");
    for o in &after {
        if let Outcome::Ok { id, .. } = o {
            assert_ne!(id, &old, "the removed backend still got traffic: {after:?}");
        }
    }
    // Sockets connected to the backends directly, not through the service, are left alone.
    let direct_ok = served(&directs);
    assert_eq!(direct_ok.values().sum::<u32>(), 3, "{directs:?}");
}

#[test]
fn a_closed_socket_takes_its_reverse_entry_with_it() {
    let Some(mut env) = env() else { return };
    let vip = Ipv4Addr::new(10, 96, 100, 4);
    let backends = Backends::tcp(2);
    env.dp.services.upsert_service(vip, 80, Protocol::Tcp, &backends.list(), None).unwrap();
    let before = env.dp.services.reverse_entries();

    // While a translated connection is open, its reverse entry exists (getpeername needs it).
    let mut child = client_command(&env.cgroup.0, "tcp-hold 10.96.100.4:80 1500")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting the holding client");
    let mut first = String::new();
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    while !first.contains(PREFIX) {
        first.clear();
        assert!(std::io::BufRead::read_line(&mut reader, &mut first).unwrap() > 0, "holding client ended early");
    }
    match parse_outcome(&first) {
        Some(Outcome::Ok { peer, .. }) => assert_eq!(peer, "10.96.100.4:80", "getpeername of the held connection"),
        other => panic!("held connection: {other:?}"),
    }
    assert_eq!(env.dp.services.reverse_entries(), before + 1, "the open connection's reverse entry");
    assert!(child.wait().unwrap().success());
    assert_eq!(env.dp.services.reverse_entries(), before, "closing the connection removed its entry");

    // 300 short connections: each showed the service address while open, none left an entry.
    let out = run_client(&env.cgroup.0, "tcp 10.96.100.4:80 300");
    all_ok_from(&out, 300, "10.96.100.4:80");
    assert_eq!(env.dp.services.reverse_entries(), before, "closed sockets left reverse entries behind");
    env.dp.services.remove_service(vip, 80, Protocol::Tcp).unwrap();
}

#[test]
fn a_new_agent_reuses_pinned_maps() {
    let Some(mut env) = env() else { return };
    let vip = Ipv4Addr::new(10, 96, 100, 3);
    let backends = Backends::tcp(2);
    env.dp.services.upsert_service(vip, 8080, Protocol::Tcp, &backends.list(), None).unwrap();
    // A second loader on the same pin directory (what a restarted agent does) sees the service.
    let config = Config { object: ObjectSource::Path(default_object_path()), pin_dir: env.dp.pin_dir().to_path_buf() };
    let mut second = Dataplane::load(&config).expect("second load");
    let mut got = second.services.backends(vip, 8080, Protocol::Tcp).expect("service recovered from the pinned map");
    let mut want = backends.list();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    // Its updates are visible to the programs the first one attached (same maps).
    second.services.upsert_service(vip, 8080, Protocol::Tcp, &want[..1], None).unwrap();
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
        env.dp.services.upsert_service(*vip, 80, Protocol::Tcp, &be, None).unwrap();
    }
    let scratch = t.elapsed();
    assert_eq!(env.dp.services.len(), 10_000);
    // One change with 10,000 present: a backend replaced.
    let changed = [be[0], be[1], (Ipv4Addr::LOCALHOST, 20_003)];
    let t = Instant::now();
    let stats = env.dp.services.upsert_service(vips[5000], 80, Protocol::Tcp, &changed, None).unwrap();
    let one = t.elapsed();
    assert_eq!(stats.slots_written, 1);
    // Printed, not asserted: speed is `cargo xtask bench dataplane`'s business.
    eprintln!("programmed 10,000 services x 3 backends from scratch in {scratch:?}; one change in {one:?}");
    let t = Instant::now();
    assert_eq!(env.dp.services.retain(|_| false).unwrap(), 10_000);
    eprintln!("removed 10,000 services in {:?}", t.elapsed());
    assert!(env.dp.services.is_empty());
}
