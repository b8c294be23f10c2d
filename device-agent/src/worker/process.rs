//! `--isolation process`: jobs run in a child process, `edgeloop-agent
//! worker`, that speaks JSON lines: the agent writes a [`WorkerSetup`] and
//! then one [`JobSpec`] per job on the child's stdin; the child answers a
//! [`WorkerReady`] and then one result per job on its stdout. Whatever the
//! child prints on stderr goes to the agent's log, and its last lines say
//! why it died.
//!
//! The timed loop runs inside the child, exactly as on a thread.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use edgeloop_api::{ErrorDetail, Measurement};
use serde::{Deserialize, Serialize};

use super::measurer::{allocation_failed, needs_more_memory};
use super::{Backend, JobSpec, Measurer, Status, timed_out};
use crate::engine::Sensors;
use crate::error::ApiError;
use crate::limits::Limits;
use crate::runtime::{RuntimeSettings, Runtimes};

/// How long a new worker may take to load its runtimes and say ready.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Lines of a worker's stderr kept to explain its death.
const LAST_WORDS: usize = 20;

/// Everything a worker process needs to measure like the agent would.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSetup {
    /// The agent; a worker whose parent is another process exits.
    pub parent_pid: u32,
    pub device_id: String,
    pub sensors: Sensors,
    pub runtimes: RuntimeSettings,
    pub limits: Limits,
    /// `RLIMIT_AS` of the worker, bytes.
    pub max_memory_bytes: Option<u64>,
}

impl WorkerSetup {
    pub(super) fn new(measurer: &Measurer, runtimes: RuntimeSettings, max_memory_bytes: Option<u64>) -> Self {
        WorkerSetup {
            parent_pid: std::process::id(),
            device_id: measurer.device_id.clone(),
            sensors: measurer.sensors.clone(),
            runtimes,
            limits: measurer.limits,
            max_memory_bytes,
        }
    }
}

/// A worker's first line: it has loaded its runtimes.
#[derive(Debug, Serialize, Deserialize)]
struct WorkerReady {
    pid: u32,
}

/// A worker's answer to one job.
type WorkerAnswer = Result<Measurement, ErrorDetail>;

/// A running worker process and the threads that read its output.
struct ChildWorker {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    last_words: Arc<Mutex<VecDeque<String>>>,
    stderr: Option<JoinHandle<()>>,
}

impl ChildWorker {
    fn spawn(program: &PathBuf, setup: &WorkerSetup) -> Result<Self, String> {
        let mut child = Command::new(program)
            .arg("worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                let hint = if e.raw_os_error() == Some(libc::ENOEXEC) {
                    " (under an emulator such as qemu-user without binfmt_misc, serve with --isolation thread)"
                } else {
                    ""
                };
                format!("cannot run {}: {e}{hint}", program.display())
            })?;
        let (stdout, stderr) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
        let (line, lines) = mpsc::channel();
        let pid = child.id();
        let spawned = std::thread::Builder::new().name(format!("worker-{pid}-out")).spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.send(l).is_err() {
                    return;
                }
            }
        });
        let last_words = Arc::new(Mutex::new(VecDeque::new()));
        let kept = last_words.clone();
        let stderr = std::thread::Builder::new().name(format!("worker-{pid}-err")).spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                log::info!("worker {pid}: {l}");
                let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                if kept.len() == LAST_WORDS {
                    kept.pop_front();
                }
                kept.push_back(l);
            }
        });
        let mut worker = ChildWorker { child, stdin: None, lines, last_words, stderr: stderr.ok() };
        if let Err(e) = spawned {
            return Err(worker.kill(&format!("cannot read the worker's output: {e}")));
        }
        worker.stdin = worker.child.stdin.take();
        let setup_line = serde_json::to_string(setup).expect("setup serializes");
        if let Err(e) = worker.send_line(&setup_line) {
            return Err(worker.died(&format!("could not be sent its setup ({e})")));
        }
        match worker.lines.recv_timeout(STARTUP_TIMEOUT) {
            Ok(l) => match serde_json::from_str::<WorkerReady>(&l) {
                Ok(_) => Ok(worker),
                Err(e) => Err(worker.kill(&format!("said {l:?} instead of ready ({e})"))),
            },
            Err(mpsc::RecvTimeoutError::Timeout) => {
                Err(worker.kill(&format!("was not ready within {} s", STARTUP_TIMEOUT.as_secs())))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(worker.died("exited while starting")),
        }
    }

    fn send_line(&mut self, line: &str) -> std::io::Result<()> {
        let stdin = self.stdin.as_mut().ok_or_else(|| std::io::Error::other("stdin closed"))?;
        stdin.write_all(line.as_bytes())?;
        stdin.write_all(b"\n")?;
        stdin.flush()
    }

    /// Waits for the worker to end and reads what it left.
    fn reap(mut self) -> Ended {
        let how = match self.child.wait() {
            Ok(status) => describe_exit(status),
            Err(e) => format!("could not be waited for ({e})"),
        };
        // The reader ends at the pipe's end, once the worker has exited.
        if let Some(reader) = self.stderr.take() {
            let _ = reader.join();
        }
        let kept = self.last_words.lock().unwrap_or_else(|e| e.into_inner());
        Ended {
            how,
            last_words: kept.back().map(|l| format!(" (last words: {l})")).unwrap_or_default(),
            out_of_memory: kept.iter().any(|l| allocation_failed(l)),
        }
    }

    /// Reaps the dead worker and says how it ended.
    fn died(self, what: &str) -> String {
        let ended = self.reap();
        format!("the measuring worker {what}: {}{}", ended.how, ended.last_words)
    }

    /// Kills the worker and says why.
    fn kill(mut self, why: &str) -> String {
        let _ = self.child.kill();
        format!("the measuring worker {why}; it was killed{}", self.reap().last_words)
    }
}

