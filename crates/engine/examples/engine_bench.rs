//! The engine benchmark: one worker serving the default model through the
//! scheduler, block pool and prefix cache, with the CPU's own limits measured
//! in the same run so every figure reads as a fraction of the hardware.
//!
//! `cargo run --release -p reprise-engine --example engine_bench [-- --model SRC]
//!  [--llama-bench BIN [--llama-f32 F32.gguf]] [--short] [--numerics exact|fast]`
//!
//! Prints prefill tokens/s at 512 and 2,048 tokens, decode tokens/s at batch
//! 1, 8 and 32 (and at batch 8 sampled with `top_p = 0.9` against greedy, runs
//! interleaved), TTFT of a 2,000-token prompt cold and warm (prefix cached),
//! and the yardsticks: f32 matrix-product rate and memory copy bandwidth. Given a
//! `llama-bench` binary (`scripts/llama-cpp-yardstick.sh build` makes one; its
//! `quantize … F32` the F32 form of the GGUF), it runs llama.cpp on the same GGUF (and its F32 form) with
//! the same threads right after, and prints both engines side by side. `--short`
//! (for 1B+ models on a few cores) measures only prefill 512 and batch-1 decode, and
//! llama-bench only `-p 512 -n 64 -r 2`.

use rayon::prelude::*;
use reprise_engine::cpu::ops;
use reprise_engine::loader;
use reprise_engine::model::ModelConfig;
use reprise_engine::scheduler::SchedulerConfig;
use reprise_engine::types::GenerateRequest;
use reprise_engine::worker::{WorkerConfig, WorkerHandle};
use reprise_protocol::{SamplingParams, WorkerEvent};
use std::time::{Duration, Instant};

fn matmul_gflops() -> f64 {
    let n = 1024;
    let x: Vec<f32> = (0..n * n).map(|i| (i % 7) as f32 * 0.1).collect();
    let w: Vec<f32> = (0..n * n).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut out = vec![0.0f32; n * n];
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        ops::linear(&mut out, &x, &w, n, n, n, false);
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (n * n * n) as f64 / best / 1e9
}

fn copy_gbps() -> f64 {
    let len = 1 << 28; // 1 GiB of f32
    let src = vec![1.0f32; len];
    let mut dst = vec![0.0f32; len];
    let chunk = len / rayon::current_num_threads().max(1);
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        dst.par_chunks_mut(chunk)
            .zip(src.par_chunks(chunk))
            .for_each(|(d, s)| d.copy_from_slice(s));
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    // Read + write traffic.
    2.0 * (len * 4) as f64 / best / 1e9
}

/// Multiply-adds of the linear layers per token (the vocabulary head excluded).
fn layer_params(c: &ModelConfig) -> f64 {
    let (h, hd) = (c.hidden_size, c.head_dim);
    let attn = h * c.num_heads * hd * 2 + h * c.num_kv_heads * hd * 2;
    let mlp = 3 * h * c.intermediate_size;
    (c.num_layers * (attn + mlp)) as f64
}

/// Matmul FLOPs per prompt token (the linear layers; the head of the last token is ignored).
fn flops_per_token(c: &ModelConfig) -> f64 {
    2.0 * layer_params(c)
}

/// Matmul FLOPs per decoded token (the linear layers and the vocabulary head).
fn flops_per_decoded_token(c: &ModelConfig) -> f64 {
    2.0 * (layer_params(c) + (c.vocab_size * c.hidden_size) as f64)
}

