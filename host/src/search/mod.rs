//! `edgeloop search`: ProxylessNAS with the device in the loop (DESIGN §8).
//!
//! Stages, each its own piece: the space's supernet is trained with binary
//! paths (edgeloop-train) while a strategy moves through the space —
//! `gradient` moves α against the device's latency table, `reinforce`
//! against latencies measured live by the device's agents, with the budget
//! as a constraint whose multiplier adapts to the device (§8.1); `random`
//! only trains the supernet on uniform paths — the final architecture is
//! then derived under the budget from the table and the strategy's ranking
//! (`derive`, `decide`), its candidates measured on the device, the
//! best retrained from scratch, exported with its trained weights and
//! measured again (`final_model`). Only that last measurement decides
//! whether the budget is met; when it is not, the architecture is derived
//! again with a larger safety margin, a bounded number of times.
//!
//! The budget is a latency (p50 or p90 on the device, ms) or an energy per
//! inference (mJ above idle, from the agent's power sensor); an energy
//! search prices candidates from the energy columns of the device's table
//! and measures energy live.

pub mod costs;
mod decide;
pub mod derive;
pub mod final_model;
pub mod result;
mod run_dir;
mod settings;
mod state;
mod strategy;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use edgeloop_api::MeasureRequest;
use edgeloop_space::{Arch, Space};
use edgeloop_train::trainer::accuracy;
use edgeloop_train::{BnMode, DeviceKind, Supernet};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};
use tch::Device;

pub use decide::{CandidateRecord, Miss, grow_margin};
pub use result::{BlockTime, SearchResult, render_summary};
pub use run_dir::{EpochRow, RunDir};
pub use settings::{
    Budget, BudgetSettings, DEFAULT_CANDIDATES, DEFAULT_LAMBDA_LR, DEFAULT_ROUNDS, DeriveSettings, FinalSettings,
    ScheduleSettings, SearchSettings, TrainRecipe,
};
pub use state::{Trainable, TrainedRun, load_trained};
pub use strategy::{
    GradientSettings, GradientState, NaoSettings, NaoState, PrescreenSettings, RandomSettings, RandomState,
    ReinforceSettings, ReinforceState, RewardKind, Strategy, StrategyArgs, StrategySettings, StrategyState,
    UnasSettings, UnasState, dual_ascent,
};

use crate::cache::MeasurementCache;
use crate::calibrate::{self, Calibration};
use crate::dataset::Data;
use crate::events::{Event, EventSink, Events, Work};
use crate::measure::Measurements;
use crate::predict::{Metric, Predictor, Stat};
use crate::table::LatencyTable;

/// The safety margin of an energy budget: energy tables have no
/// calibration, so the margin starts here and grows on misses.
pub const ENERGY_MARGIN: f64 = 0.05;

/// Where and how a search runs; not part of its outcome, so free to change on resume.
pub struct SearchEnv {
    pub out: PathBuf,
    pub resume: bool,
    pub devices: crate::measure::Devices,
    pub table: Option<PathBuf>,
    pub device_kind: DeviceKind,
    /// Measurement of candidates during the search (short).
    pub probe_request: MeasureRequest,
    /// Measurement of the final model (the one the budget is judged on).
    pub final_request: MeasureRequest,
    /// Where the search reports its progress.
    pub events: Events,
}

/// The mean of the figures added so far (NaN before the first): a
/// training epoch's loss and the like.
#[derive(Default)]
struct Mean {
    sum: f64,
    n: usize,
}

impl Mean {
    fn add(&mut self, v: f64) {
        self.sum += v;
        self.n += 1;
    }

    fn mean(&self) -> f64 {
        if self.n == 0 { f64::NAN } else { self.sum / self.n as f64 }
    }
}

