//! A real worker (SmolLM2-135M on CPU, paged attention, prefix cache,
//! scheduler) serving the public golden cases: greedy output must not depend
//! on batching, prefix-cache hits, prefill chunking or preemption.

use reprise_engine::cpu::attention::PagedKvCache;
use reprise_engine::cpu::Transformer;
use reprise_engine::loader;
use reprise_engine::model::{Logits, Model};
use reprise_engine::scheduler::SchedulerConfig;
use reprise_engine::types::GenerateRequest;
use reprise_engine::worker::{Fault, WorkerConfig, WorkerHandle};
use reprise_protocol::{FinishReason, SamplingParams, WorkerEvent};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

struct Shared {
    model: Arc<Transformer>,
    eos: Vec<u32>,
    max_model_len: usize,
}

fn shared() -> &'static Shared {
    static S: OnceLock<Shared> = OnceLock::new();
    S.get_or_init(|| {
        let path = reprise_text::meta::default_model_path();
        if !path.is_file() {
            let script =
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/fetch-default.sh");
            let status = std::process::Command::new("bash")
                .arg(script)
                .status()
                .expect("run fetch-default.sh");
            assert!(status.success(), "models/fetch-default.sh failed");
        }
        let lm = loader::load(path.to_str()).expect("load default model");
        Shared {
            model: lm.cpu_model().expect("cpu model"),
            eos: lm.meta.eos_token_ids,
            max_model_len: lm.meta.max_model_len,
        }
    })
}

struct Case {
    prompt: Vec<u32>,
    greedy: Vec<u32>,
}

impl Case {
    /// `max_tokens` that lets the reference end as it did: one past an EOS at the end
    /// (vLLM checks the length cap before EOS, so EOS on the last allowed token is
    /// `length`).
    fn budget(&self) -> usize {
        self.greedy.len() + usize::from(self.ends_with_eos())
    }

    fn ends_with_eos(&self) -> bool {
        self.greedy.last() == Some(&2)
    }
}

fn cases() -> Vec<Case> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/golden/smollm2_golden_public.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: Value = serde_json::from_str(&text).expect("golden json");
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|x| x.as_u64().expect("id") as u32)
            .collect()
    };
    v["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| Case {
            prompt: ids(&c["prompt_token_ids"]),
            greedy: ids(&c["greedy_token_ids"]),
        })
        .collect()
}

fn spawn(num_blocks: usize, budget: usize) -> WorkerHandle {
    let s = shared();
    let cfg = WorkerConfig {
        index: 0,
        scheduler: SchedulerConfig {
            num_blocks,
            block_size: 16,
            max_num_batched_tokens: budget,
            ..Default::default()
        },
        max_model_len: s.max_model_len,
        eos_token_ids: s.eos.clone(),
        tokenizer: None,
        step_timeout: None,
        fault: None,
    };
    WorkerHandle::spawn(cfg, s.model.clone(), Box::new(|_| {})).expect("spawn worker")
}

struct Output {
    tokens: Vec<u32>,
    cached: usize,
    reason: FinishReason,
}

fn request(id: u64, prompt: &[u32], max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        id,
        request_id: "test".into(),
        prompt: prompt.to_vec(),
        params: SamplingParams {
            temperature: 0.0,
            max_tokens,
            ..Default::default()
        },
        n: 1,
        cache_salt: Vec::new(),
        constraint: None,
    }
}

fn collect(rx: flume::Receiver<WorkerEvent>) -> Output {
    let mut tokens = Vec::new();
    for ev in rx.iter() {
        match ev {
            WorkerEvent::Token { token, .. } => tokens.push(token),
            WorkerEvent::Finished {
                cached_tokens,
                reason,
                ..
            } => {
                return Output {
                    tokens,
                    cached: cached_tokens,
                    reason,
                }
            }
            WorkerEvent::Error(e) => panic!("worker error: {e}"),
            WorkerEvent::Scheduled { .. } => {}
        }
    }
    panic!("worker closed the stream without finishing");
}

/// Submit all at once (so they share steps), then collect each.
fn run_batch(w: &WorkerHandle, reqs: Vec<GenerateRequest>) -> Vec<Output> {
    let rxs: Vec<_> = reqs
        .into_iter()
        .map(|r| w.submit(r).expect("submit"))
        .collect();
    rxs.into_iter().map(collect).collect()
}

