//! `reprise bench`: the benchmark harness (live, against any OpenAI-compatible
//! server), the policy comparison, the cluster simulator and the cost-model fit.
//! Outputs follow `vllm bench serve`'s field names; see `bench/README.md`. The
//! `reprise` binary's `bench` subcommand parses [`BenchArgs`] and calls [`run`]; the
//! live comparison starts `reprise serve` children from the running executable.

pub mod fit;
pub mod live;
pub mod options;
pub mod published;
pub mod report;
pub mod sim;
pub mod stats;
pub mod workload;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use options::{parse_policies, parse_rates};
use reprise_engine::executor::CostModel;
use reprise_router::config::ApproximateConfig;
use reprise_router::scorer::{OverloadGuard, ScoreWeights};
use reprise_router::{PolicyKind, RouterConfig};
use std::path::PathBuf;
use workload::{WorkloadArgs, WorkloadKind};

/// `reprise bench …`
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What to run.
    #[command(subcommand)]
    pub command: BenchCommand,
}

/// Benchmark subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Simulate a cluster (real router and block pool, cost-model step times).
    Sim(SimArgs),
    /// Benchmark a running OpenAI-compatible server.
    Run(live::RunArgs),
    /// Start `reprise serve` once per policy and benchmark each the same way.
    Compare(live::CompareArgs),
    /// Fit a cost model from a live run's requests.jsonl.
    Fit(fit::FitArgs),
    /// Redraw the pictures of a results directory (results.json, cache_timeline.csv).
    Plot(PlotArgs),
}

/// Options of `reprise bench plot`.
#[derive(Debug, Clone, Args)]
pub struct PlotArgs {
    /// Directory written by `bench sim`, `bench run` or `bench compare`.
    #[arg(long)]
    pub dir: PathBuf,
}

/// Options of `reprise bench sim`. Values left unset come from `--preset` (or the
/// built-in defaults without one).
#[derive(Debug, Clone, Args)]
pub struct SimArgs {
    /// Named setup: `llm-d-73` (llm-d's 8 × Qwen3-32B benchmark), `llm-d-73-observed`
    /// (that run as it was measured: each scheduler's observed output lengths and
    /// configuration, inference-perf's continuous stages) or `small`.
    #[arg(long)]
    pub preset: Option<String>,
    /// Output directory for results.json, results.csv and the pictures.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    /// Comma-separated policies (cost, precise, approximate, load, round-robin, random).
    #[arg(long)]
    pub policies: Option<String>,
    /// Comma-separated request rates (requests/s), run in order on one cluster.
    #[arg(long)]
    pub rates: Option<String>,
    /// Virtual seconds of arrivals per rate (requests = rate × this).
    #[arg(long, conflicts_with_all = ["requests_per_rate", "durations"])]
    pub duration_per_rate: Option<f64>,
    /// Comma-separated seconds of arrivals, one per rate (llm-d-73: llm-d's own
    /// stage durations).
    #[arg(long, conflicts_with = "requests_per_rate")]
    pub durations: Option<String>,
    /// Requests of an unreported warm-up rung before the ladder (llm-d-73: 750, one
    /// pass over every prompt; 0 turns it off).
    #[arg(long)]
    pub warmup_requests: Option<usize>,
    /// Rate of the warm-up rung, requests/s (llm-d-73: 15).
    #[arg(long)]
    pub warmup_rate: Option<f64>,
    /// Requests per rate (instead of --duration-per-rate).
    #[arg(long)]
    pub requests_per_rate: Option<usize>,
    /// Number of workers.
    #[arg(long)]
    pub workers: Option<usize>,
    /// KV cache per worker, in tokens (rounded down to whole blocks).
    #[arg(long)]
    pub kv_tokens: Option<usize>,
    /// Tokens per block.
    #[arg(long)]
    pub block_size: Option<usize>,
    /// Token budget of one engine step.
    #[arg(long)]
    pub max_num_batched_tokens: Option<usize>,
    /// Most running sequences per worker.
    #[arg(long)]
    pub max_num_seqs: Option<usize>,
    /// Cost model: a JSON file, or a shipped name (qwen3-32b-tp2-h100,
    /// qwen3-32b-tp2-h100-roofline, reprise-cpu-smollm2-135m).
    #[arg(long)]
    pub cost_model: Option<String>,
    /// Delay of KV events and load reports from worker to router, milliseconds.
    #[arg(long, default_value_t = 0.0)]
    pub event_delay_ms: f64,
    /// Router settings as JSON (e.g. '{"weights":{"prefix":2.0}}'); policy and block
    /// size are set by the other options.
    #[arg(long)]
    pub router_config: Option<String>,
    /// Seed of arrivals (the workload has its own --seed).
    #[arg(long, default_value_t = 0)]
    pub arrival_seed: u64,
    /// Policies simulated in parallel (threads).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Goodput SLOs in ms, vLLM syntax: `ttft:500 tpot:50 e2el:20000`.
    #[arg(long, num_args = 1..)]
    pub goodput: Vec<String>,
    /// The workload (a preset sets these unless given).
    #[command(flatten)]
    pub workload: WorkloadArgs,
}

