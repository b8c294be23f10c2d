//! The search loop: weight steps on sampled paths, interleaved with arch
//! updates by the chosen strategy, a checkpoint after every epoch; then the
//! final architecture is derived under the budget (`decide`).

use std::time::Instant;

use anyhow::Context as _;
use edgeloop_data::{Batch, BatchLoader};
use edgeloop_space::{Arch, Space};
use edgeloop_train::export::export_arch;
use edgeloop_train::optim::cosine_lr;
use edgeloop_train::trainer::{CostObjective, arch_gradient, batch_accuracy, batch_tensors, update_alpha, weight_step};
use edgeloop_train::{BnMode, CostModel};
use rand::Rng;
use tch::Device;
use tch::nn::VarStore;

use super::decide::{self, Miss};
use super::pool::ArchModel;
use super::run_dir::{EpochRow, RunDir, append_row, open_search_csv};
use super::state::{self, SearchModel, SearchState};
use super::{Budget, Decision, DevicePool, Mean, RewardKind, SearchEnv, SearchSettings, Strategy, epoch_rng};
use crate::cache::CachedMeasurement;
use crate::dataset::Data;
use crate::events::{Event, EventSink, Work};
use crate::predict::Metric;

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

/// Runs the search epochs left (or none, when the final training already
/// started) and returns the architecture to retrain: derived for the round
/// after `misses`, or the one a final checkpoint holds for that round or a
/// later one (a resumed run).
pub async fn search(ctx: &Context<'_>, pool: &mut DevicePool, misses: &[Miss]) -> anyhow::Result<Decision> {
    if let Some(decision) = state::saved_decision(&ctx.dir.final_checkpoint())?
        && decision.round >= misses.len()
    {
        return Ok(decision);
    }
    let s = ctx.settings;
    let (mut model, mut st) = SearchModel::load_or_new(&ctx.dir.checkpoint(), ctx.space, s, ctx.device)?;
    if st.epochs_done == 0 {
        // Before any training: a budget even the fastest arch misses is not worth a search.
        decide::check_feasible(ctx, pool, &model).await?;
    }
    let mut csv = open_search_csv(&ctx.dir.search_csv(), st.epochs_done)
        .with_context(|| format!("opening {}", ctx.dir.search_csv().display()))?;
    let total_epochs = s.warmup_epochs + s.epochs;
    if st.epochs_done > 0 && st.epochs_done < total_epochs {
        ctx.events().emit(Event::SearchResumed { after_epoch: st.epochs_done, of: total_epochs });
    }
    for epoch in st.epochs_done..total_epochs {
        let row = epoch_of_search(ctx, pool, &mut model, &mut st, epoch).await?;
        append_row(&mut csv, &row).with_context(|| format!("writing {}", ctx.dir.search_csv().display()))?;
        ctx.events().emit(Event::SearchEpoch {
            row,
            of: total_epochs,
            energy: ctx.energy_costs.is_some(),
            multiplier: s.uses_multiplier(),
        });
        st.epochs_done = epoch + 1;
        model.save(&ctx.dir.checkpoint(), &mut st)?;
    }
    decide::decide(ctx, pool, &model, misses, st.lambda).await
}

