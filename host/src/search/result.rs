//! `result.json` of a run (a search, or one fixed architecture trained by
//! `edgeloop train`) and its closing summary: the final model judged against
//! the budget on its own measurement, with the evidence of how it was
//! chosen and how clean the deciding measurements were.

use anyhow::Context as _;
use edgeloop_durable::write_json;
use edgeloop_space::Arch;
use serde::{Deserialize, Serialize};

use super::decide::{CandidateRecord, Miss};
pub use super::final_model::BlockTime;
use super::final_model::{FinalContext, Outcome};
use super::strategy::Context;
use super::{Decision, Strategy};
use crate::measure::Measurements;
use crate::measure::hygiene::MeasurementHygiene;
use crate::predict::{Metric, Predictor, Stat};

/// The table's predictors of a run: latency (of the judged statistic)
/// always, energy in an energy search.
pub struct Predictors<'a> {
    pub latency: Predictor<'a>,
    pub energy: Option<Predictor<'a>>,
    /// The fastest run (to tell a slow stretch of the device, see `hygiene`).
    pub fastest: Predictor<'a>,
}

/// What made the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunKind {
    /// `edgeloop search`.
    Search,
    /// `edgeloop train` (one fixed architecture, e.g. a baseline).
    Train,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchResult {
    pub kind: RunKind,
    pub space: String,
    pub width: f64,
    pub dataset: String,
    /// The search strategy (none for `train`).
    pub strategy: Option<Strategy>,
    pub arch: Arch,
    pub arch_hash: String,
    pub test_accuracy: f64,
    /// The latency budget (ms), in a latency search.
    pub budget_ms: Option<f64>,
    /// The energy budget (mJ per inference), in an energy search.
    pub energy_budget_mj: Option<f64>,
    /// The statistic of the device's runs a latency budget is judged on.
    pub budget_stat: Stat,
    /// The final model measured on the device: p50, p90 and fastest run.
    pub measured_latency_ms: f64,
    pub measured_p90_ms: f64,
    pub measured_min_ms: f64,
    pub measured_runs: usize,
    /// The table's calibrated prediction for `arch` of `budget_stat`.
    pub predicted_latency_ms: f64,
    /// Energy per inference of the final model above idle, measured on the
    /// device's power sensor (energy searches).
    pub measured_energy_mj: Option<f64>,
    pub predicted_energy_mj: Option<f64>,
    pub energy_sensor: Option<String>,
    /// The budget's figure of the final model's measurement against the
    /// budget, nothing else (none without a budget).
    pub budget_met: Option<bool>,
    pub device_id: String,
    pub runtime: String,
    pub model_sha256: String,
    /// Size of `model.onnx`, bytes.
    pub model_bytes: usize,
    /// What `model.onnx` expects: pixels scaled to [0, 1], then
    /// (x − mean) / std per channel (statistics of the training split).
    pub input_mean: Vec<f32>,
    pub input_std: Vec<f32>,
    /// Why this arch was retrained.
    pub decision: String,
    /// The most likely architecture under the final α (for reference).
    pub derived_arch_hash: Option<String>,
    /// The safety margin of the derivation that chose `arch`.
    pub margin: Option<f64>,
    /// Final trainings before this one whose models missed the budget.
    pub misses: Vec<Miss>,
    pub candidates: Vec<CandidateRecord>,
    /// The space's fastest architecture by the table, measured on the device.
    pub fastest_measured: Option<f64>,
    /// The budget's multiplier at the end of the search (`lagrange`).
    pub lambda: Option<f64>,
    /// Per layer of the final model: the table's share vs the device's profile.
    pub profile: Vec<BlockTime>,
    /// How clean the measurements that decided were.
    pub hygiene: Vec<MeasurementHygiene>,
    pub train_device: String,
    /// Candidate archs this process measured on the device(s), and those the
    /// measurement cache answered (a resumed search re-measures nothing).
    pub device_measurements: usize,
    pub cache_hits: usize,
    pub search_seconds: f64,
    pub final_seconds: f64,
}

/// How long the stages took.
pub struct Timings {
    pub search_seconds: f64,
    pub final_seconds: f64,
}

