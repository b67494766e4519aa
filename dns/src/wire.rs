//! The DNS wire format, just as much as the hot path needs: parse a query's header, question and
//! EDNS OPT record without allocating more than the lowercased name, and assemble responses from
//! prepared record bytes. Every read is bounds-checked; malformed input is an `Err`, never a panic.

pub const TYPE_A: u16 = 1;
pub const TYPE_NS: u16 = 2;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_PTR: u16 = 12;
pub const TYPE_TXT: u16 = 16;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_SRV: u16 = 33;
pub const TYPE_OPT: u16 = 41;
pub const TYPE_ANY: u16 = 255;
pub const CLASS_IN: u16 = 1;
pub const CLASS_ANY: u16 = 255;

pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_NOTIMP: u8 = 4;
pub const RCODE_REFUSED: u8 = 5;
/// Extended rcode (EDNS): bad OPT version.
pub const RCODE_BADVERS: u16 = 16;

/// The UDP payload size Skiff advertises and honours at most (the DNS flag day 2020 value).
pub const MAX_UDP_PAYLOAD: usize = 1232;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    pub payload: u16,
    pub version: u8,
    pub dnssec_ok: bool,
}

/// A parsed query. `question` is the raw question section (name, type, class) as the client sent
/// it, echoed back verbatim so the client sees its own spelling.
#[derive(Debug)]
pub struct Query<'a> {
    pub id: u16,
    pub flags: u16,
    pub question: &'a [u8],
    /// The question name in wire form, lowercased, ending with the root label.
    pub qname: Vec<u8>,
    pub qtype: u16,
    pub qclass: u16,
    pub edns: Option<Edns>,
}

impl Query<'_> {
    pub fn opcode(&self) -> u8 {
        ((self.flags >> 11) & 0xF) as u8
    }
    /// The largest response this client accepts over UDP.
    pub fn udp_limit(&self) -> usize {
        match self.edns {
            Some(e) => (e.payload as usize).clamp(512, MAX_UDP_PAYLOAD),
            None => 512,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Not worth an answer: shorter than a header, or a response rather than a query.
    Drop,
    /// Has a usable header: answer FORMERR with this id and flags.
    FormErr { id: u16, flags: u16 },
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_be_bytes([*b.get(i)?, *b.get(i + 1)?, *b.get(i + 2)?, *b.get(i + 3)?]))
}

/// Skips a (possibly compressed) name starting at `i`; returns the offset after it.
pub fn skip_name(b: &[u8], mut i: usize) -> Option<usize> {
    let mut total = 0usize;
    loop {
        let len = *b.get(i)? as usize;
        match len & 0xC0 {
            0x00 => {
                i += 1;
                if len == 0 {
                    return Some(i);
                }
                i += len;
                total += len + 1;
                if total > 255 || i > b.len() {
                    return None;
                }
            }
            0xC0 => {
                b.get(i + 1)?;
                return Some(i + 2);
            }
            _ => return None,
        }
    }
}

/// Reads a possibly compressed name at `i` into lowercase-preserving uncompressed wire form.
/// Returns the name and the offset after it in the message. Pointer loops are cut off.
pub fn read_name(b: &[u8], mut i: usize) -> Option<(Vec<u8>, usize)> {
    let mut out = Vec::with_capacity(64);
    let mut end = None;
    let mut jumps = 0;
    loop {
        let len = *b.get(i)? as usize;
        match len & 0xC0 {
            0x00 => {
                out.push(len as u8);
                if len == 0 {
                    return Some((out, end.unwrap_or(i + 1)));
                }
                out.extend_from_slice(b.get(i + 1..i + 1 + len)?);
                if out.len() > 255 {
                    return None;
                }
                i += 1 + len;
            }
            0xC0 => {
                let target = ((len & 0x3F) << 8) | *b.get(i + 1)? as usize;
                end.get_or_insert(i + 2);
                jumps += 1;
                if jumps > 64 || target >= i {
                    return None;
                }
                i = target;
            }
            _ => return None,
        }
    }
}

/// Skips one resource record at `i`; returns (type, class, ttl, rdata range, next offset).
pub fn parse_rr(b: &[u8], i: usize) -> Option<(u16, u16, u32, std::ops::Range<usize>, usize)> {
    let j = skip_name(b, i)?;
    let ty = u16_at(b, j)?;
    let class = u16_at(b, j + 2)?;
    let ttl = u32_at(b, j + 4)?;
    let rdlen = u16_at(b, j + 8)? as usize;
    let start = j + 10;
    let end = start + rdlen;
    if end > b.len() {
        return None;
    }
    Some((ty, class, ttl, start..end, end))
}

