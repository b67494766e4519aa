//! Skiff's own nftables table (family `ip`), written through `nftnl` in one transaction: a
//! `postrouting` NAT chain that masquerades pod traffic leaving the cluster range:
//!
//! ```text
//! table ip skiff {
//!   chain postrouting { type nat hook postrouting priority srcnat;
//!     ip saddr <podCIDR> ip daddr != <clusterCIDR> oifname != "<bridge>" masquerade } }
//! ```
//!
//! The transaction adds the table, deletes it and builds it again, so a second run replaces the
//! rules atomically instead of duplicating them, and nothing outside the table is touched.

use anyhow::{Context, Result, bail};
use ipnet::Ipv4Net;
use nftnl::{Batch, Chain, FinalizedBatch, MsgType, ProtoFamily, Rule, Table, nft_expr};
use std::ffi::CString;
use std::os::unix::io::AsRawFd;

/// An interface name as the kernel compares it: IFNAMSIZ bytes, NUL-padded.
fn ifname(name: &str) -> Vec<u8> {
    let mut b = name.as_bytes().to_vec();
    b.resize(16, 0);
    b
}

pub fn install(table: &str, pod_cidr: Ipv4Net, cluster_cidr: Ipv4Net, bridge: &str) -> Result<()> {
    let name = CString::new(table)?;
    let t = Table::new(&name, ProtoFamily::Ipv4);
    let mut batch = Batch::new();
    batch.add(&t, MsgType::Add);
    batch.add(&t, MsgType::Del);
    batch.add(&t, MsgType::Add);
    let chain_name = CString::new("postrouting")?;
    let mut chain = Chain::new(&chain_name, &t);
    chain.set_hook(nftnl::Hook::PostRouting, 100);
    chain.set_type(nftnl::ChainType::Nat);
    chain.set_policy(nftnl::Policy::Accept);
    batch.add(&chain, MsgType::Add);
    let mut rule = Rule::new(&chain);
    rule.add_expr(&nft_expr!(payload ipv4 saddr));
    rule.add_expr(&nft_expr!(bitwise mask pod_cidr.netmask(), xor 0u32));
    rule.add_expr(&nft_expr!(cmp == pod_cidr.network()));
    rule.add_expr(&nft_expr!(payload ipv4 daddr));
    rule.add_expr(&nft_expr!(bitwise mask cluster_cidr.netmask(), xor 0u32));
    rule.add_expr(&nft_expr!(cmp != cluster_cidr.network()));
    let br = ifname(bridge);
    rule.add_expr(&nft_expr!(meta oifname));
    rule.add_expr(&nft_expr!(cmp != br.as_slice()));
    rule.add_expr(&nft_expr!(counter));
    rule.add_expr(&nft_expr!(masquerade));
    batch.add(&rule, MsgType::Add);
    send(&batch.finalize()).with_context(|| format!("writing nftables table ip {table}"))
}

/// Deletes the table; a missing table is fine.
pub fn remove(table: &str) -> Result<()> {
    let name = CString::new(table)?;
    let t = Table::new(&name, ProtoFamily::Ipv4);
    let mut batch = Batch::new();
    // Adding first makes the delete succeed whether or not the table existed.
    batch.add(&t, MsgType::Add);
    batch.add(&t, MsgType::Del);
    send(&batch.finalize()).with_context(|| format!("deleting nftables table ip {table}"))
}

/// Sends a batch and collects the kernel's answers until it has been quiet for a moment: tables
/// and chains are acknowledged, rules only answer on error, so waiting for one "stop" could miss
/// a later error.
fn send(batch: &FinalizedBatch) -> Result<()> {
    let socket = mnl::Socket::new(mnl::Bus::Netfilter).context("opening a netfilter netlink socket")?;
    socket.send_all(batch)?;
    let portid = socket.portid();
    let mut buf = vec![0u8; nftnl::nft_nlmsg_maxsize() as usize];
    let fd = socket.as_raw_fd();
    loop {
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the socket's descriptor.
        let n = unsafe { libc::poll(&mut pfd, 1, 100) };
        if n <= 0 {
            return Ok(());
        }
        let len = socket.recv(&mut buf)?;
        if len == 0 {
            return Ok(());
        }
        // Sequence 0: one batch carries several sequence numbers; the port id still checks the sender.
        if let Err(e) = mnl::cb_run(&buf[..len], 0, portid) {
            bail!("netfilter refused the change: {e}");
        }
    }
}
