//! Sampling: turn a row of logits into the next token under a request's
//! sampling parameters, in vLLM's order: allowed tokens, bad words, min_tokens,
//! logit bias and the grammar's mask; then the presence, frequency and repetition
//! penalties; then greedy, or temperature, min-p, top-k and top-p with a seeded RNG.
//! Logprobs are those of the raw logits (vLLM's default `raw_logprobs`).
//!
//! The processors touch only the tokens they concern (the prompt's and the
//! output's distinct tokens, the biased ids) in a copy of the row kept per thread.
//! Per token it costs a few passes over the vocabulary and no allocation once warm:
//! candidates are chosen by partial selection (a bounded heap for top-k, a histogram
//! of log-probabilities for top-p) instead of sorting the vocabulary, into buffers
//! kept per thread, so the rows of a batch can be sampled in parallel.

use crate::simd::exp_sub_sum;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reprise_protocol::TokenId;
use reprise_protocol::{SamplingParams, TokenLogprob};
use reprise_text::grammar::GrammarState;
use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// Draws tokens for one sequence; owns its RNG so a seeded request reproduces
/// the same tokens whatever else shares its batch.
#[derive(Clone, Debug)]
pub struct Sampler {
    temperature: f32,
    top_k: usize,
    top_p: f32,
    logprobs: Option<usize>,
    rng: StdRng,
    /// Tokens never drawn while fewer than `min_tokens` were (EOS, stop token ids).
    held_back: Vec<TokenId>,
    min_tokens: usize,
    drawn: usize,
    min_p: f32,
    logit_bias: Vec<(TokenId, f32)>,
    bad_words: Vec<Vec<TokenId>>,
    allowed: Option<Vec<TokenId>>,
    penalties: Option<Penalties>,
    /// The tokens drawn so far, kept when a multi-token bad word needs them.
    history: Vec<TokenId>,
    keep_history: bool,
    grammar: Option<GrammarState>,
}

/// vLLM's penalties and the counts they read.
#[derive(Clone, Debug)]
struct Penalties {
    presence: f32,
    frequency: f32,
    repetition: f32,
    /// The prompt's distinct tokens, sorted (the repetition penalty covers them).
    prompt: Vec<TokenId>,
    /// Occurrences of each token drawn so far.
    output: HashMap<TokenId, u32>,
}

impl Penalties {
    /// vLLM's `apply_penalties`: repetition over prompt and output tokens, then
    /// `logit -= frequency * count + presence * (count > 0)` over output tokens.
    fn apply(&self, logits: &mut [f32]) {
        let r = self.repetition;
        let repeat = |v: &mut f32| *v = if *v > 0.0 { *v / r } else { *v * r };
        if r != 1.0 {
            for &t in &self.prompt {
                if let Some(v) = logits.get_mut(t as usize) {
                    repeat(v);
                }
            }
        }
        for (&t, &count) in &self.output {
            let Some(v) = logits.get_mut(t as usize) else {
                continue;
            };
            if r != 1.0 && self.prompt.binary_search(&t).is_err() {
                repeat(v);
            }
            *v -= self.frequency * count as f32 + self.presence;
        }
    }
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

/// A candidate token ordered by value, then by lower id (NaN counts as −∞): the
/// canonical order every selection here follows, so draws are reproducible.
#[derive(Clone, Copy, Debug)]
struct Cand {
    value: f32,
    id: u32,
}

impl Cand {
    fn new(id: usize, v: f32) -> Self {
        Self {
            value: if v.is_nan() { f32::NEG_INFINITY } else { v },
            id: id as u32,
        }
    }

