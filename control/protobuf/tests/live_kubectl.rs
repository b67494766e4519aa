//! Runs the real kubectl 1.33 against a minimal fake API server on loopback, captures the
//! protobuf bodies its generators POST, and checks that each decodes to exactly what the same
//! command prints with `--dry-run=client -o json`. Skipped where kubectl 1.33 is not installed.
//!
//! `SKIFF_REGEN_FIXTURES=1` also rewrites `tests/fixtures/<case>.{pb,json}` from this run, which
//! is how the committed fixtures were made (except `secret-tls`, whose certificate files are not
//! kept in the repository, and `other/token.pb`, as `create token` has no dry run).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

const KUBECTL: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.33";
/// kubectl 1.33's `autoscale` tries autoscaling/v2 first and then v1; 1.28 prints the v1 object.
const KUBECTL_V1_HPA: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.28";

struct Post {
    path: String,
    content_type: String,
    body: Vec<u8>,
}

type Posts = Arc<Mutex<Vec<Post>>>;

/// (resource, kind, namespaced, shortNames)
type Resource = (&'static str, &'static str, bool, &'static [&'static str]);

/// Discovery: the group versions and resources the commands below need.
const RESOURCES: &[(&str, &[Resource])] = &[
    (
        "v1",
        &[
            ("configmaps", "ConfigMap", true, &["cm"]),
            ("secrets", "Secret", true, &[]),
            ("services", "Service", true, &["svc"]),
            ("namespaces", "Namespace", false, &["ns"]),
            ("serviceaccounts", "ServiceAccount", true, &["sa"]),
            ("serviceaccounts/token", "TokenRequest", true, &[]),
            ("resourcequotas", "ResourceQuota", true, &["quota"]),
            ("pods", "Pod", true, &["po"]),
            ("replicationcontrollers", "ReplicationController", true, &["rc"]),
            ("replicationcontrollers/scale", "Scale", true, &[]),
        ],
    ),
    ("apps/v1", &[("deployments", "Deployment", true, &["deploy"]), ("deployments/scale", "Scale", true, &[])]),
    ("batch/v1", &[("jobs", "Job", true, &[]), ("cronjobs", "CronJob", true, &["cj"])]),
    ("autoscaling/v1", &[("horizontalpodautoscalers", "HorizontalPodAutoscaler", true, &["hpa"])]),
    ("autoscaling/v2", &[("horizontalpodautoscalers", "HorizontalPodAutoscaler", true, &["hpa"])]),
    ("scheduling.k8s.io/v1", &[("priorityclasses", "PriorityClass", false, &["pc"])]),
    (
        "rbac.authorization.k8s.io/v1",
        &[
            ("roles", "Role", true, &[]),
            ("clusterroles", "ClusterRole", false, &[]),
            ("rolebindings", "RoleBinding", true, &[]),
            ("clusterrolebindings", "ClusterRoleBinding", false, &[]),
        ],
    ),
    ("policy/v1", &[("poddisruptionbudgets", "PodDisruptionBudget", true, &["pdb"])]),
    ("networking.k8s.io/v1", &[("ingresses", "Ingress", true, &["ing"])]),
];

/// Objects that commands read before they create something.
fn existing(path: &str) -> Option<serde_json::Value> {
    use serde_json::json;
    Some(match path {
        "/api/v1/namespaces/default/replicationcontrollers/x" => json!({
            "apiVersion": "v1", "kind": "ReplicationController",
            "metadata": {"name": "x", "namespace": "default", "uid": "u1"},
            "spec": {"replicas": 1, "selector": {"app": "x"}, "template": {"metadata": {"labels": {"app": "x"}},
                "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 8080}]}]}}}
        }),
        "/apis/apps/v1/namespaces/default/deployments/web" => json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "uid": "u2", "labels": {"app": "web"}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 8080, "protocol": "TCP"}]}]}}}
        }),
        // Pointer fields set to zero values, an inline VolumeSource, IntOrString ports, quantities.
        "/apis/batch/v1/namespaces/default/cronjobs/cj1" => json!({
            "apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": "cj1", "namespace": "default", "uid": "3f1c2a9e-0000-4000-8000-000000000001"},
            "spec": {"schedule": "* * * * *", "jobTemplate": {"metadata": {"labels": {"j": "t"}}, "spec": {
                "backoffLimit": 0, "activeDeadlineSeconds": 60,
                "template": {"spec": {
                    "restartPolicy": "Never", "terminationGracePeriodSeconds": 0,
                    "securityContext": {"runAsUser": 0, "runAsNonRoot": false},
                    "containers": [{"name": "c", "image": "busybox", "args": ["date"],
                        "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}},
                        "env": [{"name": "A", "value": ""}, {"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                        "livenessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 5},
                        "volumeMounts": [{"name": "v", "mountPath": "/v", "readOnly": false}]}],
                    "volumes": [{"name": "v", "emptyDir": {}}, {"name": "cm", "configMap": {"name": "cm1", "defaultMode": 420, "optional": false}}]
                }}
            }}}
        }),
        _ => return None,
    })
}

