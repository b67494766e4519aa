//! What a kubectl user sees when driving Skiff with the seed's manifests.
//!
//! Every test starts its own `skiff control` (killed on drop) and talks to it with the real
//! `/usr/bin/kubectl`. Table output is parsed into columns (by the header's column offsets) rather
//! than matched line by line, so only the facts Kubernetes guarantees are asserted.

use serde_json::Value;
use skiff_tests::{Control, seed};
use std::io::Read;
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// helpers

fn start() -> Control {
    Control::start().expect("skiff control starts")
}

fn seed_arg(name: &str) -> String {
    seed(name).to_string_lossy().into_owned()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Creates one seed manifest and checks kubectl's `<kind>/<name> created` line.
fn create_seed(c: &Control, file: &str, expect: &str) {
    let out = c.kubectl_ok(&["create", "-f", &seed_arg(file)]);
    assert_eq!(out.trim(), format!("{expect} created"), "kubectl create -f {file}");
}

/// `kubectl get ... -o json` parsed.
fn get_json(c: &Control, args: &[&str]) -> Value {
    let mut a: Vec<&str> = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    let out = c.kubectl_ok(&a);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("kubectl {} printed invalid JSON ({e}):\n{out}", a.join(" ")))
}

/// A kubectl table (`get` without `-o`): column names and the cells of each row, cut at the
/// header's column offsets (kubectl's tabwriter aligns every row on them).
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    text: String,
}

impl Table {
    fn parse(text: &str) -> Table {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let head = lines.next().unwrap_or_else(|| panic!("no table header in output:\n{text}"));
        // A column starts at 0 and wherever a non-space follows two or more spaces ("NOMINATED NODE"
        // has a single space inside one column name).
        let bytes = head.as_bytes();
        let mut starts = vec![0usize];
        let mut spaces = 0;
        for (i, b) in bytes.iter().enumerate() {
            if *b == b' ' {
                spaces += 1;
            } else {
                if spaces >= 2 && i > 0 {
                    starts.push(i);
                }
                spaces = 0;
            }
        }
        let cut = |line: &str| -> Vec<String> {
            (0..starts.len())
                .map(|k| {
                    let a = starts[k].min(line.len());
                    let b = if k + 1 < starts.len() { starts[k + 1].min(line.len()) } else { line.len() };
                    line.get(a..b).unwrap_or("").trim().to_string()
                })
                .collect()
        };
        let header = cut(head);
        let rows = lines.map(cut).collect();
        Table { header, rows, text: text.to_string() }
    }

    fn assert_header(&self, want: &[&str]) {
        assert_eq!(self.header, want, "table columns differ from Kubernetes'; output:\n{}", self.text);
    }

    fn col(&self, name: &str) -> usize {
        self.header.iter().position(|h| h == name).unwrap_or_else(|| panic!("no column {name} in:\n{}", self.text))
    }

    /// The row whose NAME column is `name`.
    fn row(&self, name: &str) -> &Vec<String> {
        let n = self.col("NAME");
        self.rows.iter().find(|r| r[n] == name).unwrap_or_else(|| panic!("no row named {name} in:\n{}", self.text))
    }

    fn cell(&self, name: &str, col: &str) -> &str {
        &self.row(name)[self.col(col)]
    }

    fn names(&self) -> Vec<&str> {
        let n = self.col("NAME");
        self.rows.iter().map(|r| r[n].as_str()).collect()
    }
}

fn kubectl_table(c: &Control, args: &[&str]) -> Table {
    Table::parse(&c.kubectl_ok(args))
}

/// An AGE cell: `0s`, `12s`, `3m4s`, ... (a number followed by a unit).
fn assert_age(age: &str) {
    assert!(
        age.chars().next().is_some_and(|c| c.is_ascii_digit())
            && age.chars().last().is_some_and(|c| "smhdy".contains(c)),
        "AGE {age:?} is not a kubectl duration"
    );
}

fn in_service_range(ip: &str) -> bool {
    // 10.96.0.0/12 = 10.96.0.0 .. 10.111.255.255
    ip.parse::<Ipv4Addr>()
        .map(|a| u32::from(a) & 0xfff0_0000 == u32::from(Ipv4Addr::new(10, 96, 0, 0)))
        .unwrap_or(false)
}

/// A pod manifest named `name` with one nginx:1.7.9 container (like the seed's pod-nginx.yaml).
fn pod_yaml(name: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers:\n  - name: nginx\n    image: {image}\n    ports:\n    - containerPort: 80\n"
    )
}

/// The seed's pod-nginx.yaml with a different image.
fn seed_nginx_with_image(image: &str) -> String {
    let text = std::fs::read_to_string(seed("pod-nginx.yaml")).expect("seed pod-nginx.yaml");
    assert!(text.contains("image: nginx:1.7.9"), "seed pod-nginx.yaml changed:\n{text}");
    text.replace("image: nginx:1.7.9", &format!("image: {image}"))
}

/// A background kubectl (e.g. `get -w`) whose stdout is collected; killed and reaped on drop.
struct Background {
    child: Child,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
}

