//! Tokenizers: HF `tokenizer.json`, or byte-level BPE rebuilt from a GGUF
//! vocabulary with the pre-tokenizer the model was trained with.

use serde_json::{json, Value};
use std::path::Path;

/// Tokenizer failures.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// tokenizer.json could not be read or parsed, or the GGUF vocabulary is unusable.
    #[error("cannot load tokenizer from {origin}: {reason}")]
    Load {
        /// File or source.
        origin: String,
        /// What went wrong.
        reason: String,
    },
    /// Encoding or decoding failed.
    #[error("tokenizer error: {0}")]
    Codec(String),
}

/// A tokenizer with special-token handling and byte-level decoding.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Added tokens by id: content and whether special (the library clones its map on
    /// every query, too slow for a per-token check).
    added: std::sync::Arc<std::collections::HashMap<u32, (String, bool)>>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

/// GGUF token types (llama.cpp `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Pre-tokenizer for a GGUF `tokenizer.ggml.pre` name.
fn pre_tokenizer(pre: &str) -> Value {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |pattern: &str| json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false});
    match pre {
        "llama-bpe" | "llama3" | "llama-v3" => json!({"type": "Sequence", "pretokenizers": [
            split(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
            byte_level(false)]}),
        "qwen2" => json!({"type": "Sequence", "pretokenizers": [
            split(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
            byte_level(false)]}),
        "gpt-2" | "gpt2" => byte_level(true),
        // SmolLM2 ("smollm") and the GPT-2-derived default: every digit on its own, then byte-level.
        _ => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
    }
}

impl Tokenizer {
    /// The tokenizer as HF's `tokenizer.json` value (for llguidance's token trie).
    pub fn to_json_value(&self) -> Result<Value, TokenizerError> {
        let text = self
            .inner
            .to_string(false)
            .map_err(|e| TokenizerError::Codec(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| TokenizerError::Codec(e.to_string()))
    }

    /// Loads an HF `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| TokenizerError::Load {
            origin: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(Self::wrap(inner))
    }

    fn wrap(inner: tokenizers::Tokenizer) -> Self {
        let added = inner
            .get_added_tokens_decoder()
            .into_iter()
            .map(|(id, t)| (id, (t.content, t.special)))
            .collect();
        Self {
            inner,
            added: std::sync::Arc::new(added),
        }
    }

    /// Parses a `tokenizer.json` document.
    pub fn from_json(json: &str) -> Result<Self, TokenizerError> {
        let inner: tokenizers::Tokenizer =
            json.parse()
                .map_err(|e: tokenizers::Error| TokenizerError::Load {
                    origin: "tokenizer.json text".into(),
                    reason: e.to_string(),
                })?;
        Ok(Self::wrap(inner))
    }

    /// Builds a byte-level BPE tokenizer from a GGUF vocabulary (`tokenizer.ggml.*`).
    /// Control and user-defined tokens become added special tokens matched before BPE.
    pub fn from_gguf_vocab(
        tokens: &[String],
        merges: &[String],
        token_types: Option<&[i64]>,
        pre: &str,
    ) -> Result<Self, TokenizerError> {
        let vocab: serde_json::Map<String, Value> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), json!(i)))
            .collect();
        let mut added = Vec::new();
        if let Some(types) = token_types {
            for (i, (&ty, t)) in types.iter().zip(tokens).enumerate() {
                if ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED {
                    added.push(
                        json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                        "rstrip": false, "normalized": false, "special": ty == TOKEN_TYPE_CONTROL}),
                    );
                }
            }
        }
        let merges: Vec<Value> = merges
            .iter()
            .map(|m| match m.split_once(' ') {
                Some((a, b)) => Ok(json!([a, b])),
                None => Err(TokenizerError::Load {
                    origin: "GGUF tokenizer.ggml.merges".into(),
                    reason: format!("merge {m:?} is not two space-separated tokens"),
                }),
            })
            .collect::<Result<_, _>>()?;
        let doc = json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": added, "normalizer": null,
            "pre_tokenizer": pre_tokenizer(pre),
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges}
        });
        Self::from_json(&doc.to_string())
    }

    /// Token ids of `text`; special tokens in the text are always matched as such,
    /// `add_special_tokens` applies the post-processor (e.g. a BOS) if the tokenizer has one.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|e| TokenizerError::Codec(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, optionally dropping special tokens.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| TokenizerError::Codec(e.to_string()))
    }

    /// The vocabulary string of a token (byte-level form, e.g. `Ġthe`).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a vocabulary string.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Whether `id` is an added special token (skipped by `decode(.., true)`).
    pub fn is_special(&self, id: u32) -> bool {
        self.added.get(&id).is_some_and(|t| t.1)
    }

    /// The text of an added token (special or not), e.g. `<|im_end|>`.
    pub fn added_token(&self, id: u32) -> Option<&str> {
        self.added.get(&id).map(|t| t.0.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> Tokenizer {
        let tokens: Vec<String> = ["<|im_start|>", "a", "b", "ab", "Ġ", "1", "2", "Ġa"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let merges = vec!["a b".to_string(), "Ġ a".to_string()];
        let types = [3, 1, 1, 1, 1, 1, 1, 1];
        Tokenizer::from_gguf_vocab(&tokens, &merges, Some(&types), "smollm").unwrap()
    }

    #[test]
    fn gguf_vocab_builds_bpe_with_specials_and_digits() {
        let t = toy();
        assert_eq!(
            t.encode("<|im_start|>ab a12", false).unwrap(),
            vec![0, 3, 7, 5, 6]
        );
        assert_eq!(t.decode(&[0, 3, 7], true).unwrap(), "ab a");
        assert_eq!(t.decode(&[0, 3], false).unwrap(), "<|im_start|>ab");
        assert_eq!(t.added_token(0), Some("<|im_start|>"));
        assert_eq!(t.added_token(3), None);
    }
}
