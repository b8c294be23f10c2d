//! ONNX Runtime, through the `ort` crate, loaded at start-up from a shared
//! library (e.g. the `libonnxruntime.so` of the onnxruntime Python wheel).
//! Only its CPU execution provider is used.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CStr, CString};
use std::fmt;
use std::num::NonZeroUsize;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use ::ort::environment::Environment;
use ::ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ::ort::session::{Session, SessionInputValue};
use ::ort::value::{DynValue, PrimitiveTensorElementType, Tensor, TensorElementType, ValueType};
use edgeloop_api::OpTime;
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::{
    LoadOptions, LoadedModel, NodeTotal, OrtOptimization, OutputTensor, Precision, PrecisionSupport, Probe, Runtime,
    RuntimeError, op_times,
};
use crate::inputs::{InputData, InputTensor};

/// Where the path of the library came from, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LibrarySource {
    Flag,
    EnvVar,
    Venv,
}

impl fmt::Display for LibrarySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LibrarySource::Flag => "--ort-lib",
            LibrarySource::EnvVar => "ORT_DYLIB_PATH",
            LibrarySource::Venv => "found in .venv",
        })
    }
}

/// Why ONNX Runtime cannot be used; `/v1/info` shows it.
#[derive(Debug, thiserror::Error)]
pub enum OrtUnavailable {
    #[error(
        "no libonnxruntime found: give --ort-lib or ORT_DYLIB_PATH, or install onnxruntime into .venv \
         (scripts/setup.sh; searched .venv/lib/python3*/site-packages/onnxruntime/capi/ in the current \
         directory, the agent's and their parents)"
    )]
    NotFound,
    #[error("{} ({from}) does not exist", path.display())]
    Missing { path: PathBuf, from: LibrarySource },
    #[error("{} ({from})", load_message(error))]
    Load { error: ::ort::LoadDynamicError, from: LibrarySource },
    #[error("{} does not report its ONNX Runtime version", path.display())]
    NoVersion { path: PathBuf },
    #[error("ONNX Runtime from {}: {error}", path.display())]
    Environment { path: PathBuf, error: ::ort::Error },
    #[error(
        "ONNX Runtime is already loaded into this process from {}; {} cannot be loaded beside it",
        loaded.display(),
        requested.display()
    )]
    AlreadyLoaded { loaded: PathBuf, requested: PathBuf },
}

/// ort's loader error with the system's reason (dlerror), which ort's own
/// message leaves out.
fn load_message(error: &::ort::LoadDynamicError) -> String {
    match error {
        ::ort::LoadDynamicError::Dlopen { error: dlopen, .. } => match std::error::Error::source(dlopen) {
            Some(reason) => format!("cannot load ONNX Runtime: {reason}"),
            None => error.to_string(),
        },
        other => other.to_string(),
    }
}

/// ONNX Runtime as loaded into this process. A loaded library stays for the
/// life of the process, and ort allows one environment per process: every
/// `OrtRuntime` shares this one.
struct Loaded {
    library: PathBuf,
    environment: Environment,
    version: String,
}

static LOADED: Mutex<Option<Loaded>> = Mutex::new(None);

#[derive(Clone)]
pub struct OrtRuntime {
    environment: Environment,
    version: String,
    optimization: OrtOptimization,
    /// Probed on first use, for this runtime and its clones.
    precisions: Arc<OnceLock<PrecisionSupport>>,
}

