//! `edgeloop quantize`: HAQ (DESIGN §9) on the network a search trained —
//! a DDPG agent chooses, layer by layer, fp32 or integer weights and
//! activations of 2–8 bits; each episode's policy is made to fit the budget
//! (latency or energy priced from the device's per-precision tables and
//! then measured on the device, or model size), fine-tuned briefly under
//! fake quantization and rewarded with 0.1·(acc_q − acc_fp32) on held-out
//! images. The best policy that fit is fine-tuned longer, exported as
//! integer ONNX, measured on the device and compared with fp32 and uniform
//! int8 measured there too.
//!
//! Stages: trained run → calibration (activation ranges) → costs (tables,
//! whole-policy checks) → episodes (agent, budget, fine-tune, reward;
//! checkpointed after each) → final model and comparison.

mod cost;
mod finetune;
mod result;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, ensure};
use edgeloop_api::MeasureRequest;
use edgeloop_durable::write_atomic;
use edgeloop_export::quant::{ActivationRanges, Precision, QuantForm, QuantPolicy, calibrate};
use edgeloop_space::Layer;
use edgeloop_train::ddpg::{Ddpg, DdpgConfig, DdpgState, Transition};
use edgeloop_train::export::TrainedWeights;
use edgeloop_train::haq::{STATE_DIM, StepStates, enforce_budget, policy_from_actions};
use edgeloop_train::{DeviceKind, checkpoint};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};
use tch::Device;

pub use cost::{Constraint, PolicyCosts, TableCheck, describe, size_kb};
pub use result::{ComparisonRow, QuantizeResult, render_summary};

use crate::cache::MeasurementCache;
use crate::dataset::Data;
use crate::events::{Event, EventSink, Events, Work};
use crate::search::{TrainedRun, load_trained};
use crate::table::LatencyTable;
use crate::table::build::{self as table_build, TablePrecision};
use cost::PolicyMeter;
use finetune::{FinetuneConfig, Network, accuracy, fake_quant, finetune};

/// Everything that shapes the outcome; stored in the checkpoint, so a
/// resumed search must be given the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantizeSettings {
    pub constraint: Constraint,
    pub episodes: usize,
    /// Episodes of random actions before the DDPG actor acts.
    pub warmup_episodes: usize,
    /// Fine-tune steps per episode, before its reward.
    pub finetune_steps: usize,
    /// Fine-tune steps of the final policy (and of uniform int8, to compare).
    pub final_steps: usize,
    pub lr: f64,
    /// Held-out images the episode rewards are measured on.
    pub eval_images: usize,
    /// Training images the activation ranges are calibrated on.
    pub calibration_images: usize,
    /// Whether a layer may stay fp32 (the top weight level).
    pub allow_fp32: bool,
    pub seed: u64,
    pub runtime: String,
    pub measure_threads: usize,
}

impl QuantizeSettings {
    fn check(&self) -> anyhow::Result<()> {
        let limit = self.constraint.limit();
        ensure!(limit > 0.0 && limit.is_finite(), "the {} budget must be positive", self.constraint.metric());
        ensure!(self.episodes > 0, "--episodes must be at least 1");
        ensure!(
            self.eval_images > 0 && self.calibration_images > 0,
            "--eval-images and --calibration-images must be ≥ 1"
        );
        Ok(())
    }
}

/// Where and how it runs; free to change on resume.
pub struct QuantizeEnv {
    /// The search run whose trained network is quantized.
    pub run: PathBuf,
    pub out: PathBuf,
    pub resume: bool,
    /// Agents of the device (one class; see `DevicePool`).
    pub devices: crate::measure::Devices,
    /// The device's fp32 and int8 tables [default: latency-tables/, built when missing].
    pub fp32_table: Option<PathBuf>,
    pub int8_table: Option<PathBuf>,
    pub device_kind: DeviceKind,
    /// Measurement of each episode's policy (short).
    pub probe_request: MeasureRequest,
    /// Measurement of the final models (the ones the budget is judged on).
    pub final_request: MeasureRequest,
    /// Where the search reports its progress.
    pub events: Events,
}

