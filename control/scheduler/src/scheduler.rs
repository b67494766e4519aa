//! The scheduler's event loop: watch events update the cache and queue; pods are taken from the
//! queue one cycle at a time, assumed onto the chosen node at once, and bound concurrently.

use crate::SchedulerConfig;
use crate::algorithm::{Algorithm, Profile};
use crate::cache::Cache;
use crate::events::{Record, Recorder, has_unschedulable_condition};
use crate::info::PodInfo;
use crate::plugins::Registry;
use crate::queue::Queue;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

enum Msg {
    Node(Event<Node>),
    Pod(Event<Pod>),
}

struct BindOutcome {
    info: Arc<PodInfo>,
    node: String,
    result: Result<(), kube::Error>,
}

struct State {
    name: String,
    profile: Profile,
    algorithm: Algorithm,
    cache: Cache,
    queue: Queue,
    recorder: Recorder,
    nodes_synced: bool,
    pods_synced: bool,
    /// Keys seen since the watch's last `Init`, to drop what a relist no longer shows.
    node_relist: Option<HashSet<String>>,
    pod_relist: Option<HashSet<String>>,
}

/// Runs the scheduler with the plug-ins of `registry` until cancelled (drop the future) or a
/// watch fails for good.
pub async fn run_with(client: Client, config: SchedulerConfig, registry: Registry) -> anyhow::Result<()> {
    let profile = Profile::new(&registry, &config.filters, &config.scores, config.percentage_of_nodes_to_score)?;
    let max_in_flight = config.max_bindings_in_flight.max(1);
    let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
    let (tx, mut rx) = mpsc::channel::<Msg>(4096);
    {
        let api = Api::<Node>::all(client.clone());
        tasks.spawn(forward(
            watcher::watcher(api, watcher::Config::default()).default_backoff(),
            tx.clone(),
            Msg::Node,
            "nodes",
        ));
        let api = Api::<Pod>::all(client.clone());
        tasks.spawn(forward(watcher::watcher(api, watcher::Config::default()).default_backoff(), tx, Msg::Pod, "pods"));
    }
    let recorder = Recorder::spawn(&mut tasks, client.clone(), config.scheduler_name.clone());
    let mut st = State {
        name: config.scheduler_name.clone(),
        profile,
        algorithm: Algorithm::new(),
        cache: Cache::default(),
        queue: Queue::default(),
        recorder,
        nodes_synced: false,
        pods_synced: false,
        node_relist: None,
        pod_relist: None,
    };
    let mut binds: JoinSet<BindOutcome> = JoinSet::new();
    tracing::info!(scheduler = %st.name, "scheduler started");
    loop {
        // Everything the watches and binders have to say first, so each cycle sees fresh state.
        for _ in 0..8192 {
            match rx.try_recv() {
                Ok(m) => st.handle(m),
                Err(_) => break,
            }
        }
        while let Some(r) = binds.try_join_next() {
            if let Ok(outcome) = r {
                st.bind_done(outcome);
            }
        }
        let now = Instant::now();
        let events = st.cache.take_events();
        st.queue.move_unschedulable(events, now);
        st.queue.flush(now);

        if st.nodes_synced && st.pods_synced {
            for _ in 0..64 {
                if binds.len() >= max_in_flight {
                    break;
                }
                let Some(info) = st.queue.pop() else { break };
                if let Some((node, info)) = st.schedule_one(info) {
                    binds.spawn(bind(client.clone(), st.recorder.clone(), info, node));
                }
            }
            if st.queue.has_active() && binds.len() < max_in_flight {
                tokio::task::yield_now().await;
                continue;
            }
        }

        let deadline = st.queue.next_deadline().unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            m = rx.recv() => match m {
                Some(m) => st.handle(m),
                None => anyhow::bail!("scheduler watches ended"),
            },
            Some(r) = binds.join_next(), if !binds.is_empty() => {
                if let Ok(outcome) = r {
                    st.bind_done(outcome);
                }
            }
            Some(r) = tasks.join_next() => {
                return match r {
                    Ok(Ok(())) => Err(anyhow::anyhow!("scheduler task ended")),
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(e.into()),
                };
            }
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
    }
}

async fn forward<K, S>(
    stream: S,
    tx: mpsc::Sender<Msg>,
    wrap: fn(Event<K>) -> Msg,
    what: &'static str,
) -> anyhow::Result<()>
where
    S: futures::Stream<Item = Result<Event<K>, watcher::Error>> + Send,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(ev) => {
                if tx.send(wrap(ev)).await.is_err() {
                    return Ok(());
                }
            }
            Err(e) => tracing::warn!("scheduler watch of {what}: {e}"),
        }
    }
    anyhow::bail!("watch of {what} ended")
}

async fn bind(client: Client, recorder: Recorder, info: Arc<PodInfo>, node: String) -> BindOutcome {
    let api: Api<Pod> = Api::namespaced(client, info.namespace());
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(info.name().to_string()),
            namespace: Some(info.namespace().to_string()),
            uid: Some(info.uid.clone()),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.clone()),
            ..Default::default()
        },
    };
    let result = api
        .create_subresource::<_, serde_json::Value>("binding", info.name(), &PostParams::default(), &binding)
        .await
        .map(|_| ());
    if result.is_ok() {
        recorder.scheduled(info.pod.clone(), &node);
    }
    BindOutcome { info, node, result }
}

fn pod_key(p: &Pod) -> String {
    format!("{}/{}", p.metadata.namespace.as_deref().unwrap_or("default"), p.metadata.name.as_deref().unwrap_or(""))
}

