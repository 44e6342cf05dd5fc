//! `reprise route`'s startup: options, the model's text side, the worker set, the
//! background loops (health checks, load scrapes, the workers file), then the shared
//! HTTP skeleton until a signal.

use crate::config::{self, RouteArgs, RouteConfig};
use crate::error::RunError;
use crate::pool::WorkerSet;
use crate::remote::{Remote, RouteApp};
use crate::{discovery, health};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use reprise_api::admission::Admission;
use reprise_api::app::App;
use reprise_api::metrics::RouterMetrics;
use reprise_api::model_info::ModelInfo;
use reprise_api::params::{GenerationDefaults, ParseLimits, MAX_N};
use reprise_router::index::MAX_WORKERS;
use std::sync::Arc;
use std::time::Duration;

/// `reprise route`: load the tokenizer, connect to the workers, serve until a signal.
pub fn run(args: &RouteArgs) -> Result<(), RunError> {
    let cfg = RouteConfig::from_args(args)?;
    let addr = cfg.http.addr;
    let listener = std::net::TcpListener::bind(addr).map_err(|e| {
        RunError::Io(std::io::Error::new(
            e.kind(),
            format!("cannot listen on {addr}: {e}"),
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
    if specs.len() > MAX_WORKERS {
        return Err(RunError::Other(format!(
            "--worker: {} workers; at most {MAX_WORKERS}",
            specs.len()
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
        let max_model_len = meta.max_model_len;
        let model = ModelInfo::new(meta, cfg.http.served_model_name.clone(), max_model_len, None);
        // The workers apply their own limits and defaults to what is forwarded; the
        // router refuses only what no worker could serve.
        let limits = ParseLimits {
            vocab_size: model.vocab_size,
            max_logprobs: model.vocab_size,
            max_n: MAX_N,
            defaults: GenerationDefaults::NONE,
        };
        let app: Arc<RouteApp> = Arc::new(App {
            http: cfg.http.clone(),
            admission: Admission::new(cfg.http.max_queue),
            backend: Remote::new(cfg, set, client),
            model,
            limits,
            router_metrics: RouterMetrics::new(MAX_WORKERS),
            cpu: reprise_api::cpu::CpuPool::per_core(),
        });
        // One round of checks first, so workers already down start out of routing.
        startup_checks(&app.backend).await;
        let interval = app.backend.cfg.health_interval;
        let loops = [
            tokio::spawn(health::health_loop(app.clone(), interval)),
            tokio::spawn(health::scrape_loop(app.clone())),
            tokio::spawn(discovery::watch(app.clone())),
        ];
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let set = app.backend.set();
        let ready = format!(
            "reprise: routing {} on http://{addr} to {} worker{} (policy {}, blocks of {} tokens, {} with KV events, {} healthy)",
            app.model.served_model_name,
            set.workers.len(),
            if set.workers.len() == 1 { "" } else { "s" },
            app.backend.cfg.router.policy,
            app.backend.cfg.router.block_size,
            set.workers.iter().filter(|w| w.spec.events.is_some()).count(),
            set.healthy(),
        );
        drop(set);
        reprise_api::app::serve(app, listener, ready).await?;
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
async fn startup_checks(remote: &Remote) {
    let set = remote.set();
    let timeout = remote.cfg.connect_timeout.min(Duration::from_secs(1));
    futures_util::future::join_all(set.workers.iter().map(|w| {
        let set = set.clone();
        async move {
            if !health::probe(remote, w, timeout).await {
                set.mark_down(w);
            }
        }
    }))
    .await;
}