/// One episode of the search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    pub episode: usize,
    /// After budget enforcement.
    pub policy: QuantPolicy,
    /// Size (kB), or the tables' corrected prediction (ms / mJ).
    pub predicted: f64,
    /// On the device (latency / energy searches).
    pub measured: Option<f64>,
    pub budget_met: bool,
    pub accuracy: f64,
    pub reward: f64,
    pub seconds: f64,
}

/// The checkpoint's JSON: settings, episodes so far, the agent's scalars.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct QuantizeState {
    settings: QuantizeSettings,
    fp32_accuracy: f64,
    table_checks: Vec<TableCheck>,
    episodes: Vec<Episode>,
    ddpg: DdpgState,
}

/// The files of `--out`.
struct OutDir(PathBuf);

impl OutDir {
    fn checkpoint(&self) -> PathBuf {
        self.0.join("checkpoint")
    }
    fn episodes(&self) -> PathBuf {
        self.0.join("episodes.csv")
    }
    fn measurements(&self) -> PathBuf {
        self.0.join("measurements.jsonl")
    }
}

/// How budgets are priced: size from the policy, latency / energy from the
/// tables (`costs`) and the device.
struct Pricing {
    costs: Option<PolicyCosts>,
    meter: PolicyMeter,
}

/// What one search works with.
struct Search<'a> {
    settings: &'a QuantizeSettings,
    trained: &'a TrainedRun,
    layers: Vec<Layer>,
    data: Data,
    ranges: ActivationRanges,
    device: Device,
    finetune: FinetuneConfig,
    events: &'a dyn EventSink,
}

impl Search<'_> {
    /// The ONNX (QLinear) of the trained weights under `policy` (read
    /// only: what a policy costs on the device does not depend on tuning).
    fn model_bytes(&self, policy: &QuantPolicy) -> anyhow::Result<Vec<u8>> {
        let model = &self.trained.model;
        let fq = fake_quant(&model.net, policy.clone(), &self.ranges)?;
        Ok(fq.export(&model.vs, &self.trained.space, QuantForm::QLinear)?)
    }

    fn fresh_copy(&self) -> anyhow::Result<Network> {
        Network::copy_of(&self.trained.model.vs, &self.trained.space, &self.trained.arch)
    }

    /// `policy` fine-tuned for `steps` on `split` from the trained weights;
    /// the network and its fake quantization. An all-fp32 policy is the
    /// trained network itself: nothing to adapt to.
    fn tuned(
        &self,
        policy: &QuantPolicy,
        split: &std::sync::Arc<edgeloop_data::Split>,
        steps: usize,
        seed: u64,
    ) -> anyhow::Result<(Network, edgeloop_train::quant::FakeQuant)> {
        let network = self.fresh_copy()?;
        let fq = network.fake_quant(policy.clone(), &self.ranges)?;
        if policy.layers.iter().any(|p| *p != Precision::Fp32) {
            finetune(&network, &fq, &self.data, split, steps, seed, self.finetune)?;
        }
        Ok((network, fq))
    }

    /// `policy` made to fit the budget: (policy, predicted, measured, met).
    async fn fit_budget(
        &self,
        policy: QuantPolicy,
        pricing: &mut Pricing,
    ) -> anyhow::Result<(QuantPolicy, f64, Option<f64>, bool)> {
        let limit = self.settings.constraint.limit();
        match &pricing.costs {
            None => {
                let e = enforce_budget(policy, limit, |p| size_kb(&self.layers, p));
                Ok((e.policy, e.cost, None, e.met))
            }
            Some(costs) => {
                // The tables price the enforcement; the device has the last
                // word. When it measures more than the tables said, aim
                // proportionally lower and try again.
                let mut target = limit;
                for attempt in 0.. {
                    let e = enforce_budget(policy.clone(), target, |p| costs.predict(p));
                    let m = pricing.meter.measure(&e.policy, || self.model_bytes(&e.policy)).await?;
                    let measured = self.settings.constraint.measured(&m);
                    if measured <= limit || !e.met || attempt == 3 {
                        return Ok((e.policy, e.cost, Some(measured), measured <= limit));
                    }
                    target *= limit / measured;
                }
                unreachable!("the loop returns by its fourth attempt")
            }
        }
    }
}

