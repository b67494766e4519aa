//! Per-packet NodePort (tc ingress and XDP; and the nftables mode's NodePorts) between simulated
//! machines, on the real kernel (root).
//!
//! Safe by construction (DESIGN.md §5): every machine is a network namespace this test creates,
//! joined by veths with private addresses; none has a route off the machine, and nothing is
//! attached outside them (the tc program goes on node 1's veths only). Namespaces, and with them
//! their veths and tc links, are deleted by a guard also when an assertion fails; leftovers of an
//! interrupted run are swept first.
//!
//! ```text
//!  client ── c0 10.251.0.2/30 ─── n1c 10.251.0.1/30 ── node1 ── n1n2 10.251.1.1/30 ─── n2n1 10.251.1.2/30 ── node2
//!                                                       │ n1p 10.252.1.1/24                                 │ n2p 10.252.2.1/24
//!                                                     pod1 10.252.1.2                                      pod2 10.252.2.2
//! ```
//!
//! Node 1 runs the NodePort program on all three of its interfaces (the pod side too: replies of
//! its local backend enter there); node 2 only routes. Backends answer with their id and the
//! source address they saw, so the test sees whether the client's address was kept or SNATed.

use skiff_agent::dataplane::{Config, Dataplane, FrontendPolicy, ObjectSource, Protocol, XdpMode, default_object_path};
use skiff_agent::proxy::{NftConfig, NftServiceTable, ProxyTable};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

const ROLE_ENV: &str = "SKIFF_NP_ROLE";
const PREFIX: &str = "SKIFF:";
const NODE1: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 1);
const POD1: Ipv4Addr = Ipv4Addr::new(10, 252, 1, 2);
const POD2: Ipv4Addr = Ipv4Addr::new(10, 252, 2, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 2);
const NS_PREFIX: &str = "sknp";

/// The tests share the address plan; one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------------------------------------
// Child roles: this binary re-executed inside a namespace.

/// Not a test of its own: a backend or a client when `SKIFF_NP_ROLE` says so.
#[test]
fn role_helper() {
    let Ok(role) = std::env::var(ROLE_ENV) else { return };
    let parts: Vec<&str> = role.split_whitespace().collect();
    match parts.as_slice() {
        // A backend: TCP and UDP on `port`, answering "<id> <source address seen>".
        ["backend", id, port] => {
            let port: u16 = port.parse().unwrap();
            let udp = UdpSocket::bind(("0.0.0.0", port)).unwrap();
            let uid = id.to_string();
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                loop {
                    if let Ok((_, from)) = udp.recv_from(&mut buf) {
                        let _ = udp.send_to(format!("{uid} {} {}", from.ip(), from.port()).as_bytes(), from);
                    }
                }
            });
            let tcp = TcpListener::bind(("0.0.0.0", port)).unwrap();
            println!("{PREFIX}listening");
            for conn in tcp.incoming().flatten() {
                let peer = conn.peer_addr().map(|p| format!("{} {}", p.ip(), p.port())).unwrap_or_default();
                let mut conn = conn;
                let _ = conn.write_all(format!("{id} {peer}").as_bytes());
            }
        }
        // A client: `n` TCP connections, or `n` UDP exchanges, to `addr`.
        ["tcp", addr, n] => {
            let addr: SocketAddr = addr.parse().unwrap();
            for _ in 0..n.parse::<u32>().unwrap() {
                tcp_exchange(TcpStream::connect_timeout(&addr, Duration::from_secs(2)), addr);
            }
        }
        // One TCP connection to `addr` from source `from` (a fixed port).
        ["tcp-from", from, addr] => {
            let addr: SocketAddr = addr.parse().unwrap();
            tcp_exchange(connect_from(from.parse().unwrap(), addr), addr);
        }
        // A connection from `from` to `addr` that stays open (not closed after the answer) until
        // stdin closes: a socket of the machine itself on that tuple.
        ["hold", from, addr] => {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut s = connect_from(from.parse().unwrap(), addr).unwrap();
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).unwrap();
            println!("{PREFIX}ok {} {addr} {}", String::from_utf8_lossy(&buf[..n]), s.local_addr().unwrap().port());
            let _ = std::io::stdin().read(&mut buf);
            drop(s);
        }
        ["udp", addr, n] => {
            let addr: SocketAddr = addr.parse().unwrap();
            for _ in 0..n.parse::<u32>().unwrap() {
                // A socket per exchange: one source port is one flow, which stays on its backend.
                let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
                sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                sock.send_to(b"ping", addr).unwrap();
                let mut buf = [0u8; 64];
                match sock.recv_from(&mut buf) {
                    Ok((len, from)) => println!(
                        "{PREFIX}ok {} {from} {}",
                        String::from_utf8_lossy(&buf[..len]),
                        sock.local_addr().unwrap().port()
                    ),
                    Err(e) => println!("{PREFIX}err {:?}", e.kind()),
                }
            }
        }
        other => panic!("unknown role {other:?}"),
    }
}

