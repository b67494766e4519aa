//! Skiff's eBPF programs: socket-level load balancing for ClusterIP services.
//!
//! Attached to a cgroup v2 (the root cgroup on a node; a cgroup of their own in tests), these
//! run inside the `connect()`, `sendmsg()`, `recvmsg()` and `getpeername()` syscalls of every
//! process in that cgroup:
//!
//! - `skiff_connect4` (`cgroup/connect4`): a connect to a service address is rewritten to a
//!   random backend, once per connection — no per-packet NAT and no conntrack entry. A service
//!   without backends makes `connect()` fail at once with `ECONNREFUSED`. With
//!   `sessionAffinity: ClientIP` a client (its network namespace) keeps its backend until it
//!   has not connected for the affinity timeout, or the backend is removed.
//! - `skiff_sendmsg4` (`cgroup/sendmsg4`): the same for unconnected UDP `sendto()`/`sendmsg()`.
//! - `skiff_recvmsg4` (`cgroup/recvmsg4`): a UDP reply from a backend appears to come from the
//!   service address.
//! - `skiff_getpeername4` (`cgroup/getpeername4`): `getpeername()` returns the service address.
//!
//! The map types and their semantics are in `skiff-dataplane-common`.
#![no_std]
#![no_main]

mod nodeport;
mod xdp;

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns,
        generated::{bpf_get_netns_cookie, bpf_set_retval},
    },
    macros::{cgroup_sock, cgroup_sock_addr, map},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::{SockAddrContext, SockContext},
};
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};
use skiff_dataplane_common::{
    AffinityKey, AffinityValue, Backend, BackendKey, ECONNREFUSED, MAX_AFFINITY, MAX_BACKEND_SLOTS, MAX_REVNAT,
    MAX_SERVICES, PROTO_UDP, RevNatKey, RevNatValue, ServiceCounters, ServiceKey, ServiceValue, flags,
};

/// Return value of a cgroup sock_addr program that lets the syscall go on.
const SYS_PROCEED: i32 = 1;
/// Return value that makes the syscall fail (with `EPERM`, or the errno set by `bpf_set_retval`).
const SYS_REJECT: i32 = 0;

// Pinned by name: the loader (`EbpfLoader::default_map_pin_directory`) reuses a map already pinned under the
// agent's bpffs directory, so a restarted agent shares the live maps instead of emptying them.
#[map(name = "SKIFF_SVC_V2")]
pub(crate) static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(MAX_SERVICES, 0);

#[map(name = "SKIFF_BE_V1")]
static BACKENDS: HashMap<BackendKey, Backend> = HashMap::pinned(MAX_BACKEND_SLOTS, 0);

#[map(name = "SKIFF_RNAT_V1")]
static REVNAT: LruHashMap<RevNatKey, RevNatValue> = LruHashMap::pinned(MAX_REVNAT, 0);

#[map(name = "SKIFF_AFF_V1")]
static AFFINITY: LruHashMap<AffinityKey, AffinityValue> = LruHashMap::pinned(MAX_AFFINITY, 0);

#[map(name = "SKIFF_CNT_V1")]
static COUNTERS: PerCpuArray<ServiceCounters> = PerCpuArray::pinned(MAX_SERVICES, 0);

#[inline(always)]
pub(crate) fn bump_counter(id: u32, refused: bool) {
    if let Some(c) = COUNTERS.get_ptr_mut(id) {
        // Per-CPU memory, so no other CPU writes it. Cgroup programs run with migration (not
        // preemption) disabled, so on a preemptible kernel two programs on one CPU could in
        // principle interleave and lose one increment; the bpfel target has no atomic
        // read-modify-write in `core`, and counters tolerate that.
        unsafe {
            if refused {
                (*c).refused += 1;
            } else {
                (*c).translated += 1;
            }
        }
    }
}

// `bpf_sock_addr` fields must be accessed with 4-byte loads and stores (the verifier rejects
// narrower stores to `user_ip4`/`user_port`), hence the volatile accesses of whole `u32`s.
#[inline(always)]
fn load(field: *const u32) -> u32 {
    unsafe { read_volatile(field) }
}

