//! Finding and loading models: GGUF files, HF layout directories, HF repo ids
//! through hf-hub's local cache, and the default model; the weights are read into
//! the CPU transformer and, for a GPU, uploaded to the CUDA backend.

use crate::chat_template::ChatTemplate;
use crate::cpu::quant::{QMatrix, QType};
use crate::cpu::transformer::{Naming, TensorSource, Transformer};
use crate::model::config::{id_list, parse_rope_scaling};
use crate::model::{DeviceMemory, Family, Model, ModelConfig, ModelError};
use crate::tokenizer::Tokenizer;
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// File name of the default model.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Where `models/fetch-default.sh` puts the default model.
pub fn default_model_path() -> PathBuf {
    let dir = match std::env::var_os("REPRISE_MODELS_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => {
            let cache = match std::env::var_os("XDG_CACHE_HOME") {
                Some(c) if !c.is_empty() => PathBuf::from(c),
                _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"),
            };
            cache.join("reprise").join("models")
        }
    };
    dir.join(DEFAULT_MODEL_FILE)
}

/// Where a loaded model's weights go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelDevice {
    /// f32 on the host (the CPU model).
    Cpu,
    /// bf16 on GPU `N` (needs the `cuda` feature).
    Cuda(usize),
}

/// A loaded model on whichever backend it was placed; workers of one device
/// share it (the weights are read-only).
#[derive(Clone)]
pub enum AnyModel {
    /// The CPU transformer.
    Cpu(Arc<Transformer>),
    /// The CUDA model on one GPU.
    #[cfg(feature = "cuda")]
    Cuda(Arc<crate::cuda::CudaModel>),
}

impl AnyModel {
    /// The model's hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        match self {
            AnyModel::Cpu(m) => m.config(),
            #[cfg(feature = "cuda")]
            AnyModel::Cuda(m) => m.config(),
        }
    }

    /// Bytes of one KV block of `block_size` tokens on this backend.
    pub fn kv_block_bytes(&self, block_size: usize) -> usize {
        match self {
            AnyModel::Cpu(m) => m.kv_block_bytes(block_size),
            #[cfg(feature = "cuda")]
            AnyModel::Cuda(m) => m.kv_block_bytes(block_size),
        }
    }

    /// The device's memory (`None` on the host).
    pub fn device_memory(&self) -> Option<DeviceMemory> {
        match self {
            AnyModel::Cpu(m) => m.device_memory(),
            #[cfg(feature = "cuda")]
            AnyModel::Cuda(m) => m.device_memory(),
        }
    }

    /// A worker's scratch at these batch limits.
    pub fn workspace_bytes(&self, max_batched_tokens: usize, max_seqs: usize) -> u64 {
        match self {
            AnyModel::Cpu(m) => m.workspace_bytes(max_batched_tokens, max_seqs),
            #[cfg(feature = "cuda")]
            AnyModel::Cuda(m) => m.workspace_bytes(max_batched_tokens, max_seqs),
        }
    }

    /// Weight bytes and formats.
    pub fn weights(&self) -> (u64, String) {
        match self {
            AnyModel::Cpu(m) => m.weights(),
            #[cfg(feature = "cuda")]
            AnyModel::Cuda(m) => m.weights(),
        }
    }

    /// The CPU model, when that is where it is.
    pub fn cpu(&self) -> Option<&Arc<Transformer>> {
        match self {
            AnyModel::Cpu(m) => Some(m),
            #[cfg(feature = "cuda")]
            AnyModel::Cuda(_) => None,
        }
    }
}

/// A model with everything needed to serve it.
pub struct LoadedModel {
    /// The network, on its backend.
    pub model: AnyModel,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// Its chat template, when it ships one.
    pub chat_template: Option<ChatTemplate>,
    /// Token ids that end generation.
    pub eos_token_ids: Vec<u32>,
    /// Beginning-of-sequence token, when the model has one.
    pub bos_token_id: Option<u32>,
    /// Longest context (prompt + generated) the model supports.
    pub max_model_len: usize,
    /// Display name (file stem or repo id).
    pub name: String,
    /// The model family.
    pub family: Family,
    /// `generation_config.json`, when the model has one.
    pub generation_config: Option<Value>,
}

