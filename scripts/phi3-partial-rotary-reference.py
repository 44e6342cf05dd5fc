#!/usr/bin/env python3
"""An independent numpy forward of the tiny Phi-3 checkpoint with Phi-4-mini's partial
rotary (rope on the first `partial_rotary_factor` of each head, half-split within
that part), written from transformers' Phi3 modelling code, not from reprise's.

transformers (torch) is not installable on the machines this project is built on, so
this stands in for it: it writes the expected greedy tokens and last-position logits
that `crates/engine/tests/golden_tiny.rs::tiny_phi3_partial_rotary` checks.
Needs numpy. Usage:
  python scripts/phi3-partial-rotary-reference.py tests/data/golden/tiny/phi3 \
      0.75 > tests/data/golden/tiny/phi3-partial-rotary.json
"""
import json
import struct
import sys

import numpy as np


def load(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        out = {}
        for name, t in header.items():
            if name == "__metadata__":
                continue
            a, b = t["data_offsets"]
            f.seek(base + a)
            raw = f.read(b - a)
            assert t["dtype"] == "BF16", t["dtype"]
            bits = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
            out[name] = bits.view(np.float32).astype(np.float64).reshape(t["shape"])
        return out


def rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def forward(w, cfg, factor, tokens):
    h, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = h // nh
    rot = int(hd * factor)
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]
    window = cfg.get("sliding_window") or 10**9
    n = len(tokens)
    x = w["model.embed_tokens.weight"][tokens]
    inv = 1.0 / theta ** (np.arange(0, rot, 2, dtype=np.float64) / rot)
    ang = np.arange(n, dtype=np.float64)[:, None] * inv[None, :]
    cos, sin = np.cos(ang), np.sin(ang)

    def rope(t):  # t: [n, heads, hd]; half-split within the first `rot` dims
        r, rest = t[..., :rot], t[..., rot:]
        a, b = r[..., : rot // 2], r[..., rot // 2 :]
        c, s = cos[:, None, :], sin[:, None, :]
        return np.concatenate([a * c - b * s, b * c + a * s, rest], axis=-1)

    mask = np.full((n, n), -np.inf)
    for i in range(n):
        lo = max(0, i - window + 1)
        mask[i, lo : i + 1] = 0.0
    for li in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{li}."
        xn = rms(x, w[p + "input_layernorm.weight"], eps)
        qkv = xn @ w[p + "self_attn.qkv_proj.weight"].T
        q = qkv[:, : nh * hd].reshape(n, nh, hd)
        k = qkv[:, nh * hd : (nh + nkv) * hd].reshape(n, nkv, hd)
        v = qkv[:, (nh + nkv) * hd :].reshape(n, nkv, hd)
        q, k = rope(q), rope(k)
        g = nh // nkv
        out = np.zeros((n, nh, hd))
        for head in range(nh):
            kh = head // g
            s = q[:, head, :] @ k[:, kh, :].T / np.sqrt(hd) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            out[:, head, :] = s @ v[:, kh, :]
        x = x + out.reshape(n, nh * hd) @ w[p + "self_attn.o_proj.weight"].T
        xn = rms(x, w[p + "post_attention_layernorm.weight"], eps)
        gu = xn @ w[p + "mlp.gate_up_proj.weight"].T
        gate, up = gu[:, : gu.shape[1] // 2], gu[:, gu.shape[1] // 2 :]
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "mlp.down_proj.weight"].T
    x = rms(x, w["model.norm.weight"], eps)
    head = w["lm_head.weight"] if "lm_head.weight" in w else w["model.embed_tokens.weight"]
    return x[-1] @ head.T


def main():
    d, factor = sys.argv[1], float(sys.argv[2])
    cfg = json.load(open(f"{d}/config.json"))
    golden = json.load(open(f"{d}/golden.json"))
    w = load(f"{d}/model.safetensors")
    cases = []
    # Every prompt, 16 greedy tokens each (a full recompute per token); each step's
    # top-2 margin must be clear of float32's rounding for the test to be fair.
    for case in golden["cases"]:
        prompt = case["prompt_token_ids"]
        toks = list(prompt)
        first = None
        out = []
        for _ in range(16):
            logits = forward(w, cfg, factor, toks)
            if first is None:
                first = logits
            t = int(np.argmax(logits))
            top2 = np.sort(logits)[-2:]
            assert top2[1] - top2[0] > 1e-3, f"{case['id']}: a near tie at step {len(out)}"
            out.append(t)
            toks.append(t)
        top = np.argsort(-first)[:10]
        cases.append(
            {
                "id": case["id"],
                "prompt_token_ids": prompt,
                "greedy_token_ids": out,
                "last_logits_top10": [[int(i), float(first[i])] for i in top],
            }
        )
    json.dump(
        {
            "made_by": "scripts/phi3-partial-rotary-reference.py (numpy, float64)",
            "partial_rotary_factor": factor,
            "cases": cases,
        },
        sys.stdout,
        indent=1,
    )


if __name__ == "__main__":
    main()
