//! The engine boundary: what a caller submits to a worker and what it gets
//! back. One worker thread owns one model, its KV pool and its scheduler.

use crate::sampler::SamplingParams;
use reprise_router::TokenId;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// A generation request, already tokenized.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    /// Caller-chosen id, unique among the worker's live requests.
    pub id: u64,
    /// Prompt token ids (never empty).
    pub prompt: Vec<TokenId>,
    /// Sampling and stopping parameters.
    pub params: SamplingParams,
    /// Number of sequences to generate from the prompt; they share its KV blocks.
    pub n: usize,
    /// Extra bytes mixed into every block key (cache salt / adapter name).
    pub cache_salt: Vec<u8>,
}

/// Why a sequence stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// EOS or a stop token id.
    Stop,
    /// `max_tokens` or the context length reached.
    Length,
    /// Cancelled by the caller.
    Abort,
}

/// Log-probability information for one generated token.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    /// Log-probability of the chosen token.
    pub logprob: f32,
    /// The most likely tokens at this step with their log-probabilities.
    pub top: Vec<(TokenId, f32)>,
}

/// One thing a worker reports about a request, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum WorkerEvent {
    /// Sequence `index` produced `token`.
    Token {
        /// Which of the request's `n` sequences.
        index: usize,
        /// The generated token id.
        token: TokenId,
        /// Present when the request asked for logprobs.
        logprob: Option<TokenLogprob>,
    },
    /// Sequence `index` is done; the request is done when all `n` are.
    Finished {
        /// Which of the request's `n` sequences.
        index: usize,
        /// Why it stopped.
        reason: FinishReason,
        /// Prompt length in tokens.
        prompt_tokens: usize,
        /// Prompt tokens whose KV came from the prefix cache.
        cached_tokens: usize,
        /// Tokens generated for this sequence.
        completion_tokens: usize,
    },
    /// The request was scheduled for the first time (sent once, before its tokens).
    Scheduled {
        /// When the worker took the request in.
        queued_at: Instant,
        /// When a step first computed any of it.
        scheduled_at: Instant,
    },
    /// The request failed; nothing more follows.
    Error(String),
}

use crate::engine::{Engine, EngineConfig, SubmitError, WorkerSnapshot};
use crate::model::Model;
use crate::model_executor::ModelExecutor;
use crate::scheduler::SchedulerConfig;
use parking_lot::Mutex;
use reprise_router::{KvEvent, KvEventData};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// Settings of one worker.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Worker index (names its thread and its metrics).
    pub index: usize,
    /// Block pool and scheduler settings.
    pub scheduler: SchedulerConfig,
    /// Longest context (prompt + generated tokens).
    pub max_model_len: usize,
    /// Tokens that end generation unless `ignore_eos`.
    pub eos_token_ids: Vec<TokenId>,
    /// Fault injection for tests: panic on this step number (counted from 1).
    pub panic_at_step: Option<u64>,
}

/// Errors talking to a worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The worker thread has exited (panicked or shut down).
    #[error("worker {0} is not running")]
    Dead(usize),
    /// The request was refused.
    #[error(transparent)]
    Rejected(#[from] SubmitError),
    /// The worker could not be started.
    #[error("worker could not start: {0}")]
    Start(String),
}

enum Msg {
    Submit(
        GenerateRequest,
        flume::Sender<WorkerEvent>,
        flume::Sender<Result<(), SubmitError>>,
    ),
    Cancel(u64),
    Shutdown,
}

/// Handle to a worker thread; cheap to clone.
#[derive(Clone)]
pub struct WorkerHandle {
    index: usize,
    tx: flume::Sender<Msg>,
    snapshot: Arc<Mutex<WorkerSnapshot>>,
}

/// Called with every batch of KV events a worker emits. When the worker dies its
/// cache is gone: the sink gets a last `AllCleared`, numbered after everything before.
pub type EventSink = Box<dyn FnMut(Vec<KvEvent>) + Send>;

impl WorkerHandle {
    /// Spawn the worker thread owning a KV cache for `model`.
    pub fn spawn(
        cfg: WorkerConfig,
        model: Arc<dyn Model>,
        on_events: EventSink,
    ) -> Result<WorkerHandle, WorkerError> {
        let exec = ModelExecutor::new(model, cfg.scheduler.num_blocks, cfg.scheduler.block_size);
        let engine_cfg = EngineConfig {
            scheduler: cfg.scheduler.clone(),
            max_model_len: cfg.max_model_len,
            eos_token_ids: cfg.eos_token_ids.clone(),
        };
        let engine =
            Engine::new(engine_cfg, exec).map_err(|e| WorkerError::Start(e.to_string()))?;
        let (tx, rx) = flume::unbounded();
        let snapshot = Arc::new(Mutex::new(WorkerSnapshot {
            alive: true,
            ..engine.snapshot()
        }));
        let snap = snapshot.clone();
        std::thread::Builder::new()
            .name(format!("reprise-worker-{}", cfg.index))
            .spawn(move || run(engine, rx, snap, on_events, cfg.panic_at_step))
            .map_err(|e| WorkerError::Start(e.to_string()))?;
        Ok(WorkerHandle {
            index: cfg.index,
            tx,
            snapshot,
        })
    }

