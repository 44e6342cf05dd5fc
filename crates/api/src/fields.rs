//! Every request field vLLM (and OpenAI) accepts on the generation endpoints, and
//! what reprise does with it: read it, or accept it only at the value that means
//! "off" and refuse anything else with a 400 that names it. A field nobody defines
//! is refused too, as OpenAI does, so no request is answered 200 while part of it
//! was ignored.

use crate::errors::ApiError;
use serde_json::{Map, Value};

/// The endpoint a body was sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/completions` (and its render endpoint).
    Completions,
    /// `/v1/chat/completions` (and its render endpoint).
    Chat,
}

/// What reprise does with a field.
#[derive(Clone, Copy)]
enum Rule {
    /// Read and honoured (or, for `user`, `metadata` and the like, kept as metadata).
    Used,
    /// Accepted only when `ok` holds (null always is); `allowed` says what is.
    Only(fn(&Value) -> bool, &'static str),
}

use Rule::{Only, Used};

fn never(_: &Value) -> bool {
    false
}
fn is_false(v: &Value) -> bool {
    v == &Value::Bool(false)
}
fn is_true(v: &Value) -> bool {
    v == &Value::Bool(true)
}
fn is_zero(v: &Value) -> bool {
    v.as_f64() == Some(0.0)
}
fn is_one(v: &Value) -> bool {
    v.as_f64() == Some(1.0)
}
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}
fn is_no_tool(v: &Value) -> bool {
    matches!(v.as_str(), Some("none" | "auto"))
}
fn is_no_budget(v: &Value) -> bool {
    v.as_i64() == Some(-1)
}
fn is_text_modality(v: &Value) -> bool {
    v.as_array()
        .is_some_and(|a| a.iter().all(|m| m.as_str() == Some("text")))
}
fn is_default_tier(v: &Value) -> bool {
    matches!(v.as_str(), Some("auto" | "default"))
}

/// Fields both endpoints share.
const COMMON: &[(&str, Rule)] = &[
    ("model", Used),
    ("max_tokens", Used),
    ("n", Used),
    ("temperature", Used),
    ("top_p", Used),
    ("top_k", Used),
    ("seed", Used),
    ("stop", Used),
    ("stop_token_ids", Used),
    ("stream", Used),
    ("stream_options", Used),
    ("ignore_eos", Used),
    ("skip_special_tokens", Used),
    ("spaces_between_special_tokens", Used),
    ("include_stop_str_in_output", Used),
    ("cache_salt", Used),
    ("logprobs", Used),
    ("add_special_tokens", Used),
    ("truncate_prompt_tokens", Used),
    ("truncation_side", Used),
    ("request_id", Used),
    ("user", Used),
    ("session_id", Used),
    (
        "priority",
        Only(is_zero, "0: there is no priority scheduling"),
    ),
    ("frequency_penalty", Used),
    ("presence_penalty", Used),
    ("repetition_penalty", Used),
    ("logit_bias", Used),
    ("min_p", Used),
    ("min_tokens", Used),
    ("bad_words", Used),
    ("allowed_token_ids", Used),
    ("use_beam_search", Only(is_false, "false")),
    ("length_penalty", Only(is_one, "1")),
    ("watermarking", Only(is_false, "false")),
    ("prompt_logprobs", Only(never, "null")),
    ("logprob_token_ids", Only(never, "null")),
    ("response_format", Used),
    ("structured_outputs", Used),
    ("guided_json", Used),
    ("guided_regex", Used),
    ("guided_choice", Used),
    ("guided_grammar", Used),
    ("guided_decoding_backend", Only(never, "null")),
    ("guided_whitespace_pattern", Only(never, "null")),
    ("return_tokens_as_token_ids", Only(is_false, "false")),
    ("return_token_ids", Only(is_false, "false")),
    ("return_token_offsets", Only(is_false, "false")),
    // vLLM reads it on its render endpoints only and ignores it elsewhere, as here.
    ("return_mm_kwargs", Used),
    ("kv_transfer_params", Only(never, "null")),
    ("ec_transfer_params", Only(never, "null")),
    ("vllm_xargs", Only(is_empty, "an empty object")),
    ("repetition_detection", Only(never, "null")),
    ("thinking_token_budget", Only(is_no_budget, "-1")),
    (
        "stream_interval",
        Only(is_one, "1: every token is streamed as it comes"),
    ),
];

/// Fields of `/v1/completions` only.
const COMPLETIONS: &[(&str, Rule)] = &[
    ("prompt", Used),
    ("best_of", Used),
    ("echo", Only(is_false, "false")),
    ("suffix", Only(is_empty, "an empty string")),
    ("prompt_embeds", Only(never, "null")),
];

