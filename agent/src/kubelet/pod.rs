//! One pod's worker: a task that, whenever kicked (watch event, probe result, one-second tick),
//! reads the pod from the cache and its containers from the runtime and takes the next step —
//! sandbox and network, then init containers in order, then app containers with the restart
//! policy's back-off — and writes the status when it changed. Deleted pods are stopped
//! gracefully, then removed from the API with grace period 0 (the kubelet's confirmation).

use super::env::{self, Refs};
use super::status::{self, ContainerView, Waiting, rfc3339};
use super::{Kubelet, probe, volumes};
use crate::runtime::{Bind, ContainerConfig, ContainerInfo, Network, PullError, State, labels};
use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Event, Pod, Secret};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

pub struct Worker {
    kick: Arc<Notify>,
    done: AtomicBool,
}

impl Worker {
    pub fn spawn(k: Arc<Kubelet>, uid: String) -> Arc<Worker> {
        let w = Arc::new(Worker { kick: Arc::new(Notify::new()), done: AtomicBool::new(false) });
        let w2 = w.clone();
        tokio::spawn(async move {
            let mut state = PodState::default();
            loop {
                if k.stopping.load(Ordering::SeqCst) {
                    break;
                }
                match sync(&k, &uid, &mut state, &w2.kick).await {
                    Ok(Step::Gone) => break,
                    Ok(Step::Continue) => {}
                    Err(e) => tracing::warn!(%uid, error = format!("{e:#}"), "pod sync failed; retrying"),
                }
                tokio::select! {
                    _ = w2.kick.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            w2.done.store(true, Ordering::SeqCst);
        });
        w
    }
    pub fn kick(&self) {
        self.kick.notify_one();
    }
    pub fn finished(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }
}

/// What a worker remembers between syncs. Losing it (agent restart) costs at most a repeated
/// event or a probe warm-up: restart counts and back-off come from container labels and times.
#[derive(Default)]
struct PodState {
    ip: Option<Ipv4Addr>,
    waiting: HashMap<String, Waiting>,
    pulls: HashMap<String, PullBackoff>,
    probers: HashMap<String, probe::Prober>,
    last_status: Option<Value>,
    events: HashMap<String, Instant>,
}

struct PullBackoff {
    failures: u32,
    last: Instant,
    message: String,
}

enum Step {
    Continue,
    Gone,
}

fn restart_policy(pod: &Pod) -> String {
    pod.spec.as_ref().and_then(|s| s.restart_policy.clone()).unwrap_or_else(|| "Always".into())
}

/// Docker names must be unique; the attempt makes each restart a new container.
fn container_name(pod: &Pod, name: &str, attempt: u32) -> String {
    let uid = pod.metadata.uid.as_deref().unwrap_or("");
    format!(
        "skiff_{name}_{}_{}_{}_{attempt}",
        pod.metadata.name.as_deref().unwrap_or(""),
        pod.metadata.namespace.as_deref().unwrap_or(""),
        &uid[..uid.len().min(8)]
    )
}

fn grace_of(pod: &Pod) -> i64 {
    pod.metadata
        .deletion_grace_period_seconds
        .or_else(|| pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
        .unwrap_or(30)
        .max(0)
}

async fn sync(k: &Arc<Kubelet>, uid: &str, st: &mut PodState, kick: &Arc<Notify>) -> Result<Step> {
    let pod = k.pods.state().into_iter().find(|p| p.metadata.uid.as_deref() == Some(uid));
    let containers = k.containers_of(uid).await?;
    let Some(pod) = pod else {
        // Gone from the API (force-deleted, or deleted while we were down).
        kill_all(k, &containers, None).await;
        k.net.detach(uid).await?;
        let _ = std::fs::remove_dir_all(volumes::pod_dir(&k.cfg.root_dir, uid));
        return Ok(Step::Gone);
    };
    if pod.metadata.deletion_timestamp.is_some() {
        terminate(k, &pod, &containers, st).await?;
        return Ok(Step::Gone);
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
    if phase == "Succeeded" || phase == "Failed" {
        // Terminal pods keep their final status; their sandbox is no longer needed.
        for c in containers.iter().filter(|c| c.state == State::Running) {
            k.runtime.stop(&c.id, Duration::from_secs(grace_of(&pod) as u64)).await?;
        }
        return Ok(Step::Continue);
    }
    let spec = pod.spec.clone().unwrap_or_default();
    let host_network = spec.host_network == Some(true);

    // 1. Sandbox and network.
    let sandboxes = status::by_name(&containers, "sandbox").remove("POD").unwrap_or_default();
    if containers.is_empty() && fast_start_possible(&spec) {
        fast_start(k, &pod, st).await?;
        kick.notify_one(); // the next pass reports the status
        return Ok(Step::Continue);
    }
    let sandbox = match sandboxes.first() {
        Some(s) if s.state == State::Running => s.clone(),
        previous => {
            let attempt = previous.map(|s| s.attempt() + 1).unwrap_or(0);
            if previous.is_some() {
                // A dead sandbox (a Docker restart, say) took the pod's network with it: stop what
                // still runs and start over in a new sandbox, as the kubelet does. The stopped
                // containers stay, so the new instances count as restarts.
                let grace = Duration::from_secs(grace_of(&pod) as u64);
                for c in containers.iter().filter(|c| c.state == State::Running) {
                    k.runtime.stop(&c.id, grace).await?;
                }
                for s in &sandboxes {
                    k.runtime.remove(&s.id).await?;
                }
                st.ip = None;
                st.probers.clear();
            }
            match start_sandbox(k, &pod, attempt, st).await {
                Ok(s) => s,
                Err(e) => {
                    let msg = format!("{e:#}");
                    event(
                        k,
                        &pod,
                        st,
                        "Warning",
                        "FailedCreatePodSandBox",
                        &format!("Failed to create pod sandbox: {msg}"),
                    )
                    .await;
                    write_status(k, &pod, st, &containers, None, false, false).await?;
                    return Err(e);
                }
            }
        }
    };
    let pod_ip = if host_network {
        k.cfg.node_ip
    } else {
        match st.ip {
            Some(ip) => ip,
            None => {
                let netns = std::path::PathBuf::from(format!("/proc/{}/ns/net", sandbox.pid));
                let ip = k.net.attach(uid, &netns, "eth0").await.context("attaching the pod to the network")?;
                st.ip = Some(ip);
                ip
            }
        }
    };

    // 2. Init containers in order, each to completion.
    let inits = status::by_name(&containers, "init");
    let mut init_done = true;
    let mut init_failed = false;
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        let instances = inits.get(&c.name).cloned().unwrap_or_default();
        match instances.first() {
            Some(x) if x.state == State::Exited && x.exit_code == 0 => continue,
            Some(x) if x.state == State::Running => {
                init_done = false;
                break;
            }
            latest => {
                init_done = false;
                if let Some(x) = latest.filter(|x| x.state != State::Running) {
                    if restart_policy(&pod) == "Never" {
                        init_failed = true;
                        break;
                    }
                    if !backoff_passed(k, x, &pod, &c.name, st) {
                        break;
                    }
                }
                let attempt = latest.map(|x| x.attempt() + 1).unwrap_or(0);
                start_container(k, &pod, c, "init", attempt, &sandbox, pod_ip, st).await;
                let _ = i;
                break;
            }
        }
    }

    // 3. App containers.
    let apps = status::by_name(&containers, "app");
    if init_done && !init_failed {
        let policy = restart_policy(&pod);
        for c in &spec.containers {
            let instances = apps.get(&c.name).cloned().unwrap_or_default();
            match instances.first() {
                None => {
                    start_container(k, &pod, c, "app", 0, &sandbox, pod_ip, st).await;
                }
                Some(x) if x.state == State::Running => {
                    st.waiting.remove(&c.name);
                    let failed = st.probers.get(&x.id).and_then(|p| p.results.lock().unwrap().liveness_failed.clone());
                    if let Some(msg) = failed {
                        let unhealthy = st
                            .probers
                            .get(&x.id)
                            .and_then(|p| p.results.lock().unwrap().unhealthy.clone())
                            .unwrap_or_default();
                        event(k, &pod, st, "Warning", "Unhealthy", &unhealthy).await;
                        event(k, &pod, st, "Normal", "Killing", &msg).await;
                        st.probers.remove(&x.id);
                        k.runtime.stop(&x.id, Duration::from_secs(grace_of(&pod) as u64)).await?;
                        kick.notify_one();
                    } else if probe::needs_prober(c) && !st.probers.contains_key(&x.id) {
                        let p =
                            probe::spawn(k.runtime.clone(), x.id.clone(), c.clone(), IpAddr::V4(pod_ip), kick.clone());
                        st.probers.insert(x.id.clone(), p);
                    }
                }
                Some(x) => {
                    let exited_ok = x.state == State::Exited && x.exit_code == 0;
                    let restart = match policy.as_str() {
                        "Never" => false,
                        "OnFailure" => !exited_ok,
                        _ => true,
                    };
                    if restart && backoff_passed(k, x, &pod, &c.name, st) {
                        start_container(k, &pod, c, "app", x.attempt() + 1, &sandbox, pod_ip, st).await;
                        // Keep the previous instance for `kubectl logs --previous`; older ones go.
                        for old in instances.iter().skip(1) {
                            k.runtime.remove(&old.id).await?;
                        }
                    }
                }
            }
        }
    }
    // Probers of instances that are no longer running are dropped (which stops them).
    let running: Vec<&str> = containers.iter().filter(|c| c.state == State::Running).map(|c| c.id.as_str()).collect();
    st.probers.retain(|id, _| running.contains(&id.as_str()));

    let containers = k.containers_of(uid).await?;
    write_status(k, &pod, st, &containers, Some(pod_ip), init_done, init_failed).await?;
    Ok(Step::Continue)
}

/// A brand-new pod whose containers need nothing from the network before they are created (no
/// init containers, no `status.podIP` in the environment, not host-network) can have its app
/// containers created while the sandbox starts, which takes most of a pod's start.
fn fast_start_possible(spec: &k8s_openapi::api::core::v1::PodSpec) -> bool {
    let needs_ip = spec.containers.iter().flat_map(|c| c.env.iter().flatten()).any(|e| {
        e.value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .is_some_and(|f| f.field_path.starts_with("status.podIP"))
    });
    spec.init_containers.as_ref().is_none_or(|i| i.is_empty()) && spec.host_network != Some(true) && !needs_ip
}

/// Sandbox created; then, at the same time, the sandbox started and wired into the network, and
/// the app containers created; then the hosts file written and the app containers started.
async fn fast_start(k: &Kubelet, pod: &Pod, st: &mut PodState) -> Result<()> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let sandbox_id = match create_sandbox(k, pod, 0).await {
        Ok(id) => id,
        Err(e) => {
            let msg = format!("Failed to create pod sandbox: {e:#}");
            event(k, pod, st, "Warning", "FailedCreatePodSandBox", &msg).await;
            return Err(e);
        }
    };
    st.ip = None;
    let spec = pod.spec.clone().unwrap_or_default();
    let network = async {
        let sandbox = run_sandbox(k, &sandbox_id).await?;
        let netns = std::path::PathBuf::from(format!("/proc/{}/ns/net", sandbox.pid));
        k.net.attach(&uid, &netns, "eth0").await.context("attaching the pod to the network")
    };
    let creates = async {
        let mut created = Vec::new();
        for c in &spec.containers {
            match create_container(k, pod, c, "app", 0, &sandbox_id, None, st).await {
                Ok(id) => {
                    st.waiting.remove(&c.name);
                    created.push((c, id));
                }
                Err(w) => {
                    st.waiting.insert(c.name.clone(), w);
                }
            }
        }
        created
    };
    let (ip, created) = tokio::join!(network, creates);
    let ip = ip?;
    st.ip = Some(ip);
    write_hosts(k, pod, ip)?;
    for (c, id) in created {
        start_created(k, pod, c, &id, st).await;
    }
    Ok(())
}

/// Crash-loop back-off: the first restart is immediate, then base × 2^(n-1) after the previous
/// instance finished, capped (Kubernetes: 10 s doubling to 5 min). Reported as CrashLoopBackOff.
fn backoff_passed(k: &Kubelet, x: &ContainerInfo, pod: &Pod, name: &str, st: &mut PodState) -> bool {
    let n = x.attempt();
    let delay = if n == 0 {
        Duration::ZERO
    } else {
        k.cfg.backoff_base.saturating_mul(1u32 << (n - 1).min(16)).min(k.cfg.backoff_max)
    };
    let finished = x.finished_at.or(x.started_at).or(x.created_at).unwrap_or_else(jiff::Timestamp::now);
    let elapsed = jiff::Timestamp::now().duration_since(finished);
    let elapsed = Duration::try_from(elapsed).unwrap_or(Duration::ZERO);
    if elapsed >= delay {
        return true;
    }
    let secs = delay.as_secs().max(1);
    let shown = if secs >= 60 { format!("{}m{}s", secs / 60, secs % 60) } else { format!("{secs}s") };
    st.waiting.insert(
        name.to_string(),
        Waiting {
            reason: "CrashLoopBackOff".into(),
            message: format!(
                "back-off {shown} restarting failed container={name} pod={}_{}({})",
                pod.metadata.name.as_deref().unwrap_or(""),
                pod.metadata.namespace.as_deref().unwrap_or(""),
                pod.metadata.uid.as_deref().unwrap_or("")
            ),
        },
    );
    false
}

fn base_labels(k: &Kubelet, pod: &Pod, name: &str, kind: &str, attempt: u32) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::MANAGED.to_string(), k.cfg.node_name.clone()),
        (labels::POD_UID.to_string(), pod.metadata.uid.clone().unwrap_or_default()),
        (labels::POD_NAME.to_string(), pod.metadata.name.clone().unwrap_or_default()),
        (labels::POD_NAMESPACE.to_string(), pod.metadata.namespace.clone().unwrap_or_default()),
        (labels::CONTAINER_NAME.to_string(), name.to_string()),
        (labels::CONTAINER_KIND.to_string(), kind.to_string()),
        (labels::ATTEMPT.to_string(), attempt.to_string()),
        (labels::GRACE.to_string(), grace_of(pod).to_string()),
    ])
}

