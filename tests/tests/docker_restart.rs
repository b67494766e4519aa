//! A restarted Docker daemon is recovered from: its restart kills the pod's containers, the agent
//! reports the node NotReady while the engine is away, then builds the pod again — new sandbox,
//! same IP (allocations survive), the app container counted as restarted — and it serves again.
//! A binary of its own, because cargo runs binaries one at a time: no other suite sees Docker go.

use anyhow::Result;
use serde_json::Value;
use skiff_tests::{Agent, Control, restart_dockerd, wait_for};
use std::io::{Read, Write};
use std::time::Duration;

fn pod(c: &Control, name: &str) -> Option<Value> {
    let out = c.kubectl(&["get", "pod", name, "-o", "json"]);
    out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
}

fn running(p: &Value) -> bool {
    p["status"]["phase"] == "Running" && p["status"]["containerStatuses"][0]["state"]["running"].is_object()
}

fn serves(ip: &str) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&format!("{ip}:80").parse().unwrap(), Duration::from_secs(2))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.contains("Welcome to nginx")
}

#[test]
fn pods_come_back_after_the_docker_daemon_restarts() -> Result<()> {
    let c = Control::start()?;
    let a = Agent::start(&c, 5, &["--crashloop-backoff", "1"])?;
    c.kubectl_ok(&["run", "web", "--image=nginx:1.7.9", "--image-pull-policy=IfNotPresent"]);
    let before = wait_for(Duration::from_secs(60), "web running", || pod(&c, "web").filter(running))
        .unwrap_or_else(|e| panic!("{e}\n{}", a.log()));
    let ip = before["status"]["podIP"].as_str().unwrap().to_string();
    assert!(serves(&ip));

    restart_dockerd()?;

    let after = wait_for(Duration::from_secs(90), "web running again after the restart", || {
        pod(&c, "web").filter(|p| running(p) && p["status"]["containerStatuses"][0]["restartCount"].as_i64() >= Some(1))
    })
    .unwrap_or_else(|e| panic!("{e}\n{:?}\n{}", pod(&c, "web"), a.log()));
    assert_eq!(after["status"]["podIP"].as_str(), Some(ip.as_str()), "the pod keeps its IP");
    assert_ne!(
        after["status"]["containerStatuses"][0]["containerID"],
        before["status"]["containerStatuses"][0]["containerID"]
    );
    wait_for(Duration::from_secs(20), "web serving again", || serves(&ip).then_some(()))?;
    // The heartbeat (every 10 s) reports Ready again once the engine answers.
    wait_for(Duration::from_secs(30), "node Ready again", || {
        let ready =
            c.kubectl_ok(&["get", "node", &a.node, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}"]);
        (ready == "True").then_some(())
    })?;
    Ok(())
}
