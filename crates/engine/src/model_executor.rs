//! The real executor: a model's forward pass over the paged KV cache, then
//! each sequence's own sampler, the rows of a batch sampled in parallel.

use crate::attention::PagedKvCache;
use crate::executor::{Executor, ExecutorError, Sampled, StepInput};
use crate::model::{ops, Model, SeqInput};
use crate::sampler::{Sampler, SamplingParams};
use crate::scheduler::SeqId;
use rayon::prelude::*;
use reprise_router::TokenId;
use std::collections::HashMap;
use std::sync::Arc;

/// Runs steps on a model whose K/V live in this executor's [`PagedKvCache`].
pub struct ModelExecutor {
    model: Arc<dyn Model>,
    cache: PagedKvCache,
    samplers: HashMap<SeqId, Sampler>,
}

impl ModelExecutor {
    /// An executor with a KV cache of `num_blocks` blocks of `block_size` tokens.
    pub fn new(model: Arc<dyn Model>, num_blocks: usize, block_size: usize) -> Self {
        let cache = model.new_kv_cache(num_blocks, block_size);
        Self {
            model,
            cache,
            samplers: HashMap::new(),
        }
    }

    /// The model.
    pub fn model(&self) -> &Arc<dyn Model> {
        &self.model
    }
}

impl Executor for ModelExecutor {
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
