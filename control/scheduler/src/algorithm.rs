//! One scheduling cycle: filter nodes (from a rotating start, stopping once enough feasible
//! nodes are found, as Kubernetes' `percentageOfNodesToScore` does), score the feasible ones,
//! pick the best (ties broken at random), or explain why nothing fits.

use crate::cache::Cache;
use crate::info::PodInfo;
use crate::plugins::{ClusterEvents, Code, Filter, Reason, Registry, Score};
use std::collections::HashMap;

/// The configured plug-ins, instantiated.
pub struct Profile {
    pub filters: Vec<Box<dyn Filter>>,
    pub scores: Vec<(Box<dyn Score>, i64)>,
    /// 0: adaptive (Kubernetes' default: 50% minus 1% per 125 nodes, at least 5%, at least 100 nodes).
    pub percentage_of_nodes_to_score: u32,
}

impl Profile {
    pub fn new(registry: &Registry, filters: &[String], scores: &[(String, i64)], pct: u32) -> anyhow::Result<Profile> {
        let filters = filters
            .iter()
            .map(|n| registry.filter(n).ok_or_else(|| anyhow::anyhow!("unknown filter plug-in {n:?}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let scores = scores
            .iter()
            .map(|(n, w)| {
                registry.score(n).map(|s| (s, *w)).ok_or_else(|| anyhow::anyhow!("unknown score plug-in {n:?}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Profile { filters, scores, percentage_of_nodes_to_score: pct.min(100) })
    }

    /// How many feasible nodes are enough to stop filtering.
    pub fn num_feasible_nodes_to_find(&self, all: usize) -> usize {
        const MIN_FEASIBLE: usize = 100;
        if all < MIN_FEASIBLE || self.percentage_of_nodes_to_score >= 100 {
            return all;
        }
        let pct = match self.percentage_of_nodes_to_score {
            0 => (50 - (all / 125) as i64).max(5) as usize,
            p => p as usize,
        };
        (all * pct / 100).max(MIN_FEASIBLE)
    }
}

/// Why a pod fits no node, rendered as Kubernetes renders its `FitError`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FitError {
    pub num_all_nodes: usize,
    /// Reason → number of nodes.
    pub reasons: Vec<(String, usize)>,
    /// Nodes where removing pods would not help / might help but there is nothing to preempt.
    pub preemption_not_helpful: usize,
    pub no_preemption_victims: usize,
    /// Cluster changes that could make some node fit.
    pub requeue_on: ClusterEvents,
}

impl FitError {
    pub fn message(&self) -> String {
        if self.num_all_nodes == 0 {
            return "no nodes available to schedule pods".into();
        }
        let n = self.num_all_nodes;
        let mut reasons: Vec<String> = self.reasons.iter().map(|(r, c)| format!("{c} {r}")).collect();
        reasons.sort();
        let mut preemption = Vec::new();
        if self.preemption_not_helpful > 0 {
            preemption.push(format!("{} Preemption is not helpful for scheduling", self.preemption_not_helpful));
        }
        if self.no_preemption_victims > 0 {
            preemption.push(format!("{} No preemption victims found for incoming pod", self.no_preemption_victims));
        }
        preemption.sort();
        format!(
            "0/{n} nodes are available: {}. preemption: 0/{n} nodes are available: {}.",
            reasons.join(", "),
            preemption.join(", ")
        )
    }
}

/// Reusable buffers and the rotating start of the node walk.
#[derive(Default)]
pub struct Algorithm {
    next_start: usize,
    feasible: Vec<usize>,
    failures: Vec<(usize, Reason)>,
    totals: Vec<i64>,
    raw: Vec<i64>,
    rng: u64,
}

impl Algorithm {
    pub fn new() -> Algorithm {
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        Algorithm { rng: seed | 1, ..Default::default() }
    }

    fn random(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Runs the filters in order; the first failing one gives the node's reasons.
    pub fn run_filters(profile: &Profile, pod: &PodInfo, node: &crate::info::NodeInfo) -> Result<(), (usize, Reason)> {
        for (i, f) in profile.filters.iter().enumerate() {
            f.filter(pod, node).map_err(|r| (i, r))?;
        }
        Ok(())
    }

    /// Picks a node for `pod`, or explains why none fits.
    pub fn schedule(&mut self, profile: &Profile, cache: &Cache, pod: &PodInfo) -> Result<String, FitError> {
        let all = cache.node_count();
        let nodes = &cache.nodes;
        let len = nodes.len();
        if all == 0 || len == 0 {
            return Err(FitError {
                num_all_nodes: 0,
                reasons: Vec::new(),
                preemption_not_helpful: 0,
                no_preemption_victims: 0,
                requeue_on: ClusterEvents::NODE_ADD,
            });
        }
        let want = profile.num_feasible_nodes_to_find(all);
        self.feasible.clear();
        self.failures.clear();
        let start = self.next_start % len;
        let mut visited = 0;
        for step in 0..len {
            let idx = (start + step) % len;
            visited = step + 1;
            let ni = &nodes[idx];
            if ni.node.is_none() {
                continue;
            }
            match Self::run_filters(profile, pod, ni) {
                Ok(()) => {
                    self.feasible.push(idx);
                    if self.feasible.len() >= want {
                        break;
                    }
                }
                Err(f) => self.failures.push(f),
            }
        }
        self.next_start = (start + visited) % len;
        if self.feasible.is_empty() {
            return Err(self.fit_error(profile, all));
        }
        if self.feasible.len() == 1 {
            return Ok(nodes[self.feasible[0]].name.clone());
        }
        self.totals.clear();
        self.totals.resize(self.feasible.len(), 0);
        for (plugin, weight) in &profile.scores {
            if *weight == 0 || !plugin.relevant(pod) {
                continue;
            }
            self.raw.clear();
            self.raw.extend(self.feasible.iter().map(|&i| plugin.score(pod, &nodes[i])));
            plugin.normalize(pod, &mut self.raw);
            for (t, s) in self.totals.iter_mut().zip(&self.raw) {
                *t += s * weight;
            }
        }
        // Highest total; ties broken uniformly at random (reservoir sampling).
        let (mut best, mut best_score, mut ties) = (0usize, i64::MIN, 0u64);
        for j in 0..self.totals.len() {
            let t = self.totals[j];
            if t > best_score {
                (best, best_score, ties) = (j, t, 1);
            } else if t == best_score {
                ties += 1;
                if self.random() % ties == 0 {
                    best = j;
                }
            }
        }
        Ok(nodes[self.feasible[best]].name.clone())
    }

    fn fit_error(&self, profile: &Profile, all: usize) -> FitError {
        let mut hist: HashMap<&str, usize> = HashMap::new();
        let (mut not_helpful, mut no_victims) = (0, 0);
        let mut requeue_on = ClusterEvents::NODE_ADD;
        for (fi, r) in &self.failures {
            for reason in &r.reasons {
                *hist.entry(reason.as_ref()).or_insert(0) += 1;
            }
            match r.code {
                Code::Unschedulable => no_victims += 1,
                Code::UnschedulableAndUnresolvable => not_helpful += 1,
            }
            requeue_on |= profile.filters[*fi].requeue_on();
        }
        FitError {
            num_all_nodes: all,
            reasons: hist.into_iter().map(|(r, c)| (r.to_string(), c)).collect(),
            preemption_not_helpful: not_helpful,
            no_preemption_victims: no_victims,
            requeue_on,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Node, Pod};
    use serde_json::json;
    use std::sync::Arc;

    fn node(name: &str, cpu: &str, extra: serde_json::Value) -> Node {
        let mut n = json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {},
            "status": {
                "allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        });
        merge(&mut n, extra);
        serde_json::from_value(n).unwrap()
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn pod(name: &str, cpu: &str, extra: serde_json::Value) -> Arc<PodInfo> {
        let mut p = json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
            "spec": {"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": cpu}}}]}
        });
        merge(&mut p, extra);
        Arc::new(PodInfo::new(Arc::new(serde_json::from_value::<Pod>(p).unwrap())))
    }

    fn profile() -> Profile {
        let filters: Vec<String> = crate::plugins::DEFAULT_FILTERS.iter().map(|s| s.to_string()).collect();
        let scores: Vec<(String, i64)> =
            crate::plugins::DEFAULT_SCORES.iter().map(|(s, w)| (s.to_string(), *w)).collect();
        Profile::new(&Registry::default(), &filters, &scores, 0).unwrap()
    }

    #[test]
    fn message_format_matches_kubernetes() {
        let mut cache = Cache::default();
        cache.upsert_node(node("a", "1", json!({})));
        cache.upsert_node(node(
            "b",
            "8",
            json!({"spec": {"taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]}}),
        ));
        cache.upsert_node(node(
            "c",
            "8",
            json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoExecute"}]}}),
        ));
        let mut alg = Algorithm::new();
        let err = alg.schedule(&profile(), &cache, &pod("p", "2", json!({}))).unwrap_err();
        assert_eq!(
            err.message(),
            "0/3 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {dedicated: gpu}, \
             1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }. \
             preemption: 0/3 nodes are available: 1 No preemption victims found for incoming pod, \
             2 Preemption is not helpful for scheduling."
        );
        assert!(err.requeue_on.intersects(ClusterEvents::POD_DELETE));
        let none = alg.schedule(&profile(), &Cache::default(), &pod("p", "2", json!({}))).unwrap_err();
        assert_eq!(none.message(), "no nodes available to schedule pods");
    }

    #[test]
    fn filters() {
        let p = profile();
        let mut cache = Cache::default();
        cache.upsert_node(node("ssd", "4", json!({"metadata": {"labels": {"disk": "ssd"}}})));
        cache.upsert_node(node("cordoned", "4", json!({"spec": {"unschedulable": true}})));
        cache.upsert_node(node(
            "notready",
            "4",
            json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
        ));
        cache.upsert_node(node(
            "gpu",
            "4",
            json!({"spec": {"taints": [{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]}}),
        ));
        let mut alg = Algorithm::new();
        // Only "ssd" takes an ordinary pod.
        for i in 0..5 {
            assert_eq!(alg.schedule(&p, &cache, &pod(&format!("p{i}"), "100m", json!({}))).unwrap(), "ssd");
        }
        let sel = pod("sel", "100m", json!({"spec": {"nodeSelector": {"disk": "hdd"}}}));
        assert_eq!(
            alg.schedule(&p, &cache, &sel).unwrap_err().message(),
            "0/4 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, \
             1 node(s) had untolerated taint {gpu: yes}, 1 node(s) were not ready, 1 node(s) were unschedulable. \
             preemption: 0/4 nodes are available: 4 Preemption is not helpful for scheduling."
        );
        let tol = pod(
            "tol",
            "100m",
            json!({"spec": {"tolerations": [{"key": "gpu", "operator": "Exists"}],
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "disk", "operator": "DoesNotExist"}]}]}}}}}),
        );
        assert_eq!(alg.schedule(&p, &cache, &tol).unwrap(), "gpu");
        let by_field = pod(
            "f",
            "100m",
            json!({"spec": {"tolerations": [{"operator": "Exists"}],
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["cordoned"]}]}]}}}}}),
        );
        assert_eq!(alg.schedule(&p, &cache, &by_field).unwrap(), "cordoned");
        // Host ports.
        let hp = json!({"spec": {"containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}});
        let a = pod("hp-a", "100m", hp.clone());
        assert_eq!(alg.schedule(&p, &cache, &a).unwrap(), "ssd");
        cache.assume(a, "ssd");
        let b = pod("hp-b", "100m", hp);
        let msg = alg.schedule(&p, &cache, &b).unwrap_err().message();
        assert!(
            msg.starts_with("0/4 nodes are available: 1 node(s) didn't have free ports for the requested pod ports, "),
            "{msg}"
        );
        assert!(
            msg.ends_with(
                "1 No preemption victims found for incoming pod, 3 Preemption is not helpful for scheduling."
            ),
            "{msg}"
        );
        // Pod count and memory.
        let mut small = Cache::default();
        small.upsert_node(node("tiny", "4", json!({"status": {"allocatable": {"pods": "1", "memory": "1Gi"}}})));
        let big = pod(
            "m",
            "100m",
            json!({"spec": {"containers": [{"name": "c", "image": "x", "resources": {"requests": {"memory": "2Gi"}}}]}}),
        );
        assert_eq!(
            alg.schedule(&p, &small, &big).unwrap_err().message(),
            "0/1 nodes are available: 1 Insufficient memory. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."
        );
        small.assume(pod("x", "100m", json!({})), "tiny");
        assert!(
            alg.schedule(&p, &small, &pod("y", "100m", json!({}))).unwrap_err().message().contains("1 Too many pods")
        );
    }

    #[test]
    fn spreads_owner_and_prefers_free_nodes() {
        let p = profile();
        let mut cache = Cache::default();
        for n in ["n1", "n2", "n3"] {
            cache.upsert_node(node(n, "4", json!({})));
        }
        let mut alg = Algorithm::new();
        let owner = json!({"metadata": {"ownerReferences": [{"apiVersion": "v1", "kind": "ReplicationController", "name": "rc", "uid": "rc-1", "controller": true}]}});
        let mut counts: HashMap<String, usize> = HashMap::new();
        for i in 0..6 {
            let pi = pod(&format!("p{i}"), "100m", owner.clone());
            let n = alg.schedule(&p, &cache, &pi).unwrap();
            cache.assume(pi, &n);
            *counts.entry(n).or_default() += 1;
        }
        assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![2, 2, 2], "{counts:?}");
        // A heavily loaded node is avoided by an unowned pod.
        let mut c2 = Cache::default();
        c2.upsert_node(node("busy", "4", json!({})));
        c2.upsert_node(node("idle", "4", json!({})));
        c2.assume(pod("hog", "3", json!({})), "busy");
        for i in 0..5 {
            assert_eq!(alg.schedule(&p, &c2, &pod(&format!("q{i}"), "100m", json!({}))).unwrap(), "idle");
        }
        // Removing an assumed pod frees its resources.
        assert!(c2.forget("default/hog", "uid-hog"));
        assert_eq!(c2.node("busy").unwrap().requested.milli_cpu, 0);
    }

    /// The in-memory cost of a cycle at 5,000 nodes (`cargo test -p skiff-scheduler --release
    /// -- --ignored --nocapture cycle_cost`).
    #[test]
    #[ignore]
    fn cycle_cost() {
        let p = profile();
        let mut cache = Cache::default();
        for i in 0..5000 {
            cache.upsert_node(node(&format!("node-{i}"), "32", json!({})));
        }
        let mut alg = Algorithm::new();
        let owner = json!({"metadata": {"ownerReferences": [{"apiVersion": "v1", "kind": "ReplicationController", "name": "rc", "uid": "rc-1", "controller": true}]}});
        let pods: Vec<_> = (0..10_000).map(|i| pod(&format!("p{i}"), "100m", owner.clone())).collect();
        let t = std::time::Instant::now();
        for pi in pods {
            let n = alg.schedule(&p, &cache, &pi).unwrap();
            cache.assume(pi, &n);
        }
        let el = t.elapsed();
        println!("10000 pods on 5000 nodes: {el:?} ({:.0} pods/s)", 10_000.0 / el.as_secs_f64());
    }

    #[test]
    fn node_count_to_score() {
        let p = profile();
        assert_eq!(p.num_feasible_nodes_to_find(50), 50);
        assert_eq!(p.num_feasible_nodes_to_find(1000), 420);
        assert_eq!(p.num_feasible_nodes_to_find(5000), 500);
        assert_eq!(p.num_feasible_nodes_to_find(100_000), 5000);
    }
}