fn wait_idle(w: &WorkerHandle) {
    let t = Instant::now();
    while w.snapshot().load.blocks_in_use > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "blocks still in use: {:?}",
            w.snapshot()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn greedy_is_identical_alone_batched_cached_and_chunked() {
    let cases = cases();
    let w = spawn(2048, 2048);
    // Alone, one request at a time.
    for (i, c) in cases.iter().enumerate() {
        let out = run_batch(&w, vec![request(i as u64, &c.prompt, c.budget())]).remove(0);
        assert_eq!(out.tokens, c.greedy, "case {i} alone");
        let want = if c.ends_with_eos() {
            FinishReason::Stop
        } else {
            FinishReason::Length
        };
        assert_eq!(out.reason, want, "case {i} finish reason");
    }
    // Again on the same worker: every prompt's full blocks now come from the prefix cache.
    for (i, c) in cases.iter().enumerate() {
        let out = run_batch(&w, vec![request(100 + i as u64, &c.prompt, c.budget())]).remove(0);
        assert_eq!(
            out.cached,
            (c.prompt.len() - 1) / 16 * 16,
            "case {i} cached tokens"
        );
        assert_eq!(
            out.tokens, c.greedy,
            "case {i} with its prefix from the cache"
        );
    }
    wait_idle(&w);

    // All cases in one batch with 8 unrelated requests, on a fresh worker.
    let w = spawn(2048, 2048);
    let mut reqs: Vec<GenerateRequest> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| request(i as u64, &c.prompt, c.budget()))
        .collect();
    for j in 0..8u32 {
        let noise: Vec<u32> = (0..(20 + 37 * j))
            .map(|t| 300 + (t * 7 + j * 13) % 5000)
            .collect();
        reqs.push(request(1000 + j as u64, &noise, 16));
    }
    let outs = run_batch(&w, reqs);
    for (i, c) in cases.iter().enumerate() {
        assert_eq!(outs[i].tokens, c.greedy, "case {i} batched with 15 others");
    }
    wait_idle(&w);

    // Prefill chunked at 64 tokens per step.
    let w = spawn(2048, 64);
    let reqs = cases
        .iter()
        .enumerate()
        .map(|(i, c)| request(i as u64, &c.prompt, c.budget()))
        .collect();
    let outs = run_batch(&w, reqs);
    for (i, c) in cases.iter().enumerate() {
        assert_eq!(
            outs[i].tokens, c.greedy,
            "case {i} with prefill chunked at 64"
        );
    }
    wait_idle(&w);
}

#[test]
fn fifty_concurrent_requests_through_a_small_pool_finish_correctly() {
    let cases: Vec<Case> = cases()
        .into_iter()
        .filter(|c| c.prompt.len() < 100)
        .collect();
    let max_tokens = 24;
    // References: each prompt alone on a roomy worker.
    let roomy = spawn(1024, 2048);
    let refs: Vec<Vec<u32>> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            run_batch(&roomy, vec![request(i as u64, &c.prompt, max_tokens)])
                .remove(0)
                .tokens
        })
        .collect();
    // 50 requests want ~5 blocks each; the pool has 24, so preemption is certain.
    let w = spawn(24, 512);
    let reqs = (0..50)
        .map(|i| request(i, &cases[i as usize % cases.len()].prompt, max_tokens))
        .collect();
    let outs = run_batch(&w, reqs);
    for (i, out) in outs.iter().enumerate() {
        assert_eq!(
            out.tokens,
            refs[i % cases.len()],
            "request {i} under preemption"
        );
    }
    wait_idle(&w);
    let snap = w.snapshot();
    assert!(
        snap.preemptions > 0,
        "the small pool forced preemptions: {snap:?}"
    );
    assert_eq!(snap.load.blocks_in_use, 0);
    assert_eq!(snap.load.running + snap.load.waiting, 0);
}

#[test]
fn dropping_the_stream_frees_the_blocks() {
    let w = spawn(256, 2048);
    let prompt: Vec<u32> = (0..200).map(|t| 400 + t).collect();
    let mut r = request(1, &prompt, 500);
    r.params.ignore_eos = true;
    let rx = w.submit(r).expect("submit");
    // Wait for a few tokens, then walk away.
    for _ in 0..3 {
        rx.recv().expect("token");
    }
    drop(rx);
    wait_idle(&w);
}

