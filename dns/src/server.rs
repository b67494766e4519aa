//! The query path: UDP and TCP listeners answering from the current [`Zone`] snapshot, and a
//! forwarder (with a small cache) for names outside the cluster domain.

use crate::metrics::Metrics;
use crate::wire::{self, CLASS_ANY, CLASS_IN, Edns, ParseError, Response};
use crate::zone::{Lookup, RrSet, Zone};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

/// State shared by every listener task.
pub struct Shared {
    pub zone: RwLock<Arc<Zone>>,
    pub forwarder: Forwarder,
    pub metrics: Metrics,
    pub synced: AtomicBool,
    /// Answer search-path expansions from known pods in one round trip (see [`Shared::handle_from`]).
    pub autopath: bool,
    forward_slots: Arc<Semaphore>,
}

/// What a query turned into.
pub enum Outcome {
    Reply(Vec<u8>),
    Forward(ForwardQuery),
    Drop,
}

/// The parts of a query the forwarder needs after the receive buffer is reused.
pub struct ForwardQuery {
    pub packet: Vec<u8>,
    pub id: u16,
    pub flags: u16,
    pub question: Vec<u8>,
    pub key: Vec<u8>,
    pub qtype: u16,
    pub edns: Option<Edns>,
    pub limit: usize,
    pub tcp: bool,
    /// Set when this is a search-path expansion answered with the bare name's records.
    pub autopath: Option<Autopath>,
}

pub struct Autopath {
    /// The bare name (wire form) the CNAME points at.
    pub target: Vec<u8>,
    /// What to answer when the bare name has no usable answer: the ordinary NXDOMAIN.
    pub fallback: Vec<u8>,
}

impl Shared {
    pub fn new(zone: Zone, forwarder: Forwarder) -> Shared {
        Shared {
            zone: RwLock::new(Arc::new(zone)),
            forwarder,
            metrics: Metrics::default(),
            synced: AtomicBool::new(false),
            autopath: false,
            forward_slots: Arc::new(Semaphore::new(1024)),
        }
    }

