//! The EndpointSlice controller: for each Service with a selector, EndpointSlices (owned by the
//! service, labelled `kubernetes.io/service-name` and managed by
//! `endpointslice-controller.k8s.io`) listing the matching pods with ready / serving /
//! terminating conditions. Endpoints with the same resolved ports share slices of at most 100.
//! For a Service without a selector, the Endpoints its user wrote are mirrored into slices
//! managed by `endpointslicemirroring-controller.k8s.io` (unless labelled
//! `endpointslice.kubernetes.io/skip-mirror: "true"`).

use crate::Ctx;
use crate::endpoints::{
    derived_labels, pod_ip, pod_target_ref, resolved_ports, selects, service_selector, should_pod_be_in_endpoints,
    should_set_hostname,
};
use crate::runtime::{Action, ObjKey, Queue};
use crate::util;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
pub const MIRRORING_CONTROLLER_NAME: &str = "endpointslicemirroring-controller.k8s.io";
pub const SKIP_MIRROR_LABEL: &str = "endpointslice.kubernetes.io/skip-mirror";
const COMPONENT: &str = "endpointslice-controller";
const MAX_ENDPOINTS_PER_SLICE: usize = 100;

pub fn register(ctx: &Arc<Ctx>, queue: Queue) {
    let q = queue.clone();
    ctx.services.on_change(move |old, new| {
        if let Some(s) = new.or(old) {
            q.add(ObjKey::of(s.as_ref()));
        }
    });
    let q = queue.clone();
    ctx.slices.on_change(move |old, new| {
        for s in [old, new].into_iter().flatten() {
            if let Some(svc) = s.labels().get(SERVICE_NAME_LABEL) {
                q.add(ObjKey::new(s.namespace().unwrap_or_default(), svc.clone()));
            }
        }
    });
    let q = queue.clone();
    ctx.endpoints.on_change(move |old, new| {
        if let Some(e) = new.or(old) {
            q.add(ObjKey::of(e.as_ref()));
        }
    });
    crate::endpoints::register_pod_handler(ctx, queue);
}

fn to_endpoint(ctx: &Ctx, pod: &Pod, svc: &Service) -> Option<Endpoint> {
    let ip = pod_ip(pod)?;
    let publish_not_ready = svc.spec.as_ref().and_then(|s| s.publish_not_ready_addresses).unwrap_or(false);
    let serving = util::is_pod_ready(pod);
    let terminating = util::is_terminating(&pod.metadata);
    // "ready" is never true for a terminating pod unless publishNotReadyAddresses is set.
    let ready = publish_not_ready || (serving && !terminating);
    let node = util::pod_node(pod).map(str::to_string);
    let zone = node
        .as_ref()
        .and_then(|n| ctx.nodes.get(&ObjKey::cluster(n.clone())))
        .and_then(|n| n.labels().get("topology.kubernetes.io/zone").cloned());
    Some(Endpoint {
        addresses: vec![ip],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        node_name: node,
        zone,
        hostname: should_set_hostname(pod, svc).then(|| pod.spec.as_ref().and_then(|s| s.hostname.clone())).flatten(),
        target_ref: Some(pod_target_ref(pod)),
        ..Default::default()
    })
}

type PortKey = Vec<crate::endpoints::ResolvedPort>;

fn port_key(ports: Option<&Vec<EndpointPort>>) -> PortKey {
    let mut k: PortKey = ports
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                p.port.unwrap_or(0),
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                p.app_protocol.clone(),
            )
        })
        .collect();
    k.sort();
    k
}

fn ports_of(key: &PortKey) -> Vec<EndpointPort> {
    key.iter()
        .map(|(name, port, protocol, app)| EndpointPort {
            name: Some(name.clone()),
            port: Some(*port),
            protocol: Some(protocol.clone()),
            app_protocol: app.clone(),
        })
        .collect()
}

fn endpoint_sort_key(e: &Endpoint) -> (String, String) {
    (
        e.addresses.first().cloned().unwrap_or_default(),
        e.target_ref.as_ref().and_then(|r| r.uid.clone()).unwrap_or_default(),
    )
}

