//! The watch cache: every object of every kind in memory, kept current by one storage watch.
//!
//! Lists and watches are served from here, so 10,000 pods list without touching storage and a
//! hundred watchers cost one storage watch. Writes go straight to storage; the cache sees them
//! through its watch, like any other change.
//!
//! Architecture invariant: the cache never writes to storage and never decides anything; it is a
//! mirror with a bounded event history (older `resourceVersion`s answer 410 Gone).

use bytes::Bytes;
use serde_json::Value;
use skiff_storage::{Event, EventKind, KeyValue, Revision, Store};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// How many events the cache remembers for watches that start in the past.
const HISTORY: usize = 100_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// A cached object, parsed and serialized once: lists and watches write the bytes as they are,
/// so serving 10,000 objects is copying, not encoding.
#[derive(Clone, Debug)]
pub struct Obj {
    pub value: Arc<Value>,
    pub json: Bytes,
}

impl Obj {
    pub fn new(value: Value) -> Obj {
        let json = Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
        Obj { value: Arc::new(value), json }
    }
}

impl std::ops::Deref for Obj {
    type Target = Value;
    fn deref(&self) -> &Value {
        &self.value
    }
}

#[derive(Debug)]
pub struct CacheEvent {
    /// The storage resource (`pods`, `controllers`, ...).
    pub resource: String,
    pub key: String,
    pub kind: EventType,
    /// The object after the change (for deletions: the last state, at the deletion's revision).
    pub object: Obj,
    pub prev: Option<Obj>,
    pub revision: Revision,
}

#[derive(Default)]
struct State {
    revision: Revision,
    objects: HashMap<String, BTreeMap<String, Obj>>,
    history: VecDeque<Arc<CacheEvent>>,
    /// Events at or below this revision are no longer in `history`.
    oldest: Revision,
}

