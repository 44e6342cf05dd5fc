//! Prometheus metrics: every name in one place, plain text rendering by hand.
//!
//! Two families of series. reprise's own, per worker (`worker` label), for looking
//! inside the process; and vLLM's, for the process as one endpoint (labels `engine="0"`
//! and `model_name`, values summed over the workers), with vLLM's names, types,
//! buckets and semantics (checked against `vllm/v1/metrics/loggers.py`), so vLLM's
//! Grafana dashboard, llm-d's scrapers and benchmark tools that read a Prometheus
//! server work unchanged. Both are rendered from the same per-worker data, so they
//! always agree.
//!
//! Why no `prometheus` / `metrics` crate: the label sets are fixed; per-worker gauges
//! and counters are read straight from the workers' snapshots at scrape time, and the
//! histograms are bucket arrays behind a mutex. The crates would add a registry,
//! protobuf or a recorder layer and their dependency trees for text formatting.

use parking_lot::Mutex;
use reprise_router::Decision;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Requests in a worker's running batch (gauge).
pub const NUM_REQUESTS_RUNNING: &str = "reprise:num_requests_running";
/// Requests admitted to a worker but waiting (gauge).
pub const NUM_REQUESTS_WAITING: &str = "reprise:num_requests_waiting";
/// Prompt tokens a worker's running requests have still to prefill (gauge; `reprise
/// route`'s cost policy reads it from remote reprise workers).
pub const NUM_PREFILL_TOKENS_PENDING: &str = "reprise:num_prefill_tokens_pending";
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
/// Time to first token, from the request's arrival (histogram, seconds).
pub const TIME_TO_FIRST_TOKEN: &str = "reprise:time_to_first_token_seconds";
/// Gap between consecutive tokens of a request (histogram, seconds).
pub const INTER_TOKEN_LATENCY: &str = "reprise:inter_token_latency_seconds";
/// Request latency from arrival to its last token (histogram, seconds).
pub const E2E_REQUEST_LATENCY: &str = "reprise:e2e_request_latency_seconds";
/// Time from the worker taking a request in to its first scheduled step (histogram, seconds).
pub const REQUEST_QUEUE_TIME: &str = "reprise:request_queue_time_seconds";
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
/// KV-event batches published on `--kv-events-endpoint` (counter).
pub const KV_EVENT_BATCHES: &str = "reprise:kv_event_batches_total";
/// KV-event batches whose live copy was dropped (still in the replay buffer) (counter).
pub const KV_EVENT_BATCHES_DROPPED: &str = "reprise:kv_event_batches_dropped_total";

/// `reprise route`: requests retried on another worker after theirs failed (counter).
pub const ROUTER_RETRIES: &str = "reprise:router_retries_total";
/// `reprise route`: time from a request's arrival to its forwarding (tokenize, hash,
/// score, connect) (histogram, seconds).
pub const ROUTER_FORWARD_SECONDS: &str = "reprise:router_forward_seconds";
/// `reprise route`: 1 while a worker is in routing (gauge, `worker` and `url` labels).
pub const WORKER_HEALTHY: &str = "reprise:worker_healthy";
/// `reprise route`: requests in flight on a worker through this router (gauge).
pub const WORKER_INFLIGHT: &str = "reprise:worker_inflight_requests";
/// `reprise route`: a worker's own running requests, as last scraped (gauge).
pub const WORKER_RUNNING: &str = "reprise:worker_num_requests_running";
/// `reprise route`: a worker's own waiting requests, as last scraped (gauge).
pub const WORKER_WAITING: &str = "reprise:worker_num_requests_waiting";
/// `reprise route`: a worker's KV-cache usage, as last scraped (gauge, 0..1).
pub const WORKER_KV_USAGE: &str = "reprise:worker_kv_cache_usage_perc";
/// `reprise route`: requests a worker failed before their first byte (counter).
pub const WORKER_FAILURES: &str = "reprise:worker_failures_total";
/// `reprise route`: a worker's KV-event batches applied (counter).
pub const WORKER_EVENT_BATCHES: &str = "reprise:worker_kv_event_batches_total";
/// `reprise route`: a worker's KV-event streams dropped and rebuilt (gaps replay could
/// not fill) (counter).
pub const WORKER_EVENT_RESYNCS: &str = "reprise:worker_kv_event_resyncs_total";
/// `reprise route`: a worker's restarts seen in its KV-event stream (counter).
pub const WORKER_EVENT_RESTARTS: &str = "reprise:worker_kv_event_restarts_total";
/// `reprise route`: engine blocks a worker holds per its KV events (gauge).
pub const WORKER_ENGINE_BLOCKS: &str = "reprise:worker_engine_blocks";

