//! The real executor: a model's forward pass over the paged KV cache, then
//! each sequence's own sampler.

use crate::attention::PagedKvCache;
use crate::executor::{Executor, ExecutorError, Sampled, StepInput};
use crate::model::{Model, SeqInput};
use crate::sampler::{Sampler, SamplingParams};
use crate::scheduler::SeqId;
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
            .map_err(|e| ExecutorError(e.to_string()))?;
        let mut out = Vec::new();
        for (s, row) in step.iter().zip(&logits) {
            if !s.sample {
                continue;
            }
            let sampler = self
                .samplers
                .entry(s.seq)
                .or_insert_with(|| Sampler::new(&SamplingParams::default()));
            let (token, logprob) = sampler.sample(row);
            out.push(Sampled {
                seq: s.seq,
                token,
                logprob,
            });
        }
        Ok(out)
    }

    fn add_sequence(&mut self, seq: SeqId, params: &SamplingParams) {
        self.samplers.insert(seq, Sampler::new(params));
    }

    fn remove_sequence(&mut self, seq: SeqId) {
        self.samplers.remove(&seq);
    }
}
