//! One submitted request's life after the worker took it: worker events in,
//! per-choice text out (incremental detokenization, stop strings), logprobs,
//! usage, latency metrics. Completions and chat only format what this yields.

use crate::dispatch::Submitted;
use crate::local::ServeApp;
use reprise_api::app::GenRequest;
use reprise_api::errors::ApiError;
use reprise_api::params::GenOptions;
use reprise_engine::types::GenerateRequest;
use reprise_protocol::{FinishReason, StopReason, TokenLogprob, WorkerEvent};
use reprise_text::detok::{Detokenizer, StopMatcher, StopOutcome};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// One token's logprob information, ready to format.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenInfo {
    /// The token's text.
    pub token: String,
    /// Its log-probability.
    pub logprob: f32,
    /// The most likely alternatives (text, logprob).
    pub top: Vec<(String, f32)>,
}

/// What a request produces, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// New text of choice `index` (never partial UTF-8 nor part of a stop string),
    /// with the logprobs of the tokens consumed since the last delta.
    Delta {
        /// Choice.
        index: usize,
        /// Text.
        text: String,
        /// Logprobs, when asked for.
        logprobs: Vec<TokenInfo>,
    },
    /// Choice `index` is done.
    Finish {
        /// Choice.
        index: usize,
        /// `stop` or `length`.
        reason: FinishReason,
        /// The stop token id or stop string that ended it (vLLM's `stop_reason`).
        stop_reason: Option<StopReason>,
    },
}

/// Token counts of a finished request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens over all choices.
    pub completion_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
}

struct Choice {
    detok: Detokenizer,
    stop: StopMatcher,
    tokens: usize,
    /// The text has ended (a stop string); the worker's `Finished` follows.
    text_done: bool,
    /// The worker reported the choice finished.
    done: bool,
    pending_logprobs: Vec<TokenInfo>,
}

/// A running generation: pull [`Generation::next`] until it returns `None`.
pub struct Generation {
    app: Arc<ServeApp>,
    sub: Submitted,
    choices: Vec<Choice>,
    remaining: usize,
    prompt_tokens: usize,
    cached_tokens: Option<usize>,
    want_logprobs: bool,
    include_stop_str: bool,
    min_tokens: usize,
    /// `--request-timeout` from arrival, when set.
    deadline: Option<tokio::time::Instant>,
    /// When the request arrived (before parsing and tokenization), as vLLM measures.
    arrived: Instant,
    /// The worker's intake and first step, from its `Scheduled` event.
    scheduled: Option<(Instant, Instant)>,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    max_tokens: usize,
    usage: Option<Usage>,
}

impl Generation {
    /// Routes a prepared request to a worker, under the admission slot taken when
    /// it arrived, and starts consuming that worker's events. Returns the generation
    /// and the request's options.
    pub async fn start(
        app: &Arc<ServeApp>,
        req: GenRequest,
    ) -> Result<(Self, GenOptions), ApiError> {
        let GenRequest {
            opts,
            prompt,
            extra,
            request_id,
            arrival,
            permit,
            ..
        } = req;
        let prompt_tokens = prompt.len();
        let engine_req = GenerateRequest {
            id: 0,
            request_id,
            prompt,
            params: opts.params.clone(),
            n: opts.n,
            cache_salt: extra,
            constraint: opts.constraint.clone(),
        };
        let sub = app
            .backend
            .dispatcher
            .submit(permit, engine_req, &app.router_metrics)
            .await?;
        let gen = Self::new(app.clone(), sub, &opts, prompt_tokens, arrival);
        Ok((gen, opts))
    }

    fn new(
        app: Arc<ServeApp>,
        sub: Submitted,
        opts: &GenOptions,
        prompt_tokens: usize,
        arrived: Instant,
    ) -> Self {
        let p = &opts.params;
        let deadline = app
            .backend
            .request_timeout
            .map(|t| tokio::time::Instant::from_std(arrived) + t);
        Self {
            app,
            sub,
            choices: (0..opts.n)
                .map(|_| Choice {
                    detok: Detokenizer::new(p.skip_special_tokens, p.spaces_between_special_tokens),
                    stop: StopMatcher::new(p.stop.clone(), p.include_stop_str_in_output),
                    tokens: 0,
                    text_done: false,
                    done: false,
                    pending_logprobs: Vec::new(),
                })
                .collect(),
            remaining: opts.n,
            prompt_tokens,
            cached_tokens: None,
            want_logprobs: p.logprobs.is_some(),
            include_stop_str: p.include_stop_str_in_output,
            min_tokens: p.min_tokens,
            deadline,
            arrived,
            scheduled: None,
            first_token: None,
            last_token: None,
            max_tokens: opts.params.max_tokens,
            usage: None,
        }
    }

    /// The worker serving this request.
    pub fn worker(&self) -> usize {
        self.sub.worker
    }

