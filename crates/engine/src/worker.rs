//! The worker: one thread owning one model, its KV pool and its scheduler, behind
//! a channel; a watchdog beside it fails the worker when a step hangs.

use crate::engine::{Engine, EngineConfig, SubmitError, WorkerSnapshot};
use crate::executor::{Executor, ExecutorError};
use crate::model::AnyModel;
use crate::scheduler::SchedulerConfig;
use crate::types::GenerateRequest;
use parking_lot::Mutex;
use reprise_protocol::TokenId;
use reprise_protocol::WorkerEvent;
use reprise_protocol::{KvEvent, KvEventData};
use reprise_text::tokenizer::Tokenizer;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

/// A fault injected for tests at an engine step (counted from 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The step panics.
    Panic(u64),
    /// The step never returns (until the process exits).
    Hang(u64),
}

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
    /// Finds stop strings in the output (requests with stop strings need it).
    pub tokenizer: Option<Arc<Tokenizer>>,
    /// A step that has not returned after this long fails the worker.
    pub step_timeout: Option<Duration>,
    /// Fault injection for tests.
    pub fault: Option<Fault>,
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
        Box<GenerateRequest>,
        flume::Sender<WorkerEvent>,
        flume::Sender<Result<(), SubmitError>>,
    ),
    Cancel(u64),
    Shutdown,
}

/// A live request's id for logs and its event channel.
type LiveRequest = (Arc<str>, flume::Sender<WorkerEvent>);

/// What the worker thread shares with its handles and its watchdog.
struct Shared {
    index: usize,
    snapshot: Mutex<WorkerSnapshot>,
    /// The event channels of the live requests, so that the watchdog can fail them
    /// while the worker thread is stuck in a step.
    live: Mutex<HashMap<u64, LiveRequest>>,
    /// When the step in progress began; `None` between steps.
    step_started: Mutex<Option<Instant>>,
    /// Set once the worker has failed; the thread exits when it sees it.
    failed: AtomicBool,
    /// Set when the thread has exited.
    exited: AtomicBool,
}

impl Shared {
    /// Fails every live request with `msg`, takes the worker out of service.
    fn fail(&self, msg: &str) {
        if self.failed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.snapshot.lock().alive = false;
        let live: Vec<_> = self.live.lock().drain().collect();
        for (_, (request_id, tx)) in live {
            tracing::error!(worker = self.index, request_id = &*request_id, "{msg}");
            let _ = tx.send(WorkerEvent::Error(msg.to_string()));
        }
    }
}

/// Handle to a worker thread; cheap to clone.
#[derive(Clone)]
pub struct WorkerHandle {
    index: usize,
    tx: flume::Sender<Msg>,
    shared: Arc<Shared>,
}

/// Called with every batch of KV events a worker emits. When the worker dies its
/// cache is gone: the sink gets a last `AllCleared`, numbered after everything before.
pub type EventSink = Box<dyn FnMut(Vec<KvEvent>) + Send>;

impl WorkerHandle {
    /// Spawn the worker thread owning a KV cache for `model`, on whichever backend
    /// it is (and, with a step timeout, the watchdog thread that fails it when a step
    /// hangs).
    pub fn spawn(
        cfg: WorkerConfig,
        model: AnyModel,
        on_events: EventSink,
    ) -> Result<WorkerHandle, WorkerError> {
        let exec = model
            .executor(cfg.scheduler.num_blocks, cfg.scheduler.block_size)
            .map_err(|e| WorkerError::Start(e.to_string()))?;
        let engine_cfg = EngineConfig {
            scheduler: cfg.scheduler.clone(),
            max_model_len: cfg.max_model_len,
            eos_token_ids: cfg.eos_token_ids.clone(),
            tokenizer: cfg.tokenizer.clone(),
        };
        let engine =
            Engine::new(engine_cfg, exec).map_err(|e| WorkerError::Start(e.to_string()))?;
        let (tx, rx) = flume::unbounded();
        let shared = Arc::new(Shared {
            index: cfg.index,
            snapshot: Mutex::new(WorkerSnapshot {
                alive: true,
                ..engine.snapshot()
            }),
            live: Mutex::new(HashMap::new()),
            step_started: Mutex::new(None),
            failed: AtomicBool::new(false),
            exited: AtomicBool::new(false),
        });
        let sh = shared.clone();
        let fault = cfg.fault;
        std::thread::Builder::new()
            .name(format!("reprise-worker-{}", cfg.index))
            .spawn(move || {
                run(engine, rx, &sh, on_events, fault);
                sh.live.lock().clear();
                sh.snapshot.lock().alive = false;
                sh.exited.store(true, Ordering::Release);
            })
            .map_err(|e| WorkerError::Start(e.to_string()))?;
        if let Some(limit) = cfg.step_timeout {
            let sh = shared.clone();
            std::thread::Builder::new()
                .name(format!("reprise-watchdog-{}", cfg.index))
                .spawn(move || watchdog(&sh, limit))
                .map_err(|e| WorkerError::Start(e.to_string()))?;
        }
        Ok(WorkerHandle {
            index: cfg.index,
            tx,
            shared,
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
        self.send_submit(req, etx, ack_tx)?;
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
        self.send_submit(req, etx, ack_tx)?;
        match ack_rx.recv_async().await {
            Ok(Ok(())) => Ok(erx),
            Ok(Err(e)) => Err(WorkerError::Rejected(e)),
            Err(_) => Err(WorkerError::Dead(self.index)),
        }
    }

    fn send_submit(
        &self,
        req: GenerateRequest,
        etx: flume::Sender<WorkerEvent>,
        ack: flume::Sender<Result<(), SubmitError>>,
    ) -> Result<(), WorkerError> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(WorkerError::Dead(self.index));
        }
        self.tx
            .send(Msg::Submit(Box::new(req), etx, ack))
            .map_err(|_| WorkerError::Dead(self.index))
    }

