//! The search loop, shared by every strategy: weight steps on paths the
//! strategy draws (from p = softmax(α), uniformly while warming up, unless
//! it says otherwise), an arch step by the strategy every `arch_every`
//! weight steps, a checkpoint after every epoch; then the final
//! architecture is derived under the budget from the strategy's ranking
//! (`decide`). A strategy is one module that implements [`SearchStrategy`],
//! with its flags, its checkpointed state and its `search.csv` columns.

mod gradient;
mod nao;
mod prescreen;
mod random;
mod reinforce;
mod unas;

use std::time::Instant;

use anyhow::Context as _;
use edgeloop_data::{Batch, BatchLoader};
use edgeloop_space::{Arch, Space};
use edgeloop_train::CostModel;
use edgeloop_train::export::export_arch;
use edgeloop_train::optim::cosine_lr;
use edgeloop_train::trainer::{batch_tensors, weight_step};
pub use gradient::{GradientSettings, GradientState};
pub use nao::{NaoSettings, NaoState};
pub use prescreen::PrescreenSettings;
use rand::Rng;
use rand::rngs::SmallRng;
pub use random::{RandomSettings, RandomState};
pub use reinforce::{ReinforceSettings, ReinforceState, RewardKind};
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Device, Tensor};
pub use unas::{UnasSettings, UnasState};

use super::decide::{self, Miss};
use super::derive::{self, Derived};
use super::run_dir::{EpochRow, RunDir, open_search_csv};
use super::state::{self, SearchModel, SearchState};
use super::{Budget, Decision, Mean, SearchEnv, SearchSettings, epoch_rng};
use crate::cache::CachedMeasurement;
use crate::dataset::Data;
use crate::events::{Event, EventSink, Work};
use crate::measure::{MeasureJob, Measurements};
use crate::predict::Metric;

/// Which strategy moves α (the `--strategy` flag, and its name in `result.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Gradient through binary gates, expected latency from the device's table.
    Gradient,
    /// Policy gradient, reward from latencies measured on the device.
    Reinforce,
    /// Archs drawn uniformly under the budget, ranked with the weights of a
    /// supernet trained on uniform paths: the baseline of the others.
    Random,
    /// NAO: a pool of archs, an encoder–predictor–decoder of their accuracy
    /// and cost, new archs from gradient steps in its embedding space.
    Nao,
    /// UNAS: REBAR's estimator mixing the relaxed network's gradient with a
    /// score-function term, latencies measured on the device, the table as
    /// its control variate.
    Unas,
}

/// `--strategy` and every strategy's flag group (each under its own help
/// heading); the chosen one's settings go into the search's.
#[derive(Debug, Clone, clap::Args)]
pub struct StrategyArgs {
    /// How the search moves through the space; each strategy's own flags
    /// are listed under its heading.
    #[arg(long = "strategy", value_enum, default_value_t = Strategy::Gradient)]
    pub kind: Strategy,
    #[command(flatten)]
    pub gradient: GradientSettings,
    #[command(flatten)]
    pub reinforce: ReinforceSettings,
    #[command(flatten)]
    pub random: RandomSettings,
    #[command(flatten)]
    pub nao: NaoSettings,
    #[command(flatten)]
    pub unas: UnasSettings,
}

impl StrategyArgs {
    /// The chosen strategy's settings.
    pub fn settings(self) -> StrategySettings {
        match self.kind {
            Strategy::Gradient => StrategySettings::Gradient(self.gradient),
            Strategy::Reinforce => StrategySettings::Reinforce(self.reinforce),
            Strategy::Random => StrategySettings::Random(self.random),
            Strategy::Nao => StrategySettings::Nao(self.nao),
            Strategy::Unas => StrategySettings::Unas(self.unas),
        }
    }
}

/// The chosen strategy with its settings; in JSON, `strategy` names it and
/// its settings sit beside.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "strategy", rename_all = "lowercase")]
pub enum StrategySettings {
    Gradient(GradientSettings),
    Reinforce(ReinforceSettings),
    Random(RandomSettings),
    Nao(NaoSettings),
    Unas(UnasSettings),
}

