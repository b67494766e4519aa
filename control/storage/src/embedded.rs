//! The embedded backend: a single redb file, no external process.
//!
//! This module owns everything that makes a plain B-tree file behave like etcd's MVCC store:
//!
//! * **Tables.** `kv` holds the current value of every live key (with its create and mod
//!   revisions). `history` holds one record per revision — the key, whether it was a put or a
//!   delete, the new value and the previous value — so that past states and the event stream can
//!   be reconstructed. `meta` holds the current and the compacted revision, so both survive a
//!   restart.
//! * **Writes** go through one dedicated writer thread that does *group commit*: it drains every
//!   request queued while the previous commit was syncing, applies them in order inside one redb
//!   write transaction (each successful op gets its own revision, and each compare-and-swap sees
//!   the ops before it in the same batch), commits once with [`redb::Durability::Immediate`] and
//!   only then answers the callers. An acknowledged write is therefore on disk (survives kill -9),
//!   while the fsync cost is shared by everything that arrived during the previous fsync — this is
//!   what lets a single file keep up with etcd under concurrent load.
//! * **Reads** (`get`, `list`, watch catch-up) use redb read transactions on the blocking thread
//!   pool; they never wait for the writer.
//! * **Lists at a past revision** take a snapshot of `kv` and undo, newest first, every history
//!   record above the requested revision (the same answer etcd's MVCC gives). Cost is proportional
//!   to the history since that revision, which compaction bounds.
//! * **Watches** subscribe to a broadcast of committed batches *before* reading the history, then
//!   replay the history, then follow the broadcast, skipping revisions already delivered: no gap,
//!   no duplicate, always in revision order. A watcher that falls behind the broadcast buffer does
//!   not slow the writer down: it notices it lagged and goes back to replaying from the history
//!   table (where every committed event is). Only if the history it still needs has been compacted
//!   meanwhile does the stream end, with a `Compacted` error.
//! * **Compaction** deletes history records at and below the given revision in one write
//!   transaction. redb reuses the freed pages, so under steady churn with periodic compaction the
//!   file stops growing (see the `file_size_is_bounded_under_churn` test).

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak, mpsc};
use std::thread::JoinHandle;

use anyhow::anyhow;
use futures::StreamExt;
use futures::stream::BoxStream;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, oneshot};

use crate::{Event, EventKind, KeyValue, Result, Revision, Store, StoreError};

/// Current value of each live key: `key -> encode_kv(create_revision, mod_revision, value)`.
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// One record per revision: `revision -> encode_record(...)`.
const HISTORY: TableDefinition<i64, &[u8]> = TableDefinition::new("history");
/// Small persistent counters.
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");

const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";
const META_FORMAT: &str = "format";
/// Bumped if the on-disk encoding ever changes, so an old binary refuses a newer file.
const FORMAT_VERSION: i64 = 1;

/// Upper bound on the requests folded into one write transaction: keeps the latency of a single
/// commit (and the size of one broadcast message) bounded under a flood of writers.
const MAX_BATCH: usize = 2048;
/// Committed batches buffered for live watchers before a slow one is declared lagging and sent
/// back to the history table. Small on purpose: a stuck watcher pins up to this many batches in
/// memory, while falling back to the history costs only a few reads.
const BROADCAST_CAPACITY: usize = 256;
/// Keys and values are length-prefixed with 32 bits on disk; far below that, refuse anything that
/// large rather than write a record that cannot be read back.
const MAX_ENTRY_BYTES: usize = 1 << 30;
/// History records read per step when a watcher replays from the history table.
const REPLAY_PAGE: usize = 1024;

fn backend<E>(e: E) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
{
    StoreError::Backend(anyhow::Error::new(e))
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Backend(anyhow!("embedded store: corrupt {what} record"))
}

fn writer_gone() -> StoreError {
    StoreError::Backend(anyhow!("embedded store: writer thread is gone (store closed or failed)"))
}

/// A watcher-facing batch: every event of one commit, contiguous revisions, in order.
type Batch = Arc<[Event]>;