/// Runs (or resumes) a quantization search; returns its result, also
/// written to `<out>/result.json`.
pub async fn run(settings: QuantizeSettings, mut env: QuantizeEnv) -> anyhow::Result<QuantizeResult> {
    settings.check()?;
    let out = OutDir(env.out.clone());
    let _lock = crate::resume::open_run_dir(&out.0, env.resume, &[out.checkpoint()], "quantization search")?;
    let device = env.device_kind.resolve()?;
    let started = Instant::now();
    let trained = load_trained(&env.run, device)?;
    let layers = trained.arch.layers(&trained.space)?;
    let data = trained.settings.recipe.data(&trained.space)?;
    let s = &trained.settings.recipe;
    let finetune_config = FinetuneConfig {
        batch_size: s.batch_size,
        lr: settings.lr,
        momentum: s.momentum,
        weight_decay: s.weight_decay,
        device,
    };
    let events = env.events.clone();
    events.emit(Event::CalibratingRanges { images: settings.calibration_images });
    let ranges = calibrate(
        &trained.space,
        &trained.arch,
        &mut TrainedWeights::new(&trained.model.vs),
        &calibration_images(&data, settings.calibration_images),
    )?;
    let search = Search {
        settings: &settings,
        trained: &trained,
        layers,
        data,
        ranges,
        device,
        finetune: finetune_config,
        events: events.as_ref(),
    };

    let with_energy = matches!(settings.constraint, Constraint::EnergyMj(_));
    env.probe_request.energy = with_energy;
    env.final_request.energy = with_energy;
    let cache = MeasurementCache::open(&out.measurements())?;
    let pool = env.devices.connect(cache).await?;
    let mut meter = PolicyMeter::new(Box::new(pool), env.probe_request.clone(), &trained.arch);

    let (mut state, mut ddpg) = load_or_new(&out, &settings, &search)?;
    let costs = if settings.constraint.on_device() {
        let costs = device_costs(&search, &env, &mut meter, &mut state, with_energy).await?;
        save(&out, &mut state, &mut ddpg)?;
        Some(costs)
    } else {
        None
    };
    let mut pricing = Pricing { costs, meter };
    run_episodes(&search, &out, &mut state, &mut ddpg, &mut pricing).await?;
    result::finish(&search, &env, &out.0, &state, pricing.meter, started).await
}

/// Normalised training images, batch 1 each.
fn calibration_images(data: &Data, count: usize) -> Vec<Vec<f32>> {
    let per_image = data.shape.channels * data.shape.height * data.shape.width;
    data.eval_loader(&data.train)
        .flat_map(|b| b.images.chunks(per_image).map(<[f32]>::to_vec).collect::<Vec<_>>())
        .take(count)
        .collect()
}

fn new_agent(settings: &QuantizeSettings) -> Ddpg {
    let config = DdpgConfig { warmup_episodes: settings.warmup_episodes, ..DdpgConfig::default() };
    Ddpg::new(STATE_DIM, config, settings.seed)
}

fn load_or_new(out: &OutDir, settings: &QuantizeSettings, search: &Search) -> anyhow::Result<(QuantizeState, Ddpg)> {
    let mut ddpg = new_agent(settings);
    let path = out.checkpoint();
    if !path.exists() {
        let fp32 = search.fresh_copy()?;
        let fq = fp32.fake_quant(QuantPolicy::uniform(search.layers.len(), Precision::Fp32), &search.ranges)?;
        let fp32_accuracy =
            accuracy(&fp32, &fq, &search.data, &search.data.holdout, settings.eval_images, search.device);
        search.events.emit(Event::Fp32Accuracy { images: settings.eval_images, accuracy: fp32_accuracy });
        let ddpg_state = ddpg.checkpoint_state();
        let state = QuantizeState {
            settings: settings.clone(),
            fp32_accuracy,
            table_checks: vec![],
            episodes: vec![],
            ddpg: ddpg_state,
        };
        return Ok((state, ddpg));
    }
    let (tensors, meta) = checkpoint::load(&path)?;
    let state: QuantizeState =
        serde_json::from_str(&meta).with_context(|| format!("checkpoint {}: unreadable state", path.display()))?;
    crate::resume::check_settings(&state.settings, settings, &path)?;
    ddpg.restore(&tensors, state.ddpg.clone()).with_context(|| format!("checkpoint {}", path.display()))?;
    search.events.emit(Event::QuantizeResumed { after_episode: state.episodes.len(), of: settings.episodes });
    Ok((state, ddpg))
}

