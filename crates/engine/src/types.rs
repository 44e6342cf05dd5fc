//! The engine's request: a tokenized prompt, its sampling parameters (the shared
//! vocabulary of `reprise-protocol`) and the compiled grammar it may carry.

use reprise_protocol::{SamplingParams, TokenId};
use reprise_text::grammar::Constraint;
use std::sync::Arc;

/// A generation request, already tokenized.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    /// Caller-chosen id, unique among the worker's live requests.
    pub id: u64,
    /// The id the client knows the request by (`x-request-id`), for logs.
    pub request_id: Arc<str>,
    /// Prompt token ids (never empty).
    pub prompt: Vec<TokenId>,
    /// Sampling and stopping parameters.
    pub params: SamplingParams,
    /// Number of sequences to generate from the prompt; they share its KV blocks.
    pub n: usize,
    /// Extra bytes mixed into every block key (cache salt / adapter name).
    pub cache_salt: Vec<u8>,
    /// The grammar every sequence's output must follow (structured outputs).
    pub constraint: Option<Constraint>,
}
