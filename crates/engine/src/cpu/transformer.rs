//! The decoder-only transformer every family runs on the CPU, shaped by its
//! [`ModelConfig`] and [`Arch`] (per-layer windows, sandwich norms, soft-caps, dense or
//! mixture-of-experts MLP), through a [`PagedKvCache`]: f32 activations, weights in
//! their file's format ([`QMatrix`]: GGUF blocks, bf16, f16 or f32).

use super::attention::{paged_attention, AttnSeq, AttnShape, PagedKvCache};
use super::ops::{gated_act, rms_norm, rms_norm_inplace, rope_half, softcap};
use super::quant::{self, QMatrix};
use crate::model::{Activation, Arch, Family, Logits, ModelConfig, ModelError, Moe, SeqInput};

/// A 1-D tensor's shape and its f32 values.
pub(crate) type NamedTensor = (Vec<usize>, Vec<f32>);

/// A stack's shape (`[experts, out, in]`) and one matrix per expert.
pub(crate) type ExpertStack = (Vec<usize>, Vec<QMatrix>);

/// Where weights come from: named tensors in HF `[out, in]` layout.
pub(crate) trait TensorSource {
    /// A 2-D weight in its stored format, with its shape, or `None` when absent.
    fn matrix(&mut self, name: &str) -> Result<Option<(Vec<usize>, QMatrix)>, ModelError>;
    /// A 1-D tensor (norm weight, bias) as f32, or `None` when absent.
    fn vector(&mut self, name: &str) -> Result<Option<NamedTensor>, ModelError>;
    /// A 3-D stack of experts' weights (`[experts, out, in]`, llama.cpp's `*_exps`)
    /// as one matrix per expert in the stored format, with the stack's shape.
    fn experts(&mut self, name: &str) -> Result<Option<ExpertStack>, ModelError>;
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
            // Gemma's sandwich: `post_attention_layernorm` follows attention there.
            "pre_mlp_norm" => ("pre_feedforward_layernorm.weight", "ffn_norm.weight"),
            "post_attn_norm" => (
                "post_attention_layernorm.weight",
                "post_attention_norm.weight",
            ),
            "post_mlp_norm" => ("post_feedforward_layernorm.weight", "post_ffw_norm.weight"),
            "router" => ("mlp.gate.weight", "ffn_gate_inp.weight"),
            "ob" => ("self_attn.o_proj.bias", "attn_output.bias"),
            "sinks" => ("self_attn.sinks", "attn_sinks.weight"),
            "gate" => ("mlp.gate_proj.weight", "ffn_gate.weight"),
            "up" => ("mlp.up_proj.weight", "ffn_up.weight"),
            _ => ("mlp.down_proj.weight", "ffn_down.weight"),
        };
        match self {
            Naming::Hf => format!("model.layers.{i}.{hf}"),
            Naming::Gguf => format!("blk.{i}.{gg}"),
        }
    }

    /// Router and expert `e`'s gate, up and down weights of layer `i` (HF layout:
    /// Mixtral's `block_sparse_moe.experts.E.w1/w3/w2`, Qwen3-MoE's `mlp.experts.E.*_proj`).
    fn expert(self, family: Family, i: usize, e: usize) -> [String; 3] {
        let l = format!("model.layers.{i}");
        if family == Family::Mixtral {
            let w = |n: &str| format!("{l}.block_sparse_moe.experts.{e}.{n}.weight");
            [w("w1"), w("w3"), w("w2")]
        } else {
            let w = |n: &str| format!("{l}.mlp.experts.{e}.{n}_proj.weight");
            [w("gate"), w("up"), w("down")]
        }
    }

    fn router(self, family: Family, i: usize) -> String {
        if family == Family::Mixtral {
            format!("model.layers.{i}.block_sparse_moe.gate.weight")
        } else {
            self.layer(i, "router")
        }
    }
}

/// A gated MLP: gate and up rows (`[2 * inter, hidden]`, fused when their formats
/// agree) and the down projection.
struct Ffn {
    wgu: Vec<QMatrix>,
    wdown: QMatrix,
    /// Biases of the gate/up rows and of the output (gpt-oss's experts).
    bgu: Option<Vec<f32>>,
    bdown: Option<Vec<f32>>,
}

