//! Reading and validating request fields: every field is read by hand from the
//! JSON object so each mistake names its field (`param`) and its allowed range.
//! Unknown fields are tolerated, as OpenAI does.

use crate::errors::ApiError;
use reprise_engine::sampler::SamplingParams;
use serde_json::{Map, Value};

/// Largest `n` accepted.
pub const MAX_N: usize = 16;
/// Largest number of top logprobs per token.
pub const MAX_LOGPROBS: usize = 20;
/// Largest number of stop strings.
pub const MAX_STOP: usize = 16;

/// Typed access to a JSON object's fields; `null` counts as absent.
pub struct Fields<'a> {
    obj: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    /// The body must be a JSON object.
    pub fn new(v: &'a Value) -> Result<Self, ApiError> {
        v.as_object()
            .map(|obj| Self { obj })
            .ok_or_else(|| ApiError::bad_request("the request body must be a JSON object"))
    }

    /// A field's raw value (absent or null: `None`).
    pub fn value(&self, k: &str) -> Option<&'a Value> {
        self.obj.get(k).filter(|v| !v.is_null())
    }

    /// A number.
    pub fn f64(&self, k: &str) -> Result<Option<f64>, ApiError> {
        match self.value(k) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .map(Some)
                .ok_or_else(|| ApiError::bad(k, format!("{k} must be a number, got {}", kind(v)))),
        }
    }

    /// An integer (a float with a fraction or a string is an error).
    pub fn int(&self, k: &str) -> Result<Option<i64>, ApiError> {
        match self.value(k) {
            None => Ok(None),
            Some(v) => {
                if let Some(i) = v.as_i64() {
                    Ok(Some(i))
                } else if v.as_u64().is_some() {
                    Ok(Some(i64::MAX))
                } else {
                    Err(ApiError::bad(
                        k,
                        format!("{k} must be an integer, got {}", kind(v)),
                    ))
                }
            }
        }
    }

    /// A boolean.
    pub fn bool(&self, k: &str) -> Result<Option<bool>, ApiError> {
        match self.value(k) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(ApiError::bad(
                k,
                format!("{k} must be a boolean, got {}", kind(v)),
            )),
        }
    }

    /// A string.
    pub fn str(&self, k: &str) -> Result<Option<&'a str>, ApiError> {
        match self.value(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(ApiError::bad(
                k,
                format!("{k} must be a string, got {}", kind(v)),
            )),
        }
    }
}

/// JSON type name of a value, for messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a non-integer number",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The generation options shared by completions and chat, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct GenOptions {
    /// Requested model name.
    pub model: Option<String>,
    /// Requested output length (resolved against the prompt later).
    pub max_tokens: Option<usize>,
    /// Sampling parameters (`max_tokens` filled in by [`resolve_max_tokens`]).
    pub params: SamplingParams,
    /// Number of choices.
    pub n: usize,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Stream as SSE.
    pub stream: bool,
    /// Send a final usage chunk when streaming.
    pub include_usage: bool,
    /// Drop special tokens from the text.
    pub skip_special_tokens: bool,
    /// vLLM's `cache_salt`: isolates this request's prefix-cache entries.
    pub cache_salt: Vec<u8>,
}

