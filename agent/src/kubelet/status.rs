//! A pod's status computed from what the runtime reports, the way the kubelet does: container
//! states (waiting/running/terminated with lastState), restart counts, conditions and phase. Pure
//! (no I/O) so the rules are unit-tested; the pod worker writes the result only when it differs.

use crate::runtime::{ContainerInfo, State};
use serde_json::{Value, json};
use std::collections::HashMap;

/// Why a container is not running, as decided by the pod worker (image pulls, back-off, config
/// errors); the runtime knows nothing of these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub reason: String,
    pub message: String,
}

pub fn rfc3339(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `terminated` state of an exited container.
fn terminated(c: &ContainerInfo) -> Value {
    let reason = if c.oom_killed {
        "OOMKilled"
    } else if c.state == State::Created || (!c.error.is_empty() && c.started_at.is_none()) {
        "StartError"
    } else if c.exit_code == 0 {
        "Completed"
    } else {
        "Error"
    };
    let mut t = json!({
        "exitCode": if c.state == State::Created && c.exit_code == 0 { 128 } else { c.exit_code },
        "reason": reason,
        "containerID": format!("docker://{}", c.id),
    });
    if !c.error.is_empty() {
        t["message"] = json!(c.error);
    }
    let started = c.started_at.or(c.created_at);
    if let Some(s) = started {
        t["startedAt"] = json!(rfc3339(s));
    }
    if let Some(f) = c.finished_at.or(started) {
        t["finishedAt"] = json!(rfc3339(f));
    }
    json!({"terminated": t})
}

/// What the status needs to know about one spec container.
pub struct ContainerView<'a> {
    pub name: &'a str,
    pub image: &'a str,
    /// Newest first: [current, previous, ...].
    pub instances: Vec<&'a ContainerInfo>,
    pub waiting: Option<&'a Waiting>,
    pub ready: bool,
    pub started: bool,
}

pub fn container_status(v: &ContainerView) -> Value {
    let latest = v.instances.first();
    let restart_count = latest.map(|c| c.attempt()).unwrap_or(0);
    let (state, last) = match (latest, v.waiting) {
        // A decision to wait (back-off, pull) overrides the dead instance, which becomes lastState.
        (Some(c), Some(w)) if c.state != State::Running => (waiting_state(w), terminated(c)),
        (Some(c), _) if c.state == State::Running => (
            json!({"running": {"startedAt": rfc3339(c.started_at.unwrap_or_else(jiff::Timestamp::now))}}),
            v.instances.get(1).map(|p| terminated(p)).unwrap_or_else(|| json!({})),
        ),
        (Some(c), _) => (terminated(c), v.instances.get(1).map(|p| terminated(p)).unwrap_or_else(|| json!({}))),
        (None, Some(w)) => (waiting_state(w), json!({})),
        (None, None) => (json!({"waiting": {"reason": "ContainerCreating"}}), json!({})),
    };
    let mut s = json!({
        "name": v.name,
        "image": v.image,
        "imageID": latest.map(|c| format!("docker://{}", c.image_id)).unwrap_or_default(),
        "ready": v.ready && latest.is_some_and(|c| c.state == State::Running),
        "restartCount": restart_count,
        "started": v.started && latest.is_some_and(|c| c.state == State::Running),
        "state": state,
        "lastState": last,
    });
    if let Some(c) = latest {
        s["containerID"] = json!(format!("docker://{}", c.id));
    }
    s
}

fn waiting_state(w: &Waiting) -> Value {
    let mut inner = json!({"reason": w.reason});
    if !w.message.is_empty() {
        inner["message"] = json!(w.message);
    }
    json!({"waiting": inner})
}

/// Kubernetes' `getPhase` over container statuses.
pub fn phase(init_done: bool, init_failed: bool, statuses: &[Value], restart_policy: &str) -> &'static str {
    if init_failed {
        return "Failed";
    }
    if !init_done {
        return "Pending";
    }
    let (mut pending, mut running, mut succeeded, mut failed) = (0, 0, 0, 0);
    for s in statuses {
        let st = &s["state"];
        if st.get("running").is_some() {
            running += 1;
        } else if let Some(t) = st.get("terminated") {
            if t["exitCode"].as_i64() == Some(0) {
                succeeded += 1;
            } else {
                failed += 1;
            }
        } else if s["lastState"].get("terminated").is_some() {
            // Waiting to restart after having run.
            let t = &s["lastState"]["terminated"];
            if t["exitCode"].as_i64() == Some(0) {
                succeeded += 1;
            } else {
                failed += 1;
            }
        } else {
            pending += 1;
        }
    }
    let stopped = succeeded + failed;
    if pending > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        match restart_policy {
            "Always" => "Running",
            "OnFailure" if failed > 0 => "Running",
            _ if failed > 0 => "Failed",
            _ => "Succeeded",
        }
    } else {
        "Pending"
    }
}

