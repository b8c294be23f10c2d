//! `edgeloop train`: one fixed architecture trained from scratch with the
//! recipe of a search's final training, exported, measured on the device
//! and written up in the same `result.json` a search writes — so that a
//! searched network and a hand-designed one (MobileNetV2's block, scaled by
//! a width multiplier: `baseline`) are compared like for like.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use edgeloop_api::MeasureRequest;
use edgeloop_space::{Arch, Space};
use edgeloop_train::DeviceKind;

use crate::cache::MeasurementCache;
use crate::events::{Event, Events};
use crate::predict::{Metric, Predictor, Stat};
use crate::search::final_model::{self, FinalContext};
use crate::search::result::{Predictors, RunKind, Timings};
use crate::search::{Budget, Decision, FinalSettings, RunDir, SearchResult, calibrated_table, device_table};

/// Where a fixed architecture is trained and measured.
#[derive(Clone)]
pub struct TrainEnv {
    pub out: PathBuf,
    pub resume: bool,
    /// Agents of the device (one class; see `DevicePool`).
    pub devices: crate::measure::Devices,
    /// The device's latency table [default: built/completed through the agent].
    pub table: Option<PathBuf>,
    pub device_kind: DeviceKind,
    pub final_request: MeasureRequest,
    /// Where the training reports its progress.
    pub events: Events,
}

/// Trains `arch` per `settings`, measures it, judges it against
/// `budget_ms` (of `stat`) when given, and writes `<out>/result.json`.
pub async fn run(
    settings: &FinalSettings,
    arch: &Arch,
    budget_ms: Option<f64>,
    stat: Stat,
    env: &TrainEnv,
) -> anyhow::Result<SearchResult> {
    let space = Space::load(&settings.space, settings.width)?;
    arch.validate(&space).with_context(|| format!("architecture for {} at width {}", space.name(), space.width))?;
    anyhow::ensure!(stat != Stat::Min, "a budget is judged on p50 or p90, not on the fastest run");
    let dir = RunDir::new(&env.out);
    let _lock = crate::resume::open_run_dir(&dir.root, env.resume, &[dir.final_checkpoint()], "training")?;
    let device = env.device_kind.resolve()?;
    edgeloop_train::device::keep_freed_memory();
    let events = env.events.as_ref();
    let cache = MeasurementCache::open(&dir.measurements())?;
    let mut pool = env.devices.connect(cache).await?;
    let table_path = match &env.table {
        Some(path) => path.clone(),
        None => device_table(&mut pool, &space, &settings.runtime, settings.measure_threads, false, events).await?,
    };
    let (table, calibration) =
        calibrated_table(&mut pool, &space, &table_path, stat, &env.final_request, !env.resume, events).await?;
    pool.set_spread(crate::measure::hygiene::typical_spread(&table));
    let predictors = Predictors {
        latency: Predictor::calibrated(&table, Some(&calibration), stat)?,
        energy: None,
        fastest: Predictor::calibrated(&table, Some(&calibration), Stat::Min)?,
    };
    let data = settings.recipe.data(&space)?;
    let budget = budget_ms.map(|limit| Budget { metric: Metric::Latency, limit, stat });
    let decision = Decision {
        derived: arch.clone(),
        derived_measured: f64::NAN,
        chosen: arch.clone(),
        reason: String::new(),
        round: 0,
        margin: 0.0,
        candidates: Vec::new(),
        misses: Vec::new(),
        fastest_measured: None,
        lambda: None,
    };
    let ctx = FinalContext {
        settings,
        space: &space,
        data: &data,
        device,
        dir: &dir,
        budget,
        final_request: &env.final_request,
        events,
    };
    events.emit(Event::TrainingArch {
        hash: arch.hash(),
        ops: arch.ops.iter().map(ToString::to_string).collect(),
        space: space.name().to_string(),
        width: space.width,
        epochs: settings.recipe.final_epochs,
        device: edgeloop_train::device::describe(device),
    });
    let started = Instant::now();
    let (vs, test_accuracy) = final_model::train(&ctx, &decision)?;
    let final_seconds = started.elapsed().as_secs_f64();
    let outcome = final_model::measure(&ctx, &mut pool, &predictors, &vs, &decision).await?;
    let timings = Timings { search_seconds: 0.0, final_seconds };
    let mut result = SearchResult::of_final(RunKind::Train, &ctx, &pool, &predictors, outcome, test_accuracy, timings)?;
    result.decision = "a fixed architecture, trained with a search's final recipe".into();
    result.save(&dir.result())?;
    Ok(result)
}
