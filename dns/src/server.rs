//! The query path. Every answer is produced by a hickory-server [`Catalog`]: the cluster zone
//! ([`ClusterZone`], for the cluster domain and the reverse zones) and hickory's
//! `ForwardZoneHandler` (hickory-resolver with its cache) for every other name.
//!
//! In front of the catalog sits a response cache: the encoded answer to an exact query (all
//! bytes after the id: flags, question with the client's spelling, EDNS) is replayed with the
//! new id until the zone changes. Only authoritative cluster answers that do not depend on the
//! client or on upstream data are kept. This is the hot path — a hash probe and a copy, as a
//! precompiled zone in Knot or NSD — and it is why misses may take the slower, general path.

use crate::authority::{self, ClusterZone, UNCACHEABLE, ZoneRef};
use crate::metrics::Metrics;
use crate::wire;
use crate::zone::Zone;
use anyhow::{Context, Result};
use hickory_net::NetError;
use hickory_net::runtime::TokioTime;
use hickory_proto::op::{Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{LowerName, Name, Record};
use hickory_proto::serialize::binary::BinEncodable;
use hickory_proto::serialize::binary::BinEncoder;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{Resolver, TokioResolver};
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::forwarder::{ForwardConfig, ForwardZoneHandler};
use hickory_server::zone_handler::{Catalog, MessageResponse, MessageResponseBuilder, ZoneHandler};
use std::cell::Cell;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

/// What the query path is built from.
#[derive(Debug, Clone)]
pub struct PathConfig {
    pub domain: String,
    pub upstreams: Vec<SocketAddr>,
    pub forward_timeout: Duration,
    /// Entries in the forwarder's (hickory-resolver's) cache.
    pub forward_cache: usize,
    /// Entries in the response cache (cluster answers); 0 turns it off.
    pub answer_cache: usize,
    pub autopath: bool,
}

/// State shared by every listener task.
pub struct Shared {
    pub zone: ZoneRef,
    pub metrics: Metrics,
    pub synced: AtomicBool,
    catalog: Catalog,
    cache: ResponseCache,
    domain: LowerName,
    has_upstreams: bool,
    slow_slots: Arc<Semaphore>,
}

impl Shared {
    pub fn new(zone: Zone, cfg: &PathConfig) -> Result<Shared> {
        let zone: ZoneRef = Arc::new(RwLock::new(Arc::new(zone)));
        let domain = Name::from_str(&format!("{}.", cfg.domain.trim_end_matches('.')))
            .with_context(|| format!("cluster domain {:?}", cfg.domain))?;
        let domain = LowerName::from(domain);
        let servers: Vec<NameServerConfig> = cfg
            .upstreams
            .iter()
            .map(|a| {
                let (mut udp, mut tcp) = (ConnectionConfig::udp(), ConnectionConfig::tcp());
                udp.port = a.port();
                tcp.port = a.port();
                NameServerConfig::new(a.ip(), true, vec![udp, tcp])
            })
            .collect();
        let mut opts = ResolverOpts::default();
        opts.timeout = cfg.forward_timeout;
        opts.attempts = 1;
        opts.cache_size = cfg.forward_cache as u64;
        opts.edns0 = true;
        opts.use_hosts_file = ResolveHosts::Never;
        opts.positive_max_ttl = Some(Duration::from_secs(300));
        opts.negative_max_ttl = Some(Duration::from_secs(300));
        let mut catalog = Catalog::new();
        let mut upstream: Option<TokioResolver> = None;
        let mut forwarder: Option<Arc<dyn ZoneHandler>> = None;
        if !servers.is_empty() {
            let mut b = Resolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], servers.clone()),
                TokioRuntimeProvider::default(),
            );
            *b.options_mut() = opts.clone();
            upstream = Some(b.build().context("building the upstream resolver")?);
            let fwd = ForwardZoneHandler::builder_tokio(ForwardConfig { name_servers: servers, options: Some(opts) })
                .build()
                .map_err(|e| anyhow::anyhow!("building the forwarder: {e}"))?;
            let fwd: Arc<dyn ZoneHandler> = Arc::new(fwd);
            catalog.upsert(LowerName::from(Name::root()), vec![fwd.clone()]);
            forwarder = Some(fwd);
        }
        let cluster = |origin: LowerName| -> Arc<dyn ZoneHandler> {
            Arc::new(ClusterZone::new(origin, zone.clone(), upstream.clone(), cfg.autopath))
        };
        catalog.upsert(domain.clone(), vec![cluster(domain.clone())]);
        // Reverse names: ours when they are cluster addresses, otherwise the upstreams'.
        for rev in ["in-addr.arpa.", "ip6.arpa."] {
            let origin = LowerName::from(Name::from_str(rev).expect("static name"));
            let mut chain = vec![cluster(origin.clone())];
            chain.extend(forwarder.clone());
            catalog.upsert(origin, chain);
        }
        Ok(Shared {
            zone,
            metrics: Metrics::default(),
            synced: AtomicBool::new(false),
            catalog,
            cache: ResponseCache::new(cfg.answer_cache),
            domain,
            has_upstreams: forwarder.is_some(),
            slow_slots: Arc::new(Semaphore::new(1024)),
        })
    }

    pub fn zone(&self) -> Arc<Zone> {
        authority::current(&self.zone)
    }

    /// Installs a new snapshot; cached answers of the old one are dropped.
    pub fn set_zone(&self, z: Zone) {
        let old = {
            let mut cache = self.cache.inner.write().unwrap_or_else(|e| e.into_inner());
            *self.zone.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(z);
            cache.generation += 1;
            [std::mem::take(&mut cache.udp), std::mem::take(&mut cache.tcp)]
        };
        drop(old);
    }

    /// The cached answer to exactly this query, with its id. Never panics on any input.
    pub fn fast(&self, packet: &[u8], tcp: bool) -> Option<Vec<u8>> {
        let hit = self.cache.get(packet, tcp)?;
        self.metrics.query(hit.1, hit.2);
        Some(hit.0)
    }

    /// Answers one query (`None`: drop it). Never panics on any input.
    pub async fn answer(&self, packet: &[u8], src: SocketAddr, tcp: bool) -> Option<Vec<u8>> {
        if packet.len() < 12 || packet[2] & 0x80 != 0 {
            // Too short for a header, or a response: nothing to answer.
            self.metrics.malformed();
            return None;
        }
        if let Some(hit) = self.fast(packet, tcp) {
            return Some(hit);
        }
        let generation = self.cache.generation();
        let protocol = if tcp { Protocol::Tcp } else { Protocol::Udp };
        let request = match Request::from_bytes(packet.to_vec(), src, protocol) {
            Ok(r) => r,
            Err(_) => {
                self.metrics.malformed();
                self.metrics.query(0, wire::RCODE_FORMERR);
                return Some(formerr(packet));
            }
        };
        let query = request.queries.queries().first().cloned();
        let qtype = query.as_ref().map_or(0, |q| u16::from(q.query_type()));
        let capture = Capture { out: Arc::new(Mutex::new(None)), tcp };
        if let Some(q) = &query {
            let ours = self.domain.zone_of(q.name());
            let rcode = if ours && !self.synced.load(Ordering::Relaxed) {
                // Not listed yet: an empty zone must not produce (cacheable) NXDOMAINs.
                Some(ResponseCode::ServFail)
            } else if ours && !matches!(u16::from(q.query_class()), wire::CLASS_IN | wire::CLASS_ANY) {
                Some(ResponseCode::Refused)
            } else if !self.has_upstreams && self.catalog.find(q.name()).is_none() {
                Some(ResponseCode::ServFail)
            } else {
                None
            };
            if let Some(rcode) = rcode {
                let edns = request.edns.clone();
                let resp =
                    MessageResponseBuilder::new(&request.queries, edns.as_ref()).error_msg(&request.metadata, rcode);
                let _ = capture.clone().send_response(resp).await;
                let out = capture.take()?;
                self.metrics.query(qtype, u16::from(rcode) as u8);
                return Some(out);
            }
        }
        let (info, uncacheable) = UNCACHEABLE
            .scope(Cell::new(false), async {
                let info = self.catalog.handle_request::<_, TokioTime>(&request, capture.clone()).await;
                (info, UNCACHEABLE.with(|c| c.get()))
            })
            .await;
        let out = capture.take()?;
        let rcode = u16::from(info.response_code) as u8;
        self.metrics.query(qtype, rcode);
        if !uncacheable
            && info.authoritative
            && matches!(info.response_code, ResponseCode::NoError | ResponseCode::NXDomain)
        {
            self.cache.put(generation, packet, tcp, &out, qtype, rcode);
        }
        Some(out)
    }
}

