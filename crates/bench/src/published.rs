//! llm-d's published run at 73% of the cluster's KV capacity ("KV-cache wins you can
//! see", 2025-09-24), figure for figure, for `bench sim --preset llm-d-73-observed`.
//!
//! Source of every number here: the benchmarking report the blog links,
//! `llm-d/llm-d-kv-cache-manager`, `benchmarking/73-capacity/README.md`: its
//! inference-perf profile (stages, shape), its four `EndpointPickerConfig`s, its
//! "Summary across QPS" and its "Per-QPS Results" tables (output tokens/s,
//! requests/s, TTFT p90 and mean, per scheduler and rate).

use reprise_router::PolicyKind;

/// One scheduler's published figures at one rate (or over the ladder).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Figures {
    /// Output tokens per second.
    pub output_tok_s: f64,
    /// Requests per second.
    pub requests_s: f64,
    /// TTFT p90, seconds.
    pub ttft_p90_s: f64,
    /// TTFT mean, seconds.
    pub ttft_mean_s: f64,
}

const fn f(output_tok_s: f64, requests_s: f64, ttft_p90_s: f64, ttft_mean_s: f64) -> Figures {
    Figures {
        output_tok_s,
        requests_s,
        ttft_p90_s,
        ttft_mean_s,
    }
}

/// The four schedulers in the order of [`Rung::runs`], as reprise's policies:
/// `precise-scheduling`, `estimated-scheduling` (reprise's `approximate`),
/// `load-scheduling`, `random-scheduling`.
pub const POLICIES: [PolicyKind; 4] = [
    PolicyKind::Precise,
    PolicyKind::Approximate,
    PolicyKind::Load,
    PolicyKind::Random,
];

/// One rung of the ladder: its rate, its stage duration in the profile, and each
/// scheduler's figures in [`POLICIES`] order.
#[derive(Clone, Copy, Debug)]
pub struct Rung {
    /// Poisson rate, requests/s.
    pub rate: f64,
    /// Stage duration, seconds.
    pub duration_s: f64,
    /// precise, estimated, load, random.
    pub runs: [Figures; 4],
}

const fn r(rate: f64, duration_s: f64, runs: [Figures; 4]) -> Rung {
    Rung {
        rate,
        duration_s,
        runs,
    }
}

/// Warm-up stage of the profile: 15 QPS for 50 s (every prompt once), not reported.
pub const WARMUP: (f64, f64) = (15.0, 50.0);

/// The measured ladder ("Per-QPS Results").
pub const LADDER: [Rung; 16] = [
    r(
        3.0,
        20.0,
        [
            f(1219.1, 2.620, 0.498, 0.291),
            f(1310.9, 3.093, 0.497, 0.300),
            f(1274.8, 2.997, 1.609, 0.944),
            f(1314.0, 2.752, 0.820, 0.622),
        ],
    ),
    r(
        10.0,
        20.0,
        [
            f(3902.1, 9.529, 0.600, 0.335),
            f(3842.4, 9.386, 0.499, 0.271),
            f(3607.0, 10.469, 4.124, 2.241),
            f(3568.5, 9.564, 1.398, 0.826),
        ],
    ),
    r(
        15.0,
        20.0,
        [
            f(5761.1, 15.544, 0.400, 0.249),
            f(5152.9, 13.642, 0.400, 0.232),
            f(3348.4, 15.152, 7.002, 4.013),
            f(3791.1, 16.484, 2.299, 1.278),
        ],
    ),
    r(
        20.0,
        38.0,
        [
            f(9184.5, 20.159, 0.600, 0.363),
            f(8082.6, 19.593, 0.600, 0.329),
            f(4902.5, 22.157, 77.707, 29.229),
            f(4933.1, 18.838, 70.273, 25.073),
        ],
    ),
    r(
        22.0,
        34.0,
        [
            f(9382.0, 22.003, 0.500, 0.300),
            f(8415.7, 23.832, 0.700, 0.407),
            f(4785.5, 21.469, 72.972, 28.710),
            f(4765.4, 21.986, 78.420, 28.185),
        ],
    ),
    r(
        25.0,
        30.0,
        [
            f(9242.2, 24.268, 0.583, 0.303),
            f(8445.1, 24.510, 0.609, 0.370),
            f(4872.8, 25.597, 85.979, 32.534),
            f(4781.3, 23.400, 82.943, 30.689),
        ],
    ),
    r(
        30.0,
        25.0,
        [
            f(9221.8, 30.992, 0.509, 0.296),
            f(8435.9, 30.242, 0.708, 0.373),
            f(4888.7, 29.711, 83.806, 32.831),
            f(4636.3, 30.368, 86.182, 32.212),
        ],
    ),
    r(
        35.0,
        21.0,
        [
            f(9780.6, 32.861, 0.500, 0.275),
            f(7443.5, 35.050, 2.459, 2.780),
            f(4660.7, 35.167, 88.086, 33.874),
            f(4332.6, 36.403, 91.519, 34.043),
        ],
    ),
    r(
        40.0,
        38.0,
        [
            f(10270.8, 40.431, 0.488, 0.269),
            f(8045.9, 40.212, 43.018, 13.160),
            f(4946.4, 39.019, 100.911, 53.545),
            f(4773.8, 41.192, 101.272, 54.196),
        ],
    ),
    r(
        43.0,
        36.0,
        [
            f(10054.8, 40.521, 0.500, 0.281),
            f(7969.6, 43.120, 43.515, 16.941),
            f(4973.3, 40.143, 101.524, 53.802),
            f(4844.6, 42.775, 101.142, 53.247),
        ],
    ),
    r(
        46.0,
        33.0,
        [
            f(10128.7, 44.630, 0.589, 0.293),
            f(7695.2, 45.986, 44.930, 18.081),
            f(4723.6, 46.688, 105.884, 56.746),
            f(4969.5, 47.578, 101.265, 53.572),
        ],
    ),
    r(
        49.0,
        30.0,
        [
            f(10296.5, 48.942, 0.600, 0.311),
            f(7455.9, 48.461, 46.335, 19.111),
            f(4004.8, 49.162, 105.015, 55.208),
            f(4783.2, 48.305, 103.514, 56.130),
        ],
    ),
    r(
        52.0,
        29.0,
        [
            f(10284.6, 52.371, 0.507, 0.288),
            f(7452.3, 52.162, 47.284, 21.940),
            f(3991.0, 54.050, 108.572, 58.807),
            f(4845.1, 51.544, 105.004, 56.035),
        ],
    ),
    r(
        55.0,
        27.0,
        [
            f(10140.9, 54.410, 0.600, 0.308),
            f(7100.7, 55.860, 50.108, 22.327),
            f(4671.9, 54.779, 110.681, 58.467),
            f(4921.7, 53.552, 104.321, 54.844),
        ],
    ),
    r(
        57.0,
        26.0,
        [
            f(10313.9, 57.655, 0.600, 0.319),
            f(7013.8, 56.362, 49.930, 23.423),
            f(3866.5, 55.837, 113.278, 61.750),
            f(4764.2, 55.068, 106.816, 56.803),
        ],
    ),
    r(
        60.0,
        25.0,
        [
            f(10496.9, 59.242, 0.500, 0.283),
            f(7247.9, 60.508, 50.226, 24.281),
            f(4745.1, 59.971, 110.184, 58.497),
            f(4835.2, 56.912, 105.988, 57.426),
        ],
    ),
];

