//! The query path: UDP and TCP listeners answering from the current [`Zone`] snapshot, and a
//! forwarder (with a small cache) for names outside the cluster domain.

use crate::metrics::Metrics;
use crate::wire::{self, CLASS_ANY, CLASS_IN, Edns, ParseError, Response};
use crate::zone::{Lookup, Zone};
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
}

impl Shared {
    pub fn new(zone: Zone, forwarder: Forwarder) -> Shared {
        Shared {
            zone: RwLock::new(Arc::new(zone)),
            forwarder,
            metrics: Metrics::default(),
            synced: AtomicBool::new(false),
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
            let (rcode, answer, negative) = match zone.lookup(&q.qname, q.qtype) {
                Lookup::Answer(set) | Lookup::Cname(set) => (wire::RCODE_NOERROR, Some(set), false),
                Lookup::NoData => (wire::RCODE_NOERROR, None, true),
                Lookup::NxDomain => (wire::RCODE_NXDOMAIN, None, true),
                Lookup::NotOurs => (0, None, false),
            };
            if answer.is_some() || negative {
                let mut r = reply(rcode, true);
                if let Some(set) = answer {
                    r.answers(&set.bytes, set.count);
                }
                if negative {
                    r.authority(&zone.soa, 1);
                }
                r.opt(q.edns, 0);
                self.metrics.query(q.qtype, rcode);
                return Outcome::Reply(r.finish(q.edns, limit));
            }
        }
        let mut key = q.qname.clone();
        key.extend_from_slice(&q.qtype.to_be_bytes());
        key.extend_from_slice(&q.qclass.to_be_bytes());
        key.push(q.edns.map_or(2, |e| e.dnssec_ok as u8));
        Outcome::Forward(ForwardQuery {
            packet: packet.to_vec(),
            id: q.id,
            flags: q.flags,
            question: q.question.to_vec(),
            key,
            qtype: q.qtype,
            edns: q.edns,
            limit,
            tcp,
        })
    }

    async fn forward(&self, fq: ForwardQuery) -> Vec<u8> {
        let out = self.forwarder.resolve(&fq, &self.metrics).await;
        let rcode = out.get(3).map_or(wire::RCODE_SERVFAIL, |b| b & 0xF);
        self.metrics.query(fq.qtype, rcode);
        out
    }
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
        match shared.handle(&buf[..n], false) {
            Outcome::Reply(r) => {
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
        let reply = match shared.handle(&buf[..n], true) {
            Outcome::Reply(r) => r,
            Outcome::Drop => return Ok(()),
            Outcome::Forward(fq) => shared.forward(fq).await,
        };
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
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(1);
        Forwarder { upstreams, timeout, cache: Mutex::new(HashMap::new()), capacity, max_ttl: 300, next_id: AtomicU32::new(seed) }
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
        if let Some(hit) = self.cached(&fq.key) {
            metrics.cache_hit();
            return Self::for_client(fq, &hit);
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
            return Self::for_client(fq, &resp);
        }
        Self::servfail(fq)
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
