//! ClusterIP and NodePort allocation for Services.
//!
//! The allocated sets are derived from the Services themselves (read from the watch cache after
//! it caught up with storage), under one lock that every Service write takes for its choice: no
//! separate allocation state to leak when a request fails half-way, and nothing lost on restart.
//!
//! A create does not hold the lock while its write commits (that serialised every create behind
//! one storage commit): it leaves a [`ClaimGuard`] for what it chose, which later choices avoid,
//! until its write has returned. Ordering makes this exact: a choice snapshots the claims *before*
//! it reads the store's revision and waits for the cache to reach it, so a claim that is gone from
//! the snapshot belongs to a write that had committed before that revision — the cache shows it.

use crate::status::Cause;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

pub const NODE_PORT_RANGE: (u16, u16) = (30000, 32767);

pub struct Allocator {
    pub service_cidr: (Ipv4Addr, u8),
    /// Held across "read what is allocated" → choose (→ write the service, for updates).
    pub lock: tokio::sync::Mutex<()>,
    /// What creates chose whose writes have not returned yet.
    claims: std::sync::Mutex<Claims>,
}

#[derive(Default)]
struct Claims {
    next: u64,
    held: HashMap<u64, (Vec<Ipv4Addr>, Vec<i64>)>,
}

/// Addresses and node ports held by in-flight creates ([`Allocator::claimed`]).
#[derive(Default)]
pub struct Claimed {
    ips: HashSet<Ipv4Addr>,
    ports: HashSet<i64>,
}

/// A create's claim on what it chose; released when dropped (after its write returned).
pub struct ClaimGuard<'a> {
    alloc: &'a Allocator,
    id: u64,
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        self.alloc.claims.lock().unwrap_or_else(|e| e.into_inner()).held.remove(&self.id);
    }
}

impl Allocator {
    pub fn new(cidr: &str) -> anyhow::Result<Self> {
        let (ip, len) =
            cidr.split_once('/').ok_or_else(|| anyhow::anyhow!("service CIDR {cidr} must look like 10.96.0.0/12"))?;
        let ip: Ipv4Addr = ip.parse()?;
        let len: u8 = len.parse()?;
        anyhow::ensure!((8..=30).contains(&len), "service CIDR prefix length must be between 8 and 30");
        let mask = u32::MAX << (32 - len);
        Ok(Allocator {
            service_cidr: (Ipv4Addr::from(u32::from(ip) & mask), len),
            lock: tokio::sync::Mutex::new(()),
            claims: std::sync::Mutex::new(Claims::default()),
        })
    }

    /// A snapshot of the in-flight creates' claims. Take it before reading the store's revision
    /// (see the module comment).
    pub fn claimed(&self) -> Claimed {
        let claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Claimed::default();
        for (ips, ports) in claims.held.values() {
            out.ips.extend(ips);
            out.ports.extend(ports);
        }
        out
    }

