//! `reprise route`: llm-d's precise cache-aware routing in front of remote workers
//! (other reprise processes and vLLM pods), without Kubernetes.
//!
//! A request's path: `handlers.rs` (tokenize and render once, on the blocking pool)
//! → `proxy.rs` (admission, the router's decision, the body forwarded unchanged,
//! the answer streamed back, one retry on the next-best worker). Beside it, per
//! worker: `events.rs` reads its KV events into the router's index (llm-d's dual
//! keys, replay on gaps and restarts), `health.rs` checks `/health` and scrapes its
//! vLLM-named load, `pool.rs` holds the set and rebuilds it when `discovery.rs` sees
//! the workers file change.

pub mod config;
mod discovery;
mod events;
mod handlers;
mod health;
pub mod metrics;
mod pool;
mod proxy;
mod worker;

use bytes::Bytes;
pub use config::RouteArgs;
use config::RouteConfig;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use metrics::RouteMetrics;
use parking_lot::RwLock;
use pool::WorkerSet;
use reprise_api::model_info::{HttpLimits, ModelInfo};
use reprise_api::options::ConfigError;
use reprise_router::SystemClock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Everything the router's handlers and loops share.
pub struct RouteState {
    /// The served model's tokenizer side.
    pub model: ModelInfo,
    /// Validated options.
    pub cfg: RouteConfig,
    set: RwLock<Arc<WorkerSet>>,
    /// Pooled HTTP/1.1 connections to the workers.
    pub client: Client<HttpConnector, Full<Bytes>>,
    /// Metrics.
    pub metrics: RouteMetrics,
    /// Parsing and tokenization.
    pub cpu: reprise_api::cpu::CpuPool,
    admitted: Arc<AtomicUsize>,
    draining: AtomicBool,
    clock: SystemClock,
}

impl RouteState {
    /// The current worker set.
    pub fn set(&self) -> Arc<WorkerSet> {
        self.set.read().clone()
    }

    fn replace_set(&self, set: WorkerSet) {
        *self.set.write() = Arc::new(set);
    }
}

impl HttpLimits for RouteState {
    fn max_body_bytes(&self) -> usize {
        self.cfg.max_body_bytes
    }

    fn api_key(&self) -> Option<&str> {
        self.cfg.api_key.as_deref()
    }

    fn cpu(&self) -> &reprise_api::cpu::CpuPool {
        &self.cpu
    }
}

/// Why `reprise route` could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A bad option.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The tokenizer side of the model could not be loaded.
    #[error(transparent)]
    Load(#[from] reprise_api::fetch::LoadError),
    /// Listening or serving failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Anything else, said in one line.
    #[error("{0}")]
    Other(String),
}

/// `reprise route`: load the tokenizer, connect to the workers, serve until a signal.
pub fn run(args: &RouteArgs) -> Result<(), RunError> {
    let cfg = RouteConfig::from_args(args)?;
    let listener = std::net::TcpListener::bind(cfg.addr).map_err(|e| {
        RunError::Io(std::io::Error::new(
            e.kind(),
            format!("cannot listen on {}: {e}", cfg.addr),
        ))
    })?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let meta = reprise_api::fetch::load_meta(cfg.model.as_deref())?;
    let mut specs = cfg.workers.clone();
    if let Some(f) = &cfg.workers_file {
        specs.extend(
            config::read_workers_file(f)
                .map_err(|m| RunError::Other(format!("--workers-file: {m}")))?,
        );
    }
    if specs.len() > reprise_router::index::MAX_WORKERS {
        return Err(RunError::Other(format!(
            "--worker: {} workers; at most {}",
            specs.len(),
            reprise_router::index::MAX_WORKERS
        )));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let set = WorkerSet::build(specs, &cfg.router)?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(cfg.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build(connector);
        let served = cfg
            .served_model_name
            .clone()
            .unwrap_or_else(|| meta.name.clone());
        let state = Arc::new(RouteState {
            model: ModelInfo {
                served_model_name: served,
                model_name: meta.name,
                tokenizer: Arc::new(meta.tokenizer),
                chat_template: meta.chat_template,
                max_model_len: meta.max_model_len,
                vocab_size: meta.vocab_size,
                created: reprise_api::unix_now(),
                eos_token_id: meta.eos_token_ids.first().copied(),
                tool_parser: reprise_api::tools::ToolParser::for_family(meta.family),
                grammar: Default::default(),
            },
            cfg,
            set: RwLock::new(Arc::new(set)),
            client,
            metrics: RouteMetrics::default(),
            cpu: reprise_api::cpu::CpuPool::per_core(),
            admitted: Arc::new(AtomicUsize::new(0)),
            draining: AtomicBool::new(false),
            clock: SystemClock::new(),
        });
        // One round of checks first, so workers already down start out of routing.
        startup_checks(&state).await;
        let loops = [
            tokio::spawn(health::health_loop(state.clone(), state.cfg.health_interval)),
            tokio::spawn(health::scrape_loop(state.clone())),
            tokio::spawn(discovery::watch(state.clone())),
        ];
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let set = state.set();
        let ready = format!(
            "reprise: routing {} on http://{addr} to {} worker{} (policy {}, blocks of {} tokens, {} with KV events, {} healthy)",
            state.model.served_model_name,
            set.workers.len(),
            if set.workers.len() == 1 { "" } else { "s" },
            state.cfg.router.policy,
            state.cfg.router.block_size,
            set.workers.iter().filter(|w| w.spec.events.is_some()).count(),
            set.healthy(),
        );
        drop(set);
        let drain_state = state.clone();
        reprise_api::serve::serve_until_signal(
            handlers::app(state.clone()),
            listener,
            state.cfg.listener,
            state.cfg.shutdown_timeout,
            ready,
            move || {
                drain_state.draining.store(true, Ordering::Release);
                drain_state.admitted.load(Ordering::Acquire)
            },
        )
        .await?;
        for l in loops {
            l.abort();
        }
        Ok::<(), RunError>(())
    })?;
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// A first health round: workers that do not answer start out of routing (a
/// running router needs two failed checks to take one out).
async fn startup_checks(state: &RouteState) {
    let set = state.set();
    let timeout = state.cfg.connect_timeout.min(Duration::from_secs(1));
    futures_util::future::join_all(set.workers.iter().map(|w| {
        let set = set.clone();
        async move {
            if !health::probe(state, w, timeout).await {
                set.mark_down(w);
            }
        }
    }))
    .await;
}
