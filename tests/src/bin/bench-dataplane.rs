//! `cargo xtask bench dataplane`: three parts, each mode measured in the same rounds as the limit
//! and the baselines (rounds interleave the modes, order rotated; medians over rounds).
//!
//! **ClusterIP** (`clusterip`): short TCP connections through a ClusterIP with 100, 1,000 and
//! 10,000 services installed:
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
//!   tables `skiff agent --proxy-mode nftables` programs) in the client netns, all services in
//!   one `apply_batch` as a full sync does.
//!
//! Measured: connections per second one at a time and 16 concurrent, in two cycles (see
//! [`Cycle`]: connect then reset, where the targets are judged; connect, await the server's
//! close, close), and `connect()` latency p50/p99; time to program all services from scratch and
//! one service change with all present (eBPF map updates; full `iptables-restore` and a
//! kube-proxy-style partial `--noflush` restore). In each (round, size) all four modes are set
//! up side by side, each with its own namespaces, server and waiting client, and then take turns
//! in 0.1-s slices (see [`measure_interleaved`]): this VM's noise comes in bursts of a fraction
//! of a second to seconds that move a 4-s measurement's p99 by up to 40 %, and turns this short
//! spread them over all modes alike. While the other modes take their turns the eBPF programs
//! stay attached to the benchmark's cgroup; clients outside it then pay only the kernel's check
//! for an empty program list at `connect()` and release (tens of ns, as on any node running
//! Skiff, where the programs are attached to the root cgroup).
//!
//! **NodePort** (`nodeport`), per packet at the node, in two topologies of namespaces (see
//! [`NpScenario`]): the backend behind the node (`externalTrafficPolicy: Local`, no SNAT) with
//! `direct` (the node routes, no NAT: the limit), the tc program `skiff_nodeport`
//! (`Dataplane::attach_nodeport` on the node's veths) and the nftables mode's DNAT (the same
//! frontend in an `NftServiceTable` in the node's netns); and the hairpin case (backend behind a
//! second node on the same LAN, `Cluster` policy with SNAT) with `direct`, tc, the native XDP
//! program `skiff_nodeport_xdp` (`NodePortAttacher::attach_nodeport_xdp`), which handles exactly
//! that case, and the nftables mode (DNAT and masquerade). Measured: UDP datagrams per second
//! reaching the backend's socket from a client blasting 64 flows (`sendmmsg`) on CPU 0 — on
//! veths the whole path (send, node, delivery) runs in that CPU's softirq, so the rate is the
//! inverse of the per-datagram cost — and TCP connections per second, 16 concurrent.
//!
//! **API event → datapath** (`latency`): a real `skiff control` (API server alone) on loopback
//! and the proxy in-process (`Proxy::run`) against the eBPF `ServiceTable` (pin directory of
//! its own, programs attached nowhere) or an `NftServiceTable` (netns of its own); with 1,000
//! (then 10,000) Services with EndpointSlices present, new Services and then their
//! EndpointSlices are created one at a time, each timed from the create call's start to the
//! instant the proxy's table call that wrote the entry returned (a pass-through `ProxyTable`
//! records it: no polling interval, no polling CPU; for eBPF the map syscalls are done, for
//! nftables the transaction is acknowledged).
//!
//! Method and safety (DESIGN.md §5): every cell (ClusterIP: round, size and mode) gets fresh
//! network namespaces made here, with private addresses and nothing but loopback and veths (and,
//! hairpin, the LAN's bridge) in them; no namespace has a default route, so nothing can leave the
//! machine. The ClusterIP cells use a client netns and a server netns joined by a veth pair with
//! 10.250.0.1/30 and 10.250.0.2/30, the service range 10.96.0.0/12 routed over the veth; the
//! latency cells' nftables netns has the service range blackholed. Namespaces of their own per mode
//! and round keep TIME_WAIT and conntrack state of one mode from affecting another (a backend
//! namespace shared by two modes meets the other's timestamps: PAWS rejects). iptables rules and
//! nftables tables live only inside those namespaces (never the host's tables) and go away with
//! them; tc/XDP programs are attached only to veths inside them (never eth0), socket programs only
//! to the benchmark's own cgroup. The client is this binary re-executed
//! (`SKBENCH_ROLE=client`/`blast`): before exec it enters the client netns (`setns`), joins the
//! benchmark's cgroup for the eBPF ClusterIP mode only, and pins itself to CPU 0; the server
//! (`SKBENCH_ROLE=server`: accept and close, and a counting UDP sink for NodePort) runs in its
//! netns on CPU 1. Namespaces, the cgroup, pin directories, the API server (also killed by the
//! kernel if this process dies: `PR_SET_PDEATHSIG`) and its data directory, and the children are
//! released by `Drop` guards, also on error or panic; leftovers of killed runs (their pid is gone)
//! are swept at start. Children stop by themselves (clients after their time, the server when its
//! stdin closes or after an hour).
//!
//! Options: `--quick` (1 round, 1 s per measurement, 100 and 10,000 services; latency: 1,000
//! present, 20 measured), `--rounds N`, `--secs S` (per measurement, default 4), `--sizes
//! 100,1000,10000`, `--modes direct,ebpf,iptables,nftables` (ClusterIP; direct and ebpf
//! always), `--parts clusterip,nodeport,latency`, `--latency-sizes 1000,10000`,
//! `--latency-count N` (Services measured per cell at the first size; 25 at larger ones).

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::Service as K8sService;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use skiff_agent::dataplane::{
    Config, Dataplane, Frontend, FrontendPolicy, ObjectSource, Protocol, UpdateStats, XdpMode, default_object_path,
};
use skiff_agent::proxy::desired::{Desired, DesiredFrontend, ServicePortName};
use skiff_agent::proxy::{NftConfig, NftServiceTable, Proxy, ProxyConfig, ProxyTable};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

const ROLE_ENV: &str = "SKBENCH_ROLE";
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

/// What one short connection of the ClusterIP part is, from the client's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cycle {
    /// `connect()`, then close at once with a reset (`SO_LINGER` 0). The service dataplane acts on
    /// the connection's first packet only, so this is the cycle where its cost shows: nothing
    /// else but the handshake is measured (netperf's TCP_CC shape). The reset leaves no TIME_WAIT
    /// on either side, so 30,000 connections a second neither exhaust the client's ports nor
    /// meet an old tuple's timestamps (PAWS) at the server. The targets are judged on this cycle;
    /// it is also what the issue's own iptables figures (0.15–0.18× direct at 10,000 services)
    /// were measured with.
    Connect,
    /// `connect()`, wait for the server's close, close: a request/response client's pattern, where
    /// the server's accept and close and two more cross-CPU wake-ups are part of every connection
    /// and dilute the dataplane's share. Reported alongside.
    ConnectAwaitClose,
}

impl Cycle {
    fn env(self) -> &'static str {
        match self {
            Cycle::Connect => "connect",
            Cycle::ConnectAwaitClose => "await-close",
        }
    }
    fn from_env(v: &str) -> Result<Self> {
        match v {
            "connect" => Ok(Cycle::Connect),
            "await-close" => Ok(Cycle::ConnectAwaitClose),
            other => bail!("unknown cycle {other:?}"),
        }
    }
    fn describe(self) -> &'static str {
        match self {
            Cycle::Connect => "connect, then reset at once (the dataplane's cost; targets judged here)",
            Cycle::ConnectAwaitClose => "connect, wait for the server's close, close (request/response pattern)",
        }
    }
}

/// The loads of every ClusterIP cell, in order: each cycle at each concurrency.
const LOADS: [(Cycle, usize); 4] =
    [(Cycle::Connect, 1), (Cycle::Connect, 16), (Cycle::ConnectAwaitClose, 1), (Cycle::ConnectAwaitClose, 16)];
/// Per-connection timeouts of the client: a connection that is not translated goes nowhere. Longer
/// than the first SYN retransmission (1 s), which then shows in the latency instead.
const IO_TIMEOUT: Duration = Duration::from_secs(3);
/// Servers exit by themselves after this long even if nobody closes their stdin.
const SERVER_MAX_LIFETIME: Duration = Duration::from_secs(3600);

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
    client_serve(&targets)
}

/// What a client measured: the `connect()` latency of every connection that completed (ns), and
/// the failures.
#[derive(Default)]
struct Samples {
    lat_ns: Vec<u32>,
    errors: u64,
    first_err: Option<String>,
}

impl Samples {
    fn absorb(&mut self, other: Samples) {
        self.lat_ns.extend(other.lat_ns);
        self.errors += other.errors;
        if self.first_err.is_none() {
            self.first_err = other.first_err;
        }
    }

    /// Rate over `secs` of measuring and the pooled percentiles. A rare timeout on a loaded
    /// machine is reported; more than `max_failed_pct` % of the connections failing is an error
    /// (the mode does not work then).
    fn run(mut self, secs: f64, max_failed_pct: u64) -> Result<Run> {
        let count = self.lat_ns.len() as u64;
        let first = self.first_err.as_deref().unwrap_or("-");
        ensure!(
            count > 0 && self.errors * 100 <= count * max_failed_pct,
            "{} failed connections of {count} (first: {first})",
            self.errors
        );
        if self.errors > 0 {
            eprintln!("  {} failed connection(s) of {count}: {first}", self.errors);
        }
        self.lat_ns.sort_unstable();
        let pct = |p: usize| self.lat_ns[(self.lat_ns.len() * p / 100).min(self.lat_ns.len() - 1)] as f64 / 1000.0;
        Ok(Run { rate: count as f64 / secs, p50_us: pct(50), p99_us: pct(99), errors: self.errors })
    }
}

