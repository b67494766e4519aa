//! Liveness, readiness and startup probes: one task per running container that has probes,
//! keyed by container ID, so a restarted container starts with fresh results (as in Kubernetes:
//! not ready until its readiness probe succeeds; liveness and readiness wait for startup).

use crate::runtime::Runtime;
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

/// What the probes of one container instance concluded so far.
#[derive(Clone, Debug, Default)]
pub struct Results {
    /// Startup probe passed (or none).
    pub started: bool,
    /// Readiness probe passing (or none, once started).
    pub ready: bool,
    /// The liveness probe failed `failureThreshold` times: restart the container.
    pub liveness_failed: Option<String>,
    /// The last failure message, for the `Unhealthy` event.
    pub unhealthy: Option<String>,
}

pub struct Prober {
    pub results: Arc<Mutex<Results>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Initial results for a container without probes of the given kind.
pub fn initial(c: &Container) -> Results {
    let started = c.startup_probe.is_none();
    Results { started, ready: started && c.readiness_probe.is_none(), liveness_failed: None, unhealthy: None }
}

pub fn needs_prober(c: &Container) -> bool {
    c.liveness_probe.is_some() || c.readiness_probe.is_some() || c.startup_probe.is_some()
}

/// Starts probing `container_id`; `kick` wakes the pod worker whenever a result changes.
pub fn spawn(
    runtime: Arc<dyn Runtime>,
    container_id: String,
    c: Container,
    pod_ip: IpAddr,
    kick: Arc<Notify>,
) -> Prober {
    let results = Arc::new(Mutex::new(initial(&c)));
    let r = results.clone();
    let task = tokio::spawn(async move {
        let mut tracks: Vec<(Kind, Probe, Track)> = Vec::new();
        if let Some(p) = c.startup_probe.clone() {
            tracks.push((Kind::Startup, p, Track::default()));
        }
        if let Some(p) = c.liveness_probe.clone() {
            tracks.push((Kind::Liveness, p, Track::default()));
        }
        if let Some(p) = c.readiness_probe.clone() {
            tracks.push((Kind::Readiness, p, Track::default()));
        }
        let start = tokio::time::Instant::now();
        let tick = Duration::from_millis(250);
        loop {
            let now = tokio::time::Instant::now();
            let started = r.lock().unwrap().started;
            for (kind, probe, track) in tracks.iter_mut() {
                if *kind != Kind::Startup && !started {
                    continue;
                }
                if *kind == Kind::Startup && started {
                    continue;
                }
                let delay = Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0).max(0) as u64);
                let period = Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64);
                if now < start + delay || track.next.is_some_and(|n| now < n) {
                    continue;
                }
                track.next = Some(now + period);
                let outcome = run_probe(&*runtime, &container_id, &c, probe, pod_ip).await;
                let (success, fail) = (
                    probe.success_threshold.unwrap_or(1).max(1) as u32,
                    probe.failure_threshold.unwrap_or(3).max(1) as u32,
                );
                let changed = {
                    let mut res = r.lock().unwrap();
                    let before = (res.started, res.ready, res.liveness_failed.is_some());
                    match &outcome {
                        Ok(()) => {
                            track.successes += 1;
                            track.failures = 0;
                        }
                        Err(msg) => {
                            track.failures += 1;
                            track.successes = 0;
                            res.unhealthy = Some(format!("{} probe failed: {msg}", kind.name()));
                        }
                    }
                    match kind {
                        Kind::Startup if track.successes >= 1 => {
                            res.started = true;
                            res.ready = c.readiness_probe.is_none();
                        }
                        Kind::Startup if track.failures >= fail => {
                            res.liveness_failed =
                                Some(format!("Container {} failed startup probe, will be restarted", c.name));
                        }
                        Kind::Liveness if track.failures >= fail => {
                            res.liveness_failed =
                                Some(format!("Container {} failed liveness probe, will be restarted", c.name));
                        }
                        Kind::Readiness if track.successes >= success => res.ready = true,
                        Kind::Readiness if track.failures >= fail => res.ready = false,
                        _ => {}
                    }
                    before != (res.started, res.ready, res.liveness_failed.is_some()) || outcome.is_err()
                };
                if changed {
                    kick.notify_one();
                }
            }
            tokio::time::sleep(tick).await;
        }
    });
    Prober { results, task }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
}

#[derive(Default)]
struct Track {
    next: Option<tokio::time::Instant>,
    successes: u32,
    failures: u32,
}

/// A named port (`http`) resolves through the container's ports.
fn port(c: &Container, p: &IntOrString) -> Result<u16, String> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name))
            .and_then(|cp| u16::try_from(cp.container_port).ok())
            .ok_or_else(|| format!("no port named {name:?} in container {}", c.name)),
    }
}

async fn run_probe(runtime: &dyn Runtime, id: &str, c: &Container, p: &Probe, pod_ip: IpAddr) -> Result<(), String> {
    let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(e) = &p.exec {
        let cmd = e.command.clone().unwrap_or_default();
        return match runtime.exec(id, &cmd, timeout).await {
            Ok(0) => Ok(()),
            Ok(code) => Err(format!("command {cmd:?} exited with {code}")),
            Err(e) => Err(e.to_string()),
        };
    }
    if let Some(t) = &p.tcp_socket {
        let addr = SocketAddr::new(host_or(t.host.as_deref(), pod_ip), port(c, &t.port)?);
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {addr}: {e}")),
            Err(_) => Err(format!("dial tcp {addr}: i/o timeout")),
        };
    }
    if let Some(h) = &p.http_get {
        let addr = SocketAddr::new(host_or(h.host.as_deref(), pod_ip), port(c, &h.port)?);
        let path = h.path.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "/".into());
        let mut headers = String::new();
        for hd in h.http_headers.iter().flatten() {
            headers.push_str(&format!("{}: {}\r\n", hd.name, hd.value));
        }
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n{headers}\r\n"
        );
        let exchange = async {
            let mut s =
                tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("Get \"http://{addr}{path}\": {e}"))?;
            s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; 256];
            let mut n = 0;
            while n < 12 {
                let m = s.read(&mut buf[n..]).await.map_err(|e| e.to_string())?;
                if m == 0 {
                    break;
                }
                n += m;
            }
            let line = String::from_utf8_lossy(&buf[..n]).to_string();
            let code: u16 =
                line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or("malformed HTTP response")?;
            if (200..400).contains(&code) { Ok(()) } else { Err(format!("HTTP probe failed with statuscode: {code}")) }
        };
        return match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(format!("Get \"http://{addr}{path}\": context deadline exceeded")),
        };
    }
    Err("probe has no handler".into())
}

fn host_or(host: Option<&str>, pod_ip: IpAddr) -> IpAddr {
    host.and_then(|h| h.parse().ok()).unwrap_or(pod_ip)
}