impl StrategySettings {
    pub fn kind(&self) -> Strategy {
        match self {
            StrategySettings::Gradient(_) => Strategy::Gradient,
            StrategySettings::Reinforce(_) => Strategy::Reinforce,
            StrategySettings::Random(_) => Strategy::Random,
            StrategySettings::Nao(_) => Strategy::Nao,
            StrategySettings::Unas(_) => Strategy::Unas,
        }
    }

    /// Whether the budget is a constraint with a multiplier in this search.
    pub fn uses_multiplier(&self) -> bool {
        match self {
            StrategySettings::Gradient(s) => s.uses_multiplier(),
            StrategySettings::Reinforce(s) => s.reward == RewardKind::Lagrange,
            StrategySettings::Random(_) | StrategySettings::Nao(_) => false,
            StrategySettings::Unas(_) => true,
        }
    }

    /// Whether the strategy draws archs to measure, which `--prescreen` can screen.
    pub fn prescreens(&self) -> bool {
        matches!(self, StrategySettings::Reinforce(_) | StrategySettings::Random(_) | StrategySettings::Nao(_))
    }

    pub(crate) fn check(&self) -> anyhow::Result<()> {
        match self {
            StrategySettings::Gradient(_) => Ok(()),
            StrategySettings::Reinforce(s) => s.check(),
            StrategySettings::Random(s) => s.check(),
            StrategySettings::Nao(s) => s.check(),
            StrategySettings::Unas(s) => s.check(),
        }
    }

    /// The state of a strategy before its first arch step.
    pub(crate) fn initial_state(&self) -> StrategyState {
        match self {
            StrategySettings::Gradient(_) => GradientState::default().into(),
            StrategySettings::Reinforce(_) => ReinforceState::default().into(),
            StrategySettings::Random(_) => RandomState::default().into(),
            StrategySettings::Nao(_) => NaoState::default().into(),
            StrategySettings::Unas(_) => UnasState::default().into(),
        }
    }
}

/// A strategy's own state in the checkpoint, tagged with its name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "strategy", rename_all = "lowercase")]
pub enum StrategyState {
    Gradient(GradientState),
    Reinforce(ReinforceState),
    Random(RandomState),
    Nao(NaoState),
    Unas(UnasState),
}

impl From<GradientState> for StrategyState {
    fn from(state: GradientState) -> Self {
        StrategyState::Gradient(state)
    }
}

impl From<ReinforceState> for StrategyState {
    fn from(state: ReinforceState) -> Self {
        StrategyState::Reinforce(state)
    }
}

impl From<RandomState> for StrategyState {
    fn from(state: RandomState) -> Self {
        StrategyState::Random(state)
    }
}

impl From<NaoState> for StrategyState {
    fn from(state: NaoState) -> Self {
        StrategyState::Nao(state)
    }
}

impl From<UnasState> for StrategyState {
    fn from(state: UnasState) -> Self {
        StrategyState::Unas(state)
    }
}