/// One epoch: weight steps on paths sampled from p (uniformly while warming
/// up), an arch update every `arch_every` steps after the warm-up.
async fn epoch_of_search(
    ctx: &Context<'_>,
    pool: &mut DevicePool,
    m: &mut SearchModel,
    st: &mut SearchState,
    epoch: usize,
) -> anyhow::Result<EpochRow> {
    let s = ctx.settings;
    let started = Instant::now();
    let warmup = epoch < s.warmup_epochs;
    let mut rng = epoch_rng(s.recipe.seed, epoch);
    let mut holdout = HoldoutBatches {
        data: ctx.data,
        batch_size: s.recipe.batch_size,
        seed: s.recipe.seed ^ epoch as u64,
        pass: 0,
        loader: None,
    };
    let batches_per_epoch = BatchLoader::batches(ctx.data.train.len(), s.recipe.batch_size, false) as u64;
    let total_steps = batches_per_epoch * (s.warmup_epochs + s.epochs) as u64;
    let multiplier = s.uses_multiplier();
    let gate_mode = s.gate_mode;
    let loader =
        ctx.data.loader(&ctx.data.train, s.recipe.batch_size, Some(s.recipe.seed.wrapping_add(epoch as u64)), true);
    let work = Work::start(ctx.events(), "steps", batches_per_epoch, 0);
    let (mut train_loss, mut arch_ce, mut arch_loss, mut reward) =
        (Mean::default(), Mean::default(), Mean::default(), Mean::default());
    let mut lr = s.recipe.lr;
    for (i, batch) in loader.enumerate() {
        let (x, y) = batch_tensors(&batch, ctx.data.shape, ctx.device);
        lr = cosine_lr(s.recipe.lr, st.weight_steps, total_steps);
        let selection = if warmup {
            m.model.net.candidate_counts().iter().map(|&n| rng.random_range(0..n)).collect()
        } else {
            m.alpha.sample(&mut rng)
        };
        let loss = weight_step(&m.model.net, &mut m.model.sgd, &x, &y, &selection, lr);
        anyhow::ensure!(loss.is_finite(), "training diverged (loss {loss}) at step {}; lower --lr", st.weight_steps);
        train_loss.add(loss);
        st.weight_steps += 1;
        if !warmup && (i + 1) % s.arch_every == 0 {
            let batch = holdout.next();
            let (hx, hy) = batch_tensors(&batch, ctx.data.shape, ctx.device);
            match s.strategy {
                Strategy::Gradient => {
                    let gates = m.alpha.gates(gate_mode, &mut rng);
                    // The constraint aims under the margin; the penalties take T as ProxylessNAS does.
                    let target = if multiplier { ctx.target() } else { ctx.budget.limit };
                    let objective =
                        CostObjective { costs: ctx.budget_costs().clone(), loss: s.cost_loss(st.lambda), target };
                    let (grads, step) = arch_gradient(&m.model.net, &m.alpha, &gates, &hx, &hy, Some(&objective));
                    update_alpha(&m.alpha, &mut m.adam, &grads, Some((&gates, gate_mode)));
                    if multiplier {
                        st.lambda = dual_ascent(st.lambda, s.lambda_lr, step.expected_cost / ctx.target());
                    }
                    arch_ce.add(step.ce);
                    arch_loss.add(step.loss);
                }
                Strategy::Reinforce => {
                    let r = reinforce_update(ctx, pool, m, st, &hx, &hy, &mut rng).await?;
                    reward.add(r);
                }
            }
        }
        work.advance(Some(format!("epoch {}: loss {:.3}", epoch + 1, train_loss.mean())));
    }
    drop(work);
    let argmax = m.alpha.argmax();
    let arch = m.model.net.arch(&argmax);
    let measured = measure_archs(ctx, pool, &m.model.vs, std::slice::from_ref(&arch)).await?.remove(0);
    let valid_acc = super::holdout_accuracy(&m.model.net, &argmax, ctx.data, ctx.device);
    let expected_cost = m.alpha.expected_cost(ctx.budget_costs()).double_value(&[]);
    Ok(EpochRow {
        epoch: epoch + 1,
        phase: if warmup { "warmup" } else { "search" },
        lr,
        train_loss: train_loss.mean(),
        arch_ce: arch_ce.mean(),
        arch_loss: arch_loss.mean(),
        mean_reward: reward.mean(),
        baseline: st.baseline.unwrap_or(f64::NAN),
        valid_acc,
        expected_latency_ms: m.alpha.expected_cost(&ctx.latency_costs).double_value(&[]),
        expected_energy_mj: ctx.energy_costs.as_ref().map_or(f64::NAN, |c| m.alpha.expected_cost(c).double_value(&[])),
        lambda: if multiplier { st.lambda } else { f64::NAN },
        expected_cost_ratio: expected_cost / ctx.budget.limit,
        alpha_entropy: m.alpha.entropy(),
        argmax_arch: arch.hash(),
        argmax_measured_ms: measured.p50_ms,
        argmax_measured_mj: measured.energy_mj.unwrap_or(f64::NAN),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Each arch measured on the device (latency, and energy in an energy
/// search), exporting with the weights in `vs` only those the cache lacks.
pub(super) async fn measure_archs(
    ctx: &Context<'_>,
    pool: &mut DevicePool,
    vs: &VarStore,
    archs: &[Arch],
) -> anyhow::Result<Vec<CachedMeasurement>> {
    let request = &ctx.env.probe_request;
    let models = archs
        .iter()
        .map(|a| {
            // Only archs the cache lacks are worth exporting.
            let cached = pool.cache.get(pool.device_ids(), &a.hash(), request.energy).is_some();
            let bytes = if cached { Vec::new() } else { export_arch(vs, ctx.space, a)? };
            Ok(arch_model(ctx, a, bytes))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(pool.measure_archs(models, request).await?)
}

/// `arch` measured again, whatever the cache holds (see `DevicePool::remeasure`).
pub(super) async fn remeasure_arch(
    ctx: &Context<'_>,
    pool: &mut DevicePool,
    vs: &VarStore,
    arch: &Arch,
) -> anyhow::Result<CachedMeasurement> {
    let model = arch_model(ctx, arch, export_arch(vs, ctx.space, arch)?);
    Ok(pool.remeasure(model, &ctx.env.probe_request).await?)
}

/// What the pool needs to measure `arch`: its bytes and the table's
/// prediction of its fastest run.
fn arch_model(ctx: &Context<'_>, arch: &Arch, bytes: Vec<u8>) -> ArchModel {
    let expected_min = ctx.space_selection(arch).map(|s| super::derive::predicted_cost(&ctx.min_costs, &s));
    ArchModel { arch: arch.clone(), bytes, expected_min }
}

/// One REINFORCE update: M archs sampled from p, each scored on a held-out
/// batch and measured on the devices; reward acc − λ(LAT/T − 1) (λ by dual
/// ascent on the measured costs) or MnasNet's acc · (LAT/T)^w; α ascends
/// mean((R − b) ∇ log p(arch)). Returns the mean reward.
async fn reinforce_update(
    ctx: &Context<'_>,
    pool: &mut DevicePool,
    m: &mut SearchModel,
    st: &mut SearchState,
    x: &tch::Tensor,
    y: &tch::Tensor,
    rng: &mut impl Rng,
) -> anyhow::Result<f64> {
    let s = ctx.settings;
    let selections: Vec<Vec<usize>> = (0..s.samples).map(|_| m.alpha.sample(rng)).collect();
    let archs: Vec<Arch> = selections.iter().map(|sel| m.model.net.arch(sel)).collect();
    let accs: Vec<f64> =
        selections.iter().map(|sel| batch_accuracy(&m.model.net, sel, x, y, BnMode::BatchStats)).collect();
    let measured = measure_archs(ctx, pool, &m.model.vs, &archs).await?;
    let costs: Vec<f64> = measured.iter().map(|m| ctx.budget.measured(m)).collect();
    let rewards: Vec<f64> = match s.reward {
        RewardKind::Lagrange => {
            accs.iter().zip(&costs).map(|(&a, &c)| a - st.lambda * (c / ctx.target() - 1.0)).collect()
        }
        RewardKind::Mnas => accs.iter().zip(&costs).map(|(&a, &c)| mnas_reward(a, c, ctx.budget, s)).collect(),
    };
    if s.reward == RewardKind::Lagrange {
        let mean_cost = costs.iter().sum::<f64>() / costs.len() as f64;
        st.lambda = dual_ascent(st.lambda, s.lambda_lr, mean_cost / ctx.target());
    }
    let mean = rewards.iter().sum::<f64>() / rewards.len() as f64;
    let baseline = st.baseline.unwrap_or(mean);
    let mut grads: Vec<Vec<f64>> = m.model.net.candidate_counts().iter().map(|&n| vec![0.0; n]).collect();
    for (sel, r) in selections.iter().zip(&rewards) {
        for (g, lp) in grads.iter_mut().zip(m.alpha.log_prob_grad(sel)) {
            // Adam descends: the gradient of −J.
            g.iter_mut().zip(lp).for_each(|(g, lp)| *g -= (r - baseline) * lp / rewards.len() as f64);
        }
    }
    update_alpha(&m.alpha, &mut m.adam, &grads, None);
    st.baseline = Some(s.baseline_decay * baseline + (1.0 - s.baseline_decay) * mean);
    Ok(mean)
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

/// acc · (COST/T)^w (MnasNet), COST the measured latency or energy: soft
/// with w < 0 everywhere, or hard with w = 0 within the budget and −1 above it.
pub fn mnas_reward(acc: f64, cost: f64, budget: Budget, s: &SearchSettings) -> f64 {
    let ratio = cost / budget.limit;
    let w = if s.hard_constraint { if ratio <= 1.0 { 0.0 } else { -1.0 } } else { s.reward_w };
    acc * ratio.powf(w)
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
