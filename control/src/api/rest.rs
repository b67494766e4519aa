//! The one generic REST path: create, get, list, watch, update, patch, delete and
//! deletecollection for every kind, plus the `status`, `scale`, `binding` and `finalize`
//! subresources. Kind differences live in the registry's strategies.

use super::negotiate::{FieldValidation, Output, decode_json, decode_object, media_type, output};
use super::{Query, Shared, Target, header, json_response};
use crate::cache::Obj;
use crate::registry::{Kind, validate_object_meta};
use crate::status::{ApiError, ApiResult, Cause};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use skiff_apimachinery::{fields::FieldSelector, labels::LabelSelector};
use skiff_storage::{KeyValue, StoreError};
use std::sync::Arc;
use std::time::Duration;

/// Retries of read-modify-write loops on a storage conflict (Kubernetes' GuaranteedUpdate).
const MAX_RETRIES: usize = 16;

/// What a write addresses and carries, shared by create, update, patch and scale.
#[derive(Clone, Copy)]
struct Write<'a> {
    state: &'a Shared,
    kind: &'static Kind,
    ns: Option<&'a str>,
    q: &'a Query,
    ct: &'a str,
    body: &'a [u8],
    /// The field manager the write is recorded under.
    manager: &'a str,
}

pub async fn serve(
    state: &Shared,
    method: Method,
    t: Target,
    q: Query,
    headers: &HeaderMap,
    accept: &str,
    body: Bytes,
) -> ApiResult<Response> {
    let kind = t.kind;
    if kind.read_only && method != Method::GET {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({} is read-only)",
            kind.plural
        )));
    }
    if kind.plural == "componentstatuses" {
        return super::super::health::component_statuses(state, t.name.as_deref(), accept).await;
    }
    let ct = header(headers, "content-type").to_string();
    let manager = field_manager(&q, headers)?;
    let w = Write { state, kind, ns: t.namespace.as_deref(), q: &q, ct: &ct, body: &body, manager: &manager };
    match (t.name.as_deref(), t.subresource.as_deref(), method.clone()) {
        (None, None, Method::GET) if q.flag("watch") => {
            super::watch::watch(state, kind, t.namespace.as_deref(), &q, accept).await
        }
        (None, None, Method::GET) => list(state, kind, t.namespace.as_deref(), &q, accept).await,
        (None, None, Method::POST) => create(&w).await,
        (None, None, Method::DELETE) => delete_collection(state, kind, t.namespace.as_deref(), &q, &body).await,
        (Some(name), None | Some("status"), Method::GET) => {
            let obj = get(state, kind, t.namespace.as_deref(), name, &q).await?;
            Ok(respond_object(kind, obj, accept, StatusCode::OK))
        }
        (Some(name), sub @ (None | Some("status")), Method::PUT) => update(&w, name, sub).await,
        (Some(name), sub @ (None | Some("status")), Method::PATCH) => patch(&w, name, sub).await,
        (Some(name), None, Method::DELETE) => delete(state, kind, t.namespace.as_deref(), name, &q, &body).await,
        (Some(name), Some("scale"), m) if kind.has(crate::registry::Subresource::Scale) => scale(&w, name, m).await,
        (Some(name), Some("binding"), Method::POST) if kind.has(crate::registry::Subresource::Binding) => {
            bind(state, kind, t.namespace.as_deref(), name, &body).await
        }
        (Some(name), Some("log"), Method::GET) if kind.has(crate::registry::Subresource::Log) => {
            let pod = get(state, kind, t.namespace.as_deref(), name, &Query::default()).await?;
            super::logs::pod_log(state, pod, &q).await
        }
        (Some(name), Some("finalize"), Method::PUT) if kind.plural == "namespaces" => {
            finalize_namespace(state, name, &ct, &body).await
        }
        (_, Some(sub), _) if !["status", "scale", "binding", "finalize", "log"].contains(&sub) => {
            Err(ApiError::new(404, "NotFound", "the server could not find the requested resource"))
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method})"
        ))),
    }
}

/// The field manager a write is recorded under: `fieldManager`, else the User-Agent's product
/// (`kubectl/v1.33.1 (...)` → `kubectl`), as Kubernetes does.
fn field_manager(q: &Query, headers: &HeaderMap) -> ApiResult<String> {
    let m = match q.get("fieldManager").filter(|m| !m.is_empty()) {
        Some(m) => m.to_string(),
        None => {
            let ua = header(headers, "user-agent");
            let product = ua.split('/').next().unwrap_or("").trim();
            if product.is_empty() { "unknown".to_string() } else { product.chars().take(128).collect() }
        }
    };
    if m.chars().count() > 128 {
        return Err(ApiError::invalid(
            "",
            "",
            "",
            vec![Cause {
                reason: "FieldValueTooLong",
                field: "fieldManager".into(),
                message: "Too long: may not be more than 128 bytes".into(),
            }],
        ));
    }
    if m.chars().any(|c| c.is_control()) {
        return Err(ApiError::invalid(
            "",
            "",
            "",
            vec![Cause::invalid("fieldManager", &json!(m), "must contain only printable characters")],
        ));
    }
    Ok(m)
}

/// Records a non-apply write's field ownership in `managedFields` (operation `Update`).
fn track_fields(kind: &Kind, old: Option<&Value>, new: Value, manager: Option<&str>) -> ApiResult<Value> {
    let Some(manager) = manager else { return Ok(new) };
    let gk = skiff_patch::GroupKind::new(kind.group, kind.kind);
    skiff_patch::update_managed_fields_owned(old, new, manager, &gk).map_err(patch_error)
}

// ---------- encoding ----------

/// The object as clients of `kind`'s version see it.
pub fn present(kind: &Kind, obj: &Value) -> Value {
    present_owned(kind, obj.clone())
}

/// [`present`] of an object the caller no longer needs (no copy).
pub fn present_owned(kind: &Kind, obj: Value) -> Value {
    let mut v = match kind.convert {
        Some(c) => c.from_storage(obj),
        None => obj,
    };
    if let Some(m) = v.as_object_mut() {
        m.insert("apiVersion".into(), json!(kind.api_version()));
        m.insert("kind".into(), json!(kind.kind));
    }
    v
}

fn to_storage(kind: &Kind, obj: Value) -> Value {
    match kind.convert {
        Some(c) => c.to_storage(obj),
        None => obj,
    }
}

/// Storage holds objects without `resourceVersion` (it is the key's revision). Empty metadata
/// maps and lists are dropped, as Go's `omitempty` does, so `labels: {}` never shows up.
fn encode(obj: &Value) -> Vec<u8> {
    let mut v = obj.clone();
    encode_in_place(&mut v)
}

