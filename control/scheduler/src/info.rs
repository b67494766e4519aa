//! What the plug-ins look at: a pod's scheduling facts computed once per pod ([`PodInfo`]) and
//! a node's facts plus the running totals of the pods bound or assumed on it ([`NodeInfo`]), kept
//! up to date incrementally so a scheduling cycle never walks the pods of a node.

use k8s_openapi::api::core::v1::{Container, Node, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use skiff_apimachinery::quantity::{milli, units};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Kubernetes' defaults for containers without requests, used by the scoring plug-ins only
/// (so best-effort pods still spread): 100 millicores and 200 MiB.
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 << 20;

/// Amounts of the resources the scheduler accounts for. `scalars` holds extended resources
/// (`example.com/gpu`, `hugepages-2Mi`, ...) in whole units.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    pub scalars: Vec<(String, i64)>,
}

impl Resources {
    pub fn from_list(list: Option<&BTreeMap<String, Quantity>>) -> Resources {
        let mut r = Resources::default();
        for (name, q) in list.into_iter().flatten() {
            match name.as_str() {
                "cpu" => r.milli_cpu = milli(&q.0),
                "memory" => r.memory = units(&q.0),
                "ephemeral-storage" => r.ephemeral_storage = units(&q.0),
                "pods" => {}
                other => r.set_scalar(other, units(&q.0)),
            }
        }
        r
    }

    pub fn scalar(&self, name: &str) -> i64 {
        self.scalars.iter().find(|(n, _)| n == name).map_or(0, |(_, v)| *v)
    }

    fn set_scalar(&mut self, name: &str, v: i64) {
        match self.scalars.iter_mut().find(|(n, _)| n == name) {
            Some(e) => e.1 = v,
            None => self.scalars.push((name.to_string(), v)),
        }
    }

