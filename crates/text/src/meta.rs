//! A model's text side from its files: where a model source is (a GGUF file, an
//! HF layout directory, an HF repo id in the local hf-hub cache, or the default
//! model), and what serving it needs besides its weights: tokenizer, chat template,
//! special tokens, context length, name and sampling defaults. `reprise route`
//! loads only this; the engine loads it beside the weights.

use crate::chat_template::{ChatTemplate, ChatTemplateError};
use crate::gguf::{Gguf, GgufError};
use crate::tokenizer::{Tokenizer, TokenizerError};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// File name of the default model.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Why a model source or its text side could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The default model is not in the cache.
    #[error("default model not found at {0}; run models/fetch-default.sh to fetch it")]
    DefaultModelMissing(PathBuf),
    /// The model source is neither a file, a directory nor a cached HF repo.
    #[error("model source {0:?} is not a GGUF file, a model directory or a HuggingFace repo id in the local hf-hub cache")]
    SourceNotFound(String),
    /// A config or metadata field is missing or has the wrong type.
    #[error("invalid model config: {0}")]
    Config(String),
    /// A file is malformed.
    #[error("malformed model file {path}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The tokenizer could not be built.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The chat template could not be compiled.
    #[error(transparent)]
    ChatTemplate(#[from] ChatTemplateError),
}

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

/// Where a model source's files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A GGUF file.
    Gguf(PathBuf),
    /// A directory in the HF layout, with the name to report.
    HfDir(PathBuf, String),
}

/// Finds `source`: the default model (`None` or empty), a GGUF file, a directory,
/// or a repo id whose snapshot in the local hf-hub cache has `needed` (no network).
pub fn resolve(source: Option<&str>, needed: &str) -> Result<Source, MetaError> {
    let source = source.map(str::trim).filter(|s| !s.is_empty());
    let Some(src) = source else {
        let path = default_model_path();
        if !path.is_file() {
            return Err(MetaError::DefaultModelMissing(path));
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
    Err(MetaError::SourceNotFound(src.to_string()))
}

/// What serving a model needs besides its weights.
#[derive(Debug)]
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
    /// HF `model_type` or GGUF `general.architecture` (which tool-call format its
    /// templates use).
    pub architecture: String,
    /// The HF directory's `generation_config.json` (sampling defaults), when present.
    pub generation_config: Option<Value>,
}

/// Loads only the text side of `source`, never the weights: a GGUF's metadata, or
/// an HF directory's `tokenizer.json`, `tokenizer_config.json`, `config.json` and
/// `generation_config.json`.
pub fn load_meta(source: Option<&str>) -> Result<ModelMeta, MetaError> {
    match resolve(source, "tokenizer.json")? {
        Source::Gguf(path) => {
            let g = open_gguf(&path)?;
            from_gguf(&path, &g)
        }
        Source::HfDir(dir, name) => from_hf_dir(&dir, &name),
    }
}

/// Reads a GGUF file's header.
pub fn open_gguf(path: &Path) -> Result<Gguf, MetaError> {
    Gguf::open(path).map_err(|e| match e {
        GgufError::Io(source) => MetaError::Io {
            path: path.to_path_buf(),
            source,
        },
        GgufError::Format(reason) => MetaError::Malformed {
            path: path.to_path_buf(),
            reason,
        },
    })
}

/// The text side of a GGUF, from its header.
pub fn from_gguf(path: &Path, g: &Gguf) -> Result<ModelMeta, MetaError> {
    let arch = g
        .str("general.architecture")
        .ok_or_else(|| MetaError::Malformed {
            path: path.to_path_buf(),
            reason: "no general.architecture".into(),
        })?
        .to_string();
    let tokens = g
        .strings("tokenizer.ggml.tokens")
        .map_err(MetaError::Config)?
        .ok_or_else(|| MetaError::Config("GGUF has no tokenizer.ggml.tokens".into()))?;
    // The embedding's rows (GGUF lists a row's length first).
    let vocab_size = g
        .tensors
        .get("token_embd.weight")
        .and_then(|t| t.dims.last())
        .and_then(|&v| usize::try_from(v).ok())
        .unwrap_or(tokens.len());
    let eos = g.usize("tokenizer.ggml.eos_token_id").map(|x| x as u32);
    let bos = g.usize("tokenizer.ggml.bos_token_id").map(|x| x as u32);
    let merges = g
        .strings("tokenizer.ggml.merges")
        .map_err(MetaError::Config)?
        .unwrap_or_default();
    let token_types = g.ints("tokenizer.ggml.token_type");
    let tok_model = g.str("tokenizer.ggml.model").unwrap_or("gpt2");
    if tok_model != "gpt2" {
        return Err(MetaError::Config(format!(
            "GGUF tokenizer model {tok_model:?} is not supported (only byte-level BPE, \"gpt2\")"
        )));
    }
    let pre = g.str("tokenizer.ggml.pre").unwrap_or("default");
    let tokenizer = Tokenizer::from_gguf_vocab(&tokens, &merges, token_types.as_deref(), pre)?;
    let tok_str = |id: Option<u32>| id.and_then(|i| tokens.get(i as usize).cloned());
    let chat_template = match g.str("tokenizer.chat_template") {
        Some(t) => Some(ChatTemplate::new(t, tok_str(bos), tok_str(eos))?),
        None => None,
    };
    Ok(ModelMeta {
        tokenizer,
        chat_template,
        eos_token_ids: eos.into_iter().collect(),
        bos_token_id: bos,
        max_model_len: g.usize(&format!("{arch}.context_length")).unwrap_or(4096),
        vocab_size,
        name: path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into()),
        architecture: arch,
        generation_config: None,
    })
}

