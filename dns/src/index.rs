//! What the zone needs of each watched object, and nothing more.
//!
//! The server keeps these instead of the API objects: a Service or an EndpointSlice decoded into
//! k8s-openapi types costs kilobytes (every optional field has its slot), the few facts DNS reads
//! cost tens of bytes — and memory per 1,000 services and pods is one of the DNS targets.

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq)]
pub struct PortInfo {
    pub name: Arc<str>,
    /// Lowercase (`tcp`, `udp`, `sctp`), as in SRV names.
    pub proto: Arc<str>,
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
    pub namespace: Arc<str>,
    pub name: Box<str>,
    pub kind: SvcKind,
    /// Named ports only (SRV records exist for those).
    pub ports: Box<[PortInfo]>,
}

/// A slice's endpoints packed into one allocation (most slices have a handful of one-address
/// endpoints: a few bytes each instead of a boxed struct and a boxed address list each).
/// Per endpoint: `ready u8, hostname_len u8, hostname, naddr u8`, then per address its length
/// (4 or 16) and its octets.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Endpoints(Box<[u8]>);

/// One endpoint of [`Endpoints`].
pub struct EndpointRef<'a> {
    pub ready: bool,
    pub hostname: Option<&'a str>,
    addrs: &'a [u8],
}

impl EndpointRef<'_> {
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let mut rest = self.addrs;
        std::iter::from_fn(move || {
            let (&len, tail) = rest.split_first()?;
            let (octets, tail) = tail.split_at_checked(len as usize)?;
            rest = tail;
            match len {
                4 => Some(IpAddr::from(<[u8; 4]>::try_from(octets).ok()?)),
                _ => Some(IpAddr::from(<[u8; 16]>::try_from(octets).ok()?)),
            }
        })
    }
}

impl Endpoints {
    pub fn pack<'a>(eps: impl Iterator<Item = (bool, Option<&'a str>, Vec<IpAddr>)>) -> Endpoints {
        let mut out = Vec::new();
        for (ready, hostname, addrs) in eps {
            out.push(ready as u8);
            let host = hostname.filter(|h| h.len() <= 255).unwrap_or("");
            out.push(host.len() as u8);
            out.extend_from_slice(host.as_bytes());
            let addrs = &addrs[..addrs.len().min(255)];
            out.push(addrs.len() as u8);
            for a in addrs {
                match a {
                    IpAddr::V4(v4) => {
                        out.push(4);
                        out.extend_from_slice(&v4.octets());
                    }
                    IpAddr::V6(v6) => {
                        out.push(16);
                        out.extend_from_slice(&v6.octets());
                    }
                }
            }
        }
        Endpoints(out.into_boxed_slice())
    }

    pub fn iter(&self) -> impl Iterator<Item = EndpointRef<'_>> {
        let mut rest: &[u8] = &self.0;
        std::iter::from_fn(move || {
            let (&ready, tail) = rest.split_first()?;
            let (&hlen, tail) = tail.split_first()?;
            let (host, tail) = tail.split_at_checked(hlen as usize)?;
            let (&naddr, mut tail) = tail.split_first()?;
            let start = tail;
            let mut used = 0;
            for _ in 0..naddr {
                let (&len, t) = tail.split_first()?;
                tail = t.get(len as usize..)?;
                used += 1 + len as usize;
            }
            rest = tail;
            Some(EndpointRef {
                ready: ready != 0,
                hostname: std::str::from_utf8(host).ok().filter(|h| !h.is_empty()),
                addrs: &start[..used],
            })
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SliceInfo {
    pub namespace: Arc<str>,
    /// The `kubernetes.io/service-name` label.
    pub service: Box<str>,
    pub endpoints: Endpoints,
    pub ports: Box<[PortInfo]>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PodInfo {
    pub namespace: Arc<str>,
    pub ips: Box<[IpAddr]>,
}

static SEEN: std::sync::Mutex<Option<HashSet<Arc<str>>>> = std::sync::Mutex::new(None);

/// Namespaces, protocols and port names repeat across thousands of objects: one shared copy
/// each. [`prune_interned`] drops the ones no object uses any more.
fn intern(s: &str) -> Arc<str> {
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let seen = seen.get_or_insert_with(HashSet::new);
    if let Some(found) = seen.get(s) {
        return found.clone();
    }
    let new: Arc<str> = s.into();
    seen.insert(new.clone());
    new
}

/// Forgets interned strings only the interner still holds.
pub fn prune_interned() {
    if let Some(seen) = SEEN.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        seen.retain(|s| Arc::strong_count(s) > 1);
    }
}

fn named_port(name: Option<&str>, proto: Option<&str>, port: Option<i32>) -> Option<PortInfo> {
    let name = name.filter(|s| !s.is_empty())?;
    let port = u16::try_from(port?).ok()?;
    Some(PortInfo { name: intern(name), proto: intern(&proto.unwrap_or("TCP").to_ascii_lowercase()), port })
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
        Some(SvcInfo { namespace: intern(namespace), name: name.into(), kind, ports })
    }
}

impl SliceInfo {
    pub fn from_slice(s: &EndpointSlice) -> Option<SliceInfo> {
        let namespace = s.metadata.namespace.as_deref().unwrap_or("default");
        let service = s.metadata.labels.as_ref()?.get("kubernetes.io/service-name")?;
        let endpoints = Endpoints::pack(s.endpoints.iter().map(|e| {
            (
                e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
                e.hostname.as_deref().filter(|h| !h.is_empty()),
                e.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
            )
        }));
        let ports = s
            .ports
            .iter()
            .flatten()
            .filter_map(|p| named_port(p.name.as_deref(), p.protocol.as_deref(), p.port))
            .collect();
        Some(SliceInfo { namespace: intern(namespace), service: service.as_str().into(), endpoints, ports })
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
        Some(PodInfo { namespace: intern(p.metadata.namespace.as_deref().unwrap_or("default")), ips: ips.into() })
    }
}

/// The current objects of one kind, by `namespace/name`, kept from a kube-rs watcher's events
/// (a relist replaces the whole map at once, as a reflector store does).
#[derive(Debug)]
pub struct Index<V> {
    /// By a hash of `namespace/name` (not the string: one less allocation per object).
    pub live: HashMap<u64, V>,
    relist: Option<HashMap<u64, V>>,
    pub listed: bool,
    /// Keyed per process, so object names cannot be chosen to collide.
    hasher: std::hash::RandomState,
}

impl<V> Default for Index<V> {
    fn default() -> Self {
        Index { live: HashMap::new(), relist: None, listed: false, hasher: Default::default() }
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
        let hasher = self.hasher.clone();
        let key = move |k: &K| -> u64 {
            use std::hash::BuildHasher;
            let m = k.meta();
            hasher.hash_one((m.namespace.as_deref().unwrap_or(""), m.name.as_deref().unwrap_or("")))
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
