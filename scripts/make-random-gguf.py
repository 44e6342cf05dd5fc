#!/usr/bin/env python3
"""Writes a random-weight GGUF of a real model's shape, with the default model's
tokenizer (SmolLM2's, read from its GGUF), for benchmarks at real sizes.

The weights are F16 (normal, std 0.02; norms 1), the form llama.cpp's
`llama-quantize` takes to make Q4_K_M, Q4_0 and the rest. Needs the `gguf` and
`numpy` packages from PyPI.

usage: make-random-gguf.py --shape llama-3.2-1b --tokenizer SmolLM2.gguf --out OUT.gguf
       [--layers N] [--seed S]
"""

import argparse
import sys

import numpy as np

try:
    import gguf
except ImportError:
    sys.exit("make-random-gguf.py: needs the gguf package (pip install gguf numpy)")

# Published configurations (config.json of each model); `layers` may be cut with --layers.
SHAPES = {
    "llama-3.2-1b": dict(arch="llama", hidden=2048, layers=16, heads=32, kv_heads=8, ffn=8192,
                         head_dim=64, rope_theta=500000.0, eps=1e-5, tied=True),
    "llama-3.2-3b": dict(arch="llama", hidden=3072, layers=28, heads=24, kv_heads=8, ffn=8192,
                         head_dim=128, rope_theta=500000.0, eps=1e-5, tied=True),
    # Mixtures of experts (issue: MoE at real speed). OLMoE-1B-7B: 64 experts, top 8.
    "olmoe-1b-7b": dict(arch="qwen3moe", hidden=2048, layers=16, heads=16, kv_heads=16, ffn=1024,
                        head_dim=128, rope_theta=10000.0, eps=1e-5, tied=False,
                        experts=64, experts_used=8, expert_ffn=1024, qk_norm=True),
    # Qwen3-30B-A3B: 128 experts, top 8, 48 layers (cut with --layers for a 2-core machine).
    "qwen3-30b-a3b": dict(arch="qwen3moe", hidden=2048, layers=48, heads=32, kv_heads=4, ffn=6144,
                          head_dim=128, rope_theta=1000000.0, eps=1e-6, tied=False,
                          experts=128, experts_used=8, expert_ffn=768, qk_norm=True),
}


def field_str(f):
    return bytes(f.parts[f.data[0]]).decode("utf-8")


def field_strs(f):
    return [bytes(f.parts[i]).decode("utf-8", "surrogateescape") for i in f.data]


def field_ints(f):
    return [int(f.parts[i][0]) for i in f.data]


def copy_tokenizer(src, w):
    r = gguf.GGUFReader(src)
    fl = r.fields
    w.add_tokenizer_model(field_str(fl["tokenizer.ggml.model"]))
    if "tokenizer.ggml.pre" in fl:
        w.add_tokenizer_pre(field_str(fl["tokenizer.ggml.pre"]))
    tokens = field_strs(fl["tokenizer.ggml.tokens"])
    w.add_token_list(tokens)
    if "tokenizer.ggml.token_type" in fl:
        w.add_token_types(field_ints(fl["tokenizer.ggml.token_type"]))
    if "tokenizer.ggml.merges" in fl:
        w.add_token_merges(field_strs(fl["tokenizer.ggml.merges"]))
    for key, add in [("tokenizer.ggml.bos_token_id", w.add_bos_token_id),
                     ("tokenizer.ggml.eos_token_id", w.add_eos_token_id),
                     ("tokenizer.ggml.unknown_token_id", w.add_unk_token_id),
                     ("tokenizer.ggml.padding_token_id", w.add_pad_token_id)]:
        if key in fl:
            add(field_ints(fl[key])[0])
    if "tokenizer.chat_template" in fl:
        w.add_chat_template(field_str(fl["tokenizer.chat_template"]))
    w.add_add_bos_token(False)
    return len(tokens)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", required=True, choices=sorted(SHAPES))
    ap.add_argument("--tokenizer", required=True, help="a GGUF whose tokenizer to copy")
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, help="fewer layers than the published model")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    s = dict(SHAPES[a.shape])
    if a.layers:
        s["layers"] = a.layers
    rng = np.random.default_rng(a.seed)
    arch = s["arch"]
    w = gguf.GGUFWriter(a.out, arch)
    w.add_name(f"random {a.shape}")
    vocab = copy_tokenizer(a.tokenizer, w)
    w.add_block_count(s["layers"])
    w.add_context_length(8192)
    w.add_embedding_length(s["hidden"])
    w.add_feed_forward_length(s["ffn"])
    w.add_head_count(s["heads"])
    w.add_head_count_kv(s["kv_heads"])
    w.add_key_length(s["head_dim"])
    w.add_value_length(s["head_dim"])
    w.add_rope_dimension_count(s["head_dim"])
    w.add_rope_freq_base(s["rope_theta"])
    w.add_layer_norm_rms_eps(s["eps"])
    w.add_vocab_size(vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    if "experts" in s:
        w.add_expert_count(s["experts"])
        w.add_expert_used_count(s["experts_used"])
        w.add_expert_feed_forward_length(s["expert_ffn"])

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    def ones(n):
        return np.ones(n, dtype=np.float32)

    h, hd = s["hidden"], s["head_dim"]
    w.add_tensor("token_embd.weight", mat(vocab, h))
    w.add_tensor("output_norm.weight", ones(h))
    if not s["tied"]:
        w.add_tensor("output.weight", mat(vocab, h))
    for i in range(s["layers"]):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", ones(h))
        w.add_tensor(p + "attn_q.weight", mat(s["heads"] * hd, h))
        w.add_tensor(p + "attn_k.weight", mat(s["kv_heads"] * hd, h))
        w.add_tensor(p + "attn_v.weight", mat(s["kv_heads"] * hd, h))
        w.add_tensor(p + "attn_output.weight", mat(h, s["heads"] * hd))
        if s.get("qk_norm"):
            w.add_tensor(p + "attn_q_norm.weight", ones(hd))
            w.add_tensor(p + "attn_k_norm.weight", ones(hd))
        w.add_tensor(p + "ffn_norm.weight", ones(h))
        if "experts" in s:
            e, f = s["experts"], s["expert_ffn"]
            w.add_tensor(p + "ffn_gate_inp.weight", (rng.standard_normal((e, h), dtype=np.float32) * 0.02))
            stack = lambda r, c: (rng.standard_normal((e, r, c), dtype=np.float32) * 0.02).astype(np.float16)
            w.add_tensor(p + "ffn_gate_exps.weight", stack(f, h))
            w.add_tensor(p + "ffn_up_exps.weight", stack(f, h))
            w.add_tensor(p + "ffn_down_exps.weight", stack(h, f))
        else:
            w.add_tensor(p + "ffn_gate.weight", mat(s["ffn"], h))
            w.add_tensor(p + "ffn_up.weight", mat(s["ffn"], h))
            w.add_tensor(p + "ffn_down.weight", mat(h, s["ffn"]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(a.out)


if __name__ == "__main__":
    main()
