//! Decode-step profile: the default model's forward at batch 1 after a 128-token
//! prefill, timed per step, for `perf record` (not part of the test suite).
//! `cargo run --release -p reprise-engine --example decode_profile [-- STEPS [MODEL]]`

use reprise_engine::loader;
use reprise_engine::model::{Model, SeqInput};
use std::time::Instant;

fn main() {
    let steps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let src = std::env::args().nth(2);
    let m = loader::load(src.as_deref()).expect("load the model (run models/fetch-default.sh)");
    let model = m.cpu_model().expect("cpu model").clone();
    let bs = 16;
    let blocks = (128 + steps).div_ceil(bs) + 1;
    let mut cache = model.new_kv_cache(blocks, bs).expect("kv cache");
    let table: Vec<u32> = (0..blocks as u32).collect();
    let prompt: Vec<u32> = (0..128u32).map(|i| 300 + i * 7 % 20_000).collect();
    let batch = [SeqInput {
        tokens: &prompt,
        start_pos: 0,
        block_table: &table,
    }];
    let mut tok =
        reprise_engine::sampler::argmax(model.forward(&batch, &mut cache).expect("prefill").row(0));
    let t = Instant::now();
    for s in 0..steps {
        let toks = [tok];
        let b = [SeqInput {
            tokens: &toks,
            start_pos: 128 + s,
            block_table: &table,
        }];
        tok =
            reprise_engine::sampler::argmax(model.forward(&b, &mut cache).expect("decode").row(0));
    }
    let el = t.elapsed().as_secs_f64();
    println!(
        "{steps} decode steps: {:.2} ms/step ({:.1} tok/s)",
        el * 1e3 / steps as f64,
        steps as f64 / el
    );
}