/// A layer's MLP.
enum Mlp {
    Dense(Ffn),
    /// A router (`[experts, hidden]`, with a bias in gpt-oss) over experts of the same shape.
    Moe {
        router: QMatrix,
        router_bias: Option<Vec<f32>>,
        experts: Vec<Ffn>,
    },
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
    /// Bias of the output projection (gpt-oss).
    bo: Option<Vec<f32>>,
    /// Per query head, the logit that joins each softmax's denominator (gpt-oss).
    sinks: Option<Vec<f32>>,
    /// Applied to the attention output before the residual add (Gemma's sandwich).
    post_attn_norm: Option<Vec<f32>>,
    mlp_norm: Vec<f32>,
    mlp: Mlp,
    /// Applied to the MLP output before the residual add (Gemma's sandwich).
    post_mlp_norm: Option<Vec<f32>>,
}

/// A decoder of any supported family with weights in their file's format.
pub struct Transformer {
    cfg: ModelConfig,
    embed: QMatrix,
    layers: Vec<Layer>,
    final_norm: Vec<f32>,
    /// `None` when the head is tied to the embedding.
    lm_head: Option<QMatrix>,
    inv_freq: Vec<f32>,
    /// The sliding layers' own rotary frequencies (Gemma 3).
    local_inv_freq: Option<Vec<f32>>,
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

fn add_one(w: &mut [f32]) {
    w.iter_mut().for_each(|x| *x += 1.0);
}

/// A layer's router and experts.
fn load_moe(
    src: &mut dyn TensorSource,
    naming: Naming,
    family: Family,
    i: usize,
    h: usize,
    moe: &Moe,
) -> Result<Mlp, ModelError> {
    let inter = moe.intermediate_size;
    if matches!(naming, Naming::Gguf) {
        let ne = moe.num_experts;
        let router = need_matrix(src, &naming.layer(i, "router"), ne, h)?;
        let mut stack = |what: &str, rows: usize, cols: usize| {
            let name = format!("blk.{i}.ffn_{what}_exps.weight");
            let (got, m) = src.experts(&name)?.ok_or_else(|| missing(&name))?;
            check_shape(&name, &got, &[ne, rows, cols])?;
            Ok::<_, ModelError>(m)
        };
        let (gate, up, down) = (
            stack("gate", inter, h)?,
            stack("up", inter, h)?,
            stack("down", h, inter)?,
        );
        let experts = gate
            .into_iter()
            .zip(up)
            .zip(down)
            .map(|((g, u), d)| Ffn {
                wgu: fuse(vec![g, u]),
                wdown: d,
                bgu: None,
                bdown: None,
            })
            .collect();
        return Ok(Mlp::Moe {
            router,
            router_bias: None,
            experts,
        });
    }
    if family == Family::GptOss {
        return load_gpt_oss_moe(src, i, h, moe);
    }
    let router = need_matrix(src, &naming.router(family, i), moe.num_experts, h)?;
    let experts = (0..moe.num_experts)
        .map(|e| {
            let [g, u, d] = naming.expert(family, i, e);
            let gate = need_matrix(src, &g, inter, h)?;
            let up = need_matrix(src, &u, inter, h)?;
            Ok(Ffn {
                wgu: fuse(vec![gate, up]),
                wdown: need_matrix(src, &d, h, inter)?,
                bgu: None,
                bdown: None,
            })
        })
        .collect::<Result<Vec<_>, ModelError>>()?;
    Ok(Mlp::Moe {
        router,
        router_bias: None,
        experts,
    })
}

/// gpt-oss stores each layer's experts as stacked `[in, out]` tensors, gate and up
/// interleaved by column (`gate_up_proj [E, hidden, 2·inter]`, `down_proj [E, inter,
/// hidden]`); they become `[out, in]` matrices with the gate rows before the up rows.
fn load_gpt_oss_moe(
    src: &mut dyn TensorSource,
    i: usize,
    h: usize,
    moe: &Moe,
) -> Result<Mlp, ModelError> {
    let (ne, inter) = (moe.num_experts, moe.intermediate_size);
    let l = format!("model.layers.{i}.mlp");
    let router = need_matrix(src, &format!("{l}.router.weight"), ne, h)?;
    let router_bias = Some(need(src, &format!("{l}.router.bias"), ne)?);
    let stacked = |src: &mut dyn TensorSource, name: String, dims: &[usize]| {
        let (got, data) = src.vector(&name)?.ok_or_else(|| missing(&name))?;
        check_shape(&name, &got, dims)?;
        Ok::<_, ModelError>(data)
    };
    let gu = stacked(
        src,
        format!("{l}.experts.gate_up_proj"),
        &[ne, h, 2 * inter],
    )?;
    let gub = stacked(
        src,
        format!("{l}.experts.gate_up_proj_bias"),
        &[ne, 2 * inter],
    )?;
    let down = stacked(src, format!("{l}.experts.down_proj"), &[ne, inter, h])?;
    let db = stacked(src, format!("{l}.experts.down_proj_bias"), &[ne, h])?;
    let experts = (0..ne)
        .map(|e| {
            let w = &gu[e * h * 2 * inter..(e + 1) * h * 2 * inter];
            // Output row r of the de-interleaved matrix is input column `col(r)`.
            let col = |r: usize| {
                if r < inter {
                    2 * r
                } else {
                    2 * (r - inter) + 1
                }
            };
            let wgu: Vec<f32> = (0..2 * inter)
                .flat_map(|r| (0..h).map(move |c| w[c * 2 * inter + col(r)]))
                .collect();
            let b = &gub[e * 2 * inter..(e + 1) * 2 * inter];
            let bgu = (0..2 * inter).map(|r| b[col(r)]).collect();
            let d = &down[e * inter * h..(e + 1) * inter * h];
            let wdown: Vec<f32> = (0..h)
                .flat_map(|r| (0..inter).map(move |c| d[c * h + r]))
                .collect();
            Ffn {
                wgu: vec![compact(2 * inter, h, wgu)],
                wdown: compact(h, inter, wdown),
                bgu: Some(bgu),
                bdown: Some(db[e * h..(e + 1) * h].to_vec()),
            }
        })
        .collect();
    Ok(Mlp::Moe {
        router,
        router_bias,
        experts,
    })
}

/// bf16 when every value is one (a bf16 checkpoint's, transposed), else f32.
fn compact(rows: usize, cols: usize, data: Vec<f32>) -> QMatrix {
    let bits: Vec<half::bf16> = data.iter().map(|&x| half::bf16::from_f32(x)).collect();
    if bits.iter().zip(&data).all(|(b, &x)| b.to_f32() == x) {
        let raw: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        if let Ok(m) = QMatrix::from_raw(quant::QType::BF16, rows, cols, &raw) {
            return m;
        }
    }
    QMatrix::f32(rows, cols, data)
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
        // llama.cpp's converter already stores Gemma's gains as `1 + w`.
        let plus_one = cfg.arch.norm_plus_one && matches!(naming, Naming::Hf);
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
            let mlp = match &cfg.arch.moe {
                Some(moe) if moe.is_moe_layer(i) => load_moe(src, naming, cfg.family, i, h, moe)?,
                _ if fused => Mlp::Dense(Ffn {
                    wgu: vec![need_matrix(src, &name("gate_up"), 2 * inter, h)?],
                    wdown: need_matrix(src, &name("down"), h, inter)?,
                    bgu: None,
                    bdown: None,
                }),
                _ => {
                    let gate = need_matrix(src, &name("gate"), inter, h)?;
                    let up = need_matrix(src, &name("up"), inter, h)?;
                    Mlp::Dense(Ffn {
                        wgu: fuse(vec![gate, up]),
                        wdown: need_matrix(src, &name("down"), h, inter)?,
                        bgu: None,
                        bdown: None,
                    })
                }
            };
            let sandwich = cfg.arch.sandwich_norms;
            let (post_attn_norm, post_mlp_norm) = if sandwich {
                (
                    Some(need(src, &name("post_attn_norm"), h)?),
                    Some(need(src, &name("post_mlp_norm"), h)?),
                )
            } else {
                (None, None)
            };
            let mlp_norm_key = if sandwich { "pre_mlp_norm" } else { "mlp_norm" };
            let (bo, sinks) = (
                if cfg.arch.out_and_expert_biases {
                    Some(need(src, &name("ob"), h)?)
                } else {
                    None
                },
                if cfg.arch.attn_sinks {
                    Some(need(src, &name("sinks"), nh)?)
                } else {
                    None
                },
            );
            let mut layer = Layer {
                bo,
                sinks,
                attn_norm: need(src, &name("attn_norm"), h)?,
                wqkv,
                bqkv,
                q_norm,
                k_norm,
                wo: need_matrix(src, &name("o"), h, nh * hd)?,
                post_attn_norm,
                mlp_norm: need(src, &name(mlp_norm_key), h)?,
                mlp,
                post_mlp_norm,
            };
            if plus_one {
                for n in [
                    Some(&mut layer.attn_norm),
                    Some(&mut layer.mlp_norm),
                    layer.post_attn_norm.as_mut(),
                    layer.post_mlp_norm.as_mut(),
                    layer.q_norm.as_mut(),
                    layer.k_norm.as_mut(),
                ]
                .into_iter()
                .flatten()
                {
                    add_one(n);
                }
            }
            layers.push(layer);
        }
        let mut final_norm = need(src, naming.global("norm"), h)?;
        if plus_one {
            add_one(&mut final_norm);
        }
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
            local_inv_freq: cfg.local_inv_freqs(),
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
    /// device model to upload; the device kernels run the Llama block only.
    #[cfg(feature = "cuda")]
    pub(crate) fn into_host_weights(self) -> Result<HostWeights, ModelError> {
        if self.cfg.arch != Arch::default() || self.cfg.rope_attention_factor() != 1.0 {
            return Err(ModelError::Config(format!(
                "the {:?} block (sandwich norms, soft-caps, local or yarn rope, sinks or experts) is not in the CUDA kernels yet; serve this model on cpu",
                self.cfg.family
            )));
        }
        let rows_f32 =
            |parts: &[QMatrix]| -> Vec<f32> { parts.iter().flat_map(|p| p.to_f32()).collect() };
        let layers = self.layers.into_iter().filter_map(move |l| {
            let Mlp::Dense(ffn) = l.mlp else {
                return None;
            };
            Some(HostLayer {
                attn_norm: l.attn_norm,
                wqkv: rows_f32(&l.wqkv),
                bqkv: l.bqkv,
                q_norm: l.q_norm,
                k_norm: l.k_norm,
                wo: l.wo.to_f32(),
                mlp_norm: l.mlp_norm,
                wgu: rows_f32(&ffn.wgu),
                wdown: ffn.wdown.to_f32(),
            })
        });
        Ok(HostWeights {
            embed: self.embed.to_f32(),
            lm_head: self.lm_head.map(|h| h.to_f32()),
            cfg: self.cfg,
            layers: Box::new(layers),
            final_norm: self.final_norm,
            inv_freq: self.inv_freq,
        })
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
            mats.extend(l.wqkv.iter().chain([&l.wo]));
            match &l.mlp {
                Mlp::Dense(f) => mats.extend(f.wgu.iter().chain([&f.wdown])),
                Mlp::Moe {
                    router, experts, ..
                } => {
                    mats.push(router);
                    for f in experts {
                        mats.extend(f.wgu.iter().chain([&f.wdown]));
                    }
                }
            }
            vec_bytes += 4 * (l.attn_norm.len() + l.mlp_norm.len());
            for v in [
                &l.bo,
                &l.sinks,
                &l.bqkv,
                &l.q_norm,
                &l.k_norm,
                &l.post_attn_norm,
                &l.post_mlp_norm,
            ]
            .into_iter()
            .flatten()
            {
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
        let arch = &c.arch;
        let (h, hd, nh, nkv) = (c.hidden_size, c.head_dim, c.num_heads, c.num_kv_heads);
        // Rotary pairs per head: `rotary_dim / 2` (the rest of the head passes through).
        let half = self.inv_freq.len();
        let qkv_w = (nh + 2 * nkv) * hd;
        let bs = cache.block_size();
        // Gemma scales embeddings by sqrt(hidden) rounded to f32, as transformers does.
        let embed_scale = arch.scale_embeddings.then(|| (h as f64).sqrt() as f32);

        // Flatten the batch: one row per new token.
        let t: usize = batch.iter().map(|s| s.tokens.len()).sum();
        let mut seqs = Vec::with_capacity(batch.len());
        let mut slots = Vec::with_capacity(t);
        let mut positions = Vec::with_capacity(t);
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
                positions.push(p);
                let at = x.len();
                x.resize(at + h, 0.0);
                self.embed.dequant_row_chunk(tok as usize, 0, &mut x[at..]);
                if let Some(e) = embed_scale {
                    x[at..].iter_mut().for_each(|v| *v *= e);
                }
            }
            row += s.tokens.len();
        }
        let global_rope = rope_tables(&positions, &self.inv_freq, c.rope_attention_factor());
        let local_rope = self
            .local_inv_freq
            .as_ref()
            .map(|f| rope_tables(&positions, f, 1.0));

