//! Reading and validating request fields: every field is read by hand from the
//! JSON object so each mistake names its field (`param`) and its allowed range;
//! `fields.rs` then refuses the fields reprise does not implement.

use crate::errors::ApiError;
use crate::fields;
pub use crate::fields::Endpoint;
pub use crate::reader::{kind, Fields};
use crate::structured::{self, Structured};
use crate::tools::{self, Tools};
use reprise_protocol::SamplingParams;
use reprise_text::grammar::Constraint;
use serde_json::Value;

/// Bounds on request fields that depend on the server, and its defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ParseLimits {
    /// Token ids must be below this.
    pub vocab_size: usize,
    /// Most top logprobs per token (`--max-logprobs`).
    pub max_logprobs: usize,
    /// Largest `n` (the running batch must hold every choice).
    pub max_n: usize,
    /// The model's sampling defaults for fields a request leaves out.
    pub defaults: GenerationDefaults,
}

/// Sampling defaults from the model's `generation_config.json` (vLLM's
/// `--generation-config auto`): used where a request leaves the field out.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GenerationDefaults {
    /// `temperature`.
    pub temperature: Option<f64>,
    /// `top_p`.
    pub top_p: Option<f64>,
    /// `top_k`.
    pub top_k: Option<i64>,
    /// `min_p`.
    pub min_p: Option<f64>,
    /// `repetition_penalty`.
    pub repetition_penalty: Option<f64>,
    /// `max_new_tokens`, the default `max_tokens`.
    pub max_tokens: Option<usize>,
}

impl GenerationDefaults {
    /// No defaults: vLLM's own (`--generation-config vllm`).
    pub const NONE: Self = Self {
        temperature: None,
        top_p: None,
        top_k: None,
        min_p: None,
        repetition_penalty: None,
        max_tokens: None,
    };

    /// The fields vLLM reads from a `generation_config.json` value.
    pub fn from_json(v: &Value) -> Self {
        let num = |k: &str| v.get(k).and_then(Value::as_f64).filter(|x| x.is_finite());
        Self {
            temperature: num("temperature"),
            top_p: num("top_p"),
            top_k: v.get("top_k").and_then(Value::as_i64),
            min_p: num("min_p"),
            repetition_penalty: num("repetition_penalty"),
            max_tokens: v
                .get("max_new_tokens")
                .and_then(Value::as_u64)
                .and_then(|m| usize::try_from(m).ok())
                .filter(|&m| m > 0),
        }
    }

    /// The fields set, as `name=value` pairs for the startup log.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        let mut add = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                parts.push(format!("{k}={v}"));
            }
        };
        add("temperature", self.temperature.map(|x| x.to_string()));
        add("top_p", self.top_p.map(|x| x.to_string()));
        add("top_k", self.top_k.map(|x| x.to_string()));
        add("min_p", self.min_p.map(|x| x.to_string()));
        add(
            "repetition_penalty",
            self.repetition_penalty.map(|x| x.to_string()),
        );
        add("max_tokens", self.max_tokens.map(|x| x.to_string()));
        parts.join(", ")
    }
}

/// Which part of a prompt `truncate_prompt_tokens` keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Truncation {
    /// The last tokens (vLLM's default).
    Last(usize),
    /// The first tokens (`truncation_side: "right"`).
    First(usize),
    /// As many as the context allows, from the end (`truncate_prompt_tokens: -1`).
    LastFitting,
}

