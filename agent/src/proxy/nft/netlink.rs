//! The nf_tables netlink layer under [`super::NftServiceTable`]: expressions, sets, elements and
//! stateful objects built with libnftnl (the `nftnl` crate and the `nftnl_sys` bindings it
//! re-exports, for what the safe wrappers do not cover: maps, verdict maps, `numgen`, `dynset`,
//! `reject`, named counters), a transaction sent with **one** `sendmsg`, the kernel's answers, and
//! dumps (what a previous agent left).
//!
//! Messages carry no `NLM_F_ACK` except the transaction's last one (a no-op "add table"): the
//! kernel reports every failing message anyway and answers the last one after the commit (or the
//! abort), so reading until that answer collects every error without queueing one acknowledgement
//! per message — 10,000 services are ~150,000 messages.

use anyhow::{Context, Result, bail};
use nftnl::expr::Expression;
use nftnl::nftnl_sys as sys;
use nftnl::{Batch, FinalizedBatch, MsgType, NlMsg, Rule};
use std::ffi::{CStr, CString, c_void};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::raw::c_char;

/// `NFPROTO_IPV4`: the table's family.
pub const FAMILY: u16 = libc::NFPROTO_IPV4 as u16;

/// 32-bit data registers (`NFT_REG32_00` and up); a concatenated key spans consecutive ones.
pub const R0: u32 = 8;
pub const R1: u32 = 9;
pub const R2: u32 = 10;
/// The verdict register: a lookup into a verdict map stores its result here.
const REG_VERDICT: u32 = 0;

pub const NFT_JUMP: i32 = -3;
pub const NFT_GOTO: i32 = -4;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_MSG_NEWOBJ: u16 = 18;
const NFT_MSG_GETOBJ: u16 = 19;
const NFT_MSG_DELOBJ: u16 = 20;
/// Messages of the nf_tables subsystem carry it in the type's high byte.
const SUBSYS: u16 = (libc::NFNL_SUBSYS_NFTABLES as u16) << 8;

pub const NFT_SET_ANONYMOUS: u32 = 0x1;
pub const NFT_SET_CONSTANT: u32 = 0x2;
pub const NFT_SET_MAP: u32 = 0x8;
pub const NFT_SET_TIMEOUT: u32 = 0x10;
pub const NFT_SET_EVAL: u32 = 0x20;
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
const NFT_OBJECT_COUNTER: u32 = 1;

/// nft's datatype numbers (what `nft list` uses to print keys; the kernel ignores them).
pub const TYPE_INTEGER: u32 = 4;
pub const TYPE_IPADDR: u32 = 7;
const TYPE_INET_PROTOCOL: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;
/// `ipv4_addr . inet_proto . inet_service`.
pub const TYPE_SERVICE_KEY: u32 = (((TYPE_IPADDR << 6) | TYPE_INET_PROTOCOL) << 6) | TYPE_INET_SERVICE;

/// `ct state new`: `NF_CT_STATE_BIT(IP_CT_NEW)`.
pub const CT_STATE_NEW: u32 = 1 << 3;
/// `NF_NAT_RANGE_PROTO_RANDOM_FULLY`.
pub const NAT_RANDOM_FULLY: u32 = 0x10;

/// A value of an expression attribute.
enum Val {
    U8(u8),
    U32(u32),
    Str(CString),
    Bytes(Vec<u8>),
}

/// Any nf_tables expression, by its kernel name and libnftnl attributes.
pub struct Expr {
    name: &'static CStr,
    attrs: Vec<(u32, Val)>,
}

impl Expr {
    fn new(name: &'static CStr) -> Self {
        Self { name, attrs: Vec::with_capacity(6) }
    }
    fn u8(mut self, attr: u32, v: u8) -> Self {
        self.attrs.push((attr, Val::U8(v)));
        self
    }
    fn u32(mut self, attr: u32, v: u32) -> Self {
        self.attrs.push((attr, Val::U32(v)));
        self
    }
    fn str(mut self, attr: u32, v: &str) -> Self {
        self.attrs.push((attr, Val::Str(cstring(v))));
        self
    }
    fn bytes(mut self, attr: u32, v: &[u8]) -> Self {
        self.attrs.push((attr, Val::Bytes(v.to_vec())));
        self
    }
}

impl Expression for Expr {
    fn to_expr(&self, _rule: &Rule) -> *mut sys::nftnl_expr {
        // SAFETY: libnftnl copies every value it is given; the expression is handed to the rule,
        // which frees it.
        unsafe {
            let e = sys::nftnl_expr_alloc(self.name.as_ptr());
            if e.is_null() {
                std::process::abort(); // out of memory, as the nftnl crate does
            }
            for (attr, v) in &self.attrs {
                let a = *attr as u16;
                match v {
                    Val::U8(x) => sys::nftnl_expr_set_u8(e, a, *x),
                    Val::U32(x) => sys::nftnl_expr_set_u32(e, a, *x),
                    Val::Str(s) => {
                        sys::nftnl_expr_set_str(e, a, s.as_ptr());
                    }
                    Val::Bytes(b) => {
                        sys::nftnl_expr_set(e, a, b.as_ptr() as *const c_void, b.len() as u32);
                    }
                }
            }
            e
        }
    }
}

/// A name for the kernel (names here never hold NUL).
pub fn cstring(s: &str) -> CString {
    CString::new(s).unwrap_or_else(|_| CString::new(s.replace('\0', "")).unwrap())
}