/// Reads the backend's answer on a connected stream and prints it with the stream's local port.
fn tcp_exchange(conn: std::io::Result<TcpStream>, addr: SocketAddr) {
    match conn {
        Ok(mut s) => {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            println!("{PREFIX}ok {answer} {addr} {}", s.local_addr().unwrap().port());
        }
        Err(e) => println!("{PREFIX}err {:?}", e.kind()),
    }
}

/// A TCP connection from a chosen local address and port (`SO_REUSEADDR`, as a client reusing a
/// port would).
fn connect_from(local: SocketAddr, remote: SocketAddr) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let (SocketAddr::V4(local), SocketAddr::V4(remote)) = (local, remote) else { panic!("IPv4 only") };
    let sockaddr = |a: std::net::SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor this function owns (closed by the TcpStream, or
    // here on error).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        let optlen = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, (&one as *const libc::c_int).cast(), optlen);
        let l = sockaddr(local);
        if libc::bind(fd, (&l as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let r = sockaddr(remote);
        if libc::connect(fd, (&r as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// One client result: which backend answered, the source address and port it saw, where the
/// answer came from, and the client's own source port.
#[derive(Debug)]
struct Answer {
    backend: String,
    seen_source: String,
    seen_port: u16,
    from: String,
    local_port: u16,
}

fn role_command(ns: &str, role: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "role_helper", "--nocapture", "--test-threads", "1"])
        .env(ROLE_ENV, role);
    cmd
}

/// Runs a client role in `ns`; every line must be an answer.
fn client(ns: &str, role: &str) -> Vec<Answer> {
    let out = role_command(ns, role).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "client failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
        .lines()
        .filter_map(|l| l.find(PREFIX).map(|i| &l[i + PREFIX.len()..]))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f[0], "ok", "a request failed: {l}\n{stdout}");
            Answer {
                backend: f[1].into(),
                seen_source: f[2].into(),
                seen_port: f[3].parse().unwrap(),
                from: f[4].into(),
                local_port: f[5].parse().unwrap(),
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The simulated machines

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

fn sweep_leftovers() {
    // Pins of a run that died before its guard could clean up (a load that failed half-way).
    for e in std::fs::read_dir("/sys/fs/bpf").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("skiff-test-np-")
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let out = Command::new("ip").args(["netns", "list"]).output().expect("running ip");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if name.starts_with(&format!("{NS_PREFIX}-")) {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Namespaces standing for machines, deleted on drop with the backends in them.
struct Machines {
    tag: String,
    roles: &'static [&'static str],
    backends: Vec<Child>,
}

fn enable_forwarding(ns: &str) {
    // bpf_fib_lookup refuses to forward (FWD_DISABLED) where forwarding is off.
    let ok = Command::new("ip")
        .args(["netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        .status()
        .unwrap()
        .success();
    assert!(ok, "enabling forwarding in {ns}");
}

impl Machines {
    fn ns(&self, role: &str) -> String {
        format!("{NS_PREFIX}-{}-{role}", self.tag)
    }

    /// One namespace per role, with loopback up.
    fn empty(roles: &'static [&'static str]) -> Machines {
        sweep_leftovers();
        let m = Machines { tag: std::process::id().to_string(), roles, backends: Vec::new() };
        for r in roles {
            ip(&["netns", "add", &m.ns(r)]);
            ip(&["-n", &m.ns(r), "link", "set", "lo", "up"]);
        }
        m
    }

    /// The machines of the module comment.
    fn new() -> Machines {
        let m = Machines::empty(&["c", "n1", "n2", "p1", "p2"]);
        let [c, n1, n2, p1, p2] = ["c", "n1", "n2", "p1", "p2"].map(|r| m.ns(r));
        let veth = |a_ns: &str, a: &str, a_addr: &str, b_ns: &str, b: &str, b_addr: &str| {
            ip(&["link", "add", a, "netns", a_ns, "type", "veth", "peer", "name", b, "netns", b_ns]);
            ip(&["-n", a_ns, "addr", "add", a_addr, "dev", a]);
            ip(&["-n", b_ns, "addr", "add", b_addr, "dev", b]);
            ip(&["-n", a_ns, "link", "set", a, "up"]);
            ip(&["-n", b_ns, "link", "set", b, "up"]);
        };
        veth(&c, "c0", "10.251.0.2/30", &n1, "n1c", "10.251.0.1/30");
        veth(&n1, "n1n2", "10.251.1.1/30", &n2, "n2n1", "10.251.1.2/30");
        veth(&n1, "n1p", "10.252.1.1/24", &p1, "p1", "10.252.1.2/24");
        veth(&n2, "n2p", "10.252.2.1/24", &p2, "p2", "10.252.2.2/24");
        ip(&["-n", &p1, "route", "add", "default", "via", "10.252.1.1"]);
        ip(&["-n", &p2, "route", "add", "default", "via", "10.252.2.1"]);
        ip(&["-n", &n1, "route", "add", "10.252.2.0/24", "via", "10.251.1.2"]);
        ip(&["-n", &n2, "route", "add", "10.251.0.0/30", "via", "10.251.1.1"]);
        enable_forwarding(&n1);
        enable_forwarding(&n2);
        m
    }

    /// A LAN (a bridge in a namespace of its own) with the client, node 1 and node 2 on it; pod
    /// 2 behind node 2. Node 1 reaches pod 2's subnet through node 2 over the same LAN, so
    /// NodePort flows to pod 2 leave node 1 through the interface they came in on: XDP's
    /// hairpin case.
    fn lan() -> Machines {
        let m = Machines::empty(&["c", "n1", "n2", "p2", "lan"]);
        let [c, n1, n2, p2, l] = ["c", "n1", "n2", "p2", "lan"].map(|r| m.ns(r));
        ip(&["-n", &l, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &l, "link", "set", "br0", "up"]);
        for (ns, dev, addr, port) in [
            (&c, "c0", "10.253.0.2/24", "lc"),
            (&n1, "n1l", "10.253.0.1/24", "l1"),
            (&n2, "n2l", "10.253.0.3/24", "l2"),
        ] {
            ip(&["link", "add", dev, "netns", ns, "type", "veth", "peer", "name", port, "netns", &l]);
            ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", &l, "link", "set", port, "master", "br0"]);
            ip(&["-n", &l, "link", "set", port, "up"]);
        }
        ip(&["link", "add", "n2p", "netns", &n2, "type", "veth", "peer", "name", "p2", "netns", &p2]);
        ip(&["-n", &n2, "addr", "add", "10.252.2.1/24", "dev", "n2p"]);
        ip(&["-n", &p2, "addr", "add", "10.252.2.2/24", "dev", "p2"]);
        ip(&["-n", &n2, "link", "set", "n2p", "up"]);
        ip(&["-n", &p2, "link", "set", "p2", "up"]);
        ip(&["-n", &p2, "route", "add", "default", "via", "10.252.2.1"]);
        ip(&["-n", &n1, "route", "add", "10.252.2.0/24", "via", "10.253.0.3"]);
        enable_forwarding(&n1);
        enable_forwarding(&n2);
        m
    }

    /// Starts backend `id` in namespace `role`, waiting until it listens.
    fn backend(&mut self, role: &str, id: &str, port: u16) {
        let mut child =
            role_command(&self.ns(role), &format!("backend {id} {port}")).stdout(Stdio::piped()).spawn().unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&seen).contains("listening") {
            let n = out.read(&mut buf).unwrap();
            assert!(n > 0, "backend {id} exited");
            seen.extend_from_slice(&buf[..n]);
        }
        self.backends.push(child);
    }

    /// Runs `f` with the calling thread in namespace `role`.
    fn inside<T: Send>(&self, role: &str, f: impl FnOnce() -> T + Send) -> T {
        let path = PathBuf::from("/run/netns").join(self.ns(role));
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path).unwrap();
                use std::os::fd::AsRawFd;
                // SAFETY: valid fd; changes only this scoped thread's namespace.
                assert_eq!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
                f()
            })
            .join()
            .unwrap()
        })
    }
}

