//! The HTTP skeleton of `reprise serve` and `reprise route`, as TGI puts one
//! `Backend` under one set of handlers: every route and layer, admission, the
//! preparation of a generation request (parsed, validated, its prompt rendered and
//! tokenized once, on the CPU pool), the render, tokenize, models, health, ping,
//! version and metrics endpoints, and the serve loop. What differs is the
//! [`Backend`]: `serve`'s dispatches to in-process workers and formats their tokens;
//! `route`'s forwards the client's body to the best remote worker.

use crate::admission::{Admission, Permit};
use crate::body::{parse_json, BodyBytes, JsonBody};
use crate::cpu::CpuPool;
use crate::errors::ApiError;
use crate::metrics::RouterMetrics;
use crate::middleware::{
    auth, method_not_allowed, not_found, request_id, stamp_arrival, version, Arrival, RequestId,
};
use crate::model_info::{HttpLimits, ModelInfo};
use crate::options::HttpConfig;
use crate::params::{
    bad_word_tokens, parse_common, resolve_max_tokens, Endpoint, Fields, GenOptions, ParseLimits,
};
use crate::prompt::{chat_prompt, prompt_list, prompt_tokens};
use crate::tokenize::{detokenize_body, tokenize_body};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Json};
use bytes::Bytes;
use reprise_protocol::block_key::extra_bytes;
use serde_json::{json, Value};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

/// Default `max_tokens` of the legacy completions API.
const COMPLETIONS_MAX_TOKENS: usize = 16;

/// What runs a generation request under the shared handlers.
pub trait Backend: Send + Sync + Sized + 'static {
    /// Whether the client's body is passed on to servers that validate it again
    /// (`reprise route`): then a model name other than the served one is a LoRA
    /// adapter of it (its blocks keyed apart), a completion may carry several prompts
    /// (routed by the first), and grammars are left to those servers to compile.
    const FORWARDS_BODY: bool;

    /// Runs a prepared request and answers it (JSON or an SSE stream).
    fn generate(
        app: Arc<App<Self>>,
        req: GenRequest,
    ) -> impl Future<Output = Result<Response, ApiError>> + Send;

    /// `/health`'s body while the backend can serve, else why not (a 503).
    fn health(&self) -> Result<Value, String>;

    /// The Prometheus text of `/metrics`.
    fn metrics(app: &App<Self>) -> String;
}

/// A generation request, admitted, parsed and tokenized.
pub struct GenRequest {
    /// Which API.
    pub endpoint: Endpoint,
    /// The body as the client sent it.
    pub body: Bytes,
    /// The client's headers.
    pub headers: HeaderMap,
    /// When it arrived (where vLLM's TTFT and end-to-end clocks start).
    pub arrival: Instant,
    /// Its id: the `x-request-id` header, else the body's `request_id`, else made up.
    pub request_id: Arc<str>,
    /// Its options (`max_tokens` resolved; the grammar compiled unless forwarded).
    pub opts: GenOptions,
    /// Its prompt's token ids (a batch's first prompt when forwarded).
    pub prompt: Vec<u32>,
    /// The bytes mixed into its block keys: cache salt, LoRA adapter.
    pub extra: Vec<u8>,
    /// Its admission slot.
    pub permit: Permit,
}

/// Everything the handlers share.
pub struct App<B> {
    /// What runs the requests.
    pub backend: B,
    /// The served model's text side.
    pub model: ModelInfo,
    /// Listen address, API key, limits.
    pub http: HttpConfig,
    /// Server-dependent bounds on request fields.
    pub limits: ParseLimits,
    /// The bound on requests in flight.
    pub admission: Admission,
    /// Routing decisions.
    pub router_metrics: RouterMetrics,
    /// Parsing, templates and tokenization.
    pub cpu: CpuPool,
}

impl<B> HttpLimits for App<B> {
    fn max_body_bytes(&self) -> usize {
        self.http.max_body_bytes
    }

    fn api_key(&self) -> Option<&str> {
        self.http.api_key.as_deref()
    }

    fn cpu(&self) -> &CpuPool {
        &self.cpu
    }
}

