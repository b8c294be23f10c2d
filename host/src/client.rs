//! Async client of the agent HTTP API (DESIGN §5).
//!
//! Only connection failures are retried: they mean the request never reached
//! the agent, so even `POST /v1/measure` is safe to send again. An HTTP error
//! answer is the agent's verdict and is returned as is.

use std::fmt;
use std::time::Duration;

use edgeloop_api::{API_PREFIX, DeviceInfo, ErrorBody, ErrorCode, Health, MeasureRequest, Measurement};
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

/// How long to wait for a TCP (and TLS) connection to an agent.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long to wait for a whole request. Long, because the agent measures one
/// model at a time: a measurement can wait behind others, then run for minutes.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// Longest piece of a non-JSON error answer quoted in a [`ClientError`].
const MAX_QUOTED_BODY: usize = 500;

/// Errors of [`AgentClient`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid agent URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },

    #[error("cannot connect to agent at {url}")]
    Connect {
        url: Url,
        #[source]
        source: reqwest::Error,
    },

    #[error("no answer from agent at {url} within {} s", after.as_secs_f64())]
    Timeout { url: Url, after: Duration },

    /// The agent refused the request with an `ErrorBody`.
    #[error("agent answered {status} {}: {message}", code.as_str())]
    Api { status: u16, code: ErrorCode, message: String },

    /// A non-2xx answer without an `ErrorBody`, e.g. from a proxy in between.
    #[error("agent answered {status}: {body}")]
    UnexpectedStatus { status: u16, body: String },

    #[error("HTTP request failed")]
    Http(#[source] reqwest::Error),

    #[error("cannot decode the answer of {url}")]
    Decode {
        url: Url,
        #[source]
        source: serde_json::Error,
    },

    /// A measurement asked for energy came back without it.
    #[error("the agent at {url} measured no energy: {reason}")]
    NoEnergy { url: String, reason: String },
}

/// Retries of requests that could not connect, or that a busy agent asked
/// to repeat (503 with `Retry-After`): `attempts` tries in all, the wait
/// before each retry doubling from `initial_delay` (a busy agent's
/// `Retry-After` instead, at most [`MAX_RETRY_AFTER`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub initial_delay: Duration,
}

impl Default for RetryPolicy {
    /// 4 tries over about 1.4 s: enough to ride out an agent restarting.
    fn default() -> Self {
        RetryPolicy { attempts: 4, initial_delay: Duration::from_millis(200) }
    }
}

impl RetryPolicy {
    /// Wait after failed try number `attempt` (1-based).
    fn delay_after(&self, attempt: u32) -> Duration {
        self.initial_delay.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
    }
}

