//! A correction of the table's layer sum fitted on a few whole networks.
//!
//! Single-layer models run a little slower or faster per layer than the same
//! layers inside a network (caches stay warm across layers, tract fuses and
//! lays out differently), so the plain sum is off by a nearly constant
//! factor. `table calibrate` measures a few whole networks and fits that
//! factor k (least squares through the origin): predicted = c + k·Σ(row − c).
//! Stored next to the table as `<table>.calibration.json`, with the hashes
//! of the archs it was fitted on so validation can leave them out.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::validate::Sample;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Factor on the layer sum (overhead excluded).
    pub scale: f64,
    /// Content hashes of the archs it was fitted on.
    pub archs: Vec<String>,
    pub fitted_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    #[error("calibration file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("cannot fit a correction on no samples")]
    Empty,
}

/// Where the calibration of the table at `table` lives.
pub fn path_for(table: &Path) -> PathBuf {
    table.with_extension("calibration.json")
}

impl Calibration {
    /// Fits k from samples predicted *without* calibration: each sample's
    /// layer sum is `predicted − overhead`, its target `measured − overhead`.
    pub fn fit(samples: &[Sample], overhead_ms: f64) -> Result<Calibration, CalibrationError> {
        let (xy, xx) = samples.iter().fold((0.0, 0.0), |(xy, xx), s| {
            let (x, y) = (s.predicted_ms - overhead_ms, s.measured_ms - overhead_ms);
            (xy + x * y, xx + x * x)
        });
        if samples.is_empty() || xx == 0.0 {
            return Err(CalibrationError::Empty);
        }
        Ok(Calibration {
            scale: xy / xx,
            archs: samples.iter().map(|s| s.arch.hash()).collect(),
            fitted_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        })
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
        crate::files::write_json(&path, self)
            .map_err(|e| CalibrationError::File { path: path.clone(), message: e.to_string() })?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeloop_space::Arch;

    #[test]
    fn fits_the_factor_on_the_layer_sum() {
        let arch = Arch { space: "tiny".into(), width: 1.0, ops: vec![] };
        // Layer sums 1 and 3 ms, measured 1.1× that, plus 0.5 ms overhead each.
        let samples: Vec<Sample> = [1.0, 3.0]
            .iter()
            .map(|x| Sample { arch: arch.clone(), predicted_ms: x + 0.5, measured_ms: 1.1 * x + 0.5 })
            .collect();
        let c = Calibration::fit(&samples, 0.5).unwrap();
        assert!((c.scale - 1.1).abs() < 1e-12);
        assert!(Calibration::fit(&[], 0.5).is_err());
        let dir = tempfile::tempdir().unwrap();
        let table = dir.path().join("t.csv");
        assert_eq!(Calibration::load_for(&table).unwrap(), None);
        c.save_for(&table).unwrap();
        assert_eq!(Calibration::load_for(&table).unwrap(), Some(c));
    }
}