/// How a worker ended.
struct Ended {
    how: String,
    /// Its last stderr line, as ` (last words: …)`, or empty.
    last_words: String,
    out_of_memory: bool,
}

impl Drop for ChildWorker {
    fn drop(&mut self) {
        // End of input asks the worker to exit; one that is busy is killed.
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => {
            let name = match signal {
                libc::SIGSEGV => "SIGSEGV, a segmentation fault",
                libc::SIGABRT => "SIGABRT, an abort",
                libc::SIGBUS => "SIGBUS, a bus error",
                libc::SIGILL => "SIGILL, an illegal instruction",
                libc::SIGFPE => "SIGFPE, an arithmetic fault",
                libc::SIGKILL => "SIGKILL: killed from outside, often by the kernel when memory runs out",
                _ => "a signal",
            };
            format!("died of signal {signal} ({name})")
        }
        (None, None) => "ended".into(),
    }
}

pub(super) struct ProcessBackend {
    program: PathBuf,
    setup: WorkerSetup,
    status: Arc<Status>,
    worker: Option<ChildWorker>,
}

impl ProcessBackend {
    pub(super) fn new(program: PathBuf, setup: WorkerSetup, status: Arc<Status>) -> Self {
        ProcessBackend { program, setup, status, worker: None }
    }

    /// The error for a worker that died during a job.
    fn lost(&mut self, worker: ChildWorker) -> ApiError {
        self.status.worker_replaced();
        let ended = worker.reap();
        if ended.out_of_memory {
            let detail = format!("the measuring worker {}{}", ended.how, ended.last_words);
            return needs_more_memory(self.setup.max_memory_bytes, &detail);
        }
        ApiError::runtime_crashed(format!(
            "the measuring worker crashed: {}{}; a new worker takes the next request",
            ended.how, ended.last_words
        ))
    }
}

impl Backend for ProcessBackend {
    fn ready(&mut self) -> Result<(), String> {
        if self.worker.is_some() {
            return Ok(());
        }
        let started = Instant::now();
        let worker = ChildWorker::spawn(&self.program, &self.setup)?;
        let start_ms = started.elapsed().as_secs_f64() * 1e3;
        log::info!("worker {} ready in {start_ms:.0} ms", worker.child.id());
        self.status.details().worker_start_ms = Some(start_ms);
        self.worker = Some(worker);
        Ok(())
    }

    fn run(&mut self, job: &JobSpec, timeout: Duration) -> Result<Measurement, ApiError> {
        let line = serde_json::to_string(job).map_err(ApiError::internal)?;
        let mut worker = self.worker.take().expect("ready() before run()");
        if worker.send_line(&line).is_err() {
            return Err(self.lost(worker));
        }
        match worker.lines.recv_timeout(timeout) {
            Ok(answer) => match serde_json::from_str::<WorkerAnswer>(&answer) {
                Ok(answer) => {
                    self.worker = Some(worker);
                    answer.map_err(ApiError::from)
                }
                Err(e) => {
                    self.status.worker_replaced();
                    Err(ApiError::internal(worker.kill(&format!("answered {answer:?}, which is not JSON ({e})"))))
                }
            },
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.status.worker_replaced();
                let message = worker.kill(&format!("ran past {} s", timeout.as_secs_f64()));
                log::warn!("{message}");
                Err(timed_out(timeout))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(self.lost(worker)),
        }
    }
}

