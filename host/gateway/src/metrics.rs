//! The gateway's own metrics, and the Prometheus page that shows them with every
//! metric the filters define.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use portcullis_engine::metrics::{HISTOGRAM_BUCKETS, MetricValue, Metrics};

/// Latency buckets in seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
pub struct GatewayMetrics {
    /// (route, status) → count.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// route → latency histogram.
    latency: Mutex<BTreeMap<String, Histogram>>,
    /// (service, kind) → count; kind is connect, tls, timeout, reset, body_too_large.
    upstream_errors: Mutex<BTreeMap<(String, &'static str), u64>>,
    pub in_flight: AtomicU64,
    /// Connections closed at accept because the listener had `max_connections` open.
    pub connections_refused: AtomicU64,
    /// Connections closed after `idle_timeout_ms` without a request.
    pub connections_idle_closed: AtomicU64,
}

#[derive(Default, Clone)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl GatewayMetrics {
    pub fn record(&self, route: &str, status: u16, seconds: f64) {
        *self
            .requests
            .lock()
            .entry((route.to_owned(), status))
            .or_default() += 1;
        let mut lat = self.latency.lock();
        let h = lat.entry(route.to_owned()).or_default();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        h.buckets[i] += 1;
        h.sum += seconds;
        h.count += 1;
    }

    pub fn upstream_error(&self, service: &str, kind: &'static str) {
        *self
            .upstream_errors
            .lock()
            .entry((service.to_owned(), kind))
            .or_default() += 1;
    }

    pub fn requests(&self, route: &str, status: u16) -> u64 {
        self.requests
            .lock()
            .get(&(route.to_owned(), status))
            .copied()
            .unwrap_or(0)
    }

    /// The Prometheus text exposition of the gateway's and the filters' metrics.
    pub fn render(&self, filters: &Metrics) -> String {
        let mut out = String::new();
        out.push_str("# TYPE portcullis_requests_total counter\n");
        for ((route, status), n) in self.requests.lock().iter() {
            let _ = writeln!(
                out,
                "portcullis_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                esc(route)
            );
        }
        out.push_str("# TYPE portcullis_request_duration_seconds histogram\n");
        for (route, h) in self.latency.lock().iter() {
            let mut cum = 0;
            for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
                cum += h.buckets[i];
                let _ = writeln!(
                    out,
                    "portcullis_request_duration_seconds_bucket{{route=\"{}\",le=\"{b}\"}} {cum}",
                    esc(route)
                );
            }
            let _ = writeln!(
                out,
                "portcullis_request_duration_seconds_bucket{{route=\"{}\",le=\"+Inf\"}} {}",
                esc(route),
                h.count
            );
            let _ = writeln!(
                out,
                "portcullis_request_duration_seconds_sum{{route=\"{}\"}} {}",
                esc(route),
                h.sum
            );
            let _ = writeln!(
                out,
                "portcullis_request_duration_seconds_count{{route=\"{}\"}} {}",
                esc(route),
                h.count
            );
        }
        out.push_str("# TYPE portcullis_upstream_errors_total counter\n");
        for ((service, kind), n) in self.upstream_errors.lock().iter() {
            let _ = writeln!(
                out,
                "portcullis_upstream_errors_total{{service=\"{}\",kind=\"{kind}\"}} {n}",
                esc(service)
            );
        }
        let _ = writeln!(
            out,
            "# TYPE portcullis_requests_in_flight gauge\nportcullis_requests_in_flight {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# TYPE portcullis_downstream_connections_refused_total counter\nportcullis_downstream_connections_refused_total {}",
            self.connections_refused.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# TYPE portcullis_downstream_connections_idle_closed_total counter\nportcullis_downstream_connections_idle_closed_total {}",
            self.connections_idle_closed.load(Ordering::Relaxed)
        );
        // Host calls refused to a filter at one of the host's limits.
        out.push_str("# TYPE portcullis_host_limit_refusals_total counter\n");
        for (filter, limit, n) in filters.refusals().snapshot() {
            let _ = writeln!(
                out,
                "portcullis_host_limit_refusals_total{{filter=\"{}\",limit=\"{}\"}} {n}",
                esc(&filter),
                limit.name()
            );
        }
        for (name, value) in filters.snapshot() {
            let name = format!("portcullis_filter_{}", sanitize(&name));
            match value {
                MetricValue::Counter(v) => {
                    let _ = writeln!(out, "# TYPE {name} counter\n{name} {v}");
                }
                MetricValue::Gauge(v) => {
                    let _ = writeln!(out, "# TYPE {name} gauge\n{name} {v}");
                }
                MetricValue::Histogram { buckets, sum } => {
                    let _ = writeln!(out, "# TYPE {name} histogram");
                    let mut cum = 0;
                    for (i, b) in HISTOGRAM_BUCKETS.iter().enumerate() {
                        cum += buckets[i];
                        let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
                    }
                    let total: u64 = buckets.iter().sum();
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{le=\"+Inf\"}} {total}\n{name}_sum {sum}\n{name}_count {total}"
                    );
                }
            }
        }
        out
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus metric names allow `[a-zA-Z0-9_:]`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_requests_and_filter_metrics() {
        let m = GatewayMetrics::default();
        m.record("orders", 200, 0.003);
        m.upstream_error("orders", "timeout");
        let filters = Metrics::default();
        filters
            .refusals()
            .refuse("auth", portcullis_engine::Limit::SharedDataBytes, 0);
        filters
            .define(
                portcullis_engine::metrics::MetricKind::Counter,
                "jwt.allowed",
            )
            .unwrap()
            .increment(2)
            .unwrap();
        let text = m.render(&filters);
        assert!(
            text.contains("portcullis_requests_total{route=\"orders\",status=\"200\"} 1"),
            "{text}"
        );
        assert!(text.contains(
            "portcullis_request_duration_seconds_bucket{route=\"orders\",le=\"0.005\"} 1"
        ));
        assert!(
            text.contains(
                "portcullis_upstream_errors_total{service=\"orders\",kind=\"timeout\"} 1"
            )
        );
        assert!(text.contains("portcullis_filter_jwt_allowed 2"));
        assert!(text.contains(
            "portcullis_host_limit_refusals_total{filter=\"auth\",limit=\"shared_data_bytes\"} 1"
        ));
    }
}