    /// Claims the addresses and node ports `svc` holds until the guard is dropped.
    pub fn claim(&self, svc: &Value) -> ClaimGuard<'_> {
        let ips = svc["spec"]["clusterIPs"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .filter_map(|ip| ip.as_str()?.parse().ok())
            .collect();
        let ports = svc["spec"]["ports"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .filter_map(|p| p["nodePort"].as_i64())
            .collect();
        let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        claims.next += 1;
        let id = claims.next;
        claims.held.insert(id, (ips, ports));
        ClaimGuard { alloc: self, id }
    }

    fn range(&self) -> (u32, u32) {
        let base = u32::from(self.service_cidr.0);
        let size = 1u32 << (32 - self.service_cidr.1);
        (base, base + size - 1)
    }

    pub fn cidr_string(&self) -> String {
        format!("{}/{}", self.service_cidr.0, self.service_cidr.1)
    }

    /// The `n`-th address of the range (`.1` is the `kubernetes` service, `.10` cluster DNS).
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.range().0 + n)
    }

    /// Fills in `clusterIP(s)` and node ports of `svc` (the new state), keeping what `old` had.
    /// `existing` are all other services, `claimed` what in-flight creates hold. Returns field
    /// causes for conflicts or out-of-range values.
    pub fn assign(
        &self,
        svc: &mut Value,
        old: Option<&Value>,
        existing: &[std::sync::Arc<Value>],
        claimed: &Claimed,
    ) -> Vec<Cause> {
        let mut causes = Vec::new();
        let me = (svc["metadata"]["namespace"].clone(), svc["metadata"]["name"].clone());
        let others =
            existing.iter().filter(|o| (&o["metadata"]["namespace"], &o["metadata"]["name"]) != (&me.0, &me.1));
        let mut used_ips = HashSet::new();
        let mut used_ports = HashSet::new();
        for o in others {
            if let Some(ip) = o["spec"]["clusterIP"].as_str() {
                used_ips.insert(ip.parse::<Ipv4Addr>().ok());
            }
            for p in o["spec"]["ports"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                if let Some(np) = p["nodePort"].as_i64() {
                    used_ports.insert(np);
                }
            }
        }
        used_ips.extend(claimed.ips.iter().map(|ip| Some(*ip)));
        used_ports.extend(&claimed.ports);
        let Some(spec) = svc.get_mut("spec").filter(|s| s.is_object()) else { return causes };
        let ty = spec["type"].as_str().unwrap_or("ClusterIP").to_string();

        if ty == "ExternalName" {
            if let Some(m) = spec.as_object_mut() {
                m.remove("clusterIP");
                m.remove("clusterIPs");
            }
        } else {
            match spec["clusterIP"].as_str().map(str::to_string) {
                Some(ip) if ip == "None" => {
                    spec["clusterIPs"] = json!(["None"]);
                }
                Some(ip) if !ip.is_empty() => {
                    let keeping = old.is_some_and(|o| o["spec"]["clusterIP"].as_str() == Some(&ip));
                    if !keeping {
                        match ip.parse::<Ipv4Addr>() {
                            Err(_) => causes.push(Cause::invalid(
                                "spec.clusterIPs[0]",
                                &json!(ip),
                                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                            )),
                            Ok(addr) => {
                                let (lo, hi) = self.range();
                                let n = u32::from(addr);
                                if n <= lo || n >= hi {
                                    causes.push(Cause::invalid(
                                        "spec.clusterIPs",
                                        &json!([ip]),
                                        format!("failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}", self.cidr_string()),
                                    ));
                                } else if used_ips.contains(&Some(addr)) {
                                    causes.push(Cause::invalid(
                                        "spec.clusterIPs",
                                        &json!([ip]),
                                        format!("failed to allocate IP {ip}: provided IP is already allocated"),
                                    ));
                                }
                            }
                        }
                    }
                    spec["clusterIPs"] = json!([ip]);
                }
                _ => match self.free_ip(&used_ips) {
                    Some(ip) => {
                        spec["clusterIP"] = json!(ip.to_string());
                        spec["clusterIPs"] = json!([ip.to_string()]);
                    }
                    None => causes.push(Cause::invalid(
                        "spec.clusterIPs",
                        &Value::Null,
                        "failed to allocate a serviceIP: range is full",
                    )),
                },
            }
        }

        let wants_node_ports = ty == "NodePort" || ty == "LoadBalancer";
        let old_node_ports: HashSet<i64> = old
            .map(|o| {
                o["spec"]["ports"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or(&[])
                    .iter()
                    .filter_map(|p| p["nodePort"].as_i64())
                    .collect()
            })
            .unwrap_or_default();
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            let mut mine = HashSet::new();
            for (i, p) in ports.iter_mut().enumerate() {
                if !wants_node_ports {
                    continue;
                }
                match p["nodePort"].as_i64() {
                    Some(np) => {
                        let (lo, hi) = NODE_PORT_RANGE;
                        if !old_node_ports.contains(&np) {
                            if np < lo as i64 || np > hi as i64 {
                                causes.push(Cause::invalid(
                                    format!("spec.ports[{i}].nodePort"),
                                    &json!(np),
                                    format!(
                                        "provided port is not in the valid range. The range of valid ports is {lo}-{hi}"
                                    ),
                                ));
                            } else if used_ports.contains(&np) {
                                causes.push(Cause::invalid(
                                    format!("spec.ports[{i}].nodePort"),
                                    &json!(np),
                                    "provided port is already allocated",
                                ));
                            }
                        }
                        mine.insert(np);
                    }
                    None => {
                        let taken: HashSet<i64> = used_ports.union(&mine).copied().collect();
                        match free_port(&taken) {
                            Some(np) => {
                                p["nodePort"] = json!(np);
                                mine.insert(np);
                            }
                            None => causes.push(Cause::invalid(
                                format!("spec.ports[{i}].nodePort"),
                                &Value::Null,
                                "range is full",
                            )),
                        }
                    }
                }
            }
        }
        causes
    }

    fn free_ip(&self, used: &HashSet<Option<Ipv4Addr>>) -> Option<Ipv4Addr> {
        let (lo, hi) = self.range();
        // Random probing first (what Kubernetes does), then a scan so a nearly full range still
        // allocates. The low 16 addresses are reserved for static assignments (.1 API, .10 DNS).
        let reserved = lo + 16.min(hi - lo);
        let size = hi - reserved;
        for _ in 0..64 {
            let n = reserved + 1 + rand::random::<u32>() % size.max(1);
            let ip = Ipv4Addr::from(n);
            if n < hi && !used.contains(&Some(ip)) {
                return Some(ip);
            }
        }
        (lo + 1..hi).map(Ipv4Addr::from).find(|ip| !used.contains(&Some(*ip)))
    }
}

