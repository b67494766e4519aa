//! Per-resource columns and cells, ported from Kubernetes 1.33
//! `pkg/printers/internalversion/printers.go`.
//!
//! Kubernetes prints *defaulted* objects: defaulting runs on every decode, also
//! when reading from etcd. So where a printer reads a field that API defaulting
//! always fills (a Service's `type`, a port's `protocol`, `replicas`, a Secret's
//! `type`…) we apply the same default, and kubectl shows what it would show
//! against a real cluster even if the stored JSON omits it. Fields set by
//! registry strategies instead (a new Pod's `Pending` phase) are not invented.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use super::descriptions as d;
use super::duration::{human_duration, since};
use crate::builtin_resource;
use crate::json::{arr, bool_of, int_of, int_or_zero, map_len, present, str_of, string_map, time_of};
use crate::labels::{LabelSelector, format_label_selector, format_labels};

/// A `metav1.TableColumnDefinition`.
pub(crate) struct Column {
    pub name: &'static str,
    pub ty: &'static str,
    pub format: &'static str,
    pub description: &'static str,
    pub priority: i32,
}

/// One table row before the `object` is attached.
pub(crate) struct Row {
    pub cells: Vec<Value>,
    /// `TableRow.conditions`; only pods set it (Completed for finished pods).
    pub conditions: Option<Value>,
}

impl Row {
    fn new(cells: Vec<Value>) -> Self {
        Row { cells, conditions: None }
    }
}

pub(crate) struct Printer {
    pub columns: &'static [Column],
    pub row: fn(&Value, DateTime<Utc>) -> Row,
}

const fn col(name: &'static str, ty: &'static str, description: &'static str) -> Column {
    Column { name, ty, format: "", description, priority: 0 }
}

/// A priority-1 column: kubectl shows it only with `-o wide`.
const fn wide(name: &'static str, ty: &'static str, description: &'static str) -> Column {
    Column { name, ty, format: "", description, priority: 1 }
}

const NAME: Column =
    Column { name: "Name", ty: "string", format: "name", description: d::OBJECT_META_NAME, priority: 0 };
const AGE: Column = col("Age", "string", d::OBJECT_META_CREATION_TIMESTAMP);
const CONTAINERS: Column = wide("Containers", "string", "Names of each container in the template.");
const IMAGES: Column = wide("Images", "string", "Images referenced by each container in the template.");

pub(crate) fn printer_for(resource: &str) -> Printer {
    let (columns, row): (&'static [Column], fn(&Value, DateTime<Utc>) -> Row) = match builtin_resource(resource) {
        "pods" => (POD_COLUMNS, pod_row),
        "services" => (SERVICE_COLUMNS, service_row),
        "endpoints" => (ENDPOINTS_COLUMNS, endpoints_row),
        "nodes" => (NODE_COLUMNS, node_row),
        "namespaces" => (NAMESPACE_COLUMNS, namespace_row),
        "replicationcontrollers" => (RC_COLUMNS, rc_row),
        "replicasets" => (RS_COLUMNS, rs_row),
        "deployments" => (DEPLOYMENT_COLUMNS, deployment_row),
        "daemonsets" => (DAEMONSET_COLUMNS, daemonset_row),
        "statefulsets" => (STATEFULSET_COLUMNS, statefulset_row),
        "jobs" => (JOB_COLUMNS, job_row),
        "cronjobs" => (CRONJOB_COLUMNS, cronjob_row),
        "events" => (EVENT_COLUMNS, event_row),
        "configmaps" => (CONFIGMAP_COLUMNS, configmap_row),
        "secrets" => (SECRET_COLUMNS, secret_row),
        "serviceaccounts" => (SERVICEACCOUNT_COLUMNS, serviceaccount_row),
        "componentstatuses" => (COMPONENTSTATUS_COLUMNS, componentstatus_row),
        "endpointslices" => (ENDPOINTSLICE_COLUMNS, endpointslice_row),
        "horizontalpodautoscalers" => (HPA_COLUMNS, hpa_row),
        "leases" => (LEASE_COLUMNS, lease_row),
        "ingresses" => (INGRESS_COLUMNS, ingress_row),
        "persistentvolumes" => (PV_COLUMNS, pv_row),
        "persistentvolumeclaims" => (PVC_COLUMNS, pvc_row),
        "storageclasses" => (STORAGECLASS_COLUMNS, storageclass_row),
        "rolebindings" => (ROLEBINDING_COLUMNS, binding_row),
        "clusterrolebindings" => (CLUSTERROLEBINDING_COLUMNS, binding_row),
        "networkpolicies" => (NETWORKPOLICY_COLUMNS, networkpolicy_row),
        "poddisruptionbudgets" => (PDB_COLUMNS, pdb_row),
        "priorityclasses" => (PRIORITYCLASS_COLUMNS, priorityclass_row),
        // Built-ins with no printer get the API server's default table convertor.
        "roles" | "clusterroles" | "limitranges" | "customresourcedefinitions" => (CREATED_AT_COLUMNS, created_at_row),
        // What a custom resource without additionalPrinterColumns shows.
        _ => (DEFAULT_COLUMNS, default_row),
    };
    Printer { columns, row }
}

// ---------------------------------------------------------------------------
// Shared cell helpers
// ---------------------------------------------------------------------------

fn s(v: impl Into<String>) -> Value {
    Value::String(v.into())
}

fn name(obj: &Value) -> Value {
    s(str_of(&obj["metadata"]["name"]))
}

fn age(obj: &Value, now: DateTime<Utc>) -> Value {
    s(since(&obj["metadata"]["creationTimestamp"], now))
}

fn deleting(obj: &Value) -> bool {
    present(&obj["metadata"]["deletionTimestamp"])
}

/// `layoutContainerCells`: container names and images, comma-joined.
fn container_cells(containers: &Value) -> [Value; 2] {
    let containers = arr(containers);
    let names: Vec<&str> = containers.iter().map(|c| str_of(&c["name"])).collect();
    let images: Vec<&str> = containers.iter().map(|c| str_of(&c["image"])).collect();
    [s(names.join(",")), s(images.join(","))]
}

/// `replicas` as defaulting leaves it: absent means 1.
fn replicas(spec: &Value) -> i64 {
    int_of(&spec["replicas"]).unwrap_or(1)
}

/// `resource.Quantity.String()` of a pointer field: `<nil>` when unset.
fn quantity(v: &Value) -> String {
    match v {
        Value::String(q) => q.clone(),
        Value::Number(n) => n.to_string(),
        _ => "<nil>".to_string(),
    }
}

/// `resource.Quantity.String()` of a map lookup: the zero Quantity, `0`, when unset.
fn quantity_or_zero(v: &Value) -> String {
    if v.is_null() { "0".to_string() } else { quantity(v) }
}