/// [`encode`] without the copy: drops empty metadata and `resourceVersion` from `obj` itself
/// (which [`with_rv`] puts back once the write has its revision).
fn encode_in_place(obj: &mut Value) -> Vec<u8> {
    omit_empty_metadata(obj);
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    serde_json::to_vec(obj).unwrap_or_default()
}

fn omit_empty_metadata(obj: &mut Value) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.retain(|_, f| {
            !(f.is_null() || f.as_object().is_some_and(|m| m.is_empty()) || f.as_array().is_some_and(|a| a.is_empty()))
        });
    }
}

fn with_rv(mut obj: Value, rev: i64) -> Value {
    omit_empty_metadata(&mut obj);
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), json!(rev.to_string()));
    }
    obj
}

fn respond_object(kind: &Kind, obj: Value, accept: &str, code: StatusCode) -> Response {
    let v = present_owned(kind, obj);
    if output(accept) == Output::Table {
        let now = chrono::Utc::now();
        let t = skiff_apimachinery::table::table(
            kind.plural,
            std::slice::from_ref(&v),
            now,
            skiff_apimachinery::table::IncludeObject::Metadata,
        );
        return json_response(code, &t);
    }
    json_response(code, &v)
}

fn key_of(kind: &Kind, ns: Option<&str>, name: &str) -> String {
    kind.storage_key(ns, name)
}

fn kv_object(kv: &KeyValue) -> ApiResult<Value> {
    crate::cache::decode(kv, kv.mod_revision)
        .ok_or_else(|| ApiError::internal(format!("stored object {} is not valid JSON", kv.key)))
}

async fn load(state: &Shared, kind: &Kind, ns: Option<&str>, name: &str) -> ApiResult<Option<(Value, i64)>> {
    match state.store.get(&key_of(kind, ns, name)).await? {
        Some(kv) => Ok(Some((kv_object(&kv)?, kv.mod_revision))),
        None => Ok(None),
    }
}

// ---------- reads ----------

pub async fn get(state: &Shared, kind: &Kind, ns: Option<&str>, name: &str, q: &Query) -> ApiResult<Value> {
    let found = match q.get("resourceVersion") {
        // "0": any cached state will do.
        Some("0") => state.cache.get(kind.storage, &key_of(kind, ns, name)).map(|v| (*v.value).clone()),
        _ => load(state, kind, ns, name).await?.map(|(v, _)| v),
    };
    found.ok_or_else(|| ApiError::not_found(kind.group, kind.plural, name))
}

pub struct Selectors {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selectors {
    pub fn from_query(kind: &Kind, q: &Query) -> ApiResult<Self> {
        let labels = LabelSelector::parse(q.get("labelSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let fields = FieldSelector::parse(q.get("fieldSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        fields.validate_for(kind.plural).map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(Selectors { labels, fields })
    }
    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches_object(obj) && self.fields.matches(obj)
    }
}

/// A `continue` token: where the next page starts, at which revision.
fn encode_continue(rev: i64, last_key: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"v": "meta.k8s.io/v1", "rv": rev, "start": last_key}).to_string())
}

fn decode_continue(token: &str) -> ApiResult<(i64, String)> {
    use base64::Engine;
    let bad = || {
        ApiError::bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
        )
    };
    let raw =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token.trim_end_matches('=')).map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    match (v["rv"].as_i64(), v["start"].as_str()) {
        (Some(rv), Some(start)) if rv > 0 => Ok((rv, start.to_string())),
        _ => Err(bad()),
    }
}

async fn list(state: &Shared, kind: &'static Kind, ns: Option<&str>, q: &Query, accept: &str) -> ApiResult<Response> {
    let sel = Selectors::from_query(kind, q)?;
    let prefix = kind.storage_prefix(ns);
    let limit = q.int("limit")?.filter(|l| *l > 0).map(|l| l as usize);
    let (candidates, rev): (Vec<(String, Obj)>, i64) = if let Some(token) = q.get("continue").filter(|c| !c.is_empty())
    {
        let (rev, start) = decode_continue(token)?;
        // Later pages read storage at the first page's revision: a consistent snapshot.
        let (kvs, rev) = match state.store.list(&prefix, Some(rev)).await {
            Err(StoreError::Compacted { .. }) => {
                return Err(ApiError::gone(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
                ));
            }
            other => other?,
        };
        let items = kvs
            .iter()
            .filter(|kv| kv.key.as_str() > start.as_str())
            .filter_map(|kv| Some((kv.key.clone(), Obj::new(kv_object(kv).ok()?))))
            .collect();
        (items, rev)
    } else {
        match (q.get("resourceVersion"), q.get("resourceVersionMatch")) {
            (Some(rv), Some("Exact")) => {
                let rv: i64 =
                    rv.parse().map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?;
                let (kvs, rev) = state.store.list(&prefix, Some(rv)).await?;
                (kvs.iter().filter_map(|kv| Some((kv.key.clone(), Obj::new(kv_object(kv).ok()?)))).collect(), rev)
            }
            (Some("0"), _) => state.cache.list(kind.storage, &prefix),
            (Some(rv), _) if !rv.is_empty() => {
                let rv: i64 =
                    rv.parse().map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?;
                wait_for_cache(state, rv).await?;
                state.cache.list(kind.storage, &prefix)
            }
            _ => {
                // A consistent read: the cache must have caught up with storage first.
                let current = state.store.current_revision().await?;
                wait_for_cache(state, current).await?;
                state.cache.list(kind.storage, &prefix)
            }
        }
    };
    let mut items: Vec<(&str, &Obj)> = Vec::new();
    let mut next = None;
    let mut remaining = 0usize;
    for (key, obj) in candidates.iter() {
        if !sel.matches(obj) {
            continue;
        }
        if let Some(l) = limit {
            if items.len() >= l {
                if next.is_none() {
                    next = Some(encode_continue(rev, items.last().map(|(k, _)| *k).unwrap_or("")));
                }
                remaining += 1;
                continue;
            }
        }
        items.push((key, obj));
    }
    let mut meta = json!({"resourceVersion": rev.to_string()});
    if let Some(c) = &next {
        meta["continue"] = json!(c);
        meta["remainingItemCount"] = json!(remaining);
    }
    if output(accept) == Output::Table {
        let include = match q.get("includeObject") {
            Some("None") => skiff_apimachinery::table::IncludeObject::None,
            Some("Object") => skiff_apimachinery::table::IncludeObject::Object,
            _ => skiff_apimachinery::table::IncludeObject::Metadata,
        };
        let objs: Vec<Value> = items.iter().map(|(_, o)| present(kind, o)).collect();
        let mut t = skiff_apimachinery::table::table(kind.plural, &objs, chrono::Utc::now(), include);
        t["metadata"] = meta;
        return Ok(json_response(StatusCode::OK, &t));
    }
    // The items are the cached bytes, concatenated; only converted versions re-encode.
    let head = json!({"kind": kind.list_kind, "apiVersion": kind.api_version(), "metadata": meta}).to_string();
    let mut body = Vec::with_capacity(head.len() + 16 + items.iter().map(|(_, o)| o.json.len() + 1).sum::<usize>());
    body.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
    body.extend_from_slice(b",\"items\":[");
    for (i, (_, o)) in items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        match kind.convert {
            None => body.extend_from_slice(&o.json),
            Some(_) => body.extend_from_slice(present(kind, o).to_string().as_bytes()),
        }
    }
    body.extend_from_slice(b"]}");
    Ok((StatusCode::OK, [("content-type", "application/json")], body).into_response())
}