impl State {
    fn responsible(&self, pod: &Pod) -> bool {
        let Some(spec) = &pod.spec else { return false };
        let name = spec.scheduler_name.as_deref().filter(|s| !s.is_empty()).unwrap_or(crate::DEFAULT_SCHEDULER_NAME);
        name == self.name
            && pod.metadata.deletion_timestamp.is_none()
            && spec.scheduling_gates.as_ref().is_none_or(|g| g.is_empty())
    }

    fn handle(&mut self, m: Msg) {
        match m {
            Msg::Node(ev) => match ev {
                Event::Init => self.node_relist = Some(HashSet::new()),
                Event::InitApply(n) => {
                    if let Some(seen) = &mut self.node_relist {
                        seen.insert(n.metadata.name.clone().unwrap_or_default());
                    }
                    self.cache.upsert_node(n);
                }
                Event::InitDone => {
                    if let Some(seen) = self.node_relist.take() {
                        for name in self.cache.node_names() {
                            if !seen.contains(&name) {
                                self.cache.remove_node(&name);
                            }
                        }
                    }
                    if !self.nodes_synced {
                        tracing::info!(nodes = self.cache.node_count(), "scheduler: nodes synced");
                    }
                    self.nodes_synced = true;
                }
                Event::Apply(n) => self.cache.upsert_node(n),
                Event::Delete(n) => self.cache.remove_node(n.metadata.name.as_deref().unwrap_or("")),
            },
            Msg::Pod(ev) => match ev {
                Event::Init => self.pod_relist = Some(HashSet::new()),
                Event::InitApply(p) => {
                    if let Some(seen) = &mut self.pod_relist {
                        seen.insert(pod_key(&p));
                    }
                    self.pod_applied(p);
                }
                Event::InitDone => {
                    if let Some(seen) = self.pod_relist.take() {
                        for key in self.cache.pod_keys().into_iter().chain(self.queue.keys()) {
                            if !seen.contains(&key) {
                                self.cache.remove_pod(&key);
                                self.queue.remove(&key);
                            }
                        }
                    }
                    if !self.pods_synced {
                        tracing::info!(pending = self.queue.len(), "scheduler: pods synced");
                    }
                    self.pods_synced = true;
                }
                Event::Apply(p) => self.pod_applied(p),
                Event::Delete(p) => {
                    let key = pod_key(&p);
                    let uid = p.metadata.uid.as_deref().unwrap_or("");
                    if self.cache.pod_node(&key).is_some_and(|(_, u)| u == uid || uid.is_empty()) {
                        self.cache.remove_pod(&key);
                    }
                    if self.queue.current(&key).is_some_and(|i| i.uid == uid || uid.is_empty()) {
                        self.queue.remove(&key);
                    }
                }
            },
        }
    }

    fn pod_applied(&mut self, pod: Pod) {
        let key = pod_key(&pod);
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        // A new pod under an old name: forget the old one.
        if self.cache.pod_node(&key).is_some_and(|(_, u)| u != uid) {
            self.cache.remove_pod(&key);
        }
        if self.queue.current(&key).is_some_and(|i| i.uid != uid) {
            self.queue.remove(&key);
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            // Finished pods hold no resources.
            self.cache.remove_pod(&key);
            self.queue.remove(&key);
            return;
        }
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty());
        if let Some(node) = node {
            self.queue.remove(&key);
            self.cache.bound(Arc::new(pod), &key, &node);
            return;
        }
        if self.cache.is_assumed(&key) {
            // We bound it; this is an older version of the pod still in the watch.
            return;
        }
        if self.responsible(&pod) {
            self.queue.add_or_update(Arc::new(PodInfo::new(Arc::new(pod))), Instant::now());
        } else {
            self.queue.remove(&key);
        }
    }

    /// One scheduling cycle. Returns the node to bind to, with the pod already assumed there.
    fn schedule_one(&mut self, info: Arc<PodInfo>) -> Option<(String, Arc<PodInfo>)> {
        if self.cache.pod_node(&info.key).is_some() {
            // Bound meanwhile (by us or someone else): nothing to do.
            self.queue.remove(&info.key);
            return None;
        }
        match self.algorithm.schedule(&self.profile, &self.cache, &info) {
            Ok(node) => {
                self.cache.assume(info.clone(), &node);
                Some((node, info))
            }
            Err(fit) => {
                let message = fit.message();
                tracing::debug!(pod = %info.key, "{message}");
                self.queue.unschedulable(&info.key, fit.requeue_on, Instant::now());
                self.recorder.failed(info.pod.clone(), message.clone());
                if !has_unschedulable_condition(&info.pod, &message) {
                    self.recorder.record(Record::Unschedulable { pod: info.pod.clone(), message });
                }
                None
            }
        }
    }

    fn bind_done(&mut self, o: BindOutcome) {
        let Err(e) = o.result else { return };
        let key = &o.info.key;
        self.cache.forget(key, &o.info.uid);
        let not_found = matches!(&e, kube::Error::Api(s) if s.code == 404);
        tracing::debug!(pod = %key, node = %o.node, "binding failed: {e}");
        if self.queue.current(key).is_some_and(|i| i.uid == o.info.uid) {
            // If the pod was bound or deleted meanwhile, the watch will say so before the retry.
            self.queue.backoff(key, Instant::now());
        }
        if !not_found {
            let why = match &e {
                kube::Error::Api(s) => s.message.clone(),
                other => other.to_string(),
            };
            self.recorder.failed(o.info.pod.clone(), format!("Binding rejected: {why}"));
        }
    }
}