/// Fields of `/v1/chat/completions` only.
const CHAT: &[(&str, Rule)] = &[
    ("messages", Used),
    ("max_completion_tokens", Used),
    ("top_logprobs", Used),
    ("add_generation_prompt", Used),
    ("metadata", Used),
    ("prompt_cache_key", Used),
    ("safety_identifier", Used),
    ("parallel_tool_calls", Used),
    ("tools", Used),
    ("tool_choice", Used),
    ("functions", Only(is_empty, "an empty list")),
    ("function_call", Only(is_no_tool, "\"none\" or \"auto\"")),
    ("reasoning_effort", Only(never, "null")),
    ("include_reasoning", Only(is_true, "true")),
    ("echo", Only(is_false, "false")),
    ("continue_final_message", Only(is_false, "false")),
    ("documents", Only(never, "null")),
    (
        "chat_template",
        Only(never, "null: the model's own template is used"),
    ),
    ("chat_template_kwargs", Only(is_empty, "an empty object")),
    ("media_io_kwargs", Only(is_empty, "an empty object")),
    ("mm_processor_kwargs", Only(is_empty, "an empty object")),
    ("store", Only(is_false, "false")),
    (
        "service_tier",
        Only(is_default_tier, "\"auto\" or \"default\""),
    ),
    ("modalities", Only(is_text_modality, "[\"text\"]")),
    ("audio", Only(never, "null")),
    ("prediction", Only(never, "null")),
    ("web_search_options", Only(never, "null")),
    ("verbosity", Only(never, "null")),
];

/// Every field `endpoint` accepts, with what it accepts when only its "off" value is
/// (`None`: read and honoured), for the OpenAPI document.
pub fn accepted(endpoint: Endpoint) -> Vec<(&'static str, Option<&'static str>)> {
    let own = match endpoint {
        Endpoint::Completions => COMPLETIONS,
        Endpoint::Chat => CHAT,
    };
    own.iter()
        .chain(COMMON)
        .map(|(n, r)| {
            (
                *n,
                match r {
                    Used => None,
                    Only(_, allowed) => Some(*allowed),
                },
            )
        })
        .collect()
}

fn rule(endpoint: Endpoint, name: &str) -> Option<Rule> {
    let own = match endpoint {
        Endpoint::Completions => COMPLETIONS,
        Endpoint::Chat => CHAT,
    };
    own.iter()
        .chain(COMMON)
        .find(|(n, _)| *n == name)
        .map(|(_, r)| *r)
}

/// 400 for the first field `endpoint` does not accept with the value given.
pub fn check(obj: &Map<String, Value>, endpoint: Endpoint) -> Result<(), ApiError> {
    for (name, v) in obj {
        match rule(endpoint, name) {
            None => {
                return Err(ApiError::bad(
                    name.as_str(),
                    format!("unrecognized request argument supplied: {name}"),
                ))
            }
            Some(Used) => {}
            Some(Only(ok, allowed)) => {
                if !v.is_null() && !ok(v) {
                    return Err(ApiError::bad(
                        name.as_str(),
                        format!("{name} is not supported by reprise (only {allowed})"),
                    ));
                }
            }
        }
    }
    if let Some(Value::Object(o)) = obj.get("stream_options") {
        for (k, v) in o {
            match k.as_str() {
                "include_usage" => {}
                "continuous_usage_stats" if v.is_null() || is_false(v) => {}
                "continuous_usage_stats" => {
                    return Err(ApiError::bad(
                        "stream_options",
                        "stream_options.continuous_usage_stats is not supported by reprise (only false)",
                    ))
                }
                other => {
                    return Err(ApiError::bad(
                        "stream_options",
                        format!("unrecognized stream option: {other}"),
                    ))
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn param(v: Value, e: Endpoint) -> Option<String> {
        match check(v.as_object().expect("object"), e) {
            Ok(()) => None,
            Err(ApiError::BadRequest { param, .. }) => param,
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn off_values_pass_and_anything_else_is_named() {
        let ok = json!({"model": "m", "prompt": "x", "echo": false, "use_beam_search": false,
            "min_tokens": 3, "logit_bias": {}, "response_format": {"type": "text"},
            "guided_json": null, "priority": 0, "user": "u", "stream_options": {"include_usage": true}});
        assert_eq!(param(ok, Endpoint::Completions), None);
        let chat = json!({"messages": [], "tools": [], "tool_choice": "none", "store": false,
            "modalities": ["text"], "max_completion_tokens": 3, "metadata": {"a": "b"}});
        assert_eq!(param(chat, Endpoint::Chat), None);
        for (v, e, p) in [
            (
                json!({"use_beam_search": true}),
                Endpoint::Completions,
                "use_beam_search",
            ),
            (
                json!({"prompt_logprobs": 1}),
                Endpoint::Chat,
                "prompt_logprobs",
            ),
            (
                json!({"guided_decoding_backend": "xgrammar"}),
                Endpoint::Completions,
                "guided_decoding_backend",
            ),
            (
                json!({"functions": [{"name": "f"}]}),
                Endpoint::Chat,
                "functions",
            ),
            (json!({"tools": []}), Endpoint::Completions, "tools"),
            (json!({"echo": true}), Endpoint::Chat, "echo"),
            (json!({"messages": []}), Endpoint::Completions, "messages"),
            (json!({"prompt": "x"}), Endpoint::Chat, "prompt"),
            (
                json!({"temprature": 0.5}),
                Endpoint::Completions,
                "temprature",
            ),
            (
                json!({"stream_options": {"continuous_usage_stats": true}}),
                Endpoint::Chat,
                "stream_options",
            ),
            (
                json!({"stream_options": {"bogus": 1}}),
                Endpoint::Chat,
                "stream_options",
            ),
        ] {
            assert_eq!(param(v.clone(), e).as_deref(), Some(p), "{v}");
        }
    }
}
