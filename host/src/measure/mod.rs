//! The host's measurement service: every model a search, a training run,
//! a quantization search, a table build or validation and a baseline sweep
//! times on the device goes through [`Measurements`] — the cache, the
//! energy requirement, the clean-reading checks (`hygiene`) and the
//! spreading of work over a device class. [`DevicePool`] implements it
//! over a [`Fleet`], what actually reaches the devices: agents called
//! directly with failover (`direct`), or the jobs queue of a device farm
//! (`crate::farm`).

mod direct;
pub mod hygiene;
mod pool;

use std::time::Duration;

pub use direct::{DirectFleet, probe};
use edgeloop_api::{DeviceInfo, MeasureRequest, Measurement};
use edgeloop_space::Arch;
use futures_util::future::LocalBoxFuture;
pub use hygiene::Checked;
pub use pool::DevicePool;
use serde::{Deserialize, Serialize};

use crate::cache::{CacheError, CachedMeasurement, MeasurementCache};
use crate::client::{AgentClient, ClientError};
use crate::farm::{FarmFleet, FarmTarget};

/// Failures of one job that were not the model's fault (each on an agent
/// then parked) before the job is given up.
pub const MAX_ATTEMPTS: usize = 4;

/// How long jobs wait with every device of the class down before the work is given up.
pub const ALL_DOWN_GRACE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    #[error("cannot reach the agent at {url}")]
    Info {
        url: String,
        #[source]
        source: ClientError,
    },
    #[error(
        "the agents are not one device class: {first_url} is {first} and {url} is {other}; \
         a search pools devices of one kind only"
    )]
    Mixed { first_url: String, first: String, url: String, other: String },
    #[error("measuring {what} on {url}")]
    Measure {
        what: String,
        url: String,
        #[source]
        source: ClientError,
    },
    #[error("gave up measuring {what} after {attempts} failed attempts on the pool's agents; the last, on {url}")]
    GaveUp {
        what: String,
        attempts: usize,
        url: String,
        #[source]
        source: ClientError,
    },
    #[error("every device of the class has been down for {:.1} s ({devices}); {left} measurements not taken", grace.as_secs_f64())]
    AllDown { devices: String, grace: Duration, left: usize },
    #[error("the farm could not measure {what}: {reason}")]
    FarmFailed { what: String, reason: String },
    #[error(transparent)]
    Farm(Box<crate::farm::FarmError>),
    #[error(transparent)]
    Cache(#[from] CacheError),
}

impl From<crate::farm::FarmError> for MeasureError {
    fn from(error: crate::farm::FarmError) -> Self {
        MeasureError::Farm(Box::new(error))
    }
}

/// Where a command measures: agents it calls itself, or a device class of a farm.
#[derive(Debug, Clone)]
pub enum Devices {
    Agents(Vec<AgentClient>),
    Farm(FarmTarget),
}

impl Devices {
    /// The measurement service over these devices, caching in `cache`.
    pub async fn connect(&self, cache: MeasurementCache) -> Result<DevicePool, MeasureError> {
        match self {
            Devices::Agents(clients) => DevicePool::connect(clients.clone(), cache).await,
            Devices::Farm(target) => Ok(DevicePool::over(Box::new(FarmFleet::connect(target.clone()).await?), cache)),
        }
    }
}

/// One model to measure, and how its measurement is kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// How the jobs of one call are measured on a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Procedure {
    /// The settings of every measurement (its `model` is each job's).
    pub request: MeasureRequest,
    /// `Some(spread)`: taken clean (`hygiene`), judged by the device's usual
    /// median/fastest spread; `None`: one raw reading.
    pub clean: Option<f64>,
}

/// A job measured, and on which device.
#[derive(Debug, Clone)]
pub struct Taken {
    pub job: MeasureJob,
    pub checked: Checked,
    pub device_id: String,
}

/// What a fleet measured of a call's jobs (also when one failed), and whether all went well.
pub type Taking = (Vec<Taken>, Result<(), MeasureError>);

/// What reaches the devices of one class: jobs in, measurements out. The
/// cache, the counts and the choice of procedure stay in [`DevicePool`].
pub trait Fleet {
    /// What the devices are: the class's representative `/v1/info`.
    fn device(&self) -> &DeviceInfo;

    /// The devices whose cached measurements stand for the class's.
    fn device_ids(&self) -> Vec<String>;

    /// How long jobs wait with every device down before the work is given up.
    fn set_grace(&mut self, grace: Duration);

    /// Measures `jobs` per `procedure`. `fresh`: the measurement must be
    /// taken now, not answered from a cache the fleet shares with others.
    fn take<'a>(&'a self, jobs: Vec<MeasureJob>, procedure: &'a Procedure, fresh: bool) -> LocalBoxFuture<'a, Taking>;
}

/// One job measured on one agent per `procedure` (the agent-facing part
/// every fleet shares): re-taken while contaminated when it is to be
/// clean, refused when energy was asked for and the agent has none.
pub async fn take_on(
    client: &AgentClient,
    model: &[u8],
    procedure: &Procedure,
    expected_min: Option<f64>,
) -> Result<Checked, ClientError> {
    let checked = match procedure.clean {
        Some(spread) => hygiene::measure(client, model, &procedure.request, spread, expected_min).await?,
        None => {
            let (_, measurement) = client.upload_and_measure(model, &procedure.request).await?;
            Checked { measurement, remeasured: 0, suspect: None }
        }
    };
    client.require_energy(&procedure.request, &checked.measurement)?;
    Ok(checked)
}

/// What makes two devices interchangeable for measuring: the same CPU,
/// cores and runtimes (each at its version).
pub fn class_fingerprint(info: &DeviceInfo) -> String {
    let runtimes: Vec<String> = info.runtimes.iter().map(|r| format!("{} {}", r.name, r.version)).collect();
    format!("{} {} ({} cores; {})", info.arch, info.cpu_model, info.logical_cores, runtimes.join(", "))
}

/// Whether a failure is the agent's (or the network's) rather than the
/// model's: another agent of the class may well succeed.
pub fn agents_fault(error: &ClientError) -> bool {
    match error {
        ClientError::Connect { .. } | ClientError::Timeout { .. } | ClientError::Http(_) => true,
        ClientError::Api { status, .. } | ClientError::UnexpectedStatus { status, .. } => {
            *status >= 500 || *status == 408
        }
        ClientError::InvalidUrl { .. } | ClientError::Decode { .. } | ClientError::NoEnergy { .. } => false,
    }
}
