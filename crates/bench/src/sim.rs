//! Discrete-event cluster simulator: N workers, each the engine's own loop
//! ([`Engine`]: the scheduler with continuous batching, chunked prefill, in-flight
//! prefix sharing and preemption, the block pool with the real prefix cache and KV
//! events, stop and length decisions) over an executor whose steps take the time a
//! [`CostModel`] gives, and the real [`Router`] choosing a worker for every arrival
//! in virtual time.
//!
//! Granularity: every engine step is simulated (one decode token per running
//! sequence per step, prefill chunks under the token budget), exactly as the worker
//! loop runs them; only the tensor work is replaced by the cost model. A step is
//! run when it starts and its outcome (tokens, KV events, load) is seen when it
//! ends, `step_time` later, which is when a live worker would publish it. Load reaches
//! the router as it does live: a request routed to a worker in the middle of a step
//! waits in its inbox until the step ends; after every step the worker takes its
//! inbox in and reports its KV events and its load, counting the requests it has
//! taken in, to the router after `event_delay_s` (default 0: immediately).
//!
//! A ladder runs its rates one after the other on the same cluster (caches and
//! router state carry over), like successive `vllm bench serve` runs against one
//! server: each rate sends its requests with Poisson gaps and is measured from its
//! first arrival until its last request completes; the next rate starts then. A
//! [`Ladder::Continuous`] ladder instead sends the rates back to back as one arrival
//! stream, the way inference-perf runs its stages: a rung's backlog carries into the
//! next, and each rung is measured over its own arrival window.

use super::stats::{RequestRecord, Slo, Summary};
use super::workload::Workload;
use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reprise_engine::engine::{Engine, EngineConfig};
use reprise_engine::executor::{
    CostModel, Executor, ExecutorError, NewSequence, Sampled, StepInput,
};
use reprise_engine::scheduler::{SchedulerConfig, SeqId};
use reprise_engine::types::GenerateRequest;
use reprise_protocol::{FinishReason, SamplingParams, WorkerEvent};
use reprise_protocol::{KvEvent, TokenId, WorkerLoad};
use reprise_router::{PolicyKind, Router, RouterConfig};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// Cluster and engine settings of a simulation.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Number of workers.
    pub workers: usize,
    /// KV blocks per worker.
    pub num_blocks: usize,
    /// Tokens per block (engine and router).
    pub block_size: usize,
    /// Token budget of one step.
    pub max_num_batched_tokens: usize,
    /// Most running sequences per worker.
    pub max_num_seqs: usize,
    /// Step latency model.
    pub cost: CostModel,
    /// Delay before a worker's KV events and load reach the router, seconds.
    pub event_delay_s: f64,
    /// Router settings (the policy is set per run).
    pub router: RouterConfig,
    /// Whether each rung waits for the previous one to finish.
    pub ladder: Ladder,
}

/// How the rungs of a ladder follow each other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ladder {
    /// Each rung starts once the previous one's requests have all completed and is
    /// measured until its own last completion (successive `vllm bench serve` runs).
    #[default]
    Drained,
    /// Each rung's arrivals start where the previous rung's end, whatever is still
    /// queued, and a rung's throughput is over its own arrival window (inference-perf's
    /// stages, as llm-d ran them).
    Continuous,
}

/// One rung of the ladder.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stage {
    /// Poisson arrival rate, requests/s.
    pub rate: f64,
    /// Requests sent at this rate.
    pub requests: usize,
    /// A warm-up rung: run like the others but not reported (it fills the caches
    /// before the measured ladder, like inference-perf's warm-up stage).
    pub warmup: bool,
    /// Output tokens of this rung's requests, instead of the workload's.
    pub max_tokens: Option<usize>,
}

/// The outcome of one rate.
#[derive(Clone, Debug)]
pub struct StageResult {
    /// Virtual time of its first arrival, seconds.
    pub start_s: f64,
    /// Virtual time its last request completed, seconds.
    pub end_s: f64,
    /// Per-request records (times relative to `start_s`; `itl_s` emptied once
    /// `summary` is made, to bound memory over long ladders).
    pub records: Vec<RequestRecord>,
    /// Preemptions during the stage, over all workers.
    pub preemptions: u64,
    /// The stage's summary record.
    pub summary: Summary,
}

