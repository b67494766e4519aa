//! Re-steering of connected UDP sockets away from removed backends.
//!
//! The socket programs translate a connected UDP socket once, at `connect()`; after that the
//! kernel sends every datagram to the chosen backend without asking a program again (the
//! `cgroup/sendmsg4` hook runs only for sends that name a destination). A resolver that keeps
//! one connected socket (nginx, haproxy, glibc with `single-request-reopen` off) would talk to a
//! removed backend forever — cilium/cilium#12859. So when a backend leaves a UDP service, the
//! agent aborts the sockets the programs had connected to it through that service, the way
//! `ss -K` does: `SOCK_DESTROY` over `NETLINK_SOCK_DIAG` (kernel `udp_abort()`, which needs
//! `CONFIG_INET_DIAG_DESTROY`). The application gets `ECONNABORTED` (or `EDESTADDRREQ` on its next
//! send, the socket now being unconnected); its reconnect runs `connect4` again, which picks a live
//! backend.
//!
//! Only sockets the programs translated are touched: the reverse-translation map
//! (`SKIFF_RNAT_V1`) holds each translated socket's cookie with the service address it asked for,
//! and `sock_diag` reports the same cookie. A socket connected to the backend's address directly is
//! left alone. Sockets live in many network namespaces (one per pod) and `sock_diag` answers for
//! one, so the scan enters each namespace that a process on the machine is in, from a short-lived
//! thread (`setns` changes only the calling thread's namespace).

use anyhow::{Context, Result, bail};
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_HDR_LEN: usize = 16;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad (1 byte each), states (u32), sockid.
const REQ_LEN: usize = 8 + SOCKID_LEN;
/// `struct inet_diag_sockid`: sport, dport (be16), src[4], dst[4] (be32), if (u32), cookie[2].
const SOCKID_LEN: usize = 48;

/// A connected UDP socket as `sock_diag` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpSocketId {
    /// The raw `inet_diag_sockid`, replayed verbatim in `SOCK_DESTROY` (the kernel finds the
    /// socket by its addresses and checks the cookie).
    raw: [u8; SOCKID_LEN],
}

impl UdpSocketId {
    /// Peer address and port.
    pub fn peer(&self) -> (Ipv4Addr, u16) {
        let r = &self.raw;
        (Ipv4Addr::new(r[20], r[21], r[22], r[23]), u16::from_be_bytes([r[2], r[3]]))
    }

    /// The socket cookie (`bpf_get_socket_cookie()` of the same socket).
    pub fn cookie(&self) -> u64 {
        let r = &self.raw;
        let lo = u32::from_ne_bytes([r[40], r[41], r[42], r[43]]) as u64;
        let hi = u32::from_ne_bytes([r[44], r[45], r[46], r[47]]) as u64;
        lo | (hi << 32)
    }
}

/// The network namespaces of all processes on the machine, one path per namespace (found by
/// inode), the caller's own first.
pub fn network_namespaces() -> Vec<std::path::PathBuf> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let own = std::path::PathBuf::from("/proc/thread-self/ns/net");
    if let Ok(m) = std::fs::metadata(&own) {
        seen.insert((m.dev(), m.ino()));
    }
    out.push(own);
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        if !e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let p = e.path().join("ns/net");
        // Processes come and go; one that exited is simply skipped.
        if let Ok(m) = std::fs::metadata(&p)
            && seen.insert((m.dev(), m.ino()))
        {
            out.push(p);
        }
    }
    out
}

/// Runs `f` in the network namespace `ns` (a `/proc/<pid>/ns/net` path) on a thread of its own.
pub fn in_namespace<T: Send + 'static>(
    ns: &std::path::Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let file = std::fs::File::open(ns).with_context(|| format!("opening {}", ns.display()))?;
    std::thread::spawn(move || {
        // SAFETY: plain syscall on a valid fd; affects only this thread, which ends after `f`.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setns");
        }
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
}

fn netlink_socket() -> Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_SOCK_DIAG) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("opening a NETLINK_SOCK_DIAG socket");
    }
    // SAFETY: `fd` is a new, valid descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval { tv_sec: 2, tv_usec: 0 };
    // SAFETY: valid fd and option buffer. Without a timeout a lost reply would hang the agent.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    Ok(fd)
}

fn request(kind: u16, flags: u16, seq: u32, sockid: &[u8; SOCKID_LEN]) -> Vec<u8> {
    let len = NLMSG_HDR_LEN + REQ_LEN;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // to the kernel
    m.push(libc::AF_INET as u8);
    m.push(libc::IPPROTO_UDP as u8);
    m.extend_from_slice(&[0, 0]); // ext, pad
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    m.extend_from_slice(sockid);
    m
}

fn send(fd: &OwnedFd, msg: &[u8]) -> Result<()> {
    // SAFETY: valid fd and buffer; the default destination of a netlink socket is the kernel.
    let n = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error()).context("sending a sock_diag request");
    }
    Ok(())
}

