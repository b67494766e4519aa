//! Local container images without a registry (`cargo xtask images`), built with
//! `tar -C rootfs -c . | docker import --change ... - NAME` from Debian's `busybox-static` and
//! host binaries. Stand-ins carry the names the seed and users' habits use, so manifests run
//! unchanged with `imagePullPolicy: IfNotPresent`.
//!
//! Each image records `SKIFF_IMAGE_HASH` (a hash of its definition and of its input files' sizes
//! and mtimes) in a label; an image whose label matches is not rebuilt, so `setup` stays fast.

use anyhow::{Context, Result, bail};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What goes into an image's root filesystem besides busybox.
#[derive(Debug)]
enum Extra {
    None,
    /// A file with this content at this path (relative to the rootfs).
    File(&'static str, &'static str),
    /// Host binaries, copied with every library `ldd` lists and the dynamic loader.
    HostBinaries(&'static [&'static str]),
    /// A binary package of this workspace, built (release) and installed as
    /// `/usr/local/bin/<name>` with its libraries.
    WorkspaceBinary(&'static str),
}

#[derive(Debug)]
struct Image {
    /// The first tag is imported; the others are `docker tag`s of it.
    tags: &'static [&'static str],
    extra: Extra,
    /// Docker `--change` lines (CMD, WORKDIR, ...) besides the common `BASE_CHANGES`.
    changes: &'static [&'static str],
}

const NGINX_PAGE: &str = "<!DOCTYPE html>\n<html>\n<head>\n<title>Welcome to nginx!</title>\n</head>\n<body>\n<h1>Welcome to nginx!</h1>\n<p>A Skiff stand-in: busybox httpd serving this page on port 80.</p>\n</body>\n</html>\n";