async fn start_sandbox(k: &Kubelet, pod: &Pod, attempt: u32, st: &mut PodState) -> Result<ContainerInfo> {
    let id = create_sandbox(k, pod, attempt).await?;
    st.ip = None;
    run_sandbox(k, &id).await
}

async fn run_sandbox(k: &Kubelet, id: &str) -> Result<ContainerInfo> {
    k.runtime.start(id).await?;
    let info = k.runtime.inspect(id).await?.context("sandbox vanished after start")?;
    if info.state != State::Running || info.pid <= 0 {
        anyhow::bail!("sandbox container exited at once: {}", info.error);
    }
    Ok(info)
}

async fn create_sandbox(k: &Kubelet, pod: &Pod, attempt: u32) -> Result<String> {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let dir = volumes::pod_dir(&k.cfg.root_dir, uid);
    std::fs::create_dir_all(&dir)?;
    write_dns_files(k, pod)?;
    if !k.runtime.image_present(&k.cfg.sandbox_image).await? {
        anyhow::bail!("sandbox image {} is not present (`cargo xtask images` builds it)", k.cfg.sandbox_image);
    }
    let host_network = pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
    let cfg = ContainerConfig {
        name: container_name(pod, "POD", attempt),
        image: k.cfg.sandbox_image.clone(),
        entrypoint: None,
        cmd: None,
        env: vec![],
        working_dir: None,
        labels: base_labels(k, pod, "POD", "sandbox", attempt),
        binds: vec![],
        network: if host_network { Network::Host } else { Network::None },
        ipc_from: None,
        hostname: if host_network { None } else { Some(pod_hostname(pod)) },
        memory_limit: None,
        nano_cpus: None,
        cpu_shares: Some(2),
        tty: false,
        stdin: false,
        privileged: false,
        user: None,
    };
    Ok(k.runtime.create(&cfg).await?)
}