pub async fn reconcile(key: ObjKey, ctx: Arc<Ctx>) -> anyhow::Result<Action> {
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let all = ctx.slices.indexed(&format!("{}/{}", key.namespace, key.name));
    let ours: Vec<Arc<EndpointSlice>> = all.iter().filter(|s| managed_by(s, CONTROLLER_NAME)).cloned().collect();
    let mirrored: Vec<Arc<EndpointSlice>> =
        all.iter().filter(|s| managed_by(s, MIRRORING_CONTROLLER_NAME)).cloned().collect();
    let svc = ctx.services.get(&key).filter(|s| s.metadata.deletion_timestamp.is_none());
    match svc {
        Some(svc) if service_selector(&svc).is_some() => {
            delete_all(&ctx, &api, &mirrored).await?;
            let (desired, labels) = from_pods(&ctx, &key, &svc);
            sync_slices(&ctx, &api, &key, ours, desired, labels, util::controller_owner_ref(svc.as_ref()), true)
                .await?;
        }
        Some(svc) => {
            // A service without a selector: its Endpoints, written by its user, are mirrored.
            delete_all(&ctx, &api, &ours).await?;
            let ep = ctx.endpoints.get(&key).filter(|e| {
                e.labels().get(SKIP_MIRROR_LABEL).map(String::as_str) != Some("true")
                    && e.labels().get(crate::endpoints::MANAGED_BY_LABEL).is_none()
                    && e.metadata.deletion_timestamp.is_none()
            });
            match ep {
                Some(ep) => {
                    let (desired, labels) = from_endpoints(&key, &ep, &svc);
                    sync_slices(
                        &ctx,
                        &api,
                        &key,
                        mirrored,
                        desired,
                        labels,
                        util::controller_owner_ref(ep.as_ref()),
                        false,
                    )
                    .await?;
                }
                None => delete_all(&ctx, &api, &mirrored).await?,
            }
        }
        None => {
            let both: Vec<Arc<EndpointSlice>> = ours.into_iter().chain(mirrored).collect();
            delete_all(&ctx, &api, &both).await?;
        }
    }
    Ok(Action::done())
}

fn managed_by(s: &EndpointSlice, manager: &str) -> bool {
    s.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(manager)
}

type Desired = BTreeMap<PortKey, Vec<Endpoint>>;

/// The endpoints of the pods a service selects, grouped by their resolved ports.
fn from_pods(ctx: &Ctx, key: &ObjKey, svc: &Service) -> (Desired, BTreeMap<String, String>) {
    let sel = service_selector(svc).expect("checked");
    let svc_ports = svc.spec.as_ref().and_then(|s| s.ports.clone()).unwrap_or_default();
    let mut desired: Desired = BTreeMap::new();
    for pod in ctx.pods.list_ns(&key.namespace) {
        if !selects(sel, &pod) || !should_pod_be_in_endpoints(&pod, true) {
            continue;
        }
        let ports = resolved_ports(&pod, &svc_ports);
        if !svc_ports.is_empty() && ports.is_empty() {
            continue;
        }
        if let Some(ep) = to_endpoint(ctx, &pod, svc) {
            desired.entry(ports).or_default().push(ep);
        }
    }
    let mut labels = derived_labels(svc);
    labels.insert(SERVICE_NAME_LABEL.into(), key.name.clone());
    labels.insert(MANAGED_BY_LABEL.into(), CONTROLLER_NAME.into());
    (desired, labels)
}

/// The endpoints of a user-written Endpoints object (Kubernetes' EndpointSlice mirroring).
fn from_endpoints(key: &ObjKey, ep: &Endpoints, _svc: &Service) -> (Desired, BTreeMap<String, String>) {
    let mut desired: Desired = BTreeMap::new();
    for subset in ep.subsets.iter().flatten() {
        let ports: PortKey = port_key(Some(
            &subset
                .ports
                .iter()
                .flatten()
                .map(|p| EndpointPort {
                    name: Some(p.name.clone().unwrap_or_default()),
                    port: Some(p.port),
                    protocol: p.protocol.clone(),
                    app_protocol: p.app_protocol.clone(),
                })
                .collect(),
        ));
        let entry = desired.entry(ports).or_default();
        for (addrs, ready) in [(&subset.addresses, true), (&subset.not_ready_addresses, false)] {
            for a in addrs.iter().flatten() {
                entry.push(Endpoint {
                    addresses: vec![a.ip.clone()],
                    conditions: Some(EndpointConditions { ready: Some(ready), serving: None, terminating: None }),
                    hostname: a.hostname.clone(),
                    node_name: a.node_name.clone(),
                    target_ref: a.target_ref.clone(),
                    ..Default::default()
                });
            }
        }
    }
    let mut labels = ep.metadata.labels.clone().unwrap_or_default();
    labels.insert(SERVICE_NAME_LABEL.into(), key.name.clone());
    labels.insert(MANAGED_BY_LABEL.into(), MIRRORING_CONTROLLER_NAME.into());
    (desired, labels)
}

