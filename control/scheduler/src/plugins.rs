//! Filter and score plug-ins, and the registry that turns configured names into plug-ins.
//!
//! Filters and reasons follow Kubernetes' plug-ins of the same names, so `FailedScheduling`
//! messages read as users know them.

use crate::info::{NodeInfo, PodInfo, Readiness, tolerated};
use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, Taint};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The highest score a score plug-in gives after normalization (Kubernetes' `MaxNodeScore`).
pub const MAX_NODE_SCORE: i64 = 100;

/// How a node failed a filter (Kubernetes' status codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// Might fit if pods were removed from the node (resources, ports): preemption could help.
    Unschedulable,
    /// Removing pods would not help (taints, selectors, cordon).
    UnschedulableAndUnresolvable,
}

/// Why a node does not fit a pod: one or more reasons, as they appear in `FailedScheduling`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reason {
    pub code: Code,
    pub reasons: Vec<Cow<'static, str>>,
}

impl Reason {
    pub fn unresolvable(r: impl Into<Cow<'static, str>>) -> Reason {
        Reason { code: Code::UnschedulableAndUnresolvable, reasons: vec![r.into()] }
    }
    pub fn unschedulable(r: impl Into<Cow<'static, str>>) -> Reason {
        Reason { code: Code::Unschedulable, reasons: vec![r.into()] }
    }
}

/// Kinds of cluster changes; a pod that failed is retried when a change one of the filters that
/// rejected it cares about happens (Kubernetes' queueing hints, coarsely).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterEvents(pub u8);

impl ClusterEvents {
    pub const NONE: ClusterEvents = ClusterEvents(0);
    pub const NODE_ADD: ClusterEvents = ClusterEvents(1);
    /// A node's labels, taints, allocatable, readiness or cordon changed.
    pub const NODE_UPDATE: ClusterEvents = ClusterEvents(2);
    /// A pod left a node (deleted, finished, or an assumed binding was dropped).
    pub const POD_DELETE: ClusterEvents = ClusterEvents(4);
    pub const ALL: ClusterEvents = ClusterEvents(7);

    pub fn intersects(self, o: ClusterEvents) -> bool {
        self.0 & o.0 != 0
    }
}

impl std::ops::BitOr for ClusterEvents {
    type Output = ClusterEvents;
    fn bitor(self, o: ClusterEvents) -> ClusterEvents {
        ClusterEvents(self.0 | o.0)
    }
}

impl std::ops::BitOrAssign for ClusterEvents {
    fn bitor_assign(&mut self, o: ClusterEvents) {
        self.0 |= o.0;
    }
}

/// A filter plug-in: may `pod` run on this node? The node object is `node.node`.
pub trait Filter: Send + Sync {
    fn name(&self) -> &str;
    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Reason>;
    /// Cluster changes after which a node this filter rejected might fit.
    fn requeue_on(&self) -> ClusterEvents {
        ClusterEvents::ALL
    }
}

