//! The service proxy: watches Services and EndpointSlices through the API (kube-rs reflectors),
//! computes the desired contents of the service maps ([`desired::compute`]) and applies only the
//! difference to the dataplane's [`ServiceTable`].
//!
//! Level-triggered and idempotent: every sync recomputes the whole desired state from the
//! reflectors' stores and brings the maps to it — entries that differ are written, entries no
//! Service claims (also ones left in the pinned maps by a previous agent) are removed. A sync runs
//! after every batch of watch events and every [`ProxyConfig::resync_period`]. The first sync
//! waits until both initial lists are complete, so a restarted agent never removes a service it
//! simply has not listed yet.
//!
//! Metrics (Prometheus text) are served at `/metrics` on [`ProxyConfig::metrics_listen`]
//! (loopback by default): the programming-latency histogram (watch event observed → maps
//! updated), sync durations, and per-frontend connection counters read from the dataplane's
//! per-CPU map at scrape time.

pub mod desired;
pub mod metrics;
pub mod nft;
mod node;

pub use nft::{NftConfig, NftServiceTable};
pub use node::{
    DEFAULT_CGROUP, NodeProxyConfig, ProxyMode, default_route_interface, local_ipv4_addresses, run_node_proxy,
};

use crate::dataplane::{Frontend, FrontendPolicy, Protocol, ServiceTable, UpdateStats};
use anyhow::{Context, Result};
use desired::{Desired, ServicePortName};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use metrics::{ProxyMetrics, label};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Default `/metrics` address (kube-proxy's metrics port, on loopback).
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:10249";

/// Proxy configuration.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Where `/metrics` is served; `None` serves nothing. Port 0 picks a free port
    /// ([`Proxy::metrics_addr`] tells which).
    pub metrics_listen: Option<SocketAddr>,
    /// Full resync even without events (repairs maps changed behind the agent's back).
    pub resync_period: Duration,
    /// The node's own addresses: NodePorts are served on each of them.
    pub node_addresses: Vec<std::net::Ipv4Addr>,
    /// The node this proxy serves: `internalTrafficPolicy: Local` services use only endpoints
    /// whose `nodeName` is this one.
    pub node_name: Option<String>,
    /// Follow this machine's addresses instead (checked every 2 s; a change resyncs), so an
    /// address that appears later — the pod bridge's gateway — serves NodePorts too.
    pub track_node_addresses: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            metrics_listen: Some(DEFAULT_METRICS_LISTEN.parse().unwrap()),
            resync_period: Duration::from_secs(30),
            node_addresses: Vec::new(),
            track_node_addresses: false,
            node_name: None,
        }
    }
}

/// The service proxy. Create with [`Proxy::new`] (binds the metrics port), then [`Proxy::run`].
pub struct Proxy {
    config: ProxyConfig,
    metrics: Arc<ProxyMetrics>,
    listener: Mutex<Option<std::net::TcpListener>>,
    metrics_addr: Option<SocketAddr>,
}

impl Proxy {
    pub fn new(config: ProxyConfig) -> Result<Self> {
        let (listener, metrics_addr) = match config.metrics_listen {
            Some(addr) => {
                let l = std::net::TcpListener::bind(addr).with_context(|| format!("binding /metrics on {addr}"))?;
                l.set_nonblocking(true)?;
                let a = l.local_addr()?;
                (Some(l), Some(a))
            }
            None => (None, None),
        };
        Ok(Self { config, metrics: Arc::new(ProxyMetrics::default()), listener: Mutex::new(listener), metrics_addr })
    }

    /// The bound `/metrics` address.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The proxy's own metrics (shared; also readable while [`Proxy::run`] runs).
    pub fn metrics(&self) -> Arc<ProxyMetrics> {
        self.metrics.clone()
    }

    /// Watches, programs `table`, and serves `/metrics` until `shutdown` completes. Leaves the
    /// maps as they are on return (an agent restart continues from them).
    pub async fn run(
        &self,
        client: Client,
        table: &mut dyn ProxyTable,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        let (svc_store, svc_writer) = reflector::store::<Service>();
        let (eps_store, eps_writer) = reflector::store::<EndpointSlice>();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Dirty)>();
        let index = Arc::new(Mutex::new(SliceIndex::default()));