impl OrtRuntime {
    /// Loads libonnxruntime (once per process): `library` (`--ort-lib`),
    /// else `ORT_DYLIB_PATH`, else the one the onnxruntime wheel installed
    /// into a project `.venv` in the current directory, the agent's
    /// directory, or one of their parents. Never panics on a missing or
    /// broken library: the error says what went wrong.
    pub fn open(library: Option<&Path>, optimization: OrtOptimization) -> Result<Self, OrtUnavailable> {
        let (path, from) = find_library(library)?;
        if !path.exists() {
            return Err(OrtUnavailable::Missing { path, from });
        }
        // ort resolves relative paths against the executable's directory;
        // the user meant the current one.
        let path = path.canonicalize().unwrap_or(path);
        let mut guard = LOADED.lock().unwrap_or_else(PoisonError::into_inner);
        let loaded = match guard.take() {
            Some(loaded) => loaded,
            None => load(&path, from)?,
        };
        let opened = if loaded.library == path {
            Ok(OrtRuntime {
                environment: loaded.environment.clone(),
                version: loaded.version.clone(),
                optimization,
                precisions: Arc::default(),
            })
        } else {
            Err(OrtUnavailable::AlreadyLoaded { loaded: loaded.library.clone(), requested: path })
        };
        *guard = Some(loaded);
        opened
    }

    fn session_builder(&self, threads: usize) -> Result<SessionBuilder, RuntimeError> {
        let level = match self.optimization {
            OrtOptimization::Disable => GraphOptimizationLevel::Disable,
            OrtOptimization::Basic => GraphOptimizationLevel::Level1,
            OrtOptimization::Extended => GraphOptimizationLevel::Level2,
            OrtOptimization::All => GraphOptimizationLevel::All,
        };
        // With the intra-op thread count given, ORT sets no thread affinity
        // of its own, so its pool (built here, on the measuring thread)
        // inherits the measurement's CPU pin. Nodes run one after another
        // (the default sequential mode), so one inter-op thread.
        Session::builder(&self.environment)
            .map_err(runtime_error)?
            .with_optimization_level(level)
            .map_err(runtime_error)?
            .with_intra_threads(threads)
            .map_err(runtime_error)?
            .with_inter_threads(1)
            .map_err(runtime_error)
    }

    /// A session of `model` with ORT's profiler on, writing its trace into
    /// `dir`. The profiler records every run of a session once enabled,
    /// and slows it, so profiles get sessions of their own.
    fn profiling_session(&self, model: &[u8], threads: usize, dir: &Path) -> Result<Session, RuntimeError> {
        self.session_builder(threads)?
            .with_profiling(dir.join("ort-profile"))
            .map_err(runtime_error)?
            .commit_from_memory(model)
            .map_err(runtime_error)
    }

    fn precision_support(&self) -> &PrecisionSupport {
        self.precisions.get_or_init(|| PrecisionSupport::probe(|probe| self.runs_natively(probe)))
    }

    /// Whether ORT runs `probe`'s conv in its precision. Its CPU execution
    /// provider refuses at session creation a node whose type it has no
    /// kernel for, except float16: for a float16 node without a float16
    /// kernel it inserts casts (`InsertedPrecisionFreeCast_*`) and runs the
    /// node in float, whatever the optimisation level. So the probe runs
    /// once profiled, and the conv's inputs in the trace must have the
    /// precision's type.
    fn runs_natively(&self, probe: &Probe) -> Result<(), RuntimeError> {
        let name = probe.precision.name();
        let convs = self.probe_convs(probe)?;
        if convs.is_empty() {
            return Err(RuntimeError(format!("ONNX Runtime's profile of the {name} conv shows no conv node")));
        }
        let expected: &[&str] = match probe.precision {
            Precision::Fp32 => &["float"],
            Precision::Int8 => &["uint8", "int8"],
            Precision::Fp16 => &["float16"],
        };
        for conv in convs {
            match conv.input_type {
                Some(ty) if expected.contains(&ty.as_str()) => {}
                Some(ty) => {
                    return Err(RuntimeError(format!(
                        "ONNX Runtime converts the {name} conv and runs it in {ty} (node `{}`, {}): no {name} kernel \
                         for it here",
                        conv.node, conv.op_type
                    )));
                }
                None => {
                    return Err(RuntimeError(format!(
                        "ONNX Runtime's profile does not give the input types of `{}`",
                        conv.node
                    )));
                }
            }
        }
        Ok(())
    }

