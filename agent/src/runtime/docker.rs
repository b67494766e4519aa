//! [`Runtime`] on the Docker engine through `bollard`.
//!
//! Listing is what the agent does most (every pod sync reads its containers), and Docker's list
//! lacks exit codes and times, so inspections are cached per (container, state): a container is
//! inspected again only when its state changes.

use super::{ContainerConfig, ContainerInfo, LogOptions, Network, PullError, Runtime, State};
use anyhow::{Context, Result};
use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, ContainerSummaryStateEnum, ExecConfig, HostConfig,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ListContainersOptions, LogsOptions, RemoveContainerOptions,
    StopContainerOptions,
};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

pub struct DockerRuntime {
    docker: Docker,
    inspected: Mutex<HashMap<String, (State, ContainerInfo)>>,
}

impl DockerRuntime {
    /// Connects to the local engine (`DOCKER_HOST` or `/var/run/docker.sock`) and negotiates the
    /// API version, since Debian's engine (API 1.41) is older than bollard's default.
    pub async fn connect() -> Result<Self> {
        let docker = Docker::connect_with_local_defaults().context("connecting to the Docker engine")?;
        let docker = docker
            .negotiate_version()
            .await
            .context("the Docker engine does not answer (is dockerd running? `cargo xtask setup` starts it)")?;
        Ok(Self { docker, inspected: Mutex::new(HashMap::new()) })
    }
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}

fn timestamp(s: Option<&String>) -> Option<jiff::Timestamp> {
    let t: jiff::Timestamp = s?.parse().ok()?;
    // Docker reports "0001-01-01T00:00:00Z" for times that have not happened.
    (t.as_second() > 0).then_some(t)
}

fn summary_state(s: Option<&ContainerSummaryStateEnum>) -> State {
    match s {
        Some(ContainerSummaryStateEnum::RUNNING)
        | Some(ContainerSummaryStateEnum::PAUSED)
        | Some(ContainerSummaryStateEnum::RESTARTING) => State::Running,
        Some(ContainerSummaryStateEnum::CREATED) => State::Created,
        _ => State::Exited,
    }
}

/// `nginx:1.7.9` → (`nginx`, `1.7.9`); a port in the registry host is not a tag.
fn split_image(image: &str) -> (String, String) {
    if image.contains('@') {
        return (image.to_string(), String::new());
    }
    match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => (image[..i].to_string(), image[i + 1..].to_string()),
        _ => (image.to_string(), "latest".to_string()),
    }
}

#[async_trait::async_trait]
impl Runtime for DockerRuntime {
    async fn version(&self) -> Result<String> {
        let v = self.docker.version().await?;
        Ok(format!("docker://{}", v.version.unwrap_or_default()))
    }

