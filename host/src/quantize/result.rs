//! The end of a quantization search: the chosen policy fine-tuned longer,
//! exported as integer ONNX and measured on the device next to the fp32
//! network and uniform int8 (fine-tuned the same way), judged on the
//! measurement (or the computed size) alone.

use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use edgeloop_api::Measurement;
use edgeloop_durable::{write_atomic, write_json};
use edgeloop_export::quant::{Precision, QuantForm, QuantPolicy};
use edgeloop_train::export::export_arch;
use serde::{Deserialize, Serialize};

use super::cost::{Constraint, PolicyMeter, TableCheck, describe, size_kb};
use super::finetune::accuracy;
use super::{QuantizeEnv, QuantizeState, Search, chosen};
use crate::client::sha256_hex;
use crate::events::Event;
use crate::measure::MeasureJob;

/// One model of the comparison, measured on the device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComparisonRow {
    /// `fp32`, `int8` (uniform) or `searched`.
    pub model: String,
    pub policy: String,
    pub test_accuracy: f64,
    /// p50 on the device.
    pub latency_ms: f64,
    pub energy_mj: Option<f64>,
    /// Σ bits·params of the weights.
    pub size_kb: f64,
    /// The ONNX file (int8 storage for every integer width).
    pub file_kb: f64,
    pub model_sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantizeResult {
    pub run: String,
    pub space: String,
    pub arch_hash: String,
    pub constraint: Constraint,
    pub policy: QuantPolicy,
    /// `fp32` / `wXaY` per layer.
    pub policy_summary: String,
    pub test_accuracy: f64,
    pub fp32_test_accuracy: f64,
    pub measured_latency_ms: f64,
    pub measured_energy_mj: Option<f64>,
    pub size_kb: f64,
    /// Judged on the device's measurement of `model-int.onnx` (latency,
    /// energy) or on the computed size; nothing else.
    pub budget_met: bool,
    /// Why this policy: the most accurate that fit, or the cheapest found.
    pub decision: String,
    pub device_id: String,
    pub runtime: String,
    pub model_sha256: String,
    /// fp32, uniform int8 and the searched policy on the same device.
    pub comparison: Vec<ComparisonRow>,
    /// Whole policies measured against the per-precision tables.
    pub table_checks: Vec<TableCheck>,
    pub episodes: usize,
    /// Policies this process measured on the device, and those the cache answered.
    pub device_measurements: usize,
    pub cache_hits: usize,
    pub seconds: f64,
}

impl ComparisonRow {
    fn judged(&self, constraint: Constraint) -> f64 {
        match constraint {
            Constraint::LatencyMs(_) => self.latency_ms,
            Constraint::EnergyMj(_) => self.energy_mj.unwrap_or(f64::INFINITY),
            Constraint::SizeKb(_) => self.size_kb,
        }
    }
}

