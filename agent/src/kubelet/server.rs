//! The agent's HTTPS endpoint (Kubernetes' kubelet port, 10250): container logs, which the API
//! server's `pods/log` subresource proxies to. It serves a certificate it generates itself (the
//! API server, like Kubernetes' by default, does not verify kubelet serving certificates) and
//! accepts only the bearer token it is configured with.

use super::Kubelet;
use crate::runtime::LogOptions;
use anyhow::{Context, Result};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

fn tls_config(k: &Kubelet) -> Result<rustls::ServerConfig> {
    let mut names = vec![k.cfg.node_name.clone(), "localhost".to_string()];
    names.push(k.cfg.node_ip.to_string());
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(names)?;
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("{}@skiff-agent", k.cfg.node_name));
    let cert = params.self_signed(&key)?;
    let der = rustls_pki_types::CertificateDer::from(cert.der().to_vec());
    let key = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![der], key)?;
    Ok(cfg)
}

pub async fn serve(k: Arc<Kubelet>) -> Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tower::ServiceExt;
    let addr = SocketAddr::new(k.cfg.node_ip.into(), k.cfg.port);
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding the agent endpoint {addr}"))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&k)?));
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/containerLogs/{ns}/{pod}/{container}", axum::routing::get(logs))
        .with_state(k.clone());
    tracing::info!(%addr, "agent endpoint listening");
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else { return };
            let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                app.clone().oneshot(req.map(axum::body::Body::new))
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}

fn authorized(k: &Kubelet, headers: &HeaderMap) -> bool {
    let Some(expected) = k.cfg.auth_token.as_deref() else { return false };
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t == expected)
}

fn flag(q: &HashMap<String, String>, name: &str) -> bool {
    q.get(name).is_some_and(|v| v == "true" || v == "1")
}

async fn logs(
    State(k): State<Arc<Kubelet>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&k, &headers) {
        return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
    }
    let Some(p) = k.find_pod(&ns, &pod) else {
        return (StatusCode::NOT_FOUND, format!("pod {ns}/{pod} not found on node {}", k.cfg.node_name))
            .into_response();
    };
    let uid = p.metadata.uid.clone().unwrap_or_default();
    let containers = match k.runtime.list(&Kubelet::pod_label_filter(&uid)).await {
        Ok(c) => c,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("container runtime: {e:#}")).into_response(),
    };
    let previous = flag(&q, "previous");
    let Some(c) = super::pod::pick_instance(&containers, &container, previous) else {
        let msg = if previous {
            format!("previous terminated container \"{container}\" in pod \"{pod}\" not found")
        } else {
            format!("container \"{container}\" in pod \"{pod}\" is waiting to start: ContainerCreating")
        };
        return (StatusCode::BAD_REQUEST, msg).into_response();
    };
    let opts = LogOptions {
        follow: flag(&q, "follow"),
        tail: q.get("tailLines").and_then(|v| v.parse().ok()),
        timestamps: flag(&q, "timestamps"),
        since_seconds: q.get("sinceSeconds").and_then(|v| v.parse().ok()),
    };
    let limit: Option<usize> = q.get("limitBytes").and_then(|v| v.parse().ok());
    let stream = k.runtime.logs(&c.id, &opts);
    let body = match limit {
        Some(max) => axum::body::Body::from_stream(stream.scan(0usize, move |sent, r| {
            let out = match r {
                Ok(_) if *sent >= max => None,
                Ok(b) => {
                    let keep = b.len().min(max - *sent);
                    *sent += keep;
                    Some(Ok(b.slice(..keep)))
                }
                Err(e) => Some(Err(std::io::Error::other(e))),
            };
            futures::future::ready(out)
        })),
        None => axum::body::Body::from_stream(stream.map(|r| r.map_err(std::io::Error::other))),
    };
    ([("content-type", "text/plain")], body).into_response()
}
