//! The Docker engine the agent's pods run on. There is no systemd on these machines, so `setup`
//! starts `dockerd` itself, fully detached (`setsid`: a session of its own, stdin from /dev/null,
//! output appended to a log), so it outlives `cargo xtask`, and waits for it to answer.

use anyhow::{Context, Result, bail};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const LOG: &str = "/var/log/skiff-dockerd.log";
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether `docker version` reaches a daemon.
pub fn answers() -> bool {
    Command::new("docker")
        .arg("version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts dockerd unless one already answers; idempotent.
pub fn ensure_running() -> Result<()> {
    if answers() {
        println!("    dockerd already answers");
        return Ok(());
    }
    if Command::new("dockerd").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        bail!("dockerd is not installed (apt-get install docker.io)");
    }
    let log =
        std::fs::OpenOptions::new().create(true).append(true).open(LOG).with_context(|| format!("opening {LOG}"))?;
    println!("    starting dockerd in the background (log: {LOG})");
    // setsid execs dockerd in a new session: no controlling terminal, no SIGHUP or Ctrl-C from
    // ours; when xtask exits the daemon is reparented to init and keeps running.
    let mut child = Command::new("setsid")
        .arg("dockerd")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("spawning setsid dockerd")?;
    let started = Instant::now();
    while !answers() {
        if let Some(status) = child.try_wait()? {
            // Another dockerd may have won a race for the pid file and socket: accept it.
            if answers() {
                break;
            }
            bail!("dockerd exited with {status} before answering; see the end of {LOG}:\n{}", log_tail());
        }
        if started.elapsed() > START_TIMEOUT {
            bail!("dockerd did not answer within {} s; see the end of {LOG}:\n{}", START_TIMEOUT.as_secs(), log_tail());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    println!("    dockerd answers after {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn log_tail() -> String {
    let text = std::fs::read_to_string(LOG).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
