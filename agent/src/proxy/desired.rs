//! The desired contents of the service maps, as a pure function of the watched Services and
//! EndpointSlices (what kube-proxy calls the service and endpoints "change trackers", computed
//! whole here: cheap enough, and trivially level-triggered).

use crate::dataplane::{Frontend, FrontendPolicy, Protocol};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

/// The label linking an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Which service port a frontend belongs to (metric labels, logs).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    /// The service port's name; empty for an unnamed (single) port.
    pub port: String,
}

impl std::fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.port.is_empty() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

/// One frontend's desired state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredFrontend {
    pub service: ServicePortName,
    /// Ready backends, sorted and without duplicates. Empty: the frontend refuses connections.
    pub backends: Vec<(Ipv4Addr, u16)>,
    /// `sessionAffinity: ClientIP`: its timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// A NodePort frontend of an `externalTrafficPolicy: Local` service: `backends` are this
    /// node's endpoints only, and the client's address is kept.
    pub external_local: bool,
    /// A frontend reached from outside the cluster: a NodePort on a node address, or an
    /// external IP (see [`FrontendPolicy::external`]).
    pub external: bool,
}

impl DesiredFrontend {
    /// The dataplane's view of the policies.
    pub fn policy(&self) -> FrontendPolicy {
        FrontendPolicy { affinity: self.affinity_timeout, external_local: self.external_local, external: self.external }
    }
}

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// Frontend → desired state.
pub type Desired = BTreeMap<Frontend, DesiredFrontend>;

fn protocol(p: Option<&str>) -> Option<Protocol> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        _ => None, // SCTP: not handled by the socket programs
    }
}

/// Computes the desired map contents.
///
/// - Every IPv4 ClusterIP (`spec.clusterIPs`, else `spec.clusterIP`) and every IPv4
///   `spec.externalIPs` entry of a non-headless, non-ExternalName Service is a frontend for each
///   TCP/UDP port.
/// - Its backends are the addresses of the endpoints that are ready (`conditions.ready` true or
///   unset, as kube-proxy reads it) in the Service's IPv4 EndpointSlices, with the port of the
///   slice port whose name and protocol match the service port: the EndpointSlice controller has
///   already resolved a named `targetPort` per pod. A numeric `targetPort` is used for a slice
///   port that carries no number.
/// - A service with no ready endpoint is still a frontend, with no backends: it refuses at once.
/// - A `NodePort` or `LoadBalancer` service's `nodePort`s are frontends on each of `node_ips`
///   (the node's own addresses): connecting to `<node address>:<nodePort>` reaches the service at
///   the socket, so host-local access needs no per-packet program.
/// - `internalTrafficPolicy: Local`: only endpoints whose `nodeName` is `node_name` (the node
///   this proxy serves) are backends — kube-dns uses it so each pod asks its own node's DNS.
/// - `externalTrafficPolicy: Local`: the NodePort frontends have only this node's endpoints and
///   keep the client's source address (the ClusterIP frontends are unaffected).
/// - `sessionAffinity: ClientIP`: the frontend keeps a client on one backend for
///   `sessionAffinityConfig.clientIP.timeoutSeconds` (default 10800) after its last connection.
/// - Two services claiming the same frontend: the first in namespace/name order wins.
pub fn compute(
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    node_ips: &[Ipv4Addr],
    node_name: Option<&str>,
) -> Desired {
    let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for s in slices {
        let ns = s.metadata.namespace.as_deref().unwrap_or("");
        let Some(svc) = s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) else { continue };
        if !slice_of(s, ns, svc) {
            continue;
        }
        by_service.entry((ns, svc.as_str())).or_default().push(s);
    }

    let mut sorted: Vec<&Service> = services.iter().map(|s| s.as_ref()).collect();
    sorted.sort_by(|a, b| {
        (a.metadata.namespace.as_deref(), a.metadata.name.as_deref())
            .cmp(&(b.metadata.namespace.as_deref(), b.metadata.name.as_deref()))
    });

    let mut out = Desired::new();
    for svc in sorted {
        let ns = svc.metadata.namespace.as_deref().unwrap_or("");
        let name = svc.metadata.name.as_deref().unwrap_or("");
        let slices = by_service.get(&(ns, name)).map(Vec::as_slice).unwrap_or(&[]);
        for (fe, want) in compute_service(svc, slices, node_ips, node_name) {
            out.entry(fe).or_insert(want);
        }
    }
    out
}

