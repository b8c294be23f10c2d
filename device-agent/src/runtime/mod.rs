//! The seam between the measurement engine and inference runtimes. The
//! engine times `LoadedModel::run`; a runtime only loads and runs, and
//! times its own nodes for the per-op profile.
//!
//! tract is always built in. ONNX Runtime (`ort`) is behind the `ort` cargo
//! feature and loaded at start-up from a shared library; builds without the
//! feature (static musl agents, which cannot dlopen glibc's
//! libonnxruntime.so) and machines without the library say why in
//! `/v1/info`'s `runtimes_unavailable`.

#[cfg(test)]
mod conformance;
#[cfg(feature = "ort")]
mod ort;
mod probe;
#[cfg(test)]
mod scripted;
mod tract;

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use edgeloop_api::{OpTime, RuntimeInfo};

#[cfg(feature = "ort")]
pub use self::ort::{LibrarySource, OrtRuntime, OrtUnavailable};
pub use self::probe::{Precision, PrecisionSupport, Probe};
#[cfg(test)]
pub(crate) use self::scripted::ScriptedRuntime;
pub use self::tract::TractRuntime;
use crate::inputs::InputTensor;

/// What a runtime reports when it cannot load or run a model. The message is
/// the runtime's own, passed on to the client.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RuntimeError(pub String);

/// Options fixed at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    pub threads: usize,
}

pub trait Runtime: Send + Sync {
    fn name(&self) -> &'static str;
    fn version(&self) -> String;
    /// Precisions this runtime executes natively on this machine. Found
    /// out by loading probes ([`PrecisionSupport::probe`]), so the first
    /// call takes a while; a runtime keeps the answer.
    fn precisions(&self) -> Vec<String>;
    /// Why each precision a probe was tried for is not in
    /// [`Runtime::precisions`].
    fn precisions_unavailable(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }
    /// Parses and optimises `model` for exactly these inputs; after this,
    /// `run` does nothing but inference.
    fn load(
        &self,
        model: &[u8],
        inputs: &[InputTensor],
        options: LoadOptions,
    ) -> Result<Box<dyn LoadedModel>, RuntimeError>;
}

/// A model ready to run on the inputs it was loaded with.
pub trait LoadedModel {
    fn run(&mut self) -> Result<(), RuntimeError>;
    /// Runs the model `runs` times timing each compute node, and returns
    /// the mean time per run of each node, slowest first. Node times leave
    /// out the runtime's work between nodes, and the clock reads slow each
    /// run a little: these runs are never the timed ones.
    fn profile(&mut self, runs: NonZeroUsize) -> Result<Vec<OpTime>, RuntimeError>;
    /// Runs the model once and returns its outputs in the graph's order,
    /// to cross-check runtimes (never timed).
    fn outputs(&mut self) -> Result<Vec<OutputTensor>, RuntimeError>;
}

/// One output of a run, flattened in row-major order. Values are widened
/// to f64 so that outputs of every numeric type compare alike.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
}

/// One node's time summed over the profile runs.
struct NodeTotal {
    node: String,
    op_type: String,
    total: Duration,
}

/// Per-node totals over `runs` runs as the API's profile: mean ms per run,
/// share of the summed node times, slowest first.
fn op_times(totals: Vec<NodeTotal>, runs: NonZeroUsize) -> Vec<OpTime> {
    let summed: f64 = totals.iter().map(|t| t.total.as_secs_f64()).sum();
    let mut ops: Vec<OpTime> = totals
        .into_iter()
        .map(|t| OpTime {
            ms: t.total.as_secs_f64() * 1e3 / runs.get() as f64,
            share: if summed > 0.0 { t.total.as_secs_f64() / summed } else { 0.0 },
            node: t.node,
            op_type: t.op_type,
        })
        .collect();
    ops.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    ops
}

/// ONNX Runtime's graph optimisation level (`--ort-optimization`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum OrtOptimization {
    Disable,
    Basic,
    Extended,
    #[default]
    All,
}

impl OrtOptimization {
    const LEVELS: [OrtOptimization; 4] =
        [OrtOptimization::Disable, OrtOptimization::Basic, OrtOptimization::Extended, OrtOptimization::All];

