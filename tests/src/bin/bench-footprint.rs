//! `cargo xtask bench footprint`: the idle single-node cluster (`skiff up`: API server, store,
//! scheduler, controllers, DNS, agent, dataplane in one process) — time from start to "up"
//! (node Ready and kube-dns answering), resident memory and CPU while idle, and the binary's
//! size. Three rounds on fresh data directories; medians printed as Markdown. Runs with the
//! same safe settings as the tests: socket programs on a cgroup of its own, the node address on
//! its own pod bridge, DNS forwarding to an unused loopback port.

use anyhow::{Context, Result};
use skiff_tests::skiff_bin;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROUNDS: usize = 3;
const IDLE: Duration = Duration::from_secs(20);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// (resident KiB, utime+stime clock ticks) of a process.
fn usage(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = &stat[stat.rfind(')').context("stat")? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    Ok((rss, ticks))
}

fn round(i: usize) -> Result<(f64, f64, f64)> {
    let dir = tempfile::tempdir()?;
    let cgroup = format!("/sys/fs/cgroup/unified/skiff-bench-footprint-{}", std::process::id());
    std::fs::create_dir_all(&cgroup)?;
    let pins = format!("/sys/fs/bpf/skiff-bench-footprint-{}", std::process::id());
    let log = std::fs::File::create(dir.path().join("up.log"))?;
    let start = Instant::now();
    let mut child = Command::new(skiff_bin())
        .args(["up", "--data-dir"])
        .arg(dir.path())
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--node-name", "skiff-bench", "--node-ip", "10.244.198.1", "--pod-cidr", "10.244.198.0/24"])
        .args(["--devices", "none", "--cgroup", &cgroup, "--bpf-pin-dir", &pins])
        .args(["--dns-upstream", &format!("127.0.0.1:{}", free_port()), "--dns-port", &free_port().to_string()])
        .args(["--agent-port", &free_port().to_string()])
        .args(["--proxy-metrics", &format!("127.0.0.1:{}", free_port())])
        .args(["--dns-metrics", &format!("127.0.0.1:{}", free_port())])
        .args(["--bridge", "skbench", "--nft-table", "skiffbench"])
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let up_log = dir.path().join("up.log");
    loop {
        if std::fs::read_to_string(&up_log).unwrap_or_default().contains("Skiff is up") {
            break;
        }
        anyhow::ensure!(start.elapsed() < Duration::from_secs(120), "skiff up did not come up");
        if let Some(st) = child.try_wait()? {
            anyhow::bail!("skiff up exited with {st}: {}", std::fs::read_to_string(&up_log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let to_up = start.elapsed().as_secs_f64();
    // Settle, then measure an idle window.
    std::thread::sleep(Duration::from_secs(5));
    let (_, t0) = usage(child.id())?;
    let w = Instant::now();
    let mut peak = 0;
    while w.elapsed() < IDLE {
        peak = peak.max(usage(child.id())?.0);
        std::thread::sleep(Duration::from_millis(500));
    }
    let (rss, t1) = usage(child.id())?;
    let hz = 100.0; // USER_HZ on Linux
    let cpu = (t1 - t0) as f64 / hz / w.elapsed().as_secs_f64() * 100.0;
    eprintln!(
        "round {i}: up in {to_up:.2} s, idle RSS {} MiB (peak {} MiB), idle CPU {cpu:.2} %",
        rss / 1024,
        peak / 1024
    );
    Command::new(skiff_bin()).args(["down", "--data-dir"]).arg(dir.path()).stdout(Stdio::null()).status()?;
    let _ = child.wait();
    let _ = std::fs::remove_dir(&cgroup);
    Ok((to_up, rss as f64 / 1024.0, cpu))
}

fn main() -> Result<()> {
    let size = std::fs::metadata(skiff_bin())?.len() as f64 / (1024.0 * 1024.0);
    let (mut ups, mut rss, mut cpu) = (vec![], vec![], vec![]);
    for i in 0..ROUNDS {
        let (u, r, c) = round(i)?;
        ups.push(u);
        rss.push(r);
        cpu.push(c);
    }
    let (u, r, c) = (median(ups), median(rss), median(cpu));
    println!("| idle single-node cluster (`skiff up`) | median of {ROUNDS} |");
    println!("|---|---|");
    println!("| start → node Ready and kube-dns answering | {u:.2} s |");
    println!("| resident memory, idle | {r:.0} MiB |");
    println!("| CPU, idle ({} s window) | {c:.2} % of one core |", IDLE.as_secs());
    println!("| `skiff` binary (release) | {size:.1} MiB |");
    println!(
        "\nTargets: ≤ 150 MB resident idle ({}); ≤ 10 s to Ready ({}).",
        if r * 1.048576 <= 150.0 { "met" } else { "missed" },
        if u <= 10.0 { "met" } else { "missed" }
    );
    Ok(())
}