/// `payload load <len>b @ <base> + <offset> => dreg` (base: 1 network, 2 transport header).
pub fn payload(base: u32, offset: u32, len: u32, dreg: u32) -> Expr {
    Expr::new(c"payload")
        .u32(sys::NFTNL_EXPR_PAYLOAD_DREG, dreg)
        .u32(sys::NFTNL_EXPR_PAYLOAD_BASE, base)
        .u32(sys::NFTNL_EXPR_PAYLOAD_OFFSET, offset)
        .u32(sys::NFTNL_EXPR_PAYLOAD_LEN, len)
}

pub fn ip_saddr(dreg: u32) -> Expr {
    payload(libc::NFT_PAYLOAD_NETWORK_HEADER as u32, 12, 4, dreg)
}
pub fn ip_daddr(dreg: u32) -> Expr {
    payload(libc::NFT_PAYLOAD_NETWORK_HEADER as u32, 16, 4, dreg)
}
/// `th dport`: the destination port of TCP and UDP alike.
pub fn th_dport(dreg: u32) -> Expr {
    payload(libc::NFT_PAYLOAD_TRANSPORT_HEADER as u32, 2, 2, dreg)
}

pub fn meta(key: i32, dreg: u32) -> Expr {
    Expr::new(c"meta").u32(sys::NFTNL_EXPR_META_KEY, key as u32).u32(sys::NFTNL_EXPR_META_DREG, dreg)
}
pub fn meta_set(key: i32, sreg: u32) -> Expr {
    Expr::new(c"meta").u32(sys::NFTNL_EXPR_META_KEY, key as u32).u32(sys::NFTNL_EXPR_META_SREG, sreg)
}
pub fn l4proto(dreg: u32) -> Expr {
    meta(libc::NFT_META_L4PROTO, dreg)
}
pub fn ct_state(dreg: u32) -> Expr {
    Expr::new(c"ct").u32(sys::NFTNL_EXPR_CT_KEY, libc::NFT_CT_STATE as u32).u32(sys::NFTNL_EXPR_CT_DREG, dreg)
}

pub fn cmp(eq: bool, sreg: u32, data: &[u8]) -> Expr {
    let op = if eq { libc::NFT_CMP_EQ } else { libc::NFT_CMP_NEQ };
    Expr::new(c"cmp")
        .u32(sys::NFTNL_EXPR_CMP_SREG, sreg)
        .u32(sys::NFTNL_EXPR_CMP_OP, op as u32)
        .bytes(sys::NFTNL_EXPR_CMP_DATA, data)
}

/// `reg = (reg & mask) ^ xor`.
pub fn bitwise(reg: u32, mask: &[u8], xor: &[u8]) -> Expr {
    Expr::new(c"bitwise")
        .u32(sys::NFTNL_EXPR_BITWISE_SREG, reg)
        .u32(sys::NFTNL_EXPR_BITWISE_DREG, reg)
        .u32(sys::NFTNL_EXPR_BITWISE_LEN, mask.len() as u32)
        .bytes(sys::NFTNL_EXPR_BITWISE_MASK, mask)
        .bytes(sys::NFTNL_EXPR_BITWISE_XOR, xor)
}

pub fn imm_data(dreg: u32, data: &[u8]) -> Expr {
    Expr::new(c"immediate").u32(sys::NFTNL_EXPR_IMM_DREG, dreg).bytes(sys::NFTNL_EXPR_IMM_DATA, data)
}

/// `jump`/`goto <chain>`.
pub fn to_chain(code: i32, chain: &str) -> Expr {
    Expr::new(c"immediate")
        .u32(sys::NFTNL_EXPR_IMM_DREG, REG_VERDICT)
        .u32(sys::NFTNL_EXPR_IMM_VERDICT, code as u32)
        .str(sys::NFTNL_EXPR_IMM_CHAIN, chain)
}

/// A lookup of `sreg..` in a set (`dreg: None`: a match) or a verdict map (`dreg:
/// Some(verdict)`); `set_id` names a set created in the same transaction.
fn lookup(sreg: u32, set: &str, set_id: Option<u32>, verdict: bool) -> Expr {
    let mut e = Expr::new(c"lookup").u32(sys::NFTNL_EXPR_LOOKUP_SREG, sreg).str(sys::NFTNL_EXPR_LOOKUP_SET, set);
    if let Some(id) = set_id {
        e = e.u32(sys::NFTNL_EXPR_LOOKUP_SET_ID, id);
    }
    if verdict {
        e = e.u32(sys::NFTNL_EXPR_LOOKUP_DREG, REG_VERDICT);
    }
    e
}
pub fn lookup_match(sreg: u32, set: &str) -> Expr {
    lookup(sreg, set, None, false)
}
pub fn vmap(sreg: u32, map: &str) -> Expr {
    lookup(sreg, map, None, true)
}
pub fn vmap_anonymous(sreg: u32, id: u32) -> Expr {
    lookup(sreg, ANONYMOUS_MAP, Some(id), true)
}

/// `numgen random mod <modulus>` into `dreg` (a host-order u32).
pub fn numgen_random(dreg: u32, modulus: u32) -> Expr {
    Expr::new(c"numgen")
        .u32(sys::NFTNL_EXPR_NG_DREG, dreg)
        .u32(sys::NFTNL_EXPR_NG_MODULUS, modulus)
        .u32(sys::NFTNL_EXPR_NG_TYPE, libc::NFT_NG_RANDOM as u32)
        .u32(sys::NFTNL_EXPR_NG_OFFSET, 0)
}

