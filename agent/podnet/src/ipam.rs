//! IP allocation like CNI's host-local plugin: one file per allocated address (named by the
//! address, holding the key), created with `O_EXCL` so two allocations can never claim one
//! address, and a `last_reserved` file so addresses are handed out round-robin (a freed address
//! is not reused at once, which keeps stale connections from reaching a new pod). Allocation and
//! release hold an exclusive `flock` on `lock` in the directory, so concurrent callers (threads or
//! processes) see each other's files.

use anyhow::{Context, Result, bail};
use ipnet::Ipv4Net;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;

pub struct Ipam {
    dir: PathBuf,
    range: Ipv4Net,
}

impl Ipam {
    pub fn new(dir: PathBuf, range: Ipv4Net) -> Self {
        Self { dir, range }
    }

    /// Holds the directory's lock until dropped.
    fn lock(&self) -> Result<std::fs::File> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        let path = self.dir.join("lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        f.lock().with_context(|| format!("locking {}", path.display()))?;
        Ok(f)
    }

    /// Addresses pods may get: not the network, not the gateway (first host), not broadcast.
    fn candidates(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let first = u32::from(self.range.network()) + 2;
        let last = u32::from(self.range.broadcast()).saturating_sub(1);
        (first..=last).map(Ipv4Addr::from)
    }

    pub fn allocations(&self) -> Result<Vec<(String, Ipv4Addr)>> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.dir.display())),
        };
        for e in entries {
            let e = e?;
            let Ok(ip) = e.file_name().to_string_lossy().parse::<Ipv4Addr>() else { continue };
            if !self.range.contains(&ip) {
                continue;
            }
            let key = std::fs::read_to_string(e.path()).unwrap_or_default().trim().to_string();
            out.push((key, ip));
        }
        out.sort_by_key(|(_, ip)| *ip);
        Ok(out)
    }

    /// The key's address: the one it already has, else the next free one after the last handed out.
    pub fn allocate(&self, key: &str) -> Result<Ipv4Addr> {
        let _lock = self.lock()?;
        if let Some((_, ip)) = self.allocations()?.into_iter().find(|(k, _)| k == key) {
            return Ok(ip);
        }
        let last: Option<Ipv4Addr> =
            std::fs::read_to_string(self.dir.join("last_reserved")).ok().and_then(|s| s.trim().parse().ok());
        let all: Vec<Ipv4Addr> = self.candidates().collect();
        let start = last.and_then(|l| all.iter().position(|ip| *ip == l)).map(|i| i + 1).unwrap_or(0);
        for i in 0..all.len() {
            let ip = all[(start + i) % all.len()];
            let path = self.dir.join(ip.to_string());
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    if let Err(e) = f.write_all(key.as_bytes()).and_then(|()| f.sync_all()) {
                        let _ = std::fs::remove_file(&path);
                        return Err(e).with_context(|| format!("writing {}", path.display()));
                    }
                    let tmp = self.dir.join("last_reserved.tmp");
                    std::fs::write(&tmp, ip.to_string())?;
                    std::fs::rename(&tmp, self.dir.join("last_reserved"))?;
                    return Ok(ip);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
        bail!("no free address left in {}", self.range)
    }

    pub fn release(&self, key: &str) -> Result<()> {
        let _lock = self.lock()?;
        for (k, ip) in self.allocations()? {
            if k == key {
                match std::fs::remove_file(self.dir.join(ip.to_string())) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_stable_round_robin_and_skip_reserved_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(dir.path().to_path_buf(), "10.244.9.0/29".parse().unwrap());
        let a = ipam.allocate("a").unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 244, 9, 2), "network and gateway are skipped");
        assert_eq!(ipam.allocate("a").unwrap(), a, "same key, same address");
        let b = ipam.allocate("b").unwrap();
        assert_eq!(b, Ipv4Addr::new(10, 244, 9, 3));
        ipam.release("a").unwrap();
        let c = ipam.allocate("c").unwrap();
        assert_eq!(c, Ipv4Addr::new(10, 244, 9, 4), "a freed address is not reused at once");
        // A new Ipam on the same directory (agent restart) sees the same allocations.
        let again = Ipam::new(dir.path().to_path_buf(), "10.244.9.0/29".parse().unwrap());
        assert_eq!(again.allocate("b").unwrap(), b);
        for k in ["d", "e", "f"] {
            again.allocate(k).unwrap();
        }
        let err = again.allocate("g").unwrap_err().to_string();
        assert!(err.contains("no free address"), "{err}");
        assert!(!again.allocations().unwrap().iter().any(|(_, ip)| *ip == Ipv4Addr::new(10, 244, 9, 7)), "broadcast");
    }
}