        let mut xn = vec![0.0f32; t * h];
        let mut qkv = vec![0.0f32; t * qkv_w];
        let mut attn = vec![0.0f32; t * nh * hd];
        // The sublayer output before its post-norm and residual add (sandwich norms).
        let mut branch = vec![0.0f32; if arch.sandwich_norms { t * h } else { 0 }];
        let mut mlp = MlpScratch::default();
        let scale = arch
            .query_pre_attn_scalar
            .unwrap_or(hd as f32)
            .sqrt()
            .recip();

        for (li, layer) in self.layers.iter().enumerate() {
            let window = c.window(li);
            let (cos, sin) = match (&local_rope, window) {
                (Some(local), Some(_)) => (&local.0, &local.1),
                _ => (&global_rope.0, &global_rope.1),
            };
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
            let shape = AttnShape {
                n_heads: nh,
                n_kv_heads: nkv,
                head_dim: hd,
                block_size: bs,
                window,
                scale,
                softcap: arch.attn_softcap,
                sinks: layer.sinks.as_deref(),
            };
            paged_attention(&mut attn, &qkv, qkv_w, &seqs, kc, vc, shape);
            let wo = std::slice::from_ref(&layer.wo);
            match &layer.post_attn_norm {
                // Residual add fused into the output projection.
                None => {
                    quant::linear(&mut x, &attn, wo, t, true);
                    add_bias(&mut x, layer.bo.as_deref());
                }
                Some(post) => {
                    quant::linear(&mut branch, &attn, wo, t, false);
                    add_bias(&mut branch, layer.bo.as_deref());
                    add_normed(&mut x, &mut branch, post, c.rms_norm_eps);
                }
            }

            rms_norm(&mut xn, &x, &layer.mlp_norm, c.rms_norm_eps);
            match &layer.post_mlp_norm {
                None => mlp.run(&layer.mlp, arch, &mut x, &xn, t, true),
                Some(post) => {
                    mlp.run(&layer.mlp, arch, &mut branch, &xn, t, false);
                    add_normed(&mut x, &mut branch, post, c.rms_norm_eps);
                }
            }
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
        if let Some(cap) = arch.final_softcap {
            softcap(&mut logits, cap);
        }
        Logits::new(logits, c.vocab_size)
    }
}

