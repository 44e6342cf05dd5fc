//! The engine loop of one worker, without the thread: requests in, steps run
//! through the scheduler and an executor, tokens and stop decisions out.
//! Single-threaded and synchronous, so it is tested directly; `worker.rs` puts
//! it on a thread behind a channel.

use crate::executor::{Executor, ExecutorError, NewSequence};
use crate::scheduler::{Scheduler, SchedulerConfig, SchedulerError, SeqId};
use crate::types::GenerateRequest;
use reprise_protocol::{FinishReason, StopReason, TokenLogprob, WorkerEvent};
use reprise_protocol::{KvEvent, TokenId, WorkerLoad};
use reprise_text::detok::{Detokenizer, StopMatcher, StopOutcome};
use reprise_text::tokenizer::Tokenizer;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// Upper bounds of the step-size histogram (tokens computed per step): vLLM's buckets
/// of `vllm:iteration_tokens_total`.
pub const STEP_TOKEN_BUCKETS: [usize; 13] = [
    1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384,
];

/// Histogram of tokens computed per engine step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepTokens {
    /// Steps per bucket of [`STEP_TOKEN_BUCKETS`] (not cumulative), the last one above them all.
    pub counts: [u64; STEP_TOKEN_BUCKETS.len() + 1],
    /// Tokens over all steps.
    pub sum: u64,
}

impl StepTokens {
    fn observe(&mut self, tokens: usize) {
        let i = STEP_TOKEN_BUCKETS.partition_point(|&b| b < tokens);
        self.counts[i] += 1;
        self.sum += tokens as u64;
    }
}

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Block pool and scheduler settings.
    pub scheduler: SchedulerConfig,
    /// Longest context (prompt + generated tokens).
    pub max_model_len: usize,
    /// Tokens that end generation unless `ignore_eos`.
    pub eos_token_ids: Vec<TokenId>,
    /// Detokenizes outputs to find stop strings (requests with stop strings need it).
    pub tokenizer: Option<Arc<Tokenizer>>,
}

/// Why a request was refused at submission.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    /// A request with this id is already live.
    #[error("request id {0} is already in use")]
    DuplicateId(u64),
    /// `n` must be at least 1.
    #[error("n must be at least 1")]
    ZeroN,
    /// `max_tokens` must be at least 1.
    #[error("max_tokens must be at least 1")]
    ZeroMaxTokens,
    /// The prompt leaves no room to generate within the context length.
    #[error("prompt of {prompt} tokens leaves no room to generate within the context length of {max_model_len}")]
    PromptTooLong {
        /// Prompt length.
        prompt: usize,
        /// Context length.
        max_model_len: usize,
    },
    /// The worker is shutting down and takes no new requests.
    #[error("the worker is shutting down")]
    ShuttingDown,
    /// Stop strings need a tokenizer, and this engine has none.
    #[error("stop strings need a tokenizer, and this engine has none")]
    NoTokenizer,
    /// The scheduler refused the prompt.
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
}

/// Counters and load of one worker, for metrics and routing.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WorkerSnapshot {
    /// Queue and KV usage.
    pub load: WorkerLoad,
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_query_tokens: u64,
    /// Prompt tokens found there.
    pub prefix_hit_tokens: u64,
    /// Prompt tokens of submitted requests.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub generation_tokens: u64,
    /// Preemptions.
    pub preemptions: u64,
    /// Tokens computed per step.
    pub step_tokens: StepTokens,
    /// Requests taken in so far: the load above counts every one of them, so a
    /// router may stop counting those it sent before as unreported.
    pub intake: u64,
    /// False once the worker has died; it takes no more requests.
    pub alive: bool,
}

struct Request {
    tx: flume::Sender<WorkerEvent>,
    req: GenerateRequest,
    /// Live sequence of each of the `n` choices (`None` once finished or not yet started).
    seqs: Vec<Option<SeqId>>,
    /// Choices 1..n start once choice 0 has computed the prompt, so that they
    /// find its blocks in the prefix cache instead of computing them again.
    siblings_pending: bool,
    remaining: usize,
    /// When the engine took it in; `None` once its first step was reported.
    queued_at: Option<Instant>,
}

struct SeqState {
    request: u64,
    index: usize,
    /// The output text so far, for requests with stop strings.
    stop: Option<(Detokenizer, StopMatcher)>,
}

