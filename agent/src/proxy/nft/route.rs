//! Routes that let a local client's packets to the service range reach the nftables output hook.
//!
//! A socket's packet is routed before the output hook can translate it, and the service range's
//! blackhole route (DESIGN.md §5) makes that lookup — and so `connect()` — fail with `EINVAL`.
//! Two routes of the range's halves through `lo` (more specific than the blackhole, which stays
//! underneath as the safety net) make the lookup succeed without any way off the machine: the
//! output hook translates what belongs to a service, the table's `filter-*-post-dnat` chains
//! reject the rest, and anything still left is discarded by the loopback path (a packet routed
//! to a non-local address over `lo` has no input route). Pods' packets are translated in
//! prerouting and never needed this.

use crate::route::Ipv4Cidr;
use anyhow::{Context, Result, bail};
use futures::TryStreamExt;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope, RouteType};
use rtnetlink::{Handle, RouteMessageBuilder};
use std::net::Ipv4Addr;

/// The halves of the service range routed through `lo`, as this agent found or added them.
#[derive(Debug)]
pub struct LoopbackRoutes {
    /// Each half, and whether this agent added it (and so removes it).
    pub routes: Vec<(Ipv4Cidr, bool)>,
}

async fn handle() -> Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
    tokio::spawn(conn);
    Ok(handle)
}

fn lo_index() -> Result<u32> {
    // SAFETY: a valid C string.
    let i = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    if i == 0 {
        bail!("no loopback interface: {}", std::io::Error::last_os_error());
    }
    Ok(i)
}

fn message(half: Ipv4Cidr, lo: u32) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(half.addr, half.len)
        .output_interface(lo)
        .scope(RouteScope::Link)
        .kind(RouteType::Unicast)
        .build()
}

/// The two halves of `range` (none for a single address).
pub fn halves(range: Ipv4Cidr) -> Vec<Ipv4Cidr> {
    if range.len >= 32 {
        return Vec::new();
    }
    let len = range.len + 1;
    let second = u32::from(range.addr) | (1u32 << (32 - len));
    vec![Ipv4Cidr { addr: range.addr, len }, Ipv4Cidr { addr: Ipv4Addr::from(second), len }]
}

/// Whether the main table routes exactly `half` through interface `lo`.
async fn present(h: &Handle, half: Ipv4Cidr, lo: u32) -> Result<bool> {
    let mut routes = h.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
    while let Some(m) = routes.try_next().await.context("listing IPv4 routes")? {
        let table = m
            .attributes
            .iter()
            .find_map(|a| if let RouteAttribute::Table(t) = a { Some(*t) } else { None })
            .unwrap_or(m.header.table as u32);
        let dst = m.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
            _ => None,
        });
        let oif = m.attributes.iter().find_map(|a| if let RouteAttribute::Oif(i) = a { Some(*i) } else { None });
        if m.header.kind == RouteType::Unicast
            && table == RouteHeader::RT_TABLE_MAIN as u32
            && m.header.destination_prefix_length == half.len
            && dst.unwrap_or(Ipv4Addr::UNSPECIFIED) == half.addr
            && oif == Some(lo)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

impl LoopbackRoutes {
    /// Adds the routes that are missing (in the calling thread's network namespace).
    pub async fn ensure(range: Ipv4Cidr) -> Result<Self> {
        let h = handle().await?;
        let lo = lo_index()?;
        let mut routes = Vec::new();
        for half in halves(range) {
            if present(&h, half, lo).await? {
                routes.push((half, false));
                continue;
            }
            match h.route().add(message(half, lo)).execute().await {
                Ok(()) => routes.push((half, true)),
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => routes.push((half, false)),
                Err(e) => {
                    let added = Self { routes };
                    let _ = added.remove().await;
                    return Err(e).with_context(|| format!("adding the route {half} dev lo"));
                }
            }
        }
        Ok(Self { routes })
    }

    /// Deletes the routes this agent added.
    pub async fn remove(self) -> Result<()> {
        let h = handle().await?;
        let lo = lo_index()?;
        let mut first_err = None;
        for (half, added) in self.routes {
            if !added {
                continue;
            }
            match h.route().del(message(half, lo)).execute().await {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => {}
                Err(e) => {
                    first_err
                        .get_or_insert(anyhow::Error::from(e).context(format!("deleting the route {half} dev lo")));
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_of_the_service_range() {
        let h = halves("10.96.0.0/12".parse().unwrap());
        assert_eq!(h.iter().map(|c| c.to_string()).collect::<Vec<_>>(), ["10.96.0.0/13", "10.104.0.0/13"]);
        assert!(halves("10.96.0.1/32".parse().unwrap()).is_empty());
    }
}
