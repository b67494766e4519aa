//! The HTTP surface: routing, authentication, content negotiation. Every resource request ends
//! in the one generic REST path ([`rest`]).

pub mod alloc;
pub mod discovery;
mod logs;
mod negotiate;
pub mod rest;
mod watch;

use crate::cache::Cache;
use crate::registry::{self, Kind};
use crate::status::{ApiError, ApiResult};
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use skiff_storage::Store;
use std::sync::Arc;

pub use negotiate::Query;

/// Request bodies above this are refused with 413, as Kubernetes does (3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

pub struct AppState {
    pub store: Arc<dyn Store>,
    pub cache: Arc<Cache>,
    pub admin_token: String,
    pub openapi: skiff_openapi::Documents,
    pub allocator: alloc::Allocator,
    /// The address clients use to reach the API (`serverAddressByClientCIDRs`).
    pub server_address: String,
    pub health: Arc<crate::health::Health>,
}

pub type Shared = Arc<AppState>;

pub fn router(state: Shared) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(state)
}

async fn handle(axum::extract::State(state): axum::extract::State<Shared>, req: Request<Body>) -> Response {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let started = std::time::Instant::now();
    let resp = match dispatch(&state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    tracing::debug!(%method, %path, status = resp.status().as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "request");
    resp
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (code, [("content-type", "application/json")], serde_json::to_vec(v).unwrap_or_default()).into_response()
}

fn ok(v: &Value) -> Response {
    json_response(StatusCode::OK, v)
}

/// Paths anyone may read, as Kubernetes' `system:public-info-viewer` role allows.
fn public(path: &str) -> bool {
    matches!(path, "/version" | "/healthz" | "/livez" | "/readyz")
        || path.starts_with("/livez/")
        || path.starts_with("/readyz/")
        || path.starts_with("/healthz/")
}

fn authenticated(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(h) = headers.get("authorization").and_then(|v| v.to_str().ok()) else { return false };
    let Some(token) = h.strip_prefix("Bearer ").map(str::trim) else { return false };
    constant_time_eq(token.as_bytes(), state.admin_token.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn dispatch(state: &Shared, req: Request<Body>) -> ApiResult<Response> {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let path = if path.is_empty() { "/".to_string() } else { path };
    if !public(&path) && !authenticated(state, req.headers()) {
        return Err(ApiError::unauthorized());
    }
    let query = Query::parse(req.uri().query().unwrap_or(""));
    let accept = req.headers().get("accept").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let method = req.method().clone();
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| urlencoding::decode(s).map(|c| c.into_owned()).unwrap_or_else(|_| s.to_string()))
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();

    if method == Method::GET {
        match segs.as_slice() {
            ["version"] => return Ok(ok(&version())),
            ["healthz"] | ["livez"] => return Ok((StatusCode::OK, "ok").into_response()),
            ["readyz"] => return Ok(state.health.readyz(query.get("verbose").is_some()).await),
            ["api"] => {
                return Ok(if discovery::wants_aggregated(&accept) {
                    (
                        StatusCode::OK,
                        [("content-type", discovery::AGGREGATED_CT)],
                        discovery::aggregated(true).to_string(),
                    )
                        .into_response()
                } else {
                    ok(&discovery::api_versions(&state.server_address))
                });
            }
            ["apis"] => {
                return Ok(if discovery::wants_aggregated(&accept) {
                    (
                        StatusCode::OK,
                        [("content-type", discovery::AGGREGATED_CT)],
                        discovery::aggregated(false).to_string(),
                    )
                        .into_response()
                } else {
                    ok(&discovery::api_group_list())
                });
            }
            ["api", "v1"] => {
                return discovery::api_resource_list("", "v1").map(|d| ok(&d)).ok_or_else(|| not_found_path(&path));
            }
            ["apis", group] => return discovery::api_group(group).map(|d| ok(&d)).ok_or_else(|| not_found_path(&path)),
            ["apis", group, version] => {
                return discovery::api_resource_list(group, version)
                    .map(|d| ok(&d))
                    .ok_or_else(|| not_found_path(&path));
            }
            ["openapi", "v3"] => return Ok(ok(&state.openapi.index)),
            // kubectl falls back to the v2 document for kinds it finds no v3 schema for (e.g. a
            // group-version Skiff does not serve). An empty Swagger 2.0 document lets it go on to
            // report the unknown kind the way Kubernetes users know, instead of a 404 abort.
            ["openapi", "v2"] => {
                return Ok(if accept.contains("protobuf") {
                    // gnostic openapi_v2.Document { swagger: "2.0" }
                    (
                        StatusCode::OK,
                        [("content-type", "application/com.github.proto-openapi.spec.v2.v1.0+protobuf")],
                        Bytes::from_static(b"\x0a\x032.0"),
                    )
                        .into_response()
                } else {
                    ok(
                        &json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.33.0"}, "paths": {}, "definitions": {}}),
                    )
                });
            }
            ["openapi", "v3", rest @ ..] => {
                let key = rest.join("/");
                return match state.openapi.by_path.get(&key) {
                    Some((_, bytes)) => {
                        Ok((StatusCode::OK, [("content-type", "application/json")], bytes.clone()).into_response())
                    }
                    None => Err(not_found_path(&path)),
                };
            }
            _ => {}
        }
    }

    // Resource paths: /api/v1/... and /apis/<group>/<version>/...
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["api", "v1", rest @ ..] if !rest.is_empty() => ("", "v1", rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (g, v, rest),
        _ => return Err(not_found_path(&path)),
    };
    let target = parse_target(group, version, rest).ok_or_else(|| not_found_path(&path))?;
    let headers = req.headers().clone();
    let body = read_body(req).await?;
    rest::serve(state, method, target, query, &headers, &accept, body).await
}

async fn read_body(req: Request<Body>) -> ApiResult<Bytes> {
    let body = req.into_body();
    match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => Ok(b),
        Err(e) => {
            // axum reports an exceeded limit as a length-limit error in the source chain.
            let msg = format!("{e:?}");
            if msg.contains("LengthLimit") || msg.contains("length limit") {
                Err(ApiError::too_large())
            } else {
                Err(ApiError::bad_request(format!("reading request body: {e}")))
            }
        }
    }
}

fn not_found_path(path: &str) -> ApiError {
    let mut e = ApiError::new(404, "NotFound", "the server could not find the requested resource");
    e.details = Some(
        json!({"causes": [{"reason": "UnexpectedServerResponse", "message": format!("404 page not found: {path}")}]}),
    );
    e
}

/// What a resource request addresses.
pub struct Target {
    pub kind: &'static Kind,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

fn parse_target(group: &str, version: &str, rest: &[&str]) -> Option<Target> {
    let find = |plural: &str| registry::find(group, version, plural);
    let t = |kind, ns: Option<&str>, name: Option<&str>, sub: Option<&str>| {
        Some(Target {
            kind,
            namespace: ns.map(str::to_string),
            name: name.map(str::to_string),
            subresource: sub.map(str::to_string),
        })
    };
    match rest {
        // /namespaces/{name}/status|finalize: the namespace's own subresources.
        ["namespaces", name, sub @ ("status" | "finalize")] if group.is_empty() => {
            t(find("namespaces")?, None, Some(name), Some(sub))
        }
        ["namespaces", ns, plural] => {
            let k = find(plural)?;
            k.namespaced.then_some(())?;
            t(k, Some(ns), None, None)
        }
        ["namespaces", ns, plural, name] => {
            let k = find(plural)?;
            k.namespaced.then_some(())?;
            t(k, Some(ns), Some(name), None)
        }
        ["namespaces", ns, plural, name, sub] => {
            let k = find(plural)?;
            k.namespaced.then_some(())?;
            t(k, Some(ns), Some(name), Some(sub))
        }
        [plural] => t(find(plural)?, None, None, None),
        [plural, name] => {
            let k = find(plural)?;
            (!k.namespaced).then_some(())?;
            t(k, None, Some(name), None)
        }
        [plural, name, sub] => {
            let k = find(plural)?;
            (!k.namespaced).then_some(())?;
            t(k, None, Some(name), Some(sub))
        }
        _ => None,
    }
}

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "emulationMajor": "1",
        "emulationMinor": "33",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "32",
        "gitVersion": concat!("v1.33.0+skiff-", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "2026-11-26T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, if std::env::consts::ARCH == "x86_64" { "amd64" } else { std::env::consts::ARCH }),
    })
}

/// Request metadata the REST layer needs besides the body.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

pub fn negotiate_output_is_table(accept: &str) -> bool {
    negotiate::output(accept) == negotiate::Output::Table
}
