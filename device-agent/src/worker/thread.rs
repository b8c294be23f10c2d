//! `--isolation thread`: jobs run on a measuring thread of the agent. The
//! supervisor waits for each answer up to the cap; a thread that died or
//! ran past it is given up and a fresh one takes the next job.

use std::sync::{Arc, mpsc};
use std::time::Duration;

use edgeloop_api::Measurement;

use super::{Backend, JobSpec, Measurer, Status, timed_out};
use crate::error::ApiError;

type Answer = Result<Measurement, ApiError>;

struct MeasuringThread {
    jobs: mpsc::Sender<JobSpec>,
    answers: mpsc::Receiver<Answer>,
}

pub(super) struct ThreadBackend {
    measurer: Arc<Measurer>,
    status: Arc<Status>,
    thread: Option<MeasuringThread>,
}

impl ThreadBackend {
    pub(super) fn new(measurer: Measurer, status: Arc<Status>) -> Self {
        ThreadBackend { measurer: Arc::new(measurer), status, thread: None }
    }

    /// Gives up the current thread: it ends after its job, its answer unread.
    fn replace(&mut self) {
        self.thread = None;
        self.status.worker_replaced();
    }
}

impl Backend for ThreadBackend {
    fn ready(&mut self) -> Result<(), String> {
        if self.thread.is_some() {
            return Ok(());
        }
        let (jobs, queue) = mpsc::channel::<JobSpec>();
        let (answer, answers) = mpsc::channel::<Answer>();
        let measurer = self.measurer.clone();
        std::thread::Builder::new()
            .name("edgeloop-measure".into())
            .spawn(move || {
                for job in queue {
                    if answer.send(measurer.measure(&job.request, &job.model_path)).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| format!("cannot start a measuring thread: {e}"))?;
        self.thread = Some(MeasuringThread { jobs, answers });
        Ok(())
    }

    fn run(&mut self, job: &JobSpec, timeout: Duration) -> Result<Measurement, ApiError> {
        let thread = self.thread.as_ref().expect("ready() before run()");
        let answer = match thread.jobs.send(job.clone()) {
            Ok(()) => thread.answers.recv_timeout(timeout),
            Err(_) => Err(mpsc::RecvTimeoutError::Disconnected),
        };
        match answer {
            Ok(answer) => answer,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                log::warn!("measurement of {} ran past {timeout:?}: abandoning its thread", job.request.model);
                self.replace();
                Err(timed_out(timeout))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                self.replace();
                Err(ApiError::runtime_crashed("the measuring thread died; a new one takes the next request"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use edgeloop_api::MeasureRequest;

    use super::*;
    use crate::engine::Sensors;
    use crate::limits::Limits;
    use crate::runtime::{Runtimes, ScriptedRuntime};

    #[test]
    fn a_measurement_past_the_cap_is_answered_504_and_its_thread_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let model_path = dir.path().join("m.onnx");
        std::fs::write(&model_path, edgeloop_onnx::encode(&edgeloop_onnx::samples::MbconvNet::small().to_model()))
            .unwrap();
        let mut runtimes = Runtimes::default();
        // Every run takes a second.
        runtimes.add(Arc::new(ScriptedRuntime { run: || std::thread::sleep(Duration::from_secs(1)) }));
        let measurer = Measurer {
            device_id: "d".into(),
            runtimes,
            sensors: Sensors::default(),
            limits: Limits::default(),
            max_memory_bytes: None,
        };
        let status = Arc::new(Status::default());
        let mut backend = ThreadBackend::new(measurer, status.clone());
        let request = MeasureRequest { runtime: "scripted".into(), warmup_runs: 0, min_runs: 1, ..Default::default() };
        let job = JobSpec { request, model_path };
        for restarts in 1..=2 {
            backend.ready().unwrap();
            let err = backend.run(&job, Duration::from_millis(100)).unwrap_err();
            assert_eq!(err.code, edgeloop_api::ErrorCode::Timeout, "{err}");
            assert_eq!(status.restarts.load(std::sync::atomic::Ordering::Relaxed), restarts);
        }
    }
}
