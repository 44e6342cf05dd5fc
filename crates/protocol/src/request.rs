//! The worker boundary's vocabulary: what a caller asks of a worker (sampling and
//! stopping parameters) and what it gets back (tokens, logprobs, finish and stop
//! reasons). The engine produces these; the HTTP layer and `reprise route` read them.

use crate::block_key::TokenId;
use serde::{Deserialize, Serialize};
use std::time::Instant;

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
    /// Strings that end generation when the output text contains them.
    pub stop: Vec<String>,
    /// Keep generating past EOS until `max_tokens`.
    pub ignore_eos: bool,
    /// Return the chosen token's logprob and this many top alternatives.
    pub logprobs: Option<usize>,
    /// Drop special tokens from the output text (stop strings are matched on that text).
    pub skip_special_tokens: bool,
    /// With `skip_special_tokens` off: false writes consecutive special tokens with
    /// nothing between them (vLLM's option).
    pub spaces_between_special_tokens: bool,
    /// Keep the stop string (or stop token's text) at the end of the output.
    pub include_stop_str_in_output: bool,
    /// Tokens generated before EOS, a stop token id or a stop string may end the sequence.
    pub min_tokens: usize,
    /// Subtracted from the logit of every token generated so far (vLLM's formula).
    pub presence_penalty: f32,
    /// Subtracted once per occurrence of a token generated so far.
    pub frequency_penalty: f32,
    /// Divides positive and multiplies negative logits of tokens in the prompt or the
    /// output (HF semantics; 1 is off).
    pub repetition_penalty: f32,
    /// Drops tokens less likely than this fraction of the most likely one (0 is off).
    pub min_p: f32,
    /// Token id → bias added to its logit (clamped to [-100, 100]).
    pub logit_bias: Vec<(TokenId, f32)>,
    /// Token sequences never generated: the last token of each is banned wherever the
    /// output ends with the rest of it.
    pub bad_words: Vec<Vec<TokenId>>,
    /// When set, only these tokens may be generated.
    pub allowed_token_ids: Option<Vec<TokenId>>,
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
            stop: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            skip_special_tokens: true,
            spaces_between_special_tokens: true,
            include_stop_str_in_output: false,
            min_tokens: 0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            min_p: 0.0,
            logit_bias: Vec::new(),
            bad_words: Vec::new(),
            allowed_token_ids: None,
        }
    }
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

/// What ended a sequence stopped by `stop_token_ids` or a stop string (vLLM's
/// `stop_reason`; EOS leaves it empty).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StopReason {
    /// A stop token id.
    Token(TokenId),
    /// A stop string.
    Text(String),
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
        /// The EOS or stop token id that ends this sequence: counted, but (as vLLM
        /// does) left out of the text unless the stop string is to be included.
        is_stop_token: bool,
    },
    /// Sequence `index` is done; the request is done when all `n` are.
    Finished {
        /// Which of the request's `n` sequences.
        index: usize,
        /// Why it stopped.
        reason: FinishReason,
        /// The stop token id or stop string, when one ended it.
        stop_reason: Option<StopReason>,
        /// Prompt length in tokens.
        prompt_tokens: usize,
        /// Prompt tokens whose KV came from the prefix cache.
        cached_tokens: usize,
        /// Tokens generated for this sequence.
        completion_tokens: usize,
    },
    /// The request was scheduled for the first time (sent once, before its tokens).
    Scheduled {
        /// When the worker took the request in.
        queued_at: Instant,
        /// When a step first computed any of it.
        scheduled_at: Instant,
    },
    /// The request failed; nothing more follows.
    Error(String),
}