/// Seeds of one epoch's randomness, so a resumed epoch draws what it would have.
fn epoch_rng(seed: u64, epoch: usize) -> SmallRng {
    let mix = 0x9E37_79B9_7F4A_7C15 ^ (epoch as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    SmallRng::seed_from_u64(seed ^ mix)
}

/// The device's default latency table for the space (with energy columns
/// when `energy`), measuring any rows it lacks first (nothing, when it is complete).
pub async fn device_table(
    pool: &mut dyn Measurements,
    space: &Space,
    runtime: &str,
    threads: usize,
    energy: bool,
    events: &dyn EventSink,
) -> anyhow::Result<PathBuf> {
    use crate::table::build as table_build;
    let template = MeasureRequest { runtime: runtime.to_string(), threads, energy, ..table_build::default_request() };
    let fp32 = table_build::TablePrecision::Fp32;
    let path = table_build::default_path(&pool.device().device_id, runtime, space.name(), energy, fp32);
    let report = table_build::build(pool, space, &template, fp32, Some(&path), events).await?;
    if report.measured > 0 {
        events.emit(Event::TableCompleted { path: path.clone(), precision: None, measured: report.measured });
    }
    Ok(path)
}

/// The device's table at `path` with a calibration that predicts `stat`:
/// the stored one — when `check`, only while a few whole networks measured
/// now agree with it (`calibrate::check`) — else one fitted now on whole
/// networks measured through `pool` with the runs of `judged` (and stored
/// next to the table). A resumed run keeps what it started with unchecked.
pub async fn calibrated_table(
    pool: &mut dyn Measurements,
    space: &Space,
    path: &std::path::Path,
    stat: Stat,
    judged: &MeasureRequest,
    check: bool,
    events: &dyn EventSink,
) -> anyhow::Result<(LatencyTable, Calibration)> {
    let table = LatencyTable::load(path)?;
    let template = calibrate::network_request(&table, judged)?;
    if let Some(calibration) = Calibration::load_for(path)?.filter(|c| c.covers(stat)) {
        if !check {
            return Ok((table, calibration));
        }
        let mut ratios = calibrate::check(pool, space, &table, &calibration, &template).await?;
        if !calibration.is_stale(&ratios) {
            return Ok((table, calibration));
        }
        ratios.sort_by(f64::total_cmp);
        let ratio = ratios[ratios.len() / 2];
        events.emit(Event::CalibrationStale { table: path.to_path_buf(), ratio, networks: ratios.len() });
    }
    let networks = calibrate::DEFAULT_SAMPLES;
    events.emit(Event::Calibrating { table: path.to_path_buf(), stat, networks });
    let work = Work::start(events, "networks", networks as u64, 0);
    let calibration =
        calibrate::run(pool, space, &table, &template, networks, calibrate::DEFAULT_SEED, |_| work.advance(None))
            .await?;
    drop(work);
    Ok((table, calibration))
}

/// Runs (or resumes) a whole search; returns its result, also written to
/// `<out>/result.json`.
pub async fn run(settings: SearchSettings, mut env: SearchEnv) -> anyhow::Result<SearchResult> {
    settings.check()?;
    let budget = settings.budget();
    let with_energy = budget.metric == Metric::Energy;
    env.probe_request.energy = with_energy;
    env.final_request.energy = with_energy;
    let dir = RunDir::new(&env.out);
    let _lock =
        crate::resume::open_run_dir(&dir.root, env.resume, &[dir.checkpoint(), dir.final_checkpoint()], "search")?;
    let space = Space::load(&settings.space, settings.width)?;
    let device = env.device_kind.resolve()?;
    edgeloop_train::device::keep_freed_memory();
    let events = env.events.as_ref();
    events.emit(Event::TrainingOn { device: edgeloop_train::device::describe(device) });

    let cache = MeasurementCache::open(&dir.measurements())?;
    let mut pool = env.devices.connect(cache).await?;
    let table_path = match &env.table {
        Some(path) => path.clone(),
        None => {
            device_table(&mut pool, &space, &settings.runtime, settings.measure_threads, with_energy, events).await?
        }
    };
    // Energy tables carry latency too; their latency is calibrated like any.
    let judged_stat = if with_energy { Stat::P50 } else { budget.stat };
    let (table, calibration) =
        calibrated_table(&mut pool, &space, &table_path, judged_stat, &env.final_request, !env.resume, events).await?;
    pool.set_spread(crate::measure::hygiene::typical_spread(&table));
    let latency = Predictor::calibrated(&table, Some(&calibration), judged_stat)?;
    let energy = with_energy.then(|| Predictor::energy(&table)).transpose()?;
    let pricing = || format!("pricing the candidates of {} from {}", space.name(), table_path.display());
    let latency_costs = costs::cost_model(&latency, &space).with_context(pricing)?;
    let energy_costs = energy.as_ref().map(|p| costs::cost_model(p, &space)).transpose().with_context(pricing)?;
    let fastest = Predictor::calibrated(&table, Some(&calibration), Stat::Min)?;
    let min_costs = costs::cost_model(&fastest, &space).with_context(pricing)?;
    let margin = if with_energy {
        ENERGY_MARGIN
    } else {
        calibration.margin(budget.stat).expect("a covering calibration has a margin")
    };

    let data = settings.recipe.data(&space)?;
    events.emit(Event::Dataset {
        spec: settings.recipe.dataset.clone(),
        train: data.train.len(),
        holdout: data.holdout.len(),
        test: data.test.len(),
    });

    let ctx = strategy::Context {
        settings: &settings,
        env: &env,
        dir: &dir,
        space: &space,
        data: &data,
        device,
        budget,
        margin,
        latency_costs,
        energy_costs,
        min_costs,
    };
    let predictors = result::Predictors { latency, energy, fastest };
    let final_settings = settings.final_settings();
    let mut misses: Vec<Miss> = Vec::new();
    loop {
        let started = Instant::now();
        let decision = strategy::search(&ctx, &mut pool, &misses).await?;
        misses.clone_from(&decision.misses);
        let search_seconds = started.elapsed().as_secs_f64();
        let final_ctx = final_model::FinalContext {
            settings: &final_settings,
            space: &space,
            data: &data,
            device,
            dir: &dir,
            budget: Some(budget),
            final_request: &env.final_request,
            events,
        };
        let started = Instant::now();
        let (vs, test_accuracy) = final_model::train(&final_ctx, &decision)?;
        let final_seconds = started.elapsed().as_secs_f64();
        let outcome = final_model::measure(&final_ctx, &mut pool, &predictors, &vs, &decision).await?;
        let timings = result::Timings { search_seconds, final_seconds };
        let last_round = decision.round + 1 >= settings.derive.max_rounds;
        if outcome.budget_met() || last_round {
            return result::finish(&ctx, &final_ctx, &pool, &predictors, decision, outcome, test_accuracy, timings);
        }
        let miss = Miss {
            round: decision.round,
            arch_hash: decision.chosen.hash(),
            predicted: outcome.predicted_judged,
            measured: outcome.judged,
            margin: decision.margin,
        };
        events.emit(Event::RoundMissed {
            round: decision.round + 1,
            measured: budget.show(miss.measured),
            predicted: budget.show(miss.predicted),
            budget: budget.describe(),
        });
        misses.push(miss);
    }
}

/// Accuracy of the path `selection` of the supernet on the held-out split,
/// with batch statistics (a supernet's running statistics mix every path's).
fn holdout_accuracy(net: &Supernet, selection: &[usize], data: &Data, device: Device) -> f64 {
    accuracy(net, selection, data.eval_loader(&data.holdout), data.shape, device, BnMode::BatchStats)
}

/// The architecture chosen for retraining, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The strategy's favourite when the search ended (for reference): the
    /// most likely under the final α, or the best-ranked candidate.
    pub derived: Arch,
    /// Its latency (p50/p90, ms) or energy (mJ) on the device, per the budget.
    pub derived_measured: f64,
    /// What is retrained.
    pub chosen: Arch,
    pub reason: String,
    /// 0 for the first final training, one more for each miss before it.
    #[serde(default)]
    pub round: usize,
    /// The safety margin the derivation aimed under the budget with.
    #[serde(default)]
    pub margin: f64,
    /// The derived candidates, measured on the device.
    #[serde(default)]
    pub candidates: Vec<CandidateRecord>,
    /// Final models of earlier rounds that missed the budget.
    #[serde(default)]
    pub misses: Vec<Miss>,
    /// The fastest architecture of the space by the table, measured on the
    /// device (the evidence for "infeasible"), when it was measured.
    #[serde(default)]
    pub fastest_measured: Option<f64>,
    /// The budget's multiplier when the search ended (`lagrange`).
    #[serde(default)]
    pub lambda: Option<f64>,
}