pub fn parse_query(b: &[u8]) -> Result<Query<'_>, ParseError> {
    if b.len() < 12 {
        return Err(ParseError::Drop);
    }
    let id = u16::from_be_bytes([b[0], b[1]]);
    let flags = u16::from_be_bytes([b[2], b[3]]);
    if flags & 0x8000 != 0 {
        return Err(ParseError::Drop);
    }
    let formerr = ParseError::FormErr { id, flags };
    let qd = u16::from_be_bytes([b[4], b[5]]);
    let an = u16::from_be_bytes([b[6], b[7]]);
    let ns = u16::from_be_bytes([b[8], b[9]]);
    let ar = u16::from_be_bytes([b[10], b[11]]);
    if qd != 1 {
        return Err(formerr);
    }
    // The question name: plain labels only (no compression in a question).
    let mut qname = Vec::with_capacity(64);
    let mut i = 12;
    loop {
        let len = *b.get(i).ok_or(ParseError::FormErr { id, flags })? as usize;
        if len & 0xC0 != 0 {
            return Err(formerr);
        }
        let label = b.get(i..i + 1 + len).ok_or(ParseError::FormErr { id, flags })?;
        qname.push(len as u8);
        qname.extend(label[1..].iter().map(|c| c.to_ascii_lowercase()));
        i += 1 + len;
        if qname.len() > 255 {
            return Err(formerr);
        }
        if len == 0 {
            break;
        }
    }
    let qtype = u16_at(b, i).ok_or(ParseError::FormErr { id, flags })?;
    let qclass = u16_at(b, i + 2).ok_or(ParseError::FormErr { id, flags })?;
    let question = &b[12..i + 4];
    i += 4;
    let mut edns = None;
    for n in 0..(an as usize + ns as usize + ar as usize) {
        let Some((ty, class, ttl, rdata, next)) = parse_rr(b, i) else { return Err(formerr) };
        if ty == TYPE_OPT {
            // Only one OPT, in the additional section, owned by the root.
            if n < an as usize + ns as usize || edns.is_some() || b[i] != 0 {
                return Err(formerr);
            }
            let _ = rdata;
            edns = Some(Edns { payload: class, version: (ttl >> 16) as u8, dnssec_ok: ttl & 0x8000 != 0 });
        }
        i = next;
    }
    Ok(Query { id, flags, question, qname, qtype, qclass, edns })
}

/// A response being assembled. Records are appended as prepared bytes with their count.
pub struct Response {
    pub buf: Vec<u8>,
    an: u16,
    ns: u16,
    ar: u16,
    question_end: usize,
}

impl Response {
    /// Header + question. `rcode` is the full (possibly extended) rcode: the low 4 bits go in the header.
    pub fn new(id: u16, query_flags: u16, question: &[u8], rcode: u8, authoritative: bool) -> Response {
        let mut buf = Vec::with_capacity(512);
        let mut flags = 0x8000 | (query_flags & 0x7800) | (query_flags & 0x0100) | 0x0080 | (rcode as u16 & 0xF);
        if authoritative {
            flags |= 0x0400;
        }
        buf.extend_from_slice(&id.to_be_bytes());
        buf.extend_from_slice(&flags.to_be_bytes());
        buf.extend_from_slice(&[0, if question.is_empty() { 0 } else { 1 }, 0, 0, 0, 0, 0, 0]);
        buf.extend_from_slice(question);
        let question_end = buf.len();
        Response { buf, an: 0, ns: 0, ar: 0, question_end }
    }

    pub fn answers(&mut self, bytes: &[u8], count: u16) {
        debug_assert!(self.ns == 0 && self.ar == 0);
        self.buf.extend_from_slice(bytes);
        self.an += count;
    }

    pub fn authority(&mut self, bytes: &[u8], count: u16) {
        debug_assert!(self.ar == 0);
        self.buf.extend_from_slice(bytes);
        self.ns += count;
    }

    pub fn additional(&mut self, bytes: &[u8], count: u16) {
        self.buf.extend_from_slice(bytes);
        self.ar += count;
    }

    /// Appends our OPT record when the query had one. `ext_rcode` is the upper 8 bits of a 12-bit rcode.
    pub fn opt(&mut self, edns: Option<Edns>, ext_rcode: u8) {
        if edns.is_some() {
            self.buf.push(0);
            self.buf.extend_from_slice(&TYPE_OPT.to_be_bytes());
            self.buf.extend_from_slice(&(MAX_UDP_PAYLOAD as u16).to_be_bytes());
            self.buf.extend_from_slice(&[ext_rcode, 0, 0, 0, 0, 0]);
            self.ar += 1;
        }
    }