/// `update @set { sreg }`: adds the key, or refreshes its timeout.
pub fn dynset_update(sreg: u32, set: &str) -> Expr {
    Expr::new(c"dynset")
        .u32(sys::NFTNL_EXPR_DYNSET_OP, libc::NFT_DYNSET_OP_UPDATE as u32)
        .u32(sys::NFTNL_EXPR_DYNSET_SREG_KEY, sreg)
        .str(sys::NFTNL_EXPR_DYNSET_SET_NAME, set)
}

/// `dnat to <addr reg>:<port reg>`.
pub fn dnat(reg_addr: u32, reg_port: u32) -> Expr {
    Expr::new(c"nat")
        .u32(sys::NFTNL_EXPR_NAT_TYPE, libc::NFT_NAT_DNAT as u32)
        .u32(sys::NFTNL_EXPR_NAT_FAMILY, libc::NFPROTO_IPV4 as u32)
        .u32(sys::NFTNL_EXPR_NAT_REG_ADDR_MIN, reg_addr)
        .u32(sys::NFTNL_EXPR_NAT_REG_PROTO_MIN, reg_port)
}

pub fn masquerade(flags: u32) -> Expr {
    Expr::new(c"masq").u32(sys::NFTNL_EXPR_MASQ_FLAGS, flags)
}

pub fn reject_tcp_reset() -> Expr {
    Expr::new(c"reject")
        .u32(sys::NFTNL_EXPR_REJECT_TYPE, libc::NFT_REJECT_TCP_RST as u32)
        .u8(sys::NFTNL_EXPR_REJECT_CODE, 0)
}

/// `reject` (ICMP port unreachable).
pub fn reject_port_unreachable() -> Expr {
    Expr::new(c"reject").u32(sys::NFTNL_EXPR_REJECT_TYPE, libc::NFT_REJECT_ICMP_UNREACH as u32).u8(
        sys::NFTNL_EXPR_REJECT_CODE,
        3, // ICMP_PORT_UNREACH
    )
}

/// `counter name <name>`: counts into a named counter object.
pub fn named_counter(name: &str) -> Expr {
    Expr::new(c"objref")
        .u32(sys::NFTNL_EXPR_OBJREF_IMM_TYPE, NFT_OBJECT_COUNTER)
        .str(sys::NFTNL_EXPR_OBJREF_IMM_NAME, name)
}

/// The kernel names an anonymous set on creation; rules refer to it by the transaction's set id.
pub const ANONYMOUS_MAP: &str = "__map%d";

/// A message whose `NLM_F_ACK` is cleared (the `nftnl` wrappers ask for one on tables and chains).
pub struct NoAck<'a, T: NlMsg>(pub &'a T);

// SAFETY: writes what the wrapped message writes, then edits its header's flags in place.
unsafe impl<T: NlMsg> NlMsg for NoAck<'_, T> {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        unsafe {
            self.0.write(buf, seq, msg_type);
            let hdr = buf as *mut libc::nlmsghdr;
            (*hdr).nlmsg_flags &= !(libc::NLM_F_ACK as u16);
        }
    }
}

/// A named or anonymous set (map) to create or delete.
pub struct SetMsg<'a> {
    pub table: &'a CStr,
    pub name: &'a str,
    /// Transaction-local id (rules and elements of the same transaction refer to new sets by it).
    pub id: u32,
    pub flags: u32,
    pub key_type: u32,
    pub key_len: u32,
    /// A verdict map.
    pub verdict_map: bool,
    /// Default element timeout in milliseconds (`NFT_SET_TIMEOUT` sets).
    pub timeout_ms: Option<u64>,
    /// Keys are host-order integers (`numgen`'s): tells `nft list` how to print them.
    pub host_order_key: bool,
}

// SAFETY: the set object lives for the call; the payload is written into the batch's buffer,
// which libnftnl sizes for one message of at most `nft_nlmsg_maxsize()`.
unsafe impl NlMsg for SetMsg<'_> {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        unsafe {
            let s = sys::nftnl_set_alloc();
            if s.is_null() {
                std::process::abort();
            }
            let name = cstring(self.name);
            sys::nftnl_set_set_str(s, sys::NFTNL_SET_TABLE as u16, self.table.as_ptr());
            sys::nftnl_set_set_str(s, sys::NFTNL_SET_NAME as u16, name.as_ptr());
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_FAMILY as u16, FAMILY as u32);
            let (ty, flags) = match msg_type {
                MsgType::Add => {
                    sys::nftnl_set_set_u32(s, sys::NFTNL_SET_ID as u16, self.id);
                    sys::nftnl_set_set_u32(s, sys::NFTNL_SET_FLAGS as u16, self.flags);
                    sys::nftnl_set_set_u32(s, sys::NFTNL_SET_KEY_TYPE as u16, self.key_type);
                    sys::nftnl_set_set_u32(s, sys::NFTNL_SET_KEY_LEN as u16, self.key_len);
                    if self.verdict_map {
                        sys::nftnl_set_set_u32(s, sys::NFTNL_SET_DATA_TYPE as u16, NFT_DATA_VERDICT);
                    }
                    if let Some(t) = self.timeout_ms {
                        sys::nftnl_set_set_u64(s, sys::NFTNL_SET_TIMEOUT as u16, t);
                    }
                    if self.host_order_key {
                        // nft's set user data: NFTNL_UDATA_SET_KEYBYTEORDER (0), 4 bytes,
                        // BYTEORDER_HOST_ENDIAN (1).
                        let mut udata = vec![0u8, 4];
                        udata.extend_from_slice(&1u32.to_ne_bytes());
                        sys::nftnl_set_set_data(
                            s,
                            sys::NFTNL_SET_USERDATA as u16,
                            udata.as_ptr() as *const c_void,
                            udata.len() as u32,
                        );
                    }
                    (NFT_MSG_NEWSET, libc::NLM_F_CREATE as u16)
                }
                MsgType::Del => (NFT_MSG_DELSET, 0),
            };
            let hdr = sys::nftnl_nlmsg_build_hdr(buf as *mut c_char, SUBSYS | ty, FAMILY, flags, seq);
            sys::nftnl_set_nlmsg_build_payload(hdr, s);
            sys::nftnl_set_free(s);
        }
    }
}

