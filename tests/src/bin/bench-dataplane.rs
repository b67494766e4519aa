//! `cargo xtask bench dataplane`: short TCP connections through a ClusterIP with 100, 1,000 and
//! 10,000 services installed, in the same round as the limit and the baselines:
//!
//! - `direct`: the client connects straight to the backends (the limit);
//! - `ebpf`: Skiff's socket load balancer (`skiff_agent::dataplane`): the programs loaded with a
//!   pin directory of this run's own, attached to a cgroup of its own under
//!   `/sys/fs/cgroup/unified` (never the root cgroup), services written with
//!   `ServiceTable::upsert_service`;
//! - `iptables`: a rule set laid out like kube-proxy's iptables mode (nat `OUTPUT` →
//!   `KUBE-SERVICES` → one `-d VIP/32 -p tcp --dport P -j KUBE-SVC-*` rule per service →
//!   `-m statistic --mode random --probability …` → `KUBE-SEP-*` with `KUBE-MARK-MASQ` and
//!   `-j DNAT --to-destination`, masquerade in `KUBE-POSTROUTING`; the client stands for a pod,
//!   see [`CLUSTER_CIDR`]), loaded with one `iptables-restore`, the measured service last in
//!   `KUBE-SERVICES`;
//! - `nftables`: Skiff's own nftables proxy mode (`skiff_agent::proxy::NftServiceTable`, the
//!   table `skiff agent --proxy-mode nftables` programs) in the client netns, all services in one
//!   `apply_batch` as a full sync does.
//!
//! Measured: connections per second (connect, read the server's close, close) one at a time and
//! 16 concurrent, and `connect()` latency p50/p99; time to program all services from scratch and
//! one service change with all present (eBPF map updates; full `iptables-restore` and a
//! kube-proxy-style partial `--noflush` restore).
//!
//! Method and safety (DESIGN.md §5): every (round, size, mode) cell gets fresh network
//! namespaces made here — a client netns and a server netns joined by a veth pair with
//! 10.250.0.1/30 and 10.250.0.2/30, nothing else but loopback in either, and in the client netns
//! the service range 10.96.0.0/12 routed over the veth (no path off the machine). Fresh namespaces
//! per cell keep TIME_WAIT state of one mode from tripping PAWS checks of the next. The iptables
//! rules live only inside the client netns (never the host's tables) and go away with it. The
//! client is this binary re-executed (`SKBENCH_ROLE=client`): before exec it enters the client
//! netns (`setns`), joins the benchmark's cgroup for the eBPF mode only, and pins itself to CPU
//! 0; the server (`SKBENCH_ROLE=server`, accept and close on three ports) runs in the server netns
//! on CPU 1. Rounds interleave the modes (order rotated). Namespaces, the cgroup, the pin
//! directory and the children are released by `Drop` guards, also on error or panic; leftovers of
//! killed runs (their pid is gone) are swept at start. Children stop by themselves (the client
//! after its time, the server when its stdin closes or after an hour).
//!
//! Options: `--quick` (1 round, 100 and 10,000 services, 1 s per measurement), `--rounds N`,
//! `--secs S` (per measurement, default 4), `--sizes 100,1000,10000`.

use anyhow::{Context, Result, bail, ensure};
use skiff_agent::dataplane::{
    Config, Dataplane, Frontend, FrontendPolicy, ObjectSource, Protocol, default_object_path,
};
use skiff_agent::proxy::desired::{Desired, DesiredFrontend, ServicePortName};
use skiff_agent::proxy::{NftConfig, NftServiceTable, ProxyTable};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const ROLE_ENV: &str = "SKBENCH_ROLE";
const CGROUP2_ROOT: &str = "/sys/fs/cgroup/unified";
const BPFFS: &str = "/sys/fs/bpf";
/// Prefix of everything this benchmark creates: netns `skbench-{c,s}-<pid>-<n>`, cgroup and pin
/// directories `skiff-bench-dp-<pid>[-<n>]`.
const NETNS_PREFIX: &str = "skbench-";
const DIR_PREFIX: &str = "skiff-bench-dp-";
const SERVICE_RANGE: &str = "10.96.0.0/12";
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
const BACKEND_PORTS: [u16; 3] = [8080, 8081, 8082];
/// The measured service; the others are fillers at 10.100.x.y:80 with endpoints in the pod range
/// that no connection ever reaches.
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 100, 100);
const SERVICE_PORT: u16 = 80;
/// The pod range the iptables rules are written for (kube-proxy's `--cluster-cidr`). The client
/// netns stands for a pod, so `KUBE-MARK-MASQ` is evaluated but does not match: pod → service
/// without SNAT, like the eBPF mode. (A node-local client would be masqueraded with
/// `--random-fully`; with one client address at these rates the server's TIME_WAIT sockets then
/// rejected ~2 % of the SYNs (PAWS), which measures the benchmark rather than the rule set.)
const CLUSTER_CIDR: &str = "10.250.0.0/16";
const ENDPOINTS_PER_SERVICE: usize = 3;
const CLIENT_CPU: usize = 0;
const SERVER_CPU: usize = 1;
const CONCURRENCY: [usize; 2] = [1, 16];
/// Per-connection timeouts of the client: a connection that is not translated goes nowhere. Longer
/// than the first SYN retransmission (1 s), which then shows in the latency instead.
const IO_TIMEOUT: Duration = Duration::from_secs(3);
/// Servers exit by themselves after this long even if nobody closes their stdin.
const SERVER_MAX_LIFETIME: Duration = Duration::from_secs(3600);