fn pod_hostname(pod: &Pod) -> String {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.hostname.clone()).unwrap_or_else(|| pod.metadata.name.clone().unwrap_or_default())
}

/// `/etc/resolv.conf` by `dnsPolicy` and `/etc/hosts` with the pod's own name, bind-mounted into
/// every container (Docker does not manage them for containers joined to another's network).
fn write_dns_files(k: &Kubelet, pod: &Pod) -> Result<()> {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let dir = volumes::pod_dir(&k.cfg.root_dir, uid);
    let spec = pod.spec.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let policy = spec.dns_policy.clone().unwrap_or_else(|| "ClusterFirst".into());
    let host_network = spec.host_network == Some(true);
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let d = &k.cfg.cluster_domain;
    let mut resolv = match policy.as_str() {
        "Default" => host_resolv,
        "ClusterFirstWithHostNet" | "ClusterFirst" if !(host_network && policy == "ClusterFirst") => {
            format!("search {ns}.svc.{d} svc.{d} {d}\nnameserver {}\noptions ndots:5\n", k.cfg.cluster_dns)
        }
        "None" => String::new(),
        _ => host_resolv,
    };
    if let Some(cfg) = &spec.dns_config {
        let mut lines = Vec::new();
        for ns in cfg.nameservers.iter().flatten() {
            lines.push(format!("nameserver {ns}"));
        }
        if let Some(s) = &cfg.searches {
            lines.push(format!("search {}", s.join(" ")));
        }
        let opts: Vec<String> = cfg
            .options
            .iter()
            .flatten()
            .map(|o| match &o.value {
                Some(v) => format!("{}:{v}", o.name.clone().unwrap_or_default()),
                None => o.name.clone().unwrap_or_default(),
            })
            .collect();
        if !opts.is_empty() {
            lines.push(format!("options {}", opts.join(" ")));
        }
        resolv.push_str(&lines.join("\n"));
        resolv.push('\n');
    }
    std::fs::write(dir.join("resolv.conf"), resolv)?;
    Ok(())
}