/// A strategy's columns of `search.csv`: the same names, in the same
/// order, every epoch (NaN where it has no figure that epoch).
pub type StrategyColumns = Vec<(&'static str, f64)>;

/// How a search moves through the space while the supernet trains. The
/// epoch loop, derivation, final training and measurement are shared; a
/// strategy says which paths the weights train, what one arch step does,
/// how derivation ranks architectures, and what it keeps between steps.
pub(crate) trait SearchStrategy {
    /// What the strategy keeps between arch steps (checkpointed after every epoch).
    type State: Clone + Into<StrategyState>;

    /// The budget's multiplier, in a search that keeps the budget with one.
    fn multiplier(&self) -> Option<f64> {
        None
    }

    /// The path the next weight step trains: drawn from p = softmax(α), or
    /// uniformly while warming up.
    fn path(&self, m: &SearchModel, warmup: bool, rng: &mut SmallRng) -> Vec<usize> {
        if warmup { uniform_path(m, rng) } else { m.alpha.sample(rng) }
    }

    /// One architecture step on a held-out batch (x, y), every
    /// `arch_every` weight steps after the warm-up, with the training batch
    /// the last weight step used; none by default.
    async fn arch_step(
        &mut self,
        _ctx: &Context<'_>,
        _pool: &mut dyn Measurements,
        _m: &mut SearchModel,
        _holdout: (&Tensor, &Tensor),
        _train: (&Tensor, &Tensor),
        _rng: &mut SmallRng,
    ) -> anyhow::Result<()> {
        Ok(())
    }

    /// What the strategy does once an epoch's weight steps are done (NAO's
    /// rounds); nothing by default.
    async fn after_epoch(
        &mut self,
        _ctx: &Context<'_>,
        _pool: &mut dyn Measurements,
        _m: &mut SearchModel,
        _epoch: usize,
    ) -> anyhow::Result<()> {
        Ok(())
    }

    /// The epoch's columns of `search.csv`; the next epoch starts afresh.
    fn end_epoch(&mut self, ctx: &Context<'_>, m: &SearchModel) -> StrategyColumns;

    /// The architecture the strategy favours now (measured and reported
    /// after every epoch); none for a strategy that ranks only when deriving.
    fn leader(&self, m: &SearchModel) -> Option<Vec<usize>> {
        Some(m.alpha.argmax())
    }

    /// What ranks derivation's candidates, for the decision's reason.
    fn ranking(&self) -> String {
        "most likely under α".into()
    }

    /// Up to `k` architectures, best first, whose predicted cost of the
    /// budget's figure is within [`floor`, `limit`], none of them `excluded`
    /// (hashes): by default those of highest Σ log p under α, exactly.
    fn candidates(
        &self,
        ctx: &Context<'_>,
        m: &SearchModel,
        (floor, limit): (f64, f64),
        k: usize,
        excluded: &[&str],
    ) -> anyhow::Result<Vec<Derived>> {
        let log_probs: Vec<Vec<f64>> = m.alpha.probs().iter().map(|p| p.iter().map(|p| p.ln()).collect()).collect();
        // A few spare, so that the excluded can be left out.
        let best = derive::k_best(ctx.budget_costs(), &log_probs, floor, limit, k + excluded.len());
        Ok(leave_out(m, best, excluded).take(k).collect())
    }

    fn state(&self) -> &Self::State;
}

/// `derived` without the `excluded` architectures (hashes), in order.
fn leave_out<'a>(
    m: &'a SearchModel,
    derived: impl IntoIterator<Item = Derived> + 'a,
    excluded: &'a [&str],
) -> impl Iterator<Item = Derived> + 'a {
    derived.into_iter().filter(move |d| !excluded.contains(&m.model.net.arch(&d.selection).hash().as_str()))
}

/// `derived` scored by held-out accuracy with the supernet's weights (one
/// unit of work each), most accurate first; among equals, in the order given.
fn most_accurate_first(ctx: &Context<'_>, m: &SearchModel, mut derived: Vec<Derived>) -> Vec<Derived> {
    let work = Work::start(ctx.events(), "archs scored", derived.len() as u64, 0);
    for d in &mut derived {
        d.score = super::holdout_accuracy(&m.model.net, &d.selection, ctx.data, ctx.device);
        work.advance(None);
    }
    drop(work);
    derived.sort_by(|a, b| b.score.total_cmp(&a.score));
    derived
}

/// A path drawn uniformly: every candidate of every block equally likely.
fn uniform_path(m: &SearchModel, rng: &mut SmallRng) -> Vec<usize> {
    m.model.net.candidate_counts().iter().map(|&n| rng.random_range(0..n)).collect()
}

/// The columns of a strategy that moves α: E[COST] under p by the table
/// (latency, and energy in an energy search), E[COST]/T of the budget's
/// figure, the multiplier λ (NaN without one) and p's mean entropy per block.
fn alpha_columns(ctx: &Context<'_>, m: &SearchModel, multiplier: Option<f64>) -> StrategyColumns {
    let expected = |costs: &edgeloop_train::CostModel| m.alpha.expected_cost(costs).double_value(&[]);
    vec![
        ("expected_latency_ms", expected(&ctx.latency_costs)),
        ("expected_energy_mj", ctx.energy_costs.as_ref().map_or(f64::NAN, expected)),
        ("expected_cost_ratio", expected(ctx.budget_costs()) / ctx.budget.limit),
        ("lambda", multiplier.unwrap_or(f64::NAN)),
        ("alpha_entropy", m.alpha.entropy()),
    ]
}