/// A named simulation setup.
struct Preset {
    policies: &'static str,
    rates: &'static str,
    duration_per_rate: f64,
    /// Per-rate durations, overriding `duration_per_rate`.
    durations: Option<&'static str>,
    /// (requests, rate) of the warm-up rung.
    warmup: (usize, f64),
    workers: usize,
    kv_tokens: usize,
    block_size: usize,
    max_num_batched_tokens: usize,
    max_num_seqs: usize,
    cost_model: &'static str,
    workload: WorkloadKind,
    ladder: sim::Ladder,
    /// Each policy's router settings, when the preset configures them.
    router: Option<fn(PolicyKind) -> RouterConfig>,
    /// Output tokens per request of a policy at a rate, when the preset fixes them.
    output_len: Option<fn(PolicyKind, f64) -> Result<usize>>,
    /// Whether llm-d's published figures are printed beside the simulated ones.
    published: bool,
}

/// llm-d's "KV-cache wins you can see": 8 × Qwen3-32B (TP=2, H100) with 307,328 KV
/// tokens each, 150 × 5 prompts of 6,000 + 1,200 tokens (73% of the cluster's KV),
/// 1,000 output tokens, the published QPS ladder with its inference-perf stage
/// durations and its warm-up stage (15 QPS for 50 s: every prompt once). vLLM's
/// H100 defaults for the OpenAI server (8,192-token step budget, 1,024 sequences).
const LLM_D_73: Preset = Preset {
    policies: "cost,precise,approximate,random,load",
    rates: "3,10,15,20,22,25,30,35,40,43,46,49,52,55,57,60",
    duration_per_rate: 20.0,
    durations: Some("20,20,20,38,34,30,25,21,38,36,33,30,29,27,26,25"),
    warmup: (750, 15.0),
    workers: 8,
    kv_tokens: 307_328,
    block_size: 64,
    max_num_batched_tokens: 8192,
    max_num_seqs: 1024,
    cost_model: "qwen3-32b-tp2-h100",
    workload: WorkloadKind::SharedPrefix,
    ladder: sim::Ladder::Drained,
    router: None,
    output_len: None,
    published: false,
};

/// llm-d's run as it was measured (figures in [`published`]): the same cluster and
/// ladder as `llm-d-73`, but inference-perf's stages back to back, each scheduler's
/// own observed output length per rung, and each scheduler configured as llm-d
/// configured it ([`llm_d_router`]). The roofline cost model: llm-d's own figures
/// put the cluster's prefill there, not at the calibrated model's 2,300 tokens/s a
/// worker (random-scheduling, ~20% cached, kept TTFT at 1.4-2.3 s up to 15 QPS and
/// saturated at 20: 15-20 QPS × 80% × 7,200 tokens over 8 workers is 11-14K prompt
/// tokens/s a worker, the roofline model's 15K; the calibrated one saturates below
/// 3 QPS).
const LLM_D_73_OBSERVED: Preset = Preset {
    policies: "cost,precise,approximate,load,random",
    cost_model: "qwen3-32b-tp2-h100-roofline",
    ladder: sim::Ladder::Continuous,
    router: Some(llm_d_router),
    output_len: Some(observed_output_len),
    published: true,
    ..LLM_D_73
};

