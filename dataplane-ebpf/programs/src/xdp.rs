//! NodePort at XDP (`skiff_nodeport_xdp`), where the driver allows: the hairpin case only.
//!
//! The common NodePort path on a multi-node cluster is a packet that arrives on the node's
//! interface and must leave through the same interface: a request for a backend on another node
//! (SNATed to this node), or that backend's reply on its way back to the client. XDP can rewrite
//! and bounce such a packet (`XDP_TX`) before the kernel allocates an skb for it. Everything else
//! — a local backend behind the pod bridge, a next hop whose MAC is not yet resolved, anything
//! unusual — is passed up untouched (`XDP_PASS`) to the tc program (`skiff_nodeport`), which owns
//! the full semantics. Both programs share the service, backend, affinity and connection-tracking
//! maps, so whichever translates a flow's first packet, the other continues it.
//!
//! No connection-tracking entry is written unless the packet is actually transmitted here, so a
//! flow passed to tc is chosen (and recorded) there exactly once.

use crate::nodeport::{CLIENT_ADDR_TAG, CT, count_packet, snat_port};
use crate::{SERVICES, bump_counter, choose_backend};
use aya_ebpf::{
    EbpfContext,
    bindings::{bpf_fib_lookup as FibParams, xdp_action},
    helpers::generated::bpf_fib_lookup,
    macros::xdp,
    programs::XdpContext,
};
use skiff_dataplane_common::{CtKey, CtValue, PROTO_TCP, PROTO_UDP, ServiceKey, flags};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const L4_OFF: usize = ETH_HLEN + 20;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const AF_INET: u8 = 2;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;

/// A pointer to `T` at `offset` into the packet, if the packet is long enough (the verifier
/// insists on this check before every direct access).
#[inline(always)]
fn at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    if start + offset + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *mut T)
}