/// The tokens that end a sequence under `p`: EOS (unless ignored) and its stop ids.
fn stop_ids(cfg: &EngineConfig, p: &reprise_protocol::SamplingParams) -> Vec<TokenId> {
    let mut ids = p.stop_token_ids.clone();
    if !p.ignore_eos {
        ids.extend(&cfg.eos_token_ids);
    }
    ids
}

/// A new sequence's bookkeeping; with stop strings, the text state to find them in.
fn seq_state(cfg: &EngineConfig, req: &GenerateRequest, index: usize) -> SeqState {
    let p = &req.params;
    let stop = (p.stop.iter().any(|s| !s.is_empty()) && cfg.tokenizer.is_some()).then(|| {
        (
            Detokenizer::new(p.skip_special_tokens, p.spaces_between_special_tokens),
            StopMatcher::new(p.stop.clone(), false),
        )
    });
    SeqState {
        request: req.id,
        index,
        stop,
    }
}

/// One worker's engine: scheduler, executor and request bookkeeping.
pub struct Engine<E: Executor> {
    sched: Scheduler,
    exec: E,
    cfg: EngineConfig,
    requests: HashMap<u64, Request>,
    seqs: HashMap<SeqId, SeqState>,
    prompt_tokens: u64,
    generation_tokens: u64,
    step_tokens: StepTokens,
    /// Live requests not yet scheduled (so a step need not look them up otherwise).
    unscheduled: usize,
    /// Requests taken in so far.
    intake: u64,
    /// Requests that ended (finished, cancelled or failed) since the last drain.
    ended: Vec<u64>,
}

impl<E: Executor> Engine<E> {
    /// An idle engine.
    pub fn new(cfg: EngineConfig, exec: E) -> Result<Self, SchedulerError> {
        let mut sched = Scheduler::new(cfg.scheduler.clone())?;
        sched.set_sliding_window(exec.sliding_window());
        Ok(Self {
            sched,
            exec,
            cfg,
            requests: HashMap::new(),
            seqs: HashMap::new(),
            prompt_tokens: 0,
            generation_tokens: 0,
            step_tokens: StepTokens::default(),
            unscheduled: 0,
            intake: 0,
            ended: Vec::new(),
        })
    }

    /// The scheduler (read-only).
    pub fn scheduler(&self) -> &Scheduler {
        &self.sched
    }

    /// The executor.
    pub fn executor(&self) -> &E {
        &self.exec
    }

    /// The executor, to configure it between steps (the simulator scripts its tokens).
    pub fn executor_mut(&mut self) -> &mut E {
        &mut self.exec
    }

    /// Whether any request is live.
    pub fn has_work(&self) -> bool {
        !self.requests.is_empty()
    }

    /// Number of live requests.
    pub fn num_requests(&self) -> usize {
        self.requests.len()
    }

    /// Accept a request; its events go to `tx`.
    pub fn submit(
        &mut self,
        req: GenerateRequest,
        tx: flume::Sender<WorkerEvent>,
    ) -> Result<(), SubmitError> {
        if self.requests.contains_key(&req.id) {
            return Err(SubmitError::DuplicateId(req.id));
        }
        if req.n == 0 {
            return Err(SubmitError::ZeroN);
        }
        if req.params.max_tokens == 0 {
            return Err(SubmitError::ZeroMaxTokens);
        }
        if req.prompt.len() >= self.cfg.max_model_len {
            return Err(SubmitError::PromptTooLong {
                prompt: req.prompt.len(),
                max_model_len: self.cfg.max_model_len,
            });
        }
        if self.cfg.tokenizer.is_none() && req.params.stop.iter().any(|s| !s.is_empty()) {
            return Err(SubmitError::NoTokenizer);
        }
        let seq = self.sched.add(req.prompt.clone(), req.cache_salt.clone())?;
        self.exec.add_sequence(
            seq,
            &NewSequence {
                params: &req.params,
                prompt: &req.prompt,
                stop_ids: &stop_ids(&self.cfg, &req.params),
                constraint: req.constraint.as_ref(),
            },
        );
        let state = seq_state(&self.cfg, &req, 0);
        self.seqs.insert(seq, state);
        self.prompt_tokens += req.prompt.len() as u64;
        let mut seqs = vec![None; req.n];
        seqs[0] = Some(seq);
        self.requests.insert(
            req.id,
            Request {
                tx,
                siblings_pending: req.n > 1,
                remaining: req.n,
                seqs,
                req,
                queued_at: Some(Instant::now()),
            },
        );
        self.unscheduled += 1;
        self.intake += 1;
        Ok(())
    }

