//! The Endpoints controller: for each Service with a selector, an Endpoints object of the same
//! name listing the matching pods' IPs (ready ones under `addresses`, the others under
//! `notReadyAddresses`) with the service's ports resolved against each pod's containers.

use crate::Ctx;
use crate::runtime::{Action, ObjKey, Queue};
use crate::util;
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service, ServicePort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

const COMPONENT: &str = "endpoint-controller";
pub const MANAGED_BY_LABEL: &str = "endpoints.kubernetes.io/managed-by";
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// The Service's selector, if it has a non-empty one (selector-less services' endpoints are
/// managed by their users).
pub fn service_selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    svc.spec.as_ref()?.selector.as_ref().filter(|s| !s.is_empty())
}

pub fn selects(sel: &BTreeMap<String, String>, pod: &Pod) -> bool {
    let labels = pod.metadata.labels.as_ref();
    sel.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// Enqueues, for a pod change, every service of the pod's namespace that selects the pod
/// before or after the change.
pub fn register_pod_handler(ctx: &Arc<Ctx>, queue: Queue) {
    let services = Arc::downgrade(&ctx.services);
    ctx.pods.on_change(move |old, new| {
        let Some(services) = services.upgrade() else { return };
        let Some(ns) = new.or(old).and_then(|p| p.namespace()) else { return };
        for svc in services.list_ns(&ns) {
            let Some(sel) = service_selector(&svc) else { continue };
            if [old, new].into_iter().flatten().any(|p| selects(sel, p)) {
                queue.add(ObjKey::of(svc.as_ref()));
            }
        }
    });
}

pub fn register(ctx: &Arc<Ctx>, queue: Queue) {
    let q = queue.clone();
    ctx.services.on_change(move |old, new| {
        if let Some(s) = new.or(old) {
            q.add(ObjKey::of(s.as_ref()));
        }
    });
    let q = queue.clone();
    ctx.endpoints.on_change(move |old, new| {
        if let Some(e) = new.or(old) {
            q.add(ObjKey::of(e.as_ref()));
        }
    });
    register_pod_handler(ctx, queue);
}

/// Kubernetes' `ShouldPodBeInEndpoints`.
pub fn should_pod_be_in_endpoints(pod: &Pod, include_terminating: bool) -> bool {
    if util::is_pod_finished(pod) {
        return false;
    }
    if pod_ip(pod).is_none() {
        return false;
    }
    include_terminating || !util::is_terminating(&pod.metadata)
}

pub fn pod_ip(pod: &Pod) -> Option<String> {
    let s = pod.status.as_ref()?;
    s.pod_ip.clone().filter(|ip| !ip.is_empty()).or_else(|| s.pod_ips.as_ref()?.first().map(|i| i.ip.clone()))
}

/// Kubernetes' `FindPort`: a service port's target port on a pod (named ports looked up among
/// the containers' ports with the same protocol).
pub fn find_port(pod: &Pod, sp: &ServicePort) -> Option<i32> {
    let proto = sp.protocol.as_deref().unwrap_or("TCP");
    match sp.target_port.as_ref() {
        None => Some(sp.port),
        Some(IntOrString::Int(p)) => Some(*p),
        Some(IntOrString::String(name)) => {
            let spec = pod.spec.as_ref()?;
            let sidecars =
                spec.init_containers.iter().flatten().filter(|c| c.restart_policy.as_deref() == Some("Always"));
            spec.containers
                .iter()
                .chain(sidecars)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(name.as_str()) && p.protocol.as_deref().unwrap_or("TCP") == proto)
                .map(|p| p.container_port)
        }
    }
}

pub fn should_set_hostname(pod: &Pod, svc: &Service) -> bool {
    let Some(spec) = pod.spec.as_ref() else { return false };
    spec.hostname.as_deref().is_some_and(|h| !h.is_empty())
        && spec.subdomain.as_deref() == svc.metadata.name.as_deref()
        && pod.metadata.namespace == svc.metadata.namespace
}

pub fn pod_target_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    }
}

/// The service's labels plus the headless marker, as the controllers label what they write.
pub fn derived_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    if svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    } else {
        labels.remove(HEADLESS_LABEL);
    }
    labels
}

/// The subsets for a service: addresses grouped by the set of ports they serve (Kubernetes'
/// `RepackSubsets`), sorted.
/// A resolved service port: (name, port on the pod, protocol, appProtocol).
pub type ResolvedPort = (String, i32, String, Option<String>);

/// The service's ports as they resolve on `pod`, sorted; pods grouped by this share a subset
/// (Endpoints) or a slice (EndpointSlice).
pub fn resolved_ports(pod: &Pod, svc_ports: &[ServicePort]) -> Vec<ResolvedPort> {
    let set: BTreeSet<ResolvedPort> = svc_ports
        .iter()
        .filter_map(|sp| {
            let p = find_port(pod, sp)?;
            Some((
                sp.name.clone().unwrap_or_default(),
                p,
                sp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                sp.app_protocol.clone(),
            ))
        })
        .collect();
    set.into_iter().collect()
}

