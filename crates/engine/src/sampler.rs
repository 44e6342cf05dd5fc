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
