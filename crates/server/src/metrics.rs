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
use reprise_engine::engine::{WorkerSnapshot, STEP_TOKEN_BUCKETS};
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
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const LATENCY_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];
const N_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0];
const MATCHED_BLOCK_BUCKETS: &[f64] = &[
    0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];
const DECISION_BUCKETS: &[f64] = &[
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
const FINISHED_REASONS: [&str; 5] = ["stop", "length", "abort", "error", "repetition"];

/// A cumulative histogram with fixed upper bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: Box<[f64]>,
    inner: Mutex<HistInner>,
}

#[derive(Debug, Clone, Default)]
struct HistInner {
    /// Observations per bucket (not cumulative); one more than the bounds (+Inf).
    counts: Vec<u64>,
    sum: f64,
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

    /// Record one observation.
    pub fn observe(&self, v: f64) {
        let i = self.bounds.partition_point(|&b| b < v);
        let mut h = self.inner.lock();
        h.counts[i] += 1;
        h.sum += v;
    }

    fn snapshot(&self) -> HistInner {
        self.inner.lock().clone()
    }
}

/// Writes one histogram series from per-bucket counts.
fn render_hist(out: &mut String, name: &str, labels: &str, bounds: &[f64], h: &HistInner) {
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
fn merge<'a>(hs: impl Iterator<Item = &'a Histogram>, buckets: usize) -> HistInner {
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

/// Per-worker request metrics (gauges and engine counters come from snapshots).
#[derive(Debug)]
pub struct WorkerLatency {
    /// Time to first token, from arrival.
    pub ttft: Histogram,
    /// Inter-token latency.
    pub itl: Histogram,
    /// End-to-end latency, from arrival.
    pub e2e: Histogram,
    /// Worker intake to first scheduled step.
    pub queue: Histogram,
    /// Decode time per output token.
    pub tpot: Histogram,
    /// First step to first token.
    pub prefill: Histogram,
    /// First to last token.
    pub decode: Histogram,
    /// First step to last token.
    pub inference: Histogram,
    /// Prompt lengths.
    pub prompt_tokens: Histogram,
    /// Generated tokens per request.
    pub generation_tokens: Histogram,
    /// Longest choice per request.
    pub max_generation_tokens: Histogram,
    /// `max_tokens` per request.
    pub max_tokens: Histogram,
    /// `n` per request.
    pub n: Histogram,
    /// Prompt tokens served from cache (the engine's figure per finished request).
    pub cached_prompt_tokens: AtomicU64,
    /// Finished with `stop`.
    pub finished_stop: AtomicU64,
    /// Finished with `length`.
    pub finished_length: AtomicU64,
    /// Aborted (client went away).
    pub finished_abort: AtomicU64,
    /// Failed (the worker failed the request).
    pub finished_error: AtomicU64,
}

impl WorkerLatency {
    fn new(token_buckets: &[f64]) -> Self {
        Self {
            ttft: Histogram::new(TTFT_BUCKETS),
            itl: Histogram::new(ITL_BUCKETS),
            e2e: Histogram::new(LATENCY_BUCKETS),
            queue: Histogram::new(LATENCY_BUCKETS),
            tpot: Histogram::new(ITL_BUCKETS),
            prefill: Histogram::new(LATENCY_BUCKETS),
            decode: Histogram::new(LATENCY_BUCKETS),
            inference: Histogram::new(LATENCY_BUCKETS),
            prompt_tokens: Histogram::new(token_buckets),
            generation_tokens: Histogram::new(token_buckets),
            max_generation_tokens: Histogram::new(token_buckets),
            max_tokens: Histogram::new(token_buckets),
            n: Histogram::new(N_BUCKETS),
            cached_prompt_tokens: AtomicU64::new(0),
            finished_stop: AtomicU64::new(0),
            finished_length: AtomicU64::new(0),
            finished_abort: AtomicU64::new(0),
            finished_error: AtomicU64::new(0),
        }
    }

    fn finished(&self, reason: &str) -> u64 {
        match reason {
            "stop" => self.finished_stop.load(Ordering::Relaxed),
            "length" => self.finished_length.load(Ordering::Relaxed),
            "abort" => self.finished_abort.load(Ordering::Relaxed),
            "error" => self.finished_error.load(Ordering::Relaxed),
            _ => 0,
        }
    }
}

/// What `vllm:cache_config_info` and the `model_name` label report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    /// The served model name.
    pub model_name: String,
    /// Tokens per KV block.
    pub block_size: usize,
    /// KV cache element type (`float32`, `bfloat16`).
    pub cache_dtype: String,
    /// Block-key hash (`xxh3`, `sha256`).
    pub hash_algo: String,
}