impl<B: Backend> App<B> {
    /// The LoRA adapter `model` names (forwarding backends), or 404 unless it names
    /// the served model.
    fn adapter<'a>(&self, model: Option<&'a str>) -> Result<Option<&'a str>, ApiError> {
        if B::FORWARDS_BODY {
            return Ok(model.filter(|m| !self.model.is_served(Some(m))));
        }
        self.model.check_model(model).map(|()| None)
    }

    /// Parses, validates and tokenizes a generation body (on the CPU pool).
    fn prepare(
        &self,
        bytes: &[u8],
        endpoint: Endpoint,
    ) -> Result<(GenOptions, Vec<u32>, Vec<u8>), ApiError> {
        let body = parse_json(bytes)?;
        let f = Fields::new(&body)?;
        let mut opts = parse_common(&f, endpoint, &self.limits)?;
        let adapter = self.adapter(opts.model.as_deref())?;
        let mut ids = match endpoint {
            Endpoint::Completions => {
                let add_special = opts.add_special_tokens.unwrap_or(true);
                if B::FORWARDS_BODY {
                    // A batch of prompts goes to one worker: the first prompt's.
                    prompt_list(&self.model, f.value("prompt"), add_special)?
                        .into_iter()
                        .next()
                        .unwrap_or_default()
                } else {
                    prompt_tokens(&self.model, f.value("prompt"), add_special)?
                }
            }
            Endpoint::Chat => chat_prompt(
                &self.model,
                &f,
                opts.add_special_tokens,
                opts.tools.as_ref(),
            )?,
        };
        if let Some(t) = opts.truncation {
            t.apply(&mut ids, self.model.max_model_len);
        }
        let default = match endpoint {
            Endpoint::Completions => Some(COMPLETIONS_MAX_TOKENS),
            Endpoint::Chat => None,
        };
        opts.params.max_tokens = resolve_max_tokens(
            opts.max_tokens,
            self.limits.defaults.max_tokens.or(default),
            ids.len(),
            self.model.max_model_len,
        )?;
        opts.params.bad_words = bad_word_tokens(&self.model.tokenizer, &opts.bad_words)?;
        if !B::FORWARDS_BODY {
            // Compiled here, so a bad schema is a 400 before anything queues.
            if let Some(g) = &opts.grammar {
                opts.constraint = Some(self.model.compile_grammar(&g.spec, g.param)?);
            }
        }
        let salt = std::str::from_utf8(&opts.cache_salt).ok();
        let extra = extra_bytes(salt, adapter);
        Ok((opts, ids, extra))
    }
}

/// Every route and layer.
pub fn router<B: Backend>(app: Arc<App<B>>) -> axum::Router {
    let protected = axum::Router::new()
        .route("/v1/completions", post(completions::<B>))
        .route("/v1/chat/completions", post(chat_completions::<B>))
        .route("/v1/completions/render", post(completions_render::<B>))
        .route("/v1/chat/completions/render", post(chat_render::<B>))
        .route("/v1/models", get(models::<B>))
        .route("/tokenize", post(tokenize::<B>))
        .route("/detokenize", post(detokenize::<B>))
        .route_layer(middleware::from_fn_with_state(app.clone(), auth::<App<B>>));
    axum::Router::new()
        .merge(protected)
        .route("/health", get(health::<B>))
        .route("/ping", get(ping::<B>).post(ping::<B>))
        .route("/version", get(version))
        .route("/metrics", get(metrics::<B>))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(app.http.max_body_bytes))
        .layer(middleware::from_fn(request_id))
        .layer(middleware::from_fn(stamp_arrival))
        .with_state(app)
}

/// Serves `app` on `listener` until SIGTERM / ctrl-c, then stops admitting and gives
/// the requests in flight `--shutdown-timeout` to finish.
pub async fn serve<B: Backend>(
    app: Arc<App<B>>,
    listener: tokio::net::TcpListener,
    ready_line: String,
) -> std::io::Result<()> {
    let drain = app.clone();
    crate::serve::serve_until_signal(
        router(app.clone()),
        listener,
        app.http.listener,
        app.http.shutdown_timeout,
        ready_line,
        move || drain.admission.drain(),
    )
    .await
}

/// A generation request: admission first (before the body is parsed), then its
/// preparation on the CPU pool, then the backend.
async fn generation<B: Backend>(
    app: Arc<App<B>>,
    endpoint: Endpoint,
    arrival: Arrival,
    rid: RequestId,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let permit = app.admission.admit()?;
    let st = app.clone();
    let b = body.clone();
    let (opts, prompt, extra) = app.cpu.run(move || st.prepare(&b, endpoint)).await?;
    let request_id = rid.resolve(opts.request_id.as_deref());
    let req = GenRequest {
        endpoint,
        body,
        headers,
        arrival: arrival.0,
        request_id,
        opts,
        prompt,
        extra,
        permit,
    };
    B::generate(app, req).await
}

/// `POST /v1/completions`: a prompt (text or token ids) in, text out.
async fn completions<B: Backend>(
    State(app): State<Arc<App<B>>>,
    arrival: Arrival,
    rid: RequestId,
    headers: HeaderMap,
    BodyBytes(body): BodyBytes,
) -> Result<Response, ApiError> {
    generation(app, Endpoint::Completions, arrival, rid, headers, body).await
}

/// `POST /v1/chat/completions`: messages (and tools) rendered with the model's own
/// chat template, then the same path.
async fn chat_completions<B: Backend>(
    State(app): State<Arc<App<B>>>,
    arrival: Arrival,
    rid: RequestId,
    headers: HeaderMap,
    BodyBytes(body): BodyBytes,
) -> Result<Response, ApiError> {
    generation(app, Endpoint::Chat, arrival, rid, headers, body).await
}