/// The outcome of one policy over the ladder.
#[derive(Clone, Debug)]
pub struct SimResult {
    /// The policy.
    pub policy: PolicyKind,
    /// One result per rate.
    pub stages: Vec<StageResult>,
    /// (prefill completion time, cached prompt tokens) of every request, for the
    /// effective-cache-throughput timeline.
    pub cache_hits: Vec<(f64, usize)>,
    /// Engine steps simulated.
    pub steps: u64,
}

/// f64 ordered for the event heap (times are finite by construction).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Time(f64);
impl Eq for Time {}
impl PartialOrd for Time {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Time {
    fn cmp(&self, o: &Self) -> Ordering {
        self.0.total_cmp(&o.0)
    }
}

/// Token the simulator generates when a prompt has no synthetic reply.
const FILLER_TOKEN: TokenId = 7;

/// A sequence's scripted reply (if any) and how many tokens it has produced.
type Script = (Option<Arc<[TokenId]>>, usize);

/// The engine's executor in the simulator: no tensors, each step timed by the cost
/// model, and each sequence "generating" its prompt's synthetic reply (so that a
/// later turn resending it hits the cache as on a real server) or a filler token.
struct SimExecutor {
    cost: CostModel,
    /// Reply of the next sequence to be added (set before each submission).
    next_reply: Option<Arc<[TokenId]>>,
    /// Live sequences: their reply and how many tokens they have produced.
    seqs: HashMap<SeqId, Script>,
    /// Duration of the last step executed, seconds.
    last_step_s: f64,
    /// Steps executed.
    steps: u64,
}

impl Executor for SimExecutor {
    fn execute(&mut self, step: &[StepInput<'_>]) -> Result<Vec<Sampled>, ExecutorError> {
        self.steps += 1;
        // A positive duration keeps virtual time moving whatever the cost model says.
        self.last_step_s = self.cost.step_time(step).max(1e-6);
        Ok(step
            .iter()
            .filter(|s| s.sample)
            .map(|s| {
                let token = match self.seqs.get_mut(&s.seq) {
                    Some((reply, i)) => {
                        let t = reply
                            .as_deref()
                            .and_then(|r| r.get(*i).copied())
                            .unwrap_or(FILLER_TOKEN);
                        *i += 1;
                        t
                    }
                    None => FILLER_TOKEN,
                };
                Sampled {
                    seq: s.seq,
                    token,
                    logprob: None,
                }
            })
            .collect())
    }

    fn add_sequence(&mut self, seq: SeqId, _new: &NewSequence<'_>) {
        self.seqs.insert(seq, (self.next_reply.take(), 0));
    }

    fn remove_sequence(&mut self, seq: SeqId) {
        self.seqs.remove(&seq);
    }
}

struct Worker {
    engine: Engine<SimExecutor>,
    /// A step is in progress (its completion is on the event heap).
    busy: bool,
    /// Requests live here: stage request index and the receiver of its events.
    live: Vec<(usize, flume::Receiver<WorkerEvent>)>,
    /// Requests routed here during the step in progress (taken in when it ends).
    inbox: Vec<usize>,
}

impl Worker {
    fn preemptions(&self) -> u64 {
        self.engine.snapshot().preemptions
    }
}

/// Messages from workers to the router that are still in flight.
struct Delivery {
    at: f64,
    worker: usize,
    events: Vec<KvEvent>,
    load: WorkerLoad,
    intake: u64,
}

/// Simulate `policy` over `stages`. `progress` is called with each completed request.
pub fn simulate(
    cfg: &ClusterConfig,
    workload: &Workload,
    policy: PolicyKind,
    stages: &[Stage],
    seed: u64,
    slo: &Slo,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<SimResult> {
    let router = Router::new(
        RouterConfig {
            policy,
            block_size: cfg.block_size,
            ..cfg.router.clone()
        },
        cfg.workers,
        cfg.num_blocks,
    )
    .context("router configuration")?;
    let ec = EngineConfig {
        scheduler: SchedulerConfig {
            num_blocks: cfg.num_blocks,
            block_size: cfg.block_size,
            max_num_batched_tokens: cfg.max_num_batched_tokens,
            max_num_seqs: cfg.max_num_seqs,
            hash_algo: router.config().hash_algo,
        },
        // The workload's lengths are the experiment's; the KV pool is the limit.
        max_model_len: usize::MAX,
        eos_token_ids: Vec::new(),
        tokenizer: None,
    };
    let mut workers = (0..cfg.workers)
        .map(|_| {
            let exec = SimExecutor {
                cost: cfg.cost.clone(),
                next_reply: None,
                seqs: HashMap::new(),
                last_step_s: 0.0,
                steps: 0,
            };
            Ok(Worker {
                engine: Engine::new(ec.clone(), exec)?,
                busy: false,
                live: Vec::new(),
                inbox: Vec::new(),
            })
        })
        .collect::<Result<Vec<_>, reprise_engine::scheduler::SchedulerError>>()
        .context("engine configuration")?;
    for (w, wk) in workers.iter().enumerate() {
        let s = wk.engine.snapshot();
        router.report_load(w, s.load, s.intake)?;
    }

    // Same arrivals and prompt order for every policy: both depend on the seed only.
    let mut rng = StdRng::seed_from_u64(seed);
    let mut heap: BinaryHeap<std::cmp::Reverse<(Time, usize)>> = BinaryHeap::new();
    let mut inflight: VecDeque<Delivery> = VecDeque::new();
    let mut now = 0.0f64;
    let mut next_id = 0u64;
    let mut out = SimResult {
        policy,
        stages: Vec::with_capacity(stages.len()),
        cache_hits: Vec::new(),
        steps: 0,
    };

    // A drained ladder runs each rung on its own; a continuous one sends every rung's
    // arrivals in one stream, so a rung's backlog is still there when the next starts.
    let segments: Vec<std::ops::Range<usize>> = match cfg.ladder {
        Ladder::Drained => (0..stages.len()).map(|i| i..i + 1).collect(),
        Ladder::Continuous => std::iter::once(0..stages.len()).collect(),
    };
    for seg in segments {
        let mut arrivals = Vec::new();
        let mut order = Vec::new();
        let mut max_tokens = Vec::new();
        // Per stage of the segment: its first request and the time its arrivals begin.
        let mut first = Vec::with_capacity(seg.len());
        let mut begin = Vec::with_capacity(seg.len() + 1);
        let mut t = now;
        for si in seg.clone() {
            let stage = &stages[si];
            anyhow::ensure!(
                stage.rate.is_finite() && stage.rate > 0.0,
                "request rate must be > 0, got {}",
                stage.rate
            );
            first.push(arrivals.len());
            begin.push(t);
            let o = workload.order(stage.requests, si as u64);
            max_tokens.extend(
                o.iter()
                    .map(|&p| stage.max_tokens.unwrap_or(workload.prompts[p].max_tokens)),
            );
            order.extend(o);
            for _ in 0..stage.requests {
                arrivals.push(t);
                // Exponential gap: −ln(1 − U)/rate with U in [0, 1).
                t += -(1.0 - rng.random::<f64>()).ln() / stage.rate;
            }
        }
        first.push(arrivals.len());
        // A continuous rung is measured over its own arrivals, until the next begins.
        begin.push(t);
        let total = arrivals.len();
        // Preemptions over all workers when each stage's first request arrived.
        let preempted = |workers: &[Worker]| workers.iter().map(|w| w.preemptions()).sum::<u64>();
        let mut preempt_at = vec![preempted(&workers); seg.len() + 1];
        let mut st = StageState {
            workload,
            order: &order,
            arrivals: &arrivals,
            max_tokens: &max_tokens,
            records: vec![RequestRecord::default(); total],
            last_token: vec![0.0; total],
            done: 0,
            next_id: &mut next_id,
            cache_hits: &mut out.cache_hits,
            progress,
        };
        let mut next = 0usize;
        let mut stage_k = 0usize;

        while st.done < total {
            let step_at = heap.peek().map(|e| e.0 .0 .0);
            let arrival_at = arrivals.get(next).copied();
            // Step completions first on ties: a request arriving exactly when a step
            // ends sees that step's effects.
            let take_arrival = match (arrival_at, step_at) {
                (Some(a), Some(s)) => a < s,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => anyhow::bail!("simulation stalled with requests outstanding"),
            };
            if take_arrival {
                let i = next;
                next += 1;
                while first[stage_k + 1] <= i {
                    stage_k += 1;
                    preempt_at[stage_k] = preempted(&workers);
                }
                now = arrivals[i];
                deliver(&router, &mut inflight, now)?;
                let p = &workload.prompts[order[i]];
                let d = router.route(&p.tokens, b"", Duration::from_secs_f64(now))?;
                let w = d.worker;
                st.records[i].start_s = now - begin[stage_k];
                st.records[i].prompt_tokens = p.tokens.len();
                st.records[i].worker = Some(w);
                let wk = &mut workers[w];
                if wk.busy {
                    // Busy with a step: the request waits in the inbox, as live.
                    wk.inbox.push(i);
                    continue;
                }
                st.take(wk, i);
                report(&router, &mut inflight, cfg, w, wk, Vec::new(), now)?;
                start_step(wk, w, now, &mut heap)?;
                continue;
            }
            let Some(std::cmp::Reverse((Time(t), w))) = heap.pop() else {
                continue;
            };
            now = t;
            out.steps += 1;
            let wk = &mut workers[w];
            wk.busy = false;
            st.collect(wk, w, &router, now)?;
            let events = wk.engine.drain_events();
            for i in std::mem::take(&mut wk.inbox) {
                st.take(wk, i);
            }
            report(&router, &mut inflight, cfg, w, wk, events, now)?;
            start_step(wk, w, now, &mut heap)?;
        }
        preempt_at[seg.len()] = preempted(&workers);
        let mut records = st.records;
        // Split off from the back, so the segment's stages come out last first.
        let mut done = Vec::with_capacity(seg.len());
        for (k, si) in seg.clone().enumerate().rev() {
            let mut recs = records.split_off(first[k]);
            let stage = &stages[si];
            if stage.warmup {
                continue;
            }
            let start = begin[k];
            let end = recs
                .iter()
                .filter(|r| r.ok())
                .map(|r| start + r.start_s + r.e2el_s)
                .fold(start, f64::max);
            let window = match cfg.ladder {
                Ladder::Drained => now - start,
                Ladder::Continuous => begin[k + 1] - start,
            };
            let preemptions = preempt_at[k + 1] - preempt_at[k];
            let mut summary = Summary::from_records(policy.name(), stage.rate, &recs, window, slo);
            summary.preemptions = Some(preemptions);
            for r in &mut recs {
                r.itl_s = Vec::new();
            }
            done.push(StageResult {
                start_s: start,
                end_s: end,
                records: recs,
                preemptions,
                summary,
            });
        }
        out.stages.extend(done.into_iter().rev());
    }
    Ok(out)
}

/// Apply every in-flight worker report due by `now`.
fn deliver(router: &Router, q: &mut VecDeque<Delivery>, now: f64) -> Result<()> {
    while q.front().is_some_and(|d| d.at <= now) {
        if let Some(d) = q.pop_front() {
            router.apply_events(d.worker, &d.events)?;
            router.report_load(d.worker, d.load, d.intake)?;
        }
    }
    Ok(())
}

/// Worker `w` reports its KV events and its load (with its intake count) to the
/// router, now or after the configured delay.
fn report(
    router: &Router,
    q: &mut VecDeque<Delivery>,
    cfg: &ClusterConfig,
    w: usize,
    wk: &Worker,
    events: Vec<KvEvent>,
    now: f64,
) -> Result<()> {
    let s = wk.engine.snapshot();
    if cfg.event_delay_s > 0.0 {
        q.push_back(Delivery {
            at: now + cfg.event_delay_s,
            worker: w,
            events,
            load: s.load,
            intake: s.intake,
        });
    } else {
        router.apply_events(w, &events)?;
        router.report_load(w, s.load, s.intake)?;
    }
    Ok(())
}

/// One stage's requests and what has been recorded of them.
struct StageState<'a> {
    workload: &'a Workload,
    order: &'a [usize],
    arrivals: &'a [f64],
    /// Output tokens each request asks for.
    max_tokens: &'a [usize],
    records: Vec<RequestRecord>,
    /// Time of each request's latest token.
    last_token: Vec<f64>,
    done: usize,
    next_id: &'a mut u64,
    cache_hits: &'a mut Vec<(f64, usize)>,
    progress: &'a (dyn Fn(u64) + Sync),
}

impl StageState<'_> {
    /// Request `i` of the stage is submitted to `wk`'s engine (or fails there), as
    /// a benchmark client sends it: `max_tokens` with `ignore_eos`.
    fn take(&mut self, wk: &mut Worker, i: usize) {
        let p = &self.workload.prompts[self.order[i]];
        *self.next_id += 1;
        let (tx, rx) = flume::unbounded();
        let req = GenerateRequest {
            id: *self.next_id,
            request_id: Arc::from(""),
            prompt: p.tokens.to_vec(),
            params: SamplingParams {
                max_tokens: self.max_tokens[i],
                ignore_eos: true,
                ..SamplingParams::default()
            },
            n: 1,
            cache_salt: Vec::new(),
            constraint: None,
        };
        wk.engine.executor_mut().next_reply = p.reply.clone();
        match wk.engine.submit(req, tx) {
            Ok(()) => {
                self.last_token[i] = self.arrivals[i];
                wk.live.push((i, rx));
            }
            Err(e) => {
                wk.engine.executor_mut().next_reply = None;
                self.fail(i, e.to_string());
            }
        }
    }

