//! Kubernetes API semantics through kube-rs and raw HTTPS against a real `skiff control`
//! (embedded store, and one run against a real etcd).
//!
//! Every test starts its own API server (killed on drop), without the scheduler and controllers,
//! so tests run in parallel and see no writers but themselves. Where Skiff and Kubernetes would differ, the assertions describe Kubernetes.

use anyhow::{Context, Result, bail, ensure};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ReplicationController, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::core::Status;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use skiff_tests::Control;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

/// Runs `fut` with a deadline so a hung server fails the test instead of hanging it.
async fn within<T>(secs: u64, what: &str, fut: impl std::future::Future<Output = T>) -> Result<T> {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .with_context(|| format!("{what}: no answer within {secs} s"))
}

/// The `Status` of a failed kube-rs call (panics with the error when it is not an API error).
fn status_of<T: std::fmt::Debug>(r: kube::Result<T>) -> Status {
    match r {
        Err(kube::Error::Api(s)) => *s,
        Err(e) => panic!("expected an API error (Status), got transport/other error: {e:?}"),
        Ok(v) => panic!("expected an API error, the request succeeded: {v:?}"),
    }
}

/// A raw request through kube's client (base URL, TLS and token are the client's).
/// Returns the HTTP status code and the body (as JSON, or a JSON string when it is not JSON).
async fn raw(client: &Client, method: &str, path: &str, content_type: &str, body: Vec<u8>) -> Result<(u16, Value)> {
    let (code, _, v) = raw_full(client, method, path, content_type, body).await?;
    Ok((code, v))
}

/// [`raw`] that also returns the response headers.
async fn raw_full(
    client: &Client,
    method: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Result<(u16, http::HeaderMap, Value)> {
    let mut b = http::Request::builder().method(method).uri(path);
    if !content_type.is_empty() {
        b = b.header("content-type", content_type);
    }
    let resp =
        client.send(b.body(kube::client::Body::from(body))?).await.with_context(|| format!("{method} {path}"))?;
    let code = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect_bytes().await?;
    let v =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Ok((code, headers, v))
}

/// A client with the server's CA but no credentials at all.
async fn anonymous_client(c: &Control) -> Result<Client> {
    let kc = kube::config::Kubeconfig::read_from(&c.kubeconfig)?;
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    cfg.auth_info = Default::default();
    Ok(Client::try_from(cfg)?)
}

fn configmap(name: &str, labels: Value, data: Value) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels},
        "data": data,
    }))
    .expect("valid ConfigMap")
}

fn pod(name: &str, node: Option<&str>) -> Pod {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "w"}},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]},
    });
    if let Some(n) = node {
        p["spec"]["nodeName"] = json!(n);
    }
    serde_json::from_value(p).expect("valid Pod")
}

fn rv<K: kube::Resource>(o: &K) -> String {
    o.meta().resource_version.clone().unwrap_or_default()
}

/// name → resourceVersion of every ConfigMap in `ns`, plus the item count.
async fn cm_snapshot(api: &Api<ConfigMap>) -> Result<BTreeMap<String, String>> {
    Ok(api.list(&ListParams::default()).await?.items.iter().map(|o| (o.name_any(), rv(o))).collect())
}

async fn names_of<K>(api: &Api<K>, lp: &ListParams) -> Result<BTreeSet<String>>
where
    K: kube::Resource + Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(api.list(lp).await?.items.iter().map(|o| o.name_any()).collect())
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn label_patch(key: &str, value: Option<&str>) -> Patch<Value> {
    Patch::Merge(json!({"metadata": {"labels": {key: value}}}))
}

