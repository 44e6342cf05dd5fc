//! The decoder-only transformer shared by the Llama, Qwen2 and Qwen3 families,
//! computing on the CPU through a [`PagedKvCache`]: f32 activations, weights in their
//! file's format ([`QMatrix`]: GGUF blocks, bf16, f16 or f32).

use super::attention::{paged_attention, AttnSeq, AttnShape, PagedKvCache};
use super::ops::{rms_norm, rms_norm_inplace, rope_half, swiglu};
use super::quant::{self, QMatrix};
use crate::model::{Family, Logits, ModelConfig, ModelError, SeqInput};

/// A 1-D tensor's shape and its f32 values.
pub(crate) type NamedTensor = (Vec<usize>, Vec<f32>);

/// Where weights come from: named tensors in HF `[out, in]` layout.
pub(crate) trait TensorSource {
    /// A 2-D weight in its stored format, with its shape, or `None` when absent.
    fn matrix(&mut self, name: &str) -> Result<Option<(Vec<usize>, QMatrix)>, ModelError>;
    /// A 1-D tensor (norm weight, bias) as f32, or `None` when absent.
    fn vector(&mut self, name: &str) -> Result<Option<NamedTensor>, ModelError>;
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
            "qkv" => ("self_attn.qkv_proj.weight", "attn_qkv.weight"),
            // llama.cpp stores Phi-3's fused gate and up rows as `ffn_up`.
            "gate_up" => ("mlp.gate_up_proj.weight", "ffn_up.weight"),
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
    /// q, k, v rows (`[(n_heads + 2 n_kv) * head_dim, hidden]`), one fused matrix when
    /// their formats agree, else three.
    wqkv: Vec<QMatrix>,
    bqkv: Option<Vec<f32>>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    wo: QMatrix,
    mlp_norm: Vec<f32>,
    /// Gate and up rows (`[2 * intermediate, hidden]`), fused when their formats agree.
    wgu: Vec<QMatrix>,
    wdown: QMatrix,
}

/// A Llama / Qwen2 / Qwen3 decoder with weights in their file's format.
pub struct Transformer {
    cfg: ModelConfig,
    embed: QMatrix,
    layers: Vec<Layer>,
    final_norm: Vec<f32>,
    /// `None` when the head is tied to the embedding.
    lm_head: Option<QMatrix>,
    inv_freq: Vec<f32>,
}

fn missing(name: &str) -> ModelError {
    ModelError::Tensor {
        name: name.to_string(),
        reason: "missing".into(),
    }
}

fn need(src: &mut dyn TensorSource, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
    let (got, data) = src.vector(name)?.ok_or_else(|| missing(name))?;
    check_shape(name, &got, &[len])?;
    Ok(data)
}

