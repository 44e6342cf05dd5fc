//! Random-weight checkpoints of every supported family in the HF layout against
//! transformers: greedy tokens (32, EOS ignored) and last-position top-10 logits.

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use gguf_file::Value as GValue;
use reprise_engine::loader;
use reprise_engine::model::{Family, Model, ModelError, SeqInput};
use reprise_text::meta::MetaError;
use serde_json::Value;
use std::path::PathBuf;

fn dir(family: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/golden/tiny")
        .join(family)
}

/// A temporary directory holding `files` copied from `from` (removed by the caller).
fn copy_to_tmp(from: &std::path::Path, files: &[&str], tag: &str) -> PathBuf {
    let tmp = std::env::temp_dir().join(format!("reprise-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("tmp dir");
    for f in files {
        std::fs::copy(from.join(f), tmp.join(f)).expect("copy");
    }
    tmp
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn greedy<M: Model>(m: &M, prompt: &[u32], max_new: usize) -> (Vec<f32>, Vec<u32>) {
    let bs = 16;
    let blocks = (prompt.len() + max_new).div_ceil(bs);
    let mut cache = m.new_kv_cache(blocks, bs).expect("kv cache");
    // Reversed table: physical order need not follow logical order.
    let table: Vec<u32> = (0..blocks as u32).rev().collect();
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
    for pos in prompt.len().. {
        let tok = reprise_engine::sampler::argmax(&logits);
        out.push(tok);
        if out.len() == max_new {
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
    }
    (first, out)
}

/// Every case of `golden` (greedy tokens, last-position top-10 logits within 1e-3)
/// on the model `lm`; returns the largest logit difference.
fn check_cases(lm: &loader::LoadedModel, golden: &Value) -> f32 {
    let model = lm.cpu_model().expect("cpu model");
    let mut worst = 0f32;
    for case in golden["cases"].as_array().expect("cases") {
        let prompt = ids(&case["prompt_token_ids"]);
        let want = ids(&case["greedy_token_ids"]);
        let (logits, toks) = greedy(model.as_ref(), &prompt, want.len());
        for pair in case["last_logits_top10"].as_array().expect("top10") {
            let id = pair[0].as_u64().expect("id") as usize;
            let w = pair[1].as_f64().expect("logit") as f32;
            worst = worst.max((logits[id] - w).abs());
            assert!(
                (logits[id] - w).abs() < 1e-3,
                "{} token {id}: {} vs {w}",
                case["id"],
                logits[id]
            );
        }
        assert_eq!(toks, want, "case {}", case["id"]);
    }
    worst
}

fn check(family: &str) {
    let lm = loader::load(dir(family).to_str()).expect("load");
    assert_eq!(lm.meta.eos_token_ids, vec![2]);
    assert!(lm.meta.chat_template.is_some());
    let worst = check_cases(&lm, &golden(family));
    eprintln!("{family}: max |logit diff| {worst:.2e}");
}

#[test]
fn tiny_llama() {
    check("llama");
}

#[test]
fn tiny_qwen2() {
    check("qwen2");
}

#[test]
fn tiny_qwen3() {
    check("qwen3");
}

/// Its window of 64 is narrower than half the prompts: served as plain Llama it
/// fails (transformers' ablation changes exactly those cases).
#[test]
fn tiny_mistral() {
    check("mistral");
}

/// Fused `qkv_proj` and `gate_up_proj`, loaded as they are.
#[test]
fn tiny_phi3() {
    check("phi3");
}

/// Sandwich norms with `1 + w` gains, scaled embeddings, `query_pre_attn_scalar`,
/// attention and final soft-caps, GeGLU, sliding window on layers 0 and 2.
#[test]
fn tiny_gemma2() {
    check("gemma2");
}

/// Gemma 2's block without soft-caps, plus q/k norms and local layers (2 of every 3)
/// at their own rope base.
#[test]
fn tiny_gemma3() {
    check("gemma3");
}

/// 8 experts, top 2 of the softmax over all, not renormalised; q/k norms.
#[test]
fn tiny_qwen3_moe() {
    check("qwen3-moe");
}

/// 4 experts, top 2, renormalised.
#[test]
fn tiny_mixtral() {
    check("mixtral");
}

/// Attention sinks, q/k/v/o biases, sliding window on even layers, yarn rope, biased
/// router with the softmax over the top 2 logits, biased experts stored fused and
/// interleaved, clamped SwiGLU.
#[test]
fn tiny_gpt_oss() {
    check("gpt-oss");
}

/// Phi-4-mini's partial rotary (`partial_rotary_factor` 0.75: rope on the first 12 of
/// each head's 16 dimensions) on the tiny Phi-3 weights, against an independent numpy
/// forward (`scripts/phi3-partial-rotary-reference.py`, which reproduces the
/// transformers golden above at factor 1.0). Rotating the whole head changes every case.
#[test]
fn tiny_phi3_partial_rotary() {
    let want: Value = serde_json::from_str(
        &std::fs::read_to_string(dir("phi3").with_file_name("phi3-partial-rotary.json"))
            .expect("reference"),
    )
    .expect("json");
    let factor = want["partial_rotary_factor"].clone();
    let tmp = hf_with("phi3", "phi3-partial", "partial_rotary_factor", factor);
    let lm = loader::load(tmp.to_str()).expect("load");
    assert_eq!(lm.model.config().rotary_dim, 12);
    check_cases(&lm, &want);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn malformed_sources_are_errors() {
    let tmp = std::env::temp_dir().join(format!("reprise-bad-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("tmp");
    let bad = tmp.join("bad.gguf");
    std::fs::write(&bad, b"not a gguf file at all").expect("write");
    assert!(matches!(
        loader::load(bad.to_str()),
        Err(ModelError::Meta(MetaError::Malformed { .. }))
    ));
    std::fs::write(tmp.join("config.json"), r#"{"model_type": "gpt_bigcode"}"#).expect("write");
    assert!(matches!(
        loader::load(tmp.to_str()),
        Err(ModelError::UnsupportedArchitecture(_))
    ));
    assert!(matches!(
        loader::load(Some("no-such-org/no-such-model")),
        Err(ModelError::Meta(MetaError::SourceNotFound(_)))
    ));
    std::fs::remove_dir_all(&tmp).ok();
}

/// The tokenizer side alone (what `reprise route` loads) equals the full load's,
/// and needs no weights: a directory holding only the tokenizer and config files works.
#[test]
fn metadata_only_load_needs_no_weights() {
    for family in ["llama", "qwen2", "qwen3"] {
        let d = dir(family);
        let full = loader::load(d.to_str()).expect("load");
        let tmp = copy_to_tmp(
            &d,
            &[
                "config.json",
                "tokenizer.json",
                "tokenizer_config.json",
                "generation_config.json",
            ],
            &format!("meta-{family}"),
        );
        let meta = reprise_text::meta::load_meta(tmp.to_str()).expect("load_meta without weights");
        assert!(
            loader::load(tmp.to_str()).is_err(),
            "the full load needs the weights"
        );
        assert_eq!(meta.eos_token_ids, full.meta.eos_token_ids, "{family}");
        assert_eq!(meta.max_model_len, full.meta.max_model_len, "{family}");
        assert_eq!(meta.vocab_size, full.model.config().vocab_size, "{family}");
        let text = "Hello, world! 12345 caches";
        assert_eq!(
            meta.tokenizer.encode(text, true).unwrap(),
            full.meta.tokenizer.encode(text, true).unwrap()
        );
        assert_eq!(
            meta.chat_template.map(|t| t.source().to_string()),
            full.meta.chat_template.map(|t| t.source().to_string())
        );
        let _ = std::fs::remove_dir_all(&tmp);
    }
}

/// Writes the tiny HF checkpoint in `dir` as a GGUF in llama.cpp's layout for `arch`
/// (its tensor names, metadata keys and, for the llama architecture, its q/k row
/// permutation; experts stacked into `ffn_{gate,up,down}_exps`), weights in `dtype`
/// or, `as_f32`, rounded to `dtype` and stored as f32.
fn write_gguf(
    dir: &std::path::Path,
    arch: &str,
    (dtype, as_f32): (GgmlDType, bool),
    out: &std::path::Path,
) {
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).expect("config"))
            .expect("json");
    let n = |k: &str| cfg[k].as_u64().expect(k) as usize;
    let (h, nh, nkv, layers) = (
        n("hidden_size"),
        n("num_attention_heads"),
        n("num_key_value_heads"),
        n("num_hidden_layers"),
    );
    let hd = cfg["head_dim"].as_u64().map_or(h / nh, |x| x as usize);
    let experts = cfg["num_local_experts"]
        .as_u64()
        .or(cfg["num_experts"].as_u64())
        .unwrap_or(0) as usize;
    let gemma = arch.starts_with("gemma");
    let expert_inter = cfg["moe_intermediate_size"]
        .as_u64()
        .map_or(n("intermediate_size"), |x| x as usize);
    let weights = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)
        .expect("safetensors");
    let get = |name: &str| -> (Vec<usize>, Vec<f32>) {
        let t = weights.get(name).unwrap_or_else(|| panic!("{name}"));
        let v = t
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .expect("f32");
        (t.dims().to_vec(), v)
    };
    // llama.cpp's permutation for its interleaved rotary: GGUF row 2i + j of a head is
    // HF row j * d/2 + i.
    let permute = |v: Vec<f32>, heads: usize| -> Vec<f32> {
        if arch != "llama" {
            return v;
        }
        let half = hd / 2;
        let mut out = vec![0.0; v.len()];
        for hh in 0..heads {
            for i in 0..half {
                for j in 0..2 {
                    let (dst, src) = (hh * hd + 2 * i + j, hh * hd + j * half + i);
                    out[dst * h..(dst + 1) * h].copy_from_slice(&v[src * h..(src + 1) * h]);
                }
            }
        }
        out
    };
    let qt = |dims: &[usize], v: Vec<f32>, dt: GgmlDType| {
        let t = Tensor::from_vec(v, dims, &Device::Cpu).expect("tensor");
        let q = QTensor::quantize(&t, dt).expect("quantize");
        if as_f32 && dt != GgmlDType::F32 {
            let back = q.dequantize(&Device::Cpu).expect("dequantize");
            QTensor::quantize(&back, GgmlDType::F32).expect("f32")
        } else {
            q
        }
    };
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let put = |gg: String, hf: &str, dt: GgmlDType| {
        let (d, mut v) = get(hf);
        // llama.cpp's converter stores Gemma's norm gains as 1 + w.
        if gemma && hf.ends_with("norm.weight") {
            v.iter_mut().for_each(|x| *x += 1.0);
        }
        (gg, qt(&d, v, dt))
    };
    tensors.push(put(
        "token_embd.weight".into(),
        "model.embed_tokens.weight",
        dtype,
    ));
    if weights.contains_key("lm_head.weight") {
        tensors.push(put("output.weight".into(), "lm_head.weight", dtype));
    }
    tensors.push(put(
        "output_norm.weight".into(),
        "model.norm.weight",
        GgmlDType::F32,
    ));
    let mixtral = arch == "llama";
    for l in 0..layers {
        let hf = |s: &str| format!("model.layers.{l}.{s}");
        let gg = |s: &str| format!("blk.{l}.{s}");
        let norms: &[(&str, &str)] = if gemma {
            &[
                ("attn_norm.weight", "input_layernorm.weight"),
                (
                    "post_attention_norm.weight",
                    "post_attention_layernorm.weight",
                ),
                ("ffn_norm.weight", "pre_feedforward_layernorm.weight"),
                ("post_ffw_norm.weight", "post_feedforward_layernorm.weight"),
                ("attn_q_norm.weight", "self_attn.q_norm.weight"),
                ("attn_k_norm.weight", "self_attn.k_norm.weight"),
            ]
        } else {
            &[
                ("attn_norm.weight", "input_layernorm.weight"),
                ("ffn_norm.weight", "post_attention_layernorm.weight"),
                ("attn_q_norm.weight", "self_attn.q_norm.weight"),
                ("attn_k_norm.weight", "self_attn.k_norm.weight"),
            ]
        };
        for &(g, f) in norms {
            if weights.contains_key(&hf(f)) {
                tensors.push(put(gg(g), &hf(f), GgmlDType::F32));
            }
        }
        for (g, f, heads) in [("q", "q", nh), ("k", "k", nkv)] {
            let (d, v) = get(&hf(&format!("self_attn.{f}_proj.weight")));
            tensors.push((
                gg(&format!("attn_{g}.weight")),
                qt(&d, permute(v, heads), dtype),
            ));
        }
        tensors.push(put(
            gg("attn_v.weight"),
            &hf("self_attn.v_proj.weight"),
            dtype,
        ));
        tensors.push(put(
            gg("attn_output.weight"),
            &hf("self_attn.o_proj.weight"),
            dtype,
        ));
        if experts == 0 {
            for w in ["gate", "up", "down"] {
                tensors.push(put(
                    gg(&format!("ffn_{w}.weight")),
                    &hf(&format!("mlp.{w}_proj.weight")),
                    dtype,
                ));
            }
            continue;
        }
        let router = if mixtral {
            "block_sparse_moe.gate.weight"
        } else {
            "mlp.gate.weight"
        };
        tensors.push(put(gg("ffn_gate_inp.weight"), &hf(router), GgmlDType::F32));
        for (what, mx, qw, rows, cols) in [
            ("gate", "w1", "gate_proj", expert_inter, h),
            ("up", "w3", "up_proj", expert_inter, h),
            ("down", "w2", "down_proj", h, expert_inter),
        ] {
            let mut all = Vec::new();
            for e in 0..experts {
                let name = if mixtral {
                    hf(&format!("block_sparse_moe.experts.{e}.{mx}.weight"))
                } else {
                    hf(&format!("mlp.experts.{e}.{qw}.weight"))
                };
                all.extend(get(&name).1);
            }
            tensors.push((
                gg(&format!("ffn_{what}_exps.weight")),
                qt(&[experts, rows, cols], all, dtype),
            ));
        }
    }
    let tok: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("tokenizer.json")).expect("tokenizer"),
    )
    .expect("json");
    let vocab = n("vocab_size");
    let mut tokens = vec![String::new(); vocab];
    for (t, id) in tok["model"]["vocab"].as_object().expect("vocab") {
        tokens[id.as_u64().expect("id") as usize] = t.clone();
    }
    let merges: Vec<GValue> = tok["model"]["merges"]
        .as_array()
        .expect("merges")
        .iter()
        .map(|m| {
            let pair = m.as_array().expect("pair");
            GValue::String(format!(
                "{} {}",
                pair[0].as_str().expect("a"),
                pair[1].as_str().expect("b")
            ))
        })
        .collect();
    let k = |s: &str| format!("{arch}.{s}");
    let u = |x: usize| GValue::U32(x as u32);
    let mut meta: Vec<(String, GValue)> = vec![
        ("general.architecture".into(), GValue::String(arch.into())),
        (k("context_length"), u(4096)),
        (k("embedding_length"), u(h)),
        (k("block_count"), u(layers)),
        (k("feed_forward_length"), u(n("intermediate_size"))),
        (k("attention.head_count"), u(nh)),
        (k("attention.head_count_kv"), u(nkv)),
        (k("attention.key_length"), u(hd)),
        (k("attention.value_length"), u(hd)),
        (
            k("attention.layer_norm_rms_epsilon"),
            GValue::F32(cfg["rms_norm_eps"].as_f64().expect("eps") as f32),
        ),
        (
            k("rope.freq_base"),
            GValue::F32(cfg["rope_theta"].as_f64().expect("theta") as f32),
        ),
        ("tokenizer.ggml.model".into(), GValue::String("gpt2".into())),
        (
            "tokenizer.ggml.tokens".into(),
            GValue::Array(tokens.into_iter().map(GValue::String).collect()),
        ),
        ("tokenizer.ggml.merges".into(), GValue::Array(merges)),
        ("tokenizer.ggml.bos_token_id".into(), u(1)),
        ("tokenizer.ggml.eos_token_id".into(), u(2)),
    ];
    if experts > 0 {
        meta.push((k("expert_count"), u(experts)));
        meta.push((k("expert_used_count"), u(n("num_experts_per_tok"))));
        if !mixtral {
            meta.push((k("expert_feed_forward_length"), u(expert_inter)));
        }
    }
    if gemma {
        meta.push((k("attention.sliding_window"), u(n("sliding_window"))));
        for key in ["attn_logit_softcapping", "final_logit_softcapping"] {
            if let Some(c) = cfg[key].as_f64() {
                meta.push((k(key), GValue::F32(c as f32)));
            }
        }
        if let Some(p) = cfg["sliding_window_pattern"].as_u64() {
            meta.push((k("attention.sliding_window_pattern"), u(p as usize)));
        }
    }
    let meta_refs: Vec<(&str, &GValue)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(out).expect("create gguf");
    gguf_file::write(&mut f, &meta_refs, &tensor_refs).expect("write gguf");
}

fn golden(family: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir(family).join("golden.json")).expect("golden"))
        .expect("json")
}

/// A temporary copy of `family`'s checkpoint with config.json's `key` set to `value`.
fn hf_with(family: &str, tag: &str, key: &str, value: Value) -> PathBuf {
    let src = dir(family);
    let tmp = copy_to_tmp(
        &src,
        &[
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "generation_config.json",
        ],
        tag,
    );
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).expect("config"))
            .expect("json");
    cfg[key] = value;
    std::fs::write(tmp.join("config.json"), cfg.to_string()).expect("write config");
    tmp
}