/// Server-side metrics; worker gauges and counters come from snapshots at scrape time.
#[derive(Debug)]
pub struct Metrics {
    /// Per-worker request metrics.
    pub workers: Vec<WorkerLatency>,
    /// Decisions per chosen worker.
    pub decisions: Vec<AtomicU64>,
    /// Matched blocks of the chosen worker.
    pub matched_blocks: Histogram,
    /// Decision time.
    pub decision_seconds: Histogram,
    /// 429s.
    pub rejected_overloaded: AtomicU64,
    token_buckets: Box<[f64]>,
    info: ProcessInfo,
}

/// What the publisher reports, for its two counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublisherCounts {
    /// Batches published.
    pub batches: u64,
    /// Live copies dropped.
    pub dropped: u64,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// Metrics for `n` workers serving contexts up to `max_model_len` tokens.
    pub fn new(n: usize, max_model_len: usize, info: ProcessInfo) -> Self {
        let token_buckets = buckets_1_2_5(max_model_len.max(1));
        Self {
            workers: (0..n).map(|_| WorkerLatency::new(&token_buckets)).collect(),
            decisions: (0..n).map(|_| AtomicU64::new(0)).collect(),
            matched_blocks: Histogram::new(MATCHED_BLOCK_BUCKETS),
            decision_seconds: Histogram::new(DECISION_BUCKETS),
            rejected_overloaded: AtomicU64::new(0),
            token_buckets: token_buckets.into(),
            info,
        }
    }

    /// Renders everything in the Prometheus text format (version 0.0.4).
    pub fn render(
        &self,
        policy: &str,
        snaps: &[(WorkerSnapshot, bool)],
        publisher: Option<PublisherCounts>,
    ) -> String {
        let mut out = String::with_capacity(32 * 1024);
        self.render_workers(&mut out, policy, snaps);
        if let Some(p) = publisher {
            for (name, help, v) in [
                (KV_EVENT_BATCHES, "KV-event batches published.", p.batches),
                (
                    KV_EVENT_BATCHES_DROPPED,
                    "KV-event batches whose live copy was dropped (they stay replayable).",
                    p.dropped,
                ),
            ] {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
                );
            }
        }
        self.render_vllm(&mut out, snaps);
        out
    }

    fn render_workers(&self, out: &mut String, policy: &str, snaps: &[(WorkerSnapshot, bool)]) {
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
        let hists: [(&str, &str, Pick); 4] = [
            (
                TIME_TO_FIRST_TOKEN,
                "Time to first token in seconds, from the request's arrival.",
                |w| &w.ttft,
            ),
            (
                INTER_TOKEN_LATENCY,
                "Time between consecutive tokens in seconds.",
                |w| &w.itl,
            ),
            (
                E2E_REQUEST_LATENCY,
                "Request latency in seconds, from arrival to the last token.",
                |w| &w.e2e,
            ),
            (
                REQUEST_QUEUE_TIME,
                "Seconds from the worker taking a request in to its first step.",
                |w| &w.queue,
            ),
        ];
        for (name, help, get) in hists {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for (i, w) in self.workers.iter().enumerate() {
                let h = get(w);
                render_hist(
                    out,
                    name,
                    &format!("worker=\"{i}\""),
                    &h.bounds,
                    &h.snapshot(),
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP {REQUEST_SUCCESS} Finished requests by finish reason.\n# TYPE {REQUEST_SUCCESS} counter"
        );
        for (i, w) in self.workers.iter().enumerate() {
            for reason in ["stop", "length", "abort", "error"] {
                let _ = writeln!(
                    out,
                    "{REQUEST_SUCCESS}{{worker=\"{i}\",finished_reason=\"{reason}\"}} {}",
                    w.finished(reason)
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
            render_hist(out, name, &labels, &h.bounds, &h.snapshot());
        }
        let _ = writeln!(
            out,
            "# HELP {REQUESTS_REJECTED} Requests refused before routing.\n# TYPE {REQUESTS_REJECTED} counter\n{REQUESTS_REJECTED}{{reason=\"overloaded\"}} {}",
            self.rejected_overloaded.load(Ordering::Relaxed)
        );
    }

    fn render_vllm(&self, out: &mut String, snaps: &[(WorkerSnapshot, bool)]) {
        let labels = format!(
            "engine=\"0\",model_name=\"{}\"",
            escape(&self.info.model_name)
        );
        // Load of the workers still serving (a dead worker's last snapshot is stale);
        // counters over every worker, so they never go down.
        let alive = || snaps.iter().filter(|(s, _)| s.alive).map(|(s, _)| s);
        let all = || snaps.iter().map(|(s, _)| s);
        let in_use: usize = alive().map(|s| s.load.blocks_in_use).sum();
        let total: usize = alive().map(|s| s.load.total_blocks).sum();
        let gauges: [(&str, &str, f64); 3] = [
            (
                vllm::NUM_REQUESTS_RUNNING,
                "Number of requests in model execution batches.",
                alive().map(|s| s.load.running).sum::<usize>() as f64,
            ),
            (
                vllm::NUM_REQUESTS_WAITING,
                "Number of requests waiting to be processed.",
                alive().map(|s| s.load.waiting).sum::<usize>() as f64,
            ),
            (
                vllm::KV_CACHE_USAGE_PERC,
                "KV-cache usage. 1 means 100 percent usage.",
                if total == 0 {
                    0.0
                } else {
                    in_use as f64 / total as f64
                },
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{labels}}} {v}"
            );
        }
        let i = &self.info;
        let num_blocks: usize = all().map(|s| s.load.total_blocks).sum();
        let name = vllm::CACHE_CONFIG_INFO;
        let _ = writeln!(
            out,
            "# HELP {name} Information of the LLMEngine CacheConfig\n# TYPE {name} gauge\n\
             {name}{{block_size=\"{}\",cache_dtype=\"{}\",enable_prefix_caching=\"True\",engine=\"0\",\
             model_name=\"{}\",num_gpu_blocks=\"{num_blocks}\",prefix_caching_hash_algo=\"{}\"}} 1",
            i.block_size,
            escape(&i.cache_dtype),
            escape(&i.model_name),
            escape(&i.hash_algo),
        );
        let cached: u64 = self
            .workers
            .iter()
            .map(|w| w.cached_prompt_tokens.load(Ordering::Relaxed))
            .sum();
        let counters: [(&str, &str, u64); 6] = [
            (
                vllm::PREFIX_CACHE_QUERIES,
                "Prefix cache queries, in terms of number of queried tokens.",
                all().map(|s| s.prefix_query_tokens).sum(),
            ),
            (
                vllm::PREFIX_CACHE_HITS,
                "Prefix cache hits, in terms of number of cached tokens.",
                all().map(|s| s.prefix_hit_tokens).sum(),
            ),
            (
                vllm::PROMPT_TOKENS,
                "Number of prefill tokens processed.",
                all().map(|s| s.prompt_tokens).sum(),
            ),
            (
                vllm::PROMPT_TOKENS_CACHED,
                "Number of cached prompt tokens (local + external).",
                cached,
            ),
            (
                vllm::GENERATION_TOKENS,
                "Number of generation tokens processed.",
                all().map(|s| s.generation_tokens).sum(),
            ),
            (
                vllm::NUM_PREEMPTIONS,
                "Cumulative number of preemption from the engine.",
                all().map(|s| s.preemptions).sum(),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{{labels}}} {v}"
            );
        }
        let name = vllm::REQUEST_SUCCESS;
        let _ = writeln!(
            out,
            "# HELP {name} Count of successfully processed requests.\n# TYPE {name} counter"
        );
        for reason in FINISHED_REASONS {
            let v: u64 = self.workers.iter().map(|w| w.finished(reason)).sum();
            let _ = writeln!(
                out,
                "{name}{{engine=\"0\",finished_reason=\"{reason}\",model_name=\"{}\"}} {v}",
                escape(&i.model_name)
            );
        }
        // Tokens per step, from the engines' own histograms.
        let bounds: Vec<f64> = STEP_TOKEN_BUCKETS.iter().map(|&b| b as f64).collect();
        let mut steps = HistInner {
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        };
        for s in all() {
            for (a, b) in steps.counts.iter_mut().zip(&s.step_tokens.counts) {
                *a += b;
            }
            steps.sum += s.step_tokens.sum as f64;
        }
        let name = vllm::ITERATION_TOKENS;
        let _ = writeln!(
            out,
            "# HELP {name} Histogram of number of tokens per engine_step.\n# TYPE {name} histogram"
        );
        render_hist(out, name, &labels, &bounds, &steps);
        type Pick = fn(&WorkerLatency) -> &Histogram;
        let hists: [(&str, &str, Pick); 13] = [
            (
                vllm::TIME_TO_FIRST_TOKEN,
                "Histogram of time to first token in seconds.",
                |w| &w.ttft,
            ),
            (
                vllm::INTER_TOKEN_LATENCY,
                "Histogram of inter-token latency in seconds.",
                |w| &w.itl,
            ),
            (
                vllm::TIME_PER_OUTPUT_TOKEN,
                "Histogram of time_per_output_token_seconds per request.",
                |w| &w.tpot,
            ),
            (
                vllm::E2E_REQUEST_LATENCY,
                "Histogram of e2e request latency in seconds.",
                |w| &w.e2e,
            ),
            (
                vllm::REQUEST_QUEUE_TIME,
                "Histogram of time spent in WAITING phase for request.",
                |w| &w.queue,
            ),
            (
                vllm::REQUEST_INFERENCE_TIME,
                "Histogram of time spent in RUNNING phase for request.",
                |w| &w.inference,
            ),
            (
                vllm::REQUEST_PREFILL_TIME,
                "Histogram of time spent in PREFILL phase for request.",
                |w| &w.prefill,
            ),
            (
                vllm::REQUEST_DECODE_TIME,
                "Histogram of time spent in DECODE phase for request.",
                |w| &w.decode,
            ),
            (
                vllm::REQUEST_PROMPT_TOKENS,
                "Number of prefill tokens processed.",
                |w| &w.prompt_tokens,
            ),
            (
                vllm::REQUEST_GENERATION_TOKENS,
                "Number of generation tokens processed.",
                |w| &w.generation_tokens,
            ),
            (
                vllm::REQUEST_MAX_NUM_GENERATION_TOKENS,
                "Histogram of maximum number of requested generation tokens.",
                |w| &w.max_generation_tokens,
            ),
            (
                vllm::REQUEST_PARAMS_MAX_TOKENS,
                "Histogram of the max_tokens request parameter.",
                |w| &w.max_tokens,
            ),
            (
                vllm::REQUEST_PARAMS_N,
                "Histogram of the n request parameter.",
                |w| &w.n,
            ),
        ];
        for (name, help, get) in hists {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            let bounds = self
                .workers
                .first()
                .map_or(&self.token_buckets, |w| &get(w).bounds);
            let merged = merge(self.workers.iter().map(get), bounds.len());
            render_hist(out, name, &labels, bounds, &merged);
        }
    }
}

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
            render_hist(&mut out, name, &labels, &h.bounds, &h.snapshot());
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

