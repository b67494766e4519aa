//! `#[repr(C)]` key and value types of the BPF maps: the contract between the eBPF programs in
//! `dataplane-ebpf/programs` and the agent (`skiff-agent`'s `dataplane` module).
//!
//! # Layout (Cilium-style, two levels)
//!
//! ```text
//! SKIFF_SVC_V2   ServiceKey {vip, port, proto}      -> ServiceValue {id, backend_count, flags, rev,
//!                                                      affinity_timeout}
//! SKIFF_BE_V1    BackendKey {service id, slot}      -> Backend {addr, port}
//! SKIFF_RNAT_V1  RevNatKey {socket cookie, backend} -> RevNatValue {vip, port}
//! SKIFF_CNT_V1   service id (array index)           -> ServiceCounters, per CPU
//! SKIFF_AFF_V1   AffinityKey {netns cookie, id}     -> AffinityValue {backend, slot, last used}
//! SKIFF_CT4_V1   CtKey {packet's 5-tuple}           -> CtValue {rewritten 4-tuple, service id}
//! SKIFF_PKT_V1   service id (array index)           -> PacketCounters, per CPU
//! ```
//!
//! The first five serve the socket programs (ClusterIP, and NodePorts reached from the node
//! itself). `SKIFF_CT4_V1` serves the per-packet NodePort program at tc ingress: traffic from
//! other machines never passes a socket hook here, so it is translated packet by packet.
//!
//! A connection to a service picks `slot = bpf_get_prandom_u32() % backend_count` and rewrites the
//! destination to `SKIFF_BE_V1[{id, slot}]`. Slots are dense (`0..backend_count`), so the agent
//! removes a backend by moving the last one into its slot, then lowering the count, then deleting
//! the last slot: at no moment can a program pick a removed backend once its slot is overwritten,
//! and a program that read the old count just before may find the last slot missing — it then
//! falls back to slot 0 (see the program).
//!
//! # Byte order
//!
//! Addresses and ports are stored exactly as the kernel hands them to cgroup sock_addr programs in
//! `struct bpf_sock_addr`: `user_ip4` is the IPv4 address in network byte order (the four octets in
//! memory order), `user_port` holds the port in network byte order in its low 16 bits. Use the
//! constructors here (`ipv4_to_map`, `port_to_map`) on the agent side so both sides agree.
//!
//! # Versioning
//!
//! Map names end in `_V<n>`. Maps are pinned by name under the agent's bpffs directory
//! (`/sys/fs/bpf/skiff/` by default) so that an agent restart reuses them. A change of any layout
//! here must bump that map's version (new name): an old pinned map with the old layout is then left
//! alone (and can be removed after migration) instead of being misread. Names stay within 15
//! bytes, the kernel's `BPF_OBJ_NAME_LEN - 1`.
#![cfg_attr(not(test), no_std)]

/// Name of the service map ([`ServiceKey`] → [`ServiceValue`]), `BPF_MAP_TYPE_HASH`.
pub const MAP_SERVICES: &str = "SKIFF_SVC_V2";
/// Name of the backend slot map ([`BackendKey`] → [`Backend`]), `BPF_MAP_TYPE_HASH`.
pub const MAP_BACKENDS: &str = "SKIFF_BE_V1";
/// Name of the reverse-translation map ([`RevNatKey`] → [`RevNatValue`]), `BPF_MAP_TYPE_LRU_HASH`.
pub const MAP_REVNAT: &str = "SKIFF_RNAT_V1";

/// Name of the ClientIP session-affinity map ([`AffinityKey`] → [`AffinityValue`]),
/// `BPF_MAP_TYPE_LRU_HASH`.
pub const MAP_AFFINITY: &str = "SKIFF_AFF_V1";

/// Name of the NodePort connection-tracking map ([`CtKey`] → [`CtValue`]), `BPF_MAP_TYPE_LRU_HASH`.
pub const MAP_CT: &str = "SKIFF_CT4_V1";

/// Capacity of [`MAP_CT`]: two entries (request and reply direction) per tracked connection. An
/// LRU map: entries of finished connections are not deleted, they age out.
pub const MAX_CT: u32 = 262_144;