    pub fn zone(&self) -> Arc<Zone> {
        self.zone.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_zone(&self, z: Zone) {
        *self.zone.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(z);
    }

    /// Answers a query from the zone, or says it must be forwarded. Never panics on any input.
    pub fn handle(&self, packet: &[u8], tcp: bool) -> Outcome {
        self.handle_from(packet, tcp, None)
    }

    /// As [`Shared::handle`], knowing the client's address. With `autopath` on, a query from a
    /// known pod in namespace `ns` for `X.<ns>.svc.<domain>` that is NXDOMAIN — and whose later
    /// search steps `X.svc.<domain>` and `X.<domain>` are NXDOMAIN too — is answered in one round
    /// trip with a CNAME to `X` plus `X`'s upstream A/AAAA records (otherwise the usual NXDOMAIN),
    /// so `ndots:5` pods do not pay four queries per external name. This assumes the pod's search
    /// list is the cluster default (`<ns>.svc.D svc.D D`), without host search domains.
    pub fn handle_from(&self, packet: &[u8], tcp: bool, peer: Option<IpAddr>) -> Outcome {
        let q = match wire::parse_query(packet) {
            Ok(q) => q,
            Err(ParseError::Drop) => {
                self.metrics.malformed();
                return Outcome::Drop;
            }
            Err(ParseError::FormErr { id, flags }) => {
                self.metrics.malformed();
                self.metrics.query(0, wire::RCODE_FORMERR);
                return Outcome::Reply(Response::new(id, flags, &[], wire::RCODE_FORMERR, false).finish(None, 512));
            }
        };
        let limit = if tcp { u16::MAX as usize } else { q.udp_limit() };
        let reply = |rcode: u8, aa: bool| Response::new(q.id, q.flags, q.question, rcode, aa);
        if q.opcode() != 0 {
            self.metrics.query(q.qtype, wire::RCODE_NOTIMP);
            let mut r = reply(wire::RCODE_NOTIMP, false);
            r.opt(q.edns, 0);
            return Outcome::Reply(r.finish(q.edns, limit));
        }
        if q.edns.is_some_and(|e| e.version > 0) {
            self.metrics.query(q.qtype, wire::RCODE_BADVERS as u8);
            let mut r = reply(0, false);
            r.opt(q.edns, (wire::RCODE_BADVERS >> 4) as u8);
            return Outcome::Reply(r.finish(q.edns, limit));
        }
        let zone = self.zone();
        let in_class = q.qclass == CLASS_IN || q.qclass == CLASS_ANY;
        if !in_class {
            if zone.is_ours(&q.qname) {
                self.metrics.query(q.qtype, wire::RCODE_REFUSED);
                let mut r = reply(wire::RCODE_REFUSED, false);
                r.opt(q.edns, 0);
                return Outcome::Reply(r.finish(q.edns, limit));
            }
        } else {
            if !self.synced.load(Ordering::Relaxed) && zone.is_ours(&q.qname) {
                // Not listed yet: an empty zone must not produce (cacheable) NXDOMAINs.
                self.metrics.query(q.qtype, wire::RCODE_SERVFAIL);
                let mut r = reply(wire::RCODE_SERVFAIL, false);
                r.opt(q.edns, 0);
                return Outcome::Reply(r.finish(q.edns, limit));
            }
            let lookup = zone.lookup(&q.qname, q.qtype);
            if let Lookup::Any(sets) = &lookup {
                let mut r = reply(wire::RCODE_NOERROR, true);
                for (_, set) in sets.iter() {
                    r.answers(&set.bytes, set.count);
                }
                r.opt(q.edns, 0);
                self.metrics.query(q.qtype, wire::RCODE_NOERROR);
                return Outcome::Reply(r.finish(q.edns, limit));
            }
            if let Lookup::Cname(set) = &lookup {
                if q.qtype != wire::TYPE_CNAME && q.qclass == CLASS_IN {
                    if let Some(out) = self.chase(&zone, &q, set, limit, tcp) {
                        return out;
                    }
                }
            }
            let (rcode, answer, negative) = match lookup {
                Lookup::Answer(set) | Lookup::Cname(set) => (wire::RCODE_NOERROR, Some(set), false),
                Lookup::NoData => (wire::RCODE_NOERROR, None, true),
                Lookup::NxDomain => (wire::RCODE_NXDOMAIN, None, true),
                Lookup::NotOurs | Lookup::Any(_) => (0, None, false),
            };
            if answer.is_some() || negative {
                let build = |with_extra: bool| {
                    let mut r = reply(rcode, true);
                    if let Some(set) = answer {
                        r.answers(&set.bytes, set.count);
                        if with_extra && set.extra_count > 0 {
                            r.additional(&set.extra, set.extra_count);
                        }
                    }
                    if negative {
                        r.authority(&zone.soa, 1);
                    }
                    r.opt(q.edns, 0);
                    r.finish(q.edns, limit)
                };
                let mut out = build(true);
                if out[2] & 0x02 != 0 && answer.is_some_and(|s| s.extra_count > 0) {
                    // Additional records are optional: drop them before truncating answers.
                    out = build(false);
                }
                if rcode == wire::RCODE_NXDOMAIN && self.autopath && q.qclass == CLASS_IN {
                    if let Some(fq) = autopath_query(&zone, &q, peer, limit, tcp, &out) {
                        return Outcome::Forward(fq);
                    }
                }
                self.metrics.query(q.qtype, rcode);
                return Outcome::Reply(out);
            }
        }
        Outcome::Forward(ForwardQuery {
            packet: packet.to_vec(),
            id: q.id,
            flags: q.flags,
            question: q.question.to_vec(),
            key: cache_key(&q.qname, &q),
            qtype: q.qtype,
            edns: q.edns,
            limit,
            tcp,
            autopath: None,
        })
    }

    /// Follows an ExternalName CNAME: in the zone directly, otherwise through the upstreams (the
    /// CNAME alone if they have nothing), as a recursive server does for stub resolvers.
    fn chase(&self, zone: &Zone, q: &wire::Query, cname: &RrSet, limit: usize, tcp: bool) -> Option<Outcome> {
        let target = cname.bytes.get(12..)?.to_vec();
        let mut r = Response::new(q.id, q.flags, q.question, wire::RCODE_NOERROR, true);
        r.answers(&cname.bytes, cname.count);
        if zone.is_ours(&target) {
            let (rcode, extra) = match zone.lookup(&target, q.qtype) {
                Lookup::Answer(set) => (wire::RCODE_NOERROR, Some(set)),
                Lookup::NxDomain => (wire::RCODE_NXDOMAIN, None),
                _ => (wire::RCODE_NOERROR, None),
            };
            let mut r = Response::new(q.id, q.flags, q.question, rcode, true);
            r.answers(&cname.bytes, cname.count);
            match extra {
                Some(set) => r.answers(&rename(&set.bytes, &target), set.count),
                None => r.authority(&zone.soa, 1),
            }
            r.opt(q.edns, 0);
            self.metrics.query(q.qtype, rcode);
            return Some(Outcome::Reply(r.finish(q.edns, limit)));
        }
        r.opt(q.edns, 0);
        let fallback = r.finish(q.edns, limit);
        Some(Outcome::Forward(ForwardQuery {
            packet: query_packet(&target, q),
            id: q.id,
            flags: q.flags,
            question: q.question.to_vec(),
            key: cache_key(&target, q),
            qtype: q.qtype,
            edns: q.edns,
            limit,
            tcp,
            autopath: Some(Autopath { target, fallback }),
        }))
    }

    async fn forward(&self, fq: ForwardQuery) -> Vec<u8> {
        let out = match &fq.autopath {
            None => self.forwarder.resolve(&fq, &self.metrics).await,
            Some(ap) => match self.forwarder.fetch(&fq, &self.metrics).await {
                Some(resp) => autopath_answer(&fq, ap, &resp).unwrap_or_else(|| ap.fallback.clone()),
                None => ap.fallback.clone(),
            },
        };
        let rcode = out.get(3).map_or(wire::RCODE_SERVFAIL, |b| b & 0xF);
        self.metrics.query(fq.qtype, rcode);
        out
    }
}

fn cache_key(qname: &[u8], q: &wire::Query) -> Vec<u8> {
    let mut key = qname.to_vec();
    key.extend_from_slice(&q.qtype.to_be_bytes());
    key.extend_from_slice(&q.qclass.to_be_bytes());
    key.push(q.edns.map_or(2, |e| e.dnssec_ok as u8));
    key
}

fn autopath_query(
    zone: &Zone,
    q: &wire::Query,
    peer: Option<IpAddr>,
    limit: usize,
    tcp: bool,
    fallback: &[u8],
) -> Option<ForwardQuery> {
    let ns = zone.pod_namespaces.get(&peer?)?;
    let mut suffix = Vec::with_capacity(ns.len() + 5 + zone.domain.len());
    suffix.push(ns.len() as u8);
    suffix.extend_from_slice(ns.as_bytes());
    suffix.extend_from_slice(b"\x03svc");
    suffix.extend_from_slice(&zone.domain);
    if q.qname.len() <= suffix.len() || !wire::is_subdomain(&q.qname, &suffix) {
        return None;
    }
    let mut target = q.qname[..q.qname.len() - suffix.len()].to_vec();
    target.push(0);
    if zone.is_ours(&target) {
        return None;
    }
    // The later search steps must not exist either.
    let bare = &target[..target.len() - 1];
    let svc_step = [bare, b"\x03svc", &zone.domain].concat();
    let domain_step = [bare, &zone.domain].concat();
    for step in [&svc_step, &domain_step] {
        if !matches!(zone.lookup(step, q.qtype), Lookup::NxDomain) {
            return None;
        }
    }
    Some(ForwardQuery {
        packet: query_packet(&target, q),
        id: q.id,
        flags: q.flags,
        question: q.question.to_vec(),
        key: cache_key(&target, q),
        qtype: q.qtype,
        edns: q.edns,
        limit,
        tcp,
        autopath: Some(Autopath { target, fallback: fallback.to_vec() }),
    })
}

/// A fresh query for `target` with the client's type, class, RD bit and EDNS (id 0: the forwarder sets it).
fn query_packet(target: &[u8], q: &wire::Query) -> Vec<u8> {
    let mut packet = Vec::with_capacity(target.len() + 32);
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(&(q.flags & 0x0100).to_be_bytes());
    packet.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, q.edns.is_some() as u8]);
    packet.extend_from_slice(target);
    packet.extend_from_slice(&q.qtype.to_be_bytes());
    packet.extend_from_slice(&q.qclass.to_be_bytes());
    if let Some(e) = q.edns {
        packet.extend_from_slice(&[0, 0, 41]);
        packet.extend_from_slice(&(wire::MAX_UDP_PAYLOAD as u16).to_be_bytes());
        packet.extend_from_slice(&[0, 0, if e.dnssec_ok { 0x80 } else { 0 }, 0, 0, 0]);
    }
    packet
}

