//! Table rendering tests: the exact cells kubectl 1.33 users see.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};

use super::*;

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2024-06-01T12:00:00Z").unwrap().with_timezone(&Utc)
}

/// An RFC 3339 timestamp `secs` seconds before `now()`.
fn ago(secs: i64) -> String {
    (now() - TimeDelta::seconds(secs)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn render(resource: &str, obj: Value) -> Value {
    table(resource, &[obj], now(), IncludeObject::Metadata)
}

/// The cells of the single row, as strings where they are strings.
fn cells(resource: &str, obj: Value) -> Vec<Value> {
    let t = render(resource, obj);
    t["rows"][0]["cells"].as_array().unwrap().clone()
}

fn column_names(resource: &str) -> Vec<(String, i64)> {
    let t = table(resource, &[], now(), IncludeObject::None);
    t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_string(), c["priority"].as_i64().unwrap()))
        .collect()
}

fn names(cols: &[(String, i64)]) -> Vec<&str> {
    cols.iter().map(|(n, _)| n.as_str()).collect()
}

fn meta(name: &str) -> Value {
    json!({"name": name, "namespace": "default", "creationTimestamp": ago(3 * 3600 + 5 * 60), "labels": {"app": name}})
}

// --------------------------------------------------------------------------
// Table envelope
// --------------------------------------------------------------------------

#[test]
fn envelope_and_column_definition_shape() {
    let t = render("pods", json!({"metadata": meta("web")}));
    assert_eq!(t["kind"], "Table");
    assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
    assert_eq!(t["metadata"], json!({}));
    let first = &t["columnDefinitions"][0];
    assert_eq!(first["name"], "Name");
    assert_eq!(first["type"], "string");
    assert_eq!(first["format"], "name");
    assert_eq!(first["priority"], 0);
    assert!(first["description"].as_str().unwrap().starts_with("Name must be unique within a namespace."));
    let age = &t["columnDefinitions"][4];
    assert_eq!(age["name"], "Age");
    assert_eq!(age["format"], "");
    assert!(age["description"].as_str().unwrap().starts_with("CreationTimestamp is a timestamp"));
    assert_eq!(t["rows"].as_array().unwrap().len(), 1);
    assert!(table("pods", &[], now(), IncludeObject::Metadata)["rows"].as_array().unwrap().is_empty());
}

#[test]
fn include_object_modes() {
    let pod = json!({"kind": "Pod", "apiVersion": "v1", "metadata": meta("web"), "spec": {"containers": []}});
    let md = table("pods", std::slice::from_ref(&pod), now(), IncludeObject::Metadata);
    assert_eq!(
        md["rows"][0]["object"],
        json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": pod["metadata"]})
    );
    let full = table("pods", std::slice::from_ref(&pod), now(), IncludeObject::Object);
    assert_eq!(full["rows"][0]["object"], pod);
    let none = table("pods", std::slice::from_ref(&pod), now(), IncludeObject::None);
    assert!(none["rows"][0].get("object").is_none());
    assert_eq!(IncludeObject::default(), IncludeObject::Metadata);
    assert_eq!(IncludeObject::parse(""), Some(IncludeObject::Metadata));
    assert_eq!(IncludeObject::parse("Object"), Some(IncludeObject::Object));
    assert_eq!(IncludeObject::parse("None"), Some(IncludeObject::None));
    assert_eq!(IncludeObject::parse("object"), None);
    // Metadata that is not an object still yields a well-formed PartialObjectMetadata.
    assert_eq!(partial_object_metadata(&json!({"metadata": 5}))["metadata"], json!({}));
}

#[test]
fn no_headers_omits_column_definitions() {
    let t = table_with_options("pods", &[json!({})], now(), IncludeObject::None, true);
    assert!(t["columnDefinitions"].is_null());
    assert_eq!(t["rows"][0]["cells"].as_array().unwrap().len(), 9);
}

// --------------------------------------------------------------------------
// Pods
// --------------------------------------------------------------------------

#[test]
fn pod_columns() {
    let cols = column_names("pods");
    assert_eq!(
        names(&cols),
        ["Name", "Ready", "Status", "Restarts", "Age", "IP", "Node", "Nominated Node", "Readiness Gates"]
    );
    assert_eq!(cols.iter().map(|(_, p)| *p).collect::<Vec<_>>(), [0, 0, 0, 0, 0, 1, 1, 1, 1]);
}

fn running(name: &str, ready: bool) -> Value {
    json!({"name": name, "ready": ready, "restartCount": 0, "state": {"running": {"startedAt": ago(600)}}})
}

#[test]
fn running_pod_with_one_of_two_ready() {
    let c = cells(
        "pods",
        json!({
            "metadata": meta("web-7d4b9c"),
            "spec": {"containers": [{"name": "app"}, {"name": "sidecar"}], "nodeName": "node-1"},
            "status": {
                "phase": "Running",
                "podIP": "10.244.1.7",
                "containerStatuses": [running("app", true), running("sidecar", false)]
            }
        }),
    );
    assert_eq!(
        c,
        [
            json!("web-7d4b9c"),
            json!("1/2"),
            json!("Running"),
            json!("0"),
            json!("3h5m"),
            json!("10.244.1.7"),
            json!("node-1"),
            json!("<none>"),
            json!("<none>")
        ]
    );
}

#[test]
fn pending_pod_without_anything() {
    let c = cells(
        "pods",
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Pending"}}),
    );
    assert_eq!(c[1], "0/1");
    assert_eq!(c[2], "Pending");
    assert_eq!(c[3], "0");
    assert_eq!(c[4], "<unknown>", "no creationTimestamp");
    assert_eq!(c[5], "<none>");
    assert_eq!(c[6], "<none>");
}