/// Drains a raw watch stream into (type, name, resourceVersion) triples until it ends, `want`
/// events arrived, or `secs` passed.
async fn collect_watch<K>(
    stream: impl futures::Stream<Item = kube::Result<WatchEvent<K>>>,
    want: usize,
    secs: u64,
) -> Result<Vec<(String, String, String)>>
where
    K: kube::Resource,
{
    let mut out = Vec::new();
    let mut stream = std::pin::pin!(stream);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while out.len() < want {
        let next = match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) | Ok(None) => break,
            Ok(Some(ev)) => ev?,
        };
        let (ty, obj) = match next {
            WatchEvent::Added(o) => ("ADDED", o),
            WatchEvent::Modified(o) => ("MODIFIED", o),
            WatchEvent::Deleted(o) => ("DELETED", o),
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(s) => bail!("watch ERROR event: {s:?}"),
        };
        out.push((
            ty.to_string(),
            obj.meta().name.clone().unwrap_or_default(),
            obj.meta().resource_version.clone().unwrap_or_default(),
        ));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Core checks, run against both storage backends (see `embedded_backend_core_semantics` and
// `etcd_backend_core_semantics`).
// ---------------------------------------------------------------------------------------------

async fn core_checks(c: &Control) -> Result<()> {
    let client = c.client().await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    // create / get / list
    let created =
        cms.create(&PostParams::default(), &configmap("core", json!({"t": "core"}), json!({"k": "v1"}))).await?;
    let rv1 = rv(&created);
    ensure!(!rv1.is_empty(), "created object has no resourceVersion");
    ensure!(
        created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some(),
        "create did not set uid/creationTimestamp: {created:?}"
    );
    let got = cms.get("core").await?;
    ensure!(
        got.data.as_ref().and_then(|d| d.get("k")).map(String::as_str) == Some("v1") && rv(&got) == rv1,
        "get after create: {got:?}"
    );
    let listed = cms.list(&ListParams::default()).await?;
    ensure!(
        listed.metadata.resource_version.as_deref().is_some_and(|r| !r.is_empty()),
        "list without metadata.resourceVersion"
    );
    ensure!(listed.items.iter().any(|o| o.name_any() == "core"), "list does not contain the created object");

    // watch from the create's resourceVersion sees only the later update and delete, in order
    let stream = cms.watch(&WatchParams::default().fields("metadata.name=core").timeout(20), &rv1).await?;
    let mut upd = got.clone();
    upd.data = Some([("k".to_string(), "v2".to_string())].into());
    let updated = cms.replace("core", &PostParams::default(), &upd).await?;
    let rv2 = rv(&updated);
    ensure!(rv2 != rv1, "update did not change the resourceVersion");
    ensure!(
        cms.get("core").await?.data.unwrap_or_default().get("k").map(String::as_str) == Some("v2"),
        "update not visible in get"
    );

    // stale update → 409 Conflict, object unchanged
    let mut stale = got.clone();
    stale.data = Some([("k".to_string(), "stale".to_string())].into());
    let s = status_of(cms.replace("core", &PostParams::default(), &stale).await);
    ensure!(s.code == 409 && s.reason == "Conflict", "stale update: want 409 Conflict, got {s:?}");
    let after = cms.get("core").await?;
    ensure!(
        rv(&after) == rv2 && after.data.unwrap_or_default().get("k").map(String::as_str) == Some("v2"),
        "stale update changed the object"
    );

    // duplicate create → 409 AlreadyExists, object unchanged
    let s = status_of(cms.create(&PostParams::default(), &configmap("core", json!({}), json!({"k": "dup"}))).await);
    ensure!(s.code == 409 && s.reason == "AlreadyExists", "duplicate create: want 409 AlreadyExists, got {s:?}");
    ensure!(s.message == "configmaps \"core\" already exists", "AlreadyExists message: {:?}", s.message);
    ensure!(rv(&cms.get("core").await?) == rv2, "duplicate create changed the object");

    // delete → 404 afterwards
    cms.delete("core", &DeleteParams::default()).await?;
    let s = status_of(cms.get("core").await);
    ensure!(s.code == 404 && s.reason == "NotFound", "get after delete: {s:?}");

    let events = collect_watch(stream, 2, 10).await?;
    let types: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    ensure!(types == ["MODIFIED", "DELETED"], "watch from rv {rv1}: want [MODIFIED, DELETED], got {events:?}");
    ensure!(events[0].2 == rv2, "MODIFIED event carries rv {} instead of the update's {rv2}", events[0].2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_backend_core_semantics() -> Result<()> {
    let c = Control::start_api_only(&[])?;
    within(60, "core checks (embedded)", core_checks(&c)).await?
}

/// 14. The same checks against `--store etcd` with a real etcd. A missing etcd binary FAILS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_backend_core_semantics() -> Result<()> {
    // Declared first so it is dropped (killed) after skiff.
    let etcd = skiff_storage::conformance::EtcdProcess::start()
        .await
        .context("starting etcd (the etcd backend must be tested; install etcd-server)")?;
    let endpoints = etcd.endpoints().join(",");
    let mut c = Control::start_api_only(&["--store", "etcd", "--etcd-endpoints", &endpoints])?;
    within(60, "core checks (etcd)", core_checks(&c)).await??;

    // The data lives in etcd: an acknowledged create survives a SIGKILL of skiff.
    let client = c.client().await?;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let kept = cms.create(&PostParams::default(), &configmap("kept", json!({}), json!({"x": "1"}))).await?;
    tokio::task::block_in_place(|| c.kill_and_restart())?;
    let cms: Api<ConfigMap> = Api::namespaced(c.client().await?, "default");
    let got = cms.get("kept").await.context("object created before the restart is gone")?;
    assert_eq!(got.metadata.uid, kept.metadata.uid);
    drop(c);
    drop(etcd);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 1. kube-rs watcher sees every change; a raw watch from an old resourceVersion replays them.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_sees_every_change() -> Result<()> {
    let c = Control::start_api_only(&[])?;
    let client = c.client().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let rv0 = pods.list(&ListParams::default()).await?.metadata.resource_version.context("list rv")?;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let w = tokio::spawn(watcher(pods.clone(), watcher::Config::default()).for_each(move |ev| {
        let _ = tx.send(ev);
        futures::future::ready(())
    }));

    // Watcher state, rebuilt on every (re)list as kube's reflector does.
    let mut state: HashMap<String, String> = HashMap::new();
    let mut init_buf: HashMap<String, String> = HashMap::new();
    let mut applied: BTreeSet<String> = BTreeSet::new();
    let mut deleted: BTreeSet<String> = BTreeSet::new();
    let mut inits = 0;
    let mut errors = Vec::new();
    let mut handle = |ev: kube::runtime::watcher::Result<watcher::Event<Pod>>,
                      state: &mut HashMap<String, String>,
                      inits: &mut usize,
                      errors: &mut Vec<String>| match ev {
        Ok(watcher::Event::Init) => init_buf.clear(),
        Ok(watcher::Event::InitApply(p)) => {
            applied.insert(p.name_any());
            init_buf.insert(p.name_any(), rv(&p));
        }
        Ok(watcher::Event::InitDone) => {
            *inits += 1;
            *state = std::mem::take(&mut init_buf);
        }
        Ok(watcher::Event::Apply(p)) => {
            applied.insert(p.name_any());
            state.insert(p.name_any(), rv(&p));
        }
        Ok(watcher::Event::Delete(p)) => {
            deleted.insert(p.name_any());
            state.remove(&p.name_any());
        }
        Err(e) => errors.push(format!("{e:?}")),
    };
    // The watcher's initial list must complete before the changes start.
    within(15, "watcher initial list", async {
        while inits == 0 {
            let ev = rx.recv().await.expect("watcher ended");
            handle(ev, &mut state, &mut inits, &mut errors);
        }
    })
    .await?;

    // 20 creates, 8 label updates, 10 deletes (3 of them of updated pods), concurrently with the
    // watcher. Each op records (type, name, resourceVersion of the response).
    const N: usize = 20;
    let ops: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
    let mutate =
        {
            let pods = pods.clone();
            let ops = ops.clone();
            async move {
                let creates = futures::future::join_all((0..N).map(|i| {
                    let pods = pods.clone();
                    async move { pods.create(&PostParams::default(), &pod(&format!("w-{i:02}"), None)).await }
                }))
                .await;
                for r in creates {
                    let p = r?;
                    ops.lock().unwrap().push(("ADDED".into(), p.name_any(), rv(&p)));
                }
                let updates = futures::future::join_all((0..8).map(|i| {
                    let pods = pods.clone();
                    async move {
                        pods.patch(&format!("w-{i:02}"), &PatchParams::default(), &label_patch("updated", Some("yes")))
                            .await
                    }
                }))
                .await;
                for r in updates {
                    let p = r?;
                    ops.lock().unwrap().push(("MODIFIED".into(), p.name_any(), rv(&p)));
                }
                let deletes =
                    futures::future::join_all((5..15).map(|i| {
                        let pods = pods.clone();
                        async move {
                            (format!("w-{i:02}"), pods.delete(&format!("w-{i:02}"), &DeleteParams::default()).await)
                        }
                    }))
                    .await;
                for (name, r) in deletes {
                    // An immediate pod delete answers with the deleted object at the delete's revision.
                    let p = r?
                        .left()
                        .with_context(|| format!("delete of {name} returned a Status, Kubernetes returns the Pod"))?;
                    ops.lock().unwrap().push(("DELETED".into(), name, rv(&p)));
                }
                anyhow::Ok(())
            }
        };
    let mutator = tokio::spawn(mutate);
    let expected_final: HashMap<String, String> = within(60, "mutations + watcher convergence", async {
        let mut mutator = mutator;
        let mut done = false;
        loop {
            tokio::select! {
                r = &mut mutator, if !done => { r??; done = true; }
                ev = rx.recv() => handle(ev.context("watcher ended")?, &mut state, &mut inits, &mut errors),
                _ = tokio::time::sleep(Duration::from_millis(200)), if done => {}
            }
            if done {
                let list: HashMap<String, String> =
                    pods.list(&ListParams::default()).await?.items.iter().map(|p| (p.name_any(), rv(p))).collect();
                if list == state {
                    return anyhow::Ok(list);
                }
            }
        }
    })
    .await
    .with_context(|| format!("watcher state never matched the list; watcher has {state:?}"))??;
    w.abort();

    ensure!(errors.is_empty(), "watcher errors: {errors:?}");
    ensure!(expected_final.len() == N - 10, "final list has {} pods, want {}", expected_final.len(), N - 10);
    let all: BTreeSet<String> = (0..N).map(|i| format!("w-{i:02}")).collect();
    ensure!(applied == all, "watcher missed creates: {:?}", all.difference(&applied).collect::<Vec<_>>());
    let want_deleted: BTreeSet<String> = (5..15).map(|i| format!("w-{i:02}")).collect();
    ensure!(deleted == want_deleted, "watcher deletes: got {deleted:?}, want {want_deleted:?}");

    // A raw watch from the resourceVersion before any change replays every change, in order.
    let mut ops = ops.lock().unwrap().clone();
    ops.sort_by_key(|o| o.2.parse::<i64>().unwrap_or(i64::MAX));
    let stream = pods.watch(&WatchParams::default().timeout(20), &rv0).await?;
    let events = collect_watch(stream, ops.len(), 15).await?;
    let revs: Vec<i64> = events.iter().map(|e| e.2.parse().unwrap_or(-1)).collect();
    ensure!(revs.windows(2).all(|w| w[0] < w[1]), "replayed events not in resourceVersion order: {events:?}");
    ensure!(events == ops, "replay from rv {rv0}:\n got  {events:?}\n want {ops:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2 + 3. Conflicts
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_update_is_409_conflict_and_changes_nothing() -> Result<()> {
    let c = Control::start_api_only(&[])?;
    let cms: Api<ConfigMap> = Api::namespaced(c.client().await?, "default");
    let v1 = cms.create(&PostParams::default(), &configmap("stale", json!({}), json!({"k": "1"}))).await?;
    let mut next = v1.clone();
    next.data = Some([("k".to_string(), "2".to_string())].into());
    let v2 = cms.replace("stale", &PostParams::default(), &next).await?;

    let mut old = v1.clone();
    old.data = Some([("k".to_string(), "old-writer".to_string())].into());
    let s = status_of(cms.replace("stale", &PostParams::default(), &old).await);
    assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"), "{s:?}");
    assert!(s.message.contains("the object has been modified"), "{:?}", s.message);

    // Also through a merge patch that carries the old resourceVersion as a precondition.
    let s = status_of(
        cms.patch(
            "stale",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"resourceVersion": rv(&v1)}, "data": {"k": "patched"}})),
        )
        .await,
    );
    assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"), "{s:?}");

    let now = cms.get("stale").await?;
    assert_eq!(rv(&now), rv(&v2));
    assert_eq!(now.data.unwrap()["k"], "2");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_create_is_409_already_exists() -> Result<()> {
    let c = Control::start_api_only(&[])?;
    let client = c.client().await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let first = cms.create(&PostParams::default(), &configmap("dup", json!({}), json!({"k": "first"}))).await?;
    let s = status_of(cms.create(&PostParams::default(), &configmap("dup", json!({}), json!({"k": "second"}))).await);
    assert_eq!((s.code, s.reason.as_str()), (409, "AlreadyExists"), "{s:?}");
    assert_eq!(s.message, "configmaps \"dup\" already exists");
    let d = s.details.expect("AlreadyExists has details");
    assert_eq!((d.name.as_str(), d.kind.as_str()), ("dup", "configmaps"));
    let now = cms.get("dup").await?;
    assert_eq!((now.metadata.uid.clone(), rv(&now)), (first.metadata.uid.clone(), rv(&first)));
    assert_eq!(now.data.unwrap()["k"], "first");

    // Cluster-scoped too.
    let nss: Api<Namespace> = Api::all(client);
    let s = status_of(
        nss.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "default"}}))?).await,
    );
    assert_eq!(
        (s.code, s.reason.as_str(), s.message.as_str()),
        (409, "AlreadyExists", "namespaces \"default\" already exists")
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. Bad requests store nothing
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_writes_store_nothing() -> Result<()> {
    let c = Control::start_api_only(&[])?;
    let client = c.client().await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(&PostParams::default(), &configmap("existing", json!({}), json!({"a": "b"}))).await?;
    let path = "/api/v1/namespaces/default/configmaps";
    let before = cm_snapshot(&cms).await?;
    let mut failures = Vec::new();
    let mut check = |what: &str, ok: bool, detail: String| {
        if !ok {
            failures.push(format!("{what}: {detail}"));
        }
    };

    // Malformed JSON → 400 BadRequest
    let (code, body) = raw(
        &client,
        "POST",
        path,
        "application/json",
        br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"broken""#.to_vec(),
    )
    .await?;
    check(
        "malformed JSON",
        code == 400 && body["kind"] == "Status" && body["reason"] == "BadRequest",
        format!("{code} {body}"),
    );

    // > 3 MiB body → 413
    let big = "x".repeat(4 * 1024 * 1024);
    let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "huge"}, "data": {"big": big}});
    match raw_full(&client, "POST", path, "application/json", serde_json::to_vec(&obj)?).await {
        Ok((code, headers, body)) => {
            check(
                "4 MiB body",
                code == 413 && body["code"] == 413 && body["reason"] == "RequestEntityTooLarge",
                format!("{code} {headers:?} {}", body.to_string().chars().take(300).collect::<String>()),
            );
        }
        Err(e) => check("4 MiB body", false, format!("no HTTP response (connection dropped instead of 413): {e:#}")),
    }
    // A fresh client: how the connection is left after a 413 is `oversized_body_413_says_connection_close`'s business.
    let client = c.client().await?;

    // Invalid name → 422 Invalid with a metadata.name cause
    let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Bad_Name"}, "data": {"a": "b"}});
    let (code, body) = raw(&client, "POST", path, "application/json", serde_json::to_vec(&obj)?).await?;
    check(
        "invalid name",
        code == 422
            && body["reason"] == "Invalid"
            && body["details"]["causes"][0]["field"] == "metadata.name"
            && body["message"].as_str().unwrap_or("").starts_with("ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"),
        format!("{code} {body}"),
    );

    // Namespace mismatch → 400
    let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "elsewhere", "namespace": "other"}, "data": {"a": "b"}});
    let (code, body) = raw(&client, "POST", path, "application/json", serde_json::to_vec(&obj)?).await?;
    check("namespace mismatch", code == 400 && body["reason"] == "BadRequest", format!("{code} {body}"));
    // ... also on update.
    let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "existing", "namespace": "other"}, "data": {"a": "changed"}});
    let (code, body) =
        raw(&client, "PUT", &format!("{path}/existing"), "application/json", serde_json::to_vec(&obj)?).await?;
    check("namespace mismatch on update", code == 400 && body["reason"] == "BadRequest", format!("{code} {body}"));

    let after = cm_snapshot(&cms).await?;
    check("nothing stored", before == after, format!("before {before:?}, after {after:?}"));
    let other: Api<ConfigMap> = Api::namespaced(client.clone(), "other");
    match other.list(&ListParams::default()).await {
        Ok(l) => check("nothing stored in `other`", l.items.is_empty(), format!("{:?}", l.items)),
        Err(e) => check("list in `other`", false, format!("{e}")),
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// After a 413 the server has not read the body; Kubernetes (Go net/http) then answers with
/// `Connection: close` (it never drains more than 256 KiB), so keep-alive clients open a new
/// connection instead of reusing one the server is about to close. Without the header, the next
/// request of a kube-rs client intermittently fails with "connection closed before message
/// completed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_413_says_connection_close() -> Result<()> {
    let c = Control::start_api_only(&[])?;
    let client = c.client().await?;
    let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "huge"}, "data": {"big": "x".repeat(4 * 1024 * 1024)}});
    let (code, headers, _) = raw_full(
        &client,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        serde_json::to_vec(&obj)?,
    )
    .await?;
    assert_eq!(code, 413);
    let close =
        headers.get("connection").and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let next = raw(&client, "GET", "/version", "", Vec::new()).await;
    assert!(
        close,
        "413 response without `Connection: close` (headers {headers:?}); the next request on the same client: {:?}",
        next.map(|r| r.0).map_err(|e| format!("{e:#}"))
    );
    assert_eq!(next?.0, 200);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. Authentication
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_requests_are_401_except_version() -> Result<()> {
    let c = Control::start_api_only(&[])?;
    let anon = anonymous_client(&c).await?;
    for path in ["/api/v1/namespaces/default/pods", "/api/v1/namespaces", "/api", "/apis"] {
        let (code, body) = raw(&anon, "GET", path, "", Vec::new()).await?;
        assert_eq!(code, 401, "{path}: {body}");
        assert_eq!(
            (body["kind"].as_str(), body["reason"].as_str(), body["code"].as_i64()),
            (Some("Status"), Some("Unauthorized"), Some(401)),
            "{path}: {body}"
        );
    }
    let (code, _) = raw(
        &anon,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        br#"{"metadata":{"name":"anon"}}"#.to_vec(),
    )
    .await?;
    assert_eq!(code, 401);
    // A wrong token is as good as none.
    let req = http::Request::builder()
        .uri("/api/v1/namespaces")
        .header("authorization", "Bearer not-the-token")
        .body(kube::client::Body::from(Vec::new()))?;
    let resp = anon.send(req).await?;
    assert_eq!(resp.status().as_u16(), 401);

    let (code, v) = raw(&anon, "GET", "/version", "", Vec::new()).await?;
    assert_eq!(code, 200, "{v}");
    assert_eq!((v["major"].as_str(), v["minor"].as_str()), (Some("1"), Some("33")), "{v}");
    let info = anon.apiserver_version().await?;
    assert_eq!(info.minor, "33");

    // The admin token works, and nothing was created anonymously.
    let cms: Api<ConfigMap> = Api::namespaced(c.client().await?, "default");
    assert!(cms.get_opt("anon").await?.is_none());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6. Watch semantics
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_semantics() -> Result<()> {
    let c = Control::start_api_only(&[])?;
    let cms: Api<ConfigMap> = Api::namespaced(c.client().await?, "default");
    for n in ["pre-a", "pre-b", "pre-c"] {
        cms.create(&PostParams::default(), &configmap(n, json!({"app": "x"}), json!({}))).await?;
    }

    // resourceVersion=0: the current state as ADDED events.
    let s = cms.watch(&WatchParams::default().timeout(10), "0").await?;
    let ev = collect_watch(s, 3, 10).await?;
    let got: Vec<(&str, &str)> = ev.iter().map(|e| (e.0.as_str(), e.1.as_str())).collect();
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(sorted, [("ADDED", "pre-a"), ("ADDED", "pre-b"), ("ADDED", "pre-c")], "rv=0 watch");

    // From a resourceVersion: only what happened after it.
    let mark = rv(&cms.patch("pre-b", &PatchParams::default(), &label_patch("seen", Some("1"))).await?);
    let s = cms.watch(&WatchParams::default().timeout(10), &mark).await?;
    let later = cms.create(&PostParams::default(), &configmap("later", json!({"app": "x"}), json!({}))).await?;
    cms.delete("pre-a", &DeleteParams::default()).await?;
    let ev = collect_watch(s, 3, 2).await?;
    let got: Vec<(&str, &str)> = ev.iter().map(|e| (e.0.as_str(), e.1.as_str())).collect();
    assert_eq!(
        got,
        [("ADDED", "later"), ("DELETED", "pre-a")],
        "watch from rv {mark} (must not replay the patch at {mark} or anything earlier)"
    );
    assert_eq!(ev[0].2, rv(&later));

    // timeoutSeconds=1 ends the stream.
    let started = Instant::now();
    let s = cms.watch(&WatchParams::default().timeout(1), &rv(&later)).await?;
    let ended = tokio::time::timeout(Duration::from_secs(8), s.try_collect::<Vec<_>>()).await;
    assert!(ended.is_ok(), "a watch with timeoutSeconds=1 was still open after 8 s");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "watch ended after {:?}, before its 1 s timeout",
        started.elapsed()
    );

    // A label-selected watch turns "label removed" into DELETED and "label added" into ADDED.
    let now_rv = cms.list(&ListParams::default()).await?.metadata.resource_version.unwrap();
    let s = cms.watch(&WatchParams::default().labels("app=x").timeout(10), &now_rv).await?;
    cms.patch("pre-c", &PatchParams::default(), &label_patch("app", None)).await?;
    cms.patch("pre-b", &PatchParams::default(), &label_patch("other", Some("y"))).await?;
    cms.create(&PostParams::default(), &configmap("unrelated", json!({"app": "z"}), json!({}))).await?;
    cms.patch("unrelated", &PatchParams::default(), &label_patch("app", Some("x"))).await?;
    let ev = collect_watch(s, 3, 5).await?;
    let got: Vec<(&str, &str)> = ev.iter().map(|e| (e.0.as_str(), e.1.as_str())).collect();
    assert_eq!(got, [("DELETED", "pre-c"), ("MODIFIED", "pre-b"), ("ADDED", "unrelated")]);

    // A field-selected watch (what `kubectl delete` waits with).
    let now_rv = cms.list(&ListParams::default()).await?.metadata.resource_version.unwrap();
    let s = cms.watch(&WatchParams::default().fields("metadata.name=later").timeout(10), &now_rv).await?;
    cms.delete("pre-b", &DeleteParams::default()).await?;
    cms.delete("later", &DeleteParams::default()).await?;
    let ev = collect_watch(s, 2, 2).await?;
    let got: Vec<(&str, &str)> = ev.iter().map(|e| (e.0.as_str(), e.1.as_str())).collect();
    assert_eq!(got, [("DELETED", "later")]);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 7. Pagination
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pagination_with_continue() -> Result<()> {
    let c = Control::start_api_only(&[])?;
    let client = c.client().await?;
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "pages"}}))?).await?;
    let cms: Api<ConfigMap> = Api::namespaced(client, "pages");
    futures::stream::iter(0..25)
        .map(|i| {
            let cms = cms.clone();
            async move {
                cms.create(&PostParams::default(), &configmap(&format!("page-{i:02}"), json!({}), json!({}))).await
            }
        })
        .buffer_unordered(8)
        .try_collect::<Vec<_>>()
        .await?;
    // Objects a controller may have put in the namespace (e.g. kube-root-ca.crt) count too.
    let others: BTreeSet<String> =
        names_of(&cms, &ListParams::default()).await?.into_iter().filter(|n| !n.starts_with("page-")).collect();
    let total = 25 + others.len();

    let p1 = cms.list(&ListParams::default().limit(10)).await?;
    assert_eq!(p1.items.len(), 10);
    assert_eq!(p1.metadata.remaining_item_count, Some(total as i64 - 10), "remainingItemCount on the first page");
    let t1 = p1.metadata.continue_.clone().filter(|c| !c.is_empty()).context("first page has no continue token")?;

    // Changes after the first page do not show in later pages (a consistent snapshot).
    cms.create(&PostParams::default(), &configmap("page-99-late", json!({}), json!({}))).await?;

    let p2 = cms.list(&ListParams::default().limit(10).continue_token(&t1)).await?;
    assert_eq!(p2.items.len(), 10);
    assert_eq!(p2.metadata.remaining_item_count, Some(total as i64 - 20));
    let t2 = p2.metadata.continue_.clone().filter(|c| !c.is_empty()).context("second page has no continue token")?;
    let p3 = cms.list(&ListParams::default().limit(10).continue_token(&t2)).await?;
    assert_eq!(p3.items.len(), total - 20);
    assert!(p3.metadata.continue_.as_deref().unwrap_or("").is_empty(), "last page has a continue token");
    assert_eq!(p3.metadata.remaining_item_count, None);

    let all: Vec<String> = p1.items.iter().chain(&p2.items).chain(&p3.items).map(|o| o.name_any()).collect();
    let distinct: BTreeSet<&String> = all.iter().collect();
    assert_eq!(distinct.len(), total, "pages overlap: {all:?}");
    let want: BTreeSet<String> = (0..25).map(|i| format!("page-{i:02}")).chain(others).collect();
    assert_eq!(all.iter().cloned().collect::<BTreeSet<_>>(), want);

    // A garbage continue token is a 400 (Kubernetes: BadRequest "continue key is not valid").
    let s = status_of(cms.list(&ListParams::default().limit(10).continue_token("not-a-token")).await);
    assert_eq!(s.code, 400, "{s:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 8. Selectors
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_and_field_selectors() -> Result<()> {
    let c = Control::start_api_only(&[])?;
    let client = c.client().await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "sel");
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "sel"}}))?).await?;
    for (n, labels) in [
        ("a", json!({"env": "prod", "tier": "web"})),
        ("b", json!({"env": "dev", "tier": "db"})),
        ("c", json!({"env": "staging"})),
        ("d", json!({})),
    ] {
        cms.create(&PostParams::default(), &configmap(n, labels, json!({}))).await?;
    }
    let cases: &[(&str, &[&str])] = &[
        ("env=prod", &["a"]),
        ("env==prod", &["a"]),
        ("env!=prod", &["b", "c", "d"]),
        ("env in (prod,dev)", &["a", "b"]),
        ("env notin (prod,dev)", &["c", "d"]),
        ("tier", &["a", "b"]),
        ("!tier", &["c", "d"]),
        ("env=prod,tier=web", &["a"]),
        ("env=prod,tier=db", &[]),
        ("env,!tier", &["c"]),
    ];
    let mut wrong = Vec::new();
    for (sel, want) in cases {
        let got = names_of(&cms, &ListParams::default().labels(sel)).await?;
        if got != set(want) {
            wrong.push(format!("labelSelector {sel:?}: got {got:?}, want {want:?}"));
        }
    }
    for (sel, want) in [
        ("metadata.name=b", &["b"][..]),
        ("metadata.name!=b", &["a", "c", "d"][..]),
        ("metadata.namespace=sel", &["a", "b", "c", "d"][..]),
    ] {
        let got = names_of(&cms, &ListParams::default().fields(sel)).await?;
        if got != set(want) {
            wrong.push(format!("fieldSelector {sel:?}: got {got:?}, want {want:?}"));
        }
    }

    // status.phase on pods (phases set through the status subresource).
    let pods: Api<Pod> = Api::namespaced(client.clone(), "sel");
    for n in ["p-pending", "p-running", "p-done"] {
        pods.create(&PostParams::default(), &pod(n, None)).await?;
    }
    for (n, phase) in [("p-running", "Running"), ("p-done", "Succeeded")] {
        pods.patch_status(n, &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": phase}}))).await?;
    }
    for (sel, want) in [
        ("status.phase=Running", &["p-running"][..]),
        ("status.phase!=Pending", &["p-done", "p-running"][..]),
        ("status.phase=Pending", &["p-pending"][..]),
        ("status.phase=Running,metadata.name=p-running", &["p-running"][..]),
    ] {
        let got = names_of(&pods, &ListParams::default().fields(sel)).await?;
        if got != set(want) {
            wrong.push(format!("pods fieldSelector {sel:?}: got {got:?}, want {want:?}"));
        }
    }
    // Label and field selectors together.
    let got = names_of(&pods, &ListParams::default().labels("app=w").fields("status.phase=Succeeded")).await?;
    if got != set(&["p-done"]) {
        wrong.push(format!("pods label+field selector: {got:?}"));
    }

    // Unsupported field selectors and malformed label selectors → 400.
    for (what, r) in [
        ("pods spec.foo", pods.list(&ListParams::default().fields("spec.foo=1")).await.map(|_| ())),
        ("configmaps status.phase", cms.list(&ListParams::default().fields("status.phase=Running")).await.map(|_| ())),
        ("bad label selector", cms.list(&ListParams::default().labels("env in (prod")).await.map(|_| ())),
    ] {
        match r {
            Err(kube::Error::Api(s)) if s.code == 400 && s.reason == "BadRequest" => {}
            other => wrong.push(format!("{what}: want 400 BadRequest, got {other:?}")),
        }
    }
    // Also on watches.
    match cms.watch(&WatchParams::default().fields("data.x=1").timeout(2), "0").await {
        Err(kube::Error::Api(s)) if s.code == 400 => {}
        Err(e) => wrong.push(format!("watch with unsupported field selector: {e:?}")),
        Ok(_) => wrong.push("watch with unsupported field selector was accepted".into()),
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 9. Service IP and NodePort allocation
// ---------------------------------------------------------------------------------------------

fn service(name: &str, spec: Value) -> Service {
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}))
        .expect("valid Service")
}

