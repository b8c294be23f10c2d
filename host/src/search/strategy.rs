//! The search loop: weight steps on sampled paths, interleaved with arch
//! updates by the chosen strategy, a checkpoint after every epoch; then the
//! derived architecture is checked on the device and retrained.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use edgeloop_api::MeasureRequest;
use edgeloop_data::{Batch, BatchLoader, Split};
use edgeloop_space::{Arch, Space};
use edgeloop_train::export::export_arch;
use edgeloop_train::optim::cosine_lr;
use edgeloop_train::trainer::{
    CostObjective, accuracy, arch_gradient, batch_accuracy, batch_tensors, update_alpha, weight_step,
};
use edgeloop_train::{BnMode, CostModel};
use rand::Rng;
use tch::Device;
use tch::nn::VarStore;

use super::run_dir::{EpochRow, RunDir, append_row, open_search_csv};
use super::state::{self, SearchModel, SearchState, Trainable};
use super::{
    Budget, CachedMeasurement, Data, Decision, DevicePool, SearchEnv, SearchSettings, Strategy, epoch_rng,
    holdout_accuracy,
};
use crate::commands::table as table_cmd;
use crate::predict::Metric;

pub struct Context<'a> {
    pub settings: &'a SearchSettings,
    pub env: &'a SearchEnv,
    pub dir: &'a RunDir,
    pub space: &'a Space,
    pub data: &'a Data,
    pub device: Device,
    pub budget: Budget,
    /// What each candidate adds to the latency, from the device's table.
    pub latency_costs: CostModel,
    /// The same for energy, in an energy search.
    pub energy_costs: Option<CostModel>,
}

impl Context<'_> {
    /// The cost model of the budget's metric.
    fn budget_costs(&self) -> &CostModel {
        match (self.budget.metric, &self.energy_costs) {
            (Metric::Energy, Some(costs)) => costs,
            _ => &self.latency_costs,
        }
    }
}

