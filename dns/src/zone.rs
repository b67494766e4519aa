//! The cluster zone: an immutable snapshot built from Services, EndpointSlices and Pods, holding
//! every answer as prepared wire bytes so a lookup is one hash probe plus a copy.
//!
//! Records (domain `D`, default `cluster.local`):
//! - `<svc>.<ns>.svc.D` and the seed's short form `<svc>.<ns>.D`: A/AAAA → ClusterIPs; headless
//!   (clusterIP `None`) → the ready endpoint addresses; ExternalName → CNAME.
//! - `<hostname>.<svc>.<ns>.svc.D` for endpoints with a hostname (headless), otherwise
//!   `<a-b-c-d>.<svc>.<ns>.svc.D`.
//! - `_<port>._<proto>.<svc>.<ns>.svc.D` SRV for named ports.
//! - `<a-b-c-d>.<ns>.pod.D` A for running pods (CoreDNS "pods verified").
//! - PTR `d.c.b.a.in-addr.arpa` (and ip6.arpa) for ClusterIPs, endpoint hostnames and pod IPs.
//! - SOA and NS at the apex; every ancestor of a name exists (empty non-terminals → NODATA).

use crate::wire::{self, TYPE_A, TYPE_AAAA, TYPE_ANY, TYPE_CNAME, TYPE_NS, TYPE_PTR, TYPE_SOA, TYPE_SRV};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

/// Prepared records: `count` RRs, each owned by a compression pointer to the question name.
#[derive(Debug, Clone, Default)]
pub struct RrSet {
    pub count: u16,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Default)]
pub struct Node {
    sets: Vec<(u16, RrSet)>,
    any: RrSet,
    cname: Option<RrSet>,
}