/// Connections from `conc` threads for `secs`, with their latencies.
fn drive(targets: &[SocketAddrV4], cycle: Cycle, conc: usize, secs: f64) -> Result<Samples> {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..conc)
        .map(|j| {
            let targets = targets.to_vec();
            std::thread::spawn(move || {
                let mut s = Samples { lat_ns: Vec::with_capacity(1 << 16), ..Default::default() };
                let mut k = j;
                loop {
                    if Instant::now() >= end {
                        break;
                    }
                    let target = targets[k % targets.len()];
                    k += 1;
                    match connect_once(target, cycle) {
                        Ok(lat) => s.lat_ns.push(lat.as_nanos().min(u32::MAX as u128) as u32),
                        Err(e) => {
                            s.errors += 1;
                            s.first_err.get_or_insert_with(|| format!("{target}: {e}"));
                            // A refused or timed-out connection must not turn into a busy loop.
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
                s
            })
        })
        .collect();
    let mut all = Samples::default();
    for t in threads {
        all.absorb(t.join().map_err(|_| anyhow::anyhow!("client thread panicked"))?);
    }
    Ok(all)
}

/// The client child: placed once (netns, cgroup, CPU) and kept (for the ClusterIP part, a whole
/// round), it measures on request so that the modes can take turns in short slices. Protocol: `ready`, then
/// per stdin line `<cycle> <conc> <secs>` a line `SKBENCH-RESULT <count> <errors> <first error>`
/// followed by `count` latencies as little-endian `u32` nanoseconds. Exits when stdin closes.
fn client_serve(targets: &[SocketAddrV4]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    for line in std::io::stdin().lines() {
        let line = line?;
        let f: Vec<&str> = line.split_whitespace().collect();
        ensure!(f.len() == 3, "client order {line:?}: expected <cycle> <conc> <secs>");
        let s = drive(targets, Cycle::from_env(f[0])?, f[1].parse()?, f[2].parse()?)?;
        let first = s.first_err.unwrap_or_else(|| "-".into()).replace(' ', "_");
        let mut buf = format!("{RESULT_TAG} {} {} {first}\n", s.lat_ns.len(), s.errors).into_bytes();
        buf.reserve(s.lat_ns.len() * 4);
        for l in &s.lat_ns {
            buf.extend_from_slice(&l.to_le_bytes());
        }
        out.write_all(&buf)?;
        out.flush()?;
    }
    Ok(())
}

/// socket, connect (timed), then per `cycle` reset at once, or wait for the server's close and
/// close. Plain syscalls, as a client library would issue them; the timeouts keep an
/// untranslated connect from hanging.
fn connect_once(target: SocketAddrV4, cycle: Cycle) -> std::io::Result<Duration> {
    // SAFETY: plain socket syscalls on a descriptor owned here and closed on every path.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let tv = libc::timeval { tv_sec: IO_TIMEOUT.as_secs() as _, tv_usec: 0 };
        let tvp = (&tv as *const libc::timeval).cast();
        let tvl = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
        // SO_SNDTIMEO bounds connect() too.
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDTIMEO, tvp, tvl);
        if cycle == Cycle::ConnectAwaitClose {
            libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, tvp, tvl);
        }
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
        if cycle == Cycle::Connect {
            let linger = libc::linger { l_onoff: 1, l_linger: 0 };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
            libc::close(fd);
            return Ok(lat);
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
    for a in listen.split(',').filter(|a| !a.is_empty()) {
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
    // The UDP sink of the NodePort packet-rate test: counts datagrams, answers "count" on stdin.
    static RECEIVED: AtomicU64 = AtomicU64::new(0);
    if let Ok(a) = std::env::var("SKBENCH_UDP") {
        let sock = UdpSocket::bind(&a).with_context(|| format!("binding UDP {a}"))?;
        std::thread::spawn(move || udp_sink(sock, &RECEIVED));
    }
    std::thread::spawn(|| {
        std::thread::sleep(SERVER_MAX_LIFETIME);
        std::process::exit(0);
    });
    println!("ready");
    std::io::stdout().flush()?;
    // Until the parent closes our stdin (or dies).
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line.trim() == "count" {
            println!("{}", RECEIVED.load(Ordering::Relaxed));
            std::io::stdout().flush()?;
        }
    }
    std::process::exit(0)
}

/// Receives datagrams in batches (`recvmmsg`) and counts them; never returns.
fn udp_sink(sock: UdpSocket, received: &AtomicU64) {
    const BATCH: usize = 64;
    let fd = sock.as_raw_fd();
    let size: libc::c_int = 32 << 20;
    // SAFETY: setsockopt with a valid int; SO_RCVBUFFORCE (root) lifts rmem_max, so a short stall
    // of this thread does not turn into drops that the node path did not cause.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    let mut bufs = vec![[0u8; 2048]; BATCH];
    let mut iovs: Vec<libc::iovec> =
        bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() }).collect();
    // SAFETY: zeroed mmsghdr is valid (null name, no control data); each points at its own iovec,
    // and `bufs`/`iovs` outlive the loop (the function never returns).
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    // Busy while datagrams arrive, blocking after 50 ms without: a sleeping receiver costs the
    // sending CPU a wake-up (an IPI, expensive in a VM) per datagram, which would swamp the
    // node path being measured; blocking when idle leaves CPU 1 to the TCP runs.
    let mut last = Instant::now();
    loop {
        let idle = last.elapsed() > Duration::from_millis(50);
        let flags = if idle { libc::MSG_WAITFORONE } else { libc::MSG_DONTWAIT };
        // SAFETY: `msgs` holds BATCH valid headers.
        let n = unsafe { libc::recvmmsg(fd, msgs.as_mut_ptr(), BATCH as libc::c_uint, flags, std::ptr::null_mut()) };
        if n > 0 {
            received.fetch_add(n as u64, Ordering::Relaxed);
            last = Instant::now();
        } else if idle {
            std::thread::sleep(Duration::from_millis(1));
        } else {
            std::hint::spin_loop();
        }
    }
}