    fn name(self) -> &'static str {
        match self {
            OrtOptimization::Disable => "disable",
            OrtOptimization::Basic => "basic",
            OrtOptimization::Extended => "extended",
            OrtOptimization::All => "all",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown ONNX Runtime optimisation level `{0}` (expected disable, basic, extended or all)")]
pub struct ParseOrtOptimizationError(String);

impl FromStr for OrtOptimization {
    type Err = ParseOrtOptimizationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::LEVELS
            .into_iter()
            .find(|level| level.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| ParseOrtOptimizationError(s.to_string()))
    }
}

impl fmt::Display for OrtOptimization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the agent sets up its runtimes (flags of serve, bench, info and compare).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuntimeSettings {
    /// libonnxruntime to load (`--ort-lib`); else `ORT_DYLIB_PATH`, else
    /// the one in a project `.venv` (see [`OrtRuntime::open`]).
    pub ort_lib: Option<PathBuf>,
    pub ort_optimization: OrtOptimization,
}

/// The runtimes this agent can measure with, by name.
#[derive(Clone, Default)]
pub struct Runtimes {
    available: BTreeMap<&'static str, Arc<dyn Runtime>>,
    unavailable: BTreeMap<String, String>,
}

impl Runtimes {
    /// Every runtime compiled into this build that can run here; the others
    /// are listed in [`Runtimes::unavailable`] with the reason.
    pub fn detect(settings: &RuntimeSettings) -> Self {
        let mut runtimes = Runtimes::default();
        runtimes.add(Arc::new(TractRuntime));
        match ort_runtime(settings) {
            Ok(ort) => runtimes.add(ort),
            Err(reason) => {
                runtimes.unavailable.insert("ort".into(), reason);
            }
        }
        runtimes
    }

    pub fn add(&mut self, runtime: Arc<dyn Runtime>) {
        self.available.insert(runtime.name(), runtime);
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Runtime>> {
        self.available.get(name)
    }

    /// Why `name` can't be used here (unknown to this build, or failed to load).
    pub fn unavailable_reason(&self, name: &str) -> String {
        let known: Vec<_> = self.available.keys().copied().collect();
        let available = format!("available: {}", known.join(", "));
        match self.unavailable.get(name) {
            Some(reason) => format!("runtime `{name}` is not available on this agent ({available}): {reason}"),
            None => format!("runtime `{name}` is not available on this agent ({available})"),
        }
    }

    pub fn infos(&self) -> Vec<RuntimeInfo> {
        self.available
            .values()
            .map(|r| RuntimeInfo {
                name: r.name().into(),
                version: r.version(),
                precisions: r.precisions(),
                precisions_unavailable: r.precisions_unavailable(),
            })
            .collect()
    }

    pub fn unavailable(&self) -> &BTreeMap<String, String> {
        &self.unavailable
    }
}

#[cfg(feature = "ort")]
fn ort_runtime(settings: &RuntimeSettings) -> Result<Arc<dyn Runtime>, String> {
    match OrtRuntime::open(settings.ort_lib.as_deref(), settings.ort_optimization) {
        Ok(ort) => Ok(Arc::new(ort)),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(not(feature = "ort"))]
fn ort_runtime(_: &RuntimeSettings) -> Result<Arc<dyn Runtime>, String> {
    Err("this agent was built without ONNX Runtime (static musl builds are tract-only)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optimisation_levels_parse_and_print() {
        for level in OrtOptimization::LEVELS {
            assert_eq!(level.to_string().parse::<OrtOptimization>().unwrap(), level);
        }
        assert_eq!(OrtOptimization::default().to_string(), "all");
        assert_eq!("ALL".parse::<OrtOptimization>().unwrap(), OrtOptimization::All);
        assert!("fast".parse::<OrtOptimization>().unwrap_err().to_string().contains("`fast`"));
    }

    #[test]
    fn unavailable_runtimes_say_why() {
        let missing = "/nonexistent/libonnxruntime.so";
        let runtimes = Runtimes::detect(&RuntimeSettings { ort_lib: Some(missing.into()), ..Default::default() });
        assert!(runtimes.get("tract").is_some());
        assert!(runtimes.get("ort").is_none());
        let reason = &runtimes.unavailable()["ort"];
        let expected = if cfg!(feature = "ort") { missing } else { "built without ONNX Runtime" };
        assert!(reason.contains(expected), "{reason}");
        assert_eq!(
            runtimes.unavailable_reason("ort"),
            format!("runtime `ort` is not available on this agent (available: tract): {reason}")
        );
        assert_eq!(
            runtimes.unavailable_reason("onnx-mlir"),
            "runtime `onnx-mlir` is not available on this agent (available: tract)"
        );
    }
}