/// The longest a busy agent's `Retry-After` is waited.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The wait a busy agent asks for: 503 with `Retry-After: <seconds>`.
fn retry_after(response: &Response) -> Option<Duration> {
    if response.status() != StatusCode::SERVICE_UNAVAILABLE {
        return None;
    }
    let seconds: u64 = response.headers().get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

/// Whether [`AgentClient::upload`] had to send the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadStatus {
    AlreadyPresent,
    Stored,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadOutcome {
    /// Lowercase hex sha256 of the model: its name on the agent.
    pub sha256: String,
    pub status: UploadStatus,
}

/// Client of one agent.
#[derive(Clone)]
pub struct AgentClient {
    base: Url,
    token: Option<String>,
    http: reqwest::Client,
    request_timeout: Duration,
    retry: RetryPolicy,
}

/// Leaves the token out, so clients can be logged.
impl fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentClient")
            .field("base", &self.base.as_str())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("request_timeout", &self.request_timeout)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl AgentClient {
    /// Client of the agent at `base_url` (`http://` or `https://`, may carry
    /// a path prefix), sending `token` as bearer token when given.
    pub fn new(base_url: &str, token: Option<String>) -> Result<Self, ClientError> {
        let base = parse_base_url(base_url)?;
        // The workspace builds reqwest without a bundled crypto provider; ring
        // is ours. Installing fails only when one is installed already: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(AgentClient {
            base,
            token,
            http: http_client(DEFAULT_CONNECT_TIMEOUT)?,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            retry: RetryPolicy::default(),
        })
    }

    /// Replaces [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Result<Self, ClientError> {
        self.http = http_client(timeout)?;
        Ok(self)
    }

    /// Replaces [`DEFAULT_REQUEST_TIMEOUT`].
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// `GET /v1/health`: `ok`, or `degraded` with the reason (a 503 whose
    /// body is a `Health`).
    pub async fn health(&self) -> Result<Health, ClientError> {
        let response = self.send(Method::GET, &["health"], |r| r).await?;
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            return decode(response).await;
        }
        decode(checked(response).await?).await
    }

    /// `GET /v1/info`.
    pub async fn info(&self) -> Result<DeviceInfo, ClientError> {
        decode(checked(self.send(Method::GET, &["info"], |r| r).await?).await?).await
    }

    /// Whether the agent holds the model with this sha256 (`GET /v1/models/{sha256}`).
    pub async fn has_model(&self, sha256: &str) -> Result<bool, ClientError> {
        let response = self.send(Method::GET, &["models", sha256], |r| r).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        checked(response).await?;
        Ok(true)
    }

    /// Stores `model` on the agent under its sha256, sending it only when the
    /// agent does not have it yet: models are large and devices often on slow links.
    pub async fn upload(&self, model: &[u8]) -> Result<UploadOutcome, ClientError> {
        let sha256 = sha256_hex(model);
        if self.has_model(&sha256).await? {
            return Ok(UploadOutcome { sha256, status: UploadStatus::AlreadyPresent });
        }
        let response = self
            .send(Method::PUT, &["models", &sha256], |r| {
                r.header(CONTENT_TYPE, "application/octet-stream").body(model.to_vec())
            })
            .await?;
        let response = checked(response).await?;
        // 200 instead of 201: another host uploaded it since we asked.
        let status =
            if response.status() == StatusCode::CREATED { UploadStatus::Stored } else { UploadStatus::AlreadyPresent };
        Ok(UploadOutcome { sha256, status })
    }

    /// `POST /v1/measure`.
    pub async fn measure(&self, request: &MeasureRequest) -> Result<Measurement, ClientError> {
        let response = self.send(Method::POST, &["measure"], |r| r.json(request)).await?;
        decode(checked(response).await?).await
    }

    /// Fails with [`ClientError::NoEnergy`] (naming the agent's reason) when
    /// `request` asked for energy and `measurement` has none: a job whose
    /// budget or table is energy must not go on with latency alone.
    pub fn require_energy(&self, request: &MeasureRequest, measurement: &Measurement) -> Result<(), ClientError> {
        if request.energy && measurement.energy.is_none() {
            let reason = measurement.energy_unavailable_reason.clone().unwrap_or_else(|| "no reason given".into());
            return Err(ClientError::NoEnergy { url: self.base.to_string(), reason });
        }
        Ok(())
    }

    /// Uploads `model` if needed, then measures it with the settings of
    /// `template` (whose `model` field is replaced by the model's sha256).
    pub async fn upload_and_measure(
        &self,
        model: &[u8],
        template: &MeasureRequest,
    ) -> Result<(UploadOutcome, Measurement), ClientError> {
        let upload = self.upload(model).await?;
        let request = MeasureRequest { model: upload.sha256.clone(), ..template.clone() };
        let measurement = self.measure(&request).await?;
        Ok((upload, measurement))
    }

    /// URL of `/v1/<route...>` below the base URL; segments are escaped.
    fn endpoint(&self, route: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("parse_base_url admits only http(s) URLs, which have paths")
            .pop_if_empty()
            .push(API_PREFIX.trim_start_matches('/'))
            .extend(route);
        url
    }

    /// Sends a request with auth and timeout, retrying connection failures
    /// and busy answers. Answers of any other HTTP status are returned.
    async fn send(
        &self,
        method: Method,
        route: &[&str],
        prepare: impl FnOnce(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response, ClientError> {
        let mut request = self.http.request(method, self.endpoint(route)).timeout(self.request_timeout);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let request = prepare(request);
        let mut attempt = 1;
        loop {
            let this_try = request.try_clone().expect("request bodies are in memory, hence clonable");
            match this_try.send().await {
                Ok(response) => match retry_after(&response) {
                    Some(wait) if attempt < self.retry.attempts => {
                        tracing::warn!(
                            "agent at {} is busy; retry {attempt} of {} in {wait:?}",
                            self.base,
                            self.retry.attempts - 1
                        );
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                    }
                    _ => return Ok(response),
                },
                Err(error) if error.is_connect() && attempt < self.retry.attempts => {
                    let delay = self.retry.delay_after(attempt);
                    tracing::warn!(
                        "cannot connect to agent at {} ({}); retry {attempt} of {} in {delay:?}",
                        self.base,
                        root_cause(&error),
                        self.retry.attempts - 1,
                    );
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(error) => return Err(self.transport_error(error)),
            }
        }
    }

    fn transport_error(&self, error: reqwest::Error) -> ClientError {
        if error.is_connect() {
            ClientError::Connect { url: self.base.clone(), source: error }
        } else if error.is_timeout() {
            ClientError::Timeout { url: self.base.clone(), after: self.request_timeout }
        } else {
            ClientError::Http(error)
        }
    }
}

/// Checks that `input` is a usable agent base URL.
pub fn parse_base_url(input: &str) -> Result<Url, ClientError> {
    let invalid = |reason: String| ClientError::InvalidUrl { url: input.to_owned(), reason };
    let trimmed = input.trim();
    if !trimmed.contains("://") {
        return Err(invalid(format!("no scheme; did you mean http://{trimmed} ?")));
    }
    let url = Url::parse(trimmed).map_err(|e| invalid(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!("scheme {:?} is neither http nor https", url.scheme())));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host".into()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("a base URL takes no query or fragment".into()));
    }
    Ok(url)
}

/// Lowercase hex sha256: the name of a model on the agent.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// One line describing `error` and its causes, for people. From a reqwest
/// error on only the innermost cause is kept: reqwest's and hyper's wrappers
/// repeat the URL or say nothing new, the innermost cause says what happened
/// ("Connection refused").
pub fn error_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut next = Some(error);
    while let Some(cause) = next {
        if cause.is::<reqwest::Error>() {
            parts.push(root_cause(cause).to_string());
            break;
        }
        parts.push(cause.to_string());
        next = cause.source();
    }
    parts.join(": ")
}

