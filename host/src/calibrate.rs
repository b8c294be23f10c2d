//! A correction of the table's layer sum fitted on a few whole networks.
//!
//! Single-layer models run a little slower or faster per layer than the same
//! layers inside a network (caches stay warm across layers, tract fuses and
//! lays out differently), so the plain sum is off by a nearly constant
//! factor. `table calibrate` measures a few whole networks and fits that
//! factor k (least squares through the origin): predicted = c + k·Σ(row − c),
//! one k per statistic of the runs ([`Stat`]): the rows are fastest runs,
//! the medians and 90th percentiles of whole networks are what budgets are
//! judged on. Stored next to the table as `<table>.calibration.json`, with
//! each network's figures (validation leaves those archs out, and the
//! search's safety margin comes from how far they are off).

use std::path::{Path, PathBuf};

use edgeloop_api::MeasureRequest;
use edgeloop_space::Space;
use serde::{Deserialize, Serialize};

use crate::measure::Measurements;
use crate::predict::{PredictError, Predictor, Stat};
use crate::table::LatencyTable;
use crate::validate::{self, NetworkMeasurement, Reading, ValidateError};

/// The smallest safety margin a search derives with, whatever the
/// calibration networks say: a 1 s measurement's median moves by about 1–2%
/// from one measurement to the next here.
pub const MIN_MARGIN: f64 = 0.02;

/// Whole networks a search measures when its table has no calibration.
pub const DEFAULT_SAMPLES: usize = 10;

/// Seed of the calibration archs: apart from validation's seeds (0, 1, …).
pub const DEFAULT_SEED: u64 = 1_000_003;

/// Whole networks a stored calibration is checked on before a run relies on it.
pub const CHECK_NETWORKS: usize = 3;

/// Seed of the checked networks: apart from the calibration's and validation's.
pub const CHECK_SEED: u64 = 2_000_003;

/// The longest a checked network is timed: its fastest run is what counts,
/// and a few hundred runs find it.
pub const CHECK_MAX_MS: u64 = 300;

/// How far the checked networks' fastest runs may be, in the median, from
/// the calibrated prediction (either way) before the calibration counts as
/// stale, beyond how far its own networks were ([`Calibration::stale_tolerance`]).
/// Fastest runs move by a few percent between measurements here; a table
/// measured while the device was busy, or a device that changed since
/// (clocks, firmware, cooling), moves every network alike and by more.
pub const STALE_TOLERANCE: f64 = 0.2;

/// One calibration network: its layer sum and what it measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationSample {
    pub arch: String,
    /// Σ(row − c) of the table, without the correction.
    pub layer_sum_ms: f64,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
}