fn need_matrix(
    src: &mut dyn TensorSource,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<QMatrix, ModelError> {
    optional_matrix(src, name, rows, cols)?.ok_or_else(|| missing(name))
}

fn optional_matrix(
    src: &mut dyn TensorSource,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<Option<QMatrix>, ModelError> {
    match src.matrix(name)? {
        None => Ok(None),
        Some((got, m)) => {
            check_shape(name, &got, &[rows, cols])?;
            Ok(Some(m))
        }
    }
}

fn check_shape(name: &str, got: &[usize], want: &[usize]) -> Result<(), ModelError> {
    if got != want {
        return Err(ModelError::Tensor {
            name: name.to_string(),
            reason: format!("shape {got:?}, expected {want:?}"),
        });
    }
    Ok(())
}

/// The row order that undoes llama.cpp's q/k permutation (made for its interleaved
/// rotary) so the half-split rotary applies: HF row `j * d/2 + i` of a head is GGUF
/// row `2i + j`.
fn unpermuted_order(n_heads: usize, head_dim: usize) -> Vec<usize> {
    let mut order = vec![0; n_heads * head_dim];
    let half = head_dim / 2;
    for h in 0..n_heads {
        for i in 0..half {
            for j in 0..2 {
                order[h * head_dim + j * half + i] = h * head_dim + 2 * i + j;
            }
        }
    }
    order
}

fn reorder(v: &[f32], order: &[usize]) -> Vec<f32> {
    order.iter().map(|&i| v[i]).collect()
}

/// One matrix when the parts' formats agree, else the parts as they are.
fn fuse(parts: Vec<QMatrix>) -> Vec<QMatrix> {
    let refs: Vec<&QMatrix> = parts.iter().collect();
    match QMatrix::concat_rows(&refs) {
        Some(m) => vec![m],
        None => parts,
    }
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
        let embed = need_matrix(src, naming.global("embed"), cfg.vocab_size, h)?;
        let (q_order, k_order) = (unpermuted_order(nh, hd), unpermuted_order(nkv, hd));
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let name = |w: &str| naming.layer(i, w);
            let fused = cfg.family == Family::Phi3;
            let wqkv = if fused {
                vec![need_matrix(src, &name("qkv"), (nh + 2 * nkv) * hd, h)?]
            } else {
                let mut q = need_matrix(src, &name("q"), nh * hd, h)?;
                let mut k = need_matrix(src, &name("k"), nkv * hd, h)?;
                let v = need_matrix(src, &name("v"), nkv * hd, h)?;
                if unpermute_qk {
                    q = q.reorder_rows(&q_order);
                    k = k.reorder_rows(&k_order);
                }
                fuse(vec![q, k, v])
            };
            let bqkv = if cfg.attention_bias {
                let mut qb = need(src, &name("qb"), nh * hd)?;
                let mut kb = need(src, &name("kb"), nkv * hd)?;
                if unpermute_qk {
                    qb = reorder(&qb, &q_order);
                    kb = reorder(&kb, &k_order);
                }
                qb.extend_from_slice(&kb);
                qb.extend(need(src, &name("vb"), nkv * hd)?);
                Some(qb)
            } else {
                None
            };
            let (q_norm, k_norm) = if cfg.qk_norm {
                (
                    Some(need(src, &name("q_norm"), hd)?),
                    Some(need(src, &name("k_norm"), hd)?),
                )
            } else {
                (None, None)
            };
            let wgu = if fused {
                vec![need_matrix(src, &name("gate_up"), 2 * inter, h)?]
            } else {
                let gate = need_matrix(src, &name("gate"), inter, h)?;
                let up = need_matrix(src, &name("up"), inter, h)?;
                fuse(vec![gate, up])
            };
            layers.push(Layer {
                attn_norm: need(src, &name("attn_norm"), h)?,
                wqkv,
                bqkv,
                q_norm,
                k_norm,
                wo: need_matrix(src, &name("o"), h, nh * hd)?,
                mlp_norm: need(src, &name("mlp_norm"), h)?,
                wgu,
                wdown: need_matrix(src, &name("down"), h, inter)?,
            });
        }
        let final_norm = need(src, naming.global("norm"), h)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            // Some GGUF files omit output.weight even when untied in spirit; fall back to the embedding.
            optional_matrix(src, naming.global("head"), cfg.vocab_size, h)?
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
        let c = &self.cfg;
        if cache.num_layers() != c.num_layers
            || cache.n_kv_heads() != c.num_kv_heads
            || cache.head_dim() != c.head_dim
        {
            return Err(ModelError::InvalidInput(
                "KV cache geometry does not match the model".into(),
            ));
        }
        crate::model::check_batch(c, batch, cache.num_blocks(), cache.block_size())
    }

    /// Hands the weights over, as f32 in the fused layout a layer at a time, for a
    /// device model to upload.
    #[cfg(feature = "cuda")]
    pub(crate) fn into_host_weights(self) -> HostWeights {
        let rows_f32 =
            |parts: &[QMatrix]| -> Vec<f32> { parts.iter().flat_map(|p| p.to_f32()).collect() };
        let layers = self.layers.into_iter().map(move |l| HostLayer {
            attn_norm: l.attn_norm,
            wqkv: rows_f32(&l.wqkv),
            bqkv: l.bqkv,
            q_norm: l.q_norm,
            k_norm: l.k_norm,
            wo: l.wo.to_f32(),
            mlp_norm: l.mlp_norm,
            wgu: rows_f32(&l.wgu),
            wdown: l.wdown.to_f32(),
        });
        HostWeights {
            embed: self.embed.to_f32(),
            lm_head: self.lm_head.map(|h| h.to_f32()),
            cfg: self.cfg,
            layers: Box::new(layers),
            final_norm: self.final_norm,
            inv_freq: self.inv_freq,
        }
    }
}

/// A model's weights as f32 in the fused layout, the layers converted one at a
/// time as they are consumed (so a device upload holds one layer on the host).
#[cfg(feature = "cuda")]
pub(crate) struct HostWeights {
    pub cfg: ModelConfig,
    pub embed: Vec<f32>,
    pub layers: Box<dyn Iterator<Item = HostLayer>>,
    pub final_norm: Vec<f32>,
    /// `None` when the head is tied to the embedding.
    pub lm_head: Option<Vec<f32>>,
    pub inv_freq: Vec<f32>,
}