/// The source ports the NodePort program falls back to when it rewrites a connection's source to
/// the node's address (`externalTrafficPolicy: Cluster`) and cannot keep the client's own port
/// (another client's tracked connection, or a socket of the node, holds that tuple): above
/// Linux's default ephemeral range (32768–60999), so they do not collide with the node's own
/// outgoing connections.
pub const SNAT_PORT_MIN: u16 = 61_000;
/// See [`SNAT_PORT_MIN`].
pub const SNAT_PORT_COUNT: u16 = 4_536;

/// Name of the per-service packet counters of the per-packet path ([`PacketCounters`] indexed by
/// [`ServiceValue::id`]), `BPF_MAP_TYPE_PERCPU_ARRAY`.
pub const MAP_PACKETS: &str = "SKIFF_PKT_V1";

/// Name of the per-service counters ([`ServiceCounters`] indexed by [`ServiceValue::id`]),
/// `BPF_MAP_TYPE_PERCPU_ARRAY`: one copy per CPU, so counting needs no atomic operation.
pub const MAP_COUNTERS: &str = "SKIFF_CNT_V1";

/// Capacity of [`MAP_SERVICES`]: one entry per (ClusterIP, port, protocol).
pub const MAX_SERVICES: u32 = 65_536;
/// Service ids are `1..MAX_SERVICES`, so that they index [`MAP_COUNTERS`] directly.
pub const MAX_SERVICE_ID: u32 = MAX_SERVICES - 1;
/// Capacity of [`MAP_BACKENDS`]: the sum of all services' backend counts.
pub const MAX_BACKEND_SLOTS: u32 = 262_144;
/// Capacity of [`MAP_REVNAT`]. A connected socket's entry is deleted when the socket is released
/// (`skiff_sock_release`, a cgroup sock program: sock_addr programs have no close hook); the
/// per-destination entries of unconnected UDP sockets age out of the LRU as new ones are made.
/// Socket cookies are never reused within a boot, so a stale entry cannot match a new socket.
pub const MAX_REVNAT: u32 = 262_144;

/// IP protocol numbers as they appear in `bpf_sock_addr.protocol`.
pub const PROTO_TCP: u8 = 6;
/// See [`PROTO_TCP`].
pub const PROTO_UDP: u8 = 17;

/// Errno the programs make `connect()`/`sendmsg()` fail with for a service without backends.
///
/// A cgroup sock_addr program can only *allow* (return 1) or *reject* (return 0); a plain reject
/// makes the syscall fail with `EPERM`. Since Linux 5.18 the `bpf_set_retval()` helper lets the
/// program choose the error instead: the kernel's `bpf_prog_run_array_cg()` keeps a retval that is
/// already an error when the program returns 0, so `bpf_set_retval(-ECONNREFUSED); return 0;`
/// makes `connect()` fail at once with `ECONNREFUSED`, exactly like a closed port — no packet is
/// sent and nothing waits for a timeout. (Redirecting to a loopback port nobody listens on would
/// give the same errno but depends on that port staying unused; Cilium likewise uses
/// `bpf_set_retval` where the kernel has it.)
pub const ECONNREFUSED: i32 = 111;

/// Capacity of [`MAP_AFFINITY`]: one entry per (client, service) pair that used an affinity
/// service recently. An LRU map, so the oldest pairs make room (their clients then simply get a
/// fresh random backend, as after a timeout).
pub const MAX_AFFINITY: u32 = 65_536;

/// Service flag bits ([`ServiceValue::flags`]).
pub mod flags {
    /// `sessionAffinity: ClientIP`: a client keeps its backend while it keeps connecting within
    /// [`super::ServiceValue::affinity_timeout`] seconds of its last connection.
    pub const AFFINITY_CLIENT_IP: u32 = 1;
    /// `externalTrafficPolicy: Local` (a NodePort frontend): the per-packet program keeps the
    /// client's source address (no SNAT); the agent programs only this node's endpoints.
    pub const EXTERNAL_LOCAL: u32 = 2;
}

/// Key of [`MAP_SERVICES`]: a frontend a client connects to (ClusterIP, externalIP, or node
/// address for NodePorts reached from the node itself).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// IPv4 address, network byte order (as `bpf_sock_addr.user_ip4`).
    pub addr: u32,
    /// Port, network byte order (the low 16 bits of `bpf_sock_addr.user_port`).
    pub port: u16,
    /// IP protocol ([`PROTO_TCP`], [`PROTO_UDP`]), from `bpf_sock_addr.protocol`.
    pub proto: u8,
    /// Always 0: keys are compared as bytes by the kernel, padding must be deterministic.
    pub pad: u8,
}

