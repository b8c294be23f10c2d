//! `edgeloop search`: ProxylessNAS with the device in the loop (DESIGN §8).
//!
//! Stages, each its own piece: the space's supernet is trained with binary
//! paths (edgeloop-train) while a strategy moves the architecture
//! parameters α — `gradient` against the device's latency table, or
//! `reinforce` against latencies measured live by the device's agents; the
//! most likely architecture is then checked on the device, retrained from
//! scratch, exported with its trained weights and measured again. Only that
//! last measurement decides whether the budget is met.
//!
//! The budget is a latency (p50, ms) or an energy per inference (mJ above
//! idle, from the agent's power sensor); an energy search prices candidates
//! from the energy columns of the device's table and measures energy live.

mod cache;
mod costs;
mod pool;
mod result;
mod run_dir;
mod state;
mod strategy;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use edgeloop_api::MeasureRequest;
use edgeloop_data::{BatchLoader, DatasetSpec, ImageShape, LoaderConfig, Normalization, Split};
use edgeloop_space::{Arch, Space};
use edgeloop_train::trainer::accuracy;
use edgeloop_train::{BnMode, CostLoss, DeviceKind, GateMode, Supernet};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};
use tch::Device;

pub use cache::{CachedMeasurement, MeasurementCache};
pub use pool::DevicePool;
pub use result::{SearchResult, render_summary};
pub use run_dir::{EpochRow, RunDir};
pub use state::{Trainable, TrainedRun, load_trained};

use crate::calibrate::Calibration;
use crate::client::AgentClient;
use crate::predict::{Metric, Predictor};
use crate::table::LatencyTable;

/// How α moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Gradient through binary gates, expected latency from the device's table.
    Gradient,
    /// Policy gradient, reward from latencies measured on the device.
    Reinforce,
}

/// Everything that shapes a search's outcome. Stored in the checkpoint: a
/// resumed search must use the same settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchSettings {
    pub space: String,
    pub width: f64,
    pub dataset: String,
    /// Latency budget (p50 on the device, ms); exactly one of this and `energy_budget_mj`.
    pub budget_ms: Option<f64>,
    /// Energy budget (per inference above idle, mJ).
    #[serde(default)]
    pub energy_budget_mj: Option<f64>,
    pub strategy: Strategy,
    pub warmup_epochs: usize,
    pub epochs: usize,
    pub final_epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub arch_lr: f64,
    pub arch_every: usize,
    pub gate_mode: String,
    pub latency_loss: String,
    pub loss_a: f64,
    pub loss_b: f64,
    pub loss_lambda: f64,
    pub samples: usize,
    pub reward_w: f64,
    pub hard_constraint: bool,
    pub baseline_decay: f64,
    pub holdout: usize,
    pub seed: u64,
    pub runtime: String,
    pub measure_threads: usize,
}

impl SearchSettings {
    pub fn cost_loss(&self) -> anyhow::Result<CostLoss> {
        use edgeloop_train::CostLossKind;
        let kind: CostLossKind = self.latency_loss.parse().map_err(anyhow::Error::msg)?;
        Ok(match kind {
            CostLossKind::MulLog => CostLoss::MulLog { a: self.loss_a, b: self.loss_b },
            CostLossKind::AddLinear => CostLoss::AddLinear { lambda: self.loss_lambda },
            CostLossKind::Off => CostLoss::Off,
        })
    }

    pub fn gate_mode(&self) -> anyhow::Result<GateMode> {
        self.gate_mode.parse().map_err(anyhow::Error::msg)
    }

