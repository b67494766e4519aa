//! [`ServiceTable`]: the agent's view of the service and backend maps, updated by difference.

use anyhow::{Context, Result, bail};
use aya::maps::{HashMap as BpfHashMap, MapData, MapError, PerCpuArray, PerCpuValues};
use skiff_dataplane_common::{
    Backend, BackendKey, MAX_BACKEND_SLOTS, MAX_SERVICE_ID, MAX_SERVICES, PROTO_TCP, PROTO_UDP, PacketCounters,
    RevNatKey, RevNatValue, ServiceCounters, ServiceKey, ServiceValue, flags, ipv4_from_map, port_from_map,
};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;

/// Transport protocol of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number, as the programs see it in `bpf_sock_addr.protocol`.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        }
    }

    fn from_number(n: u8) -> Option<Self> {
        match n {
            PROTO_TCP => Some(Protocol::Tcp),
            PROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }
}

/// A service frontend: what clients connect to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub proto: Protocol,
}

impl Frontend {
    fn key(&self) -> ServiceKey {
        ServiceKey::new(self.vip.octets(), self.port, self.proto.number())
    }

    fn from_key(k: &ServiceKey) -> Option<Self> {
        Some(Self {
            vip: Ipv4Addr::from(ipv4_from_map(k.addr)),
            port: port_from_map(k.port),
            proto: Protocol::from_number(k.proto)?,
        })
    }
}

/// What one update wrote, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpdateStats {
    /// Backend slots written (inserted or overwritten).
    pub slots_written: usize,
    /// Backend slots deleted.
    pub slots_deleted: usize,
    /// Whether the service entry itself was written or deleted.
    pub service_written: bool,
}

impl UpdateStats {
    /// Whether the update changed nothing in the maps.
    pub fn is_noop(&self) -> bool {
        *self == Self::default()
    }
}

#[derive(Clone, Debug)]
struct ServiceState {
    id: u32,
    rev: u32,
    flags: u32,
    affinity_timeout: u32,
    /// `slots[i]` is what `SKIFF_BE_V1[{id, i}]` holds.
    slots: Vec<Backend>,
}

/// How a frontend treats its clients, besides which backends it has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrontendPolicy {
    /// `sessionAffinity: ClientIP`: its timeout in seconds.
    pub affinity: Option<u32>,
    /// `externalTrafficPolicy: Local` on a NodePort frontend: the per-packet program keeps the
    /// client's address (the backends given must be this node's own).
    pub external_local: bool,
    /// The frontend is reached from outside the cluster (a NodePort on a node address, an
    /// external IP): with `externalTrafficPolicy: Cluster` its connections are source-NATed to
    /// the node, so that a remote backend's replies come back through it. The nftables mode
    /// reads it (every service connection meets its hooks); the eBPF mode needs no flag, its
    /// per-packet program only ever sees external traffic.
    pub external: bool,
}

/// The service and backend maps, with an in-memory copy of their contents so that every change
/// writes only the entries that differ.
///
/// Writes are ordered so that a program running concurrently never picks a backend that is not
/// (or no longer) part of the service once the call returns, and never finds the service pointing
/// at missing slots except the transient "last slot already deleted" case the program handles:
///
/// 1. backend slots `0..new_count` that change are written (added backends first fill the slots
///    of removed ones, then the tail is moved into remaining holes, then new slots are appended);
/// 2. the service entry (with the new count) is written;
/// 3. slots `new_count..old_count` are deleted.
pub struct ServiceTable {
    services: BpfHashMap<MapData, ServiceKey, ServiceValue>,
    backends: BpfHashMap<MapData, BackendKey, Backend>,
    counters: PerCpuArray<MapData, ServiceCounters>,
    packets: PerCpuArray<MapData, PacketCounters>,
    revnat: BpfHashMap<MapData, RevNatKey, RevNatValue>,
    nr_cpus: usize,
    state: HashMap<ServiceKey, ServiceState>,
    used_ids: BTreeSet<u32>,
    next_id: u32,
    total_slots: usize,
}

impl ServiceTable {
    /// Wraps the two maps and reads back what they already hold (pinned maps of a previous agent),
    /// deleting backend slots that no service refers to.
    pub(crate) fn new(
        services: BpfHashMap<MapData, ServiceKey, ServiceValue>,
        backends: BpfHashMap<MapData, BackendKey, Backend>,
        counters: PerCpuArray<MapData, ServiceCounters>,
        packets: PerCpuArray<MapData, PacketCounters>,
        revnat: BpfHashMap<MapData, RevNatKey, RevNatValue>,
    ) -> Result<Self> {
        let nr_cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
        let mut t = Self {
            services,
            backends,
            counters,
            packets,
            revnat,
            nr_cpus,
            state: HashMap::new(),
            used_ids: BTreeSet::new(),
            next_id: 1,
            total_slots: 0,
        };
        t.recover()?;
        Ok(t)
    }

