//! Helpers shared by the end-to-end suites: start a real `skiff` process, talk to it with the
//! real `kubectl` and kube-rs, and clean up even when a test fails.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `skiff` binary under test: `SKIFF_BIN` (set by `cargo xtask test`) or the debug build.
pub fn skiff_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SKIFF_BIN") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/skiff")
}

/// The seed's manifests (`tests/fixtures/seed/`).
pub fn seed(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/seed").join(name)
}

/// A `skiff control` process on a free loopback port with its own data directory.
/// Killed (SIGKILL) and its directory removed on drop.
pub struct Control {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub server: String,
    extra_args: Vec<String>,
}

impl Control {
    pub fn start() -> Result<Control> {
        Self::start_with(&[])
    }

    /// The API server alone, without the scheduler and controllers (for tests of API semantics
    /// that must not see other writers), plus `args`.
    pub fn start_api_only(args: &[&str]) -> Result<Control> {
        let mut all = vec!["--controllers=", "--disable-scheduler"];
        all.extend_from_slice(args);
        Self::start_with(&all)
    }

    /// Starts with extra `skiff control` arguments (e.g. `--store etcd --etcd-endpoints ...`).
    pub fn start_with(args: &[&str]) -> Result<Control> {
        let dir = tempfile::tempdir()?;
        let mut c = Control {
            child: None,
            kubeconfig: dir.path().join("kubeconfig"),
            dir,
            server: String::new(),
            extra_args: args.iter().map(|s| s.to_string()).collect(),
        };
        c.spawn("127.0.0.1:0")?;
        Ok(c)
    }

    fn spawn(&mut self, listen: &str) -> Result<()> {
        let _ = std::fs::remove_file(&self.kubeconfig);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("skiff.log"))?;
        let child = Command::new(skiff_bin())
            .args(["control", "--data-dir"])
            .arg(self.dir.path())
            .args(["--listen", listen])
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", skiff_bin().display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&self.kubeconfig) {
                if let Some(line) = text.lines().find(|l| l.trim_start().starts_with("server:")) {
                    self.server = line.trim().trim_start_matches("server:").trim().to_string();
                    if self.kubectl(&["get", "--raw", "/readyz"]).status.success() {
                        return Ok(());
                    }
                }
            }
            if let Some(Some(status)) = self.child.as_mut().map(|c| c.try_wait().ok().flatten()) {
                bail!("skiff control exited early with {status}; log:\n{}", self.log());
            }
            if Instant::now() > deadline {
                bail!("skiff control did not become ready in 30 s; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the process with SIGKILL and starts it again on the same port and data directory.
    pub fn kill_and_restart(&mut self) -> Result<()> {
        self.kill();
        let listen = self.server.trim_start_matches("https://").to_string();
        self.spawn(&listen)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("skiff.log")).unwrap_or_default()
    }

    /// Runs the real kubectl against this server with a fresh cache directory.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_stdin(args, None)
    }

    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut cmd = Command::new("/usr/bin/kubectl");
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.path().join("kube-cache"))
            .args(args);
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("kubectl must be installed at /usr/bin/kubectl");
        if let Some(input) = stdin {
            let _ = child.stdin.take().expect("piped").write_all(input.as_bytes());
        }
        child.wait_with_output().expect("kubectl runs")
    }

    /// kubectl that must succeed; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {} failed: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// kubectl that must fail; returns stderr.
    pub fn kubectl_err(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            !out.status.success(),
            "kubectl {} unexpectedly succeeded: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// A kube-rs client from the kubeconfig.
    pub async fn client(&self) -> Result<kube::Client> {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        Ok(kube::Client::try_from(cfg)?)
    }

    /// The admin bearer token (for raw HTTP tests).
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pki/admin.token")).unwrap_or_default().trim().to_string()
    }

    /// The CA certificate (PEM) (for raw HTTP tests).
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pki/ca.crt")).unwrap_or_default()
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `skiff agent` process for one test: its own node name, bridge, pod CIDR, nftables table,
/// root directory and port, so suites can run side by side. On drop it is killed and everything
/// it made on the machine is removed: containers (by the node label), the bridge, the table.
pub struct Agent {
    child: Option<Child>,
    pub node: String,
    pub bridge: String,
    pub pod_cidr: String,
    pub nft_table: String,
    pub root: PathBuf,
    pub port: u16,
    kubeconfig: PathBuf,
    log: PathBuf,
    extra: Vec<String>,
}

