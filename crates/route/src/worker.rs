//! One remote worker as `reprise route` sees it: where it is, whether it is healthy
//! (two failed checks take it out of routing, two passed ones bring it back), what it
//! is doing (its own vLLM-named metrics, scraped, plus the requests this router has
//! in flight there), and its KV-event stream's counters.

use super::config::WorkerSpec;
use parking_lot::Mutex;
use reprise_api::metrics::NUM_PREFILL_TOKENS_PENDING;
use reprise_protocol::WorkerLoad;
use reprise_router::remote::RemoteStats;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Consecutive results that flip a worker's health.
const FLIP_AFTER: u32 = 2;

/// What a worker's `/metrics` said last.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Scraped {
    /// `vllm:num_requests_running`, summed over its engines.
    pub running: usize,
    /// `vllm:num_requests_waiting`, summed.
    pub waiting: usize,
    /// `vllm:kv_cache_usage_perc`, averaged (0..1).
    pub kv_usage: f64,
    /// `num_gpu_blocks × block_size` of `vllm:cache_config_info`: its KV pool in tokens.
    pub pool_tokens: Option<usize>,
    /// `reprise:num_prefill_tokens_pending`, summed: prefill its running requests still
    /// owe (a reprise worker says; vLLM does not, and it stays 0).
    pub prefill_tokens: usize,
}

impl Scraped {
    /// Reads the vLLM series a router needs from a Prometheus text page.
    pub fn parse(text: &str) -> Self {
        let mut s = Scraped::default();
        let (mut usage_sum, mut usage_n) = (0.0, 0usize);
        let mut pool = 0usize;
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = match line.rsplit_once(' ') {
                Some((a, v)) => (a.trim(), v.trim()),
                None => continue,
            };
            let (name, labels) = match series.find('{') {
                Some(i) => (&series[..i], &series[i..]),
                None => (series, ""),
            };
            let v: f64 = match value.parse() {
                Ok(v) if f64::is_finite(v) => v,
                _ => continue,
            };
            match name {
                "vllm:num_requests_running" => s.running += v.max(0.0) as usize,
                "vllm:num_requests_waiting" => s.waiting += v.max(0.0) as usize,
                NUM_PREFILL_TOKENS_PENDING => s.prefill_tokens += v.max(0.0) as usize,
                "vllm:kv_cache_usage_perc" | "vllm:gpu_cache_usage_perc" => {
                    usage_sum += v.clamp(0.0, 1.0);
                    usage_n += 1;
                }
                "vllm:cache_config_info" => {
                    let num = label(labels, "num_gpu_blocks").and_then(|x| x.parse::<usize>().ok());
                    let bs = label(labels, "block_size").and_then(|x| x.parse::<usize>().ok());
                    if let (Some(n), Some(b)) = (num, bs) {
                        pool += n * b;
                    }
                }
                _ => {}
            }
        }
        if usage_n > 0 {
            s.kv_usage = usage_sum / usage_n as f64;
        }
        s.pool_tokens = (pool > 0).then_some(pool);
        s
    }
}

/// The value of `key` in a `{k="v",…}` label set.
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("{key}=\"");
    let start = labels.find(&pat)? + pat.len();
    let rest = &labels[start..];
    rest.find('"').map(|end| &rest[..end])
}

/// Health, load and counters of one worker, shared by the request path, the health
/// and scrape loops and its event subscriber.
pub struct RemoteWorker {
    /// Its index (the order of `--worker` options, then the workers file).
    pub index: usize,
    /// Where it is.
    pub spec: WorkerSpec,
    /// `host:port` of its URL.
    pub authority: String,
    /// Its URL's path prefix.
    pub base: String,
    healthy: AtomicBool,
    fails: AtomicU32,
    oks: AtomicU32,
    inflight: AtomicUsize,
    scraped: Mutex<Scraped>,
    stream: Mutex<RemoteStats>,
    /// Requests this router sent it that failed before their first byte.
    pub failures: AtomicU64,
}

impl RemoteWorker {
    /// A worker believed healthy until a check says otherwise.
    pub fn new(index: usize, spec: WorkerSpec) -> Self {
        let (authority, base) = spec.authority_and_base();
        Self {
            index,
            spec,
            authority,
            base,
            healthy: AtomicBool::new(true),
            fails: AtomicU32::new(0),
            oks: AtomicU32::new(0),
            inflight: AtomicUsize::new(0),
            scraped: Mutex::new(Scraped::default()),
            stream: Mutex::new(RemoteStats::default()),
            failures: AtomicU64::new(0),
        }
    }

