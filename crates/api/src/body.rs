//! The request body extractors: size limit (413), UTF-8 and JSON checks (400),
//! each as an OpenAI-shaped error instead of axum's plain-text rejections. Large
//! bodies are parsed on the CPU pool, never on the runtime's threads.

use crate::cpu::INLINE_PARSE_BYTES;
use crate::errors::ApiError;
use crate::model_info::HttpLimits;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_LENGTH;
use serde_json::Value;
use std::sync::Arc;

/// A JSON request body, parsed into a [`Value`] (fields are read by `params.rs`).
pub struct JsonBody(pub Value);

impl<S: HttpLimits + Send + Sync> FromRequest<Arc<S>> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<S>) -> Result<Self, ApiError> {
        RawJson::from_request(req, state)
            .await
            .map(|r| JsonBody(r.value))
    }
}

/// A request body read within the size limit, not parsed yet (a generation handler
/// takes its admission slot before the parsing and tokenizing).
pub struct BodyBytes(pub Bytes);

impl<S: HttpLimits + Send + Sync> FromRequest<Arc<S>> for BodyBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<S>) -> Result<Self, ApiError> {
        let limit = state.max_body_bytes();
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(limit)
            } else {
                ApiError::bad_request(format!("cannot read the request body: {}", r.body_text()))
            }
        })?;
        Ok(BodyBytes(bytes))
    }
}

/// A JSON request body kept both as sent (`reprise route` forwards it unchanged) and
/// parsed.
pub struct RawJson {
    /// The body's bytes.
    pub bytes: Bytes,
    /// The body parsed.
    pub value: Value,
}

impl<S: HttpLimits + Send + Sync> FromRequest<Arc<S>> for RawJson {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<S>) -> Result<Self, ApiError> {
        let BodyBytes(bytes) = BodyBytes::from_request(req, state).await?;
        let value = if bytes.len() <= INLINE_PARSE_BYTES {
            parse_json(&bytes)?
        } else {
            let b = bytes.clone();
            state.cpu().run(move || parse_json(&b)).await?
        };
        Ok(RawJson { bytes, value })
    }
}

/// Bytes to JSON: empty, non-UTF-8 and malformed bodies are 400s.
pub fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the request body is empty; send a JSON object",
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "the request body is not valid UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        ))
    })?;
    serde_json::from_str(text)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_bodies_are_400() {
        for body in [
            &b""[..],
            b"  ",
            b"{",
            b"{\"a\": }",
            b"\xff\xfe{}",
            b"{\"prompt\": \"\xc3\"}",
            b"{\"a\":\"\\ud800\"}",
        ] {
            let e = parse_json(body).expect_err(&String::from_utf8_lossy(body));
            assert_eq!(e.status().as_u16(), 400);
        }
        assert!(parse_json(b"{\"prompt\": \"hi\"}").is_ok());
    }
}