/// `family`'s checkpoint written as a GGUF of `arch` in `form` under `tmp`, loaded on
/// the CPU as a model of `want`.
fn gguf_model(
    family: &str,
    arch: &str,
    form: (GgmlDType, bool),
    tmp: &std::path::Path,
    want: Family,
) -> loader::LoadedModel {
    let path = tmp.join(format!("{arch}-{form:?}.gguf"));
    write_gguf(&dir(family), arch, form, &path);
    let lm = loader::load(path.to_str()).expect("load gguf");
    assert_eq!(lm.model.config().family, want);
    lm
}

/// `model` against `reference` on every golden prompt: 8 greedy tokens identical, the
/// first step's logits within 1e-3; returns the largest logit difference.
fn assert_same<M: Model>(reference: &M, model: &M, golden: &Value, what: &str) -> f32 {
    let mut worst = 0f32;
    for case in golden["cases"].as_array().expect("cases") {
        let prompt = ids(&case["prompt_token_ids"]);
        let (want_logits, want) = greedy(reference, &prompt, 8);
        let (logits, toks) = greedy(model, &prompt, 8);
        let diff = want_logits
            .iter()
            .zip(&logits)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        worst = worst.max(diff);
        assert!(
            diff < 1e-3,
            "{what}, case {}: logits off by {diff}",
            case["id"]
        );
        assert_eq!(toks, want, "{what}, case {}", case["id"]);
    }
    worst
}