/// The `EndpointPickerConfig`s of llm-d's run (benchmarking/73-capacity/README.md):
/// - precise-scheduling: prefix 3, kv-cache 2, queue 2, from KV events only (no
///   speculative credits);
/// - estimated-scheduling: prefix 1, kv-cache 1, queue 1, its prefix guess over the
///   prompt's text in 64-byte blocks, at most 256 of them, 31,250 per server. At
///   GIE's own guess of 4 bytes a token those are 16-token blocks: the guess covers a
///   prompt's first 4,096 tokens (64 of our 64-token blocks) and remembers 500,000
///   tokens per server (7,812 of our blocks);
/// - load-scheduling: queue 1, kv-cache 1;
/// - random-scheduling.
///
/// None of them has an overload guard. Policies llm-d did not run keep reprise's
/// defaults.
fn llm_d_router(policy: PolicyKind) -> RouterConfig {
    let no_guard = OverloadGuard {
        enabled: false,
        ..OverloadGuard::default()
    };
    let weights = |prefix, kv_usage, queue| ScoreWeights {
        prefix,
        queue,
        kv_usage,
        running: 0.0,
    };
    let base = RouterConfig::default();
    match policy {
        PolicyKind::Precise => RouterConfig {
            weights: weights(3.0, 2.0, 2.0),
            overload: no_guard,
            speculative_ttl_ms: 0,
            ..base
        },
        PolicyKind::Approximate => RouterConfig {
            weights: weights(1.0, 1.0, 1.0),
            overload: no_guard,
            approximate: ApproximateConfig {
                max_blocks: 256 * 64 / 4 / 64,
                capacity_blocks: 31_250 * 16 / 64,
            },
            ..base
        },
        PolicyKind::Load => RouterConfig {
            weights: weights(0.0, 1.0, 1.0),
            overload: no_guard,
            ..base
        },
        _ => base,
    }
}

/// Output tokens per request of `policy` at `rate` in llm-d's run, as observed; a
/// policy llm-d did not run gets precise-scheduling's (the run whose cluster kept up
/// with every rate). The warm-up's 15 QPS takes the 15 QPS rung's.
fn observed_output_len(policy: PolicyKind, rate: f64) -> Result<usize> {
    let i = published::LADDER
        .iter()
        .position(|r| r.rate == rate)
        .with_context(|| {
            format!("llm-d-73-observed has no observed output length at {rate} requests/s")
        })?;
    let p = published::index_of(policy).map_or(PolicyKind::Precise, |_| policy);
    published::observed_output_len(p, i)
        .with_context(|| format!("no observed output length for {p} at {rate} requests/s"))
}

/// A seconds-long sanity run: 4 workers, the same cost model, a small workload.
const SMALL: Preset = Preset {
    policies: "cost,precise,approximate,load,round-robin,random",
    rates: "2,4,8",
    duration_per_rate: 20.0,
    durations: None,
    warmup: (0, 1.0),
    workers: 4,
    kv_tokens: 65_536,
    block_size: 16,
    max_num_batched_tokens: 8192,
    max_num_seqs: 256,
    cost_model: "qwen3-32b-tp2-h100",
    workload: WorkloadKind::GeneratedSharedPrefix,
    ladder: sim::Ladder::Drained,
    router: None,
    output_len: None,
    published: false,
};

/// Cost models shipped in the binary (the JSON files under bench/cost-models/).
const SHIPPED_COST_MODELS: [(&str, &str); 3] = [
    (
        "qwen3-32b-tp2-h100",
        include_str!("../../../bench/cost-models/qwen3-32b-tp2-h100.json"),
    ),
    (
        "qwen3-32b-tp2-h100-roofline",
        include_str!("../../../bench/cost-models/qwen3-32b-tp2-h100-roofline.json"),
    ),
    (
        "reprise-cpu-smollm2-135m",
        include_str!("../../../bench/cost-models/reprise-cpu-smollm2-135m.json"),
    ),
];

/// Load a cost model by shipped name or from a JSON file.
pub fn load_cost_model(spec: &str) -> Result<CostModel> {
    let text = match SHIPPED_COST_MODELS.iter().find(|(n, _)| *n == spec) {
        Some((_, t)) => (*t).to_string(),
        None => std::fs::read_to_string(spec).with_context(|| {
            let names: Vec<&str> = SHIPPED_COST_MODELS.iter().map(|(n, _)| *n).collect();
            format!(
                "cost model '{spec}' is neither a file nor one of {}",
                names.join(", ")
            )
        })?,
    };
    let c: CostModel =
        serde_json::from_str(&text).with_context(|| format!("cost model '{spec}' is not valid"))?;
    for (k, v) in [
        ("step_overhead_s", c.step_overhead_s),
        ("prefill_token_s", c.prefill_token_s),
        ("prefill_attention_pair_s", c.prefill_attention_pair_s),
        ("decode_seq_s", c.decode_seq_s),
        ("decode_context_token_s", c.decode_context_token_s),
    ] {
        if !v.is_finite() || v < 0.0 {
            bail!("cost model '{spec}': {k} must be finite and >= 0, got {v}");
        }
    }
    Ok(c)
}

