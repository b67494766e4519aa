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

/// Starts dockerd unless one already answers; idempotent. The default storage driver (overlay2)
/// first; `vfs` (slow, but works on any filesystem) only if dockerd fails on its storage driver.
pub fn ensure_running() -> Result<()> {
    if answers() {
        println!("    dockerd already answers");
        return Ok(());
    }
    if Command::new("dockerd").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        bail!("dockerd is not installed (apt-get install docker.io)");
    }
    match start(&[])? {
        Started::Answers => Ok(()),
        Started::Exited { status, log } if storage_driver_failed(&log) => {
            println!("    dockerd failed on its storage driver ({status}); retrying with --storage-driver vfs");
            match start(&["--storage-driver", "vfs"])? {
                Started::Answers => Ok(()),
                Started::Exited { status, log } => {
                    bail!(
                        "dockerd --storage-driver vfs exited with {status} before answering; see the end of {LOG}:\n{log}"
                    )
                }
            }
        }
        Started::Exited { status, log } => {
            bail!("dockerd exited with {status} before answering; see the end of {LOG}:\n{log}")
        }
    }
}

enum Started {
    Answers,
    /// dockerd exited before answering: its status and the lines it logged.
    Exited {
        status: std::process::ExitStatus,
        log: String,
    },
}

/// Whether a failed dockerd's log blames the storage (graph) driver.
fn storage_driver_failed(log: &str) -> bool {
    let log = log.to_ascii_lowercase();
    log.contains("graphdriver")
        || log.contains("storage driver")
        || log.contains("storage-driver")
        || log.contains("overlay2")
}

/// Spawns one dockerd, fully detached, and waits until it answers or exits.
fn start(args: &[&str]) -> Result<Started> {
    let log =
        std::fs::OpenOptions::new().create(true).append(true).open(LOG).with_context(|| format!("opening {LOG}"))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let cmdline = ["dockerd"].iter().chain(args).copied().collect::<Vec<_>>().join(" ");
    println!("    starting {cmdline} in the background (log: {LOG})");
    // setsid execs dockerd in a new session (xtask's child is no process-group leader, so setsid
    // does not fork): no controlling terminal, no SIGHUP or Ctrl-C from ours; when xtask exits
    // the daemon is reparented to init and keeps running.
    let mut cmd = Command::new("setsid");
    cmd.arg("dockerd").args(args).current_dir("/").stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    close_inherited_fds(&mut cmd);
    let mut child = cmd.spawn().context("spawning setsid dockerd")?;
    let started = Instant::now();
    while !answers() {
        if let Some(status) = child.try_wait()? {
            // Another dockerd may have won a race for the pid file and socket: accept it.
            if answers() {
                break;
            }
            return Ok(Started::Exited { status, log: log_since(log_start) });
        }
        if started.elapsed() > START_TIMEOUT {
            bail!(
                "dockerd did not answer within {} s (it keeps running, pid {}); see the end of {LOG}:\n{}",
                START_TIMEOUT.as_secs(),
                child.id(),
                log_since(log_start)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    println!("    dockerd answers after {:.1} s", started.elapsed().as_secs_f64());
    // While xtask lives (all of `cargo xtask test`), dockerd is its child: if a test stops the
    // daemon, nobody but xtask can reap it, and an unreaped dockerd stays a zombie that `pgrep`
    // still lists. A thread that waits on it reaps it the moment it exits.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(Started::Answers)
}

/// The daemon must not keep descriptors xtask inherited: a `flock` wrapper's lock file (held by
/// dockerd, it blocked every later `flock` on it for as long as the daemon lived), a CI runner's
/// output pipe. Those lack close-on-exec, so every descriptor above stderr is given it here.
fn close_inherited_fds(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: one syscall between fork and exec (async-signal-safe): every descriptor above
    // stderr becomes close-on-exec, so exec drops them (Rust's exec-error pipe still works).
    unsafe {
        cmd.pre_exec(|| {
            libc::close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as i32);
            Ok(())
        })
    };
}

/// The last lines this dockerd wrote (the log is shared with earlier daemons).
fn log_since(offset: u64) -> String {
    let bytes = std::fs::read(LOG).unwrap_or_default();
    let text = String::from_utf8_lossy(bytes.get(offset as usize..).unwrap_or_default());
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