/// State shared by the store handle, the blocking readers and watch streams.
struct Shared {
    db: Database,
    /// Revision of the last committed write (0 if none).
    revision: AtomicI64,
    /// Revision history was compacted to (0 if never).
    compacted: AtomicI64,
}

enum Op {
    Create { key: String, value: Vec<u8> },
    Update { key: String, value: Vec<u8>, expected: Revision },
    Delete { key: String, expected: Option<Revision> },
    Compact { revision: Revision },
}

enum Outcome {
    Written(Revision),
    Deleted(Revision, KeyValue),
    Compacted,
}

struct Request {
    op: Op,
    reply: oneshot::Sender<Result<Outcome>>,
}

/// Durable, embedded [`Store`] on a single redb file. See the module documentation.
///
/// Dropping the store stops its writer thread (after it finished the batch in flight) and closes
/// the file, so the same path can be opened again; open watch streams then end with an error.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    requests: Option<mpsc::Sender<Request>>,
    events: broadcast::Sender<Batch>,
    writer: Option<JoinHandle<()>>,
}

impl EmbeddedStore {
    /// Opens (or creates) the store file at `path` and starts its writer thread.
    ///
    /// Blocking: call it before serving, or from `spawn_blocking`. After a crash redb repairs the
    /// file on open, which reads it entirely.
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path).map_err(backend)?;
        let (revision, compacted) = init_tables(&db)?;
        let shared = Arc::new(Shared { db, revision: AtomicI64::new(revision), compacted: AtomicI64::new(compacted) });
        let (requests, queue) = mpsc::channel();
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let writer = {
            let shared = shared.clone();
            let events = events.clone();
            std::thread::Builder::new()
                .name("skiff-storage-writer".into())
                .spawn(move || writer_loop(&shared, &queue, &events))
                .map_err(|e| StoreError::Backend(anyhow!("spawning the writer thread: {e}")))?
        };
        Ok(Self { shared, requests: Some(requests), events, writer: Some(writer) })
    }

    async fn submit(&self, op: Op) -> Result<Outcome> {
        let (key, value) = match &op {
            Op::Create { key, value } | Op::Update { key, value, .. } => (key.len(), value.len()),
            Op::Delete { key, .. } => (key.len(), 0),
            Op::Compact { .. } => (0, 0),
        };
        if key > MAX_ENTRY_BYTES || value > MAX_ENTRY_BYTES {
            return Err(StoreError::Backend(anyhow!(
                "embedded store: key or value larger than {MAX_ENTRY_BYTES} bytes"
            )));
        }
        let (reply, answer) = oneshot::channel();
        let requests = self.requests.as_ref().ok_or_else(writer_gone)?;
        requests.send(Request { op, reply }).map_err(|_| writer_gone())?;
        answer.await.map_err(|_| writer_gone())?
    }

    /// Runs `f` against the database on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T> + Send + 'static,
    {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || f(&shared.db))
            .await
            .map_err(|e| StoreError::Backend(anyhow!("embedded store read task failed: {e}")))?
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // Closing the queue makes the writer finish what it has and exit; joining it releases its
        // handle on the file so a new `open` of the same path succeeds right away.
        self.requests.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// Creates the tables on first open and reads the persisted counters.
fn init_tables(db: &Database) -> Result<(Revision, Revision)> {
    let mut txn = db.begin_write().map_err(backend)?;
    txn.set_durability(Durability::Immediate).map_err(backend)?;
    let counters = {
        txn.open_table(KV).map_err(backend)?;
        txn.open_table(HISTORY).map_err(backend)?;
        let mut meta = txn.open_table(META).map_err(backend)?;
        let format = meta.get(META_FORMAT).map_err(backend)?.map(|v| v.value());
        match format {
            None => {
                meta.insert(META_FORMAT, FORMAT_VERSION).map_err(backend)?;
            }
            Some(FORMAT_VERSION) => {}
            Some(other) => {
                return Err(StoreError::Backend(anyhow!(
                    "embedded store: file format {other} is not supported (expected {FORMAT_VERSION})"
                )));
            }
        }
        let revision = meta.get(META_REVISION).map_err(backend)?.map_or(0, |v| v.value());
        let compacted = meta.get(META_COMPACTED).map_err(backend)?.map_or(0, |v| v.value());
        (revision, compacted)
    };
    txn.commit().map_err(backend)?;
    Ok(counters)
}

