//! The HTTP API of DESIGN §5: small handlers over explicit shared state.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use edgeloop_api::{DeviceInfo, ErrorCode, Health, MeasureRequest, Measurement, ModelInfo};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::device::{MachineFacts, SystemRoots, device_id, device_info};
use crate::energy::{MeterConfig, SensorChoice};
use crate::engine::Sensors;
use crate::error::ApiError;
use crate::runtime::{RuntimeSettings, Runtimes};
use crate::store::{ModelStore, StoreError, Stored, check_hash};
use crate::thermal::MonitorConfig;
use crate::worker::{Measurer, Worker};

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
    /// it is given, so that tests can give others).
    pub runtimes: RuntimeSettings,
}

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
    #[error("starting the measurement thread: {0}")]
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
            store: store.clone(),
            sensors: config.sensors(),
        };
        let worker = Worker::start(measurer).map_err(AgentError::Worker)?;
        let state = AppState {
            token_digest: config.token.as_deref().map(|t| Sha256::digest(t.as_bytes()).into()),
            max_model_bytes: config.max_model_bytes,
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
        let s = &self.state;
        device_info(&s.device_id, &s.facts, &s.roots, &s.runtimes, &s.energy_sensor)
    }

    pub fn router(&self) -> Router {
        let authed = Router::new()
            .route("/v1/info", get(info))
            .route(
                "/v1/models/{sha256}",
                // The upload handler enforces --max-model-mb itself, to answer 413 with a JSON body.
                get(model_info).put(upload).layer(DefaultBodyLimit::disable()),
            )
            .route("/v1/measure", post(measure))
            .route_layer(middleware::from_fn_with_state(self.state.clone(), require_token));
        Router::new()
            .route("/v1/health", get(health))
            .merge(authed)
            .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such endpoint; see DESIGN §5 or README") })
            .with_state(self.state.clone())
    }

    /// Serves until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router()).with_graceful_shutdown(shutdown).await
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

async fn health() -> Json<Health> {
    Json(Health { status: "ok".into(), version: env!("CARGO_PKG_VERSION").into() })
}

async fn info(State(state): State<Arc<AppState>>) -> Json<DeviceInfo> {
    Json(device_info(&state.device_id, &state.facts, &state.roots, &state.runtimes, &state.energy_sensor))
}

async fn model_info(
    State(state): State<Arc<AppState>>,
    Path(sha256): Path<String>,
) -> Result<Json<ModelInfo>, ApiError> {
    check_hash(&sha256).map_err(|e| ApiError::bad_request(e.to_string()))?;
    state.store.info(&sha256).map(Json).ok_or_else(|| ApiError::unknown_model(&sha256))
}

fn too_large(max: u64) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("model is larger than this agent's limit of {} MB (--max-model-mb)", max >> 20),
    )
}

async fn upload(State(state): State<Arc<AppState>>, Path(sha256): Path<String>, body: Body) -> Response {
    // Answers before the body is read close the connection (see `closing`).
    if let Err(e) = check_hash(&sha256) {
        return closing(ApiError::bad_request(e.to_string()).into_response());
    }
    if let Some(info) = state.store.info(&sha256) {
        return closing((StatusCode::OK, Json(info)).into_response());
    }
    let max = state.max_model_bytes;
    let bytes = match to_bytes(body, max as usize).await {
        Ok(bytes) => bytes,
        // Length-limit errors are wrapped; anything else is a broken upload.
        Err(e) if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) => {
            return closing(too_large(max).into_response());
        }
        Err(e) => return closing(ApiError::bad_request(format!("reading upload: {e}")).into_response()),
    };
    let store = state.store.clone();
    let stored = tokio::task::spawn_blocking(move || -> Result<(Stored, ModelInfo), ApiError> {
        // Refuse what is not ONNX at all now, rather than at measure time.
        edgeloop_onnx::decode(&bytes).map_err(|e| ApiError::malformed_model(e.to_string()))?;
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

async fn measure(
    State(state): State<Arc<AppState>>,
    request: Result<Json<MeasureRequest>, JsonRejection>,
) -> Result<Json<Measurement>, ApiError> {
    let Json(request) = request.map_err(|e| ApiError::bad_request(e.body_text()))?;
    check_hash(&request.model).map_err(|e| ApiError::bad_request(format!("model: {e}")))?;
    state.worker.measure(request).await.map(Json)
}