/// Values that were allocated before and are not given now are kept (Kubernetes'
/// `patchAllocatedValues`), so `kubectl replace` of a manifest without them works. Runs before
/// validation, so "may not change once set" only fires for real changes.
pub fn keep_allocated(new: &mut Value, old: &Value) {
    let Some(spec) = new.get_mut("spec").filter(|s| s.is_object()) else { return };
    let ty = spec["type"].as_str().unwrap_or("ClusterIP").to_string();
    let empty = |v: &Value| v.is_null() || v == "";
    if ty != "ExternalName" {
        if empty(&spec["clusterIP"]) && !empty(&old["spec"]["clusterIP"]) {
            spec["clusterIP"] = old["spec"]["clusterIP"].clone();
        }
        if spec["clusterIPs"].as_array().is_none_or(|a| a.is_empty()) && !old["spec"]["clusterIPs"].is_null() {
            spec["clusterIPs"] = old["spec"]["clusterIPs"].clone();
        }
    }
    if ty == "NodePort" || ty == "LoadBalancer" {
        let old_ports = old["spec"]["ports"].as_array().cloned().unwrap_or_default();
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for p in ports {
                if p["nodePort"].is_null() {
                    let same = old_ports.iter().find(|op| op["port"] == p["port"] && op["protocol"] == p["protocol"]);
                    if let Some(np) = same.map(|op| &op["nodePort"]).filter(|np| !np.is_null()) {
                        p["nodePort"] = np.clone();
                    }
                }
            }
        }
    }
}

fn free_port(used: &HashSet<i64>) -> Option<i64> {
    let (lo, hi) = (NODE_PORT_RANGE.0 as i64, NODE_PORT_RANGE.1 as i64);
    for _ in 0..64 {
        let p = lo + (rand::random::<u32>() as i64 % (hi - lo + 1));
        if !used.contains(&p) {
            return Some(p);
        }
    }
    (lo..=hi).find(|p| !used.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn svc(name: &str, spec: Value) -> Value {
        json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec})
    }

    #[test]
    fn allocates_in_range_and_refuses_conflicts() {
        let a = Allocator::new("10.96.0.0/12").unwrap();
        let mut s = svc("a", json!({"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP"}]}));
        assert!(a.assign(&mut s, None, &[], &Claimed::default()).is_empty());
        let ip: Ipv4Addr = s["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
        assert!(
            u32::from(ip) > u32::from(Ipv4Addr::new(10, 96, 0, 16))
                && u32::from(ip) < u32::from(Ipv4Addr::new(10, 111, 255, 255))
        );
        let np = s["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
        assert!((30000..=32767).contains(&np));

        let existing = vec![Arc::new(s.clone())];
        let mut b = svc(
            "b",
            json!({"type": "NodePort", "clusterIP": ip.to_string(), "ports": [{"port": 80, "protocol": "TCP", "nodePort": np}]}),
        );
        let causes = a.assign(&mut b, None, &existing, &Claimed::default());
        assert_eq!(causes.len(), 2, "{causes:?}");
        assert!(causes[0].message.contains("provided IP is already allocated"));
        assert!(causes[1].message.contains("provided port is already allocated"));

        let mut c = svc("c", json!({"clusterIP": "192.168.0.1", "ports": [{"port": 80}]}));
        let causes = a.assign(&mut c, None, &existing, &Claimed::default());
        assert!(causes[0].message.contains("not in the valid range"), "{causes:?}");
    }

    #[test]
    fn replace_without_allocated_values_keeps_them() {
        let a = Allocator::new("10.96.0.0/12").unwrap();
        let old = svc(
            "a",
            json!({"type": "NodePort", "clusterIP": "10.96.5.5", "clusterIPs": ["10.96.5.5"], "ports": [{"port": 80, "protocol": "TCP", "nodePort": 31000}]}),
        );
        let mut new = svc("a", json!({"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP"}]}));
        keep_allocated(&mut new, &old);
        assert!(a.assign(&mut new, Some(&old), &[], &Claimed::default()).is_empty());
        assert_eq!(new["spec"]["clusterIP"], "10.96.5.5");
        assert_eq!(new["spec"]["ports"][0]["nodePort"], 31000);
    }

    #[test]
    fn claims_of_in_flight_creates_are_avoided_until_released() {
        let a = Allocator::new("10.96.0.0/28").unwrap();
        let mut first =
            json!({"metadata": {"namespace": "d", "name": "a"}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}});
        assert!(a.assign(&mut first, None, &[], &a.claimed()).is_empty());
        let guard = a.claim(&first);
        let ip = first["spec"]["clusterIP"].clone();
        let np = first["spec"]["ports"][0]["nodePort"].clone();
        // While the first create's write is in flight, its address and port are taken.
        let mut same = json!({"metadata": {"namespace": "d", "name": "b"},
                              "spec": {"type": "NodePort", "clusterIP": ip, "ports": [{"port": 80, "nodePort": np}]}});
        let causes = a.assign(&mut same, None, &[], &a.claimed());
        assert_eq!(causes.len(), 2, "{causes:?}");
        drop(guard);
        // Released (the write returned; a committed one would be in the cache by now).
        let mut again = json!({"metadata": {"namespace": "d", "name": "b"},
                               "spec": {"type": "NodePort", "clusterIP": ip, "ports": [{"port": 80, "nodePort": np}]}});
        assert!(a.assign(&mut again, None, &[], &a.claimed()).is_empty());
    }
}