// ---------------------------------------------------------------------------------------------
// Encoding. Hand-rolled and length-prefixed so that decoding a damaged record is an error, never a
// panic, and so the history scan can test the key prefix without decoding the values.
// ---------------------------------------------------------------------------------------------

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // `submit` refuses keys and values anywhere near 4 GiB, so the length fits.
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8).and_then(|b| b.try_into().ok()).map(i64::from_le_bytes)
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.take(4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes)?;
        self.take(len as usize)
    }
    fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }
}

/// `kv` table value: create revision, mod revision, raw value.
fn encode_kv(create: Revision, modified: Revision, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + value.len());
    out.extend_from_slice(&create.to_le_bytes());
    out.extend_from_slice(&modified.to_le_bytes());
    out.extend_from_slice(value);
    out
}

fn decode_kv(key: &str, raw: &[u8]) -> Result<KeyValue> {
    let mut r = Reader(raw);
    let create = r.i64().ok_or_else(|| corrupt("kv"))?;
    let modified = r.i64().ok_or_else(|| corrupt("kv"))?;
    Ok(KeyValue { key: key.to_owned(), value: r.0.to_vec(), create_revision: create, mod_revision: modified })
}

const KIND_PUT: u8 = 1;
const KIND_DELETE: u8 = 2;

/// `history` value: kind, key, create revision of the (new) key, new value (empty for a delete),
/// then the previous state if there was one.
fn encode_record(kind: u8, key: &str, create: Revision, value: &[u8], prev: Option<&KeyValue>) -> Vec<u8> {
    let prev_len = prev.map_or(0, |p| p.value.len() + 20);
    let mut out = Vec::with_capacity(1 + 4 + key.len() + 8 + 4 + value.len() + 1 + prev_len);
    out.push(kind);
    put_bytes(&mut out, key.as_bytes());
    out.extend_from_slice(&create.to_le_bytes());
    put_bytes(&mut out, value);
    match prev {
        None => out.push(0),
        Some(p) => {
            out.push(1);
            out.extend_from_slice(&p.create_revision.to_le_bytes());
            out.extend_from_slice(&p.mod_revision.to_le_bytes());
            put_bytes(&mut out, &p.value);
        }
    }
    out
}

/// Reads only the key of a history record (cheap prefix filter).
fn record_key(raw: &[u8]) -> Option<&str> {
    let mut r = Reader(raw);
    r.u8()?;
    r.str()
}

/// Decodes the history record of `revision` into the event it stands for.
fn decode_record(revision: Revision, raw: &[u8]) -> Result<Event> {
    let bad = || corrupt("history");
    let mut r = Reader(raw);
    let kind = r.u8().ok_or_else(bad)?;
    let key = r.str().ok_or_else(bad)?.to_owned();
    let create = r.i64().ok_or_else(bad)?;
    let value = r.bytes().ok_or_else(bad)?.to_vec();
    let prev = match r.u8().ok_or_else(bad)? {
        0 => None,
        1 => {
            let create_revision = r.i64().ok_or_else(bad)?;
            let mod_revision = r.i64().ok_or_else(bad)?;
            let value = r.bytes().ok_or_else(bad)?.to_vec();
            Some(KeyValue { key: key.clone(), value, create_revision, mod_revision })
        }
        _ => return Err(bad()),
    };
    match kind {
        KIND_PUT => Ok(Event {
            kind: EventKind::Put,
            kv: KeyValue { key, value, create_revision: create, mod_revision: revision },
            prev,
        }),
        KIND_DELETE => {
            // A delete event carries the deleted value, as the trait documents.
            let p = prev.as_ref().ok_or_else(bad)?;
            let kv =
                KeyValue { key, value: p.value.clone(), create_revision: p.create_revision, mod_revision: revision };
            Ok(Event { kind: EventKind::Delete, kv, prev })
        }
        _ => Err(bad()),
    }
}