/// The NodePort packet-rate client: `SKBENCH_FLOWS` connected UDP sockets (one source port
/// each) to `SKBENCH_TARGET`, sending `UDP_BATCH` datagrams of `UDP_PAYLOAD` bytes per
/// `sendmmsg`, the sockets in turn, for `SKBENCH_SECS`; prints how many were sent.
fn blast_main() -> Result<()> {
    let target: SocketAddrV4 = std::env::var("SKBENCH_TARGET")?.parse()?;
    let flows: usize = std::env::var("SKBENCH_FLOWS")?.parse()?;
    let secs: f64 = std::env::var("SKBENCH_SECS")?.parse()?;
    let socks: Vec<UdpSocket> = (0..flows)
        .map(|_| -> Result<UdpSocket> {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect(target)?;
            Ok(s)
        })
        .collect::<Result<_>>()?;
    let payload = [0x5au8; UDP_PAYLOAD];
    let mut iov = libc::iovec { iov_base: payload.as_ptr() as *mut libc::c_void, iov_len: payload.len() };
    let iov_ptr: *mut libc::iovec = &mut iov;
    let mut msgs: Vec<libc::mmsghdr> = (0..UDP_BATCH)
        .map(|_| {
            // SAFETY: a zeroed mmsghdr is valid; all share the one read-only payload iovec.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = iov_ptr;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let (mut sent, mut errors, mut first_err) = (0u64, 0u64, None::<String>);
    'outer: loop {
        for s in &socks {
            if Instant::now() >= end {
                break 'outer;
            }
            // SAFETY: `msgs` holds UDP_BATCH valid headers; `iov` and `payload` outlive the call.
            let n = unsafe { libc::sendmmsg(s.as_raw_fd(), msgs.as_mut_ptr(), UDP_BATCH as libc::c_uint, 0) };
            if n > 0 {
                sent += n as u64;
            } else {
                errors += 1;
                first_err.get_or_insert_with(|| std::io::Error::last_os_error().to_string());
                // An untranslated datagram draws ICMP errors: no busy loop on them.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    println!("{RESULT_TAG} {sent} {errors} {}", first_err.unwrap_or_else(|| "-".into()).replace(' ', "_"));
    Ok(())
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

/// Packets conntrack dropped or failed to insert in `netns` (`/proc/net/stat/nf_conntrack` is per
/// network namespace: one line of hex counters per CPU under a header naming them). 0 when
/// conntrack never ran there.
fn conntrack_drops(netns: &str) -> Result<u64> {
    let out = Command::new("ip").args(["netns", "exec", netns, "cat", "/proc/net/stat/nf_conntrack"]).output()?;
    if !out.status.success() {
        return Ok(0); // no conntrack module: nothing could be dropped by it
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    let cols: Vec<usize> = header
        .iter()
        .enumerate()
        .filter(|(_, h)| ["drop", "early_drop", "insert_failed"].contains(h))
        .map(|(i, _)| i)
        .collect();
    ensure!(cols.len() == 3, "unexpected /proc/net/stat/nf_conntrack header: {header:?}");
    let mut sum = 0;
    for l in lines {
        let f: Vec<&str> = l.split_whitespace().collect();
        for &c in &cols {
            sum += u64::from_str_radix(f.get(c).copied().unwrap_or("0"), 16).unwrap_or(0);
        }
    }
    Ok(sum)
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

/// The server child (accept-and-close TCP listeners, optionally a UDP sink) in a netns of the
/// benchmark's; stopped on drop.
struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Server {
    fn start(netns: &str, listen: &[SocketAddrV4], udp: Option<SocketAddrV4>) -> Result<Self> {
        let listen: Vec<String> = listen.iter().map(|a| a.to_string()).collect();
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.env(ROLE_ENV, "server")
            .env("SKBENCH_LISTEN", listen.join(","))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(u) = udp {
            cmd.env("SKBENCH_UDP", u.to_string());
        }
        place(&mut cmd, netns, None, Some(SERVER_CPU));
        let mut child = cmd.spawn().context("starting the server child")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().map(BufReader::new);
        let mut server = Server { stdin, stdout: stdout.context("server stdout")?, child };
        let mut line = String::new();
        server.stdout.read_line(&mut line)?;
        ensure!(line.trim() == "ready", "the server did not start: {line:?}");
        Ok(server)
    }

    /// Datagrams the UDP sink has received so far, and when (the middle of the request).
    fn udp_count(&mut self) -> Result<(u64, Instant)> {
        let t = Instant::now();
        let stdin = self.stdin.as_mut().context("server stdin")?;
        stdin.write_all(b"count\n")?;
        stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let at = t + t.elapsed() / 2;
        Ok((line.trim().parse().with_context(|| format!("UDP sink count {line:?}"))?, at))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
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
/// gone): namespaces, cgroups, pin directories, API server data directories in /tmp.
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
    let tmp = std::env::temp_dir();
    for root in [Path::new(skiff_tests::CGROUP2_ROOT), Path::new(BPFFS), tmp.as_path()] {
        let Ok(entries) = std::fs::read_dir(root) else { continue };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.strip_prefix(DIR_PREFIX).is_some_and(dead) {
                eprintln!("sweeping leftover {}", e.path().display());
                if root == Path::new(BPFFS) {
                    remove_pin_dir(&e.path());
                } else if root == tmp {
                    // An API server's data directory (the server died with its parent).
                    let _ = std::fs::remove_dir_all(e.path());
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
    let mut table = open_nft_table(&net.client)?;
    let desired: Desired = svcs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut backends = s.backends.clone();
            backends.sort();
            let service =
                ServicePortName { namespace: format!("ns{}", i / 100), name: format!("svc{i}"), port: "http".into() };
            let fe = Frontend { vip: s.vip, port: s.port, proto: Protocol::Tcp };
            (fe, DesiredFrontend { service, backends, affinity_timeout: None, external_local: false, external: false })
        })
        .collect();
    let t = Instant::now();
    let (_, ok) = table.apply_batch(&desired).context("the nftables table has no batch path")?;
    let took = t.elapsed();
    ensure!(ok, "programming the nftables table failed (see the log)");
    ensure!(table.len() == svcs.len(), "{} of {} frontends programmed", table.len(), svcs.len());
    Ok((table, took))
}

/// Opens Skiff's nftables table (`NFT_TABLE` and its shards) inside netns `netns`: created from a
/// thread that entered it, so its netlink socket stays bound there whichever thread uses it later.
fn open_nft_table(netns: &str) -> Result<NftServiceTable> {
    in_netns(netns, || {
        NftServiceTable::new(NftConfig {
            table: NFT_TABLE.into(),
            service_range: Some(SERVICE_RANGE.parse()?),
            ..Default::default()
        })
    })
}

/// Runs `f` on a thread that entered netns `netns` and checked that it is there and not in the
/// namespace it came from (nothing of `f` may touch the host's network state).
fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    use std::os::unix::fs::MetadataExt;
    let path = format!("/run/netns/{netns}");
    let host = std::fs::metadata("/proc/thread-self/ns/net").context("this thread's netns")?.ino();
    std::thread::scope(|s| {
        s.spawn(|| -> Result<T> {
            let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            // SAFETY: setns on a descriptor we hold open; it changes only this scoped thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).with_context(|| format!("entering netns {netns}"));
            }
            let mine = std::fs::metadata("/proc/thread-self/ns/net")?.ino();
            ensure!(mine == file.metadata()?.ino() && mine != host, "not in netns {netns}; refusing to go on");
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread in netns {netns} panicked"))?
    })
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
    /// ClusterIP: the modes measured (direct and eBPF always).
    modes: Vec<Mode>,
    /// Which parts run: ClusterIP connections, NodePort, API event → datapath latency.
    clusterip: bool,
    nodeport: bool,
    latency: bool,
    /// Latency: services present (ascending), and how many are created and timed per cell at the
    /// first size and at the larger ones.
    lat_sizes: Vec<usize>,
    lat_count: usize,
    lat_count_large: usize,
}

/// A client child ([`client_serve`]) placed in its mode's netns (and cgroup) and pinned once,
/// then told what to measure: slice by slice for a whole (round, size) of the ClusterIP part.
struct Driver {
    child: Child,
    stdin: Option<ChildStdin>,
    results: mpsc::Receiver<Result<Samples>>,
}

impl Driver {
    fn start(netns: &str, cgroup: Option<&Path>, targets: &[SocketAddrV4]) -> Result<Self> {
        let targets: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.env(ROLE_ENV, "client")
            .env("SKBENCH_TARGETS", targets.join(","))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        place(&mut cmd, netns, cgroup, Some(CLIENT_CPU));
        let mut child = cmd.spawn().context("starting the client child")?;
        let stdin = child.stdin.take();
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("no stdout of the client child");
        };
        // Results (and the first line, `ready`) are read on a thread of their own so that a hung
        // child can be timed out.
        let (tx, results) = mpsc::channel();
        std::thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            let mut line = String::new();
            let ready = match stdout.read_line(&mut line) {
                Ok(_) if line.trim() == "ready" => Ok(Samples::default()),
                Ok(_) => Err(anyhow::anyhow!("the client did not start: {line:?}")),
                Err(e) => Err(e.into()),
            };
            let mut go_on = ready.is_ok();
            let _ = tx.send(ready);
            while go_on {
                // After an error the stream is out of step: nothing more is read.
                let Some(r) = read_samples(&mut stdout).transpose() else { break };
                go_on = r.is_ok();
                if tx.send(r).is_err() {
                    break;
                }
            }
        });
        let mut driver = Driver { child, stdin, results };
        // Drop kills the child if it does not start.
        driver.result(Duration::from_secs(10))?;
        Ok(driver)
    }

    /// The child's next answer, within `limit`.
    fn result(&mut self, limit: Duration) -> Result<Samples> {
        match self.results.recv_timeout(limit) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = self.child.kill();
                bail!("no answer from the client child within {limit:?}")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("the client child ended without an answer: {:?}", self.child.try_wait())
            }
        }
    }

    /// `secs` of `load` (the client stops by itself; killed if it is not back a while later).
    fn measure(&mut self, (cycle, conc): (Cycle, usize), secs: f64) -> Result<Samples> {
        let stdin = self.stdin.as_mut().context("client stdin")?;
        writeln!(stdin, "{} {conc} {secs}", cycle.env())?;
        stdin.flush()?;
        self.result(Duration::from_secs_f64(secs) + IO_TIMEOUT * 3 + Duration::from_secs(5))
    }
}

/// One result of [`client_serve`]; `None` at the end of the stream.
fn read_samples(r: &mut impl BufRead) -> Result<Option<Samples>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let f: Vec<&str> = line.strip_prefix(RESULT_TAG).context("no result from the client")?.split_whitespace().collect();
    ensure!(f.len() == 3, "client result {line:?}");
    let (count, errors): (usize, u64) = (f[0].parse()?, f[1].parse()?);
    // No measurement here comes near 2^26 connections (~30,000 a second): more is a garbled stream.
    ensure!(count <= 1 << 26, "client result of {count} latencies");
    let mut raw = vec![0u8; count * 4];
    r.read_exact(&mut raw)?;
    let lat_ns = raw.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let first_err = (f[2] != "-").then(|| f[2].replace('_', " "));
    Ok(Some(Samples { lat_ns, errors, first_err }))
}

impl Drop for Driver {
    fn drop(&mut self) {
        // A closed stdin ends the child between measurements; kill covers one hung inside one.
        drop(self.stdin.take());
        let t = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) && t.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client child for one measurement (the NodePort part): `o.warmup` + `o.secs` of `load`,
/// failing only when more than `max_failed_pct` % of the connections failed.
fn run_client_tolerating(
    netns: &str,
    cgroup: Option<&Path>,
    targets: &[SocketAddrV4],
    load: (Cycle, usize),
    o: &Opts,
    max_failed_pct: u64,
) -> Result<Run> {
    let mut client = Driver::start(netns, cgroup, targets)?;
    client.measure(load, o.warmup).context("warm-up")?;
    client.measure(load, o.secs)?.run(o.secs, max_failed_pct)
}

/// One mode ready to be measured in one (round, size): fresh namespaces, its server, the services
/// programmed, its client waiting. Field order is drop order: the client, then the eBPF programs
/// and the nftables table, before the server and the namespaces (the cgroup outlives them all).
struct Setup {
    mode: Mode,
    driver: Driver,
    ebpf: Option<Ebpf>,
    nft: Option<NftServiceTable>,
    _server: Server,
    net: NetPair,
    prog: Option<Programming>,
}

impl Setup {
    fn create(mode: Mode, svcs: &[Service], cgroup: &skiff_tests::OwnCgroup) -> Result<Self> {
        let net = NetPair::create()?;
        let listen: Vec<SocketAddrV4> = BACKEND_PORTS.iter().map(|p| SocketAddrV4::new(SERVER_IP, *p)).collect();
        let server = Server::start(&net.server, &listen, None)?;
        let vip = vec![SocketAddrV4::new(VIP, SERVICE_PORT)];
        let (mut ebpf, mut nft, mut prog) = (None, None, None);
        let targets = match mode {
            Mode::Direct => listen,
            Mode::Ebpf => {
                let t = Instant::now();
                let mut e = Ebpf::load()?;
                e.dp().attach_cgroup(&cgroup.0).context("attaching to the benchmark's cgroup")?;
                let load = t.elapsed();
                let t = Instant::now();
                for s in svcs {
                    e.dp().services.upsert_service(s.vip, s.port, Protocol::Tcp, &s.backends, None)?;
                }
                prog = Some(Programming { scratch: t.elapsed(), load: Some(load), ..Default::default() });
                ebpf = Some(e);
                vip
            }
            Mode::Iptables => {
                let scratch = iptables_restore(&net, &[], &iptables_ruleset(svcs))?;
                prog = Some(Programming { scratch, ..Default::default() });
                vip
            }
            Mode::Nftables => {
                let (table, scratch) = program_nftables(&net, svcs)?;
                nft = Some(table);
                prog = Some(Programming { scratch, ..Default::default() });
                vip
            }
        };
        let cg = (mode == Mode::Ebpf).then_some(cgroup.0.as_path());
        let driver = Driver::start(&net.client, cg, &targets)?;
        Ok(Setup { mode, driver, ebpf, nft, _server: server, net, prog })
    }

    /// After the traffic: the conntrack check, then one service change with all present timed
    /// (after, so that it does not disturb the traffic).
    fn finish(&mut self, svcs: &[Service], o: &Opts) -> Result<()> {
        // A full conntrack table would drop SYNs and slow the NAT modes for a reason that is not
        // the rule set; the client netns's own statistics say whether it happened.
        let drops = conntrack_drops(&self.net.client)?;
        ensure!(drops == 0, "{drops} conntrack drops/insert failures in the client netns ({} mode)", self.mode.name());
        let Some(p) = self.prog.as_mut() else { return Ok(()) };
        // Services other than the measured one, each getting one endpoint replaced, once.
        let changes = (if o.quick { 5 } else { 21 }).min(svcs.len() - 1);
        let mut times = Vec::new();
        for g in 0..changes {
            let i = (g * 7919) % (svcs.len() - 1);
            let new = filler_endpoint(1_000_000 + g);
            let mut backends = svcs[i].backends.clone();
            backends[0] = (new, 8080);
            let (vip, port) = (svcs[i].vip, svcs[i].port);
            let t = Instant::now();
            match self.mode {
                Mode::Ebpf => {
                    let e = self.ebpf.as_mut().expect("loaded");
                    e.dp().services.upsert_service(vip, port, Protocol::Tcp, &backends, None)?;
                }
                Mode::Iptables => {
                    iptables_restore(&self.net, &["--noflush"], &iptables_one_change(svcs, i, new))?;
                }
                Mode::Nftables => {
                    backends.sort();
                    let table = self.nft.as_mut().expect("programmed");
                    table.upsert_frontend(vip, port, Protocol::Tcp, &backends, FrontendPolicy::default())?;
                }
                Mode::Direct => {}
            }
            times.push(t.elapsed());
        }
        if self.mode == Mode::Iptables {
            p.resync = Some(iptables_restore(&self.net, &[], &iptables_ruleset(svcs))?);
        }
        times.sort();
        p.change = times.get(times.len() / 2).copied().unwrap_or_default();
        Ok(())
    }
}

/// Length of one turn of a mode within a measurement (see [`measure_interleaved`]).
const SLICE_SECS: f64 = 0.1;

/// Every load measured for every setup, the modes taking turns in slices of ~[`SLICE_SECS`]
/// (`o.secs` per mode and load in all, after an `o.warmup` turn each), in the orders of
/// [`turn_order`]. Whole 4-s measurements
/// one mode after the other left the comparison to whatever the machine (a VM sharing its host)
/// was doing during each: eBPF's connect p99 against direct's ranged from −25 % to +42 % between
/// single rounds. Per 0.5-s slice, direct's p99 was either ~24 µs or 31–40 µs, in bursts that
/// hit whichever modes ran at the time; with 0.1-s turns a burst falls on all modes alike.
/// Returns per setup the runs of [`LOADS`], each pooled over its slices.
fn measure_interleaved(setups: &mut [Setup], o: &Opts) -> Result<Vec<Vec<Run>>> {
    let slices = ((o.secs / SLICE_SECS).round() as usize).max(1);
    let slice = o.secs / slices as f64;
    let mut runs: Vec<Vec<Run>> = setups.iter().map(|_| Vec::new()).collect();
    for load in LOADS {
        let what = |s: &Setup| format!("{} at {}, {}", s.mode.name(), load.1, load.0.env());
        for s in setups.iter_mut() {
            s.driver.measure(load, o.warmup).with_context(|| format!("warm-up of {}", what(s)))?;
        }
        let mut pooled: Vec<Samples> = setups.iter().map(|_| Samples::default()).collect();
        for k in 0..slices {
            for i in turn_order(setups.len(), k) {
                let s = &mut setups[i];
                pooled[i].absorb(s.driver.measure(load, slice).with_context(|| what(s))?);
            }
        }
        for ((s, p), r) in setups.iter().zip(pooled).zip(runs.iter_mut()) {
            r.push(p.run(o.secs, 1).with_context(|| what(s))?);
        }
    }
    Ok(runs)
}

/// The order in which `n` modes take their turns in slice `k`: the rows of a balanced Latin
/// square (Williams design; for odd `n` each row is followed by its reverse), so that over `n`
/// (odd: `2n`) slices every mode comes right after every other one equally often. A mode's
/// first connections pay for what the previous one left in the caches (the iptables layout at
/// 10,000 services walks ~1 MB of rules per connection); a fixed cycle, which a rotation is,
/// would charge that to the same mode every time.
fn turn_order(n: usize, k: usize) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    // 0, 1, n-1, 2, n-2, …: consecutive differences 1, -2, 3, -4, … are all distinct mod n.
    let base = (0..n).map(|i| if i % 2 == 1 { i.div_ceil(2) } else { (n - i / 2) % n });
    let row = k % n;
    let mut order: Vec<usize> = base.map(|b| (b + row) % n).collect();
    if n % 2 == 1 && (k / n) % 2 == 1 {
        order.reverse();
    }
    order
}

// ---------------------------------------------------------------------------------------------
// NodePort: packets and connections through a node, per packet

/// Two NodePort scenarios, each in namespaces of the benchmark's own with private addresses and
/// no default route anywhere:
///
/// - `Local`: the backend behind the node (`externalTrafficPolicy: Local`, no SNAT):
///   client `c0` 10.253.0.2/30 — `nc` 10.253.0.1/30 node `nb` 10.253.1.1/30 — `b0` 10.253.1.2/30
///   backend. Requests enter the node on `nc`, leave on `nb`.
/// - `Hairpin`: the backend behind another node on the same LAN (`externalTrafficPolicy:
///   Cluster`, SNAT to the node address): client `c0` 10.253.2.2/24, node `nl` 10.253.2.1/24 and
///   node 2 `rl` 10.253.2.3/24 on a bridge (its own netns), the backend `b0` 10.253.3.2/24 behind
///   node 2 (`rb` 10.253.3.1/24). Requests and replies enter and leave the node through `nl`:
///   the case the XDP program handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum NpScenario {
    Local,
    Hairpin,
}

impl NpScenario {
    fn node_ip(self) -> Ipv4Addr {
        match self {
            NpScenario::Local => Ipv4Addr::new(10, 253, 0, 1),
            NpScenario::Hairpin => Ipv4Addr::new(10, 253, 2, 1),
        }
    }
    fn backend_ip(self) -> Ipv4Addr {
        match self {
            NpScenario::Local => Ipv4Addr::new(10, 253, 1, 2),
            NpScenario::Hairpin => Ipv4Addr::new(10, 253, 3, 2),
        }
    }
    fn modes(self) -> &'static [NpMode] {
        match self {
            NpScenario::Local => &[NpMode::Direct, NpMode::Ebpf, NpMode::Nftables],
            NpScenario::Hairpin => &[NpMode::Direct, NpMode::Ebpf, NpMode::Xdp, NpMode::Nftables],
        }
    }
    fn describe(self) -> String {
        match self {
            NpScenario::Local => format!(
                "backend behind the node: client netns → node netns ({}:{NODE_PORT}) → backend netns ({}:{NP_BACKEND_PORT}), \
                 externalTrafficPolicy: Local (no SNAT in any mode); direct = the client addresses the backend, the node routes",
                self.node_ip(),
                self.backend_ip()
            ),
            NpScenario::Hairpin => format!(
                "hairpin, backend behind another node on the same LAN: client, node ({}:{NODE_PORT}) and node 2 on a bridge, \
                 backend ({}:{NP_BACKEND_PORT}) behind node 2; externalTrafficPolicy: Cluster (the eBPF modes SNAT to the node \
                 address, the nftables mode masquerades; replies come back through the node); direct = the client addresses the backend and the node routes \
                 it out the interface it came in on (no NAT; replies go straight from node 2 to the client)",
                self.node_ip(),
                self.backend_ip()
            ),
        }
    }
}

const NODE_PORT: u16 = 30080;
const NP_BACKEND_PORT: u16 = 8080;
/// UDP packet-rate client: this many flows (connected sockets, one source port each), taking
/// turns; `UDP_BATCH` datagrams of `UDP_PAYLOAD` bytes per `sendmmsg`.
const UDP_FLOWS: usize = 64;
const UDP_BATCH: usize = 32;
const UDP_PAYLOAD: usize = 64;
/// TCP connections through the NodePort: 16 concurrent (one at a time is measured for ClusterIPs).
const NP_CONCURRENCY: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum NpMode {
    Direct,
    Ebpf,
    Xdp,
    Nftables,
}

impl NpMode {
    fn name(self) -> &'static str {
        match self {
            NpMode::Direct => "direct",
            NpMode::Ebpf => "ebpf-tc",
            NpMode::Xdp => "ebpf-xdp",
            NpMode::Nftables => "nftables",
        }
    }
    fn label(self) -> &'static str {
        match self {
            NpMode::Direct => "direct to backend, routed by the node (limit)",
            NpMode::Ebpf => "Skiff tc program (`skiff_nodeport`)",
            NpMode::Xdp => "Skiff XDP program (`skiff_nodeport_xdp`, native)",
            NpMode::Nftables => "Skiff nftables mode (DNAT; masquerade under `Cluster`)",
        }
    }
}

