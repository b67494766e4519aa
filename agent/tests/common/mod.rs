//! Test fixtures shared by the agent's kernel suites: a cgroup of the test's own and loopback
//! backends. Each suite uses what it needs.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{ErrorKind, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

#[allow(unused_imports)] // not every suite uses both
pub use skiff_tests::{CGROUP2_ROOT, OwnCgroup as TestCgroup};

/// A cgroup v2 directory of the test's own (`skiff-test-<pid>-<tag>`), removed on drop.
pub fn test_cgroup(tag: &str) -> TestCgroup {
    TestCgroup::create(&format!("skiff-test-{}-{tag}", std::process::id())).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Loopback backends that answer with their own id, and count what they served.
pub struct Backends {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub addrs: Vec<SocketAddrV4>,
    counts: Arc<Mutex<HashMap<String, u32>>>,
}

impl Backends {
    pub fn tcp(n: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let mut threads = Vec::new();
        let mut addrs = Vec::new();
        for i in 0..n {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.set_nonblocking(true).unwrap();
            let SocketAddr::V4(a) = l.local_addr().unwrap() else { unreachable!() };
            addrs.push(a);
            let id = format!("be{i}");
            let (stop, counts) = (stop.clone(), counts.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((mut s, _)) => {
                            *counts.lock().unwrap().entry(id.clone()).or_insert(0) += 1;
                            let _ = s.set_nonblocking(false);
                            let _ = s.write_all(id.as_bytes());
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_micros(200)),
                        Err(_) => std::thread::sleep(Duration::from_millis(1)),
                    }
                }
            }));
        }
        Backends { stop, threads, addrs, counts }
    }

    pub fn udp(n: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let mut threads = Vec::new();
        let mut addrs = Vec::new();
        for i in 0..n {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            let SocketAddr::V4(a) = s.local_addr().unwrap() else { unreachable!() };
            addrs.push(a);
            let id = format!("be{i}");
            let (stop, counts) = (stop.clone(), counts.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, from)) = s.recv_from(&mut buf) {
                        *counts.lock().unwrap().entry(id.clone()).or_insert(0) += 1;
                        let _ = s.send_to(id.as_bytes(), from);
                    }
                }
            }));
        }
        Backends { stop, threads, addrs, counts }
    }

    pub fn list(&self) -> Vec<(Ipv4Addr, u16)> {
        self.addrs.iter().map(|a| (*a.ip(), a.port())).collect()
    }

    pub fn count(&self, id: &str) -> u32 {
        self.counts.lock().unwrap().get(id).copied().unwrap_or(0)
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