async fn wait_for_cache(state: &Shared, rev: i64) -> ApiResult<()> {
    if state.cache.wait_for(rev, Duration::from_secs(3)).await {
        Ok(())
    } else {
        let mut e =
            ApiError::timeout(format!("Too large resource version: {rev}, current: {}", state.cache.revision()));
        e.retry_after = Some(1);
        Err(e)
    }
}

// ---------- input ----------

/// Decodes a request object, type-checks it against the kind's schema and applies
/// `fieldValidation`. Returns the object and warnings for the `Warning` header.
fn accept_input(
    kind: &Kind,
    raw: Value,
    duplicates: Vec<String>,
    fv: FieldValidation,
) -> ApiResult<(Value, Vec<String>)> {
    if !raw.is_object() {
        return Err(ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: the request body must be a JSON object",
            kind.kind, kind.version, kind.kind
        )));
    }
    if let Some(av) = raw.get("apiVersion").and_then(Value::as_str) {
        if av != kind.api_version() {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                kind.api_version()
            )));
        }
    }
    if let Some(k) = raw.get("kind").and_then(Value::as_str) {
        if k != kind.kind {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                kind.kind
            )));
        }
    }
    let typed = (kind.round_trip)(&raw).map_err(|e| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {e}",
            kind.kind, kind.version, kind.kind
        ))
    })?;
    let mut problems: Vec<String> = Vec::new();
    if fv != FieldValidation::Ignore {
        problems.extend(duplicates.into_iter().map(|f| format!("duplicate field \"{f}\"")));
        problems
            .extend(crate::strict::unknown_fields(&raw, &typed).into_iter().map(|f| format!("unknown field \"{f}\"")));
    }
    if fv == FieldValidation::Strict && !problems.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
            kind.kind,
            kind.version,
            kind.kind,
            problems.join(", ")
        )));
    }
    // Unknown fields are dropped, as a typed decoder would.
    Ok((typed, problems))
}

/// A request object and its duplicate fields (JSON bodies are checked while parsing).
fn decode_checked(ct: &str, body: &[u8]) -> ApiResult<(Value, Vec<String>)> {
    let mt = media_type(ct);
    if mt.is_empty() || mt == "application/json" {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request("the request body is empty"));
        }
        return crate::strict::parse_checked(body)
            .map_err(|e| ApiError::bad_request(format!("couldn't decode the request body as JSON: {e}")));
    }
    Ok((decode_object(ct, body)?, Vec::new()))
}

fn with_warnings(mut resp: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let v = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(h) = v.parse() {
            resp.headers_mut().append("warning", h);
        }
    }
    resp
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn generate_name(prefix: &str) -> String {
    // Kubernetes' alphabet avoids vowels and look-alike characters.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let suffix: String = (0..5).map(|_| ALPHABET[rand::random::<u32>() as usize % ALPHABET.len()] as char).collect();
    format!("{prefix}{suffix}")
}

// ---------- writes ----------

async fn create(w: &Write<'_>) -> ApiResult<Response> {
    let Write { state, kind, ns, q, ct, body, manager } = *w;
    let fv = FieldValidation::from_query(q)?;
    let (raw, dups) = decode_checked(ct, body)?;
    let (obj, warnings) = accept_input(kind, raw, dups, fv)?;
    let created = create_stored(state, kind, ns, obj, q.dry_run()?, Some(manager)).await?;
    let resp = match (created, kind.convert) {
        // The response is the stored object as clients see it: for a kind served in its storage
        // version that is the object the cache was offered, already serialized.
        (Created::Stored(o), None) => {
            (StatusCode::CREATED, [("content-type", "application/json")], o.json).into_response()
        }
        (created, _) => respond_object(kind, created.into_value(), "", StatusCode::CREATED),
    };
    Ok(with_warnings(resp, &warnings))
}

/// What [`create_stored`] made.
enum Created {
    /// Written: the object with its `resourceVersion`, as also offered to the watch cache.
    Stored(Obj),
    /// A dry run's object (nothing was written).
    DryRun(Value),
}

impl Created {
    fn into_value(self) -> Value {
        match self {
            Created::Stored(o) => Arc::try_unwrap(o.value).unwrap_or_else(|shared| (*shared).clone()),
            Created::DryRun(v) => v,
        }
    }
}

/// The create path shared by POST, PUT-creates and apply-creates. `manager` records field
/// ownership as an `Update` (None: the caller already recorded it, as apply does).
pub async fn create_object(
    state: &Shared,
    kind: &'static Kind,
    ns: Option<&str>,
    obj: Value,
    dry_run: bool,
    manager: Option<&str>,
) -> ApiResult<Value> {
    Ok(create_stored(state, kind, ns, obj, dry_run, manager).await?.into_value())
}

