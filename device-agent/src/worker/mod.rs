//! Measurements run one at a time, in arrival order, never on the async
//! executor. A supervisor thread takes queued jobs and hands each to a
//! backend that runs it in a child process (the default; TVM's popen
//! workers are the precedent) or on a thread of the agent. A worker that
//! crashes, runs out of memory or runs past the wall-clock cap costs its
//! request an error and is replaced; the agent keeps serving.

mod measurer;
mod process;
mod thread;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use edgeloop_api::{AgentStatus, MeasureRequest, Measurement};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

pub use measurer::Measurer;
pub use process::{WorkerSetup, serve_worker};

use crate::error::ApiError;
use crate::runtime::RuntimeSettings;

/// Where measurements run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Isolation {
    /// In a child process running `program worker`, kept warm between
    /// requests and replaced after a crash, an out-of-memory abort or a timeout.
    Process { program: PathBuf },
    /// On a thread of the agent: for platforms where the agent cannot
    /// re-execute itself. Panics are caught; a crash takes the agent down,
    /// and a measurement past the cap is abandoned, not stopped.
    Thread,
}

impl Isolation {
    pub fn name(&self) -> &'static str {
        match self {
            Isolation::Process { .. } => "process",
            Isolation::Thread => "thread",
        }
    }
}

/// How the measuring worker is run and bounded.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub isolation: Isolation,
    /// Measurements allowed to wait; more are answered 503 `busy`.
    pub max_queue: usize,
    /// Wall-clock cap of one measurement, load included.
    pub job_timeout: Duration,
    /// Address-space limit of a worker process (`setrlimit`), bytes.
    pub max_worker_bytes: Option<u64>,
}

/// One measurement as a worker runs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobSpec {
    pub request: MeasureRequest,
    /// The stored model; it may be evicted before the worker reads it.
    pub model_path: PathBuf,
}

/// What runs jobs for the supervisor.
trait Backend: Send {
    /// Starts a worker unless one is ready; the error says why none can start.
    fn ready(&mut self) -> Result<(), String>;
    /// Runs one job on the ready worker, for at most `timeout`.
    fn run(&mut self, job: &JobSpec, timeout: Duration) -> Result<Measurement, ApiError>;
}

/// Counters shared by the server, the supervisor and the backend.
#[derive(Default)]
struct Status {
    /// Jobs sent to the supervisor and not yet taken.
    waiting: AtomicUsize,
    measuring: AtomicBool,
    restarts: AtomicU64,
    cancelled: AtomicU64,
    details: Mutex<StatusDetails>,
}

#[derive(Default)]
struct StatusDetails {
    degraded: Option<String>,
    worker_start_ms: Option<f64>,
    /// Moving average of a job's seconds, for `Retry-After`.
    mean_job_s: f64,
}

impl Status {
    fn details(&self) -> std::sync::MutexGuard<'_, StatusDetails> {
        self.details.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn worker_replaced(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    fn job_took(&self, took: Duration) {
        let mut d = self.details();
        d.mean_job_s =
            if d.mean_job_s == 0.0 { took.as_secs_f64() } else { 0.8 * d.mean_job_s + 0.2 * took.as_secs_f64() };
    }

    /// Seconds until a place in the queue is likely free.
    fn retry_after_s(&self, waiting: usize) -> u64 {
        ((waiting + 1) as f64 * self.details().mean_job_s).ceil().max(1.0) as u64
    }
}

struct Job {
    spec: JobSpec,
    queued_at: Instant,
    reply: oneshot::Sender<Result<Measurement, ApiError>>,
}

/// Handle to the supervisor; it stops, and its worker with it, when the handle is dropped.
pub struct Worker {
    jobs: mpsc::Sender<Job>,
    status: Arc<Status>,
    settings: WorkerSettings,
}

/// How often a degraded supervisor tries to start a worker again.
const RETRY_START: Duration = Duration::from_secs(5);

impl Worker {
    /// Starts the supervisor and, in its thread, the first worker. A worker
    /// process measures with the runtimes `runtimes` names (it loads its
    /// own); a thread measures with `measurer`'s.
    pub fn start(measurer: Measurer, runtimes: RuntimeSettings, settings: WorkerSettings) -> std::io::Result<Self> {
        let status = Arc::new(Status::default());
        let backend: Box<dyn Backend> = match &settings.isolation {
            Isolation::Process { program } => {
                let setup = WorkerSetup::new(&measurer, runtimes, settings.max_worker_bytes);
                Box::new(process::ProcessBackend::new(program.clone(), setup, status.clone()))
            }
            Isolation::Thread => Box::new(thread::ThreadBackend::new(measurer, status.clone())),
        };
        let (jobs, queue) = mpsc::channel::<Job>();
        let (supervised, timeout) = (status.clone(), settings.job_timeout);
        std::thread::Builder::new()
            .name("edgeloop-supervise".into())
            .spawn(move || supervise(queue, backend, &supervised, timeout))?;
        Ok(Worker { jobs, status, settings })
    }

