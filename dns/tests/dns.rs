//! The cluster DNS server against a real `skiff control`, checked with `dig` (and a raw in-process
//! client for the latency loops). Everything listens on loopback ports picked at run time; the
//! forwarding upstream is a tiny server this test starts on 127.0.0.1 (never the machine's resolver).

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use skiff_dns::{DnsConfig, wire};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug)]
struct Dig {
    status: String,
    flags: Vec<String>,
    /// (type, rdata) of each answer record.
    answer: Vec<(String, String)>,
    authority: Vec<(String, String)>,
    raw: String,
}

impl Dig {
    fn rdata(&self, ty: &str) -> Vec<String> {
        let mut v: Vec<String> = self.answer.iter().filter(|(t, _)| t == ty).map(|(_, r)| r.clone()).collect();
        v.sort();
        v
    }
}

fn dig(server: SocketAddr, name: &str, ty: &str, extra: &[&str]) -> Dig {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+tries=1", "+time=3", name, ty])
        .args(extra)
        .output()
        .expect("dig (dnsutils) is installed");
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut d = Dig { status: String::new(), flags: vec![], answer: vec![], authority: vec![], raw: raw.clone() };
    let mut section = "";
    for line in raw.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            d.status = rest.split(',').next().unwrap_or("").to_string();
        }
        if let Some(rest) = line.strip_prefix(";; flags: ") {
            d.flags = rest.split(';').next().unwrap_or("").split_whitespace().map(String::from).collect();
        }
        if line.starts_with(";; ANSWER SECTION") {
            section = "answer";
            continue;
        }
        if line.starts_with(";; AUTHORITY SECTION") {
            section = "authority";
            continue;
        }
        if line.trim().is_empty() || line.starts_with(';') {
            section = "";
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 5 {
            let rec = (f[3].to_string(), f[4..].join(" "));
            match section {
                "answer" => d.answer.push(rec),
                "authority" => d.authority.push(rec),
                _ => {}
            }
        }
    }
    d
}

/// One raw UDP query; returns (rcode, answer count) or None on timeout.
async fn raw_query(server: SocketAddr, name: &str, qtype: u16) -> Option<(u8, u16)> {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.ok()?;
    let mut q = vec![0xAB, 0xCD, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    q.extend(wire::name_to_wire(name)?);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&wire::CLASS_IN.to_be_bytes());
    sock.send_to(&q, server).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut buf)).await.ok()?.ok()?;
    (n >= 12 && buf[0..2] == [0xAB, 0xCD]).then(|| (buf[3] & 0xF, u16::from_be_bytes([buf[6], buf[7]])))
}

/// A tiny upstream on 127.0.0.1 (UDP and TCP): `example.test` A 192.0.2.1 (TTL 60), `big.test`
/// 60 A records, anything else NXDOMAIN. Counts the queries it gets.
async fn test_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = udp.local_addr().unwrap();
    let tcp = tokio::net::TcpListener::bind(addr).await.unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    fn answer(pkt: &[u8]) -> Option<Vec<u8>> {
        let q = wire::parse_query(pkt).ok()?;
        let name = wire::wire_to_name(&q.qname);
        let mut rrs = Vec::new();
        let mut n = 0;
        let rcode = match (name.as_str(), q.qtype) {
            ("example.test.", wire::TYPE_A) => {
                wire::rr_ptr_owner(&mut rrs, 12, wire::TYPE_A, 60, &[192, 0, 2, 1]);
                n = 1;
                0
            }
            ("big.test.", wire::TYPE_A) => {
                for i in 0..60u8 {
                    wire::rr_ptr_owner(&mut rrs, 12, wire::TYPE_A, 60, &[192, 0, 2, i]);
                }
                n = 60;
                0
            }
            ("example.test.", _) | ("big.test.", _) => 0,
            _ => wire::RCODE_NXDOMAIN,
        };
        let mut r = wire::Response::new(q.id, q.flags, q.question, rcode, true);
        r.answers(&rrs, n);
        r.opt(q.edns, 0);
        Some(r.finish(q.edns, 65535))
    }
    let c = count.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
            c.fetch_add(1, Ordering::SeqCst);
            if let Some(r) = answer(&buf[..n]) {
                let _ = udp.send_to(&r, peer).await;
            }
        }
    });
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = tcp.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut len = [0u8; 2];
                if s.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
                if s.read_exact(&mut buf).await.is_err() {
                    return;
                }
                if let Some(r) = answer(&buf) {
                    let mut out = (r.len() as u16).to_be_bytes().to_vec();
                    out.extend(r);
                    let _ = s.write_all(&out).await;
                }
            });
        }
    });
    (addr, count)
}