async fn create_stored(
    state: &Shared,
    kind: &'static Kind,
    ns: Option<&str>,
    mut obj: Value,
    dry_run: bool,
    manager: Option<&str>,
) -> ApiResult<Created> {
    let meta = obj.as_object_mut().and_then(|m| {
        m.entry("metadata").or_insert_with(|| json!({}));
        m.get_mut("metadata")?.as_object_mut()
    });
    let Some(meta) = meta else { return Err(ApiError::bad_request("metadata must be an object")) };
    if kind.namespaced {
        let url_ns = ns.ok_or_else(|| ApiError::bad_request("a namespace is required to create this resource"))?;
        match meta.get("namespace").and_then(Value::as_str) {
            Some(n) if !n.is_empty() && n != url_ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => {
                meta.insert("namespace".into(), json!(url_ns));
            }
        }
    }
    if meta.get("resourceVersion").and_then(Value::as_str).is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::bad_request("resourceVersion should not be set on objects to be created"));
    }
    let name_missing = meta.get("name").and_then(Value::as_str).is_none_or(str::is_empty);
    if name_missing {
        if let Some(prefix) = meta.get("generateName").and_then(Value::as_str).filter(|p| !p.is_empty()) {
            let n = generate_name(prefix);
            meta.insert("name".into(), json!(n));
        }
    }
    meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    meta.insert("creationTimestamp".into(), json!(now()));
    meta.remove("deletionTimestamp");
    meta.remove("deletionGracePeriodSeconds");
    meta.remove("selfLink");
    if obj.get("spec").is_some() || kind.strategy.has_status() {
        obj["metadata"]["generation"] = json!(1);
    }
    if kind.strategy.has_status() {
        if let Some(m) = obj.as_object_mut() {
            m.remove("status");
        }
        if let Some(s) = kind.strategy.initial_status(&obj) {
            obj["status"] = s;
        }
    }
    obj["apiVersion"] = json!(kind.api_version());
    obj["kind"] = json!(kind.kind);
    let mut obj = to_storage(kind, obj);
    kind.strategy.default(&mut obj);
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    let mut causes = validate_object_meta(&obj, kind.name_rule, kind.namespaced);
    causes.extend(kind.strategy.validate(&obj));
    if !causes.is_empty() {
        return Err(ApiError::invalid(kind.group, kind.kind, &name, causes));
    }
    if let Some(ns) = ns.filter(|_| kind.namespaced) {
        ensure_namespace_accepts(state, ns, kind).await?;
    }
    let mut obj = track_fields(kind, None, obj, manager)?;
    let key = key_of(kind, ns, &name);
    // A Service's addresses and ports are chosen under the allocator's lock, then held by a
    // claim (not the lock) while the write commits, so creates commit concurrently.
    let _claim = if kind.plural == "services" {
        let _lock = state.allocator.lock.lock().await;
        let claimed = state.allocator.claimed(); // before the revision is read (alloc.rs)
        let existing = all_services(state).await?;
        let causes = state.allocator.assign(&mut obj, None, &existing, &claimed);
        if !causes.is_empty() {
            return Err(ApiError::invalid(kind.group, kind.kind, &name, causes));
        }
        (!dry_run).then(|| state.allocator.claim(&obj))
    } else {
        None
    };
    if dry_run {
        if state.store.get(&key).await?.is_some() {
            return Err(ApiError::already_exists(kind.group, kind.plural, &name));
        }
        return Ok(Created::DryRun(obj));
    }
    // The cache is told what is being written, so that whichever of it (through its watch) and
    // this request gets there first builds the stored object once, for both: the cache does not
    // parse the bytes back, the response is not encoded again.
    let bytes = Bytes::from(encode_in_place(&mut obj));
    state.cache.expect(&key, bytes.clone(), obj);
    // Should this request be dropped mid-write, the expectation goes with it.
    struct Withdraw<'a>(&'a crate::cache::Cache, &'a str, &'a [u8]);
    impl Drop for Withdraw<'_> {
        fn drop(&mut self) {
            self.0.withdraw(self.1, self.2);
        }
    }
    let _withdraw = Withdraw(&state.cache, &key, &bytes);
    match state.store.create(&key, bytes.to_vec()).await {
        Ok(rev) => {
            let stored = match state.cache.settle(&key, rev, &bytes) {
                Some(o) => o,
                None => Obj::new(
                    crate::cache::decode_bytes(&bytes, rev)
                        .ok_or_else(|| ApiError::internal(format!("stored object {key} is not valid JSON")))?,
                ),
            };
            Ok(Created::Stored(stored))
        }
        Err(StoreError::AlreadyExists(_)) => Err(ApiError::already_exists(kind.group, kind.plural, &name)),
        Err(e) => Err(e.into()),
    }
}

async fn all_services(state: &Shared) -> ApiResult<Vec<Arc<Value>>> {
    let current = state.store.current_revision().await?;
    wait_for_cache(state, current).await?;
    Ok(state.cache.list_values("services", "/registry/services/").0.into_iter().map(|v| v.value).collect())
}

async fn ensure_namespace_accepts(state: &Shared, ns: &str, kind: &Kind) -> ApiResult<()> {
    let nsk =
        crate::registry::find("", "v1", "namespaces").ok_or_else(|| ApiError::internal("namespaces kind missing"))?;
    // The cache answers for namespaces that exist (Kubernetes' lifecycle admission reads an
    // informer too); storage is asked only when the cache has not seen the namespace yet.
    let cached = state.cache.get(nsk.storage, &key_of(nsk, None, ns)).map(|o| o.value);
    let found = match cached {
        Some(o) => Some(o),
        None => load(state, nsk, None, ns).await?.map(|(o, _)| Arc::new(o)),
    };
    match found {
        None => Err(ApiError::not_found("", "namespaces", ns)),
        Some(obj) if !obj["metadata"]["deletionTimestamp"].is_null() => Err(ApiError::forbidden(
            kind.group,
            kind.plural,
            "",
            &format!("unable to create new content in namespace {ns} because it is being terminated"),
        )),
        Some(_) => Ok(()),
    }
}

/// Which part of the object a write may change.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Main,
    Status,
}

