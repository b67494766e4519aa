//! Patch semantics of the Kubernetes API server, on `serde_json::Value`.
//!
//! | content type                            | function                    |
//! |-----------------------------------------|-----------------------------|
//! | `application/merge-patch+json`          | [`merge_patch`] (RFC 7386)  |
//! | `application/json-patch+json`           | [`json_patch`] (RFC 6902)   |
//! | `application/strategic-merge-patch+json`| [`strategic_merge_patch`]   |
//! | `application/apply-patch+yaml`          | [`apply`] (server-side apply)|
//!
//! Kubernetes 1.33 is the reference: the strategic merge patch follows
//! `k8s.io/apimachinery/pkg/util/strategicpatch` (directives `$patch`, `$retainKeys`,
//! `$setElementOrder/<list>`, `$deleteFromPrimitiveList/<list>`), with the patch metadata of the
//! Go struct tags reproduced by [`list_strategy`]; JSON patch follows `evanphx/json-patch` v4 as
//! vendored by the API server (including its negative array indices).
//!
//! # Errors and HTTP status codes
//! [`PatchError::status_code`] gives the code the API server answers with:
//! * [`PatchError::Invalid`] → 400 BadRequest: the patch itself is malformed (not an object or
//!   array as required, a directive of the wrong type or with an unknown value, a missing merge
//!   key, …).
//! * [`PatchError::Unprocessable`] → 422 Invalid: a well-formed patch that cannot be applied to
//!   this object. Kubernetes answers 422 for *every* failure while applying a JSON patch (missing
//!   path, index out of range, failed `test`) — a failed `test` is **not** a 409 — and for
//!   strategic merge patches that contain lists of lists.
//! * [`PatchError::Conflict`] → 409: server-side apply conflicts, only from [`apply`] with
//!   `force == false`: the configuration changes the value of a field another manager owns
//!   (an `Apply` or `Update` entry of `managedFields`). The message is the API server's, e.g.
//!   `Apply failed with 1 conflict: conflict with "mgr": .data.k`, or for several
//!   `Apply failed with 2 conflicts: conflicts with "kubectl-edit" using v1:\n- .data.a\n- .data.b`.
//!   Setting a field to the value it already has is no conflict (the field becomes shared);
//!   with `force == true` the applier takes the fields over instead.
//! * [`PatchError::TooLarge`] → 413: more than 10 000 JSON patch operations.
//!
//! # Robustness
//! No function panics on any input. Objects and patches nested deeper than [`MAX_DEPTH`] are
//! rejected with `Invalid` before any recursive work starts.
//!
//! # Known gaps
//! * Conflicts are found on leaf fields only (scalars, atomic lists, empty maps, set elements);
//!   managers are not converted between API versions before comparing.
//! * Server-side apply identifies list elements by the single strategic-merge key of
//!   [`list_strategy`] (e.g. `containerPort`), where Kubernetes uses the OpenAPI
//!   `x-kubernetes-list-map-keys` (e.g. `containerPort`+`protocol`); lists of custom resources
//!   are always atomic (their CRD schema is not consulted); maps are always granular (no
//!   `mapType=atomic`/`structType=atomic`).
//! * `null` values in an apply configuration are dropped rather than owned.
//! * Unknown fields are not rejected: Kubernetes fails a strategic merge patch on a field its Go
//!   type lacks; here such fields simply have no patch metadata.
//! * Custom resources: Kubernetes refuses strategic merge patches on them (415); that decision
//!   belongs to the HTTP layer. Called anyway, the function treats every list as atomic.

mod apply;
mod fieldpath;
mod json_patch;
mod merge_patch;
mod schema;
mod strategic;
mod util;

pub use apply::{apply, update_managed_fields, update_managed_fields_owned};
pub use json_patch::{MAX_JSON_PATCH_OPERATIONS, json_patch};
pub use merge_patch::merge_patch;
pub use schema::{ListStrategy, list_strategy, retains_keys};
pub use strategic::strategic_merge_patch;
pub use util::MAX_DEPTH;

