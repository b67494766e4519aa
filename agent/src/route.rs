//! The blackhole route for the service range (DESIGN.md §5): installed through netlink
//! (`rtnetlink`) before any service is programmed, so that a connection to a ClusterIP that is not
//! (or no longer) translated is refused locally instead of following the default route off the
//! machine. Removed on cleanup only if this agent added it.

use anyhow::{Context, Result, bail};
use futures::TryStreamExt;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType};
use rtnetlink::{Handle, RouteMessageBuilder};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 prefix such as `10.96.0.0/12`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Ipv4Cidr {
    /// The prefix; host bits of `addr` are cleared.
    pub fn new(addr: Ipv4Addr, len: u8) -> Result<Self> {
        if len > 32 {
            bail!("prefix length {len} > 32");
        }
        let mask = Self::mask_of(len);
        Ok(Self { addr: Ipv4Addr::from(u32::from(addr) & mask), len })
    }

    fn mask_of(len: u8) -> u32 {
        if len == 0 { 0 } else { u32::MAX << (32 - len) }
    }

    /// Whether `ip` is inside the prefix.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask_of(self.len) == u32::from(self.addr)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let (a, l) = s.split_once('/').with_context(|| format!("{s:?} is not an IPv4 prefix (a.b.c.d/len)"))?;
        Self::new(
            a.parse().with_context(|| format!("address in {s:?}"))?,
            l.parse().with_context(|| format!("length in {s:?}"))?,
        )
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// The default service range (DESIGN.md §2).
pub fn default_service_range() -> Ipv4Cidr {
    Ipv4Cidr { addr: Ipv4Addr::new(10, 96, 0, 0), len: 12 }
}

async fn handle() -> Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
    tokio::spawn(conn);
    Ok(handle)
}

fn blackhole_message(range: Ipv4Cidr) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(range.addr, range.len).kind(RouteType::BlackHole).build()
}

fn is_main_table(m: &RouteMessage) -> bool {
    let table = m
        .attributes
        .iter()
        .find_map(|a| if let RouteAttribute::Table(t) = a { Some(*t) } else { None })
        .unwrap_or(m.header.table as u32);
    table == RouteHeader::RT_TABLE_MAIN as u32
}

fn destination(m: &RouteMessage) -> Option<Ipv4Addr> {
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
        _ => None,
    })
}

/// Whether the main table holds a blackhole route for exactly `range`.
pub async fn blackhole_present(range: Ipv4Cidr) -> Result<bool> {
    let h = handle().await?;
    let mut routes = h.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
    while let Some(m) = routes.try_next().await.context("listing IPv4 routes")? {
        if m.header.kind == RouteType::BlackHole
            && m.header.destination_prefix_length == range.len
            && is_main_table(&m)
            && destination(&m).unwrap_or(Ipv4Addr::UNSPECIFIED) == range.addr
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The blackhole route for the service range, as this agent found or made it.
#[derive(Debug)]
pub struct BlackholeRoute {
    pub range: Ipv4Cidr,
    /// Whether this agent added it (and so [`BlackholeRoute::remove`] deletes it).
    pub added: bool,
}

impl BlackholeRoute {
    /// Adds `blackhole <range>` to the main table unless it is there already.
    pub async fn ensure(range: Ipv4Cidr) -> Result<Self> {
        if blackhole_present(range).await? {
            return Ok(Self { range, added: false });
        }
        let h = handle().await?;
        match h.route().add(blackhole_message(range)).execute().await {
            Ok(()) => {}
            // Raced with someone else adding it: fine, but then it is not ours.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {
                return Ok(Self { range, added: false });
            }
            Err(e) => return Err(e).with_context(|| format!("adding the blackhole route {range}")),
        }
        if !blackhole_present(range).await? {
            bail!("the blackhole route {range} is missing right after adding it");
        }
        Ok(Self { range, added: true })
    }

    /// Deletes the route if this agent added it.
    pub async fn remove(self) -> Result<()> {
        if !self.added {
            return Ok(());
        }
        let h = handle().await?;
        match h.route().del(blackhole_message(self.range)).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
            Err(e) => Err(e).with_context(|| format!("deleting the blackhole route {}", self.range)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing_and_membership() {
        let r: Ipv4Cidr = "10.96.0.0/12".parse().unwrap();
        assert_eq!(r, default_service_range());
        assert!(r.contains(Ipv4Addr::new(10, 96, 0, 1)));
        assert!(r.contains(Ipv4Addr::new(10, 111, 255, 255)));
        assert!(!r.contains(Ipv4Addr::new(10, 112, 0, 0)));
        assert_eq!("10.96.1.2/12".parse::<Ipv4Cidr>().unwrap().to_string(), "10.96.0.0/12");
        assert!("10.96.0.0".parse::<Ipv4Cidr>().is_err());
    }
}