/// Value of [`MAP_SERVICES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    /// The agent-assigned service id in `1..=MAX_SERVICE_ID`: the first half of [`BackendKey`] and
    /// the index into [`MAP_COUNTERS`].
    pub id: u32,
    /// Number of backend slots `0..backend_count` in [`MAP_BACKENDS`]. 0 means the service exists
    /// but has no ready endpoint: the programs refuse with [`ECONNREFUSED`] at once.
    pub backend_count: u32,
    /// [`flags`] bits.
    pub flags: u32,
    /// Incremented by the agent on every change of this service; for debugging and metrics.
    pub rev: u32,
    /// With [`flags::AFFINITY_CLIENT_IP`]: `sessionAffinityConfig.clientIP.timeoutSeconds`.
    pub affinity_timeout: u32,
    /// Always 0.
    pub pad: u32,
}

/// Key of [`MAP_BACKENDS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BackendKey {
    /// [`ServiceValue::id`].
    pub service_id: u32,
    /// Slot in `0..backend_count`.
    pub slot: u32,
}

/// Value of [`MAP_BACKENDS`]: where a connection is sent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Backend {
    /// IPv4 address, network byte order.
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    /// Always 0.
    pub pad: u16,
}

/// Key of [`MAP_REVNAT`]: one translated (socket, backend) pair.
///
/// Keyed by backend as well as by socket (as Cilium's `cilium_lb4_reverse_sk`) because an
/// unconnected UDP socket can talk to several backends: `recvmsg4` and `getpeername4` see the
/// backend's address and look up which service address to show instead.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RevNatKey {
    /// `bpf_get_socket_cookie()` of the client socket.
    pub cookie: u64,
    /// Backend IPv4 address, network byte order.
    pub addr: u32,
    /// Backend port, network byte order.
    pub port: u16,
    /// Always 0.
    pub pad: u16,
}

/// Value of [`MAP_REVNAT`]: the service address the application asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RevNatValue {
    /// Service IPv4 address, network byte order.
    pub addr: u32,
    /// Service port, network byte order.
    pub port: u16,
    /// Always 0.
    pub pad: u16,
}

/// Key of [`MAP_AFFINITY`]: a client of a service.
///
/// The client is its network namespace (`bpf_get_netns_cookie()`), as in Cilium's socket-level
/// load balancer: at `connect()` time the socket usually has no source address yet, and in
/// Kubernetes one network namespace is one pod, i.e. one client IP. Processes of the host share
/// the host's namespace, as they share its address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// `bpf_get_netns_cookie()` of the client socket's namespace.
    pub netns_cookie: u64,
    /// [`ServiceValue::id`].
    pub service_id: u32,
    /// Always 0.
    pub pad: u32,
}

/// Value of [`MAP_AFFINITY`]: the backend a client last got, and when.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityValue {
    /// The backend chosen for this client.
    pub backend: Backend,
    /// Its slot when chosen. The program reuses the backend only while that slot still holds it:
    /// a removed backend is never reused, at the price that a backend moved into a freed slot
    /// loses its clients' affinity once.
    pub slot: u32,
    /// Always 0.
    pub pad: u32,
    /// `bpf_ktime_get_ns()` of the client's last connection (the timeout runs from there, like
    /// the `recent` match of kube-proxy's iptables mode).
    pub last_used_ns: u64,
}

/// Key of [`MAP_CT`]: an IPv4 packet's addresses, ports and protocol, as it arrives.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    /// Source address, network byte order.
    pub saddr: u32,
    /// Destination address, network byte order.
    pub daddr: u32,
    /// Source port, network byte order.
    pub sport: u16,
    /// Destination port, network byte order.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// Always 0.
    pub pad: [u8; 3],
}

/// Value of [`MAP_CT`]: what a packet matching the key is rewritten to, before it is forwarded.
///
/// A NodePort connection has two entries: the request direction (client → node:nodePort becomes
/// node-or-client → backend) and the reply direction (backend → node-or-client becomes
/// node:nodePort → client). Both are written when the first packet is translated.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    /// New source address, network byte order.
    pub saddr: u32,
    /// New destination address, network byte order.
    pub daddr: u32,
    /// New source port, network byte order.
    pub sport: u16,
    /// New destination port, network byte order.
    pub dport: u16,
    /// The service ([`ServiceValue::id`]), for counters.
    pub service_id: u32,
}