/// The generation options shared by completions and chat, validated.
#[derive(Clone, Debug)]
pub struct GenOptions {
    /// Requested model name.
    pub model: Option<String>,
    /// Requested output length (resolved against the prompt later).
    pub max_tokens: Option<usize>,
    /// Sampling and stopping parameters (`max_tokens` filled in by [`resolve_max_tokens`]).
    pub params: SamplingParams,
    /// Number of choices.
    pub n: usize,
    /// Stream as SSE.
    pub stream: bool,
    /// Send a final usage chunk when streaming.
    pub include_usage: bool,
    /// vLLM's `cache_salt`: isolates this request's prefix-cache entries.
    pub cache_salt: Vec<u8>,
    /// `add_special_tokens` when given (defaults differ per endpoint).
    pub add_special_tokens: Option<bool>,
    /// `truncate_prompt_tokens`, when given.
    pub truncation: Option<Truncation>,
    /// vLLM's `request_id` body field (the `x-request-id` header wins over it).
    pub request_id: Option<String>,
    /// `bad_words` as given (tokenized with the prompt, on the CPU pool).
    pub bad_words: Vec<String>,
    /// The grammar the output must follow (a structured-output field's, or a
    /// required or named tool choice's), when there is one.
    pub grammar: Option<Structured>,
    /// A chat request's tools.
    pub tools: Option<Tools>,
    /// The compiled grammar (from `structured` or a tool choice), set after parsing.
    pub constraint: Option<Constraint>,
}

/// Most stop strings per request.
pub const MAX_STOP: usize = 32;
/// Most bytes of all stop strings together.
pub const MAX_STOP_BYTES: usize = 4096;
/// Most stop token ids per request.
pub const MAX_STOP_TOKEN_IDS: usize = 256;
/// Most `logit_bias` entries per request.
pub const MAX_LOGIT_BIAS: usize = 1024;
/// Largest `n` whatever the batch size.
pub const MAX_N: usize = 128;

