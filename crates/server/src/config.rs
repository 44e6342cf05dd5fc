//! Validation of `reprise serve`'s options, in one place: everything the
//! server needs, checked and converted, or one clear error.

use crate::cli::ServeArgs;
pub use reprise_api::options::{check_zmq_endpoint, err, parse_size, ConfigError};
use reprise_api::options::{seconds, HttpConfig};
use reprise_api::params::GenerationDefaults;
use reprise_router::PolicyKind;
use reprise_text::tools::ToolParser;
use std::time::Duration;

/// Where a worker runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The CPU.
    Cpu,
    /// GPU N (CUDA builds only).
    Cuda(usize),
}

impl Device {
    /// Where the engine puts the model for this device.
    pub fn model_device(self) -> reprise_engine::loader::ModelDevice {
        match self {
            Device::Cpu => reprise_engine::loader::ModelDevice::Cpu,
            Device::Cuda(n) => reprise_engine::loader::ModelDevice::Cuda(n),
        }
    }
}

/// `reprise serve`'s validated settings (model-independent part).
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Model source (`None`: the default model).
    pub model: Option<String>,
    /// One worker per entry.
    pub devices: Vec<Device>,
    /// Routing policy.
    pub policy: PolicyKind,
    /// Tokens per KV block.
    pub block_size: usize,
    /// KV size per worker.
    pub kv: KvSize,
    /// Fraction of each GPU's memory to use (CUDA devices).
    pub gpu_memory_utilization: f64,
    /// Step token budget.
    pub max_num_batched_tokens: usize,
    /// Running-batch size limit.
    pub max_num_seqs: usize,
    /// Requested context length.
    pub max_model_len: Option<usize>,
    /// The HTTP options.
    pub http: HttpConfig,
    /// Numerics of the CPU's quantized products.
    pub cpu_numerics: reprise_engine::cpu::quant::Numerics,
    /// Test-only fault injection: (worker, fault).
    pub inject_fault: Option<(usize, reprise_engine::worker::Fault)>,
    /// KV-event publishing, when asked for.
    pub kv_events: Option<KvEventsConfig>,
    /// Most top logprobs per token.
    pub max_logprobs: usize,
    /// Where sampling defaults come from.
    pub generation_config: GenerationConfig,
    /// `--tool-call-parser` (`None`: by model family).
    pub tool_call_parser: Option<ToolParser>,
    /// Bound on a generation request's life.
    pub request_timeout: Option<Duration>,
    /// Bound on one engine step.
    pub step_timeout: Option<Duration>,
}

/// Where the sampling defaults come from (`--generation-config`).
#[derive(Clone, Debug, PartialEq)]
pub enum GenerationConfig {
    /// The model's generation_config.json, when it has one.
    Model,
    /// None: vLLM's own defaults.
    Vllm,
    /// A given file's.
    File(GenerationDefaults),
}

/// `WORKER:STEP` of a fault-injection option.
fn worker_step(option: &'static str, s: &str, workers: usize) -> Result<(usize, u64), ConfigError> {
    let parsed = s.split_once(':').and_then(|(w, st)| {
        Some((
            w.trim().parse::<usize>().ok()?,
            st.trim().parse::<u64>().ok()?,
        ))
    });
    match parsed {
        Some((w, st)) if w < workers && st > 0 => Ok((w, st)),
        _ => Err(err(option, "expected WORKER:STEP")),
    }
}

/// `--kv-events-*`: where and how to publish the KV events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvEventsConfig {
    /// PUB endpoint.
    pub endpoint: String,
    /// ROUTER endpoint for replays.
    pub replay_endpoint: Option<String>,
    /// Event encoding.
    pub format: reprise_protocol::wire::EventFormat,
    /// Topic (`None`: llm-d's default, built once the address and model are known).
    pub topic: Option<String>,
    /// Batches kept for replay.
    pub buffer_steps: usize,
}

/// KV cache size of one worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvSize {
    /// A block count.
    Blocks(usize),
    /// A byte budget, turned into blocks once the model's geometry is known.
    Bytes(u64),
}