pub(super) async fn finish(
    search: &Search<'_>,
    env: &QuantizeEnv,
    out: &Path,
    state: &QuantizeState,
    mut meter: PolicyMeter,
    started: Instant,
) -> anyhow::Result<QuantizeResult> {
    let settings = search.settings;
    let best = chosen(&state.episodes);
    let decision = if best.budget_met {
        format!("episode {}: the most accurate of the policies that fit the budget", best.episode + 1)
    } else {
        format!("episode {}: no policy fit the budget; this is the cheapest found", best.episode + 1)
    };
    let n = search.layers.len();
    let mut rows = Vec::new();
    let mut models = Vec::new();
    for (name, policy) in [
        ("fp32", QuantPolicy::uniform(n, Precision::Fp32)),
        ("int8", QuantPolicy::uniform(n, Precision::INT8)),
        ("searched", best.policy.clone()),
    ] {
        search.events.emit(Event::QuantizedFinalModel { name: name.to_string(), policy: describe(&policy) });
        let (network, fq) =
            search.tuned(&policy, &search.data.full_train, settings.final_steps, settings.seed ^ 0xF1A1)?;
        let test_accuracy = accuracy(&network, &fq, &search.data, &search.data.test, usize::MAX, search.device);
        let bytes = match name {
            "fp32" => export_arch(&network.vs, &search.trained.space, &search.trained.arch)?,
            _ => fq.export(&network.vs, &search.trained.space, QuantForm::QLinear)?,
        };
        let job = MeasureJob {
            key: sha256_hex(&bytes),
            ops: vec![describe(&policy)],
            label: format!("the {name} model"),
            bytes: bytes.clone(),
            expected_min: None,
        };
        let m = meter.service.measure_uncached(job, &env.final_request).await?.measurement;
        rows.push(row(name, &policy, test_accuracy, &m, search, &bytes));
        models.push((policy, bytes, m));
    }
    let (policy, bytes, measurement) = models.pop().expect("the searched model");
    write_atomic(&out.join("model-int.onnx"), &bytes).context("writing model-int.onnx")?;
    write_json(&out.join("policy.json"), &policy).context("writing policy.json")?;
    write_comparison(&out.join("comparison.csv"), &rows)?;
    let searched = rows.last().expect("the searched row").clone();
    let result = QuantizeResult {
        run: env.run.display().to_string(),
        space: search.trained.space.name().to_string(),
        arch_hash: search.trained.arch.hash(),
        constraint: settings.constraint,
        policy_summary: describe(&policy),
        policy,
        test_accuracy: searched.test_accuracy,
        fp32_test_accuracy: rows[0].test_accuracy,
        measured_latency_ms: measurement.latency_ms.p50,
        measured_energy_mj: searched.energy_mj,
        size_kb: searched.size_kb,
        budget_met: searched.judged(settings.constraint) <= settings.constraint.limit(),
        decision,
        device_id: measurement.device_id.clone(),
        runtime: measurement.runtime.clone(),
        model_sha256: searched.model_sha256.clone(),
        comparison: rows,
        table_checks: state.table_checks.clone(),
        episodes: state.episodes.len(),
        device_measurements: meter.service.counts().measured,
        cache_hits: meter.service.counts().cache_hits,
        seconds: started.elapsed().as_secs_f64(),
    };
    write_json(&out.join("result.json"), &result).context("writing result.json")?;
    Ok(result)
}

fn row(
    name: &str,
    policy: &QuantPolicy,
    test_accuracy: f64,
    m: &Measurement,
    search: &Search<'_>,
    bytes: &[u8],
) -> ComparisonRow {
    ComparisonRow {
        model: name.to_string(),
        policy: describe(policy),
        test_accuracy,
        latency_ms: m.latency_ms.p50,
        energy_mj: m.energy.as_ref().map(|e| e.mj_per_inference),
        size_kb: size_kb(&search.layers, policy),
        file_kb: bytes.len() as f64 / 1000.0,
        model_sha256: sha256_hex(bytes),
    }
}

fn write_comparison(path: &Path, rows: &[ComparisonRow]) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)?;
    }
    write_atomic(path, &w.into_inner()?).with_context(|| format!("writing {}", path.display()))
}

/// The closing table of `edgeloop quantize`: the comparison, then the verdict.
pub fn render_summary(r: &QuantizeResult, out: &Path) -> String {
    let mut s = format!(
        "{:<10} {:>9} {:>11} {:>11} {:>10} {:>9}\n",
        "model", "accuracy", "latency ms", "energy mJ", "size kB", "file kB"
    );
    for c in &r.comparison {
        let energy = c.energy_mj.map_or_else(|| "-".into(), |e| format!("{e:.4}"));
        s.push_str(&format!(
            "{:<10} {:>8.2}% {:>11.4} {:>11} {:>10.1} {:>9.1}\n",
            c.model,
            100.0 * c.test_accuracy,
            c.latency_ms,
            energy,
            c.size_kb,
            c.file_kb
        ));
    }
    let (limit, unit) = (r.constraint.limit(), r.constraint.unit());
    let judged = r.comparison.last().map_or(f64::NAN, |c| c.judged(r.constraint));
    let verdict = if r.budget_met { "met" } else { "NOT met" };
    s.push_str(&format!(
        "\nbudget {verdict}: {} {judged:.4} {unit} vs {limit} {unit} ({})\n",
        r.constraint.metric(),
        if r.constraint.on_device() { "measured on the device" } else { "Σ bits·params" }
    ));
    s.push_str(&format!("policy   {}\n", r.policy_summary));
    s.push_str(&format!("decision {}\n", r.decision));
    s.push_str(&format!("device   {} ({})\n", r.device_id, r.runtime));
    s.push_str(&format!(
        "results  {}/{{result.json, policy.json, model-int.onnx, comparison.csv, episodes.csv}}\n",
        out.display()
    ));
    s
}
