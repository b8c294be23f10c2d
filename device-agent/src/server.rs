//! The HTTP API of DESIGN §5: small handlers over explicit shared state.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use edgeloop_api::{DeviceInfo, ErrorCode, Health, MeasureRequest, Measurement, ModelInfo};
use futures_util::StreamExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::device::{MachineFacts, SystemRoots, device_id, device_info};
use crate::energy::{MeterConfig, SensorChoice};
use crate::engine::Sensors;
use crate::error::ApiError;
use crate::limits::Limits;
use crate::runtime::{RuntimeSettings, Runtimes};
use crate::store::{ModelStore, StoreError, Stored, check_hash};
use crate::thermal::MonitorConfig;
use crate::worker::{Isolation, JobSpec, Measurer, Worker, WorkerSettings};

/// How an agent is set up; `edgeloop-agent serve` fills it from flags.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub cache_dir: PathBuf,
    /// Bearer token; `None` leaves the API open (loopback only).
    pub token: Option<String>,
    pub max_model_bytes: u64,
    pub cache_max_bytes: u64,
    pub device_id: Option<String>,
    /// Where machine facts and sensors are read (`roots.sys` is `--sysfs-root`).
    pub roots: SystemRoots,
    pub energy_sensor: SensorChoice,
    pub meter: MeterConfig,
    pub monitor: MonitorConfig,
    /// What [`Runtimes::detect`] loads (the agent itself takes the runtimes
    /// it is given, so that tests can give others; a worker process loads
    /// these).
    pub runtimes: RuntimeSettings,
    pub limits: Limits,
    pub worker: WorkerSettings,
    /// Longest wait for the next bytes of a request body; a whole body gets
    /// [`BODY_DEADLINE_FACTOR`] times this.
    pub read_timeout: Duration,
}

/// A request body must arrive within this many read timeouts in all, so
/// that a client trickling bytes cannot hold a connection forever.
pub const BODY_DEADLINE_FACTOR: u32 = 10;

impl AgentConfig {
    pub fn new(cache_dir: PathBuf) -> Self {
        AgentConfig {
            cache_dir,
            token: None,
            max_model_bytes: 256 << 20,
            cache_max_bytes: 4096 << 20,
            device_id: None,
            roots: SystemRoots::default(),
            energy_sensor: SensorChoice::Auto,
            meter: MeterConfig::default(),
            monitor: MonitorConfig::default(),
            runtimes: RuntimeSettings::default(),
            limits: Limits::default(),
            // A library cannot know that its process can run as a worker:
            // `edgeloop-agent serve` chooses process isolation itself.
            worker: WorkerSettings {
                isolation: Isolation::Thread,
                max_queue: 32,
                job_timeout: Duration::from_secs(300),
                max_worker_bytes: None,
            },
            read_timeout: Duration::from_secs(30),
        }
    }

    /// What the measuring engine reads, per this config.
    pub fn sensors(&self) -> Sensors {
        Sensors {
            sys: self.roots.sys.clone(),
            proc: self.roots.proc.clone(),
            energy_sensor: self.energy_sensor.clone(),
            meter: self.meter,
            monitor: self.monitor,
        }
    }
}

/// Refuses to expose an unauthenticated agent beyond this machine.
pub fn check_listen_addr(addr: SocketAddr, has_token: bool) -> Result<(), String> {
    if has_token || addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(format!(
            "refusing to listen on {addr} without a token: anyone who can reach it could make this device run \
             arbitrary models. Give --token-file PATH (or EDGELOOP_TOKEN), or listen on 127.0.0.1 and forward \
             the port (adb forward / ssh -L)."
        ))
    }
}

struct AppState {
    token_digest: Option<[u8; 32]>,
    max_model_bytes: u64,
    limits: Limits,
    read_timeout: Duration,
    store: Arc<ModelStore>,
    worker: Worker,
    device_id: String,
    facts: MachineFacts,
    roots: SystemRoots,
    energy_sensor: SensorChoice,
    runtimes: Runtimes,
}

