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
mod node;

pub use node::{DEFAULT_CGROUP, NodeProxyConfig, run_node_proxy};

use crate::dataplane::{Frontend, Protocol, ServiceTable};
use anyhow::{Context, Result};
use desired::{Desired, ServicePortName};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use metrics::{ProxyMetrics, label};
use std::collections::BTreeMap;
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
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self { metrics_listen: Some(DEFAULT_METRICS_LISTEN.parse().unwrap()), resync_period: Duration::from_secs(30) }
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
    pub async fn run(&self, client: Client, table: &mut ServiceTable, shutdown: impl Future<Output = ()>) -> Result<()> {
        let (svc_store, svc_writer) = reflector::store::<Service>();
        let (eps_store, eps_writer) = reflector::store::<EndpointSlice>();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();

        let svc_tx = tx.clone();
        let svc_watch = watcher(Api::<Service>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            .reflect(svc_writer)
            .for_each(move |ev| {
                match ev {
                    Ok(_) => {
                        let _ = svc_tx.send(Instant::now());
                    }
                    Err(e) => tracing::warn!("service watch: {e}"),
                }
                std::future::ready(())
            });
        let eps_watch = watcher(Api::<EndpointSlice>::all(client), watcher::Config::default())
            .default_backoff()
            .reflect(eps_writer)
            .for_each(move |ev| {
                match ev {
                    Ok(_) => {
                        let _ = tx.send(Instant::now());
                    }
                    Err(e) => tracing::warn!("endpointslice watch: {e}"),
                }
                std::future::ready(())
            });

        let table = Mutex::new(table);
        let names: Mutex<BTreeMap<Frontend, ServicePortName>> = Mutex::new(BTreeMap::new());

        let sync_loop = async {
            // Not before both initial lists are complete: never remove what is merely unlisted.
            let _ = svc_store.wait_until_ready().await;
            let _ = eps_store.wait_until_ready().await;
            while rx.try_recv().is_ok() {} // the initial lists' events are covered by this first sync
            let t = Instant::now();
            let d = desired::compute(&svc_store.state(), &eps_store.state());
            self.apply(&table, &names, &d);
            tracing::info!(frontends = d.len(), elapsed = ?t.elapsed(), "service proxy: initial sync done");
            let mut pending: Vec<Instant> = Vec::new();
            loop {
                tokio::select! {
                    ev = rx.recv() => match ev {
                        Some(t) => pending.push(t),
                        None => return,
                    },
                    _ = tokio::time::sleep(self.config.resync_period) => {}
                }
                while let Ok(t) = rx.try_recv() {
                    pending.push(t);
                }
                let d = desired::compute(&svc_store.state(), &eps_store.state());
                let ok = self.apply(&table, &names, &d);
                let done = Instant::now();
                if ok {
                    for t in pending.drain(..) {
                        self.metrics.programming_latency.observe(done - t);
                    }
                } else {
                    // Keep the events pending: their latency ends when a sync succeeds.
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
        table: &Mutex<&mut ServiceTable>,
        names: &Mutex<BTreeMap<Frontend, ServicePortName>>,
        d: &Desired,
    ) -> bool {
        let t = Instant::now();
        let mut table = table.lock().unwrap();
        let mut writes = 0usize;
        let mut ok = true;
        match table.retain(|f| d.contains_key(f)) {
            Ok(n) => writes += n,
            Err(e) => {
                ok = false;
                tracing::error!("removing stale services: {e:#}");
            }
        }
        for (fe, want) in d {
            match table.upsert_service(fe.vip, fe.port, fe.proto, &want.backends) {
                Ok(st) => writes += st.slots_written + st.slots_deleted + st.service_written as usize,
                Err(e) => {
                    ok = false;
                    tracing::error!("programming {} ({}:{}/{:?}): {e:#}", want.service, fe.vip, fe.port, fe.proto);
                }
            }
        }
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

    fn render(&self, table: &Mutex<&mut ServiceTable>, names: &Mutex<BTreeMap<Frontend, ServicePortName>>) -> String {
        let mut out = String::new();
        self.metrics.render(&mut out);
        let names = names.lock().unwrap().clone();
        let table = table.lock().unwrap();
        let mut translated = String::new();
        let mut refused = String::new();
        let mut backends = String::new();
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
            let n = table.backends(fe.vip, fe.port, fe.proto).map(|b| b.len()).unwrap_or(0);
            let _ = writeln!(backends, "skiff_service_backends{{{labels}}} {n}");
        }
        let _ = write!(
            out,
            "# HELP skiff_service_connections_translated_total Connections (and unconnected UDP sends) translated to a backend.\n\
             # TYPE skiff_service_connections_translated_total counter\n{translated}\
             # HELP skiff_service_connections_refused_total Connection attempts refused because the service had no ready backend.\n\
             # TYPE skiff_service_connections_refused_total counter\n{refused}\
             # HELP skiff_service_backends Ready backends programmed for the frontend.\n\
             # TYPE skiff_service_backends gauge\n{backends}"
        );
        out
    }
}