    fn recover(&mut self) -> Result<()> {
        let mut entries = Vec::new();
        for item in self.services.iter() {
            entries.push(item.context("reading the service map")?);
        }
        let mut slots: HashMap<BackendKey, Backend> = HashMap::new();
        for item in self.backends.iter() {
            let (k, v) = item.context("reading the backend map")?;
            slots.insert(k, v);
        }
        let mut referenced = HashSet::new();
        for (key, val) in entries {
            if val.id == 0 || val.id > MAX_SERVICE_ID {
                bail!("service map entry with id {} outside 1..={MAX_SERVICE_ID}: not a SKIFF_SVC_V2 layout", val.id);
            }
            let mut backends = Vec::with_capacity(val.backend_count as usize);
            let mut complete = true;
            for slot in 0..val.backend_count {
                let bk = BackendKey { service_id: val.id, slot };
                match slots.get(&bk) {
                    Some(b) => backends.push(*b),
                    None => complete = false,
                }
            }
            if !complete {
                // An interrupted update: keep the slots that exist, dense, and repair the count.
                for (i, b) in backends.iter().enumerate() {
                    let bk = BackendKey { service_id: val.id, slot: i as u32 };
                    self.backends.insert(bk, b, 0).context("repairing a backend slot")?;
                }
                let repaired = ServiceValue { backend_count: backends.len() as u32, ..val };
                self.services.insert(key, repaired, 0).context("repairing a service entry")?;
            }
            for i in 0..backends.len() {
                referenced.insert(BackendKey { service_id: val.id, slot: i as u32 });
            }
            self.used_ids.insert(val.id);
            self.next_id = self.next_id.max(val.id + 1);
            self.total_slots += backends.len();
            self.state.insert(
                key,
                ServiceState {
                    id: val.id,
                    rev: val.rev,
                    flags: val.flags,
                    affinity_timeout: val.affinity_timeout,
                    slots: backends,
                },
            );
        }
        if self.next_id > MAX_SERVICE_ID {
            self.next_id = 1;
        }
        for k in slots.keys() {
            if !referenced.contains(k) {
                remove_ignoring_missing(&mut self.backends, k)?;
            }
        }
        Ok(())
    }

    /// Number of service frontends in the map.
    pub fn len(&self) -> usize {
        self.state.len()
    }

    /// Entries in the reverse-translation map: one per open socket the programs translated
    /// (the release hook removes a socket's entry when it closes), plus destinations of
    /// unconnected UDP sockets until the LRU drops them.
    pub fn reverse_entries(&self) -> usize {
        self.revnat.keys().filter(|k| k.is_ok()).count()
    }

    /// Whether the table holds no service.
    pub fn is_empty(&self) -> bool {
        self.state.is_empty()
    }

    /// The frontends in the map.
    pub fn frontends(&self) -> Vec<Frontend> {
        let mut v: Vec<Frontend> = self.state.keys().filter_map(Frontend::from_key).collect();
        v.sort();
        v
    }

    /// The backends of a frontend in slot order, or `None` if it is not in the map.
    pub fn backends(&self, vip: Ipv4Addr, port: u16, proto: Protocol) -> Option<Vec<(Ipv4Addr, u16)>> {
        let key = Frontend { vip, port, proto }.key();
        self.state.get(&key).map(|s| s.slots.iter().map(from_backend).collect())
    }

    /// Creates or updates a service frontend with exactly these backends (duplicates ignored).
    /// An empty list keeps the service, which then refuses connections with `ECONNREFUSED`.
    /// `affinity`: `Some(timeout seconds)` for `sessionAffinity: ClientIP`.
    pub fn upsert_service(
        &mut self,
        vip: Ipv4Addr,
        port: u16,
        proto: Protocol,
        backends: &[(Ipv4Addr, u16)],
        affinity: Option<u32>,
    ) -> Result<UpdateStats> {
        self.upsert_frontend(vip, port, proto, backends, FrontendPolicy { affinity, ..Default::default() })
    }

