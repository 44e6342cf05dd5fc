//! The same prompt computed as one prefill, in 64-token chunks, from a cached
//! prefix, or batched with other sequences gives the same logits and greedy tokens.

use reprise_engine::cpu::attention::PagedKvCache;
use reprise_engine::cpu::Transformer;
use reprise_engine::loader::{self, LoadedModel};
use reprise_engine::model::{Model, SeqInput};
use reprise_engine::sampler::argmax;
use serde_json::Value;
use std::path::PathBuf;

const BS: usize = 16;
const STEPS: usize = 8;

fn load() -> (LoadedModel, Value) {
    let path = reprise_text::meta::default_model_path();
    if !path.is_file() {
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/fetch-default.sh");
        let ok = std::process::Command::new("bash")
            .arg(script)
            .status()
            .expect("fetch");
        assert!(ok.success());
    }
    let g = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/golden/smollm2_golden_public.json");
    let g: Value =
        serde_json::from_str(&std::fs::read_to_string(g).expect("golden")).expect("json");
    (loader::load(path.to_str()).expect("load"), g)
}

fn prompt(g: &Value, id: &str) -> Vec<u32> {
    let case = g["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["id"] == id)
        .expect("case");
    case["prompt_token_ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

struct Seq {
    prompt: Vec<u32>,
    table: Vec<u32>,
    done: usize,
    chunk: usize,
    first: Option<Vec<f32>>,
    out: Vec<u32>,
}

impl Seq {
    fn new(prompt: Vec<u32>, alloc: &mut Vec<u32>, chunk: usize) -> Self {
        let n = (prompt.len() + STEPS).div_ceil(BS);
        let table = alloc.split_off(alloc.len() - n);
        Seq {
            prompt,
            table,
            done: 0,
            chunk,
            first: None,
            out: Vec::new(),
        }
    }
}

/// Runs every sequence to STEPS greedy tokens, all in one batch per step.
fn run(m: &Transformer, cache: &mut PagedKvCache, seqs: &mut [&mut Seq]) {
    loop {
        let mut inputs: Vec<(usize, Vec<u32>, usize)> = Vec::new();
        for (i, s) in seqs.iter().enumerate() {
            if s.out.len() == STEPS {
                continue;
            }
            if s.done < s.prompt.len() {
                let end = s.done.saturating_add(s.chunk).min(s.prompt.len());
                inputs.push((i, s.prompt[s.done..end].to_vec(), s.done));
            } else {
                let last = *s.out.last().expect("generated");
                inputs.push((i, vec![last], s.prompt.len() + s.out.len() - 1));
            }
        }
        if inputs.is_empty() {
            return;
        }
        let batch: Vec<SeqInput> = inputs
            .iter()
            .map(|(i, t, p)| SeqInput {
                tokens: t,
                start_pos: *p,
                block_table: &seqs[*i].table,
            })
            .collect();
        let logits = m.forward(&batch, cache).expect("forward");
        for ((i, t, p), l) in inputs.iter().zip(logits.iter()) {
            let s = &mut *seqs[*i];
            if s.done < s.prompt.len() {
                s.done = p + t.len();
                if s.done < s.prompt.len() {
                    continue;
                }
                s.first = Some(l.to_vec());
            }
            s.out.push(argmax(l));
        }
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn prefill_chunked_prefix_cached_and_batched_agree() {
    let (lm, g) = load();
    let m = lm.cpu_model().expect("cpu model");
    let m = m.as_ref();
    let bread = prompt(&g, "p05_shared_prefix_recipes_bread");
    let coconut = prompt(&g, "p06_shared_prefix_recipes_coconut");
    let others = [
        prompt(&g, "p01_fact_germany"),
        prompt(&g, "p02_code_is_prime"),
        prompt(&g, "p07_multilingual_multiturn"),
    ];
    let mut cache = m.new_kv_cache(400, BS).expect("kv cache");
    // Interleaved physical order so tables are scattered.
    let mut alloc: Vec<u32> = (0..400u32).map(|i| (i * 7) % 400).collect();

    let mut alone = Seq::new(bread.clone(), &mut alloc, usize::MAX);
    run(m, &mut cache, &mut [&mut alone]);
    let reference = alone.first.clone().expect("logits");

    let mut chunked = Seq::new(bread.clone(), &mut alloc, 64);
    run(m, &mut cache, &mut [&mut chunked]);

    // Prefix from cache: coconut shares the system prompt; reuse its full common blocks.
    let mut donor = Seq::new(coconut.clone(), &mut alloc, 100);
    run(m, &mut cache, &mut [&mut donor]);
    let common = bread
        .iter()
        .zip(&coconut)
        .take_while(|(a, b)| a == b)
        .count();
    let shared_blocks = common / BS;
    assert!(shared_blocks >= 30, "prompts share {common} tokens");
    let mut cached = Seq::new(bread.clone(), &mut alloc, usize::MAX);
    cached.table[..shared_blocks].copy_from_slice(&donor.table[..shared_blocks]);
    cached.done = shared_blocks * BS;
    run(m, &mut cache, &mut [&mut cached]);

    // Batched with other prefills and decodes, itself in chunks of 64.
    let mut batched = Seq::new(bread.clone(), &mut alloc, 64);
    let mut o: Vec<Seq> = others
        .iter()
        .map(|p| Seq::new(p.clone(), &mut alloc, 50))
        .collect();
    let mut refs: Vec<&mut Seq> = o.iter_mut().collect();
    refs.insert(1, &mut batched);
    run(m, &mut cache, &mut refs);

    for (name, s) in [
        ("chunked", &chunked),
        ("prefix-cached", &cached),
        ("batched", &batched),
    ] {
        let d = max_diff(&reference, s.first.as_ref().expect("logits"));
        eprintln!("{name}: max |logit diff| {d:.2e}");
        assert!(d < 1e-3, "{name}: logits differ by {d}");
        assert_eq!(s.out, alone.out, "{name}: greedy tokens differ");
    }
    // The other sequences of the batch match their solo runs too.
    for (p, s) in others.iter().zip(&o) {
        let mut solo = Seq::new(p.clone(), &mut alloc, usize::MAX);
        run(m, &mut cache, &mut [&mut solo]);
        assert_eq!(solo.out, s.out);
        assert!(
            max_diff(
                solo.first.as_ref().expect("l"),
                s.first.as_ref().expect("l")
            ) < 1e-3
        );
    }
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let (lm, _) = load();
    let m = lm.cpu_model().expect("cpu model");
    let m = m.as_ref();
    let mut cache = m.new_kv_cache(4, BS).expect("kv cache");
    let short = [0u32];
    let toks: Vec<u32> = (0..20).collect();
    let bad = [
        SeqInput {
            tokens: &toks,
            start_pos: 0,
            block_table: &short,
        },
        SeqInput {
            tokens: &[],
            start_pos: 0,
            block_table: &short,
        },
        SeqInput {
            tokens: &[1],
            start_pos: 0,
            block_table: &[9],
        },
        SeqInput {
            tokens: &[1_000_000],
            start_pos: 0,
            block_table: &short,
        },
    ];
    for b in &bad {
        assert!(m.forward(std::slice::from_ref(b), &mut cache).is_err());
    }
    let mut wrong = PagedKvCache::new(1, 4, BS, 3, 64);
    assert!(m
        .forward(
            &[SeqInput {
                tokens: &[1],
                start_pos: 0,
                block_table: &short
            }],
            &mut wrong
        )
        .is_err());
}