/// Whether Skiff's nftables proxy mode is measured (switch it off to compare the others alone).
const NFTABLES_MODE: bool = true;
/// The nftables table of the nftables mode (inside the client netns).
const NFT_TABLE: &str = "skiff-proxy";

static SEQ: AtomicU64 = AtomicU64::new(0);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Direct,
    Ebpf,
    Iptables,
    Nftables,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Ebpf => "ebpf",
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Mode::Direct => "direct to backend (limit)",
            Mode::Ebpf => "Skiff eBPF socket LB",
            Mode::Iptables => "kube-proxy iptables layout",
            Mode::Nftables => "Skiff nftables mode",
        }
    }
}

/// One service as both programmable modes see it.
struct Service {
    vip: Ipv4Addr,
    port: u16,
    backends: Vec<(Ipv4Addr, u16)>,
}

/// `size` services: `size - 1` fillers, then the measured one (last, as kube-proxy's worst case).
fn services(size: usize) -> Vec<Service> {
    let mut v = Vec::with_capacity(size);
    for i in 0..size.saturating_sub(1) {
        let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + 1 + i as u32);
        let backends =
            (0..ENDPOINTS_PER_SERVICE).map(|e| (filler_endpoint(i * ENDPOINTS_PER_SERVICE + e), 8080)).collect();
        v.push(Service { vip, port: SERVICE_PORT, backends });
    }
    v.push(Service { vip: VIP, port: SERVICE_PORT, backends: BACKEND_PORTS.iter().map(|p| (SERVER_IP, *p)).collect() });
    v
}

/// An address in the pod range for filler endpoint `k` (never contacted).
fn filler_endpoint(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, ((k / 250) % 256) as u8, (k % 250 + 1) as u8)
}

// ---------------------------------------------------------------------------------------------
// Children: client and server

/// Results line of the client child.
const RESULT_TAG: &str = "SKBENCH-RESULT";

fn client_main() -> Result<()> {
    let targets: Vec<SocketAddrV4> = std::env::var("SKBENCH_TARGETS")?
        .split(',')
        .map(|t| t.parse().with_context(|| format!("target {t}")))
        .collect::<Result<_>>()?;
    let conc: usize = std::env::var("SKBENCH_CONC")?.parse()?;
    let secs: f64 = std::env::var("SKBENCH_SECS")?.parse()?;
    let warmup: f64 = std::env::var("SKBENCH_WARMUP")?.parse()?;
    let start = Instant::now();
    let warm_end = start + Duration::from_secs_f64(warmup);
    let end = warm_end + Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..conc)
        .map(|j| {
            let targets = targets.clone();
            std::thread::spawn(move || {
                let mut lat_ns: Vec<u32> = Vec::with_capacity(1 << 16);
                let (mut errors, mut first_err) = (0u64, None::<String>);
                let mut k = j;
                loop {
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    let target = targets[k % targets.len()];
                    k += 1;
                    match connect_once(target) {
                        Ok(lat) if t0 >= warm_end => lat_ns.push(lat.as_nanos().min(u32::MAX as u128) as u32),
                        Ok(_) => {}
                        Err(e) => {
                            errors += 1;
                            first_err.get_or_insert_with(|| format!("{target}: {e}"));
                            // A refused or timed-out connection must not turn into a busy loop.
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
                (lat_ns, errors, first_err)
            })
        })
        .collect();
    let (mut lat, mut errors, mut first_err) = (Vec::new(), 0, None);
    for t in threads {
        let (l, e, f) = t.join().map_err(|_| anyhow::anyhow!("client thread panicked"))?;
        lat.extend(l);
        errors += e;
        if first_err.is_none() {
            first_err = f;
        }
    }
    lat.sort_unstable();
    let pct =
        |p: usize| if lat.is_empty() { 0.0 } else { lat[(lat.len() * p / 100).min(lat.len() - 1)] as f64 / 1000.0 };
    println!(
        "{RESULT_TAG} {} {errors} {secs} {:.2} {:.2} {}",
        lat.len(),
        pct(50),
        pct(99),
        first_err.unwrap_or_else(|| "-".into()).replace(' ', "_")
    );
    Ok(())
}

/// socket, connect (timed), wait for the server's close, close. Plain syscalls, as a client
/// library would issue them; the timeouts keep an untranslated connect from hanging.
fn connect_once(target: SocketAddrV4) -> std::io::Result<Duration> {
    // SAFETY: plain socket syscalls on a descriptor owned here and closed on every path.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let tv = libc::timeval { tv_sec: IO_TIMEOUT.as_secs() as _, tv_usec: 0 };
        let tvp = (&tv as *const libc::timeval).cast();
        let tvl = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDTIMEO, tvp, tvl);
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, tvp, tvl);
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: target.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(*target.ip()).to_be() },
            sin_zero: [0; 8],
        };
        let t = Instant::now();
        let r = libc::connect(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let lat = t.elapsed();
        if r != 0 {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        let mut buf = [0u8; 16];
        loop {
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            if n == 0 {
                break;
            }
            if n < 0 {
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                return Err(e);
            }
        }
        libc::close(fd);
        Ok(lat)
    }
}

