//! `cargo xtask bench api`: the API server against the raw store under it, in the same run.
//!
//! For each backend (embedded redb, etcd) and each of 3 interleaved rounds: 10,000 pod creates and
//! gets through the API (kube-rs's client sending JSON bodies and checking the JSON it gets back
//! without decoding it into types, 64 in flight) and the same writes and reads on the raw store
//! (the embedded store's own API; etcd put/range through etcd-client, and etcd's conditional
//! create — the txn an API create is — for reference); listing all 10,000 pods; and watch
//! delivery latency to 100 watchers. Medians across rounds are printed as Markdown. The API
//! server runs alone (no scheduler or controllers), so only the benchmark writes.
//!
//! Options: `--rounds N` (default 3), `--backends embedded,etcd` (which API servers to measure;
//! the raw etcd put, the target's baseline, is always measured).

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use skiff_storage::Store;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PODS: usize = 10_000;
const IN_FLIGHT: usize = 64;
const ROUNDS: usize = 3;
const WATCHERS: usize = 100;
const WATCH_EVENTS: usize = 200;

fn pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "bench", "tier": "web"}},
        "spec": {"containers": [{"name": "nginx", "image": "nginx:1.7.9", "ports": [{"containerPort": 80}],
                 "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}
    }))
    .expect("static pod")
}

/// The stored form of a pod after defaulting is about this size; raw-store writes use the same bytes.
fn pod_bytes(name: &str) -> Vec<u8> {
    let mut v = serde_json::to_value(pod(name)).expect("pod");
    v["spec"]["restartPolicy"] = "Always".into();
    v["spec"]["dnsPolicy"] = "ClusterFirst".into();
    v["spec"]["schedulerName"] = "default-scheduler".into();
    v["metadata"]["uid"] = "3f7e2b1c-0000-4000-8000-000000000000".into();
    v["metadata"]["creationTimestamp"] = "2026-11-26T00:00:00Z".into();
    v["status"] = serde_json::json!({"phase": "Pending", "qosClass": "Burstable"});
    serde_json::to_vec(&v).expect("json")
}