/// Run a `reprise bench` command.
pub async fn run(args: BenchArgs) -> Result<()> {
    match args.command {
        BenchCommand::Sim(a) => tokio::task::spawn_blocking(move || run_sim(&a))
            .await
            .context("simulation thread")?,
        BenchCommand::Run(a) => live::run(a).await,
        BenchCommand::Compare(a) => live::compare(a).await,
        BenchCommand::Fit(a) => fit::run(&a),
        BenchCommand::Plot(a) => report::replot(&a.dir),
    }
}

/// Everything `bench sim` resolved from its options and preset.
#[derive(Debug, serde::Serialize)]
struct SimSetup {
    preset: Option<String>,
    workload: String,
    distinct_prompts: usize,
    sharing_groups: usize,
    resident_tokens: usize,
    cluster_kv_tokens: usize,
    policies: Vec<String>,
    rates: Vec<f64>,
    requests_per_rate: Vec<usize>,
    warmup_requests: usize,
    warmup_rate: f64,
    workers: usize,
    kv_tokens_per_worker: usize,
    block_size: usize,
    max_num_batched_tokens: usize,
    max_num_seqs: usize,
    event_delay_ms: f64,
    cost_model: CostModel,
    ladder: sim::Ladder,
    /// Each policy's router settings.
    routers: Vec<(String, RouterConfig)>,
    /// Each policy's output tokens per request at each rate, when the preset fixes them.
    output_lens: Option<Vec<(String, Vec<usize>)>>,
    arrival_seed: u64,
    workload_seed: u64,
}