impl Drop for Machines {
    fn drop(&mut self) {
        for b in &mut self.backends {
            let _ = b.kill();
            let _ = b.wait();
        }
        for r in self.roles {
            let _ = Command::new("ip").args(["netns", "del", &self.ns(r)]).status();
        }
    }
}

/// The dataplane with a pin directory of its own, cleaned up on drop.
struct TestDataplane(Option<Dataplane>);

impl TestDataplane {
    fn load() -> Self {
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/skiff-test-np-{}", std::process::id()));
        let config = Config { object: ObjectSource::Path(default_object_path()), pin_dir };
        TestDataplane(Some(Dataplane::load(&config).expect("loading the dataplane")))
    }
}

impl std::ops::Deref for TestDataplane {
    type Target = Dataplane;
    fn deref(&self) -> &Dataplane {
        self.0.as_ref().unwrap()
    }
}

impl std::ops::DerefMut for TestDataplane {
    fn deref_mut(&mut self) -> &mut Dataplane {
        self.0.as_mut().unwrap()
    }
}

impl Drop for TestDataplane {
    fn drop(&mut self) {
        if let Some(dp) = self.0.take()
            && let Err(e) = dp.cleanup()
        {
            eprintln!("dataplane cleanup: {e:#}");
        }
    }
}

