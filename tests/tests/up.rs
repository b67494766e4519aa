//! `skiff up` end to end with the seed's Guestbook (`examples/guestbook/`): one process runs the
//! control plane, DNS, agent and dataplane; the frontend answers on `<node address>:<nodePort>`,
//! writes to the Redis master and reads from a slave; a deleted frontend pod is replaced; scaling
//! works; `skiff down` leaves nothing behind and `skiff up` again brings the data back.
//!
//! Safety (DESIGN.md §5): the socket programs attach to a cgroup this test made, and only the
//! pods and this test's client run in it; the node address is the gateway of the test's own pod
//! bridge (10.244.199.1); the per-packet NodePort program goes only on a veth whose other end is
//! in a namespace this test made (a client "on another machine") and on the test's pod bridge
//! (`--devices`); DNS forwards only to an unused loopback port; pins go to a directory of the
//! test's own.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use skiff_tests::{skiff_bin, wait_for};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const NODE: &str = "skiff-test-up";
const NODE_IP: &str = "10.244.199.1";
const POD_CIDR: &str = "10.244.199.0/24";
const BRIDGE: &str = "sktestup";
const TABLE: &str = "skifftestup";
/// A client machine: a namespace joined to the host by a veth (host side `CLIENT_VETH`).
const CLIENT_NS: &str = "skiff-test-up-client";
const CLIENT_VETH: &str = "sktupc0";
const CLIENT_NODE_ADDR: &str = "10.250.99.1";

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The client machine's namespace and veth (10.250.99.2 there, 10.250.99.1 on the host).
fn client_machine() -> Result<()> {
    ip(&["netns", "add", CLIENT_NS])?;
    ip(&["link", "add", CLIENT_VETH, "type", "veth", "peer", "name", "c0", "netns", CLIENT_NS])?;
    ip(&["addr", "add", &format!("{CLIENT_NODE_ADDR}/30"), "dev", CLIENT_VETH])?;
    ip(&["link", "set", CLIENT_VETH, "up"])?;
    ip(&["-n", CLIENT_NS, "addr", "add", "10.250.99.2/30", "dev", "c0"])?;
    ip(&["-n", CLIENT_NS, "link", "set", "c0", "up"])?;
    ip(&["-n", CLIENT_NS, "link", "set", "lo", "up"])
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Up {
    child: Option<Child>,
    dir: tempfile::TempDir,
    cgroup: PathBuf,
    pins: PathBuf,
    args: Vec<String>,
}

/// The cluster DNS's upstream in this test (never the machine's resolver): a loopback server
/// that answers NXDOMAIN to everything, as the root does for a single-label name like
/// `redis-master.` (the last step of a pod's search-path walk for the AAAA record).
fn nxdomain_upstream() -> Result<std::net::SocketAddr> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let addr = sock.local_addr()?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = sock.recv_from(&mut buf) {
            if n < 12 {
                continue;
            }
            // The query's id, opcode, RD and question; QR, RA, rcode 3; no records.
            let mut r = buf[..n].to_vec();
            r[2] = 0x80 | (buf[2] & 0x79);
            r[3] = 0x80 | 3;
            r[6..12].fill(0);
            // Drop an EDNS OPT record (after the question) by cutting at the question's end.
            let mut i = 12;
            while i < n && buf[i] != 0 {
                i += 1 + buf[i] as usize;
            }
            r.truncate((i + 5).min(n));
            let _ = sock.send_to(&r, peer);
        }
    });
    Ok(addr)
}

