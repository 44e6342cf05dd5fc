//! `POST /v1/chat/completions`'s answer: the choices' text as assistant messages,
//! or as tool calls as the request's `tool_choice` says (the parsers are
//! `reprise_text::tools`), whole or streamed as chunks.

use crate::generate::{finish_reason_str, stop_reason_json, Generation, Output, TokenInfo, Usage};
use crate::local::ServeApp;
use crate::sse::{self, ChunkFormat};
use axum::response::{IntoResponse, Response};
use axum::Json;
use reprise_api::app::GenRequest;
use reprise_api::errors::ApiError;
use reprise_api::middleware::with_request_id;
use reprise_api::params::GenOptions;
use reprise_api::tools::ToolChoice;
use reprise_text::tools::{hold_from, parse_auto, parse_required, ToolCall, ToolParser};
use serde_json::{json, Value};
use std::sync::Arc;

/// Runs a prepared chat request and answers it; a choice's text becomes tool calls
/// as the request's `tool_choice` says.
pub async fn respond(app: Arc<ServeApp>, req: GenRequest) -> Result<Response, ApiError> {
    let request_id = req.request_id.clone();
    let (gen, opts) = Generation::start(&app, req).await?;
    let want_logprobs = opts.params.logprobs.is_some();
    let mode = ToolMode::of(&opts, app.model.tool_parser);
    let worker = gen.worker();
    let id = format!("chatcmpl-{request_id}");
    let model = app.model.served_model_name.clone();
    let created = reprise_api::ids::unix_now();
    if opts.stream {
        let fmt = ChatChunks {
            call_ids: CallIds(id.clone()),
            id,
            model,
            created,
            n: opts.n,
            mode,
            choices: (0..opts.n).map(|_| StreamChoice::default()).collect(),
        };
        let resp = sse::stream(gen, fmt, opts.include_usage);
        return Ok(with_request_id(resp, &request_id));
    }
    let c = match gen.collect().await {
        Ok(c) => c,
        // A worker's failure still names the worker, as every generation response does.
        Err(e) => {
            let resp = sse::with_worker(e.into_response(), worker);
            return Ok(with_request_id(resp, &request_id));
        }
    };
    let ids = CallIds(id.clone());
    let choices: Vec<Value> = (0..opts.n)
        .map(|i| {
            let finish = c.finish[i].map(finish_reason_str);
            let (message, finish) = match mode.calls(&c.texts[i]) {
                Some((content, calls)) => {
                    let calls: Vec<Value> = calls.iter().enumerate().map(|(k, t)| t.to_json(&ids.id(i, k))).collect();
                    let finish = if mode.says_tool_calls() { Some("tool_calls") } else { finish };
                    (json!({"role": "assistant", "content": content, "tool_calls": calls}), finish)
                }
                None => (json!({"role": "assistant", "content": c.texts[i]}), finish),
            };
            json!({
                "index": i,
                "message": message,
                "logprobs": if want_logprobs { json!({"content": logprob_entries(&c.logprobs[i])}) } else { Value::Null },
                "finish_reason": finish,
                "stop_reason": stop_reason_json(&c.stop_reason[i]),
            })
        })
        .collect();
    let body = json!({
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": choices, "usage": c.usage.to_json(),
    });
    let resp = sse::with_worker(Json(body).into_response(), worker);
    Ok(with_request_id(resp, &request_id))
}

fn logprob_entries(infos: &[TokenInfo]) -> Vec<Value> {
    infos
        .iter()
        .map(|t| {
            json!({
                "token": t.token, "logprob": t.logprob, "bytes": t.token.as_bytes(),
                "top_logprobs": t.top.iter().map(|(s, l)| json!({"token": s, "logprob": l, "bytes": s.as_bytes()})).collect::<Vec<_>>(),
            })
        })
        .collect()
}

/// How a choice's text becomes tool calls.
#[derive(Clone, Debug)]
enum ToolMode {
    /// Text only (no tools, or `tool_choice: "none"`).
    Text,
    /// The text is this function's arguments (under its schema).
    Named(String),
    /// The text is a JSON list of calls (under vLLM's schema).
    Required,
    /// Calls, if any, are parsed from free text.
    Auto(ToolParser),
}

impl ToolMode {
    fn of(opts: &GenOptions, parser: ToolParser) -> Self {
        match opts.tools.as_ref().map(|t| &t.choice) {
            None | Some(ToolChoice::None) => Self::Text,
            Some(ToolChoice::Named(n)) => Self::Named(n.clone()),
            Some(ToolChoice::Required) => Self::Required,
            Some(ToolChoice::Auto) => Self::Auto(parser),
        }
    }

    /// `finish_reason: "tool_calls"` when calls were made (a named choice keeps the
    /// engine's reason, as OpenAI and vLLM answer a forced function).
    fn says_tool_calls(&self) -> bool {
        !matches!(self, Self::Named(_))
    }

    /// The content and calls of a finished choice's text; `None` when it holds no call.
    fn calls(&self, text: &str) -> Option<(Option<String>, Vec<ToolCall>)> {
        let (content, calls) = match self {
            Self::Text => return None,
            Self::Named(name) => (
                None,
                vec![ToolCall {
                    name: name.clone(),
                    arguments: text.to_string(),
                }],
            ),
            Self::Required => (None, parse_required(text)),
            Self::Auto(p) => {
                let parsed = parse_auto(*p, text);
                (parsed.content, parsed.calls)
            }
        };
        (!calls.is_empty()).then_some((content, calls))
    }
}

