//! Watches: a chunked stream of `{"type","object"}` lines served from the watch cache.
//!
//! `resourceVersion` semantics as Kubernetes: unset or "0" start with the current state as
//! ADDED events; N streams every change after N (410 Gone once N left the cache's history);
//! `sendInitialEvents=true` ends the initial state with a bookmark annotated
//! `k8s.io/initial-events-end`; `allowWatchBookmarks` adds periodic bookmarks.

use super::negotiate::{Output, output};
use super::rest::{Selectors, present};
use super::{Query, Shared};
use crate::cache::{CacheEvent, EventType, Obj};
use crate::registry::Kind;
use crate::status::{ApiError, ApiResult};
use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

const BOOKMARK_EVERY: Duration = Duration::from_secs(15);
/// Kubernetes ends watches after a random 30–60 minutes; clients re-watch from their last RV.
const MAX_WATCH: Duration = Duration::from_secs(1800);

pub async fn watch(
    state: &Shared,
    kind: &'static Kind,
    ns: Option<&str>,
    q: &Query,
    accept: &str,
) -> ApiResult<Response> {
    let sel = Selectors::from_query(kind, q)?;
    let prefix = kind.storage_prefix(ns);
    let rv = q.get("resourceVersion").unwrap_or("").to_string();
    let send_initial = q.flag("sendInitialEvents") && q.get("sendInitialEvents").is_some();
    let bookmarks = q.flag("allowWatchBookmarks") && q.get("allowWatchBookmarks").is_some();
    let timeout =
        q.int("timeoutSeconds")?.map(|s| Duration::from_secs(s.max(0) as u64)).unwrap_or(MAX_WATCH).min(MAX_WATCH);
    let table = output(accept) == Output::Table;

    let (initial, mut rx, start_rev): (Vec<Obj>, _, i64) = if rv.is_empty() || rv == "0" || send_initial {
        if rv.is_empty() {
            // "Most recent": the cache must have caught up with storage first.
            let current = state.store.current_revision().await?;
            state.cache.wait_for(current, Duration::from_secs(3)).await;
        }
        let (items, rx, rev) = state.cache.snapshot_and_subscribe(kind.storage, &prefix);
        let objs: Vec<Obj> = items.into_iter().filter(|o| sel.matches(o)).collect();
        (objs, rx, rev)
    } else {
        let after: i64 = rv.parse().map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?;
        if after > state.cache.revision() && !state.cache.wait_for(after, Duration::from_secs(3)).await {
            let mut e =
                ApiError::timeout(format!("Too large resource version: {after}, current: {}", state.cache.revision()));
            e.retry_after = Some(1);
            return Err(e);
        }
        match state.cache.watch_from(kind.storage, after) {
            None => {
                // Too old: answer as Kubernetes does, with a 410 inside the watch stream.
                let status = ApiError::gone(format!("too old resource version: {after} ({})", state.cache.revision()))
                    .to_status();
                let line = json!({"type": "ERROR", "object": status}).to_string() + "\n";
                return Ok((StatusCode::OK, [("content-type", "application/json")], line).into_response());
            }
            Some((backlog, rx, rev)) => {
                let (tx, out) = tokio::sync::mpsc::channel::<Bytes>(256);
                let prefix2 = prefix.clone();
                let backlog: Vec<Arc<CacheEvent>> =
                    backlog.into_iter().filter(|e| e.key.starts_with(&prefix2)).collect();
                tokio::spawn(pump(
                    kind,
                    sel,
                    prefix,
                    rx,
                    backlog,
                    Vec::new(),
                    false,
                    bookmarks,
                    timeout,
                    rev,
                    table,
                    tx,
                ));
                return Ok(stream_response(out, table));
            }
        }
    };
    let (tx, out) = tokio::sync::mpsc::channel::<Bytes>(256);
    let _ = &mut rx;
    tokio::spawn(pump(
        kind,
        sel,
        prefix,
        rx,
        Vec::new(),
        initial,
        send_initial,
        bookmarks,
        timeout,
        start_rev,
        table,
        tx,
    ));
    Ok(stream_response(out, table))
}

fn stream_response(rx: tokio::sync::mpsc::Receiver<Bytes>, _table: bool) -> Response {
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let body = Body::from_stream(futures::StreamExt::map(stream, Ok::<Bytes, std::convert::Infallible>));
    (StatusCode::OK, [("content-type", "application/json"), ("transfer-encoding", "chunked")], body).into_response()
}

struct Encoder {
    kind: &'static Kind,
    table: bool,
    columns_sent: bool,
}