impl Up {
    fn new() -> Result<Up> {
        let dir = tempfile::tempdir()?;
        let cgroup = PathBuf::from(format!("/sys/fs/cgroup/unified/skiff-test-up-{}", std::process::id()));
        std::fs::create_dir_all(&cgroup)?;
        let pins = PathBuf::from(format!("/sys/fs/bpf/skiff-test-up-{}", std::process::id()));
        let p = |n: u16| n.to_string();
        let args = vec![
            "up".into(),
            "--data-dir".into(),
            dir.path().to_string_lossy().into_owned(),
            "--listen".into(),
            format!("127.0.0.1:{}", free_port()),
            "--node-name".into(),
            NODE.into(),
            "--node-ip".into(),
            NODE_IP.into(),
            "--pod-cidr".into(),
            POD_CIDR.into(),
            "--devices".into(),
            CLIENT_VETH.into(),
            "--cgroup".into(),
            cgroup.to_string_lossy().into_owned(),
            "--bpf-pin-dir".into(),
            pins.to_string_lossy().into_owned(),
            "--dns-upstream".into(),
            nxdomain_upstream()?.to_string(),
            "--dns-port".into(),
            p(free_port()),
            "--agent-port".into(),
            p(free_port()),
            "--proxy-metrics".into(),
            format!("127.0.0.1:{}", free_port()),
            "--dns-metrics".into(),
            format!("127.0.0.1:{}", free_port()),
            "--bridge".into(),
            BRIDGE.into(),
            "--nft-table".into(),
            TABLE.into(),
        ];
        let mut up = Up { child: None, dir, cgroup, pins, args };
        up.leftovers_removed();
        client_machine()?;
        Ok(up)
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("up.log")).unwrap_or_default()
    }

    /// Starts `skiff up` and waits for its summary (node Ready, kube-dns answering).
    fn start(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("up.log"))?;
        let child = Command::new(skiff_bin())
            .args(&self.args)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("skiff up")?;
        self.child = Some(child);
        wait_for(Duration::from_secs(90), "skiff up to report the cluster up", || {
            if let Some(Some(st)) = self.child.as_mut().map(|c| c.try_wait().ok().flatten()) {
                panic!("skiff up exited with {st}:\n{}", self.log());
            }
            self.log().contains("Skiff is up").then_some(())
        })
        .map_err(|e| anyhow::anyhow!("{e}\n{}", self.log()))
    }

    fn down(&mut self) -> Result<()> {
        let out = Command::new(skiff_bin()).args(["down", "--data-dir"]).arg(self.dir.path()).output()?;
        if !out.status.success() {
            bail!("skiff down failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        if let Some(mut c) = self.child.take() {
            c.wait()?;
        }
        Ok(())
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let out = Command::new("/usr/bin/kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--cache-dir")
            .arg(self.dir.path().join("kube-cache"))
            .args(args)
            .output()
            .expect("kubectl runs");
        assert!(out.status.success(), "kubectl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// An HTTP GET to the node address from a client in the test's cgroup (the socket programs
    /// translate NodePorts there), with busybox nc.
    fn get(&self, port: u16, path: &str) -> Option<String> {
        let script = format!(
            "echo $$ > {}/cgroup.procs && printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | exec /bin/busybox nc -w 5 {NODE_IP} {port}",
            self.cgroup.display()
        );
        let out = Command::new("sh").args(["-c", &script]).stderr(Stdio::null()).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_string())
    }

    /// The whole answer (or nc's complaint), for messages.
    fn raw_get(&self, port: u16, path: &str) -> String {
        let script = format!(
            "echo $$ > {}/cgroup.procs && printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | exec /bin/busybox nc -w 5 {NODE_IP} {port}",
            self.cgroup.display()
        );
        let out = Command::new("sh").args(["-c", &script]).output().expect("sh runs");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// An HTTP GET from the client machine to the node's address on its link: packets that
    /// never passed a socket hook here, translated by the per-packet NodePort program.
    fn remote_get(&self, port: u16, path: &str) -> String {
        let script =
            format!("printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | exec /bin/busybox nc -w 5 {CLIENT_NODE_ADDR} {port}");
        let out =
            Command::new("ip").args(["netns", "exec", CLIENT_NS, "sh", "-c", &script]).output().expect("ip netns exec");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    fn guestbook(&self, port: u16, query: &str) -> Option<Value> {
        serde_json::from_str(&self.get(port, &format!("/guestbook.php?{query}"))?).ok()
    }

    /// Everything a run may leave on the machine, removed; returns what was found.
    fn leftovers_removed(&mut self) -> Vec<String> {
        let mut found = Vec::new();
        let containers = Command::new("docker")
            .args(["ps", "-aq", "--filter", &format!("label=io.skiff.node={NODE}")])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .unwrap_or_default();
        if !containers.is_empty() {
            found.push(format!("{} containers", containers.len()));
            let _ = Command::new("docker").args(["rm", "-f"]).args(&containers).stdout(Stdio::null()).status();
        }
        if Path::new(&format!("/sys/class/net/{BRIDGE}")).exists() {
            found.push(format!("bridge {BRIDGE}"));
        }
        let tables = Command::new("nft").args(["list", "tables"]).output().map(|o| o.stdout).unwrap_or_default();
        if String::from_utf8_lossy(&tables).contains(TABLE) {
            found.push(format!("nft table {TABLE}"));
        }
        let _ = Command::new(skiff_bin())
            .args(["agent-cleanup", "--bridge", BRIDGE, "--nft-table", TABLE, "--pod-cidr", POD_CIDR])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if self.pins.exists() {
            found.push(format!("pins {}", self.pins.display()));
            let _ = std::fs::remove_dir_all(&self.pins);
        }
        // The test's own client machine (not Skiff's; removed quietly).
        let _ = Command::new("ip").args(["netns", "del", CLIENT_NS]).stderr(Stdio::null()).status();
        let _ = Command::new("ip").args(["link", "del", CLIENT_VETH]).stderr(Stdio::null()).status();
        found
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.down();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.leftovers_removed();
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/guestbook")
}

/// Pod IPs of the running, not terminating pods matching `selector`.
fn pod_ips(up: &Up, selector: &str) -> Vec<String> {
    let pods: Value = serde_json::from_str(&up.kubectl(&["get", "pods", "-l", selector, "-o", "json"])).unwrap();
    pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|p| p["status"]["podIP"].as_str().map(str::to_string))
        .collect()
}

/// `GET key` from the Redis server at `ip` (the host reaches pods directly), in RESP.
fn redis_get(ip: &str, key: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect_timeout(&format!("{ip}:6379").parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).as_bytes()).ok()?;
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).ok()?;
    // "$<len>\r\n<value>\r\n", or "$-1\r\n" for a missing key.
    let reply = std::str::from_utf8(&buf[..n]).ok()?;
    let (len, rest) = reply.strip_prefix('$')?.split_once("\r\n")?;
    let len: usize = len.parse().ok()?;
    rest.get(..len).map(str::to_string)
}

fn running_pods(up: &Up, selector: &str) -> usize {
    let pods: Value = serde_json::from_str(&up.kubectl(&["get", "pods", "-l", selector, "-o", "json"])).unwrap();
    pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p["metadata"]["deletionTimestamp"].is_null()
                && p["status"]["conditions"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        })
        .count()
}