    /// The conv nodes of `probe` as one profiled run shows them.
    fn probe_convs(&self, probe: &Probe) -> Result<Vec<ConvRun>, RuntimeError> {
        let dir = tempfile::tempdir().map_err(|e| RuntimeError(format!("creating a dir for ORT's profile: {e}")))?;
        let mut session = self.profiling_session(&probe.model, 1, dir.path())?;
        let inputs = session_inputs(&session, &probe.inputs)?;
        conv_input_types(&profiled_trace(&mut session, &inputs, 1)?)
    }
}

fn find_library(explicit: Option<&Path>) -> Result<(PathBuf, LibrarySource), OrtUnavailable> {
    if let Some(path) = explicit {
        return Ok((path.to_path_buf(), LibrarySource::Flag));
    }
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return Ok((path.into(), LibrarySource::EnvVar));
    }
    let cwd = std::env::current_dir().ok();
    let exe = std::env::current_exe().ok();
    let exe_dir = exe.as_deref().and_then(Path::parent);
    let starts: Vec<&Path> = cwd.as_deref().into_iter().chain(exe_dir).collect();
    venv_library(&starts).map(|path| (path, LibrarySource::Venv)).ok_or(OrtUnavailable::NotFound)
}

/// `.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so*`
/// in the first of `starts` or their ancestors that has one (where
/// scripts/setup.sh installs the onnxruntime wheel).
fn venv_library(starts: &[&Path]) -> Option<PathBuf> {
    starts.iter().flat_map(|start| start.ancestors()).find_map(|dir| {
        let pythons = entries_named(&dir.join(".venv/lib"), |name| name.starts_with("python3"));
        // The newest Python's, then the most specific name (`.so.1.32.0` over `.so`).
        pythons.iter().rev().find_map(|python| {
            let capi = python.join("site-packages/onnxruntime/capi");
            entries_named(&capi, |name| name.starts_with("libonnxruntime.so")).pop()
        })
    })
}

/// The entries of `dir` whose names pass `wanted`, sorted.
fn entries_named(dir: &Path, wanted: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return vec![] };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_str().is_some_and(&wanted))
        .map(|entry| entry.path())
        .collect();
    found.sort();
    found
}

fn load(path: &Path, from: LibrarySource) -> Result<Loaded, OrtUnavailable> {
    let environment = ::ort::init_from(path)
        .map_err(|error| OrtUnavailable::Load { error, from })?
        .with_name("edgeloop-agent")
        .with_telemetry(false)
        .build()
        .map_err(|error| OrtUnavailable::Environment { path: path.to_path_buf(), error })?;
    let version = library_version(path).ok_or_else(|| OrtUnavailable::NoVersion { path: path.to_path_buf() })?;
    Ok(Loaded { library: path.to_path_buf(), environment, version })
}

/// The version the library reports (`OrtApiBase::GetVersionString`),
/// which ort does not expose: asked of the library `init_from` loaded.
fn library_version(path: &Path) -> Option<String> {
    let c_path = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: with RTLD_NOLOAD, dlopen only returns a handle to a library
    // already loaded (by ort, from this path), and no initialiser runs; the
    // handle is closed after use, giving back the reference it took.
    // OrtGetApiBase has this signature in every ONNX Runtime release, and
    // GetVersionString returns a static NUL-terminated string.
    unsafe {
        let handle = libc::dlopen(c_path.as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD);
        if handle.is_null() {
            return None;
        }
        let symbol = libc::dlsym(handle, c"OrtGetApiBase".as_ptr());
        let version = (!symbol.is_null())
            .then(|| {
                let api_base: unsafe extern "C" fn() -> *const ::ort::sys::OrtApiBase = std::mem::transmute(symbol);
                let base = api_base();
                (!base.is_null()).then(|| CStr::from_ptr(((*base).GetVersionString)()).to_string_lossy().into_owned())
            })
            .flatten();
        libc::dlclose(handle);
        version
    }
}

