//! Runs the real kubectl (when installed) against a tiny loopback HTTP server that serves these
//! documents plus just enough discovery, and checks what kubectl does with them:
//! `create` sends `fieldValidation=Strict`, client-side `apply` computes a strategic merge patch
//! from the v3 schemas (with `$setElementOrder` by merge key) without falling back to
//! `/openapi/v2`, and `explain` resolves nested fields.
//!
//! Skipped (passes) when `/usr/bin/kubectl` is absent.

use serde_json::{Value, json};
use skiff_openapi::{Documents, PatchMeta, ResourceDoc, build};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const KUBECTL: &str = "/usr/bin/kubectl";
const ALL: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

fn rules(_group: &str, kind: &str, path: &[&str]) -> Option<PatchMeta> {
    let m = |k| Some(PatchMeta { strategy: "merge", merge_key: Some(k) });
    let spec = match (kind, path) {
        ("Pod", ["spec", rest @ ..]) => rest,
        ("Deployment", ["spec", "template", "spec", rest @ ..]) => rest,
        _ => return None,
    };
    match spec {
        ["containers"] => m("name"),
        ["containers", "ports"] => m("containerPort"),
        ["containers", "env"] => m("name"),
        _ => None,
    }
}

struct Server {
    addr: String,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn objects() -> Vec<(&'static str, Value)> {
    let with_last_applied = |mut v: Value| {
        let last = v.to_string();
        v["metadata"]["annotations"] = json!({ "kubectl.kubernetes.io/last-applied-configuration": last });
        v["metadata"]["resourceVersion"] = json!("5");
        v
    };
    vec![
        (
            "/api/v1/namespaces/default/pods/x",
            with_last_applied(json!({
                "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "x", "namespace": "default" },
                "spec": { "containers": [{ "name": "c", "image": "nginx", "ports": [{ "containerPort": 80 }] }] }
            })),
        ),
        (
            "/apis/apps/v1/namespaces/default/deployments/d",
            with_last_applied(json!({
                "apiVersion": "apps/v1", "kind": "Deployment", "metadata": { "name": "d", "namespace": "default" },
                "spec": { "selector": { "matchLabels": { "app": "d" } },
                  "template": { "metadata": { "labels": { "app": "d" } },
                    "spec": { "containers": [{ "name": "c", "image": "nginx", "env": [{ "name": "A", "value": "1" }] }] } } }
            })),
        ),
    ]
}

fn discovery(path: &str) -> Option<Value> {
    let verbs = ALL;
    Some(match path {
        "/version" => {
            json!({ "major": "1", "minor": "33", "gitVersion": "v1.33.0", "platform": "linux/amd64" })
        }
        "/api" => {
            json!({ "kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:1" }] })
        }
        "/apis" => json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": [{ "name": "apps",
            "versions": [{ "groupVersion": "apps/v1", "version": "v1" }], "preferredVersion": { "groupVersion": "apps/v1", "version": "v1" } }] }),
        "/api/v1" => json!({ "kind": "APIResourceList", "groupVersion": "v1", "resources": [
            { "name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod", "verbs": verbs, "shortNames": ["po"] }] }),
        "/apis/apps/v1" => {
            json!({ "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "apps/v1", "resources": [
            { "name": "deployments", "singularName": "deployment", "namespaced": true, "kind": "Deployment", "verbs": verbs }] })
        }
        _ => return None,
    })
}

fn respond(stream: &mut TcpStream, code: u16, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

fn handle(mut stream: TcpStream, docs: &Documents, requests: &Mutex<Vec<String>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(clone) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(clone);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut content_type = String::new();
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("content-type:") {
            content_type = h["content-type:".len()..].trim().to_string();
        }
    }
    let mut body = vec![0u8; length];
    let _ = reader.read_exact(&mut body);
    let body = String::from_utf8_lossy(&body).into_owned();
    if let Ok(mut r) = requests.lock() {
        r.push(format!("{method} {target} CT={content_type} {body}"));
    }

    let path = target.split('?').next().unwrap_or("").trim_end_matches('/').to_string();
    if path == "/openapi/v3" {
        return respond(&mut stream, 200, &docs.index_bytes());
    }
    if let Some(doc) = path.strip_prefix("/openapi/v3/") {
        return match docs.get(doc) {
            Some((_, bytes)) => respond(&mut stream, 200, bytes),
            None => respond(&mut stream, 404, b"{}"),
        };
    }
    if let Some(v) = discovery(&path) {
        return respond(&mut stream, 200, v.to_string().as_bytes());
    }
    if let Some((_, obj)) = objects().into_iter().find(|(p, _)| *p == path) {
        return respond(&mut stream, 200, obj.to_string().as_bytes());
    }
    if method == "POST" {
        return respond(&mut stream, 201, body.as_bytes());
    }
    respond(
        &mut stream,
        404,
        br#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#,
    );
}