fn write_hosts(k: &Kubelet, pod: &Pod, ip: Ipv4Addr) -> Result<()> {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let dir = volumes::pod_dir(&k.cfg.root_dir, uid);
    let host = pod_hostname(pod);
    let fqdn = match pod.spec.as_ref().and_then(|s| s.subdomain.as_deref()) {
        Some(sub) => format!(
            "{host}.{sub}.{}.svc.{}\t",
            pod.metadata.namespace.as_deref().unwrap_or("default"),
            k.cfg.cluster_domain
        ),
        None => String::new(),
    };
    let mut hosts = format!(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{fqdn}{host}\n"
    );
    for a in pod.spec.as_ref().and_then(|s| s.host_aliases.as_ref()).into_iter().flatten() {
        hosts.push_str(&format!("{}\t{}\n", a.ip, a.hostnames.clone().unwrap_or_default().join("\t")));
    }
    std::fs::write(dir.join("hosts"), hosts)?;
    Ok(())
}

async fn fetch_refs(k: &Kubelet, pod: &Pod, c: &Container) -> Refs {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let (mut cms, mut secrets) = env::referenced(c);
    let (vcm, vsec) = volumes::referenced(pod);
    cms.extend(vcm.into_iter().map(|(n, _)| n));
    secrets.extend(vsec.into_iter().map(|(n, _)| n));
    let mut refs = Refs::default();
    let cm_api: Api<ConfigMap> = Api::namespaced(k.client.clone(), ns);
    let sec_api: Api<Secret> = Api::namespaced(k.client.clone(), ns);
    for n in cms {
        if let Ok(Some(cm)) = cm_api.get_opt(&n).await {
            refs.config_maps.insert(n, cm);
        }
    }
    for n in secrets {
        if let Ok(Some(s)) = sec_api.get_opt(&n).await {
            refs.secrets.insert(n, s);
        }
    }
    refs
}

