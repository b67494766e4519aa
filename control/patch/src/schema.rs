//! Patch metadata of the built-in Kubernetes types.
//!
//! Kubernetes does not keep this in a table: `strategicpatch` reads the `patchStrategy` and
//! `patchMergeKey` struct tags of the Go types (k8s.io/api) by reflection. This module is the
//! hand-written equivalent for the fields that carry such tags (checked against k8s.io/api for
//! 1.33), organised as a tiny type graph: each [`Ty`] knows the strategy of its fields and the
//! type of the fields we need to descend into. Anything not described here behaves like a Go
//! field without tags: maps merge recursively, lists are replaced whole.
//!
//! Server-side apply uses the same table for its associative lists (see `apply.rs`), which is
//! why list fields that matter for apply but carry no patch tag are listed as `Replace`.

use crate::GroupKind;

/// How a field is merged by a strategic merge patch (and, in this crate, by server-side apply).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListStrategy {
    /// `patchStrategy:"merge" patchMergeKey:"<key>"`: a list of objects merged element-wise,
    /// elements identified by `key`.
    Merge { key: &'static str },
    /// `patchStrategy:"merge"` on a list of scalars (e.g. `metadata.finalizers`): set union,
    /// deletions through `$deleteFromPrimitiveList/<field>`.
    MergePrimitives,
    /// No strategy: the list is atomic and a patch replaces it whole. Returned for fields known to
    /// be atomic (e.g. `tolerations`); unknown fields yield `None`, which means the same.
    Replace,
    /// `patchStrategy:"retainKeys"` on an object field (e.g. a Deployment's `spec.strategy`):
    /// the client sends `$retainKeys` and keys missing from it are cleared.
    RetainKeys,
}

/// The (subset of) Go types whose fields carry patch metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ty {
    /// Any top-level object: only `metadata` is known.
    Object,
    Pod,
    PodTemplate,
    /// ReplicationController, ReplicaSet, DaemonSet, Job: `spec.template` + `status.conditions`.
    Workload,
    Deployment,
    StatefulSet,
    CronJob,
    Node,
    Service,
    ServiceAccount,
    /// Objects whose only tagged list is `status.conditions` (key `type`).
    WithConditions,
    ComponentStatus,
    EndpointSlice,
    Endpoints,
    WebhookConfiguration,
    CsiNode,

    ObjectMeta,
    PodTemplateSpec,
    PodSpec,
    Container,
    PodStatus,
    WorkloadSpec,
    DeploymentSpec,
    StatefulSetSpec,
    CronJobSpec,
    JobTemplateSpec,
    ConditionsStatus,
    NodeSpec,
    NodeStatus,
    ServiceSpec,
    CsiNodeSpec,
}

/// What the table knows about one field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct FieldMeta {
    pub strategy: Option<ListStrategy>,
    /// `patchStrategy` includes `retainKeys` (volumes and pod resource claims are
    /// `"merge,retainKeys"`: the list merges by key and each element honours `$retainKeys`).
    pub retain_keys: bool,
    /// Type of the field's value (of its elements, for a list), when we need to descend.
    pub ty: Option<Ty>,
}

const fn plain(ty: Ty) -> FieldMeta {
    FieldMeta { strategy: None, retain_keys: false, ty: Some(ty) }
}

const fn merge(key: &'static str, ty: Option<Ty>) -> FieldMeta {
    FieldMeta { strategy: Some(ListStrategy::Merge { key }), retain_keys: false, ty }
}

const fn merge_retain(key: &'static str) -> FieldMeta {
    FieldMeta { strategy: Some(ListStrategy::Merge { key }), retain_keys: true, ty: None }
}

const fn with(strategy: ListStrategy) -> FieldMeta {
    FieldMeta { strategy: Some(strategy), retain_keys: false, ty: None }
}

