//! Wire types of the edgeloop agent API (DESIGN §5).
//!
//! Both the agent (server) and the host (client) use these, so this crate
//! depends on serde alone: it must build for every target the agent ships to.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// API version prefix of every route.
pub const API_PREFIX: &str = "/v1";

/// `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok`, or `degraded` while no measuring worker can start.
    pub status: String,
    pub version: String,
    /// Why the agent is degraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// How a serving agent's measurements are going (`/v1/info`'s `agent`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// `process` (a supervised child measures) or `thread`.
    pub isolation: String,
    /// Whether a measurement is running now.
    pub measuring: bool,
    /// Measurements waiting for their turn, the running one excluded.
    pub queue_depth: usize,
    /// Beyond this many waiting, requests are answered 503 `busy`.
    pub max_queue: usize,
    /// Workers started again after a crash, an out-of-memory kill or a timeout.
    pub worker_restarts: u64,
    /// Queued measurements dropped because their client had gone away.
    pub cancelled: u64,
    /// Spawn-to-ready time of the newest worker process, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_start_ms: Option<f64>,
    /// Why no worker can start, while that lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
}

/// One inference runtime the agent can measure with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeInfo {
    pub name: String,
    pub version: String,
    /// Precisions this runtime executes natively on this device (e.g. "fp32", "int8"),
    /// as the agent found out by running probe models.
    pub precisions: Vec<String>,
    /// Precisions probed for but not executed natively here, with the reason
    /// (no kernel, or run by converting to another type).
    #[serde(default)]
    pub precisions_unavailable: BTreeMap<String, String>,
}

/// A thermal zone found under `/sys/class/thermal`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThermalZone {
    pub name: String,
    pub kind: String,
    pub temp_c: Option<f64>,
}

/// `GET /v1/info`: what the device is and what it can measure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Stable across agent restarts; names latency tables.
    pub device_id: String,
    pub agent_version: String,
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub cpu_model: String,
    pub logical_cores: usize,
    pub memory_mb: u64,
    pub runtimes: Vec<RuntimeInfo>,
    /// Runtimes this build knows but could not load, with the reason.
    #[serde(default)]
    pub runtimes_unavailable: BTreeMap<String, String>,
    pub energy_sensors: Vec<String>,
    /// Why `energy: true` cannot be measured here, when no sensor is usable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_unavailable_reason: Option<String>,
    pub thermal_zones: Vec<ThermalZone>,
    /// The serving agent's queue and workers (absent from `edgeloop-agent info`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentStatus>,
}

/// `GET /v1/models/{sha256}`: a model the agent holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub sha256: String,
    pub size_bytes: u64,
}

/// `POST /v1/measure`. Fields left out take the defaults of DESIGN §6.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MeasureRequest {
    /// sha256 (hex) of a model uploaded with `PUT /v1/models/{sha256}`.
    pub model: String,
    pub runtime: String,
    pub threads: usize,
    pub warmup_runs: usize,
    pub min_runs: usize,
    pub min_duration_ms: u64,
    pub max_duration_ms: u64,
    /// Input name → concrete shape, required for inputs with dynamic dimensions.
    pub inputs: BTreeMap<String, Vec<usize>>,
    /// CPU affinity of the measuring threads (logical CPU numbers).
    pub cpus: Option<Vec<usize>>,
    /// Measure energy per inference with the agent's power sensor.
    pub energy: bool,
    /// Also return per-node times (`Measurement::ops`), from extra runs
    /// after the timed ones so profiling does not slow the latency figures.
    pub profile_ops: bool,
    /// Before measuring, wait until every thermal zone is below this
    /// temperature (°C), for at most `cooldown_timeout_ms`.
    pub cooldown_c: Option<f64>,
    pub cooldown_timeout_ms: u64,
    /// Return every timed run in `samples_ms`.
    pub keep_samples: bool,
    /// Seed of the random input tensors.
    pub seed: u64,
}

impl Default for MeasureRequest {
    fn default() -> Self {
        // In the spirit of TFLite's benchmark_model: 50 runs and 1 s at least, 30 s cap.
        MeasureRequest {
            model: String::new(),
            runtime: "tract".into(),
            threads: 1,
            warmup_runs: 10,
            min_runs: 50,
            min_duration_ms: 1000,
            max_duration_ms: 30_000,
            inputs: BTreeMap::new(),
            cpus: None,
            energy: false,
            profile_ops: false,
            cooldown_c: None,
            cooldown_timeout_ms: 120_000,
            keep_samples: false,
            seed: 0,
        }
    }
}

impl MeasureRequest {
    pub fn for_model(sha256: impl Into<String>) -> Self {
        MeasureRequest { model: sha256.into(), ..Default::default() }
    }
}