fn runtime_error(e: impl fmt::Display) -> RuntimeError {
    RuntimeError(e.to_string())
}

impl Runtime for OrtRuntime {
    fn name(&self) -> &'static str {
        "ort"
    }

    fn version(&self) -> String {
        self.version.clone()
    }

    fn precisions(&self) -> Vec<String> {
        self.precision_support().native.clone()
    }

    fn precisions_unavailable(&self) -> BTreeMap<String, String> {
        self.precision_support().unavailable.clone()
    }

    fn load(
        &self,
        model: &[u8],
        inputs: &[InputTensor],
        options: LoadOptions,
    ) -> Result<Box<dyn LoadedModel>, RuntimeError> {
        let session = self.session_builder(options.threads)?.commit_from_memory(model).map_err(runtime_error)?;
        let inputs = session_inputs(&session, inputs)?;
        Ok(Box::new(OrtModel {
            session,
            inputs,
            // Kept for `profile`, which builds a second session.
            model: model.to_vec(),
            runtime: self.clone(),
            threads: options.threads,
        }))
    }
}

struct OrtModel {
    session: Session,
    /// In the session's input order, so runs pass them as a slice.
    inputs: Vec<SessionInputValue<'static>>,
    model: Vec<u8>,
    runtime: OrtRuntime,
    threads: usize,
}

/// Runs of a fresh profiling session left out of the profile: its first run
/// allocates the session's buffers and is several times slower.
const PROFILE_WARMUP_RUNS: usize = 1;

impl LoadedModel for OrtModel {
    fn run(&mut self) -> Result<(), RuntimeError> {
        self.session.run(self.inputs.as_slice()).map(drop).map_err(runtime_error)
    }

    fn profile(&mut self, runs: NonZeroUsize) -> Result<Vec<OpTime>, RuntimeError> {
        // Built like the measured session.
        let dir = tempfile::tempdir().map_err(|e| RuntimeError(format!("creating a dir for ORT's profile: {e}")))?;
        let mut session = self.runtime.profiling_session(&self.model, self.threads, dir.path())?;
        let trace = profiled_trace(&mut session, &self.inputs, PROFILE_WARMUP_RUNS + runs.get())?;
        let KernelTimes { runs, totals } = kernel_times(&trace, PROFILE_WARMUP_RUNS)?;
        Ok(op_times(totals, runs))
    }

    fn outputs(&mut self) -> Result<Vec<OutputTensor>, RuntimeError> {
        let outputs = self.session.run(self.inputs.as_slice()).map_err(runtime_error)?;
        outputs
            .iter()
            .map(|(name, value)| {
                let (shape, values) = widened(&value).map_err(|e| RuntimeError(format!("output `{name}`: {e}")))?;
                Ok(OutputTensor { name: name.to_string(), shape, values })
            })
            .collect()
    }
}

/// Runs a profiling session `runs` times and returns its trace.
fn profiled_trace(
    session: &mut Session,
    inputs: &[SessionInputValue<'static>],
    runs: usize,
) -> Result<String, RuntimeError> {
    for _ in 0..runs {
        session.run(inputs).map_err(runtime_error)?;
    }
    let trace_path = session.end_profiling().map_err(runtime_error)?;
    std::fs::read_to_string(&trace_path).map_err(|e| RuntimeError(format!("reading ORT's profile {trace_path}: {e}")))
}

/// The inputs as ORT values, in the order the session lists its inputs.
fn session_inputs(session: &Session, inputs: &[InputTensor]) -> Result<Vec<SessionInputValue<'static>>, RuntimeError> {
    session
        .inputs()
        .iter()
        .map(|outlet| {
            let input = inputs.iter().find(|input| input.name == outlet.name()).ok_or_else(|| {
                RuntimeError(format!("ONNX Runtime expects an input `{}` the model does not declare", outlet.name()))
            })?;
            let value = match &input.data {
                InputData::F32(v) => tensor(&input.shape, v),
                InputData::U8(v) => tensor(&input.shape, v),
                InputData::I8(v) => tensor(&input.shape, v),
                InputData::I32(v) => tensor(&input.shape, v),
                InputData::I64(v) => tensor(&input.shape, v),
            };
            value.map(SessionInputValue::from)
        })
        .collect()
}