async fn delete_all(ctx: &Ctx, api: &Api<EndpointSlice>, slices: &[Arc<EndpointSlice>]) -> anyhow::Result<()> {
    for s in slices {
        delete_slice(api, s).await?;
    }
    let keys: Vec<ObjKey> = slices.iter().map(|s| ObjKey::of(s.as_ref())).collect();
    if !keys.is_empty() {
        ctx.slices.wait_until(Duration::from_secs(2), |c| keys.iter().all(|k| c.get(k).is_none())).await;
    }
    Ok(())
}

/// Brings `existing` slices to `desired`: chunks of at most 100 endpoints per port set, reusing
/// slices with the same ports, creating and deleting the difference. `placeholder`: a service
/// without endpoints keeps one empty slice.
#[allow(clippy::too_many_arguments)]
async fn sync_slices(
    ctx: &Ctx,
    api: &Api<EndpointSlice>,
    key: &ObjKey,
    existing: Vec<Arc<EndpointSlice>>,
    desired: Desired,
    labels: BTreeMap<String, String>,
    owner: k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    placeholder: bool,
) -> anyhow::Result<()> {
    let mut want: Vec<(PortKey, Vec<Endpoint>)> = Vec::new();
    for (ports, mut eps) in desired {
        eps.sort_by_key(endpoint_sort_key);
        for chunk in eps.chunks(MAX_ENDPOINTS_PER_SLICE) {
            want.push((ports.clone(), chunk.to_vec()));
        }
    }
    if want.is_empty() && placeholder {
        want.push((Vec::new(), Vec::new()));
    }
    let mut unused: Vec<Arc<EndpointSlice>> = existing;
    unused.sort_by_key(|s| s.name_any());
    let pp = PostParams { field_manager: Some(COMPONENT.into()), ..Default::default() };
    let mut writes = 0usize;
    let mut created: Vec<String> = Vec::new();
    let mut updated: Vec<(ObjKey, String)> = Vec::new();
    for (ports, eps) in want {
        let pos = unused.iter().position(|s| port_key(s.ports.as_ref()) == ports);
        let ports_list = (!ports.is_empty()).then(|| ports_of(&ports));
        match pos.map(|i| unused.remove(i)) {
            Some(s) => {
                let same = s.endpoints == eps
                    && s.ports == ports_list
                    && s.metadata.labels.as_ref() == Some(&labels)
                    && s.address_type == "IPv4";
                if !same {
                    let mut new = (*s).clone();
                    new.endpoints = eps;
                    new.ports = ports_list;
                    new.metadata.labels = Some(labels.clone());
                    new.address_type = "IPv4".into();
                    match api.replace(&s.name_any(), &pp, &new).await {
                        Ok(_) => updated.push((ObjKey::of(s.as_ref()), s.resource_version().unwrap_or_default())),
                        Err(e) if util::is_not_found(&e) => {}
                        Err(e) => return Err(e.into()),
                    }
                    writes += 1;
                }
            }
            None => {
                let slice = EndpointSlice {
                    metadata: ObjectMeta {
                        generate_name: Some(format!("{}-", key.name)),
                        namespace: Some(key.namespace.clone()),
                        labels: Some(labels.clone()),
                        owner_references: Some(vec![owner.clone()]),
                        ..Default::default()
                    },
                    address_type: "IPv4".into(),
                    endpoints: eps,
                    ports: ports_list,
                };
                match api.create(&pp, &slice).await {
                    Ok(s) => created.push(s.name_any()),
                    Err(e) if util::is_namespace_gone(&e) => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
                writes += 1;
            }
        }
    }
    let deleted: Vec<ObjKey> = unused.iter().map(|s| ObjKey::of(s.as_ref())).collect();
    for s in unused {
        delete_slice(api, &s).await?;
        writes += 1;
    }
    if writes > 0 {
        let ns = key.namespace.clone();
        ctx.slices
            .wait_until(Duration::from_secs(2), |c| {
                created.iter().all(|n| c.get_named(&ns, n).is_some())
                    && deleted.iter().all(|k| c.get(k).is_none())
                    && updated
                        .iter()
                        .all(|(k, rv)| c.get(k).is_none_or(|s| s.resource_version().as_deref() != Some(rv.as_str())))
            })
            .await;
    }
    Ok(())
}

async fn delete_slice(api: &Api<EndpointSlice>, s: &EndpointSlice) -> anyhow::Result<()> {
    let dp = DeleteParams {
        preconditions: Some(Preconditions { uid: s.uid(), resource_version: None }),
        ..Default::default()
    };
    match api.delete(&s.name_any(), &dp).await {
        Ok(_) => Ok(()),
        Err(e) if util::is_not_found(&e) || util::is_conflict(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
