//! Links, addresses and routes through `rtnetlink`, in the host namespace and — from a dedicated
//! thread that entered it — in a pod's namespace.

use anyhow::{Context, Result, bail};
use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

fn connect() -> Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
    tokio::spawn(conn);
    Ok(handle)
}

async fn index_of(h: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(l) => Ok(l),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(e).with_context(|| format!("looking up link {name}")),
    }
}

async fn ipv4_addrs(h: &Handle, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
    let mut out = Vec::new();
    let mut addrs = h.address().get().set_link_index_filter(index).execute();
    while let Some(a) = addrs.try_next().await? {
        for attr in &a.attributes {
            if let AddressAttribute::Address(IpAddr::V4(ip)) = attr {
                out.push((*ip, a.header.prefix_len));
            }
        }
    }
    Ok(out)
}

fn is_up(l: &LinkMessage) -> bool {
    l.header.flags.contains(rtnetlink::packet_route::link::LinkFlags::Up)
}

fn kind(l: &LinkMessage) -> Option<&InfoKind> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => {
            infos.iter().find_map(|i| if let LinkInfo::Kind(k) = i { Some(k) } else { None })
        }
        _ => None,
    })
}

fn controller(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| if let LinkAttribute::Controller(c) = a { Some(*c) } else { None })
}

/// A fixed, locally administered MAC for the bridge, derived from its name. A bridge without an
/// explicitly set address takes the lowest MAC of its ports, so it would change whenever a pod
/// comes or goes and leave every pod with a stale neighbour entry for its gateway (the CNI bridge
/// plugin pins the address for the same reason).
fn bridge_mac(name: &str) -> Vec<u8> {
    let h = crate::fnv(name).to_be_bytes();
    vec![0x02, h[3], h[4], h[5], h[6], h[7]]
}

/// The bridge exists, is up, and holds exactly `gateway/prefix` (other IPv4 addresses — from a
/// previous podCIDR — are removed).
pub async fn ensure_bridge(name: &str, gateway: Ipv4Addr, prefix: u8) -> Result<()> {
    let h = connect()?;
    tracing::debug!(name, "looking up bridge");
    let link = match index_of(&h, name).await? {
        Some(l) => l,
        None => {
            match h.link().add(LinkBridge::new(name).address(bridge_mac(name)).build()).execute().await {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
                Err(e) => return Err(e).with_context(|| format!("creating bridge {name}")),
            }
            index_of(&h, name).await?.with_context(|| format!("bridge {name} missing after creation"))?
        }
    };
    if kind(&link) != Some(&InfoKind::Bridge) {
        bail!("link {name} exists and is not a bridge");
    }
    let index = link.header.index;
    tracing::debug!(name, index, "bridge found");
    let addrs = ipv4_addrs(&h, index).await?;
    tracing::debug!(name, ?addrs, "bridge addresses");
    for (ip, len) in &addrs {
        if (*ip, *len) != (gateway, prefix) {
            let mut del = h.address().get().set_link_index_filter(index).execute();
            while let Some(m) = del.try_next().await? {
                if m.attributes.iter().any(|a| matches!(a, AddressAttribute::Address(IpAddr::V4(x)) if x == ip)) {
                    h.address().del(m).execute().await?;
                }
            }
        }
    }
    if !addrs.contains(&(gateway, prefix)) {
        h.address()
            .add(index, IpAddr::V4(gateway), prefix)
            .execute()
            .await
            .with_context(|| format!("addressing {name}"))?;
    }
    if !is_up(&link) {
        h.link().set(LinkUnspec::new_with_index(index).up().build()).execute().await?;
    }
    Ok(())
}

/// Deletes the veths enslaved to `bridge` (the host ends of pods; each takes its peer along).
pub async fn delete_ports(bridge: &str) -> Result<()> {
    let h = connect()?;
    let Some(br) = index_of(&h, bridge).await? else { return Ok(()) };
    let mut ports = Vec::new();
    let mut links = h.link().get().execute();
    while let Some(l) = links.try_next().await.context("listing links")? {
        if controller(&l) == Some(br.header.index) && kind(&l) == Some(&InfoKind::Veth) {
            ports.push(l.header.index);
        }
    }
    for index in ports {
        match h.link().del(index).execute().await {
            Ok(()) => {}
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {}
            Err(e) => return Err(e).context("deleting a pod veth"),
        }
    }
    Ok(())
}