fn save(out: &OutDir, state: &mut QuantizeState, ddpg: &mut Ddpg) -> anyhow::Result<()> {
    state.ddpg = ddpg.checkpoint_state();
    checkpoint::save(&out.checkpoint(), &ddpg.tensors(), &serde_json::to_string(state)?)?;
    Ok(())
}

/// The device's fp32 and int8 tables (built through its agent when rows
/// are missing), checked against whole policies measured on the device:
/// fp32, uniform int8 and two random mixes, which also fit the correction.
async fn device_costs(
    search: &Search<'_>,
    env: &QuantizeEnv,
    meter: &mut PolicyMeter,
    state: &mut QuantizeState,
    energy: bool,
) -> anyhow::Result<PolicyCosts> {
    let (space, arch) = (&search.trained.space, &search.trained.arch);
    let template = MeasureRequest {
        runtime: search.settings.runtime.clone(),
        threads: search.settings.measure_threads,
        energy,
        ..table_build::default_request()
    };
    let mut tables = Vec::new();
    for (precision, given) in [(TablePrecision::Fp32, &env.fp32_table), (TablePrecision::Int8, &env.int8_table)] {
        let path = given.clone().unwrap_or_else(|| {
            table_build::default_path(
                &meter.service.device().device_id,
                &search.settings.runtime,
                space.name(),
                energy,
                precision,
            )
        });
        let targets = table_build::layer_targets(&search.layers);
        let report = table_build::build_targets(
            meter.service.as_mut(),
            space.name(),
            targets,
            &template,
            precision,
            Some(&path),
            search.events,
        )
        .await
        .with_context(|| format!("building the {precision} table {}", path.display()))?;
        if report.measured > 0 {
            search.events.emit(Event::TableCompleted {
                path: path.clone(),
                precision: Some(precision.to_string()),
                measured: report.measured,
            });
        }
        tables.push(LatencyTable::load(&path)?);
    }
    let mut costs = PolicyCosts::from_tables(space, arch, &tables[0], &tables[1], energy)?;
    if state.table_checks.is_empty() {
        let n = search.layers.len();
        let mut rng = SmallRng::seed_from_u64(search.settings.seed ^ 0x5EED);
        let random = |rng: &mut SmallRng| {
            let actions: Vec<f32> = (0..2 * n).map(|_| rand::Rng::random(rng)).collect();
            policy_from_actions(&actions, true)
        };
        let policies = [
            QuantPolicy::uniform(n, Precision::Fp32),
            QuantPolicy::uniform(n, Precision::INT8),
            random(&mut rng),
            random(&mut rng),
        ];
        for policy in policies {
            let m = meter.measure(&policy, || search.model_bytes(&policy)).await?;
            let measured = search.settings.constraint.measured(&m);
            state.table_checks.push(TableCheck {
                policy: describe(&policy),
                table_sum: costs.table_sum(&policy),
                measured,
            });
        }
    }
    costs.fit(&state.table_checks);
    let unit = search.settings.constraint.unit();
    for c in &state.table_checks {
        let (policy, tables, measured) = (c.policy.clone(), c.table_sum, c.measured);
        search.events.emit(Event::TableCheck { policy, tables, measured, unit });
    }
    search.events.emit(Event::TableScale { factor: costs.scale() });
    Ok(costs)
}