/// Merges a requested new state with the stored one per the kind's rules, then defaults and
/// validates it. `new` is in storage form.
fn prepare_update(kind: &Kind, mut new: Value, old: &Value, part: Part, manager: Option<&str>) -> ApiResult<Value> {
    if !new.is_object() {
        return Err(ApiError::bad_request("the request body must be a JSON object"));
    }
    if part == Part::Status {
        // A status write changes the status and nothing else.
        let mut merged = old.clone();
        merged["status"] = new.get("status").cloned().unwrap_or(Value::Null);
        if merged["status"].is_null() {
            if let Some(m) = merged.as_object_mut() {
                m.remove("status");
            }
        }
        new = merged;
    } else if kind.strategy.has_status() {
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    }
    if !new["metadata"].is_object() {
        new["metadata"] = json!({});
    }
    for f in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "namespace", "name"] {
        match old["metadata"].get(f) {
            Some(v) => new["metadata"][f] = v.clone(),
            None => {
                if let Some(m) = new["metadata"].as_object_mut() {
                    m.remove(f);
                }
            }
        }
    }
    if new["metadata"].get("managedFields").is_none() {
        if let Some(mf) = old["metadata"].get("managedFields") {
            new["metadata"]["managedFields"] = mf.clone();
        }
    }
    new["apiVersion"] = old["apiVersion"].clone();
    new["kind"] = old["kind"].clone();
    kind.strategy.default(&mut new);
    kind.strategy.prepare_update(&mut new, old);
    // Generation counts changes of the desired state (everything but metadata and status).
    let desired = |v: &Value| {
        let mut d = v.clone();
        if let Some(m) = d.as_object_mut() {
            m.remove("metadata");
            m.remove("status");
        }
        d
    };
    let old_gen = old["metadata"]["generation"].as_i64();
    if let Some(g) = old_gen {
        let g = if desired(&new) != desired(old) { g + 1 } else { g };
        new["metadata"]["generation"] = json!(g);
    } else if let Some(m) = new["metadata"].as_object_mut() {
        m.remove("generation");
    }
    let name = new["metadata"]["name"].as_str().unwrap_or("").to_string();
    let mut causes = validate_object_meta(&new, kind.name_rule, kind.namespaced);
    causes.extend(kind.strategy.validate(&new));
    causes.extend(kind.strategy.validate_update(&new, old));
    if !causes.is_empty() {
        return Err(ApiError::invalid(kind.group, kind.kind, &name, causes));
    }
    track_fields(kind, Some(old), new, manager)
}

/// Writes `new` over the stored object at revision `expected`. Deletes instead when the last
/// finalizer of a deleting object went away.
async fn write_update(
    state: &Shared,
    kind: &'static Kind,
    ns: Option<&str>,
    name: &str,
    mut new: Value,
    old: &Value,
    expected: i64,
    dry_run: bool,
) -> Result<Value, WriteError> {
    let key = key_of(kind, ns, name);
    let _guard = if kind.plural == "services" { Some(state.allocator.lock.lock().await) } else { None };
    if kind.plural == "services" {
        let claimed = state.allocator.claimed(); // before the revision is read (alloc.rs)
        let existing = all_services(state).await.map_err(WriteError::Api)?;
        let causes = state.allocator.assign(&mut new, Some(old), &existing, &claimed);
        if !causes.is_empty() {
            return Err(WriteError::Api(ApiError::invalid(kind.group, kind.kind, name, causes)));
        }
    }
    if dry_run {
        return Ok(new);
    }
    if deletion_complete(kind, &new) {
        return match state.store.delete(&key, Some(expected)).await {
            Ok((rev, _)) => Ok(with_rv(new, rev)),
            Err(StoreError::Conflict { .. }) => Err(WriteError::Conflict),
            Err(StoreError::NotFound(_)) => Err(WriteError::Api(ApiError::not_found(kind.group, kind.plural, name))),
            Err(e) => Err(WriteError::Api(e.into())),
        };
    }
    match state.store.update(&key, encode(&new), expected).await {
        Ok(rev) => Ok(with_rv(new, rev)),
        Err(StoreError::Conflict { .. }) => Err(WriteError::Conflict),
        Err(StoreError::NotFound(_)) => Err(WriteError::Api(ApiError::not_found(kind.group, kind.plural, name))),
        Err(e) => Err(WriteError::Api(e.into())),
    }
}

enum WriteError {
    Conflict,
    Api(ApiError),
}

/// A deleting object whose finalizers are all gone is removed. Pods wait for their node's
/// agent to confirm termination (it deletes them with grace period 0), unless never scheduled.
fn deletion_complete(kind: &Kind, obj: &Value) -> bool {
    let meta = &obj["metadata"];
    if meta["deletionTimestamp"].is_null() {
        return false;
    }
    if meta["finalizers"].as_array().is_some_and(|f| !f.is_empty()) {
        return false;
    }
    if kind.plural == "namespaces" && obj["spec"]["finalizers"].as_array().is_some_and(|f| !f.is_empty()) {
        return false;
    }
    if kind.plural == "pods" && pod_needs_kubelet(obj) && meta["deletionGracePeriodSeconds"].as_i64().unwrap_or(0) > 0 {
        return false;
    }
    true
}

/// A pod bound to a node and not yet finished needs its node's agent to stop it gracefully.
fn pod_needs_kubelet(pod: &Value) -> bool {
    let bound = pod["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty());
    let phase = pod["status"]["phase"].as_str().unwrap_or("");
    bound && phase != "Succeeded" && phase != "Failed"
}

async fn update(w: &Write<'_>, name: &str, sub: Option<&str>) -> ApiResult<Response> {
    let Write { state, kind, ns, q, ct, body, manager } = *w;
    let fv = FieldValidation::from_query(q)?;
    let (raw, dups) = decode_checked(ct, body)?;
    let (obj, warnings) = accept_input(kind, raw, dups, fv)?;
    let body_name = obj["metadata"]["name"].as_str().unwrap_or("");
    if body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    if let (Some(url_ns), Some(obj_ns)) = (ns, obj["metadata"]["namespace"].as_str()) {
        if !obj_ns.is_empty() && obj_ns != url_ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
    }
    let requested_rv: Option<i64> = match obj["metadata"]["resourceVersion"].as_str() {
        None | Some("") => None,
        Some(s) => Some(s.parse().map_err(|_| ApiError::bad_request(format!("invalid resource version: {s}")))?),
    };
    let part = if sub == Some("status") { Part::Status } else { Part::Main };
    let dry_run = q.dry_run()?;
    for _ in 0..MAX_RETRIES {
        let Some((old, rev)) = load(state, kind, ns, name).await? else {
            if part == Part::Main && kind.strategy.allow_create_on_update() {
                let mut o = obj.clone();
                if let Some(m) = o["metadata"].as_object_mut() {
                    m.remove("resourceVersion");
                }
                let created = create_object(state, kind, ns, o, dry_run, Some(manager)).await?;
                return Ok(with_warnings(respond_object(kind, created, "", StatusCode::CREATED), &warnings));
            }
            return Err(ApiError::not_found(kind.group, kind.plural, name));
        };
        let expected = match requested_rv {
            Some(r) if r != rev => return Err(ApiError::modified(kind.group, kind.plural, name)),
            Some(r) => r,
            None if !kind.strategy.allow_unconditional_update() => {
                return Err(ApiError::invalid(
                    kind.group,
                    kind.kind,
                    name,
                    vec![Cause::invalid("metadata.resourceVersion", &json!(0), "must be specified for an update")],
                ));
            }
            None => rev,
        };
        let new = prepare_update(kind, to_storage(kind, obj.clone()), &old, part, Some(manager))?;
        match write_update(state, kind, ns, name, new, &old, expected, dry_run).await {
            Ok(v) => return Ok(with_warnings(respond_object(kind, v, "", StatusCode::OK), &warnings)),
            Err(WriteError::Conflict) if requested_rv.is_none() => continue,
            Err(WriteError::Conflict) => return Err(ApiError::modified(kind.group, kind.plural, name)),
            Err(WriteError::Api(e)) => return Err(e),
        }
    }
    Err(ApiError::modified(kind.group, kind.plural, name))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

fn patch_type(ct: &str) -> ApiResult<PatchType> {
    match media_type(ct).as_str() {
        "application/json-patch+json" => Ok(PatchType::Json),
        "application/merge-patch+json" => Ok(PatchType::Merge),
        "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
        "application/apply-patch+yaml" => Ok(PatchType::Apply),
        other => Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other:?})"
            ),
        )),
    }
}