fn run_sim(a: &SimArgs) -> Result<()> {
    let p = match a.preset.as_deref() {
        None | Some("small") => &SMALL,
        Some("llm-d-73") => &LLM_D_73,
        Some("llm-d-73-observed") => &LLM_D_73_OBSERVED,
        Some(other) => {
            bail!("unknown preset '{other}' (expected llm-d-73, llm-d-73-observed or small)")
        }
    };
    let policies = parse_policies(a.policies.as_deref().unwrap_or(p.policies))?;
    let rates = parse_rates(a.rates.as_deref().unwrap_or(p.rates))?;
    let block_size = a.block_size.unwrap_or(p.block_size);
    let kv_tokens = a.kv_tokens.unwrap_or(p.kv_tokens);
    if block_size == 0 || kv_tokens < block_size {
        bail!("--kv-tokens must hold at least one block of --block-size tokens");
    }
    let mut wl_args = a.workload.clone();
    // A preset picks the workload unless --workload was changed from its default.
    if a.preset.is_some() && wl_args.workload == WorkloadKind::SharedPrefix {
        wl_args.workload = p.workload;
    }
    let wl = workload::Workload::build(&wl_args)?;
    // Explicit options win over the preset: --requests-per-rate, then
    // --duration-per-rate, then --durations, then the preset's durations.
    let durations: Vec<f64> = match (a.duration_per_rate, a.durations.as_deref().or(p.durations)) {
        (Some(d), _) => vec![d; rates.len()],
        (None, Some(list)) => {
            let d = parse_rates(list).context("--durations")?;
            if d.len() != rates.len() {
                bail!(
                    "--durations has {} values for {} rates",
                    d.len(),
                    rates.len()
                );
            }
            d
        }
        (None, None) => vec![p.duration_per_rate; rates.len()],
    };
    let requests: Vec<usize> = rates
        .iter()
        .zip(&durations)
        .map(|(r, d)| match a.requests_per_rate {
            Some(n) => n,
            None => (r * d).round().max(1.0) as usize,
        })
        .collect();
    let warmup = sim::Stage {
        rate: a.warmup_rate.unwrap_or(p.warmup.1),
        requests: a.warmup_requests.unwrap_or(p.warmup.0),
        warmup: true,
        max_tokens: None,
    };
    if !(warmup.rate.is_finite() && warmup.rate > 0.0) {
        bail!("--warmup-rate must be > 0");
    }
    // --router-config applies to every policy; without it a preset may configure each.
    let given: Option<RouterConfig> = match &a.router_config {
        Some(j) => {
            Some(serde_json::from_str(j).context("--router-config is not a valid router config")?)
        }
        None => None,
    };
    let router_for = |pol: PolicyKind| RouterConfig {
        block_size,
        policy: pol,
        ..match (&given, p.router) {
            (Some(r), _) => r.clone(),
            (None, Some(f)) => f(pol),
            (None, None) => RouterConfig::default(),
        }
    };
    let routers: Vec<(String, RouterConfig)> = policies
        .iter()
        .map(|&pol| (pol.to_string(), router_for(pol)))
        .collect();
    let cost_name = a.cost_model.as_deref().unwrap_or(p.cost_model);
    let cluster = sim::ClusterConfig {
        workers: a.workers.unwrap_or(p.workers),
        num_blocks: kv_tokens / block_size,
        block_size,
        max_num_batched_tokens: a.max_num_batched_tokens.unwrap_or(p.max_num_batched_tokens),
        max_num_seqs: a.max_num_seqs.unwrap_or(p.max_num_seqs),
        cost: load_cost_model(cost_name)?,
        event_delay_s: a.event_delay_ms / 1000.0,
        router: RouterConfig::default(),
        ladder: p.ladder,
    };
    if !(a.event_delay_ms.is_finite() && a.event_delay_ms >= 0.0) {
        bail!("--event-delay-ms must be >= 0");
    }
    let slo = stats::Slo::parse(&a.goodput)?;
    // A policy's stages: the warm-up, then the ladder, each at the preset's output
    // length for that policy when it fixes one.
    let stages_for = |pol: PolicyKind| -> Result<Vec<sim::Stage>> {
        let len = |rate: f64| p.output_len.map(|f| f(pol, rate)).transpose();
        let mut v = Vec::with_capacity(rates.len() + 1);
        if warmup.requests > 0 {
            v.push(sim::Stage {
                max_tokens: len(warmup.rate)?,
                ..warmup
            });
        }
        for (&rate, &requests) in rates.iter().zip(&requests) {
            v.push(sim::Stage {
                rate,
                requests,
                warmup: false,
                max_tokens: len(rate)?,
            });
        }
        Ok(v)
    };
    let stages: Vec<(PolicyKind, Vec<sim::Stage>)> = policies
        .iter()
        .map(|&pol| Ok((pol, stages_for(pol)?)))
        .collect::<Result<_>>()?;
    let output_lens = p.output_len.map(|_| {
        stages
            .iter()
            .map(|(pol, st)| {
                let lens = st.iter().filter(|s| !s.warmup).filter_map(|s| s.max_tokens);
                (pol.to_string(), lens.collect())
            })
            .collect()
    });
    let setup = SimSetup {
        preset: a.preset.clone(),
        workload: wl.description.clone(),
        distinct_prompts: wl.prompts.len(),
        sharing_groups: wl.groups(),
        resident_tokens: wl.resident_tokens(block_size),
        cluster_kv_tokens: cluster.workers * cluster.num_blocks * block_size,
        policies: policies.iter().map(|p| p.to_string()).collect(),
        rates: rates.clone(),
        requests_per_rate: requests.clone(),
        warmup_requests: warmup.requests,
        warmup_rate: warmup.rate,
        workers: cluster.workers,
        kv_tokens_per_worker: cluster.num_blocks * block_size,
        block_size,
        max_num_batched_tokens: cluster.max_num_batched_tokens,
        max_num_seqs: cluster.max_num_seqs,
        event_delay_ms: a.event_delay_ms,
        cost_model: cluster.cost.clone(),
        ladder: cluster.ladder,
        routers,
        output_lens: output_lens.clone(),
        arrival_seed: a.arrival_seed,
        workload_seed: wl_args.seed,
    };
    eprintln!(
        "simulating {} worker(s) x {} KV tokens ({}), workload {} (resident set {:.0}% of the cluster's KV), {} policies x {} rates",
        setup.workers,
        setup.kv_tokens_per_worker,
        cluster.cost.name.split(':').next().unwrap_or(""),
        setup.workload,
        100.0 * setup.resident_tokens as f64 / setup.cluster_kv_tokens.max(1) as f64,
        policies.len(),
        rates.len()
    );
    let total: u64 = stages
        .iter()
        .flat_map(|(_, s)| s.iter().map(|s| s.requests as u64))
        .sum();
    let bar = report::progress_bar(total, "requests");
    let started = std::time::Instant::now();
    let jobs = a
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, policies.len());
    let results = run_parallel(&policies, jobs, |pol| {
        let cfg = sim::ClusterConfig {
            router: router_for(pol),
            ..cluster.clone()
        };
        let st = stages
            .iter()
            .find(|(p, _)| *p == pol)
            .map(|(_, s)| s.as_slice())
            .unwrap_or_default();
        sim::simulate(&cfg, &wl, pol, st, a.arrival_seed, &slo, &|n| bar.inc(n))
    })?;
    bar.finish_and_clear();
    let wall = started.elapsed().as_secs_f64();
    let steps: u64 = results.iter().map(|r| r.steps).sum();
    eprintln!(
        "simulated {steps} engine steps in {wall:.1} s ({:.0} steps/s)",
        steps as f64 / wall.max(1e-9)
    );
    report::write_sim_report(&a.out, &setup, &results, &slo, wall)?;
    let rows = report::sim_rows(&results, &slo);
    report::print_table(&rows);
    println!("\nmean over the rungs");
    let mean = report::mean_rows(&rows)?;
    report::print_table(&mean);
    let ladder = report::ladder_rows(&results, &slo);
    println!("\nthe whole ladder pooled (how inference-perf summarises latencies)");
    report::print_table(&ladder);
    if p.published {
        let cmp = report::published_comparison(&ladder, &mean);
        println!("\nbeside llm-d's published summary (benchmarking/73-capacity/README.md)");
        report::print_comparison(&cmp);
        report::write_comparison(&a.out, &cmp)?;
    }
    eprintln!("wrote {}", a.out.display());
    Ok(())
}