/// `IntOrString.String()`.
fn int_or_string(v: &Value) -> String {
    match v {
        Value::String(x) => x.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

/// The `list + N more...` truncation printers.go uses for endpoint-like lists
/// (`listWithMoreString`); an empty list is `<unset>`.
fn list_with_more(list: &[String], more: bool, count: usize, max: usize) -> String {
    let ret = list.join(",");
    if more {
        return format!("{ret} + {} more...", count.saturating_sub(max));
    }
    if ret.is_empty() { "<unset>".to_string() } else { ret }
}

/// `net.JoinHostPort`: brackets IPv6 literals.
fn join_host_port(host: &str, port: i64) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

/// Sorted, de-duplicated IPs (or hostnames) of a load balancer status
/// (`loadBalancerStatusStringer` with `wide`, as the server always prints).
fn load_balancer_ingress(status: &Value) -> String {
    let set: BTreeSet<&str> = arr(&status["ingress"])
        .iter()
        .filter_map(|i| {
            let ip = str_of(&i["ip"]);
            let host = str_of(&i["hostname"]);
            if !ip.is_empty() {
                Some(ip)
            } else if !host.is_empty() {
                Some(host)
            } else {
                None
            }
        })
        .collect();
    set.into_iter().collect::<Vec<_>>().join(",")
}

/// `hasJobCondition` & co: the first condition of that type decides.
fn condition_true(conditions: &Value, ty: &str) -> bool {
    arr(conditions).iter().find(|c| str_of(&c["type"]) == ty).is_some_and(|c| str_of(&c["status"]) == "True")
}

// ---------------------------------------------------------------------------
// Pods
// ---------------------------------------------------------------------------

const POD_COLUMNS: &[Column] = &[
    NAME,
    col("Ready", "string", "The aggregate readiness state of this pod for accepting traffic."),
    col("Status", "string", "The aggregate status of the containers in this pod."),
    col(
        "Restarts",
        "string",
        "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
    ),
    AGE,
    wide("IP", "string", d::POD_STATUS_POD_IP),
    wide("Node", "string", d::POD_SPEC_NODE_NAME),
    wide("Nominated Node", "string", d::POD_STATUS_NOMINATED_NODE_NAME),
    wide("Readiness Gates", "string", d::POD_SPEC_READINESS_GATES),
];

/// Keeps the later of `current` and the `finishedAt` of a `lastState.terminated`.
fn note_restart(current: &mut Option<DateTime<Utc>>, terminated: &Value) {
    if !present(terminated) {
        return;
    }
    if let Some(t) = time_of(&terminated["finishedAt"])
        && current.is_none_or(|c| c < t)
    {
        *current = Some(t);
    }
}

/// `printPod`: READY counts ready containers (plus started sidecars), STATUS
/// condenses phase, init progress and the most telling container state, and
/// RESTARTS adds how long ago the last restart was.
fn pod_row(pod: &Value, now: DateTime<Utc>) -> Row {
    let spec = &pod["spec"];
    let status = &pod["status"];
    let phase = str_of(&status["phase"]);

    let mut restarts: i64 = 0;
    let mut sidecar_restarts: i64 = 0;
    let mut total = arr(&spec["containers"]).len();
    let mut ready: i64 = 0;
    let mut last_restart: Option<DateTime<Utc>> = None;
    let mut last_sidecar_restart: Option<DateTime<Utc>> = None;

    let mut reason = phase.to_string();
    if !str_of(&status["reason"]).is_empty() {
        reason = str_of(&status["reason"]).to_string();
    }
    // A pod held back by scheduling gates says so instead of "Pending".
    for c in arr(&status["conditions"]) {
        if str_of(&c["type"]) == "PodScheduled" && str_of(&c["reason"]) == "SchedulingGated" {
            reason = "SchedulingGated".to_string();
        }
    }

    let conditions = match phase {
        "Succeeded" => Some(json!([{
            "type": "Completed", "status": "True", "reason": "Succeeded",
            "message": "The pod has completed successfully.",
        }])),
        "Failed" => Some(json!([{
            "type": "Completed", "status": "True", "reason": "Failed", "message": "The pod failed.",
        }])),
        _ => None,
    };

    // Init containers with restartPolicy Always are sidecars: they count toward
    // READY's total and keep running after initialization.
    let init_specs = arr(&spec["initContainers"]);
    let mut is_sidecar: HashMap<&str, bool> = HashMap::new();
    for c in init_specs {
        let sidecar = str_of(&c["restartPolicy"]) == "Always";
        is_sidecar.insert(str_of(&c["name"]), sidecar);
        if sidecar {
            total += 1;
        }
    }

    let mut initializing = false;
    for (i, c) in arr(&status["initContainerStatuses"]).iter().enumerate() {
        let count = int_or_zero(&c["restartCount"]);
        restarts += count;
        note_restart(&mut last_restart, &c["lastState"]["terminated"]);
        let sidecar = is_sidecar.get(str_of(&c["name"])).copied().unwrap_or(false);
        if sidecar {
            sidecar_restarts += count;
            note_restart(&mut last_sidecar_restart, &c["lastState"]["terminated"]);
        }
        let terminated = &c["state"]["terminated"];
        let waiting = &c["state"]["waiting"];
        if present(terminated) && int_or_zero(&terminated["exitCode"]) == 0 {
            continue;
        }
        if sidecar && bool_of(&c["started"]) {
            if bool_of(&c["ready"]) {
                ready += 1;
            }
            continue;
        }
        if present(terminated) {
            let r = str_of(&terminated["reason"]);
            reason = if !r.is_empty() {
                format!("Init:{r}")
            } else if int_or_zero(&terminated["signal"]) != 0 {
                format!("Init:Signal:{}", int_or_zero(&terminated["signal"]))
            } else {
                format!("Init:ExitCode:{}", int_or_zero(&terminated["exitCode"]))
            };
        } else if present(waiting)
            && !str_of(&waiting["reason"]).is_empty()
            && str_of(&waiting["reason"]) != "PodInitializing"
        {
            reason = format!("Init:{}", str_of(&waiting["reason"]));
        } else {
            reason = format!("Init:{i}/{}", init_specs.len());
        }
        initializing = true;
        break;
    }

    if !initializing || condition_true(&status["conditions"], "Initialized") {
        // Once initialized, only sidecar restarts still count from init containers.
        restarts = sidecar_restarts;
        last_restart = last_sidecar_restart;
        let mut has_running = false;
        // Walked in reverse so the first container's state wins the STATUS.
        for c in arr(&status["containerStatuses"]).iter().rev() {
            restarts += int_or_zero(&c["restartCount"]);
            note_restart(&mut last_restart, &c["lastState"]["terminated"]);
            let waiting = &c["state"]["waiting"];
            let terminated = &c["state"]["terminated"];
            if present(waiting) && !str_of(&waiting["reason"]).is_empty() {
                reason = str_of(&waiting["reason"]).to_string();
            } else if present(terminated) && !str_of(&terminated["reason"]).is_empty() {
                reason = str_of(&terminated["reason"]).to_string();
            } else if present(terminated) {
                let signal = int_or_zero(&terminated["signal"]);
                reason = if signal != 0 {
                    format!("Signal:{signal}")
                } else {
                    format!("ExitCode:{}", int_or_zero(&terminated["exitCode"]))
                };
            } else if bool_of(&c["ready"]) && present(&c["state"]["running"]) {
                has_running = true;
                ready += 1;
            }
        }
        // One finished container must not make a still-running pod look done.
        if reason == "Completed" && has_running {
            reason = if condition_true(&status["conditions"], "Ready") { "Running" } else { "NotReady" }.to_string();
        }
    }

    if deleting(pod) && str_of(&status["reason"]) == "NodeLost" {
        reason = "Unknown".to_string();
    } else if deleting(pod) && phase != "Succeeded" && phase != "Failed" {
        reason = "Terminating".to_string();
    }

    let restarts_cell = match last_restart {
        Some(t) if restarts != 0 => format!("{restarts} ({} ago)", human_duration(now - t)),
        _ => restarts.to_string(),
    };

    // Kubernetes keeps podIP and podIPs[0] in sync (podIP wins on conflict);
    // read either so objects written with only one still print their address.
    let mut pod_ip = str_of(&status["podIP"]).to_string();
    if pod_ip.is_empty() {
        pod_ip = arr(&status["podIPs"]).first().map(|p| str_of(&p["ip"]).to_string()).unwrap_or_default();
    }
    let or_none = |v: &str| if v.is_empty() { "<none>".to_string() } else { v.to_string() };

    let gates = arr(&spec["readinessGates"]);
    let readiness_gates = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let true_conditions =
            gates.iter().filter(|g| condition_true(&status["conditions"], str_of(&g["conditionType"]))).count();
        format!("{true_conditions}/{}", gates.len())
    };

    Row {
        cells: vec![
            name(pod),
            s(format!("{ready}/{total}")),
            s(reason),
            s(restarts_cell),
            age(pod, now),
            s(or_none(&pod_ip)),
            s(or_none(str_of(&spec["nodeName"]))),
            s(or_none(str_of(&status["nominatedNodeName"]))),
            s(readiness_gates),
        ],
        conditions,
    }
}

// ---------------------------------------------------------------------------
// Services, endpoints, endpoint slices, ingresses
// ---------------------------------------------------------------------------

const SERVICE_COLUMNS: &[Column] = &[
    NAME,
    col("Type", "string", d::SERVICE_SPEC_TYPE),
    col("Cluster-IP", "string", d::SERVICE_SPEC_CLUSTER_IP),
    col("External-IP", "string", d::SERVICE_SPEC_EXTERNAL_IPS),
    col("Port(s)", "string", d::SERVICE_SPEC_PORTS),
    AGE,
    wide("Selector", "string", d::SERVICE_SPEC_SELECTOR),
];

fn service_row(svc: &Value, now: DateTime<Utc>) -> Row {
    let spec = &svc["spec"];
    let ty = match str_of(&spec["type"]) {
        "" => "ClusterIP",
        t => t,
    };
    // clusterIPs[0] is the primary; older writers may only set clusterIP.
    let cluster_ip = arr(&spec["clusterIPs"])
        .first()
        .map(str_of)
        .filter(|ip| !ip.is_empty())
        .unwrap_or_else(|| str_of(&spec["clusterIP"]));
    let cluster_ip = if cluster_ip.is_empty() { "<none>" } else { cluster_ip };

    let external_ips: Vec<&str> = arr(&spec["externalIPs"]).iter().map(str_of).collect();
    let external = match ty {
        "ClusterIP" | "NodePort" => {
            if external_ips.is_empty() {
                "<none>".to_string()
            } else {
                external_ips.join(",")
            }
        }
        "LoadBalancer" => {
            let lb = load_balancer_ingress(&svc["status"]["loadBalancer"]);
            if !external_ips.is_empty() {
                let mut all: Vec<&str> = if lb.is_empty() { Vec::new() } else { lb.split(',').collect() };
                all.extend(external_ips.iter().copied());
                all.join(",")
            } else if !lb.is_empty() {
                lb
            } else {
                // Waiting for a load balancer controller to assign an address.
                "<pending>".to_string()
            }
        }
        "ExternalName" => str_of(&spec["externalName"]).to_string(),
        _ => "<unknown>".to_string(),
    };

    let ports: Vec<String> = arr(&spec["ports"])
        .iter()
        .map(|p| {
            let port = int_or_zero(&p["port"]);
            let protocol = match str_of(&p["protocol"]) {
                "" => "TCP",
                proto => proto,
            };
            let node_port = int_or_zero(&p["nodePort"]);
            if node_port > 0 { format!("{port}:{node_port}/{protocol}") } else { format!("{port}/{protocol}") }
        })
        .collect();
    let ports = if ports.is_empty() { "<none>".to_string() } else { ports.join(",") };

    Row::new(vec![
        name(svc),
        s(ty),
        s(cluster_ip),
        s(external),
        s(ports),
        age(svc, now),
        s(format_labels(&string_map(&spec["selector"]))),
    ])
}

const ENDPOINTS_COLUMNS: &[Column] = &[NAME, col("Endpoints", "string", d::ENDPOINTS_SUBSETS), AGE];

/// `formatEndpoints`: the first three `ip:port` pairs, then `+ N more...`.
fn format_endpoints(ep: &Value) -> String {
    let subsets = arr(&ep["subsets"]);
    if subsets.is_empty() {
        return "<none>".to_string();
    }
    const MAX: usize = 3;
    let mut list: Vec<String> = Vec::new();
    let mut more = false;
    let mut count = 0usize;
    for ss in subsets {
        let addresses = arr(&ss["addresses"]);
        let ports = arr(&ss["ports"]);
        if ports.is_empty() {
            // Headless services may have no ports: list bare IPs.
            count += addresses.len();
            for a in addresses {
                if list.len() == MAX {
                    more = true;
                    break;
                }
                list.push(str_of(&a["ip"]).to_string());
            }
            continue;
        }
        for port in ports {
            count += addresses.len();
            for a in addresses {
                if list.len() == MAX {
                    more = true;
                    break;
                }
                list.push(join_host_port(str_of(&a["ip"]), int_or_zero(&port["port"])));
            }
        }
    }
    let ret = list.join(",");
    if more { format!("{ret} + {} more...", count.saturating_sub(MAX)) } else { ret }
}

fn endpoints_row(ep: &Value, now: DateTime<Utc>) -> Row {
    Row::new(vec![name(ep), s(format_endpoints(ep)), age(ep, now)])
}

const ENDPOINTSLICE_COLUMNS: &[Column] = &[
    NAME,
    col("AddressType", "string", d::ENDPOINT_SLICE_ADDRESS_TYPE),
    col("Ports", "string", d::ENDPOINT_SLICE_PORTS),
    col("Endpoints", "string", d::ENDPOINT_SLICE_ENDPOINTS),
    AGE,
];

fn endpointslice_row(slice: &Value, now: DateTime<Utc>) -> Row {
    const MAX: usize = 3;
    let mut ports = Vec::new();
    let mut count = 0;
    for p in arr(&slice["ports"]) {
        if ports.len() < MAX {
            ports.push(match int_of(&p["port"]) {
                Some(n) => n.to_string(),
                None if p["name"].is_string() => str_of(&p["name"]).to_string(),
                None => "*".to_string(),
            });
        }
        count += 1;
    }
    let ports = list_with_more(&ports, count > MAX, count, MAX);

    let mut addresses = Vec::new();
    let mut count = 0;
    for e in arr(&slice["endpoints"]) {
        for a in arr(&e["addresses"]) {
            if addresses.len() < MAX {
                addresses.push(str_of(a).to_string());
            }
            count += 1;
        }
    }
    let endpoints = list_with_more(&addresses, count > MAX, count, MAX);

    Row::new(vec![name(slice), s(str_of(&slice["addressType"])), s(ports), s(endpoints), age(slice, now)])
}

const INGRESS_COLUMNS: &[Column] = &[
    NAME,
    col("Class", "string", "The name of the IngressClass resource that should be used for additional configuration"),
    col("Hosts", "string", "Hosts that incoming requests are matched against before the ingress rule"),
    col("Address", "string", "Address is a list containing ingress points for the load-balancer"),
    col("Ports", "string", "Ports of TLS configurations that open"),
    AGE,
];

fn ingress_row(ing: &Value, now: DateTime<Utc>) -> Row {
    let spec = &ing["spec"];
    let class = spec["ingressClassName"].as_str().unwrap_or("<none>");
    // formatHosts: up to three hosts, then "+ N more..." counted over all rules.
    const MAX: usize = 3;
    let rules = arr(&spec["rules"]);
    let mut hosts: Vec<&str> = Vec::new();
    let mut more = false;
    for r in rules {
        if hosts.len() == MAX {
            more = true;
        }
        let host = str_of(&r["host"]);
        if !more && !host.is_empty() {
            hosts.push(host);
        }
    }
    let hosts = if hosts.is_empty() {
        "*".to_string()
    } else if more {
        format!("{} + {} more...", hosts.join(","), rules.len().saturating_sub(MAX))
    } else {
        hosts.join(",")
    };
    let ports = if arr(&spec["tls"]).is_empty() { "80" } else { "80, 443" };
    Row::new(vec![
        name(ing),
        s(class),
        s(hosts),
        s(load_balancer_ingress(&ing["status"]["loadBalancer"])),
        s(ports),
        age(ing, now),
    ])
}

// ---------------------------------------------------------------------------
// Nodes and namespaces
// ---------------------------------------------------------------------------

const NODE_COLUMNS: &[Column] = &[
    NAME,
    col("Status", "string", "The status of the node"),
    col("Roles", "string", "The roles of the node"),
    AGE,
    col("Version", "string", d::NODE_INFO_KUBELET_VERSION),
    wide("Internal-IP", "string", d::NODE_STATUS_ADDRESSES),
    wide("External-IP", "string", d::NODE_STATUS_ADDRESSES),
    wide("OS-Image", "string", d::NODE_INFO_OS_IMAGE),
    wide("Kernel-Version", "string", d::NODE_INFO_KERNEL_VERSION),
    wide("Container-Runtime", "string", d::NODE_INFO_CONTAINER_RUNTIME_VERSION),
];

fn node_row(node: &Value, now: DateTime<Utc>) -> Row {
    let status = &node["status"];
    // The last Ready condition wins, as in Go's map built from the list. Any
    // status other than True (including Unknown) reads NotReady; no Ready
    // condition at all reads Unknown.
    let ready = arr(&status["conditions"]).iter().filter(|c| str_of(&c["type"]) == "Ready").last();
    let mut states = vec![match ready {
        Some(c) if str_of(&c["status"]) == "True" => "Ready",
        Some(_) => "NotReady",
        None => "Unknown",
    }];
    if bool_of(&node["spec"]["unschedulable"]) {
        states.push("SchedulingDisabled");
    }

    // Roles come from node-role.kubernetes.io/<role> keys and the legacy
    // kubernetes.io/role=<role> label, sorted and de-duplicated.
    let mut roles = BTreeSet::new();
    for (k, v) in string_map(&node["metadata"]["labels"]) {
        if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
            if !role.is_empty() {
                roles.insert(role.to_string());
            }
        } else if k == "kubernetes.io/role" && !v.is_empty() {
            roles.insert(v);
        }
    }
    let roles = if roles.is_empty() { "<none>".to_string() } else { roles.into_iter().collect::<Vec<_>>().join(",") };

    let address = |ty: &str| {
        arr(&status["addresses"])
            .iter()
            .find(|a| str_of(&a["type"]) == ty)
            .map(|a| str_of(&a["address"]).to_string())
            .unwrap_or_else(|| "<none>".to_string())
    };
    let info = &status["nodeInfo"];
    let or_unknown = |v: &Value| match str_of(v) {
        "" => "<unknown>".to_string(),
        x => x.to_string(),
    };
    Row::new(vec![
        name(node),
        s(states.join(",")),
        s(roles),
        age(node, now),
        s(str_of(&info["kubeletVersion"])),
        s(address("InternalIP")),
        s(address("ExternalIP")),
        s(or_unknown(&info["osImage"])),
        s(or_unknown(&info["kernelVersion"])),
        s(or_unknown(&info["containerRuntimeVersion"])),
    ])
}

