//! Typed API errors, answered as `{"error": {"code", "message"}}` with the
//! status code of DESIGN §5.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use edgeloop_api::{ErrorBody, ErrorCode};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into() }
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, m)
    }
    pub fn malformed_model(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::MalformedModel, m)
    }
    pub fn unsupported_model(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::UnsupportedModel, m)
    }
    pub fn runtime_unavailable(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::RuntimeUnavailable, m)
    }
    pub fn runtime_crashed(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::RuntimeCrashed, m)
    }
    pub fn too_hot(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::TooHot, m)
    }
    pub fn unknown_model(sha256: &str) -> Self {
        Self::new(
            ErrorCode::NotFound,
            format!("no model {sha256} on this agent: upload it with PUT /v1/models/{sha256}"),
        )
    }
    pub fn internal(e: impl ToString) -> Self {
        Self::new(ErrorCode::Internal, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(ErrorBody::new(self.code, self.message))).into_response()
    }
}
