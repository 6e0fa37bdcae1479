//! Prometheus metrics. Counters are plain atomics held by each route, found once when the route
//! table is built, so a request touches no lock, no map and allocates nothing to be counted.
//! The text exposition is written by hand at scrape time.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BUCKETS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// Kinds of upstream failure, for `edge_upstream_errors_total{kind}`.
#[derive(Debug, Clone, Copy)]
pub enum UpstreamError {
    Connect = 0,
    Timeout = 1,
    Other = 2,
}
const UPSTREAM_KINDS: [&str; 3] = ["connect", "timeout", "other"];

/// The counters of one (project, mount); `mount` is empty for requests that matched no mount.
#[derive(Debug)]
pub struct RouteMetrics {
    project: Arc<str>,
    mount: Arc<str>,
    /// Index: status - 100.
    by_status: Box<[AtomicU64; 500]>,
    buckets: [AtomicU64; 15],
    sum_us: AtomicU64,
    upstream_errors: [AtomicU64; 3],
}

impl RouteMetrics {
    fn new(project: &str, mount: &str) -> RouteMetrics {
        RouteMetrics {
            project: project.into(),
            mount: mount.into(),
            by_status: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
            upstream_errors: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Counts one answered request and the time to its response head.
    pub fn observe(&self, status: u16, elapsed: Duration) {
        if let Some(c) = self.by_status.get(status.wrapping_sub(100) as usize) {
            c.fetch_add(1, Relaxed);
        }
        let us = elapsed.as_micros() as u64;
        let i = BUCKETS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(BUCKETS_US.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    pub fn project(&self) -> &str {
        &self.project
    }

    pub fn mount(&self) -> &str {
        &self.mount
    }

    pub fn upstream_error(&self, kind: UpstreamError) {
        self.upstream_errors[kind as usize].fetch_add(1, Relaxed);
    }
}

/// Process-wide metrics; route counters survive reloads (they are looked up by name).
#[derive(Debug, Default)]
pub struct Metrics {
    routes: Mutex<HashMap<(String, String), Arc<RouteMetrics>>>,
    pub open_connections: AtomicI64,
    pub open_websockets: AtomicI64,
    pub connections_rejected: AtomicU64,
    /// Requests the HTTP/1.1 fast path forwarded (the rest went through hyper).
    pub fast_path_requests: AtomicU64,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    /// Access log lines dropped because its writer fell behind or could not write.
    pub access_log_dropped: Arc<AtomicU64>,
}

impl Metrics {
    /// The counters for a (project, mount), created on first use.
    pub fn route(&self, project: &str, mount: &str) -> Arc<RouteMetrics> {
        let mut m = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        m.entry((project.to_string(), mount.to_string()))
            .or_insert_with(|| Arc::new(RouteMetrics::new(project, mount)))
            .clone()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut routes: Vec<Arc<RouteMetrics>> = {
            let m = self.routes.lock().unwrap_or_else(|e| e.into_inner());
            m.values().cloned().collect()
        };
        routes.sort_by(|a, b| (&a.project, &a.mount).cmp(&(&b.project, &b.mount)));
        let mut o = String::with_capacity(4096);
        o.push_str("# HELP edge_requests_total Requests answered, by project, mount and status.\n");
        o.push_str("# TYPE edge_requests_total counter\n");
        for r in &routes {
            for (i, c) in r.by_status.iter().enumerate() {
                let n = c.load(Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        o,
                        "edge_requests_total{{project=\"{}\",mount=\"{}\",status=\"{}\"}} {n}",
                        r.project,
                        r.mount,
                        i + 100
                    );
                }
            }
        }
        o.push_str("# HELP edge_request_duration_seconds Time from request to response head.\n");
        o.push_str("# TYPE edge_request_duration_seconds histogram\n");
        for r in &routes {
            let labels = format!("project=\"{}\",mount=\"{}\"", r.project, r.mount);
            let mut cum = 0;
            for (i, b) in BUCKETS.iter().enumerate() {
                cum += r.buckets[i].load(Relaxed);
                let _ = writeln!(
                    o,
                    "edge_request_duration_seconds_bucket{{{labels},le=\"{b}\"}} {cum}"
                );
            }
            cum += r.buckets[BUCKETS.len()].load(Relaxed);
            let _ = writeln!(
                o,
                "edge_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {cum}"
            );
            let sum = r.sum_us.load(Relaxed) as f64 / 1e6;
            let _ = writeln!(o, "edge_request_duration_seconds_sum{{{labels}}} {sum}");
            let _ = writeln!(o, "edge_request_duration_seconds_count{{{labels}}} {cum}");
        }
        o.push_str("# HELP edge_upstream_errors_total Failed upstream requests, by kind.\n");
        o.push_str("# TYPE edge_upstream_errors_total counter\n");
        for r in &routes {
            for (k, c) in UPSTREAM_KINDS.iter().zip(&r.upstream_errors) {
                let n = c.load(Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        o,
                        "edge_upstream_errors_total{{project=\"{}\",mount=\"{}\",kind=\"{k}\"}} {n}",
                        r.project, r.mount
                    );
                }
            }
        }
        let gauges = [
            (
                "edge_open_connections",
                "Client connections open now.",
                self.open_connections.load(Relaxed),
            ),
            (
                "edge_open_websockets",
                "Upgraded (WebSocket) connections open now.",
                self.open_websockets.load(Relaxed),
            ),
        ];
        for (name, help, v) in gauges {
            let _ = write!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n");
        }
        let counters = [
            (
                "edge_connections_rejected_total",
                "Connections refused by the connection caps.",
                self.connections_rejected.load(Relaxed),
            ),
            (
                "edge_fast_path_requests_total",
                "Requests forwarded by the HTTP/1.1 fast path (the others by hyper).",
                self.fast_path_requests.load(Relaxed),
            ),
            (
                "edge_reloads_total",
                "Config reloads applied.",
                self.reloads.load(Relaxed),
            ),
            (
                "edge_reload_failures_total",
                "Config reloads refused (the old config stays).",
                self.reload_failures.load(Relaxed),
            ),
            (
                "edge_access_log_dropped_total",
                "Access log lines dropped because the writer fell behind or could not write.",
                self.access_log_dropped.load(Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            let _ = write!(
                o,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"
            );
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_counts_by_status_and_buckets() {
        let m = Metrics::default();
        let r = m.route("demo", "forge");
        r.observe(200, Duration::from_micros(300));
        r.observe(200, Duration::from_millis(3));
        r.observe(502, Duration::from_secs(20));
        r.upstream_error(UpstreamError::Connect);
        assert!(
            Arc::ptr_eq(&r, &m.route("demo", "forge")),
            "same counters on reload"
        );
        let text = m.render();
        for line in [
            "edge_requests_total{project=\"demo\",mount=\"forge\",status=\"200\"} 2",
            "edge_requests_total{project=\"demo\",mount=\"forge\",status=\"502\"} 1",
            "edge_request_duration_seconds_bucket{project=\"demo\",mount=\"forge\",le=\"0.0005\"} 1",
            "edge_request_duration_seconds_bucket{project=\"demo\",mount=\"forge\",le=\"0.005\"} 2",
            "edge_request_duration_seconds_bucket{project=\"demo\",mount=\"forge\",le=\"10\"} 2",
            "edge_request_duration_seconds_bucket{project=\"demo\",mount=\"forge\",le=\"+Inf\"} 3",
            "edge_request_duration_seconds_count{project=\"demo\",mount=\"forge\"} 3",
            "edge_upstream_errors_total{project=\"demo\",mount=\"forge\",kind=\"connect\"} 1",
            "edge_open_connections 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