#[test]
fn waiting_reasons_and_restarts_with_last_restart_age() {
    let c = cells(
        "pods",
        json!({
            "metadata": meta("crash"),
            "spec": {"containers": [{"name": "a"}]},
            "status": {"phase": "Running", "containerStatuses": [{
                "name": "a", "ready": false, "restartCount": 5,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": ago(300)}}
            }]}
        }),
    );
    assert_eq!(c[1], "0/1");
    assert_eq!(c[2], "CrashLoopBackOff");
    assert_eq!(c[3], "5 (5m ago)");

    let c = cells(
        "pods",
        json!({
            "metadata": meta("creating"),
            "spec": {"containers": [{"name": "a"}]},
            "status": {"phase": "Pending", "containerStatuses": [{
                "name": "a", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ContainerCreating"}}
            }]}
        }),
    );
    assert_eq!(c[2], "ContainerCreating");
    assert_eq!(c[3], "0");
}

#[test]
fn restarts_without_termination_time_have_no_suffix() {
    let c = cells(
        "pods",
        json!({"spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Running",
            "containerStatuses": [{"name": "a", "ready": true, "restartCount": 2, "state": {"running": {}}}]}}),
    );
    assert_eq!(c[1], "1/1");
    assert_eq!(c[3], "2");
}

#[test]
fn deleting_pod_is_terminating_unless_finished_or_node_lost() {
    let mut pod = json!({
        "metadata": {"name": "p", "deletionTimestamp": ago(10), "creationTimestamp": ago(100)},
        "spec": {"containers": [{"name": "a"}]},
        "status": {"phase": "Running", "containerStatuses": [running("a", true)]}
    });
    assert_eq!(cells("pods", pod.clone())[2], "Terminating");
    pod["status"]["reason"] = json!("NodeLost");
    assert_eq!(cells("pods", pod.clone())[2], "Unknown");
    pod["status"]["reason"] = Value::Null;
    pod["status"]["phase"] = json!("Succeeded");
    pod["status"]["containerStatuses"] =
        json!([{"name": "a", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]);
    assert_eq!(cells("pods", pod)[2], "Completed");
}

#[test]
fn completed_pod_has_completed_row_condition() {
    let t = render(
        "pods",
        json!({
            "metadata": meta("job-abc"),
            "spec": {"containers": [{"name": "a"}]},
            "status": {"phase": "Succeeded", "containerStatuses": [{
                "name": "a", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}
        }),
    );
    assert_eq!(t["rows"][0]["cells"][1], "0/1");
    assert_eq!(t["rows"][0]["cells"][2], "Completed");
    assert_eq!(
        t["rows"][0]["conditions"],
        json!([{"type": "Completed", "status": "True", "reason": "Succeeded", "message": "The pod has completed successfully."}])
    );
    let failed = render("pods", json!({"status": {"phase": "Failed"}}));
    assert_eq!(failed["rows"][0]["conditions"][0]["reason"], "Failed");
    assert_eq!(failed["rows"][0]["conditions"][0]["message"], "The pod failed.");
    assert!(render("pods", json!({"status": {"phase": "Running"}}))["rows"][0].get("conditions").is_none());
}

#[test]
fn terminated_without_reason_shows_exit_code_or_signal() {
    let pod = |term: Value| {
        json!({"spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Running",
            "containerStatuses": [{"name": "a", "state": {"terminated": term}}]}})
    };
    assert_eq!(cells("pods", pod(json!({"exitCode": 137})))[2], "ExitCode:137");
    assert_eq!(cells("pods", pod(json!({"exitCode": 0, "signal": 9})))[2], "Signal:9");
    assert_eq!(cells("pods", pod(json!({"exitCode": 1, "reason": "OOMKilled"})))[2], "OOMKilled");
}

#[test]
fn completed_container_next_to_running_one() {
    let pod = |ready_condition: &str| {
        json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}, "status": {"phase": "Running",
        "conditions": [{"type": "Ready", "status": ready_condition}],
        "containerStatuses": [
            {"name": "a", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
            running("b", true)
        ]}})
    };
    assert_eq!(cells("pods", pod("True"))[2], "Running");
    assert_eq!(cells("pods", pod("False"))[2], "NotReady");
}

