//! Sampling: turn a row of logits into the next token under a request's
//! sampling parameters (greedy, temperature, top-k, top-p, seeded RNG, logprobs).

use reprise_router::TokenId;
use serde::{Deserialize, Serialize};

/// Per-request generation parameters (OpenAI / vLLM semantics).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 means disabled.
    pub top_k: usize,
    /// 1.0 means disabled.
    pub top_p: f32,
    /// Seed for a reproducible RNG; `None` draws one from the OS.
    pub seed: Option<u64>,
    /// Maximum number of generated tokens.
    pub max_tokens: usize,
    /// Extra token ids that end generation (the model's EOS ids are added by the engine).
    pub stop_token_ids: Vec<TokenId>,
    /// Keep generating past EOS until `max_tokens`.
    pub ignore_eos: bool,
    /// Return the chosen token's logprob and this many top alternatives.
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: None,
            max_tokens: 16,
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            logprobs: None,
        }
    }
}

use crate::worker::TokenLogprob;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Draws tokens for one sequence; owns its RNG so a seeded request reproduces
/// the same tokens whatever else shares its batch.
#[derive(Clone, Debug)]
pub struct Sampler {
    temperature: f32,
    top_k: usize,
    top_p: f32,
    logprobs: Option<usize>,
    rng: StdRng,
}

/// Index of the largest value; ties go to the lowest index, NaN never wins.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best as u32
}

/// The `n` highest `(id, value)` pairs, descending, ties by lower id.
fn top_n(values: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<u32> = (0..values.len() as u32).collect();
    let key = |&i: &u32| {
        let v = values[i as usize];
        (if v.is_nan() { f32::NEG_INFINITY } else { v }, i)
    };
    let cmp = |a: &u32, b: &u32| {
        let (va, ia) = key(a);
        let (vb, ib) = key(b);
        vb.total_cmp(&va).then(ia.cmp(&ib))
    };
    let n = n.min(idx.len());
    if n == 0 {
        return Vec::new();
    }
    if n < idx.len() {
        idx.select_nth_unstable_by(n - 1, cmp);
        idx.truncate(n);
    }
    idx.sort_unstable_by(cmp);
    idx.into_iter().map(|i| (i, values[i as usize])).collect()
}

impl Sampler {
    /// A sampler for `params`; an absent seed draws one from the OS.
    pub fn new(params: &SamplingParams) -> Self {
        let rng = match params.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Self {
            temperature: params.temperature,
            top_k: params.top_k,
            top_p: params.top_p,
            logprobs: params.logprobs,
            rng,
        }
    }

    /// Whether this sampler always takes the argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || !self.temperature.is_finite() || self.top_k == 1
    }

    /// Picks the next token and, when asked, its logprob and the top alternatives
    /// (log-softmax of the raw logits, before temperature).
    pub fn sample(&mut self, logits: &[f32]) -> (TokenId, Option<TokenLogprob>) {
        if logits.is_empty() {
            return (0, None);
        }
        let token = if self.is_greedy() {
            argmax(logits)
        } else {
            self.draw(logits)
        };
        let lp = self.logprobs.map(|n| {
            let max = logits
                .iter()
                .copied()
                .filter(|v| !v.is_nan())
                .fold(f32::NEG_INFINITY, f32::max);
            let lse = max
                + logits
                    .iter()
                    .filter(|v| !v.is_nan())
                    .map(|&v| (v - max).exp())
                    .sum::<f32>()
                    .ln();
            TokenLogprob {
                logprob: logits[token as usize] - lse,
                top: top_n(logits, n)
                    .into_iter()
                    .map(|(i, v)| (i, v - lse))
                    .collect(),
            }
        });
        (token, lp)
    }

    fn draw(&mut self, logits: &[f32]) -> TokenId {
        let inv_t = 1.0 / self.temperature;
        let filtered = self.top_k > 0 || self.top_p < 1.0;
        // Candidates in a canonical order (descending, ties by id) so the draw is reproducible.
        let cands: Vec<(u32, f32)> = if filtered {
            let k = if self.top_k > 0 {
                self.top_k
            } else {
                logits.len()
            };
            top_n(logits, k)
        } else {
            logits
                .iter()
                .enumerate()
                .map(|(i, &v)| (i as u32, if v.is_nan() { f32::NEG_INFINITY } else { v }))
                .collect()
        };
        let max = cands.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
        if !max.is_finite() {
            return argmax(logits);
        }
        let mut probs: Vec<f32> = cands.iter().map(|c| ((c.1 - max) * inv_t).exp()).collect();
        let total: f32 = probs.iter().sum();
        let mut keep = probs.len();
        if self.top_p < 1.0 && self.top_p > 0.0 {
            let mut cum = 0.0;
            for (i, p) in probs.iter().enumerate() {
                cum += p / total;
                if cum >= self.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        probs.truncate(keep);
        let total: f32 = probs.iter().sum();
        let mut u = self.rng.random::<f32>() * total;
        for (i, p) in probs.iter().enumerate() {
            if u < *p {
                return cands[i].0;
            }
            u -= p;
        }
        cands[keep - 1].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f32, k: usize, p: f32, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature: t,
            top_k: k,
            top_p: p,
            seed: Some(seed),
            logprobs: Some(2),
            ..Default::default()
        }
    }

    #[test]
    fn greedy_ties_go_to_lowest_id_and_logprobs_are_log_softmax() {
        let mut s = Sampler::new(&params(0.0, 0, 1.0, 1));
        let (tok, lp) = s.sample(&[1.0, 3.0, 3.0, 0.0]);
        assert_eq!(tok, 1);
        let lp = lp.unwrap();
        let lse = (1f32.exp() + 2.0 * 3f32.exp() + 1.0).ln();
        assert!((lp.logprob - (3.0 - lse)).abs() < 1e-5);
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn seeded_sampling_reproduces_and_respects_top_k() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = |seed| {
            let mut s = Sampler::new(&params(1.0, 3, 1.0, seed));
            (0..50).map(|_| s.sample(&logits).0).collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7));
        let allowed: Vec<u32> = top_n(&logits, 3).iter().map(|x| x.0).collect();
        assert!(a.iter().all(|t| allowed.contains(t)));
        let mut s = Sampler::new(&params(1.0, 0, 1e-6, 3));
        assert_eq!(s.sample(&logits).0, argmax(&logits));
    }
}