// ---------------------------------------------------------------------------------------------
// Writer thread (group commit).
// ---------------------------------------------------------------------------------------------

fn writer_loop(shared: &Shared, queue: &mpsc::Receiver<Request>, events: &broadcast::Sender<Batch>) {
    // `recv` fails only once every sender is gone, i.e. the store was dropped.
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(req) => batch.push(req),
                Err(_) => break,
            }
        }
        run_batch(shared, batch, events);
    }
}

fn run_batch(shared: &Shared, batch: Vec<Request>, events: &broadcast::Sender<Batch>) {
    let (ops, replies): (Vec<Op>, Vec<oneshot::Sender<Result<Outcome>>>) =
        batch.into_iter().map(|r| (r.op, r.reply)).unzip();
    match apply_batch(&shared.db, ops) {
        Ok(applied) => {
            // Publish the new counters before anyone hears about the revisions.
            shared.revision.store(applied.revision, Ordering::SeqCst);
            shared.compacted.store(applied.compacted, Ordering::SeqCst);
            if !applied.events.is_empty() {
                // No receivers is fine: nobody is watching.
                let _ = events.send(applied.events.into());
            }
            for (reply, outcome) in replies.into_iter().zip(applied.outcomes) {
                let _ = reply.send(outcome);
            }
        }
        Err(e) => {
            // Nothing of this batch was committed: every caller gets the failure.
            tracing::error!(error = %e, "embedded store: write batch failed");
            let msg = e.to_string();
            for reply in replies {
                let _ = reply.send(Err(StoreError::Backend(anyhow!("embedded store write failed: {msg}"))));
            }
        }
    }
}

struct Applied {
    outcomes: Vec<Result<Outcome>>,
    events: Vec<Event>,
    revision: Revision,
    compacted: Revision,
}

