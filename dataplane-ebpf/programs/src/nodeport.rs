//! Per-packet NodePort at tc ingress (`skiff_nodeport`), for traffic that never passed a socket
//! hook on this node: packets from other machines to `<node address>:<nodePort>`.
//!
//! Attached (tcx) to the ingress of the node's interfaces, including the pod-side one (the pod
//! bridge), because replies of local backends enter the node there. For the first packet of a
//! connection the program picks a backend (the same choice as the socket programs: random, or
//! ClientIP affinity keyed by the client address) and writes two `SKIFF_CT4_V1` entries, one per
//! direction; every later packet of either direction is rewritten from its entry:
//!
//! - `externalTrafficPolicy: Cluster`: client → node:nodePort becomes node:snatPort → backend,
//!   and the backend's reply node:snatPort ← backend becomes client ← node:nodePort. The backend
//!   may be on another node: its reply must come back through this one, hence the SNAT.
//! - `externalTrafficPolicy: Local` (flag `EXTERNAL_LOCAL`, local backends only): client →
//!   backend, the client's address preserved; the reply backend → client becomes node:nodePort →
//!   client.
//!
//! A rewritten packet is forwarded with `bpf_fib_lookup` + `bpf_redirect` (or
//! `bpf_redirect_neigh` while the next hop's MAC is unresolved) instead of going up the stack:
//! with the node's own address as its source, the stack would drop it as a martian, and skipping
//! netfilter is the point (no conntrack entry, no FORWARD chain).
//!
//! Not handled here (passed up unchanged): IPv6, IP options, fragments, protocols other than TCP
//! and UDP. A NodePort without ready backends drops the packet (the socket programs refuse such
//! connections from the node itself).

use crate::{SERVICES, bump_counter, choose_backend};
use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_F_CURRENT_NETNS, TC_ACT_OK, TC_ACT_SHOT, bpf_fib_lookup as FibParams, bpf_sock_tuple,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
    },
    cty::c_void,
    helpers::{
        bpf_get_prandom_u32,
        generated::{bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_sk_lookup_udp, bpf_sk_release, bpf_skc_lookup_tcp},
    },
    macros::{classifier, map},
    maps::{LruHashMap, PerCpuArray},
    programs::TcContext,
};
use skiff_dataplane_common::{
    CtKey, CtValue, MAX_CT, MAX_SERVICES, PROTO_TCP, PROTO_UDP, PacketCounters, SNAT_PORT_COUNT, SNAT_PORT_MIN,
    ServiceKey, flags,
};

#[map(name = "SKIFF_CT4_V1")]
pub(crate) static CT: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(MAX_CT, 0);

#[map(name = "SKIFF_PKT_V1")]
static PACKETS: PerCpuArray<PacketCounters> = PerCpuArray::pinned(MAX_SERVICES, 0);

/// Counts one translated packet of service `id` (per-CPU memory: no atomics needed; see
/// `bump_counter` on the rare lost increment).
#[inline(always)]
pub(crate) fn count_packet(len: u64, id: u32) {
    if let Some(c) = PACKETS.get_ptr_mut(id) {
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len;
        }
    }
}

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IP_OFF: usize = ETH_HLEN;
const IP_TOT_LEN: usize = IP_OFF + 2;
const IP_FRAG: usize = IP_OFF + 6;
const IP_PROTO: usize = IP_OFF + 9;
const IP_CSUM: usize = IP_OFF + 10;
const IP_SADDR: usize = IP_OFF + 12;
const IP_DADDR: usize = IP_OFF + 16;
/// Only headers without options (IHL 5): the L4 header follows at a fixed offset.
const L4_OFF: usize = IP_OFF + 20;
const L4_SPORT: usize = L4_OFF;
const L4_DPORT: usize = L4_OFF + 2;
const TCP_FLAGS: usize = L4_OFF + 13;
const TCP_CSUM: usize = L4_OFF + 16;
const UDP_CSUM: usize = L4_OFF + 6;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

// bpf_l4_csum_replace flags (linux/bpf.h): the field is part of the pseudo header (addresses);
// a zero UDP checksum means "none" and must stay zero.
const BPF_F_PSEUDO_HDR: u64 = 1 << 4;
const BPF_F_MARK_MANGLED_0: u64 = 1 << 5;
const AF_INET: u8 = 2;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;
const BPF_FIB_LKUP_RET_NO_NEIGH: i64 = 7;

/// Affinity identifies a per-packet client by its address; the top bit keeps these keys apart
/// from the socket programs' network-namespace cookies (small counters).
pub(crate) const CLIENT_ADDR_TAG: u64 = 1 << 63;