impl Encoder {
    /// One event line. Unconverted objects are written from their cached bytes, so a hundred
    /// watchers do not encode the same object a hundred times.
    fn event(&mut self, ty: &str, obj: &Obj) -> Bytes {
        if self.table || self.kind.convert.is_some() {
            return self.line(ty, &present(self.kind, obj));
        }
        let mut b = Vec::with_capacity(obj.json.len() + 32);
        b.extend_from_slice(b"{\"type\":\"");
        b.extend_from_slice(ty.as_bytes());
        b.extend_from_slice(b"\",\"object\":");
        b.extend_from_slice(&obj.json);
        b.extend_from_slice(b"}\n");
        Bytes::from(b)
    }

    fn line(&mut self, ty: &str, obj: &Value) -> Bytes {
        let object = if self.table && ty != "BOOKMARK" && ty != "ERROR" {
            let mut t = skiff_apimachinery::table::table(
                self.kind.plural,
                std::slice::from_ref(obj),
                chrono::Utc::now(),
                skiff_apimachinery::table::IncludeObject::Metadata,
            );
            // Column definitions travel with the first event only, as Kubernetes sends them.
            if self.columns_sent {
                t["columnDefinitions"] = json!([]);
            }
            self.columns_sent = true;
            t["metadata"] = json!({"resourceVersion": obj["metadata"]["resourceVersion"]});
            t
        } else {
            obj.clone()
        };
        Bytes::from(json!({"type": ty, "object": object}).to_string() + "\n")
    }
    fn bookmark(&mut self, rev: i64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rev.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj = json!({"kind": self.kind.kind, "apiVersion": self.kind.api_version(), "metadata": meta});
        self.line("BOOKMARK", &obj)
    }
}

/// Translates one cache event for this watcher: label/field selectors turn a modification that
/// leaves (enters) the selection into DELETED (ADDED), as Kubernetes' cacher does.
fn translate(sel: &Selectors, ev: &CacheEvent) -> Option<&'static str> {
    let now_matches = sel.matches(&ev.object);
    match ev.kind {
        EventType::Added => now_matches.then_some("ADDED"),
        EventType::Deleted => now_matches.then_some("DELETED"),
        EventType::Modified => {
            let was = ev.prev.as_ref().is_some_and(|p| sel.matches(p));
            match (was, now_matches) {
                (true, true) => Some("MODIFIED"),
                (false, true) => Some("ADDED"),
                (true, false) => Some("DELETED"),
                (false, false) => None,
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn pump(
    kind: &'static Kind,
    sel: Selectors,
    prefix: String,
    mut rx: tokio::sync::broadcast::Receiver<Arc<CacheEvent>>,
    backlog: Vec<Arc<CacheEvent>>,
    initial: Vec<Obj>,
    initial_end_bookmark: bool,
    bookmarks: bool,
    timeout: Duration,
    start_rev: i64,
    table: bool,
    tx: tokio::sync::mpsc::Sender<Bytes>,
) {
    let mut enc = Encoder { kind, table, columns_sent: false };
    let mut last = start_rev;
    for obj in &initial {
        if tx.send(enc.event("ADDED", obj)).await.is_err() {
            return;
        }
    }
    if initial_end_bookmark && tx.send(enc.bookmark(start_rev, true)).await.is_err() {
        return;
    }
    let mut sent_up_to = 0;
    for ev in &backlog {
        sent_up_to = ev.revision;
        last = last.max(ev.revision);
        if let Some(ty) = translate(&sel, ev) {
            if tx.send(enc.event(ty, &ev.object)).await.is_err() {
                return;
            }
        }
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut tick = tokio::time::interval(BOOKMARK_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return,
            _ = tx.closed() => return,
            _ = tick.tick(), if bookmarks => {
                if tx.send(enc.bookmark(last, false)).await.is_err() {
                    return;
                }
            }
            r = rx.recv() => match r {
                Ok(ev) => {
                    // Events already sent from the backlog or older than the start are skipped.
                    if ev.revision <= start_rev || ev.revision <= sent_up_to || ev.resource != kind.storage || !ev.key.starts_with(&prefix) {
                        continue;
                    }
                    last = ev.revision;
                    if let Some(ty) = translate(&sel, &ev) {
                        if tx.send(enc.event(ty, &ev.object)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    // Too slow to keep up: end with 410 so the client relists, as Kubernetes
                    // does for watchers that fall out of its buffer.
                    let status = ApiError::gone(format!("too old resource version: {last}")).to_status();
                    let _ = tx.send(Bytes::from(json!({"type": "ERROR", "object": status}).to_string() + "\n")).await;
                    return;
                }
                Err(RecvError::Closed) => return,
            }
        }
    }
}
