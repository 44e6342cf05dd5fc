//! A generation request's prompt as token ids: a completion's `prompt` (text or
//! token ids, one or several), or a chat's `messages` rendered with the model's own
//! template. Shared by the generating and render endpoints, `/tokenize`, and
//! `reprise route` (which tokenizes to score workers).

use crate::errors::ApiError;
use crate::model_info::ModelInfo;
use crate::params::{kind, Fields};
use crate::tools::Tools;
use serde_json::{Map, Value};

/// The prompt's token ids: a string, a list of token ids, or a one-element list of either.
pub fn prompt_tokens(
    model: &ModelInfo,
    v: Option<&Value>,
    add_special_tokens: bool,
) -> Result<Vec<u32>, ApiError> {
    let mut all = prompt_list(model, v, add_special_tokens)?;
    if all.len() != 1 {
        return Err(ApiError::bad(
            "prompt",
            format!(
                "a list of {} prompts is not supported; send one request per prompt",
                all.len()
            ),
        ));
    }
    Ok(all.remove(0))
}

/// Every prompt's token ids: a string, a list of token ids, or a list of either
/// (`add_special_tokens` applies to strings: the tokenizer's BOS and the like).
pub fn prompt_list(
    model: &ModelInfo,
    v: Option<&Value>,
    add_special_tokens: bool,
) -> Result<Vec<Vec<u32>>, ApiError> {
    let bad = |m: &str| ApiError::bad("prompt", m.to_string());
    match v {
        Some(Value::Array(a))
            if !a.is_empty() && a.iter().all(|x| x.is_string() || x.is_array()) =>
        {
            a.iter()
                .map(|p| one_prompt(model, Some(p), add_special_tokens))
                .collect()
        }
        Some(Value::Array(a)) if !a.iter().all(Value::is_number) => Err(bad(
            "prompt must be a string, a list of token ids, or a list of either",
        )),
        other => Ok(vec![one_prompt(model, other, add_special_tokens)?]),
    }
}

fn one_prompt(
    model: &ModelInfo,
    v: Option<&Value>,
    add_special_tokens: bool,
) -> Result<Vec<u32>, ApiError> {
    let bad = |m: &str| ApiError::bad("prompt", m.to_string());
    let ids = |a: &[Value]| -> Result<Vec<u32>, ApiError> {
        let ids: Vec<u32> = a
            .iter()
            .map(|x| {
                x.as_u64()
                    .and_then(|i| u32::try_from(i).ok())
                    .ok_or_else(|| bad("a token-id prompt must be a list of non-negative integers"))
            })
            .collect::<Result<_, _>>()?;
        model.check_token_ids(&ids, "prompt")?;
        Ok(ids)
    };
    match v {
        None => Err(bad("prompt is required")),
        Some(Value::String(s)) => model
            .tokenizer
            .encode(s, add_special_tokens)
            .map_err(|e| ApiError::Internal(e.to_string())),
        Some(Value::Array(a)) if a.is_empty() => Err(bad("the prompt is empty")),
        Some(Value::Array(a)) if a.iter().all(Value::is_number) => ids(a),
        Some(_) => Err(bad(
            "prompt must be a string, a list of token ids, or a list of either",
        )),
    }
}

/// The token ids of a chat request's `messages` and its `tools` (as
/// [`crate::tools::parse`] read them) through the model's template
/// (`add_generation_prompt` and `add_special_tokens` as the request says).
pub fn chat_prompt(
    model: &ModelInfo,
    f: &Fields,
    add_special_tokens: Option<bool>,
    tools: Option<&Tools>,
) -> Result<Vec<u32>, ApiError> {
    let messages = parse_messages(f.value("messages"))?;
    let add_generation_prompt = f.bool("add_generation_prompt")?.unwrap_or(true);
    render_and_tokenize(
        model,
        &messages,
        tools.and_then(Tools::for_template),
        add_generation_prompt,
        add_special_tokens.unwrap_or(false),
    )
}