/// Reads the fields common to both APIs and refuses what `endpoint` does not accept.
pub fn parse_common(
    f: &Fields,
    endpoint: Endpoint,
    limits: &ParseLimits,
) -> Result<GenOptions, ApiError> {
    let model = f.str("model")?.map(str::to_string);
    let max_tokens_keys: &[&str] = match endpoint {
        Endpoint::Completions => &["max_tokens"],
        Endpoint::Chat => &["max_completion_tokens", "max_tokens"],
    };
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
    let d = &limits.defaults;
    let temperature = f.f64("temperature")?.or(d.temperature).unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad(
            "temperature",
            format!("temperature must be between 0 and 2, got {temperature}"),
        ));
    }
    let top_p = f.f64("top_p")?.or(d.top_p).unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad(
            "top_p",
            format!("top_p must be in (0, 1], got {top_p}"),
        ));
    }
    let top_k = match f.int("top_k")?.or(d.top_k) {
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
    let min_tokens = match f.int("min_tokens")? {
        None => 0,
        Some(m) if m < 0 => {
            return Err(ApiError::bad(
                "min_tokens",
                format!("min_tokens must be at least 0, got {m}"),
            ))
        }
        Some(m) => usize::try_from(m).unwrap_or(usize::MAX),
    };
    if max_tokens.is_some_and(|m| min_tokens > m) {
        return Err(ApiError::bad(
            "min_tokens",
            format!("min_tokens ({min_tokens}) must not exceed max_tokens"),
        ));
    }
    let max_n = limits.max_n.clamp(1, MAX_N);
    let n = match f.int("n")? {
        None => 1,
        Some(n) if (1..=max_n as i64).contains(&n) => n as usize,
        Some(n) => {
            return Err(ApiError::bad(
                "n",
                format!("n must be between 1 and {max_n} (at most 128, and no more than --max-num-seqs), got {n}"),
            ))
        }
    };
    if endpoint == Endpoint::Completions {
        if let Some(b) = f.int("best_of")? {
            if b != n as i64 {
                return Err(ApiError::bad(
                    "best_of",
                    "best_of is not supported by reprise (only equal to n)",
                ));
            }
        }
    }
    let mut penalty = [0.0f32; 2];
    for (k, slot) in ["presence_penalty", "frequency_penalty"]
        .into_iter()
        .zip(penalty.iter_mut())
    {
        if let Some(p) = f.f64(k)? {
            if !(-2.0..=2.0).contains(&p) {
                return Err(ApiError::bad(
                    k,
                    format!("{k} must be between -2 and 2, got {p}"),
                ));
            }
            *slot = p as f32;
        }
    }
    let [presence_penalty, frequency_penalty] = penalty;
    let repetition_penalty = f
        .f64("repetition_penalty")?
        .or(d.repetition_penalty)
        .unwrap_or(1.0);
    if !(repetition_penalty > 0.0 && repetition_penalty <= 2.0) {
        return Err(ApiError::bad(
            "repetition_penalty",
            format!("repetition_penalty must be in (0, 2], got {repetition_penalty}"),
        ));
    }
    let min_p = f.f64("min_p")?.or(d.min_p).unwrap_or(0.0);
    if !(0.0..=1.0).contains(&min_p) {
        return Err(ApiError::bad(
            "min_p",
            format!("min_p must be between 0 and 1, got {min_p}"),
        ));
    }
    let logit_bias = parse_logit_bias(f.value("logit_bias"), limits.vocab_size)?;
    let bad_words = parse_bad_words(f.value("bad_words"))?;
    let allowed_token_ids = match f.value("allowed_token_ids") {
        None => None,
        Some(Value::Array(a)) if !a.is_empty() => {
            Some(token_ids(a, "allowed_token_ids", limits.vocab_size)?)
        }
        Some(_) => {
            return Err(ApiError::bad(
                "allowed_token_ids",
                "allowed_token_ids must be a non-empty list of token ids",
            ))
        }
    };
    let structured = structured::parse(f)?;
    let tools = match endpoint {
        Endpoint::Chat => tools::parse(f)?,
        Endpoint::Completions => None,
    };
    let tool_grammar = tools.as_ref().and_then(Tools::grammar);
    let grammar = match (structured, tool_grammar) {
        (Some(s), Some(_)) => {
            return Err(ApiError::bad(
                s.param,
                "a required or named tool_choice already constrains the output; drop the structured output field",
            ))
        }
        (Some(s), None) => Some(s),
        (None, Some(spec)) => Some(Structured {
            spec,
            param: "tools",
        }),
        (None, None) => None,
    };
    let ignore_eos = f.bool("ignore_eos")?.unwrap_or(false);
    if ignore_eos && grammar.is_some() {
        return Err(ApiError::bad(
            "ignore_eos",
            "ignore_eos cannot be combined with structured outputs: a finished grammar ends with EOS",
        ));
    }
    let stop = parse_stop(f.value("stop"))?;
    let stop_token_ids = match f.value("stop_token_ids") {
        None => Vec::new(),
        Some(Value::Array(a)) if a.len() > MAX_STOP_TOKEN_IDS => {
            return Err(ApiError::bad(
                "stop_token_ids",
                format!(
                    "at most {MAX_STOP_TOKEN_IDS} stop token ids, got {}",
                    a.len()
                ),
            ))
        }
        Some(Value::Array(a)) => token_ids(a, "stop_token_ids", limits.vocab_size)?,
        Some(_) => {
            return Err(ApiError::bad(
                "stop_token_ids",
                "stop_token_ids must be a list of token ids",
            ))
        }
    };
    let logprobs = parse_logprobs(f, endpoint, limits.max_logprobs)?;
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
    let cache_salt = match f.str("cache_salt")? {
        None => Vec::new(),
        Some(s) if s.is_empty() || s.len() > 1024 => {
            return Err(ApiError::bad(
                "cache_salt",
                "cache_salt must be 1 to 1024 characters",
            ))
        }
        Some(s) => s.as_bytes().to_vec(),
    };
    let truncation = parse_truncation(f)?;
    let request_id = f.str("request_id")?.map(str::to_string);
    for k in [
        "user",
        "session_id",
        "prompt_cache_key",
        "safety_identifier",
    ] {
        f.str(k)?;
    }
    let opts = GenOptions {
        model,
        max_tokens,
        params: SamplingParams {
            temperature: temperature as f32,
            top_k,
            top_p: top_p as f32,
            seed,
            max_tokens: max_tokens.unwrap_or(16),
            stop_token_ids,
            stop,
            ignore_eos,
            logprobs,
            skip_special_tokens: f.bool("skip_special_tokens")?.unwrap_or(true),
            spaces_between_special_tokens: f.bool("spaces_between_special_tokens")?.unwrap_or(true),
            include_stop_str_in_output: f.bool("include_stop_str_in_output")?.unwrap_or(false),
            min_tokens,
            presence_penalty,
            frequency_penalty,
            repetition_penalty: repetition_penalty as f32,
            min_p: min_p as f32,
            logit_bias,
            // Tokenized with the prompt.
            bad_words: Vec::new(),
            allowed_token_ids,
        },
        n,
        stream,
        include_usage,
        cache_salt,
        add_special_tokens: f.bool("add_special_tokens")?,
        truncation,
        request_id,
        bad_words,
        grammar,
        tools,
        constraint: None,
    };
    if let Some(b) = f.value("add_generation_prompt") {
        if !b.is_boolean() {
            return Err(ApiError::bad(
                "add_generation_prompt",
                format!("add_generation_prompt must be a boolean, got {}", kind(b)),
            ));
        }
    }
    fields::check(f.object(), endpoint)?;
    Ok(opts)
}