    /// The URL of `path` on this worker.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}{path}", self.authority, self.base)
    }

    /// Whether it is in routing.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records a health check; returns the new state when it flipped.
    pub fn record_check(&self, ok: bool) -> Option<bool> {
        let (this, other) = if ok {
            (&self.oks, &self.fails)
        } else {
            (&self.fails, &self.oks)
        };
        other.store(0, Ordering::Relaxed);
        let n = this.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= FLIP_AFTER && self.healthy() != ok {
            self.healthy.store(ok, Ordering::Relaxed);
            return Some(ok);
        }
        None
    }

    /// A request found it unreachable: out of routing at once (the checks bring it
    /// back). Returns whether that was a change.
    pub fn mark_down(&self) -> bool {
        self.oks.store(0, Ordering::Relaxed);
        self.healthy.swap(false, Ordering::Relaxed)
    }

    /// Requests this router has in flight there.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// One more request in flight; the guard ends it.
    pub fn begin(self: &std::sync::Arc<Self>) -> InFlight {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Stores a scrape of its metrics.
    pub fn set_scraped(&self, s: Scraped) {
        *self.scraped.lock() = s;
    }

    /// The last scrape.
    pub fn scraped(&self) -> Scraped {
        *self.scraped.lock()
    }

    /// Its load for the router: the scrape, plus the requests in flight here that
    /// the scrape did not count yet (sent after it, or still in the worker's intake).
    pub fn load(&self, block_size: usize) -> WorkerLoad {
        let s = self.scraped();
        let total = s.pool_tokens.map_or(0, |t| t / block_size.max(1));
        WorkerLoad {
            running: s.running,
            waiting: s.waiting.max(self.inflight().saturating_sub(s.running)),
            blocks_in_use: (s.kv_usage * total as f64).round() as usize,
            total_blocks: total,
            prefill_tokens: s.prefill_tokens,
        }
    }

    /// Stores its event stream's counters.
    pub fn set_stream_stats(&self, s: RemoteStats) {
        *self.stream.lock() = s;
    }

    /// Its event stream's counters.
    pub fn stream_stats(&self) -> RemoteStats {
        *self.stream.lock()
    }
}

/// A request in flight on a worker; dropping it ends the request's count.
pub struct InFlight(std::sync::Arc<RemoteWorker>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn worker() -> Arc<RemoteWorker> {
        Arc::new(RemoteWorker::new(
            0,
            WorkerSpec {
                url: "http://127.0.0.1:9".into(),
                events: None,
                replay: None,
            },
        ))
    }

    #[test]
    fn scrapes_vllms_series() {
        let text = "# HELP x\nvllm:num_requests_running{engine=\"0\",model_name=\"m\"} 3\n\
            vllm:num_requests_running{engine=\"1\",model_name=\"m\"} 1.0\n\
            vllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 2\n\
            vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.5\n\
            vllm:kv_cache_usage_perc{engine=\"1\",model_name=\"m\"} 0.25\n\
            vllm:cache_config_info{block_size=\"64\",engine=\"0\",num_gpu_blocks=\"100\"} 1\n\
            reprise:num_requests_running{worker=\"0\"} 99\n\
            reprise:num_prefill_tokens_pending{worker=\"0\"} 300\n\
            reprise:num_prefill_tokens_pending{worker=\"1\"} 20\n";
        let s = Scraped::parse(text);
        assert_eq!((s.running, s.waiting), (4, 2));
        assert_eq!(s.prefill_tokens, 320);
        assert!((s.kv_usage - 0.375).abs() < 1e-12);
        assert_eq!(s.pool_tokens, Some(6400));
        assert_eq!(
            Scraped::parse("garbage\n{}\nvllm:num_requests_waiting NaN"),
            Scraped::default()
        );
    }

    #[test]
    fn health_flips_after_two_results_and_load_counts_unscraped_requests() {
        let w = worker();
        assert!(w.healthy());
        assert_eq!(w.record_check(false), None);
        assert_eq!(w.record_check(false), Some(false));
        assert_eq!(w.record_check(true), None);
        assert_eq!(w.record_check(false), None, "a failure resets the passes");
        assert_eq!(w.record_check(true), None);
        assert_eq!(w.record_check(true), Some(true));
        assert!(w.mark_down());
        assert!(!w.mark_down());
        w.set_scraped(Scraped {
            running: 2,
            waiting: 0,
            kv_usage: 0.5,
            pool_tokens: Some(1600),
            prefill_tokens: 48,
        });
        let g: Vec<InFlight> = (0..5).map(|_| w.begin()).collect();
        let l = w.load(16);
        assert_eq!(
            (l.running, l.waiting, l.total_blocks, l.blocks_in_use),
            (2, 3, 100, 50)
        );
        assert_eq!(
            l.prefill_tokens, 48,
            "a reprise worker's pending prefill passes through"
        );
        drop(g);
        assert_eq!(w.load(16).waiting, 0);
    }
}