    pub fn add(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_add(o.milli_cpu);
        self.memory = self.memory.saturating_add(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.saturating_add(o.ephemeral_storage);
        for (n, v) in &o.scalars {
            let cur = self.scalar(n);
            self.set_scalar(n, cur.saturating_add(*v));
        }
    }

    pub fn sub(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_sub(o.milli_cpu);
        self.memory = self.memory.saturating_sub(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.saturating_sub(o.ephemeral_storage);
        for (n, v) in &o.scalars {
            let cur = self.scalar(n);
            self.set_scalar(n, cur.saturating_sub(*v));
        }
        self.scalars.retain(|(_, v)| *v != 0);
    }

    fn max_with(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.max(o.milli_cpu);
        self.memory = self.memory.max(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(o.ephemeral_storage);
        for (n, v) in &o.scalars {
            let cur = self.scalar(n);
            self.set_scalar(n, cur.max(*v));
        }
    }

    pub fn is_zero(&self) -> bool {
        self.milli_cpu == 0
            && self.memory == 0
            && self.ephemeral_storage == 0
            && self.scalars.iter().all(|(_, v)| *v == 0)
    }
}

/// A host port a pod asks for (`containers[].ports[].hostPort`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub protocol: String,
    pub ip: String,
    pub port: i32,
}

impl HostPort {
    /// Kubernetes' rule: same protocol and port, and the same IP or either one the wildcard.
    pub fn conflicts(&self, o: &HostPort) -> bool {
        self.port == o.port
            && self.protocol == o.protocol
            && (self.ip == o.ip || self.ip == "0.0.0.0" || o.ip == "0.0.0.0")
    }
}

/// A pod's scheduling facts, computed once when the pod is seen.
#[derive(Debug)]
pub struct PodInfo {
    pub pod: Arc<Pod>,
    /// `namespace/name`.
    pub key: String,
    pub uid: String,
    /// Effective requests (containers, init containers and sidecars, overhead), as fit checks them.
    pub requests: Resources,
    /// Requests with Kubernetes' defaults for unset cpu/memory, as the scorers see them.
    pub non_zero_milli_cpu: i64,
    pub non_zero_memory: i64,
    pub host_ports: Vec<HostPort>,
    /// UID of the controlling owner (`ownerReferences[controller=true]`).
    pub owner_uid: Option<String>,
}

impl PodInfo {
    pub fn new(pod: Arc<Pod>) -> PodInfo {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let key = format!("{ns}/{}", pod.metadata.name.as_deref().unwrap_or(""));
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let owner_uid =
            pod.metadata.owner_references.iter().flatten().find(|o| o.controller == Some(true)).map(|o| o.uid.clone());
        let (mut requests, mut nz_cpu, mut nz_mem) = (Resources::default(), 0i64, 0i64);
        let mut host_ports = Vec::new();
        if let Some(spec) = &pod.spec {
            for c in &spec.containers {
                let r = container_requests(c);
                let (cpu, mem) = non_zero(&r);
                nz_cpu += cpu;
                nz_mem += mem;
                requests.add(&r);
            }
            // Init containers run one after another before the app containers; sidecars
            // (restartPolicy Always) keep running alongside everything that follows them.
            let (mut init_max, mut sidecars) = (Resources::default(), Resources::default());
            let (mut init_nz_max, mut sidecar_nz) = ((0i64, 0i64), (0i64, 0i64));
            for c in spec.init_containers.iter().flatten() {
                let r = container_requests(c);
                let nz = non_zero(&r);
                if c.restart_policy.as_deref() == Some("Always") {
                    requests.add(&r);
                    sidecars.add(&r);
                    nz_cpu += nz.0;
                    nz_mem += nz.1;
                    sidecar_nz = (sidecar_nz.0 + nz.0, sidecar_nz.1 + nz.1);
                } else {
                    let mut t = r.clone();
                    t.add(&sidecars);
                    init_max.max_with(&t);
                    init_nz_max = (init_nz_max.0.max(nz.0 + sidecar_nz.0), init_nz_max.1.max(nz.1 + sidecar_nz.1));
                }
            }
            requests.max_with(&init_max);
            nz_cpu = nz_cpu.max(init_nz_max.0);
            nz_mem = nz_mem.max(init_nz_max.1);
            if let Some(overhead) = &spec.overhead {
                let o = Resources::from_list(Some(overhead));
                requests.add(&o);
                nz_cpu += o.milli_cpu;
                nz_mem += o.memory;
            }
            let restartable =
                spec.init_containers.iter().flatten().filter(|c| c.restart_policy.as_deref() == Some("Always"));
            for c in spec.containers.iter().chain(restartable) {
                for p in c.ports.iter().flatten() {
                    if let Some(hp) = p.host_port.filter(|p| *p > 0) {
                        host_ports.push(HostPort {
                            protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                            ip: p.host_ip.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| "0.0.0.0".into()),
                            port: hp,
                        });
                    }
                }
            }
        }
        PodInfo { pod, key, uid, requests, non_zero_milli_cpu: nz_cpu, non_zero_memory: nz_mem, host_ports, owner_uid }
    }

    pub fn namespace(&self) -> &str {
        self.pod.metadata.namespace.as_deref().unwrap_or("default")
    }

    pub fn name(&self) -> &str {
        self.pod.metadata.name.as_deref().unwrap_or("")
    }

    pub fn tolerations(&self) -> &[Toleration] {
        self.pod.spec.as_ref().and_then(|s| s.tolerations.as_deref()).unwrap_or(&[])
    }
}

/// Requests of one container; a limit without a request counts as the request, as the API
/// server's defaulting would have made it.
fn container_requests(c: &Container) -> Resources {
    let Some(res) = &c.resources else { return Resources::default() };
    let mut r = Resources::from_list(res.limits.as_ref());
    let req = Resources::from_list(res.requests.as_ref());
    if res.requests.as_ref().is_some_and(|m| m.contains_key("cpu")) {
        r.milli_cpu = req.milli_cpu;
    }
    if res.requests.as_ref().is_some_and(|m| m.contains_key("memory")) {
        r.memory = req.memory;
    }
    if res.requests.as_ref().is_some_and(|m| m.contains_key("ephemeral-storage")) {
        r.ephemeral_storage = req.ephemeral_storage;
    }
    for (n, v) in req.scalars {
        r.set_scalar(&n, v);
    }
    r
}

fn non_zero(r: &Resources) -> (i64, i64) {
    let cpu = if r.milli_cpu == 0 { DEFAULT_MILLI_CPU_REQUEST } else { r.milli_cpu };
    let mem = if r.memory == 0 { DEFAULT_MEMORY_REQUEST } else { r.memory };
    (cpu, mem)
}

/// The Ready condition of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    NotReady,
    Unknown,
}

/// A node and the totals of the pods bound (or assumed) on it.
#[derive(Debug)]
pub struct NodeInfo {
    pub name: String,
    /// `None` while pods name a node the watch has not shown (or no longer shows).
    pub node: Option<Arc<Node>>,
    pub allocatable: Resources,
    pub allowed_pod_number: i64,
    pub unschedulable: bool,
    pub readiness: Readiness,
    /// Sum of the requests of the pods on the node.
    pub requested: Resources,
    pub non_zero_milli_cpu: i64,
    pub non_zero_memory: i64,
    pub pod_count: usize,
    pub used_ports: Vec<HostPort>,
    owner_counts: HashMap<String, u32>,
}