    /// Finishes the message; if it exceeds `limit`, drops every record but OPT and sets TC.
    pub fn finish(mut self, edns: Option<Edns>, limit: usize) -> Vec<u8> {
        self.buf[6..8].copy_from_slice(&self.an.to_be_bytes());
        self.buf[8..10].copy_from_slice(&self.ns.to_be_bytes());
        self.buf[10..12].copy_from_slice(&self.ar.to_be_bytes());
        if self.buf.len() <= limit {
            return self.buf;
        }
        let mut out = self.buf;
        out.truncate(self.question_end);
        out[2] |= 0x02; // TC
        out[6..12].fill(0);
        let mut r = Response { buf: out, an: 0, ns: 0, ar: 0, question_end: self.question_end };
        r.opt(edns, 0);
        let ar = r.ar;
        r.buf[10..12].copy_from_slice(&ar.to_be_bytes());
        r.buf
    }
}

/// Truncates a complete foreign message (e.g. from upstream) to header + question with TC set.
pub fn truncate_message(msg: &[u8], limit: usize) -> Vec<u8> {
    if msg.len() <= limit || msg.len() < 12 {
        return msg.to_vec();
    }
    let qd = u16::from_be_bytes([msg[4], msg[5]]);
    let mut end = 12;
    if qd == 1 {
        if let Some(j) = skip_name(msg, 12) {
            if j + 4 <= msg.len() {
                end = j + 4;
            }
        }
    }
    let mut out = msg[..end].to_vec();
    out[2] |= 0x02;
    out[4..6].copy_from_slice(&(if end > 12 { 1u16 } else { 0 }).to_be_bytes());
    out[6..12].fill(0);
    out
}

/// A dotted name ("a.b.c", trailing dot optional) in lowercase wire form, or `None` if a label is
/// empty or too long.
pub fn name_to_wire(name: &str) -> Option<Vec<u8>> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let mut out = Vec::with_capacity(name.len() + 2);
    if !name.is_empty() {
        for label in name.split('.') {
            if label.is_empty() || label.len() > 63 {
                return None;
            }
            out.push(label.len() as u8);
            out.extend(label.bytes().map(|c| c.to_ascii_lowercase()));
        }
    }
    out.push(0);
    if out.len() > 255 { None } else { Some(out) }
}

/// Wire-form name → dotted (for logs and tests).
pub fn wire_to_name(w: &[u8]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while let Some(&len) = w.get(i) {
        if len == 0 {
            break;
        }
        let Some(label) = w.get(i + 1..i + 1 + len as usize) else { break };
        out.push_str(&String::from_utf8_lossy(label));
        out.push('.');
        i += 1 + len as usize;
    }
    if out.is_empty() { ".".into() } else { out }
}

/// The labels of a wire-form name, left to right.
pub fn labels(w: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(&len) = w.get(i) {
        if len == 0 {
            break;
        }
        match w.get(i + 1..i + 1 + len as usize) {
            Some(l) => out.push(l),
            None => break,
        }
        i += 1 + len as usize;
    }
    out
}

/// Whether wire name `name` equals `zone` or is below it (both lowercase wire form).
pub fn is_subdomain(name: &[u8], zone: &[u8]) -> bool {
    if name.len() < zone.len() {
        return false;
    }
    if name == zone {
        return true;
    }
    // Walk label boundaries of `name` until the remaining suffix has zone's length.
    let mut i = 0;
    while i < name.len() {
        if name.len() - i == zone.len() {
            return &name[i..] == zone;
        }
        let len = name[i] as usize;
        if len == 0 {
            return false;
        }
        i += 1 + len;
    }
    false
}

/// One resource record, owner given as a compression pointer to `owner_ptr` (0xC00C = the question name).
pub fn rr_ptr_owner(out: &mut Vec<u8>, owner_ptr: u16, ty: u16, ttl: u32, rdata: &[u8]) {
    out.extend_from_slice(&(0xC000 | owner_ptr).to_be_bytes());
    rr_tail(out, ty, ttl, rdata);
}

/// One resource record with an explicit (uncompressed) owner name.
pub fn rr_named(out: &mut Vec<u8>, owner: &[u8], ty: u16, ttl: u32, rdata: &[u8]) {
    out.extend_from_slice(owner);
    rr_tail(out, ty, ttl, rdata);
}