/// What llama-bench measured: (model file, test, tokens/s).
fn llama_bench(
    bin: &str,
    models: &[String],
    threads: usize,
    short: bool,
) -> Vec<(String, String, f64)> {
    let mut cmd = std::process::Command::new(bin);
    for m in models {
        cmd.args(["-m", m]);
    }
    let (p, n, r) = if short {
        ("512", "64", "2")
    } else {
        ("512,2048", "128", "3")
    };
    cmd.args([
        "-t",
        &threads.to_string(),
        "-p",
        p,
        "-n",
        n,
        "-r",
        r,
        "-o",
        "json",
    ]);
    let out = match cmd.output() {
        Ok(o) if o.status.success() => o.stdout,
        Ok(o) => {
            eprintln!("llama-bench failed: {}", String::from_utf8_lossy(&o.stderr));
            return Vec::new();
        }
        Err(e) => {
            eprintln!("cannot run {bin}: {e}");
            return Vec::new();
        }
    };
    let runs: Vec<serde_json::Value> = serde_json::from_slice(&out).unwrap_or_default();
    runs.iter()
        .filter_map(|r| {
            let (p, n) = (r["n_prompt"].as_u64()?, r["n_gen"].as_u64()?);
            let test = if n > 0 {
                format!("tg{n}")
            } else {
                format!("pp{p}")
            };
            let file = std::path::Path::new(r["model_filename"].as_str()?)
                .file_name()?
                .to_string_lossy()
                .into_owned();
            Some((file, test, r["avg_ts"].as_f64()?))
        })
        .collect()
}

fn arg(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

fn prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| {
            300 + (i
                .wrapping_mul(7919)
                .wrapping_add(seed.wrapping_mul(104_729)))
                % 20_000
        })
        .collect()
}

fn greedy() -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        ignore_eos: true,
        ..Default::default()
    }
}

fn request(id: u64, prompt: Vec<u32>, max_tokens: usize) -> GenerateRequest {
    request_with(id, prompt, max_tokens, greedy())
}

fn request_with(
    id: u64,
    prompt: Vec<u32>,
    max_tokens: usize,
    params: SamplingParams,
) -> GenerateRequest {
    GenerateRequest {
        id,
        request_id: "bench".into(),
        prompt,
        params: SamplingParams {
            max_tokens,
            ..params
        },
        n: 1,
        cache_salt: Vec::new(),
        constraint: None,
    }
}

/// Seconds until the first token of a fresh request.
fn ttft(w: &WorkerHandle, id: u64, p: Vec<u32>) -> f64 {
    let t = Instant::now();
    let rx = w.submit(request(id, p, 1)).expect("submit");
    for ev in rx.iter() {
        match ev {
            WorkerEvent::Token { .. } => return t.elapsed().as_secs_f64(),
            WorkerEvent::Error(e) => panic!("{e}"),
            WorkerEvent::Finished { .. } | WorkerEvent::Scheduled { .. } => {}
        }
    }
    panic!("no token")
}

/// Decode tokens/s with `batch` concurrent sequences, after all have prefilled.
fn decode_rate(w: &WorkerHandle, first_id: u64, batch: usize, steps: usize) -> f64 {
    decode_rate_with(w, first_id, batch, steps, greedy())
}

