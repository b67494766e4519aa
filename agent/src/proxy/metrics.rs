//! The proxy's metrics in Prometheus text format (version 0.0.4), without a metrics library: a
//! fixed-bucket histogram and a few counters, rendered on demand.

use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket upper bounds in seconds (from 100 µs to 10 s).
pub const BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A Prometheus histogram with [`BUCKETS`].
#[derive(Debug, Default)]
pub struct Histogram {
    inner: Mutex<HistInner>,
}

#[derive(Debug, Default, Clone)]
struct HistInner {
    counts: Vec<u64>, // per bucket (not cumulative), len BUCKETS.len() + 1 (the +Inf bucket)
    sum: f64,
    count: u64,
    /// All observations, bounded, for exact quantiles in tests and benchmarks.
    samples: Vec<f64>,
}

const MAX_SAMPLES: usize = 100_000;

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let v = d.as_secs_f64();
        let mut h = self.inner.lock().unwrap();
        if h.counts.is_empty() {
            h.counts = vec![0; BUCKETS.len() + 1];
        }
        let i = BUCKETS.iter().position(|b| v <= *b).unwrap_or(BUCKETS.len());
        h.counts[i] += 1;
        h.sum += v;
        h.count += 1;
        if h.samples.len() < MAX_SAMPLES {
            h.samples.push(v);
        }
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.inner.lock().unwrap().count
    }

    /// The `q` quantile (0..=1) of the recorded observations, if any.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let mut s = self.inner.lock().unwrap().samples.clone();
        if s.is_empty() {
            return None;
        }
        s.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let i = ((s.len() - 1) as f64 * q).round() as usize;
        Some(Duration::from_secs_f64(s[i]))
    }

    /// Appends the histogram's `_bucket`, `_sum` and `_count` lines.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        let h = self.inner.lock().unwrap().clone();
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cum += h.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum {}", h.sum);
        let _ = writeln!(out, "{name}_count {}", h.count);
    }
}

/// The proxy's own metrics (per-service counters are read from the dataplane at scrape time).
#[derive(Debug, Default)]
pub struct ProxyMetrics {
    /// API event observed by a watcher → the service maps reflect it.
    pub programming_latency: Histogram,
    /// Duration of one sync (compute the desired state + apply the difference).
    pub sync_duration: Histogram,
    /// Completed syncs.
    pub syncs: AtomicU64,
    /// Syncs that failed to apply some change (retried).
    pub sync_errors: AtomicU64,
    /// Map entries written or deleted (service entries and backend slots).
    pub map_writes: AtomicU64,
    /// Frontends programmed after the last sync.
    pub frontends: AtomicU64,
}

impl ProxyMetrics {
    pub fn render(&self, out: &mut String) {
        self.programming_latency.render(
            out,
            "skiff_proxy_programming_latency_seconds",
            "Time from a Service or EndpointSlice event observed by the proxy to the service maps updated.",
        );
        self.sync_duration.render(
            out,
            "skiff_proxy_sync_duration_seconds",
            "Time to compute the desired service maps and apply the difference.",
        );
        for (name, help, kind, v) in [
            ("skiff_proxy_syncs_total", "Completed syncs of the service maps.", "counter", &self.syncs),
            (
                "skiff_proxy_sync_errors_total",
                "Syncs that failed to apply a change (retried).",
                "counter",
                &self.sync_errors,
            ),
            (
                "skiff_proxy_map_writes_total",
                "Service map entries and backend slots written or deleted.",
                "counter",
                &self.map_writes,
            ),
            (
                "skiff_proxy_frontends",
                "Service frontends (address, port, protocol) programmed.",
                "gauge",
                &self.frontends,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}", v.load(Ordering::Relaxed));
        }
    }
}

/// Escapes a Prometheus label value.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(20));
        let mut s = String::new();
        h.render(&mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"0.0001\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"0.005\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"10\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("x_count 3\n"), "{s}");
        assert_eq!(h.quantile(0.5), Some(Duration::from_millis(3)));
    }
}
