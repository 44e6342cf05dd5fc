//! Per-request records and their summary, with `vllm bench serve`'s definitions and
//! field names.
//!
//! - TTFT: arrival (send) to the first non-empty token.
//! - ITL: every gap between consecutive streamed tokens (pooled over requests).
//! - TPOT: per request `(e2el − ttft) / (output_tokens − 1)` (requests with one token
//!   have none).
//! - E2EL: arrival to the last token.
//! - Percentiles: linear interpolation between closest ranks, numpy's default:
//!   `p`-th of sorted `x[0..n]` is at rank `p/100·(n−1)`.
//! - Throughputs divide by the run's duration (first send to last completion).
//! - Goodput: completed requests meeting every given SLO, per second.

use serde::{Deserialize, Serialize};

/// What happened to one request.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Send time, seconds since the run started.
    pub start_s: f64,
    /// Time to first token, seconds (None if it failed before one).
    pub ttft_s: Option<f64>,
    /// End-to-end latency, seconds.
    pub e2el_s: f64,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub output_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
    /// Worker that served it, when known.
    pub worker: Option<usize>,
    /// Error, when it failed.
    pub error: Option<String>,
    /// Gaps between consecutive tokens, seconds (not written to requests.jsonl).
    #[serde(skip)]
    pub itl_s: Vec<f64>,
}

impl RequestRecord {
    /// Whether it completed.
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.ttft_s.is_some()
    }

    /// Time per output token after the first, seconds.
    pub fn tpot_s(&self) -> Option<f64> {
        let ttft = self.ttft_s?;
        (self.output_tokens > 1).then(|| (self.e2el_s - ttft) / (self.output_tokens - 1) as f64)
    }
}

/// Percentile `p` (0..=100) of sorted values, by linear interpolation (numpy's default).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        1 => sorted[0],
        n => {
            let rank = (p / 100.0).clamp(0.0, 1.0) * (n - 1) as f64;
            let lo = rank.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
        }
    }
}

/// Mean, standard deviation and percentiles of one metric, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Dist {
    /// Mean.
    pub mean: f64,
    /// Population standard deviation (numpy's default, as vLLM reports).
    pub std: f64,
    /// 50th percentile.
    pub median: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
}

impl Dist {
    /// Summary of values given in seconds, reported in milliseconds.
    pub fn from_secs(mut v: Vec<f64>) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        v.retain(|x| x.is_finite());
        v.sort_by(f64::total_cmp);
        let n = v.len().max(1) as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        let ms = 1000.0;
        Self {
            mean: mean * ms,
            std: var.sqrt() * ms,
            median: percentile(&v, 50.0) * ms,
            p90: percentile(&v, 90.0) * ms,
            p95: percentile(&v, 95.0) * ms,
            p99: percentile(&v, 99.0) * ms,
        }
    }
}

/// Service-level objectives for goodput, in milliseconds (`--goodput ttft:500 tpot:50`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Slo {
    /// Largest acceptable TTFT.
    pub ttft_ms: Option<f64>,
    /// Largest acceptable TPOT.
    pub tpot_ms: Option<f64>,
    /// Largest acceptable end-to-end latency.
    pub e2el_ms: Option<f64>,
}

impl Slo {
    /// Parse `KEY:MS` pairs (keys ttft, tpot, e2el), vLLM's `--goodput` syntax.
    pub fn parse(items: &[String]) -> anyhow::Result<Self> {
        let mut s = Self::default();
        for it in items
            .iter()
            .flat_map(|i| i.split([',', ' ']))
            .filter(|i| !i.is_empty())
        {
            let (k, v) = it
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("goodput SLO '{it}' is not KEY:MILLISECONDS"))?;
            let v: f64 = v
                .parse()
                .ok()
                .filter(|x: &f64| x.is_finite() && *x > 0.0)
                .ok_or_else(|| {
                    anyhow::anyhow!("goodput SLO '{it}': '{v}' is not a positive number")
                })?;
            match k {
                "ttft" => s.ttft_ms = Some(v),
                "tpot" => s.tpot_ms = Some(v),
                "e2el" => s.e2el_ms = Some(v),
                _ => anyhow::bail!("goodput SLO key '{k}' is not one of ttft, tpot, e2el"),
            }
        }
        Ok(s)
    }

    /// Whether any SLO is set.
    pub fn is_set(&self) -> bool {
        self.ttft_ms.is_some() || self.tpot_ms.is_some() || self.e2el_ms.is_some()
    }

    /// Whether a completed request meets every SLO.
    pub fn met(&self, r: &RequestRecord) -> bool {
        let le = |x: Option<f64>, lim: Option<f64>| match (x, lim) {
            (_, None) => true,
            (Some(x), Some(l)) => x * 1000.0 <= l,
            (None, Some(_)) => true, // a one-token request has no TPOT to violate
        };
        r.ok()
            && le(r.ttft_s, self.ttft_ms)
            && le(r.tpot_s(), self.tpot_ms)
            && le(Some(r.e2el_s), self.e2el_ms)
    }
}