#[classifier]
pub fn skiff_nodeport(ctx: TcContext) -> i32 {
    match nodeport(&ctx) {
        Ok(action) => action,
        Err(_) => TC_ACT_OK,
    }
}

#[inline(always)]
fn nodeport(ctx: &TcContext) -> Result<i32, i64> {
    if u16::from_be(ctx.load::<u16>(12)?) != ETH_P_IP || ctx.load::<u8>(IP_OFF)? != 0x45 {
        return Ok(TC_ACT_OK);
    }
    if u16::from_be(ctx.load::<u16>(IP_FRAG)?) & 0x3fff != 0 {
        return Ok(TC_ACT_OK); // a fragment: no ports to look at
    }
    let proto = ctx.load::<u8>(IP_PROTO)?;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Ok(TC_ACT_OK);
    }
    let key = CtKey {
        saddr: ctx.load::<u32>(IP_SADDR)?,
        daddr: ctx.load::<u32>(IP_DADDR)?,
        sport: ctx.load::<u16>(L4_SPORT)?,
        dport: ctx.load::<u16>(L4_DPORT)?,
        proto,
        pad: [0; 3],
    };
    // A TCP SYN starts a new connection even if an old one used the same tuple: choose again.
    let new_tcp = proto == PROTO_TCP && ctx.load::<u8>(TCP_FLAGS)? & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if !new_tcp && let Some(v) = unsafe { CT.get(&key) } {
        let v = *v;
        count_packet(ctx.len() as u64, v.service_id);
        rewrite(ctx, &key, &v)?;
        return Ok(forward(ctx, &v, proto));
    }
    let Some(svc) = (unsafe { SERVICES.get(ServiceKey { addr: key.daddr, port: key.dport, proto, pad: 0 }) }) else {
        return Ok(TC_ACT_OK);
    };
    let id = svc.id;
    if svc.backend_count == 0 {
        bump_counter(id, true);
        return Ok(TC_ACT_SHOT);
    }
    let Some(backend) = choose_backend(svc, CLIENT_ADDR_TAG | key.saddr as u64) else {
        bump_counter(id, true);
        return Ok(TC_ACT_SHOT);
    };
    bump_counter(id, false);
    let (saddr, sport) = if svc.flags & flags::EXTERNAL_LOCAL != 0 {
        (key.saddr, key.sport)
    } else {
        (key.daddr, snat_port(ctx.as_ptr(), &key, &backend))
    };
    let request = CtValue { saddr, daddr: backend.addr, sport, dport: backend.port, service_id: id };
    let reply_key = CtKey { saddr: backend.addr, daddr: saddr, sport: backend.port, dport: sport, proto, pad: [0; 3] };
    let reply = CtValue { saddr: key.daddr, daddr: key.saddr, sport: key.dport, dport: key.sport, service_id: id };
    // The reply entry first: a request entry without it would strand the backend's answer.
    CT.insert(&reply_key, &reply, 0)?;
    CT.insert(&key, &request, 0)?;
    count_packet(ctx.len() as u64, id);
    rewrite(ctx, &key, &request)?;
    Ok(forward(ctx, &request, proto))
}

/// The source port on the node's address for a new connection to `backend` (SNAT).
///
/// The client's own port first, as netfilter's NAT and Cilium's do: then one client connection
/// is one tuple toward the backend, and a client that reuses its port reuses that tuple with its
/// own increasing sequence numbers and timestamps, which is what makes the backend's TIME_WAIT
/// socket of the previous connection accept the new SYN. A random port instead lands on TIME_WAIT
/// sockets of unrelated connections: Linux gives every connection its own timestamp offset and
/// initial sequence number, so about half of those SYNs are refused (PAWS) and wait for a 1-s
/// retransmission (measured: TCP through the SNAT fell to 0.01× direct under churn).
///
/// The client's port is not kept when a tracked connection of another client holds that tuple,
/// or when a socket of the node itself uses it (its packets must not be captured as replies);
/// then a random port above the node's ephemeral range, a few tries for one no tracked connection
/// uses (the last one is taken regardless, at worst stealing an entry).
#[inline(always)]
pub(crate) fn snat_port(ctx: *mut c_void, key: &CtKey, backend: &skiff_dataplane_common::Backend) -> u16 {
    let mut reply =
        CtKey { saddr: backend.addr, daddr: key.daddr, sport: backend.port, dport: key.sport, proto: key.proto, pad: [0; 3] };
    let kept = match unsafe { CT.get(&reply) } {
        None => true,
        // The same client connection tuple again (a reused port): it owns this tuple.
        Some(v) => v.daddr == key.saddr && v.dport == key.sport,
    };
    if kept && !node_socket_uses(ctx, &reply) {
        return key.sport;
    }
    for _ in 0..4 {
        reply.dport = (SNAT_PORT_MIN + (unsafe { bpf_get_prandom_u32() } % SNAT_PORT_COUNT as u32) as u16).to_be();
        if unsafe { CT.get(&reply) }.is_none() {
            break;
        }
    }
    reply.dport
}