impl CalibrationSample {
    fn measured(&self, stat: Stat) -> f64 {
        match stat {
            Stat::Min => self.min_ms,
            Stat::P50 => self.p50_ms,
            Stat::P90 => self.p90_ms,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Factor on the layer sum (overhead excluded) for the fastest run.
    pub scale: f64,
    /// The same for the median and the 90th percentile (absent in files
    /// from before they were fitted: such a file is refitted when needed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_p50: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_p90: Option<f64>,
    /// The per-call overhead c the fit used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overhead_ms: Option<f64>,
    /// Content hashes of the archs it was fitted on.
    pub archs: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<CalibrationSample>,
    pub fitted_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    #[error("calibration file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("cannot fit a correction on no samples")]
    Empty,
    #[error("latency table {} has no rows", path.display())]
    EmptyTable { path: PathBuf },
    #[error(transparent)]
    Predict(#[from] PredictError),
    #[error(transparent)]
    Measure(#[from] ValidateError),
}

/// Where the calibration of the table at `table` lives.
pub fn path_for(table: &Path) -> PathBuf {
    table.with_extension("calibration.json")
}

/// Least squares through the origin: the k minimising Σ (y − k·x)²
/// (none without a point off x = 0).
pub fn fit_through_origin(points: impl Iterator<Item = (f64, f64)>) -> Option<f64> {
    let (xy, xx) = points.fold((0.0, 0.0), |(xy, xx), (x, y)| (xy + x * y, xx + x * x));
    (xx > 0.0).then(|| xy / xx)
}

impl Calibration {
    /// Fits k of every statistic on whole networks measured on the table's
    /// device; `plain` is the table's predictor without correction.
    pub fn fit(
        measured: &[NetworkMeasurement],
        plain: &Predictor<'_>,
        space: &Space,
    ) -> Result<Calibration, CalibrationError> {
        let overhead_ms = plain.overhead_ms(space)?;
        let samples = measured
            .iter()
            .map(|m| {
                Ok(CalibrationSample {
                    arch: m.arch.hash(),
                    layer_sum_ms: plain.predict(space, &m.arch)?.total_ms - overhead_ms,
                    min_ms: m.stats.min,
                    p50_ms: m.stats.p50,
                    p90_ms: m.stats.p90,
                })
            })
            .collect::<Result<Vec<_>, PredictError>>()?;
        let fit = |stat: Stat| {
            fit_through_origin(samples.iter().map(|s| (s.layer_sum_ms, s.measured(stat) - overhead_ms)))
                .ok_or(CalibrationError::Empty)
        };
        Ok(Calibration {
            scale: fit(Stat::Min)?,
            scale_p50: Some(fit(Stat::P50)?),
            scale_p90: Some(fit(Stat::P90)?),
            overhead_ms: Some(overhead_ms),
            archs: samples.iter().map(|s| s.arch.clone()).collect(),
            samples,
            fitted_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        })
    }

    /// The factor k of `stat`, if this calibration fitted one.
    pub fn scale(&self, stat: Stat) -> Option<f64> {
        match stat {
            Stat::Min => Some(self.scale),
            Stat::P50 => self.scale_p50,
            Stat::P90 => self.scale_p90,
        }
    }

    /// The relative errors measured/predicted − 1 of `stat` on the
    /// calibration networks (empty for a file without its networks' figures).
    pub fn relative_errors(&self, stat: Stat) -> Vec<f64> {
        let (Some(k), Some(c)) = (self.scale(stat), self.overhead_ms) else { return Vec::new() };
        self.samples.iter().map(|s| s.measured(stat) / (c + k * s.layer_sum_ms) - 1.0).collect()
    }

    /// How far from 1 the ratios [`check`] returns may be while this
    /// calibration still describes the device: [`STALE_TOLERANCE`] beyond
    /// the median error of its own networks' fastest runs (a table of
    /// short rows predicts single networks less well).
    pub fn stale_tolerance(&self) -> f64 {
        let mut errors: Vec<f64> = self.relative_errors(Stat::Min).iter().map(|e| e.abs()).collect();
        errors.sort_by(f64::total_cmp);
        STALE_TOLERANCE + errors.get(errors.len() / 2).copied().unwrap_or(0.0)
    }

    /// Whether networks whose fastest runs came out `ratios` times this
    /// calibration's prediction show it stale: every one of them off by more
    /// than [`Calibration::stale_tolerance`], all the same way. A device that
    /// changed moves every network alike; a slow stretch of a shared
    /// machine (seconds long) slows one or two of them.
    pub fn is_stale(&self, ratios: &[f64]) -> bool {
        let tolerance = self.stale_tolerance();
        !ratios.is_empty()
            && (ratios.iter().all(|r| *r > 1.0 + tolerance) || ratios.iter().all(|r| *r < 1.0 - tolerance))
    }

    /// How much below a budget a derivation should aim so that what it
    /// picks measures under the budget: the largest under-prediction of
    /// `stat` among the calibration networks (of 10, about the 90th
    /// percentile of this device's errors), at least [`MIN_MARGIN`];
    /// `None` when this calibration cannot say (refit it).
    pub fn margin(&self, stat: Stat) -> Option<f64> {
        let errors = self.relative_errors(stat);
        (!errors.is_empty()).then(|| errors.into_iter().fold(MIN_MARGIN, f64::max))
    }

    /// Whether a search judged on `stat` can use this calibration as is.
    pub fn covers(&self, stat: Stat) -> bool {
        self.scale(stat).is_some() && self.margin(stat).is_some()
    }

    /// The calibration of `table`, if one was fitted.
    pub fn load_for(table: &Path) -> Result<Option<Calibration>, CalibrationError> {
        let path = path_for(table);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| CalibrationError::File { path, message: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CalibrationError::File { path, message: e.to_string() }),
        }
    }

    /// Writes next to `table` (fsynced temp file + rename).
    pub fn save_for(&self, table: &Path) -> Result<PathBuf, CalibrationError> {
        let path = path_for(table);
        edgeloop_durable::write_json(&path, self)
            .map_err(|e| CalibrationError::File { path: path.clone(), message: e.to_string() })?;
        Ok(path)
    }
}

/// How whole networks are measured for a calibration of `table`: its
/// runtime and threads, with the runs of `judged` (the measurement budgets
/// are judged on), without energy or a profile.
pub fn network_request(table: &LatencyTable, judged: &MeasureRequest) -> Result<MeasureRequest, CalibrationError> {
    let provenance = table.provenance().ok_or_else(|| CalibrationError::EmptyTable { path: table.path().into() })?;
    Ok(MeasureRequest {
        runtime: provenance.runtime.clone(),
        threads: provenance.threads,
        energy: false,
        profile_ops: false,
        ..judged.clone()
    })
}

/// [`CHECK_NETWORKS`] random whole networks measured now on `devices`: for
/// each, its fastest run over the calibrated table's prediction of it.
/// See [`Calibration::is_stale`].
pub async fn check(
    devices: &mut dyn Measurements,
    space: &Space,
    table: &LatencyTable,
    calibration: &Calibration,
    template: &MeasureRequest,
) -> Result<Vec<f64>, CalibrationError> {
    let archs = validate::sample_archs(space, CHECK_NETWORKS, CHECK_SEED, &calibration.archs);
    let request = MeasureRequest { min_duration_ms: template.min_duration_ms.min(CHECK_MAX_MS), ..template.clone() };
    let measured = validate::measure_networks(devices, space, &archs, &request, Reading::Clean, |_| {}).await?;
    let predictor = Predictor::calibrated(table, Some(calibration), Stat::Min)?;
    let ratios = measured
        .iter()
        .map(|m| Ok(m.stats.min / predictor.predict(space, &m.arch)?.total_ms))
        .collect::<Result<Vec<f64>, PredictError>>()?;
    Ok(ratios)
}

/// Measures `count` random whole networks (from `seed`) on `devices`, fits
/// the correction of `table` and stores it next to the table.
pub async fn run(
    devices: &mut dyn Measurements,
    space: &Space,
    table: &LatencyTable,
    template: &MeasureRequest,
    count: usize,
    seed: u64,
    on_each: impl FnMut(&NetworkMeasurement),
) -> Result<Calibration, CalibrationError> {
    let archs = validate::sample_archs(space, count, seed, &[]);
    let measured = validate::measure_networks(devices, space, &archs, template, Reading::Clean, on_each).await?;
    let calibration = Calibration::fit(&measured, &Predictor::new(table), space)?;
    calibration.save_for(table.path())?;
    Ok(calibration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeloop_api::LatencyStats;
    use edgeloop_space::Arch;

    fn stats(min: f64, p50: f64, p90: f64) -> LatencyStats {
        LatencyStats { n: 50, mean: p50, std: 0.0, min, p50, p90, p99: p90, max: p90 }
    }

    #[test]
    fn fits_a_factor_per_statistic_and_a_margin_from_the_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (space, table) = crate::predict::tests::tiny_table(dir.path(), 0.5, 0.5);
        let plain = Predictor::new(&table);
        let c = plain.overhead_ms(&space).unwrap();
        // Fastest runs 1.1×, medians 1.2× and tails 1.5× the layer sum,
        // plus the overhead; one network's median 10% over its share.
        let measured: Vec<NetworkMeasurement> = (0..10)
            .map(|seed| {
                let arch = Arch::random(&space, seed);
                let x = plain.predict(&space, &arch).unwrap().total_ms - c;
                let off = if seed == 3 { 1.1 } else { 1.0 };
                NetworkMeasurement { arch, stats: stats(c + 1.1 * x, (c + 1.2 * x) * off, c + 1.5 * x) }
            })
            .collect();
        let fitted = Calibration::fit(&measured, &plain, &space).unwrap();
        assert!((fitted.scale - 1.1).abs() < 1e-9);
        assert!((fitted.scale(Stat::P90).unwrap() - 1.5).abs() < 1e-9);
        assert!(fitted.scale(Stat::P50).unwrap() > 1.2);
        assert_eq!(fitted.archs.len(), 10);
        // Exact statistics need only the least margin; the median's one
        // slow network sets its margin.
        assert_eq!(fitted.margin(Stat::Min), Some(MIN_MARGIN));
        let errors = fitted.relative_errors(Stat::P50);
        let worst = errors.iter().copied().fold(f64::MIN, f64::max);
        assert_eq!(fitted.margin(Stat::P50), Some(worst));
        assert!(worst > 0.05, "{errors:?}");

        let path = dir.path().join("t.csv");
        assert_eq!(Calibration::load_for(&path).unwrap(), None);
        fitted.save_for(&path).unwrap();
        let loaded = Calibration::load_for(&path).unwrap().unwrap();
        assert_eq!(loaded.archs, fitted.archs);
        assert!((loaded.margin(Stat::P50).unwrap() - worst).abs() < 1e-9);
        assert!(Calibration::fit(&[], &plain, &space).is_err());
    }

    #[test]
    fn files_from_before_the_statistics_still_load_and_ask_for_a_refit() {
        let dir = tempfile::tempdir().unwrap();
        let table = dir.path().join("t.csv");
        std::fs::write(path_for(&table), r#"{"scale": 1.07, "archs": ["ab"], "fitted_at": "2026-01-01T00:00:00Z"}"#)
            .unwrap();
        let old = Calibration::load_for(&table).unwrap().unwrap();
        assert_eq!(old.scale(Stat::Min), Some(1.07));
        assert_eq!(old.scale(Stat::P50), None);
        assert!(!old.covers(Stat::P50));
        assert_eq!(old.margin(Stat::Min), None);
    }
}