/// [`decode_rate`] sampling under `params`.
fn decode_rate_with(
    w: &WorkerHandle,
    first_id: u64,
    batch: usize,
    steps: usize,
    params: SamplingParams,
) -> f64 {
    let rxs: Vec<_> = (0..batch)
        .map(|b| {
            w.submit(request_with(
                first_id + b as u64,
                prompt(9000 + first_id as u32 + b as u32, 128),
                steps,
                params.clone(),
            ))
            .expect("submit")
        })
        .collect();
    // Wait until each has its first token (prefill done), then time the rest.
    for rx in &rxs {
        loop {
            if let WorkerEvent::Token { .. } = rx.recv().expect("event") {
                break;
            }
        }
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
    let src = arg("--model");
    let short = std::env::args().any(|a| a == "--short");
    if let Some(n) = arg("--numerics") {
        let Some(n) = reprise_engine::cpu::quant::Numerics::parse(&n) else {
            eprintln!("error: --numerics must be exact or fast");
            std::process::exit(2)
        };
        reprise_engine::cpu::quant::set_numerics(n);
    }
    println!(
        "measuring yardsticks ({} threads)...",
        rayon::current_num_threads()
    );
    let gflops = matmul_gflops();
    let gbps = copy_gbps();
    let loaded = loader::load(src.as_deref()).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1)
    });
    let cfg = loaded.model.config().clone();
    let (weight_bytes, formats) = loaded.model.weights();
    let model = loaded.model.clone();
    let worker_cfg = WorkerConfig {
        index: 0,
        scheduler: SchedulerConfig {
            num_blocks: 4096,
            block_size: 16,
            max_num_batched_tokens: 2048,
            max_num_seqs: 256,
            ..Default::default()
        },
        max_model_len: loaded.meta.max_model_len,
        eos_token_ids: loaded.meta.eos_token_ids.clone(),
        tokenizer: None,
        step_timeout: None,
        fault: None,
    };
    let w = WorkerHandle::spawn(worker_cfg, model.clone(), Box::new(|_| {})).expect("spawn worker");
    let mut id = 0u64;
    let mut next = || {
        id += 1;
        id
    };

    // Warm up the threads and caches.
    ttft(&w, next(), prompt(1, 64));

    let best_prefill = |n: usize, next: &mut dyn FnMut() -> u64| {
        (0..if short { 2 } else { 3 })
            .map(|r| n as f64 / ttft(&w, next(), prompt(100 + r + n as u32, n)))
            .fold(0.0, f64::max)
    };
    let p512 = best_prefill(512, &mut next);
    if short {
        let d1 = decode_rate(&w, 10_000, 1, 64);
        println!(
            "\nmodel: {} (weights {formats}, {:.1} MB); kernels {}, {} numerics",
            loaded.meta.name,
            weight_bytes as f64 / 1e6,
            reprise_engine::simd::isa().name(),
            reprise_engine::cpu::quant::numerics().name()
        );
        println!("yardsticks: f32 matmul {gflops:.1} GFLOP/s; memory copy {gbps:.1} GB/s");
        println!("| prefill, 512 tokens | {p512:.1} tok/s |");
        println!(
            "| decode, batch 1 | {d1:.2} tok/s | {:.0}% of copy bandwidth |",
            100.0 * d1 * weight_bytes as f64 / (gbps * 1e9)
        );
        drop(w);
        compare_llama(src.as_deref(), &[("pp512", p512), ("tg64", d1)], true);
        return;
    }
    let p2048 = best_prefill(2048, &mut next);
    let d1 = decode_rate(&w, 10_000, 1, 64);
    let d8 = decode_rate(&w, 20_000, 8, 64);
    let d32 = decode_rate(&w, 30_000, 32, 64);
    // Sampling cost: batch 8 greedy against temperature 1 / top_p 0.9, interleaved
    // runs on the same prompts, best of three each.
    let nucleus = SamplingParams {
        temperature: 1.0,
        top_p: 0.9,
        seed: Some(1),
        ignore_eos: true,
        ..Default::default()
    };
    let (mut g8, mut p8) = (0.0f64, 0.0f64);
    for r in 0..3u64 {
        g8 = g8.max(decode_rate(&w, 40_000 + 100 * r, 8, 64));
        p8 = p8.max(decode_rate_with(
            &w,
            40_000 + 100 * r,
            8,
            64,
            nucleus.clone(),
        ));
    }
    let long = prompt(777, 2000);
    let cold = ttft(&w, next(), long.clone());
    std::thread::sleep(Duration::from_millis(10));
    let warm = ttft(&w, next(), long);

    let fpt = flops_per_token(&cfg);
    let wb = weight_bytes as f64;
    println!();
    println!(
        "model: {} ({} layers, hidden {}; weights {formats}, {:.1} MB)",
        loaded.meta.name,
        cfg.num_layers,
        cfg.hidden_size,
        wb / 1e6
    );
    println!("yardsticks: f32 matmul {gflops:.1} GFLOP/s; memory copy {gbps:.1} GB/s");
    println!();
    println!("| figure | value | fraction of the hardware |");
    println!("|---|---|---|");
    let pf = |r: f64| format!("{:.0}% of matmul rate", 100.0 * r * fpt / (gflops * 1e9));
    let df = |r: f64| {
        format!(
            "{:.0}% of copy bandwidth (weights once per step)",
            100.0 * r * wb / (gbps * 1e9)
        )
    };
    println!("| prefill, 512 tokens | {p512:.0} tok/s | {} |", pf(p512));
    println!(
        "| prefill, 2,048 tokens | {p2048:.0} tok/s | {} |",
        pf(p2048)
    );
    println!("| decode, batch 1 | {d1:.1} tok/s | {} |", df(d1));
    println!(
        "| decode, batch 8 | {d8:.1} tok/s | {:.1}x batch 1 |",
        d8 / d1
    );
    println!(
        "| decode, batch 32 | {d32:.1} tok/s | {:.1}x batch 1; {:.0}% of matmul rate |",
        d32 / d1,
        100.0 * d32 * flops_per_decoded_token(&cfg) / (gflops * 1e9)
    );
    println!(
        "| decode, batch 8, top_p 0.9 (greedy {g8:.1} in the same runs) | {p8:.1} tok/s | {:.1}% of greedy |",
        100.0 * p8 / g8
    );
    println!(
        "| TTFT, 2,000-token prompt, cold | {:.0} ms | |",
        cold * 1e3
    );
    println!(
        "| TTFT, 2,000-token prompt, warm (1,984 cached) | {:.1} ms | {:.0}x faster than cold |",
        warm * 1e3,
        cold / warm
    );

    drop(w);
    compare_llama(
        src.as_deref(),
        &[("pp512", p512), ("pp2048", p2048), ("tg128", d1)],
        false,
    );
}

