//! The model seam: the [`Model`] trait every backend implements (the CPU
//! transformer in `cpu/`, the CUDA one in `cuda/`), its configuration, the logits it
//! returns and its errors. One decoder-only forward per backend covers every family
//! through the description in [`ModelConfig`] and its [`Arch`].

pub(crate) mod arch;
pub(crate) mod config;

pub use arch::{Activation, Arch, LayerAttn, Moe};
pub use config::{Family, ModelConfig, RopeScaling};

use crate::executor::Executor;
use reprise_text::meta::MetaError;
use std::any::Any;
use std::path::PathBuf;
use std::sync::Arc;

/// Everything that can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The model source, or its text side (tokenizer, template, special tokens).
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The architecture is not one we implement.
    #[error("unsupported model architecture {0:?} (supported: llama, mistral, qwen2, qwen3, phi3, gemma2, gemma3, qwen3_moe, mixtral)")]
    UnsupportedArchitecture(String),
    /// A config or metadata field is missing or has the wrong type.
    #[error("invalid model config: {0}")]
    Config(String),
    /// A tensor is missing or has an unexpected shape.
    #[error("bad tensor {name}: {reason}")]
    Tensor {
        /// Tensor name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The GGUF or safetensors file is malformed.
    #[error("malformed model file {path}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Reader's message.
        reason: String,
    },
    /// The device (GPU) failed or is missing.
    #[error("device error: {0}")]
    Device(String),
    /// A forward call got inputs that do not fit the model or the cache.
    #[error("invalid forward input: {0}")]
    InvalidInput(String),
}

/// One sequence's share of a forward step.
#[derive(Clone, Copy, Debug)]
pub struct SeqInput<'a> {
    /// New tokens computed this step, at positions `start_pos..start_pos + tokens.len()`.
    pub tokens: &'a [u32],
    /// Number of positions already in the cache (prefix hit, earlier chunks or decode steps).
    pub start_pos: usize,
    /// Physical block ids covering positions `0..start_pos + tokens.len()`.
    pub block_table: &'a [u32],
}

/// The logits of one step: a row of `vocab` values per sequence of the batch, in one
/// buffer (one allocation per step, rows sampled in parallel).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Logits {
    data: Vec<f32>,
    vocab: usize,
}

impl Logits {
    /// Rows of `vocab` values laid end to end; `data.len()` must be a multiple of `vocab`.
    pub fn new(data: Vec<f32>, vocab: usize) -> Result<Self, ModelError> {
        if vocab == 0 || !data.len().is_multiple_of(vocab) {
            return Err(ModelError::InvalidInput(format!(
                "{} logits are not whole rows of {vocab}",
                data.len()
            )));
        }
        Ok(Self { data, vocab })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.data.len().checked_div(self.vocab).unwrap_or(0)
    }

    /// Values per row.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// Row `i` (panics when out of range, like indexing).
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.vocab..(i + 1) * self.vocab]
    }

    /// Every row in order.
    pub fn iter(&self) -> std::slice::ChunksExact<'_, f32> {
        self.data.chunks_exact(self.vocab.max(1))
    }
}

/// K/V storage in blocks as an attention backend lays it out: what the block
/// tables index into.
pub trait KvStorage: Send {
    /// Blocks in the pool.
    fn num_blocks(&self) -> usize;
    /// Tokens per block.
    fn block_size(&self) -> usize;
}

/// A causal language model computing through a paged KV cache (`Sync` so workers
/// on one device can share one copy of the weights).
pub trait Model: Send + Sync {
    /// The K/V storage of this model's attention backend (host f32 blocks on the CPU,
    /// a bf16 pool with its stream on a GPU), one per worker.
    type Kv: KvStorage;
    /// The model's hyper-parameters.
    fn config(&self) -> &ModelConfig;
    /// Runs one step over a batch of sequences (prefill chunks and decodes mixed),
    /// writes their new K/V into `cache` and returns the logits of each input's last token.
    fn forward(&self, batch: &[SeqInput], cache: &mut Self::Kv) -> Result<Logits, ModelError>;
    /// Allocates a worker's KV storage with this model's layer and head geometry.
    fn new_kv_cache(&self, num_blocks: usize, block_size: usize) -> Result<Self::Kv, ModelError>;
    /// Bytes one KV block of `block_size` tokens takes across all layers (K and V, f32).
    fn kv_block_bytes(&self, block_size: usize) -> usize {
        let c = self.config();
        2 * c.num_layers * block_size * c.num_kv_heads * c.head_dim * std::mem::size_of::<f32>()
    }
    /// The memory of the device holding the weights, for sizing KV pools; `None` on the host.
    fn device_memory(&self) -> Option<DeviceMemory> {
        None
    }
    /// Scratch one worker needs beside its KV pool at these batch limits (device models).
    fn workspace_bytes(&self, _max_batched_tokens: usize, _max_seqs: usize) -> u64 {
        0
    }
    /// Bytes of weights one decode step reads (and the weights take in memory), with
    /// the formats they are in, e.g. `"Q4_1 ×210, Q8_0 ×1"`.
    fn weights(&self) -> (u64, String) {
        (0, String::new())
    }
}

