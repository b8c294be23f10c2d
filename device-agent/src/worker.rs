//! The one thread that measures. Measurements never run on the async
//! executor and never overlap: requests queue here, in arrival order.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;

use edgeloop_api::{MeasureRequest, Measurement};
use tokio::sync::oneshot;

use crate::engine::{self, MeasureError, Sensors};
use crate::error::ApiError;
use crate::runtime::Runtimes;
use crate::store::ModelStore;

/// Everything a measurement needs besides the request.
pub struct Measurer {
    pub device_id: String,
    pub runtimes: Runtimes,
    pub store: Arc<ModelStore>,
    pub sensors: Sensors,
}

impl Measurer {
    fn measure(&self, req: &MeasureRequest, queue_wait_ms: f64) -> Result<Measurement, ApiError> {
        let runtime = self
            .runtimes
            .get(&req.runtime)
            .ok_or_else(|| ApiError::runtime_unavailable(self.runtimes.unavailable_reason(&req.runtime)))?;
        let model = self
            .store
            .read(&req.model)
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::unknown_model(&req.model))?;
        let timings = engine::measure(runtime.as_ref(), &model, req, &self.sensors).map_err(ApiError::from)?;
        log::info!(
            "measured model={} runtime={} n={} p50_ms={}",
            req.model,
            req.runtime,
            timings.stats.n,
            timings.stats.p50
        );
        let mut measurement = timings.into_measurement(req, &self.device_id, runtime.as_ref());
        measurement.queue_wait_ms = queue_wait_ms;
        Ok(measurement)
    }
}

impl From<MeasureError> for ApiError {
    fn from(e: MeasureError) -> Self {
        let message = e.to_string();
        match e {
            MeasureError::BadRequest(_) | MeasureError::Input(_) | MeasureError::Affinity(_) => {
                ApiError::bad_request(message)
            }
            MeasureError::TooHot(_) => ApiError::too_hot(message),
            MeasureError::Monitor(_) => ApiError::internal(message),
            MeasureError::Malformed(_) => ApiError::malformed_model(message),
            MeasureError::Load(_) | MeasureError::Run(_) => ApiError::unsupported_model(message),
            MeasureError::Panic(_) => ApiError::runtime_crashed(message),
        }
    }
}

struct Job {
    request: MeasureRequest,
    queued_at: Instant,
    reply: oneshot::Sender<Result<Measurement, ApiError>>,
}

/// Handle to the measuring thread; the thread ends when the handle is dropped.
pub struct Worker {
    jobs: mpsc::Sender<Job>,
}

impl Worker {
    pub fn start(measurer: Measurer) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new().name("edgeloop-measure".into()).spawn(move || {
            for job in queue {
                let waited = job.queued_at.elapsed().as_secs_f64() * 1e3;
                // The client may have gone away; its answer is then dropped.
                let _ = job.reply.send(measurer.measure(&job.request, waited));
            }
        })?;
        Ok(Worker { jobs })
    }

    /// Queues a measurement and waits for its turn and its result.
    pub async fn measure(&self, request: MeasureRequest) -> Result<Measurement, ApiError> {
        let (reply, answer) = oneshot::channel();
        let job = Job { request, queued_at: Instant::now(), reply };
        self.jobs.send(job).map_err(|_| ApiError::internal("measurement worker is gone"))?;
        answer.await.map_err(|_| ApiError::internal("measurement worker dropped the request"))?
    }
}