/// A header-only FORMERR for a query whose header parsed but whose body did not.
fn formerr(packet: &[u8]) -> Vec<u8> {
    let mut r = vec![0u8; 12];
    r[0..2].copy_from_slice(&packet[0..2]);
    // QR, the query's opcode and RD; rcode 1.
    r[2] = 0x80 | (packet[2] & 0x79);
    r[3] = wire::RCODE_FORMERR;
    r
}

/// Encodes hickory's response into bytes instead of sending it, so the caller can cache it.
#[derive(Clone)]
struct Capture {
    out: Arc<Mutex<Option<Vec<u8>>>>,
    tcp: bool,
}

impl Capture {
    fn take(&self) -> Option<Vec<u8>> {
        self.out.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

#[async_trait::async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        // The client's buffer size, but never more than the 1232 bytes that avoid IP
        // fragmentation (DNS flag day 2020); 512 without EDNS (RFC 1035).
        let limit = match (self.tcp, response.edns()) {
            (true, _) => u16::MAX,
            (false, Some(e)) => e.max_payload().clamp(512, wire::MAX_UDP_PAYLOAD as u16),
            (false, None) => 512,
        };
        let id = response.metadata().id;
        let mut bytes = Vec::with_capacity(512);
        let mut enc = BinEncoder::new(&mut bytes);
        enc.set_max_size(limit);
        let info = match response.destructive_emit(&mut enc) {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!(error = %e, "encoding a DNS response failed; answering SERVFAIL");
                let mut metadata = Metadata::new(id, MessageType::Response, OpCode::Query);
                metadata.response_code = ResponseCode::ServFail;
                let header = Header { metadata, counts: HeaderCounts::default() };
                bytes.clear();
                let mut enc = BinEncoder::new(&mut bytes);
                header.emit(&mut enc).map_err(NetError::from)?;
                ResponseInfo::from(header)
            }
        };
        *self.out.lock().unwrap_or_else(|e| e.into_inner()) = Some(recompress(bytes));
        Ok(info)
    }
}

