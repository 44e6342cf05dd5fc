//! The seam between the scheduler and whatever computes a step: the real model
//! (paged attention over the block tables) or a cost model with no tensors,
//! used by tests and the cluster simulator.

use crate::scheduler::SeqId;
pub use crate::scheduler::StepInput;
use reprise_protocol::TokenId;
use reprise_protocol::{SamplingParams, TokenLogprob};
use reprise_text::grammar::Constraint;
use serde::{Deserialize, Serialize};

/// A token sampled for one sequence in a step.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampled {
    /// The sequence.
    pub seq: SeqId,
    /// The new token.
    pub token: TokenId,
    /// Log-probabilities, when the sequence asked for them.
    pub logprob: Option<TokenLogprob>,
}

/// Error from executing a step.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The step failed (e.g. a device error): the worker fails the live requests and
    /// carries on.
    #[error("step execution failed: {0}")]
    Step(String),
    /// The executor broke its contract (e.g. returned the wrong number of rows): its
    /// state cannot be trusted, so the worker is failed like a panicking one.
    #[error("executor fault: {0}")]
    Fault(String),
}

/// What the executor needs to sample a new sequence.
#[derive(Clone, Copy, Debug)]
pub struct NewSequence<'a> {
    /// Its sampling parameters.
    pub params: &'a SamplingParams,
    /// Its prompt (the repetition penalty covers it).
    pub prompt: &'a [TokenId],
    /// The tokens that would end it (EOS unless ignored, and `stop_token_ids`),
    /// which the sampler holds back for the first `params.min_tokens` tokens.
    pub stop_ids: &'a [TokenId],
    /// The grammar its output follows, if any.
    pub constraint: Option<&'a Constraint>,
}

/// Computes one scheduler step.
pub trait Executor {
    /// Run the step and return one [`Sampled`] for every input with `sample` set, in order.
    fn execute(&mut self, step: &[StepInput<'_>]) -> Result<Vec<Sampled>, ExecutorError>;
    /// A sequence starts; it will be sampled as `new` says.
    fn add_sequence(&mut self, _seq: SeqId, _new: &NewSequence<'_>) {}
    /// A sequence ended; drop its per-sequence state.
    fn remove_sequence(&mut self, _seq: SeqId) {}
    /// Keys a query attends to when every layer slides its window (blocks before it
    /// can be given back); `None` when some layer needs the whole prefix.
    fn sliding_window(&self) -> Option<usize> {
        None
    }
}

impl<E: Executor + ?Sized> Executor for Box<E> {
    fn execute(&mut self, step: &[StepInput<'_>]) -> Result<Vec<Sampled>, ExecutorError> {
        (**self).execute(step)
    }

    fn add_sequence(&mut self, seq: SeqId, new: &NewSequence<'_>) {
        (**self).add_sequence(seq, new)
    }

    fn remove_sequence(&mut self, seq: SeqId) {
        (**self).remove_sequence(seq)
    }

    fn sliding_window(&self) -> Option<usize> {
        (**self).sliding_window()
    }
}

/// Step latency as a function of the work in the step. Loaded from data files
/// (JSON) so that the simulator can be calibrated to a given GPU and model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CostModel {
    /// Human-readable name (model, hardware, where the numbers come from).
    pub name: String,
    /// Fixed cost of any step, seconds.
    pub step_overhead_s: f64,
    /// Per newly computed prompt token (the matmuls), seconds.
    pub prefill_token_s: f64,
    /// Per (new token × context token) pair of prefill attention, seconds.
    pub prefill_attention_pair_s: f64,
    /// Per sequence decoding in the step (weights are read once per step, so this is small), seconds.
    pub decode_seq_s: f64,
    /// Per context token read by decode attention, seconds.
    pub decode_context_token_s: f64,
}

impl CostModel {
    /// Modelled duration of a step, in seconds.
    pub fn step_time(&self, step: &[StepInput<'_>]) -> f64 {
        if step.is_empty() {
            return 0.0;
        }
        let mut t = self.step_overhead_s;
        for s in step {
            let n = s.tokens.len() as f64;
            let ctx = (s.start_pos + s.tokens.len()) as f64;
            if s.tokens.len() == 1 && s.start_pos > 0 {
                t += self.decode_seq_s + self.decode_context_token_s * ctx;
            } else {
                // Each new token attends to the cached prefix plus, on average, half the chunk.
                let pairs = n * (s.start_pos as f64 + (n + 1.0) / 2.0);
                t += self.prefill_token_s * n + self.prefill_attention_pair_s * pairs;
            }
        }
        t
    }
}

/// An executor that computes nothing: it advances a virtual clock by the cost
/// model's step time and "samples" a deterministic token per sequence.
#[derive(Clone, Debug)]
pub struct CostModelExecutor {
    /// The cost model.
    pub cost: CostModel,
    /// Virtual seconds spent so far.
    pub elapsed_s: f64,
    /// Token every sequence produces (pick one that is not EOS).
    pub token: TokenId,
}

impl CostModelExecutor {
    /// An executor starting at virtual time zero.
    pub fn new(cost: CostModel, token: TokenId) -> Self {
        Self {
            cost,
            elapsed_s: 0.0,
            token,
        }
    }
}

impl Executor for CostModelExecutor {
    fn execute(&mut self, step: &[StepInput<'_>]) -> Result<Vec<Sampled>, ExecutorError> {
        self.elapsed_s += self.cost.step_time(step);
        Ok(step
            .iter()
            .filter(|s| s.sample)
            .map(|s| Sampled {
                seq: s.seq,
                token: self.token,
                logprob: None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost() -> CostModel {
        CostModel {
            name: "t".into(),
            step_overhead_s: 1.0,
            prefill_token_s: 0.1,
            prefill_attention_pair_s: 0.0,
            decode_seq_s: 0.01,
            decode_context_token_s: 0.001,
        }
    }

    #[test]
    fn cached_prefix_makes_prefill_cheaper() {
        let toks = vec![1; 100];
        let cold = [StepInput {
            seq: 0,
            tokens: &toks,
            start_pos: 0,
            block_table: &[],
            sample: true,
        }];
        let warm = [StepInput {
            seq: 0,
            tokens: &toks[..4],
            start_pos: 96,
            block_table: &[],
            sample: true,
        }];
        let c = cost();
        assert!(c.step_time(&warm) < c.step_time(&cold));
        assert_eq!(c.step_time(&[]), 0.0);
    }

    #[test]
    fn executor_samples_only_where_asked() {
        let toks = [5u32; 3];
        let step = [
            StepInput {
                seq: 1,
                tokens: &toks,
                start_pos: 0,
                block_table: &[],
                sample: false,
            },
            StepInput {
                seq: 2,
                tokens: &toks[..1],
                start_pos: 9,
                block_table: &[],
                sample: true,
            },
        ];
        let mut e = CostModelExecutor::new(cost(), 42);
        let out = e.execute(&step).unwrap();
        assert_eq!(
            out,
            vec![Sampled {
                seq: 2,
                token: 42,
                logprob: None
            }]
        );
        assert!(e.elapsed_s > 1.0);
    }
}