/// Whether a slice belongs to the named service and is usable (IPv4, not being deleted).
pub fn slice_of(s: &EndpointSlice, namespace: &str, service: &str) -> bool {
    s.metadata.namespace.as_deref().unwrap_or("") == namespace
        && s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)).map(String::as_str) == Some(service)
        && s.address_type == "IPv4"
        && s.metadata.deletion_timestamp.is_none()
}

/// The frontends of one Service given its EndpointSlices (see [`compute`] for the rules).
pub fn compute_service(
    svc: &Service,
    slices: &[&EndpointSlice],
    node_ips: &[Ipv4Addr],
    node_name: Option<&str>,
) -> Vec<(Frontend, DesiredFrontend)> {
    let mut out = Vec::new();
    let Some(spec) = &svc.spec else { return out };
    if spec.type_.as_deref() == Some("ExternalName") {
        return out;
    }
    let ns = svc.metadata.namespace.as_deref().unwrap_or("");
    let name = svc.metadata.name.as_deref().unwrap_or("");
    let vips: Vec<Ipv4Addr> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().filter_map(|ip| ip.parse().ok()).collect(),
        _ => spec.cluster_ip.iter().filter_map(|ip| ip.parse().ok()).collect(),
    };
    if vips.is_empty() {
        return out; // headless ("None") or IPv6-only
    }
    let external_ips: Vec<Ipv4Addr> =
        spec.external_ips.iter().flatten().filter_map(|ip| ip.parse::<Ipv4Addr>().ok()).collect();
    let node_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
    });
    for sp in spec.ports.iter().flatten() {
        let Some(proto) = protocol(sp.protocol.as_deref()) else { continue };
        let Ok(port) = u16::try_from(sp.port) else { continue };
        let port_name = sp.name.as_deref().unwrap_or("");
        let numeric_target = match &sp.target_port {
            Some(IntOrString::Int(p)) => u16::try_from(*p).ok(),
            Some(IntOrString::String(_)) => None,
            None => Some(port),
        };
        let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
        let mut backends = BTreeSet::new();
        let mut local_backends = BTreeSet::new();
        for slice in slices {
            let Some(target) = slice.ports.iter().flatten().find_map(|p| {
                (p.name.as_deref().unwrap_or("") == port_name && protocol(p.protocol.as_deref()) == Some(proto))
                    .then(|| p.port.and_then(|n| u16::try_from(n).ok()).or(numeric_target))
                    .flatten()
            }) else {
                continue;
            };
            if target == 0 {
                continue;
            }
            for ep in &slice.endpoints {
                let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if !ready || (node_local && ep.node_name.as_deref() != node_name) {
                    continue;
                }
                let on_this_node = node_name.is_some() && ep.node_name.as_deref() == node_name;
                for a in &ep.addresses {
                    if let Ok(ip) = a.parse::<Ipv4Addr>() {
                        backends.insert((ip, target));
                        if on_this_node {
                            local_backends.insert((ip, target));
                        }
                    }
                }
            }
        }
        let backends: Vec<_> = backends.into_iter().collect();
        let local_backends: Vec<_> = local_backends.into_iter().collect();
        let node_port = matches!(spec.type_.as_deref(), Some("NodePort") | Some("LoadBalancer"))
            .then(|| sp.node_port.and_then(|p| u16::try_from(p).ok()))
            .flatten()
            .filter(|p| *p != 0);
        // (address, port, external, externalTrafficPolicy: Local applies)
        let frontends = vips
            .iter()
            .map(|vip| (*vip, port, false, false))
            .chain(external_ips.iter().map(|ip| (*ip, port, true, false)))
            .chain(node_port.into_iter().flat_map(|np| node_ips.iter().map(move |ip| (*ip, np, true, external_local))));
        for (vip, port, external, local) in frontends {
            out.push((
                Frontend { vip, port, proto },
                DesiredFrontend {
                    service: ServicePortName { namespace: ns.into(), name: name.into(), port: port_name.into() },
                    backends: if local { local_backends.clone() } else { backends.clone() },
                    affinity_timeout,
                    external_local: local,
                    external,
                },
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Most rules do not involve node addresses.
    fn compute(services: &[Arc<Service>], slices: &[Arc<EndpointSlice>]) -> Desired {
        super::compute(services, slices, &[], None)
    }

    #[test]
    fn internal_traffic_policy_local_keeps_this_nodes_endpoints() {
        let dns = svc(json!({
            "metadata": {"namespace": "kube-system", "name": "kube-dns"},
            "spec": {"clusterIP": "10.96.0.10", "internalTrafficPolicy": "Local",
                     "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}
        }));
        let sl = slice(json!({
            "metadata": {"namespace": "kube-system", "name": "kube-dns-1", "labels": {SERVICE_NAME_LABEL: "kube-dns"}},
            "addressType": "IPv4",
            "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}],
            "endpoints": [{"addresses": ["10.0.0.1"], "nodeName": "a"}, {"addresses": ["10.0.0.2"], "nodeName": "b"}],
        }));
        let fe = Frontend { vip: Ipv4Addr::new(10, 96, 0, 10), port: 53, proto: Protocol::Udp };
        for (node, want) in [("a", Ipv4Addr::new(10, 0, 0, 1)), ("b", Ipv4Addr::new(10, 0, 0, 2))] {
            let d = super::compute(&[dns.clone()], &[sl.clone()], &[], Some(node));
            assert_eq!(d[&fe].backends, [(want, 53)], "node {node}");
        }
        // No local endpoint: no backend (refused), never another node's.
        assert!(super::compute(&[dns.clone()], &[sl.clone()], &[], Some("c"))[&fe].backends.is_empty());
        // The default policy (Cluster) uses every node's endpoints.
        let mut cluster = (*dns).clone();
        cluster.spec.as_mut().unwrap().internal_traffic_policy = None;
        assert_eq!(super::compute(&[Arc::new(cluster)], &[sl], &[], Some("a"))[&fe].backends.len(), 2);
    }

    #[test]
    fn external_traffic_policy_local_keeps_this_nodes_endpoints_on_node_ports() {
        let np = svc(json!({
            "metadata": {"namespace": "default", "name": "frontend"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.31", "externalTrafficPolicy": "Local",
                     "ports": [{"port": 80, "nodePort": 30002}]}
        }));
        let sl = slice(json!({
            "metadata": {"namespace": "default", "name": "frontend-1", "labels": {SERVICE_NAME_LABEL: "frontend"}},
            "addressType": "IPv4",
            "ports": [{"name": "", "port": 80, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.244.0.9"], "nodeName": "a"}, {"addresses": ["10.244.1.9"], "nodeName": "b"}],
        }));
        let node = Ipv4Addr::new(192, 168, 5, 2);
        let d = super::compute(&[np], &[sl], &[node], Some("a"));
        let cluster_ip = &d[&Frontend { vip: Ipv4Addr::new(10, 96, 0, 31), port: 80, proto: Protocol::Tcp }];
        assert_eq!(cluster_ip.backends.len(), 2, "the ClusterIP keeps every endpoint");
        assert!(!cluster_ip.external_local && !cluster_ip.external);
        let node_port = &d[&Frontend { vip: node, port: 30002, proto: Protocol::Tcp }];
        assert_eq!(node_port.backends, [(Ipv4Addr::new(10, 244, 0, 9), 80)]);
        assert!(node_port.external_local && node_port.external);
    }

    #[test]
    fn node_ports_and_external_ips_are_external_frontends() {
        let np = svc(json!({
            "metadata": {"namespace": "default", "name": "frontend"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.32", "externalIPs": ["198.51.100.7"],
                     "ports": [{"port": 80, "nodePort": 30003}]}
        }));
        let node = Ipv4Addr::new(192, 168, 5, 2);
        let d = super::compute(&[np], &[], &[node], Some("a"));
        let external = |vip: Ipv4Addr, port: u16| {
            let f = &d[&Frontend { vip, port, proto: Protocol::Tcp }];
            assert!(!f.external_local, "externalTrafficPolicy defaults to Cluster");
            f.policy().external
        };
        assert!(!external(Ipv4Addr::new(10, 96, 0, 32), 80), "a ClusterIP is internal");
        assert!(external(Ipv4Addr::new(198, 51, 100, 7), 80), "an external IP");
        assert!(external(node, 30003), "a NodePort");
    }

    #[test]
    fn client_ip_affinity_carries_its_timeout() {
        let sl = slice(json!({
            "metadata": {"namespace": "default", "name": "web-1", "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "", "port": 80, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.244.0.9"]}],
        }));
        let fe = Frontend { vip: Ipv4Addr::new(10, 96, 0, 40), port: 80, proto: Protocol::Tcp };
        let with = |spec: serde_json::Value| {
            let mut spec_full = json!({"clusterIP": "10.96.0.40", "ports": [{"port": 80}]});
            spec_full.as_object_mut().unwrap().extend(spec.as_object().unwrap().clone());
            let s = svc(json!({"metadata": {"namespace": "default", "name": "web"}, "spec": spec_full}));
            compute(&[s], &[sl.clone()])[&fe].affinity_timeout
        };
        assert_eq!(with(json!({})), None);
        assert_eq!(with(json!({"sessionAffinity": "None"})), None);
        assert_eq!(with(json!({"sessionAffinity": "ClientIP"})), Some(DEFAULT_AFFINITY_TIMEOUT));
        assert_eq!(
            with(json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}})),
            Some(60)
        );
    }

    #[test]
    fn node_ports_are_frontends_on_every_node_address() {
        let np = svc(json!({
            "metadata": {"namespace": "default", "name": "frontend"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.30",
                     "ports": [{"port": 80, "targetPort": 80, "nodePort": 30001}]}
        }));
        let sl = slice(json!({
            "metadata": {"namespace": "default", "name": "frontend-1", "labels": {SERVICE_NAME_LABEL: "frontend"}},
            "addressType": "IPv4",
            "ports": [{"name": "", "port": 80, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.244.0.9"]}],
        }));
        let nodes = [Ipv4Addr::LOCALHOST, Ipv4Addr::new(192, 168, 5, 2)];
        let d = super::compute(&[np.clone()], &[sl.clone()], &nodes, None);
        assert_eq!(d.len(), 3, "the ClusterIP and one frontend per node address: {d:?}");
        for ip in nodes {
            let f = &d[&Frontend { vip: ip, port: 30001, proto: Protocol::Tcp }];
            assert_eq!(f.backends, [(Ipv4Addr::new(10, 244, 0, 9), 80)]);
        }
        // A ClusterIP service with a stray nodePort gets none.
        let mut plain = (*np).clone();
        plain.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
        assert_eq!(super::compute(&[Arc::new(plain)], &[sl], &nodes, None).len(), 1);
    }

    fn svc(v: serde_json::Value) -> Arc<Service> {
        Arc::new(serde_json::from_value(v).unwrap())
    }
    fn slice(v: serde_json::Value) -> Arc<EndpointSlice> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn web() -> Arc<Service> {
        svc(json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "externalIPs": ["192.0.2.7"],
                     "ports": [{"name": "http", "port": 80, "targetPort": "web"},
                               {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353}]}
        }))
    }

    fn web_slice(name: &str, eps: serde_json::Value) -> Arc<EndpointSlice> {
        slice(json!({
            "metadata": {"namespace": "default", "name": name, "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "protocol": "UDP"}],
            "endpoints": eps,
        }))
    }

    #[test]
    fn ready_endpoints_with_resolved_ports_on_every_frontend() {
        let d = compute(
            &[web()],
            &[
                web_slice(
                    "a",
                    json!([{"addresses": ["10.244.0.5"], "conditions": {"ready": true}},
                                       {"addresses": ["10.244.0.6"], "conditions": {"ready": false}},
                                       {"addresses": ["10.244.0.7"]}]),
                ),
                web_slice(
                    "b",
                    json!([{"addresses": ["10.244.0.5"], "conditions": {"ready": true}},
                                       {"addresses": ["10.244.1.9"], "conditions": {"ready": true}}]),
                ),
            ],
        );
        let http = Frontend { vip: "10.96.0.20".parse().unwrap(), port: 80, proto: Protocol::Tcp };
        let ext = Frontend { vip: "192.0.2.7".parse().unwrap(), port: 80, proto: Protocol::Tcp };
        let dns = Frontend { vip: "10.96.0.20".parse().unwrap(), port: 53, proto: Protocol::Udp };
        assert_eq!(d.len(), 4);
        let want: Vec<(Ipv4Addr, u16)> =
            ["10.244.0.5", "10.244.0.7", "10.244.1.9"].iter().map(|a| (a.parse().unwrap(), 8080)).collect();
        assert_eq!(d[&http].backends, want);
        assert_eq!(d[&ext].backends, want);
        // The slice port carries no number: the numeric targetPort is used.
        assert_eq!(d[&dns].backends.iter().map(|b| b.1).collect::<Vec<_>>(), [5353, 5353, 5353]);
        assert_eq!(d[&http].service.to_string(), "default/web:http");
    }

    #[test]
    fn no_ready_endpoint_means_a_refusing_frontend() {
        let d = compute(
            &[web()],
            &[web_slice("a", json!([{"addresses": ["10.244.0.6"], "conditions": {"ready": false}}]))],
        );
        assert!(d.values().all(|f| f.backends.is_empty()));
        assert_eq!(d.len(), 4);
        assert_eq!(compute(&[web()], &[]).len(), 4);
    }

    #[test]
    fn headless_external_name_other_namespaces_and_ipv6_are_ignored() {
        let headless = svc(json!({"metadata": {"namespace": "default", "name": "h"},
            "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}));
        let ext = svc(json!({"metadata": {"namespace": "default", "name": "x"},
            "spec": {"type": "ExternalName", "externalName": "example.org"}}));
        assert!(compute(&[headless, ext], &[]).is_empty());
        let other_ns = slice(json!({
            "metadata": {"namespace": "other", "name": "a", "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": ["10.244.0.5"]}]}));
        let v6 = slice(json!({
            "metadata": {"namespace": "default", "name": "v6", "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv6", "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": ["fd00::5"]}]}));
        let d = compute(&[web()], &[other_ns, v6]);
        assert!(d.values().all(|f| f.backends.is_empty()));
    }

    #[test]
    fn unnamed_port_matches_unnamed_slice_port_and_conflicts_keep_the_first() {
        let a = svc(json!({"metadata": {"namespace": "a", "name": "s"},
            "spec": {"clusterIP": "10.96.0.30", "ports": [{"port": 80, "targetPort": 8000}]}}));
        let b = svc(json!({"metadata": {"namespace": "b", "name": "s"},
            "spec": {"clusterIP": "10.96.0.30", "ports": [{"port": 80}]}}));
        let sl = slice(json!({
            "metadata": {"namespace": "a", "name": "s-1", "labels": {SERVICE_NAME_LABEL: "s"}},
            "addressType": "IPv4", "ports": [{"port": 8001}],
            "endpoints": [{"addresses": ["127.0.0.1"]}]}));
        let d = compute(&[b, a], &[sl]);
        assert_eq!(d.len(), 1);
        let f = d.values().next().unwrap();
        assert_eq!(f.service.namespace, "a");
        assert_eq!(f.backends, [(Ipv4Addr::LOCALHOST, 8001)]);
    }
}