/// Prepared records (owned by a pointer to the question name) re-owned by `owner`.
fn rename(set: &[u8], owner: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(set.len() * 2);
    let mut i = 0;
    while i + 12 <= set.len() {
        let rdlen = u16::from_be_bytes([set[i + 10], set[i + 11]]) as usize;
        let end = (i + 12 + rdlen).min(set.len());
        out.extend_from_slice(owner);
        out.extend_from_slice(&set[i + 2..end]);
        i = end;
    }
    out
}

/// CNAME `question → target` plus the upstream's A/AAAA/CNAME answers, names decompressed.
/// `None` (use the fallback) unless the upstream said NOERROR with answers of those types only.
fn autopath_answer(fq: &ForwardQuery, ap: &Autopath, resp: &[u8]) -> Option<Vec<u8>> {
    if resp.len() < 12 || resp[3] & 0xF != 0 || resp[2] & 0x02 != 0 {
        return None;
    }
    let qd = u16::from_be_bytes([resp[4], resp[5]]) as usize;
    let an = u16::from_be_bytes([resp[6], resp[7]]) as usize;
    if an == 0 || an > 200 {
        return None;
    }
    let mut i = 12;
    for _ in 0..qd {
        i = wire::skip_name(resp, i)? + 4;
    }
    let mut rrs = Vec::new();
    let mut min_ttl = u32::MAX;
    let mut body = Vec::new();
    for _ in 0..an {
        let (owner, _) = wire::read_name(resp, i)?;
        let (ty, class, ttl, rdata, next) = wire::parse_rr(resp, i)?;
        if class != CLASS_IN {
            return None;
        }
        match ty {
            wire::TYPE_A | wire::TYPE_AAAA => wire::rr_named(&mut body, &owner, ty, ttl, &resp[rdata]),
            wire::TYPE_CNAME => {
                let (t, _) = wire::read_name(resp, rdata.start)?;
                wire::rr_named(&mut body, &owner, ty, ttl, &t);
            }
            _ => return None,
        }
        min_ttl = min_ttl.min(ttl);
        i = next;
    }
    wire::rr_ptr_owner(&mut rrs, 12, wire::TYPE_CNAME, min_ttl, &ap.target);
    rrs.extend_from_slice(&body);
    let mut r = Response::new(fq.id, fq.flags, &fq.question, wire::RCODE_NOERROR, false);
    r.answers(&rrs, an as u16 + 1);
    r.opt(fq.edns, 0);
    Some(r.finish(fq.edns, fq.limit))
}

