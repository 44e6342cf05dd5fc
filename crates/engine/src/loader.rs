//! Finding and loading models: GGUF files, HF layout directories, HF repo ids
//! through hf-hub's local cache, and the default model; the weights are read into
//! the CPU transformer and, for a GPU, uploaded to the CUDA backend.

use crate::cpu::quant::{QMatrix, QType};
use crate::cpu::transformer::{ExpertStack, Naming, TensorSource, Transformer};
use crate::model::arch::periodic;
use crate::model::config::parse_rope_scaling;
use crate::model::{Activation, AnyModel, Arch, Family, LayerAttn, ModelConfig, ModelError, Moe};
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use reprise_text::gguf::Gguf;
use reprise_text::meta::{self, ModelMeta, Source};
use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a loaded model's weights go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelDevice {
    /// f32 on the host (the CPU model).
    Cpu,
    /// bf16 on GPU `N` (needs the `cuda` feature).
    Cuda(usize),
}

/// A model with everything needed to serve it.
pub struct LoadedModel {
    /// The network, on its backend.
    pub model: AnyModel,
    /// Its text side: tokenizer, chat template, special tokens, context length, name.
    pub meta: ModelMeta,
}

impl LoadedModel {
    /// The CPU model (tests and tools that load for the CPU).
    pub fn cpu_model(&self) -> Result<Arc<Transformer>, ModelError> {
        self.model
            .clone()
            .into_any()
            .downcast::<Transformer>()
            .map_err(|_| ModelError::Device("the model is not on the CPU".into()))
    }
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("name", &self.meta.name)
            .field("config", self.model.config())
            .field("eos_token_ids", &self.meta.eos_token_ids)
            .field("max_model_len", &self.meta.max_model_len)
            .finish_non_exhaustive()
    }
}

/// Loads a model like [`load`], then places it on `device`. For CUDA the host f32
/// weights are converted to bf16 while uploading, layer by layer.
pub fn load_on(source: Option<&str>, device: ModelDevice) -> Result<LoadedModel, ModelError> {
    match device {
        ModelDevice::Cpu => load(source),
        #[cfg(feature = "cuda")]
        ModelDevice::Cuda(ordinal) => {
            // Open the device first so a missing GPU fails before a long load.
            let ctx = crate::cuda::open_device(ordinal)?;
            load_with(source, &mut |t: Transformer| {
                crate::cuda::CudaModel::from_host(t, ctx.clone()).map(|m| Arc::new(m) as AnyModel)
            })
        }
        #[cfg(not(feature = "cuda"))]
        ModelDevice::Cuda(ordinal) => Err(ModelError::Device(format!(
            "cuda:{ordinal}: this build has no CUDA support (rebuild with --features cuda)"
        ))),
    }
}

/// Turns the host model into the served one (identity on the CPU).
type Place<'a> = dyn FnMut(Transformer) -> Result<AnyModel, ModelError> + 'a;

fn on_cpu(t: Transformer) -> Result<AnyModel, ModelError> {
    Ok(Arc::new(t))
}

/// Loads a model from a GGUF file, an HF layout directory, an HF repo id in the
/// local hf-hub cache, or (for `None` / empty) the default model.
pub fn load(source: Option<&str>) -> Result<LoadedModel, ModelError> {
    load_with(source, &mut on_cpu)
}