const NAMESPACE_COLUMNS: &[Column] = &[NAME, col("Status", "string", "The status of the namespace"), AGE];

fn namespace_row(ns: &Value, now: DateTime<Utc>) -> Row {
    let phase = match str_of(&ns["status"]["phase"]) {
        "" => "Active",
        p => p,
    };
    Row::new(vec![name(ns), s(phase), age(ns, now)])
}

// ---------------------------------------------------------------------------
// Workloads
// ---------------------------------------------------------------------------

const RC_COLUMNS: &[Column] = &[
    NAME,
    col("Desired", "integer", d::RC_SPEC_REPLICAS),
    col("Current", "integer", d::RC_STATUS_REPLICAS),
    col("Ready", "integer", d::RC_STATUS_READY_REPLICAS),
    AGE,
    CONTAINERS,
    IMAGES,
    wide("Selector", "string", d::RC_SPEC_SELECTOR),
];

fn rc_row(rc: &Value, now: DateTime<Utc>) -> Row {
    let spec = &rc["spec"];
    let [names, images] = container_cells(&spec["template"]["spec"]["containers"]);
    Row::new(vec![
        name(rc),
        json!(replicas(spec)),
        json!(int_or_zero(&rc["status"]["replicas"])),
        json!(int_or_zero(&rc["status"]["readyReplicas"])),
        age(rc, now),
        names,
        images,
        // An RC's selector is a plain map, printed with labels.FormatLabels.
        s(format_labels(&string_map(&spec["selector"]))),
    ])
}

