//! The cluster zone as a hickory-server [`ZoneHandler`] (hickory's name for an authority): it
//! answers `cluster.local` and the reverse names of cluster addresses from the current
//! [`Zone`] snapshot. The [`Catalog`](hickory_server::zone_handler::Catalog) in `server.rs` puts
//! it next to hickory's `ForwardZoneHandler`, which takes every name this zone does not own.
//!
//! The snapshot keeps records as prepared wire bytes (a few bytes per record rather than a
//! hickory `Record` of a few hundred: memory per 1,000 services is a target); they are decoded
//! into hickory records here, per lookup. The hot path does not come here at all: hickory's
//! encoded answers are replayed by the response cache in `server.rs` until the zone changes.

use crate::wire;
use crate::zone::{Lookup, RrSet, Zone};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordSet, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable};
use hickory_resolver::TokioResolver;
use hickory_server::server::{Request, RequestInfo};
use hickory_server::zone_handler::{
    AuthLookup, AxfrPolicy, LookupControlFlow, LookupError, LookupOptions, LookupRecords, ZoneHandler, ZoneType,
};
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

tokio::task_local! {
    /// Set by the zone when an answer used upstream data (a followed ExternalName, a search-path
    /// answer) or depends on who asked: such a response must not be replayed from the cache.
    pub static UNCACHEABLE: std::cell::Cell<bool>;
}

fn uncacheable() {
    let _ = UNCACHEABLE.try_with(|c| c.set(true));
}

/// The snapshot every handler reads; the index task swaps it.
pub type ZoneRef = Arc<RwLock<Arc<Zone>>>;

