//! Counters exported as Prometheus text on `/metrics`.

use crate::wire;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

const TYPES: [u16; 9] = [
    wire::TYPE_A,
    wire::TYPE_AAAA,
    wire::TYPE_SRV,
    wire::TYPE_PTR,
    wire::TYPE_CNAME,
    wire::TYPE_SOA,
    wire::TYPE_NS,
    wire::TYPE_TXT,
    wire::TYPE_ANY,
];
const NTYPES: usize = TYPES.len() + 1; // + "other"
const RCODES: [&str; 17] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET", "NXRRSET", "NOTAUTH",
    "NOTZONE", "RCODE11", "RCODE12", "RCODE13", "RCODE14", "RCODE15", "BADVERS",
];

/// Upper bounds (seconds) of the query latency histogram.
const BUCKETS: [f64; 11] = [0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0];

pub struct Metrics {
    queries: Vec<AtomicU64>,
    latency_buckets: Vec<AtomicU64>,
    latency_count: AtomicU64,
    latency_sum_ns: AtomicU64,
    malformed: AtomicU64,
    forwarded: AtomicU64,
    cache_hits: AtomicU64,
    forward_dropped: AtomicU64,
    rebuilds: AtomicU64,
    /// Microseconds from the first watch event of a batch to the new zone answering (last and sum).
    programming_last_us: AtomicU64,
    programming_sum_us: AtomicU64,
    records: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            queries: (0..NTYPES * RCODES.len()).map(|_| AtomicU64::new(0)).collect(),
            latency_buckets: (0..BUCKETS.len()).map(|_| AtomicU64::new(0)).collect(),
            latency_count: AtomicU64::new(0),
            latency_sum_ns: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            forward_dropped: AtomicU64::new(0),
            rebuilds: AtomicU64::new(0),
            programming_last_us: AtomicU64::new(0),
            programming_sum_us: AtomicU64::new(0),
            records: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    pub fn query(&self, qtype: u16, rcode: u8) {
        let t = TYPES.iter().position(|&x| x == qtype).unwrap_or(TYPES.len());
        let r = (rcode as usize).min(RCODES.len() - 1);
        self.queries[t * RCODES.len() + r].fetch_add(1, Relaxed);
    }
    /// Time from receiving a query to having its response (local or forwarded).
    pub fn latency(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.latency_buckets[i].fetch_add(1, Relaxed);
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_ns.fetch_add(d.as_nanos() as u64, Relaxed);
    }
    pub fn malformed(&self) {
        self.malformed.fetch_add(1, Relaxed);
    }
    pub fn forwarded(&self) {
        self.forwarded.fetch_add(1, Relaxed);
    }
    pub fn cache_hit(&self) {
        self.cache_hits.fetch_add(1, Relaxed);
    }
    pub fn forward_dropped(&self) {
        self.forward_dropped.fetch_add(1, Relaxed);
    }
    pub fn rebuilt(&self, latency: std::time::Duration, records: usize) {
        let us = latency.as_micros() as u64;
        self.rebuilds.fetch_add(1, Relaxed);
        self.programming_last_us.store(us, Relaxed);
        self.programming_sum_us.fetch_add(us, Relaxed);
        self.records.store(records as u64, Relaxed);
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str("# HELP skiff_dns_queries_total DNS queries answered, by query type and response code.\n# TYPE skiff_dns_queries_total counter\n");
        for t in 0..NTYPES {
            let tn = TYPES.get(t).map_or("other", |&x| wire::type_name(x));
            for (r, rn) in RCODES.iter().enumerate() {
                let v = self.queries[t * RCODES.len() + r].load(Relaxed);
                if v > 0 {
                    let _ = writeln!(s, "skiff_dns_queries_total{{type=\"{tn}\",rcode=\"{rn}\"}} {v}");
                }
            }
        }
        let simple = [
            (
                "skiff_dns_malformed_total",
                "counter",
                "Packets that could not be parsed as a query.",
                self.malformed.load(Relaxed),
            ),
            (
                "skiff_dns_forwarded_total",
                "counter",
                "Queries sent to upstream resolvers.",
                self.forwarded.load(Relaxed),
            ),
            (
                "skiff_dns_cache_hits_total",
                "counter",
                "Forwarded names answered from the cache.",
                self.cache_hits.load(Relaxed),
            ),
            (
                "skiff_dns_forward_dropped_total",
                "counter",
                "Queries dropped because too many forwards were in flight.",
                self.forward_dropped.load(Relaxed),
            ),
            ("skiff_dns_zone_rebuilds_total", "counter", "Cluster zone snapshots built.", self.rebuilds.load(Relaxed)),
            ("skiff_dns_zone_records", "gauge", "Records in the current cluster zone.", self.records.load(Relaxed)),
        ];
        for (name, ty, help, v) in simple {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {ty}\n{name} {v}");
        }
        s.push_str("# HELP skiff_dns_request_duration_seconds Time to answer a query (local or forwarded).\n# TYPE skiff_dns_request_duration_seconds histogram\n");
        let mut cum = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cum += self.latency_buckets[i].load(Relaxed);
            let _ = writeln!(s, "skiff_dns_request_duration_seconds_bucket{{le=\"{b}\"}} {cum}");
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(s, "skiff_dns_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ =
            writeln!(s, "skiff_dns_request_duration_seconds_sum {}", self.latency_sum_ns.load(Relaxed) as f64 / 1e9);
        let _ = writeln!(s, "skiff_dns_request_duration_seconds_count {count}");
        let last = self.programming_last_us.load(Relaxed) as f64 / 1e6;
        let sum = self.programming_sum_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(
            s,
            "# HELP skiff_dns_programming_latency_seconds From a watch event to the zone answering with it.\n# TYPE skiff_dns_programming_latency_seconds summary\nskiff_dns_programming_latency_seconds_sum {sum}\nskiff_dns_programming_latency_seconds_count {}\nskiff_dns_programming_last_latency_seconds {last}",
            self.rebuilds.load(Relaxed)
        );
        s
    }
}