pub enum Lookup<'a> {
    Answer(&'a RrSet),
    /// The name is an alias: answer the CNAME whatever the type.
    Cname(&'a RrSet),
    NoData,
    NxDomain,
    /// Not in the cluster zone nor a reverse name we know: forward it.
    NotOurs,
}

pub struct Zone {
    pub domain: Vec<u8>,
    nodes: HashMap<Box<[u8]>, Node>,
    /// The apex SOA as a full RR with an uncompressed owner, for negative answers' authority section.
    pub soa: Vec<u8>,
    pub records: usize,
}

impl Zone {
    pub fn lookup(&self, qname: &[u8], qtype: u16) -> Lookup<'_> {
        match self.nodes.get(qname) {
            Some(node) => {
                if let Some(c) = &node.cname {
                    return Lookup::Cname(c);
                }
                if qtype == TYPE_ANY {
                    return if node.any.count > 0 { Lookup::Answer(&node.any) } else { Lookup::NoData };
                }
                match node.sets.iter().find(|(t, _)| *t == qtype) {
                    Some((_, set)) => Lookup::Answer(set),
                    None => Lookup::NoData,
                }
            }
            None if wire::is_subdomain(qname, &self.domain) => Lookup::NxDomain,
            None => Lookup::NotOurs,
        }
    }

    pub fn is_ours(&self, qname: &[u8]) -> bool {
        wire::is_subdomain(qname, &self.domain)
    }

    pub fn empty(domain: &str, ttl: u32) -> Zone {
        Builder::new(domain, ttl).finish()
    }

    pub fn build(domain: &str, ttl: u32, services: &[Arc<Service>], slices: &[Arc<EndpointSlice>], pods: &[Arc<Pod>]) -> Zone {
        let mut b = Builder::new(domain, ttl);
        // EndpointSlices by (namespace, service name).
        let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for s in slices {
            let ns = s.metadata.namespace.as_deref().unwrap_or("default");
            if let Some(svc) = s.metadata.labels.as_ref().and_then(|l| l.get("kubernetes.io/service-name")) {
                by_service.entry((ns, svc.as_str())).or_default().push(s);
            }
        }
        for svc in services {
            let (Some(name), Some(spec)) = (svc.metadata.name.as_deref(), svc.spec.as_ref()) else { continue };
            let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
            let base = format!("{name}.{ns}.svc.{domain}");
            let short = (ns != "svc" && ns != "pod").then(|| format!("{name}.{ns}.{domain}"));
            let names: Vec<&str> = std::iter::once(base.as_str()).chain(short.as_deref()).collect();
            if spec.type_.as_deref() == Some("ExternalName") {
                if let Some(target) = spec.external_name.as_deref().and_then(wire::name_to_wire) {
                    for n in &names {
                        b.cname(n, target.clone());
                    }
                }
                continue;
            }
            let headless = spec.cluster_ip.as_deref() == Some("None");
            if !headless {
                let mut ips: Vec<&str> = spec.cluster_ips.iter().flatten().map(String::as_str).collect();
                if ips.is_empty() {
                    ips.extend(spec.cluster_ip.as_deref());
                }
                for ip in ips.iter().filter_map(|s| s.parse::<IpAddr>().ok()) {
                    for n in &names {
                        b.addr(n, ip);
                    }
                    b.ptr(ip, &base);
                }
                for p in spec.ports.iter().flatten() {
                    let Some(pname) = p.name.as_deref().filter(|s| !s.is_empty()) else { continue };
                    let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
                    for n in &names {
                        b.srv(&format!("_{pname}._{proto}.{n}"), 0, 100, p.port as u16, &base);
                    }
                }
                for n in &names {
                    b.exists(n);
                }
            } else {
                let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
                for n in &names {
                    b.exists(n);
                }
                for slice in by_service.get(&(ns, name)).into_iter().flatten() {
                    for ep in &slice.endpoints {
                        let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                        if !ready && !publish_not_ready {
                            continue;
                        }
                        for ip in ep.addresses.iter().filter_map(|s| s.parse::<IpAddr>().ok()) {
                            let host = match ep.hostname.as_deref().filter(|h| !h.is_empty()) {
                                Some(h) => h.to_string(),
                                None => dashed(ip),
                            };
                            let target = format!("{host}.{base}");
                            for n in &names {
                                b.addr(n, ip);
                            }
                            b.addr(&target, ip);
                            if ep.hostname.is_some() {
                                b.ptr(ip, &target);
                            }
                            for p in slice.ports.iter().flatten() {
                                let (Some(pname), Some(port)) = (p.name.as_deref().filter(|s| !s.is_empty()), p.port) else { continue };
                                let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
                                for n in &names {
                                    b.srv(&format!("_{pname}._{proto}.{n}"), 0, 100, port as u16, &target);
                                }
                            }
                        }
                    }
                }
            }
        }
        for pod in pods {
            let Some(status) = pod.status.as_ref() else { continue };
            if pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false) {
                continue;
            }
            if matches!(status.phase.as_deref(), Some("Succeeded") | Some("Failed")) {
                continue;
            }
            let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
            let mut ips: Vec<&str> = status.pod_ips.iter().flatten().map(|p| p.ip.as_str()).collect();
            if ips.is_empty() {
                ips.extend(status.pod_ip.as_deref());
            }
            for ip in ips.iter().filter_map(|s| s.parse::<IpAddr>().ok()) {
                let name = format!("{}.{ns}.pod.{domain}", dashed(ip));
                b.addr(&name, ip);
                b.ptr_if_absent(ip, &name);
            }
        }
        b.finish()
    }
}

/// `10.244.0.5` → `10-244-0-5`; IPv6 with `-` for `:` (as Kubernetes does).
pub fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

/// The reverse-lookup name of an address.
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::new();
            for b in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0xF, b >> 4));
            }
            s.push_str("ip6.arpa");
            s
        }
    }
}

#[derive(Default)]
struct NodeBuilder {
    rdata: BTreeMap<u16, BTreeSet<Vec<u8>>>,
    cname: Option<Vec<u8>>,
}

struct Builder {
    domain: String,
    domain_wire: Vec<u8>,
    ttl: u32,
    nodes: HashMap<Vec<u8>, NodeBuilder>,
}

impl Builder {
    fn new(domain: &str, ttl: u32) -> Builder {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let domain_wire = wire::name_to_wire(&domain).expect("valid cluster domain");
        let mut b = Builder { domain, domain_wire: domain_wire.clone(), ttl, nodes: HashMap::new() };
        b.add(domain_wire.clone(), TYPE_SOA, b.soa_rdata());
        let ns_name = wire::name_to_wire(&format!("ns.dns.{}", b.domain)).unwrap();
        b.add(domain_wire, TYPE_NS, ns_name);
        b.exists(&format!("svc.{}", b.domain));
        b.exists(&format!("pod.{}", b.domain));
        b
    }