/// A condition with Kubernetes' transition-time rule: the time moves only when the status does.
pub fn condition(old: &[Value], ty: &str, status: bool, reason: Option<&str>, now: &str) -> Value {
    let st = if status { "True" } else { "False" };
    let prev = old.iter().find(|c| c["type"] == ty);
    let since = match prev {
        Some(p) if p["status"] == st => p["lastTransitionTime"].clone(),
        _ => json!(now),
    };
    let mut c = json!({"type": ty, "status": st, "lastProbeTime": null, "lastTransitionTime": since});
    if let Some(r) = reason.filter(|_| !status) {
        c["reason"] = json!(r);
    }
    c
}

/// Containers not ready, for the condition's message ("containers with unready status: [a b]").
pub fn unready_message(statuses: &[Value]) -> String {
    let names: Vec<&str> = statuses.iter().filter(|s| s["ready"] != true).filter_map(|s| s["name"].as_str()).collect();
    format!("containers with unready status: [{}]", names.join(" "))
}

/// Groups runtime containers by spec name, newest attempt first.
pub fn by_name(containers: &[ContainerInfo], kind: &str) -> HashMap<String, Vec<ContainerInfo>> {
    let mut out: HashMap<String, Vec<ContainerInfo>> = HashMap::new();
    for c in containers.iter().filter(|c| c.label(crate::runtime::labels::CONTAINER_KIND) == kind) {
        out.entry(c.label(crate::runtime::labels::CONTAINER_NAME).to_string()).or_default().push(c.clone());
    }
    for v in out.values_mut() {
        v.sort_by(|a, b| b.attempt().cmp(&a.attempt()).then(b.created_at.cmp(&a.created_at)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn info(attempt: u32, state: State, exit: i64) -> ContainerInfo {
        ContainerInfo {
            id: format!("id{attempt}"),
            labels: BTreeMap::from([(crate::runtime::labels::ATTEMPT.to_string(), attempt.to_string())]),
            state,
            exit_code: exit,
            oom_killed: false,
            error: String::new(),
            created_at: Some(jiff::Timestamp::from_second(1_700_000_000).unwrap()),
            started_at: Some(jiff::Timestamp::from_second(1_700_000_001).unwrap()),
            finished_at: (state == State::Exited).then(|| jiff::Timestamp::from_second(1_700_000_002).unwrap()),
            pid: 1,
            image: "busybox".into(),
            image_id: "sha256:abc".into(),
        }
    }

    #[test]
    fn crash_loop_shows_waiting_with_the_last_termination() {
        let dead = info(3, State::Exited, 1);
        let w = Waiting { reason: "CrashLoopBackOff".into(), message: "back-off 40s".into() };
        let v = ContainerView {
            name: "c",
            image: "busybox",
            instances: vec![&dead],
            waiting: Some(&w),
            ready: false,
            started: false,
        };
        let s = container_status(&v);
        assert_eq!(s["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert_eq!(s["lastState"]["terminated"]["exitCode"], 1);
        assert_eq!(s["lastState"]["terminated"]["reason"], "Error");
        assert_eq!(s["restartCount"], 3);
        assert_eq!(phase(true, false, &[s], "Always"), "Running");
    }

    #[test]
    fn running_after_restart_keeps_previous_termination() {
        let (now, prev) = (info(1, State::Running, 0), info(0, State::Exited, 0));
        let v = ContainerView {
            name: "c",
            image: "i",
            instances: vec![&now, &prev],
            waiting: None,
            ready: true,
            started: true,
        };
        let s = container_status(&v);
        assert!(s["state"]["running"]["startedAt"].is_string());
        assert_eq!(s["lastState"]["terminated"]["reason"], "Completed");
        assert_eq!(s["ready"], true);
        assert_eq!(s["restartCount"], 1);
    }

    #[test]
    fn phases_follow_restart_policy() {
        let done = info(0, State::Exited, 0);
        let failed = info(0, State::Exited, 2);
        let st = |c: &ContainerInfo| {
            container_status(&ContainerView {
                name: "c",
                image: "i",
                instances: vec![c],
                waiting: None,
                ready: false,
                started: false,
            })
        };
        assert_eq!(phase(true, false, &[st(&done)], "Never"), "Succeeded");
        assert_eq!(phase(true, false, &[st(&done)], "OnFailure"), "Succeeded");
        assert_eq!(phase(true, false, &[st(&failed)], "Never"), "Failed");
        assert_eq!(phase(true, false, &[st(&failed)], "OnFailure"), "Running");
        assert_eq!(phase(false, false, &[st(&done)], "Always"), "Pending");
        assert_eq!(phase(true, true, &[], "Never"), "Failed");
        let creating = container_status(&ContainerView {
            name: "c",
            image: "i",
            instances: vec![],
            waiting: None,
            ready: false,
            started: false,
        });
        assert_eq!(creating["state"]["waiting"]["reason"], "ContainerCreating");
        assert_eq!(phase(true, false, &[creating, st(&done)], "Always"), "Pending");
    }

    #[test]
    fn condition_transition_time_moves_only_on_change() {
        let old = vec![json!({"type": "Ready", "status": "True", "lastTransitionTime": "T0"})];
        assert_eq!(condition(&old, "Ready", true, None, "T1")["lastTransitionTime"], "T0");
        let c = condition(&old, "Ready", false, Some("ContainersNotReady"), "T1");
        assert_eq!(c["lastTransitionTime"], "T1");
        assert_eq!(c["reason"], "ContainersNotReady");
    }
}