fn preconditions() -> bool {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root");
        return false;
    }
    if !default_object_path().exists() {
        panic!("{} missing: run `cargo xtask build-ebpf` (cargo xtask test does)", default_object_path().display());
    }
    true
}

/// Node 1 with the program on its interfaces and backends `be-local` (pod 1) and `be-remote`
/// (pod 2, behind node 2) on port 8080.
fn cluster() -> (Machines, TestDataplane) {
    let mut m = Machines::new();
    m.backend("p1", "be-local", 8080);
    m.backend("p2", "be-remote", 8080);
    let mut dp = TestDataplane::load();
    m.inside("n1", || {
        for iface in ["n1c", "n1n2", "n1p"] {
            dp.attach_nodeport(iface).unwrap_or_else(|e| panic!("attaching to {iface}: {e:#}"));
        }
    });
    (m, dp)
}

fn by_backend(answers: &[Answer]) -> HashMap<&str, usize> {
    let mut m = HashMap::new();
    for a in answers {
        *m.entry(a.backend.as_str()).or_insert(0) += 1;
    }
    m
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn node_port_reaches_local_and_remote_backends_with_snat() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !preconditions() {
        return;
    }
    let (m, mut dp) = cluster();
    let both = [(POD1, 8080), (POD2, 8080)];
    dp.services.upsert_frontend(NODE1, 30080, Protocol::Tcp, &both, FrontendPolicy::default()).unwrap();
    dp.services.upsert_frontend(NODE1, 30080, Protocol::Udp, &both, FrontendPolicy::default()).unwrap();

    let tcp = client(&m.ns("c"), "tcp 10.251.0.1:30080 40");
    assert_eq!(tcp.len(), 40);
    let spread = by_backend(&tcp);
    assert!(spread.len() == 2, "both the local and the remote backend serve: {spread:?}");
    for a in &tcp {
        // externalTrafficPolicy: Cluster — the backend sees the node's address (SNAT), so the
        // remote backend's reply comes back through node 1.
        assert_eq!(a.seen_source, NODE1.to_string(), "{a:?}");
    }

    let udp = client(&m.ns("c"), "udp 10.251.0.1:30080 40");
    assert_eq!(udp.len(), 40);
    assert_eq!(by_backend(&udp).len(), 2, "{udp:?}");
    for a in &udp {
        assert_eq!(a.seen_source, NODE1.to_string(), "{a:?}");
        // The reply is translated back: it comes from the NodePort the client sent to.
        assert_eq!(a.from, "10.251.0.1:30080", "{a:?}");
    }
    let c = dp.services.counters(NODE1, 30080, Protocol::Tcp).unwrap().unwrap();
    assert_eq!(c.translated, 40, "one translation per TCP connection");
    // Every packet of both directions is counted: at least SYN, ACK, answer, FINs per connection.
    let p = dp.services.packet_counters(NODE1, 30080, Protocol::Tcp).unwrap().unwrap();
    assert!(p.packets >= 40 * 5, "{p:?}");
    assert!(p.bytes >= p.packets * 54, "at least Ethernet + IP + TCP headers per packet: {p:?}");
    let u = dp.services.packet_counters(NODE1, 30080, Protocol::Udp).unwrap().unwrap();
    assert_eq!(u.packets, 80, "40 requests and 40 replies: {u:?}");
}