/// Whether the host end exists, is up and is a port of `bridge`.
pub async fn host_side_ready(bridge: &str, host: &str) -> Result<bool> {
    let h = connect()?;
    let (Some(br), Some(l)) = (index_of(&h, bridge).await?, index_of(&h, host).await?) else { return Ok(false) };
    Ok(is_up(&l) && controller(&l) == Some(br.header.index))
}

/// Deletes a link by name; a missing link is fine.
pub async fn delete(name: &str) -> Result<()> {
    let h = connect()?;
    if let Some(l) = index_of(&h, name).await? {
        match h.link().del(l.header.index).execute().await {
            Ok(()) => {}
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {}
            Err(e) => return Err(e).with_context(|| format!("deleting link {name}")),
        }
    }
    Ok(())
}

/// Runs `f` with a netlink handle inside the namespace at `netns`, on a thread of its own.
async fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce(Handle) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>>>> + Send + 'static,
) -> Result<T> {
    let ns = std::fs::File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let r = (|| {
            // SAFETY: a valid namespace fd; setns affects only this thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns: {}", std::io::Error::last_os_error());
            }
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async move {
                let h = connect()?;
                f(h).await
            })
        })();
        let _ = tx.send(r);
    });
    rx.await.context("namespace thread ended")?
}

/// Whether `ifname` in the namespace is up with `ip`.
pub async fn pod_side_ready(netns: &Path, ifname: &str, ip: Ipv4Addr) -> Result<bool> {
    let ifname = ifname.to_string();
    in_netns(netns, move |h| {
        Box::pin(async move {
            let Some(l) = index_of(&h, &ifname).await? else { return Ok(false) };
            Ok(is_up(&l) && ipv4_addrs(&h, l.header.index).await?.iter().any(|(a, _)| *a == ip))
        })
    })
    .await
}

/// Creates the veth pair, enslaves the host end to the bridge, moves the peer into the pod's
/// namespace and configures it there (name, address, up, loopback up, default route).
pub async fn create_pod_link(
    bridge: &str,
    host: &str,
    netns: &Path,
    ifname: &str,
    ip: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
) -> Result<()> {
    let h = connect()?;
    // A temporary peer name in the host namespace, unique per host end.
    let peer = format!("p{}", &host[4..]);
    delete(&peer).await?;
    h.link()
        .add(LinkVeth::new(host, &peer).build())
        .execute()
        .await
        .with_context(|| format!("creating veth {host}"))?;
    let br = index_of(&h, bridge).await?.with_context(|| format!("bridge {bridge} is missing"))?;
    let host_link = index_of(&h, host).await?.context("host veth missing after creation")?;
    h.link()
        .set(LinkUnspec::new_with_index(host_link.header.index).controller(br.header.index).up().build())
        .execute()
        .await
        .context("attaching the host veth to the bridge")?;
    let peer_link = index_of(&h, &peer).await?.context("peer veth missing after creation")?;
    let ns = std::fs::File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    h.link()
        .set(LinkUnspec::new_with_index(peer_link.header.index).setns_by_fd(ns.as_raw_fd()).build())
        .execute()
        .await
        .context("moving the peer into the pod's namespace")?;
    let ifname = ifname.to_string();
    in_netns(netns, move |h| {
        Box::pin(async move {
            let l = index_of(&h, &peer).await?.context("peer not found in the pod's namespace")?;
            let idx = l.header.index;
            h.link().set(LinkUnspec::new_with_index(idx).name(ifname.clone()).build()).execute().await?;
            h.address().add(idx, IpAddr::V4(ip), prefix).execute().await.context("addressing the pod")?;
            h.link().set(LinkUnspec::new_with_index(idx).up().build()).execute().await?;
            if let Some(lo) = index_of(&h, "lo").await? {
                h.link().set(LinkUnspec::new_with_index(lo.header.index).up().build()).execute().await?;
            }
            let route = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gateway).output_interface(idx).build();
            match h.route().add(route).execute().await {
                Ok(()) => Ok(()),
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
                Err(e) => Err(e).context("adding the pod's default route"),
            }
        })
    })
    .await?;
    Ok(())
}