/// The namespaces of one NodePort cell; deleted on drop with everything in them (veths, tc and
/// XDP links, nftables tables, conntrack).
struct NodeNet {
    scenario: NpScenario,
    client: String,
    node: String,
    backend: String,
    /// Hairpin: the LAN's bridge and node 2.
    lan: Option<String>,
    node2: Option<String>,
    /// Hairpin: the pass-everything XDP program on the bridge port facing the node.
    xdp_pass: Option<XdpPass>,
}

impl NodeNet {
    fn create(scenario: NpScenario) -> Result<Self> {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let name = |role: &str| format!("{NETNS_PREFIX}{role}-{pid}-{n}");
        let hairpin = scenario == NpScenario::Hairpin;
        let mut net = NodeNet {
            scenario,
            client: name("c"),
            node: name("n"),
            backend: name("b"),
            lan: hairpin.then(|| name("l")),
            node2: hairpin.then(|| name("r")),
            xdp_pass: None,
        };
        for ns in net.all() {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        let (c, nd, b) = (net.client.as_str(), net.node.as_str(), net.backend.as_str());
        // Each veth is created inside a namespace of ours with its peer placed straight into
        // another: no end ever exists in the host's namespace.
        let veth = |a_ns: &str, a: &str, a_addr: Option<&str>, b_ns: &str, b: &str, b_addr: Option<&str>| {
            ip(&["-n", a_ns, "link", "add", a, "type", "veth", "peer", "name", b, "netns", b_ns])?;
            for (ns, dev, addr) in [(a_ns, a, a_addr), (b_ns, b, b_addr)] {
                if let Some(addr) = addr {
                    ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
                }
                ip(&["-n", ns, "link", "set", dev, "up"])?;
            }
            anyhow::Ok(())
        };
        let mut forwarding = vec![nd];
        match scenario {
            NpScenario::Local => {
                veth(c, "c0", Some("10.253.0.2/30"), nd, "nc", Some("10.253.0.1/30"))?;
                veth(nd, "nb", Some("10.253.1.1/30"), b, "b0", Some("10.253.1.2/30"))?;
                // Only the two /30s, each way through the node (the client's route to the
                // backend is the direct mode's path).
                ip(&["-n", c, "route", "add", "10.253.1.0/30", "via", "10.253.0.1", "dev", "c0"])?;
                ip(&["-n", b, "route", "add", "10.253.0.0/30", "via", "10.253.1.1", "dev", "b0"])?;
            }
            NpScenario::Hairpin => {
                let (l, r) = (net.lan.as_deref().unwrap(), net.node2.as_deref().unwrap());
                ip(&["-n", l, "link", "add", "br0", "type", "bridge"])?;
                ip(&["-n", l, "link", "set", "br0", "up"])?;
                for (ns, dev, addr, port) in [
                    (c, "c0", "10.253.2.2/24", "lc"),
                    (nd, "nl", "10.253.2.1/24", "ln"),
                    (r, "rl", "10.253.2.3/24", "lr"),
                ] {
                    veth(ns, dev, Some(addr), l, port, None)?;
                    ip(&["-n", l, "link", "set", port, "master", "br0"])?;
                }
                veth(r, "rb", Some("10.253.3.1/24"), b, "b0", Some("10.253.3.2/24"))?;
                ip(&["-n", b, "route", "add", "10.253.2.0/24", "via", "10.253.3.1", "dev", "b0"])?;
                ip(&["-n", nd, "route", "add", "10.253.3.0/24", "via", "10.253.2.3", "dev", "nl"])?;
                // Direct mode: the client reaches the backend through the node, not node 2.
                ip(&["-n", c, "route", "add", "10.253.3.0/24", "via", "10.253.2.1", "dev", "c0"])?;
                forwarding.push(r);
                // The node must not tell the client to go to node 2 itself (ICMP redirect), and
                // the client must not listen if it did.
                sysctl(nd, &["net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.nl.send_redirects=0"])?;
                sysctl(c, &["net.ipv4.conf.all.accept_redirects=0", "net.ipv4.conf.c0.accept_redirects=0"])?;
                // Native XDP on the node's veth sees only what its peer (the bridge port) hands
                // over through NAPI, as a NIC driver would: the port must not offer TSO (else
                // a forwarded skb is not "eligible" and bypasses XDP), and a frame sent back
                // with XDP_TX is only picked up when the port has an XDP program of its own
                // (the kernel kicks the peer's NAPI only then): one that passes everything.
                // Same wiring in every mode.
                net.xdp_pass = Some(in_netns(l, || {
                    set_offload("ln", Offload::Tso, false)?;
                    XdpPass::attach("ln")
                })?);
                // Packets as a wire carries them, with complete checksums: a veth sender leaves
                // only the pseudo-header sum for the receiver to finish (CHECKSUM_PARTIAL), which
                // native XDP cannot see and an incremental update in XDP then corrupts.
                for (ns, dev) in [(c, "c0"), (b, "b0")] {
                    in_netns(ns, || set_offload(dev, Offload::TxChecksum, false))?;
                }
                // The node's neighbours known (XDP passes a packet whose next hop has no MAC yet).
                for (peer_ns, dev, addr) in [(c, "c0", "10.253.2.2"), (r, "rl", "10.253.2.3")] {
                    let mac = mac_of(peer_ns, dev)?;
                    ip(&["-n", nd, "neigh", "replace", addr, "lladdr", &mac, "dev", "nl", "nud", "permanent"])?;
                }
            }
        }
        for ns in forwarding {
            // bpf_fib_lookup also refuses with FWD_DISABLED where forwarding is off.
            sysctl(ns, &["net.ipv4.ip_forward=1"])?;
        }
        net.check()?;
        Ok(net)
    }

    fn all(&self) -> Vec<&str> {
        let mut v = vec![self.client.as_str(), self.node.as_str(), self.backend.as_str()];
        v.extend(self.lan.as_deref());
        v.extend(self.node2.as_deref());
        v
    }

    /// Each namespace holds only loopback, its veths (and the LAN's bridge), none has a default
    /// route, and the client reaches the node address and the backend through the node.
    fn check(&self) -> Result<()> {
        let devs: Vec<(&str, Vec<&str>)> = match self.scenario {
            NpScenario::Local => {
                vec![(&self.client, vec!["c0"]), (&self.node, vec!["nc", "nb"]), (&self.backend, vec!["b0"])]
                    .into_iter()
                    .map(|(n, d)| (n.as_str(), d))
                    .collect()
            }
            NpScenario::Hairpin => vec![
                (self.client.as_str(), vec!["c0"]),
                (self.node.as_str(), vec!["nl"]),
                (self.backend.as_str(), vec!["b0"]),
                (self.lan.as_deref().unwrap(), vec!["br0", "lc", "ln", "lr"]),
                (self.node2.as_deref().unwrap(), vec!["rl", "rb"]),
            ],
        };
        for (ns, devs) in devs {
            let out = Command::new("ip").args(["-n", ns, "-o", "link", "show"]).output()?;
            for l in String::from_utf8_lossy(&out.stdout).lines() {
                let name = l.split(':').nth(1).unwrap_or("").trim().split('@').next().unwrap_or("");
                ensure!(name == "lo" || devs.contains(&name), "unexpected interface {name:?} in netns {ns}");
            }
            let out = Command::new("ip").args(["-n", ns, "-4", "route", "show", "default"]).output()?;
            ensure!(out.stdout.iter().all(|c| c.is_ascii_whitespace()), "a default route in netns {ns}");
        }
        let node = self.scenario.node_ip();
        for (dst, want) in [(node, "dev c0".to_string()), (self.scenario.backend_ip(), format!("via {node} dev c0"))] {
            let out = Command::new("ip").args(["-n", &self.client, "-4", "route", "get", &dst.to_string()]).output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            ensure!(text.contains(&want), "route to {dst} in the client netns: {text}");
        }
        Ok(())
    }
}

impl Drop for NodeNet {
    fn drop(&mut self) {
        drop(self.xdp_pass.take());
        for ns in self.all() {
            let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
        }
    }
}

/// A `TcpExt` counter of netns `ns` (`/proc/net/netstat` read from inside it).
fn netstat(ns: &str, field: &str) -> Result<u64> {
    let out = Command::new("ip").args(["netns", "exec", ns, "cat", "/proc/net/netstat"]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else { bail!("no TcpExt in {ns}") };
    let i = names.split_whitespace().position(|n| n == field).with_context(|| format!("no TcpExt {field}"))?;
    Ok(values.split_whitespace().nth(i).context("short TcpExt line")?.parse()?)
}

/// `sysctl -w` inside netns `ns`.
fn sysctl(ns: &str, settings: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "sysctl", "-qw"])
        .args(settings)
        .output()
        .context("running sysctl")?;
    ensure!(out.status.success(), "sysctl {settings:?} in {ns}: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

/// The MAC address of `dev` in netns `ns`.
fn mac_of(ns: &str, dev: &str) -> Result<String> {
    let out = Command::new("ip").args(["-n", ns, "link", "show", "dev", dev]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mac = text.split_whitespace().skip_while(|w| *w != "link/ether").nth(1);
    Ok(mac.with_context(|| format!("no MAC for {dev} in {ns}: {text}"))?.to_string())
}

/// An offload of a network device, switched with the legacy ethtool ioctl.
#[derive(Clone, Copy, Debug)]
enum Offload {
    /// TCP segmentation offload.
    Tso,
    /// Transmit checksum offload.
    TxChecksum,
}

/// Switches `what` of `dev` (in the calling thread's netns) with the legacy ethtool ioctl (no
/// ethtool binary needed) and checks it took.
fn set_offload(dev: &str, what: Offload, on: bool) -> Result<()> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    let (get, set) = match what {
        Offload::Tso => (0x1e_u32, 0x1f_u32), // ETHTOOL_GTSO, ETHTOOL_STSO
        Offload::TxChecksum => (0x16, 0x17),  // ETHTOOL_GTXCSUM, ETHTOOL_STXCSUM
    };
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut EthtoolValue,
        pad: [u8; 16],
    }
    ensure!(dev.len() < libc::IFNAMSIZ, "interface name {dev:?} too long");
    // SAFETY: a datagram socket only for the ioctl, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    let ioctl = |cmd: u32, data: u32| -> std::io::Result<u32> {
        let mut v = EthtoolValue { cmd, data };
        let mut ifr = IfReq { name: [0; libc::IFNAMSIZ], data: &mut v, pad: [0; 16] };
        ifr.name[..dev.len()].copy_from_slice(dev.as_bytes());
        // SAFETY: `ifr` is a valid ifreq whose data points at a live ethtool_value.
        if unsafe { libc::ioctl(fd, SIOCETHTOOL as _, &mut ifr) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(v.data)
    };
    let r = ioctl(set, on as u32).and_then(|_| ioctl(get, 0));
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(fd) };
    let now = r.with_context(|| format!("switching {what:?} of {dev}"))?;
    ensure!((now != 0) == on, "{what:?} of {dev} is still {}", if now != 0 { "on" } else { "off" });
    Ok(())
}

