//! The bodies of `/tokenize` and `/detokenize` in vLLM's shape, from the model's
//! tokenizer side alone (so `reprise route` serves them without weights).

use crate::errors::ApiError;
use crate::model_info::ModelInfo;
use crate::params::{kind, Fields};
use crate::prompt::chat_prompt;
use crate::tools;
use serde_json::{json, Value};

/// The answer of `/tokenize` to `body`.
pub fn tokenize_body(model: &ModelInfo, body: &Value) -> Result<Value, ApiError> {
    let f = Fields::new(body)?;
    model.check_model(f.str("model")?)?;
    let tokens = if f.value("messages").is_some() {
        chat_prompt(
            model,
            &f,
            f.bool("add_special_tokens")?,
            tools::parse(&f)?.as_ref(),
        )?
    } else {
        let prompt = f
            .str("prompt")?
            .ok_or_else(|| ApiError::bad("prompt", "prompt (a string) or messages is required"))?;
        let add_special = f.bool("add_special_tokens")?.unwrap_or(true);
        model
            .tokenizer
            .encode(prompt, add_special)
            .map_err(|e| ApiError::Internal(e.to_string()))?
    };
    Ok(json!({"count": tokens.len(), "max_model_len": model.max_model_len, "tokens": tokens}))
}

/// The answer of `/detokenize` to `body`.
pub fn detokenize_body(model: &ModelInfo, body: &Value) -> Result<Value, ApiError> {
    let f = Fields::new(body)?;
    model.check_model(f.str("model")?)?;
    let ids: Vec<u32> = match f.value("tokens") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_u64()
                    .and_then(|i| u32::try_from(i).ok())
                    .ok_or_else(|| {
                        ApiError::bad("tokens", "tokens must be a list of non-negative integers")
                    })
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(ApiError::bad(
                "tokens",
                format!("tokens must be a list, got {}", kind(other)),
            ))
        }
        None => return Err(ApiError::bad("tokens", "tokens is required")),
    };
    model.check_token_ids(&ids, "tokens")?;
    let prompt = model
        .tokenizer
        .decode(&ids, false)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(json!({"prompt": prompt}))
}