fn parse_devices(s: &str) -> Result<Vec<Device>, ConfigError> {
    let mut out = Vec::new();
    for d in s.split(',').map(str::trim) {
        match d.to_ascii_lowercase().as_str() {
            "cpu" => out.push(Device::Cpu),
            "" => return Err(err("devices", format!("empty entry in '{s}' (e.g. cpu,cpu)"))),
            x if x.starts_with("cuda") && !reprise_engine::CUDA_ENABLED => {
                return Err(err(
                    "devices",
                    format!("'{d}': this reprise binary was built without CUDA support (rebuild with --features cuda); use cpu"),
                ))
            }
            x if x.starts_with("cuda:") => match x["cuda:".len()..].parse::<usize>() {
                Ok(n) => out.push(Device::Cuda(n)),
                Err(_) => return Err(err("devices", format!("'{d}': expected cuda:N with N a GPU index"))),
            },
            _ => return Err(err("devices", format!("unknown device '{d}' (expected cpu or cuda:N)"))),
        }
    }
    if out.len() > 128 {
        return Err(err(
            "devices",
            format!("{} workers; at most 128", out.len()),
        ));
    }
    Ok(out)
}

impl ServeConfig {
    /// Checks every option; the first problem is the error.
    pub fn from_args(a: &ServeArgs) -> Result<Self, ConfigError> {
        let devices = parse_devices(&a.devices)?;
        let policy: PolicyKind = a
            .policy
            .parse()
            .map_err(|e: reprise_router::ConfigError| err("policy", e.to_string()))?;
        if a.block_size == 0 || a.block_size > 1024 {
            return Err(err(
                "block-size",
                format!("{} is out of range 1..=1024", a.block_size),
            ));
        }
        let kv = match a.num_kv_blocks {
            Some(0) => return Err(err("num-kv-blocks", "must be at least 1")),
            Some(n) => KvSize::Blocks(n),
            None => KvSize::Bytes(
                parse_size(&a.kv_cache_memory).map_err(|m| err("kv-cache-memory", m))?,
            ),
        };
        if !(a.gpu_memory_utilization > 0.0 && a.gpu_memory_utilization <= 1.0) {
            return Err(err("gpu-memory-utilization", "must be in (0, 1]"));
        }
        if devices.contains(&Device::Cpu) && devices.iter().any(|d| *d != Device::Cpu) {
            return Err(err(
                "devices",
                "mixing cpu and cuda workers is not supported",
            ));
        }
        if a.max_num_batched_tokens == 0 {
            return Err(err("max-num-batched-tokens", "must be at least 1"));
        }
        if a.max_num_seqs == 0 {
            return Err(err("max-num-seqs", "must be at least 1"));
        }
        if a.max_model_len == Some(0) {
            return Err(err("max-model-len", "must be at least 2"));
        }
        let http = HttpConfig::from_args(&a.http)?;
        let cpu_numerics = reprise_engine::cpu::quant::Numerics::parse(&a.cpu_numerics)
            .ok_or_else(|| err("cpu-numerics", "must be exact or fast"))?;
        use reprise_engine::worker::Fault;
        let inject_fault = match (&a.inject_worker_panic, &a.inject_worker_hang) {
            (Some(_), Some(_)) => {
                return Err(err("inject-worker-hang", "one injected fault at a time"))
            }
            (Some(p), None) => {
                let (w, st) = worker_step("inject-worker-panic", p, devices.len())?;
                Some((w, Fault::Panic(st)))
            }
            (None, Some(h)) => {
                let (w, st) = worker_step("inject-worker-hang", h, devices.len())?;
                Some((w, Fault::Hang(st)))
            }
            (None, None) => None,
        };
        let generation_config = match a.generation_config.as_str() {
            "auto" => GenerationConfig::Model,
            "vllm" => GenerationConfig::Vllm,
            dir => {
                let path = std::path::Path::new(dir).join("generation_config.json");
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    err(
                        "generation-config",
                        format!("must be auto, vllm or a directory with generation_config.json ({}: {e})", path.display()),
                    )
                })?;
                let v: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| err("generation-config", format!("{}: {e}", path.display())))?;
                GenerationConfig::File(GenerationDefaults::from_json(&v))
            }
        };
        let tool_call_parser = match a.tool_call_parser.as_str() {
            "auto" => None,
            name => Some(ToolParser::from_name(name).ok_or_else(|| {
                err(
                    "tool-call-parser",
                    "must be auto, hermes, llama3_json or none",
                )
            })?),
        };
        if a.max_logprobs > 1_000_000 {
            return Err(err("max-logprobs", "must be at most 1000000"));
        }
        let request_timeout = a
            .request_timeout
            .map(|t| seconds("request-timeout", t, 0.01, 30.0 * 86400.0))
            .transpose()?;
        let step_timeout = if a.step_timeout == 0.0 {
            None
        } else {
            Some(seconds("step-timeout", a.step_timeout, 0.01, 86400.0)?)
        };
        let kv_events = match &a.kv_events_endpoint {
            None => {
                if a.kv_events_replay_endpoint.is_some() || a.kv_events_topic.is_some() {
                    return Err(err(
                        "kv-events-endpoint",
                        "is required by --kv-events-replay-endpoint and --kv-events-topic",
                    ));
                }
                None
            }
            Some(ep) => {
                check_zmq_endpoint("kv-events-endpoint", ep)?;
                if let Some(r) = &a.kv_events_replay_endpoint {
                    check_zmq_endpoint("kv-events-replay-endpoint", r)?;
                    // Two wildcard ports (`tcp://*:*`) get different free ports.
                    if r == ep && !r.ends_with(":*") {
                        return Err(err(
                            "kv-events-replay-endpoint",
                            "must differ from --kv-events-endpoint",
                        ));
                    }
                }
                if a.kv_events_buffer_steps == 0 {
                    return Err(err("kv-events-buffer-steps", "must be at least 1"));
                }
                Some(KvEventsConfig {
                    endpoint: ep.clone(),
                    replay_endpoint: a.kv_events_replay_endpoint.clone(),
                    format: a
                        .kv_events_format
                        .parse()
                        .map_err(|m: String| err("kv-events-format", m))?,
                    topic: a.kv_events_topic.clone(),
                    buffer_steps: a.kv_events_buffer_steps,
                })
            }
        };
        Ok(Self {
            model: a.model.clone(),
            devices,
            policy,
            block_size: a.block_size,
            kv,
            gpu_memory_utilization: a.gpu_memory_utilization,
            max_num_batched_tokens: a.max_num_batched_tokens,
            max_num_seqs: a.max_num_seqs,
            max_model_len: a.max_model_len,
            http,
            cpu_numerics,
            inject_fault,
            kv_events,
            max_logprobs: a.max_logprobs,
            generation_config,
            tool_call_parser,
            request_timeout,
            step_timeout,
        })
    }

    /// KV blocks per worker for a model whose one block takes `bytes_per_block`.
    pub fn num_blocks(&self, bytes_per_block: usize) -> Result<usize, ConfigError> {
        match self.kv {
            KvSize::Blocks(n) => Ok(n),
            KvSize::Bytes(b) => {
                let n = (b / bytes_per_block.max(1) as u64) as usize;
                if n == 0 {
                    Err(err(
                        "kv-cache-memory",
                        format!("{b} bytes hold no block of {bytes_per_block} bytes"),
                    ))
                } else {
                    Ok(n)
                }
            }
        }
    }

    /// The context length to serve: the requested one (checked against the model and
    /// the KV pool), or the model's capped by what one worker's pool can hold.
    pub fn resolve_max_model_len(
        &self,
        model_max: usize,
        pool_tokens: usize,
    ) -> Result<usize, ConfigError> {
        match self.max_model_len {
            Some(m) if m > model_max => Err(err(
                "max-model-len",
                format!("{m} is larger than the model's context length {model_max}"),
            )),
            Some(m) if m > pool_tokens => Err(err(
                "max-model-len",
                format!("{m} tokens do not fit one worker's KV cache of {pool_tokens} tokens; raise --kv-cache-memory or --num-kv-blocks"),
            )),
            Some(m) if m < 2 => Err(err("max-model-len", "must be at least 2")),
            Some(m) => Ok(m),
            None if pool_tokens < 2 => Err(err("num-kv-blocks", "the KV cache holds fewer than 2 tokens")),
            None => Ok(model_max.min(pool_tokens)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn args(extra: &[&str]) -> ServeArgs {
        let mut v = vec!["reprise", "serve"];
        v.extend_from_slice(extra);
        match Cli::try_parse_from(v).expect("parse").command {
            Command::Serve(a) => a,
            other => unreachable!("parsed `serve`, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        let c = ServeConfig::from_args(&args(&[])).unwrap();
        assert_eq!(c.devices, vec![Device::Cpu, Device::Cpu]);
        assert_eq!(c.policy, PolicyKind::Cost);
        assert_eq!(c.http.addr.to_string(), "127.0.0.1:8000");
        assert_eq!(c.kv, KvSize::Bytes(512 * 1024 * 1024));
        assert_eq!(c.http.max_body_bytes, 8 * 1024 * 1024);
        assert_eq!(c.cpu_numerics, reprise_engine::cpu::quant::Numerics::Exact);
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("2 GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn bad_options_name_the_option() {
        let cases: [(&[&str], &str); 9] = [
            (&["--cpu-numerics", "int4"], "--cpu-numerics"),
            (&["--devices", "cuda:0"], "--devices"),
            (&["--devices", "cpu,,cpu"], "--devices"),
            (&["--devices", "tpu"], "--devices"),
            (&["--policy", "fastest"], "--policy"),
            (&["--block-size", "0"], "--block-size"),
            (&["--kv-cache-memory", "big"], "--kv-cache-memory"),
            (&["--max-queue", "0"], "--max-queue"),
            (&["--inject-worker-panic", "5:1"], "--inject-worker-panic"),
        ];
        for (a, opt) in cases {
            let e = ServeConfig::from_args(&args(a)).unwrap_err().to_string();
            assert!(e.starts_with(opt), "{a:?}: {e}");
        }
        let e = ServeConfig::from_args(&args(&["--devices", "cuda:0"])).unwrap_err();
        assert!(e.message.contains("without CUDA"));
    }

    #[test]
    fn kv_event_options() {
        let c = ServeConfig::from_args(&args(&[
            "--kv-events-endpoint",
            "tcp://*:5557",
            "--kv-events-replay-endpoint",
            "tcp://*:5558",
            "--kv-events-format",
            "array",
        ]))
        .unwrap();
        let k = c.kv_events.unwrap();
        assert_eq!(k.format, reprise_protocol::wire::EventFormat::Array);
        assert_eq!((k.buffer_steps, k.topic), (10_000, None));
        assert!(ServeConfig::from_args(&args(&[]))
            .unwrap()
            .kv_events
            .is_none());
        let cases: [(&[&str], &str); 9] = [
            (&["--kv-events-endpoint", "5557"], "--kv-events-endpoint"),
            (&["--kv-events-endpoint", "tcp://*"], "--kv-events-endpoint"),
            (
                &["--kv-events-endpoint", "tcp://:5557"],
                "--kv-events-endpoint",
            ),
            (
                &["--kv-events-endpoint", "tcp://*:99999"],
                "--kv-events-endpoint",
            ),
            (
                &["--kv-events-endpoint", "udp://*:5557"],
                "--kv-events-endpoint",
            ),
            (
                &["--kv-events-replay-endpoint", "tcp://*:5558"],
                "--kv-events-endpoint",
            ),
            (
                &[
                    "--kv-events-endpoint",
                    "tcp://*:1",
                    "--kv-events-format",
                    "json",
                ],
                "--kv-events-format",
            ),
            (
                &[
                    "--kv-events-endpoint",
                    "tcp://*:1",
                    "--kv-events-replay-endpoint",
                    "tcp://*:1",
                ],
                "--kv-events-replay-endpoint",
            ),
            (&["--kv-events-endpoint", "ipc://"], "--kv-events-endpoint"),
        ];
        for (a, opt) in cases {
            let e = ServeConfig::from_args(&args(a)).unwrap_err().to_string();
            assert!(e.starts_with(opt), "{a:?}: {e}");
        }
        for ok in [
            "tcp://127.0.0.1:*",
            "tcp://[::1]:7",
            "ipc:///tmp/kv",
            "inproc://kv",
        ] {
            assert!(check_zmq_endpoint("x", ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn context_length_is_capped_by_the_pool() {
        let c = ServeConfig::from_args(&args(&[])).unwrap();
        assert_eq!(c.resolve_max_model_len(8192, 10_000), Ok(8192));
        assert_eq!(c.resolve_max_model_len(8192, 4096), Ok(4096));
        let c = ServeConfig::from_args(&args(&["--max-model-len", "9000"])).unwrap();
        assert!(c.resolve_max_model_len(8192, 100_000).is_err());
        let c = ServeConfig::from_args(&args(&["--max-model-len", "5000"])).unwrap();
        assert!(c.resolve_max_model_len(8192, 4096).is_err());
        assert_eq!(c.resolve_max_model_len(8192, 6000), Ok(5000));
    }
}
