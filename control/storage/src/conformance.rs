//! The behavioural contract of [`Store`], written once and run against every backend.
//!
//! Both backends must be indistinguishable to the API server, so the contract is checked by the
//! same code for each: every check is a generic async function over `Arc<dyn Store>` that returns
//! an error describing the first violation (instead of panicking, so a caller can run them all and
//! report every failure). Each check works under its own key prefix and only assumes it is alone
//! under that prefix, so they can share one store — except [`compaction`], which compacts the whole
//! store and therefore runs last in [`run_all`].
//!
//! Also here: [`EtcdProcess`], a throw-away etcd server on loopback used by this crate's tests and
//! reusable by benchmarks. Compiled only with the `conformance` feature (or in this crate's tests).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::{Event, EventKind, KeyValue, Revision, Store, StoreError};

type Check = fn(Arc<dyn Store>, String) -> futures::future::BoxFuture<'static, anyhow::Result<()>>;

/// Every check, in the order [`run_all`] runs them (compaction last: it affects the whole store).
pub const CHECKS: &[(&str, Check)] = &[
    ("revisions_strictly_increase", |s, p| Box::pin(revisions_strictly_increase(s, p))),
    ("create_twice_is_already_exists", |s, p| Box::pin(create_twice_is_already_exists(s, p))),
    ("update_is_compare_and_swap", |s, p| Box::pin(update_is_compare_and_swap(s, p))),
    ("delete_is_compare_and_swap", |s, p| Box::pin(delete_is_compare_and_swap(s, p))),
    ("list_is_sorted_and_prefix_exact", |s, p| Box::pin(list_is_sorted_and_prefix_exact(s, p))),
    ("list_at_past_revision", |s, p| Box::pin(list_at_past_revision(s, p))),
    ("watch_replays_then_streams_live", |s, p| Box::pin(watch_replays_then_streams_live(s, p))),
    ("watch_from_now_sees_only_new_events", |s, p| Box::pin(watch_from_now_sees_only_new_events(s, p))),
    ("slow_watcher_misses_nothing", |s, p| Box::pin(slow_watcher_misses_nothing(s, p))),
    ("concurrent_creates_get_distinct_revisions", |s, p| Box::pin(concurrent_creates_get_distinct_revisions(s, p))),
    ("concurrent_cas_has_one_winner", |s, p| Box::pin(concurrent_cas_has_one_winner(s, p))),
    ("compaction", |s, p| Box::pin(compaction(s, p))),
];

/// The prefix a check runs under when run by [`run_all`].
pub fn prefix_for(check: &str) -> String {
    format!("/conformance/{check}/")
}

/// Runs every check against `store` and reports all failures together.
pub async fn run_all(store: Arc<dyn Store>) -> anyhow::Result<()> {
    let mut failures = Vec::new();
    for (name, check) in CHECKS {
        let started = Instant::now();
        let result = check(store.clone(), prefix_for(name)).await;
        eprintln!("conformance {name}: {} in {:?}", if result.is_ok() { "ok" } else { "FAILED" }, started.elapsed());
        if let Err(e) = result {
            failures.push(format!("{name}: {e:#}"));
        }
    }
    if failures.is_empty() { Ok(()) } else { bail!("{} check(s) failed:\n{}", failures.len(), failures.join("\n")) }
}

const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

async fn next_event(stream: &mut BoxStream<'static, crate::Result<Event>>) -> anyhow::Result<Event> {
    match tokio::time::timeout(EVENT_TIMEOUT, stream.next()).await {
        Err(_) => bail!("no watch event within {EVENT_TIMEOUT:?}"),
        Ok(None) => bail!("watch stream ended"),
        Ok(Some(Err(e))) => Err(anyhow!(e).context("watch stream error")),
        Ok(Some(Ok(event))) => Ok(event),
    }
}

/// Asserts nothing arrives on the stream for a short while.
async fn expect_quiet(stream: &mut BoxStream<'static, crate::Result<Event>>) -> anyhow::Result<()> {
    match tokio::time::timeout(Duration::from_millis(300), stream.next()).await {
        Err(_) => Ok(()),
        Ok(item) => bail!("expected no event, got {item:?}"),
    }
}

