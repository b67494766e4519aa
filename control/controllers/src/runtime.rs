//! The controller runtime: shared informers (a kube-rs `watcher` feeding an in-memory store with
//! namespace, owner and custom indexes) and per-controller work queues (deduplicated keys, one
//! reconcile per key at a time, requeue with exponential backoff on error).
//!
//! This is kube-rs' `Controller` model — level-triggered reconciles keyed by object — with two
//! differences that the controller manager needs: one watch per resource shared by every
//! controller (with indexes instead of per-reconcile lists), and reconciles keyed by name so that
//! a reconcile also runs after its primary object is gone (to clean up what it left behind).

use futures::StreamExt;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt::Debug;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// What a reconcile is about: a namespace (empty for cluster-scoped objects) and a name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjKey {
    pub namespace: String,
    pub name: String,
}

impl ObjKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjKey { namespace: namespace.into(), name: name.into() }
    }
    pub fn cluster(name: impl Into<String>) -> Self {
        ObjKey { namespace: String::new(), name: name.into() }
    }
    pub fn of<K: Resource>(obj: &K) -> Self {
        let m = obj.meta();
        ObjKey { namespace: m.namespace.clone().unwrap_or_default(), name: m.name.clone().unwrap_or_default() }
    }
    pub fn ns(&self) -> Option<&str> {
        (!self.namespace.is_empty()).then_some(self.namespace.as_str())
    }
}

impl std::fmt::Display for ObjKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}", self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// The outcome of a successful reconcile: whether to look again after a while even if nothing
/// changes (time-based conditions: availability, lease expiry, eviction, backoff).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Action(pub Option<Duration>);

impl Action {
    pub fn done() -> Self {
        Action(None)
    }
    pub fn requeue(d: Duration) -> Self {
        Action(Some(d))
    }
    /// The earlier of two requeues.
    pub fn min(self, other: Action) -> Action {
        match (self.0, other.0) {
            (Some(a), Some(b)) => Action(Some(a.min(b))),
            (a, b) => Action(a.or(b)),
        }
    }
}

pub trait Obj: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static {}
impl<T: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static> Obj for T {}

type Handler<K> = Box<dyn Fn(Option<&Arc<K>>, Option<&Arc<K>>) + Send + Sync>;
type IndexFn<K> = Box<dyn Fn(&K) -> Vec<String> + Send + Sync>;

struct Store<K> {
    objects: HashMap<ObjKey, Arc<K>>,
    by_ns: HashMap<String, BTreeSet<String>>,
    by_owner: HashMap<String, BTreeSet<ObjKey>>,
    by_index: HashMap<String, BTreeSet<ObjKey>>,
}

impl<K> Default for Store<K> {
    fn default() -> Self {
        Store { objects: HashMap::new(), by_ns: HashMap::new(), by_owner: HashMap::new(), by_index: HashMap::new() }
    }
}

/// One shared watch of a resource and its in-memory store.
pub struct Informer<K: Obj> {
    name: &'static str,
    api: Api<K>,
    config: watcher::Config,
    store: RwLock<Store<K>>,
    handlers: RwLock<Vec<Handler<K>>>,
    index_fn: Option<IndexFn<K>>,
    synced: AtomicBool,
    changes: watch::Sender<u64>,
}

fn owner_uids<K: Resource>(obj: &K) -> Vec<String> {
    obj.meta().owner_references.iter().flatten().map(|r| r.uid.clone()).collect()
}

impl<K: Obj> Informer<K> {
    pub fn new(name: &'static str, api: Api<K>, config: watcher::Config, index_fn: Option<IndexFn<K>>) -> Arc<Self> {
        Arc::new(Informer {
            name,
            api,
            config,
            store: RwLock::new(Store::default()),
            handlers: RwLock::new(Vec::new()),
            index_fn,
            synced: AtomicBool::new(false),
            changes: watch::channel(0).0,
        })
    }

