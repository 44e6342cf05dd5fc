//! The one error type of the HTTP layer and its mapping to OpenAI-shaped
//! responses: `{"error": {"message", "type", "param", "code"}}`.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Everything a request can fail with, each mapped to one status code.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ApiError {
    /// 400: the request is malformed or out of range.
    #[error("{message}")]
    BadRequest {
        /// What is wrong, for a person.
        message: String,
        /// The offending field, when there is one.
        param: Option<String>,
    },
    /// 401: missing or wrong API key.
    #[error("invalid or missing API key; send it as 'Authorization: Bearer <key>'")]
    Unauthorized,
    /// 404: the requested model is not served here.
    #[error("the model '{0}' does not exist; this server serves '{1}'")]
    ModelNotFound(String, String),
    /// 404: no such route.
    #[error("no route for {0}")]
    RouteNotFound(String),
    /// 405: the route exists with another method.
    #[error("method not allowed for {0}")]
    MethodNotAllowed(String),
    /// 413: the body is larger than `--max-body-bytes`.
    #[error("request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    /// 429: the admission queue is full.
    #[error("server is overloaded: {0} requests are already admitted (--max-queue); retry later")]
    Overloaded(usize),
    /// 503: no worker can take the request (all failed, or shutting down).
    #[error("{0}")]
    Unavailable(String),
    /// 500: a worker failed the request.
    #[error("internal error: {0}")]
    Internal(String),
    /// 502: `reprise route` could not get an answer from any worker.
    #[error("{0}")]
    Upstream(String),
    /// 504: the request ran past `--request-timeout` (seconds) and was cancelled.
    #[error("the request did not finish within {0} s (--request-timeout) and was cancelled")]
    Timeout(f64),
}

impl ApiError {
    /// A 400 about `param`.
    pub fn bad(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            param: Some(param.into()),
        }
    }

    /// A 400 not tied to one field.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            param: None,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::ModelNotFound(..) | ApiError::RouteNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// OpenAI's `type` and `code` for this error.
    fn type_and_code(&self) -> (&'static str, &'static str) {
        match self {
            ApiError::BadRequest { .. } => ("invalid_request_error", "invalid_request"),
            ApiError::Unauthorized => ("invalid_request_error", "invalid_api_key"),
            ApiError::ModelNotFound(..) => ("invalid_request_error", "model_not_found"),
            ApiError::RouteNotFound(_) => ("invalid_request_error", "not_found"),
            ApiError::MethodNotAllowed(_) => ("invalid_request_error", "method_not_allowed"),
            ApiError::PayloadTooLarge(_) => ("invalid_request_error", "request_too_large"),
            ApiError::Overloaded(_) => ("rate_limit_error", "rate_limit_exceeded"),
            ApiError::Unavailable(_) => ("server_error", "service_unavailable"),
            ApiError::Internal(_) => ("server_error", "internal_error"),
            ApiError::Upstream(_) => ("server_error", "upstream_error"),
            ApiError::Timeout(_) => ("timeout_error", "request_timeout"),
        }
    }

    /// The JSON body, `{"error": {...}}`.
    pub fn body(&self) -> serde_json::Value {
        let (ty, code) = self.type_and_code();
        let param = match self {
            ApiError::BadRequest { param, .. } => param.clone(),
            ApiError::ModelNotFound(..) => Some("model".to_string()),
            _ => None,
        };
        json!({"error": {"message": self.to_string(), "type": ty, "param": param, "code": code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status().is_server_error() {
            tracing::warn!(status = self.status().as_u16(), "{self}");
        }
        let mut resp = (
            self.status(),
            [(header::CONTENT_TYPE, "application/json")],
            self.body().to_string(),
        )
            .into_response();
        if matches!(self, ApiError::Unauthorized) {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_the_openai_shape() {
        let all = [
            ApiError::bad("max_tokens", "max_tokens must be at least 1"),
            ApiError::Unauthorized,
            ApiError::ModelNotFound("x".into(), "y".into()),
            ApiError::RouteNotFound("/nope".into()),
            ApiError::MethodNotAllowed("/v1/models".into()),
            ApiError::PayloadTooLarge(10),
            ApiError::Overloaded(3),
            ApiError::Unavailable("no worker".into()),
            ApiError::Internal("boom".into()),
            ApiError::Upstream("worker 1 refused".into()),
            ApiError::Timeout(2.5),
        ];
        let statuses: Vec<u16> = all.iter().map(|e| e.status().as_u16()).collect();
        assert_eq!(
            statuses,
            [400, 401, 404, 404, 405, 413, 429, 503, 500, 502, 504]
        );
        for e in &all {
            let b = e.body();
            let err = b["error"].as_object().expect("error object");
            assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
            assert!(err["type"].is_string());
            assert!(err["code"].is_string());
            assert!(err.contains_key("param"));
        }
        assert_eq!(all[0].body()["error"]["param"], "max_tokens");
        assert_eq!(all[2].body()["error"]["param"], "model");
    }
}
