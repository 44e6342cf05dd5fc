//! The GPU side of `scripts/gpu-check.sh` (feature `cuda`): everything the check
//! needs from our engine, with JSON on stdout for scripts/gpu_check.py.
//!
//! ```text
//! cuda_check kernels [--device N] [--seed S]
//! cuda_check logits  --model DIR --prompts FILE.json --steps 32 [--device N]
//! cuda_check bench   --model DIR [--device N] [--batches 1,8,32,64,128] [--ctx 512]
//!                    [--prefill 2048,8192] [--ttft 10000 --cached 9900]
//!                    [--concurrent 32 --max-tokens 256 --prompt-len 128]
//! ```

use reprise_engine::cuda::CudaModel;
use reprise_engine::loader::{load_on, ModelDevice};
use reprise_engine::model::{Model, SeqInput};
use reprise_engine::scheduler::SchedulerConfig;
use reprise_engine::types::GenerateRequest;
use reprise_engine::worker::{WorkerConfig, WorkerHandle};
use reprise_protocol::{SamplingParams, WorkerEvent};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

type Res<T> = Result<T, String>;

/// The model loaded onto GPU `dev`.
fn cuda_model(dir: &str, dev: usize) -> Res<Arc<CudaModel>> {
    load_on(Some(dir), ModelDevice::Cuda(dev))
        .map_err(|e| e.to_string())?
        .model
        .into_any()
        .downcast::<CudaModel>()
        .map_err(|_| "the model was loaded on the CPU".to_string())
}

fn opt(args: &HashMap<String, String>, k: &str) -> Option<String> {
    args.get(k).cloned()
}

fn num(args: &HashMap<String, String>, k: &str, default: usize) -> Res<usize> {
    match args.get(k) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| format!("--{k}: '{v}' is not a number")),
    }
}

fn list(args: &HashMap<String, String>, k: &str, default: &[usize]) -> Res<Vec<usize>> {
    match args.get(k) {
        None => Ok(default.to_vec()),
        Some(v) if v.is_empty() => Ok(Vec::new()),
        Some(v) => v
            .split(',')
            .map(|x| {
                x.trim()
                    .parse()
                    .map_err(|_| format!("--{k}: bad list '{v}'"))
            })
            .collect(),
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = argv.first().cloned() else {
        eprintln!("usage: cuda_check kernels|logits|bench [--option value]...");
        std::process::exit(2);
    };
    let mut args = HashMap::new();
    let mut it = argv[1..].iter();
    while let Some(k) = it.next() {
        let key = k.trim_start_matches("--").to_string();
        args.insert(key, it.next().cloned().unwrap_or_default());
    }
    let r = match cmd.as_str() {
        "kernels" => kernels(&args),
        "logits" => logits(&args),
        "bench" => bench(&args),
        other => Err(format!("unknown command {other}")),
    };
    if let Err(e) = r {
        eprintln!("cuda_check {cmd}: {e}");
        std::process::exit(1);
    }
}

fn kernels(args: &HashMap<String, String>) -> Res<()> {
    let dev = num(args, "device", 0)?;
    let seed = num(args, "seed", 0x5eed)? as u64;
    let results = reprise_engine::cuda::self_test(dev, seed).map_err(|e| e.to_string())?;
    let mut failed = 0;
    for r in &results {
        failed += usize::from(!r.passed());
        println!(
            "{}",
            serde_json::json!({"kernel": r.name, "rel_err": r.rel_err, "tol": r.tolerance, "pass": r.passed()})
        );
    }
    if failed > 0 {
        return Err(format!(
            "{failed} of {} kernel checks failed",
            results.len()
        ));
    }
    Ok(())
}

/// A bump allocator of KV blocks for driving the model directly.
struct Blocks {
    next: u32,
    bs: usize,
}

impl Blocks {
    fn table(&mut self, tokens: usize) -> Vec<u32> {
        let n = tokens.div_ceil(self.bs) as u32;
        let t = (self.next..self.next + n).collect();
        self.next += n;
        t
    }
}

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best as u32
}

