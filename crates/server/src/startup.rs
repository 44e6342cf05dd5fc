//! Startup: load the model (fetching the default one the first time), size the KV
//! caches, build the router and the KV-event publisher, and spawn one worker per
//! device.

use crate::config::{Device, GenerationConfig, KvSize, ServeConfig};
use crate::dispatch::Dispatcher;
use crate::kv_publisher::{KvPublisher, PublisherConfig};
use crate::local::{Local, ServeApp};
use crate::metrics::{Metrics, ProcessInfo};
use anyhow::bail;
use reprise_api::admission::Admission;
use reprise_api::app::App;
use reprise_api::fetch::{load_fetching, LoadError};
use reprise_api::metrics::RouterMetrics;
use reprise_api::model_info::ModelInfo;
use reprise_api::params::{GenerationDefaults, ParseLimits};
use reprise_engine::loader::{self, LoadedModel, ModelDevice};
use reprise_engine::model::{self, AnyModel, ModelError};
use reprise_engine::scheduler::SchedulerConfig;
use reprise_engine::worker::{WorkerConfig, WorkerHandle};
use reprise_router::{Router, RouterConfig};
use reprise_text::meta::MetaError;
use std::net::SocketAddr;
use std::sync::Arc;

/// What the ready line reports.
pub struct Started {
    /// The application.
    pub app: Arc<ServeApp>,
    /// Blocks per worker.
    pub num_blocks: usize,
}

/// Loads `source` (or the default model, fetched first when missing) onto `device`.
pub fn load_model(
    source: Option<&str>,
    device: ModelDevice,
) -> Result<LoadedModel, LoadError<ModelError>> {
    load_fetching(
        source,
        |s| loader::load_on(s, device),
        |e| matches!(e, ModelError::Meta(MetaError::DefaultModelMissing(_))),
    )
}

/// `host:port` as others should reach this server: the listen address, or for a
/// wildcard one the pod's IP (`POD_IP`, as llm-d's manifests set it) or the host name.
pub fn advertised(addr: SocketAddr) -> String {
    if !addr.ip().is_unspecified() {
        return addr.to_string();
    }
    let host = std::env::var("POD_IP")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| addr.ip().to_string());
    if host.contains(':') {
        format!("[{host}]:{}", addr.port())
    } else {
        format!("{host}:{}", addr.port())
    }
}

