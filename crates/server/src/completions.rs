//! `POST /v1/completions`'s answer: the choices' text, whole or streamed as chunks.

use crate::generate::{finish_reason_str, stop_reason_json, Generation, Output, TokenInfo, Usage};
use crate::local::ServeApp;
use crate::sse::{self, ChunkFormat};
use axum::response::{IntoResponse, Response};
use axum::Json;
use reprise_api::app::GenRequest;
use reprise_api::errors::ApiError;
use reprise_api::middleware::with_request_id;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// Runs a prepared completions request and answers it.
pub async fn respond(app: Arc<ServeApp>, req: GenRequest) -> Result<Response, ApiError> {
    let request_id = req.request_id.clone();
    let (gen, opts) = Generation::start(&app, req).await?;
    let worker = gen.worker();
    let id = format!("cmpl-{request_id}");
    let model = app.model.served_model_name.clone();
    let created = reprise_api::ids::unix_now();
    let want_logprobs = opts.params.logprobs.is_some();
    if opts.stream {
        let fmt = CompletionChunks {
            id,
            model,
            created,
            offsets: vec![0; opts.n],
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
    let choices: Vec<Value> = (0..opts.n)
        .map(|i| {
            let lp = want_logprobs.then(|| logprobs_json(&c.logprobs[i], &mut 0));
            json!({
                "index": i,
                "text": c.texts[i],
                "logprobs": lp,
                "finish_reason": c.finish[i].map(finish_reason_str),
                "stop_reason": stop_reason_json(&c.stop_reason[i]),
            })
        })
        .collect();
    let body = json!({
        "id": id, "object": "text_completion", "created": created, "model": model,
        "choices": choices, "usage": c.usage.to_json(),
    });
    let resp = sse::with_worker(Json(body).into_response(), worker);
    Ok(with_request_id(resp, &request_id))
}

/// The legacy `logprobs` object; `offset` is the text offset of the first token.
fn logprobs_json(infos: &[TokenInfo], offset: &mut usize) -> Value {
    let mut text_offset = Vec::with_capacity(infos.len());
    for t in infos {
        text_offset.push(*offset);
        *offset += t.token.len();
    }
    json!({
        "tokens": infos.iter().map(|t| t.token.clone()).collect::<Vec<_>>(),
        "token_logprobs": infos.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": infos.iter().map(|t| {
            t.top.iter().map(|(s, l)| (s.clone(), json!(l))).collect::<Map<String, Value>>()
        }).collect::<Vec<_>>(),
        "text_offset": text_offset,
    })
}

struct CompletionChunks {
    id: String,
    model: String,
    created: u64,
    offsets: Vec<usize>,
}

impl CompletionChunks {
    fn chunk(&self, choices: Vec<Value>) -> Value {
        json!({"id": self.id, "object": "text_completion", "created": self.created, "model": self.model, "choices": choices})
    }
}

impl ChunkFormat for CompletionChunks {
    fn start(&mut self) -> Vec<Value> {
        Vec::new()
    }

    fn outputs(&mut self, outs: Vec<Output>) -> Vec<Value> {
        outs.into_iter()
            .map(|o| match o {
                Output::Delta { index, text, logprobs } => {
                    let lp = if logprobs.is_empty() {
                        Value::Null
                    } else {
                        let off = self.offsets.get_mut(index);
                        let mut dummy = 0;
                        logprobs_json(&logprobs, off.unwrap_or(&mut dummy))
                    };
                    self.chunk(vec![json!({"index": index, "text": text, "logprobs": lp, "finish_reason": null, "stop_reason": null})])
                }
                Output::Finish { index, reason, stop_reason } => self.chunk(vec![
                    json!({"index": index, "text": "", "logprobs": null, "finish_reason": finish_reason_str(reason), "stop_reason": stop_reason_json(&stop_reason)}),
                ]),
            })
            .collect()
    }

    fn usage(&mut self, usage: Usage) -> Value {
        let mut v = self.chunk(Vec::new());
        v["usage"] = usage.to_json();
        v
    }
}