/// Value of [`MAP_COUNTERS`], per CPU; the agent sums the CPUs' copies. The socket programs
/// translate once per connection and see no packets, so they count connections (and UDP
/// messages sent with `sendto`); packet and byte counters belong to the per-packet (tc/XDP) path.
/// The agent zeroes an entry when it hands out its service id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceCounters {
    /// Connections (TCP, connected UDP) and unconnected UDP sends translated to a backend.
    pub translated: u64,
    /// Attempts refused because the service had no backend.
    pub refused: u64,
}

/// Value of [`MAP_PACKETS`], per CPU: packets and bytes (whole frames) the NodePort program
/// translated for a service, both directions. The agent zeroes an entry with its service id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketCounters {
    pub packets: u64,
    pub bytes: u64,
}

/// An IPv4 address's octets as stored in the maps (network byte order in memory).
#[inline]
pub const fn ipv4_to_map(octets: [u8; 4]) -> u32 {
    u32::from_ne_bytes(octets)
}

/// The inverse of [`ipv4_to_map`].
#[inline]
pub const fn ipv4_from_map(addr: u32) -> [u8; 4] {
    addr.to_ne_bytes()
}

/// A host-order port as stored in the maps (network byte order).
#[inline]
pub const fn port_to_map(port: u16) -> u16 {
    port.to_be()
}

/// The inverse of [`port_to_map`].
#[inline]
pub const fn port_from_map(port: u16) -> u16 {
    u16::from_be(port)
}

impl ServiceKey {
    /// A key from an address's octets, a host-order port and a protocol.
    pub const fn new(octets: [u8; 4], port: u16, proto: u8) -> Self {
        Self { addr: ipv4_to_map(octets), port: port_to_map(port), proto, pad: 0 }
    }
}

impl Backend {
    /// A backend from an address's octets and a host-order port.
    pub const fn new(octets: [u8; 4], port: u16) -> Self {
        Self { addr: ipv4_to_map(octets), port: port_to_map(port), pad: 0 }
    }
}

// With the `user` feature (the agent), the types are `aya::Pod` so aya's typed maps accept them.
#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are `#[repr(C)]`, `Copy`, made only of integers, and have no implicit padding
    // (explicit `pad` fields; sizes asserted below).
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for BackendKey {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for RevNatKey {}
    unsafe impl aya::Pod for RevNatValue {}
    unsafe impl aya::Pod for ServiceCounters {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtValue {}
    unsafe impl aya::Pod for PacketCounters {}
}

// The layouts are part of the contract: catch accidental changes at compile time.
const _: () = {
    assert!(core::mem::size_of::<ServiceKey>() == 8);
    assert!(core::mem::size_of::<ServiceValue>() == 24);
    assert!(core::mem::size_of::<AffinityKey>() == 16);
    assert!(core::mem::size_of::<AffinityValue>() == 24);
    assert!(core::mem::size_of::<BackendKey>() == 8);
    assert!(core::mem::size_of::<Backend>() == 8);
    assert!(core::mem::size_of::<RevNatKey>() == 16);
    assert!(core::mem::size_of::<RevNatValue>() == 8);
    assert!(core::mem::size_of::<ServiceCounters>() == 16);
    assert!(MAP_SERVICES.len() < 16 && MAP_BACKENDS.len() < 16 && MAP_REVNAT.len() < 16 && MAP_COUNTERS.len() < 16);
    assert!(MAP_AFFINITY.len() < 16 && MAP_CT.len() < 16 && MAP_PACKETS.len() < 16);
    assert!(core::mem::size_of::<PacketCounters>() == 16);
    assert!(core::mem::size_of::<CtKey>() == 16);
    assert!(core::mem::size_of::<CtValue>() == 16);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_order_matches_the_kernel() {
        // 10.96.0.1 is the bytes 0a 60 00 01 in memory; port 80 is 00 50.
        let k = ServiceKey::new([10, 96, 0, 1], 80, PROTO_TCP);
        assert_eq!(k.addr.to_ne_bytes(), [10, 96, 0, 1]);
        assert_eq!(k.port.to_ne_bytes(), [0, 80]);
        assert_eq!(ipv4_from_map(k.addr), [10, 96, 0, 1]);
        assert_eq!(port_from_map(k.port), 80);
    }
}
