//! Model hyper-parameters, from HF config.json or GGUF metadata.

use super::arch::{Arch, LayerAttn};
use super::ModelError;
use reprise_text::meta::id_list;
use serde_json::Value;

/// The model family; decides which optional pieces (biases, q/k norms) exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Llama, Llama 3, SmolLM2, and Mistral (the same blocks, with its sliding
    /// window read from config.json).
    Llama,
    /// Qwen2 / Qwen2.5: q/k/v biases.
    Qwen2,
    /// Qwen3: per-head RMSNorm on q and k before rotary.
    Qwen3,
    /// Phi-3 / Phi-4-mini: fused `qkv_proj` and `gate_up_proj`, partial rotary.
    Phi3,
    /// Gemma 2: sandwich norms, soft-caps, alternating sliding and global layers.
    Gemma2,
    /// Gemma 3 text: as Gemma 2 without soft-caps, with q/k norms and local rope.
    Gemma3,
    /// Qwen3-MoE: Qwen3 attention, mixture-of-experts MLP.
    Qwen3Moe,
    /// Mixtral: Mistral attention, mixture-of-experts MLP.
    Mixtral,
    /// gpt-oss: attention sinks, alternating sliding window, yarn rope, biased experts.
    GptOss,
}

impl Family {
    /// Maps an HF `model_type` or GGUF `general.architecture` to a family.
    pub fn from_name(name: &str) -> Result<Self, ModelError> {
        match name.to_ascii_lowercase().as_str() {
            "llama" | "mistral" | "smollm" | "smollm2" => Ok(Family::Llama),
            "qwen2" => Ok(Family::Qwen2),
            "qwen3" => Ok(Family::Qwen3),
            "phi3" => Ok(Family::Phi3),
            "gemma2" => Ok(Family::Gemma2),
            "gemma3_text" | "gemma3" => Ok(Family::Gemma3),
            "qwen3_moe" | "qwen3moe" => Ok(Family::Qwen3Moe),
            "mixtral" => Ok(Family::Mixtral),
            "gpt_oss" | "gpt-oss" => Ok(Family::GptOss),
            other => Err(ModelError::UnsupportedArchitecture(other.to_string())),
        }
    }
}

/// Rotary frequency scaling.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Llama 3 piecewise scaling of the inverse frequencies.
    Llama3 {
        /// Overall scale factor.
        factor: f32,
        /// Wavelengths longer than `original / low_freq_factor` are fully scaled.
        low_freq_factor: f32,
        /// Wavelengths shorter than `original / high_freq_factor` are kept.
        high_freq_factor: f32,
        /// Context length the model was pre-trained with.
        original_max_position_embeddings: usize,
    },
    /// Positions divided by `factor`.
    Linear {
        /// Scale factor.
        factor: f32,
    },
    /// YaRN: low frequencies interpolated by `factor`, high ones kept, a linear ramp
    /// between (by rotations per original context), and cos/sin scaled by an
    /// attention factor.
    Yarn {
        /// Scale factor (transformers uses `max_position_embeddings / original` instead
        /// when the original length is given).
        factor: f32,
        /// Context length the model was pre-trained with.
        original_max_position_embeddings: Option<usize>,
        /// Rotations per original context above which a frequency is kept.
        beta_fast: f32,
        /// Rotations per original context below which a frequency is interpolated.
        beta_slow: f32,
        /// Round the ramp's ends to whole dimensions.
        truncate: bool,
        /// Explicit factor on cos/sin (default `0.1 ln(factor) + 1`).
        attention_factor: Option<f32>,
    },
}

/// YaRN's constants for one config.
struct Yarn {
    factor: f64,
    /// Ramp ends, in half-dimensions.
    low: f64,
    high: f64,
    attention_factor: f32,
}