#[test]
fn guestbook_on_skiff_up_survives_pod_loss_scaling_and_down_up() -> Result<()> {
    let mut up = Up::new()?;
    up.start()?;
    let nodes = up.kubectl(&["get", "nodes", "-o", "wide"]);
    assert!(nodes.lines().any(|l| l.starts_with(NODE) && l.contains(" Ready ")), "{nodes}");
    let status = Command::new(skiff_bin()).args(["status", "--data-dir"]).arg(up.dir.path()).output()?;
    let status_text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{status_text}");
    for c in ["api-server", "agent", "dataplane", "dns"] {
        assert!(status_text.lines().any(|l| l.contains(c) && l.contains("healthy")), "{status_text}");
    }

    up.kubectl(&["create", "-f", examples().to_str().unwrap()]);
    let port: u16 =
        up.kubectl(&["get", "svc", "frontend", "-o", "jsonpath={.spec.ports[0].nodePort}"]).trim().parse()?;
    wait_for(Duration::from_secs(120), "guestbook pods ready", || {
        (running_pods(&up, "name=frontend") == 3
            && running_pods(&up, "name=redis-slave") == 2
            && running_pods(&up, "name=redis-master") == 1)
            .then_some(())
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}\n{}", up.kubectl(&["get", "pods", "-o", "wide"]), up.log()))?;

    // Written to the master, read back from a slave (replication takes a moment).
    let page = wait_for(Duration::from_secs(30), "the frontend page", || up.get(port, "/"))?;
    assert!(page.contains("Guestbook"), "{page}");
    let set = wait_for(Duration::from_secs(60), "a write through the frontend", || {
        up.guestbook(port, "cmd=set&key=messages&value=hello,skiff")
    })?;
    assert_eq!(set["message"], "Updated");
    // Both slaves must have replicated it, asked one by one on their pod IPs (reads through the
    // frontend pick a slave at random, so a run of lucky reads could hide one that lags).
    wait_for(Duration::from_secs(90), "the entry replicated to every slave", || {
        let ips = pod_ips(&up, "name=redis-slave");
        (ips.len() == 2 && ips.iter().all(|ip| redis_get(ip, "messages").as_deref() == Some("hello,skiff")))
            .then_some(())
    })?;
    assert_eq!(up.guestbook(port, "cmd=get&key=messages").map(|v| v["data"].clone()), Some("hello,skiff".into()));
    // From another machine, through the per-packet NodePort program (SNAT to the node address,
    // the pod's reply translated back as it enters from the pod bridge). Every frontend pod
    // serves, so a few requests in a row exercise different backends.
    for i in 0..6 {
        let got = up.remote_get(port, "/guestbook.php?cmd=get&key=messages");
        assert!(got.contains("hello,skiff"), "request {i} from the client machine: {got:?}");
    }

    // A frontend pod deleted: replaced, and the NodePort keeps answering.
    let victim = up.kubectl(&["get", "pods", "-l", "name=frontend", "-o", "jsonpath={.items[0].metadata.name}"]);
    up.kubectl(&["delete", "pod", victim.trim(), "--wait=false"]);
    for i in 0..10 {
        let got = up.raw_get(port, "/guestbook.php?cmd=get&key=messages");
        assert!(got.contains("hello,skiff"), "request {i} while a frontend pod terminates: {got:?}");
    }
    wait_for(Duration::from_secs(60), "3 frontends again", || (running_pods(&up, "name=frontend") == 3).then_some(()))?;

    // Scaled to 5: all serving (each frontend pod answers directly on its pod IP too).
    up.kubectl(&["scale", "rc", "frontend", "--replicas=5"]);
    wait_for(Duration::from_secs(60), "5 frontends", || (running_pods(&up, "name=frontend") == 5).then_some(()))?;
    let pods: Value = serde_json::from_str(&up.kubectl(&["get", "pods", "-l", "name=frontend", "-o", "json"]))?;
    for p in pods["items"].as_array().unwrap().iter().filter(|p| p["metadata"]["deletionTimestamp"].is_null()) {
        let ip = p["status"]["podIP"].as_str().unwrap();
        let mut s = std::net::TcpStream::connect((ip, 80))?;
        use std::io::{Read, Write};
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /guestbook.php?cmd=get&key=messages HTTP/1.0\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        assert!(out.contains("hello,skiff"), "pod {ip}: {out}");
    }

    // GET_HOST_FROM=dns works as well as env.
    up.kubectl(&["set", "env", "rc/frontend", "GET_HOST_FROM=dns"]);
    let names: Vec<String> = up
        .kubectl(&["get", "pods", "-l", "name=frontend", "-o", "jsonpath={.items[*].metadata.name}"])
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let mut args = vec!["delete", "pod", "--wait=false"];
    args.extend(names.iter().map(String::as_str));
    up.kubectl(&args);
    wait_for(Duration::from_secs(90), "frontends with GET_HOST_FROM=dns serving", || {
        let pods: Value =
            serde_json::from_str(&up.kubectl(&["get", "pods", "-l", "name=frontend", "-o", "json"])).ok()?;
        let fresh =
            pods["items"].as_array()?.iter().all(|p| !names.iter().any(|n| p["metadata"]["name"] == n.as_str()));
        (fresh && running_pods(&up, "name=frontend") == 5).then_some(())
    })?;
    let env = up.kubectl(&[
        "get",
        "pods",
        "-l",
        "name=frontend",
        "-o",
        "jsonpath={.items[0].spec.containers[0].env[0].value}",
    ]);
    assert_eq!(env, "dns");
    wait_for(Duration::from_secs(30), "read through DNS names", || {
        up.guestbook(port, "cmd=get&key=messages").filter(|v| v["data"] == "hello,skiff")
    })?;
    // Inside a pod, glibc's resolver (`getent`, in the redis image) finds a Service by its short
    // name through the search path with ndots:5 — the node's DNS via kube-dns at the socket —
    // and by the seed's `<svc>.<ns>.<domain>` form.
    let master_ip = up.kubectl(&["get", "svc", "redis-master", "-o", "jsonpath={.spec.clusterIP}"]);
    let redis = Command::new("docker")
        .args(["ps", "-q", "--filter", &format!("label=io.skiff.node={NODE}"), "--filter", "ancestor=redis:latest"])
        .output()?;
    let redis = String::from_utf8_lossy(&redis.stdout).lines().next().unwrap_or_default().to_string();
    assert!(!redis.is_empty(), "no redis container running");
    // As `kubectl exec` would run it: in the container's namespaces and its pod's cgroup (where
    // the socket programs translate 10.96.0.10). A plain `docker exec` process stays in Docker's
    // own cgroup on this hybrid-cgroup host, outside the pod's, so it is entered by hand.
    let pid = Command::new("docker").args(["inspect", "-f", "{{.State.Pid}}", &redis]).output()?;
    let pid = String::from_utf8_lossy(&pid.stdout).trim().to_string();
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        .context("the redis container's cgroup v2 path")?;
    for name in ["redis-master", "redis-master.default.cluster.local"] {
        let script = format!(
            "echo $$ > /sys/fs/cgroup/unified{cgroup}/cgroup.procs && exec nsenter -t {pid} -n -m getent hosts {name}"
        );
        let out = Command::new("sh").args(["-c", &script]).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.starts_with(&format!("{} ", master_ip.trim())),
            "getent hosts {name} in a pod: {text:?} {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // skiff down: nothing left behind.
    up.down()?;
    let left = up.leftovers_removed();
    assert!(left.is_empty(), "skiff down left behind: {left:?}\n{}", up.log());
    let route = Command::new("ip").args(["route", "show", POD_CIDR]).output()?;
    assert!(String::from_utf8_lossy(&route.stdout).trim().is_empty(), "pod route left behind");

    // skiff up again: the Guestbook comes back with its data.
    up.start()?;
    wait_for(Duration::from_secs(120), "the entry after down and up", || {
        up.guestbook(port, "cmd=get&key=messages").filter(|v| v["data"] == "hello,skiff")
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}\n{}", up.kubectl(&["get", "pods", "-o", "wide"]), up.log()))?;
    up.down()?;
    Ok(())
}