impl SearchResult {
    /// The result of a final model: everything but what a search adds.
    pub fn of_final(
        kind: RunKind,
        ctx: &FinalContext<'_>,
        pool: &dyn Measurements,
        predictors: &Predictors<'_>,
        outcome: Outcome,
        test_accuracy: f64,
        timings: Timings,
    ) -> anyhow::Result<SearchResult> {
        let s = ctx.settings;
        let m = &outcome.measurement;
        let info = pool.device();
        let energy = m.energy.clone();
        let final_hygiene = MeasurementHygiene {
            what: "final model".into(),
            other_busy_cores: m.load.map(|l| l.other_busy_cores),
            remeasured: outcome.remeasured,
            clean: outcome.suspect.is_none(),
        };
        let budget = ctx.budget;
        Ok(SearchResult {
            kind,
            space: s.space.clone(),
            width: s.width,
            dataset: s.recipe.dataset.clone(),
            strategy: None,
            arch_hash: outcome.arch.hash(),
            test_accuracy,
            budget_ms: budget.filter(|b| b.metric == Metric::Latency).map(|b| b.limit),
            energy_budget_mj: budget.filter(|b| b.metric == Metric::Energy).map(|b| b.limit),
            budget_stat: budget.map_or(Stat::P50, |b| b.stat),
            measured_latency_ms: m.latency_ms.p50,
            measured_p90_ms: m.latency_ms.p90,
            measured_min_ms: m.latency_ms.min,
            measured_runs: m.latency_ms.n,
            predicted_latency_ms: predictors.latency.predict(ctx.space, &outcome.arch)?.total_ms,
            measured_energy_mj: energy.as_ref().map(|e| e.mj_per_inference),
            predicted_energy_mj: predictors
                .energy
                .map(|p| p.predict(ctx.space, &outcome.arch))
                .transpose()?
                .map(|p| p.total_ms),
            energy_sensor: energy.map(|e| e.sensor),
            budget_met: budget.is_some().then(|| outcome.budget_met()),
            device_id: info.device_id.clone(),
            runtime: m.runtime.clone(),
            model_sha256: outcome.model_sha256.clone(),
            model_bytes: outcome.model_bytes,
            input_mean: ctx.data.norm.mean.clone(),
            input_std: ctx.data.norm.std.clone(),
            decision: String::new(),
            derived_arch_hash: None,
            margin: None,
            misses: Vec::new(),
            candidates: Vec::new(),
            fastest_measured: None,
            lambda: None,
            profile: outcome.profile.clone(),
            hygiene: vec![final_hygiene],
            train_device: edgeloop_train::device::describe(ctx.device),
            device_measurements: pool.counts().measured,
            cache_hits: pool.counts().cache_hits,
            search_seconds: timings.search_seconds,
            final_seconds: timings.final_seconds,
            arch: outcome.arch,
        })
    }

    /// Writes `result.json` into `dir`.
    pub fn save(&self, path: &std::path::Path) -> anyhow::Result<()> {
        write_json(path, self).with_context(|| format!("writing {}", path.display()))
    }
}

/// The result of a search: the final model's, with how it was chosen.
#[allow(clippy::too_many_arguments)]
pub fn finish(
    ctx: &Context<'_>,
    final_ctx: &FinalContext<'_>,
    pool: &dyn Measurements,
    predictors: &Predictors<'_>,
    decision: Decision,
    outcome: Outcome,
    test_accuracy: f64,
    timings: Timings,
) -> anyhow::Result<SearchResult> {
    let mut result =
        SearchResult::of_final(RunKind::Search, final_ctx, pool, predictors, outcome, test_accuracy, timings)?;
    let cached = |hash: &str| pool.cached(hash, ctx.budget.metric == Metric::Energy);
    let deciding = decision.candidates.iter().filter_map(|c| {
        cached(&c.arch_hash).map(|m| MeasurementHygiene {
            what: format!("candidate {}", &c.arch_hash[..12]),
            other_busy_cores: m.other_busy_cores,
            remeasured: m.remeasured,
            clean: m.suspect.is_none(),
        })
    });
    result.hygiene.extend(deciding.collect::<Vec<_>>());
    result.strategy = Some(ctx.settings.strategy_kind());
    result.decision = decision.reason;
    result.derived_arch_hash = Some(decision.derived.hash());
    result.margin = Some(decision.margin);
    result.misses = decision.misses;
    result.candidates = decision.candidates;
    result.fastest_measured = decision.fastest_measured;
    result.lambda = decision.lambda;
    result.save(&ctx.dir.result())?;
    Ok(result)
}