fn expect_event(e: &Event, kind: EventKind, key: &str, value: &[u8], rev: Revision) -> anyhow::Result<()> {
    ensure!(
        e.kind == kind && e.kv.key == key && e.kv.value == value && e.kv.mod_revision == rev,
        "expected {kind:?} {key}={:?} at {rev}, got {e:?}",
        String::from_utf8_lossy(value)
    );
    Ok(())
}

fn keys(items: &[KeyValue]) -> Vec<&str> {
    items.iter().map(|kv| kv.key.as_str()).collect()
}

/// Every write's revision is above every earlier one; `get` and `current_revision` agree with it;
/// `create_revision` survives updates.
pub async fn revisions_strictly_increase(store: Arc<dyn Store>, p: String) -> anyhow::Result<()> {
    let start = store.current_revision().await?;
    let a = format!("{p}a");
    let r1 = store.create(&a, b"1".to_vec()).await?;
    ensure!(r1 > start, "create revision {r1} not above the starting revision {start}");
    let r2 = store.update(&a, b"2".to_vec(), r1).await?;
    ensure!(r2 > r1, "update revision {r2} not above {r1}");
    let r3 = store.create(&format!("{p}b"), b"x".to_vec()).await?;
    ensure!(r3 > r2, "create revision {r3} not above {r2}");
    let (r4, _) = store.delete(&a, Some(r2)).await?;
    ensure!(r4 > r3, "delete revision {r4} not above {r3}");
    let r5 = store.create(&a, b"again".to_vec()).await?;
    ensure!(r5 > r4, "re-create revision {r5} not above {r4}");
    ensure!(store.current_revision().await? >= r5, "current_revision below the last write");

    let kv = store.get(&a).await?.context("re-created key missing")?;
    ensure!(
        kv.create_revision == r5 && kv.mod_revision == r5 && kv.value == b"again",
        "re-created key should start over at {r5}: {kv:?}"
    );
    let r6 = store.update(&a, b"later".to_vec(), r5).await?;
    let kv = store.get(&a).await?.context("updated key missing")?;
    ensure!(kv.create_revision == r5 && kv.mod_revision == r6, "update must keep create_revision: {kv:?}");
    ensure!(store.get(&format!("{p}missing")).await?.is_none(), "get of a missing key returned a value");
    Ok(())
}

pub async fn create_twice_is_already_exists(store: Arc<dyn Store>, p: String) -> anyhow::Result<()> {
    let k = format!("{p}k");
    let r = store.create(&k, b"first".to_vec()).await?;
    match store.create(&k, b"second".to_vec()).await {
        Err(StoreError::AlreadyExists(key)) => {
            ensure!(key == k, "AlreadyExists names {key}, not {k}")
        }
        other => bail!("second create: expected AlreadyExists, got {other:?}"),
    }
    let kv = store.get(&k).await?.context("key vanished")?;
    ensure!(kv.value == b"first" && kv.mod_revision == r, "failed create changed the key: {kv:?}");
    ensure!(store.current_revision().await? >= r, "revision went backwards");
    Ok(())
}

pub async fn update_is_compare_and_swap(store: Arc<dyn Store>, p: String) -> anyhow::Result<()> {
    let k = format!("{p}k");
    let r1 = store.create(&k, b"v1".to_vec()).await?;
    let r2 = store.update(&k, b"v2".to_vec(), r1).await?;
    match store.update(&k, b"stale".to_vec(), r1).await {
        Err(StoreError::Conflict { key, current: Some(cur) }) => {
            ensure!(key == k, "Conflict names {key}");
            ensure!(cur.value == b"v2" && cur.mod_revision == r2, "Conflict must carry the current value: {cur:?}");
        }
        other => bail!("stale update: expected Conflict with current value, got {other:?}"),
    }
    match store.update(&format!("{p}missing"), b"x".to_vec(), r1).await {
        Err(StoreError::NotFound(_)) => {}
        other => bail!("update of a missing key: expected NotFound, got {other:?}"),
    }
    // `expected` 0 must not create a missing key (its mod revision would compare equal to 0).
    match store.update(&format!("{p}missing"), b"x".to_vec(), 0).await {
        Err(StoreError::NotFound(_)) => {}
        other => bail!("update of a missing key with expected 0: expected NotFound, got {other:?}"),
    }
    ensure!(store.get(&format!("{p}missing")).await?.is_none(), "failed update created a key");
    let kv = store.get(&k).await?.context("key vanished")?;
    ensure!(kv.value == b"v2", "stale update changed the value: {kv:?}");
    Ok(())
}

