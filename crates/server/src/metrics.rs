//! Prometheus metrics: every name in one place, plain text rendering by hand.
//!
//! Why no `prometheus` / `metrics` crate: we expose a dozen series with fixed
//! label sets; per-worker gauges and counters are read straight from the
//! workers' snapshots at scrape time, and the few histograms are a bucket array
//! behind a mutex. The crates would add a registry, protobuf or a recorder
//! layer and their dependency trees for ~150 lines of text formatting.

use parking_lot::Mutex;
use reprise_engine::engine::WorkerSnapshot;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Requests in a worker's running batch (gauge).
pub const NUM_REQUESTS_RUNNING: &str = "reprise:num_requests_running";
/// Requests admitted to a worker but waiting (gauge).
pub const NUM_REQUESTS_WAITING: &str = "reprise:num_requests_waiting";
/// Fraction of a worker's KV blocks referenced by live requests, 0..1 (gauge).
pub const KV_CACHE_USAGE_PERC: &str = "reprise:kv_cache_usage_perc";
/// Prompt tokens looked up in the prefix cache (counter).
pub const PREFIX_CACHE_QUERIES: &str = "reprise:prefix_cache_queries_total";
/// Prompt tokens found in the prefix cache (counter).
pub const PREFIX_CACHE_HITS: &str = "reprise:prefix_cache_hits_total";
/// Prompt tokens of requests submitted (counter).
pub const PROMPT_TOKENS: &str = "reprise:prompt_tokens_total";
/// Tokens generated (counter).
pub const GENERATION_TOKENS: &str = "reprise:generation_tokens_total";
/// Preemptions (counter).
pub const NUM_PREEMPTIONS: &str = "reprise:num_preemptions_total";
/// 1 while the worker is alive and routable (gauge).
pub const WORKER_ALIVE: &str = "reprise:worker_alive";
/// Time to first token (histogram, seconds).
pub const TIME_TO_FIRST_TOKEN: &str = "reprise:time_to_first_token_seconds";
/// Gap between consecutive tokens of a request (histogram, seconds).
pub const INTER_TOKEN_LATENCY: &str = "reprise:inter_token_latency_seconds";
/// Request latency from admission to its last token (histogram, seconds).
pub const E2E_REQUEST_LATENCY: &str = "reprise:e2e_request_latency_seconds";
/// Finished requests by finish reason (counter).
pub const REQUEST_SUCCESS: &str = "reprise:request_success_total";
/// Routing decisions per policy and chosen worker (counter).
pub const ROUTER_DECISIONS: &str = "reprise:router_decisions_total";
/// Cached blocks the chosen worker was believed to hold (histogram).
pub const ROUTER_MATCHED_BLOCKS: &str = "reprise:router_matched_blocks";
/// Time spent in one routing decision (histogram, seconds).
pub const ROUTER_DECISION_SECONDS: &str = "reprise:router_decision_seconds";
/// Requests refused before routing, by reason (counter).
pub const REQUESTS_REJECTED: &str = "reprise:requests_rejected_total";

const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
];
const ITL_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
];
const E2E_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0,
];
const MATCHED_BLOCK_BUCKETS: &[f64] = &[
    0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];
const DECISION_BUCKETS: &[f64] = &[
    1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 1e-2,
];

/// A cumulative histogram with fixed upper bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    inner: Mutex<HistInner>,
}

#[derive(Debug)]
struct HistInner {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            inner: Mutex::new(HistInner {
                counts: vec![0; bounds.len()],
                sum: 0.0,
                count: 0,
            }),
        }
    }

    /// Record one observation.
    pub fn observe(&self, v: f64) {
        let mut h = self.inner.lock();
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            h.counts[i] += 1;
        }
        h.sum += v;
        h.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let h = self.inner.lock();
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(&h.counts) {
            cum += c;
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
    }
}