        let svc_tx = tx.clone();
        let svc_watch = watcher(Api::<Service>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            .reflect(svc_writer)
            .for_each(move |ev| {
                let now = Instant::now();
                match ev {
                    Ok(watcher::Event::Apply(s) | watcher::Event::Delete(s) | watcher::Event::InitApply(s)) => {
                        let _ = svc_tx.send((now, Dirty::Service(SvcKey::of(&s.metadata))));
                    }
                    Ok(watcher::Event::Init) => {}
                    Ok(watcher::Event::InitDone) => {
                        let _ = svc_tx.send((now, Dirty::All));
                    }
                    Err(e) => tracing::warn!("service watch: {e}"),
                }
                std::future::ready(())
            });
        let idx = index.clone();
        let eps_watch = watcher(Api::<EndpointSlice>::all(client), watcher::Config::default())
            .default_backoff()
            .reflect(eps_writer)
            .for_each(move |ev| {
                let now = Instant::now();
                let dirty = match ev {
                    Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => idx.lock().unwrap().apply(&s),
                    Ok(watcher::Event::Delete(s)) => idx.lock().unwrap().delete(&s),
                    Ok(watcher::Event::Init) => Vec::new(),
                    Ok(watcher::Event::InitDone) => vec![Dirty::All],
                    Err(e) => {
                        tracing::warn!("endpointslice watch: {e}");
                        Vec::new()
                    }
                };
                for d in dirty {
                    let _ = tx.send((now, d));
                }
                std::future::ready(())
            });

        let table = Mutex::new(table);
        let names: Mutex<BTreeMap<Frontend, ServicePortName>> = Mutex::new(BTreeMap::new());

        let node_addresses = Mutex::new(if self.config.track_node_addresses {
            node::local_ipv4_addresses()
        } else {
            self.config.node_addresses.clone()
        });
        let sync_loop = async {
            // Not before both initial lists are complete: never remove what is merely unlisted.
            let _ = svc_store.wait_until_ready().await;
            let _ = eps_store.wait_until_ready().await;
            while rx.try_recv().is_ok() {} // the initial lists' events are covered by this first sync
            let mut owners = Owners::default();
            let t = Instant::now();
            let d = desired::compute(
                &svc_store.state(),
                &eps_store.state(),
                &node_addresses.lock().unwrap(),
                self.config.node_name.as_deref(),
            );
            let mut full_needed = !self.apply(&table, &names, &d);
            owners.rebuild(&d);
            tracing::info!(frontends = d.len(), elapsed = ?t.elapsed(), "service proxy: initial sync done");
            let mut pending: Vec<Instant> = Vec::new();
            let mut dirty: BTreeSet<SvcKey> = BTreeSet::new();
            let mut resync_at = tokio::time::Instant::now() + self.config.resync_period;
            let mut address_check = tokio::time::interval(Duration::from_secs(2));
            loop {
                tokio::select! {
                    ev = rx.recv() => match ev {
                        Some((t, d)) => {
                            pending.push(t);
                            match d {
                                Dirty::All => full_needed = true,
                                Dirty::Service(k) => { dirty.insert(k); }
                            }
                        }
                        None => return,
                    },
                    _ = tokio::time::sleep_until(resync_at) => full_needed = true,
                    _ = address_check.tick(), if self.config.track_node_addresses => {
                        let now = node::local_ipv4_addresses();
                        let mut cur = node_addresses.lock().unwrap();
                        if *cur == now {
                            continue;
                        }
                        tracing::info!(addresses = ?now, "node addresses changed: NodePorts follow");
                        *cur = now;
                        full_needed = true;
                    }
                }
                while let Ok((t, d)) = rx.try_recv() {
                    pending.push(t);
                    match d {
                        Dirty::All => full_needed = true,
                        Dirty::Service(k) => {
                            dirty.insert(k);
                        }
                    }
                }
                let ok = if full_needed {
                    resync_at = tokio::time::Instant::now() + self.config.resync_period;
                    let d = desired::compute(
                        &svc_store.state(),
                        &eps_store.state(),
                        &node_addresses.lock().unwrap(),
                        self.config.node_name.as_deref(),
                    );
                    let ok = self.apply(&table, &names, &d);
                    owners.rebuild(&d);
                    ok
                } else {
                    let t = Instant::now();
                    let mut ok = true;
                    let mut writes = 0;
                    {
                        let mut table = table.lock().unwrap();
                        let mut names = names.lock().unwrap();
                        for key in &dirty {
                            let svc = svc_store.get(&ObjectRef::new(&key.name).within(&key.ns));
                            let slice_names = index.lock().unwrap().slices_of(key);
                            let slices: Vec<Arc<EndpointSlice>> = slice_names
                                .iter()
                                .filter_map(|n| eps_store.get(&ObjectRef::new(n).within(&key.ns)))
                                .filter(|s| desired::slice_of(s, &key.ns, &key.name))
                                .collect();
                            let refs: Vec<&EndpointSlice> = slices.iter().map(|s| s.as_ref()).collect();
                            let want = svc
                                .map(|s| {
                                    desired::compute_service(
                                        &s,
                                        &refs,
                                        &node_addresses.lock().unwrap(),
                                        self.config.node_name.as_deref(),
                                    )
                                })
                                .unwrap_or_default();
                            let (w, k) = owners.apply_service(&mut **table, &mut names, key, want);
                            writes += w;
                            ok &= k;
                        }
                        self.metrics.frontends.store(table.len() as u64, Ordering::Relaxed);
                    }
                    self.metrics.sync_duration.observe(t.elapsed());
                    self.metrics.syncs.fetch_add(1, Ordering::Relaxed);
                    self.metrics.map_writes.fetch_add(writes as u64, Ordering::Relaxed);
                    if !ok {
                        self.metrics.sync_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    ok
                };
                let done = Instant::now();
                if ok {
                    full_needed = false;
                    dirty.clear();
                    for t in pending.drain(..) {
                        self.metrics.programming_latency.observe(done - t);
                    }
                } else {
                    // Retry with a full sync; the events' latency ends when a sync succeeds.
                    full_needed = true;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };

        let listener = self.listener.lock().unwrap().take();
        let serve = async {
            let Some(l) = listener else { return std::future::pending::<()>().await };
            let l = match tokio::net::TcpListener::from_std(l) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!("metrics listener: {e}");
                    return std::future::pending::<()>().await;
                }
            };
            loop {
                let Ok((mut conn, _)) = l.accept().await else { continue };
                let mut buf = vec![0u8; 4096];
                let mut n = 0;
                let read = tokio::time::timeout(Duration::from_secs(2), async {
                    while n < buf.len() {
                        match conn.read(&mut buf[n..]).await {
                            Ok(0) | Err(_) => break,
                            Ok(k) => n += k,
                        }
                        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                })
                .await;
                if read.is_err() {
                    continue;
                }
                let req = String::from_utf8_lossy(&buf[..n]);
                let path = req.split_whitespace().nth(1).unwrap_or("");
                let (status, ctype, body) = if path == "/metrics" || path.starts_with("/metrics?") {
                    ("200 OK", "text/plain; version=0.0.4; charset=utf-8", self.render(&table, &names))
                } else if path == "/healthz" {
                    ("200 OK", "text/plain", "ok\n".to_string())
                } else {
                    ("404 Not Found", "text/plain", "not found\n".to_string())
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    conn.write_all(head.as_bytes()).await?;
                    conn.write_all(body.as_bytes()).await?;
                    conn.shutdown().await
                })
                .await;
            }
        };

        tokio::select! {
            _ = shutdown => {}
            _ = svc_watch => anyhow::bail!("the Service watch ended"),
            _ = eps_watch => anyhow::bail!("the EndpointSlice watch ended"),
            _ = sync_loop => anyhow::bail!("the sync loop ended"),
            _ = serve => {}
        }
        Ok(())
    }

    /// Brings the maps to `d`: stale frontends removed first (frees capacity), then every desired
    /// frontend upserted (a no-op where nothing differs). Returns whether everything applied.
    fn apply(
        &self,
        table: &Mutex<&mut dyn ProxyTable>,
        names: &Mutex<BTreeMap<Frontend, ServicePortName>>,
        d: &Desired,
    ) -> bool {
        let t = Instant::now();
        let mut table = table.lock().unwrap();
        let (writes, ok) = apply_desired(&mut **table, d);
        let frontends = table.len();
        drop(table);
        *names.lock().unwrap() = d.iter().map(|(f, w)| (*f, w.service.clone())).collect();
        self.metrics.sync_duration.observe(t.elapsed());
        self.metrics.syncs.fetch_add(1, Ordering::Relaxed);
        self.metrics.map_writes.fetch_add(writes as u64, Ordering::Relaxed);
        self.metrics.frontends.store(frontends as u64, Ordering::Relaxed);
        if !ok {
            self.metrics.sync_errors.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    fn render(&self, table: &Mutex<&mut dyn ProxyTable>, names: &Mutex<BTreeMap<Frontend, ServicePortName>>) -> String {
        let mut out = String::new();
        self.metrics.render(&mut out);
        let names = names.lock().unwrap().clone();
        let table = table.lock().unwrap();
        let mut translated = String::new();
        let mut refused = String::new();
        let mut backends = String::new();
        let mut packets = String::new();
        let mut bytes = String::new();
        for fe in table.frontends() {
            let (ns, svc, port) = match names.get(&fe) {
                Some(n) => (n.namespace.as_str(), n.name.as_str(), n.port.as_str()),
                None => ("", "", ""),
            };
            let proto = match fe.proto {
                Protocol::Tcp => "TCP",
                Protocol::Udp => "UDP",
            };
            let labels = format!(
                "namespace=\"{}\",service=\"{}\",port=\"{}\",frontend=\"{}:{}/{proto}\"",
                label(ns),
                label(svc),
                label(port),
                fe.vip,
                fe.port
            );
            if let Ok(Some(c)) = table.counters(fe.vip, fe.port, fe.proto) {
                let _ = writeln!(translated, "skiff_service_connections_translated_total{{{labels}}} {}", c.translated);
                let _ = writeln!(refused, "skiff_service_connections_refused_total{{{labels}}} {}", c.refused);
            }
            if let Ok(Some(p)) = table.packet_counters(fe.vip, fe.port, fe.proto) {
                let _ = writeln!(packets, "skiff_service_packets_total{{{labels}}} {}", p.packets);
                let _ = writeln!(bytes, "skiff_service_bytes_total{{{labels}}} {}", p.bytes);
            }
            let n = table.backends(fe.vip, fe.port, fe.proto).map(|b| b.len()).unwrap_or(0);
            let _ = writeln!(backends, "skiff_service_backends{{{labels}}} {n}");
        }
        let _ = write!(
            out,
            "# HELP skiff_service_connections_translated_total Connections (and unconnected UDP sends) translated to a backend.\n\
             # TYPE skiff_service_connections_translated_total counter\n{translated}\
             # HELP skiff_service_connections_refused_total Connection attempts refused because the service had no ready backend.\n\
             # TYPE skiff_service_connections_refused_total counter\n{refused}\
             # HELP skiff_service_packets_total Packets the per-packet NodePort program translated for the service (both directions).\n\
             # TYPE skiff_service_packets_total counter\n{packets}\
             # HELP skiff_service_bytes_total Bytes (whole frames) the per-packet NodePort program translated for the service.\n\
             # TYPE skiff_service_bytes_total counter\n{bytes}\
             # HELP skiff_service_backends Ready backends programmed for the frontend.\n\
             # TYPE skiff_service_backends gauge\n{backends}"
        );
        out
    }
}

/// What [`Proxy::run`] programs: the eBPF [`ServiceTable`] or the [`NftServiceTable`]
/// (`--proxy-mode nftables`). Frontends in, frontends out; each implementation applies only
/// the difference.
pub trait ProxyTable: Send {
    /// Number of frontends programmed.
    fn len(&self) -> usize;
    /// Whether no frontend is programmed.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The frontends programmed, sorted.
    fn frontends(&self) -> Vec<Frontend>;
    /// A frontend's backends, or `None` if it is not programmed.
    fn backends(&self, vip: std::net::Ipv4Addr, port: u16, proto: Protocol) -> Option<Vec<(std::net::Ipv4Addr, u16)>>;
    /// Creates or updates a frontend with exactly these backends (none: it refuses connections).
    fn upsert_frontend(
        &mut self,
        vip: std::net::Ipv4Addr,
        port: u16,
        proto: Protocol,
        backends: &[(std::net::Ipv4Addr, u16)],
        policy: FrontendPolicy,
    ) -> Result<UpdateStats>;
    /// Removes a frontend (absent: a no-op).
    fn remove_service(&mut self, vip: std::net::Ipv4Addr, port: u16, proto: Protocol) -> Result<UpdateStats>;
    /// Removes every frontend not in `keep`; returns how many.
    fn retain(&mut self, keep: &dyn Fn(&Frontend) -> bool) -> Result<usize>;
    /// Connection counters of a frontend, `None` if it is not programmed (or not counted).
    fn counters(
        &self,
        vip: std::net::Ipv4Addr,
        port: u16,
        proto: Protocol,
    ) -> Result<Option<skiff_dataplane_common::ServiceCounters>>;
    /// Packets and bytes of the per-packet NodePort path, `None` where there is none.
    fn packet_counters(
        &self,
        _vip: std::net::Ipv4Addr,
        _port: u16,
        _proto: Protocol,
    ) -> Result<Option<skiff_dataplane_common::PacketCounters>> {
        Ok(None)
    }
    /// Brings the table to `d` at once if the implementation batches better than frontend by
    /// frontend ([`apply_desired`] does that otherwise); returns writes and success.
    fn apply_batch(&mut self, _d: &Desired) -> Option<(usize, bool)> {
        None
    }
}

impl ProxyTable for ServiceTable {
    fn len(&self) -> usize {
        ServiceTable::len(self)
    }
    fn frontends(&self) -> Vec<Frontend> {
        ServiceTable::frontends(self)
    }
    fn backends(&self, vip: std::net::Ipv4Addr, port: u16, proto: Protocol) -> Option<Vec<(std::net::Ipv4Addr, u16)>> {
        ServiceTable::backends(self, vip, port, proto)
    }
    fn upsert_frontend(
        &mut self,
        vip: std::net::Ipv4Addr,
        port: u16,
        proto: Protocol,
        backends: &[(std::net::Ipv4Addr, u16)],
        policy: FrontendPolicy,
    ) -> Result<UpdateStats> {
        ServiceTable::upsert_frontend(self, vip, port, proto, backends, policy)
    }
    fn remove_service(&mut self, vip: std::net::Ipv4Addr, port: u16, proto: Protocol) -> Result<UpdateStats> {
        ServiceTable::remove_service(self, vip, port, proto)
    }
    fn retain(&mut self, keep: &dyn Fn(&Frontend) -> bool) -> Result<usize> {
        ServiceTable::retain(self, keep)
    }
    fn counters(
        &self,
        vip: std::net::Ipv4Addr,
        port: u16,
        proto: Protocol,
    ) -> Result<Option<skiff_dataplane_common::ServiceCounters>> {
        ServiceTable::counters(self, vip, port, proto)
    }
    fn packet_counters(
        &self,
        vip: std::net::Ipv4Addr,
        port: u16,
        proto: Protocol,
    ) -> Result<Option<skiff_dataplane_common::PacketCounters>> {
        ServiceTable::packet_counters(self, vip, port, proto)
    }
}

/// Brings `table` to `d`: stale frontends removed first (frees capacity), then every desired
/// frontend upserted (a no-op where nothing differs). Failures are logged and the rest still
/// applied. Returns the number of map entries written or deleted and whether everything applied.
pub fn apply_desired(table: &mut dyn ProxyTable, d: &Desired) -> (usize, bool) {
    if let Some(done) = table.apply_batch(d) {
        return done;
    }
    let mut writes = 0usize;
    let mut ok = true;
    match table.retain(&|f| d.contains_key(f)) {
        Ok(n) => writes += n,
        Err(e) => {
            ok = false;
            tracing::error!("removing stale services: {e:#}");
        }
    }
    for (fe, want) in d {
        match table.upsert_frontend(fe.vip, fe.port, fe.proto, &want.backends, want.policy()) {
            Ok(st) => writes += st.slots_written + st.slots_deleted + st.service_written as usize,
            Err(e) => {
                ok = false;
                tracing::error!("programming {} ({}:{}/{:?}): {e:#}", want.service, fe.vip, fe.port, fe.proto);
            }
        }
    }
    (writes, ok)
}

/// A Service's identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct SvcKey {
    ns: String,
    name: String,
}

impl SvcKey {
    fn of(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Self {
        Self { ns: m.namespace.clone().unwrap_or_default(), name: m.name.clone().unwrap_or_default() }
    }
}

/// What a watch event makes the sync loop recompute.
#[derive(Debug)]
enum Dirty {
    /// Everything (a watch (re)list completed).
    All,
    /// One Service (it, or one of its EndpointSlices, changed).
    Service(SvcKey),
}

/// EndpointSlice → Service index, so a change recomputes one Service from its own slices only.
/// Names are looked up in the reflector store, which is the truth; entries here may be stale
/// (a missed delete during a relist) and are filtered at lookup.
#[derive(Default)]
struct SliceIndex {
    by_slice: HashMap<(String, String), String>,
    by_service: HashMap<SvcKey, BTreeSet<String>>,
}

impl SliceIndex {
    fn label(s: &EndpointSlice) -> Option<String> {
        s.metadata.labels.as_ref().and_then(|l| l.get(desired::SERVICE_NAME_LABEL)).cloned()
    }

    fn unlink(&mut self, ns: &str, slice: &str) -> Option<SvcKey> {
        let old = self.by_slice.remove(&(ns.to_string(), slice.to_string()))?;
        let key = SvcKey { ns: ns.to_string(), name: old };
        if let Some(set) = self.by_service.get_mut(&key) {
            set.remove(slice);
            if set.is_empty() {
                self.by_service.remove(&key);
            }
        }
        Some(key)
    }

    fn apply(&mut self, s: &EndpointSlice) -> Vec<Dirty> {
        let ns = s.metadata.namespace.clone().unwrap_or_default();
        let name = s.metadata.name.clone().unwrap_or_default();
        let mut out = Vec::new();
        if let Some(old) = self.unlink(&ns, &name) {
            out.push(old);
        }
        if let Some(svc) = Self::label(s) {
            let key = SvcKey { ns: ns.clone(), name: svc.clone() };
            self.by_slice.insert((ns, name.clone()), svc);
            self.by_service.entry(key.clone()).or_default().insert(name);
            if !out.contains(&key) {
                out.push(key);
            }
        }
        out.into_iter().map(Dirty::Service).collect()
    }

    fn delete(&mut self, s: &EndpointSlice) -> Vec<Dirty> {
        let ns = s.metadata.namespace.clone().unwrap_or_default();
        let name = s.metadata.name.clone().unwrap_or_default();
        self.unlink(&ns, &name).into_iter().map(Dirty::Service).collect()
    }

    fn slices_of(&self, key: &SvcKey) -> Vec<String> {
        self.by_service.get(key).map(|s| s.iter().cloned().collect()).unwrap_or_default()
    }
}

/// Which Service owns which frontends in the maps (for incremental syncs).
#[derive(Default)]
struct Owners {
    by_service: HashMap<SvcKey, Vec<Frontend>>,
    by_frontend: HashMap<Frontend, SvcKey>,
}

impl Owners {
    fn rebuild(&mut self, d: &Desired) {
        self.by_service.clear();
        self.by_frontend.clear();
        for (fe, want) in d {
            let key = SvcKey { ns: want.service.namespace.clone(), name: want.service.name.clone() };
            self.by_service.entry(key.clone()).or_default().push(*fe);
            self.by_frontend.insert(*fe, key);
        }
    }

    /// Brings one Service's frontends to `want`: its frontends no longer wanted are removed;
    /// wanted ones are upserted unless another Service owns them (the next full sync settles
    /// such conflicts in namespace/name order, as [`desired::compute`] does).
    fn apply_service(
        &mut self,
        table: &mut dyn ProxyTable,
        names: &mut BTreeMap<Frontend, ServicePortName>,
        key: &SvcKey,
        want: Vec<(Frontend, desired::DesiredFrontend)>,
    ) -> (usize, bool) {
        let mut writes = 0;
        let mut ok = true;
        let old = self.by_service.remove(key).unwrap_or_default();
        for fe in old.iter().filter(|fe| !want.iter().any(|(w, _)| w == *fe)) {
            match table.remove_service(fe.vip, fe.port, fe.proto) {
                Ok(st) => writes += st.slots_deleted + st.service_written as usize,
                Err(e) => {
                    ok = false;
                    tracing::error!("removing {}:{}/{:?}: {e:#}", fe.vip, fe.port, fe.proto);
                }
            }
            self.by_frontend.remove(fe);
            names.remove(fe);
        }
        let mut owned = Vec::new();
        for (fe, w) in want {
            if let Some(other) = self.by_frontend.get(&fe)
                && other != key
            {
                tracing::warn!(
                    "{}:{}/{:?} of {} is already owned by {}/{}",
                    fe.vip,
                    fe.port,
                    fe.proto,
                    w.service,
                    other.ns,
                    other.name
                );
                continue;
            }
            match table.upsert_frontend(fe.vip, fe.port, fe.proto, &w.backends, w.policy()) {
                Ok(st) => writes += st.slots_written + st.slots_deleted + st.service_written as usize,
                Err(e) => {
                    ok = false;
                    tracing::error!("programming {} ({}:{}/{:?}): {e:#}", w.service, fe.vip, fe.port, fe.proto);
                }
            }
            self.by_frontend.insert(fe, key.clone());
            names.insert(fe, w.service);
            owned.push(fe);
        }
        if !owned.is_empty() {
            self.by_service.insert(key.clone(), owned);
        }
        (writes, ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{Config, Dataplane, ObjectSource, default_object_path};
    use serde_json::json;
    use std::net::Ipv4Addr;

    fn slice(i: u32, ready_last: bool) -> EndpointSlice {
        let ep = |k: u32, ready: bool| json!({"addresses": [Ipv4Addr::from(0x0af4_0000 + i * 4 + k).to_string()], "conditions": {"ready": ready}});
        serde_json::from_value(json!({
            "metadata": {"namespace": "bench", "name": format!("s{i}-1"), "labels": {desired::SERVICE_NAME_LABEL: format!("s{i}")}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [ep(0, true), ep(1, true), ep(2, ready_last)]}))
        .unwrap()
    }

    /// The incremental path the sync loop takes for one event, on the real maps with 10,000
    /// services present (root and the eBPF object needed; skipped otherwise).
    #[test]
    fn one_change_with_10k_services_is_incremental() {
        if unsafe { libc::geteuid() } != 0 || !default_object_path().exists() {
            eprintln!("skipping: needs root and the eBPF object");
            return;
        }
        let pin_dir = std::path::PathBuf::from(format!("/sys/fs/bpf/skiff-test-{}-unit", std::process::id()));
        let mut dp = Dataplane::load(&Config { object: ObjectSource::Path(default_object_path()), pin_dir }).unwrap();
        let n = 10_000u32;
        let services: Vec<Arc<Service>> = (0..n)
            .map(|i| {
                Arc::new(
                    serde_json::from_value(json!({"metadata": {"namespace": "bench", "name": format!("s{i}")},
                "spec": {"clusterIP": Ipv4Addr::from(0x0a64_0000 + i).to_string(),
                         "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}))
                    .unwrap(),
                )
            })
            .collect();
        let mut slices: HashMap<String, Arc<EndpointSlice>> =
            (0..n).map(|i| (format!("s{i}-1"), Arc::new(slice(i, true)))).collect();
        let mut index = SliceIndex::default();
        for s in slices.values() {
            index.apply(s);
        }
        let all: Vec<Arc<EndpointSlice>> = slices.values().cloned().collect();
        let d = desired::compute(&services, &all, &[], None);
        let (_, ok) = apply_desired(&mut dp.services, &d);
        assert!(ok);
        let mut owners = Owners::default();
        owners.rebuild(&d);
        let mut names = BTreeMap::new();

        let mut times = Vec::new();
        for round in 0..20u32 {
            let i = 5000 + round;
            let changed = Arc::new(slice(i, false));
            slices.insert(format!("s{i}-1"), changed.clone());
            let t = Instant::now();
            let dirty = index.apply(&changed);
            let mut writes = 0;
            for dk in dirty {
                let Dirty::Service(key) = dk else { unreachable!() };
                let svc = &services[i as usize];
                let sl: Vec<Arc<EndpointSlice>> =
                    index.slices_of(&key).iter().filter_map(|n| slices.get(n).cloned()).collect();
                let refs: Vec<&EndpointSlice> = sl.iter().map(|s| s.as_ref()).collect();
                let want = desired::compute_service(svc, &refs, &[], None);
                let (w, ok) = owners.apply_service(&mut dp.services, &mut names, &key, want);
                assert!(ok);
                writes += w;
            }
            times.push(t.elapsed());
            assert_eq!(writes, 2, "one slot deleted, the count rewritten");
        }
        times.sort();
        eprintln!(
            "incremental change with 10,000 services present: median {:?}, max {:?}",
            times[times.len() / 2],
            times[times.len() - 1]
        );
        assert!(times[times.len() / 2] < Duration::from_millis(50));
        assert_eq!(dp.services.len(), n as usize);
        dp.cleanup().unwrap();
    }
}