/// Hyper-parameters of a decoder-only transformer.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Model family.
    pub family: Family,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Residual stream width.
    pub hidden_size: usize,
    /// MLP inner width.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (GQA).
    pub num_kv_heads: usize,
    /// Per-head width (may differ from hidden / heads, as in Qwen3).
    pub head_dim: usize,
    /// Leading dimensions of each head that rotary rotates (half-split within them);
    /// `head_dim` unless `partial_rotary_factor` says less (Phi-4-mini: 3/4).
    pub rotary_dim: usize,
    /// Rotary base.
    pub rope_theta: f32,
    /// Optional rotary scaling.
    pub rope_scaling: Option<RopeScaling>,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// Output head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry biases (Qwen2).
    pub attention_bias: bool,
    /// Per-head RMSNorm on q and k (Qwen3).
    pub qk_norm: bool,
    /// Longest supported context.
    pub max_position_embeddings: usize,
    /// Keys a query attends to when the model slides its attention window: its own
    /// position and the `w - 1` before it (Mistral's `sliding_window`); `None`, the
    /// whole prefix.
    pub sliding_window: Option<usize>,
    /// BOS token id.
    pub bos_token_id: Option<u32>,
    /// EOS token ids.
    pub eos_token_ids: Vec<u32>,
    /// The family's block beyond Llama's (per-layer attention, norms, soft-caps, MoE).
    pub arch: Arch,
}

fn get_usize(v: &Value, key: &str) -> Result<usize, ModelError> {
    v.get(key)
        .and_then(Value::as_u64)
        .map(|x| x as usize)
        .ok_or_else(|| ModelError::Config(format!("config.json: missing or non-integer {key:?}")))
}

fn get_f32(v: &Value, key: &str) -> Option<f32> {
    v.get(key).and_then(Value::as_f64).map(|x| x as f32)
}

/// Parses a `rope_scaling` / `rope_parameters` object.
pub(crate) fn parse_rope_scaling(v: &Value) -> Result<Option<RopeScaling>, ModelError> {
    let Some(obj) = v.as_object() else {
        return Ok(None);
    };
    let kind = obj
        .get("rope_type")
        .or_else(|| obj.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let f = |k: &str, d: f32| {
        obj.get(k)
            .and_then(Value::as_f64)
            .map(|x| x as f32)
            .unwrap_or(d)
    };
    match kind {
        "default" | "none" => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear {
            factor: f("factor", 1.0),
        })),
        "llama3" => Ok(Some(RopeScaling::Llama3 {
            factor: f("factor", 8.0),
            low_freq_factor: f("low_freq_factor", 1.0),
            high_freq_factor: f("high_freq_factor", 4.0),
            original_max_position_embeddings: obj
                .get("original_max_position_embeddings")
                .and_then(Value::as_u64)
                .unwrap_or(8192) as usize,
        })),
        "yarn" => {
            if obj.get("mscale").is_some_and(|m| !m.is_null())
                || obj.get("mscale_all_dim").is_some_and(|m| !m.is_null())
            {
                return Err(ModelError::Config(
                    "yarn rope scaling with mscale / mscale_all_dim is not supported".into(),
                ));
            }
            Ok(Some(RopeScaling::Yarn {
                factor: f("factor", 1.0),
                original_max_position_embeddings: obj
                    .get("original_max_position_embeddings")
                    .and_then(Value::as_u64)
                    .map(|x| x as usize),
                beta_fast: f("beta_fast", 32.0),
                beta_slow: f("beta_slow", 1.0),
                truncate: obj.get("truncate").and_then(Value::as_bool).unwrap_or(true),
                attention_factor: obj
                    .get("attention_factor")
                    .and_then(Value::as_f64)
                    .map(|x| x as f32),
            }))
        }
        other => Err(ModelError::Config(format!(
            "unsupported rope scaling type {other:?} (supported: default, linear, llama3, yarn)"
        ))),
    }
}

/// The attention window of a config.json: Mistral's and Phi-3's `sliding_window`
/// (null or absent: none). Other families that name one either disable it (Qwen2's
/// `use_sliding_window: false`) or are refused, rather than served as if unwindowed.
fn sliding_window(v: &Value, model_type: &str) -> Result<Option<usize>, ModelError> {
    let w = match v.get("sliding_window") {
        None | Some(Value::Null) => return Ok(None),
        Some(w) => w.as_u64().ok_or_else(|| {
            ModelError::Config(format!("config.json: sliding_window {w} is not an integer"))
        })?,
    };
    let windowed = matches!(
        model_type.to_ascii_lowercase().as_str(),
        "mistral" | "phi3" | "gemma2" | "gemma3" | "gemma3_text" | "gpt_oss"
    );
    let enabled = v
        .get("use_sliding_window")
        .and_then(Value::as_bool)
        .unwrap_or(windowed);
    if !enabled {
        return Ok(None);
    }
    if !windowed {
        return Err(ModelError::Config(format!(
            "config.json: sliding-window attention is supported for mistral, phi3, gemma2, gemma3 and gpt_oss, not {model_type:?}"
        )));
    }
    if w == 0 {
        return Err(ModelError::Config(
            "config.json: sliding_window is 0".into(),
        ));
    }
    Ok(Some(w as usize))
}

