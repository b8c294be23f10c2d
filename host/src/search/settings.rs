//! What shapes a search's outcome, in flag groups that the CLI flattens
//! and the checkpoint stores (a resumed search must use the same settings):
//! each group is declared once, with its flags, defaults and JSON names.

use anyhow::{bail, ensure};
use clap::Args;
use edgeloop_data::DatasetSpec;
use edgeloop_space::Space;
use serde::{Deserialize, Serialize};

use super::strategy::{PrescreenSettings, Strategy, StrategySettings};
use crate::dataset::Data;
use crate::predict::{Metric, Stat};

/// How a network is trained from scratch: a search's final network, or one
/// fixed architecture (`edgeloop train`, the baselines). Shared so that a
/// searched network and its baseline get the same recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainRecipe {
    pub dataset: String,
    pub final_epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Training images held out (architecture steps; 0 = 10%). The final
    /// network trains on all of them; the split sets the input normalisation.
    pub holdout: usize,
    pub seed: u64,
}

impl TrainRecipe {
    /// The recipe's dataset for `space`, split as the recipe says.
    pub fn data(&self, space: &Space) -> anyhow::Result<Data> {
        Data::load(&self.dataset, self.holdout, self.seed, space)
    }

    fn check(&self) -> anyhow::Result<()> {
        ensure!(self.batch_size > 0, "--batch-size must be at least 1");
        ensure!(self.lr > 0.0 && self.lr.is_finite(), "--lr must be positive");
        self.dataset.parse::<DatasetSpec>()?;
        Ok(())
    }
}

/// The budget a search keeps, and how its multiplier moves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Args)]
#[command(group(clap::ArgGroup::new("budget").required(true).args(["budget_ms", "energy_budget_mj"])))]
pub struct BudgetSettings {
    /// Latency budget on the device, ms (judged on the final model's --budget-stat).
    #[arg(long, value_name = "MS")]
    pub budget_ms: Option<f64>,
    /// Energy budget instead: mJ per inference above idle, read from the
    /// agent's power sensor (RAPL, Jetson INA3221 or Android battery).
    #[arg(long, value_name = "MJ")]
    #[serde(default)]
    pub energy_budget_mj: Option<f64>,
    /// The statistic of the device's runs a latency budget is judged (and predicted) on.
    #[arg(long, value_enum, value_name = "STAT", default_value_t = Stat::P50)]
    #[serde(default = "default_stat")]
    pub budget_stat: Stat,
    /// The budget's multiplier (lagrange): λ ← λ + η·(E[COST]/T′ − 1) after each arch
    /// step while E[COST] > T′ = T·(1 − margin), halved while under (0 below 0.001).
    #[arg(long, value_name = "ETA", default_value_t = DEFAULT_LAMBDA_LR)]
    #[serde(default = "default_lambda_lr")]
    pub lambda_lr: f64,
}

/// How long the supernet trains and how often α moves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Args)]
pub struct ScheduleSettings {
    /// Weight-only epochs first, on uniformly sampled paths. A supernet
    /// learns far slower than one network (each op trains on a fraction of
    /// the steps): on `tiny` its loss leaves chance level after about 5 epochs.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub warmup_epochs: usize,
    /// Search epochs (after the warm-up).
    #[arg(long, value_name = "N", default_value_t = 30)]
    pub epochs: usize,
    /// Adam learning rate of α (betas 0, 0.999). ProxylessNAS's 1e-3 is for
    /// hundreds of epochs: at a few thousand arch steps α hardly moves.
    #[arg(long, value_name = "LR", default_value_t = 1e-2)]
    pub arch_lr: f64,
    /// Weight steps per architecture update.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub arch_every: usize,
}

impl Default for ScheduleSettings {
    fn default() -> Self {
        cli_defaults()
    }
}

/// How the final architecture is derived and how often it is retried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Args)]
pub struct DeriveSettings {
    /// Architectures derived under the budget (most likely first) and measured on the device.
    #[arg(long, value_name = "K", default_value_t = DEFAULT_CANDIDATES)]
    #[serde(default = "default_candidates")]
    pub derive_candidates: usize,
    /// Final trainings at most: when the final model misses the budget on the
    /// device, derive again with a larger margin and retrain, up to this many times in all.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_ROUNDS)]
    #[serde(default = "default_rounds")]
    pub max_rounds: usize,
}