/// Requests, tokens and cache hits of one worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerSplit {
    /// Worker index.
    pub worker: usize,
    /// Completed requests.
    pub requests: usize,
    /// Their prompt tokens.
    pub prompt_tokens: usize,
    /// Of those, served from cache.
    pub cached_tokens: usize,
    /// Their output tokens.
    pub output_tokens: usize,
}

/// One benchmark record (one policy at one rate): `vllm bench serve`'s fields plus
/// the cache figures. Serialised flat, in this order.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Summary {
    /// Routing policy (or a label for runs against a foreign server).
    pub policy: String,
    /// Poisson/gamma rate in requests/s (`inf` = all at once, as vLLM writes it).
    pub request_rate: f64,
    /// Concurrency cap, when one was set.
    pub max_concurrency: Option<usize>,
    /// Requests that completed.
    pub completed: usize,
    /// Requests that failed.
    pub failed: usize,
    /// Seconds from the first send to the last completion.
    pub duration: f64,
    /// Prompt tokens of completed requests.
    pub total_input_tokens: usize,
    /// Output tokens of completed requests.
    pub total_output_tokens: usize,
    /// Completed requests per second.
    pub request_throughput: f64,
    /// Requests meeting every SLO per second (null without SLOs).
    pub request_goodput: Option<f64>,
    /// Output tokens per second.
    pub output_throughput: f64,
    /// Prompt + output tokens per second.
    pub total_token_throughput: f64,
    /// Prompt tokens served from cache.
    pub cached_tokens: usize,
    /// cached_tokens / total_input_tokens.
    pub cached_token_ratio: f64,
    /// Cached prompt tokens per second.
    pub effective_cache_throughput: f64,
    /// TTFT, ms.
    #[serde(flatten, with = "prefix_ttft")]
    pub ttft: Dist,
    /// TPOT, ms.
    #[serde(flatten, with = "prefix_tpot")]
    pub tpot: Dist,
    /// ITL, ms.
    #[serde(flatten, with = "prefix_itl")]
    pub itl: Dist,
    /// E2EL, ms.
    #[serde(flatten, with = "prefix_e2el")]
    pub e2el: Dist,
    /// Per-worker split.
    pub per_worker: Vec<WorkerSplit>,
    /// Preemptions (simulator only).
    pub preemptions: Option<u64>,
}

macro_rules! dist_prefix {
    ($m:ident, $mean:literal, $std:literal, $median:literal, $p90:literal, $p95:literal, $p99:literal) => {
        mod $m {
            use super::Dist;
            use serde::{Deserialize, Deserializer, Serialize, Serializer};

            #[derive(Serialize, Deserialize)]
            struct Flat {
                #[serde(rename = $mean, default)]
                mean: f64,
                #[serde(rename = $std, default)]
                std: f64,
                #[serde(rename = $median, default)]
                median: f64,
                #[serde(rename = $p90, default)]
                p90: f64,
                #[serde(rename = $p95, default)]
                p95: f64,
                #[serde(rename = $p99, default)]
                p99: f64,
            }

            pub fn serialize<S: Serializer>(d: &Dist, s: S) -> Result<S::Ok, S::Error> {
                Flat {
                    mean: d.mean,
                    std: d.std,
                    median: d.median,
                    p90: d.p90,
                    p95: d.p95,
                    p99: d.p99,
                }
                .serialize(s)
            }

            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Dist, D::Error> {
                let f = Flat::deserialize(d)?;
                Ok(Dist {
                    mean: f.mean,
                    std: f.std,
                    median: f.median,
                    p90: f.p90,
                    p95: f.p95,
                    p99: f.p99,
                })
            }
        }
    };
}
dist_prefix!(
    prefix_ttft,
    "mean_ttft_ms",
    "std_ttft_ms",
    "median_ttft_ms",
    "p90_ttft_ms",
    "p95_ttft_ms",
    "p99_ttft_ms"
);
dist_prefix!(
    prefix_tpot,
    "mean_tpot_ms",
    "std_tpot_ms",
    "median_tpot_ms",
    "p90_tpot_ms",
    "p95_tpot_ms",
    "p99_tpot_ms"
);
dist_prefix!(
    prefix_itl,
    "mean_itl_ms",
    "std_itl_ms",
    "median_itl_ms",
    "p90_itl_ms",
    "p95_itl_ms",
    "p99_itl_ms"
);
dist_prefix!(
    prefix_e2el,
    "mean_e2el_ms",
    "std_e2el_ms",
    "median_e2el_ms",
    "p90_e2el_ms",
    "p95_e2el_ms",
    "p99_e2el_ms"
);