/// A `TcpExt` counter of `/proc/net/netstat` in namespace `ns`.
fn tcp_ext(ns: &str, field: &str) -> u64 {
    let out = Command::new("ip").args(["netns", "exec", ns, "cat", "/proc/net/netstat"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let i = names.split_whitespace().position(|n| n == field).unwrap_or_else(|| panic!("no TcpExt {field}"));
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

#[test]
fn snat_keeps_the_client_port_so_reused_ports_are_not_rejected() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !preconditions() {
        return;
    }
    let (m, mut dp) = cluster();
    dp.services.upsert_frontend(NODE1, 30083, Protocol::Tcp, &[(POD2, 8080)], FrontendPolicy::default()).unwrap();
    // The backend closes first, so it keeps a TIME_WAIT socket for every tuple it served; a
    // client with 200 ports reuses each of them 10 times. Reuse of the same tuple by the same
    // client is accepted (its sequence numbers and timestamps only grow); a tuple last used by
    // another client connection is not, half the time (per-connection timestamp offsets), and
    // such a SYN waits a 1-s retransmission.
    let c = m.ns("c");
    let out = Command::new("ip")
        .args(["netns", "exec", &c, "sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40199"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let before = (tcp_ext(&m.ns("p2"), "PAWSTimewait"), tcp_ext(&c, "TCPSynRetrans"));
    let answers = client(&c, "tcp 10.251.0.1:30083 2000");
    assert_eq!(answers.len(), 2000);
    for a in &answers {
        assert_eq!((a.seen_source.as_str(), a.seen_port), (NODE1.to_string().as_str(), a.local_port), "{a:?}");
    }
    let after = (tcp_ext(&m.ns("p2"), "PAWSTimewait"), tcp_ext(&c, "TCPSynRetrans"));
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (0, 0),
        "SYNs rejected in the backend's TIME_WAIT, SYNs the client retransmitted"
    );
}

#[test]
fn snat_leaves_a_port_the_node_itself_uses() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !preconditions() {
        return;
    }
    let (m, mut dp) = cluster();
    dp.services.upsert_frontend(NODE1, 30084, Protocol::Tcp, &[(POD2, 8080)], FrontendPolicy::default()).unwrap();
    // Node 1 holds a connection of its own from its address, port 40123, to the backend.
    let mut hold = role_command(&m.ns("n1"), "hold 10.251.0.1:40123 10.252.2.2:8080")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(hold.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains(PREFIX) {
        line.clear();
        if std::io::BufRead::read_line(&mut out, &mut line).unwrap() == 0 {
            break;
        }
    }
    assert!(line.contains("ok be-remote 10.251.0.1 40123"), "node 1's own connection: {line:?}");

    // A client with the same source port: SNAT must not take the node's tuple (the backend would
    // see one tuple for two connections, and the node's packets would be captured as replies).
    let a = client(&m.ns("c"), "tcp-from 10.251.0.2:40123 10.251.0.1:30084");
    assert_eq!(a.len(), 1);
    assert_eq!((a[0].local_port, a[0].seen_source.as_str()), (40123, NODE1.to_string().as_str()));
    assert!((61000..=65535).contains(&a[0].seen_port), "a port above the ephemeral range: {a:?}");
    drop(hold.stdin.take());
    assert!(hold.wait().unwrap().success());

    // Once the node's socket is gone, the client's port is kept.
    let b = client(&m.ns("c"), "tcp-from 10.251.0.2:40124 10.251.0.1:30084");
    assert_eq!((b[0].seen_port, b[0].local_port), (40124, 40124), "{b:?}");
}

#[test]
fn external_traffic_policy_local_keeps_the_client_address() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !preconditions() {
        return;
    }
    let (m, mut dp) = cluster();
    let local = FrontendPolicy { external_local: true, ..Default::default() };
    dp.services.upsert_frontend(NODE1, 30081, Protocol::Tcp, &[(POD1, 8080)], local).unwrap();
    dp.services.upsert_frontend(NODE1, 30081, Protocol::Udp, &[(POD1, 8080)], local).unwrap();
    for a in client(&m.ns("c"), "tcp 10.251.0.1:30081 10") {
        assert_eq!((a.backend.as_str(), a.seen_source.as_str()), ("be-local", CLIENT.to_string().as_str()));
    }
    for a in client(&m.ns("c"), "udp 10.251.0.1:30081 10") {
        assert_eq!((a.backend.as_str(), a.seen_source.as_str()), ("be-local", CLIENT.to_string().as_str()));
        assert_eq!(a.from, "10.251.0.1:30081");
    }
}

#[test]
fn a_restarted_dataplane_keeps_node_ports_answering() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !preconditions() {
        return;
    }
    let (m, mut dp) = cluster();
    let both = [(POD1, 8080), (POD2, 8080)];
    dp.services.upsert_frontend(NODE1, 30082, Protocol::Tcp, &both, FrontendPolicy::default()).unwrap();
    // A client connecting continuously while the agent's dataplane goes away (as with kill -9:
    // no cleanup, pins stay) and a new one takes over the pinned maps and links.
    let load = role_command(&m.ns("c"), "tcp 10.251.0.1:30082 1000").stdout(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(150));
    let pin_dir = dp.pin_dir().to_path_buf();
    drop(dp.0.take()); // the old instance ends without cleanup
    std::thread::sleep(Duration::from_millis(100));
    let config = Config { object: ObjectSource::Path(default_object_path()), pin_dir };
    let mut next = TestDataplane(Some(Dataplane::load(&config).expect("second load")));
    m.inside("n1", || {
        for iface in ["n1c", "n1n2", "n1p"] {
            let o = next.attach_nodeport(iface).unwrap();
            assert_eq!((o.attached, o.reused), (0, 1), "the pinned link of {iface} is reused, not doubled");
        }
    });
    assert_eq!(next.services.backends(NODE1, 30082, Protocol::Tcp).map(|b| b.len()), Some(2), "recovered from pins");
    let out = load.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let results: Vec<&str> = stdout.lines().filter_map(|l| l.find(PREFIX).map(|i| &l[i + PREFIX.len()..])).collect();
    assert_eq!(results.len(), 1000);
    let failed: Vec<&&str> = results.iter().filter(|r| !r.starts_with("ok ")).collect();
    assert!(failed.is_empty(), "connections failed across the restart: {failed:?}");
}

#[test]
fn nftables_mode_node_ports_masquerade_for_cluster_and_keep_the_client_for_local() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !preconditions() {
        return;
    }
    // The same machines, node 1 running the nftables mode instead of the eBPF programs.
    let mut m = Machines::new();
    m.backend("p1", "be-local", 8080);
    m.backend("p2", "be-remote", 8080);
    let cfg = NftConfig { table: "skiff-test-np".into(), ..Default::default() };
    let mut t = m.inside("n1", || NftServiceTable::new(cfg).expect("nftables table in node 1"));
    let both = [(POD1, 8080), (POD2, 8080)];
    let cluster = FrontendPolicy { external: true, ..Default::default() };
    let local = FrontendPolicy { external: true, external_local: true, ..Default::default() };
    for proto in [Protocol::Tcp, Protocol::Udp] {
        t.upsert_frontend(NODE1, 30085, proto, &both, cluster).unwrap();
        t.upsert_frontend(NODE1, 30086, proto, &[(POD1, 8080)], local).unwrap();
    }
    // externalTrafficPolicy: Cluster — masqueraded to node 1's address toward each backend, so
    // the remote backend's replies come back through node 1.
    let node1 = ["10.251.0.1", "10.251.1.1", "10.252.1.1"];
    for role in ["tcp 10.251.0.1:30085 40", "udp 10.251.0.1:30085 40"] {
        let answers = client(&m.ns("c"), role);
        assert_eq!(answers.len(), 40);
        assert_eq!(by_backend(&answers).len(), 2, "both backends serve: {answers:?}");
        for a in &answers {
            assert!(node1.contains(&a.seen_source.as_str()), "the backend sees node 1, not the client: {a:?}");
            assert_eq!(a.from, "10.251.0.1:30085", "{a:?}");
        }
    }
    // externalTrafficPolicy: Local — the client's own address.
    for role in ["tcp 10.251.0.1:30086 10", "udp 10.251.0.1:30086 10"] {
        for a in client(&m.ns("c"), role) {
            assert_eq!((a.backend.as_str(), a.seen_source.as_str()), ("be-local", CLIENT.to_string().as_str()));
        }
    }
}