    fn soa_rdata(&self) -> Vec<u8> {
        let mut r = wire::name_to_wire(&format!("ns.dns.{}", self.domain)).unwrap();
        r.extend(wire::name_to_wire(&format!("hostmaster.{}", self.domain)).unwrap());
        let serial = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as u32).unwrap_or(1);
        for v in [serial, 7200, 1800, 86400, self.ttl] {
            r.extend_from_slice(&v.to_be_bytes());
        }
        r
    }

    fn node(&mut self, name: &str) -> Option<&mut NodeBuilder> {
        let w = wire::name_to_wire(name)?;
        self.ensure_ancestors(&w);
        Some(self.nodes.entry(w).or_default())
    }

    /// Inserts every ancestor of `w` down to the apex (when inside the cluster domain).
    fn ensure_ancestors(&mut self, w: &[u8]) {
        if !wire::is_subdomain(w, &self.domain_wire) {
            return;
        }
        let mut i = 0;
        while w.len() - i > self.domain_wire.len() {
            let len = w[i] as usize;
            i += 1 + len;
            self.nodes.entry(w[i..].to_vec()).or_default();
        }
    }

    fn add(&mut self, w: Vec<u8>, ty: u16, rdata: Vec<u8>) {
        self.ensure_ancestors(&w);
        self.nodes.entry(w).or_default().rdata.entry(ty).or_default().insert(rdata);
    }

    fn exists(&mut self, name: &str) {
        let _ = self.node(name);
    }

    fn addr(&mut self, name: &str, ip: IpAddr) {
        let Some(w) = wire::name_to_wire(name) else { return };
        match ip {
            IpAddr::V4(v4) => self.add(w, TYPE_A, v4.octets().to_vec()),
            IpAddr::V6(v6) => self.add(w, TYPE_AAAA, v6.octets().to_vec()),
        }
    }

    fn cname(&mut self, name: &str, target: Vec<u8>) {
        if let Some(n) = self.node(name) {
            n.cname = Some(target);
        }
    }

    fn srv(&mut self, name: &str, priority: u16, weight: u16, port: u16, target: &str) {
        let (Some(w), Some(t)) = (wire::name_to_wire(name), wire::name_to_wire(target)) else { return };
        let mut r = Vec::with_capacity(6 + t.len());
        r.extend_from_slice(&priority.to_be_bytes());
        r.extend_from_slice(&weight.to_be_bytes());
        r.extend_from_slice(&port.to_be_bytes());
        r.extend(t);
        self.add(w, TYPE_SRV, r);
    }

    fn ptr(&mut self, ip: IpAddr, target: &str) {
        let (Some(w), Some(t)) = (wire::name_to_wire(&reverse_name(ip)), wire::name_to_wire(target)) else { return };
        self.add(w, TYPE_PTR, t);
    }

    /// Pod PTRs yield to service/endpoint PTRs for the same address.
    fn ptr_if_absent(&mut self, ip: IpAddr, target: &str) {
        let Some(w) = wire::name_to_wire(&reverse_name(ip)) else { return };
        if !self.nodes.get(&w).is_some_and(|n| n.rdata.contains_key(&TYPE_PTR)) {
            self.ptr(ip, target);
        }
    }

    fn finish(self) -> Zone {
        let ttl = self.ttl;
        let mut records = 0;
        let mut nodes = HashMap::with_capacity(self.nodes.len());
        for (name, nb) in self.nodes {
            let mut node = Node::default();
            if let Some(target) = nb.cname {
                let mut set = RrSet { count: 1, bytes: Vec::new() };
                wire::rr_ptr_owner(&mut set.bytes, 12, TYPE_CNAME, ttl, &target);
                node.cname = Some(set);
                records += 1;
            } else {
                for (ty, rdatas) in nb.rdata {
                    let mut set = RrSet::default();
                    for r in rdatas.iter().take(u16::MAX as usize / 2) {
                        wire::rr_ptr_owner(&mut set.bytes, 12, ty, ttl, r);
                        set.count += 1;
                    }
                    records += set.count as usize;
                    node.any.bytes.extend_from_slice(&set.bytes);
                    node.any.count += set.count;
                    node.sets.push((ty, set));
                }
            }
            nodes.insert(name.into_boxed_slice(), node);
        }
        let mut soa = Vec::new();
        let soa_rdata = Builder { domain: self.domain.clone(), domain_wire: vec![], ttl, nodes: HashMap::new() }.soa_rdata();
        wire::rr_named(&mut soa, &self.domain_wire, TYPE_SOA, ttl, &soa_rdata);
        Zone { domain: self.domain_wire, nodes, soa, records }
    }
}