    /// Cancel a request: its blocks are released now; nothing more is sent.
    pub fn cancel(&mut self, id: u64) {
        if let Some(r) = self.requests.remove(&id) {
            if r.queued_at.is_some() {
                self.unscheduled -= 1;
            }
            for seq in r.seqs.into_iter().flatten() {
                self.end_seq(seq);
            }
            self.ended.push(id);
        }
    }

    /// Ids of the requests that ended since the last call.
    pub fn drain_ended(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.ended)
    }

    /// Fail every live request with `msg` and release all their blocks.
    pub fn fail_all(&mut self, msg: &str) {
        let ids: Vec<u64> = self.requests.keys().copied().collect();
        for id in ids {
            if let Some(r) = self.requests.get(&id) {
                let _ = r.tx.send(WorkerEvent::Error(msg.to_string()));
            }
            self.cancel(id);
        }
    }

    /// Run one scheduler step: plan, execute, sample, stop.
    pub fn step(&mut self) -> Result<(), ExecutorError> {
        let plan = self.sched.schedule();
        for &seq in &plan.out_of_blocks {
            self.finish_seq(seq, FinishReason::Length, None);
        }
        if plan.seqs.is_empty() {
            return Ok(());
        }
        self.step_tokens.observe(plan.num_tokens());
        if self.unscheduled > 0 {
            self.report_scheduled(&plan);
        }
        let sampled = {
            let inputs = self.sched.inputs(&plan);
            let out = self.exec.execute(&inputs)?;
            let wanted = inputs.iter().filter(|s| s.sample);
            if out.len() != wanted.clone().count()
                || !out.iter().zip(wanted).all(|(o, i)| o.seq == i.seq)
            {
                return Err(ExecutorError::Fault(format!(
                    "the executor returned {} tokens that do not match the {} sequences to sample",
                    out.len(),
                    inputs.iter().filter(|s| s.sample).count()
                )));
            }
            out
        };
        self.sched.complete(&plan);
        for s in sampled {
            self.on_token(s.seq, s.token, s.logprob);
        }
        Ok(())
    }

    /// Tell each request scheduled for the first time in `plan` when it was.
    fn report_scheduled(&mut self, plan: &crate::scheduler::StepPlan) {
        let now = Instant::now();
        for s in &plan.seqs {
            let Some(st) = self.seqs.get(&s.seq) else {
                continue;
            };
            if let Some(r) = self.requests.get_mut(&st.request) {
                if let Some(queued_at) = r.queued_at.take() {
                    self.unscheduled -= 1;
                    let _ = r.tx.send(WorkerEvent::Scheduled {
                        queued_at,
                        scheduled_at: now,
                    });
                }
            }
        }
    }

    /// KV events since the last call.
    pub fn drain_events(&mut self) -> Vec<KvEvent> {
        self.sched.drain_events()
    }

    /// Load and counters.
    pub fn snapshot(&self) -> WorkerSnapshot {
        let st = self.sched.stats();
        WorkerSnapshot {
            load: self.sched.load(),
            prefix_query_tokens: st.prefix_query_tokens,
            prefix_hit_tokens: st.prefix_hit_tokens,
            prompt_tokens: self.prompt_tokens,
            generation_tokens: self.generation_tokens,
            preemptions: st.preemptions,
            step_tokens: self.step_tokens,
            intake: self.intake,
            alive: true,
        }
    }

    fn on_token(&mut self, seq: SeqId, token: TokenId, logprob: Option<TokenLogprob>) {
        let Some(st) = self.seqs.get_mut(&seq) else {
            return;
        };
        let (rid, index) = (st.request, st.index);
        let Some(r) = self.requests.get(&rid) else {
            return;
        };
        self.sched.append_token(seq, token);
        self.generation_tokens += 1;
        let p = &r.req.params;
        let generated = self.sched.num_generated(seq).unwrap_or(0);
        let len = self.sched.tokens(seq).map_or(0, <[TokenId]>::len);
        // vLLM's order: the length cap, then EOS, then stop token ids; a stop string
        // found in the text ends the sequence as `stop` whatever else did.
        let mut end = if generated >= p.max_tokens || len >= self.cfg.max_model_len {
            Some((FinishReason::Length, None))
        } else if !p.ignore_eos && self.cfg.eos_token_ids.contains(&token) {
            Some((FinishReason::Stop, None))
        } else if p.stop_token_ids.contains(&token) {
            Some((FinishReason::Stop, Some(StopReason::Token(token))))
        } else {
            None
        };
        let is_stop_token = matches!(end, Some((FinishReason::Stop, _)));
        if !is_stop_token {
            if let (Some((detok, matcher)), Some(tok)) = (st.stop.as_mut(), &self.cfg.tokenizer) {
                // A token the tokenizer cannot decode adds no text to match.
                let text = detok.push(tok, token).unwrap_or_default();
                // As vLLM: stop strings count once more than `min_tokens` were generated.
                if generated > p.min_tokens {
                    if let StopOutcome::Stopped { stop, .. } = matcher.push(&text) {
                        let s = matcher.stops().get(stop).cloned().unwrap_or_default();
                        end = Some((FinishReason::Stop, Some(StopReason::Text(s))));
                    }
                }
            }
        }
        let sent =
            r.tx.send(WorkerEvent::Token {
                index,
                token,
                logprob,
                is_stop_token,
            })
            .is_ok();
        if !sent {
            // The caller went away: free everything now.
            self.cancel(rid);
            return;
        }
        if index == 0 && r.siblings_pending {
            self.start_siblings(rid);
        }
        if let Some((reason, stop_reason)) = end {
            self.finish_seq(seq, reason, stop_reason);
        }
    }

    fn start_siblings(&mut self, rid: u64) {
        let Some(r) = self.requests.get_mut(&rid) else {
            return;
        };
        r.siblings_pending = false;
        for index in 1..r.seqs.len() {
            let mut params = r.req.params.clone();
            params.seed = params.seed.map(|s| s.wrapping_add(index as u64));
            match self
                .sched
                .add(r.req.prompt.clone(), r.req.cache_salt.clone())
            {
                Ok(seq) => {
                    self.exec.add_sequence(
                        seq,
                        &NewSequence {
                            params: &params,
                            prompt: &r.req.prompt,
                            stop_ids: &stop_ids(&self.cfg, &params),
                            constraint: r.req.constraint.as_ref(),
                        },
                    );
                    let state = seq_state(&self.cfg, &r.req, index);
                    self.seqs.insert(seq, state);
                    r.seqs[index] = Some(seq);
                }
                Err(e) => {
                    // Cannot happen for a prompt choice 0 was admitted with; fail loudly anyway.
                    let _ = r.tx.send(WorkerEvent::Error(e.to_string()));
                }
            }
        }
    }

    fn finish_seq(&mut self, seq: SeqId, reason: FinishReason, stop_reason: Option<StopReason>) {
        let Some(st) = self.seqs.get(&seq) else {
            return;
        };
        let (rid, index) = (st.request, st.index);
        let generated = self.sched.num_generated(seq).unwrap_or(0);
        let cached = self.sched.cached_tokens(seq).unwrap_or(0);
        self.end_seq(seq);
        let Some(r) = self.requests.get_mut(&rid) else {
            return;
        };
        r.seqs[index] = None;
        r.remaining -= 1;
        let _ = r.tx.send(WorkerEvent::Finished {
            index,
            reason,
            stop_reason,
            prompt_tokens: r.req.prompt.len(),
            cached_tokens: cached,
            completion_tokens: generated,
        });
        if r.remaining == 0 || (index == 0 && r.siblings_pending) {
            // Choice 0 ended before its first token (out of blocks): the
            // siblings would never start, so end the request with it.
            if r.remaining > 0 {
                let _ = r.tx.send(WorkerEvent::Error(
                    "request ended before its prompt could be computed".into(),
                ));
            }
            self.cancel(rid);
        }
    }

    fn end_seq(&mut self, seq: SeqId) {
        self.sched.finish(seq);
        self.exec.remove_sequence(seq);
        self.seqs.remove(&seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::{CostModel, CostModelExecutor};
    use reprise_protocol::SamplingParams;

    fn engine(num_blocks: usize, eos: TokenId) -> Engine<CostModelExecutor> {
        let cost = CostModel {
            name: "zero".into(),
            step_overhead_s: 0.0,
            prefill_token_s: 0.0,
            prefill_attention_pair_s: 0.0,
            decode_seq_s: 0.0,
            decode_context_token_s: 0.0,
        };
        let cfg = EngineConfig {
            scheduler: SchedulerConfig {
                num_blocks,
                block_size: 4,
                max_num_batched_tokens: 64,
                ..Default::default()
            },
            max_model_len: 64,
            eos_token_ids: vec![eos],
            tokenizer: None,
        };
        Engine::new(cfg, CostModelExecutor::new(cost, 7)).unwrap()
    }

    fn req(id: u64, prompt_len: usize, max_tokens: usize, n: usize) -> GenerateRequest {
        GenerateRequest {
            id,
            request_id: "test".into(),
            prompt: (0..prompt_len as u32).collect(),
            params: SamplingParams {
                max_tokens,
                temperature: 0.0,
                ..Default::default()
            },
            n,
            cache_salt: Vec::new(),
            constraint: None,
        }
    }

    fn run(e: &mut Engine<CostModelExecutor>) {
        for _ in 0..1000 {
            if !e.has_work() {
                return;
            }
            e.step().unwrap();
        }
        panic!("engine did not drain");
    }

    fn finished(rx: &flume::Receiver<WorkerEvent>) -> Vec<WorkerEvent> {
        rx.drain()
            .filter(|e| matches!(e, WorkerEvent::Finished { .. }))
            .collect()
    }

    #[test]
    fn max_tokens_and_eos_end_sequences() {
        let mut e = engine(32, 7);
        let (tx, rx) = flume::unbounded();
        e.submit(req(1, 5, 3, 1), tx).unwrap();
        run(&mut e);
        // The cost model always "samples" 7, which is EOS here: one token, stop.
        let ev: Vec<_> = rx
            .drain()
            .filter(|e| !matches!(e, WorkerEvent::Scheduled { .. }))
            .collect();
        assert!(matches!(ev[0], WorkerEvent::Token { token: 7, .. }));
        assert!(matches!(
            ev[1],
            WorkerEvent::Finished {
                reason: FinishReason::Stop,
                completion_tokens: 1,
                ..
            }
        ));

        let mut e = engine(32, 99);
        let (tx, rx) = flume::unbounded();
        let mut r = req(1, 5, 3, 1);
        r.params.ignore_eos = true;
        e.submit(r, tx).unwrap();
        run(&mut e);
        let f = finished(&rx);
        assert!(matches!(
            f[0],
            WorkerEvent::Finished {
                reason: FinishReason::Length,
                completion_tokens: 3,
                ..
            }
        ));
        assert_eq!(e.scheduler().pool().num_in_use(), 0);
    }

    #[test]
    fn scheduled_is_reported_once_before_the_tokens_and_steps_are_counted() {
        let mut e = engine(32, 99);
        let (tx, rx) = flume::unbounded();
        e.submit(req(1, 13, 3, 2), tx).unwrap();
        run(&mut e);
        let ev: Vec<_> = rx.drain().collect();
        let sched: Vec<usize> = ev
            .iter()
            .enumerate()
            .filter(|(_, e)| matches!(e, WorkerEvent::Scheduled { .. }))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(sched, [0], "once per request, first: {ev:?}");
        if let WorkerEvent::Scheduled {
            queued_at,
            scheduled_at,
        } = ev[0]
        {
            assert!(scheduled_at >= queued_at);
        }
        let st = e.snapshot().step_tokens;
        let steps: u64 = st.counts.iter().sum();
        assert!(steps >= 3, "{st:?}");
        // The 13-token prompt in one step (bucket <= 16), then 1- and 2-token decode steps.
        assert_eq!(st.counts[2], 1, "{st:?}");
        assert!(st.sum >= 13 + 2, "prompt plus later decode tokens: {st:?}");
        assert!(st.counts[0] + st.counts[1] >= 2, "{st:?}");
        // A cancelled request that never ran leaves no one waiting to be reported.
        let (tx, _rx) = flume::unbounded();
        e.submit(req(2, 5, 3, 1), tx).unwrap();
        e.cancel(2);
        assert_eq!(e.unscheduled, 0);
    }

    #[test]
    fn n_choices_share_the_prompt_blocks() {
        let mut e = engine(32, 99);
        let (tx, rx) = flume::unbounded();
        e.submit(req(1, 13, 2, 3), tx).unwrap();
        run(&mut e);
        let f = finished(&rx);
        assert_eq!(f.len(), 3);
        let cached: Vec<usize> = f
            .iter()
            .map(|ev| match ev {
                WorkerEvent::Finished {
                    index,
                    cached_tokens,
                    ..
                } => {
                    if *index == 0 {
                        assert_eq!(*cached_tokens, 0);
                    }
                    *cached_tokens
                }
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            cached.iter().filter(|c| **c == 12).count(),
            2,
            "siblings hit the prompt's 3 full blocks"
        );
        assert_eq!(e.scheduler().pool().num_in_use(), 0);
    }

    #[test]
    fn dropped_receiver_cancels_and_frees() {
        let mut e = engine(32, 99);
        let (tx, rx) = flume::unbounded();
        e.submit(req(1, 9, 50, 1), tx).unwrap();
        e.step().unwrap();
        assert!(e.scheduler().pool().num_in_use() > 0);
        drop(rx);
        e.step().unwrap();
        assert!(!e.has_work());
        assert_eq!(e.scheduler().pool().num_in_use(), 0);
    }

    #[test]
    fn cancel_frees_a_waiting_request() {
        let mut e = engine(32, 99);
        let (tx, _rx) = flume::unbounded();
        e.submit(req(1, 9, 50, 1), tx.clone()).unwrap();
        e.cancel(1);
        assert!(!e.has_work());
        assert_eq!(e.scheduler().num_seqs(), 0);
    }

    #[test]
    fn bad_requests_are_refused() {
        let mut e = engine(4, 99);
        let (tx, _rx) = flume::unbounded();
        assert_eq!(
            e.submit(req(1, 5, 0, 1), tx.clone()),
            Err(SubmitError::ZeroMaxTokens)
        );
        assert_eq!(
            e.submit(req(1, 5, 1, 0), tx.clone()),
            Err(SubmitError::ZeroN)
        );
        assert!(matches!(
            e.submit(req(1, 64, 1, 1), tx.clone()),
            Err(SubmitError::PromptTooLong { .. })
        ));
        assert!(matches!(
            e.submit(req(1, 20, 1, 1), tx.clone()),
            Err(SubmitError::Scheduler(_))
        ));
        e.submit(req(1, 5, 1, 1), tx.clone()).unwrap();
        assert_eq!(
            e.submit(req(1, 5, 1, 1), tx),
            Err(SubmitError::DuplicateId(1))
        );
    }

    fn with_tokenizer(mut e: Engine<CostModelExecutor>) -> Engine<CostModelExecutor> {
        // The cost model samples token 7 every time: "x" here.
        let tokens: Vec<String> = ["a", "b", "c", "d", "e", "f", "g", "x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let tok = Tokenizer::from_gguf_vocab(&tokens, &[], None, "gpt2").unwrap();
        e.cfg.tokenizer = Some(Arc::new(tok));
        e
    }

    fn tokens_and_finish(
        rx: &flume::Receiver<WorkerEvent>,
    ) -> Vec<(usize, Option<FinishReason>, Option<StopReason>, bool)> {
        rx.drain()
            .filter_map(|e| match e {
                WorkerEvent::Token {
                    index,
                    is_stop_token,
                    ..
                } => Some((index, None, None, is_stop_token)),
                WorkerEvent::Finished {
                    index,
                    reason,
                    stop_reason,
                    ..
                } => Some((index, Some(reason), stop_reason, false)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_stop_string_ends_every_choice_on_the_token_that_completes_it() {
        let mut e = with_tokenizer(engine(32, 99));
        let (tx, rx) = flume::unbounded();
        let mut r = req(1, 5, 50, 2);
        r.params.stop = vec!["xxx".into()];
        e.submit(r, tx).unwrap();
        run(&mut e);
        let ev = tokens_and_finish(&rx);
        for index in 0..2 {
            let mine: Vec<_> = ev.iter().filter(|e| e.0 == index).collect();
            assert_eq!(mine.len(), 4, "three tokens then the finish: {mine:?}");
            assert_eq!(mine[3].1, Some(FinishReason::Stop));
            assert_eq!(mine[3].2, Some(StopReason::Text("xxx".into())));
            assert!(mine[..3].iter().all(|t| !t.3));
        }
        assert_eq!(e.snapshot().generation_tokens, 6);
        // Without a tokenizer, stop strings are refused rather than ignored.
        let mut bare = engine(32, 99);
        let mut r = req(2, 5, 5, 1);
        r.params.stop = vec!["x".into()];
        assert_eq!(
            bare.submit(r, flume::unbounded().0),
            Err(SubmitError::NoTokenizer)
        );
    }

    #[test]
    fn stop_strings_wait_for_min_tokens() {
        let mut e = with_tokenizer(engine(32, 99));
        let (tx, rx) = flume::unbounded();
        let mut r = req(1, 5, 50, 1);
        r.params.stop = vec!["x".into()];
        r.params.min_tokens = 3;
        e.submit(r, tx).unwrap();
        run(&mut e);
        let ev = tokens_and_finish(&rx);
        assert_eq!(ev.len(), 5, "four tokens, then the finish: {ev:?}");
        assert_eq!(ev[4].2, Some(StopReason::Text("x".into())));
    }

    #[test]
    fn stop_tokens_are_marked_and_the_length_cap_comes_first() {
        let mut e = engine(32, 99);
        let (tx, rx) = flume::unbounded();
        let mut r = req(1, 5, 5, 1);
        r.params.stop_token_ids = vec![7];
        e.submit(r, tx).unwrap();
        run(&mut e);
        let ev = tokens_and_finish(&rx);
        assert_eq!(
            ev,
            vec![
                (0, None, None, true),
                (
                    0,
                    Some(FinishReason::Stop),
                    Some(StopReason::Token(7)),
                    false
                )
            ]
        );
        // EOS on the last allowed token: `length`, as vLLM reports it.
        let mut e = engine(32, 7);
        let (tx, rx) = flume::unbounded();
        e.submit(req(1, 5, 1, 1), tx).unwrap();
        run(&mut e);
        let ev = tokens_and_finish(&rx);
        assert_eq!(ev[1].1, Some(FinishReason::Length));
        assert!(!ev[0].3);
    }

    #[test]
    fn intake_counts_requests_taken_in_and_ended_ones_are_reported() {
        let mut e = engine(32, 99);
        let (tx, _rx) = flume::unbounded();
        assert_eq!(e.snapshot().intake, 0);
        e.submit(req(1, 5, 2, 1), tx.clone()).unwrap();
        e.submit(req(2, 5, 2, 1), tx.clone()).unwrap();
        assert!(e.submit(req(2, 5, 2, 1), tx.clone()).is_err());
        let s = e.snapshot();
        assert_eq!(s.intake, 2);
        assert_eq!(
            s.load.waiting, 2,
            "the load already counts what was taken in"
        );
        e.cancel(2);
        run(&mut e);
        let mut ended = e.drain_ended();
        ended.sort_unstable();
        assert_eq!(ended, [1, 2]);
        assert!(e.drain_ended().is_empty());
    }

    /// An executor that forgets to return the last sampled token.
    struct Forgetful(CostModelExecutor);

    impl Executor for Forgetful {
        fn execute(
            &mut self,
            step: &[crate::executor::StepInput<'_>],
        ) -> Result<Vec<crate::executor::Sampled>, ExecutorError> {
            let mut out = self.0.execute(step)?;
            out.pop();
            Ok(out)
        }
    }

    #[test]
    fn an_executor_breaking_its_contract_is_a_fault() {
        let e = engine(32, 99);
        let mut e = Engine::new(e.cfg.clone(), Forgetful(e.exec)).unwrap();
        let (tx, _rx) = flume::unbounded();
        e.submit(req(1, 5, 2, 1), tx).unwrap();
        assert!(matches!(e.step(), Err(ExecutorError::Fault(_))));
    }

    #[test]
    fn many_requests_through_a_small_pool_all_finish() {
        let mut e = engine(12, 99);
        let mut rxs = Vec::new();
        for i in 0..20 {
            let (tx, rx) = flume::unbounded();
            let mut r = req(i, 6 + (i as usize % 5), 8, 1);
            r.params.ignore_eos = true;
            e.submit(r, tx).unwrap();
            rxs.push(rx);
        }
        run(&mut e);
        for rx in rxs {
            let f = finished(&rx);
            assert!(matches!(
                f[0],
                WorkerEvent::Finished {
                    completion_tokens: 8,
                    ..
                }
            ));
        }
        assert!(e.snapshot().preemptions > 0);
        assert_eq!(e.scheduler().pool().num_in_use(), 0);
    }
}