    /// The constraint; [`SearchSettings::check`] makes sure there is exactly one.
    pub fn budget(&self) -> Budget {
        match (self.budget_ms, self.energy_budget_mj) {
            (_, Some(limit)) => Budget { metric: Metric::Energy, limit },
            (Some(limit), None) => Budget { metric: Metric::Latency, limit },
            (None, None) => unreachable!("SearchSettings::check requires a budget"),
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        match (self.budget_ms, self.energy_budget_mj) {
            (Some(_), Some(_)) => bail!("give either --budget-ms or --energy-budget-mj, not both"),
            (None, None) => bail!("give a budget: --budget-ms or --energy-budget-mj"),
            (Some(ms), None) => ensure!(ms > 0.0 && ms.is_finite(), "--budget-ms must be positive"),
            (None, Some(mj)) => ensure!(mj > 0.0 && mj.is_finite(), "--energy-budget-mj must be positive"),
        }
        ensure!(self.batch_size > 0, "--batch-size must be at least 1");
        ensure!(self.arch_every > 0, "--arch-every must be at least 1");
        ensure!(self.samples > 0, "--samples must be at least 1");
        ensure!((0.0..1.0).contains(&self.baseline_decay), "--baseline-decay must be in [0, 1)");
        self.cost_loss()?;
        self.gate_mode()?;
        self.dataset.parse::<DatasetSpec>()?;
        Ok(())
    }
}

/// What a search constrains, and how much.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub metric: Metric,
    pub limit: f64,
}

impl Budget {
    /// The figure of a measurement this budget judges: p50 latency (ms) or
    /// energy per inference (mJ; infinite when it was not measured).
    pub fn measured(&self, m: &CachedMeasurement) -> f64 {
        match self.metric {
            Metric::Latency => m.p50_ms,
            Metric::Energy => m.energy_mj.unwrap_or(f64::INFINITY),
        }
    }

    /// `value` with the budget's unit and what it is, e.g. `0.812 mJ`.
    pub fn show(&self, value: f64) -> String {
        format!("{value:.3} {}", self.metric.unit())
    }

    /// `0.12 ms budget` / `0.5 mJ budget`.
    pub fn describe(&self) -> String {
        format!("{} {} budget", self.limit, self.metric.unit())
    }
}

/// Where and how a search runs; not part of its outcome, so free to change on resume.
pub struct SearchEnv {
    pub out: PathBuf,
    pub resume: bool,
    pub devices: Vec<AgentClient>,
    pub table: Option<PathBuf>,
    pub device_kind: DeviceKind,
    /// Measurement of candidates during the search (short).
    pub probe_request: MeasureRequest,
    /// Measurement of the final model (the one the budget is judged on).
    pub final_request: MeasureRequest,
}

/// What training needs of the data: splits on the CPU, normalisation, shape.
pub struct Data {
    pub shape: ImageShape,
    /// Train minus the held-out part: weight steps.
    pub train: Arc<Split>,
    /// Held out from train: arch steps, rewards, candidate accuracy.
    pub holdout: Arc<Split>,
    /// Train and held-out together: the final network's training.
    pub full_train: Arc<Split>,
    pub test: Arc<Split>,
    pub norm: Normalization,
}

impl Data {
    pub fn load(settings: &SearchSettings, space: &Space) -> anyhow::Result<Data> {
        let spec: DatasetSpec = settings.dataset.parse()?;
        let input = &space.spec.input;
        let shape = ImageShape { channels: input.channels, height: input.height, width: input.width };
        let dataset = spec.load(shape, settings.seed).with_context(|| format!("loading dataset {spec}"))?;
        ensure!(
            dataset.classes == space.spec.classes,
            "dataset {spec} has {} classes but space {} classifies {}",
            dataset.classes,
            space.name(),
            space.spec.classes
        );
        let holdout = if settings.holdout > 0 { settings.holdout } else { dataset.train.len() / 10 };
        ensure!(holdout < dataset.train.len(), "--holdout {holdout} leaves no training images");
        let full_train = Arc::new(dataset.train.clone());
        let (train, held) = dataset.train.split_off(holdout, settings.seed);
        let norm = train.normalization();
        Ok(Data {
            shape,
            train: Arc::new(train),
            holdout: Arc::new(held),
            full_train,
            test: Arc::new(dataset.test),
            norm,
        })
    }