/// Image pull policy: `Never` uses what is there; `IfNotPresent` pulls only when missing;
/// `Always` pulls, and — since these machines reach no registry — falls back to a present image
/// when the pull fails, with a warning event.
async fn ensure_image(k: &Kubelet, pod: &Pod, c: &Container, st: &mut PodState) -> Result<(), Waiting> {
    let image = c.image.clone().unwrap_or_default();
    let tagged = !image.rsplit('/').next().unwrap_or("").contains(':') && !image.contains('@');
    let policy =
        c.image_pull_policy.clone().unwrap_or_else(|| if tagged { "Always".into() } else { "IfNotPresent".into() });
    let present = k.runtime.image_present(&image).await.unwrap_or(false);
    match policy.as_str() {
        "Never" if present => return Ok(()),
        "Never" => {
            let msg = format!("Container image \"{image}\" is not present with pull policy of Never");
            event(k, pod, st, "Warning", "ErrImageNeverPull", &msg).await;
            return Err(Waiting { reason: "ErrImageNeverPull".into(), message: msg });
        }
        "IfNotPresent" if present => return Ok(()),
        _ => {}
    }
    if let Some(b) = st.pulls.get(&c.name) {
        let delay = k.cfg.backoff_base.saturating_mul(1u32 << (b.failures - 1).min(16)).min(k.cfg.backoff_max);
        if b.last.elapsed() < delay {
            return Err(Waiting {
                reason: "ImagePullBackOff".into(),
                message: format!("Back-off pulling image \"{image}\": {}", b.message),
            });
        }
    }
    event(k, pod, st, "Normal", "Pulling", &format!("Pulling image \"{image}\"")).await;
    let started = Instant::now();
    let result = match tokio::time::timeout(k.cfg.pull_timeout, k.runtime.pull(&image)).await {
        Ok(r) => r,
        Err(_) => Err(PullError::Failed(format!("pull timed out after {:?}", k.cfg.pull_timeout))),
    };
    match result {
        Ok(()) => {
            st.pulls.remove(&c.name);
            event(
                k,
                pod,
                st,
                "Normal",
                "Pulled",
                &format!("Successfully pulled image \"{image}\" in {:?}", started.elapsed()),
            )
            .await;
            Ok(())
        }
        Err(PullError::Failed(_)) if present => {
            event(k, pod, st, "Warning", "Pulled", &format!("Could not refresh image \"{image}\" (no registry reachable); using the image present on the machine")).await;
            Ok(())
        }
        Err(PullError::Failed(e)) => {
            let msg = format!("Failed to pull image \"{image}\": {e}");
            event(k, pod, st, "Warning", "Failed", &msg).await;
            let b = st.pulls.entry(c.name.clone()).or_insert(PullBackoff {
                failures: 0,
                last: Instant::now(),
                message: String::new(),
            });
            b.failures += 1;
            b.last = Instant::now();
            b.message = e;
            Err(Waiting { reason: "ErrImagePull".into(), message: msg })
        }
    }
}

/// Creates and starts one container; what stops it (image, configuration) is remembered as the
/// container's waiting reason.
#[allow(clippy::too_many_arguments)]
async fn start_container(
    k: &Kubelet,
    pod: &Pod,
    c: &Container,
    kind: &str,
    attempt: u32,
    sandbox: &ContainerInfo,
    pod_ip: Ipv4Addr,
    st: &mut PodState,
) {
    match create_container(k, pod, c, kind, attempt, &sandbox.id, Some(pod_ip), st).await {
        Ok(id) => {
            st.waiting.remove(&c.name);
            start_created(k, pod, c, &id, st).await;
        }
        Err(w) => {
            st.waiting.insert(c.name.clone(), w);
        }
    }
}