/// A set element: key bytes, and for verdict maps the `goto`/`jump` and its chain.
pub type Elem = (Vec<u8>, Option<(i32, String)>);

/// Elements to add to or delete from a set: keys, with a `goto`/`jump` chain for verdict maps.
pub struct ElemsMsg<'a> {
    pub table: &'a CStr,
    pub set: &'a str,
    /// Set for sets created in the same transaction (anonymous ones have no usable name).
    pub set_id: Option<u32>,
    pub elems: &'a [Elem],
}

/// Elements per message: well inside one message's 64 KiB.
pub const ELEMS_PER_MSG: usize = 256;

// SAFETY: as for `SetMsg`; at most `ELEMS_PER_MSG` small elements per message.
unsafe impl NlMsg for ElemsMsg<'_> {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        unsafe {
            let s = sys::nftnl_set_alloc();
            if s.is_null() {
                std::process::abort();
            }
            let name = cstring(self.set);
            sys::nftnl_set_set_str(s, sys::NFTNL_SET_TABLE as u16, self.table.as_ptr());
            sys::nftnl_set_set_str(s, sys::NFTNL_SET_NAME as u16, name.as_ptr());
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_FAMILY as u16, FAMILY as u32);
            if let Some(id) = self.set_id {
                sys::nftnl_set_set_u32(s, sys::NFTNL_SET_ID as u16, id);
            }
            for (key, verdict) in self.elems {
                let e = sys::nftnl_set_elem_alloc();
                if e.is_null() {
                    std::process::abort();
                }
                sys::nftnl_set_elem_set(
                    e,
                    sys::NFTNL_SET_ELEM_KEY as u16,
                    key.as_ptr() as *const c_void,
                    key.len() as u32,
                );
                if let Some((code, chain)) = verdict
                    && msg_type == MsgType::Add
                {
                    let c = cstring(chain);
                    sys::nftnl_set_elem_set_u32(e, sys::NFTNL_SET_ELEM_VERDICT as u16, *code as u32);
                    sys::nftnl_set_elem_set_str(e, sys::NFTNL_SET_ELEM_CHAIN as u16, c.as_ptr());
                }
                sys::nftnl_set_elem_add(s, e); // the set owns the element now
            }
            let (ty, flags) = match msg_type {
                MsgType::Add => (NFT_MSG_NEWSETELEM, libc::NLM_F_CREATE as u16),
                MsgType::Del => (NFT_MSG_DELSETELEM, 0),
            };
            let hdr = sys::nftnl_nlmsg_build_hdr(buf as *mut c_char, SUBSYS | ty, FAMILY, flags, seq);
            sys::nftnl_set_elems_nlmsg_build_payload(hdr, s);
            sys::nftnl_set_free(s);
        }
    }
}

/// A named counter object to create or delete.
pub struct CounterMsg<'a> {
    pub table: &'a CStr,
    pub name: &'a str,
}

// SAFETY: as for `SetMsg`.
unsafe impl NlMsg for CounterMsg<'_> {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        unsafe {
            let o = sys::nftnl_obj_alloc();
            if o.is_null() {
                std::process::abort();
            }
            let name = cstring(self.name);
            sys::nftnl_obj_set_str(o, sys::NFTNL_OBJ_TABLE as u16, self.table.as_ptr());
            sys::nftnl_obj_set_str(o, sys::NFTNL_OBJ_NAME as u16, name.as_ptr());
            sys::nftnl_obj_set_u32(o, sys::NFTNL_OBJ_TYPE as u16, NFT_OBJECT_COUNTER);
            sys::nftnl_obj_set_u32(o, sys::NFTNL_OBJ_FAMILY as u16, FAMILY as u32);
            let (ty, flags) = match msg_type {
                MsgType::Add => (NFT_MSG_NEWOBJ, libc::NLM_F_CREATE as u16),
                MsgType::Del => (NFT_MSG_DELOBJ, 0),
            };
            let hdr = sys::nftnl_nlmsg_build_hdr(buf as *mut c_char, SUBSYS | ty, FAMILY, flags, seq);
            sys::nftnl_obj_nlmsg_build_payload(hdr, o);
            sys::nftnl_obj_free(o);
        }
    }
}

/// The last message of every transaction: "add table" (a no-op on the existing table), the only
/// one asking for an acknowledgement.
struct Sentinel<'a>(&'a CStr);

