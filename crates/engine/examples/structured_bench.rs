//! Decode throughput with and without a JSON-schema grammar, at batch 1 and 8,
//! measured in one run on the same worker:
//! `cargo run --release -p reprise-engine --example structured_bench [-- --model SRC]`.
//!
//! The schema (a list of at least 40 integers) cannot finish within the 64 tokens
//! timed, so both sides generate the same number of tokens; the unconstrained side
//! ignores EOS for the same reason.

use reprise_engine::loader;
use reprise_engine::scheduler::SchedulerConfig;
use reprise_engine::types::GenerateRequest;
use reprise_engine::worker::{WorkerConfig, WorkerHandle};
use reprise_protocol::{SamplingParams, WorkerEvent};
use reprise_text::grammar::{GrammarCompiler, GrammarSpec};
use std::sync::Arc;
use std::time::Instant;

const STEPS: usize = 64;

fn rate(
    w: &WorkerHandle,
    first_id: u64,
    batch: usize,
    reqs: impl Fn(u64) -> GenerateRequest,
) -> f64 {
    let rxs: Vec<_> = (0..batch)
        .map(|b| w.submit(reqs(first_id + b as u64)).expect("submit"))
        .collect();
    // Time decode only: from every sequence's first token to the last token.
    for rx in &rxs {
        while !matches!(rx.recv().expect("event"), WorkerEvent::Token { .. }) {}
    }
    let t = Instant::now();
    let mut tokens = 0usize;
    for rx in &rxs {
        for ev in rx.iter() {
            if let WorkerEvent::Token { .. } = ev {
                tokens += 1;
            }
        }
    }
    tokens as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let src = std::env::args().skip_while(|a| a != "--model").nth(1);
    let loaded = loader::load(src.as_deref()).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1)
    });
    let tokenizer = Arc::new(loaded.meta.tokenizer.clone());
    let eos = loaded.meta.eos_token_ids[0];
    let vocab = loaded.model.config().vocab_size;
    let t = Instant::now();
    let compiler = GrammarCompiler::new(tokenizer.clone(), vocab, eos).expect("grammar compiler");
    let trie_s = t.elapsed().as_secs_f64();
    let schema = serde_json::json!({"type": "array", "items": {"type": "integer"}, "minItems": 40});
    let t = Instant::now();
    let constraint = compiler
        .compile(&GrammarSpec::JsonSchema(schema))
        .expect("schema");
    let compile_ms = t.elapsed().as_secs_f64() * 1e3;
    let cfg = WorkerConfig {
        index: 0,
        scheduler: SchedulerConfig {
            num_blocks: 2048,
            block_size: 16,
            ..Default::default()
        },
        max_model_len: loaded.meta.max_model_len,
        eos_token_ids: loaded.meta.eos_token_ids.clone(),
        tokenizer: Some(tokenizer.clone()),
        step_timeout: None,
        fault: None,
    };
    let w = WorkerHandle::spawn(cfg, loaded.model.clone(), Box::new(|_| {})).expect("worker");
    let prompt = tokenizer
        .encode("Write a list of numbers as a JSON array:", false)
        .expect("prompt");
    let req = |id: u64, grammar: bool| GenerateRequest {
        id,
        request_id: "bench".into(),
        prompt: prompt.clone(),
        params: SamplingParams {
            temperature: 0.0,
            max_tokens: STEPS,
            ignore_eos: !grammar,
            ..Default::default()
        },
        n: 1,
        // A distinct salt per request, so no prefix is shared between the two sides.
        cache_salt: id.to_le_bytes().to_vec(),
        constraint: grammar.then(|| constraint.clone()),
    };
    println!("token trie {trie_s:.2} s (once per process); schema compiled in {compile_ms:.1} ms");
    println!("| batch | decode tok/s, free | with JSON schema | ratio |");
    println!("|---:|---:|---:|---:|");
    let mut id = 0;
    // Warm up both paths once.
    rate(&w, id, 1, |i| req(i, false));
    rate(&w, id + 10, 1, |i| req(i, true));
    id += 100;
    for batch in [1usize, 8] {
        let mut free = 0.0f64;
        let mut constrained = 0.0f64;
        // Alternate the two sides, best of three each, so drift hits both alike.
        for _ in 0..3 {
            free = free.max(rate(&w, id, batch, |i| req(i, false)));
            id += 100;
            constrained = constrained.max(rate(&w, id, batch, |i| req(i, true)));
            id += 100;
        }
        println!(
            "| {batch} | {free:.1} | {constrained:.1} | {:.2}x |",
            constrained / free
        );
    }
}