const RS_COLUMNS: &[Column] = &[
    NAME,
    col("Desired", "integer", d::RS_SPEC_REPLICAS),
    col("Current", "integer", d::RS_STATUS_REPLICAS),
    col("Ready", "integer", d::RS_STATUS_READY_REPLICAS),
    AGE,
    CONTAINERS,
    IMAGES,
    wide("Selector", "string", d::RS_SPEC_SELECTOR),
];

fn rs_row(rs: &Value, now: DateTime<Utc>) -> Row {
    let spec = &rs["spec"];
    let [names, images] = container_cells(&spec["template"]["spec"]["containers"]);
    Row::new(vec![
        name(rs),
        json!(replicas(spec)),
        json!(int_or_zero(&rs["status"]["replicas"])),
        json!(int_or_zero(&rs["status"]["readyReplicas"])),
        age(rs, now),
        names,
        images,
        s(format_label_selector(&spec["selector"])),
    ])
}

const DEPLOYMENT_COLUMNS: &[Column] = &[
    NAME,
    col("Ready", "string", "Number of the pod with ready state"),
    col("Up-to-date", "string", d::DEPLOYMENT_STATUS_UPDATED),
    col("Available", "string", d::DEPLOYMENT_STATUS_AVAILABLE),
    AGE,
    CONTAINERS,
    IMAGES,
    wide("Selector", "string", d::DEPLOYMENT_SPEC_SELECTOR),
];