impl LoadedModel {
    /// The weights `model` with the tokenizer side `meta`.
    pub fn new(model: AnyModel, meta: ModelMeta) -> Self {
        Self {
            model,
            tokenizer: meta.tokenizer,
            chat_template: meta.chat_template,
            eos_token_ids: meta.eos_token_ids,
            bos_token_id: meta.bos_token_id,
            max_model_len: meta.max_model_len,
            name: meta.name,
            family: meta.family,
            generation_config: meta.generation_config,
        }
    }

    /// The CPU model (tests and tools that load for the CPU).
    pub fn cpu_model(&self) -> Result<&Arc<Transformer>, ModelError> {
        self.model
            .cpu()
            .ok_or_else(|| ModelError::Device("the model is not on the CPU".into()))
    }
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("name", &self.name)
            .field("config", self.model.config())
            .field("eos_token_ids", &self.eos_token_ids)
            .field("bos_token_id", &self.bos_token_id)
            .field("max_model_len", &self.max_model_len)
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
                crate::cuda::CudaModel::from_host(t, ctx.clone())
                    .map(|m| AnyModel::Cuda(Arc::new(m)))
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
    Ok(AnyModel::Cpu(Arc::new(t)))
}

/// Loads a model from a GGUF file, an HF layout directory, an HF repo id in the
/// local hf-hub cache, or (for `None` / empty) the default model.
pub fn load(source: Option<&str>) -> Result<LoadedModel, ModelError> {
    load_with(source, &mut on_cpu)
}

fn load_with(source: Option<&str>, place: &mut Place) -> Result<LoadedModel, ModelError> {
    match resolve(source, "config.json")? {
        Source::Gguf(path) => gguf_with(&path, place),
        Source::HfDir(dir, name) => hf_dir_with(&dir, &name, place),
    }
}

/// Where a model source's files are.
enum Source {
    Gguf(PathBuf),
    /// A directory in the HF layout, with the name to report.
    HfDir(PathBuf, String),
}

/// Finds `source`: the default model, a GGUF file, a directory, or a repo id whose
/// snapshot in the local hf-hub cache has `needed` (no network).
fn resolve(source: Option<&str>, needed: &str) -> Result<Source, ModelError> {
    let source = source.map(str::trim).filter(|s| !s.is_empty());
    let Some(src) = source else {
        let path = default_model_path();
        if !path.is_file() {
            return Err(ModelError::DefaultModelMissing(path));
        }
        return Ok(Source::Gguf(path));
    };
    let path = Path::new(src);
    if path.is_file() {
        return Ok(Source::Gguf(path.to_path_buf()));
    }
    if path.is_dir() {
        return Ok(Source::HfDir(path.to_path_buf(), src.to_string()));
    }
    if src.contains('/') && !src.starts_with('/') && !src.starts_with('.') {
        let repo = hf_hub::Cache::from_env().model(src.to_string());
        if let Some(dir) = repo.get(needed).as_deref().and_then(Path::parent) {
            return Ok(Source::HfDir(dir.to_path_buf(), src.to_string()));
        }
    }
    Err(ModelError::SourceNotFound(src.to_string()))
}

/// What serving a model needs besides its weights: tokenizer, chat template, special
/// tokens, context length and name. `reprise route` loads only this.
pub struct ModelMeta {
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// The chat template, when the model ships one.
    pub chat_template: Option<ChatTemplate>,
    /// Token ids that end generation.
    pub eos_token_ids: Vec<u32>,
    /// Beginning-of-sequence token, when the model has one.
    pub bos_token_id: Option<u32>,
    /// Longest context (prompt + generated) the model supports.
    pub max_model_len: usize,
    /// Rows of the embedding (token ids must be below it).
    pub vocab_size: usize,
    /// Display name (file stem or repo id).
    pub name: String,
    /// The model family (which tool-call format its templates use).
    pub family: Family,
    /// The HF directory's `generation_config.json` (sampling defaults), when present.
    pub generation_config: Option<Value>,
}