async fn run_episodes(
    search: &Search<'_>,
    out: &OutDir,
    state: &mut QuantizeState,
    ddpg: &mut Ddpg,
    pricing: &mut Pricing,
) -> anyhow::Result<()> {
    let settings = search.settings;
    let states = StepStates::new(&search.layers);
    let work = Work::start(search.events, "episodes", settings.episodes as u64, state.episodes.len() as u64);
    for episode in state.episodes.len()..settings.episodes {
        let started = Instant::now();
        let (mut observed, mut actions, mut prev) = (Vec::new(), Vec::new(), 0.0);
        for step in 0..states.steps() {
            let s = states.state(step, prev);
            prev = ddpg.act(&s, episode);
            observed.push(s);
            actions.push(prev);
        }
        let proposed = policy_from_actions(&actions, settings.allow_fp32);
        let (policy, predicted, measured, budget_met) = search.fit_budget(proposed, pricing).await?;
        let seed = settings.seed.wrapping_add(episode as u64);
        let (network, fq) = search.tuned(&policy, &search.data.train, settings.finetune_steps, seed)?;
        let acc = accuracy(&network, &fq, &search.data, &search.data.holdout, settings.eval_images, search.device);
        let reward = 0.1 * (acc - state.fp32_accuracy);
        for (t, (s, &a)) in observed.iter().zip(&actions).enumerate() {
            let done = t + 1 == observed.len();
            let next_state = if done { s.clone() } else { observed[t + 1].clone() };
            ddpg.remember(Transition { state: s.clone(), action: a, reward: reward as f32, next_state, done });
        }
        ddpg.observe_episode_reward(reward);
        if episode >= settings.warmup_episodes {
            for _ in 0..states.steps() {
                ddpg.update();
            }
        }
        let e = Episode {
            episode,
            policy,
            predicted,
            measured,
            budget_met,
            accuracy: acc,
            reward,
            seconds: started.elapsed().as_secs_f64(),
        };
        let policy = describe(&e.policy);
        search.events.emit(Event::Episode {
            episode: episode + 1,
            fits: budget_met,
            policy: policy.clone(),
            accuracy: acc,
            reward,
        });
        state.episodes.push(e);
        save(out, state, ddpg)?;
        write_episodes(&out.episodes(), &state.episodes, settings.constraint)?;
        work.advance(Some(format!("acc {:.1}% reward {:+.4} [{policy}]", 100.0 * acc, reward)));
    }
    drop(work);
    Ok(())
}

/// `episodes.csv`, rewritten whole (atomically) after each episode.
fn write_episodes(path: &Path, episodes: &[Episode], constraint: Constraint) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let unit = constraint.unit();
    w.write_record([
        "episode".to_string(),
        "policy".into(),
        format!("predicted_{unit}"),
        format!("measured_{unit}"),
        "budget_met".into(),
        "accuracy".into(),
        "reward".into(),
        "seconds".into(),
    ])?;
    for e in episodes {
        w.write_record([
            e.episode.to_string(),
            describe(&e.policy),
            format!("{:.5}", e.predicted),
            e.measured.map_or_else(String::new, |m| format!("{m:.5}")),
            e.budget_met.to_string(),
            format!("{:.5}", e.accuracy),
            format!("{:.6}", e.reward),
            format!("{:.2}", e.seconds),
        ])?;
    }
    write_atomic(path, &w.into_inner()?)?;
    Ok(())
}

/// The policy of the run's answer: the most accurate episode that fit the
/// budget, else the cheapest one (reported as missing it).
fn chosen(episodes: &[Episode]) -> &Episode {
    let cost = |e: &Episode| e.measured.unwrap_or(e.predicted);
    episodes
        .iter()
        .filter(|e| e.budget_met)
        .max_by(|a, b| a.accuracy.total_cmp(&b.accuracy))
        .or_else(|| episodes.iter().min_by(|a, b| cost(a).total_cmp(&cost(b))))
        .expect("at least one episode")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn episode(accuracy: f64, measured: f64, budget_met: bool) -> Episode {
        let policy = QuantPolicy::uniform(1, Precision::INT8);
        Episode {
            episode: 0,
            policy,
            predicted: measured,
            measured: Some(measured),
            budget_met,
            accuracy,
            reward: 0.0,
            seconds: 0.0,
        }
    }

    #[test]
    fn the_most_accurate_fitting_episode_is_chosen_else_the_cheapest() {
        let episodes = [episode(0.9, 2.0, false), episode(0.7, 1.0, true), episode(0.8, 0.9, true)];
        assert_eq!(chosen(&episodes).accuracy, 0.8);
        let over = [episode(0.9, 2.0, false), episode(0.5, 1.5, false)];
        assert_eq!(chosen(&over).accuracy, 0.5);
    }

    /// A budget such as 2 × 0.564876 ms is not the shortest decimal of its
    /// value; the checkpoint must give back the very same f64, or a resume is
    /// refused as "other settings".
    #[test]
    fn budgets_survive_the_checkpoints_json_exactly() {
        let budget = Constraint::LatencyMs(1.1297519999999999);
        let back: Constraint = serde_json::from_str(&serde_json::to_string(&budget).unwrap()).unwrap();
        assert_eq!(back, budget);
    }
}