fn serve(docs: Documents) -> Option<Server> {
    let listener = TcpListener::bind("127.0.0.1:0").ok()?;
    let addr = listener.local_addr().ok()?.to_string();
    listener.set_nonblocking(true).ok()?;
    let requests = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let docs = Arc::new(docs);
    let (r, s) = (requests.clone(), stop.clone());
    std::thread::spawn(move || {
        while !s.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((stream, _)) => {
                    let _ = stream.set_nonblocking(false);
                    let (d, r) = (docs.clone(), r.clone());
                    std::thread::spawn(move || handle(stream, &d, &r));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    Some(Server { addr, requests, stop })
}

fn kubectl(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("timeout")
        .arg("60")
        .arg(KUBECTL)
        .args(args)
        .env("KUBECONFIG", dir.join("kubeconfig"))
        .env("HOME", dir)
        .output();
    match out {
        Ok(o) => (
            o.status.success(),
            format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
        ),
        Err(e) => (false, e.to_string()),
    }
}

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("skiff-openapi-kubectl-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

#[test]
fn real_kubectl_uses_the_documents() {
    if !Path::new(KUBECTL).exists() {
        eprintln!("kubectl not installed; skipping");
        return;
    }
    let resources = vec![
        ResourceDoc::of::<k8s_openapi::api::core::v1::Pod>("pods", true, vec!["status"], ALL.to_vec()),
        ResourceDoc::of::<k8s_openapi::api::apps::v1::Deployment>(
            "deployments",
            true,
            vec!["status", "scale"],
            ALL.to_vec(),
        ),
    ];
    let server = serve(build(&resources, &rules)).expect("loopback listener");
    let dir = scratch_dir();
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: f, cluster: {{server: \"http://{}\"}}}}]\n\
         users: [{{name: u, user: {{}}}}]\ncontexts: [{{name: f, context: {{cluster: f, user: u, namespace: default}}}}]\ncurrent-context: f\n",
        server.addr
    );
    std::fs::write(dir.join("kubeconfig"), kubeconfig).expect("kubeconfig");
    std::fs::write(
        dir.join("pod.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: x, namespace: default}\nspec:\n  containers:\n  - name: c\n    image: nginx:2\n    ports: [{containerPort: 80}, {containerPort: 443}]\n",
    )
    .expect("pod.yaml");
    std::fs::write(
        dir.join("dep.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: default}\nspec:\n  selector: {matchLabels: {app: d}}\n  template:\n    metadata: {labels: {app: d}}\n    spec:\n      containers:\n      - name: c\n        image: nginx\n        env: [{name: B, value: \"2\"}, {name: A, value: \"1\"}]\n",
    )
    .expect("dep.yaml");
    let file = |f: &str| dir.join(f).to_string_lossy().into_owned();

    let (ok, out) = kubectl(&dir, &["create", "-f", &file("pod.yaml")]);
    assert!(ok, "create: {out}");
    let (ok, out) = kubectl(&dir, &["apply", "-f", &file("pod.yaml")]);
    assert!(ok, "apply pod: {out}");
    assert!(!out.contains("warning"), "apply pod warned: {out}");
    let (ok, out) = kubectl(&dir, &["apply", "-f", &file("dep.yaml")]);
    assert!(ok, "apply deployment: {out}");
    let (ok, out) = kubectl(&dir, &["explain", "deployments.spec.template.spec.containers.ports"]);
    assert!(ok && out.contains("containerPort"), "explain: {out}");

    let log = server.requests.lock().map(|r| r.clone()).unwrap_or_default();
    let find = |prefix: &str| log.iter().find(|l| l.starts_with(prefix)).cloned().unwrap_or_default();
    assert!(find("POST /api/v1/namespaces/default/pods?").contains("fieldValidation=Strict"), "{log:#?}");
    let pod_patch = find("PATCH /api/v1/namespaces/default/pods/x?");
    assert!(pod_patch.contains("CT=application/strategic-merge-patch+json"), "{pod_patch}");
    assert!(pod_patch.contains("fieldValidation=Strict"), "{pod_patch}");
    assert!(pod_patch.contains(r#""$setElementOrder/containers":[{"name":"c"}]"#), "{pod_patch}");
    assert!(
        pod_patch.contains(r#""$setElementOrder/ports":[{"containerPort":80},{"containerPort":443}]"#),
        "{pod_patch}"
    );
    let dep_patch = find("PATCH /apis/apps/v1/namespaces/default/deployments/d?");
    assert!(dep_patch.contains(r#""$setElementOrder/env":[{"name":"B"},{"name":"A"}]"#), "{dep_patch}");
    assert!(!log.iter().any(|l| l.contains("/openapi/v2")), "kubectl fell back to /openapi/v2: {log:#?}");

    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