/// A configured agent: model store open, measuring thread started.
#[derive(Clone)]
pub struct Agent {
    state: Arc<AppState>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cache dir {path}: {source}")]
    CacheDir { path: PathBuf, source: std::io::Error },
    #[error("starting the measurement supervisor: {0}")]
    Worker(std::io::Error),
    #[error("opening a loopback listener: {0}")]
    Listen(std::io::Error),
}

impl Agent {
    pub fn new(config: AgentConfig, runtimes: Runtimes) -> Result<Self, AgentError> {
        let store = Arc::new(ModelStore::open(&config.cache_dir.join("models"), config.cache_max_bytes)?);
        let facts = MachineFacts::read(&config.roots);
        let device_id = device_id(&config.cache_dir, &facts, config.device_id.as_deref())
            .map_err(|source| AgentError::CacheDir { path: config.cache_dir.clone(), source })?;
        let measurer = Measurer {
            device_id: device_id.clone(),
            runtimes: runtimes.clone(),
            sensors: config.sensors(),
            limits: config.limits,
            // A thread cannot be given a memory limit of its own.
            max_memory_bytes: None,
        };
        let worker =
            Worker::start(measurer, config.runtimes.clone(), config.worker.clone()).map_err(AgentError::Worker)?;
        let state = AppState {
            token_digest: config.token.as_deref().map(|t| Sha256::digest(t.as_bytes()).into()),
            max_model_bytes: config.max_model_bytes,
            limits: config.limits,
            read_timeout: config.read_timeout,
            store,
            worker,
            device_id,
            facts,
            roots: config.roots,
            energy_sensor: config.energy_sensor,
            runtimes,
        };
        Ok(Agent { state: Arc::new(state) })
    }

    pub fn device_id(&self) -> &str {
        &self.state.device_id
    }

    pub fn info(&self) -> DeviceInfo {
        self.state.info()
    }

    pub fn router(&self) -> Router {
        let authed = Router::new()
            .route("/v1/info", get(info))
            // These handlers read their bodies themselves, with a size limit
            // and a read timeout, to answer 413 and 408 with a JSON body.
            .route("/v1/models/{sha256}", get(model_info).put(upload))
            .route("/v1/measure", post(measure))
            .layer(DefaultBodyLimit::disable())
            .route_layer(middleware::from_fn_with_state(self.state.clone(), require_token));
        Router::new()
            .route("/v1/health", get(health))
            .merge(authed)
            .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such endpoint; see DESIGN §5 or README") })
            .method_not_allowed_fallback(|| async {
                ApiError::new(ErrorCode::MethodNotAllowed, "this endpoint does not take that method; see DESIGN §5")
            })
            .with_state(self.state.clone())
    }

    /// Serves HTTP/1.1 until `shutdown` resolves, then waits for the
    /// requests in flight. A client must send its request head within the
    /// read timeout, so an idle or trickling connection cannot be held.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let router = self.router();
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(self.state.read_timeout);
        let connections = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    // Out of file descriptors and the like: wait rather than spin.
                    Err(e) => {
                        log::warn!("accepting a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            // Small JSON answers must not wait for Nagle.
            let _ = stream.set_nodelay(true);
            let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router.clone()));
            let connection = connections.watch(connection);
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    log::debug!("connection ended: {e}");
                }
            });
        }
        connections.shutdown().await;
        Ok(())
    }
}

async fn require_token(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let Some(expected) = state.token_digest else { return next.run(request).await };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Comparing digests keeps the comparison constant-time in the token's length too.
    let ok = presented.is_some_and(|t| {
        let digest: [u8; 32] = Sha256::digest(t.trim().as_bytes()).into();
        bool::from(digest.ct_eq(&expected))
    });
    if ok {
        next.run(request).await
    } else {
        let message = if presented.is_some() { "bad token" } else { "missing `Authorization: Bearer <token>`" };
        closing(ApiError::new(ErrorCode::Unauthorized, message).into_response())
    }
}