// SAFETY: as for `SetMsg`.
unsafe impl NlMsg for Sentinel<'_> {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, _msg_type: MsgType) {
        unsafe {
            let t = sys::nftnl_table_alloc();
            if t.is_null() {
                std::process::abort();
            }
            sys::nftnl_table_set_str(t, sys::NFTNL_TABLE_NAME as u16, self.0.as_ptr());
            let hdr = sys::nftnl_nlmsg_build_hdr(
                buf as *mut c_char,
                SUBSYS | NFT_MSG_NEWTABLE,
                FAMILY,
                libc::NLM_F_ACK as u16,
                seq,
            );
            sys::nftnl_table_nlmsg_build_payload(hdr, t);
            sys::nftnl_table_free(t);
        }
    }
}

/// One transaction being built: an `nftnl` batch (messages numbered from 2, after the batch
/// header).
pub struct Tx {
    batch: Batch,
    messages: usize,
    next_set_id: u32,
}

impl Default for Tx {
    fn default() -> Self {
        Self::new()
    }
}

impl Tx {
    pub fn new() -> Self {
        Self { batch: Batch::new(), messages: 0, next_set_id: 1 }
    }

    pub fn add<T: NlMsg>(&mut self, msg: &T, ty: MsgType) {
        self.batch.add(msg, ty);
        self.messages += 1;
    }

    /// A fresh transaction-local set id.
    pub fn set_id(&mut self) -> u32 {
        self.next_set_id += 1;
        self.next_set_id
    }

    pub fn len(&self) -> usize {
        self.messages
    }

    pub fn is_empty(&self) -> bool {
        self.messages == 0
    }
}

/// A message the kernel refused.
#[derive(Debug, Clone)]
pub struct MsgError {
    /// The message's sequence number in its transaction.
    pub seq: u32,
    pub errno: i32,
    pub message: Option<String>,
}

impl std::fmt::Display for MsgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "message {}: {}", self.seq, std::io::Error::from_raw_os_error(self.errno))?;
        if let Some(m) = &self.message {
            write!(f, " ({m})")?;
        }
        Ok(())
    }
}

/// Why a transaction did not apply.
#[derive(Debug)]
pub enum TxError {
    /// The kernel refused these messages and aborted the transaction: nothing changed.
    Refused(Vec<MsgError>),
    /// Sending or reading failed; whether it applied is unknown.
    Io(anyhow::Error),
}