/// Tool-call ids, unique per response: `chatcmpl-tool-<response id>-<choice>-<call>`.
struct CallIds(String);

impl CallIds {
    fn id(&self, choice: usize, call: usize) -> String {
        let rid = self.0.strip_prefix("chatcmpl-").unwrap_or(&self.0);
        format!("chatcmpl-tool-{rid}-{choice}-{call}")
    }
}

/// A streamed choice's text so far and how much of it went out as content.
#[derive(Default)]
struct StreamChoice {
    text: String,
    emitted: usize,
    /// A tool call has begun: the rest is held until the choice ends.
    holding: bool,
}

struct ChatChunks {
    id: String,
    model: String,
    created: u64,
    n: usize,
    mode: ToolMode,
    call_ids: CallIds,
    choices: Vec<StreamChoice>,
}

impl ChatChunks {
    fn chunk(&self, choice: Value) -> Value {
        json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model, "choices": [choice]})
    }

    fn delta(&self, index: usize, delta: Value, logprobs: &[TokenInfo]) -> Value {
        let lp = if logprobs.is_empty() {
            Value::Null
        } else {
            json!({"content": logprob_entries(logprobs)})
        };
        self.chunk(json!({"index": index, "delta": delta, "logprobs": lp, "finish_reason": null}))
    }

    /// The deltas for new text of choice `index`.
    fn text_delta(&mut self, index: usize, text: String, logprobs: Vec<TokenInfo>) -> Vec<Value> {
        let Some(c) = self.choices.get_mut(index) else {
            return Vec::new();
        };
        match &self.mode {
            ToolMode::Text => vec![self.delta(index, json!({"content": text}), &logprobs)],
            ToolMode::Named(name) => {
                // The call's header first, then its arguments as they are generated.
                let first = c.text.is_empty();
                c.text.push_str(&text);
                let call = if first {
                    json!({"index": 0, "id": self.call_ids.id(index, 0), "type": "function",
                        "function": {"name": name, "arguments": text}})
                } else {
                    json!({"index": 0, "function": {"arguments": text}})
                };
                vec![self.delta(index, json!({"tool_calls": [call]}), &logprobs)]
            }
            ToolMode::Required => {
                c.text.push_str(&text);
                Vec::new()
            }
            ToolMode::Auto(parser) => {
                c.text.push_str(&text);
                if c.holding {
                    return Vec::new();
                }
                let rest = &c.text[c.emitted..];
                let upto = match hold_from(*parser, rest) {
                    Some(k) => {
                        // Held for good once the text from there is a call's start for sure.
                        let from = rest[k..].trim_start();
                        c.holding = from.starts_with("<tool_call>")
                            || from.starts_with('{')
                            || from.starts_with("<|python_tag|>");
                        k
                    }
                    None => rest.len(),
                };
                let out = rest[..upto].to_string();
                c.emitted += upto;
                if out.is_empty() {
                    Vec::new()
                } else {
                    vec![self.delta(index, json!({"content": out}), &logprobs)]
                }
            }
        }
    }

    /// What is held back of choice `index`, as calls (or content) before its finish.
    fn flush(&mut self, index: usize) -> (Vec<Value>, bool) {
        let Some(c) = self.choices.get_mut(index) else {
            return (Vec::new(), false);
        };
        let held = c.text[c.emitted..].to_string();
        c.emitted = c.text.len();
        if matches!(self.mode, ToolMode::Text | ToolMode::Named(_)) {
            return (Vec::new(), false);
        }
        match self.mode.calls(&held) {
            Some((content, calls)) => {
                let mut out = Vec::new();
                if let Some(text) = content.filter(|t| !t.is_empty()) {
                    out.push(self.delta(index, json!({"content": text}), &[]));
                }
                let calls: Vec<Value> = calls
                    .iter()
                    .enumerate()
                    .map(|(k, t)| {
                        json!({"index": k, "id": self.call_ids.id(index, k), "type": "function",
                            "function": {"name": t.name, "arguments": t.arguments}})
                    })
                    .collect();
                out.push(self.delta(index, json!({"tool_calls": calls}), &[]));
                (out, true)
            }
            None if held.is_empty() => (Vec::new(), false),
            None => (
                vec![self.delta(index, json!({"content": held}), &[])],
                false,
            ),
        }
    }
}

impl ChunkFormat for ChatChunks {
    fn start(&mut self) -> Vec<Value> {
        (0..self.n)
            .map(|i| self.chunk(json!({"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null})))
            .collect()
    }

    fn outputs(&mut self, outs: Vec<Output>) -> Vec<Value> {
        let mut chunks = Vec::new();
        for o in outs {
            match o {
                Output::Delta {
                    index,
                    text,
                    logprobs,
                } => chunks.extend(self.text_delta(index, text, logprobs)),
                Output::Finish {
                    index,
                    reason,
                    stop_reason,
                } => {
                    let (held, called) = self.flush(index);
                    chunks.extend(held);
                    let finish = if called {
                        "tool_calls"
                    } else {
                        finish_reason_str(reason)
                    };
                    chunks.push(self.chunk(
                        json!({"index": index, "delta": {}, "logprobs": null, "finish_reason": finish, "stop_reason": stop_reason_json(&stop_reason)}),
                    ));
                }
            }
        }
        chunks
    }

    fn usage(&mut self, usage: Usage) -> Value {
        json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [], "usage": usage.to_json()})
    }
}
