//! The end of a search: the retrained network exported with its weights,
//! measured on the device, judged against the budget on that measurement
//! alone, and written to `result.json` with a summary.

use anyhow::Context as _;
use edgeloop_space::Arch;
use edgeloop_train::export::export_arch;
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;

use super::strategy::Context;
use super::{Decision, DevicePool, Strategy};
use crate::client::sha256_hex;
use crate::files::{write_atomic, write_json};
use crate::predict::{Metric, Predictor};

/// The table's predictors of the search: latency always, energy in an energy search.
pub struct Predictors<'a> {
    pub latency: Predictor<'a>,
    pub energy: Option<Predictor<'a>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchResult {
    pub space: String,
    pub width: f64,
    pub dataset: String,
    pub strategy: Strategy,
    pub arch: Arch,
    pub arch_hash: String,
    pub test_accuracy: f64,
    /// The latency budget (ms), in a latency search.
    pub budget_ms: Option<f64>,
    /// The energy budget (mJ per inference), in an energy search.
    pub energy_budget_mj: Option<f64>,
    /// p50 of the final model measured on the device.
    pub measured_latency_ms: f64,
    pub measured_min_ms: f64,
    pub measured_runs: usize,
    /// The table's (calibrated) prediction for `arch`.
    pub predicted_latency_ms: f64,
    /// Energy per inference of the final model above idle, measured on the
    /// device's power sensor (energy searches).
    pub measured_energy_mj: Option<f64>,
    pub predicted_energy_mj: Option<f64>,
    pub energy_sensor: Option<String>,
    /// `measured_latency_ms <= budget_ms` (or `measured_energy_mj <=
    /// energy_budget_mj`): judged on the measurement only.
    pub budget_met: bool,
    pub device_id: String,
    pub runtime: String,
    pub model_sha256: String,
    /// What `model.onnx` expects: pixels scaled to [0, 1], then
    /// (x − mean) / std per channel (statistics of the training split).
    pub input_mean: Vec<f32>,
    pub input_std: Vec<f32>,
    /// Why this arch was retrained (the search's most likely arch or a fallback).
    pub decision: String,
    pub derived_arch_hash: String,
    pub train_device: String,
    /// Candidate archs this process measured on the device(s), and those the
    /// measurement cache answered (a resumed search re-measures nothing).
    pub device_measurements: usize,
    pub cache_hits: usize,
    pub search_seconds: f64,
    pub final_seconds: f64,
}

#[allow(clippy::too_many_arguments)]
pub async fn finish(
    ctx: &Context<'_>,
    pool: &mut DevicePool,
    predictors: &Predictors<'_>,
    vs: &VarStore,
    decision: Decision,
    test_accuracy: f64,
    search_seconds: f64,
    final_seconds: f64,
) -> anyhow::Result<SearchResult> {
    let dir = ctx.dir;
    let arch = decision.chosen.clone();
    write_json(&dir.arch(), &arch).with_context(|| format!("writing {}", dir.arch().display()))?;
    let bytes = export_arch(vs, ctx.space, &arch)?;
    write_atomic(&dir.model(), &bytes).with_context(|| format!("writing {}", dir.model().display()))?;
    let (client, info) = pool.primary();
    eprintln!("measuring {} on {}", dir.model().display(), client.base_url());
    let (_, measurement) = client
        .upload_and_measure(&bytes, &ctx.env.final_request)
        .await
        .with_context(|| format!("measuring the final model on {}", client.base_url()))?;
    let predicted = predictors.latency.predict(ctx.space, &arch)?.total_ms;
    let predicted_energy_mj = predictors.energy.map(|p| p.predict(ctx.space, &arch)).transpose()?.map(|p| p.total_ms);
    let budget = ctx.budget;
    let energy = match (&measurement.energy, budget.metric) {
        (None, Metric::Energy) => anyhow::bail!(
            "the agent at {} measured no energy for the final model: {}",
            client.base_url(),
            measurement.energy_unavailable_reason.as_deref().unwrap_or("no reason given")
        ),
        (energy, _) => energy.clone(),
    };
    let judged = match budget.metric {
        Metric::Latency => measurement.latency_ms.p50,
        Metric::Energy => energy.as_ref().map_or(f64::INFINITY, |e| e.mj_per_inference),
    };
    let s = ctx.settings;
    let result = SearchResult {
        space: s.space.clone(),
        width: s.width,
        dataset: s.dataset.clone(),
        strategy: s.strategy,
        arch_hash: arch.hash(),
        arch,
        test_accuracy,
        budget_ms: s.budget_ms,
        energy_budget_mj: s.energy_budget_mj,
        measured_latency_ms: measurement.latency_ms.p50,
        measured_min_ms: measurement.latency_ms.min,
        measured_runs: measurement.latency_ms.n,
        predicted_latency_ms: predicted,
        measured_energy_mj: energy.as_ref().map(|e| e.mj_per_inference),
        predicted_energy_mj,
        energy_sensor: energy.map(|e| e.sensor),
        budget_met: judged <= budget.limit,
        device_id: info.device_id.clone(),
        runtime: measurement.runtime.clone(),
        model_sha256: sha256_hex(&bytes),
        input_mean: ctx.data.norm.mean.clone(),
        input_std: ctx.data.norm.std.clone(),
        decision: decision.reason,
        derived_arch_hash: decision.derived.hash(),
        train_device: edgeloop_train::device::describe(ctx.device),
        device_measurements: pool.measured,
        cache_hits: pool.cache_hits,
        search_seconds,
        final_seconds,
    };
    write_json(&dir.result(), &result).with_context(|| format!("writing {}", dir.result().display()))?;
    Ok(result)
}