/// Reads a JSON file.
pub fn read_json(path: &Path) -> Result<Value, MetaError> {
    let text = std::fs::read_to_string(path).map_err(|source| MetaError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| MetaError::Malformed {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Token ids given as one integer or a list of them.
pub fn id_list(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64().map(|x| x as u32))
            .collect(),
        _ => Vec::new(),
    }
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
fn hf_chat_template(dir: &Path, tok_cfg: &Value) -> Result<Option<String>, MetaError> {
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
            .map_err(|source| MetaError::Io {
                path: jinja,
                source,
            });
    }
    Ok(None)
}

/// The model's own config of an HF `config.json`: the top level, or its
/// `text_config` for multimodal checkpoints whose text model is served.
pub fn text_config(cfg: &Value) -> &Value {
    match cfg.get("text_config") {
        Some(t) if t.is_object() => t,
        _ => cfg,
    }
}

/// The text side of an HF layout directory (no weights read).
pub fn from_hf_dir(dir: &Path, name: &str) -> Result<ModelMeta, MetaError> {
    let cfg_json = read_json(&dir.join("config.json"))?;
    let cfg = text_config(&cfg_json);
    let num = |k: &str| cfg.get(k).and_then(Value::as_u64).map(|x| x as usize);
    let architecture = cfg
        .get("model_type")
        .or_else(|| cfg_json.get("model_type"))
        .and_then(Value::as_str)
        .ok_or_else(|| MetaError::Config("config.json: missing \"model_type\"".into()))?
        .to_string();
    let vocab_size = num("vocab_size").ok_or_else(|| {
        MetaError::Config("config.json: missing or non-integer \"vocab_size\"".into())
    })?;
    let mut eos_token_ids = id_list(
        cfg.get("eos_token_id")
            .or_else(|| cfg_json.get("eos_token_id")),
    );
    let gen_path = dir.join("generation_config.json");
    let generation_config = if gen_path.is_file() {
        let g = read_json(&gen_path)?;
        for id in id_list(g.get("eos_token_id")) {
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
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
    if eos_token_ids.is_empty() {
        if let Some(id) = eos_tok.as_deref().and_then(|t| tokenizer.token_to_id(t)) {
            eos_token_ids.push(id);
        }
    }
    let chat_template = match hf_chat_template(dir, &tok_cfg)? {
        Some(t) => Some(ChatTemplate::new(&t, bos_tok, eos_tok)?),
        None => None,
    };
    Ok(ModelMeta {
        tokenizer,
        chat_template,
        eos_token_ids,
        bos_token_id: cfg
            .get("bos_token_id")
            .or_else(|| cfg_json.get("bos_token_id"))
            .and_then(Value::as_u64)
            .map(|x| x as u32),
        max_model_len: num("max_position_embeddings").unwrap_or(4096),
        vocab_size,
        name: name.trim_end_matches('/').to_string(),
        architecture,
        generation_config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::tests::{header, s, str_array};

    #[test]
    fn gguf_text_side_from_the_header_alone() {
        let dir = std::env::temp_dir().join(format!("reprise-meta-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("toy.gguf");
        let bytes = header(
            &[
                ("general.architecture", 8, s("llama")),
                ("llama.context_length", 4, 2048u32.to_le_bytes().to_vec()),
                ("tokenizer.ggml.model", 8, s("gpt2")),
                (
                    "tokenizer.ggml.tokens",
                    9,
                    str_array(&["<s>", "a", "b", "ab"]),
                ),
                ("tokenizer.ggml.merges", 9, str_array(&["a b"])),
                (
                    "tokenizer.ggml.eos_token_id",
                    4,
                    0u32.to_le_bytes().to_vec(),
                ),
                (
                    "tokenizer.chat_template",
                    8,
                    s("{{ messages[0]['content'] }}"),
                ),
            ],
            &[("token_embd.weight", &[8, 6], 0)],
        );
        std::fs::write(&path, bytes).unwrap();
        let m = load_meta(path.to_str()).unwrap();
        assert_eq!(m.architecture, "llama");
        assert_eq!((m.vocab_size, m.max_model_len), (6, 2048));
        assert_eq!(m.eos_token_ids, vec![0]);
        assert_eq!(m.name, "toy");
        assert_eq!(m.tokenizer.encode("ab", false).unwrap(), vec![3]);
        assert!(m.chat_template.is_some());
        std::fs::write(&path, b"not a gguf").unwrap();
        assert!(matches!(
            load_meta(path.to_str()),
            Err(MetaError::Malformed { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unknown_sources_are_named() {
        assert!(matches!(
            load_meta(Some("/nonexistent/model.gguf")),
            Err(MetaError::SourceNotFound(_))
        ));
    }
}