#[inline(always)]
fn store(field: *mut u32, value: u32) {
    unsafe { write_volatile(field, value) }
}

/// What to do with a syscall's destination.
enum Verdict {
    /// Not a service address: leave it alone.
    Pass,
    /// A service without backends: refuse.
    Refuse,
    /// Rewritten to a backend.
    Translated,
}

/// Looks the destination up and rewrites it to a random backend of the service.
#[inline(always)]
fn translate(ctx: &SockAddrContext) -> Verdict {
    let sa = ctx.sock_addr;
    let (ip_p, port_p, proto_p) =
        unsafe { (addr_of_mut!((*sa).user_ip4), addr_of_mut!((*sa).user_port), addr_of!((*sa).protocol)) };
    let vip = load(ip_p);
    let vport = load(port_p) as u16;
    let proto = load(proto_p) as u8;
    let key = ServiceKey { addr: vip, port: vport, proto, pad: 0 };
    let Some(svc) = (unsafe { SERVICES.get(key) }) else {
        return Verdict::Pass;
    };
    let (id, count) = (svc.id, svc.backend_count);
    if count == 0 {
        bump_counter(id, true);
        return Verdict::Refuse;
    }
    let client =
        if svc.flags & flags::AFFINITY_CLIENT_IP != 0 { unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } } else { 0 };
    let Some(backend) = choose_backend(svc, client) else {
        bump_counter(id, true);
        return Verdict::Refuse;
    };
    bump_counter(id, false);
    // Remember the service address for getpeername4/recvmsg4. A failed insert (map full of
    // entries that cannot be evicted, which an LRU map does not have) only loses the reverse view.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let rkey = RevNatKey { cookie, addr: backend.addr, port: backend.port, pad: 0 };
    let rval = RevNatValue { addr: vip, port: vport, pad: 0 };
    let _ = REVNAT.insert(rkey, rval, 0);
    store(ip_p, backend.addr);
    store(port_p, backend.port as u32);
    Verdict::Translated
}

/// Picks a backend of a service with at least one: random, or the client's previous one under
/// `sessionAffinity: ClientIP` (`client` identifies the client then; see [`AffinityKey`]).
#[inline(always)]
pub(crate) fn choose_backend(svc: &ServiceValue, client: u64) -> Option<Backend> {
    let (id, count, svc_flags, affinity_timeout) = (svc.id, svc.backend_count, svc.flags, svc.affinity_timeout);
    // Checked by the callers too, but the entry is shared memory the agent may change meanwhile:
    // without this the `%` below would carry a division-by-zero panic path.
    if count == 0 {
        return None;
    }
    let affinity = svc_flags & flags::AFFINITY_CLIENT_IP != 0;
    let now = if affinity { unsafe { bpf_ktime_get_ns() } } else { 0 };
    let akey = AffinityKey { netns_cookie: client, service_id: id, pad: 0 };
    let sticky = if affinity { sticky_backend(&akey, now, affinity_timeout) } else { None };
    let (backend, slot) = match sticky {
        Some(chosen) => chosen,
        None => {
            let slot = unsafe { bpf_get_prandom_u32() } % count;
            // The agent shrinks a service by moving the last backend into the freed slot,
            // lowering the count, then deleting the last slot; a reader that saw the old count may
            // find that last slot gone. Slot 0 exists whenever the count is non-zero.
            match unsafe { BACKENDS.get(BackendKey { service_id: id, slot }) } {
                Some(b) => (*b, slot),
                None => (*unsafe { BACKENDS.get(BackendKey { service_id: id, slot: 0 }) }?, 0),
            }
        }
    };
    if affinity {
        // Refreshes the last use (the timeout runs from the client's latest connection). A
        // failed insert only costs the client its affinity.
        let _ = AFFINITY.insert(akey, AffinityValue { backend, slot, pad: 0, last_used_ns: now }, 0);
    }
    Some(backend)
}