#[test]
fn init_container_progress() {
    let pod = |init_statuses: Value| {
        json!({"metadata": meta("init"),
            "spec": {"initContainers": [{"name": "i1"}, {"name": "i2"}], "containers": [{"name": "a"}]},
            "status": {"phase": "Pending", "initContainerStatuses": init_statuses,
                "containerStatuses": [{"name": "a", "state": {"waiting": {"reason": "PodInitializing"}}}]}})
    };
    let done = json!({"name": "i1", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}});
    assert_eq!(cells("pods", pod(json!([{"name": "i1", "state": {"running": {}}}])))[2], "Init:0/2");
    assert_eq!(cells("pods", pod(json!([done.clone(), {"name": "i2", "state": {"running": {}}}])))[2], "Init:1/2");
    assert_eq!(
        cells("pods", pod(json!([{"name": "i1", "state": {"waiting": {"reason": "PodInitializing"}}}])))[2],
        "Init:0/2"
    );
    let c = cells(
        "pods",
        pod(json!([{"name": "i1", "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1, "finishedAt": ago(30)}}}])),
    );
    assert_eq!(c[2], "Init:CrashLoopBackOff");
    assert_eq!(c[3], "3 (30s ago)");
    assert_eq!(
        cells("pods", pod(json!([{"name": "i1", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}])))[2],
        "Init:Error"
    );
    assert_eq!(
        cells("pods", pod(json!([{"name": "i1", "state": {"terminated": {"exitCode": 2}}}])))[2],
        "Init:ExitCode:2"
    );
    assert_eq!(
        cells("pods", pod(json!([{"name": "i1", "state": {"terminated": {"exitCode": 2, "signal": 15}}}])))[2],
        "Init:Signal:15"
    );
    // All init containers done: the app container decides (PodInitializing while it starts).
    assert_eq!(
        cells("pods", pod(json!([done.clone(), {"name": "i2", "state": {"terminated": {"exitCode": 0}}}])))[2],
        "PodInitializing"
    );
}

#[test]
fn sidecar_init_containers_count_toward_ready() {
    let c = cells(
        "pods",
        json!({
            "spec": {"initContainers": [{"name": "proxy", "restartPolicy": "Always"}], "containers": [{"name": "app"}]},
            "status": {"phase": "Running",
                "conditions": [{"type": "Initialized", "status": "True"}],
                "initContainerStatuses": [{"name": "proxy", "started": true, "ready": true, "restartCount": 1,
                    "state": {"running": {}}, "lastState": {"terminated": {"exitCode": 1, "finishedAt": ago(7200)}}}],
                "containerStatuses": [running("app", true)]}
        }),
    );
    assert_eq!(c[1], "2/2");
    assert_eq!(c[2], "Running");
    assert_eq!(c[3], "1 (120m ago)");
}

#[test]
fn scheduling_gated_and_readiness_gates() {
    let c = cells(
        "pods",
        json!({
            "spec": {"containers": [{"name": "a"}], "readinessGates": [{"conditionType": "x/ready"}, {"conditionType": "y/ready"}]},
            "status": {"phase": "Pending", "nominatedNodeName": "node-2",
                "conditions": [{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"},
                    {"type": "x/ready", "status": "True"}, {"type": "y/ready", "status": "False"}],
                "podIPs": [{"ip": "fd00::5"}]}
        }),
    );
    assert_eq!(c[2], "SchedulingGated");
    assert_eq!(c[5], "fd00::5");
    assert_eq!(c[7], "node-2");
    assert_eq!(c[8], "1/2");
}

#[test]
fn pod_status_reason_overrides_phase() {
    let c = cells("pods", json!({"status": {"phase": "Failed", "reason": "Evicted"}}));
    assert_eq!(c[2], "Evicted");
}

// --------------------------------------------------------------------------
// Services, endpoints, slices
// --------------------------------------------------------------------------

#[test]
fn service_cells() {
    assert_eq!(
        names(&column_names("services")),
        ["Name", "Type", "Cluster-IP", "External-IP", "Port(s)", "Age", "Selector"]
    );
    let c = cells(
        "services",
        json!({"metadata": meta("kubernetes"),
            "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1"],
                "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]}}),
    );
    assert_eq!(
        c,
        [
            json!("kubernetes"),
            json!("ClusterIP"),
            json!("10.96.0.1"),
            json!("<none>"),
            json!("443/TCP"),
            json!("3h5m"),
            json!("<none>")
        ]
    );

    let c = cells(
        "services",
        json!({"metadata": meta("web"),
            "spec": {"type": "NodePort", "clusterIPs": ["10.96.12.4"], "selector": {"tier": "fe", "app": "web"},
                "ports": [{"port": 80, "nodePort": 32278, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]}}),
    );
    assert_eq!(c[1], "NodePort");
    assert_eq!(c[4], "80:32278/TCP,53/UDP");
    assert_eq!(c[6], "app=web,tier=fe");

    // Defaulting: no type means ClusterIP, no protocol means TCP; clusterIP alone is enough.
    let c = cells("services", json!({"spec": {"clusterIP": "10.0.0.9", "ports": [{"port": 8080}]}}));
    assert_eq!((c[1].as_str(), c[2].as_str(), c[4].as_str()), (Some("ClusterIP"), Some("10.0.0.9"), Some("8080/TCP")));

    let c = cells("services", json!({"spec": {"clusterIP": "None", "clusterIPs": ["None"]}}));
    assert_eq!(c[2], "None");
    assert_eq!(c[4], "<none>");

    let c = cells("services", json!({"spec": {"type": "ExternalName", "externalName": "db.example.com"}}));
    assert_eq!(c[2], "<none>");
    assert_eq!(c[3], "db.example.com");

    let c = cells("services", json!({"spec": {"type": "ClusterIP", "externalIPs": ["1.2.3.4", "5.6.7.8"]}}));
    assert_eq!(c[3], "1.2.3.4,5.6.7.8");
}

#[test]
fn load_balancer_external_ip() {
    let lb = |status: Value, external_ips: Value| {
        cells(
            "services",
            json!({"spec": {"type": "LoadBalancer", "clusterIPs": ["10.96.1.1"], "externalIPs": external_ips,
            "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}]}, "status": status}),
        )[3]
        .clone()
    };
    assert_eq!(lb(json!({}), json!(null)), "<pending>");
    assert_eq!(lb(json!({"loadBalancer": {}}), json!([])), "<pending>");
    assert_eq!(
        lb(
            json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}, {"hostname": "lb.example.com"}, {"ip": "203.0.113.2"}]}}),
            json!(null)
        ),
        "203.0.113.2,203.0.113.9,lb.example.com"
    );
    assert_eq!(
        lb(json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]}}), json!(["1.1.1.1"])),
        "203.0.113.9,1.1.1.1"
    );
    assert_eq!(lb(json!({}), json!(["1.1.1.1"])), "1.1.1.1");
}