#[derive(Default, Clone)]
struct Sample {
    ops_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Runs `op(i)` for i in 0..n with `IN_FLIGHT` concurrent, returning throughput and latencies.
async fn drive<F, Fut>(n: usize, op: F) -> Result<Sample>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let start = Instant::now();
    let mut lat: Vec<Duration> = futures::stream::iter(0..n)
        .map(|i| {
            let f = op(i);
            async move {
                let t = Instant::now();
                f.await?;
                Ok::<_, anyhow::Error>(t.elapsed())
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect()
        .await?;
    let total = start.elapsed();
    lat.sort();
    Ok(Sample {
        ops_per_s: n as f64 / total.as_secs_f64(),
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
    })
}

#[derive(Default)]
struct Round {
    raw_write: Sample,
    /// etcd only: conditional creates (txn), the operation an API create maps to.
    raw_txn: Sample,
    raw_read: Sample,
    api_create: Sample,
    api_get: Sample,
    list_ms: f64,
    watch_p50_ms: f64,
    watch_p99_ms: f64,
}

async fn raw_round(store: Arc<dyn Store>, tag: &str) -> Result<(Sample, Sample)> {
    let w = drive(PODS, |i| {
        let s = store.clone();
        let key = format!("/bench/{tag}/pods/default/bench-{i}");
        async move {
            s.create(&key, pod_bytes(&format!("bench-{i}"))).await?;
            Ok(())
        }
    })
    .await?;
    let r = drive(PODS, |i| {
        let s = store.clone();
        let key = format!("/bench/{tag}/pods/default/bench-{i}");
        async move {
            anyhow::ensure!(s.get(&key).await?.is_some(), "missing {key}");
            Ok(())
        }
    })
    .await?;
    Ok((w, r))
}

async fn raw_etcd_round(endpoints: &[String], tag: &str) -> Result<(Sample, Sample, Sample)> {
    let client = etcd_client::Client::connect(endpoints, None).await?;
    let w = drive(PODS, |i| {
        let mut c = client.clone();
        let key = format!("/bench/{tag}/pods/default/bench-{i}");
        async move {
            c.put(key, pod_bytes(&format!("bench-{i}")), None).await?;
            Ok(())
        }
    })
    .await?;
    // What a create is on etcd for any API server (Kubernetes' included): a transaction that puts
    // only if the key does not exist. Reported beside the put, which is the target's baseline.
    let txn = drive(PODS, |i| {
        let mut c = client.clone();
        let key = format!("/bench/{tag}/txn/default/bench-{i}");
        async move {
            let t = etcd_client::Txn::new()
                .when([etcd_client::Compare::create_revision(key.clone(), etcd_client::CompareOp::Equal, 0)])
                .and_then([etcd_client::TxnOp::put(key, pod_bytes(&format!("bench-{i}")), None)]);
            anyhow::ensure!(c.txn(t).await?.succeeded(), "conditional create failed");
            Ok(())
        }
    })
    .await?;
    let r = drive(PODS, |i| {
        let mut c = client.clone();
        let key = format!("/bench/{tag}/pods/default/bench-{i}");
        async move {
            let resp = c.get(key, None).await?;
            anyhow::ensure!(!resp.kvs().is_empty(), "missing");
            Ok(())
        }
    })
    .await?;
    Ok((w, r, txn))
}

async fn api_round(control: &skiff_tests::Control, round: &mut Round) -> Result<()> {
    let client = control.client().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    // Requests go through kube-rs's client (HTTPS, bearer token, its connection pool) as JSON
    // bytes, and responses come back as text that is checked, not decoded into `Pod`s: the raw
    // store's side gets its values back as bytes too, and typed decoding would measure the
    // client's serde rather than the server.
    round.api_create = drive(PODS, |i| {
        let client = client.clone();
        async move {
            let body = serde_json::to_vec(&pod(&format!("bench-{i}")))?;
            let req = http::Request::post("/api/v1/namespaces/default/pods")
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body)?;
            let text = client.request_text(req).await?;
            anyhow::ensure!(text.contains("\"resourceVersion\""), "create returned no object: {text}");
            Ok(())
        }
    })
    .await?;
    round.api_get = drive(PODS, |i| {
        let client = client.clone();
        async move {
            let req = http::Request::get(format!("/api/v1/namespaces/default/pods/bench-{i}")).body(Vec::new())?;
            let text = client.request_text(req).await?;
            anyhow::ensure!(text.contains(&format!("\"bench-{i}\"")), "get returned another object: {text}");
            Ok(())
        }
    })
    .await?;
    // Listing all pods: bytes over the wire from the watch cache (client-side decoding excluded).
    let mut lists = Vec::new();
    for _ in 0..5 {
        let req = http::Request::get("/api/v1/namespaces/default/pods").body(Vec::new())?;
        let t = Instant::now();
        let text = client.request_text(req).await?;
        lists.push(t.elapsed());
        anyhow::ensure!(text.matches("\"bench-").count() >= PODS, "list returned too few pods");
    }
    lists.sort();
    round.list_ms = percentile(&lists, 0.5);

    // Watch delivery: 100 watchers, then pods created one at a time.
    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let samples: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let rv = pods.list_metadata(&Default::default()).await?.metadata.resource_version.unwrap_or_default();
    let mut tasks = Vec::new();
    for _ in 0..WATCHERS {
        let pods = pods.clone();
        let created = created.clone();
        let samples = samples.clone();
        let rv = rv.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = pods.watch(&WatchParams::default().labels("bench=watch").timeout(120), &rv).await?.boxed();
            let mut seen = 0;
            while let Some(ev) = stream.try_next().await? {
                if let WatchEvent::Added(p) = ev {
                    let now = Instant::now();
                    let name = p.metadata.name.unwrap_or_default();
                    if let Some(t0) = created.lock().expect("lock").get(&name) {
                        samples.lock().expect("lock").push(now.duration_since(*t0));
                    }
                    seen += 1;
                    if seen == WATCH_EVENTS {
                        break;
                    }
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..WATCH_EVENTS {
        let mut p = pod(&format!("watched-{i}"));
        p.metadata.labels.get_or_insert_default().insert("bench".into(), "watch".into());
        created.lock().expect("lock").insert(format!("watched-{i}"), Instant::now());
        pods.create(&PostParams::default(), &p).await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t).await???;
    }
    let mut s = samples.lock().expect("lock").clone();
    s.sort();
    anyhow::ensure!(
        s.len() == WATCHERS * WATCH_EVENTS,
        "watchers saw {} of {} events",
        s.len(),
        WATCHERS * WATCH_EVENTS
    );
    round.watch_p50_ms = percentile(&s, 0.5);
    round.watch_p99_ms = percentile(&s, 0.99);
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut embedded_rounds = Vec::new();
    let mut etcd_rounds = Vec::new();
    // The raw etcd put is the target's baseline for both backends: measured every round, beside
    // etcd's conditional create; `etcd_rounds` holds only rounds where the etcd API was measured.
    let (mut raw_puts, mut raw_txns) = (Vec::new(), Vec::new());
    let (mut rounds, mut embedded, mut etcd_backend) = (ROUNDS, true, true);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => {
                rounds = args.next().context("--rounds needs a value")?.parse().context("--rounds")?;
                anyhow::ensure!(rounds >= 1, "--rounds must be at least 1");
            }
            "--backends" => {
                let v = args.next().context("--backends needs a value")?;
                let list: Vec<&str> = v.split(',').collect();
                for b in &list {
                    anyhow::ensure!(["embedded", "etcd"].contains(b), "unknown backend {b:?} (embedded, etcd)");
                }
                (embedded, etcd_backend) = (list.contains(&"embedded"), list.contains(&"etcd"));
            }
            other => anyhow::bail!("unknown argument {other:?}; expected --rounds N, --backends embedded,etcd"),
        }
    }
    let etcd = skiff_storage::conformance::EtcdProcess::start().await?;
    let endpoints = etcd.endpoints();
    for r in 0..rounds {
        eprintln!("round {} of {rounds}", r + 1);
        // Embedded: raw store, then the API on a fresh data directory.
        let mut round = Round::default();
        if embedded {
            let dir = tempfile::tempdir()?;
            let store: Arc<dyn Store> = Arc::new(skiff_storage::EmbeddedStore::open(&dir.path().join("raw.redb"))?);
            (round.raw_write, round.raw_read) = raw_round(store, &format!("e{r}")).await?;
            let control = tokio::task::block_in_place(|| skiff_tests::Control::start_api_only(&[]))?;
            api_round(&control, &mut round).await?;
            eprintln!(
                "  embedded: api create {:.0}/s vs raw write {:.0}/s",
                round.api_create.ops_per_s, round.raw_write.ops_per_s
            );
            embedded_rounds.push(round);
        }

        let mut round = Round::default();
        (round.raw_write, round.raw_read, round.raw_txn) = raw_etcd_round(&endpoints, &format!("r{r}")).await?;
        raw_puts.push(round.raw_write.ops_per_s);
        raw_txns.push(round.raw_txn.ops_per_s);
        if etcd_backend {
            // A key prefix per round is not available to the server, so each round gets its own etcd.
            let etcd_api = skiff_storage::conformance::EtcdProcess::start().await?;
            let url = etcd_api.endpoints().join(",");
            let control = tokio::task::block_in_place(|| {
                skiff_tests::Control::start_api_only(&["--store", "etcd", "--etcd-endpoints", &url])
            })?;
            api_round(&control, &mut round).await?;
            eprintln!(
                "  etcd: api create {:.0}/s vs raw put {:.0}/s (raw conditional create {:.0}/s)",
                round.api_create.ops_per_s, round.raw_write.ops_per_s, round.raw_txn.ops_per_s
            );
            etcd_rounds.push(round);
        }
    }
    println!(
        "| backend | API create/s | raw write/s | ratio | create p50/p99 ms | API get/s | raw read/s | ratio | get p50/p99 ms | list 10k pods ms | watch p50/p99 ms (100 watchers) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (name, rounds) in [("embedded (redb)", &embedded_rounds), ("etcd 3.4", &etcd_rounds)] {
        if rounds.is_empty() {
            continue;
        }
        let m = |f: &dyn Fn(&Round) -> f64| median(rounds.iter().map(f).collect());
        let (ac, rw) = (m(&|r| r.api_create.ops_per_s), m(&|r| r.raw_write.ops_per_s));
        let (ag, rr) = (m(&|r| r.api_get.ops_per_s), m(&|r| r.raw_read.ops_per_s));
        println!(
            "| {name} | {ac:.0} | {rw:.0} | {:.2} | {:.1} / {:.1} | {ag:.0} | {rr:.0} | {:.2} | {:.1} / {:.1} | {:.0} | {:.1} / {:.1} |",
            ac / rw,
            m(&|r| r.api_create.p50_ms),
            m(&|r| r.api_create.p99_ms),
            ag / rr,
            m(&|r| r.api_get.p50_ms),
            m(&|r| r.api_get.p99_ms),
            m(&|r| r.list_ms),
            m(&|r| r.watch_p50_ms),
            m(&|r| r.watch_p99_ms),
        );
    }
    let (raw_etcd_put, raw_etcd_txn) = (median(raw_puts), median(raw_txns));
    println!(
        "\netcd's own conditional create (txn, put if absent): {raw_etcd_txn:.0}/s = {:.2}x its put",
        raw_etcd_txn / raw_etcd_put
    );
    if !etcd_rounds.is_empty() {
        let ac = median(etcd_rounds.iter().map(|r| r.api_create.ops_per_s).collect());
        println!("API creates on etcd = {:.2}x etcd's conditional create", ac / raw_etcd_txn);
    }
    for (name, rounds) in [("embedded", &embedded_rounds), ("etcd", &etcd_rounds)] {
        if rounds.is_empty() {
            continue;
        }
        let ac = median(rounds.iter().map(|r| r.api_create.ops_per_s).collect());
        println!("\n{name}: API creates = {:.2}x raw etcd put throughput (target >= 0.50)", ac / raw_etcd_put);
    }
    Ok(())
}