/// Everything up to `docker create`. Without `pod_ip` (the fast path, which creates while the
/// sandbox starts) the hosts file is written by the caller once the address is known.
#[allow(clippy::too_many_arguments)]
async fn create_container(
    k: &Kubelet,
    pod: &Pod,
    c: &Container,
    kind: &str,
    attempt: u32,
    sandbox_id: &str,
    pod_ip: Option<Ipv4Addr>,
    st: &mut PodState,
) -> Result<String, Waiting> {
    ensure_image(k, pod, c, st).await?;
    let config_error = |m: String| Waiting { reason: "CreateContainerConfigError".into(), message: m };
    let refs = fetch_refs(k, pod, c).await;
    let host_ip = k.cfg.node_ip.to_string();
    volumes::prepare(&k.cfg.root_dir, pod, &refs, &pod_ip.map(|ip| ip.to_string()).unwrap_or_default(), &host_ip)
        .map_err(config_error)?;
    if let Some(ip) = pod_ip {
        write_hosts(k, pod, ip).map_err(|e| config_error(e.to_string()))?;
    }
    let pod_ip = pod_ip.map(|ip| ip.to_string()).unwrap_or_default();
    let services: Vec<_> = k.services.state().iter().map(|s| (**s).clone()).collect();
    let env = env::container_env(pod, c, &services, &refs, &pod_ip, &host_ip, k.allocatable).map_err(config_error)?;
    let vars: HashMap<String, String> = env.iter().cloned().collect();
    let expand = |v: &Option<Vec<String>>| v.as_ref().map(|v| v.iter().map(|s| env::expand(s, &vars)).collect());
    let mut binds = volumes::binds(&k.cfg.root_dir, pod, c).map_err(config_error)?;
    let dir = volumes::pod_dir(&k.cfg.root_dir, pod.metadata.uid.as_deref().unwrap_or(""));
    let host_network = pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
    if !binds.iter().any(|b| b.container == "/etc/hosts") && !host_network {
        binds.push(Bind {
            host: dir.join("hosts").to_string_lossy().into(),
            container: "/etc/hosts".into(),
            read_only: false,
        });
    }
    if !binds.iter().any(|b| b.container == "/etc/resolv.conf") {
        binds.push(Bind {
            host: dir.join("resolv.conf").to_string_lossy().into(),
            container: "/etc/resolv.conf".into(),
            read_only: false,
        });
    }
    let res = c.resources.as_ref();
    let limit = |n: &str| res.and_then(|r| r.limits.as_ref()).and_then(|l| l.get(n)).map(|q| q.0.clone());
    let request = |n: &str| res.and_then(|r| r.requests.as_ref()).and_then(|l| l.get(n)).map(|q| q.0.clone());
    let q = skiff_apimachinery::quantity::parse_scaled;
    let sc = c.security_context.as_ref();
    let cfg = ContainerConfig {
        name: container_name(pod, &c.name, attempt),
        image: c.image.clone().unwrap_or_default(),
        entrypoint: expand(&c.command),
        cmd: expand(&c.args),
        env,
        working_dir: c.working_dir.clone().filter(|w| !w.is_empty()),
        labels: base_labels(k, pod, &c.name, kind, attempt),
        binds,
        network: if host_network { Network::Host } else { Network::Container(sandbox_id.to_string()) },
        ipc_from: Some(sandbox_id.to_string()),
        hostname: None,
        memory_limit: limit("memory").and_then(|m| q(&m, 1)),
        // A cpu limit is a CFS quota (Docker's NanoCpus is exactly that); a request is shares.
        nano_cpus: limit("cpu").and_then(|m| q(&m, 1_000_000_000)),
        cpu_shares: request("cpu").or_else(|| limit("cpu")).and_then(|m| q(&m, 1000)).map(|m| (m * 1024 / 1000).max(2)),
        tty: c.tty == Some(true),
        stdin: c.stdin == Some(true),
        privileged: sc.and_then(|s| s.privileged) == Some(true),
        user: sc.and_then(|s| s.run_as_user).map(|u| match sc.and_then(|s| s.run_as_group) {
            Some(g) => format!("{u}:{g}"),
            None => u.to_string(),
        }),
    };
    let id = match k.runtime.create(&cfg).await {
        Ok(id) => id,
        Err(e) => {
            let msg = format!("{e:#}");
            event(k, pod, st, "Warning", "Failed", &format!("Error: {msg}")).await;
            return Err(Waiting { reason: "CreateContainerError".into(), message: msg });
        }
    };
    event(k, pod, st, "Normal", "Created", &format!("Created container: {}", c.name)).await;
    Ok(id)
}

async fn start_created(k: &Kubelet, pod: &Pod, c: &Container, id: &str, st: &mut PodState) {
    let id = id.to_string();
    match k.runtime.start(&id).await {
        Ok(()) => {
            if let Some(cg) = &k.cfg.pod_cgroup {
                if let Ok(Some(info)) = k.runtime.inspect(&id).await {
                    if info.pid > 0 {
                        if let Err(e) = std::fs::write(cg.join("cgroup.procs"), info.pid.to_string()) {
                            tracing::warn!(error = %e, cgroup = %cg.display(), "moving a container into the pod cgroup");
                        }
                    }
                }
            }
            event(k, pod, st, "Normal", "Started", &format!("Started container {}", c.name)).await
        }
        // The instance stays, exited with the runtime's error: the status and back-off see it.
        Err(e) => event(k, pod, st, "Warning", "Failed", &format!("Error: {e:#}")).await,
    }
}