/// Run `f` for each policy on up to `jobs` threads, results in policy order.
fn run_parallel<T: Send>(
    policies: &[PolicyKind],
    jobs: usize,
    f: impl Fn(PolicyKind) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<parking_lot::Mutex<Option<Result<T>>>> = policies
        .iter()
        .map(|_| parking_lot::Mutex::new(None))
        .collect();
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&p) = policies.get(i) else { break };
                *slots[i].lock() = Some(f(p).with_context(|| format!("policy {p}")));
            });
        }
    });
    slots
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|| Err(anyhow::anyhow!("a policy did not run")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_cost_models_load() {
        for (n, _) in SHIPPED_COST_MODELS {
            let c = load_cost_model(n).unwrap();
            assert!(c.prefill_token_s > 0.0);
        }
        assert!(load_cost_model("no-such-model").is_err());
    }

    #[test]
    fn qwen_cost_model_reproduces_the_published_figures() {
        use reprise_engine::executor::StepInput;
        let c = load_cost_model("qwen3-32b-tp2-h100").unwrap();
        let toks = vec![1000u32; 10_000];
        let step = |start: usize, n: usize| {
            c.step_time(&[StepInput {
                seq: 0,
                tokens: &toks[start..start + n],
                start_pos: start,
                block_table: &[],
                sample: true,
            }])
        };
        // Cold: two 8,192-token-budget chunks.
        let cold = step(0, 8192) + step(8192, 1808);
        assert!((cold - 4.3).abs() < 0.01, "{cold}");
        // Warm: 0.6 s with 1,220 of the 10K tokens still to compute (88% cached).
        let warm = step(8780, 1220);
        assert!((warm - 0.6).abs() < 0.01, "{warm}");
    }

    #[test]
    fn roofline_cost_model_follows_the_hardware_limits() {
        use reprise_engine::executor::StepInput;
        let c = load_cost_model("qwen3-32b-tp2-h100-roofline").unwrap();
        // 2·32.8e9 FLOP per token at half of 2 × 989 TFLOP/s.
        assert!((c.prefill_token_s - 2.0 * 32.8e9 / (0.5 * 2.0 * 989e12)).abs() < 1e-6);
        // 64 layers × 8 KV heads × 128 dims × K and V × 2 bytes, halved by TP, at 3.35 TB/s.
        let kv_bytes_per_gpu = 64.0 * 8.0 * 128.0 * 2.0 * 2.0 / 2.0;
        assert!((c.decode_context_token_s - kv_bytes_per_gpu / 3.35e12).abs() < 1e-9);
        // A full worker (307,328 context tokens in ~40 sequences) decodes at ~25 ms.
        let toks = vec![1000u32; 1];
        let seqs: Vec<StepInput> = (0..40)
            .map(|i| StepInput {
                seq: i,
                tokens: &toks,
                start_pos: 7683,
                block_table: &[],
                sample: true,
            })
            .collect();
        let itl = c.step_time(&seqs);
        assert!((0.022..0.028).contains(&itl), "{itl}");
    }

    /// `reprise bench` as its own command line, to check the flattened options.
    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: BenchCommand,
    }

    #[test]
    fn command_line_has_no_clashing_options() {
        use clap::{CommandFactory, Parser};
        Cli::command().debug_assert();
        let c = Cli::try_parse_from([
            "bench",
            "compare",
            "--num-prompts",
            "48",
            "--random-prompts",
            "5",
            "--rates",
            "0.5",
        ])
        .unwrap();
        let BenchCommand::Compare(a) = c.cmd else {
            panic!("not compare")
        };
        assert_eq!((a.load.num_prompts, a.load.workload.num_prompts), (48, 5));
        let c = Cli::try_parse_from(["bench", "sim", "--preset", "llm-d-73"]).unwrap();
        assert!(matches!(c.cmd, BenchCommand::Sim(_)));
    }

    #[test]
    fn the_observed_preset_is_llm_ds_run() {
        // Same ladder as the published one.
        let rates = parse_rates(LLM_D_73_OBSERVED.rates).unwrap();
        let durations = parse_rates(LLM_D_73_OBSERVED.durations.unwrap()).unwrap();
        assert_eq!(rates.len(), published::LADDER.len());
        for ((r, d), rung) in rates.iter().zip(&durations).zip(&published::LADDER) {
            assert_eq!((*r, *d), (rung.rate, rung.duration_s));
        }
        assert_eq!(
            (
                LLM_D_73_OBSERVED.warmup.1,
                LLM_D_73_OBSERVED.warmup.0 as f64
            ),
            (
                published::WARMUP.0,
                published::WARMUP.0 * published::WARMUP.1
            )
        );
        // Each scheduler as llm-d configured it, and every configuration valid.
        let p = llm_d_router(PolicyKind::Precise);
        assert_eq!(
            (p.weights.prefix, p.weights.kv_usage, p.weights.queue),
            (3.0, 2.0, 2.0)
        );
        assert_eq!(p.speculative_ttl_ms, 0);
        let e = llm_d_router(PolicyKind::Approximate);
        assert_eq!(
            (e.weights.prefix, e.weights.kv_usage, e.weights.queue),
            (1.0, 1.0, 1.0)
        );
        assert_eq!(
            (e.approximate.max_blocks, e.approximate.capacity_blocks),
            (64, 7812)
        );
        for pol in PolicyKind::ALL {
            let r = RouterConfig {
                policy: pol,
                block_size: 64,
                ..llm_d_router(pol)
            };
            r.validate().unwrap();
            // llm-d's scoring schedulers have no overload guard (random uses none).
            if published::index_of(pol).is_some() && pol != PolicyKind::Random {
                assert!(!r.overload.enabled, "{pol}");
            }
        }
        // Observed lengths: each run's own; others take precise's; no made-up rates.
        assert_eq!(observed_output_len(PolicyKind::Random, 60.0).unwrap(), 85);
        assert_eq!(observed_output_len(PolicyKind::Cost, 60.0).unwrap(), 177);
        assert!(observed_output_len(PolicyKind::Precise, 7.0).is_err());
    }

    #[test]
    fn lists_parse() {
        assert_eq!(parse_rates("3, 10,15").unwrap(), vec![3.0, 10.0, 15.0]);
        assert!(parse_rates("3,x").is_err());
        assert!(parse_rates("0").is_err());
        assert_eq!(
            parse_policies("precise,round-robin").unwrap(),
            vec![PolicyKind::Precise, PolicyKind::RoundRobin]
        );
        assert!(parse_policies("best").is_err());
    }
}
