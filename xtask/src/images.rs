//! Local container images without a registry (`cargo xtask images`), built with
//! `docker import` from `busybox-static` and host binaries. Stand-ins carry the names the seed
//! and users' habits use, so manifests run unchanged with `imagePullPolicy: IfNotPresent`.
//!
//! Each image records a hash of its definition and inputs in a label; an image
//! whose hash matches is not rebuilt, so `setup` stays fast.

use anyhow::{Context, Result, bail};
use std::io::Write;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What goes into an image's root filesystem besides busybox.
enum Extra {
    None,
    /// An HTML page at this path.
    Page(&'static str, &'static str),
    /// A host binary with the libraries `ldd` lists.
    HostBinary(&'static str),
}

struct Image {
    tags: &'static [&'static str],
    extra: Extra,
    /// Docker `--change` lines (CMD, WORKDIR, ...).
    changes: &'static [&'static str],
}

const NGINX_PAGE: &str = "<!DOCTYPE html>\n<html>\n<head>\n<title>Welcome to nginx!</title>\n</head>\n<body>\n<h1>Welcome to nginx!</h1>\n<p>A Skiff stand-in: busybox httpd serving this page on port 80.</p>\n</body>\n</html>\n";

const IMAGES: &[Image] = &[
    Image { tags: &["busybox:latest"], extra: Extra::None, changes: &[r#"CMD ["sh"]"#] },
    Image {
        tags: &["nginx:1.7.9", "nginx:latest"],
        extra: Extra::Page("usr/share/nginx/html/index.html", NGINX_PAGE),
        changes: &[r#"CMD ["httpd", "-f", "-p", "80", "-h", "/usr/share/nginx/html"]"#, "EXPOSE 80"],
    },
    Image {
        tags: &["redis:latest"],
        extra: Extra::HostBinary("/usr/bin/redis-server"),
        changes: &[r#"CMD ["redis-server", "--protected-mode", "no"]"#, "WORKDIR /data", "EXPOSE 6379"],
    },
    Image {
        tags: &["kubernetes/git-monitor:latest"],
        extra: Extra::None,
        changes: &[
            r#"CMD ["sh", "-c", "while true; do echo \"git-monitor: syncing ${GIT_REPO:-nothing}\"; sleep 10; done"]"#,
        ],
    },
    // The pod sandbox: holds the namespaces, exits at once on SIGTERM even as PID 1.
    Image {
        tags: &["skiff/pause:1"],
        extra: Extra::None,
        changes: &[r#"CMD ["/bin/sh", "-c", "trap 'exit 0' TERM INT; while true; do sleep 3600 & wait $!; done"]"#],
    },
];

const BUSYBOX: &str = "/bin/busybox";

fn fnv(h: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(h, |h, b| (h ^ *b as u64).wrapping_mul(0x100000001b3))
}

fn file_stamp(path: &str) -> String {
    std::fs::metadata(path)
        .map(|m| format!("{path}:{}:{:?}", m.len(), m.modified().ok()))
        .unwrap_or_else(|_| format!("{path}:missing"))
}

fn hash_of(img: &Image) -> String {
    let mut h = 0xcbf29ce484222325u64;
    h = fnv(h, file_stamp(BUSYBOX).as_bytes());
    for c in img.changes {
        h = fnv(h, c.as_bytes());
    }
    match img.extra {
        Extra::None => {}
        Extra::Page(p, body) => h = fnv(fnv(h, p.as_bytes()), body.as_bytes()),
        Extra::HostBinary(b) => h = fnv(h, file_stamp(b).as_bytes()),
    }
    format!("{h:016x}")
}

fn current_hash(tag: &str) -> Option<String> {
    let out = Command::new("docker")
        .args(["image", "inspect", "--format", "{{index .Config.Labels \"io.skiff.image-hash\"}}", tag])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string()).filter(|h| !h.is_empty())
}

fn busybox_rootfs(dir: &Path) -> Result<()> {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::copy(BUSYBOX, bin.join("busybox")).with_context(|| format!("copying {BUSYBOX} (busybox-static)"))?;
    let list = Command::new(BUSYBOX).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            let _ = symlink("busybox", bin.join(applet));
        }
    }
    for d in ["tmp", "etc", "root", "var/run", "proc", "sys", "dev", "data"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::set_permissions(dir.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    std::fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    Ok(())
}

/// Copies a dynamically linked host binary and every library `ldd` names (and the loader).
fn host_binary(dir: &Path, binary: &str) -> Result<()> {
    let mut files = vec![PathBuf::from(binary)];
    let out = Command::new("ldd").arg(binary).output().with_context(|| format!("ldd {binary}"))?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libx.so => /lib/x/libx.so (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = line.split("=>").nth(1).unwrap_or(line).split_whitespace().next().unwrap_or("");
        if path.starts_with('/') {
            files.push(PathBuf::from(path));
        }
    }
    for f in files {
        let target = dir.join(f.strip_prefix("/").unwrap_or(&f));
        std::fs::create_dir_all(target.parent().expect("absolute path has a parent"))?;
        // Follow symlinks: the image gets the real file under the name the loader asks for.
        std::fs::copy(&f, &target).with_context(|| format!("copying {}", f.display()))?;
    }
    Ok(())
}

fn build(img: &Image, hash: &str) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("skiff-image-{}-{}", std::process::id(), hash));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = (|| {
        busybox_rootfs(&dir)?;
        match img.extra {
            Extra::None => {}
            Extra::Page(path, body) => {
                let p = dir.join(path);
                std::fs::create_dir_all(p.parent().expect("page path has a parent"))?;
                std::fs::write(p, body)?;
            }
            Extra::HostBinary(b) => host_binary(&dir, b)?,
        }
        let tar = Command::new("tar").arg("-C").arg(&dir).args(["-c", "."]).stdout(Stdio::piped()).output()?;
        if !tar.status.success() {
            bail!("tar failed");
        }
        let mut args: Vec<String> = vec!["import".into()];
        let mut changes: Vec<String> = vec![
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            format!("LABEL io.skiff.image-hash={hash}"),
        ];
        changes.extend(img.changes.iter().map(|c| c.to_string()));
        for c in changes {
            args.push("--change".into());
            args.push(c);
        }
        args.push("-".into());
        args.push(img.tags[0].into());
        let mut child = Command::new("docker").args(&args).stdin(Stdio::piped()).stdout(Stdio::null()).spawn()?;
        child.stdin.take().expect("piped").write_all(&tar.stdout)?;
        if !child.wait()?.success() {
            bail!("docker import {} failed", img.tags[0]);
        }
        for t in &img.tags[1..] {
            crate::run(Command::new("docker").args(["tag", img.tags[0], t]))?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

pub fn build_all() -> Result<()> {
    for img in IMAGES {
        let hash = hash_of(img);
        if img.tags.iter().all(|t| current_hash(t).as_deref() == Some(hash.as_str())) {
            println!("    {} up to date", img.tags.join(", "));
            continue;
        }
        println!("    building {}", img.tags.join(", "));
        build(img, &hash).with_context(|| format!("building image {}", img.tags[0]))?;
    }
    Ok(())
}