fn server_main() -> Result<()> {
    let listen = std::env::var("SKBENCH_LISTEN")?;
    let mut listeners = Vec::new();
    for a in listen.split(',') {
        let l = TcpListener::bind(a).with_context(|| format!("binding {a}"))?;
        // A deeper backlog than std's default for the 16 concurrent clients.
        // SAFETY: listen(2) again on a listening socket only changes its backlog.
        unsafe { libc::listen(l.as_raw_fd(), 4096) };
        listeners.push(l);
    }
    for l in listeners {
        std::thread::spawn(move || {
            loop {
                match l.accept() {
                    Ok((s, _)) => drop(s), // accept and close
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        });
    }
    std::thread::spawn(|| {
        std::thread::sleep(SERVER_MAX_LIFETIME);
        std::process::exit(0);
    });
    println!("ready");
    std::io::stdout().flush()?;
    // Until the parent closes our stdin (or dies).
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    std::process::exit(0)
}

// ---------------------------------------------------------------------------------------------
// Process placement: netns, cgroup, CPU

/// Runs `cmd` inside netns `netns` (setns before exec), optionally moved into `cgroup` and pinned
/// to `cpu`.
fn place(cmd: &mut Command, netns: &str, cgroup: Option<&Path>, cpu: Option<usize>) {
    let ns = CString::new(format!("/run/netns/{netns}")).expect("netns name");
    let procs = cgroup.map(|c| CString::new(c.join("cgroup.procs").into_os_string().into_encoded_bytes()).unwrap());
    // SAFETY: only async-signal-safe syscalls (open, setns, write, close, sched_setaffinity)
    // between fork and exec; the C strings were allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(ns.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                return Err(e);
            }
            libc::close(fd);
            if let Some(p) = &procs {
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0" moves the writing process itself.
                let r = libc::write(fd, b"0".as_ptr().cast(), 1);
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                if r != 1 {
                    return Err(e);
                }
            }
            if let Some(cpu) = cpu {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Guards

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip")?;
    ensure!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

/// A client and a server network namespace joined by a veth pair; both deleted on drop (which
/// deletes the veth pair and every rule inside them).
struct NetPair {
    client: String,
    server: String,
}

impl NetPair {
    fn create() -> Result<Self> {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let pair =
            NetPair { client: format!("{NETNS_PREFIX}c-{pid}-{n}"), server: format!("{NETNS_PREFIX}s-{pid}-{n}") };
        // From here on, drop deletes what exists.
        ip(&["netns", "add", &pair.client])?;
        ip(&["netns", "add", &pair.server])?;
        let (c, s) = (pair.client.as_str(), pair.server.as_str());
        // The veth is created inside the client netns with its peer placed straight into the
        // server netns: it never exists in the host's namespace.
        ip(&["-n", c, "link", "add", "vc", "type", "veth", "peer", "name", "vs", "netns", s])?;
        ip(&["-n", c, "addr", "add", &format!("{CLIENT_IP}/30"), "dev", "vc"])?;
        ip(&["-n", s, "addr", "add", &format!("{SERVER_IP}/30"), "dev", "vs"])?;
        for (ns, dev) in [(c, "vc"), (s, "vs"), (c, "lo"), (s, "lo")] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        ip(&["-n", c, "route", "add", SERVICE_RANGE, "via", &SERVER_IP.to_string(), "dev", "vc"])?;
        pair.check()?;
        Ok(pair)
    }

    /// The namespaces hold nothing but loopback and the veth, and a VIP is routed over the veth.
    fn check(&self) -> Result<()> {
        for (ns, dev) in [(&self.client, "vc"), (&self.server, "vs")] {
            let out = Command::new("ip").args(["-n", ns, "-o", "link", "show"]).output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            for l in text.lines() {
                let name = l.split(':').nth(1).unwrap_or("").trim().split('@').next().unwrap_or("");
                ensure!(name == "lo" || name == dev, "unexpected interface {name:?} in netns {ns}");
            }
        }
        let out = Command::new("ip").args(["-n", &self.client, "-4", "route", "get", &VIP.to_string()]).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(text.contains(&format!("via {SERVER_IP} dev vc")), "VIP route in the client netns: {text}");
        Ok(())
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
        }
    }
}

/// The server child in the server netns; stopped on drop.
struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Server {
    fn start(net: &NetPair) -> Result<Self> {
        let listen: Vec<String> = BACKEND_PORTS.iter().map(|p| format!("{SERVER_IP}:{p}")).collect();
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.env(ROLE_ENV, "server")
            .env("SKBENCH_LISTEN", listen.join(","))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        place(&mut cmd, &net.server, None, Some(SERVER_CPU));
        let mut child = cmd.spawn().context("starting the server child")?;
        let stdin = child.stdin.take();
        let mut server = Server { child, stdin };
        let mut line = String::new();
        BufReader::new(server.child.stdout.take().context("server stdout")?).read_line(&mut line)?;
        ensure!(line.trim() == "ready", "the server did not start: {line:?}");
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The benchmark's cgroup v2 directory (a child of the cgroup2 root, never the root itself).
struct Cgroup(PathBuf);

impl Cgroup {
    fn create() -> Result<Self> {
        let p = Path::new(CGROUP2_ROOT).join(format!("{DIR_PREFIX}{}", std::process::id()));
        std::fs::create_dir(&p).with_context(|| format!("creating cgroup {}", p.display()))?;
        ensure!(p.parent() == Some(Path::new(CGROUP2_ROOT)) && p != Path::new(CGROUP2_ROOT));
        Ok(Cgroup(p))
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            match std::fs::remove_dir(&self.0) {
                Ok(()) => return,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => {
                    eprintln!("removing {}: {e}", self.0.display());
                    return;
                }
            }
        }
        eprintln!("cgroup {} still busy; left behind", self.0.display());
    }
}

/// The loaded eBPF dataplane with a pin directory of its own; detached and unpinned on drop.
struct Ebpf(Option<Dataplane>);

impl Ebpf {
    fn load() -> Result<Self> {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let pin_dir = Path::new(BPFFS).join(format!("{DIR_PREFIX}{}-{n}", std::process::id()));
        let config = Config { object: ObjectSource::Path(default_object_path()), pin_dir };
        Ok(Ebpf(Some(Dataplane::load(&config).context("loading the eBPF dataplane")?)))
    }
    fn dp(&mut self) -> &mut Dataplane {
        self.0.as_mut().expect("loaded")
    }
}

impl Drop for Ebpf {
    fn drop(&mut self) {
        if let Some(dp) = self.0.take() {
            let pins = dp.pin_dir().to_path_buf();
            if let Err(e) = dp.cleanup() {
                eprintln!("dataplane cleanup: {e:#}");
            }
            if pins.exists() {
                remove_pin_dir(&pins);
            }
        }
    }
}

fn remove_pin_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                remove_pin_dir(&e.path());
            } else {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Removes what earlier runs left when they were killed before their guards ran (their pid is
/// gone): namespaces, cgroups, pin directories.
fn sweep_leftovers() {
    let dead = |rest: &str| -> bool {
        rest.split('-')
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|pid| pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists())
    };
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            let name = l.split_whitespace().next().unwrap_or("");
            let rest = name.strip_prefix(NETNS_PREFIX).and_then(|r| r.get(2..));
            if rest.is_some_and(dead) {
                eprintln!("sweeping leftover netns {name}");
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }
    for root in [CGROUP2_ROOT, BPFFS] {
        let Ok(entries) = std::fs::read_dir(root) else { continue };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.strip_prefix(DIR_PREFIX).is_some_and(dead) {
                eprintln!("sweeping leftover {}", e.path().display());
                if root == BPFFS {
                    remove_pin_dir(&e.path());
                } else if let Err(err) = std::fs::remove_dir(e.path()) {
                    eprintln!("  {err}");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The modes' programming

/// kube-proxy's chain-name style: a prefix and 16 characters from a hash of the name.
fn chain(prefix: &str, name: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let s: String = (0..16).map(|i| ALPHABET[((h >> (i * 4)) & 31) as usize] as char).collect();
    format!("{prefix}{s}")
}

/// The svc and sep chains of service `i` with its endpoints (an endpoint chain's name is a hash
/// of the service and the endpoint, as kube-proxy's).
fn service_chains(i: usize, s: &Service, decl: &mut String, rules: &mut String) {
    use std::fmt::Write as _;
    let name = service_name(i);
    let svc = chain("KUBE-SVC-", &name);
    let _ = writeln!(decl, ":{svc} - [0:0]");
    let _ = writeln!(
        rules,
        "-A {svc} ! -s {CLUSTER_CIDR} -d {}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport {} -j KUBE-MARK-MASQ",
        s.vip, s.port
    );
    let n = s.backends.len();
    for (e, (addr, port)) in s.backends.iter().enumerate() {
        let sep = sep_chain(&name, *addr, *port);
        let _ = writeln!(decl, ":{sep} - [0:0]");
        if e + 1 < n {
            let _ = writeln!(
                rules,
                "-A {svc} -m comment --comment \"{name} -> {addr}:{port}\" -m statistic --mode random --probability {:.11} -j {sep}",
                1.0 / (n - e) as f64
            );
        } else {
            let _ = writeln!(rules, "-A {svc} -m comment --comment \"{name} -> {addr}:{port}\" -j {sep}");
        }
        let _ = writeln!(rules, "-A {sep} -s {addr}/32 -m comment --comment \"{name}\" -j KUBE-MARK-MASQ");
        let _ = writeln!(
            rules,
            "-A {sep} -p tcp -m comment --comment \"{name}\" -m tcp -j DNAT --to-destination {addr}:{port}"
        );
    }
}

fn service_name(i: usize) -> String {
    format!("ns{}/svc{i}:http", i / 100)
}

fn sep_chain(service: &str, addr: Ipv4Addr, port: u16) -> String {
    chain("KUBE-SEP-", &format!("{service}/{addr}:{port}"))
}

/// The whole nat table as kube-proxy's iptables mode writes it (services in order; the measured
/// one is last).
fn iptables_ruleset(svcs: &[Service]) -> String {
    use std::fmt::Write as _;
    let mut decl = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         :KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n",
    );
    let mut rules = String::from(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n",
    );
    for (i, s) in svcs.iter().enumerate() {
        let name = service_name(i);
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport {} -j {}",
            s.vip,
            s.port,
            chain("KUBE-SVC-", &name)
        );
    }
    rules.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
    for (i, s) in svcs.iter().enumerate() {
        service_chains(i, s, &mut decl, &mut rules);
    }
    decl + &rules + "COMMIT\n"
}

/// Service `i` with its first endpoint replaced by `new`, as kube-proxy ≥ 1.27
/// (`MinimizeIPTablesRestore`) restores it: only the changed service's chains, `--noflush`, and
/// the stale endpoint chain deleted.
fn iptables_one_change(svcs: &[Service], i: usize, new: Ipv4Addr) -> String {
    let s = &svcs[i];
    let mut backends = s.backends.clone();
    let (old_addr, old_port) = backends[0];
    backends[0] = (new, 8080);
    let changed = Service { vip: s.vip, port: s.port, backends };
    let mut decl = String::from("*nat\n");
    let mut rules = String::new();
    service_chains(i, &changed, &mut decl, &mut rules);
    // Declared (which flushes it), then deleted: a chain must be empty to go.
    let stale = sep_chain(&service_name(i), old_addr, old_port);
    decl + &format!(":{stale} - [0:0]\n") + &rules + &format!("-X {stale}\nCOMMIT\n")
}

/// Runs `iptables-restore` (with `args`) inside the client netns; returns its wall time.
fn iptables_restore(net: &NetPair, args: &[&str], rules: &str) -> Result<Duration> {
    let mut cmd = Command::new("iptables-restore");
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
    place(&mut cmd, &net.client, None, None);
    let t = Instant::now();
    let mut child = cmd.spawn().context("running iptables-restore (is iptables installed?)")?;
    child.stdin.take().context("stdin")?.write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    let took = t.elapsed();
    ensure!(out.status.success(), "iptables-restore {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(took)
}

/// Skiff's nftables proxy mode inside the client netns: the table is opened from a thread that
/// entered the netns (its netlink socket stays bound there), then every service goes in with one
/// `apply_batch`, as the proxy's full sync does. Returns the table (dropping it closes the socket;
/// the netns' deletion removes the table) and the time to program everything.
fn program_nftables(net: &NetPair, svcs: &[Service]) -> Result<(NftServiceTable, Duration)> {
    let ns = format!("/run/netns/{}", net.client);
    let mut table = std::thread::spawn(move || -> Result<NftServiceTable> {
        let f = std::fs::File::open(&ns).with_context(|| format!("opening {ns}"))?;
        // SAFETY: setns on a valid descriptor; it changes only this (short-lived) thread.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context("entering the client netns");
        }
        NftServiceTable::new(NftConfig {
            table: NFT_TABLE.into(),
            service_range: Some(SERVICE_RANGE.parse()?),
            ..Default::default()
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the nftables thread panicked"))??;
    let desired: Desired = svcs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut backends = s.backends.clone();
            backends.sort();
            let service =
                ServicePortName { namespace: format!("ns{}", i / 100), name: format!("svc{i}"), port: "http".into() };
            let fe = Frontend { vip: s.vip, port: s.port, proto: Protocol::Tcp };
            (fe, DesiredFrontend { service, backends, affinity_timeout: None, external_local: false })
        })
        .collect();
    let t = Instant::now();
    let (_, ok) = table.apply_batch(&desired).context("the nftables table has no batch path")?;
    let took = t.elapsed();
    ensure!(ok, "programming the nftables table failed (see the log)");
    ensure!(table.len() == svcs.len(), "{} of {} frontends programmed", table.len(), svcs.len());
    Ok((table, took))
}

// ---------------------------------------------------------------------------------------------
// Measurement

#[derive(Clone, Copy, Debug, Default)]
struct Run {
    rate: f64,
    p50_us: f64,
    p99_us: f64,
    /// Connections that failed (timed out); not counted in `rate`.
    errors: u64,
}

/// Programming times of one cell (eBPF or iptables).
#[derive(Clone, Copy, Debug, Default)]
struct Programming {
    /// All services from scratch.
    scratch: Duration,
    /// One service change with all present (median).
    change: Duration,
    /// iptables only: the full rule set restored again with all present (a full resync).
    resync: Option<Duration>,
    /// eBPF only: loading the programs (verifier) and attaching them.
    load: Option<Duration>,
}

struct Opts {
    rounds: usize,
    secs: f64,
    warmup: f64,
    sizes: Vec<usize>,
    quick: bool,
}

fn run_client(net: &NetPair, cgroup: Option<&Path>, targets: &[SocketAddrV4], conc: usize, o: &Opts) -> Result<Run> {
    let targets: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(ROLE_ENV, "client")
        .env("SKBENCH_TARGETS", targets.join(","))
        .env("SKBENCH_CONC", conc.to_string())
        .env("SKBENCH_SECS", o.secs.to_string())
        .env("SKBENCH_WARMUP", o.warmup.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    place(&mut cmd, &net.client, cgroup, Some(CLIENT_CPU));
    let mut child = cmd.spawn().context("starting the client child")?;
    // The child stops by itself after warm-up + secs (+ one I/O timeout); kill it if it hangs.
    let limit = Duration::from_secs_f64(o.warmup + o.secs) + IO_TIMEOUT * 3 + Duration::from_secs(5);
    let t = Instant::now();
    while child.try_wait()?.is_none() {
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the client child did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "client child failed: {}", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find_map(|l| l.strip_prefix(RESULT_TAG)).context("no result from the client")?;
    let f: Vec<&str> = line.split_whitespace().collect();
    let (count, errors): (u64, u64) = (f[0].parse()?, f[1].parse()?);
    // A rare timeout on a loaded machine is reported; more than 1 % means the mode does not work.
    ensure!(
        count > 0 && errors * 100 <= count,
        "{errors} failed connections of {count} (first: {})",
        f[5].replace('_', " ")
    );
    if errors > 0 {
        eprintln!("  {errors} failed connection(s) of {count}: {}", f[5].replace('_', " "));
    }
    Ok(Run { rate: count as f64 / o.secs, p50_us: f[3].parse()?, p99_us: f[4].parse()?, errors })
}

/// One (round, size, mode) cell: fresh namespaces, the mode programmed, both concurrencies.
fn cell(mode: Mode, size: usize, cgroup: &Cgroup, o: &Opts) -> Result<(Vec<Run>, Option<Programming>)> {
    let net = NetPair::create()?;
    let _server = Server::start(&net)?;
    let svcs = services(size);
    let vip = [SocketAddrV4::new(VIP, SERVICE_PORT)];
    let direct: Vec<SocketAddrV4> = BACKEND_PORTS.iter().map(|p| SocketAddrV4::new(SERVER_IP, *p)).collect();
    let mut prog = None;
    // Field order is drop order: the eBPF programs go before the namespaces (and the cgroup,
    // which outlives every cell).
    let mut ebpf = None;
    let mut nft: Option<NftServiceTable> = None;
    let (targets, in_cgroup): (&[SocketAddrV4], bool) = match mode {
        Mode::Direct => (&direct, false),
        Mode::Ebpf => {
            let t = Instant::now();
            let mut e = Ebpf::load()?;
            e.dp().attach_cgroup(&cgroup.0).context("attaching to the benchmark's cgroup")?;
            let load = t.elapsed();
            let t = Instant::now();
            for s in &svcs {
                e.dp().services.upsert_service(s.vip, s.port, Protocol::Tcp, &s.backends, None)?;
            }
            prog = Some(Programming { scratch: t.elapsed(), load: Some(load), ..Default::default() });
            ebpf = Some(e);
            (&vip, true)
        }
        Mode::Iptables => {
            let scratch = iptables_restore(&net, &[], &iptables_ruleset(&svcs))?;
            prog = Some(Programming { scratch, ..Default::default() });
            (&vip, false)
        }
        Mode::Nftables => {
            let (table, scratch) = program_nftables(&net, &svcs)?;
            nft = Some(table);
            prog = Some(Programming { scratch, ..Default::default() });
            (&vip, false)
        }
    };
    let cg = in_cgroup.then_some(cgroup.0.as_path());
    let mut runs = Vec::new();
    for conc in CONCURRENCY {
        runs.push(run_client(&net, cg, targets, conc, o).with_context(|| format!("{} at {conc}", mode.name()))?);
    }
    // One service change with all present (after the traffic, so it does not disturb it):
    // services other than the measured one, each getting one endpoint replaced, once.
    if let Some(p) = prog.as_mut() {
        let changes = (if o.quick { 5 } else { 21 }).min(svcs.len() - 1);
        let mut times = Vec::new();
        for g in 0..changes {
            let i = (g * 7919) % (svcs.len() - 1);
            let new = filler_endpoint(1_000_000 + g);
            let mut backends = svcs[i].backends.clone();
            backends[0] = (new, 8080);
            let (vip, port) = (svcs[i].vip, svcs[i].port);
            let t = Instant::now();
            match mode {
                Mode::Ebpf => {
                    ebpf.as_mut().expect("loaded").dp().services.upsert_service(
                        vip,
                        port,
                        Protocol::Tcp,
                        &backends,
                        None,
                    )?;
                }
                Mode::Iptables => {
                    iptables_restore(&net, &["--noflush"], &iptables_one_change(&svcs, i, new))?;
                }
                Mode::Nftables => {
                    backends.sort();
                    nft.as_mut().expect("programmed").upsert_frontend(
                        vip,
                        port,
                        Protocol::Tcp,
                        &backends,
                        FrontendPolicy::default(),
                    )?;
                }
                Mode::Direct => {}
            }
            times.push(t.elapsed());
        }
        if mode == Mode::Iptables {
            p.resync = Some(iptables_restore(&net, &[], &iptables_ruleset(&svcs))?);
        }
        times.sort();
        p.change = times.get(times.len() / 2).copied().unwrap_or_default();
    }
    drop(nft);
    drop(ebpf);
    Ok((runs, prog))
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn sh(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn parse_opts() -> Result<Opts> {
    let mut o = Opts { rounds: 3, secs: 4.0, warmup: 0.5, sizes: vec![100, 1_000, 10_000], quick: false };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--quick" => {
                o.quick = true;
                o.rounds = 1;
                o.secs = 1.0;
                o.warmup = 0.2;
                o.sizes = vec![100, 10_000];
            }
            "--rounds" => o.rounds = val("--rounds")?.parse()?,
            "--secs" => o.secs = val("--secs")?.parse()?,
            "--sizes" => {
                o.sizes = val("--sizes")?.split(',').map(|s| s.parse::<usize>()).collect::<Result<_, _>>()?;
            }
            "-h" | "--help" => {
                println!("bench-dataplane [--quick] [--rounds N] [--secs S] [--sizes 100,1000,10000]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    ensure!(o.rounds >= 1 && o.secs > 0.0 && !o.sizes.is_empty() && o.sizes.iter().all(|s| *s >= 1));
    Ok(o)
}

fn main() -> Result<()> {
    match std::env::var(ROLE_ENV).as_deref() {
        Ok("client") => return client_main(),
        Ok("server") => return server_main(),
        _ => {}
    }
    let o = parse_opts()?;
    // SAFETY: geteuid has no preconditions.
    ensure!(unsafe { libc::geteuid() } == 0, "the dataplane benchmark needs root (namespaces, BPF, cgroups)");
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    ensure!(
        cpus >= 2,
        "needs 2 CPUs (client on CPU {CLIENT_CPU}, server on CPU {SERVER_CPU}); this machine has {cpus}"
    );
    let object = default_object_path();
    ensure!(object.exists(), "{} is missing: run `cargo xtask build-ebpf` first", object.display());
    for tool in ["ip", "iptables-restore"] {
        ensure!(!sh(&format!("command -v {tool}")).is_empty(), "{tool} is not installed (cargo xtask setup)");
    }
    sweep_leftovers();
    let wall = Instant::now();
    let machine = format!(
        "{} vCPU {}, {} GiB, Linux {}",
        cpus,
        sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'"),
        sh("awk '/MemTotal/ {printf \"%.0f\", $2/1048576}' /proc/meminfo"),
        sh("uname -r")
    );
    let load_before = sh("cut -d' ' -f1-3 /proc/loadavg");
    eprintln!("machine: {machine}; load average before: {load_before}; {}", sh("iptables --version"));

    let cgroup = Cgroup::create()?;
    let mut modes = vec![Mode::Direct, Mode::Ebpf, Mode::Iptables];
    if NFTABLES_MODE {
        modes.push(Mode::Nftables);
    }
    // (size, mode) → per round: runs at each concurrency.
    let mut results: BTreeMap<(usize, Mode), Vec<Vec<Run>>> = BTreeMap::new();
    let mut programming: BTreeMap<(usize, Mode), Vec<Programming>> = BTreeMap::new();
    for round in 0..o.rounds {
        for (si, &size) in o.sizes.iter().enumerate() {
            let mut order = modes.clone();
            order.rotate_left((round + si) % modes.len());
            for mode in order {
                let (runs, prog) = cell(mode, size, &cgroup, &o)
                    .with_context(|| format!("round {round}, {size} services, {}", mode.name()))?;
                let desc: Vec<String> = runs
                    .iter()
                    .zip(CONCURRENCY)
                    .map(|(r, c)| format!("c{c} {:.0}/s p50 {:.1} p99 {:.1} µs", r.rate, r.p50_us, r.p99_us))
                    .collect();
                let pdesc = prog
                    .map(|p| {
                        format!(
                            "; programmed in {:.3} s, one change {:.3} ms",
                            p.scratch.as_secs_f64(),
                            p.change.as_secs_f64() * 1e3
                        )
                    })
                    .unwrap_or_default();
                eprintln!("round {round} {size:>5} svc {:<8} {}{pdesc}", mode.name(), desc.join(", "));
                results.entry((size, mode)).or_default().push(runs);
                if let Some(p) = prog {
                    programming.entry((size, mode)).or_default().push(p);
                }
            }
        }
    }
    drop(cgroup);
    let load_after = sh("cut -d' ' -f1-3 /proc/loadavg");

    // Report.
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!(
        "\n{} ({machine}); `cargo xtask bench dataplane{}`; {} round(s) × {} s per measurement; load average {load_before} before, {load_after} after; {}; wall {:.0} s\n",
        sh("date -u +%Y-%m-%d"),
        if args.is_empty() { String::new() } else { format!(" {}", args.join(" ")) },
        o.rounds,
        o.secs,
        sh("iptables --version"),
        wall.elapsed().as_secs_f64()
    );
    let ratio = |size: usize, mode: Mode, base: Mode, ci: usize| -> f64 {
        let (Some(a), Some(b)) = (results.get(&(size, mode)), results.get(&(size, base))) else { return f64::NAN };
        median(a.iter().zip(b).map(|(x, y)| x[ci].rate / y[ci].rate).collect())
    };
    let med = |size: usize, mode: Mode, ci: usize, f: fn(&Run) -> f64| -> f64 {
        median(results.get(&(size, mode)).map(|v| v.iter().map(|r| f(&r[ci])).collect()).unwrap_or_default())
    };
    println!(
        "| services | mode | conn/s, 1 at a time | × direct | conn/s, 16 concurrent | × direct | connect p50 / p99 µs (1) | connect p50 / p99 µs (16) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for &size in &o.sizes {
        for mode in [Mode::Direct, Mode::Ebpf, Mode::Iptables, Mode::Nftables] {
            if !modes.contains(&mode) {
                println!("| {size} | {} | not measured (nftables mode not landed) | | | | | |", mode.label());
                continue;
            }
            println!(
                "| {size} | {} | {:.0} | {:.2} | {:.0} | {:.2} | {:.1} / {:.1} | {:.1} / {:.1} |",
                mode.label(),
                med(size, mode, 0, |r| r.rate),
                ratio(size, mode, Mode::Direct, 0),
                med(size, mode, 1, |r| r.rate),
                ratio(size, mode, Mode::Direct, 1),
                med(size, mode, 0, |r| r.p50_us),
                med(size, mode, 0, |r| r.p99_us),
                med(size, mode, 1, |r| r.p50_us),
                med(size, mode, 1, |r| r.p99_us),
            );
        }
    }
    println!("\n| services | programming | from scratch | one service change (median) | full resync |");
    println!("|---|---|---|---|---|");
    for &size in &o.sizes {
        for mode in [Mode::Ebpf, Mode::Iptables, Mode::Nftables] {
            let Some(ps) = programming.get(&(size, mode)) else { continue };
            let ms = |f: fn(&Programming) -> Option<Duration>| {
                median(ps.iter().filter_map(|p| f(p).map(|d| d.as_secs_f64() * 1e3)).collect())
            };
            let scratch = ms(|p| Some(p.scratch));
            let what = match mode {
                Mode::Ebpf => format!("eBPF maps (`upsert_service`; load + attach {:.0} ms more)", ms(|p| p.load)),
                Mode::Iptables => "`iptables-restore` (change: `--noflush`, changed chains only)".to_string(),
                _ => "nftables table (`apply_batch`; change: `upsert_frontend`, one transaction)".to_string(),
            };
            let resync = ms(|p| p.resync);
            println!(
                "| {size} | {what} | {scratch:.1} ms | {:.3} ms | {} |",
                ms(|p| Some(p.change)),
                if resync.is_nan() { "—".to_string() } else { format!("{resync:.1} ms") }
            );
        }
    }
    println!("\nRounds (conn/s at 1 / 16):");
    for ((size, mode), rounds) in &results {
        let v: Vec<String> = rounds.iter().map(|r| format!("{:.0}/{:.0}", r[0].rate, r[1].rate)).collect();
        println!("- {size} services, {}: {}", mode.name(), v.join(", "));
    }
    let failed: u64 = results.values().flatten().flatten().map(|r| r.errors).sum();
    println!("\nFailed (timed-out) connections in the whole run: {failed}.");
    // Targets.
    let mut lines = Vec::new();
    let mut met = true;
    for &size in &o.sizes {
        for (ci, c) in CONCURRENCY.iter().enumerate() {
            let r = ratio(size, Mode::Ebpf, Mode::Direct, ci);
            met &= r >= 0.95;
            lines.push(format!("eBPF ≥ 0.95× direct, {size} services, {c} at a time: {r:.2}× {}", pass(r >= 0.95)));
        }
    }
    if let Some(&max) = o.sizes.iter().max() {
        for (ci, c) in CONCURRENCY.iter().enumerate() {
            let r = ratio(max, Mode::Ebpf, Mode::Iptables, ci);
            if max >= 10_000 {
                met &= r >= 4.0;
            }
            lines.push(format!(
                "eBPF ≥ 4× the iptables layout at {max} services, {c} at a time: {r:.2}× {}",
                pass(r >= 4.0)
            ));
        }
    }
    println!("\nTargets:");
    for l in lines {
        println!("- {l}");
    }
    println!("- all targets: {}", pass(met));
    if !NFTABLES_MODE {
        println!("- nftables mode: not measured (nftables mode not landed)");
    }
    Ok(())
}

fn pass(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}
