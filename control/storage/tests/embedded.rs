//! Behaviour specific to the embedded backend: persistence across restarts, durability of
//! acknowledged writes under SIGKILL, lagging watchers, bounded file size under churn.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use skiff_storage::{EmbeddedStore, EventKind, Store, StoreError};

fn open(path: &Path) -> Arc<EmbeddedStore> {
    Arc::new(EmbeddedStore::open(path).expect("open embedded store"))
}

async fn next(
    stream: &mut futures::stream::BoxStream<'static, skiff_storage::Result<skiff_storage::Event>>,
) -> Option<skiff_storage::Result<skiff_storage::Event>> {
    tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("watch item within 10s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_store_starts_at_zero_and_first_write_is_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("s.redb"));
    assert_eq!(store.current_revision().await.unwrap(), 0);
    assert_eq!(store.compacted_revision().await.unwrap(), 0);
    assert_eq!(store.create("/a", b"1".to_vec()).await.unwrap(), 1);
    assert_eq!(store.current_revision().await.unwrap(), 1);
    let (items, rev) = store.list("/", Some(0)).await.unwrap();
    assert_eq!((items.len(), rev), (1, 1), "Some(0) lists the latest state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_data_revisions_history_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let (r1, r2, r3, r4);
    {
        let store = open(&path);
        r1 = store.create("/k/a", b"a1".to_vec()).await.unwrap();
        r2 = store.update("/k/a", b"a2".to_vec(), r1).await.unwrap();
        r3 = store.create("/k/b", b"b1".to_vec()).await.unwrap();
        r4 = store.delete("/k/b", Some(r3)).await.unwrap().0;
        store.compact(r2).await.unwrap();
        // Dropping the store stops the writer and releases the file.
    }
    let store = open(&path);
    assert_eq!(store.current_revision().await.unwrap(), r4);
    assert_eq!(store.compacted_revision().await.unwrap(), r2);
    assert_eq!(store.get("/k/a").await.unwrap().unwrap().value, b"a2");
    assert!(store.get("/k/b").await.unwrap().is_none());
    let (items, _) = store.list("/k/", Some(r3)).await.unwrap();
    assert_eq!(items.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(), ["/k/a", "/k/b"]);
    assert!(
        matches!(store.list("/k/", Some(r1)).await, Err(StoreError::Compacted { requested, compacted }) if requested == r1 && compacted == r2)
    );
    // History replays after the restart.
    let mut w = store.watch("/k/", r2).await.unwrap();
    let e = next(&mut w).await.unwrap().unwrap();
    assert_eq!((&e.kind, e.revision()), (&EventKind::Put, r3));
    let e = next(&mut w).await.unwrap().unwrap();
    assert_eq!((&e.kind, e.revision(), e.kv.value.as_slice()), (&EventKind::Delete, r4, &b"b1"[..]));
    // Revisions continue where they stopped.
    assert_eq!(store.create("/k/c", vec![]).await.unwrap(), r4 + 1);
    assert_eq!(next(&mut w).await.unwrap().unwrap().revision(), r4 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_store_ends_watches_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let store = open(&path);
    let mut w = store.watch("/", 0).await.unwrap();
    drop(store);
    assert!(matches!(next(&mut w).await, Some(Err(StoreError::Backend(_)))));
    assert!(next(&mut w).await.is_none());
    // And the file can be opened again at once.
    drop(open(&path));
}

/// More committed batches than the live broadcast buffer holds while the watcher reads nothing:
/// the watcher must notice it lagged and fill the gap from the history table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_watcher_falls_back_to_history() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("s.redb"));
    let mut w = store.watch("/lag/", 0).await.unwrap();
    // Sequential writes: one commit (one broadcast message) each, well past the buffer (256).
    const N: i64 = 2600;
    for i in 0..N {
        let key = if i % 2 == 0 { format!("/lag/{i:05}") } else { format!("/other/{i:05}") };
        store.create(&key, vec![b'v'; 16]).await.unwrap();
    }
    let mut expected = 1;
    for _ in 0..N / 2 {
        let e = next(&mut w).await.unwrap().unwrap();
        assert_eq!(e.revision(), expected, "gap or duplicate after lagging");
        assert!(e.kv.key.starts_with("/lag/"));
        expected += 2;
    }
    // Then it is live again.
    let r = store.create("/lag/live", vec![]).await.unwrap();
    assert_eq!(next(&mut w).await.unwrap().unwrap().revision(), r);
}

/// A lagging watcher whose history was compacted meanwhile cannot be repaired: it gets a
/// `Compacted` error and the stream ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_watcher_after_compaction_gets_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("s.redb"));
    let mut w = store.watch("/", 0).await.unwrap();
    for i in 0..2100 {
        store.create(&format!("/k{i}"), vec![]).await.unwrap();
    }
    let current = store.current_revision().await.unwrap();
    store.compact(current).await.unwrap();
    match next(&mut w).await {
        Some(Err(StoreError::Compacted { requested: 0, compacted })) => assert_eq!(compacted, current),
        other => panic!("expected Compacted, got {other:?}"),
    }
    assert!(next(&mut w).await.is_none());
}

/// Churn on a fixed set of keys with periodic compaction: the file must stop growing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_size_is_bounded_under_churn() {
    const ROUNDS: usize = 20;
    const WRITERS: usize = 25;
    const CYCLES: usize = 10; // each cycle: create, 2 updates, delete = 4 writes
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let store = open(&path);
    let mut sizes = Vec::new();
    for _round in 0..ROUNDS {
        let mut tasks = Vec::new();
        for t in 0..WRITERS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let key = format!("/churn/{t}");
                for c in 0..CYCLES {
                    let value = vec![(c % 251) as u8; 1024];
                    let r = store.create(&key, value.clone()).await.unwrap();
                    let r = store.update(&key, value.clone(), r).await.unwrap();
                    let r = store.update(&key, value, r).await.unwrap();
                    store.delete(&key, Some(r)).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let current = store.current_revision().await.unwrap();
        store.compact(current).await.unwrap();
        sizes.push(std::fs::metadata(&path).unwrap().len());
    }
    assert_eq!(store.current_revision().await.unwrap(), (ROUNDS * WRITERS * CYCLES * 4) as i64);
    let quarter = ROUNDS / 4;
    // The largest size of the first quarter: redb grows and shrinks its file by whole regions
    // as compaction frees pages (seen: 4.4 MB, then 3.2 MB for most rounds, then 4.6 MB again).
    let (early, last) = (*sizes[..quarter].iter().max().unwrap(), sizes[ROUNDS - 1]);
    eprintln!("file sizes per round: {sizes:?}");
    // Unbounded growth would make the last size about 4x the first quarter's.
    assert!(last <= early + early / 4, "file grew from {early} in the first quarter to {last}: {sizes:?}");
}

const CHILD_ENV: &str = "SKIFF_STORAGE_KILL9_CHILD";

/// Not a test on its own: the writer process of `acknowledged_writes_survive_sigkill`, run by
/// re-executing this test binary with `CHILD_ENV` set. Without it, it does nothing.
#[test]
fn kill9_child_writer() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let store = open(Path::new(&path));
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut tasks = Vec::new();
        // Several concurrent writers, so acknowledged writes come out of shared group commits.
        for t in 0..8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..100_000 {
                    if Instant::now() > deadline {
                        break;
                    }
                    let key = format!("/dur/{t}/{i}");
                    let rev = store.create(&key, key.clone().into_bytes()).await.unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ack {key} {rev}").unwrap();
                    out.flush().unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    // Only reached if the parent never killed us.
    std::process::exit(3);
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "kill9_child_writer", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the writer process");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = Vec::new();
    while acked.len() < 500 {
        let line = lines.next().expect("writer ended before 500 acknowledgements").unwrap();
        if let Some(rest) = line.strip_prefix("ack ") {
            acked.push(rest.to_owned());
        }
    }
    child.kill().expect("SIGKILL the writer"); // Child::kill is SIGKILL on Unix.
    let status = child.wait().unwrap();
    assert!(!status.success(), "writer was not killed: {status}");
    // Everything it printed before dying was acknowledged too.
    for line in lines {
        if let Some(rest) = line.unwrap().strip_prefix("ack ") {
            acked.push(rest.to_owned());
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let store = open(&path);
        let current = store.current_revision().await.unwrap();
        for entry in &acked {
            let (key, rev) = entry.split_once(' ').unwrap();
            let rev: i64 = rev.parse().unwrap();
            let kv = store.get(key).await.unwrap().unwrap_or_else(|| panic!("acknowledged {key} lost after kill -9"));
            assert_eq!((kv.mod_revision, kv.value.as_slice()), (rev, key.as_bytes()));
            assert!(current >= rev);
        }
        eprintln!("{} acknowledged writes survived; store at revision {current}", acked.len());
        // The store is fully usable after recovery.
        assert_eq!(store.create("/after-crash", vec![]).await.unwrap(), current + 1);
    });
}