/// Mixtral as llama.cpp writes it (the llama architecture with stacked experts, q/k
/// permuted), in f32: the transformers golden unchanged.
#[test]
fn tiny_mixtral_gguf() {
    let tmp = copy_to_tmp(&dir("mixtral"), &[], "mixtral-gguf");
    let f32_form = (GgmlDType::F32, false);
    let lm = gguf_model("mixtral", "llama", f32_form, &tmp, Family::Mixtral);
    check_cases(&lm, &golden("mixtral"));
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Gemma 3 as llama.cpp's `gemma3` (norm gains stored as 1 + w, tied head, the tiny
/// model's window pattern of 3 given as `attention.sliding_window_pattern`), in f32:
/// the transformers golden unchanged.
#[test]
fn tiny_gemma3_gguf() {
    let tmp = copy_to_tmp(&dir("gemma3"), &[], "gemma3-gguf");
    let f32_form = (GgmlDType::F32, false);
    let lm = gguf_model("gemma3", "gemma3", f32_form, &tmp, Family::Gemma3);
    check_cases(&lm, &golden("gemma3"));
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Gemma 2 as llama.cpp's `gemma2`, whose attention scale is head_dim^-1/2 (the tiny
/// model's `query_pre_attn_scalar` of 64 has no GGUF key): equal, in f32, to the HF
/// checkpoint loaded with `query_pre_attn_scalar` = head_dim (greedy tokens, logits).
#[test]
fn tiny_gemma2_gguf() {
    let head_dim = golden("gemma2")["config_summary"]["head_dim"].clone();
    let tmp = hf_with("gemma2", "gemma2-gguf", "query_pre_attn_scalar", head_dim);
    let hf = loader::load(tmp.to_str()).expect("load hf");
    let gg = gguf_model(
        "gemma2",
        "gemma2",
        (GgmlDType::F32, false),
        &tmp,
        Family::Gemma2,
    );
    assert_same(
        hf.cpu_model().expect("cpu").as_ref(),
        gg.cpu_model().expect("cpu").as_ref(),
        &golden("gemma2"),
        "f32 against HF",
    );
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Qwen3-MoE as llama.cpp's `qwen3moe`, which always renormalises the chosen experts'
/// weights: in f32 equal to the HF checkpoint loaded with `norm_topk_prob: true`
/// (greedy tokens, logits); in Q8_0 (experts split from their stacks in the stored
/// format) equal to the same values rounded to Q8_0 and stored as f32.
#[test]
fn tiny_qwen3_moe_gguf() {
    let tmp = hf_with(
        "qwen3-moe",
        "qwen3moe-gguf",
        "norm_topk_prob",
        Value::Bool(true),
    );
    let load = |form| {
        gguf_model("qwen3-moe", "qwen3moe", form, &tmp, Family::Qwen3Moe)
            .cpu_model()
            .expect("cpu")
    };
    let hf = loader::load(tmp.to_str())
        .expect("load hf")
        .cpu_model()
        .expect("cpu");
    let golden = golden("qwen3-moe");
    for (reference, model, what) in [
        (hf, load((GgmlDType::F32, false)), "f32 against HF"),
        (
            load((GgmlDType::Q8_0, true)),
            load((GgmlDType::Q8_0, false)),
            "Q8_0 against its f32 rounding",
        ),
    ] {
        let worst = assert_same(reference.as_ref(), model.as_ref(), &golden, what);
        eprintln!("qwen3moe GGUF {what}: max |logit diff| {worst:.2e}");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
