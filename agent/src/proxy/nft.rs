//! `--proxy-mode nftables`: the service proxy as nftables rules in tables of Skiff's own, for
//! kernels that cannot run the eBPF programs. Same semantics as the eBPF mode — ClusterIP,
//! external IP and NodePort-on-node-address frontends, a random backend per connection, refused
//! at once without a ready endpoint, `ClientIP` affinity with its timeout — laid out like
//! kube-proxy's nftables mode:
//!
//! ```text
//! table ip skiff-proxy {                                       # the main table
//!   map no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict }  # → goto service-… (reject)
//!   chain filter-{input,forward,output} { type filter hook … priority dstnat - 10;
//!                           ct state new ip daddr . meta l4proto . th dport vmap @no-endpoint-services }
//!   chain filter-{output,forward}-post-dnat { type filter hook … priority filter;
//!                           ct state new ip daddr <service range> reject }   # nothing reaches an untranslated ClusterIP
//!   chain nat-postrouting { type nat hook postrouting priority srcnat; meta mark & 0x4000 != 0 … masquerade fully-random }
//!   chain service-10.96.0.11/tcp/80 { counter name "refused-…"; meta l4proto tcp reject with tcp reset; reject }
//! }
//! table ip skiff-proxy-0 … skiff-proxy-15 {                    # the shards: frontends by hash
//!   map service-ips { type ipv4_addr . inet_proto . inet_service : verdict }          # → goto service-…
//!   chain nat-prerouting { type nat hook prerouting priority dstnat; ip daddr . meta l4proto . th dport vmap @service-ips }
//!   chain nat-output     { type nat hook output priority dstnat;     (the same) }
//!   chain service-192.168.5.2/tcp/30080 {                     # a NodePort, externalTrafficPolicy: Cluster
//!     counter name "translated-192.168.5.2/tcp/30080"
//!     jump mark-for-masquerade                                 # remote backends answer through this node
//!     numgen random mod 2 vmap { … } }
//!   chain service-10.96.0.10/udp/53 {
//!     counter name "translated-10.96.0.10/udp/53"
//!     ip saddr @affinity-10.96.0.10/udp/53__10.244.0.5/53 goto endpoint-10.96.0.10/udp/53__10.244.0.5/53   # ClientIP only
//!     numgen random mod 2 vmap { 0 : goto endpoint-…__10.244.0.5/53, 1 : goto endpoint-…__10.244.0.6/53 } }
//!   chain endpoint-10.96.0.10/udp/53__10.244.0.5/53 {
//!     ip saddr 10.244.0.5 jump mark-for-masquerade                               # hairpin
//!     update @affinity-10.96.0.10/udp/53__10.244.0.5/53 { ip saddr }            # ClientIP only
//!     meta l4proto udp dnat to 10.244.0.5:53 }
//! }
//! ```
//!
//! One chain per frontend (the proxy's table is keyed by frontend, not service port), named after
//! it, so a restarted agent reads back what exists from names alone. Every change is a difference
//! in **one** netlink transaction (a changed backend set rewrites the frontend's chain and adds or
//! deletes only the endpoint chains that changed); a full sync sends few large transactions (one
//! `sendmsg` each). The shards exist for the kernel's sake: every commit that touches a table
//! re-validates everything reachable from that table's base chains, and anonymous sets and sets
//! are found by scanning the table's set list — on one table of 10,000 services a single change
//! costs ~60 ms and a cold load grows quadratically; sixteen tables keep both small (a new
//! connection pays sixteen map lookups in the nat hook, established ones nothing). Connection
//! counters are named counter objects, which survive rule rewrites.
//!
//! Routing: a local client's packet is routed *before* the output hook translates it, and the
//! service range's blackhole route would fail `connect()` there. [`route::LoopbackRoutes`] adds
//! two more specific routes of the range through `lo`: the output hook then sees the packet, and
//! what no rule translated is rejected (`…-post-dnat`) or dropped — it never leaves the machine.

mod conntrack;
mod netlink;
pub mod route;

use super::ProxyTable;
use super::desired::Desired;
use crate::dataplane::{Frontend, FrontendPolicy, Protocol, UpdateStats};
use crate::route::Ipv4Cidr;
use anyhow::{Context, Result};
use netlink::{
    CT_STATE_NEW, CounterMsg, ElemsMsg, MsgError, NAT_RANDOM_FULLY, NFT_GOTO, NFT_JUMP, NFT_SET_ANONYMOUS,
    NFT_SET_CONSTANT, NFT_SET_EVAL, NFT_SET_MAP, NFT_SET_TIMEOUT, NoAck, R0, R1, R2, SetMsg, Socket, TYPE_INTEGER,
    TYPE_IPADDR, TYPE_SERVICE_KEY, Tx, TxError, cstring,
};
use nftnl::{Chain, ChainType, Hook, MsgType, Policy, ProtoFamily, Rule, Table};
use skiff_dataplane_common::ServiceCounters;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::CString;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The main table's default name; the shards are `<name>-0` … `<name>-15`.
pub const DEFAULT_TABLE: &str = "skiff-proxy";
/// Number of shard tables.
pub const SHARDS: usize = 16;
/// Frontends with ready endpoints (a map per shard).
pub const SERVICE_IPS: &str = "service-ips";
/// Frontends without: rejected in the filter hooks (main table).
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
const MARK_FOR_MASQUERADE: &str = "mark-for-masquerade";
/// The packet-mark bit that asks `nat-postrouting` to masquerade (kube-proxy's).
const MASQUERADE_BIT: u32 = 0x4000;

/// Configuration of an [`NftServiceTable`].
#[derive(Clone, Debug)]
pub struct NftConfig {
    /// The main `ip` table; the shards are named after it (Skiff's own; nothing else is touched).
    pub table: String,
    /// New connections to addresses in this range that no rule translated are rejected.
    pub service_range: Option<Ipv4Cidr>,
    /// A full sync is cut into transactions of at most about this many messages (and one per
    /// shard).
    pub chunk_messages: usize,
}

impl Default for NftConfig {
    fn default() -> Self {
        Self { table: DEFAULT_TABLE.into(), service_range: None, chunk_messages: 20_000 }
    }
}

/// Which table an object is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tbl {
    Main,
    Shard(u8),
}

impl Tbl {
    fn index(self) -> usize {
        match self {
            Tbl::Main => 0,
            Tbl::Shard(s) => 1 + s as usize,
        }
    }
}

/// What the frontend's chain holds, when known.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Programmed {
    backends: Vec<(Ipv4Addr, u16)>,
    affinity: Option<u32>,
    /// External traffic with `externalTrafficPolicy: Cluster`: every new connection is marked
    /// for masquerade (kube-proxy's `external-…` chain), so a backend on another node answers
    /// through this one, which reverses the translation.
    masquerade: bool,
}