/// Receives and answers UDP queries forever. Several of these may share one socket.
pub async fn udp_loop(sock: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP errors surface here on Linux (e.g. ECONNREFUSED): never fatal.
                tracing::debug!(error = %e, "udp receive");
                continue;
            }
        };
        let t0 = Instant::now();
        match shared.handle_from(&buf[..n], false, Some(peer.ip())) {
            Outcome::Reply(r) => {
                shared.metrics.latency(t0.elapsed());
                let _ = sock.send_to(&r, peer).await;
            }
            Outcome::Drop => {}
            Outcome::Forward(fq) => {
                let Ok(permit) = shared.forward_slots.clone().try_acquire_owned() else {
                    shared.metrics.forward_dropped();
                    continue;
                };
                let (sock, shared) = (sock.clone(), shared.clone());
                tokio::spawn(async move {
                    let r = shared.forward(fq).await;
                    shared.metrics.latency(t0.elapsed());
                    let _ = sock.send_to(&r, peer).await;
                    drop(permit);
                });
            }
        }
    }
}

/// Accepts TCP connections forever; each connection may carry several queries (RFC 7766).
pub async fn tcp_loop(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(512));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = tcp_conn(stream, shared).await;
            drop(permit);
        });
    }
}

async fn tcp_conn(mut stream: TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let peer = stream.peer_addr().ok().map(|a| a.ip());
    let idle = Duration::from_secs(10);
    let mut buf = vec![0u8; 65535];
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(idle, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return Ok(()),
        }
        let n = u16::from_be_bytes(len) as usize;
        match tokio::time::timeout(idle, stream.read_exact(&mut buf[..n])).await {
            Ok(Ok(_)) => {}
            _ => return Ok(()),
        }
        let t0 = Instant::now();
        let reply = match shared.handle_from(&buf[..n], true, peer) {
            Outcome::Reply(r) => r,
            Outcome::Drop => return Ok(()),
            Outcome::Forward(fq) => shared.forward(fq).await,
        };
        shared.metrics.latency(t0.elapsed());
        let mut out = Vec::with_capacity(reply.len() + 2);
        out.extend_from_slice(&(reply.len() as u16).to_be_bytes());
        out.extend_from_slice(&reply);
        stream.write_all(&out).await?;
    }
}

