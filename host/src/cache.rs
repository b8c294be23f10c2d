//! Measurements of whole architectures, cached on disk by (device, arch
//! hash): a resumed search never measures the same arch on the same device
//! twice. One JSON object per line, appended through a
//! [`LineLog`] (one write each, fsynced; a torn last line cut off on open).

use std::collections::HashMap;
use std::path::Path;

use edgeloop_api::Measurement;
use edgeloop_durable::{LineLog, LogError};
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
    /// was running on the device (see `measure::hygiene`).
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
#[error("measurement cache: {0}")]
pub struct CacheError(#[from] LogError);

#[derive(Debug)]
pub struct MeasurementCache {
    /// Where entries persist; none for a cache that lives as long as its process.
    log: Option<LineLog>,
    entries: HashMap<(String, String), CachedMeasurement>,
}

impl MeasurementCache {
    /// Opens (or starts) the cache at `path`, for this process alone.
    pub fn open(path: &Path) -> Result<MeasurementCache, CacheError> {
        let (log, bytes) = LineLog::open(path)?;
        let entries = String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|line| serde_json::from_str::<CachedMeasurement>(line).ok())
            .map(|m| ((m.device_id.clone(), m.arch_hash.clone()), m))
            .collect();
        Ok(MeasurementCache { log: Some(log), entries })
    }

    /// A cache kept in memory only: for work with no run folder (a table
    /// build, a validation), whose measurements are its output anyway.
    pub fn in_memory() -> MeasurementCache {
        MeasurementCache { log: None, entries: HashMap::new() }
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
        if let Some(log) = &mut self.log {
            log.append(serde_json::to_string(&m).expect("measurement serialises").as_bytes())?;
        }
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
        drop(cache);
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        std::io::Write::write_all(&mut f, b"{\"device_id\":\"dev\",\"arch").unwrap();
        let mut cache = MeasurementCache::open(&path).unwrap();
        assert_eq!(cache.len(), 1);
        cache.insert(entry("b", 2.0)).unwrap();
        drop(cache);
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
        drop(cache);
        let cache = MeasurementCache::open(&path).unwrap();
        assert_eq!(cache.get(&ids, "a", true).unwrap().energy_mj, Some(0.5));
        assert_eq!(cache.get(&ids, "a", false).unwrap().p50_ms, 1.1, "the later line wins");
    }
}