/// Stops every container (apps first, concurrently, with the grace period; then the sandbox)
/// and removes them.
pub async fn kill_all(k: &Kubelet, containers: &[ContainerInfo], grace: Option<Duration>) {
    let grace_of =
        |c: &ContainerInfo| grace.unwrap_or_else(|| Duration::from_secs(c.label(labels::GRACE).parse().unwrap_or(30)));
    let (sandboxes, others): (Vec<_>, Vec<_>) =
        containers.iter().partition(|c| c.label(labels::CONTAINER_KIND) == "sandbox");
    let stops = others.iter().filter(|c| c.state == State::Running).map(|c| k.runtime.stop(&c.id, grace_of(c)));
    for r in futures::future::join_all(stops).await {
        if let Err(e) = r {
            tracing::warn!(error = %e, "stopping a container");
        }
    }
    for c in others.iter().chain(sandboxes.iter()) {
        if let Err(e) = k.runtime.remove(&c.id).await {
            tracing::warn!(error = %e, container = %c.id, "removing a container");
        }
    }
}

/// Graceful deletion: containers get SIGTERM and the pod's grace period, then the pod's network
/// and directory go, then the kubelet confirms with a delete at grace period 0.
async fn terminate(k: &Kubelet, pod: &Pod, containers: &[ContainerInfo], st: &mut PodState) -> Result<()> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    st.probers.clear();
    for c in containers.iter().filter(|c| c.state == State::Running && c.label(labels::CONTAINER_KIND) != "sandbox") {
        event(k, pod, st, "Normal", "Killing", &format!("Stopping container {}", c.label(labels::CONTAINER_NAME)))
            .await;
    }
    kill_all(k, containers, Some(Duration::from_secs(grace_of(pod) as u64))).await;
    k.net.detach(&uid).await?;
    let _ = std::fs::remove_dir_all(volumes::pod_dir(&k.cfg.root_dir, &uid));
    let api: Api<Pod> = Api::namespaced(k.client.clone(), pod.metadata.namespace.as_deref().unwrap_or("default"));
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions { uid: Some(uid), resource_version: None }),
        ..Default::default()
    };
    match api.delete(pod.metadata.name.as_deref().unwrap_or(""), &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn write_status(
    k: &Kubelet,
    pod: &Pod,
    st: &mut PodState,
    containers: &[ContainerInfo],
    pod_ip: Option<Ipv4Addr>,
    init_done: bool,
    init_failed: bool,
) -> Result<()> {
    let spec = pod.spec.clone().unwrap_or_default();
    let old = serde_json::to_value(pod.status.clone().unwrap_or_default())?;
    let old_conditions: Vec<Value> = old["conditions"].as_array().cloned().unwrap_or_default();
    let now = rfc3339(jiff::Timestamp::now());
    let apps = status::by_name(containers, "app");
    let inits = status::by_name(containers, "init");
    let view = |c: &Container, groups: &HashMap<String, Vec<ContainerInfo>>| {
        let instances = groups.get(&c.name).cloned().unwrap_or_default();
        let results = instances
            .first()
            .and_then(|x| st.probers.get(&x.id).map(|p| p.results.lock().unwrap().clone()))
            .unwrap_or_else(|| probe::initial(c));
        (instances, results)
    };
    let mut statuses = Vec::new();
    for c in &spec.containers {
        let (instances, r) = view(c, &apps);
        let refs: Vec<&ContainerInfo> = instances.iter().collect();
        statuses.push(status::container_status(&ContainerView {
            name: &c.name,
            image: c.image.as_deref().unwrap_or(""),
            instances: refs,
            waiting: st.waiting.get(&c.name).filter(|_| init_done),
            ready: r.ready,
            started: r.started,
        }));
    }
    if !init_done {
        for s in statuses.iter_mut() {
            if s["state"].get("running").is_none() && s["state"].get("terminated").is_none() {
                s["state"] = json!({"waiting": {"reason": "PodInitializing"}});
            }
        }
    }
    let mut init_statuses = Vec::new();
    for c in spec.init_containers.iter().flatten() {
        let (instances, _) = view(c, &inits);
        let refs: Vec<&ContainerInfo> = instances.iter().collect();
        let done = refs.first().is_some_and(|x| x.state == State::Exited && x.exit_code == 0);
        init_statuses.push(status::container_status(&ContainerView {
            name: &c.name,
            image: c.image.as_deref().unwrap_or(""),
            instances: refs,
            waiting: st.waiting.get(&c.name),
            ready: done,
            started: false,
        }));
    }
    let policy = restart_policy(pod);
    let phase = status::phase(init_done, init_failed, &statuses, &policy);
    let all_ready = !statuses.is_empty() && statuses.iter().all(|s| s["ready"] == true);
    let sandbox_ready = pod_ip.is_some();
    let mut conditions = vec![
        status::condition(&old_conditions, "PodReadyToStartContainers", sandbox_ready, None, &now),
        status::condition(&old_conditions, "Initialized", init_done, Some("ContainersNotInitialized"), &now),
        status::condition(&old_conditions, "Ready", all_ready, Some("ContainersNotReady"), &now),
        status::condition(&old_conditions, "ContainersReady", all_ready, Some("ContainersNotReady"), &now),
    ];
    if !all_ready {
        let msg = status::unready_message(&statuses);
        conditions[2]["message"] = json!(msg);
        conditions[3]["message"] = json!(msg);
    }
    if !init_done {
        let names: Vec<&str> =
            init_statuses.iter().filter(|s| s["ready"] != true).filter_map(|s| s["name"].as_str()).collect();
        conditions[1]["message"] = json!(format!("containers with incomplete status: [{}]", names.join(" ")));
    }
    // Conditions other agents own (PodScheduled, readiness gates) are kept as they are.
    for c in &old_conditions {
        let ty = c["type"].as_str().unwrap_or("");
        if !["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady"].contains(&ty) {
            conditions.push(c.clone());
        }
    }
    let mut new = old.clone();
    new["phase"] = json!(phase);
    new["conditions"] = json!(conditions);
    new["containerStatuses"] = json!(statuses);
    if !init_statuses.is_empty() {
        new["initContainerStatuses"] = json!(init_statuses);
    }
    new["hostIP"] = json!(k.cfg.node_ip.to_string());
    new["hostIPs"] = json!([{"ip": k.cfg.node_ip.to_string()}]);
    if let Some(ip) = pod_ip {
        new["podIP"] = json!(ip.to_string());
        new["podIPs"] = json!([{"ip": ip.to_string()}]);
    }
    if new.get("startTime").is_none_or(Value::is_null) {
        new["startTime"] = json!(now);
    }
    if new.get("qosClass").is_none_or(Value::is_null) {
        new["qosClass"] = json!(skiff_apimachinery::qos::class(&serde_json::to_value(&spec)?));
    }
    if let Some(o) = new.as_object_mut() {
        o.retain(|_, v| !v.is_null());
    }
    if st.last_status.as_ref() == Some(&new) || strip_nulls(&old) == new {
        st.last_status = Some(new);
        return Ok(());
    }
    let api: Api<Pod> = Api::namespaced(k.client.clone(), pod.metadata.namespace.as_deref().unwrap_or("default"));
    api.patch_status(
        pod.metadata.name.as_deref().unwrap_or(""),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": new})),
    )
    .await
    .context("writing pod status")?;
    st.last_status = Some(new);
    Ok(())
}

fn strip_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            Value::Object(m.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), strip_nulls(v))).collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(strip_nulls).collect()),
        other => other.clone(),
    }
}