/// Runs the search epochs left (or none, when the final training already
/// started) and returns the architecture to retrain: derived for the round
/// after `misses`, or the one a final checkpoint holds for that round or a
/// later one (a resumed run).
pub async fn search(ctx: &Context<'_>, pool: &mut dyn Measurements, misses: &[Miss]) -> anyhow::Result<Decision> {
    if let Some(decision) = state::saved_decision(&ctx.dir.final_checkpoint())?
        && decision.round >= misses.len()
    {
        return Ok(decision);
    }
    let (model, st) = SearchModel::load_or_new(&ctx.dir.checkpoint(), ctx.space, ctx.settings, ctx.device)?;
    match (&ctx.settings.strategy, st.strategy_state.clone()) {
        (StrategySettings::Gradient(s), StrategyState::Gradient(state)) => {
            run_epochs(ctx, pool, misses, model, st, gradient::Gradient::new(s, state)).await
        }
        (StrategySettings::Reinforce(s), StrategyState::Reinforce(state)) => {
            run_epochs(ctx, pool, misses, model, st, reinforce::Reinforce::new(s, state)).await
        }
        (StrategySettings::Random(s), StrategyState::Random(state)) => {
            run_epochs(ctx, pool, misses, model, st, random::Random::new(s, state)).await
        }
        (StrategySettings::Nao(s), StrategyState::Nao(state)) => {
            let nao = nao::Nao::new(s, state, ctx, &model);
            run_epochs(ctx, pool, misses, model, st, nao).await
        }
        (StrategySettings::Unas(s), StrategyState::Unas(state)) => {
            run_epochs(ctx, pool, misses, model, st, unas::Unas::new(s, state)).await
        }
        (settings, _) => anyhow::bail!(
            "checkpoint {} holds another strategy's state than {:?}'s",
            ctx.dir.checkpoint().display(),
            settings.kind()
        ),
    }
}

async fn run_epochs(
    ctx: &Context<'_>,
    pool: &mut dyn Measurements,
    misses: &[Miss],
    mut model: SearchModel,
    mut st: SearchState,
    mut strategy: impl SearchStrategy,
) -> anyhow::Result<Decision> {
    let s = ctx.settings;
    if st.epochs_done == 0 {
        // Before any training: a budget even the fastest arch misses is not worth a search.
        decide::check_feasible(ctx, pool, &model).await?;
    }
    let mut csv = open_search_csv(&ctx.dir.search_csv(), st.epochs_done)
        .with_context(|| format!("opening {}", ctx.dir.search_csv().display()))?;
    let total_epochs = s.schedule.warmup_epochs + s.schedule.epochs;
    if st.epochs_done > 0 && st.epochs_done < total_epochs {
        ctx.events().emit(Event::SearchResumed { after_epoch: st.epochs_done, of: total_epochs });
    }
    for epoch in st.epochs_done..total_epochs {
        let row = epoch_of_search(ctx, pool, &mut model, &mut st, &mut strategy, epoch).await?;
        csv.append(&row).with_context(|| format!("writing {}", ctx.dir.search_csv().display()))?;
        ctx.events().emit(Event::SearchEpoch { row, of: total_epochs, energy: ctx.energy_costs.is_some() });
        st.epochs_done = epoch + 1;
        st.strategy_state = strategy.state().clone().into();
        model.save(&ctx.dir.checkpoint(), &mut st)?;
    }
    decide::decide(ctx, pool, &model, misses, &strategy).await
}