/// Adds `bias` to every row of `x` (nothing when `None`).
fn add_bias(x: &mut [f32], bias: Option<&[f32]>) {
    if let Some(b) = bias {
        for row in x.chunks_exact_mut(b.len()) {
            row.iter_mut().zip(b).for_each(|(a, b)| *a += b);
        }
    }
}

/// cos and sin of every row's position times each frequency (`rows × freqs.len()`),
/// times `factor` (YaRN's attention factor).
fn rope_tables(positions: &[usize], freqs: &[f32], factor: f32) -> (Vec<f32>, Vec<f32>) {
    let mut cos = Vec::with_capacity(positions.len() * freqs.len());
    let mut sin = Vec::with_capacity(positions.len() * freqs.len());
    for &p in positions {
        for &f in freqs {
            // Angle in f32 as transformers computes it; cos/sin evaluated precisely.
            let a = (p as f32 * f) as f64;
            cos.push(a.cos() as f32 * factor);
            sin.push(a.sin() as f32 * factor);
        }
    }
    (cos, sin)
}

/// `x += rms_norm(branch, w)`, row by row (`branch` is normalised in place).
fn add_normed(x: &mut [f32], branch: &mut [f32], w: &[f32], eps: f32) {
    rms_norm_inplace(branch, w, eps);
    x.iter_mut().zip(branch.iter()).for_each(|(a, b)| *a += b);
}

