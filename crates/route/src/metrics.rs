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

/// `reprise route`'s metrics.
#[derive(Debug)]
pub struct RouteMetrics {
    /// Decisions per chosen worker index.
    pub decisions: Vec<AtomicU64>,
    /// Matched blocks of the chosen worker.
    pub matched_blocks: Histogram,
    /// Decision time.
    pub decision_seconds: Histogram,
    /// Arrival to forwarding.
    pub forward_seconds: Histogram,
    /// Retries on another worker.
    pub retries: AtomicU64,
    /// 429s.
    pub rejected_overloaded: AtomicU64,
}

impl Default for RouteMetrics {
    fn default() -> Self {
        Self {
            decisions: (0..reprise_router::index::MAX_WORKERS)
                .map(|_| AtomicU64::new(0))
                .collect(),
            matched_blocks: Histogram::new(MATCHED_BLOCK_BUCKETS),
            decision_seconds: Histogram::new(DECISION_BUCKETS),
            forward_seconds: Histogram::new(DECISION_BUCKETS),
            retries: AtomicU64::new(0),
            rejected_overloaded: AtomicU64::new(0),
        }
    }
}

impl RouteMetrics {
    /// Renders the router's and every worker's series.
    pub fn render(&self, policy: &str, workers: &[RouteWorkerView]) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let _ = writeln!(
            out,
            "# HELP {ROUTER_DECISIONS} Routing decisions by policy and chosen worker.\n# TYPE {ROUTER_DECISIONS} counter"
        );
        for (i, c) in self.decisions.iter().take(workers.len()).enumerate() {
            let _ = writeln!(
                out,
                "{ROUTER_DECISIONS}{{policy=\"{policy}\",worker=\"{i}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let labels = format!("policy=\"{policy}\"");
        for (name, help, h) in [
            (
                ROUTER_MATCHED_BLOCKS,
                "Prompt blocks the chosen worker was believed to have cached.",
                &self.matched_blocks,
            ),
            (
                ROUTER_DECISION_SECONDS,
                "Time spent choosing a worker.",
                &self.decision_seconds,
            ),
            (
                ROUTER_FORWARD_SECONDS,
                "Time from a request's arrival to its forwarding to a worker.",
                &self.forward_seconds,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            render_hist(&mut out, name, &labels, h.bounds(), &h.snapshot());
        }
        let _ = writeln!(
            out,
            "# HELP {ROUTER_RETRIES} Requests retried on another worker.\n# TYPE {ROUTER_RETRIES} counter\n{ROUTER_RETRIES} {}",
            self.retries.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP {REQUESTS_REJECTED} Requests refused before routing.\n# TYPE {REQUESTS_REJECTED} counter\n{REQUESTS_REJECTED}{{reason=\"overloaded\"}} {}",
            self.rejected_overloaded.load(Ordering::Relaxed)
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