/// A two-instruction XDP program (`r0 = XDP_PASS; exit`) attached in native mode to an interface
/// through a bpf_link; closing the link (drop) detaches it. Loaded with raw bpf(2) calls: it is
/// wiring of the benchmark's LAN, not part of Skiff.
struct XdpPass {
    _link: std::os::fd::OwnedFd,
    _prog: std::os::fd::OwnedFd,
}

impl XdpPass {
    /// Attaches to `dev` in the calling thread's netns.
    fn attach(dev: &str) -> Result<Self> {
        use std::os::fd::{FromRawFd, OwnedFd};
        const BPF_PROG_LOAD: libc::c_long = 5;
        const BPF_LINK_CREATE: libc::c_long = 28;
        const BPF_PROG_TYPE_XDP: u32 = 6;
        const BPF_XDP: u32 = 37;
        const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
        #[repr(C)]
        struct ProgLoad {
            prog_type: u32,
            insn_cnt: u32,
            insns: u64,
            license: u64,
            log_level: u32,
            log_size: u32,
            log_buf: u64,
            kern_version: u32,
            prog_flags: u32,
            prog_name: [u8; 16],
            rest: [u8; 64],
        }
        #[repr(C)]
        struct LinkCreate {
            prog_fd: u32,
            target_ifindex: u32,
            attach_type: u32,
            flags: u32,
            rest: [u8; 48],
        }
        // mov64 r0, 2 (XDP_PASS); exit
        let insns: [u64; 2] =
            [u64::from_le_bytes([0xb7, 0, 0, 0, 2, 0, 0, 0]), u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0])];
        let license = c"GPL";
        let mut name = [0u8; 16];
        name[..9].copy_from_slice(b"bench_xdp");
        let load = ProgLoad {
            prog_type: BPF_PROG_TYPE_XDP,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 0,
            log_size: 0,
            log_buf: 0,
            kern_version: 0,
            prog_flags: 0,
            prog_name: name,
            rest: [0; 64],
        };
        // SAFETY: bpf(2) with a valid, zero-tailed attribute struct whose pointers outlive the call.
        let prog = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, &load as *const ProgLoad, std::mem::size_of::<ProgLoad>())
        };
        ensure!(prog >= 0, "loading the XDP pass program: {}", std::io::Error::last_os_error());
        // SAFETY: a new descriptor owned from here on.
        let prog = unsafe { OwnedFd::from_raw_fd(prog as i32) };
        let c = CString::new(dev)?;
        // SAFETY: valid C string.
        let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
        ensure!(ifindex != 0, "no interface {dev}");
        let create = LinkCreate {
            prog_fd: prog.as_raw_fd() as u32,
            target_ifindex: ifindex,
            attach_type: BPF_XDP,
            flags: XDP_FLAGS_DRV_MODE,
            rest: [0; 48],
        };
        // SAFETY: as above.
        let link = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_LINK_CREATE,
                &create as *const LinkCreate,
                std::mem::size_of::<LinkCreate>(),
            )
        };
        ensure!(link >= 0, "attaching the XDP pass program to {dev}: {}", std::io::Error::last_os_error());
        // SAFETY: as above.
        Ok(XdpPass { _link: unsafe { OwnedFd::from_raw_fd(link as i32) }, _prog: prog })
    }
}

/// One NodePort cell's results.
#[derive(Clone, Debug, Default)]
struct NpRun {
    /// Datagrams per second the backend's socket received (steady state, after warm-up).
    udp_rate: f64,
    /// Fraction of the sent datagrams the backend never received.
    udp_loss: f64,
    /// TCP connections, [`NP_CONCURRENCY`] at a time.
    tcp: Run,
    /// During the TCP run, per 1,000 connections (warm-up included): SYNs the client
    /// retransmitted, and SYNs the backend rejected in TIME_WAIT (PAWS).
    syn_retrans_per_k: f64,
    paws_per_k: f64,
}

/// One (scenario, round, mode) NodePort cell: fresh namespaces, the backend (UDP sink + TCP
/// accept-and-close on port 8080), the mode programmed, then UDP and TCP from the client.
fn np_cell(scenario: NpScenario, mode: NpMode, o: &Opts) -> Result<NpRun> {
    let net = NodeNet::create(scenario)?;
    let (node_ip, backend_ip) = (scenario.node_ip(), scenario.backend_ip());
    let backend = SocketAddrV4::new(backend_ip, NP_BACKEND_PORT);
    let mut server = Server::start(&net.backend, &[backend], Some(backend))?;
    let node_port = SocketAddrV4::new(node_ip, NODE_PORT);
    let backends = [(backend_ip, NP_BACKEND_PORT)];
    let policy = match scenario {
        // externalTrafficPolicy: Local (the backend is the node's own): no SNAT, the backend sees
        // the client's address, in every mode.
        NpScenario::Local => FrontendPolicy { external: true, external_local: true, ..Default::default() },
        // Cluster: SNAT (masquerade) to the node address, so replies return through the node.
        NpScenario::Hairpin => FrontendPolicy { external: true, ..Default::default() },
    };
    // Dropped before the namespaces (declared after them).
    let mut ebpf: Option<Ebpf> = None;
    let mut nft: Option<NftServiceTable> = None;
    let target = match mode {
        NpMode::Direct => backend,
        NpMode::Ebpf | NpMode::Xdp => {
            let e = ebpf.insert(Ebpf::load()?);
            let dp = e.dp();
            in_netns(&net.node, || {
                match (scenario, mode) {
                    // Requests enter on nc, the backend's replies on nb.
                    (NpScenario::Local, _) => {
                        for dev in ["nc", "nb"] {
                            dp.attach_nodeport(dev).with_context(|| format!("attaching skiff_nodeport to {dev}"))?;
                        }
                    }
                    (NpScenario::Hairpin, NpMode::Ebpf) => {
                        dp.attach_nodeport("nl").context("attaching skiff_nodeport to nl")?;
                    }
                    // XDP alone (native): every packet of these flows must be translated there
                    // (nothing at tc would take one it passed), which proves the path measured.
                    // With tc attached as well, as the agent does, hairpin packets never reach
                    // tc: the same path.
                    _ => {
                        dp.split()
                            .0
                            .attach_nodeport_xdp("nl", XdpMode::Driver)
                            .context("attaching skiff_nodeport_xdp to nl (native)")?;
                    }
                }
                Ok(())
            })?;
            for proto in [Protocol::Udp, Protocol::Tcp] {
                dp.services.upsert_frontend(node_ip, NODE_PORT, proto, &backends, policy)?;
            }
            node_port
        }
        NpMode::Nftables => {
            let t = nft.insert(open_nft_table(&net.node)?);
            for proto in [Protocol::Udp, Protocol::Tcp] {
                t.upsert_frontend(node_ip, NODE_PORT, proto, &backends, policy)?;
            }
            node_port
        }
    };
    let (udp_rate, udp_loss) = run_blast(&net, &mut server, target, o).context("UDP packet rate")?;
    // Through SNAT (hairpin, eBPF modes) some SYNs meet the backend's TIME_WAIT sockets of an
    // earlier flow on the same translated port and are rejected (PAWS) until the client
    // retransmits: counted below; failed connections there are reported, not fatal.
    let before = (netstat(&net.client, "TCPSynRetrans")?, netstat(&net.backend, "PAWSTimewait")?);
    let tolerate = if scenario == NpScenario::Hairpin { 100 } else { 1 };
    let tcp =
        run_client_tolerating(&net.client, None, &[target], (Cycle::ConnectAwaitClose, NP_CONCURRENCY), o, tolerate)
            .context("TCP connections")?;
    let per_k = 1000.0 / (tcp.rate * (o.warmup + o.secs)).max(1.0);
    let syn_retrans_per_k = (netstat(&net.client, "TCPSynRetrans")? - before.0) as f64 * per_k;
    let paws_per_k = (netstat(&net.backend, "PAWSTimewait")? - before.1) as f64 * per_k;
    // The translation happened where it should (not by some other path).
    match mode {
        NpMode::Ebpf | NpMode::Xdp => {
            let dp = ebpf.as_mut().expect("loaded").dp();
            for proto in [Protocol::Udp, Protocol::Tcp] {
                let p = dp.services.packet_counters(node_ip, NODE_PORT, proto)?.unwrap_or_default();
                ensure!(p.packets > 0, "the {} program translated no {proto:?} packet", mode.name());
            }
        }
        NpMode::Nftables => {
            let t = nft.as_ref().expect("programmed");
            for proto in [Protocol::Udp, Protocol::Tcp] {
                let c = t.counters(node_ip, NODE_PORT, proto)?.unwrap_or_default();
                ensure!(c.translated > 0, "the nftables NodePort frontend translated no {proto:?} flow");
            }
        }
        NpMode::Direct => {}
    }
    drop(nft);
    drop(ebpf);
    drop(server);
    drop(net);
    Ok(NpRun { udp_rate, udp_loss, tcp, syn_retrans_per_k, paws_per_k })
}