fn parse_stop(v: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let stop: Vec<String> = match v {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => {
            if a.len() > MAX_STOP {
                return Err(ApiError::bad(
                    "stop",
                    format!("at most {MAX_STOP} stop strings, got {}", a.len()),
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
    let bytes: usize = stop.iter().map(String::len).sum();
    if bytes > MAX_STOP_BYTES {
        return Err(ApiError::bad(
            "stop",
            format!("the stop strings take {bytes} bytes; at most {MAX_STOP_BYTES} in all"),
        ));
    }
    Ok(stop)
}

/// A list of token ids below `vocab_size`, or a 400 naming `param`.
fn token_ids(a: &[Value], param: &str, vocab_size: usize) -> Result<Vec<u32>, ApiError> {
    a.iter()
        .map(|v| {
            v.as_u64()
                .filter(|&id| (id as usize) < vocab_size)
                .map(|id| id as u32)
                .ok_or_else(|| {
                    ApiError::bad(
                        param,
                        format!("{param} must be token ids below {vocab_size}"),
                    )
                })
        })
        .collect()
}

/// Most `bad_words` per request.
pub const MAX_BAD_WORDS: usize = 128;

fn parse_bad_words(v: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let bad = || ApiError::bad("bad_words", "bad_words must be a list of strings");
    match v {
        None => Ok(Vec::new()),
        Some(Value::Array(a)) if a.len() > MAX_BAD_WORDS => Err(ApiError::bad(
            "bad_words",
            format!("at most {MAX_BAD_WORDS} bad words, got {}", a.len()),
        )),
        Some(Value::Array(a)) => a
            .iter()
            .map(|w| w.as_str().map(str::to_string).ok_or_else(bad))
            .collect(),
        Some(_) => Err(bad()),
    }
}

/// `bad_words` as token sequences, as vLLM builds them: each word as given and
/// with a leading space (when that spells it differently with as many tokens).
pub fn bad_word_tokens(
    tokenizer: &reprise_text::tokenizer::Tokenizer,
    words: &[String],
) -> Result<Vec<Vec<u32>>, ApiError> {
    let mut out: Vec<Vec<u32>> = Vec::new();
    for w in words {
        let w = w.trim_start();
        let plain = tokenizer
            .encode(w, false)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let spaced = tokenizer
            .encode(&format!(" {w}"), false)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let differs = spaced.len() == plain.len() && spaced.first() != plain.first();
        if !plain.is_empty() {
            out.push(plain);
        }
        if differs && !spaced.is_empty() {
            out.push(spaced);
        }
    }
    Ok(out)
}

fn parse_logit_bias(v: Option<&Value>, vocab_size: usize) -> Result<Vec<(u32, f32)>, ApiError> {
    let bad = |m: String| ApiError::bad("logit_bias", m);
    match v {
        None => Ok(Vec::new()),
        Some(Value::Object(m)) if m.len() > MAX_LOGIT_BIAS => Err(bad(format!(
            "logit_bias has {} entries; at most {MAX_LOGIT_BIAS}",
            m.len()
        ))),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                let id = k
                    .trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|&id| (id as usize) < vocab_size)
                    .ok_or_else(|| {
                        bad(format!(
                            "logit_bias keys must be token ids below {vocab_size}, got {k:?}"
                        ))
                    })?;
                let b = v
                    .as_f64()
                    .filter(|b| b.is_finite())
                    .ok_or_else(|| bad(format!("logit_bias[{k:?}] must be a number")))?;
                Ok((id, b.clamp(-100.0, 100.0) as f32))
            })
            .collect(),
        Some(v) => Err(bad(format!(
            "logit_bias must be an object, got {}",
            kind(v)
        ))),
    }
}

fn parse_logprobs(
    f: &Fields,
    endpoint: Endpoint,
    max_logprobs: usize,
) -> Result<Option<usize>, ApiError> {
    let count = |v: Option<i64>, param: &str| -> Result<Option<usize>, ApiError> {
        match v {
            None => Ok(None),
            Some(k) if (0..=max_logprobs as i64).contains(&k) => Ok(Some(k as usize)),
            Some(k) => Err(ApiError::bad(
                param,
                format!("{param} must be between 0 and {max_logprobs} (--max-logprobs), got {k}"),
            )),
        }
    };
    match endpoint {
        Endpoint::Completions => count(f.int("logprobs")?, "logprobs"),
        Endpoint::Chat => {
            let want = f.bool("logprobs")?.unwrap_or(false);
            let top = count(f.int("top_logprobs")?, "top_logprobs")?;
            if top.is_some_and(|k| k > 0) && !want {
                return Err(ApiError::bad(
                    "top_logprobs",
                    "top_logprobs requires logprobs to be true",
                ));
            }
            Ok(want.then(|| top.unwrap_or(0)))
        }
    }
}

fn parse_truncation(f: &Fields) -> Result<Option<Truncation>, ApiError> {
    let side = match f.str("truncation_side")? {
        None | Some("left") => true,
        Some("right") => false,
        Some(s) => {
            return Err(ApiError::bad(
                "truncation_side",
                format!("truncation_side must be \"left\" or \"right\", got {s:?}"),
            ))
        }
    };
    Ok(match f.int("truncate_prompt_tokens")? {
        None => None,
        Some(-1) => Some(Truncation::LastFitting),
        Some(k) if k >= 1 => {
            let k = usize::try_from(k).unwrap_or(usize::MAX);
            Some(if side {
                Truncation::Last(k)
            } else {
                Truncation::First(k)
            })
        }
        Some(k) => {
            return Err(ApiError::bad(
                "truncate_prompt_tokens",
                format!("truncate_prompt_tokens must be -1 or at least 1, got {k}"),
            ))
        }
    })
}

impl Truncation {
    /// Cuts `ids` to fit (a context of `max_model_len` for `-1`).
    pub fn apply(self, ids: &mut Vec<u32>, max_model_len: usize) {
        let keep_last = |ids: &mut Vec<u32>, k: usize| {
            if ids.len() > k {
                ids.drain(..ids.len() - k);
            }
        };
        match self {
            Truncation::Last(k) => keep_last(ids, k),
            Truncation::First(k) => ids.truncate(k),
            // Leave room for at least one generated token.
            Truncation::LastFitting => keep_last(ids, max_model_len.saturating_sub(1)),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map};

    const LIMITS: ParseLimits = ParseLimits {
        vocab_size: 100,
        max_logprobs: 20,
        max_n: 64,
        defaults: GenerationDefaults::NONE,
    };

    fn parse(v: Value) -> Result<GenOptions, ApiError> {
        parse_common(&Fields::new(&v)?, Endpoint::Completions, &LIMITS)
    }

    fn param_of(e: ApiError) -> String {
        match e {
            ApiError::BadRequest { param, .. } => param.unwrap_or_default(),
            other => panic!("expected 400, got {other:?}"),
        }
    }

    #[test]
    fn defaults_and_values() {
        let o = parse(json!({"prompt": "x", "temperature": null})).unwrap();
        assert_eq!(o.n, 1);
        assert_eq!(o.params.temperature, 1.0);
        assert_eq!(o.max_tokens, None);
        assert!(o.params.skip_special_tokens && o.params.spaces_between_special_tokens);
        assert!(!o.params.include_stop_str_in_output);
        let o = parse(
            json!({"temperature": 0, "top_k": -1, "seed": -5, "stop": "\n", "n": 2,
            "stream": true, "stream_options": {"include_usage": true}, "ignore_eos": true,
            "include_stop_str_in_output": true, "logprobs": 3, "truncate_prompt_tokens": 7,
            "request_id": "abc", "user": "me"}),
        )
        .unwrap();
        assert_eq!(o.params.temperature, 0.0);
        assert_eq!(o.params.top_k, 0);
        assert_eq!(o.params.seed, Some((-5i64) as u64));
        assert_eq!(o.params.stop, vec!["\n".to_string()]);
        assert_eq!(o.params.logprobs, Some(3));
        assert_eq!(o.truncation, Some(Truncation::Last(7)));
        assert_eq!(o.request_id.as_deref(), Some("abc"));
        assert!(o.stream && o.include_usage && o.params.ignore_eos);
        assert!(o.params.include_stop_str_in_output);
        let chat = |v: Value| parse_common(&Fields::new(&v).unwrap(), Endpoint::Chat, &LIMITS);
        let o = chat(json!({"messages": [], "logprobs": true, "top_logprobs": 5, "max_completion_tokens": 9})).unwrap();
        assert_eq!((o.params.logprobs, o.max_tokens), (Some(5), Some(9)));
        assert_eq!(
            chat(json!({"messages": [], "logprobs": true}))
                .unwrap()
                .params
                .logprobs,
            Some(0)
        );
        assert_eq!(
            param_of(chat(json!({"top_logprobs": 2})).unwrap_err()),
            "top_logprobs"
        );
        assert_eq!(
            param_of(chat(json!({"logprobs": true, "top_logprobs": 21})).unwrap_err()),
            "top_logprobs"
        );
    }

    #[test]
    fn every_range_and_limit_is_checked() {
        let many = |n: usize, f: &dyn Fn(usize) -> Value| Value::Array((0..n).map(f).collect());
        let bias: Map<String, Value> = (0..1025).map(|i| (i.to_string(), json!(1))).collect();
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
            (json!({"n": 65}), "n"),
            (json!({"seed": "x"}), "seed"),
            (json!({"stop": 5}), "stop"),
            (json!({"stop": ["a", 1]}), "stop"),
            (json!({"stop": many(33, &|i| json!(i.to_string()))}), "stop"),
            (json!({"stop": ["x".repeat(4097)]}), "stop"),
            (json!({"stop_token_ids": [100]}), "stop_token_ids"),
            (
                json!({"stop_token_ids": many(257, &|_| json!(1))}),
                "stop_token_ids",
            ),
            (json!({"stream": "yes"}), "stream"),
            (
                json!({"stream_options": {"include_usage": 1}}),
                "stream_options",
            ),
            (json!({"presence_penalty": 3}), "presence_penalty"),
            (json!({"frequency_penalty": -2.5}), "frequency_penalty"),
            (json!({"repetition_penalty": 0}), "repetition_penalty"),
            (json!({"min_p": 1.5}), "min_p"),
            (json!({"allowed_token_ids": [100]}), "allowed_token_ids"),
            (json!({"allowed_token_ids": []}), "allowed_token_ids"),
            (json!({"bad_words": "x"}), "bad_words"),
            (
                json!({"ignore_eos": true, "guided_regex": "a"}),
                "ignore_eos",
            ),
            (json!({"logit_bias": {"x": 5}}), "logit_bias"),
            (json!({"logit_bias": {"100": 5}}), "logit_bias"),
            (json!({"logit_bias": bias}), "logit_bias"),
            (json!({"logprobs": 21}), "logprobs"),
            (json!({"logprobs": -1}), "logprobs"),
            (json!({"ignore_eos": 1}), "ignore_eos"),
            (
                json!({"include_stop_str_in_output": "yes"}),
                "include_stop_str_in_output",
            ),
            (json!({"model": 7}), "model"),
            (json!({"cache_salt": ""}), "cache_salt"),
            (
                json!({"truncate_prompt_tokens": 0}),
                "truncate_prompt_tokens",
            ),
            (json!({"truncation_side": "middle"}), "truncation_side"),
            (json!({"best_of": 3}), "best_of"),
            (json!({"whatever": [1, 2]}), "whatever"),
            (json!({"use_beam_search": true}), "use_beam_search"),
            (json!({"min_tokens": -1}), "min_tokens"),
            (json!({"min_tokens": 5, "max_tokens": 4}), "min_tokens"),
        ];
        for (v, p) in bad {
            let e = parse(v.clone()).expect_err(&v.to_string());
            assert_eq!(param_of(e), p, "{v}");
        }
        assert!(parse(json!([1, 2])).is_err());
    }

    #[test]
    fn sampling_fields_and_model_defaults() {
        let o = parse(json!({"presence_penalty": 0.5, "frequency_penalty": -1, "repetition_penalty": 1.3,
            "min_p": 0.1, "logit_bias": {"7": 500}, "allowed_token_ids": [1, 2], "bad_words": ["x y"]}))
        .unwrap();
        let p = &o.params;
        assert_eq!((p.presence_penalty, p.frequency_penalty), (0.5, -1.0));
        assert_eq!((p.repetition_penalty, p.min_p), (1.3, 0.1));
        assert_eq!(p.logit_bias, vec![(7, 100.0)], "clamped to 100");
        assert_eq!(p.allowed_token_ids, Some(vec![1, 2]));
        assert_eq!(o.bad_words, vec!["x y".to_string()]);
        let defaults = GenerationDefaults::from_json(&json!({"temperature": 0.6, "top_p": 0.9,
            "top_k": 20, "repetition_penalty": 1.1, "max_new_tokens": 64, "eos_token_id": 2}));
        let limits = ParseLimits { defaults, ..LIMITS };
        let with = |v: Value| {
            parse_common(&Fields::new(&v).unwrap(), Endpoint::Completions, &limits).unwrap()
        };
        let o = with(json!({"prompt": "x"}));
        assert_eq!(
            (o.params.temperature, o.params.top_p, o.params.top_k),
            (0.6, 0.9, 20)
        );
        assert_eq!(o.params.repetition_penalty, 1.1);
        let o = with(json!({"temperature": 0, "top_k": -1}));
        assert_eq!(
            (o.params.temperature, o.params.top_k),
            (0.0, 0),
            "the request wins"
        );
        assert_eq!(defaults.max_tokens, Some(64));
    }

    #[test]
    fn truncation_keeps_the_asked_end() {
        let mut ids: Vec<u32> = (0..10).collect();
        Truncation::Last(3).apply(&mut ids, 100);
        assert_eq!(ids, [7, 8, 9]);
        let mut ids: Vec<u32> = (0..10).collect();
        Truncation::First(3).apply(&mut ids, 100);
        assert_eq!(ids, [0, 1, 2]);
        let mut ids: Vec<u32> = (0..10).collect();
        Truncation::LastFitting.apply(&mut ids, 5);
        assert_eq!(ids, [6, 7, 8, 9]);
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