/// A loaded model as workers start from it, whichever backend computes it (the CPU
/// transformer, a CUDA model): what sizing the KV pools needs, and each worker's
/// executor over its own KV storage. Every [`Model`] is one (`model_executor.rs`).
pub trait ServedModel: Send + Sync {
    /// The model's hyper-parameters.
    fn config(&self) -> &ModelConfig;
    /// Bytes of one KV block of `block_size` tokens on this backend.
    fn kv_block_bytes(&self, block_size: usize) -> usize;
    /// The device's memory (`None` on the host).
    fn device_memory(&self) -> Option<DeviceMemory>;
    /// A worker's scratch at these batch limits.
    fn workspace_bytes(&self, max_batched_tokens: usize, max_seqs: usize) -> u64;
    /// Weight bytes and formats.
    fn weights(&self) -> (u64, String);
    /// A worker's executor: this model over a new KV storage of `num_blocks` blocks
    /// of `block_size` tokens.
    fn executor(
        self: Arc<Self>,
        num_blocks: usize,
        block_size: usize,
    ) -> Result<Box<dyn Executor + Send>, ModelError>;
    /// The concrete model, for tools that need one backend's own type.
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

/// A loaded model on its backend; workers of one device share it (the weights are
/// read-only).
pub type AnyModel = Arc<dyn ServedModel>;

/// A device's memory as its driver reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceMemory {
    /// Device name, e.g. `cuda:0`.
    pub device: String,
    /// Free bytes now (after this process's weights).
    pub free: u64,
    /// Total bytes.
    pub total: u64,
}

/// KV pool bytes for each of `workers` workers sharing one device, the way vLLM's
/// `--gpu-memory-utilization` sizes it: this process may use `utilization` of the
/// device's total; what is already used (weights, other processes) and each
/// worker's scratch come off the top, and the rest is split evenly.
pub fn kv_pool_bytes_per_worker(
    mem: &DeviceMemory,
    utilization: f64,
    workspace_per_worker: u64,
    workers: usize,
) -> Result<u64, String> {
    if !(utilization > 0.0 && utilization <= 1.0) {
        return Err(format!("utilization {utilization} is not in (0, 1]"));
    }
    let workers = workers.max(1) as u64;
    let budget = (mem.total as f64 * utilization) as u64;
    let used = mem.total.saturating_sub(mem.free);
    let left = budget
        .checked_sub(used)
        .and_then(|b| b.checked_sub(workspace_per_worker * workers))
        .filter(|&b| b > 0)
        .ok_or_else(|| {
            format!(
                "{}: {:.1} GiB of {:.1} GiB already in use (weights and others) leaves nothing for {} KV pools at utilization {utilization}",
                mem.device,
                used as f64 / (1u64 << 30) as f64,
                mem.total as f64 / (1u64 << 30) as f64,
                workers
            )
        })?;
    Ok(left / workers)
}

/// Rejects a batch that does not fit the model or a cache of `num_blocks` blocks of
/// `block_size` tokens (shared by every backend).
pub(crate) fn check_batch(
    c: &ModelConfig,
    batch: &[SeqInput],
    num_blocks: usize,
    block_size: usize,
) -> Result<(), ModelError> {
    let bs = block_size;
    let window = c.uniform_window();
    for (i, s) in batch.iter().enumerate() {
        if s.tokens.is_empty() {
            return Err(ModelError::InvalidInput(format!(
                "sequence {i} has no new tokens"
            )));
        }
        let end = s.start_pos + s.tokens.len();
        if s.block_table.len() * bs < end {
            return Err(ModelError::InvalidInput(format!(
                "sequence {i}: block table covers {} positions, needs {end}",
                s.block_table.len() * bs
            )));
        }
        // Blocks wholly before the first new token's window may have been given back.
        let gone = window.map_or(0, |w| (s.start_pos + 1).saturating_sub(w) / bs);
        if let Some(b) = s.block_table[gone.min(end.div_ceil(bs))..end.div_ceil(bs)]
            .iter()
            .find(|&&b| b as usize >= num_blocks)
        {
            return Err(ModelError::InvalidInput(format!(
                "sequence {i}: block {b} out of range ({num_blocks} blocks)"
            )));
        }
        if let Some(t) = s.tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(ModelError::InvalidInput(format!(
                "token id {t} out of vocabulary ({})",
                c.vocab_size
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod sizing_tests {
    use super::*;

    #[test]
    fn kv_pool_is_what_utilization_leaves_split_across_workers() {
        let gib = 1u64 << 30;
        let mem = DeviceMemory {
            device: "cuda:0".into(),
            free: 64 * gib,
            total: 80 * gib,
        };
        // 0.9 * 80 = 72 GiB budget, 16 used, 2 x 1 GiB scratch -> 54 GiB / 2.
        assert_eq!(kv_pool_bytes_per_worker(&mem, 0.9, gib, 2), Ok(27 * gib));
        assert!(kv_pool_bytes_per_worker(&mem, 0.2, gib, 2).is_err());
        assert!(kv_pool_bytes_per_worker(&mem, 1.5, gib, 2).is_err());
        assert!(kv_pool_bytes_per_worker(&mem, 0.0, 0, 1).is_err());
    }
}