/// One epoch: weight steps on paths sampled from p (uniformly while warming
/// up), an arch step every `arch_every` steps after the warm-up.
async fn epoch_of_search<S: SearchStrategy>(
    ctx: &Context<'_>,
    pool: &mut dyn Measurements,
    m: &mut SearchModel,
    st: &mut SearchState,
    strategy: &mut S,
    epoch: usize,
) -> anyhow::Result<EpochRow> {
    let s = ctx.settings;
    let schedule = &s.schedule;
    let started = Instant::now();
    let warmup = epoch < schedule.warmup_epochs;
    let mut rng = epoch_rng(s.recipe.seed, epoch);
    let mut holdout = HoldoutBatches {
        data: ctx.data,
        batch_size: s.recipe.batch_size,
        seed: s.recipe.seed ^ epoch as u64,
        pass: 0,
        loader: None,
    };
    let batches_per_epoch = BatchLoader::batches(ctx.data.train.len(), s.recipe.batch_size, false) as u64;
    let total_steps = batches_per_epoch * (schedule.warmup_epochs + schedule.epochs) as u64;
    let loader =
        ctx.data.loader(&ctx.data.train, s.recipe.batch_size, Some(s.recipe.seed.wrapping_add(epoch as u64)), true);
    let work = Work::start(ctx.events(), "steps", batches_per_epoch, 0);
    let mut train_loss = Mean::default();
    let mut lr = s.recipe.lr;
    for (i, batch) in loader.enumerate() {
        let (x, y) = batch_tensors(&batch, ctx.data.shape, ctx.device);
        lr = cosine_lr(s.recipe.lr, st.weight_steps, total_steps);
        let selection = strategy.path(m, warmup, &mut rng);
        let loss = weight_step(&m.model.net, &mut m.model.sgd, &x, &y, &selection, lr);
        anyhow::ensure!(loss.is_finite(), "training diverged (loss {loss}) at step {}; lower --lr", st.weight_steps);
        train_loss.add(loss);
        st.weight_steps += 1;
        if !warmup && (i + 1) % schedule.arch_every == 0 {
            let batch = holdout.next();
            let (hx, hy) = batch_tensors(&batch, ctx.data.shape, ctx.device);
            strategy.arch_step(ctx, pool, m, (&hx, &hy), (&x, &y), &mut rng).await?;
        }
        work.advance(Some(format!("epoch {}: loss {:.3}", epoch + 1, train_loss.mean())));
    }
    drop(work);
    strategy.after_epoch(ctx, pool, m, epoch).await?;
    let strategy_columns = strategy.end_epoch(ctx, m);
    let (argmax_arch, valid_acc, argmax_measured_ms, argmax_measured_mj) = match strategy.leader(m) {
        Some(leader) => {
            let arch = m.model.net.arch(&leader);
            let measured = measure_archs(ctx, pool, &m.model.vs, std::slice::from_ref(&arch)).await?.remove(0);
            let valid_acc = super::holdout_accuracy(&m.model.net, &leader, ctx.data, ctx.device);
            (arch.hash(), valid_acc, measured.p50_ms, measured.energy_mj.unwrap_or(f64::NAN))
        }
        None => (String::new(), f64::NAN, f64::NAN, f64::NAN),
    };
    Ok(EpochRow {
        epoch: epoch + 1,
        phase: if warmup { "warmup" } else { "search" },
        lr,
        train_loss: train_loss.mean(),
        valid_acc,
        argmax_arch,
        argmax_measured_ms,
        argmax_measured_mj,
        seconds: started.elapsed().as_secs_f64(),
        strategy: strategy_columns,
    })
}

pub struct Context<'a> {
    pub settings: &'a SearchSettings,
    pub env: &'a SearchEnv,
    pub dir: &'a RunDir,
    pub space: &'a Space,
    pub data: &'a Data,
    pub device: Device,
    pub budget: Budget,
    /// How far under the budget the search aims at first (from the
    /// calibration's errors; grows after a final model misses).
    pub margin: f64,
    /// What each candidate adds to the latency, from the device's table.
    pub latency_costs: CostModel,
    /// The same for energy, in an energy search.
    pub energy_costs: Option<CostModel>,
    /// The fastest run of each candidate (to tell a slow stretch of the device).
    pub min_costs: CostModel,
}

impl Context<'_> {
    /// The cost model of the budget's metric.
    pub fn budget_costs(&self) -> &CostModel {
        match (self.budget.metric, &self.energy_costs) {
            (Metric::Energy, Some(costs)) => costs,
            _ => &self.latency_costs,
        }
    }

    /// Where the search reports its progress.
    pub fn events(&self) -> &dyn EventSink {
        self.env.events.as_ref()
    }

    /// The candidate index of each block of `arch`, if it is of this space.
    fn space_selection(&self, arch: &Arch) -> Option<Vec<usize>> {
        arch.ops.iter().zip(&self.space.blocks).map(|(op, b)| b.candidates.iter().position(|c| c == op)).collect()
    }

    /// What the constraint of the search holds E[COST] (or the measured
    /// costs) to: the budget less the safety margin.
    pub fn target(&self) -> f64 {
        self.budget.limit * (1.0 - self.margin)
    }
}