/// Applies `ops` in order in one write transaction and commits it durably. The outer error means
/// the transaction failed as a whole; per-op failures (conflicts etc.) are in `outcomes`.
fn apply_batch(db: &Database, ops: Vec<Op>) -> Result<Applied> {
    let mut txn = db.begin_write().map_err(backend)?;
    txn.set_durability(Durability::Immediate).map_err(backend)?;
    let mut outcomes = Vec::with_capacity(ops.len());
    let mut events = Vec::new();
    let (revision, compacted, dirty) = {
        let mut kv = txn.open_table(KV).map_err(backend)?;
        let mut history = txn.open_table(HISTORY).map_err(backend)?;
        let mut meta = txn.open_table(META).map_err(backend)?;
        let mut revision = meta.get(META_REVISION).map_err(backend)?.map_or(0, |v| v.value());
        let mut compacted = meta.get(META_COMPACTED).map_err(backend)?.map_or(0, |v| v.value());
        let mut dirty = false;
        for op in ops {
            let outcome = match op {
                Op::Create { key, value } => {
                    if kv.get(key.as_str()).map_err(backend)?.is_some() {
                        Err(StoreError::AlreadyExists(key))
                    } else {
                        let rev = revision + 1;
                        kv.insert(key.as_str(), encode_kv(rev, rev, &value).as_slice()).map_err(backend)?;
                        history
                            .insert(rev, encode_record(KIND_PUT, &key, rev, &value, None).as_slice())
                            .map_err(backend)?;
                        revision = rev;
                        dirty = true;
                        let kv = KeyValue { key, value, create_revision: rev, mod_revision: rev };
                        events.push(Event { kind: EventKind::Put, kv, prev: None });
                        Ok(Outcome::Written(rev))
                    }
                }
                Op::Update { key, value, expected } => {
                    let current = match kv.get(key.as_str()).map_err(backend)? {
                        Some(raw) => Some(decode_kv(&key, raw.value())?),
                        None => None,
                    };
                    match current {
                        None => Err(StoreError::NotFound(key)),
                        Some(cur) if cur.mod_revision != expected => {
                            Err(StoreError::Conflict { key, current: Some(cur) })
                        }
                        Some(cur) => {
                            let rev = revision + 1;
                            let create = cur.create_revision;
                            kv.insert(key.as_str(), encode_kv(create, rev, &value).as_slice()).map_err(backend)?;
                            history
                                .insert(rev, encode_record(KIND_PUT, &key, create, &value, Some(&cur)).as_slice())
                                .map_err(backend)?;
                            revision = rev;
                            dirty = true;
                            let kv = KeyValue { key, value, create_revision: create, mod_revision: rev };
                            events.push(Event { kind: EventKind::Put, kv, prev: Some(cur) });
                            Ok(Outcome::Written(rev))
                        }
                    }
                }
                Op::Delete { key, expected } => {
                    let current = match kv.get(key.as_str()).map_err(backend)? {
                        Some(raw) => Some(decode_kv(&key, raw.value())?),
                        None => None,
                    };
                    match current {
                        None => Err(StoreError::NotFound(key)),
                        Some(cur) if expected.is_some_and(|e| e != cur.mod_revision) => {
                            Err(StoreError::Conflict { key, current: Some(cur) })
                        }
                        Some(cur) => {
                            let rev = revision + 1;
                            kv.remove(key.as_str()).map_err(backend)?;
                            history
                                .insert(
                                    rev,
                                    encode_record(KIND_DELETE, &key, cur.create_revision, &[], Some(&cur)).as_slice(),
                                )
                                .map_err(backend)?;
                            revision = rev;
                            dirty = true;
                            let kv = KeyValue {
                                key,
                                value: cur.value.clone(),
                                create_revision: cur.create_revision,
                                mod_revision: rev,
                            };
                            events.push(Event { kind: EventKind::Delete, kv, prev: Some(cur.clone()) });
                            Ok(Outcome::Deleted(rev, cur))
                        }
                    }
                }
                Op::Compact { revision: target } => {
                    if target > revision {
                        Err(StoreError::FutureRevision { requested: target, current: revision })
                    } else if target <= compacted {
                        Ok(Outcome::Compacted)
                    } else {
                        history.retain_in(..=target, |_, _| false).map_err(backend)?;
                        compacted = target;
                        meta.insert(META_COMPACTED, compacted).map_err(backend)?;
                        dirty = true;
                        Ok(Outcome::Compacted)
                    }
                }
            };
            outcomes.push(outcome);
        }
        if dirty {
            meta.insert(META_REVISION, revision).map_err(backend)?;
        }
        (revision, compacted, dirty)
    };
    if dirty {
        txn.commit().map_err(backend)?;
    } else {
        // Only failed compare-and-swaps: nothing to make durable, skip the fsync.
        txn.abort().map_err(backend)?;
    }
    Ok(Applied { outcomes, events, revision, compacted })
}

// ---------------------------------------------------------------------------------------------
// Reads.
// ---------------------------------------------------------------------------------------------

fn read_meta(txn: &redb::ReadTransaction) -> Result<(Revision, Revision)> {
    let meta = txn.open_table(META).map_err(backend)?;
    let revision = meta.get(META_REVISION).map_err(backend)?.map_or(0, |v| v.value());
    let compacted = meta.get(META_COMPACTED).map_err(backend)?.map_or(0, |v| v.value());
    Ok((revision, compacted))
}

fn get_blocking(db: &Database, key: &str) -> Result<Option<KeyValue>> {
    let txn = db.begin_read().map_err(backend)?;
    let kv = txn.open_table(KV).map_err(backend)?;
    match kv.get(key).map_err(backend)? {
        Some(raw) => Ok(Some(decode_kv(key, raw.value())?)),
        None => Ok(None),
    }
}