/// vLLM's names, for the process as one endpoint.
pub mod vllm {
    /// Requests in model execution batches (gauge).
    pub const NUM_REQUESTS_RUNNING: &str = "vllm:num_requests_running";
    /// Requests waiting to be processed (gauge).
    pub const NUM_REQUESTS_WAITING: &str = "vllm:num_requests_waiting";
    /// KV-cache usage, 0..1 (gauge).
    pub const KV_CACHE_USAGE_PERC: &str = "vllm:kv_cache_usage_perc";
    /// Cache configuration as labels, value 1 (gauge).
    pub const CACHE_CONFIG_INFO: &str = "vllm:cache_config_info";
    /// Prefix-cache queries in tokens (counter).
    pub const PREFIX_CACHE_QUERIES: &str = "vllm:prefix_cache_queries_total";
    /// Prefix-cache hits in tokens (counter).
    pub const PREFIX_CACHE_HITS: &str = "vllm:prefix_cache_hits_total";
    /// Prompt tokens, cached ones included (counter).
    pub const PROMPT_TOKENS: &str = "vllm:prompt_tokens_total";
    /// Prompt tokens served from the prefix cache (counter).
    pub const PROMPT_TOKENS_CACHED: &str = "vllm:prompt_tokens_cached_total";
    /// Generated tokens (counter).
    pub const GENERATION_TOKENS: &str = "vllm:generation_tokens_total";
    /// Preemptions (counter).
    pub const NUM_PREEMPTIONS: &str = "vllm:num_preemptions_total";
    /// Finished requests by `finished_reason` (counter).
    pub const REQUEST_SUCCESS: &str = "vllm:request_success_total";
    /// Tokens per engine step (histogram; the `_total` is part of vLLM's name).
    pub const ITERATION_TOKENS: &str = "vllm:iteration_tokens_total";
    /// Time to first token (histogram, seconds).
    pub const TIME_TO_FIRST_TOKEN: &str = "vllm:time_to_first_token_seconds";
    /// Inter-token latency (histogram, seconds).
    pub const INTER_TOKEN_LATENCY: &str = "vllm:inter_token_latency_seconds";
    /// Decode time per output token of a request (histogram, seconds).
    pub const TIME_PER_OUTPUT_TOKEN: &str = "vllm:request_time_per_output_token_seconds";
    /// End-to-end latency (histogram, seconds).
    pub const E2E_REQUEST_LATENCY: &str = "vllm:e2e_request_latency_seconds";
    /// Time waiting before the first step (histogram, seconds).
    pub const REQUEST_QUEUE_TIME: &str = "vllm:request_queue_time_seconds";
    /// First step to first token (histogram, seconds).
    pub const REQUEST_PREFILL_TIME: &str = "vllm:request_prefill_time_seconds";
    /// First token to last token (histogram, seconds).
    pub const REQUEST_DECODE_TIME: &str = "vllm:request_decode_time_seconds";
    /// First step to last token (histogram, seconds).
    pub const REQUEST_INFERENCE_TIME: &str = "vllm:request_inference_time_seconds";
    /// Prompt length (histogram, tokens).
    pub const REQUEST_PROMPT_TOKENS: &str = "vllm:request_prompt_tokens";
    /// Generated length (histogram, tokens).
    pub const REQUEST_GENERATION_TOKENS: &str = "vllm:request_generation_tokens";
    /// Longest choice of a request (histogram, tokens).
    pub const REQUEST_MAX_NUM_GENERATION_TOKENS: &str = "vllm:request_max_num_generation_tokens";
    /// The `max_tokens` parameter (histogram).
    pub const REQUEST_PARAMS_MAX_TOKENS: &str = "vllm:request_params_max_tokens";
    /// The `n` parameter (histogram).
    pub const REQUEST_PARAMS_N: &str = "vllm:request_params_n";
}

// vLLM's buckets (vllm/v1/metrics/loggers.py).
pub const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
pub const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
pub const LATENCY_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];
pub const N_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0];
pub const MATCHED_BLOCK_BUCKETS: &[f64] = &[
    0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];
pub const DECISION_BUCKETS: &[f64] = &[
    1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 1e-2,
];

/// vLLM's token-count buckets: 1, 2, 5, 10, 20, 50, … up to `max` (`build_1_2_5_buckets`).
pub fn buckets_1_2_5(max: usize) -> Vec<f64> {
    let mut out = Vec::new();
    let mut scale = 1u64;
    loop {
        for m in [1u64, 2, 5] {
            let v = m.saturating_mul(scale);
            if v > max as u64 {
                return out;
            }
            out.push(v as f64);
        }
        scale = scale.saturating_mul(10);
    }
}