impl std::fmt::Display for TxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TxError::Refused(errs) => {
                write!(f, "nf_tables refused the transaction:")?;
                for e in errs.iter().take(5) {
                    write!(f, " {e};")?;
                }
                if errs.len() > 5 {
                    write!(f, " … ({} errors)", errs.len())?;
                }
                Ok(())
            }
            TxError::Io(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for TxError {}

/// A netfilter netlink socket, bound in the network namespace of the thread that opened it.
pub struct Socket {
    fd: OwnedFd,
    seq: std::sync::atomic::AtomicU32,
}

fn setsockopt_int(fd: i32, level: i32, opt: i32, v: i32) -> std::io::Result<()> {
    // SAFETY: an int option of the right size.
    let r = unsafe {
        libc::setsockopt(fd, level, opt, &v as *const i32 as *const c_void, std::mem::size_of::<i32>() as u32)
    };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

const RECV_BUF: usize = 1 << 20;
/// How long the kernel may take to answer one transaction (a cold 10,000-service load is seconds).
const ANSWER_TIMEOUT_MS: i32 = 60_000;

impl Socket {
    pub fn open() -> Result<Self> {
        // SAFETY: plain socket calls on a descriptor this function owns.
        unsafe {
            let raw = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_NETFILTER);
            if raw < 0 {
                return Err(std::io::Error::last_os_error()).context("opening a netfilter netlink socket");
            }
            let fd = OwnedFd::from_raw_fd(raw);
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as u16;
            if libc::bind(
                raw,
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            ) < 0
            {
                return Err(std::io::Error::last_os_error()).context("binding the netlink socket");
            }
            // Whole transactions go in one sendmsg: allow large ones (root may exceed wmem_max).
            if setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 256 << 20).is_err() {
                let _ = setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_SNDBUF, 256 << 20);
            }
            if setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 16 << 20).is_err() {
                let _ = setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, 16 << 20);
            }
            // Error texts, and errors that do not echo the whole (large) message.
            let _ = setsockopt_int(raw, libc::SOL_NETLINK, libc::NETLINK_EXT_ACK, 1);
            let _ = setsockopt_int(raw, libc::SOL_NETLINK, libc::NETLINK_CAP_ACK, 1);
            Ok(Self { fd, seq: std::sync::atomic::AtomicU32::new(1 << 20) })
        }
    }

    fn next_seq(&self) -> u32 {
        self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Reads whatever is queued (answers of an earlier, interrupted exchange).
    fn drain(&self) {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            // SAFETY: recv into a buffer we own.
            let n = unsafe {
                libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr() as *mut c_void, buf.len(), libc::MSG_DONTWAIT)
            };
            if n <= 0 {
                return;
            }
        }
    }

    fn send_iov(&self, parts: &[&[u8]]) -> Result<()> {
        let mut iov: Vec<libc::iovec> =
            parts.iter().map(|p| libc::iovec { iov_base: p.as_ptr() as *mut c_void, iov_len: p.len() }).collect();
        let total: usize = parts.iter().map(|p| p.len()).sum();
        // SAFETY: the iovecs point into buffers alive for the call; the kernel is the peer.
        let sent = unsafe {
            let mut dst: libc::sockaddr_nl = std::mem::zeroed();
            dst.nl_family = libc::AF_NETLINK as u16;
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_name = &mut dst as *mut _ as *mut c_void;
            msg.msg_namelen = std::mem::size_of::<libc::sockaddr_nl>() as u32;
            msg.msg_iov = iov.as_mut_ptr();
            msg.msg_iovlen = iov.len();
            libc::sendmsg(self.fd.as_raw_fd(), &msg, 0)
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("sending {total} bytes to nf_tables"));
        }
        if sent as usize != total {
            bail!("nf_tables took {sent} of {total} bytes");
        }
        Ok(())
    }

    /// Receives one datagram, waiting up to `timeout_ms`; `None` on timeout.
    fn recv_within(&self, buf: &mut [u8], timeout_ms: i32) -> Result<Option<usize>> {
        let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if n < 0 {
            return Err(std::io::Error::last_os_error()).context("waiting for nf_tables");
        }
        if n == 0 {
            return Ok(None);
        }
        // SAFETY: recv into a buffer we own.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr() as *mut c_void, buf.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error()).context("reading nf_tables' answer");
        }
        Ok(Some(n as usize))
    }

    /// Receives one datagram, waiting up to the answer timeout.
    fn recv(&self, buf: &mut [u8]) -> Result<usize> {
        self.recv_within(buf, ANSWER_TIMEOUT_MS)?
            .with_context(|| format!("nf_tables did not answer within {} s", ANSWER_TIMEOUT_MS / 1000))
    }

    /// Sends `tx` as one transaction (one `sendmsg`) and waits for the kernel's verdict. With
    /// `sentinel` an acknowledged no-op "add table" ends the transaction; without, the caller's
    /// last message must ask for the acknowledgement itself.
    pub fn commit(&self, table: &CStr, mut tx: Tx, sentinel: bool) -> std::result::Result<(), TxError> {
        if tx.is_empty() {
            return Ok(());
        }
        if sentinel {
            tx.add(&Sentinel(table), MsgType::Add);
        }
        let last_seq = tx.len() as u32 + 1;
        let batch: FinalizedBatch = tx.batch.finalize();
        let parts: Vec<&[u8]> = batch.iter().collect();
        self.drain();
        self.send_iov(&parts).map_err(TxError::Io)?;
        let mut errors = Vec::new();
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            // Once errors arrived, the acknowledgement follows at once (unless the kernel stopped
            // early: out of memory, or a refused batch header).
            let wait = if errors.is_empty() { ANSWER_TIMEOUT_MS } else { 1000 };
            let n = match self.recv_within(&mut buf, wait).map_err(TxError::Io)? {
                Some(n) => n,
                None if !errors.is_empty() => break,
                None => {
                    return Err(TxError::Io(anyhow::anyhow!(
                        "nf_tables did not answer within {} s",
                        ANSWER_TIMEOUT_MS / 1000
                    )));
                }
            };
            let mut done = false;
            for m in messages(&buf[..n]) {
                if m.ty != libc::NLMSG_ERROR as u16 {
                    continue;
                }
                let Some(err) = parse_error(&m) else { continue };
                if err.errno != 0 {
                    errors.push(MsgError { seq: err.seq, errno: err.errno, message: err.message });
                }
                // The batch header refused (no CAP_NET_ADMIN): nothing else will come.
                if err.seq == last_seq || (err.seq <= 1 && err.errno != 0) {
                    done = true;
                }
            }
            if done {
                break;
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(TxError::Refused(errors)) }
    }

    /// A dump request; `payload` appends the attributes that select what is dumped. Returns
    /// every answer message (header included).
    fn dump(&self, ty: u16, payload: impl FnOnce(*mut libc::nlmsghdr)) -> Result<Vec<Vec<u8>>> {
        let mut req = vec![0u8; 8192];
        let seq = self.next_seq();
        // SAFETY: the header and the few attributes fit in the buffer.
        let len = unsafe {
            let hdr = sys::nftnl_nlmsg_build_hdr(
                req.as_mut_ptr() as *mut c_char,
                SUBSYS | ty,
                FAMILY,
                (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
                seq,
            );
            payload(hdr);
            (*hdr).nlmsg_len as usize
        };
        req.truncate(len);
        self.dump_raw(&req, seq)
    }

    /// Sends a complete dump request (sequence number `seq`) and returns every answer message.
    pub fn dump_raw(&self, req: &[u8], seq: u32) -> Result<Vec<Vec<u8>>> {
        self.drain();
        self.send_iov(&[req])?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            let n = self.recv(&mut buf)?;
            for m in messages(&buf[..n]) {
                if m.seq != seq {
                    continue;
                }
                if m.ty == libc::NLMSG_DONE as u16 {
                    return Ok(out);
                }
                if m.ty == libc::NLMSG_ERROR as u16 {
                    if let Some(e) = parse_error(&m)
                        && e.errno != 0
                    {
                        return Err(std::io::Error::from_raw_os_error(e.errno)).context("netfilter dump");
                    }
                    continue;
                }
                out.push(m.raw.to_vec());
            }
        }
    }

    /// Sends requests that each ask for an acknowledgement (sequence numbers `first_seq..`, one
    /// per request, in one datagram) and returns the error of each (0: done).
    pub fn requests(&self, reqs: &[Vec<u8>], first_seq: u32) -> Result<Vec<i32>> {
        if reqs.is_empty() {
            return Ok(Vec::new());
        }
        let parts: Vec<&[u8]> = reqs.iter().map(Vec::as_slice).collect();
        self.drain();
        self.send_iov(&parts)?;
        let mut out = vec![None; reqs.len()];
        let mut left = reqs.len();
        let mut buf = vec![0u8; RECV_BUF];
        while left > 0 {
            let n = self.recv(&mut buf)?;
            for m in messages(&buf[..n]) {
                if m.ty != libc::NLMSG_ERROR as u16 {
                    continue;
                }
                let Some(e) = parse_error(&m) else { continue };
                let i = e.seq.wrapping_sub(first_seq) as usize;
                if i < out.len() && out[i].is_none() {
                    out[i] = Some(e.errno);
                    left -= 1;
                }
            }
        }
        Ok(out.into_iter().map(|e| e.unwrap_or(0)).collect())
    }

    /// Sequence numbers for `n` requests.
    pub fn seqs(&self, n: u32) -> u32 {
        self.seq.fetch_add(n.max(1), std::sync::atomic::Ordering::Relaxed)
    }

    /// The names of the table's chains; `None` if the table does not exist.
    pub fn chains(&self, table: &CStr) -> Result<Option<Vec<String>>> {
        let msgs = match self.dump(NFT_MSG_GETCHAIN, |hdr| unsafe {
            let c = sys::nftnl_chain_alloc();
            sys::nftnl_chain_set_str(c, sys::NFTNL_CHAIN_TABLE as u16, table.as_ptr());
            sys::nftnl_chain_nlmsg_build_payload(hdr, c);
            sys::nftnl_chain_free(c);
        }) {
            Ok(m) => m,
            Err(e) if is_enoent(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for m in msgs {
            // SAFETY: parsing a complete message the kernel sent into a fresh object.
            unsafe {
                let c = sys::nftnl_chain_alloc();
                if sys::nftnl_chain_nlmsg_parse(m.as_ptr() as *const libc::nlmsghdr, c) >= 0
                    && cstr_of(sys::nftnl_chain_get_str(c, sys::NFTNL_CHAIN_TABLE as u16)) == Some(table)
                    && let Some(n) = cstr_of(sys::nftnl_chain_get_str(c, sys::NFTNL_CHAIN_NAME as u16))
                {
                    out.push(n.to_string_lossy().into_owned());
                }
                sys::nftnl_chain_free(c);
            }
        }
        Ok(Some(out))
    }

    /// The table's named sets: name and default timeout (ms) if any.
    pub fn sets(&self, table: &CStr) -> Result<Vec<(String, Option<u64>)>> {
        let msgs = self.dump(NFT_MSG_GETSET, |hdr| unsafe {
            let s = sys::nftnl_set_alloc();
            sys::nftnl_set_set_str(s, sys::NFTNL_SET_TABLE as u16, table.as_ptr());
            sys::nftnl_set_nlmsg_build_payload(hdr, s);
            sys::nftnl_set_free(s);
        })?;
        let mut out = Vec::new();
        for m in msgs {
            // SAFETY: as in `chains`.
            unsafe {
                let s = sys::nftnl_set_alloc();
                if sys::nftnl_set_nlmsg_parse(m.as_ptr() as *const libc::nlmsghdr, s) >= 0
                    && cstr_of(sys::nftnl_set_get_str(s, sys::NFTNL_SET_TABLE as u16)) == Some(table)
                    && let Some(n) = cstr_of(sys::nftnl_set_get_str(s, sys::NFTNL_SET_NAME as u16))
                {
                    let timeout = sys::nftnl_set_is_set(s, sys::NFTNL_SET_TIMEOUT as u16)
                        .then(|| sys::nftnl_set_get_u64(s, sys::NFTNL_SET_TIMEOUT as u16));
                    out.push((n.to_string_lossy().into_owned(), timeout));
                }
                sys::nftnl_set_free(s);
            }
        }
        Ok(out)
    }

    /// The elements of a map: key bytes and the chain of their verdict.
    pub fn map_elements(&self, table: &CStr, set: &str) -> Result<Vec<(Vec<u8>, Option<String>)>> {
        let name = cstring(set);
        let msgs = self.dump(NFT_MSG_GETSETELEM, |hdr| unsafe {
            let s = sys::nftnl_set_alloc();
            sys::nftnl_set_set_str(s, sys::NFTNL_SET_TABLE as u16, table.as_ptr());
            sys::nftnl_set_set_str(s, sys::NFTNL_SET_NAME as u16, name.as_ptr());
            sys::nftnl_set_elems_nlmsg_build_payload(hdr, s);
            sys::nftnl_set_free(s);
        })?;
        let mut out = Vec::new();
        for m in msgs {
            // SAFETY: as in `chains`; element data is copied out before the set is freed.
            unsafe {
                let s = sys::nftnl_set_alloc();
                if sys::nftnl_set_elems_nlmsg_parse(m.as_ptr() as *const libc::nlmsghdr, s) >= 0 {
                    let it = sys::nftnl_set_elems_iter_create(s);
                    if !it.is_null() {
                        let mut e = sys::nftnl_set_elems_iter_cur(it);
                        while !e.is_null() {
                            let mut len = 0u32;
                            let k = sys::nftnl_set_elem_get(e, sys::NFTNL_SET_ELEM_KEY as u16, &mut len);
                            let key = if k.is_null() {
                                Vec::new()
                            } else {
                                std::slice::from_raw_parts(k as *const u8, len as usize).to_vec()
                            };
                            let chain = cstr_of(sys::nftnl_set_elem_get_str(e, sys::NFTNL_SET_ELEM_CHAIN as u16))
                                .map(|c| c.to_string_lossy().into_owned());
                            out.push((key, chain));
                            e = sys::nftnl_set_elems_iter_next(it);
                        }
                        sys::nftnl_set_elems_iter_destroy(it);
                    }
                }
                sys::nftnl_set_free(s);
            }
        }
        Ok(out)
    }

    /// The table's named counters: name → packets.
    pub fn counters(&self, table: &CStr) -> Result<Vec<(String, u64)>> {
        let msgs = self.dump(NFT_MSG_GETOBJ, |hdr| unsafe {
            let o = sys::nftnl_obj_alloc();
            sys::nftnl_obj_set_str(o, sys::NFTNL_OBJ_TABLE as u16, table.as_ptr());
            sys::nftnl_obj_set_u32(o, sys::NFTNL_OBJ_TYPE as u16, NFT_OBJECT_COUNTER);
            sys::nftnl_obj_nlmsg_build_payload(hdr, o);
            sys::nftnl_obj_free(o);
        })?;
        let mut out = Vec::new();
        for m in msgs {
            // SAFETY: as in `chains`.
            unsafe {
                let o = sys::nftnl_obj_alloc();
                if sys::nftnl_obj_nlmsg_parse(m.as_ptr() as *const libc::nlmsghdr, o) >= 0
                    && sys::nftnl_obj_get_u32(o, sys::NFTNL_OBJ_TYPE as u16) == NFT_OBJECT_COUNTER
                    && cstr_of(sys::nftnl_obj_get_str(o, sys::NFTNL_OBJ_TABLE as u16)) == Some(table)
                    && let Some(n) = cstr_of(sys::nftnl_obj_get_str(o, sys::NFTNL_OBJ_NAME as u16))
                {
                    out.push((
                        n.to_string_lossy().into_owned(),
                        sys::nftnl_obj_get_u64(o, sys::NFTNL_OBJ_CTR_PKTS as u16),
                    ));
                }
                sys::nftnl_obj_free(o);
            }
        }
        Ok(out)
    }
}

fn is_enoent(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().and_then(|io| io.raw_os_error()) == Some(libc::ENOENT))
}