    /// [`Self::upsert_service`] with every per-frontend policy.
    pub fn upsert_frontend(
        &mut self,
        vip: Ipv4Addr,
        port: u16,
        proto: Protocol,
        backends: &[(Ipv4Addr, u16)],
        policy: FrontendPolicy,
    ) -> Result<UpdateStats> {
        let key = Frontend { vip, port, proto }.key();
        let mut seen = HashSet::new();
        let desired: Vec<Backend> =
            backends.iter().map(|(a, p)| Backend::new(a.octets(), *p)).filter(|b| seen.insert(*b)).collect();

        let (mut flags, affinity_timeout) = match policy.affinity {
            Some(t) => (flags::AFFINITY_CLIENT_IP, t),
            None => (0, 0),
        };
        if policy.external_local {
            flags |= flags::EXTERNAL_LOCAL;
        }
        let (id, old_slots, rev, old_policy, is_new) = match self.state.get(&key) {
            Some(s) => (s.id, s.slots.clone(), s.rev, (s.flags, s.affinity_timeout), false),
            None => {
                if self.state.len() as u32 >= MAX_SERVICES {
                    bail!("service map full ({MAX_SERVICES} entries)");
                }
                (self.alloc_id()?, Vec::new(), 0, (0, 0), true)
            }
        };
        let new_slots = plan_slots(&old_slots, &desired);
        if self.total_slots - old_slots.len() + new_slots.len() > MAX_BACKEND_SLOTS as usize {
            if is_new {
                self.used_ids.remove(&id);
            }
            bail!("backend map full ({MAX_BACKEND_SLOTS} slots)");
        }

        let mut stats = UpdateStats::default();
        // 1. Slots below the new count that change.
        for (i, b) in new_slots.iter().enumerate() {
            if old_slots.get(i) != Some(b) {
                let bk = BackendKey { service_id: id, slot: i as u32 };
                self.backends.insert(bk, b, 0).with_context(|| format!("writing backend slot {i} of {vip}:{port}"))?;
                stats.slots_written += 1;
            }
        }
        // 2. The service entry, if its count or affinity changed (or it is new).
        let write_service = is_new || old_slots.len() != new_slots.len() || old_policy != (flags, affinity_timeout);
        let rev = if write_service { rev.wrapping_add(1) } else { rev };
        if write_service {
            let val = ServiceValue { id, backend_count: new_slots.len() as u32, flags, rev, affinity_timeout, pad: 0 };
            self.services.insert(key, val, 0).with_context(|| format!("writing service {vip}:{port}"))?;
            stats.service_written = true;
        }
        // 3. Slots past the new count.
        for i in new_slots.len()..old_slots.len() {
            remove_ignoring_missing(&mut self.backends, &BackendKey { service_id: id, slot: i as u32 })?;
            stats.slots_deleted += 1;
        }
        self.total_slots = self.total_slots - old_slots.len() + new_slots.len();
        if proto == Protocol::Udp {
            let lost = old_slots.iter().filter(|b| !new_slots.contains(b)).map(|b| (key, *b)).collect();
            self.abort_udp_sockets(lost);
        }
        self.state.insert(key, ServiceState { id, rev, flags, affinity_timeout, slots: new_slots });
        Ok(stats)
    }

    /// Aborts connected UDP sockets that the programs steered to a backend the service has just
    /// lost (see [`super::sockdiag`]), so their next `connect()` picks a live one. Failures are
    /// logged: the map update itself has happened.
    fn abort_udp_sockets(&self, lost: Vec<(ServiceKey, Backend)>) {
        if lost.is_empty() {
            return;
        }
        let mut by_peer: HashMap<(Ipv4Addr, u16), Vec<RevNatValue>> = HashMap::new();
        for (svc, b) in &lost {
            by_peer.entry(from_backend(b)).or_default().push(RevNatValue { addr: svc.addr, port: svc.port, pad: 0 });
        }
        let peers = by_peer.keys().copied().collect();
        let translated = |cookie: u64, (ip, port): (Ipv4Addr, u16)| {
            let b = Backend::new(ip.octets(), port);
            let key = RevNatKey { cookie, addr: b.addr, port: b.port, pad: 0 };
            match self.revnat.get(&key, 0) {
                Ok(v) => by_peer.get(&(ip, port)).is_some_and(|svcs| svcs.contains(&v)),
                Err(_) => false,
            }
        };
        match super::sockdiag::abort_udp_sockets(&peers, translated) {
            Ok(0) => {}
            Ok(n) => tracing::info!("aborted {n} connected UDP socket(s) of removed backends"),
            Err(e) => tracing::warn!("aborting UDP sockets of removed backends: {e:#}"),
        }
    }

    /// Removes a service frontend: new connections to it are no longer translated (the service
    /// range's blackhole route then refuses them). Removing an absent service is a no-op.
    pub fn remove_service(&mut self, vip: Ipv4Addr, port: u16, proto: Protocol) -> Result<UpdateStats> {
        let mut lost = Vec::new();
        let stats = self.remove_service_keeping_sockets(vip, port, proto, &mut lost)?;
        self.abort_udp_sockets(lost);
        Ok(stats)
    }