/// Forwards to upstream resolvers, caching positive and negative answers by their TTL.
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
    cache: Mutex<HashMap<Vec<u8>, (Instant, Vec<u8>)>>,
    capacity: usize,
    max_ttl: u32,
    next_id: AtomicU32,
}

impl Forwarder {
    pub fn new(upstreams: Vec<SocketAddr>, timeout: Duration, capacity: usize) -> Forwarder {
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(1);
        Forwarder {
            upstreams,
            timeout,
            cache: Mutex::new(HashMap::new()),
            capacity,
            max_ttl: 300,
            next_id: AtomicU32::new(seed),
        }
    }

    fn fresh_id(&self) -> u16 {
        // A cheap scramble of a counter: ids are not predictable in sequence.
        let n = self.next_id.fetch_add(0x9E37, Ordering::Relaxed);
        let x = n.wrapping_mul(0x85EB_CA6B);
        (x ^ (x >> 16)) as u16
    }

    fn servfail(fq: &ForwardQuery) -> Vec<u8> {
        let mut r = Response::new(fq.id, fq.flags, &fq.question, wire::RCODE_SERVFAIL, false);
        r.opt(fq.edns, 0);
        r.finish(fq.edns, fq.limit)
    }

    /// Adapts a stored or upstream response to this client: its id, its spelling of the question,
    /// its size limit.
    fn for_client(fq: &ForwardQuery, resp: &[u8]) -> Vec<u8> {
        let mut out = resp.to_vec();
        if out.len() < 12 {
            return Self::servfail(fq);
        }
        out[0..2].copy_from_slice(&fq.id.to_be_bytes());
        let qend = 12 + fq.question.len();
        if out.len() >= qend && out[12..qend].eq_ignore_ascii_case(&fq.question) {
            out[12..qend].copy_from_slice(&fq.question);
        }
        if fq.tcp { out } else { wire::truncate_message(&out, fq.limit) }
    }

    pub async fn resolve(&self, fq: &ForwardQuery, metrics: &Metrics) -> Vec<u8> {
        match self.fetch(fq, metrics).await {
            Some(resp) => Self::for_client(fq, &resp),
            None => Self::servfail(fq),
        }
    }

    /// The upstream's (or the cache's) response to `fq.packet`, untouched (its id is not the client's).
    pub async fn fetch(&self, fq: &ForwardQuery, metrics: &Metrics) -> Option<Vec<u8>> {
        if let Some(hit) = self.cached(&fq.key) {
            metrics.cache_hit();
            return Some(hit);
        }
        metrics.forwarded();
        for &up in &self.upstreams {
            let id = self.fresh_id();
            let mut pkt = fq.packet.clone();
            pkt[0..2].copy_from_slice(&id.to_be_bytes());
            let mut resp = tokio::time::timeout(self.timeout, udp_exchange(up, &pkt, id)).await.ok().flatten();
            if resp.as_ref().is_some_and(|r| r[2] & 0x02 != 0) && fq.tcp {
                resp = tokio::time::timeout(self.timeout, tcp_exchange(up, &pkt, id)).await.ok().flatten().or(resp);
            }
            let Some(resp) = resp else { continue };
            let rcode = resp[3] & 0xF;
            if rcode == wire::RCODE_SERVFAIL || rcode == wire::RCODE_REFUSED {
                continue;
            }
            if resp[2] & 0x02 == 0 && (rcode == wire::RCODE_NOERROR || rcode == wire::RCODE_NXDOMAIN) {
                if let Some(ttl) = wire::min_ttl(&resp).map(|t| t.min(self.max_ttl)).filter(|t| *t > 0) {
                    self.store(fq.key.clone(), ttl, resp.clone());
                }
            }
            return Some(resp);
        }
        None
    }