/// One endpoint chain of a frontend, as it exists in the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct EpState {
    chain: bool,
    /// Its rules, if known: whether they update the affinity set.
    rules: Option<bool>,
    /// The affinity set, with its timeout in seconds.
    affinity_set: Option<u32>,
}

/// One frontend, as it exists in the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FeState {
    /// The shard holding its translating objects.
    shard: u8,
    /// Shard: the `service-…` chain, its element in `service-ips`, the chain's rules if known
    /// (`None` after a restart until rewritten), endpoint chains, the `translated-…` counter.
    chain: bool,
    in_service_ips: bool,
    rules: Option<Programmed>,
    endpoints: BTreeMap<(Ipv4Addr, u16), EpState>,
    translated: bool,
    /// Main table: the rejecting `service-…` chain (and whether its rules are known), its
    /// element in `no-endpoint-services`, the `refused-…` counter.
    reject_chain: bool,
    reject_rules: bool,
    in_no_endpoints: bool,
    refused: bool,
}

impl FeState {
    fn new(shard: u8) -> Self {
        Self {
            shard,
            chain: false,
            in_service_ips: false,
            rules: None,
            endpoints: BTreeMap::new(),
            translated: false,
            reject_chain: false,
            reject_rules: false,
            in_no_endpoints: false,
            refused: false,
        }
    }
}