    /// `Less` when `self` ranks before `other` (higher value, then lower id).
    fn rank(&self, other: &Self) -> Ordering {
        other
            .value
            .total_cmp(&self.value)
            .then(self.id.cmp(&other.id))
    }
}

impl PartialEq for Cand {
    fn eq(&self, other: &Self) -> bool {
        self.rank(other) == Ordering::Equal
    }
}
impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Cand {
    /// Worse candidates compare greater, so a max-heap keeps the worst on top.
    fn cmp(&self, other: &Self) -> Ordering {
        self.rank(other)
    }
}

/// Buffers reused across tokens, one set per thread.
#[derive(Default)]
struct Scratch {
    heap: BinaryHeap<Cand>,
    cands: Vec<Cand>,
    probs: Vec<f32>,
    values: Vec<f32>,
    masked: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Above this `k`, top-k selects with `select_nth` over the values instead of a heap.
const HEAP_MAX_K: usize = 512;
/// Histogram buckets for top-p, each a quarter of a nat of log-probability below the max.
const TOP_P_BUCKETS: usize = 128;
const BUCKETS_PER_NAT: f32 = 4.0;

/// The `n` best candidates of `values` in canonical order, into `out`.
fn top_n_into(values: &[f32], n: usize, s: &mut Scratch, out: &mut Vec<Cand>) {
    out.clear();
    let n = n.min(values.len());
    if n == 0 {
        return;
    }
    if n <= HEAP_MAX_K {
        let heap = &mut s.heap;
        heap.clear();
        for (i, &v) in values.iter().enumerate() {
            let c = Cand::new(i, v);
            if heap.len() < n {
                heap.push(c);
            } else if let Some(mut worst) = heap.peek_mut() {
                if c < *worst {
                    *worst = c;
                }
            }
        }
        out.extend(heap.drain());
    } else {
        // The n-th best value, then everything above it plus ties in id order.
        let vals = &mut s.values;
        vals.clear();
        vals.extend(values.iter().map(|&v| Cand::new(0, v).value));
        let (_, nth, _) = vals.select_nth_unstable_by(n - 1, |a, b| b.total_cmp(a));
        let nth = *nth;
        for (i, &v) in values.iter().enumerate() {
            let c = Cand::new(i, v);
            if c.value.total_cmp(&nth) == Ordering::Greater {
                out.push(c);
            }
        }
        for (i, &v) in values.iter().enumerate() {
            if out.len() == n {
                break;
            }
            let c = Cand::new(i, v);
            if c.value.total_cmp(&nth) == Ordering::Equal {
                out.push(c);
            }
        }
    }
    out.sort_unstable_by(Cand::rank);
}

/// `probs[i] = exp((logits[i] − max) / T)` (NaN as −∞), through the vectorised
/// `exp`; returns their sum.
fn tempered_exp(logits: &[f32], max: f32, inv_t: f32, probs: &mut Vec<f32>) -> f32 {
    probs.clear();
    probs.extend(logits.iter().map(|&v| {
        if v.is_nan() {
            f32::NEG_INFINITY
        } else {
            v * inv_t
        }
    }));
    exp_sub_sum(probs, max * inv_t)
}

/// Log of the sum of `exp(values)` (NaN skipped), through the vectorised `exp`.
fn log_sum_exp(values: &[f32], s: &mut Scratch) -> f32 {
    let max = values
        .iter()
        .copied()
        .filter(|v| !v.is_nan())
        .fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return max;
    }
    let buf = &mut s.probs;
    buf.clear();
    buf.extend(
        values
            .iter()
            .map(|&v| if v.is_nan() { f32::NEG_INFINITY } else { v }),
    );
    max + exp_sub_sum(buf, max).ln()
}

impl Sampler {
    /// A sampler for `params`; an absent seed draws one from the OS.
    pub fn new(params: &SamplingParams) -> Self {
        let rng = match params.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        let penalize = params.presence_penalty != 0.0
            || params.frequency_penalty != 0.0
            || params.repetition_penalty != 1.0;
        Self {
            temperature: params.temperature,
            top_k: params.top_k,
            top_p: params.top_p,
            logprobs: params.logprobs,
            rng,
            held_back: Vec::new(),
            min_tokens: params.min_tokens,
            drawn: 0,
            min_p: params.min_p,
            logit_bias: params.logit_bias.clone(),
            bad_words: params.bad_words.clone(),
            allowed: params.allowed_token_ids.clone(),
            penalties: penalize.then(|| Penalties {
                presence: params.presence_penalty,
                frequency: params.frequency_penalty,
                repetition: if params.repetition_penalty > 0.0 {
                    params.repetition_penalty
                } else {
                    1.0
                },
                prompt: Vec::new(),
                output: HashMap::new(),
            }),
            history: Vec::new(),
            keep_history: params.bad_words.iter().any(|w| w.len() > 1),
            grammar: None,
        }
    }

