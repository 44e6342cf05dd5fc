//! The real executor: a model's forward pass over its own KV storage, then each
//! sequence's own sampler, the rows of a batch sampled in parallel.

use crate::executor::{Executor, ExecutorError, NewSequence, Sampled, StepInput};
use crate::model::{DeviceMemory, Model, ModelConfig, ModelError, SeqInput, ServedModel};
use crate::sampler::Sampler;
use crate::scheduler::SeqId;
use rayon::prelude::*;
use reprise_protocol::SamplingParams;
use std::any::Any;
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
    fn sliding_window(&self) -> Option<usize> {
        self.model.config().uniform_window()
    }

    fn execute(&mut self, step: &[StepInput<'_>]) -> Result<Vec<Sampled>, ExecutorError> {
        let batch: Vec<SeqInput> = step
            .iter()
            .map(|s| SeqInput {
                tokens: s.tokens,
                start_pos: s.start_pos,
                block_table: s.block_table,
            })
            .collect();
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
        let (model, cache) = (&self.model, &mut self.cache);
        // Grammar masks depend only on the tokens drawn so far, so they are computed
        // on their own thread while the forward pass computes the logits (llguidance's
        // intended use): a constrained sequence waits for its mask only when the mask
        // takes longer than the whole forward pass.
        let constrained = work.iter().any(|(_, _, s)| s.has_grammar());
        let forward = if constrained {
            std::thread::scope(|scope| {
                scope.spawn(|| {
                    for (_, _, s) in work.iter_mut() {
                        s.prepare_mask();
                    }
                });
                model.forward(&batch, cache)
            })
        } else {
            model.forward(&batch, cache)
        };
        let logits = forward.map_err(|e| ExecutorError::Step(e.to_string()));
        let logits = match logits {
            Ok(l) if l.rows() == step.len() => l,
            other => {
                self.samplers
                    .extend(work.into_iter().map(|(_, seq, sampler)| (seq, sampler)));
                return Err(match other {
                    Err(e) => e,
                    Ok(l) => ExecutorError::Fault(format!(
                        "the model returned {} rows of logits for a batch of {}",
                        l.rows(),
                        step.len()
                    )),
                });
            }
        };
        let draw = |(row, seq, sampler): &mut (usize, SeqId, Sampler)| {
            let (token, logprob) = sampler.sample(logits.row(*row));
            Sampled {
                seq: *seq,
                token,
                logprob,
            }
        };
        let out: Vec<Sampled> = if work.len() > 1 {
            crate::pool::pool().install(|| work.par_iter_mut().map(draw).collect())
        } else {
            work.iter_mut().map(draw).collect()
        };
        self.samplers
            .extend(work.into_iter().map(|(_, seq, sampler)| (seq, sampler)));
        Ok(out)
    }

    fn add_sequence(&mut self, seq: SeqId, new: &NewSequence<'_>) {
        let sampler = Sampler::new(new.params)
            .holding_back(new.stop_ids)
            .with_prompt(new.prompt)
            .with_grammar(new.constraint.map(|c| c.start()));
        self.samplers.insert(seq, sampler);
    }

    fn remove_sequence(&mut self, seq: SeqId) {
        self.samplers.remove(&seq);
    }
}

impl<M: Model + 'static> ServedModel for M {
    fn config(&self) -> &ModelConfig {
        <M as Model>::config(self)
    }

    fn kv_block_bytes(&self, block_size: usize) -> usize {
        <M as Model>::kv_block_bytes(self, block_size)
    }

    fn device_memory(&self) -> Option<DeviceMemory> {
        <M as Model>::device_memory(self)
    }

    fn workspace_bytes(&self, max_batched_tokens: usize, max_seqs: usize) -> u64 {
        <M as Model>::workspace_bytes(self, max_batched_tokens, max_seqs)
    }

    fn weights(&self) -> (u64, String) {
        <M as Model>::weights(self)
    }

    fn executor(
        self: Arc<Self>,
        num_blocks: usize,
        block_size: usize,
    ) -> Result<Box<dyn crate::executor::Executor + Send>, ModelError> {
        Ok(Box::new(ModelExecutor::new(self, num_blocks, block_size)?))
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}