/// A worker over `model` with a fault and a watchdog.
fn faulty<M: Model + 'static>(
    model: Arc<M>,
    fault: Option<Fault>,
    step_timeout: Option<Duration>,
) -> WorkerHandle {
    let s = shared();
    let cfg = WorkerConfig {
        index: 3,
        scheduler: SchedulerConfig {
            num_blocks: 64,
            ..Default::default()
        },
        max_model_len: s.max_model_len,
        eos_token_ids: s.eos.clone(),
        tokenizer: None,
        step_timeout,
        fault,
    };
    WorkerHandle::spawn(cfg, model, Box::new(|_| {})).expect("spawn")
}

/// Runs one request on `w` and checks it fails, the worker reports dead and
/// refuses more work; returns how long the failure took to arrive.
fn assert_fails(w: &WorkerHandle) -> Duration {
    let t = Instant::now();
    let rx = w.submit(request(1, &[1, 2, 3, 4], 10)).expect("submit");
    let mut error = None;
    for ev in rx.iter() {
        if let WorkerEvent::Error(e) = ev {
            error = Some(e);
            break;
        }
    }
    let took = t.elapsed();
    assert!(error.is_some(), "the request must get an error");
    while w.snapshot().alive {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(w.submit(request(2, &[1, 2], 1)).is_err());
    took
}

#[test]
fn a_panicking_worker_fails_its_requests_and_reports_dead() {
    let w = faulty(shared().model.clone(), Some(Fault::Panic(2)), None);
    assert_fails(&w);
}

#[test]
fn a_hung_step_fails_the_worker_within_the_step_timeout() {
    let limit = Duration::from_millis(400);
    let w = faulty(shared().model.clone(), Some(Fault::Hang(2)), Some(limit));
    let took = assert_fails(&w);
    assert!(
        took < limit + Duration::from_secs(2),
        "failed after {took:?}"
    );
}

/// A model that loses the last row of logits whenever it runs a batch.
struct DropsARow(Arc<Transformer>);

impl Model for DropsARow {
    type Kv = PagedKvCache;

    fn new_kv_cache(
        &self,
        num_blocks: usize,
        block_size: usize,
    ) -> Result<PagedKvCache, reprise_engine::model::ModelError> {
        self.0.new_kv_cache(num_blocks, block_size)
    }

    fn config(&self) -> &reprise_engine::model::ModelConfig {
        self.0.config()
    }

    fn forward(
        &self,
        batch: &[reprise_engine::model::SeqInput],
        cache: &mut PagedKvCache,
    ) -> Result<Logits, reprise_engine::model::ModelError> {
        let l = self.0.forward(batch, cache)?;
        let rows: Vec<f32> = l
            .iter()
            .take(l.rows().saturating_sub(1))
            .flatten()
            .copied()
            .collect();
        Logits::new(rows, l.vocab())
    }
}

#[test]
fn a_model_returning_the_wrong_number_of_rows_fails_the_worker() {
    let w = faulty(Arc::new(DropsARow(shared().model.clone())), None, None);
    assert_fails(&w);
}

/// The tiny Mistral (every layer slides a window of 64) on a pool of 16 blocks of 16
/// tokens, far too few for its 700-token case without giving back the blocks that slid
/// out: prefill chunked at 64 tokens per step, all six transformers goldens exact, twice
/// (the second time partly from the prefix cache), and no block left in use.
#[test]
fn a_sliding_window_model_gives_back_what_slid_out() {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/golden/tiny/mistral");
    let lm = loader::load(dir.to_str()).expect("load tiny mistral");
    assert_eq!(lm.model.config().uniform_window(), Some(64));
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).expect("golden"))
            .expect("json");
    let cfg = WorkerConfig {
        index: 0,
        scheduler: SchedulerConfig {
            num_blocks: 16,
            block_size: 16,
            max_num_batched_tokens: 64,
            ..Default::default()
        },
        max_model_len: lm.meta.max_model_len,
        eos_token_ids: lm.meta.eos_token_ids.clone(),
        tokenizer: None,
        step_timeout: None,
        fault: None,
    };
    let w = WorkerHandle::spawn(cfg, lm.cpu_model().expect("cpu"), Box::new(|_| {}))
        .expect("spawn worker");
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|x| x.as_u64().expect("id") as u32)
            .collect()
    };
    for round in 0..2u64 {
        for (i, case) in golden["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .enumerate()
        {
            let prompt = ids(&case["prompt_token_ids"]);
            let want = ids(&case["greedy_token_ids"]);
            let mut req = request(round * 100 + i as u64, &prompt, want.len());
            req.params.ignore_eos = true;
            let out = run_batch(&w, vec![req]).remove(0);
            assert_eq!(out.tokens, want, "round {round}, case {}", case["id"]);
        }
    }
    wait_idle(&w);
}