    fn fail(&mut self, i: usize, msg: String) {
        self.records[i].error = Some(msg);
        self.done += 1;
        (self.progress)(1);
    }

    /// Record what worker `w`'s step, ending at `now`, produced for its requests;
    /// a finished request is reported to the router as the live dispatcher does.
    fn collect(&mut self, wk: &mut Worker, w: usize, router: &Router, now: f64) -> Result<()> {
        let mut k = 0;
        while k < wk.live.len() {
            let i = wk.live[k].0;
            let mut ended = false;
            while let Ok(ev) = wk.live[k].1.try_recv() {
                let arrival = self.arrivals[i];
                let r = &mut self.records[i];
                match ev {
                    WorkerEvent::Token { .. } => {
                        if r.ttft_s.is_none() {
                            r.ttft_s = Some(now - arrival);
                        } else {
                            r.itl_s.push(now - self.last_token[i]);
                        }
                        self.last_token[i] = now;
                    }
                    WorkerEvent::Finished {
                        reason,
                        cached_tokens,
                        completion_tokens,
                        ..
                    } => {
                        ended = true;
                        r.cached_tokens = cached_tokens;
                        if completion_tokens == 0 && reason == FinishReason::Length {
                            r.error = Some("sequence does not fit in the KV pool".into());
                        } else {
                            r.output_tokens = completion_tokens;
                            r.e2el_s = now - arrival;
                            if let Some(ttft) = r.ttft_s {
                                self.cache_hits.push((arrival + ttft, cached_tokens));
                            }
                        }
                        let p = &self.workload.prompts[self.order[i]];
                        router.request_done(w, &p.tokens, b"", Duration::from_secs_f64(now))?;
                    }
                    WorkerEvent::Error(e) => {
                        ended = true;
                        r.error = Some(e);
                    }
                    WorkerEvent::Scheduled { .. } => {}
                }
            }
            if ended {
                wk.live.swap_remove(k);
                self.done += 1;
                (self.progress)(1);
            } else {
                k += 1;
            }
        }
        Ok(())
    }
}

/// Run the worker's next step if it has work; its completion is due when the cost
/// model says the step ends.
fn start_step(
    wk: &mut Worker,
    w: usize,
    now: f64,
    heap: &mut BinaryHeap<std::cmp::Reverse<(Time, usize)>>,
) -> Result<()> {
    if !wk.engine.has_work() {
        return Ok(());
    }
    let before = wk.engine.executor().steps;
    wk.engine
        .step()
        .map_err(|e| anyhow::anyhow!("worker {w}: {e}"))?;
    let dt = if wk.engine.executor().steps == before {
        // Nothing ran. Requests ended out of blocks are collected a moment later;
        // anything else left waiting with nothing running can never be scheduled.
        anyhow::ensure!(
            !wk.engine.has_work() || wk.engine.snapshot().load.running > 0,
            "worker {w} cannot schedule its waiting requests (KV pool too small?)"
        );
        1e-6
    } else {
        wk.engine.executor().last_step_s
    };
    wk.busy = true;
    heap.push(std::cmp::Reverse((Time(now + dt), w)));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{WorkloadArgs, WorkloadKind};
    use reprise_engine::kv::max_cacheable_blocks;

    fn cost() -> CostModel {
        CostModel {
            name: "test".into(),
            step_overhead_s: 0.01,
            prefill_token_s: 1e-4,
            prefill_attention_pair_s: 1e-9,
            decode_seq_s: 1e-4,
            decode_context_token_s: 1e-8,
        }
    }

    fn cluster(workers: usize, num_blocks: usize) -> ClusterConfig {
        ClusterConfig {
            workers,
            num_blocks,
            block_size: 16,
            max_num_batched_tokens: 2048,
            max_num_seqs: 256,
            cost: cost(),
            event_delay_s: 0.0,
            router: RouterConfig::default(),
            ladder: Ladder::Drained,
        }
    }

    fn one_group(users: usize) -> Workload {
        Workload::build(&WorkloadArgs {
            workload: WorkloadKind::SharedPrefix,
            groups: Some(1),
            users: Some(users),
            shared_len: Some(1000),
            unique_len: Some(0),
            output_len: Some(8),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn unlimited_kv_one_group_every_later_request_hits_fully() {
        // One group whose prompts are identical: after the first, each request must
        // find every full block but the one holding the last prompt token.
        for policy in [PolicyKind::Precise, PolicyKind::Approximate] {
            for workers in [1, 4] {
                let w = one_group(1);
                let stages = [Stage {
                    rate: 1.0,
                    requests: 40,
                    warmup: false,
                    max_tokens: None,
                }];
                let r = simulate(
                    &cluster(workers, 1 << 20),
                    &w,
                    policy,
                    &stages,
                    1,
                    &Slo::default(),
                    &|_| {},
                )
                .unwrap();
                let recs = &r.stages[0].records;
                assert!(recs.iter().all(|r| r.ok() && r.output_tokens == 8));
                assert_eq!(recs[0].cached_tokens, 0);
                let full = max_cacheable_blocks(1000, 16) * 16;
                for (i, rec) in recs.iter().enumerate().skip(1) {
                    assert_eq!(
                        rec.cached_tokens, full,
                        "{policy} workers={workers} request {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn unlimited_kv_one_worker_one_group_shares_the_context_under_every_policy() {
        // One group of 5 users (1,000 shared + 100 unique tokens) on one worker with
        // room for everything: after the first request every request finds the whole
        // shared context (its 62 full blocks), and a prompt sent before finds every
        // full block but the one holding its last token.
        let w = Workload::build(&WorkloadArgs {
            workload: WorkloadKind::SharedPrefix,
            groups: Some(1),
            users: Some(5),
            shared_len: Some(1000),
            unique_len: Some(100),
            output_len: Some(4),
            ..Default::default()
        })
        .unwrap();
        let shared = (1000 / 16) * 16;
        let full = max_cacheable_blocks(1100, 16) * 16;
        for policy in PolicyKind::ALL {
            let stages = [Stage {
                rate: 2.0,
                requests: 25,
                warmup: false,
                max_tokens: None,
            }];
            let r = simulate(
                &cluster(1, 1 << 20),
                &w,
                policy,
                &stages,
                5,
                &Slo::default(),
                &|_| {},
            )
            .unwrap();
            let order = w.order(25, 0);
            let recs = &r.stages[0].records;
            assert_eq!(recs[0].cached_tokens, 0, "{policy}");
            let mut seen = std::collections::HashSet::from([order[0]]);
            for (i, rec) in recs.iter().enumerate().skip(1) {
                let want = if seen.contains(&order[i]) {
                    full
                } else {
                    shared
                };
                assert_eq!(rec.cached_tokens, want, "{policy} request {i}");
                seen.insert(order[i]);
            }
            assert!(r.stages[0].summary.cached_token_ratio > 0.85, "{policy}");
        }
    }

    #[test]
    fn a_warmup_rung_fills_the_cache_and_is_not_reported() {
        let w = one_group(1);
        let rung = |requests, warmup| Stage {
            rate: 1.0,
            requests,
            warmup,
            max_tokens: None,
        };
        let run = |stages: &[Stage]| {
            simulate(
                &cluster(1, 1 << 16),
                &w,
                PolicyKind::Precise,
                stages,
                1,
                &Slo::default(),
                &|_| {},
            )
            .unwrap()
        };
        let cold = run(&[rung(5, false)]);
        let warm = run(&[rung(3, true), rung(5, false)]);
        assert_eq!(warm.stages.len(), 1);
        assert_eq!(warm.stages[0].summary.completed, 5);
        assert_eq!(cold.stages[0].records[0].cached_tokens, 0);
        assert!(warm.stages[0].records.iter().all(|r| r.cached_tokens > 0));
        assert!(warm.stages[0].start_s > 0.0);
    }

    #[test]
    fn a_continuous_ladder_carries_the_backlog_and_measures_arrival_windows() {
        // A burst far beyond one worker's rate, then a slow rung. Drained, the slow
        // rung starts on an idle worker; continuous, its first request arrives behind
        // the burst's backlog. Each rung asks for its own output length.
        let w = one_group(1);
        let stages = [
            Stage {
                rate: 1000.0,
                requests: 40,
                warmup: false,
                max_tokens: Some(50),
            },
            Stage {
                rate: 1.0,
                requests: 5,
                warmup: false,
                max_tokens: Some(3),
            },
        ];
        let run = |ladder| {
            // Four at a time, so that the burst queues.
            let cfg = ClusterConfig {
                ladder,
                max_num_seqs: 4,
                ..cluster(1, 1 << 14)
            };
            simulate(
                &cfg,
                &w,
                PolicyKind::Precise,
                &stages,
                1,
                &Slo::default(),
                &|_| {},
            )
            .unwrap()
        };
        let drained = run(Ladder::Drained);
        let cont = run(Ladder::Continuous);
        for r in [&drained, &cont] {
            assert_eq!(r.stages.len(), 2);
            assert!(r.stages[0]
                .records
                .iter()
                .all(|r| r.ok() && r.output_tokens == 50));
            assert!(r.stages[1]
                .records
                .iter()
                .all(|r| r.ok() && r.output_tokens == 3));
        }
        // Drained: the burst's rung lasts until its last completion, the slow rung
        // starts after it and its first request meets an idle worker.
        let (b, s) = (&drained.stages[0], &drained.stages[1]);
        assert!(s.start_s >= b.end_s);
        assert!((b.summary.duration - (b.end_s - b.start_s)).abs() < 1e-9);
        let idle_ttft = s.records[0].ttft_s.unwrap();
        // Continuous: the slow rung begins where the burst's arrivals end (well
        // before the burst is served), the burst is measured over its arrivals only,
        // and the slow rung's first request waits behind it.
        let (b, s) = (&cont.stages[0], &cont.stages[1]);
        assert!(s.start_s < b.end_s, "{} {}", s.start_s, b.end_s);
        assert!((b.summary.duration - (s.start_s - b.start_s)).abs() < 1e-9);
        assert!(b.summary.duration < 0.2, "{}", b.summary.duration);
        assert!(
            s.records[0].ttft_s.unwrap() > idle_ttft + 0.5,
            "{} vs {idle_ttft}",
            s.records[0].ttft_s.unwrap()
        );
    }

    #[test]
    fn decode_steps_take_the_cost_models_time() {
        // One request alone: 7 decode steps whose context grows 1,001..1,007 tokens.
        let w = one_group(1);
        let stages = [Stage {
            rate: 1.0,
            requests: 1,
            warmup: false,
            max_tokens: None,
        }];
        let r = simulate(
            &cluster(1, 1 << 12),
            &w,
            PolicyKind::Precise,
            &stages,
            1,
            &Slo::default(),
            &|_| {},
        )
        .unwrap();
        let c = cost();
        let mean_gap = c.step_overhead_s + c.decode_seq_s + c.decode_context_token_s * 1004.0;
        let s = &r.stages[0].summary;
        assert!(
            (s.itl.mean - 1000.0 * mean_gap).abs() < 1e-9,
            "{}",
            s.itl.mean
        );
        assert!((s.tpot.mean - 1000.0 * mean_gap).abs() < 1e-9);
        let rec = &r.stages[0].records[0];
        assert!((rec.e2el_s - rec.ttft_s.unwrap() - 7.0 * mean_gap).abs() < 1e-9);
        assert_eq!(r.steps, 8);
        assert!((s.output_throughput - 8.0 / s.duration).abs() < 1e-9);
    }

    #[test]
    fn random_routing_misses_and_ttft_is_in_virtual_time() {
        let w = one_group(1);
        let stages = [Stage {
            rate: 0.5,
            requests: 30,
            warmup: false,
            max_tokens: None,
        }];
        let r = simulate(
            &cluster(4, 1 << 16),
            &w,
            PolicyKind::Random,
            &stages,
            1,
            &Slo::default(),
            &|_| {},
        )
        .unwrap();
        let recs = &r.stages[0].records;
        let misses = recs.iter().filter(|r| r.cached_tokens == 0).count();
        assert!(
            (2..=4).contains(&misses),
            "each worker misses once: {misses}"
        );
        // A cold request on an idle worker: one prefill step of 1,000 tokens.
        let cold = cost().prefill_token_s * 1000.0
            + cost().prefill_attention_pair_s * 1000.0 * 500.5
            + cost().step_overhead_s;
        assert!((recs[0].ttft_s.unwrap() - cold).abs() < 1e-9);
        let s = &r.stages[0].summary;
        assert_eq!(s.completed, 30);
        assert_eq!(s.policy, "random");
        // 7 gaps per request of 8 tokens, each at least one decode step.
        assert!(s.itl.p99 >= s.itl.median && s.itl.median >= 10.0);
        assert!(s.duration > 50.0);
    }

    #[test]
    fn small_pools_preempt_and_still_finish_with_delayed_events() {
        let w = Workload::build(&WorkloadArgs {
            workload: WorkloadKind::SharedPrefix,
            groups: Some(4),
            users: Some(4),
            shared_len: Some(300),
            unique_len: Some(100),
            output_len: Some(50),
            ..Default::default()
        })
        .unwrap();
        let mut c = cluster(2, 64);
        c.event_delay_s = 0.05;
        let stages = [
            Stage {
                rate: 50.0,
                requests: 60,
                warmup: false,
                max_tokens: None,
            },
            Stage {
                rate: 5.0,
                requests: 20,
                warmup: false,
                max_tokens: None,
            },
        ];
        let r = simulate(
            &c,
            &w,
            PolicyKind::Precise,
            &stages,
            3,
            &Slo::default(),
            &|_| {},
        )
        .unwrap();
        assert_eq!(r.stages.len(), 2);
        assert!(r
            .stages
            .iter()
            .all(|s| s.records.iter().all(RequestRecord::ok)));
        assert!(r.stages[0].preemptions > 0);
        assert!(r.stages[1].start_s >= r.stages[0].end_s);
    }
}
