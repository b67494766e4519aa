//! `cargo xtask bench pods`: pod start latency (create → Running, as the API reports it) for 30
//! pods, one after another, through a real `skiff control` and `skiff agent` on Docker, against
//! raw `docker run -d` of the same image measured in the same run: as plain as it gets (Docker's
//! default bridge network — like a pod, the container gets an interface and an address of its
//! own) and, for scale, with `--network none` (no network at all). Three interleaved rounds;
//! medians of the per-round p50/p99 are printed as Markdown.

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use skiff_tests::{Agent, Control};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PODS: usize = 30;
const ROUNDS: usize = 3;
const IMAGE: &str = "busybox:latest";

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"bench": "pods"}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "main", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                            "command": ["sleep", "3600"]}]
        }
    }))
    .expect("static pod")
}

async fn skiff_round(api: &Api<Pod>, round: usize) -> Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(PODS);
    for i in 0..PODS {
        let name = format!("bench-{round}-{i}");
        let wp = WatchParams::default().fields(&format!("metadata.name={name}")).timeout(60);
        let mut watch = api.watch(&wp, "0").await?.boxed();
        let start = Instant::now();
        api.create(&PostParams::default(), &pod(&name)).await?;
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(60), watch.next())
                .await
                .with_context(|| format!("{name} not Running within 60 s"))?
                .context("watch ended")??;
            if let WatchEvent::Added(p) | WatchEvent::Modified(p) = ev {
                if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
                    out.push(start.elapsed());
                    break;
                }
            }
        }
    }
    api.delete_collection(&DeleteParams::default(), &ListParams::default().labels("bench=pods")).await?;
    // Wait until the agent has removed them, so rounds do not overlap.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !api.list(&ListParams::default().labels("bench=pods")).await?.items.is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "bench pods were not removed within 120 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(out)
}

fn docker_round(round: usize, network: Option<&str>) -> Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(PODS);
    let mut names = Vec::new();
    for i in 0..PODS {
        let name = format!("skiff-bench-raw-{round}-{i}");
        let start = Instant::now();
        let mut args = vec!["run", "-d"];
        if let Some(n) = network {
            args.extend(["--network", n]);
        }
        let status = Command::new("docker")
            .args(&args)
            .args(["--name", &name, IMAGE, "sleep", "3600"])
            .stdout(Stdio::null())
            .status()?;
        anyhow::ensure!(status.success(), "docker run failed");
        out.push(start.elapsed());
        names.push(name);
    }
    Command::new("docker").args(["rm", "-f"]).args(&names).stdout(Stdio::null()).status()?;
    Ok(out)
}

fn main() -> Result<()> {
    let c = Control::start()?;
    let _agent = Agent::start(&c, 9, &[])?;
    let rt = tokio::runtime::Runtime::new()?;
    let client = rt.block_on(c.client())?;
    let api: Api<Pod> = Api::namespaced(client, "default");
    // The node must be up before the first measurement (podCIDR, bridge, images present).
    rt.block_on(async {
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(api.clone().into_client());
        let deadline = Instant::now() + Duration::from_secs(60);
        while nodes.get_opt("skiff-test-9").await?.is_none() {
            anyhow::ensure!(Instant::now() < deadline, "agent did not register");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        anyhow::Ok(())
    })?;
    let (mut sk50, mut sk99, mut raw50, mut raw99, mut none50, mut none99) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        let mut raw = docker_round(round, None)?;
        let mut none = docker_round(round, Some("none"))?;
        let mut sk = rt.block_on(skiff_round(&api, round))?;
        raw.sort();
        none.sort();
        sk.sort();
        eprintln!(
            "round {round}: skiff p50 {:.0} ms p99 {:.0} ms; docker run p50 {:.0} ms p99 {:.0} ms; --network none p50 {:.0} ms p99 {:.0} ms",
            percentile(&sk, 0.5),
            percentile(&sk, 0.99),
            percentile(&raw, 0.5),
            percentile(&raw, 0.99),
            percentile(&none, 0.5),
            percentile(&none, 0.99)
        );
        sk50.push(percentile(&sk, 0.5));
        sk99.push(percentile(&sk, 0.99));
        raw50.push(percentile(&raw, 0.5));
        raw99.push(percentile(&raw, 0.99));
        none50.push(percentile(&none, 0.5));
        none99.push(percentile(&none, 0.99));
    }
    let (s50, s99, r50, r99) = (median(sk50), median(sk99), median(raw50), median(raw99));
    let (n50, n99) = (median(none50), median(none99));
    println!("| {PODS} pods, one at a time | p50 | p99 |");
    println!("|---|---|---|");
    println!("| skiff: create → Running | {s50:.0} ms | {s99:.0} ms |");
    println!("| raw `docker run -d` (default bridge network) | {r50:.0} ms | {r99:.0} ms |");
    println!("| ratio | {:.2}× | {:.2}× |", s50 / r50, s99 / r99);
    println!("| raw `docker run -d --network none` | {n50:.0} ms | {n99:.0} ms |");
    println!("| ratio | {:.2}× | {:.2}× |", s50 / n50, s99 / n99);
    println!(
        "\nTargets: p99 ≤ 2000 ms ({}), ≤ 1.5× docker run at p50 ({}) and at p99 ({}).",
        if s99 <= 2000.0 { "met" } else { "missed" },
        if s50 / r50 <= 1.5 { "met" } else { "missed" },
        if s99 / r99 <= 1.5 { "met" } else { "missed" }
    );
    Ok(())
}
