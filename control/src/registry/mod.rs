//! The registry: every kind the API server serves, described once.
//!
//! Kubernetes' generic registry shape: one generic REST path (`crate::api::rest`) and a
//! per-kind [`Strategy`] for defaulting, validation and status handling. Adding a kind is adding
//! an entry to [`kinds()`] and, if it needs more than the defaults, a strategy.
//!
//! Architecture invariant: nothing here touches storage or HTTP; strategies are pure functions of
//! the objects they are given (plus the [`Allocator`]s the REST layer hands them).

mod defaults;
mod kinds;
mod validation;

pub use kinds::kinds;
pub use validation::{NameRule, validate_object_meta};

use crate::status::Cause;
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subresource {
    Status,
    Scale,
    Binding,
    /// `pods/log`: proxied to the node agent.
    Log,
}

impl Subresource {
    pub fn name(self) -> &'static str {
        match self {
            Subresource::Status => "status",
            Subresource::Scale => "scale",
            Subresource::Binding => "binding",
            Subresource::Log => "log",
        }
    }
}

/// Decode into the typed k8s-openapi struct and re-encode. Used for type checking (a string
/// where an integer belongs is a 400) and for detecting unknown fields (what did not survive the
/// round trip was not part of the schema).
pub type RoundTrip = fn(&Value) -> Result<Value, serde_json::Error>;

pub fn round_trip<K: serde::de::DeserializeOwned + serde::Serialize>(v: &Value) -> Result<Value, serde_json::Error> {
    // Decoded straight from the borrowed value: no deep copy of the request first.
    let typed = K::deserialize(v)?;
    serde_json::to_value(typed)
}

/// Per-kind behaviour on top of the generic REST path.
pub trait Strategy: Send + Sync {
    /// Fill in Kubernetes' defaults (applied on create and update, like the Go defaulters).
    fn default(&self, _obj: &mut Value) {}
    /// Kind-specific validation; object metadata is validated by the generic path.
    fn validate(&self, _obj: &Value) -> Vec<Cause> {
        Vec::new()
    }
    /// Rules that compare the new object to the old one (immutable fields).
    fn validate_update(&self, _new: &Value, _old: &Value) -> Vec<Cause> {
        Vec::new()
    }
    /// Whether `status` is a subresource: then the main resource ignores status changes and the
    /// status subresource ignores everything else.
    fn has_status(&self) -> bool {
        false
    }
    /// Whether an update of the main resource to a missing object creates it.
    fn allow_create_on_update(&self) -> bool {
        false
    }
    /// Whether an update without `metadata.resourceVersion` is accepted (last writer wins).
    fn allow_unconditional_update(&self) -> bool {
        true
    }
    /// Adjusts an update before validation (e.g. keeping values the server allocated).
    fn prepare_update(&self, _new: &mut Value, _old: &Value) {}
    /// Whether a DELETE that removes the object answers with the object (pods, services...)
    /// rather than a `Status`, as each Kubernetes store is registered.
    fn return_deleted_object(&self) -> bool {
        false
    }
    /// Status a new object starts with (most kinds: empty).
    fn initial_status(&self, _obj: &Value) -> Option<Value> {
        None
    }
}

pub struct DefaultStrategy;
impl Strategy for DefaultStrategy {}

pub struct WithStatus;
impl Strategy for WithStatus {
    fn has_status(&self) -> bool {
        true
    }
}

/// Everything the server knows about one resource.
pub struct Kind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub list_kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub subresources: &'static [Subresource],
    /// Read-only kinds (componentstatuses) serve only get and list.
    pub read_only: bool,
    /// Key prefix in storage: `/registry/<storage>/...`. Versions of one resource share it.
    pub storage: &'static str,
    pub name_rule: NameRule,
    pub round_trip: RoundTrip,
    pub strategy: &'static dyn Strategy,
    /// Converts between this version and the stored version (HPA v1 ↔ v2); `None` = same.
    pub convert: Option<&'static dyn Convert>,
    /// The OpenAPI description of this kind (from its k8s-openapi type).
    pub doc: fn(&'static str, bool, Vec<&'static str>, Vec<&'static str>) -> skiff_openapi::ResourceDoc,
}

/// Conversion between a served version and the storage version of the same resource.
pub trait Convert: Send + Sync {
    fn to_storage(&self, obj: Value) -> Value;
    fn from_storage(&self, obj: Value) -> Value;
}

impl Kind {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_string() } else { format!("{}/{}", self.group, self.version) }
    }
    pub fn has(&self, s: Subresource) -> bool {
        self.subresources.contains(&s)
    }
    pub fn verbs(&self) -> Vec<&'static str> {
        if self.read_only {
            vec!["get", "list"]
        } else {
            vec!["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
        }
    }
    /// `pods "x"` or `deployments.apps "x"`: how messages name this resource.
    pub fn storage_key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("/registry/{}/{}/{}", self.storage, ns, name),
            _ => format!("/registry/{}/{}", self.storage, name),
        }
    }
    /// The prefix listing this resource in one namespace (or all).
    pub fn storage_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("/registry/{}/{}/", self.storage, ns),
            _ => format!("/registry/{}/", self.storage),
        }
    }
}

/// The list of group-versions served, in discovery order (core first, then groups by preference).
pub fn group_versions() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    for k in kinds() {
        match out.iter_mut().find(|(g, _)| *g == k.group) {
            Some((_, vs)) => {
                if !vs.contains(&k.version) {
                    vs.push(k.version)
                }
            }
            None => out.push((k.group, vec![k.version])),
        }
    }
    // Preferred version first, as discovery lists them (autoscaling/v2 before v1).
    for (_, vs) in out.iter_mut() {
        vs.sort_by(|a, b| version_priority(b).cmp(&version_priority(a)));
    }
    out
}

fn version_priority(v: &str) -> (u32, u32) {
    // v2 > v1 > v1beta1: GA versions rank above pre-release ones.
    let num: u32 =
        v.trim_start_matches('v').chars().take_while(|c| c.is_ascii_digit()).collect::<String>().parse().unwrap_or(0);
    let ga = if v.contains("alpha") || v.contains("beta") { 0 } else { 1 };
    (ga, num)
}

pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Kind> {
    kinds().iter().find(|k| k.group == group && k.version == version && k.plural == plural)
}