fn deployment_row(dep: &Value, now: DateTime<Utc>) -> Row {
    let spec = &dep["spec"];
    let status = &dep["status"];
    // Unlike the other workloads, a Deployment prints an invalid selector as
    // <invalid> and an empty one as an empty cell.
    let selector = match LabelSelector::from_label_selector_json(&spec["selector"]) {
        Ok(sel) => sel.to_string(),
        Err(_) => "<invalid>".to_string(),
    };
    let [names, images] = container_cells(&spec["template"]["spec"]["containers"]);
    Row::new(vec![
        name(dep),
        s(format!("{}/{}", int_or_zero(&status["readyReplicas"]), replicas(spec))),
        json!(int_or_zero(&status["updatedReplicas"])),
        json!(int_or_zero(&status["availableReplicas"])),
        age(dep, now),
        names,
        images,
        s(selector),
    ])
}

const DAEMONSET_COLUMNS: &[Column] = &[
    NAME,
    col("Desired", "integer", d::DS_STATUS_DESIRED),
    col("Current", "integer", d::DS_STATUS_CURRENT),
    col("Ready", "integer", d::DS_STATUS_READY),
    col("Up-to-date", "integer", d::DS_STATUS_UPDATED),
    col("Available", "integer", d::DS_STATUS_AVAILABLE),
    col("Node Selector", "string", d::POD_SPEC_NODE_SELECTOR),
    AGE,
    CONTAINERS,
    IMAGES,
    wide("Selector", "string", d::DS_SPEC_SELECTOR),
];

fn daemonset_row(ds: &Value, now: DateTime<Utc>) -> Row {
    let spec = &ds["spec"];
    let status = &ds["status"];
    let [names, images] = container_cells(&spec["template"]["spec"]["containers"]);
    Row::new(vec![
        name(ds),
        json!(int_or_zero(&status["desiredNumberScheduled"])),
        json!(int_or_zero(&status["currentNumberScheduled"])),
        json!(int_or_zero(&status["numberReady"])),
        json!(int_or_zero(&status["updatedNumberScheduled"])),
        json!(int_or_zero(&status["numberAvailable"])),
        s(format_labels(&string_map(&spec["template"]["spec"]["nodeSelector"]))),
        age(ds, now),
        names,
        images,
        s(format_label_selector(&spec["selector"])),
    ])
}

const STATEFULSET_COLUMNS: &[Column] =
    &[NAME, col("Ready", "string", "Number of the pod with ready state"), AGE, CONTAINERS, IMAGES];

fn statefulset_row(sts: &Value, now: DateTime<Utc>) -> Row {
    let spec = &sts["spec"];
    let [names, images] = container_cells(&spec["template"]["spec"]["containers"]);
    Row::new(vec![
        name(sts),
        s(format!("{}/{}", int_or_zero(&sts["status"]["readyReplicas"]), replicas(spec))),
        age(sts, now),
        names,
        images,
    ])
}

const JOB_COLUMNS: &[Column] = &[
    NAME,
    col("Status", "string", "Status of the job."),
    col("Completions", "string", d::JOB_STATUS_SUCCEEDED),
    col("Duration", "string", "Time required to complete the job."),
    AGE,
    CONTAINERS,
    IMAGES,
    wide("Selector", "string", d::JOB_SPEC_SELECTOR),
];

fn job_row(job: &Value, now: DateTime<Utc>) -> Row {
    let spec = &job["spec"];
    let status = &job["status"];
    let succeeded = int_or_zero(&status["succeeded"]);
    let completions = match int_of(&spec["completions"]) {
        Some(c) => format!("{succeeded}/{c}"),
        None => match int_of(&spec["parallelism"]).unwrap_or(0) {
            p if p > 1 => format!("{succeeded}/1 of {p}"),
            _ => format!("{succeeded}/1"),
        },
    };
    let duration = match (time_of(&status["startTime"]), time_of(&status["completionTime"])) {
        (None, _) => String::new(),
        (Some(start), None) => human_duration(now - start),
        (Some(start), Some(end)) => human_duration(end - start),
    };
    let conditions = &status["conditions"];
    let state = if condition_true(conditions, "Complete") {
        "Complete"
    } else if condition_true(conditions, "Failed") {
        "Failed"
    } else if deleting(job) {
        "Terminating"
    } else if condition_true(conditions, "Suspended") {
        "Suspended"
    } else if condition_true(conditions, "FailureTarget") {
        "FailureTarget"
    } else {
        "Running"
    };
    let [names, images] = container_cells(&spec["template"]["spec"]["containers"]);
    Row::new(vec![
        name(job),
        s(state),
        s(completions),
        s(duration),
        age(job, now),
        names,
        images,
        s(format_label_selector(&spec["selector"])),
    ])
}

const CRONJOB_COLUMNS: &[Column] = &[
    NAME,
    col("Schedule", "string", d::CRONJOB_SPEC_SCHEDULE),
    col("Timezone", "string", d::CRONJOB_SPEC_TIME_ZONE),
    col("Suspend", "boolean", d::CRONJOB_SPEC_SUSPEND),
    col("Active", "integer", d::CRONJOB_STATUS_ACTIVE),
    col("Last Schedule", "string", d::CRONJOB_STATUS_LAST_SCHEDULE),
    AGE,
    CONTAINERS,
    IMAGES,
    wide("Selector", "string", d::JOB_SPEC_SELECTOR),
];

fn cronjob_row(cj: &Value, now: DateTime<Utc>) -> Row {
    let spec = &cj["spec"];
    let status = &cj["status"];
    let last_schedule = if time_of(&status["lastScheduleTime"]).is_some() {
        since(&status["lastScheduleTime"], now)
    } else {
        "<none>".to_string()
    };
    // printBoolPtr; defaulting sets suspend to false.
    let suspend = if bool_of(&spec["suspend"]) { "True" } else { "False" };
    let job_spec = &spec["jobTemplate"]["spec"];
    let [names, images] = container_cells(&job_spec["template"]["spec"]["containers"]);
    Row::new(vec![
        name(cj),
        s(str_of(&spec["schedule"])),
        s(spec["timeZone"].as_str().unwrap_or("<none>")),
        s(suspend),
        json!(arr(&status["active"]).len()),
        s(last_schedule),
        age(cj, now),
        names,
        images,
        s(format_label_selector(&job_spec["selector"])),
    ])
}