/// The device's default latency table for the space (with energy columns
/// when `energy`), measuring any rows it lacks first (nothing, when it is complete).
pub async fn ensure_table(
    pool: &DevicePool,
    space: &Space,
    settings: &SearchSettings,
    energy: bool,
) -> anyhow::Result<PathBuf> {
    let (client, info) = pool.primary();
    let template = MeasureRequest {
        runtime: settings.runtime.clone(),
        threads: settings.measure_threads,
        energy,
        ..table_cmd::default_request()
    };
    let fp32 = table_cmd::TablePrecision::Fp32;
    let path = table_cmd::default_path(&info.device_id, &settings.runtime, space.name(), energy, fp32);
    let report = table_cmd::build(client, space, &template, fp32, Some(&path)).await?;
    if report.measured > 0 {
        eprintln!("latency table {}: measured {} missing rows", path.display(), report.measured);
    }
    Ok(path)
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

/// Accumulates an epoch's figures.
#[derive(Default)]
struct Means {
    sum: f64,
    n: usize,
}

impl Means {
    fn add(&mut self, v: f64) {
        self.sum += v;
        self.n += 1;
    }
    fn mean(&self) -> f64 {
        if self.n == 0 { f64::NAN } else { self.sum / self.n as f64 }
    }
}

/// Runs the search epochs left (or none, when the final training already
/// started) and returns the architecture to retrain.
pub async fn search(ctx: &Context<'_>, pool: &mut DevicePool) -> anyhow::Result<Decision> {
    if let Some(decision) = state::saved_decision(&ctx.dir.final_checkpoint())? {
        return Ok(decision);
    }
    let s = ctx.settings;
    let (mut model, mut st) = SearchModel::load_or_new(&ctx.dir.checkpoint(), ctx.space, s, ctx.device)?;
    let mut csv = open_search_csv(&ctx.dir.search_csv(), st.epochs_done)
        .with_context(|| format!("opening {}", ctx.dir.search_csv().display()))?;
    let total_epochs = s.warmup_epochs + s.epochs;
    if st.epochs_done > 0 && st.epochs_done < total_epochs {
        eprintln!("resuming the search after epoch {} of {total_epochs}", st.epochs_done);
    }
    for epoch in st.epochs_done..total_epochs {
        let row = epoch_of_search(ctx, pool, &mut model, &mut st, epoch).await?;
        let energy = if ctx.energy_costs.is_some() {
            format!(", E[energy] {:.3} mJ, measured {:.3} mJ", row.expected_energy_mj, row.argmax_measured_mj)
        } else {
            String::new()
        };
        eprintln!(
            "epoch {}/{total_epochs} ({}): loss {:.3}, valid acc {:.3}, E[lat] {:.3} ms, argmax {} measured {:.3} ms{energy}",
            epoch + 1,
            row.phase,
            row.train_loss,
            row.valid_acc,
            row.expected_latency_ms,
            &row.argmax_arch[..12],
            row.argmax_measured_ms
        );
        append_row(&mut csv, &row).with_context(|| format!("writing {}", ctx.dir.search_csv().display()))?;
        st.epochs_done = epoch + 1;
        model.save(&ctx.dir.checkpoint(), &mut st)?;
    }
    decide(ctx, pool, &model).await
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
    let mut rng = epoch_rng(s.seed, epoch);
    let mut holdout =
        HoldoutBatches { data: ctx.data, batch_size: s.batch_size, seed: s.seed ^ epoch as u64, pass: 0, loader: None };
    let batches_per_epoch = BatchLoader::batches(ctx.data.train.len(), s.batch_size, false) as u64;
    let total_steps = batches_per_epoch * (s.warmup_epochs + s.epochs) as u64;
    let objective = CostObjective { costs: ctx.budget_costs().clone(), loss: s.cost_loss()?, target: ctx.budget.limit };
    let gate_mode = s.gate_mode()?;
    let loader = ctx.data.loader(&ctx.data.train, s.batch_size, Some(s.seed.wrapping_add(epoch as u64)), true);
    let bar = crate::progress::bar(batches_per_epoch as usize, "steps");
    let (mut train_loss, mut arch_ce, mut arch_loss, mut reward) =
        (Means::default(), Means::default(), Means::default(), Means::default());
    let mut lr = s.lr;
    for (i, batch) in loader.enumerate() {
        let (x, y) = batch_tensors(&batch, ctx.data.shape, ctx.device);
        lr = cosine_lr(s.lr, st.weight_steps, total_steps);
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
                    let (grads, step) = arch_gradient(&m.model.net, &m.alpha, &gates, &hx, &hy, Some(&objective));
                    update_alpha(&m.alpha, &mut m.adam, &grads, Some((&gates, gate_mode)));
                    arch_ce.add(step.ce);
                    arch_loss.add(step.loss);
                }
                Strategy::Reinforce => {
                    let r = reinforce_update(ctx, pool, m, st, &hx, &hy, &mut rng).await?;
                    reward.add(r);
                }
            }
        }
        bar.set_message(format!("epoch {}: loss {:.3}", epoch + 1, train_loss.mean()));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let argmax = m.alpha.argmax();
    let arch = m.model.net.arch(&argmax);
    let measured = measure_archs(ctx, pool, &m.model.vs, std::slice::from_ref(&arch)).await?.remove(0);
    let valid_acc = holdout_accuracy(&m.model.net, &argmax, ctx.data, ctx.device);
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
        alpha_entropy: m.alpha.entropy(),
        argmax_arch: arch.hash(),
        argmax_measured_ms: measured.p50_ms,
        argmax_measured_mj: measured.energy_mj.unwrap_or(f64::NAN),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Each arch measured on the device (latency, and energy in an energy
/// search), exporting with the weights in `vs` only those the cache lacks.
async fn measure_archs(
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
            Ok((a.clone(), if cached { Vec::new() } else { export_arch(vs, ctx.space, a)? }))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(pool.measure_archs(models, request).await?)
}

/// One REINFORCE update: M archs sampled from p, each scored on a held-out
/// batch and measured on the devices; reward acc · (LAT/T)^w; α ascends
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
    let rewards: Vec<f64> =
        accs.iter().zip(&measured).map(|(&a, m)| reward(a, ctx.budget.measured(m), ctx.budget, s)).collect();
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

/// acc · (COST/T)^w (MnasNet), COST the measured latency or energy: soft
/// with w < 0 everywhere, or hard with w = 0 within the budget and −1 above it.
pub fn reward(acc: f64, cost: f64, budget: Budget, s: &SearchSettings) -> f64 {
    let ratio = cost / budget.limit;
    let w = if s.hard_constraint { if ratio <= 1.0 { 0.0 } else { -1.0 } } else { s.reward_w };
    acc * ratio.powf(w)
}

/// The most likely arch, checked on the device. If it misses the budget,
/// the best (held-out accuracy, supernet weights) of the archs measured
/// during the search that met it; if none did, say so.
async fn decide(ctx: &Context<'_>, pool: &mut DevicePool, m: &SearchModel) -> anyhow::Result<Decision> {
    let budget = ctx.budget;
    let argmax = m.alpha.argmax();
    let derived = m.model.net.arch(&argmax);
    let measured = measure_archs(ctx, pool, &m.model.vs, std::slice::from_ref(&derived)).await?;
    let derived_cost = budget.measured(&measured[0]);
    let derived_text = format!("the most likely arch measured {}", budget.show(derived_cost));
    if derived_cost <= budget.limit {
        let reason = format!("{derived_text}, within the {}", budget.describe());
        return Ok(Decision { derived: derived.clone(), derived_measured: derived_cost, chosen: derived, reason });
    }
    let met: Vec<Arch> = pool
        .cache
        .on_devices(pool.device_ids())
        .filter(|c| budget.measured(c) <= budget.limit)
        .filter_map(|c| {
            let ops = c.ops.iter().map(|o| o.parse()).collect::<Result<Vec<_>, _>>().ok()?;
            let arch = Arch { space: ctx.space.name().into(), width: ctx.space.width, ops };
            arch.validate(ctx.space).ok().map(|()| arch)
        })
        .collect();
    let best = met
        .iter()
        .map(|arch| {
            let sel = m.model.net.selection(arch).expect("a space arch is a supernet path");
            (holdout_accuracy(&m.model.net, &sel, ctx.data, ctx.device), arch)
        })
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let (chosen, reason) = match best {
        Some((acc, arch)) => (
            arch.clone(),
            format!(
                "{derived_text}, over the {}; retraining instead the best of {} sampled archs that met it on the \
                 device (held-out accuracy {acc:.3} with supernet weights)",
                budget.describe(),
                met.len()
            ),
        ),
        None => (
            derived.clone(),
            format!(
                "{derived_text}, over the {}, and no arch measured during the search met it: the budget was NOT met",
                budget.describe()
            ),
        ),
    };
    eprintln!("{reason}");
    Ok(Decision { derived, derived_measured: derived_cost, chosen, reason })
}

/// Trains `decision.chosen` from scratch on the whole training split
/// (checkpoint after every epoch) and returns it with its test accuracy.
pub fn train_final(ctx: &Context<'_>, decision: &Decision) -> anyhow::Result<(VarStore, f64)> {
    let s = ctx.settings;
    let path = ctx.dir.final_checkpoint();
    let (mut model, mut st) = state::load_or_new_final(&path, ctx.space, s, decision, ctx.device)?;
    let selection = vec![0; ctx.space.blocks.len()];
    let split: &Arc<Split> = &ctx.data.full_train;
    let batches = BatchLoader::batches(split.len(), s.batch_size, false) as u64;
    let total_steps = batches * s.final_epochs as u64;
    for epoch in st.epochs_done..s.final_epochs {
        let loader = ctx.data.loader(split, s.batch_size, Some(s.seed.wrapping_add(1_000 + epoch as u64)), true);
        let bar = crate::progress::bar(batches as usize, "steps");
        let mut loss = Means::default();
        for batch in loader {
            let (x, y) = batch_tensors(&batch, ctx.data.shape, ctx.device);
            let lr = cosine_lr(s.lr, st.weight_steps, total_steps);
            let l = weight_step(&model.net, &mut model.sgd, &x, &y, &selection, lr);
            anyhow::ensure!(l.is_finite(), "final training diverged (loss {l}); lower --lr");
            loss.add(l);
            st.weight_steps += 1;
            bar.set_message(format!("final epoch {}: loss {:.3}", epoch + 1, loss.mean()));
            bar.inc(1);
        }
        bar.finish_and_clear();
        st.epochs_done = epoch + 1;
        state::save_final(&path, &model, &st)?;
        eprintln!("final epoch {}/{}: loss {:.3}", epoch + 1, s.final_epochs, loss.mean());
    }
    let Trainable { vs, net, .. } = model;
    let acc =
        accuracy(&net, &selection, ctx.data.eval_loader(&ctx.data.test), ctx.data.shape, ctx.device, BnMode::Eval);
    Ok((vs, acc))
}
