//! What a checkpoint holds besides tensors, and how the networks and
//! optimisers are rebuilt from one. Tensors: the var store's (`net.<name>`)
//! and SGD's momentum buffers (`sgd.<name>`); everything else is JSON.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, ensure};
use edgeloop_space::{Arch, Space};
use edgeloop_train::optim::{Adam, Sgd};
use edgeloop_train::{ArchParams, Supernet, checkpoint};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Device, Tensor};

use super::{Decision, FinalSettings, SearchSettings, StrategyState, TrainRecipe};

/// Adam's state for α (plain numbers: α is small).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdamState {
    pub steps: u64,
    pub m: Vec<Vec<f64>>,
    pub v: Vec<Vec<f64>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchState {
    pub settings: SearchSettings,
    pub epochs_done: usize,
    pub weight_steps: u64,
    pub alpha: Vec<Vec<f64>>,
    pub adam: AdamState,
    /// What the strategy keeps between arch steps, tagged with its name.
    pub strategy_state: StrategyState,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinalState {
    pub settings: FinalSettings,
    pub decision: Decision,
    pub epochs_done: usize,
    pub weight_steps: u64,
}

/// A network with its optimiser, on the training device.
pub struct Trainable {
    pub vs: VarStore,
    pub net: Supernet,
    pub sgd: Sgd,
}

/// The search's supernet, α and optimisers.
pub struct SearchModel {
    pub model: Trainable,
    pub alpha: ArchParams,
    pub adam: Adam,
}

fn rows(t: &[Tensor]) -> Vec<Vec<f64>> {
    t.iter().map(|t| Vec::<f64>::try_from(&t.to_kind(tch::Kind::Double)).expect("f64")).collect()
}

fn tensors(rows: &[Vec<f64>]) -> Vec<Tensor> {
    rows.iter().map(|r| Tensor::from_slice(r)).collect()
}

impl Trainable {
    /// A fresh network (seeded) of `space`: its supernet, or only `arch`.
    pub fn new(space: &Space, arch: Option<&Arch>, recipe: &TrainRecipe, device: Device) -> anyhow::Result<Self> {
        tch::manual_seed(recipe.seed as i64);
        let vs = VarStore::new(device);
        let net = match arch {
            Some(arch) => Supernet::for_arch(&vs.root(), space, arch)?,
            None => Supernet::new(&vs.root(), space),
        };
        Ok(Trainable { vs, net, sgd: Sgd::nesterov(recipe.momentum, recipe.weight_decay) })
    }

    fn tensors(&self) -> Vec<(String, Tensor)> {
        let vars = self.vs.variables().into_iter().map(|(k, v)| (format!("net.{k}"), v));
        let buffers = self.sgd.buffers.iter().map(|(k, v)| (format!("sgd.{k}"), v.shallow_clone()));
        vars.chain(buffers).collect()
    }

    /// Loads weights and momentum from `saved` (every variable must be there).
    fn restore(&mut self, saved: &std::collections::HashMap<String, Tensor>, path: &Path) -> anyhow::Result<()> {
        let device = self.vs.device();
        tch::no_grad(|| -> anyhow::Result<()> {
            for (name, var) in self.vs.variables() {
                let src = saved
                    .get(&format!("net.{name}"))
                    .with_context(|| format!("checkpoint {} lacks tensor {name}", path.display()))?;
                ensure!(src.size() == var.size(), "checkpoint {}: tensor {name} has another shape", path.display());
                var.detach().copy_(src);
            }
            Ok(())
        })?;
        self.sgd.buffers = saved
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("sgd.").map(|name| (name.to_string(), v.to_device(device))))
            .collect::<BTreeMap<_, _>>();
        Ok(())
    }
}

impl SearchModel {
    /// A new search (α ~ N(0, 1e-3), seeded), or the one saved at `path`.
    pub fn load_or_new(
        path: &Path,
        space: &Space,
        settings: &SearchSettings,
        device: Device,
    ) -> anyhow::Result<(SearchModel, SearchState)> {
        let mut model = Trainable::new(space, None, &settings.recipe, device)?;
        let counts = model.net.candidate_counts();
        if !path.exists() {
            let alpha = ArchParams::new(&counts, &mut SmallRng::seed_from_u64(settings.recipe.seed));
            let adam = Adam::new(alpha.tensors(), settings.schedule.arch_lr, (0.0, 0.999), 1e-8);
            let state = SearchState {
                settings: settings.clone(),
                epochs_done: 0,
                weight_steps: 0,
                alpha: alpha.values(),
                adam: AdamState { steps: 0, m: rows(&adam.m), v: rows(&adam.v) },
                strategy_state: settings.strategy.initial_state(),
            };
            return Ok((SearchModel { model, alpha, adam }, state));
        }
        let (saved, meta) = checkpoint::load(path)?;
        let state = search_state(&meta, path)?;
        crate::resume::check_settings(&state.settings, settings, path)?;
        model.restore(&saved, path)?;
        let alpha = ArchParams::from_values(state.alpha.clone());
        let mut adam = Adam::new(alpha.tensors(), settings.schedule.arch_lr, (0.0, 0.999), 1e-8);
        adam.steps = state.adam.steps;
        adam.m = tensors(&state.adam.m);
        adam.v = tensors(&state.adam.v);
        Ok((SearchModel { model, alpha, adam }, state))
    }