    /// Token counts, once [`Generation::next`] has returned `None`.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// The next outputs (possibly an empty batch), `None` when every choice is
    /// done, or the error that ended the request.
    pub async fn next(&mut self) -> Option<Result<Vec<Output>, ApiError>> {
        if self.remaining == 0 {
            return None;
        }
        let received = match self.deadline {
            None => Ok(self.sub.events.recv_async().await),
            Some(d) => tokio::time::timeout_at(d, self.sub.events.recv_async()).await,
        };
        let Ok(received) = received else {
            // The guard cancels the request on the worker when the generation is dropped.
            self.remaining = 0;
            self.count_finish(FinishReason::Abort);
            let secs = self.app.backend.request_timeout.unwrap_or_default();
            return Some(Err(ApiError::Timeout(secs.as_secs_f64())));
        };
        let ev = match received {
            Ok(ev) => ev,
            Err(_) => {
                self.remaining = 0;
                self.count_error();
                let w = self.sub.worker;
                if !self.app.backend.dispatcher.is_alive(w) {
                    self.app.backend.dispatcher.mark_dead(w);
                }
                return Some(Err(ApiError::Internal(format!(
                    "worker {w} stopped before the request finished"
                ))));
            }
        };
        let mut out = Vec::new();
        match ev {
            WorkerEvent::Token {
                index,
                token,
                logprob,
                is_stop_token,
            } => {
                if let Err(e) = self.on_token(index, token, logprob, is_stop_token, &mut out) {
                    self.remaining = 0;
                    return Some(Err(e));
                }
            }
            WorkerEvent::Finished {
                index,
                reason,
                stop_reason,
                prompt_tokens,
                cached_tokens,
                completion_tokens,
            } => {
                // The request's prompt was computed (or found) by choice 0; the others
                // find it in the cache, so choice 0 has the request's figure.
                if index == 0 || self.cached_tokens.is_none() {
                    self.cached_tokens = Some(cached_tokens);
                }
                self.prompt_tokens = prompt_tokens;
                if let Some(c) = self.choices.get_mut(index) {
                    if !c.done {
                        c.done = true;
                        c.tokens = completion_tokens;
                        let text = if c.text_done {
                            String::new()
                        } else {
                            c.stop.flush()
                        };
                        let logprobs = std::mem::take(&mut c.pending_logprobs);
                        if !text.is_empty() || !logprobs.is_empty() {
                            out.push(Output::Delta {
                                index,
                                text,
                                logprobs,
                            });
                        }
                        out.push(Output::Finish {
                            index,
                            reason,
                            stop_reason,
                        });
                        self.count_finish(reason);
                        self.remaining -= 1;
                    }
                }
            }
            WorkerEvent::Scheduled {
                queued_at,
                scheduled_at,
            } => self.scheduled = Some((queued_at, scheduled_at)),
            WorkerEvent::Error(msg) => {
                self.remaining = 0;
                self.count_error();
                let w = self.sub.worker;
                if !self.app.backend.dispatcher.is_alive(w) {
                    self.app.backend.dispatcher.mark_dead(w);
                }
                return Some(Err(ApiError::Internal(format!("worker {w}: {msg}"))));
            }
        }
        if self.remaining == 0 {
            self.complete();
        }
        Some(Ok(out))
    }

    fn on_token(
        &mut self,
        index: usize,
        token: u32,
        logprob: Option<TokenLogprob>,
        is_stop_token: bool,
        out: &mut Vec<Output>,
    ) -> Result<(), ApiError> {
        let now = Instant::now();
        if let Some(m) = self.app.backend.metrics.workers.get(self.sub.worker) {
            match self.last_token {
                None => m.ttft.observe((now - self.arrived).as_secs_f64()),
                Some(t) => m.itl.observe((now - t).as_secs_f64()),
            }
        }
        self.first_token.get_or_insert(now);
        self.last_token = Some(now);
        let tok = &self.app.model.tokenizer;
        let (want_logprobs, include_stop, min_tokens) =
            (self.want_logprobs, self.include_stop_str, self.min_tokens);
        let Some(c) = self.choices.get_mut(index) else {
            return Ok(());
        };
        if c.done || c.text_done {
            return Ok(());
        }
        c.tokens += 1;
        if want_logprobs {
            if let Some(lp) = logprob {
                let piece = |id: u32| tok.decode(&[id], false).unwrap_or_default();
                c.pending_logprobs.push(TokenInfo {
                    token: piece(token),
                    logprob: lp.logprob,
                    top: lp.top.iter().map(|&(id, l)| (piece(id), l)).collect(),
                });
            }
        }
        // vLLM leaves the text of the EOS / stop token that ended the sequence out.
        let text = if is_stop_token && !include_stop {
            String::new()
        } else {
            c.detok
                .push(tok, token)
                .map_err(|e| ApiError::Internal(e.to_string()))?
        };
        // As the worker does: stop strings count once more than `min_tokens` were made.
        let (text, ended) = if c.tokens <= min_tokens {
            (text, false)
        } else {
            match c.stop.push(&text) {
                StopOutcome::Continue(t) => (t, false),
                StopOutcome::Stopped { text, .. } => (text, true),
            }
        };
        if ended {
            // The worker ends the sequence on this same token; its `Finished` follows.
            c.text_done = true;
        }
        if !text.is_empty() || (ended && !c.pending_logprobs.is_empty()) {
            let logprobs = std::mem::take(&mut c.pending_logprobs);
            out.push(Output::Delta {
                index,
                text,
                logprobs,
            });
        }
        Ok(())
    }