/// Loads only the tokenizer side of `source` (same forms as [`load`]), never the
/// weights: a GGUF's metadata, or an HF directory's `tokenizer.json`,
/// `tokenizer_config.json`, `config.json` and `generation_config.json`.
pub fn load_meta(source: Option<&str>) -> Result<ModelMeta, ModelError> {
    match resolve(source, "tokenizer.json")? {
        Source::Gguf(path) => {
            let file = File::open(&path).map_err(io_err(&path))?;
            let mut reader = BufReader::new(file);
            let content = gguf_file::Content::read(&mut reader).map_err(|e| malformed(&path, e))?;
            Ok(gguf_meta(&path, &content)?.1)
        }
        Source::HfDir(dir, name) => Ok(hf_meta(&dir, &name)?.1),
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

struct Md<'a>(&'a HashMap<String, gguf_file::Value>);

impl Md<'_> {
    fn get(&self, key: &str) -> Option<&gguf_file::Value> {
        self.0.get(key)
    }
    fn usize(&self, key: &str) -> Result<usize, ModelError> {
        self.opt_usize(key).ok_or_else(|| {
            ModelError::Config(format!("GGUF metadata: missing or non-integer {key:?}"))
        })
    }
    fn opt_usize(&self, key: &str) -> Option<usize> {
        let v = self.get(key)?;
        v.to_u64()
            .ok()
            .or_else(|| v.to_u32().ok().map(u64::from))
            .or_else(|| v.to_i32().ok().and_then(|x| u64::try_from(x).ok()))
            .or_else(|| v.to_i64().ok().and_then(|x| u64::try_from(x).ok()))
            .map(|x| x as usize)
    }
    fn f32(&self, key: &str) -> Option<f32> {
        let v = self.get(key)?;
        v.to_f32()
            .ok()
            .or_else(|| v.to_f64().ok().map(|x| x as f32))
    }
    fn str(&self, key: &str) -> Option<&str> {
        self.get(key)?.to_string().ok().map(String::as_str)
    }
    fn strings(&self, key: &str) -> Result<Option<Vec<String>>, ModelError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let arr = v
            .to_vec()
            .map_err(|_| ModelError::Config(format!("GGUF metadata {key:?} is not an array")))?;
        arr.iter()
            .map(|x| {
                x.to_string().cloned().map_err(|_| {
                    ModelError::Config(format!("GGUF metadata {key:?} holds a non-string"))
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
    fn ints(&self, key: &str) -> Option<Vec<i64>> {
        let arr = self.get(key)?.to_vec().ok()?;
        arr.iter()
            .map(|x| x.to_i32().map(i64::from).or_else(|_| x.to_i64()).ok())
            .collect()
    }
}

/// Loads a GGUF file (llama, qwen2 or qwen3 architecture), dequantizing every tensor to f32.
pub fn load_gguf(path: &Path) -> Result<LoadedModel, ModelError> {
    gguf_with(path, &mut on_cpu)
}

fn gguf_with(path: &Path, place: &mut Place) -> Result<LoadedModel, ModelError> {
    let file = File::open(path).map_err(io_err(path))?;
    let mut reader = BufReader::new(file);
    let content = gguf_file::Content::read(&mut reader).map_err(|e| malformed(path, e))?;
    let (cfg, meta) = gguf_meta(path, &content)?;
    let family = cfg.family;
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
    let unpermute = family == Family::Llama;
    let model =
        Transformer::from_source(cfg, &mut src, Naming::Gguf, unpermute, rope_freq_factors)?;
    Ok(LoadedModel::new(place(model)?, meta))
}

/// The config and the tokenizer side of a GGUF, from its metadata alone.
fn gguf_meta(
    path: &Path,
    content: &gguf_file::Content,
) -> Result<(ModelConfig, ModelMeta), ModelError> {
    let md = Md(&content.metadata);
    let arch = md
        .str("general.architecture")
        .ok_or_else(|| malformed(path, "no general.architecture"))?
        .to_string();
    let family = Family::from_name(&arch)?;
    let k = |s: &str| format!("{arch}.{s}");
    let hidden = md.usize(&k("embedding_length"))?;
    let num_heads = md.usize(&k("attention.head_count"))?;
    if num_heads == 0 {
        return Err(ModelError::Config("attention.head_count is 0".into()));
    }
    let tokens = md
        .strings("tokenizer.ggml.tokens")?
        .ok_or_else(|| ModelError::Config("GGUF has no tokenizer.ggml.tokens".into()))?;
    let vocab_size = content
        .tensor_infos
        .get("token_embd.weight")
        .map(|t| t.shape.dims()[0])
        .unwrap_or(tokens.len());
    let eos = md
        .opt_usize("tokenizer.ggml.eos_token_id")
        .map(|x| x as u32);
    let bos = md
        .opt_usize("tokenizer.ggml.bos_token_id")
        .map(|x| x as u32);
    let has_q_bias = content.tensor_infos.contains_key("blk.0.attn_q.bias");
    let cfg = ModelConfig {
        family,
        vocab_size,
        hidden_size: hidden,
        intermediate_size: md.usize(&k("feed_forward_length"))?,
        num_layers: md.usize(&k("block_count"))?,
        num_heads,
        num_kv_heads: md
            .opt_usize(&k("attention.head_count_kv"))
            .unwrap_or(num_heads),
        head_dim: md
            .opt_usize(&k("attention.key_length"))
            .unwrap_or(hidden / num_heads),
        rope_theta: md.f32(&k("rope.freq_base")).unwrap_or(10_000.0),
        rope_scaling: match (
            md.str(&k("rope.scaling.type")),
            md.f32(&k("rope.scaling.factor")),
        ) {
            (Some("linear"), Some(f)) => {
                parse_rope_scaling(&serde_json::json!({"type": "linear", "factor": f}))?
            }
            _ => None,
        },
        rms_norm_eps: md
            .f32(&k("attention.layer_norm_rms_epsilon"))
            .unwrap_or(1e-5),
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
        attention_bias: has_q_bias,
        qk_norm: family == Family::Qwen3,
        max_position_embeddings: md.opt_usize(&k("context_length")).unwrap_or(4096),
        bos_token_id: bos,
        eos_token_ids: eos.into_iter().collect(),
    };
    cfg.validate()?;

    let merges = md.strings("tokenizer.ggml.merges")?.unwrap_or_default();
    let token_types = md.ints("tokenizer.ggml.token_type");
    let tok_model = md.str("tokenizer.ggml.model").unwrap_or("gpt2");
    if tok_model != "gpt2" {
        return Err(ModelError::Config(format!(
            "GGUF tokenizer model {tok_model:?} is not supported (only byte-level BPE, \"gpt2\")"
        )));
    }
    let pre = md.str("tokenizer.ggml.pre").unwrap_or("default");
    let tokenizer = Tokenizer::from_gguf_vocab(&tokens, &merges, token_types.as_deref(), pre)?;
    let tok_str = |id: Option<u32>| id.and_then(|i| tokens.get(i as usize).cloned());
    let chat_template = match md.str("tokenizer.chat_template") {
        Some(t) => Some(ChatTemplate::new(t, tok_str(bos), tok_str(eos))?),
        None => None,
    };
    let meta = ModelMeta {
        tokenizer,
        chat_template,
        eos_token_ids: cfg.eos_token_ids.clone(),
        bos_token_id: bos,
        max_model_len: cfg.max_position_embeddings,
        vocab_size: cfg.vocab_size,
        name: path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into()),
        family: cfg.family,
        generation_config: None,
    };
    Ok((cfg, meta))
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

    fn vector(&mut self, name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>, ModelError> {
        match self.tensors.remove(name) {
            None => Ok(None),
            Some((path, t)) => tensor_to_f32(&path, name, t).map(Some),
        }
    }
}

fn read_json(path: &Path) -> Result<Value, ModelError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    serde_json::from_str(&text).map_err(|e| malformed(path, e))
}

/// A special-token field of tokenizer_config.json: a string or `{"content": ...}`.
fn token_field(cfg: &Value, key: &str) -> Option<String> {
    match cfg.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(String::from),
        _ => None,
    }
}

/// The chat template from tokenizer_config.json (string or named list) or chat_template.jinja.
fn hf_chat_template(dir: &Path, tok_cfg: &Value) -> Result<Option<String>, ModelError> {
    match tok_cfg.get("chat_template") {
        Some(Value::String(s)) => return Ok(Some(s.clone())),
        Some(Value::Array(list)) => {
            let pick = list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .or_else(|| list.first());
            if let Some(t) = pick.and_then(|t| t.get("template")).and_then(Value::as_str) {
                return Ok(Some(t.to_string()));
            }
        }
        _ => {}
    }
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return std::fs::read_to_string(&jinja)
            .map(Some)
            .map_err(io_err(&jinja));
    }
    Ok(None)
}

/// Loads an HF layout directory: config.json, *.safetensors, tokenizer.json, tokenizer_config.json.
pub fn load_hf_dir(dir: &Path, name: &str) -> Result<LoadedModel, ModelError> {
    hf_dir_with(dir, name, &mut on_cpu)
}

fn hf_dir_with(dir: &Path, name: &str, place: &mut Place) -> Result<LoadedModel, ModelError> {
    let (cfg, meta) = hf_meta(dir, name)?;
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
    Ok(LoadedModel::new(place(model)?, meta))
}

/// The config and the tokenizer side of an HF layout directory (no weights read).
fn hf_meta(dir: &Path, name: &str) -> Result<(ModelConfig, ModelMeta), ModelError> {
    let cfg_json = read_json(&dir.join("config.json"))?;
    let mut cfg = ModelConfig::from_hf_json(&cfg_json)?;
    let gen_path = dir.join("generation_config.json");
    let generation_config = if gen_path.is_file() {
        let g = read_json(&gen_path)?;
        for id in id_list(g.get("eos_token_id")) {
            if !cfg.eos_token_ids.contains(&id) {
                cfg.eos_token_ids.push(id);
            }
        }
        Some(g)
    } else {
        None
    };
    let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
    let tc_path = dir.join("tokenizer_config.json");
    let tok_cfg = if tc_path.is_file() {
        read_json(&tc_path)?
    } else {
        Value::Null
    };
    let bos_tok = token_field(&tok_cfg, "bos_token");
    let eos_tok = token_field(&tok_cfg, "eos_token");
    if cfg.eos_token_ids.is_empty() {
        if let Some(id) = eos_tok.as_deref().and_then(|t| tokenizer.token_to_id(t)) {
            cfg.eos_token_ids.push(id);
        }
    }
    let chat_template = match hf_chat_template(dir, &tok_cfg)? {
        Some(t) => Some(ChatTemplate::new(&t, bos_tok, eos_tok)?),
        None => None,
    };
    let meta = ModelMeta {
        tokenizer,
        chat_template,
        eos_token_ids: cfg.eos_token_ids.clone(),
        bos_token_id: cfg.bos_token_id,
        max_model_len: cfg.max_position_embeddings,
        vocab_size: cfg.vocab_size,
        name: name.trim_end_matches('/').to_string(),
        family: cfg.family,
        generation_config,
    };
    Ok((cfg, meta))
}