const ATOMIC: FieldMeta = with(ListStrategy::Replace);
const UNKNOWN: FieldMeta = FieldMeta { strategy: None, retain_keys: false, ty: None };

/// The root type of a kind. Unknown kinds (custom resources included) only get `metadata`.
pub(crate) fn root(kind: &GroupKind) -> Ty {
    match (kind.group.as_str(), kind.kind.as_str()) {
        ("", "Pod") => Ty::Pod,
        ("", "PodTemplate") => Ty::PodTemplate,
        ("", "ReplicationController") | ("apps", "ReplicaSet") | ("apps", "DaemonSet") | ("batch", "Job") => {
            Ty::Workload
        }
        ("apps", "Deployment") => Ty::Deployment,
        ("apps", "StatefulSet") => Ty::StatefulSet,
        ("batch", "CronJob") => Ty::CronJob,
        ("", "Node") => Ty::Node,
        ("", "Service") => Ty::Service,
        ("", "ServiceAccount") => Ty::ServiceAccount,
        ("", "Namespace")
        | ("", "PersistentVolumeClaim")
        | ("policy", "PodDisruptionBudget")
        | ("autoscaling", "HorizontalPodAutoscaler")
        | ("apiregistration.k8s.io", "APIService")
        | ("flowcontrol.apiserver.k8s.io", "FlowSchema")
        | ("flowcontrol.apiserver.k8s.io", "PriorityLevelConfiguration") => Ty::WithConditions,
        ("", "ComponentStatus") => Ty::ComponentStatus,
        ("discovery.k8s.io", "EndpointSlice") => Ty::EndpointSlice,
        ("", "Endpoints") => Ty::Endpoints,
        ("admissionregistration.k8s.io", "MutatingWebhookConfiguration")
        | ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration") => Ty::WebhookConfiguration,
        ("storage.k8s.io", "CSINode") => Ty::CsiNode,
        _ => Ty::Object,
    }
}

