//! The final network: the chosen architecture trained from scratch on the
//! whole training split (checkpointed after every epoch), exported with its
//! trained weights and measured on the device — with a per-op profile, so
//! the table's prediction of each block can be set against what the device
//! spent there. Shared by `edgeloop search` and `edgeloop train`.

use std::sync::Arc;

use anyhow::Context as _;
use edgeloop_api::{MeasureRequest, Measurement};
use edgeloop_data::{BatchLoader, Split};
use edgeloop_durable::{write_atomic, write_json};
use edgeloop_export::export::layer_names;
use edgeloop_onnx::node_scope;
use edgeloop_space::{Arch, Space};
use edgeloop_train::BnMode;
use edgeloop_train::export::export_arch;
use edgeloop_train::optim::cosine_lr;
use edgeloop_train::trainer::{accuracy, batch_tensors, weight_step};
use serde::{Deserialize, Serialize};
use tch::Device;
use tch::nn::VarStore;

use super::result::Predictors;
use super::state::{self, Trainable};
use super::{Budget, Decision, FinalSettings, Mean, RunDir};
use crate::dataset::Data;
use crate::events::{Event, EventSink, Work};
use crate::measure::{MeasureJob, Measurements};
use crate::predict::Metric;

/// What the final stage needs.
pub struct FinalContext<'a> {
    pub settings: &'a FinalSettings,
    pub space: &'a Space,
    pub data: &'a Data,
    pub device: Device,
    pub dir: &'a RunDir,
    /// The budget the model is judged on, if there is one.
    pub budget: Option<Budget>,
    pub final_request: &'a MeasureRequest,
    pub events: &'a dyn EventSink,
}

/// Trains `decision.chosen` from scratch on the whole training split
/// (checkpoint after every epoch) and returns it with its test accuracy.
pub fn train(ctx: &FinalContext<'_>, decision: &Decision) -> anyhow::Result<(VarStore, f64)> {
    let recipe = &ctx.settings.recipe;
    let path = ctx.dir.final_checkpoint();
    let (mut model, mut st) = state::load_or_new_final(&path, ctx.space, ctx.settings, decision, ctx.device)?;
    let selection = vec![0; ctx.space.blocks.len()];
    let split: &Arc<Split> = &ctx.data.full_train;
    let batches = BatchLoader::batches(split.len(), recipe.batch_size, false) as u64;
    let total_steps = batches * recipe.final_epochs as u64;
    for epoch in st.epochs_done..recipe.final_epochs {
        let shuffle = Some(recipe.seed.wrapping_add(1_000 + epoch as u64));
        let loader = ctx.data.loader(split, recipe.batch_size, shuffle, true);
        let work = Work::start(ctx.events, "steps", batches, 0);
        let mut loss = Mean::default();
        for batch in loader {
            let (x, y) = batch_tensors(&batch, ctx.data.shape, ctx.device);
            let lr = cosine_lr(recipe.lr, st.weight_steps, total_steps);
            let l = weight_step(&model.net, &mut model.sgd, &x, &y, &selection, lr);
            anyhow::ensure!(l.is_finite(), "final training diverged (loss {l}); lower --lr");
            loss.add(l);
            st.weight_steps += 1;
            work.advance(Some(format!("final epoch {}: loss {:.3}", epoch + 1, loss.mean())));
        }
        drop(work);
        st.epochs_done = epoch + 1;
        state::save_final(&path, &model, &st)?;
        ctx.events.emit(Event::FinalEpoch { epoch: epoch + 1, of: recipe.final_epochs, loss: loss.mean() });
    }
    let Trainable { vs, net, .. } = model;
    let acc =
        accuracy(&net, &selection, ctx.data.eval_loader(&ctx.data.test), ctx.data.shape, ctx.device, BnMode::Eval);
    Ok((vs, acc))
}

