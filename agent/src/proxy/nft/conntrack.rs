//! UDP flows to removed backends, deleted from conntrack (ctnetlink), as kube-proxy does: a UDP
//! "connection" is a conntrack entry that keeps its translation for as long as packets flow, so a
//! client reusing its socket would keep reaching a backend the service no longer has. Deleting
//! the entry makes its next packet a new flow, translated to a live backend. (TCP needs nothing:
//! a removed backend's connections end on their own, and new ones are never sent there.)

use super::netlink::{Socket, messages};
use anyhow::Result;
use std::net::Ipv4Addr;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// An address and port.
pub type Addr = (Ipv4Addr, u16);
/// A frontend and one of its backends.
pub type Flow = (Addr, Addr);

/// The attributes of a netlink attribute stream: (type, payload, whole attribute).
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8], &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            return None;
        }
        let whole = &b[..len];
        let item = (ty, &b[4..len], whole);
        b = &b[((len + 3) & !3).min(b.len())..];
        Some(item)
    })
}

/// Protocol and addresses of a tuple: (proto, src, dst).
fn tuple(b: &[u8]) -> Option<(u8, Addr, Addr)> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, None, None);
    for (ty, p, _) in attrs(b) {
        match ty {
            CTA_TUPLE_IP => {
                for (t, v, _) in attrs(p) {
                    if v.len() == 4 {
                        let a = Ipv4Addr::new(v[0], v[1], v[2], v[3]);
                        match t {
                            CTA_IP_V4_SRC => src = Some(a),
                            CTA_IP_V4_DST => dst = Some(a),
                            _ => {}
                        }
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (t, v, _) in attrs(p) {
                    match (t, v.len()) {
                        (CTA_PROTO_NUM, 1) => proto = Some(v[0]),
                        (CTA_PROTO_SRC_PORT, 2) => sport = Some(u16::from_be_bytes([v[0], v[1]])),
                        (CTA_PROTO_DST_PORT, 2) => dport = Some(u16::from_be_bytes([v[0], v[1]])),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((proto?, (src?, sport?), (dst?, dport?)))
}

fn header(ty: u16, flags: u16, seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(&0u32.to_ne_bytes()); // length, set at the end
    m.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | ty).to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: AF_INET, NFNETLINK_V0, res_id 0
    m.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]);
    m
}

fn finish(mut m: Vec<u8>) -> Vec<u8> {
    let len = m.len() as u32;
    m[0..4].copy_from_slice(&len.to_ne_bytes());
    m
}

/// Deletes the UDP conntrack entries whose original destination is a frontend of `lost` and
/// whose reply comes from the backend paired with it. Returns how many were deleted.
pub fn delete_udp_flows(sock: &Socket, lost: &[Flow]) -> Result<usize> {
    if lost.is_empty() {
        return Ok(0);
    }
    let seq = sock.seqs(1);
    let req = finish(header(IPCTNL_MSG_CT_GET, (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16, seq));
    let entries = sock.dump_raw(&req, seq)?;
    let mut victims: Vec<Vec<u8>> = Vec::new();
    for e in &entries {
        for m in messages(e) {
            // nlmsghdr (16) + nfgenmsg (4), then the entry's attributes.
            let Some(body) = m.raw.get(20..) else { continue };
            let (mut orig, mut orig_raw, mut reply) = (None, None, None);
            for (ty, p, whole) in attrs(body) {
                match ty {
                    CTA_TUPLE_ORIG => {
                        orig = tuple(p);
                        orig_raw = Some(whole);
                    }
                    CTA_TUPLE_REPLY => reply = tuple(p),
                    _ => {}
                }
            }
            let (Some((proto, _, odst)), Some(raw), Some((_, rsrc, _))) = (orig, orig_raw, reply) else { continue };
            if proto == libc::IPPROTO_UDP as u8 && lost.contains(&(odst, rsrc)) {
                victims.push(raw.to_vec());
            }
        }
    }
    let first = sock.seqs(victims.len() as u32);
    let reqs: Vec<Vec<u8>> = victims
        .iter()
        .enumerate()
        .map(|(i, orig)| {
            let mut m = header(IPCTNL_MSG_CT_DELETE, (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16, first + i as u32);
            m.extend_from_slice(orig);
            while !m.len().is_multiple_of(4) {
                m.push(0);
            }
            finish(m)
        })
        .collect();
    let results = sock.requests(&reqs, first)?;
    // ENOENT: the entry ended in the meantime.
    Ok(results.iter().filter(|e| **e == 0).count())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&ty.to_ne_bytes());
        a.extend_from_slice(payload);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    #[test]
    fn tuples_parse() {
        let ip = [attr(CTA_IP_V4_SRC, &[10, 0, 0, 1]), attr(CTA_IP_V4_DST, &[10, 96, 0, 10])].concat();
        let proto = [
            attr(CTA_PROTO_NUM, &[17]),
            attr(CTA_PROTO_SRC_PORT, &5000u16.to_be_bytes()),
            attr(CTA_PROTO_DST_PORT, &53u16.to_be_bytes()),
        ]
        .concat();
        let t = [attr(CTA_TUPLE_IP | 0x8000, &ip), attr(CTA_TUPLE_PROTO | 0x8000, &proto)].concat();
        assert_eq!(tuple(&t), Some((17, (Ipv4Addr::new(10, 0, 0, 1), 5000), (Ipv4Addr::new(10, 96, 0, 10), 53))));
    }
}
