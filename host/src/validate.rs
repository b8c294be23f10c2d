//! How well a latency table predicts whole networks (DESIGN §7): sample
//! random architectures, measure each whole network on the device, compare
//! with the prediction. Nothing measured here feeds back into the table.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use edgeloop_api::{LatencyStats, MeasureRequest};
use edgeloop_export::export::{RandomWeights, arch_model};
use edgeloop_onnx::encode;
use edgeloop_space::{Arch, Space};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::Serialize;

use crate::measure::{MeasureError, MeasureJob, Measurements};
use crate::predict::{PredictError, Predictor, Stat};

/// One architecture: predicted and measured whole-network latency (one statistic).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub arch: Arch,
    pub predicted_ms: f64,
    pub measured_ms: f64,
}

impl Sample {
    pub fn error_pct(&self) -> f64 {
        (self.predicted_ms - self.measured_ms) / self.measured_ms * 100.0
    }
}

/// The figures `table validate` reports (`--json` prints exactly these keys).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Metrics {
    pub samples: usize,
    /// Fraction of samples predicted within ±10% of the measurement.
    pub within_10pct: f64,
    /// Mean absolute percentage error, in percent.
    pub mape: f64,
    pub rmse_ms: f64,
    pub kendall_tau: f64,
}

/// Kendall's τ-b: rank agreement of two sequences, ties accounted for.
pub fn kendall_tau(a: &[f64], b: &[f64]) -> f64 {
    let (mut concordant, mut discordant, mut ties_a, mut ties_b) = (0i64, 0i64, 0i64, 0i64);
    for i in 0..a.len() {
        for j in i + 1..a.len() {
            let (da, db) = (a[i] - a[j], b[i] - b[j]);
            match (da == 0.0, db == 0.0) {
                (true, true) => {}
                (true, false) => ties_a += 1,
                (false, true) => ties_b += 1,
                (false, false) if da.signum() == db.signum() => concordant += 1,
                (false, false) => discordant += 1,
            }
        }
    }
    let denominator =
        (((concordant + discordant + ties_a) as f64) * ((concordant + discordant + ties_b) as f64)).sqrt();
    if denominator == 0.0 { 0.0 } else { (concordant - discordant) as f64 / denominator }
}

pub fn metrics(samples: &[Sample]) -> Metrics {
    let n = samples.len().max(1) as f64;
    let within = samples.iter().filter(|s| s.error_pct().abs() <= 10.0).count() as f64;
    let mape = samples.iter().map(|s| s.error_pct().abs()).sum::<f64>() / n;
    let rmse = (samples.iter().map(|s| (s.predicted_ms - s.measured_ms).powi(2)).sum::<f64>() / n).sqrt();
    let predicted: Vec<f64> = samples.iter().map(|s| s.predicted_ms).collect();
    let measured: Vec<f64> = samples.iter().map(|s| s.measured_ms).collect();
    Metrics {
        samples: samples.len(),
        within_10pct: within / n,
        mape,
        rmse_ms: rmse,
        kendall_tau: kendall_tau(&predicted, &measured),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error(transparent)]
    Predict(#[from] PredictError),
    #[error(transparent)]
    Measure(#[from] Box<MeasureError>),
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("plotting {path}: {message}")]
    Plot { path: PathBuf, message: String },
}

/// `count` distinct random archs drawn from `seed`, none of them in
/// `exclude` (hashes, e.g. the archs a calibration was fitted on).
pub fn sample_archs(space: &Space, count: usize, seed: u64, exclude: &[String]) -> Vec<Arch> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut seen: HashSet<String> = exclude.iter().cloned().collect();
    let mut archs = Vec::with_capacity(count);
    // Bounded so a space smaller than `count` still ends.
    for _ in 0..count * 100 {
        if archs.len() == count {
            break;
        }
        let arch = Arch::sample(space, &mut rng);
        if seen.insert(arch.hash()) {
            archs.push(arch);
        }
    }
    archs
}