/// Builds the router, the KV-event publisher and the workers, and the state around them.
pub fn start(cfg: &ServeConfig, loaded: LoadedModel, addr: SocketAddr) -> anyhow::Result<Started> {
    let LoadedModel { model, meta } = loaded;
    let defaults = match &cfg.generation_config {
        GenerationConfig::Model => meta
            .generation_config
            .as_ref()
            .map(GenerationDefaults::from_json)
            .unwrap_or_default(),
        GenerationConfig::Vllm => GenerationDefaults::NONE,
        GenerationConfig::File(d) => *d,
    };
    let described = defaults.describe();
    if !described.is_empty() {
        // vLLM says the same, since a default the user did not set changes outputs.
        tracing::info!("sampling defaults from the generation config: {described} (--generation-config vllm to ignore them)");
    }
    // One copy of the weights per device, shared by that device's workers.
    let mut per_device: Vec<(Device, AnyModel)> = vec![(cfg.devices[0], model.clone())];
    for d in &cfg.devices {
        if per_device.iter().all(|(x, _)| x != d) {
            let m = load_model(cfg.model.as_deref(), d.model_device())?;
            per_device.push((*d, m.model));
        }
    }
    let bytes_per_block = model.kv_block_bytes(cfg.block_size);
    let num_blocks = match (cfg.kv, model.device_memory()) {
        // GPUs: what --gpu-memory-utilization leaves after the weights, split among each
        // GPU's workers; one pool size for all workers (the router assumes one).
        (KvSize::Bytes(_), Some(_)) => {
            let mut blocks = usize::MAX;
            for (d, m) in &per_device {
                let workers = cfg.devices.iter().filter(|x| *x == d).count();
                let mem = m
                    .device_memory()
                    .ok_or_else(|| anyhow::anyhow!("{d:?}: device memory unknown"))?;
                let ws = m.workspace_bytes(cfg.max_num_batched_tokens, cfg.max_num_seqs);
                let bytes =
                    model::kv_pool_bytes_per_worker(&mem, cfg.gpu_memory_utilization, ws, workers)
                        .map_err(|e| anyhow::anyhow!("--gpu-memory-utilization: {e}"))?;
                blocks = blocks.min((bytes / bytes_per_block.max(1) as u64) as usize);
            }
            if blocks == 0 {
                bail!("--gpu-memory-utilization: no room for a single KV block");
            }
            blocks
        }
        _ => cfg.num_blocks(bytes_per_block)?,
    };
    let max_model_len = cfg.resolve_max_model_len(
        meta.max_model_len,
        num_blocks.saturating_mul(cfg.block_size),
    )?;
    let eos_token_ids = meta.eos_token_ids.clone();
    let model_info = ModelInfo::new(
        meta,
        cfg.http.served_model_name.clone(),
        max_model_len,
        cfg.tool_call_parser,
    );
    let tokenizer = model_info.tokenizer.clone();
    let served_model_name = model_info.served_model_name.clone();
    let sched_defaults = SchedulerConfig::default();
    let router_cfg = RouterConfig {
        policy: cfg.policy,
        block_size: cfg.block_size,
        hash_algo: sched_defaults.hash_algo,
        ..Default::default()
    };
    let n = cfg.devices.len();
    let kv_publisher = match &cfg.kv_events {
        None => None,
        Some(k) => Some(Arc::new(KvPublisher::start(&PublisherConfig {
            endpoint: k.endpoint.clone(),
            replay_endpoint: k.replay_endpoint.clone(),
            format: k.format,
            topic: k
                .topic
                .clone()
                .unwrap_or_else(|| format!("kv@{}@{}", advertised(addr), served_model_name)),
            buffer_steps: k.buffer_steps,
            block_size: cfg.block_size,
        })?)),
    };
    let router = Arc::new(
        Router::new(router_cfg, n, num_blocks).map_err(|e| anyhow::anyhow!("router: {e}"))?,
    );
    let mut workers = Vec::with_capacity(n);
    for (i, dev) in cfg.devices.iter().enumerate() {
        let worker_model = per_device
            .iter()
            .find(|(d, _)| d == dev)
            .map(|(_, m)| m.clone())
            .unwrap_or_else(|| model.clone());
        let wcfg = WorkerConfig {
            index: i,
            scheduler: SchedulerConfig {
                num_blocks,
                block_size: cfg.block_size,
                max_num_batched_tokens: cfg.max_num_batched_tokens,
                max_num_seqs: cfg.max_num_seqs,
                hash_algo: sched_defaults.hash_algo,
            },
            max_model_len,
            eos_token_ids: eos_token_ids.clone(),
            tokenizer: Some(tokenizer.clone()),
            step_timeout: cfg.step_timeout,
            fault: cfg.inject_fault.and_then(|(w, f)| (w == i).then_some(f)),
        };
        let r = router.clone();
        let publisher = kv_publisher.clone();
        let sink = Box::new(move |evs: Vec<reprise_protocol::KvEvent>| {
            if let Err(e) = r.apply_events(i, &evs) {
                tracing::warn!(worker = i, "KV events rejected by the router: {e}");
            }
            if let Some(p) = &publisher {
                p.worker_events(i, &evs);
            }
        });
        let h = WorkerHandle::spawn(wcfg, worker_model.clone(), sink)
            .map_err(|e| anyhow::anyhow!("worker {i}: {e}"))?;
        workers.push(h);
    }
    let metrics = Arc::new(Metrics::new(
        n,
        max_model_len,
        ProcessInfo {
            model_name: served_model_name.clone(),
            block_size: cfg.block_size,
            cache_dtype: if cfg.devices.iter().any(|d| matches!(d, Device::Cuda(_))) {
                "bfloat16".into()
            } else {
                "float32".into()
            },
            hash_algo: sched_defaults.hash_algo.name().into(),
        },
    ));
    let limits = ParseLimits {
        vocab_size: model_info.vocab_size,
        max_logprobs: cfg.max_logprobs,
        max_n: cfg.max_num_seqs,
        defaults,
    };
    let app = App {
        backend: Local {
            dispatcher: Dispatcher::new(router, workers, metrics.clone()),
            metrics,
            kv_publisher,
            request_timeout: cfg.request_timeout,
        },
        model: model_info,
        http: cfg.http.clone(),
        limits,
        admission: Admission::new(cfg.http.max_queue),
        router_metrics: RouterMetrics::new(n),
        cpu: reprise_api::cpu::CpuPool::per_core(),
    };
    Ok(Started {
        app: Arc::new(app),
        num_blocks,
    })
}