pub async fn delete_is_compare_and_swap(store: Arc<dyn Store>, p: String) -> anyhow::Result<()> {
    let k = format!("{p}k");
    let r1 = store.create(&k, b"v1".to_vec()).await?;
    let r2 = store.update(&k, b"v2".to_vec(), r1).await?;
    match store.delete(&k, Some(r1)).await {
        Err(StoreError::Conflict { current: Some(cur), .. }) => {
            ensure!(cur.value == b"v2" && cur.mod_revision == r2, "Conflict must carry the current value: {cur:?}");
        }
        other => bail!("stale delete: expected Conflict, got {other:?}"),
    }
    ensure!(store.get(&k).await?.is_some(), "stale delete removed the key");
    let (rd, deleted) = store.delete(&k, Some(r2)).await?;
    ensure!(rd > r2, "delete revision {rd} not above {r2}");
    ensure!(
        deleted.key == k && deleted.value == b"v2" && deleted.mod_revision == r2 && deleted.create_revision == r1,
        "delete must return the deleted value as it was: {deleted:?}"
    );
    ensure!(store.get(&k).await?.is_none(), "deleted key still readable");
    match store.delete(&k, None).await {
        Err(StoreError::NotFound(_)) => {}
        other => bail!("delete of a missing key: expected NotFound, got {other:?}"),
    }
    // Unconditional delete.
    let k2 = format!("{p}k2");
    let r = store.create(&k2, b"x".to_vec()).await?;
    let (_, deleted) = store.delete(&k2, None).await?;
    ensure!(deleted.mod_revision == r && deleted.value == b"x", "unconditional delete returned {deleted:?}");
    Ok(())
}

pub async fn list_is_sorted_and_prefix_exact(store: Arc<dyn Store>, p: String) -> anyhow::Result<()> {
    // Written out of order, with neighbours that share the prefix as a plain string.
    let names = [
        "pods/default/c",
        "pods/default2/x",
        "pods/default/a",
        "pods/defaulty",
        "pods/default/b/sub",
        "pods/default/b",
        "pods/defaul",
        "pods/default",
    ];
    let mut last = 0;
    for n in names {
        last = store.create(&format!("{p}{n}"), n.as_bytes().to_vec()).await?;
    }
    let (items, rev) = store.list(&format!("{p}pods/default/"), None).await?;
    let want: Vec<String> = ["pods/default/a", "pods/default/b", "pods/default/b/sub", "pods/default/c"]
        .iter()
        .map(|n| format!("{p}{n}"))
        .collect();
    ensure!(keys(&items) == want, "list {p}pods/default/ returned {:?}", keys(&items));
    for kv in &items {
        ensure!(Some(kv.value.as_slice()) == kv.key.as_bytes().get(p.len()..), "wrong value for {}: {kv:?}", kv.key);
    }
    ensure!(rev >= last, "list revision {rev} is before the last write {last}");

    let (items, _) = store.list(&format!("{p}pods/default"), None).await?;
    ensure!(
        items.len() == 7,
        "list without the trailing slash should match the key itself, default2/ and defaulty too: {:?}",
        keys(&items)
    );
    let sorted = {
        let mut k = keys(&items);
        k.sort();
        k
    };
    ensure!(keys(&items) == sorted, "list is not sorted: {:?}", keys(&items));
    let (items, _) = store.list(&format!("{p}nothing/"), None).await?;
    ensure!(items.is_empty(), "list of an empty prefix returned {:?}", keys(&items));
    // The empty prefix lists everything (at least this check's keys).
    let (items, _) = store.list("", None).await?;
    ensure!(items.iter().filter(|kv| kv.key.starts_with(&p)).count() == names.len(), "list of \"\" misses keys");
    Ok(())
}