/// Messages as the template sees them (as HF's `apply_chat_template` after vLLM's
/// parsing): role and text content (a string, null, or a list of `{"type":
/// "text"}` parts), an assistant's `tool_calls` with their arguments as objects,
/// a tool message's `tool_call_id` and `name`.
pub fn parse_messages(v: Option<&Value>) -> Result<Value, ApiError> {
    let bad = |m: String| ApiError::bad("messages", m);
    let arr = match v {
        None => return Err(bad("messages is required".into())),
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(bad("messages must not be empty".into()))
        }
        Some(Value::Array(a)) => a,
        Some(other) => return Err(bad(format!("messages must be a list, got {}", kind(other)))),
    };
    arr.iter()
        .enumerate()
        .map(|(i, m)| {
            let obj = m
                .as_object()
                .ok_or_else(|| bad(format!("messages[{i}] must be an object")))?;
            let role = obj
                .get("role")
                .and_then(Value::as_str)
                .filter(|r| !r.is_empty())
                .ok_or_else(|| bad(format!("messages[{i}].role must be a non-empty string")))?;
            let content = match obj.get("content") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => {
                    let mut text = String::new();
                    for p in parts {
                        match (
                            p.get("type").and_then(Value::as_str),
                            p.get("text").and_then(Value::as_str),
                        ) {
                            (Some("text"), Some(t)) => text.push_str(t),
                            _ => {
                                return Err(bad(format!(
                                    "messages[{i}].content: only text parts are supported"
                                )))
                            }
                        }
                    }
                    text
                }
                Some(other) => {
                    return Err(bad(format!(
                        "messages[{i}].content must be a string or a list of parts, got {}",
                        kind(other)
                    )))
                }
            };
            let mut out = Map::new();
            out.insert("role".into(), Value::from(role));
            out.insert("content".into(), Value::from(content));
            match obj.get("tool_calls") {
                None | Some(Value::Null) => {}
                Some(Value::Array(calls)) => {
                    let calls = calls
                        .iter()
                        .enumerate()
                        .map(|(j, c)| tool_call_for_template(c).ok_or_else(|| {
                            bad(format!("messages[{i}].tool_calls[{j}] must be {{\"type\": \"function\", \"function\": {{\"name\", \"arguments\"}}}}"))
                        }))
                        .collect::<Result<Vec<_>, _>>()?;
                    out.insert("tool_calls".into(), Value::Array(calls));
                }
                Some(other) => {
                    return Err(bad(format!(
                        "messages[{i}].tool_calls must be a list, got {}",
                        kind(other)
                    )))
                }
            }
            for k in ["tool_call_id", "name"] {
                match obj.get(k) {
                    None | Some(Value::Null) => {}
                    Some(Value::String(s)) => {
                        out.insert(k.into(), Value::from(s.as_str()));
                    }
                    Some(other) => {
                        return Err(bad(format!(
                            "messages[{i}].{k} must be a string, got {}",
                            kind(other)
                        )))
                    }
                }
            }
            Ok(Value::Object(out))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

/// An assistant's tool call as templates expect it: arguments as an object (vLLM
/// parses OpenAI's JSON text for them), the rest as given.
fn tool_call_for_template(c: &Value) -> Option<Value> {
    let func = c.get("function")?.as_object()?;
    let name = func.get("name")?.as_str()?;
    let arguments = match func.get("arguments") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(Value::String(s)) => {
            serde_json::from_str(s).unwrap_or_else(|_| Value::from(s.as_str()))
        }
        Some(v) => v.clone(),
    };
    let mut out = c.as_object()?.clone();
    out.insert("type".into(), Value::from("function"));
    out.insert(
        "function".into(),
        serde_json::json!({"name": name, "arguments": arguments}),
    );
    Some(Value::Object(out))
}

/// Renders the messages (and tools) with the model's template and tokenizes the
/// result (the template writes the special tokens itself; `add_special_tokens`
/// adds the tokenizer's own on top, as vLLM's option does).
pub fn render_and_tokenize(
    model: &ModelInfo,
    messages: &Value,
    tools: Option<&Value>,
    add_generation_prompt: bool,
    add_special_tokens: bool,
) -> Result<Vec<u32>, ApiError> {
    let template = model.chat_template.as_ref().ok_or_else(|| {
        ApiError::bad_request("this model has no chat template; use /v1/completions")
    })?;
    let text = template
        .render_json(messages, tools, add_generation_prompt)
        .map_err(|e| ApiError::bad("messages", e.to_string()))?;
    model
        .tokenizer
        .encode(&text, add_special_tokens)
        .map_err(|e| ApiError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn message_shapes() {
        let m = parse_messages(Some(&json!([
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": null}
        ])))
        .unwrap();
        assert_eq!(m[1]["content"], "ab");
        assert_eq!(m[2]["content"], "");
        let m = parse_messages(Some(&json!([
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                "function": {"name": "f", "arguments": "{\"x\": 1}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"}
        ])))
        .unwrap();
        assert_eq!(
            m[0]["tool_calls"][0]["function"]["arguments"],
            json!({"x": 1})
        );
        assert_eq!(m[1]["tool_call_id"], "c1");
        for bad in [
            json!(null),
            json!([]),
            json!("hi"),
            json!([{"content": "x"}]),
            json!([{"role": "user", "content": 5}]),
            json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
            json!([{"role": "assistant", "tool_calls": [{"type": "function"}]}]),
            json!([{"role": "tool", "tool_call_id": 5}]),
        ] {
            let v = if bad.is_null() { None } else { Some(&bad) };
            assert_eq!(
                parse_messages(v).unwrap_err().status().as_u16(),
                400,
                "{bad}"
            );
        }
    }
}