/// The UDP packet-rate test: the blaster in the client netns on CPU 0 for warm-up + secs (+ a
/// margin), the sink's count read at the start and the end of the measured window. Returns
/// datagrams per second received and the fraction lost over the whole run.
fn run_blast(net: &NodeNet, server: &mut Server, target: SocketAddrV4, o: &Opts) -> Result<(f64, f64)> {
    let (before, _) = server.udp_count()?;
    let total = o.warmup + o.secs + 0.3;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(ROLE_ENV, "blast")
        .env("SKBENCH_TARGET", target.to_string())
        .env("SKBENCH_FLOWS", UDP_FLOWS.to_string())
        .env("SKBENCH_SECS", total.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    place(&mut cmd, &net.client, None, Some(CLIENT_CPU));
    let mut child = KillOnDrop(Some(cmd.spawn().context("starting the UDP client")?));
    std::thread::sleep(Duration::from_secs_f64(o.warmup));
    let (c0, t0) = server.udp_count()?;
    std::thread::sleep(Duration::from_secs_f64(o.secs));
    let (c1, t1) = server.udp_count()?;
    let limit = Duration::from_secs_f64(total) + Duration::from_secs(5);
    let out = child.wait_output(limit)?;
    ensure!(out.status.success(), "the UDP client failed: {}", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find_map(|l| l.strip_prefix(RESULT_TAG)).context("no result from the UDP client")?;
    let f: Vec<&str> = line.split_whitespace().collect();
    let (sent, errors): (u64, u64) = (f[0].parse()?, f[1].parse()?);
    std::thread::sleep(Duration::from_millis(100)); // what is still queued
    let (c2, _) = server.udp_count()?;
    let received = c2 - before;
    ensure!(sent > 0 && c1 > c0, "no datagram reached the backend ({sent} sent; first error: {})", f[2]);
    if errors > 0 {
        eprintln!("  {errors} failed sendmmsg call(s): {}", f[2].replace('_', " "));
    }
    let rate = (c1 - c0) as f64 / (t1 - t0).as_secs_f64();
    Ok((rate, 1.0 - received as f64 / sent as f64))
}

/// A child process killed (and reaped) on drop unless it was waited for.
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    /// Waits until the child exits by itself; kills it after `limit`.
    fn wait_output(&mut self, limit: Duration) -> Result<std::process::Output> {
        let mut child = self.0.take().context("already waited for")?;
        let t = Instant::now();
        while child.try_wait()?.is_none() {
            if t.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                bail!("a child did not finish within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(child.wait_with_output()?)
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// API event → datapath latency

/// The `skiff` binary for the API server: `$SKIFF_BIN`, else the release build, else the debug
/// build of this workspace.
fn skiff_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SKIFF_BIN") {
        return PathBuf::from(p);
    }
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    ["release/skiff", "debug/skiff"]
        .iter()
        .map(|b| target.join(b))
        .find(|p| p.exists())
        .unwrap_or(target.join("release/skiff"))
}

/// `skiff control` alone (no controllers, no scheduler: nothing else writes), on a free loopback
/// port of the host, data directory `/tmp/skiff-bench-dp-<pid>-api`. Killed on drop, and by the
/// kernel if this process dies first (`PR_SET_PDEATHSIG`); the directory is removed on drop (or
/// swept by the next run).
struct ApiServer {
    child: Option<Child>,
    dir: PathBuf,
    kubeconfig: PathBuf,
}

impl ApiServer {
    fn start(bin: &Path) -> Result<Self> {
        ensure!(
            bin.exists(),
            "{} is missing: build it (`cargo build --release -p skiff`) or set SKIFF_BIN",
            bin.display()
        );
        let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{}-api", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut server = ApiServer { child: None, kubeconfig: dir.join("kubeconfig"), dir };
        let log = std::fs::File::create(server.dir.join("skiff.log"))?;
        let mut cmd = Command::new(bin);
        cmd.args(["control", "--data-dir"])
            .arg(&server.dir)
            .args(["--listen", "127.0.0.1:0", "--controllers=", "--disable-scheduler"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        server.child = Some(cmd.spawn().with_context(|| format!("starting {}", bin.display()))?);
        Ok(server)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("skiff.log")).unwrap_or_default()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn kube_client(kubeconfig: &Path) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(kube::Client::try_from(cfg)?)
}

/// The API server and the benchmark's own client of it (Services and EndpointSlices in
/// `default`). Fields drop in order: the client's runtime, then the server.
struct LatApi {
    rt: tokio::runtime::Runtime,
    services: kube::Api<K8sService>,
    slices: kube::Api<EndpointSlice>,
    server: ApiServer,
}

impl LatApi {
    fn start(bin: &Path) -> Result<Self> {
        let server = ApiServer::start(bin)?;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let t = Instant::now();
        let client = loop {
            if server.kubeconfig.exists() {
                let ready = rt.block_on(async {
                    let c = kube_client(&server.kubeconfig).await?;
                    let api: kube::Api<K8sService> = kube::Api::namespaced(c.clone(), "default");
                    api.list(&kube::api::ListParams::default().limit(1)).await?;
                    anyhow::Ok(c)
                });
                if let Ok(c) = ready {
                    break c;
                }
            }
            ensure!(
                t.elapsed() < Duration::from_secs(60),
                "skiff control did not become ready; log:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        Ok(LatApi {
            rt,
            services: kube::Api::namespaced(client.clone(), "default"),
            slices: kube::Api::namespaced(client, "default"),
            server,
        })
    }

    /// Creates Services `fill-<from>` … `fill-<to - 1>` with an EndpointSlice each (32 requests in
    /// flight).
    fn populate(&self, from: usize, to: usize) -> Result<()> {
        use futures::{StreamExt, TryStreamExt};
        self.rt.block_on(
            futures::stream::iter(from..to)
                .map(|i| async move {
                    let name = format!("fill-{i}");
                    let pp = kube::api::PostParams::default();
                    self.services.create(&pp, &k8s_service(&name)?).await?;
                    self.slices.create(&pp, &k8s_slice(&name, i * ENDPOINTS_PER_SERVICE)?).await?;
                    anyhow::Ok(())
                })
                .buffer_unordered(32)
                .try_collect::<Vec<()>>(),
        )?;
        Ok(())
    }

    /// Deletes the Services `names` and their EndpointSlices (16 requests in flight).
    fn delete(&self, names: &[String]) -> Result<()> {
        use futures::{StreamExt, TryStreamExt};
        self.rt.block_on(
            futures::stream::iter(names)
                .map(|name| async move {
                    let dp = kube::api::DeleteParams::default();
                    self.slices.delete(&format!("{name}-1"), &dp).await?;
                    self.services.delete(name, &dp).await?;
                    anyhow::Ok(())
                })
                .buffer_unordered(16)
                .try_collect::<Vec<()>>(),
        )?;
        Ok(())
    }
}

/// A Service with one TCP port and no selector (its EndpointSlice is written by the benchmark,
/// as the EndpointSlice controller would); the API server allocates its ClusterIP.
fn k8s_service(name: &str) -> Result<K8sService> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name},
        "spec": {"ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": 8080, "protocol": "TCP"}]}
    }))?)
}

/// The Service's EndpointSlice: `ENDPOINTS_PER_SERVICE` ready endpoints in the pod range from
/// filler endpoint `first` on (never contacted).
fn k8s_slice(service: &str, first: usize) -> Result<EndpointSlice> {
    let endpoints: Vec<serde_json::Value> = (0..ENDPOINTS_PER_SERVICE)
        .map(|e| {
            serde_json::json!({"addresses": [filler_endpoint(first + e).to_string()], "conditions": {"ready": true}})
        })
        .collect();
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-1"), "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints
    }))?)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum LatMode {
    Ebpf,
    Nftables,
}

impl LatMode {
    fn name(self) -> &'static str {
        match self {
            LatMode::Ebpf => "ebpf",
            LatMode::Nftables => "nftables",
        }
    }
    fn label(self) -> &'static str {
        match self {
            LatMode::Ebpf => "eBPF maps (`ServiceTable`)",
            LatMode::Nftables => "nftables mode (`NftServiceTable`)",
        }
    }
}

/// One table write as the proxy made it: when the call returned (the kernel holds the entry),
/// which frontend, with how many backends (`None`: removed).
#[derive(Clone, Copy, Debug)]
struct Rec {
    at: Instant,
    fe: Frontend,
    backends: Option<usize>,
}

/// The log of every table write, appended by the proxy's sync loop (one task: in time order).
#[derive(Default)]
struct Recorder {
    log: Mutex<Vec<Rec>>,
    cv: Condvar,
}

impl Recorder {
    fn note(&self, writes: impl Iterator<Item = (Frontend, Option<usize>)>) {
        let mut log = self.log.lock().unwrap();
        let at = Instant::now();
        log.extend(writes.map(|(fe, backends)| Rec { at, fe, backends }));
        drop(log);
        self.cv.notify_all();
    }

    /// The first write at or after `since` that `pred` accepts, waiting up to `timeout`.
    fn wait(&self, since: Instant, timeout: Duration, pred: impl Fn(&Rec) -> bool) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        let mut log = self.log.lock().unwrap();
        let mut i = log.partition_point(|r| r.at < since);
        loop {
            if let Some(r) = log[i..].iter().find(|r| pred(r)) {
                return Some(r.at);
            }
            i = log.len();
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            log = self.cv.wait_timeout(log, deadline - now).unwrap().0;
        }
    }
}

/// The table the proxy programs, passed through unchanged, with every successful write noted
/// the moment the call returns: for the eBPF table the map syscalls are done, for nftables the
/// kernel acknowledged the transaction, so that instant is when the datapath has the entry.
struct Recording<'a> {
    inner: &'a mut dyn ProxyTable,
    rec: Arc<Recorder>,
}

impl ProxyTable for Recording<'_> {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn frontends(&self) -> Vec<Frontend> {
        self.inner.frontends()
    }
    fn backends(&self, vip: Ipv4Addr, port: u16, proto: Protocol) -> Option<Vec<(Ipv4Addr, u16)>> {
        self.inner.backends(vip, port, proto)
    }
    fn upsert_frontend(
        &mut self,
        vip: Ipv4Addr,
        port: u16,
        proto: Protocol,
        backends: &[(Ipv4Addr, u16)],
        policy: FrontendPolicy,
    ) -> Result<UpdateStats> {
        let r = self.inner.upsert_frontend(vip, port, proto, backends, policy);
        if r.is_ok() {
            self.rec.note(std::iter::once((Frontend { vip, port, proto }, Some(backends.len()))));
        }
        r
    }
    fn remove_service(&mut self, vip: Ipv4Addr, port: u16, proto: Protocol) -> Result<UpdateStats> {
        let r = self.inner.remove_service(vip, port, proto);
        if r.is_ok() {
            self.rec.note(std::iter::once((Frontend { vip, port, proto }, None)));
        }
        r
    }
    fn retain(&mut self, keep: &dyn Fn(&Frontend) -> bool) -> Result<usize> {
        self.inner.retain(keep)
    }
    fn counters(
        &self,
        vip: Ipv4Addr,
        port: u16,
        proto: Protocol,
    ) -> Result<Option<skiff_dataplane_common::ServiceCounters>> {
        self.inner.counters(vip, port, proto)
    }
    fn packet_counters(
        &self,
        vip: Ipv4Addr,
        port: u16,
        proto: Protocol,
    ) -> Result<Option<skiff_dataplane_common::PacketCounters>> {
        self.inner.packet_counters(vip, port, proto)
    }
    fn apply_batch(&mut self, d: &Desired) -> Option<(usize, bool)> {
        let r = self.inner.apply_batch(d);
        if let Some((_, true)) = r {
            // The batch's end: an upper bound for each entry in it (full syncs only).
            self.rec.note(d.iter().map(|(fe, w)| (*fe, Some(w.backends.len()))));
        }
        r
    }
}

/// A network namespace with only loopback and the service range blackholed, for the nftables
/// table of a latency cell (no traffic is sent there); deleted on drop.
struct Netns(String);

impl Netns {
    fn create() -> Result<Self> {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let ns = Netns(format!("{NETNS_PREFIX}p-{}-{n}", std::process::id()));
        ip(&["netns", "add", &ns.0])?;
        ip(&["-n", &ns.0, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns.0, "route", "add", "blackhole", SERVICE_RANGE])?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).stderr(Stdio::null()).status();
    }
}

