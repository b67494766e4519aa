//! The scheduling queue: pods waiting to be scheduled (active, FIFO), pods waiting out a backoff
//! after a failed attempt, and unschedulable pods parked until a cluster change that could help
//! them (or a periodic flush) moves them back — never a hot loop.

use crate::info::PodInfo;
use crate::plugins::ClusterEvents;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Unschedulable pods are retried at least this often even without a matching change.
pub const UNSCHEDULABLE_FLUSH: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Active,
    Backoff,
    Unschedulable,
    /// Popped: being scheduled or bound.
    InFlight,
}

struct Entry {
    info: Arc<PodInfo>,
    state: State,
    /// Bumped on every state change; heap/deque items with an older generation are stale.
    generation: u64,
    attempts: u32,
    last_attempt: Option<Instant>,
    requeue_on: ClusterEvents,
}

impl Entry {
    fn backoff_until(&self) -> Option<Instant> {
        let last = self.last_attempt?;
        if self.attempts == 0 {
            return None;
        }
        let exp = (self.attempts - 1).min(16);
        Some(last + INITIAL_BACKOFF.saturating_mul(1 << exp).min(MAX_BACKOFF))
    }
}

#[derive(Default)]
pub struct Queue {
    entries: HashMap<String, Entry>,
    active: VecDeque<(String, u64)>,
    backoff: BinaryHeap<Reverse<(Instant, u64, String)>>,
    unschedulable: HashSet<String>,
    next_generation: u64,
    last_scan: Option<Instant>,
}