/// hickory's response writes the question from the query's raw bytes, so no answer name can
/// point at it and every owner is spelled out in full. A decode and re-encode with hickory's
/// ordinary (compressing) encoder makes typical answers a quarter smaller — on the wire and in
/// the response cache. Only the slow path pays for it.
fn recompress(bytes: Vec<u8>) -> Vec<u8> {
    match hickory_proto::op::Message::from_vec(&bytes).ok().and_then(|m| m.to_vec().ok()) {
        Some(v) if v.len() < bytes.len() => v,
        _ => bytes,
    }
}

/// Encoded answers by query bytes (after the id), per transport (UDP answers may be truncated).
struct ResponseCache {
    inner: RwLock<CacheInner>,
    capacity: usize,
}

#[derive(Default)]
struct CacheInner {
    generation: u64,
    udp: HashSet<Cached>,
    tcp: HashSet<Cached>,
}

/// One allocation per entry: `qtype u16, rcode u8, key_len u16, key, response without its id`.
/// Hashed and compared by the key (the query after its id), so a received packet looks it up
/// without building anything.
struct Cached(Box<[u8]>);

impl Cached {
    fn new(key: &[u8], response: &[u8], qtype: u16, rcode: u8) -> Cached {
        let mut b = Vec::with_capacity(5 + key.len() + response.len());
        b.extend_from_slice(&qtype.to_le_bytes());
        b.push(rcode);
        b.extend_from_slice(&(key.len() as u16).to_le_bytes());
        b.extend_from_slice(key);
        b.extend_from_slice(response);
        Cached(b.into_boxed_slice())
    }
    fn key(&self) -> &[u8] {
        let len = u16::from_le_bytes([self.0[3], self.0[4]]) as usize;
        &self.0[5..5 + len]
    }
    fn response(&self) -> &[u8] {
        &self.0[5 + self.key().len()..]
    }
    fn qtype(&self) -> u16 {
        u16::from_le_bytes([self.0[0], self.0[1]])
    }
    fn rcode(&self) -> u8 {
        self.0[2]
    }
}

impl std::borrow::Borrow<[u8]> for Cached {
    fn borrow(&self) -> &[u8] {
        self.key()
    }
}
impl std::hash::Hash for Cached {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.key().hash(h)
    }
}
impl PartialEq for Cached {
    fn eq(&self, o: &Cached) -> bool {
        self.key() == o.key()
    }
}
impl Eq for Cached {}

impl ResponseCache {
    fn new(capacity: usize) -> ResponseCache {
        ResponseCache { inner: RwLock::new(CacheInner::default()), capacity }
    }