fn root_cause<'a>(error: &'a (dyn std::error::Error + 'static)) -> &'a (dyn std::error::Error + 'static) {
    let mut cause = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause
}

/// Passes 2xx answers, turns the others into errors.
async fn checked(response: Response) -> Result<Response, ClientError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    // An unreadable error body still leaves the status to report.
    let body = response.text().await.unwrap_or_default();
    Err(error_from_answer(status, &body))
}

async fn decode<T: DeserializeOwned>(response: Response) -> Result<T, ClientError> {
    let url = response.url().clone();
    let body = response.text().await.map_err(ClientError::Http)?;
    serde_json::from_str(&body).map_err(|source| ClientError::Decode { url, source })
}

/// The error a non-2xx answer stands for.
fn error_from_answer(status: StatusCode, body: &str) -> ClientError {
    match serde_json::from_str::<ErrorBody>(body) {
        Ok(ErrorBody { error }) => {
            ClientError::Api { status: status.as_u16(), code: error.code, message: error.message }
        }
        Err(_) => ClientError::UnexpectedStatus { status: status.as_u16(), body: quote(body) },
    }
}

/// `body` shortened for an error message.
fn quote(body: &str) -> String {
    let body = body.trim();
    if body.is_empty() {
        return "(empty body)".into();
    }
    match body.char_indices().nth(MAX_QUOTED_BODY) {
        Some((end, _)) => format!("{}…", &body[..end]),
        None => body.to_owned(),
    }
}