impl Default for DeriveSettings {
    fn default() -> Self {
        cli_defaults()
    }
}

/// Everything that shapes a search's outcome. Stored in the checkpoint: a
/// resumed search must use the same settings. The groups are flattened, so
/// the JSON is one flat object with `strategy` naming the strategy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchSettings {
    pub space: String,
    pub width: f64,
    #[serde(flatten)]
    pub recipe: TrainRecipe,
    #[serde(flatten)]
    pub budget: BudgetSettings,
    #[serde(flatten)]
    pub schedule: ScheduleSettings,
    #[serde(flatten)]
    pub strategy: StrategySettings,
    #[serde(flatten)]
    pub prescreen: PrescreenSettings,
    #[serde(flatten)]
    pub derive: DeriveSettings,
    pub runtime: String,
    pub measure_threads: usize,
}

fn default_stat() -> Stat {
    Stat::P50
}
fn default_lambda_lr() -> f64 {
    DEFAULT_LAMBDA_LR
}
fn default_candidates() -> usize {
    DEFAULT_CANDIDATES
}
fn default_rounds() -> usize {
    DEFAULT_ROUNDS
}

/// Defaults of the settings added with the constrained search (also the CLI's).
pub const DEFAULT_LAMBDA_LR: f64 = 0.5;
pub const DEFAULT_CANDIDATES: usize = 5;
pub const DEFAULT_ROUNDS: usize = 3;

impl SearchSettings {
    /// The strategy's name.
    pub fn strategy_kind(&self) -> Strategy {
        self.strategy.kind()
    }

    /// The constraint; [`SearchSettings::check`] makes sure there is exactly one.
    pub fn budget(&self) -> Budget {
        match (self.budget.budget_ms, self.budget.energy_budget_mj) {
            (_, Some(limit)) => Budget { metric: Metric::Energy, limit, stat: Stat::P50 },
            (Some(limit), None) => Budget { metric: Metric::Latency, limit, stat: self.budget.budget_stat },
            (None, None) => unreachable!("SearchSettings::check requires a budget"),
        }
    }

    /// What training the final network needs of these settings.
    pub fn final_settings(&self) -> FinalSettings {
        FinalSettings {
            space: self.space.clone(),
            width: self.width,
            recipe: self.recipe.clone(),
            runtime: self.runtime.clone(),
            measure_threads: self.measure_threads,
        }
    }

    pub(super) fn check(&self) -> anyhow::Result<()> {
        let b = &self.budget;
        match (b.budget_ms, b.energy_budget_mj) {
            (Some(_), Some(_)) => bail!("give either --budget-ms or --energy-budget-mj, not both"),
            (None, None) => bail!("give a budget: --budget-ms or --energy-budget-mj"),
            (Some(ms), None) => ensure!(ms > 0.0 && ms.is_finite(), "--budget-ms must be positive"),
            (None, Some(mj)) => ensure!(mj > 0.0 && mj.is_finite(), "--energy-budget-mj must be positive"),
        }
        ensure!(
            b.budget_stat != Stat::Min,
            "--budget-stat must be p50 or p90: a budget is not judged on the fastest run"
        );
        ensure!(b.lambda_lr >= 0.0 && b.lambda_lr.is_finite(), "--lambda-lr must be 0 or more");
        self.recipe.check()?;
        ensure!(self.schedule.arch_every > 0, "--arch-every must be at least 1");
        ensure!(self.derive.derive_candidates > 0, "--derive-candidates must be at least 1");
        ensure!(self.derive.max_rounds > 0, "--max-rounds must be at least 1");
        self.prescreen.check(self.strategy.prescreens())?;
        self.strategy.check()
    }
}

/// What training and measuring a final network needs: the space, the
/// recipe, and how the device measures. Stored in final checkpoints (the
/// search's and `edgeloop train`'s alike).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinalSettings {
    pub space: String,
    pub width: f64,
    #[serde(flatten)]
    pub recipe: TrainRecipe,
    pub runtime: String,
    pub measure_threads: usize,
}