    /// Cancel a request; its KV blocks are released before the next step.
    pub fn cancel(&self, id: u64) {
        let _ = self.tx.send(Msg::Cancel(id));
    }

    /// Latest load and counters.
    pub fn snapshot(&self) -> WorkerSnapshot {
        *self.shared.snapshot.lock()
    }

    /// Stop taking requests; the thread exits once its live requests are done.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Msg::Shutdown);
    }
}

/// Fails the worker when a step runs past `limit`; exits with the worker.
fn watchdog(sh: &Shared, limit: Duration) {
    let tick = (limit / 8).clamp(Duration::from_millis(10), Duration::from_millis(250));
    while !sh.exited.load(Ordering::Acquire) && !sh.failed.load(Ordering::Acquire) {
        std::thread::sleep(tick);
        let started = *sh.step_started.lock();
        if started.is_some_and(|t| t.elapsed() > limit) {
            sh.fail(&format!(
                "worker {} failed: a step did not finish within {:.1} s (--step-timeout)",
                sh.index,
                limit.as_secs_f64()
            ));
        }
    }
}

fn run<E: Executor>(
    mut engine: Engine<E>,
    rx: flume::Receiver<Msg>,
    sh: &Shared,
    mut on_events: EventSink,
    fault: Option<Fault>,
) {
    let mut shutting_down = false;
    let mut steps = 0u64;
    // Sequence number of the next KV event (for the `AllCleared` sent if the worker dies).
    let mut next_seq = 0u64;
    let handle = |engine: &mut Engine<E>, msg: Msg, shutting_down: &mut bool| match msg {
        Msg::Submit(req, etx, ack) => {
            let (id, request_id) = (req.id, req.request_id.clone());
            let res = if *shutting_down {
                Err(SubmitError::ShuttingDown)
            } else {
                engine.submit(*req, etx.clone())
            };
            if res.is_ok() {
                tracing::debug!(
                    worker = sh.index,
                    request_id = &*request_id,
                    id,
                    "request taken in"
                );
                sh.live.lock().insert(id, (request_id, etx));
            }
            let _ = ack.send(res);
        }
        Msg::Cancel(id) => engine.cancel(id),
        Msg::Shutdown => *shutting_down = true,
    };
    let publish = |engine: &mut Engine<E>| {
        let ended = engine.drain_ended();
        if !ended.is_empty() {
            let mut live = sh.live.lock();
            for id in ended {
                live.remove(&id);
            }
        }
        let mut snap = sh.snapshot.lock();
        let alive = snap.alive;
        *snap = WorkerSnapshot {
            alive,
            ..engine.snapshot()
        };
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
        // Published before the step as well as after it, so that a router sees the
        // requests just taken in while a long step runs.
        publish(&mut engine);
        if engine.has_work() {
            steps += 1;
            *sh.step_started.lock() = Some(Instant::now());
            let result = catch_unwind(AssertUnwindSafe(|| {
                match fault {
                    Some(Fault::Panic(at)) if at == steps => {
                        panic!("injected fault at step {steps}")
                    }
                    Some(Fault::Hang(at)) if at == steps => loop {
                        std::thread::sleep(Duration::from_secs(3600));
                    },
                    _ => {}
                }
                engine.step()
            }));
            *sh.step_started.lock() = None;
            if sh.failed.load(Ordering::Acquire) {
                // The watchdog gave up on this step and failed the requests already.
                die(&mut engine, sh, &mut on_events, next_seq, "worker failed");
                return;
            }
            match result {
                Ok(Ok(())) => {}
                Ok(Err(ExecutorError::Step(e))) => {
                    tracing::error!(worker = sh.index, "step failed: {e}");
                    engine.fail_all(&format!("step execution failed: {e}"));
                }
                Ok(Err(e @ ExecutorError::Fault(_))) => {
                    let msg = format!("worker {} failed: {e}", sh.index);
                    die(&mut engine, sh, &mut on_events, next_seq, &msg);
                    return;
                }
                Err(_) => {
                    let msg = format!("worker {} panicked; request aborted", sh.index);
                    die(&mut engine, sh, &mut on_events, next_seq, &msg);
                    return;
                }
            }
        }
        let events = engine.drain_events();
        if let Some(last) = events.last() {
            next_seq = last.seq + 1;
            on_events(events);
        }
        publish(&mut engine);
    }
}

/// Ends a worker that cannot be trusted any more: fails its requests, takes it out
/// of service and tells the KV-event sink its cache is gone.
fn die<E: Executor>(
    engine: &mut Engine<E>,
    sh: &Shared,
    on_events: &mut EventSink,
    next_seq: u64,
    msg: &str,
) {
    tracing::error!(worker = sh.index, "{msg}; taking it out of service");
    // Every live request is in the registry (the watchdog may have failed them already).
    sh.fail(msg);
    let mut events = engine.drain_events();
    let seq = events.last().map_or(next_seq, |e| e.seq + 1);
    events.push(KvEvent {
        seq,
        data: KvEventData::AllCleared,
    });
    on_events(events);
}