    /// [`Self::remove_service`], collecting the UDP backends lost instead of aborting their
    /// sockets (so that removing many services scans the machine's sockets once).
    fn remove_service_keeping_sockets(
        &mut self,
        vip: Ipv4Addr,
        port: u16,
        proto: Protocol,
        lost: &mut Vec<(ServiceKey, Backend)>,
    ) -> Result<UpdateStats> {
        let key = Frontend { vip, port, proto }.key();
        let Some(state) = self.state.get(&key).cloned() else {
            return Ok(UpdateStats::default());
        };
        let mut stats = UpdateStats::default();
        // The entry first, so that no program follows it into slots being deleted.
        remove_ignoring_missing(&mut self.services, &key)?;
        stats.service_written = true;
        for i in 0..state.slots.len() {
            remove_ignoring_missing(&mut self.backends, &BackendKey { service_id: state.id, slot: i as u32 })?;
            stats.slots_deleted += 1;
        }
        self.total_slots -= state.slots.len();
        if proto == Protocol::Udp {
            lost.extend(state.slots.iter().map(|b| (key, *b)));
        }
        self.state.remove(&key);
        self.used_ids.remove(&state.id);
        Ok(stats)
    }

    /// Removes every service not in `keep`: the "stale entries are removed" half of a full sync.
    pub fn retain(&mut self, keep: impl Fn(&Frontend) -> bool) -> Result<usize> {
        let stale: Vec<Frontend> = self.state.keys().filter_map(Frontend::from_key).filter(|f| !keep(f)).collect();
        let mut lost = Vec::new();
        let mut result = Ok(stale.len());
        for f in &stale {
            if let Err(e) = self.remove_service_keeping_sockets(f.vip, f.port, f.proto, &mut lost) {
                result = Err(e);
                break;
            }
        }
        self.abort_udp_sockets(lost);
        result
    }

    /// Connection counters of a frontend, summed over CPUs, or `None` if it is not in the map.
    pub fn counters(&self, vip: Ipv4Addr, port: u16, proto: Protocol) -> Result<Option<ServiceCounters>> {
        let key = Frontend { vip, port, proto }.key();
        let Some(state) = self.state.get(&key) else { return Ok(None) };
        let per_cpu = self.counters.get(&state.id, 0).context("reading the counters map")?;
        Ok(Some(per_cpu.iter().fold(ServiceCounters::default(), |a, c| ServiceCounters {
            translated: a.translated + c.translated,
            refused: a.refused + c.refused,
        })))
    }

    /// Packets and bytes the per-packet NodePort program translated for a frontend's service,
    /// summed over CPUs, or `None` if it is not in the map.
    pub fn packet_counters(&self, vip: Ipv4Addr, port: u16, proto: Protocol) -> Result<Option<PacketCounters>> {
        let key = Frontend { vip, port, proto }.key();
        let Some(state) = self.state.get(&key) else { return Ok(None) };
        let per_cpu = self.packets.get(&state.id, 0).context("reading the packet counters map")?;
        Ok(Some(per_cpu.iter().fold(PacketCounters::default(), |a, c| PacketCounters {
            packets: a.packets + c.packets,
            bytes: a.bytes + c.bytes,
        })))
    }

    /// Hands out the next free id in `1..=MAX_SERVICE_ID` (round robin, so a just-freed id is not
    /// reused at once) and zeroes its counters.
    fn alloc_id(&mut self) -> Result<u32> {
        for _ in 0..MAX_SERVICE_ID {
            let id = self.next_id;
            self.next_id = if id >= MAX_SERVICE_ID { 1 } else { id + 1 };
            if self.used_ids.insert(id) {
                let zero =
                    PerCpuValues::try_from(vec![ServiceCounters::default(); self.nr_cpus]).context("per-CPU values")?;
                if let Err(e) = self.counters.set(id, zero, 0) {
                    self.used_ids.remove(&id);
                    return Err(e).context("zeroing service counters");
                }
                let zero =
                    PerCpuValues::try_from(vec![PacketCounters::default(); self.nr_cpus]).context("per-CPU values")?;
                if let Err(e) = self.packets.set(id, zero, 0) {
                    self.used_ids.remove(&id);
                    return Err(e).context("zeroing packet counters");
                }
                return Ok(id);
            }
        }
        bail!("no free service id")
    }
}

fn from_backend(b: &Backend) -> (Ipv4Addr, u16) {
    (Ipv4Addr::from(ipv4_from_map(b.addr)), port_from_map(b.port))
}