/// The wire name of `code` ("unsupported_model"), as users see it in the API docs.
fn http_client(connect_timeout: Duration) -> Result<reqwest::Client, ClientError> {
    reqwest::Client::builder().connect_timeout(connect_timeout).build().map_err(ClientError::Http)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_is_lowercase_hex() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(sha256_hex(b"").len(), 64);
    }

    #[test]
    fn base_urls_are_validated() {
        for good in ["http://127.0.0.1:7878", "https://dev.local", " http://h:1/prefix/ "] {
            assert!(parse_base_url(good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("127.0.0.1:7878", "no scheme"),
            ("ftp://h", "neither http nor https"),
            ("http://", "empty host"),
            ("http://h:1/?x=1", "no query"),
            ("http://h:99999", "invalid port"),
        ] {
            let error = AgentClient::new(bad, None).unwrap_err();
            assert!(matches!(error, ClientError::InvalidUrl { .. }), "{bad}: {error:?}");
            assert!(error.to_string().contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn endpoints_keep_the_base_path() {
        let client = AgentClient::new("http://h:1/agent/", None).unwrap();
        assert_eq!(client.endpoint(&["models", "ab"]).as_str(), "http://h:1/agent/v1/models/ab");
        let client = AgentClient::new("http://h:1", None).unwrap();
        assert_eq!(client.endpoint(&["info"]).as_str(), "http://h:1/v1/info");
        // A hostile "sha" cannot leave its path segment.
        assert_eq!(client.endpoint(&["models", "../x?y"]).as_str(), "http://h:1/v1/models/..%2Fx%3Fy");
    }

    #[test]
    fn debug_hides_the_token() {
        let client = AgentClient::new("http://h:1", Some("s3cret".into())).unwrap();
        assert!(!format!("{client:?}").contains("s3cret"));
    }

    #[test]
    fn error_bodies_become_api_errors() {
        let body = serde_json::to_string(&ErrorBody::new(ErrorCode::UnsupportedModel, "op Foo")).unwrap();
        let error = error_from_answer(StatusCode::UNPROCESSABLE_ENTITY, &body);
        assert!(matches!(error, ClientError::Api { status: 422, code: ErrorCode::UnsupportedModel, .. }));
        assert_eq!(error.to_string(), "agent answered 422 unsupported_model: op Foo");
    }

    #[test]
    fn other_error_answers_keep_status_and_text() {
        let error = error_from_answer(StatusCode::BAD_GATEWAY, "  upstream down\n");
        assert_eq!(error.to_string(), "agent answered 502: upstream down");
        let error = error_from_answer(StatusCode::NOT_FOUND, "");
        assert_eq!(error.to_string(), "agent answered 404: (empty body)");
        let long = "é".repeat(2 * MAX_QUOTED_BODY);
        let ClientError::UnexpectedStatus { body, .. } = error_from_answer(StatusCode::BAD_GATEWAY, &long) else {
            panic!("not an UnexpectedStatus");
        };
        assert_eq!(body.chars().count(), MAX_QUOTED_BODY + 1);
    }

    #[test]
    fn retry_delays_double() {
        let retry = RetryPolicy::default();
        let delays: Vec<_> = (1..retry.attempts).map(|a| retry.delay_after(a)).collect();
        assert_eq!(delays, [200, 400, 800].map(Duration::from_millis));
    }

    #[tokio::test]
    async fn unreachable_agents_give_connect_errors_after_retries() {
        // Port 1 on loopback: nothing listens there, so connecting fails at once.
        let client = AgentClient::new("http://127.0.0.1:1", None)
            .unwrap()
            .with_retry(RetryPolicy { attempts: 2, initial_delay: Duration::from_millis(1) });
        let error = client.health().await.unwrap_err();
        assert!(matches!(error, ClientError::Connect { .. }), "{error:?}");
        assert_eq!(error.to_string(), "cannot connect to agent at http://127.0.0.1:1/");
        let line = error_line(&error);
        assert!(line.starts_with("cannot connect to agent at http://127.0.0.1:1/: Connection refused"), "{line}");
    }

    /// Answers each connection with the next of `answers` (raw HTTP).
    async fn scripted_agent(answers: Vec<String>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            for answer in answers {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                stream.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        format!("http://{addr}")
    }

    fn answer(status: &str, headers: &str, body: &str) -> String {
        format!("HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
    }

    #[tokio::test]
    async fn a_busy_agent_is_asked_again_after_its_retry_after() {
        let busy = serde_json::to_string(&ErrorBody::new(ErrorCode::Busy, "queue full")).unwrap();
        let ok = r#"{"status":"ok","version":"0"}"#;
        let url = scripted_agent(vec![
            answer("503 Service Unavailable", "Retry-After: 1\r\n", &busy),
            answer("200 OK", "", ok),
        ])
        .await;
        let started = std::time::Instant::now();
        let health = AgentClient::new(&url, None).unwrap().health().await.unwrap();
        assert_eq!(health.status, "ok");
        assert!(started.elapsed() >= Duration::from_secs(1), "waited as asked");
    }

    #[tokio::test]
    async fn a_degraded_health_is_read_not_refused() {
        let degraded = r#"{"status":"degraded","version":"0","reason":"no worker"}"#;
        let url = scripted_agent(vec![answer("503 Service Unavailable", "", degraded)]).await;
        let health = AgentClient::new(&url, None).unwrap().health().await.unwrap();
        assert_eq!((health.status.as_str(), health.reason.as_deref()), ("degraded", Some("no worker")));
    }
}