fn in_service_cidr(ip: &str) -> bool {
    ip.parse::<Ipv4Addr>().is_ok_and(|a| u32::from(a) & 0xfff0_0000 == u32::from(Ipv4Addr::new(10, 96, 0, 0)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_cluster_ip_and_node_port_allocation() -> Result<()> {
    let c = Control::start_api_only(&[])?;
    let svcs: Api<Service> = Api::namespaced(c.client().await?, "default");
    let port = json!([{"port": 80, "protocol": "TCP", "targetPort": 8080}]);
    let a = svcs
        .create(&PostParams::default(), &service("svc-a", json!({"selector": {"app": "a"}, "ports": port})))
        .await?;
    let b = svcs
        .create(&PostParams::default(), &service("svc-b", json!({"selector": {"app": "b"}, "ports": port})))
        .await?;
    let ip_a = a.spec.as_ref().and_then(|s| s.cluster_ip.clone()).context("svc-a has no clusterIP")?;
    let ip_b = b.spec.as_ref().and_then(|s| s.cluster_ip.clone()).context("svc-b has no clusterIP")?;
    assert!(in_service_cidr(&ip_a) && in_service_cidr(&ip_b), "{ip_a} / {ip_b} not in 10.96.0.0/12");
    assert_ne!(ip_a, ip_b);
    let kube_ip = svcs.get("kubernetes").await.ok().and_then(|s| s.spec?.cluster_ip);
    assert!(
        kube_ip.as_deref() != Some(&ip_a) && kube_ip.as_deref() != Some(&ip_b),
        "a service got the kubernetes service's IP"
    );
    assert_eq!(a.spec.as_ref().unwrap().cluster_ips.as_deref(), Some(&[ip_a.clone()][..]), "clusterIPs");

    // Requested: a free IP is granted; an allocated one → 422 "already allocated".
    let fixed = svcs
        .create(&PostParams::default(), &service("svc-fixed", json!({"clusterIP": "10.96.100.100", "ports": port})))
        .await?;
    assert_eq!(fixed.spec.unwrap().cluster_ip.as_deref(), Some("10.96.100.100"));
    let s = status_of(
        svcs.create(&PostParams::default(), &service("svc-taken", json!({"clusterIP": ip_a, "ports": port}))).await,
    );
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"), "{s:?}");
    assert!(s.message.contains("already allocated"), "{:?}", s.message);
    let s = status_of(
        svcs.create(
            &PostParams::default(),
            &service("svc-outside", json!({"clusterIP": "192.168.1.1", "ports": port})),
        )
        .await,
    );
    assert_eq!(s.code, 422, "clusterIP outside the range: {s:?}");

    // NodePorts: allocated in range, distinct; a taken one → 422; out of range → 422.
    let np_port = json!([{"port": 80, "protocol": "TCP"}]);
    let n1 =
        svcs.create(&PostParams::default(), &service("np-1", json!({"type": "NodePort", "ports": np_port}))).await?;
    let n2 =
        svcs.create(&PostParams::default(), &service("np-2", json!({"type": "NodePort", "ports": np_port}))).await?;
    let np = |s: &Service| s.spec.as_ref().and_then(|s| s.ports.as_ref()?.first()?.node_port);
    let (p1, p2) = (np(&n1).context("np-1 has no nodePort")?, np(&n2).context("np-2 has no nodePort")?);
    assert!((30000..=32767).contains(&p1) && (30000..=32767).contains(&p2), "{p1} {p2}");
    assert_ne!(p1, p2);
    let s = status_of(
        svcs.create(
            &PostParams::default(),
            &service(
                "np-taken",
                json!({"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP", "nodePort": p1}]}),
            ),
        )
        .await,
    );
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"), "{s:?}");
    assert!(s.message.contains("already allocated"), "{:?}", s.message);
    assert_eq!(
        s.details.as_ref().and_then(|d| d.causes.first()).map(|c| c.field.as_str()),
        Some("spec.ports[0].nodePort")
    );
    let s = status_of(
        svcs.create(
            &PostParams::default(),
            &service(
                "np-low",
                json!({"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP", "nodePort": 8080}]}),
            ),
        )
        .await,
    );
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"), "{s:?}");
    assert!(s.message.contains("valid range"), "{:?}", s.message);
    // A free, in-range, requested one is granted.
    let free = (30000..=32767).find(|p| *p != p1 && *p != p2).unwrap();
    let n3 = svcs
        .create(
            &PostParams::default(),
            &service("np-3", json!({"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP", "nodePort": free}]})),
        )
        .await?;
    assert_eq!(np(&n3), Some(free));

    // Updates: a clusterIP may not change; a nodePort may not move onto a taken one.
    let s = status_of(
        svcs.patch(
            "svc-b",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"clusterIP": "10.96.200.200", "clusterIPs": ["10.96.200.200"]}})),
        )
        .await,
    );
    assert_eq!(s.code, 422, "{s:?}");
    assert!(s.message.contains("may not change once set"), "{:?}", s.message);
    let s = status_of(
        svcs.patch(
            "np-2",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ports": [{"port": 80, "protocol": "TCP", "nodePort": p1}]}})),
        )
        .await,
    );
    assert_eq!(s.code, 422, "{s:?}");
    assert!(s.message.contains("already allocated"), "{:?}", s.message);

    // None of the refused services exists; deleting a service frees its IP.
    let names = names_of(&svcs, &ListParams::default()).await?;
    for n in ["svc-taken", "svc-outside", "np-taken", "np-low"] {
        assert!(!names.contains(n), "refused service {n} was stored");
    }
    svcs.delete("svc-a", &DeleteParams::default()).await?;
    let reuse =
        svcs.create(&PostParams::default(), &service("svc-reuse", json!({"clusterIP": ip_a, "ports": port}))).await?;
    assert_eq!(reuse.spec.unwrap().cluster_ip, Some(ip_a));
    Ok(())
}