fn patch_error(e: skiff_patch::PatchError) -> ApiError {
    let mut err = ApiError::new(e.status_code(), e.reason(), e.message().to_string());
    // An apply conflict lists each conflicting field as the API server does
    // (`errors.NewApplyConflict`: causes only, no name or kind in the details).
    let causes = e.conflict_causes();
    if !causes.is_empty() {
        err.details = Some(serde_json::json!({
            "causes": causes
                .iter()
                .map(|c| serde_json::json!({
                    "reason": "FieldManagerConflict",
                    "message": format!("conflict with {}", c.manager),
                    "field": c.field,
                }))
                .collect::<Vec<_>>()
        }));
    }
    err
}

fn apply_patch(
    pt: PatchType,
    current: &Value,
    patch: &Value,
    kind: &Kind,
    manager: &str,
    force: bool,
) -> ApiResult<Value> {
    let gk = skiff_patch::GroupKind { group: kind.group.to_string(), kind: kind.kind.to_string() };
    let r = match pt {
        PatchType::Json => skiff_patch::json_patch(current, patch),
        PatchType::Merge => skiff_patch::merge_patch(current, patch),
        PatchType::Strategic => skiff_patch::strategic_merge_patch(current, patch, &gk),
        PatchType::Apply => skiff_patch::apply(Some(current), patch, manager, &gk, force),
    };
    r.map_err(patch_error)
}

async fn patch(w: &Write<'_>, name: &str, sub: Option<&str>) -> ApiResult<Response> {
    let Write { state, kind, ns, q, ct, body, manager } = *w;
    let pt = patch_type(ct)?;
    let force = q.get("force").is_some_and(|_| q.flag("force"));
    if force && pt != PatchType::Apply {
        return Err(ApiError::invalid(
            "",
            "",
            "",
            vec![Cause::invalid("force", &json!(true), "may not be specified for non-apply patch")],
        ));
    }
    let fv = FieldValidation::from_query(q)?;
    let patch_doc = if pt == PatchType::Apply { super::negotiate::decode_yaml(body)? } else { decode_json(body)? };
    if pt == PatchType::Apply && q.get("fieldManager").unwrap_or("").is_empty() {
        return Err(ApiError::bad_request("PATCH, application/apply-patch+yaml requests must have a fieldManager"));
    }
    // Apply records its own ownership (operation Apply); other patches are Updates.
    let tracked = (pt != PatchType::Apply).then_some(manager);
    let part = if sub == Some("status") { Part::Status } else { Part::Main };
    let dry_run = q.dry_run()?;
    for _ in 0..MAX_RETRIES {
        let Some((old, rev)) = load(state, kind, ns, name).await? else {
            if pt == PatchType::Apply && part == Part::Main {
                let gk = skiff_patch::GroupKind { group: kind.group.to_string(), kind: kind.kind.to_string() };
                let applied = skiff_patch::apply(None, &patch_doc, manager, &gk, force).map_err(patch_error)?;
                let (obj, warnings) = accept_input(kind, applied, Vec::new(), fv)?;
                if obj["metadata"]["name"].as_str().unwrap_or(name) != name {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({}) does not match the name on the URL ({name})",
                        obj["metadata"]["name"]
                    )));
                }
                let mut obj = obj;
                obj["metadata"]["name"] = json!(name);
                let created = create_object(state, kind, ns, obj, dry_run, None).await?;
                return Ok(with_warnings(respond_object(kind, created, "", StatusCode::CREATED), &warnings));
            }
            return Err(ApiError::not_found(kind.group, kind.plural, name));
        };
        let current = present(kind, &old);
        let patched = apply_patch(pt, &current, &patch_doc, kind, manager, force)?;
        let (patched, warnings) = accept_input(kind, patched, Vec::new(), fv)?;
        // A resourceVersion in the patch is a precondition.
        if let Some(rv) = patched["metadata"]["resourceVersion"].as_str() {
            if rv != rev.to_string() {
                return Err(ApiError::modified(kind.group, kind.plural, name));
            }
        }
        if patched["metadata"]["name"].as_str() != Some(name) {
            return Err(ApiError::bad_request("the name of the object may not be changed by a patch"));
        }
        let new = prepare_update(kind, to_storage(kind, patched), &old, part, tracked)?;
        match write_update(state, kind, ns, name, new, &old, rev, dry_run).await {
            Ok(v) => return Ok(with_warnings(respond_object(kind, v, "", StatusCode::OK), &warnings)),
            Err(WriteError::Conflict) => continue,
            Err(WriteError::Api(e)) => return Err(e),
        }
    }
    Err(ApiError::modified(kind.group, kind.plural, name))
}

// ---------- delete ----------

struct DeleteOptions {
    grace: Option<i64>,
    propagation: Option<String>,
    uid: Option<String>,
    rv: Option<String>,
    dry_run: bool,
}

fn delete_options(q: &Query, body: &[u8]) -> ApiResult<DeleteOptions> {
    let b: Value = if body.iter().all(u8::is_ascii_whitespace) { json!({}) } else { decode_json(body)? };
    if let Some(k) = b["kind"].as_str() {
        if k != "DeleteOptions" {
            return Err(ApiError::bad_request(format!("the body of a delete must be DeleteOptions, got {k}")));
        }
    }
    let grace = match q.int("gracePeriodSeconds")? {
        Some(g) => Some(g),
        None => b["gracePeriodSeconds"].as_i64(),
    };
    let propagation =
        q.get("propagationPolicy").map(str::to_string).or_else(|| b["propagationPolicy"].as_str().map(str::to_string));
    if let Some(p) = &propagation {
        if !["Orphan", "Background", "Foreground"].contains(&p.as_str()) {
            return Err(ApiError::invalid(
                "",
                "DeleteOptions",
                "",
                vec![Cause::not_supported(
                    "propagationPolicy",
                    &json!(p),
                    &["Foreground", "Background", "Orphan", "nil"],
                )],
            ));
        }
    }
    let dry_run = q.dry_run()? || b["dryRun"].as_array().is_some_and(|a| a.iter().any(|x| x == "All"));
    Ok(DeleteOptions {
        grace,
        propagation,
        uid: b["preconditions"]["uid"].as_str().map(str::to_string),
        rv: b["preconditions"]["resourceVersion"].as_str().map(str::to_string),
        dry_run,
    })
}