fn list_blocking(db: &Database, prefix: &str, at: Option<Revision>) -> Result<(Vec<KeyValue>, Revision)> {
    let txn = db.begin_read().map_err(backend)?;
    let (current, compacted) = read_meta(&txn)?;
    let at = match at {
        Some(r) if r > 0 => r,
        _ => current,
    };
    if at > current {
        return Err(StoreError::FutureRevision { requested: at, current });
    }
    if at < compacted {
        return Err(StoreError::Compacted { requested: at, compacted });
    }
    let kv = txn.open_table(KV).map_err(backend)?;
    let mut items = BTreeMap::new();
    for entry in kv.range(prefix..).map_err(backend)? {
        let (k, v) = entry.map_err(backend)?;
        let key = k.value();
        if !key.starts_with(prefix) {
            break;
        }
        items.insert(key.to_owned(), decode_kv(key, v.value())?);
    }
    if at < current {
        // Undo, newest first, every change made after `at`; what remains is the state at `at`.
        let history = txn.open_table(HISTORY).map_err(backend)?;
        for entry in history.range(at + 1..).map_err(backend)?.rev() {
            let (rev, raw) = entry.map_err(backend)?;
            let raw = raw.value();
            let key = record_key(raw).ok_or_else(|| corrupt("history"))?;
            if !key.starts_with(prefix) {
                continue;
            }
            let event = decode_record(rev.value(), raw)?;
            match event.prev {
                Some(prev) => items.insert(prev.key.clone(), prev),
                None => items.remove(&event.kv.key),
            };
        }
    }
    Ok((items.into_values().collect(), at))
}

/// One step of a watch replay: the matching events with revision > `after`, and how far the scan
/// got.
struct Replay {
    events: Vec<Event>,
    /// Every revision up to here has been scanned.
    scanned_to: Revision,
    /// The scan reached the end of the history as of its snapshot.
    complete: bool,
}

fn replay_blocking(db: &Database, prefix: &str, after: Revision) -> Result<Replay> {
    let txn = db.begin_read().map_err(backend)?;
    let (current, compacted) = read_meta(&txn)?;
    if after < compacted {
        return Err(StoreError::Compacted { requested: after, compacted });
    }
    let history = txn.open_table(HISTORY).map_err(backend)?;
    let mut events = Vec::new();
    let mut scanned_to = after.max(0);
    for (scanned, entry) in history.range(after.saturating_add(1)..).map_err(backend)?.enumerate() {
        if scanned == REPLAY_PAGE {
            return Ok(Replay { events, scanned_to, complete: false });
        }
        let (rev, raw) = entry.map_err(backend)?;
        let (rev, raw) = (rev.value(), raw.value());
        scanned_to = rev;
        if record_key(raw).ok_or_else(|| corrupt("history"))?.starts_with(prefix) {
            events.push(decode_record(rev, raw)?);
        }
    }
    Ok(Replay { events, scanned_to: scanned_to.max(current), complete: true })
}

// ---------------------------------------------------------------------------------------------
// Watch streams.
// ---------------------------------------------------------------------------------------------

struct Watch {
    /// Weak, so an open watch does not keep the database file open after the store is dropped.
    shared: Weak<Shared>,
    live: broadcast::Receiver<Batch>,
    prefix: String,
    /// Every event with a revision up to here has been delivered (or did not match the prefix).
    last: Revision,
    pending: VecDeque<Event>,
    replaying: bool,
    done: bool,
}

impl Watch {
    async fn replay_step(&mut self) -> Result<()> {
        let shared = self.shared.upgrade().ok_or_else(writer_gone)?;
        let (prefix, after) = (self.prefix.clone(), self.last);
        let step = tokio::task::spawn_blocking(move || replay_blocking(&shared.db, &prefix, after))
            .await
            .map_err(|e| StoreError::Backend(anyhow!("embedded store watch replay failed: {e}")))??;
        self.pending.extend(step.events);
        self.last = self.last.max(step.scanned_to);
        self.replaying = !step.complete;
        Ok(())
    }