/// A replace without the allocated values keeps them (Kubernetes' patchAllocatedValues in the
/// service REST update, what makes `kubectl replace -f` of the original manifest work).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_replace_keeps_allocated_values() -> Result<()> {
    let c = Control::start_api_only(&[])?;
    let svcs: Api<Service> = Api::namespaced(c.client().await?, "default");
    let np_port = json!([{"port": 80, "protocol": "TCP"}]);
    let np = |s: &Service| s.spec.as_ref().and_then(|s| s.ports.as_ref()?.first()?.node_port);
    let n2 =
        svcs.create(&PostParams::default(), &service("np-2", json!({"type": "NodePort", "ports": np_port}))).await?;
    let p2 = np(&n2).context("no nodePort allocated")?;
    let current = svcs.get("np-2").await?;
    let mut bare = service("np-2", json!({"type": "NodePort", "ports": np_port}));
    bare.metadata.resource_version = current.metadata.resource_version.clone();
    let replaced =
        svcs.replace("np-2", &PostParams::default(), &bare).await.context("PUT of np-2 without clusterIP/nodePort")?;
    assert_eq!(
        replaced.spec.as_ref().and_then(|s| s.cluster_ip.clone()),
        n2.spec.as_ref().and_then(|s| s.cluster_ip.clone())
    );
    assert_eq!(np(&replaced), Some(p2));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 10. Graceful deletion and finalizers
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_delete_and_finalizers() -> Result<()> {
    let c = Control::start_api_only(&[])?;
    let client = c.client().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod("bound", Some("node-a"))).await?;
    let r = pods.delete("bound", &DeleteParams::default()).await?;
    let returned = r.left().context("graceful pod delete must return the Pod")?;
    assert!(returned.metadata.deletion_timestamp.is_some(), "returned pod has no deletionTimestamp");
    let p = pods.get("bound").await.context("a bound pod must stay until its node confirms")?;
    assert!(p.metadata.deletion_timestamp.is_some());
    assert_eq!(p.metadata.deletion_grace_period_seconds, Some(30));
    // Deleting again with the same grace changes nothing.
    let again = pods.delete("bound", &DeleteParams::default()).await?.left().context("pod")?;
    assert_eq!(again.metadata.deletion_grace_period_seconds, Some(30));
    assert!(pods.get_opt("bound").await?.is_some());
    // gracePeriodSeconds=0 removes it.
    pods.delete("bound", &DeleteParams::default().grace_period(0)).await?;
    let s = status_of(pods.get("bound").await);
    assert_eq!((s.code, s.reason.as_str()), (404, "NotFound"));

    // A pod that is not bound to a node is removed at once.
    pods.create(&PostParams::default(), &pod("unbound", None)).await?;
    pods.delete("unbound", &DeleteParams::default()).await?;
    assert!(pods.get_opt("unbound").await?.is_none(), "an unscheduled pod must be deleted immediately");

    // Finalizers hold a ConfigMap until they are removed.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut cm = configmap("held", json!({}), json!({"k": "v"}));
    cm.metadata.finalizers = Some(vec!["example.com/x".into()]);
    cms.create(&PostParams::default(), &cm).await?;
    cms.delete("held", &DeleteParams::default()).await?;
    let held = cms.get("held").await.context("an object with a finalizer must survive delete")?;
    assert!(held.metadata.deletion_timestamp.is_some());
    assert_eq!(held.metadata.finalizers.as_deref(), Some(&["example.com/x".to_string()][..]));
    // Updates that keep the finalizer are allowed; the object stays.
    cms.patch("held", &PatchParams::default(), &Patch::Merge(json!({"data": {"k": "v2"}}))).await?;
    assert!(cms.get_opt("held").await?.is_some());
    cms.patch("held", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}}))).await?;
    let s = status_of(cms.get("held").await);
    assert_eq!(
        (s.code, s.reason.as_str()),
        (404, "NotFound"),
        "removing the last finalizer of a deleting object must delete it"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 11. Subresources
// ---------------------------------------------------------------------------------------------

fn rc(name: &str, replicas: i32) -> ReplicationController {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ReplicationController",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"app": name},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}},
        },
    }))
    .expect("valid RC")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subresources_scale_binding_status_generation() -> Result<()> {
    let c = Control::start_api_only(&[])?;
    let client = c.client().await?;
    let rcs: Api<ReplicationController> = Api::namespaced(client.clone(), "default");
    let created = rcs.create(&PostParams::default(), &rc("web", 2)).await?;
    assert_eq!(created.metadata.generation, Some(1));

    // scale GET
    let scale = rcs.get_scale("web").await?;
    assert_eq!(scale.spec.as_ref().and_then(|s| s.replicas), Some(2));
    assert_eq!(scale.status.as_ref().and_then(|s| s.selector.clone()).as_deref(), Some("app=web"));
    assert_eq!(scale.metadata.name.as_deref(), Some("web"));

    // scale PATCH (what `kubectl scale` sends)
    let scaled =
        rcs.patch_scale("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 5}}))).await?;
    assert_eq!(scaled.spec.and_then(|s| s.replicas), Some(5));
    let now = rcs.get("web").await?;
    assert_eq!(now.spec.as_ref().and_then(|s| s.replicas), Some(5));
    assert_eq!(now.metadata.generation, Some(2), "a spec change through scale bumps generation");
    let s = status_of(
        rcs.patch_scale("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": -1}}))).await,
    );
    assert_eq!(s.code, 422, "{s:?}");

    // generation: metadata-only change keeps it; spec change bumps it.
    let labelled = rcs.patch("web", &PatchParams::default(), &label_patch("team", Some("x"))).await?;
    assert_eq!(labelled.metadata.generation, Some(2), "a label change must not bump generation");
    let bumped =
        rcs.patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"minReadySeconds": 3}}))).await?;
    assert_eq!(bumped.metadata.generation, Some(3));

    // status update ignores spec; main update ignores status.
    let mut st = rcs.get("web").await?;
    st.spec.as_mut().unwrap().replicas = Some(9);
    st.status = Some(serde_json::from_value(json!({"replicas": 4, "observedGeneration": 3}))?);
    let after_status = rcs.replace_status("web", &PostParams::default(), &st).await?;
    assert_eq!(after_status.spec.as_ref().and_then(|s| s.replicas), Some(5), "status update changed spec");
    assert_eq!(after_status.status.as_ref().map(|s| s.replicas), Some(4));
    assert_eq!(after_status.metadata.generation, Some(3), "status update bumped generation");
    let mut main = rcs.get("web").await?;
    main.status = Some(serde_json::from_value(json!({"replicas": 77}))?);
    main.spec.as_mut().unwrap().replicas = Some(6);
    let after_main = rcs.replace("web", &PostParams::default(), &main).await?;
    assert_eq!(after_main.status.as_ref().map(|s| s.replicas), Some(4), "main update changed status");
    assert_eq!(after_main.spec.as_ref().and_then(|s| s.replicas), Some(6));
    assert_eq!(after_main.metadata.generation, Some(4));

    // pods: status update ignores spec changes, main update ignores status changes.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod("st", None)).await?;
    let mut p = pods.get("st").await?;
    p.spec.as_mut().unwrap().containers[0].image = Some("busybox:changed-by-status".into());
    p.status.get_or_insert_with(Default::default).phase = Some("Running".into());
    let p = pods.replace_status("st", &PostParams::default(), &p).await?;
    assert_eq!(p.spec.as_ref().unwrap().containers[0].image.as_deref(), Some("busybox:1.36"));
    assert_eq!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Running"));
    let mut p = pods.get("st").await?;
    p.spec.as_mut().unwrap().containers[0].image = Some("busybox:1.37".into());
    p.status.as_mut().unwrap().phase = Some("Failed".into());
    let p = pods.replace("st", &PostParams::default(), &p).await?;
    assert_eq!(p.spec.as_ref().unwrap().containers[0].image.as_deref(), Some("busybox:1.37"));
    assert_eq!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Running"), "main update changed status.phase");

    // pods/binding: sets nodeName once; a second binding is 409.
    pods.create(&PostParams::default(), &pod("tobind", None)).await?;
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "tobind"}, "target": {"apiVersion": "v1", "kind": "Node", "name": "node-a"}});
    let (code, body) = raw(
        &client,
        "POST",
        "/api/v1/namespaces/default/pods/tobind/binding",
        "application/json",
        serde_json::to_vec(&binding)?,
    )
    .await?;
    assert_eq!(code, 201, "binding: {body}");
    let bound = pods.get("tobind").await?;
    assert_eq!(bound.spec.as_ref().and_then(|s| s.node_name.as_deref()), Some("node-a"));
    let mut second = binding.clone();
    second["target"]["name"] = json!("node-b");
    let (code, body) = raw(
        &client,
        "POST",
        "/api/v1/namespaces/default/pods/tobind/binding",
        "application/json",
        serde_json::to_vec(&second)?,
    )
    .await?;
    assert_eq!((code, body["reason"].as_str()), (409, Some("Conflict")), "second binding: {body}");
    assert_eq!(pods.get("tobind").await?.spec.and_then(|s| s.node_name).as_deref(), Some("node-a"));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 12. Server-side apply
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_creates_updates_and_prunes() -> Result<()> {
    let c = Control::start_api_only(&[])?;
    let cms: Api<ConfigMap> = Api::namespaced(c.client().await?, "default");
    let pp = PatchParams::apply("mgr");
    let v1 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa", "labels": {"a": "1", "b": "2"}}, "data": {"k": "v1", "gone": "soon"}});
    let created = cms.patch("ssa", &pp, &Patch::Apply(&v1)).await?;
    assert_eq!(created.labels().get("a").map(String::as_str), Some("1"));
    assert_eq!(created.labels().get("b").map(String::as_str), Some("2"));
    assert!(created.metadata.uid.is_some(), "apply must create the object");
    let mf = created.metadata.managed_fields.clone().unwrap_or_default();
    assert!(
        mf.iter().any(|m| m.manager.as_deref() == Some("mgr") && m.operation.as_deref() == Some("Apply")),
        "managedFields: {mf:?}"
    );

    // Another manager adds a label with an ordinary patch; the applier does not own it.
    let other = PatchParams { field_manager: Some("other".into()), ..Default::default() };
    cms.patch("ssa", &other, &Patch::Merge(json!({"metadata": {"labels": {"c": "3"}}}))).await?;

    let v2 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa", "labels": {"a": "1"}}, "data": {"k": "v2"}});
    let updated = cms.patch("ssa", &pp, &Patch::Apply(&v2)).await?;
    let labels = updated.labels().clone();
    assert_eq!(labels.get("a").map(String::as_str), Some("1"));
    assert!(!labels.contains_key("b"), "label removed from the applied config must be removed: {labels:?}");
    assert_eq!(
        labels.get("c").map(String::as_str),
        Some("3"),
        "a label owned by another manager must stay: {labels:?}"
    );
    let data = updated.data.clone().unwrap_or_default();
    assert_eq!(data.get("k").map(String::as_str), Some("v2"));
    assert!(!data.contains_key("gone"), "data key removed from the applied config must be removed: {data:?}");
    assert_eq!(updated.metadata.uid, created.metadata.uid);
    // What GET returns agrees.
    let got = cms.get("ssa").await?;
    assert_eq!(got.labels(), updated.labels());
    Ok(())
}