    async fn list(&self, label: &str) -> Result<Vec<ContainerInfo>> {
        let opts = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_string(), vec![label.to_string()])])),
            ..Default::default()
        };
        let summaries = self.docker.list_containers(Some(opts)).await?;
        let mut out = Vec::with_capacity(summaries.len());
        let mut live = Vec::with_capacity(summaries.len());
        for s in summaries {
            let Some(id) = s.id else { continue };
            let state = summary_state(s.state.as_ref());
            live.push(id.clone());
            let cached = self.inspected.lock().unwrap().get(&id).filter(|(st, _)| *st == state).map(|(_, i)| i.clone());
            let info = match cached {
                Some(i) => Some(i),
                None => self.inspect(&id).await?,
            };
            out.extend(info);
        }
        self.inspected.lock().unwrap().retain(|id, _| live.contains(id));
        Ok(out)
    }

    async fn inspect(&self, id: &str) -> Result<Option<ContainerInfo>> {
        let c = match self.docker.inspect_container(id, None).await {
            Ok(c) => c,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let st = c.state.unwrap_or_default();
        let state = match st.status {
            Some(ContainerStateStatusEnum::RUNNING)
            | Some(ContainerStateStatusEnum::PAUSED)
            | Some(ContainerStateStatusEnum::RESTARTING) => State::Running,
            Some(ContainerStateStatusEnum::CREATED) => State::Created,
            _ => State::Exited,
        };
        let config = c.config.unwrap_or_default();
        let info = ContainerInfo {
            id: c.id.unwrap_or_else(|| id.to_string()),
            labels: config.labels.unwrap_or_default().into_iter().collect(),
            state,
            exit_code: st.exit_code.unwrap_or(0),
            oom_killed: st.oom_killed.unwrap_or(false),
            error: st.error.unwrap_or_default(),
            created_at: timestamp(c.created.as_ref()),
            started_at: timestamp(st.started_at.as_ref()),
            finished_at: timestamp(st.finished_at.as_ref()),
            pid: st.pid.unwrap_or(0),
            image: config.image.unwrap_or_default(),
            image_id: c.image.unwrap_or_default(),
        };
        self.inspected.lock().unwrap().insert(info.id.clone(), (state, info.clone()));
        Ok(Some(info))
    }

    async fn create(&self, cfg: &ContainerConfig) -> Result<String> {
        let network_mode = match &cfg.network {
            Network::None => "none".to_string(),
            Network::Host => "host".to_string(),
            Network::Container(id) => format!("container:{id}"),
        };
        let binds = cfg
            .binds
            .iter()
            .map(|b| format!("{}:{}:{}", b.host, b.container, if b.read_only { "ro" } else { "rw" }))
            .collect();
        let host_config = HostConfig {
            binds: Some(binds),
            network_mode: Some(network_mode),
            ipc_mode: Some(match &cfg.ipc_from {
                Some(id) => format!("container:{id}"),
                None => "shareable".to_string(),
            }),
            memory: cfg.memory_limit,
            nano_cpus: cfg.nano_cpus,
            cpu_shares: cfg.cpu_shares,
            privileged: Some(cfg.privileged),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(cfg.image.clone()),
            entrypoint: cfg.entrypoint.clone(),
            cmd: cfg.cmd.clone(),
            env: Some(cfg.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: cfg.working_dir.clone(),
            labels: Some(cfg.labels.clone().into_iter().collect()),
            // Docker refuses a hostname for a container that joins another's namespaces.
            hostname: if matches!(cfg.network, Network::Container(_)) { None } else { cfg.hostname.clone() },
            tty: Some(cfg.tty),
            open_stdin: Some(cfg.stdin),
            user: cfg.user.clone(),
            host_config: Some(host_config),
            ..Default::default()
        };
        let opts = CreateContainerOptions { name: Some(cfg.name.clone()), ..Default::default() };
        // A leftover with the same name (a create whose response was lost) is removed and retried.
        match self.docker.create_container(Some(opts.clone()), body.clone()).await {
            Ok(r) => Ok(r.id),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 409, .. }) => {
                self.remove(&cfg.name).await?;
                Ok(self.docker.create_container(Some(opts), body).await?.id)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn start(&self, id: &str) -> Result<()> {
        self.docker.start_container(id, None).await?;
        Ok(())
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        let opts = StopContainerOptions { t: Some(grace.as_secs().min(i32::MAX as u64) as i32), signal: None };
        match self.docker.stop_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            // 304: already stopped.
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn remove(&self, id: &str) -> Result<()> {
        let opts = RemoveContainerOptions { force: true, v: true, ..Default::default() };
        match self.docker.remove_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn image_present(&self, image: &str) -> Result<bool> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn pull(&self, image: &str) -> std::result::Result<(), PullError> {
        let (from_image, tag) = split_image(image);
        let opts = CreateImageOptions { from_image: Some(from_image), tag: Some(tag), ..Default::default() };
        let mut stream = self.docker.create_image(Some(opts), None, None);
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(err) = info.error_detail.and_then(|d| d.message) {
                        return Err(PullError::Failed(err));
                    }
                }
                Err(e) => return Err(PullError::Failed(docker_message(&e))),
            }
        }
        Ok(())
    }

    async fn exec(&self, id: &str, cmd: &[String], timeout: Duration) -> Result<i64> {
        let run = async {
            let exec = self
                .docker
                .create_exec(
                    id,
                    ExecConfig {
                        attach_stdout: Some(true),
                        attach_stderr: Some(true),
                        cmd: Some(cmd.to_vec()),
                        ..Default::default()
                    },
                )
                .await?;
            if let bollard::exec::StartExecResults::Attached { mut output, .. } =
                self.docker.start_exec(&exec.id, None).await?
            {
                while output.next().await.is_some() {}
            }
            let inspect = self.docker.inspect_exec(&exec.id).await?;
            Ok::<_, anyhow::Error>(inspect.exit_code.unwrap_or(-1))
        };
        tokio::time::timeout(timeout, run).await.map_err(|_| anyhow::anyhow!("command timed out after {timeout:?}"))?
    }

    fn logs(&self, id: &str, opts: &LogOptions) -> BoxStream<'static, Result<Bytes>> {
        let since = opts.since_seconds.map(|s| (jiff::Timestamp::now().as_second() - s).max(0) as i32).unwrap_or(0);
        let o = LogsOptions {
            follow: opts.follow,
            stdout: true,
            stderr: true,
            since,
            until: 0,
            timestamps: opts.timestamps,
            tail: opts.tail.map(|t| t.to_string()).unwrap_or_else(|| "all".to_string()),
        };
        self.docker.logs(id, Some(o)).map(|item| item.map(|o| o.into_bytes()).map_err(anyhow::Error::from)).boxed()
    }
}

/// The engine's own message, without bollard's wrapping.
fn docker_message(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::split_image;

    #[test]
    fn image_references_split_into_repository_and_tag() {
        assert_eq!(split_image("nginx:1.7.9"), ("nginx".into(), "1.7.9".into()));
        assert_eq!(split_image("nginx"), ("nginx".into(), "latest".into()));
        assert_eq!(split_image("localhost:5000/app"), ("localhost:5000/app".into(), "latest".into()));
        assert_eq!(split_image("localhost:5000/app:v2"), ("localhost:5000/app".into(), "v2".into()));
        assert_eq!(split_image("kubernetes/git-monitor"), ("kubernetes/git-monitor".into(), "latest".into()));
    }
}
