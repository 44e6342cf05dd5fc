//! `reprise serve`'s metrics: per-worker request histograms and counters beside the
//! workers' own snapshots, rendered as reprise's per-worker series and vLLM's
//! per-process ones (names and buckets in `reprise_api::metrics`).

use reprise_api::metrics::*;
use reprise_engine::engine::{WorkerSnapshot, STEP_TOKEN_BUCKETS};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

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

impl Metrics {
    /// Metrics for `n` workers serving contexts up to `max_model_len` tokens.
    pub fn new(n: usize, max_model_len: usize, info: ProcessInfo) -> Self {
        let token_buckets = buckets_1_2_5(max_model_len.max(1));
        Self {
            workers: (0..n).map(|_| WorkerLatency::new(&token_buckets)).collect(),
            token_buckets: token_buckets.into(),
            info,
        }
    }

    /// Renders the workers' and the process's series in the Prometheus text format
    /// (version 0.0.4); the router's come from `reprise_api::metrics::RouterMetrics`.
    pub fn render(
        &self,
        snaps: &[(WorkerSnapshot, bool)],
        publisher: Option<PublisherCounts>,
    ) -> String {
        let mut out = String::with_capacity(32 * 1024);
        self.render_workers(&mut out, snaps);
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

    fn render_workers(&self, out: &mut String, snaps: &[(WorkerSnapshot, bool)]) {
        type Get = fn(&WorkerSnapshot, bool) -> f64;
        let per_worker: [(&str, &str, &str, Get); 10] = [
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
                NUM_PREFILL_TOKENS_PENDING,
                "gauge",
                "Prompt tokens the running requests have still to prefill.",
                |s, _| s.load.prefill_tokens as f64,
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
                    h.bounds(),
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
                .map_or(&self.token_buckets[..], |w| get(w).bounds());
            let merged = merge(self.workers.iter().map(get), bounds.len());
            render_hist(out, name, &labels, bounds, &merged);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reprise_protocol::WorkerLoad;

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
        let snap = WorkerSnapshot {
            alive: true,
            ..Default::default()
        };
        let text = m.render(&[(snap, true), (snap, false)], None);
        for name in [
            NUM_REQUESTS_RUNNING,
            NUM_REQUESTS_WAITING,
            NUM_PREFILL_TOKENS_PENDING,
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
        assert!(text.contains("reprise:worker_alive{worker=\"1\"} 0"));
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
                prefill_tokens: in_use * 4,
            },
            prefix_query_tokens: queries,
            alive,
            ..Default::default()
        };
        let snaps = [(snap(2, 10, 50, true), true), (snap(3, 30, 70, true), true)];
        let text = m.render(
            &snaps,
            Some(PublisherCounts {
                batches: 4,
                dropped: 1,
            }),
        );
        let l = "{engine=\"0\",model_name=\"m\\\"1\"}";
        assert_eq!(
            value(
                &text,
                &format!("{NUM_PREFILL_TOKENS_PENDING}{{worker=\"1\"}}")
            ),
            120.0
        );
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
        let text = m.render(&snaps, None);
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