/// One layer of [`HostWeights`].
#[cfg(feature = "cuda")]
pub(crate) struct HostLayer {
    pub attn_norm: Vec<f32>,
    pub wqkv: Vec<f32>,
    pub bqkv: Option<Vec<f32>>,
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub wo: Vec<f32>,
    pub mlp_norm: Vec<f32>,
    pub wgu: Vec<f32>,
    pub wdown: Vec<f32>,
}

impl crate::model::Model for Transformer {
    type Kv = PagedKvCache;

    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn new_kv_cache(
        &self,
        num_blocks: usize,
        block_size: usize,
    ) -> Result<PagedKvCache, ModelError> {
        let c = &self.cfg;
        Ok(PagedKvCache::new(
            c.num_layers,
            num_blocks,
            block_size,
            c.num_kv_heads,
            c.head_dim,
        ))
    }

    fn weights(&self) -> (u64, String) {
        let mut mats: Vec<&QMatrix> = vec![&self.embed];
        mats.extend(self.lm_head.as_ref());
        let mut vec_bytes = 4 * self.final_norm.len();
        for l in &self.layers {
            mats.extend(l.wqkv.iter().chain(&l.wgu).chain([&l.wo, &l.wdown]));
            vec_bytes += 4 * (l.attn_norm.len() + l.mlp_norm.len());
            for v in [&l.bqkv, &l.q_norm, &l.k_norm].into_iter().flatten() {
                vec_bytes += 4 * v.len();
            }
        }
        let bytes = mats.iter().map(|m| m.nbytes() as u64).sum::<u64>() + vec_bytes as u64;
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for m in &mats {
            let name = m.qtype().name();
            match counts.iter_mut().find(|(n, _)| *n == name) {
                Some((_, c)) => *c += 1,
                None => counts.push((name, 1)),
            }
        }
        let formats = counts
            .iter()
            .map(|(n, c)| format!("{n} ×{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        (bytes, formats)
    }

    fn forward(&self, batch: &[SeqInput], cache: &mut PagedKvCache) -> Result<Logits, ModelError> {
        if batch.is_empty() {
            return Logits::new(Vec::new(), self.cfg.vocab_size);
        }
        self.check_batch(batch, cache)?;
        // The whole step runs on the compute pool, so its ~150 parallel sections are
        // forked and joined inside the pool instead of each one waking a pool thread
        // from this (outside) thread and putting this thread to sleep until it ends.
        crate::pool::pool().install(|| self.forward_in_pool(batch, cache))
    }
}

impl Transformer {
    fn forward_in_pool(
        &self,
        batch: &[SeqInput],
        cache: &mut PagedKvCache,
    ) -> Result<Logits, ModelError> {
        let c = &self.cfg;
        let (h, hd, nh, nkv, inter) = (
            c.hidden_size,
            c.head_dim,
            c.num_heads,
            c.num_kv_heads,
            c.intermediate_size,
        );
        // Rotary pairs per head: `rotary_dim / 2` (the rest of the head passes through).
        let half = self.inv_freq.len();
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
                let at = x.len();
                x.resize(at + h, 0.0);
                self.embed.dequant_row_chunk(tok as usize, 0, &mut x[at..]);
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
            window: c.sliding_window,
        };

        for (li, layer) in self.layers.iter().enumerate() {
            rms_norm(&mut xn, &x, &layer.attn_norm, c.rms_norm_eps);
            quant::linear(&mut qkv, &xn, &layer.wqkv, t, false);
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
                q.chunks_exact_mut(hd)
                    .for_each(|hq| rope_half(&mut hq[..2 * half], cr, sr));
                k.chunks_exact_mut(hd)
                    .for_each(|hk| rope_half(&mut hk[..2 * half], cr, sr));
                let (kk, vv) = rest.split_at(nkv * hd);
                cache.write(li, slots[r], kk, &vv[..nkv * hd]);
            }
            let (kc, vc) = cache.layer(li);
            paged_attention(&mut attn, &qkv, qkv_w, &seqs, kc, vc, shape);
            // Residual add fused into the output projection.
            quant::linear(&mut x, &attn, std::slice::from_ref(&layer.wo), t, true);

            rms_norm(&mut xn, &x, &layer.mlp_norm, c.rms_norm_eps);
            quant::linear(&mut gu, &xn, &layer.wgu, t, false);
            swiglu(&mut act, &gu, inter);
            quant::linear(&mut x, &act, std::slice::from_ref(&layer.wdown), t, true);
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
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let mut logits = vec![0.0f32; b * c.vocab_size];
        quant::linear(&mut logits, &lastn, std::slice::from_ref(head), b, false);
        Logits::new(logits, c.vocab_size)
    }
}