/// Marks an answer given before the request body was read: the rest of the
/// body is never read, so the connection must not be reused (a client that
/// reused it would see its next request cut off).
fn closing(mut response: Response) -> Response {
    response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    response
}

impl AppState {
    fn info(&self) -> DeviceInfo {
        let info = device_info(&self.device_id, &self.facts, &self.roots, &self.runtimes, &self.energy_sensor);
        DeviceInfo { agent: Some(self.worker.status()), ..info }
    }
}

/// 200 `ok`, or 503 `degraded` with the reason while no worker can start.
async fn health(State(state): State<Arc<AppState>>) -> Response {
    let reason = state.worker.degraded();
    let status = if reason.is_some() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    let health = Health {
        status: if reason.is_some() { "degraded" } else { "ok" }.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        reason,
    };
    (status, Json(health)).into_response()
}

async fn info(State(state): State<Arc<AppState>>) -> Json<DeviceInfo> {
    Json(state.info())
}

async fn model_info(
    State(state): State<Arc<AppState>>,
    sha256: Result<Path<String>, PathRejection>,
) -> Result<Json<ModelInfo>, ApiError> {
    let sha256 = model_hash(sha256)?;
    state.store.info(&sha256).map(Json).ok_or_else(|| ApiError::unknown_model(&sha256))
}

/// The `{sha256}` of a models path; a path that does not decode, or is no
/// sha256, is a bad request.
fn model_hash(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(sha256) = path.map_err(|e| ApiError::bad_request(format!("model path: {}", e.body_text())))?;
    check_hash(&sha256).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(sha256)
}

fn too_large(what: &str, max: u64, flag: &str) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("{what} is larger than this agent's limit of {max} bytes ({flag})"),
    )
}

