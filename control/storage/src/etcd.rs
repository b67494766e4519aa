//! The etcd backend, for when one machine is outgrown (or to run against an existing etcd).
//!
//! This module owns the translation of the [`Store`] contract onto etcd v3 requests, so that the
//! API server sees exactly the behaviour of the embedded backend:
//!
//! * `create` is a transaction `create_revision(key) == 0 → put`; `update` and `delete` are
//!   transactions on `mod_revision(key) == expected` (plus `create_revision(key) > 0`, because a
//!   missing key has `mod_revision` 0 and `update(k, v, 0)` must not create it) whose `else`
//!   branch reads the key, so a failed compare-and-swap reports the current value in the same
//!   round trip.
//! * `list` is a range over the prefix at a revision, fetched in pages pinned to the revision of
//!   the first page, so huge lists neither exceed gRPC message limits nor mix revisions.
//! * `watch` is an etcd watch with `start_revision = after + 1` and `prev_kv`, so delete events
//!   carry the deleted value like the embedded backend's.
//! * etcd's textual errors ("required revision has been compacted", "required revision is a
//!   future revision") become [`StoreError::Compacted`] / [`StoreError::FutureRevision`].
//!
//! **Compacted revision.** etcd does not expose it. The store remembers the highest compaction it
//! issued or saw in a watch response (`compact_revision`). `compacted_revision()` checks that
//! value with one count-only range at that revision; if someone else compacted further, it finds
//! the exact boundary by binary search with count-only ranges (a range at `r` fails exactly when
//! `r` is below the compacted revision), O(log current) round trips, and remembers the result.
//! A compaction to revision 1 is indistinguishable from none (it discards nothing) and reads as 0.
//!
//! **Revisions** are etcd's own: a fresh etcd is already at revision 1, so its first write gets 2
//! (the embedded store starts at 0 and its first write gets 1). Nothing may rely on the absolute
//! numbers, only on their order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use anyhow::anyhow;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, KvClient, Txn, TxnOp,
    TxnOpResponse, TxnResponse, WatchClient, WatchOptions, WatchStream,
};
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::{Event, EventKind, KeyValue, Result, Revision, Store, StoreError};

/// Keys per range request when listing.
const LIST_PAGE: i64 = 5000;
/// gRPC response size limit: a page of big objects can exceed tonic's 4 MiB default.
const MAX_MESSAGE: usize = 256 * 1024 * 1024;

/// [`Store`] on an etcd v3 cluster. Keys are used as given (no extra namespace prefix).
pub struct EtcdStore {
    kv: KvClient,
    watch: WatchClient,
    /// Highest compaction known to this handle (issued by it, or reported to one of its watches).
    compacted: Arc<AtomicI64>,
}

enum Kind {
    Compacted,
    Future,
    Other,
}

fn classify(e: &etcd_client::Error) -> Kind {
    if let etcd_client::Error::GRpcStatus(status) = e {
        let msg = status.message();
        if msg.contains("required revision has been compacted") {
            return Kind::Compacted;
        }
        if msg.contains("future revision") {
            return Kind::Future;
        }
    }
    Kind::Other
}

fn backend(e: etcd_client::Error) -> StoreError {
    StoreError::Backend(anyhow!("etcd: {e}"))
}

fn no_header() -> StoreError {
    StoreError::Backend(anyhow!("etcd: response without header"))
}

fn convert(kv: &etcd_client::KeyValue) -> Result<KeyValue> {
    let key = kv.key_str().map_err(|e| StoreError::Backend(anyhow!("etcd: key is not UTF-8: {e}")))?;
    Ok(KeyValue {
        key: key.to_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    })
}

/// `[key, range_end)` covering every key that starts with `prefix`.
fn prefix_range(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    if prefix.is_empty() {
        // etcd's convention for "every key": key "\0", range_end "\0".
        return (vec![0], vec![0]);
    }
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return (prefix.as_bytes().to_vec(), end);
        }
    }
    // Only 0xff bytes (impossible for UTF-8, kept for completeness): "to the end".
    (prefix.as_bytes().to_vec(), vec![0])
}

/// The first response of a transaction whose `else` branch was a single get.
fn else_get(resp: &TxnResponse) -> Result<Option<KeyValue>> {
    match resp.op_responses().into_iter().next() {
        Some(TxnOpResponse::Get(get)) => get.kvs().first().map(convert).transpose(),
        _ => Err(StoreError::Backend(anyhow!("etcd: unexpected transaction response"))),
    }
}

