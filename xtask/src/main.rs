//! `cargo xtask <task>`: Skiff's build and dev tasks, in Rust (matklad's xtask pattern).
//!
//! `setup` installs what a fresh machine lacks, idempotently and step by step; `up` and `test`
//! call it first, so the README's two commands are all a new machine needs.

mod docker;
mod ebpf;
mod images;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install missing system packages and toolchain parts (idempotent).
    Setup,
    /// Setup, build, and run a single-node cluster (`skiff up`).
    Up {
        /// Extra arguments for `skiff up`.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Setup, build, and run the whole test suite.
    Test {
        /// Extra arguments passed to `cargo test`.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Build the local container images (busybox, nginx, redis, git-monitor stand-ins, the pod
    /// sandbox) without a registry.
    Images,
    /// Build the eBPF dataplane programs (nightly, bpf-linker) into target/bpf/.
    BuildEbpf,
    /// Run a benchmark area: api, scheduler, pods, dataplane, dns, footprint.
    Bench {
        area: String,
        /// Extra arguments for the benchmark binary (`dataplane`: `--quick`, `--rounds N`, …;
        /// `api`: `--rounds N`, `--backends embedded,etcd`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn step(msg: &str) {
    println!("==> {msg}");
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Debian packages the build and the tests need, and why.
const APT_PACKAGES: &[(&str, &str)] = &[
    ("protobuf-compiler", "etcd-client's build needs protoc"),
    ("libprotobuf-dev", "etcd-client's build needs the well-known protos"),
    ("etcd-server", "the etcd storage backend's tests run a real etcd"),
    ("pkg-config", "finding libnftnl/libmnl"),
    ("libnftnl-dev", "nftables through nftnl"),
    ("libmnl-dev", "nftables through nftnl"),
    ("llvm-22-dev", "bpf-linker links the eBPF programs"),
    ("dnsutils", "dig for DNS tests"),
    ("dnsperf", "load generator of the DNS benchmark"),
    ("knot", "Knot DNS, the DNS benchmark's baseline"),
    ("docker.io", "the agent runs pods on the Docker engine"),
    ("iptables", "accept rules for the pod bridge in Docker's FORWARD chain; the dataplane benchmark's baseline"),
    ("iproute2", "`ip netns`/veth pairs of the dataplane benchmark"),
    ("nftables", "nft lists Skiff's table in tests"),
    ("busybox-static", "the local images are built from busybox"),
    ("redis-server", "the redis image carries Debian's redis-server"),
];

fn setup() -> Result<()> {
    step("checking Debian packages");
    let missing: Vec<&str> = APT_PACKAGES.iter().filter(|(p, _)| !dpkg_installed(p)).map(|(p, _)| *p).collect();
    if missing.is_empty() {
        println!("    all present");
    } else {
        for (p, why) in APT_PACKAGES.iter().filter(|(p, _)| missing.contains(p)) {
            println!("    missing {p} ({why})");
        }
        step("apt-get update");
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        step(&format!("apt-get install {}", missing.join(" ")));
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }

    step("checking rust-src for the nightly toolchain (eBPF builds)");
    let has_nightly = succeeds(Command::new("rustup").args(["run", "nightly", "rustc", "--version"]));
    if !has_nightly {
        println!(
            "    no nightly toolchain installed; eBPF programs cannot be built here (only the stable toolchain is available)"
        );
    } else {
        let installed = Command::new("rustup")
            .args(["component", "list", "--installed", "--toolchain", "nightly"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("rust-src"))
            .unwrap_or(false);
        if installed {
            println!("    present");
        } else {
            run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
        }
    }

    step("checking bpf-linker");
    let cargo_bin = ebpf::cargo_bin_dir();
    if cargo_bin.join("bpf-linker").exists() || succeeds(Command::new("bpf-linker").arg("--version")) {
        println!("    present");
    } else {
        println!("    installing bpf-linker against LLVM 22 (about a minute)");
        run(Command::new("cargo")
            .args(["install", "bpf-linker", "--locked", "--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"))?;
    }
    step("checking the official Kubernetes Python client (compatibility tests)");
    if succeeds(Command::new("python3").args(["-c", "import kubernetes"])) {
        println!("    present");
    } else {
        run(Command::new("python3").args(["-m", "pip", "install", "-q", "kubernetes==33.1.0"]))?;
    }

    docker_and_images()?;

    step("setup done");
    Ok(())
}

/// Starts dockerd if it does not answer, then builds the local images that are out of date.
fn docker_and_images() -> Result<()> {
    step("starting dockerd");
    docker::ensure_running()?;
    step("building local images (no registry: docker import)");
    images::build_all()
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn build(release: bool) -> Result<PathBuf> {
    step(if release { "building skiff (release)" } else { "building skiff" });
    let mut c = cargo();
    c.args(["build", "-p", "skiff"]);
    if release {
        c.arg("--release");
    }
    run(&mut c)?;
    Ok(root().join("target").join(if release { "release" } else { "debug" }).join("skiff"))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Setup => setup(),
        Task::Up { args } => {
            setup()?;
            ebpf::build_ebpf()?;
            let bin = build(true)?;
            step("skiff up");
            let err = exec(Command::new(bin).arg("up").args(args));
            Err(err)
        }
        Task::Images => docker_and_images(),
        Task::BuildEbpf => {
            let obj = ebpf::build_ebpf()?;
            println!("{}", obj.display());
            Ok(())
        }
        Task::Test { args } => {
            setup()?;
            step("building the eBPF programs");
            ebpf::build_ebpf()?;
            let bin = build(false)?;
            step("running the test suite");
            // Two cores: two test threads keep kubectl-driven suites from starving each other.
            let mut c = cargo();
            c.args(["test", "--workspace", "--no-fail-fast"])
                .arg("--")
                .args(["--test-threads", "2"])
                .args(args)
                .env("SKIFF_BIN", &bin);
            run(&mut c)
        }
        Task::Bench { area, args } => bench(&area, &args),
    }
}

fn exec(cmd: &mut Command) -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    anyhow::Error::from(cmd.exec())
}

/// Setup, a release build of `skiff`, then a benchmark binary of `tests/` (release) against it.
fn bench_bin(bin_name: &str, what: &str, args: &[String]) -> Result<()> {
    setup()?;
    let bin = build(true)?;
    step(what);
    let mut c = cargo();
    c.args(["run", "--release", "-p", "skiff-tests", "--bin", bin_name, "--"]).args(args).env("SKIFF_BIN", &bin);
    run(&mut c)
}

fn bench(area: &str, args: &[String]) -> Result<()> {
    if !args.is_empty() && !["dataplane", "api"].contains(&area) {
        bail!("benchmark area {area:?} takes no arguments (got {args:?})");
    }
    match area {
        "api" => bench_bin("bench-api", "benchmark: api", args),
        "pods" => bench_bin("bench-pods", "benchmark: pods (start latency vs raw docker run)", &[]),
        "footprint" => {
            setup()?;
            step("building the eBPF programs");
            ebpf::build_ebpf()?;
            bench_bin("bench-footprint", "benchmark: footprint of the idle single-node cluster", &[])
        }
        "scheduler" => {
            setup()?;
            let bin = build(true)?;
            // Scheduling throughput end to end through the API server (release builds): the
            // scheduler crate's `throughput` test, 10,000 pods on 1,000 and on 5,000 nodes.
            for nodes in ["1000", "5000"] {
                step(&format!("benchmark: scheduler, 10000 pods on {nodes} nodes"));
                let mut c = cargo();
                c.args([
                    "test",
                    "--release",
                    "-p",
                    "skiff-scheduler",
                    "--test",
                    "scheduler",
                    "throughput",
                    "--",
                    "--ignored",
                    "--nocapture",
                ])
                .env("SKIFF_BIN", &bin)
                .env("SCHED_NODES", nodes)
                .env("SCHED_PODS", "10000");
                run(&mut c)?;
            }
            step("benchmark: scheduler, ReplicationController of 1000 replicas to all pods bound (100 nodes)");
            let mut c = cargo();
            c.args([
                "test",
                "--release",
                "-p",
                "skiff-scheduler",
                "--test",
                "scheduler",
                "rc_of_1000_to_all_bound",
                "--",
                "--ignored",
                "--nocapture",
            ])
            .env("SKIFF_BIN", &bin)
            .env("SCHED_NODES", "100");
            run(&mut c)?;
            Ok(())
        }
        "dns" => bench_bin(
            "bench-dns",
            "benchmark: dns (10,000 services, 50,000 endpoints; skiff dns vs Knot DNS with the same records)",
            &[],
        ),
        "dataplane" => {
            // The benchmark loads the eBPF programs itself (agent crate); its API-event latency
            // part runs a release `skiff control`.
            setup()?;
            let bin = build(true)?;
            step("building the eBPF programs");
            let object = ebpf::build_ebpf()?;
            step(
                "benchmark: dataplane (short connections through a ClusterIP: direct, eBPF, kube-proxy iptables layout, nftables)",
            );
            let mut c = cargo();
            c.args(["run", "--release", "-p", "skiff-tests", "--bin", "bench-dataplane", "--"])
                .args(args)
                .env("SKIFF_EBPF_OBJECT", &object)
                .env("SKIFF_BIN", &bin);
            run(&mut c)
        }
        other => {
            bail!("unknown benchmark area {other:?}; expected one of: api, scheduler, pods, dataplane, dns, footprint")
        }
    }
}