/// A second applier changing a field another applier owns: 409 Conflict without force (and
/// nothing changes); with force it wins. (skiff-patch documents "apply always behaves as
/// force=true" as a known gap.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_conflicts_without_force() -> Result<()> {
    let c = Control::start_api_only(&[])?;
    let cms: Api<ConfigMap> = Api::namespaced(c.client().await?, "default");
    let mine = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"k": "v2"}});
    cms.patch("ssa", &PatchParams::apply("mgr"), &Patch::Apply(&mine)).await?;
    let theirs = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"k": "theirs"}});
    let s = status_of(cms.patch("ssa", &PatchParams::apply("mgr2"), &Patch::Apply(&theirs)).await);
    assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"), "{s:?}");
    assert_eq!(s.message, "Apply failed with 1 conflict: conflict with \"mgr\": .data.k");
    // The Status lists the conflict as a cause, as the API server's does.
    let (code, body) = raw(
        &c.client().await?,
        "PATCH",
        "/api/v1/namespaces/default/configmaps/ssa?fieldManager=mgr2",
        "application/apply-patch+yaml",
        serde_json::to_vec(&theirs)?,
    )
    .await?;
    assert_eq!(code, 409, "{body}");
    assert_eq!(
        body["details"]["causes"],
        json!([{"reason": "FieldManagerConflict", "message": "conflict with \"mgr\"", "field": ".data.k"}]),
        "{body}"
    );
    assert_eq!(cms.get("ssa").await?.data.unwrap_or_default().get("k").map(String::as_str), Some("v2"));
    let forced = cms.patch("ssa", &PatchParams::apply("mgr2").force(), &Patch::Apply(&theirs)).await?;
    assert_eq!(forced.data.unwrap_or_default().get("k").map(String::as_str), Some("theirs"));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 13. Durability through the API