impl NodeInfo {
    pub fn placeholder(name: &str) -> NodeInfo {
        NodeInfo {
            name: name.to_string(),
            node: None,
            allocatable: Resources::default(),
            allowed_pod_number: 0,
            unschedulable: false,
            readiness: Readiness::Unknown,
            requested: Resources::default(),
            non_zero_milli_cpu: 0,
            non_zero_memory: 0,
            pod_count: 0,
            used_ports: Vec::new(),
            owner_counts: HashMap::new(),
        }
    }

    /// A node with no pods, for plug-in tests and tools.
    pub fn new(node: Node) -> NodeInfo {
        let mut ni = NodeInfo::placeholder(node.metadata.name.as_deref().unwrap_or(""));
        ni.set_node(Arc::new(node));
        ni
    }

    /// Installs a (new version of the) node; returns whether anything a filter looks at changed.
    pub fn set_node(&mut self, node: Arc<Node>) -> bool {
        let status = node.status.as_ref();
        let alloc = status.and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()));
        let allocatable = Resources::from_list(alloc);
        let pods = alloc.and_then(|a| a.get("pods")).map_or(0, |q| units(&q.0));
        let unschedulable = node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false);
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.as_str());
        let readiness = match ready {
            Some("True") => Readiness::Ready,
            Some("False") => Readiness::NotReady,
            _ => Readiness::Unknown,
        };
        let changed = match &self.node {
            None => true,
            Some(old) => {
                allocatable != self.allocatable
                    || pods != self.allowed_pod_number
                    || unschedulable != self.unschedulable
                    || readiness != self.readiness
                    || old.metadata.labels != node.metadata.labels
                    || old.spec.as_ref().and_then(|s| s.taints.as_ref())
                        != node.spec.as_ref().and_then(|s| s.taints.as_ref())
            }
        };
        self.allocatable = allocatable;
        self.allowed_pod_number = pods;
        self.unschedulable = unschedulable;
        self.readiness = readiness;
        self.node = Some(node);
        changed
    }

    pub fn labels(&self) -> Option<&BTreeMap<String, String>> {
        self.node.as_ref().and_then(|n| n.metadata.labels.as_ref())
    }

    pub fn taints(&self) -> &[Taint] {
        self.node.as_ref().and_then(|n| n.spec.as_ref()).and_then(|s| s.taints.as_deref()).unwrap_or(&[])
    }

    /// Pods on this node controlled by the owner with this UID.
    pub fn owner_count(&self, owner_uid: &str) -> u32 {
        self.owner_counts.get(owner_uid).copied().unwrap_or(0)
    }

    pub fn add_pod(&mut self, p: &PodInfo) {
        self.requested.add(&p.requests);
        self.non_zero_milli_cpu += p.non_zero_milli_cpu;
        self.non_zero_memory += p.non_zero_memory;
        self.pod_count += 1;
        self.used_ports.extend(p.host_ports.iter().cloned());
        if let Some(o) = &p.owner_uid {
            *self.owner_counts.entry(o.clone()).or_insert(0) += 1;
        }
    }

    pub fn remove_pod(&mut self, p: &PodInfo) {
        self.requested.sub(&p.requests);
        self.non_zero_milli_cpu -= p.non_zero_milli_cpu;
        self.non_zero_memory -= p.non_zero_memory;
        self.pod_count = self.pod_count.saturating_sub(1);
        for hp in &p.host_ports {
            if let Some(i) = self.used_ports.iter().position(|u| u == hp) {
                self.used_ports.swap_remove(i);
            }
        }
        if let Some(o) = &p.owner_uid {
            if let Some(c) = self.owner_counts.get_mut(o) {
                *c -= 1;
                if *c == 0 {
                    self.owner_counts.remove(o);
                }
            }
        }
    }
}

/// Kubernetes' `ToleratesTaint`.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = t.effect.as_deref().filter(|e| !e.is_empty()) {
        if e != taint.effect {
            return false;
        }
    }
    if let Some(k) = t.key.as_deref().filter(|k| !k.is_empty()) {
        if k != taint.key {
            return false;
        }
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        _ => false,
    }
}

/// Whether any of `tolerations` tolerates `taint`.
pub fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}