/// Fault injection for the agent's own tests: `EDGELOOP_WORKER_FAULT=
/// KIND:SHA256[,KIND:SHA256…]`, KIND one of abort, segv, hang, makes a
/// worker fail that way on that model.
const FAULT_ENV: &str = "EDGELOOP_WORKER_FAULT";

fn inject_fault(model: &str) {
    let Ok(faults) = std::env::var(FAULT_ENV) else { return };
    let kind = faults.split(',').filter_map(|f| f.split_once(':')).find(|(_, sha)| *sha == model).map(|(k, _)| k);
    match kind {
        Some("abort") => std::process::abort(),
        // A real fault: std's SIGSEGV handler lets a raised signal pass.
        // SAFETY: none — crashing is the point; the process dies here.
        Some("segv") => unsafe {
            std::ptr::null_mut::<u8>().write_volatile(1);
        },
        Some("hang") => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        _ => {}
    }
}

/// Dies with the agent: a worker must never outlive it (Linux, Android).
fn exit_with_parent(parent_pid: u32) -> Result<(), String> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and touches no memory.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    // The agent may have gone before the line above ran.
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() } as u32;
    if parent == parent_pid {
        Ok(())
    } else {
        Err(format!("started by process {parent}, not the agent ({parent_pid})"))
    }
}

fn limit_memory(bytes: u64) -> Result<(), String> {
    let limit = libc::rlimit { rlim_cur: bytes as libc::rlim_t, rlim_max: bytes as libc::rlim_t };
    // SAFETY: `limit` is a valid rlimit for the duration of the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) } == 0 {
        Ok(())
    } else {
        Err(format!("setrlimit(RLIMIT_AS, {bytes}): {}", std::io::Error::last_os_error()))
    }
}

/// Takes the real stdout for the protocol and points fd 1 at stderr, so
/// that nothing a runtime prints can corrupt an answer.
fn protocol_output() -> Result<std::fs::File, String> {
    use std::os::fd::FromRawFd;
    // SAFETY: dup/dup2 on the process's own standard descriptors; the new
    // descriptor is owned by the returned File alone.
    unsafe {
        let fd = libc::dup(1);
        if fd < 0 || libc::dup2(2, 1) < 0 {
            return Err(format!("redirecting stdout: {}", std::io::Error::last_os_error()));
        }
        Ok(std::fs::File::from_raw_fd(fd))
    }
}

/// `edgeloop-agent worker`: the child side. Returns when the agent closes
/// its stdin.
pub fn serve_worker() -> Result<(), String> {
    let mut out = protocol_output()?;
    let mut input = std::io::stdin().lock();
    let mut line = String::new();
    input.read_line(&mut line).map_err(|e| format!("reading the setup: {e}"))?;
    let setup: WorkerSetup =
        serde_json::from_str(&line).map_err(|e| format!("the setup line is not a worker setup: {e}"))?;
    exit_with_parent(setup.parent_pid)?;
    if let Some(bytes) = setup.max_memory_bytes {
        limit_memory(bytes)?;
    }
    let measurer = Measurer {
        device_id: setup.device_id,
        runtimes: Runtimes::detect(&setup.runtimes),
        sensors: setup.sensors,
        limits: setup.limits,
        max_memory_bytes: setup.max_memory_bytes,
    };
    let write = |out: &mut std::fs::File, text: String| -> Result<(), String> {
        writeln!(out, "{text}").and_then(|()| out.flush()).map_err(|e| format!("answering the agent: {e}"))
    };
    write(&mut out, serde_json::to_string(&WorkerReady { pid: std::process::id() }).expect("serializes"))?;
    for line in input.lines() {
        let line = line.map_err(|e| format!("reading a job: {e}"))?;
        let answer: WorkerAnswer = match serde_json::from_str::<JobSpec>(&line) {
            Ok(job) => {
                inject_fault(&job.request.model);
                measurer.measure(&job.request, &job.model_path).map_err(ErrorDetail::from)
            }
            Err(e) => Err(ApiError::internal(format!("the agent sent a job that is not one: {e}")).into()),
        };
        write(&mut out, serde_json::to_string(&answer).expect("answers serialize"))?;
    }
    Ok(())
}