// ---------------------------------------------------------------------------------------------

async fn create_raw(client: &Client, name: &str) -> Result<u16> {
    let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"n": name}});
    Ok(raw(client, "POST", "/api/v1/namespaces/default/configmaps", "application/json", serde_json::to_vec(&obj)?)
        .await?
        .0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_creates_survive_sigkill() -> Result<()> {
    let mut c = Control::start_api_only(&[])?;
    let client = c.client().await?;
    let codes: Vec<(String, u16)> = futures::stream::iter(0..200)
        .map(|i| {
            let client = client.clone();
            async move {
                let name = format!("d1-{i:03}");
                let code = create_raw(&client, &name).await.unwrap_or(0);
                (name, code)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut acked: Vec<String> = codes.iter().filter(|(_, c)| *c == 201).map(|(n, _)| n.clone()).collect();
    assert_eq!(
        acked.len(),
        200,
        "first batch (server up the whole time): {:?}",
        codes.iter().filter(|(_, c)| *c != 201).collect::<Vec<_>>()
    );

    // Second batch, killed mid-way.
    const SECOND: usize = 1000;
    let acked2: Arc<Mutex<Vec<String>>> = Arc::default();
    let batch = {
        let client = client.clone();
        let acked2 = acked2.clone();
        tokio::spawn(async move {
            futures::stream::iter(0..SECOND)
                .for_each_concurrent(8, |i| {
                    let client = client.clone();
                    let acked2 = acked2.clone();
                    async move {
                        let name = format!("d2-{i:04}");
                        if let Ok(201) = create_raw(&client, &name).await {
                            acked2.lock().unwrap().push(name);
                        }
                    }
                })
                .await
        })
    };
    within(60, "second batch to get going", async {
        while acked2.lock().unwrap().len() < 40 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await?;
    tokio::task::block_in_place(|| c.kill_and_restart())?;
    let at_kill = acked2.lock().unwrap().len();
    batch.abort();
    let _ = batch.await;
    assert!(at_kill < SECOND, "the kill came after the whole second batch; nothing was tested mid-way");
    let acked_total2 = acked2.lock().unwrap().len();
    eprintln!("durability: {at_kill} of {SECOND} second-batch creates acknowledged at the kill, {acked_total2} in all");
    acked.extend(acked2.lock().unwrap().iter().cloned());

    let cms: Api<ConfigMap> = Api::namespaced(c.client().await?, "default");
    let stored = names_of(&cms, &ListParams::default()).await?;
    let lost: Vec<&String> = acked.iter().filter(|n| !stored.contains(*n)).collect();
    assert!(lost.is_empty(), "{} acknowledged creates lost after SIGKILL (of {}): {:?}", lost.len(), acked.len(), lost);
    // The objects are whole, not just their keys.
    let one = cms.get("d1-000").await?;
    assert_eq!(one.data.unwrap().get("n").map(String::as_str), Some("d1-000"));
    // And the server still writes.
    cms.create(&PostParams::default(), &configmap("after-restart", json!({}), json!({}))).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 15. Namespaces
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_existence_and_termination() -> Result<()> {
    let c = Control::start_api_only(&[])?;
    let client = c.client().await?;
    let nope: Api<ConfigMap> = Api::namespaced(client.clone(), "nope");
    let s = status_of(nope.create(&PostParams::default(), &configmap("x", json!({}), json!({}))).await);
    assert_eq!(
        (s.code, s.reason.as_str(), s.message.as_str()),
        (404, "NotFound", "namespaces \"nope\" not found"),
        "{s:?}"
    );

    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "doomed"}}))?).await?;
    let in_ns: Api<ConfigMap> = Api::namespaced(client.clone(), "doomed");
    // Content with a finalizer keeps the namespace Terminating even once a namespace controller
    // empties it.
    let mut keep = configmap("keep", json!({}), json!({}));
    keep.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    in_ns.create(&PostParams::default(), &keep).await?;
    assert_eq!(nss.get("doomed").await?.status.and_then(|s| s.phase).as_deref(), Some("Active"));

    nss.delete("doomed", &DeleteParams::default()).await?;
    let ns = nss.get("doomed").await.context("a namespace with content must stay while it terminates")?;
    assert!(ns.metadata.deletion_timestamp.is_some());
    assert_eq!(ns.status.and_then(|s| s.phase).as_deref(), Some("Terminating"));

    let s = status_of(in_ns.create(&PostParams::default(), &configmap("late", json!({}), json!({}))).await);
    assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"), "{s:?}");
    assert!(s.message.contains("because it is being terminated"), "{:?}", s.message);
    assert!(in_ns.get_opt("late").await?.is_none());
    // Release the finalizer so nothing is left half-deleted (the server goes away anyway).
    let _ =
        in_ns.patch("keep", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}}))).await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// What a DELETE answers (store.go finalizeDelete): kinds registered with ReturnDeletedObject