#[cfg(test)]
mod tests {
    use super::*;
    use reprise_router::WorkerLoad;

    fn info() -> ProcessInfo {
        ProcessInfo {
            model_name: "m\"1".into(),
            block_size: 16,
            cache_dtype: "float32".into(),
            hash_algo: "xxh3".into(),
        }
    }

    /// The value of the series whose line starts with `series` (name plus labels).
    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no series {series}"))
            .parse()
            .unwrap()
    }

    #[test]
    fn renders_every_series_with_worker_labels() {
        let m = Metrics::new(2, 4096, info());
        m.workers[1].ttft.observe(0.03);
        m.decisions[1].fetch_add(3, Ordering::Relaxed);
        let snap = WorkerSnapshot {
            alive: true,
            ..Default::default()
        };
        let text = m.render("precise", &[(snap, true), (snap, false)], None);
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

    #[test]
    fn vllm_series_sum_the_workers_with_vllms_names_and_buckets() {
        let m = Metrics::new(2, 4096, info());
        m.workers[0].ttft.observe(0.03);
        m.workers[1].ttft.observe(200.0);
        m.workers[1].finished_length.fetch_add(2, Ordering::Relaxed);
        m.workers[0].prompt_tokens.observe(700.0);
        let snap = |running, in_use, queries, alive| WorkerSnapshot {
            load: WorkerLoad {
                running,
                waiting: 1,
                blocks_in_use: in_use,
                total_blocks: 100,
            },
            prefix_query_tokens: queries,
            alive,
            ..Default::default()
        };
        let snaps = [(snap(2, 10, 50, true), true), (snap(3, 30, 70, true), true)];
        let text = m.render(
            "precise",
            &snaps,
            Some(PublisherCounts {
                batches: 4,
                dropped: 1,
            }),
        );
        let l = "{engine=\"0\",model_name=\"m\\\"1\"}";
        assert_eq!(value(&text, &format!("vllm:num_requests_running{l}")), 5.0);
        assert_eq!(value(&text, &format!("vllm:num_requests_waiting{l}")), 2.0);
        assert_eq!(value(&text, &format!("vllm:kv_cache_usage_perc{l}")), 0.2);
        assert_eq!(
            value(&text, &format!("vllm:prefix_cache_queries_total{l}")),
            120.0
        );
        assert!(text.contains("# TYPE vllm:prefix_cache_queries_total counter"));
        assert!(text.contains("num_gpu_blocks=\"200\""));
        assert!(text.contains("block_size=\"16\""));
        assert_eq!(
            value(
                &text,
                "vllm:request_success_total{engine=\"0\",finished_reason=\"length\",model_name=\"m\\\"1\"}"
            ),
            2.0
        );
        // TTFT: vLLM's buckets up to 2560 s; both workers' observations in one series.
        let b = |le: &str| {
            format!("vllm:time_to_first_token_seconds_bucket{{engine=\"0\",model_name=\"m\\\"1\",le=\"{le}\"}}")
        };
        assert_eq!(value(&text, &b("0.04")), 1.0);
        assert_eq!(value(&text, &b("160")), 1.0);
        assert_eq!(value(&text, &b("640")), 2.0);
        assert_eq!(value(&text, &b("+Inf")), 2.0);
        // Token counts: 1-2-5 buckets up to the context length.
        let p = |le: &str| {
            format!("vllm:request_prompt_tokens_bucket{{engine=\"0\",model_name=\"m\\\"1\",le=\"{le}\"}}")
        };
        assert_eq!(value(&text, &p("500")), 0.0);
        assert_eq!(value(&text, &p("1000")), 1.0);
        assert!(!text.contains(&p("5000")));
        assert_eq!(value(&text, KV_EVENT_BATCHES), 4.0);
        // A dead worker's stale load leaves the gauges; its counters stay.
        let snaps = [
            (snap(2, 10, 50, true), true),
            (snap(3, 30, 70, false), false),
        ];
        let text = m.render("precise", &snaps, None);
        assert_eq!(value(&text, &format!("vllm:num_requests_running{l}")), 2.0);
        assert_eq!(
            value(&text, &format!("vllm:prefix_cache_queries_total{l}")),
            120.0
        );
    }

    #[test]
    fn token_buckets_follow_vllm() {
        assert_eq!(
            buckets_1_2_5(4096),
            [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0]
        );
        assert_eq!(buckets_1_2_5(1), [1.0]);
        assert_eq!(buckets_1_2_5(20).len(), 5);
    }
}