impl EtcdStore {
    /// Connects to the etcd cluster at `endpoints` (`http://host:port` or `host:port`) and checks
    /// that it answers.
    pub async fn connect(endpoints: &[String]) -> Result<Self> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(10));
        let client = Client::connect(endpoints, Some(options)).await.map_err(backend)?;
        let store = Self {
            kv: client.kv_client().max_decoding_message_size(MAX_MESSAGE),
            watch: client.watch_client().max_decoding_message_size(MAX_MESSAGE),
            compacted: Arc::new(AtomicI64::new(0)),
        };
        store.current_revision().await?;
        Ok(store)
    }

    fn remember_compacted(&self, revision: Revision) {
        self.compacted.fetch_max(revision, Ordering::SeqCst);
    }

    /// Whether a (count-only) read at `revision` is still possible, i.e. `revision` is not below
    /// the compacted revision. `None` for a revision in the future.
    async fn readable_at(&self, revision: Revision) -> Result<Option<bool>> {
        let opts = GetOptions::new().with_revision(revision).with_count_only();
        match self.kv.clone().get(vec![0u8], Some(opts)).await {
            Ok(_) => Ok(Some(true)),
            Err(e) => match classify(&e) {
                Kind::Compacted => Ok(Some(false)),
                Kind::Future => Ok(None),
                Kind::Other => Err(backend(e)),
            },
        }
    }

    /// The `Compacted` error for a request at `requested`.
    async fn compacted_error(&self, requested: Revision) -> StoreError {
        let compacted = match self.compacted_revision().await {
            Ok(c) => c,
            Err(_) => self.compacted.load(Ordering::SeqCst),
        };
        StoreError::Compacted { requested, compacted }
    }

    async fn future_error(&self, requested: Revision) -> StoreError {
        match self.current_revision().await {
            Ok(current) => StoreError::FutureRevision { requested, current },
            Err(e) => e,
        }
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn current_revision(&self) -> Result<Revision> {
        let opts = GetOptions::new().with_count_only();
        let resp = self.kv.clone().get(vec![0u8], Some(opts)).await.map_err(backend)?;
        Ok(resp.header().ok_or_else(no_header)?.revision())
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let resp = self.kv.clone().get(key, None).await.map_err(backend)?;
        resp.kvs().first().map(convert).transpose()
    }

    async fn list(&self, prefix: &str, revision: Option<Revision>) -> Result<(Vec<KeyValue>, Revision)> {
        let (mut start, end) = prefix_range(prefix);
        let mut at = revision.filter(|r| *r > 0);
        let mut items = Vec::new();
        loop {
            let mut opts = GetOptions::new().with_range(end.clone()).with_limit(LIST_PAGE);
            if let Some(r) = at {
                opts = opts.with_revision(r);
            }
            let resp = match self.kv.clone().get(start.clone(), Some(opts)).await {
                Ok(resp) => resp,
                Err(e) => {
                    let requested = at.unwrap_or(0);
                    return Err(match classify(&e) {
                        Kind::Compacted => self.compacted_error(requested).await,
                        Kind::Future => self.future_error(requested).await,
                        Kind::Other => backend(e),
                    });
                }
            };
            // Later pages are pinned to the revision of the first one.
            let revision = *at.get_or_insert(resp.header().ok_or_else(no_header)?.revision());
            for kv in resp.kvs() {
                items.push(convert(kv)?);
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => return Ok((items, revision)),
            }
        }
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision> {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, None)]);
        let resp = self.kv.clone().txn(txn).await.map_err(backend)?;
        if !resp.succeeded() {
            return Err(StoreError::AlreadyExists(key.to_owned()));
        }
        Ok(resp.header().ok_or_else(no_header)?.revision())
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<Revision> {
        let txn = Txn::new()
            .when([
                Compare::create_revision(key, CompareOp::Greater, 0),
                Compare::mod_revision(key, CompareOp::Equal, expected),
            ])
            .and_then([TxnOp::put(key, value, None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.kv.clone().txn(txn).await.map_err(backend)?;
        if resp.succeeded() {
            return Ok(resp.header().ok_or_else(no_header)?.revision());
        }
        match else_get(&resp)? {
            None => Err(StoreError::NotFound(key.to_owned())),
            Some(current) => Err(StoreError::Conflict { key: key.to_owned(), current: Some(current) }),
        }
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(Revision, KeyValue)> {
        let mut compares = vec![Compare::create_revision(key, CompareOp::Greater, 0)];
        if let Some(expected) = expected {
            compares.push(Compare::mod_revision(key, CompareOp::Equal, expected));
        }
        let txn = Txn::new()
            .when(compares)
            .and_then([TxnOp::delete(key, Some(DeleteOptions::new().with_prev_key()))])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.kv.clone().txn(txn).await.map_err(backend)?;
        if !resp.succeeded() {
            return match else_get(&resp)? {
                None => Err(StoreError::NotFound(key.to_owned())),
                Some(current) => Err(StoreError::Conflict { key: key.to_owned(), current: Some(current) }),
            };
        }
        let revision = resp.header().ok_or_else(no_header)?.revision();
        let prev = match resp.op_responses().into_iter().next() {
            Some(TxnOpResponse::Delete(del)) => del.prev_kvs().first().map(convert).transpose()?,
            _ => None,
        };
        let prev = prev.ok_or_else(|| StoreError::Backend(anyhow!("etcd: delete returned no previous value")))?;
        Ok((revision, prev))
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<BoxStream<'static, Result<Event>>> {
        // etcd reports a compacted start revision only asynchronously, after the watch was
        // created; a count-only range at `after` fails exactly when `after` is below the compacted
        // revision, so check that first to fail the call itself. (A compaction racing this check
        // still surfaces, as a `Compacted` item on the stream.)
        if self.readable_at(after.max(1)).await? == Some(false) {
            return Err(self.compacted_error(after).await);
        }
        let (key, end) = prefix_range(prefix);
        let opts =
            WatchOptions::new().with_range(end).with_start_revision(after.saturating_add(1).max(1)).with_prev_key();
        let stream = self.watch.clone().watch(key, Some(opts)).await.map_err(backend)?;
        let state = EtcdWatch {
            stream,
            pending: VecDeque::new(),
            last: after,
            compacted: self.compacted.clone(),
            terminal: None,
            done: false,
        };
        Ok(futures::stream::unfold(state, |mut w| async move { w.next().await.map(|item| (item, w)) }).boxed())
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        match self.kv.clone().compact(revision, None).await {
            Ok(_) => {
                self.remember_compacted(revision);
                Ok(())
            }
            Err(e) => match classify(&e) {
                // Already compacted at or beyond `revision`: nothing to do, as in the embedded store.
                Kind::Compacted => Ok(()),
                Kind::Future => Err(self.future_error(revision).await),
                Kind::Other => Err(backend(e)),
            },
        }
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        let known = self.compacted.load(Ordering::SeqCst);
        let mut lo = known.max(1);
        if self.readable_at(lo).await? != Some(false) {
            return Ok(known);
        }
        // Compacted beyond what we knew: the answer is the lowest readable revision in (lo, hi].
        let mut hi = self.current_revision().await?;
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.readable_at(mid).await? == Some(false) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        self.remember_compacted(hi);
        Ok(hi)
    }
}

struct EtcdWatch {
    /// Holds the request half too: dropping it would close our side of the gRPC stream.
    stream: WatchStream,
    pending: VecDeque<Event>,
    /// Revision of the last delivered event (or the watch's `after`).
    last: Revision,
    compacted: Arc<AtomicI64>,
    /// Set when the watch ended: delivered after the pending events, then the stream ends.
    terminal: Option<StoreError>,
    done: bool,
}

impl EtcdWatch {
    async fn next(&mut self) -> Option<Result<Event>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                self.last = event.revision();
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            if let Some(e) = self.terminal.take() {
                self.done = true;
                return Some(Err(e));
            }
            let resp = match self.stream.message().await {
                Ok(Some(resp)) => resp,
                Ok(None) => {
                    self.terminal = Some(StoreError::Backend(anyhow!("etcd closed the watch stream")));
                    continue;
                }
                Err(e) => {
                    self.terminal = Some(backend(e));
                    continue;
                }
            };
            if resp.compact_revision() != 0 {
                let compacted = resp.compact_revision();
                self.compacted.fetch_max(compacted, Ordering::SeqCst);
                self.terminal = Some(StoreError::Compacted { requested: self.last, compacted });
                continue;
            }
            for ev in resp.events() {
                match convert_event(ev) {
                    Ok(event) => self.pending.push_back(event),
                    Err(e) => {
                        // Deliver what came before the bad event, then the error.
                        self.terminal = Some(e);
                        break;
                    }
                }
            }
            if resp.canceled() && self.terminal.is_none() {
                let reason = resp.cancel_reason().to_owned();
                self.terminal = Some(StoreError::Backend(anyhow!("etcd canceled the watch: {reason}")));
            }
        }
    }
}

fn convert_event(ev: &etcd_client::Event) -> Result<Event> {
    let kv = ev.kv().ok_or_else(|| StoreError::Backend(anyhow!("etcd: watch event without kv")))?;
    let prev = ev.prev_kv().map(convert).transpose()?;
    match ev.event_type() {
        EventType::Put => Ok(Event { kind: EventKind::Put, kv: convert(kv)?, prev }),
        EventType::Delete => {
            // etcd's delete event has an empty value and create_revision 0; the contract wants the
            // deleted value, which `prev_kv` carries (absent only if already compacted away).
            let mut deleted = convert(kv)?;
            if let Some(p) = &prev {
                deleted.value = p.value.clone();
                deleted.create_revision = p.create_revision;
            }
            Ok(Event { kind: EventKind::Delete, kv: deleted, prev })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_range;

    #[test]
    fn prefix_ranges() {
        assert_eq!(prefix_range("/registry/pods/"), (b"/registry/pods/".to_vec(), b"/registry/pods0".to_vec()));
        assert_eq!(prefix_range("a"), (b"a".to_vec(), b"b".to_vec()));
        assert_eq!(prefix_range(""), (vec![0], vec![0]));
        // The last char's UTF-8 bytes end in a byte below 0xff, which is the one incremented.
        assert_eq!(prefix_range("ÿ"), ("ÿ".as_bytes().to_vec(), vec![0xc3, 0xc0]));
    }
}
