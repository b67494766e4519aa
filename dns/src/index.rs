//! What the zone needs of each watched object, and nothing more.
//!
//! The server keeps these instead of the API objects: a Service or an EndpointSlice decoded into
//! k8s-openapi types costs kilobytes (every optional field has its slot), the few facts DNS reads
//! cost tens of bytes — and memory per 1,000 services and pods is one of the DNS targets.

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::HashMap;
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq)]
pub struct PortInfo {
    pub name: Box<str>,
    /// Lowercase (`tcp`, `udp`, `sctp`), as in SRV names.
    pub proto: Box<str>,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SvcKind {
    ClusterIp(Box<[IpAddr]>),
    Headless { publish_not_ready: bool },
    ExternalName(Box<str>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct SvcInfo {
    pub namespace: Box<str>,
    pub name: Box<str>,
    pub kind: SvcKind,
    /// Named ports only (SRV records exist for those).
    pub ports: Box<[PortInfo]>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EndpointInfo {
    pub addresses: Box<[IpAddr]>,
    pub hostname: Option<Box<str>>,
    pub ready: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SliceInfo {
    pub namespace: Box<str>,
    /// The `kubernetes.io/service-name` label.
    pub service: Box<str>,
    pub endpoints: Box<[EndpointInfo]>,
    pub ports: Box<[PortInfo]>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PodInfo {
    pub namespace: Box<str>,
    pub ips: Box<[IpAddr]>,
}

fn named_port(name: Option<&str>, proto: Option<&str>, port: Option<i32>) -> Option<PortInfo> {
    let name = name.filter(|s| !s.is_empty())?;
    let port = u16::try_from(port?).ok()?;
    Some(PortInfo { name: name.into(), proto: proto.unwrap_or("TCP").to_ascii_lowercase().into(), port })
}

impl SvcInfo {
    pub fn from_service(s: &Service) -> Option<SvcInfo> {
        let name = s.metadata.name.as_deref()?;
        let namespace = s.metadata.namespace.as_deref().unwrap_or("default");
        let spec = s.spec.as_ref()?;
        let kind = if spec.type_.as_deref() == Some("ExternalName") {
            SvcKind::ExternalName(spec.external_name.as_deref().unwrap_or_default().into())
        } else if spec.cluster_ip.as_deref() == Some("None") {
            SvcKind::Headless { publish_not_ready: spec.publish_not_ready_addresses.unwrap_or(false) }
        } else {
            let mut ips: Vec<IpAddr> = spec.cluster_ips.iter().flatten().filter_map(|s| s.parse().ok()).collect();
            if ips.is_empty() {
                ips.extend(spec.cluster_ip.as_deref().and_then(|s| s.parse::<IpAddr>().ok()));
            }
            SvcKind::ClusterIp(ips.into())
        };
        let ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| named_port(p.name.as_deref(), p.protocol.as_deref(), Some(p.port)))
            .collect();
        Some(SvcInfo { namespace: namespace.into(), name: name.into(), kind, ports })
    }
}

impl SliceInfo {
    pub fn from_slice(s: &EndpointSlice) -> Option<SliceInfo> {
        let namespace = s.metadata.namespace.as_deref().unwrap_or("default");
        let service = s.metadata.labels.as_ref()?.get("kubernetes.io/service-name")?;
        let endpoints = s
            .endpoints
            .iter()
            .map(|e| EndpointInfo {
                addresses: e.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
                hostname: e.hostname.as_deref().filter(|h| !h.is_empty()).map(Into::into),
                ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
            })
            .collect();
        let ports = s
            .ports
            .iter()
            .flatten()
            .filter_map(|p| named_port(p.name.as_deref(), p.protocol.as_deref(), p.port))
            .collect();
        Some(SliceInfo { namespace: namespace.into(), service: service.as_str().into(), endpoints, ports })
    }
}

impl PodInfo {
    /// Pods that have DNS records: with an IP, not host-network, not finished.
    pub fn from_pod(p: &Pod) -> Option<PodInfo> {
        let status = p.status.as_ref()?;
        if p.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false)
            || matches!(status.phase.as_deref(), Some("Succeeded") | Some("Failed"))
        {
            return None;
        }
        let mut ips: Vec<IpAddr> = status.pod_ips.iter().flatten().filter_map(|p| p.ip.parse().ok()).collect();
        if ips.is_empty() {
            ips.extend(status.pod_ip.as_deref().and_then(|s| s.parse::<IpAddr>().ok()));
        }
        if ips.is_empty() {
            return None;
        }
        Some(PodInfo { namespace: p.metadata.namespace.as_deref().unwrap_or("default").into(), ips: ips.into() })
    }
}

/// The current objects of one kind, by `namespace/name`, kept from a kube-rs watcher's events
/// (a relist replaces the whole map at once, as a reflector store does).
#[derive(Debug)]
pub struct Index<V> {
    pub live: HashMap<Box<str>, V>,
    relist: Option<HashMap<Box<str>, V>>,
    pub listed: bool,
}

impl<V> Default for Index<V> {
    fn default() -> Self {
        Index { live: HashMap::new(), relist: None, listed: false }
    }
}

impl<V> Index<V> {
    /// Applies one watcher event; `convert` returns `None` for objects without records.
    /// Returns whether the served state may have changed.
    pub fn apply<K>(&mut self, ev: kube::runtime::watcher::Event<K>, convert: impl Fn(&K) -> Option<V>) -> bool
    where
        K: kube::Resource,
    {
        use kube::runtime::watcher::Event;
        let key = |k: &K| -> Box<str> {
            let m = k.meta();
            format!("{}/{}", m.namespace.as_deref().unwrap_or(""), m.name.as_deref().unwrap_or("")).into()
        };
        match ev {
            Event::Init => {
                self.relist = Some(HashMap::new());
                false
            }
            Event::InitApply(k) => {
                if let (Some(v), Some(r)) = (convert(&k), self.relist.as_mut()) {
                    r.insert(key(&k), v);
                }
                false
            }
            Event::InitDone => {
                if let Some(r) = self.relist.take() {
                    self.live = r;
                }
                self.live.shrink_to_fit();
                self.listed = true;
                true
            }
            Event::Apply(k) => {
                match convert(&k) {
                    Some(v) => self.live.insert(key(&k), v),
                    None => self.live.remove(&key(&k)),
                };
                true
            }
            Event::Delete(k) => self.live.remove(&key(&k)).is_some(),
        }
    }
}
