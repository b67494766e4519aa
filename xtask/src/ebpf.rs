//! `cargo xtask build-ebpf`: builds Skiff's eBPF programs (`dataplane-ebpf/programs`, a cargo
//! workspace of its own) with the nightly toolchain for `bpfel-unknown-none` (DESIGN.md §4), and
//! writes the object to `target/bpf/skiff-dataplane.o`, where the agent finds it at run time (or
//! embeds it with its `embed-ebpf` feature).

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the object is written, relative to the workspace root.
pub const OBJECT_REL: &str = "target/bpf/skiff-dataplane.o";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// `~/.cargo/bin` (or `$CARGO_HOME/bin`): where `cargo install` put bpf-linker.
pub fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

/// Builds the eBPF programs (always with the release profile: unoptimised BPF code does not pass
/// the verifier) and returns the path of the object, `<workspace>/target/bpf/skiff-dataplane.o`.
///
/// Needs what `cargo xtask setup` installs: the nightly toolchain with `rust-src`, and
/// `bpf-linker` in `~/.cargo/bin`.
pub fn build_ebpf() -> Result<PathBuf> {
    let root = workspace_root();
    let programs = root.join("dataplane-ebpf").join("programs");
    let target_dir = root.join("target").join("bpf").join("cargo");
    let bin_dir = cargo_bin_dir();
    if !bin_dir.join("bpf-linker").exists() && which("bpf-linker").is_none() {
        bail!("bpf-linker is not installed; run `cargo xtask setup`");
    }
    println!("==> building the eBPF programs (nightly, bpfel-unknown-none)");
    let path = match std::env::var_os("PATH") {
        Some(p) => {
            let mut dirs = vec![bin_dir.clone()];
            dirs.extend(std::env::split_paths(&p));
            std::env::join_paths(dirs).context("PATH")?
        }
        None => bin_dir.clone().into_os_string(),
    };
    let mut cmd = Command::new("rustup");
    // The programs' own .cargo/config.toml sets the target and `-Z build-std=core`; passing them
    // here as well keeps the command self-explanatory and independent of that file.
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "build",
        "--release",
        "-Z",
        "build-std=core",
        "--target",
        "bpfel-unknown-none",
    ])
    .current_dir(&programs)
    .env("PATH", path)
    .env("CARGO_TARGET_DIR", &target_dir);
    // `cargo xtask` runs under the stable toolchain; none of its settings may leak into the
    // nightly BPF build (RUSTC would pin stable, host RUSTFLAGS make no sense for BPF).
    for var in [
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTUP_TOOLCHAIN",
        "CARGO",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_MANIFEST_DIR",
        "CARGO_PKG_NAME",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().with_context(|| format!("running {cmd:?} (is rustup installed?)"))?;
    if !status.success() {
        bail!("building the eBPF programs failed ({status}); `cargo xtask setup` installs the toolchain");
    }
    let built = target_dir.join("bpfel-unknown-none").join("release").join("skiff-dataplane");
    let out = root.join(OBJECT_REL);
    let tmp = out.with_extension("o.tmp");
    std::fs::create_dir_all(out.parent().expect("has a parent"))?;
    std::fs::copy(&built, &tmp).with_context(|| format!("copying {}", built.display()))?;
    std::fs::rename(&tmp, &out).with_context(|| format!("writing {}", out.display()))?;
    println!("    {}", out.display());
    Ok(out)
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(bin)).find(|c| c.exists()))
}
