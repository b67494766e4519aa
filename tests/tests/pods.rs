//! Pods on a real Docker engine through a real `skiff agent`: the seed's pods run and serve,
//! restarts and probes behave like the kubelet's, service variables, logs, deletion, adoption
//! after `kill -9`, and clear errors for images that do not exist.
//!
//! Each test runs its own `skiff control` and agent (own node, bridge, pod CIDR in
//! 10.244.200.0/21, nftables table); the harness removes containers, bridge and table on drop.
//! Traffic goes only from the host to pod addresses on the test's own bridge.

use anyhow::Result;
use serde_json::Value;
use skiff_tests::{Agent, Control, seed, wait_for};
use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

const POD_START: Duration = Duration::from_secs(60);

fn pod_json(c: &Control, name: &str) -> Option<Value> {
    let out = c.kubectl(&["get", "pod", name, "-o", "json"]);
    out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
}

fn wait_running(c: &Control, a: &Agent, name: &str) -> Value {
    wait_for(POD_START, &format!("pod {name} Running and Ready"), || {
        let p = pod_json(c, name)?;
        let ready = p["status"]["conditions"].as_array()?.iter().any(|c| c["type"] == "Ready" && c["status"] == "True");
        (p["status"]["phase"] == "Running" && ready).then_some(p)
    })
    .unwrap_or_else(|e| panic!("{e}\npod: {:?}\nagent log:\n{}", pod_json(c, name), a.log()))
}