/// A whole network measured on the device.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkMeasurement {
    pub arch: Arch,
    pub stats: LatencyStats,
}

/// How whole networks are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// Taken again while its runs show other work on the device (see
    /// `measure::hygiene`): what a calibration fits its medians and its
    /// margin on — one network timed in a slow stretch (median 1.5× its
    /// fastest run) once made a search's margin 45%.
    Clean,
    /// The first measurement, as validation reports it.
    Raw,
}

/// Measures each arch (seeded random weights) as a whole network on
/// `devices`; `on_each` sees each result as it arrives (progress).
pub async fn measure_networks(
    devices: &mut dyn Measurements,
    space: &Space,
    archs: &[Arch],
    template: &MeasureRequest,
    reading: Reading,
    mut on_each: impl FnMut(&NetworkMeasurement),
) -> Result<Vec<NetworkMeasurement>, ValidateError> {
    let mut measured = Vec::with_capacity(archs.len());
    for (i, arch) in archs.iter().enumerate() {
        let model = encode(&arch_model(space, arch, &mut RandomWeights::new(i as u64)).map_err(PredictError::from)?);
        let job = MeasureJob::arch(arch, model, None);
        let m = match reading {
            Reading::Clean => devices.measure_uncached(job, template).await.map(|c| c.measurement),
            Reading::Raw => devices.measure_once(job, template).await,
        }
        .map_err(Box::new)?;
        let network = NetworkMeasurement { arch: arch.clone(), stats: m.latency_ms };
        on_each(&network);
        measured.push(network);
    }
    Ok(measured)
}

/// Each network's prediction next to its measured statistic `stat`.
pub fn samples(
    predictor: &Predictor<'_>,
    space: &Space,
    measured: &[NetworkMeasurement],
    stat: Stat,
) -> Result<Vec<Sample>, PredictError> {
    measured
        .iter()
        .map(|m| {
            let predicted_ms = predictor.predict(space, &m.arch)?.total_ms;
            Ok(Sample { arch: m.arch.clone(), predicted_ms, measured_ms: stat.of(&m.stats) })
        })
        .collect()
}

/// `validation.csv`: arch_hash, stat, predicted_ms, measured_ms, error_pct, ops.
pub fn write_csv(path: &Path, samples: &[Sample], stat: Stat) -> Result<(), ValidateError> {
    let mut text = String::from("arch_hash,stat,predicted_ms,measured_ms,error_pct,ops\n");
    for s in samples {
        let ops: Vec<String> = s.arch.ops.iter().map(ToString::to_string).collect();
        writeln!(
            text,
            "{},{stat},{:.6},{:.6},{:.3},{}",
            s.arch.hash(),
            s.predicted_ms,
            s.measured_ms,
            s.error_pct(),
            ops.join(" ")
        )
        .expect("writing to a String");
    }
    edgeloop_durable::write_atomic(path, text.as_bytes())
        .map_err(|source| ValidateError::Write { path: path.to_path_buf(), source })
}