    fn cached(&self, key: &[u8]) -> Option<Vec<u8>> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.get(key).filter(|(exp, _)| *exp > Instant::now()).map(|(_, r)| r.clone())
    }

    fn store(&self, key: Vec<u8>, ttl: u32, resp: Vec<u8>) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= self.capacity {
            let now = Instant::now();
            cache.retain(|_, (exp, _)| *exp > now);
            if cache.len() >= self.capacity {
                cache.clear();
            }
        }
        cache.insert(key, (Instant::now() + Duration::from_secs(ttl as u64), resp));
    }
}

fn local_for(up: SocketAddr) -> SocketAddr {
    let ip: IpAddr = match (up.ip(), up.ip().is_loopback()) {
        (IpAddr::V4(_), true) => Ipv4Addr::LOCALHOST.into(),
        (IpAddr::V4(_), false) => Ipv4Addr::UNSPECIFIED.into(),
        (IpAddr::V6(_), true) => Ipv6Addr::LOCALHOST.into(),
        (IpAddr::V6(_), false) => Ipv6Addr::UNSPECIFIED.into(),
    };
    SocketAddr::new(ip, 0)
}

async fn udp_exchange(up: SocketAddr, pkt: &[u8], id: u16) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind(local_for(up)).await.ok()?;
    sock.connect(up).await.ok()?;
    sock.send(pkt).await.ok()?;
    let mut buf = vec![0u8; 65536];
    loop {
        let n = sock.recv(&mut buf).await.ok()?;
        if n >= 12 && buf[0..2] == id.to_be_bytes() && buf[2] & 0x80 != 0 {
            return Some(buf[..n].to_vec());
        }
    }
}

async fn tcp_exchange(up: SocketAddr, pkt: &[u8], id: u16) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(up).await.ok()?;
    let mut out = (pkt.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(pkt);
    s.write_all(&out).await.ok()?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.ok()?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).await.ok()?;
    (buf.len() >= 12 && buf[0..2] == id.to_be_bytes()).then_some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the `cargo fuzz` target does, with a cheap generator: mutated valid queries and noise.
    #[test]
    fn handle_survives_garbage() {
        let s = Shared::new(Zone::empty("cluster.local", 5), Forwarder::new(vec![], Duration::from_millis(1), 16));
        s.synced.store(true, Ordering::SeqCst);
        let mut good = vec![0x11, 0x22, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
        good.extend(wire::name_to_wire("a.b.svc.cluster.local").unwrap());
        good.extend_from_slice(&[0, 33, 0, 1, 0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
        let mut seed = 0x1234_5678_9ABC_DEF1u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for i in 0..50_000 {
            let pkt: Vec<u8> = if i % 3 == 0 {
                (0..rnd() as usize % 80).map(|_| rnd() as u8).collect()
            } else {
                let mut p = good.clone();
                for _ in 0..1 + i % 4 {
                    let j = rnd() as usize % p.len();
                    p[j] = rnd() as u8;
                }
                p.truncate(rnd() as usize % (p.len() + 8));
                p
            };
            for tcp in [false, true] {
                if let Outcome::Reply(r) = s.handle(&pkt, tcp) {
                    assert!(r.len() >= 12);
                    assert!(tcp || r.len() <= wire::MAX_UDP_PAYLOAD);
                    assert_eq!(r[0..2], pkt[0..2], "the reply carries the query's id");
                }
            }
        }
        // A valid query is answered authoritatively: NXDOMAIN with the SOA.
        let Outcome::Reply(r) = s.handle(&good, false) else { panic!("no reply") };
        assert_eq!((r[3] & 0xF, r[2] & 0x04 != 0), (wire::RCODE_NXDOMAIN, true));
        assert_eq!(u16::from_be_bytes([r[8], r[9]]), 1);
    }
}