    /// Registers a change handler: called with (old, new) after the store changed; `new` is None
    /// for a deletion, `old` None for an addition. Handlers must be quick (enqueue keys).
    pub fn on_change(&self, f: impl Fn(Option<&Arc<K>>, Option<&Arc<K>>) + Send + Sync + 'static) {
        self.handlers.write().unwrap().push(Box::new(f));
    }

    pub fn get(&self, key: &ObjKey) -> Option<Arc<K>> {
        self.store.read().unwrap().objects.get(key).cloned()
    }

    pub fn get_named(&self, ns: &str, name: &str) -> Option<Arc<K>> {
        self.get(&ObjKey::new(ns, name))
    }

    pub fn list(&self) -> Vec<Arc<K>> {
        self.store.read().unwrap().objects.values().cloned().collect()
    }

    pub fn keys(&self) -> Vec<ObjKey> {
        self.store.read().unwrap().objects.keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.store.read().unwrap().objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Objects of one namespace (name order).
    pub fn list_ns(&self, ns: &str) -> Vec<Arc<K>> {
        let s = self.store.read().unwrap();
        s.by_ns
            .get(ns)
            .map(|names| names.iter().filter_map(|n| s.objects.get(&ObjKey::new(ns, n.clone())).cloned()).collect())
            .unwrap_or_default()
    }

    /// Objects that list `uid` among their ownerReferences.
    pub fn owned_by(&self, uid: &str) -> Vec<Arc<K>> {
        let s = self.store.read().unwrap();
        s.by_owner
            .get(uid)
            .map(|keys| keys.iter().filter_map(|k| s.objects.get(k).cloned()).collect())
            .unwrap_or_default()
    }

    /// Objects whose custom index function returned `value`.
    pub fn indexed(&self, value: &str) -> Vec<Arc<K>> {
        let s = self.store.read().unwrap();
        s.by_index
            .get(value)
            .map(|keys| keys.iter().filter_map(|k| s.objects.get(k).cloned()).collect())
            .unwrap_or_default()
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
    }

    /// Waits until the store has been filled by its first list.
    pub async fn wait_synced(&self) {
        let mut rx = self.changes.subscribe();
        while !self.is_synced() {
            let _ = tokio::time::timeout(Duration::from_millis(200), rx.changed()).await;
        }
    }

    /// Waits (up to `timeout`) until `pred` holds for the store; how a reconcile makes sure the
    /// cache has seen its own writes before it returns, so the next reconcile does not act on
    /// stale state (Kubernetes' "expectations", without state to lose).
    pub async fn wait_until(&self, timeout: Duration, pred: impl Fn(&Self) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut rx = self.changes.subscribe();
        loop {
            if pred(self) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let _ = tokio::time::timeout((deadline - now).min(Duration::from_millis(100)), rx.changed()).await;
        }
    }

    fn index_values(&self, obj: &K) -> Vec<String> {
        self.index_fn.as_ref().map(|f| f(obj)).unwrap_or_default()
    }

    fn insert(&self, obj: K) -> (Option<Arc<K>>, Arc<K>) {
        let key = ObjKey::of(&obj);
        let new = Arc::new(obj);
        let new_owners = owner_uids(new.as_ref());
        let new_index = self.index_values(&new);
        let mut s = self.store.write().unwrap();
        let old = s.objects.insert(key.clone(), new.clone());
        if let Some(o) = &old {
            for uid in owner_uids(o.as_ref()) {
                if !new_owners.contains(&uid) {
                    remove_from(&mut s.by_owner, &uid, &key);
                }
            }
            for v in self.index_values(o) {
                if !new_index.contains(&v) {
                    remove_from(&mut s.by_index, &v, &key);
                }
            }
        }
        s.by_ns.entry(key.namespace.clone()).or_default().insert(key.name.clone());
        for uid in new_owners {
            s.by_owner.entry(uid).or_default().insert(key.clone());
        }
        for v in new_index {
            s.by_index.entry(v).or_default().insert(key.clone());
        }
        (old, new)
    }

    fn remove(&self, key: &ObjKey) -> Option<Arc<K>> {
        let mut s = self.store.write().unwrap();
        let old = s.objects.remove(key)?;
        if let Some(names) = s.by_ns.get_mut(&key.namespace) {
            names.remove(&key.name);
            if names.is_empty() {
                s.by_ns.remove(&key.namespace);
            }
        }
        for uid in owner_uids(old.as_ref()) {
            remove_from(&mut s.by_owner, &uid, key);
        }
        for v in self.index_values(&old) {
            remove_from(&mut s.by_index, &v, key);
        }
        Some(old)
    }

    fn notify(&self, old: Option<&Arc<K>>, new: Option<&Arc<K>>) {
        for h in self.handlers.read().unwrap().iter() {
            h(old, new);
        }
        self.changes.send_modify(|v| *v += 1);
    }

    /// Follows the resource forever: list, then watch, relisting (with backoff) when the watch
    /// breaks. A relist reports the objects that vanished meanwhile as deletions.
    pub async fn run(self: Arc<Self>) {
        let mut stream = watcher::watcher(self.api.clone(), self.config.clone()).default_backoff().boxed();
        let mut buffer: Option<HashMap<ObjKey, K>> = None;
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(Event::Apply(obj)) => {
                    let (old, new) = self.insert(obj);
                    if old.as_ref().map(|o| o.resource_version()) != Some(new.resource_version()) {
                        self.notify(old.as_ref(), Some(&new));
                    }
                }
                Ok(Event::Delete(obj)) => {
                    if let Some(old) = self.remove(&ObjKey::of(&obj)) {
                        self.notify(Some(&old), None);
                    }
                }
                Ok(Event::Init) => buffer = Some(HashMap::new()),
                Ok(Event::InitApply(obj)) => {
                    buffer.get_or_insert_with(HashMap::new).insert(ObjKey::of(&obj), obj);
                }
                Ok(Event::InitDone) => {
                    let listed = buffer.take().unwrap_or_default();
                    let gone: Vec<ObjKey> = self.keys().into_iter().filter(|k| !listed.contains_key(k)).collect();
                    for k in gone {
                        if let Some(old) = self.remove(&k) {
                            self.notify(Some(&old), None);
                        }
                    }
                    for (_, obj) in listed {
                        let (old, new) = self.insert(obj);
                        // After a (re)list every object is reported once more: a resync.
                        self.notify(old.as_ref(), Some(&new));
                    }
                    self.synced.store(true, Ordering::SeqCst);
                    self.changes.send_modify(|v| *v += 1);
                    tracing::debug!(informer = self.name, objects = self.len(), "informer synced");
                }
                Err(e) => tracing::warn!(informer = self.name, error = %e, "watch failed; retrying"),
            }
        }
    }
}