/// Summary statistics of the timed runs, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencyStats {
    pub n: usize,
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnergyStats {
    /// Energy of one inference above the idle baseline, in millijoules.
    pub mj_per_inference: f64,
    /// Average power over the window, baseline included, in watts.
    pub avg_power_w: f64,
    /// Power measured just before the window with the device idle, in watts.
    pub idle_power_w: f64,
    /// The sensor (and rail or domain) read, e.g. `rapl:package-0`.
    pub sensor: String,
    pub window_ms: f64,
    /// Inferences run during the window.
    pub inferences: usize,
    /// Sensor readings taken during the window.
    pub readings: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThermalStats {
    /// Hottest thermal zone before and after the timed runs, °C.
    pub start_c: Option<f64>,
    pub end_c: Option<f64>,
    /// Mean frequency of the measuring CPUs before and after, MHz.
    pub cpu_freq_start_mhz: Option<f64>,
    pub cpu_freq_end_mhz: Option<f64>,
    /// Lowest mean frequency seen while the runs went on, MHz.
    #[serde(default)]
    pub cpu_freq_min_mhz: Option<f64>,
    /// The frequency dropped beyond the agent's threshold, or a passive trip
    /// point was crossed, while measuring: the latency figures are suspect.
    pub throttled: bool,
    /// Why `throttled` is set, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_reason: Option<String>,
    /// Time spent waiting for `cooldown_c` before measuring, ms.
    #[serde(default)]
    pub cooldown_wait_ms: f64,
}

/// What else kept the device's CPUs busy while the model was timed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LoadStats {
    /// Mean number of logical CPUs busy with work other than the agent's
    /// own over the timed window (steal time included); near 0 on a quiet device.
    pub other_busy_cores: f64,
    pub window_ms: f64,
}

/// Time spent in one node of the model (per-op profile).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpTime {
    /// The node's name in the runtime's optimised graph (derived from the ONNX node name).
    pub node: String,
    pub op_type: String,
    /// Mean time per run, ms.
    pub ms: f64,
    /// Share of the summed node times, 0..1.
    pub share: f64,
}

/// Answer of `POST /v1/measure`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    pub model: String,
    pub device_id: String,
    pub runtime: String,
    pub runtime_version: String,
    pub threads: usize,
    pub load_ms: f64,
    pub first_run_ms: f64,
    pub warmup_runs: usize,
    pub latency_ms: LatencyStats,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples_ms: Option<Vec<f64>>,
    pub energy: Option<EnergyStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_unavailable_reason: Option<String>,
    pub thermal: Option<ThermalStats>,
    /// Other load on the device during the timed runs (Linux agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<LoadStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<Vec<OpTime>>,
    /// CPUs the measuring thread was allowed to run on, read back with
    /// `sched_getaffinity` during the runs (only when `cpus` was requested).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Vec<usize>>,
    pub queue_wait_ms: f64,
    /// Unix time (µs) when the first timed run started.
    pub started_at: u64,
    /// Unix time (µs) when the last timed run ended.
    pub finished_at: u64,
}

/// Machine-readable error codes of the `{"error": {...}}` body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    MalformedModel,
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    UnsupportedModel,
    RuntimeUnavailable,
    RuntimeCrashed,
    /// The device stayed above the requested cool-down temperature.
    TooHot,
    /// The model needs more than one of the agent's limits allows (input
    /// size, graph size, worker memory).
    LimitExceeded,
    /// The client sent its request too slowly.
    RequestTimeout,
    /// The measurement queue is full; retry after the `Retry-After` seconds.
    Busy,
    /// No measuring worker can start on this agent.
    WorkerUnavailable,
    /// Load and measurement ran past the agent's wall-clock cap.
    Timeout,
    Internal,
}

impl ErrorCode {
    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::MalformedModel => "malformed_model",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedModel => "unsupported_model",
            ErrorCode::RuntimeUnavailable => "runtime_unavailable",
            ErrorCode::RuntimeCrashed => "runtime_crashed",
            ErrorCode::TooHot => "too_hot",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::Busy => "busy",
            ErrorCode::WorkerUnavailable => "worker_unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status each code is answered with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::MalformedModel => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::UnsupportedModel | ErrorCode::RuntimeUnavailable | ErrorCode::LimitExceeded => 422,
            ErrorCode::RuntimeCrashed | ErrorCode::Internal => 500,
            ErrorCode::TooHot | ErrorCode::Busy | ErrorCode::WorkerUnavailable => 503,
            ErrorCode::Timeout => 504,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
}

/// Body of every non-2xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody { error: ErrorDetail { code, message: message.into() } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_defaults_fill_missing_fields() {
        let req: MeasureRequest = serde_json::from_str(r#"{"model":"ab","min_runs":3}"#).unwrap();
        assert_eq!(req.model, "ab");
        assert_eq!(req.min_runs, 3);
        assert_eq!(req.warmup_runs, MeasureRequest::default().warmup_runs);
        assert_eq!(req.runtime, "tract");
    }

    #[test]
    fn unknown_request_fields_are_refused() {
        assert!(serde_json::from_str::<MeasureRequest>(r#"{"model":"ab","runz":3}"#).is_err());
    }

    #[test]
    fn error_body_shape() {
        let body = ErrorBody::new(ErrorCode::PayloadTooLarge, "too big");
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(json["error"]["code"], "payload_too_large");
        assert_eq!(json["error"]["message"], "too big");
        assert_eq!(ErrorCode::PayloadTooLarge.http_status(), 413);
        for code in [ErrorCode::BadRequest, ErrorCode::RuntimeUnavailable, ErrorCode::Internal] {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }
}