fn logits(args: &HashMap<String, String>) -> Res<()> {
    let dev = num(args, "device", 0)?;
    let model_dir = opt(args, "model").ok_or("--model is required")?;
    let prompts_path = opt(args, "prompts").ok_or("--prompts is required")?;
    let steps = num(args, "steps", 32)?;
    let text =
        std::fs::read_to_string(&prompts_path).map_err(|e| format!("{prompts_path}: {e}"))?;
    let prompts: Vec<Vec<u32>> =
        serde_json::from_str(&text).map_err(|e| format!("{prompts_path}: {e}"))?;
    let model = cuda_model(&model_dir, dev)?;
    let bs = 16;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0) + steps + 1;
    let mut cache = model
        .new_kv_cache(prompts.len() * longest.div_ceil(bs) + 1, bs)
        .map_err(|e| e.to_string())?;
    let mut blocks = Blocks { next: 0, bs };
    let tables: Vec<Vec<u32>> = prompts.iter().map(|_| blocks.table(longest)).collect();
    // Prefill all prompts in one batch (exercises the prefill kernel with several sequences).
    let batch: Vec<SeqInput> = prompts
        .iter()
        .zip(&tables)
        .map(|(p, t)| SeqInput {
            tokens: p,
            start_pos: 0,
            block_table: t,
        })
        .collect();
    let first = model
        .forward(&batch, &mut cache)
        .map_err(|e| e.to_string())?;
    let mut tokens: Vec<Vec<u32>> = first.iter().map(|l| vec![argmax(l)]).collect();
    let mut step_logits: Vec<Vec<Vec<f32>>> = first.iter().map(|l| vec![l.to_vec()]).collect();
    for step in 1..steps {
        let last: Vec<[u32; 1]> = tokens.iter().map(|t| [t[step - 1]]).collect();
        let batch: Vec<SeqInput> = prompts
            .iter()
            .zip(&tables)
            .zip(&last)
            .map(|((p, t), l)| SeqInput {
                tokens: l,
                start_pos: p.len() + step - 1,
                block_table: t,
            })
            .collect();
        let out = model
            .forward(&batch, &mut cache)
            .map_err(|e| e.to_string())?;
        for (i, l) in out.iter().enumerate() {
            tokens[i].push(argmax(l));
            // Keep a few full logit rows per prompt for the relative-error comparison.
            if step < 4 {
                step_logits[i].push(l.to_vec());
            }
        }
    }
    println!(
        "{}",
        serde_json::json!({"tokens": tokens, "logits": step_logits})
    );
    Ok(())
}