    fn count_finish(&self, reason: FinishReason) {
        if let Some(m) = self.app.backend.metrics.workers.get(self.sub.worker) {
            let c = match reason {
                FinishReason::Stop => &m.finished_stop,
                FinishReason::Length => &m.finished_length,
                FinishReason::Abort => &m.finished_abort,
            };
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn count_error(&self) {
        if let Some(m) = self.app.backend.metrics.workers.get(self.sub.worker) {
            m.finished_error.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// vLLM's per-request histograms, once every choice is done.
    fn observe_finished(&self, cached: usize) {
        let Some(m) = self.app.backend.metrics.workers.get(self.sub.worker) else {
            return;
        };
        let now = Instant::now();
        let secs = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64();
        m.e2e.observe(secs(self.arrived, now));
        if let Some((queued, scheduled)) = self.scheduled {
            m.queue.observe(secs(queued, scheduled));
            if let (Some(first), Some(last)) = (self.first_token, self.last_token) {
                m.prefill.observe(secs(scheduled, first));
                m.inference.observe(secs(scheduled, last));
            }
        }
        let generated: usize = self.choices.iter().map(|c| c.tokens).sum();
        if let (Some(first), Some(last)) = (self.first_token, self.last_token) {
            let decode = secs(first, last);
            m.decode.observe(decode);
            // vLLM: decode time over the tokens after the first (0 for a single token).
            let per = if generated > 1 {
                decode / (generated - 1) as f64
            } else {
                0.0
            };
            m.tpot.observe(per);
        }
        m.prompt_tokens.observe(self.prompt_tokens as f64);
        m.generation_tokens.observe(generated as f64);
        let longest = self.choices.iter().map(|c| c.tokens).max().unwrap_or(0);
        m.max_generation_tokens.observe(longest as f64);
        m.max_tokens.observe(self.max_tokens as f64);
        m.n.observe(self.choices.len() as f64);
        m.cached_prompt_tokens
            .fetch_add(cached as u64, Ordering::Relaxed);
    }

    fn complete(&mut self) {
        // Every choice ended on the worker's side: nothing to cancel.
        self.sub.guard.finished();
        let cached = self.cached_tokens.unwrap_or(0);
        self.usage = Some(Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.choices.iter().map(|c| c.tokens).sum(),
            cached_tokens: cached,
        });
        self.observe_finished(cached);
    }
}

/// Everything a non-streaming response needs.
#[derive(Debug, Default)]
pub struct Collected {
    /// Text per choice.
    pub texts: Vec<String>,
    /// Logprobs per choice (empty unless asked for).
    pub logprobs: Vec<Vec<TokenInfo>>,
    /// Finish reason per choice.
    pub finish: Vec<Option<FinishReason>>,
    /// Stop reason per choice.
    pub stop_reason: Vec<Option<StopReason>>,
    /// Token counts.
    pub usage: Usage,
}

impl Generation {
    /// Runs the request to the end and gathers its choices.
    pub async fn collect(mut self) -> Result<Collected, ApiError> {
        let n = self.choices.len();
        let mut c = Collected {
            texts: vec![String::new(); n],
            logprobs: vec![Vec::new(); n],
            finish: vec![None; n],
            stop_reason: vec![None; n],
            usage: Usage::default(),
        };
        while let Some(outs) = self.next().await {
            for o in outs? {
                match o {
                    Output::Delta {
                        index,
                        text,
                        logprobs,
                    } => {
                        if let (Some(t), Some(l)) =
                            (c.texts.get_mut(index), c.logprobs.get_mut(index))
                        {
                            t.push_str(&text);
                            l.extend(logprobs);
                        }
                    }
                    Output::Finish {
                        index,
                        reason,
                        stop_reason,
                    } => {
                        if let Some(f) = c.finish.get_mut(index) {
                            *f = Some(reason);
                        }
                        if let Some(s) = c.stop_reason.get_mut(index) {
                            *s = stop_reason;
                        }
                    }
                }
            }
        }
        c.usage = self.usage.unwrap_or_default();
        Ok(c)
    }
}

/// vLLM's `stop_reason` value: the stop token id, the stop string, or null.
pub fn stop_reason_json(r: &Option<StopReason>) -> serde_json::Value {
    match r {
        None => serde_json::Value::Null,
        Some(StopReason::Token(t)) => serde_json::json!(t),
        Some(StopReason::Text(s)) => serde_json::json!(s),
    }
}

/// OpenAI's name for a finish reason.
pub fn finish_reason_str(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Abort => "abort",
    }
}

impl Usage {
    /// The `usage` object.
    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        })
    }
}