/// Held-out batches for arch steps, round and round, reshuffled each pass.
struct HoldoutBatches<'a> {
    data: &'a Data,
    batch_size: usize,
    seed: u64,
    pass: u64,
    loader: Option<BatchLoader>,
}

impl HoldoutBatches<'_> {
    fn next(&mut self) -> Batch {
        loop {
            if let Some(batch) = self.loader.as_mut().and_then(Iterator::next) {
                return batch;
            }
            self.pass += 1;
            let seed = self.seed.wrapping_mul(31).wrapping_add(self.pass);
            self.loader = Some(self.data.loader(&self.data.holdout, self.batch_size, Some(seed), false));
        }
    }
}

/// Each arch measured on the device (latency, and energy in an energy
/// search), exporting with the weights in `vs` only those the cache lacks.
pub(super) async fn measure_archs(
    ctx: &Context<'_>,
    pool: &mut dyn Measurements,
    vs: &VarStore,
    archs: &[Arch],
) -> anyhow::Result<Vec<CachedMeasurement>> {
    let request = &ctx.env.probe_request;
    let jobs = archs
        .iter()
        .map(|a| {
            // Only archs the cache lacks are worth exporting.
            let cached = pool.cached(&a.hash(), request.energy).is_some();
            let bytes = if cached { Vec::new() } else { export_arch(vs, ctx.space, a)? };
            Ok(arch_job(ctx, a, bytes))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(pool.measure(jobs, request).await?)
}

/// `arch` measured again, whatever the cache holds (see `Measurements::remeasure`).
pub(super) async fn remeasure_arch(
    ctx: &Context<'_>,
    pool: &mut dyn Measurements,
    vs: &VarStore,
    arch: &Arch,
) -> anyhow::Result<CachedMeasurement> {
    let job = arch_job(ctx, arch, export_arch(vs, ctx.space, arch)?);
    Ok(pool.remeasure(job, &ctx.env.probe_request).await?)
}

/// What measuring `arch` needs: its bytes and the table's prediction of its fastest run.
fn arch_job(ctx: &Context<'_>, arch: &Arch, bytes: Vec<u8>) -> MeasureJob {
    let expected_min = ctx.space_selection(arch).map(|s| super::derive::predicted_cost(&ctx.min_costs, &s));
    MeasureJob::arch(arch, bytes, expected_min)
}

/// How fast the multiplier falls while the constraint holds: halved per step.
pub const LAMBDA_DECAY: f64 = 0.5;

/// Below this the multiplier is 0: no pressure at all.
const LAMBDA_FLOOR: f64 = 1e-3;

/// One step of dual ascent on the multiplier of E[COST] ≤ T, with `ratio`
/// = E[COST]/T: λ grows by `step`·(ratio − 1) while the constraint is
/// violated and, while it holds, is halved (to exactly 0 below
/// [`LAMBDA_FLOOR`]). Plain dual ascent shrinks λ as slowly as it grew:
/// Adam moves α by about `--arch-lr` per step whatever λ is, so λ winds up
/// far past what it takes while E[COST] is still coming down, and then
/// keeps pushing it under the budget for many epochs (measured on `tiny`:
/// λ 18.6 and E/T 0.65 at the end, against a target of 0.96).
pub fn dual_ascent(lambda: f64, step: f64, ratio: f64) -> f64 {
    let next = if ratio > 1.0 { lambda + step * (ratio - 1.0) } else { lambda * LAMBDA_DECAY };
    if next < LAMBDA_FLOOR { 0.0 } else { next }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_multiplier_grows_while_violated_and_falls_to_zero_once_met() {
        let mut lambda = 0.0;
        for _ in 0..10 {
            lambda = dual_ascent(lambda, 0.5, 1.4);
        }
        assert!((lambda - 2.0).abs() < 1e-9, "{lambda}");
        // Met: halved each step, then exactly 0.
        lambda = dual_ascent(lambda, 0.5, 0.99);
        assert!((lambda - 1.0).abs() < 1e-9);
        for _ in 0..20 {
            lambda = dual_ascent(lambda, 0.5, 0.99);
        }
        assert_eq!(lambda, 0.0);
        // Never negative, and no pressure under a loose budget.
        assert_eq!(dual_ascent(0.0, 0.5, 0.2), 0.0);
    }
}