    /// Worker index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Submit a request; its events arrive on the returned channel. Dropping
    /// the receiver cancels the request.
    pub fn submit(
        &self,
        req: GenerateRequest,
    ) -> Result<flume::Receiver<WorkerEvent>, WorkerError> {
        let (etx, erx) = flume::unbounded();
        let (ack_tx, ack_rx) = flume::bounded(1);
        self.tx
            .send(Msg::Submit(req, etx, ack_tx))
            .map_err(|_| WorkerError::Dead(self.index))?;
        match ack_rx.recv() {
            Ok(Ok(())) => Ok(erx),
            Ok(Err(e)) => Err(WorkerError::Rejected(e)),
            Err(_) => Err(WorkerError::Dead(self.index)),
        }
    }

    /// Submit from async code without blocking the runtime thread on the ack.
    pub async fn submit_async(
        &self,
        req: GenerateRequest,
    ) -> Result<flume::Receiver<WorkerEvent>, WorkerError> {
        let (etx, erx) = flume::unbounded();
        let (ack_tx, ack_rx) = flume::bounded(1);
        self.tx
            .send(Msg::Submit(req, etx, ack_tx))
            .map_err(|_| WorkerError::Dead(self.index))?;
        match ack_rx.recv_async().await {
            Ok(Ok(())) => Ok(erx),
            Ok(Err(e)) => Err(WorkerError::Rejected(e)),
            Err(_) => Err(WorkerError::Dead(self.index)),
        }
    }

    /// Cancel a request; its KV blocks are released before the next step.
    pub fn cancel(&self, id: u64) {
        let _ = self.tx.send(Msg::Cancel(id));
    }

    /// Latest load and counters.
    pub fn snapshot(&self) -> WorkerSnapshot {
        *self.snapshot.lock()
    }

    /// Stop taking requests; the thread exits once its live requests are done.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Msg::Shutdown);
    }
}

fn run(
    mut engine: Engine<ModelExecutor>,
    rx: flume::Receiver<Msg>,
    snapshot: Arc<Mutex<WorkerSnapshot>>,
    mut on_events: EventSink,
    panic_at_step: Option<u64>,
) {
    let mut shutting_down = false;
    let mut steps = 0u64;
    // Sequence number of the next KV event (for the `AllCleared` sent if the worker dies).
    let mut next_seq = 0u64;
    let handle = |engine: &mut Engine<ModelExecutor>, msg: Msg, shutting_down: &mut bool| match msg
    {
        Msg::Submit(req, etx, ack) => {
            let res = if *shutting_down {
                Err(SubmitError::ShuttingDown)
            } else {
                engine.submit(req, etx)
            };
            let _ = ack.send(res);
        }
        Msg::Cancel(id) => engine.cancel(id),
        Msg::Shutdown => *shutting_down = true,
    };
    loop {
        if !engine.has_work() {
            if shutting_down {
                break;
            }
            match rx.recv() {
                Ok(msg) => handle(&mut engine, msg, &mut shutting_down),
                Err(_) => break,
            }
        }
        while let Ok(msg) = rx.try_recv() {
            handle(&mut engine, msg, &mut shutting_down);
        }
        if engine.has_work() {
            steps += 1;
            let result = catch_unwind(AssertUnwindSafe(|| {
                if panic_at_step == Some(steps) {
                    panic!("injected fault at step {steps}");
                }
                engine.step()
            }));
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => engine.fail_all(&e.to_string()),
                Err(_) => {
                    engine.fail_all("worker panicked; request aborted");
                    snapshot.lock().alive = false;
                    let mut events = engine.drain_events();
                    let seq = events.last().map_or(next_seq, |e| e.seq + 1);
                    events.push(KvEvent {
                        seq,
                        data: KvEventData::AllCleared,
                    });
                    on_events(events);
                    return;
                }
            }
        }
        let events = engine.drain_events();
        if let Some(last) = events.last() {
            next_seq = last.seq + 1;
            on_events(events);
        }
        *snapshot.lock() = engine.snapshot();
    }
    snapshot.lock().alive = false;
}