const HPA_COLUMNS: &[Column] = &[
    NAME,
    col("Reference", "string", d::HPA_SPEC_SCALE_TARGET_REF),
    col("Targets", "string", d::HPA_SPEC_METRICS),
    col("MinPods", "string", d::HPA_SPEC_MIN_REPLICAS),
    col("MaxPods", "string", d::HPA_SPEC_MAX_REPLICAS),
    col("Replicas", "string", d::HPA_STATUS_CURRENT_REPLICAS),
    AGE,
];

/// `formatHPAMetrics` over autoscaling/v2 JSON. An autoscaling/v1 object
/// (`targetCPUUtilizationPercentage`) is first converted the way Kubernetes
/// converts it, into a single CPU utilization metric.
fn format_hpa_metrics(hpa: &Value) -> String {
    let spec = &hpa["spec"];
    let status = &hpa["status"];
    let mut specs: Vec<Value> = arr(&spec["metrics"]).to_vec();
    let mut statuses: Vec<Value> = arr(&status["currentMetrics"]).to_vec();
    if specs.is_empty()
        && let Some(pct) = int_of(&spec["targetCPUUtilizationPercentage"])
    {
        specs.push(json!({"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": pct}}}));
        if let Some(cur) = int_of(&status["currentCPUUtilizationPercentage"]) {
            statuses = vec![json!({"type": "Resource", "resource": {"name": "cpu",
                "current": {"averageUtilization": cur}}})];
        }
    }
    if specs.is_empty() {
        return "<none>".to_string();
    }
    const MAX: usize = 2;
    let unknown = || "<unknown>".to_string();
    let mut list: Vec<String> = Vec::new();
    for (i, m) in specs.iter().enumerate() {
        let st = statuses.get(i);
        // The status entry for this metric, when it reports the same source kind.
        let current = |key: &str| st.map(|s| &s[key]).filter(|v| present(v));
        let entry = match str_of(&m["type"]) {
            kind @ ("External" | "Object") => {
                let key = if kind == "External" { "external" } else { "object" };
                let target = &m[key]["target"];
                if present(&target["averageValue"]) {
                    let cur = current(key)
                        .filter(|c| present(&c["current"]["averageValue"]))
                        .map_or_else(unknown, |c| quantity(&c["current"]["averageValue"]));
                    format!("{cur}/{} (avg)", quantity(&target["averageValue"]))
                } else {
                    let cur = current(key).map_or_else(unknown, |c| quantity(&c["current"]["value"]));
                    format!("{cur}/{}", quantity(&target["value"]))
                }
            }
            "Pods" => {
                let cur = current("pods").map_or_else(unknown, |c| quantity(&c["current"]["averageValue"]));
                format!("{cur}/{}", quantity(&m["pods"]["target"]["averageValue"]))
            }
            kind @ ("Resource" | "ContainerResource") => {
                let key = if kind == "Resource" { "resource" } else { "containerResource" };
                let source = &m[key];
                let target = &source["target"];
                let resource = str_of(&source["name"]);
                if present(&target["averageValue"]) {
                    let cur = current(key).map_or_else(unknown, |c| quantity(&c["current"]["averageValue"]));
                    format!("{resource}: {cur}/{}", quantity(&target["averageValue"]))
                } else {
                    let cur = current(key)
                        .and_then(|c| int_of(&c["current"]["averageUtilization"]))
                        .map_or_else(unknown, |u| format!("{u}%"));
                    let tgt =
                        int_of(&target["averageUtilization"]).map_or_else(|| "<auto>".to_string(), |u| format!("{u}%"));
                    format!("{resource}: {cur}/{tgt}")
                }
            }
            _ => "<unknown type>".to_string(),
        };
        list.push(entry);
    }
    let count = list.len();
    if count > MAX {
        list.truncate(MAX);
        return format!("{} + {} more...", list.join(", "), count - MAX);
    }
    list.join(", ")
}

fn hpa_row(hpa: &Value, now: DateTime<Utc>) -> Row {
    let spec = &hpa["spec"];
    let target = &spec["scaleTargetRef"];
    Row::new(vec![
        name(hpa),
        s(format!("{}/{}", str_of(&target["kind"]), str_of(&target["name"]))),
        s(format_hpa_metrics(hpa)),
        // Defaulting sets minReplicas to 1.
        s(int_of(&spec["minReplicas"]).unwrap_or(1).to_string()),
        json!(int_or_zero(&spec["maxReplicas"])),
        json!(int_or_zero(&hpa["status"]["currentReplicas"])),
        age(hpa, now),
    ])
}

const PDB_COLUMNS: &[Column] = &[
    NAME,
    col("Min Available", "string", "The minimum number of pods that must be available."),
    col("Max Unavailable", "string", "The maximum number of pods that may be unavailable."),
    col("Allowed Disruptions", "integer", "Calculated number of pods that may be disrupted at this time."),
    AGE,
];

fn pdb_row(pdb: &Value, now: DateTime<Utc>) -> Row {
    let spec = &pdb["spec"];
    let or_na = |v: &Value| if present(v) { int_or_string(v) } else { "N/A".to_string() };
    Row::new(vec![
        name(pdb),
        s(or_na(&spec["minAvailable"])),
        s(or_na(&spec["maxUnavailable"])),
        json!(int_or_zero(&pdb["status"]["disruptionsAllowed"])),
        age(pdb, now),
    ])
}

// ---------------------------------------------------------------------------
// Events, config, identity, coordination
// ---------------------------------------------------------------------------

const EVENT_COLUMNS: &[Column] = &[
    col("Last Seen", "string", d::EVENT_LAST_TIMESTAMP),
    col("Type", "string", d::EVENT_TYPE),
    col("Reason", "string", d::EVENT_REASON),
    col("Object", "string", d::EVENT_INVOLVED_OBJECT),
    wide("Subobject", "string", d::OBJECT_REFERENCE_FIELD_PATH),
    wide("Source", "string", d::EVENT_SOURCE),
    col("Message", "string", d::EVENT_MESSAGE),
    wide("First Seen", "string", d::EVENT_FIRST_TIMESTAMP),
    wide("Count", "string", d::EVENT_COUNT),
    // Events are listed by time, so the name is a hidden trailing column.
    Column { name: "Name", ty: "string", format: "name", description: d::OBJECT_META_NAME, priority: 1 },
];