#[test]
fn xdp_bounces_hairpin_node_port_flows_on_its_own() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !preconditions() {
        return;
    }
    let mut lan = Machines::lan();
    lan.backend("p2", "be-remote", 8080);

    let mut dp = TestDataplane::load();
    let node1 = Ipv4Addr::new(10, 253, 0, 1);
    dp.services.upsert_frontend(node1, 30090, Protocol::Tcp, &[(POD2, 8080)], FrontendPolicy::default()).unwrap();
    dp.services.upsert_frontend(node1, 30090, Protocol::Udp, &[(POD2, 8080)], FrontendPolicy::default()).unwrap();
    // Only the XDP program, nothing at tc: every packet of these flows (requests in and out to
    // node 2, replies in and out to the client) must be handled by XDP alone. Generic (skb) mode:
    // native XDP_TX on a veth needs NAPI on its peer, a property of the test's wiring, not of
    // the program.
    lan.inside("n1", || {
        let o = dp.split().0.attach_nodeport_xdp("n1l", XdpMode::Skb).expect("attaching XDP");
        assert_eq!(o.attached, 1);
    });
    // XDP passes a packet whose next hop's MAC is unknown (tc, absent here, would take it): give
    // node 1 node 2's MAC, as any earlier traffic between them would have.
    let link = Command::new("ip").args(["-n", &lan.ns("n2"), "link", "show", "n2l"]).output().unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    let mac = link.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).expect("node 2's MAC").to_string();
    ip(&["-n", &lan.ns("n1"), "neigh", "replace", "10.253.0.3", "lladdr", &mac, "dev", "n1l", "nud", "permanent"]);
    for a in client(&lan.ns("c"), "tcp 10.253.0.1:30090 20") {
        assert_eq!((a.backend.as_str(), a.seen_source.as_str()), ("be-remote", "10.253.0.1"), "{a:?}");
    }
    for a in client(&lan.ns("c"), "udp 10.253.0.1:30090 20") {
        assert_eq!((a.backend.as_str(), a.seen_source.as_str()), ("be-remote", "10.253.0.1"), "{a:?}");
        assert_eq!(a.from, "10.253.0.1:30090", "{a:?}");
    }
    let p = dp.services.packet_counters(node1, 30090, Protocol::Udp).unwrap().unwrap();
    assert_eq!(p.packets, 40, "20 requests and 20 replies, each through node 1 once: {p:?}");
}