/// A score plug-in: how much does `pod` like a feasible node.
pub trait Score: Send + Sync {
    fn name(&self) -> &str;
    /// Whether this plug-in can tell nodes apart for `pod` at all; when not, it is skipped.
    fn relevant(&self, _pod: &PodInfo) -> bool {
        true
    }
    /// The raw score of one feasible node.
    fn score(&self, pod: &PodInfo, node: &NodeInfo) -> i64;
    /// Maps the raw scores of all feasible nodes onto `0..=MAX_NODE_SCORE`.
    fn normalize(&self, _pod: &PodInfo, scores: &mut [i64]) {
        for s in scores {
            *s = (*s).clamp(0, MAX_NODE_SCORE);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Filters

const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";
const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

fn no_schedule_taint(key: &str) -> Taint {
    Taint { key: key.to_string(), effect: "NoSchedule".into(), value: None, time_added: None }
}

/// The node's Ready condition is True (or the pod tolerates the matching `NoSchedule` taint
/// the node lifecycle controller would put on it).
pub struct NodeReady;
impl Filter for NodeReady {
    fn name(&self) -> &str {
        "NodeReady"
    }
    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Reason> {
        let key = match node.readiness {
            Readiness::Ready => return Ok(()),
            Readiness::NotReady => NOT_READY_TAINT,
            Readiness::Unknown => UNREACHABLE_TAINT,
        };
        if tolerated(pod.tolerations(), &no_schedule_taint(key)) {
            return Ok(());
        }
        Err(Reason::unresolvable("node(s) were not ready"))
    }
    fn requeue_on(&self) -> ClusterEvents {
        ClusterEvents::NODE_ADD | ClusterEvents::NODE_UPDATE
    }
}

/// Cordoned nodes (`spec.unschedulable`) take only pods tolerating
/// `node.kubernetes.io/unschedulable:NoSchedule`.
pub struct NodeUnschedulable;
impl Filter for NodeUnschedulable {
    fn name(&self) -> &str {
        "NodeUnschedulable"
    }
    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Reason> {
        if node.unschedulable && !tolerated(pod.tolerations(), &no_schedule_taint(UNSCHEDULABLE_TAINT)) {
            return Err(Reason::unresolvable("node(s) were unschedulable"));
        }
        Ok(())
    }
    fn requeue_on(&self) -> ClusterEvents {
        ClusterEvents::NODE_ADD | ClusterEvents::NODE_UPDATE
    }
}

/// `NoSchedule` and `NoExecute` taints must be tolerated.
pub struct TaintToleration;
impl Filter for TaintToleration {
    fn name(&self) -> &str {
        "TaintToleration"
    }
    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Reason> {
        let tolerations = pod.tolerations();
        for t in node.taints() {
            if (t.effect == "NoSchedule" || t.effect == "NoExecute") && !tolerated(tolerations, t) {
                let v = t.value.as_deref().unwrap_or("");
                return Err(Reason::unresolvable(format!("node(s) had untolerated taint {{{}: {v}}}", t.key)));
            }
        }
        Ok(())
    }
    fn requeue_on(&self) -> ClusterEvents {
        ClusterEvents::NODE_ADD | ClusterEvents::NODE_UPDATE
    }
}

/// `spec.nodeSelector` and required node affinity.
pub struct NodeAffinity;
impl Filter for NodeAffinity {
    fn name(&self) -> &str {
        "NodeAffinity"
    }
    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Reason> {
        if required_node_affinity_matches(pod, node) {
            Ok(())
        } else {
            Err(Reason::unresolvable("node(s) didn't match Pod's node affinity/selector"))
        }
    }
    fn requeue_on(&self) -> ClusterEvents {
        ClusterEvents::NODE_ADD | ClusterEvents::NODE_UPDATE
    }
}

static EMPTY_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// `nodeSelector` and `requiredDuringSchedulingIgnoredDuringExecution` both hold.
pub fn required_node_affinity_matches(pod: &PodInfo, node: &NodeInfo) -> bool {
    let Some(spec) = pod.pod.spec.as_ref() else { return true };
    let labels = node.labels().unwrap_or(&EMPTY_LABELS);
    if let Some(sel) = &spec.node_selector {
        if !sel.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            return false;
        }
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref());
    match required {
        None => true,
        Some(ns) => ns.node_selector_terms.iter().any(|t| term_matches(t, &node.name, labels)),
    }
}

/// A node selector term: all its expressions hold; a term without expressions matches nothing.
pub fn term_matches(t: &NodeSelectorTerm, node_name: &str, labels: &BTreeMap<String, String>) -> bool {
    let exprs = t.match_expressions.as_deref().unwrap_or(&[]);
    let fields = t.match_fields.as_deref().unwrap_or(&[]);
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs.iter().all(|e| requirement_matches(e, labels.get(&e.key).map(String::as_str)))
        && fields.iter().all(|e| e.key == "metadata.name" && requirement_matches(e, Some(node_name)))
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or(&[]);
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) =
                (value.and_then(|v| v.parse::<i64>().ok()), values.first().and_then(|b| b.parse::<i64>().ok()))
            else {
                return false;
            };
            if r.operator == "Gt" { v > bound } else { v < bound }
        }
        _ => false,
    }
}

/// Host ports must be free on the node.
pub struct NodePorts;
impl Filter for NodePorts {
    fn name(&self) -> &str {
        "NodePorts"
    }
    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Reason> {
        if pod.host_ports.iter().any(|p| node.used_ports.iter().any(|u| u.conflicts(p))) {
            return Err(Reason::unschedulable("node(s) didn't have free ports for the requested pod ports"));
        }
        Ok(())
    }
    fn requeue_on(&self) -> ClusterEvents {
        ClusterEvents::NODE_ADD | ClusterEvents::POD_DELETE
    }
}