/// Reads netlink messages until `DONE`/`ERROR`, calling `each` with every `(type, payload)`.
/// Returns the errno of an `NLMSG_ERROR` (0 is an acknowledgement).
fn receive(fd: &OwnedFd, seq: u32, mut each: impl FnMut(u16, &[u8])) -> Result<i32> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: valid fd and buffer.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error()).context("reading a sock_diag reply");
        }
        let mut rest = &buf[..n as usize];
        while rest.len() >= NLMSG_HDR_LEN {
            let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(rest[4..6].try_into().unwrap());
            let mseq = u32::from_ne_bytes(rest[8..12].try_into().unwrap());
            if len < NLMSG_HDR_LEN || len > rest.len() {
                bail!("malformed netlink message (length {len})");
            }
            let payload = &rest[NLMSG_HDR_LEN..len];
            if mseq == seq {
                match kind as libc::c_int {
                    libc::NLMSG_DONE => return Ok(0),
                    libc::NLMSG_ERROR => {
                        let errno = payload.get(0..4).map(|b| i32::from_ne_bytes(b.try_into().unwrap())).unwrap_or(0);
                        return Ok(-errno);
                    }
                    _ => each(kind, payload),
                }
            }
            // Messages are 4-byte aligned.
            let step = (len + 3) & !3;
            rest = rest.get(step..).unwrap_or_default();
        }
    }
}

/// Connected IPv4 UDP sockets of the calling thread's network namespace whose peer is one of
/// `peers`.
pub fn connected_udp_sockets(peers: &HashSet<(Ipv4Addr, u16)>) -> Result<Vec<UdpSocketId>> {
    let fd = netlink_socket()?;
    let seq = 1;
    send(&fd, &request(SOCK_DIAG_BY_FAMILY, (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16, seq, &[0; SOCKID_LEN]))?;
    let mut out = Vec::new();
    let errno = receive(&fd, seq, |kind, payload| {
        // `struct inet_diag_msg`: family, state, timer, retrans (1 byte each), then the sockid.
        if kind != SOCK_DIAG_BY_FAMILY || payload.len() < 4 + SOCKID_LEN {
            return;
        }
        let id = UdpSocketId { raw: payload[4..4 + SOCKID_LEN].try_into().unwrap() };
        if peers.contains(&id.peer()) {
            out.push(id);
        }
    })?;
    if errno != 0 {
        bail!("sock_diag dump failed: {}", std::io::Error::from_raw_os_error(errno));
    }
    Ok(out)
}

/// Aborts one socket (`SOCK_DESTROY`). A socket that closed meanwhile is not an error.
pub fn destroy(id: &UdpSocketId) -> Result<()> {
    let fd = netlink_socket()?;
    let seq = 2;
    send(&fd, &request(SOCK_DESTROY, (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16, seq, &id.raw))?;
    match receive(&fd, seq, |_, _| {})? {
        0 | libc::ENOENT => Ok(()),
        libc::EOPNOTSUPP => bail!("the kernel cannot destroy sockets (CONFIG_INET_DIAG_DESTROY is off)"),
        errno => Err(std::io::Error::from_raw_os_error(errno)).context("SOCK_DESTROY"),
    }
}

/// In every network namespace on the machine, aborts the connected UDP sockets whose peer is a
/// key of `removed` and for which `translated(cookie, peer)` says the programs connected them
/// through the service that lost that backend. Returns how many sockets were aborted.
pub fn abort_udp_sockets(
    removed: &HashSet<(Ipv4Addr, u16)>,
    translated: impl Fn(u64, (Ipv4Addr, u16)) -> bool,
) -> Result<usize> {
    if removed.is_empty() {
        return Ok(0);
    }
    let mut aborted = 0;
    let mut first_err = None;
    for ns in network_namespaces() {
        let peers = removed.clone();
        let found = match in_namespace(&ns, move || connected_udp_sockets(&peers)) {
            Ok(f) => f,
            Err(e) => {
                // A process that exited with its namespace: nothing left to abort there.
                tracing::debug!("scanning UDP sockets in {}: {e:#}", ns.display());
                continue;
            }
        };
        let victims: Vec<UdpSocketId> = found.into_iter().filter(|id| translated(id.cookie(), id.peer())).collect();
        if victims.is_empty() {
            continue;
        }
        let n = victims.len();
        match in_namespace(&ns, move || victims.iter().try_for_each(destroy)) {
            Ok(()) => aborted += n,
            Err(e) => {
                first_err.get_or_insert(e.context(format!("aborting UDP sockets in {}", ns.display())));
            }
        }
    }
    match first_err {
        Some(e) if aborted == 0 => Err(e),
        Some(e) => {
            tracing::warn!("{e:#}");
            Ok(aborted)
        }
        None => Ok(aborted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockid_fields_decode_as_the_kernel_writes_them() {
        let mut raw = [0u8; SOCKID_LEN];
        raw[0..2].copy_from_slice(&5353u16.to_be_bytes());
        raw[2..4].copy_from_slice(&53u16.to_be_bytes());
        raw[20..24].copy_from_slice(&[10, 244, 0, 7]);
        raw[40..44].copy_from_slice(&0x89ab_cdefu32.to_ne_bytes());
        raw[44..48].copy_from_slice(&0x0123_4567u32.to_ne_bytes());
        let id = UdpSocketId { raw };
        assert_eq!(id.peer(), (Ipv4Addr::new(10, 244, 0, 7), 53));
        assert_eq!(id.cookie(), 0x0123_4567_89ab_cdef);
    }

    #[test]
    fn a_dump_of_this_namespace_finds_a_connected_socket() {
        // Needs no privilege: sock_diag dumps of one's own namespace are allowed.
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.connect(peer.local_addr().unwrap()).unwrap();
        let want = (Ipv4Addr::LOCALHOST, peer.local_addr().unwrap().port());
        let found = connected_udp_sockets(&HashSet::from([want])).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].peer(), want);
        assert_ne!(found[0].cookie(), 0);
    }
}
