//! Scorers and their weighted sum.
//!
//! For each available worker `w` (prompt of `P` full blocks, `m_w` of them cached on
//! `w` as a consecutive run from block 0):
//!
//! ```text
//! prefix_w  = m_w / P                          (0 when P = 0)
//! queue_w   = 1 - q_w / max_v q_v              q = waiting + routed-not-yet-reported
//! kv_w      = 1 - kv_usage_w                   blocks_in_use / total_blocks
//! running_w = 1 - r_w / max_v r_v              r = running
//! score_w   = Wp·prefix_w + Wq·queue_w + Wk·kv_w + Wr·running_w
//! ```
//!
//! Every term is in [0, 1] (a term whose maximum is 0 scores 1 for everyone). Before
//! scoring, the [`OverloadGuard`] removes workers whose total load
//! (`waiting + running + routed-not-yet-reported`) is far above the least-loaded
//! worker's, even if they hold the prefix. Ties (within 1e-9) are broken by a
//! seeded hash of the prompt's first block key and the worker index: deterministic,
//! and the same prompt breaks ties toward the same worker.

use crate::error::RouteError;
use crate::keymap::mix64;
use reprise_protocol::load::WorkerLoad;
use serde::{Deserialize, Serialize};

/// Scorer weights; see the module docs for the formula.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreWeights {
    /// Weight of the cached-prefix fraction.
    pub prefix: f64,
    /// Weight of the (inverted, relative) waiting queue depth.
    pub queue: f64,
    /// Weight of the free fraction of the KV pool.
    pub kv_usage: f64,
    /// Weight of the (inverted, relative) number of running requests.
    pub running: f64,
}

impl Default for ScoreWeights {
    /// prefix 3, queue 1.5, KV 1, running 0.5: the load terms together weigh as much
    /// as a full prefix hit, so a worker with the whole prompt cached wins unless it
    /// is the most loaded on every axis (then it ties an idle cold worker and the
    /// overload guard decides the extremes); a half-cached prompt (1.5) loses to a
    /// clearly less loaded worker. Same ranges as llm-d (prefix 2-3, KV 1-2, queue 1-2).
    fn default() -> Self {
        Self {
            prefix: 3.0,
            queue: 1.5,
            kv_usage: 1.0,
            running: 0.5,
        }
    }
}

/// Passes over workers whose load is far above the least-loaded worker's.
///
/// Worker `w` with total load `L_w = waiting + running + routed-not-yet-reported`
/// is overloaded when `L_w > L_min + abs_threshold` **and**
/// `L_w > rel_threshold · L_min` (both, like SGLang's router, so that neither tiny
/// absolute differences nor large-but-proportionate loads trigger it).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OverloadGuard {
    /// Whether the guard is on.
    pub enabled: bool,
    /// Requests above the least-loaded worker before a worker can be overloaded.
    pub abs_threshold: usize,
    /// Ratio to the least-loaded worker's load before a worker can be overloaded (>= 1).
    pub rel_threshold: f64,
}

impl Default for OverloadGuard {
    fn default() -> Self {
        Self {
            enabled: true,
            abs_threshold: 8,
            rel_threshold: 1.5,
        }
    }
}

impl OverloadGuard {
    /// Whether a worker with load `l` is overloaded when the least loaded has `min`.
    pub fn is_overloaded(&self, l: usize, min: usize) -> bool {
        self.enabled
            && l > min.saturating_add(self.abs_threshold)
            && l as f64 > self.rel_threshold * min as f64
    }
}

/// What the router knows about one worker at decision time.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WorkerView {
    /// Whether the worker may be chosen.
    pub available: bool,
    /// Last load report.
    pub load: WorkerLoad,
    /// Requests routed to it since that report.
    pub inflight: usize,
}

impl WorkerView {
    /// Requests waiting, counting those routed but not yet reported.
    pub fn queue(&self) -> usize {
        self.load.waiting.saturating_add(self.inflight)
    }

    /// Everything the worker has to do: waiting + running + routed-not-yet-reported.
    pub fn total_load(&self) -> usize {
        self.queue().saturating_add(self.load.running)
    }
}

/// Fraction of the prompt's full blocks cached as a run from block 0.
pub fn prefix_score(matched: usize, prompt_blocks: usize) -> f64 {
    if prompt_blocks == 0 {
        0.0
    } else {
        (matched.min(prompt_blocks)) as f64 / prompt_blocks as f64
    }
}

/// `1 - x / max`, or 1 when `max` is 0.
pub fn relative_inverse(x: usize, max: usize) -> f64 {
    if max == 0 {
        1.0
    } else {
        1.0 - (x.min(max)) as f64 / max as f64
    }
}

/// Free fraction of the KV pool, in [0, 1].
pub fn kv_score(load: &WorkerLoad) -> f64 {
    (1.0 - load.kv_usage()).clamp(0.0, 1.0)
}

/// Worker `w`'s tie-break rank for a request (higher wins): a seeded hash of the
/// request's tie value (see `RouteRequest::tie_value`) and the worker index, so equal
/// prompts break ties the same way.
pub fn tie_rank(seed: u64, tie: u64, w: usize) -> u64 {
    mix64(mix64(seed ^ tie) ^ (w as u64).wrapping_mul(0xA24B_AED4_963E_E407))
}

/// The scorer's choice.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pick {
    /// Chosen worker.
    pub worker: usize,
    /// Its weighted score.
    pub score: f64,
    /// True when the overload guard passed over a worker with a longer cached run
    /// than the chosen one.
    pub overload_diverted: bool,
}