fn remove_ignoring_missing<K: aya::Pod, V: aya::Pod>(map: &mut BpfHashMap<MapData, K, V>, key: &K) -> Result<()> {
    match map.remove(key) {
        Ok(()) => Ok(()),
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(e).context("deleting a map entry"),
    }
}

/// The new dense slot layout for `desired`, moving as few existing backends as possible:
/// backends that stay keep their slot; added backends fill the slots of removed ones; then the
/// tail is moved into remaining holes; then further added backends are appended.
pub(crate) fn plan_slots(old: &[Backend], desired: &[Backend]) -> Vec<Backend> {
    let desired_set: HashSet<&Backend> = desired.iter().collect();
    let old_set: HashSet<&Backend> = old.iter().collect();
    let mut added = desired.iter().filter(|b| !old_set.contains(b)).copied();
    let mut slots: Vec<Option<Backend>> = old.iter().map(|b| desired_set.contains(b).then_some(*b)).collect();
    // Added backends into holes, lowest first.
    for s in slots.iter_mut() {
        if s.is_none() {
            match added.next() {
                Some(b) => *s = Some(b),
                None => break,
            }
        }
    }
    // Compact: move the last live entry into the first hole until no hole remains.
    let mut out: Vec<Backend> = Vec::with_capacity(desired.len());
    loop {
        while matches!(slots.last(), Some(None)) {
            slots.pop();
        }
        match slots.iter().position(|s| s.is_none()) {
            Some(hole) => {
                let last = slots.pop().flatten();
                slots[hole] = last;
            }
            None => break,
        }
    }
    out.extend(slots.into_iter().flatten());
    out.extend(added);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(n: u8) -> Backend {
        Backend::new([127, 0, 0, n], 8000 + n as u16)
    }

    #[test]
    fn unchanged_backends_keep_their_slots() {
        let old = [b(1), b(2), b(3)];
        assert_eq!(plan_slots(&old, &[b(3), b(1), b(2)]), old);
    }

    #[test]
    fn added_backend_fills_a_removed_ones_slot() {
        assert_eq!(plan_slots(&[b(1), b(2), b(3)], &[b(1), b(4), b(3)]), [b(1), b(4), b(3)]);
    }

    #[test]
    fn removal_moves_the_last_into_the_hole() {
        assert_eq!(plan_slots(&[b(1), b(2), b(3), b(4)], &[b(1), b(3), b(4)]), [b(1), b(4), b(3)]);
        assert_eq!(plan_slots(&[b(1), b(2), b(3), b(4)], &[b(1), b(2), b(3)]), [b(1), b(2), b(3)]);
        assert_eq!(plan_slots(&[b(1), b(2), b(3), b(4)], &[b(1)]), [b(1)]);
        assert_eq!(plan_slots(&[b(1), b(2), b(3), b(4)], &[b(4)]), [b(4)]);
        assert_eq!(plan_slots(&[b(1), b(2), b(3), b(4)], &[b(2), b(4)]), [b(4), b(2)]);
        assert_eq!(plan_slots(&[b(1), b(2)], &[]), []);
    }

    #[test]
    fn additions_append() {
        assert_eq!(plan_slots(&[], &[b(1), b(2)]), [b(1), b(2)]);
        assert_eq!(plan_slots(&[b(1)], &[b(1), b(2), b(3)]), [b(1), b(2), b(3)]);
    }

    #[test]
    fn plans_are_permutations_of_the_desired_set() {
        // Exhaustive over small subsets of 6 backends: the plan holds exactly the desired set and
        // every surviving backend that was below the new count keeps its slot.
        let all: Vec<Backend> = (1..=6).map(b).collect();
        for om in 0u32..64 {
            for dm in 0u32..64 {
                let old: Vec<Backend> =
                    all.iter().enumerate().filter(|(i, _)| om & (1 << i) != 0).map(|(_, x)| *x).collect();
                let des: Vec<Backend> =
                    all.iter().enumerate().filter(|(i, _)| dm & (1 << i) != 0).map(|(_, x)| *x).collect();
                let plan = plan_slots(&old, &des);
                let mut p = plan.clone();
                let mut d = des.clone();
                p.sort_by_key(|x| x.port);
                d.sort_by_key(|x| x.port);
                assert_eq!(p, d, "old {old:?} desired {des:?}");
                for (i, x) in old.iter().enumerate() {
                    if i < plan.len() && des.contains(x) && plan[i] != *x {
                        // Only allowed if x was moved because it was in the tail.
                        assert!(plan.contains(x));
                    }
                }
            }
        }
    }
}