/// The backend a client with affinity got last time, if it is recent enough and still in the
/// slot it was chosen from (a removed backend's slot is overwritten or deleted first).
#[inline(always)]
fn sticky_backend(key: &AffinityKey, now: u64, timeout_s: u32) -> Option<(Backend, u32)> {
    let prev = unsafe { AFFINITY.get(key) }?;
    let (backend, slot, last_used) = (prev.backend, prev.slot, prev.last_used_ns);
    if now.wrapping_sub(last_used) > timeout_s as u64 * 1_000_000_000 {
        return None;
    }
    let current = unsafe { BACKENDS.get(BackendKey { service_id: key.service_id, slot }) }?;
    (current.addr == backend.addr && current.port == backend.port).then_some((backend, slot))
}

#[inline(always)]
fn forward(ctx: &SockAddrContext) -> i32 {
    match translate(ctx) {
        Verdict::Pass | Verdict::Translated => SYS_PROCEED,
        Verdict::Refuse => {
            // The syscall fails with ECONNREFUSED instead of the default EPERM (Linux >= 5.18).
            unsafe { bpf_set_retval(-ECONNREFUSED) };
            SYS_REJECT
        }
    }
}

/// Shows the service address instead of the backend's (getpeername, UDP recvmsg).
#[inline(always)]
fn reverse(ctx: &SockAddrContext) {
    let sa = ctx.sock_addr;
    let (ip_p, port_p) = unsafe { (addr_of_mut!((*sa).user_ip4), addr_of_mut!((*sa).user_port)) };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let rkey = RevNatKey { cookie, addr: load(ip_p), port: load(port_p) as u16, pad: 0 };
    if let Some(v) = unsafe { REVNAT.get(rkey) } {
        let (addr, port) = (v.addr, v.port);
        store(ip_p, addr);
        store(port_p, port as u32);
    }
}

#[cgroup_sock_addr(connect4)]
pub fn skiff_connect4(ctx: SockAddrContext) -> i32 {
    forward(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn skiff_sendmsg4(ctx: SockAddrContext) -> i32 {
    // sendmsg4 runs only for UDP (and raw) sockets without a connected destination.
    let proto = load(unsafe { addr_of!((*ctx.sock_addr).protocol) }) as u8;
    if proto != PROTO_UDP {
        return SYS_PROCEED;
    }
    forward(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn skiff_recvmsg4(ctx: SockAddrContext) -> i32 {
    // The kernel requires recvmsg4 and getpeername4 programs to return 1.
    reverse(&ctx);
    SYS_PROCEED
}

#[cgroup_sock_addr(getpeername4)]
pub fn skiff_getpeername4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx);
    SYS_PROCEED
}

/// A socket's reverse-translation entry goes with the socket. Without this the LRU map fills
/// with entries of closed sockets under connection churn and every insert then evicts: the LRU
/// refills its per-CPU free list 128 nodes at a time under a global lock, which showed as a
/// connect p99 ~20 µs above direct once the map was full (and could push out the entries of
/// long-lived sockets still open). The hook runs at the start of `inet_release`, while the socket
/// still has its peer: for a connected socket that is the backend `connect4` chose, so the key is
/// complete. Unconnected UDP sockets' per-destination entries (`sendmsg4`) have no single peer
/// here and are left to the LRU.
#[cgroup_sock(sock_release)]
pub fn skiff_sock_release(ctx: SockContext) -> i32 {
    let sk = ctx.sock;
    // SAFETY: `sk` is the program's context; the verifier allows reading these fields in
    // sock_release (`dst_port` with a 2-byte load, which its `__be16` type makes).
    let (addr, port) = unsafe { (read_volatile(addr_of!((*sk).dst_ip4)), read_volatile(addr_of!((*sk).dst_port))) };
    if addr != 0 {
        let cookie = unsafe { bpf_get_socket_cookie(sk.cast()) };
        // Absent for most sockets (no service was translated for them): nothing to do then.
        let _ = REVNAT.remove(&RevNatKey { cookie, addr, port, pad: 0 });
    }
    SYS_PROCEED
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