/// Why a patch could not be applied. See the crate docs for the HTTP mapping.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The patch is malformed (HTTP 400 BadRequest).
    #[error("{0}")]
    Invalid(String),
    /// The patch is well-formed but cannot be applied to this object (HTTP 422).
    #[error("{0}")]
    Unprocessable(String),
    /// Server-side apply conflict with another field manager (HTTP 409), from [`apply`]
    /// without `force`; the message lists the managers and fields as Kubernetes does, and
    /// there is one [`ConflictCause`] per conflicting (manager, field), in the message's order.
    #[error("{0}")]
    Conflict(String, Vec<ConflictCause>),
    /// Too many JSON patch operations (HTTP 413 RequestEntityTooLarge).
    #[error("{0}")]
    TooLarge(String),
}

impl PatchError {
    /// The HTTP status code the Kubernetes API server uses for this error.
    pub fn status_code(&self) -> u16 {
        match self {
            PatchError::Invalid(_) => 400,
            PatchError::Unprocessable(_) => 422,
            PatchError::Conflict(..) => 409,
            PatchError::TooLarge(_) => 413,
        }
    }

    /// The `reason` of the `metav1.Status` the API server returns for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            PatchError::Invalid(_) => "BadRequest",
            PatchError::Unprocessable(_) => "Invalid",
            PatchError::Conflict(..) => "Conflict",
            PatchError::TooLarge(_) => "RequestEntityTooLarge",
        }
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        match self {
            PatchError::Invalid(m)
            | PatchError::Unprocessable(m)
            | PatchError::Conflict(m, _)
            | PatchError::TooLarge(m) => m,
        }
    }

    /// The field-level causes of an apply conflict (empty for every other error).
    pub fn conflict_causes(&self) -> &[ConflictCause] {
        match self {
            PatchError::Conflict(_, causes) => causes,
            _ => &[],
        }
    }
}

/// One conflicting field of a server-side apply: the API server's `details.causes[]` entry
/// `{"reason": "FieldManagerConflict", "message": "conflict with <manager>", "field": <field>}`
/// (k8s.io/apimachinery `managedfields/internal/conflict.go`, `NewConflictError`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictCause {
    /// The manager as the API server prints it: `"kubectl"`, or `"editor" using v1` for an
    /// `Update` entry.
    pub manager: String,
    /// The field path in structured-merge-diff's notation, e.g. `.data.k` or
    /// `.spec.containers[name="nginx"].image`.
    pub field: String,
}

/// An API group and kind; `group` is `""` for the core group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKind {
    pub group: String,
    pub kind: String,
}

impl GroupKind {
    pub fn new(group: impl Into<String>, kind: impl Into<String>) -> Self {
        GroupKind { group: group.into(), kind: kind.into() }
    }

    /// From an object's `apiVersion` (`"v1"`, `"apps/v1"`) and `kind`.
    pub fn from_api_version(api_version: &str, kind: impl Into<String>) -> Self {
        let group = match api_version.rsplit_once('/') {
            Some((group, _version)) => group,
            None => "",
        };
        GroupKind::new(group, kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_kind_from_api_version() {
        assert_eq!(GroupKind::from_api_version("v1", "Pod"), GroupKind::new("", "Pod"));
        assert_eq!(GroupKind::from_api_version("apps/v1", "Deployment"), GroupKind::new("apps", "Deployment"));
    }

    #[test]
    fn status_codes_follow_kubernetes() {
        assert_eq!(PatchError::Invalid("x".into()).status_code(), 400);
        assert_eq!(PatchError::Unprocessable("x".into()).status_code(), 422);
        assert_eq!(PatchError::Conflict("x".into(), Vec::new()).status_code(), 409);
        assert_eq!(PatchError::TooLarge("x".into()).status_code(), 413);
        assert_eq!(PatchError::Unprocessable("x".into()).reason(), "Invalid");
        assert_eq!(PatchError::Invalid("boom".into()).to_string(), "boom");
    }
}