impl ModelConfig {
    /// Parses an HF `config.json` value.
    pub fn from_hf_json(v: &Value) -> Result<Self, ModelError> {
        let model_type = v
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| ModelError::Config("config.json: missing \"model_type\"".into()))?;
        let family = Family::from_name(model_type)?;
        let hidden_size = get_usize(v, "hidden_size")?;
        let num_heads = get_usize(v, "num_attention_heads")?;
        if num_heads == 0 {
            return Err(ModelError::Config("num_attention_heads is 0".into()));
        }
        let num_kv_heads = v
            .get("num_key_value_heads")
            .and_then(Value::as_u64)
            .map(|x| x as usize)
            .unwrap_or(num_heads);
        let head_dim = v
            .get("head_dim")
            .and_then(Value::as_u64)
            .map(|x| x as usize)
            .unwrap_or(hidden_size / num_heads);
        // transformers 5 moves rope settings into `rope_parameters`.
        // Keyed by layer type when local layers have their own (Gemma 3): the global one.
        let rope_params = v
            .get("rope_parameters")
            .map(|p| p.get("full_attention").unwrap_or(p));
        let rope_theta = get_f32(v, "rope_theta")
            .or_else(|| rope_params.and_then(|p| get_f32(p, "rope_theta")))
            .unwrap_or(10_000.0);
        let rope_scaling = match v.get("rope_scaling") {
            Some(s) if !s.is_null() => parse_rope_scaling(s)?,
            _ => match rope_params {
                Some(p) => parse_rope_scaling(p)?,
                None => None,
            },
        };
        let sliding_window = sliding_window(v, model_type)?;
        let factor = get_f32(v, "partial_rotary_factor")
            .or_else(|| rope_params.and_then(|p| get_f32(p, "partial_rotary_factor")))
            .unwrap_or(1.0);
        let num_layers = get_usize(v, "num_hidden_layers")?;
        let arch = Arch::from_hf_json(v, &model_type.to_ascii_lowercase(), num_layers)?;
        let cfg = ModelConfig {
            family,
            arch,
            sliding_window,
            rotary_dim: (head_dim as f32 * factor) as usize,
            vocab_size: get_usize(v, "vocab_size")?,
            hidden_size,
            intermediate_size: get_usize(v, "intermediate_size")?,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rope_theta,
            rope_scaling,
            rms_norm_eps: get_f32(v, "rms_norm_eps").unwrap_or(1e-6),
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            attention_bias: v
                .get("attention_bias")
                .and_then(Value::as_bool)
                .unwrap_or(family == Family::Qwen2),
            qk_norm: matches!(family, Family::Qwen3 | Family::Gemma3 | Family::Qwen3Moe),
            max_position_embeddings: v
                .get("max_position_embeddings")
                .and_then(Value::as_u64)
                .unwrap_or(4096) as usize,
            bos_token_id: v
                .get("bos_token_id")
                .and_then(Value::as_u64)
                .map(|x| x as u32),
            eos_token_ids: id_list(v.get("eos_token_id")),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the geometry is self-consistent.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.num_layers == 0 || self.hidden_size == 0 || self.vocab_size == 0 {
            return bad("zero layers, hidden size or vocabulary".into());
        }
        if self.num_kv_heads == 0 || !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(format!(
                "{} query heads are not a multiple of {} kv heads",
                self.num_heads, self.num_kv_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "head_dim {} must be even and non-zero",
                self.head_dim
            ));
        }
        if self.rotary_dim == 0
            || !self.rotary_dim.is_multiple_of(2)
            || self.rotary_dim > self.head_dim
        {
            return bad(format!(
                "rotary dimensions {} (partial_rotary_factor × head_dim {}) must be even, non-zero and at most head_dim",
                self.rotary_dim, self.head_dim
            ));
        }
        let types = &self.arch.layer_types;
        if !types.is_empty() && types.len() != self.num_layers {
            return bad(format!(
                "{} layer types for {} layers",
                types.len(),
                self.num_layers
            ));
        }
        if self.sliding_window.is_none() && types.contains(&LayerAttn::Sliding) {
            return bad("sliding-attention layers but no sliding_window".into());
        }
        Ok(())
    }

    /// The attention window of layer `layer` (`None`: the whole prefix).
    pub fn window(&self, layer: usize) -> Option<usize> {
        match self.arch.layer_types.get(layer) {
            Some(LayerAttn::Full) => None,
            _ => self.sliding_window,
        }
    }

    /// The window when every layer slides it (a sequence's older blocks can then be
    /// given back); `None` when some layer attends to the whole prefix.
    pub fn uniform_window(&self) -> Option<usize> {
        let w = self.sliding_window?;
        (0..self.num_layers)
            .all(|l| self.window(l).is_some())
            .then_some(w)
    }

    /// Whether some layer attends through a sliding window.
    pub fn has_sliding_layers(&self) -> bool {
        (0..self.num_layers).any(|l| self.window(l).is_some())
    }

    /// Rotary inverse frequencies (length `rotary_dim / 2`), scaled as configured.
    pub fn inv_freqs(&self) -> Vec<f32> {
        self.inv_freqs_at(self.rope_theta, self.rope_scaling.as_ref())
    }

    /// Factor on rotary cos and sin (YaRN's attention factor; 1 otherwise).
    pub fn rope_attention_factor(&self) -> f32 {
        self.yarn().map_or(1.0, |y| y.attention_factor)
    }

    /// YaRN's derived constants, as transformers' `_compute_yarn_parameters` gets them.
    fn yarn(&self) -> Option<Yarn> {
        let Some(RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
            truncate,
            attention_factor,
        }) = &self.rope_scaling
        else {
            return None;
        };
        let (factor, original) = match original_max_position_embeddings {
            Some(o) => (self.max_position_embeddings as f64 / *o as f64, *o),
            None => (*factor as f64, self.max_position_embeddings),
        };
        let d = self.rotary_dim as f64;
        let base = self.rope_theta as f64;
        let dim_of = |rot: f64| {
            d * (original as f64 / (rot * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln())
        };
        let (mut low, mut high) = (dim_of(*beta_fast as f64), dim_of(*beta_slow as f64));
        if *truncate {
            (low, high) = (low.floor(), high.ceil());
        }
        let (low, mut high) = (low.max(0.0), high.min(d - 1.0));
        if low == high {
            high += 0.001;
        }
        let mscale = if factor <= 1.0 {
            1.0
        } else {
            0.1 * factor.ln() + 1.0
        };
        Some(Yarn {
            factor,
            low,
            high,
            attention_factor: attention_factor.unwrap_or(mscale as f32),
        })
    }

    /// The sliding layers' frequencies when they have their own base (Gemma 3).
    pub fn local_inv_freqs(&self) -> Option<Vec<f32>> {
        self.arch
            .local_rope_theta
            .map(|theta| self.inv_freqs_at(theta, None))
    }

    fn inv_freqs_at(&self, theta: f32, scaling: Option<&RopeScaling>) -> Vec<f32> {
        let d = self.rotary_dim;
        // f32 like transformers, so long positions round the same way.
        let mut inv: Vec<f32> = (0..d / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / d as f32))
            .collect();
        match scaling {
            None => {}
            Some(RopeScaling::Yarn { .. }) => {
                let y = self.yarn().expect("yarn scaling");
                for (i, f) in inv.iter_mut().enumerate() {
                    // In f32 and in transformers' order, ramp over the half dimension.
                    let pos = theta.powf((2 * i) as f32 / d as f32);
                    let interp = 1.0 / (y.factor as f32 * pos);
                    let ramp =
                        ((i as f32 - y.low as f32) / (y.high - y.low) as f32).clamp(0.0, 1.0);
                    let keep = 1.0 - ramp;
                    *f = interp * (1.0 - keep) + *f * keep;
                }
            }
            Some(RopeScaling::Linear { factor }) => inv.iter_mut().for_each(|f| *f /= factor),
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let old = *original_max_position_embeddings as f32;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                for f in inv.iter_mut() {
                    let wavelen = 2.0 * std::f32::consts::PI / *f;
                    if wavelen < high_wavelen {
                        continue;
                    } else if wavelen > low_wavelen {
                        *f /= factor;
                    } else {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
        }
        inv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rope_parameters_and_top_level_scaling() {
        let v: Value = serde_json::json!({
            "model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
            "num_key_value_heads": 2, "intermediate_size": 128, "num_hidden_layers": 2,
            "vocab_size": 100, "eos_token_id": [1, 2],
            "rope_parameters": {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
        });
        let c = ModelConfig::from_hf_json(&v).unwrap();
        assert_eq!(c.rope_theta, 500000.0);
        assert!(matches!(c.rope_scaling, Some(RopeScaling::Llama3 { .. })));
        assert_eq!(c.eos_token_ids, vec![1, 2]);
        assert_eq!(c.head_dim, 16);
    }

    #[test]
    fn mistral_reads_its_window_and_qwen2_ignores_a_disabled_one() {
        let base = serde_json::json!({
            "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128,
            "num_hidden_layers": 2, "vocab_size": 100
        });
        let with = |extra: Value| {
            let mut v = base.clone();
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            ModelConfig::from_hf_json(&v)
        };
        let m = with(serde_json::json!({"model_type": "mistral", "sliding_window": 64})).unwrap();
        assert_eq!(m.sliding_window, Some(64));
        let m = with(serde_json::json!({"model_type": "mistral", "sliding_window": null})).unwrap();
        assert_eq!(m.sliding_window, None);
        let q = with(
            serde_json::json!({"model_type": "qwen2", "sliding_window": 32768,
            "use_sliding_window": false}),
        )
        .unwrap();
        assert_eq!(q.sliding_window, None);
        assert!(with(
            serde_json::json!({"model_type": "qwen2", "sliding_window": 4096,
            "use_sliding_window": true})
        )
        .is_err());
        assert!(with(serde_json::json!({"model_type": "mistral", "sliding_window": 0})).is_err());
    }

    #[test]
    fn partial_rotary_narrows_the_frequencies() {
        let v: Value = serde_json::json!({
            "model_type": "phi3", "hidden_size": 128, "num_attention_heads": 4,
            "num_key_value_heads": 2, "intermediate_size": 128, "num_hidden_layers": 2,
            "vocab_size": 100, "partial_rotary_factor": 0.75, "sliding_window": null
        });
        let c = ModelConfig::from_hf_json(&v).unwrap();
        assert_eq!((c.family, c.head_dim, c.rotary_dim), (Family::Phi3, 32, 24));
        assert_eq!(c.inv_freqs().len(), 12);
        let mut bad = v.clone();
        bad["partial_rotary_factor"] = serde_json::json!(0.01);
        assert!(ModelConfig::from_hf_json(&bad).is_err());
    }

    #[test]
    fn yarn_as_transformers_computes_it() {
        // gpt-oss's published rope: factor 32 over 4096 original positions.
        let v: Value = serde_json::json!({
            "model_type": "llama", "hidden_size": 128, "num_attention_heads": 2,
            "intermediate_size": 64, "num_hidden_layers": 1, "vocab_size": 10,
            "rope_theta": 150000.0, "max_position_embeddings": 131072,
            "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0,
                "beta_slow": 1.0, "original_max_position_embeddings": 4096, "truncate": false}
        });
        let c = ModelConfig::from_hf_json(&v).unwrap();
        assert!((c.rope_attention_factor() - (0.1 * 32f32.ln() + 1.0)).abs() < 1e-6);
        let plain = ModelConfig {
            rope_scaling: None,
            ..c.clone()
        }
        .inv_freqs();
        let yarn = c.inv_freqs();
        // High frequencies kept, low ones divided by the factor, a ramp between.
        assert_eq!(yarn[0], plain[0]);
        let last = plain.len() - 1;
        assert!((yarn[last] * 32.0 / plain[last] - 1.0).abs() < 1e-6);
        assert!(yarn
            .iter()
            .zip(&plain)
            .any(|(y, p)| y < p && y * 32.0 > *p * 1.001));
        let mut bad = v.clone();
        bad["rope_scaling"]["mscale"] = serde_json::json!(1.0);
        assert!(ModelConfig::from_hf_json(&bad).is_err());
    }

    #[test]
    fn unknown_architecture_is_an_error() {
        let v: Value = serde_json::json!({"model_type": "gpt_neox"});
        assert!(matches!(
            ModelConfig::from_hf_json(&v),
            Err(ModelError::UnsupportedArchitecture(_))
        ));
    }
}