impl Agent {
    /// `index` (0–99) picks the pod CIDR `10.244.(200+index).0/24` and the names; tests in one
    /// binary use different indexes.
    pub fn start(control: &Control, index: u8, extra: &[&str]) -> Result<Agent> {
        let node = format!("skiff-test-{index}");
        let root = control.dir.path().join(format!("agent-{index}"));
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.port()
        };
        let mut a = Agent {
            child: None,
            node: node.clone(),
            bridge: format!("sktest{index}"),
            pod_cidr: format!("10.244.{}.0/24", 200 + index as u16),
            nft_table: format!("skifftest{index}"),
            root,
            port,
            kubeconfig: control.kubeconfig.clone(),
            log: control.dir.path().join(format!("agent-{index}.log")),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        a.cleanup();
        a.spawn()?;
        Ok(a)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new(skiff_bin())
            .arg("agent")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--node-name", &self.node, "--node-ip", "127.0.0.1", "--proxy-mode", "none"])
            .args(["--bridge", &self.bridge, "--pod-cidr", &self.pod_cidr, "--nft-table", &self.nft_table])
            .arg("--root-dir")
            .arg(&self.root)
            .args(["--port", &self.port.to_string()])
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} agent", skiff_bin().display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, as an operator's `kill -9`; containers keep running.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// IDs of this agent's containers (any state) for a pod name.
    pub fn containers_of(&self, pod: &str) -> Vec<String> {
        let out = Command::new("docker")
            .args(["ps", "-aq", "--no-trunc", "--filter"])
            .arg(format!("label=io.skiff.node={}", self.node))
            .arg("--filter")
            .arg(format!("label=io.skiff.pod.name={pod}"))
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect()).unwrap_or_default()
    }

    fn cleanup(&self) {
        let ids = Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label=io.skiff.node={}", self.node))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .unwrap_or_default();
        if !ids.is_empty() {
            let _ = Command::new("docker").args(["rm", "-f", "-v"]).args(&ids).stdout(Stdio::null()).status();
        }
        let _ = Command::new(skiff_bin())
            .args([
                "agent-cleanup",
                "--bridge",
                &self.bridge,
                "--nft-table",
                &self.nft_table,
                "--pod-cidr",
                &self.pod_cidr,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        self.cleanup();
    }
}

/// Polls `f` every 200 ms until it returns `Some`, or fails after `timeout` with `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn is_zombie(pid: &str) -> bool {
    // /proc/<pid>/stat is "pid (comm) state ..."; comm may hold spaces, so read after the last ')'.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(true)
}

/// Stops the Docker daemon (SIGTERM; it stops its containers), waits until it is gone, and starts
/// it again detached the way `cargo xtask setup` does, waiting until it answers. Only for a test
/// binary of its own: cargo runs test binaries one at a time, so no other suite sees the gap.
pub fn restart_dockerd() -> Result<()> {
    // Live processes only: a dockerd that exited but whose parent (the `cargo xtask` that started
    // it) has not reaped it yet is a zombie, and `pgrep` would still list it.
    let pids = |name: &str| {
        Command::new("pgrep").args(["-x", name]).output().map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter(|pid| !is_zombie(pid))
                .collect::<Vec<_>>()
                .join(" ")
        })
    };
    let before = pids("dockerd")?;
    if before.is_empty() {
        bail!("dockerd is not running");
    }
    Command::new("kill").arg("-TERM").args(before.split_whitespace()).status()?;
    wait_for(Duration::from_secs(60), "dockerd to exit", || pids("dockerd").ok().filter(|p| p.is_empty()))?;
    let log = std::fs::OpenOptions::new().create(true).append(true).open("/var/log/skiff-dockerd.log")?;
    let mut cmd = Command::new("setsid");
    cmd.arg("dockerd").stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    // As xtask does: the daemon outlives this test, so it must not hold the descriptors the test
    // inherited without close-on-exec (a `flock` wrapper's lock, the runner's pipes).
    use std::os::unix::process::CommandExt;
    // SAFETY: one async-signal-safe syscall between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as i32);
            Ok(())
        })
    };
    cmd.spawn()?;
    wait_for(Duration::from_secs(60), "dockerd to answer", || {
        Command::new("docker")
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()
            .filter(|s| s.success())
    })?;
    Ok(())
}

/// Where cgroup v2 is mounted on these hybrid-mode machines. Tests and benchmarks attach socket
/// programs only to children of it that they made, never to the root.
pub const CGROUP2_ROOT: &str = "/sys/fs/cgroup/unified";

/// A cgroup v2 directory of the caller's own, a direct child of [`CGROUP2_ROOT`], removed on
/// drop (retrying while the kernel still counts its exited processes).
pub struct OwnCgroup(pub PathBuf);

impl OwnCgroup {
    /// Creates `CGROUP2_ROOT/<name>`.
    pub fn create(name: &str) -> Result<Self> {
        let root = Path::new(CGROUP2_ROOT);
        let p = root.join(name);
        anyhow::ensure!(p.parent() == Some(root) && p != root, "{name:?} is not a child cgroup name");
        std::fs::create_dir(&p).with_context(|| format!("creating cgroup {}", p.display()))?;
        Ok(OwnCgroup(p))
    }
}

impl Drop for OwnCgroup {
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