/// Reads the fields common to both APIs. `max_tokens_keys` are tried in order
/// (chat accepts `max_completion_tokens` first); `vocab_size` bounds token ids.
pub fn parse_common(
    f: &Fields,
    max_tokens_keys: &[&str],
    vocab_size: usize,
) -> Result<GenOptions, ApiError> {
    let model = f.str("model")?.map(str::to_string);
    let mut max_tokens = None;
    for &k in max_tokens_keys {
        if let Some(m) = f.int(k)? {
            if m < 1 {
                return Err(ApiError::bad(k, format!("{k} must be at least 1, got {m}")));
            }
            max_tokens = Some(usize::try_from(m).unwrap_or(usize::MAX));
            break;
        }
    }
    let temperature = f.f64("temperature")?.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad(
            "temperature",
            format!("temperature must be between 0 and 2, got {temperature}"),
        ));
    }
    let top_p = f.f64("top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad(
            "top_p",
            format!("top_p must be in (0, 1], got {top_p}"),
        ));
    }
    let top_k = match f.int("top_k")? {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => usize::try_from(k).unwrap_or(usize::MAX),
        Some(k) => {
            return Err(ApiError::bad(
                "top_k",
                format!("top_k must be -1 (disabled) or at least 1, got {k}"),
            ))
        }
    };
    let seed = f.int("seed")?.map(|s| s as u64);
    let n = match f.int("n")? {
        None => 1,
        Some(n) if (1..=MAX_N as i64).contains(&n) => n as usize,
        Some(n) => {
            return Err(ApiError::bad(
                "n",
                format!("n must be between 1 and {MAX_N}, got {n}"),
            ))
        }
    };
    if let Some(b) = f.int("best_of")? {
        if b != n as i64 {
            return Err(ApiError::bad(
                "best_of",
                "best_of is not supported (it must equal n)",
            ));
        }
    }
    for k in ["presence_penalty", "frequency_penalty"] {
        if let Some(p) = f.f64(k)? {
            if !(-2.0..=2.0).contains(&p) {
                return Err(ApiError::bad(
                    k,
                    format!("{k} must be between -2 and 2, got {p}"),
                ));
            }
            if p != 0.0 {
                return Err(ApiError::bad(k, format!("{k} is not supported (only 0)")));
            }
        }
    }
    if let Some(b) = f.value("logit_bias") {
        match b {
            Value::Object(m) if m.is_empty() => {}
            Value::Object(_) => {
                return Err(ApiError::bad("logit_bias", "logit_bias is not supported"))
            }
            v => {
                return Err(ApiError::bad(
                    "logit_bias",
                    format!("logit_bias must be an object, got {}", kind(v)),
                ))
            }
        }
    }
    let stop = match f.value("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => {
            if a.len() > MAX_STOP {
                return Err(ApiError::bad(
                    "stop",
                    format!("at most {MAX_STOP} stop strings"),
                ));
            }
            a.iter()
                .map(|v| {
                    v.as_str().map(str::to_string).ok_or_else(|| {
                        ApiError::bad("stop", "stop must be a string or a list of strings")
                    })
                })
                .collect::<Result<_, _>>()?
        }
        Some(_) => {
            return Err(ApiError::bad(
                "stop",
                "stop must be a string or a list of strings",
            ))
        }
    };
    let stop_token_ids = match f.value("stop_token_ids") {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_u64()
                    .filter(|&id| (id as usize) < vocab_size)
                    .map(|id| id as u32)
                    .ok_or_else(|| {
                        ApiError::bad(
                            "stop_token_ids",
                            format!("stop_token_ids must be token ids below {vocab_size}"),
                        )
                    })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ApiError::bad(
                "stop_token_ids",
                "stop_token_ids must be a list of token ids",
            ))
        }
    };
    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = match f.value("stream_options") {
        None => false,
        Some(o @ Value::Object(_)) => Fields::new(o)?
            .bool("include_usage")
            .map_err(|_| {
                ApiError::bad(
                    "stream_options",
                    "stream_options.include_usage must be a boolean",
                )
            })?
            .unwrap_or(false),
        Some(v) => {
            return Err(ApiError::bad(
                "stream_options",
                format!("stream_options must be an object, got {}", kind(v)),
            ))
        }
    };
    let cache_salt = f
        .str("cache_salt")?
        .map(|s| s.as_bytes().to_vec())
        .unwrap_or_default();
    Ok(GenOptions {
        model,
        max_tokens,
        params: SamplingParams {
            temperature: temperature as f32,
            top_k,
            top_p: top_p as f32,
            seed,
            max_tokens: max_tokens.unwrap_or(16),
            stop_token_ids,
            ignore_eos: f.bool("ignore_eos")?.unwrap_or(false),
            logprobs: None,
        },
        n,
        stop,
        stream,
        include_usage,
        skip_special_tokens: f.bool("skip_special_tokens")?.unwrap_or(true),
        cache_salt,
    })
}

/// Checks the prompt and the output length against the context length and
/// returns the output length to use (`default` when none was requested, or the
/// rest of the context when there is no default).
pub fn resolve_max_tokens(
    requested: Option<usize>,
    default: Option<usize>,
    prompt_len: usize,
    max_model_len: usize,
) -> Result<usize, ApiError> {
    if prompt_len == 0 {
        return Err(ApiError::bad("prompt", "the prompt is empty"));
    }
    if prompt_len >= max_model_len {
        return Err(ApiError::bad(
            "prompt",
            format!("this model's maximum context length is {max_model_len} tokens, but the prompt has {prompt_len} tokens and leaves no room to generate"),
        ));
    }
    let room = max_model_len - prompt_len;
    match requested {
        Some(m) if m > room => Err(ApiError::bad(
            "max_tokens",
            format!("this model's maximum context length is {max_model_len} tokens; you requested {} tokens ({prompt_len} in the prompt, {m} for the output); reduce the prompt or max_tokens", prompt_len.saturating_add(m)),
        )),
        Some(m) => Ok(m),
        None => Ok(default.map_or(room, |d| d.min(room))),
    }
}