async fn delete(
    state: &Shared,
    kind: &'static Kind,
    ns: Option<&str>,
    name: &str,
    q: &Query,
    body: &[u8],
) -> ApiResult<Response> {
    let opts = delete_options(q, body)?;
    let obj = delete_object(state, kind, ns, name, &opts).await?;
    // An object still present (graceful deletion, finalizers) is returned; one that is gone is
    // returned only by the kinds Kubernetes registers that way, the others answer a Status.
    let still_present = !obj["metadata"]["deletionTimestamp"].is_null()
        && !opts.dry_run
        && load(state, kind, ns, name).await?.is_some();
    if still_present || kind.strategy.return_deleted_object() {
        return Ok(respond_object(kind, obj, "", StatusCode::OK));
    }
    let mut details = json!({"name": name, "kind": kind.plural, "uid": obj["metadata"]["uid"]});
    if !kind.group.is_empty() {
        details["group"] = json!(kind.group);
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}),
    ))
}

async fn delete_object(
    state: &Shared,
    kind: &'static Kind,
    ns: Option<&str>,
    name: &str,
    opts: &DeleteOptions,
) -> ApiResult<Value> {
    let key = key_of(kind, ns, name);
    for _ in 0..MAX_RETRIES {
        let Some((old, rev)) = load(state, kind, ns, name).await? else {
            return Err(ApiError::not_found(kind.group, kind.plural, name));
        };
        if let Some(uid) = &opts.uid {
            let actual = old["metadata"]["uid"].as_str().unwrap_or("");
            if uid != actual {
                return Err(ApiError::conflict(
                    kind.group,
                    kind.plural,
                    name,
                    &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"),
                ));
            }
        }
        if let Some(want) = &opts.rv {
            if *want != rev.to_string() {
                return Err(ApiError::conflict(
                    kind.group,
                    kind.plural,
                    name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {rev}"
                    ),
                ));
            }
        }
        let mut new = old.clone();
        let mut graceful = false;
        if kind.plural == "pods" && pod_needs_kubelet(&old) {
            let grace = opts
                .grace
                .unwrap_or_else(|| old["spec"]["terminationGracePeriodSeconds"].as_i64().unwrap_or(30))
                .max(0);
            let current = old["metadata"]["deletionGracePeriodSeconds"].as_i64();
            if grace > 0 && current.is_none_or(|c| grace < c) {
                let at = chrono::Utc::now() + chrono::Duration::seconds(grace);
                new["metadata"]["deletionTimestamp"] = json!(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
                new["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                graceful = true;
            } else if grace > 0 {
                graceful = true;
            } else if !old["metadata"]["deletionTimestamp"].is_null() {
                // A forced delete shortens a pending graceful one, so the pod goes as soon as
                // its finalizers do.
                new["metadata"]["deletionTimestamp"] = json!(now());
                new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            }
        }
        if kind.plural == "namespaces" {
            if new["metadata"]["deletionTimestamp"].is_null() {
                new["metadata"]["deletionTimestamp"] = json!(now());
                new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            }
            new["status"]["phase"] = json!("Terminating");
        }
        // The garbage collector acts on these finalizers (foreground: dependents first; orphan:
        // release them).
        let finalizer = match opts.propagation.as_deref() {
            Some("Foreground") => Some("foregroundDeletion"),
            Some("Orphan") => Some("orphan"),
            _ => None,
        };
        if let Some(f) = finalizer {
            let list = new["metadata"].as_object_mut().map(|m| m.entry("finalizers").or_insert_with(|| json!([])));
            if let Some(Value::Array(a)) = list {
                if !a.iter().any(|x| x == f) {
                    a.push(json!(f));
                }
            }
        }
        let has_finalizers = new["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty())
            || (kind.plural == "namespaces" && new["spec"]["finalizers"].as_array().is_some_and(|f| !f.is_empty()));
        if has_finalizers || graceful {
            if new["metadata"]["deletionTimestamp"].is_null() {
                new["metadata"]["deletionTimestamp"] = json!(now());
                new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            }
            if new == old {
                return Ok(old);
            }
            if opts.dry_run {
                return Ok(new);
            }
            match state.store.update(&key, encode(&new), rev).await {
                Ok(r) => return Ok(with_rv(new, r)),
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound(_)) => return Err(ApiError::not_found(kind.group, kind.plural, name)),
                Err(e) => return Err(e.into()),
            }
        }
        if opts.dry_run {
            return Ok(old);
        }
        match state.store.delete(&key, Some(rev)).await {
            Ok((r, _)) => return Ok(with_rv(old, r)),
            Err(StoreError::Conflict { .. }) => continue,
            Err(StoreError::NotFound(_)) => return Err(ApiError::not_found(kind.group, kind.plural, name)),
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::modified(kind.group, kind.plural, name))
}

async fn delete_collection(
    state: &Shared,
    kind: &'static Kind,
    ns: Option<&str>,
    q: &Query,
    body: &[u8],
) -> ApiResult<Response> {
    let opts = delete_options(q, body)?;
    let sel = Selectors::from_query(kind, q)?;
    let current = state.store.current_revision().await?;
    wait_for_cache(state, current).await?;
    let (items, _) = state.cache.list(kind.storage, &kind.storage_prefix(ns));
    let mut deleted = Vec::new();
    for (_, obj) in items.iter().filter(|(_, o)| sel.matches(o)) {
        let name = obj["metadata"]["name"].as_str().unwrap_or("");
        let item_ns = obj["metadata"]["namespace"].as_str();
        match delete_object(state, kind, item_ns, name, &opts).await {
            Ok(v) => deleted.push(present(kind, &v)),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let list = json!({"kind": kind.list_kind, "apiVersion": kind.api_version(), "metadata": {"resourceVersion": state.cache.revision().to_string()}, "items": deleted});
    Ok(json_response(StatusCode::OK, &list))
}

// ---------- subresources ----------

fn selector_string(kind: &Kind, obj: &Value) -> String {
    let sel = &obj["spec"]["selector"];
    if kind.plural == "replicationcontrollers" {
        return sel
            .as_object()
            .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect::<Vec<_>>().join(","))
            .unwrap_or_default();
    }
    let mut parts: Vec<String> = sel["matchLabels"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect())
        .unwrap_or_default();
    for e in sel["matchExpressions"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let key = e["key"].as_str().unwrap_or("");
        let values: Vec<&str> =
            e["values"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        match e["operator"].as_str().unwrap_or("") {
            "In" => parts.push(format!("{key} in ({})", values.join(","))),
            "NotIn" => parts.push(format!("{key} notin ({})", values.join(","))),
            "Exists" => parts.push(key.to_string()),
            "DoesNotExist" => parts.push(format!("!{key}")),
            _ => {}
        }
    }
    parts.join(",")
}

fn scale_of(kind: &Kind, obj: &Value) -> Value {
    let m = &obj["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {"name": m["name"], "namespace": m["namespace"], "uid": m["uid"], "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"]},
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector_string(kind, obj)},
    })
}

async fn scale(w: &Write<'_>, name: &str, method: Method) -> ApiResult<Response> {
    let Write { state, kind, ns, q, ct, body, manager } = *w;
    if method == Method::GET {
        let obj = get(state, kind, ns, name, q).await?;
        return Ok(json_response(StatusCode::OK, &scale_of(kind, &obj)));
    }
    let dry_run = q.dry_run()?;
    for _ in 0..MAX_RETRIES {
        let Some((old, rev)) = load(state, kind, ns, name).await? else {
            return Err(ApiError::not_found(kind.group, kind.plural, name));
        };
        let current = scale_of(kind, &old);
        let requested = match method {
            Method::PUT => decode_object(ct, body)?,
            Method::PATCH => {
                let pt = patch_type(ct)?;
                let doc =
                    if pt == PatchType::Apply { super::negotiate::decode_yaml(body)? } else { decode_json(body)? };
                let gk = skiff_patch::GroupKind { group: "autoscaling".into(), kind: "Scale".into() };
                let r = match pt {
                    PatchType::Json => skiff_patch::json_patch(&current, &doc),
                    PatchType::Merge => skiff_patch::merge_patch(&current, &doc),
                    PatchType::Strategic => skiff_patch::strategic_merge_patch(&current, &doc, &gk),
                    PatchType::Apply => skiff_patch::apply(
                        Some(&current),
                        &doc,
                        manager,
                        &gk,
                        q.flag("force") && q.get("force").is_some(),
                    ),
                };
                r.map_err(patch_error)?
            }
            _ => return Err(ApiError::method_not_allowed("scale supports get, update and patch")),
        };
        let replicas = &requested["spec"]["replicas"];
        let Some(r) = replicas.as_i64().filter(|r| *r >= 0) else {
            return Err(ApiError::invalid(
                "autoscaling",
                "Scale",
                name,
                vec![Cause::invalid("spec.replicas", replicas, "must be greater than or equal to 0")],
            ));
        };
        if let Some(want) = requested["metadata"]["resourceVersion"].as_str().filter(|s| !s.is_empty()) {
            if want != rev.to_string() {
                return Err(ApiError::modified(kind.group, kind.plural, name));
            }
        }
        let mut new = old.clone();
        new["spec"]["replicas"] = json!(r);
        let new = prepare_update(kind, new, &old, Part::Main, Some(manager))?;
        match write_update(state, kind, ns, name, new, &old, rev, dry_run).await {
            Ok(v) => return Ok(json_response(StatusCode::OK, &scale_of(kind, &v))),
            Err(WriteError::Conflict) => continue,
            Err(WriteError::Api(e)) => return Err(e),
        }
    }
    Err(ApiError::modified(kind.group, kind.plural, name))
}

/// `pods/binding`: the scheduler's way of assigning a pod to a node, once.
async fn bind(state: &Shared, kind: &'static Kind, ns: Option<&str>, name: &str, body: &[u8]) -> ApiResult<Response> {
    let b = decode_json(body)?;
    let node = b["target"]["name"].as_str().unwrap_or("");
    if node.is_empty() {
        return Err(ApiError::invalid("", "Binding", name, vec![Cause::required("target.name")]));
    }
    for _ in 0..MAX_RETRIES {
        let Some((old, rev)) = load(state, kind, ns, name).await? else {
            return Err(ApiError::not_found(kind.group, kind.plural, name));
        };
        if !old["metadata"]["deletionTimestamp"].is_null() {
            return Err(ApiError::conflict(
                kind.group,
                kind.plural,
                name,
                "pod is being deleted, cannot be assigned to a host",
            ));
        }
        if let Some(current) = old["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            return Err(ApiError::conflict(
                kind.group,
                kind.plural,
                name,
                &format!("pod {name} is already assigned to node \"{current}\""),
            ));
        }
        let mut new = old.clone();
        new["spec"]["nodeName"] = json!(node);
        let conds = new["status"].as_object_mut().map(|s| s.entry("conditions").or_insert_with(|| json!([])));
        if let Some(Value::Array(c)) = conds {
            c.retain(|x| x["type"] != "PodScheduled");
            c.push(
                json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now()}),
            );
        }
        match state.store.update(&key_of(kind, ns, name), encode(&new), rev).await {
            Ok(_) => {
                let s = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201});
                return Ok(json_response(StatusCode::CREATED, &s));
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::modified(kind.group, kind.plural, name))
}

/// `namespaces/<name>/finalize`: how the namespace controller removes `spec.finalizers`.
async fn finalize_namespace(state: &Shared, name: &str, ct: &str, body: &[u8]) -> ApiResult<Response> {
    let kind =
        crate::registry::find("", "v1", "namespaces").ok_or_else(|| ApiError::internal("namespaces kind missing"))?;
    let req = decode_object(ct, body)?;
    for _ in 0..MAX_RETRIES {
        let Some((old, rev)) = load(state, kind, None, name).await? else {
            return Err(ApiError::not_found("", "namespaces", name));
        };
        let mut new = old.clone();
        new["spec"]["finalizers"] = req["spec"]["finalizers"].clone();
        if new["spec"]["finalizers"].is_null() {
            new["spec"]["finalizers"] = json!([]);
        }
        match write_update(state, kind, None, name, new, &old, rev, false).await {
            Ok(v) => return Ok(json_response(StatusCode::OK, &present(kind, &v))),
            Err(WriteError::Conflict) => continue,
            Err(WriteError::Api(e)) => return Err(e),
        }
    }
    Err(ApiError::modified("", "namespaces", name))
}