    fn generation(&self) -> u64 {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).generation
    }

    fn get(&self, packet: &[u8], tcp: bool) -> Option<(Vec<u8>, u16, u8)> {
        if self.capacity == 0 || packet.len() < 12 {
            return None;
        }
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let map = if tcp { &inner.tcp } else { &inner.udp };
        let hit = map.get(&packet[2..])?;
        let mut out = Vec::with_capacity(hit.response().len() + 2);
        out.extend_from_slice(&packet[0..2]);
        out.extend_from_slice(hit.response());
        Some((out, hit.qtype(), hit.rcode()))
    }

    /// Keeps an answer computed under `generation` unless the zone changed meanwhile. When full,
    /// keeps what it has until the next zone change (no churn under a scan of random names).
    fn put(&self, generation: u64, packet: &[u8], tcp: bool, response: &[u8], qtype: u16, rcode: u8) {
        if self.capacity == 0 || response.len() < 12 {
            return;
        }
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if inner.generation != generation || inner.udp.len() + inner.tcp.len() >= self.capacity {
            return;
        }
        let map = if tcp { &mut inner.tcp } else { &mut inner.udp };
        if packet.len() - 2 <= u16::MAX as usize {
            map.insert(Cached::new(&packet[2..], &response[2..], qtype, rcode));
        }
    }
}

/// Receives and answers UDP queries forever. Several of these may share one socket: cache hits
/// are answered inline, everything else in its own task (a forwarded query must not hold up the
/// socket).
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
        if let Some(r) = shared.fast(&buf[..n], false) {
            shared.metrics.latency(t0.elapsed());
            let _ = sock.send_to(&r, peer).await;
            continue;
        }
        let Ok(permit) = shared.slow_slots.clone().try_acquire_owned() else {
            shared.metrics.forward_dropped();
            continue;
        };
        let (sock, shared, packet) = (sock.clone(), shared.clone(), buf[..n].to_vec());
        tokio::spawn(async move {
            if let Some(r) = shared.answer(&packet, peer, false).await {
                shared.metrics.latency(t0.elapsed());
                let _ = sock.send_to(&r, peer).await;
            }
            drop(permit);
        });
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
    let peer = stream.peer_addr()?;
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
        let Some(reply) = shared.answer(&buf[..n], peer, true).await else { return Ok(()) };
        shared.metrics.latency(t0.elapsed());
        let mut out = Vec::with_capacity(reply.len() + 2);
        out.extend_from_slice(&(reply.len() as u16).to_be_bytes());
        out.extend_from_slice(&reply);
        stream.write_all(&out).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> PathConfig {
        PathConfig {
            domain: "cluster.local".into(),
            upstreams: vec![],
            forward_timeout: Duration::from_millis(1),
            forward_cache: 16,
            answer_cache: 1000,
            autopath: true,
        }
    }

    /// What the `cargo fuzz` target does, with a cheap generator: mutated valid queries and noise.
    #[tokio::test]
    async fn answer_survives_garbage() {
        let s = Shared::new(Zone::empty("cluster.local", 5), &path()).unwrap();
        s.synced.store(true, Ordering::SeqCst);
        let src: SocketAddr = "127.0.0.1:5353".parse().unwrap();
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
        for i in 0..20_000 {
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
                if let Some(r) = s.answer(&pkt, src, tcp).await {
                    assert!(r.len() >= 12);
                    assert!(tcp || r.len() <= wire::MAX_UDP_PAYLOAD);
                    assert_eq!(r[0..2], pkt[0..2], "the reply carries the query's id");
                }
            }
        }
        // A valid query is answered authoritatively: NXDOMAIN with the SOA; the second time from
        // the cache, with the second query's id.
        for id in [[0x11, 0x22], [0x33, 0x44]] {
            good[0..2].copy_from_slice(&id);
            let r = s.answer(&good, src, false).await.expect("a reply");
            assert_eq!(r[0..2], id);
            assert_eq!((r[3] & 0xF, r[2] & 0x04 != 0), (wire::RCODE_NXDOMAIN, true));
            assert_eq!(u16::from_be_bytes([r[8], r[9]]), 1, "SOA in the authority section");
        }
        assert!(s.fast(&good, false).is_some(), "the NXDOMAIN is replayed from the cache");
        // A new zone drops the cached answers.
        s.set_zone(Zone::empty("cluster.local", 5));
        assert!(s.fast(&good, false).is_none());
    }
}