pub async fn list_at_past_revision(store: Arc<dyn Store>, p: String) -> anyhow::Result<()> {
    let prefix = format!("{p}in/");
    let (a, b) = (format!("{prefix}a"), format!("{prefix}b"));
    // Writes outside the listed prefix, before and in between, must neither show up nor disturb.
    // (The first one also keeps `r1 - 1` above 0, which would mean "latest".)
    store.create(&format!("{p}out/1"), b"o".to_vec()).await?;
    let r1 = store.create(&a, b"a1".to_vec()).await?;
    let r2 = store.update(&a, b"a2".to_vec(), r1).await?;
    store.create(&format!("{p}out/2"), b"o".to_vec()).await?;
    let r3 = store.create(&b, b"b1".to_vec()).await?;
    let (r4, _) = store.delete(&a, None).await?;
    let r5 = store.create(&a, b"a3".to_vec()).await?;

    let view = |items: Vec<KeyValue>| -> Vec<(String, String, Revision)> {
        items
            .into_iter()
            .map(|kv| {
                let short = kv.key.strip_prefix(&prefix).unwrap_or(&kv.key).to_owned();
                (short, String::from_utf8_lossy(&kv.value).into_owned(), kv.mod_revision)
            })
            .collect()
    };
    let s = |k: &str, v: &str, r: Revision| (k.to_owned(), v.to_owned(), r);
    let cases = [
        (r1 - 1, vec![]),
        (r1, vec![s("a", "a1", r1)]),
        (r2, vec![s("a", "a2", r2)]),
        (r3, vec![s("a", "a2", r2), s("b", "b1", r3)]),
        (r4, vec![s("b", "b1", r3)]),
        (r5, vec![s("a", "a3", r5), s("b", "b1", r3)]),
    ];
    for (at, want) in cases {
        let (items, rev) = store.list(&prefix, Some(at)).await.with_context(|| format!("list at {at}"))?;
        ensure!(rev == at, "list at {at} reports revision {rev}");
        let got = view(items);
        ensure!(got == want, "list at {at}: got {got:?}, want {want:?}");
    }
    let (items, _) = store.list(&prefix, Some(r3)).await?;
    let a_at_r3 = items.iter().find(|kv| kv.key == a).context("a missing at r3")?;
    ensure!(a_at_r3.create_revision == r1, "past state must keep the create revision: {a_at_r3:?}");
    let (items, _) = store.list(&p, Some(r3)).await?;
    ensure!(items.len() == 4, "list of the whole check prefix at {r3}: {:?}", keys(&items));

    let current = store.current_revision().await?;
    match store.list(&prefix, Some(current + 1000)).await {
        Err(StoreError::FutureRevision { requested, .. }) => ensure!(requested == current + 1000),
        other => bail!("list in the future: expected FutureRevision, got {other:?}"),
    }
    Ok(())
}