pub fn current(zone: &ZoneRef) -> Arc<Zone> {
    zone.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// One zone handler per origin it is registered for (cluster domain, `in-addr.arpa.`,
/// `ip6.arpa.`), all reading the same snapshot.
pub struct ClusterZone {
    origin: LowerName,
    zone: ZoneRef,
    /// For ExternalName targets and search-path answers outside the cluster.
    upstream: Option<TokioResolver>,
    autopath: bool,
}

impl ClusterZone {
    pub fn new(origin: LowerName, zone: ZoneRef, upstream: Option<TokioResolver>, autopath: bool) -> ClusterZone {
        ClusterZone { origin, zone, upstream, autopath }
    }

    /// Answers `name`/`rtype` from the snapshot; `client` is who asked (for autopath).
    async fn answer(
        &self,
        name: &Name,
        rtype: RecordType,
        client: Option<IpAddr>,
        opts: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        use LookupControlFlow::*;
        let zone = current(&self.zone);
        let qname = lower_wire(name);
        let qtype = u16::from(rtype);
        match zone.lookup(&qname, qtype) {
            Lookup::NotOurs => Skip,
            Lookup::Answer(set) => Break(Ok(with_extra(name, qtype, &set, opts))),
            Lookup::Any(sets) => {
                let sets = sets.iter().filter_map(|(t, s)| record_set(name, *t, s)).map(Arc::new).collect();
                Break(Ok(AuthLookup::answers(LookupRecords::many(opts, sets), None)))
            }
            Lookup::Cname(set) => {
                let Some(cname) = record_set(name, wire::TYPE_CNAME, &set) else { return Break(Err(servfail())) };
                let mut sets = vec![Arc::new(cname)];
                if rtype != RecordType::CNAME && rtype != RecordType::ANY {
                    sets.extend(self.follow(&zone, &set, rtype).await);
                }
                Break(Ok(AuthLookup::answers(LookupRecords::many(opts, sets), None)))
            }
            Lookup::NoData => Break(Err(LookupError::NameExists)),
            Lookup::NxDomain => {
                if self.autopath && search_expansion_namespace(&zone, &qname).is_some() {
                    // Another client (a pod in that namespace) gets a different answer.
                    uncacheable();
                    if let Some(found) = self.autopath(&zone, name, &qname, rtype, client, opts).await {
                        return Break(Ok(found));
                    }
                }
                Break(Err(LookupError::ResponseCode(hickory_proto::op::ResponseCode::NXDomain)))
            }
        }
    }

    /// The records of an ExternalName's target: from the zone when it is a cluster name,
    /// otherwise from the upstreams (nothing when they have nothing: the CNAME alone).
    async fn follow(&self, zone: &Zone, cname: &RrSet<'_>, rtype: RecordType) -> Vec<Arc<RecordSet>> {
        let Some(target_wire) = cname.bytes.get(12..) else { return vec![] };
        let Some(target) = name_from_wire(target_wire) else { return vec![] };
        if zone.is_ours(&lower_wire(&target)) {
            return match zone.lookup(&lower_wire(&target), u16::from(rtype)) {
                Lookup::Answer(set) => record_set(&target, u16::from(rtype), &set).map(Arc::new).into_iter().collect(),
                _ => vec![],
            };
        }
        uncacheable();
        self.resolve(&target, rtype).await.unwrap_or_default()
    }

    async fn resolve(&self, target: &Name, rtype: RecordType) -> Option<Vec<Arc<RecordSet>>> {
        let resolver = self.upstream.as_ref()?;
        let lookup = resolver.lookup(target.clone(), rtype).await.ok()?;
        let answers = lookup.answers();
        if answers.iter().any(|r| !matches!(r.record_type(), RecordType::A | RecordType::AAAA | RecordType::CNAME)) {
            return None;
        }
        Some(group(answers.to_vec()))
    }

    /// A query from a known pod in namespace `ns` for `X.<ns>.svc.<domain>` that is NXDOMAIN —
    /// and whose later search steps `X.svc.<domain>` and `X.<domain>` are NXDOMAIN too — is
    /// answered in one round trip with a CNAME to `X` plus `X`'s upstream A/AAAA records, so
    /// `ndots:5` pods do not pay four queries per external name. This assumes the pod's search
    /// list is the cluster default (`<ns>.svc.D svc.D D`), without host search domains.
    async fn autopath(
        &self,
        zone: &Zone,
        name: &Name,
        qname: &[u8],
        rtype: RecordType,
        client: Option<IpAddr>,
        opts: LookupOptions,
    ) -> Option<AuthLookup> {
        let ns = zone.pod_namespaces.get(&client?)?;
        let mut suffix = Vec::with_capacity(ns.len() + 5 + zone.domain.len());
        suffix.push(ns.len() as u8);
        suffix.extend_from_slice(ns.as_bytes());
        suffix.extend_from_slice(b"\x03svc");
        suffix.extend_from_slice(&zone.domain);
        if qname.len() <= suffix.len() || !wire::is_subdomain(qname, &suffix) {
            return None;
        }
        let bare = &qname[..qname.len() - suffix.len()];
        let mut target_wire = bare.to_vec();
        target_wire.push(0);
        if zone.is_ours(&target_wire) {
            return None;
        }
        for step in [[bare, b"\x03svc", &zone.domain].concat(), [bare, &zone.domain[..]].concat()] {
            if !matches!(zone.lookup(&step, u16::from(rtype)), Lookup::NxDomain) {
                return None;
            }
        }
        // Whatever the upstream says, this answer depends on the client: never replayed.
        uncacheable();
        let target = name_from_wire(&target_wire)?;
        let found = self.resolve(&target, rtype).await?;
        if found.is_empty() {
            return None;
        }
        let ttl = found.iter().map(|s| s.ttl()).min().unwrap_or(zone_ttl(zone));
        let mut cname = RecordSet::with_ttl(name.clone(), RecordType::CNAME, ttl);
        cname.insert(Record::from_rdata(name.clone(), ttl, RData::CNAME(hickory_proto::rr::rdata::CNAME(target))), 0);
        let mut sets = vec![Arc::new(cname)];
        sets.extend(found);
        Some(AuthLookup::answers(LookupRecords::many(opts, sets), None))
    }
}

/// `X.<ns>.svc.<domain>` (X not empty) with pods in `ns`: the shape autopath answers.
fn search_expansion_namespace<'z>(zone: &'z Zone, qname: &[u8]) -> Option<&'z str> {
    let labels = wire::labels(qname);
    let domain_labels = wire::labels(&zone.domain).len();
    if labels.len() < domain_labels + 3 {
        return None;
    }
    let svc = labels[labels.len() - domain_labels - 1];
    let ns = std::str::from_utf8(labels[labels.len() - domain_labels - 2]).ok()?;
    if svc != b"svc" {
        return None;
    }
    zone.namespaces_with_pods.get(ns).map(|n| &**n)
}

fn zone_ttl(zone: &Zone) -> u32 {
    zone.soa_records().first().map(|r| r.ttl).unwrap_or(5)
}

fn servfail() -> LookupError {
    LookupError::ResponseCode(hickory_proto::op::ResponseCode::ServFail)
}

/// The lowercase wire form the snapshot is keyed by.
pub fn lower_wire(name: &Name) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 2);
    for label in name.iter() {
        out.push(label.len() as u8);
        out.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    out.push(0);
    out
}

fn name_from_wire(w: &[u8]) -> Option<Name> {
    let mut d = BinDecoder::new(w);
    Name::read(&mut d).ok()
}