/// Requests fit `status.allocatable` minus the requests of the pods on the node; pod count
/// fits `allocatable.pods`.
pub struct NodeResourcesFit;
impl Filter for NodeResourcesFit {
    fn name(&self) -> &str {
        "NodeResourcesFit"
    }
    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Reason> {
        let mut reasons: Vec<Cow<'static, str>> = Vec::new();
        if node.pod_count as i64 + 1 > node.allowed_pod_number {
            reasons.push("Too many pods".into());
        }
        let (r, a, u) = (&pod.requests, &node.allocatable, &node.requested);
        if r.milli_cpu > 0 && r.milli_cpu > a.milli_cpu - u.milli_cpu {
            reasons.push("Insufficient cpu".into());
        }
        if r.memory > 0 && r.memory > a.memory - u.memory {
            reasons.push("Insufficient memory".into());
        }
        if r.ephemeral_storage > 0 && r.ephemeral_storage > a.ephemeral_storage - u.ephemeral_storage {
            reasons.push("Insufficient ephemeral-storage".into());
        }
        for (name, v) in &r.scalars {
            if *v > 0 && *v > a.scalar(name) - u.scalar(name) {
                reasons.push(format!("Insufficient {name}").into());
            }
        }
        if reasons.is_empty() { Ok(()) } else { Err(Reason { code: crate::plugins::Code::Unschedulable, reasons }) }
    }
    fn requeue_on(&self) -> ClusterEvents {
        ClusterEvents::ALL
    }
}

// ---------------------------------------------------------------------------------------------
// Scores

/// Prefers nodes with more free cpu and memory (Kubernetes' `NodeResourcesFit` LeastAllocated
/// strategy), counting unset requests as 100m / 200Mi.
pub struct LeastAllocated;
impl Score for LeastAllocated {
    fn name(&self) -> &str {
        "LeastAllocated"
    }
    fn score(&self, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let free = |requested: i64, capacity: i64| {
            if capacity <= 0 || requested > capacity { 0 } else { (capacity - requested) * MAX_NODE_SCORE / capacity }
        };
        let cpu = free(node.non_zero_milli_cpu + pod.non_zero_milli_cpu, node.allocatable.milli_cpu);
        let mem = free(node.non_zero_memory + pod.non_zero_memory, node.allocatable.memory);
        (cpu + mem) / 2
    }
}

/// Prefers nodes where cpu and memory would be used in equal fractions
/// (Kubernetes' `NodeResourcesBalancedAllocation`).
pub struct BalancedAllocation;
impl Score for BalancedAllocation {
    fn name(&self) -> &str {
        "BalancedAllocation"
    }
    fn score(&self, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let frac = |requested: i64, capacity: i64| {
            if capacity <= 0 { 1.0 } else { (requested as f64 / capacity as f64).min(1.0) }
        };
        let c = frac(node.non_zero_milli_cpu + pod.non_zero_milli_cpu, node.allocatable.milli_cpu);
        let m = frac(node.non_zero_memory + pod.non_zero_memory, node.allocatable.memory);
        // The standard deviation of two fractions is half their distance.
        let std = (c - m).abs() / 2.0;
        ((1.0 - std) * MAX_NODE_SCORE as f64) as i64
    }
}

/// Spreads the pods of one controller (`ownerReferences[controller]`) across nodes: the fewer
/// pods of the same owner a node has, the better (Kubernetes' `SelectorSpread`).
pub struct SelectorSpread;
impl Score for SelectorSpread {
    fn name(&self) -> &str {
        "SelectorSpread"
    }
    fn relevant(&self, pod: &PodInfo) -> bool {
        pod.owner_uid.is_some()
    }
    fn score(&self, pod: &PodInfo, node: &NodeInfo) -> i64 {
        pod.owner_uid.as_deref().map_or(0, |o| node.owner_count(o) as i64)
    }
    fn normalize(&self, _pod: &PodInfo, scores: &mut [i64]) {
        let max = scores.iter().copied().max().unwrap_or(0);
        for s in scores {
            *s = if max == 0 { MAX_NODE_SCORE } else { MAX_NODE_SCORE * (max - *s) / max };
        }
    }
}