pub async fn watch_replays_then_streams_live(store: Arc<dyn Store>, p: String) -> anyhow::Result<()> {
    let (a, b) = (format!("{p}w/a"), format!("{p}w/b"));
    let before = store.current_revision().await?;
    let r1 = store.create(&a, b"a1".to_vec()).await?;
    store.create(&format!("{p}other"), b"not watched".to_vec()).await?;
    let r2 = store.update(&a, b"a2".to_vec(), r1).await?;
    let r3 = store.create(&b, b"b1".to_vec()).await?;

    let mut w = store.watch(&format!("{p}w/"), before).await?;
    // Replay.
    let e = next_event(&mut w).await?;
    expect_event(&e, EventKind::Put, &a, b"a1", r1)?;
    ensure!(e.prev.is_none() && e.kv.create_revision == r1, "create event must have no prev: {e:?}");
    let e = next_event(&mut w).await?;
    expect_event(&e, EventKind::Put, &a, b"a2", r2)?;
    let prev = e.prev.as_ref().context("update event without prev")?;
    ensure!(prev.value == b"a1" && prev.mod_revision == r1, "update prev: {prev:?}");
    ensure!(e.kv.create_revision == r1, "update event create_revision: {e:?}");
    expect_event(&next_event(&mut w).await?, EventKind::Put, &b, b"b1", r3)?;

    // Live.
    let r4 = store.update(&b, b"b2".to_vec(), r3).await?;
    store.create(&format!("{p}other2"), b"not watched".to_vec()).await?;
    let (r5, _) = store.delete(&a, Some(r2)).await?;
    let e = next_event(&mut w).await?;
    expect_event(&e, EventKind::Put, &b, b"b2", r4)?;
    ensure!(e.prev.as_ref().is_some_and(|p| p.value == b"b1"), "live update prev: {e:?}");
    let e = next_event(&mut w).await?;
    expect_event(&e, EventKind::Delete, &a, b"a2", r5)?;
    let prev = e.prev.as_ref().context("delete event without prev")?;
    ensure!(prev.value == b"a2" && prev.mod_revision == r2 && prev.create_revision == r1, "delete prev: {prev:?}");
    expect_quiet(&mut w).await?;

    // A second watch from the middle of the history sees the same tail.
    let mut w2 = store.watch(&format!("{p}w/"), r2).await?;
    expect_event(&next_event(&mut w2).await?, EventKind::Put, &b, b"b1", r3)?;
    expect_event(&next_event(&mut w2).await?, EventKind::Put, &b, b"b2", r4)?;
    expect_event(&next_event(&mut w2).await?, EventKind::Delete, &a, b"a2", r5)?;
    expect_quiet(&mut w2).await?;
    // A watch of one exact key (a prefix that is a full key).
    let mut w3 = store.watch(&b, before).await?;
    expect_event(&next_event(&mut w3).await?, EventKind::Put, &b, b"b1", r3)?;
    expect_event(&next_event(&mut w3).await?, EventKind::Put, &b, b"b2", r4)?;
    expect_quiet(&mut w3).await?;
    Ok(())
}

pub async fn watch_from_now_sees_only_new_events(store: Arc<dyn Store>, p: String) -> anyhow::Result<()> {
    let k = format!("{p}k");
    let r1 = store.create(&k, b"old".to_vec()).await?;
    let now = store.current_revision().await?;
    let mut w = store.watch(&p, now).await?;
    expect_quiet(&mut w).await?;
    let r2 = store.update(&k, b"new".to_vec(), r1).await?;
    expect_event(&next_event(&mut w).await?, EventKind::Put, &k, b"new", r2)?;
    expect_quiet(&mut w).await?;
    // A watch from a revision not reached yet waits for it.
    let future = store.current_revision().await? + 2;
    let mut wf = store.watch(&p, future).await?;
    let r3 = store.update(&k, b"3".to_vec(), r2).await?;
    let r4 = store.update(&k, b"4".to_vec(), r3).await?;
    let r5 = store.update(&k, b"5".to_vec(), r4).await?;
    // Exactly our writes above `future` arrive (others may have used revisions in between).
    for (rev, value) in [(r3, b"3"), (r4, b"4"), (r5, b"5")] {
        if rev > future {
            expect_event(&next_event(&mut wf).await?, EventKind::Put, &k, value, rev)?;
        }
    }
    expect_quiet(&mut wf).await?;
    Ok(())
}

/// A watcher that does not read while many writes happen must still get every event, in order.
pub async fn slow_watcher_misses_nothing(store: Arc<dyn Store>, p: String) -> anyhow::Result<()> {
    const WRITES: usize = 1500;
    let start = store.current_revision().await?;
    let mut w = store.watch(&p, start).await?;
    // Concurrent writers so this stays quick on backends that fsync every commit.
    let mut tasks = Vec::new();
    for t in 0..10 {
        let store = store.clone();
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..WRITES / 10 {
                revs.push(store.create(&format!("{p}{t}/{i:04}"), vec![b'x'; 64]).await?);
            }
            anyhow::Ok(revs)
        }));
    }
    let mut written = Vec::new();
    for t in tasks {
        written.extend(t.await??);
    }
    written.sort();
    let mut seen = Vec::new();
    for _ in 0..WRITES {
        seen.push(next_event(&mut w).await?.revision());
    }
    ensure!(seen.windows(2).all(|w| w[0] < w[1]), "events out of order");
    ensure!(seen == written, "the watcher's events differ from the writes");
    expect_quiet(&mut w).await?;
    Ok(())
}