/// Patch metadata of field `name` of a value of type `ty` (`None` = unknown type).
pub(crate) fn field(ty: Option<Ty>, name: &str) -> FieldMeta {
    let Some(ty) = ty else { return UNKNOWN };
    let is_root = matches!(
        ty,
        Ty::Object
            | Ty::Pod
            | Ty::PodTemplate
            | Ty::Workload
            | Ty::Deployment
            | Ty::StatefulSet
            | Ty::CronJob
            | Ty::Node
            | Ty::Service
            | Ty::ServiceAccount
            | Ty::WithConditions
            | Ty::ComponentStatus
            | Ty::EndpointSlice
            | Ty::Endpoints
            | Ty::WebhookConfiguration
            | Ty::CsiNode
    );
    if is_root && name == "metadata" {
        return plain(Ty::ObjectMeta);
    }
    match (ty, name) {
        // --- top-level objects -------------------------------------------------------------
        (Ty::Pod, "spec") => plain(Ty::PodSpec),
        (Ty::Pod, "status") => plain(Ty::PodStatus),
        (Ty::PodTemplate, "template") => plain(Ty::PodTemplateSpec),
        (Ty::Workload, "spec") => plain(Ty::WorkloadSpec),
        (Ty::Deployment, "spec") => plain(Ty::DeploymentSpec),
        (Ty::StatefulSet, "spec") => plain(Ty::StatefulSetSpec),
        (Ty::Workload | Ty::Deployment | Ty::StatefulSet | Ty::Service | Ty::WithConditions, "status") => {
            plain(Ty::ConditionsStatus)
        }
        (Ty::CronJob, "spec") => plain(Ty::CronJobSpec),
        (Ty::Node, "spec") => plain(Ty::NodeSpec),
        (Ty::Node, "status") => plain(Ty::NodeStatus),
        (Ty::Service, "spec") => plain(Ty::ServiceSpec),
        // ServiceAccount.secrets is tagged; imagePullSecrets is not.
        (Ty::ServiceAccount, "secrets") => merge("name", None),
        (Ty::ServiceAccount, "imagePullSecrets") => ATOMIC,
        // ComponentStatus keeps its conditions at the top level.
        (Ty::ComponentStatus, "conditions") => merge("type", None),
        (Ty::EndpointSlice, "endpoints" | "ports") => ATOMIC,
        (Ty::Endpoints, "subsets") => ATOMIC,
        (Ty::WebhookConfiguration, "webhooks") => merge("name", None),
        (Ty::CsiNode, "spec") => plain(Ty::CsiNodeSpec),

        // --- metav1.ObjectMeta ---------------------------------------------------------------
        (Ty::ObjectMeta, "finalizers") => with(ListStrategy::MergePrimitives),
        (Ty::ObjectMeta, "ownerReferences") => merge("uid", None),
        (Ty::ObjectMeta, "managedFields") => ATOMIC,

        // --- pod templates --------------------------------------------------------------------
        (Ty::PodTemplateSpec, "metadata") => plain(Ty::ObjectMeta),
        (Ty::PodTemplateSpec, "spec") => plain(Ty::PodSpec),
        (Ty::WorkloadSpec, "template") => plain(Ty::PodTemplateSpec),
        (Ty::DeploymentSpec, "template") => plain(Ty::PodTemplateSpec),
        (Ty::DeploymentSpec, "strategy") => with(ListStrategy::RetainKeys),
        (Ty::StatefulSetSpec, "template") => plain(Ty::PodTemplateSpec),
        // PersistentVolumeClaim templates: atomic list, but their metadata is an ObjectMeta.
        (Ty::StatefulSetSpec, "volumeClaimTemplates") => FieldMeta { ty: Some(Ty::Object), ..ATOMIC },
        (Ty::CronJobSpec, "jobTemplate") => plain(Ty::JobTemplateSpec),
        (Ty::JobTemplateSpec, "metadata") => plain(Ty::ObjectMeta),
        (Ty::JobTemplateSpec, "spec") => plain(Ty::WorkloadSpec),

        // --- core/v1.PodSpec -----------------------------------------------------------------
        (Ty::PodSpec, "containers" | "initContainers" | "ephemeralContainers") => merge("name", Some(Ty::Container)),
        (Ty::PodSpec, "volumes") => merge_retain("name"),
        (Ty::PodSpec, "resourceClaims") => merge_retain("name"),
        (Ty::PodSpec, "imagePullSecrets") => merge("name", None),
        (Ty::PodSpec, "hostAliases") => merge("ip", None),
        (Ty::PodSpec, "topologySpreadConstraints") => merge("topologyKey", None),
        (Ty::PodSpec, "schedulingGates") => merge("name", None),
        (Ty::PodSpec, "tolerations" | "readinessGates") => ATOMIC,

        // --- core/v1.Container (and EphemeralContainerCommon, same tags) ---------------------
        (Ty::Container, "ports") => merge("containerPort", None),
        (Ty::Container, "env") => merge("name", None),
        (Ty::Container, "volumeMounts") => merge("mountPath", None),
        (Ty::Container, "volumeDevices") => merge("devicePath", None),
        // +listType=atomic, no patch tags.
        (Ty::Container, "resizePolicy" | "envFrom" | "command" | "args") => ATOMIC,

        // --- core/v1.PodStatus -----------------------------------------------------------------
        (Ty::PodStatus, "conditions") => merge("type", None),
        (Ty::PodStatus, "podIPs" | "hostIPs") => merge("ip", None),
        (Ty::PodStatus, "resourceClaimStatuses") => merge_retain("name"),
        // Container statuses carry no patch tags: a patch replaces them whole.
        (Ty::PodStatus, "containerStatuses" | "initContainerStatuses" | "ephemeralContainerStatuses") => ATOMIC,

        // --- conditions of workloads, services, namespaces, PVCs, PDBs, HPAs, ... ---------------
        (Ty::ConditionsStatus, "conditions") => merge("type", None),

        // --- core/v1.Node ----------------------------------------------------------------------
        (Ty::NodeSpec, "podCIDRs") => with(ListStrategy::MergePrimitives),
        (Ty::NodeSpec, "taints") => ATOMIC,
        (Ty::NodeStatus, "conditions" | "addresses") => merge("type", None),

        // --- core/v1.ServiceSpec ---------------------------------------------------------------
        (Ty::ServiceSpec, "ports") => merge("port", None),

        // --- storage/v1.CSINodeSpec ------------------------------------------------------------
        (Ty::CsiNodeSpec, "drivers") => merge("name", None),

        _ => UNKNOWN,
    }
}

