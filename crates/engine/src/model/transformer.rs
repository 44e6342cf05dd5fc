//! The decoder-only transformer shared by the Llama, Qwen2 and Qwen3 families,
//! computing in f32 on the CPU through a [`PagedKvCache`].

use super::ops::{linear, rms_norm, rms_norm_inplace, rope_half, swiglu};
use super::{ModelConfig, ModelError, SeqInput};
use crate::attention::{paged_attention, AttnSeq, AttnShape, PagedKvCache};

/// A tensor's shape and its f32 values.
pub(crate) type NamedTensor = (Vec<usize>, Vec<f32>);

/// Where weights come from: named f32 tensors in HF `[out, in]` layout.
pub(crate) trait TensorSource {
    /// The tensor and its shape, or `None` when absent.
    fn get(&mut self, name: &str) -> Result<Option<NamedTensor>, ModelError>;
}

/// How a family's checkpoint names its tensors.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Naming {
    /// `model.layers.N.self_attn.q_proj.weight`.
    Hf,
    /// `blk.N.attn_q.weight`.
    Gguf,
}

impl Naming {
    fn global(self, what: &str) -> &'static str {
        match (self, what) {
            (Naming::Hf, "embed") => "model.embed_tokens.weight",
            (Naming::Hf, "norm") => "model.norm.weight",
            (Naming::Hf, _) => "lm_head.weight",
            (Naming::Gguf, "embed") => "token_embd.weight",
            (Naming::Gguf, "norm") => "output_norm.weight",
            (Naming::Gguf, _) => "output.weight",
        }
    }

    fn layer(self, i: usize, what: &str) -> String {
        let (hf, gg) = match what {
            "attn_norm" => ("input_layernorm.weight", "attn_norm.weight"),
            "q" => ("self_attn.q_proj.weight", "attn_q.weight"),
            "k" => ("self_attn.k_proj.weight", "attn_k.weight"),
            "v" => ("self_attn.v_proj.weight", "attn_v.weight"),
            "qb" => ("self_attn.q_proj.bias", "attn_q.bias"),
            "kb" => ("self_attn.k_proj.bias", "attn_k.bias"),
            "vb" => ("self_attn.v_proj.bias", "attn_v.bias"),
            "q_norm" => ("self_attn.q_norm.weight", "attn_q_norm.weight"),
            "k_norm" => ("self_attn.k_norm.weight", "attn_k_norm.weight"),
            "o" => ("self_attn.o_proj.weight", "attn_output.weight"),
            "mlp_norm" => ("post_attention_layernorm.weight", "ffn_norm.weight"),
            "gate" => ("mlp.gate_proj.weight", "ffn_gate.weight"),
            "up" => ("mlp.up_proj.weight", "ffn_up.weight"),
            _ => ("mlp.down_proj.weight", "ffn_down.weight"),
        };
        match self {
            Naming::Hf => format!("model.layers.{i}.{hf}"),
            Naming::Gguf => format!("blk.{i}.{gg}"),
        }
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    /// Fused q, k, v rows: `[(n_heads + 2 n_kv) * head_dim, hidden]`.
    wqkv: Vec<f32>,
    bqkv: Option<Vec<f32>>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    wo: Vec<f32>,
    mlp_norm: Vec<f32>,
    /// Fused gate and up rows: `[2 * intermediate, hidden]`.
    wgu: Vec<f32>,
    wdown: Vec<f32>,
}

/// A Llama / Qwen2 / Qwen3 decoder with f32 weights.
pub struct Transformer {
    cfg: ModelConfig,
    embed: Vec<f32>,
    layers: Vec<Layer>,
    final_norm: Vec<f32>,
    /// `None` when the head is tied to the embedding.
    lm_head: Option<Vec<f32>>,
    inv_freq: Vec<f32>,
}

fn need(src: &mut dyn TensorSource, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
    let (got, data) = src.get(name)?.ok_or_else(|| ModelError::Tensor {
        name: name.to_string(),
        reason: "missing".into(),
    })?;
    check_shape(name, &got, &data, shape)?;
    Ok(data)
}

fn optional(
    src: &mut dyn TensorSource,
    name: &str,
    shape: &[usize],
) -> Result<Option<Vec<f32>>, ModelError> {
    match src.get(name)? {
        None => Ok(None),
        Some((got, data)) => {
            check_shape(name, &got, &data, shape)?;
            Ok(Some(data))
        }
    }
}

fn check_shape(name: &str, got: &[usize], data: &[f32], want: &[usize]) -> Result<(), ModelError> {
    let n: usize = want.iter().product();
    if got != want || data.len() != n {
        return Err(ModelError::Tensor {
            name: name.to_string(),
            reason: format!("shape {got:?}, expected {want:?}"),
        });
    }
    Ok(())
}