pub async fn concurrent_creates_get_distinct_revisions(store: Arc<dyn Store>, p: String) -> anyhow::Result<()> {
    const TASKS: usize = 32;
    const EACH: usize = 10;
    let start = store.current_revision().await?;
    let mut w = store.watch(&p, start).await?;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..EACH {
                let key = format!("{p}{t:02}-{i:02}");
                revs.push((key.clone(), store.create(&key, key.clone().into_bytes()).await?));
            }
            anyhow::Ok(revs)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let distinct: HashSet<Revision> = all.iter().map(|(_, r)| *r).collect();
    ensure!(distinct.len() == TASKS * EACH, "only {} distinct revisions for {} creates", distinct.len(), TASKS * EACH);
    ensure!(all.iter().all(|(_, r)| *r > start), "a revision is not above the starting revision");
    let (items, _) = store.list(&p, None).await?;
    ensure!(items.len() == TASKS * EACH, "list shows {} of {} keys", items.len(), TASKS * EACH);
    for kv in &items {
        let want = all.iter().find(|(k, _)| *k == kv.key).map(|(_, r)| *r);
        ensure!(want == Some(kv.mod_revision), "{} has revision {}, create returned {want:?}", kv.key, kv.mod_revision);
    }
    let mut last = start;
    for _ in 0..TASKS * EACH {
        let e = next_event(&mut w).await?;
        ensure!(e.revision() > last, "watch event {} not after {last}", e.revision());
        last = e.revision();
    }
    Ok(())
}

/// Many writers race to update one key from the same revision: exactly one wins, every loser sees
/// the winner's value.
pub async fn concurrent_cas_has_one_winner(store: Arc<dyn Store>, p: String) -> anyhow::Result<()> {
    let k = format!("{p}k");
    let r0 = store.create(&k, b"start".to_vec()).await?;
    let mut tasks = Vec::new();
    for t in 0..16 {
        let store = store.clone();
        let k = k.clone();
        tasks.push(tokio::spawn(async move { store.update(&k, format!("t{t}").into_bytes(), r0).await }));
    }
    let mut winners = Vec::new();
    let mut losers = Vec::new();
    for t in tasks {
        match t.await? {
            Ok(rev) => winners.push(rev),
            Err(StoreError::Conflict { current: Some(cur), .. }) => losers.push(cur),
            Err(e) => bail!("unexpected error: {e}"),
        }
    }
    ensure!(winners.len() == 1, "{} updates won the same compare-and-swap", winners.len());
    let now = store.get(&k).await?.context("key vanished")?;
    ensure!(now.mod_revision == winners[0], "stored revision is not the winner's");
    ensure!(losers.iter().all(|c| *c == now), "a loser saw something other than the winner's value");
    Ok(())
}