impl Summary {
    /// Summarise a run of `duration` seconds.
    pub fn from_records(
        policy: &str,
        request_rate: f64,
        records: &[RequestRecord],
        duration: f64,
        slo: &Slo,
    ) -> Self {
        let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.ok()).collect();
        let inp: usize = ok.iter().map(|r| r.prompt_tokens).sum();
        let out: usize = ok.iter().map(|r| r.output_tokens).sum();
        let cached: usize = ok.iter().map(|r| r.cached_tokens).sum();
        let per_s = |x: f64| if duration > 0.0 { x / duration } else { 0.0 };
        let mut per_worker: Vec<WorkerSplit> = Vec::new();
        for r in &ok {
            let Some(w) = r.worker else { continue };
            if per_worker.len() <= w {
                per_worker.extend((per_worker.len()..=w).map(|worker| WorkerSplit {
                    worker,
                    ..Default::default()
                }));
            }
            let s = &mut per_worker[w];
            s.requests += 1;
            s.prompt_tokens += r.prompt_tokens;
            s.cached_tokens += r.cached_tokens;
            s.output_tokens += r.output_tokens;
        }
        Self {
            policy: policy.to_string(),
            request_rate,
            max_concurrency: None,
            completed: ok.len(),
            failed: records.len() - ok.len(),
            duration,
            total_input_tokens: inp,
            total_output_tokens: out,
            request_throughput: per_s(ok.len() as f64),
            request_goodput: slo
                .is_set()
                .then(|| per_s(ok.iter().filter(|r| slo.met(r)).count() as f64)),
            output_throughput: per_s(out as f64),
            total_token_throughput: per_s((inp + out) as f64),
            cached_tokens: cached,
            cached_token_ratio: if inp > 0 {
                cached as f64 / inp as f64
            } else {
                0.0
            },
            effective_cache_throughput: per_s(cached as f64),
            ttft: Dist::from_secs(ok.iter().filter_map(|r| r.ttft_s).collect()),
            tpot: Dist::from_secs(ok.iter().filter_map(|r| r.tpot_s()).collect()),
            itl: Dist::from_secs(ok.iter().flat_map(|r| r.itl_s.iter().copied()).collect()),
            e2el: Dist::from_secs(ok.iter().map(|r| r.e2el_s).collect()),
            per_worker,
            preemptions: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ttft: f64, e2el: f64, out: usize, itl: Vec<f64>) -> RequestRecord {
        RequestRecord {
            ttft_s: Some(ttft),
            e2el_s: e2el,
            prompt_tokens: 100,
            output_tokens: out,
            cached_tokens: 40,
            worker: Some(1),
            itl_s: itl,
            ..Default::default()
        }
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        // numpy.percentile([1,2,3,4], [50, 90, 99]) = 2.5, 3.7, 3.97
        assert!((percentile(&v, 50.0) - 2.5).abs() < 1e-12);
        assert!((percentile(&v, 90.0) - 3.7).abs() < 1e-12);
        assert!((percentile(&v, 99.0) - 3.97).abs() < 1e-12);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 100.0), 4.0);
        assert_eq!(percentile(&[7.0], 90.0), 7.0);
        assert_eq!(percentile(&[], 90.0), 0.0);
    }

    #[test]
    fn summary_matches_hand_computation() {
        // Two requests: TTFT 0.1 s and 0.3 s; E2EL 1.1 and 2.3 s; 11 and 21 tokens.
        let recs = vec![
            rec(0.1, 1.1, 11, vec![0.1; 10]),
            rec(0.3, 2.3, 21, vec![0.1; 20]),
            RequestRecord {
                error: Some("boom".into()),
                ..Default::default()
            },
        ];
        let slo = Slo::parse(&["ttft:200".into()]).unwrap();
        let s = Summary::from_records("precise", 2.0, &recs, 4.0, &slo);
        assert_eq!((s.completed, s.failed), (2, 1));
        assert_eq!(s.total_input_tokens, 200);
        assert_eq!(s.total_output_tokens, 32);
        assert!((s.request_throughput - 0.5).abs() < 1e-12);
        assert!((s.output_throughput - 8.0).abs() < 1e-12);
        assert!((s.total_token_throughput - 58.0).abs() < 1e-12);
        assert_eq!(s.request_goodput, Some(0.25));
        assert!((s.cached_token_ratio - 0.4).abs() < 1e-12);
        assert!((s.effective_cache_throughput - 20.0).abs() < 1e-12);
        // TTFT mean 200 ms, median 200, p90 = 100 + 0.9·200 = 280 ms, std 100 ms.
        assert!((s.ttft.mean - 200.0).abs() < 1e-9);
        assert!((s.ttft.median - 200.0).abs() < 1e-9);
        assert!((s.ttft.p90 - 280.0).abs() < 1e-9);
        assert!((s.ttft.std - 100.0).abs() < 1e-9);
        // TPOT: (1.1-0.1)/10 = 100 ms and (2.3-0.3)/20 = 100 ms.
        assert!((s.tpot.mean - 100.0).abs() < 1e-9);
        assert!((s.itl.p99 - 100.0).abs() < 1e-9);
        assert!((s.e2el.median - 1700.0).abs() < 1e-9);
        assert_eq!(s.per_worker.len(), 2);
        assert_eq!(s.per_worker[1].requests, 2);
        assert_eq!(s.per_worker[0].requests, 0);
    }

    #[test]
    fn five_requests_hand_computed() {
        // (ttft, e2el, output tokens, gaps, cached) — gaps sum to e2el - ttft.
        let spec: [(f64, f64, usize, Vec<f64>, usize); 5] = [
            (0.5, 2.5, 5, vec![0.2, 0.8, 0.5, 0.5], 0),
            (0.1, 0.1, 1, vec![], 100),
            (0.4, 1.4, 11, vec![0.1; 10], 50),
            (0.2, 1.2, 3, vec![0.5, 0.5], 100),
            (0.3, 0.5, 5, vec![0.05; 4], 0),
        ];
        let mut recs: Vec<RequestRecord> = spec
            .iter()
            .enumerate()
            .map(|(i, (t, e, o, g, c))| RequestRecord {
                ttft_s: Some(*t),
                e2el_s: *e,
                prompt_tokens: 100,
                output_tokens: *o,
                cached_tokens: *c,
                worker: Some(i % 2),
                itl_s: g.clone(),
                ..Default::default()
            })
            .collect();
        // A failure counts in `failed` and nowhere else.
        recs.push(RequestRecord {
            ttft_s: Some(9.0),
            e2el_s: 9.0,
            prompt_tokens: 1000,
            output_tokens: 1000,
            cached_tokens: 1000,
            error: Some("reset".into()),
            ..Default::default()
        });
        let slo = Slo::parse(&["ttft:350 tpot:200 e2el:2000".into()]).unwrap();
        let s = Summary::from_records("p", 1.0, &recs, 10.0, &slo);
        let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-9, "{a} != {b}");
        assert_eq!((s.completed, s.failed), (5, 1));
        assert_eq!((s.total_input_tokens, s.total_output_tokens), (500, 25));
        close(s.request_throughput, 0.5);
        close(s.output_throughput, 2.5);
        close(s.total_token_throughput, 52.5);
        assert_eq!(s.cached_tokens, 250);
        close(s.cached_token_ratio, 0.5);
        close(s.effective_cache_throughput, 25.0);
        // TTFT sorted 0.1..0.5: mean 300, median 300, p90 at rank 3.6 = 460,
        // p95 at 3.8 = 480, p99 at 3.96 = 496, std sqrt(0.02) s.
        close(s.ttft.mean, 300.0);
        close(s.ttft.median, 300.0);
        close(s.ttft.p90, 460.0);
        close(s.ttft.p95, 480.0);
        close(s.ttft.p99, 496.0);
        close(s.ttft.std, 0.02f64.sqrt() * 1000.0);
        // TPOT per request: 2.0/4, (1 token: none), 1.0/10, 1.0/2, 0.2/4 →
        // sorted 50, 100, 500, 500 ms: mean 287.5, median 300, p90 (rank 2.7) 500.
        close(s.tpot.mean, 287.5);
        close(s.tpot.median, 300.0);
        close(s.tpot.p90, 500.0);
        // ITL pooled over requests: 20 gaps, 0.05×4, 0.1×10, 0.2, 0.5×4, 0.8:
        // mean 4.2/20 = 210 ms, median 100, p90 (rank 17.1) 500, p99 (rank 18.81)
        // 500 + 0.81·300 = 743.
        close(s.itl.mean, 210.0);
        close(s.itl.median, 100.0);
        close(s.itl.p90, 500.0);
        close(s.itl.p99, 743.0);
        // E2EL sorted 0.1, 0.5, 1.2, 1.4, 2.5.
        close(s.e2el.mean, 1140.0);
        close(s.e2el.median, 1200.0);
        // Goodput: request 0 misses TTFT, 2 misses TTFT, 3 misses TPOT; 1 (no TPOT)
        // and 4 meet all three: 2 in 10 s.
        assert_eq!(s.request_goodput, Some(0.2));
        let s = Summary::from_records(
            "p",
            1.0,
            &recs,
            10.0,
            &Slo::parse(&["ttft:450".into()]).unwrap(),
        );
        assert_eq!(s.request_goodput, Some(0.4));
        // Per-worker split: even indices on worker 0.
        assert_eq!(s.per_worker[0].requests, 3);
        assert_eq!(s.per_worker[0].cached_tokens, 50);
        assert_eq!(s.per_worker[1].output_tokens, 4);
        // No duration: throughputs are 0, not infinite.
        let z = Summary::from_records("p", 1.0, &recs, 0.0, &Slo::default());
        assert_eq!(z.output_throughput, 0.0);
    }

    #[test]
    fn tpot_needs_two_tokens_and_a_first_token() {
        let mut r = rec(0.2, 1.2, 1, vec![]);
        assert_eq!(r.tpot_s(), None);
        r.output_tokens = 5;
        assert!((r.tpot_s().unwrap() - 0.25).abs() < 1e-12);
        r.ttft_s = None;
        assert_eq!(r.tpot_s(), None);
        assert!(!r.ok());
    }

    #[test]
    fn json_uses_vllm_field_names_and_round_trips() {
        let s = Summary::from_records(
            "load",
            3.0,
            &[rec(0.1, 1.0, 10, vec![0.1])],
            1.0,
            &Slo::default(),
        );
        let v = serde_json::to_value(&s).unwrap();
        for k in [
            "completed",
            "failed",
            "duration",
            "request_throughput",
            "output_throughput",
            "total_token_throughput",
            "mean_ttft_ms",
            "median_ttft_ms",
            "p90_ttft_ms",
            "p99_ttft_ms",
            "mean_tpot_ms",
            "p99_itl_ms",
            "median_e2el_ms",
            "policy",
            "request_rate",
            "cached_token_ratio",
            "effective_cache_throughput",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        let back: Summary = serde_json::from_value(v).unwrap();
        assert_eq!(back.ttft, s.ttft);
        assert_eq!(back.request_goodput, None);
    }

    #[test]
    fn slo_parsing() {
        let s = Slo::parse(&["ttft:500,tpot:50".into(), "e2el:9000".into()]).unwrap();
        assert_eq!(
            (s.ttft_ms, s.tpot_ms, s.e2el_ms),
            (Some(500.0), Some(50.0), Some(9000.0))
        );
        assert!(Slo::parse(&["ttft=5".into()]).is_err());
        assert!(Slo::parse(&["foo:5".into()]).is_err());
        assert!(Slo::parse(&["ttft:-1".into()]).is_err());
    }
}
