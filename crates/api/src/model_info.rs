//! What the HTTP layer knows about the served model (its tokenizer side, shared by
//! `reprise serve` and `reprise route`, which has no weights) and the limits an
//! app's state gives the extractors.

use crate::cpu::CpuPool;
use crate::errors::ApiError;
use reprise_text::chat_template::ChatTemplate;
use reprise_text::grammar::{Constraint, GrammarCompiler, GrammarError, GrammarSpec};
use reprise_text::meta::ModelMeta;
use reprise_text::tokenizer::Tokenizer;
use reprise_text::tools::ToolParser;
use std::sync::{Arc, OnceLock};

/// What the HTTP layer knows about the served model, shared by `reprise serve` and
/// `reprise route` (which has the tokenizer and template but no weights).
pub struct ModelInfo {
    /// Name reported by /v1/models and accepted in `model`.
    pub served_model_name: String,
    /// The model's own name (also accepted).
    pub model_name: String,
    /// The tokenizer (shared with the workers, which find stop strings with it).
    pub tokenizer: Arc<Tokenizer>,
    /// The chat template, when the model has one.
    pub chat_template: Option<ChatTemplate>,
    /// Context length served.
    pub max_model_len: usize,
    /// Rows of the embedding: token ids must be below this.
    pub vocab_size: usize,
    /// Unix time the server started (the model's `created`).
    pub created: u64,
    /// The token a finished grammar ends with (the model's first EOS).
    pub eos_token_id: Option<u32>,
    /// How `auto` tool calls are found in the output.
    pub tool_parser: ToolParser,
    /// The grammar compiler, built on first use (the token trie takes a moment).
    pub grammar: OnceLock<Result<Arc<GrammarCompiler>, String>>,
}

impl ModelInfo {
    /// The model whose text side is `meta`, served as `served_model_name` (default:
    /// its own name) with a context of `max_model_len` tokens; `auto` tool calls are
    /// parsed with `tool_parser` (default: the one its architecture's templates use).
    pub fn new(
        meta: ModelMeta,
        served_model_name: Option<String>,
        max_model_len: usize,
        tool_parser: Option<ToolParser>,
    ) -> Self {
        Self {
            served_model_name: served_model_name.unwrap_or_else(|| meta.name.clone()),
            tool_parser: tool_parser
                .unwrap_or_else(|| ToolParser::for_architecture(&meta.architecture)),
            model_name: meta.name,
            tokenizer: Arc::new(meta.tokenizer),
            chat_template: meta.chat_template,
            max_model_len,
            vocab_size: meta.vocab_size,
            created: crate::ids::unix_now(),
            eos_token_id: meta.eos_token_ids.first().copied(),
            grammar: OnceLock::new(),
        }
    }

    /// Whether `model` (absent, or a name) names the served model.
    pub fn is_served(&self, model: Option<&str>) -> bool {
        model.is_none_or(|m| m == self.served_model_name || m == self.model_name)
    }

    /// 404 unless `model` is absent or names the served model.
    pub fn check_model(&self, model: Option<&str>) -> Result<(), ApiError> {
        match model {
            m if self.is_served(m) => Ok(()),
            m => Err(ApiError::ModelNotFound(
                m.unwrap_or_default().to_string(),
                self.served_model_name.clone(),
            )),
        }
    }

    /// 400 unless every id is a valid token.
    pub fn check_token_ids(&self, ids: &[u32], param: &str) -> Result<(), ApiError> {
        match ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            Some(id) => Err(ApiError::bad(
                param,
                format!(
                    "token id {id} is out of range (vocabulary size {})",
                    self.vocab_size
                ),
            )),
            None => Ok(()),
        }
    }

    /// Compiles a structured-output grammar over this model's vocabulary; an
    /// invalid one is a 400 naming `param`.
    pub fn compile_grammar(&self, spec: &GrammarSpec, param: &str) -> Result<Constraint, ApiError> {
        let compiler = self
            .grammar
            .get_or_init(|| {
                let eos = self.eos_token_id.ok_or_else(|| {
                    "the model has no EOS token to end a grammar with".to_string()
                })?;
                GrammarCompiler::new(self.tokenizer.clone(), self.vocab_size, eos)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| ApiError::bad(param, e.clone()))?;
        compiler.compile(spec).map_err(|e| match e {
            GrammarError::Invalid(m) => ApiError::bad(param, format!("invalid {param}: {m}")),
            other => ApiError::bad(param, other.to_string()),
        })
    }

    /// The `/v1/models` answer.
    pub fn models_json(&self) -> serde_json::Value {
        serde_json::json!({
            "object": "list",
            "data": [{
                "id": self.served_model_name,
                "object": "model",
                "created": self.created,
                "owned_by": "reprise",
                "root": self.model_name,
                "parent": null,
                "max_model_len": self.max_model_len,
            }],
        })
    }
}

/// The limits the HTTP layers (`serve`'s and `route`'s) read from their state.
pub trait HttpLimits {
    /// Largest accepted request body in bytes.
    fn max_body_bytes(&self) -> usize;
    /// The bearer token requests must carry, if any.
    fn api_key(&self) -> Option<&str>;
    /// Where per-request CPU work runs.
    fn cpu(&self) -> &CpuPool;
}
