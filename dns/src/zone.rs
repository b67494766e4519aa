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

use crate::index::{PodInfo, SliceInfo, SvcInfo, SvcKind};
use crate::wire::{self, TYPE_A, TYPE_AAAA, TYPE_ANY, TYPE_CNAME, TYPE_NS, TYPE_PTR, TYPE_SOA, TYPE_SRV};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::net::IpAddr;
use std::sync::Arc;

/// Prepared records: `count` RRs, each owned by a compression pointer to the question name.
#[derive(Debug, Clone, Copy, Default)]
pub struct RrSet<'a> {
    pub count: u16,
    pub bytes: &'a [u8],
    /// Additional-section records (the A/AAAA of SRV targets), full owner names.
    pub extra_count: u16,
    pub extra: &'a [u8],
}

pub enum Lookup<'a> {
    Answer(RrSet<'a>),
    /// Every record set of the name (qtype ANY).
    Any(Vec<(u16, RrSet<'a>)>),
    /// The name is an alias: answer the CNAME whatever the type.
    Cname(RrSet<'a>),
    NoData,
    NxDomain,
    /// Not in the cluster zone nor a reverse name we know: forward it.
    NotOurs,
}

/// The zone is one byte arena of nodes plus a table from name hash to node offset: tens of
/// bytes per record, where a map of boxed names to vectors of vectors cost ~500 (memory per
/// 1,000 services is a target, and a rebuild holds two zones at once).
///
/// Node layout: `name_len u8, name, kind u8` then for kind 1 (alias) one set, for kind 0
/// `nsets u8` sets; a set is `type u16, count u16, len u32, bytes, extra_count u16,
/// extra_len u32, extra` (little-endian lengths).
pub struct Zone {
    pub domain: Vec<u8>,
    arena: Vec<u8>,
    /// Hash of the lowercase wire name → node offset. Names whose hash is taken go to `spill`.
    index: HashMap<u64, u32, BuildHasherDefault<Prehashed>>,
    spill: HashMap<Box<[u8]>, u32>,
    hasher: RandomState,
    /// The apex SOA as a full RR with an uncompressed owner, for negative answers' authority section.
    pub soa: Vec<u8>,
    pub records: usize,
    /// Pod IP → namespace (for search-path answers: who is asking).
    pub pod_namespaces: HashMap<IpAddr, Box<str>>,
    /// Namespaces with at least one pod (whose search-path queries autopath may answer).
    pub namespaces_with_pods: std::collections::HashSet<Box<str>>,
}

/// The index's keys are already hashes.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ *b as u64;
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// A little-endian reader over a node; `None` on a short read (never for a zone we built).
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Some(h)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn set(&mut self) -> Option<(u16, RrSet<'a>)> {
        let ty = self.u16()?;
        let count = self.u16()?;
        let len = self.u32()? as usize;
        let bytes = self.take(len)?;
        let extra_count = self.u16()?;
        let extra_len = self.u32()? as usize;
        let extra = self.take(extra_len)?;
        Some((ty, RrSet { count, bytes, extra_count, extra }))
    }
}

fn put_set(arena: &mut Vec<u8>, ty: u16, count: u16, bytes: &[u8], extra_count: u16, extra: &[u8]) {
    arena.extend_from_slice(&ty.to_le_bytes());
    arena.extend_from_slice(&count.to_le_bytes());
    arena.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    arena.extend_from_slice(bytes);
    arena.extend_from_slice(&extra_count.to_le_bytes());
    arena.extend_from_slice(&(extra.len() as u32).to_le_bytes());
    arena.extend_from_slice(extra);
}

impl Zone {
    /// The node body (after its name) of exactly this lowercase wire name.
    fn find(&self, qname: &[u8]) -> Option<&[u8]> {
        let at = |off: u32| -> Option<(&[u8], &[u8])> {
            let node = self.arena.get(off as usize..)?;
            let len = *node.first()? as usize;
            Some((node.get(1..1 + len)?, node.get(1 + len..)?))
        };
        if let Some(&off) = self.index.get(&self.hasher.hash_one(qname)) {
            if let Some((name, body)) = at(off) {
                if name == qname {
                    return Some(body);
                }
            }
        }
        at(*self.spill.get(qname)?).map(|(_, body)| body)
    }

    pub fn lookup(&self, qname: &[u8], qtype: u16) -> Lookup<'_> {
        let body = match self.find(qname) {
            Some(b) => Some(b),
            None => self.long_form(qname).and_then(|long| self.find(&long)),
        };
        let Some(body) = body else {
            return if wire::is_subdomain(qname, &self.domain) { Lookup::NxDomain } else { Lookup::NotOurs };
        };
        let mut c = Cursor(body);
        match c.u8() {
            Some(1) => match c.set() {
                Some((_, set)) => Lookup::Cname(set),
                None => Lookup::NoData,
            },
            Some(_) => {
                let n = c.u8().unwrap_or(0);
                let mut sets = Vec::new();
                for _ in 0..n {
                    let Some((ty, set)) = c.set() else { break };
                    if ty == qtype {
                        return Lookup::Answer(set);
                    }
                    if qtype == TYPE_ANY {
                        sets.push((ty, set));
                    }
                }
                if sets.is_empty() { Lookup::NoData } else { Lookup::Any(sets) }
            }
            None => Lookup::NoData,
        }
    }

    /// The seed's short form `…<svc>.<ns>.D` is `…<svc>.<ns>.svc.D`: looked up under the long
    /// name rather than stored twice (the records point at the question name, so answers carry
    /// the name that was asked).
    fn long_form(&self, qname: &[u8]) -> Option<Vec<u8>> {
        if qname.len() <= self.domain.len() || !wire::is_subdomain(qname, &self.domain) {
            return None;
        }
        let prefix = &qname[..qname.len() - self.domain.len()];
        let last = wire::labels(prefix).pop()?;
        if last.eq_ignore_ascii_case(b"svc") || last.eq_ignore_ascii_case(b"pod") {
            return None;
        }
        Some([prefix, b"\x03svc", &self.domain].concat())
    }

    pub fn is_ours(&self, qname: &[u8]) -> bool {
        wire::is_subdomain(qname, &self.domain)
    }

    pub fn empty(domain: &str, ttl: u32) -> Zone {
        Builder::new(domain, ttl).finish()
    }

    /// From API objects (tests, tools); the server builds from its compact [`crate::index`].
    pub fn build(
        domain: &str,
        ttl: u32,
        services: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
        pods: &[Arc<Pod>],
    ) -> Zone {
        let services: Vec<SvcInfo> = services.iter().filter_map(|s| SvcInfo::from_service(s)).collect();
        let slices: Vec<SliceInfo> = slices.iter().filter_map(|s| SliceInfo::from_slice(s)).collect();
        let pods: Vec<PodInfo> = pods.iter().filter_map(|p| PodInfo::from_pod(p)).collect();
        Zone::from_index(domain, ttl, services.iter(), slices.iter(), pods.iter())
    }

    pub fn from_index<'a>(
        domain: &str,
        ttl: u32,
        services: impl Iterator<Item = &'a SvcInfo>,
        slices: impl Iterator<Item = &'a SliceInfo>,
        pods: impl Iterator<Item = &'a PodInfo>,
    ) -> Zone {
        let mut b = Builder::new(domain, ttl);
        // EndpointSlices by (namespace, service name).
        let mut by_service: HashMap<(&str, &str), Vec<&SliceInfo>> = HashMap::new();
        for s in slices {
            by_service.entry((&s.namespace, &s.service)).or_default().push(s);
        }
        for svc in services {
            let (name, ns) = (&*svc.name, &*svc.namespace);
            let base = format!("{name}.{ns}.svc.{domain}");
            // The short form `<name>.<ns>.D` is answered by `Zone::long_form`, not stored.
            let names = [base.as_str()];
            match &svc.kind {
                SvcKind::ExternalName(target) => {
                    if let Some(target) = wire::name_to_wire(target) {
                        for n in &names {
                            b.cname(n, target.clone());
                        }
                    }
                }
                SvcKind::ClusterIp(ips) => {
                    for &ip in ips.iter() {
                        for n in &names {
                            b.addr(n, ip);
                        }
                        b.ptr(ip, &base);
                    }
                    for p in svc.ports.iter() {
                        for n in &names {
                            b.srv(&format!("_{}._{}.{n}", p.name, p.proto), 0, 100, p.port, &base);
                        }
                    }
                    for n in &names {
                        b.exists(n);
                    }
                }
                SvcKind::Headless { publish_not_ready } => {
                    for n in &names {
                        b.exists(n);
                    }
                    for slice in by_service.get(&(ns, name)).into_iter().flatten() {
                        for ep in slice.endpoints.iter() {
                            if !ep.ready && !publish_not_ready {
                                continue;
                            }
                            for ip in ep.addresses() {
                                let host = match ep.hostname {
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
                                for p in slice.ports.iter() {
                                    for n in &names {
                                        b.srv(&format!("_{}._{}.{n}", p.name, p.proto), 0, 100, p.port, &target);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        for pod in pods {
            let ns = &*pod.namespace;
            for &ip in pod.ips.iter() {
                b.pod_namespaces.insert(ip, ns.into());
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
    pod_namespaces: HashMap<IpAddr, Box<str>>,
}

impl Builder {
    fn new(domain: &str, ttl: u32) -> Builder {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let domain_wire = wire::name_to_wire(&domain).expect("valid cluster domain");
        let mut b = Builder {
            domain,
            domain_wire: domain_wire.clone(),
            ttl,
            nodes: HashMap::new(),
            pod_namespaces: HashMap::new(),
        };
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
        let serial =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as u32).unwrap_or(1);
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

    /// The A/AAAA records of the targets of a node's SRV records.
    fn srv_extra(&self, rdatas: &BTreeSet<Vec<u8>>) -> (u16, Vec<u8>) {
        let (mut n, mut out) = (0u16, Vec::new());
        let targets: BTreeSet<&[u8]> = rdatas.iter().filter_map(|r| r.get(6..)).collect();
        for t in targets {
            let Some(node) = self.nodes.get(t) else { continue };
            for ty in [TYPE_A, TYPE_AAAA] {
                for r in node.rdata.get(&ty).into_iter().flatten() {
                    if n < 500 {
                        wire::rr_named(&mut out, t, ty, self.ttl, r);
                        n += 1;
                    }
                }
            }
        }
        (n, out)
    }

    fn finish(self) -> Zone {
        let ttl = self.ttl;
        let mut extras: HashMap<Vec<u8>, (u16, Vec<u8>)> = HashMap::new();
        for (name, nb) in &self.nodes {
            if let Some(srvs) = nb.rdata.get(&TYPE_SRV) {
                extras.insert(name.clone(), self.srv_extra(srvs));
            }
        }
        let mut records = 0;
        let hasher = RandomState::new();
        let mut index: HashMap<u64, u32, BuildHasherDefault<Prehashed>> = HashMap::default();
        index.reserve(self.nodes.len());
        let mut spill: HashMap<Box<[u8]>, u32> = HashMap::new();
        let mut arena = Vec::new();
        let mut bytes = Vec::new();
        for (name, nb) in self.nodes {
            let off = arena.len() as u32;
            arena.push(name.len() as u8);
            arena.extend_from_slice(&name);
            if let Some(target) = nb.cname {
                bytes.clear();
                wire::rr_ptr_owner(&mut bytes, 12, TYPE_CNAME, ttl, &target);
                arena.push(1);
                put_set(&mut arena, TYPE_CNAME, 1, &bytes, 0, &[]);
                records += 1;
            } else {
                arena.push(0);
                arena.push(nb.rdata.len().min(255) as u8);
                for (ty, rdatas) in nb.rdata.iter().take(255) {
                    bytes.clear();
                    let mut count = 0u16;
                    for r in rdatas.iter().take(u16::MAX as usize / 2) {
                        wire::rr_ptr_owner(&mut bytes, 12, *ty, ttl, r);
                        count += 1;
                    }
                    let (extra_count, extra) = match *ty == TYPE_SRV {
                        true => extras.remove(&name).unwrap_or_default(),
                        false => (0, Vec::new()),
                    };
                    put_set(&mut arena, *ty, count, &bytes, extra_count, &extra);
                    records += count as usize;
                }
            }
            let h = hasher.hash_one(name.as_slice());
            if index.contains_key(&h) {
                spill.insert(name.into_boxed_slice(), off);
            } else {
                index.insert(h, off);
            }
        }
        arena.shrink_to_fit();
        let mut soa = Vec::new();
        let soa_rdata = Builder {
            domain: self.domain.clone(),
            domain_wire: vec![],
            ttl,
            nodes: HashMap::new(),
            pod_namespaces: HashMap::new(),
        }
        .soa_rdata();
        wire::rr_named(&mut soa, &self.domain_wire, TYPE_SOA, ttl, &soa_rdata);
        let namespaces_with_pods = self.pod_namespaces.values().cloned().collect();
        Zone {
            domain: self.domain_wire,
            arena,
            index,
            spill,
            hasher,
            soa,
            records,
            pod_namespaces: self.pod_namespaces,
            namespaces_with_pods,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Arc<Service> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn zone() -> Zone {
        let services = vec![
            svc(
                json!({"metadata": {"name": "web", "namespace": "prod"}, "spec": {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20", "fd00::20"],
                "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"}]}}),
            ),
            svc(
                json!({"metadata": {"name": "hl", "namespace": "prod"}, "spec": {"clusterIP": "None", "publishNotReadyAddresses": true}}),
            ),
            svc(
                json!({"metadata": {"name": "alias", "namespace": "prod"}, "spec": {"type": "ExternalName", "externalName": "db.example.com."}}),
            ),
        ];
        let slices = vec![Arc::new(
            serde_json::from_value(json!({"metadata": {"name": "hl-1", "namespace": "prod", "labels": {"kubernetes.io/service-name": "hl"}},
                "addressType": "IPv4", "endpoints": [{"addresses": ["10.244.0.9"], "conditions": {"ready": false}}]}))
            .unwrap(),
        )];
        Zone::build("cluster.local", 30, &services, &slices, &[])
    }

    fn n(s: &str) -> Vec<u8> {
        wire::name_to_wire(s).unwrap()
    }

    #[test]
    fn answers_nodata_nxdomain_and_not_ours() {
        let z = zone();
        let Lookup::Answer(a) = z.lookup(&n("web.prod.svc.cluster.local"), TYPE_A) else { panic!("A") };
        assert_eq!(a.count, 1);
        assert_eq!(&a.bytes[a.bytes.len() - 4..], &[10, 96, 0, 20]);
        assert_eq!(&a.bytes[6..10], &30u32.to_be_bytes(), "configured TTL");
        assert!(matches!(z.lookup(&n("web.prod.cluster.local"), TYPE_AAAA), Lookup::Answer(s) if s.count == 1));
        assert!(matches!(z.lookup(&n("web.prod.svc.cluster.local"), wire::TYPE_TXT), Lookup::NoData));
        assert!(matches!(z.lookup(&n("prod.svc.cluster.local"), TYPE_A), Lookup::NoData));
        assert!(
            matches!(z.lookup(&n("_dns._udp.web.prod.svc.cluster.local"), TYPE_SRV), Lookup::Answer(s) if s.count == 1)
        );
        assert!(matches!(z.lookup(&n("_dns._tcp.web.prod.svc.cluster.local"), TYPE_SRV), Lookup::NxDomain));
        assert!(matches!(z.lookup(&n("x.prod.svc.cluster.local"), TYPE_A), Lookup::NxDomain));
        assert!(matches!(z.lookup(&n("example.com"), TYPE_A), Lookup::NotOurs));
        assert!(matches!(z.lookup(&n("20.0.96.10.in-addr.arpa"), TYPE_PTR), Lookup::Answer(_)));
        assert!(matches!(z.lookup(&n(&reverse_name("fd00::20".parse().unwrap())), TYPE_PTR), Lookup::Answer(_)));
        assert!(matches!(z.lookup(&n("21.0.96.10.in-addr.arpa"), TYPE_PTR), Lookup::NotOurs));
        assert!(matches!(z.lookup(&n("cluster.local"), TYPE_ANY), Lookup::Any(s) if s.len() == 2));
    }

    #[test]
    fn headless_publish_not_ready_and_external_name() {
        let z = zone();
        assert!(matches!(z.lookup(&n("hl.prod.svc.cluster.local"), TYPE_A), Lookup::Answer(s) if s.count == 1));
        assert!(matches!(z.lookup(&n("10-244-0-9.hl.prod.svc.cluster.local"), TYPE_A), Lookup::Answer(_)));
        let Lookup::Cname(c) = z.lookup(&n("alias.prod.svc.cluster.local"), TYPE_AAAA) else { panic!("CNAME") };
        assert!(c.bytes.ends_with(&n("db.example.com")));
    }
}

#[cfg(test)]
mod scale {
    use super::*;
    use serde_json::json;

    /// `SKIFF_DNS_SCALE=10000` for the benchmark's shape (10k services, 5 endpoints each).
    #[test]
    fn rebuild_scales() {
        let n: usize = std::env::var("SKIFF_DNS_SCALE").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
        let mut services = Vec::new();
        let mut slices = Vec::new();
        for i in 0..n {
            let headless = i % 8 == 0;
            services.push(Arc::new(serde_json::from_value::<Service>(json!({
                "metadata": {"name": format!("svc-{i}"), "namespace": format!("ns-{}", i % 50)},
                "spec": {"clusterIP": if headless { "None".to_string() } else { format!("10.96.{}.{}", i / 250, i % 250 + 1) },
                         "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})).unwrap()));
            let eps: Vec<_> =
                (0..5).map(|e| json!({"addresses": [format!("10.{}.{}.{}", 200 + e, i / 250, i % 250)]})).collect();
            slices.push(Arc::new(
                serde_json::from_value::<EndpointSlice>(json!({
                "metadata": {"name": format!("svc-{i}-x"), "namespace": format!("ns-{}", i % 50),
                             "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
                "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "endpoints": eps}))
                .unwrap(),
            ));
        }
        #[repr(C)]
        struct Mallinfo2([usize; 10]);
        unsafe extern "C" {
            fn mallinfo2() -> Mallinfo2;
        }
        // Bytes in use on glibc's heap (small blocks + mmapped ones), in KiB. Process-wide, so
        // tests running alongside blur it (signed: it may even shrink): printed, never asserted.
        let rss = || {
            let m = unsafe { mallinfo2() };
            (m.0[7] + m.0[4]) as i64 / 1024
        };
        let r_objects = rss();
        let svc_info: Vec<SvcInfo> = services.iter().filter_map(|s| SvcInfo::from_service(s)).collect();
        let slice_info: Vec<SliceInfo> = slices.iter().filter_map(|s| SliceInfo::from_slice(s)).collect();
        let r_index = rss();
        drop((services, slices));
        let r0 = rss();
        eprintln!("heap: API objects {} KiB, the compact index of them {} KiB", r_index - r0, r_index - r_objects);
        let t = std::time::Instant::now();
        let z = Zone::from_index("cluster.local", 5, svc_info.iter(), slice_info.iter(), [].iter());
        eprintln!("heap: zone {} KiB", rss() - r0);
        eprintln!("{n} services, {} endpoints: {} records built in {:?}", n * 5, z.records, t.elapsed());
        assert!(
            matches!(z.lookup(&wire::name_to_wire("svc-1.ns-1.svc.cluster.local").unwrap(), TYPE_A), Lookup::Answer(s) if s.count == 1)
        );
        assert!(
            matches!(z.lookup(&wire::name_to_wire("svc-8.ns-8.svc.cluster.local").unwrap(), TYPE_A), Lookup::Answer(s) if s.count == 5)
        );
    }
}