#[test]
fn endpoints_truncation() {
    assert_eq!(names(&column_names("endpoints")), ["Name", "Endpoints", "Age"]);
    assert_eq!(cells("endpoints", json!({"metadata": {"name": "e"}}))[1], "<none>");
    assert_eq!(cells("endpoints", json!({"subsets": []}))[1], "<none>");
    let c = cells(
        "endpoints",
        json!({"subsets": [{"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}], "ports": [{"port": 80}]}]}),
    );
    assert_eq!(c[1], "10.0.0.1:80,10.0.0.2:80");
    let c = cells(
        "endpoints",
        json!({"subsets": [{"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}, {"ip": "10.0.0.3"}, {"ip": "10.0.0.4"}],
            "ports": [{"port": 80}]}]}),
    );
    assert_eq!(c[1], "10.0.0.1:80,10.0.0.2:80,10.0.0.3:80 + 1 more...");
    let c = cells(
        "endpoints",
        json!({"subsets": [{"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}], "ports": [{"port": 80}, {"port": 443}]}]}),
    );
    assert_eq!(c[1], "10.0.0.1:80,10.0.0.2:80,10.0.0.1:443 + 1 more...");
    // Headless without ports: bare IPs; IPv6 is bracketed with a port.
    assert_eq!(cells("endpoints", json!({"subsets": [{"addresses": [{"ip": "10.0.0.1"}]}]}))[1], "10.0.0.1");
    assert_eq!(
        cells("endpoints", json!({"subsets": [{"addresses": [{"ip": "fd00::1"}], "ports": [{"port": 53}]}]}))[1],
        "[fd00::1]:53"
    );
}

#[test]
fn endpointslice_cells() {
    assert_eq!(names(&column_names("endpointslices")), ["Name", "AddressType", "Ports", "Endpoints", "Age"]);
    let c = cells(
        "endpointslices.discovery.k8s.io",
        json!({"metadata": meta("web-abc12"), "addressType": "IPv4",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "named"}, {}, {"port": 9090}],
            "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2", "10.0.0.3"]}, {"addresses": ["10.0.0.4"]}]}),
    );
    assert_eq!(c[1], "IPv4");
    assert_eq!(c[2], "80,named,* + 1 more...");
    assert_eq!(c[3], "10.0.0.1,10.0.0.2,10.0.0.3 + 1 more...");
    let c = cells("endpointslices", json!({"addressType": "IPv4"}));
    assert_eq!((c[2].as_str(), c[3].as_str()), (Some("<unset>"), Some("<unset>")));
}

// --------------------------------------------------------------------------
// Nodes, namespaces
// --------------------------------------------------------------------------

#[test]
fn node_cells() {
    assert_eq!(
        names(&column_names("nodes")),
        [
            "Name",
            "Status",
            "Roles",
            "Age",
            "Version",
            "Internal-IP",
            "External-IP",
            "OS-Image",
            "Kernel-Version",
            "Container-Runtime"
        ]
    );
    let c = cells(
        "nodes",
        json!({"metadata": {"name": "cp-1", "creationTimestamp": ago(25 * 86400),
                "labels": {"node-role.kubernetes.io/control-plane": "", "node-role.kubernetes.io/etcd": "", "kubernetes.io/role": "master"}},
            "status": {"conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}],
                "addresses": [{"type": "InternalIP", "address": "192.168.1.10"}, {"type": "Hostname", "address": "cp-1"}],
                "nodeInfo": {"kubeletVersion": "v1.33.1", "osImage": "Debian GNU/Linux 12 (bookworm)",
                    "kernelVersion": "6.1.0-18-amd64", "containerRuntimeVersion": "containerd://1.7.13"}}}),
    );
    assert_eq!(
        c,
        [
            json!("cp-1"),
            json!("Ready"),
            json!("control-plane,etcd,master"),
            json!("25d"),
            json!("v1.33.1"),
            json!("192.168.1.10"),
            json!("<none>"),
            json!("Debian GNU/Linux 12 (bookworm)"),
            json!("6.1.0-18-amd64"),
            json!("containerd://1.7.13")
        ]
    );
    let c = cells(
        "nodes",
        json!({"metadata": {"name": "w"}, "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}),
    );
    assert_eq!(c[1], "NotReady,SchedulingDisabled");
    assert_eq!(c[2], "<none>");
    assert_eq!(c[7], "<unknown>");
    assert_eq!(cells("nodes", json!({"metadata": {"name": "new"}}))[1], "Unknown");
    assert_eq!(cells("nodes", json!({"spec": {"unschedulable": true}}))[1], "Unknown,SchedulingDisabled");
}

#[test]
fn namespace_cells() {
    assert_eq!(names(&column_names("namespaces")), ["Name", "Status", "Age"]);
    assert_eq!(
        cells("namespaces", json!({"metadata": meta("kube-system"), "status": {"phase": "Active"}})),
        [json!("kube-system"), json!("Active"), json!("3h5m")]
    );
    assert_eq!(
        cells("namespaces", json!({"metadata": meta("gone"), "status": {"phase": "Terminating"}}))[1],
        "Terminating"
    );
    assert_eq!(cells("namespaces", json!({"metadata": meta("fresh")}))[1], "Active");
}

// --------------------------------------------------------------------------
// Workloads
// --------------------------------------------------------------------------

fn template(containers: Value) -> Value {
    json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": containers}})
}

#[test]
fn replication_controller_and_replica_set_cells() {
    let rc_cols = column_names("replicationcontrollers");
    assert_eq!(names(&rc_cols), ["Name", "Desired", "Current", "Ready", "Age", "Containers", "Images", "Selector"]);
    assert_eq!(names(&column_names("replicasets")), names(&rc_cols));
    let c = cells(
        "replicationcontrollers",
        json!({"metadata": meta("rc"), "spec": {"replicas": 3, "selector": {"app": "web"},
            "template": template(json!([{"name": "nginx", "image": "nginx:1.27"}, {"name": "log", "image": "busybox"}]))},
            "status": {"replicas": 3, "readyReplicas": 2}}),
    );
    assert_eq!(
        c,
        [
            json!("rc"),
            json!(3),
            json!(3),
            json!(2),
            json!("3h5m"),
            json!("nginx,log"),
            json!("nginx:1.27,busybox"),
            json!("app=web")
        ]
    );
    let c = cells(
        "replicasets.apps",
        json!({"metadata": meta("web-5d8f"), "spec": {"selector": {"matchLabels": {"app": "web", "pod-template-hash": "5d8f"}},
            "template": template(json!([{"name": "nginx", "image": "nginx"}]))}}),
    );
    assert_eq!(c[1], 1, "replicas defaults to 1");
    assert_eq!(c[2], 0);
    assert_eq!(c[7], "app=web,pod-template-hash=5d8f");
}

#[test]
fn deployment_cells() {
    assert_eq!(
        names(&column_names("deployments")),
        ["Name", "Ready", "Up-to-date", "Available", "Age", "Containers", "Images", "Selector"]
    );
    let c = cells(
        "deployments",
        json!({"metadata": meta("web"), "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
            "template": template(json!([{"name": "nginx", "image": "nginx:1.27"}]))},
            "status": {"replicas": 3, "readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}}),
    );
    assert_eq!(
        c,
        [
            json!("web"),
            json!("2/3"),
            json!(3),
            json!(2),
            json!("3h5m"),
            json!("nginx"),
            json!("nginx:1.27"),
            json!("app=web")
        ]
    );
    let c =
        cells("deployments", json!({"spec": {"selector": {"matchExpressions": [{"key": "a", "operator": "Bogus"}]}}}));
    assert_eq!(c[1], "0/1");
    assert_eq!(c[7], "<invalid>");
}

#[test]
fn daemonset_and_statefulset_cells() {
    assert_eq!(
        names(&column_names("daemonsets")),
        [
            "Name",
            "Desired",
            "Current",
            "Ready",
            "Up-to-date",
            "Available",
            "Node Selector",
            "Age",
            "Containers",
            "Images",
            "Selector"
        ]
    );
    let c = cells(
        "daemonsets",
        json!({"metadata": meta("kube-proxy"),
            "spec": {"selector": {"matchLabels": {"k8s-app": "kube-proxy"}},
                "template": {"spec": {"nodeSelector": {"kubernetes.io/os": "linux"}, "containers": [{"name": "kube-proxy", "image": "kube-proxy:v1.33"}]}}},
            "status": {"desiredNumberScheduled": 3, "currentNumberScheduled": 3, "numberReady": 2, "updatedNumberScheduled": 3, "numberAvailable": 2}}),
    );
    assert_eq!(
        c,
        [
            json!("kube-proxy"),
            json!(3),
            json!(3),
            json!(2),
            json!(3),
            json!(2),
            json!("kubernetes.io/os=linux"),
            json!("3h5m"),
            json!("kube-proxy"),
            json!("kube-proxy:v1.33"),
            json!("k8s-app=kube-proxy")
        ]
    );
    assert_eq!(names(&column_names("statefulsets")), ["Name", "Ready", "Age", "Containers", "Images"]);
    let c =
        cells("statefulsets", json!({"metadata": meta("db"), "spec": {"replicas": 3}, "status": {"readyReplicas": 1}}));
    assert_eq!(c[1], "1/3");
}

#[test]
fn job_cells() {
    assert_eq!(
        names(&column_names("jobs")),
        ["Name", "Status", "Completions", "Duration", "Age", "Containers", "Images", "Selector"]
    );
    let c = cells(
        "jobs.batch",
        json!({"metadata": meta("pi"), "spec": {"completions": 1, "parallelism": 1,
                "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "abc"}},
                "template": template(json!([{"name": "pi", "image": "perl:5.34"}]))},
            "status": {"succeeded": 1, "startTime": ago(600), "completionTime": ago(600 - 47),
                "conditions": [{"type": "SuccessCriteriaMet", "status": "True"}, {"type": "Complete", "status": "True"}]}}),
    );
    assert_eq!(
        c,
        [
            json!("pi"),
            json!("Complete"),
            json!("1/1"),
            json!("47s"),
            json!("3h5m"),
            json!("pi"),
            json!("perl:5.34"),
            json!("batch.kubernetes.io/controller-uid=abc")
        ]
    );
    let running = cells("jobs", json!({"spec": {"parallelism": 3}, "status": {"startTime": ago(125), "active": 3}}));
    assert_eq!(
        (running[1].as_str(), running[2].as_str(), running[3].as_str()),
        (Some("Running"), Some("0/1 of 3"), Some("2m5s"))
    );
    let pending = cells("jobs", json!({"spec": {"completions": 5}, "status": {"succeeded": 2}}));
    assert_eq!((pending[2].as_str(), pending[3].as_str()), (Some("2/5"), Some("")));
    let failed = cells("jobs", json!({"status": {"conditions": [{"type": "Failed", "status": "True"}]}}));
    assert_eq!(failed[1], "Failed");
    assert_eq!(failed[2], "0/1");
    let suspended = cells("jobs", json!({"status": {"conditions": [{"type": "Suspended", "status": "True"}]}}));
    assert_eq!(suspended[1], "Suspended");
    let target = cells("jobs", json!({"status": {"conditions": [{"type": "FailureTarget", "status": "True"}]}}));
    assert_eq!(target[1], "FailureTarget");
    let deleting = cells(
        "jobs",
        json!({"metadata": {"deletionTimestamp": ago(1)}, "status": {"conditions": [{"type": "Suspended", "status": "True"}]}}),
    );
    assert_eq!(deleting[1], "Terminating");
    let not_complete = cells("jobs", json!({"status": {"conditions": [{"type": "Complete", "status": "False"}]}}));
    assert_eq!(not_complete[1], "Running");
}

#[test]
fn cronjob_cells() {
    let c = cells(
        "cronjobs",
        json!({"metadata": meta("backup"), "spec": {"schedule": "*/5 * * * *",
                "jobTemplate": {"spec": {"template": template(json!([{"name": "b", "image": "backup:1"}]))}}},
            "status": {"active": [{"name": "backup-1"}], "lastScheduleTime": ago(90)}}),
    );
    assert_eq!(
        c,
        [
            json!("backup"),
            json!("*/5 * * * *"),
            json!("<none>"),
            json!("False"),
            json!(1),
            json!("90s"),
            json!("3h5m"),
            json!("b"),
            json!("backup:1"),
            json!("<none>")
        ]
    );
    let c = cells("cronjobs", json!({"spec": {"suspend": true, "timeZone": "Etc/UTC"}}));
    assert_eq!((c[2].as_str(), c[3].as_str(), c[5].as_str()), (Some("Etc/UTC"), Some("True"), Some("<none>")));
}

#[test]
fn hpa_cells() {
    assert_eq!(
        names(&column_names("horizontalpodautoscalers")),
        ["Name", "Reference", "Targets", "MinPods", "MaxPods", "Replicas", "Age"]
    );
    let c = cells(
        "horizontalpodautoscalers.autoscaling",
        json!({"metadata": meta("web"),
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web", "apiVersion": "apps/v1"}, "minReplicas": 2, "maxReplicas": 10,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}},
                    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "500Mi"}}}]},
            "status": {"currentReplicas": 3, "currentMetrics": [
                {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 45, "averageValue": "90m"}}}]}}),
    );
    assert_eq!(
        c,
        [
            json!("web"),
            json!("Deployment/web"),
            json!("cpu: 45%/80%, memory: <unknown>/500Mi"),
            json!("2"),
            json!(10),
            json!(3),
            json!("3h5m")
        ]
    );
    let three = cells(
        "horizontalpodautoscalers",
        json!({"spec": {"scaleTargetRef": {"kind": "Deployment", "name": "w"}, "maxReplicas": 4, "metrics": [
            {"type": "Pods", "pods": {"metric": {"name": "qps"}, "target": {"type": "AverageValue", "averageValue": "1k"}}},
            {"type": "External", "external": {"metric": {"name": "q"}, "target": {"type": "AverageValue", "averageValue": "30"}}},
            {"type": "Object", "object": {"metric": {"name": "r"}, "target": {"type": "Value", "value": "2"}}}]}}),
    );
    assert_eq!(three[2], "<unknown>/1k, <unknown>/30 (avg) + 1 more...");
    assert_eq!(three[3], "1", "minReplicas defaults to 1");
    let v1 = cells(
        "horizontalpodautoscalers",
        json!({"spec": {"scaleTargetRef": {"kind": "Deployment", "name": "w"}, "minReplicas": 1, "maxReplicas": 5, "targetCPUUtilizationPercentage": 50},
            "status": {"currentCPUUtilizationPercentage": 12, "currentReplicas": 1}}),
    );
    assert_eq!(v1[2], "cpu: 12%/50%");
    assert_eq!(cells("horizontalpodautoscalers", json!({}))[2], "<none>");
}