/// The closing table of `edgeloop search`.
pub fn render_summary(r: &SearchResult, out_dir: &std::path::Path) -> String {
    let (measured, limit, unit) = match (r.energy_budget_mj, r.budget_ms) {
        (Some(mj), _) => (r.measured_energy_mj.unwrap_or(f64::INFINITY), mj, "mJ"),
        (None, ms) => (r.measured_latency_ms, ms.unwrap_or(f64::NAN), "ms"),
    };
    let verdict = if r.budget_met {
        format!("met: {measured:.3} {unit} ≤ {limit} {unit}")
    } else {
        format!("NOT met: {measured:.3} {unit} > {limit} {unit}")
    };
    let ops: Vec<String> = r.arch.ops.iter().map(ToString::to_string).collect();
    let rows = [
        ("space", format!("{} (width {})", r.space, r.width)),
        ("dataset", r.dataset.clone()),
        ("strategy", format!("{:?}", r.strategy).to_lowercase()),
        ("arch", format!("{} [{}]", &r.arch_hash[..12], ops.join(", "))),
        ("test accuracy", format!("{:.2}%", r.test_accuracy * 100.0)),
        ("predicted latency", format!("{:.3} ms (table)", r.predicted_latency_ms)),
        (
            "measured latency",
            format!("{:.3} ms p50, {:.3} ms min, {} runs", r.measured_latency_ms, r.measured_min_ms, r.measured_runs),
        ),
        ("budget", verdict),
        (
            "energy",
            match (r.measured_energy_mj, &r.energy_sensor) {
                (Some(mj), Some(sensor)) => format!(
                    "{mj:.3} mJ/inference measured ({sensor}), {:.3} mJ predicted",
                    r.predicted_energy_mj.unwrap_or(f64::NAN)
                ),
                _ => "not measured (latency search)".into(),
            },
        ),
        ("device", format!("{} ({})", r.device_id, r.runtime)),
        ("trained on", r.train_device.clone()),
        ("candidates", format!("{} measured on the device, {} from the cache", r.device_measurements, r.cache_hits)),
        ("time", format!("search {:.0} s, final training {:.0} s", r.search_seconds, r.final_seconds)),
        ("results", format!("{}/{{result.json, model.onnx, arch.json, search.csv}}", out_dir.display())),
    ];
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out: String = rows.iter().map(|(k, v)| format!("{k:<width$}  {v}\n")).collect();
    out.push_str(&format!("{:<width$}  {}\n", "decision", r.decision));
    out
}