/// The closing table of `edgeloop search` and `edgeloop train`.
pub fn render_summary(r: &SearchResult, out_dir: &std::path::Path) -> String {
    let (measured, limit, unit) = match (r.energy_budget_mj, r.budget_ms) {
        (Some(mj), _) => (r.measured_energy_mj.unwrap_or(f64::INFINITY), mj, "mJ".to_string()),
        (None, ms) => {
            let judged = if r.budget_stat == Stat::P90 { r.measured_p90_ms } else { r.measured_latency_ms };
            (judged, ms.unwrap_or(f64::NAN), format!("ms {}", r.budget_stat))
        }
    };
    let verdict = match r.budget_met {
        Some(true) => format!("met: {measured:.3} {unit} ≤ {limit} {unit}"),
        Some(false) => format!("NOT met: {measured:.3} {unit} > {limit} {unit}"),
        None => "none given".into(),
    };
    let ops: Vec<String> = r.arch.ops.iter().map(ToString::to_string).collect();
    let clean = r.hygiene.iter().filter(|h| h.clean).count();
    let remeasured: usize = r.hygiene.iter().map(|h| h.remeasured).sum();
    let mut rows = vec![
        ("space", format!("{} (width {})", r.space, r.width)),
        ("dataset", r.dataset.clone()),
        ("strategy", r.strategy.map_or("none (fixed architecture)".into(), |s| format!("{s:?}").to_lowercase())),
        ("arch", format!("{} [{}]", &r.arch_hash[..12], ops.join(", "))),
        ("test accuracy", format!("{:.2}%", r.test_accuracy * 100.0)),
        ("predicted latency", format!("{:.3} ms {} (calibrated table)", r.predicted_latency_ms, r.budget_stat)),
        (
            "measured latency",
            format!(
                "{:.3} ms p50, {:.3} ms p90, {:.3} ms min, {} runs",
                r.measured_latency_ms, r.measured_p90_ms, r.measured_min_ms, r.measured_runs
            ),
        ),
        ("budget", verdict),
    ];
    if let Some(mj) = r.measured_energy_mj {
        let sensor = r.energy_sensor.as_deref().unwrap_or("?");
        let predicted = r.predicted_energy_mj.unwrap_or(f64::NAN);
        rows.push(("energy", format!("{mj:.3} mJ/inference measured ({sensor}), {predicted:.3} mJ predicted")));
    }
    if let Some(margin) = r.margin {
        let rounds = if r.misses.is_empty() {
            String::new()
        } else {
            format!(", after {} missed final model(s)", r.misses.len())
        };
        rows.push(("margin", format!("{:.1}% under the budget{rounds}", margin * 100.0)));
    }
    rows.extend([
        ("model size", format!("{:.1} kB (model.onnx)", r.model_bytes as f64 / 1000.0)),
        ("device", format!("{} ({})", r.device_id, r.runtime)),
        ("trained on", r.train_device.clone()),
        (
            "measurements",
            format!(
                "{} measured on the device, {} from the cache; deciding ones: {clean} of {} clean, {remeasured} re-taken",
                r.device_measurements,
                r.cache_hits,
                r.hygiene.len()
            ),
        ),
        ("time", format!("search {:.0} s, final training {:.0} s", r.search_seconds, r.final_seconds)),
        ("results", format!("{}/{{result.json, model.onnx, arch.json}}", out_dir.display())),
    ]);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out: String = rows.iter().map(|(k, v)| format!("{k:<width$}  {v}\n")).collect();
    if !r.decision.is_empty() {
        out.push_str(&format!("{:<width$}  {}\n", "decision", r.decision));
    }
    out
}
