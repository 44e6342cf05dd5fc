//! The real executor: a model's forward pass over its own KV storage, then each
//! sequence's own sampler, the rows of a batch sampled in parallel.

use crate::cpu::ops;
use crate::executor::{Executor, ExecutorError, Sampled, StepInput};
use crate::model::{Model, ModelError, SeqInput};
use crate::sampler::Sampler;
use crate::scheduler::SeqId;
use crate::types::SamplingParams;
use rayon::prelude::*;
use reprise_router::TokenId;
use std::collections::HashMap;
use std::sync::Arc;

/// Runs steps on a model whose K/V live in this executor's storage of the model's
/// own type.
pub struct ModelExecutor<M: Model> {
    model: Arc<M>,
    cache: M::Kv,
    samplers: HashMap<SeqId, Sampler>,
}

impl<M: Model> ModelExecutor<M> {
    /// An executor with KV storage for `num_blocks` blocks of `block_size` tokens.
    pub fn new(model: Arc<M>, num_blocks: usize, block_size: usize) -> Result<Self, ModelError> {
        let cache = model.new_kv_cache(num_blocks, block_size)?;
        Ok(Self {
            model,
            cache,
            samplers: HashMap::new(),
        })
    }

    /// The model.
    pub fn model(&self) -> &Arc<M> {
        &self.model
    }
}

impl<M: Model> Executor for ModelExecutor<M> {
    fn execute(&mut self, step: &[StepInput<'_>]) -> Result<Vec<Sampled>, ExecutorError> {
        let batch: Vec<SeqInput> = step
            .iter()
            .map(|s| SeqInput {
                tokens: s.tokens,
                start_pos: s.start_pos,
                block_table: s.block_table,
            })
            .collect();
        let logits = self
            .model
            .forward(&batch, &mut self.cache)
            .map_err(|e| ExecutorError::Step(e.to_string()))?;
        if logits.rows() != step.len() {
            return Err(ExecutorError::Fault(format!(
                "the model returned {} rows of logits for a batch of {}",
                logits.rows(),
                step.len()
            )));
        }
        // Each sampler leaves the map for the step so the rows can be drawn in parallel.
        let mut work: Vec<(usize, SeqId, Sampler)> = step
            .iter()
            .enumerate()
            .filter(|(_, s)| s.sample)
            .map(|(row, s)| {
                let sampler = self
                    .samplers
                    .remove(&s.seq)
                    .unwrap_or_else(|| Sampler::new(&SamplingParams::default()));
                (row, s.seq, sampler)
            })
            .collect();
        let draw = |(row, seq, sampler): &mut (usize, SeqId, Sampler)| {
            let (token, logprob) = sampler.sample(logits.row(*row));
            Sampled {
                seq: *seq,
                token,
                logprob,
            }
        };
        let out: Vec<Sampled> = if work.len() > 1 {
            ops::pool().install(|| work.par_iter_mut().map(draw).collect())
        } else {
            work.iter_mut().map(draw).collect()
        };
        self.samplers
            .extend(work.into_iter().map(|(_, seq, sampler)| (seq, sampler)));
        Ok(out)
    }

    fn add_sequence(&mut self, seq: SeqId, params: &SamplingParams, stop_ids: &[TokenId]) {
        self.samplers
            .insert(seq, Sampler::new(params).holding_back(stop_ids));
    }

    fn remove_sequence(&mut self, seq: SeqId) {
        self.samplers.remove(&seq);
    }
}