/// `POST /v1/completions/render` (vLLM's): the token ids and resolved sampling
/// parameters each prompt would be served with, without generating.
async fn completions_render<B: Backend>(
    State(app): State<Arc<App<B>>>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let st = app.clone();
    app.cpu
        .run(move || {
            let f = Fields::new(&body)?;
            let opts = parse_common(&f, Endpoint::Completions, &st.limits)?;
            st.adapter(opts.model.as_deref())?;
            let add_special = opts.add_special_tokens.unwrap_or(true);
            let prompts = prompt_list(&st.model, f.value("prompt"), add_special)?;
            let out = prompts
                .into_iter()
                .map(|ids| render_one(&st, "cmpl", &opts, ids, Some(COMPLETIONS_MAX_TOKENS)))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Json(Value::Array(out)))
        })
        .await
}

/// `POST /v1/chat/completions/render`: the same for `messages`, one object.
async fn chat_render<B: Backend>(
    State(app): State<Arc<App<B>>>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let st = app.clone();
    app.cpu
        .run(move || {
            let f = Fields::new(&body)?;
            let opts = parse_common(&f, Endpoint::Chat, &st.limits)?;
            st.adapter(opts.model.as_deref())?;
            let ids = chat_prompt(&st.model, &f, opts.add_special_tokens, opts.tools.as_ref())?;
            Ok(Json(render_one(&st, "chatcmpl", &opts, ids, None)?))
        })
        .await
}

/// One prompt in vLLM's `GenerateRequest` shape.
fn render_one<B>(
    app: &App<B>,
    prefix: &str,
    opts: &GenOptions,
    mut token_ids: Vec<u32>,
    default_max_tokens: Option<usize>,
) -> Result<Value, ApiError> {
    let model = &app.model;
    if let Some(t) = opts.truncation {
        t.apply(&mut token_ids, model.max_model_len);
    }
    let max_tokens = resolve_max_tokens(
        opts.max_tokens,
        app.limits.defaults.max_tokens.or(default_max_tokens),
        token_ids.len(),
        model.max_model_len,
    )?;
    let p = &opts.params;
    let salt = (!opts.cache_salt.is_empty())
        .then(|| String::from_utf8_lossy(&opts.cache_salt).into_owned());
    Ok(json!({
        "request_id": format!("{prefix}-{}", crate::ids::new_request_id()),
        "token_ids": token_ids,
        "features": null,
        "sampling_params": {
            "n": opts.n,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "top_k": if p.top_k == 0 { -1 } else { p.top_k as i64 },
            "seed": p.seed,
            "stop": p.stop,
            "stop_token_ids": p.stop_token_ids,
            "ignore_eos": p.ignore_eos,
            "max_tokens": max_tokens,
            "logprobs": p.logprobs,
            "skip_special_tokens": p.skip_special_tokens,
            "spaces_between_special_tokens": p.spaces_between_special_tokens,
            "include_stop_str_in_output": p.include_stop_str_in_output,
        },
        "model": model.served_model_name,
        "stream": opts.stream,
        "stream_options": if opts.stream { json!({"include_usage": opts.include_usage}) } else { Value::Null },
        "cache_salt": salt,
        "priority": 0,
        "kv_transfer_params": null,
    }))
}

async fn models<B: Backend>(State(app): State<Arc<App<B>>>) -> Json<Value> {
    Json(app.model.models_json())
}

/// `POST /tokenize`: `{"model", "prompt" | "messages", "add_special_tokens"}` →
/// `{"count", "max_model_len", "tokens"}` (vLLM's shape).
async fn tokenize<B: Backend>(
    State(app): State<Arc<App<B>>>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let st = app.clone();
    app.cpu
        .run(move || tokenize_body(&st.model, &body))
        .await
        .map(Json)
}

/// `POST /detokenize`: `{"model", "tokens"}` → `{"prompt"}`.
async fn detokenize<B: Backend>(
    State(app): State<Arc<App<B>>>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let st = app.clone();
    app.cpu
        .run(move || detokenize_body(&st.model, &body))
        .await
        .map(Json)
}

async fn openapi() -> Json<Value> {
    Json(crate::openapi::document(env!("CARGO_PKG_VERSION")))
}

async fn health<B: Backend>(State(app): State<Arc<App<B>>>) -> Response {
    match app.backend.health() {
        Ok(body) => Json(body).into_response(),
        Err(why) => ApiError::Unavailable(why).into_response(),
    }
}

/// vLLM's `/ping` (GET or POST): 200 with an empty body while `/health` passes.
async fn ping<B: Backend>(State(app): State<Arc<App<B>>>) -> Response {
    match app.backend.health() {
        Ok(_) => StatusCode::OK.into_response(),
        Err(why) => ApiError::Unavailable(why).into_response(),
    }
}

async fn metrics<B: Backend>(State(app): State<Arc<App<B>>>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        B::metrics(&app),
    )
        .into_response()
}