    pub fn save(&self, path: &Path, state: &mut SearchState) -> anyhow::Result<()> {
        state.alpha = self.alpha.values();
        state.adam = AdamState { steps: self.adam.steps, m: rows(&self.adam.m), v: rows(&self.adam.v) };
        checkpoint::save(path, &self.model.tensors(), &serde_json::to_string(state)?)?;
        Ok(())
    }
}

/// The state of a search checkpoint; a clear refusal for checkpoints of
/// edgeloop before strategies kept their own state (their REINFORCE
/// baseline and multiplier sat beside the epoch counters).
fn search_state(meta: &str, path: &Path) -> anyhow::Result<SearchState> {
    let unreadable = || format!("checkpoint {}: unreadable state", path.display());
    let value: serde_json::Value = serde_json::from_str(meta).with_context(unreadable)?;
    ensure!(
        value.get("strategy_state").is_some(),
        "checkpoint {} was written by an older edgeloop, whose checkpoints do not keep each strategy's state \
         apart: it cannot be resumed; start the search again in another --out",
        path.display()
    );
    serde_json::from_value(value).with_context(unreadable)
}

/// The final network of `decision.chosen`, fresh or from `path` (unless
/// that holds another round's network).
pub fn load_or_new_final(
    path: &Path,
    space: &Space,
    settings: &FinalSettings,
    decision: &Decision,
    device: Device,
) -> anyhow::Result<(Trainable, FinalState)> {
    let mut model = Trainable::new(space, Some(&decision.chosen), &settings.recipe, device)?;
    let fresh = FinalState { settings: settings.clone(), decision: decision.clone(), epochs_done: 0, weight_steps: 0 };
    if !path.exists() {
        return Ok((model, fresh));
    }
    let (saved, meta) = checkpoint::load(path)?;
    let state: FinalState =
        serde_json::from_str(&meta).with_context(|| format!("checkpoint {}: unreadable state", path.display()))?;
    crate::resume::check_settings(&state.settings, settings, path)?;
    if state.decision.round != decision.round || state.decision.chosen != decision.chosen {
        return Ok((model, fresh));
    }
    model.restore(&saved, path)?;
    Ok((model, state))
}

/// A search run's retrained network, from its final checkpoint.
pub struct TrainedRun {
    pub settings: FinalSettings,
    pub space: Space,
    pub arch: Arch,
    pub model: Trainable,
}

/// The network `edgeloop search --out run` (or `edgeloop train --out run`)
/// trained last, on `device`; an error unless its final training finished.
pub fn load_trained(run: &Path, device: Device) -> anyhow::Result<TrainedRun> {
    let path = super::RunDir::new(run).final_checkpoint();
    if !path.exists() {
        anyhow::bail!(
            "{} holds no trained network ({} is missing): run `edgeloop search --out {}` first",
            run.display(),
            path.display(),
            run.display()
        );
    }
    let (saved, meta) = checkpoint::load(&path)?;
    let state: FinalState =
        serde_json::from_str(&meta).with_context(|| format!("checkpoint {}: unreadable state", path.display()))?;
    ensure!(
        state.epochs_done == state.settings.recipe.final_epochs,
        "the run in {} stopped after {} of {} final epochs: finish it with `--resume` first",
        run.display(),
        state.epochs_done,
        state.settings.recipe.final_epochs
    );
    let space = Space::load(&state.settings.space, state.settings.width)?;
    let arch = state.decision.chosen;
    let mut model = Trainable::new(&space, Some(&arch), &state.settings.recipe, device)?;
    model.restore(&saved, &path)?;
    Ok(TrainedRun { settings: state.settings, space, arch, model })
}

/// The decision a final checkpoint was made for, if there is one.
pub fn saved_decision(path: &Path) -> anyhow::Result<Option<Decision>> {
    if !path.exists() {
        return Ok(None);
    }
    let (_, meta) = checkpoint::load(path)?;
    let state: FinalState =
        serde_json::from_str(&meta).with_context(|| format!("checkpoint {}: unreadable state", path.display()))?;
    Ok(Some(state.decision))
}

pub fn save_final(path: &Path, model: &Trainable, state: &FinalState) -> anyhow::Result<()> {
    checkpoint::save(path, &model.tensors(), &serde_json::to_string(state)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_from_before_strategy_states_is_refused_by_name() {
        let path = Path::new("runs/old/checkpoint");
        let old = r#"{"epochs_done": 3, "weight_steps": 30, "baseline": 0.4, "lambda": 0.0}"#;
        let err = search_state(old, path).unwrap_err().to_string();
        assert!(err.contains("runs/old/checkpoint") && err.contains("older edgeloop"), "{err}");
        assert!(search_state("{not json", path).unwrap_err().to_string().contains("unreadable state"));
    }
}