fn rr_tail(out: &mut Vec<u8>, ty: u16, ttl: u32, rdata: &[u8]) {
    out.extend_from_slice(&ty.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(rdata);
}

/// The smallest TTL in a message's answer and authority sections (for caching), `None` if it
/// cannot be parsed.
pub fn min_ttl(msg: &[u8]) -> Option<u32> {
    if msg.len() < 12 {
        return None;
    }
    let qd = u16::from_be_bytes([msg[4], msg[5]]) as usize;
    let an = u16::from_be_bytes([msg[6], msg[7]]) as usize;
    let ns = u16::from_be_bytes([msg[8], msg[9]]) as usize;
    let mut i = 12;
    for _ in 0..qd {
        i = skip_name(msg, i)? + 4;
    }
    let mut min: Option<u32> = None;
    for _ in 0..(an + ns) {
        let (ty, _, ttl, rdata, next) = parse_rr(msg, i)?;
        let ttl = if ty == TYPE_SOA {
            // Negative caching: min(SOA TTL, SOA MINIMUM).
            let m = u32_at(msg, rdata.end.checked_sub(4)?).unwrap_or(ttl);
            ttl.min(m)
        } else {
            ttl
        };
        min = Some(min.map_or(ttl, |m: u32| m.min(ttl)));
        i = next;
    }
    Some(min.unwrap_or(0))
}

pub fn type_name(t: u16) -> &'static str {
    match t {
        TYPE_A => "A",
        TYPE_NS => "NS",
        TYPE_CNAME => "CNAME",
        TYPE_SOA => "SOA",
        TYPE_PTR => "PTR",
        TYPE_TXT => "TXT",
        TYPE_AAAA => "AAAA",
        TYPE_SRV => "SRV",
        TYPE_ANY => "ANY",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, ty: u16, edns: bool) -> Vec<u8> {
        let mut b = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, if edns { 1 } else { 0 }];
        b.extend(name_to_wire(name).unwrap());
        b.extend_from_slice(&ty.to_be_bytes());
        b.extend_from_slice(&CLASS_IN.to_be_bytes());
        if edns {
            b.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0x80, 0, 0, 0]);
        }
        b
    }

    #[test]
    fn parses_queries_and_edns() {
        let b = query("Foo.Default.SVC.cluster.local", TYPE_A, true);
        let q = parse_query(&b).unwrap();
        assert_eq!(q.id, 0x1234);
        assert_eq!(wire_to_name(&q.qname), "foo.default.svc.cluster.local.");
        assert_eq!(q.qtype, TYPE_A);
        assert_eq!(q.edns, Some(Edns { payload: 4096, version: 0, dnssec_ok: true }));
        assert_eq!(q.udp_limit(), MAX_UDP_PAYLOAD);
        assert_eq!(q.question.len(), b.len() - 12 - 11);
    }

    #[test]
    fn malformed_input_never_panics() {
        let good = query("a.b.svc.cluster.local", TYPE_SRV, true);
        for n in 0..good.len() {
            let _ = parse_query(&good[..n]);
        }
        let mut seed = 0x2545F4914F6CDD1Du64;
        for _ in 0..20000 {
            let mut b = good.clone();
            for _ in 0..3 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = (seed as usize) % b.len();
                b[i] = (seed >> 32) as u8;
            }
            let _ = parse_query(&b);
            let _ = min_ttl(&b);
            let _ = truncate_message(&b, 20);
        }
        assert_eq!(parse_query(&[1, 2, 3]).err(), Some(ParseError::Drop));
    }

    #[test]
    fn subdomains() {
        let zone = name_to_wire("cluster.local").unwrap();
        assert!(is_subdomain(&name_to_wire("a.svc.cluster.local").unwrap(), &zone));
        assert!(is_subdomain(&zone, &zone));
        assert!(!is_subdomain(&name_to_wire("xcluster.local").unwrap(), &zone));
        assert!(!is_subdomain(&name_to_wire("example.com").unwrap(), &zone));
    }

    #[test]
    fn truncates_when_too_big() {
        let b = query("a.b.svc.cluster.local", TYPE_A, false);
        let q = parse_query(&b).unwrap();
        let mut r = Response::new(q.id, q.flags, q.question, 0, true);
        let mut rrs = Vec::new();
        for i in 0..100u8 {
            rr_ptr_owner(&mut rrs, 12, TYPE_A, 5, &[10, 0, 0, i]);
        }
        r.answers(&rrs, 100);
        let out = r.finish(None, 512);
        assert!(out.len() <= 512);
        assert_eq!(out[2] & 0x02, 0x02);
        assert_eq!(&out[6..8], &[0, 0]);
    }
}