impl Background {
    fn spawn(c: &Control, args: &[&str]) -> Background {
        let mut child = Command::new("/usr/bin/kubectl")
            .arg("--kubeconfig")
            .arg(&c.kubeconfig)
            .arg("--cache-dir")
            .arg(c.dir.path().join("kube-cache"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        let out = Arc::new(Mutex::new(String::new()));
        let err = Arc::new(Mutex::new(String::new()));
        for (pipe, buf) in [
            (Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>, out.clone()),
            (Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>, err.clone()),
        ] {
            std::thread::spawn(move || {
                let mut pipe = pipe;
                let mut chunk = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    buf.lock().unwrap().push_str(&String::from_utf8_lossy(&chunk[..n]));
                }
            });
        }
        Background { child, out, err }
    }

    fn stdout(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    /// Waits (bounded) until `pred(stdout)` holds; false on timeout.
    fn wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if pred(&self.stdout()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        pred(&self.stdout())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// create -f of each seed manifest + get columns

#[test]
fn create_seed_pods_and_get_pods_columns() {
    let c = start();
    create_seed(&c, "pod-nginx.yaml", "pod/nginx");
    create_seed(&c, "pod-redis.yaml", "pod/redis");
    create_seed(&c, "pod-www.yaml", "pod/www");

    let t = kubectl_table(&c, &["get", "pods"]);
    t.assert_header(&["NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
    let mut names = t.names();
    names.sort();
    assert_eq!(names, ["nginx", "redis", "www"], "get pods:\n{}", t.text);
    for (name, ready) in [("nginx", "0/1"), ("redis", "0/1"), ("www", "0/2")] {
        assert_eq!(t.cell(name, "READY"), ready, "READY of {name}:\n{}", t.text);
        assert_eq!(t.cell(name, "STATUS"), "Pending", "STATUS of {name}:\n{}", t.text);
        assert_eq!(t.cell(name, "RESTARTS"), "0", "RESTARTS of {name}:\n{}", t.text);
        assert_age(t.cell(name, "AGE"));
    }

    // A single object by name prints the same columns.
    let one = kubectl_table(&c, &["get", "pod", "www"]);
    one.assert_header(&["NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
    assert_eq!(one.names(), ["www"]);
    assert_eq!(one.cell("www", "READY"), "0/2");

    // The stored objects are the manifests' (volumes, mounts, env), not just their names.
    let www = get_json(&c, &["pod", "www"]);
    assert_eq!(www["spec"]["containers"][1]["image"], "kubernetes/git-monitor", "{www:#}");
    assert_eq!(www["spec"]["containers"][1]["env"][0]["value"], "http://github.com/some/repo.git", "{www:#}");
    assert_eq!(www["spec"]["containers"][0]["volumeMounts"][0]["readOnly"], true, "{www:#}");
    let redis = get_json(&c, &["pod", "redis"]);
    assert_eq!(redis["spec"]["volumes"][0]["name"], "redis-persistent-storage", "{redis:#}");
    assert!(redis["spec"]["volumes"][0]["emptyDir"].is_object(), "{redis:#}");
    assert_eq!(redis["spec"]["containers"][0]["volumeMounts"][0]["mountPath"], "/data/redis", "{redis:#}");
}

#[test]
fn create_seed_services_and_get_services_columns() {
    let c = start();
    create_seed(&c, "redis-master-service.yaml", "service/redis-master");
    create_seed(&c, "frontend-service.yaml", "service/frontend");

    let t = kubectl_table(&c, &["get", "services"]);
    t.assert_header(&["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]);
    let mut names = t.names();
    names.sort();
    assert_eq!(names, ["frontend", "kubernetes", "redis-master"], "get services:\n{}", t.text);

    assert_eq!(t.cell("kubernetes", "TYPE"), "ClusterIP", "{}", t.text);
    assert_eq!(t.cell("kubernetes", "CLUSTER-IP"), "10.96.0.1", "{}", t.text);
    assert_eq!(t.cell("kubernetes", "EXTERNAL-IP"), "<none>", "{}", t.text);
    assert_eq!(t.cell("kubernetes", "PORT(S)"), "443/TCP", "{}", t.text);

    assert_eq!(t.cell("redis-master", "TYPE"), "ClusterIP", "{}", t.text);
    assert_eq!(t.cell("redis-master", "EXTERNAL-IP"), "<none>", "{}", t.text);
    assert_eq!(t.cell("redis-master", "PORT(S)"), "6379/TCP", "{}", t.text);
    let redis_ip = t.cell("redis-master", "CLUSTER-IP");
    assert!(
        in_service_range(redis_ip) && redis_ip != "10.96.0.1",
        "redis-master CLUSTER-IP {redis_ip} not a fresh 10.96.0.0/12 address"
    );

    assert_eq!(t.cell("frontend", "TYPE"), "NodePort", "{}", t.text);
    assert_eq!(t.cell("frontend", "EXTERNAL-IP"), "<none>", "{}", t.text);
    let front_ip = t.cell("frontend", "CLUSTER-IP");
    assert!(
        in_service_range(front_ip) && front_ip != "10.96.0.1",
        "frontend CLUSTER-IP {front_ip} not a fresh 10.96.0.0/12 address"
    );
    assert_ne!(front_ip, redis_ip, "two services share a cluster IP");
    let ports = t.cell("frontend", "PORT(S)");
    let node_port: u16 = ports
        .strip_prefix("80:")
        .and_then(|p| p.strip_suffix("/TCP"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("frontend PORT(S) {ports:?} is not 80:<nodePort>/TCP"));
    assert!((30000..=32767).contains(&node_port), "nodePort {node_port} outside 30000-32767");

    // The table agrees with the object.
    let svc = get_json(&c, &["svc", "frontend"]);
    assert_eq!(svc["spec"]["ports"][0]["nodePort"], node_port, "{svc:#}");
    assert_eq!(svc["spec"]["clusterIP"], front_ip, "{svc:#}");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 80, "targetPort defaults to port: {svc:#}");
    assert_eq!(svc["spec"]["selector"]["name"], "frontend", "{svc:#}");
}

#[test]
fn create_seed_rc_and_get_rc_columns() {
    let c = start();
    create_seed(&c, "frontend-controller.yaml", "replicationcontroller/frontend");
    let t = kubectl_table(&c, &["get", "rc"]);
    t.assert_header(&["NAME", "DESIRED", "CURRENT", "READY", "AGE"]);
    assert_eq!(t.names(), ["frontend"], "{}", t.text);
    assert_eq!(t.cell("frontend", "DESIRED"), "3", "{}", t.text);
    for col in ["CURRENT", "READY"] {
        let v = t.cell("frontend", col);
        assert!(v.parse::<u32>().is_ok_and(|n| n <= 3), "{col} {v:?} is not a count of at most 3:\n{}", t.text);
    }
    assert_age(t.cell("frontend", "AGE"));
    // Long name and short name are the same resource.
    let long = kubectl_table(&c, &["get", "replicationcontrollers", "frontend"]);
    assert_eq!(long.cell("frontend", "DESIRED"), "3");
    let rc = get_json(&c, &["rc", "frontend"]);
    assert_eq!(
        rc["spec"]["template"]["spec"]["containers"][0]["image"], "gcr.io/google_samples/gb-frontend:v3",
        "{rc:#}"
    );
    assert_eq!(rc["spec"]["template"]["spec"]["containers"][0]["env"][0]["name"], "GET_HOST_FROM", "{rc:#}");
}

/// `extensions/v1beta1` HorizontalPodAutoscaler was removed long before 1.33: kubectl refuses the
/// seed's HPA the way it does against Kubernetes (no REST mapping for the kind), and nothing is stored.
#[test]
fn create_seed_hpa_extensions_v1beta1_has_no_mapping() {
    let c = start();
    let out = c.kubectl(&["create", "-f", &seed_arg("hpa-extensions-v1beta1.yaml")]);
    let err = stderr(&out);
    assert!(!out.status.success(), "created a removed API version: {}", stdout(&out));
    assert!(
        err.contains(r#"no matches for kind "HorizontalPodAutoscaler" in version "extensions/v1beta1""#),
        "expected Kubernetes' `resource mapping not found ... no matches for kind \"HorizontalPodAutoscaler\" in version \"extensions/v1beta1\"`, got:\n{err}"
    );
    let none = c.kubectl(&["get", "hpa"]);
    assert!(none.status.success(), "get hpa: {}", stderr(&none));
    assert!(
        stdout(&none).trim().is_empty() && stderr(&none).contains("No resources found"),
        "get hpa: {}{}",
        stdout(&none),
        stderr(&none)
    );
}

// ---------------------------------------------------------------------------------------------
// apply

#[test]
fn apply_twice_with_changed_image_then_unchanged() {
    let c = start();
    let seed_file = seed_arg("pod-nginx.yaml");
    assert_eq!(c.kubectl_ok(&["apply", "-f", &seed_file]).trim(), "pod/nginx created");
    let first = get_json(&c, &["pod", "nginx"]);
    let last_applied = first["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
        .as_str()
        .unwrap_or_else(|| panic!("no last-applied-configuration annotation: {first:#}"));
    let la: Value = serde_json::from_str(last_applied).expect("last-applied is JSON");
    assert_eq!(la["spec"]["containers"][0]["image"], "nginx:1.7.9", "{la:#}");

    // A label added out of band is not in last-applied: the 3-way merge must keep it.
    c.kubectl_ok(&["label", "pod", "nginx", "added-by=hand"]);

    let changed = seed_nginx_with_image("nginx:1.9.1");
    let out = c.kubectl_stdin(&["apply", "-f", "-"], Some(&changed));
    assert!(out.status.success(), "apply with nginx:1.9.1: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "pod/nginx configured");

    let pod = get_json(&c, &["pod", "nginx"]);
    let containers = pod["spec"]["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "strategic merge must merge containers by name, not append: {pod:#}");
    assert_eq!(containers[0]["name"], "nginx");
    assert_eq!(containers[0]["image"], "nginx:1.9.1", "image not changed: {pod:#}");
    assert_eq!(containers[0]["ports"][0]["containerPort"], 80, "ports lost: {pod:#}");
    assert_eq!(containers[0]["ports"].as_array().map(|p| p.len()), Some(1), "{pod:#}");
    assert_eq!(pod["metadata"]["uid"], first["metadata"]["uid"], "apply must patch, not recreate");
    assert_eq!(pod["metadata"]["labels"]["added-by"], "hand", "apply dropped a label it never managed: {pod:#}");
    let la: Value = serde_json::from_str(
        pod["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .as_str()
            .expect("last-applied after 2nd apply"),
    )
    .expect("last-applied is JSON");
    assert_eq!(la["spec"]["containers"][0]["image"], "nginx:1.9.1", "last-applied not updated: {la:#}");

    let out = c.kubectl_stdin(&["apply", "-f", "-"], Some(&changed));
    assert!(out.status.success(), "third apply: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "pod/nginx unchanged");
    let again = get_json(&c, &["pod", "nginx"]);
    assert_eq!(
        again["metadata"]["resourceVersion"], pod["metadata"]["resourceVersion"],
        "an unchanged apply wrote the object"
    );
}

#[test]
fn apply_server_side_create_then_change_image() {
    let c = start();
    let out = c.kubectl_ok(&["apply", "--server-side", "-f", &seed_arg("pod-nginx.yaml")]);
    assert_eq!(out.trim(), "pod/nginx serverside-applied");
    let pod = get_json(&c, &["pod", "nginx", "--show-managed-fields"]);
    assert_eq!(pod["spec"]["containers"][0]["image"], "nginx:1.7.9", "{pod:#}");
    let managed = pod["metadata"]["managedFields"].as_array().unwrap_or_else(|| panic!("no managedFields: {pod:#}"));
    assert!(
        managed.iter().any(|m| m["manager"] == "kubectl" && m["operation"] == "Apply"),
        "no kubectl Apply entry in managedFields: {managed:#?}"
    );
    let uid = pod["metadata"]["uid"].clone();

    let out = c.kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(&seed_nginx_with_image("nginx:1.9.1")));
    assert!(out.status.success(), "second server-side apply: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "pod/nginx serverside-applied");
    let pod = get_json(&c, &["pod", "nginx"]);
    assert_eq!(pod["spec"]["containers"][0]["image"], "nginx:1.9.1", "{pod:#}");
    assert_eq!(pod["spec"]["containers"][0]["ports"][0]["containerPort"], 80, "{pod:#}");
    assert_eq!(pod["spec"]["containers"].as_array().map(|a| a.len()), Some(1), "{pod:#}");
    assert_eq!(pod["metadata"]["uid"], uid, "server-side apply must patch, not recreate");
}

// ---------------------------------------------------------------------------------------------
// get -w

#[test]
fn get_watch_sees_added_modified_deleted_in_order() {
    let c = start();
    create_seed(&c, "pod-nginx.yaml", "pod/nginx");
    let w = Background::spawn(&c, &["get", "pods", "--watch", "--output-watch-events"]);
    // The initial list arrives as ADDED: once nginx is printed the watch is established.
    let ready =
        w.wait_for(Duration::from_secs(10), |o| o.lines().any(|l| l.split_whitespace().take(2).eq(["ADDED", "nginx"])));
    assert!(ready, "watch never printed the existing pod; stdout:\n{}\nstderr:\n{}", w.stdout(), w.stderr());

    let out = c.kubectl_stdin(&["create", "-f", "-"], Some(&pod_yaml("watched", "nginx:1.7.9")));
    assert!(out.status.success(), "{}", stderr(&out));
    c.kubectl_ok(&["label", "pod", "watched", "seen=yes"]);
    c.kubectl_ok(&["delete", "pod", "watched", "--wait=false"]);

    let events = |o: &str| -> Vec<String> {
        o.lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let ev = f.next()?;
                (f.next()? == "watched").then(|| ev.to_string())
            })
            .collect()
    };
    let done = w.wait_for(Duration::from_secs(10), |o| events(o).iter().any(|e| e == "DELETED"));
    let text = w.stdout();
    drop(w);
    assert!(done, "no DELETED event within 10 s; watch printed:\n{text}");

    let head = Table::parse(&text);
    head.assert_header(&["EVENT", "NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
    let ev = events(&text);
    let added = ev.iter().position(|e| e == "ADDED");
    let modified = ev.iter().position(|e| e == "MODIFIED");
    let deleted = ev.iter().position(|e| e == "DELETED");
    assert!(
        matches!((added, modified, deleted), (Some(a), Some(m), Some(d)) if a < m && m < d),
        "expected ADDED, then MODIFIED, then DELETED for pod watched; got {ev:?} from:\n{text}"
    );
    assert_eq!(ev.first().map(String::as_str), Some("ADDED"), "first event for a new pod must be ADDED: {ev:?}");
    assert_eq!(ev.last().map(String::as_str), Some("DELETED"), "nothing may follow DELETED: {ev:?}");
    assert!(ev.iter().all(|e| ["ADDED", "MODIFIED", "DELETED"].contains(&e.as_str())), "unexpected event types {ev:?}");
}

// ---------------------------------------------------------------------------------------------
// describe / delete / replace --force

/// `describe` output's `Key:   value` line (first occurrence, any indentation).
fn describe_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.trim_start().strip_prefix(&format!("{key}:")).map(str::trim))
}

#[test]
fn describe_pod_and_nodeport_service() {
    let c = start();
    create_seed(&c, "pod-nginx.yaml", "pod/nginx");
    create_seed(&c, "frontend-service.yaml", "service/frontend");

    let d = c.kubectl_ok(&["describe", "pod", "nginx"]);
    assert_eq!(describe_field(&d, "Name"), Some("nginx"), "{d}");
    assert_eq!(describe_field(&d, "Namespace"), Some("default"), "{d}");
    assert_eq!(describe_field(&d, "Status"), Some("Pending"), "{d}");
    assert_eq!(describe_field(&d, "Image"), Some("nginx:1.7.9"), "{d}");
    assert_eq!(describe_field(&d, "Port"), Some("80/TCP"), "{d}");
    assert!(d.lines().any(|l| l.trim_end() == "  nginx:"), "no container section `  nginx:`:\n{d}");

    let nodeport = get_json(&c, &["svc", "frontend"])["spec"]["ports"][0]["nodePort"].as_u64().expect("nodePort");
    let d = c.kubectl_ok(&["describe", "svc", "frontend"]);
    assert_eq!(describe_field(&d, "Name"), Some("frontend"), "{d}");
    assert_eq!(describe_field(&d, "Type"), Some("NodePort"), "{d}");
    assert_eq!(describe_field(&d, "Selector"), Some("name=frontend"), "{d}");
    assert_eq!(describe_field(&d, "Port"), Some("<unset>  80/TCP"), "{d}");
    assert_eq!(describe_field(&d, "NodePort").map(|v| v.to_string()), Some(format!("<unset>  {nodeport}/TCP")), "{d}");
}

#[test]
fn delete_pod_then_get_is_not_found() {
    let c = start();
    create_seed(&c, "pod-nginx.yaml", "pod/nginx");
    assert_eq!(c.kubectl_ok(&["delete", "pod", "nginx"]).trim(), r#"pod "nginx" deleted"#);
    let out = c.kubectl(&["get", "pod", "nginx"]);
    assert!(!out.status.success(), "get after delete succeeded: {}", stdout(&out));
    assert_eq!(stderr(&out).trim(), r#"Error from server (NotFound): pods "nginx" not found"#);
    // Deleting it again is a NotFound too.
    let err = c.kubectl_err(&["delete", "pod", "nginx"]);
    assert_eq!(err.trim(), r#"Error from server (NotFound): pods "nginx" not found"#);
}

#[test]
fn replace_force_recreates_service() {
    let c = start();
    create_seed(&c, "frontend-service.yaml", "service/frontend");
    let before = get_json(&c, &["svc", "frontend"]);
    let out = c.kubectl_ok(&["replace", "--force", "-f", &seed_arg("frontend-service.yaml")]);
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert!(lines.contains(&r#"service "frontend" deleted"#), "replace --force output:\n{out}");
    assert!(lines.contains(&"service/frontend replaced"), "replace --force output:\n{out}");
    let after = get_json(&c, &["svc", "frontend"]);
    assert_eq!(after["spec"]["type"], "NodePort", "{after:#}");
    let uid = after["metadata"]["uid"].as_str().unwrap_or_default();
    assert!(!uid.is_empty(), "recreated service has no uid: {after:#}");
    assert_ne!(after["metadata"]["uid"], before["metadata"]["uid"], "--force deletes and creates: the uid must be new");
    let t = kubectl_table(&c, &["get", "svc", "frontend"]);
    assert_eq!(t.cell("frontend", "TYPE"), "NodePort");
}

// ---------------------------------------------------------------------------------------------
// scale / expose / label

#[test]
fn scale_rc_and_current_replicas_precondition() {
    let c = start();
    create_seed(&c, "frontend-controller.yaml", "replicationcontroller/frontend");
    let replicas = |c: &Control| get_json(c, &["rc", "frontend"])["spec"]["replicas"].as_i64();
    assert_eq!(replicas(&c), Some(3));

    assert_eq!(
        c.kubectl_ok(&["scale", "rc", "frontend", "--replicas=5"]).trim(),
        "replicationcontroller/frontend scaled"
    );
    assert_eq!(replicas(&c), Some(5));
    assert_eq!(kubectl_table(&c, &["get", "rc", "frontend"]).cell("frontend", "DESIRED"), "5");

    assert_eq!(
        c.kubectl_ok(&["scale", "rc", "frontend", "--replicas=3"]).trim(),
        "replicationcontroller/frontend scaled"
    );
    assert_eq!(replicas(&c), Some(3));

    // A matching precondition is honoured.
    c.kubectl_ok(&["scale", "rc", "frontend", "--current-replicas=3", "--replicas=2"]);
    assert_eq!(replicas(&c), Some(2));

    // A wrong one is refused with expected vs actual, and nothing changes.
    let err = c.kubectl_err(&["scale", "rc", "frontend", "--current-replicas=5", "--replicas=1"]);
    assert!(err.contains("Expected replicas to be 5, was 2"), "scale precondition error: {err}");
    assert_eq!(replicas(&c), Some(2));

    // The scale subresource reads back the same count.
    let scale = c.kubectl_ok(&["get", "--raw", "/api/v1/namespaces/default/replicationcontrollers/frontend/scale"]);
    let scale: Value = serde_json::from_str(&scale).expect("scale JSON");
    assert_eq!(scale["kind"], "Scale", "{scale:#}");
    assert_eq!(scale["spec"]["replicas"], 2, "{scale:#}");
}

#[test]
fn expose_rc_creates_service_with_rc_selector() {
    let c = start();
    create_seed(&c, "frontend-controller.yaml", "replicationcontroller/frontend");
    let out = c.kubectl_ok(&["expose", "rc", "frontend", "--port=80", "--name=frontend-exposed"]);
    assert_eq!(out.trim(), "service/frontend-exposed exposed");
    let svc = get_json(&c, &["svc", "frontend-exposed"]);
    assert_eq!(svc["spec"]["selector"], serde_json::json!({"name": "frontend"}), "{svc:#}");
    assert_eq!(svc["spec"]["ports"][0]["port"], 80, "{svc:#}");
    assert_eq!(svc["spec"]["type"], "ClusterIP", "{svc:#}");
    let t = kubectl_table(&c, &["get", "svc", "frontend-exposed"]);
    assert_eq!(t.cell("frontend-exposed", "PORT(S)"), "80/TCP", "{}", t.text);
    assert!(in_service_range(t.cell("frontend-exposed", "CLUSTER-IP")), "{}", t.text);
}

#[test]
fn label_select_overwrite_and_remove() {
    let c = start();
    create_seed(&c, "pod-nginx.yaml", "pod/nginx");
    create_seed(&c, "pod-redis.yaml", "pod/redis");
    let selected = |c: &Control, sel: &str| -> Vec<String> {
        let out = c.kubectl(&["get", "pods", "-l", sel]);
        assert!(out.status.success(), "get pods -l {sel}: {}", stderr(&out));
        let text = stdout(&out);
        if text.trim().is_empty() {
            assert!(
                stderr(&out).contains("No resources found in default namespace."),
                "get pods -l {sel}: {}",
                stderr(&out)
            );
            return vec![];
        }
        Table::parse(&text).names().into_iter().map(String::from).collect()
    };

    assert_eq!(c.kubectl_ok(&["label", "pod", "nginx", "tier=web"]).trim(), "pod/nginx labeled");
    assert_eq!(selected(&c, "tier=web"), ["nginx"]);
    assert_eq!(selected(&c, "tier"), ["nginx"]);
    assert_eq!(selected(&c, "tier!=web"), ["redis"]);

    let err = c.kubectl_err(&["label", "pod", "nginx", "tier=db"]);
    assert!(
        err.contains("'tier' already has a value (web), and --overwrite is false"),
        "label without --overwrite: {err}"
    );
    assert_eq!(selected(&c, "tier=web"), ["nginx"]);

    assert_eq!(c.kubectl_ok(&["label", "pod", "nginx", "tier=db", "--overwrite"]).trim(), "pod/nginx labeled");
    assert_eq!(selected(&c, "tier=db"), ["nginx"]);
    assert!(selected(&c, "tier=web").is_empty());

    assert_eq!(c.kubectl_ok(&["label", "pod", "nginx", "tier-"]).trim(), "pod/nginx unlabeled");
    assert!(selected(&c, "tier").is_empty());
    let pod = get_json(&c, &["pod", "nginx"]);
    assert!(pod["metadata"]["labels"].get("tier").is_none(), "{pod:#}");
}

/// Kubernetes never serialises an empty `labels` map: after removing the only label the pod's
/// YAML has no `labels:` key (Go's `omitempty`), rather than `labels: {}`.
#[test]
fn label_removal_leaves_no_empty_labels_map() {
    let c = start();
    create_seed(&c, "pod-nginx.yaml", "pod/nginx");
    c.kubectl_ok(&["label", "pod", "nginx", "tier=web"]);
    c.kubectl_ok(&["label", "pod", "nginx", "tier-"]);
    let pod = get_json(&c, &["pod", "nginx"]);
    assert!(
        pod["metadata"].get("labels").is_none(),
        "Kubernetes omits an empty labels map; got metadata {:#}",
        pod["metadata"]
    );
}

// ---------------------------------------------------------------------------------------------
// -o yaml / -o json

fn check_pod_document(pod: &Value, how: &str) {
    assert_eq!(pod["apiVersion"], "v1", "{how}: {pod:#}");
    assert_eq!(pod["kind"], "Pod", "{how}: {pod:#}");
    let md = &pod["metadata"];
    assert_eq!(md["name"], "nginx", "{how}");
    assert_eq!(md["namespace"], "default", "{how}");
    let uid = md["uid"].as_str().unwrap_or_default();
    assert!(uid.len() == 36 && uid.matches('-').count() == 4, "{how}: uid {uid:?} is not a UUID");
    let rv = md["resourceVersion"].as_str().unwrap_or_default();
    assert!(!rv.is_empty() && rv.chars().all(|c| c.is_ascii_digit()), "{how}: resourceVersion {rv:?}");
    let ts = md["creationTimestamp"].as_str().unwrap_or_default();
    assert!(
        ts.len() == 20 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "{how}: creationTimestamp {ts:?} is not RFC 3339 UTC seconds"
    );
    let spec = &pod["spec"];
    assert_eq!(spec["restartPolicy"], "Always", "{how}");
    assert_eq!(spec["dnsPolicy"], "ClusterFirst", "{how}");
    assert_eq!(spec["terminationGracePeriodSeconds"], 30, "{how}");
    assert_eq!(spec["schedulerName"], "default-scheduler", "{how}");
    let ctr = &spec["containers"][0];
    assert_eq!(ctr["image"], "nginx:1.7.9", "{how}");
    assert_eq!(ctr["imagePullPolicy"], "IfNotPresent", "{how}: a tagged, non-latest image defaults to IfNotPresent");
    assert_eq!(ctr["ports"][0]["protocol"], "TCP", "{how}");
    assert_eq!(ctr["terminationMessagePath"], "/dev/termination-log", "{how}");
    assert_eq!(pod["status"]["phase"], "Pending", "{how}");
}

#[test]
fn get_pod_yaml_and_json_show_metadata_and_defaults() {
    let c = start();
    create_seed(&c, "pod-nginx.yaml", "pod/nginx");
    create_seed(&c, "pod-redis.yaml", "pod/redis");

    let json_text = c.kubectl_ok(&["get", "pod", "nginx", "-o", "json"]);
    let json: Value = serde_json::from_str(&json_text).expect("-o json parses");
    check_pod_document(&json, "-o json");

    let yaml_text = c.kubectl_ok(&["get", "pod", "nginx", "-o", "yaml"]);
    assert!(yaml_text.starts_with("apiVersion: v1\n"), "-o yaml:\n{yaml_text}");
    assert!(yaml_text.contains("\nkind: Pod\n"), "-o yaml:\n{yaml_text}");
    let yaml: Value = serde_yaml::from_str(&yaml_text).expect("-o yaml parses");
    check_pod_document(&yaml, "-o yaml");
    assert_eq!(yaml, json, "-o yaml and -o json describe different objects");

    // An untagged image defaults to Always.
    let redis = get_json(&c, &["pod", "redis"]);
    assert_eq!(
        redis["spec"]["containers"][0]["imagePullPolicy"], "Always",
        "image `redis` (implicit :latest): {redis:#}"
    );

    // jsonpath reads the same fields.
    let jp = c.kubectl_ok(&[
        "get",
        "pod",
        "nginx",
        "-o",
        "jsonpath={.spec.restartPolicy} {.spec.dnsPolicy} {.spec.containers[0].imagePullPolicy}",
    ]);
    assert_eq!(jp, "Always ClusterFirst IfNotPresent");
}

// ---------------------------------------------------------------------------------------------
// cluster introspection

#[test]
fn get_componentstatuses() {
    let c = start();
    let t = kubectl_table(&c, &["get", "componentstatuses"]);
    t.assert_header(&["NAME", "STATUS", "MESSAGE", "ERROR"]);
    assert_eq!(t.cell("etcd-0", "STATUS"), "Healthy", "{}", t.text);
    for name in ["scheduler", "controller-manager"] {
        let status = t.cell(name, "STATUS");
        assert!(status == "Healthy" || status == "Unhealthy", "{name} STATUS {status:?}:\n{}", t.text);
    }
    // Short name.
    let cs = kubectl_table(&c, &["get", "cs"]);
    assert_eq!(cs.cell("etcd-0", "STATUS"), "Healthy");
}

/// Kubernetes marks v1 ComponentStatus deprecated and kubectl prints the server's warning.
#[test]
fn get_componentstatuses_prints_deprecation_warning() {
    let c = start();
    let out = c.kubectl(&["get", "componentstatuses"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Warning: v1 ComponentStatus is deprecated in v1.19+"),
        "Kubernetes sends a `Warning: 299 - \"v1 ComponentStatus is deprecated in v1.19+\"` header; kubectl stderr was:\n{}",
        stderr(&out)
    );
}

#[test]
fn cluster_info_names_control_plane() {
    let c = start();
    let out = c.kubectl_ok(&["cluster-info"]);
    let want = format!("Kubernetes control plane is running at {}", c.server);
    assert!(c.server.starts_with("https://127.0.0.1:"), "kubeconfig server {}", c.server);
    assert!(out.lines().any(|l| l.trim() == want), "cluster-info printed:\n{out}\nwanted line: {want}");
}

#[test]
fn version_reports_server_1_33() {
    let c = start();
    let out = c.kubectl_ok(&["version"]);
    let server = out
        .lines()
        .find_map(|l| l.strip_prefix("Server Version: "))
        .unwrap_or_else(|| panic!("no Server Version line:\n{out}"));
    assert!(server.starts_with("v1.33"), "Server Version {server:?}");
    assert!(
        out.lines().any(|l| l.starts_with("Client Version: v1.33")),
        "kubectl dispatched to another client minor:\n{out}"
    );
    let v: Value = serde_json::from_str(&c.kubectl_ok(&["version", "-o", "json"])).expect("version -o json");
    assert_eq!(v["serverVersion"]["major"], "1", "{v:#}");
    assert_eq!(v["serverVersion"]["minor"], "33", "{v:#}");
    assert!(v["serverVersion"]["gitVersion"].as_str().is_some_and(|g| g.starts_with("v1.33.")), "{v:#}");
}

#[test]
fn get_namespaces_lists_system_namespaces_active() {
    let c = start();
    let t = kubectl_table(&c, &["get", "ns"]);
    t.assert_header(&["NAME", "STATUS", "AGE"]);
    let mut names = t.names();
    names.sort();
    assert_eq!(names, ["default", "kube-node-lease", "kube-public", "kube-system"], "{}", t.text);
    for n in names {
        assert_eq!(t.cell(n, "STATUS"), "Active", "{}", t.text);
    }
}

// ---------------------------------------------------------------------------------------------
// refusals

#[test]
fn as_written_rc_is_refused_naming_unknown_field() {
    let c = start();
    let out = c.kubectl(&["create", "-f", &seed_arg("frontend-controller-as-written.yaml")]);
    let err = stderr(&out);
    assert!(!out.status.success(), "the mis-indented RC was accepted: {}", stdout(&out));
    assert!(err.contains("Error from server (BadRequest)"), "{err}");
    assert!(
        err.contains(r#"unknown field "spec.template.spec.image""#),
        "error does not name the unknown field:\n{err}"
    );
    assert!(err.contains("strict decoding error"), "{err}");
    assert!(stdout(&out).trim().is_empty(), "nothing may be reported created: {}", stdout(&out));

    let none = c.kubectl(&["get", "rc"]);
    assert!(none.status.success(), "{}", stderr(&none));
    assert!(stdout(&none).trim().is_empty(), "an RC was stored:\n{}", stdout(&none));
    assert_eq!(stderr(&none).trim(), "No resources found in default namespace.");
    let nf = c.kubectl_err(&["get", "rc", "frontend"]);
    assert_eq!(nf.trim(), r#"Error from server (NotFound): replicationcontrollers "frontend" not found"#);
    // And no pods were made from it.
    let pods = c.kubectl(&["get", "pods"]);
    assert!(stdout(&pods).trim().is_empty(), "{}", stdout(&pods));

    // The corrected manifest is accepted.
    create_seed(&c, "frontend-controller.yaml", "replicationcontroller/frontend");
}

#[test]
fn invalid_pod_name_is_refused() {
    let c = start();
    let out = c.kubectl_stdin(&["create", "-f", "-"], Some(&pod_yaml("Bad_Name", "nginx:1.7.9")));
    let err = stderr(&out);
    assert!(!out.status.success(), "pod Bad_Name was accepted: {}", stdout(&out));
    assert!(err.contains(r#"The Pod "Bad_Name" is invalid"#), "{err}");
    assert!(err.contains(r#"metadata.name: Invalid value: "Bad_Name""#), "error does not name metadata.name:\n{err}");
    assert!(err.contains("RFC 1123 subdomain"), "{err}");
    let none = c.kubectl(&["get", "pods"]);
    assert!(none.status.success());
    assert!(stdout(&none).trim().is_empty(), "a pod was stored:\n{}", stdout(&none));
    assert_eq!(stderr(&none).trim(), "No resources found in default namespace.");
}

/// kubectl's generators (`create configmap|secret|deployment|service|namespace`) and the seed's
/// `autoscale` send protobuf bodies; they must work like any other create.
#[test]
fn generators_and_autoscale_send_protobuf() {
    let c = start();
    assert!(c.kubectl_ok(&["create", "namespace", "team-a"]).contains("namespace/team-a created"));
    assert!(
        c.kubectl_ok(&["create", "configmap", "settings", "--from-literal=mode=fast", "-n", "team-a"])
            .contains("configmap/settings created")
    );
    assert!(
        c.kubectl_ok(&["create", "secret", "generic", "creds", "--from-literal=password=s3cret"])
            .contains("secret/creds created")
    );
    assert!(
        c.kubectl_ok(&["create", "deployment", "web", "--image=nginx:1.7.9", "--replicas=2"])
            .contains("deployment.apps/web created")
    );
    assert!(c.kubectl_ok(&["create", "service", "nodeport", "web", "--tcp=80:8080"]).contains("service/web created"));

    let cm = get_json(&c, &["configmap", "settings", "-n", "team-a"]);
    assert_eq!(cm["data"]["mode"], "fast");
    let secret = get_json(&c, &["secret", "creds"]);
    assert_eq!(secret["data"]["password"], "czNjcmV0", "base64 of s3cret");
    let deploy = get_json(&c, &["deployment", "web"]);
    assert_eq!(deploy["spec"]["replicas"], 2);
    assert_eq!(deploy["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:1.7.9");
    assert_eq!(deploy["spec"]["strategy"]["type"], "RollingUpdate", "server-side defaults applied");
    let svc = get_json(&c, &["service", "web"]);
    assert_eq!(svc["spec"]["type"], "NodePort");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
    let np = svc["spec"]["ports"][0]["nodePort"].as_i64().expect("a node port was allocated");
    assert!((30000..=32767).contains(&np));

    // The seed: `kubectl autoscale rc ... --min=1 --max=10 --cpu-percent=50`.
    create_seed(&c, "frontend-controller.yaml", "replicationcontroller/frontend");
    let out = c.kubectl_ok(&["autoscale", "rc", "frontend", "--min=1", "--max=10", "--cpu-percent=50"]);
    assert!(out.contains("horizontalpodautoscaler.autoscaling/frontend autoscaled"), "{out}");
    let hpa = get_json(&c, &["hpa", "frontend"]);
    assert_eq!(hpa["spec"]["minReplicas"], 1);
    assert_eq!(hpa["spec"]["maxReplicas"], 10);
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "ReplicationController");
    assert_eq!(hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 50);
    let raw =
        c.kubectl_ok(&["get", "--raw", "/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers/frontend"]);
    let v1: Value = serde_json::from_str(&raw).expect("JSON");
    assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 50, "autoscaling/v1 view of the same object");
}