// (pods, services, serviceaccounts, namespaces...) answer with the object; the others
// (configmaps, secrets...) with a `Status` Success naming the deleted object.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_response_bodies() -> Result<()> {
    let c = Control::start_api_only(&[])?;
    let client = c.client().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod("gone", None)).await?;
    let (code, body) = raw(&client, "DELETE", "/api/v1/namespaces/default/pods/gone", "", Vec::new()).await?;
    assert_eq!((code, body["kind"].as_str()), (200, Some("Pod")), "pod delete: {body}");

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm = cms.create(&PostParams::default(), &configmap("gone", json!({}), json!({}))).await?;
    let (code, body) = raw(&client, "DELETE", "/api/v1/namespaces/default/configmaps/gone", "", Vec::new()).await?;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        (
            body["kind"].as_str(),
            body["status"].as_str(),
            body["details"]["name"].as_str(),
            body["details"]["kind"].as_str(),
            body["details"]["uid"].as_str()
        ),
        (Some("Status"), Some("Success"), Some("gone"), Some("configmaps"), cm.metadata.uid.as_deref()),
        "configmap delete must answer a Status Success (Kubernetes: ReturnDeletedObject is false for configmaps); got {body}"
    );
    Ok(())
}

/// Concurrent Service writes: 64 NodePort services created at once all get distinct ClusterIPs
/// and node ports, and of two creates asking for the same ClusterIP exactly one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_service_creates_never_share_an_allocation() -> Result<()> {
    let c = Control::start_api_only(&[])?;
    let svcs: Api<Service> = Api::namespaced(c.client().await?, "default");
    let port = json!([{"port": 80, "protocol": "TCP", "targetPort": 8080}]);
    let creates = (0..64).map(|i| {
        let svcs = svcs.clone();
        let s = service(&format!("np-{i}"), json!({"type": "NodePort", "ports": port}));
        async move { svcs.create(&PostParams::default(), &s).await }
    });
    let made = futures::future::join_all(creates).await;
    let mut ips = std::collections::HashSet::new();
    let mut node_ports = std::collections::HashSet::new();
    for s in made {
        let spec = s?.spec.context("spec")?;
        assert!(ips.insert(spec.cluster_ip.context("clusterIP")?), "a ClusterIP was handed out twice");
        let np = spec.ports.context("ports")?[0].node_port.context("nodePort")?;
        assert!(node_ports.insert(np), "nodePort {np} was handed out twice");
    }
    let same = |name: &str| {
        let svcs = svcs.clone();
        let s = service(name, json!({"clusterIP": "10.96.200.200", "ports": port}));
        async move { svcs.create(&PostParams::default(), &s).await }
    };
    let (x, y) = futures::join!(same("want-ip-1"), same("want-ip-2"));
    assert_eq!([x.is_ok(), y.is_ok()].iter().filter(|ok| **ok).count(), 1, "{x:?} / {y:?}");
    Ok(())
}
