//! The command line (clap derive). Values are checked in `config.rs`, in one place.

use clap::{Args, Parser, Subcommand};
use reprise_api::options::HttpArgs;
use reprise_route::RouteArgs;

/// reprise: an LLM inference server with cache-aware routing over in-process workers.
#[derive(Debug, Parser)]
#[command(name = "reprise", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a model over an OpenAI-compatible HTTP API.
    Serve(ServeArgs),
    /// Route requests to remote workers (reprise or vLLM servers) by their KV events.
    Route(RouteArgs),
    /// Benchmark a server, compare routing policies, or simulate a cluster.
    Bench(reprise_bench::BenchArgs),
}

/// Options of `reprise serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Model: a GGUF file, a directory with config.json + safetensors + tokenizer.json,
    /// or a HuggingFace repo id in the local hf-hub cache. Default: SmolLM2-135M-Instruct
    /// (fetched on first use).
    #[arg(long)]
    pub model: Option<String>,

    /// Comma-separated devices, one worker each (e.g. `cpu,cpu`; `cuda:N` needs a CUDA build).
    #[arg(long, default_value = "cpu,cpu")]
    pub devices: String,

    /// Routing policy: cost, precise, approximate, load, round-robin or random.
    #[arg(long, default_value = "cost")]
    pub policy: String,

    /// Tokens per KV-cache block (shared by the engine and the router).
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,

    /// KV-cache blocks per worker (overrides --kv-cache-memory).
    #[arg(long)]
    pub num_kv_blocks: Option<usize>,

    /// KV-cache memory per worker, e.g. `512MiB`, `2GiB`, `1000000` (bytes).
    #[arg(long, default_value = "512MiB")]
    pub kv_cache_memory: String,

    /// On CUDA devices: fraction of each GPU's memory this server may use; the KV pools
    /// get what is left after the weights, split among the workers on that GPU (like
    /// vLLM's option). --num-kv-blocks overrides it.
    #[arg(long, default_value_t = 0.9)]
    pub gpu_memory_utilization: f64,

    /// Token budget of one engine step (decodes plus prefill chunks).
    #[arg(long, default_value_t = 2048)]
    pub max_num_batched_tokens: usize,

    /// Most sequences in a worker's running batch.
    #[arg(long, default_value_t = 256)]
    pub max_num_seqs: usize,

    /// Longest context (prompt + output) in tokens; default: the model's, capped by the KV cache.
    #[arg(long)]
    pub max_model_len: Option<usize>,

    /// Numerics of the CPU's quantized decode products: `exact` (f32 activations,
    /// the goldens' tokens) or `fast` (8-bit activations and integer dot products, as
    /// llama.cpp; faster batch-1 decode, logits off by the activations' rounding).
    #[arg(long, default_value = "exact", value_name = "exact|fast")]
    pub cpu_numerics: String,

    /// The HTTP options `serve` and `route` share.
    #[command(flatten)]
    pub http: HttpArgs,

    /// Most top logprobs a request may ask for (`logprobs`, `top_logprobs`), as vLLM's option.
    #[arg(long, default_value_t = 20)]
    pub max_logprobs: usize,

    /// Sampling defaults for fields a request leaves out: `auto` reads the model's
    /// generation_config.json (temperature, top_p, top_k, min_p, repetition_penalty,
    /// max_new_tokens), `vllm` uses vLLM's own defaults, or a directory holding a
    /// generation_config.json (as vLLM's option).
    #[arg(long, default_value = "auto", value_name = "auto|vllm|DIR")]
    pub generation_config: String,

    /// Format `tool_choice: "auto"` calls are parsed from: `hermes` (Qwen2/Qwen3
    /// `<tool_call>` JSON), `llama3_json`, `none`, or `auto` (by model family).
    #[arg(long, default_value = "auto")]
    pub tool_call_parser: String,

    /// Seconds a generation request may take from arrival to its last token; past it the
    /// request is cancelled and answered 504 (default: no limit).
    #[arg(long, value_name = "SECONDS")]
    pub request_timeout: Option<f64>,

    /// Seconds one engine step may take before its worker is failed like a crashed one
    /// (its requests get a 500, it leaves routing, the others keep serving); 0 disables.
    #[arg(long, default_value_t = 600.0, value_name = "SECONDS")]
    pub step_timeout: f64,

    /// Publish the KV events in vLLM's wire format on this ZMQ PUB endpoint (e.g.
    /// `tcp://*:5557`): bound when it holds `*` or `::` or is `ipc://` / `inproc://`,
    /// connected otherwise (to a central collector), as vLLM does.
    #[arg(long, value_name = "ADDR")]
    pub kv_events_endpoint: Option<String>,

    /// ZMQ ROUTER endpoint answering replay requests for the last
    /// --kv-events-buffer-steps batches (e.g. `tcp://*:5558`; always bound).
    #[arg(long, value_name = "ADDR")]
    pub kv_events_replay_endpoint: Option<String>,

    /// Event encoding: `map` (tagged maps, vLLM 0.26+) or `array` (positional, older vLLM).
    #[arg(long, default_value = "map")]
    pub kv_events_format: String,

    /// Topic frame of every KV-event message (default `kv@<advertised host:port>@<served
    /// model name>`, llm-d's convention).
    #[arg(long)]
    pub kv_events_topic: Option<String>,

    /// KV-event batches kept for replay.
    #[arg(long, default_value_t = 10_000)]
    pub kv_events_buffer_steps: usize,

    /// Fault injection for tests: `WORKER:STEP` makes that worker panic at that engine step.
    #[arg(long, hide = true)]
    pub inject_worker_panic: Option<String>,

    /// Fault injection for tests: `WORKER:STEP` makes that worker's step hang forever.
    #[arg(long, hide = true)]
    pub inject_worker_hang: Option<String>,
}