#[xdp]
pub fn skiff_nodeport_xdp(ctx: XdpContext) -> u32 {
    hairpin(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

#[inline(always)]
fn hairpin(ctx: &XdpContext) -> Option<u32> {
    let pass = Some(xdp_action::XDP_PASS);
    let eth_proto = unsafe { *at::<u16>(ctx, 12)? };
    let ver_ihl = unsafe { *at::<u8>(ctx, ETH_HLEN)? };
    if u16::from_be(eth_proto) != ETH_P_IP || ver_ihl != 0x45 {
        return pass;
    }
    if u16::from_be(unsafe { *at::<u16>(ctx, ETH_HLEN + 6)? }) & 0x3fff != 0 {
        return pass;
    }
    let proto = unsafe { *at::<u8>(ctx, ETH_HLEN + 9)? };
    let csum_off = match proto {
        PROTO_TCP => L4_OFF + 16,
        PROTO_UDP => L4_OFF + 6,
        _ => return pass,
    };
    let l4_csum = at::<u16>(ctx, csum_off)?;
    let saddr_p = at::<u32>(ctx, ETH_HLEN + 12)?;
    let daddr_p = at::<u32>(ctx, ETH_HLEN + 16)?;
    let sport_p = at::<u16>(ctx, L4_OFF)?;
    let dport_p = at::<u16>(ctx, L4_OFF + 2)?;
    let key = unsafe { CtKey { saddr: *saddr_p, daddr: *daddr_p, sport: *sport_p, dport: *dport_p, proto, pad: [0; 3] } };
    let new_tcp = proto == PROTO_TCP && unsafe { *at::<u8>(ctx, L4_OFF + 13)? } & (TCP_SYN | TCP_ACK) == TCP_SYN;

    // The translation: an existing flow's, or a new one (recorded only if sent from here).
    let mut fresh = None;
    let to = match if new_tcp { None } else { unsafe { CT.get(&key) } } {
        Some(v) => *v,
        None => {
            let svc = unsafe { SERVICES.get(ServiceKey { addr: key.daddr, port: key.dport, proto, pad: 0 }) }?;
            // A local-only service has its backends behind the pod bridge: tc's job.
            if svc.backend_count == 0 || svc.flags & flags::EXTERNAL_LOCAL != 0 {
                return pass;
            }
            let backend = choose_backend(svc, CLIENT_ADDR_TAG | key.saddr as u64)?;
            let sport = snat_port(ctx.as_ptr(), &key, &backend);
            let request =
                CtValue { saddr: key.daddr, daddr: backend.addr, sport, dport: backend.port, service_id: svc.id };
            let reply_key =
                CtKey { saddr: backend.addr, daddr: key.daddr, sport: backend.port, dport: sport, proto, pad: [0; 3] };
            let reply =
                CtValue { saddr: key.daddr, daddr: key.saddr, sport: key.dport, dport: key.sport, service_id: svc.id };
            fresh = Some((svc.id, reply_key, reply, request));
            request
        }
    };

    // Only a packet that leaves through the interface it came in on is handled here.
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.l4_protocol = proto;
    p.sport = to.sport;
    p.dport = to.dport;
    p.__bindgen_anon_3.ipv4_src = to.saddr;
    p.__bindgen_anon_4.ipv4_dst = to.daddr;
    let ifindex = ctx.ingress_ifindex() as u32;
    p.ifindex = ifindex;
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), &mut p, core::mem::size_of::<FibParams>() as i32, 0) };
    if rc != BPF_FIB_LKUP_RET_SUCCESS || p.ifindex != ifindex {
        return pass;
    }
    if let Some((id, reply_key, reply, request)) = fresh {
        CT.insert(&reply_key, &reply, 0).ok()?;
        CT.insert(&key, &request, 0).ok()?;
        bump_counter(id, false);
    }
    count_packet((ctx.data_end() - ctx.data()) as u64, to.service_id);

    // Rewrite in place, updating the checksums incrementally (RFC 1624): the IP header's covers
    // the addresses; the L4 one covers the addresses (pseudo header) and the ports. A zero UDP
    // checksum means "none" and stays zero.
    let ip_csum = at::<u16>(ctx, ETH_HLEN + 10)?;
    unsafe {
        let old = [key.saddr, key.daddr];
        let new = [to.saddr, to.daddr];
        *ip_csum = csum_update(*ip_csum, &old, &new, 0, 0);
        if !(proto == PROTO_UDP && *l4_csum == 0) {
            let c = csum_update(
                *l4_csum,
                &old,
                &new,
                (key.sport as u32) | ((key.dport as u32) << 16),
                (to.sport as u32) | ((to.dport as u32) << 16),
            );
            *l4_csum = if proto == PROTO_UDP && c == 0 { 0xffff } else { c };
        }
        *saddr_p = to.saddr;
        *daddr_p = to.daddr;
        *sport_p = to.sport;
        *dport_p = to.dport;
    }
    let dst = at::<[u8; 6]>(ctx, 0)?;
    let src = at::<[u8; 6]>(ctx, 6)?;
    unsafe {
        *dst = p.dmac;
        *src = p.smac;
    }
    Some(xdp_action::XDP_TX)
}

/// One's-complement checksum `csum` (as stored) after replacing the 32-bit words `old` with
/// `new` and the 32-bit word `old_ports` with `new_ports` (all as stored in the packet):
/// HC' = ~(~HC + ~m + m'). The sum is byte-order independent as long as every word is read the
/// same way.
#[inline(always)]
fn csum_update(csum: u16, old: &[u32; 2], new: &[u32; 2], old_ports: u32, new_ports: u32) -> u16 {
    let mut sum: u64 = (!csum) as u64;
    for w in [old[0], old[1], old_ports] {
        sum += (!(w as u16)) as u64 + (!((w >> 16) as u16)) as u64;
    }
    for w in [new[0], new[1], new_ports] {
        sum += (w as u16) as u64 + ((w >> 16) as u16) as u64;
    }
    // At most 13 words of 16 bits: below 2^20, so three folds always reach 16 bits (a fixed
    // count: the verifier rejects a data-dependent loop here).
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