/// Runs llama-bench (when `--llama-bench` names it) on the same GGUF and prints
/// both engines' figures side by side.
fn compare_llama(src: Option<&str>, ours: &[(&str, f64)], short: bool) {
    let Some(bin) = arg("--llama-bench") else {
        return;
    };
    let gguf = src.map(str::to_owned).unwrap_or_else(|| {
        reprise_text::meta::default_model_path()
            .to_string_lossy()
            .into_owned()
    });
    let mut models = vec![gguf.clone()];
    models.extend(arg("--llama-f32"));
    println!("\nrunning llama-bench on {} ...", models.join(" and "));
    let runs = llama_bench(&bin, &models, rayon::current_num_threads(), short);
    if runs.is_empty() {
        return;
    }
    let files: Vec<String> = models
        .iter()
        .map(|m| {
            std::path::Path::new(m)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    println!();
    print!("| figure | reprise |");
    for f in &files {
        print!(" llama.cpp {f} |");
    }
    println!(" reprise ÷ llama.cpp's best |");
    println!("|---|---:|{}---:|", "---:|".repeat(files.len()));
    for &(test, v) in ours {
        let label = match test {
            "pp512" => "prefill, 512",
            "pp2048" => "prefill, 2,048",
            t => {
                if t == "tg64" {
                    "decode, batch 1 (llama.cpp: tg64)"
                } else {
                    "decode, batch 1 (llama.cpp: tg128)"
                }
            }
        };
        print!("| {label} | {v:.1} tok/s |");
        let mut best = 0.0f64;
        for f in &files {
            let r = runs
                .iter()
                .find(|(file, t, _)| file == f && t == test)
                .map(|r| r.2);
            match r {
                Some(x) => {
                    best = best.max(x);
                    print!(" {x:.1} |");
                }
                None => print!(" – |"),
            }
        }
        println!(" {:.2}x |", if best > 0.0 { v / best } else { 0.0 });
    }
}