fn apply(c: &Control, yaml: &str) {
    let out = c.kubectl_stdin(&["apply", "-f", "-"], Some(yaml));
    assert!(out.status.success(), "apply failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// HTTP GET from the host to a pod address (on the test's bridge).
fn http_get(ip: &str, port: u16, path: &str) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect_timeout(&format!("{ip}:{port}").parse().unwrap(), Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn docker_exec(id: &str, script: &str) -> String {
    let out = Command::new("docker").args(["exec", id, "sh", "-c", script]).output().expect("docker runs");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The running container of a pod's container name, by label.
fn container_id(a: &Agent, pod: &str, name: &str) -> String {
    let out = Command::new("docker")
        .args(["ps", "-q", "--no-trunc", "--filter"])
        .arg(format!("label=io.skiff.node={}", a.node))
        .args(["--filter", &format!("label=io.skiff.pod.name={pod}")])
        .args(["--filter", &format!("label=io.skiff.container.name={name}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().to_string()
}

fn route_exists_for(cidr: &str) -> bool {
    let out = Command::new("ip").args(["-4", "route", "show", cidr]).output().unwrap();
    !String::from_utf8_lossy(&out.stdout).trim().is_empty()
}

#[test]
fn seed_pods_run_serve_and_share_volumes() -> Result<()> {
    let c = Control::start()?;
    let a = Agent::start(&c, 0, &[])?;
    c.kubectl_ok(&["create", "-f", seed("pod-nginx.yaml").to_str().unwrap()]);
    c.kubectl_ok(&["create", "-f", seed("pod-redis.yaml").to_str().unwrap()]);
    c.kubectl_ok(&["create", "-f", seed("pod-www.yaml").to_str().unwrap()]);

    let nginx = wait_running(&c, &a, "nginx");
    let ip = nginx["status"]["podIP"].as_str().unwrap().to_string();
    assert!(ip.starts_with("10.244.200."), "pod IP from the node's podCIDR: {ip}");
    assert_eq!(nginx["status"]["hostIP"], "127.0.0.1");
    assert!(route_exists_for(&a.pod_cidr), "the bridge route for {} must exist before sending", a.pod_cidr);
    let page = http_get(&ip, 80, "/")?;
    assert!(page.starts_with("HTTP/1.") && page.contains("Welcome to nginx"), "{page}");
    let wide = c.kubectl_ok(&["get", "pod", "nginx", "-o", "wide"]);
    assert!(wide.contains(&ip) && wide.contains("Running") && wide.contains(&a.node), "{wide}");

    // The redis pod: its emptyDir is mounted at /data/redis and redis answers on its pod IP.
    let redis = wait_running(&c, &a, "redis");
    let rid = container_id(&a, "redis", "redis");
    let mounts = docker_exec(&rid, "cat /proc/mounts");
    assert!(mounts.contains(" /data/redis "), "{mounts}");
    let rip = redis["status"]["podIP"].as_str().unwrap();
    let mut s = std::net::TcpStream::connect((rip, 6379))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"PING\r\n")?;
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf)?;
    assert_eq!(&buf, b"+PONG\r\n");

    // www: two containers share the emptyDir and localhost.
    let www = wait_running(&c, &a, "www");
    assert_eq!(www["status"]["containerStatuses"].as_array().unwrap().len(), 2);
    let (web, monitor) = (container_id(&a, "www", "nginx"), container_id(&a, "www", "git-monitor"));
    docker_exec(&monitor, "echo shared-through-emptydir > /data/index.txt");
    assert_eq!(docker_exec(&web, "cat /srv/www/index.txt").trim(), "shared-through-emptydir");
    let via_localhost = docker_exec(&monitor, "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc 127.0.0.1 80");
    assert!(via_localhost.contains("Welcome to nginx"), "{via_localhost}");
    // The nginx stand-in's shell is /bin/sh; /etc/hosts names the pod.
    assert!(docker_exec(&web, "cat /etc/hosts").contains("\twww"), "hosts file names the pod");
    let resolv = docker_exec(&web, "cat /etc/resolv.conf");
    assert!(resolv.contains("nameserver 10.96.0.10"), "{resolv}");
    assert!(resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"), "{resolv}");
    assert!(resolv.contains("options ndots:5"), "{resolv}");

    // Deleting frees the containers and the IP.
    let ipam = a.root.join("ipam");
    assert!(
        std::fs::read_dir(&ipam)?.any(|e| e.map(|e| e.file_name().to_string_lossy().contains(&ip)).unwrap_or(false))
    );
    c.kubectl_ok(&["delete", "pod", "nginx", "--timeout=60s"]);
    assert!(pod_json(&c, "nginx").is_none());
    wait_for(Duration::from_secs(20), "nginx containers removed", || {
        a.containers_of("nginx").is_empty().then_some(())
    })?;
    let still =
        std::fs::read_dir(&ipam)?.any(|e| e.map(|e| e.file_name().to_string_lossy().contains(&ip)).unwrap_or(false));
    assert!(!still, "the deleted pod's IP {ip} is free again");
    Ok(())
}

#[test]
fn restarts_probes_and_crash_loop_back_off() -> Result<()> {
    let c = Control::start()?;
    let a = Agent::start(&c, 1, &["--crashloop-backoff", "1"])?;
    apply(
        &c,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: crasher}
spec:
  containers:
  - name: main
    image: busybox
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "echo run; sleep 1; exit 3"]
---
apiVersion: v1
kind: Pod
metadata: {name: unhealthy}
spec:
  containers:
  - name: main
    image: busybox
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "touch /tmp/healthy; sleep 2; rm /tmp/healthy; sleep 600"]
    livenessProbe:
      exec: {command: ["cat", "/tmp/healthy"]}
      periodSeconds: 1
      failureThreshold: 2
---
apiVersion: v1
kind: Pod
metadata: {name: gated}
spec:
  containers:
  - name: web
    image: nginx:1.7.9
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "mkdir -p /www; echo ok > /www/ready; httpd -f -p 8080 -h /www"]
    readinessProbe:
      httpGet: {path: /ready, port: 8080}
      periodSeconds: 1
      failureThreshold: 1
"#,
    );
    // A container that exits is restarted with growing back-off, reported as CrashLoopBackOff.
    let mut messages = Vec::new();
    let p = wait_for(Duration::from_secs(90), "crasher restarted 3 times", || {
        let p = pod_json(&c, "crasher")?;
        let cs = &p["status"]["containerStatuses"][0];
        if cs["state"]["waiting"]["reason"] == "CrashLoopBackOff" {
            let m = cs["state"]["waiting"]["message"].as_str().unwrap_or("").to_string();
            if !messages.contains(&m) {
                messages.push(m);
            }
        }
        (cs["restartCount"].as_i64()? >= 3 && messages.len() >= 2).then_some(p)
    })
    .unwrap_or_else(|e| panic!("{e}\n{:?}\n{}", pod_json(&c, "crasher"), a.log()));
    assert_eq!(p["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"], 3);
    // The delays grow (1 s doubling with --crashloop-backoff 1; which ones a 1 s status poll
    // catches varies, so: at least two distinct delays, in growing order as seen).
    let delays: Vec<u64> =
        messages.iter().filter_map(|m| m.strip_prefix("back-off ")?.split('s').next()?.parse().ok()).collect();
    assert!(delays.len() >= 2 && delays.windows(2).all(|w| w[0] < w[1]), "growing back-off: {messages:?}");
    assert!(delays.iter().all(|d| [1, 2, 4, 8, 16, 32].contains(d)), "doubling from 1 s: {messages:?}");
    let describe = c.kubectl_ok(&["describe", "pod", "crasher"]);
    assert!(
        describe.contains("Back-off") || describe.contains("CrashLoopBackOff") || describe.contains("Restart Count"),
        "{describe}"
    );

    // A failing liveness probe restarts the container.
    wait_for(Duration::from_secs(60), "liveness restart", || {
        let p = pod_json(&c, "unhealthy")?;
        (p["status"]["containerStatuses"][0]["restartCount"].as_i64()? >= 1).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{:?}\n{}", pod_json(&c, "unhealthy"), a.log()));
    let events = c.kubectl_ok(&["get", "events", "--field-selector", "involvedObject.name=unhealthy"]);
    assert!(events.contains("Unhealthy") && events.contains("Killing"), "{events}");

    // Readiness: Ready while /ready answers, not Ready once it fails; the container keeps running.
    let gated = wait_running(&c, &a, "gated");
    let id = container_id(&a, "gated", "web");
    docker_exec(&id, "rm /www/ready");
    let p = wait_for(Duration::from_secs(30), "gated not Ready", || {
        let p = pod_json(&c, "gated")?;
        let ready = p["status"]["conditions"].as_array()?.iter().any(|c| c["type"] == "Ready" && c["status"] == "True");
        (!ready).then_some(p)
    })?;
    assert_eq!(p["status"]["containerStatuses"][0]["ready"], false);
    assert_eq!(
        p["status"]["containerStatuses"][0]["restartCount"],
        gated["status"]["containerStatuses"][0]["restartCount"]
    );
    assert!(p["status"]["containerStatuses"][0]["state"]["running"].is_object());
    Ok(())
}

#[test]
fn service_variables_logs_adoption_and_missing_images() -> Result<()> {
    let c = Control::start()?;
    let mut a = Agent::start(&c, 2, &[])?;
    c.kubectl_ok(&["create", "-f", seed("redis-master-service.yaml").to_str().unwrap()]);
    let svc_ip = c.kubectl_ok(&["get", "svc", "redis-master", "-o", "jsonpath={.spec.clusterIP}"]);
    apply(
        &c,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: envy}
spec:
  containers:
  - name: main
    image: busybox
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "env | sort; i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done"]
  - name: side
    image: busybox
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "echo side-car-says-hi; sleep 600"]
---
apiVersion: v1
kind: Pod
metadata: {name: ghost}
spec:
  containers:
  - name: main
    image: skiff-test/does-not-exist:1
    imagePullPolicy: IfNotPresent
---
apiVersion: v1
kind: Pod
metadata: {name: never}
spec:
  containers:
  - name: main
    image: skiff-test/does-not-exist:1
    imagePullPolicy: Never
"#,
    );
    let envy = wait_running(&c, &a, "envy");
    let logs = c.kubectl_ok(&["logs", "envy", "-c", "main"]);
    for line in [
        format!("REDIS_MASTER_SERVICE_HOST={svc_ip}"),
        "REDIS_MASTER_SERVICE_PORT=6379".to_string(),
        format!("REDIS_MASTER_PORT=tcp://{svc_ip}:6379"),
        format!("REDIS_MASTER_PORT_6379_TCP=tcp://{svc_ip}:6379"),
        "REDIS_MASTER_PORT_6379_TCP_PROTO=tcp".to_string(),
        "REDIS_MASTER_PORT_6379_TCP_PORT=6379".to_string(),
        format!("REDIS_MASTER_PORT_6379_TCP_ADDR={svc_ip}"),
        "KUBERNETES_SERVICE_HOST=10.96.0.1".to_string(),
    ] {
        assert!(logs.lines().any(|l| l == line), "missing {line} in:\n{logs}");
    }
    // kubectl logs: -c, --tail, -f, and the error for a pod with two containers.
    assert_eq!(c.kubectl_ok(&["logs", "envy", "-c", "side"]).trim(), "side-car-says-hi");
    // kubectl picks the first container itself and says so; the API insists on a name.
    let out = c.kubectl(&["logs", "envy"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("Defaulted container \"main\" out of: main, side"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("REDIS_MASTER_SERVICE_HOST="));
    let err = c.kubectl_err(&["get", "--raw", "/api/v1/namespaces/default/pods/envy/log"]);
    assert!(err.contains("a container name must be specified for pod envy, choose one of: [main side]"), "{err}");
    std::thread::sleep(Duration::from_secs(2));
    let tail = c.kubectl_ok(&["logs", "envy", "-c", "main", "--tail", "1"]);
    assert_eq!(tail.lines().count(), 1, "{tail}");
    assert!(tail.starts_with("tick "), "{tail}");
    let mut follow = Command::new("/usr/bin/kubectl")
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args(["logs", "-f", "envy", "-c", "main", "--tail", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(3));
    let _ = follow.kill();
    let out = follow.wait_with_output()?;
    let followed = String::from_utf8_lossy(&out.stdout);
    assert!(followed.lines().filter(|l| l.starts_with("tick ")).count() >= 2, "-f streams new lines: {followed}");

    // Missing images: clear waiting reasons, and the agent keeps serving other pods.
    let ghost = wait_for(Duration::from_secs(90), "ghost waiting on its image", || {
        let p = pod_json(&c, "ghost")?;
        let w = &p["status"]["containerStatuses"][0]["state"]["waiting"];
        ["ErrImagePull", "ImagePullBackOff"].contains(&w["reason"].as_str()?).then_some(p)
    })
    .unwrap_or_else(|e| panic!("{e}\n{:?}\n{}", pod_json(&c, "ghost"), a.log()));
    let msg = ghost["status"]["containerStatuses"][0]["state"]["waiting"]["message"].as_str().unwrap_or("");
    assert!(msg.contains("skiff-test/does-not-exist:1"), "{msg}");
    assert_eq!(ghost["status"]["phase"], "Pending");
    let never = wait_for(Duration::from_secs(30), "never waiting", || {
        let p = pod_json(&c, "never")?;
        (p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ErrImageNeverPull").then_some(p)
    })?;
    assert!(
        never["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
            .as_str()
            .unwrap()
            .contains("is not present with pull policy of Never")
    );
    let get = c.kubectl_ok(&["get", "pods"]);
    assert!(get.lines().any(|l| l.starts_with("never ") && l.contains("ErrImageNeverPull")), "{get}");

    // kill -9 of the agent: containers keep running; the restarted agent adopts them.
    let ids_before: Vec<String> = envy["status"]["containerStatuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["containerID"].as_str().unwrap().to_string())
        .collect();
    a.kill();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(a.containers_of("envy").len(), 3, "sandbox and two containers survive the agent");
    a.restart()?;
    std::thread::sleep(Duration::from_secs(6));
    let after = wait_running(&c, &a, "envy");
    let ids_after: Vec<String> = after["status"]["containerStatuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["containerID"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids_before, ids_after, "same containers after the restart");
    assert_eq!(after["status"]["containerStatuses"][0]["restartCount"], 0);
    assert_eq!(after["status"]["podIP"], envy["status"]["podIP"]);
    assert!(c.kubectl_ok(&["logs", "envy", "-c", "side"]).contains("side-car-says-hi"));
    Ok(())
}

#[test]
fn node_registers_with_capacity_conditions_and_lease() -> Result<()> {
    let c = Control::start()?;
    let a = Agent::start(&c, 3, &[])?;
    let node = wait_for(Duration::from_secs(30), "node Ready", || {
        let out = c.kubectl(&["get", "node", &a.node, "-o", "json"]);
        let n: Value = serde_json::from_slice(&out.stdout).ok()?;
        let ready = n["status"]["conditions"].as_array()?.iter().any(|c| c["type"] == "Ready" && c["status"] == "True");
        ready.then_some(n)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log()));
    for ty in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
        let cond = node["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == ty).cloned();
        assert_eq!(cond.map(|c| c["status"].clone()), Some(Value::from("False")), "{ty}");
    }
    assert_eq!(node["spec"]["podCIDR"], a.pod_cidr);
    assert!(node["status"]["capacity"]["cpu"].as_str().unwrap().parse::<u32>()? >= 1);
    assert!(node["status"]["allocatable"]["memory"].as_str().unwrap().ends_with("Ki"));
    assert!(node["status"]["nodeInfo"]["containerRuntimeVersion"].as_str().unwrap().starts_with("docker://"));
    let lease =
        c.kubectl_ok(&["get", "lease", "-n", "kube-node-lease", &a.node, "-o", "jsonpath={.spec.holderIdentity}"]);
    assert_eq!(lease, a.node);
    let wide = c.kubectl_ok(&["get", "nodes", "-o", "wide"]);
    assert!(wide.lines().any(|l| l.starts_with(&a.node) && l.contains("Ready")), "{wide}");
    Ok(())
}

#[test]
fn init_containers_volumes_resources_and_graceful_termination() -> Result<()> {
    let c = Control::start()?;
    let a = Agent::start(&c, 4, &["--crashloop-backoff", "1"])?;
    let host_dir = tempfile::tempdir()?;
    let host = host_dir.path().to_str().unwrap().to_string();
    let manifest = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {greeting: hello-from-configmap, mode: fast}
---
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {password: s3cret}
---
apiVersion: v1
kind: Pod
metadata: {name: full, labels: {app: full}}
spec:
  terminationGracePeriodSeconds: 20
  initContainers:
  - name: first
    image: busybox
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "echo first >> /work/order; sleep 1"]
    volumeMounts: [{name: work, mountPath: /work}]
  - name: second
    image: busybox
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "echo second >> /work/order"]
    volumeMounts: [{name: work, mountPath: /work}]
  containers:
  - name: main
    image: busybox
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "trap 'echo got TERM >> /host/term; exit 0' TERM; echo $(GREETING) $(POD_NAME); while true; do sleep 1; done"]
    env:
    - {name: GREETING, valueFrom: {configMapKeyRef: {name: settings, key: greeting}}}
    - {name: PASSWORD, valueFrom: {secretKeyRef: {name: creds, key: password}}}
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: MEM_MI, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}}
    envFrom: [{configMapRef: {name: settings}, prefix: CFG_}]
    resources:
      requests: {cpu: 250m, memory: 32Mi}
      limits: {cpu: 500m, memory: 64Mi}
    volumeMounts:
    - {name: work, mountPath: /work}
    - {name: cfg, mountPath: /etc/cfg}
    - {name: sec, mountPath: /etc/sec}
    - {name: info, mountPath: /etc/podinfo}
    - {name: host, mountPath: /host}
  volumes:
  - {name: work, emptyDir: {}}
  - {name: cfg, configMap: {name: settings}}
  - {name: sec, secret: {secretName: creds}}
  - name: info
    downwardAPI:
      items:
      - {path: labels, fieldRef: {fieldPath: metadata.labels}}
      - {path: name, fieldRef: {fieldPath: metadata.name}}
  - {name: host, hostPath: {path: HOSTDIR, type: Directory}}
"#
    .replace("HOSTDIR", &host);
    apply(&c, &manifest);
    let p = wait_running(&c, &a, "full");
    let inits = p["status"]["initContainerStatuses"].as_array().unwrap();
    assert!(inits.iter().all(|s| s["state"]["terminated"]["reason"] == "Completed"), "{inits:?}");
    let id = container_id(&a, "full", "main");
    assert_eq!(docker_exec(&id, "cat /work/order"), "first\nsecond\n", "init containers ran in order, to completion");
    let env = docker_exec(&id, "env");
    for want in ["GREETING=hello-from-configmap", "PASSWORD=s3cret", "POD_NAME=full", "MEM_MI=64", "CFG_mode=fast"] {
        assert!(env.lines().any(|l| l == want), "missing {want} in {env}");
    }
    assert!(c.kubectl_ok(&["logs", "full"]).contains("hello-from-configmap full"), "$(VAR) expansion in command");
    assert_eq!(docker_exec(&id, "cat /etc/cfg/greeting"), "hello-from-configmap");
    assert_eq!(docker_exec(&id, "cat /etc/sec/password"), "s3cret");
    assert_eq!(docker_exec(&id, "cat /etc/podinfo/name"), "full");
    assert_eq!(docker_exec(&id, "cat /etc/podinfo/labels"), "app=\"full\"\n");
    // Resources become Docker limits.
    let inspect = Command::new("docker")
        .args(["inspect", "--format", "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} {{.HostConfig.CpuShares}}", &id])
        .output()?;
    assert_eq!(String::from_utf8_lossy(&inspect.stdout).trim(), format!("{} 500000000 256", 64 * 1024 * 1024));
    assert_eq!(p["status"]["qosClass"], "Burstable");

    // Graceful deletion: SIGTERM reaches the container, which exits well before the grace period.
    let started = std::time::Instant::now();
    c.kubectl_ok(&["delete", "pod", "full", "--timeout=60s"]);
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    assert_eq!(std::fs::read_to_string(host_dir.path().join("term"))?.trim(), "got TERM");
    wait_for(Duration::from_secs(20), "containers removed", || a.containers_of("full").is_empty().then_some(()))?;

    // --previous shows the last terminated instance.
    apply(
        &c,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: twice}
spec:
  containers:
  - name: main
    image: busybox
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "echo run at $(date +%s%N); sleep 2; exit 1"]
"#,
    );
    wait_for(Duration::from_secs(60), "twice restarted", || {
        let p = pod_json(&c, "twice")?;
        (p["status"]["containerStatuses"][0]["restartCount"].as_i64()? >= 1).then_some(())
    })?;
    let previous = c.kubectl_ok(&["logs", "twice", "--previous"]);
    let current = c.kubectl_ok(&["logs", "twice"]);
    assert!(
        previous.starts_with("run at ") && current.starts_with("run at ") && previous != current,
        "{previous} / {current}"
    );
    Ok(())
}