/// Weighted-sum scorer with overload guard and seeded tie-break.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scorer {
    /// Weights of the terms.
    pub weights: ScoreWeights,
    /// Overload guard.
    pub guard: OverloadGuard,
    /// Tie-break seed.
    pub seed: u64,
}

impl Scorer {
    /// Choose among available `workers`; `matched[w]` is worker `w`'s cached run and
    /// `tie` a per-request value (the first block key) mixed into the tie-break.
    pub fn pick(
        &self,
        workers: &[WorkerView],
        matched: &[usize],
        prompt_blocks: usize,
        tie: u64,
    ) -> Result<Pick, RouteError> {
        let avail = || workers.iter().enumerate().filter(|(_, v)| v.available);
        let min_load = avail()
            .map(|(_, v)| v.total_load())
            .min()
            .ok_or(RouteError::NoWorkerAvailable)?;
        let eligible = |v: &WorkerView| !self.guard.is_overloaded(v.total_load(), min_load);
        let (mut max_q, mut max_r) = (0, 0);
        for (_, v) in avail().filter(|(_, v)| eligible(v)) {
            max_q = max_q.max(v.queue());
            max_r = max_r.max(v.load.running);
        }
        let wt = &self.weights;
        let mut best: Option<(usize, f64, u64)> = None;
        let mut diverted_run = 0;
        for (w, v) in avail() {
            let m = matched.get(w).copied().unwrap_or(0);
            if !eligible(v) {
                diverted_run = diverted_run.max(m);
                continue;
            }
            let s = wt.prefix * prefix_score(m, prompt_blocks)
                + wt.queue * relative_inverse(v.queue(), max_q)
                + wt.kv_usage * kv_score(&v.load)
                + wt.running * relative_inverse(v.load.running, max_r);
            let t = tie_rank(self.seed, tie, w);
            let better = match best {
                None => true,
                Some((_, bs, bt)) => s > bs + 1e-9 || ((s - bs).abs() <= 1e-9 && t > bt),
            };
            if better {
                best = Some((w, s, t));
            }
        }
        // The least-loaded worker is never overloaded, so `best` is set.
        let (worker, score, _) = best.ok_or(RouteError::NoWorkerAvailable)?;
        let chosen_run = matched.get(worker).copied().unwrap_or(0);
        Ok(Pick {
            worker,
            score,
            overload_diverted: diverted_run > chosen_run,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(waiting: usize, running: usize, used: usize) -> WorkerView {
        WorkerView {
            available: true,
            load: WorkerLoad {
                running,
                waiting,
                blocks_in_use: used,
                total_blocks: 100,
                prefill_tokens: 0,
            },
            inflight: 0,
        }
    }

    fn scorer() -> Scorer {
        Scorer {
            weights: ScoreWeights::default(),
            guard: OverloadGuard::default(),
            seed: 1,
        }
    }

    #[test]
    fn terms_are_in_unit_range() {
        assert_eq!(prefix_score(3, 0), 0.0);
        assert_eq!(prefix_score(5, 4), 1.0);
        assert_eq!(prefix_score(1, 4), 0.25);
        assert_eq!(relative_inverse(0, 0), 1.0);
        assert_eq!(relative_inverse(5, 10), 0.5);
        assert_eq!(relative_inverse(10, 10), 0.0);
        let overfull = WorkerLoad {
            blocks_in_use: 200,
            total_blocks: 100,
            ..Default::default()
        };
        assert_eq!(kv_score(&overfull), 0.0);
    }

    #[test]
    fn prefix_beats_moderate_load() {
        let ws = [view(2, 4, 50), view(0, 3, 40)];
        let p = scorer().pick(&ws, &[10, 0], 10, 0).unwrap();
        assert_eq!(p.worker, 0);
        assert!(!p.overload_diverted);
    }

    #[test]
    fn overload_guard_fires_even_with_the_prefix() {
        let ws = [view(30, 8, 50), view(0, 2, 50), view(1, 2, 50)];
        let p = scorer().pick(&ws, &[10, 0, 0], 10, 0).unwrap();
        assert_ne!(p.worker, 0);
        assert!(p.overload_diverted);
        let mut off = scorer();
        off.guard.enabled = false;
        assert_eq!(off.pick(&ws, &[10, 0, 0], 10, 0).unwrap().worker, 0);
    }

    #[test]
    fn guard_needs_both_thresholds() {
        let g = OverloadGuard::default();
        assert!(!g.is_overloaded(9, 2), "only 7 above");
        assert!(g.is_overloaded(11, 2));
        assert!(!g.is_overloaded(60, 50), "within 1.5x");
        assert!(g.is_overloaded(80, 50));
    }

    #[test]
    fn unavailable_are_skipped_and_none_is_an_error() {
        let mut ws = [view(0, 0, 0), view(0, 0, 0)];
        ws[0].available = false;
        assert_eq!(scorer().pick(&ws, &[5, 0], 5, 0).unwrap().worker, 1);
        ws[1].available = false;
        assert_eq!(
            scorer().pick(&ws, &[0, 0], 5, 0),
            Err(RouteError::NoWorkerAvailable)
        );
    }

    #[test]
    fn ties_are_seeded_and_deterministic() {
        let ws = [view(0, 0, 0); 8];
        let s = scorer();
        let picks: std::collections::HashSet<_> = (0..64u64)
            .map(|t| s.pick(&ws, &[0; 8], 4, t).unwrap().worker)
            .collect();
        assert!(picks.len() >= 6, "tie-break should spread: {picks:?}");
        assert_eq!(s.pick(&ws, &[0; 8], 4, 7), s.pick(&ws, &[0; 8], 4, 7));
    }
}