fn respond(stream: &mut TcpStream, code: u16, body: &serde_json::Value) -> std::io::Result<()> {
    let body = serde_json::to_vec(body).unwrap();
    write!(stream, "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len())?;
    stream.write_all(&body)
}

fn serve(stream: TcpStream, posts: Posts) -> std::io::Result<()> {
    use serde_json::json;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut stream = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
        let (mut len, mut content_type) = (0usize, String::new());
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => len = v.trim().parse().unwrap_or(0),
                    "content-type" => content_type = v.trim().to_string(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        let path = target.split('?').next().unwrap_or("").to_string();
        if method == "POST" {
            posts.lock().unwrap().push(Post { path, content_type, body });
            // kubectl prints the error and exits; the body is all this test wants.
            respond(
                &mut stream,
                409,
                &json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                "reason": "AlreadyExists", "code": 409, "message": "captured"}),
            )?;
            continue;
        }
        let gv = path.strip_prefix("/apis/").or_else(|| path.strip_prefix("/api/")).unwrap_or("");
        let reply = if path == "/api" {
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
        } else if path == "/apis" {
            let mut groups: Vec<(String, Vec<String>)> = Vec::new();
            for (gv, _) in RESOURCES.iter().filter(|(gv, _)| gv.contains('/')) {
                let (g, v) = gv.split_once('/').unwrap();
                match groups.iter_mut().find(|(name, _)| name == g) {
                    Some((_, vs)) => vs.push(v.to_string()),
                    None => groups.push((g.to_string(), vec![v.to_string()])),
                }
            }
            let groups: Vec<_> = groups
                .iter()
                .map(|(g, vs)| {
                    let versions: Vec<_> =
                        vs.iter().map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v})).collect();
                    json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
                })
                .collect();
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        } else if let Some((_, res)) = RESOURCES.iter().find(|(g, _)| *g == gv) {
            let resources: Vec<_> = res
                .iter()
                .map(|(name, kind, namespaced, short)| {
                    let mut r = json!({"name": name, "singularName": "", "namespaced": namespaced, "kind": kind,
                        "verbs": ["create", "get", "list", "delete", "update", "patch"], "shortNames": short});
                    if *kind == "Scale" {
                        r["group"] = json!("autoscaling");
                        r["version"] = json!("v1");
                    }
                    r
                })
                .collect();
            json!({"kind": "APIResourceList", "groupVersion": gv, "resources": resources})
        } else if let Some(obj) = existing(&path) {
            obj
        } else {
            respond(
                &mut stream,
                404,
                &json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                "reason": "NotFound", "code": 404}),
            )?;
            continue;
        };
        respond(&mut stream, 200, &reply)?;
    }
}

struct Case {
    name: &'static str,
    args: &'static [&'static str],
    /// Which of the command's POSTs to check (autoscale sends v2, then v1).
    post: usize,
    /// kubectl whose dry run prints the expected object, when not the 1.33 one.
    dry_run_kubectl: Option<&'static str>,
}