fn event_row(ev: &Value, now: DateTime<Utc>) -> Row {
    // events.k8s.io-style events only carry eventTime (and series); fall back
    // through them as printEvent does.
    let first_seen = if time_of(&ev["firstTimestamp"]).is_some() {
        since(&ev["firstTimestamp"], now)
    } else {
        since(&ev["eventTime"], now)
    };
    let mut last_seen =
        if time_of(&ev["lastTimestamp"]).is_some() { since(&ev["lastTimestamp"], now) } else { first_seen.clone() };
    let mut count = int_or_zero(&ev["count"]);
    if present(&ev["series"]) {
        last_seen = since(&ev["series"]["lastObservedTime"], now);
        count = int_or_zero(&ev["series"]["count"]);
    } else if count == 0 {
        // Singleton events don't have a count set in the new API.
        count = 1;
    }
    let involved = &ev["involvedObject"];
    let kind = str_of(&involved["kind"]).to_lowercase();
    let target = match str_of(&involved["name"]) {
        "" => kind,
        n => format!("{kind}/{n}"),
    };
    let first_non_empty = |a: &Value, b: &Value| match str_of(a) {
        "" => str_of(b).to_string(),
        x => x.to_string(),
    };
    let component = first_non_empty(&ev["source"]["component"], &ev["reportingComponent"]);
    let instance = first_non_empty(&ev["source"]["host"], &ev["reportingInstance"]);
    let source = if instance.is_empty() { component } else { format!("{component}, {instance}") };
    Row::new(vec![
        s(last_seen),
        s(str_of(&ev["type"])),
        s(str_of(&ev["reason"])),
        s(target),
        s(str_of(&involved["fieldPath"])),
        s(source),
        s(str_of(&ev["message"]).trim()),
        s(first_seen),
        json!(count),
        name(ev),
    ])
}

const CONFIGMAP_COLUMNS: &[Column] = &[NAME, col("Data", "string", d::CONFIG_MAP_DATA), AGE];

fn configmap_row(cm: &Value, now: DateTime<Utc>) -> Row {
    Row::new(vec![name(cm), json!(map_len(&cm["data"]) + map_len(&cm["binaryData"])), age(cm, now)])
}

const SECRET_COLUMNS: &[Column] =
    &[NAME, col("Type", "string", d::SECRET_TYPE), col("Data", "string", d::SECRET_DATA), AGE];

fn secret_row(secret: &Value, now: DateTime<Utc>) -> Row {
    let ty = match str_of(&secret["type"]) {
        "" => "Opaque",
        t => t,
    };
    Row::new(vec![name(secret), s(ty), json!(map_len(&secret["data"])), age(secret, now)])
}

const SERVICEACCOUNT_COLUMNS: &[Column] = &[NAME, col("Secrets", "string", d::SERVICE_ACCOUNT_SECRETS), AGE];

fn serviceaccount_row(sa: &Value, now: DateTime<Utc>) -> Row {
    Row::new(vec![name(sa), json!(arr(&sa["secrets"]).len()), age(sa, now)])
}

const COMPONENTSTATUS_COLUMNS: &[Column] = &[
    NAME,
    col("Status", "string", "Status of the component conditions"),
    col("Message", "string", "Message of the component conditions"),
    col("Error", "string", "Error of the component conditions"),
];

fn componentstatus_row(cs: &Value, _now: DateTime<Utc>) -> Row {
    let healthy = arr(&cs["conditions"]).iter().find(|c| str_of(&c["type"]) == "Healthy");
    let (status, message, error) = match healthy {
        Some(c) => (
            if str_of(&c["status"]) == "True" { "Healthy" } else { "Unhealthy" },
            str_of(&c["message"]),
            str_of(&c["error"]),
        ),
        None => ("Unknown", "", ""),
    };
    Row::new(vec![name(cs), s(status), s(message), s(error)])
}

const LEASE_COLUMNS: &[Column] = &[NAME, col("Holder", "string", d::LEASE_SPEC_HOLDER_IDENTITY), AGE];

fn lease_row(lease: &Value, now: DateTime<Utc>) -> Row {
    Row::new(vec![name(lease), s(str_of(&lease["spec"]["holderIdentity"])), age(lease, now)])
}

// ---------------------------------------------------------------------------
// Storage
// ---------------------------------------------------------------------------

/// `GetAccessModesAsString`: RWO, ROX, RWX, RWOP in that order, once each.
fn access_modes(modes: &Value) -> String {
    let modes: Vec<&str> = arr(modes).iter().map(str_of).collect();
    [("ReadWriteOnce", "RWO"), ("ReadOnlyMany", "ROX"), ("ReadWriteMany", "RWX"), ("ReadWriteOncePod", "RWOP")]
        .iter()
        .filter(|(mode, _)| modes.contains(mode))
        .map(|(_, short)| *short)
        .collect::<Vec<_>>()
        .join(",")
}

/// The beta storage-class annotation, when present, beats `storageClassName`.
fn storage_class(obj: &Value) -> String {
    let annotations = &obj["metadata"]["annotations"];
    match &annotations["volume.beta.kubernetes.io/storage-class"] {
        Value::String(class) => class.clone(),
        _ => str_of(&obj["spec"]["storageClassName"]).to_string(),
    }
}

const PV_COLUMNS: &[Column] = &[
    NAME,
    col("Capacity", "string", d::PV_SPEC_CAPACITY),
    col("Access Modes", "string", d::PV_SPEC_ACCESS_MODES),
    col("Reclaim Policy", "string", d::PV_SPEC_RECLAIM_POLICY),
    col("Status", "string", d::PV_STATUS_PHASE),
    col("Claim", "string", d::PV_SPEC_CLAIM_REF),
    col("StorageClass", "string", "StorageClass of the pv"),
    col("VolumeAttributesClass", "string", "VolumeAttributesClass of the pv"),
    col("Reason", "string", d::PV_STATUS_REASON),
    AGE,
    wide("VolumeMode", "string", d::PV_SPEC_VOLUME_MODE),
];

fn pv_row(pv: &Value, now: DateTime<Utc>) -> Row {
    let spec = &pv["spec"];
    let claim = &spec["claimRef"];
    let claim = if present(claim) {
        format!("{}/{}", str_of(&claim["namespace"]), str_of(&claim["name"]))
    } else {
        String::new()
    };
    let phase = if deleting(pv) {
        "Terminating"
    } else {
        match str_of(&pv["status"]["phase"]) {
            "" => "Pending",
            p => p,
        }
    };
    let reclaim = match str_of(&spec["persistentVolumeReclaimPolicy"]) {
        "" => "Retain",
        p => p,
    };
    Row::new(vec![
        name(pv),
        s(quantity_or_zero(&spec["capacity"]["storage"])),
        s(access_modes(&spec["accessModes"])),
        s(reclaim),
        s(phase),
        s(claim),
        s(storage_class(pv)),
        s(spec["volumeAttributesClassName"].as_str().unwrap_or("<unset>")),
        s(str_of(&pv["status"]["reason"])),
        age(pv, now),
        s(spec["volumeMode"].as_str().unwrap_or("Filesystem")),
    ])
}