pub fn desired_subsets(svc: &Service, pods: &[Arc<Pod>]) -> Vec<EndpointSubset> {
    let spec = svc.spec.clone().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let ports = spec.ports.clone().unwrap_or_default();
    // ports (sorted) → (ready addresses, not ready addresses)
    let mut groups: BTreeMap<Vec<ResolvedPort>, (Vec<EndpointAddress>, Vec<EndpointAddress>)> = BTreeMap::new();
    for pod in pods {
        if !should_pod_be_in_endpoints(pod, publish_not_ready) {
            continue;
        }
        let Some(ip) = pod_ip(pod) else { continue };
        let addr = EndpointAddress {
            ip,
            node_name: util::pod_node(pod).map(str::to_string),
            hostname: should_set_hostname(pod, svc)
                .then(|| pod.spec.as_ref().and_then(|s| s.hostname.clone()))
                .flatten(),
            target_ref: Some(pod_target_ref(pod)),
        };
        let pod_ports = resolved_ports(pod, &ports);
        if !ports.is_empty() && pod_ports.is_empty() {
            continue;
        }
        let entry = groups.entry(pod_ports).or_default();
        if publish_not_ready || util::is_pod_ready(pod) {
            entry.0.push(addr);
        } else {
            entry.1.push(addr);
        }
    }
    let mut subsets: Vec<EndpointSubset> = groups
        .into_iter()
        .map(|(ports, (mut ready, mut not_ready))| {
            let key = |a: &EndpointAddress| (a.ip.clone(), a.target_ref.as_ref().and_then(|r| r.uid.clone()));
            ready.sort_by_key(key);
            not_ready.sort_by_key(key);
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: (!ports.is_empty()).then(|| {
                    ports
                        .into_iter()
                        .map(|(name, port, protocol, app_protocol)| EndpointPort {
                            name: (!name.is_empty()).then_some(name),
                            port,
                            protocol: Some(protocol),
                            app_protocol,
                        })
                        .collect()
                }),
            }
        })
        .collect();
    subsets
        .sort_by_key(|s| s.addresses.iter().chain(s.not_ready_addresses.iter()).flatten().next().map(|a| a.ip.clone()));
    subsets
}

pub async fn reconcile(key: ObjKey, ctx: Arc<Ctx>) -> anyhow::Result<Action> {
    let api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let existing = ctx.endpoints.get(&key);
    let Some(svc) = ctx.services.get(&key) else {
        // The service is gone: so are its endpoints (only those this controller manages).
        if let Some(ep) = existing.filter(|e| e.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(COMPONENT)) {
            match api
                .delete(
                    &key.name,
                    &DeleteParams {
                        preconditions: Some(kube::api::Preconditions { uid: ep.uid(), resource_version: None }),
                        ..Default::default()
                    },
                )
                .await
            {
                Ok(_) => {}
                Err(e) if util::is_not_found(&e) || util::is_conflict(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        return Ok(Action::done());
    };
    let Some(sel) = service_selector(&svc) else { return Ok(Action::done()) };
    if svc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::done());
    }
    let pods: Vec<Arc<Pod>> = ctx.pods.list_ns(&key.namespace).into_iter().filter(|p| selects(sel, p)).collect();
    let subsets = desired_subsets(&svc, &pods);
    let mut labels = derived_labels(&svc);
    labels.insert(MANAGED_BY_LABEL.into(), COMPONENT.into());
    let pp = PostParams { field_manager: Some(COMPONENT.into()), ..Default::default() };
    match existing {
        Some(ep) => {
            let current_subsets = ep.subsets.clone().unwrap_or_default();
            if current_subsets == subsets && ep.metadata.labels.clone().unwrap_or_default() == labels {
                return Ok(Action::done());
            }
            let mut new = (*ep).clone();
            new.subsets = (!subsets.is_empty()).then_some(subsets);
            new.metadata.labels = Some(labels);
            api.replace(&key.name, &pp, &new).await?;
            let rv = ep.resource_version();
            ctx.endpoints
                .wait_until(std::time::Duration::from_secs(2), |s| {
                    s.get(&key).is_none_or(|e| e.resource_version() != rv)
                })
                .await;
        }
        None => {
            let ep = Endpoints {
                metadata: ObjectMeta {
                    name: Some(key.name.clone()),
                    namespace: Some(key.namespace.clone()),
                    labels: Some(labels),
                    ..Default::default()
                },
                subsets: (!subsets.is_empty()).then_some(subsets),
            };
            match api.create(&pp, &ep).await {
                Ok(_) => {}
                Err(e) if util::is_namespace_gone(&e) => return Ok(Action::done()),
                Err(e) => return Err(e.into()),
            }
            ctx.endpoints.wait_until(std::time::Duration::from_secs(2), |s| s.get(&key).is_some()).await;
        }
    }
    Ok(Action::done())
}
