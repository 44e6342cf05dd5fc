//! The model description: what a family's decoder block is made of beyond the
//! Llama block (attention kind per layer, norm placement, soft-caps, activation,
//! mixture-of-experts), read from config.json once so that each backend runs one
//! forward over it instead of a branch per family.

use super::ModelError;
use serde_json::Value;

/// Which keys one layer's queries attend to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerAttn {
    /// The whole prefix.
    Full,
    /// The model's sliding window (`ModelConfig::sliding_window`).
    Sliding,
}

/// The activation on the gate half of a gated MLP.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// `x·σ(x)` (Llama, Qwen, Mistral, Phi-3, Mixtral, Qwen3-MoE).
    Silu,
    /// GELU with the tanh approximation (Gemma's `gelu_pytorch_tanh`).
    GeluTanh,
    /// gpt-oss: `(clamp(up, ±limit) + 1) · g · σ(1.702 g)` with `g = min(gate, limit)`.
    ClampedSwiglu {
        /// `swiglu_limit`.
        limit: f32,
    },
}

impl Activation {
    fn from_hf(name: &str) -> Result<Self, ModelError> {
        match name {
            "silu" | "swish" => Ok(Activation::Silu),
            "gelu_pytorch_tanh" | "gelu_tanh" | "gelu_new" => Ok(Activation::GeluTanh),
            other => Err(ModelError::Config(format!(
                "unsupported hidden activation {other:?} (supported: silu, gelu_pytorch_tanh)"
            ))),
        }
    }
}

/// A mixture-of-experts MLP: a linear router over `num_experts` gated MLPs, of
/// which each token uses the `top_k` with the highest softmax weight.
#[derive(Clone, Debug, PartialEq)]
pub struct Moe {
    /// Experts per MoE layer.
    pub num_experts: usize,
    /// Experts each token uses.
    pub top_k: usize,
    /// The chosen experts' weights are renormalised to sum to 1 (Mixtral always;
    /// Qwen3-MoE when `norm_topk_prob`).
    pub norm_topk_prob: bool,
    /// Inner width of one expert.
    pub intermediate_size: usize,
    /// The softmax runs over the top k router logits only (gpt-oss), not over all.
    pub softmax_after_top_k: bool,
    /// Per layer: keeps a dense MLP instead (Qwen3-MoE's `mlp_only_layers` and
    /// `decoder_sparse_step`); empty when every layer is MoE.
    pub dense_layers: Vec<bool>,
}

impl Moe {
    /// Whether layer `i` routes through experts.
    pub fn is_moe_layer(&self, i: usize) -> bool {
        !self.dense_layers.get(i).copied().unwrap_or(false)
    }
}

/// The family-specific pieces of a decoder; `Default` is the Llama block.
#[derive(Clone, Debug, PartialEq)]
pub struct Arch {
    /// Attention kind per layer; empty means every layer slides when the model has a
    /// window (Mistral, Phi-3) and attends fully otherwise.
    pub layer_types: Vec<LayerAttn>,
    /// Rotary base of the sliding layers when it differs from the global one (Gemma 3's
    /// `rope_local_base_freq`; those layers get no rope scaling).
    pub local_rope_theta: Option<f32>,
    /// The checkpoint stores RMSNorm gains as `w` with the gain `1 + w` (Gemma, HF
    /// layout; llama.cpp's converter already adds the 1).
    pub norm_plus_one: bool,
    /// Norms after attention and after the MLP too, before each residual add (Gemma 2/3).
    pub sandwich_norms: bool,
    /// Attention scores are scaled by `query_pre_attn_scalar^-1/2` instead of
    /// `head_dim^-1/2` (Gemma).
    pub query_pre_attn_scalar: Option<f32>,
    /// Attention scores become `cap·tanh(s / cap)` (Gemma 2).
    pub attn_softcap: Option<f32>,
    /// Logits become `cap·tanh(l / cap)` (Gemma 2).
    pub final_softcap: Option<f32>,
    /// Embeddings are multiplied by `sqrt(hidden_size)` (Gemma).
    pub scale_embeddings: bool,
    /// Gate activation of the (dense or expert) MLP.
    pub activation: Activation,
    /// The mixture-of-experts MLP, when the family has one.
    pub moe: Option<Moe>,
    /// A learned logit per head joins each softmax's denominator (gpt-oss's sinks).
    pub attn_sinks: bool,
    /// The attention output projection, the router and the experts carry biases (gpt-oss).
    pub out_and_expert_biases: bool,
}