/// Reads a request body of at most `limit` bytes. Each chunk must come
/// within `timeout`, the whole body within [`BODY_DEADLINE_FACTOR`] times it.
async fn read_body(body: Body, limit: u64, timeout: Duration, what: &str, flag: &str) -> Result<Bytes, ApiError> {
    let deadline = Instant::now() + timeout * BODY_DEADLINE_FACTOR;
    let slow = || {
        ApiError::new(
            ErrorCode::RequestTimeout,
            format!(
                "{what} arrived too slowly: no bytes for {} s, or not all within {} s",
                timeout.as_secs_f64(),
                (timeout * BODY_DEADLINE_FACTOR).as_secs_f64()
            ),
        )
    };
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    loop {
        let wait = timeout.min(deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(wait, stream.next()).await {
            Err(_) => return Err(slow()),
            Ok(None) => return Ok(Bytes::from(bytes)),
            Ok(Some(Err(e))) => return Err(ApiError::bad_request(format!("reading {what}: {e}"))),
            Ok(Some(Ok(chunk))) => {
                if (bytes.len() + chunk.len()) as u64 > limit {
                    return Err(too_large(what, limit, flag));
                }
                bytes.extend_from_slice(&chunk);
            }
        }
    }
}

async fn upload(
    State(state): State<Arc<AppState>>,
    sha256: Result<Path<String>, PathRejection>,
    body: Body,
) -> Response {
    // Answers before the body is read close the connection (see `closing`).
    let sha256 = match model_hash(sha256) {
        Ok(sha256) => sha256,
        Err(e) => return closing(e.into_response()),
    };
    if let Some(info) = state.store.info(&sha256) {
        return closing((StatusCode::OK, Json(info)).into_response());
    }
    let bytes = match read_body(body, state.max_model_bytes, state.read_timeout, "the model", "--max-model-mb").await {
        Ok(bytes) => bytes,
        Err(e) => return closing(e.into_response()),
    };
    let (store, limits) = (state.store.clone(), state.limits);
    let stored = tokio::task::spawn_blocking(move || -> Result<(Stored, ModelInfo), ApiError> {
        // Refuse what is not ONNX, or asks too much, now rather than at measure time.
        crate::limits::decode_checked(&bytes, &limits)?;
        let stored = store.put(&sha256, &bytes).map_err(|e| match e {
            StoreError::BadHash(_) | StoreError::HashMismatch { .. } => ApiError::bad_request(e.to_string()),
            StoreError::Io { .. } => ApiError::internal(e),
        })?;
        Ok((stored, ModelInfo { sha256, size_bytes: bytes.len() as u64 }))
    })
    .await
    .map_err(ApiError::internal)
    .and_then(|r| r);
    match stored {
        Ok((Stored::New, info)) => (StatusCode::CREATED, Json(info)).into_response(),
        Ok((Stored::AlreadyPresent, info)) => (StatusCode::OK, Json(info)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Largest `POST /v1/measure` body: a request is a few hundred bytes.
const MAX_REQUEST_BYTES: u64 = 64 << 10;

async fn measure(State(state): State<Arc<AppState>>, body: Body) -> Result<Json<Measurement>, ApiError> {
    let bytes = read_body(body, MAX_REQUEST_BYTES, state.read_timeout, "the request", "64 KiB").await?;
    let request: MeasureRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the request is not a MeasureRequest: {e}")))?;
    check_hash(&request.model).map_err(|e| ApiError::bad_request(format!("model: {e}")))?;
    let model_path = state.store.locate(&request.model).ok_or_else(|| ApiError::unknown_model(&request.model))?;
    state.worker.measure(JobSpec { request, model_path }).await.map(Json)
}

/// The router's edge cases, each request sent straight into it
/// (`oneshot`, no socket): every refusal is a JSON `ErrorBody` whose code
/// goes with its status.
#[cfg(test)]
mod tests {
    use axum::http::Method;
    use edgeloop_api::ErrorBody;
    use tower::ServiceExt as _;

    use super::*;
    use crate::runtime::TractRuntime;

    const TOKEN: &str = "router-test-token";

    fn agent(dir: &std::path::Path) -> Agent {
        let config = AgentConfig { token: Some(TOKEN.into()), ..AgentConfig::new(dir.to_path_buf()) };
        let mut runtimes = Runtimes::default();
        runtimes.add(Arc::new(TractRuntime));
        Agent::new(config, runtimes).unwrap()
    }

    async fn send(agent: &Agent, method: Method, uri: &str, token: Option<&str>, body: Vec<u8>) -> (StatusCode, Bytes) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let response = agent.router().oneshot(request.body(Body::from(body)).unwrap()).await.unwrap();
        let status = response.status();
        (status, axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap())
    }

    /// The error of a refusal, checked to be the JSON body every refusal has.
    fn error(status: StatusCode, body: &[u8], expected: (StatusCode, ErrorCode)) -> String {
        let parsed: ErrorBody = serde_json::from_slice(body)
            .unwrap_or_else(|e| panic!("{status}: not an ErrorBody ({e}): {}", String::from_utf8_lossy(body)));
        assert_eq!((status, parsed.error.code), expected, "{}", parsed.error.message);
        parsed.error.message
    }

    #[tokio::test]
    async fn unknown_routes_and_methods_are_json_errors() {
        let dir = tempfile::tempdir().unwrap();
        let agent = agent(dir.path());
        let (status, body) = send(&agent, Method::GET, "/v2/info", Some(TOKEN), vec![]).await;
        error(status, &body, (StatusCode::NOT_FOUND, ErrorCode::NotFound));
        let (status, body) = send(&agent, Method::GET, "/v1/measure", Some(TOKEN), vec![]).await;
        error(status, &body, (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::MethodNotAllowed));
        let (status, body) = send(&agent, Method::DELETE, "/v1/health", None, vec![]).await;
        error(status, &body, (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::MethodNotAllowed));
    }

    #[tokio::test]
    async fn health_is_open_and_everything_else_needs_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let agent = agent(dir.path());
        let (status, _) = send(&agent, Method::GET, "/v1/health", None, vec![]).await;
        assert_eq!(status, StatusCode::OK);
        for token in [None, Some("wrong"), Some("")] {
            let (status, body) = send(&agent, Method::GET, "/v1/info", token, vec![]).await;
            error(status, &body, (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized));
        }
        let (status, body) = send(&agent, Method::GET, "/v1/info", Some(TOKEN), vec![]).await;
        assert_eq!(status, StatusCode::OK);
        let info: DeviceInfo = serde_json::from_slice(&body).unwrap();
        assert_eq!(info.device_id, agent.device_id());
    }

    #[tokio::test]
    async fn uploads_check_the_hash_and_the_model() {
        let dir = tempfile::tempdir().unwrap();
        let agent = agent(dir.path());
        let model = edgeloop_onnx::encode(&edgeloop_onnx::samples::MbconvNet::small().to_model());
        let sha = crate::store::sha256_hex(&model);

        let (status, body) = send(&agent, Method::PUT, "/v1/models/not-a-hash", Some(TOKEN), model.clone()).await;
        error(status, &body, (StatusCode::BAD_REQUEST, ErrorCode::BadRequest));
        let other = "0".repeat(64);
        let (status, body) =
            send(&agent, Method::PUT, &format!("/v1/models/{other}"), Some(TOKEN), model.clone()).await;
        let message = error(status, &body, (StatusCode::BAD_REQUEST, ErrorCode::BadRequest));
        assert!(message.contains(&sha), "{message}");
        let garbage = b"not onnx".to_vec();
        let garbage_sha = crate::store::sha256_hex(&garbage);
        let (status, body) =
            send(&agent, Method::PUT, &format!("/v1/models/{garbage_sha}"), Some(TOKEN), garbage).await;
        assert!(status.is_client_error(), "{status}");
        serde_json::from_slice::<ErrorBody>(&body).unwrap();

        let uri = format!("/v1/models/{sha}");
        assert_eq!(send(&agent, Method::GET, &uri, Some(TOKEN), vec![]).await.0, StatusCode::NOT_FOUND);
        assert_eq!(send(&agent, Method::PUT, &uri, Some(TOKEN), model.clone()).await.0, StatusCode::CREATED);
        assert_eq!(send(&agent, Method::PUT, &uri, Some(TOKEN), model).await.0, StatusCode::OK);
        let (status, body) = send(&agent, Method::GET, &uri, Some(TOKEN), vec![]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(serde_json::from_slice::<ModelInfo>(&body).unwrap().sha256, sha);
    }

    #[tokio::test]
    async fn measure_requests_are_checked_before_anything_runs() {
        let dir = tempfile::tempdir().unwrap();
        let agent = agent(dir.path());
        let measure = |body: Vec<u8>| send(&agent, Method::POST, "/v1/measure", Some(TOKEN), body);

        let (status, body) = measure(b"{not json".to_vec()).await;
        error(status, &body, (StatusCode::BAD_REQUEST, ErrorCode::BadRequest));
        let (status, body) = measure(br#"{"model": "abc"}"#.to_vec()).await;
        let message = error(status, &body, (StatusCode::BAD_REQUEST, ErrorCode::BadRequest));
        assert!(message.starts_with("model:"), "{message}");
        let unknown =
            serde_json::to_vec(&MeasureRequest { model: "0".repeat(64), ..MeasureRequest::default() }).unwrap();
        let (status, body) = measure(unknown).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        serde_json::from_slice::<ErrorBody>(&body).unwrap();
        let (status, body) = measure(vec![b' '; (MAX_REQUEST_BYTES + 1) as usize]).await;
        error(status, &body, (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge));
    }
}
