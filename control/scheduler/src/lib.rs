//! The scheduler: binds pending pods to nodes through `pods/{name}/binding`, with filter and
//! score plug-ins chosen by configuration.
//!
//! It is a client of the API like any other: it watches Nodes and Pods through kube-rs, keeps
//! per-node totals up to date incrementally ([`info::NodeInfo`]), counts the pods it has bound
//! before the watch reports them (assumed pods, [`cache`]), and parks pods that fit nowhere
//! until a cluster change could help them ([`queue`]).
//!
//! ```no_run
//! # async fn f(client: kube::Client) -> anyhow::Result<()> {
//! skiff_scheduler::run(client, skiff_scheduler::SchedulerConfig::default()).await
//! # }
//! ```

pub mod algorithm;
pub mod cache;
pub mod events;
pub mod info;
pub mod plugins;
pub mod queue;
mod scheduler;

pub use plugins::{Filter, Reason, Registry, Score};
pub use scheduler::run_with;

/// The `schedulerName` pods get by default.
pub const DEFAULT_SCHEDULER_NAME: &str = "default-scheduler";

/// Which pods this scheduler serves and with which plug-ins.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Pods whose `spec.schedulerName` is this (empty counts as `default-scheduler`). Also the
    /// `source.component` of the events it writes.
    pub scheduler_name: String,
    /// Filter plug-ins by name, run in this order; the first one a node fails gives its reason.
    pub filters: Vec<String>,
    /// Score plug-ins by name with their weights.
    pub scores: Vec<(String, i64)>,
    /// Bindings in flight at once. Binding is latency-bound (each is a durable write), so more
    /// in flight means more pods per second; 128 measured best here.
    pub max_bindings_in_flight: usize,
    /// Stop filtering once this percentage of the nodes was found feasible (at least 100
    /// nodes); 0 is Kubernetes' adaptive default (50% at 0 nodes, down to 5% at 5,625+).
    pub percentage_of_nodes_to_score: u32,
}

impl Default for SchedulerConfig {
    /// `default-scheduler` with every built-in plug-in.
    fn default() -> SchedulerConfig {
        SchedulerConfig {
            scheduler_name: DEFAULT_SCHEDULER_NAME.to_string(),
            filters: plugins::DEFAULT_FILTERS.iter().map(|s| s.to_string()).collect(),
            scores: plugins::DEFAULT_SCORES.iter().map(|(s, w)| (s.to_string(), *w)).collect(),
            max_bindings_in_flight: 128,
            percentage_of_nodes_to_score: 0,
        }
    }
}

/// Runs the scheduler with the built-in plug-ins until cancelled (drop the future) or its
/// watches fail for good. Unknown plug-in names are an error at start.
pub async fn run(client: kube::Client, config: SchedulerConfig) -> anyhow::Result<()> {
    run_with(client, config, Registry::default()).await
}