fn load_with(source: Option<&str>, place: &mut Place) -> Result<LoadedModel, ModelError> {
    match meta::resolve(source, "config.json")? {
        Source::Gguf(path) => gguf_with(&path, place),
        Source::HfDir(dir, name) => hf_dir_with(&dir, &name, place),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn malformed(path: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::Malformed {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn tensor_to_f32(path: &Path, name: &str, t: Tensor) -> Result<(Vec<usize>, Vec<f32>), ModelError> {
    let dims = t.dims().to_vec();
    let data = t
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| malformed(path, format!("tensor {name}: {e}")))?;
    Ok((dims, data))
}

struct GgufSource<'a> {
    path: &'a Path,
    content: &'a gguf_file::Content,
    reader: BufReader<File>,
}

impl GgufSource<'_> {
    fn read(&mut self, name: &str) -> Result<Option<candle_core::quantized::QTensor>, ModelError> {
        if !self.content.tensor_infos.contains_key(name) {
            return Ok(None);
        }
        self.content
            .tensor(&mut self.reader, name, &Device::Cpu)
            .map(Some)
            .map_err(|e| malformed(self.path, format!("tensor {name}: {e}")))
    }
}

impl TensorSource for GgufSource<'_> {
    fn matrix(&mut self, name: &str) -> Result<Option<(Vec<usize>, QMatrix)>, ModelError> {
        let Some(q) = self.read(name)? else {
            return Ok(None);
        };
        let dims = q.shape().dims().to_vec();
        let bad = |e: String| malformed(self.path, format!("tensor {name}: {e}"));
        let &[rows, cols] = dims.as_slice() else {
            return Err(bad(format!("shape {dims:?} is not a matrix")));
        };
        // Kept in the file's format; a format without kernels is dequantized once.
        let m = match QType::from_ggml(q.dtype()) {
            Some(qt) => {
                let raw = q.data().map_err(|e| bad(e.to_string()))?;
                QMatrix::from_raw(qt, rows, cols, &raw).map_err(|e| bad(e.to_string()))?
            }
            None => {
                let t = q.dequantize(&Device::Cpu).map_err(|e| bad(e.to_string()))?;
                QMatrix::f32(rows, cols, tensor_to_f32(self.path, name, t)?.1)
            }
        };
        Ok(Some((dims, m)))
    }

    fn experts(&mut self, name: &str) -> Result<Option<ExpertStack>, ModelError> {
        let Some(q) = self.read(name)? else {
            return Ok(None);
        };
        let dims = q.shape().dims().to_vec();
        let bad = |e: String| malformed(self.path, format!("tensor {name}: {e}"));
        let &[n, rows, cols] = dims.as_slice() else {
            return Err(bad(format!("shape {dims:?} is not a stack of matrices")));
        };
        // Each expert's rows are contiguous in the stack, in any format.
        let mats = match QType::from_ggml(q.dtype()) {
            Some(qt) => {
                let raw = q.data().map_err(|e| bad(e.to_string()))?;
                if n == 0 || raw.len() % n != 0 {
                    return Err(bad(format!("{} bytes for {n} experts", raw.len())));
                }
                raw.chunks_exact(raw.len() / n)
                    .map(|r| QMatrix::from_raw(qt, rows, cols, r).map_err(|e| bad(e.to_string())))
                    .collect::<Result<Vec<_>, _>>()?
            }
            None => {
                let t = q.dequantize(&Device::Cpu).map_err(|e| bad(e.to_string()))?;
                let all = tensor_to_f32(self.path, name, t)?.1;
                all.chunks_exact(rows * cols)
                    .map(|c| QMatrix::f32(rows, cols, c.to_vec()))
                    .collect()
            }
        };
        Ok(Some((dims, mats)))
    }

    fn vector(&mut self, name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>, ModelError> {
        let Some(q) = self.read(name)? else {
            return Ok(None);
        };
        let t = q
            .dequantize(&Device::Cpu)
            .map_err(|e| malformed(self.path, format!("tensor {name}: {e}")))?;
        tensor_to_f32(self.path, name, t).map(Some)
    }
}

/// Loads a GGUF file (llama, qwen2 or qwen3 architecture), dequantizing every tensor to f32.
pub fn load_gguf(path: &Path) -> Result<LoadedModel, ModelError> {
    gguf_with(path, &mut on_cpu)
}

fn gguf_with(path: &Path, place: &mut Place) -> Result<LoadedModel, ModelError> {
    // The header through reprise-text's reader (config and text side), the tensors
    // through candle's.
    let header = meta::open_gguf(path)?;
    let meta = meta::from_gguf(path, &header)?;
    let cfg = gguf_config(&header, &meta)?;
    let family = cfg.family;
    let file = File::open(path).map_err(io_err(path))?;
    let mut reader = BufReader::new(file);
    let content = gguf_file::Content::read(&mut reader).map_err(|e| malformed(path, e))?;
    let rope_freqs = content.tensor_infos.contains_key("rope_freqs.weight");
    let mut src = GgufSource {
        path,
        content: &content,
        reader,
    };
    let rope_freq_factors = if rope_freqs {
        src.vector("rope_freqs.weight")?.map(|(_, d)| d)
    } else {
        None
    };
    // llama.cpp permutes llama-arch q/k rows for its interleaved rotary; qwen archs use NeoX.
    let unpermute = matches!(family, Family::Llama | Family::Mixtral);
    let model =
        Transformer::from_source(cfg, &mut src, Naming::Gguf, unpermute, rope_freq_factors)?;
    Ok(LoadedModel {
        model: place(model)?,
        meta,
    })
}

/// A GGUF's hyper-parameters, from its metadata.
fn gguf_config(g: &Gguf, meta: &ModelMeta) -> Result<ModelConfig, ModelError> {
    let arch = meta.architecture.as_str();
    let k = |s: &str| format!("{arch}.{s}");
    let experts = g.usize(&k("expert_count")).filter(|&n| n > 0);
    let family = match Family::from_name(arch)? {
        // llama.cpp writes Mixtral as the llama architecture with experts.
        Family::Llama if experts.is_some() => Family::Mixtral,
        f => f,
    };
    if !matches!(
        family,
        Family::Llama
            | Family::Qwen2
            | Family::Qwen3
            | Family::Phi3
            | Family::Qwen3Moe
            | Family::Mixtral
            | Family::Gemma2
            | Family::Gemma3
    ) {
        return Err(ModelError::Config(format!(
            "GGUF files of the {arch} architecture are not supported yet; serve its HF checkpoint (a directory or repo id)"
        )));
    }
    let need = |key: String| {
        g.usize(&key).ok_or_else(|| {
            ModelError::Config(format!("GGUF metadata: missing or non-integer {key:?}"))
        })
    };
    let hidden = need(k("embedding_length"))?;
    let num_heads = need(k("attention.head_count"))?;
    if num_heads == 0 {
        return Err(ModelError::Config("attention.head_count is 0".into()));
    }
    let head_dim = g
        .usize(&k("attention.key_length"))
        .unwrap_or(hidden / num_heads);
    let cfg = ModelConfig {
        family,
        vocab_size: meta.vocab_size,
        hidden_size: hidden,
        intermediate_size: need(k("feed_forward_length"))?,
        num_layers: need(k("block_count"))?,
        num_heads,
        num_kv_heads: g.usize(&k("attention.head_count_kv")).unwrap_or(num_heads),
        head_dim,
        rope_theta: g.f32(&k("rope.freq_base")).unwrap_or(10_000.0),
        rope_scaling: match (
            g.str(&k("rope.scaling.type")),
            g.f32(&k("rope.scaling.factor")),
        ) {
            (Some("linear"), Some(f)) => {
                parse_rope_scaling(&serde_json::json!({"type": "linear", "factor": f}))?
            }
            _ => None,
        },
        rms_norm_eps: g
            .f32(&k("attention.layer_norm_rms_epsilon"))
            .unwrap_or(1e-5),
        tie_word_embeddings: !g.tensors.contains_key("output.weight"),
        attention_bias: g.tensors.contains_key("blk.0.attn_q.bias"),
        qk_norm: matches!(family, Family::Qwen3 | Family::Qwen3Moe | Family::Gemma3),
        max_position_embeddings: meta.max_model_len,
        // llama.cpp's Llama-architecture GGUFs (Mistral's included) name no window;
        // its Phi-3 and Gemma files do (Gemma 2's defaults to 4096 there).
        sliding_window: g
            .usize(&k("attention.sliding_window"))
            .or((family == Family::Gemma2).then_some(4096))
            .filter(|&w| w > 0),
        rotary_dim: g.usize(&k("rope.dimension_count")).unwrap_or(head_dim),
        bos_token_id: meta.bos_token_id,
        eos_token_ids: meta.eos_token_ids.clone(),
        arch: match family {
            Family::Gemma2 | Family::Gemma3 => {
                gguf_gemma(g, arch, family, hidden, num_heads, head_dim)?
            }
            _ => Arch {
                moe: match experts {
                    None if family == Family::Qwen3Moe => {
                        return Err(ModelError::Config(format!(
                            "GGUF metadata: missing {:?}",
                            k("expert_count")
                        )))
                    }
                    None => None,
                    Some(num_experts) => Some(Moe {
                        num_experts,
                        top_k: need(k("expert_used_count"))?,
                        // llama.cpp renormalises the chosen experts' weights for both.
                        norm_topk_prob: true,
                        intermediate_size: match g.usize(&k("expert_feed_forward_length")) {
                            Some(n) => n,
                            None => need(k("feed_forward_length"))?,
                        },
                        softmax_after_top_k: false,
                        dense_layers: Vec::new(),
                    }),
                },
                ..Arch::default()
            },
        },
    };
    if let Some(m) = &cfg.arch.moe {
        if m.top_k == 0 || m.top_k > m.num_experts {
            return Err(ModelError::Config(format!(
                "GGUF metadata: {} experts per token of {}",
                m.top_k, m.num_experts
            )));
        }
    }
    cfg.validate()?;
    Ok(cfg)
}

/// Gemma 2 / 3 as llama.cpp reads them: sliding layers from
/// `attention.sliding_window_pattern` (a period or one flag per layer; llama.cpp's
/// defaults, every 2nd layer global for Gemma 2 and every 6th for Gemma 3, when absent),
/// local rope base `rope.freq_base_swa` (10000), soft-caps (Gemma 2: 50 and 30 unless
/// given), the attention scale `attention.scale` or llama.cpp's rule (head_dim, except
/// hidden / heads for the 27B models, told apart by their layer count). The converter
/// has already added Gemma's 1 to the norm gains.
fn gguf_gemma(
    g: &Gguf,
    arch: &str,
    family: Family,
    hidden: usize,
    num_heads: usize,
    head_dim: usize,
) -> Result<Arch, ModelError> {
    let k = |s: &str| format!("{arch}.{s}");
    let layers = g.usize(&k("block_count")).unwrap_or(0);
    let gemma3 = family == Family::Gemma3;
    let pattern_key = k("attention.sliding_window_pattern");
    let layer_types = match g.get(&pattern_key) {
        Some(v) if v.as_array().is_some() => {
            let flags = v.as_array().unwrap_or_default();
            if flags.len() != layers {
                return Err(ModelError::Config(format!(
                    "GGUF metadata: {pattern_key:?} has {} flags for {layers} layers",
                    flags.len()
                )));
            }
            flags
                .iter()
                .map(|f| match f.as_bool() {
                    Some(true) => LayerAttn::Sliding,
                    _ => LayerAttn::Full,
                })
                .collect()
        }
        _ => periodic(
            layers,
            g.usize(&pattern_key).unwrap_or(if gemma3 { 6 } else { 2 }),
        ),
    };
    let big = layers == if gemma3 { 62 } else { 46 };
    let scalar = match g.f32(&k("attention.scale")) {
        Some(s) if s > 0.0 => 1.0 / (s * s),
        _ if big => (hidden / num_heads) as f32,
        _ => head_dim as f32,
    };
    Ok(Arch {
        layer_types,
        local_rope_theta: gemma3.then(|| g.f32(&k("rope.freq_base_swa")).unwrap_or(10_000.0)),
        norm_plus_one: true,
        sandwich_norms: true,
        query_pre_attn_scalar: Some(scalar),
        attn_softcap: (!gemma3).then(|| g.f32(&k("attn_logit_softcapping")).unwrap_or(50.0)),
        final_softcap: (!gemma3).then(|| g.f32(&k("final_logit_softcapping")).unwrap_or(30.0)),
        scale_embeddings: true,
        activation: Activation::GeluTanh,
        ..Arch::default()
    })
}

struct SafetensorsSource {
    tensors: HashMap<String, (PathBuf, Tensor)>,
}

impl TensorSource for SafetensorsSource {
    fn matrix(&mut self, name: &str) -> Result<Option<(Vec<usize>, QMatrix)>, ModelError> {
        let Some((path, t)) = self.tensors.remove(name) else {
            return Ok(None);
        };
        let dims = t.dims().to_vec();
        let bad = |e: String| malformed(&path, format!("tensor {name}: {e}"));
        let &[rows, cols] = dims.as_slice() else {
            return Err(bad(format!("shape {dims:?} is not a matrix")));
        };
        // bf16 and f16 checkpoints stay in their format (the conversion to f32 is exact).
        let m = match t.dtype() {
            DType::BF16 | DType::F16 => {
                let qt = if t.dtype() == DType::BF16 {
                    QType::BF16
                } else {
                    QType::F16
                };
                let bits: Vec<u8> = if qt == QType::BF16 {
                    t.flatten_all()
                        .and_then(|t| t.to_vec1::<half::bf16>())
                        .map(|v| v.iter().flat_map(|x| x.to_le_bytes()).collect())
                } else {
                    t.flatten_all()
                        .and_then(|t| t.to_vec1::<half::f16>())
                        .map(|v| v.iter().flat_map(|x| x.to_le_bytes()).collect())
                }
                .map_err(|e| bad(e.to_string()))?;
                QMatrix::from_raw(qt, rows, cols, &bits).map_err(|e| bad(e.to_string()))?
            }
            _ => QMatrix::f32(rows, cols, tensor_to_f32(&path, name, t)?.1),
        };
        Ok(Some((dims, m)))
    }

    fn experts(&mut self, name: &str) -> Result<Option<ExpertStack>, ModelError> {
        // HF checkpoints store experts one by one (gpt-oss's stacks are read as vectors).
        Err(ModelError::Tensor {
            name: name.to_string(),
            reason: "stacked experts are read from GGUF files only".into(),
        })
    }

    fn vector(&mut self, name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>, ModelError> {
        match self.tensors.remove(name) {
            None => Ok(None),
            Some((path, t)) => tensor_to_f32(&path, name, t).map(Some),
        }
    }
}

/// Loads an HF layout directory: config.json, *.safetensors, tokenizer.json, tokenizer_config.json.
pub fn load_hf_dir(dir: &Path, name: &str) -> Result<LoadedModel, ModelError> {
    hf_dir_with(dir, name, &mut on_cpu)
}

fn hf_dir_with(dir: &Path, name: &str, place: &mut Place) -> Result<LoadedModel, ModelError> {
    // The architecture first: an unsupported one is the error to report.
    let cfg_json = meta::read_json(&dir.join("config.json"))?;
    let mut cfg = ModelConfig::from_hf_json(meta::text_config(&cfg_json))?;
    let meta = meta::from_hf_dir(dir, name)?;
    cfg.eos_token_ids = meta.eos_token_ids.clone();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(malformed(dir, "no *.safetensors files"));
    }
    let mut tensors = HashMap::new();
    for f in &files {
        let bytes = std::fs::read(f).map_err(io_err(f))?;
        let map = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .map_err(|e| malformed(f, e))?;
        for (k, v) in map {
            tensors.insert(k, (f.clone(), v));
        }
    }
    let mut src = SafetensorsSource { tensors };
    let model = Transformer::from_source(cfg, &mut src, Naming::Hf, false, None)?;
    Ok(LoadedModel {
        model: place(model)?,
        meta,
    })
}