    async fn next(&mut self) -> Option<Result<Event>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            if self.replaying {
                if let Err(e) = self.replay_step().await {
                    self.done = true;
                    return Some(Err(e));
                }
                continue;
            }
            match self.live.recv().await {
                Ok(batch) => {
                    let Some(first) = batch.first() else { continue };
                    if first.revision() > self.last.saturating_add(1) {
                        // Events between `last` and this batch were never seen: fetch them from the
                        // history (this batch is in there too).
                        self.replaying = true;
                        continue;
                    }
                    for event in batch.iter() {
                        if event.revision() <= self.last {
                            continue;
                        }
                        self.last = event.revision();
                        if event.kv.key.starts_with(&self.prefix) {
                            self.pending.push_back(event.clone());
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Too slow for the live buffer. Re-subscribe first (from now on nothing is
                    // missed), then fill the gap from the history table.
                    self.live = self.live.resubscribe();
                    self.replaying = true;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    self.done = true;
                    return Some(Err(StoreError::Backend(anyhow!("embedded store closed"))));
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.shared.revision.load(Ordering::SeqCst))
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = key.to_owned();
        self.read(move |db| get_blocking(db, &key)).await
    }

    async fn list(&self, prefix: &str, revision: Option<Revision>) -> Result<(Vec<KeyValue>, Revision)> {
        let prefix = prefix.to_owned();
        self.read(move |db| list_blocking(db, &prefix, revision)).await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision> {
        match self.submit(Op::Create { key: key.to_owned(), value }).await? {
            Outcome::Written(rev) => Ok(rev),
            _ => Err(StoreError::Backend(anyhow!("embedded store: unexpected outcome for create"))),
        }
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<Revision> {
        match self.submit(Op::Update { key: key.to_owned(), value, expected }).await? {
            Outcome::Written(rev) => Ok(rev),
            _ => Err(StoreError::Backend(anyhow!("embedded store: unexpected outcome for update"))),
        }
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(Revision, KeyValue)> {
        match self.submit(Op::Delete { key: key.to_owned(), expected }).await? {
            Outcome::Deleted(rev, kv) => Ok((rev, kv)),
            _ => Err(StoreError::Backend(anyhow!("embedded store: unexpected outcome for delete"))),
        }
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<BoxStream<'static, Result<Event>>> {
        // Subscribe before the first history read: anything committed after this point arrives
        // live, anything before it is in the history snapshot; overlaps are skipped by revision.
        let mut watch = Watch {
            shared: Arc::downgrade(&self.shared),
            live: self.events.subscribe(),
            prefix: prefix.to_owned(),
            last: after,
            pending: VecDeque::new(),
            replaying: true,
            done: false,
        };
        // The first replay step runs now, so a compacted `after` fails the call itself.
        watch.replay_step().await?;
        Ok(futures::stream::unfold(watch, |mut w| async move { w.next().await.map(|item| (item, w)) }).boxed())
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        match self.submit(Op::Compact { revision }).await? {
            Outcome::Compacted => Ok(()),
            _ => Err(StoreError::Backend(anyhow!("embedded store: unexpected outcome for compact"))),
        }
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        Ok(self.shared.compacted.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let prev = KeyValue { key: "k".into(), value: b"old".to_vec(), create_revision: 3, mod_revision: 5 };
        let raw = encode_record(KIND_PUT, "k", 3, b"new", Some(&prev));
        assert_eq!(record_key(&raw), Some("k"));
        let e = decode_record(7, &raw).unwrap();
        assert_eq!(e.kind, EventKind::Put);
        assert_eq!(e.kv, KeyValue { key: "k".into(), value: b"new".to_vec(), create_revision: 3, mod_revision: 7 });
        assert_eq!(e.prev, Some(prev.clone()));

        let raw = encode_record(KIND_DELETE, "k", 3, &[], Some(&prev));
        let e = decode_record(8, &raw).unwrap();
        assert_eq!(e.kind, EventKind::Delete);
        assert_eq!(e.kv.value, b"old");
        assert_eq!(e.kv.mod_revision, 8);
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        let prev = KeyValue { key: "key".into(), value: b"old".to_vec(), create_revision: 3, mod_revision: 5 };
        let raw = encode_record(KIND_DELETE, "key", 3, b"", Some(&prev));
        for len in 0..raw.len() {
            assert!(decode_record(1, &raw[..len]).is_err(), "truncated to {len}");
        }
        let mut bad = raw.clone();
        bad[0] = 9;
        assert!(decode_record(1, &bad).is_err());
        // A delete without a previous value cannot be turned into an event.
        assert!(decode_record(1, &encode_record(KIND_DELETE, "key", 3, b"", None)).is_err());
        assert!(decode_kv("k", &[1, 2, 3]).is_err());
        assert!(record_key(&[1, 255, 255, 255, 255]).is_none());
    }
}