/// In-place softmax.
fn softmax(p: &mut [f32]) {
    let max = p.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    p.iter_mut().for_each(|v| *v = (*v - max).exp());
    let total: f32 = p.iter().sum();
    p.iter_mut().for_each(|v| *v /= total);
}

/// Buffers of the MLP, reused across layers.
#[derive(Default)]
struct MlpScratch {
    gu: Vec<f32>,
    act: Vec<f32>,
    /// MoE: router logits, the rows routed to one expert, that expert's output and the
    /// weighted sum of the experts.
    logits: Vec<f32>,
    rows: Vec<f32>,
    out: Vec<f32>,
    sum: Vec<f32>,
}

impl MlpScratch {
    /// `out (+)= mlp(xn)` over `t` rows.
    fn run(&mut self, mlp: &Mlp, arch: &Arch, out: &mut [f32], xn: &[f32], t: usize, acc: bool) {
        match mlp {
            Mlp::Dense(f) => self.ffn(f, arch.activation, out, xn, t, acc),
            Mlp::Moe {
                router,
                router_bias,
                experts,
            } => {
                let Some(moe) = &arch.moe else { return };
                let routed = self.route(router, router_bias.as_deref(), moe, xn, t);
                self.experts(experts, &routed, arch.activation, out, xn, t, acc);
            }
        }
    }