    /// Applies the repetition penalty to `prompt`'s tokens too.
    pub fn with_prompt(mut self, prompt: &[TokenId]) -> Self {
        if let Some(p) = self.penalties.as_mut().filter(|p| p.repetition != 1.0) {
            p.prompt = prompt.to_vec();
            p.prompt.sort_unstable();
            p.prompt.dedup();
        }
        self
    }

    /// Draws only what `grammar` allows.
    pub fn with_grammar(mut self, grammar: Option<GrammarState>) -> Self {
        self.grammar = grammar;
        self
    }

    /// Whether this sequence samples under a grammar.
    pub fn has_grammar(&self) -> bool {
        self.grammar.is_some()
    }

    /// Computes the grammar's mask for the next token (run while the forward pass
    /// computes the logits; sampling computes it itself when this was not called).
    pub fn prepare_mask(&mut self) {
        if let Some(g) = self.grammar.as_mut() {
            g.prepare();
        }
    }

    /// Whether the grammar is complete (the sequence may only end now).
    pub fn grammar_done(&self) -> bool {
        self.grammar.as_ref().is_some_and(GrammarState::is_stopped)
    }

    /// Whether any processor changes the logits before selection.
    fn processes(&self) -> bool {
        (self.drawn < self.min_tokens && !self.held_back.is_empty())
            || self.allowed.is_some()
            || !self.bad_words.is_empty()
            || !self.logit_bias.is_empty()
            || self.penalties.is_some()
            || self.grammar.is_some()
            || (self.min_p > 0.0 && !self.is_greedy())
    }

    /// The processors, in vLLM's order, over a copy of the row.
    fn process(&mut self, out: &mut [f32]) {
        if let Some(allowed) = &self.allowed {
            let keep: Vec<(usize, f32)> = allowed
                .iter()
                .filter_map(|&t| out.get(t as usize).map(|&v| (t as usize, v)))
                .collect();
            out.fill(f32::NEG_INFINITY);
            for (i, v) in keep {
                out[i] = v;
            }
        }
        for word in &self.bad_words {
            let Some((&last, prefix)) = word.split_last() else {
                continue;
            };
            if self.history.ends_with(prefix) {
                if let Some(v) = out.get_mut(last as usize) {
                    *v = f32::NEG_INFINITY;
                }
            }
        }
        if self.drawn < self.min_tokens {
            for &id in &self.held_back {
                if let Some(v) = out.get_mut(id as usize) {
                    *v = f32::NEG_INFINITY;
                }
            }
        }
        for &(t, b) in &self.logit_bias {
            if let Some(v) = out.get_mut(t as usize) {
                *v += b;
            }
        }
        if let Some(g) = self.grammar.as_mut() {
            g.apply(out);
        }
        if let Some(p) = &self.penalties {
            p.apply(out);
        }
        if self.min_p > 0.0 && !self.is_greedy() {
            // p_i >= min_p * p_max  <=>  logit_i >= max + T * ln(min_p).
            let max = out
                .iter()
                .copied()
                .filter(|v| !v.is_nan())
                .fold(f32::NEG_INFINITY, f32::max);
            let floor = max + self.temperature * self.min_p.ln();
            for v in out.iter_mut() {
                if *v < floor {
                    *v = f32::NEG_INFINITY;
                }
            }
        }
    }

