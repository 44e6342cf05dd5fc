//! SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to f32) against HF transformers:
//! tokenization, chat template, last-position logits and greedy generation.

use reprise_engine::loader::{self, LoadedModel};
use reprise_engine::model::{Model, SeqInput};
use reprise_text::chat_template::ChatMessage;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::OnceLock;

fn golden() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/golden/smollm2_golden_public.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("golden json")
}

fn model() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| {
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
        loader::load(path.to_str()).expect("load default model")
    })
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// Prefill then greedy decode with a contiguous block table; returns the prefill logits and tokens.
fn greedy<M: Model>(
    m: &M,
    prompt: &[u32],
    max_new: usize,
    eos: Option<u32>,
) -> (Vec<f32>, Vec<u32>) {
    let bs = 16;
    let blocks = (prompt.len() + max_new).div_ceil(bs);
    let mut cache = m.new_kv_cache(blocks, bs).expect("kv cache");
    let table: Vec<u32> = (0..blocks as u32).collect();
    let mut logits = m
        .forward(
            &[SeqInput {
                tokens: prompt,
                start_pos: 0,
                block_table: &table,
            }],
            &mut cache,
        )
        .expect("prefill")
        .row(0)
        .to_vec();
    let first = logits.clone();
    let mut out = Vec::new();
    let mut pos = prompt.len();
    while out.len() < max_new {
        let tok = reprise_engine::sampler::argmax(&logits);
        out.push(tok);
        if Some(tok) == eos || out.len() == max_new {
            break;
        }
        logits = m
            .forward(
                &[SeqInput {
                    tokens: &[tok],
                    start_pos: pos,
                    block_table: &table,
                }],
                &mut cache,
            )
            .expect("decode")
            .row(0)
            .to_vec();
        pos += 1;
    }
    (first, out)
}

#[test]
fn tokenizer_matches_prompt_token_ids() {
    let g = golden();
    let m = model();
    for case in g["cases"].as_array().expect("cases") {
        let prompt = case["rendered_prompt"].as_str().expect("prompt");
        let got = m.meta.tokenizer.encode(prompt, false).expect("encode");
        assert_eq!(got, ids(&case["prompt_token_ids"]), "case {}", case["id"]);
        let with_special = m.meta.tokenizer.encode(prompt, true).expect("encode");
        assert_eq!(
            with_special, got,
            "add_special_tokens adds nothing for this GGUF"
        );
        let text = m
            .meta
            .tokenizer
            .decode(&ids(&case["greedy_token_ids"]), true)
            .expect("decode");
        assert_eq!(
            text,
            case["greedy_text"].as_str().expect("text"),
            "case {}",
            case["id"]
        );
    }
}

#[test]
fn chat_template_renders_rendered_prompt() {
    let g = golden();
    let m = model();
    let tmpl = m.meta.chat_template.as_ref().expect("GGUF chat template");
    assert_eq!(
        tmpl.source(),
        g["chat_template"].as_str().expect("template")
    );
    let mut n = 0;
    for case in g["cases"].as_array().expect("cases") {
        if case["kind"] != "chat" {
            continue;
        }
        let msgs: Vec<ChatMessage> =
            serde_json::from_value(case["messages"].clone()).expect("messages");
        let got = tmpl.render(&msgs, true).expect("render");
        assert_eq!(
            got,
            case["rendered_prompt"].as_str().expect("prompt"),
            "case {}",
            case["id"]
        );
        n += 1;
    }
    assert!(n >= 4);
}

#[test]
fn greedy_and_logits_match_transformers() {
    let g = golden();
    let m = model();
    assert_eq!(m.meta.eos_token_ids, vec![2]);
    let max_new = g["generation"]["max_new_tokens"].as_u64().expect("max_new") as usize;
    let mut worst = 0f32;
    for case in g["cases"].as_array().expect("cases") {
        let prompt = ids(&case["prompt_token_ids"]);
        let (logits, toks) = greedy(
            m.cpu_model().expect("cpu model").as_ref(),
            &prompt,
            max_new,
            Some(2),
        );
        for pair in case["last_logits_top10"].as_array().expect("top10") {
            let id = pair[0].as_u64().expect("id") as usize;
            let want = pair[1].as_f64().expect("logit") as f32;
            let d = (logits[id] - want).abs();
            worst = worst.max(d);
            assert!(
                d < 1e-3,
                "case {} token {id}: {} vs {want}",
                case["id"],
                logits[id]
            );
        }
        assert_eq!(toks, ids(&case["greedy_token_ids"]), "case {}", case["id"]);
    }
    eprintln!("max |logit diff| over top-10s: {worst:.2e}");
}

/// `reprise route` loads only the tokenizer side: it must be the very same one.
#[test]
fn metadata_only_load_tokenizes_and_renders_like_the_full_load() {
    let g = golden();
    let full = model();
    let t0 = std::time::Instant::now();
    let meta = reprise_text::meta::load_meta(reprise_text::meta::default_model_path().to_str())
        .expect("load_meta");
    let meta_secs = t0.elapsed().as_secs_f64();
    assert_eq!(meta.name, full.meta.name);
    assert_eq!(meta.eos_token_ids, full.meta.eos_token_ids);
    assert_eq!(meta.bos_token_id, full.meta.bos_token_id);
    assert_eq!(meta.max_model_len, full.meta.max_model_len);
    assert_eq!(meta.vocab_size, full.model.config().vocab_size);
    for case in g["cases"].as_array().expect("cases") {
        let prompt = case["rendered_prompt"].as_str().expect("prompt");
        assert_eq!(
            meta.tokenizer.encode(prompt, false).expect("encode"),
            ids(&case["prompt_token_ids"])
        );
        if case["kind"] == "chat" {
            let msgs: Vec<ChatMessage> =
                serde_json::from_value(case["messages"].clone()).expect("messages");
            let tmpl = meta.chat_template.as_ref().expect("template");
            assert_eq!(tmpl.render(&msgs, true).expect("render"), prompt);
        }
    }
    // Only the header and metadata are read: no weights (a few ms, not seconds).
    assert!(meta_secs < 5.0, "metadata load took {meta_secs:.2} s");
}
