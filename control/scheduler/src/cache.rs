//! The scheduler's view of the cluster: every node with the running totals of its pods, and
//! every pod bound to a node — including pods this scheduler has bound (or is binding) that the
//! watch has not reported yet ("assumed" pods), so a burst of pods cannot overcommit a node.

use crate::info::{NodeInfo, PodInfo};
use crate::plugins::ClusterEvents;
use k8s_openapi::api::core::v1::Node;
use std::collections::HashMap;
use std::sync::Arc;

struct CachedPod {
    info: Arc<PodInfo>,
    node: String,
    /// Bound by us; the watch has not shown `spec.nodeName` yet.
    assumed: bool,
}

#[derive(Default)]
pub struct Cache {
    /// Dense so a cycle can walk nodes by index from a rotating start; placeholders
    /// (`node == None`) hold pods of nodes the watch does not show.
    pub(crate) nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    real_nodes: usize,
    pods: HashMap<String, CachedPod>,
    /// Changes since the last [`Cache::take_events`].
    events: ClusterEvents,
}

impl Cache {
    /// Nodes the watch shows.
    pub fn node_count(&self) -> usize {
        self.real_nodes
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|i| &self.nodes[*i]).filter(|n| n.node.is_some())
    }

    pub fn take_events(&mut self) -> ClusterEvents {
        std::mem::take(&mut self.events)
    }

    fn slot(&mut self, name: &str) -> usize {
        if let Some(i) = self.index.get(name) {
            return *i;
        }
        self.nodes.push(NodeInfo::placeholder(name));
        self.index.insert(name.to_string(), self.nodes.len() - 1);
        self.nodes.len() - 1
    }

    fn drop_if_unused(&mut self, i: usize) {
        if self.nodes[i].node.is_some() || self.nodes[i].pod_count > 0 {
            return;
        }
        let gone = self.nodes.swap_remove(i);
        self.index.remove(&gone.name);
        if i < self.nodes.len() {
            self.index.insert(self.nodes[i].name.clone(), i);
        }
    }

    pub fn upsert_node(&mut self, node: Node) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let i = self.slot(&name);
        let was_real = self.nodes[i].node.is_some();
        let changed = self.nodes[i].set_node(Arc::new(node));
        if !was_real {
            self.real_nodes += 1;
            self.events |= ClusterEvents::NODE_ADD;
        } else if changed {
            self.events |= ClusterEvents::NODE_UPDATE;
        }
    }

    pub fn remove_node(&mut self, name: &str) {
        if let Some(&i) = self.index.get(name) {
            if self.nodes[i].node.take().is_some() {
                self.real_nodes -= 1;
            }
            self.drop_if_unused(i);
        }
    }

    /// Names of the nodes the watch shows.
    pub fn node_names(&self) -> Vec<String> {
        self.nodes.iter().filter(|n| n.node.is_some()).map(|n| n.name.clone()).collect()
    }

    pub fn is_assumed(&self, key: &str) -> bool {
        self.pods.get(key).is_some_and(|p| p.assumed)
    }

    /// The node a pod is bound or assumed to, with the UID of the pod recorded there.
    pub fn pod_node(&self, key: &str) -> Option<(&str, &str)> {
        self.pods.get(key).map(|p| (p.node.as_str(), p.info.uid.as_str()))
    }

    pub fn pod_keys(&self) -> Vec<String> {
        self.pods.keys().cloned().collect()
    }

    fn add(&mut self, info: Arc<PodInfo>, node: &str, assumed: bool) {
        let i = self.slot(node);
        self.nodes[i].add_pod(&info);
        self.pods.insert(info.key.clone(), CachedPod { info, node: node.to_string(), assumed });
    }

    /// Accounts a pod the scheduler decided to bind, before the API confirms it.
    pub fn assume(&mut self, info: Arc<PodInfo>, node: &str) {
        self.remove_pod(&info.key.clone());
        self.add(info, node, true);
    }

    /// A pod the watch shows bound to `node` (a confirmation when it was assumed there).
    pub fn bound(&mut self, pod: Arc<k8s_openapi::api::core::v1::Pod>, key: &str, node: &str) {
        let uid = pod.metadata.uid.as_deref().unwrap_or("");
        if let Some(c) = self.pods.get_mut(key) {
            if c.node == node && c.info.uid == uid {
                c.assumed = false;
                return;
            }
        }
        self.remove_pod(key);
        self.add(Arc::new(PodInfo::new(pod)), node, false);
    }

    /// Removes a pod from its node; returns whether it was there.
    pub fn remove_pod(&mut self, key: &str) -> bool {
        let Some(c) = self.pods.remove(key) else { return false };
        if let Some(&i) = self.index.get(&c.node) {
            self.nodes[i].remove_pod(&c.info);
            self.drop_if_unused(i);
        }
        self.events |= ClusterEvents::POD_DELETE;
        true
    }

    /// Drops an assumption (binding failed); no-op if the watch has meanwhile confirmed the pod
    /// or a different pod (UID) took its name.
    pub fn forget(&mut self, key: &str, uid: &str) -> bool {
        if self.pods.get(key).is_some_and(|c| c.assumed && c.info.uid == uid) {
            return self.remove_pod(key);
        }
        false
    }
}
