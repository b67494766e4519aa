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
    /// Objects the API server just wrote, by key, with the revision of that write: when the
    /// watch delivers exactly that revision of that key, the offered object (the same value,
    /// already serialized) is cached instead of decoding the stored bytes again.
    offers: HashMap<String, (Revision, Obj)>,
    /// Objects the API server is about to write, by key: the exact bytes going to storage and
    /// the value they encode (without `resourceVersion`). A write of the key whose stored bytes
    /// are these bytes decodes to this value, so the cache takes it instead of parsing.
    expected: HashMap<String, (Bytes, Value)>,
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
    decode_bytes(&kv.value, revision)
}

/// [`decode`] of a stored value's bytes.
pub fn decode_bytes(bytes: &[u8], revision: Revision) -> Option<Value> {
    let mut v: Value = serde_json::from_slice(bytes).ok()?;
    set_resource_version(&mut v, revision);
    Some(v)
}

fn set_resource_version(v: &mut Value, revision: Revision) {
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(revision.to_string()));
    }
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
        st.offers.retain(|_, (r, _)| *r > rev);
        st.expected.clear();
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
        let mut guard = self.state.write().unwrap_or_else(|e| e.into_inner());
        // Through a plain `&mut`, so that fields are borrowed separately.
        let st = &mut *guard;
        if revision <= st.revision {
            return;
        }
        let offered = match st.offers.remove(&ev.kv.key) {
            Some((r, obj)) if r == revision => Some(obj),
            // An offer for a later write of this key waits for its own event.
            Some((r, obj)) if r > revision => {
                st.offers.insert(ev.kv.key.clone(), (r, obj));
                None
            }
            _ => None,
        };
        let map = st.objects.entry(resource.clone()).or_default();
        let cached_prev = map.get(&ev.kv.key).cloned();
        let event = match ev.kind {
            EventKind::Put => {
                let expected = match st.expected.get(&ev.kv.key) {
                    Some((bytes, _)) if bytes[..] == ev.kv.value[..] => st.expected.remove(&ev.kv.key),
                    _ => None,
                };
                let obj = match (offered, expected) {
                    (Some(obj), _) => obj,
                    (None, Some((_, mut value))) => {
                        set_resource_version(&mut value, revision);
                        Obj::new(value)
                    }
                    (None, None) => {
                        let Some(obj) = decode(&ev.kv, revision) else {
                            st.revision = revision;
                            return;
                        };
                        Obj::new(obj)
                    }
                };
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
        drop(guard);
        self.revision.send_replace(revision);
    }

    pub fn revision(&self) -> Revision {
        *self.revision.borrow()
    }

    /// Tells the cache that `bytes`, the encoding of `value`, are about to be written at `key`
    /// (call before the write; then [`Cache::settle`] or [`Cache::withdraw`]).
    pub fn expect(&self, key: &str, bytes: Bytes, value: Value) {
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        st.expected.insert(key.to_string(), (bytes, value));
    }

    /// Forgets an [`Cache::expect`]ed write that failed.
    pub fn withdraw(&self, key: &str, bytes: &[u8]) {
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        if st.expected.get(key).is_some_and(|(b, _)| b[..] == *bytes) {
            st.expected.remove(key);
        }
    }

    /// After an [`Cache::expect`]ed write of `bytes` at `key` committed at `revision`: the
    /// object as the cache holds (or will hold) it, built once for both. `None` when the cache
    /// cannot tell (the key changed again meanwhile); the caller then decodes `bytes` itself.
    pub fn settle(&self, key: &str, revision: Revision, bytes: &[u8]) -> Option<Obj> {
        let value = {
            let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
            if st.revision >= revision {
                // The watch was first: the cache took the expected value.
                let rv = revision.to_string();
                return st
                    .objects
                    .get(resource_of(key)?)
                    .and_then(|m| m.get(key))
                    .filter(|o| o.value["metadata"]["resourceVersion"].as_str() == Some(rv.as_str()))
                    .cloned();
            }
            match st.expected.get(key) {
                Some((b, _)) if b[..] == *bytes => st.expected.remove(key).map(|(_, v)| v),
                _ => None,
            }
        };
        let mut value = value?;
        set_resource_version(&mut value, revision);
        let obj = Obj::new(value);
        // Serialized outside the lock; if the event came meanwhile, the cache decoded it itself.
        self.offer(key, revision, obj.clone());
        Some(obj)
    }

    /// Offers the object the API server wrote at `key` with revision `revision` — what
    /// [`decode`] of that write would give, with `metadata.resourceVersion` set — so the cache
    /// can take it when the watch delivers that write instead of parsing the stored bytes again.
    /// Ignored if the cache is already past that revision (it decoded the write itself).
    pub fn offer(&self, key: &str, revision: Revision, obj: Obj) {
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        if revision > st.revision {
            st.offers.insert(key.to_string(), (revision, obj));
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use skiff_storage::EmbeddedStore;

    struct TempFile(std::path::PathBuf);
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    async fn cache_on_fresh_store() -> (Arc<dyn Store>, Arc<Cache>, TempFile) {
        let path =
            std::env::temp_dir().join(format!("skiff-cache-test-{}-{}.redb", std::process::id(), uuid::Uuid::new_v4()));
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&path).unwrap());
        let cache = Cache::start(store.clone()).await.unwrap();
        (store, cache, TempFile(path))
    }

    fn with_rv(mut v: Value, rev: Revision) -> Value {
        v["metadata"]["resourceVersion"] = json!(rev.to_string());
        v
    }

    #[tokio::test]
    async fn an_offered_write_is_cached_as_offered_and_equals_the_decoded_one() {
        let (store, cache, _f) = cache_on_fresh_store().await;
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "default"}, "spec": {"x": 1}});
        let key = "/registry/pods/default/a";
        // The next write of this fresh store is revision 1: offered before the write, the offer
        // is certain to come before the watch event.
        let next = store.current_revision().await.unwrap() + 1;
        let offered = Obj::new(with_rv(pod.clone(), next));
        cache.offer(key, next, offered.clone());
        let rev = store.create(key, serde_json::to_vec(&pod).unwrap()).await.unwrap();
        assert_eq!(rev, next);
        assert!(cache.wait_for(rev, Duration::from_secs(5)).await);
        let cached = cache.get("pods", key).unwrap();
        assert!(Arc::ptr_eq(&cached.value, &offered.value), "the offered object is cached");
        assert!(cache.state.read().unwrap().offers.is_empty());
        // ... and it is what decoding the stored bytes gives.
        let kv = store.get(key).await.unwrap().unwrap();
        let decoded = Obj::new(decode(&kv, kv.mod_revision).unwrap());
        assert_eq!(*cached.value, *decoded.value);
        assert_eq!(cached.json, decoded.json);
    }

    #[tokio::test]
    async fn an_expected_write_is_built_once_for_the_cache_and_the_writer() {
        let (store, cache, _f) = cache_on_fresh_store().await;
        for i in 0..50 {
            let key = format!("/registry/pods/default/p{i}");
            // Floats too: the handed-over value must be what parsing the bytes gives, which
            // serde_json guarantees with `float_roundtrip` (its default parser may miss by 1 ulp).
            let f = i as f64 / 7.0 + 0.1;
            let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("p{i}"), "namespace": "default"}, "spec": {"n": i, "f": [f, f * 1e-300, 1.0 / (i as f64 + 3.0)]}});
            let bytes = Bytes::from(serde_json::to_vec(&pod).unwrap());
            cache.expect(&key, bytes.clone(), pod.clone());
            let rev = store.create(&key, bytes.to_vec()).await.unwrap();
            // Whether the watch or the writer came first, both end up with the same object.
            let settled = cache.settle(&key, rev, &bytes).expect("settled");
            assert!(cache.wait_for(rev, Duration::from_secs(5)).await);
            let cached = cache.get("pods", &key).unwrap();
            assert!(Arc::ptr_eq(&cached.value, &settled.value), "one object for both");
            let decoded = Obj::new(decode_bytes(&bytes, rev).unwrap());
            assert_eq!(*cached.value, *decoded.value);
            assert_eq!(cached.json, decoded.json);
        }
        let st = cache.state.read().unwrap();
        assert!(st.expected.is_empty() && st.offers.is_empty(), "nothing left behind");
    }

    #[tokio::test]
    async fn an_expected_value_is_used_only_for_its_exact_bytes() {
        let (store, cache, _f) = cache_on_fresh_store().await;
        let key = "/registry/pods/default/a";
        let expected = json!({"metadata": {"name": "a"}, "spec": {"v": "expected"}});
        let written = json!({"metadata": {"name": "a"}, "spec": {"v": "written"}});
        let expected_bytes = Bytes::from(serde_json::to_vec(&expected).unwrap());
        cache.expect(key, expected_bytes.clone(), expected.clone());
        // Another writer's bytes land instead (e.g. a racing create of the same name).
        let rev = store.create(key, serde_json::to_vec(&written).unwrap()).await.unwrap();
        assert!(cache.wait_for(rev, Duration::from_secs(5)).await);
        assert_eq!(*cache.get("pods", key).unwrap().value, with_rv(written, rev));
        assert!(cache.state.read().unwrap().expected.contains_key(key), "not taken for other bytes");
        cache.withdraw(key, &expected_bytes);
        assert!(cache.state.read().unwrap().expected.is_empty());
    }

    #[tokio::test]
    async fn offers_for_applied_or_other_revisions_are_not_used() {
        let (store, cache, _f) = cache_on_fresh_store().await;
        let key = "/registry/configmaps/default/c";
        let v1 = json!({"metadata": {"name": "c", "namespace": "default"}, "data": {"v": "1"}});
        let rev = store.create(key, serde_json::to_vec(&v1).unwrap()).await.unwrap();
        assert!(cache.wait_for(rev, Duration::from_secs(5)).await);
        // Already applied: a late offer is dropped.
        cache.offer(key, rev, Obj::new(json!({"bogus": true})));
        assert!(cache.state.read().unwrap().offers.is_empty());
        assert_eq!(*cache.get("configmaps", key).unwrap().value, with_rv(v1.clone(), rev));
        // An offer for a later revision does not stand in for an earlier write of the key.
        let v2 = json!({"metadata": {"name": "c", "namespace": "default"}, "data": {"v": "2"}});
        cache.offer(key, rev + 100, Obj::new(json!({"bogus": true})));
        let rev2 = store.update(key, serde_json::to_vec(&v2).unwrap(), rev).await.unwrap();
        assert!(cache.wait_for(rev2, Duration::from_secs(5)).await);
        assert_eq!(*cache.get("configmaps", key).unwrap().value, with_rv(v2, rev2));
        assert!(cache.state.read().unwrap().offers.contains_key(key), "kept for its own revision");
    }
}