/// Decodes `count` prepared records whose owners point at offset 12 (the question name).
fn decode_owned_by(owner: &Name, bytes: &[u8]) -> Vec<Record> {
    let mut buf = vec![0u8; 12];
    buf.extend_from_slice(&owner.to_bytes().unwrap_or_default());
    let start = buf.len();
    buf.extend_from_slice(bytes);
    decode_from(&buf, start)
}

fn decode_from(buf: &[u8], start: usize) -> Vec<Record> {
    let mut d = BinDecoder::new(buf);
    if d.read_slice(start).is_err() {
        return vec![];
    }
    let mut out = Vec::new();
    while !d.is_empty() {
        match Record::read(&mut d) {
            Ok(r) => out.push(r),
            Err(_) => break,
        }
    }
    out
}

fn record_set(owner: &Name, rtype: u16, set: &RrSet<'_>) -> Option<RecordSet> {
    let records = decode_owned_by(owner, set.bytes);
    let first = records.first()?;
    let mut rs = RecordSet::with_ttl(owner.clone(), RecordType::from(rtype), first.ttl);
    for r in records {
        rs.insert(r, 0);
    }
    Some(rs)
}

/// An answer with its additional records (the addresses of SRV targets).
fn with_extra(owner: &Name, rtype: u16, set: &RrSet<'_>, opts: LookupOptions) -> AuthLookup {
    let rs =
        record_set(owner, rtype, set).unwrap_or_else(|| RecordSet::with_ttl(owner.clone(), RecordType::from(rtype), 0));
    let extra = (set.extra_count > 0).then(|| LookupRecords::many(opts, group(decode_from(set.extra, 0))));
    AuthLookup::answers(LookupRecords::new(opts, Arc::new(rs)), extra)
}

/// Records grouped into record sets by owner and type, in first-seen order.
fn group(records: Vec<Record>) -> Vec<Arc<RecordSet>> {
    let mut sets: Vec<RecordSet> = Vec::new();
    for r in records {
        match sets.iter_mut().find(|s| s.name() == &r.name && s.record_type() == r.record_type()) {
            Some(s) => {
                s.insert(r, 0);
            }
            None => {
                let mut s = RecordSet::with_ttl(r.name.clone(), r.record_type(), r.ttl);
                s.insert(r, 0);
                sets.push(s);
            }
        }
    }
    sets.into_iter().map(Arc::new).collect()
}

impl Zone {
    /// The apex SOA as a hickory record (for negative answers' authority section).
    pub fn soa_records(&self) -> Vec<Record> {
        decode_from(&self.soa, 0)
    }
}

#[async_trait::async_trait]
impl ZoneHandler for ClusterZone {
    fn zone_type(&self) -> ZoneType {
        ZoneType::Primary
    }

    fn axfr_policy(&self) -> AxfrPolicy {
        AxfrPolicy::Deny
    }

    fn origin(&self) -> &LowerName {
        &self.origin
    }

    async fn lookup(
        &self,
        name: &LowerName,
        rtype: RecordType,
        request_info: Option<&RequestInfo<'_>>,
        opts: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        let name = Name::from(name.clone());
        let zone = current(&self.zone);
        if rtype == RecordType::SOA && lower_wire(&name) != zone.domain && LowerName::from(name.clone()) == self.origin
        {
            // The catalog asks for the SOA of the handler's origin for negative answers; in the
            // reverse zones we are authoritative only for cluster addresses, and say so with
            // the cluster zone's SOA.
            let mut soa = zone.soa_records().into_iter();
            return match soa.next() {
                Some(r) => {
                    let mut rs = RecordSet::with_ttl(r.name.clone(), RecordType::SOA, r.ttl);
                    rs.insert(r, 0);
                    LookupControlFlow::Break(Ok(AuthLookup::answers(LookupRecords::new(opts, Arc::new(rs)), None)))
                }
                None => LookupControlFlow::Break(Err(servfail())),
            };
        }
        self.answer(&name, rtype, request_info.map(|i| i.src.ip()), opts).await
    }

    async fn search(
        &self,
        request: &Request,
        opts: LookupOptions,
    ) -> (LookupControlFlow<AuthLookup>, Option<hickory_proto::rr::TSigResponseContext>) {
        let Ok(info) = request.request_info() else {
            return (LookupControlFlow::Break(Err(LookupError::BadQueryCount(request.queries.len()))), None);
        };
        // The client's spelling of the name, so answers echo its case (and compress against it).
        let name = info.query.original().name().clone();
        (self.answer(&name, info.query.query_type(), Some(info.src.ip()), opts).await, None)
    }

    async fn nsec_records(&self, _name: &LowerName, _opts: LookupOptions) -> LookupControlFlow<AuthLookup> {
        LookupControlFlow::Continue(Ok(AuthLookup::default()))
    }
}