async fn create<K>(api: &Api<K>, obj: serde_json::Value) -> K
where
    K: kube::Resource
        + Clone
        + k8s_openapi::serde::de::DeserializeOwned
        + k8s_openapi::serde::Serialize
        + std::fmt::Debug,
{
    let o: K = serde_json::from_value(obj).unwrap();
    api.create(&PostParams::default(), &o).await.expect("create")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_dns_end_to_end() {
    let control = skiff_tests::Control::start().expect("skiff control starts");
    let client = control.client().await.unwrap();
    let (upstream, upstream_count) = test_upstream().await;

    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    // Objects that exist before the server starts.
    let web = create(
        &services,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
               "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}),
    )
    .await;
    let web_ip = web.spec.as_ref().unwrap().cluster_ip.clone().expect("a ClusterIP is allocated");
    create(
        &services,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"},
               "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}}),
    )
    .await;
    let mut endpoints = vec![
        json!({"addresses": ["10.244.0.11"], "hostname": "db-0", "conditions": {"ready": true}}),
        json!({"addresses": ["10.244.0.12"], "conditions": {"ready": true}}),
        json!({"addresses": ["10.244.0.13"], "conditions": {"ready": false}}),
    ];
    create(
        &slices,
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "db-abc", "labels": {"kubernetes.io/service-name": "db"}},
               "addressType": "IPv4", "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
               "endpoints": endpoints.clone()}),
    )
    .await;
    create(
        &services,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ext"},
               "spec": {"type": "ExternalName", "externalName": "example.test"}}),
    )
    .await;

    let config = DnsConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        upstreams: vec![upstream],
        ..DnsConfig::default()
    };
    let server = skiff_dns::start(client.clone(), config).await.unwrap();
    server.wait_synced(Duration::from_secs(20)).await.unwrap();
    let dns = server.dns_addr;

    // A for a ClusterIP service, both name forms, UDP and TCP; authoritative, TTL 5.
    for name in ["web.default.svc.cluster.local", "web.default.cluster.local", "WEB.Default.SVC.Cluster.Local."] {
        for extra in [&[][..], &["+tcp"][..], &["+noedns"][..]] {
            let d = dig(dns, name, "A", extra);
            assert_eq!(d.status, "NOERROR", "{name} {extra:?}: {}", d.raw);
            assert_eq!(d.rdata("A"), vec![web_ip.clone()], "{name} {extra:?}: {}", d.raw);
            assert!(d.flags.contains(&"aa".to_string()), "{}", d.raw);
        }
    }
    let d = dig(dns, "web.default.svc.cluster.local", "A", &[]);
    assert!(
        d.raw.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() == 5 && f[3] == "A" && f[1] == "5"
        }),
        "TTL 5: {}",
        d.raw
    );

    // ANY: every record set of the name.
    let d = dig(dns, "cluster.local", "ANY", &["+tcp"]);
    assert_eq!((d.rdata("SOA").len(), d.rdata("NS").len()), (1, 1), "{}", d.raw);

    // NODATA: the name exists, AAAA does not → NOERROR, no answer, SOA in authority.
    let d = dig(dns, "web.default.svc.cluster.local", "AAAA", &[]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert!(d.answer.is_empty(), "{}", d.raw);
    assert_eq!(d.authority.len(), 1, "{}", d.raw);
    assert_eq!(d.authority[0].0, "SOA", "{}", d.raw);
    // Empty non-terminals exist too.
    assert_eq!(dig(dns, "default.svc.cluster.local", "A", &[]).status, "NOERROR");
    // NXDOMAIN with SOA, over UDP and TCP.
    for extra in [&[][..], &["+tcp"][..]] {
        let d = dig(dns, "nope.default.svc.cluster.local", "A", extra);
        assert_eq!(d.status, "NXDOMAIN", "{}", d.raw);
        assert_eq!(d.authority.first().map(|a| a.0.as_str()), Some("SOA"), "{}", d.raw);
    }
    // The apex answers SOA and NS.
    assert_eq!(dig(dns, "cluster.local", "SOA", &[]).rdata("SOA").len(), 1);
    assert_eq!(dig(dns, "cluster.local", "NS", &[]).rdata("NS"), vec!["ns.dns.cluster.local.".to_string()]);

    // SRV for the named port only.
    let d = dig(dns, "_http._tcp.web.default.svc.cluster.local", "SRV", &[]);
    assert_eq!(d.rdata("SRV"), vec!["0 100 80 web.default.svc.cluster.local.".to_string()], "{}", d.raw);
    assert_eq!(dig(dns, "_nope._tcp.web.default.svc.cluster.local", "SRV", &[]).status, "NXDOMAIN");

    // PTR for the ClusterIP.
    let o: Vec<&str> = web_ip.split('.').rev().collect();
    let d = dig(dns, &format!("{}.in-addr.arpa", o.join(".")), "PTR", &[]);
    assert_eq!(d.rdata("PTR"), vec!["web.default.svc.cluster.local.".to_string()], "{}", d.raw);

    // Headless: the ready endpoint addresses, hostname records, SRV per endpoint.
    let d = dig(dns, "db.default.svc.cluster.local", "A", &[]);
    assert_eq!(d.rdata("A"), vec!["10.244.0.11".to_string(), "10.244.0.12".to_string()], "{}", d.raw);
    assert_eq!(dig(dns, "db.default.cluster.local", "A", &[]).rdata("A").len(), 2);
    assert_eq!(dig(dns, "db-0.db.default.svc.cluster.local", "A", &[]).rdata("A"), vec!["10.244.0.11".to_string()]);
    assert_eq!(
        dig(dns, "10-244-0-12.db.default.svc.cluster.local", "A", &[]).rdata("A"),
        vec!["10.244.0.12".to_string()]
    );
    let d = dig(dns, "_pg._tcp.db.default.svc.cluster.local", "SRV", &[]);
    assert_eq!(
        d.rdata("SRV"),
        vec![
            "0 100 5432 10-244-0-12.db.default.svc.cluster.local.".to_string(),
            "0 100 5432 db-0.db.default.svc.cluster.local.".to_string()
        ],
        "{}",
        d.raw
    );
    assert!(
        d.raw.contains(";; ADDITIONAL SECTION:")
            && d.raw.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["db-0.db.default.svc.cluster.local.", "5", "IN", "A", "10.244.0.11"]),
        "SRV targets' addresses: {}",
        d.raw
    );
    assert_eq!(
        dig(dns, "11.0.244.10.in-addr.arpa", "PTR", &[]).rdata("PTR"),
        vec!["db-0.db.default.svc.cluster.local.".to_string()]
    );

    // ExternalName → CNAME (whatever the type asked).
    let d = dig(dns, "ext.default.svc.cluster.local", "A", &[]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert_eq!(d.rdata("CNAME"), vec!["example.test.".to_string()], "{}", d.raw);
    assert_eq!(d.rdata("A"), vec!["192.0.2.1".to_string()], "the CNAME is followed upstream: {}", d.raw);
    assert_eq!(dig(dns, "ext.default.cluster.local", "CNAME", &[]).rdata("CNAME"), vec!["example.test.".to_string()]);
    create(
        &services,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "inner"},
               "spec": {"type": "ExternalName", "externalName": "web.default.svc.cluster.local"}}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(2);
    while raw_query(dns, "inner.default.svc.cluster.local", wire::TYPE_A).await.map(|r| r.1) != Some(2) {
        assert!(Instant::now() < deadline, "in-cluster ExternalName not followed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let d = dig(dns, "inner.default.svc.cluster.local", "A", &["+tcp"]);
    assert_eq!(d.rdata("CNAME"), vec!["web.default.svc.cluster.local.".to_string()], "{}", d.raw);
    assert_eq!(d.rdata("A"), vec![web_ip.clone()], "{}", d.raw);

    // Forwarding to the loopback upstream, with a cache.
    let d = dig(dns, "example.test", "A", &[]);
    assert_eq!(d.rdata("A"), vec!["192.0.2.1".to_string()], "{}", d.raw);
    let before = upstream_count.load(Ordering::SeqCst);
    let d = dig(dns, "Example.TEST", "A", &["+tcp"]);
    assert_eq!(d.rdata("A"), vec!["192.0.2.1".to_string()], "{}", d.raw);
    assert_eq!(upstream_count.load(Ordering::SeqCst), before, "the second query came from the cache");
    assert_eq!(dig(dns, "missing.test", "A", &[]).status, "NXDOMAIN");
    // A forwarded answer too big for plain UDP is truncated; TCP gets all of it.
    let d = dig(dns, "big.test", "A", &["+noedns", "+ignore"]);
    assert!(d.flags.contains(&"tc".to_string()), "{}", d.raw);
    assert_eq!(dig(dns, "big.test", "A", &["+tcp"]).rdata("A").len(), 60);

    // Truncation of a cluster answer: a headless service with 60 endpoints over plain UDP.
    endpoints.clear();
    for i in 0..60 {
        endpoints.push(json!({"addresses": [format!("10.244.1.{}", i + 1)], "conditions": {"ready": true}}));
    }
    create(
        &services,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "many"},
               "spec": {"clusterIP": "None", "ports": [{"name": "p", "port": 1}]}}),
    )
    .await;
    create(
        &slices,
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "many-1", "labels": {"kubernetes.io/service-name": "many"}},
               "addressType": "IPv4", "endpoints": endpoints}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(2);
    while raw_query(dns, "many.default.svc.cluster.local", wire::TYPE_A).await.map(|r| r.0) != Some(wire::RCODE_NOERROR)
        || dig(dns, "many.default.svc.cluster.local", "A", &["+tcp"]).rdata("A").len() != 60
    {
        assert!(Instant::now() < deadline, "headless service with 60 endpoints did not appear");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let d = dig(dns, "many.default.svc.cluster.local", "A", &["+noedns", "+ignore"]);
    assert!(d.flags.contains(&"tc".to_string()), "{}", d.raw);
    assert_eq!(
        dig(dns, "many.default.svc.cluster.local", "A", &[]).rdata("A").len(),
        60,
        "EDNS 1232 fits 60 A records"
    );
    assert_eq!(
        dig(dns, "many.default.svc.cluster.local", "A", &["+noedns"]).rdata("A").len(),
        60,
        "dig retries over TCP"
    );

    // Pod records, once the pod has an IP.
    create(
        &pods,
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p1"},
               "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
    )
    .await;
    let patch = json!({"status": {"phase": "Running", "podIP": "10.244.0.77", "podIPs": [{"ip": "10.244.0.77"}]}});
    let pod_status = pods.patch_status("p1", &PatchParams::default(), &Patch::Merge(&patch)).await;
    if pod_status.is_ok() {
        let deadline = Instant::now() + Duration::from_secs(2);
        while raw_query(dns, "10-244-0-77.default.pod.cluster.local", wire::TYPE_A).await.map(|r| r.0) != Some(0) {
            assert!(Instant::now() < deadline, "pod record did not appear");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            dig(dns, "10-244-0-77.default.pod.cluster.local", "A", &[]).rdata("A"),
            vec!["10.244.0.77".to_string()]
        );
        assert_eq!(
            dig(dns, "77.0.244.10.in-addr.arpa", "PTR", &[]).rdata("PTR"),
            vec!["10-244-0-77.default.pod.cluster.local.".to_string()]
        );
    } else {
        eprintln!("pod status patch not supported here ({:?}); pod records not checked", pod_status.err());
    }
    assert_eq!(dig(dns, "10-244-9-9.default.pod.cluster.local", "A", &[]).status, "NXDOMAIN");

    // A new Service resolves within 1 s; deleted, it is NXDOMAIN within 1 s.
    let name = "fresh.default.svc.cluster.local";
    assert_eq!(raw_query(dns, name, wire::TYPE_A).await.map(|r| r.0), Some(wire::RCODE_NXDOMAIN));
    let started = Instant::now();
    create(&services, json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "fresh"}, "spec": {"ports": [{"port": 80}]}})).await;
    loop {
        if raw_query(dns, name, wire::TYPE_A).await == Some((0, 1)) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(1), "new service did not resolve within 1 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("create → resolves: {:?}", started.elapsed());
    let started = Instant::now();
    services.delete("fresh", &DeleteParams::default()).await.unwrap();
    loop {
        if raw_query(dns, name, wire::TYPE_A).await.map(|r| r.0) == Some(wire::RCODE_NXDOMAIN) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(1), "deleted service still resolves after 1 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("delete → NXDOMAIN: {:?}", started.elapsed());

    // A burst of malformed, truncated and oversized packets, then normal queries still answered.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut good = vec![0x11, 0x22, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
    good.extend(wire::name_to_wire("web.default.svc.cluster.local").unwrap());
    good.extend_from_slice(&[0, 1, 0, 1, 0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
    let mut seed = 0x9E3779B97F4A7C15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..5000 {
        let pkt: Vec<u8> = match i % 5 {
            0 => good[..(rnd() as usize % good.len())].to_vec(),
            1 => {
                let mut p = good.clone();
                for _ in 0..4 {
                    let j = rnd() as usize % p.len();
                    p[j] = rnd() as u8;
                }
                p
            }
            2 => (0..(rnd() as usize % 600)).map(|_| rnd() as u8).collect(),
            3 => vec![0xFF; 9000],
            _ => {
                // Unknown class and type, and a compression loop in the question.
                let mut p = good.clone();
                let n = p.len();
                p[n - 13..n - 11].copy_from_slice(&[0xFF, 0xFE]);
                p[n - 15..n - 13].copy_from_slice(&[0xBE, 0xEF]);
                if rnd() % 2 == 0 {
                    p.truncate(12);
                    p.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1]);
                }
                p
            }
        };
        let _ = sock.send_to(&pkt, dns);
    }
    // TCP: a truncated message and a bogus length, then the connection is closed on us.
    {
        let mut s = tokio::net::TcpStream::connect(dns).await.unwrap();
        let _ = s.write_all(&[0x00, 0x40, 1, 2, 3]).await;
        drop(s);
        let mut s = tokio::net::TcpStream::connect(dns).await.unwrap();
        let _ = s.write_all(&[0x00, 0x05, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]).await;
    }
    // (A client retries a lost UDP query; the burst may still fill the socket buffer briefly.)
    let mut answered = None;
    for _ in 0..5 {
        answered = raw_query(dns, "web.default.svc.cluster.local", wire::TYPE_A).await;
        if answered.is_some() {
            break;
        }
    }
    assert_eq!(answered, Some((0, 1)), "still answering after the burst");
    let d = dig(dns, "web.default.svc.cluster.local", "A", &["+tcp"]);
    assert_eq!(d.rdata("A"), vec![web_ip.clone()], "{}", d.raw);

    // Search-path expansion (autopath): once 127.0.0.1 is a pod in `default`, its query for
    // `example.test.default.svc.cluster.local` gets a CNAME to `example.test` and its address.
    create(
        &pods,
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "asker"},
               "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
    )
    .await;
    let patch = json!({"status": {"phase": "Running", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}]}});
    pods.patch_status("asker", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    // (Not its PTR: hickory-resolver answers loopback reverse names itself, RFC 6761.)
    while raw_query(dns, "127-0-0-1.default.pod.cluster.local", wire::TYPE_A).await.map(|r| r.1) != Some(1) {
        assert!(Instant::now() < deadline, "pod 127.0.0.1 did not appear");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for extra in [&[][..], &["+tcp"][..]] {
        let d = dig(dns, "example.test.default.svc.cluster.local", "A", extra);
        assert_eq!(d.status, "NOERROR", "{}", d.raw);
        assert_eq!(d.rdata("CNAME"), vec!["example.test.".to_string()], "{}", d.raw);
        assert_eq!(d.rdata("A"), vec!["192.0.2.1".to_string()], "{}", d.raw);
    }
    // Not for names whose upstream answer is negative, nor for cluster names, nor other namespaces.
    assert_eq!(dig(dns, "missing.test.default.svc.cluster.local", "A", &[]).status, "NXDOMAIN");
    assert_eq!(dig(dns, "nope.default.svc.cluster.local", "A", &[]).status, "NXDOMAIN");
    assert_eq!(dig(dns, "example.test.other.svc.cluster.local", "A", &[]).status, "NXDOMAIN");
    assert_eq!(
        dig(dns, "web.default.default.svc.cluster.local", "A", &[]).status,
        "NXDOMAIN",
        "web.default.svc.D exists: no shortcut"
    );
    assert_eq!(dig(dns, "web.default.svc.cluster.local", "A", &[]).rdata("A"), vec![web_ip.clone()]);

    // Metrics and health.
    let http = server.http_addr.unwrap();
    let metrics = http_get(http, "/metrics").await;
    assert!(metrics.contains("skiff_dns_queries_total{type=\"A\",rcode=\"NOERROR\"}"), "{metrics}");
    assert!(metrics.contains("skiff_dns_queries_total{type=\"A\",rcode=\"NXDOMAIN\"}"), "{metrics}");
    assert!(metrics.contains("skiff_dns_malformed_total"), "{metrics}");
    assert!(metrics.contains("skiff_dns_request_duration_seconds_bucket{le=\"+Inf\"}"), "{metrics}");
    assert!(metrics.contains("skiff_dns_programming_latency_seconds_count"), "{metrics}");
    let malformed: u64 =
        metrics.lines().find_map(|l| l.strip_prefix("skiff_dns_malformed_total ")).unwrap().parse().unwrap();
    assert!(malformed > 0, "the burst was seen (the kernel may drop part of it): {malformed}");
    assert!(http_get(http, "/healthz").await.starts_with("HTTP/1.1 200"));
    assert!(http_get(http, "/readyz").await.starts_with("HTTP/1.1 200"));
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// The API server going away leaves the last snapshot answering; when it is back the watches
/// resume. A DNS server restart serves the same names again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_api_and_dns_restarts() {
    let mut control = skiff_tests::Control::start().expect("skiff control starts");
    let client = control.client().await.unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    create(
        &services,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"}, "spec": {"ports": [{"port": 80}]}}),
    )
    .await;
    let config = DnsConfig { listen: "127.0.0.1:0".parse().unwrap(), http_listen: None, ..DnsConfig::default() };
    let server = skiff_dns::start(client.clone(), config.clone()).await.unwrap();
    server.wait_synced(Duration::from_secs(20)).await.unwrap();
    let dns = server.dns_addr;
    assert_eq!(raw_query(dns, "a.default.svc.cluster.local", wire::TYPE_A).await, Some((0, 1)));

    control.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        raw_query(dns, "a.default.svc.cluster.local", wire::TYPE_A).await,
        Some((0, 1)),
        "answers while the API is down"
    );
    // A server that has never listed answers SERVFAIL (retry) for cluster names, not NXDOMAIN.
    let unsynced =
        skiff_dns::start(client.clone(), DnsConfig { listen: "127.0.0.1:0".parse().unwrap(), ..config.clone() })
            .await
            .unwrap();
    assert_eq!(
        raw_query(unsynced.dns_addr, "a.default.svc.cluster.local", wire::TYPE_A).await.map(|r| r.0),
        Some(wire::RCODE_SERVFAIL)
    );
    unsynced.shutdown().await;
    // No upstreams configured: external names are SERVFAIL, promptly.
    assert_eq!(raw_query(dns, "example.test", wire::TYPE_A).await.map(|r| r.0), Some(wire::RCODE_SERVFAIL));

    control.kill_and_restart().unwrap();
    let client = control.client().await.unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    create(
        &services,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "b"}, "spec": {"ports": [{"port": 80}]}}),
    )
    .await;
    services.delete("a", &DeleteParams::default()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while raw_query(dns, "b.default.svc.cluster.local", wire::TYPE_A).await != Some((0, 1))
        || raw_query(dns, "a.default.svc.cluster.local", wire::TYPE_A).await.map(|r| r.0) != Some(wire::RCODE_NXDOMAIN)
    {
        assert!(Instant::now() < deadline, "watches did not resume after the API restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    server.shutdown().await;
    let server = skiff_dns::start(client, DnsConfig { listen: dns, ..config }).await.unwrap();
    server.wait_synced(Duration::from_secs(20)).await.unwrap();
    assert_eq!(
        raw_query(dns, "b.default.svc.cluster.local", wire::TYPE_A).await,
        Some((0, 1)),
        "a restarted DNS serves the same names"
    );
    assert_eq!(
        raw_query(dns, "a.default.svc.cluster.local", wire::TYPE_A).await.map(|r| r.0),
        Some(wire::RCODE_NXDOMAIN)
    );
}
