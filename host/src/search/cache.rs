//! Measurements of whole architectures, cached on disk by (device, arch
//! hash): a resumed search never measures the same arch on the same device
//! twice. One JSON object per line, each appended in one write and fsynced;
//! a torn last line (a kill mid-write) is ignored on load.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use edgeloop_api::Measurement;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedMeasurement {
    pub device_id: String,
    pub arch_hash: String,
    pub ops: Vec<String>,
    pub p50_ms: f64,
    /// NaN in entries written before the 90th percentile was kept.
    #[serde(default = "not_measured")]
    pub p90_ms: f64,
    pub min_ms: f64,
    pub mean_ms: f64,
    /// Energy per inference (mJ above idle), when it was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_mj: Option<f64>,
    /// Cores busy with other work on the device while it was timed (the
    /// agent's load signal), when the agent reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_busy_cores: Option<f64>,
    /// Measurements thrown away before this one because something else
    /// was running on the device (see `search::hygiene`).
    #[serde(default)]
    pub remeasured: usize,
    /// Why the kept measurement is still suspect (every attempt was contaminated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspect: Option<String>,
    pub measured_at: String,
}

fn not_measured() -> f64 {
    f64::NAN
}

impl CachedMeasurement {
    /// The entry of `m`, the measurement of `key` (an arch hash, or a policy
    /// key) whose ops are `ops`.
    pub fn new(key: String, ops: Vec<String>, m: &Measurement) -> CachedMeasurement {
        let l = &m.latency_ms;
        CachedMeasurement {
            device_id: m.device_id.clone(),
            arch_hash: key,
            ops,
            p50_ms: l.p50,
            p90_ms: l.p90,
            min_ms: l.min,
            mean_ms: l.mean,
            energy_mj: m.energy.as_ref().map(|e| e.mj_per_inference),
            other_busy_cores: m.load.map(|l| l.other_busy_cores),
            remeasured: 0,
            suspect: None,
            measured_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("measurement cache {}: {source}", path.display())]
pub struct CacheError {
    path: PathBuf,
    source: std::io::Error,
}

#[derive(Debug)]
pub struct MeasurementCache {
    path: PathBuf,
    entries: HashMap<(String, String), CachedMeasurement>,
}

impl MeasurementCache {
    /// Opens (or starts) the cache at `path`.
    pub fn open(path: &Path) -> Result<MeasurementCache, CacheError> {
        let err = |source| CacheError { path: path.to_path_buf(), source };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(err(e)),
        };
        let entries = text
            .lines()
            .filter_map(|line| serde_json::from_str::<CachedMeasurement>(line).ok())
            .map(|m| ((m.device_id.clone(), m.arch_hash.clone()), m))
            .collect();
        Ok(MeasurementCache { path: path.to_path_buf(), entries })
    }

    /// A measurement of `arch_hash` on any of `device_ids` (devices of one
    /// class), with energy when `with_energy` (one without is then re-measured).
    pub fn get(&self, device_ids: &[String], arch_hash: &str, with_energy: bool) -> Option<&CachedMeasurement> {
        device_ids
            .iter()
            .filter_map(|d| self.entries.get(&(d.clone(), arch_hash.to_string())))
            .find(|m| !with_energy || m.energy_mj.is_some())
    }

    pub fn insert(&mut self, m: CachedMeasurement) -> Result<(), CacheError> {
        let err = |source| CacheError { path: self.path.clone(), source };
        let mut line = serde_json::to_string(&m).expect("measurement serialises");
        line.push('\n');
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&self.path).map_err(err)?;
        // A torn line from an earlier kill must not swallow this one.
        if file.metadata().map_err(err)?.len() > 0 && !ends_with_newline(&self.path).map_err(err)? {
            line.insert(0, '\n');
        }
        file.write_all(line.as_bytes()).and_then(|()| file.sync_data()).map_err(err)?;
        self.entries.insert((m.device_id.clone(), m.arch_hash.clone()), m);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every cached measurement on `device_ids`.
    pub fn on_devices<'a>(&'a self, device_ids: &'a [String]) -> impl Iterator<Item = &'a CachedMeasurement> + 'a {
        self.entries.values().filter(move |m| device_ids.contains(&m.device_id))
    }
}

fn ends_with_newline(path: &Path) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8];
    file.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(hash: &str, ms: f64) -> CachedMeasurement {
        CachedMeasurement {
            device_id: "dev".into(),
            arch_hash: hash.into(),
            ops: vec!["zero".into()],
            p50_ms: ms,
            p90_ms: ms,
            min_ms: ms,
            mean_ms: ms,
            energy_mj: None,
            other_busy_cores: None,
            remeasured: 0,
            suspect: None,
            measured_at: "now".into(),
        }
    }

    #[test]
    fn survives_reopen_and_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.jsonl");
        let mut cache = MeasurementCache::open(&path).unwrap();
        cache.insert(entry("a", 1.0)).unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"device_id\":\"dev\",\"arch").unwrap();
        let mut cache = MeasurementCache::open(&path).unwrap();
        assert_eq!(cache.len(), 1);
        cache.insert(entry("b", 2.0)).unwrap();
        let cache = MeasurementCache::open(&path).unwrap();
        let ids = vec!["dev".to_string()];
        assert_eq!(cache.get(&ids, "b", false).unwrap().p50_ms, 2.0);
        assert_eq!(cache.get(&ids, "a", false).unwrap().p50_ms, 1.0);
        assert!(cache.get(&["other".to_string()], "a", false).is_none());
    }

    #[test]
    fn energy_searches_skip_entries_without_energy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.jsonl");
        let mut cache = MeasurementCache::open(&path).unwrap();
        cache.insert(entry("a", 1.0)).unwrap();
        let ids = vec!["dev".to_string()];
        assert!(cache.get(&ids, "a", true).is_none());
        cache.insert(CachedMeasurement { energy_mj: Some(0.5), ..entry("a", 1.1) }).unwrap();
        let cache = MeasurementCache::open(&path).unwrap();
        assert_eq!(cache.get(&ids, "a", true).unwrap().energy_mj, Some(0.5));
        assert_eq!(cache.get(&ids, "a", false).unwrap().p50_ms, 1.1, "the later line wins");
    }
}