/// What a search constrains, and how much.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub metric: Metric,
    pub limit: f64,
    /// The statistic of the runs a latency budget is judged on.
    pub stat: Stat,
}

impl Budget {
    /// The figure of a measurement this budget judges: p50 or p90 latency
    /// (ms), or energy per inference (mJ; infinite when it was not measured).
    pub fn measured(&self, m: &crate::cache::CachedMeasurement) -> f64 {
        match (self.metric, self.stat) {
            (Metric::Latency, Stat::Min) => m.min_ms,
            (Metric::Latency, Stat::P50) => m.p50_ms,
            (Metric::Latency, Stat::P90) => m.p90_ms,
            (Metric::Energy, _) => m.energy_mj.unwrap_or(f64::INFINITY),
        }
    }

    /// Whether `value` of this budget's figure meets it (NaN never does).
    pub fn met_by(&self, value: f64) -> bool {
        value <= self.limit
    }

    /// `value` with the budget's unit and what it is, e.g. `0.812 mJ`, `0.130 ms p50`.
    pub fn show(&self, value: f64) -> String {
        match self.metric {
            Metric::Latency => format!("{value:.3} ms {}", self.stat),
            Metric::Energy => format!("{value:.3} mJ"),
        }
    }

    /// `0.12 ms p50 budget` / `0.5 mJ budget`.
    pub fn describe(&self) -> String {
        match self.metric {
            Metric::Latency => format!("{} ms {} budget", self.limit, self.stat),
            Metric::Energy => format!("{} mJ budget", self.limit),
        }
    }
}

/// A flag group's defaults as the CLI gives them, so that each default is
/// stated once (on its flag).
pub fn cli_defaults<T: Args>() -> T {
    #[derive(clap::Parser)]
    struct Only<T: Args> {
        #[command(flatten)]
        group: T,
    }
    <Only<T> as clap::Parser>::parse_from(["edgeloop"]).group
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::{GradientSettings, RandomSettings, ReinforceSettings, StrategySettings};

    fn settings(strategy: StrategySettings) -> SearchSettings {
        SearchSettings {
            space: "tiny".into(),
            width: 1.0,
            recipe: TrainRecipe {
                dataset: "synthetic".into(),
                final_epochs: 1,
                batch_size: 8,
                lr: 0.05,
                momentum: 0.9,
                weight_decay: 0.0,
                holdout: 0,
                seed: 1,
            },
            budget: BudgetSettings {
                budget_ms: Some(0.2),
                energy_budget_mj: None,
                budget_stat: Stat::P90,
                lambda_lr: DEFAULT_LAMBDA_LR,
            },
            schedule: ScheduleSettings::default(),
            strategy,
            prescreen: PrescreenSettings::default(),
            derive: DeriveSettings::default(),
            runtime: "tract".into(),
            measure_threads: 1,
        }
    }

    #[test]
    fn settings_are_one_flat_object_naming_the_strategy_and_read_back_equal() {
        for strategy in [
            StrategySettings::Gradient(GradientSettings::default()),
            StrategySettings::Reinforce(ReinforceSettings { samples: 7, ..ReinforceSettings::default() }),
            StrategySettings::Random(RandomSettings { random_samples: 9 }),
        ] {
            let s = settings(strategy);
            let json = serde_json::to_value(&s).unwrap();
            assert_eq!(json["strategy"], serde_json::to_value(s.strategy_kind()).unwrap());
            assert_eq!(json["budget_stat"], "p90");
            assert_eq!(json["warmup_epochs"], 20);
            assert_eq!(serde_json::from_value::<SearchSettings>(json).unwrap(), s);
        }
    }

    #[test]
    fn group_defaults_are_the_flags_defaults() {
        let schedule = ScheduleSettings::default();
        assert_eq!((schedule.warmup_epochs, schedule.epochs, schedule.arch_every), (20, 30, 5));
        assert_eq!(
            DeriveSettings::default(),
            DeriveSettings { derive_candidates: DEFAULT_CANDIDATES, max_rounds: DEFAULT_ROUNDS }
        );
        assert_eq!(ReinforceSettings::default().samples, 4);
    }
}
