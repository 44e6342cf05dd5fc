//! Model families and loaders.
//!
//! One decoder-only transformer implementation covers Llama (SmolLM2, Llama 3),
//! Qwen2 and Qwen3 through family flags in [`ModelConfig`]; the [`Model`]
//! trait is the seam other families (and other devices) plug into.

mod config;
mod loader;
pub mod ops;
mod transformer;

pub use config::{Family, ModelConfig, RopeScaling};
pub use loader::{default_model_path, load, load_gguf, load_hf_dir};
pub use transformer::Transformer;

use crate::attention::PagedKvCache;
use crate::chat_template::{ChatTemplate, ChatTemplateError};
use crate::tokenizer::{Tokenizer, TokenizerError};
use std::path::PathBuf;

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
    /// The default model is not in the cache.
    #[error("default model not found at {0}; run models/fetch-default.sh to fetch it")]
    DefaultModelMissing(PathBuf),
    /// The model source is neither a file, a directory nor a cached HF repo.
    #[error("model source {0:?} is not a GGUF file, a model directory or a HuggingFace repo id in the local hf-hub cache")]
    SourceNotFound(String),
    /// The architecture is not one we implement.
    #[error("unsupported model architecture {0:?} (supported: llama, qwen2, qwen3)")]
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
    /// The tokenizer could not be built.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The chat template could not be compiled.
    #[error(transparent)]
    ChatTemplate(#[from] ChatTemplateError),
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

/// A causal language model computing through a paged KV cache (`Sync` so workers
/// on one device can share one copy of the weights).
pub trait Model: Send + Sync {
    /// The model's hyper-parameters.
    fn config(&self) -> &ModelConfig;
    /// Runs one step over a batch of sequences (prefill chunks and decodes mixed),
    /// writes their new K/V into `cache` and returns the logits of each input's last token.
    fn forward(
        &self,
        batch: &[SeqInput],
        cache: &mut PagedKvCache,
    ) -> Result<Vec<Vec<f32>>, ModelError>;
    /// Allocates a KV cache with this model's layer and head geometry.
    fn new_kv_cache(&self, num_blocks: usize, block_size: usize) -> PagedKvCache {
        let c = self.config();
        PagedKvCache::new(
            c.num_layers,
            num_blocks,
            block_size,
            c.num_kv_heads,
            c.head_dim,
        )
    }
}

/// A model with everything needed to serve it.
pub struct LoadedModel {
    /// The network.
    pub model: Box<dyn Model>,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// Its chat template, when it ships one.
    pub chat_template: Option<ChatTemplate>,
    /// Token ids that end generation.
    pub eos_token_ids: Vec<u32>,
    /// Beginning-of-sequence token, when the model has one.
    pub bos_token_id: Option<u32>,
    /// Longest context (prompt + generated) the model supports.
    pub max_model_len: usize,
    /// Display name (file stem or repo id).
    pub name: String,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("name", &self.name)
            .field("config", self.model.config())
            .field("eos_token_ids", &self.eos_token_ids)
            .field("bos_token_id", &self.bos_token_id)
            .field("max_model_len", &self.max_model_len)
            .finish_non_exhaustive()
    }
}
