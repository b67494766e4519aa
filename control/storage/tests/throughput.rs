//! Write throughput of the embedded store against raw etcd puts on the same machine.
//!
//! Ignored by default (timing-sensitive, and the real benchmark lives in xtask); run with
//! `cargo test -p skiff-storage --release --test throughput -- --ignored --nocapture`.
//! The design target: embedded creates at least 50% of raw etcd put throughput.

use std::sync::Arc;
use std::time::{Duration, Instant};

use skiff_storage::conformance::EtcdProcess;
use skiff_storage::{EmbeddedStore, EtcdStore, Store};

const CLIENTS: usize = 64;
const PER_CLIENT: usize = 150;

async fn run<F, Fut>(op: F) -> f64
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_CLIENT {
                op(c, i).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (CLIENTS * PER_CLIENT) as f64 / started.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn embedded_creates_vs_raw_etcd_puts() {
    let etcd = EtcdProcess::start().await.unwrap();
    let client = etcd_client::Client::connect(etcd.endpoints(), None).await.unwrap();
    let etcd_store = Arc::new(EtcdStore::connect(&etcd.endpoints()).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let embedded = Arc::new(EmbeddedStore::open(&dir.path().join("s.redb")).unwrap());
    let value = vec![b'x'; 1024];

    let mut raw = Vec::new();
    let mut via_trait = Vec::new();
    let mut emb = Vec::new();
    for round in 0..3 {
        let (c, v) = (client.clone(), value.clone());
        raw.push(
            run(move |t, i| {
                let (mut c, v) = (c.clone(), v.clone());
                async move {
                    c.put(format!("/raw/{round}/{t}/{i}"), v, None).await.unwrap();
                }
            })
            .await,
        );
        let (s, v) = (etcd_store.clone(), value.clone());
        via_trait.push(
            run(move |t, i| {
                let (s, v) = (s.clone(), v.clone());
                async move {
                    s.create(&format!("/etcd/{round}/{t}/{i}"), v).await.unwrap();
                }
            })
            .await,
        );
        let (s, v) = (embedded.clone(), value.clone());
        emb.push(
            run(move |t, i| {
                let (s, v) = (s.clone(), v.clone());
                async move {
                    s.create(&format!("/emb/{round}/{t}/{i}"), v).await.unwrap();
                }
            })
            .await,
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (raw, via_trait, emb) = (median(&mut raw), median(&mut via_trait), median(&mut emb));
    eprintln!(
        "{CLIENTS} clients x {PER_CLIENT} writes of 1 KiB, median of 3: raw etcd put {raw:.0}/s, \
         EtcdStore create {via_trait:.0}/s, EmbeddedStore create {emb:.0}/s (ratio to raw etcd {:.2})",
        emb / raw
    );
    assert!(emb >= 0.5 * raw, "embedded creates {emb:.0}/s are below half of raw etcd puts {raw:.0}/s");
}
