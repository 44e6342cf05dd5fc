//! What every handler shares: the model's tokenizer and template, limits, the
//! dispatcher and the metrics.

use crate::dispatch::Dispatcher;
use crate::errors::ApiError;
use crate::metrics::Metrics;
use reprise_engine::chat_template::ChatTemplate;
use reprise_engine::tokenizer::Tokenizer;
use std::sync::Arc;

/// Shared server state.
pub struct AppState {
    /// Name reported by /v1/models and accepted in `model`.
    pub served_model_name: String,
    /// The model's own name (also accepted).
    pub model_name: String,
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// The chat template, when the model has one.
    pub chat_template: Option<ChatTemplate>,
    /// Context length served.
    pub max_model_len: usize,
    /// Rows of the embedding: token ids must be below this.
    pub vocab_size: usize,
    /// Routing and submission.
    pub dispatcher: Dispatcher,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Required bearer token.
    pub api_key: Option<String>,
    /// Body limit.
    pub max_body_bytes: usize,
    /// Unix time the server started (the model's `created`).
    pub created: u64,
    /// The KV-event publisher, with `--kv-events-endpoint`.
    pub kv_publisher: Option<Arc<crate::kv_publisher::KvPublisher>>,
}

impl AppState {
    /// 404 unless `model` is absent or names the served model.
    pub fn check_model(&self, model: Option<&str>) -> Result<(), ApiError> {
        match model {
            None => Ok(()),
            Some(m) if m == self.served_model_name || m == self.model_name => Ok(()),
            Some(m) => Err(ApiError::ModelNotFound(
                m.to_string(),
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
}
