//! The host's measurement service: every model a search, a training run,
//! a quantization search, a table build or validation and a baseline sweep
//! times on the device goes through [`Measurements`] — the cache, the
//! energy requirement, the clean-reading checks (`hygiene`) and the
//! spreading of work over a device class. The
//! pool of agents of one class ([`DevicePool`]) is today's implementation;
//! failover across agents or a remote farm are others, not edits of the
//! callers.

pub mod hygiene;
mod pool;

use edgeloop_api::{DeviceInfo, MeasureRequest, Measurement};
use edgeloop_space::Arch;
use futures_util::future::LocalBoxFuture;
pub use hygiene::Checked;
pub use pool::{DevicePool, MeasureError};

use crate::cache::CachedMeasurement;

/// One model to measure, and how its measurement is kept.
#[derive(Debug, Clone)]
pub struct MeasureJob {
    /// The cache key: an architecture's hash, or what else identifies the
    /// model's cost (a quantization policy of one arch).
    pub key: String,
    /// What it is, one entry per layer or block (kept with the measurement).
    pub ops: Vec<String>,
    /// How errors name it, e.g. `arch 0123456789ab`.
    pub label: String,
    /// Its ONNX bytes; empty when the cache has it (nothing is uploaded then).
    pub bytes: Vec<u8>,
    /// The table's prediction of its fastest run, when there is one (see `hygiene`).
    pub expected_min: Option<f64>,
}

impl MeasureJob {
    /// A model known by `key` alone (a table row, a baseline width).
    pub fn model(key: String, bytes: Vec<u8>) -> MeasureJob {
        MeasureJob { label: key.clone(), ops: vec![key.clone()], key, bytes, expected_min: None }
    }

    /// `arch`, cached under its hash.
    pub fn arch(arch: &Arch, bytes: Vec<u8>, expected_min: Option<f64>) -> MeasureJob {
        let key = arch.hash();
        MeasureJob {
            label: format!("arch {}", &key[..12]),
            key,
            ops: arch.ops.iter().map(ToString::to_string).collect(),
            bytes,
            expected_min,
        }
    }
}

/// How many measurements a service took on its devices for its cache, and
/// how many it answered from its cache, in this process (what a search
/// spent on candidates; final models, table rows and validation networks
/// are not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeasureCounts {
    pub measured: usize,
    pub cache_hits: usize,
}

/// Measurements of models on one device class. The futures run on the
/// caller's task (a search's models are measured while it waits), so they
/// need not be `Send`.
pub trait Measurements {
    /// What the devices are (the first one's `/v1/info`).
    fn device(&self) -> &DeviceInfo;

    /// What the service holds for `key` on its devices (with energy when `energy`).
    fn cached(&self, key: &str, energy: bool) -> Option<&CachedMeasurement>;

    /// Every measurement the service holds for its devices.
    fn all_cached(&self) -> Vec<&CachedMeasurement>;

    /// Each job's measurement, in order: the cached one, or one taken now
    /// (clean where it can be, with energy when `request` asks) and cached.
    fn measure<'a>(
        &'a mut self,
        jobs: Vec<MeasureJob>,
        request: &'a MeasureRequest,
    ) -> LocalBoxFuture<'a, Result<Vec<CachedMeasurement>, MeasureError>>;

    /// `job` measured again whatever the cache holds; the new reading
    /// replaces the cached one. For a verdict that must not rest on a
    /// reading from a slow stretch of the device.
    fn remeasure<'a>(
        &'a mut self,
        job: MeasureJob,
        request: &'a MeasureRequest,
    ) -> LocalBoxFuture<'a, Result<CachedMeasurement, MeasureError>>;

    /// `job` measured as `request` says and not cached: a final model,
    /// whose measurement (with its per-op profile) is the run's verdict.
    fn measure_uncached<'a>(
        &'a mut self,
        job: MeasureJob,
        request: &'a MeasureRequest,
    ) -> LocalBoxFuture<'a, Result<Checked, MeasureError>>;

    /// `job` measured once as `request` says, neither cached nor checked
    /// for contamination: a table row or a validation network, whose runs'
    /// spread is part of what is recorded.
    fn measure_once<'a>(
        &'a mut self,
        job: MeasureJob,
        request: &'a MeasureRequest,
    ) -> LocalBoxFuture<'a, Result<Measurement, MeasureError>>;

    fn counts(&self) -> MeasureCounts;
}
