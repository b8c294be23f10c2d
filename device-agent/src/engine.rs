//! The measurement engine (DESIGN §6): optional cool-down, CPU pinning,
//! load, first run, warm-up, then timed runs until both `min_runs` and
//! `min_duration` are met or `max_duration` is reached — with temperature
//! and frequency watched, and energy sampled when asked — then, if asked,
//! extra profiled runs. Used by the server's worker and by
//! `edgeloop-agent bench`.

use std::num::NonZeroUsize;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edgeloop_api::{EnergyStats, LatencyStats, LoadStats, MeasureRequest, Measurement, OpTime, ThermalStats};

use crate::affinity::{self, AffinityError};
use crate::energy::{EnergyMeter, MeterConfig, SensorChoice};
use crate::inputs::random_inputs;
use crate::limits::{InspectError, Limits};
use crate::load::CpuSnapshot;
use crate::runtime::{LoadOptions, Runtime, RuntimeError};
use crate::thermal::{self, CooldownTimeout, MonitorConfig, ThermalMonitor};

/// Where the engine reads sensors, and how it uses them. Tests point `sys`
/// at fixture trees.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Sensors {
    /// The sysfs root (`/sys`): thermal zones, cpufreq, power sensors.
    pub sys: PathBuf,
    /// The procfs root (`/proc`): CPU time of the machine and of the agent.
    pub proc: PathBuf,
    pub energy_sensor: SensorChoice,
    pub meter: MeterConfig,
    pub monitor: MonitorConfig,
}

impl Default for Sensors {
    fn default() -> Self {
        Sensors {
            sys: "/sys".into(),
            proc: "/proc".into(),
            energy_sensor: SensorChoice::Auto,
            meter: MeterConfig::default(),
            monitor: MonitorConfig::default(),
        }
    }
}

/// How long and how often to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunPlan {
    pub warmup_runs: usize,
    pub min_runs: usize,
    pub min_duration: Duration,
    pub max_duration: Duration,
}

impl RunPlan {
    /// The plan of `req`; with energy, timed for at least `min_energy_window`.
    pub fn from_request(req: &MeasureRequest, min_energy_window: Duration) -> Result<Self, MeasureError> {
        if req.min_runs == 0 {
            return Err(MeasureError::BadRequest("min_runs must be at least 1".into()));
        }
        if req.max_duration_ms < req.min_duration_ms {
            return Err(MeasureError::BadRequest(format!(
                "max_duration_ms ({}) is below min_duration_ms ({})",
                req.max_duration_ms, req.min_duration_ms
            )));
        }
        let mut min_duration = Duration::from_millis(req.min_duration_ms);
        let mut max_duration = Duration::from_millis(req.max_duration_ms);
        if req.energy {
            min_duration = min_duration.max(min_energy_window);
            max_duration = max_duration.max(min_duration);
        }
        Ok(RunPlan { warmup_runs: req.warmup_runs, min_runs: req.min_runs, min_duration, max_duration })
    }
}

/// Timings of one measurement, before it is wrapped into a `Measurement`.
#[derive(Debug, Clone, PartialEq)]
pub struct Timings {
    pub load_ms: f64,
    pub first_run_ms: f64,
    pub samples_ms: Vec<f64>,
    pub stats: LatencyStats,
    pub started_at: u64,
    pub finished_at: u64,
    pub energy: Option<EnergyStats>,
    /// Why `energy` is missing when it was asked for.
    pub energy_unavailable_reason: Option<String>,
    pub thermal: ThermalStats,
    pub load: Option<LoadStats>,
    pub ops: Option<Vec<OpTime>>,
    /// The measuring thread's CPUs while pinned (only when `cpus` was asked).
    pub cpus: Option<Vec<usize>>,
}