// --------------------------------------------------------------------------
// Events, config, identity, misc
// --------------------------------------------------------------------------

#[test]
fn event_cells() {
    let cols = column_names("events");
    assert_eq!(
        names(&cols),
        ["Last Seen", "Type", "Reason", "Object", "Subobject", "Source", "Message", "First Seen", "Count", "Name"]
    );
    assert_eq!(cols.iter().map(|(_, p)| *p).collect::<Vec<_>>(), [0, 0, 0, 0, 1, 1, 0, 1, 1, 1]);
    let t = table("events", &[], now(), IncludeObject::None);
    assert_eq!(t["columnDefinitions"][0]["format"], "");
    assert_eq!(t["columnDefinitions"][9]["format"], "name");

    let c = cells(
        "events",
        json!({"metadata": {"name": "web.17d", "namespace": "default"}, "type": "Normal", "reason": "Pulled",
            "message": "  Successfully pulled image \"nginx\"\n", "count": 4,
            "firstTimestamp": ago(3600), "lastTimestamp": ago(65),
            "involvedObject": {"kind": "Pod", "name": "web", "fieldPath": "spec.containers{nginx}"},
            "source": {"component": "kubelet", "host": "node-1"}}),
    );
    assert_eq!(
        c,
        [
            json!("65s"),
            json!("Normal"),
            json!("Pulled"),
            json!("pod/web"),
            json!("spec.containers{nginx}"),
            json!("kubelet, node-1"),
            json!("Successfully pulled image \"nginx\""),
            json!("60m"),
            json!(4),
            json!("web.17d")
        ]
    );
    // New-style event: eventTime and series, reportingController as source.
    let c = cells(
        "events",
        json!({"metadata": {"name": "e"}, "type": "Warning", "reason": "FailedScheduling", "eventTime": "2024-06-01T11:50:00.000000Z",
            "series": {"count": 7, "lastObservedTime": "2024-06-01T11:59:00.000000Z"},
            "reportingComponent": "default-scheduler", "reportingInstance": "",
            "involvedObject": {"kind": "Pod", "name": "p"}, "message": "0/3 nodes are available"}),
    );
    assert_eq!(c[0], "60s");
    assert_eq!(c[5], "default-scheduler");
    assert_eq!(c[7], "10m");
    assert_eq!(c[8], 7);
    let c = cells("events", json!({"involvedObject": {"kind": "Node"}}));
    assert_eq!((c[0].as_str(), c[3].as_str(), c[7].as_str()), (Some("<unknown>"), Some("node"), Some("<unknown>")));
    assert_eq!(c[8], 1, "singleton events count 1");
}