    /// Records a drawn token where later steps read it.
    fn record(&mut self, token: TokenId) {
        self.drawn += 1;
        if let Some(p) = self.penalties.as_mut() {
            *p.output.entry(token).or_insert(0) += 1;
        }
        if self.keep_history {
            self.history.push(token);
        }
        if let Some(g) = self.grammar.as_mut() {
            g.accept(token);
        }
    }

    /// Never draws `ids` until `min_tokens` tokens were drawn.
    pub fn holding_back(mut self, ids: &[TokenId]) -> Self {
        if self.min_tokens > 0 {
            self.held_back = ids.to_vec();
        }
        self
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
        let out = SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut s) => self.sample_with(logits, &mut s),
            // Only reachable if sampling re-entered itself on this thread.
            Err(_) => self.sample_with(logits, &mut Scratch::default()),
        });
        self.record(out.0);
        out
    }

    fn sample_with(&mut self, logits: &[f32], s: &mut Scratch) -> (TokenId, Option<TokenLogprob>) {
        let token = if self.processes() {
            // The processors work on a copy; logprobs stay those of the raw logits.
            let mut masked = std::mem::take(&mut s.masked);
            masked.clear();
            masked.extend_from_slice(logits);
            self.process(&mut masked);
            let t = self.choose(&masked, s);
            s.masked = masked;
            t
        } else {
            self.choose(logits, s)
        };
        let lp = self.logprobs.map(|n| {
            let lse = log_sum_exp(logits, s);
            let mut top = std::mem::take(&mut s.cands);
            top_n_into(logits, n, s, &mut top);
            let out = TokenLogprob {
                logprob: logits[token as usize] - lse,
                top: top.iter().map(|c| (c.id, c.value - lse)).collect(),
            };
            s.cands = top;
            out
        });
        (token, lp)
    }

    fn choose(&mut self, logits: &[f32], s: &mut Scratch) -> TokenId {
        if self.is_greedy() {
            argmax(logits)
        } else {
            self.draw(logits, s)
        }
    }

    fn draw(&mut self, logits: &[f32], s: &mut Scratch) -> TokenId {
        let inv_t = 1.0 / self.temperature;
        let max = logits
            .iter()
            .copied()
            .filter(|v| !v.is_nan())
            .fold(f32::NEG_INFINITY, f32::max);
        if !max.is_finite() {
            return argmax(logits);
        }
        let top_p = if self.top_p > 0.0 && self.top_p < 1.0 {
            Some(self.top_p)
        } else {
            None
        };
        if self.top_k > 0 && self.top_k < logits.len() {
            let mut cands = std::mem::take(&mut s.cands);
            top_n_into(logits, self.top_k, s, &mut cands);
            let t = self.draw_sorted(&cands, max, inv_t, top_p, None, s);
            s.cands = cands;
            return t;
        }
        match top_p {
            None => self.draw_full(logits, max, inv_t, s),
            Some(p) => self.draw_nucleus(logits, max, inv_t, p, s),
        }
    }

    /// Temperature sampling over the whole vocabulary, in id order.
    fn draw_full(&mut self, logits: &[f32], max: f32, inv_t: f32, s: &mut Scratch) -> TokenId {
        let probs = &mut s.probs;
        let total = tempered_exp(logits, max, inv_t, probs);
        let mut u = self.rng.random::<f32>() * total;
        let mut last = None;
        // The clamped vectorised exp leaves −∞ a tiny mass; such tokens are never drawn.
        for (i, (&v, &p)) in logits.iter().zip(probs.iter()).enumerate() {
            if v > f32::NEG_INFINITY {
                if u < p {
                    return i as u32;
                }
                u -= p;
                last = Some(i);
            }
        }
        // Rounding left u past the end: the last token that could be drawn.
        last.map_or_else(|| argmax(logits), |i| i as u32)
    }

    /// Top-p over the whole vocabulary without sorting it: a histogram of how far
    /// below the max each token's log-probability is finds the bucket where the
    /// nucleus ends; only the tokens down to that bucket are sorted.
    fn draw_nucleus(
        &mut self,
        logits: &[f32],
        max: f32,
        inv_t: f32,
        top_p: f32,
        s: &mut Scratch,
    ) -> TokenId {
        let bucket = |v: f32| -> usize {
            let d = (max - v) * inv_t * BUCKETS_PER_NAT;
            // NaN and −∞ land in the last bucket, which the nucleus never reaches whole.
            if d < (TOP_P_BUCKETS - 1) as f32 {
                d as usize
            } else {
                TOP_P_BUCKETS - 1
            }
        };
        let mut mass = [0.0f32; TOP_P_BUCKETS];
        let probs = &mut s.probs;
        let total = tempered_exp(logits, max, inv_t, probs);
        for (&v, &p) in logits.iter().zip(probs.iter()) {
            mass[bucket(v)] += p;
        }
        let target = top_p * total;
        let mut cum = 0.0;
        let mut last_bucket = TOP_P_BUCKETS - 1;
        for (b, &m) in mass.iter().enumerate() {
            cum += m;
            if cum >= target {
                last_bucket = b;
                break;
            }
        }
        let mut cands = std::mem::take(&mut s.cands);
        cands.clear();
        cands.extend(
            logits
                .iter()
                .enumerate()
                .filter(|&(_, &v)| bucket(v) <= last_bucket)
                .map(|(i, &v)| Cand::new(i, v)),
        );
        cands.sort_unstable_by(Cand::rank);
        let t = self.draw_sorted(&cands, max, inv_t, Some(top_p), Some(total), s);
        s.cands = cands;
        t
    }

    /// Draws from candidates in canonical order, keeping the smallest prefix whose
    /// probability reaches `top_p` of `total` (the whole vocabulary's mass when the
    /// candidates are its head; by default theirs, renormalised as after top-k).
    #[allow(clippy::too_many_arguments)]
    fn draw_sorted(
        &mut self,
        cands: &[Cand],
        max: f32,
        inv_t: f32,
        top_p: Option<f32>,
        total: Option<f32>,
        s: &mut Scratch,
    ) -> TokenId {
        let Some(first) = cands.first() else {
            return 0;
        };
        let probs = &mut s.values;
        probs.clear();
        probs.extend(cands.iter().map(|c| ((c.value - max) * inv_t).exp()));
        let total = total.unwrap_or_else(|| probs.iter().sum());
        let mut keep = probs.len();
        if let Some(p) = top_p {
            let target = p * total;
            let mut cum = 0.0;
            for (i, q) in probs.iter().enumerate() {
                cum += q;
                if cum >= target {
                    keep = i + 1;
                    break;
                }
            }
        }
        let kept: f32 = probs[..keep].iter().sum();
        let mut u = self.rng.random::<f32>() * kept;
        let mut last = first.id;
        for (c, &q) in cands[..keep].iter().zip(probs.iter()) {
            if q > 0.0 {
                if u < q {
                    return c.id;
                }
                u -= q;
                last = c.id;
            }
        }
        last // rounding left u past the end: the last candidate with any mass
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

    /// The `n` best ids by sorting the whole vocabulary: the reference.
    fn sorted_top(values: &[f32], n: usize) -> Vec<u32> {
        let mut c: Vec<Cand> = values
            .iter()
            .enumerate()
            .map(|(i, &v)| Cand::new(i, v))
            .collect();
        c.sort_by(Cand::rank);
        c.iter().take(n).map(|c| c.id).collect()
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
        let allowed = sorted_top(&logits, 3);
        assert!(a.iter().all(|t| allowed.contains(t)));
        let mut s = Sampler::new(&params(1.0, 0, 1e-6, 3));
        assert_eq!(s.sample(&logits).0, argmax(&logits));
    }

    #[test]
    fn partial_selection_matches_a_full_sort() {
        let mut s = Scratch::default();
        let mut out = Vec::new();
        // Many ties, a NaN and -inf: the order must still be the canonical one.
        let mut v: Vec<f32> = (0..3000).map(|i| ((i * 7919) % 101) as f32 / 7.0).collect();
        v[5] = f32::NAN;
        v[9] = f32::NEG_INFINITY;
        for n in [1, 2, 20, 511, 512, 513, 1000, 3000, 5000] {
            top_n_into(&v, n, &mut s, &mut out);
            let got: Vec<u32> = out.iter().map(|c| c.id).collect();
            assert_eq!(got, sorted_top(&v, n), "n = {n}");
        }
    }

    /// Frequencies of many draws against the exact top-p distribution.
    #[test]
    fn top_p_keeps_the_smallest_nucleus_and_its_proportions() {
        // Probabilities 0.4, 0.3, 0.2, 0.1 (then a long tail of tiny ones) at T = 1.
        let mut logits = vec![-30.0f32; 5000];
        for (i, p) in [(17usize, 0.4f32), (3, 0.3), (4000, 0.2), (42, 0.1)] {
            logits[i] = p.ln();
        }
        let mut s = Sampler::new(&SamplingParams {
            temperature: 1.0,
            top_p: 0.75,
            seed: Some(11),
            ..Default::default()
        });
        let mut counts = std::collections::HashMap::new();
        let n = 20_000;
        for _ in 0..n {
            *counts.entry(s.sample(&logits).0).or_insert(0usize) += 1;
        }
        // 0.4 + 0.3 = 0.7 < 0.75, so the nucleus is {17, 3, 4000}, renormalised over 0.9.
        let keys: std::collections::BTreeSet<u32> = counts.keys().copied().collect();
        assert_eq!(keys, [3, 17, 4000].into_iter().collect());
        for (id, p) in [(17u32, 0.4 / 0.9), (3, 0.3 / 0.9), (4000, 0.2 / 0.9)] {
            let f = counts[&id] as f64 / n as f64;
            assert!((f - p).abs() < 0.02, "token {id}: {f} vs {p}");
        }
    }

    #[test]
    fn temperature_sampling_follows_the_softmax() {
        let logits = [0.0f32, 1.0, f32::NAN, 2.0];
        let mut s = Sampler::new(&SamplingParams {
            temperature: 0.5,
            seed: Some(5),
            ..Default::default()
        });
        let mut counts = [0usize; 4];
        let n = 20_000;
        for _ in 0..n {
            counts[s.sample(&logits).0 as usize] += 1;
        }
        assert_eq!(counts[2], 0, "NaN never drawn");
        let z: f64 = [0.0f64, 2.0, 4.0].iter().map(|x| x.exp()).sum();
        for (i, x) in [(0, 0.0f64), (1, 2.0), (3, 4.0)] {
            let f = counts[i] as f64 / n as f64;
            assert!((f - x.exp() / z).abs() < 0.02, "token {i}: {f}");
        }
    }

    #[test]
    fn top_k_then_top_p_and_flat_distributions() {
        // Flat: every token equally likely; top_p = 0.5 keeps the lowest half of the ids.
        let logits = vec![1.0f32; 1000];
        let mut s = Sampler::new(&params(1.0, 0, 0.5, 2));
        for _ in 0..200 {
            assert!(s.sample(&logits).0 < 500);
        }
        let mut s = Sampler::new(&params(1.0, 10, 0.5, 2));
        for _ in 0..200 {
            assert!(s.sample(&logits).0 < 5);
        }
        // Everything -inf or NaN: fall back to the argmax rule (id 0).
        let mut s = Sampler::new(&params(1.0, 0, 0.9, 2));
        assert_eq!(s.sample(&[f32::NAN, f32::NEG_INFINITY]).0, 0);
    }

    #[test]
    fn min_tokens_holds_back_the_stop_tokens_then_lets_them_through() {
        let logits = [0.0f32, 5.0, 1.0, 4.0];
        let mut s = Sampler::new(&SamplingParams {
            temperature: 0.0,
            min_tokens: 2,
            logprobs: Some(1),
            ..Default::default()
        })
        .holding_back(&[1, 3]);
        let (t, lp) = s.sample(&logits);
        assert_eq!(t, 2, "the best token not held back");
        // Logprobs are those of the raw logits, where token 1 is the best.
        assert_eq!(lp.expect("logprobs").top[0].0, 1);
        assert_eq!(s.sample(&logits).0, 2);
        assert_eq!(s.sample(&logits).0, 1, "min_tokens reached");
        let mut free = Sampler::new(&SamplingParams {
            temperature: 0.0,
            ..Default::default()
        })
        .holding_back(&[1]);
        assert_eq!(
            free.sample(&logits).0,
            1,
            "nothing held back without min_tokens"
        );
    }

    fn greedy(p: SamplingParams) -> Sampler {
        Sampler::new(&SamplingParams {
            temperature: 0.0,
            ..p
        })
    }

    /// vLLM's `apply_penalties` on hand-made logits, computed by hand.
    #[test]
    fn penalties_follow_vllms_formulas() {
        let mut s = greedy(SamplingParams {
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            repetition_penalty: 2.0,
            ..Default::default()
        })
        .with_prompt(&[1, 1, 3]);
        // Tokens 0 and 2 were generated (0 twice); 1 and 3 are in the prompt.
        s.record(0);
        s.record(0);
        s.record(2);
        let mut l = vec![4.0f32, 3.0, -1.0, -2.0, 1.0];
        s.process(&mut l);
        let want = [
            4.0 / 2.0 - (0.25 * 2.0 + 0.5), // output twice, positive: divided
            3.0 / 2.0,                      // prompt only: repetition only
            -2.0 - (0.25 + 0.5),            // output once, -1 negative: multiplied by 2
            -2.0 * 2.0,                     // prompt only, negative
            1.0,                            // untouched
        ];
        for (g, w) in l.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{l:?} vs {want:?}");
        }
    }

    #[test]
    fn penalties_change_a_repetitive_greedy_continuation() {
        // Without penalties the argmax repeats token 2 forever.
        let logits = [1.0f32, 1.5, 2.0, 0.5];
        let mut plain = greedy(SamplingParams::default());
        let a: Vec<u32> = (0..4).map(|_| plain.sample(&logits).0).collect();
        assert_eq!(a, [2, 2, 2, 2]);
        let mut p = greedy(SamplingParams {
            frequency_penalty: 1.0,
            ..Default::default()
        });
        let b: Vec<u32> = (0..4).map(|_| p.sample(&logits).0).collect();
        assert_eq!(b, [2, 1, 0, 2], "each repeat costs 1");
    }

    #[test]
    fn bias_bans_allow_lists_bad_words_and_min_p() {
        let logits = [1.0f32, 5.0, 3.0, 2.0];
        let mut s = greedy(SamplingParams {
            logit_bias: vec![(1, -100.0)],
            ..Default::default()
        });
        assert_eq!(s.sample(&logits).0, 2, "-100 bans the greedy token");
        let mut s = greedy(SamplingParams {
            allowed_token_ids: Some(vec![0, 3]),
            ..Default::default()
        });
        assert_eq!(s.sample(&logits).0, 3);
        // A two-token bad word [2, 1]: token 1 is banned only right after a 2.
        let mut s = greedy(SamplingParams {
            bad_words: vec![vec![2, 1], vec![3]],
            logit_bias: vec![(2, 10.0)],
            ..Default::default()
        });
        assert_eq!(s.sample(&logits).0, 2);
        let mut s2 = s.clone();
        s2.logit_bias.clear();
        assert_eq!(s2.sample(&logits).0, 2, "1 banned after 2, 3 banned always");
        // min_p 0.5 at T=1 keeps tokens within ln 2 of the best: only token 1.
        let mut s = Sampler::new(&SamplingParams {
            temperature: 1.0,
            min_p: 0.5,
            seed: Some(3),
            ..Default::default()
        });
        for _ in 0..50 {
            assert_eq!(s.sample(&[1.0, 5.0, 4.0, 2.0]).0, 1);
        }
    }
}
