//! The cluster's credentials: a CA, the API server's serving certificate and the admin token.
//!
//! Generated on first start into `<data-dir>/pki/` and reused afterwards, so a kubeconfig written
//! once stays valid across restarts.

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

pub struct Pki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub admin_token: String,
}

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const SERVER_CERT: &str = "apiserver.crt";
const SERVER_KEY: &str = "apiserver.key";
const ADMIN_TOKEN: &str = "admin.token";

/// Loads the PKI from `dir`, generating whatever is missing. `extra_ips` are added to the serving
/// certificate's SANs (the listen address and the `kubernetes` service's ClusterIP).
pub fn load_or_create(dir: &Path, extra_ips: &[IpAddr]) -> Result<Pki> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let p = |f: &str| -> PathBuf { dir.join(f) };
    if !p(CA_CERT).exists() || !p(CA_KEY).exists() {
        let key = KeyPair::generate()?;
        let cert = ca_params()?.self_signed(&key)?;
        write_secret(&p(CA_KEY), &key.serialize_pem())?;
        std::fs::write(p(CA_CERT), cert.pem())?;
        // A new CA invalidates any serving certificate signed by an old one.
        let _ = std::fs::remove_file(p(SERVER_CERT));
    }
    let ca_pem = std::fs::read_to_string(p(CA_CERT))?;
    if !p(SERVER_CERT).exists() || !p(SERVER_KEY).exists() {
        let ca_key = KeyPair::from_pem(&std::fs::read_to_string(p(CA_KEY))?)?;
        // The issuer is identified by its name and key; re-deriving the parameters avoids
        // parsing the stored certificate.
        let issuer = Issuer::new(ca_params()?, ca_key);
        let key = KeyPair::generate()?;
        let mut names: Vec<String> = vec![
            "localhost".into(),
            "kubernetes".into(),
            "kubernetes.default".into(),
            "kubernetes.default.svc".into(),
            "kubernetes.default.svc.cluster.local".into(),
        ];
        if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
            let h = h.trim();
            if !h.is_empty() {
                names.push(h.to_string());
            }
        }
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, "kube-apiserver");
        let mut ips: Vec<IpAddr> = vec!["127.0.0.1".parse()?];
        ips.extend(extra_ips.iter().copied().filter(|ip| !ip.is_unspecified()));
        ips.dedup();
        for ip in ips {
            params.subject_alt_names.push(SanType::IpAddress(ip));
        }
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let cert = params.signed_by(&key, &issuer)?;
        write_secret(&p(SERVER_KEY), &key.serialize_pem())?;
        std::fs::write(p(SERVER_CERT), cert.pem())?;
    }
    if !p(ADMIN_TOKEN).exists() {
        let bytes: [u8; 24] = rand::random();
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        write_secret(&p(ADMIN_TOKEN), &token)?;
    }
    Ok(Pki {
        ca_pem,
        cert_pem: std::fs::read_to_string(p(SERVER_CERT))?,
        key_pem: std::fs::read_to_string(p(SERVER_KEY))?,
        admin_token: std::fs::read_to_string(p(ADMIN_TOKEN))?.trim().to_string(),
    })
}

fn ca_params() -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, "skiff-ca");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = rcgen::date_time_ymd(2026, 1, 1);
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    Ok(params)
}

fn write_secret(path: &Path, content: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(content.as_bytes())?;
    Ok(())
}

/// A kubeconfig for the admin user, embedding the CA so it works from any directory.
pub fn kubeconfig(server: &str, ca_pem: &str, token: &str) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: skiff\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: skiff\n  context:\n    cluster: skiff\n    user: admin\n    namespace: default\ncurrent-context: skiff\n"
    )
}

/// rustls server configuration from the PEM certificate and key.
pub fn server_tls(pki: &Pki) -> Result<rustls::ServerConfig> {
    let certs = rustls_pemfile::certs(&mut pki.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut pki.key_pem.as_bytes())?.context("no private key in apiserver.key")?;
    let mut cfg =
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}
