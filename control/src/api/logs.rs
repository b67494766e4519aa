//! `pods/{name}/log`: the API server finds the pod's node and proxies the request to the agent's
//! HTTPS endpoint there (`/containerLogs/{ns}/{pod}/{container}`), streaming the answer back, as
//! Kubernetes' API server does with the kubelet. The agent's serving certificate is self-signed
//! and not verified (Kubernetes' default without `--kubelet-certificate-authority`); the agent
//! checks the bearer token this server presents.

use super::Shared;
use super::negotiate::Query;
use crate::status::{ApiError, ApiResult};
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::sync::Arc;

/// Accepts any server certificate: see the module comment.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn container_names(pod: &Value, key: &str) -> Vec<String> {
    pod["spec"][key].as_array().into_iter().flatten().filter_map(|c| c["name"].as_str().map(String::from)).collect()
}

pub async fn pod_log(state: &Shared, pod: Value, q: &Query) -> ApiResult<Response> {
    let name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("").to_string();
    let apps = container_names(&pod, "containers");
    let inits = container_names(&pod, "initContainers");
    let container = match q.get("container").filter(|c| !c.is_empty()) {
        Some(c) => c.to_string(),
        None if apps.len() == 1 => apps[0].clone(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                apps.join(" ")
            )));
        }
    };
    if !apps.contains(&container) && !inits.contains(&container) {
        return Err(ApiError::bad_request(format!("container {container} is not valid for pod {name}")));
    }
    for (k, v) in [
        ("tailLines", q.get("tailLines")),
        ("limitBytes", q.get("limitBytes")),
        ("sinceSeconds", q.get("sinceSeconds")),
    ] {
        if let Some(v) = v {
            if v.parse::<i64>().map_or(true, |n| n < 0 || (k != "tailLines" && n == 0)) {
                return Err(ApiError::bad_request(format!("{k}: invalid value {v:?}: must be a positive integer")));
            }
        }
    }
    let node_name = pod["spec"]["nodeName"].as_str().unwrap_or("");
    if node_name.is_empty() {
        return Err(ApiError::bad_request(format!("pod {name} does not have a host assigned")));
    }
    let nodes = crate::registry::find("", "v1", "nodes").expect("nodes are registered");
    let node = state
        .cache
        .get(nodes.storage, &nodes.storage_key(None, node_name))
        .ok_or_else(|| ApiError::bad_request(format!("node {node_name:?} not found")))?;
    let node = &*node.value;
    let ip = node["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str())
        .ok_or_else(|| ApiError::bad_request(format!("node {node_name} has no InternalIP address")))?
        .to_string();
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"].as_u64().unwrap_or(10250);
    let mut query = Vec::new();
    for k in ["follow", "previous", "timestamps", "tailLines", "sinceSeconds", "limitBytes"] {
        if let Some(v) = q.get(k) {
            query.push(format!("{k}={v}"));
        }
    }
    let path = format!("/containerLogs/{ns}/{name}/{container}?{}", query.join("&"));
    proxy(state, &ip, port as u16, &path).await
}

async fn proxy(state: &Shared, ip: &str, port: u16, path: &str) -> ApiResult<Response> {
    let unavailable = |e: String| ApiError::new(503, "ServiceUnavailable", e);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| unavailable(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let addr = format!("{ip}:{port}");
    let tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|e| unavailable(format!("dial tcp {addr}: connect: {e}")))?;
    let server_name =
        rustls::pki_types::ServerName::try_from(ip.to_string()).map_err(|e| unavailable(e.to_string()))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(server_name, tcp)
        .await
        .map_err(|e| unavailable(format!("TLS to the node agent at {addr}: {e}")))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| unavailable(e.to_string()))?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", &addr)
        .header("authorization", format!("Bearer {}", state.admin_token))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| unavailable(e.to_string()))?;
    let resp = sender.send_request(req).await.map_err(|e| unavailable(e.to_string()))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let msg = String::from_utf8_lossy(&body).trim().to_string();
        return Err(match status.as_u16() {
            400 => ApiError::bad_request(msg),
            404 => ApiError::new(404, "NotFound", msg),
            code => ApiError::new(503, "ServiceUnavailable", format!("node agent answered {code}: {msg}")),
        });
    }
    let body = Body::from_stream(resp.into_body().into_data_stream());
    Ok(([("content-type", "text/plain")], body).into_response())
}
