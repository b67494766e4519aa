//! Label and field selectors and `meta.k8s.io/v1` Table rendering, on `serde_json::Value` objects.
//!
//! Everything here is a pure function of its input and mirrors Kubernetes 1.33
//! (`k8s.io/apimachinery` and `k8s.io/kubernetes/pkg/printers`): the strings a
//! `kubectl` user sees — selector errors, table cells, validation messages — are
//! the ones a real API server would produce, because kubectl 1.33 is the client.
//!
//! Objects are plain JSON as stored by the API server. Nothing in this crate
//! panics on malformed objects: a missing or wrongly typed field reads as the
//! Go zero value, which is what a Go server would have decoded it to.

mod json;

pub mod fields;
pub mod labels;
pub mod qos;
pub mod quantity;
pub mod table;
pub mod validation;

pub use fields::FieldSelector;
pub use labels::LabelSelector;
pub use table::{IncludeObject, human_duration, table};
pub use validation::{validate_dns1123_label, validate_dns1123_subdomain, validate_label_key, validate_label_value};

/// A selector that could not be parsed, or that names something the resource
/// does not support.
///
/// `Display` gives exactly the message Kubernetes puts in the `400 Bad Request`
/// status, so the API server can pass it through unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// A `labelSelector` (string form or `metav1.LabelSelector` object) is malformed
    /// or names an invalid key or value.
    #[error("{0}")]
    InvalidLabelSelector(String),
    /// A `fieldSelector` string is malformed (bad operator or escape sequence).
    #[error("{0}")]
    InvalidFieldSelector(String),
    /// A field selector names a field the resource cannot be filtered on.
    #[error("{message}")]
    FieldNotSupported {
        /// The field exactly as the client wrote it.
        field: String,
        /// Kubernetes' wording, which differs between resources.
        message: String,
    },
}

/// Accepts `plural` or `plural.group` and returns the plural when the group is
/// one whose resources this crate knows, so `jobs.batch` behaves like `jobs`.
/// Other groups are left whole: a custom resource whose plural happens to be
/// `pods` (in `example.com`) must not be printed or filtered like core Pods.
pub(crate) fn builtin_resource(resource: &str) -> &str {
    const GROUPS: &[&str] = &[
        "",
        "apps",
        "batch",
        "autoscaling",
        "coordination.k8s.io",
        "discovery.k8s.io",
        "networking.k8s.io",
        "policy",
        "rbac.authorization.k8s.io",
        "scheduling.k8s.io",
        "storage.k8s.io",
        "apiextensions.k8s.io",
        "extensions",
    ];
    match resource.split_once('.') {
        Some((plural, group)) if GROUPS.contains(&group) => plural,
        _ => resource,
    }
}