const fn case(name: &'static str, args: &'static [&'static str]) -> Case {
    Case { name, args, post: 0, dry_run_kubectl: None }
}

const CASES: &[Case] = &[
    case(
        "configmap",
        &["create", "configmap", "cm1", "--from-literal=a=b", "--from-literal=empty=", "--validate=false"],
    ),
    case(
        "secret-generic",
        &[
            "create",
            "secret",
            "generic",
            "s1",
            "--from-literal=k=v",
            "--from-literal=e=",
            "--type=Opaque",
            "--validate=false",
        ],
    ),
    case(
        "secret-docker",
        &[
            "create",
            "secret",
            "docker-registry",
            "reg",
            "--docker-server=r.example",
            "--docker-username=u",
            "--docker-password=p",
            "--docker-email=e@x",
            "--validate=false",
        ],
    ),
    case(
        "deployment",
        &["create", "deployment", "web", "--image=nginx:1.27", "--port=80", "--replicas=3", "--validate=false"],
    ),
    case(
        "deployment-zero",
        &["create", "deployment", "zero", "--image=a", "--image=b", "--replicas=0", "--validate=false"],
    ),
    case(
        "deployment-cmd",
        &["create", "deployment", "cmd", "--image=busybox", "--validate=false", "--", "sleep", "10"],
    ),
    case(
        "service-clusterip",
        &["create", "service", "clusterip", "svc", "--tcp=5678:8080", "--tcp=53:dns", "--validate=false"],
    ),
    case("service-headless", &["create", "service", "clusterip", "headless", "--clusterip=None", "--validate=false"]),
    case(
        "service-nodeport",
        &["create", "service", "nodeport", "np", "--tcp=80:8080", "--node-port=30080", "--validate=false"],
    ),
    case("service-lb", &["create", "service", "loadbalancer", "lb", "--tcp=443:https", "--validate=false"]),
    case(
        "service-externalname",
        &["create", "service", "externalname", "ext", "--external-name=example.com", "--validate=false"],
    ),
    case("namespace", &["create", "namespace", "ns1", "--validate=false"]),
    case("job", &["create", "job", "j1", "--image=busybox", "--validate=false", "--", "echo", "hi"]),
    case("job-from-cronjob", &["create", "job", "manual", "--from=cronjob/cj1", "--validate=false"]),
    case(
        "cronjob",
        &[
            "create",
            "cronjob",
            "cj1",
            "--image=busybox",
            "--schedule=*/5 * * * *",
            "--restart=Never",
            "--validate=false",
            "--",
            "date",
        ],
    ),
    case("serviceaccount", &["create", "serviceaccount", "sa1", "--validate=false"]),
    case(
        "quota",
        &[
            "create",
            "quota",
            "q1",
            "--hard=cpu=1,memory=1G,pods=2,requests.storage=500Mi",
            "--scopes=BestEffort,NotTerminating",
            "--validate=false",
        ],
    ),
    case(
        "priorityclass",
        &[
            "create",
            "priorityclass",
            "pc0",
            "--value=0",
            "--preemption-policy=Never",
            "--description=zero",
            "--validate=false",
        ],
    ),
    case(
        "priorityclass-default",
        &["create", "priorityclass", "pc1", "--value=1000", "--global-default=true", "--validate=false"],
    ),
    case(
        "role",
        &[
            "create",
            "role",
            "r1",
            "--verb=get,list",
            "--resource=pods,deployments.apps",
            "--resource-name=a",
            "--validate=false",
        ],
    ),
    case(
        "clusterrole",
        &["create", "clusterrole", "cr1", "--verb=get", "--non-resource-url=/healthz", "--validate=false"],
    ),
    case(
        "rolebinding",
        &[
            "create",
            "rolebinding",
            "rb1",
            "--role=r1",
            "--user=u",
            "--serviceaccount=default:sa1",
            "--group=g",
            "--validate=false",
        ],
    ),
    case(
        "clusterrolebinding",
        &["create", "clusterrolebinding", "crb1", "--clusterrole=cr1", "--user=u", "--validate=false"],
    ),
    case(
        "pdb",
        &["create", "poddisruptionbudget", "pdb1", "--selector=app=x", "--min-available=50%", "--validate=false"],
    ),
    case(
        "pdb-int",
        &["create", "poddisruptionbudget", "pdb2", "--selector=app=x", "--max-unavailable=0", "--validate=false"],
    ),
    case(
        "ingress",
        &[
            "create",
            "ingress",
            "ing1",
            "--rule=foo.com/bar*=svc:8080,tls=secret1",
            "--class=nginx",
            "--annotation=a=b",
            "--validate=false",
        ],
    ),
    case("hpa-v2", &["autoscale", "rc", "x", "--min=1", "--max=10", "--cpu-percent=50"]),
    Case {
        name: "hpa-v1",
        args: &["autoscale", "rc", "x", "--min=1", "--max=10", "--cpu-percent=50"],
        post: 1,
        dry_run_kubectl: Some(KUBECTL_V1_HPA),
    },
    case("hpa-nomin-v2", &["autoscale", "deployment", "web", "--max=3"]),
    Case {
        name: "hpa-nomin-v1",
        args: &["autoscale", "deployment", "web", "--max=3"],
        post: 1,
        dry_run_kubectl: Some(KUBECTL_V1_HPA),
    },
];

fn kubectl(bin: &str, server: &str, cache: &Path, args: &[&str], dry_run: bool) -> std::process::Output {
    // Flags must come before a `--` that starts the container command.
    let split = args.iter().position(|a| *a == "--").unwrap_or(args.len());
    let mut cmd = Command::new(bin);
    cmd.env("KUBECONFIG", "/nonexistent")
        .env("HOME", cache)
        .args(["--server", server, "--cache-dir", cache.to_str().unwrap(), "--request-timeout=20s", "-n", "default"])
        .args(&args[..split]);
    if dry_run {
        cmd.args(["--dry-run=client", "-o", "json"]);
    }
    cmd.args(&args[split..]).output().expect("run kubectl")
}

#[test]
fn kubectl_bodies_decode_to_kubectls_own_json() {
    if !Path::new(KUBECTL).exists() {
        eprintln!("skipping: {KUBECTL} not installed");
        return;
    }
    let regen = std::env::var_os("SKIFF_REGEN_FIXTURES").is_some();
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = format!("http://{}", listener.local_addr().unwrap());
    let posts: Posts = Arc::default();
    let accept_posts = posts.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let posts = accept_posts.clone();
            std::thread::spawn(move || serve(stream, posts));
        }
    });
    let cache = std::env::temp_dir().join(format!("skiff-protobuf-kubectl-{}", std::process::id()));
    std::fs::create_dir_all(&cache).unwrap();

    let mut failures = Vec::new();
    let mut checked = 0;
    for case in CASES {
        let dry_bin = case.dry_run_kubectl.unwrap_or(KUBECTL);
        if !Path::new(dry_bin).exists() {
            eprintln!("{}: skipped, {dry_bin} not installed", case.name);
            continue;
        }
        posts.lock().unwrap().clear();
        let run = kubectl(KUBECTL, &server, &cache, case.args, false);
        let captured = std::mem::take(&mut *posts.lock().unwrap());
        let Some(post) = captured.get(case.post) else {
            failures.push(format!("{}: no POST #{} ({})", case.name, case.post, String::from_utf8_lossy(&run.stderr)));
            continue;
        };
        if post.content_type != skiff_protobuf::CONTENT_TYPE {
            failures.push(format!("{}: POST {} sent {}", case.name, post.path, post.content_type));
            continue;
        }
        let dry = kubectl(dry_bin, &server, &cache, case.args, true);
        let want: serde_json::Value = match serde_json::from_slice(&dry.stdout) {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!("{}: dry run: {e}: {}", case.name, String::from_utf8_lossy(&dry.stderr)));
                continue;
            }
        };
        match skiff_protobuf::decode(&post.body) {
            Ok(got) if got == want => checked += 1,
            Ok(got) => failures.push(format!("{}: got {got}\nwant {want}", case.name)),
            Err(e) => failures.push(format!("{}: {e}", case.name)),
        }
        if regen {
            std::fs::write(fixtures.join(format!("{}.pb", case.name)), &post.body).unwrap();
            std::fs::write(fixtures.join(format!("{}.json", case.name)), &dry.stdout).unwrap();
        }
    }
    let _ = std::fs::remove_dir_all(&cache);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked >= 26, "only {checked} cases checked");
}
