//! `reprise route`'s metrics: decisions, retries, forwarding time, and each
//! worker as the router sees it (names and buckets in `reprise_api::metrics`).

use reprise_api::metrics::*;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// One worker as `reprise route`'s `/metrics` shows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteWorkerView {
    /// Its URL.
    pub url: String,
    /// In routing.
    pub healthy: bool,
    /// Requests in flight through this router.
    pub inflight: usize,
    /// Its own running requests (scraped).
    pub running: usize,
    /// Its own waiting requests (scraped).
    pub waiting: usize,
    /// Its KV-cache usage (scraped).
    pub kv_usage: f64,
    /// Requests it failed before their first byte.
    pub failures: u64,
    /// Its KV-event stream's counters.
    pub stream: reprise_router::remote::RemoteStats,
}

/// `reprise route`'s own metrics (its decisions are `reprise_api::metrics::RouterMetrics`).
#[derive(Debug)]
pub struct RouteMetrics {
    /// Arrival to forwarding.
    pub forward_seconds: Histogram,
    /// Retries on another worker.
    pub retries: AtomicU64,
}

impl Default for RouteMetrics {
    fn default() -> Self {
        Self {
            forward_seconds: Histogram::new(DECISION_BUCKETS),
            retries: AtomicU64::new(0),
        }
    }
}

impl RouteMetrics {
    /// Renders the forwarding time, the retries and every worker's series.
    pub fn render(&self, policy: &str, workers: &[RouteWorkerView]) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let name = ROUTER_FORWARD_SECONDS;
        let _ = writeln!(
            out,
            "# HELP {name} Time from a request's arrival to its forwarding to a worker.\n# TYPE {name} histogram"
        );
        let h = &self.forward_seconds;
        let labels = format!("policy=\"{policy}\"");
        render_hist(&mut out, name, &labels, h.bounds(), &h.snapshot());
        let _ = writeln!(
            out,
            "# HELP {ROUTER_RETRIES} Requests retried on another worker.\n# TYPE {ROUTER_RETRIES} counter\n{ROUTER_RETRIES} {}",
            self.retries.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP {WORKER_HEALTHY} 1 while the worker is in routing.\n# TYPE {WORKER_HEALTHY} gauge");
        for (i, w) in workers.iter().enumerate() {
            let _ = writeln!(
                out,
                "{WORKER_HEALTHY}{{url=\"{}\",worker=\"{i}\"}} {}",
                escape(&w.url),
                u8::from(w.healthy)
            );
        }
        type Get = fn(&RouteWorkerView) -> f64;
        let series: [(&str, &str, &str, Get); 9] = [
            (
                WORKER_INFLIGHT,
                "gauge",
                "Requests in flight on the worker through this router.",
                |w| w.inflight as f64,
            ),
            (
                WORKER_RUNNING,
                "gauge",
                "The worker's running requests, as last scraped.",
                |w| w.running as f64,
            ),
            (
                WORKER_WAITING,
                "gauge",
                "The worker's waiting requests, as last scraped.",
                |w| w.waiting as f64,
            ),
            (
                WORKER_KV_USAGE,
                "gauge",
                "The worker's KV-cache usage, as last scraped.",
                |w| w.kv_usage,
            ),
            (
                WORKER_FAILURES,
                "counter",
                "Requests the worker failed before their first byte.",
                |w| w.failures as f64,
            ),
            (
                WORKER_EVENT_BATCHES,
                "counter",
                "KV-event batches applied.",
                |w| w.stream.batches as f64,
            ),
            (
                WORKER_EVENT_RESYNCS,
                "counter",
                "KV-event streams dropped and rebuilt.",
                |w| w.stream.resyncs as f64,
            ),
            (
                WORKER_EVENT_RESTARTS,
                "counter",
                "Worker restarts seen in the KV-event stream.",
                |w| w.stream.restarts as f64,
            ),
            (
                WORKER_ENGINE_BLOCKS,
                "gauge",
                "Engine blocks the worker holds per its KV events.",
                |w| w.stream.engine_blocks as f64,
            ),
        ];
        for (name, kind, help, get) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (i, w) in workers.iter().enumerate() {
                let _ = writeln!(out, "{name}{{worker=\"{i}\"}} {}", get(w));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_time_and_retries_carry_the_policy() {
        let m = RouteMetrics::default();
        m.forward_seconds.observe(0.001);
        m.retries.fetch_add(2, Ordering::Relaxed);
        let text = m.render("cost", &[RouteWorkerView::default()]);
        assert!(text.contains("reprise:router_forward_seconds_count{policy=\"cost\"} 1"));
        assert!(text.contains("reprise:router_retries_total 2"));
        assert!(text.contains("reprise:worker_inflight_requests{worker=\"0\"} 0"));
    }
}