    pub fn loader(&self, split: &Arc<Split>, batch_size: usize, shuffle: Option<u64>, augment: bool) -> BatchLoader {
        let config = LoaderConfig { batch_size, shuffle_seed: shuffle, augment, drop_last: false, prefetch: 4 };
        BatchLoader::new(split.clone(), self.norm.clone(), config)
    }

    pub fn eval_loader(&self, split: &Arc<Split>) -> BatchLoader {
        self.loader(split, 256, None, false)
    }
}

/// Seeds of one epoch's randomness, so a resumed epoch draws what it would have.
fn epoch_rng(seed: u64, epoch: usize) -> SmallRng {
    let mix = 0x9E37_79B9_7F4A_7C15 ^ (epoch as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    SmallRng::seed_from_u64(seed ^ mix)
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
    std::fs::create_dir_all(&dir.root).with_context(|| format!("creating {}", dir.root.display()))?;
    let resuming = dir.checkpoint().exists() || dir.final_checkpoint().exists();
    if resuming && !env.resume {
        bail!("{} already holds a search; pass --resume to continue it, or choose another --out", dir.root.display());
    }
    if env.resume && !resuming {
        bail!("--resume: {} holds no checkpoint to resume", dir.root.display());
    }
    let space = Space::load(&settings.space, settings.width)?;
    let device = env.device_kind.resolve()?;
    edgeloop_train::device::keep_freed_memory();
    eprintln!("training on {}", edgeloop_train::device::describe(device));

    let cache = MeasurementCache::open(&dir.measurements())?;
    let mut pool = DevicePool::connect(env.devices.clone(), cache).await?;
    let table_path = match &env.table {
        Some(path) => path.clone(),
        None => strategy::ensure_table(&pool, &space, &settings, with_energy).await?,
    };
    let table = LatencyTable::load(&table_path)?;
    let calibration = Calibration::load_for(&table_path)?;
    let latency = Predictor::calibrated(&table, calibration.as_ref());
    let energy = with_energy.then(|| Predictor::energy(&table)).transpose()?;
    let pricing = || format!("pricing the candidates of {} from {}", space.name(), table_path.display());
    let latency_costs = costs::cost_model(&latency, &space).with_context(pricing)?;
    let energy_costs = energy.as_ref().map(|p| costs::cost_model(p, &space)).transpose().with_context(pricing)?;

    let data = Data::load(&settings, &space)?;
    eprintln!(
        "dataset {}: {} train, {} held out for the architecture, {} test",
        settings.dataset,
        data.train.len(),
        data.holdout.len(),
        data.test.len()
    );

    let started = Instant::now();
    let ctx = strategy::Context {
        settings: &settings,
        env: &env,
        dir: &dir,
        space: &space,
        data: &data,
        device,
        budget,
        latency_costs,
        energy_costs,
    };
    let decision = strategy::search(&ctx, &mut pool).await?;
    let search_seconds = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let (vs, test_accuracy) = strategy::train_final(&ctx, &decision)?;
    let final_seconds = started.elapsed().as_secs_f64();
    let predictors = result::Predictors { latency, energy };
    result::finish(&ctx, &mut pool, &predictors, &vs, decision, test_accuracy, search_seconds, final_seconds).await
}

/// Accuracy of the path `selection` of the supernet on the held-out split,
/// with batch statistics (a supernet's running statistics mix every path's).
fn holdout_accuracy(net: &Supernet, selection: &[usize], data: &Data, device: Device) -> f64 {
    accuracy(net, selection, data.eval_loader(&data.holdout), data.shape, device, BnMode::BatchStats)
}

/// The architecture chosen for retraining, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The most likely architecture under the final α.
    pub derived: Arch,
    /// Its latency (p50, ms) or energy (mJ) on the device, per the budget.
    pub derived_measured: f64,
    /// What is retrained: `derived`, or the best sampled arch that met the budget.
    pub chosen: Arch,
    pub reason: String,
}