fn tensor<T: PrimitiveTensorElementType + Clone + fmt::Debug + 'static>(
    shape: &[usize],
    data: &[T],
) -> Result<DynValue, RuntimeError> {
    Tensor::from_array((shape.to_vec(), data.to_vec())).map(Tensor::into_dyn).map_err(runtime_error)
}

/// An output tensor's shape and values, widened to f64.
fn widened(value: &DynValue) -> Result<(Vec<usize>, Vec<f64>), RuntimeError> {
    let ValueType::Tensor { ty, .. } = value.dtype() else {
        return Err(RuntimeError(format!("a {} is not a tensor", value.dtype())));
    };
    match ty {
        TensorElementType::Float32 => extract::<f32>(value, f64::from),
        TensorElementType::Float64 => extract::<f64>(value, |x| x),
        TensorElementType::Int8 => extract::<i8>(value, f64::from),
        TensorElementType::Uint8 => extract::<u8>(value, f64::from),
        TensorElementType::Int32 => extract::<i32>(value, f64::from),
        TensorElementType::Int64 => extract::<i64>(value, |x| x as f64),
        TensorElementType::Bool => extract::<bool>(value, |x| f64::from(u8::from(x))),
        other => Err(RuntimeError(format!("cannot read {other:?} tensors"))),
    }
}

fn extract<T: PrimitiveTensorElementType + Copy>(
    value: &DynValue,
    widen: fn(T) -> f64,
) -> Result<(Vec<usize>, Vec<f64>), RuntimeError> {
    let (shape, data) = value.try_extract_tensor::<T>().map_err(runtime_error)?;
    // Shapes of computed tensors are never negative (-1 marks unknown dims
    // only in declarations).
    Ok((shape.iter().map(|&d| d as usize).collect(), data.iter().map(|&x| widen(x)).collect()))
}

/// An event of ORT's profiling trace (Chrome trace format); only what the
/// profile needs.
#[derive(Deserialize)]
struct TraceEvent {
    cat: String,
    name: String,
    /// Microseconds.
    #[serde(default)]
    dur: u64,
    #[serde(default)]
    args: TraceArgs,
}

#[derive(Deserialize, Default)]
struct TraceArgs {
    op_name: Option<String>,
    /// Each input's element type (ORT's names: `float`, `float16`,
    /// `uint8`, …) with its shape: `[{"float": [1, 16, 8, 8]}, …]`.
    #[serde(default)]
    input_type_shape: Vec<BTreeMap<String, IgnoredAny>>,
}

fn trace_events(trace: &str) -> Result<Vec<TraceEvent>, RuntimeError> {
    serde_json::from_str(trace).map_err(|e| RuntimeError(format!("unexpected ORT profile: {e}")))
}

/// A conv node as a trace shows it run.
#[derive(Debug, PartialEq)]
struct ConvRun {
    node: String,
    op_type: String,
    /// The element type of its first input, the activations.
    input_type: Option<String>,
}

/// Every conv node (Conv, QLinearConv, and ORT's fused and NCHWc forms:
/// all end in `Conv`) a trace shows run, once each.
fn conv_input_types(trace: &str) -> Result<Vec<ConvRun>, RuntimeError> {
    let mut convs: Vec<ConvRun> = Vec::new();
    for event in trace_events(trace)? {
        let (Some(node), Some(op_type)) = (event.name.strip_suffix("_kernel_time"), event.args.op_name) else {
            continue;
        };
        if event.cat != "Node" || !op_type.ends_with("Conv") || convs.iter().any(|c| c.node == node) {
            continue;
        }
        let input_type = event.args.input_type_shape.first().and_then(|types| types.keys().next()).cloned();
        convs.push(ConvRun { node: node.into(), op_type, input_type });
    }
    Ok(convs)
}