const PVC_COLUMNS: &[Column] = &[
    NAME,
    col("Status", "string", d::PVC_STATUS_PHASE),
    col("Volume", "string", d::PVC_SPEC_VOLUME_NAME),
    col("Capacity", "string", d::PVC_STATUS_CAPACITY),
    col("Access Modes", "string", d::PVC_STATUS_ACCESS_MODES),
    col("StorageClass", "string", "StorageClass of the pvc"),
    col("VolumeAttributesClass", "string", "VolumeAttributesClass of the pvc"),
    AGE,
    wide("VolumeMode", "string", d::PVC_SPEC_VOLUME_MODE),
];

fn pvc_row(pvc: &Value, now: DateTime<Utc>) -> Row {
    let spec = &pvc["spec"];
    let status = &pvc["status"];
    let phase = if deleting(pvc) {
        "Terminating"
    } else {
        match str_of(&status["phase"]) {
            "" => "Pending",
            p => p,
        }
    };
    let volume = str_of(&spec["volumeName"]);
    // Capacity and access modes are only meaningful once bound to a volume.
    let (capacity, modes) = if volume.is_empty() {
        (String::new(), String::new())
    } else {
        (quantity_or_zero(&status["capacity"]["storage"]), access_modes(&status["accessModes"]))
    };
    Row::new(vec![
        name(pvc),
        s(phase),
        s(volume),
        s(capacity),
        s(modes),
        s(storage_class(pvc)),
        s(spec["volumeAttributesClassName"].as_str().unwrap_or("<unset>")),
        age(pvc, now),
        s(spec["volumeMode"].as_str().unwrap_or("Filesystem")),
    ])
}

const STORAGECLASS_COLUMNS: &[Column] = &[
    NAME,
    col("Provisioner", "string", d::STORAGE_CLASS_PROVISIONER),
    col("ReclaimPolicy", "string", d::STORAGE_CLASS_RECLAIM_POLICY),
    col("VolumeBindingMode", "string", d::STORAGE_CLASS_VOLUME_BINDING_MODE),
    col("AllowVolumeExpansion", "string", d::STORAGE_CLASS_ALLOW_VOLUME_EXPANSION),
    AGE,
];

fn storageclass_row(sc: &Value, now: DateTime<Utc>) -> Row {
    let annotations = &sc["metadata"]["annotations"];
    let is_default = str_of(&annotations["storageclass.kubernetes.io/is-default-class"]) == "true"
        || str_of(&annotations["storageclass.beta.kubernetes.io/is-default-class"]) == "true";
    let mut display = str_of(&sc["metadata"]["name"]).to_string();
    if is_default {
        display.push_str(" (default)");
    }
    Row::new(vec![
        s(display),
        s(str_of(&sc["provisioner"])),
        s(sc["reclaimPolicy"].as_str().unwrap_or("Delete")),
        s(sc["volumeBindingMode"].as_str().unwrap_or("Immediate")),
        json!(bool_of(&sc["allowVolumeExpansion"])),
        age(sc, now),
    ])
}

// ---------------------------------------------------------------------------
// RBAC, networking, scheduling
// ---------------------------------------------------------------------------

const ROLEBINDING_COLUMNS: &[Column] = &[
    NAME,
    col("Role", "string", d::ROLE_BINDING_ROLE_REF),
    AGE,
    wide("Users", "string", "Users in the roleBinding"),
    wide("Groups", "string", "Groups in the roleBinding"),
    wide("ServiceAccounts", "string", "ServiceAccounts in the roleBinding"),
];

const CLUSTERROLEBINDING_COLUMNS: &[Column] = &[
    NAME,
    col("Role", "string", d::CLUSTER_ROLE_BINDING_ROLE_REF),
    AGE,
    wide("Users", "string", "Users in the clusterRoleBinding"),
    wide("Groups", "string", "Groups in the clusterRoleBinding"),
    wide("ServiceAccounts", "string", "ServiceAccounts in the clusterRoleBinding"),
];

fn binding_row(b: &Value, now: DateTime<Utc>) -> Row {
    let role_ref = &b["roleRef"];
    let (mut users, mut groups, mut sas) = (Vec::new(), Vec::new(), Vec::new());
    for subject in arr(&b["subjects"]) {
        let subject_name = str_of(&subject["name"]);
        match str_of(&subject["kind"]) {
            "ServiceAccount" => sas.push(format!("{}/{subject_name}", str_of(&subject["namespace"]))),
            "User" => users.push(subject_name.to_string()),
            "Group" => groups.push(subject_name.to_string()),
            _ => {}
        }
    }
    Row::new(vec![
        name(b),
        s(format!("{}/{}", str_of(&role_ref["kind"]), str_of(&role_ref["name"]))),
        age(b, now),
        s(users.join(", ")),
        s(groups.join(", ")),
        s(sas.join(", ")),
    ])
}

const NETWORKPOLICY_COLUMNS: &[Column] =
    &[NAME, col("Pod-Selector", "string", d::NETWORK_POLICY_SPEC_POD_SELECTOR), AGE];

fn networkpolicy_row(np: &Value, now: DateTime<Utc>) -> Row {
    Row::new(vec![name(np), s(format_label_selector(&np["spec"]["podSelector"])), age(np, now)])
}

const PRIORITYCLASS_COLUMNS: &[Column] = &[
    NAME,
    col("Value", "integer", d::PRIORITY_CLASS_VALUE),
    col("Global-Default", "boolean", d::PRIORITY_CLASS_GLOBAL_DEFAULT),
    AGE,
    col("PreemptionPolicy", "string", d::PRIORITY_CLASS_PREEMPTION_POLICY),
];

fn priorityclass_row(pc: &Value, now: DateTime<Utc>) -> Row {
    Row::new(vec![
        name(pc),
        json!(int_or_zero(&pc["value"])),
        json!(bool_of(&pc["globalDefault"])),
        age(pc, now),
        s(pc["preemptionPolicy"].as_str().unwrap_or("PreemptLowerPriority")),
    ])
}

// ---------------------------------------------------------------------------
// Fallbacks
// ---------------------------------------------------------------------------

/// The API server's default table convertor (`rest.NewDefaultTableConvertor`).
const CREATED_AT_COLUMNS: &[Column] = &[NAME, col("Created At", "date", d::OBJECT_META_CREATION_TIMESTAMP)];

fn created_at_row(obj: &Value, _now: DateTime<Utc>) -> Row {
    // Go formats the zero time too, rather than leaving the cell empty.
    let created = time_of(&obj["metadata"]["creationTimestamp"])
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_else(|| "0001-01-01T00:00:00Z".to_string());
    Row::new(vec![name(obj), s(created)])
}

/// A custom resource without printer columns: the CRD defaults to an `Age`
/// column of type `date`, rendered as a human duration.
const DEFAULT_COLUMNS: &[Column] = &[NAME, col("Age", "date", d::OBJECT_META_CREATION_TIMESTAMP)];

fn default_row(obj: &Value, now: DateTime<Utc>) -> Row {
    // A missing value in a CRD column is a null cell, which kubectl shows as <none>.
    let age = time_of(&obj["metadata"]["creationTimestamp"]).map_or(Value::Null, |t| s(human_duration(now - t)));
    Row::new(vec![name(obj), age])
}
