//! Pod volumes as host directories under the agent's root (`pods/<uid>/volumes/<name>`), bind-
//! mounted into the containers. An `emptyDir` is one directory shared by all containers of the
//! pod; `configMap`, `secret` and `downwardAPI` volumes are files written (atomically, through a
//! rename) from the objects the pod refers to; `hostPath` binds the host's path itself.

use super::env::{Refs, field_value};
use crate::runtime::Bind;
use k8s_openapi::api::core::v1::{Container, KeyToPath, Pod, Volume};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The ConfigMaps and Secrets (names, optional?) the pod's volumes read.
pub fn referenced(pod: &Pod) -> (Vec<(String, bool)>, Vec<(String, bool)>) {
    let (mut cms, mut secrets) = (Vec::new(), Vec::new());
    for v in pod.spec.as_ref().and_then(|s| s.volumes.as_ref()).into_iter().flatten() {
        if let Some(c) = &v.config_map {
            cms.push((c.name.clone(), c.optional == Some(true)));
        }
        if let Some(s) = &v.secret {
            secrets.push((s.secret_name.clone().unwrap_or_default(), s.optional == Some(true)));
        }
    }
    (cms, secrets)
}

pub fn pod_dir(root: &Path, uid: &str) -> PathBuf {
    root.join("pods").join(uid)
}

fn write_file(dir: &Path, rel: &str, content: &[u8], mode: u32) -> std::io::Result<()> {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("skiff-tmp");
    std::fs::write(&tmp, content)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, &path)
}

/// `items:` when given (a missing key is an error unless optional), else every key.
fn project(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: u32,
    what: &str,
) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    match items {
        Some(items) if !items.is_empty() => {
            for it in items {
                let v = data.get(&it.key).ok_or_else(|| format!("{what}: no key {:?}", it.key))?;
                let mode = it.mode.map(|m| m as u32).unwrap_or(default_mode);
                write_file(dir, &it.path, v, mode).map_err(|e| e.to_string())?;
            }
        }
        _ => {
            for (k, v) in data {
                write_file(dir, k, v, default_mode).map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
}

/// Creates or refreshes every volume of the pod; the error is the message of a
/// `FailedMount`-style waiting reason.
pub fn prepare(root: &Path, pod: &Pod, refs: &Refs, pod_ip: &str, host_ip: &str) -> Result<(), String> {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let base = pod_dir(root, uid).join("volumes");
    for v in pod.spec.as_ref().and_then(|s| s.volumes.as_ref()).into_iter().flatten() {
        let dir = base.join(&v.name);
        if v.empty_dir.is_some() {
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            // Containers may run as any user; an emptyDir is world-writable as in Kubernetes.
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777));
        } else if let Some(h) = &v.host_path {
            let ty = h.type_.as_deref().unwrap_or("");
            let p = Path::new(&h.path);
            match ty {
                "DirectoryOrCreate" => std::fs::create_dir_all(p).map_err(|e| e.to_string())?,
                "FileOrCreate" => {
                    if !p.exists() {
                        if let Some(parent) = p.parent() {
                            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
                        }
                        std::fs::write(p, b"").map_err(|e| e.to_string())?;
                    }
                }
                "Directory" if !p.is_dir() => {
                    return Err(format!("hostPath type check failed: {} is not a directory", h.path));
                }
                "File" if !p.is_file() => return Err(format!("hostPath type check failed: {} is not a file", h.path)),
                _ => {}
            }
        } else if let Some(c) = &v.config_map {
            let Some(cm) = refs.config_maps.get(&c.name) else {
                if c.optional == Some(true) {
                    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                    continue;
                }
                return Err(format!("configmap \"{}\" not found", c.name));
            };
            let mut data: BTreeMap<String, Vec<u8>> =
                cm.data.iter().flatten().map(|(k, v)| (k.clone(), v.clone().into_bytes())).collect();
            data.extend(cm.binary_data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())));
            let mode = c.default_mode.map(|m| m as u32).unwrap_or(0o644);
            project(&dir, &data, c.items.as_ref(), mode, &format!("configmap {}", c.name))?;
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let Some(secret) = refs.secrets.get(&name) else {
                if s.optional == Some(true) {
                    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                    continue;
                }
                return Err(format!("secret \"{name}\" not found"));
            };
            let mut data: BTreeMap<String, Vec<u8>> =
                secret.data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())).collect();
            data.extend(secret.string_data.iter().flatten().map(|(k, v)| (k.clone(), v.clone().into_bytes())));
            let mode = s.default_mode.map(|m| m as u32).unwrap_or(0o644);
            project(&dir, &data, s.items.as_ref(), mode, &format!("secret {name}"))?;
        } else if let Some(d) = &v.downward_api {
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let mode = d.default_mode.map(|m| m as u32).unwrap_or(0o644);
            for item in d.items.iter().flatten() {
                let value = if let Some(f) = &item.field_ref {
                    match f.field_path.as_str() {
                        // Whole maps are rendered as key="value" lines, sorted.
                        "metadata.labels" | "metadata.annotations" => {
                            let m = if f.field_path == "metadata.labels" {
                                pod.metadata.labels.clone()
                            } else {
                                pod.metadata.annotations.clone()
                            };
                            m.unwrap_or_default().iter().map(|(k, v)| format!("{k}={v:?}\n")).collect::<String>()
                        }
                        p => field_value(pod, p, pod_ip, host_ip)?,
                    }
                } else if let Some(r) = &item.resource_field_ref {
                    let c = container_named(pod, r.container_name.as_deref().unwrap_or(""))
                        .ok_or_else(|| format!("downwardAPI: no container {:?}", r.container_name))?;
                    super::env::resource_value(c, &r.resource, r.divisor.as_ref().map(|d| d.0.as_str()), 0, 0)?
                } else {
                    continue;
                };
                let mode = item.mode.map(|m| m as u32).unwrap_or(mode);
                write_file(&dir, &item.path, value.as_bytes(), mode).map_err(|e| e.to_string())?;
            }
        } else {
            return Err(format!("volume {:?}: this volume type is not supported by Skiff", v.name));
        }
    }
    Ok(())
}

fn container_named<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    pod.spec.as_ref()?.containers.iter().find(|c| c.name == name)
}

fn host_path_of(root: &Path, uid: &str, v: &Volume) -> String {
    match &v.host_path {
        Some(h) => h.path.clone(),
        None => pod_dir(root, uid).join("volumes").join(&v.name).to_string_lossy().into_owned(),
    }
}

/// The container's `volumeMounts` as binds (a `subPath` binds a path inside the volume).
pub fn binds(root: &Path, pod: &Pod, c: &Container) -> Result<Vec<Bind>, String> {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let v = volumes
            .and_then(|vs| vs.iter().find(|v| v.name == m.name))
            .ok_or_else(|| format!("volumeMount {:?}: no volume of that name", m.name))?;
        let mut host = host_path_of(root, uid, v);
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            if sub.split('/').any(|p| p == "..") || sub.starts_with('/') {
                return Err(format!("subPath {sub:?} must be a relative path inside the volume"));
            }
            let p = Path::new(&host).join(sub);
            if !p.exists() {
                std::fs::create_dir_all(&p).map_err(|e| e.to_string())?;
            }
            host = p.to_string_lossy().into_owned();
        }
        let read_only =
            m.read_only == Some(true) || v.config_map.is_some() || v.secret.is_some() || v.downward_api.is_some();
        out.push(Bind { host, container: m.mount_path.clone(), read_only });
    }
    Ok(out)
}