/// The nftables service table: the same interface as the eBPF [`crate::dataplane::ServiceTable`]
/// (see [`ProxyTable`]), each change applied as one transaction of only the difference.
pub struct NftServiceTable {
    sock: Socket,
    cfg: NftConfig,
    /// Table names: `[main, shard 0, …]`.
    names: Vec<CString>,
    state: BTreeMap<Frontend, FeState>,
    /// Named counters, read at most every 250 ms (`/metrics` asks per frontend).
    counter_cache: Mutex<Option<(Instant, HashMap<String, u64>)>>,
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

fn fe_name(fe: &Frontend) -> String {
    format!("{}/{}/{}", fe.vip, proto_name(fe.proto), fe.port)
}

fn service_chain(fe: &Frontend) -> String {
    format!("service-{}", fe_name(fe))
}

fn endpoint_suffix(fe: &Frontend, be: (Ipv4Addr, u16)) -> String {
    format!("{}__{}/{}", fe_name(fe), be.0, be.1)
}

fn endpoint_chain(fe: &Frontend, be: (Ipv4Addr, u16)) -> String {
    format!("endpoint-{}", endpoint_suffix(fe, be))
}

fn affinity_set(fe: &Frontend, be: (Ipv4Addr, u16)) -> String {
    format!("affinity-{}", endpoint_suffix(fe, be))
}

fn translated_counter(fe: &Frontend) -> String {
    format!("translated-{}", fe_name(fe))
}

fn refused_counter(fe: &Frontend) -> String {
    format!("refused-{}", fe_name(fe))
}

fn parse_fe(s: &str) -> Option<Frontend> {
    let mut it = s.split('/');
    let vip = it.next()?.parse().ok()?;
    let proto = match it.next()? {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        _ => return None,
    };
    let port = it.next()?.parse().ok()?;
    it.next().is_none().then_some(Frontend { vip, port, proto })
}

fn parse_endpoint(s: &str) -> Option<(Frontend, (Ipv4Addr, u16))> {
    let (fe, be) = s.split_once("__")?;
    let (ip, port) = be.split_once('/')?;
    Some((parse_fe(fe)?, (ip.parse().ok()?, port.parse().ok()?)))
}

/// The maps' key: `ip daddr . meta l4proto . th dport`, each field in its own 32-bit register.
fn service_key(fe: &Frontend) -> Vec<u8> {
    let mut k = vec![0u8; 12];
    k[0..4].copy_from_slice(&fe.vip.octets());
    k[4] = fe.proto.number();
    k[8..10].copy_from_slice(&fe.port.to_be_bytes());
    k
}

fn key_frontend(k: &[u8]) -> Option<Frontend> {
    if k.len() != 12 {
        return None;
    }
    let proto = match k[4] {
        6 => Protocol::Tcp,
        17 => Protocol::Udp,
        _ => return None,
    };
    Some(Frontend { vip: Ipv4Addr::new(k[0], k[1], k[2], k[3]), port: u16::from_be_bytes([k[8], k[9]]), proto })
}

/// The shard of a new frontend (FNV-1a of its key: stable across restarts).
fn shard_of(fe: &Frontend) -> u8 {
    let mut h: u32 = 0x811c_9dc5;
    for b in service_key(fe) {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    (h % SHARDS as u32) as u8
}

/// One change to the kernel's tables.
#[derive(Debug)]
enum Op {
    AddCounter(String),
    DelCounter(String),
    AddChain(String),
    FlushChain(String),
    DelChain(String),
    AddAffinitySet { name: String, timeout: u32 },
    DelSet(String),
    EndpointRules { chain: String, proto: Protocol, backend: (Ipv4Addr, u16), affinity_set: Option<String> },
    ServiceRules { chain: String, counter: String, masquerade: bool, endpoints: Vec<(String, Option<String>)> },
    RejectRules { chain: String, counter: String },
    AddElem(&'static str, Frontend),
    DelElem(&'static str, Frontend),
}

/// The changes for one frontend and what the frontend looks like after them.
struct Plan {
    fe: Frontend,
    shard: u8,
    ops: Vec<(Tbl, Op)>,
    /// `None`: removed.
    after: Option<FeState>,
    stats: UpdateStats,
}

impl Plan {
    fn writes(&self) -> usize {
        self.stats.slots_written + self.stats.slots_deleted + self.stats.service_written as usize
    }
}

/// Ops deleting a frontend's translating objects from its shard (the element first).
fn shard_teardown(fe: &Frontend, st: &FeState, ops: &mut Vec<(Tbl, Op)>, stats: &mut UpdateStats) {
    let s = Tbl::Shard(st.shard);
    if st.in_service_ips {
        ops.push((s, Op::DelElem(SERVICE_IPS, *fe)));
    }
    if st.chain {
        let c = service_chain(fe);
        ops.push((s, Op::FlushChain(c.clone())));
        ops.push((s, Op::DelChain(c)));
    }
    for (b, ep) in &st.endpoints {
        if ep.chain {
            let c = endpoint_chain(fe, *b);
            ops.push((s, Op::FlushChain(c.clone())));
            ops.push((s, Op::DelChain(c)));
        }
        if ep.affinity_set.is_some() {
            ops.push((s, Op::DelSet(affinity_set(fe, *b))));
        }
        stats.slots_deleted += 1;
    }
}

/// Ops deleting a frontend's rejecting objects from the main table (the element first).
fn main_teardown(fe: &Frontend, st: &FeState, ops: &mut Vec<(Tbl, Op)>) {
    if st.in_no_endpoints {
        ops.push((Tbl::Main, Op::DelElem(NO_ENDPOINT_SERVICES, *fe)));
    }
    if st.reject_chain {
        let c = service_chain(fe);
        ops.push((Tbl::Main, Op::FlushChain(c.clone())));
        ops.push((Tbl::Main, Op::DelChain(c)));
    }
}

/// The changes bringing `fe` from `before` to `want`; `None` if nothing differs.
fn plan_upsert(fe: Frontend, before: Option<&FeState>, want: Programmed) -> Option<Plan> {
    let st = before.cloned().unwrap_or_else(|| FeState::new(shard_of(&fe)));
    let s = Tbl::Shard(st.shard);
    let mut ops = Vec::new();
    let mut stats = UpdateStats::default();
    if want.backends.is_empty() {
        let done = st.reject_chain
            && st.reject_rules
            && st.in_no_endpoints
            && st.refused
            && !st.chain
            && !st.in_service_ips
            && st.endpoints.is_empty();
        if done {
            return None;
        }
        if !st.refused {
            ops.push((Tbl::Main, Op::AddCounter(refused_counter(&fe))));
        }
        let chain = service_chain(&fe);
        if !st.reject_chain {
            ops.push((Tbl::Main, Op::AddChain(chain.clone())));
        } else if !st.reject_rules {
            ops.push((Tbl::Main, Op::FlushChain(chain.clone())));
        }
        if !(st.reject_chain && st.reject_rules) {
            ops.push((Tbl::Main, Op::RejectRules { chain, counter: refused_counter(&fe) }));
            stats.service_written = true;
        }
        shard_teardown(&fe, &st, &mut ops, &mut stats);
        if !st.in_no_endpoints {
            ops.push((Tbl::Main, Op::AddElem(NO_ENDPOINT_SERVICES, fe)));
            stats.service_written = true;
        }
        let after = FeState {
            chain: false,
            in_service_ips: false,
            rules: None,
            endpoints: BTreeMap::new(),
            reject_chain: true,
            reject_rules: true,
            in_no_endpoints: true,
            refused: true,
            ..st
        };
        return Some(Plan { fe, shard: after.shard, ops, after: Some(after), stats });
    }

    let rewrite = !st.chain || st.rules.as_ref() != Some(&want);
    let eps_ok = st.endpoints.len() == want.backends.len()
        && want.backends.iter().all(|b| {
            st.endpoints
                .get(b)
                .is_some_and(|e| e.chain && e.rules == Some(want.affinity.is_some()) && e.affinity_set == want.affinity)
        });
    if !rewrite && eps_ok && st.in_service_ips && st.translated && !st.reject_chain && !st.in_no_endpoints {
        return None;
    }
    if !st.translated {
        ops.push((s, Op::AddCounter(translated_counter(&fe))));
    }
    let chain = service_chain(&fe);
    if !st.chain {
        ops.push((s, Op::AddChain(chain.clone())));
    } else if rewrite {
        // First: the endpoint chains and sets it refers to may go below.
        ops.push((s, Op::FlushChain(chain.clone())));
    }
    let mut endpoints = BTreeMap::new();
    let aff = want.affinity;
    for (b, ep) in &st.endpoints {
        let name = endpoint_chain(&fe, *b);
        if !want.backends.contains(b) {
            if ep.chain {
                ops.push((s, Op::FlushChain(name.clone())));
                ops.push((s, Op::DelChain(name)));
            }
            if ep.affinity_set.is_some() {
                ops.push((s, Op::DelSet(affinity_set(&fe, *b))));
            }
            stats.slots_deleted += 1;
            continue;
        }
        let set_ok = ep.affinity_set == aff;
        let rules_ok = ep.chain && ep.rules == Some(aff.is_some()) && set_ok;
        if !ep.chain {
            ops.push((s, Op::AddChain(name.clone())));
        } else if !rules_ok {
            ops.push((s, Op::FlushChain(name.clone()))); // before its affinity set is replaced
        }
        if !set_ok {
            if ep.affinity_set.is_some() {
                ops.push((s, Op::DelSet(affinity_set(&fe, *b))));
            }
            if let Some(timeout) = aff {
                ops.push((s, Op::AddAffinitySet { name: affinity_set(&fe, *b), timeout }));
            }
        }
        if !rules_ok {
            ops.push((
                s,
                Op::EndpointRules {
                    chain: name,
                    proto: fe.proto,
                    backend: *b,
                    affinity_set: aff.map(|_| affinity_set(&fe, *b)),
                },
            ));
            stats.slots_written += 1;
        }
        endpoints.insert(*b, EpState { chain: true, rules: Some(aff.is_some()), affinity_set: aff });
    }
    for b in want.backends.iter().filter(|b| !st.endpoints.contains_key(b)) {
        let name = endpoint_chain(&fe, *b);
        if let Some(timeout) = aff {
            ops.push((s, Op::AddAffinitySet { name: affinity_set(&fe, *b), timeout }));
        }
        ops.push((s, Op::AddChain(name.clone())));
        ops.push((
            s,
            Op::EndpointRules {
                chain: name,
                proto: fe.proto,
                backend: *b,
                affinity_set: aff.map(|_| affinity_set(&fe, *b)),
            },
        ));
        endpoints.insert(*b, EpState { chain: true, rules: Some(aff.is_some()), affinity_set: aff });
        stats.slots_written += 1;
    }
    if rewrite {
        ops.push((
            s,
            Op::ServiceRules {
                chain,
                counter: translated_counter(&fe),
                masquerade: want.masquerade,
                endpoints: want
                    .backends
                    .iter()
                    .map(|b| (endpoint_chain(&fe, *b), aff.map(|_| affinity_set(&fe, *b))))
                    .collect(),
            },
        ));
        stats.service_written = true;
    }
    if !st.in_service_ips {
        ops.push((s, Op::AddElem(SERVICE_IPS, fe)));
        stats.service_written = true;
    }
    if st.in_no_endpoints || st.reject_chain {
        main_teardown(&fe, &st, &mut ops);
        stats.service_written = true;
    }
    let after = FeState {
        chain: true,
        in_service_ips: true,
        rules: Some(want),
        endpoints,
        translated: true,
        reject_chain: false,
        reject_rules: false,
        in_no_endpoints: false,
        ..st
    };
    Some(Plan { fe, shard: after.shard, ops, after: Some(after), stats })
}

/// The changes removing everything of `fe` that exists.
fn plan_remove(fe: Frontend, st: &FeState) -> Plan {
    let mut ops = Vec::new();
    let mut stats = UpdateStats { service_written: true, ..Default::default() };
    main_teardown(&fe, st, &mut ops);
    shard_teardown(&fe, st, &mut ops, &mut stats);
    if st.translated {
        ops.push((Tbl::Shard(st.shard), Op::DelCounter(translated_counter(&fe))));
    }
    if st.refused {
        ops.push((Tbl::Main, Op::DelCounter(refused_counter(&fe))));
    }
    Plan { fe, shard: st.shard, ops, after: None, stats }
}

/// `ct state new`, into R0.
fn ct_new(r: &mut Rule) {
    r.add_expr(&netlink::ct_state(R0));
    r.add_expr(&netlink::bitwise(R0, &CT_STATE_NEW.to_ne_bytes(), &[0; 4]));
    r.add_expr(&netlink::cmp(false, R0, &[0; 4]));
}

/// `ip daddr . meta l4proto . th dport` into R0..R2.
fn service_key_load(r: &mut Rule) {
    r.add_expr(&netlink::ip_daddr(R0));
    r.add_expr(&netlink::l4proto(R1));
    r.add_expr(&netlink::th_dport(R2));
}

/// Adds a base chain (flushed, so that its rules can be written again) to a transaction.
fn base_chain<'a>(tx: &mut Tx, table: &'a Table, name: &CString, hook: Hook, prio: i32, ty: ChainType) -> Chain<'a> {
    let mut chain = Chain::new(name, table);
    chain.set_hook(hook, prio);
    chain.set_type(ty);
    chain.set_policy(Policy::Accept);
    tx.add(&NoAck(&chain), MsgType::Add);
    tx.add(&Rule::new(&chain), MsgType::Del);
    chain
}

fn verdict_map<'a>(table: &'a CString, name: &'a str, id: u32) -> SetMsg<'a> {
    SetMsg {
        table,
        name,
        id,
        flags: NFT_SET_MAP,
        key_type: TYPE_SERVICE_KEY,
        key_len: 12,
        verdict_map: true,
        timeout_ms: None,
        host_order_key: false,
    }
}

impl NftServiceTable {
    /// Opens a netlink socket in the calling thread's network namespace, creates the tables'
    /// fixed part (or brings existing ones to it) and reads back the frontends a previous agent
    /// programmed, so the first sync changes only what differs.
    pub fn new(cfg: NftConfig) -> Result<Self> {
        let sock = Socket::open()?;
        let mut names = vec![cstring(&cfg.table)];
        names.extend((0..SHARDS).map(|i| cstring(&format!("{}-{i}", cfg.table))));
        let mut t = Self { sock, cfg, names, state: BTreeMap::new(), counter_cache: Mutex::new(None) };
        if let Err(e) = t.setup_base() {
            tracing::warn!("nftables tables ip {}(-N): {e:#}; creating them again", t.cfg.table);
            t.delete_table()?;
            t.setup_base().with_context(|| format!("creating nftables tables ip {}(-N)", t.cfg.table))?;
        }
        t.recover().with_context(|| format!("reading nftables tables ip {}(-N)", t.cfg.table))?;
        Ok(t)
    }

    /// The main table's name.
    pub fn table_name(&self) -> &str {
        &self.cfg.table
    }

    fn tables(&self) -> Vec<Table> {
        self.names.iter().map(|n| Table::new(n, ProtoFamily::Ipv4)).collect()
    }

    /// The tables, their maps and base chains with their (fixed) rules, in one transaction: the
    /// base chains are flushed and refilled, so running it on existing tables is a no-op for
    /// traffic.
    fn setup_base(&self) -> Result<()> {
        let tables = self.tables();
        let main = &tables[0];
        let main_name = &self.names[0];
        let mut tx = Tx::new();
        for t in &tables {
            tx.add(&NoAck(t), MsgType::Add);
        }
        let id = tx.set_id();
        tx.add(&verdict_map(main_name, NO_ENDPOINT_SERVICES, id), MsgType::Add);
        for (name, hook) in
            [("filter-input", Hook::In), ("filter-forward", Hook::Forward), ("filter-output", Hook::Out)]
        {
            let n = cstring(name);
            let chain = base_chain(&mut tx, main, &n, hook, -110, ChainType::Filter);
            let mut r = Rule::new(&chain);
            ct_new(&mut r);
            service_key_load(&mut r);
            r.add_expr(&netlink::vmap(R0, NO_ENDPOINT_SERVICES));
            tx.add(&r, MsgType::Add);
        }
        for (name, hook) in [("filter-forward-post-dnat", Hook::Forward), ("filter-output-post-dnat", Hook::Out)] {
            let n = cstring(name);
            let chain = base_chain(&mut tx, main, &n, hook, 0, ChainType::Filter);
            if let Some(range) = self.cfg.service_range {
                let mask = if range.len == 0 { 0 } else { u32::MAX << (32 - range.len) };
                for tcp in [true, false] {
                    let mut r = Rule::new(&chain);
                    ct_new(&mut r);
                    r.add_expr(&netlink::ip_daddr(R0));
                    r.add_expr(&netlink::bitwise(R0, &mask.to_be_bytes(), &[0; 4]));
                    r.add_expr(&netlink::cmp(true, R0, &range.addr.octets()));
                    if tcp {
                        r.add_expr(&netlink::l4proto(R1));
                        r.add_expr(&netlink::cmp(true, R1, &[libc::IPPROTO_TCP as u8]));
                        r.add_expr(&netlink::reject_tcp_reset());
                    } else {
                        r.add_expr(&netlink::reject_port_unreachable());
                    }
                    tx.add(&r, MsgType::Add);
                }
            }
        }
        let n = cstring("nat-postrouting");
        let chain = base_chain(&mut tx, main, &n, Hook::PostRouting, 100, ChainType::Nat);
        let mut r = Rule::new(&chain);
        r.add_expr(&netlink::meta(libc::NFT_META_MARK, R0));
        r.add_expr(&netlink::bitwise(R0, &MASQUERADE_BIT.to_ne_bytes(), &[0; 4]));
        r.add_expr(&netlink::cmp(false, R0, &[0; 4]));
        r.add_expr(&netlink::meta(libc::NFT_META_MARK, R0));
        r.add_expr(&netlink::bitwise(R0, &(!MASQUERADE_BIT).to_ne_bytes(), &[0; 4]));
        r.add_expr(&netlink::meta_set(libc::NFT_META_MARK, R0));
        r.add_expr(&netlink::masquerade(NAT_RANDOM_FULLY));
        tx.add(&r, MsgType::Add);
        drop(r);
        drop(chain);

        let mark_name = cstring(MARK_FOR_MASQUERADE);
        let pre = cstring("nat-prerouting");
        let out = cstring("nat-output");
        for (i, shard) in tables.iter().enumerate().skip(1) {
            let id = tx.set_id();
            tx.add(&verdict_map(&self.names[i], SERVICE_IPS, id), MsgType::Add);
            let mark = Chain::new(&mark_name, shard);
            tx.add(&NoAck(&mark), MsgType::Add);
            tx.add(&Rule::new(&mark), MsgType::Del);
            let mut r = Rule::new(&mark);
            r.add_expr(&netlink::meta(libc::NFT_META_MARK, R0));
            r.add_expr(&netlink::bitwise(R0, &(!MASQUERADE_BIT).to_ne_bytes(), &MASQUERADE_BIT.to_ne_bytes()));
            r.add_expr(&netlink::meta_set(libc::NFT_META_MARK, R0));
            tx.add(&r, MsgType::Add);
            for (n, hook) in [(&pre, Hook::PreRouting), (&out, Hook::Out)] {
                let chain = base_chain(&mut tx, shard, n, hook, -100, ChainType::Nat);
                let mut r = Rule::new(&chain);
                service_key_load(&mut r);
                r.add_expr(&netlink::vmap(R0, SERVICE_IPS));
                tx.add(&r, MsgType::Add);
            }
        }
        self.sock.commit(main_name, tx, true).map_err(anyhow::Error::from)
    }

    /// Deletes all the tables (cleanup); missing ones are fine.
    pub fn delete_table(&self) -> Result<()> {
        let tables = self.tables();
        let mut tx = Tx::new();
        for (i, t) in tables.iter().enumerate() {
            tx.add(&NoAck(t), MsgType::Add); // makes the delete succeed whether or not it existed
            if i + 1 == tables.len() {
                tx.add(t, MsgType::Del); // acknowledged: the transaction's last message
            } else {
                tx.add(&NoAck(t), MsgType::Del);
            }
        }
        self.sock.commit(&self.names[0], tx, false).map_err(anyhow::Error::from)
    }

    /// Reads what the tables hold back into `state` (names say which frontend each object
    /// belongs to; the frontend chains' rules count as unknown until rewritten).
    fn recover(&mut self) -> Result<()> {
        let mut state: BTreeMap<Frontend, FeState> = BTreeMap::new();
        let main = &self.names[0];
        for c in self.sock.chains(main)?.unwrap_or_default() {
            if let Some(fe) = c.strip_prefix("service-").and_then(parse_fe) {
                state.entry(fe).or_insert_with(|| FeState::new(shard_of(&fe))).reject_chain = true;
            }
        }
        for (key, _) in self.sock.map_elements(main, NO_ENDPOINT_SERVICES)? {
            if let Some(fe) = key_frontend(&key) {
                state.entry(fe).or_insert_with(|| FeState::new(shard_of(&fe))).in_no_endpoints = true;
            }
        }
        for (name, _) in self.sock.counters(main)? {
            if let Some(fe) = name.strip_prefix("refused-").and_then(parse_fe) {
                state.entry(fe).or_insert_with(|| FeState::new(shard_of(&fe))).refused = true;
            }
        }
        for shard in 0..SHARDS as u8 {
            let table = &self.names[Tbl::Shard(shard).index()];
            // Objects found in a shard stay there, whatever the hash says.
            fn entry(state: &mut BTreeMap<Frontend, FeState>, fe: Frontend, shard: u8) -> &mut FeState {
                let e = state.entry(fe).or_insert_with(|| FeState::new(shard));
                e.shard = shard;
                e
            }
            for c in self.sock.chains(table)?.unwrap_or_default() {
                if let Some(fe) = c.strip_prefix("service-").and_then(parse_fe) {
                    entry(&mut state, fe, shard).chain = true;
                } else if let Some((fe, be)) = c.strip_prefix("endpoint-").and_then(parse_endpoint) {
                    entry(&mut state, fe, shard).endpoints.entry(be).or_default().chain = true;
                }
            }
            for (s, timeout) in self.sock.sets(table)? {
                if let Some((fe, be)) = s.strip_prefix("affinity-").and_then(parse_endpoint) {
                    let secs = timeout.map(|ms| (ms / 1000) as u32).unwrap_or(0);
                    entry(&mut state, fe, shard).endpoints.entry(be).or_default().affinity_set = Some(secs);
                }
            }
            for (key, _) in self.sock.map_elements(table, SERVICE_IPS)? {
                if let Some(fe) = key_frontend(&key) {
                    entry(&mut state, fe, shard).in_service_ips = true;
                }
            }
            for (name, _) in self.sock.counters(table)? {
                if let Some(fe) = name.strip_prefix("translated-").and_then(parse_fe) {
                    entry(&mut state, fe, shard).translated = true;
                }
            }
        }
        self.state = state;
        Ok(())
    }

    /// Writes one change into a transaction.
    fn encode(&self, tx: &mut Tx, tables: &[Table], t: Tbl, op: &Op) {
        let table = &tables[t.index()];
        let tname = &self.names[t.index()];
        let chain_of = |n: &str| Chain::new(&cstring(n), table);
        match op {
            Op::AddCounter(n) => tx.add(&CounterMsg { table: tname, name: n }, MsgType::Add),
            Op::DelCounter(n) => tx.add(&CounterMsg { table: tname, name: n }, MsgType::Del),
            Op::AddChain(n) => tx.add(&NoAck(&chain_of(n)), MsgType::Add),
            Op::FlushChain(n) => {
                let c = chain_of(n);
                tx.add(&Rule::new(&c), MsgType::Del);
            }
            Op::DelChain(n) => tx.add(&NoAck(&chain_of(n)), MsgType::Del),
            Op::AddAffinitySet { name, timeout } => {
                let id = tx.set_id();
                tx.add(
                    &SetMsg {
                        table: tname,
                        name,
                        id,
                        flags: NFT_SET_TIMEOUT | NFT_SET_EVAL,
                        key_type: TYPE_IPADDR,
                        key_len: 4,
                        verdict_map: false,
                        timeout_ms: Some(u64::from(*timeout) * 1000),
                        host_order_key: false,
                    },
                    MsgType::Add,
                );
            }
            Op::DelSet(name) => tx.add(
                &SetMsg {
                    table: tname,
                    name,
                    id: 0,
                    flags: 0,
                    key_type: 0,
                    key_len: 0,
                    verdict_map: false,
                    timeout_ms: None,
                    host_order_key: false,
                },
                MsgType::Del,
            ),
            Op::EndpointRules { chain, proto, backend, affinity_set } => {
                let c = chain_of(chain);
                let mut hairpin = Rule::new(&c);
                hairpin.add_expr(&netlink::ip_saddr(R0));
                hairpin.add_expr(&netlink::cmp(true, R0, &backend.0.octets()));
                hairpin.add_expr(&netlink::to_chain(NFT_JUMP, MARK_FOR_MASQUERADE));
                tx.add(&hairpin, MsgType::Add);
                if let Some(set) = affinity_set {
                    let mut r = Rule::new(&c);
                    r.add_expr(&netlink::ip_saddr(R0));
                    r.add_expr(&netlink::dynset_update(R0, set));
                    tx.add(&r, MsgType::Add);
                }
                let mut r = Rule::new(&c);
                r.add_expr(&netlink::l4proto(R0));
                r.add_expr(&netlink::cmp(true, R0, &[proto.number()]));
                r.add_expr(&netlink::imm_data(R0, &backend.0.octets()));
                r.add_expr(&netlink::imm_data(R1, &backend.1.to_be_bytes()));
                r.add_expr(&netlink::dnat(R0, R1));
                tx.add(&r, MsgType::Add);
            }
            Op::ServiceRules { chain, counter, masquerade, endpoints } => {
                let c = chain_of(chain);
                let mut r = Rule::new(&c);
                r.add_expr(&netlink::named_counter(counter));
                tx.add(&r, MsgType::Add);
                if *masquerade {
                    let mut r = Rule::new(&c);
                    r.add_expr(&netlink::to_chain(NFT_JUMP, MARK_FOR_MASQUERADE));
                    tx.add(&r, MsgType::Add);
                }
                for (ep, set) in endpoints {
                    if let Some(set) = set {
                        let mut r = Rule::new(&c);
                        r.add_expr(&netlink::ip_saddr(R0));
                        r.add_expr(&netlink::lookup_match(R0, set));
                        r.add_expr(&netlink::to_chain(NFT_GOTO, ep));
                        tx.add(&r, MsgType::Add);
                    }
                }
                let mut r = Rule::new(&c);
                if let [(only, _)] = endpoints.as_slice() {
                    r.add_expr(&netlink::to_chain(NFT_GOTO, only));
                } else {
                    // numgen random mod N vmap { 0 : goto endpoint-…, … }, the map anonymous
                    // (created with the rule, freed with it).
                    let id = tx.set_id();
                    tx.add(
                        &SetMsg {
                            table: tname,
                            name: netlink::ANONYMOUS_MAP,
                            id,
                            flags: NFT_SET_ANONYMOUS | NFT_SET_CONSTANT | NFT_SET_MAP,
                            key_type: TYPE_INTEGER,
                            key_len: 4,
                            verdict_map: true,
                            timeout_ms: None,
                            host_order_key: true,
                        },
                        MsgType::Add,
                    );
                    let elems: Vec<netlink::Elem> = endpoints
                        .iter()
                        .enumerate()
                        .map(|(i, (ep, _))| ((i as u32).to_ne_bytes().to_vec(), Some((NFT_GOTO, ep.clone()))))
                        .collect();
                    for chunk in elems.chunks(netlink::ELEMS_PER_MSG) {
                        tx.add(
                            &ElemsMsg { table: tname, set: netlink::ANONYMOUS_MAP, set_id: Some(id), elems: chunk },
                            MsgType::Add,
                        );
                    }
                    r.add_expr(&netlink::numgen_random(R0, endpoints.len() as u32));
                    r.add_expr(&netlink::vmap_anonymous(R0, id));
                }
                tx.add(&r, MsgType::Add);
            }
            Op::RejectRules { chain, counter } => {
                let c = chain_of(chain);
                let mut r = Rule::new(&c);
                r.add_expr(&netlink::named_counter(counter));
                tx.add(&r, MsgType::Add);
                let mut r = Rule::new(&c);
                r.add_expr(&netlink::l4proto(R0));
                r.add_expr(&netlink::cmp(true, R0, &[libc::IPPROTO_TCP as u8]));
                r.add_expr(&netlink::reject_tcp_reset());
                tx.add(&r, MsgType::Add);
                let mut r = Rule::new(&c);
                r.add_expr(&netlink::reject_port_unreachable());
                tx.add(&r, MsgType::Add);
            }
            Op::AddElem(map, fe) | Op::DelElem(map, fe) => {
                let add = matches!(op, Op::AddElem(..));
                let elems = [(service_key(fe), add.then(|| (NFT_GOTO, service_chain(fe))))];
                tx.add(
                    &ElemsMsg { table: tname, set: map, set_id: None, elems: &elems },
                    if add { MsgType::Add } else { MsgType::Del },
                );
            }
        }
    }

    /// Applies plans in transactions of one shard each (the kernel re-validates every table a
    /// transaction touches) and at most about `chunk_messages` messages. A refused transaction
    /// is retried one frontend per transaction, so one bad frontend does not hold back the
    /// others. Returns the writes applied, whether every plan applied, and the failures.
    fn apply_plans(&mut self, mut plans: Vec<Plan>) -> (usize, bool, Vec<(Frontend, anyhow::Error)>) {
        plans.sort_by_key(|p| p.shard); // stable: a frontend's plans keep their order
        let mut writes = 0;
        let mut failed = Vec::new();
        let mut lost = Vec::new();
        let tables = self.tables();
        let mut start = 0;
        while start < plans.len() {
            let mut tx = Tx::new();
            let mut end = start;
            while end < plans.len()
                && (end == start || (tx.len() < self.cfg.chunk_messages && plans[end].shard == plans[start].shard))
            {
                for (t, op) in &plans[end].ops {
                    self.encode(&mut tx, &tables, *t, op);
                }
                end += 1;
            }
            match self.sock.commit(&self.names[0], tx, true) {
                Ok(()) => {
                    for p in &plans[start..end] {
                        writes += p.writes();
                        self.settle(p, &mut lost);
                    }
                }
                Err(TxError::Refused(_)) if end - start > 1 => {
                    tracing::debug!("{} frontends in one transaction refused; retrying one by one", end - start);
                    for p in &plans[start..end] {
                        let mut tx = Tx::new();
                        for (t, op) in &p.ops {
                            self.encode(&mut tx, &tables, *t, op);
                        }
                        match self.sock.commit(&self.names[0], tx, true) {
                            Ok(()) => {
                                writes += p.writes();
                                self.settle(p, &mut lost);
                            }
                            Err(e) => failed.push((p.fe, self.tx_failed(e))),
                        }
                    }
                }
                Err(e) => {
                    let e = self.tx_failed(e);
                    for p in &plans[start..end] {
                        failed.push((p.fe, anyhow::anyhow!("{e:#}")));
                    }
                }
            }
            start = end;
        }
        // After the commit: new packets of those flows are translated to live backends.
        match conntrack::delete_udp_flows(&self.sock, &lost) {
            Ok(0) => {}
            Ok(n) => tracing::info!("deleted {n} conntrack entries of UDP flows to removed backends"),
            Err(e) => tracing::warn!("deleting conntrack entries of removed UDP backends: {e:#}"),
        }
        let ok = failed.is_empty();
        (writes, ok, failed)
    }

    /// Records a plan that applied; collects the UDP backends it took away.
    fn settle(&mut self, p: &Plan, lost: &mut Vec<conntrack::Flow>) {
        if p.fe.proto == Protocol::Udp
            && let Some(before) = self.state.get(&p.fe)
        {
            for b in before.endpoints.keys() {
                if !p.after.as_ref().is_some_and(|a| a.endpoints.contains_key(b)) {
                    lost.push(((p.fe.vip, p.fe.port), *b));
                }
            }
        }
        match &p.after {
            Some(s) => {
                self.state.insert(p.fe, s.clone());
            }
            None => {
                self.state.remove(&p.fe);
            }
        }
    }

    /// Turns a failed transaction into an error; when its outcome is unknown, reads the tables
    /// back so the next sync starts from the truth.
    fn tx_failed(&mut self, e: TxError) -> anyhow::Error {
        match e {
            TxError::Refused(errs) => {
                let list: Vec<String> = errs.iter().map(MsgError::to_string).collect();
                anyhow::anyhow!("nf_tables refused the change: {}", list.join("; "))
            }
            TxError::Io(e) => {
                if let Err(r) = self.recover() {
                    tracing::error!("reading nftables tables ip {}(-N) back: {r:#}", self.cfg.table);
                }
                e
            }
        }
    }

    fn want(backends: &[(Ipv4Addr, u16)], policy: FrontendPolicy) -> Programmed {
        let mut seen = HashSet::new();
        let backends = backends.iter().copied().filter(|b| seen.insert(*b)).collect();
        // externalTrafficPolicy: Local: the proxy gives this node's endpoints only, and without
        // masquerade the backends see the client's own address.
        Programmed {
            backends,
            affinity: policy.affinity.filter(|t| *t > 0),
            masquerade: policy.external && !policy.external_local,
        }
    }

    fn single(&mut self, plan: Plan) -> Result<UpdateStats> {
        let stats = plan.stats;
        let fe = plan.fe;
        let (_, _, mut failed) = self.apply_plans(vec![plan]);
        match failed.pop() {
            None => Ok(stats),
            Some((_, e)) => Err(e).with_context(|| format!("programming {}", fe_name(&fe))),
        }
    }

    /// Reads every named counter (one dump per table, reused for 250 ms).
    fn counter_values(&self) -> Result<HashMap<String, u64>> {
        let mut cache = self.counter_cache.lock().unwrap();
        if let Some((at, v)) = cache.as_ref()
            && at.elapsed() < Duration::from_millis(250)
        {
            return Ok(v.clone());
        }
        let mut v = HashMap::new();
        for t in &self.names {
            v.extend(self.sock.counters(t)?);
        }
        *cache = Some((Instant::now(), v.clone()));
        Ok(v)
    }
}

impl ProxyTable for NftServiceTable {
    fn len(&self) -> usize {
        self.state.len()
    }

    fn frontends(&self) -> Vec<Frontend> {
        self.state.keys().copied().collect()
    }

    fn backends(&self, vip: Ipv4Addr, port: u16, proto: Protocol) -> Option<Vec<(Ipv4Addr, u16)>> {
        let st = self.state.get(&Frontend { vip, port, proto })?;
        Some(match &st.rules {
            Some(p) if st.chain => p.backends.clone(),
            _ => st.endpoints.keys().copied().collect(),
        })
    }

    fn upsert_frontend(
        &mut self,
        vip: Ipv4Addr,
        port: u16,
        proto: Protocol,
        backends: &[(Ipv4Addr, u16)],
        policy: FrontendPolicy,
    ) -> Result<UpdateStats> {
        let fe = Frontend { vip, port, proto };
        match plan_upsert(fe, self.state.get(&fe), Self::want(backends, policy)) {
            None => Ok(UpdateStats::default()),
            Some(plan) => self.single(plan),
        }
    }

    fn remove_service(&mut self, vip: Ipv4Addr, port: u16, proto: Protocol) -> Result<UpdateStats> {
        let fe = Frontend { vip, port, proto };
        match self.state.get(&fe) {
            None => Ok(UpdateStats::default()),
            Some(st) => {
                let plan = plan_remove(fe, st);
                self.single(plan)
            }
        }
    }

    fn retain(&mut self, keep: &dyn Fn(&Frontend) -> bool) -> Result<usize> {
        let plans: Vec<Plan> =
            self.state.iter().filter(|(fe, _)| !keep(fe)).map(|(fe, st)| plan_remove(*fe, st)).collect();
        let n = plans.len();
        let (_, _, failed) = self.apply_plans(plans);
        match failed.into_iter().next() {
            None => Ok(n),
            Some((fe, e)) => Err(e).with_context(|| format!("removing {}", fe_name(&fe))),
        }
    }

    fn counters(&self, vip: Ipv4Addr, port: u16, proto: Protocol) -> Result<Option<ServiceCounters>> {
        let fe = Frontend { vip, port, proto };
        if !self.state.contains_key(&fe) {
            return Ok(None);
        }
        let v = self.counter_values()?;
        let get = |n: String| v.get(&n).copied().unwrap_or(0);
        Ok(Some(ServiceCounters { translated: get(translated_counter(&fe)), refused: get(refused_counter(&fe)) }))
    }

    /// The whole desired state in few transactions: stale frontends removed, the others brought
    /// to what `d` says, only where something differs.
    fn apply_batch(&mut self, d: &Desired) -> Option<(usize, bool)> {
        let mut plans: Vec<Plan> =
            self.state.iter().filter(|(fe, _)| !d.contains_key(fe)).map(|(fe, st)| plan_remove(*fe, st)).collect();
        for (fe, want) in d {
            if let Some(p) = plan_upsert(*fe, self.state.get(fe), Self::want(&want.backends, want.policy())) {
                plans.push(p);
            }
        }
        let names: HashMap<Frontend, String> = d.iter().map(|(fe, w)| (*fe, w.service.to_string())).collect();
        let (writes, ok, failed) = self.apply_plans(plans);
        for (fe, e) in failed {
            let svc = names.get(&fe).map(String::as_str).unwrap_or("stale frontend");
            tracing::error!("programming {svc} ({}:{}/{:?}): {e:#}", fe.vip, fe.port, fe.proto);
        }
        Some((writes, ok))
    }
}

/// The table name for a node proxy: `skiff-proxy`, or one derived from a non-default pin
/// directory, so agents of different tests in one network namespace keep apart.
pub fn table_name_for(pin_dir: &std::path::Path) -> String {
    if pin_dir == std::path::Path::new(crate::dataplane::DEFAULT_PIN_DIR) {
        return DEFAULT_TABLE.into();
    }
    let base: String = pin_dir
        .file_name()
        .map(|n| n.to_string_lossy().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect())
        .unwrap_or_default();
    if base.is_empty() || base == "skiff" {
        DEFAULT_TABLE.into()
    } else {
        format!("{DEFAULT_TABLE}-{}", &base[..base.len().min(64)])
    }
}

/// The node proxy in nftables mode (the caller has installed the service range's blackhole
/// route): the table, the routes that let local clients' packets reach the output hook, then
/// [`super::Proxy::run`] until `shutdown`. Cleans up per `cleanup_on_exit`.
pub(crate) async fn run_node_proxy(
    client: kube::Client,
    config: &super::NodeProxyConfig,
    proxy: &super::Proxy,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let name = table_name_for(&config.dataplane.pin_dir);
    let mut table = NftServiceTable::new(NftConfig {
        table: name.clone(),
        service_range: Some(config.service_range),
        ..Default::default()
    })?;
    tracing::info!(
        frontends = table.len(),
        "nftables service proxy: table ip {name} ready ({} frontends already programmed)",
        table.len()
    );
    let routes = match route::LoopbackRoutes::ensure(config.service_range).await {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(
                "routing the service range {} through lo: {e:#}; processes on this node will not reach ClusterIPs \
                 (pods still do)",
                config.service_range
            );
            None
        }
    };
    let r = proxy.run(client, &mut table, shutdown).await;
    if config.cleanup_on_exit {
        if let Some(routes) = routes
            && let Err(e) = routes.remove().await
        {
            tracing::error!("{e:#}");
        }
        if let Err(e) = table.delete_table() {
            tracing::error!("deleting nftables table ip {name}: {e:#}");
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fe(port: u16) -> Frontend {
        Frontend { vip: Ipv4Addr::new(10, 96, 0, 10), port, proto: Protocol::Udp }
    }

    #[test]
    fn names_round_trip() {
        let f = fe(53);
        let be = (Ipv4Addr::new(10, 244, 0, 5), 5353);
        assert_eq!(service_chain(&f), "service-10.96.0.10/udp/53");
        assert_eq!(endpoint_chain(&f, be), "endpoint-10.96.0.10/udp/53__10.244.0.5/5353");
        assert_eq!(parse_fe("10.96.0.10/udp/53"), Some(f));
        assert_eq!(parse_endpoint(endpoint_chain(&f, be).strip_prefix("endpoint-").unwrap()), Some((f, be)));
        assert_eq!(key_frontend(&service_key(&f)), Some(f));
        assert_eq!(parse_fe("10.96.0.10/sctp/53"), None);
        assert!((shard_of(&f) as usize) < SHARDS);
    }

    fn count(p: &Plan, f: impl Fn(&Tbl, &Op) -> bool) -> usize {
        p.ops.iter().filter(|(t, o)| f(t, o)).count()
    }

    #[test]
    fn plans_change_only_the_difference() {
        let f = fe(53);
        let b = |n: u8| (Ipv4Addr::new(10, 244, 0, n), 53);
        let want = |bs: &[(Ipv4Addr, u16)], aff| Programmed { backends: bs.to_vec(), affinity: aff, masquerade: false };
        let p = plan_upsert(f, None, want(&[b(1), b(2), b(3)], None)).unwrap();
        assert_eq!(count(&p, |_, o| matches!(o, Op::AddChain(_))), 4);
        assert_eq!(count(&p, |t, o| *t != Tbl::Main && matches!(o, Op::AddElem(SERVICE_IPS, _))), 1);
        assert_eq!(count(&p, |t, _| *t == Tbl::Main), 0, "the main table is not touched");
        let s = p.after.unwrap();
        assert!(plan_upsert(f, Some(&s), want(&[b(1), b(2), b(3)], None)).is_none(), "no change, no transaction");

        // One backend removed: the frontend chain rewritten, one endpoint chain deleted, the
        // others untouched.
        let p = plan_upsert(f, Some(&s), want(&[b(1), b(3)], None)).unwrap();
        assert_eq!(count(&p, |_, o| matches!(o, Op::DelChain(_))), 1);
        assert_eq!(count(&p, |_, o| matches!(o, Op::EndpointRules { .. })), 0);
        assert_eq!(count(&p, |_, o| matches!(o, Op::ServiceRules { .. })), 1);
        assert_eq!(count(&p, |_, o| matches!(o, Op::AddElem(..) | Op::DelElem(..))), 0);
        let s2 = p.after.unwrap();

        // No backend left: a rejecting chain in the main table, the shard's objects gone.
        let p = plan_upsert(f, Some(&s2), want(&[], None)).unwrap();
        assert_eq!(count(&p, |t, o| *t == Tbl::Main && matches!(o, Op::RejectRules { .. })), 1);
        assert_eq!(count(&p, |_, o| matches!(o, Op::DelElem(SERVICE_IPS, _))), 1);
        assert_eq!(count(&p, |_, o| matches!(o, Op::AddElem(NO_ENDPOINT_SERVICES, _))), 1);
        assert_eq!(count(&p, |_, o| matches!(o, Op::DelChain(_))), 3);
        let s3 = p.after.unwrap();
        assert!(plan_upsert(f, Some(&s3), want(&[], None)).is_none());
        // And back.
        let p = plan_upsert(f, Some(&s3), want(&[b(1)], None)).unwrap();
        assert_eq!(count(&p, |t, o| *t == Tbl::Main && matches!(o, Op::DelChain(_))), 1);
        assert_eq!(count(&p, |_, o| matches!(o, Op::AddCounter(_))), 0, "counters outlive the transitions");

        // Affinity on: every endpoint chain rewritten with a set.
        let p = plan_upsert(f, Some(&s2), want(&[b(1), b(3)], Some(60))).unwrap();
        assert_eq!(count(&p, |_, o| matches!(o, Op::AddAffinitySet { timeout: 60, .. })), 2);
        assert_eq!(count(&p, |_, o| matches!(o, Op::EndpointRules { affinity_set: Some(_), .. })), 2);

        // Removal deletes what exists, the element first.
        let p = plan_remove(f, &s2);
        assert!(matches!(p.ops[0].1, Op::DelElem(SERVICE_IPS, _)));
        assert_eq!(count(&p, |_, o| matches!(o, Op::DelCounter(_))), 1);
    }

    #[test]
    fn a_recovered_frontend_is_rewritten_once() {
        let f = fe(80);
        let b = (Ipv4Addr::new(10, 244, 0, 1), 80);
        let mut st = FeState { chain: true, in_service_ips: true, translated: true, ..FeState::new(3) };
        st.endpoints.insert(b, EpState { chain: true, rules: None, affinity_set: None });
        let p = plan_upsert(f, Some(&st), Programmed { backends: vec![b], affinity: None, masquerade: false }).unwrap();
        assert!(matches!(p.ops[0], (Tbl::Shard(3), Op::FlushChain(_))));
        assert_eq!(count(&p, |_, o| matches!(o, Op::AddChain(_) | Op::AddElem(..))), 0);
        assert!(
            plan_upsert(f, p.after.as_ref(), Programmed { backends: vec![b], affinity: None, masquerade: false })
                .is_none()
        );
    }
}
