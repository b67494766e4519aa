//! Events (`Scheduled`, `FailedScheduling`) and the `PodScheduled=False` condition, written in
//! the background with bounded concurrency so they never hold up binding. Repeated identical
//! `FailedScheduling` events are aggregated into one event with a growing `count`, as Kubernetes'
//! event recorder does.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

const QUEUE: usize = 8192;
const IN_FLIGHT: usize = 16;
const AGGREGATE_MAX: usize = 8192;

#[derive(Debug)]
pub enum Record {
    Event {
        pod: Arc<Pod>,
        type_: &'static str,
        reason: &'static str,
        action: &'static str,
        message: String,
    },
    /// `PodScheduled=False, reason Unschedulable` with this message.
    Unschedulable {
        pod: Arc<Pod>,
        message: String,
    },
}

/// Cheap to clone; drops records (with a log line) rather than block when the API is slow.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Record>,
}

impl Recorder {
    pub fn spawn(tasks: &mut JoinSet<anyhow::Result<()>>, client: Client, component: String) -> Recorder {
        let (tx, rx) = mpsc::channel(QUEUE);
        tasks.spawn(writer(client, component, rx));
        Recorder { tx }
    }

    pub fn record(&self, r: Record) {
        if let Err(e) = self.tx.try_send(r) {
            tracing::debug!("dropping scheduler event or status: {e}");
        }
    }

    pub fn scheduled(&self, pod: Arc<Pod>, node: &str) {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = pod.metadata.name.as_deref().unwrap_or("");
        let message = format!("Successfully assigned {ns}/{name} to {node}");
        self.record(Record::Event { pod, type_: "Normal", reason: "Scheduled", action: "Binding", message });
    }

    pub fn failed(&self, pod: Arc<Pod>, message: String) {
        self.record(Record::Event { pod, type_: "Warning", reason: "FailedScheduling", action: "Scheduling", message });
    }
}

struct Aggregate {
    name: String,
    count: i32,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

fn event_name(pod: &str) -> String {
    let nanos = Timestamp::now().as_nanosecond() as u64;
    format!("{pod}.{:x}", nanos.wrapping_add(SEQ.fetch_add(1, Ordering::Relaxed)))
}

async fn writer(client: Client, component: String, mut rx: mpsc::Receiver<Record>) -> anyhow::Result<()> {
    let instance = format!("{component}-{}", std::env::var("HOSTNAME").unwrap_or_else(|_| "skiff".into()));
    let mut seen: HashMap<(String, String), Aggregate> = HashMap::new();
    let mut running: JoinSet<()> = JoinSet::new();
    while let Some(r) = rx.recv().await {
        while running.len() >= IN_FLIGHT {
            running.join_next().await;
        }
        while running.try_join_next().is_some() {}
        let client = client.clone();
        match r {
            Record::Event { pod, type_, reason, action, message } => {
                let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
                let pod_name = pod.metadata.name.clone().unwrap_or_default();
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                let now = Timestamp::now();
                // Identical warnings for one pod become one event with a count.
                let aggregate = if type_ == "Warning" {
                    if seen.len() > AGGREGATE_MAX {
                        seen.clear();
                    }
                    let key = (uid.clone(), format!("{reason}\u{0}{message}"));
                    match seen.get_mut(&key) {
                        Some(a) => {
                            a.count += 1;
                            Some((a.name.clone(), a.count))
                        }
                        None => {
                            seen.insert(key, Aggregate { name: event_name(&pod_name), count: 1 });
                            None
                        }
                    }
                } else {
                    None
                };
                let events: Api<Event> = Api::namespaced(client, &ns);
                if let Some((name, count)) = aggregate {
                    running.spawn(async move {
                        let patch = json!({"count": count, "lastTimestamp": Time(now)});
                        if let Err(e) = events.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                            tracing::debug!("updating event {ns}/{name}: {e}");
                        }
                    });
                    continue;
                }
                let name = match seen.get(&(uid.clone(), format!("{reason}\u{0}{message}"))) {
                    Some(a) if type_ == "Warning" => a.name.clone(),
                    _ => event_name(&pod_name),
                };
                let ev = Event {
                    metadata: ObjectMeta { name: Some(name), namespace: Some(ns.clone()), ..Default::default() },
                    involved_object: ObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        namespace: Some(ns.clone()),
                        name: Some(pod_name),
                        uid: Some(uid),
                        resource_version: pod.metadata.resource_version.clone(),
                        field_path: None,
                    },
                    reason: Some(reason.into()),
                    message: Some(message),
                    type_: Some(type_.into()),
                    action: Some(action.into()),
                    count: Some(1),
                    first_timestamp: Some(Time(now)),
                    last_timestamp: Some(Time(now)),
                    source: Some(EventSource { component: Some(component.clone()), host: None }),
                    reporting_component: Some(component.clone()),
                    reporting_instance: Some(instance.clone()),
                    ..Default::default()
                };
                running.spawn(async move {
                    if let Err(e) = events.create(&PostParams::default(), &ev).await {
                        tracing::debug!("creating event in {ns}: {e}");
                    }
                });
            }
            Record::Unschedulable { pod, message } => {
                let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
                let name = pod.metadata.name.clone().unwrap_or_default();
                let previous = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"));
                let since = match previous {
                    Some(c) if c.status == "False" => c.last_transition_time.clone(),
                    _ => None,
                }
                .unwrap_or(Time(Timestamp::now()));
                let patch = json!({"status": {"conditions": [{
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": message,
                    "lastProbeTime": null,
                    "lastTransitionTime": since,
                }]}});
                let pods: Api<Pod> = Api::namespaced(client, &ns);
                running.spawn(async move {
                    if let Err(e) = pods.patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch)).await {
                        tracing::debug!("setting PodScheduled on {ns}/{name}: {e}");
                    }
                });
            }
        }
    }
    Ok(())
}

/// Whether the pod already carries `PodScheduled=False/Unschedulable` with this message.
pub fn has_unschedulable_condition(pod: &Pod, message: &str) -> bool {
    pod.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| {
        c.iter().any(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
                && c.message.as_deref() == Some(message)
        })
    })
}