/// vLLM's `finished_reason` values (`repetition` is never produced by reprise).
pub const FINISHED_REASONS: [&str; 5] = ["stop", "length", "abort", "error", "repetition"];

/// A cumulative histogram with fixed upper bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: Box<[f64]>,
    inner: Mutex<HistInner>,
}

/// A histogram's counts at one moment.
#[derive(Debug, Clone, Default)]
pub struct HistInner {
    /// Observations per bucket (not cumulative); one more than the bounds (+Inf).
    pub counts: Vec<u64>,
    /// Sum of the observations.
    pub sum: f64,
}

impl Histogram {
    /// An empty histogram with upper bounds `bounds`.
    pub fn new(bounds: &[f64]) -> Self {
        Self {
            bounds: bounds.into(),
            inner: Mutex::new(HistInner {
                counts: vec![0; bounds.len() + 1],
                sum: 0.0,
            }),
        }
    }

    /// Its upper bounds.
    pub fn bounds(&self) -> &[f64] {
        &self.bounds
    }

    /// Record one observation.
    pub fn observe(&self, v: f64) {
        let i = self.bounds.partition_point(|&b| b < v);
        let mut h = self.inner.lock();
        h.counts[i] += 1;
        h.sum += v;
    }

    /// Its counts now.
    pub fn snapshot(&self) -> HistInner {
        self.inner.lock().clone()
    }
}

/// Writes one histogram series from per-bucket counts.
pub fn render_hist(out: &mut String, name: &str, labels: &str, bounds: &[f64], h: &HistInner) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut cum = 0;
    for (b, c) in bounds.iter().zip(&h.counts) {
        cum += c;
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cum}");
    }
    let total: u64 = h.counts.iter().sum();
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum);
    let _ = writeln!(out, "{name}_count{{{labels}}} {total}");
}

/// Sum of several histograms with the same bounds.
pub fn merge<'a>(hs: impl Iterator<Item = &'a Histogram>, buckets: usize) -> HistInner {
    let mut m = HistInner {
        counts: vec![0; buckets + 1],
        sum: 0.0,
    };
    for h in hs {
        let s = h.snapshot();
        for (a, b) in m.counts.iter_mut().zip(&s.counts) {
            *a += b;
        }
        m.sum += s.sum;
    }
    m
}

/// The routing decisions of `serve`'s in-process router or of `route`: how many
/// went to each worker, how much cache the chosen one was believed to hold, and how
/// long each took.
#[derive(Debug)]
pub struct RouterMetrics {
    decisions: Vec<AtomicU64>,
    matched_blocks: Histogram,
    decision_seconds: Histogram,
}

impl RouterMetrics {
    /// Counters for up to `max_workers` workers.
    pub fn new(max_workers: usize) -> Self {
        Self {
            decisions: (0..max_workers).map(|_| AtomicU64::new(0)).collect(),
            matched_blocks: Histogram::new(MATCHED_BLOCK_BUCKETS),
            decision_seconds: Histogram::new(DECISION_BUCKETS),
        }
    }

    /// Records one decision that took `took`.
    pub fn observe(&self, d: &Decision, took: Duration) {
        self.decision_seconds.observe(took.as_secs_f64());
        self.matched_blocks.observe(d.chosen_matched() as f64);
        if let Some(c) = self.decisions.get(d.worker) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Decisions sent to `worker` so far.
    pub fn decisions(&self, worker: usize) -> u64 {
        self.decisions
            .get(worker)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// The router's series for `workers` workers under `policy`, and the 429 count.
    pub fn render(&self, out: &mut String, policy: &str, workers: usize, rejected: u64) {
        let _ = writeln!(
            out,
            "# HELP {ROUTER_DECISIONS} Routing decisions by policy and chosen worker.\n# TYPE {ROUTER_DECISIONS} counter"
        );
        for (i, c) in self.decisions.iter().take(workers).enumerate() {
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
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            render_hist(out, name, &labels, h.bounds(), &h.snapshot());
        }
        let _ = writeln!(
            out,
            "# HELP {REQUESTS_REJECTED} Requests refused before routing.\n# TYPE {REQUESTS_REJECTED} counter\n{REQUESTS_REJECTED}{{reason=\"overloaded\"}} {rejected}"
        );
    }
}

/// A label value escaped for the text format.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