/// Per-node kernel times summed over the runs of a trace.
struct KernelTimes {
    runs: NonZeroUsize,
    totals: Vec<NodeTotal>,
}

/// Sums each node's `<node>_kernel_time` events over the runs of an ORT
/// profiling trace, leaving out the first `skip_runs` runs. ORT writes an
/// event when it ends, so a run's node events come before its own
/// `model_run` event.
fn kernel_times(trace: &str, skip_runs: usize) -> Result<KernelTimes, RuntimeError> {
    let events = trace_events(trace)?;
    let mut totals: Vec<NodeTotal> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut finished_runs = 0;
    for event in events {
        match event.cat.as_str() {
            "Session" if event.name == "model_run" => finished_runs += 1,
            "Node" if finished_runs >= skip_runs => {
                let Some(node) = event.name.strip_suffix("_kernel_time") else { continue };
                let ix = *index.entry(node.to_string()).or_insert_with(|| {
                    totals.push(NodeTotal {
                        node: node.to_string(),
                        op_type: event.args.op_name.clone().unwrap_or_default(),
                        total: Duration::ZERO,
                    });
                    totals.len() - 1
                });
                totals[ix].total += Duration::from_micros(event.dur);
            }
            _ => {}
        }
    }
    let runs = NonZeroUsize::new(finished_runs.saturating_sub(skip_runs)).ok_or_else(|| {
        RuntimeError(format!("ORT's profile holds {finished_runs} runs, expected more than {skip_runs}"))
    })?;
    Ok(KernelTimes { runs, totals })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Two runs of a Conv (fused and renamed by ORT) and a pool, as ORT
    /// 1.32 writes them, trimmed.
    const TRACE: &str = r#"[
        {"cat": "Session", "dur": 399, "ts": 3, "ph": "X", "name": "model_loading_array", "args": {}},
        {"cat": "Session", "dur": 15602, "ts": 449, "ph": "X", "name": "session_initialization", "args": {}},
        {"cat": "Node", "dur": 136, "ts": 16248, "ph": "X", "name": "r_nchwc_kernel_time",
         "args": {"op_name": "Conv", "provider": "CPUExecutionProvider", "node_index": "4"}},
        {"cat": "Node", "dur": 0, "ts": 16390, "ph": "X", "name": "Pool_2_fence_before", "args": {"op_name": "GlobalAveragePool"}},
        {"cat": "Node", "dur": 9, "ts": 16405, "ph": "X", "name": "Pool_2_kernel_time",
         "args": {"op_name": "GlobalAveragePool", "provider": "CPUExecutionProvider", "node_index": "2"}},
        {"cat": "Session", "dur": 174, "ts": 16245, "ph": "X", "name": "SequentialExecutor::Execute", "args": {}},
        {"cat": "Session", "dur": 194, "ts": 16230, "ph": "X", "name": "model_run", "args": {}},
        {"cat": "Node", "dur": 12, "ts": 16666, "ph": "X", "name": "r_nchwc_kernel_time",
         "args": {"op_name": "Conv", "provider": "CPUExecutionProvider", "node_index": "4"}},
        {"cat": "Node", "dur": 7, "ts": 16688, "ph": "X", "name": "Pool_2_kernel_time",
         "args": {"op_name": "GlobalAveragePool", "provider": "CPUExecutionProvider", "node_index": "2"}},
        {"cat": "Session", "dur": 33, "ts": 16666, "ph": "X", "name": "SequentialExecutor::Execute", "args": {}},
        {"cat": "Session", "dur": 38, "ts": 16663, "ph": "X", "name": "model_run", "args": {}}
    ]"#;

    fn summary(times: &KernelTimes) -> Vec<(&str, &str, u128)> {
        times.totals.iter().map(|t| (t.node.as_str(), t.op_type.as_str(), t.total.as_micros())).collect()
    }

    #[test]
    fn trace_kernel_times_per_node() {
        let all = kernel_times(TRACE, 0).unwrap();
        assert_eq!(all.runs.get(), 2);
        assert_eq!(summary(&all), [("r_nchwc", "Conv", 148), ("Pool_2", "GlobalAveragePool", 16)]);
        let warm = kernel_times(TRACE, 1).unwrap();
        assert_eq!(warm.runs.get(), 1);
        assert_eq!(summary(&warm), [("r_nchwc", "Conv", 12), ("Pool_2", "GlobalAveragePool", 7)]);
        let ops = op_times(warm.totals, warm.runs);
        assert_eq!(ops[0].node, "r_nchwc");
        assert!((ops[0].ms - 0.012).abs() < 1e-12 && (ops[0].share - 12.0 / 19.0).abs() < 1e-12, "{ops:?}");
    }

    #[test]
    fn traces_without_enough_runs_or_not_json_are_errors() {
        let err = kernel_times(TRACE, 2).err().expect("too few runs");
        assert!(err.0.contains("holds 2 runs"), "{err}");
        assert!(kernel_times("[{\"cat\": 1}]", 0).err().expect("not a trace").0.starts_with("unexpected ORT profile"));
    }

    #[test]
    fn venv_library_is_found_from_a_subdirectory() {
        let root = tempfile::tempdir().unwrap();
        let capi = root.path().join(".venv/lib/python3.12/site-packages/onnxruntime/capi");
        std::fs::create_dir_all(&capi).unwrap();
        let sub = root.path().join("a/b");
        std::fs::create_dir_all(&sub).unwrap();
        assert_eq!(venv_library(&[&sub]), None);
        for name in ["libonnxruntime_providers_shared.so", "libonnxruntime.so.1.32.0"] {
            std::fs::write(capi.join(name), b"").unwrap();
        }
        assert_eq!(venv_library(&[Path::new("/nonexistent"), &sub]), Some(capi.join("libonnxruntime.so.1.32.0")));
    }

    #[test]
    fn missing_and_broken_libraries_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("libonnxruntime.so");
        let err = OrtRuntime::open(Some(&missing), OrtOptimization::All).err().expect("no library");
        assert!(matches!(err, OrtUnavailable::Missing { from: LibrarySource::Flag, .. }), "{err}");
        assert!(err.to_string().contains("does not exist"), "{err}");
        let garbage = dir.path().join("garbage.so");
        std::fs::write(&garbage, "not a shared library").unwrap();
        let err = OrtRuntime::open(Some(&garbage), OrtOptimization::All).err().expect("not a library");
        // The loader's own error, unless another test of this process has
        // loaded the real library first.
        assert!(matches!(err, OrtUnavailable::Load { .. } | OrtUnavailable::AlreadyLoaded { .. }), "{err}");
        assert!(err.to_string().contains("garbage.so"), "{err}");
    }

    #[test]
    fn trace_conv_input_types() {
        // A QLinearConv, and an fp16 Conv run by ORT 1.32 in float, trimmed.
        let trace = r#"[
            {"cat": "Node", "dur": 5, "name": "QLinearConv_2_kernel_time",
             "args": {"op_name": "QLinearConv", "input_type_shape": [{"uint8": [1, 16, 8, 8]}, {"float": []}]}},
            {"cat": "Node", "dur": 0, "name": "QLinearConv_2_fence_after", "args": {"op_name": "QLinearConv"}},
            {"cat": "Node", "dur": 7, "name": "InsertedPrecisionFreeCast_yh_nchwc_kernel_time",
             "args": {"op_name": "Conv", "input_type_shape": [{"float": [1, 16, 8, 8]}, {"float": [16, 16, 3, 3]}]}},
            {"cat": "Node", "dur": 1, "name": "Cast_3_kernel_time",
             "args": {"op_name": "Cast", "input_type_shape": [{"float": [1, 16, 8, 8]}]}},
            {"cat": "Node", "dur": 5, "name": "QLinearConv_2_kernel_time",
             "args": {"op_name": "QLinearConv", "input_type_shape": [{"uint8": [1, 16, 8, 8]}]}},
            {"cat": "Node", "dur": 3, "name": "Conv_4_kernel_time", "args": {"op_name": "Conv"}},
            {"cat": "Session", "dur": 194, "name": "model_run", "args": {}}
        ]"#;
        let run = |node: &str, op_type: &str, input_type: Option<&str>| ConvRun {
            node: node.into(),
            op_type: op_type.into(),
            input_type: input_type.map(Into::into),
        };
        assert_eq!(
            conv_input_types(trace).unwrap(),
            [
                run("QLinearConv_2", "QLinearConv", Some("uint8")),
                run("InsertedPrecisionFreeCast_yh_nchwc", "Conv", Some("float")),
                run("Conv_4", "Conv", None),
            ]
        );
        // The profile as a whole still reads.
        assert_eq!(kernel_times(trace, 0).unwrap().totals.len(), 4);
    }

    #[test]
    fn probing_finds_fp32_and_int8_native_and_fp16_converted() {
        let ort = venv_ort(OrtOptimization::All);
        let native = ort.precisions();
        assert!(native.starts_with(&["fp32".into(), "int8".into()]), "{native:?}: {:#?}", ort.precisions_unavailable());
        // ORT's x86 CPU provider has no float16 conv, and casts to float.
        if cfg!(target_arch = "x86_64") {
            assert_eq!(ort.precisions(), ["fp32", "int8"]);
            let fp16 = &ort.precisions_unavailable()["fp16"];
            assert!(fp16.starts_with("ONNX Runtime converts the fp16 conv and runs it in float"), "{fp16}");
        }
        // The fp32 conv judged as fp16: it runs in float.
        let fp32_as_fp16 = Probe { precision: Precision::Fp16, ..Probe::new(Precision::Fp32) };
        let reason = ort.runs_natively(&fp32_as_fp16).unwrap_err().0;
        assert!(reason.starts_with("ONNX Runtime converts the fp16 conv and runs it in float"), "{reason}");
    }

    /// The venv's ONNX Runtime (scripts/setup.sh installs it).
    pub(crate) fn venv_ort(optimization: OrtOptimization) -> OrtRuntime {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let library = venv_library(&[manifest]).expect("no ONNX Runtime in .venv: run scripts/setup.sh");
        OrtRuntime::open(Some(&library), optimization).unwrap()
    }

    /// What ORT does beyond the conformance suite (`runtime::conformance`):
    /// its version, and, unoptimised, a profile of the ONNX nodes by name.
    #[test]
    fn unoptimized_profiles_name_the_onnx_nodes() {
        let proto = edgeloop_onnx::samples::MbconvNet::small().to_model();
        let (bytes, inputs) = crate::runtime::conformance::sample();
        let ort = venv_ort(OrtOptimization::Disable);
        assert!(ort.version().starts_with("1."), "{}", ort.version());
        let mut model = ort.load(&bytes, &inputs, LoadOptions { threads: 2 }).unwrap();
        let ops = model.profile(NonZeroUsize::new(3).unwrap()).unwrap();
        let onnx: Vec<&str> = proto.graph.as_ref().unwrap().node.iter().map(|n| n.name.as_str()).collect();
        assert!(ops.iter().all(|op| onnx.contains(&op.node.as_str())), "{ops:#?}");
    }
}