/// Latency histograms of one worker.
#[derive(Debug)]
pub struct WorkerLatency {
    /// Time to first token.
    pub ttft: Histogram,
    /// Inter-token latency.
    pub itl: Histogram,
    /// End-to-end latency.
    pub e2e: Histogram,
    /// Finished with `stop`.
    pub finished_stop: AtomicU64,
    /// Finished with `length`.
    pub finished_length: AtomicU64,
    /// Aborted (client went away, error).
    pub finished_abort: AtomicU64,
}

/// Server-side metrics; worker gauges and counters come from snapshots at scrape time.
#[derive(Debug)]
pub struct Metrics {
    /// Per worker latency histograms.
    pub workers: Vec<WorkerLatency>,
    /// Decisions per chosen worker.
    pub decisions: Vec<AtomicU64>,
    /// Matched blocks of the chosen worker.
    pub matched_blocks: Histogram,
    /// Decision time.
    pub decision_seconds: Histogram,
    /// 429s.
    pub rejected_overloaded: AtomicU64,
}

impl Metrics {
    /// Metrics for `n` workers.
    pub fn new(n: usize) -> Self {
        Self {
            workers: (0..n)
                .map(|_| WorkerLatency {
                    ttft: Histogram::new(TTFT_BUCKETS),
                    itl: Histogram::new(ITL_BUCKETS),
                    e2e: Histogram::new(E2E_BUCKETS),
                    finished_stop: AtomicU64::new(0),
                    finished_length: AtomicU64::new(0),
                    finished_abort: AtomicU64::new(0),
                })
                .collect(),
            decisions: (0..n).map(|_| AtomicU64::new(0)).collect(),
            matched_blocks: Histogram::new(MATCHED_BLOCK_BUCKETS),
            decision_seconds: Histogram::new(DECISION_BUCKETS),
            rejected_overloaded: AtomicU64::new(0),
        }
    }