    fn ffn(&mut self, f: &Ffn, act: Activation, out: &mut [f32], xn: &[f32], t: usize, acc: bool) {
        let inter = f.wdown.cols();
        self.gu.resize(t * 2 * inter, 0.0);
        self.act.resize(t * inter, 0.0);
        quant::linear(&mut self.gu, xn, &f.wgu, t, false);
        add_bias(&mut self.gu, f.bgu.as_deref());
        gated_act(&mut self.act, &self.gu, inter, act);
        quant::linear(out, &self.act, std::slice::from_ref(&f.wdown), t, acc);
        add_bias(&mut out[..t * f.wdown.rows()], f.bdown.as_deref());
    }

    /// Each expert's rows and their weights: the softmax over all experts' router
    /// logits with the top k kept (renormalised if the family says so), or (gpt-oss)
    /// the softmax over the top k logits only.
    fn route(
        &mut self,
        router: &QMatrix,
        bias: Option<&[f32]>,
        moe: &Moe,
        xn: &[f32],
        t: usize,
    ) -> Vec<Vec<(usize, f32)>> {
        let (ne, k) = (moe.num_experts, moe.top_k);
        self.logits.resize(t * ne, 0.0);
        quant::linear(&mut self.logits, xn, std::slice::from_ref(router), t, false);
        add_bias(&mut self.logits, bias);
        let mut routed: Vec<Vec<(usize, f32)>> = vec![Vec::new(); ne];
        for r in 0..t {
            let p = &mut self.logits[r * ne..(r + 1) * ne];
            if !moe.softmax_after_top_k {
                softmax(p);
            }
            let mut order: Vec<usize> = (0..ne).collect();
            // Stable, so equal weights keep the lower expert first like torch.topk.
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
            let chosen = &order[..k];
            let mut w: Vec<f32> = chosen.iter().map(|&e| p[e]).collect();
            if moe.softmax_after_top_k {
                softmax(&mut w);
            } else if moe.norm_topk_prob {
                let total: f32 = w.iter().sum();
                w.iter_mut().for_each(|v| *v /= total);
            }
            for (&e, w) in chosen.iter().zip(w) {
                routed[e].push((r, w));
            }
        }
        routed
    }

    /// Each expert once over the rows routed to it; its output is added with the row's
    /// weight in expert order, as transformers does.
    #[allow(clippy::too_many_arguments)]
    fn experts(
        &mut self,
        experts: &[Ffn],
        routed: &[Vec<(usize, f32)>],
        act: Activation,
        out: &mut [f32],
        xn: &[f32],
        t: usize,
        acc: bool,
    ) {
        let h = xn.len() / t.max(1);
        self.sum.clear();
        self.sum.resize(t * h, 0.0);
        for (f, rows) in experts.iter().zip(routed) {
            if rows.is_empty() {
                continue;
            }
            let n = rows.len();
            self.rows.clear();
            for &(r, _) in rows {
                self.rows.extend_from_slice(&xn[r * h..(r + 1) * h]);
            }
            let mut y = std::mem::take(&mut self.out);
            y.resize(n * h, 0.0);
            let xs = std::mem::take(&mut self.rows);
            self.ffn(f, act, &mut y, &xs, n, false);
            for (i, &(r, w)) in rows.iter().enumerate() {
                let dst = &mut self.sum[r * h..(r + 1) * h];
                dst.iter_mut()
                    .zip(&y[i * h..(i + 1) * h])
                    .for_each(|(d, v)| *d += v * w);
            }
            self.out = y;
            self.rows = xs;
        }
        for (o, v) in out[..t * h].iter_mut().zip(&self.sum) {
            *o = if acc { *o + v } else { *v };
        }
    }
}