fn bench(args: &HashMap<String, String>) -> Res<()> {
    let dev = num(args, "device", 0)?;
    let model_dir = opt(args, "model").ok_or("--model is required")?;
    let t0 = Instant::now();
    let model = cuda_model(&model_dir, dev)?;
    eprintln!("loaded {model_dir} in {:.1}s", t0.elapsed().as_secs_f64());
    let bs = 16;
    let mut report = serde_json::Map::new();
    let ctx = num(args, "ctx", 512)?;
    let decode_steps = num(args, "decode-steps", 32)?;
    let vocab = model.config().vocab_size as u32;
    let tok = |i: usize| (i as u32 * 7919 + 13) % vocab;

    // Decode: `b` sequences with `ctx` cached positions each, timed over decode_steps.
    let mut decode = serde_json::Map::new();
    for b in list(args, "batches", &[1, 8, 32, 64, 128])? {
        let per = (ctx + decode_steps + 1).div_ceil(bs);
        let mut cache = model
            .new_kv_cache(b * per + 1, bs)
            .map_err(|e| e.to_string())?;
        let mut blocks = Blocks { next: 0, bs };
        let tables: Vec<Vec<u32>> = (0..b)
            .map(|_| blocks.table(ctx + decode_steps + 1))
            .collect();
        let prompt: Vec<u32> = (0..ctx).map(tok).collect();
        for t in &tables {
            let s = [SeqInput {
                tokens: &prompt,
                start_pos: 0,
                block_table: t,
            }];
            model.forward(&s, &mut cache).map_err(|e| e.to_string())?;
        }
        let one = [tok(1)];
        let mut run = |steps: usize, from: usize| -> Res<f64> {
            let t = Instant::now();
            for s in 0..steps {
                let batch: Vec<SeqInput> = tables
                    .iter()
                    .map(|tb| SeqInput {
                        tokens: &one,
                        start_pos: ctx + from + s,
                        block_table: tb,
                    })
                    .collect();
                model
                    .forward(&batch, &mut cache)
                    .map_err(|e| e.to_string())?;
            }
            Ok(t.elapsed().as_secs_f64())
        };
        run(2, 0)?; // warm-up: workspace growth, cuBLAS heuristics
        let secs = run(decode_steps - 2, 2)?;
        let tps = (b * (decode_steps - 2)) as f64 / secs;
        eprintln!(
            "decode batch {b}: {tps:.0} tok/s ({:.2} ms/step)",
            1e3 * secs / (decode_steps - 2) as f64
        );
        decode.insert(b.to_string(), serde_json::json!({"tok_s": tps, "step_ms": 1e3 * secs / (decode_steps - 2) as f64, "ctx": ctx}));
    }
    report.insert("decode".into(), decode.into());

    // Prefill: one prompt of n tokens in chunks of max-num-batched-tokens (default: whole).
    let mut prefill = serde_json::Map::new();
    for n in list(args, "prefill", &[2048, 8192])? {
        let chunk = num(args, "chunk", n)?;
        let mut cache = model
            .new_kv_cache(n.div_ceil(bs) + 1, bs)
            .map_err(|e| e.to_string())?;
        let mut blocks = Blocks { next: 0, bs };
        let table = blocks.table(n);
        let prompt: Vec<u32> = (0..n).map(tok).collect();
        let mut run = || -> Res<f64> {
            let t = Instant::now();
            let mut start = 0;
            while start < n {
                let end = (start + chunk).min(n);
                let s = [SeqInput {
                    tokens: &prompt[start..end],
                    start_pos: start,
                    block_table: &table,
                }];
                model.forward(&s, &mut cache).map_err(|e| e.to_string())?;
                start = end;
            }
            Ok(t.elapsed().as_secs_f64())
        };
        run()?;
        let secs = run()?;
        eprintln!("prefill {n}: {:.0} tok/s", n as f64 / secs);
        prefill.insert(
            n.to_string(),
            serde_json::json!({"tok_s": n as f64 / secs, "secs": secs}),
        );
    }
    report.insert("prefill".into(), prefill.into());

    // TTFT: a long prompt cold, then the same prompt with `cached` positions already in blocks.
    let n = num(args, "ttft", 10_000)?;
    if n > 0 {
        let cached = num(args, "cached", 9_900)?.min(n - 1);
        let chunk = num(args, "chunk", 8192)?;
        let mut cache = model
            .new_kv_cache(n.div_ceil(bs) + 1, bs)
            .map_err(|e| e.to_string())?;
        let mut blocks = Blocks { next: 0, bs };
        let table = blocks.table(n);
        let prompt: Vec<u32> = (0..n).map(|i| tok(i + 5)).collect();
        let mut prefill_from = |from: usize| -> Res<f64> {
            let t = Instant::now();
            let mut start = from;
            while start < n {
                let end = (start + chunk).min(n);
                let s = [SeqInput {
                    tokens: &prompt[start..end],
                    start_pos: start,
                    block_table: &table,
                }];
                model.forward(&s, &mut cache).map_err(|e| e.to_string())?;
                start = end;
            }
            Ok(t.elapsed().as_secs_f64())
        };
        prefill_from(0)?; // warm-up
        let cold = prefill_from(0)?;
        // The first `cached` positions are in the blocks from the cold run: a prefix hit.
        prefill_from(cached)?;
        let warm = prefill_from(cached)?;
        eprintln!(
            "ttft {n}: cold {:.1} ms, {cached} cached {:.1} ms",
            cold * 1e3,
            warm * 1e3
        );
        report.insert(
            "ttft".into(),
            serde_json::json!({"tokens": n, "cached": cached, "cold_ms": cold * 1e3, "cached_ms": warm * 1e3, "speedup": cold / warm}),
        );
    }

    // Throughput through the real scheduler and worker loop: `concurrent` requests at once.
    let conc = num(args, "concurrent", 32)?;
    if conc > 0 {
        let max_tokens = num(args, "max-tokens", 256)?;
        let plen = num(args, "prompt-len", 128)?;
        let per = (plen + max_tokens + 1).div_ceil(bs);
        let cfg = WorkerConfig {
            index: 0,
            scheduler: SchedulerConfig {
                num_blocks: conc * per + 16,
                block_size: bs,
                max_num_batched_tokens: 8192,
                max_num_seqs: conc.max(1),
                ..Default::default()
            },
            max_model_len: plen + max_tokens + 1,
            eos_token_ids: Vec::new(),
            tokenizer: None,
            step_timeout: None,
            fault: None,
        };
        let w = WorkerHandle::spawn(
            cfg,
            model.clone(),
            Box::new(|_: Vec<reprise_protocol::KvEvent>| {}),
        )
        .map_err(|e| e.to_string())?;
        let t = Instant::now();
        let rxs: Vec<_> = (0..conc)
            .map(|i| {
                let prompt: Vec<u32> = (0..plen).map(|j| tok(j * 31 + i * 1009 + 3)).collect();
                w.submit(GenerateRequest {
                    id: i as u64,
                    request_id: "test".into(),
                    prompt,
                    params: SamplingParams {
                        max_tokens,
                        ignore_eos: true,
                        temperature: 0.0,
                        ..Default::default()
                    },
                    n: 1,
                    cache_salt: Vec::new(),
                    constraint: None,
                })
                .map_err(|e| e.to_string())
            })
            .collect::<Res<_>>()?;
        let mut generated = 0usize;
        for rx in rxs {
            while let Ok(ev) = rx.recv() {
                match ev {
                    WorkerEvent::Token { .. } => generated += 1,
                    WorkerEvent::Finished { .. } => break,
                    WorkerEvent::Error(e) => return Err(e),
                    WorkerEvent::Scheduled { .. } => {}
                }
            }
        }
        let secs = t.elapsed().as_secs_f64();
        w.shutdown();
        eprintln!(
            "{conc} concurrent: {:.0} output tok/s",
            generated as f64 / secs
        );
        report.insert(
            "throughput".into(),
            serde_json::json!({"concurrent": conc, "prompt_len": plen, "max_tokens": max_tokens, "output_tok_s": generated as f64 / secs, "secs": secs}),
        );
    }
    println!("{}", serde_json::Value::Object(report));
    Ok(())
}