/// A core/v1 Event about the pod, deduplicated per worker (same reason and message within a
/// minute are not repeated), as `kubectl describe pod` shows them.
async fn event(k: &Kubelet, pod: &Pod, st: &mut PodState, ty: &str, reason: &str, message: &str) {
    let key = format!("{reason}/{message}");
    if st.events.get(&key).is_some_and(|t| t.elapsed() < Duration::from_secs(60)) {
        return;
    }
    st.events.insert(key, Instant::now());
    let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let now = rfc3339(jiff::Timestamp::now());
    let name = format!(
        "{}.{:x}",
        pod.metadata.name.as_deref().unwrap_or("pod"),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    );
    let ev: Event = match serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "involvedObject": {
            "kind": "Pod", "apiVersion": "v1", "namespace": ns,
            "name": pod.metadata.name, "uid": pod.metadata.uid,
            "resourceVersion": pod.metadata.resource_version,
        },
        "reason": reason,
        "message": message,
        "type": ty,
        "source": {"component": "kubelet", "host": k.cfg.node_name},
        "reportingComponent": "kubelet",
        "reportingInstance": k.cfg.node_name,
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    })) {
        Ok(e) => e,
        Err(_) => return,
    };
    // Recorded in the background: a pod's start never waits for its events.
    let api: Api<Event> = Api::namespaced(k.client.clone(), &ns);
    tokio::spawn(async move {
        if let Err(e) = api.create(&PostParams::default(), &ev).await {
            tracing::debug!(error = %e, "recording an event");
        }
    });
}

/// The instance of a container `kubectl logs` reads: the newest, or with `previous` the one before.
pub fn pick_instance<'a>(containers: &'a [ContainerInfo], name: &str, previous: bool) -> Option<&'a ContainerInfo> {
    let mut named: Vec<&ContainerInfo> = containers
        .iter()
        .filter(|c| c.label(labels::CONTAINER_NAME) == name && c.label(labels::CONTAINER_KIND) != "sandbox")
        .collect();
    named.sort_by(|a, b| b.attempt().cmp(&a.attempt()));
    named.get(usize::from(previous)).copied()
}
