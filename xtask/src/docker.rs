//! The Docker engine the agent's pods run on. There is no systemd on these machines, so `setup`
//! starts `dockerd` itself, detached (its own session, so it outlives `cargo xtask`), and waits
//! for its socket to answer.

use anyhow::{Result, bail};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const LOG: &str = "/var/log/skiff-dockerd.log";

pub fn answers() -> bool {
    Command::new("docker")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn ensure_running() -> Result<()> {
    if answers() {
        println!("    dockerd answers");
        return Ok(());
    }
    let log = std::fs::OpenOptions::new().create(true).append(true).open(LOG)?;
    println!("    starting dockerd (log: {LOG})");
    // setsid: a session of its own, so the daemon survives this process and its terminal.
    Command::new("setsid").arg("dockerd").stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !answers() {
        if Instant::now() > deadline {
            bail!("dockerd did not answer within 60 s; see {LOG}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    println!("    dockerd is up");
    Ok(())
}