/// Whether a socket of this network namespace would receive packets of `tuple` (as seen arriving:
/// source = the backend, destination = the node's address and port): a connection of the node
/// itself, or a listener or UDP socket bound to that port.
#[inline(always)]
fn node_socket_uses(ctx: *mut c_void, tuple: &CtKey) -> bool {
    let mut t: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    t.__bindgen_anon_1.ipv4 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
        saddr: tuple.saddr,
        daddr: tuple.daddr,
        sport: tuple.sport,
        dport: tuple.dport,
    };
    let size = core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>() as u32;
    let netns = BPF_F_CURRENT_NETNS as u64;
    let sk = unsafe {
        if tuple.proto == PROTO_TCP {
            bpf_skc_lookup_tcp(ctx, &mut t, size, netns, 0)
        } else {
            bpf_sk_lookup_udp(ctx, &mut t, size, netns, 0)
        }
    };
    if sk.is_null() {
        return false;
    }
    unsafe { bpf_sk_release(sk as *mut c_void) };
    true
}

/// Rewrites addresses and ports from `key` to `to`, fixing the IP and L4 checksums.
#[inline(always)]
fn rewrite(ctx: &TcContext, key: &CtKey, to: &CtValue) -> Result<(), i64> {
    let (l4_csum, mangled) = if key.proto == PROTO_TCP { (TCP_CSUM, 0) } else { (UDP_CSUM, BPF_F_MARK_MANGLED_0) };
    if key.saddr != to.saddr {
        ctx.l4_csum_replace(l4_csum, key.saddr as u64, to.saddr as u64, BPF_F_PSEUDO_HDR | mangled | 4)?;
        ctx.l3_csum_replace(IP_CSUM, key.saddr as u64, to.saddr as u64, 4)?;
        ctx.store(IP_SADDR, &to.saddr, 0)?;
    }
    if key.daddr != to.daddr {
        ctx.l4_csum_replace(l4_csum, key.daddr as u64, to.daddr as u64, BPF_F_PSEUDO_HDR | mangled | 4)?;
        ctx.l3_csum_replace(IP_CSUM, key.daddr as u64, to.daddr as u64, 4)?;
        ctx.store(IP_DADDR, &to.daddr, 0)?;
    }
    if key.sport != to.sport {
        ctx.l4_csum_replace(l4_csum, key.sport as u64, to.sport as u64, mangled | 2)?;
        ctx.store(L4_SPORT, &to.sport, 0)?;
    }
    if key.dport != to.dport {
        ctx.l4_csum_replace(l4_csum, key.dport as u64, to.dport as u64, mangled | 2)?;
        ctx.store(L4_DPORT, &to.dport, 0)?;
    }
    Ok(())
}

/// Sends the rewritten packet out of the interface the routing table chooses for it.
#[inline(always)]
fn forward(ctx: &TcContext, to: &CtValue, proto: u8) -> i32 {
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.l4_protocol = proto;
    p.sport = to.sport;
    p.dport = to.dport;
    p.__bindgen_anon_1.tot_len = u16::from_be(ctx.load::<u16>(IP_TOT_LEN).unwrap_or(0));
    p.__bindgen_anon_3.ipv4_src = to.saddr;
    p.__bindgen_anon_4.ipv4_dst = to.daddr;
    p.ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    let rc =
        unsafe { bpf_fib_lookup(ctx.as_ptr(), &mut p as *mut FibParams, core::mem::size_of::<FibParams>() as i32, 0) };
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => {
            if ctx.store(0, &p.dmac, 0).is_err() || ctx.store(6, &p.smac, 0).is_err() {
                return TC_ACT_SHOT;
            }
            unsafe { bpf_redirect(p.ifindex, 0) as i32 }
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => unsafe { bpf_redirect_neigh(p.ifindex, core::ptr::null_mut(), 0, 0) as i32 },
        // No route, or forwarding disabled: let the stack decide (it may drop the packet).
        _ => TC_ACT_OK,
    }
}