/// # Safety
/// `p` is null or a NUL-terminated string that outlives the returned reference's use.
unsafe fn cstr_of<'a>(p: *const c_char) -> Option<&'a CStr> {
    if p.is_null() { None } else { Some(unsafe { CStr::from_ptr(p) }) }
}

pub struct Message<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    /// The whole message, header included.
    pub raw: &'a [u8],
}

/// The netlink messages of one datagram.
pub fn messages(mut buf: &[u8]) -> impl Iterator<Item = Message<'_>> {
    std::iter::from_fn(move || {
        if buf.len() < 16 {
            return None;
        }
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
        if len < 16 || len > buf.len() {
            return None;
        }
        let m = Message {
            ty: u16::from_ne_bytes(buf[4..6].try_into().unwrap()),
            flags: u16::from_ne_bytes(buf[6..8].try_into().unwrap()),
            seq: u32::from_ne_bytes(buf[8..12].try_into().unwrap()),
            raw: &buf[..len],
        };
        let aligned = (len + 3) & !3;
        buf = &buf[aligned.min(buf.len())..];
        Some(m)
    })
}

struct ParsedError {
    errno: i32,
    /// Sequence number of the message answered.
    seq: u32,
    message: Option<String>,
}

/// An `NLMSG_ERROR`: the error (0 for an acknowledgement), the request it answers, and the
/// extended-ack text if the kernel gave one.
fn parse_error(m: &Message<'_>) -> Option<ParsedError> {
    let b = m.raw;
    if b.len() < 16 + 4 + 16 {
        return None;
    }
    let error = i32::from_ne_bytes(b[16..20].try_into().unwrap());
    let orig_len = u32::from_ne_bytes(b[20..24].try_into().unwrap()) as usize;
    let seq = u32::from_ne_bytes(b[28..32].try_into().unwrap());
    let mut message = None;
    const NLM_F_CAPPED: u16 = 0x100;
    const NLM_F_ACK_TLVS: u16 = 0x200;
    if m.flags & NLM_F_ACK_TLVS != 0 {
        let echoed = if m.flags & NLM_F_CAPPED != 0 || error == 0 { 16 } else { orig_len };
        let mut off = 20 + ((echoed + 3) & !3);
        while off + 4 <= b.len() {
            let alen = u16::from_ne_bytes(b[off..off + 2].try_into().unwrap()) as usize;
            let aty = u16::from_ne_bytes(b[off + 2..off + 4].try_into().unwrap()) & 0x3fff;
            if alen < 4 || off + alen > b.len() {
                break;
            }
            if aty == 1 {
                // NLMSGERR_ATTR_MSG
                let s = &b[off + 4..off + alen];
                let s = s.split(|c| *c == 0).next().unwrap_or(s);
                message = Some(String::from_utf8_lossy(s).into_owned());
            }
            off += (alen + 3) & !3;
        }
    }
    Some(ParsedError { errno: -error, seq, message })
}