#[test]
fn config_and_identity_cells() {
    assert_eq!(names(&column_names("configmaps")), ["Name", "Data", "Age"]);
    let c = cells(
        "configmaps",
        json!({"metadata": meta("kube-root-ca.crt"), "data": {"ca.crt": "x"}, "binaryData": {"b": "AA=="}}),
    );
    assert_eq!(c, [json!("kube-root-ca.crt"), json!(2), json!("3h5m")]);

    assert_eq!(names(&column_names("secrets")), ["Name", "Type", "Data", "Age"]);
    let c = cells(
        "secrets",
        json!({"metadata": meta("tls"), "type": "kubernetes.io/tls", "data": {"tls.crt": "", "tls.key": ""}}),
    );
    assert_eq!(c, [json!("tls"), json!("kubernetes.io/tls"), json!(2), json!("3h5m")]);
    assert_eq!(cells("secrets", json!({"metadata": meta("s")}))[1], "Opaque");

    assert_eq!(names(&column_names("serviceaccounts")), ["Name", "Secrets", "Age"]);
    assert_eq!(cells("serviceaccounts", json!({"metadata": meta("default")}))[1], 0);
    assert_eq!(cells("serviceaccounts", json!({"secrets": [{"name": "a"}]}))[1], 1);

    assert_eq!(names(&column_names("leases")), ["Name", "Holder", "Age"]);
    let c = cells(
        "leases.coordination.k8s.io",
        json!({"metadata": meta("kube-scheduler"), "spec": {"holderIdentity": "cp-1_abc"}}),
    );
    assert_eq!(c, [json!("kube-scheduler"), json!("cp-1_abc"), json!("3h5m")]);
}