    /// Queues a measurement and waits for its turn and its result.
    pub async fn measure(&self, spec: JobSpec) -> Result<Measurement, ApiError> {
        let request = &spec.request;
        let asked_ms =
            request.max_duration_ms.saturating_add(request.cooldown_c.map_or(0, |_| request.cooldown_timeout_ms));
        let cap = self.settings.job_timeout;
        if Duration::from_millis(asked_ms) >= cap {
            return Err(ApiError::bad_request(format!(
                "max_duration_ms with the cool-down wait ({asked_ms} ms) must stay under this agent's cap of {} s \
                 (--job-timeout-s)",
                cap.as_secs_f64()
            )));
        }
        let waiting = self.status.waiting.fetch_add(1, Ordering::SeqCst);
        if waiting >= self.settings.max_queue {
            self.status.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::busy(
                format!(
                    "{waiting} measurements are already waiting (--max-queue {}); retry later",
                    self.settings.max_queue
                ),
                self.status.retry_after_s(waiting),
            ));
        }
        let (reply, answer) = oneshot::channel();
        let job = Job { spec, queued_at: Instant::now(), reply };
        if self.jobs.send(job).is_err() {
            self.status.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::internal("the measurement supervisor has stopped"));
        }
        // Dropping `answer` (the client went away) cancels the job if it has not started.
        answer.await.map_err(|_| ApiError::internal("the measurement supervisor dropped the request"))?
    }

    /// Why no worker can start, while that lasts.
    pub fn degraded(&self) -> Option<String> {
        self.status.details().degraded.clone()
    }

    pub fn status(&self) -> AgentStatus {
        let details = self.status.details();
        AgentStatus {
            isolation: self.settings.isolation.name().into(),
            measuring: self.status.measuring.load(Ordering::SeqCst),
            queue_depth: self.status.waiting.load(Ordering::SeqCst),
            max_queue: self.settings.max_queue,
            worker_restarts: self.status.restarts.load(Ordering::Relaxed),
            cancelled: self.status.cancelled.load(Ordering::Relaxed),
            worker_start_ms: details.worker_start_ms,
            degraded: details.degraded.clone(),
        }
    }
}

/// Keeps `status.degraded` in step with whether a worker can start.
fn warm(backend: &mut dyn Backend, status: &Status) -> Result<(), String> {
    let ready = backend.ready();
    status.details().degraded = ready.as_ref().err().cloned();
    if let Err(reason) = &ready {
        log::error!("no measuring worker can start: {reason}");
    }
    ready
}

fn supervise(queue: mpsc::Receiver<Job>, mut backend: Box<dyn Backend>, status: &Status, timeout: Duration) {
    let mut ready = warm(backend.as_mut(), status).is_ok();
    loop {
        let job = if ready {
            match queue.recv() {
                Ok(job) => job,
                Err(mpsc::RecvError) => return,
            }
        } else {
            match queue.recv_timeout(RETRY_START) {
                Ok(job) => job,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    ready = warm(backend.as_mut(), status).is_ok();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        };
        status.waiting.fetch_sub(1, Ordering::SeqCst);
        if job.reply.is_closed() {
            status.cancelled.fetch_add(1, Ordering::Relaxed);
            log::info!("dropped a queued measurement of {}: its client has gone away", job.spec.request.model);
            continue;
        }
        let queue_wait_ms = job.queued_at.elapsed().as_secs_f64() * 1e3;
        let started = Instant::now();
        status.measuring.store(true, Ordering::SeqCst);
        let result = match warm(backend.as_mut(), status) {
            Ok(()) => backend.run(&job.spec, timeout),
            Err(reason) => Err(ApiError::worker_unavailable(format!("no measuring worker can start: {reason}"))),
        };
        status.measuring.store(false, Ordering::SeqCst);
        status.job_took(started.elapsed());
        // The client may have gone away meanwhile; its answer is then dropped.
        let _ = job.reply.send(result.map(|m| Measurement { queue_wait_ms, ..m }));
        // The next request finds a warm worker, even after this one was lost.
        ready = warm(backend.as_mut(), status).is_ok();
    }
}

fn timed_out(timeout: Duration) -> ApiError {
    ApiError::timeout(format!(
        "load and measurement ran past this agent's cap of {} s (--job-timeout-s)",
        timeout.as_secs_f64()
    ))
}
