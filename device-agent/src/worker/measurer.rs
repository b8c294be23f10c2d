//! One measurement, in whatever process runs it: the model read from the
//! store, the engine run, its timings wrapped into the API's answer.

use std::path::Path;

use edgeloop_api::{MeasureRequest, Measurement};

use crate::engine::{self, MeasureError, Sensors};
use crate::error::ApiError;
use crate::limits::{InspectError, Limits};
use crate::runtime::Runtimes;

/// Everything a measurement needs besides the request.
pub struct Measurer {
    pub device_id: String,
    pub runtimes: Runtimes,
    pub sensors: Sensors,
    pub limits: Limits,
    /// The address-space limit this process runs under, if any.
    pub max_memory_bytes: Option<u64>,
}

impl Measurer {
    pub fn measure(&self, req: &MeasureRequest, model_path: &Path) -> Result<Measurement, ApiError> {
        let runtime = self
            .runtimes
            .get(&req.runtime)
            .ok_or_else(|| ApiError::runtime_unavailable(self.runtimes.unavailable_reason(&req.runtime)))?;
        let model = match std::fs::read(model_path) {
            Ok(bytes) => bytes,
            // Evicted since the server located it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ApiError::unknown_model(&req.model)),
            Err(e) => return Err(ApiError::internal(format!("reading {}: {e}", model_path.display()))),
        };
        let timings =
            engine::measure(runtime.as_ref(), &model, req, &self.sensors, &self.limits).map_err(|e| match e {
                MeasureError::Panic(m) if allocation_failed(&m) => needs_more_memory(self.max_memory_bytes, &m),
                e => e.into(),
            })?;
        log::info!(
            "measured model={} runtime={} n={} p50_ms={}",
            req.model,
            req.runtime,
            timings.stats.n,
            timings.stats.p50
        );
        Ok(timings.into_measurement(req, &self.device_id, runtime.as_ref()))
    }
}

impl From<InspectError> for ApiError {
    fn from(e: InspectError) -> Self {
        let message = e.to_string();
        match e {
            InspectError::Decode(_) | InspectError::Graph(_) => ApiError::malformed_model(message),
            InspectError::Limit(_) => ApiError::limit_exceeded(message),
            InspectError::Input(_) => ApiError::bad_request(message),
        }
    }
}

/// Whether a panic or a dying worker's last words tell of memory running
/// out: Rust's allocator, tract's buffers and `Vec` sizes each say it their way.
pub fn allocation_failed(text: &str) -> bool {
    ["memory allocation of", "failed to allocate", "capacity overflow"].iter().any(|s| text.contains(s))
}

/// A model that needs more memory than the worker may take.
pub fn needs_more_memory(max_memory_bytes: Option<u64>, detail: &str) -> ApiError {
    let limit = max_memory_bytes.map_or("no limit".into(), |b| format!("{} MB", b >> 20));
    ApiError::limit_exceeded(format!(
        "the model needs more memory than this agent's --max-worker-mb ({limit}) allows: {detail}"
    ))
}

impl From<MeasureError> for ApiError {
    fn from(e: MeasureError) -> Self {
        let message = e.to_string();
        match e {
            MeasureError::Inspect(e) => e.into(),
            MeasureError::BadRequest(_) | MeasureError::Affinity(_) => ApiError::bad_request(message),
            MeasureError::TooHot(_) => ApiError::too_hot(message),
            MeasureError::Monitor(_) => ApiError::internal(message),
            MeasureError::Load(_) | MeasureError::Run(_) => ApiError::unsupported_model(message),
            MeasureError::Panic(_) => ApiError::runtime_crashed(message),
        }
    }
}