fn lookup(kind: &GroupKind, path: &[&str]) -> Option<FieldMeta> {
    let (last, parents) = path.split_last()?;
    let mut ty = Some(root(kind));
    for name in parents {
        ty = field(ty, name).ty;
        ty?;
    }
    Some(field(ty, last))
}

/// Patch metadata, as Kubernetes' Go struct tags (`patchStrategy`/`patchMergeKey`) declare it.
///
/// `path` is the field names from the object root with list elements transparent, e.g.
/// `["spec", "template", "spec", "containers", "ports"]`. `None` means the field carries no
/// patch metadata (lists are then replaced atomically, objects merged recursively).
pub fn list_strategy(kind: &GroupKind, path: &[&str]) -> Option<ListStrategy> {
    lookup(kind, path)?.strategy
}

/// Whether the field's `patchStrategy` includes `retainKeys` (e.g. `spec.volumes`, whose
/// strategy is `"merge,retainKeys"`, or a Deployment's `spec.strategy`).
pub fn retains_keys(kind: &GroupKind, path: &[&str]) -> bool {
    lookup(kind, path).is_some_and(|m| m.retain_keys || m.strategy == Some(ListStrategy::RetainKeys))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gk(group: &str, kind: &str) -> GroupKind {
        GroupKind::new(group, kind)
    }

    #[test]
    fn metadata_applies_to_every_kind() {
        for k in [gk("", "Pod"), gk("", "ConfigMap"), gk("example.com", "Widget")] {
            assert_eq!(list_strategy(&k, &["metadata", "finalizers"]), Some(ListStrategy::MergePrimitives));
            assert_eq!(list_strategy(&k, &["metadata", "ownerReferences"]), Some(ListStrategy::Merge { key: "uid" }));
        }
        assert_eq!(list_strategy(&gk("", "ConfigMap"), &["data"]), None);
    }

    #[test]
    fn pod_spec_everywhere_it_is_embedded() {
        let cases: &[(GroupKind, &[&str])] = &[
            (gk("", "Pod"), &["spec"]),
            (gk("", "PodTemplate"), &["template", "spec"]),
            (gk("", "ReplicationController"), &["spec", "template", "spec"]),
            (gk("apps", "ReplicaSet"), &["spec", "template", "spec"]),
            (gk("apps", "Deployment"), &["spec", "template", "spec"]),
            (gk("apps", "DaemonSet"), &["spec", "template", "spec"]),
            (gk("apps", "StatefulSet"), &["spec", "template", "spec"]),
            (gk("batch", "Job"), &["spec", "template", "spec"]),
            (gk("batch", "CronJob"), &["spec", "jobTemplate", "spec", "template", "spec"]),
        ];
        for (kind, prefix) in cases {
            let at = |rest: &[&'static str]| {
                let p: Vec<&str> = prefix.iter().chain(rest).copied().collect();
                list_strategy(kind, &p)
            };
            let by = |key| Some(ListStrategy::Merge { key });
            assert_eq!(at(&["containers"]), by("name"), "{kind:?}");
            assert_eq!(at(&["initContainers"]), by("name"));
            assert_eq!(at(&["ephemeralContainers"]), by("name"));
            assert_eq!(at(&["volumes"]), by("name"));
            assert_eq!(at(&["imagePullSecrets"]), by("name"));
            assert_eq!(at(&["hostAliases"]), by("ip"));
            assert_eq!(at(&["topologySpreadConstraints"]), by("topologyKey"));
            assert_eq!(at(&["resourceClaims"]), by("name"));
            assert_eq!(at(&["schedulingGates"]), by("name"));
            assert_eq!(at(&["tolerations"]), Some(ListStrategy::Replace));
            assert_eq!(at(&["containers", "ports"]), by("containerPort"));
            assert_eq!(at(&["initContainers", "env"]), by("name"));
            assert_eq!(at(&["containers", "volumeMounts"]), by("mountPath"));
            assert_eq!(at(&["containers", "volumeDevices"]), by("devicePath"));
            assert_eq!(at(&["containers", "resizePolicy"]), Some(ListStrategy::Replace));
            assert_eq!(at(&["containers", "args"]), Some(ListStrategy::Replace));
            let vol: Vec<&str> = prefix.iter().copied().chain(["volumes"]).collect();
            assert!(retains_keys(kind, &vol));
        }
        // The template's own metadata is an ObjectMeta too.
        assert_eq!(
            list_strategy(&gk("apps", "Deployment"), &["spec", "template", "metadata", "finalizers"]),
            Some(ListStrategy::MergePrimitives)
        );
    }

    #[test]
    fn statuses_and_other_kinds() {
        let by = |key| Some(ListStrategy::Merge { key });
        assert_eq!(list_strategy(&gk("", "Pod"), &["status", "conditions"]), by("type"));
        assert_eq!(list_strategy(&gk("", "Pod"), &["status", "podIPs"]), by("ip"));
        assert_eq!(list_strategy(&gk("", "Pod"), &["status", "containerStatuses"]), Some(ListStrategy::Replace));
        assert_eq!(list_strategy(&gk("", "Node"), &["status", "conditions"]), by("type"));
        assert_eq!(list_strategy(&gk("", "Node"), &["status", "addresses"]), by("type"));
        assert_eq!(list_strategy(&gk("", "Node"), &["spec", "taints"]), Some(ListStrategy::Replace));
        assert_eq!(list_strategy(&gk("", "Node"), &["spec", "podCIDRs"]), Some(ListStrategy::MergePrimitives));
        assert_eq!(list_strategy(&gk("", "Service"), &["spec", "ports"]), by("port"));
        for k in [
            gk("apps", "Deployment"),
            gk("apps", "ReplicaSet"),
            gk("", "ReplicationController"),
            gk("batch", "Job"),
            gk("", "Namespace"),
        ] {
            assert_eq!(list_strategy(&k, &["status", "conditions"]), by("type"), "{k:?}");
        }
        assert_eq!(list_strategy(&gk("apps", "Deployment"), &["spec", "strategy"]), Some(ListStrategy::RetainKeys));
        assert!(retains_keys(&gk("apps", "Deployment"), &["spec", "strategy"]));
        assert!(!retains_keys(&gk("apps", "Deployment"), &["spec", "template"]));
        assert_eq!(
            list_strategy(&gk("discovery.k8s.io", "EndpointSlice"), &["endpoints"]),
            Some(ListStrategy::Replace)
        );
        assert_eq!(list_strategy(&gk("", "Event"), &["series"]), None);
        assert_eq!(list_strategy(&gk("", "ServiceAccount"), &["secrets"]), by("name"));
        assert_eq!(
            list_strategy(&gk("admissionregistration.k8s.io", "ValidatingWebhookConfiguration"), &["webhooks"]),
            by("name")
        );
        // Paths that run through unknown fields know nothing.
        assert_eq!(list_strategy(&gk("", "Pod"), &["spec", "bogus", "containers"]), None);
        assert_eq!(list_strategy(&gk("", "Pod"), &[]), None);
    }
}