/// Compacts the whole store: must run after every other check sharing the store.
pub async fn compaction(store: Arc<dyn Store>, p: String) -> anyhow::Result<()> {
    let k = format!("{p}k");
    let r1 = store.create(&k, b"1".to_vec()).await?;
    let r2 = store.update(&k, b"2".to_vec(), r1).await?;
    let r3 = store.update(&k, b"3".to_vec(), r2).await?;
    store.compact(r2).await?;
    ensure!(store.compacted_revision().await? == r2, "compacted_revision is not {r2}");

    match store.list(&p, Some(r1)).await {
        Err(StoreError::Compacted { requested, compacted }) => {
            ensure!(
                requested == r1 && compacted == r2,
                "Compacted error fields: requested {requested}, compacted {compacted}"
            )
        }
        other => bail!("list below the compacted revision: expected Compacted, got {other:?}"),
    }
    let (items, _) = store.list(&p, Some(r2)).await.context("list at the compacted revision")?;
    ensure!(items.len() == 1 && items[0].value == b"2", "list at the compacted revision: {items:?}");
    match store.watch(&p, r1).await {
        Err(StoreError::Compacted { compacted, .. }) => {
            ensure!(compacted == r2, "watch Compacted reports {compacted}")
        }
        Err(e) => bail!("watch below the compacted revision: expected Compacted, got {e}"),
        Ok(_) => bail!("watch below the compacted revision: expected Compacted, got a stream"),
    }
    let mut w = store.watch(&p, r2).await.context("watch from the compacted revision")?;
    expect_event(&next_event(&mut w).await?, EventKind::Put, &k, b"3", r3)?;
    let r4 = store.update(&k, b"4".to_vec(), r3).await?;
    expect_event(&next_event(&mut w).await?, EventKind::Put, &k, b"4", r4)?;

    // Compacting to an older revision is a no-op; to the future, an error.
    store.compact(r1).await.context("compacting below the compacted revision must be a no-op")?;
    ensure!(store.compacted_revision().await? == r2, "an older compaction moved the compacted revision");
    let current = store.current_revision().await?;
    match store.compact(current + 100).await {
        Err(StoreError::FutureRevision { .. }) => {}
        other => bail!("compaction in the future: expected FutureRevision, got {other:?}"),
    }
    store.compact(current).await?;
    ensure!(store.compacted_revision().await? == current, "compacted_revision after compacting to current");
    let (items, _) = store.list(&p, Some(current)).await?;
    ensure!(items.len() == 1 && items[0].value == b"4", "state at the compacted revision: {items:?}");
    let (items, _) = store.list(&p, None).await?;
    ensure!(items.len() == 1 && items[0].value == b"4", "latest state after compaction: {items:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// A throw-away etcd server.
// ---------------------------------------------------------------------------------------------

/// An etcd server on free loopback ports with its data in a temporary directory; killed (and its
/// data removed) on drop, also when a test panics.
pub struct EtcdProcess {
    child: Child,
    endpoint: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl EtcdProcess {
    /// The binary: `$SKIFF_ETCD_BIN`, else `/usr/bin/etcd`. Missing is an error, not a skip: the
    /// etcd backend is part of what must be tested.
    pub fn binary() -> anyhow::Result<PathBuf> {
        let bin = std::env::var_os("SKIFF_ETCD_BIN").map_or_else(|| PathBuf::from("/usr/bin/etcd"), PathBuf::from);
        check_binary(&bin)?;
        Ok(bin)
    }

    /// Starts etcd and waits until it answers.
    pub async fn start() -> anyhow::Result<Self> {
        let bin = Self::binary()?;
        let dir = tempfile::tempdir()?;
        let (client_port, peer_port) = (free_port()?, free_port()?);
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = dir.path().join("etcd.log");
        let log_file = std::fs::File::create(&log)?;
        let child = Command::new(&bin)
            .arg("--name")
            .arg("default")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("default={peer}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut etcd = Self { child, endpoint: client, log, _dir: dir };
        etcd.wait_ready().await?;
        Ok(etcd)
    }

    pub fn endpoints(&self) -> Vec<String> {
        vec![self.endpoint.clone()]
    }

    /// The server's log (stdout and stderr), for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("etcd exited with {status} before answering:\n{}", self.log_tail());
            }
            let attempt =
                tokio::time::timeout(Duration::from_secs(2), crate::EtcdStore::connect(&self.endpoints())).await;
            if let Ok(Ok(_)) = attempt {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("etcd did not answer on {} within 30s:\n{}", self.endpoint, self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn check_binary(bin: &Path) -> anyhow::Result<()> {
    ensure!(
        bin.is_file(),
        "etcd binary not found at {} — install it (`apt-get install etcd-server`) or set SKIFF_ETCD_BIN",
        bin.display()
    );
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    // Bind port 0 and release it; etcd binds it right after. The window for another process to
    // take it is tiny on a test machine.
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn missing_etcd_binary_is_a_clear_error() {
        let err = super::check_binary(std::path::Path::new("/nonexistent/etcd")).unwrap_err();
        assert!(err.to_string().contains("etcd binary not found at /nonexistent/etcd"), "{err}");
    }
}
