//! What every handler of `reprise serve` shares: the model's tokenizer side, limits,
//! the dispatcher and the metrics.

use crate::dispatch::Dispatcher;
use crate::metrics::Metrics;
use reprise_api::cpu::CpuPool;
use reprise_api::model_info::{HttpLimits, ModelInfo};
use reprise_api::params::ParseLimits;
use std::sync::Arc;
use std::time::Duration;

/// Shared server state.
pub struct AppState {
    /// The served model's tokenizer side.
    pub model: ModelInfo,
    /// Routing and submission.
    pub dispatcher: Dispatcher,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Required bearer token.
    pub api_key: Option<String>,
    /// Body limit.
    pub max_body_bytes: usize,
    /// The KV-event publisher, with `--kv-events-endpoint`.
    pub kv_publisher: Option<Arc<crate::kv_publisher::KvPublisher>>,
    /// Parsing, templates and tokenization.
    pub cpu: CpuPool,
    /// `--request-timeout`.
    pub request_timeout: Option<Duration>,
    /// Server-dependent bounds on request fields.
    pub parse_limits: ParseLimits,
}

impl HttpLimits for AppState {
    fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    fn api_key(&self) -> Option<&str> {
        self.api_key.as_deref()
    }

    fn cpu(&self) -> &CpuPool {
        &self.cpu
    }
}