/// "Summary across QPS", in [`POLICIES`] order.
pub const SUMMARY: [Figures; 4] = [
    f(8730.0, 35.562, 0.542, 0.298),
    f(6944.4, 36.068, 31.083, 13.316),
    f(4266.4, 36.298, 94.865, 46.987),
    f(4428.7, 35.671, 92.551, 45.281),
];

/// Position of `policy` in [`POLICIES`], if llm-d ran it.
pub fn index_of(policy: PolicyKind) -> Option<usize> {
    POLICIES.iter().position(|&p| p == policy)
}

/// Output tokens per request `policy`'s run produced at rung `i`, as observed:
/// its output tokens/s over its requests/s. The profile asked for 1,000 with
/// `ignore_eos`, but the requests came back shorter (the profile's own note:
/// "observed live ≈ 200–230 tokens/running request").
pub fn observed_output_len(policy: PolicyKind, i: usize) -> Option<usize> {
    let k = index_of(policy)?;
    let f = LADDER.get(i)?.runs[k];
    Some((f.output_tok_s / f.requests_s).round() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ladder_is_the_profiles() {
        let rates: Vec<f64> = LADDER.iter().map(|r| r.rate).collect();
        assert_eq!(
            rates,
            [3., 10., 15., 20., 22., 25., 30., 35., 40., 43., 46., 49., 52., 55., 57., 60.]
        );
        // The summary's throughput is the mean of the rungs' (precise: 8,730.03),
        // but its TTFT figures pool the requests: random's rungs' p90s average
        // 77.7 s, its summary's is 92.6 s.
        for (k, s) in SUMMARY.iter().enumerate() {
            let tok = LADDER.iter().map(|r| r.runs[k].output_tok_s).sum::<f64>() / 16.0;
            assert!((tok - s.output_tok_s).abs() < 0.1, "{k}: {tok} vs {s:?}");
            let p90 = LADDER.iter().map(|r| r.runs[k].ttft_p90_s).sum::<f64>() / 16.0;
            assert!(p90 < s.ttft_p90_s, "{k}: {p90} vs {s:?}");
        }
    }

    #[test]
    fn observed_lengths_are_what_the_figures_imply() {
        // 60 QPS, precise: 10,496.9 tok/s for 59.242 req/s.
        assert_eq!(observed_output_len(PolicyKind::Precise, 15), Some(177));
        // 3 QPS, precise: 1,219.1 / 2.620.
        assert_eq!(observed_output_len(PolicyKind::Precise, 0), Some(465));
        assert_eq!(observed_output_len(PolicyKind::Cost, 0), None);
        assert_eq!(observed_output_len(PolicyKind::Random, 16), None);
    }
}