/// Predicted-vs-measured scatter with the y = x line and the ±10% band.
pub fn write_plot(path: &Path, samples: &[Sample], m: &Metrics, title: &str, stat: Stat) -> Result<(), ValidateError> {
    use plotters::prelude::*;
    let plot_err = |e: &dyn std::fmt::Display| ValidateError::Plot { path: path.to_path_buf(), message: e.to_string() };
    crate::plot::register_font().map_err(|e| plot_err(&e))?;
    let values = || samples.iter().flat_map(|s| [s.predicted_ms, s.measured_ms]);
    let hi = values().fold(0.0f64, f64::max) * 1.1;
    let hi = if hi > 0.0 { hi } else { 1.0 };
    let lo = values().fold(hi, f64::min) * 0.9;
    let root = BitMapBackend::new(path, (800, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(&e))?;
    let caption = format!(
        "{title} ({stat}): {:.0}% within ±10%, MAPE {:.1}%, RMSE {:.3} ms, τ {:.3}",
        m.within_10pct * 100.0,
        m.mape,
        m.rmse_ms,
        m.kendall_tau
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(lo..hi, lo..hi)
        .map_err(|e| plot_err(&e))?;
    chart
        .configure_mesh()
        .x_desc(format!("measured, {} (ms)", stat_label(stat)))
        .y_desc("predicted (ms)")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| plot_err(&e))?;
    for (factor, style) in
        [(1.0, BLACK.stroke_width(1)), (1.1, RED.mix(0.5).stroke_width(1)), (0.9, RED.mix(0.5).stroke_width(1))]
    {
        let line = [(lo, lo * factor), (hi / factor.max(1.0), hi / factor.max(1.0) * factor)];
        chart.draw_series(LineSeries::new(line, style)).map_err(|e| plot_err(&e))?;
    }
    chart
        .draw_series(samples.iter().map(|s| Circle::new((s.measured_ms, s.predicted_ms), 3, BLUE.filled())))
        .map_err(|e| plot_err(&e))?;
    root.present().map_err(|e| plot_err(&e))
}

/// How a plot names a statistic of the runs.
pub fn stat_label(stat: Stat) -> &'static str {
    match stat {
        Stat::Min => "fastest run",
        Stat::P50 => "median run (p50)",
        Stat::P90 => "90th percentile (p90)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(predicted_ms: f64, measured_ms: f64) -> Sample {
        let arch = Arch { space: "tiny".into(), width: 1.0, ops: vec![] };
        Sample { arch, predicted_ms, measured_ms }
    }

    #[test]
    fn kendall_tau_of_known_orders() {
        assert_eq!(kendall_tau(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]), 1.0);
        assert_eq!(kendall_tau(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), -1.0);
        // One discordant pair of three: (2 - 1) / 3.
        assert!((kendall_tau(&[1.0, 2.0, 3.0], &[1.0, 3.0, 2.0]) - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn metrics_by_hand() {
        let s = [sample(1.0, 1.0), sample(1.05, 1.02), sample(2.4, 2.0), sample(3.0, 4.0)];
        let m = metrics(&s);
        assert_eq!(m.samples, 4);
        assert_eq!(m.within_10pct, 0.5);
        assert!((m.mape - (0.0 + 3.0 / 1.02 + 20.0 + 25.0) / 4.0).abs() < 1e-9);
        let rmse = ((0.0 + 0.03f64.powi(2) + 0.4f64.powi(2) + 1.0) / 4.0).sqrt();
        assert!((m.rmse_ms - rmse).abs() < 1e-12);
        assert_eq!(m.kendall_tau, 1.0);
    }

    #[test]
    fn sampled_archs_are_distinct_and_seeded() {
        let space = Space::load("tiny", 1.0).unwrap();
        let a = sample_archs(&space, 20, 3, &[]);
        assert_eq!(a.len(), 20);
        assert_eq!(a.iter().map(Arch::hash).collect::<HashSet<_>>().len(), 20);
        assert_eq!(a, sample_archs(&space, 20, 3, &[]));
        let held_out = [a[0].hash(), a[5].hash()];
        let b = sample_archs(&space, 20, 3, &held_out);
        assert!(b.iter().all(|arch| !held_out.contains(&arch.hash())));
    }

    #[test]
    fn csv_and_plot_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let s = [sample(1.0, 1.1), sample(2.0, 1.9)];
        write_csv(&dir.path().join("validation.csv"), &s, Stat::P50).unwrap();
        let text = std::fs::read_to_string(dir.path().join("validation.csv")).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(text.lines().nth(1).unwrap().split(',').nth(1) == Some("p50"), "{text}");
        let png = dir.path().join("validation.png");
        write_plot(&png, &s, &metrics(&s), "tiny", Stat::P50).unwrap();
        assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    }
}