impl State {
    /// The objects of `resource` whose key starts with `prefix`, in key order.
    fn values_under(&self, resource: &str, prefix: &str) -> Vec<Obj> {
        self.objects
            .get(resource)
            .map(|m| {
                m.range(prefix.to_string()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .map(|(_, v)| v.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

pub struct Cache {
    state: RwLock<State>,
    events: broadcast::Sender<Arc<CacheEvent>>,
    revision: watch::Sender<Revision>,
}

/// Splits `/registry/<resource>/...` into the resource.
fn resource_of(key: &str) -> Option<&str> {
    key.strip_prefix("/registry/")?.split('/').next()
}

/// Storage holds objects without `resourceVersion`; it is the revision of their last write.
pub fn decode(kv: &KeyValue, revision: Revision) -> Option<Value> {
    let mut v: Value = serde_json::from_slice(&kv.value).ok()?;
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(revision.to_string()));
    }
    Some(v)
}

impl Cache {
    /// Loads everything under `/registry/` and follows the store from there on.
    pub async fn start(store: Arc<dyn Store>) -> anyhow::Result<Arc<Cache>> {
        let (events, _) = broadcast::channel(HISTORY);
        let (revision, _) = watch::channel(0);
        let cache = Arc::new(Cache { state: RwLock::new(State::default()), events, revision });
        let rev = cache.load(&*store).await?;
        let c = cache.clone();
        tokio::spawn(async move { c.follow(store, rev).await });
        Ok(cache)
    }

    async fn load(&self, store: &dyn Store) -> anyhow::Result<Revision> {
        let (items, rev) = store.list("/registry/", None).await?;
        let mut objects: HashMap<String, BTreeMap<String, Obj>> = HashMap::new();
        for kv in &items {
            let (Some(res), Some(obj)) = (resource_of(&kv.key), decode(kv, kv.mod_revision)) else { continue };
            objects.entry(res.to_string()).or_default().insert(kv.key.clone(), Obj::new(obj));
        }
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        st.objects = objects;
        st.revision = rev;
        st.history.clear();
        st.oldest = rev;
        drop(st);
        self.revision.send_replace(rev);
        Ok(rev)
    }

    async fn follow(self: Arc<Self>, store: Arc<dyn Store>, mut rev: Revision) {
        use futures::StreamExt;
        loop {
            match store.watch("/registry/", rev).await {
                Ok(mut stream) => {
                    while let Some(ev) = stream.next().await {
                        match ev {
                            Ok(ev) => {
                                rev = ev.revision();
                                self.apply(ev);
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "storage watch failed; resuming");
                                break;
                            }
                        }
                    }
                }
                Err(skiff_storage::StoreError::Compacted { .. }) => {
                    // We fell behind compaction: start over from a fresh list. Watchers holding
                    // older resourceVersions will get 410 Gone and relist, as in Kubernetes.
                    tracing::warn!("watch cache fell behind compaction; reloading");
                    match self.load(&*store).await {
                        Ok(r) => rev = r,
                        Err(e) => tracing::error!(error = %e, "reloading the watch cache failed"),
                    }
                }
                Err(e) => tracing::warn!(error = %e, "storage watch could not start"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn apply(&self, ev: Event) {
        let Some(resource) = resource_of(&ev.kv.key).map(str::to_string) else { return };
        let revision = ev.revision();
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        if revision <= st.revision {
            return;
        }
        let map = st.objects.entry(resource.clone()).or_default();
        let cached_prev = map.get(&ev.kv.key).cloned();
        let event = match ev.kind {
            EventKind::Put => {
                let Some(obj) = decode(&ev.kv, revision) else {
                    st.revision = revision;
                    return;
                };
                let obj = Obj::new(obj);
                map.insert(ev.kv.key.clone(), obj.clone());
                let kind = if cached_prev.is_some() { EventType::Modified } else { EventType::Added };
                CacheEvent { resource, key: ev.kv.key, kind, object: obj, prev: cached_prev, revision }
            }
            EventKind::Delete => {
                map.remove(&ev.kv.key);
                let last = ev.prev.as_ref().and_then(|p| decode(p, revision)).or_else(|| {
                    cached_prev.as_ref().map(|p| {
                        let mut p = (*p.value).clone();
                        p["metadata"]["resourceVersion"] = Value::String(revision.to_string());
                        p
                    })
                });
                let Some(last) = last else {
                    st.revision = revision;
                    return;
                };
                CacheEvent {
                    resource,
                    key: ev.kv.key,
                    kind: EventType::Deleted,
                    object: Obj::new(last),
                    prev: cached_prev,
                    revision,
                }
            }
        };
        let event = Arc::new(event);
        st.revision = revision;
        st.history.push_back(event.clone());
        if st.history.len() > HISTORY {
            if let Some(old) = st.history.pop_front() {
                st.oldest = old.revision;
            }
        }
        // Sent under the lock so subscribers that snapshot under the same lock see no gap.
        let _ = self.events.send(event);
        drop(st);
        self.revision.send_replace(revision);
    }

    pub fn revision(&self) -> Revision {
        *self.revision.borrow()
    }

    /// Waits until the cache has seen `rev` (for consistent reads). False on timeout.
    pub async fn wait_for(&self, rev: Revision, timeout: Duration) -> bool {
        let mut rx = self.revision.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|r| *r >= rev)).await.is_ok_and(|r| r.is_ok())
    }

    /// Objects of `resource` whose key starts with `prefix`, sorted by key, and the revision.
    pub fn list(&self, resource: &str, prefix: &str) -> (Vec<(String, Obj)>, Revision) {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        let items = st
            .objects
            .get(resource)
            .map(|m| {
                m.range(prefix.to_string()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        (items, st.revision)
    }

    /// As [`Cache::list`] without the keys (no string copies: the allocator reads every Service
    /// on each Service write).
    pub fn list_values(&self, resource: &str, prefix: &str) -> (Vec<Obj>, Revision) {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        (st.values_under(resource, prefix), st.revision)
    }

    pub fn get(&self, resource: &str, key: &str) -> Option<Obj> {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        st.objects.get(resource).and_then(|m| m.get(key).cloned())
    }

    /// Events for `resource` after `after`, then a live receiver. `None` if `after` is older
    /// than the remembered history (410 Gone).
    pub fn watch_from(
        &self,
        resource: &str,
        after: Revision,
    ) -> Option<(Vec<Arc<CacheEvent>>, broadcast::Receiver<Arc<CacheEvent>>, Revision)> {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        if after < st.oldest {
            return None;
        }
        let backlog = st.history.iter().filter(|e| e.revision > after && e.resource == resource).cloned().collect();
        Some((backlog, self.events.subscribe(), st.revision))
    }

    /// The current state as synthetic ADDED events plus a live receiver (watch with RV "" / "0").
    pub fn snapshot_and_subscribe(
        &self,
        resource: &str,
        prefix: &str,
    ) -> (Vec<Obj>, broadcast::Receiver<Arc<CacheEvent>>, Revision) {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        (st.values_under(resource, prefix), self.events.subscribe(), st.revision)
    }
}