/// Every image Skiff builds locally: the one table.
const IMAGES: &[Image] = &[
    Image { tags: &["busybox:latest"], extra: Extra::None, changes: &[r#"CMD ["sh"]"#] },
    Image {
        tags: &["nginx:1.7.9", "nginx:latest"],
        extra: Extra::File("usr/share/nginx/html/index.html", NGINX_PAGE),
        // httpd as PID 1 would ignore SIGTERM (no handler) and wait out the grace period, where
        // real nginx stops at once: a shell with a trap runs it instead.
        changes: &[
            r#"CMD ["/bin/sh", "-c", "trap 'exit 0' TERM INT; httpd -f -p 80 -h /usr/share/nginx/html & wait $!"]"#,
            "EXPOSE 80",
        ],
    },
    Image {
        tags: &["redis:latest"],
        // getent: `getent hosts <name>` inside a pod resolves the way glibc programs do (search
        // path, ndots), which the DNS tests check; busybox has no getent applet.
        extra: Extra::HostBinaries(&["/usr/bin/redis-server", "/usr/bin/getent"]),
        changes: &[r#"CMD ["redis-server", "--protected-mode", "no"]"#, "WORKDIR /data", "EXPOSE 6379"],
    },
    Image {
        tags: &["kubernetes/git-monitor:latest"],
        extra: Extra::None,
        changes: &[
            r#"CMD ["/bin/sh", "-c", "trap 'exit 0' TERM INT; while true; do echo \"git-monitor: syncing ${GIT_REPO:-nothing}\"; sleep 10 & wait $!; done"]"#,
        ],
    },
    // The Guestbook's frontend (examples/guestbook/frontend): Skiff's own program with the seed's
    // PHP frontend's HTTP interface.
    Image {
        tags: &["skiff/guestbook-frontend:v1"],
        extra: Extra::WorkspaceBinary("guestbook-frontend"),
        changes: &[r#"CMD ["/usr/local/bin/guestbook-frontend"]"#, "EXPOSE 80"],
    },
    // The pod sandbox: holds the namespaces, exits at once on SIGTERM even as PID 1 (a shell
    // as PID 1 gets no default signal handlers, hence the trap; `wait` returns on the signal).
    // git-monitor and nginx above use the same trap so pods stop promptly, as the real ones do.
    Image {
        tags: &["skiff/pause:1"],
        extra: Extra::None,
        changes: &[r#"CMD ["/bin/sh", "-c", "trap 'exit 0' TERM INT; while true; do sleep 3600 & wait $!; done"]"#],
    },
];

const BUSYBOX: &str = "/bin/busybox";
/// Applets the images' commands and Skiff's tests rely on.
const REQUIRED_APPLETS: &[&str] = &["sh", "sleep", "httpd", "nc", "cat", "echo", "ls"];
const BASE_CHANGES: &[&str] = &["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"];
const ROOTFS_DIRS: &[&str] = &["bin", "etc", "root", "tmp", "var/run", "proc", "sys", "dev", "data"];
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnobody:x:65534:\nnogroup:x:65534:\n";
const HASH_LABEL: &str = "SKIFF_IMAGE_HASH";

fn fnv(h: u64, bytes: &[u8]) -> u64 {
    // FNV-1a: stable across Rust releases (unlike std's DefaultHasher); a separator per field.
    bytes.iter().chain([0xffu8].iter()).fold(h, |h, b| (h ^ *b as u64).wrapping_mul(0x100000001b3))
}

/// Path, resolved path, size and mtime: changes when Debian upgrades the file.
fn file_stamp(path: &Path) -> String {
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    match std::fs::metadata(path) {
        Ok(m) => format!("{}={}:{}:{:?}", path.display(), real.display(), m.len(), m.modified().ok()),
        Err(_) => format!("{}:missing", path.display()),
    }
}

/// The host files an image copies: busybox, and a host binary with its libraries.
fn inputs(img: &Image) -> Result<Vec<PathBuf>> {
    let mut files = vec![PathBuf::from(BUSYBOX)];
    match img.extra {
        Extra::HostBinaries(bins) => {
            for b in bins {
                for f in with_libraries(b)? {
                    if !files.contains(&f) {
                        files.push(f);
                    }
                }
            }
        }
        Extra::WorkspaceBinary(name) => {
            crate::run(crate::cargo().args(["build", "--release", "-q", "-p", name]))?;
            let bin = crate::root().join("target/release").join(name);
            files.extend(with_libraries(bin.to_str().context("a UTF-8 target path")?)?);
        }
        _ => {}
    }
    Ok(files)
}

fn hash_of(img: &Image, inputs: &[PathBuf]) -> String {
    let mut h = 0xcbf29ce484222325u64;
    // The definition: the table row and everything the rootfs layout takes from constants.
    h = fnv(h, format!("{img:?}").as_bytes());
    for part in BASE_CHANGES.iter().chain(ROOTFS_DIRS).chain(REQUIRED_APPLETS).chain([PASSWD, GROUP].iter()) {
        h = fnv(h, part.as_bytes());
    }
    for f in inputs {
        h = fnv(h, file_stamp(f).as_bytes());
    }
    format!("{h:016x}")
}

fn inspect(tag: &str, format: &str) -> Option<String> {
    let out = Command::new("docker")
        .args(["image", "inspect", "--format", format, tag])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string()).filter(|s| !s.is_empty() && s != "<no value>")
}

fn current_hash(tag: &str) -> Option<String> {
    inspect(tag, &format!("{{{{index .Config.Labels \"{HASH_LABEL}\"}}}}"))
}

fn busybox_rootfs(dir: &Path) -> Result<()> {
    for d in ROOTFS_DIRS {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::set_permissions(dir.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    let bin = dir.join("bin");
    std::fs::copy(BUSYBOX, bin.join("busybox")).with_context(|| format!("copying {BUSYBOX} (busybox-static)"))?;
    let list = Command::new(BUSYBOX).arg("--list").output().with_context(|| format!("{BUSYBOX} --list"))?;
    if !list.status.success() {
        bail!("{BUSYBOX} --list failed with {}", list.status);
    }
    let applets: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(String::from)
        .collect();
    if let Some(missing) = REQUIRED_APPLETS.iter().find(|a| !applets.iter().any(|x| x == *a)) {
        bail!("{BUSYBOX} lacks the {missing} applet (is it Debian's busybox-static?)");
    }
    for applet in applets.iter().filter(|a| a.as_str() != "busybox" && !a.contains('/')) {
        symlink("busybox", bin.join(applet)).with_context(|| format!("linking /bin/{applet}"))?;
    }
    std::fs::write(dir.join("etc/passwd"), PASSWD)?;
    std::fs::write(dir.join("etc/group"), GROUP)?;
    Ok(())
}

/// A dynamically linked host binary followed by every library `ldd` names and the loader.
fn with_libraries(binary: &str) -> Result<Vec<PathBuf>> {
    let mut files = vec![PathBuf::from(binary)];
    let out = Command::new("ldd").arg(binary).output().with_context(|| format!("ldd {binary}"))?;
    if !out.status.success() {
        bail!("ldd {binary} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libx.so => /lib/x/libx.so (0x...)", "/lib64/ld-linux-x86-64.so.2 (0x...)", or
        // "linux-vdso.so.1 (0x...)" (in the kernel, nothing to copy).
        let path = line.split("=>").nth(1).unwrap_or(line).split_whitespace().next().unwrap_or("");
        if line.contains("not found") {
            bail!("ldd {binary}: {}", line.trim());
        }
        if path.starts_with('/') {
            files.push(PathBuf::from(path));
        }
    }
    Ok(files)
}

/// Copies host files into the rootfs at the same paths; symlinks are followed, so the image
/// gets the real file under the name the binary or loader asks for.
fn copy_host_files(dir: &Path, files: &[PathBuf]) -> Result<()> {
    for f in files {
        let target = dir.join(f.strip_prefix("/").unwrap_or(f));
        std::fs::create_dir_all(target.parent().expect("absolute path has a parent"))?;
        std::fs::copy(f, &target).with_context(|| format!("copying {}", f.display()))?;
    }
    Ok(())
}

fn build(img: &Image, inputs: &[PathBuf], hash: &str) -> Result<()> {
    // Removed (with its contents) when `tmp` drops, on errors too.
    let tmp = tempfile::Builder::new().prefix("skiff-image-").tempdir().context("creating a temp dir")?;
    let dir = tmp.path();
    busybox_rootfs(dir)?;
    match img.extra {
        Extra::None => {}
        Extra::File(path, body) => {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().expect("file path has a parent"))?;
            std::fs::write(p, body)?;
        }
        Extra::HostBinaries(_) => copy_host_files(dir, &inputs[1..])?,
        Extra::WorkspaceBinary(name) => {
            let bin = dir.join("usr/local/bin");
            std::fs::create_dir_all(&bin)?;
            std::fs::copy(&inputs[1], bin.join(name)).with_context(|| format!("copying {}", inputs[1].display()))?;
            copy_host_files(dir, &inputs[2..])?;
        }
    }

    let mut import = Command::new("docker");
    import.arg("import");
    for c in BASE_CHANGES
        .iter()
        .map(|c| c.to_string())
        .chain([format!("LABEL {HASH_LABEL}={hash}")])
        .chain(img.changes.iter().map(|c| c.to_string()))
    {
        import.arg("--change").arg(c);
    }
    import.args(["-", img.tags[0]]);

    // tar's stdout is docker import's stdin: streamed, never held in memory.
    let mut tar = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(dir)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .context("running tar")?;
    let tar_out = tar.stdout.take().expect("piped");
    let imported = import.stdin(Stdio::from(tar_out)).stdout(Stdio::null()).status();
    let tar_status = tar.wait()?;
    let imported = imported.context("running docker import")?;
    if !tar_status.success() {
        bail!("tar -C {} -c . failed with {tar_status}", dir.display());
    }
    if !imported.success() {
        bail!("docker import {} failed with {imported}", img.tags[0]);
    }
    for t in &img.tags[1..] {
        crate::run(Command::new("docker").args(["tag", img.tags[0], t]))?;
    }
    drop(tmp);
    Ok(())
}

/// Removes a replaced image if nothing names it any more (a container using it keeps it).
fn remove_if_dangling(id: &str) {
    if inspect(id, "{{len .RepoTags}}").as_deref() == Some("0") {
        let _ = Command::new("docker").args(["image", "rm", id]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

pub fn build_all() -> Result<()> {
    for img in IMAGES {
        let inputs = inputs(img).with_context(|| format!("collecting the inputs of {}", img.tags[0]))?;
        let hash = hash_of(img, &inputs);
        if img.tags.iter().all(|t| current_hash(t).as_deref() == Some(hash.as_str())) {
            println!("    {} up to date ({HASH_LABEL}={hash})", img.tags.join(", "));
            continue;
        }
        let old: Vec<String> = img.tags.iter().filter_map(|t| inspect(t, "{{.Id}}")).collect();
        println!("    building {} ({HASH_LABEL}={hash})", img.tags.join(", "));
        build(img, &inputs, &hash).with_context(|| format!("building image {}", img.tags[0]))?;
        for id in old {
            remove_if_dangling(&id);
        }
    }
    Ok(())
}