/// Undoes llama.cpp's q/k row permutation (made for its interleaved rotary) so the
/// half-split rotary applies: GGUF row `2i + j` of a head is HF row `j * d/2 + i`.
fn unpermute_rows(w: &[f32], n_heads: usize, head_dim: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; w.len()];
    let half = head_dim / 2;
    for h in 0..n_heads {
        for i in 0..half {
            for j in 0..2 {
                let src = (h * head_dim + 2 * i + j) * cols;
                let dst = (h * head_dim + j * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    out
}

impl Transformer {
    /// Builds the model from a tensor source; `unpermute_qk` for llama-arch GGUF files.
    pub(crate) fn from_source(
        cfg: ModelConfig,
        src: &mut dyn TensorSource,
        naming: Naming,
        unpermute_qk: bool,
        rope_freq_factors: Option<Vec<f32>>,
    ) -> Result<Self, ModelError> {
        cfg.validate()?;
        let (h, hd, nh, nkv, inter) = (
            cfg.hidden_size,
            cfg.head_dim,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.intermediate_size,
        );
        let embed = need(src, naming.global("embed"), &[cfg.vocab_size, h])?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let name = |w: &str| naming.layer(i, w);
            let mut q = need(src, &name("q"), &[nh * hd, h])?;
            let mut k = need(src, &name("k"), &[nkv * hd, h])?;
            let v = need(src, &name("v"), &[nkv * hd, h])?;
            if unpermute_qk {
                q = unpermute_rows(&q, nh, hd, h);
                k = unpermute_rows(&k, nkv, hd, h);
            }
            let mut wqkv = q;
            wqkv.extend_from_slice(&k);
            wqkv.extend_from_slice(&v);
            let bqkv = if cfg.attention_bias {
                let mut qb = need(src, &name("qb"), &[nh * hd])?;
                let mut kb = need(src, &name("kb"), &[nkv * hd])?;
                if unpermute_qk {
                    qb = unpermute_rows(&qb, nh, hd, 1);
                    kb = unpermute_rows(&kb, nkv, hd, 1);
                }
                qb.extend_from_slice(&kb);
                qb.extend(need(src, &name("vb"), &[nkv * hd])?);
                Some(qb)
            } else {
                None
            };
            let (q_norm, k_norm) = if cfg.qk_norm {
                (
                    Some(need(src, &name("q_norm"), &[hd])?),
                    Some(need(src, &name("k_norm"), &[hd])?),
                )
            } else {
                (None, None)
            };
            let mut wgu = need(src, &name("gate"), &[inter, h])?;
            wgu.extend(need(src, &name("up"), &[inter, h])?);
            layers.push(Layer {
                attn_norm: need(src, &name("attn_norm"), &[h])?,
                wqkv,
                bqkv,
                q_norm,
                k_norm,
                wo: need(src, &name("o"), &[h, nh * hd])?,
                mlp_norm: need(src, &name("mlp_norm"), &[h])?,
                wgu,
                wdown: need(src, &name("down"), &[h, inter])?,
            });
        }
        let final_norm = need(src, naming.global("norm"), &[h])?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            // Some GGUF files omit output.weight even when untied in spirit; fall back to the embedding.
            optional(src, naming.global("head"), &[cfg.vocab_size, h])?
        };
        let mut inv_freq = cfg.inv_freqs();
        if let Some(f) = rope_freq_factors {
            if f.len() != inv_freq.len() {
                return Err(ModelError::Tensor {
                    name: "rope_freqs.weight".into(),
                    reason: format!("length {}, expected {}", f.len(), inv_freq.len()),
                });
            }
            inv_freq.iter_mut().zip(&f).for_each(|(a, b)| *a /= b);
        }
        Ok(Self {
            cfg,
            embed,
            layers,
            final_norm,
            lm_head,
            inv_freq,
        })
    }

    fn check_batch(&self, batch: &[SeqInput], cache: &PagedKvCache) -> Result<(), ModelError> {
        if !cache.is_host() {
            return Err(ModelError::InvalidInput(
                "the CPU model needs a host KV cache".into(),
            ));
        }
        super::check_batch(&self.cfg, batch, cache)
    }

    /// Hands the weights over for upload to a device (fused layout, f32).
    #[cfg(feature = "cuda")]
    pub(crate) fn into_cuda(
        self,
        ctx: std::sync::Arc<cudarc::driver::CudaContext>,
    ) -> Result<crate::cuda::CudaModel, ModelError> {
        let layers = self.layers.into_iter().map(|l| {
            Ok(crate::cuda::HostLayer {
                attn_norm: l.attn_norm,
                wqkv: l.wqkv,
                bqkv: l.bqkv,
                q_norm: l.q_norm,
                k_norm: l.k_norm,
                wo: l.wo,
                mlp_norm: l.mlp_norm,
                wgu: l.wgu,
                wdown: l.wdown,
            })
        });
        crate::cuda::CudaModel::upload(
            self.cfg,
            ctx,
            self.embed,
            layers,
            self.final_norm,
            self.lm_head,
            self.inv_freq,
        )
    }
}

impl super::Model for Transformer {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn forward(
        &self,
        batch: &[SeqInput],
        cache: &mut PagedKvCache,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.check_batch(batch, cache)?;
        let c = &self.cfg;
        let (h, hd, nh, nkv, inter) = (
            c.hidden_size,
            c.head_dim,
            c.num_heads,
            c.num_kv_heads,
            c.intermediate_size,
        );
        let half = hd / 2;
        let qkv_w = (nh + 2 * nkv) * hd;
        let bs = cache.block_size();

        // Flatten the batch: one row per new token.
        let t: usize = batch.iter().map(|s| s.tokens.len()).sum();
        let mut seqs = Vec::with_capacity(batch.len());
        let mut slots = Vec::with_capacity(t);
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        let mut x = Vec::with_capacity(t * h);
        let mut row = 0;
        for s in batch {
            seqs.push(AttnSeq {
                row,
                n_new: s.tokens.len(),
                start_pos: s.start_pos,
                block_table: s.block_table,
            });
            for (i, &tok) in s.tokens.iter().enumerate() {
                let p = s.start_pos + i;
                slots.push(s.block_table[p / bs] as usize * bs + p % bs);
                for &f in &self.inv_freq {
                    // Angle in f32 as transformers computes it; cos/sin evaluated precisely.
                    let a = (p as f32 * f) as f64;
                    cos.push(a.cos() as f32);
                    sin.push(a.sin() as f32);
                }
                let e = tok as usize * h;
                x.extend_from_slice(&self.embed[e..e + h]);
            }
            row += s.tokens.len();
        }

        let mut xn = vec![0.0f32; t * h];
        let mut qkv = vec![0.0f32; t * qkv_w];
        let mut attn = vec![0.0f32; t * nh * hd];
        let mut gu = vec![0.0f32; t * 2 * inter];
        let mut act = vec![0.0f32; t * inter];
        let shape = AttnShape {
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            block_size: bs,
        };

        for (li, layer) in self.layers.iter().enumerate() {
            rms_norm(&mut xn, &x, &layer.attn_norm, c.rms_norm_eps);
            linear(&mut qkv, &xn, &layer.wqkv, t, h, qkv_w, false);
            for r in 0..t {
                let row = &mut qkv[r * qkv_w..(r + 1) * qkv_w];
                if let Some(b) = &layer.bqkv {
                    row.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                }
                let (q, rest) = row.split_at_mut(nh * hd);
                let k = &mut rest[..nkv * hd];
                if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                    rms_norm_inplace(q, qn, c.rms_norm_eps);
                    rms_norm_inplace(k, kn, c.rms_norm_eps);
                }
                let (cr, sr) = (
                    &cos[r * half..(r + 1) * half],
                    &sin[r * half..(r + 1) * half],
                );
                q.chunks_exact_mut(hd).for_each(|hq| rope_half(hq, cr, sr));
                k.chunks_exact_mut(hd).for_each(|hk| rope_half(hk, cr, sr));
                let (kk, vv) = rest.split_at(nkv * hd);
                cache.write(li, slots[r], kk, &vv[..nkv * hd]);
            }
            let (kc, vc) = cache.layer(li);
            paged_attention(&mut attn, &qkv, qkv_w, &seqs, kc, vc, shape);
            // Residual add fused into the output projection.
            linear(&mut x, &attn, &layer.wo, t, nh * hd, h, true);

            rms_norm(&mut xn, &x, &layer.mlp_norm, c.rms_norm_eps);
            linear(&mut gu, &xn, &layer.wgu, t, h, 2 * inter, false);
            swiglu(&mut act, &gu, inter);
            linear(&mut x, &act, &layer.wdown, t, inter, h, true);
        }

        // Only each sequence's last token needs the (large) vocabulary projection.
        let b = batch.len();
        let mut last = Vec::with_capacity(b * h);
        for s in &seqs {
            let r = s.row + s.n_new - 1;
            last.extend_from_slice(&x[r * h..(r + 1) * h]);
        }
        let mut lastn = vec![0.0f32; b * h];
        rms_norm(&mut lastn, &last, &self.final_norm, c.rms_norm_eps);
        let head = self.lm_head.as_deref().unwrap_or(&self.embed);
        let mut logits = vec![0.0f32; b * c.vocab_size];
        linear(&mut logits, &lastn, head, b, h, c.vocab_size, false);
        Ok(logits
            .chunks_exact(c.vocab_size)
            .map(<[f32]>::to_vec)
            .collect())
    }
}