#[test]
fn componentstatus_cells() {
    assert_eq!(names(&column_names("componentstatuses")), ["Name", "Status", "Message", "Error"]);
    let c = cells(
        "componentstatuses",
        json!({"metadata": {"name": "etcd-0"}, "conditions": [{"type": "Healthy", "status": "True", "message": "ok"}]}),
    );
    assert_eq!(c, [json!("etcd-0"), json!("Healthy"), json!("ok"), json!("")]);
    let c = cells(
        "componentstatuses",
        json!({"metadata": {"name": "scheduler"}, "conditions": [{"type": "Healthy", "status": "False", "error": "connection refused"}]}),
    );
    assert_eq!(c, [json!("scheduler"), json!("Unhealthy"), json!(""), json!("connection refused")]);
    assert_eq!(cells("componentstatuses", json!({}))[1], "Unknown");
}

#[test]
fn extra_builtin_printers() {
    let c = cells(
        "ingresses.networking.k8s.io",
        json!({"metadata": meta("web"), "spec": {"ingressClassName": "nginx", "tls": [{"hosts": ["a.example.com"]}],
            "rules": [{"host": "a.example.com"}, {"host": "b.example.com"}, {}, {"host": "c.example.com"}, {"host": "d.example.com"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.5"}]}}}),
    );
    assert_eq!(
        c,
        [
            json!("web"),
            json!("nginx"),
            json!("a.example.com,b.example.com,c.example.com + 2 more..."),
            json!("203.0.113.5"),
            json!("80, 443"),
            json!("3h5m")
        ]
    );
    assert_eq!(cells("ingresses", json!({}))[1..5], [json!("<none>"), json!("*"), json!(""), json!("80")]);

    let c = cells(
        "persistentvolumeclaims",
        json!({"metadata": meta("data"), "spec": {"volumeName": "pv-1", "storageClassName": "standard"},
            "status": {"phase": "Bound", "capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce", "ReadWriteOnce"]}}),
    );
    assert_eq!(
        c,
        [
            json!("data"),
            json!("Bound"),
            json!("pv-1"),
            json!("10Gi"),
            json!("RWO"),
            json!("standard"),
            json!("<unset>"),
            json!("3h5m"),
            json!("Filesystem")
        ]
    );
    let c = cells(
        "persistentvolumes",
        json!({"metadata": {"name": "pv-1"}, "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteMany", "ReadOnlyMany"],
            "claimRef": {"namespace": "default", "name": "data"}}, "status": {"phase": "Bound"}}),
    );
    assert_eq!(
        c[1..7],
        [json!("10Gi"), json!("ROX,RWX"), json!("Retain"), json!("Bound"), json!("default/data"), json!("")]
    );

    let c = cells(
        "storageclasses",
        json!({"metadata": {"name": "standard", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}}, "provisioner": "rancher.io/local-path"}),
    );
    assert_eq!(
        c[..5],
        [
            json!("standard (default)"),
            json!("rancher.io/local-path"),
            json!("Delete"),
            json!("Immediate"),
            json!(false)
        ]
    );

    let c = cells(
        "clusterrolebindings",
        json!({"metadata": {"name": "admin"}, "roleRef": {"kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"kind": "Group", "name": "system:masters"}, {"kind": "ServiceAccount", "namespace": "kube-system", "name": "a"},
                {"kind": "User", "name": "alice"}, {"kind": "User", "name": "bob"}]}),
    );
    assert_eq!(c[1], "ClusterRole/cluster-admin");
    assert_eq!(c[3..], [json!("alice, bob"), json!("system:masters"), json!("kube-system/a")]);

    assert_eq!(cells("networkpolicies", json!({"spec": {"podSelector": {}}}))[1], "<none>");
    assert_eq!(cells("networkpolicies", json!({"spec": {"podSelector": {"matchLabels": {"app": "db"}}}}))[1], "app=db");
    let c = cells("poddisruptionbudgets", json!({"spec": {"minAvailable": 2}, "status": {"disruptionsAllowed": 1}}));
    assert_eq!(c[1..4], [json!("2"), json!("N/A"), json!(1)]);
    assert_eq!(cells("poddisruptionbudgets", json!({"spec": {"maxUnavailable": "25%"}}))[2], "25%");
    let c = cells("priorityclasses", json!({"metadata": {"name": "system-node-critical"}, "value": 2000001000}));
    assert_eq!(c[1..3], [json!(2000001000), json!(false)]);
    assert_eq!(c[4], "PreemptLowerPriority");
}

#[test]
fn fallback_tables() {
    assert_eq!(names(&column_names("widgets.example.com")), ["Name", "Age"]);
    let t = render("widgets.example.com", json!({"metadata": meta("w1")}));
    assert_eq!(t["rows"][0]["cells"], json!(["w1", "3h5m"]));
    assert_eq!(t["columnDefinitions"][1]["type"], "date");
    assert_eq!(t["columnDefinitions"][0]["format"], "name");
    assert_eq!(render("widgets", json!({}))["rows"][0]["cells"], json!(["", null]));

    // A CRD whose plural collides with a built-in is still a custom resource.
    assert_eq!(names(&column_names("pods.example.com")), ["Name", "Age"]);

    assert_eq!(names(&column_names("clusterroles")), ["Name", "Created At"]);
    let t = render(
        "roles.rbac.authorization.k8s.io",
        json!({"metadata": {"name": "r", "creationTimestamp": "2024-05-01T10:00:00Z"}}),
    );
    assert_eq!(t["rows"][0]["cells"], json!(["r", "2024-05-01T10:00:00Z"]));
    assert_eq!(render("limitranges", json!({}))["rows"][0]["cells"], json!(["", "0001-01-01T00:00:00Z"]));
}

// --------------------------------------------------------------------------
// Robustness
// --------------------------------------------------------------------------

#[test]
fn malformed_objects_never_panic_and_fill_every_column() {
    let resources = [
        "pods",
        "services",
        "endpoints",
        "nodes",
        "namespaces",
        "replicationcontrollers",
        "replicasets",
        "deployments",
        "daemonsets",
        "statefulsets",
        "jobs",
        "cronjobs",
        "events",
        "configmaps",
        "secrets",
        "serviceaccounts",
        "componentstatuses",
        "endpointslices",
        "horizontalpodautoscalers",
        "leases",
        "ingresses",
        "persistentvolumes",
        "persistentvolumeclaims",
        "storageclasses",
        "rolebindings",
        "clusterrolebindings",
        "networkpolicies",
        "poddisruptionbudgets",
        "priorityclasses",
        "roles",
        "limitranges",
        "customresourcedefinitions",
        "things",
    ];
    let garbage = [
        json!(null),
        json!("pod"),
        json!(42),
        json!([1, 2, 3]),
        json!({}),
        json!({"metadata": "x", "spec": [], "status": 7}),
        json!({"metadata": {"name": 5, "labels": [1], "creationTimestamp": "yesterday", "deletionTimestamp": {}},
            "spec": {"containers": "none", "initContainers": [1, "a", null], "ports": [null, "80", {"port": "x"}],
                "replicas": "three", "selector": "app=web", "template": {"spec": {"containers": [{"name": 1}]}},
                "metrics": [{"type": "Resource"}, {"type": "Pods"}, {"type": "External"}, {"type": "Object"},
                    {"type": "ContainerResource"}, {"type": "Nope"}], "rules": "x", "tls": {}, "type": ["LoadBalancer"],
                "capacity": [], "claimRef": "x", "podSelector": 3, "minAvailable": {}},
            "status": {"conditions": [null, 1, {"type": 5}], "containerStatuses": [null, {"state": "running"},
                {"state": {"terminated": "yes"}, "lastState": {"terminated": {"finishedAt": 3}}}],
                "initContainerStatuses": [{"state": null}, 5], "podIPs": "1.2.3.4", "loadBalancer": {"ingress": [null, {"ip": 1}]},
                "currentMetrics": "cpu", "addresses": [{"type": "InternalIP"}], "nodeInfo": 3, "phase": 1},
            "subsets": [{"addresses": [null], "ports": [{}]}, "bad"], "involvedObject": "pod", "series": {},
            "data": "abc", "secrets": {}, "conditions": {"type": "Healthy"}, "endpoints": [{"addresses": [1, null]}], "ports": 80,
            "subjects": [null, {"kind": []}], "roleRef": [], "value": "high"}),
    ];
    for resource in resources {
        let width = column_names(resource).len();
        for obj in &garbage {
            for include in [IncludeObject::None, IncludeObject::Metadata, IncludeObject::Object] {
                let t = table(resource, std::slice::from_ref(obj), now(), include);
                let row_cells = t["rows"][0]["cells"].as_array().unwrap();
                assert_eq!(row_cells.len(), width, "{resource}: {obj}");
            }
        }
    }
}

#[test]
fn future_and_far_past_timestamps() {
    let future = json!({"metadata": {"name": "f", "creationTimestamp": "2024-06-01T12:00:05Z"}});
    assert_eq!(cells("configmaps", future)[2], "<invalid>");
    let skew = json!({"metadata": {"name": "f", "creationTimestamp": "2024-06-01T12:00:01Z"}});
    assert_eq!(cells("configmaps", skew)[2], "0s");
    let ancient = json!({"metadata": {"name": "a", "creationTimestamp": "1000-01-01T00:00:00Z"}});
    assert_eq!(cells("configmaps", ancient)[2], "292y");
}