impl Queue {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    pub fn keys(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    pub fn unschedulable_count(&self) -> usize {
        self.unschedulable.len()
    }

    pub fn has_active(&self) -> bool {
        !self.active.is_empty()
    }

    fn transition(&mut self, key: &str, to: State, now: Instant) {
        let generation = self.next_generation;
        self.next_generation += 1;
        let Some(e) = self.entries.get_mut(key) else { return };
        if e.state == State::Unschedulable {
            self.unschedulable.remove(key);
        }
        e.generation = generation;
        // A pod that still has backoff to wait goes to the backoff queue instead.
        let to = match (to, e.backoff_until()) {
            (State::Active, Some(until)) if until > now => State::Backoff,
            _ => to,
        };
        e.state = to;
        match to {
            State::Active => self.active.push_back((key.to_string(), generation)),
            State::Backoff => {
                let until = e.backoff_until().unwrap_or(now);
                self.backoff.push(Reverse((until, generation, key.to_string())));
            }
            State::Unschedulable => {
                self.unschedulable.insert(key.to_string());
            }
            State::InFlight => {}
        }
    }

    /// A pending pod seen by the watch. New pods become active; an unschedulable pod whose spec
    /// changed is retried (subject to its backoff).
    pub fn add_or_update(&mut self, info: Arc<PodInfo>, now: Instant) {
        let key = info.key.clone();
        match self.entries.get_mut(&key) {
            Some(e) if e.info.uid == info.uid => {
                let spec_changed = e.info.pod.spec != info.pod.spec;
                e.info = info;
                if spec_changed && e.state == State::Unschedulable {
                    self.transition(&key, State::Active, now);
                }
            }
            _ => {
                self.entries.insert(
                    key.clone(),
                    Entry {
                        info,
                        state: State::InFlight,
                        generation: 0,
                        attempts: 0,
                        last_attempt: None,
                        requeue_on: ClusterEvents::NONE,
                    },
                );
                self.unschedulable.remove(&key);
                self.transition(&key, State::Active, now);
            }
        }
    }

    pub fn remove(&mut self, key: &str) {
        if self.entries.remove(key).is_some() {
            self.unschedulable.remove(key);
        }
    }

    /// The next pod to schedule; it stays in the queue (in flight) until bound, removed or failed.
    pub fn pop(&mut self) -> Option<Arc<PodInfo>> {
        while let Some((key, generation)) = self.active.pop_front() {
            let Some(e) = self.entries.get_mut(&key) else { continue };
            if e.generation != generation || e.state != State::Active {
                continue;
            }
            e.state = State::InFlight;
            return Some(e.info.clone());
        }
        None
    }

    pub fn current(&self, key: &str) -> Option<&Arc<PodInfo>> {
        self.entries.get(key).map(|e| &e.info)
    }

    /// The pod did not fit: park it until a change in `requeue_on` (or the periodic flush).
    pub fn unschedulable(&mut self, key: &str, requeue_on: ClusterEvents, now: Instant) {
        if let Some(e) = self.entries.get_mut(key) {
            e.attempts += 1;
            e.last_attempt = Some(now);
            e.requeue_on = requeue_on;
            self.transition(key, State::Unschedulable, now);
        }
    }

    /// An error (binding failed, API trouble): retry after the backoff.
    pub fn backoff(&mut self, key: &str, now: Instant) {
        if let Some(e) = self.entries.get_mut(key) {
            e.attempts += 1;
            e.last_attempt = Some(now);
            self.transition(key, State::Backoff, now);
        }
    }

    /// Cluster changes happened: retry the unschedulable pods they could help.
    pub fn move_unschedulable(&mut self, events: ClusterEvents, now: Instant) -> usize {
        if events == ClusterEvents::NONE || self.unschedulable.is_empty() {
            return 0;
        }
        let keys: Vec<String> = self
            .unschedulable
            .iter()
            .filter(|k| self.entries.get(*k).is_some_and(|e| e.requeue_on.intersects(events)))
            .cloned()
            .collect();
        for k in &keys {
            self.transition(k, State::Active, now);
        }
        keys.len()
    }

    /// Moves pods whose backoff has passed to the active queue, and unschedulable pods parked
    /// longer than [`UNSCHEDULABLE_FLUSH`] back for another try.
    pub fn flush(&mut self, now: Instant) {
        while let Some(Reverse((until, generation, key))) = self.backoff.peek().cloned() {
            if until > now {
                break;
            }
            self.backoff.pop();
            if self.entries.get(&key).is_some_and(|e| e.generation == generation && e.state == State::Backoff) {
                self.transition(&key, State::Active, now);
            }
        }
        let scan_due = self.last_scan.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
        if !self.unschedulable.is_empty() && scan_due {
            self.last_scan = Some(now);
            let stale: Vec<String> = self
                .unschedulable
                .iter()
                .filter(|k| {
                    self.entries
                        .get(*k)
                        .and_then(|e| e.last_attempt)
                        .is_none_or(|t| now.duration_since(t) >= UNSCHEDULABLE_FLUSH)
                })
                .cloned()
                .collect();
            for k in &stale {
                self.transition(k, State::Active, now);
            }
        }
    }

    /// When [`Queue::flush`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let backoff = self.backoff.peek().map(|Reverse((t, _, _))| *t);
        let unsched = if self.unschedulable.is_empty() {
            None
        } else {
            // Coarse: check once a second while pods are parked.
            Some(Instant::now() + Duration::from_secs(1))
        };
        match (backoff, unsched) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    fn pod(name: &str) -> Arc<PodInfo> {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.namespace = Some("default".into());
        p.metadata.uid = Some(format!("uid-{name}"));
        Arc::new(PodInfo::new(Arc::new(p)))
    }

    #[test]
    fn fifo_backoff_and_moves() {
        let mut q = Queue::default();
        let t0 = Instant::now();
        q.add_or_update(pod("a"), t0);
        q.add_or_update(pod("b"), t0);
        assert_eq!(q.pop().unwrap().key, "default/a");
        assert_eq!(q.pop().unwrap().key, "default/b");
        assert!(q.pop().is_none());
        // a is unschedulable for node problems: a pod deletion does not move it, a node update does.
        q.unschedulable("default/a", ClusterEvents::NODE_UPDATE, t0);
        assert_eq!(q.move_unschedulable(ClusterEvents::POD_DELETE, t0), 0);
        assert_eq!(q.move_unschedulable(ClusterEvents::NODE_UPDATE, t0), 1);
        // ... but waits out its 1 s backoff first.
        assert!(q.pop().is_none());
        q.flush(t0 + Duration::from_millis(500));
        assert!(q.pop().is_none());
        q.flush(t0 + Duration::from_millis(1000));
        assert_eq!(q.pop().unwrap().key, "default/a");
        // Backoff doubles.
        let t1 = t0 + Duration::from_secs(1);
        q.backoff("default/a", t1);
        q.flush(t1 + Duration::from_millis(1999));
        assert!(q.pop().is_none());
        q.flush(t1 + Duration::from_secs(2));
        assert_eq!(q.pop().unwrap().key, "default/a");
        // Periodic flush of parked pods.
        q.unschedulable("default/b", ClusterEvents::NODE_ADD, t0);
        q.flush(t0 + UNSCHEDULABLE_FLUSH);
        assert_eq!(q.pop().unwrap().key, "default/b");
        q.remove("default/a");
        q.remove("default/b");
        assert!(q.is_empty());
    }
}