/// Sends the proxy's shutdown on drop (also on an early return, so its thread ends).
struct StopOnDrop(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// One latency cell's samples.
#[derive(Clone, Debug, Default)]
struct LatRun {
    /// Service create call start → its frontend in the table.
    svc: Vec<Duration>,
    /// EndpointSlice create call start → the frontend's backends in the table.
    eps: Vec<Duration>,
    /// The create calls themselves (request → response), both kinds.
    call: Vec<Duration>,
    /// The proxy's own programming-latency histogram (watch event → table written): p50, p99, n.
    proxy: (Duration, Duration, u64),
    /// Proxy start → every present service programmed (initial lists + first full sync).
    start: Duration,
}

/// One (size, round, mode) latency cell: a fresh table (eBPF maps in a pin directory of their
/// own, loaded but attached nowhere; or the nftables tables in a netns of their own), the proxy
/// (`Proxy::run`, in-process) started against the API server holding `present` services, then
/// `count` new Services with their EndpointSlices created one at a time, each waited for; they
/// are deleted again afterwards.
fn latency_cell(mode: LatMode, api: &LatApi, present: usize, count: usize) -> Result<LatRun> {
    let cell = SEQ.fetch_add(1, Ordering::Relaxed);
    // Drop order: the table, then its netns.
    let mut ns: Option<Netns> = None;
    let mut ebpf: Option<Ebpf> = None;
    let mut nft: Option<NftServiceTable> = None;
    let table: &mut dyn ProxyTable = match mode {
        LatMode::Ebpf => &mut ebpf.insert(Ebpf::load()?).dp().services,
        LatMode::Nftables => {
            let ns = ns.insert(Netns::create()?);
            nft.insert(open_nft_table(&ns.0)?)
        }
    };
    let rec = Arc::new(Recorder::default());
    let proxy = Proxy::new(ProxyConfig { metrics_listen: None, ..Default::default() })?;
    let metrics = proxy.metrics();
    let names: Vec<String> = (0..count).map(|j| format!("m{cell}-{j}")).collect();
    let run = std::thread::scope(|s| -> Result<LatRun> {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let stop = StopOnDrop(Some(tx));
        let (proxy, rec2, kubeconfig) = (&proxy, rec.clone(), api.server.kubeconfig.clone());
        let t_start = Instant::now();
        let thread = s.spawn(move || -> Result<()> {
            let mut table = Recording { inner: table, rec: rec2 };
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            rt.block_on(async {
                let client = kube_client(&kubeconfig).await?;
                proxy
                    .run(client, &mut table, async {
                        let _ = rx.await;
                    })
                    .await
            })
        });
        // The initial lists and first full sync (the `kubernetes` Service is one more).
        let start = loop {
            if metrics.frontends.load(Ordering::Relaxed) as usize >= present {
                break t_start.elapsed();
            }
            ensure!(!thread.is_finished(), "the proxy stopped during its initial sync");
            ensure!(t_start.elapsed() < Duration::from_secs(300), "the proxy's initial sync took over 300 s");
            std::thread::sleep(Duration::from_millis(2));
        };
        std::thread::sleep(Duration::from_millis(300)); // a second full sync from the lists' ends
        let mut run = LatRun { start, ..Default::default() };
        let pp = kube::api::PostParams::default();
        let timeout = Duration::from_secs(10);
        for (j, name) in names.iter().enumerate() {
            let t0 = Instant::now();
            let svc = api.rt.block_on(api.services.create(&pp, &k8s_service(name)?))?;
            run.call.push(t0.elapsed());
            let ip = svc.spec.and_then(|s| s.cluster_ip).context("no ClusterIP allocated")?;
            let fe = Frontend { vip: ip.parse()?, port: SERVICE_PORT, proto: Protocol::Tcp };
            let at = rec
                .wait(t0, timeout, |r| r.fe == fe && r.backends.is_some())
                .with_context(|| format!("{name}: the proxy did not program {ip} within {timeout:?}"))?;
            run.svc.push(at - t0);
            let t1 = Instant::now();
            api.rt.block_on(api.slices.create(&pp, &k8s_slice(name, 3_000_000 + j * ENDPOINTS_PER_SERVICE)?))?;
            run.call.push(t1.elapsed());
            let at = rec
                .wait(t1, timeout, |r| r.fe == fe && r.backends == Some(ENDPOINTS_PER_SERVICE))
                .with_context(|| format!("{name}: the proxy did not program {ip}'s endpoints within {timeout:?}"))?;
            run.eps.push(at - t1);
        }
        let h = &metrics.programming_latency;
        run.proxy = (h.quantile(0.5).unwrap_or_default(), h.quantile(0.99).unwrap_or_default(), h.count());
        drop(stop);
        thread.join().map_err(|_| anyhow::anyhow!("the proxy thread panicked"))?.context("the proxy")?;
        Ok(run)
    });
    // The measured Services go again, so every cell starts from `present`.
    let deleted = api.delete(&names);
    drop(nft);
    drop(ebpf);
    drop(ns);
    let run = run?;
    deleted.context("deleting the measured Services")?;
    Ok(run)
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
    let mut o = Opts {
        rounds: 3,
        secs: 4.0,
        warmup: 0.5,
        sizes: vec![100, 1_000, 10_000],
        quick: false,
        modes: vec![Mode::Direct, Mode::Ebpf, Mode::Iptables, Mode::Nftables],
        clusterip: true,
        nodeport: true,
        latency: true,
        lat_sizes: vec![1_000, 10_000],
        lat_count: 200,
        lat_count_large: 25,
    };
    let mut args = std::env::args().skip(1);
    let list = |v: String| v.split(',').map(|s| s.parse::<usize>()).collect::<Result<Vec<_>, _>>();
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--quick" => {
                o.quick = true;
                o.rounds = 1;
                o.secs = 1.0;
                o.warmup = 0.2;
                o.sizes = vec![100, 10_000];
                o.lat_sizes = vec![1_000];
                o.lat_count = 20;
                o.lat_count_large = 5;
            }
            "--rounds" => o.rounds = val("--rounds")?.parse()?,
            "--secs" => o.secs = val("--secs")?.parse()?,
            "--sizes" => o.sizes = list(val("--sizes")?)?,
            "--modes" => {
                let v = val("--modes")?;
                let all = [Mode::Direct, Mode::Ebpf, Mode::Iptables, Mode::Nftables];
                let named: Vec<&str> = v.split(',').collect();
                for n in &named {
                    ensure!(
                        all.iter().any(|m| m.name() == *n),
                        "unknown mode {n:?} (direct, ebpf, iptables, nftables)"
                    );
                }
                ensure!(
                    named.contains(&"direct") && named.contains(&"ebpf"),
                    "--modes must include direct and ebpf (every ratio is eBPF's against direct)"
                );
                o.modes = all.into_iter().filter(|m| named.contains(&m.name())).collect();
            }
            "--latency-sizes" => o.lat_sizes = list(val("--latency-sizes")?)?,
            "--latency-count" => o.lat_count = val("--latency-count")?.parse()?,
            "--parts" => {
                let v = val("--parts")?;
                let parts: Vec<&str> = v.split(',').collect();
                for p in &parts {
                    ensure!(["clusterip", "nodeport", "latency"].contains(p), "unknown part {p:?}");
                }
                (o.clusterip, o.nodeport, o.latency) =
                    (parts.contains(&"clusterip"), parts.contains(&"nodeport"), parts.contains(&"latency"));
            }
            "-h" | "--help" => {
                println!(
                    "bench-dataplane [--quick] [--rounds N] [--secs S] [--sizes 100,1000,10000] \
                     [--modes direct,ebpf,iptables,nftables] \
                     [--parts clusterip,nodeport,latency] [--latency-sizes 1000,10000] [--latency-count 200]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    ensure!(o.rounds >= 1 && o.secs > 0.0 && !o.sizes.is_empty() && o.sizes.iter().all(|s| *s >= 1));
    ensure!(o.lat_sizes.windows(2).all(|w| w[0] < w[1]), "--latency-sizes must ascend");
    Ok(o)
}

/// The ClusterIP part's results: (size, mode) → per round: runs at each concurrency; and the
/// programming times.
#[derive(Default)]
struct ClusterResults {
    modes: Vec<Mode>,
    results: BTreeMap<(usize, Mode), Vec<Vec<Run>>>,
    programming: BTreeMap<(usize, Mode), Vec<Programming>>,
}

fn clusterip_part(o: &Opts) -> Result<ClusterResults> {
    let cgroup = skiff_tests::OwnCgroup::create(&format!("{DIR_PREFIX}{}", std::process::id()))?;
    let mut r = ClusterResults { modes: o.modes.clone(), ..Default::default() };
    for round in 0..o.rounds {
        for (si, &size) in o.sizes.iter().enumerate() {
            let svcs = services(size);
            // Set up (and programmed) in a rotated order; measured in turns.
            let mut order = r.modes.clone();
            order.rotate_left((round + si) % r.modes.len());
            let mut setups = Vec::new();
            for mode in order {
                setups.push(
                    Setup::create(mode, &svcs, &cgroup)
                        .with_context(|| format!("round {round}, {size} services, setting up {}", mode.name()))?,
                );
            }
            let runs =
                measure_interleaved(&mut setups, o).with_context(|| format!("round {round}, {size} services"))?;
            for (setup, runs) in setups.iter_mut().zip(runs) {
                let mode = setup.mode;
                setup.finish(&svcs, o).with_context(|| format!("round {round}, {size} services, {}", mode.name()))?;
                let desc: Vec<String> = runs
                    .iter()
                    .zip(LOADS)
                    .map(|(r, (cy, c))| {
                        format!("{} c{c} {:.0}/s p50 {:.1} p99 {:.1} µs", cy.env(), r.rate, r.p50_us, r.p99_us)
                    })
                    .collect();
                let pdesc = setup
                    .prog
                    .map(|p| {
                        format!(
                            "; programmed in {:.3} s, one change {:.3} ms",
                            p.scratch.as_secs_f64(),
                            p.change.as_secs_f64() * 1e3
                        )
                    })
                    .unwrap_or_default();
                eprintln!("round {round} {size:>5} svc {:<8} {}{pdesc}", mode.name(), desc.join(", "));
                r.results.entry((size, mode)).or_default().push(runs);
                if let Some(p) = setup.prog {
                    r.programming.entry((size, mode)).or_default().push(p);
                }
            }
        }
    }
    drop(cgroup);
    Ok(r)
}

/// NodePort results: (scenario, mode) → per round.
type NpResults = BTreeMap<(NpScenario, NpMode), Vec<NpRun>>;

fn nodeport_part(o: &Opts) -> Result<NpResults> {
    let mut out = NpResults::new();
    for scenario in [NpScenario::Local, NpScenario::Hairpin] {
        let modes = scenario.modes();
        for round in 0..o.rounds {
            let mut order = modes.to_vec();
            order.rotate_left(round % modes.len());
            for mode in order {
                let r = np_cell(scenario, mode, o)
                    .with_context(|| format!("NodePort {scenario:?}, round {round}, {}", mode.name()))?;
                eprintln!(
                    "round {round} NodePort {scenario:?} {:<8} UDP {:.0}/s (lost {:.2} %), TCP c{NP_CONCURRENCY} {:.0}/s",
                    mode.name(),
                    r.udp_rate,
                    r.udp_loss * 100.0,
                    r.tcp.rate,
                );
                out.entry((scenario, mode)).or_default().push(r);
            }
        }
    }
    Ok(out)
}

/// Latency results: (present, mode) → per round.
type LatResults = BTreeMap<(usize, LatMode), Vec<LatRun>>;

fn latency_part(o: &Opts, bin: &Path) -> Result<LatResults> {
    let api = LatApi::start(bin)?;
    let modes = [LatMode::Ebpf, LatMode::Nftables];
    let mut out = LatResults::new();
    let mut present = 0;
    for (si, &size) in o.lat_sizes.iter().enumerate() {
        let t = Instant::now();
        api.populate(present, size).with_context(|| format!("creating {size} Services"))?;
        eprintln!("latency: {size} Services with EndpointSlices present ({} s to create)", t.elapsed().as_secs());
        present = size;
        let count = if si == 0 { o.lat_count } else { o.lat_count_large };
        for round in 0..o.rounds {
            let mut order = modes.to_vec();
            order.rotate_left((round + si) % modes.len());
            for mode in order {
                let r = latency_cell(mode, &api, present, count)
                    .with_context(|| format!("latency, {size} present, round {round}, {}", mode.name()))?;
                let all: Vec<Duration> = r.svc.iter().chain(&r.eps).copied().collect();
                eprintln!(
                    "round {round} latency {size:>5} present {:<8} p50 {:.1} p99 {:.1} ms ({} events; proxy start → synced {:.2} s)",
                    mode.name(),
                    ms(pctl(&all, 50.0)),
                    ms(pctl(&all, 99.0)),
                    all.len(),
                    r.start.as_secs_f64()
                );
                out.entry((size, mode)).or_default().push(r);
            }
        }
    }
    Ok(out)
}

/// The `p` percentile (nearest rank) of `v`.
fn pctl(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> Result<()> {
    match std::env::var(ROLE_ENV).as_deref() {
        Ok("client") => return client_main(),
        Ok("server") => return server_main(),
        Ok("blast") => return blast_main(),
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
    let bin = skiff_bin();
    if o.latency {
        ensure!(
            bin.exists(),
            "{} is missing (the latency part runs `skiff control`): `cargo build --release -p skiff` or set SKIFF_BIN",
            bin.display()
        );
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

    let cluster = if o.clusterip { Some(clusterip_part(&o)?) } else { None };
    let nodeport = if o.nodeport { Some(nodeport_part(&o)?) } else { None };
    let latency = if o.latency { Some(latency_part(&o, &bin)?) } else { None };
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
    let mut targets: Vec<(String, Option<bool>)> = Vec::new();
    if let Some(c) = &cluster {
        report_clusterip(&o, c, &mut targets);
    }
    if let Some(np) = &nodeport {
        report_nodeport(np);
    }
    if let Some(l) = &latency {
        let built = std::fs::metadata(&bin)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .map(|e| format!("built {} min before the run ended", e.as_secs() / 60))
            .unwrap_or_default();
        println!("\nAPI server: `{} control --controllers= --disable-scheduler` ({built}).", bin.display());
        report_latency(l, &mut targets);
    }
    println!("\nTargets:");
    for (l, _) in &targets {
        println!("- {l}");
    }
    let judged: Vec<bool> = targets.iter().filter_map(|(_, m)| *m).collect();
    println!("- all targets: {}", pass(judged.iter().all(|m| *m)));
    Ok(())
}

fn report_clusterip(o: &Opts, c: &ClusterResults, targets: &mut Vec<(String, Option<bool>)>) {
    let (modes, results, programming) = (&c.modes, &c.results, &c.programming);
    let ratio = |size: usize, mode: Mode, base: Mode, ci: usize| -> f64 {
        let (Some(a), Some(b)) = (results.get(&(size, mode)), results.get(&(size, base))) else { return f64::NAN };
        median(a.iter().zip(b).map(|(x, y)| x[ci].rate / y[ci].rate).collect())
    };
    let med = |size: usize, mode: Mode, ci: usize, f: fn(&Run) -> f64| -> f64 {
        median(results.get(&(size, mode)).map(|v| v.iter().map(|r| f(&r[ci])).collect()).unwrap_or_default())
    };
    println!("ClusterIP: short TCP connections from a client netns.");
    for cycle in [Cycle::Connect, Cycle::ConnectAwaitClose] {
        // The loads of this cycle: one at a time, then 16 concurrent.
        let li = |c: usize| LOADS.iter().position(|l| *l == (cycle, c)).expect("load");
        let (l1, l16) = (li(1), li(16));
        println!("\nCycle: {}.\n", cycle.describe());
        println!(
            "| services | mode | conn/s, 1 at a time | × direct | conn/s, 16 concurrent | × direct | connect p50 / p99 µs (1) | connect p50 / p99 µs (16) |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        for &size in &o.sizes {
            for mode in [Mode::Direct, Mode::Ebpf, Mode::Iptables, Mode::Nftables] {
                if !modes.contains(&mode) {
                    println!("| {size} | {} | not measured | | | | | |", mode.label());
                    continue;
                }
                println!(
                    "| {size} | {} | {:.0} | {:.2} | {:.0} | {:.2} | {:.1} / {:.1} | {:.1} / {:.1} |",
                    mode.label(),
                    med(size, mode, l1, |r| r.rate),
                    ratio(size, mode, Mode::Direct, l1),
                    med(size, mode, l16, |r| r.rate),
                    ratio(size, mode, Mode::Direct, l16),
                    med(size, mode, l1, |r| r.p50_us),
                    med(size, mode, l1, |r| r.p99_us),
                    med(size, mode, l16, |r| r.p50_us),
                    med(size, mode, l16, |r| r.p99_us),
                );
            }
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
    println!("\nRounds (conn/s at 1 / 16, connect cycle; then await-close cycle):");
    for ((size, mode), rounds) in results {
        let v: Vec<String> = rounds
            .iter()
            .map(|r| format!("{:.0}/{:.0}; {:.0}/{:.0}", r[0].rate, r[1].rate, r[2].rate, r[3].rate))
            .collect();
        println!("- {size} services, {}: {}", mode.name(), v.join(", "));
    }
    let failed: u64 = results.values().flatten().flatten().map(|r| r.errors).sum();
    println!("\nFailed (timed-out) connections in the ClusterIP part: {failed}.");
    for &size in &o.sizes {
        for (ci, c) in CONCURRENCY.iter().enumerate() {
            let r = ratio(size, Mode::Ebpf, Mode::Direct, ci);
            targets.push((
                format!("ClusterIP eBPF ≥ 0.95× direct, {size} services, {c} at a time: {r:.2}× {}", pass(r >= 0.95)),
                Some(r >= 0.95),
            ));
        }
    }
    if let Some(&max) = o.sizes.iter().max() {
        for (ci, c) in CONCURRENCY.iter().enumerate() {
            // Judged only when the largest size is the issue's 10,000 services.
            let mut against = |base: Mode, min: f64, what: &str| {
                let r = ratio(max, Mode::Ebpf, base, ci);
                targets.push((
                    format!(
                        "ClusterIP eBPF ≥ {min}× {what} at {max} services, {c} at a time: {r:.2}× {}",
                        pass(r >= min)
                    ),
                    (max >= 10_000).then_some(r >= min),
                ));
            };
            if modes.contains(&Mode::Iptables) {
                against(Mode::Iptables, 4.0, "the iptables layout");
            }
            if modes.contains(&Mode::Nftables) {
                against(Mode::Nftables, 1.25, "Skiff's nftables mode");
            }
        }
    }
    // Connect p99, one connection at a time (the connect cycle's first load), within 10 % of
    // direct: like the rate ratios, the median over rounds of the ratio within each round (the
    // two modes took turns in the same seconds), not the ratio of two medians taken from
    // different rounds. Each round's own difference is printed beside it: single rounds still
    // move by ±10–30 % either way when a burst of the VM's noise lands on one mode's turns.
    for &size in &o.sizes {
        let (Some(e), Some(d)) = (results.get(&(size, Mode::Ebpf)), results.get(&(size, Mode::Direct))) else {
            continue;
        };
        let per_round: Vec<f64> = e.iter().zip(d).map(|(e, d)| e[0].p99_us / d[0].p99_us).collect();
        let r = median(per_round.clone());
        let ok = r <= 1.10;
        let rounds: Vec<String> = per_round.iter().map(|x| format!("{:+.0} %", (x - 1.0) * 100.0)).collect();
        targets.push((
            format!(
                "ClusterIP eBPF connect p99 within 10 % of direct, {size} services, 1 at a time: {:+.0} % (median over rounds; rounds: {}; medians {:.1} vs {:.1} µs) {}",
                (r - 1.0) * 100.0,
                rounds.join(", "),
                med(size, Mode::Ebpf, 0, |r| r.p99_us),
                med(size, Mode::Direct, 0, |r| r.p99_us),
                pass(ok)
            ),
            Some(ok),
        ));
    }
}

fn report_nodeport(np: &NpResults) {
    println!(
        "\nNodePort, per packet at the node. UDP: {UDP_FLOWS} flows (source ports) × {UDP_PAYLOAD}-byte datagrams, {UDP_BATCH} \
         per sendmmsg, counted by the backend's socket; TCP: connect, read the server's close, close, {NP_CONCURRENCY} at a time."
    );
    for scenario in [NpScenario::Local, NpScenario::Hairpin] {
        let modes = scenario.modes();
        if !modes.iter().any(|m| np.contains_key(&(scenario, *m))) {
            continue;
        }
        let med = |mode: NpMode, f: &dyn Fn(&NpRun) -> f64| -> f64 {
            median(np.get(&(scenario, mode)).map(|v| v.iter().map(f).collect()).unwrap_or_default())
        };
        // Median over rounds of each round's ratio to the same round's run of `base`.
        let ratio = |mode: NpMode, base: NpMode, f: &dyn Fn(&NpRun) -> f64| -> f64 {
            let (Some(a), Some(b)) = (np.get(&(scenario, mode)), np.get(&(scenario, base))) else { return f64::NAN };
            median(a.iter().zip(b).map(|(x, y)| f(x) / f(y)).collect())
        };
        println!("\n{scenario:?}: {}.\n", scenario.describe());
        println!(
            "| mode | UDP datagrams/s received | × direct | CPU 0 ns per datagram | lost | TCP conn/s, {NP_CONCURRENCY} concurrent | × direct | connect p50 / p99 µs | SYNs retransmitted / PAWS-rejected at the backend, per 1,000 connections |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        for &mode in modes {
            if !np.contains_key(&(scenario, mode)) {
                continue;
            }
            let udp = med(mode, &|r| r.udp_rate);
            println!(
                "| {} | {udp:.0} | {:.2} | {:.0} | {:.2} % | {:.0} | {:.2} | {:.1} / {:.1} | {:.1} / {:.1} |",
                mode.label(),
                ratio(mode, NpMode::Direct, &|r| r.udp_rate),
                1e9 / udp,
                med(mode, &|r| r.udp_loss * 100.0),
                med(mode, &|r| r.tcp.rate),
                ratio(mode, NpMode::Direct, &|r| r.tcp.rate),
                med(mode, &|r| r.tcp.p50_us),
                med(mode, &|r| r.tcp.p99_us),
                med(mode, &|r| r.syn_retrans_per_k),
                med(mode, &|r| r.paws_per_k),
            );
        }
        let pairs: &[(NpMode, NpMode)] = match scenario {
            NpScenario::Local => &[(NpMode::Ebpf, NpMode::Nftables)],
            NpScenario::Hairpin => {
                &[(NpMode::Ebpf, NpMode::Nftables), (NpMode::Xdp, NpMode::Nftables), (NpMode::Xdp, NpMode::Ebpf)]
            }
        };
        println!();
        for (a, b) in pairs {
            println!(
                "{} vs {}: UDP {:.2}×, TCP conn/s {:.2}×.",
                a.name(),
                b.name(),
                ratio(*a, *b, &|r| r.udp_rate),
                ratio(*a, *b, &|r| r.tcp.rate)
            );
        }
        println!("\nRounds (UDP datagrams/s; TCP conn/s):");
        for &mode in modes {
            let Some(rounds) = np.get(&(scenario, mode)) else { continue };
            let v: Vec<String> = rounds.iter().map(|r| format!("{:.0}; {:.0}", r.udp_rate, r.tcp.rate)).collect();
            println!("- {}: {}", mode.name(), v.join(" | "));
        }
    }
    let failed: u64 = np.values().flatten().map(|r| r.tcp.errors).sum();
    println!("\nFailed (timed-out) TCP connections in the NodePort part: {failed}.");
}

fn report_latency(l: &LatResults, targets: &mut Vec<(String, Option<bool>)>) {
    println!(
        "\nAPI event → datapath: Services (then their EndpointSlices) created one at a time through the API, each timed from \
         the create call's start to the proxy's table call that wrote it returning; samples of all rounds pooled.\n"
    );
    println!(
        "| services present | table | events | Service create → frontend p50 / p99 ms | EndpointSlice create → backends p50 / p99 ms | all events p50 / p99 ms | create call alone p50 / p99 ms | proxy's own histogram (watch event → table) p50 / p99 ms | proxy start → all programmed |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for ((size, mode), runs) in l {
        let svc: Vec<Duration> = runs.iter().flat_map(|r| r.svc.clone()).collect();
        let eps: Vec<Duration> = runs.iter().flat_map(|r| r.eps.clone()).collect();
        let call: Vec<Duration> = runs.iter().flat_map(|r| r.call.clone()).collect();
        let all: Vec<Duration> = svc.iter().chain(&eps).copied().collect();
        let med_ms = |f: &dyn Fn(&LatRun) -> Duration| median(runs.iter().map(|r| ms(f(r))).collect());
        println!(
            "| {size} | {} | {} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} | {:.2} / {:.2} | {:.2} s |",
            mode.label(),
            all.len(),
            ms(pctl(&svc, 50.0)),
            ms(pctl(&svc, 99.0)),
            ms(pctl(&eps, 50.0)),
            ms(pctl(&eps, 99.0)),
            ms(pctl(&all, 50.0)),
            ms(pctl(&all, 99.0)),
            ms(pctl(&call, 50.0)),
            ms(pctl(&call, 99.0)),
            med_ms(&|r| r.proxy.0),
            med_ms(&|r| r.proxy.1),
            med_ms(&|r| r.start) / 1e3,
        );
        let p99 = pctl(&all, 99.0);
        targets.push((
            format!(
                "API event → datapath p99 ≤ 50 ms, {}, {size} services present: {:.1} ms {}",
                mode.name(),
                ms(p99),
                pass(p99 <= Duration::from_millis(50))
            ),
            Some(p99 <= Duration::from_millis(50)),
        ));
    }
    println!("\nRounds (all events p50 / p99 ms; max):");
    for ((size, mode), runs) in l {
        let v: Vec<String> = runs
            .iter()
            .map(|r| {
                let all: Vec<Duration> = r.svc.iter().chain(&r.eps).copied().collect();
                format!("{:.1}/{:.1}; {:.1}", ms(pctl(&all, 50.0)), ms(pctl(&all, 99.0)), ms(pctl(&all, 100.0)))
            })
            .collect();
        println!("- {size} present, {}: {}", mode.name(), v.join(" | "));
    }
}

fn pass(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

#[cfg(test)]
mod tests {
    use super::turn_order;
    use std::collections::BTreeMap;

    /// Every slice's order is a permutation, and over one period of the design every mode comes
    /// right after every other mode equally often.
    #[test]
    fn turns_are_balanced_over_who_goes_before_whom() {
        for n in 1..=6 {
            let period = if n % 2 == 0 { n } else { 2 * n };
            let mut after: BTreeMap<(usize, usize), usize> = BTreeMap::new();
            for k in 0..period {
                let order = turn_order(n, k);
                let mut sorted = order.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "n {n}, slice {k}: {order:?}");
                for w in order.windows(2) {
                    *after.entry((w[0], w[1])).or_default() += 1;
                }
            }
            let counts: Vec<usize> = after.values().copied().collect();
            assert_eq!(after.len(), n * (n - 1), "n {n}: every ordered pair occurs: {after:?}");
            assert!(counts.iter().all(|c| *c == counts[0]), "n {n}: {after:?}");
        }
    }
}