impl Timings {
    /// The API's `Measurement` of these timings; the caller adds queueing.
    pub fn into_measurement(self, req: &MeasureRequest, device_id: &str, runtime: &dyn Runtime) -> Measurement {
        Measurement {
            model: req.model.clone(),
            device_id: device_id.to_string(),
            runtime: runtime.name().into(),
            runtime_version: runtime.version(),
            threads: req.threads,
            load_ms: self.load_ms,
            first_run_ms: self.first_run_ms,
            warmup_runs: req.warmup_runs,
            latency_ms: self.stats,
            samples_ms: req.keep_samples.then_some(self.samples_ms),
            energy: self.energy,
            energy_unavailable_reason: self.energy_unavailable_reason,
            thermal: Some(self.thermal),
            load: self.load,
            ops: self.ops,
            cpus: self.cpus,
            queue_wait_ms: 0.0,
            started_at: self.started_at,
            finished_at: self.finished_at,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Inspect(#[from] InspectError),
    #[error("runtime could not load the model: {0}")]
    Load(RuntimeError),
    #[error("runtime failed while running the model: {0}")]
    Run(RuntimeError),
    #[error("runtime panicked: {0}")]
    Panic(String),
    #[error("cannot pin the measuring threads: {0}")]
    Affinity(#[from] AffinityError),
    #[error("device too hot to measure: {0}")]
    TooHot(#[from] CooldownTimeout),
    #[error("cannot start the thermal monitor: {0}")]
    Monitor(std::io::Error),
}

fn unix_micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// n, mean, sample std, nearest-rank percentiles. `samples` must not be empty.
pub fn latency_stats(samples: &[f64]) -> LatencyStats {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let mean = sorted.iter().sum::<f64>() / n as f64;
    let var = if n > 1 { sorted.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64 } else { 0.0 };
    let pct = |p: f64| sorted[((p / 100.0 * n as f64).ceil() as usize).clamp(1, n) - 1];
    LatencyStats {
        n,
        mean,
        std: var.sqrt(),
        min: sorted[0],
        p50: pct(50.0),
        p90: pct(90.0),
        p99: pct(99.0),
        max: sorted[n - 1],
    }
}

/// Measures `model` bytes with `runtime` per `req`, reading `sensors`,
/// within `limits`. Panics anywhere in it, the runtime's included, are
/// caught and reported as [`MeasureError::Panic`], so the caller's thread
/// lives on.
pub fn measure(
    runtime: &dyn Runtime,
    model: &[u8],
    req: &MeasureRequest,
    sensors: &Sensors,
    limits: &Limits,
) -> Result<Timings, MeasureError> {
    catch_unwind(AssertUnwindSafe(|| measure_unguarded(runtime, model, req, sensors, limits)))
        .unwrap_or_else(|payload| Err(MeasureError::Panic(panic_message(payload.as_ref()))))
}

fn measure_unguarded(
    runtime: &dyn Runtime,
    model: &[u8],
    req: &MeasureRequest,
    sensors: &Sensors,
    limits: &Limits,
) -> Result<Timings, MeasureError> {
    let plan = RunPlan::from_request(req, sensors.meter.min_window)?;
    if req.threads == 0 {
        return Err(MeasureError::BadRequest("threads must be at least 1".into()));
    }
    let resolved = crate::limits::inspect(model, &req.inputs, limits)?;
    let inputs = random_inputs(&resolved, req.seed);
    let options = LoadOptions { threads: req.threads };
    let cooldown_wait = match req.cooldown_c {
        Some(below_c) => thermal::cool_down(&sensors.sys, below_c, Duration::from_millis(req.cooldown_timeout_ms))?,
        None => Duration::ZERO,
    };
    // Before load: the runtime's thread pool, built in `load`, inherits the pin.
    let _pin = req.cpus.as_deref().map(affinity::pin).transpose()?;
    let cpus = req.cpus.is_some().then(affinity::current).transpose()?;
    // Opened per measurement: a phone may have been plugged in since the last one.
    let meter = req.energy.then(|| EnergyMeter::open(&sensors.energy_sensor, &sensors.sys, sensors.meter));
    let load_start = Instant::now();
    let mut loaded = runtime.load(model, &inputs, options).map_err(MeasureError::Load)?;
    let load_ms = ms(load_start.elapsed());
    let first = Instant::now();
    loaded.run().map_err(MeasureError::Run)?;
    let first_run_ms = ms(first.elapsed());
    for _ in 0..plan.warmup_runs {
        loaded.run().map_err(MeasureError::Run)?;
    }
    let monitor =
        ThermalMonitor::start(&sensors.sys, req.cpus.as_deref(), sensors.monitor).map_err(MeasureError::Monitor)?;
    let cpu_start = CpuSnapshot::take(&sensors.proc);
    let (timed, energy) = match meter {
        Some(Ok(mut meter)) => {
            let (timed, reading) = meter.measure(|| time_runs(&plan, || loaded.run()));
            (timed, Some(reading.map_err(|e| e.to_string())))
        }
        Some(Err(e)) => (time_runs(&plan, || loaded.run()), Some(Err(e.to_string()))),
        None => (time_runs(&plan, || loaded.run()), None),
    };
    let load = cpu_start.zip(CpuSnapshot::take(&sensors.proc)).map(|(start, end)| start.load_until(&end));
    let thermal = ThermalStats { cooldown_wait_ms: ms(cooldown_wait), ..monitor.finish() };
    let (samples_ms, started_at, finished_at) = timed?;
    let (energy, energy_unavailable_reason) = match energy {
        Some(Ok(reading)) => (reading.stats(samples_ms.len()), None),
        Some(Err(reason)) => (None, Some(reason)),
        None => (None, None),
    };
    let ops = if req.profile_ops {
        Some(loaded.profile(profile_runs(samples_ms.len())).map_err(MeasureError::Run)?)
    } else {
        None
    };
    Ok(Timings {
        load_ms,
        first_run_ms,
        stats: latency_stats(&samples_ms),
        samples_ms,
        started_at,
        finished_at,
        energy,
        energy_unavailable_reason,
        thermal,
        load,
        ops,
        cpus,
    })
}

/// Profiled runs: as many as were timed, within 5..=50 — enough for a
/// stable mean per node without doubling a long measurement.
fn profile_runs(timed: usize) -> NonZeroUsize {
    NonZeroUsize::new(timed.clamp(5, 50)).expect("at least 5")
}

/// The timed loop; the clock is read around `run` alone. Returns the
/// samples and the Unix-µs window of the timed runs.
fn time_runs(
    plan: &RunPlan,
    mut run: impl FnMut() -> Result<(), RuntimeError>,
) -> Result<(Vec<f64>, u64, u64), MeasureError> {
    let mut samples = Vec::with_capacity(plan.min_runs);
    let started_at = unix_micros(SystemTime::now());
    let loop_start = Instant::now();
    loop {
        let t = Instant::now();
        run().map_err(MeasureError::Run)?;
        samples.push(ms(t.elapsed()));
        let total = loop_start.elapsed();
        let enough = samples.len() >= plan.min_runs && total >= plan.min_duration;
        if enough || total >= plan.max_duration {
            break;
        }
    }
    let finished_at = unix_micros(SystemTime::now());
    Ok((samples, started_at, finished_at))
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-string payload".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::ScriptedRuntime;

    #[test]
    fn stats_of_known_samples() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = latency_stats(&samples);
        assert_eq!((s.n, s.min, s.max), (100, 1.0, 100.0));
        assert_eq!((s.p50, s.p90, s.p99), (50.0, 90.0, 99.0));
        assert!((s.mean - 50.5).abs() < 1e-12);
        assert!((s.std - 29.011491975882016).abs() < 1e-9);
        let one = latency_stats(&[3.0]);
        assert_eq!((one.std, one.p50, one.p99), (0.0, 3.0, 3.0));
    }

    #[test]
    fn timed_loop_meets_min_runs_and_min_duration() {
        let plan = RunPlan {
            warmup_runs: 2,
            min_runs: 5,
            min_duration: Duration::from_millis(30),
            max_duration: Duration::from_secs(5),
        };
        let mut calls = 0;
        let (samples, start, end) = time_runs(&plan, || {
            calls += 1;
            std::thread::sleep(Duration::from_millis(2));
            Ok(())
        })
        .unwrap();
        assert!(samples.len() >= 5);
        assert_eq!(calls, samples.len(), "every timed call is one sample");
        assert!(end - start >= 30_000, "ran for at least min_duration");
    }

    #[test]
    fn timed_loop_stops_at_max_duration() {
        let plan = RunPlan {
            warmup_runs: 0,
            min_runs: 1_000_000,
            min_duration: Duration::ZERO,
            max_duration: Duration::from_millis(20),
        };
        let (samples, start, end) = time_runs(&plan, || {
            std::thread::sleep(Duration::from_millis(1));
            Ok(())
        })
        .unwrap();
        assert!(samples.len() < 1_000_000);
        assert!(end - start < 2_000_000);
    }

    #[test]
    fn runtime_panics_are_contained() {
        let model = edgeloop_onnx::encode(&edgeloop_onnx::samples::MbconvNet::small().to_model());
        let exploding = ScriptedRuntime { run: || panic!("kernel exploded") };
        let err = measure(&exploding, &model, &MeasureRequest::default(), &Sensors::default(), &Limits::default())
            .unwrap_err();
        assert!(matches!(&err, MeasureError::Panic(m) if m == "kernel exploded"), "{err}");
    }
}