    /// Renders everything in the Prometheus text format (version 0.0.4).
    pub fn render(&self, policy: &str, snaps: &[(WorkerSnapshot, bool)]) -> String {
        let mut out = String::with_capacity(8 * 1024);
        type Get = fn(&WorkerSnapshot, bool) -> f64;
        let per_worker: [(&str, &str, &str, Get); 9] = [
            (
                NUM_REQUESTS_RUNNING,
                "gauge",
                "Requests in the running batch.",
                |s, _| s.load.running as f64,
            ),
            (
                NUM_REQUESTS_WAITING,
                "gauge",
                "Requests waiting to be scheduled.",
                |s, _| s.load.waiting as f64,
            ),
            (
                KV_CACHE_USAGE_PERC,
                "gauge",
                "KV-cache usage, 1 means 100 percent.",
                |s, _| s.load.kv_usage(),
            ),
            (
                PREFIX_CACHE_QUERIES,
                "counter",
                "Prompt tokens looked up in the prefix cache.",
                |s, _| s.prefix_query_tokens as f64,
            ),
            (
                PREFIX_CACHE_HITS,
                "counter",
                "Prompt tokens found in the prefix cache.",
                |s, _| s.prefix_hit_tokens as f64,
            ),
            (
                PROMPT_TOKENS,
                "counter",
                "Prompt tokens processed.",
                |s, _| s.prompt_tokens as f64,
            ),
            (GENERATION_TOKENS, "counter", "Tokens generated.", |s, _| {
                s.generation_tokens as f64
            }),
            (
                NUM_PREEMPTIONS,
                "counter",
                "Preempted sequences.",
                |s, _| s.preemptions as f64,
            ),
            (
                WORKER_ALIVE,
                "gauge",
                "1 while the worker is alive and routable.",
                |s, routable| f64::from(u8::from(s.alive && routable)),
            ),
        ];
        for (name, kind, help, get) in per_worker {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (i, (s, routable)) in snaps.iter().enumerate() {
                let _ = writeln!(out, "{name}{{worker=\"{i}\"}} {}", get(s, *routable));
            }
        }
        type Pick = fn(&WorkerLatency) -> &Histogram;
        let hists: [(&str, &str, Pick); 3] = [
            (
                TIME_TO_FIRST_TOKEN,
                "Time to first token in seconds.",
                |w| &w.ttft,
            ),
            (
                INTER_TOKEN_LATENCY,
                "Time between consecutive tokens in seconds.",
                |w| &w.itl,
            ),
            (E2E_REQUEST_LATENCY, "Request latency in seconds.", |w| {
                &w.e2e
            }),
        ];
        for (name, help, get) in hists {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for (i, w) in self.workers.iter().enumerate() {
                get(w).render(&mut out, name, &format!("worker=\"{i}\""));
            }
        }
        let _ = writeln!(
            out,
            "# HELP {REQUEST_SUCCESS} Finished requests by finish reason.\n# TYPE {REQUEST_SUCCESS} counter"
        );
        for (i, w) in self.workers.iter().enumerate() {
            for (reason, c) in [
                ("stop", &w.finished_stop),
                ("length", &w.finished_length),
                ("abort", &w.finished_abort),
            ] {
                let _ = writeln!(
                    out,
                    "{REQUEST_SUCCESS}{{worker=\"{i}\",finished_reason=\"{reason}\"}} {}",
                    c.load(Ordering::Relaxed)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP {ROUTER_DECISIONS} Routing decisions by policy and chosen worker.\n# TYPE {ROUTER_DECISIONS} counter"
        );
        for (i, c) in self.decisions.iter().enumerate() {
            let _ = writeln!(
                out,
                "{ROUTER_DECISIONS}{{policy=\"{policy}\",worker=\"{i}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP {ROUTER_MATCHED_BLOCKS} Prompt blocks the chosen worker was believed to have cached.\n# TYPE {ROUTER_MATCHED_BLOCKS} histogram"
        );
        self.matched_blocks.render(
            &mut out,
            ROUTER_MATCHED_BLOCKS,
            &format!("policy=\"{policy}\""),
        );
        let _ = writeln!(
            out,
            "# HELP {ROUTER_DECISION_SECONDS} Time spent choosing a worker.\n# TYPE {ROUTER_DECISION_SECONDS} histogram"
        );
        self.decision_seconds.render(
            &mut out,
            ROUTER_DECISION_SECONDS,
            &format!("policy=\"{policy}\""),
        );
        let _ = writeln!(
            out,
            "# HELP {REQUESTS_REJECTED} Requests refused before routing.\n# TYPE {REQUESTS_REJECTED} counter\n{REQUESTS_REJECTED}{{reason=\"overloaded\"}} {}",
            self.rejected_overloaded.load(Ordering::Relaxed)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_series_with_worker_labels() {
        let m = Metrics::new(2);
        m.workers[1].ttft.observe(0.03);
        m.decisions[1].fetch_add(3, Ordering::Relaxed);
        let snap = WorkerSnapshot {
            alive: true,
            ..Default::default()
        };
        let text = m.render("precise", &[(snap, true), (snap, false)]);
        for name in [
            NUM_REQUESTS_RUNNING,
            NUM_REQUESTS_WAITING,
            KV_CACHE_USAGE_PERC,
            PREFIX_CACHE_QUERIES,
            PREFIX_CACHE_HITS,
            PROMPT_TOKENS,
            GENERATION_TOKENS,
        ] {
            assert!(
                text.contains(&format!("{name}{{worker=\"0\"}} 0")),
                "{name}"
            );
            assert!(
                text.contains(&format!("{name}{{worker=\"1\"}} 0")),
                "{name}"
            );
        }
        assert!(
            text.contains("reprise:time_to_first_token_seconds_bucket{worker=\"1\",le=\"0.04\"} 1")
        );
        assert!(text.contains("reprise:time_to_first_token_seconds_count{worker=\"1\"} 1"));
        assert!(text.contains("reprise:router_decisions_total{policy=\"precise\",worker=\"1\"} 3"));
        assert!(text.contains("reprise:worker_alive{worker=\"1\"} 0"));
        assert!(text.contains("reprise:router_matched_blocks_count{policy=\"precise\"} 0"));
    }
}
