//! The engine boundary: what a caller submits to a worker and what it gets
//! back. One worker thread owns one model, its KV pool and its scheduler.

use crate::sampler::SamplingParams;
use reprise_router::TokenId;
use serde::{Deserialize, Serialize};

/// A generation request, already tokenized.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    /// Caller-chosen id, unique among the worker's live requests.
    pub id: u64,
    /// Prompt token ids (never empty).
    pub prompt: Vec<TokenId>,
    /// Sampling and stopping parameters.
    pub params: SamplingParams,
    /// Number of sequences to generate from the prompt; they share its KV blocks.
    pub n: usize,
    /// Extra bytes mixed into every block key (cache salt / adapter name).
    pub cache_salt: Vec<u8>,
}

/// Why a sequence stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// EOS or a stop token id.
    Stop,
    /// `max_tokens` or the context length reached.
    Length,
    /// Cancelled by the caller.
    Abort,
}

/// Log-probability information for one generated token.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    /// Log-probability of the chosen token.
    pub logprob: f32,
    /// The most likely tokens at this step with their log-probabilities.
    pub top: Vec<(TokenId, f32)>,
}

/// One thing a worker reports about a request, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum WorkerEvent {
    /// Sequence `index` produced `token`.
    Token {
        /// Which of the request's `n` sequences.
        index: usize,
        /// The generated token id.
        token: TokenId,
        /// Present when the request asked for logprobs.
        logprob: Option<TokenLogprob>,
    },
    /// Sequence `index` is done; the request is done when all `n` are.
    Finished {
        /// Which of the request's `n` sequences.
        index: usize,
        /// Why it stopped.
        reason: FinishReason,
        /// Prompt length in tokens.
        prompt_tokens: usize,
        /// Prompt tokens whose KV came from the prefix cache.
        cached_tokens: usize,
        /// Tokens generated for this sequence.
        completion_tokens: usize,
    },
    /// The request failed; nothing more follows.
    Error(String),
}