fn remove_from(map: &mut HashMap<String, BTreeSet<ObjKey>>, k: &str, key: &ObjKey) {
    if let Some(set) = map.get_mut(k) {
        set.remove(key);
        if set.is_empty() {
            map.remove(k);
        }
    }
}

/// The sending side of a controller's work queue.
#[derive(Clone)]
pub struct Queue {
    tx: mpsc::UnboundedSender<(ObjKey, Duration)>,
}

impl Queue {
    pub fn new() -> (Queue, QueueReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Queue { tx }, QueueReceiver { rx })
    }
    pub fn add(&self, key: ObjKey) {
        let _ = self.tx.send((key, Duration::ZERO));
    }
    pub fn add_after(&self, key: ObjKey, after: Duration) {
        let _ = self.tx.send((key, after));
    }
}

pub struct QueueReceiver {
    rx: mpsc::UnboundedReceiver<(ObjKey, Duration)>,
}

/// Error backoff: 50 ms doubling up to 30 s, reset by a success.
fn backoff(failures: u32) -> Duration {
    let ms = 50u64.saturating_mul(1u64 << failures.min(12));
    Duration::from_millis(ms.min(30_000))
}

/// Runs a controller's reconcile loop over its queue: each key reconciled by at most one task at
/// a time, keys added while running are reconciled again afterwards, errors requeue with
/// backoff and `Action::requeue` schedules a later look.
pub async fn run_queue<F, Fut>(name: &'static str, mut rx: QueueReceiver, concurrency: usize, reconcile: F)
where
    F: Fn(ObjKey) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<Action>> + Send + 'static,
{
    let reconcile = Arc::new(reconcile);
    let mut due: BTreeMap<(Instant, u64), ObjKey> = BTreeMap::new();
    let mut scheduled: HashMap<ObjKey, (Instant, u64)> = HashMap::new();
    let mut ready: VecDeque<ObjKey> = VecDeque::new();
    let mut in_ready: HashSet<ObjKey> = HashSet::new();
    let mut running: HashSet<ObjKey> = HashSet::new();
    let mut rerun: HashSet<ObjKey> = HashSet::new();
    let mut failures: HashMap<ObjKey, u32> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut seq = 0u64;
    let mut closed = false;
    let mut schedule = |key: ObjKey,
                        at: Instant,
                        due: &mut BTreeMap<(Instant, u64), ObjKey>,
                        scheduled: &mut HashMap<ObjKey, (Instant, u64)>| {
        if let Some(prev) = scheduled.get(&key) {
            if prev.0 <= at {
                return;
            }
            due.remove(prev);
        }
        seq += 1;
        due.insert((at, seq), key.clone());
        scheduled.insert(key, (at, seq));
    };
    loop {
        // Move what is due into the ready queue.
        let now = Instant::now();
        while let Some((&(at, s), _)) = due.iter().next() {
            if at > now {
                break;
            }
            let key = due.remove(&(at, s)).expect("present");
            scheduled.remove(&key);
            if running.contains(&key) {
                rerun.insert(key);
            } else if in_ready.insert(key.clone()) {
                ready.push_back(key);
            }
        }
        // Start what may run.
        while running.len() < concurrency {
            let Some(key) = ready.pop_front() else { break };
            in_ready.remove(&key);
            if running.contains(&key) {
                rerun.insert(key);
                continue;
            }
            running.insert(key.clone());
            let r = reconcile.clone();
            tasks.spawn(async move {
                use futures::FutureExt;
                let started = Instant::now();
                // A panicking reconcile is an error for its key, not the end of the controller.
                let res = match std::panic::AssertUnwindSafe(r(key.clone())).catch_unwind().await {
                    Ok(res) => res,
                    Err(_) => Err(anyhow::anyhow!("reconcile panicked")),
                };
                (key, res, started.elapsed())
            });
        }
        let next = due.keys().next().map(|(at, _)| *at);
        tokio::select! {
            msg = rx.rx.recv(), if !closed => match msg {
                Some((key, after)) => schedule(key, Instant::now() + after, &mut due, &mut scheduled),
                // No producer left (a controller that only requeues itself): keep serving timers.
                None => closed = true,
            },
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                let Ok((key, res, took)) = done else { continue };
                running.remove(&key);
                match res {
                    Ok(action) => {
                        failures.remove(&key);
                        if let Some(d) = action.0 {
                            schedule(key.clone(), Instant::now() + d, &mut due, &mut scheduled);
                        }
                    }
                    Err(e) => {
                        let n = failures.entry(key.clone()).or_insert(0);
                        *n += 1;
                        let level_warn = *n >= 3;
                        if level_warn {
                            tracing::warn!(controller = name, key = %key, error = %format!("{e:#}"), "reconcile failed");
                        } else {
                            tracing::debug!(controller = name, key = %key, error = %format!("{e:#}"), "reconcile failed");
                        }
                        let d = backoff(*n - 1);
                        schedule(key.clone(), Instant::now() + d, &mut due, &mut scheduled);
                    }
                }
                if took > Duration::from_secs(5) {
                    tracing::debug!(controller = name, key = %key, ?took, "slow reconcile");
                }
                if rerun.remove(&key) {
                    schedule(key, Instant::now(), &mut due, &mut scheduled);
                }
            },
            _ = async { match next { Some(at) => tokio::time::sleep_until(at).await, None => std::future::pending().await } } => {},
        }
    }
}