impl Default for Arch {
    fn default() -> Self {
        Arch {
            layer_types: Vec::new(),
            local_rope_theta: None,
            norm_plus_one: false,
            sandwich_norms: false,
            query_pre_attn_scalar: None,
            attn_softcap: None,
            final_softcap: None,
            scale_embeddings: false,
            activation: Activation::Silu,
            moe: None,
            attn_sinks: false,
            out_and_expert_biases: false,
        }
    }
}

fn f32_of(v: &Value, key: &str) -> Option<f32> {
    v.get(key).and_then(Value::as_f64).map(|x| x as f32)
}

fn usize_of(v: &Value, key: &str) -> Option<usize> {
    v.get(key).and_then(Value::as_u64).map(|x| x as usize)
}

/// `layer_types` as config.json writes it (`"sliding_attention"` / `"full_attention"`),
/// or `None` when absent.
fn layer_types_of(v: &Value, n: usize) -> Result<Option<Vec<LayerAttn>>, ModelError> {
    let Some(list) = v.get("layer_types").and_then(Value::as_array) else {
        return Ok(None);
    };
    if list.len() != n {
        return Err(ModelError::Config(format!(
            "config.json: layer_types has {} entries for {n} layers",
            list.len()
        )));
    }
    list.iter()
        .map(|t| match t.as_str() {
            Some("full_attention") => Ok(LayerAttn::Full),
            Some("sliding_attention") => Ok(LayerAttn::Sliding),
            _ => Err(ModelError::Config(format!(
                "config.json: layer type {t} (supported: full_attention, sliding_attention)"
            ))),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Layer `i` slides unless `(i + 1)` is a multiple of `every` (Gemma 2: every 2nd
/// layer global; Gemma 3: every `sliding_window_pattern`-th).
pub(crate) fn periodic(n: usize, every: usize) -> Vec<LayerAttn> {
    (0..n)
        .map(|i| {
            if (i + 1) % every.max(1) == 0 {
                LayerAttn::Full
            } else {
                LayerAttn::Sliding
            }
        })
        .collect()
}

fn gemma(v: &Value, n: usize, global_every: usize) -> Result<Arch, ModelError> {
    let act = v
        .get("hidden_activation")
        .or_else(|| v.get("hidden_act"))
        .and_then(Value::as_str)
        .unwrap_or("gelu_pytorch_tanh");
    Ok(Arch {
        layer_types: match layer_types_of(v, n)? {
            Some(t) => t,
            None => periodic(n, global_every),
        },
        norm_plus_one: true,
        sandwich_norms: true,
        query_pre_attn_scalar: f32_of(v, "query_pre_attn_scalar"),
        attn_softcap: f32_of(v, "attn_logit_softcapping"),
        final_softcap: f32_of(v, "final_logit_softcapping"),
        scale_embeddings: true,
        activation: Activation::from_hf(act)?,
        ..Arch::default()
    })
}

impl Arch {
    /// The description of an HF config.json of `model_type` with `n` layers.
    pub(crate) fn from_hf_json(v: &Value, model_type: &str, n: usize) -> Result<Self, ModelError> {
        let mut arch = match model_type {
            "gemma2" => gemma(v, n, 2)?,
            "gemma3_text" | "gemma3" => {
                let every = usize_of(v, "sliding_window_pattern").unwrap_or(6);
                let mut a = gemma(v, n, every)?;
                // transformers 5 keys the rope parameters by layer type.
                let local = v
                    .get("rope_parameters")
                    .and_then(|p| p.get("sliding_attention"))
                    .and_then(|p| f32_of(p, "rope_theta"));
                a.local_rope_theta = Some(
                    local
                        .or_else(|| f32_of(v, "rope_local_base_freq"))
                        .unwrap_or(10_000.0),
                );
                a
            }
            "qwen3_moe" => {
                let every = usize_of(v, "decoder_sparse_step").unwrap_or(1).max(1);
                let only: Vec<usize> = v
                    .get("mlp_only_layers")
                    .and_then(Value::as_array)
                    .map(|l| {
                        l.iter()
                            .filter_map(|x| x.as_u64())
                            .map(|x| x as usize)
                            .collect()
                    })
                    .unwrap_or_default();
                let dense = (0..n)
                    .map(|i| only.contains(&i) || (i + 1) % every != 0)
                    .collect();
                Arch {
                    moe: Some(moe(v, "num_experts", dense, "moe_intermediate_size", None)?),
                    ..Arch::default()
                }
            }
            "gpt_oss" => {
                let top_k = usize_of(v, "num_experts_per_tok").or(usize_of(v, "experts_per_token"));
                let mut m = moe(
                    v,
                    "num_local_experts",
                    Vec::new(),
                    "intermediate_size",
                    top_k,
                )?;
                m.softmax_after_top_k = true;
                Arch {
                    moe: Some(m),
                    activation: Activation::ClampedSwiglu {
                        limit: f32_of(v, "swiglu_limit").unwrap_or(7.0),
                    },
                    attn_sinks: true,
                    out_and_expert_biases: true,
                    ..Arch::default()
                }
            }
            "mixtral" => {
                let mut m = moe(
                    v,
                    "num_local_experts",
                    Vec::new(),
                    "intermediate_size",
                    None,
                )?;
                m.norm_topk_prob = true;
                Arch {
                    moe: Some(m),
                    ..Arch::default()
                }
            }
            _ => Arch::default(),
        };
        if arch.layer_types.is_empty() {
            if let Some(t) = layer_types_of(v, n)? {
                arch.layer_types = t;
            }
        }
        Ok(arch)
    }
}

fn moe(
    v: &Value,
    experts_key: &str,
    dense_layers: Vec<bool>,
    inter_key: &str,
    top_k: Option<usize>,
) -> Result<Moe, ModelError> {
    let need = |k: &str| {
        usize_of(v, k)
            .ok_or_else(|| ModelError::Config(format!("config.json: missing or non-integer {k:?}")))
    };
    let m = Moe {
        num_experts: need(experts_key)?,
        top_k: match top_k {
            Some(k) => k,
            None => need("num_experts_per_tok")?,
        },
        norm_topk_prob: v
            .get("norm_topk_prob")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        intermediate_size: need(inter_key)?,
        softmax_after_top_k: false,
        dense_layers,
    };
    if m.top_k == 0 || m.top_k > m.num_experts {
        return Err(ModelError::Config(format!(
            "config.json: {} experts per token of {}",
            m.top_k, m.num_experts
        )));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemma_layer_patterns() {
        let v = serde_json::json!({"sliding_window_pattern": 3});
        let a = Arch::from_hf_json(&v, "gemma3_text", 6).unwrap();
        use LayerAttn::*;
        assert_eq!(
            a.layer_types,
            vec![Sliding, Sliding, Full, Sliding, Sliding, Full]
        );
        assert_eq!(a.local_rope_theta, Some(10_000.0));
        let a = Arch::from_hf_json(&serde_json::json!({}), "gemma2", 4).unwrap();
        assert_eq!(a.layer_types, vec![Sliding, Full, Sliding, Full]);
        let explicit = serde_json::json!({"layer_types": ["full_attention", "sliding_attention"]});
        let a = Arch::from_hf_json(&explicit, "gemma2", 2).unwrap();
        assert_eq!(a.layer_types, vec![Full, Sliding]);
        assert!(Arch::from_hf_json(&explicit, "gemma2", 3).is_err());
        let bad = serde_json::json!({"hidden_activation": "relu"});
        assert!(Arch::from_hf_json(&bad, "gemma2", 2).is_err());
    }

    #[test]
    fn qwen3_moe_dense_layers_and_bad_top_k() {
        let v = serde_json::json!({"num_experts": 8, "num_experts_per_tok": 2,
            "moe_intermediate_size": 64, "mlp_only_layers": [0], "decoder_sparse_step": 2});
        let m = Arch::from_hf_json(&v, "qwen3_moe", 4).unwrap().moe.unwrap();
        let moe_layers: Vec<usize> = (0..4).filter(|&i| m.is_moe_layer(i)).collect();
        assert_eq!(moe_layers, vec![1, 3]);
        assert!(!m.norm_topk_prob);
        let v = serde_json::json!({"num_local_experts": 4, "num_experts_per_tok": 5,
            "intermediate_size": 64});
        assert!(Arch::from_hf_json(&v, "mixtral", 2).is_err());
    }
}