/// Preferred node affinity: the sum of the weights of the matching preferred terms.
pub struct NodeAffinityScore;
impl Score for NodeAffinityScore {
    fn name(&self) -> &str {
        "NodeAffinity"
    }
    fn relevant(&self, pod: &PodInfo) -> bool {
        preferred_terms(pod).is_some_and(|p| !p.is_empty())
    }
    fn score(&self, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let labels = node.labels().unwrap_or(&EMPTY_LABELS);
        preferred_terms(pod)
            .unwrap_or(&[])
            .iter()
            .filter(|t| t.weight != 0 && term_matches(&t.preference, &node.name, labels))
            .map(|t| t.weight as i64)
            .sum()
    }
    fn normalize(&self, _pod: &PodInfo, scores: &mut [i64]) {
        let max = scores.iter().copied().max().unwrap_or(0);
        if max > 0 {
            for s in scores {
                *s = MAX_NODE_SCORE * (*s).max(0) / max;
            }
        }
    }
}

fn preferred_terms(pod: &PodInfo) -> Option<&[k8s_openapi::api::core::v1::PreferredSchedulingTerm]> {
    pod.pod
        .spec
        .as_ref()?
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .preferred_during_scheduling_ignored_during_execution
        .as_deref()
}

/// Prefers nodes with fewer `PreferNoSchedule` taints the pod does not tolerate.
pub struct TaintTolerationScore;
impl Score for TaintTolerationScore {
    fn name(&self) -> &str {
        "TaintToleration"
    }
    fn score(&self, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let tol = pod.tolerations();
        node.taints().iter().filter(|t| t.effect == "PreferNoSchedule" && !tolerated(tol, t)).count() as i64
    }
    fn normalize(&self, _pod: &PodInfo, scores: &mut [i64]) {
        let max = scores.iter().copied().max().unwrap_or(0);
        for s in scores {
            *s = if max == 0 { MAX_NODE_SCORE } else { MAX_NODE_SCORE - MAX_NODE_SCORE * *s / max };
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Registry

type FilterFactory = Arc<dyn Fn() -> Box<dyn Filter> + Send + Sync>;
type ScoreFactory = Arc<dyn Fn() -> Box<dyn Score> + Send + Sync>;

/// Plug-ins by name. [`Registry::default`] holds the built-in ones; add your own with
/// [`Registry::with_filter`] / [`Registry::with_score`] and name them in the configuration.
#[derive(Clone)]
pub struct Registry {
    filters: HashMap<String, FilterFactory>,
    scores: HashMap<String, ScoreFactory>,
}

/// Built-in filters in Kubernetes' order (the first failing filter names a node's reason).
pub const DEFAULT_FILTERS: &[&str] =
    &["NodeReady", "NodeUnschedulable", "TaintToleration", "NodeAffinity", "NodePorts", "NodeResourcesFit"];

/// Built-in scores and their default weights (Kubernetes' weights for the equivalents).
pub const DEFAULT_SCORES: &[(&str, i64)] = &[
    ("LeastAllocated", 1),
    ("BalancedAllocation", 1),
    ("SelectorSpread", 2),
    ("NodeAffinity", 2),
    ("TaintToleration", 3),
];

impl Default for Registry {
    fn default() -> Registry {
        Registry { filters: HashMap::new(), scores: HashMap::new() }
            .with_filter("NodeReady", || Box::new(NodeReady))
            .with_filter("NodeUnschedulable", || Box::new(NodeUnschedulable))
            .with_filter("TaintToleration", || Box::new(TaintToleration))
            .with_filter("NodeAffinity", || Box::new(NodeAffinity))
            .with_filter("NodePorts", || Box::new(NodePorts))
            .with_filter("NodeResourcesFit", || Box::new(NodeResourcesFit))
            .with_score("LeastAllocated", || Box::new(LeastAllocated))
            .with_score("BalancedAllocation", || Box::new(BalancedAllocation))
            .with_score("SelectorSpread", || Box::new(SelectorSpread))
            .with_score("NodeAffinity", || Box::new(NodeAffinityScore))
            .with_score("TaintToleration", || Box::new(TaintTolerationScore))
    }
}

impl Registry {
    pub fn with_filter(mut self, name: &str, f: impl Fn() -> Box<dyn Filter> + Send + Sync + 'static) -> Registry {
        self.filters.insert(name.to_string(), Arc::new(f));
        self
    }

    pub fn with_score(mut self, name: &str, f: impl Fn() -> Box<dyn Score> + Send + Sync + 'static) -> Registry {
        self.scores.insert(name.to_string(), Arc::new(f));
        self
    }

    pub fn filter(&self, name: &str) -> Option<Box<dyn Filter>> {
        self.filters.get(name).map(|f| f())
    }

    pub fn score(&self, name: &str) -> Option<Box<dyn Score>> {
        self.scores.get(name).map(|f| f())
    }
}
