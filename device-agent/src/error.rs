//! Typed API errors, answered as `{"error": {"code", "message"}}` with the
//! status code of DESIGN §5.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use edgeloop_api::{ErrorBody, ErrorCode, ErrorDetail};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Seconds a client should wait before it tries again (`Retry-After`).
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), retry_after_s: None }
    }
    pub fn busy(m: impl Into<String>, retry_after_s: u64) -> Self {
        ApiError { retry_after_s: Some(retry_after_s), ..Self::new(ErrorCode::Busy, m) }
    }
    pub fn limit_exceeded(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::LimitExceeded, m)
    }
    pub fn timeout(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::Timeout, m)
    }
    pub fn worker_unavailable(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::WorkerUnavailable, m)
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
        let mut response = (status, Json(ErrorBody::new(self.code, self.message))).into_response();
        if let Some(seconds) = self.retry_after_s {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// How a worker process sends an error back to the agent.
impl From<ApiError> for ErrorDetail {
    fn from(e: ApiError) -> Self {
        ErrorDetail { code: e.code, message: e.message }
    }
}

impl From<ErrorDetail> for ApiError {
    fn from(e: ErrorDetail) -> Self {
        ApiError::new(e.code, e.message)
    }
}