/// Number of top logprobs: `Some(k)` within range, or a 400 naming `param`.
pub fn logprobs_count(v: Option<i64>, param: &str) -> Result<Option<usize>, ApiError> {
    match v {
        None => Ok(None),
        Some(k) if (0..=MAX_LOGPROBS as i64).contains(&k) => Ok(Some(k as usize)),
        Some(k) => Err(ApiError::bad(
            param,
            format!("{param} must be between 0 and {MAX_LOGPROBS}, got {k}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<GenOptions, ApiError> {
        parse_common(&Fields::new(&v)?, &["max_tokens"], 100)
    }

    fn param_of(e: ApiError) -> String {
        match e {
            ApiError::BadRequest { param, .. } => param.unwrap_or_default(),
            other => panic!("expected 400, got {other:?}"),
        }
    }

    #[test]
    fn defaults_and_unknown_fields() {
        let o = parse(json!({"prompt": "x", "whatever": [1, 2], "temperature": null})).unwrap();
        assert_eq!(o.n, 1);
        assert_eq!(o.params.temperature, 1.0);
        assert_eq!(o.max_tokens, None);
        assert!(o.skip_special_tokens);
        let o = parse(
            json!({"temperature": 0, "top_k": -1, "seed": -5, "stop": "\n", "n": 2,
            "stream": true, "stream_options": {"include_usage": true}, "ignore_eos": true}),
        )
        .unwrap();
        assert_eq!(o.params.temperature, 0.0);
        assert_eq!(o.params.top_k, 0);
        assert_eq!(o.params.seed, Some((-5i64) as u64));
        assert_eq!(o.stop, vec!["\n".to_string()]);
        assert!(o.stream && o.include_usage && o.params.ignore_eos);
    }

    #[test]
    fn every_range_is_checked() {
        let bad = [
            (json!({"max_tokens": -1}), "max_tokens"),
            (json!({"max_tokens": 0}), "max_tokens"),
            (json!({"max_tokens": "16"}), "max_tokens"),
            (json!({"max_tokens": 1.5}), "max_tokens"),
            (json!({"temperature": -0.1}), "temperature"),
            (json!({"temperature": 2.5}), "temperature"),
            (json!({"temperature": "hot"}), "temperature"),
            (json!({"top_p": 0}), "top_p"),
            (json!({"top_p": 1.01}), "top_p"),
            (json!({"top_k": -2}), "top_k"),
            (json!({"n": 0}), "n"),
            (json!({"n": 1000}), "n"),
            (json!({"seed": "x"}), "seed"),
            (json!({"stop": 5}), "stop"),
            (json!({"stop": ["a", 1]}), "stop"),
            (json!({"stop_token_ids": [100]}), "stop_token_ids"),
            (json!({"stream": "yes"}), "stream"),
            (
                json!({"stream_options": {"include_usage": 1}}),
                "stream_options",
            ),
            (json!({"presence_penalty": 3}), "presence_penalty"),
            (json!({"frequency_penalty": 0.5}), "frequency_penalty"),
            (json!({"logit_bias": {"1": 5}}), "logit_bias"),
            (json!({"ignore_eos": 1}), "ignore_eos"),
            (json!({"model": 7}), "model"),
        ];
        for (v, p) in bad {
            let e = parse(v.clone()).expect_err(&v.to_string());
            assert_eq!(param_of(e), p, "{v}");
        }
        assert!(parse(json!([1, 2])).is_err());
    }

    #[test]
    fn huge_max_tokens_saturates_then_fails_against_the_context() {
        let o = parse(json!({"max_tokens": 18446744073709551615u64})).unwrap();
        let e = resolve_max_tokens(o.max_tokens, Some(16), 10, 2048).unwrap_err();
        assert_eq!(param_of(e), "max_tokens");
    }

    #[test]
    fn context_length_checks() {
        assert_eq!(resolve_max_tokens(None, Some(16), 10, 100), Ok(16));
        assert_eq!(resolve_max_tokens(None, None, 10, 100), Ok(90));
        assert_eq!(resolve_max_tokens(None, Some(16), 95, 100), Ok(5));
        assert_eq!(resolve_max_tokens(Some(90), None, 10, 100), Ok(90));
        assert_eq!(
            param_of(resolve_max_tokens(Some(91), None, 10, 100).unwrap_err()),
            "max_tokens"
        );
        assert_eq!(
            param_of(resolve_max_tokens(None, None, 100, 100).unwrap_err()),
            "prompt"
        );
        assert_eq!(
            param_of(resolve_max_tokens(None, None, 0, 100).unwrap_err()),
            "prompt"
        );
    }
}
