//! The OpenAPI 3.1 document of the HTTP API, served at `/openapi.json`. The request
//! bodies of the generation endpoints are built from the tables their handlers check
//! bodies against (`fields.rs`), so a field cannot be accepted and undocumented; the
//! routes and their answers are listed here beside `app::router`, and the fuzz test
//! (`tests/fuzz_api.rs`) holds the running server to both.

use crate::fields::{accepted, Endpoint};
use serde_json::{json, Map, Value};

fn nullable(t: &str) -> Value {
    json!({"type": [t, "null"]})
}

fn with(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    base
}

/// The schema of a generation field, as vLLM and OpenAI define it (`None`: not a
/// generation field, which the test below catches).
fn field_schema(endpoint: Endpoint, name: &str) -> Option<Value> {
    let int = || nullable("integer");
    let num = || nullable("number");
    let boolean = || nullable("boolean");
    let string = || nullable("string");
    let object = || nullable("object");
    let ints = || json!({"type": ["array", "null"], "items": {"type": "integer", "minimum": 0}});
    let strings = || json!({"type": ["array", "null"], "items": {"type": "string"}});
    let any = || json!({});
    Some(match name {
        "model" => string(),
        "max_tokens" | "max_completion_tokens" => with(int(), json!({"minimum": 1})),
        "min_tokens" => with(int(), json!({"minimum": 0})),
        "n" | "best_of" => with(int(), json!({"minimum": 1})),
        "temperature" => with(num(), json!({"minimum": 0})),
        "top_p" | "min_p" => with(num(), json!({"minimum": 0, "maximum": 1})),
        "top_k" | "truncate_prompt_tokens" | "thinking_token_budget" => {
            with(int(), json!({"minimum": -1}))
        }
        "seed" | "priority" | "stream_interval" | "prompt_logprobs" => int(),
        "top_logprobs" => with(int(), json!({"minimum": 0, "maximum": 20})),
        "logprobs" if endpoint == Endpoint::Completions => {
            with(int(), json!({"minimum": 0, "maximum": 20}))
        }
        "logprobs" => boolean(),
        "frequency_penalty" | "presence_penalty" => {
            with(num(), json!({"minimum": -2, "maximum": 2}))
        }
        "repetition_penalty" => with(num(), json!({"exclusiveMinimum": 0, "maximum": 2})),
        "length_penalty" => num(),
        "stop" => {
            json!({"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}, {"type": "null"}]})
        }
        "stop_token_ids" | "allowed_token_ids" => ints(),
        "bad_words" | "guided_choice" | "modalities" => strings(),
        "stream"
        | "ignore_eos"
        | "skip_special_tokens"
        | "spaces_between_special_tokens"
        | "include_stop_str_in_output"
        | "add_special_tokens"
        | "use_beam_search"
        | "watermarking"
        | "return_tokens_as_token_ids"
        | "return_token_ids"
        | "return_token_offsets"
        | "return_mm_kwargs"
        | "echo"
        | "add_generation_prompt"
        | "parallel_tool_calls"
        | "include_reasoning"
        | "continue_final_message"
        | "store" => boolean(),
        "stream_options" => json!({"type": ["object", "null"], "properties": {
            "include_usage": {"type": ["boolean", "null"]},
            "continuous_usage_stats": {"type": ["boolean", "null"]}},
            "additionalProperties": false}),
        "cache_salt"
        | "request_id"
        | "user"
        | "session_id"
        | "guided_regex"
        | "guided_grammar"
        | "guided_decoding_backend"
        | "guided_whitespace_pattern"
        | "suffix"
        | "prompt_cache_key"
        | "safety_identifier"
        | "reasoning_effort"
        | "chat_template"
        | "service_tier"
        | "verbosity" => string(),
        "truncation_side" => json!({"enum": ["left", "right", null]}),
        "logit_bias" => {
            json!({"type": ["object", "null"], "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100}})
        }
        "metadata" => {
            json!({"type": ["object", "null"], "additionalProperties": {"type": "string"}})
        }
        "response_format" => {
            json!({"type": ["object", "null"], "required": ["type"], "properties": {
            "type": {"enum": ["text", "json_object", "json_schema"]},
            "json_schema": {"type": "object", "properties": {"name": {"type": "string"}, "schema": {"type": "object"}, "strict": {"type": ["boolean", "null"]}}}}})
        }
        "structured_outputs" => json!({"type": ["object", "null"], "properties": {
            "json": {"type": ["object", "string"]}, "regex": {"type": "string"}, "choice": {"type": "array", "items": {"type": "string"}},
            "grammar": {"type": "string"}, "json_object": {"type": "boolean"}}}),
        "guided_json" => json!({"type": ["object", "string", "null"]}),
        "vllm_xargs"
        | "chat_template_kwargs"
        | "media_io_kwargs"
        | "mm_processor_kwargs"
        | "kv_transfer_params"
        | "ec_transfer_params"
        | "repetition_detection"
        | "audio"
        | "prediction"
        | "web_search_options" => object(),
        "logprob_token_ids" | "prompt_embeds" | "documents" => any(),
        "functions" => json!({"type": ["array", "null"]}),
        "function_call" | "tool_choice" => json!({"oneOf": [
            {"enum": ["none", "auto", "required"]},
            {"type": "object", "required": ["type", "function"], "properties": {
                "type": {"const": "function"},
                "function": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}}},
            {"type": "null"}]}),
        "tools" => {
            json!({"type": ["array", "null"], "items": {"type": "object", "required": ["type", "function"], "properties": {
            "type": {"const": "function"},
            "function": {"type": "object", "required": ["name"], "properties": {
                "name": {"type": "string"}, "description": {"type": "string"},
                "parameters": {"type": "object"}, "strict": {"type": ["boolean", "null"]}}}}}})
        }
        "prompt" => json!({"oneOf": [
            {"type": "string"},
            {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1},
            {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
            {"type": "array", "items": {"type": "array", "items": {"type": "integer", "minimum": 0}}, "minItems": 1, "maxItems": 1}]}),
        "messages" => json!({"type": "array", "items": {"$ref": "#/components/schemas/Message"}}),
        _ => return None,
    })
}

/// The schema of a field accepted only at its "off" value, from the words `fields.rs`
/// answers with (`None` for words this does not know, which the test catches).
fn only_schema(allowed: &str) -> Option<Value> {
    let first = allowed.split(':').next().unwrap_or(allowed);
    Some(match first {
        "null" => json!({"type": "null"}),
        "false" => json!({"enum": [false, null]}),
        "true" => json!({"enum": [true, null]}),
        "0" => json!({"enum": [0, null]}),
        "1" => json!({"enum": [1, null]}),
        "-1" => json!({"enum": [-1, null]}),
        "an empty object" => json!({"type": ["object", "null"], "maxProperties": 0}),
        "an empty list" => json!({"type": ["array", "null"], "maxItems": 0}),
        "an empty string" => json!({"enum": ["", null]}),
        "\"none\" or \"auto\"" => json!({"enum": ["none", "auto", null]}),
        "\"auto\" or \"default\"" => json!({"enum": ["auto", "default", null]}),
        "[\"text\"]" => json!({"type": ["array", "null"], "items": {"const": "text"}}),
        _ => return None,
    })
}

fn generation_body(endpoint: Endpoint) -> Value {
    let mut props = Map::new();
    for (name, only) in accepted(endpoint) {
        let schema = match only {
            None => field_schema(endpoint, name).unwrap_or_else(|| json!({})),
            Some(allowed) => with(
                only_schema(allowed).unwrap_or_else(|| json!({})),
                json!({"description": format!("accepted only as {allowed}; anything else is a 400 naming it")}),
            ),
        };
        props.insert(name.to_string(), schema);
    }
    let required = match endpoint {
        Endpoint::Completions => json!(["prompt"]),
        Endpoint::Chat => json!(["messages"]),
    };
    json!({"type": "object", "properties": props, "required": required,
        "additionalProperties": false})
}

fn error_responses(codes: &[u16]) -> Map<String, Value> {
    codes
        .iter()
        .map(|c| {
            let what = match c {
                400 => "a malformed body or a field out of range, named in `error.param`",
                401 => "a missing or wrong API key (`--api-key`)",
                404 => "the model named is not the one served",
                413 => "the body is larger than `--max-body-bytes`",
                429 => "the admission queue is full (`--max-queued-requests`)",
                503 => "no worker is up",
                _ => "error",
            };
            (
                c.to_string(),
                json!({"description": what, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
            )
        })
        .collect()
}

fn op(summary: &str, body: Option<Value>, ok: Value, errors: &[u16], secured: bool) -> Value {
    let mut responses = error_responses(errors);
    responses.insert("200".into(), ok);
    let mut o = json!({"summary": summary, "responses": responses});
    if let Some(b) = body {
        o["requestBody"] =
            json!({"required": true, "content": {"application/json": {"schema": b}}});
    }
    if !secured {
        o["security"] = json!([]);
    }
    o
}

fn json_ok(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"type": "object"}}}})
}

fn stream_ok(description: &str) -> Value {
    json!({"description": description, "content": {
        "application/json": {"schema": {"type": "object"}},
        "text/event-stream": {"schema": {"type": "string"}}}})
}

/// Every route with its methods, as `app::router` serves them.
pub const ROUTES: &[(&str, &[&str])] = &[
    ("/v1/completions", &["post"]),
    ("/v1/chat/completions", &["post"]),
    ("/v1/completions/render", &["post"]),
    ("/v1/chat/completions/render", &["post"]),
    ("/v1/models", &["get"]),
    ("/tokenize", &["post"]),
    ("/detokenize", &["post"]),
    ("/health", &["get"]),
    ("/ping", &["get", "post"]),
    ("/version", &["get"]),
    ("/metrics", &["get"]),
    ("/openapi.json", &["get"]),
];

/// The document, for server `version`.
pub fn document(version: &str) -> Value {
    let gen_errors: &[u16] = &[400, 401, 404, 413, 429, 503];
    let render_errors: &[u16] = &[400, 401, 404, 413];
    let tokenize_body = json!({"type": "object", "properties": {
        "model": {"type": ["string", "null"]}, "prompt": {"type": "string"},
        "messages": {"type": "array", "items": {"$ref": "#/components/schemas/Message"}},
        "add_special_tokens": {"type": ["boolean", "null"]},
        "add_generation_prompt": {"type": ["boolean", "null"]},
        "tools": {"type": ["array", "null"]}}});
    let detokenize_body = json!({"type": "object", "required": ["tokens"], "properties": {
        "model": {"type": ["string", "null"]},
        "tokens": {"type": "array", "items": {"type": "integer", "minimum": 0}}}});
    let paths = json!({
        "/v1/completions": {"post": op("Text completion (OpenAI, vLLM's extensions)",
            Some(generation_body(Endpoint::Completions)), stream_ok("a completion, or its chunks when `stream`"), gen_errors, true)},
        "/v1/chat/completions": {"post": op("Chat completion (OpenAI, vLLM's extensions), tools and structured outputs",
            Some(generation_body(Endpoint::Chat)), stream_ok("a chat completion, or its chunks when `stream`"), gen_errors, true)},
        "/v1/completions/render": {"post": op("The prompt token ids a completion request would run (vLLM)",
            Some(generation_body(Endpoint::Completions)), json_ok("the rendered prompt"), render_errors, true)},
        "/v1/chat/completions/render": {"post": op("The templated prompt and token ids a chat request would run (vLLM)",
            Some(generation_body(Endpoint::Chat)), json_ok("the rendered prompt"), render_errors, true)},
        "/v1/models": {"get": op("The served model", None, json_ok("a list of one model"), &[401], true)},
        "/tokenize": {"post": op("Token ids of a prompt or of chat messages (vLLM)",
            Some(tokenize_body), json_ok("count, max_model_len and tokens"), render_errors, true)},
        "/detokenize": {"post": op("Text of token ids (vLLM)",
            Some(detokenize_body), json_ok("the prompt"), render_errors, true)},
        "/health": {"get": op("200 while a worker can serve", None, json!({"description": "healthy"}), &[503], false)},
        "/ping": {
            "get": op("As /health (SageMaker's probe)", None, json!({"description": "healthy"}), &[503], false),
            "post": op("As /health (SageMaker's probe)", None, json!({"description": "healthy"}), &[503], false)},
        "/version": {"get": op("The server version", None, json_ok("version"), &[], false)},
        "/metrics": {"get": op("Prometheus metrics (vllm: and reprise: families)", None,
            json!({"description": "text exposition format", "content": {"text/plain": {"schema": {"type": "string"}}}}), &[], false)},
        "/openapi.json": {"get": op("This document", None, json_ok("OpenAPI 3.1"), &[], false)},
    });
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "reprise",
            "version": version,
            "description": "OpenAI-compatible LLM serving with KV-cache-aware routing. Every error is OpenAI-shaped (`{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`); any path not listed is a 404 and any method not listed for a path a 405, in the same shape."
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                "description": "required only when the server runs with --api-key"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                    "type": "object", "required": ["message", "type"], "properties": {
                        "message": {"type": "string"}, "type": {"type": "string"},
                        "param": {"type": ["string", "null"]}, "code": {}}}}},
                "Message": {"type": "object", "required": ["role"], "properties": {
                    "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
                    "content": {"oneOf": [{"type": "string"}, {"type": "null"},
                        {"type": "array", "items": {"type": "object", "required": ["type", "text"], "properties": {
                            "type": {"const": "text"}, "text": {"type": "string"}}}}]},
                    "name": {"type": "string"},
                    "tool_calls": {"type": "array"},
                    "tool_call_id": {"type": "string"}}}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_accepted_field_has_a_schema_and_every_route_an_operation() {
        for e in [Endpoint::Completions, Endpoint::Chat] {
            for (name, only) in accepted(e) {
                assert!(field_schema(e, name).is_some(), "{name} has no schema");
                if let Some(allowed) = only {
                    assert!(only_schema(allowed).is_some(), "{name}: {allowed:?}");
                }
            }
        }
        let doc = document("test");
        let paths = doc["paths"].as_object().expect("paths");
        assert_eq!(paths.len(), ROUTES.len());
        for (path, methods) in ROUTES {
            let ops = paths[*path].as_object().expect("path documented");
            let mut have: Vec<&str> = ops.keys().map(String::as_str).collect();
            have.sort();
            let mut want = methods.to_vec();
            want.sort();
            assert_eq!(have, want, "{path}");
        }
        let chat = &paths["/v1/chat/completions"]["post"]["requestBody"]["content"]
            ["application/json"]["schema"]["properties"];
        assert!(chat["echo"]["description"]
            .as_str()
            .expect("description")
            .contains("false"));
    }
}