/// One layer of the final model: the table's share of the prediction and
/// the device's per-op profile summed over the layer's nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockTime {
    /// `stem`, `first_block`, a choice block's name, `head` or `classifier`.
    pub block: String,
    pub op: String,
    /// The calibrated table's share (ms, without the per-call overhead).
    pub predicted_ms: f64,
    /// Mean time per run of the layer's nodes in the agent's profile (ms).
    pub profiled_ms: f64,
}

/// The final model as the device measured it.
pub struct Outcome {
    pub arch: Arch,
    pub measurement: Measurement,
    pub model_sha256: String,
    pub model_bytes: usize,
    /// The checked measurement's history (see `hygiene`).
    pub remeasured: usize,
    pub suspect: Option<String>,
    /// The budget's figure, measured and predicted (the latency statistic
    /// judged, or energy); for a run without a budget, the median latency.
    pub judged: f64,
    pub predicted_judged: f64,
    pub budget: Option<Budget>,
    pub profile: Vec<BlockTime>,
}

impl Outcome {
    /// Whether the measurement meets the budget (a run without one has nothing to miss).
    pub fn budget_met(&self) -> bool {
        self.budget.is_none_or(|b| b.met_by(self.judged))
    }
}

/// Exports the trained network (`arch.json`, `model.onnx`), measures it on
/// the pool's first agent with a per-op profile, and compares with the table.
pub async fn measure(
    ctx: &FinalContext<'_>,
    pool: &mut dyn Measurements,
    predictors: &Predictors<'_>,
    vs: &VarStore,
    decision: &Decision,
) -> anyhow::Result<Outcome> {
    let dir = ctx.dir;
    let arch = decision.chosen.clone();
    write_json(&dir.arch(), &arch).with_context(|| format!("writing {}", dir.arch().display()))?;
    let bytes = export_arch(vs, ctx.space, &arch)?;
    write_atomic(&dir.model(), &bytes).with_context(|| format!("writing {}", dir.model().display()))?;
    ctx.events.emit(Event::MeasuringModel { model: dir.model(), device: pool.device().device_id.clone() });
    // The profile's runs come after the timed ones: the latency figures are as without it.
    let request = MeasureRequest { profile_ops: true, ..ctx.final_request.clone() };
    let expected_min = predictors.fastest.predict(ctx.space, &arch)?.total_ms;
    let (model_sha256, model_bytes) = (crate::client::sha256_hex(&bytes), bytes.len());
    let job = MeasureJob {
        label: "the final model".into(),
        bytes,
        ..MeasureJob::arch(&arch, Vec::new(), Some(expected_min))
    };
    let checked = pool.measure_uncached(job, &request).await?;
    let m = &checked.measurement;
    let prediction = predictors.latency.predict(ctx.space, &arch)?;
    let (judged, predicted_judged) = match ctx.budget {
        Some(Budget { metric: Metric::Energy, .. }) => (
            m.energy.as_ref().map_or(f64::INFINITY, |e| e.mj_per_inference),
            predictors
                .energy
                .as_ref()
                .expect("an energy search has an energy predictor")
                .predict(ctx.space, &arch)?
                .total_ms,
        ),
        Some(b) => (b.stat.of(&m.latency_ms), prediction.total_ms),
        None => (m.latency_ms.p50, prediction.total_ms),
    };
    let names = layer_names(ctx.space, &arch);
    let ops = m.ops.as_deref().unwrap_or_default();
    let profile = prediction
        .per_layer
        .iter()
        .zip(&names)
        .map(|(layer, name)| BlockTime {
            block: layer.block.clone(),
            op: layer.op.clone(),
            predicted_ms: layer.ms,
            profiled_ms: ops.iter().filter(|o| node_scope(&o.node) == Some(name.as_str())).map(|o| o.ms).sum(),
        })
        .collect();
    Ok(Outcome {
        arch,
        model_sha256,
        model_bytes,
        remeasured: checked.remeasured,
        suspect: checked.suspect,
        judged,
        predicted_judged,
        budget: ctx.budget,
        profile,
        measurement: checked.measurement,
    })
}
